"""Decisions: may this principal do this operation on this resource?

Deny by default, deny wins, fail closed. The semantics are those of Kafka's own
authorizer:

- an allow on read, write, delete or alter also allows describe; an allow on
  alter_configs also allows describe_configs; an allow on write on any topic
  also allows idempotent_write on the cluster;
- a deny applies only to the operations it names (a deny on describe does not
  deny read) and wins over every allow, whatever the rule order;
- `partitions` narrow a rule to those partitions; a request for the whole topic
  (partition None) is matched by a narrowed deny but not by a narrowed allow,
  and describe / describe_configs are topic-level, so partitions never narrow them;
- an allow with `approval: required` does not allow by itself: when no plain
  allow matches, the decision says approval is required.

Cost is paid where it is cheap. `Engine` compiles every rule once per policy
generation; `Engine.for_principal` keeps only the rules whose subjects match a
connection's principal and indexes them by (resource type, operation): exact
names in a dict, prefixes in one dict per prefix length (globs such as "logs-*"
are prefixes too), other globs as compiled regexes behind a cheap check of their
literal head. `PrincipalView.decide` then answers repeated questions from a dict.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import NamedTuple

from gateway.policy.loader import load_policies
from gateway.policy.model import (
    ALL,
    CLUSTER_NAME,
    EXACT,
    GLOB,
    IMPLIES,
    OPERATIONS,
    PREFIX,
    RESOURCE_TYPES,
    SUPPORTED_OPERATIONS,
    TOPIC_LEVEL_OPERATIONS,
    PolicyError,
    PolicySet,
    Rule,
)

# Decisions remembered per view. Resource names come from clients, so the cache is
# bounded; a client cycling through more names than this only loses the shortcut.
DECISION_CACHE_LIMIT = 1024


class Decision(NamedTuple):
    allowed: bool
    rule: str | None  # the deny or allow rule that decided; None when nothing matched (default deny)
    approval_required: bool = False  # only an approval-gated allow matched
    masking: tuple[str, ...] = ()  # masking rule names of the allow rules that matched, in rule order


DEFAULT_DENY = Decision(False, None)
_ORDER = attrgetter("order")


class _Entry(NamedTuple):
    """One rule as it applies to one (resource type, operation)."""

    order: int  # position in the PolicySet: ties are reported by the earliest rule
    rule: str
    deny: bool
    approval: bool
    partitions: frozenset[int] | None  # None: every partition, or a topic-level operation
    masking: tuple[str, ...]
    via: str | None  # what implied this operation ("read", "write on topic orders"), None when named


Matcher = Callable[[str], object]


class _Grant(NamedTuple):
    resource_type: str
    operation: str
    match: str  # EXACT, PREFIX or GLOB, after _simplified
    value: str
    entry: _Entry


def compile_glob(pattern: str) -> Matcher:
    """`*` is any run of characters, `?` any one character, everything else literal; the whole name must match."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL).fullmatch


def _is_glob(text: str) -> bool:
    return "*" in text or "?" in text


def _simplified(match: str, value: str) -> tuple[str, str]:
    """Most globs are a prefix in disguise ("logs-*", "*"): match those with a dict, not a regex."""
    if match == GLOB:
        if not _is_glob(value):
            return EXACT, value
        head = value[:-1]
        if value.endswith("*") and not _is_glob(head):
            return PREFIX, head
    return match, value


class Engine:
    """A PolicySet compiled for decisions; build one per policy generation and share it."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.rules: dict[str, Rule] = {rule.name: rule for rule in policy_set.rules}
        self.masking = {rule.name: rule for rule in policy_set.masking}  # masking rule definitions by name
        # Produce requests are looked at for masking only when some rule says what to do on produce.
        self.masks_on_produce = any(rule.on_produce is not None for rule in policy_set.masking)
        self._grants = [tuple(_grants(order, rule)) for order, rule in enumerate(policy_set.rules)]
        # Resource globs are compiled when a view first needs them (re.compile costs tens of
        # microseconds each, and most principals never touch most rules), then shared by every view.
        self._resource_globs: dict[str, tuple[str, Matcher]] = {}
        # subject kind → exact name → rule orders; and the globbed subjects, checked one by one
        self._exact: dict[str, dict[str, list[int]]] = {"user": {}, "group": {}}
        patterns: dict[str, dict[str, list[int]]] = {"user": {}, "group": {}}
        for order, rule in enumerate(policy_set.rules):
            for subject in rule.subjects:
                kind, _, name = subject.partition(":")
                table = patterns[kind] if _is_glob(name) else self._exact[kind]
                orders = table.setdefault(name, [])
                if not orders or orders[-1] != order:
                    orders.append(order)
        self._subject_globs: dict[str, list[tuple[Matcher, list[int]]]] = {
            kind: [(compile_glob(pattern), orders) for pattern, orders in table.items()]
            for kind, table in patterns.items()
        }

    def rule_orders(self, subject: str, groups: Sequence[str]) -> list[int]:
        """Positions of the rules whose subjects name this user or one of these groups, in policy order."""
        matched = set(self._exact["user"].get(subject, ()))
        for match, orders in self._subject_globs["user"]:
            if match(subject):
                matched.update(orders)
        for group in groups:
            matched.update(self._exact["group"].get(group, ()))
            for match, orders in self._subject_globs["group"]:
                if match(group):
                    matched.update(orders)
        return sorted(matched)

    def for_principal(self, subject: str, groups: tuple[str, ...]) -> PrincipalView:
        grants = [grant for order in self.rule_orders(subject, groups) for grant in self._grants[order]]
        return PrincipalView(grants, self._resource_glob)

    def _resource_glob(self, pattern: str) -> tuple[str, Matcher]:
        """The literal head of a glob (a cheap startswith before the regex) and its compiled matcher."""
        compiled = self._resource_globs.get(pattern)
        if compiled is None:
            head = re.split(r"[*?]", pattern, maxsplit=1)[0]
            compiled = self._resource_globs[pattern] = (head, compile_glob(pattern))
        return compiled


def _grants(order: int, rule: Rule) -> Iterator[_Grant]:
    """Every (resource, operation) a rule speaks of, implied operations included for allows."""
    named = OPERATIONS if ALL in rule.operations else rule.operations
    operations: dict[str, str | None] = dict.fromkeys(named)
    if not rule.deny:
        for operation in named:
            implied = IMPLIES.get(operation)
            if implied is not None and implied not in operations:
                operations[implied] = operation
    partitions = None if rule.partitions is None else frozenset(rule.partitions)
    for resource in rule.resources:
        match, value = _simplified(resource.match, resource.value)
        supported = SUPPORTED_OPERATIONS[resource.type]
        for operation, via in operations.items():
            # A rule naming a topic and a group may list write for the topic: it means nothing for the group.
            if operation in supported:
                narrowed = None if operation in TOPIC_LEVEL_OPERATIONS else partitions
                entry = _Entry(order, rule.name, rule.deny, rule.approval, narrowed, rule.masking, via)
                yield _Grant(resource.type, operation, match, value, entry)
    if not rule.deny and "write" in operations:
        topic = next((r for r in rule.resources if r.type == "topic"), None)
        if topic is not None:
            entry = _Entry(order, rule.name, False, rule.approval, None, (), f"write on {topic.describe()}")
            yield _Grant("cluster", "idempotent_write", EXACT, CLUSTER_NAME, entry)


class _Matcher:
    """The entries for one (resource type, operation) of one principal."""

    __slots__ = ("exact", "prefixes", "globs", "narrowed")

    def __init__(self, grants: list[_Grant], resource_glob: Callable[[str], tuple[str, Matcher]]) -> None:
        self.exact: dict[str, list[_Entry]] = {}
        by_length: dict[int, dict[str, list[_Entry]]] = {}
        globs: dict[str, list[_Entry]] = {}
        for grant in grants:
            if grant.match == EXACT:
                self.exact.setdefault(grant.value, []).append(grant.entry)
            elif grant.match == PREFIX:
                by_length.setdefault(len(grant.value), {}).setdefault(grant.value, []).append(grant.entry)
            else:
                globs.setdefault(grant.value, []).append(grant.entry)
        # Every matching prefix counts (a deny on "orders." must beat an allow on "orders.eu."), so each
        # prefix length costs one slice and one dict lookup, however many prefixes share that length.
        self.prefixes = tuple(sorted(by_length.items(), reverse=True))
        self.globs = tuple((*resource_glob(pattern), entries) for pattern, entries in globs.items())
        self.narrowed = any(grant.entry.partitions is not None for grant in grants)

    def entries(self, name: str) -> list[_Entry]:
        found = list(self.exact.get(name, ()))
        size = len(name)
        for length, table in self.prefixes:
            if length <= size:
                hit = table.get(name[:length])
                if hit:
                    found += hit
        for head, match, entries in self.globs:
            if name.startswith(head) and match(name) is not None:
                found += entries
        return found


class PrincipalView:
    """The rules of one principal, indexed for decisions; built once per connection and policy generation."""

    def __init__(self, grants: list[_Grant], resource_glob: Callable[[str], tuple[str, Matcher]]) -> None:
        by_key: dict[tuple[str, str], list[_Grant]] = {}
        for grant in grants:
            by_key.setdefault((grant.resource_type, grant.operation), []).append(grant)
        self._index = {key: _Matcher(key_grants, resource_glob) for key, key_grants in by_key.items()}
        self._cache: dict[tuple[str, str, str, int | None], Decision] = {}

    def decide(self, resource_type: str, name: str, operation: str, partition: int | None = None) -> Decision:
        """The decision, from the per-view cache when this exact question was asked before."""
        key = (resource_type, name, operation, partition)
        decision = self._cache.get(key)
        if decision is None:
            decision = self.decide_uncached(resource_type, name, operation, partition)
            if len(self._cache) >= DECISION_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def decide_uncached(self, resource_type: str, name: str, operation: str,
                        partition: int | None = None) -> Decision:
        return verdict(self.matches(resource_type, name, operation, partition))

    def matches(self, resource_type: str, name: str, operation: str, partition: int | None = None) -> list[_Entry]:
        """Every rule entry that applies; an unknown resource type or operation matches nothing, so it is denied."""
        matcher = self._index.get((resource_type, operation))
        if matcher is None:
            return []
        found = matcher.entries(name)
        if not matcher.narrowed:
            return found
        return [e for e in found if e.partitions is None or partition in e.partitions or (partition is None and e.deny)]


def verdict(entries: list[_Entry]) -> Decision:
    """Deny wins; then a plain allow; then an approval-gated allow; else the default deny.

    The earliest rule of the winning kind is reported; masking comes from every matching rule of that kind.
    """
    deny = plain = gated = None
    masked: list[_Entry] = []  # filled only when a rule masks, which keeps the common case to one loop
    for entry in entries:
        if entry.deny:
            if deny is None or entry.order < deny.order:
                deny = entry
        elif entry.approval:
            if gated is None or entry.order < gated.order:
                gated = entry
        elif plain is None or entry.order < plain.order:
            plain = entry
        if entry.masking:
            masked.append(entry)
    if deny is not None:
        return Decision(False, deny.rule)
    deciding = plain if plain is not None else gated
    if deciding is None:
        return DEFAULT_DENY
    masking: tuple[str, ...] = ()
    if masked:
        kind = deciding.approval
        masked.sort(key=_ORDER)
        masking = tuple(dict.fromkeys(name for e in masked if e.approval == kind for name in e.masking))
    return Decision(plain is not None, deciding.rule, plain is None, masking)


def explain(policy_set: PolicySet, subject: str, groups: Sequence[str], resource_type: str, name: str,
            operation: str, partition: int | None = None) -> str:
    """The decision in words: what was decided, by which rule, and which other rules matched."""
    return _explained(policy_set, subject, groups, resource_type, name, operation, partition)[1]


def _explained(policy_set: PolicySet, subject: str, groups: Sequence[str], resource_type: str, name: str,
               operation: str, partition: int | None) -> tuple[Decision, str]:
    engine = Engine(policy_set)
    view = engine.for_principal(subject, tuple(groups))
    entries = view.matches(resource_type, name, operation, partition)
    decision = verdict(entries)
    outcome = "ALLOW" if decision.allowed else "APPROVAL REQUIRED" if decision.approval_required else "DENY"
    where = f" partition {partition}" if partition is not None else ""
    lines = [f"{outcome}: user:{subject} (groups: {', '.join(groups) or '-'}) {operation} on "
             f"{resource_type} {name!r}{where}"]
    if resource_type not in RESOURCE_TYPES or operation not in OPERATIONS:
        lines.append(f"  {resource_type} / {operation} is not a known resource type / operation: denied")
    by_rule: dict[str, _Entry] = {}  # a rule can match twice (two of its resources): name it once
    for entry in sorted(entries, key=_ORDER):
        by_rule.setdefault(entry.rule, entry)
    if decision.rule is None:
        count = len(engine.rule_orders(subject, groups))
        lines.append(f"  decided by: no rule allows this, so it is denied by default "
                     f"({count} rule(s) name this principal)")
    else:
        lines.append(f"  decided by: {_describe(engine.rules[decision.rule], by_rule[decision.rule])}")
    if decision.masking:
        lines.append(f"  masking: {', '.join(decision.masking)}")
    for entry in by_rule.values():
        if entry.rule != decision.rule:
            lines.append(f"  also matched: {_describe(engine.rules[entry.rule], entry)}")
    return decision, "\n".join(lines)


def _describe(rule: Rule, entry: _Entry) -> str:
    text = f"{rule.name} ({rule.effect}"
    if rule.approval:
        text += ", approval required"
    if entry.via is not None:
        text += f", implied by {entry.via}"
    return f"{text}) at {rule.source}"


def explain_main(path: str | os.PathLike[str], principal: str, groups: Sequence[str], *, operation: str,
                 topic: str | None = None, group: str | None = None, transactional_id: str | None = None,
                 cluster: bool = False, partition: int | None = None) -> int:
    """`streamward policy explain`: prints the explanation; 0 allowed, 1 denied or approval required, 2 error."""
    resources = [(kind, value) for kind, value in (("topic", topic), ("group", group),
                                                   ("transactional_id", transactional_id)) if value is not None]
    if cluster:
        resources.append(("cluster", CLUSTER_NAME))
    if len(resources) != 1:
        print("name exactly one resource: a topic, a group, a transactional id or the cluster", file=sys.stderr)
        return 2
    if operation not in OPERATIONS:
        print(f"unknown operation {operation!r} (known: {', '.join(OPERATIONS)})", file=sys.stderr)
        return 2
    try:
        policy_set = load_policies(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    subject = principal.removeprefix("user:")
    group_names = tuple(g.removeprefix("group:") for g in groups)
    (resource_type, name), = resources
    decision, text = _explained(policy_set, subject, group_names, resource_type, name, operation, partition)
    print(text)
    return 0 if decision.allowed else 1
