"""Clients never learn a real broker address, and every broker is reachable through its own gateway port."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.protocol.apis import DESCRIBE_CLUSTER, FIND_COORDINATOR, METADATA, OFFSET_COMMIT, OFFSET_FETCH
from tests.wire import WireClient


def find_coordinators(wire: WireClient, keys: list[str], version: int = 4) -> dict:
    """FindCoordinator, retried while the offsets topic is still being created (COORDINATOR_NOT_AVAILABLE)."""
    deadline = time.monotonic() + 60
    while True:
        if version >= 4:
            body = wire.request(FIND_COORDINATOR, version, {"key_type": 0, "coordinator_keys": keys})
            errors = [c["error_code"] for c in body["coordinators"]]
        else:
            body = wire.request(FIND_COORDINATOR, version, {"key": keys[0], "key_type": 0})
            errors = [body["error_code"]]
        if not any(errors) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_rewritten_addresses_name_only_gateway_ports(gateway, connect, kafka_cluster, make_topic):
    topic = make_topic("leak", partitions=6)
    real_ports = {port for _, port in kafka_cluster.node_addresses.values()}
    with connect() as wire:
        metadata = wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})
        batched = find_coordinators(wire, ["g1", "g2", "g3"])
        single = find_coordinators(wire, ["g1"], version=3)
        cluster = wire.request(DESCRIBE_CLUSTER, 1, {"endpoint_type": 1})
        legacy_metadata = wire.request(METADATA, 1, {"topics": None})
        raw = bytes(wire.received)

    seen = [(b["node_id"], b["host"], b["port"]) for b in metadata["brokers"] + legacy_metadata["brokers"]]
    seen += [(c["node_id"], c["host"], c["port"]) for c in batched["coordinators"]]
    seen += [(single["node_id"], single["host"], single["port"])]
    seen += [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]]
    for node_id, host, port in seen:
        assert host == "127.0.0.1"
        assert port == gateway.port_base + 1 + node_id - 1, (node_id, port)
    assert {b["node_id"] for b in metadata["brokers"]} == set(kafka_cluster.node_addresses)
    for port in real_ports:
        assert port.to_bytes(4, "big") not in raw, f"real broker port {port} reached the client"
    if len(kafka_cluster.node_addresses) > 1:
        leaders = {p["leader_id"] for t in metadata["topics"] for p in t["partitions"]}
        assert len(leaders) > 1, "the test topic should have leaders on several brokers"


def test_every_broker_port_serves_and_group_offsets_commit(gateway, connect, kafka_cluster, make_topic):
    """Each per-broker listener reaches its broker; offsets commit through the group coordinator."""
    topic = make_topic("coord", partitions=3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    for node_id in kafka_cluster.node_addresses:
        with connect(f"127.0.0.1:{gateway.port_base + node_id}") as wire:
            metadata = wire.request(METADATA, 12, {"topics": None, "allow_auto_topic_creation": False})
            assert metadata["brokers"]
    with connect() as wire:
        coordinator = find_coordinators(wire, [group])
    port = coordinator["coordinators"][0]["port"]
    with connect(f"127.0.0.1:{port}") as wire:
        partitions = [{"partition_index": p, "committed_offset": 7 + p, "committed_metadata": ""} for p in range(3)]
        commit = wire.request(OFFSET_COMMIT, 8, {"group_id": group, "generation_id_or_member_epoch": -1,
                                                  "member_id": "", "topics": [{"name": topic,
                                                                               "partitions": partitions}]})
        assert all(p["error_code"] == 0 for t in commit["topics"] for p in t["partitions"]), commit
        fetched = wire.request(OFFSET_FETCH, 8, {"groups": [{"group_id": group, "topics": None}],
                                                 "require_stable": False})
    offsets = {p["partition_index"]: p["committed_offset"] for t in fetched["groups"][0]["topics"]
               for p in t["partitions"]}
    assert offsets == {0: 7, 1: 8, 2: 9}


def test_leader_hints_in_produce_and_fetch_responses_are_rewritten(gateway, connect, kafka_cluster, make_topic):
    """KIP-951: a broker that is not the leader names the leader's endpoint; the client sees the gateway's."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    from gateway.protocol.apis import FETCH, PRODUCE

    if len(kafka_cluster.node_addresses) < 3:
        pytest.skip("needs a multi-broker cluster")
    topic = make_topic("hint", partitions=1)
    with connect() as wire:
        metadata = wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})
    leader = metadata["topics"][0]["partitions"][0]["leader_id"]
    topic_id = metadata["topics"][0]["topic_id"]
    follower = next(node for node in kafka_cluster.node_addresses if node != leader)
    batch = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    batch.append(0, int(time.time() * 1000), b"k", b"v", [])
    with connect(f"127.0.0.1:{gateway.port_base + follower}") as wire:
        produced = wire.request(PRODUCE, 12, {"acks": -1, "timeout_ms": 10000, "topic_data": [
            {"name": topic, "partition_data": [{"index": 0, "records": bytes(batch.build())}]}]})
        fetched = wire.request(FETCH, 17, {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 20, "topics": [
            {"topic_id": topic_id, "partitions": [{"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20,
                                                   "current_leader_epoch": -1, "log_start_offset": -1}]}]})
        raw = bytes(wire.received)
    assert produced["responses"][0]["partition_responses"][0]["error_code"] == 6  # NOT_LEADER_OR_FOLLOWER
    assert fetched["responses"][0]["partitions"][0]["error_code"] == 6
    for response in (produced, fetched):
        endpoints = {e["node_id"]: (e["host"], e["port"]) for e in response["node_endpoints"]}
        assert endpoints == {leader: ("127.0.0.1", gateway.port_base + leader)}, response["node_endpoints"]
    for _, port in kafka_cluster.node_addresses.values():
        assert port.to_bytes(4, "big") not in raw
