"""Authorization rules per API, against what Kafka's authorizer makes a client see.

Every request, answer and fixed response goes through the codec at the
version under test, so the layouts are the real ones.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gateway.authz import Outcome, authorize
from gateway.handlers.apiversions import spec_versions
from gateway.protocol import codec
from gateway.protocol.apis import (
    ADD_OFFSETS_TO_TXN,
    ADD_PARTITIONS_TO_TXN,
    ALTER_CONFIGS,
    ALTER_PARTITION_REASSIGNMENTS,
    ALTER_SHARE_GROUP_OFFSETS,
    CONSUMER_GROUP_DESCRIBE,
    CONSUMER_GROUP_HEARTBEAT,
    CREATE_PARTITIONS,
    CREATE_TOPICS,
    DELETE_GROUPS,
    DELETE_RECORDS,
    DELETE_SHARE_GROUP_OFFSETS,
    DELETE_TOPICS,
    DESCRIBE_CLUSTER,
    DESCRIBE_CONFIGS,
    DESCRIBE_GROUPS,
    DESCRIBE_LOG_DIRS,
    DESCRIBE_PRODUCERS,
    DESCRIBE_SHARE_GROUP_OFFSETS,
    DESCRIBE_TRANSACTIONS,
    ELECT_LEADERS,
    END_TXN,
    FETCH,
    FIND_COORDINATOR,
    FORWARDED,
    HEARTBEAT,
    INCREMENTAL_ALTER_CONFIGS,
    INIT_PRODUCER_ID,
    JOIN_GROUP,
    LEAVE_GROUP,
    LIST_GROUPS,
    LIST_OFFSETS,
    LIST_PARTITION_REASSIGNMENTS,
    LIST_TRANSACTIONS,
    METADATA,
    OFFSET_COMMIT,
    OFFSET_DELETE,
    OFFSET_FETCH,
    OFFSET_FOR_LEADER_EPOCH,
    PRODUCE,
    SHARE_ACKNOWLEDGE,
    SHARE_FETCH,
    SHARE_GROUP_DESCRIBE,
    SHARE_GROUP_HEARTBEAT,
    SYNC_GROUP,
    TXN_OFFSET_COMMIT,
)

ZERO = bytes(16)
IDS = {"orders": b"\x01" * 16, "payments": b"\x02" * 16, "secret": b"\x03" * 16, "newtopic": None}
UNKNOWN_ID = b"\x09" * 16
REFUSED = {"secret", "rogue", "tx-no"}  # refused every operation by the default policy

ALL_TOPIC_OPS = sum(1 << code for code in (3, 4, 5, 6, 7, 8, 10, 11))
ALL_GROUP_OPS = sum(1 << code for code in (3, 6, 8, 10, 11))


class Topics:
    """The gateway's topic ids: orders, payments and secret exist; newtopic does not."""

    def name_of(self, topic_id: bytes) -> str | None:
        return next((name for name, known in IDS.items() if known == topic_id), None)

    def id_of(self, name: str) -> bytes | None:
        return IDS.get(name)


@dataclass
class Policy:
    """Refuses the names in ``refused`` (any resource) and (type, name, op) in ``refused_ops``;
    the cluster grants only ``cluster`` operations. Records every decision."""

    refused: set = field(default_factory=lambda: set(REFUSED))
    refused_ops: set = field(default_factory=set)
    cluster: set = field(default_factory=set)
    calls: list = field(default_factory=list)

    def __call__(self, resource_type: str, name: str, operation: str) -> bool:
        self.calls.append((resource_type, name, operation))
        if resource_type == "cluster":
            return operation in self.cluster
        return name not in self.refused and (resource_type, name, operation) not in self.refused_ops


def request(api_key: int, version: int, body: dict) -> dict:
    return codec.decode_request(api_key, version, codec.encode_request(api_key, version, body))


def wire(api_key: int, version: int, body: dict) -> dict:
    """A response body as the client would decode it."""
    return codec.decode_response(api_key, version, codec.encode_response(api_key, version, body))


def run(api_key: int, version: int, body: dict, policy: Policy | None = None) -> tuple[Outcome, Policy]:
    policy = policy or Policy()
    return authorize(api_key, version, request(api_key, version, body), policy, Topics()), policy


def untouched(outcome: Outcome) -> bool:
    return outcome.forward is None and outcome.answer is None and outcome.fix_response is None and not outcome.close


def fixed(api_key: int, version: int, outcome: Outcome, upstream: dict) -> dict:
    return wire(api_key, version, outcome.fix_response(wire(api_key, version, upstream)))


def answered(api_key: int, version: int, outcome: Outcome) -> dict:
    assert outcome.forward is None and outcome.fix_response is None and outcome.close is None
    return wire(api_key, version, outcome.answer)


def ends(api_key: int) -> list[int]:
    low, high = spec_versions(api_key)
    return sorted({low, high})


def name_of(key: str | bytes) -> str:
    return key if isinstance(key, str) else Topics().name_of(key)


# --------------------------------------------------------------------------
# APIs whose parts (topics, groups, ids, resources) are decided one by one


@dataclass
class Parts:
    """One API in the generic three-way test: all allowed, some, none."""

    api_key: int
    versions: list[int]
    resource: str
    operation: str
    error: int
    build: Callable[[int, list[str]], dict]  # a request naming these parts
    upstream: Callable[[int, dict], dict]  # a broker's success answer to a forwarded request
    results: Callable[[int, dict], list[tuple[str, list[int]]]]  # (part, error codes) in response order
    names: tuple[str, str, str] = ("orders", "secret", "payments")
    always_fix: bool = False  # the answer is filtered even when every part is allowed
    forwards_empty: bool = False  # Kafka still asks the coordinator with no part left

    def __str__(self) -> str:
        return type(self).__name__


def topic_key(by_id: bool, name: str) -> dict:
    return {"topic_id": IDS[name]} if by_id else {"name": name}


PARTS = {
    "produce": Parts(
        PRODUCE, [3, 12, 13], "topic", "write", 29,
        lambda v, names: {"acks": -1, "timeout_ms": 1000, "topic_data": [
            {**topic_key(v >= 13, name), "partition_data": [{"index": 0, "records": None}]} for name in names]},
        lambda v, body: {"responses": [
            {**{k: t[k] for k in ("name", "topic_id") if k in t},
             "partition_responses": [{"index": 0, "base_offset": 42}]} for t in body["topic_data"]]},
        lambda v, body: [(name_of(t.get("topic_id") or t.get("name")),
                          [p["error_code"] for p in t["partition_responses"]]) for t in body["responses"]],
    ),
    "fetch": Parts(
        FETCH, [4, 12, 13, 18], "topic", "read", 29,
        lambda v, names: {"replica_id": -1, "session_id": 0, "session_epoch": -1, "topics": [
            {**({"topic_id": IDS[name]} if v >= 13 else {"topic": name}),
             "partitions": [{"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1024}]} for name in names]},
        lambda v, body: {"responses": [
            {**{k: t[k] for k in ("topic", "topic_id") if k in t},
             "partitions": [{"partition_index": 0, "high_watermark": 10, "records": b""}]} for t in body["topics"]]},
        lambda v, body: [(name_of(t.get("topic_id") or t.get("topic")), [p["error_code"] for p in t["partitions"]])
                         for t in body["responses"]],
    ),
    "list_offsets": Parts(
        LIST_OFFSETS, ends(LIST_OFFSETS), "topic", "describe", 29,
        lambda v, names: {"replica_id": -1, "topics": [
            {"name": name, "partitions": [{"partition_index": 0, "timestamp": -1}]} for name in names]},
        lambda v, body: {"topics": [
            {"name": t["name"], "partitions": [{"partition_index": 0, "offset": 7}]} for t in body["topics"]]},
        lambda v, body: [(t["name"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
    ),
    "offset_for_leader_epoch": Parts(
        OFFSET_FOR_LEADER_EPOCH, ends(OFFSET_FOR_LEADER_EPOCH), "topic", "describe", 29,
        lambda v, names: {"topics": [
            {"topic": name, "partitions": [{"partition": 0, "leader_epoch": 1}]} for name in names]},
        lambda v, body: {"topics": [
            {"topic": t["topic"], "partitions": [{"partition": 0, "end_offset": 9}]} for t in body["topics"]]},
        lambda v, body: [(t["topic"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
    ),
    "describe_producers": Parts(
        DESCRIBE_PRODUCERS, ends(DESCRIBE_PRODUCERS), "topic", "read", 29,
        lambda v, names: {"topics": [{"name": name, "partition_indexes": [0, 1]} for name in names]},
        lambda v, body: {"topics": [
            {"name": t["name"], "partitions": [{"partition_index": i} for i in t["partition_indexes"]]}
            for t in body["topics"]]},
        lambda v, body: [(t["name"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
    ),
    "delete_records": Parts(
        DELETE_RECORDS, ends(DELETE_RECORDS), "topic", "delete", 29,
        lambda v, names: {"topics": [
            {"name": name, "partitions": [{"partition_index": 0, "offset": 5}]} for name in names]},
        lambda v, body: {"topics": [
            {"name": t["name"], "partitions": [{"partition_index": 0, "low_watermark": 5}]} for t in body["topics"]]},
        lambda v, body: [(t["name"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
    ),
    "create_partitions": Parts(
        CREATE_PARTITIONS, ends(CREATE_PARTITIONS), "topic", "alter", 29,
        lambda v, names: {"topics": [{"name": name, "count": 3, "assignments": None} for name in names]},
        lambda v, body: {"results": [{"name": t["name"]} for t in body["topics"]]},
        lambda v, body: [(r["name"], [r["error_code"]]) for r in body["results"]],
    ),
    "offset_commit": Parts(
        OFFSET_COMMIT, [2, 9, 10], "topic", "read", 29,
        lambda v, names: {"group_id": "app", "topics": [
            {**topic_key(v >= 10, name), "partitions": [{"partition_index": 0, "committed_offset": 3}]}
            for name in names]},
        lambda v, body: {"topics": [
            {**{k: t[k] for k in ("name", "topic_id") if k in t}, "partitions": [{"partition_index": 0}]}
            for t in body["topics"]]},
        lambda v, body: [(name_of(t.get("topic_id") or t.get("name")), [p["error_code"] for p in t["partitions"]])
                         for t in body["topics"]],
    ),
    "txn_offset_commit": Parts(
        TXN_OFFSET_COMMIT, ends(TXN_OFFSET_COMMIT), "topic", "read", 29,
        lambda v, names: {"transactional_id": "tx-ok", "group_id": "app", "topics": [
            {"name": name, "partitions": [{"partition_index": 0, "committed_offset": 3}]} for name in names]},
        lambda v, body: {"topics": [
            {"name": t["name"], "partitions": [{"partition_index": 0}]} for t in body["topics"]]},
        lambda v, body: [(t["name"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
    ),
    "offset_delete": Parts(
        OFFSET_DELETE, ends(OFFSET_DELETE), "topic", "read", 29,
        lambda v, names: {"group_id": "app", "topics": [
            {"name": name, "partitions": [{"partition_index": 0}]} for name in names]},
        lambda v, body: {"topics": [
            {"name": t["name"], "partitions": [{"partition_index": 0}]} for t in body["topics"]]},
        lambda v, body: [(t["name"], [p["error_code"] for p in t["partitions"]]) for t in body["topics"]],
        forwards_empty=True,
    ),
    "create_topics": Parts(
        CREATE_TOPICS, ends(CREATE_TOPICS), "topic", "create", 29,
        lambda v, names: {"topics": [{"name": name, "num_partitions": 1, "replication_factor": 1} for name in names]},
        lambda v, body: {"topics": [{"name": t["name"], "topic_id": b"\x07" * 16, "num_partitions": 1,
                                     "replication_factor": 1} for t in body["topics"]]},
        lambda v, body: [(t["name"], [t["error_code"]]) for t in body["topics"]],
    ),
    "delete_topics": Parts(
        DELETE_TOPICS, [1, 5, 6], "topic", "delete", 29,
        lambda v, names: ({"topics": [{"name": name} for name in names]} if v >= 6 else {"topic_names": names}),
        lambda v, body: {"responses": [{"name": name} for name in (
            [t["name"] for t in body["topics"]] if v >= 6 else body["topic_names"])]},
        lambda v, body: [(r["name"], [r["error_code"]]) for r in body["responses"]],
    ),
    "find_coordinator": Parts(
        FIND_COORDINATOR, [4, 6], "group", "describe", 30,
        lambda v, names: {"key_type": 0, "coordinator_keys": names},
        lambda v, body: {"coordinators": [
            {"key": key, "node_id": 1, "host": "gw", "port": 9092} for key in body["coordinator_keys"]]},
        lambda v, body: [(c["key"], [c["error_code"]]) for c in body["coordinators"]],
        names=("app", "rogue", "other"),
    ),
    "delete_groups": Parts(
        DELETE_GROUPS, ends(DELETE_GROUPS), "group", "delete", 30,
        lambda v, names: {"groups_names": names},
        lambda v, body: {"results": [{"group_id": g} for g in body["groups_names"]]},
        lambda v, body: [(r["group_id"], [r["error_code"]]) for r in body["results"]],
        names=("app", "rogue", "other"),
    ),
    "describe_groups": Parts(
        DESCRIBE_GROUPS, ends(DESCRIBE_GROUPS), "group", "describe", 30,
        lambda v, names: {"groups": names},
        lambda v, body: {"groups": [{"group_id": g, "group_state": "Stable"} for g in body["groups"]]},
        lambda v, body: [(g["group_id"], [g["error_code"]]) for g in body["groups"]],
        names=("app", "rogue", "other"),
    ),
    "consumer_group_describe": Parts(
        CONSUMER_GROUP_DESCRIBE, ends(CONSUMER_GROUP_DESCRIBE), "group", "describe", 30,
        lambda v, names: {"group_ids": names},
        lambda v, body: {"groups": [{"group_id": g, "group_state": "Stable"} for g in body["group_ids"]]},
        lambda v, body: [(g["group_id"], [g["error_code"]]) for g in body["groups"]],
        names=("app", "rogue", "other"), always_fix=True,
    ),
    "describe_transactions": Parts(
        DESCRIBE_TRANSACTIONS, ends(DESCRIBE_TRANSACTIONS), "transactional_id", "describe", 53,
        lambda v, names: {"transactional_ids": names},
        lambda v, body: {"transaction_states": [
            {"transactional_id": t, "transaction_state": "Ongoing"} for t in body["transactional_ids"]]},
        lambda v, body: [(s["transactional_id"], [s["error_code"]]) for s in body["transaction_states"]],
        names=("tx-ok", "tx-no", "tx-other"), always_fix=True,
    ),
    "describe_configs": Parts(
        DESCRIBE_CONFIGS, ends(DESCRIBE_CONFIGS), "topic", "describe_configs", 29,
        lambda v, names: {"resources": [
            {"resource_type": 2, "resource_name": name, "configuration_keys": None} for name in names]},
        lambda v, body: {"results": [{"resource_type": 2, "resource_name": r["resource_name"]}
                                     for r in body["resources"]]},
        lambda v, body: [(r["resource_name"], [r["error_code"]]) for r in body["results"]],
    ),
    "alter_configs": Parts(
        ALTER_CONFIGS, ends(ALTER_CONFIGS), "topic", "alter_configs", 29,
        lambda v, names: {"resources": [{"resource_type": 2, "resource_name": name, "configs": []} for name in names]},
        lambda v, body: {"responses": [{"resource_type": 2, "resource_name": r["resource_name"]}
                                       for r in body["resources"]]},
        lambda v, body: [(r["resource_name"], [r["error_code"]]) for r in body["responses"]],
    ),
    "incremental_alter_configs": Parts(
        INCREMENTAL_ALTER_CONFIGS, ends(INCREMENTAL_ALTER_CONFIGS), "topic", "alter_configs", 29,
        lambda v, names: {"resources": [{"resource_type": 2, "resource_name": name, "configs": []} for name in names]},
        lambda v, body: {"responses": [{"resource_type": 2, "resource_name": r["resource_name"]}
                                       for r in body["resources"]]},
        lambda v, body: [(r["resource_name"], [r["error_code"]]) for r in body["responses"]],
    ),
}

PARTS_CASES = [pytest.param(name, version, id=f"{name}-v{version}")
               for name, parts in PARTS.items() for version in parts.versions]


def test_every_forwarded_api_is_tested_here():
    tested = {parts.api_key for parts in PARTS.values()} | {
        METADATA, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, LIST_GROUPS,
        INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, DESCRIBE_LOG_DIRS, ELECT_LEADERS,
        ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS, DESCRIBE_CLUSTER, LIST_TRANSACTIONS,
        CONSUMER_GROUP_HEARTBEAT,
    } | {  # tests/test_authz_share.py
        SHARE_GROUP_HEARTBEAT, SHARE_GROUP_DESCRIBE, SHARE_FETCH, SHARE_ACKNOWLEDGE, DESCRIBE_SHARE_GROUP_OFFSETS,
        ALTER_SHARE_GROUP_OFFSETS, DELETE_SHARE_GROUP_OFFSETS,
    }
    assert tested == FORWARDED


@pytest.mark.parametrize(("name", "version"), PARTS_CASES)
def test_parts_all_allowed_is_untouched(name: str, version: int):
    parts = PARTS[name]
    allowed = [parts.names[0], parts.names[2]]
    outcome, policy = run(parts.api_key, version, parts.build(version, allowed))
    assert outcome.forward is None and outcome.answer is None and outcome.close is None
    assert (outcome.fix_response is not None) == parts.always_fix
    assert outcome.denied == []
    assert (parts.resource, allowed[0], parts.operation) in policy.calls


@pytest.mark.parametrize(("name", "version"), PARTS_CASES)
def test_parts_partly_allowed_forwards_the_rest_and_merges_in_request_order(name: str, version: int):
    parts = PARTS[name]
    first, refused, last = parts.names
    outcome, _ = run(parts.api_key, version, parts.build(version, [first, refused, last]))
    assert outcome.answer is None and outcome.close is None
    assert outcome.denied == [(parts.resource, refused, parts.operation)]
    forwarded = request(parts.api_key, version, outcome.forward)
    assert forwarded == request(parts.api_key, version, parts.build(version, [first, last]))

    results = parts.results(version, fixed(parts.api_key, version, outcome, parts.upstream(version, forwarded)))
    assert [name for name, _ in results] == [first, refused, last]
    assert all(not any(errors) for name, errors in results if name != refused)
    assert set(dict(results)[refused]) == {parts.error}


@pytest.mark.parametrize(("name", "version"), PARTS_CASES)
def test_parts_nothing_allowed_is_answered(name: str, version: int):
    parts = PARTS[name]
    refused = parts.names[1]
    outcome, _ = run(parts.api_key, version, parts.build(version, [refused]))
    assert outcome.denied == [(parts.resource, refused, parts.operation)]
    if parts.forwards_empty:
        assert request(parts.api_key, version, outcome.forward) == request(
            parts.api_key, version, parts.build(version, []))
        answer = fixed(parts.api_key, version, outcome, parts.upstream(version, outcome.forward))
    else:
        answer = answered(parts.api_key, version, outcome)
    assert parts.results(version, answer) == [(refused, [parts.error] * len(parts.results(version, answer)[0][1]))]


# --------------------------------------------------------------------------
# Produce


def transactional_batch() -> bytes:
    """A record-batch header (magic 2) with the transactional attribute and no records."""
    return struct.pack(">qiiBIhiqqqhii", 0, 49, 0, 2, 0, 0x10, -1, 0, 0, 7, 0, 0, 0)


@pytest.mark.parametrize("version", ends(PRODUCE))
def test_produce_refused_transactional_id_fails_every_partition(version: int):
    body = PARTS["produce"].build(version, ["orders", "payments"])
    outcome, _ = run(PRODUCE, version, {**body, "transactional_id": "tx-no"})
    answer = answered(PRODUCE, version, outcome)
    partitions = [p for t in answer["responses"] for p in t["partition_responses"]]
    assert [p["error_code"] for p in partitions] == [53, 53]
    assert partitions[0]["base_offset"] == -1 and partitions[0].get("log_start_offset", -1) == -1
    assert outcome.denied == [("transactional_id", "tx-no", "write")]


@pytest.mark.parametrize("version", ends(PRODUCE))
def test_produce_transactional_batches_without_transactional_id_are_refused(version: int):
    # CVE-2018-17196: transactional records need a transactional id the identity may write.
    body = PARTS["produce"].build(version, ["orders"])
    body["topic_data"][0]["partition_data"][0]["records"] = transactional_batch()
    outcome, _ = run(PRODUCE, version, body)
    answer = answered(PRODUCE, version, outcome)
    assert answer["responses"][0]["partition_responses"][0]["error_code"] == 53
    assert outcome.denied == [("transactional_id", "", "write")]


def test_produce_allowed_transactional_id_is_untouched():
    body = PARTS["produce"].build(9, ["orders"])
    body["topic_data"][0]["partition_data"][0]["records"] = transactional_batch()
    outcome, policy = run(PRODUCE, 9, {**body, "transactional_id": "tx-ok"})
    assert untouched(outcome)
    assert ("transactional_id", "tx-ok", "write") in policy.calls


@pytest.mark.parametrize("version", ends(PRODUCE))
def test_produce_acks_zero_closes_instead_of_answering(version: int):
    # No response exists for acks=0: Kafka writes what it may, then closes the connection.
    build = PARTS["produce"].build
    partly, _ = run(PRODUCE, version, {**build(version, ["orders", "secret"]), "acks": 0})
    assert partly.answer is None and partly.close
    assert request(PRODUCE, version, partly.forward) == request(PRODUCE, version, {**build(version, ["orders"]),
                                                                                    "acks": 0})
    refused, _ = run(PRODUCE, version, {**build(version, ["secret"]), "acks": 0})
    assert refused.answer is None and refused.forward is None and refused.close
    allowed, _ = run(PRODUCE, version, {**build(version, ["orders"]), "acks": 0})
    assert untouched(allowed)
    transactional, _ = run(PRODUCE, version, {**build(version, ["orders"]), "acks": 0, "transactional_id": "tx-no"})
    assert transactional.answer is None and transactional.forward is None and transactional.close


def test_produce_unknown_topic_id_is_unknown_topic_id():
    body = PARTS["produce"].build(13, ["orders"])
    body["topic_data"].append({"topic_id": UNKNOWN_ID, "partition_data": [{"index": 0, "records": None}]})
    outcome, _ = run(PRODUCE, 13, body)
    fixed_response = fixed(PRODUCE, 13, outcome, PARTS["produce"].upstream(13, outcome.forward))
    assert [(t["topic_id"], t["partition_responses"][0]["error_code"]) for t in fixed_response["responses"]] == [
        (IDS["orders"], 0), (UNKNOWN_ID, 100)]
    assert outcome.denied == []


# --------------------------------------------------------------------------
# Fetch


@pytest.mark.parametrize("version", [7, 12, 18])
def test_fetch_rewrite_is_sessionless_and_refused_partitions_are_empty(version: int):
    body = PARTS["fetch"].build(version, ["orders", "secret"])
    forgotten = {"topic_id": IDS["payments"]} if version >= 13 else {"topic": "payments"}
    body.update(session_id=77, session_epoch=3, forgotten_topics_data=[{**forgotten, "partitions": [0]}])
    outcome, _ = run(FETCH, version, body)
    forwarded = request(FETCH, version, outcome.forward)
    assert (forwarded["session_id"], forwarded["session_epoch"], forwarded["forgotten_topics_data"]) == (0, -1, [])
    response = fixed(FETCH, version, outcome, PARTS["fetch"].upstream(version, forwarded))
    refused = response["responses"][1]["partitions"][0]
    assert refused["error_code"] == 29
    assert (refused["high_watermark"], refused["last_stable_offset"], refused["log_start_offset"]) == (-1, -1, -1)
    assert bytes(refused["records"]) == b""


@pytest.mark.parametrize("version", [4, 14, 15, 18])
def test_fetch_from_a_replica_is_refused(version: int):
    # CVE-2018-1288 class: a follower (replica id >= 0) needs CLUSTER_ACTION.
    body = PARTS["fetch"].build(version, ["orders"])
    if version >= 15:
        body["replica_state"] = {"replica_id": 1, "replica_epoch": 5}
    else:
        body["replica_id"] = 1
    outcome, _ = run(FETCH, version, body)
    answer = answered(FETCH, version, outcome)
    assert answer["responses"][0]["partitions"][0]["error_code"] == 29
    assert outcome.denied == [("cluster", "kafka-cluster", "cluster_action")]


def test_fetch_unknown_topic_id_is_unknown_topic_id():
    body = PARTS["fetch"].build(13, ["orders"])
    body["topics"].append({"topic_id": UNKNOWN_ID, "partitions": [{"partition": 0}]})
    outcome, _ = run(FETCH, 13, body)
    response = fixed(FETCH, 13, outcome, PARTS["fetch"].upstream(13, outcome.forward))
    assert [t["partitions"][0]["error_code"] for t in response["responses"]] == [0, 100]


# --------------------------------------------------------------------------
# Metadata


def metadata_topic(version: int, name: str, error: int = 0) -> dict:
    return {"name": name, "error_code": error, "topic_id": IDS.get(name) or ZERO,
            "partitions": [{"partition_index": 0, "leader_id": 1, "replica_nodes": [1], "isr_nodes": [1]}]}


def metadata_upstream(version: int, names: list[str]) -> dict:
    return {"brokers": [{"node_id": 1, "host": "gw", "port": 9092}], "cluster_id": "c", "controller_id": 1,
            "topics": [metadata_topic(version, name) for name in names]}


@pytest.mark.parametrize("version", ends(METADATA))
def test_metadata_all_topics_are_filtered(version: int):
    outcome, _ = run(METADATA, version, {"topics": [] if version == 0 else None})
    assert outcome.forward is None and outcome.answer is None and outcome.denied == []
    response = fixed(METADATA, version, outcome, metadata_upstream(version, ["orders", "secret", "payments"]))
    assert [t["name"] for t in response["topics"]] == ["orders", "payments"]
    assert response["brokers"][0]["node_id"] == 1


@pytest.mark.parametrize("version", ends(METADATA))
def test_metadata_named_topics(version: int):
    allowed, _ = run(METADATA, version, {"topics": [{"name": "orders"}], "allow_auto_topic_creation": False})
    assert untouched(allowed)

    outcome, _ = run(METADATA, version, {"topics": [{"name": n} for n in ("orders", "secret", "payments")],
                                         "allow_auto_topic_creation": False})
    assert [t["name"] for t in request(METADATA, version, outcome.forward)["topics"]] == ["orders", "payments"]
    response = fixed(METADATA, version, outcome, metadata_upstream(version, ["orders", "payments"]))
    assert [(t["name"], t["error_code"]) for t in response["topics"]] == [("orders", 0), ("secret", 29),
                                                                          ("payments", 0)]
    refused = response["topics"][1]
    assert refused["partitions"] == [] and refused.get("topic_id", ZERO) == ZERO  # existence not revealed
    assert outcome.denied == [("topic", "secret", "describe")]


@pytest.mark.parametrize("version", ends(METADATA))
def test_metadata_every_named_topic_refused_still_asks_for_brokers(version: int):
    outcome, _ = run(METADATA, version, {"topics": [{"name": "secret"}], "allow_auto_topic_creation": False})
    assert request(METADATA, version, outcome.forward)["topics"] == []
    # v0 reads an empty list as "all topics": whatever comes back besides the refusal is dropped.
    response = fixed(METADATA, version, outcome, metadata_upstream(version, ["orders", "secret"] if version == 0
                                                                   else []))
    assert [(t["name"], t["error_code"]) for t in response["topics"]] == [("secret", 29)]
    assert response["brokers"]


@pytest.mark.parametrize("version", [12, 13])
def test_metadata_by_topic_id(version: int):
    topics = [{"topic_id": IDS["orders"], "name": None}, {"topic_id": IDS["secret"], "name": None},
              {"topic_id": UNKNOWN_ID, "name": None}]
    outcome, _ = run(METADATA, version, {"topics": topics, "allow_auto_topic_creation": False})
    assert [t["topic_id"] for t in request(METADATA, version, outcome.forward)["topics"]] == [IDS["orders"]]
    upstream = metadata_upstream(version, ["orders"])
    response = fixed(METADATA, version, outcome, upstream)
    assert [(t["topic_id"], t["name"], t["error_code"]) for t in response["topics"]] == [
        (IDS["orders"], "orders", 0), (IDS["secret"], None, 29), (UNKNOWN_ID, None, 100)]


@pytest.mark.parametrize("version", [4, 13])
def test_metadata_auto_creation_needs_create(version: int):
    body = {"topics": [{"name": "orders"}, {"name": "newtopic"}], "allow_auto_topic_creation": True}
    # The identity may describe both but create neither: the missing topic is refused
    # (Kafka's unauthorizedForCreateTopics), the existing one is fetched without creation.
    policy = Policy(refused_ops={("topic", "orders", "create"), ("topic", "newtopic", "create")})
    outcome, _ = run(METADATA, version, body, policy)
    forwarded = request(METADATA, version, outcome.forward)
    assert forwarded["allow_auto_topic_creation"] is False
    assert [t["name"] for t in forwarded["topics"]] == ["orders"]
    response = fixed(METADATA, version, outcome, metadata_upstream(version, ["orders"]))
    assert [(t["name"], t["error_code"]) for t in response["topics"]] == [("orders", 0), ("newtopic", 29)]
    assert outcome.denied == [("topic", "newtopic", "create")]

    creator, _ = run(METADATA, version, body)
    assert untouched(creator)
    cluster_creator, policy = run(METADATA, version, body, Policy(
        refused_ops={("topic", "newtopic", "create")}, cluster={"create"}))
    assert untouched(cluster_creator)


@pytest.mark.parametrize("version", [1, 3])
def test_metadata_auto_creation_before_the_flag(version: int):
    # v1-v3 always allow auto-creation: a missing topic the identity may not create is never asked for.
    policy = Policy(refused_ops={("topic", "orders", "create"), ("topic", "newtopic", "create")})
    outcome, _ = run(METADATA, version, {"topics": [{"name": "orders"}, {"name": "newtopic"}]}, policy)
    assert [t["name"] for t in request(METADATA, version, outcome.forward)["topics"]] == ["orders"]
    response = fixed(METADATA, version, outcome, metadata_upstream(version, ["orders"]))
    assert [(t["name"], t["error_code"]) for t in response["topics"]] == [("orders", 0), ("newtopic", 29)]


@pytest.mark.parametrize("version", [8, 10, 13])
def test_metadata_authorized_operations_are_the_identitys(version: int):
    body = {"topics": [{"name": "orders"}], "allow_auto_topic_creation": False,
            "include_topic_authorized_operations": True, "include_cluster_authorized_operations": True}
    policy = Policy(refused_ops={("topic", "orders", "delete")}, cluster={"describe", "create"})
    outcome, _ = run(METADATA, version, body, policy)
    assert outcome.forward is None
    upstream = metadata_upstream(version, ["orders"])
    upstream["topics"][0]["topic_authorized_operations"] = ALL_TOPIC_OPS  # the gateway's own rights
    response = fixed(METADATA, version, outcome, upstream)
    assert response["topics"][0]["topic_authorized_operations"] == ALL_TOPIC_OPS - (1 << 6)
    if version <= 10:
        assert response["cluster_authorized_operations"] == (1 << 5) | (1 << 8)


# --------------------------------------------------------------------------
# Offsets of groups


@pytest.mark.parametrize("version", [2, 10])
def test_offset_commit_refused_group_fails_every_partition(version: int):
    body = PARTS["offset_commit"].build(version, ["orders", "payments"])
    outcome, policy = run(OFFSET_COMMIT, version, {**body, "group_id": "rogue"})
    answer = answered(OFFSET_COMMIT, version, outcome)
    assert [p["error_code"] for t in answer["topics"] for p in t["partitions"]] == [30, 30]
    assert outcome.denied == [("group", "rogue", "read")]
    assert not any(kind == "topic" for kind, _, _ in policy.calls)  # Kafka stops at the group


def test_offset_commit_unknown_topic_id():
    body = PARTS["offset_commit"].build(10, ["orders"])
    body["topics"].append({"topic_id": UNKNOWN_ID, "partitions": [{"partition_index": 0}]})
    outcome, _ = run(OFFSET_COMMIT, 10, body)
    response = fixed(OFFSET_COMMIT, 10, outcome, PARTS["offset_commit"].upstream(10, outcome.forward))
    assert [t["partitions"][0]["error_code"] for t in response["topics"]] == [0, 100]


@pytest.mark.parametrize(("version", "group"), [(0, "rogue"), (5, "rogue"), (0, "app"), (5, "app")])
def test_txn_offset_commit_refused_transaction_or_group_fails_every_partition(version: int, group: str):
    body = {**PARTS["txn_offset_commit"].build(version, ["orders"]), "group_id": group}
    transactional_id = "tx-no" if group == "app" else "tx-ok"
    outcome, _ = run(TXN_OFFSET_COMMIT, version, {**body, "transactional_id": transactional_id})
    answer = answered(TXN_OFFSET_COMMIT, version, outcome)
    assert answer["topics"][0]["partitions"][0]["error_code"] == (53 if group == "app" else 30)


def test_offset_delete_refused_group_is_a_top_level_error():
    outcome, _ = run(OFFSET_DELETE, 0, {**PARTS["offset_delete"].build(0, ["orders"]), "group_id": "rogue"})
    answer = answered(OFFSET_DELETE, 0, outcome)
    assert (answer["error_code"], answer["topics"]) == (30, [])
    assert outcome.denied == [("group", "rogue", "delete")]


def offset_fetch_topic(version: int, name: str) -> dict:
    key = {"topic_id": IDS[name]} if version >= 10 else {"name": name}
    return {**key, "partitions": [{"partition_index": 0, "committed_offset": 12}]}


@pytest.mark.parametrize("version", [1, 2, 7])
def test_offset_fetch_single_group(version: int):
    topics = [{"name": "orders", "partition_indexes": [0]}, {"name": "secret", "partition_indexes": [0]}]
    outcome, _ = run(OFFSET_FETCH, version, {"group_id": "app", "topics": topics})
    assert request(OFFSET_FETCH, version, outcome.forward)["topics"] == [topics[0]]
    response = fixed(OFFSET_FETCH, version, outcome, {"topics": [offset_fetch_topic(version, "orders")]})
    assert [(t["name"], t["partitions"][0]["error_code"], t["partitions"][0]["committed_offset"])
            for t in response["topics"]] == [("orders", 0, 12), ("secret", 29, -1)]

    refused, _ = run(OFFSET_FETCH, version, {"group_id": "rogue", "topics": topics})
    answer = answered(OFFSET_FETCH, version, refused)
    if version >= 2:
        assert (answer["error_code"], answer["topics"]) == (30, [])
    else:  # no top-level error yet: every partition carries it
        assert [t["partitions"][0]["error_code"] for t in answer["topics"]] == [30, 30]


@pytest.mark.parametrize("version", [2, 7])
def test_offset_fetch_all_topics_is_filtered(version: int):
    outcome, _ = run(OFFSET_FETCH, version, {"group_id": "app", "topics": None})
    assert outcome.forward is None and outcome.answer is None
    upstream = {"topics": [offset_fetch_topic(version, "orders"), offset_fetch_topic(version, "secret")]}
    assert [t["name"] for t in fixed(OFFSET_FETCH, version, outcome, upstream)["topics"]] == ["orders"]
    # A group error from the broker is passed on as it is.
    failed = fixed(OFFSET_FETCH, version, outcome, {"error_code": 16, "topics": []})
    assert failed["error_code"] == 16


@pytest.mark.parametrize("version", [8, 10])
def test_offset_fetch_groups(version: int):
    def topic(name: str) -> dict:
        return {**({"topic_id": IDS[name]} if version >= 10 else {"name": name}), "partition_indexes": [0]}

    groups = [{"group_id": "app", "topics": [topic("orders"), topic("secret")]},
              {"group_id": "rogue", "topics": [topic("orders")]},
              {"group_id": "other", "topics": None}]
    outcome, _ = run(OFFSET_FETCH, version, {"groups": groups})
    forwarded = request(OFFSET_FETCH, version, outcome.forward)
    assert [(g["group_id"], g["topics"]) for g in forwarded["groups"]] == [("app", [topic("orders")]),
                                                                           ("other", None)]
    upstream = {"groups": [
        {"group_id": "app", "topics": [offset_fetch_topic(version, "orders")]},
        {"group_id": "other",
         "topics": [offset_fetch_topic(version, "secret"), offset_fetch_topic(version, "payments")]},
    ]}
    response = fixed(OFFSET_FETCH, version, outcome, upstream)
    key = "topic_id" if version >= 10 else "name"
    summary = [(g["group_id"], g["error_code"], [(name_of(t[key]), t["partitions"][0]["error_code"])
                                                 for t in g["topics"]]) for g in response["groups"]]
    assert summary == [("app", 0, [("orders", 0), ("secret", 29)]), ("rogue", 30, []),
                       ("other", 0, [("payments", 0)])]
    assert outcome.denied == [("topic", "secret", "describe"), ("group", "rogue", "describe")]

    refused, _ = run(OFFSET_FETCH, version, {"groups": [groups[1]]})
    assert answered(OFFSET_FETCH, version, refused)["groups"][0]["error_code"] == 30


# --------------------------------------------------------------------------
# Coordinators and classic groups


@pytest.mark.parametrize(("version", "key_type", "key", "error"), [
    (0, 0, "rogue", 30), (3, 0, "rogue", 30), (3, 1, "tx-no", 53)])
def test_find_coordinator_single_key(version: int, key_type: int, key: str, error: int):
    allowed, policy = run(FIND_COORDINATOR, version, {"key": "app" if key_type == 0 else "tx-ok", "key_type": key_type})
    assert untouched(allowed)
    assert policy.calls == [("group" if key_type == 0 else "transactional_id",
                             "app" if key_type == 0 else "tx-ok", "describe")]
    outcome, _ = run(FIND_COORDINATOR, version, {"key": key, "key_type": key_type})
    answer = answered(FIND_COORDINATOR, version, outcome)
    assert (answer["error_code"], answer["node_id"], answer["host"], answer["port"]) == (error, -1, "", -1)


def test_find_coordinator_transactional_keys():
    outcome, _ = run(FIND_COORDINATOR, 6, {"key_type": 1, "coordinator_keys": ["tx-ok", "tx-no"]})
    assert request(FIND_COORDINATOR, 6, outcome.forward)["coordinator_keys"] == ["tx-ok"]
    response = fixed(FIND_COORDINATOR, 6, outcome, {"coordinators": [{"key": "tx-ok", "node_id": 1}]})
    assert [(c["key"], c["error_code"], c["node_id"]) for c in response["coordinators"]] == [
        ("tx-ok", 0, 1), ("tx-no", 53, -1)]


@pytest.mark.parametrize(("version", "key_type", "error"), [(4, 2, 42), (6, 2, 31), (6, 5, 42)])
def test_find_coordinator_other_key_types_are_refused(version: int, key_type: int, error: int):
    outcome, _ = run(FIND_COORDINATOR, version, {"key_type": key_type, "coordinator_keys": ["a", "b"]})
    answer = answered(FIND_COORDINATOR, version, outcome)
    assert [c["error_code"] for c in answer["coordinators"]] == [error, error]


SINGLE_GROUP = {
    JOIN_GROUP: {"group_id": "app", "session_timeout_ms": 10, "member_id": "", "protocol_type": "consumer",
                 "protocols": []},
    HEARTBEAT: {"group_id": "app", "generation_id": 1, "member_id": "m"},
    LEAVE_GROUP: {"group_id": "app", "member_id": "m", "members": [{"member_id": "m"}]},
    SYNC_GROUP: {"group_id": "app", "generation_id": 1, "member_id": "m", "assignments": []},
}


@pytest.mark.parametrize(("api_key", "version"), [(api, v) for api in SINGLE_GROUP for v in ends(api)])
def test_classic_group_apis_need_group_read(api_key: int, version: int):
    allowed, policy = run(api_key, version, SINGLE_GROUP[api_key])
    assert untouched(allowed) and policy.calls == [("group", "app", "read")]
    outcome, _ = run(api_key, version, {**SINGLE_GROUP[api_key], "group_id": "rogue"})
    answer = answered(api_key, version, outcome)
    assert answer["error_code"] == 30
    assert outcome.denied == [("group", "rogue", "read")]
    if api_key == JOIN_GROUP:
        assert (answer["generation_id"], answer["member_id"], answer["members"]) == (-1, "", [])
        assert answer["protocol_name"] == (None if version >= 7 else "")


def test_describe_groups_authorized_operations_are_the_identitys():
    policy = Policy(refused_ops={("group", "app", "delete")})
    outcome, _ = run(DESCRIBE_GROUPS, 5, {"groups": ["app"], "include_authorized_operations": True}, policy)
    assert outcome.forward is None
    response = fixed(DESCRIBE_GROUPS, 5, outcome, {"groups": [
        {"group_id": "app", "authorized_operations": ALL_GROUP_OPS}]})
    assert response["groups"][0]["authorized_operations"] == ALL_GROUP_OPS - (1 << 6)


@pytest.mark.parametrize("version", ends(LIST_GROUPS))
def test_list_groups_is_filtered_unless_cluster_describe(version: int):
    upstream = {"groups": [{"group_id": "app"}, {"group_id": "rogue"}, {"group_id": "other"}]}
    outcome, _ = run(LIST_GROUPS, version, {})
    assert outcome.forward is None and outcome.answer is None
    assert [g["group_id"] for g in fixed(LIST_GROUPS, version, outcome, upstream)["groups"]] == ["app", "other"]
    # Kafka keeps listing every group for cluster describers.
    everything, _ = run(LIST_GROUPS, version, {}, Policy(cluster={"describe"}))
    assert untouched(everything)


# --------------------------------------------------------------------------
# The consumer group protocol (KIP-848)


@pytest.mark.parametrize("version", ends(CONSUMER_GROUP_HEARTBEAT))
def test_consumer_group_heartbeat(version: int):
    body = {"group_id": "app", "member_id": "m", "member_epoch": 0, "subscribed_topic_names": ["orders"]}
    refused_group, _ = run(CONSUMER_GROUP_HEARTBEAT, version, {**body, "group_id": "rogue"})
    assert answered(CONSUMER_GROUP_HEARTBEAT, version, refused_group)["error_code"] == 30

    refused_topic, _ = run(CONSUMER_GROUP_HEARTBEAT, version, {**body, "subscribed_topic_names": ["orders", "secret"]})
    answer = answered(CONSUMER_GROUP_HEARTBEAT, version, refused_topic)
    assert answer["error_code"] == 29 and answer["assignment"] is None
    assert refused_topic.denied == [("topic", "secret", "describe")]

    # The assignment (perhaps of a regex the broker resolved with the gateway's
    # rights) only names topics the identity may describe.
    outcome, _ = run(CONSUMER_GROUP_HEARTBEAT, version, body)
    assert outcome.forward is None and outcome.answer is None
    upstream = {"member_id": "m", "member_epoch": 1, "assignment": {"topic_partitions": [
        {"topic_id": IDS["orders"], "partitions": [0]}, {"topic_id": IDS["secret"], "partitions": [0]},
        {"topic_id": UNKNOWN_ID, "partitions": [0]}]}}
    response = fixed(CONSUMER_GROUP_HEARTBEAT, version, outcome, upstream)
    assert [t["topic_id"] for t in response["assignment"]["topic_partitions"]] == [IDS["orders"]]
    assert fixed(CONSUMER_GROUP_HEARTBEAT, version, outcome, {"assignment": None})["assignment"] is None


@pytest.mark.parametrize("version", ends(CONSUMER_GROUP_DESCRIBE))
def test_consumer_group_describe_hides_groups_assigned_undescribable_topics(version: int):
    outcome, _ = run(CONSUMER_GROUP_DESCRIBE, version, {"group_ids": ["app", "other"],
                                                         "include_authorized_operations": True})

    def member(topic: str) -> dict:
        partitions = [{"topic_id": IDS[topic], "topic_name": topic, "partitions": [0]}]
        return {"member_id": "m", "assignment": {"topic_partitions": partitions},
                "target_assignment": {"topic_partitions": partitions}}

    response = fixed(CONSUMER_GROUP_DESCRIBE, version, outcome, {"groups": [
        {"group_id": "app", "members": [member("orders")]}, {"group_id": "other", "members": [member("secret")]}]})
    app, other = response["groups"]
    assert (app["error_code"], app["authorized_operations"]) == (0, ALL_GROUP_OPS)
    assert (other["error_code"], other["members"]) == (29, [])
    assert other["error_message"] == "The group has described topic(s) that the client is not authorized to describe."


# --------------------------------------------------------------------------
# Transactions


@pytest.mark.parametrize("version", ends(INIT_PRODUCER_ID))
def test_init_producer_id(version: int):
    transactional, policy = run(INIT_PRODUCER_ID, version, {"transactional_id": "tx-ok"})
    assert untouched(transactional) and policy.calls == [("transactional_id", "tx-ok", "write")]
    refused, _ = run(INIT_PRODUCER_ID, version, {"transactional_id": "tx-no"})
    answer = answered(INIT_PRODUCER_ID, version, refused)
    assert (answer["error_code"], answer["producer_id"], answer["producer_epoch"]) == (53, -1, -1)

    idempotent, _ = run(INIT_PRODUCER_ID, version, {"transactional_id": None}, Policy(cluster={"idempotent_write"}))
    assert untouched(idempotent)
    not_idempotent, _ = run(INIT_PRODUCER_ID, version, {"transactional_id": None})
    assert answered(INIT_PRODUCER_ID, version, not_idempotent)["error_code"] == 31
    assert not_idempotent.denied == [("cluster", "kafka-cluster", "idempotent_write")]


def test_init_producer_id_two_phase_commit_is_refused():
    outcome, _ = run(INIT_PRODUCER_ID, 6, {"transactional_id": "tx-ok", "enable2_pc": True})
    assert answered(INIT_PRODUCER_ID, 6, outcome)["error_code"] == 53
    assert outcome.denied == [("transactional_id", "tx-ok", "two_phase_commit")]


def add_partitions(version: int, transactional_id: str, names: list[str]) -> dict:
    return {"v3_and_below_transactional_id": transactional_id, "v3_and_below_producer_id": 1,
            "v3_and_below_topics": [{"name": name, "partitions": [0, 1]} for name in names]}


def partition_errors(answer: dict) -> list[tuple[str, list[int]]]:
    return [(t["name"], [p["partition_error_code"] for p in t["results_by_partition"]])
            for t in answer["results_by_topic_v3_and_below"]]


@pytest.mark.parametrize("version", [0, 3])
def test_add_partitions_to_txn(version: int):
    allowed, _ = run(ADD_PARTITIONS_TO_TXN, version, add_partitions(version, "tx-ok", ["orders", "payments"]))
    assert untouched(allowed)
    refused_id, _ = run(ADD_PARTITIONS_TO_TXN, version, add_partitions(version, "tx-no", ["orders"]))
    assert partition_errors(answered(ADD_PARTITIONS_TO_TXN, version, refused_id)) == [("orders", [53, 53])]
    # Any refused topic fails the transaction: the rest are not attempted (55),
    # unknown topics are 3, internal topics are never writable.
    names = ["orders", "secret", "newtopic", "__consumer_offsets"]
    outcome, _ = run(ADD_PARTITIONS_TO_TXN, version, add_partitions(version, "tx-ok", names))
    assert partition_errors(answered(ADD_PARTITIONS_TO_TXN, version, outcome)) == [
        ("orders", [55, 55]), ("secret", [29, 29]), ("newtopic", [3, 3]), ("__consumer_offsets", [29, 29])]
    assert outcome.denied == [("topic", "secret", "write"), ("topic", "__consumer_offsets", "write")]


@pytest.mark.parametrize("version", [4, 5])
def test_add_partitions_to_txn_batched_is_broker_only(version: int):
    body = {"transactions": [{"transactional_id": "tx-ok", "producer_id": 1, "topics": [
        {"name": "orders", "partitions": [0]}]}]}
    outcome, policy = run(ADD_PARTITIONS_TO_TXN, version, body)
    answer = answered(ADD_PARTITIONS_TO_TXN, version, outcome)
    assert (answer["error_code"], answer["results_by_transaction"]) == (31, [])
    assert policy.calls == [] and outcome.denied == [("cluster", "kafka-cluster", "cluster_action")]


@pytest.mark.parametrize("version", ends(ADD_OFFSETS_TO_TXN))
def test_add_offsets_to_txn(version: int):
    body = {"transactional_id": "tx-ok", "producer_id": 1, "group_id": "app"}
    allowed, policy = run(ADD_OFFSETS_TO_TXN, version, body)
    assert untouched(allowed)
    assert policy.calls == [("transactional_id", "tx-ok", "write"), ("group", "app", "read")]
    for changes, error in (({"transactional_id": "tx-no"}, 53), ({"group_id": "rogue"}, 30)):
        outcome, _ = run(ADD_OFFSETS_TO_TXN, version, {**body, **changes})
        assert answered(ADD_OFFSETS_TO_TXN, version, outcome)["error_code"] == error


@pytest.mark.parametrize("version", ends(END_TXN))
def test_end_txn(version: int):
    allowed, _ = run(END_TXN, version, {"transactional_id": "tx-ok", "producer_id": 1})
    assert untouched(allowed)
    outcome, _ = run(END_TXN, version, {"transactional_id": "tx-no", "producer_id": 1})
    answer = answered(END_TXN, version, outcome)
    assert answer["error_code"] == 53
    assert outcome.denied == [("transactional_id", "tx-no", "write")]


def test_describe_transactions_hides_undescribable_topics():
    outcome, _ = run(DESCRIBE_TRANSACTIONS, 0, {"transactional_ids": ["tx-ok"]})
    response = fixed(DESCRIBE_TRANSACTIONS, 0, outcome, {"transaction_states": [{
        "transactional_id": "tx-ok", "topics": [{"topic": "orders", "partitions": [0]},
                                                {"topic": "secret", "partitions": [0]}]}]})
    assert [t["topic"] for t in response["transaction_states"][0]["topics"]] == ["orders"]


@pytest.mark.parametrize("version", ends(LIST_TRANSACTIONS))
def test_list_transactions_is_filtered(version: int):
    outcome, _ = run(LIST_TRANSACTIONS, version, {})
    assert outcome.forward is None and outcome.answer is None
    response = fixed(LIST_TRANSACTIONS, version, outcome, {"transaction_states": [
        {"transactional_id": "tx-ok"}, {"transactional_id": "tx-no"}]})
    assert [s["transactional_id"] for s in response["transaction_states"]] == ["tx-ok"]


# --------------------------------------------------------------------------
# Topic and config administration


def test_create_topics_cluster_create_covers_every_topic():
    outcome, policy = run(CREATE_TOPICS, 7, PARTS["create_topics"].build(7, ["secret"]), Policy(cluster={"create"}))
    assert outcome.forward is None and outcome.answer is None and outcome.denied == []
    assert not any(kind == "topic" and op == "create" for kind, _, op in policy.calls)


@pytest.mark.parametrize("version", [4, 5, 7])
def test_create_topics_configs_need_describe_configs(version: int):
    policy = Policy(refused_ops={("topic", "orders", "describe_configs")})
    outcome, _ = run(CREATE_TOPICS, version, PARTS["create_topics"].build(version, ["orders"]), policy)
    if version < 5:  # no configs in the answer before v5
        assert untouched(outcome)
        return
    assert outcome.forward is None
    upstream = PARTS["create_topics"].upstream(version, request(CREATE_TOPICS, version,
                                                                PARTS["create_topics"].build(version, ["orders"])))
    upstream["topics"][0]["configs"] = [{"name": "retention.ms", "value": "1"}]
    topic = fixed(CREATE_TOPICS, version, outcome, upstream)["topics"][0]
    assert (topic["error_code"], topic["topic_config_error_code"]) == (0, 29)
    assert (topic["num_partitions"], topic["replication_factor"], topic["configs"]) == (-1, -1, [])


def test_create_topics_refused_message():
    outcome, _ = run(CREATE_TOPICS, 7, PARTS["create_topics"].build(7, ["secret"]))
    topic = answered(CREATE_TOPICS, 7, outcome)["topics"][0]
    assert (topic["error_code"], topic["error_message"], topic["topic_id"]) == (29, "Authorization failed.", ZERO)


def test_delete_topics_by_id():
    topics = [{"name": None, "topic_id": IDS["orders"]}, {"name": None, "topic_id": IDS["secret"]},
              {"name": None, "topic_id": IDS["payments"]}, {"name": None, "topic_id": UNKNOWN_ID},
              {"name": "orders", "topic_id": IDS["orders"]}]
    # payments: may describe, may not delete; secret: neither.
    policy = Policy(refused_ops={("topic", "payments", "delete")})
    outcome, _ = run(DELETE_TOPICS, 6, {"topics": topics}, policy)
    assert request(DELETE_TOPICS, 6, outcome.forward)["topics"] == [topics[0]]
    response = fixed(DELETE_TOPICS, 6, outcome, {"responses": [{"name": "orders", "topic_id": IDS["orders"]}]})
    assert [(r["name"], r["topic_id"], r["error_code"]) for r in response["responses"]] == [
        ("orders", IDS["orders"], 0), (None, IDS["secret"], 29), ("payments", IDS["payments"], 29),
        (None, UNKNOWN_ID, 100), ("orders", IDS["orders"], 42)]


def test_delete_topics_missing_describable_topic_is_unknown():
    policy = Policy(refused_ops={("topic", "newtopic", "delete")})
    outcome, _ = run(DELETE_TOPICS, 5, {"topic_names": ["newtopic"]}, policy)
    assert answered(DELETE_TOPICS, 5, outcome)["responses"][0]["error_code"] == 3


def test_delete_topics_cluster_delete_covers_every_topic():
    outcome, _ = run(DELETE_TOPICS, 6, {"topics": [{"name": "secret"}]}, Policy(cluster={"delete"}))
    assert untouched(outcome)


@pytest.mark.parametrize(("api_key", "version"), [(DESCRIBE_CONFIGS, 1), (DESCRIBE_CONFIGS, 4),
                                                  (ALTER_CONFIGS, 0), (INCREMENTAL_ALTER_CONFIGS, 1)])
def test_config_resources(api_key: int, version: int):
    operation = "describe_configs" if api_key == DESCRIBE_CONFIGS else "alter_configs"
    results = "results" if api_key == DESCRIBE_CONFIGS else "responses"
    resources = [{"resource_type": 4, "resource_name": "1"}, {"resource_type": 8, "resource_name": "1"},
                 {"resource_type": 32, "resource_name": "app"}, {"resource_type": 32, "resource_name": "rogue"}]
    outcome, _ = run(api_key, version, {"resources": resources})
    forwarded = request(api_key, version, outcome.forward)["resources"]
    assert [(r["resource_type"], r["resource_name"]) for r in forwarded] == [(32, "app")]
    response = fixed(api_key, version, outcome, {results: [
        {"resource_type": 32, "resource_name": "app", "error_message": None}]})
    assert [(r["resource_type"], r["error_code"], r["error_message"]) for r in response[results]] == [
        (4, 31, "Cluster authorization failed."), (8, 31, "Cluster authorization failed."), (32, 0, None),
        (32, 30, "Group authorization failed.")]
    assert outcome.denied == [("cluster", "kafka-cluster", operation), ("group", "rogue", operation)]

    broker, _ = run(api_key, version, {"resources": resources[:2]}, Policy(cluster={operation}))
    assert untouched(broker)


def test_describe_configs_unknown_resource_type_fails_the_request():
    outcome, policy = run(DESCRIBE_CONFIGS, 4, {"resources": [{"resource_type": 2, "resource_name": "orders"},
                                                              {"resource_type": 99, "resource_name": "x"}]})
    assert [r["error_code"] for r in answered(DESCRIBE_CONFIGS, 4, outcome)["results"]] == [42, 42]
    assert policy.calls == []


def test_alter_configs_unknown_resource_type_is_unsupported():
    outcome, policy = run(INCREMENTAL_ALTER_CONFIGS, 1, {"resources": [{"resource_type": 99, "resource_name": "x"}]})
    result = answered(INCREMENTAL_ALTER_CONFIGS, 1, outcome)["responses"][0]
    assert (result["error_code"], result["error_message"]) == (35, "Unknown resource type 99.")
    assert policy.calls == []


# --------------------------------------------------------------------------
# Cluster administration


def log_dirs_upstream(names: list[str]) -> dict:
    return {"results": [{"log_dir": "/data", "topics": [
        {"name": name, "partitions": [{"partition_index": 0, "partition_size": 10}]} for name in names]}]}


@pytest.mark.parametrize("version", ends(DESCRIBE_LOG_DIRS))
def test_describe_log_dirs(version: int):
    refused, _ = run(DESCRIBE_LOG_DIRS, version, {"topics": None})
    answer = answered(DESCRIBE_LOG_DIRS, version, refused)
    assert answer["results"] == [] and answer.get("error_code", 31) == 31
    assert refused.denied == [("cluster", "kafka-cluster", "describe")]

    describer = Policy(cluster={"describe"})
    everything, _ = run(DESCRIBE_LOG_DIRS, version, {"topics": None}, describer)
    assert everything.forward is None
    response = fixed(DESCRIBE_LOG_DIRS, version, everything, log_dirs_upstream(["orders", "secret"]))
    assert [t["name"] for t in response["results"][0]["topics"]] == ["orders"]

    named, _ = run(DESCRIBE_LOG_DIRS, version, {"topics": [{"topic": "orders", "partitions": [0]},
                                                           {"topic": "secret", "partitions": [0]}]}, Policy(
        cluster={"describe"}))
    assert [t["topic"] for t in request(DESCRIBE_LOG_DIRS, version, named.forward)["topics"]] == ["orders"]
    allowed, _ = run(DESCRIBE_LOG_DIRS, version, {"topics": [{"topic": "orders", "partitions": [0]}]}, Policy(
        cluster={"describe"}))
    assert untouched(allowed)


@pytest.mark.parametrize("version", ends(ELECT_LEADERS))
def test_elect_leaders_needs_cluster_alter(version: int):
    body = {"election_type": 0, "topic_partitions": [{"topic": "orders", "partitions": [0, 1]}]}
    allowed, policy = run(ELECT_LEADERS, version, body, Policy(cluster={"alter"}))
    assert untouched(allowed) and policy.calls == [("cluster", "kafka-cluster", "alter")]
    outcome, _ = run(ELECT_LEADERS, version, body)
    answer = answered(ELECT_LEADERS, version, outcome)
    assert answer.get("error_code", 31) == 31
    assert [p["error_code"] for p in answer["replica_election_results"][0]["partition_result"]] == [31, 31]


@pytest.mark.parametrize("version", ends(ALTER_PARTITION_REASSIGNMENTS))
def test_alter_partition_reassignments_needs_cluster_alter(version: int):
    body = {"topics": [{"name": "orders", "partitions": [{"partition_index": 0, "replicas": [1]}]}]}
    allowed, _ = run(ALTER_PARTITION_REASSIGNMENTS, version, body, Policy(cluster={"alter"}))
    assert untouched(allowed)
    outcome, _ = run(ALTER_PARTITION_REASSIGNMENTS, version, body)
    answer = answered(ALTER_PARTITION_REASSIGNMENTS, version, outcome)
    assert answer["error_code"] == 31 and answer["responses"][0]["partitions"][0]["error_code"] == 31


def test_list_partition_reassignments_needs_cluster_describe():
    body = {"topics": None}
    allowed, _ = run(LIST_PARTITION_REASSIGNMENTS, 0, body, Policy(cluster={"describe"}))
    assert untouched(allowed)
    outcome, _ = run(LIST_PARTITION_REASSIGNMENTS, 0, body)
    assert answered(LIST_PARTITION_REASSIGNMENTS, 0, outcome)["error_code"] == 31


@pytest.mark.parametrize("version", ends(DESCRIBE_CLUSTER))
def test_describe_cluster_is_open_and_its_operations_are_the_identitys(version: int):
    plain, policy = run(DESCRIBE_CLUSTER, version, {})
    assert untouched(plain) and policy.calls == []
    outcome, _ = run(DESCRIBE_CLUSTER, version, {"include_cluster_authorized_operations": True})
    upstream = {"cluster_id": "c", "cluster_authorized_operations": 1 << 9}
    assert fixed(DESCRIBE_CLUSTER, version, outcome, upstream)["cluster_authorized_operations"] == 0
    describer, _ = run(DESCRIBE_CLUSTER, version, {"include_cluster_authorized_operations": True},
                       Policy(cluster={"describe"}))
    assert fixed(DESCRIBE_CLUSTER, version, describer, upstream)["cluster_authorized_operations"] == 1 << 8
