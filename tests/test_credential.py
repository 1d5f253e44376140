"""The vaulted service credential never shows: not to clients, not in logs, not in error messages."""

from __future__ import annotations

import subprocess
import sys

from kafka import KafkaConsumer, KafkaProducer

from gateway.dev.process import REPO, GatewayProcess
from gateway.protocol.apis import API_VERSIONS, DESCRIBE_CLUSTER, METADATA
from tests.test_hostile import CLOSING_INPUTS
from tests.wire import WireClient


def forms(secret: str) -> list[bytes]:
    """The password as raw bytes and in the encodings a leak would likely take."""
    import base64

    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def test_credential_absent_from_client_bytes_and_logs(kafka_cluster, make_topic, tmp_path):
    secret = kafka_cluster.passwords["gateway"]
    topic = make_topic("cred")
    with GatewayProcess(tmp_path, kafka_cluster, workers=1, port_base=30392, admin_port=30400) as gw:
        received = bytearray()
        with WireClient(gw.bootstrap) as wire:
            wire.request(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
            wire.request(METADATA, 12, {"topics": None, "allow_auto_topic_creation": False})
            wire.request(DESCRIBE_CLUSTER, 1, {})
            received += wire.received
        for data in CLOSING_INPUTS.values():
            with WireClient(gw.bootstrap) as wire:
                wire.send_raw(data)
                wire.closed_by_peer(timeout=5)
                received += wire.received
        producer = KafkaProducer(bootstrap_servers=gw.bootstrap)
        producer.send(topic, b"v").get(30)
        producer.close()
        consumer = KafkaConsumer(topic, bootstrap_servers=gw.bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=10000)
        assert next(iter(consumer)).value == b"v"
        consumer.close()
    log = gw.log_text().encode()
    config_file = gw.config_path.read_bytes()
    for leak in forms(secret):
        assert leak not in received
        assert leak not in log
        assert leak not in config_file  # the example wiring reads it from the environment


def test_wrong_credential_fails_closed_without_echoing_it(kafka_cluster, tmp_path):
    wrong = "Wr0ngPassw0rdThatMustNotLeak"
    gw = GatewayProcess(tmp_path, kafka_cluster, workers=1, port_base=30492, admin_port=30500, password=wrong)
    gw.write_config()
    env = {"STREAMWARD_UPSTREAM_PASSWORD": wrong, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=6)
    except subprocess.TimeoutExpired:
        proc.terminate()
    output = proc.communicate(timeout=30)[0]
    assert b"authentication to broker" in output and b"failed" in output
    for leak in forms(wrong):
        assert leak not in output


def test_config_errors_never_print_the_secret(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("upstream:\n  bootstrap_servers: ['127.0.0.1:1']\n  sasl:\n    mechanism: NOPE\n"
                      "    username: gateway\n    password: SuperSecretValue123\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)], cwd=REPO,
                            capture_output=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert b"bad.yaml:4: upstream.sasl" in result.stderr
    assert b"SuperSecretValue123" not in result.stdout + result.stderr
