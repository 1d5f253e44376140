"""Policy on every request through the real gateway: real clients are refused the way Kafka refuses them,
"all" queries show only what an identity may describe, and policy reloads apply to open connections."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from gateway.dev.process import ALLOW_ALL
from gateway.protocol.apis import METADATA, PRODUCE
from gateway.protocol.errors import TOPIC_AUTHORIZATION_FAILED
from tests.oauth import AioKafkaProvider, fetch_token

ANALYST_POLICY = """\
rules:
  - name: etl-everything
    subjects: ["group:etl"]
    resources:
      [{{topic: {{glob: "*"}}}}, {{group: {{glob: "*"}}}}, {{transactional_id: {{glob: "*"}}}}, {{cluster: true}}]
    operations: [all]
  - name: analyst-reads-one-topic
    subjects: ["user:analyst"]
    resources: [{{topic: {allowed}}}]
    operations: [read, describe]
  - name: analyst-groups
    subjects: ["user:analyst"]
    resources: [{{group: {{glob: "*"}}}}]
    operations: [read, describe]
"""


def leader_of(wire, topic: str) -> int:
    """The partition-0 leader of a topic, once the new topic has one."""
    deadline = time.monotonic() + 30
    while True:
        answer = wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})
        partitions = answer["topics"][0]["partitions"]
        if partitions and partitions[0]["leader_id"] >= 0:
            return partitions[0]["leader_id"]
        assert time.monotonic() < deadline, f"{topic} has no leader"
        time.sleep(0.2)


@pytest.fixture
def set_policy(gateway):
    """Swap the shared gateway's policy for one test, and put the allow-all test policy back after it."""

    yield gateway.install_policy
    gateway.install_policy(ALLOW_ALL)


@pytest.fixture
def three_topics(make_topic):
    return [make_topic(f"pol{i}", partitions=1) for i in range(3)]


def test_metadata_of_all_topics_shows_only_the_allowed_one(gateway, connect, set_policy, three_topics):
    allowed, *others = three_topics
    set_policy(ANALYST_POLICY.format(allowed=allowed))
    with connect(subject="analyst") as wire:
        everything = wire.request(METADATA, 12, {"topics": None, "allow_auto_topic_creation": False})
        named = wire.request(METADATA, 12, {"topics": [{"name": t} for t in three_topics],
                                            "allow_auto_topic_creation": False})
    assert [t["name"] for t in everything["topics"]] == [allowed]
    errors = {t["name"]: t["error_code"] for t in named["topics"]}
    assert errors == {allowed: 0, others[0]: TOPIC_AUTHORIZATION_FAILED, others[1]: TOPIC_AUTHORIZATION_FAILED}


def test_produce_to_a_refused_topic_gets_topic_authorization_failed(gateway, connect, set_policy, three_topics):
    allowed, refused, _ = three_topics
    set_policy(ANALYST_POLICY.format(allowed=allowed))
    batch = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    batch.append(0, int(time.time() * 1000), b"k", b"v", [])
    with connect(subject="analyst") as wire:
        answer = wire.request(PRODUCE, 9, {"acks": -1, "timeout_ms": 5000, "topic_data": [
            {"name": name, "partition_data": [{"index": 0, "records": bytes(batch.build())}]}
            for name in (allowed, refused)]})
    codes = {t["name"]: t["partition_responses"][0]["error_code"] for t in answer["responses"]}
    # the analyst may read but not write either topic
    assert codes == {allowed: TOPIC_AUTHORIZATION_FAILED, refused: TOPIC_AUTHORIZATION_FAILED}


def test_real_consumers_get_topic_authorization_failed(gateway, idp, set_policy, three_topics, kafka_jars, tmp_path):
    from gateway.dev.kafka import java_tool
    from tests.oauth import java_client_properties

    allowed, refused, _ = three_topics
    set_policy(ANALYST_POLICY.format(allowed=allowed))

    # kcat
    token = fetch_token(idp.token_endpoint, "analyst")
    kcat = subprocess.run(["kcat", "-C", "-b", gateway.bootstrap, "-t", refused, "-o", "beginning", "-e",
                           "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN",
                           "-X", "sasl.username=analyst", "-X", f"sasl.password={token}"],
                          capture_output=True, timeout=60)
    assert kcat.returncode != 0
    assert b"authoriz" in kcat.stderr.lower() or b"authoriz" in kcat.stdout.lower(), kcat.stderr

    # aiokafka
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import TopicAuthorizationFailedError

    async def consume_refused() -> None:
        consumer = AIOKafkaConsumer(refused, bootstrap_servers=gateway.bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                    security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
                                    sasl_oauth_token_provider=AioKafkaProvider(idp.token_endpoint, "analyst"))
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                await consumer.getone()
        finally:
            await consumer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(consume_refused())

    # Kafka's Java console consumer
    config = tmp_path / "analyst.properties"
    config.write_text(java_client_properties(idp.token_endpoint, "analyst"))
    java = java_tool(kafka_jars, "org.apache.kafka.tools.consumer.ConsoleConsumer",
                     ["--bootstrap-server", gateway.bootstrap, "--topic", refused, "--from-beginning",
                      "--timeout-ms", "20000", "--command-config", str(config)],
                     extra_jvm_args=[f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.token_endpoint}"],
                     timeout=120)
    output = (java.stdout + java.stderr).decode()
    assert "TopicAuthorizationException" in output or "Not authorized to access topics" in output, output[-2000:]


def test_policy_reloads_apply_to_open_connections_without_dropping_any(gateway, connect, set_policy, make_topic):
    """10 connections keep producing while the policy flips 20 times: none is dropped, and after each
    publish every connection's next request follows the new policy."""
    topic = make_topic("reload", partitions=1)
    allow = ALLOW_ALL
    deny_writes = ALLOW_ALL + f"""\
  - name: no-writes-to-{topic}
    subjects: ["user:etl-job"]
    resources: [{{topic: {topic}}}]
    operations: [write]
    effect: deny
"""
    batch = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    batch.append(0, int(time.time() * 1000), b"k", b"v", [])
    records = bytes(batch.build())

    def produce(wire) -> int:
        answer = wire.request(PRODUCE, 9, {"acks": -1, "timeout_ms": 5000, "topic_data": [
            {"name": topic, "partition_data": [{"index": 0, "records": records}]}]})
        return answer["responses"][0]["partition_responses"][0]["error_code"]

    with connect() as wire:
        leader = leader_of(wire, topic)
    clients = [connect(f"127.0.0.1:{gateway.port_base + leader}") for _ in range(10)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(wire) -> None:
        try:
            while not stop.is_set():
                produce(wire)
        except BaseException as exc:  # noqa: BLE001 - a dropped connection is the failure we look for
            errors.append(exc)

    # Background load on 5 of them; the other 5 are probed after every change.
    loaders = [threading.Thread(target=load, args=(wire,)) for wire in clients[:5]]
    for thread in loaders:
        thread.start()
    try:
        for change in range(20):
            text = deny_writes if change % 2 == 0 else allow
            set_policy(text)
            expected = TOPIC_AUTHORIZATION_FAILED if text is deny_writes else 0
            for wire in clients[5:]:
                assert produce(wire) == expected, f"change {change}: the next request did not follow the policy"
    finally:
        stop.set()
        for thread in loaders:
            thread.join()
    assert not errors, f"connections dropped during reloads: {errors[:3]}"


def test_an_invalid_policy_is_rejected_and_the_old_one_stays(gateway, connect, set_policy, make_topic):
    topic = make_topic("keep", partitions=1)
    set_policy(ALLOW_ALL)
    generation = gateway.health()["policy_generation"]
    # The log is the shared gateway's, for the whole session: wait for a rejection after this point.
    seen = len(gateway.log_text())
    gateway.write_policy("rules:\n  - name: broken\n    subjects: []\n")
    deadline = time.monotonic() + 10
    while "policy rejected" not in gateway.log_text()[seen:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "policy rejected" in gateway.log_text()[seen:]
    assert "policy.yaml:3" in gateway.log_text()[seen:], "the error should name the file and line"
    assert gateway.health()["policy_generation"] == generation
    with connect() as wire:
        answer = wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})
    assert answer["topics"][0]["error_code"] == 0, "the last good policy should still apply"
