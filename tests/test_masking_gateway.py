"""Inline masking through the real gateway: a consumer whose policy masks a topic never receives the
sensitive values, through every codec, while the rest of each record arrives exactly as produced."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
import zlib

import pytest
from confluent_kafka import Consumer, Producer

from gateway.dev.process import ALLOW_ALL
from tests.oauth import AioKafkaProvider, librdkafka_settings

CARD = "4111 1111 1111 1111"
EMAIL = "alice@example.com"
N = 200

MASKING_POLICY = """\
rules:
  - name: etl-everything
    subjects: ["group:etl"]
    resources:
      [{{topic: {{glob: "*"}}}}, {{group: {{glob: "*"}}}}, {{transactional_id: {{glob: "*"}}}}, {{cluster: true}}]
    operations: [all]
  - name: analyst-reads-masked
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{prefix}"}}}}]
    operations: [read, describe]
    masking: [cards, emails]
  - name: analyst-groups
    subjects: ["user:analyst"]
    resources: [{{group: {{glob: "*"}}}}]
    operations: [read, describe]
masking:
  cards: {{detector: card, strategy: partial, keep_last: 4, targets: [value, key, headers]}}
  emails: {{detector: email, strategy: redact, placeholder: "[email]", targets: [value, key, headers]}}
"""


def record(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = json.dumps({"order": f"order-{i}", "amount": i, "card": {"number": CARD}, "customer": {"email": EMAIL},
                        "note": f"plain text {i}"}).encode()
    return f"key-{i} {CARD}".encode(), value, [("contact", EMAIL.encode()), ("seq", str(i).encode())]


@pytest.fixture(scope="module")
def masked_prefix(gateway):
    prefix = f"masked-{uuid.uuid4().hex[:6]}-"
    gateway.install_policy(MASKING_POLICY.format(prefix=prefix))
    yield prefix
    gateway.install_policy(ALLOW_ALL)


def produce_direct(kafka_cluster, topic: str, compression: str) -> dict[int, int]:
    """Straight to the brokers as admin, so the stored records hold the raw values."""
    producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                         "sasl.password": kafka_cluster.passwords["admin"], "compression.type": compression,
                         "linger.ms": 20})
    offsets: dict[int, int] = {}
    errors: list = []

    def delivered(i: int):
        def report(err, message) -> None:
            # Exceptions raised inside librdkafka callbacks are mangled: collect, assert after flush.
            if err is not None:
                errors.append(err)
            else:
                offsets[i] = message.offset()
        return report

    for i in range(N):
        key, value, headers = record(i)
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered(i))
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    return offsets


def consume_as_analyst(gateway, idp, topic: str, count: int = N, **settings) -> list:
    """The ``count`` records of topic, read through the gateway by librdkafka as the masked reader, CRCs
    checked; ``settings`` are further librdkafka settings."""
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "check.crcs": True,
                         **librdkafka_settings(idp.token_endpoint, "analyst"), **settings})
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + 60
    while len(received) < count and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            assert message.error() is None, message.error()
            received.append(message)
    consumer.close()
    assert len(received) == count
    return received


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_masked_through_every_codec(gateway, idp, kafka_cluster, make_topic, masked_prefix, compression):
    topic = make_topic(f"{masked_prefix}{compression}", partitions=1)
    offsets = produce_direct(kafka_cluster, topic, compression)
    received = consume_as_analyst(gateway, idp, topic)
    for message in received:
        raw = message.key() + message.value() + b"".join(v for _, v in message.headers())
        assert b"4111 1111 1111 1111" not in raw and b"4111111111111111" not in raw
        assert EMAIL.encode() not in raw
        value = json.loads(message.value())  # still valid JSON
        i = value["amount"]
        assert value["order"] == f"order-{i}" and value["note"] == f"plain text {i}"
        assert re.fullmatch(r"[* -]*1111", value["card"]["number"]), value["card"]["number"]
        assert value["customer"]["email"] == "[email]"
        assert message.key().startswith(f"key-{i} ".encode())
        assert dict(message.headers())["seq"] == str(i).encode()
        assert message.offset() == offsets[i], "offsets must be the broker's"
    if compression == "zstd":
        # Counted per topic and rule, summed over the workers (published about once a second).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            counted = {rule: sum(int(line.rsplit(" ", 1)[1]) for line in gateway.metrics().splitlines()
                                 if line.startswith("streamward_masked_fields_total{") and f'topic="{topic}"' in line
                                 and f'rule="{rule}"' in line) for rule in ("cards", "emails")}
            if counted["cards"] >= 2 * N and counted["emails"] >= 2 * N:
                break
            time.sleep(0.2)
        # Per record, cards in the value and the key, emails in the value and a header; a record fetched
        # twice (a prefetch the client dropped) is masked, and counted, twice.
        assert counted["cards"] >= 2 * N and counted["emails"] >= 2 * N, counted


def test_aiokafka_consumer_sees_only_masked_values(gateway, idp, kafka_cluster, make_topic, masked_prefix):
    from aiokafka import AIOKafkaConsumer

    topic = make_topic(f"{masked_prefix}aio", partitions=1)
    produce_direct(kafka_cluster, topic, "lz4")

    async def consume() -> list:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"g-{uuid.uuid4().hex[:6]}", security_protocol="SASL_PLAINTEXT",
                                    sasl_mechanism="OAUTHBEARER",
                                    sasl_oauth_token_provider=AioKafkaProvider(idp.token_endpoint, "analyst"))
        await consumer.start()
        out = []
        try:
            async with asyncio.timeout(60):
                async for message in consumer:
                    out.append(message)
                    if len(out) == N:
                        break
        finally:
            await consumer.stop()
        return out

    messages = asyncio.run(consume())
    assert len(messages) == N
    for message in messages:
        assert CARD.encode() not in message.value and EMAIL.encode() not in message.value
        assert json.loads(message.value)["customer"]["email"] == "[email]"


def test_unmasked_topics_are_the_brokers_bytes(gateway, idp, kafka_cluster, make_topic, masked_prefix):
    """The etl group reads without masking: it gets exactly what was produced."""
    topic = make_topic("unmasked", partitions=1)
    produce_direct(kafka_cluster, topic, "none")
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", **librdkafka_settings(idp.token_endpoint, "etl-job")})
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + 60
    while len(received) < N and time.monotonic() < deadline:
        received += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(received) == N
    assert all(CARD.encode() in m.value() for m in received)


GLUE_ID = bytes(range(0x41, 0x51))  # an AWS Glue schema version id


def glue_value(i: int) -> bytes:
    """AWS Glue framing: version 3, compression (0, or 5: zlib), the schema version id, the payload: every other
    record a binary payload with the card and email between spaces, every other one JSON compressed with zlib,
    where no scan of the bytes as stored can see them."""
    if i % 2:
        return b"\x03\x00" + GLUE_ID + f"\x02\x40 {CARD} \x10 {EMAIL} \x08order-{i}".encode()
    return b"\x03\x05" + GLUE_ID + zlib.compress(json.dumps({"order": i, "card": CARD, "email": EMAIL}).encode())


def test_glue_framed_values_reach_a_real_consumer_masked(gateway, idp, kafka_cluster, make_topic, masked_prefix):
    """Glue-framed values through librdkafka (CRCs checked): the framing is kept, a binary payload keeps its
    length (each match fitted to its own), and a zlib payload (JSON) arrives inflated and masked as JSON, framed
    as uncompressed (compression byte 0), with the rest of the document as produced."""
    topic = make_topic(f"{masked_prefix}glue", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                         "sasl.password": kafka_cluster.passwords["admin"], "compression.type": "lz4"})
    for i in range(N):
        producer.produce(topic, key=f"k-{i}".encode(), value=glue_value(i))
    assert producer.flush(30) == 0
    for message in consume_as_analyst(gateway, idp, topic):
        i, value = int(message.key()[2:]), message.value()
        assert value[:18] == b"\x03\x00" + GLUE_ID
        assert CARD.encode() not in value and EMAIL.encode() not in value
        if i % 2:
            assert len(value) == len(glue_value(i)) and value.endswith(f"\x08order-{i}".encode())
        else:
            document = json.loads(value[18:])
            assert document["order"] == i and re.fullmatch(r"\*+1111", document["card"]), document
            assert document["email"] == "[email]", document    # a JSON payload is masked as JSON


def test_utf16_values_reach_a_real_consumer_masked(gateway, idp, kafka_cluster, make_topic, masked_prefix):
    """Values as Kafka's StringSerializer writes them with the encoding UTF-16 (a big-endian byte order mark,
    two bytes a character), where no scan of the bytes as stored sees a card or an email: through librdkafka
    they arrive masked, still UTF-16 in the same byte order, everything else as produced."""
    topic = make_topic(f"{masked_prefix}utf16", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                         "sasl.password": kafka_cluster.passwords["admin"], "compression.type": "zstd"})
    for i in range(N):
        text = json.dumps({"order": i, "card": CARD, "email": EMAIL, "note": "Zoë"}, ensure_ascii=False)
        producer.produce(topic, key=f"k-{i}".encode(), value=("\ufeff" + text).encode("utf-16-be"))
    assert producer.flush(30) == 0
    for message in consume_as_analyst(gateway, idp, topic):
        i, value = int(message.key()[2:]), message.value()
        assert value[:2] == b"\xfe\xff"
        document = json.loads(value[2:].decode("utf-16-be"))
        assert document == {"order": i, "card": "*" * 15 + "1111", "email": "[email]", "note": "Zoë"}, document

