"""Read-ahead for a consumer catching up on masked topics: the gateway fetches and masks the client's next
response while the client is still reading this one.

Why: a consumer like Java's sends its next Fetch to a broker only once it has drained the last one. Through
the gateway, each masked response is received, masked and sent in turn while the client waits, so a masked
read ran at about 60 % of a direct one while both cores had room to spare (measured in bench/e2e_masking.py).
Sending responses on as they arrive (cut-through) was measured too: it saved too little of that wait and cost
more CPU than it saved, on top of forcing masked records into the broker's lengths.

How, per client connection:

- After a masked Fetch response that shows a backlog (a partition returned at least half of what it may), with
  no other request in flight, the gateway sends the broker the Fetch the client is most likely to send next
  (``predict``): the same request, each partition's fetch offset (and last fetched epoch) moved past the
  batches just delivered, and max_wait_ms 0 so that the broker answers at once instead of holding a long poll.
- Its response is masked as it arrives like any other, and kept, its masking counts held back.
- The client's next Fetch is answered with it only if the client asks exactly that (``same_fetch``: every field
  the broker's answer depends on; session fields, max wait and min bytes aside), the kept response holds
  records, and the policy view and access grants it was authorized and masked under still hold. Then its counts
  are committed. Otherwise it is dropped and the client's Fetch goes to the broker as usual: a wrong guess
  costs the broker one read, never the client a record.
- A client Fetch that arrives while the read-ahead is still in flight waits for it (the broker answers it at
  once), then is decided as above.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from gateway.handlers.masking import (
    FLEXIBLE_FROM,
    PARTITION,
    RECORDS,
    RESPONSE_LOGS,
    TOPIC,
    TOPIC_ID,
    FetchMasking,
    records_extent,
    string_extent,
)
from gateway.protocol.apis import FETCH
from gateway.protocol.walkplan import plan_for

KEEP_S = 5.0  # how long a read-ahead response waits for the client's Fetch before it is dropped
_BATCH_HEAD = struct.Struct(">qii")  # base offset, length of the rest, partition leader epoch
_LAST_OFFSET_DELTA_AT = 23
_MAGIC_AT = 16
_LOG_OVERHEAD = 12
_BATCH_HEADER_BYTES = 61
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_LAST_FETCHED_EPOCH_FROM = 12
# Left out of the comparison: the session (the gateway makes every Fetch session-less anyway), and how long and
# for how much the broker may wait, since a kept response that holds records answers any of those.
_NOT_COMPARED = frozenset(("session_id", "session_epoch", "max_wait_ms", "min_bytes"))


class ReadAhead:
    """One read-ahead Fetch of a connection: sent, then (``arrived``) its response masked and kept as chunks."""

    # __weakref__: the timer that drops an unasked read-ahead holds it weakly, so that the timers pending for a
    # fast reader's Fetches (one each) never hold their buffers (the client's whole fetch size, twice, each).
    __slots__ = ("correlation_id", "version", "body", "masking", "delivery", "client_id", "arrived", "chunks",
                 "read", "__weakref__")

    def __init__(self, correlation_id: int, version: int, body: dict[str, Any], masking: FetchMasking,
                 delivery: Any, client_id: str | None, arrived: Any) -> None:
        self.correlation_id = correlation_id
        self.version = version
        self.body = body  # the Fetch sent, as the client is expected to send it next
        self.masking = masking
        self.delivery = delivery  # what the client's own Fetch was checked against: grants, policy view, topics
        self.client_id = client_id  # the client's, so that the broker's quotas and logs see the client
        self.arrived = arrived  # an asyncio future, done once the response is kept (or the connection closed)
        self.chunks: list[Any] | None = None  # the masked response, size prefix first, when arrived and usable
        self.read = Read({}, False, False)  # what the response holds, which the next read-ahead builds on

    def keep(self, chunks: list[Any] | None, frame: Any, loop: Any,
             on_expiry: Callable[[weakref.ref[ReadAhead]], None]) -> None:
        """The masked response as spliced (None: unusable, e.g. it carries leader hints); unless a Fetch of the
        client takes it first, ``on_expiry`` is called with a weak reference to it after KEEP_S."""
        self.chunks = chunks
        self.read = read(frame, self.version)
        loop.call_later(KEEP_S, on_expiry, weakref.ref(self))
        if not self.arrived.done():
            self.arrived.set_result(None)

    def answer(self, correlation_id: int) -> list[Any]:
        """The kept response as the answer to the client's Fetch ``correlation_id``; its masking counts count."""
        assert self.chunks is not None
        self.masking.commit_counts()
        if len(self.chunks) == 1:  # nothing was masked: the broker's frame itself
            frame = memoryview(self.chunks[0])
            return [frame[:4], _INT32.pack(correlation_id), frame[8:]]
        size, first, *rest = self.chunks
        # The first chunk after the size prefix starts with the correlation id (splice keeps the frame's order).
        return [size, _INT32.pack(correlation_id), memoryview(first)[4:], *rest]


def same_fetch(asked: dict[str, Any], expected: dict[str, Any], diverged: bool) -> bool:
    """Whether the client's Fetch asks what the read-ahead asked, as far as the broker's answer goes, in
    whatever order it lists its partitions: clients rotate them from one Fetch to the next (Java's and
    librdkafka's move those that just returned records to the end), so that a full response does not always
    favour the same ones. The read-ahead's answer keeps its own order, which every client reads by topic and
    partition.

    A partition's last fetched epoch only asks the broker to check that the log has not diverged from what the
    client read: a client asking no check (-1) where the read-ahead asked one gets the same answer, unless the
    check found a divergence (``diverged``: some partition of the answer carries tagged fields)."""
    keys = (asked.keys() | expected.keys()) - _NOT_COMPARED - {"topics"}
    if not all(asked.get(key) == expected.get(key) for key in keys):
        return False
    partitions, predicted = _by_partition(asked["topics"]), _by_partition(expected["topics"])
    if partitions is None or predicted is None or partitions.keys() != predicted.keys():
        return False
    for key, partition in partitions.items():
        ahead = predicted[key]
        if partition == ahead:
            continue
        # Only the epoch may differ: the client asking no check where the read-ahead's check found nothing.
        unchecked = partition.get("last_fetched_epoch") == -1 and not diverged
        if not unchecked or {**partition, "last_fetched_epoch": ahead.get("last_fetched_epoch")} != ahead:
            return False
    return True


def _by_partition(topics: list[dict[str, Any]]) -> dict[tuple[Any, int], dict[str, Any]] | None:
    """{(topic name or id, partition): its fields}, or None when a partition is listed twice (never the same)."""
    out = {}
    for topic in topics:
        key = topic.get("topic_id", topic.get("topic"))
        for partition in topic["partitions"]:
            out[key, partition["partition"]] = partition
    return out if len(out) == sum(len(topic["partitions"]) for topic in topics) else None


def predict(body: dict[str, Any], version: int, response: Read) -> dict[str, Any] | None:
    """The Fetch that follows ``body`` once the client has read its ``response``, with max_wait_ms 0; None
    without a backlog to read ahead of (no partition returned at least half its partition_max_bytes), or when
    the response cannot tell where to go on (a partition error, a batch that is not v2)."""
    if not response.predictable:
        return None
    positions = response.positions
    by_id = version >= 13
    topics, backlog = [], False
    for topic in body["topics"]:
        key = topic["topic_id"] if by_id else topic["topic"]
        partitions = []
        for partition in topic["partitions"]:
            moved = dict(partition)
            position = positions.get((key, partition["partition"]))
            if position is not None:
                next_offset, epoch, size = position
                moved["fetch_offset"] = next_offset
                if version >= _LAST_FETCHED_EPOCH_FROM:
                    # The epoch of the last batch delivered, which a client sends when it checks for a diverged
                    # log (KIP-320). Some never do (Java's sends -1), some only for the partitions that just
                    # returned records (kafka-python): asking with it, the read-ahead answers either
                    # (same_fetch).
                    moved["last_fetched_epoch"] = epoch
                backlog = backlog or size * 2 >= partition["partition_max_bytes"]
            partitions.append(moved)
        topics.append({**topic, "partitions": partitions})
    if not backlog:
        return None
    return {**body, "topics": topics, "max_wait_ms": 0}


class Read(NamedTuple):
    """What a Fetch response holds, as far as reading ahead of it goes (``read``)."""

    # (topic key, partition) -> (offset after its last whole batch, that batch's leader epoch, records size), for
    # each partition that returned a whole batch; masking keeps every batch's offsets and epoch.
    positions: dict[tuple[Any, int], tuple[int, int, int]]
    predictable: bool  # no partition has an error or a batch that is not v2
    has_records: bool  # some partition holds records (a response without any answers no long poll)
    # Some partition carries tagged fields: a diverging epoch (KIP-320), a leader hint or a snapshot id.
    diverged: bool = False


def read(frame: Any, version: int) -> Read:
    """One walk of a Fetch response frame, as the broker sent it."""
    flexible = version >= FLEXIBLE_FROM
    plan = plan_for("response", FETCH, version, (), RESPONSE_LOGS)
    _, logged = plan.walk_logged(frame)
    data = memoryview(frame)
    positions = {}
    predictable, has_records, diverged = True, False, False
    key: Any = None
    partition = 0
    for code, at in logged:
        if code == TOPIC_ID:
            key = bytes(data[at:at + 16])
        elif code == TOPIC:
            size, start = string_extent(data, at, flexible)
            key = bytes(data[start:start + size]).decode("utf-8", "replace")
        elif code == PARTITION:
            partition = _INT32.unpack_from(data, at)[0]
            predictable = predictable and _INT16.unpack_from(data, at + 4)[0] == 0
        elif code == RECORDS:
            size, start = records_extent(data, at, flexible)
            has_records = has_records or size > 0
            # The partition's tagged fields follow its records: a count of 0 is one zero byte.
            diverged = diverged or (flexible and data[start + max(size, 0)] != 0)
            position = _after_last_batch(data[start:start + max(size, 0)])
            if position is False:
                predictable = False
            elif position is not None:
                positions[key, partition] = (*position, size)
    return Read(positions, predictable, has_records, diverged)


def _after_last_batch(records: memoryview) -> tuple[int, int] | None | bool:
    """(offset after the last whole batch, its partition leader epoch), None without a whole batch, False when a
    batch is not v2 (legacy message sets are not read ahead)."""
    at, last = 0, None
    while at + _BATCH_HEADER_BYTES <= len(records):
        base_offset, length, epoch = _BATCH_HEAD.unpack_from(records, at)
        end = at + _LOG_OVERHEAD + length
        if length < _BATCH_HEADER_BYTES - _LOG_OVERHEAD or end > len(records):
            break  # a batch cut off by the fetch size, as brokers send
        if records[at + _MAGIC_AT] != 2:
            return False
        last = (base_offset + _INT32.unpack_from(records, at + _LAST_OFFSET_DELTA_AT)[0] + 1, epoch)
        at = end
    return last



