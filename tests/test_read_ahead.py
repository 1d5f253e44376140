"""Read-ahead on the masked Fetch path (gateway/handlers/read_ahead.py): the gateway fetches and masks a catching-up
consumer's next response while the consumer reads this one, and answers the consumer's next Fetch with it only
when that Fetch asks exactly what was read ahead, under the same policy.

Unit level: which Fetch is predicted from a response (offsets past the last whole batch, a backlog required, no
read-ahead after an error or a legacy batch), what counts as the same Fetch, and the answer's correlation id.
Through the real gateway and brokers: a librdkafka consumer catching up reads every record once, in order,
masked, with Fetches answered from read-ahead; a Fetch for other offsets gets its own answer, and the masking
counts count only what clients received; a policy published meanwhile drops the read-ahead.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
import weakref

import pytest
from confluent_kafka import Producer

from gateway.handlers import read_ahead
from gateway.handlers.masking import MaskerCache, fetch_masking
from gateway.handlers.read_ahead import ReadAhead, predict, read, same_fetch
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies
from gateway.protocol import codec
from gateway.protocol.apis import FETCH
from tests import test_masking_gateway
from tests.masking_data import admin_client_config, batch, fetch_body, leaders, read_ahead_counters, record
from tests.test_masking_gateway import CARD, EMAIL, MASKING_POLICY, consume_as_analyst
from tests.test_masking_gateway import record as sample_record

TOPIC = "masked-reads"
TOPIC_ID = b"T" * 16


def response(version: int, partitions: list[tuple[int, int, bytes | None]], **tagged: dict) -> bytes:
    """A Fetch response frame of TOPIC: (partition, error code, records) each; ``tagged``: tagged fields of its
    first partition."""
    key = {"topic_id": TOPIC_ID} if version >= 13 else {"topic": TOPIC}
    return codec.encode_response_frame(FETCH, version, 7, {
        "throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": [{**key, "partitions": [
            {"partition_index": index, "error_code": error, "high_watermark": 1000, "last_stable_offset": 1000,
             "log_start_offset": 0, "aborted_transactions": None, "preferred_read_replica": -1, "records": records,
             **(tagged if at == 0 else {})}
            for at, (index, error, records) in enumerate(partitions)]}]})


def request(version: int, offsets: dict[int, int], max_bytes: int = 1000, epoch: int = -1) -> dict:
    body = fetch_body(TOPIC, sorted(offsets), max_bytes=max_bytes)
    topic = body["topics"][0]
    if version >= 13:
        topic["topic_id"] = TOPIC_ID
    for partition in topic["partitions"]:
        partition["fetch_offset"] = offsets[partition["partition"]]
        partition["last_fetched_epoch"] = epoch
    return codec.decode_request(FETCH, version, codec.encode_request_frame(FETCH, version, 1, "t", body),
                                codec.parse_request_header(codec.encode_request_frame(FETCH, version, 1, "t", body))[4])


def records_at(base_offset: int, count: int, epoch: int = 3) -> bytes:
    """One v2 batch of ``count`` records from ``base_offset``, its partition leader epoch set (bytes 12..16)."""
    payload = b"".join(record(b"k", b"v" * 100, offset_delta=k) for k in range(count))
    data = bytearray(batch(payload, count, base_offset=base_offset))
    data[12:16] = epoch.to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("version", [12, 13, 17])
def test_the_next_fetch_starts_after_the_last_whole_batch_of_each_partition(version):
    """Partition 0 returned two batches and a batch cut off by the fetch size: it moves to after the second;
    partition 1 returned nothing and stays; max_wait_ms is 0 (the broker answers at once)."""
    whole = records_at(40, 5) + records_at(45, 3)
    frame = response(version, [(0, 0, whole + records_at(48, 9)[:30]), (1, 0, b"")])
    predicted = predict(request(version, {0: 40, 1: 7}, max_bytes=len(whole)), version, read(frame, version))
    assert predicted is not None and predicted["max_wait_ms"] == 0
    offsets = {p["partition"]: (p["fetch_offset"], p["last_fetched_epoch"])
               for p in predicted["topics"][0]["partitions"]}
    # The partition that moved asks with the epoch of its last batch delivered; the other keeps the client's.
    assert offsets == {0: (48, 3), 1: (7, -1)}
    with_epochs = predict(request(version, {0: 40, 1: 7}, max_bytes=len(whole), epoch=2), version,
                          read(frame, version))
    assert {p["partition"]: p["last_fetched_epoch"] for p in with_epochs["topics"][0]["partitions"]} == {0: 3, 1: 2}


@pytest.mark.parametrize("version", [12, 13])
def test_no_read_ahead_without_a_backlog_after_an_error_or_past_a_legacy_batch(version):
    records = records_at(0, 5)
    # Under half of what it may return: no backlog.
    assert predict(request(version, {0: 0}, max_bytes=len(records) * 2 + 2), version,
                   read(response(version, [(0, 0, records)]), version)) is None
    assert predict(request(version, {0: 0}, max_bytes=len(records)), version,
                   read(response(version, [(0, 0, records)]), version)) is not None
    assert predict(request(version, {0: 0, 1: 0}, max_bytes=len(records)), version,
                   read(response(version, [(0, 0, records), (1, 6, None)]), version)) is None  # NOT_LEADER_OR_FOLLOWER
    legacy = bytearray(records)
    legacy[16] = 1
    assert predict(request(version, {0: 0}, max_bytes=len(records)), version,
                   read(response(version, [(0, 0, bytes(legacy))]), version)) is None


@pytest.mark.parametrize("version", [12, 13])
def test_a_response_answers_a_long_poll_only_when_it_holds_records(version):
    """A read-ahead that came back empty is no answer to a Fetch that would wait at the broker for records; one
    with an error beside records still is (the broker would have answered the same), though no read-ahead
    can follow it."""
    assert not read(response(version, [(0, 0, b""), (1, 0, None)]), version).has_records
    with_error = read(response(version, [(0, 0, records_at(0, 5)), (1, 6, None)]), version)
    assert with_error.has_records and not with_error.predictable


def test_the_same_fetch_differs_only_in_session_waiting_and_the_order_of_its_partitions():
    asked = request(13, {0: 48, 1: 7})
    expected = {**asked, "max_wait_ms": 0, "min_bytes": 0, "session_id": 0, "session_epoch": -1}
    assert same_fetch({**asked, "max_wait_ms": 500, "min_bytes": 1, "session_epoch": 0}, expected, False)
    [topic] = asked["topics"]
    rotated = {**asked, "topics": [{**topic, "partitions": topic["partitions"][::-1]}]}
    assert same_fetch(rotated, expected, False)  # clients rotate partitions that returned records to the end
    twice = {**asked, "topics": [{**topic, "partitions": topic["partitions"] * 2}]}
    assert not same_fetch(twice, {**expected, "topics": twice["topics"]}, False)
    for change in ({"isolation_level": 1}, {"max_bytes": 1}, {"rack_id": "r1"}):
        assert not same_fetch({**asked, **change}, expected, False), change
    moved = request(13, {0: 49, 1: 7})
    assert not same_fetch(moved, expected, False)
    assert not same_fetch(request(13, {0: 48}), expected, False)  # a partition fewer
    assert not same_fetch({**asked, "new_field": 1}, expected, False)


def test_a_fetch_asking_no_epoch_check_is_the_same_unless_the_check_found_a_divergence():
    """The read-ahead asked with epoch 3 for both partitions. A client asking -1 (no check) gets the same answer
    when the broker found no divergence; a client asking another epoch, or an epoch where the read-ahead asked
    none, does not."""
    expected = request(13, {0: 48, 1: 7}, epoch=3)
    assert same_fetch(request(13, {0: 48, 1: 7}, epoch=3), expected, False)
    assert same_fetch(request(13, {0: 48, 1: 7}, epoch=-1), expected, False)
    assert not same_fetch(request(13, {0: 48, 1: 7}, epoch=-1), expected, True)
    assert not same_fetch(request(13, {0: 48, 1: 7}, epoch=2), expected, False)
    assert not same_fetch(request(13, {0: 48, 1: 7}, epoch=3), request(13, {0: 48, 1: 7}, epoch=-1), False)
    assert not same_fetch(request(13, {0: 49, 1: 7}, epoch=-1), expected, False)  # and the offsets still count


@pytest.mark.parametrize("version", [12, 13])
def test_a_partition_with_tagged_fields_counts_as_diverged(version):
    """A diverging epoch (KIP-320) or a leader hint arrives as a partition's tagged field."""
    assert not read(response(version, [(0, 0, records_at(0, 5)), (1, 0, b"")]), version).diverged
    assert read(response(version, [(0, 0, b""), (1, 0, records_at(0, 5))],
                         diverging_epoch={"epoch": 2, "end_offset": 40}), version).diverged
    assert read(response(version, [(0, 0, b"")], current_leader={"leader_id": 2, "leader_epoch": 4}),
                version).diverged


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("read-ahead-policy") / "policy.yaml"
    path.write_text(MASKING_POLICY.format(prefix="masked-"))
    return Engine(load_policies(path))


@pytest.mark.parametrize("masked", [True, False])
def test_an_answer_from_read_ahead_is_the_spliced_response_under_the_clients_correlation_id(engine, masked):
    """With records to mask (chunks after a size prefix) and without (the broker's frame as one chunk)."""
    key, value, headers = sample_record(1)
    records = batch(record(key, value, [(k.encode(), v) for k, v in headers]) if masked
                    else record(b"k", b"nothing secret"), 1)
    frame = response(13, [(0, 0, records)])
    fix = fetch_masking(request(13, {0: 0}), 13, engine.for_principal("analyst", ()), engine, MaskerCache(b"k" * 32),
                        {TOPIC_ID: TOPIC}.get, 1 << 20, "test", hold_counts=True)
    spliced = b"".join(fix.splice(frame))
    assert (spliced != frame) is masked and not fix.cache.counts  # held back until the client gets it
    loop = asyncio.new_event_loop()
    try:
        ahead = ReadAhead(-1, 13, {}, fix, None, "c", loop.create_future())
        ahead.keep(fix.splice(frame), frame, loop, lambda kept: None)
        answer = b"".join(ahead.answer(4242))
    finally:
        loop.close()
    assert codec.decode_response_frame(FETCH, 13, answer) == (4242, codec.decode_response_frame(FETCH, 13, spliced)[1])
    assert bool(fix.cache.counts) is masked


def test_a_kept_read_ahead_is_not_held_by_the_timer_that_would_drop_it(monkeypatch):
    """A fast reader takes a read-ahead every few milliseconds, each with a timer pending for KEEP_S: were the
    timers to hold them, the worker would hold seconds' worth of whole fetch responses (measured end to end: a
    masked read at half the speed, with three times the CPU)."""
    monkeypatch.setattr(read_ahead, "KEEP_S", 0.001)
    loop = asyncio.new_event_loop()
    expired = []
    try:
        frame = response(13, [(0, 0, records_at(0, 5))])
        ahead = ReadAhead(-1, 13, {}, None, None, "c", loop.create_future())
        ahead.keep([frame], frame, loop, expired.append)
        kept = weakref.ref(ahead)
        del ahead
        gc.collect()
        assert kept() is None and not expired  # gone while its timer is still pending
        loop.run_until_complete(asyncio.sleep(0.01))
        assert [ref() for ref in expired] == [None]  # the timer ran, and found nothing to drop
    finally:
        loop.close()


# --- through the gateway -------------------------------------------------------------------------------------------

RECORDS = 600


# The analyst reads topics with this module's prefix masked (cards partial, emails redacted): the same fixture.
masked_prefix = test_masking_gateway.masked_prefix


def produce_small_batches(kafka_cluster, topic: str) -> None:
    """RECORDS records in batches of a few KB, straight to the broker: many batches to read ahead of."""
    producer = Producer(admin_client_config(kafka_cluster, **{"batch.size": 4096, "linger.ms": 5}))
    for i in range(RECORDS):
        key, value, headers = sample_record(i)
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def masked_fields(gateway, topic: str) -> int:
    return sum(int(line.rsplit(" ", 1)[1]) for line in gateway.metrics().splitlines()
               if line.startswith("streamward_masked_fields_total{") and f'topic="{topic}"' in line)


def test_a_catching_up_consumer_reads_every_record_once_masked_from_read_ahead(gateway, idp, kafka_cluster,
                                                                               make_topic, masked_prefix):
    topic = make_topic(f"{masked_prefix}catch-up", partitions=1)
    produce_small_batches(kafka_cluster, topic)
    answered_before, _ = read_ahead_counters(gateway)
    # Fetches of 8 KiB a partition: each response shows a backlog, so each is read ahead of.
    received = consume_as_analyst(gateway, idp, topic, RECORDS, **{"max.partition.fetch.bytes": 8192})
    assert [m.offset() for m in received] == list(range(RECORDS))  # each once, in order, none skipped
    for i, message in enumerate(received):
        assert CARD.encode() not in message.key()
        assert CARD.encode() not in message.value() and EMAIL.encode() not in message.value()
        assert f"plain text {i}".encode() in message.value()
    answered, _ = read_ahead_counters(gateway)
    assert answered - answered_before > 5  # most Fetches of the catch-up were answered from read-ahead
    # Counted once per field a client received: 2 cards and 2 emails a record (key, value, header).
    assert masked_fields(gateway, topic) == 4 * RECORDS


def test_a_fetch_for_other_offsets_gets_its_own_answer_and_read_ahead_is_not_counted(gateway, kafka_cluster,
                                                                                   make_topic, masked_prefix,
                                                                                   connect):
    topic = make_topic(f"{masked_prefix}re-read", partitions=1)
    produce_small_batches(kafka_cluster, topic)
    [(_, leader)] = leaders(kafka_cluster, [topic]).items()
    wire = connect(f"127.0.0.1:{gateway.port_base + leader}", subject="analyst")
    body = fetch_body(topic, [0], max_bytes=8192)
    _, dropped_before = read_ahead_counters(gateway)
    first = wire.request(FETCH, 12, body)["responses"][0]["partitions"][0]
    assert first["error_code"] == 0 and first["records"]
    time.sleep(0.5)  # the read-ahead of the next offsets is in and kept
    again = wire.request(FETCH, 12, body)["responses"][0]["partitions"][0]  # offset 0 again, not the next
    assert bytes(again["records"]) == bytes(first["records"])
    answered, dropped = read_ahead_counters(gateway)
    assert dropped - dropped_before >= 1
    records = len(re.findall(rb"plain text \d+", bytes(first["records"])))
    assert records > 0 and masked_fields(gateway, topic) == 2 * 4 * records  # the read-aheads counted nothing


def test_a_policy_published_after_the_read_ahead_decides_the_next_fetch(gateway, kafka_cluster, make_topic,
                                                                       masked_prefix, connect):
    topic = make_topic(f"{masked_prefix}policy-change", partitions=1)
    produce_small_batches(kafka_cluster, topic)
    [(_, leader)] = leaders(kafka_cluster, [topic]).items()
    wire = connect(f"127.0.0.1:{gateway.port_base + leader}", subject="analyst")
    body = fetch_body(topic, [0], max_bytes=8192)
    first = wire.request(FETCH, 12, body)["responses"][0]["partitions"][0]
    assert b"[email]" in bytes(first["records"])
    time.sleep(0.5)  # the read-ahead, masked under the first policy, is in and kept
    try:
        # Published: a worker's next policy view is the new one (one load from the shared snapshot).
        gateway.install_policy(MASKING_POLICY.format(prefix=masked_prefix).replace(
            'strategy: redact, placeholder: "[email]"', 'strategy: redact, placeholder: "[gone]"'))
        next_offset = max(int(m) for m in re.findall(rb"plain text (\d+)", bytes(first["records"]))) + 1
        body["topics"][0]["partitions"][0]["fetch_offset"] = next_offset
        following = bytes(wire.request(FETCH, 12, body)["responses"][0]["partitions"][0]["records"])
    finally:
        gateway.install_policy(MASKING_POLICY.format(prefix=masked_prefix))
    assert f"plain text {next_offset}".encode() in following
    assert b"[gone]" in following and b"[email]" not in following and EMAIL.encode() not in following
