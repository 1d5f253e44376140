"""Masking on the Produce path: what a policy masks on produce is stored masked, what it rejects is refused
with INVALID_RECORD naming the rule, and idempotent and transactional producers keep working."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from kafka.record.default_records import DefaultRecordBatchBuilder

from gateway.dev.process import ALLOW_ALL
from gateway.protocol.apis import PRODUCE
from gateway.protocol.errors import INVALID_RECORD
from tests.oauth import librdkafka_settings

CARD = "4111 1111 1111 1111"
EMAIL = "alice@example.com"
N = 100

POLICY = """\
rules:
  - name: etl-everything
    subjects: ["group:etl"]
    resources:
      [{{topic: {{glob: "*"}}}}, {{group: {{glob: "*"}}}}, {{transactional_id: {{glob: "*"}}}}, {{cluster: true}}]
    operations: [all]
  - name: analyst-writes-masked
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{prefix}pm-"}}}}]
    operations: [write, describe]
    masking: [cards-on-produce]
  - name: analyst-writes-checked
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{prefix}pr-"}}}}]
    operations: [write, describe]
    masking: [emails-refused]
  - name: analyst-writes-plain
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{prefix}plain-"}}}}]
    operations: [write, describe]
  - name: analyst-transactions
    subjects: ["user:analyst"]
    resources: [{{transactional_id: {{glob: "*"}}}}]
    operations: [write, describe]
masking:
  cards-on-produce: {{detector: card, strategy: partial, keep_last: 4, targets: [value, key, headers],
                      on_produce: mask}}
  emails-refused: {{detector: email, targets: [value, key, headers], on_produce: reject}}
"""


@pytest.fixture(scope="module")
def prefix(gateway):
    prefix = f"p{uuid.uuid4().hex[:6]}-"
    gateway.install_policy(POLICY.format(prefix=prefix))
    yield prefix
    gateway.install_policy(ALLOW_ALL)


def value(i: int, card: str = CARD) -> bytes:
    return json.dumps({"order": f"order-{i}", "card": {"number": card}, "note": f"plain {i}"}).encode()


def analyst_producer(gateway, idp, **settings) -> Producer:
    return Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 5,
                     **librdkafka_settings(idp.token_endpoint, "analyst"), **settings})


def produce_all(producer: Producer, topic: str, records: list[tuple[bytes, bytes, list]]) -> list:
    """Produce and flush; returns the per-record delivery errors (None where delivered)."""
    errors: list = [None] * len(records)

    def report(i: int):
        def delivered(err, _message) -> None:
            errors[i] = err
        return delivered

    for i, (key, val, headers) in enumerate(records):
        producer.produce(topic, key=key, value=val, headers=headers, on_delivery=report(i))
    assert producer.flush(30) == 0
    return errors


def read_direct(kafka_cluster, topic: str, count: int, isolation: str = "read_committed") -> list:
    """Straight from the brokers as admin: what was stored."""
    consumer = Consumer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                         "sasl.password": kafka_cluster.passwords["admin"], "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "isolation.level": isolation, "check.crcs": True})
    consumer.subscribe([topic])
    received: list = []
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            assert message.error() is None, message.error()
            received.append(message)
    time.sleep(0.3)
    received += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    consumer.close()
    return received


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_idempotent_producer_stores_masked_records(gateway, idp, kafka_cluster, make_topic, prefix, compression):
    topic = make_topic(f"{prefix}pm-{compression}", partitions=2)
    producer = analyst_producer(gateway, idp, **{"enable.idempotence": True, "compression.type": compression})
    records = [(f"key-{i} {CARD}".encode(), value(i), [("card", CARD.encode()), ("seq", str(i).encode())])
               for i in range(N)]
    assert produce_all(producer, topic, records) == [None] * N
    stored = read_direct(kafka_cluster, topic, N)
    assert len(stored) == N
    for message in stored:
        raw = message.key() + message.value() + b"".join(v for _, v in message.headers())
        assert CARD.encode() not in raw and b"4111111111111111" not in raw
        body = json.loads(message.value())
        i = int(body["order"].removeprefix("order-"))
        assert body["note"] == f"plain {i}" and body["card"]["number"].endswith("1111")
        assert message.key().startswith(f"key-{i} ".encode())
        assert dict(message.headers())["seq"] == str(i).encode()


def test_transactional_producer_commits_masked_records(gateway, idp, kafka_cluster, make_topic, prefix):
    """Producer id, epoch and sequences survive the rewrite: the transaction commits and read_committed sees it."""
    topic = make_topic(f"{prefix}pm-txn", partitions=1)
    producer = analyst_producer(gateway, idp, **{"transactional.id": f"tx-{uuid.uuid4().hex[:6]}",
                                                 "compression.type": "lz4"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(N):
        producer.produce(topic, key=b"k", value=value(i))
    producer.commit_transaction(30)
    stored = read_direct(kafka_cluster, topic, N, "read_committed")
    assert len(stored) == N
    assert all(CARD.encode() not in m.value() for m in stored)
    assert [json.loads(m.value())["order"] for m in stored] == [f"order-{i}" for i in range(N)]


def test_rejected_records_get_invalid_record_and_clean_ones_pass(gateway, idp, kafka_cluster, make_topic, prefix):
    topic = make_topic(f"{prefix}pr-mixed", partitions=1)
    producer = analyst_producer(gateway, idp, **{"linger.ms": 0, "max.in.flight": 1, "retries": 0})
    clean = [(b"k", json.dumps({"n": i}).encode(), []) for i in range(5)]
    assert produce_all(producer, topic, clean) == [None] * 5
    # librdkafka reports the broker-side INVALID_RECORD to the application as its permanent "bad message"
    # error (the exact code and message are checked on the wire below).
    refused = (KafkaError.INVALID_RECORD, KafkaError._BAD_MSG)
    errors = produce_all(producer, topic, [(b"k", json.dumps({"mail": EMAIL}).encode(), [])])
    assert errors[0] is not None and errors[0].code() in refused, errors
    errors = produce_all(producer, topic, [(b"k", b"x", [("contact", EMAIL.encode())])])
    assert errors[0] is not None and errors[0].code() in refused, errors
    stored = read_direct(kafka_cluster, topic, 5)
    assert [m.value() for m in stored] == [v for _, v, _ in clean]


def _batch(values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for offset, val in enumerate(values):
        builder.append(offset, timestamp=int(time.time() * 1000), key=None, value=val, headers=[])
    return bytes(builder.build())


def test_refusal_names_the_rule_and_other_partitions_are_stored(gateway, connect, kafka_cluster, make_topic, prefix,
                                                                admin):
    """One request, three topics: the refused partition says why; the masked and the plain ones are stored."""
    checked = make_topic(f"{prefix}pr-wire", partitions=2)
    masked = make_topic(f"{prefix}pm-wire", partitions=1)
    plain = make_topic(f"{prefix}plain-wire", partitions=1)
    wire = connect(subject="analyst")
    answer = wire.request(PRODUCE, 9, {"transactional_id": None, "acks": -1, "timeout_ms": 10000, "topic_data": [
        {"name": checked, "partition_data": [{"index": 0, "records": _batch([b'{"mail": "' + EMAIL.encode() + b'"}'])},
                                             {"index": 1, "records": _batch([b'{"ok": true}'])}]},
        {"name": masked, "partition_data": [{"index": 0, "records": _batch([value(1)])}]},
        {"name": plain, "partition_data": [{"index": 0, "records": _batch([value(2)])}]},
    ]})
    results = {(t["name"], p["index"]): p for t in answer["responses"] for p in t["partition_responses"]}
    assert set(results) == {(checked, 0), (checked, 1), (masked, 0), (plain, 0)}
    refused = results[(checked, 0)]
    assert refused["error_code"] == INVALID_RECORD
    assert "emails-refused" in refused["error_message"] and "on_produce: reject" in refused["error_message"]
    # Other partitions may be led by other brokers than the one this connection reached; NOT_LEADER (6)
    # is Kafka's own answer there. What matters is that none of them was refused by the gateway.
    assert all(results[k]["error_code"] in (0, 6) for k in ((checked, 1), (masked, 0), (plain, 0)))
    if results[(masked, 0)]["error_code"] == 0:
        stored = read_direct(kafka_cluster, masked, 1)
        assert CARD.encode() not in stored[0].value()
    if results[(plain, 0)]["error_code"] == 0:
        stored = read_direct(kafka_cluster, plain, 1)
        assert CARD.encode() in stored[0].value(), "a topic without produce rules is stored as sent"
