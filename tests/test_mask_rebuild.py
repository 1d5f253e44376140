"""mask_records rebuilds every record around its masked fields (value and key length varints, record length, batch
length, CRC); Masker.apply masks one field on its own. These tests prove the two agree: every record of
mask_records' output equals the record with each field masked by Masker.apply, and the counts agree, over random and
fuzzed JSON and non-JSON values, framed schema-registry values, keys and headers, rule sets with overlapping matches,
and lengths whose varints change size.
"""

from __future__ import annotations

import random

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from _fastpath.mask import Masker
from _fastpath.record_batch import UnmaskableRecords, iter_records, mask_records

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
KEY = b"k" * 32
BIG = 1 << 30


def rule(name: str, kind: str, strategy: str = "redact", target: str = "value", **extra) -> dict[str, object]:
    spec: dict[str, object] = {"name": name, "target": target, "kind": kind, "strategy": strategy, **extra}
    return spec


CARD_PARTIAL = rule("card", "detector", "partial", detector="card", keep_last=4)
EMAIL_PATH = rule("email", "json_path", path="customer.email")
RULE_SETS = {
    "bench": [CARD_PARTIAL, EMAIL_PATH],
    "one detector": [CARD_PARTIAL],
    "one path": [rule("email", "json_path", "hash", path="customer.email")],
    # The card, the regex and the phone detector all match the same digits: later rules see earlier replacements.
    "overlapping": [CARD_PARTIAL, rule("digits", "regex", "hash", pattern=r"\d{4,}"),
                    rule("phone", "detector", "null", detector="phone"), rule("any", "json_path", path="*[*]")],
    "path then detector on the same string": [rule("whole", "json_path", "partial", path="customer.card"),
                                              CARD_PARTIAL, rule("mail", "detector", "hash", detector="email")],
    "five detectors": [rule(kind, "detector", strategy, detector=kind) for kind, strategy in
                       (("card", "partial"), ("email", "hash"), ("iban", "redact"), ("ssn", "null"),
                        ("phone", "partial"))],
    # A long placeholder moves values across varint size boundaries; null empties whole non-JSON values.
    "growing and emptying": [rule("grow", "detector", detector="email", placeholder="#" * 150),
                             rule("gone", "json_path", "null", path="note"),
                             rule("digits", "regex", "null", pattern=r"[0-9]{3}")],
    "keys and headers": [rule("k", "detector", "hash", target="key", detector="email"),
                         rule("k2", "regex", "partial", target="key", pattern="user[0-9]+"),
                         rule("h-all", "detector", target="header", detector="card"),
                         rule("h-pii", "detector", "null", target="header", header="pii", detector="ssn"),
                         rule("h-pii2", "json_path", "hash", target="header", header="pii", path="customer.email"),
                         CARD_PARTIAL],
    "header rule last but not for every header": [CARD_PARTIAL,
                                                  rule("h", "detector", "hash", target="header", header="pii",
                                                       detector="email"),
                                                  rule("h-card", "detector", target="header", detector="card")],
}

PIECES = ["4111 1111 1111 1111", "4111111111111111", "5500-0000-0000-0004", "1732849200000", "user7@example.com",
          "a.b@mail.example.org", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "123-45-6789",
          "+1 (415) 555-0199", "415-555-0199", "+4915112345678", "3.14159", "42", "", " ", "-", "\\\"", "\\u0040",
          "\\\\", "é", "日本", "x" * 70]


def random_text(rng: random.Random, pieces: int) -> str:
    return "".join(rng.choice(PIECES) if rng.random() < 0.6 else rng.choice(" ,.-+()@x19:")
                   for _ in range(pieces))


def random_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([random_text(rng, rng.randint(0, 4)), rng.randint(-10**16, 10**16), None, True, 1.5,
                           int(rng.choice(["4111111111111111", "5500000000000004", "1732849200000"]))])
    if roll < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    document = {random_text(rng, rng.randint(0, 2)): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if rng.random() < 0.5:
        document["customer"] = {"email": rng.choice([random_text(rng, 2), None, {"x": 1}, [1, 2], 7]),
                                "card": random_text(rng, 2)}
    if rng.random() < 0.3:
        document["note"] = random_text(rng, 3)
    return document


def random_value(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.05:
        return None
    if roll < 0.45:
        value = orjson.dumps(random_json(rng))
        if rng.random() < 0.3:    # blanks, and the escapes orjson never writes
            value = value.replace(b":", b" : ").replace(b",", b" ,\n")
        if rng.random() < 0.1:
            value = value.replace(b"@", b"\\u0040")
    elif roll < 0.7:
        value = random_text(rng, rng.randint(0, 8)).encode()
    elif roll < 0.85:    # schema-registry framing: magic 0, schema id, then JSON or binary
        payload = orjson.dumps(random_json(rng)) if rng.random() < 0.5 else random_text(rng, 5).encode()
        value = b"\x00" + rng.randbytes(4) + payload
    else:    # fuzz: a JSON document with bytes flipped, cut or repeated
        value = bytearray(orjson.dumps(random_json(rng)))
        for _ in range(rng.randint(1, 3)):
            if value:
                at = rng.randrange(len(value))
                value[at:at + rng.randint(0, 3)] = rng.choice([b"", b'"', b"{", b"]", b"\\", b"4111111111111111",
                                                               rng.randbytes(2)])
        value = bytes(value)
    return value


def random_records(rng: random.Random, count: int) -> list[tuple]:
    records = []
    for _ in range(count):
        key = random_value(rng) if rng.random() < 0.5 else None
        headers = [(rng.choice(["pii", "trace", "p"]), random_value(rng)) for _ in range(rng.randint(0, 3))]
        records.append((key, random_value(rng), headers))
    return records


def build(records: list[tuple], codec: int = NONE) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for offset, (key, value, headers) in enumerate(records):
        builder.append(offset, 1_732_849_200_000 + offset, key, value, headers)
    return bytes(builder.build())


def apply(masker: Masker, data: bytes | None, target: str, header: str | None, counts: dict[str, int]):
    """The field masked the sequential way (Masker.apply), its counts added to counts."""
    if data is None:
        return None
    masked, field_counts = masker.apply(data, target=target, header=header)
    for name, count in field_counts.items():
        counts[name] = counts.get(name, 0) + count
    return bytes(masked)


def expected(masker: Masker, records: list[tuple]) -> tuple[list[tuple], dict[str, int]]:
    counts: dict[str, int] = {}
    out = []
    for key, value, headers in records:
        out.append((apply(masker, key, "key", None, counts), apply(masker, value, "value", None, counts),
                    [(name, apply(masker, data, "header", name, counts)) for name, data in headers]))
    return out, counts


def fields(data: bytes) -> list[tuple]:
    return [(key, value, [(name, item) for name, item in headers])
            for _, _, key, value, headers in iter_records(data)]


@pytest.mark.parametrize("rules", list(RULE_SETS))
@pytest.mark.parametrize("seed", range(6))
def test_mask_records_equals_field_by_field_apply(rules, seed):
    """Every record masked in the batch equals its fields masked one by one through the scratch-buffer route."""
    rng = random.Random(f"{rules}-{seed}")
    masker = Masker(RULE_SETS[rules], KEY)
    records = random_records(rng, 60)
    want, want_counts = expected(masker, records)
    result = mask_records(build(records), masker, max_output=BIG)
    assert fields(result.data) == want
    assert result.counts == want_counts
    assert result.masked == sum(want_counts.values())
    assert result.changed == (want != [(k, v, list(h)) for k, v, h in records])


@pytest.mark.parametrize("codec", [GZIP, LZ4])
def test_compressed_batches_agree_too(codec):
    """The records of a compressed batch are rebuilt the same way, inside the inflated records, then recompressed."""
    rng = random.Random(codec)
    masker = Masker(RULE_SETS["keys and headers"], KEY)
    records = random_records(rng, 80)
    want, want_counts = expected(masker, records)
    result = mask_records(build(records, codec), masker, max_output=BIG)
    assert fields(result.data) == want
    assert result.counts == want_counts


def test_lengths_whose_varints_grow_and_shrink():
    """A value of 63 or 64 bytes (zigzag varint of one or two bytes) masked to the other side of the boundary, in
    either direction, alone and between records that stay as they are."""
    grow = Masker([rule("grow", "detector", detector="email", placeholder="#" * 40)], KEY)
    shrink = Masker([rule("shrink", "detector", detector="email")], KEY)
    for size in (40, 62, 63, 64, 65, 70, 130):
        value = (b"a@example.com " + b"x" * size)[:size]
        for masker in (grow, shrink):
            records = [(None, b"plain", []), (None, value, []), (b"a@example.com", value, [("h", value)]),
                       (None, b"plain", [])]
            want, _ = expected(masker, records)
            assert fields(mask_records(build(records), masker, max_output=BIG).data) == want


def test_max_output_is_held_exactly():
    """The limit holds for the output kept: a batch masked to exactly max_output bytes passes, one byte less fails,
    and an attempt that changes nothing never counts against it."""
    masker = Masker(RULE_SETS["growing and emptying"], KEY)
    rng = random.Random(5)
    batch = build(random_records(rng, 40))
    size = len(mask_records(batch, masker, max_output=BIG).data)
    assert mask_records(batch, masker, max_output=size).data == mask_records(batch, masker, max_output=BIG).data
    with pytest.raises(UnmaskableRecords):
        mask_records(batch, masker, max_output=size - 1)
    detectors = Masker(RULE_SETS["five detectors"], KEY)
    untouched = build([(None, b"nothing to see " * 20, [])] * 20)
    assert mask_records(untouched, detectors, max_output=len(untouched)).data == untouched


def test_unchanged_records_between_changed_ones_are_kept_byte_for_byte():
    """Records left alone before, between and after masked ones come back as they were, and the batch reads back
    with the same offsets and timestamps."""
    masker = Masker([CARD_PARTIAL], KEY)
    records = [(None, b"x" * (i * 37 % 300), []) if i % 3 else (b"k", b'{"card":"4111 1111 1111 1111"}', [])
               for i in range(50)]
    result = mask_records(build(records), masker, max_output=BIG)
    want, _ = expected(masker, records)
    assert fields(result.data) == want
    assert [r[:2] for r in iter_records(result.data)] == [r[:2] for r in iter_records(build(records))]


def test_threads_masking_at_once_give_what_each_gives_alone():
    """The record walk and the rules run without the GIL (a worker masks partitions side by side): four threads
    masking different batches with every rule set at once, compressed or not, some hostile, give exactly the
    bytes, counts and errors each gives alone. Rule sets with a regex take the GIL inside; shared state
    (Masker, Rule, tables) is only read."""
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(21)
    jobs = []
    for name, rules in RULE_SETS.items():
        masker = Masker(rules, KEY)
        for codec in (NONE, LZ4, NONE, ZSTD):
            batch = build(random_records(rng, 60), codec)
            if rng.random() < 0.25:
                broken = bytearray(batch)
                broken[rng.randrange(61, len(broken))] ^= 0x40
                batch = bytes(broken)
            jobs.append((name, masker, batch))

    def run(job):
        _, masker, batch = job
        try:
            result = mask_records(batch, masker, max_output=BIG)
            return bytes(result.data), result.counts, result.masked
        except UnmaskableRecords as exc:
            return "unmaskable", str(exc), None

    alone = [run(job) for job in jobs]
    assert any(outcome[0] == "unmaskable" for outcome in alone) and any(outcome[2] for outcome in alone)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(run, jobs)) == alone
