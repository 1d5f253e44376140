"""Decisions: deny by default, deny wins, Kafka's implications, partitions, approval and masking."""

from __future__ import annotations

import pytest

from gateway.policy import Decision, Engine, PolicySet, Rule, explain, explain_main
from gateway.policy.engine import DECISION_CACHE_LIMIT
from gateway.policy.model import ResourcePattern


def topic(value: str, match: str = "exact") -> ResourcePattern:
    return ResourcePattern("topic", match, value)


CLUSTER = ResourcePattern("cluster", "exact", "kafka-cluster")
ORDERS = topic("orders")


def make_rule(name: str, subjects=("user:alice",), resources=(ORDERS,), operations=("read",),
              **options) -> Rule:
    return Rule(name=name, subjects=tuple(subjects), resources=tuple(resources), operations=tuple(operations),
                source=f"test.yaml:{name}", **options)


def view(*rules: Rule, subject: str = "alice", groups: tuple[str, ...] = ()):
    return Engine(PolicySet(rules=rules)).for_principal(subject, groups)


def test_nothing_allowed_is_denied_with_no_rule():
    decision = view().decide("topic", "orders", "read")
    assert decision == Decision(False, None, False, ())
    assert view(make_rule("r")).decide("topic", "orders", "write") == Decision(False, None)


@pytest.mark.parametrize("pattern,allowed,denied", [
    (topic("orders"), ["orders"], ["orders2", "order", "Orders"]),
    (topic("orders.", "prefix"), ["orders.", "orders.eu", "orders.eu.returns"], ["orders", "xorders.eu"]),
    (topic("logs-*", "glob"), ["logs-", "logs-app", "logs-a.b"], ["logs", "app-logs-1"]),
    (topic("v?-events", "glob"), ["v1-events", "v2-events"], ["v10-events", "v-events"]),
    (topic("logs-*-eu", "glob"), ["logs-app-eu", "logs--eu"], ["logs-app-us", "xlogs-app-eu", "logs-eu"]),
    (topic("*", "glob"), ["a", "orders", "x.y"], []),
    (topic("a.b+c", "glob"), ["a.b+c"], ["aXb+c", "a.bbc"]),  # only * and ? are special
])
def test_exact_prefix_and_glob_resources(pattern, allowed, denied):
    principal = view(make_rule("r", resources=[pattern]))
    for name in allowed:
        assert principal.decide("topic", name, "read") == Decision(True, "r"), name
    for name in denied:
        assert not principal.decide("topic", name, "read").allowed, name


def test_resource_types_do_not_mix():
    rules = (make_rule("g", resources=[ResourcePattern("group", "exact", "orders")]),
             make_rule("t", resources=[ResourcePattern("transactional_id", "prefix", "tx-")], operations=["write"]))
    principal = view(*rules)
    assert principal.decide("group", "orders", "read").rule == "g"
    assert not principal.decide("topic", "orders", "read").allowed
    assert principal.decide("transactional_id", "tx-1", "write").rule == "t"
    assert not principal.decide("group", "tx-1", "write").allowed


def test_user_and_group_subjects_and_subject_globs():
    rules = (make_rule("user", subjects=["user:alice"]), make_rule("group", subjects=["group:etl"]),
             make_rule("glob", subjects=["user:svc-?-*"]), make_rule("group-glob", subjects=["group:team-*"]))
    engine = Engine(PolicySet(rules=rules))
    assert engine.for_principal("alice", ()).decide("topic", "orders", "read").rule == "user"
    assert engine.for_principal("bob", ("etl",)).decide("topic", "orders", "read").rule == "group"
    assert engine.for_principal("svc-a-loader", ()).decide("topic", "orders", "read").rule == "glob"
    assert engine.for_principal("carol", ("x", "team-red")).decide("topic", "orders", "read").rule == "group-glob"
    for subject, groups in [("bob", ()), ("svc-ab-loader", ()), ("etl", ()), ("alice2", ("etl2", "team"))]:
        assert not engine.for_principal(subject, groups).decide("topic", "orders", "read").allowed
    # a user named like a group is not in that group, and the other way round
    assert not engine.for_principal("etl", ("alice",)).decide("topic", "orders", "read").allowed


@pytest.mark.parametrize("order", ["deny-first", "allow-first"])
def test_deny_wins_whatever_the_order(order):
    allow = make_rule("allow-all", resources=[topic("*", "glob")], operations=["all"])
    deny = make_rule("deny-secrets", subjects=["group:everyone"], resources=[topic("secrets.", "prefix")],
                     operations=["read"], effect="deny")
    rules = (deny, allow) if order == "deny-first" else (allow, deny)
    principal = view(*rules, groups=("everyone",))
    assert principal.decide("topic", "secrets.keys", "read") == Decision(False, "deny-secrets")
    assert principal.decide("topic", "public", "read") == Decision(True, "allow-all")


def test_the_broadest_matching_prefix_deny_beats_a_longer_allow():
    rules = (make_rule("allow-eu", resources=[topic("orders.eu.", "prefix")]),
             make_rule("deny-orders", resources=[topic("orders.", "prefix")], effect="deny"))
    assert view(*rules).decide("topic", "orders.eu.1", "read") == Decision(False, "deny-orders")


def test_kafka_implications_for_allows():
    rules = (make_rule("reader"), make_rule("configs", resources=[topic("cfg")], operations=["alter_configs"]),
             make_rule("writer", resources=[topic("events.", "prefix")], operations=["write"]))
    principal = view(*rules)
    assert principal.decide("topic", "orders", "describe") == Decision(True, "reader")
    assert principal.decide("topic", "cfg", "describe_configs") == Decision(True, "configs")
    assert not principal.decide("topic", "cfg", "describe").allowed  # alter_configs implies describe_configs only
    assert principal.decide("cluster", "kafka-cluster", "idempotent_write") == Decision(True, "writer")
    assert not principal.decide("cluster", "kafka-cluster", "describe").allowed
    assert not principal.decide("topic", "orders", "write").allowed  # read implies nothing else


@pytest.mark.parametrize("operation", ["write", "delete", "alter"])
def test_write_delete_and_alter_imply_describe(operation):
    principal = view(make_rule("r", operations=[operation]))
    assert principal.decide("topic", "orders", "describe") == Decision(True, "r")


def test_denies_name_operations_exactly():
    allow = make_rule("allow", operations=["read", "describe"])
    deny_describe = make_rule("no-describe", operations=["describe"], effect="deny")
    principal = view(allow, deny_describe)
    assert principal.decide("topic", "orders", "read") == Decision(True, "allow")
    assert principal.decide("topic", "orders", "describe") == Decision(False, "no-describe")
    deny_read = make_rule("no-read", operations=["read"], effect="deny")
    principal = view(allow, deny_read)
    assert principal.decide("topic", "orders", "read") == Decision(False, "no-read")
    assert principal.decide("topic", "orders", "describe") == Decision(True, "allow")


def test_a_cluster_deny_beats_the_implied_idempotent_write():
    rules = (make_rule("writer", operations=["write"]),
             make_rule("no-idempotence", resources=[CLUSTER], operations=["idempotent_write"], effect="deny"))
    assert view(*rules).decide("cluster", "kafka-cluster", "idempotent_write") == Decision(False, "no-idempotence")


def test_all_means_every_operation_for_allow_and_deny():
    principal = view(make_rule("admin", resources=[CLUSTER, topic("*", "glob")], operations=["all"]))
    for operation in ("create", "alter", "describe", "describe_configs", "alter_configs", "idempotent_write"):
        assert principal.decide("cluster", "kafka-cluster", operation).allowed
    assert principal.decide("topic", "x", "delete").allowed
    assert not principal.decide("cluster", "other-cluster", "describe").allowed
    deny = make_rule("freeze", resources=[topic("x")], operations=["all"], effect="deny")
    principal = view(make_rule("admin", resources=[topic("*", "glob")], operations=["all"]), deny)
    assert principal.decide("topic", "x", "describe") == Decision(False, "freeze")


def test_partitions_narrow_a_rule():
    principal = view(make_rule("two", partitions=(0, 1)))
    assert principal.decide("topic", "orders", "read", 0) == Decision(True, "two")
    assert principal.decide("topic", "orders", "read", 1).allowed
    assert not principal.decide("topic", "orders", "read", 2).allowed
    assert not principal.decide("topic", "orders", "read").allowed  # the whole topic is more than two partitions
    assert principal.decide("topic", "orders", "describe").allowed  # describe is topic-level
    assert principal.decide("topic", "orders", "describe", 5).allowed


def test_a_partition_deny_also_denies_the_whole_topic():
    principal = view(make_rule("all"), make_rule("not-3", partitions=(3,), effect="deny"))
    assert principal.decide("topic", "orders", "read", 2) == Decision(True, "all")
    assert principal.decide("topic", "orders", "read", 3) == Decision(False, "not-3")
    assert principal.decide("topic", "orders", "read") == Decision(False, "not-3")


def test_approval_is_carried_and_a_plain_allow_needs_none():
    gated = make_rule("breakglass", resources=[topic("payments", "prefix")], operations=["read", "write"],
                      approval=True, approvers=("group:approvers",), max_duration_s=3600, masking=("cards",))
    principal = view(gated)
    assert principal.decide("topic", "payments", "read") == Decision(False, "breakglass", True, ("cards",))
    assert principal.decide("topic", "payments", "describe").approval_required
    assert principal.decide("cluster", "kafka-cluster", "idempotent_write") == Decision(False, "breakglass", True)
    plain = make_rule("plain", resources=[topic("payments")])
    assert view(gated, plain).decide("topic", "payments", "read") == Decision(True, "plain")
    deny = make_rule("deny", resources=[topic("payments")], effect="deny")
    assert view(gated, deny).decide("topic", "payments", "read") == Decision(False, "deny")


def test_masking_from_every_matching_allow_in_rule_order():
    rules = (make_rule("wide", resources=[topic("customers.", "prefix")], masking=("emails", "cards")),
             make_rule("narrow", resources=[topic("customers.eu")], masking=("cards", "iban")),
             make_rule("clear", resources=[topic("customers.*", "glob")]))
    principal = view(*rules)
    assert principal.decide("topic", "customers.eu", "read") == Decision(True, "wide", False,
                                                                         ("emails", "cards", "iban"))
    assert principal.decide("topic", "customers.us", "read").masking == ("emails", "cards")


def test_unknown_types_and_operations_are_denied():
    principal = view(make_rule("admin", resources=[topic("*", "glob")], operations=["all"]))
    assert principal.decide("topic", "orders", "cluster_action") == Decision(False, None)
    assert principal.decide("delegation_token", "orders", "describe") == Decision(False, None)


def test_decisions_are_cached_and_the_cache_is_bounded():
    principal = view(make_rule("r", resources=[topic("*", "glob")]))
    first = principal.decide("topic", "orders", "read")
    assert principal.decide("topic", "orders", "read") is first
    for index in range(DECISION_CACHE_LIMIT + 10):
        principal.decide("topic", f"t{index}", "read")
    assert len(principal._cache) <= DECISION_CACHE_LIMIT
    assert principal.decide("topic", "orders", "read") == principal.decide_uncached("topic", "orders", "read")


def test_explain_names_the_deciding_rule_and_the_others():
    rules = (make_rule("readers", subjects=["group:etl"], resources=[topic("orders.", "prefix")],
                       masking=("cards",)),
             make_rule("everything", resources=[topic("*", "glob")], operations=["read", "write"]),
             make_rule("no-eu", subjects=["user:*"], resources=[topic("orders.eu")], effect="deny"))
    policy = PolicySet(rules=rules)
    text = explain(policy, "alice", ("etl",), "topic", "orders.us", "read")
    assert text.splitlines() == [
        "ALLOW: user:alice (groups: etl) read on topic 'orders.us'",
        "  decided by: readers (allow) at test.yaml:readers",
        "  masking: cards",
        "  also matched: everything (allow) at test.yaml:everything",
    ]
    text = explain(policy, "alice", ("etl",), "topic", "orders.eu", "read")
    assert "DENY" in text and "decided by: no-eu (deny) at test.yaml:no-eu" in text and "also matched: readers" in text
    text = explain(policy, "alice", (), "topic", "orders.us", "describe")
    assert "decided by: everything (allow, implied by read)" in text
    text = explain(policy, "bob", (), "topic", "orders.us", "read", partition=4)
    assert "DENY: user:bob (groups: -) read on topic 'orders.us' partition 4" in text
    assert "denied by default" in text


def test_explain_main_prints_and_exits_by_the_decision(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("rules:\n  - name: r\n    subjects: [group:etl]\n    resources:\n      - topic: orders\n"
                    "    operations: [read]\n")
    assert explain_main(path, "user:alice", ["group:etl"], topic="orders", operation="read") == 0
    assert "decided by: r (allow)" in capsys.readouterr().out
    assert explain_main(path, "alice", [], cluster=True, operation="idempotent_write") == 1
    assert "DENY" in capsys.readouterr().out
    assert explain_main(path, "alice", [], topic="orders", group="g", operation="read") == 2
    assert explain_main(path, "alice", [], topic="orders", operation="reed") == 2
    assert explain_main(tmp_path / "missing", "alice", [], topic="orders", operation="read") == 2
