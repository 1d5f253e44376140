"""The masking combination suite: whatever the client, codec, transaction outcome or framing, a reader whose policy
masks a topic never receives a card number, email or IBAN, and receives everything else exactly as produced, at the
broker's own offsets.

Records (tests/masking_data.py) carry their secrets in values (flat and nested JSON, arrays, a card as a JSON
number, free text, a JSON escape; raw JSON, schema-registry framed JSON and schema-registry framed Protobuf, AWS
Glue framed JSON plain and zlib-compressed, UTF-16 text without a byte order mark in both byte orders), keys and
header values. They are produced straight to the brokers as
the admin, into one topic per codec (none, gzip, snappy, lz4, zstd), in four phases: plain, a committed
transaction, an aborted transaction, plain again. Then Kafka's Java console consumer, kcat, confluent-kafka,
aiokafka, franz-go and kafka-python read every topic (kafka-python: those of the codecs it can decode) through the
gateway as `analyst`, whose policy masks them, under read_committed and read_uncommitted, all at once. Raw Fetch
responses through the gateway prove every rewritten batch has a valid CRC32C, keeps the broker's batch header
fields (offsets, codec, producer), and reads in aiokafka's and kafka-python's batch readers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.record.memory_records import MemoryRecords as AioRecords
from kafka.admin import NewTopic
from kafka.record.memory_records import MemoryRecords as KafkaPythonRecords

from gateway.dev.process import ALLOW_ALL
from gateway.protocol.apis import FETCH
from tests.masking_data import (
    ABORTED,
    CODECS,
    COMMITTED,
    FRAMINGS,
    KEY_INDEX,
    PLAIN,
    Got,
    LeakScanner,
    Received,
    Sample,
    admin_client_config,
    check_masked,
    consume_confluent,
    direct_wire,
    fetch_body,
    leaders,
    make_samples,
    masking_policy,
    produce_samples,
    read_ahead_counters,
    walk_batches,
)
from tests.oauth import CLIENTS as OAUTH_CLIENTS
from tests.oauth import (
    AioKafkaProvider,
    KafkaPythonProvider,
    fetch_token,
    java_client_properties,
    librdkafka_settings,
)

PARTITIONS = 2
# Per topic (one per codec): 350 records, every framing in every phase, over both partitions.
PHASES = [(PLAIN, 100), (COMMITTED, 100), (ABORTED, 100), (PLAIN, 50)]
READ_COMMITTED, READ_UNCOMMITTED = "read_committed", "read_uncommitted"
ISOLATION_LEVELS = (READ_COMMITTED, READ_UNCOMMITTED)
CLIENTS = ("java", "kcat", "confluent-kafka", "aiokafka", "franz-go", "kafka-python")
# Every client fetches at most this much a partition: each response then shows a backlog, so the gateway reads
# ahead of every client (gateway/handlers/read_ahead.py), through transactions, aborts and every codec.
PARTITION_FETCH_BYTES = 4096
# kafka-python decodes only the codecs whose Python packages are installed; it still checks every batch's CRC. As a
# consumer it reads only these codecs' topics.
KAFKA_PYTHON_CODECS = ("none", "gzip")
# Separators for the console tools' output: values are binary (Protobuf), so no byte they hold can be one.
SEPARATOR, END, HEADER_SEPARATOR = b"|~S~|", b"|~E~|\n", b"|~H~|"


@dataclass
class Matrix:
    prefix: str
    topics: dict[str, str]  # codec -> topic
    samples: dict[int, Sample]
    offsets: dict[int, int]  # sample index -> the offset the broker gave it
    stored: Received  # what the brokers hold, read directly as the admin
    scanner: LeakScanner
    leaders: dict[tuple[str, int], int]

    @property
    def partitions(self) -> list[tuple[str, int]]:
        return [(topic, partition) for topic in self.topics.values() for partition in range(PARTITIONS)]

    def expected(self, isolation: str, codecs: tuple[str, ...] = tuple(CODECS)) -> set[int]:
        """The samples a reader of these codecs' topics receives under isolation."""
        topics = {self.topics[codec] for codec in codecs}
        return {i for i, s in self.samples.items()
                if s.topic in topics and (isolation == READ_UNCOMMITTED or s.outcome != ABORTED)}


@pytest.fixture(scope="module")
def matrix(gateway, kafka_cluster, admin) -> Iterator[Matrix]:
    prefix = f"mx-{uuid.uuid4().hex[:6]}-"
    topics = {codec: f"{prefix}{codec}" for codec in CODECS}
    admin.create_topics([NewTopic(topic, PARTITIONS, 1) for topic in topics.values()], timeout_ms=30000)
    gateway.install_policy(masking_policy(prefix, f"mxplain-{uuid.uuid4().hex[:6]}-"))
    per_topic = {codec: make_samples(topic, 1000 * k, PHASES, PARTITIONS)
                 for k, (codec, topic) in enumerate(topics.items())}
    with ThreadPoolExecutor(len(per_topic)) as pool:
        runs = [pool.submit(produce_samples, kafka_cluster, codec, samples) for codec, samples in per_topic.items()]
        for run in runs:
            run.result()
    samples = {s.index: s for group in per_topic.values() for s in group}
    stored = consume_confluent(admin_client_config(kafka_cluster, **{
        "group.id": f"direct-{uuid.uuid4().hex[:6]}", "isolation.level": READ_UNCOMMITTED}),
        [(topic, partition) for topic in topics.values() for partition in range(PARTITIONS)])
    offsets = {}
    for got in stored.records:
        index = int(KEY_INDEX.match(got.key).group(1))
        assert index not in offsets, f"record {index} stored twice"
        offsets[index] = got.offset
    yield Matrix(prefix, topics, samples, offsets, stored, LeakScanner(samples.values()),
                 leaders(kafka_cluster, list(topics.values())))
    gateway.install_policy(ALLOW_ALL)


def test_the_brokers_hold_every_combination_unmasked(matrix):
    """The premise: every produced record is stored as produced (aborted ones included), every combination of
    codec, outcome and framing has records, and the leak scanner finds every secret in the stored bytes."""
    assert set(matrix.offsets) == set(matrix.samples)
    for got in matrix.stored.records:
        sample = matrix.samples[int(KEY_INDEX.match(got.key).group(1))]
        assert (got.topic, got.partition) == (sample.topic, sample.partition)
        assert (got.key, got.value, got.headers) == (sample.key, sample.value, sample.headers)
    combinations = {(s.topic, s.outcome, s.framing) for s in matrix.samples.values()}
    assert len(combinations) == len(CODECS) * 3 * len(FRAMINGS)
    assert len(matrix.scanner.leaks(matrix.stored.blob)) == matrix.scanner.total


# --- the clients, all at once ----------------------------------------------------------------------------------------

def read_java(kafka_jars, gateway, idp, matrix: Matrix, isolation: str, workdir) -> Received:
    """Kafka's console consumer over every topic of the matrix (one pattern subscription), printing partition,
    offset, headers, key and value between separators no record can contain."""
    from gateway.dev.kafka import java_tool

    config = workdir / f"java-{isolation}.properties"
    config.write_text(java_client_properties(idp.token_endpoint, "analyst") + f"isolation.level={isolation}\n"
                      f"max.partition.fetch.bytes={PARTITION_FETCH_BYTES}\n")
    formatter = {"print.partition": "true", "print.offset": "true", "print.headers": "true", "print.key": "true",
                 "key.separator": SEPARATOR.decode(), "line.separator": END.decode(),
                 "headers.separator": HEADER_SEPARATOR.decode()}
    result = java_tool(kafka_jars, "org.apache.kafka.tools.consumer.ConsoleConsumer", [
        "--bootstrap-server", gateway.bootstrap, "--include", f"{matrix.prefix}.*", "--from-beginning",
        "--group", f"java-{uuid.uuid4().hex[:6]}", "--max-messages", str(len(matrix.expected(isolation))),
        "--timeout-ms", "30000",
        *itertools.chain.from_iterable(("--formatter-property", f"{k}={v}") for k, v in formatter.items()),
        "--command-config", str(config)],
        timeout=180, extra_jvm_args=[f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.token_endpoint}"])
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    received = Received()
    for line in result.stdout.split(END)[:-1]:
        partition, offset, headers, key, value = line.split(SEPARATOR, 4)
        pairs = [] if headers == b"NO_HEADERS" else [h.split(b":", 1) for h in headers.split(HEADER_SEPARATOR)]
        received.records.append(Got(None, int(partition.removeprefix(b"Partition:")),
                                    int(offset.removeprefix(b"Offset:")), key, value,
                                    [(name.decode(), v) for name, v in pairs]))
    received.blob += result.stdout
    return received


def read_kcat(gateway, idp, matrix: Matrix, isolation: str) -> Received:
    """kcat, one process per topic, signed in with SASL/PLAIN and a token as the password (no OIDC in its build)."""
    token = fetch_token(idp.token_endpoint, "analyst")
    auth = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=analyst",
            "-X", f"sasl.password={token}"]
    line = b"%p" + SEPARATOR + b"%o" + SEPARATOR + b"%h" + SEPARATOR + b"%k" + SEPARATOR + b"%s" + END
    processes = {topic: subprocess.Popen(
        ["kcat", "-C", "-b", gateway.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", *auth,
         "-X", f"isolation.level={isolation}", "-X", "check.crcs=true",
         "-X", f"fetch.message.max.bytes={PARTITION_FETCH_BYTES}", "-f", line.decode()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for topic in matrix.topics.values()}
    received = Received()
    for topic, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
        for chunk in stdout.split(END)[:-1]:
            partition, offset, headers, key, value = chunk.split(SEPARATOR, 4)
            pairs = [h.split(b"=", 1) for h in headers.split(b",")] if headers else []
            received.records.append(Got(topic, int(partition), int(offset), key, value,
                                        [(name.decode(), v) for name, v in pairs]))
        received.blob += stdout
    return received


def read_confluent(gateway, idp, matrix: Matrix, isolation: str) -> Received:
    return consume_confluent({"bootstrap.servers": gateway.bootstrap, "group.id": f"cf-{uuid.uuid4().hex[:6]}",
                              "isolation.level": isolation, "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
                              **librdkafka_settings(idp.token_endpoint, "analyst")},
                             matrix.partitions)


def read_aiokafka(gateway, idp, matrix: Matrix, isolation: str) -> Received:
    """aiokafka assigned to every partition, reading until its position reaches the end offset (the LSO under
    read_committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def consume() -> Received:
        consumer = AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, security_protocol="SASL_PLAINTEXT",
                                    sasl_mechanism="OAUTHBEARER", isolation_level=isolation,
                                    sasl_oauth_token_provider=AioKafkaProvider(idp.token_endpoint, "analyst"),
                                    enable_auto_commit=False, check_crcs=True,
                                    max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
        await consumer.start()
        received = Received()
        try:
            partitions = [TopicPartition(topic, partition) for topic, partition in matrix.partitions]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            async with asyncio.timeout(60):
                while any([await consumer.position(p) < ends[p] for p in partitions]):
                    for messages in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                        for m in messages:
                            received.add(Got(m.topic, m.partition, m.offset, m.key, m.value, list(m.headers)))
        finally:
            await consumer.stop()
        return received

    return asyncio.run(consume())


def read_franz(franz_binary, gateway, idp, matrix: Matrix, isolation: str) -> Received:
    """franz-go (tests/clients/franz, -read-only) over every topic, without a group, printing each record's bytes."""
    result = subprocess.run([
        str(franz_binary), "-read-only", "-brokers", gateway.bootstrap, "-topics", ",".join(matrix.topics.values()),
        "-n", str(len(matrix.expected(isolation))), "-isolation", isolation,
        "-partition-fetch-bytes", str(PARTITION_FETCH_BYTES), "-timeout", "120s",
        "-token-url", idp.token_endpoint, "-client-id", "analyst",
        "-client-secret", OAUTH_CLIENTS["analyst"]["secret"]],
        capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]

    def raw(text: str | None) -> bytes | None:
        return None if text is None else base64.b64decode(text)

    received = Received()
    for record in map(json.loads, result.stdout.splitlines()):
        received.add(Got(record["topic"], record["partition"], record["offset"], raw(record["key"]),
                         raw(record["value"]), [(h["key"], raw(h["value"])) for h in record["headers"]]))
    return received


def read_kafka_python(gateway, idp, matrix: Matrix, isolation: str) -> Received:
    """kafka-python assigned to every partition of the topics it can decode, reading until its position reaches
    the end offset (the LSO under read_committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="OAUTHBEARER",
                             sasl_oauth_token_provider=KafkaPythonProvider(idp.token_endpoint, "analyst"),
                             isolation_level=isolation, enable_auto_commit=False, check_crcs=True,
                             max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
    received = Received()
    try:
        partitions = [TopicPartition(matrix.topics[codec], partition)
                      for codec in KAFKA_PYTHON_CODECS for partition in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while any(consumer.position(p) < ends[p] for p in partitions):
            assert time.monotonic() < deadline, "kafka-python did not reach the end offsets"
            for messages in consumer.poll(timeout_ms=500, max_records=2000).values():
                for m in messages:
                    received.add(Got(m.topic, m.partition, m.offset, m.key, m.value, list(m.headers)))
    finally:
        consumer.close()
    return received


@pytest.fixture(scope="module")
def received(matrix, gateway, idp, kafka_jars, franz_binary,
             tmp_path_factory) -> dict[Any, Received | BaseException | int]:
    """Every client under both isolation levels, run in parallel, by (client, isolation); a run that failed holds
    its exception. Under "read-ahead answers": how many of their Fetches the gateway answered from read-ahead."""
    workdir = tmp_path_factory.mktemp("matrix-clients")
    answered_before = read_ahead_counters(gateway)[0]
    runs = {}
    for isolation in ISOLATION_LEVELS:
        runs["java", isolation] = lambda i=isolation: read_java(kafka_jars, gateway, idp, matrix, i, workdir)
        runs["kcat", isolation] = lambda i=isolation: read_kcat(gateway, idp, matrix, i)
        runs["confluent-kafka", isolation] = lambda i=isolation: read_confluent(gateway, idp, matrix, i)
        runs["aiokafka", isolation] = lambda i=isolation: read_aiokafka(gateway, idp, matrix, i)
        runs["franz-go", isolation] = lambda i=isolation: read_franz(franz_binary, gateway, idp, matrix, i)
        runs["kafka-python", isolation] = lambda i=isolation: read_kafka_python(gateway, idp, matrix, i)
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run) for name, run in runs.items()}
    results = {name: future.exception() or future.result() for name, future in futures.items()}
    results["read-ahead answers"] = read_ahead_counters(gateway)[0] - answered_before
    return results


def test_the_clients_were_answered_from_read_ahead(received):
    """What the other client tests check passed through read-ahead: the gateway answered Fetches with it."""
    assert received["read-ahead answers"] > 100  # about 700 measured: 60 to 145 per client


@pytest.mark.parametrize("isolation", ISOLATION_LEVELS)
@pytest.mark.parametrize("client", CLIENTS)
def test_client_receives_every_record_masked_at_the_brokers_offsets(received, matrix, client, isolation):
    """No original secret anywhere in what the client received; every field masked as the rules say and the rest
    as produced; each record at the partition and offset the broker gave it; under read_committed exactly the
    plain and committed records, under read_uncommitted the aborted ones too (masked as well). kafka-python reads
    only the topics of the codecs it can decode."""
    result = received[client, isolation]
    if isinstance(result, BaseException):
        raise result
    leaks = matrix.scanner.leaks(result.blob)
    assert not leaks, f"{len(leaks)} secrets reached the client unmasked, e.g. {leaks[:3]}"
    seen: set[int] = set()
    for got in result.records:
        match = KEY_INDEX.match(got.key or b"")
        assert match, f"unrecognised key {got.key!r}"
        index = int(match.group(1))
        assert index not in seen, f"record {index} received twice"
        seen.add(index)
        sample = matrix.samples[index]
        assert got.topic in (None, sample.topic)
        assert (got.partition, got.offset) == (sample.partition, matrix.offsets[index]), f"record {index}"
        check_masked(sample, got.key, got.value, got.headers)
    expected = matrix.expected(isolation, KAFKA_PYTHON_CODECS if client == "kafka-python" else tuple(CODECS))
    assert not seen - expected, f"{len(seen - expected)} aborted records delivered under {isolation}"
    assert seen == expected, f"{len(expected - seen)} records missing, e.g. {sorted(expected - seen)[:5]}"


# --- raw Fetch responses -------------------------------------------------------------------------------------------

def partition_of(response: dict) -> dict:
    [topic] = response["responses"]
    [partition] = topic["partitions"]
    assert partition["error_code"] == 0, partition
    return partition


@pytest.mark.parametrize("codec", list(CODECS))
def test_masked_batches_have_valid_crcs_and_the_brokers_headers(matrix, gateway, kafka_cluster, connect, codec):
    """Each rewritten batch's CRC32C covers its new bytes; every header field but length and CRC (offsets, record
    counts, codec, producer id and epoch, timestamps) is the broker's; aiokafka's and kafka-python's batch readers
    accept the batches and read the masked records at the broker's offsets."""
    topic = matrix.topics[codec]
    for partition in range(PARTITIONS):
        leader = matrix.leaders[topic, partition]
        wire = connect(f"127.0.0.1:{gateway.port_base + leader}", subject="analyst")
        through = partition_of(wire.request(FETCH, 12, fetch_body(topic, [partition])))
        with direct_wire(kafka_cluster, leader) as direct:
            stored = partition_of(direct.request(FETCH, 12, fetch_body(topic, [partition])))
        assert through["high_watermark"] == stored["high_watermark"]
        assert through["aborted_transactions"] == stored["aborted_transactions"]
        masked, original = bytes(through["records"]), bytes(stored["records"])
        assert masked != original
        batches, broker_batches = walk_batches(masked), walk_batches(original)
        assert [b.header for b in batches] == [b.header for b in broker_batches]
        assert sum(len(b.raw) for b in batches) == len(masked), "bytes outside complete batches"
        assert all(b.crc_ok for b in batches), [b.base_offset for b in batches if not b.crc_ok]
        data_batches = [b for b in batches if not b.attributes & 0x20]
        assert data_batches and all(b.attributes & 0x07 == CODECS[codec] for b in data_batches)

        received, count = Received(), 0
        aio = AioRecords(masked)
        while (batch := aio.next_batch()) is not None:
            assert batch.validate_crc()
            if batch.is_control_batch:
                continue
            for r in batch:
                received.add(Got(topic, partition, r.offset, r.key, r.value, list(r.headers)))
        assert not matrix.scanner.leaks(received.blob)
        indexes = {i for i, s in matrix.samples.items() if (s.topic, s.partition) == (topic, partition)}
        assert len(received.records) == len(indexes)
        for got in received.records:
            index = int(KEY_INDEX.match(got.key).group(1))
            assert got.offset == matrix.offsets[index]
            check_masked(matrix.samples[index], got.key, got.value, got.headers)

        kafka_python = KafkaPythonRecords(masked)
        while (batch := kafka_python.next_batch()) is not None:
            assert batch.validate_crc()
            if codec in KAFKA_PYTHON_CODECS and not batch.is_control_batch:
                count += sum(1 for _ in batch)
        if codec in KAFKA_PYTHON_CODECS:
            assert count == len(indexes)
