"""Benchmarks for inline masking (_fastpath/record_batch.pyx, _fastpath/mask.pyx).

Run from the repository root:

    .venv/bin/python -m pytest bench/bench_mask.py --benchmark-only -q

Data: one batch of 1,000 records, each a ~200-byte JSON value holding a card number (found by the card
detector) and customer.email (found by a json_path rule), both masked in every record. Every figure is MB/s of
the uncompressed batch, so the rows compare. Targets: mask_records on the uncompressed batch >= 2 GB/s per core,
and >= 12x the naive pipeline (aiokafka's batch reader, orjson loads / mask / dumps, aiokafka's builder). For
each codec the codec's own decompress + recompress of the same records (the same cramjam calls and levels
mask_records makes) is the floor masking cannot go under. The ratio is measured in one run with the two sides
alternating, as docs on measuring here ask; a table is printed at the end. A second table takes the uncompressed
batch apart: the walk alone (no rule matches: batch and record framing, CRC), each of the two rules alone, each
of them finding nothing (the card rule on values whose card is replaced, the path rule to an absent member: the
cost of looking, without the rewrite a match brings), and all five detectors at once (their merged pass). A
row masks both fields by path, as the naive pipeline does (the kernel walks the two paths in one pass), beside
it. A last row masks the records of the end-to-end benchmark
(bench/e2e_masking.py: ~1 KiB JSON values, its policy's card and hashed customer.email rules), uncompressed, beside
the naive pipeline doing the same: the ~200-byte records above weigh the per-record work five times as heavily.
Another row reads schema-registry framed binary values with the card and email detectors: the cost of looking
through bytes that hold zeros (the wide-text search included).

For scale, bench/json_reference.py measures what reading the same records costs simdjson, the fastest JSON
reader there is, beside the kernel's walk, on this machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct
import time

import cramjam
import crc32c
import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from _fastpath.mask import Masker
from _fastpath.record_batch import mask_records
from bench.e2e_masking import payload_values

RECORDS = 1000
HEADER = 61
CODECS = {"none": 0, "snappy": 2, "lz4": 3, "zstd": 4}
MASKER_RULES: list[dict[str, object]] = [
    {"name": "card", "target": "value", "kind": "detector", "detector": "card", "strategy": "partial",
     "keep_last": 4},
    {"name": "email", "target": "value", "kind": "json_path", "path": "customer.email", "strategy": "redact"},
]
MASKER = Masker(MASKER_RULES, b"k" * 32)
MB = 1e6
RESULTS: dict[str, float] = {}
PARTS = {
    "walk only": Masker([{"name": "key", "target": "key", "kind": "detector", "detector": "card",
                          "strategy": "redact"}], b"k" * 32),     # keys are null: nothing to scan or rebuild
    "card detector alone": Masker(MASKER_RULES[:1], b"k" * 32),
    "json path alone": Masker(MASKER_RULES[1:], b"k" * 32),
    # The same two rules finding nothing: what they cost to look, without the rewrite (and the batch's new CRC)
    # a match brings. The card one reads values whose card is replaced by text of its length.
    "card detector, no card": Masker(MASKER_RULES[:1], b"k" * 32),
    "json path, member absent": Masker([{**MASKER_RULES[1], "path": "customer.phone"}], b"k" * 32),
    "five detectors": Masker([{"name": kind, "target": "value", "kind": "detector", "detector": kind,
                               "strategy": "redact"} for kind in ("card", "email", "iban", "ssn", "phone")],
                             b"k" * 32),
}
# The naive pipeline's own rules: both fields by path (customer.card partial, customer.email redact), which the
# kernel walks once for both (mask.pyx, _apply_paths).
PATHS_MASKER = Masker([{"name": "card", "target": "value", "kind": "json_path", "path": "customer.card",
                        "strategy": "partial", "keep_last": 4}, MASKER_RULES[1]], b"k" * 32)


def _values() -> list[bytes]:
    rng = random.Random(7)
    return [orjson.dumps({
        "id": i, "ts": 1_732_849_200_000 + i,
        "customer": {"name": f"Customer {rng.randint(1, 999_999)}", "email": f"user{rng.randint(1, 10**6)}@example.com",
                     "card": "4111 1111 1111 1111"},
        "items": [{"sku": f"SKU-{rng.randint(0, 99_999):05d}", "qty": rng.randint(1, 9)}],
        "note": "leave at the front door",
    }) for i in range(RECORDS)]


VALUES = _values()


def _batch(codec: int, values: list[bytes] = VALUES) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for offset, value in enumerate(values):
        builder.append(offset, 1_732_849_200_000 + offset, None, value, [])
    return bytes(builder.build())


def _as_kafka_clients_write_lz4(plain: bytes) -> bytes:
    """The uncompressed batch with its records in an LZ4 frame as Kafka's Java client and librdkafka write them:
    independent 64 KiB blocks, no checksums (aiokafka's builder adds block checksums, which these clients do not
    send)."""
    records = memoryview(plain)[HEADER:]
    frame = bytearray(b"\x04\x22\x4d\x18\x60\x40\x82")
    for start in range(0, len(records), 65536):
        block = bytes(cramjam.lz4.compress_block(records[start:start + 65536], store_size=False))
        frame += struct.pack("<I", len(block)) + block
    frame += b"\x00\x00\x00\x00"
    batch = bytearray(plain[:HEADER]) + frame
    struct.pack_into(">i", batch, 8, len(batch) - 12)             # batch length: all after base offset + length
    struct.pack_into(">h", batch, 21, CODECS["lz4"])              # attributes: codec
    struct.pack_into(">I", batch, 17, crc32c.crc32c(batch[21:]))  # CRC32C from attributes to the end
    return bytes(batch)


BATCHES = {name: _batch(codec) for name, codec in CODECS.items()}
BATCHES["lz4"] = _as_kafka_clients_write_lz4(BATCHES["none"])
SIZE = len(BATCHES["none"])     # the basis of every MB/s figure
NO_CARD_BATCH = _batch(CODECS["none"], [v.replace(b"4111 1111 1111 1111", b"order 12345, shelf") for v in VALUES])
# The end-to-end benchmark's records and rules (bench/e2e_masking.py's POLICY: cards partial, customer.email hash).
KIB_KEY = b"k" * 32
KIB_MASKER = Masker([
    {"name": "cards", "target": "value", "kind": "detector", "detector": "card", "strategy": "partial", "keep_last": 4},
    {"name": "emails", "target": "value", "kind": "json_path", "path": "customer.email", "strategy": "hash"},
], KIB_KEY)
KIB_VALUES = payload_values(RECORDS)
KIB_BATCH = _batch(CODECS["none"], KIB_VALUES)


def _binary_values() -> list[bytes]:
    """Schema-registry framed Protobuf-like values (~200 B): varints of 0, short text, zero padding, random
    bytes; no secret and no wide text, so the detectors only look (and the wide-text search finds nothing)."""
    rng = random.Random(5)

    def text(number: int, data: bytes) -> bytes:
        return bytes([number << 3 | 2, len(data)]) + data

    return [b"\x00\x00\x00\x01\x07\x00" + b"".join((
        b"\x08\x00", text(2, b"Customer %d" % i), b"\x18\x00", text(4, b"\x00\x00\x00\x01" * 8),
        text(5, bytes(rng.randrange(256) for _ in range(40))), b"\x30\x00", text(7, b"plain text %d" % i),
        text(8, bytes(60)), text(9, b"more text here and there %d" % i))) for i in range(RECORDS)]


BINARY_BATCH = _batch(CODECS["none"], _binary_values())
BINARY_MASKER = Masker([{"name": kind, "target": "value", "kind": "detector", "detector": kind,
                         "strategy": "redact"} for kind in ("card", "email")], b"k" * 32)


def _mask(batch: bytes) -> bytes:
    return mask_records(batch, MASKER, max_output=1 << 30).data


def _naive(batch: bytes) -> bytes:
    """What a Python gateway does without a kernel: read, mask with orjson by known paths, rebuild."""
    source = DefaultRecordBatch(batch)
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=source.compression_type, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for record in source:
        document = orjson.loads(record.value)
        document["customer"]["card"] = "*" * 15 + document["customer"]["card"][-4:]
        document["customer"]["email"] = "****"
        builder.append(record.offset, record.timestamp, record.key, orjson.dumps(document), record.headers)
    return bytes(builder.build())


def _naive_kib(batch: bytes) -> bytes:
    """The naive pipeline with the end-to-end benchmark's rules, giving the documents the kernel gives: the card
    number's last four characters kept, the email an HMAC token (base64url of its first 16 bytes)."""
    source = DefaultRecordBatch(batch)
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=source.compression_type, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for record in source:
        document = orjson.loads(record.value)
        number = document["card"]["number"]
        document["card"]["number"] = "*" * (len(number) - 4) + number[-4:]
        digest = hmac.new(KIB_KEY, document["customer"]["email"].encode(), hashlib.sha256).digest()
        document["customer"]["email"] = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
        builder.append(record.offset, record.timestamp, record.key, orjson.dumps(document), record.headers)
    return bytes(builder.build())


def _codec_round_trip(name: str):
    """The codec's own work on this batch: decompress the records and compress them again, as mask_records does."""
    compressed = BATCHES[name][HEADER:]
    if name == "snappy":
        blocks = []
        offset = 16
        while offset < len(compressed):
            (length,) = struct.unpack_from(">i", compressed, offset)
            blocks.append(compressed[offset + 4:offset + 4 + length])
            offset += 4 + length

        def run():
            records = b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)
            view = memoryview(records)
            return [cramjam.snappy.compress_raw(view[i:i + 32768]) for i in range(0, len(records), 32768)]
    elif name == "lz4":
        def run():
            view = memoryview(bytes(cramjam.lz4.decompress(compressed)))
            return [cramjam.lz4.compress_block(view[i:i + 65536], store_size=False) for i in range(0, len(view), 65536)]
    else:
        def run():
            return cramjam.zstd.compress(cramjam.zstd.decompress(compressed), level=1)
    return run


@pytest.fixture(scope="module", autouse=True)
def table(request):
    yield
    columns = [("mask_records", "mask", "{:>14.0f}"), ("codec alone", "codec", "{:>13.0f}"),
               ("naive", "naive", "{:>9.0f}"), ("x naive", "ratio", "{:>9.1f}x")]
    lines = [f"\nInline masking, {RECORDS} records x ~{len(VALUES[0])} B JSON; MB/s of the {SIZE} B uncompressed batch",
             f"{'codec':<10}" + "".join(f"{title:>{len(fmt.format(0))}}" for title, _, fmt in columns)]
    for name in CODECS:
        lines.append(f"{name:<10}" + "".join(
            fmt.format(RESULTS[f"{key} {name}"]) if f"{key} {name}" in RESULTS else f"{'-':>{len(fmt.format(0))}}"
            for _, key, fmt in columns))
    lines.append("\nThe uncompressed batch taken apart (MB/s): " + ", ".join(
        f"{part} {RESULTS[f'part {part}']:.0f}" for part in PARTS if f"part {part}" in RESULTS))
    if "mask paths" in RESULTS and "naive none" in RESULTS:
        lines.append(f"Both fields by path (the naive pipeline's own rules), uncompressed: mask_records "
                     f"{RESULTS['mask paths']:.0f} MB/s, {RESULTS['mask paths'] / RESULTS['naive none']:.1f}x naive")
    if "mask kib" in RESULTS and "naive kib" in RESULTS:
        lines.append(f"The end-to-end benchmark's records ({RECORDS} x ~{len(KIB_BATCH) // RECORDS} B, uncompressed): "
                     f"mask_records {RESULTS['mask kib']:.0f} MB/s, naive {RESULTS['naive kib']:.0f} MB/s, "
                     f"{RESULTS['mask kib'] / RESULTS['naive kib']:.1f}x")
    if "mask binary" in RESULTS:
        lines.append(f"Schema-registry framed binary values ({RECORDS} x ~{len(BINARY_BATCH) // RECORDS} B, "
                     f"card and email detectors, nothing to find): mask_records {RESULTS['mask binary']:.0f} MB/s")
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n".join(lines))


def _rate(benchmark) -> float:
    return SIZE / benchmark.stats.stats.median / MB


@pytest.mark.parametrize("name", list(CODECS))
def test_mask_records(benchmark, name):
    out = benchmark(_mask, BATCHES[name])
    assert len(out) > HEADER and (name != "none" or b"@example.com" not in out)
    RESULTS[f"mask {name}"] = _rate(benchmark)


@pytest.mark.parametrize("part", list(PARTS))
def test_uncompressed_parts(benchmark, part):
    batch = NO_CARD_BATCH if part == "card detector, no card" else BATCHES["none"]
    out = benchmark(mask_records, batch, PARTS[part], max_output=1 << 30)
    assert (out.masked == 0) == (part in ("walk only", "card detector, no card", "json path, member absent"))
    RESULTS[f"part {part}"] = _rate(benchmark)


@pytest.mark.parametrize("name", ["snappy", "lz4", "zstd"])
def test_codec_alone(benchmark, name):
    benchmark(_codec_round_trip(name))
    RESULTS[f"codec {name}"] = _rate(benchmark)


@pytest.mark.parametrize("name", list(CODECS))
def test_naive_pipeline(benchmark, name):
    out = benchmark(_naive, BATCHES[name])
    assert len(out) > HEADER and (name != "none" or b"@example.com" not in out)
    RESULTS[f"naive {name}"] = _rate(benchmark)


@pytest.mark.parametrize("name", list(CODECS))
def test_ratio_to_naive_alternating(benchmark, name):
    """Kernel and naive pipeline timed in turns on the same batch; the median of the per-pair ratios."""
    batch = BATCHES[name]

    def pairs() -> list[float]:
        ratios = []
        for _ in range(15):
            started = time.perf_counter()
            _naive(batch)
            naive = time.perf_counter() - started
            started = time.perf_counter()
            _mask(batch)
            ratios.append(naive / (time.perf_counter() - started))
        return sorted(ratios)

    ratios = benchmark.pedantic(pairs, rounds=1, iterations=1)
    RESULTS[f"ratio {name}"] = ratios[len(ratios) // 2]


def test_both_fields_by_path(benchmark):
    out = benchmark(mask_records, BATCHES["none"], PATHS_MASKER, max_output=1 << 30)
    # The same work: the naive pipeline's records, to the byte.
    naive = _naive(BATCHES["none"])
    assert [r.value for r in DefaultRecordBatch(out.data)] == [r.value for r in DefaultRecordBatch(naive)]
    RESULTS["mask paths"] = _rate(benchmark)


def test_kilobyte_records(benchmark):
    out = benchmark(mask_records, KIB_BATCH, KIB_MASKER, max_output=1 << 30)
    assert out.masked == 2 * RECORDS and b"@example.com" not in out.data
    RESULTS["mask kib"] = len(KIB_BATCH) / benchmark.stats.stats.median / MB


def test_binary_values(benchmark):
    out = benchmark(mask_records, BINARY_BATCH, BINARY_MASKER, max_output=1 << 30)
    assert out.masked == 0
    RESULTS["mask binary"] = len(BINARY_BATCH) / benchmark.stats.stats.median / MB


def test_kilobyte_records_naive(benchmark):
    out = benchmark(_naive_kib, KIB_BATCH)
    # The same work: the naive pipeline's documents are the kernel's.
    kernel = mask_records(KIB_BATCH, KIB_MASKER, max_output=1 << 30).data
    assert [orjson.loads(r.value) for r in DefaultRecordBatch(out)] == \
        [orjson.loads(r.value) for r in DefaultRecordBatch(kernel)]
    RESULTS["naive kib"] = len(KIB_BATCH) / benchmark.stats.stats.median / MB
