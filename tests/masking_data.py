"""Records full of card numbers, emails and IBANs, what masking must turn them into, and the tools the masking
suites (tests/test_masking_matrix.py, tests/test_masking_hostile.py) share to check what clients received.

Every record carries its own sensitive values (Luhn-valid cards with and without separators, emails, IBANs with a
valid checksum, spaced and compact), in its value (flat and nested JSON, arrays, a card as a JSON number, free
text; raw JSON, schema-registry framed JSON and Protobuf, and AWS Glue framed JSON, plain and zlib-compressed), its
key and its header values.
The masking rules here are what the suites' policies name, so the expected output of every field is known exactly,
except for the HMAC of an IBAN, whose key the gateway picks: that is matched by shape.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import crc32c
import orjson

# --- the policies ------------------------------------------------------------------------------------------------

# The order of `masking:` names is the order the rules run in: IBANs first, so that no group of an IBAN's digits
# can be taken for a card number before the IBAN detector sees the whole IBAN.
MASKING_RULES = """\
masking:
  ibans: {detector: iban, strategy: hash, targets: [value, key, headers]}
  cards: {detector: card, strategy: partial, keep_last: 4, targets: [value, key, headers]}
  emails: {detector: email, strategy: redact, placeholder: "[email]", targets: [value, key, headers]}
"""


def masking_policy(masked_prefix: str, plain_prefix: str, plain_operations: str = "read, describe") -> str:
    """etl reads everything as it is; the analyst reads `masked_prefix*` masked and `plain_prefix*` as it is
    (``plain_operations``)."""
    return f"""\
rules:
  - name: etl-everything
    subjects: ["group:etl"]
    resources:
      - {{topic: {{glob: "*"}}}}
      - {{group: {{glob: "*"}}}}
      - {{transactional_id: {{glob: "*"}}}}
      - {{cluster: true}}
    operations: [all]
  - name: analyst-reads-masked
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{masked_prefix}"}}}}]
    operations: [read, describe]
    masking: [ibans, cards, emails]
  - name: analyst-reads-plain
    subjects: ["user:analyst"]
    resources: [{{topic: {{prefix: "{plain_prefix}"}}}}]
    operations: [{plain_operations}]
  - name: analyst-groups
    subjects: ["user:analyst"]
    resources: [{{group: {{glob: "*"}}}}]
    operations: [read, describe]
{MASKING_RULES}"""




# --- sensitive values ----------------------------------------------------------------------------------------------

CARD, EMAIL, IBAN = "card", "email", "iban"
HASH_LENGTH = 22  # HMAC-SHA256, 16 bytes, base64url without padding
EMAIL_PLACEHOLDER = b"[email]"


@dataclass(frozen=True)
class Secret:
    kind: str  # CARD, EMAIL or IBAN
    text: bytes  # exactly as produced


def luhn(partial: str) -> str:
    """partial with the Luhn check digit appended."""
    total = 0
    for position, digit in enumerate(int(d) for d in reversed(partial)):
        if position % 2 == 0:  # these sit at odd positions once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return partial + str((10 - total % 10) % 10)


def german_iban(account: int) -> str:
    """A DE IBAN (bank code 37040044) with a valid ISO 7064 mod-97 check."""
    bban = f"37040044{account % 10**10:010d}"
    check = 98 - int(bban + "131400") % 97  # D=13, E=14, then the check digits as 00
    return f"DE{check:02d}{bban}"


def grouped(digits: str, sizes: Sequence[int], separator: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(digits[start:start + size])
        start += size
    assert start == len(digits)
    return separator.join(parts)


# --- the records ---------------------------------------------------------------------------------------------------

PLAIN, COMMITTED, ABORTED = "plain", "committed", "aborted"
JSON, SR_JSON, SR_PROTOBUF, GLUE_JSON, GLUE_ZLIB = "json", "sr-json", "sr-protobuf", "glue-json", "glue-zlib"
WIDE_TEXT = "wide-text"  # UTF-16 text without a byte order mark: little-endian for even indexes, big for odd
FRAMINGS = (JSON, SR_JSON, SR_PROTOBUF, GLUE_JSON, GLUE_ZLIB, WIDE_TEXT)
SCHEMA_ID = 0x0000_0107
# AWS Glue framing: version 3, compression (0 none, 5 zlib), a 16-byte schema version id (letters: no detector
# takes them). Masked values arrive uncompressed, whatever they came as.
GLUE_SCHEMA_VERSION_ID = b"GLUESCHEMAVERSNX"
GLUE_HEADER = b"\x03\x00" + GLUE_SCHEMA_VERSION_ID
GLUE_ZLIB_HEADER = b"\x03\x05" + GLUE_SCHEMA_VERSION_ID
KEY_INDEX = re.compile(rb"key-(\d{6})\|")


@dataclass
class Sample:
    """One produced record and what it must look like to a masked reader."""

    index: int
    topic: str
    partition: int
    outcome: str  # PLAIN, COMMITTED or ABORTED
    framing: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    secrets: tuple[Secret, ...]
    document: object = None  # the JSON document inside the value, for the JSON framings
    card_number: int | None = None  # a card also written as a bare JSON number


def pb_field(number: int, data: bytes) -> bytes:
    """A Protobuf length-delimited field (every field here is under 128 bytes)."""
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def make_sample(index: int, topic: str, partition: int, outcome: str) -> Sample:
    visa = luhn(f"4{(index * 7_919_133 + 40_000_000) % 10**14:014d}")
    mastercard = luhn(f"5{1 + index % 5}{(index * 3_331_333 + 7) % 10**13:013d}")
    amex = luhn(f"3{7 if index % 2 else 4}{(index * 1_000_003 + 11) % 10**12:012d}")
    card1 = grouped(visa, (4, 4, 4, 4), " " if index % 2 else "-")
    card2 = mastercard if index % 3 else grouped(amex, (4, 6, 5), " ")
    iban_compact = german_iban(index * 104_729 + 5)
    iban_spaced = " ".join(iban_compact[k:k + 4] for k in range(0, len(iban_compact), 4))
    email = f"{('alice', 'bob', 'carol')[index % 3]}.{index}@{('example.com', 'mail.example.org')[index % 2]}"
    email2 = f"billing+{index}@corp.example.net"
    secrets = (Secret(CARD, card1.encode()), Secret(CARD, card2.encode()), Secret(EMAIL, email.encode()),
               Secret(EMAIL, email2.encode()), Secret(IBAN, iban_spaced.encode()), Secret(IBAN, iban_compact.encode()))

    framing = FRAMINGS[index % len(FRAMINGS)]
    key_secret = (email, card1, iban_compact)[index // 3 % 3]
    key = f"key-{index:06d}|{key_secret}".encode()
    headers = [("contact", email.encode()), ("card", f"card {card1}".encode()), ("iban", iban_spaced.encode()),
               ("seq", f"{index:06d}".encode()), ("trace", f"t-{index:06d}".encode())]
    sample = Sample(index, topic, partition, outcome, framing, key, b"", headers, secrets)
    framed = b"\x00" + struct.pack(">I", SCHEMA_ID)
    if framing == SR_PROTOBUF:
        # Confluent's Protobuf framing: message-index varints ([0] as a lone 0, or a count then the indexes),
        # then the message. Every sensitive string has a space either side, so no tag or length byte next to it
        # can look like part of it.
        indexes = b"\x00" if index % 2 else b"\x04\x02\x00"
        sample.value = framed + indexes + (
            pb_field(1, f" {card1} ".encode()) + pb_field(2, f" {email} ".encode())
            + pb_field(3, f" {iban_spaced} ".encode())
            + pb_field(4, pb_field(1, f"Customer {index}".encode()) + pb_field(2, f" {email2} ".encode()))
            + pb_field(5, f"plain text {index} card {card2} end".encode()))
        return sample
    if framing == WIDE_TEXT:
        sample.value = wide_text(sample).encode(wide_encoding(sample))
        return sample
    document: dict = {
        "id": index, "type": "payment", "amount": round(10 + index * 0.25, 2), "currency": "EUR",
        "card": card1, "email": email, "iban": iban_spaced,
        "customer": {"name": f"Customer {index}", "vip": index % 2 == 0,
                     "contact": {"email": email2, "phone": None}},
        "payments": [{"card": card2, "iban": iban_compact, "amount": 3}, {"method": "cash", "ref": f"R-{index:06d}"}],
        "emails": [email, email2],
        "memo": f"pay {card1} from {iban_spaced} for {email} please",
        "note": f"plain text {index}",
    }
    if card2.isdigit():
        document["pan"] = int(card2)  # a card as a JSON number: masking turns it into a string
        sample.card_number = int(card2)
    text = orjson.dumps(document)
    if index % 7 == 0:
        # A JSON escape can spell '@': the masker must read it decoded (its orjson route), in every framing.
        text = text.replace(b"@", b"\\u0040")
    sample.document = document
    if framing == JSON:
        sample.value = text
    elif framing == SR_JSON:
        sample.value = framed + text
    elif framing == GLUE_JSON:
        sample.value = GLUE_HEADER + text
    else:
        sample.value = GLUE_ZLIB_HEADER + zlib.compress(text)
    return sample


def wide_text(sample: Sample) -> str:
    """A WIDE_TEXT sample's value as text: every secret, and a character outside ASCII that splits the runs."""
    card1, card2, email, email2, iban_spaced, iban_compact = (secret.text.decode() for secret in sample.secrets)
    return f"pay {card1} from {iban_spaced} for {email}; Zoë {sample.index}: {card2}, {email2}, {iban_compact}"


def wide_encoding(sample: Sample) -> str:
    return "utf-16-be" if sample.index % 2 else "utf-16-le"


def make_samples(topic: str, first_index: int, phases: Iterable[tuple[str, int]], partitions: int = 2) -> list[Sample]:
    """Consecutive records for one topic, phase after phase (an outcome and a count), round robin on partitions."""
    samples, index = [], first_index
    for outcome, count in phases:
        for _ in range(count):
            samples.append(make_sample(index, topic, index % partitions, outcome))
            index += 1
    return samples


# --- what a masked reader must receive -----------------------------------------------------------------------------

def masked_form(secret: Secret, binary: bool) -> bytes:
    """A regex for what masking makes of one secret. binary: inside a framed non-JSON payload, where every
    replacement is cut or padded with '*' to the original length, so that length prefixes stay right."""
    n = len(secret.text)
    if secret.kind == CARD:
        return re.escape(b"*" * (n - 4) + secret.text[-4:])
    if secret.kind == EMAIL:
        if binary:
            return re.escape((EMAIL_PLACEHOLDER + b"*" * n)[:n])
        return re.escape(EMAIL_PLACEHOLDER)
    token = rb"[A-Za-z0-9_-]{%d}" % min(HASH_LENGTH, n) if binary else rb"[A-Za-z0-9_-]{%d}" % HASH_LENGTH
    return token + (rb"\*{%d}" % (n - HASH_LENGTH) if binary and n > HASH_LENGTH else b"")


def masked_pattern(data: bytes, secrets: Sequence[Secret], binary: bool = False) -> re.Pattern[bytes]:
    """data as a full-match regex in which each secret is replaced by what masking makes of it."""
    by_text = {secret.text: secret for secret in secrets}
    finder = re.compile(b"|".join(re.escape(text) for text in sorted(by_text, key=len, reverse=True)))
    parts, position = [], 0
    for match in finder.finditer(data):
        parts += [re.escape(data[position:match.start()]), masked_form(by_text[match.group()], binary)]
        position = match.end()
    parts.append(re.escape(data[position:]))
    return re.compile(b"".join(parts), re.DOTALL)


def _check_json(got: object, want: object, sample: Sample, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: members {got!r}"
        for name in want:
            _check_json(got[name], want[name], sample, f"{where}.{name}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r}"
        for position, (g, w) in enumerate(zip(got, want, strict=True)):
            _check_json(g, w, sample, f"{where}[{position}]")
    elif isinstance(want, str):
        assert isinstance(got, str), f"{where}: {got!r}"
        assert masked_pattern(want.encode(), sample.secrets).fullmatch(got.encode()), f"{where}: {got!r} for {want!r}"
    elif isinstance(want, int) and not isinstance(want, bool) and want == sample.card_number:
        digits = str(want)
        assert got == "*" * (len(digits) - 4) + digits[-4:], f"{where}: a card number as {got!r}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r}, produced {want!r}"


def check_masked(sample: Sample, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]):
    """Every field as masking must leave it: secrets replaced, everything else as produced."""
    label = f"record {sample.index} ({sample.framing})"
    assert key is not None and masked_pattern(sample.key, sample.secrets).fullmatch(key), f"{label}: key {key!r}"
    assert [name for name, _ in headers] == [name for name, _ in sample.headers], f"{label}: headers {headers!r}"
    for (name, got), (_, produced) in zip(headers, sample.headers, strict=True):
        assert got is not None and masked_pattern(produced, sample.secrets).fullmatch(got), \
            f"{label}: header {name} = {got!r}"
    assert value is not None, f"{label}: null value"
    if sample.framing == SR_PROTOBUF:
        assert masked_pattern(sample.value, sample.secrets, binary=True).fullmatch(value), f"{label}: value {value!r}"
        return
    if sample.framing == WIDE_TEXT:
        # Each replacement fitted to its match, in the same encoding: the value keeps its length.
        text = value.decode(wide_encoding(sample)).encode()
        assert len(value) == len(sample.value) and masked_pattern(
            wide_text(sample).encode(), sample.secrets, binary=True).fullmatch(text), f"{label}: value {value!r}"
        return
    if sample.framing == SR_JSON:
        assert value[:5] == sample.value[:5], f"{label}: schema-registry header {value[:5]!r}"
        value = value[5:]
    elif sample.framing in (GLUE_JSON, GLUE_ZLIB):
        assert value[:18] == GLUE_HEADER, f"{label}: Glue header {value[:18]!r}"
        value = value[18:]
    _check_json(orjson.loads(value), sample.document, sample, label)


# --- scanning what clients received for any original secret --------------------------------------------------------

_CARD_RUN = re.compile(rb"[0-9][0-9 \-]*")
_IBAN_RUN = re.compile(rb"[A-Z0-9][A-Z0-9 ]*")
_EMAIL_RUN = re.compile(rb"[A-Za-z0-9._%+\-@]*@[A-Za-z0-9._%+\-@]*")
_JSON_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")
_WIDE_LE, _WIDE_BE = re.compile(rb"([\x01-\x7f])\x00"), re.compile(rb"\x00([\x01-\x7f])")


def _glue_inflated(data: bytes) -> list[bytes]:
    """The payload of every zlib-compressed Glue value in data, inflated (at most 1 MiB each)."""
    payloads, view = [], memoryview(data)     # slices of a view: no copy of the rest per value
    for found in re.finditer(re.escape(GLUE_ZLIB_HEADER), data):
        try:
            payloads.append(zlib.decompressobj().decompress(view[found.end():], 1 << 20))
        except zlib.error:
            pass
    return payloads


class LeakScanner:
    """Finds every original secret in any bytes, in any spacing: each card and IBAN in any arrangement of the
    separators it may have (compared without them), each email also behind a JSON \\u escape.

    Candidates are cut from maximal runs of the characters a secret can be written with, then looked up in sets,
    so one scan over a few megabytes takes a fraction of a second whatever the number of secrets."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.cards: set[bytes] = set()
        self.ibans: set[bytes] = set()
        self.emails: set[bytes] = set()
        for sample in samples:
            for secret in sample.secrets:
                if secret.kind == CARD:
                    self.cards.add(re.sub(rb"[ \-]", b"", secret.text))
                elif secret.kind == IBAN:
                    self.ibans.add(secret.text.replace(b" ", b""))
                else:
                    self.emails.add(secret.text)
        self.card_lengths = sorted({len(c) for c in self.cards})
        self.iban_lengths = sorted({len(i) for i in self.ibans})
        # (local part length, whole length) of every email: where a candidate starts and ends around its '@'.
        self.email_shapes = sorted({(e.index(b"@"), len(e)) for e in self.emails})

    def leaks(self, data: bytes) -> list[bytes]:
        """The distinct original secrets found in data (empty when everything was masked), also inside the
        zlib-compressed payloads of Glue-framed values, which hide them from a scan of the bytes as they are."""
        data = bytes(data)
        data += b"\n".join(_glue_inflated(data))
        # UTF-16 text (either byte order, at either alignment) with its ASCII characters narrowed to one byte each.
        data += b"\n" + _WIDE_LE.sub(rb"\1", data) + b"\n" + _WIDE_BE.sub(rb"\1", data)
        data = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)).encode("utf-8", "replace"), data)
        found: set[bytes] = set()
        for runs, strip, wanted, lengths in ((_CARD_RUN, rb"[ \-]", self.cards, self.card_lengths),
                                             (_IBAN_RUN, rb" ", self.ibans, self.iban_lengths)):
            for run in runs.finditer(data):
                compact = re.sub(strip, b"", run.group())
                for length in lengths:
                    for start in range(len(compact) - length + 1):
                        if compact[start:start + length] in wanted:
                            found.add(compact[start:start + length])
        for run in _EMAIL_RUN.finditer(data):
            text = run.group()
            for at in (m.start() for m in re.finditer(rb"@", text)):
                for local, length in self.email_shapes:
                    candidate = text[at - local:at - local + length] if at >= local else b""
                    if candidate in self.emails:
                        found.add(candidate)
        return sorted(found)

    @property
    def total(self) -> int:
        return len(self.cards) + len(self.ibans) + len(self.emails)


# --- record batches on the wire ------------------------------------------------------------------------------------

BATCH_HEADER = 61
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
CONTROL = 0x20


def varint(n: int) -> bytes:
    """Kafka's zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def record_body(key: bytes | None, value: bytes | None, headers: Sequence[tuple[bytes, bytes]] = (), *,
                offset_delta: int = 0) -> bytes:
    """A v2 record without its leading length."""
    body = b"\x00\x00" + varint(offset_delta)  # attributes, timestamp delta
    for part in (key, value):
        body += varint(-1) if part is None else varint(len(part)) + part
    return body + varint(len(headers)) + b"".join(varint(len(k)) + k + varint(len(v)) + v for k, v in headers)


def record(key: bytes | None, value: bytes | None, headers: Sequence[tuple[bytes, bytes]] = (), *,
           offset_delta: int = 0) -> bytes:
    body = record_body(key, value, headers, offset_delta=offset_delta)
    return varint(len(body)) + body


def seal(batch: bytes | bytearray) -> bytes:
    """The batch with BATCH_LENGTH and CRC set for its bytes."""
    data = bytearray(batch)
    struct.pack_into(">i", data, 8, len(data) - 12)
    struct.pack_into(">I", data, 17, crc32c.crc32c(data[21:]))
    return bytes(data)


def batch(payload: bytes, count: int, *, codec: int = 0, base_offset: int = 0, attributes: int = 0) -> bytes:
    """A v2 batch around already encoded (and, with a codec, already compressed) records."""
    header = struct.pack(">qiibIhiqqqhii", base_offset, 0, -1, 2, 0, attributes | codec, max(count - 1, 0),
                         1_700_000_000_000, 1_700_000_000_000, -1, -1, -1, count)
    return seal(header + payload)


@dataclass
class BatchView:
    base_offset: int
    attributes: int
    count: int
    crc_ok: bool
    header: bytes  # every header field but BATCH_LENGTH and CRC
    raw: bytes = field(repr=False)


def walk_batches(records: bytes) -> list[BatchView]:
    """Every complete v2 batch of a records field, with its stored CRC32C checked over ATTRIBUTES..end."""
    out, position = [], 0
    while position + 12 <= len(records):
        length = struct.unpack_from(">i", records, position + 8)[0]
        end = position + 12 + length
        if end > len(records):
            break
        raw = records[position:end]
        assert raw[16] == 2, f"magic {raw[16]} at {position}"
        attributes, = struct.unpack_from(">h", raw, 21)
        out.append(BatchView(struct.unpack_from(">q", raw, 0)[0], attributes, struct.unpack_from(">i", raw, 57)[0],
                             struct.unpack_from(">I", raw, 17)[0] == crc32c.crc32c(raw[21:]),
                             raw[:8] + raw[12:17] + raw[21:BATCH_HEADER], raw))
        position = end
    return out


# --- talking to the brokers directly -------------------------------------------------------------------------------

def direct_wire(kafka_cluster, node_id: int | None = None):
    """A WireClient signed in to a broker (the first one by default) as the cluster's admin, past the gateway."""
    from tests.wire import WireClient

    host, port = kafka_cluster.node_addresses[node_id or kafka_cluster.node_ids[0]]
    wire = WireClient(f"{host}:{port}")
    wire.sign_in_scram("admin", kafka_cluster.passwords["admin"])
    return wire


def leaders(kafka_cluster, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the node id of its leader, from the brokers' own metadata."""
    from gateway.protocol.apis import METADATA

    with direct_wire(kafka_cluster) as wire:
        metadata = wire.request(METADATA, 12, {"topics": [{"name": t} for t in topics],
                                               "allow_auto_topic_creation": False})
    found = {(t["name"], p["partition_index"]): p["leader_id"] for t in metadata["topics"] for p in t["partitions"]}
    assert all(leader >= 0 for leader in found.values()), found
    return found


def fetch_body(topic: str, partitions: Sequence[int], *, isolation_level: int = 0, max_bytes: int = 16 << 20) -> dict:
    """A session-less Fetch v12 from offset 0 of these partitions."""
    return {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": max_bytes,
            "isolation_level": isolation_level, "session_id": 0, "session_epoch": -1,
            "topics": [{"topic": topic, "partitions": [
                {"partition": p, "current_leader_epoch": -1, "fetch_offset": 0, "last_fetched_epoch": -1,
                 "log_start_offset": -1, "partition_max_bytes": max_bytes} for p in partitions]}],
            "forgotten_topics_data": [], "rack_id": ""}


def read_ahead_counters(gateway) -> tuple[int, int]:
    """(answered, dropped): the gateway's read-ahead counters summed over its workers, once published."""
    time.sleep(1.5)  # workers publish their counters about once a second
    text = gateway.metrics()
    return tuple(sum(int(n) for n in re.findall(rf"^streamward_read_ahead_{kind}_total{{[^}}]*}} (\d+)$", text, re.M))
                 for kind in ("answered", "dropped"))


def admin_client_config(kafka_cluster, **extra) -> dict:
    """confluent-kafka settings to reach the brokers directly as the cluster's admin (a super user)."""
    return {"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
            "sasl.password": kafka_cluster.passwords["admin"], **extra}


def from_the_beginning(kafka_cluster, group: str) -> None:
    """Share groups start at the latest offset: this one starts at the earliest (as the admin, on the broker)."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    client = AdminClient(admin_client_config(kafka_cluster))
    resource = ConfigResource(ConfigResource.Type.GROUP, group, incremental_configs=[
        ConfigEntry("share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

# --- what a client received ----------------------------------------------------------------------------------------

@dataclass
class Got:
    topic: str | None  # None when the client does not say (Kafka's console consumer)
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass
class Received:
    records: list[Got] = field(default_factory=list)
    blob: bytearray = field(default_factory=bytearray)  # every byte the client handed over, for leak scans

    def add(self, got: Got) -> None:
        self.records.append(got)
        self.blob += (got.key or b"") + (got.value or b"") + b"".join(v or b"" for _, v in got.headers)


def consume_confluent(settings: dict, partitions: Sequence[tuple[str, int]], timeout: float = 60) -> Received:
    """Every record of these partitions from the start to their end (the LSO under read_committed), with
    confluent-kafka (librdkafka) assigned to them directly: no group to join."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({"enable.partition.eof": True, "enable.auto.commit": False, "check.crcs": True, **settings})
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in partitions])
    received, at_end = Received(), set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"only {sorted(at_end)} reached their end"
            for message in consumer.consume(1000, timeout=0.5):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    at_end.add((message.topic(), message.partition()))
                    continue
                assert error is None, error
                received.add(Got(message.topic(), message.partition(), message.offset(), message.key(),
                                 message.value(), list(message.headers() or [])))
    finally:
        consumer.close()
    return received


def produce_samples(kafka_cluster, codec: str, samples: Sequence[Sample]) -> None:
    """Straight to the brokers as the admin, with this codec, phase after phase: plain records with one producer,
    committed and aborted transactions with another."""
    import itertools
    from operator import attrgetter

    from confluent_kafka import Producer

    settings = admin_client_config(kafka_cluster, **{"compression.type": codec, "linger.ms": 20,
                                                     "batch.num.messages": 40})
    plain = Producer(settings)
    transactional = Producer({**settings, "transactional.id": f"{samples[0].topic}-tx"})
    transactional.init_transactions(60)
    errors: list = []

    def report(err, _message) -> None:
        # Exceptions raised inside librdkafka callbacks are mangled: collect, assert after flush.
        if err is not None:
            errors.append(err)

    for outcome, group in itertools.groupby(samples, key=attrgetter("outcome")):
        producer = plain if outcome == PLAIN else transactional
        if outcome != PLAIN:
            producer.begin_transaction()
        for sample in group:
            producer.produce(sample.topic, key=sample.key, value=sample.value, headers=sample.headers,
                             partition=sample.partition, on_delivery=report)
        # Flushed before an abort too: librdkafka would otherwise purge what it has not sent yet, and the
        # aborted records must be in the log for read_uncommitted readers.
        assert producer.flush(60) == 0
        if outcome == COMMITTED:
            producer.commit_transaction(60)
        elif outcome == ABORTED:
            producer.abort_transaction(60)
    assert not errors, errors[:3]


def sample_batch(samples: Sequence[Sample], base_offset: int = 0) -> bytes:
    """The samples as one uncompressed v2 batch."""
    payload = b"".join(record(s.key, s.value, [(name.encode(), v) for name, v in s.headers], offset_delta=k)
                       for k, s in enumerate(samples))
    return batch(payload, len(samples), base_offset=base_offset)


def _compress(codec: str, data: bytes) -> bytes:
    import cramjam

    return bytes({"gzip": cramjam.gzip.compress, "zstd": cramjam.zstd.compress, "lz4": cramjam.lz4.compress}[codec](
        data))


def zeros_bomb(codec: str, inflated: int = 200 << 20) -> bytes:
    """At least `inflated` bytes of zeros, compressed cheaply: one compressed 16 MiB chunk repeated (a stream may
    hold several gzip members, zstd frames or lz4 frames one after the other)."""
    chunk = 16 << 20
    return _compress(codec, bytes(chunk)) * -(-inflated // chunk)


def bomb_batch(codec: str, value_size: int, base_offset: int = 0) -> bytes:
    """A valid batch a broker accepts: one record whose value is value_size zero bytes, compressed in one piece."""
    # attributes, timestamp delta, offset delta, null key; then the value's length, the value and no headers
    head = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(value_size)
    prefix = varint(len(head) + value_size + 1) + head
    return batch(_compress(codec, prefix + bytes(value_size) + varint(0)), 1, codec=CODECS[codec],
                 base_offset=base_offset)
