"""The compiled policy in shared memory: the supervisor publishes, workers read without locks.

The supervisor creates a `PolicyStore` before it forks, so every worker inherits the same anonymous
MAP_SHARED mapping; the double-buffered, generation-stamped layout and why a reader never sees a torn
snapshot are in gateway.shm. Generation 0 (nothing published) is the empty policy: deny everything. A
snapshot that stays corrupt is a PolicyError, and a worker's PolicyCache denies everything until the
next publish. The hot path (`generation()`) is one 8-byte load from the mapping.
"""

from __future__ import annotations

import logging

import orjson

from gateway.policy.engine import Engine, PrincipalView
from gateway.policy.model import PolicyError, PolicySet
from gateway.shm import HEADER_SIZE, SLOT_HEADER, SnapshotError, Snapshots

__all__ = ["HEADER_SIZE", "SLOT_HEADER", "PolicyCache", "PolicyStore", "ViewHolder"]

log = logging.getLogger("streamward.policy")

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class PolicyStore(Snapshots):
    """The compiled policy as a snapshot in anonymous shared memory (see gateway.shm for the layout)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(max_bytes)

    def publish(self, policy_set: PolicySet) -> int:
        """Make `policy_set` the current snapshot; returns its generation. Too large: PolicyError, nothing changes."""
        payload = orjson.dumps(policy_set.to_dict())
        if len(payload) > self.max_bytes:
            raise PolicyError(f"the compiled policy takes {len(payload)} bytes, more than the {self.max_bytes} "
                              f"reserved for it (policy.max_bytes); the previous policy stays in force")
        return self.publish_bytes(payload)

    def read(self) -> tuple[int, PolicySet]:
        """The current generation and a fresh PolicySet of it (generation 0: the empty policy, deny everything)."""
        try:
            generation, payload = self.read_bytes()
        except SnapshotError as exc:
            raise PolicyError(f"policy {exc}") from None
        if payload is None:
            return 0, PolicySet()
        return generation, PolicySet.from_dict(orjson.loads(payload))


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
