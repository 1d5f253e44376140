"""Hostile record batches on the masked Fetch path, and what an unmasked topic costs.

Unit level, against gateway.handlers.masking.fetch_masking with hand-made Fetch responses, both as a decoded response
and as the frame the gateway splices (the two must agree byte for byte): a partition whose records
cannot be parsed or masked (wrong lengths, varints running over, bad CRC, legacy message sets, decompression bombs)
is emptied (records b"") with a warning naming topic and partition, never passed through, while the other partitions
and topics of the same response are untouched; a trailing partial batch, which brokers send routinely, is dropped
without a warning. A bad CRC always empties the partition, even on a batch with nothing to mask: the kernel checks
every batch's CRC32C before reading it, since a rewritten batch gets a fresh CRC and would otherwise launder
corrupt bytes into a batch that looks sound; clients checking CRCs would refuse that batch anyway.

Through the real brokers and gateway: a compression bomb the broker accepts (a few KB of zstd or gzip inflating to
80 MiB, past the kernel's 64 MiB cap on one inflated batch) empties its partition for the masked reader while the
gateway keeps serving; and the records of a topic without masking rules reach the client byte for byte as the
broker sent them, for every codec.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator

import pytest
from kafka.admin import NewTopic
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from _fastpath.mask import Masker
from _fastpath.record_batch import UnmaskableRecords, iter_records, mask_records
from gateway.dev.process import ALLOW_ALL, REPO
from gateway.handlers.masking import MaskerCache, fetch_masking
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies
from gateway.protocol import codec
from gateway.protocol.apis import FETCH, FIND_COORDINATOR, METADATA, PRODUCE, SHARE_FETCH, SHARE_GROUP_HEARTBEAT
from gateway.protocol.errors import CORRUPT_MESSAGE, TOPIC_AUTHORIZATION_FAILED
from tests.masking_data import (
    CODECS,
    COMMITTED,
    PLAIN,
    LeakScanner,
    batch,
    bomb_batch,
    check_masked,
    consume_confluent,
    direct_wire,
    fetch_body,
    from_the_beginning,
    make_sample,
    make_samples,
    masking_policy,
    produce_samples,
    record,
    record_body,
    sample_batch,
    seal,
    varint,
    zeros_bomb,
)
from tests.oauth import librdkafka_settings
from tests.waiting import wait_until

MASKED, PLAIN_TOPIC = "masked-orders", "plain-orders"
TOPIC_IDS = {MASKED: b"M" * 16, PLAIN_TOPIC: b"P" * 16}
MAX_OUTPUT = 256 << 20  # the gateway's default max_response_bytes
INFLATE_CAP = 64 << 20  # _fastpath.record_batch's cap on one inflated batch (fetch_masking keeps the default)

# Partition 0 of the masked topic gets the hostile bytes; partition 1 and the plain topic hold these good records.
GOOD_SAMPLES = [make_sample(i, MASKED, 1, PLAIN) for i in range(6)]
HOSTILE_SAMPLES = [make_sample(i, MASKED, 0, PLAIN) for i in range(100, 104)]
SCANNER = LeakScanner(GOOD_SAMPLES + HOSTILE_SAMPLES)
GOOD = sample_batch(GOOD_SAMPLES)
SENSITIVE = sample_batch(HOSTILE_SAMPLES)
ONE = HOSTILE_SAMPLES[0]
ONE_RECORD = record(ONE.key, ONE.value)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("hostile-policy") / "policy.yaml"
    path.write_text(masking_policy("masked-", "plain-"))
    return Engine(load_policies(path))


def fetch_fix(engine: Engine, version: int = 12):
    """The analyst's fix-up for a Fetch of both partitions of the masked topic and partition 0 of the plain one."""
    wanted = [(MASKED, [0, 1]), (PLAIN_TOPIC, [0])]
    key = "topic_id" if version >= 13 else "topic"
    body = {"topics": [{key: TOPIC_IDS[t] if version >= 13 else t, "partitions": [{"partition": p} for p in ps]}
                       for t, ps in wanted]}
    names = {topic_id: name for name, topic_id in TOPIC_IDS.items()}
    return fetch_masking(body, version, engine.for_principal("analyst", ("analysts",)), engine, MaskerCache(b"k" * 32),
                         names.get, MAX_OUTPUT, "hostile-test")


def fetch_response(hostile: bytes, version: int = 12) -> dict:
    def topic(name: str, partitions: list[dict]) -> dict:
        return {"topic_id" if version >= 13 else "topic": TOPIC_IDS[name] if version >= 13 else name,
                "partitions": partitions}

    def partition(index: int, records: bytes) -> dict:
        return {"partition_index": index, "error_code": 0, "high_watermark": 4242, "records": records}

    return {"responses": [topic(MASKED, [partition(0, hostile), partition(1, GOOD)]),
                          topic(PLAIN_TOPIC, [partition(0, GOOD)])]}


def apply(engine: Engine, hostile: bytes, version: int = 12, *, error: int = 0) -> bytes:
    """Run the fix-up over a response whose masked partition 0 holds these bytes; check the bystanders and
    partition 0's error code; return what partition 0 holds afterwards."""
    fix = fetch_fix(engine, version)
    assert fix is not None
    response = fix(fetch_response(hostile, version))
    masked_topic, plain_topic = response["responses"]
    hostile_partition, good_partition = masked_topic["partitions"]
    # Partition 1 of the same topic: masked, every record as the rules say.
    rewritten = good_partition["records"]
    assert not SCANNER.leaks(rewritten)
    got = iter_records(rewritten)
    assert len(got) == len(GOOD_SAMPLES)
    for sample, (_, _, key, value, headers) in zip(GOOD_SAMPLES, got, strict=True):
        check_masked(sample, key, value, headers)
    # The unmasked topic: its very bytes object, untouched.
    assert plain_topic["partitions"][0]["records"] is GOOD
    assert (good_partition["error_code"], good_partition["high_watermark"]) == (0, 4242)
    # An emptied partition says why (CORRUPT_MESSAGE); one that only lost a truncated tail is not in error.
    assert (hostile_partition["error_code"], hostile_partition["high_watermark"]) == (error, 4242)
    # The gateway's own path splices the frame as received instead; it must give the same response, byte for byte.
    frame = codec.encode_response_frame(FETCH, version, 7, fetch_response(hostile, version))
    spliced = fix.splice(frame)  # the same fix-up: its warning about this partition is not repeated
    assert spliced is not None
    assert b"".join(spliced) == codec.encode_response_frame(FETCH, version, 7, response)
    return hostile_partition["records"]


def legacy(magic: int) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    builder.append(0, 1_700_000_000_000 if magic else None, ONE.key, ONE.value)
    return bytes(builder.build())


def with_length(data: bytes, length: int, *, reseal: bool = False) -> bytes:
    out = bytearray(data)
    out[8:12] = length.to_bytes(4, "big", signed=True)
    return seal(out[:12 + length]) if reseal else bytes(out)


def flipped(data: bytes, at: int = -1) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def one_record_batch(body: bytes, length: int | None = None, length_varint: bytes | None = None) -> bytes:
    """A batch of one record with this body, its length as given (or the body's)."""
    prefix = length_varint if length_varint is not None else varint(len(body) if length is None else length)
    return batch(prefix + body, 1)


ONE_BODY = record_body(ONE.key, ONE.value)
AFTER_DELTAS = ONE_BODY[3:]  # key, value, headers: after attributes, timestamp delta and offset delta
EMPTIED = {
    "batch length shorter than a batch header": with_length(SENSITIVE, 40),
    "batch length cutting its records (CRC recomputed)": with_length(SENSITIVE, len(SENSITIVE) - 12 - 30, reseal=True),
    "batch length spanning the next batch": with_length(SENSITIVE + GOOD, len(SENSITIVE) + len(GOOD) - 12),
    "record length overrunning its batch": one_record_batch(ONE_BODY, length=len(ONE_BODY) + 50),
    "record length as a 6-byte varint": one_record_batch(ONE_BODY, length_varint=b"\x80\x80\x80\x80\x80\x00"),
    "timestamp delta as an 11-byte varlong": one_record_batch(b"\x00" + b"\x80" * 10 + b"\x00\x00" + AFTER_DELTAS),
    "key length as a 6-byte varint": one_record_batch(b"\x00\x00\x00" + b"\xff" * 5 + b"\x01" + AFTER_DELTAS),
    "more records than the count": batch(ONE_RECORD * 2, 1),
    "record attributes with the high bit set (Python clients misread the record)":
        one_record_batch(b"\x80" + ONE_BODY[1:]),
    "bad CRC": flipped(SENSITIVE),
    "bad CRC on a batch with nothing to mask": flipped(batch(record(b"k", b"nothing sensitive"), 1)),
    "good batch, then one with a bad CRC": GOOD + flipped(sample_batch(HOSTILE_SAMPLES, base_offset=6)),
    "legacy message set v0": legacy(0),
    "legacy message set v1": legacy(1),
    "unknown magic": (lambda b: b[:16] + b"\x03" + b[17:])(SENSITIVE),
    "corrupt gzip": batch(b"\x1f\x8b" + ONE_RECORD, 1, codec=CODECS["gzip"]),
}


@pytest.mark.parametrize("hostile", list(EMPTIED.values()), ids=list(EMPTIED))
@pytest.mark.parametrize("version", [12, 17])
def test_unmaskable_partition_is_emptied_and_logged(engine, caplog, hostile, version):
    """The partition comes back with no records at all, a warning names topic and partition, and the other
    partition and the unmasked topic of the same response are as they should be."""
    assert SCANNER.leaks(hostile) or b"nothing sensitive" in hostile, "the hostile bytes should hold a secret"
    caplog.set_level(logging.WARNING, logger="streamward.masking")
    records = apply(engine, hostile, version, error=CORRUPT_MESSAGE)
    assert records == b""
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamward.masking"]
    assert len(warnings) == 1 and f"emptied {MASKED}[0]" in warnings[0], warnings


@pytest.mark.parametrize("cut", [5, 40, len(SENSITIVE) // 2, len(SENSITIVE) - 1])
def test_a_truncated_last_batch_is_dropped_without_a_warning(engine, caplog, cut):
    """Brokers end a fetch with a partial batch when the next one does not fit; clients skip it. The gateway
    drops it too (it can be neither checked nor masked), keeps the complete batches before it, masked, and logs
    nothing: this is not an attack."""
    caplog.set_level(logging.WARNING, logger="streamward.masking")
    alone = apply(engine, SENSITIVE[:cut])
    assert alone == b""
    after_good = apply(engine, GOOD + sample_batch(HOSTILE_SAMPLES, base_offset=6)[:cut])
    assert not SCANNER.leaks(after_good)
    assert [r[0] for r in iter_records(after_good)] == list(range(len(GOOD_SAMPLES)))
    # A declared length past the end of the data is the same thing.
    past_end = apply(engine, with_length(SENSITIVE, len(SENSITIVE)))
    assert past_end == b""
    assert not [r for r in caplog.records if r.name == "streamward.masking"]


def test_records_hidden_behind_a_zero_record_count_do_not_pass(engine):
    """librdkafka reads records to the end of a batch whatever its count says: a zero count must not hide any."""
    hidden = batch(ONE_RECORD, 0)
    records = apply(engine, hidden, error=CORRUPT_MESSAGE)
    assert not SCANNER.leaks(records)


def test_an_empty_batch_kept_by_compaction_passes(engine):
    """Compaction keeps empty batches (no records, no payload) for producer state: they are not hostile."""
    empty = batch(b"", 0)
    assert apply(engine, empty) == empty


@pytest.mark.parametrize("codec_name", ["gzip", "zstd", "lz4"])
def test_decompression_bomb_empties_the_partition(engine, caplog, codec_name):
    """200 MiB of zeros in about 200 KB or less: refused at the inflate cap, partition emptied and logged, the rest of
    the response as it should be."""
    caplog.set_level(logging.WARNING, logger="streamward.masking")
    bomb = batch(zeros_bomb(codec_name), 1, codec=CODECS[codec_name])
    assert len(bomb) < 1 << 20
    started = time.perf_counter()
    records = apply(engine, bomb, error=CORRUPT_MESSAGE)
    assert time.perf_counter() - started < 5
    assert records == b""
    [warning] = [r.getMessage() for r in caplog.records if r.name == "streamward.masking"]
    assert f"emptied {MASKED}[0]" in warning and "inflates past" in warning, warning


# Run in a fresh interpreter, reading the peak from /proc: getrusage's ru_maxrss survives fork and exec, so a child of
# this (large) pytest process would report the parent's peak.
MEMORY_PROBE = """
import json, sys, time
from gateway.handlers.masking import MaskerCache, fetch_masking
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies
from tests.masking_data import CODECS, batch, zeros_bomb

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

codec, policy = sys.argv[1], sys.argv[2]
engine = Engine(load_policies(policy))
records = batch(zeros_bomb(codec), 1, codec=CODECS[codec])
fix = fetch_masking({"topics": [{"topic": "masked-bomb", "partitions": [{"partition": 0}]}]}, 12,
                    engine.for_principal("analyst", ("analysts",)), engine, MaskerCache(b"k" * 32), lambda _: None,
                    256 << 20, "probe")
response = {"responses": [{"topic": "masked-bomb", "partitions": [{"partition_index": 0, "records": records}]}]}
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets VmHWM, the peak resident size, to the current one
resident = kib("VmRSS")
started = time.perf_counter()
fix(response)
elapsed = time.perf_counter() - started
print(json.dumps({"grown": (kib("VmHWM") - resident) << 10, "seconds": elapsed,
                  "records": len(response["responses"][0]["partitions"][0]["records"])}))
"""


@pytest.mark.parametrize("codec_name", ["gzip", "zstd", "lz4"])
def test_decompression_bomb_costs_bounded_memory(tmp_path, codec_name):
    """Peak memory while refusing a 200 MiB bomb grows by less than 64 MiB over the 64 MiB inflate cap (the peak
    resident size, reset just before, against the resident size then)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(masking_policy("masked-", "plain-"))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, codec_name, str(policy)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    probe = json.loads(result.stdout)
    assert probe["records"] == 0
    assert probe["grown"] < INFLATE_CAP + (64 << 20), f"peak memory grew by {probe['grown'] >> 20} MiB"
    assert probe["seconds"] < 5


# --- through the real brokers and gateway ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefixes(gateway) -> Iterator[tuple[str, str]]:
    masked, plain = f"hx-{uuid.uuid4().hex[:6]}-", f"hxplain-{uuid.uuid4().hex[:6]}-"
    gateway.install_policy(masking_policy(masked, plain))
    yield masked, plain
    gateway.install_policy(ALLOW_ALL)


@pytest.fixture(scope="module")
def first_node(kafka_cluster) -> int:
    return kafka_cluster.node_ids[0]


def create_on(admin, node: int, *names: str) -> None:
    """One-partition topics led by this node, so that one Fetch can name them all."""
    admin.create_topics([NewTopic(name, -1, -1, replica_assignments={0: [node]}) for name in names], timeout_ms=30000)


def raw_fetch(wire, body: dict, correlation_id: int = 4242) -> bytes:
    """The response frame exactly as it came off the socket."""
    wire.send_raw(codec.encode_request_frame(FETCH, 12, correlation_id, "hostile-test", body))
    return wire.read_frame()


def partitions_of(response: dict) -> dict[str, dict]:
    return {t["topic"]: t["partitions"][0] for t in response["responses"]}


@pytest.mark.parametrize("codec_name", ["zstd", "gzip"])
def test_compression_bomb_from_the_broker_empties_the_partition(gateway, kafka_cluster, admin, connect, idp, prefixes,
                                                                first_node, codec_name):
    """A bomb the broker accepted (small on the wire, 80 MiB inflated) followed by a record with secrets: the masked
    reader gets no record of that partition, nothing unmasked, the gateway log names the partition, and the gateway
    keeps serving: same workers, and another masked topic still reads, masked."""
    masked_prefix, _ = prefixes
    bombed, other = f"{masked_prefix}bomb-{codec_name}", f"{masked_prefix}after-bomb-{codec_name}"
    create_on(admin, first_node, bombed, other)
    bomb = bomb_batch(codec_name, 80 << 20)
    assert len(bomb) < 200_000  # well under the broker's max.message.bytes
    with direct_wire(kafka_cluster, first_node) as direct:
        produced = direct.request(PRODUCE, 9, {"acks": -1, "timeout_ms": 30000, "transactional_id": None,
                                               "topic_data": [{"name": bombed, "partition_data": [
                                                   {"index": 0, "records": bomb},
                                               ]}]})
        assert produced["responses"][0]["partition_responses"][0]["error_code"] == 0, produced
        produced = direct.request(PRODUCE, 9, {"acks": -1, "timeout_ms": 30000, "transactional_id": None,
                                               "topic_data": [{"name": bombed, "partition_data": [
                                                   {"index": 0, "records": sample_batch(HOSTILE_SAMPLES)},
                                               ]}]})
        assert produced["responses"][0]["partition_responses"][0]["error_code"] == 0, produced
        stored = partitions_of(direct.request(FETCH, 12, fetch_body(bombed, [0])))[bombed]
    # The broker keeps the bomb as it came (it sets the base offset and leader epoch, which the CRC does not cover).
    assert stored["high_watermark"] == 1 + len(HOSTILE_SAMPLES)
    assert bytes(stored["records"][17:len(bomb)]) == bomb[17:]
    samples = make_samples(other, 0, [(PLAIN, 30)], partitions=1)
    produce_samples(kafka_cluster, "none", samples)
    workers = sorted(gateway.worker_pids())

    wire = connect(f"127.0.0.1:{gateway.port_base + first_node}", subject="analyst")
    through = partitions_of(wire.request(FETCH, 12, fetch_body(bombed, [0])))[bombed]
    assert (through["error_code"], through["high_watermark"], through["records"]) == \
        (CORRUPT_MESSAGE, stored["high_watermark"], b"")

    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"bomb-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         **librdkafka_settings(idp.token_endpoint, "analyst")})
    consumer.subscribe([bombed])
    delivered = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        delivered += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    consumer.close()
    assert delivered == [], f"{len(delivered)} records delivered from the bombed partition"
    assert f"emptied {bombed}[0]" in gateway.log_text() and "inflates past" in gateway.log_text()

    after = consume_confluent({"bootstrap.servers": gateway.bootstrap, "group.id": f"after-{uuid.uuid4().hex[:6]}",
                               **librdkafka_settings(idp.token_endpoint, "analyst")}, [(other, 0)])
    assert len(after.records) == len(samples) and not LeakScanner(samples).leaks(after.blob)
    for got, sample in zip(after.records, samples, strict=True):
        check_masked(sample, got.key, got.value, got.headers)
    assert gateway.health()["status"] == "ok" and sorted(gateway.worker_pids()) == workers


@pytest.fixture(scope="module")
def unmasked_topics(kafka_cluster, admin, prefixes, first_node) -> dict[str, str]:
    """A topic without masking rules per codec, and a masked one, all led by the first node, with records full of
    secrets, transactions and control batches."""
    masked_prefix, plain_prefix = prefixes
    topics = {name: f"{plain_prefix}{name}" for name in CODECS}
    create_on(admin, first_node, *topics.values(), f"{masked_prefix}beside")
    for k, (name, topic) in enumerate(topics.items()):
        produce_samples(kafka_cluster, name, make_samples(topic, 1000 * k, [(PLAIN, 40), (COMMITTED, 40)], 1))
    produce_samples(kafka_cluster, "lz4", make_samples(f"{masked_prefix}beside", 9000, [(PLAIN, 40)], 1))
    topics["masked"] = f"{masked_prefix}beside"
    return topics


@pytest.mark.parametrize("codec_name", list(CODECS))
def test_a_topic_without_masking_rules_gets_the_brokers_bytes(gateway, kafka_cluster, connect, unmasked_topics,
                                                             first_node, codec_name):
    """The masked reader fetching a topic that has no masking rules gets the broker's Fetch response byte for byte;
    and with a masked topic in the same Fetch (so that the response is decoded and encoded again) that topic's
    records are still the broker's bytes."""
    topic, masked = unmasked_topics[codec_name], unmasked_topics["masked"]
    both = fetch_body(topic, [0])
    both["topics"].append(fetch_body(masked, [0])["topics"][0])
    with direct_wire(kafka_cluster, first_node) as direct:
        from_broker = raw_fetch(direct, fetch_body(topic, [0]))
        broker_both = partitions_of(direct.request(FETCH, 12, both))
    wire = connect(f"127.0.0.1:{gateway.port_base + first_node}", subject="analyst")
    through = raw_fetch(wire, fetch_body(topic, [0]))
    through_both = partitions_of(wire.request(FETCH, 12, both))

    records = partitions_of(codec.decode_response_frame(FETCH, 12, from_broker)[1])[topic]["records"]
    assert records  # something to compare
    assert through == from_broker
    assert through_both[topic]["records"] == broker_both[topic]["records"] == records
    assert through_both[masked]["records"] != broker_both[masked]["records"]


@pytest.mark.parametrize("change", ["masked", "refused"])
def test_a_fetch_waiting_at_the_broker_is_decided_again_when_the_policy_changes(gateway, kafka_cluster, admin, connect,
                                                                                 prefixes, first_node, change):
    """A long-poll Fetch of a topic the analyst reads as it is waits at the broker; meanwhile the policy starts to
    mask that topic (or stops allowing it), and then records with secrets arrive, which answer the poll. That
    answer was decided under the old policy, so it must not reach the client: the gateway closes the connection
    and says why. Nothing is lost: a new Fetch is decided under the new policy (masked records, or refused)."""
    masked_prefix, plain_prefix = prefixes
    topic = f"inflight-{change}-{uuid.uuid4().hex[:6]}"
    create_on(admin, first_node, topic)
    gateway.install_policy(masking_policy(masked_prefix, topic))
    try:
        wire = connect(f"127.0.0.1:{gateway.port_base + first_node}", subject="analyst")
        long_poll = fetch_body(topic, [0])
        long_poll.update(max_wait_ms=20_000, min_bytes=1)
        wire.send_raw(codec.encode_request_frame(FETCH, 12, 99, "inflight-test", long_poll))
        time.sleep(1.0)     # the Fetch is at the broker, waiting for records
        gateway.install_policy(masking_policy(topic, plain_prefix) if change == "masked"
                               else masking_policy(masked_prefix, plain_prefix))
        samples = make_samples(topic, 0, [(PLAIN, 20)], partitions=1)
        produce_samples(kafka_cluster, "none", samples)
        assert wire.closed_by_peer(timeout=15)
        assert not LeakScanner(samples).leaks(bytes(wire.received))
        assert f"the policy changed for topic {topic} while a fetch of it waited at the broker" in gateway.log_text()

        again = connect(f"127.0.0.1:{gateway.port_base + first_node}", subject="analyst")
        answer = partitions_of(again.request(FETCH, 12, fetch_body(topic, [0])))[topic]
        if change == "masked":
            assert answer["error_code"] == 0 and len(list(iter_records(answer["records"]))) == len(samples)
            assert not LeakScanner(samples).leaks(bytes(again.received))
        else:
            assert answer["error_code"] == TOPIC_AUTHORIZATION_FAILED and not answer["records"]
    finally:
        gateway.install_policy(masking_policy(masked_prefix, plain_prefix))


def test_a_share_fetch_waiting_at_the_broker_is_decided_again_when_the_policy_changes(gateway, kafka_cluster, admin,
                                                                                       connect, prefixes, first_node):
    """The ShareFetch form of the test above: a share group member's ShareFetch of a topic the analyst reads as it
    is waits at the broker; the policy starts to mask that topic, and records with secrets arrive, which answer
    it. The answer was decided under the old policy, so the gateway closes the connection and says why, and no
    secret reaches the client."""
    masked_prefix, plain_prefix = prefixes
    topic, group, member = f"inflight-share-{uuid.uuid4().hex[:6]}", f"share-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    create_on(admin, first_node, topic)
    # From the earliest offset: records produced before the share partition first loads are delivered too.
    from_the_beginning(kafka_cluster, group)
    gateway.install_policy(masking_policy(masked_prefix, topic))
    try:
        wire = connect(f"127.0.0.1:{gateway.port_base + first_node}", subject="analyst")
        [described] = wire.request(METADATA, 12, {"topics": [{"topic_id": bytes(16), "name": topic}],
                                                  "allow_auto_topic_creation": False,
                                                  "include_topic_authorized_operations": False})["topics"]
        assert described["error_code"] == 0, described

        def joined() -> bool:
            """Whether the analyst is a member of the share group (on a fresh cluster, its coordinator comes up
            first: until then FindCoordinator or the heartbeat answer a retriable error)."""
            [found] = wire.request(FIND_COORDINATOR, 6, {"key_type": 0, "coordinator_keys": [group]})["coordinators"]
            joining.append(found)
            if found["error_code"] != 0:
                return False
            member_wire = connect(f"{found['host']}:{found['port']}", subject="analyst")
            joining.append(member_wire.request(SHARE_GROUP_HEARTBEAT, 1, {
                "group_id": group, "member_id": member, "member_epoch": 0, "rack_id": None,
                "subscribed_topic_names": [topic]}))
            return joining[-1]["error_code"] == 0

        joining: list[dict] = []    # the answers, for the failure message
        assert wait_until(joined, timeout=30, interval=0.5), joining[-1]

        def share_fetch(epoch: int, max_wait_ms: int) -> dict:
            return {"group_id": group, "member_id": member, "share_session_epoch": epoch, "max_wait_ms": max_wait_ms,
                    "min_bytes": 1, "max_bytes": 1 << 20, "max_records": 500, "batch_size": 500,
                    "topics": [{"topic_id": described["topic_id"],
                                "partitions": [{"partition_index": 0, "acknowledgement_batches": []}]}],
                    "forgotten_topics_data": []}

        def warmed_up() -> bool:
            """Whether a short ShareFetch has delivered the warm-up record: the share partition is loaded (the first
            share group of a fresh cluster waits for the broker's share state, and a long poll sent before that
            could wait past any timeout here) and the share session open."""
            answer = wire.request(SHARE_FETCH, 1, share_fetch(len(fetched), 100))
            fetched.append(answer)
            return answer["error_code"] == 0 and any(
                partition["acquired_records"] for topic in answer["responses"] for partition in topic["partitions"])

        produce_samples(kafka_cluster, "none", make_samples(topic, 900, [(PLAIN, 1)], partitions=1))
        fetched: list[dict] = []    # the answers: their count is the share session's next epoch
        assert wait_until(warmed_up, timeout=30, interval=0.5), fetched[-1]
        long_poll = share_fetch(len(fetched), 20_000)
        wire.send_raw(codec.encode_request_frame(SHARE_FETCH, 1, 99, "inflight-test", long_poll))
        time.sleep(1.5)     # the ShareFetch is at the broker, waiting for records
        # Still waiting: nothing has come back yet (an early answer, an error say, would make this test vacuous).
        assert select.select([wire.sock], [], [], 0)[0] == [], "the ShareFetch was answered before any record came"
        gateway.install_policy(masking_policy(topic, plain_prefix))
        samples = make_samples(topic, 0, [(PLAIN, 20)], partitions=1)
        produce_samples(kafka_cluster, "none", samples)
        assert wire.closed_by_peer(timeout=15)
        assert not LeakScanner(samples).leaks(bytes(wire.received))
        assert f"the policy changed for topic {topic} while a fetch of it waited at the broker" in gateway.log_text()
    finally:
        gateway.install_policy(masking_policy(masked_prefix, plain_prefix))


GLUE_ID = b"G" * 16  # an AWS Glue schema version id


def test_a_glue_zlib_value_is_masked_inside_an_uncompressed_batch(engine):
    """Secrets inside a Glue-framed zlib payload, in a batch that is not compressed at all (nothing the batch
    codec would inflate): the record comes back masked, framed as uncompressed."""
    secret = b'{"card": "4111 1111 1111 1111", "contact": "bob@example.com"}'
    value = b"\x03\x05" + GLUE_ID + zlib.compress(secret)
    records = apply(engine, batch(record(b"k", value), 1))
    [(_, _, _, got, _)] = iter_records(records)
    assert got[:18] == b"\x03\x00" + GLUE_ID and b"4111" not in got and b"bob@example.com" not in got
    assert b'"contact": "' in got


def test_a_glue_zlib_bomb_empties_the_partition(engine, caplog):
    """One record's Glue payload inflating past the cap (80 MiB of zeros in about 80 KB): the partition is emptied
    and logged, as for a batch-level bomb; the payload is never delivered unseen."""
    caplog.set_level(logging.WARNING, logger="streamward.masking")
    value = b"\x03\x05" + GLUE_ID + zlib.compress(bytes(80 << 20), 1)
    assert len(value) < 1 << 20
    records = apply(engine, batch(record(b"k", value), 1), error=CORRUPT_MESSAGE)
    assert records == b""
    [warning] = [r.getMessage() for r in caplog.records if r.name == "streamward.masking"]
    assert f"emptied {MASKED}[0]" in warning and "Glue-framed zlib payload inflates past" in warning, warning


def test_glue_zlib_values_share_one_inflate_budget():
    """Many Glue zlib values, each well under the cap, must not together cost unbounded time: what all the
    values of one partition inflate to counts against one budget (mask_records' max_inflated)."""
    masker = Masker([{"name": "cards", "target": "value", "kind": "detector", "detector": "card",
                      "strategy": "redact"}], b"k" * 32)
    value = b"\x03\x05" + GLUE_ID + zlib.compress(b'{"card": "4111 1111 1111 1111"}' + b" " * 40_000)
    records = batch(b"".join(record(b"k", value, offset_delta=i) for i in range(5)), 5)
    assert mask_records(records, masker, max_output=1 << 24, max_inflated=250_000).changed   # 5 x 40 KB: fits
    with pytest.raises(UnmaskableRecords, match="inflates past"):
        mask_records(records, masker, max_output=1 << 24, max_inflated=150_000)
