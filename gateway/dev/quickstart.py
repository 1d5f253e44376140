"""`make run`: a local Kafka cluster plus the gateway in front of it, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.dev.kafka import KafkaCluster, ensure_jars


def run_quickstart(config_path: str) -> int:
    workdir = Path(os.environ.get("STREAMWARD_DEV_DIR", "var/dev")).resolve()
    print("resolving Apache Kafka jars (first run downloads them)...", flush=True)
    ensure_jars()
    cluster = KafkaCluster(workdir / "kafka", nodes=1, port_base=19092)
    print(f"starting a local Kafka in {workdir / 'kafka'} ...", flush=True)
    cluster.start()
    env = dict(os.environ, STREAMWARD_UPSTREAM_PASSWORD=cluster.passwords["gateway"])
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config_path], env=env)
    print(
        "\nStreamward is running. Point any Kafka client at it:\n"
        "  bootstrap.servers=127.0.0.1:9092   (security.protocol=PLAINTEXT until OIDC sign-in lands)\n"
        "  kcat -b 127.0.0.1:9092 -L\n"
        "  health: http://127.0.0.1:9100/healthz   metrics: http://127.0.0.1:9100/metrics\n"
        f"Kafka itself listens on {cluster.bootstrap} (SCRAM, gateway and admin only). Ctrl-C stops both.\n",
        flush=True,
    )
    try:
        return gateway.wait()
    except KeyboardInterrupt:
        gateway.send_signal(signal.SIGTERM)
        return gateway.wait()
    finally:
        cluster.stop()
