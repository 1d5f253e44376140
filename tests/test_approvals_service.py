"""The rules of approval, on a real SQLite store, a real compiled policy and a fake clock (no sleeps).

Who may ask for what, who may decide, for how long a grant runs, when it ends, and what events say so.
The end also covers the clocks the service can run on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.approvals import ApprovalError, ApprovalService, SqliteStore
from gateway.approvals.model import AccessRequest, Grant, Resource
from gateway.clock import FakeClock, FileClock, SystemClock, clock_from_spec
from gateway.policy import Engine, load_policies

T0 = 1_700_000_000.0

POLICY = """\
rules:
  - name: orders-read
    subjects: ["group:analysts"]
    resources: [{topic: orders}, {group: {prefix: "analysts-"}}]
    operations: [read]
    approval: required
    approvers: ["group:leads", "user:ops-*"]
    max_duration: 2h
  - name: audit-read
    subjects: ["group:analysts"]
    resources: [{topic: audit}]
    operations: [read]
    approval: required
    approvers: ["group:leads"]
  - name: payments-two-person
    subjects: ["group:analysts"]
    resources: [{topic: payments}]
    operations: [read, write]
    approval: required
    approvers: ["group:security"]
    approvals_required: 2
    max_duration: 1h
  - name: vault-nobody-decides
    subjects: ["group:analysts"]
    resources: [{topic: vault}]
    operations: [read]
    approval: required
  - name: public-read
    subjects: ["user:*"]
    resources: [{topic: public}]
    operations: [read]
  - name: no-secrets
    subjects: ["user:*"]
    resources: [{topic: secret}]
    operations: [read]
    effect: deny
  - name: secret-with-approval
    subjects: ["group:analysts"]
    resources: [{topic: secret}]
    operations: [read]
    approval: required
    approvers: ["group:leads"]
"""

ANALYST = ("carol", ("analysts",))
LEAD = ("dave", ("leads",))
OTHER_LEAD = ("erin", ("leads",))
OUTSIDER = ("mallory", ("analysts", "interns"))
ORDERS = [("topic", "orders"), ("group", "analysts-etl")]


class Policy:
    """The policy the service sees through engine(); tests rewrite it to change the policy under a request."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "policy.yaml"
        self.write(POLICY)

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self.engine = Engine(load_policies(self.path))


@pytest.fixture
def policy(tmp_path) -> Policy:
    return Policy(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def events() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "approvals.db")
    yield store
    store.close()


@pytest.fixture
def service(store, policy, clock, events) -> ApprovalService:
    return ApprovalService(store, lambda: policy.engine, clock, notify=lambda kind, event: events.append((kind, event)),
                           default_duration_s=900)


def ask(service: ApprovalService, resources=None, operations=("read",), duration_s=None, who=ANALYST,
        reason="incident 42", origin="api") -> tuple[AccessRequest, bool]:
    subject, groups = who
    asked = list(ORDERS if resources is None else resources)
    return service.request_access(subject, groups, asked, list(operations), duration_s, reason,
                                  "127.0.0.1:5555 client_id=etl", origin)


def approve(service: ApprovalService, request: AccessRequest, who=LEAD, duration_s=None):
    subject, groups = who
    return service.approve(request.id, subject, groups, duration_s)


@contextlib.contextmanager
def refused(status: int, match: str | None = None):
    """pytest.raises for an ApprovalError with this status (and a message matching `match`)."""
    with pytest.raises(ApprovalError, match=match) as info:
        yield info
    assert info.value.status == status, info.value.message


# -- asking


def test_a_request_waits_with_the_rules_that_gate_it(service, events):
    """A gated request is stored pending, with its gating rules and the rule's max_duration; one event says so."""
    request, created = ask(service)
    assert created
    assert request.id.startswith("req_") and len(request.id) == 20
    assert (request.requester, request.groups, request.status) == ("carol", ("analysts",), "pending")
    assert request.resources == (Resource("group", "analysts-etl"), Resource("topic", "orders"))
    assert request.rules == ("orders-read",)
    assert request.duration_s == 7200  # no duration asked: the rule's max_duration (2h)
    assert request.created_at == T0
    assert service.get_request(request.id) == request
    assert [kind for kind, _ in events] == ["access_request.created"]
    kind, event = events[0]
    assert event == {"type": kind, "at": T0, "actor": "carol", "request": request.to_json(), "grant": None}


def test_repeated_requests_are_one_request(service, events):
    """The Kafka path asks on every refused retry: the same requester and scope get the pending request back."""
    first, created = ask(service, origin="kafka")
    again, created_again = ask(service, resources=list(reversed(ORDERS)) + [ORDERS[0]], origin="kafka")
    assert created and not created_again
    assert again == first
    assert len(service.list_requests("pending")) == 1
    assert [kind for kind, _ in events] == ["access_request.created"]
    # Another scope is another request.
    other, created_other = ask(service, resources=[("topic", "orders")])
    assert created_other and other.id != first.id


def test_a_request_made_on_two_nodes_at_once_is_one_request(service, store, policy, clock, tmp_path):
    """Node b looked for a pending request before node a stored it: the store refuses b's copy and b answers
    with a's request (created=False)."""
    other_store = SqliteStore(tmp_path / "approvals.db")
    try:
        node_b = ApprovalService(other_store, lambda: policy.engine, clock)
        lookups = []

        def find_pending_first_too_early(*args):
            lookups.append(args)
            return None if len(lookups) == 1 else store.find_pending(*args)

        other_store.find_pending = find_pending_first_too_early
        first, _ = ask(service)
        again, created = ask(node_b)
        assert not created and again == first and len(lookups) == 2
        assert len(service.list_requests()) == 1
    finally:
        other_store.close()


def test_duration_defaults_to_the_smallest_maximum_and_is_clipped(service):
    """No duration: the smallest max_duration of the gating rules (default_duration_s where a rule has none);
    a longer one is cut to it; a shorter one is kept."""
    both = [("topic", "orders"), ("topic", "audit")]
    assert ask(service, resources=both)[0].duration_s == 900  # audit-read has no max_duration: the default
    assert ask(service, resources=[("topic", "orders")], duration_s=99_999)[0].duration_s == 7200
    assert ask(service, resources=[("group", "analysts-etl")], duration_s=60)[0].duration_s == 60


def test_what_the_policy_allows_or_refuses_is_not_asked_for(service):
    """Plainly allowed → 409 naming the rule; denied → 403 naming the deny; nothing matching → 403."""
    with refused(409, "already allowed by rule public-read"):
        ask(service, resources=[("topic", "public")])
    with refused(409, "already allowed by rule public-read"):
        ask(service, resources=[("topic", "public"), ("topic", "orders")])
    with refused(403, "denied by rule no-secrets"):
        ask(service, resources=[("topic", "secret")])
    with refused(403, "no rule allows write on topic 'orders'"):
        ask(service, resources=[("topic", "orders")], operations=["write"])
    with refused(403, "no rule allows read on topic 'orders' for user mallory2"):
        ask(service, resources=[("topic", "orders")], who=("mallory2", ("interns",)))
    assert service.list_requests() == []


@pytest.mark.parametrize("change,message", [
    ({"resources": [("cluster", "kafka-cluster")]}, "unknown resource type"),
    ({"resources": [("table", "orders")]}, "unknown resource type"),
    ({"resources": [("topic",)]}, "pair"),
    ({"resources": [("topic", "")]}, "non-empty"),
    ({"resources": [("topic", "a\x00b")]}, "control"),
    ({"resources": []}, "at least one resource"),
    ({"resources": [("topic", f"t{n}") for n in range(21)]}, "at most 20"),
    ({"operations": []}, "at least one operation"),
    ({"operations": ["all"]}, "unknown operation"),
    ({"operations": ["reed"]}, "unknown operation"),
    ({"operations": ["read", "write"], "resources": [("group", "analysts-x")]}, "write applies to none"),
    ({"reason": "x" * 1001}, "at most 1000"),
    ({"reason": None}, "reason"),
    ({"duration_s": 0}, "positive"),
    ({"duration_s": -60}, "positive"),
    ({"duration_s": 1.5}, "positive"),
    ({"duration_s": "60"}, "positive"),
    ({"duration_s": True}, "positive"),
    ({"origin": "ftp"}, "origin"),
])
def test_bad_input_is_refused(service, change, message):
    """Every malformed part of a request is a 400 with a message saying which."""
    with refused(400, message):
        ask(service, **change)
    assert service.list_requests() == []


def test_reason_of_exactly_the_limit_and_twenty_resources_are_fine(service):
    """The limits are inclusive: 1,000 characters of reason, 20 resources."""
    resources = [("group", f"analysts-{n}") for n in range(20)]
    request, created = ask(service, resources=resources, reason="x" * 1000)
    assert created and len(request.resources) == 20


# -- approving


def test_approval_starts_a_grant_for_the_duration_asked(service, clock, events):
    """One approver of the gating rule: the request is approved and a grant runs from now for its duration."""
    request, _ = ask(service, duration_s=1800)
    clock.advance(120)
    approved, grant = approve(service, request)
    assert approved.status == "approved" and approved.grant_id == grant.id
    assert (approved.decided_by, approved.decided_at, approved.decision_reason) == ("dave", T0 + 120, None)
    assert grant.id.startswith("grt_") and grant.request_id == request.id
    assert (grant.subject, grant.resources, grant.operations) == ("carol", request.resources, ("read",))
    assert (grant.starts_at, grant.expires_at, grant.approved_by) == (T0 + 120, T0 + 1920, ("dave",))
    assert service.get_grant(grant.id) == grant
    assert service.active_grants() == [grant]
    kind, event = events[-1]
    assert kind == "access_request.approved"
    assert event == {"type": kind, "at": T0 + 120, "actor": "dave", "request": approved.to_json(),
                     "grant": grant.to_json(T0 + 120)}


def test_an_approver_matched_by_a_user_glob_may_approve(service):
    """approvers: "user:ops-*" lets ops-anna approve without any group."""
    request, _ = ask(service)
    assert approve(service, request, who=("ops-anna", ()))[1] is not None


def test_nobody_approves_their_own_request(service, events):
    """The requester is refused, even as a member of the approver group; the request stays pending."""
    request, _ = ask(service, who=("carol", ("analysts", "leads")))
    with refused(403, "cannot decide it"):
        approve(service, request, who=("carol", ("analysts", "leads")))
    with refused(403, "cannot decide it"):
        service.deny(request.id, "carol", ("leads",), "no")
    assert service.get_request(request.id) == request
    assert service.active_grants() == []
    assert not service.may_decide(request, "carol", ("leads",))
    assert [kind for kind, _ in events] == ["access_request.created"]


def test_someone_outside_the_approvers_is_refused(service):
    """Neither a user nor a group named in approvers: 403, nothing changes."""
    request, _ = ask(service)
    for who in (OUTSIDER, ("ops", ()), ("opsx-anna", ("leadsx",))):
        with refused(403, "not an approver of rule orders-read"):
            approve(service, request, who=who)
        with refused(403, "not an approver"):
            service.deny(request.id, who[0], who[1], "no")
    assert service.get_request(request.id).status == "pending"
    assert service.may_decide(request, *LEAD) and not service.may_decide(request, *OUTSIDER)


def test_every_gating_rule_must_accept_the_approver(service):
    """A request gated by two rules needs an approver of both: ops-anna approves orders-read, not audit-read."""
    request, _ = ask(service, resources=[("topic", "orders"), ("topic", "audit")])
    assert request.rules == ("orders-read", "audit-read")
    with refused(403, "not an approver of rule audit-read"):
        approve(service, request, who=("ops-anna", ()))
    assert approve(service, request)[1] is not None


def test_a_rule_without_approvers_cannot_be_approved(service):
    """approval: required with no approvers: the request can be made, never decided."""
    request, _ = ask(service, resources=[("topic", "vault")])
    with refused(403, "vault-nobody-decides names no approvers"):
        approve(service, request)
    assert not service.may_decide(request, *LEAD)


def test_an_approver_may_shorten_but_not_lengthen(service):
    """A shorter duration is the grant's; a longer one is cut to the request's and the request says so."""
    short_request, _ = ask(service, resources=[("topic", "orders")], duration_s=3600)
    approved, grant = approve(service, short_request, duration_s=600)
    assert grant.expires_at - grant.starts_at == 600
    assert approved.decision_reason == "granted for 600 s of the 3600 s asked"

    long_request, _ = ask(service, resources=[("group", "analysts-etl")], duration_s=3600)
    approved, grant = approve(service, long_request, duration_s=86_400)
    assert grant.expires_at - grant.starts_at == 3600
    assert approved.decision_reason == "dave gave 86400 s, clipped to the 3600 s allowed"
    assert approved.approvals[0].duration_s == 3600  # the approval records what was given after clipping
    with refused(400, "positive"):
        approve(service, ask(service, resources=[("topic", "audit")])[0], duration_s=0)


def test_a_lowered_max_duration_clips_a_waiting_request(service, policy):
    """The rule's max_duration at approval time wins over the one the request was made under."""
    request, _ = ask(service, resources=[("topic", "orders")])
    assert request.duration_s == 7200
    policy.write(POLICY.replace("max_duration: 2h", "max_duration: 30m"))
    approved, grant = approve(service, request)
    assert grant.expires_at - grant.starts_at == 1800
    assert approved.decision_reason == "granted for 1800 s of the 7200 s asked"


def test_only_pending_requests_are_decided(service):
    """Approving or denying a decided request is 409; an unknown or malformed id is 404."""
    request, _ = ask(service)
    approve(service, request)
    with refused(409, "is approved, not pending"):
        approve(service, request, who=OTHER_LEAD)
    with refused(409, "is approved, not pending"):
        service.deny(request.id, *OTHER_LEAD, "too late")
    for unknown in ("req_ffffffffffffffff", "req_' OR 1=1 --", "", "x" * 5000):
        with refused(404):
            service.approve(unknown, *LEAD)
        with refused(404):
            service.get_request(unknown)


def test_deny(service, events):
    """An approver denies with a reason (required); the request is closed and the same scope may be asked again."""
    request, _ = ask(service)
    with refused(400, "give a reason"):
        service.deny(request.id, *LEAD, "  ")
    denied = service.deny(request.id, *LEAD, "not during the freeze")
    assert (denied.status, denied.decided_by, denied.decision_reason) == ("denied", "dave", "not during the freeze")
    assert denied.grant_id is None and service.active_grants() == []
    assert events[-1][0] == "access_request.denied" and events[-1][1]["request"] == denied.to_json()
    assert events[-1][1]["actor"] == "dave"
    again, created = ask(service)
    assert created and again.id != request.id


def test_two_person_rule(service, clock, events):
    """approvals_required: 2 — one approval keeps the request pending with no grant; the same approver again is
    409; a second distinct approver starts the grant at the last approval, for the shortest duration given."""
    request, _ = ask(service, resources=[("topic", "payments")], operations=["read", "write"])
    assert request.duration_s == 3600
    first_approver, second_approver = ("sam", ("security",)), ("tess", ("security",))
    pending, grant = approve(service, request, who=first_approver, duration_s=1200)
    assert grant is None and pending.status == "pending"
    assert [(a.approver, a.at, a.duration_s) for a in pending.approvals] == [("sam", T0, 1200)]
    assert service.active_grants() == []
    assert "approval 1 of 2" in pending.decision_reason
    assert [kind for kind, _ in events] == ["access_request.created"]
    with refused(409, "sam has already approved"):
        approve(service, request, who=first_approver)
    clock.advance(300)
    approved, grant = approve(service, request, who=second_approver)
    assert approved.status == "approved" and [a.approver for a in approved.approvals] == ["sam", "tess"]
    assert grant.approved_by == ("sam", "tess")
    assert (grant.starts_at, grant.expires_at) == (T0 + 300, T0 + 300 + 1200)
    assert [kind for kind, _ in events] == ["access_request.created", "access_request.approved"]


def test_two_approvers_at_once_make_one_grant(service):
    """Decisions are serialised: two approvers approving the same request together yield exactly one grant."""
    request, _ = ask(service)
    barrier = threading.Barrier(8)
    outcomes: list[object] = []

    def decide(n: int) -> None:
        barrier.wait()
        try:
            outcomes.append(approve(service, request, who=(f"lead{n}", ("leads",)))[1])
        except ApprovalError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grants = [outcome for outcome in outcomes if isinstance(outcome, Grant)]
    assert len(grants) == 1 and sorted(o for o in outcomes if o is not grants[0]) == [409] * 7
    assert service.list_grants(active_only=False) == grants


def test_two_services_on_one_database_make_one_grant(store, policy, clock, tmp_path):
    """Two gateway processes (two services, two store objects, one SQLite file) deciding from the same read: the
    store's compare-and-set lets one through and the other gets 409."""
    other_store = SqliteStore(tmp_path / "approvals.db")
    try:
        node_a = ApprovalService(store, lambda: policy.engine, clock)
        node_b = ApprovalService(other_store, lambda: policy.engine, clock)
        request, _ = ask(node_a)
        read_by_b = node_b.get_request(request.id)
        approve(node_a, request)
        other_store.get_request = lambda request_id: read_by_b  # node b read before node a's approval landed
        with refused(409, "elsewhere meanwhile"):
            approve(node_b, read_by_b, who=OTHER_LEAD)
        assert len(node_a.list_grants(active_only=False)) == 1
    finally:
        other_store.close()


# -- revoking and expiring


def test_revoke_by_an_approver_or_the_grantee_only(service, clock, events):
    """An approver of the gating rule may revoke, so may the grantee (giving access up); nobody else; twice is 409."""
    first, _ = ask(service, resources=[("topic", "orders")])
    _, grant = approve(service, first)
    with refused(403, "only its grantee or an approver of rule orders-read"):
        service.revoke(grant.id, *OUTSIDER, "because")
    clock.advance(60)
    revoked = service.revoke(grant.id, *OTHER_LEAD, "incident over")
    assert (revoked.revoked_at, revoked.revoked_by, revoked.revoke_reason) == (T0 + 60, "erin", "incident over")
    assert revoked.status(clock.now()) == "revoked"
    assert service.get_grant(grant.id) == revoked and service.active_grants() == []
    kind, event = events[-1]
    assert kind == "grant.revoked" and event["grant"]["status"] == "revoked" and event["actor"] == "erin"
    assert event["request"]["id"] == first.id
    with refused(409, "is revoked, not active"):
        service.revoke(grant.id, *LEAD, "again")

    second, _ = ask(service, resources=[("group", "analysts-etl")])
    _, grant = approve(service, second)
    given_up = service.revoke(grant.id, "carol", ("analysts",), "")
    assert given_up.revoked_by == "carol" and given_up.revoke_reason is None
    with refused(404):
        service.revoke("grt_ffffffffffffffff", *LEAD, "")


def test_an_expired_grant_cannot_be_revoked(service, clock):
    """Revoking applies to active grants only."""
    _, grant = approve(service, ask(service, duration_s=60)[0])
    clock.advance(60)
    with refused(409, "is expired, not active"):
        service.revoke(grant.id, *LEAD, "late")


def test_expiry_is_announced_once(service, clock, events):
    """expire_due sends grant.expired once per grant, only after its expiry; revoked grants never expire."""
    _, short = approve(service, ask(service, resources=[("topic", "orders")], duration_s=60)[0])
    _, long = approve(service, ask(service, resources=[("group", "analysts-etl")], duration_s=600)[0])
    _, revoked = approve(service, ask(service, resources=[("topic", "audit")], duration_s=30)[0])
    service.revoke(revoked.id, *LEAD, "")
    assert service.next_expiry() == T0 + 60
    clock.advance(59)
    assert service.expire_due() == []
    clock.advance(1)
    before = len(events)
    expired = service.expire_due()
    assert [g.id for g in expired] == [short.id] and expired[0].expired_notified
    assert [kind for kind, _ in events[before:]] == ["grant.expired"]
    event = events[-1][1]
    assert event["actor"] is None and event["grant"]["status"] == "expired" and event["grant"]["id"] == short.id
    assert service.expire_due() == [] and len(events) == before + 1
    assert service.next_expiry() == T0 + 600 and [g.id for g in service.active_grants()] == [long.id]
    clock.advance(10_000)
    assert [g.id for g in service.expire_due()] == [long.id]
    assert service.expire_due() == []
    assert service.next_expiry() is None and service.active_grants() == []
    assert len(service.list_grants(active_only=False)) == 3


def test_a_clock_that_cannot_tell_the_time_fails_closed(service, clock, events):
    """With the clock at inf (FileClock's answer for a missing file) no grant is active, nothing is recorded (a
    grant starting at infinity would never end: 503), and no expiry is announced (they come once it recovers)."""
    waiting, _ = ask(service, resources=[("topic", "orders")])
    _, grant = approve(service, ask(service, resources=[("topic", "audit")], duration_s=60)[0])
    clock.set(math.inf)
    assert service.active_grants() == [] and service.next_expiry() is None
    with refused(503, "clock"):
        approve(service, waiting)
    with refused(503, "clock"):
        ask(service, resources=[("group", "analysts-etl")])
    before = len(events)
    assert service.expire_due() == [] and len(events) == before
    assert service.get_request(waiting.id).status == "pending"
    clock.set(T0 + 60)
    assert [g.id for g in service.expire_due()] == [grant.id]


def test_a_restarted_service_finds_pending_requests_and_grants(service, policy, clock, tmp_path):
    """Everything lives in the store: a new service on a new store object over the same file sees it all."""
    pending, _ = ask(service, resources=[("topic", "orders")])
    _, grant = approve(service, ask(service, resources=[("topic", "audit")])[0])
    restarted_store = SqliteStore(tmp_path / "approvals.db")
    try:
        restarted = ApprovalService(restarted_store, lambda: policy.engine, clock)
        assert restarted.list_requests("pending") == [pending]
        assert restarted.active_grants() == [grant]
        assert approve(restarted, pending)[1] is not None
    finally:
        restarted_store.close()


# -- the policy changing under a waiting request


def test_a_removed_gating_rule_blocks_the_decision(service, policy):
    """The rule that gated the request is gone: approving or denying is 409 saying the policy changed."""
    request, _ = ask(service, resources=[("topic", "audit")])
    policy.write(POLICY.replace("name: audit-read", "name: audit-read-old").replace("{topic: audit}", "{topic: x}"))
    with refused(409, "policy changed since .*no rule allows read on topic 'audit'"):
        approve(service, request)
    with refused(409, "policy changed"):
        service.deny(request.id, *LEAD, "no")
    assert service.get_request(request.id).status == "pending"
    assert not service.may_decide(request, *LEAD)


def test_a_rule_no_longer_gated_blocks_the_decision(service, policy):
    """The gating rule became a plain allow (or a deny now wins): 409, no grant."""
    request, _ = ask(service, resources=[("topic", "audit")])
    policy.write(POLICY.replace("""    resources: [{topic: audit}]
    operations: [read]
    approval: required
    approvers: ["group:leads"]
""", """    resources: [{topic: audit}]
    operations: [read]
"""))
    with refused(409, "already allowed by rule audit-read"):
        approve(service, request)
    policy.write(POLICY.replace("[{topic: secret}]", "[{topic: secret}, {topic: audit}]"))
    with refused(409, "denied by rule no-secrets"):
        approve(service, request)
    assert service.active_grants() == []


def test_changed_approvers_apply_to_a_waiting_request(service, policy):
    """Approvers are those of the current policy: a lead removed from the rule can no longer approve."""
    request, _ = ask(service, resources=[("topic", "audit")])
    policy.write(POLICY.replace('approvers: ["group:leads"]\n  - name: payments', 'approvers: ["group:security"]\n'
                                                                                 '  - name: payments'))
    with refused(403, "not an approver of rule audit-read"):
        approve(service, request)
    assert approve(service, request, who=("sam", ("security",)))[1] is not None


# -- events, listings, JSON


def test_a_failing_notify_does_not_undo_the_decision(store, policy, clock, caplog):
    """The decision is stored before the event is sent: a notify that raises is logged, the call succeeds."""

    def broken(kind, event):
        raise RuntimeError("webhook queue full")

    service = ApprovalService(store, lambda: policy.engine, clock, notify=broken)
    with caplog.at_level(logging.ERROR, "streamward.approvals"):
        request, created = ask(service)
        _, grant = approve(service, request)
    assert created and grant is not None and "access_request.approved" in caplog.text


def test_listings(service):
    """list_requests filters by status (400 for an unknown one); list_grants shows active or all grants."""
    first, _ = ask(service, resources=[("topic", "orders")])
    second, _ = ask(service, resources=[("topic", "audit")])
    service.deny(second.id, *LEAD, "no")
    assert {r.id for r in service.list_requests()} == {first.id, second.id}
    assert [r.id for r in service.list_requests("denied")] == [second.id]
    with refused(400, "status must be one of"):
        service.list_requests("maybe")
    _, grant = approve(service, first)
    assert service.list_grants() == [grant] == service.list_grants(active_only=True)


def test_json_has_exactly_the_api_keys(service, clock):
    """The HTTP API and the webhooks depend on these keys; a grant's status is computed at serialisation time."""
    request, _ = ask(service, resources=[("topic", "payments")])
    request, _ = approve(service, request, who=("sam", ("security",)))
    assert list(request.to_json()) == [
        "id", "requester", "groups", "resources", "operations", "duration_s", "reason", "client", "origin", "rules",
        "status", "created_at", "approvals", "decided_by", "decided_at", "decision_reason", "grant_id"]
    assert request.to_json()["resources"] == [{"type": "topic", "name": "payments"}]
    assert request.to_json()["approvals"] == [{"approver": "sam", "at": T0, "duration_s": 3600}]
    _, grant = approve(service, request, who=("tess", ("security",)))
    assert list(grant.to_json(T0)) == [
        "id", "request_id", "subject", "resources", "operations", "starts_at", "expires_at", "approved_by", "status",
        "revoked_at", "revoked_by", "revoke_reason"]
    assert grant.to_json(T0)["status"] == "active" and grant.to_json(T0 + 3600)["status"] == "expired"


def test_a_grant_covers_what_was_approved_and_what_that_implies():
    """covers: same subject, listed resource, listed operation or one it implies (as the policy engine does)."""
    grant = Grant(id="grt_0000000000000001", request_id="req_0000000000000001", subject="carol",
                  resources=(Resource("topic", "orders"), Resource("group", "etl")),
                  operations=("read", "write", "alter_configs"), starts_at=T0, expires_at=T0 + 60, approved_by=("d",))
    for resource_type, name, operation in [("topic", "orders", "read"), ("topic", "orders", "write"),
                                           ("topic", "orders", "describe"), ("topic", "orders", "describe_configs"),
                                           ("group", "etl", "read"), ("group", "etl", "describe"),
                                           ("cluster", "kafka-cluster", "idempotent_write")]:
        assert grant.covers("carol", resource_type, name, operation), (resource_type, name, operation)
    for subject, resource_type, name, operation in [
        ("mallory", "topic", "orders", "read"),  # someone else
        ("carol", "topic", "orders2", "read"),  # another topic
        ("carol", "group", "orders", "read"),  # the name, as another type
        ("carol", "topic", "orders", "delete"),  # not granted, not implied
        ("carol", "group", "etl", "write"),  # meaningless for a group
        ("carol", "cluster", "kafka-cluster", "alter"),
        ("carol", "cluster", "other", "idempotent_write"),
    ]:
        assert not grant.covers(subject, resource_type, name, operation), (subject, resource_type, name, operation)
    read_only = replace(grant, operations=("read",))
    assert not read_only.covers("carol", "cluster", "kafka-cluster", "idempotent_write")
    assert not read_only.covers("carol", "topic", "orders", "describe_configs")


# -- clocks


def test_fake_clock_moves_only_when_told():
    clock = FakeClock(100)
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.set(50)
    assert clock.now() == 50.0


def test_file_clock_reads_the_file_and_fails_closed(tmp_path, caplog):
    """The time is the number in the file, re-read at most every refresh; a missing file or garbage is inf, logged
    once per stretch of failures."""
    path = tmp_path / "now"
    clock = FileClock(path, refresh_s=0)
    with caplog.at_level(logging.ERROR, "streamward.clock"):
        assert clock.now() == math.inf  # missing
        assert clock.now() == math.inf
        for garbage in (b"soon", b"nan", b"-inf", b"-5", b"1" * 100, b"\xff\xfe"):
            path.write_bytes(garbage)
            assert clock.now() == math.inf, garbage
    assert caplog.text.count("every grant counts as expired") == 1
    path.write_text("1700000000.5\n")
    assert clock.now() == 1_700_000_000.5
    path.write_text("junk")
    caplog.clear()
    with caplog.at_level(logging.ERROR, "streamward.clock"):
        assert clock.now() == math.inf
    assert "every grant counts as expired" in caplog.text

    cached = FileClock(path, refresh_s=3600)
    path.write_text("10")
    assert cached.now() == 10.0
    path.write_text("20")
    assert cached.now() == 10.0  # within the refresh interval: not re-read


def test_clock_from_spec(tmp_path):
    assert isinstance(clock_from_spec(None), SystemClock) and isinstance(clock_from_spec("system"), SystemClock)
    clock = clock_from_spec(f"file:{tmp_path / 'now'}")
    assert isinstance(clock, FileClock) and clock.path == tmp_path / "now"
    for bad in ("file:", "fake", "sytem", ""):
        with pytest.raises(ValueError, match="unknown clock"):
            clock_from_spec(bad)
