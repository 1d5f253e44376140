"""PostgresStore: the approvals' state in PostgreSQL, shared by every gateway node.

The tables and statements are those of store.py. Every write also sends `NOTIFY streamward_approvals`
(the new revision as payload) inside its transaction, so it is heard only once committed; `listen`
runs a thread that hears it and calls back, so each node reloads its grants when another one decides.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors

from gateway.approvals.store import Listener, SqlStore

log = logging.getLogger("streamward.approvals")

CHANNEL = "streamward_approvals"
CONNECT_TIMEOUT_S = 10
# A server that vanished without closing the connection is noticed by TCP keepalives, not only on the next write.
_CONNECT_OPTIONS: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
                                    "keepalives_interval": 5, "keepalives_count": 3}
LISTEN_POLL_S = 0.25  # how often the listener thread looks at its stop flag
RECONNECT_BACKOFF_S = (0.1, 5.0)  # first wait after losing the server, and the longest


class PostgresStore(SqlStore):
    """One connection shared by threads under a lock, opened again when the server dropped it."""

    PARAM = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._listeners: list[PgListener] = []
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            # autocommit: reads are single statements and writes say BEGIN and COMMIT, so no transaction idles.
            self._conn = psycopg.connect(self.url, autocommit=True, **_CONNECT_OPTIONS)
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock:
            conn = self._begin()
            try:
                with conn.cursor() as cursor:
                    yield cursor
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _begin(self) -> psycopg.Connection[Any]:
        """A connection inside a new transaction.

        After a server restart the first statement on the old connection fails; BEGIN changes nothing,
        so that failure is safe to retry once on a new connection (a failed COMMIT is not, and is not).
        """
        conn = self._connection()
        try:
            conn.execute("BEGIN")
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            conn = self._connection()
            conn.execute("BEGIN")
        return conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if not conn.broken:
                    raise
                return self._connection().execute(sql, params).fetchall()  # a read is safe to repeat

    def _is_pending_conflict(self, exc: Exception) -> bool:
        return (isinstance(exc, psycopg.errors.UniqueViolation)
                and exc.diag.constraint_name == "approval_requests_one_pending")

    def _lock_schema(self, cursor: Any) -> None:
        # Two nodes starting at once would race on CREATE TABLE IF NOT EXISTS (a unique violation in pg_type).
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('streamward_approvals_schema'))")

    def _announce(self, cursor: Any, revision: int) -> None:
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))

    def listen(self, callback: Callable[[], None]) -> Listener:
        listener = PgListener(self.url, callback)
        self._listeners.append(listener)
        listener.start()
        return listener

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class PgListener(threading.Thread):
    """A daemon thread that LISTENs on CHANNEL and calls `callback()` for each notification.

    It calls back once more every time it (re)starts listening: notifications sent while it was not
    connected are lost, so whoever listens must reload then. `ready` is set once it listens.
    """

    def __init__(self, url: str, callback: Callable[[], None]) -> None:
        super().__init__(name="approvals-listen", daemon=True)
        self.url = url
        self.callback = callback
        self.ready = threading.Event()
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        backoff = RECONNECT_BACKOFF_S[0]
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **_CONNECT_OPTIONS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if backoff > RECONNECT_BACKOFF_S[0]:
                        log.warning("approvals: listening on %s again", CHANNEL)
                    backoff = RECONNECT_BACKOFF_S[0]
                    self._call_back()
                    self.ready.set()
                    while not self._stopping.is_set():
                        for _notify in conn.notifies(timeout=LISTEN_POLL_S):
                            self._call_back()
            except psycopg.Error as exc:
                self.ready.clear()
                if self._stopping.is_set():
                    break
                log.warning("approvals: lost %s (%s); listening again in %.1f s", CHANNEL, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])

    def _call_back(self) -> None:
        try:
            self.callback()
        except Exception:
            log.exception("approvals: the change callback failed")
