"""The rules of approval: who may ask for what, who may decide, and for how long a grant runs.

ApprovalService is the one door to the approvals' state: the admin HTTP API, the Kafka path (a refused
request that an approval could allow) and the supervisor's expiry timer all go through it. It checks
every request and every decision against the *current* policy (`engine()`), since the policy may change
while a request waits, takes every time from the injected clock, and serialises its writes under one
lock; the store's compare-and-set updates cover writers in other processes.

`notify(kind, event)` is called with the lock held, so events leave in the order the state changed:
it must not block (queue the event, deliver it elsewhere). Its failures are logged, never raised: the
decision is already stored.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from gateway.approvals.model import (
    ORIGINS,
    REQUEST_RESOURCE_TYPES,
    REQUEST_STATUSES,
    AccessRequest,
    Approval,
    Grant,
    Resource,
    new_grant_id,
    new_request_id,
)
from gateway.approvals.store import PendingExists, Store
from gateway.clock import Clock
from gateway.policy.engine import Engine, Matcher, compile_glob
from gateway.policy.model import OPERATIONS, SUPPORTED_OPERATIONS, Rule

log = logging.getLogger("streamward.approvals")

MAX_RESOURCES = 20
MAX_REASON_CHARS = 1000
MAX_NAME_CHARS = 1024  # a resource name, a subject or a group
MAX_CLIENT_CHARS = 300  # client descriptions carry a Kafka client_id, which the client chooses: cut, not refused
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID = re.compile(r"req_[0-9a-f]{16}")
_GRANT_ID = re.compile(r"grt_[0-9a-f]{16}")


class ApprovalError(Exception):
    """A refused call; `status` is what the HTTP API answers (400 bad input, 403 not allowed, 404 unknown id,
    409 wrong state, 503 no usable clock)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _NotGated(Exception):
    """The policy does not offer approval for part of a request; `allowed` when it allows it outright."""

    def __init__(self, message: str, allowed: bool) -> None:
        super().__init__(message)
        self.allowed = allowed


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> Matcher:
    return compile_glob(pattern)


def is_approver(rule: Rule, who: str, groups: Sequence[str]) -> bool:
    """Whether `who` (with these groups) matches one of the rule's `approvers` ("user:GLOB" / "group:GLOB")."""
    for approver in rule.approvers:
        kind, _, pattern = approver.partition(":")
        match = _glob(pattern)
        if kind == "user" and match(who) is not None:
            return True
        if kind == "group" and any(match(group) is not None for group in groups):
            return True
    return False


class ApprovalService:
    def __init__(self, store: Store, engine: Callable[[], Engine], clock: Clock,
                 notify: Callable[[str, dict], None] = lambda kind, event: None,
                 default_duration_s: int = 3600) -> None:
        if default_duration_s <= 0:
            raise ValueError("default_duration_s must be positive")
        self.store = store
        self.engine = engine
        self.clock = clock
        self.notify = notify
        self.default_duration_s = default_duration_s
        self._lock = threading.RLock()

    # -- asking

    def request_access(self, requester: str, groups: tuple[str, ...], resources: list[tuple[str, str]],
                       operations: list[str], duration_s: int | None, reason: str, client: str,
                       origin: str) -> tuple[AccessRequest, bool]:
        """A pending request for access the policy gates behind approval: (the request, whether it is new).

        The same requester asking again for the same resources and operations gets their pending request back.
        """
        requester = _name(requester, "requester")
        groups = _groups(groups)
        wanted = _resources(resources)
        ops = _operations(operations)
        _check_operations_apply(wanted, ops)
        reason = _reason(reason, required=False)
        if origin not in ORIGINS:
            raise ApprovalError(400, f"origin must be one of {', '.join(ORIGINS)}")
        if not isinstance(client, str):
            raise ApprovalError(400, "client must be a string")
        client = _CONTROL.sub("?", client)[:MAX_CLIENT_CHARS]
        asked = None if duration_s is None else _duration(duration_s)
        try:
            rules = _gating_rules(self.engine(), requester, groups, wanted, ops)
        except _NotGated as exc:
            raise ApprovalError(409 if exc.allowed else 403, str(exc)) from None
        longest = self._max_duration(rules)
        with self._lock:
            existing = self.store.find_pending(requester, wanted, ops)
            if existing is not None:
                return existing, False
            now = self._now()
            request = AccessRequest(
                id=new_request_id(), requester=requester, groups=groups, resources=wanted, operations=ops,
                duration_s=longest if asked is None else min(asked, longest), reason=reason, client=client,
                origin=origin, rules=tuple(rule.name for rule in rules), status="pending", created_at=now,
            )
            try:
                self.store.insert_request(request)
            except PendingExists:
                # Another gateway node stored the same request between our look-up and our insert.
                existing = self.store.find_pending(requester, wanted, ops)
                if existing is None:
                    raise ApprovalError(409, "an identical request was being decided at the same moment: "
                                             "ask again") from None
                return existing, False
            self._event("access_request.created", now, requester, request=request)
            return request, True

    # -- deciding

    def approve(self, request_id: str, approver: str, approver_groups: tuple[str, ...],
                duration_s: int | None = None) -> tuple[AccessRequest, Grant | None]:
        """Record `approver`'s approval; once the gating rules' approvals_required distinct approvers agree,
        the grant starts (returned), for the shortest duration any of them gave."""
        approver = _name(approver, "approver")
        groups = _groups(approver_groups)
        given = None if duration_s is None else _duration(duration_s)
        with self._lock:
            request = self._pending(request_id)
            rules = self._decider_rules(request, approver, groups)
            if any(approval.approver == approver for approval in request.approvals):
                raise ApprovalError(409, f"{approver} has already approved {request.id}: another approver must")
            now = self._now()
            limit = min(request.duration_s, self._max_duration(rules))
            notes = []
            if given is not None and given > limit:
                notes.append(f"{approver} gave {given} s, clipped to the {limit} s allowed")
            approvals = (*request.approvals, Approval(approver, now, limit if given is None else min(given, limit)))
            required = max(rule.approvals_required for rule in rules)
            if len(approvals) < required:
                notes.insert(0, f"approval {len(approvals)} of {required} recorded")
                updated = replace(request, approvals=approvals, decision_reason="; ".join(notes))
                self._save_request(updated, request)
                return updated, None
            # The policy may have lowered max_duration since an earlier approver gave theirs.
            duration = min(limit, *(approval.duration_s for approval in approvals))
            if duration < request.duration_s:
                notes.append(f"granted for {duration} s of the {request.duration_s} s asked")
            grant = Grant(id=new_grant_id(), request_id=request.id, subject=request.requester,
                          resources=request.resources, operations=request.operations, starts_at=now,
                          expires_at=now + duration, approved_by=tuple(approval.approver for approval in approvals))
            updated = replace(request, status="approved", approvals=approvals, decided_by=approver, decided_at=now,
                              decision_reason="; ".join(notes) or None, grant_id=grant.id)
            self._save_request(updated, request, grant)
            self._event("access_request.approved", now, approver, request=updated, grant=grant)
            return updated, grant

    def deny(self, request_id: str, approver: str, approver_groups: tuple[str, ...], reason: str) -> AccessRequest:
        approver = _name(approver, "approver")
        groups = _groups(approver_groups)
        reason = _reason(reason, required=True)
        with self._lock:
            request = self._pending(request_id)
            self._decider_rules(request, approver, groups)
            now = self._now()
            updated = replace(request, status="denied", decided_by=approver, decided_at=now, decision_reason=reason)
            self._save_request(updated, request)
            self._event("access_request.denied", now, approver, request=updated)
            return updated

    def revoke(self, grant_id: str, by: str, by_groups: tuple[str, ...], reason: str) -> Grant:
        """End an active grant now: its grantee may give it up, an approver of a rule that gated it may end it."""
        by = _name(by, "revoker")
        groups = _groups(by_groups)
        reason = _reason(reason, required=False)
        with self._lock:
            grant = self.get_grant(grant_id)
            now = self._now()
            status = grant.status(now)
            if status != "active":
                raise ApprovalError(409, f"grant {grant.id} is {status}, not active")
            request = self.store.get_request(grant.request_id)
            if by != grant.subject:
                rule_names = request.rules if request is not None else ()
                current = self.engine().rules
                # Any one of the rules will do: revoking only takes access away.
                if not any(is_approver(current[name], by, groups) for name in rule_names if name in current):
                    raise ApprovalError(403, f"{by} may not revoke grant {grant.id}: only its grantee or an "
                                             f"approver of rule {', '.join(rule_names) or '(none)'} may")
            updated = replace(grant, revoked_at=now, revoked_by=by, revoke_reason=reason or None)
            if not self.store.update_grant(updated, grant):
                raise ApprovalError(409, f"grant {grant.id} changed meanwhile (revoked or expired elsewhere)")
            self._event("grant.revoked", now, by, request=request, grant=updated)
            return updated

    def may_decide(self, request: AccessRequest, who: str, groups: tuple[str, ...]) -> bool:
        """Whether `who` may approve or deny this request under the current policy: not its requester, and an
        approver of every rule that gates it now. False too when the policy no longer gates it."""
        try:
            self._decider_rules(request, who, tuple(groups))
        except ApprovalError:
            return False
        return True

    # -- reading

    def get_request(self, request_id: str) -> AccessRequest:
        request = self.store.get_request(request_id) if _is_id(_REQUEST_ID, request_id) else None
        if request is None:
            raise ApprovalError(404, f"no access request {_shown(request_id)}")
        return request

    def list_requests(self, status: str | None = None) -> list[AccessRequest]:
        if status is not None and status not in REQUEST_STATUSES:
            raise ApprovalError(400, f"status must be one of {', '.join(REQUEST_STATUSES)}")
        return self.store.list_requests(status)

    def get_grant(self, grant_id: str) -> Grant:
        grant = self.store.get_grant(grant_id) if _is_id(_GRANT_ID, grant_id) else None
        if grant is None:
            raise ApprovalError(404, f"no grant {_shown(grant_id)}")
        return grant

    def list_grants(self, active_only: bool = True) -> list[Grant]:
        return self.active_grants() if active_only else self.store.list_grants()

    def active_grants(self) -> list[Grant]:
        """Every grant in force now: what the supervisor publishes to the workers."""
        return self.store.list_grants(active_at=self.clock.now())

    # -- time

    def expire_due(self) -> list[Grant]:
        """Note every grant that has run out and send "grant.expired" for each, once (on any node)."""
        expired = []
        with self._lock:
            now = self.clock.now()
            if not math.isfinite(now):
                return []  # a clock that cannot tell the time makes every grant look expired: announce none
            for grant in self.store.expired_unnoticed(now):
                noted = replace(grant, expired_notified=True)
                # Noted before the event, so a node that loses the race (or a crash) never sends it twice.
                if self.store.update_grant(noted, grant):
                    self._event("grant.expired", now, None, request=self.store.get_request(grant.request_id),
                                grant=noted)
                    expired.append(noted)
        return expired

    def next_expiry(self) -> float | None:
        """When the earliest active grant runs out: the supervisor's next call to expire_due."""
        return min((grant.expires_at for grant in self.active_grants()), default=None)

    # -- inside

    def _now(self) -> float:
        """The time to write into a request or a grant: refused when the clock cannot tell it (FileClock's inf),
        since a grant starting at infinity would never expire."""
        now = self.clock.now()
        if not math.isfinite(now):
            raise ApprovalError(503, "the gateway's clock cannot tell the time: no decision can be recorded now")
        return now

    def _max_duration(self, rules: Iterable[Rule]) -> int:
        return min(rule.max_duration_s or self.default_duration_s for rule in rules)

    def _pending(self, request_id: str) -> AccessRequest:
        request = self.get_request(request_id)
        if request.status != "pending":
            raise ApprovalError(409, f"request {request.id} is {request.status}, not pending")
        return request

    def _decider_rules(self, request: AccessRequest, who: str, groups: tuple[str, ...]) -> tuple[Rule, ...]:
        """The rules gating `request` now, once `who` is known to be allowed to decide it under every one."""
        if who == request.requester:
            raise ApprovalError(403, f"{who} asked for {request.id} and cannot decide it: another approver must")
        try:
            rules = _gating_rules(self.engine(), request.requester, request.groups, request.resources,
                                  request.operations)
        except _NotGated as exc:
            raise ApprovalError(409, f"the policy changed since {request.id} was made: {exc}") from None
        for rule in rules:
            if not rule.approvers:
                raise ApprovalError(403, f"rule {rule.name} names no approvers: nobody can decide what it gates")
            if not is_approver(rule, who, groups):
                raise ApprovalError(403, f"{who} is not an approver of rule {rule.name}")
        return rules

    def _save_request(self, updated: AccessRequest, expected: AccessRequest, grant: Grant | None = None) -> None:
        if not self.store.update_request(updated, expected, grant):
            raise ApprovalError(409, f"request {expected.id} was decided or approved elsewhere meanwhile: "
                                     f"look at it again")

    def _event(self, kind: str, now: float, actor: str | None, request: AccessRequest | None = None,
               grant: Grant | None = None) -> None:
        event: dict[str, Any] = {"type": kind, "at": now, "actor": actor,
                                 "request": None if request is None else request.to_json(),
                                 "grant": None if grant is None else grant.to_json(now)}
        try:
            self.notify(kind, event)
        except Exception:
            log.exception("approvals: sending the %s event failed", kind)


def _gating_rules(engine: Engine, requester: str, groups: tuple[str, ...], resources: Sequence[Resource],
                  operations: Sequence[str]) -> tuple[Rule, ...]:
    """The approval-gated rules that decide the (resource, operation) pairs asked, in policy order.

    _NotGated when the policy allows one of them outright or refuses it with no approval to offer.
    """
    view = engine.for_principal(requester, groups)
    names: set[str] = set()
    for resource in resources:
        for operation in operations:
            if operation not in SUPPORTED_OPERATIONS[resource.type]:
                continue
            decision = view.decide(resource.type, resource.name, operation)
            what = f"{operation} on {resource.type} {resource.name!r}"
            if decision.allowed:
                raise _NotGated(f"{what} is already allowed by rule {decision.rule}", allowed=True)
            if decision.rule is None:
                raise _NotGated(f"no rule allows {what} for user {requester}, with or without approval",
                                allowed=False)
            if not decision.approval_required:
                raise _NotGated(f"{what} is denied by rule {decision.rule}", allowed=False)
            names.add(decision.rule)
    return tuple(rule for rule in engine.rules.values() if rule.name in names)  # in policy order


# -- input checks: every value may come from an HTTP body or a Kafka client


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ApprovalError(400, f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_CHARS or _CONTROL.search(value):
        raise ApprovalError(400, f"{what} must be at most {MAX_NAME_CHARS} characters, none of them control characters")
    return value


def _groups(groups: object) -> tuple[str, ...]:
    if not isinstance(groups, (tuple, list)):
        raise ApprovalError(400, "groups must be a list of strings")
    return tuple(_name(group, "a group") for group in groups)


def _resources(resources: object) -> tuple[Resource, ...]:
    if not isinstance(resources, (list, tuple)) or not resources:
        raise ApprovalError(400, "name at least one resource")
    if len(resources) > MAX_RESOURCES:
        raise ApprovalError(400, f"at most {MAX_RESOURCES} resources per request")
    found = set()
    for item in resources:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ApprovalError(400, "a resource is a (type, name) pair")
        kind, name = item
        if kind not in REQUEST_RESOURCE_TYPES:
            known = ", ".join(REQUEST_RESOURCE_TYPES)
            raise ApprovalError(400, f"unknown resource type {_shown(kind)} (known: {known})")
        found.add(Resource(kind, _name(name, f"the {kind} name")))
    return tuple(sorted(found))


def _operations(operations: object) -> tuple[str, ...]:
    if not isinstance(operations, (list, tuple)) or not operations:
        raise ApprovalError(400, "name at least one operation")
    for operation in operations:
        if operation not in OPERATIONS:
            raise ApprovalError(400, f"unknown operation {_shown(operation)} (known: {', '.join(OPERATIONS)})")
    return tuple(sorted(set(operations)))


def _check_operations_apply(resources: Sequence[Resource], operations: Sequence[str]) -> None:
    """Every resource needs an operation that means something for it, and every operation a resource."""
    for resource in resources:
        if not SUPPORTED_OPERATIONS[resource.type].intersection(operations):
            raise ApprovalError(400, f"none of {', '.join(operations)} applies to {resource.type} {resource.name!r}")
    for operation in operations:
        if not any(operation in SUPPORTED_OPERATIONS[resource.type] for resource in resources):
            raise ApprovalError(400, f"{operation} applies to none of the resources asked for")


def _duration(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ApprovalError(400, "a duration is a positive whole number of seconds")
    return value


def _reason(value: object, required: bool) -> str:
    if not isinstance(value, str):
        raise ApprovalError(400, "reason must be a string")
    if required and not value.strip():
        raise ApprovalError(400, "give a reason")
    if len(value) > MAX_REASON_CHARS:
        raise ApprovalError(400, f"a reason is at most {MAX_REASON_CHARS} characters")
    return value


def _is_id(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _shown(value: object) -> str:
    """A hostile value, quoted and cut short enough to go into an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
