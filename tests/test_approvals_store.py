"""The approvals' stores: SQLite and PostgreSQL keep the same state and refuse the same stale writes.

Every test of the Store protocol runs against both (the `store` parameter); the PostgreSQL ones use a
real server (tests/postgres_fixtures.py), each test in a database of its own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace

import psycopg
import pytest

from gateway.approvals.model import AccessRequest, Approval, Grant, Resource
from gateway.approvals.postgres import PostgresStore
from gateway.approvals.store import PendingExists, SqliteStore, StoreError
from tests.postgres_fixtures import local_postgres
from tests.waiting import wait_until

T0 = 1_700_000_000.0
ORDERS = Resource("topic", "orders")
GROUP = Resource("group", "analysts-1")


def make_request(id_: str = "req_0000000000000001", requester: str = "carol", **fields) -> AccessRequest:
    values = dict(id=id_, requester=requester, groups=("analysts",), resources=(GROUP, ORDERS), operations=("read",),
                  duration_s=3600, reason="incident 42", client="127.0.0.1:5555 client_id=etl", origin="kafka",
                  rules=("orders-read",), status="pending", created_at=T0)
    return AccessRequest(**{**values, **fields})


def make_grant(id_: str = "grt_0000000000000001", request_id: str = "req_0000000000000001", **fields) -> Grant:
    values = dict(id=id_, request_id=request_id, subject="carol", resources=(GROUP, ORDERS), operations=("read",),
                  starts_at=T0, expires_at=T0 + 600, approved_by=("dave",))
    return Grant(**{**values, **fields})


def approve(store, request: AccessRequest, grant: Grant) -> AccessRequest:
    approved = replace(request, status="approved", approvals=(Approval("dave", T0, 600),), decided_by="dave",
                       decided_at=T0, grant_id=grant.id)
    assert store.update_request(approved, request, grant)
    return approved


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path):
    """A function opening a new store object on the test's database: call it twice for two nodes, or a restart."""
    if request.param == "sqlite":
        path = tmp_path / "approvals.db"

        def factory():
            return SqliteStore(path)
    else:
        url = request.getfixturevalue("postgres_db")

        def factory():
            return PostgresStore(url)
    opened = []

    def open_store_():
        store = factory()
        opened.append(store)
        return store

    open_store_.kind = request.param
    yield open_store_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    return open_store()


def test_a_request_reads_back_as_written(store):
    """Every field survives the round trip, None and non-ASCII text included."""
    request = make_request(reason="Störung «42»", approvals=(Approval("dave", T0 + 1.25, 1800),),
                           decision_reason="approval 1 of 2 recorded")
    store.insert_request(request)
    assert store.get_request(request.id) == request
    assert store.get_request("req_ffffffffffffffff") is None


def test_find_pending_matches_the_same_scope_in_any_order(store):
    """Dedup looks for the same requester and the same set of resources and operations, nothing else."""
    request = make_request()
    store.insert_request(request)
    assert store.find_pending("carol", [ORDERS, GROUP, ORDERS], ["read", "read"]) == request
    assert store.find_pending("carol", [ORDERS], ["read"]) is None
    assert store.find_pending("carol", [ORDERS, GROUP], ["read", "describe"]) is None
    assert store.find_pending("erin", [ORDERS, GROUP], ["read"]) is None


def test_one_pending_request_per_requester_and_scope(store):
    """A second pending request for the same scope is refused; once the first is decided, a new one may wait."""
    first = make_request()
    store.insert_request(first)
    with pytest.raises(PendingExists):
        store.insert_request(make_request("req_0000000000000002", resources=(ORDERS, GROUP)))
    store.insert_request(make_request("req_0000000000000003", requester="erin"))  # another requester: fine
    assert store.update_request(replace(first, status="denied", decided_by="dave", decided_at=T0), first)
    store.insert_request(make_request("req_0000000000000004"))
    assert store.find_pending("carol", [ORDERS, GROUP], ["read"]).id == "req_0000000000000004"


def test_update_request_is_compare_and_set(store):
    """An update built on a stale read changes nothing, and its grant is not inserted either."""
    request = make_request()
    store.insert_request(request)
    first_approval = replace(request, approvals=(Approval("dave", T0, 600),))
    assert store.update_request(first_approval, request)
    # A second approver who read the request before the first approval landed:
    stale = replace(request, status="approved", approvals=(Approval("erin", T0, 600),), grant_id="grt_0000000000000001")
    assert not store.update_request(stale, request, make_grant(approved_by=("erin",)))
    assert store.get_request(request.id) == first_approval
    assert store.get_grant("grt_0000000000000001") is None
    # Built on the current state, it goes through, grant and all, in one transaction.
    grant = make_grant(approved_by=("dave", "erin"))
    done = replace(first_approval, status="approved", approvals=(*first_approval.approvals, Approval("erin", T0, 300)),
                   grant_id=grant.id)
    assert store.update_request(done, first_approval, grant)
    assert store.get_request(request.id) == done
    assert store.get_grant(grant.id) == grant
    assert not store.update_request(replace(done, status="denied"), first_approval)


def test_two_store_objects_cannot_both_decide(open_store):
    """Two nodes (two store objects) deciding the same request from the same read: exactly one wins."""
    node_a, node_b = open_store(), open_store()
    request = make_request()
    node_a.insert_request(request)
    seen_by_b = node_b.get_request(request.id)
    approved = replace(request, status="approved", grant_id="grt_0000000000000001")
    assert node_a.update_request(approved, request, make_grant())
    denied = replace(seen_by_b, status="denied", decided_by="erin")
    assert not node_b.update_request(denied, seen_by_b)
    assert node_b.get_request(request.id).status == "approved"


def test_update_grant_is_compare_and_set(store):
    """A revoked grant is final, and the expiry is noted once: stale updates change nothing."""
    request = make_request()
    store.insert_request(request)
    grant = make_grant()
    approve(store, request, grant)
    noted = replace(grant, expired_notified=True)
    assert store.update_grant(noted, grant)
    assert not store.update_grant(noted, grant)  # the second node noting the same expiry
    revoked = replace(grant, revoked_at=T0 + 5, revoked_by="dave", revoke_reason="done")
    assert not store.update_grant(revoked, grant)  # read before the expiry was noted
    assert store.update_grant(revoked, noted)
    assert store.get_grant(grant.id) == revoked
    assert not store.update_grant(replace(revoked, revoke_reason="again"), revoked)
    assert store.get_grant(grant.id) == revoked


def test_listing_requests_by_status_newest_first(store):
    """list_requests filters on status, puts the newest first and honours the limit."""
    for n in range(5):
        store.insert_request(make_request(f"req_000000000000000{n}", requester=f"user{n}", created_at=T0 + n))
    old = store.get_request("req_0000000000000001")
    assert store.update_request(replace(old, status="denied"), old)
    assert [r.id for r in store.list_requests()] == [f"req_000000000000000{n}" for n in (4, 3, 2, 1, 0)]
    assert [r.id for r in store.list_requests("pending", limit=2)] == ["req_0000000000000004", "req_0000000000000003"]
    assert [r.id for r in store.list_requests("denied")] == ["req_0000000000000001"]
    assert store.list_requests("approved") == []


def test_grants_by_activity_and_expiry(store):
    """active_at leaves out expired and revoked grants; expired_unnoticed finds expiries not yet noted."""
    grants = {
        "soon": make_grant("grt_000000000000000a", "req_000000000000000a", expires_at=T0 + 100),
        "later": make_grant("grt_000000000000000b", "req_000000000000000b", expires_at=T0 + 900),
        "revoked": make_grant("grt_000000000000000c", "req_000000000000000c", expires_at=T0 + 900),
        "noted": make_grant("grt_000000000000000d", "req_000000000000000d", expires_at=T0 + 50),
    }
    for n, grant in enumerate(grants.values()):
        request = make_request(grant.request_id, requester=f"user{n}")
        store.insert_request(request)
        approve(store, request, grant)
    assert store.update_grant(replace(grants["revoked"], revoked_at=T0 + 1, revoked_by="x"), grants["revoked"])
    assert store.update_grant(replace(grants["noted"], expired_notified=True), grants["noted"])

    assert [g.id for g in store.list_grants(active_at=T0)] == [grants[k].id for k in ("noted", "soon", "later")]
    assert [g.id for g in store.list_grants(active_at=T0 + 100)] == [grants["later"].id]  # expiry is exclusive
    assert len(store.list_grants()) == 4
    assert store.expired_unnoticed(T0 + 99) == []
    assert [g.id for g in store.expired_unnoticed(T0 + 100)] == [grants["soon"].id]
    assert [g.id for g in store.expired_unnoticed(T0 + 10_000)] == [grants["soon"].id, grants["later"].id]


def test_restart_finds_pending_requests_and_grants(open_store):
    """A new store object on the same database (a restarted gateway) sees everything the old one wrote."""
    before = open_store()
    pending = make_request("req_0000000000000001")
    decided = make_request("req_0000000000000002", requester="erin")
    grant = make_grant(request_id=decided.id, subject="erin")
    before.insert_request(pending)
    before.insert_request(decided)
    decided = approve(before, decided, grant)
    before.close()

    after = open_store()
    assert after.list_requests("pending") == [pending]
    assert after.get_request(decided.id) == decided
    assert after.list_grants(active_at=T0) == [grant]


def test_every_write_moves_the_revision_and_a_refused_one_does_not(store):
    """The revision is what a reloading node compares: a write changes it, a refused compare-and-set does not."""
    start = store.revision()
    request = make_request()
    store.insert_request(request)
    assert store.revision() == start + 1
    assert not store.update_request(replace(request, status="denied"), replace(request, status="approved"))
    assert store.revision() == start + 1
    with pytest.raises(PendingExists):
        store.insert_request(make_request("req_0000000000000002"))
    assert store.revision() == start + 1


def test_a_newer_schema_is_refused(open_store):
    """A database written by a newer gateway is not used by this one."""
    open_store().close()
    if open_store.kind == "sqlite":
        path = open_store().path
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE approval_meta SET value = 99 WHERE name = 'schema_version'")
    else:
        with psycopg.connect(open_store().url, autocommit=True) as conn:
            conn.execute("UPDATE approval_meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        open_store()


def test_sqlite_uses_wal_and_waits_when_busy(tmp_path):
    """The SQLite file is in WAL mode and a writer waits for another connection's lock instead of failing."""
    store = SqliteStore(tmp_path / "a.db")
    try:
        with sqlite3.connect(tmp_path / "a.db") as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other = sqlite3.connect(tmp_path / "a.db", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
        started = time.monotonic()
        store.insert_request(make_request())  # blocked until the other connection commits
        assert time.monotonic() - started >= 0.25
        assert store.get_request("req_0000000000000001") is not None
        other.close()
        assert store.listen(lambda: None).stop() is None  # one node: listening is a no-op
    finally:
        store.close()


# -- PostgreSQL LISTEN/NOTIFY



def start_listening(store: PostgresStore) -> tuple[list[float], object]:
    heard: list[float] = []
    listener = store.listen(lambda: heard.append(time.monotonic()))
    assert listener.ready.wait(5), "the listener did not start listening"
    return heard, listener


def test_postgres_write_wakes_another_nodes_listener(postgres_db):
    """A write through one PostgresStore calls the listen callback of a second one within a second."""
    writer, reader = PostgresStore(postgres_db), PostgresStore(postgres_db)
    try:
        heard, _listener = start_listening(reader)
        assert wait_until(lambda: len(heard) == 1, 1)  # the catch-up call on (re)connect
        written = time.monotonic()
        writer.insert_request(make_request())
        assert wait_until(lambda: len(heard) == 2, 1), "no notification within 1 s"
        assert heard[1] - written < 1
        # A refused compare-and-set writes nothing, so nobody is woken.
        assert not writer.update_request(make_request(status="denied"), make_request(status="approved"))
        time.sleep(0.3)
        assert len(heard) == 2
    finally:
        writer.close()
        reader.close()


def test_postgres_listener_comes_back_after_the_server_restarts():
    """The listener survives the server going away: it reconnects, calls back, and hears later writes."""
    with local_postgres() as server:
        store = PostgresStore(server.url)
        try:
            heard, listener = start_listening(store)
            server.stop()
            assert wait_until(lambda: not listener.ready.is_set(), 5), "the listener did not notice the server left"
            server.start()
            assert wait_until(listener.ready.is_set, 15), "the listener did not reconnect"
            calls = len(heard)
            assert calls >= 2  # the first connect, and the catch-up after reconnecting
            store.insert_request(make_request())  # the store's own connection reopens too
            assert wait_until(lambda: len(heard) > calls, 1)
        finally:
            store.close()
