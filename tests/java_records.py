"""What Kafka's Java consumer reads from records fields, for differential tests: tests/clients/java/ReadBatches.java
run once on the Kafka jars for a whole list of fields (a JVM start costs a second or two)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from gateway.dev.kafka import java_tool

READER = Path(__file__).resolve().parent / "clients" / "java" / "ReadBatches.java"

# (offset, timestamp, key, value, [(header name, header value)], control): keys, values and header values bytes or
# None, header names str (as Java decoded them).
JavaRecord = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]], bool]


class JavaCannotRead(str):
    """Java's consumer raises on this field: the exception's class and message."""


def _bytes(text: str) -> bytes | None:
    return None if text == "-" else bytes.fromhex(text)


def _record(text: str) -> JavaRecord:
    offset, timestamp, control, key, value, headers = text.split(" ")
    pairs = [] if headers == "." else [pair.split("=") for pair in headers.split(",")]
    return (int(offset), int(timestamp), _bytes(key), _bytes(value),
            [(bytes.fromhex(name).decode("utf-8"), _bytes(data)) for name, data in pairs], control == "1")


def java_read(kafka_jars: Path, fields: list[bytes]) -> list[list[JavaRecord] | JavaCannotRead]:
    """For each field, the records Java's consumer reads from it in order, or JavaCannotRead."""
    with tempfile.TemporaryDirectory() as tmp:
        source, answers = Path(tmp) / "fields", Path(tmp) / "answers"
        source.write_bytes(b"".join(struct.pack(">i", len(field)) + field for field in fields))
        result = java_tool(kafka_jars, str(READER), [str(source), str(answers)], timeout=300, heap="512m")
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        lines = answers.read_text().split("\n")[:-1]
    assert len(lines) == len(fields), f"{len(lines)} answers for {len(fields)} fields"
    out: list[list[JavaRecord] | JavaCannotRead] = []
    for line in lines:
        if line.startswith("E "):
            out.append(JavaCannotRead(line[2:]))
        else:
            body = line[2:]
            out.append([_record(text) for text in body.split("\t")] if body else [])
    return out
