"""Fixtures for tests that need the gateway in front of the session's Kafka cluster."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from gateway.dev.idp import DevIdp
from gateway.dev.process import REPO, GatewayProcess
from gateway.protocol.apis import METADATA
from tests.masking_data import direct_wire
from tests.oauth import CLIENTS
from tests.waiting import wait_until
from tests.wire import WireClient


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    """The dev OIDC IdP with the test clients (tests/oauth.py), on a free loopback port."""
    config = {"audience": "streamward", "token_lifetime_s": 3600,
              "clients": [{"id": name, **client} for name, client in CLIENTS.items()]}
    with DevIdp(config, data_dir=tmp_path_factory.mktemp("idp")) as provider:
        yield provider


def oidc_overrides(idp, **oidc) -> dict:
    return {"auth": {"oidc": {"issuer": idp.issuer, "audience": "streamward", **oidc}, "sasl_plain": True}}


@pytest.fixture(scope="session")
def gateway(kafka_cluster, idp, tmp_path_factory):
    """The shared gateway: two workers, as on this two-core machine; clients sign in with OIDC tokens."""
    process = GatewayProcess(tmp_path_factory.mktemp("gateway"), kafka_cluster, workers=2, port_base=31092,
                             admin_port=31100, overrides=oidc_overrides(idp))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def connect(gateway, idp):
    """Open a WireClient to the shared gateway (bootstrap, or a broker's port) already signed in."""
    clients = []

    def open_signed_in(address: str | None = None, subject: str = "etl-job") -> WireClient:
        wire = WireClient(address or gateway.bootstrap)
        clients.append(wire)
        answer = wire.sign_in(idp.mint(subject, groups=CLIENTS.get(subject, {}).get("groups", [])))
        assert answer["error_code"] == 0, answer
        return wire

    yield open_signed_in
    for wire in clients:
        wire.close()


@pytest.fixture(scope="session")
def admin(kafka_cluster):
    """kafka-python admin client straight to the brokers, as the cluster's admin user."""
    client = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap, security_protocol="SASL_PLAINTEXT",
                              sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="admin",
                              sasl_plain_password=kafka_cluster.passwords["admin"], request_timeout_ms=30000)
    yield client
    client.close()


@pytest.fixture
def make_topic(admin, kafka_cluster):
    """Create a uniquely named topic straight on the cluster; returns its name once every broker's metadata lists
    each of its partitions with a leader (the brokers learn of a new topic each on its own time, and a test that
    asks a broker right away may get no partitions)."""

    def create(prefix: str = "t", partitions: int = 3, replication_factor: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(name, partitions, replication_factor)], timeout_ms=30000)
        for node_id in kafka_cluster.node_ids:
            with direct_wire(kafka_cluster, node_id) as wire:
                def listed() -> bool:
                    [topic] = wire.request(METADATA, 12, {"topics": [{"name": name}],
                                                          "allow_auto_topic_creation": False})["topics"]
                    return len(topic["partitions"]) == partitions and all(
                        p["leader_id"] >= 0 for p in topic["partitions"])
                assert wait_until(listed, timeout=30, interval=0.05), f"broker {node_id} does not list {name}"
        return name

    return create


@pytest.fixture(scope="session")
def franz_binary(tmp_path_factory) -> Path:
    """The franz-go test client, built once from tests/clients/franz."""
    out = tmp_path_factory.mktemp("franz") / "franz"
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=REPO / "tests" / "clients" / "franz", check=True,
                   timeout=600)
    return out
