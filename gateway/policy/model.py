"""What a policy says: rules naming subjects, Kafka resources and operations.

The model is plain data, validated by the loader and compiled by the engine.
`PolicySet.to_dict` / `PolicySet.from_dict` are the form that crosses process
boundaries in the shared-memory snapshot, so they use only JSON types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PolicyError(ValueError):
    """A policy cannot be loaded or published; the message names file, line and key where there is one."""


# Kafka's operations, spelled as in the policy language.
OPERATIONS: tuple[str, ...] = (
    "read", "write", "create", "delete", "alter", "describe", "describe_configs", "alter_configs", "idempotent_write",
)
ALL = "all"  # shorthand for every operation, as Kafka's ALL

RESOURCE_TYPES: tuple[str, ...] = ("topic", "group", "transactional_id", "cluster")
CLUSTER_NAME = "kafka-cluster"  # Kafka's one cluster resource is named this

# Which operations mean anything on which resource type (Kafka's AclEntry.supportedOperations).
SUPPORTED_OPERATIONS: dict[str, frozenset[str]] = {
    "topic": frozenset({"read", "write", "create", "delete", "alter", "describe", "describe_configs",
                        "alter_configs"}),
    "group": frozenset({"read", "describe", "delete"}),
    "transactional_id": frozenset({"write", "describe"}),
    "cluster": frozenset({"create", "alter", "describe", "describe_configs", "alter_configs", "idempotent_write"}),
}

# Kafka's authorizer: an allow on any of these also allows the implied operation on the same resource.
# Denies never imply anything (a deny on describe does not deny read).
IMPLIES: dict[str, str] = {
    "read": "describe",
    "write": "describe",
    "delete": "describe",
    "alter": "describe",
    "alter_configs": "describe_configs",
}

# Operations that speak of a whole topic even when a request lists partitions: a partition list
# on a rule never narrows them, so a client allowed to read partition 0 can still see the topic.
TOPIC_LEVEL_OPERATIONS = frozenset({"describe", "describe_configs"})

EXACT, PREFIX, GLOB = "exact", "prefix", "glob"


@dataclass(frozen=True, slots=True)
class ResourcePattern:
    type: str  # one of RESOURCE_TYPES
    match: str  # EXACT, PREFIX or GLOB; a cluster is always EXACT CLUSTER_NAME
    value: str

    def describe(self) -> str:
        return f"{self.type} {self.value}" if self.match == EXACT else f"{self.type} {self.match}:{self.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    subjects: tuple[str, ...]  # "user:NAME" or "group:NAME", NAME possibly a glob
    resources: tuple[ResourcePattern, ...]
    operations: tuple[str, ...]  # as written: names from OPERATIONS, or ALL
    effect: str = "allow"  # "allow" or "deny"
    partitions: tuple[int, ...] | None = None  # topics only; None: every partition
    approval: bool = False  # an allow that holds only once an approver grants it
    approvers: tuple[str, ...] = ()
    max_duration_s: int | None = None  # the longest grant an approver may give
    approvals_required: int = 1  # distinct approvers needed before a grant starts (2: the two-person rule)
    masking: tuple[str, ...] = ()  # masking rule names applied to what this rule lets a client read
    source: str = ""  # "file:line" where the rule starts, for explanations

    @property
    def deny(self) -> bool:
        return self.effect == "deny"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "resources": [[r.type, r.match, r.value] for r in self.resources],
            "operations": list(self.operations),
            "effect": self.effect,
            "partitions": None if self.partitions is None else list(self.partitions),
            "approval": self.approval,
            "approvers": list(self.approvers),
            "max_duration_s": self.max_duration_s,
            "approvals_required": self.approvals_required,
            "masking": list(self.masking),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        partitions = data["partitions"]
        return cls(
            name=data["name"],
            subjects=tuple(data["subjects"]),
            resources=tuple(ResourcePattern(*r) for r in data["resources"]),
            operations=tuple(data["operations"]),
            effect=data["effect"],
            partitions=None if partitions is None else tuple(partitions),
            approval=data["approval"],
            approvers=tuple(data["approvers"]),
            max_duration_s=data["max_duration_s"],
            approvals_required=data.get("approvals_required", 1),
            masking=tuple(data["masking"]),
            source=data["source"],
        )


MASKING_KINDS = {"detector": "detector", "path": "json_path", "pattern": "regex"}
MASKING_DETECTORS = ("card", "email", "iban", "ssn", "phone")
MASKING_STRATEGIES = ("redact", "partial", "hash", "null")
MASKING_TARGETS = ("value", "key", "headers")
MASKING_ON_PRODUCE = ("mask", "reject")


@dataclass(frozen=True, slots=True)
class MaskingRule:
    """A named masking rule, referenced by allow rules' ``masking:`` lists."""

    name: str
    kind: str  # json_path, detector or regex (the masking kernel's words)
    spec: str  # the path, the detector's name or the regular expression
    strategy: str = "redact"
    keep_last: int = 4  # partial
    placeholder: str = "****"  # redact
    targets: tuple[str, ...] = ("value",)
    header: str | None = None  # only this header (headers target); None: every header
    # What happens to records a client produces through a rule naming this masking rule: None, they are
    # stored as sent (masked only for readers); "mask", stored masked; "reject", refused with INVALID_RECORD.
    on_produce: str | None = None
    source: str = ""

    def kernel_rules(self) -> list[dict[str, Any]]:
        """The rule as the Cython masking kernel takes it: one entry per target."""
        spec_key = {"json_path": "path", "detector": "detector", "regex": "pattern"}[self.kind]
        rules = []
        for target in self.targets:
            rule: dict[str, Any] = {"name": self.name, "target": "header" if target == "headers" else target,
                                    "kind": self.kind, spec_key: self.spec, "strategy": self.strategy}
            if self.strategy == "partial":
                rule["keep_last"] = self.keep_last
            elif self.strategy == "redact":
                rule["placeholder"] = self.placeholder
            if target == "headers" and self.header is not None:
                rule["header"] = self.header
            rules.append(rule)
        return rules

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "spec": self.spec, "strategy": self.strategy,
                "keep_last": self.keep_last, "placeholder": self.placeholder, "targets": list(self.targets),
                "header": self.header, "on_produce": self.on_produce, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskingRule:
        return cls(**{**data, "targets": tuple(data["targets"])})


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every rule from every file, in load order (files sorted by name, rules as written)."""

    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    masking: tuple[MaskingRule, ...] = ()

    def masking_rule(self, name: str) -> MaskingRule | None:
        return next((rule for rule in self.masking if rule.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "rules": [rule.to_dict() for rule in self.rules],
                "masking": [rule.to_dict() for rule in self.masking]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicySet:
        return cls(rules=tuple(Rule.from_dict(r) for r in data["rules"]), files=tuple(data["files"]),
                   masking=tuple(MaskingRule.from_dict(m) for m in data.get("masking", ())))
