"""Access requests and grants as plain, immutable data.

`to_json` is the format of the admin HTTP API and of the webhooks: keep its keys stable.
Times are seconds since the epoch (float).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from gateway.policy.model import CLUSTER_NAME, IMPLIES, SUPPORTED_OPERATIONS

# What a request may name: exact names of these types (the cluster is never asked for; see Grant.covers).
REQUEST_RESOURCE_TYPES: tuple[str, ...] = ("topic", "group", "transactional_id")
REQUEST_STATUSES: tuple[str, ...] = ("pending", "approved", "denied", "cancelled")
ORIGINS: tuple[str, ...] = ("kafka", "api")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


def new_grant_id() -> str:
    return "grt_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True, order=True)
class Resource:
    type: str  # one of REQUEST_RESOURCE_TYPES
    name: str  # an exact name, never a pattern

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    at: float
    duration_s: int  # the longest grant this approver agreed to

    def to_json(self) -> dict[str, Any]:
        return {"approver": self.approver, "at": self.at, "duration_s": self.duration_s}


@dataclass(frozen=True, slots=True)
class AccessRequest:
    id: str
    requester: str  # the token subject
    groups: tuple[str, ...]  # the requester's groups when asking: the policy is re-checked with them
    resources: tuple[Resource, ...]  # sorted, no duplicates
    operations: tuple[str, ...]  # sorted, no duplicates
    duration_s: int  # asked for, already clipped to the gating rules' max_duration
    reason: str
    client: str  # "127.0.0.1:5555 client_id=etl", or "api"
    origin: str  # "kafka": made by a refused Kafka request; "api": asked ahead of time
    rules: tuple[str, ...]  # names of the policy rules that gate it
    status: str  # one of REQUEST_STATUSES
    created_at: float
    approvals: tuple[Approval, ...] = ()
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    grant_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requester": self.requester,
            "groups": list(self.groups),
            "resources": [resource.to_json() for resource in self.resources],
            "operations": list(self.operations),
            "duration_s": self.duration_s,
            "reason": self.reason,
            "client": self.client,
            "origin": self.origin,
            "rules": list(self.rules),
            "status": self.status,
            "created_at": self.created_at,
            "approvals": [approval.to_json() for approval in self.approvals],
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "decision_reason": self.decision_reason,
            "grant_id": self.grant_id,
        }


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str
    subject: str
    resources: tuple[Resource, ...]
    operations: tuple[str, ...]
    starts_at: float
    expires_at: float
    approved_by: tuple[str, ...]
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    expired_notified: bool = False  # the grant.expired event has been sent

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"

    def covers(self, subject: str, resource_type: str, name: str, operation: str) -> bool:
        """Whether this grant (whatever its status: check that apart) lets `subject` do `operation` on the resource.

        Kafka's implications hold as in the policy engine: read, write, delete and alter imply describe,
        alter_configs implies describe_configs, and write on a topic implies idempotent_write on the cluster
        (an idempotent producer needs it before its first write).
        """
        if subject != self.subject:
            return False
        if resource_type == "cluster":
            return (name == CLUSTER_NAME and operation == "idempotent_write" and "write" in self.operations
                    and any(resource.type == "topic" for resource in self.resources))
        if operation not in SUPPORTED_OPERATIONS.get(resource_type, ()):
            return False
        if Resource(resource_type, name) not in self.resources:
            return False
        return operation in self.operations or any(IMPLIES.get(granted) == operation for granted in self.operations)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "subject": self.subject,
            "resources": [resource.to_json() for resource in self.resources],
            "operations": list(self.operations),
            "starts_at": self.starts_at,
            "expires_at": self.expires_at,
            "approved_by": list(self.approved_by),
            "status": self.status(now),
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
        }
