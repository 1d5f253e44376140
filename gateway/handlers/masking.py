"""Inline masking on the Fetch and ShareFetch paths: records of topics whose policy names masking rules are
rewritten before the client sees them.

Which topics are masked is decided per request from the principal's policy view (the allow rules'
``masking:`` names); the masking itself runs in the Cython kernel (``_fastpath.record_batch`` and
``_fastpath.mask``). A partition whose records cannot be parsed or masked is emptied, answered with
CORRUPT_MESSAGE and the event logged (rate-limited): its records are never passed through. Topics
without masking rules are not touched.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from functools import partial
from typing import Any

from _fastpath import WalkError
from _fastpath.mask import Masker
from _fastpath.record_batch import UnmaskableRecords, batch_cuts, mask_records
from gateway.policy.engine import Engine, PrincipalView
from gateway.policy.model import MaskingRule
from gateway.protocol.apis import FETCH, SHARE_FETCH
from gateway.protocol.errors import CORRUPT_MESSAGE
from gateway.protocol.walkplan import plan_for

log = logging.getLogger("streamward.masking")

# A client stuck on an unmaskable partition refetches it in a loop: one warning per partition per this long.
WARN_EVERY_S = 10.0
WARNED_LIMIT = 4096


class MaskerCache:
    """One compiled Masker per set of masking rule names, per policy generation (rules can change)."""

    def __init__(self, hmac_key: bytes, pool: Executor | None = None) -> None:
        self.hmac_key = hmac_key
        self.pool = pool  # threads that mask compressed partitions side by side (limits.mask_threads), or None
        self._engine: Engine | None = None
        self._maskers: dict[tuple[str, ...], Masker] = {}
        self.counts: dict[str, int] = {}  # fields masked per "topic/rule", for metrics and audit
        self.emptied: dict[tuple[str, int], float] = {}  # (topic, partition) -> when last warned about
        self.emptied_total = 0

    def warn_emptied(self, peer: str, topic: str, partition: int, reason: str) -> None:
        self.emptied_total += 1
        now = time.monotonic()
        key = (topic, partition)
        if now - self.emptied.get(key, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        if len(self.emptied) >= WARNED_LIMIT:
            self.emptied.clear()
        self.emptied[key] = now
        log.warning("%s: emptied %s[%d]: records could not be masked (%s); answered CORRUPT_MESSAGE "
                    "(%d emptied fetches so far in this worker)", peer, topic, partition, reason, self.emptied_total)

    def masker(self, engine: Engine, names: tuple[str, ...]) -> Masker:
        if engine is not self._engine:
            self._engine, self._maskers = engine, {}
        masker = self._maskers.get(names)
        if masker is None:
            rules: list[MaskingRule] = [engine.masking[name] for name in names]
            masker = Masker([kernel for rule in rules for kernel in rule.kernel_rules()], self.hmac_key)
            self._maskers[names] = masker
        return masker

    def count(self, topic: str, counts: dict[str, int]) -> None:
        for rule, n in counts.items():
            key = f"{topic}/{rule}"
            self.counts[key] = self.counts.get(key, 0) + n


def fetch_masking(body: dict[str, Any], version: int, view: PrincipalView, engine: Engine, cache: MaskerCache,
                  name_of: Callable[[bytes], str | None], max_output: int, peer: str,
                  hold_counts: bool = False) -> FetchMasking | None:
    """How to mask the response to this Fetch, or None when none of its topics is masked."""
    maskers: dict[Any, tuple[str, Masker]] = {}
    for topic in body["topics"]:
        key = topic["topic_id"] if version >= 13 else topic["topic"]
        name = name_of(key) if version >= 13 else key
        if name is None:
            continue
        names = view.decide("topic", name, "read").masking
        if names:
            maskers[key] = (name, cache.masker(engine, tuple(names)))
    if not maskers:
        return None
    return FetchMasking(maskers, version, cache, max_output, peer, hold_counts=hold_counts)


def share_fetch_masking(topic_ids: frozenset[bytes], version: int, view: PrincipalView, engine: Engine,
                        cache: MaskerCache, name_of: Callable[[bytes], str | None], max_output: int,
                        peer: str) -> FetchMasking:
    """How to mask the response to a ShareFetch whose share session may answer with ``topic_ids`` (the session's
    partitions, named in this request or not). Always a FetchMasking, even with nothing to mask: it also
    refuses records of any other topic, which the gateway never let this session fetch."""
    maskers: dict[Any, tuple[str, Masker]] = {}
    for topic_id in topic_ids:
        name = name_of(topic_id)
        if name is None:
            continue
        names = view.decide("topic", name, "read").masking
        if names:
            maskers[topic_id] = (name, cache.masker(engine, tuple(names)))
    return FetchMasking(maskers, version, cache, max_output, peer, SHARE_FETCH, topic_ids)


class UnexpectedTopic(WalkError):
    """A ShareFetch response carries records of a topic the connection's share session does not hold."""


# Where the splice looks in a Fetch or ShareFetch response: each topic's key (a name before Fetch v13, an id
# from Fetch v13 and in every ShareFetch), and each partition's index (its error code follows it in every
# version of both) and records.
RESPONSE_LOGS = ("responses.topic", "responses.topic_id", "responses.partitions.partition_index",
                 "responses.partitions.records")
TOPIC, TOPIC_ID, PARTITION, RECORDS = range(len(RESPONSE_LOGS))
FLEXIBLE_FROM = 12  # Fetch v12+: compact strings and records, tagged fields (ShareFetch: every version)
_TOPIC_IDS_FROM = 13
_NODE_ENDPOINTS_FROM = 16  # Fetch: a top-level tagged field; ShareFetch: a regular array in every version
_NODE_ENDPOINTS_TAG = 0
_SHARE_MARKS = ("node_endpoints",)
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_CORRUPT = _INT16.pack(CORRUPT_MESSAGE)
_UNCHANGED: Any = object()  # masked ahead, and nothing changed
POOL_MIN_BYTES = 64 * 1024  # smaller records are masked on the event loop's thread
# Records go to the pool in pieces of whole batches of at least this size (and the last at least half of it),
# masked side by side: a large partition is not left to one thread while the others idle. Smaller pieces cost more
# in hand-offs than they gain (measured end to end on 2 cores with 256 KiB pieces: 15 % more CPU per GB).
POOL_PIECE_BYTES = 1024 * 1024


class FetchMasking:
    """Masks the masked topics' records in a Fetch or ShareFetch response, in one of two ways.

    ``splice(frame)`` works on the frame as received: a walk compiled from the spec finds every partition's
    records, the kernel masks them in place of a memoryview, and the response goes out as the broker's bytes
    with only the masked records (and their length prefixes) replaced: no decode, no re-encode, no copy of
    what did not change. ``advance(frame, received)`` runs ahead while a large response is still arriving:
    partitions whose records are all in are masked then, so masking overlaps the broker's sending, and
    splice uses what was masked ahead. Called with the decoded response instead (the dict path), it masks
    that; the connection uses it when another fix-up (authorization, broker addresses) needs the decoded
    response.

    With ``expected`` (ShareFetch: the topic ids the connection's share session holds), records of any
    other topic raise UnexpectedTopic: the broker's session no longer matches what the gateway authorized.
    """

    __slots__ = ("maskers", "version", "cache", "max_output", "peer", "api_key", "expected", "by_id", "flexible",
                 "_marks", "_ahead", "_held_counts")

    def __init__(self, maskers: dict[Any, tuple[str, Masker]], version: int, cache: MaskerCache, max_output: int,
                 peer: str, api_key: int = FETCH, expected: frozenset[bytes] | None = None,
                 hold_counts: bool = False) -> None:
        self.maskers = maskers  # topic key (a name before Fetch v13, else an id) -> (topic name, masker)
        self.version = version
        self.cache = cache
        self.max_output = max_output
        self.peer = peer
        self.api_key = api_key
        self.expected = expected
        share = api_key == SHARE_FETCH
        self.by_id = share or version >= _TOPIC_IDS_FROM
        self.flexible = share or version >= FLEXIBLE_FROM
        self._marks = _SHARE_MARKS if share else ()
        self._ahead: dict[int, Any] = {}  # where a partition's records field starts -> what _mask gave for it
        # With hold_counts (a read-ahead, which the client may never get): counts wait for commit_counts.
        self._held_counts: list[tuple[str, dict[str, int]]] | None = [] if hold_counts else None

    def _outcome(self, name: str, partition: int, run: Callable[[], Any]) -> Any:
        """run() masks one partition's records: its MaskResult, counted, or None when they cannot be masked."""
        try:
            result = run()
        except UnmaskableRecords as exc:
            # Never passed through; and the client is told (its own error for bad data), rather than
            # seeing an empty partition and refetching it forever in silence.
            self.cache.warn_emptied(self.peer, name, partition, str(exc))
            return None
        if result.changed:
            if self._held_counts is not None:
                self._held_counts.append((name, result.counts))
            else:
                self.cache.count(name, result.counts)
        return result

    def commit_counts(self) -> None:
        """Count what was masked with hold_counts, now that the client gets it."""
        for name, counts in self._held_counts or ():
            self.cache.count(name, counts)
        self._held_counts = None

    def _mask(self, name: str, partition: int, records: Any, masker: Masker) -> Any:
        """The masked records, records itself when nothing changed, or None when they cannot be masked."""
        result = self._outcome(name, partition, partial(mask_records, records, masker, max_output=self.max_output))
        return None if result is None else result.data if result.changed else records

    def __call__(self, response: dict[str, Any]) -> dict[str, Any]:
        for topic in response["responses"]:
            key = topic["topic_id"] if self.by_id else topic["topic"]
            entry = self.maskers.get(key)
            if entry is None:
                if self.expected is not None and key not in self.expected and any(
                        partition["records"] for partition in topic["partitions"]):
                    raise UnexpectedTopic(f"records of topic id {key.hex()}, which the share session does not hold")
                continue
            name, masker = entry
            for partition in topic["partitions"]:
                if not partition["records"]:
                    continue
                masked = self._mask(name, partition["partition_index"], partition["records"], masker)
                if masked is None:
                    partition["records"] = b""
                    partition["error_code"] = CORRUPT_MESSAGE
                else:
                    partition["records"] = masked
        return response

    def advance(self, frame: Any, received: int) -> None:
        """Start masking the partitions whose records lie whole within the first ``received`` bytes of the frame,
        which is still arriving; what cannot be told yet (or at all) is left to splice, which walks the whole
        frame."""
        plan = plan_for("response", self.api_key, self.version, self._marks, RESPONSE_LOGS)
        try:
            for _ in self._masked(memoryview(frame), plan.walk_logged(frame, received)[1], received, wait=False):
                pass  # _masked keeps what it started and masked
        except UnexpectedTopic:
            pass  # splice walks the whole frame and raises it there, where the connection closes

    def splice(self, frame: Any) -> list[Any] | None:
        """The masked response as chunks to write in order (size prefix first), or None when the frame needs
        the dict path (it carries leader hints, whose broker addresses are rewritten on the decoded body)."""
        plan = plan_for("response", self.api_key, self.version, self._marks, RESPONSE_LOGS)
        marks, log = plan.walk_logged(frame)
        data = memoryview(frame)
        if self._has_leader_hints(data, marks, plan.tag_base):
            return None
        flexible = self.flexible
        if self.cache.pool is not None:
            for _ in self._masked(data, log, len(data), wait=False):
                pass  # every partition started first, so that the pool's threads work side by side
        chunks: list[Any] = []
        done = 4  # frame bytes before this are in chunks (the size prefix is written last)
        for at, masked in self._masked(data, log, len(data)):
            start, size, partition_at = masked[1], masked[2], masked[3]
            if masked[0] is None:
                error_at = partition_at + 4
                chunks += [data[done:error_at], _CORRUPT, data[error_at + 2:at], _length(0, flexible)]
            elif type(masked[0]) is list:  # masked in pieces: written as they are, not joined first
                chunks += [data[done:at], _length(sum(len(part) for part in masked[0]), flexible), *masked[0]]
            else:
                chunks += [data[done:at], _length(len(masked[0]), flexible), masked[0]]
            done = start + size
        if done == 4:
            return [frame]
        chunks.append(data[done:])
        return [_INT32.pack(sum(len(chunk) for chunk in chunks)), *chunks]

    def _has_leader_hints(self, data: memoryview, marks: list[int], tag_base: int) -> bool:
        """Whether the response carries NodeEndpoints, whose broker addresses only the dict path rewrites."""
        if self.api_key == SHARE_FETCH:
            # A compact array (length + 1 as an unsigned varint): the single byte 1 when empty.
            return data[marks[0]] != 1
        return self.version >= _NODE_ENDPOINTS_FROM and marks[tag_base + _NODE_ENDPOINTS_TAG] >= 0

    def _masked(self, data: memoryview, log: list[tuple[int, int]], received: int,
                wait: bool = True) -> Iterator[tuple[int, tuple]]:
        """(where the records field starts, (masked records or None when unmaskable, where its bytes start, their
        size, where its partition starts)) for each masked partition whose records changed, in frame order, as
        far as the first ``received`` bytes go. Records of a topic outside ``expected`` raise UnexpectedTopic.

        Records of POOL_MIN_BYTES or more go to the worker's mask pool when it has one, in pieces of whole batches
        (_pieces): the kernel and the codecs release the GIL, so partitions, and the pieces of a large one, are
        masked side by side; smaller ones are masked here, where a hand-off would cost more than it saves.
        Without ``wait``, partitions still on the pool are passed over (and nothing is yielded for them)."""
        flexible = self.flexible
        expected = self.expected
        entry: tuple[str, Masker] | None = None
        unexpected: bytes | None = None
        partition_at = 0
        for code, at in log:
            if code == TOPIC_ID or code == TOPIC:
                if at + 16 > received:
                    # The key may not be all in (a partial walk logs a field before reading it), and no
                    # partition's records can follow within 16 bytes of a topic key anyway.
                    break
            if code == TOPIC_ID:
                topic_id = bytes(data[at:at + 16])
                entry = self.maskers.get(topic_id)
                unexpected = topic_id if expected is not None and topic_id not in expected else None
            elif code == TOPIC:
                size, start = _extent(data, at, flexible, _INT16)
                entry = self.maskers.get(bytes(data[start:start + size]).decode("utf-8", "replace"))
            elif code == PARTITION:
                partition_at = at
            elif unexpected is not None:
                if at + 5 <= received and _extent(data, at, flexible, _INT32)[0] > 0:
                    raise UnexpectedTopic(
                        f"records of topic id {unexpected.hex()}, which the share session does not hold")
            elif entry is not None:
                if at + 5 > received:
                    continue  # its length prefix (at most 5 bytes) may not be all in yet
                size, start = _extent(data, at, flexible, _INT32)
                if size <= 0 or start + size > received:
                    continue
                masked = self._ahead.get(at)
                if masked is None:
                    records = data[start:start + size]
                    name, masker = entry
                    partition = _INT32.unpack_from(data, partition_at)[0]
                    pool = self.cache.pool
                    if pool is not None and size >= POOL_MIN_BYTES:
                        futures = [pool.submit(mask_records, piece, masker, max_output=self.max_output)
                                   for piece in _pieces(records)]
                        masked = _Pending(partial(_joined, futures, records, self.max_output), name, partition,
                                          (start, size, partition_at))
                    else:
                        masked = self._settle(name, partition, (start, size, partition_at),
                                              partial(mask_records, records, masker, max_output=self.max_output))
                    self._ahead[at] = masked
                if type(masked) is _Pending:
                    if not wait:
                        continue
                    masked = self._settle(masked.name, masked.partition, masked.where, masked.result)
                    self._ahead[at] = masked
                if masked is not _UNCHANGED:
                    yield at, masked

    def _settle(self, name: str, partition: int, where: tuple[int, int, int], run: Callable[[], Any]) -> Any:
        """What masking a partition came to: _UNCHANGED, or (masked records (bytes, or a list of pieces' bytes)
        or None when unmaskable, *where)."""
        result = self._outcome(name, partition, run)
        if result is None:
            return (None, *where)
        return (result.data, *where) if result.changed else _UNCHANGED


def _pieces(records: memoryview) -> list[memoryview]:
    """records cut into pieces of whole batches (batch_cuts) of at least POOL_PIECE_BYTES."""
    bounds = [0, *batch_cuts(records, POOL_PIECE_BYTES), len(records)]
    return [records[a:b] for a, b in itertools.pairwise(bounds)]


class _Joined:
    """The pieces' MaskResults as one, as mask_records on the whole records would have given it; but its data,
    when something changed, is the list of the pieces' data (the splice writes them one after another)."""

    __slots__ = ("changed", "data", "counts")

    def __init__(self, changed: bool, data: Any, counts: dict[str, int]) -> None:
        self.changed = changed
        self.data = data
        self.counts = counts


def _joined(futures: list[Any], records: memoryview, max_output: int) -> Any:
    """Wait for every piece; the first one's UnmaskableRecords (after all have finished) fails the whole."""
    results, failure = [], None
    for future in futures:
        try:
            results.append(future.result())
        except UnmaskableRecords as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    if len(results) == 1:
        return results[0]
    if not any(result.changed for result in results):
        return _Joined(False, records, {})
    counts: dict[str, int] = {}
    for result in results:
        for rule, n in result.counts.items():
            counts[rule] = counts.get(rule, 0) + n
    parts = [result.data for result in results]
    if sum(len(part) for part in parts) > max_output:
        raise UnmaskableRecords(f"records exceed max_output ({max_output} bytes)")
    return _Joined(True, parts, counts)


class _Pending:
    """A partition being masked on the worker's mask pool: result() waits for it."""

    __slots__ = ("result", "name", "partition", "where")

    def __init__(self, result: Callable[[], Any], name: str, partition: int, where: tuple[int, int, int]) -> None:
        self.result = result
        self.name = name
        self.partition = partition
        self.where = where  # (where the records start, their size, where the partition starts)


def _extent(data: memoryview, at: int, flexible: bool, fixed: struct.Struct) -> tuple[int, int]:
    """(size, where the bytes start) of the string or records field at ``at``: an unsigned varint of size + 1
    in flexible versions, else a ``fixed`` int16 (strings) or int32 (records); size -1 when null. The walk
    has already checked every length against the frame."""
    if not flexible:
        return fixed.unpack_from(data, at)[0], at + fixed.size
    value, shift, pos = 0, 0, at
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value - 1, pos
        shift += 7


def records_extent(data: memoryview, at: int, flexible: bool) -> tuple[int, int]:
    """(size, where the bytes start) of the records field at ``at``; size -1 when null."""
    return _extent(data, at, flexible, _INT32)


def string_extent(data: memoryview, at: int, flexible: bool) -> tuple[int, int]:
    """(size, where the bytes start) of the string field at ``at``; size -1 when null."""
    return _extent(data, at, flexible, _INT16)


def _length(size: int, flexible: bool) -> bytes:
    """A records length prefix: an unsigned varint of size + 1 (flexible versions) or an int32."""
    if not flexible:
        return _INT32.pack(size)
    value = size + 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
