"""The share sessions (KIP-932) a client connection holds on its broker, as the gateway forwarded them.

A share session keeps serving the partitions it holds to every ShareFetch of the session, whether the
request names them or not: an incremental ShareFetch names only what changed. Unlike fetch sessions they
cannot be switched off, so a policy change (or an access grant's end) would not stop a running share
consumer. The connection therefore keeps, per session (group id, member id), the partitions it forwarded
to the broker, and has every partition of the session authorized again on every ShareFetch; a partition
no longer allowed closes the connection (the client reconnects and opens a new session, where the refused
partition then gets its authorization error).

Epochs, as the broker applies them: 0 opens (or replaces) the session with the listed partitions; a
positive epoch adds the listed partitions and drops ``forgotten_topics_data``; -1 closes it. The state is
bounded per connection; past the bounds the connection is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_SESSIONS = 16  # per connection: a client has one per share group it consumes through this broker
MAX_PARTITIONS = 10_000  # per connection, over all its sessions

INITIAL_EPOCH = 0
FINAL_EPOCH = -1

Partition = tuple[bytes, int]  # (topic id, partition index)
SessionKey = tuple[str | None, str | None]  # (group id, member id)


class ShareSessionError(Exception):
    """The connection must close: the reason says why."""


class ShareSessions:
    """The share sessions of one client connection."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, max_partitions: int = MAX_PARTITIONS) -> None:
        self.max_sessions = max_sessions
        self.max_partitions = max_partitions
        self._sessions: dict[SessionKey, set[Partition]] = {}

    def partitions(self, group_id: str | None, member_id: str | None) -> frozenset[Partition]:
        return frozenset(self._sessions.get((group_id, member_id), ()))

    def fetch(self, body: dict[str, Any], may_read: Callable[[bytes], bool]) -> frozenset[bytes]:
        """Apply a ShareFetch about to be forwarded (``body`` as forwarded: refused topics already out), then
        check every partition the session holds with ``may_read(topic id)``. Returns the topic ids the
        broker may answer with: the session's and the request's. Raises ShareSessionError to close."""
        key: SessionKey = (body["group_id"], body["member_id"])
        epoch = body["share_session_epoch"]
        listed = {(topic["topic_id"], partition["partition_index"])
                  for topic in body["topics"] for partition in topic["partitions"]}
        if epoch == FINAL_EPOCH:
            # The last request of a session only acknowledges: nothing is fetched, and the session ends.
            self._sessions.pop(key, None)
            return frozenset(topic_id for topic_id, _ in listed)
        if epoch == INITIAL_EPOCH:
            if key not in self._sessions and len(self._sessions) >= self.max_sessions:
                raise ShareSessionError(f"more than {self.max_sessions} share sessions on one connection")
            session = set(listed)
        else:
            held = self._sessions.get(key)
            if held is None:
                # Its partitions are unknown here (opened on another connection, or never): fail closed.
                raise ShareSessionError(f"ShareFetch at epoch {epoch} for a share session not opened on this "
                                        f"connection (group {body['group_id']!r})")
            forgotten = {(topic["topic_id"], index)
                         for topic in body["forgotten_topics_data"] for index in topic["partitions"]}
            session = (held - forgotten) | listed
        others = sum(len(partitions) for other, partitions in self._sessions.items() if other != key)
        if others + len(session) > self.max_partitions:
            raise ShareSessionError(f"share sessions on one connection would hold more than "
                                    f"{self.max_partitions} partitions")
        self._sessions[key] = session
        topic_ids = frozenset(topic_id for topic_id, _ in session)
        for topic_id in topic_ids:
            if not may_read(topic_id):
                raise ShareSessionError(f"the share session of group {body['group_id']!r} holds a topic the "
                                        f"policy no longer lets this identity read (topic id {topic_id.hex()})")
        return topic_ids

    def acknowledge(self, body: dict[str, Any]) -> None:
        """Apply a ShareAcknowledge about to be forwarded: epoch -1 closes the session; others change nothing
        it holds (acknowledgements name only partitions the session fetched)."""
        if body["share_session_epoch"] == FINAL_EPOCH:
            self._sessions.pop((body["group_id"], body["member_id"]), None)
