"""Per-worker counters in shared memory, written by each worker and read by the supervisor.

The supervisor maps an anonymous shared region before forking; each worker owns
one slot and copies its plain in-process counters there about once a second, so
the hot path only ever increments Python integers.
"""

from __future__ import annotations

import mmap

FIELDS = ("pid", "serving", "connections_open", "connections_total", "requests_total", "refused_total",
          "denied_total", "upstream_connects_total", "auth_failures_total", "heartbeat_ms")
_SLOT = len(FIELDS)


class WorkerStats:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SLOT * 8, flags=mmap.MAP_SHARED)
        self._view = memoryview(self._map).cast("q")

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
