"""The masked Fetch path the gateway takes: FetchMasking.splice works on the response frame as the broker sent it.

For every Fetch version the gateway forwards, with names (v4-v12) or topic ids (v13+), plain (v4-v11) or flexible
(v12+) encodings: the spliced response is byte for byte the one the decoded path (mask the decoded response,
encode it again) gives, while masked partitions are masked, null and empty records stay as they are, aborted
transactions and watermarks are kept, an unmaskable partition is emptied with CORRUPT_MESSAGE, and a response
naming no masked partition goes out as the broker's very frame. A response with leader hints (NodeEndpoints,
v16+) is left to the decoded path, which rewrites their broker addresses.

ShareFetch (every version, always by topic id, NodeEndpoints a regular field) takes the same path, for every
topic its share session holds; records of a topic the session does not hold are refused (UnexpectedTopic).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from _fastpath.record_batch import iter_records
from _fastpath.walker import WalkError
from gateway.handlers import masking
from gateway.handlers.apiversions import spec_versions
from gateway.handlers.masking import FetchMasking, MaskerCache, UnexpectedTopic, fetch_masking, share_fetch_masking
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies
from gateway.protocol import codec
from gateway.protocol.apis import FETCH, SHARE_FETCH
from gateway.protocol.errors import CORRUPT_MESSAGE
from tests.masking_data import PLAIN, LeakScanner, batch, check_masked, make_sample, masking_policy, sample_batch

MASKED, OTHER_MASKED, PLAIN_TOPIC = "masked-orders", "masked-refunds", "plain-orders"
TOPIC_IDS = {MASKED: b"M" * 16, OTHER_MASKED: b"R" * 16, PLAIN_TOPIC: b"P" * 16}
SAMPLES = [make_sample(i, MASKED, 0, PLAIN) for i in range(5)]
GOOD = sample_batch(SAMPLES)
SCANNER = LeakScanner(SAMPLES)
VERSIONS = [4, 7, 11, 12, 13, 15, 16, 17]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("splice-policy") / "policy.yaml"
    path.write_text(masking_policy("masked-", "plain-"))
    return Engine(load_policies(path))


def masking_for(engine: Engine, version: int) -> FetchMasking:
    key = "topic_id" if version >= 13 else "topic"
    body = {"topics": [{key: TOPIC_IDS[t] if version >= 13 else t, "partitions": [{"partition": 0}]}
                       for t in (MASKED, OTHER_MASKED, PLAIN_TOPIC)]}
    names = {topic_id: name for name, topic_id in TOPIC_IDS.items()}
    fix = fetch_masking(body, version, engine.for_principal("analyst", ("analysts",)), engine,
                        MaskerCache(b"k" * 32), names.get, 256 << 20, "splice-test")
    assert fix is not None
    return fix


def response(version: int, masked: list[bytes | None], other: bytes | None = GOOD) -> dict:
    """A masked topic with one partition per entry of `masked`, a plain topic between, another masked topic."""
    def topic(name: str, partitions: list[dict]) -> dict:
        return {"topic_id" if version >= 13 else "topic": TOPIC_IDS[name] if version >= 13 else name,
                "partitions": partitions}

    def partition(index: int, records: bytes | None) -> dict:
        return {"partition_index": index, "error_code": 0, "high_watermark": 4242, "last_stable_offset": 4000,
                "aborted_transactions": [{"producer_id": 9, "first_offset": 3}], "records": records}

    return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0,
            "responses": [topic(MASKED, [partition(i, r) for i, r in enumerate(masked)]),
                          topic(PLAIN_TOPIC, [partition(0, GOOD)]),
                          topic(OTHER_MASKED, [partition(0, other)])]}


def splice(fix: FetchMasking, body: dict, version: int) -> tuple[bytes, list]:
    frame = codec.encode_response_frame(FETCH, version, 7, body)
    chunks = fix.splice(frame)
    assert chunks is not None
    return frame, chunks


@pytest.mark.parametrize("version", VERSIONS)
def test_splice_equals_the_decoded_path(engine, version):
    """Masked partitions masked (every record as the rules say, nothing left to leak), the plain topic's records
    and every other field unchanged: the same bytes as decoding, masking and encoding again."""
    body = response(version, [GOOD, None, b"", GOOD])
    frame, chunks = splice(masking_for(engine, version), body, version)
    spliced = b"".join(chunks)
    assert spliced == codec.encode_response_frame(FETCH, version, 7, masking_for(engine, version)(body))
    assert int.from_bytes(spliced[:4], "big") == len(spliced) - 4
    correlation_id, decoded = codec.decode_response_frame(FETCH, version, spliced)
    assert correlation_id == 7
    masked_topic, plain_topic, other_topic = decoded["responses"]
    assert [p["records"] for p in masked_topic["partitions"][1:3]] == [None, b""]
    for records in (masked_topic["partitions"][0]["records"], masked_topic["partitions"][3]["records"],
                    other_topic["partitions"][0]["records"]):
        assert not SCANNER.leaks(records)
        for sample, (_, _, key, value, headers) in zip(SAMPLES, iter_records(records), strict=True):
            check_masked(sample, key, value, headers)
    assert plain_topic["partitions"][0]["records"] == GOOD
    assert SCANNER.leaks(GOOD), "the scanner must see the unmasked values, or the checks above prove nothing"
    assert masked_topic["partitions"][0]["aborted_transactions"][0]["producer_id"] == 9
    assert masked_topic["partitions"][0]["high_watermark"] == 4242


@pytest.mark.parametrize("version", VERSIONS)
def test_unmaskable_partition_is_emptied_with_corrupt_message(engine, version):
    bad = bytearray(GOOD)
    bad[-1] ^= 0xFF  # the CRC no longer matches
    body = response(version, [GOOD, bytes(bad)])
    _, chunks = splice(masking_for(engine, version), body, version)
    _, decoded = codec.decode_response_frame(FETCH, version, b"".join(chunks))
    good, emptied = decoded["responses"][0]["partitions"]
    assert (emptied["records"], emptied["error_code"], emptied["high_watermark"]) == (b"", CORRUPT_MESSAGE, 4242)
    assert good["error_code"] == 0 and not SCANNER.leaks(good["records"])


@pytest.mark.parametrize("version", VERSIONS)
def test_nothing_to_mask_sends_the_brokers_frame(engine, version):
    """Masked topics whose partitions hold no records: the frame object itself goes out, not a copy."""
    frame, chunks = splice(masking_for(engine, version), response(version, [b"", None], other=None), version)
    assert len(chunks) == 1 and chunks[0] is frame


def test_leader_hints_take_the_decoded_path(engine):
    body = response(16, [GOOD])
    body["node_endpoints"] = [{"node_id": 1, "host": "broker-1.internal", "port": 9092, "rack": None}]
    frame = codec.encode_response_frame(FETCH, 16, 7, body)
    assert masking_for(engine, 16).splice(frame) is None


@pytest.mark.parametrize("version", [4, 12, 17])
def test_frames_that_do_not_follow_the_spec_are_refused(engine, version):
    """A response cut short or carrying bytes past its end is an error (the connection closes), never a guess."""
    frame = codec.encode_response_frame(FETCH, version, 7, response(version, [GOOD]))
    fix = masking_for(engine, version)
    for broken in (frame[:-5], frame + b"\x00"):
        with pytest.raises(WalkError):
            fix.splice(broken)


@pytest.mark.parametrize("version", [4, 12, 17])
def test_masking_ahead_of_a_partial_frame_gives_the_same_response(engine, version):
    """Masking run ahead on every prefix of the frame as it arrives (as the connection does while a large
    response comes in, with the rest of the buffer still holding garbage), then the splice of the whole: the
    same bytes as splicing the whole frame at once, each partition masked exactly once."""
    bad = bytearray(GOOD)
    bad[-1] ^= 0xFF
    body = response(version, [GOOD, None, bytes(bad), GOOD])
    frame = codec.encode_response_frame(FETCH, version, 7, body)
    expected = b"".join(masking_for(engine, version).splice(frame))
    fix = masking_for(engine, version)
    arriving = bytearray(b"\xff" * len(frame))  # not yet received bytes are garbage, never zeros to rely on
    for received in range(len(frame)):  # every cut; a frame is handed on once it is whole
        arriving[:received] = frame[:received]
        fix.advance(arriving, received)
    # Ahead: every masked partition holding records, but the last when its records end with the frame (v4).
    assert len(fix._ahead) >= 3
    arriving[:] = frame
    assert b"".join(fix.splice(arriving)) == expected
    assert sum(fix.cache.counts.values()) == sum(masking_for_counts(engine, version, frame).values())


def masking_for_counts(engine: Engine, version: int, frame: bytes) -> dict[str, int]:
    fix = masking_for(engine, version)
    fix.splice(frame)
    return fix.cache.counts


# --- ShareFetch ------------------------------------------------------------------------------------------------------

SHARE_VERSIONS = list(range(spec_versions(SHARE_FETCH)[0], spec_versions(SHARE_FETCH)[1] + 1))
SESSION = frozenset(TOPIC_IDS.values())


def share_masking_for(engine: Engine, version: int, session: frozenset[bytes] = SESSION) -> FetchMasking:
    names = {topic_id: name for name, topic_id in TOPIC_IDS.items()}
    return share_fetch_masking(session, version, engine.for_principal("analyst", ("analysts",)), engine,
                               MaskerCache(b"k" * 32), names.get, 256 << 20, "splice-test")


def share_response(masked: list[bytes], other: bytes = GOOD) -> dict:
    """As response(): a masked topic, a plain topic between, another masked topic; all by topic id (records are
    never null in ShareFetch)."""
    def partition(index: int, records: bytes | None) -> dict:
        return {"partition_index": index, "error_code": 0, "records": records,
                "current_leader": {"leader_id": 1, "leader_epoch": 3},
                "acquired_records": [{"first_offset": 0, "last_offset": 4, "delivery_count": 1}]}

    return {"throttle_time_ms": 0, "error_code": 0, "acquisition_lock_timeout_ms": 30000, "responses": [
        {"topic_id": TOPIC_IDS[MASKED], "partitions": [partition(i, r) for i, r in enumerate(masked)]},
        {"topic_id": TOPIC_IDS[PLAIN_TOPIC], "partitions": [partition(0, GOOD)]},
        {"topic_id": TOPIC_IDS[OTHER_MASKED], "partitions": [partition(0, other)]}]}


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_splice_equals_the_decoded_path(engine, version):
    """Every topic of the share session with masking rules is masked, whether or not the request named it; the
    plain topic's records and the acquired records are unchanged: the same bytes as the decoded path."""
    body = share_response([GOOD, b"", GOOD])
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, body)
    chunks = share_masking_for(engine, version).splice(frame)
    assert chunks is not None
    spliced = b"".join(chunks)
    assert spliced == codec.encode_response_frame(SHARE_FETCH, version, 7, share_masking_for(engine, version)(body))
    _, decoded = codec.decode_response_frame(SHARE_FETCH, version, spliced)
    masked_topic, plain_topic, other_topic = decoded["responses"]
    for records in (masked_topic["partitions"][0]["records"], masked_topic["partitions"][2]["records"],
                    other_topic["partitions"][0]["records"]):
        assert not SCANNER.leaks(records)
        for sample, (_, _, key, value, headers) in zip(SAMPLES, iter_records(records), strict=True):
            check_masked(sample, key, value, headers)
    assert plain_topic["partitions"][0]["records"] == GOOD
    assert masked_topic["partitions"][0]["acquired_records"] == [{"first_offset": 0, "last_offset": 4,
                                                                  "delivery_count": 1}]


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_unmaskable_partition_is_emptied_with_corrupt_message(engine, version):
    bad = bytearray(GOOD)
    bad[-1] ^= 0xFF
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, share_response([GOOD, bytes(bad)]))
    _, decoded = codec.decode_response_frame(SHARE_FETCH, version,
                                             b"".join(share_masking_for(engine, version).splice(frame)))
    good, emptied = decoded["responses"][0]["partitions"]
    assert (emptied["records"], emptied["error_code"]) == (b"", CORRUPT_MESSAGE)
    assert good["error_code"] == 0 and not SCANNER.leaks(good["records"])


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_nothing_to_mask_sends_the_brokers_frame(engine, version):
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, share_response([b""], other=b""))
    chunks = share_masking_for(engine, version).splice(frame)
    assert len(chunks) == 1 and chunks[0] is frame


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_leader_hints_take_the_decoded_path(engine, version):
    body = share_response([GOOD])
    body["node_endpoints"] = [{"node_id": 1, "host": "broker-1.internal", "port": 9092, "rack": None}]
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, body)
    assert share_masking_for(engine, version).splice(frame) is None
    masked = share_masking_for(engine, version)(codec.decode_response_frame(SHARE_FETCH, version, frame)[1])
    assert not SCANNER.leaks(masked["responses"][0]["partitions"][0]["records"])


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_records_of_a_topic_outside_the_session_are_refused(engine, version):
    """A broker answering with records of a topic the connection's share session does not hold (the plain topic
    here) is refused on both paths and while masking ahead; the same topic with no records passes."""
    session = frozenset({TOPIC_IDS[MASKED], TOPIC_IDS[OTHER_MASKED]})
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, share_response([GOOD]))
    with pytest.raises(UnexpectedTopic):
        share_masking_for(engine, version, session).splice(frame)
    with pytest.raises(UnexpectedTopic):
        share_masking_for(engine, version, session)(codec.decode_response_frame(SHARE_FETCH, version, frame)[1])
    ahead = share_masking_for(engine, version, session)
    ahead.advance(frame, len(frame))  # ahead only masks; the splice that follows refuses
    with pytest.raises(UnexpectedTopic):
        ahead.splice(frame)
    body = share_response([GOOD])
    body["responses"][1]["partitions"][0]["records"] = b""
    assert share_masking_for(engine, version, session).splice(
        codec.encode_response_frame(SHARE_FETCH, version, 7, body)) is not None


@pytest.mark.parametrize("version", SHARE_VERSIONS)
def test_share_fetch_masking_ahead_of_a_partial_frame_gives_the_same_response(engine, version):
    bad = bytearray(GOOD)
    bad[-1] ^= 0xFF
    frame = codec.encode_response_frame(SHARE_FETCH, version, 7, share_response([GOOD, b"", bytes(bad), GOOD]))
    expected = b"".join(share_masking_for(engine, version).splice(frame))
    fix = share_masking_for(engine, version)
    arriving = bytearray(b"\xff" * len(frame))
    for received in [*range(0, len(frame), 97), len(frame) - 1]:
        arriving[:received] = frame[:received]
        fix.advance(arriving, received)
    assert len(fix._ahead) >= 3
    arriving[:] = frame
    assert b"".join(fix.splice(arriving)) == expected


def compressed(samples: list, codec: str) -> bytes:
    """The samples as one batch whose records are compressed with codec (zstd or lz4 frames, as cramjam writes)."""
    import cramjam

    plain = sample_batch(samples)
    compress = {"zstd": cramjam.zstd.compress, "lz4": cramjam.lz4.compress}[codec]
    return batch(bytes(compress(plain[61:])), len(samples), codec={"lz4": 3, "zstd": 4}[codec])


@pytest.mark.parametrize("version", [12, 17])
def test_a_mask_pool_gives_the_same_bytes(engine, version, monkeypatch):
    """Partitions masked on the worker's mask pool (threads side by side, the kernel without the GIL),
    compressed and not, an unmaskable one among them, with masking run ahead on a partial frame first: the
    same response, warnings and counts as masking everything inline."""
    lz4, zstd = compressed(SAMPLES, "lz4"), compressed(SAMPLES, "zstd")
    broken = bytearray(zstd)
    broken[-1] ^= 0xFF
    body = response(version, [lz4, GOOD, bytes(broken), zstd], other=lz4)
    frame = codec.encode_response_frame(FETCH, version, 7, body)
    inline = masking_for(engine, version)
    expected = b"".join(inline.splice(frame))
    monkeypatch.setattr(masking, "POOL_MIN_BYTES", 0)  # these test partitions are small
    submitted = []
    with ThreadPoolExecutor(2) as pool:
        monkeypatch.setattr(pool, "submit", lambda *args, **kw: submitted.append(args) or
                            ThreadPoolExecutor.submit(pool, *args, **kw))
        pooled = masking_for(engine, version)
        pooled.cache.pool = pool
        arriving = bytearray(b"\xff" * len(frame))
        arriving[:len(frame) // 2] = frame[:len(frame) // 2]
        pooled.advance(arriving, len(frame) // 2)
        arriving[:] = frame
        assert b"".join(pooled.splice(arriving)) == expected
    assert len(submitted) == 5, "every partition holding records went to the pool"
    assert pooled.cache.counts == inline.cache.counts and pooled.cache.emptied_total == inline.cache.emptied_total == 1
    _, decoded = codec.decode_response_frame(FETCH, version, expected)
    partitions = decoded["responses"][0]["partitions"]
    assert [p["error_code"] for p in partitions] == [0, 0, CORRUPT_MESSAGE, 0]
    other = decoded["responses"][2]["partitions"][0]
    for records in (partitions[0]["records"], partitions[3]["records"], other["records"]):
        assert not SCANNER.leaks(records) and len(iter_records(records)) == len(SAMPLES)


@pytest.mark.parametrize("piece_bytes", [0, len(GOOD) + 1])
def test_a_large_partition_is_masked_in_pieces_of_whole_batches_with_the_same_result(engine, monkeypatch, piece_bytes):
    """Partitions of several batches go to the pool in pieces of whole batches (each batch its own piece, or
    two batches a piece): the same response, counts and warnings as masking each partition whole and inline;
    a bad batch in the middle of one still empties that whole partition; a truncated last batch is still
    dropped; a partition with nothing to mask still passes as it came."""
    lz4, zstd = compressed(SAMPLES, "lz4"), compressed(SAMPLES, "zstd")
    bad = bytearray(GOOD)
    bad[-1] ^= 0xFF
    plain = batch(b"", 0)  # an empty batch kept by compaction: nothing to mask in it
    partitions = [GOOD + lz4 + GOOD + zstd, GOOD + bytes(bad) + GOOD, GOOD + lz4 + GOOD[:-7], plain * 3]
    body = response(12, partitions)
    frame = codec.encode_response_frame(FETCH, 12, 7, body)
    inline = masking_for(engine, 12)
    expected = b"".join(inline.splice(frame))
    monkeypatch.setattr(masking, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(masking, "POOL_PIECE_BYTES", piece_bytes)
    submitted = []
    with ThreadPoolExecutor(2) as pool:
        monkeypatch.setattr(pool, "submit", lambda *args, **kw: submitted.append(args) or
                            ThreadPoolExecutor.submit(pool, *args, **kw))
        pooled = masking_for(engine, 12)
        pooled.cache.pool = pool
        assert b"".join(pooled.splice(frame)) == expected
    # More pieces than the five masked partitions holding records (four here, one of the other topic): cut.
    assert len(submitted) > 5
    assert pooled.cache.counts == inline.cache.counts and pooled.cache.emptied_total == inline.cache.emptied_total == 1
    _, decoded = codec.decode_response_frame(FETCH, 12, expected)
    got = decoded["responses"][0]["partitions"]
    assert [p["error_code"] for p in got] == [0, CORRUPT_MESSAGE, 0, 0]
    assert got[3]["records"] == partitions[3]
    assert len(iter_records(got[0]["records"])) == 4 * len(SAMPLES) and not SCANNER.leaks(got[0]["records"])
    assert len(iter_records(got[2]["records"])) == 2 * len(SAMPLES) and not SCANNER.leaks(got[2]["records"])


def test_pieces_are_cut_only_where_a_whole_batch_ends(monkeypatch):
    """The cuts follow batch lengths that lead to another whole batch; a length that does not (past the end,
    or negative) ends the cutting, and the rest, whatever it is, stays one last piece."""
    monkeypatch.setattr(masking, "POOL_PIECE_BYTES", 1)
    cut = masking._pieces
    assert [bytes(p) for p in cut(memoryview(GOOD * 3))] == [GOOD, GOOD, GOOD]
    hostile = bytearray(GOOD)
    hostile[8:12] = (10 ** 6).to_bytes(4, "big")
    assert [bytes(p) for p in cut(memoryview(GOOD + bytes(hostile) + GOOD))] == [GOOD, bytes(hostile) + GOOD]
    hostile[8:12] = (-5).to_bytes(4, "big", signed=True)
    assert [bytes(p) for p in cut(memoryview(GOOD + bytes(hostile)))] == [GOOD, bytes(hostile)]
    assert [bytes(p) for p in cut(memoryview(GOOD + GOOD[:30]))] == [GOOD, GOOD[:30]]
    monkeypatch.setattr(masking, "POOL_PIECE_BYTES", 2 * len(GOOD))
    assert [bytes(p) for p in cut(memoryview(GOOD * 5))] == [GOOD * 2, GOOD * 2, GOOD]
    assert [bytes(p) for p in cut(memoryview(GOOD * 3))] == [GOOD * 2, GOOD]
    monkeypatch.setattr(masking, "POOL_PIECE_BYTES", 2 * len(GOOD) + 2)   # half a piece is more than one batch
    assert [bytes(p) for p in cut(memoryview(GOOD * 4))] == [GOOD * 4]
