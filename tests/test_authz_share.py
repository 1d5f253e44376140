"""Authorization of share groups (KIP-932), against what Kafka 4.2's KafkaApis makes a client see, and the share
session state that lets the gateway authorize what a broker's share session keeps serving.

Requests, answers and fixed responses go through the codec at the version under test (tests/test_authz.py's
helpers), so the layouts are the real ones. `secret`, `rogue` and `tx-no` are refused every operation.
"""

from __future__ import annotations

import pytest

from gateway.handlers.apiversions import spec_versions
from gateway.handlers.share_sessions import ShareSessionError, ShareSessions
from gateway.protocol.apis import (
    ALTER_SHARE_GROUP_OFFSETS,
    DELETE_SHARE_GROUP_OFFSETS,
    DESCRIBE_SHARE_GROUP_OFFSETS,
    FORWARDED,
    SHARE_ACKNOWLEDGE,
    SHARE_FETCH,
    SHARE_GROUP_DESCRIBE,
    SHARE_GROUP_HEARTBEAT,
)
from gateway.protocol.errors import GROUP_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED, UNKNOWN_TOPIC_ID
from tests.test_authz import IDS, UNKNOWN_ID, Policy, answered, fixed, request, run, untouched, wire

SHARE_APIS = {SHARE_GROUP_HEARTBEAT, SHARE_GROUP_DESCRIBE, SHARE_FETCH, SHARE_ACKNOWLEDGE,
              DESCRIBE_SHARE_GROUP_OFFSETS, ALTER_SHARE_GROUP_OFFSETS, DELETE_SHARE_GROUP_OFFSETS}


def versions(api_key: int) -> list[int]:
    low, high = spec_versions(api_key)
    return sorted({low, high})


def test_share_apis_are_forwarded():
    """Every share group API a client sends has a rule (the import-time check fails closed otherwise)."""
    assert SHARE_APIS <= FORWARDED


# --------------------------------------------------------------------------
# ShareFetch and ShareAcknowledge


def share_fetch(topics: list[bytes], group: str = "app", epoch: int = 3, acks: bool = False) -> dict:
    batches = [{"first_offset": 0, "last_offset": 4, "acknowledge_types": [1]}] if acks else []
    return {"group_id": group, "member_id": "m-1", "share_session_epoch": epoch, "max_wait_ms": 500,
            "min_bytes": 1, "max_bytes": 1 << 20, "max_records": 500, "batch_size": 500,
            "topics": [{"topic_id": topic_id, "partitions": [{"partition_index": 0, "acknowledgement_batches": batches},
                                                              {"partition_index": 1}]}
                       for topic_id in topics],
            "forgotten_topics_data": [{"topic_id": IDS["payments"], "partitions": [2]}]}


def share_fetch_upstream(forwarded: dict) -> dict:
    return {"acquisition_lock_timeout_ms": 30000, "responses": [
        {"topic_id": topic["topic_id"], "partitions": [
            {"partition_index": p["partition_index"], "records": b"", "acquired_records": []}
            for p in topic["partitions"]]}
        for topic in forwarded["topics"]]}


def errors(body: dict, field: str = "error_code") -> list[tuple[bytes, list[int]]]:
    return [(topic["topic_id"], [p[field] for p in topic["partitions"]]) for topic in body["responses"]]


@pytest.mark.parametrize("version", versions(SHARE_FETCH))
def test_share_fetch_all_allowed_is_untouched(version: int):
    outcome, policy = run(SHARE_FETCH, version, share_fetch([IDS["orders"], IDS["payments"]]))
    assert untouched(outcome) and outcome.denied == []
    assert ("group", "app", "read") in policy.calls and ("topic", "orders", "read") in policy.calls


@pytest.mark.parametrize("version", versions(SHARE_FETCH))
def test_share_fetch_refused_group_is_a_top_level_error(version: int):
    """Kafka's getErrorResponse: GROUP_AUTHORIZATION_FAILED, no topics; no topic is even decided."""
    outcome, policy = run(SHARE_FETCH, version, share_fetch([IDS["orders"]], group="rogue"))
    answer = answered(SHARE_FETCH, version, outcome)
    assert (answer["error_code"], answer["responses"]) == (GROUP_AUTHORIZATION_FAILED, [])
    assert outcome.denied == [("group", "rogue", "read")]
    assert not any(kind == "topic" for kind, _, _ in policy.calls)


@pytest.mark.parametrize("version", versions(SHARE_FETCH))
def test_share_fetch_refused_and_unknown_topics_are_never_forwarded(version: int):
    """A refused topic gets 29 and an unknown id 100 per partition (acknowledgements refused alike), in request
    order; only the allowed topic reaches the broker, forgotten topics unchanged."""
    body = share_fetch([IDS["orders"], IDS["secret"], UNKNOWN_ID], acks=True)
    outcome, _ = run(SHARE_FETCH, version, body)
    assert outcome.answer is None and outcome.close is None
    assert outcome.denied == [("topic", "secret", "read")]
    forwarded = request(SHARE_FETCH, version, outcome.forward)
    assert [topic["topic_id"] for topic in forwarded["topics"]] == [IDS["orders"]]
    assert forwarded["forgotten_topics_data"] == request(SHARE_FETCH, version, body)["forgotten_topics_data"]
    result = fixed(SHARE_FETCH, version, outcome, share_fetch_upstream(forwarded))
    assert errors(result) == [(IDS["orders"], [0, 0]), (IDS["secret"], [29, 29]), (UNKNOWN_ID, [100, 100])]
    assert errors(result, "acknowledge_error_code") == [
        (IDS["orders"], [0, 0]), (IDS["secret"], [29, 0]), (UNKNOWN_ID, [100, 0])]
    assert all(p["records"] == b"" for topic in result["responses"][1:] for p in topic["partitions"])


@pytest.mark.parametrize("version", versions(SHARE_FETCH))
def test_share_fetch_with_nothing_allowed_is_still_forwarded(version: int):
    """The broker's share session moves to its next epoch with every ShareFetch: a request whose every topic is
    refused goes on empty (an answer from the gateway would leave client and broker epochs apart). A top-level
    error from the broker comes back as it is."""
    outcome, _ = run(SHARE_FETCH, version, share_fetch([IDS["secret"]]))
    forwarded = request(SHARE_FETCH, version, outcome.forward)
    assert forwarded["topics"] == [] and forwarded["share_session_epoch"] == 3
    assert errors(fixed(SHARE_FETCH, version, outcome, share_fetch_upstream(forwarded))) == [(IDS["secret"], [29, 29])]
    failed = fixed(SHARE_FETCH, version, outcome, {"error_code": 123, "responses": []})
    assert (failed["error_code"], failed["responses"]) == (123, [])


@pytest.mark.parametrize("version", versions(SHARE_ACKNOWLEDGE))
def test_share_acknowledge(version: int):
    """Group read (refused: a top-level error), then topic read per topic id; forwarded even with nothing left."""
    def body(topics: list[bytes], group: str = "app") -> dict:
        return {"group_id": group, "member_id": "m-1", "share_session_epoch": 4, "topics": [
            {"topic_id": topic_id, "partitions": [
                {"partition_index": 0, "acknowledgement_batches": [
                    {"first_offset": 0, "last_offset": 1, "acknowledge_types": [1]}]}]}
            for topic_id in topics]}

    assert untouched(run(SHARE_ACKNOWLEDGE, version, body([IDS["orders"]]))[0])
    outcome, _ = run(SHARE_ACKNOWLEDGE, version, body([IDS["orders"]], group="rogue"))
    assert answered(SHARE_ACKNOWLEDGE, version, outcome)["error_code"] == GROUP_AUTHORIZATION_FAILED

    outcome, _ = run(SHARE_ACKNOWLEDGE, version, body([IDS["secret"], IDS["orders"], UNKNOWN_ID]))
    forwarded = request(SHARE_ACKNOWLEDGE, version, outcome.forward)
    assert [topic["topic_id"] for topic in forwarded["topics"]] == [IDS["orders"]]
    upstream = {"responses": [{"topic_id": IDS["orders"], "partitions": [{"partition_index": 0}]}]}
    assert errors(fixed(SHARE_ACKNOWLEDGE, version, outcome, upstream)) == [
        (IDS["secret"], [TOPIC_AUTHORIZATION_FAILED]), (IDS["orders"], [0]), (UNKNOWN_ID, [UNKNOWN_TOPIC_ID])]

    outcome, _ = run(SHARE_ACKNOWLEDGE, version, body([IDS["secret"]]))
    assert request(SHARE_ACKNOWLEDGE, version, outcome.forward)["topics"] == []


# --------------------------------------------------------------------------
# Share group membership and description


@pytest.mark.parametrize("version", versions(SHARE_GROUP_HEARTBEAT))
def test_share_group_heartbeat(version: int):
    """Group read, then topic describe per subscribed name (one refused: the whole heartbeat gets 29); the
    assignment is filtered to topics the identity may describe, and ids the gateway cannot name are dropped (the
    connection looks them up first: tests/test_clients.py, the consumer protocol on a new topic)."""
    def body(group: str, names: list[str] | None) -> dict:
        return {"group_id": group, "member_id": "m-1", "member_epoch": 0, "subscribed_topic_names": names}

    outcome, _ = run(SHARE_GROUP_HEARTBEAT, version, body("rogue", ["orders"]))
    assert answered(SHARE_GROUP_HEARTBEAT, version, outcome)["error_code"] == GROUP_AUTHORIZATION_FAILED
    outcome, _ = run(SHARE_GROUP_HEARTBEAT, version, body("app", ["orders", "secret"]))
    assert answered(SHARE_GROUP_HEARTBEAT, version, outcome)["error_code"] == TOPIC_AUTHORIZATION_FAILED
    assert outcome.denied == [("topic", "secret", "describe")]

    outcome, _ = run(SHARE_GROUP_HEARTBEAT, version, body("app", None))
    assert outcome.forward is None and outcome.answer is None and outcome.denied == []
    upstream = {"member_id": "m-1", "member_epoch": 5, "assignment": {"topic_partitions": [
        {"topic_id": IDS["orders"], "partitions": [0]}, {"topic_id": IDS["secret"], "partitions": [0, 1]},
        {"topic_id": UNKNOWN_ID, "partitions": [0]}]}}
    assignment = fixed(SHARE_GROUP_HEARTBEAT, version, outcome, upstream)["assignment"]["topic_partitions"]
    assert [entry["topic_id"] for entry in assignment] == [IDS["orders"]]


@pytest.mark.parametrize("version", versions(SHARE_GROUP_DESCRIBE))
def test_share_group_describe(version: int):
    """Group describe per group (refused: 30 in request order); a group whose members subscribe to or are
    assigned a topic the identity may not describe gets 29; authorized operations are the identity's."""
    def member(topic: str) -> dict:
        return {"member_id": f"m-{topic}", "client_id": "c", "client_host": "/h", "subscribed_topic_names": [topic],
                "assignment": {"topic_partitions": [
                    {"topic_id": IDS[topic], "topic_name": topic, "partitions": [0]}]}}

    outcome, _ = run(SHARE_GROUP_DESCRIBE, version,
                     {"group_ids": ["app", "rogue", "other"], "include_authorized_operations": True})
    assert request(SHARE_GROUP_DESCRIBE, version, outcome.forward)["group_ids"] == ["app", "other"]
    upstream = {"groups": [
        {"group_id": "app", "group_state": "Stable", "members": [member("orders")]},
        {"group_id": "other", "group_state": "Stable", "members": [member("orders"), member("secret")]}]}
    groups = fixed(SHARE_GROUP_DESCRIBE, version, outcome, upstream)["groups"]
    assert [(g["group_id"], g["error_code"]) for g in groups] == [
        ("app", 0), ("rogue", GROUP_AUTHORIZATION_FAILED), ("other", TOPIC_AUTHORIZATION_FAILED)]
    assert groups[0]["authorized_operations"] == sum(1 << code for code in (3, 6, 8, 10, 11))
    assert groups[2]["members"] == []

    outcome, _ = run(SHARE_GROUP_DESCRIBE, version, {"group_ids": ["rogue"], "include_authorized_operations": False})
    assert [g["error_code"] for g in answered(SHARE_GROUP_DESCRIBE, version, outcome)["groups"]] == [30]


# --------------------------------------------------------------------------
# Share group offsets (admin)


@pytest.mark.parametrize("version", versions(DESCRIBE_SHARE_GROUP_OFFSETS))
def test_describe_share_group_offsets(version: int):
    """Group describe per group, topic describe per named topic (refused partitions 29), all topics filtered."""
    body = {"groups": [
        {"group_id": "app", "topics": [{"topic_name": "orders", "partitions": [0]},
                                       {"topic_name": "secret", "partitions": [0, 1]}]},
        {"group_id": "rogue", "topics": None},
        {"group_id": "other", "topics": None}]}
    outcome, _ = run(DESCRIBE_SHARE_GROUP_OFFSETS, version, body)
    forwarded = request(DESCRIBE_SHARE_GROUP_OFFSETS, version, outcome.forward)
    assert [(g["group_id"], g["topics"]) for g in forwarded["groups"]] == [
        ("app", [{"topic_name": "orders", "partitions": [0]}]), ("other", None)]

    def topic(name: str) -> dict:
        return {"topic_name": name, "topic_id": IDS[name], "partitions": [{"partition_index": 0, "start_offset": 7}]}

    upstream = {"groups": [{"group_id": "app", "topics": [topic("orders")]},
                           {"group_id": "other", "topics": [topic("payments"), topic("secret")]}]}
    groups = fixed(DESCRIBE_SHARE_GROUP_OFFSETS, version, outcome, upstream)["groups"]
    assert [(g["group_id"], g["error_code"]) for g in groups] == [("app", 0), ("rogue", 30), ("other", 0)]
    assert [(t["topic_name"], [p["error_code"] for p in t["partitions"]]) for t in groups[0]["topics"]] == [
        ("orders", [0]), ("secret", [29, 29])]
    assert [t["topic_name"] for t in groups[2]["topics"]] == ["payments"]

    outcome, _ = run(DESCRIBE_SHARE_GROUP_OFFSETS, version, {"groups": [{"group_id": "rogue", "topics": None}]})
    assert [g["error_code"] for g in answered(DESCRIBE_SHARE_GROUP_OFFSETS, version, outcome)["groups"]] == [30]


@pytest.mark.parametrize("version", versions(ALTER_SHARE_GROUP_OFFSETS))
def test_alter_share_group_offsets(version: int):
    """Group read (refused: a top-level error), then topic read per topic (refused partitions 29)."""
    def body(group: str, names: list[str]) -> dict:
        return {"group_id": group, "topics": [
            {"topic_name": name, "partitions": [{"partition_index": 0, "start_offset": 0}]} for name in names]}

    outcome, _ = run(ALTER_SHARE_GROUP_OFFSETS, version, body("rogue", ["orders"]))
    assert answered(ALTER_SHARE_GROUP_OFFSETS, version, outcome)["error_code"] == GROUP_AUTHORIZATION_FAILED
    outcome, _ = run(ALTER_SHARE_GROUP_OFFSETS, version, body("app", ["orders", "secret"]))
    assert request(ALTER_SHARE_GROUP_OFFSETS, version, outcome.forward) == request(
        ALTER_SHARE_GROUP_OFFSETS, version, body("app", ["orders"]))
    upstream = {"responses": [{"topic_name": "orders", "partitions": [{"partition_index": 0}]}]}
    result = fixed(ALTER_SHARE_GROUP_OFFSETS, version, outcome, upstream)
    assert [(t["topic_name"], [p["error_code"] for p in t["partitions"]]) for t in result["responses"]] == [
        ("orders", [0]), ("secret", [29])]


@pytest.mark.parametrize("version", versions(DELETE_SHARE_GROUP_OFFSETS))
def test_delete_share_group_offsets(version: int):
    """Group delete (refused: a top-level error), then topic read per topic, as OffsetDelete."""
    policy = Policy(refused_ops={("group", "app", "delete")})
    body = {"group_id": "app", "topics": [{"topic_name": "orders"}, {"topic_name": "secret"}]}
    outcome, _ = run(DELETE_SHARE_GROUP_OFFSETS, version, body, policy)
    assert answered(DELETE_SHARE_GROUP_OFFSETS, version, outcome)["error_code"] == GROUP_AUTHORIZATION_FAILED
    assert outcome.denied == [("group", "app", "delete")]

    outcome, _ = run(DELETE_SHARE_GROUP_OFFSETS, version, body)
    assert request(DELETE_SHARE_GROUP_OFFSETS, version, outcome.forward)["topics"] == [{"topic_name": "orders"}]
    result = fixed(DELETE_SHARE_GROUP_OFFSETS, version, outcome, {"responses": [{"topic_name": "orders"}]})
    assert [(t["topic_name"], t["error_code"]) for t in result["responses"]] == [("orders", 0), ("secret", 29)]
    outcome, _ = run(DELETE_SHARE_GROUP_OFFSETS, version, {"group_id": "app", "topics": [{"topic_name": "secret"}]})
    assert wire(DELETE_SHARE_GROUP_OFFSETS, version, outcome.answer)["responses"][0]["error_code"] == 29


# --------------------------------------------------------------------------
# Share sessions: what the broker keeps serving, authorized again on every ShareFetch


def session_fetch(epoch: int, topics: dict[bytes, list[int]], forgotten: dict[bytes, list[int]] | None = None,
                  group: str = "app", member: str = "m-1") -> dict:
    return {"group_id": group, "member_id": member, "share_session_epoch": epoch,
            "topics": [{"topic_id": t, "partitions": [{"partition_index": i} for i in parts]}
                       for t, parts in topics.items()],
            "forgotten_topics_data": [{"topic_id": t, "partitions": parts} for t, parts in (forgotten or {}).items()]}


ORDERS, PAYMENTS = IDS["orders"], IDS["payments"]


def test_share_session_follows_the_epochs():
    """Epoch 0 opens with the listed partitions, later epochs add the listed and drop the forgotten ones, and
    every partition the session holds is checked, named in the request or not; -1 closes the session."""
    sessions, checked = ShareSessions(), []

    def may_read(topic_id: bytes) -> bool:
        checked.append(topic_id)
        return True

    assert sessions.fetch(session_fetch(0, {ORDERS: [0, 1]}), may_read) == {ORDERS}
    assert sessions.fetch(session_fetch(1, {PAYMENTS: [0]}, {ORDERS: [1]}), may_read) == {ORDERS, PAYMENTS}
    assert sessions.partitions("app", "m-1") == {(ORDERS, 0), (PAYMENTS, 0)}
    checked.clear()
    assert sessions.fetch(session_fetch(2, {}), may_read) == {ORDERS, PAYMENTS}
    assert sorted(checked) == sorted([ORDERS, PAYMENTS])
    sessions.fetch(session_fetch(0, {PAYMENTS: [3]}), may_read)  # a new epoch 0 replaces the session
    assert sessions.partitions("app", "m-1") == {(PAYMENTS, 3)}
    sessions.fetch(session_fetch(-1, {PAYMENTS: [3]}), may_read)
    assert sessions.partitions("app", "m-1") == frozenset()
    sessions.fetch(session_fetch(0, {ORDERS: [0]}), may_read)
    sessions.acknowledge({"group_id": "app", "member_id": "m-1", "share_session_epoch": 5})
    assert sessions.partitions("app", "m-1") == {(ORDERS, 0)}
    sessions.acknowledge({"group_id": "app", "member_id": "m-1", "share_session_epoch": -1})
    assert sessions.partitions("app", "m-1") == frozenset()


def test_share_session_holding_a_topic_no_longer_readable_closes():
    """An incremental ShareFetch that names nothing still fails once the policy refuses a topic the session holds."""
    sessions, readable = ShareSessions(), {ORDERS, PAYMENTS}
    sessions.fetch(session_fetch(0, {ORDERS: [0], PAYMENTS: [0]}), readable.__contains__)
    readable.discard(ORDERS)
    with pytest.raises(ShareSessionError, match="no longer"):
        sessions.fetch(session_fetch(1, {}), readable.__contains__)
    # Forgetting the refused topic instead is fine: the session no longer holds it.
    sessions.fetch(session_fetch(1, {}, {ORDERS: [0]}), readable.__contains__)


def test_share_session_not_opened_on_this_connection_closes():
    """Its partitions are unknown here, so nothing it serves could be authorized: fail closed."""
    with pytest.raises(ShareSessionError, match="not opened on this connection"):
        ShareSessions().fetch(session_fetch(4, {ORDERS: [0]}), lambda topic_id: True)


def test_share_session_state_is_bounded():
    sessions = ShareSessions(max_sessions=2, max_partitions=5)
    sessions.fetch(session_fetch(0, {ORDERS: [0]}, member="a"), lambda topic_id: True)
    sessions.fetch(session_fetch(0, {ORDERS: [1]}, member="b"), lambda topic_id: True)
    with pytest.raises(ShareSessionError, match="share sessions"):
        sessions.fetch(session_fetch(0, {ORDERS: [2]}, member="c"), lambda topic_id: True)
    sessions.fetch(session_fetch(0, {ORDERS: [0, 1, 2]}, member="a"), lambda topic_id: True)
    with pytest.raises(ShareSessionError, match="partitions"):
        sessions.fetch(session_fetch(1, {PAYMENTS: [0, 1]}, member="b"), lambda topic_id: True)
