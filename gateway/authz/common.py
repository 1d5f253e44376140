"""What every per-API rule shares: the interface types, memoised decisions, blank structs and merges.

A rule (see :mod:`gateway.authz.requests`) decides the parts of one request
through :class:`Checks`, builds the parts Kafka would refuse with
:func:`blank` (every field of the version at its spec default, so an answer
is in the layout of the version the client used), and puts them back into the
upstream response in request order with :func:`merge`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from gateway.protocol import schema
from gateway.protocol.errors import (
    CLUSTER_AUTHORIZATION_FAILED,
    GROUP_AUTHORIZATION_FAILED,
    INVALID_REQUEST,
    TOPIC_AUTHORIZATION_FAILED,
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    UNKNOWN_TOPIC_ID,
    UNKNOWN_TOPIC_OR_PARTITION,
)

Decide = Callable[[str, str, str], bool]

CLUSTER_NAME = "kafka-cluster"
ZERO_UUID = bytes(16)

# An Errors.java code only the authorization layer answers with.
OPERATION_NOT_ATTEMPTED = 55

# Errors.java's messages, for the error responses Kafka fills them in.
MESSAGES = {
    UNKNOWN_TOPIC_OR_PARTITION: "This server does not host this topic-partition.",
    TOPIC_AUTHORIZATION_FAILED: "Topic authorization failed.",
    GROUP_AUTHORIZATION_FAILED: "Group authorization failed.",
    CLUSTER_AUTHORIZATION_FAILED: "Cluster authorization failed.",
    INVALID_REQUEST: (
        "This most likely occurs because of a request being malformed by the client library or the message "
        "was sent to an incompatible broker. See the broker logs for more details."
    ),
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "Transactional Id authorization failed.",
    UNKNOWN_TOPIC_ID: "This server does not host this topic ID.",
}

# Kafka's Topic.isInternal: topics Kafka itself writes, never authorized for client writes
# in AddPartitionsToTxn and reported as internal in Metadata.
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state", "__share_group_state"})

# AclOperation codes, for the authorized-operations bit fields (KIP-430) Kafka
# computes per principal: the broker would compute them for the gateway's own.
_OPERATION_CODES = {
    "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
    "describe_configs": 10, "alter_configs": 11, "idempotent_write": 12,
}
# AclEntry.supportedOperations, less CLUSTER_ACTION (broker-internal; never granted
# to a gateway identity) and TWO_PHASE_COMMIT (not in the policy's vocabulary).
_SUPPORTED_OPERATIONS = {
    "topic": ("read", "write", "create", "describe", "delete", "alter", "describe_configs", "alter_configs"),
    "group": ("read", "describe", "delete", "describe_configs", "alter_configs"),
    "cluster": ("create", "describe_configs", "alter_configs", "idempotent_write", "alter", "describe"),
}


class TopicIds(Protocol):
    """The gateway's own view of topic ids (from its metadata), never the client's word."""

    def name_of(self, topic_id: bytes) -> str | None: ...

    def id_of(self, name: str) -> bytes | None: ...


@dataclass
class Outcome:
    """What to do with one request.

    - Nothing set: forward the original frame untouched.
    - ``forward``: encode and forward this body instead (a reduced request).
    - ``answer``: send this response body to the client; forward nothing.
    - ``fix_response``: apply to the decoded upstream response before the
      client sees it (puts refused parts back in request order, filters "all"
      queries, recomputes authorized operations for the identity). It may
      call ``decide`` again (filters decide on what the broker returned).
    - ``close``: close the client connection with this reason. When set, the
      original frame is never forwarded: ``forward`` (if not None) is sent
      upstream first, then the connection closes. Kafka does this for Produce
      with acks=0 when any partition fails, as there is no response to carry
      the error.
    - ``denied``: (resource_type, name, operation) refused, in decision order,
      for audit and approvals.
    """

    forward: dict | None
    answer: dict | None
    fix_response: Callable[[dict], dict] | None
    denied: list[tuple[str, str, str]]
    close: str | None = None


class Checks:
    """Decisions for one request, each asked of the policy at most once (as Kafka's filterByAuthorized)."""

    def __init__(self, decide: Decide, topics: TopicIds):
        self._decide = decide
        self._topics = topics
        self._decisions: dict[tuple[str, str, str], bool] = {}
        self._names: dict[bytes, str | None] = {}
        self.denied: list[tuple[str, str, str]] = []

    def allowed(self, resource_type: str, name: str, operation: str) -> bool:
        """A probe: its refusal alone is not reported (cluster-wide grants, filters, authorized operations)."""
        key = (resource_type, name, operation)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = self._decide(resource_type, name, operation) is True
        return decision

    def require(self, resource_type: str, name: str, operation: str) -> bool:
        """A decision the client sees: a refusal is recorded in ``denied``."""
        if self.allowed(resource_type, name, operation):
            return True
        self.refuse(resource_type, name, operation)
        return False

    def refuse(self, resource_type: str, name: str, operation: str) -> None:
        """Record a refusal made without asking the policy (broker-only operations, malformed parts)."""
        entry = (resource_type, name, operation)
        if entry not in self.denied:
            self.denied.append(entry)

    def cluster(self, operation: str) -> bool:
        return self.allowed("cluster", CLUSTER_NAME, operation)

    def topic_name(self, topic_id: bytes) -> str | None:
        """The gateway's name for a topic id; None for the zero id and ids it does not know. Only names found
        are remembered: a response fix-up that met an unknown id runs again once the worker has looked."""
        if topic_id == ZERO_UUID:
            return None
        name = self._names.get(topic_id)
        if name is None:
            name = self._topics.name_of(topic_id)
            if name is not None:
                self._names[topic_id] = name
        return name

    def topic_exists(self, name: str) -> bool:
        return self._topics.id_of(name) is not None

    def operations(self, resource_type: str, name: str) -> int:
        """Kafka's authorized-operations bit field of this identity on a resource."""
        field = 0
        for operation in _SUPPORTED_OPERATIONS[resource_type]:
            if self.allowed(resource_type, name, operation):
                field |= 1 << _OPERATION_CODES[operation]
        return field

    def outcome(
        self,
        forward: dict | None = None,
        answer: dict | None = None,
        fix_response: Callable[[dict], dict] | None = None,
        close: str | None = None,
    ) -> Outcome:
        return Outcome(forward, answer, fix_response, self.denied, close)


# --------------------------------------------------------------------------
# Blank structs in a version's layout


@cache
def _struct_fields(kind: str, api_key: int, path: str) -> tuple[schema.FieldSpec, ...]:
    table = schema.REQUESTS if kind == "request" else schema.RESPONSES
    fields = table[api_key].fields
    for part in filter(None, path.split(".")):
        fields = next(field for field in fields if field.snake_name == part).fields
    return fields


def _defaults(fields: tuple[schema.FieldSpec, ...], version: int) -> dict:
    """Every field of the version at its default, as the codec decodes a struct."""
    struct = {}
    for field in fields:
        if not field.present(version):
            continue
        if field.default is None:
            struct[field.snake_name] = None
        elif field.is_array:
            struct[field.snake_name] = []
        elif field.is_struct:
            struct[field.snake_name] = _defaults(field.fields, version)
        else:
            struct[field.snake_name] = field.default
    return struct


def blank(kind: str, api_key: int, version: int, path: str = "", **values: Any) -> dict:
    """The struct at ``path`` (dotted snake_case, "" for the body) with ``values`` set.

    Values of fields the version does not have are dropped, so one call
    serves every version; a name no version has is a bug and raises.
    """
    fields = _struct_fields(kind, api_key, path)
    struct = _defaults(fields, version)
    for name, value in values.items():
        if name in struct:
            struct[name] = value
        elif not any(field.snake_name == name for field in fields):
            raise KeyError(f"{kind} {api_key} {path or 'body'} has no field {name!r}")
    return struct


def response(api_key: int, version: int, path: str = "", **values: Any) -> dict:
    return blank("response", api_key, version, path, **values)


# --------------------------------------------------------------------------
# Putting refused parts back


Slot = tuple[Hashable, dict | None]


def merge(
    slots: Iterable[Slot],
    upstream: list[dict],
    key_of: Callable[[dict], Hashable],
    keep_unasked: bool = True,
) -> list[dict]:
    """Response entries in request order.

    Each slot is (key, refused entry) for a part the gateway answered, or
    (key, None) for a part it forwarded: there go the upstream entries with
    that key. Upstream entries no slot asked for (a broker's own additions,
    such as duplicate-name errors) follow at the end, or are dropped with
    ``keep_unasked=False``.
    """
    by_key: dict[Hashable, list[int]] = {}
    for index, entry in enumerate(upstream):
        by_key.setdefault(key_of(entry), []).append(index)
    taken = [False] * len(upstream)
    merged = []
    for key, refused in slots:
        if refused is not None:
            merged.append(refused)
            continue
        for index in by_key.get(key, ()):
            if not taken[index]:
                taken[index] = True
                merged.append(upstream[index])
    if keep_unasked:
        merged.extend(entry for index, entry in enumerate(upstream) if not taken[index])
    return merged


def has_transactional_batch(records: Any) -> bool:
    """Whether any record batch (magic 2) has the transactional attribute bit set.

    Reads only batch headers: baseOffset (8), batchLength (4), leader epoch (4),
    magic (1), crc (4), attributes (2, transactional = 0x10). Kafka itself looks
    at the first batch of each partition; looking at all of them cannot miss one.
    """
    if not records:
        return False
    view = memoryview(records)
    pos = 0
    while pos + 23 <= len(view):
        length = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
        if view[pos + 16] >= 2 and view[pos + 22] & 0x10:
            return True
        if length <= 0:
            break
        pos += 12 + length
    return False
