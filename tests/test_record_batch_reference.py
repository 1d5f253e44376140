"""Record batches against Kafka clients' own batch readers: Kafka's Java consumer, franz-go and aiokafka
(tests/test_record_batch.py holds the kernel to aiokafka's and kafka-python's builders and readers on valid batches).

A topic's batch that the kernel finds nothing to mask in goes to the consumer as the broker's bytes, so the
consumer must read those bytes as the kernel did, field for field: a record split elsewhere would hand the
application bytes the kernel read as another field (an unmasked header as the value, say). aiokafka and
kafka-python read the record attributes byte otherwise than Kafka's layout (test_record_batch.py); this checks the
kernel's reading against Java's (tests/clients/java/ReadBatches.java: MemoryRecords, ensureValid,
streamingIterator, as the consumer's fetcher reads them) and franz-go's (tests/clients/franz/readbatches:
kgo.ProcessFetchPartition) and aiokafka's, on the clients' batches and on corrupted ones.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

import crc32c
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder as AioBuilder

from _fastpath.record_batch import UnmaskableRecords, iter_records, mask_records
from tests.reference_readers import (
    CannotRead,
    ClientRecord,
    Reader,
    aiokafka_reader,
    build_franz_reader,
    franz_reader,
    java_reader,
)
from tests.test_record_batch import (
    BIG,
    CARD,
    CODECS,
    HEADER,
    MASKER,
    control_batches,
    corrupted,
    corruption_originals,
    field_of_batches,
    masked_field,
    reseal,
)


@pytest.fixture(scope="module", params=["java", "franz-go", "aiokafka"])
def reader(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Reader:
    if request.param == "java":
        return java_reader(request.getfixturevalue("kafka_jars"))
    if request.param == "franz-go":
        return franz_reader(build_franz_reader(tmp_path_factory.mktemp("franz-reader")))
    return aiokafka_reader()


def kernel(reader: Reader, batch: bytes) -> list[tuple]:
    """What the kernel reads, as iter_records gives it (timestamps left out where the reader's are not Kafka's
    reading)."""
    return [(offset, timestamp if reader.timestamps_as_kafka else None, *rest)
            for offset, timestamp, *rest in iter_records(batch)]


def read_alike(reader: Reader, records: list[ClientRecord]) -> list[tuple]:
    """A client's records as kernel() gives them (without the control flag)."""
    return [(offset, timestamp if reader.timestamps_as_kafka else None, key, value, headers)
            for offset, timestamp, key, value, headers, _ in records]


def masked(reader: Reader, records: list[ClientRecord]) -> list[tuple]:
    """read_alike of the records with every field through MASKER, as the kernel should have left them (control
    records are never masked)."""
    return read_alike(reader, [
        (offset, timestamp, masked_field("key", key, control), masked_field("value", value, control),
         [(name, masked_field("header", data, control, name)) for name, data in headers], control)
        for offset, timestamp, key, value, headers, control in records])


def reads_alike(reader: Reader, ours: list[tuple], theirs: list[tuple]) -> bool:
    """Whether the client read what the kernel read: the same records, or for a client that drops some
    (Reader.every_record), some of them in the same order, each the same."""
    if reader.every_record:
        return ours == theirs
    remaining = iter(ours)
    return all(any(record == candidate for candidate in remaining) for record in theirs)


def test_iter_records_reads_what_the_client_reads_and_the_client_reads_the_masked_batches(reader: Reader):
    """Every codec, plain, transactional and control batches (field_of_batches): the kernel reads them as the
    client does, and the client reads what mask_records made of them as the input with every field masked."""
    inputs = [field_of_batches(AioBuilder, codec, seed)[0] for codec in CODECS.values() for seed in range(2)]
    outputs = [mask_records(field, MASKER, max_output=BIG).data for field in inputs]
    answers = reader.read(inputs + outputs)
    for field, before, after in zip(inputs, answers[:len(inputs)], answers[len(inputs):], strict=True):
        assert not isinstance(before, CannotRead) and not isinstance(after, CannotRead), (before, after)
        assert kernel(reader, field) == read_alike(reader, before)    # every record, whatever the reader
        assert read_alike(reader, after) == masked(reader, before)
        assert any(CARD.encode() in (record[3] or b"") for record in before)
        assert not any(CARD.encode() in (record[3] or b"") for record in after)


class ClientDisagrees(AssertionError):
    def __init__(self, message: str, batch: bytes) -> None:
        super().__init__(f"{message}: {batch.hex()}")
        self.batch = batch


def crcs_valid(field: bytes) -> bool:
    """Whether every complete batch of the field carries the CRC32C of its bytes from the attributes on."""
    at = 0
    while at + HEADER <= len(field):
        end = at + 12 + struct.unpack_from(">i", field, at + 8)[0]
        if end < at + HEADER:
            return False    # shorter than its own header: no batch the kernel writes
        if end > len(field):
            break
        if struct.unpack_from(">I", field, at + 17)[0] != crc32c.crc32c(field[at + 21:end]):
            return False
        at = end
    return True


def test_crcs_valid_tells_a_batch_whose_crc_does_not_match():
    field = field_of_batches(AioBuilder, CODECS["lz4"], 0)[0]
    assert crcs_valid(field)
    flipped = bytearray(field)
    flipped[-1] ^= 1     # in the last batch's records
    assert not crcs_valid(bytes(flipped))
    assert not crcs_valid(struct.pack(">qi", 0, 0) + field[12:])     # a length of 0: no batch, and no endless loop


def check_against(reader: Reader, batches: list[bytes]) -> Counter[str]:
    """mask_records on each batch; each it accepts comes out with valid CRCs, and wherever the client can read the
    input: the kernel reads it alike, and the client reads the output as the input with every field masked. The
    clients read a header key that is not UTF-8 (Java with replacement characters) where iter_records refuses it;
    the masking path passes such keys through, so for those only the output is compared; likewise for a control
    batch iter_records cannot read (control_batches). Raises ClientDisagrees; returns what the batches came to.
    loadtest/fuzz_masking.py runs this for as long as it is given."""
    tally: Counter[str] = Counter()
    accepted: list[bytes] = []
    outputs: list[bytes] = []
    for batch in batches:
        try:
            out = mask_records(batch, MASKER, max_output=BIG).data
        except UnmaskableRecords:
            tally["refused"] += 1
            continue
        if not crcs_valid(out):
            raise ClientDisagrees("a batch came out with a bad CRC", batch)
        outputs.append(out)
        accepted.append(batch)
    answers = reader.read(accepted + outputs)
    for batch, before, after in zip(accepted, answers[:len(accepted)], answers[len(accepted):], strict=True):
        if isinstance(before, CannotRead):
            tally["accepted, the client cannot read the input"] += 1
            continue
        if isinstance(after, CannotRead):
            raise ClientDisagrees(f"the client reads the input but not the output ({after})", batch)
        if read_alike(reader, after) != masked(reader, before):
            raise ClientDisagrees("the client reads the output otherwise than the input with its fields masked", batch)
        try:
            ours = kernel(reader, batch)
        except UnmaskableRecords as error:
            if "header key is not UTF-8" in str(error):
                tally["accepted, a header key not UTF-8 (output compared)"] += 1
            elif control_batches(batch):
                tally["accepted, a control batch the kernel passes on unread (output compared)"] += 1
            else:
                raise ClientDisagrees(f"iter_records refuses what mask_records accepted: {error}", batch) from error
            continue
        if not reads_alike(reader, ours, read_alike(reader, before)):
            raise ClientDisagrees("the kernel reads the input otherwise than the client", batch)
        tally["accepted, read alike"] += 1
    return tally


def test_corrupted_batches_the_kernel_accepts_are_read_by_the_client_as_the_kernel_reads_them(reader: Reader):
    """Flipped, cut and inserted bytes, half with a recomputed CRC (test_record_batch.corrupted), through
    check_against."""
    rng = random.Random(23)
    originals = corruption_originals(rng)
    # Offsets the kernel keeps as they are but a consumer reads as behind it: a base offset below 0 (outside the
    # CRC), and a last offset delta that ends the batch before it starts. franz-go hands none of their records on.
    behind = [struct.pack(">q", -5) + batch[8:] for batch in originals[:2]] + \
             [reseal(batch[:23] + struct.pack(">i", -1) + batch[27:]) for batch in originals[:2]]
    tally = check_against(reader, behind + [corrupted(rng, rng.choice(originals), edits=rng.randint(1, 2))
                                            for _ in range(3000)])
    print("corruption:", dict(tally))
    assert tally["refused"] > 1000 and tally["accepted, read alike"] > 100
