"""Per-API authorization: the checks Kafka's KafkaApis/ControllerApis make, and what the client then sees.

One rule per forwarded API, each ``rule(version, body, checks) -> Outcome``.
The rules follow Kafka 4.2's handlers (KafkaApis.scala, ControllerApis.scala,
ConfigHelper.scala, the request classes' getErrorResponse): the same resource
and operation per part, the same error code and fields for each refused part,
whether an unauthorized name is reported or hidden. Where the gateway is
stricter than Kafka (fail closed), the rule says so.

Refused parts are never forwarded. The response the client gets lists its
parts in request order (Kafka's own order is often a map's; clients match by
key), with the refused parts built in the layout of the client's version.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from operator import itemgetter

from gateway.authz.common import (
    CLUSTER_NAME,
    INTERNAL_TOPICS,
    MESSAGES,
    OPERATION_NOT_ATTEMPTED,
    ZERO_UUID,
    Checks,
    Decide,
    Outcome,
    Slot,
    TopicIds,
    has_transactional_batch,
    merge,
    response,
)
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
from gateway.protocol.errors import (
    CLUSTER_AUTHORIZATION_FAILED,
    GROUP_AUTHORIZATION_FAILED,
    INVALID_REQUEST,
    TOPIC_AUTHORIZATION_FAILED,
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    UNKNOWN_TOPIC_ID,
    UNKNOWN_TOPIC_OR_PARTITION,
    UNSUPPORTED_VERSION,
)

Rule = Callable[[int, dict, Checks], Outcome]


def authorize(api_key: int, version: int, body: dict, decide: Decide, topics: TopicIds) -> Outcome:
    """Decide one decoded request of a forwarded API against the policy.

    Produce with acks=0 gets no response, so its Outcome never has an
    ``answer``: when a part is refused, ``close`` is set (Kafka closes such a
    connection so the producer notices) and ``forward`` holds the allowed
    part, or None when nothing may be written.
    """
    rule = RULES.get(api_key)
    if rule is None:
        raise ValueError(f"api key {api_key} is not forwarded: it has no authorization rule")
    return rule(version, body, Checks(decide, topics))


# --------------------------------------------------------------------------
# Shared shapes


def _judge(entries: list[dict], judge: Callable[[dict], Slot]) -> tuple[list[Slot], list[dict]]:
    """Slots in request order, and the entries that may be forwarded."""
    slots, kept = [], []
    for entry in entries:
        key, refused = judge(entry)
        slots.append((key, refused))
        if refused is None:
            kept.append(entry)
    return slots, kept


def _reduce(
    checks: Checks,
    api_key: int,
    version: int,
    body: dict,
    request_list: str,
    response_list: str,
    slots: list[Slot],
    kept: list[dict],
    key_of: Callable[[dict], Hashable],
    forward_values: dict | None = None,
) -> Outcome:
    """The usual three cases: all allowed (untouched), none (answer), some (forward the rest, merge back)."""
    if len(kept) == len(slots):
        return checks.outcome()
    if not kept:
        return checks.outcome(answer=response(api_key, version, **{response_list: [entry for _, entry in slots]}))

    def fix(upstream: dict) -> dict:
        upstream[response_list] = merge(slots, upstream[response_list], key_of)
        return upstream

    return checks.outcome(forward={**body, request_list: kept, **(forward_values or {})}, fix_response=fix)


def _decided(checks: Checks, key: Hashable, resource: tuple[str, str, str], refused: Callable[[], dict]) -> Slot:
    """A slot for one part that needs one decision."""
    return key, (None if checks.require(*resource) else refused())


def _topic_by_name_or_id(
    checks: Checks, by_id: bool, entry: dict, name_field: str, operation: str, refused: Callable[[int], dict]
) -> Slot:
    """Kafka's topic-id rule: an id the gateway cannot name is UNKNOWN_TOPIC_ID, else the name is decided."""
    if by_id:
        key = entry["topic_id"]
        name = checks.topic_name(key)
        if name is None:
            return key, refused(UNKNOWN_TOPIC_ID)
    else:
        key = name = entry[name_field]
    return key, (None if checks.require("topic", name, operation) else refused(TOPIC_AUTHORIZATION_FAILED))


def _single_resource(
    checks: Checks, api_key: int, version: int, resource: tuple[str, str, str], error: int, **values
) -> Outcome:
    """APIs about one group or transactional id: refused means a top-level error, nothing forwarded."""
    if checks.require(*resource):
        return checks.outcome()
    return checks.outcome(answer=response(api_key, version, error_code=error, **values))


def _describable_topic(checks: Checks, name: str | None) -> bool:
    return name is not None and checks.allowed("topic", name, "describe")


# --------------------------------------------------------------------------
# Produce and Fetch


def _produce(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id write (CVE-2018-17196), then topic write per topic (by topic id from v13).

    Kafka checks the transactional id only when a batch is transactional; the
    gateway also checks it whenever one is set (a real producer never sets
    one without transactional batches), and refuses transactional batches
    without one, as Kafka does.
    """
    by_id = version >= 13
    topics = body["topic_data"]

    def refused(topic: dict, error: int, message: str | None = None) -> dict:
        # ProduceResponse.PartitionResponse(error): offsets and times -1.
        partitions = [
            response(PRODUCE, version, "responses.partition_responses", index=partition["index"], error_code=error,
                     base_offset=-1, log_append_time_ms=-1, log_start_offset=-1, error_message=message)
            for partition in topic["partition_data"]
        ]
        return response(PRODUCE, version, "responses", name=topic.get("name"), topic_id=topic.get("topic_id"),
                        partition_responses=partitions)

    transactional_id = body["transactional_id"]
    transactional = any(has_transactional_batch(p["records"]) for topic in topics for p in topic["partition_data"])
    if transactional_id is not None or transactional:
        if transactional_id is None:
            checks.refuse("transactional_id", "", "write")
        if transactional_id is None or not checks.require("transactional_id", transactional_id, "write"):
            if body["acks"] == 0:
                # getErrorResponse is null for acks=0, and Kafka then closes the connection.
                return checks.outcome(close="transactional produce refused (acks=0)")
            error = TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            return checks.outcome(answer=response(
                PRODUCE, version, responses=[refused(topic, error, MESSAGES[error]) for topic in topics]))

    slots, kept = _judge(topics, lambda topic: _topic_by_name_or_id(
        checks, by_id, topic, "name", "write", lambda error: refused(topic, error)))
    if body["acks"] == 0 and len(kept) < len(slots):
        # Kafka appends the authorized partitions, then closes the connection
        # because a partition failed and no response can say so.
        return checks.outcome(forward={**body, "topic_data": kept} if kept else None,
                              close="produce partly refused (acks=0)")
    key_of = itemgetter("topic_id" if by_id else "name")
    return _reduce(checks, PRODUCE, version, body, "topic_data", "responses", slots, kept, key_of)


def _fetch(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic read per topic (by topic id from v13); a rewritten fetch is session-less.

    A replica id other than -1 is a follower (or a broker-internal reader
    allowed past the high watermark): Kafka wants CLUSTER_ACTION, which no
    gateway identity has, and answers every partition TOPIC_AUTHORIZATION_FAILED
    (CVE-2018-1288 class).
    """
    by_id = version >= 13
    replica_id = body["replica_state"]["replica_id"] if version >= 15 else body["replica_id"]

    def refused(topic: dict, error: int) -> dict:
        # FetchResponse.partitionResponse(partition, error).
        partitions = [
            response(FETCH, version, "responses.partitions", partition_index=partition["partition"],
                     error_code=error, high_watermark=-1, records=b"")
            for partition in topic["partitions"]
        ]
        return response(FETCH, version, "responses", topic=topic.get("topic"), topic_id=topic.get("topic_id"),
                        partitions=partitions)

    if replica_id != -1:
        checks.refuse("cluster", CLUSTER_NAME, "cluster_action")
        return checks.outcome(answer=response(
            FETCH, version, responses=[refused(topic, TOPIC_AUTHORIZATION_FAILED) for topic in body["topics"]]))
    slots, kept = _judge(body["topics"], lambda topic: _topic_by_name_or_id(
        checks, by_id, topic, "topic", "read", lambda error: refused(topic, error)))
    # A fetch session would keep serving partitions the rewritten request no
    # longer names, so every rewritten fetch is session-less (forgotten topics
    # only edit a session and are ignored without one).
    sessionless = {"session_id": 0, "session_epoch": -1, "forgotten_topics_data": []} if version >= 7 else {}
    key_of = itemgetter("topic_id" if by_id else "topic")
    return _reduce(checks, FETCH, version, body, "topics", "responses", slots, kept, key_of, sessionless)


def _list_offsets(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic describe per topic; refused partitions have timestamp and offset -1."""

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["name"], ("topic", topic["name"], "describe"), lambda: response(
            LIST_OFFSETS, version, "topics", name=topic["name"], partitions=[
                response(LIST_OFFSETS, version, "topics.partitions", partition_index=partition["partition_index"],
                         error_code=TOPIC_AUTHORIZATION_FAILED, timestamp=-1, offset=-1)
                for partition in topic["partitions"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, LIST_OFFSETS, version, body, "topics", "topics", slots, kept, itemgetter("name"))


def _offset_for_leader_epoch(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic describe per topic (Kafka's CLUSTER_ACTION alternative is broker-only)."""

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["topic"], ("topic", topic["topic"], "describe"), lambda: response(
            OFFSET_FOR_LEADER_EPOCH, version, "topics", topic=topic["topic"], partitions=[
                response(OFFSET_FOR_LEADER_EPOCH, version, "topics.partitions", partition=partition["partition"],
                         error_code=TOPIC_AUTHORIZATION_FAILED)
                for partition in topic["partitions"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, OFFSET_FOR_LEADER_EPOCH, version, body, "topics", "topics", slots, kept,
                   itemgetter("topic"))


def _describe_producers(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic read (not describe: Kafka's choice) per topic."""

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["name"], ("topic", topic["name"], "read"), lambda: response(
            DESCRIBE_PRODUCERS, version, "topics", name=topic["name"], partitions=[
                response(DESCRIBE_PRODUCERS, version, "topics.partitions", partition_index=index,
                         error_code=TOPIC_AUTHORIZATION_FAILED, error_message=MESSAGES[TOPIC_AUTHORIZATION_FAILED])
                for index in topic["partition_indexes"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, DESCRIBE_PRODUCERS, version, body, "topics", "topics", slots, kept, itemgetter("name"))


# --------------------------------------------------------------------------
# Metadata


def _metadata(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic describe per named topic (or topic id); "all topics" filtered to describable ones.

    A refused named topic is reported (29, no topic id, so its existence is
    not revealed); a refused topic id is reported with its id (Kafka: ids are
    not sensitive). Once any id is given Kafka ignores the name-only entries.
    Auto-creation (always on before v4) stays on only if the identity may
    create every topic left (cluster or topic create); a topic it may describe
    but not create, and that does not exist, gets 29 as Kafka's
    unauthorizedForCreateTopics. Before v4 the flag cannot be turned off, so
    only topics the gateway knows to exist are asked for without create.
    """
    topics = body["topics"]
    want_topic_operations = body.get("include_topic_authorized_operations", False)
    want_cluster_operations = body.get("include_cluster_authorized_operations", False)

    def set_operations(upstream: dict, entries: list[dict]) -> None:
        if want_topic_operations:
            for entry in entries:
                if entry["name"] is not None:
                    entry["topic_authorized_operations"] = checks.operations("topic", entry["name"])
        if want_cluster_operations:
            upstream["cluster_authorized_operations"] = (
                checks.operations("cluster", CLUSTER_NAME) if checks.cluster("describe") else 0)

    if topics is None or (version == 0 and not topics):
        def filter_all(upstream: dict) -> dict:
            upstream["topics"] = [entry for entry in upstream["topics"] if _describable_topic(checks, entry["name"])]
            set_operations(upstream, upstream["topics"])
            return upstream

        return checks.outcome(fix_response=filter_all)

    def refused(error: int, name: str | None, topic_id: bytes, is_internal: bool = False) -> dict:
        return response(METADATA, version, "topics", error_code=error, name=name, topic_id=topic_id,
                        is_internal=is_internal)

    by_id = any(topic.get("topic_id", ZERO_UUID) != ZERO_UUID for topic in topics)
    plan: list[tuple[Hashable, dict | None, dict | None]] = []  # (key, refused entry, forwarded entry)
    seen = set()
    for topic in topics:
        if by_id:
            key = topic_id = topic["topic_id"]
            if topic_id == ZERO_UUID:
                continue
            name = checks.topic_name(topic_id)
            if name is None:
                entry = refused(UNKNOWN_TOPIC_ID, None, topic_id)
            elif not checks.require("topic", name, "describe"):
                entry = refused(TOPIC_AUTHORIZATION_FAILED, None, topic_id)
            else:
                entry = None
        else:
            key = name = topic["name"]
            if name is None:
                entry = refused(INVALID_REQUEST, None, ZERO_UUID)
            elif not checks.require("topic", name, "describe"):
                entry = refused(TOPIC_AUTHORIZATION_FAILED, name, ZERO_UUID)
            else:
                entry = None
        if key not in seen:  # Kafka answers a set of topics
            seen.add(key)
            plan.append((key, entry, topic if entry is None else None))

    auto_create_off = False
    if not by_id and body.get("allow_auto_topic_creation", True) and not checks.cluster("create"):
        for index, (name, _, forwarded) in enumerate(plan):
            if forwarded is None or checks.allowed("topic", name, "create"):
                continue
            if checks.topic_exists(name):
                auto_create_off = version >= 4
            else:
                checks.refuse("topic", name, "create")
                plan[index] = (name, refused(TOPIC_AUTHORIZATION_FAILED, name, ZERO_UUID, name in INTERNAL_TOPICS),
                               None)

    forwarded_topics = [forwarded for _, _, forwarded in plan if forwarded is not None]
    reduced = len(forwarded_topics) < len(topics)
    if not (reduced or auto_create_off or want_topic_operations or want_cluster_operations):
        return checks.outcome()
    slots = [(key, entry) for key, entry, _ in plan]

    def fix(upstream: dict) -> dict:
        set_operations(upstream, upstream["topics"])
        # Only what was asked comes back: with nothing left to ask, a v0
        # request asks for all topics, and those are dropped here.
        key_of = itemgetter("topic_id" if by_id else "name")
        upstream["topics"] = merge(slots, upstream["topics"], key_of, keep_unasked=False)
        return upstream

    forward = None
    if reduced or auto_create_off:
        # Metadata is always forwarded, even with every topic refused: the
        # client needs the brokers and cluster id of the answer.
        forward = {**body, "topics": forwarded_topics}
        if version >= 4:
            forward["allow_auto_topic_creation"] = body["allow_auto_topic_creation"] and not auto_create_off
    return checks.outcome(forward=forward, fix_response=fix)


# --------------------------------------------------------------------------
# Groups


def _offset_commit(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read, then topic read per topic (by topic id from v10)."""
    by_id = version >= 10

    def refused(topic: dict, error: int) -> dict:
        return response(OFFSET_COMMIT, version, "topics", name=topic.get("name"), topic_id=topic.get("topic_id"),
                        partitions=[
                            response(OFFSET_COMMIT, version, "topics.partitions",
                                     partition_index=partition["partition_index"], error_code=error)
                            for partition in topic["partitions"]
                        ])

    if not checks.require("group", body["group_id"], "read"):
        return checks.outcome(answer=response(
            OFFSET_COMMIT, version, topics=[refused(topic, GROUP_AUTHORIZATION_FAILED) for topic in body["topics"]]))
    slots, kept = _judge(body["topics"], lambda topic: _topic_by_name_or_id(
        checks, by_id, topic, "name", "read", lambda error: refused(topic, error)))
    key_of = itemgetter("topic_id" if by_id else "name")
    return _reduce(checks, OFFSET_COMMIT, version, body, "topics", "topics", slots, kept, key_of)


def _offset_fetch(version: int, body: dict, checks: Checks) -> Outcome:
    """Group describe per group, then topic describe per topic (by topic id from v10).

    One group up to v7, a list from v8. A group's null topics means all of
    them: Kafka filters those by topic describe, so the gateway filters the
    answer for the identity. A group-level error in the answer wins, as in Kafka.
    """
    batched = version >= 8
    by_id = version >= 10
    groups = body["groups"] if batched else [{"group_id": body["group_id"], "topics": body["topics"]}]
    topics_path = "groups.topics" if batched else "topics"
    topic_key = itemgetter("topic_id" if by_id else "name")

    def refused_topic(topic: dict, error: int) -> dict:
        # The v1-v7 topic struct has no topic id; v8+ has one (used from v10).
        key = {"topic_id": topic["topic_id"]} if by_id else {"name": topic["name"]}
        partitions = [
            response(OFFSET_FETCH, version, topics_path + ".partitions", partition_index=index, committed_offset=-1,
                     error_code=error)
            for index in topic["partition_indexes"]
        ]
        return response(OFFSET_FETCH, version, topics_path, **key, partitions=partitions)

    def refused_group(group: dict) -> dict:
        # OffsetFetchResponse.groupError: a group error from v2, partition errors before;
        # up to v7 the single group's result is the whole answer.
        if version >= 2:
            error, topics = GROUP_AUTHORIZATION_FAILED, []
        else:
            error, topics = 0, [refused_topic(topic, GROUP_AUTHORIZATION_FAILED) for topic in group["topics"]]
        if batched:
            return response(OFFSET_FETCH, version, "groups", group_id=group["group_id"], error_code=error,
                            topics=topics)
        return response(OFFSET_FETCH, version, error_code=error, topics=topics)

    # Per group: (group id, refused group, forwarded group, topic slots or None for "all").
    plan: list[tuple[str, dict | None, dict | None, list[Slot] | None]] = []
    for group in groups:
        group_id = group["group_id"]
        if not checks.require("group", group_id, "describe"):
            plan.append((group_id, refused_group(group), None, []))
        elif group["topics"] is None:
            plan.append((group_id, None, group, None))
        else:
            slots, kept = _judge(group["topics"], lambda topic: _topic_by_name_or_id(
                checks, by_id, topic, "name", "describe", lambda error: refused_topic(topic, error)))
            plan.append((group_id, None, {**group, "topics": kept}, slots))

    forwarded = [group for _, _, group, _ in plan if group is not None]
    if not forwarded and plan:
        if batched:
            return checks.outcome(answer=response(OFFSET_FETCH, version, groups=[entry for _, entry, _, _ in plan]))
        return checks.outcome(answer=plan[0][1])
    reduced = len(forwarded) < len(groups) or any(
        slots is not None and any(entry is not None for _, entry in slots) for _, _, _, slots in plan)
    if not reduced and all(slots is not None for _, _, _, slots in plan):
        return checks.outcome()
    forwarded_slots = {group_id: slots for group_id, _, group, slots in plan if group is not None}

    def fix_topics(slots: list[Slot] | None, upstream_topics: list[dict]) -> list[dict]:
        if slots is None:
            return [topic for topic in upstream_topics if _describable_topic(
                checks, checks.topic_name(topic["topic_id"]) if by_id else topic["name"])]
        return merge(slots, upstream_topics, topic_key)

    def fix(upstream: dict) -> dict:
        if not batched:
            if upstream.get("error_code", 0) == 0:
                upstream["topics"] = fix_topics(plan[0][3], upstream["topics"])
            return upstream
        for group in upstream["groups"]:
            if group["error_code"] == 0 and group["group_id"] in forwarded_slots:
                group["topics"] = fix_topics(forwarded_slots[group["group_id"]], group["topics"])
        upstream["groups"] = merge(((group_id, entry) for group_id, entry, _, _ in plan), upstream["groups"],
                                   itemgetter("group_id"))
        return upstream

    if not reduced:
        forward = None
    elif batched:
        forward = {**body, "groups": forwarded}
    else:
        forward = {**body, "topics": forwarded[0]["topics"]}
    return checks.outcome(forward=forward, fix_response=fix)


def _find_coordinator(version: int, body: dict, checks: Checks) -> Outcome:
    """Group describe (key type 0) or transactional id describe (1) per key.

    Share coordinators (2, v6) need CLUSTER_ACTION, which no gateway identity
    has; unknown key types are INVALID_REQUEST. Up to v3 one key with
    top-level fields; from v4 per-key results in request order.
    """
    key_type = body.get("key_type", 0)
    kinds = {0: ("group", GROUP_AUTHORIZATION_FAILED), 1: ("transactional_id", TRANSACTIONAL_ID_AUTHORIZATION_FAILED)}
    keys = body["coordinator_keys"] if version >= 4 else [body["key"]]

    if key_type not in kinds:
        # The whole request fails (getErrorResponse): every key gets the error and its message.
        if key_type == 2 and version >= 6:
            checks.refuse("cluster", CLUSTER_NAME, "cluster_action")
            error = CLUSTER_AUTHORIZATION_FAILED
        else:
            error = INVALID_REQUEST
        if version < 4:
            return checks.outcome(answer=response(FIND_COORDINATOR, version, error_code=error,
                                                  error_message=MESSAGES[error], node_id=-1, host="", port=-1))
        return checks.outcome(answer=response(FIND_COORDINATOR, version, coordinators=[
            response(FIND_COORDINATOR, version, "coordinators", key=key, node_id=-1, host="", port=-1,
                     error_code=error, error_message=MESSAGES[error])
            for key in keys
        ]))

    resource_type, error = kinds[key_type]
    if version < 4:
        # Kafka answers a refused single key with getErrorResponse (prepareOldResponse).
        return _single_resource(checks, FIND_COORDINATOR, version, (resource_type, body["key"], "describe"), error,
                                error_message=MESSAGES[error], node_id=-1, host="", port=-1)

    def judge(key: str) -> Slot:
        # Per-key refusals carry no message (handleFindCoordinatorRequestV4AndAbove).
        return _decided(checks, key, (resource_type, key, "describe"), lambda: response(
            FIND_COORDINATOR, version, "coordinators", key=key, node_id=-1, host="", port=-1, error_code=error))

    slots, kept = _judge(keys, judge)
    return _reduce(checks, FIND_COORDINATOR, version, body, "coordinator_keys", "coordinators", slots, kept,
                   itemgetter("key"))


def _join_group(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read; JoinGroupRequest.getErrorResponse: unknown generation, no protocol (null from v7)."""
    return _single_resource(checks, JOIN_GROUP, version, ("group", body["group_id"], "read"),
                            GROUP_AUTHORIZATION_FAILED, protocol_name=None if version >= 7 else "")


def _heartbeat(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read."""
    return _single_resource(checks, HEARTBEAT, version, ("group", body["group_id"], "read"),
                            GROUP_AUTHORIZATION_FAILED)


def _leave_group(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read."""
    return _single_resource(checks, LEAVE_GROUP, version, ("group", body["group_id"], "read"),
                            GROUP_AUTHORIZATION_FAILED)


def _sync_group(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read."""
    return _single_resource(checks, SYNC_GROUP, version, ("group", body["group_id"], "read"),
                            GROUP_AUTHORIZATION_FAILED)


def _describe_groups(version: int, body: dict, checks: Checks) -> Outcome:
    """Group describe per group; authorized operations (v3+) are the identity's, not the gateway's."""
    want_operations = body.get("include_authorized_operations", False)

    def judge(group_id: str) -> Slot:
        # DescribeGroupsResponse.groupError(groupId, error): unknown state, no members.
        return _decided(checks, group_id, ("group", group_id, "describe"), lambda: response(
            DESCRIBE_GROUPS, version, "groups", group_id=group_id, error_code=GROUP_AUTHORIZATION_FAILED))

    slots, kept = _judge(body["groups"], judge)
    if not kept and slots:
        return checks.outcome(answer=response(DESCRIBE_GROUPS, version, groups=[entry for _, entry in slots]))
    if len(kept) == len(slots) and not want_operations:
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        if want_operations:
            for group in upstream["groups"]:
                if group["error_code"] == 0:
                    group["authorized_operations"] = checks.operations("group", group["group_id"])
        upstream["groups"] = merge(slots, upstream["groups"], itemgetter("group_id"))
        return upstream

    return checks.outcome(forward={**body, "groups": kept} if len(kept) < len(slots) else None, fix_response=fix)


def _list_groups(version: int, body: dict, checks: Checks) -> Outcome:
    """Cluster describe lists every group (Kafka keeps this for compatibility); else group describe filters."""
    if checks.cluster("describe"):
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        upstream["groups"] = [
            group for group in upstream["groups"] if checks.allowed("group", group["group_id"], "describe")
        ]
        return upstream

    return checks.outcome(fix_response=fix)


def _delete_groups(version: int, body: dict, checks: Checks) -> Outcome:
    """Group delete per distinct group (Kafka deduplicates)."""

    def judge(group_id: str) -> Slot:
        return _decided(checks, group_id, ("group", group_id, "delete"), lambda: response(
            DELETE_GROUPS, version, "results", group_id=group_id, error_code=GROUP_AUTHORIZATION_FAILED))

    slots, kept = _judge(list(dict.fromkeys(body["groups_names"])), judge)
    return _reduce(checks, DELETE_GROUPS, version, body, "groups_names", "results", slots, kept,
                   itemgetter("group_id"))


def _offset_delete(version: int, body: dict, checks: Checks) -> Outcome:
    """Group delete, then topic read per topic. Kafka asks the coordinator even with no topic left."""
    if not checks.require("group", body["group_id"], "delete"):
        return checks.outcome(answer=response(OFFSET_DELETE, version, error_code=GROUP_AUTHORIZATION_FAILED))

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["name"], ("topic", topic["name"], "read"), lambda: response(
            OFFSET_DELETE, version, "topics", name=topic["name"], partitions=[
                response(OFFSET_DELETE, version, "topics.partitions", partition_index=partition["partition_index"],
                         error_code=TOPIC_AUTHORIZATION_FAILED)
                for partition in topic["partitions"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    if len(kept) == len(slots):
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        # A top-level error replaces the partition results (OffsetDeleteResponse.Builder.merge).
        if upstream["error_code"] == 0:
            upstream["topics"] = merge(slots, upstream["topics"], itemgetter("name"))
        return upstream

    return checks.outcome(forward={**body, "topics": kept}, fix_response=fix)


def _group_heartbeat(api_key: int) -> Rule:
    """Group read, then topic describe for every subscribed name (any refused: the whole heartbeat gets 29).

    The assignment names topics by id and may come from a regex subscription
    the broker resolves with the gateway's own rights, in this or an earlier
    heartbeat: it is filtered to topics the identity may describe. An id the
    worker does not know yet (a topic newer than its last look) makes the
    connection look the topics up and run this again before the response goes
    on (gateway/connection.py), since the broker sends an assignment only when
    it changes: dropped once, it would not come back. Still unknown then, it is
    dropped.
    """

    def rule(version: int, body: dict, checks: Checks) -> Outcome:
        if not checks.require("group", body["group_id"], "read"):
            return checks.outcome(answer=response(api_key, version, error_code=GROUP_AUTHORIZATION_FAILED))
        names = body["subscribed_topic_names"] or []
        refused = [name for name in dict.fromkeys(names) if not checks.require("topic", name, "describe")]
        if refused:
            return checks.outcome(answer=response(api_key, version, error_code=TOPIC_AUTHORIZATION_FAILED))

        def fix(upstream: dict) -> dict:
            assignment = upstream["assignment"]
            if assignment is not None:
                assignment["topic_partitions"] = [
                    entry for entry in assignment["topic_partitions"]
                    if _describable_topic(checks, checks.topic_name(entry["topic_id"]))
                ]
            return upstream

        return checks.outcome(fix_response=fix)

    rule.__doc__ = _group_heartbeat.__doc__
    return rule


def _group_describe(api_key: int, described_topics: Callable[[dict], Iterable[str | None]]) -> Rule:
    """Group describe per group; a group whose members name a topic the identity may not describe gets 29."""

    def rule(version: int, body: dict, checks: Checks) -> Outcome:
        want_operations = body["include_authorized_operations"]

        def judge(group_id: str) -> Slot:
            return _decided(checks, group_id, ("group", group_id, "describe"), lambda: response(
                api_key, version, "groups", group_id=group_id, error_code=GROUP_AUTHORIZATION_FAILED))

        slots, kept = _judge(body["group_ids"], judge)
        if not kept and slots:
            return checks.outcome(answer=response(api_key, version, groups=[entry for _, entry in slots]))

        def fix(upstream: dict) -> dict:
            groups = []
            for group in upstream["groups"]:
                if want_operations and group["error_code"] == 0:
                    group["authorized_operations"] = checks.operations("group", group["group_id"])
                if any(not _describable_topic(checks, name) for name in described_topics(group)):
                    group = response(
                        api_key, version, "groups", group_id=group["group_id"], error_code=TOPIC_AUTHORIZATION_FAILED,
                        error_message="The group has described topic(s) that the client is not authorized to describe.")
                groups.append(group)
            upstream["groups"] = merge(slots, groups, itemgetter("group_id"))
            return upstream

        return checks.outcome(forward={**body, "group_ids": kept} if len(kept) < len(slots) else None,
                              fix_response=fix)

    rule.__doc__ = _group_describe.__doc__
    return rule


def _consumer_group_topics(group: dict) -> Iterator[str | None]:
    """Every topic a described consumer group's members are (or are to be) assigned."""
    for member in group["members"]:
        for assignment in (member["assignment"], member["target_assignment"]):
            for partitions in assignment["topic_partitions"]:
                yield partitions["topic_name"]


def _share_group_topics(group: dict) -> Iterator[str | None]:
    """Every topic a described share group's members subscribe to or are assigned (subscriptions too: stricter
    than Kafka, so a description never shows a name the identity may not describe)."""
    for member in group["members"]:
        yield from member["subscribed_topic_names"]
        for partitions in member["assignment"]["topic_partitions"]:
            yield partitions["topic_name"]


# --------------------------------------------------------------------------
# Share groups (KIP-932)


def _share_fetch(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read, then topic read per topic (always by topic id); refused parts never reach the broker.

    A refused group fails the whole request (ShareFetchRequest.getErrorResponse:
    a top-level error, no topics). A refused or unknown topic gets
    ShareFetchResponse.partitionResponse(error) per partition, its piggybacked
    acknowledgements refused alike. The rest is forwarded even when nothing is
    left: every ShareFetch moves the broker's share session to its next epoch
    (epoch -1 closes it), which a locally answered one would not, leaving
    client and broker out of step. Forgotten topics only take partitions out
    of the session and pass as they are. What the session already holds is
    authorized per connection (gateway/handlers/share_sessions.py).
    """
    # Kafka cannot authorize a null group id (it fails the request); the empty name is decided instead.
    if not checks.require("group", body["group_id"] or "", "read"):
        return checks.outcome(answer=response(SHARE_FETCH, version, error_code=GROUP_AUTHORIZATION_FAILED))

    def refused(topic: dict, error: int) -> dict:
        partitions = [
            response(SHARE_FETCH, version, "responses.partitions", partition_index=partition["partition_index"],
                     error_code=error, records=b"",
                     acknowledge_error_code=error if partition["acknowledgement_batches"] else 0)
            for partition in topic["partitions"]
        ]
        return response(SHARE_FETCH, version, "responses", topic_id=topic["topic_id"], partitions=partitions)

    slots, kept = _judge(body["topics"], lambda topic: _topic_by_name_or_id(
        checks, True, topic, "topic_id", "read", lambda error: refused(topic, error)))
    return _share_session_reduce(checks, body, slots, kept)


def _share_acknowledge(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read, then topic read per topic (by topic id), as ShareFetch; refused partitions get the error.

    Forwarded even with nothing left to acknowledge, for the session epoch (see _share_fetch).
    """
    if not checks.require("group", body["group_id"] or "", "read"):
        return checks.outcome(answer=response(SHARE_ACKNOWLEDGE, version, error_code=GROUP_AUTHORIZATION_FAILED))

    def refused(topic: dict, error: int) -> dict:
        partitions = [
            response(SHARE_ACKNOWLEDGE, version, "responses.partitions", partition_index=partition["partition_index"],
                     error_code=error)
            for partition in topic["partitions"]
        ]
        return response(SHARE_ACKNOWLEDGE, version, "responses", topic_id=topic["topic_id"], partitions=partitions)

    slots, kept = _judge(body["topics"], lambda topic: _topic_by_name_or_id(
        checks, True, topic, "topic_id", "read", lambda error: refused(topic, error)))
    return _share_session_reduce(checks, body, slots, kept)


def _share_session_reduce(checks: Checks, body: dict, slots: list[Slot], kept: list[dict]) -> Outcome:
    """All allowed: untouched; else the allowed topics are forwarded (maybe none) and the refused merged back,
    unless the broker failed the whole request (a top-level error carries no topics)."""
    if len(kept) == len(slots):
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        if upstream["error_code"] == 0:
            upstream["responses"] = merge(slots, upstream["responses"], itemgetter("topic_id"))
        return upstream

    return checks.outcome(forward={**body, "topics": kept}, fix_response=fix)


def _describe_share_group_offsets(version: int, body: dict, checks: Checks) -> Outcome:
    """Group describe per group, then topic describe per named topic; all topics (null) filtered by describe."""
    refused_message = MESSAGES[TOPIC_AUTHORIZATION_FAILED]

    def refused_topic(topic: dict) -> dict:
        return response(DESCRIBE_SHARE_GROUP_OFFSETS, version, "groups.topics", topic_name=topic["topic_name"],
                        partitions=[
                            response(DESCRIBE_SHARE_GROUP_OFFSETS, version, "groups.topics.partitions",
                                     partition_index=index, start_offset=-1, error_code=TOPIC_AUTHORIZATION_FAILED,
                                     error_message=refused_message)
                            for index in topic["partitions"]
                        ])

    # Per group: (group id, refused group, forwarded group, topic slots or None for "all").
    plan: list[tuple[str, dict | None, dict | None, list[Slot] | None]] = []
    for group in body["groups"]:
        group_id = group["group_id"]
        if not checks.require("group", group_id, "describe"):
            plan.append((group_id, response(DESCRIBE_SHARE_GROUP_OFFSETS, version, "groups", group_id=group_id,
                                            error_code=GROUP_AUTHORIZATION_FAILED,
                                            error_message=MESSAGES[GROUP_AUTHORIZATION_FAILED]), None, []))
        elif group["topics"] is None:
            plan.append((group_id, None, group, None))
        else:
            slots, kept = _judge(group["topics"], lambda topic: _decided(
                checks, topic["topic_name"], ("topic", topic["topic_name"], "describe"), lambda: refused_topic(topic)))
            plan.append((group_id, None, {**group, "topics": kept}, slots))

    forwarded = [group for _, _, group, _ in plan if group is not None]
    if not forwarded and plan:
        return checks.outcome(answer=response(DESCRIBE_SHARE_GROUP_OFFSETS, version,
                                              groups=[entry for _, entry, _, _ in plan]))
    reduced = len(forwarded) < len(plan) or any(
        slots is not None and any(entry is not None for _, entry in slots) for _, _, _, slots in plan)
    if not reduced and all(slots is not None for _, _, _, slots in plan):
        return checks.outcome()
    forwarded_slots = {group_id: slots for group_id, _, group, slots in plan if group is not None}

    def fix(upstream: dict) -> dict:
        for group in upstream["groups"]:
            if group["error_code"] != 0 or group["group_id"] not in forwarded_slots:
                continue
            slots = forwarded_slots[group["group_id"]]
            if slots is None:
                group["topics"] = [topic for topic in group["topics"]
                                   if _describable_topic(checks, topic["topic_name"])]
            else:
                group["topics"] = merge(slots, group["topics"], itemgetter("topic_name"))
        upstream["groups"] = merge(((group_id, entry) for group_id, entry, _, _ in plan), upstream["groups"],
                                   itemgetter("group_id"))
        return upstream

    return checks.outcome(forward={**body, "groups": forwarded} if reduced else None, fix_response=fix)


def _alter_share_group_offsets(version: int, body: dict, checks: Checks) -> Outcome:
    """Group read (refused: a top-level error), then topic read per topic; refused partitions get 29."""
    if not checks.require("group", body["group_id"], "read"):
        return checks.outcome(answer=response(ALTER_SHARE_GROUP_OFFSETS, version, error_code=GROUP_AUTHORIZATION_FAILED,
                                              error_message=MESSAGES[GROUP_AUTHORIZATION_FAILED]))
    message = MESSAGES[TOPIC_AUTHORIZATION_FAILED]

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["topic_name"], ("topic", topic["topic_name"], "read"), lambda: response(
            ALTER_SHARE_GROUP_OFFSETS, version, "responses", topic_name=topic["topic_name"], partitions=[
                response(ALTER_SHARE_GROUP_OFFSETS, version, "responses.partitions",
                         partition_index=partition["partition_index"], error_code=TOPIC_AUTHORIZATION_FAILED,
                         error_message=message)
                for partition in topic["partitions"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, ALTER_SHARE_GROUP_OFFSETS, version, body, "topics", "responses", slots, kept,
                   itemgetter("topic_name"))


def _delete_share_group_offsets(version: int, body: dict, checks: Checks) -> Outcome:
    """Group delete (refused: a top-level error), then topic read per topic, as OffsetDelete."""
    if not checks.require("group", body["group_id"], "delete"):
        return checks.outcome(answer=response(DELETE_SHARE_GROUP_OFFSETS, version,
                                              error_code=GROUP_AUTHORIZATION_FAILED,
                                              error_message=MESSAGES[GROUP_AUTHORIZATION_FAILED]))

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["topic_name"], ("topic", topic["topic_name"], "read"), lambda: response(
            DELETE_SHARE_GROUP_OFFSETS, version, "responses", topic_name=topic["topic_name"],
            error_code=TOPIC_AUTHORIZATION_FAILED, error_message=MESSAGES[TOPIC_AUTHORIZATION_FAILED]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, DELETE_SHARE_GROUP_OFFSETS, version, body, "topics", "responses", slots, kept,
                   itemgetter("topic_name"))


# --------------------------------------------------------------------------
# Transactions


def _init_producer_id(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id write, or without one cluster idempotent_write.

    Kafka also accepts an idempotent producer that may write any topic
    (authorizeByResourceType), which a per-resource decision cannot express:
    the policy grants idempotent_write for that. Two-phase commit (v6,
    KIP-939) wants TWO_PHASE_COMMIT, outside the policy's vocabulary: refused.
    """
    transactional_id = body["transactional_id"]
    refused = {"producer_id": -1, "producer_epoch": -1}  # InitProducerIdRequest.getErrorResponse
    if transactional_id is None:
        return _single_resource(checks, INIT_PRODUCER_ID, version, ("cluster", CLUSTER_NAME, "idempotent_write"),
                                CLUSTER_AUTHORIZATION_FAILED, **refused)
    outcome = _single_resource(checks, INIT_PRODUCER_ID, version, ("transactional_id", transactional_id, "write"),
                               TRANSACTIONAL_ID_AUTHORIZATION_FAILED, **refused)
    if outcome.answer is None and body.get("enable2_pc", False):
        checks.refuse("transactional_id", transactional_id, "two_phase_commit")
        return checks.outcome(answer=response(
            INIT_PRODUCER_ID, version, error_code=TRANSACTIONAL_ID_AUTHORIZATION_FAILED, **refused))
    return outcome


def _add_partitions_to_txn(version: int, body: dict, checks: Checks) -> Outcome:
    """v0-v3: transactional id write, then topic write; any refused partition fails the whole transaction.

    v4+ batches transactions and is broker-to-broker (verification of
    transactional produce): Kafka requires CLUSTER_ACTION, so a client gets a
    top-level CLUSTER_AUTHORIZATION_FAILED. Internal topics are never
    authorized here (Kafka filters them out before asking the authorizer).
    """
    if version >= 4:
        checks.refuse("cluster", CLUSTER_NAME, "cluster_action")
        return checks.outcome(answer=response(ADD_PARTITIONS_TO_TXN, version, error_code=CLUSTER_AUTHORIZATION_FAILED))
    topics = body["v3_and_below_topics"]

    def answer(error_of: Callable[[str], int]) -> Outcome:
        return checks.outcome(answer=response(ADD_PARTITIONS_TO_TXN, version, results_by_topic_v3_and_below=[
            response(ADD_PARTITIONS_TO_TXN, version, "results_by_topic_v3_and_below", name=topic["name"],
                     results_by_partition=[
                         response(ADD_PARTITIONS_TO_TXN, version, "results_by_topic_v3_and_below.results_by_partition",
                                  partition_index=index, partition_error_code=error_of(topic["name"]))
                         for index in topic["partitions"]
                     ])
            for topic in topics
        ]))

    if not checks.require("transactional_id", body["v3_and_below_transactional_id"], "write"):
        return answer(lambda name: TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    writable = {}
    for topic in topics:
        name = topic["name"]
        if name in INTERNAL_TOPICS:
            checks.refuse("topic", name, "write")
            writable[name] = False
        else:
            writable[name] = checks.require("topic", name, "write")
    if all(writable.values()):
        return checks.outcome()

    def error_of(name: str) -> int:
        # Kafka: refused partitions 29, unknown ones 3, the rest OPERATION_NOT_ATTEMPTED.
        if not writable[name]:
            return TOPIC_AUTHORIZATION_FAILED
        return OPERATION_NOT_ATTEMPTED if checks.topic_exists(name) else UNKNOWN_TOPIC_OR_PARTITION

    return answer(error_of)


def _add_offsets_to_txn(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id write, then group read."""
    transactional = _single_resource(checks, ADD_OFFSETS_TO_TXN, version,
                                     ("transactional_id", body["transactional_id"], "write"),
                                     TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    if transactional.answer is not None:
        return transactional
    return _single_resource(checks, ADD_OFFSETS_TO_TXN, version, ("group", body["group_id"], "read"),
                            GROUP_AUTHORIZATION_FAILED)


def _end_txn(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id write."""
    return _single_resource(checks, END_TXN, version, ("transactional_id", body["transactional_id"], "write"),
                            TRANSACTIONAL_ID_AUTHORIZATION_FAILED)


def _txn_offset_commit(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id write, group read (each failing every partition), then topic read per topic."""

    def refused(topic: dict, error: int) -> dict:
        return response(TXN_OFFSET_COMMIT, version, "topics", name=topic["name"], partitions=[
            response(TXN_OFFSET_COMMIT, version, "topics.partitions", partition_index=partition["partition_index"],
                     error_code=error)
            for partition in topic["partitions"]
        ])

    for resource, error in (
        (("transactional_id", body["transactional_id"], "write"), TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        (("group", body["group_id"], "read"), GROUP_AUTHORIZATION_FAILED),
    ):
        if not checks.require(*resource):
            return checks.outcome(answer=response(
                TXN_OFFSET_COMMIT, version, topics=[refused(topic, error) for topic in body["topics"]]))
    slots, kept = _judge(body["topics"], lambda topic: _decided(
        checks, topic["name"], ("topic", topic["name"], "read"), lambda: refused(topic, TOPIC_AUTHORIZATION_FAILED)))
    return _reduce(checks, TXN_OFFSET_COMMIT, version, body, "topics", "topics", slots, kept, itemgetter("name"))


def _describe_transactions(version: int, body: dict, checks: Checks) -> Outcome:
    """Transactional id describe per id; each answer's topics filtered to describable ones (as Kafka)."""

    def judge(transactional_id: str) -> Slot:
        return _decided(checks, transactional_id, ("transactional_id", transactional_id, "describe"), lambda: response(
            DESCRIBE_TRANSACTIONS, version, "transaction_states", transactional_id=transactional_id,
            error_code=TRANSACTIONAL_ID_AUTHORIZATION_FAILED))

    slots, kept = _judge(body["transactional_ids"], judge)
    if not kept and slots:
        return checks.outcome(answer=response(DESCRIBE_TRANSACTIONS, version,
                                              transaction_states=[entry for _, entry in slots]))

    def fix(upstream: dict) -> dict:
        for state in upstream["transaction_states"]:
            state["topics"] = [topic for topic in state["topics"] if _describable_topic(checks, topic["topic"])]
        upstream["transaction_states"] = merge(slots, upstream["transaction_states"], itemgetter("transactional_id"))
        return upstream

    return checks.outcome(forward={**body, "transactional_ids": kept} if len(kept) < len(slots) else None,
                          fix_response=fix)


def _list_transactions(version: int, body: dict, checks: Checks) -> Outcome:
    """Filtered to transactional ids the identity may describe (Kafka has no cluster-wide shortcut here)."""

    def fix(upstream: dict) -> dict:
        upstream["transaction_states"] = [
            state for state in upstream["transaction_states"]
            if checks.allowed("transactional_id", state["transactional_id"], "describe")
        ]
        return upstream

    return checks.outcome(fix_response=fix)


# --------------------------------------------------------------------------
# Topic administration


def _create_topics(version: int, body: dict, checks: Checks) -> Outcome:
    """Cluster create, else topic create per topic.

    From v5 a created topic's configs come back only if the identity may
    describe_configs it; otherwise TOPIC_AUTHORIZATION_FAILED in
    topic_config_error_code, as Kafka's controller does.
    """
    cluster_create = checks.cluster("create")

    def judge(topic: dict) -> Slot:
        name = topic["name"]
        if cluster_create:
            return name, None
        return _decided(checks, name, ("topic", name, "create"), lambda: response(
            CREATE_TOPICS, version, "topics", name=name, error_code=TOPIC_AUTHORIZATION_FAILED,
            error_message="Authorization failed."))

    slots, kept = _judge(body["topics"], judge)
    if not kept and slots:
        return checks.outcome(answer=response(CREATE_TOPICS, version, topics=[entry for _, entry in slots]))
    hide_configs = version >= 5 and any(
        not checks.allowed("topic", topic["name"], "describe_configs") for topic in kept)
    if len(kept) == len(slots) and not hide_configs:
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        for index, topic in enumerate(upstream["topics"]):
            if hide_configs and topic["error_code"] == 0 and not checks.allowed("topic", topic["name"],
                                                                                 "describe_configs"):
                # Kafka's includeConfigsAndMetadata: no configs, partitions or replication factor.
                upstream["topics"][index] = {**topic, "num_partitions": -1, "replication_factor": -1, "configs": [],
                                             "topic_config_error_code": TOPIC_AUTHORIZATION_FAILED}
        upstream["topics"] = merge(slots, upstream["topics"], itemgetter("name"))
        return upstream

    return checks.outcome(forward={**body, "topics": kept} if len(kept) < len(slots) else None, fix_response=fix)


def _delete_topics(version: int, body: dict, checks: Checks) -> Outcome:
    """Cluster delete, else topic delete per topic (names up to v5; names or topic ids from v6).

    As Kafka's controller: a refused id reveals its name only if the identity
    may describe the topic; a refused name the identity may describe and that
    does not exist is UNKNOWN_TOPIC_OR_PARTITION; an entry with both or neither
    of name and id is INVALID_REQUEST.
    """
    cluster_delete = checks.cluster("delete")

    def refused(name: str | None, topic_id: bytes, error: int, message: str | None = None) -> dict:
        return response(DELETE_TOPICS, version, "responses", name=name, topic_id=topic_id, error_code=error,
                        error_message=message or MESSAGES[error])

    def judge(topic: dict) -> Slot:
        name, topic_id = topic["name"], topic.get("topic_id", ZERO_UUID)
        if name is not None and topic_id != ZERO_UUID:
            return ("name", name), refused(name, topic_id, INVALID_REQUEST,
                                           "You may not specify both topic name and topic id.")
        if name is None and topic_id == ZERO_UUID:
            return ("id", topic_id), refused(None, topic_id, INVALID_REQUEST,
                                             "Neither topic name nor id were specified.")
        if cluster_delete:
            return (("name", name) if name is not None else ("id", topic_id)), None
        if name is None:
            name = checks.topic_name(topic_id)
            if name is None:
                return ("id", topic_id), refused(None, topic_id, UNKNOWN_TOPIC_ID)
            if checks.require("topic", name, "delete"):
                return ("id", topic_id), None
            shown = name if checks.allowed("topic", name, "describe") else None
            return ("id", topic_id), refused(shown, topic_id, TOPIC_AUTHORIZATION_FAILED)
        if checks.require("topic", name, "delete"):
            return ("name", name), None
        if checks.allowed("topic", name, "describe") and not checks.topic_exists(name):
            return ("name", name), refused(name, ZERO_UUID, UNKNOWN_TOPIC_OR_PARTITION)
        return ("name", name), refused(name, ZERO_UUID, TOPIC_AUTHORIZATION_FAILED)

    if version >= 6:
        slots, kept = _judge(body["topics"], judge)
        request_list = "topics"
    else:
        slots, kept = _judge([{"name": name} for name in body["topic_names"]], judge)
        kept = [topic["name"] for topic in kept]
        request_list = "topic_names"

    def key_of(entry: dict) -> Hashable:
        # The controller names every topic it deleted, so by-id entries are matched by their id.
        return ("id", entry["topic_id"]) if entry.get("topic_id", ZERO_UUID) in by_id else ("name", entry["name"])

    by_id = {key[1] for key, _ in slots if key[0] == "id" and key[1] != ZERO_UUID}
    return _reduce(checks, DELETE_TOPICS, version, body, request_list, "responses", slots, kept, key_of)


def _delete_records(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic delete per topic; refused partitions have low watermark -1."""

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["name"], ("topic", topic["name"], "delete"), lambda: response(
            DELETE_RECORDS, version, "topics", name=topic["name"], partitions=[
                response(DELETE_RECORDS, version, "topics.partitions", partition_index=partition["partition_index"],
                         low_watermark=-1, error_code=TOPIC_AUTHORIZATION_FAILED)
                for partition in topic["partitions"]
            ]))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, DELETE_RECORDS, version, body, "topics", "topics", slots, kept, itemgetter("name"))


def _create_partitions(version: int, body: dict, checks: Checks) -> Outcome:
    """Topic alter per topic."""

    def judge(topic: dict) -> Slot:
        return _decided(checks, topic["name"], ("topic", topic["name"], "alter"), lambda: response(
            CREATE_PARTITIONS, version, "results", name=topic["name"], error_code=TOPIC_AUTHORIZATION_FAILED))

    slots, kept = _judge(body["topics"], judge)
    return _reduce(checks, CREATE_PARTITIONS, version, body, "topics", "results", slots, kept, itemgetter("name"))


# --------------------------------------------------------------------------
# Configs

# ConfigResource.Type ids -> the resource deciding them and the error for a refusal.
_CONFIG_RESOURCES = {
    2: ("topic", TOPIC_AUTHORIZATION_FAILED),
    32: ("group", GROUP_AUTHORIZATION_FAILED),
    4: ("cluster", CLUSTER_AUTHORIZATION_FAILED),  # broker
    8: ("cluster", CLUSTER_AUTHORIZATION_FAILED),  # broker logger
    16: ("cluster", CLUSTER_AUTHORIZATION_FAILED),  # client metrics
}


def _config_slot(checks: Checks, resource: dict, operation: str, refused: Callable[[int, str], dict]) -> Slot:
    resource_type, name = resource["resource_type"], resource["resource_name"]
    key = (resource_type, name)
    target = _CONFIG_RESOURCES.get(resource_type)
    if target is None:
        # Both config-altering handlers: "Unknown resource type N." without authorizing.
        return key, refused(UNSUPPORTED_VERSION, f"Unknown resource type {resource_type}.")
    kind, error = target
    decided_name = CLUSTER_NAME if kind == "cluster" else name
    return _decided(checks, key, (kind, decided_name, operation), lambda: refused(error, MESSAGES[error]))


def _config_key(entry: dict) -> Hashable:
    return entry["resource_type"], entry["resource_name"]


def _describe_configs(version: int, body: dict, checks: Checks) -> Outcome:
    """describe_configs on the topic, the group, or the cluster (broker, broker logger, client metrics).

    An unknown resource type fails the whole request with INVALID_REQUEST,
    as Kafka's ConfigHelper throws before describing anything.
    """
    resources = body["resources"]
    if any(resource["resource_type"] not in _CONFIG_RESOURCES for resource in resources):
        return checks.outcome(answer=response(DESCRIBE_CONFIGS, version, results=[
            response(DESCRIBE_CONFIGS, version, "results", error_code=INVALID_REQUEST,
                     error_message=MESSAGES[INVALID_REQUEST], resource_type=resource["resource_type"],
                     resource_name=resource["resource_name"])
            for resource in resources
        ]))

    def judge(resource: dict) -> Slot:
        return _config_slot(checks, resource, "describe_configs", lambda error, message: response(
            DESCRIBE_CONFIGS, version, "results", error_code=error, error_message=message,
            resource_type=resource["resource_type"], resource_name=resource["resource_name"]))

    slots, kept = _judge(resources, judge)
    return _reduce(checks, DESCRIBE_CONFIGS, version, body, "resources", "results", slots, kept, _config_key)


def _alter_configs(api_key: int) -> Rule:
    """alter_configs on the topic, the group or the cluster, for AlterConfigs and IncrementalAlterConfigs."""

    def rule(version: int, body: dict, checks: Checks) -> Outcome:
        def judge(resource: dict) -> Slot:
            return _config_slot(checks, resource, "alter_configs", lambda error, message: response(
                api_key, version, "responses", error_code=error, error_message=message,
                resource_type=resource["resource_type"], resource_name=resource["resource_name"]))

        slots, kept = _judge(body["resources"], judge)
        return _reduce(checks, api_key, version, body, "resources", "responses", slots, kept, _config_key)

    rule.__doc__ = _alter_configs.__doc__
    return rule


# --------------------------------------------------------------------------
# Cluster administration


def _describe_log_dirs(version: int, body: dict, checks: Checks) -> Outcome:
    """Cluster describe (Kafka's rule); the gateway also keeps only topics the identity may describe.

    Kafka shows every topic's replicas to a cluster describer; the gateway
    is stricter, so an identity never learns a topic name it may not describe
    from a listing. Named topics it may not describe are not asked for.
    """
    if not checks.require("cluster", CLUSTER_NAME, "describe"):
        return checks.outcome(answer=response(DESCRIBE_LOG_DIRS, version, error_code=CLUSTER_AUTHORIZATION_FAILED))
    topics = body["topics"]
    kept = None if topics is None else [t for t in topics if checks.require("topic", t["topic"], "describe")]

    def fix(upstream: dict) -> dict:
        for result in upstream["results"]:
            result["topics"] = [topic for topic in result["topics"] if _describable_topic(checks, topic["name"])]
        return upstream

    if kept is not None and len(kept) == len(topics):
        return checks.outcome()
    return checks.outcome(forward=None if kept is None else {**body, "topics": kept}, fix_response=fix)


def _cluster_wide(operation: str, refuse: Callable[[int, dict], dict]) -> Rule:
    """APIs Kafka authorizes on the cluster alone, whatever topics they name."""

    def rule(version: int, body: dict, checks: Checks) -> Outcome:
        if checks.require("cluster", CLUSTER_NAME, operation):
            return checks.outcome()
        return checks.outcome(answer=refuse(version, body))

    rule.__doc__ = f"Cluster {operation}; refused as the request's getErrorResponse(CLUSTER_AUTHORIZATION_FAILED)."
    return rule


def _elect_leaders_refused(version: int, body: dict) -> dict:
    error, message = CLUSTER_AUTHORIZATION_FAILED, MESSAGES[CLUSTER_AUTHORIZATION_FAILED]
    return response(ELECT_LEADERS, version, error_code=error, replica_election_results=[
        response(ELECT_LEADERS, version, "replica_election_results", topic=topic["topic"], partition_result=[
            response(ELECT_LEADERS, version, "replica_election_results.partition_result", partition_id=index,
                     error_code=error, error_message=message)
            for index in topic["partitions"]
        ])
        for topic in body["topic_partitions"] or []
    ])


def _alter_reassignments_refused(version: int, body: dict) -> dict:
    error, message = CLUSTER_AUTHORIZATION_FAILED, MESSAGES[CLUSTER_AUTHORIZATION_FAILED]
    return response(ALTER_PARTITION_REASSIGNMENTS, version, error_code=error, error_message=message, responses=[
        response(ALTER_PARTITION_REASSIGNMENTS, version, "responses", name=topic["name"], partitions=[
            response(ALTER_PARTITION_REASSIGNMENTS, version, "responses.partitions",
                     partition_index=partition["partition_index"], error_code=error, error_message=message)
            for partition in topic["partitions"]
        ])
        for topic in body["topics"]
    ])


def _list_reassignments_refused(version: int, body: dict) -> dict:
    error = CLUSTER_AUTHORIZATION_FAILED
    return response(LIST_PARTITION_REASSIGNMENTS, version, error_code=error, error_message=MESSAGES[error])


def _describe_cluster(version: int, body: dict, checks: Checks) -> Outcome:
    """Any signed-in identity (Kafka checks nothing); cluster operations, when asked, are the identity's."""
    if not body["include_cluster_authorized_operations"]:
        return checks.outcome()

    def fix(upstream: dict) -> dict:
        if upstream["error_code"] == 0:
            upstream["cluster_authorized_operations"] = (
                checks.operations("cluster", CLUSTER_NAME) if checks.cluster("describe") else 0)
        return upstream

    return checks.outcome(fix_response=fix)


RULES: dict[int, Rule] = {
    PRODUCE: _produce,
    FETCH: _fetch,
    LIST_OFFSETS: _list_offsets,
    METADATA: _metadata,
    OFFSET_COMMIT: _offset_commit,
    OFFSET_FETCH: _offset_fetch,
    FIND_COORDINATOR: _find_coordinator,
    JOIN_GROUP: _join_group,
    HEARTBEAT: _heartbeat,
    LEAVE_GROUP: _leave_group,
    SYNC_GROUP: _sync_group,
    DESCRIBE_GROUPS: _describe_groups,
    LIST_GROUPS: _list_groups,
    CREATE_TOPICS: _create_topics,
    DELETE_TOPICS: _delete_topics,
    DELETE_RECORDS: _delete_records,
    INIT_PRODUCER_ID: _init_producer_id,
    OFFSET_FOR_LEADER_EPOCH: _offset_for_leader_epoch,
    ADD_PARTITIONS_TO_TXN: _add_partitions_to_txn,
    ADD_OFFSETS_TO_TXN: _add_offsets_to_txn,
    END_TXN: _end_txn,
    TXN_OFFSET_COMMIT: _txn_offset_commit,
    DESCRIBE_CONFIGS: _describe_configs,
    ALTER_CONFIGS: _alter_configs(ALTER_CONFIGS),
    DESCRIBE_LOG_DIRS: _describe_log_dirs,
    CREATE_PARTITIONS: _create_partitions,
    DELETE_GROUPS: _delete_groups,
    ELECT_LEADERS: _cluster_wide("alter", _elect_leaders_refused),
    INCREMENTAL_ALTER_CONFIGS: _alter_configs(INCREMENTAL_ALTER_CONFIGS),
    ALTER_PARTITION_REASSIGNMENTS: _cluster_wide("alter", _alter_reassignments_refused),
    LIST_PARTITION_REASSIGNMENTS: _cluster_wide("describe", _list_reassignments_refused),
    OFFSET_DELETE: _offset_delete,
    DESCRIBE_CLUSTER: _describe_cluster,
    DESCRIBE_PRODUCERS: _describe_producers,
    DESCRIBE_TRANSACTIONS: _describe_transactions,
    LIST_TRANSACTIONS: _list_transactions,
    CONSUMER_GROUP_HEARTBEAT: _group_heartbeat(CONSUMER_GROUP_HEARTBEAT),
    CONSUMER_GROUP_DESCRIBE: _group_describe(CONSUMER_GROUP_DESCRIBE, _consumer_group_topics),
    SHARE_GROUP_HEARTBEAT: _group_heartbeat(SHARE_GROUP_HEARTBEAT),
    SHARE_GROUP_DESCRIBE: _group_describe(SHARE_GROUP_DESCRIBE, _share_group_topics),
    SHARE_FETCH: _share_fetch,
    SHARE_ACKNOWLEDGE: _share_acknowledge,
    DESCRIBE_SHARE_GROUP_OFFSETS: _describe_share_group_offsets,
    ALTER_SHARE_GROUP_OFFSETS: _alter_share_group_offsets,
    DELETE_SHARE_GROUP_OFFSETS: _delete_share_group_offsets,
}

# Fail closed at import: a forwarded API without a rule would be forwarded unchecked.
assert set(RULES) == FORWARDED, f"authorization rules missing for {sorted(FORWARDED - set(RULES))}"
