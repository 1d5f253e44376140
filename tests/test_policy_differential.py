"""Differential test: the gateway's policy against Kafka's own authorizer.

Three identities (alice: everything under a prefix; bob: part of it; carol: nothing)
send the same requests straight to the brokers, authorized by StandardAuthorizer
with equivalent ACLs, and through the gateway, authorized by the equivalent policy.
What the clients get back (error codes, names, order) and the side effects on
the cluster (topics created or not) must match.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from gateway.protocol.apis import (
    CREATE_TOPICS,
    DELETE_RECORDS,
    DELETE_TOPICS,
    DESCRIBE_CONFIGS,
    FETCH,
    FIND_COORDINATOR,
    INIT_PRODUCER_ID,
    JOIN_GROUP,
    LIST_OFFSETS,
    METADATA,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    PRODUCE,
)
from tests.waiting import wait_until
from tests.wire import WireClient

ALTER_USER_SCRAM_CREDENTIALS = 51
CREATE_ACLS = 30
SCRAM_SHA_512 = 2
# Kafka's ACL codes (AclOperation, ResourceType, PatternType, AclPermissionType)
OPS = {"all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
       "describe_configs": 10}
TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
LITERAL, PREFIXED = 3, 4
ALLOW = 3
USERS = ("alice", "bob", "carol")


def grants(prefix: str) -> list[tuple[str, str, str, str, int]]:
    """(user, resource type, name, operation, pattern) granted both as ACLs and as policy rules."""
    return [
        ("alice", "topic", prefix, "all", PREFIXED),
        ("alice", "group", prefix, "all", PREFIXED),
        ("alice", "transactional_id", prefix, "all", PREFIXED),
        ("bob", "topic", prefix + "a", "write", LITERAL),
        ("bob", "topic", prefix + "a", "read", LITERAL),
        ("bob", "topic", prefix + "b", "describe", LITERAL),
        ("bob", "group", prefix + "g1", "read", LITERAL),
    ]


def policy_for(prefix: str) -> str:
    lines = ["rules:",
             "  - name: etl-everything", '    subjects: ["group:etl"]',
             '    resources: [{topic: {glob: "*"}}, {group: {glob: "*"}}, {transactional_id: {glob: "*"}}, '
             "{cluster: true}]",
             "    operations: [all]"]
    for index, (user, kind, name, operation, pattern) in enumerate(grants(prefix)):
        resource = f"{{prefix: {name}}}" if pattern == PREFIXED else name
        lines += [f"  - name: diff-{index}", f'    subjects: ["user:{user}"]',
                  f"    resources: [{{{kind}: {resource}}}]", f"    operations: [{operation}]"]
    return "\n".join(lines) + "\n"


def admin_wire(kafka_cluster, node_id: int | None = None) -> WireClient:
    host, port = kafka_cluster.node_addresses[node_id or min(kafka_cluster.node_addresses)]
    wire = WireClient(f"{host}:{port}")
    wire.sign_in_scram("admin", kafka_cluster.passwords["admin"])
    return wire


@pytest.fixture(scope="module")
def world(kafka_cluster, admin, gateway):
    """Users with SCRAM credentials, the ACLs, two topics, and their leaders."""
    from kafka.admin import NewTopic

    prefix = f"diff-{uuid.uuid4().hex[:6]}-"
    passwords = {user: uuid.uuid4().hex for user in USERS}
    with admin_wire(kafka_cluster) as wire:
        upsertions = []
        for user, password in passwords.items():
            salt = os.urandom(16)
            salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 4096)
            upsertions.append({"name": user, "mechanism": SCRAM_SHA_512, "iterations": 4096, "salt": salt,
                               "salted_password": salted})
        answer = wire.request(ALTER_USER_SCRAM_CREDENTIALS, 0, {"deletions": [], "upsertions": upsertions})
        assert all(r["error_code"] == 0 for r in answer["results"]), answer
        creations = [{"resource_type": TYPES[kind], "resource_name": name, "resource_pattern_type": pattern,
                      "principal": f"User:{user}", "host": "*", "operation": OPS[operation],
                      "permission_type": ALLOW} for user, kind, name, operation, pattern in grants(prefix)]
        answer = wire.request(CREATE_ACLS, 3, {"creations": creations})
        assert all(r["error_code"] == 0 for r in answer["results"]), answer
    admin.create_topics([NewTopic(prefix + "a", 1, 1), NewTopic(prefix + "b", 1, 1)], timeout_ms=30000)

    def led() -> bool:
        """Whether the broker asked knows both topics' leaders yet (new topics reach each broker in its own time)."""
        with admin_wire(kafka_cluster) as wire:
            answers.append(wire.request(METADATA, 12, {"topics": [{"name": prefix + "a"}, {"name": prefix + "b"}]}))
        return all(t["error_code"] == 0 and t["partitions"] and t["partitions"][0]["leader_id"] >= 0
                   for t in answers[-1]["topics"])

    answers: list[dict] = []
    assert wait_until(led, timeout=30, interval=0.2), answers[-1]
    metadata = answers[-1]
    leaders = {t["name"]: t["partitions"][0]["leader_id"] for t in metadata["topics"]}
    ids = {t["name"]: t["topic_id"] for t in metadata["topics"]}
    time.sleep(2)  # ACLs and credentials reach every broker through the metadata log
    return {"prefix": prefix, "passwords": passwords, "leaders": leaders, "ids": ids}


@pytest.fixture(scope="module")
def gateway_policy(gateway, world):
    from gateway.dev.process import ALLOW_ALL

    gateway.install_policy(policy_for(world["prefix"]))
    yield
    gateway.install_policy(ALLOW_ALL)


class Sides:
    """One identity's connections: straight to a broker, and through the gateway's port for that broker."""

    def __init__(self, kafka_cluster, gateway, idp, world, user: str) -> None:
        self.kafka_cluster, self.gateway, self.idp, self.world, self.user = kafka_cluster, gateway, idp, world, user

    def direct(self, node_id: int) -> WireClient:
        host, port = self.kafka_cluster.node_addresses[node_id]
        wire = WireClient(f"{host}:{port}")
        wire.sign_in_scram(self.user, self.world["passwords"][self.user])
        return wire

    def through_gateway(self, node_id: int) -> WireClient:
        wire = WireClient(f"127.0.0.1:{self.gateway.port_base + node_id}")
        assert wire.sign_in(self.idp.mint(self.user))["error_code"] == 0
        return wire

    def both(self, node_id: int, api_key: int, version: int, body: dict, project) -> tuple:
        return (project(self._settled(self.direct, node_id, api_key, version, body)),
                project(self._settled(self.through_gateway, node_id, api_key, version, body)))

    @staticmethod
    def _settled(connect, node_id: int, api_key: int, version: int, body: dict) -> dict:
        """Ask again while a coordinator is still loading: that answer says nothing about authorization."""
        deadline = time.monotonic() + 30
        while True:
            with connect(node_id) as wire:
                answer = wire.request(api_key, version, body)
            if not TRANSIENT & set(error_codes(answer)) or time.monotonic() > deadline:
                return answer
            time.sleep(0.5)


TRANSIENT = {14, 15}  # COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE


def error_codes(value) -> list[int]:
    if isinstance(value, dict):
        return [code for key, item in value.items()
                for code in ([item] if key == "error_code" else error_codes(item))]
    if isinstance(value, list):
        return [code for item in value for code in error_codes(item)]
    return []


def coordinator_of(kafka_cluster, group: str) -> int:
    """The group's coordinator, asked as admin (the offsets topic may still be coming up)."""
    deadline = time.monotonic() + 60
    with admin_wire(kafka_cluster) as wire:
        while True:
            answer = wire.request(FIND_COORDINATOR, 4, {"key_type": 0, "coordinator_keys": [group]})
            node = answer["coordinators"][0]["node_id"]
            if node >= 0 or time.monotonic() > deadline:
                return node
            time.sleep(0.5)


def records() -> bytes:
    batch = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    batch.append(0, int(time.time() * 1000), b"k", b"v", [])
    return bytes(batch.build())


@pytest.mark.parametrize("user", USERS)
def test_same_answers_as_kafkas_authorizer(kafka_cluster, gateway, idp, world, gateway_policy, user):
    sides = Sides(kafka_cluster, gateway, idp, world, user)
    prefix, leaders = world["prefix"], world["leaders"]
    a, b, missing = prefix + "a", prefix + "b", prefix + "missing"
    any_node = min(kafka_cluster.node_addresses)
    compared = []

    def same(what, direct, via_gateway):
        compared.append(what)
        assert direct == via_gateway, f"{user}: {what}: Kafka {direct} vs gateway {via_gateway}"

    # Metadata: named (existing, other, missing), all topics, auto-creation
    same("metadata named", *sides.both(any_node, METADATA, 12, {
        "topics": [{"name": a}, {"name": b}, {"name": missing}], "allow_auto_topic_creation": False},
        lambda r: [(t["name"], t["error_code"]) for t in r["topics"]]))
    same("metadata all", *sides.both(any_node, METADATA, 12, {"topics": None},
                                     lambda r: sorted(t["name"] for t in r["topics"] if t["name"] in (a, b))))
    same("metadata auto-create", *sides.both(any_node, METADATA, 12, {
        "topics": [{"name": missing}], "allow_auto_topic_creation": True},
        lambda r: [(t["name"], t["error_code"]) for t in r["topics"]]))

    for topic in (a, b):
        leader = leaders[topic]
        same(f"produce {topic}", *sides.both(leader, PRODUCE, 9, {"acks": -1, "timeout_ms": 10000, "topic_data": [
            {"name": topic, "partition_data": [{"index": 0, "records": records()}]}]},
            lambda r: [(t["name"], p["index"], p["error_code"]) for t in r["responses"]
                       for p in t["partition_responses"]]))
        fetch_partition = {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 16}
        same(f"fetch {topic} by name", *sides.both(leader, FETCH, 12, {
            "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20, "topics": [
                {"topic": topic, "partitions": [fetch_partition]}]},
            lambda r: [(t["topic"], p["partition_index"], p["error_code"]) for t in r["responses"]
                       for p in t["partitions"]]))
        same(f"fetch {topic} by id", *sides.both(leader, FETCH, 13, {
            "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20, "topics": [
                {"topic_id": world["ids"][topic], "partitions": [fetch_partition]}]},
            lambda r: [(p["partition_index"], p["error_code"]) for t in r["responses"] for p in t["partitions"]]))
        same(f"list offsets {topic}", *sides.both(leader, LIST_OFFSETS, 7, {
            "replica_id": -1, "topics": [{"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}]},
            lambda r: [(t["name"], p["error_code"]) for t in r["topics"] for p in t["partitions"]]))
        same(f"delete records {topic}", *sides.both(leader, DELETE_RECORDS, 2, {
            "topics": [{"name": topic, "partitions": [{"partition_index": 0, "offset": 0}]}], "timeout_ms": 10000},
            lambda r: [(t["name"], p["error_code"]) for t in r["topics"] for p in t["partitions"]]))

    same("find coordinators", *sides.both(any_node, FIND_COORDINATOR, 4, {
        "key_type": 0, "coordinator_keys": [prefix + "g1", prefix + "g2"]},
        lambda r: [(c["key"], c["error_code"] == 0 or c["error_code"]) for c in r["coordinators"]]))
    group_node = coordinator_of(kafka_cluster, prefix + "g1")
    same("join group", *sides.both(group_node, JOIN_GROUP, 9, {
        "group_id": prefix + "g1", "session_timeout_ms": 10000, "rebalance_timeout_ms": 10000, "member_id": "",
        "protocol_type": "consumer", "protocols": [{"name": "range", "metadata": b""}]},
        lambda r: r["error_code"]))
    same("offset commit", *sides.both(group_node, OFFSET_COMMIT, 8, {
        "group_id": prefix + "g1", "generation_id_or_member_epoch": -1, "member_id": "",
        "topics": [{"name": a, "partitions": [{"partition_index": 0, "committed_offset": 0}]}]},
        lambda r: [(t["name"], p["error_code"]) for t in r["topics"] for p in t["partitions"]]))
    same("offset fetch all topics, several groups", *sides.both(group_node, OFFSET_FETCH, 8, {
        "groups": [{"group_id": prefix + "g1", "topics": None}, {"group_id": prefix + "g2", "topics": None}],
        "require_stable": False},
        lambda r: [(g["group_id"], g["error_code"], sorted(t["name"] for t in g["topics"])) for g in r["groups"]]))
    same("init transactional producer", *sides.both(any_node, INIT_PRODUCER_ID, 5, {
        "transactional_id": prefix + "tx", "transaction_timeout_ms": 60000, "producer_id": -1,
        "producer_epoch": -1}, lambda r: r["error_code"] in (0, 15, 16) or r["error_code"]))
    same("describe configs", *sides.both(any_node, DESCRIBE_CONFIGS, 4, {
        "resources": [{"resource_type": 2, "resource_name": a, "configuration_keys": ["cleanup.policy"]},
                      {"resource_type": 4, "resource_name": str(any_node), "configuration_keys": ["log.retention.ms"]}],
        "include_synonyms": False, "include_documentation": False},
        lambda r: [(x["resource_type"], x["resource_name"], x["error_code"]) for x in r["results"]]))

    # Create topics: each side creates its own name; the outcome and the side effect must agree.
    created = {}
    for side, connect in (("direct", sides.direct), ("gateway", sides.through_gateway)):
        name = f"{prefix}new-{side}-{user}"
        with connect(any_node) as wire:
            answer = wire.request(CREATE_TOPICS, 7, {"topics": [{"name": name, "num_partitions": 1,
                                                                 "replication_factor": 1}], "timeout_ms": 30000})
        created[side] = answer["topics"][0]["error_code"]
    same("create topics", created["direct"], created["gateway"])
    exists: dict[str, bool] = {}

    def look() -> bool:
        with admin_wire(kafka_cluster) as wire:
            existing = wire.request(METADATA, 12, {"topics": [{"name": f"{prefix}new-{side}-{user}"}
                                                              for side in ("direct", "gateway")]})
        exists.update({t["name"].split("-new-")[1].split("-")[0]: t["error_code"] == 0 for t in existing["topics"]})
        return all(exists[side] for side, error in created.items() if error == 0)

    # A topic created through one broker reaches another's metadata a moment later (CI once saw the gateway's,
    # created last, missing): wait, bounded, for each side that reported success to show its topic.
    wait_until(look, timeout=10, interval=0.2)
    same("topic created on the cluster", exists["direct"], exists["gateway"])

    # Delete topics: each side deletes the topic it created (or tried to); outcome and side effect agree.
    deleted = {}
    for side, connect in (("direct", sides.direct), ("gateway", sides.through_gateway)):
        with connect(any_node) as wire:
            answer = wire.request(DELETE_TOPICS, 6, {"topics": [{"name": f"{prefix}new-{side}-{user}"}],
                                                     "timeout_ms": 30000})
        deleted[side] = answer["responses"][0]["error_code"]
    same("delete topics", deleted["direct"], deleted["gateway"])
    assert len(compared) >= 20
