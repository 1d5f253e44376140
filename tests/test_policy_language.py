"""Policy files: what loads, and every refusal naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy import PolicyError, PolicySet, ResourcePattern, check_main, load_policies

REPO = Path(__file__).resolve().parent.parent

RULE = """\
rules:
  - name: etl-reads-orders
    subjects: ["group:etl", "user:svc-*"]
    resources:
      - topic: orders
      - topic: {prefix: "orders."}
      - topic: {glob: "logs-*"}
      - group: {prefix: "etl-"}
      - transactional_id: {glob: "etl-*"}
    operations: [read, describe]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def rule(body: str, name: str = "r") -> str:
    """One rule; `body` holds its keys other than the name, indented as rule keys."""
    return f"rules:\n  - name: {name}\n" + "".join(f"    {line}\n" for line in body.strip("\n").split("\n"))


TOPIC_READ = 'subjects: ["user:a"]\nresources:\n  - topic: t\noperations: [read]'
MASKING = """\
masking:
  cards: {detector: card, strategy: partial, keep_last: 4, targets: [value, key, headers]}
  emails: {detector: email, strategy: hash}
"""


def test_masking_rules_load_and_compile_for_the_kernel(tmp_path):
    policy = load_policies(write(tmp_path, "a.yaml", rule(TOPIC_READ + "\nmasking: [cards]") + MASKING))
    cards = policy.masking_rule("cards")
    assert cards is not None and cards.source == f"{tmp_path}/a.yaml:9"
    assert [r["target"] for r in cards.kernel_rules()] == ["value", "key", "header"]
    assert cards.kernel_rules()[0] == {"name": "cards", "target": "value", "kind": "detector", "detector": "card",
                                       "strategy": "partial", "keep_last": 4}


@pytest.mark.parametrize("masking,error", [
    ("  m: {detector: card, path: a.b}", "a.yaml:9: masking.m: give exactly one of detector, path or pattern"),
    ("  m: {detector: cvv}", "a.yaml:9: masking.m.detector: detector must be one of"),
    ("  m: {pattern: '(unclosed'}", "a.yaml:9: masking.m.pattern: not a valid regular expression"),
    ("  m: {path: a, strategy: shred}", "a.yaml:9: masking.m.strategy: strategy must be one of"),
    ("  m: {path: a, targets: [body]}", "a.yaml:9: masking.m.targets: targets are value, key, headers"),
    ("  m: {path: a, header: x}", "a.yaml:9: masking.m.header: header needs 'headers' in targets"),
])
def test_masking_rule_errors_name_file_line_and_key(tmp_path, masking, error):
    with pytest.raises(PolicyError) as exc:
        load_policies(write(tmp_path, "a.yaml", rule(TOPIC_READ + "\nmasking: [m]") + "masking:\n" + masking + "\n"))
    assert error in str(exc.value)


def test_an_undefined_masking_rule_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="masking rule 'nope' is not defined"):
        load_policies(write(tmp_path, "a.yaml", rule(TOPIC_READ + "\nmasking: [nope]")))


def test_a_rule_loads_with_every_resource_kind(tmp_path):
    policy = load_policies(write(tmp_path, "a.yaml", RULE))
    (loaded,) = policy.rules
    assert loaded.name == "etl-reads-orders" and loaded.effect == "allow"
    assert loaded.subjects == ("group:etl", "user:svc-*")
    assert loaded.resources == (
        ResourcePattern("topic", "exact", "orders"),
        ResourcePattern("topic", "prefix", "orders."),
        ResourcePattern("topic", "glob", "logs-*"),
        ResourcePattern("group", "prefix", "etl-"),
        ResourcePattern("transactional_id", "glob", "etl-*"),
    )
    assert loaded.operations == ("read", "describe")
    assert loaded.source == f"{tmp_path}/a.yaml:2"


def test_optional_keys_are_kept_in_the_model(tmp_path):
    text = rule(TOPIC_READ + "\npartitions: [1, 0, 1]\napproval: required\napprovers: ['group:approvers']"
                "\nmax_duration: 1h30m\napprovals_required: 2\nmasking: [cards, emails]") + MASKING
    (loaded,) = load_policies(write(tmp_path, "a.yaml", text)).rules
    assert loaded.partitions == (0, 1)
    assert loaded.approval and loaded.approvers == ("group:approvers",) and loaded.max_duration_s == 5400
    assert loaded.approvals_required == 2
    assert loaded.masking == ("cards", "emails")


def test_names_stay_text_whatever_yaml_would_make_of_them(tmp_path):
    text = rule('subjects: ["user:a"]\nresources:\n  - topic: 2024\n  - group: yes\noperations: [read]')
    (loaded,) = load_policies(write(tmp_path, "a.yaml", text)).rules
    assert [r.value for r in loaded.resources] == ["2024", "yes"]


def test_cluster_is_the_kafka_cluster_resource(tmp_path):
    text = rule('subjects: ["group:ops"]\nresources:\n  - cluster: true\noperations: [idempotent_write, all]')
    (loaded,) = load_policies(write(tmp_path, "a.yaml", text)).rules
    assert loaded.resources == (ResourcePattern("cluster", "exact", "kafka-cluster"),)
    assert loaded.operations == ("idempotent_write", "all")


@pytest.mark.parametrize("text,where", [
    (RULE.replace("- topic: orders\n", "- topc: orders\n"),
     "a.yaml:5: rules[0].resources[0]: unknown resource type 'topc'"),
    (RULE.replace("    operations:", "    colour: blue\n    operations:"),
     "a.yaml:10: rules[0]: unknown key 'colour'"),
    (RULE.replace("{prefix: \"orders.\"}", "{prefix: \"orders.\", glob: \"x*\"}"),
     "a.yaml:6: rules[0].resources[1].topic: give exactly one of prefix or glob"),
    (RULE.replace("{prefix: \"orders.\"}", "{suffix: \".eu\"}"),
     "a.yaml:6: rules[0].resources[1].topic: unknown key 'suffix'"),
    (RULE.replace("- topic: orders\n", "- {topic: orders, group: g}\n"),
     "a.yaml:5: rules[0].resources[0]: a resource is a mapping with exactly one type"),
    (RULE.replace("\"logs-*\"", "\"logs-[ab]\""),
     "a.yaml:7: rules[0].resources[2].topic.glob: bad glob 'logs-[ab]'"),
    (RULE.replace("\"user:svc-*\"", "\"user:svc-{a,b}\""),
     "a.yaml:3: rules[0].subjects[1]: bad glob 'svc-{a,b}'"),
    (RULE.replace("- topic: orders\n", "- topic: \"orders*\"\n"),
     "a.yaml:5: rules[0].resources[0].topic: 'orders*' is an exact name; write {glob: 'orders*'}"),
    (RULE.replace("\"orders.\"", "\"orders.*\""),
     "a.yaml:6: rules[0].resources[1].topic.prefix: a prefix is literal"),
    (RULE.replace('["group:etl", "user:svc-*"]', "[]"),
     "a.yaml:3: rules[0].subjects: must not be empty"),
    (RULE.replace('    subjects: ["group:etl", "user:svc-*"]\n', ""),
     "a.yaml:2: rules[0]: missing required key 'subjects'"),
    (RULE.replace('"group:etl"', '"team:etl"'),
     "a.yaml:3: rules[0].subjects[0]: subject 'team:etl' must be user:NAME or group:NAME"),
    (RULE.replace('"group:etl"', '"group:"'),
     "a.yaml:3: rules[0].subjects[0]: subject 'group:' has an empty name"),
    (RULE.replace("[read, describe]", "[read, reed]"),
     "a.yaml:10: rules[0].operations[1]: unknown operation 'reed'"),
    (RULE.replace("[read, describe]", "[]"), "a.yaml:10: rules[0].operations: must not be empty"),
    (rule('subjects: ["user:a"]\nresources:\n  - group: g\noperations: [idempotent_write]'),
     "a.yaml:6: rules[0].operations[0]: operation 'idempotent_write' does not apply to group resources"),
    (rule(TOPIC_READ + "\neffect: permit"), "a.yaml:7: rules[0].effect: effect must be allow or deny"),
    (rule('subjects: ["user:a"]\nresources:\n  - topic: t\n  - group: g\noperations: [read]\npartitions: [0]'),
     "a.yaml:8: rules[0].partitions: partitions apply only to topic resources"),
    (rule(TOPIC_READ + "\npartitions: [0, -1]"),
     "a.yaml:7: rules[0].partitions[1]: a partition is a non-negative integer, got -1"),
    (rule(TOPIC_READ + "\napprovers: ['group:approvers']"),
     "a.yaml:7: rules[0].approvers: approvers needs 'approval: required'"),
    (rule(TOPIC_READ + "\nmax_duration: 8h"),
     "a.yaml:7: rules[0].max_duration: max_duration needs 'approval: required'"),
    (rule(TOPIC_READ + "\napproval: required\nmax_duration: 8 hours"),
     "a.yaml:8: rules[0].max_duration: a duration looks like 30m"),
    (rule(TOPIC_READ + "\napprovals_required: 2"),
     "a.yaml:7: rules[0].approvals_required: approvals_required needs 'approval: required'"),
    (rule(TOPIC_READ + "\napproval: required\napprovals_required: 9"),
     "a.yaml:8: rules[0].approvals_required: approvals_required is 1, 2 or 3 (distinct approvers), got '9'"),
    (rule(TOPIC_READ + "\napproval: yes please"), "a.yaml:7: rules[0].approval: approval takes one value"),
    (rule(TOPIC_READ + "\neffect: deny\napproval: required"),
     "a.yaml:8: rules[0].approval: approval applies only to allow rules"),
    (rule('subjects: ["user:a"]\nresources:\n  - group: g\noperations: [read]\nmasking: [cards]'),
     "a.yaml:7: rules[0].masking: masking applies only to topic resources"),
    (rule(TOPIC_READ + "\neffect: deny\nmasking: [cards]"),
     "a.yaml:8: rules[0].masking: masking applies only to allow rules"),
    (rule('subjects: ["user:a"]\nresources:\n  - cluster: false\noperations: [alter]'),
     "a.yaml:5: rules[0].resources[0]: cluster takes one value: true"),
    (rule(TOPIC_READ, name="'has space'"), "a.yaml:2: rules[0].name: rule name 'has space' must be"),
    (RULE + "  - name: etl-reads-orders\n" + RULE.split("name: etl-reads-orders\n")[1],
     "a.yaml:11: rules[1].name: duplicate rule name 'etl-reads-orders'"),
    ("rule:\n  - name: x\n", "a.yaml:1: <top>: unknown key 'rule'"),
    ("rules:\n  name: x\n", "a.yaml:2: rules: expected a list"),
    ("rules:\n  - just-a-string\n", "a.yaml:2: rules[0]: expected a mapping"),
])
def test_errors_name_file_line_and_key(tmp_path, text, where):
    with pytest.raises(PolicyError) as error:
        load_policies(write(tmp_path, "a.yaml", text))
    assert where in str(error.value)


def test_unreadable_input_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="a.yaml:3: not valid YAML: "):
        load_policies(write(tmp_path, "a.yaml", "rules:\n  - name: x\n  bad: [\n"))
    with pytest.raises(PolicyError, match="empty policy file"):
        load_policies(write(tmp_path, "b.yaml", ""))
    with pytest.raises(PolicyError, match="no such file"):
        load_policies(tmp_path / "missing")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(PolicyError, match="no \\*.yaml policy files"):
        load_policies(tmp_path / "empty-dir")


def test_a_directory_merges_its_yaml_files_in_name_order(tmp_path):
    write(tmp_path, "b.yaml", rule(TOPIC_READ, name="second"))
    write(tmp_path, "a.yaml", rule(TOPIC_READ, name="first"))
    write(tmp_path, "notes.txt", "not a policy")
    policy = load_policies(tmp_path)
    assert [r.name for r in policy.rules] == ["first", "second"]
    assert policy.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))


def test_duplicate_names_across_files_are_refused(tmp_path):
    write(tmp_path, "a.yaml", rule(TOPIC_READ, name="same"))
    write(tmp_path, "b.yaml", "# another team's file\n" + rule(TOPIC_READ, name="same"))
    with pytest.raises(PolicyError) as error:
        load_policies(tmp_path)
    assert str(error.value) == (f"{tmp_path}/b.yaml:3: rules[0].name: duplicate rule name 'same' "
                                f"(also at {tmp_path}/a.yaml:2)")


def test_the_shipped_example_loads_and_check_reports_it(capsys):
    policy = load_policies(REPO / "policies")
    assert len(policy.rules) >= 9
    assert check_main(REPO / "policies") == 0
    assert capsys.readouterr().out == f"ok: {len(policy.rules)} rules in {len(policy.files)} files\n"


def test_check_prints_the_error_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, "a.yaml", RULE.replace("[read, describe]", "[read, reed]"))
    assert check_main(path) == 2
    assert "a.yaml:10: rules[0].operations[1]: unknown operation 'reed'" in capsys.readouterr().err


def test_the_model_round_trips_through_its_plain_form(tmp_path):
    text = RULE + rule(TOPIC_READ + "\npartitions: [3]\napproval: required\nmax_duration: 1d\nmasking: [m]",
                       name="gated").removeprefix("rules:\n") + "masking:\n  m: {path: a.b, strategy: hash}\n"
    policy = load_policies(write(tmp_path, "a.yaml", text))
    assert PolicySet.from_dict(policy.to_dict()) == policy
