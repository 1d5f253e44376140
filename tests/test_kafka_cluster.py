"""The development Kafka cluster (gateway/dev/kafka.py) is really locked down.

The gateway's tests rely on it: the only way in is SCRAM-SHA-512 as a known user, and a signed-in user
without ACLs (`nobody`) gets nothing.

Two client libraries on purpose: kafka-python 3 reports a refused SASL login only as "Unable to bootstrap"
once its bootstrap timeout (30 s by default) runs out, while librdkafka (confluent-kafka) hands over the
broker's authentication error at once.
"""

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAuthorizationFailedError

from gateway.dev.kafka import KafkaCluster, java_tool


def unique(prefix: str) -> str:
    # One cluster serves the whole session: never reuse a topic name across tests.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kafka_python_scram(cluster: KafkaCluster, user: str) -> dict[str, object]:
    return {
        "bootstrap_servers": cluster.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": cluster.passwords[user],
    }


def librdkafka_scram(cluster: KafkaCluster, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": cluster.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    }


def produce_as_admin(cluster: KafkaCluster, topic: str, lines: bytes) -> None:
    """Produce with Kafka's own console producer, which also exercises java_tool."""
    assert cluster.lib_dir is not None
    config = cluster.write_client_config("admin", cluster.workdir / f"producer-{topic}.properties")
    # ConsoleProducer's own 1.5 s request timeout is too short for a loaded 2-core machine (see test_clients).
    args = ["--bootstrap-server", cluster.bootstrap, "--topic", topic, "--command-config", str(config),
            "--producer-property", "request.timeout.ms=30000"]
    result = java_tool(cluster.lib_dir, "org.apache.kafka.tools.ConsoleProducer", args, input=lines)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def read_values(cluster: KafkaCluster, user: str, topic: str, count: int, timeout: float = 15) -> list[bytes]:
    """Read up to `count` values from partition 0 of `topic` as `user`, without a consumer group."""
    consumer = KafkaConsumer(**kafka_python_scram(cluster, user))
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values += [record.value for record in records]
        return values
    finally:
        consumer.close()


def eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    """ACLs and new topics reach every broker asynchronously: retry `check` for a while."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def test_admin_creates_and_lists_topics(kafka_cluster: KafkaCluster) -> None:
    with_java_tool = unique("created-by-topic-command")
    with_admin_api = unique("created-by-admin-api")
    kafka_cluster.create_topic(with_java_tool, partitions=2, replication_factor=kafka_cluster.nodes)
    with KafkaAdminClient(**kafka_python_scram(kafka_cluster, "admin")) as admin:
        admin.create_topics([NewTopic(with_admin_api, 1, kafka_cluster.nodes)])
        assert eventually(lambda: {with_java_tool, with_admin_api} <= set(admin.list_topics()))
        [described] = admin.describe_topics([with_java_tool])
    assert described["error_code"] == 0
    # Two partitions, and on 3 nodes every node holds a replica of each.
    replica_counts = [len(partition["replica_nodes"]) for partition in described["partitions"]]
    assert replica_counts == [kafka_cluster.nodes] * 2


def test_client_without_sasl_gets_nothing(kafka_cluster: KafkaCluster) -> None:
    # The same servers serve a SCRAM client: a failure below is down to the missing SASL, not a dead broker.
    with KafkaAdminClient(**kafka_python_scram(kafka_cluster, "admin")) as admin:
        admin.list_topics()

    started = time.monotonic()
    plaintext = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})
    with pytest.raises(KafkaException):
        plaintext.list_topics(timeout=8)
    assert time.monotonic() - started < 10


def test_wrong_password_is_refused_with_an_authentication_error(kafka_cluster: KafkaCluster) -> None:
    right = kafka_cluster.passwords["admin"]
    AdminClient(librdkafka_scram(kafka_cluster, "admin", right)).list_topics(timeout=10)

    errors: list[KafkaError] = []
    config: dict[str, Any] = {**librdkafka_scram(kafka_cluster, "admin", right + "x"), "error_cb": errors.append}
    wrong = AdminClient(config)
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=3)
    wrong.poll(0)  # error_cb runs from poll()
    assert any(error.code() == KafkaError._AUTHENTICATION for error in errors), errors


def test_user_without_acls_can_neither_list_nor_read(kafka_cluster: KafkaCluster) -> None:
    topic = unique("secret")
    kafka_cluster.create_topic(topic)
    produce_as_admin(kafka_cluster, topic, b"hello\n")
    assert read_values(kafka_cluster, "admin", topic, 1) == [b"hello"]

    with KafkaAdminClient(**kafka_python_scram(kafka_cluster, "nobody")) as nobody:
        assert topic not in nobody.list_topics()
        [described] = nobody.describe_topics([topic])
    assert described["error_code"] == TopicAuthorizationFailedError.errno

    consumer = KafkaConsumer(**kafka_python_scram(kafka_cluster, "nobody"))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.end_offsets([TopicPartition(topic, 0)])
    finally:
        consumer.close()
    assert read_values(kafka_cluster, "nobody", topic, 1, timeout=3) == []


def test_acl_added_by_admin_opens_exactly_that_topic(kafka_cluster: KafkaCluster) -> None:
    granted, other = unique("granted"), unique("not-granted")
    kafka_cluster.create_topic(granted)
    kafka_cluster.create_topic(other)
    produce_as_admin(kafka_cluster, granted, b"hello\n")
    kafka_cluster.add_acl("--allow-principal", "User:nobody", "--operation", "Describe",
                          "--operation", "Read", "--topic", granted)

    assert read_values(kafka_cluster, "nobody", granted, 1) == [b"hello"]
    with KafkaAdminClient(**kafka_python_scram(kafka_cluster, "nobody")) as nobody:
        assert eventually(lambda: granted in nobody.list_topics())
        assert other not in nobody.list_topics()
