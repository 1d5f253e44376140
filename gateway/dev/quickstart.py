"""`make run`: a local Kafka cluster, the development IdP and the gateway in front of both, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.dev.idp import DevIdp, describe
from gateway.dev.kafka import KafkaCluster, ensure_jars

IDP_CONFIG = Path("examples/idp-clients.yaml")
IDP_PORT = 9400  # the issuer examples/gateway.yaml trusts


def gateway_settings(token_endpoint: str, client_id: str, secret: str) -> str:
    """What only the gateway adds to the IdP's own client settings (printed by describe(idp))."""
    return f"""
Through the gateway: bootstrap.servers=127.0.0.1:9092 with the IdP settings above.

  kcat (Debian's build has no OIDC: the token goes as a SASL/PLAIN password)
      TOKEN=$(curl -s -u {client_id}:{secret} -d grant_type=client_credentials {token_endpoint} \\
              | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
      kcat -b 127.0.0.1:9092 -X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN \\
           -X sasl.username={client_id} -X "sasl.password=$TOKEN" -L

  aiokafka / kafka-python / franz-go: a token provider that POSTs grant_type=client_credentials
      to {token_endpoint} with HTTP Basic auth and returns "access_token".

  Check a token as the gateway would:  streamward whoami --token "$TOKEN"

The example policy (policies/example.yaml) lets {client_id} create, write and read topics under
"sandbox." with consumer groups under "sandbox-"; everything else is denied. Try:
      kcat ... -P -t sandbox.demo   and   kcat ... -C -t sandbox.demo
Explain a decision:  streamward policy explain --principal {client_id} --groups etl --topic orders --op write

Just-in-time access: "analyst" may read topics under "payments" only once an approver grants it.
      (token of analyst in a file)   streamward access request --token-file analyst.jwt --topic payments.eu \
                                         --op read --duration 1h --reason "chargeback audit"
      (token of approver in a file)  streamward approvals list --token-file approver.jwt
                                     streamward approvals approve REQUEST_ID --token-file approver.jwt --duration 30m
A consumer refused on such a topic makes the pending request itself; the grant ends its sessions when it ends.
"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # TERM stops everything the same way Ctrl-C does, Kafka included


def run_quickstart(config_path: str) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(os.environ.get("STREAMWARD_DEV_DIR", "var/dev")).resolve()
    print("resolving Apache Kafka jars (the first run downloads them)...", flush=True)
    ensure_jars()
    cluster = KafkaCluster(workdir / "kafka", nodes=1, port_base=19092)
    print(f"starting a local Kafka in {workdir / 'kafka'} ...", flush=True)
    cluster.start()
    # The broker never creates topics implicitly; the example policy's sandbox gets one to start with.
    cluster.create_topic("sandbox.demo", partitions=3)
    idp = DevIdp(IDP_CONFIG, port=IDP_PORT, data_dir=workdir / "idp").start()
    env = dict(os.environ, STREAMWARD_UPSTREAM_PASSWORD=cluster.passwords["gateway"])
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config_path], env=env)
    first = idp.config.clients[0]
    print(f"\nStreamward is running: bootstrap 127.0.0.1:9092, health http://127.0.0.1:9100/healthz\n"
          f"Dev IdP: {idp.issuer} (clients in {IDP_CONFIG}). Kafka itself: {cluster.bootstrap} "
          f"(SCRAM, gateway and admin only).\n\n" + describe(idp) + "\n" +
          gateway_settings(idp.token_endpoint, first.id, first.secret) +
          "\nCtrl-C stops everything.\n", flush=True)
    try:
        return gateway.wait()
    except KeyboardInterrupt:
        gateway.send_signal(signal.SIGTERM)
        return gateway.wait()
    finally:
        idp.stop()
        cluster.stop()
