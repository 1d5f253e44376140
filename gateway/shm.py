"""Snapshots in shared memory: one process publishes, every worker reads without locks.

Used for the compiled policy (gateway.policy.snapshot) and the table of active grants
(gateway.approvals.grants).

The supervisor creates a `Snapshots` before it forks, so every worker inherits
the same anonymous MAP_SHARED mapping (no file, no name, nothing for a resource
tracker to unlink). There is one writer, the supervisor; workers only read.

Layout (native byte order: every reader is on this machine; offsets in bytes; max_bytes is
the room for one snapshot)::

    0        8                 64                      64+S                    64+2S
    +--------+-----------------+-----------------------+-----------------------+
    | gen u64| (unused)        | slot 0                | slot 1                |
    +--------+-----------------+-----------------------+-----------------------+
                                 |
             slot: +---------+---------+---------+-----+----------------------------+
                   | gen u64 | len u64 | crc u32 | pad | payload: orjson, len bytes |
                   +---------+---------+---------+-----+----------------------------+
                   0         8         16        20    24                 24+max_bytes
    S = 24 + max_bytes rounded up to 64. Generation g lives in slot g & 1; 0 means nothing published.

Publish (writer), generation g = gen + 1, into the slot readers are not using::

    1. payload -> slot[g & 1].payload
    2. (g, len, crc32(payload)) -> slot[g & 1] header
    3. g -> gen                         <- the one store that makes g visible

Read (any worker), never blocking the writer::

    1. g = gen                          (0: nothing published yet)
    2. copy slot[g & 1] header and payload
    3. accept only if gen is still g, the slot says g and crc32 matches; otherwise go to 1
       (gen moved: a newer snapshot to read; gen still g yet the slot fails, a few times over:
       corrupt: SnapshotError, and the reader fails closed until the next publish)

Why a reader never sees a torn snapshot: the writer touches slot g & 1 again only
when it writes generation g + 2, which it starts after publishing g + 1; so if gen
still reads g after the copy, nothing wrote that slot during the copy. The slot's own
generation and CRC32 check the same thing again without relying on the CPU keeping
the writer's stores in order. The hot path (`generation()`) is one 8-byte load from
the mapping: no lock, no system call.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

HEADER_SIZE = 64  # the generation alone on its cache line
SLOT_HEADER = struct.Struct("=QQI4x")  # generation, payload length, crc32 of the payload
# A slot that does not check out while the generation stands still is corrupt, not being written:
# give up after this many looks rather than spin.
STALLED_READS_LIMIT = 3


class SnapshotError(Exception):
    """A snapshot is too large to publish, or corrupt when read."""


class Snapshots:
    """A double-buffered, generation-stamped byte payload in anonymous shared memory."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._slot_size = -(-(SLOT_HEADER.size + max_bytes) // 64) * 64
        self._mm = mmap.mmap(-1, HEADER_SIZE + 2 * self._slot_size, flags=mmap.MAP_SHARED)
        self._generation = memoryview(self._mm)[:8].cast("Q")
        self._writer_pid = os.getpid()  # the protocol allows one writer: the process that created the mapping

    def generation(self) -> int:
        """The published generation: one load from shared memory."""
        return self._generation[0]

    def publish_bytes(self, payload: bytes) -> int:
        """Make `payload` the current snapshot; returns its generation. Too large: SnapshotError, nothing changes."""
        if os.getpid() != self._writer_pid:
            raise RuntimeError(f"only the process that created the {type(self).__name__} may publish to it")
        if len(payload) > self.max_bytes:
            raise SnapshotError(f"the snapshot takes {len(payload)} bytes, more than the {self.max_bytes} reserved")
        generation = self._generation[0] + 1
        slot = self._slot(generation)
        start = slot + SLOT_HEADER.size
        self._mm[start:start + len(payload)] = payload
        SLOT_HEADER.pack_into(self._mm, slot, generation, len(payload), zlib.crc32(payload))
        self._generation[0] = generation
        return generation

    def read_bytes(self) -> tuple[int, bytes | None]:
        """The current generation and a copy of its payload (None: nothing published); retries while the
        writer moves on underneath; SnapshotError when the slot stays corrupt."""
        stalled = 0
        while True:
            generation = self._generation[0]
            if generation == 0:
                return 0, None
            slot = self._slot(generation)
            slot_generation, length, crc = SLOT_HEADER.unpack_from(self._mm, slot)
            payload = b""
            if slot_generation == generation and length <= self.max_bytes:
                start = slot + SLOT_HEADER.size
                payload = self._mm[start:start + length]
            if self._generation[0] != generation:
                continue  # a newer snapshot was published meanwhile: read that one
            if slot_generation == generation and length <= self.max_bytes and zlib.crc32(payload) == crc:
                return generation, payload
            stalled += 1
            if stalled >= STALLED_READS_LIMIT:
                raise SnapshotError(f"snapshot generation {generation} is corrupt (slot generation "
                                    f"{slot_generation}, {length} bytes, checksum mismatch)")

    def _slot(self, generation: int) -> int:
        return HEADER_SIZE + (generation & 1) * self._slot_size
