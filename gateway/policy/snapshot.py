"""The compiled policy in shared memory: the supervisor publishes, workers read without locks.

The supervisor creates a `PolicyStore` before it forks, so every worker inherits
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

    1. g = gen                          (0: nothing published, the empty policy: deny everything)
    2. copy slot[g & 1] header and payload
    3. accept only if gen is still g, the slot says g and crc32 matches; otherwise go to 1
       (gen moved: a newer snapshot to read; gen still g yet the slot fails, a few times over:
       corrupt, PolicyError, and a worker's PolicyCache denies everything until the next publish)

Why a reader never sees a torn snapshot: the writer touches slot g & 1 again only
when it writes generation g + 2, which it starts after publishing g + 1; so if gen
still reads g after the copy, nothing wrote that slot during the copy. The slot's own
generation and CRC32 check the same thing again without relying on the CPU keeping
the writer's stores in order. The hot path (`generation()`) is one 8-byte load from
the mapping: no lock, no system call.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib

import orjson

from gateway.policy.engine import Engine, PrincipalView
from gateway.policy.model import PolicyError, PolicySet

log = logging.getLogger("streamward.policy")

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
HEADER_SIZE = 64  # the generation alone on its cache line
SLOT_HEADER = struct.Struct("=QQI4x")  # generation, payload length, crc32 of the payload
# A slot that does not check out while the generation stands still is corrupt, not being written:
# give up after this many looks rather than spin.
STALLED_READS_LIMIT = 3


class PolicyStore:
    """A double-buffered, generation-stamped policy snapshot in anonymous shared memory."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._slot_size = -(-(SLOT_HEADER.size + max_bytes) // 64) * 64
        self._mm = mmap.mmap(-1, HEADER_SIZE + 2 * self._slot_size, flags=mmap.MAP_SHARED)
        self._generation = memoryview(self._mm)[:8].cast("Q")
        self._writer_pid = os.getpid()  # the protocol allows one writer: the process that created the store

    def generation(self) -> int:
        """The published generation: one load from shared memory."""
        return self._generation[0]

    def publish(self, policy_set: PolicySet) -> int:
        """Make `policy_set` the current snapshot; returns its generation. Too large: PolicyError, nothing changes."""
        if os.getpid() != self._writer_pid:
            raise RuntimeError("only the process that created the PolicyStore may publish to it")
        payload = orjson.dumps(policy_set.to_dict())
        if len(payload) > self.max_bytes:
            raise PolicyError(f"the compiled policy takes {len(payload)} bytes, more than the {self.max_bytes} "
                              f"reserved for it (policy.max_bytes); the previous policy stays in force")
        generation = self._generation[0] + 1
        slot = self._slot(generation)
        start = slot + SLOT_HEADER.size
        self._mm[start:start + len(payload)] = payload
        SLOT_HEADER.pack_into(self._mm, slot, generation, len(payload), zlib.crc32(payload))
        self._generation[0] = generation
        return generation

    def read(self) -> tuple[int, PolicySet]:
        """The current generation and a fresh PolicySet of it; retries while the writer moves on underneath."""
        stalled = 0
        while True:
            generation = self._generation[0]
            if generation == 0:
                return 0, PolicySet()
            slot = self._slot(generation)
            slot_generation, length, crc = SLOT_HEADER.unpack_from(self._mm, slot)
            payload = b""
            if slot_generation == generation and length <= self.max_bytes:
                start = slot + SLOT_HEADER.size
                payload = self._mm[start:start + length]
            if self._generation[0] != generation:
                continue  # a newer snapshot was published meanwhile: read that one
            if slot_generation == generation and length <= self.max_bytes and zlib.crc32(payload) == crc:
                return generation, PolicySet.from_dict(orjson.loads(payload))
            stalled += 1
            if stalled >= STALLED_READS_LIMIT:
                raise PolicyError(f"policy snapshot generation {generation} is corrupt (slot generation "
                                  f"{slot_generation}, {length} bytes, checksum mismatch)")

    def _slot(self, generation: int) -> int:
        return HEADER_SIZE + (generation & 1) * self._slot_size


class PolicyCache:
    """A worker's Engine for the current generation, rebuilt only when the supervisor publishes."""

    def __init__(self, store: PolicyStore) -> None:
        self._published = store.generation  # bound once: the hot path pays one call and one load
        self._store = store
        self.generation = -1  # the generation self.engine() was built from; -1 before the first build
        self._engine = Engine(PolicySet())  # replaced on the first call, since no generation is -1

    def engine(self) -> Engine:
        if self._published() != self.generation:
            self._rebuild()
        return self._engine

    def _rebuild(self) -> None:
        try:
            generation, policy_set = self._store.read()
        except PolicyError as exc:
            # Fail closed until the next publish: an unreadable policy allows nothing.
            log.error("%s; denying every request until the next policy is published", exc)
            generation, policy_set = self._published(), PolicySet()
        self._engine = Engine(policy_set)
        self.generation = generation


class ViewHolder:
    """One connection's PrincipalView, rebuilt when the policy generation changes."""

    __slots__ = ("_cache", "subject", "groups", "_view", "_generation")

    def __init__(self, cache: PolicyCache, subject: str, groups: tuple[str, ...]) -> None:
        self._cache = cache
        self.subject = subject
        self.groups = groups
        self._view: PrincipalView | None = None
        self._generation = -1

    def view(self) -> PrincipalView:
        engine = self._cache.engine()
        if self._view is None or self._generation != self._cache.generation:
            self._view = engine.for_principal(self.subject, self.groups)
            self._generation = self._cache.generation
        return self._view
