"""Durable state of the approvals: the Store protocol, the SQL both databases share, and SqliteStore.

Everything the approvals know lives here, so a gateway restart finds every pending request and every
grant. Each write is one transaction, and the writes that decide something are compare-and-set: an
update names the state it expects and changes nothing when the row has moved on (another thread,
another gateway node), so two approvers at once cannot make two grants. A second pending request for
the same requester and scope is refused by a unique index, for the same reason.

Every write also bumps a revision number in the same transaction; PostgreSQL announces it with
NOTIFY (see postgres.py) so other nodes reload their grants.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.approvals.model import AccessRequest, Approval, Grant, Resource

SCHEMA_VERSION = 1
DEFAULT_LIST_LIMIT = 1000
SQLITE_BUSY_TIMEOUT_MS = 5000

# The schema, in the SQL that SQLite and PostgreSQL both accept (DOUBLE PRECISION and BOOLEAN are
# REAL and INTEGER to SQLite). Lists are JSON text: nothing queries inside them.
SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS approval_meta (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS approval_requests (
        id TEXT PRIMARY KEY,
        requester TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        resources_json TEXT NOT NULL,
        operations_json TEXT NOT NULL,
        scope TEXT NOT NULL,
        duration_s BIGINT NOT NULL,
        reason TEXT NOT NULL,
        client TEXT NOT NULL,
        origin TEXT NOT NULL,
        rules_json TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        approvals_json TEXT NOT NULL,
        decided_by TEXT,
        decided_at DOUBLE PRECISION,
        decision_reason TEXT,
        grant_id TEXT
    )""",
    # One pending request per requester and scope: the Kafka path asks again on every refused retry.
    """CREATE UNIQUE INDEX IF NOT EXISTS approval_requests_one_pending
        ON approval_requests (requester, scope) WHERE status = 'pending'""",
    "CREATE INDEX IF NOT EXISTS approval_requests_by_status ON approval_requests (status, created_at)",
    """CREATE TABLE IF NOT EXISTS approval_grants (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        resources_json TEXT NOT NULL,
        operations_json TEXT NOT NULL,
        starts_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        approved_by_json TEXT NOT NULL,
        revoked_at DOUBLE PRECISION,
        revoked_by TEXT,
        revoke_reason TEXT,
        expired_notified BOOLEAN NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS approval_grants_live ON approval_grants (expires_at) WHERE revoked_at IS NULL",
    "INSERT INTO approval_meta (name, value) VALUES ('revision', 0) ON CONFLICT (name) DO NOTHING",
)

_REQUEST_COLUMNS = ("id, requester, groups_json, resources_json, operations_json, scope, duration_s, reason, client, "
                    "origin, rules_json, status, created_at, approvals_json, decided_by, decided_at, decision_reason, "
                    "grant_id")
_GRANT_COLUMNS = ("id, request_id, subject, resources_json, operations_json, starts_at, expires_at, approved_by_json, "
                  "revoked_at, revoked_by, revoke_reason, expired_notified")


class StoreError(Exception):
    """The store cannot be used (a schema newer than this code, a database that is not ours)."""


class PendingExists(Exception):
    """insert_request: this requester already has a pending request for exactly this scope."""


class Listener(Protocol):
    def stop(self) -> None: ...


class Store(Protocol):
    """The approvals' durable state. ApprovalService is the only caller."""

    def insert_request(self, request: AccessRequest) -> None:
        """Store a new request; PendingExists when the requester has a pending one for the same scope."""
        ...

    def update_request(self, request: AccessRequest, expected: AccessRequest, grant: Grant | None = None) -> bool:
        """Replace `expected` by `request` and insert `grant` if given, in one transaction.

        False, and nothing written, when the stored request is no longer `expected` (its status or
        approvals changed since it was read).
        """
        ...

    def get_request(self, request_id: str) -> AccessRequest | None: ...

    def find_pending(self, requester: str, resources: Iterable[Resource],
                     operations: Iterable[str]) -> AccessRequest | None:
        """The requester's pending request for exactly this set of resources and operations."""
        ...

    def list_requests(self, status: str | None = None, limit: int = DEFAULT_LIST_LIMIT) -> list[AccessRequest]:
        """Newest first."""
        ...

    def update_grant(self, grant: Grant, expected: Grant) -> bool:
        """Replace `expected` by `grant`; False, and nothing written, when the stored grant was revoked or
        its expiry noted since `expected` was read."""
        ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def list_grants(self, active_at: float | None = None, limit: int = DEFAULT_LIST_LIMIT) -> list[Grant]:
        """With `active_at`: every grant active then (no limit), soonest expiry first; else the newest grants."""
        ...

    def expired_unnoticed(self, now: float) -> list[Grant]:
        """Grants past their expiry at `now`, not revoked, whose expiry has not been noted yet."""
        ...

    def revision(self) -> int:
        """A number every write increases: equal numbers, same state."""
        ...

    def listen(self, callback: Callable[[], None]) -> Listener:
        """Call `callback()` whenever another store object on the same database writes."""
        ...

    def close(self) -> None: ...


def scope_key(resources: Iterable[Resource], operations: Iterable[str]) -> str:
    """One text per set of resources and operations, whatever their order and repetitions."""
    return json.dumps({"resources": sorted({(r.type, r.name) for r in resources}),
                       "operations": sorted(set(operations))}, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _resources_json(resources: Iterable[Resource]) -> str:
    return _dumps([[resource.type, resource.name] for resource in resources])


def _approvals_json(approvals: Iterable[Approval]) -> str:
    return _dumps([[a.approver, a.at, a.duration_s] for a in approvals])


def _request_params(request: AccessRequest) -> tuple[Any, ...]:
    """The values of _REQUEST_COLUMNS, in that order."""
    return (request.id, request.requester, _dumps(list(request.groups)), _resources_json(request.resources),
            _dumps(list(request.operations)), scope_key(request.resources, request.operations), request.duration_s,
            request.reason, request.client, request.origin, _dumps(list(request.rules)), request.status,
            request.created_at, _approvals_json(request.approvals), request.decided_by, request.decided_at,
            request.decision_reason, request.grant_id)


def _request_from_row(row: Sequence[Any]) -> AccessRequest:
    (id_, requester, groups, resources, operations, _scope, duration_s, reason, client, origin, rules, status,
     created_at, approvals, decided_by, decided_at, decision_reason, grant_id) = row
    return AccessRequest(
        id=id_, requester=requester, groups=tuple(json.loads(groups)),
        resources=tuple(Resource(t, n) for t, n in json.loads(resources)), operations=tuple(json.loads(operations)),
        duration_s=int(duration_s), reason=reason, client=client, origin=origin, rules=tuple(json.loads(rules)),
        status=status, created_at=float(created_at),
        approvals=tuple(Approval(a, float(at), int(d)) for a, at, d in json.loads(approvals)),
        decided_by=decided_by, decided_at=None if decided_at is None else float(decided_at),
        decision_reason=decision_reason, grant_id=grant_id,
    )


def _grant_params(grant: Grant) -> tuple[Any, ...]:
    """The values of _GRANT_COLUMNS, in that order."""
    return (grant.id, grant.request_id, grant.subject, _resources_json(grant.resources), _dumps(list(grant.operations)),
            grant.starts_at, grant.expires_at, _dumps(list(grant.approved_by)), grant.revoked_at, grant.revoked_by,
            grant.revoke_reason, bool(grant.expired_notified))


def _grant_from_row(row: Sequence[Any]) -> Grant:
    (id_, request_id, subject, resources, operations, starts_at, expires_at, approved_by, revoked_at, revoked_by,
     revoke_reason, expired_notified) = row
    return Grant(
        id=id_, request_id=request_id, subject=subject,
        resources=tuple(Resource(t, n) for t, n in json.loads(resources)), operations=tuple(json.loads(operations)),
        starts_at=float(starts_at), expires_at=float(expires_at), approved_by=tuple(json.loads(approved_by)),
        revoked_at=None if revoked_at is None else float(revoked_at), revoked_by=revoked_by,
        revoke_reason=revoke_reason, expired_notified=bool(expired_notified),
    )


class _Unchanged(Exception):
    """Raised inside a write transaction to roll it back: the row it meant to change has moved on."""


class SqlStore:
    """The Store in SQL both databases accept; subclasses supply connections and transactions.

    Statements are written with `?` placeholders; a subclass whose driver wants `%s` sets PARAM.
    """

    PARAM = "?"

    # -- what a subclass provides

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside one transaction: committed when the block ends, rolled back when it raises."""
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement."""
        raise NotImplementedError

    def _is_pending_conflict(self, exc: Exception) -> bool:
        """Whether `exc` is the unique index approval_requests_one_pending refusing an insert."""
        raise NotImplementedError

    def _lock_schema(self, cursor: Any) -> None:
        """Keep two processes from creating the schema at once (where CREATE ... IF NOT EXISTS can race)."""

    def _announce(self, cursor: Any, revision: int) -> None:
        """Tell other store objects about a write, inside its transaction."""

    # -- shared

    def _sql(self, text: str) -> str:
        return text if self.PARAM == "?" else text.replace("?", self.PARAM)

    def _create_schema(self) -> None:
        with self._transaction() as cursor:
            self._lock_schema(cursor)
            for statement in SCHEMA:
                cursor.execute(statement)
            cursor.execute(self._sql("INSERT INTO approval_meta (name, value) VALUES ('schema_version', ?) "
                                     "ON CONFLICT (name) DO NOTHING"), (SCHEMA_VERSION,))
            cursor.execute("SELECT value FROM approval_meta WHERE name = 'schema_version'")
            (version,) = cursor.fetchone()
            if version != SCHEMA_VERSION:
                raise StoreError(f"the approvals database has schema version {version}; this gateway knows "
                                 f"version {SCHEMA_VERSION}: run a gateway of that version or a newer one")

    def _write(self, action: Callable[[Any], bool]) -> bool:
        """Run `action(cursor)` in one transaction with the revision bump; False (rolled back) when it says so."""
        try:
            with self._transaction() as cursor:
                if not action(cursor):
                    raise _Unchanged
                cursor.execute("UPDATE approval_meta SET value = value + 1 WHERE name = 'revision'")
                cursor.execute("SELECT value FROM approval_meta WHERE name = 'revision'")
                (revision,) = cursor.fetchone()
                self._announce(cursor, int(revision))
        except _Unchanged:
            return False
        return True

    def insert_request(self, request: AccessRequest) -> None:
        placeholders = ", ".join("?" * len(_REQUEST_COLUMNS.split(",")))
        sql = self._sql(f"INSERT INTO approval_requests ({_REQUEST_COLUMNS}) VALUES ({placeholders})")

        def insert(cursor: Any) -> bool:
            cursor.execute(sql, _request_params(request))
            return True

        try:
            self._write(insert)
        except Exception as exc:
            if self._is_pending_conflict(exc):
                raise PendingExists(request.requester) from exc
            raise

    def update_request(self, request: AccessRequest, expected: AccessRequest, grant: Grant | None = None) -> bool:
        columns = [column.strip() for column in _REQUEST_COLUMNS.split(",")]
        assignments = ", ".join(f"{column} = ?" for column in columns[1:])
        update = self._sql(f"UPDATE approval_requests SET {assignments} "
                           f"WHERE id = ? AND status = ? AND approvals_json = ?")
        update_params = (*_request_params(request)[1:], expected.id, expected.status,
                         _approvals_json(expected.approvals))
        insert = self._sql(f"INSERT INTO approval_grants ({_GRANT_COLUMNS}) "
                           f"VALUES ({', '.join('?' * len(_GRANT_COLUMNS.split(',')))})")

        def update_and_grant(cursor: Any) -> bool:
            cursor.execute(update, update_params)
            if cursor.rowcount != 1:
                return False
            if grant is not None:
                cursor.execute(insert, _grant_params(grant))
            return True

        return self._write(update_and_grant)

    def get_request(self, request_id: str) -> AccessRequest | None:
        rows = self._query(self._sql(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE id = ?"), (request_id,))
        return _request_from_row(rows[0]) if rows else None

    def find_pending(self, requester: str, resources: Iterable[Resource],
                     operations: Iterable[str]) -> AccessRequest | None:
        rows = self._query(self._sql(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests "
                                     f"WHERE requester = ? AND scope = ? AND status = 'pending'"),
                           (requester, scope_key(resources, operations)))
        return _request_from_row(rows[0]) if rows else None

    def list_requests(self, status: str | None = None, limit: int = DEFAULT_LIST_LIMIT) -> list[AccessRequest]:
        where, params = ("WHERE status = ? ", (status,)) if status is not None else ("", ())
        rows = self._query(self._sql(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests {where}"
                                     f"ORDER BY created_at DESC, id LIMIT ?"), (*params, limit))
        return [_request_from_row(row) for row in rows]

    def update_grant(self, grant: Grant, expected: Grant) -> bool:
        columns = [column.strip() for column in _GRANT_COLUMNS.split(",")]
        assignments = ", ".join(f"{column} = ?" for column in columns[1:])
        sql = self._sql(f"UPDATE approval_grants SET {assignments} "
                        f"WHERE id = ? AND revoked_at IS NULL AND expired_notified = ?")
        params = (*_grant_params(grant)[1:], expected.id, bool(expected.expired_notified))
        if expected.revoked_at is not None:
            return False  # a revoked grant is final

        def update(cursor: Any) -> bool:
            cursor.execute(sql, params)
            return cursor.rowcount == 1

        return self._write(update)

    def get_grant(self, grant_id: str) -> Grant | None:
        rows = self._query(self._sql(f"SELECT {_GRANT_COLUMNS} FROM approval_grants WHERE id = ?"), (grant_id,))
        return _grant_from_row(rows[0]) if rows else None

    def list_grants(self, active_at: float | None = None, limit: int = DEFAULT_LIST_LIMIT) -> list[Grant]:
        if active_at is not None:
            rows = self._query(self._sql(f"SELECT {_GRANT_COLUMNS} FROM approval_grants "
                                         f"WHERE revoked_at IS NULL AND expires_at > ? ORDER BY expires_at, id"),
                               (active_at,))
        else:
            rows = self._query(self._sql(f"SELECT {_GRANT_COLUMNS} FROM approval_grants "
                                         f"ORDER BY starts_at DESC, id LIMIT ?"), (limit,))
        return [_grant_from_row(row) for row in rows]

    def expired_unnoticed(self, now: float) -> list[Grant]:
        rows = self._query(self._sql(f"SELECT {_GRANT_COLUMNS} FROM approval_grants WHERE revoked_at IS NULL "
                                     f"AND expired_notified = ? AND expires_at <= ? ORDER BY expires_at, id"),
                           (False, now))
        return [_grant_from_row(row) for row in rows]

    def revision(self) -> int:
        (row,) = self._query("SELECT value FROM approval_meta WHERE name = 'revision'")
        return int(row[0])


class NullListener:
    def stop(self) -> None:
        pass


class SqliteStore(SqlStore):
    """One SQLite file (WAL mode) for a single gateway node; one connection shared by threads under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below, nothing implicit.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            (mode,) = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (journal_mode is {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")  # a grant or a decision once answered must survive
            self._create_schema()
        except BaseException:
            self._conn.close()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._conn.cursor()
            # IMMEDIATE takes the write lock now, so a transaction never fails half-way on a busy database.
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _is_pending_conflict(self, exc: Exception) -> bool:
        # "UNIQUE constraint failed: approval_requests.requester, approval_requests.scope"
        return isinstance(exc, sqlite3.IntegrityError) and "approval_requests.scope" in str(exc)

    def listen(self, callback: Callable[[], None]) -> Listener:
        """One node, one store object: nobody else writes, so there is nothing to hear."""
        return NullListener()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
