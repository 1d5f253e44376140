"""The worker side of just-in-time access: the grant table in shared memory, its per-worker index, and the
channel that turns refusals into access requests without ever blocking a worker."""

from __future__ import annotations

import os
import socket
import time

import orjson
import pytest

from gateway.approvals.access import AccessInbox, AccessRequester, channel, operations_to_request
from gateway.approvals.grants import GrantCache, GrantTable
from gateway.approvals.model import Grant, Resource
from gateway.shm import HEADER_SIZE, SLOT_HEADER

T0 = 1_700_000_000.0


def grant(grant_id: str = "grt_1", subject: str = "alice", resources=(("topic", "payments"),),
          operations=("read",), expires_at: float = T0 + 60) -> Grant:
    return Grant(id=grant_id, request_id="req_1", subject=subject,
                 resources=tuple(Resource(t, n) for t, n in resources), operations=tuple(operations),
                 starts_at=T0, expires_at=expires_at, approved_by=("bob",), revoked_at=None, revoked_by=None,
                 revoke_reason=None, expired_notified=False)


def test_a_published_grant_covers_its_operations_and_their_implications_only():
    table = GrantTable(64 * 1024)
    table.publish([grant(operations=("read",)), grant("grt_2", resources=(("topic", "orders"),),
                                                      operations=("write",))])
    cache = GrantCache(table)
    assert cache.find("alice", "topic", "payments", "read", T0).id == "grt_1"
    assert cache.find("alice", "topic", "payments", "describe", T0).id == "grt_1"  # read implies describe
    assert cache.find("alice", "topic", "payments", "write", T0) is None
    assert cache.find("alice", "topic", "payment", "read", T0) is None  # exact names, never prefixes
    assert cache.find("bob", "topic", "payments", "read", T0) is None  # the grantee only
    assert cache.find("alice", "cluster", "kafka-cluster", "idempotent_write", T0).id == "grt_2"


def test_a_grant_ends_at_its_expiry_on_the_readers_clock_without_a_new_publish():
    table = GrantTable(64 * 1024)
    table.publish([grant(expires_at=T0 + 60)])
    cache = GrantCache(table)
    assert cache.find("alice", "topic", "payments", "read", T0 + 59.9) is not None
    assert cache.find("alice", "topic", "payments", "read", T0 + 60) is None
    assert cache.active("grt_1", T0 + 59.9) and not cache.active("grt_1", T0 + 60)


def test_a_revoked_grant_disappears_at_the_next_publish():
    table = GrantTable(64 * 1024)
    table.publish([grant()])
    cache = GrantCache(table)
    assert cache.find("alice", "topic", "payments", "read", T0) is not None
    table.publish([])
    assert cache.refresh()
    assert cache.find("alice", "topic", "payments", "read", T0) is None
    assert not cache.active("grt_1", T0)


def test_the_longest_of_two_grants_is_used():
    table = GrantTable(64 * 1024)
    table.publish([grant("grt_short", expires_at=T0 + 10), grant("grt_long", expires_at=T0 + 100)])
    assert GrantCache(table).find("alice", "topic", "payments", "read", T0).id == "grt_long"


def test_workers_see_the_table_across_fork():
    table = GrantTable(64 * 1024)
    table.publish([grant()])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        found = GrantCache(table).find("alice", "topic", "payments", "read", T0)
        os.write(write_end, b"yes" if found is not None else b"no")
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 3) == b"yes"
    os.waitpid(pid, 0)


def test_a_corrupt_table_grants_nothing():
    table = GrantTable(64 * 1024)
    table.publish([grant()])
    slot = HEADER_SIZE + (1 & 1) * table._slot_size
    table._mm[slot + SLOT_HEADER.size + 5] ^= 0xFF
    assert GrantCache(table).find("alice", "topic", "payments", "read", T0) is None


def test_a_describe_refusal_asks_for_the_operations_that_imply_it():
    assert operations_to_request("describe", ("read",)) == ["read"]
    assert operations_to_request("describe", ("read", "write")) == ["read", "write"]
    assert operations_to_request("read", ("read", "write")) == ["read"]
    assert operations_to_request("describe", ()) == ["describe"]


def test_a_retrying_client_sends_one_request_not_one_per_retry():
    worker_end, supervisor_end = channel()
    now = [100.0]
    requester = AccessRequester(worker_end, clock=lambda: now[0])
    for _ in range(50):
        requester.want("alice", ("analysts",), "topic", "payments", ["read"], "rule", "127.0.0.1:1 client_id=x")
    supervisor_end.setblocking(False)
    messages = []
    with pytest.raises(BlockingIOError):
        while True:
            messages.append(orjson.loads(supervisor_end.recv(65536)))
    assert len(messages) == 1 and messages[0]["name"] == "payments" and messages[0]["operations"] == ["read"]
    now[0] += 31  # after the resend interval, a refusal asks again (the earlier request may have been denied)
    requester.want("alice", ("analysts",), "topic", "payments", ["read"], "rule", "c")
    assert orjson.loads(supervisor_end.recv(65536))["subject"] == "alice"


def test_a_full_channel_drops_instead_of_blocking_the_worker():
    worker_end, supervisor_end = channel()
    worker_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    requester = AccessRequester(worker_end)
    for i in range(2000):  # nobody reads the other end
        requester.want("alice", (), "topic", f"t{i}", ["read"], "rule", "c")
    assert requester.dropped > 0
    supervisor_end.close()


def test_the_inbox_survives_a_bad_message():
    worker_end, supervisor_end = channel()
    handled = []
    AccessInbox(supervisor_end, handled.append).start()
    worker_end.send(b"not json")
    AccessRequester(worker_end).want("alice", (), "topic", "t", ["read"], None, "c")
    deadline = time.monotonic() + 5
    while not handled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handled and handled[0]["subject"] == "alice"


APPROVAL_POLICY = """\
rules:
  - name: gated
    subjects: ["user:alice"]
    resources: [{topic: {prefix: "payments-"}}]
    operations: [read]
    approval: required
    approvers: ["user:bob"]
"""


def test_grants_that_do_not_fit_the_table_fail_closed(tmp_path, caplog):
    """Publishing the previous table would keep revoked grants alive: an over-full table grants nothing."""
    from gateway.approvals.runtime import Approvals
    from gateway.config import load_config
    from gateway.policy.engine import Engine
    from gateway.policy.loader import load_policies

    (tmp_path / "p.yaml").write_text(APPROVAL_POLICY)
    (tmp_path / "gateway.yaml").write_text(
        "listen: {host: 127.0.0.1, bootstrap_port: 9092, node_port_base: 9093}\n"
        "upstream: {bootstrap_servers: ['127.0.0.1:19092']}\n"
        f"approvals: {{data_dir: {tmp_path / 'data'}, max_bytes: 4096}}\n")
    engine = Engine(load_policies(tmp_path / "p.yaml"))
    approvals = Approvals(load_config(tmp_path / "gateway.yaml"), lambda: engine)
    approvals.start()
    try:
        service = approvals.service
        request, _ = service.request_access("alice", (), [("topic", "payments-0")], ["read"], 600, "r", "c", "api")
        service.approve(request.id, "bob", ())
        assert [row["id"] for row in approvals.table.read()[1]] == [service.active_grants()[0].id]
        for i in range(1, 40):  # about 150 bytes each: well past 4096
            request, _ = service.request_access("alice", (), [("topic", f"payments-{i}")], ["read"], 600, "r", "c",
                                                "api")
            service.approve(request.id, "bob", ())
        assert len(service.active_grants()) == 40
        assert approvals.table.read()[1] == []
        assert "no grant is honoured until they fit" in caplog.text
    finally:
        approvals.close()
