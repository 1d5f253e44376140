"""Active grants in shared memory: the supervisor publishes them, workers consult them without I/O.

The supervisor owns the approvals store; whenever a grant starts, is revoked or expires (or another
gateway node announces a change), it publishes the whole table of active grants as one snapshot
(gateway.shm: double-buffered, generation-stamped). A worker's `GrantCache` rebuilds its index when
the generation moves, which it checks once per decision that needs a grant, so the hot path for
everything else pays nothing.

Workers never trust the table alone for time: a grant is used only while `now < expires_at` on the
worker's own clock, so a grant ends on time even if the supervisor is late to republish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import orjson

from gateway.approvals.model import Grant
from gateway.policy.model import CLUSTER_NAME, IMPLIES, SUPPORTED_OPERATIONS
from gateway.shm import SnapshotError, Snapshots

log = logging.getLogger("streamward.approvals")


class ActiveGrant(NamedTuple):
    id: str
    expires_at: float


class GrantTable(Snapshots):
    """The table of active grants, published by the supervisor (the only writer)."""

    def publish(self, grants: Iterable[Grant]) -> int:
        rows = [{"id": g.id, "subject": g.subject, "resources": [[r.type, r.name] for r in g.resources],
                 "operations": list(g.operations), "expires_at": g.expires_at} for g in grants]
        return self.publish_bytes(orjson.dumps(rows))

    def read(self) -> tuple[int, list[dict]]:
        generation, payload = self.read_bytes()
        return generation, [] if payload is None else orjson.loads(payload)


def _covered(row: dict) -> Iterable[tuple[str, str, str]]:
    """Every (resource type, name, operation) a grant allows, Kafka's implied operations included."""
    operations = set(row["operations"])
    operations |= {IMPLIES[op] for op in row["operations"] if op in IMPLIES}
    has_topic = False
    for resource_type, name in row["resources"]:
        has_topic = has_topic or resource_type == "topic"
        for operation in operations & SUPPORTED_OPERATIONS.get(resource_type, frozenset()):
            yield resource_type, name, operation
    if has_topic and "write" in operations:
        yield "cluster", CLUSTER_NAME, "idempotent_write"  # an idempotent producer asks this first


class GrantCache:
    """A worker's index of the published grants: (subject, resource type, name, operation) -> grants."""

    def __init__(self, table: GrantTable) -> None:
        self._table = table
        self.generation = -1
        self._index: dict[tuple[str, str, str, str], list[ActiveGrant]] = {}
        self._expiry: dict[str, float] = {}  # grant id -> expires_at, for every published grant

    def refresh(self) -> bool:
        """Rebuild when the supervisor published; True when it did. A corrupt table grants nothing."""
        published = self._table.generation()
        if published == self.generation:
            return False
        try:
            generation, rows = self._table.read()
        except SnapshotError as exc:
            log.error("grant table: %s; no grant is honoured until the next publish", exc)
            generation, rows = published, []
        index: dict[tuple[str, str, str, str], list[ActiveGrant]] = {}
        expiry: dict[str, float] = {}
        for row in rows:
            grant = ActiveGrant(row["id"], float(row["expires_at"]))
            expiry[grant.id] = grant.expires_at
            for resource_type, name, operation in _covered(row):
                index.setdefault((row["subject"], resource_type, name, operation), []).append(grant)
        self._index, self._expiry, self.generation = index, expiry, generation
        return True

    def find(self, subject: str, resource_type: str, name: str, operation: str, now: float) -> ActiveGrant | None:
        """The grant that lets `subject` do this now, the one lasting longest if several do; None if none."""
        self.refresh()
        best = None
        for grant in self._index.get((subject, resource_type, name, operation), ()):
            if now < grant.expires_at and (best is None or grant.expires_at > best.expires_at):
                best = grant
        return best

    def active(self, grant_id: str, now: float) -> bool:
        """Whether this grant is still published and not past its end (revoked grants disappear from the table)."""
        expires_at = self._expiry.get(grant_id)
        return expires_at is not None and now < expires_at
