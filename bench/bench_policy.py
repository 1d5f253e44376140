"""Benchmarks for the policy engine and its shared-memory snapshot (gateway/policy/).

Run from the repository root:

    .venv/bin/python -m pytest bench/bench_policy.py --benchmark-only -q

The policy is generated: 1,000 rules for 1,000 principals. Principal user-N is in groups
team-(N mod 250) and dept-(N mod 40); rule i names user-i and group team-(i mod 250), every
50th rule also a subject glob, and its resources mix exact names, prefixes and globs over topics,
groups and transactional ids, with some denies, partitions, masking and approval. Each principal
ends up with about five rules, as a real deployment would.

Targets: `decide` from the per-view cache under ~300 ns; uncached under ~5 us; `for_principal`
(once per connection per policy generation) and `PolicyCache.engine()` when nothing changed
(once per request) are reported for sizing.
"""

from __future__ import annotations

import pytest

from gateway.policy import Engine, PolicyCache, PolicyStore, ViewHolder, load_policies

RULES = 1000
PRINCIPALS = 1000


def groups_of(principal: int) -> tuple[str, ...]:
    return (f"team-{principal % 250}", f"dept-{principal % 40}")


def subjects_of(index: int) -> str:
    subjects = [f"group:team-{index % 250}", f"user:user-{index}"]
    if index % 50 == 0:
        subjects.append(f"user:user-{index // 50}?")
    return ", ".join(repr(s) for s in subjects)


def rule_yaml(index: int) -> str:
    if index % 10 == 3:  # a deny carving a secret out of the prefix rule index - 3 allows, for its subjects
        target = index - 3
        return (f"  - name: deny-{index}\n    subjects: [{subjects_of(target)}]\n    resources:\n"
                f"      - topic: {{prefix: 'app{target}.secret'}}\n    operations: [read, write]\n"
                "    effect: deny\n")
    lines = [
        f"  - name: rule-{index}",
        f"    subjects: [{subjects_of(index)}]",
        "    resources:",
        f"      - topic: app{index}.orders",
        f"      - topic: {{prefix: 'app{index}.'}}",
        f"      - topic: {{glob: 'logs-{index}-*'}}",  # a prefix in disguise: matched as one
        f"      - topic: {{glob: 'metrics.*.app{index}'}}",  # a real glob: a regex
    ]
    if index % 2 == 0:  # consumers: the topics and their groups
        lines += [f"      - group: {{prefix: 'app{index}-'}}", "    operations: [read]"]
    else:  # producers and config readers, some masked, some narrowed to partitions
        lines.append(f"    operations: [{('read, write', 'read, describe_configs')[index % 4 == 1]}]")
        if index % 7 == 0:
            lines.append("    masking: [cards, emails]")
        if index % 11 == 0:
            lines.append("    partitions: [0, 1, 2]")
    if index % 13 == 0:
        lines.append("    approval: required")
    return "\n".join(lines) + "\n"


QUESTIONS = {  # resource type, name, operation, partition, and the rule that decides
    "exact": ("topic", "app10.orders", "read", 0, "rule-10"),
    "prefix": ("topic", "app10.payments.eu", "read", 0, "rule-10"),
    "glob-prefix": ("topic", "logs-10-2024", "read", 0, "rule-10"),
    "glob-regex": ("topic", "metrics.eu.app10", "read", 0, "rule-10"),
    "deny": ("topic", "app10.secret.keys", "read", 0, "deny-13"),
    "default-deny": ("topic", "unrelated.topic", "write", 0, None),
}


# The masking rules the generated allow rules name (a policy must define every name it uses).
MASKING_SECTION = """\
masking:
  cards: {detector: card, strategy: partial, keep_last: 4}
  emails: {detector: email, strategy: redact}
"""


def policy_text(first: int, last: int) -> str:
    return "rules:\n" + "".join(rule_yaml(i) for i in range(first, last))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("policies")
    for part in range(4):  # several files, as teams would keep them
        (directory / f"team-{part}.yaml").write_text(policy_text(part * RULES // 4, (part + 1) * RULES // 4))
    (directory / "masking.yaml").write_text(MASKING_SECTION)
    return directory


@pytest.fixture(scope="module")
def policy_set(policy_dir):
    return load_policies(policy_dir)


@pytest.fixture(scope="module")
def engine(policy_set):
    engine = Engine(policy_set)
    # The generated policy has the intended shape (checked here: --benchmark-only skips plain tests).
    assert len(policy_set.rules) == RULES
    counts = [len(engine.rule_orders(f"user-{p}", groups_of(p))) for p in range(PRINCIPALS)]
    assert 3 <= sum(counts) / len(counts) <= 8, sum(counts) / len(counts)
    view = engine.for_principal("user-10", groups_of(10))
    for question, (*args, rule) in QUESTIONS.items():
        assert view.decide(*args).rule == rule, question
    return engine


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_decide_cached(benchmark, engine, question):
    view = engine.for_principal("user-10", groups_of(10))
    *args, _ = QUESTIONS[question]
    view.decide(*args)
    benchmark(view.decide, *args)


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_decide_uncached(benchmark, engine, question):
    view = engine.for_principal("user-10", groups_of(10))
    *args, _ = QUESTIONS[question]
    benchmark(view.decide_uncached, *args)


def test_for_principal(benchmark, engine):
    benchmark(engine.for_principal, "user-10", groups_of(10))


def test_policy_cache_engine_unchanged(benchmark, policy_set):
    store = PolicyStore()
    store.publish(policy_set)
    cache = PolicyCache(store)
    cache.engine()
    benchmark(cache.engine)


def test_view_holder_unchanged(benchmark, policy_set):
    store = PolicyStore()
    store.publish(policy_set)
    holder = ViewHolder(PolicyCache(store), "user-10", groups_of(10))
    holder.view()
    benchmark(holder.view)


def test_engine_build(benchmark, policy_set):
    benchmark.pedantic(Engine, args=(policy_set,), rounds=10, iterations=1)


def test_snapshot_read(benchmark, policy_set):
    store = PolicyStore()
    store.publish(policy_set)
    benchmark.pedantic(store.read, rounds=10, iterations=1)


def test_load_policies(benchmark, policy_dir):
    benchmark.pedantic(load_policies, args=(policy_dir,), rounds=3, iterations=1)
