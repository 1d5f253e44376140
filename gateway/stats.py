"""Per-worker counters in shared memory, written by each worker and read by the supervisor.

The supervisor maps an anonymous shared region before forking; each worker owns
one slot and copies its plain in-process counters there about once a second, so
the hot path only ever increments Python integers.
"""

from __future__ import annotations

import logging
import mmap
import struct

import orjson

log = logging.getLogger("streamward.stats")

FIELDS = ("pid", "serving", "connections_open", "connections_total", "requests_total", "refused_total",
          "denied_total", "upstream_connects_total", "auth_failures_total", "read_ahead_answered_total",
          "read_ahead_dropped_total", "heartbeat_ms")
_SLOT = len(FIELDS)

# Labelled counters (fields masked per topic and rule, ...) vary in their labels, so each worker also
# owns a small area holding them as JSON, guarded by a sequence number: odd while the worker writes,
# so the supervisor retries a read that raced a write (a seqlock; one writer per area).
LABELLED_BYTES = 64 * 1024
_LABELLED_HEADER = struct.Struct("=QI4x")  # sequence, payload length


class WorkerStats:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SLOT * 8, flags=mmap.MAP_SHARED)
        self._view = memoryview(self._map).cast("q")
        self._labelled = mmap.mmap(-1, slots * LABELLED_BYTES, flags=mmap.MAP_SHARED)

    def write(self, slot: int, **values: int) -> None:
        base = slot * _SLOT
        for name, value in values.items():
            self._view[base + FIELDS.index(name)] = value

    def read(self, slot: int) -> dict[str, int]:
        base = slot * _SLOT
        return {name: self._view[base + i] for i, name in enumerate(FIELDS)}

    def clear(self, slot: int) -> None:
        base = slot * _SLOT
        for i in range(_SLOT):
            self._view[base + i] = 0
        self.write_labelled(slot, {})

    def write_labelled(self, slot: int, counters: dict[str, dict[str, int]]) -> None:
        """Publish {metric: {"label=value,...": count}}; what does not fit is left out, and logged."""
        payload = orjson.dumps(counters)
        room = LABELLED_BYTES - _LABELLED_HEADER.size
        if len(payload) > room:
            log.warning("labelled counters of worker %d take %d bytes, more than %d: not published this time",
                        slot, len(payload), room)
            return
        base = slot * LABELLED_BYTES
        sequence = _LABELLED_HEADER.unpack_from(self._labelled, base)[0]
        _LABELLED_HEADER.pack_into(self._labelled, base, sequence + 1, 0)  # odd: being written
        start = base + _LABELLED_HEADER.size
        self._labelled[start:start + len(payload)] = payload
        _LABELLED_HEADER.pack_into(self._labelled, base, sequence + 2, len(payload))

    def read_labelled(self, slot: int) -> dict[str, dict[str, int]]:
        base = slot * LABELLED_BYTES
        for _ in range(100):
            sequence, length = _LABELLED_HEADER.unpack_from(self._labelled, base)
            if sequence & 1:
                continue
            start = base + _LABELLED_HEADER.size
            payload = self._labelled[start:start + min(length, LABELLED_BYTES - _LABELLED_HEADER.size)]
            if _LABELLED_HEADER.unpack_from(self._labelled, base)[0] != sequence:
                continue
            if not payload:
                return {}
            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError:
                return {}
        return {}
