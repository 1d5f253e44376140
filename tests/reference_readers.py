"""What Kafka clients read from records fields, for differential tests: each client's own batch reader. Kafka's Java
consumer and franz-go run once for a whole list of fields (tests/clients/java/ReadBatches.java,
tests/clients/franz/readbatches; a JVM start costs a second or two); aiokafka reads in this process."""

from __future__ import annotations

import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka.record.memory_records import MemoryRecords as AioRecords

from gateway.dev.kafka import java_tool

CLIENTS = Path(__file__).resolve().parent / "clients"
JAVA_READER = CLIENTS / "java" / "ReadBatches.java"

# (offset, timestamp, key, value, [(header name, header value)], control): keys, values and header values bytes or
# None, header names str (the client's bytes read as UTF-8, an invalid sequence as U+FFFD, as Java reads them).
ClientRecord = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]], bool]


class CannotRead(str):
    """The client fails on this field: why, in its words."""


Answers = list[list[ClientRecord] | CannotRead]


@dataclass(frozen=True)
class Reader:
    name: str
    read: Callable[[list[bytes]], Answers]     # for each field, the records the client reads, or CannotRead
    # Whether it returns every record of every batch. Java's batch reader does. franz-go's returns what its
    # consumer hands on: it drops records whose offset is below its position (0, then the one after the last it
    # returned), and whole batches whose header says they end below it. A broker's batches never do that; corrupted
    # ones (their base offset is outside the CRC) may.
    every_record: bool = True
    # Whether its record timestamps are Kafka's reading of the batch. franz-go takes a batch attributes bit Kafka
    # does not define (0x80) for "no timestamp type" and gives every record the batch's max timestamp then.
    timestamps_as_kafka: bool = True


def _bytes(text: str) -> bytes | None:
    return None if text == "-" else bytes.fromhex(text)


def _record(text: str) -> ClientRecord:
    offset, timestamp, control, key, value, headers = text.split(" ")
    pairs = [] if headers == "." else [pair.split("=") for pair in headers.split(",")]
    return (int(offset), int(timestamp), _bytes(key), _bytes(value),
            [(bytes.fromhex(name).decode("utf-8", "replace"), _bytes(data)) for name, data in pairs], control == "1")


def _run(fields: list[bytes], run: Callable[[Path, Path], subprocess.CompletedProcess[bytes]]) -> Answers:
    """Write fields for a reader, run it, and parse its answers (one line per field: "R records" or "E why")."""
    with tempfile.TemporaryDirectory() as tmp:
        source, answers = Path(tmp) / "fields", Path(tmp) / "answers"
        source.write_bytes(b"".join(struct.pack(">i", len(field)) + field for field in fields))
        result = run(source, answers)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        lines = answers.read_text().split("\n")[:-1]
    assert len(lines) == len(fields), f"{len(lines)} answers for {len(fields)} fields"
    out: Answers = []
    for line in lines:
        if line.startswith("E "):
            out.append(CannotRead(line[2:]))
        else:
            body = line[2:]
            out.append([_record(text) for text in body.split("\t")] if body else [])
    return out


def java_reader(kafka_jars: Path) -> Reader:
    """Java's consumer's reading."""
    return Reader("java", lambda fields: _run(fields, lambda source, answers: java_tool(
        kafka_jars, str(JAVA_READER), [str(source), str(answers)], timeout=300, heap="512m")))


def build_franz_reader(out_dir: Path) -> Path:
    """tests/clients/franz/readbatches, built into out_dir."""
    binary = out_dir / "readbatches"
    subprocess.run(["go", "build", "-o", str(binary), "./readbatches"], cwd=CLIENTS / "franz", check=True, timeout=600)
    return binary


def franz_reader(binary: Path) -> Reader:
    """franz-go's reading, with the reader build_franz_reader built."""
    return Reader("franz-go", lambda fields: _run(fields, lambda source, answers: subprocess.run(
        [str(binary), str(source), str(answers)], capture_output=True, timeout=300)), every_record=False,
        timestamps_as_kafka=False)


def _aiokafka_read(field: bytes) -> list[ClientRecord] | CannotRead:
    out: list[ClientRecord] = []
    try:
        records = AioRecords(field)
        while (batch := records.next_batch()) is not None:
            if not batch.validate_crc():    # as its consumer does (check_crcs)
                return CannotRead("the batch's CRC does not match")
            out += [(r.offset, r.timestamp, r.key, r.value, list(r.headers), batch.is_control_batch) for r in batch]
    except Exception as exc:  # noqa: BLE001 - any failure is the client's answer
        return CannotRead(repr(exc))
    return out


def aiokafka_reader() -> Reader:
    """aiokafka's reading (its MemoryRecords, CRCs checked), in this process."""
    return Reader("aiokafka", lambda fields: [_aiokafka_read(field) for field in fields])
