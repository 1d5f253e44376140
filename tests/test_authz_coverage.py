"""Generated from Kafka's message specs: every way a request names a resource is decided.

Walks the request schema of every forwarded API at every version the gateway
can forward, collects each field that names a topic, topic id, group or
transactional id, and for each builds a request with a sentinel in that field.
``authorize`` must then decide the sentinel (topic ids: resolve it through the
gateway's TopicIds, then decide the name) and must never forward it refused.
A new Kafka version that adds such a field fails here until a rule covers it
or the allowlist below says, with a reason, why it needs none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest

from gateway.authz import authorize
from gateway.handlers.apiversions import spec_versions
from gateway.protocol import codec, schema
from gateway.protocol.apis import (
    ADD_PARTITIONS_TO_TXN,
    ALTER_CONFIGS,
    ALTER_PARTITION_REASSIGNMENTS,
    CONSUMER_GROUP_HEARTBEAT,
    DESCRIBE_CLUSTER,
    DESCRIBE_CONFIGS,
    ELECT_LEADERS,
    FETCH,
    FIND_COORDINATOR,
    FORWARDED,
    HEARTBEAT,
    INCREMENTAL_ALTER_CONFIGS,
    JOIN_GROUP,
    LEAVE_GROUP,
    LIST_GROUPS,
    LIST_PARTITION_REASSIGNMENTS,
    LIST_TRANSACTIONS,
    OFFSET_COMMIT,
    SHARE_FETCH,
    SYNC_GROUP,
    TXN_OFFSET_COMMIT,
)

# The specs' entityType for the resources the policy decides.
ENTITY_TYPES = {"topicName": "topic", "groupId": "group", "transactionalId": "transactional_id"}

# Where a spec has no entityType, a string field whose name says so.
NAME_SAYS = re.compile(r"(?:^|_)(topic|group|transactional)(?:_|$)")
NAME_KINDS = {"topic": "topic", "group": "group", "transactional": "transactional_id"}

# Fields whose resource depends on a sibling type field (no entityType, no telling
# name): one variant per resource kind, with the sibling set.
SIBLING_TYPED = {
    (FIND_COORDINATOR, "key"): [({"key_type": 0}, "group"), ({"key_type": 1}, "transactional_id")],
    (FIND_COORDINATOR, "coordinator_keys"): [({"key_type": 0}, "group"), ({"key_type": 1}, "transactional_id")],
    (DESCRIBE_CONFIGS, "resources.resource_name"): [({"resource_type": 2}, "topic"), ({"resource_type": 32}, "group")],
    (ALTER_CONFIGS, "resources.resource_name"): [({"resource_type": 2}, "topic"), ({"resource_type": 32}, "group")],
    (INCREMENTAL_ALTER_CONFIGS, "resources.resource_name"): [
        ({"resource_type": 2}, "topic"), ({"resource_type": 32}, "group")],
}

NO_DECISION = "no decision"  # the field never reaches the broker as a resource to act on
NEVER_FORWARDED = "never forwarded"  # the whole request is refused whatever the field says
CLUSTER_GRANT = "cluster grant"  # Kafka authorizes these on the cluster alone

# Fields that need no per-resource decision, each with the reason.
ALLOWLIST = {
    (FETCH, "forgotten_topics_data.topic"): (
        NO_DECISION, "forgotten topics only edit a fetch session; the gateway forces session-less fetches, "
        "where the broker ignores them, so they read nothing"),
    (FETCH, "forgotten_topics_data.topic_id"): (NO_DECISION, "as forgotten_topics_data.topic"),
    (ADD_PARTITIONS_TO_TXN, "transactions.transactional_id"): (
        NEVER_FORWARDED, "v4+ is broker-to-broker: refused whole with CLUSTER_AUTHORIZATION_FAILED as in Kafka"),
    (ADD_PARTITIONS_TO_TXN, "transactions.topics.name"): (NEVER_FORWARDED, "as transactions.transactional_id"),
    (ELECT_LEADERS, "topic_partitions.topic"): (CLUSTER_GRANT, "Kafka checks cluster alter only"),
    (ALTER_PARTITION_REASSIGNMENTS, "topics.name"): (CLUSTER_GRANT, "Kafka checks cluster alter only"),
    (LIST_PARTITION_REASSIGNMENTS, "topics.name"): (CLUSTER_GRANT, "Kafka checks cluster describe only"),
    (CONSUMER_GROUP_HEARTBEAT, "topic_partitions.topic_id"): (
        NO_DECISION, "owned partitions echo the coordinator's own assignment back; nothing is read or written"),
    (CONSUMER_GROUP_HEARTBEAT, "subscribed_topic_regex"): (
        NO_DECISION, "a pattern, not a name: the assignment it yields is filtered by topic describe instead"),
    (LIST_TRANSACTIONS, "transactional_id_pattern"): (
        NO_DECISION, "a pattern, not an id: the listing is filtered by transactional id describe instead"),
    (SHARE_FETCH, "forgotten_topics_data.topic_id"): (
        NO_DECISION, "forgetting only takes partitions out of a share session; nothing is read"),
    (OFFSET_COMMIT, "group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
    (TXN_OFFSET_COMMIT, "group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
    (JOIN_GROUP, "group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
    (HEARTBEAT, "group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
    (SYNC_GROUP, "group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
    (LEAVE_GROUP, "members.group_instance_id"): (NO_DECISION, "a static member's id inside the decided group"),
}


@dataclass(frozen=True)
class EntityField:
    api_key: int
    version: int
    path: str
    kind: str  # "topic", "group", "transactional_id", or "topic_id"
    siblings: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f" {name}={value}" for name, value in self.siblings)
        return f"{schema.REQUESTS[self.api_key].name} v{self.version} {self.path} -> {self.kind}{extra}"


def _sibling_fits(fields: tuple, version: int, name: str, value: int) -> bool:
    """A version without the sibling field (FindCoordinator v0's key type) means its default."""
    sibling = next(field for field in fields if field.snake_name == name)
    return sibling.present(version) or sibling.default == value


def _walk(api_key: int, version: int, fields: tuple, prefix: str):
    for field in fields:
        if not field.present(version):
            continue
        path = prefix + field.snake_name
        if field.is_struct:
            yield from _walk(api_key, version, field.fields, path + ".")
        elif field.element_type == "uuid" and field.name == "TopicId":
            yield EntityField(api_key, version, path, "topic_id")
        elif field.element_type == "string":
            if field.entity_type in ENTITY_TYPES:
                yield EntityField(api_key, version, path, ENTITY_TYPES[field.entity_type])
            elif (api_key, path) in SIBLING_TYPED:
                for siblings, kind in SIBLING_TYPED[(api_key, path)]:
                    if all(_sibling_fits(fields, version, name, value) for name, value in siblings.items()):
                        yield EntityField(api_key, version, path, kind, tuple(siblings.items()))
            elif field.entity_type is None and (match := NAME_SAYS.search(field.snake_name)):
                yield EntityField(api_key, version, path, NAME_KINDS[match.group(1)])


def entity_fields() -> list[EntityField]:
    found = []
    for api_key in sorted(FORWARDED):
        low, high = spec_versions(api_key)
        for version in range(low, high + 1):
            found.extend(_walk(api_key, version, schema.REQUESTS[api_key].fields, ""))
    return found


FIELDS = entity_fields()


def _sentinel(field: EntityField) -> tuple[str, bytes]:
    name = f"sentinel-{field.api_key}-{field.version}-{field.path}"
    return name, hashlib.sha256(name.encode()).digest()[:16]


def _request(field: EntityField, value: object) -> dict:
    """A real decoded request: the path to the field holds one entry, the rest takes the specs' defaults."""
    spec_fields = schema.REQUESTS[field.api_key].fields
    parts = field.path.split(".")

    def build(fields: tuple, index: int) -> dict:
        spec = next(f for f in fields if f.snake_name == parts[index])
        if index == len(parts) - 1:
            struct = {spec.snake_name: [value] if spec.is_array else value, **dict(field.siblings)}
        else:
            child = build(spec.fields, index + 1)
            struct = {spec.snake_name: [child] if spec.is_array else child}
        return struct

    body = build(spec_fields, 0)
    return codec.decode_request(field.api_key, field.version,
                                codec.encode_request(field.api_key, field.version, body))


def _contains(value: object, needle: object) -> bool:
    if isinstance(value, dict):
        return any(_contains(item, needle) for item in value.values())
    if isinstance(value, list):
        return any(_contains(item, needle) for item in value)
    return value == needle


class Recorder:
    """Refuses the sentinel (and the cluster, unless granted); records every decision and id lookup."""

    def __init__(self, sentinel: str, sentinel_id: bytes, cluster: bool):
        self.sentinel, self.sentinel_id, self.cluster = sentinel, sentinel_id, cluster
        self.decisions: list[tuple[str, str, str]] = []
        self.lookups: list[bytes] = []

    def decide(self, resource_type: str, name: str, operation: str) -> bool:
        self.decisions.append((resource_type, name, operation))
        if resource_type == "cluster":
            return self.cluster
        return name != self.sentinel

    def name_of(self, topic_id: bytes) -> str | None:
        self.lookups.append(topic_id)
        return self.sentinel if topic_id == self.sentinel_id else None

    def id_of(self, name: str) -> bytes | None:
        return self.sentinel_id if name == self.sentinel else None


def _run(field: EntityField, cluster: bool) -> tuple[Recorder, object, dict]:
    name, topic_id = _sentinel(field)
    recorder = Recorder(name, topic_id, cluster)
    body = _request(field, topic_id if field.kind == "topic_id" else name)
    outcome = authorize(field.api_key, field.version, body, recorder.decide, recorder)
    if outcome.close is not None or outcome.answer is not None:
        forwarded = outcome.forward
    else:
        forwarded = outcome.forward if outcome.forward is not None else body
    return recorder, forwarded, body


def _decided(recorder: Recorder, field: EntityField) -> bool:
    resource_type = "topic" if field.kind == "topic_id" else field.kind
    if field.kind == "topic_id" and recorder.sentinel_id not in recorder.lookups:
        return False
    return any(kind == resource_type and name == recorder.sentinel for kind, name, _ in recorder.decisions)


def test_the_walk_finds_the_known_ways_in():
    print("\nentity fields of forwarded requests:")
    for field in FIELDS:
        reason = ALLOWLIST.get((field.api_key, field.path))
        print(f"  {field}" + (f"  [allowlisted: {reason[0]}]" if reason else ""))
    paths = {(field.api_key, field.path) for field in FIELDS}
    # Every allowlist entry names a field the specs still have: no stale excuses.
    assert set(ALLOWLIST) <= paths
    # The only forwarded APIs naming no resource: their answers are filtered or carry none.
    assert FORWARDED - {api_key for api_key, _ in paths} == {LIST_GROUPS, DESCRIBE_CLUSTER}


@pytest.mark.parametrize("field", FIELDS, ids=str)
def test_every_entity_field_is_decided(field: EntityField):
    value_of = _sentinel(field)[1] if field.kind == "topic_id" else _sentinel(field)[0]
    policy, reason = ALLOWLIST.get((field.api_key, field.path), (None, None))
    runs = {cluster: _run(field, cluster) for cluster in (False, True)}

    if policy == NO_DECISION:
        return
    if policy == NEVER_FORWARDED:
        for _, forwarded, _ in runs.values():
            assert forwarded is None or not _contains(forwarded, value_of), reason
        return
    if policy == CLUSTER_GRANT:
        recorder, forwarded, _ = runs[False]
        assert any(kind == "cluster" for kind, _, _ in recorder.decisions), reason
        assert forwarded is None or not _contains(forwarded, value_of), reason
        return

    # Decided as the right resource (with or without a cluster grant: some
    # cluster grants cover every topic, others are a gate before the topics).
    assert any(_decided(recorder, field) for recorder, _, _ in runs.values()), (
        f"{field}: sentinel never decided; decisions {runs[False][0].decisions} / {runs[True][0].decisions}")
    # Refused without a cluster grant, it never reaches the broker.
    _, forwarded, _ = runs[False]
    assert forwarded is None or not _contains(forwarded, value_of), f"{field}: refused sentinel forwarded"
