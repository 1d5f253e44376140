"""Record batches against Kafka's Java consumer, the reference reader (tests/test_record_batch.py holds the kernel to
aiokafka and kafka-python the same way).

A topic's batch that the kernel finds nothing to mask in goes to the consumer as the broker's bytes, so the
consumer must read those bytes as the kernel did, field for field: a record split elsewhere would hand the
application bytes the kernel read as another field (an unmasked header as the value, say). aiokafka and
kafka-python read the record attributes byte otherwise than Java does (test_record_batch.py); this checks the
kernel's reading against Java's own (tests/clients/java/ReadBatches.java: MemoryRecords, ensureValid,
streamingIterator, as the consumer's fetcher reads them), on the clients' batches and on corrupted ones.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from aiokafka.record.default_records import DefaultRecordBatchBuilder as AioBuilder

from _fastpath.record_batch import UnmaskableRecords, iter_records, mask_records
from tests.java_records import JavaCannotRead, JavaRecord, java_read
from tests.test_record_batch import (
    BIG,
    CARD,
    CODECS,
    MASKER,
    corrupted,
    corruption_originals,
    field_of_batches,
    masked_field,
)


def read_alike(java: list[JavaRecord]) -> list[tuple]:
    """Java's records as iter_records gives them (without Java's control flag)."""
    return [record[:5] for record in java]


def masked(java: list[JavaRecord]) -> list[tuple]:
    """Java's records with every field through MASKER, as the kernel should have left them (control records are
    never masked)."""
    return [(offset, timestamp, masked_field("key", key, control), masked_field("value", value, control),
             [(name, masked_field("header", data, control, name)) for name, data in headers])
            for offset, timestamp, key, value, headers, control in java]


def test_iter_records_reads_what_javas_consumer_reads_and_java_reads_the_masked_batches(kafka_jars: Path):
    """Every codec, plain, transactional and control batches (field_of_batches): the kernel reads them as Java
    does, and Java reads what mask_records made of them as the input with every field masked."""
    inputs = [field_of_batches(AioBuilder, codec, seed)[0] for codec in CODECS.values() for seed in range(2)]
    outputs = [mask_records(field, MASKER, max_output=BIG).data for field in inputs]
    answers = java_read(kafka_jars, inputs + outputs)
    for field, before, after in zip(inputs, answers[:len(inputs)], answers[len(inputs):], strict=True):
        assert not isinstance(before, JavaCannotRead) and not isinstance(after, JavaCannotRead), (before, after)
        assert iter_records(field) == read_alike(before)
        assert read_alike(after) == masked(before)
        assert any(CARD.encode() in (record[3] or b"") for record in before)
        assert not any(CARD.encode() in (record[3] or b"") for record in after)


class JavaDisagrees(AssertionError):
    def __init__(self, message: str, batch: bytes) -> None:
        super().__init__(f"{message}: {batch.hex()}")
        self.batch = batch


def check_against_java(kafka_jars: Path, batches: list[bytes]) -> Counter[str]:
    """mask_records on each batch; of those it accepts, wherever Java's consumer can read the input: the kernel
    reads it alike, and Java reads the output as the input with every field masked. Java reads a header key that
    is not UTF-8 (with replacement characters) where iter_records refuses it; the masking path passes such keys
    through, so for those only the output is compared. Raises JavaDisagrees; returns what the batches came to.
    loadtest/fuzz_masking.py runs this for as long as it is given."""
    tally: Counter[str] = Counter()
    accepted: list[bytes] = []
    outputs: list[bytes] = []
    for batch in batches:
        try:
            outputs.append(mask_records(batch, MASKER, max_output=BIG).data)
            accepted.append(batch)
        except UnmaskableRecords:
            tally["refused"] += 1
    answers = java_read(kafka_jars, accepted + outputs)
    for batch, before, after in zip(accepted, answers[:len(accepted)], answers[len(accepted):], strict=True):
        if isinstance(before, JavaCannotRead):
            tally["accepted, Java cannot read the input"] += 1
            continue
        if isinstance(after, JavaCannotRead):
            raise JavaDisagrees(f"Java reads the input but not the output ({after})", batch)
        try:
            if iter_records(batch) != read_alike(before):
                raise JavaDisagrees("the kernel reads the input otherwise than Java", batch)
        except UnmaskableRecords as error:
            if "header key is not UTF-8" not in str(error):
                raise JavaDisagrees(f"iter_records refuses what mask_records accepted: {error}", batch) from error
            tally["accepted, a header key not UTF-8"] += 1
        if read_alike(after) != masked(before):
            raise JavaDisagrees("Java reads the output otherwise than the input with its fields masked", batch)
        tally["accepted, read alike"] += 1
    return tally


def test_corrupted_batches_the_kernel_accepts_are_read_by_java_as_the_kernel_reads_them(kafka_jars: Path):
    """Flipped, cut and inserted bytes, half with a recomputed CRC (test_record_batch.corrupted), through
    check_against_java."""
    rng = random.Random(23)
    originals = corruption_originals(rng)
    tally = check_against_java(kafka_jars, [corrupted(rng, rng.choice(originals), edits=rng.randint(1, 2))
                                            for _ in range(3000)])
    print("java corruption:", dict(tally))
    assert tally["refused"] > 1000 and tally["accepted, read alike"] > 100
