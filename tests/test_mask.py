"""The masking kernel on single fields: every detector with positives and near misses, every strategy,
JSON paths, the orjson route, schema-registry framing, keys and headers, counts.

Expected outputs are written out by hand (or computed with hmac/base64 for tokens), never by a second
implementation of the kernel.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import zlib

import orjson
import pytest

from _fastpath.mask import Masker, UnmaskableField, _card_run_for_tests, _detector_matches, _wide_layouts_for_tests

KEY = b"k" * 32


def rule(name="r", target="value", **fields) -> dict:
    spec = {"name": name, "target": target, "strategy": "redact"}
    spec.update(fields)
    return spec


def detector(kind: str, **fields) -> dict:
    return rule(name=kind, kind="detector", detector=kind, **fields)


def path(p: str, **fields) -> dict:
    return rule(name=p, kind="json_path", path=p, **fields)


def masked(rules: list[dict], data: bytes, **where) -> bytes:
    return Masker(rules, KEY).apply(data, **where)[0]


def token(data: bytes, key: bytes = KEY) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, data, hashlib.sha256).digest()[:16]).rstrip(b"=").decode()


# --- detectors -----------------------------------------------------------------------------------------------

POSITIVES = {
    "card": [
        "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005", "3782 822463 10005",
        "6011000990139424", "5555555555554444", "4222222222222", "6011 0009 9013 9420 007",
    ],
    "email": ["alice@example.com", "a.b+tag@mail.example.co.uk", "x_y-z%1@sub-domain.example.org"],
    "iban": ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82WEST12345698765432", "NO9386011117947",
             "fr1420041010050500013m02606"],
    "ssn": ["123-45-6789", "078-05-1120", "899-99-9999"],
    "phone": ["+14155550199", "+1 (415) 555-0199", "+44 20 7946 0958", "+49-151-1234-5678", "415-555-0199",
              "415.555.0199", "(415) 555-0199", "(415)555-0199", "1-800-555-0199"],
}

NEAR_MISSES = {
    "card": [
        "4111111111111112",         # an order number: Luhn fails
        "1732849200000",            # a millisecond timestamp: no card starts with 1
        "0.4111111111111111",       # the fraction of a decimal number
        "4111111111111111.25",      # the integer part of one
        "41111111111111111113",     # 20 digits
        "ID4111111111111111",       # glued to a word
        "4111  1111 1111 1111",     # two separators in a row
        "41 11 11 11 11 11 11 11",  # groups of 2
        "123 4567",
    ],
    "email": ["alice@localhost", "user@host.c", "@example.com", "alice@", "not an email", "a@b@c"],
    "iban": [
        "DE88 3704 0044 0532 0130 00",  # check digits wrong
        "DE89 3704 0044 0532 0130 01",  # a digit changed
        "DE89370400440532013",          # too short for DE
        "DE8937040044053201300012",     # too long for DE
        "ZZ89370400440532013000",       # no such country
        "XDE89370400440532013000",      # glued to a word
    ],
    "ssn": ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "123456789", "1-123-45-6789",
            "123-45-6789-0", "2024-11-29"],
    "phone": ["+1234567", "+0123456789", "123-456-7890", "415-055-0199", "2024-11-29", "192.168.100.1", "v1.2.3",
              "4155550199", "3+12345678", "+1234567890123456", "415-555-0199-22"],
}


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, ts in POSITIVES.items() for t in ts])
def test_detector_finds_it_alone_and_in_text(kind, text):
    m = Masker([detector(kind)], KEY)
    assert m.apply(text.encode()) == (b"****", {kind: 1})
    sentence = f"note: {text}, thanks".encode()
    assert m.apply(sentence) == (b"note: ****, thanks", {kind: 1})


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, ts in NEAR_MISSES.items() for t in ts])
def test_detector_leaves_near_misses_alone(kind, text):
    data = f"ref {text} end".encode()
    result, counts = Masker([detector(kind)], KEY).apply(data)
    assert result is data
    assert counts == {}


def test_detectors_find_every_occurrence_and_count_them():
    data = b"a@example.com, b@example.org; c@example.net"
    assert Masker([detector("email")], KEY).apply(data) == (b"****, ****; ****", {"email": 3})


def test_overlapping_card_candidates_are_masked_as_one():
    # "555 4111 1111 1111" could be a card too; whatever the split, no digit of the real card may survive.
    result = masked([detector("card")], b"call 555 4111 1111 1111 1111")
    assert b"4111" not in result and b"1111" not in result


# --- strategies ----------------------------------------------------------------------------------------------

def test_redact_uses_the_placeholder():
    assert masked([detector("email", placeholder="[email]")], b"to bob@example.com") == b"to [email]"


@pytest.mark.parametrize("placeholder", ['"', "a\\b", "tab\t"])
def test_placeholder_that_would_break_json_is_refused(placeholder):
    with pytest.raises(ValueError, match="placeholder"):
        Masker([detector("email", placeholder=placeholder)], KEY)


def test_partial_keeps_the_last_characters():
    m = [detector("card", strategy="partial", keep_last=4)]
    assert masked(m, b"5555555555554444") == b"************4444"
    assert masked(m, b"card 4111-1111-1111-1111.") == b"card ***************1111."


def test_partial_counts_characters_not_bytes_and_masks_short_values_whole():
    m = [rule(kind="json_path", path="name", strategy="partial", keep_last=2)]
    assert orjson.loads(masked(m, '{"name": "Zoë Åström"}'.encode())) == {"name": "********öm"}
    assert orjson.loads(masked(m, b'{"name": "Al"}')) == {"name": "**"}


def test_hash_is_deterministic_keyed_and_base64url():
    m = [detector("email", strategy="hash")]
    first = masked(m, b"from alice@example.com")
    assert first == b"from " + token(b"alice@example.com").encode()
    assert masked(m, b"alice@example.com") == token(b"alice@example.com").encode()
    other = Masker(m, b"o" * 32).apply(b"alice@example.com")[0]
    assert other == token(b"alice@example.com", b"o" * 32).encode() != first[5:]
    assert len(first) - 5 == 22


@pytest.mark.parametrize("size", [32, 63, 64, 65, 200])
def test_hash_is_hmac_sha256_for_keys_of_every_length(size):
    """Keys longer than SHA-256's 64-byte block are hashed first (RFC 2104); shorter ones padded."""
    key = bytes(range(256))[:size] if size <= 256 else b"k" * size
    got = Masker([detector("email", strategy="hash")], key).apply(b"alice@example.com")[0]
    assert got == token(b"alice@example.com", key).encode()


@pytest.mark.parametrize("size", [16, 64, 65, 200])
def test_hash_is_hmac_sha256_for_values_of_every_length(size):
    """Tokens come from the kernel's own SHA-256 (_fastpath/sha256.h): values on either side of every padding
    and block edge (55/56 bytes in the last block, whole blocks) and values of kilobytes, each hashed whole by a
    regex rule, give Python's HMAC, and so does a JSON string value."""
    rng = random.Random(size)
    key = bytes(rng.randrange(256) for _ in range(size))
    m = Masker([rule(kind="regex", pattern="(?s).+", strategy="hash")], key)
    for n in [*range(1, 200), 247, 248, 255, 256, 1000, 1024, 4097, 70_000]:
        value = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 .-") for _ in range(n))
        assert m.apply(b"x" + value) == (token(b"x" + value, key).encode(), {"r": 1}), n
    value = "".join(rng.choice("abcdefghij") for _ in range(3000))
    doc = Masker([path("v", strategy="hash")], key).apply(orjson.dumps({"v": value}))[0]
    assert orjson.loads(doc) == {"v": token(value.encode(), key)}


def test_hash_needs_a_real_key():
    with pytest.raises(ValueError, match="hmac_key"):
        Masker([detector("email", strategy="hash")], b"short")


def test_null_in_json_text_and_whole_values():
    m = [detector("email", strategy="null")]
    assert orjson.loads(masked(m, b'{"e": "a@example.com", "f": "to a@example.com"}')) == {"e": None, "f": "to "}
    assert masked(m, b"mail a@example.com now") == b"mail  now"
    assert masked([path("a", strategy="null")], b"not json") == b""


# --- JSON paths ----------------------------------------------------------------------------------------------

DOC = {
    "card": {"number": "4111111111111111", "cvv": 123},
    "customer": {"home": {"email": "h@example.com", "tel": 1}, "work": {"email": "w@example.com"}, "x": 5},
    "items": [{"iban": "DE89370400440532013000", "n": 1}, {"iban": None}, {"n": 2}, 7],
    "note": "plain",
}


@pytest.mark.parametrize(("p", "expected_changes"), [
    ("card.number", {("card", "number"): "****"}),
    ("card.cvv", {("card", "cvv"): "****"}),
    ("customer.*.email", {("customer", "home", "email"): "****", ("customer", "work", "email"): "****"}),
    ("items[*].iban", {("items", 0, "iban"): "****"}),      # a null stays null, missing stays missing
    ("card", {("card",): "****"}),                           # an object target is replaced whole
    ("missing.path", {}),
    ("note.deeper", {}),
])
def test_json_paths(p, expected_changes):
    data = orjson.dumps(DOC, option=orjson.OPT_INDENT_2)
    result, counts = Masker([path(p)], KEY).apply(data)
    expected = orjson.loads(data)
    for where, value in expected_changes.items():
        node = expected
        for step in where[:-1]:
            node = node[step]
        node[where[-1]] = value
    assert orjson.loads(result) == expected
    assert counts == ({p: len(expected_changes)} if expected_changes else {})
    if not expected_changes:
        assert result is data


def test_top_level_and_nested_arrays():
    data = b'[{"x": [[1, "a"], ["b"]]}, {"x": []}]'
    assert orjson.loads(masked([path("[*].x[*][*]")], data)) == [{"x": [["****", "****"], ["****"]]}, {"x": []}]


def test_numbers_become_strings_and_json_stays_valid():
    data = b'{"n": 4111111111111111, "m": -12.5e3, "b": true, "z": null}'
    out = masked([path("n", strategy="partial", keep_last=4), path("m", strategy="hash"), path("b"), path("z")], data)
    assert orjson.loads(out) == {"n": "************1111", "m": token(b"-12.5e3"), "b": "****", "z": None}


def test_duplicate_keys_are_all_masked():
    data = b'{"a": {"b": "one"}, "a": {"b": "two"}}'
    out = masked([path("a.b")], data)
    assert out == b'{"a": {"b": "****"}, "a": {"b": "****"}}'


def test_escaped_key_goes_through_orjson():
    data = b'{"card": {"numb\\u0065r": "4111111111111111"}, "other": "x\\ny"}'
    assert orjson.loads(masked([path("card.number")], data)) == {"card": {"number": "****"}, "other": "x\ny"}


def test_escaped_target_string_is_hashed_by_its_decoded_value():
    out = masked([path("e", strategy="hash")], b'{"e": "a\\u0040example.com"}')
    assert orjson.loads(out) == {"e": token(b"a@example.com")}


def test_deep_nesting_is_followed_and_deeper_still_fails_closed():
    def doc(depth: int) -> bytes:
        return b'{"skip": ' + b"[" * depth + b"1" + b"]" * depth + b', "card": {"number": "4111111111111111"}}'
    assert orjson.loads(masked([path("card.number")], doc(300)))["card"] == {"number": "****"}
    assert masked([path("card.number")], doc(600)) == b"****"


@pytest.mark.parametrize("data", [b"plain text with no json", b"4111111111111111", b'{"card": ', b"{not json}",
                                  b'{"a": 1} trailing'])
def test_path_rule_on_non_json_masks_the_whole_value(data):
    assert Masker([path("card.number")], KEY).apply(data) == (b"****", {"card.number": 1})


def test_path_rule_on_empty_value_changes_nothing():
    assert masked([path("a")], b"") == b""


def test_detector_in_json_keeps_it_json():
    data = b'{"n": 4111111111111111, "s": "card 4111 1111 1111 1111 ok", "k": {"a@example.com": 1}}'
    out = masked([detector("card", strategy="partial", keep_last=4), detector("email")], data)
    assert orjson.loads(out) == {"n": "************1111", "s": "card ***************1111 ok", "k": {"****": 1}}


def test_unicode_escape_cannot_hide_a_card_from_a_detector():
    data = b'{"s": "\\u0034111111111111111", "t": "ok"}'
    out = masked([detector("card")], data)
    assert orjson.loads(out) == {"s": "****", "t": "ok"}


def test_regex_rule_inside_json_and_text():
    m = [rule(kind="regex", pattern=r"ORD-\d{4}")]
    assert masked(m, b"ref ORD-1234 and ORD-5678") == b"ref **** and ****"
    assert orjson.loads(masked(m, b'{"o": "ORD-1234", "p": ["x ORD-9999"]}')) == {"o": "****", "p": ["x ****"]}
    assert masked([rule(kind="regex", pattern="x*")], b"abc") == b"abc"     # empty matches are ignored


def test_regex_crossing_json_structure_is_applied_per_string():
    out = masked([rule(kind="regex", pattern=r'secret", "b')], b'{"a": "secret", "b": "secret"}')
    assert orjson.loads(out) == {"a": "secret", "b": "secret"}


# --- framing, keys, headers, order, counts -------------------------------------------------------------------

FRAME = b"\x00\x00\x00\x01\x2c"


def test_framed_binary_payload_keeps_header_and_lengths():
    payload = b"\x02\x20" + b"4111111111111111" + b"\x10bob@example.com"
    data = FRAME + payload
    out = masked([detector("card"), detector("email", strategy="hash")], data)
    assert out[:5] == FRAME
    assert len(out) == len(data)
    assert b"4111111111111111" not in out and b"bob@example.com" not in out
    assert out[5:7] == b"\x02\x20"


def test_framed_payload_under_a_path_rule_is_masked_whole():
    data = FRAME + b'\x00{"card": {"number": "4111111111111111"}}'
    assert Masker([path("card.number")], KEY).apply(data) == (FRAME + b"****", {"card.number": 1})


def test_framed_json_schema_payload_is_scanned_as_json():
    data = FRAME + b'{"n": 4111111111111111}'
    assert masked([detector("card")], data) == FRAME + b'{"n": "****"}'


GLUE_ID = bytes(range(0x41, 0x51))  # the 16-byte schema version id (letters: nothing a detector takes)
GLUE = b"\x03\x00" + GLUE_ID
GLUE_ZLIB = b"\x03\x05" + GLUE_ID
GLUE_JSON = b'{"card": {"number": "4111 1111 1111 1111"}, "email": "bob@example.com", "note": "plain"}'


BOM = b"\xef\xbb\xbf"   # a UTF-8 byte order mark


def test_a_byte_order_mark_is_kept_and_what_follows_read_as_it_is():
    """Jackson and Python's json read JSON after a UTF-8 byte order mark, escapes decoded: an email spelled with
    one is masked, a path is followed (only its target masked), and text after a mark is masked as text. The
    mark stays."""
    out, counts = Masker([detector("email")], KEY).apply(BOM + b'{"email": "bob\\u0040example.com", "n": 1}')
    assert out[:3] == BOM and orjson.loads(out[3:]) == {"email": "****", "n": 1} and counts == {"email": 1}
    assert masked([path("card.number")], BOM + b'{"card": {"number": "4111"}, "x": 2}') == \
        BOM + b'{"card": {"number": "****"}, "x": 2}'
    assert masked([path("card.number")], BOM + b"not json") == BOM + b"****"
    assert masked([detector("card")], BOM + b"pay 4111 1111 1111 1111 now") == BOM + b"pay **** now"


def test_utf16_text_is_read_decoded_and_goes_out_as_utf16():
    """Kafka's StringSerializer with the encoding UTF-16 writes a big-endian byte order mark, then two bytes a
    character: no detector sees a card or an email in those bytes as they are, and Jackson reads such JSON too.
    The field is decoded, masked as UTF-8 text (JSON here), and encoded again in the byte order it came in."""
    document = {"card": "4111 1111 1111 1111", "mail": "bob@example.com", "customer": {"name": "Zoë", "id": 7}}
    value = "\ufeff".encode("utf-16-be") + orjson.dumps(document).decode().encode("utf-16-be")
    assert value[:2] == b"\xfe\xff" and b"4111" not in value
    masker = Masker([detector("card", strategy="partial", keep_last=4), detector("email"), path("customer.name")], KEY)
    out, counts = masker.apply(value)
    assert out[:2] == b"\xfe\xff" and orjson.loads(out[2:].decode("utf-16-be")) == {
        "card": "***************1111", "mail": "****", "customer": {"name": "****", "id": 7}}
    assert counts == {"card": 1, "email": 1, "customer.name": 1}
    # Little-endian text (its mark FF FE) goes out little-endian.
    text = b"\xff\xfe" + "pay 4111 1111 1111 1111 now".encode("utf-16-le")
    out = masked([detector("card")], text)
    assert out == b"\xff\xfe" + "pay **** now".encode("utf-16-le")
    # Nothing to mask: the field as it came.
    plain = b"\xfe\xff" + "nothing here".encode("utf-16-be")
    assert Masker([detector("card")], KEY).apply(plain) == (plain, {})


def test_a_field_that_only_starts_like_utf16_is_read_as_bytes():
    """After a UTF-16 byte order mark, an odd number of bytes (or a lone surrogate) is not UTF-16: the field is
    read as the bytes it is, so a card in them is still found."""
    for data in (b"\xfe\xff pay 4111 1111 1111 1111", b"\xff\xfe" + b"\x00\xd8" + b" 4111 1111 1111 1111 "):
        out = masked([detector("card")], data)
        assert b"4111" not in out and out.startswith(data[:2]), out


WIDE_ENCODINGS = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")


@pytest.mark.parametrize("encoding", WIDE_ENCODINGS)
def test_utf16_and_utf32_text_without_a_byte_order_mark_is_read_too(encoding):
    """.NET's Encoding.Unicode and Java's UTF_16LE write no byte order mark: as bytes, a card or an email there
    has a zero byte after (or before) every character, which no detector takes. The detectors read each run of
    ASCII characters in that encoding; matches are replaced in place, fitted to their length, in the same
    encoding, once each (counted once, whichever byte orders the bytes also read as). The field keeps its length,
    and everything else its bytes, the non-ASCII character that ends a run included."""
    text = "Zoë pays 4111 1111 1111 1111 from DE89 3704 0044 0532 0130 00, mail bob@example.com."
    masker = Masker([detector("card", strategy="partial", keep_last=4), detector("email"), detector("iban")], KEY)
    out, counts = masker.apply(text.encode(encoding))
    assert out.decode(encoding) == ("Zoë pays ***************1111 from " + "*" * len("DE89 3704 0044 0532 0130 00")
                                    + ", mail " + "*" * len("bob@example.com") + ".")
    assert counts == {"card": 1, "email": 1, "iban": 1}


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
@pytest.mark.parametrize("encoding", WIDE_ENCODINGS)
def test_wide_text_inside_a_binary_payload_is_found_at_any_alignment(encoding, offset):
    """A wide string inside a framed binary payload (a Protobuf field, say) starts wherever its prefix ends, with
    bytes that are not text right before and after it: a card that is the whole string is found at every
    alignment, in each encoding and byte order (its first and last characters included); only its characters
    change, in a copy."""
    before, after = FRAME + b"\x0a" + b"\x01" * offset + b"\x12\x34", b"\xff\x07"
    data = before + "4111111111111111".encode(encoding) + after
    out, counts = Masker([detector("card")], KEY).apply(data)
    assert out == before + ("*" * 16).encode(encoding) + after
    assert counts == {"card": 1}
    assert data == before + "4111111111111111".encode(encoding) + after


WIDE16 = re.compile(rb"(?:[\x20-\x7e]\x00){4}|(?:\x00[\x20-\x7e]){4}")
WIDE32 = re.compile(rb"(?:[\x20-\x7e]\x00\x00\x00){4}|(?:\x00\x00\x00[\x20-\x7e]){4}")


def test_the_wide_text_search_finds_four_printable_characters_anywhere():
    """The search that decides whether a field is read for wide text (AVX-512 where the CPU has it, else SSE2)
    says what a regex says: four printable ASCII characters in a row, UTF-16 or UTF-32, either byte order, at
    every position of fields of every length around its 64-byte windows (48 apart)."""
    rng = random.Random(11)
    pieces = [b"\x00", b"\x00\x00\x00", b"\x01", b"A", b"7", b"\xff", b" "]
    for trial in range(3000):
        data = bytearray(b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60))))
        if trial % 3 == 0:  # a planted run of exactly four, anywhere
            encoding = rng.choice(WIDE_ENCODINGS)
            at = rng.randrange(0, len(data) + 1)
            data[at:at] = "a1 Z".encode(encoding)
        data = bytes(data)
        expected = (1 if WIDE16.search(data) else 0) | (2 if WIDE32.search(data) else 0)
        assert _wide_layouts_for_tests(data) == _wide_layouts_for_tests(data, portable=True) == expected, data


def test_a_regex_reads_wide_text_and_a_header_rule_only_its_header():
    m = Masker([rule(name="token", target="header", header="auth", kind="regex", pattern=r"tok-[0-9]+")], KEY)
    wide = "Bearer tok-123456 ok".encode("utf-16-be")
    assert m.apply(wide, target="header", header="auth") == ("Bearer ********** ok".encode("utf-16-be"),
                                                              {"token": 1})
    assert m.apply(wide, target="header", header="other") == (wide, {})


def test_a_placeholder_character_outside_ascii_goes_into_wide_text_as_a_star():
    """A replacement is written back one character per character it replaces; a placeholder's non-ASCII
    characters (a byte each of their UTF-8, once narrowed) go out as '*', never as stray bytes."""
    out, _ = Masker([detector("email", placeholder="✉")], KEY).apply("to bob@example.com".encode("utf-16-le"))
    assert out.decode("utf-16-le") == "to " + "*" * len("bob@example.com")


def test_binary_without_wide_text_comes_back_as_it_came():
    """Zero bytes alone (integers, padding) are not text: a payload without a run of wide ASCII characters is
    left alone, and one whose wide run holds no match too."""
    masker = Masker([detector("card"), detector("email")], KEY)
    rng = random.Random(3)
    for _ in range(200):
        data = bytes(rng.choice((0, 0, 0, 1, 0x34, 0x7F, 0x80, 0xFF, rng.randrange(256))) for _ in range(300))
        assert masker.apply(data) == (data, {})
    wide = FRAME + "no secret in here".encode("utf-16-le")
    assert masker.apply(wide) == (wide, {})


def test_glue_framed_binary_payload_keeps_header_and_lengths():
    """AWS Glue framing (version 3, compression 0, schema version id): kept, and the payload masked like a
    Confluent-framed one, each replacement fitted to the matched length."""
    data = GLUE + b"\x02\x20" + b"4111111111111111" + b"\x10bob@example.com"
    out = masked([detector("card"), detector("email", strategy="hash")], data)
    assert out[:18] == GLUE and out[18:20] == b"\x02\x20" and len(out) == len(data)
    assert b"4111111111111111" not in out and b"bob@example.com" not in out


def test_glue_framed_payload_under_a_path_rule_is_masked_whole():
    assert Masker([path("card.number")], KEY).apply(GLUE + GLUE_JSON) == (GLUE + b"****", {"card.number": 1})


def test_a_field_that_only_looks_glue_framed_hides_nothing_from_detectors():
    """Detectors scan the 16 bytes where Glue's schema version id would be: a field that starts like Glue
    framing by chance must not carry a card or an email there unmasked."""
    for secret in (b"4111111111111111", b"bob@example.com"):
        data = b"\x03\x00" + secret + b" " * (16 - len(secret)) + b" tail"
        out = masked([detector("card"), detector("email")], data)
        assert secret not in out and out[:2] == b"\x03\x00" and len(out) == len(data), out


def test_glue_json_payload_is_read_as_json_and_its_id_as_binary():
    """Glue's JSON data format: a JSON reader decodes \\u escapes, so an email spelled with one must be found
    (the payload's strings are read decoded, as in a Confluent-framed JSON payload), and each match is replaced
    inside its string. The schema version id is still scanned as binary, replacements fitted to its 16 bytes."""
    escaped = b'{"email": "bob\\u0040example.com", "card": "4111 1111 1111 1111", "n": 1}'
    out, counts = Masker([detector("email"), detector("card", strategy="partial", keep_last=4)], KEY).apply(
        GLUE + escaped)
    assert out[:18] == GLUE and orjson.loads(out[18:]) == {"email": "****", "card": "***************1111", "n": 1}
    assert counts == {"email": 1, "card": 1}
    # A card in the id (a field that only looks framed) and one in the payload: both masked, the id in place.
    card_id = b"\x03\x00" + b"4111111111111111" + b'{"c": "4111 1111 1111 1111"}'
    out = masked([detector("card")], card_id)
    assert out == b"\x03\x00" + b"*" * 16 + b'{"c": "****"}'
    # The same with an escape in the payload (its strings read through orjson): both counted.
    out, counts = Masker([detector("card")], KEY).apply(card_id[:-1] + b', "e": "\\u0041"}')
    assert out[:18] == b"\x03\x00" + b"*" * 16 and orjson.loads(out[18:]) == {"c": "****", "e": "A"}
    assert counts == {"card": 2}
    # A regex rule reads the decoded strings too.
    out = masked([rule(name="bob", kind="regex", pattern=r"bob@\w+")], GLUE + escaped)
    assert out[:18] == GLUE and orjson.loads(out[18:])["email"] == "****.com"


def test_glue_payload_that_only_starts_like_json_is_read_as_binary():
    """A Glue payload starting with a bracket that does not parse as JSON (a binary format, or a broken document)
    is masked as binary: each replacement fitted to the matched length."""
    data = GLUE + b"{\x02\x00 bob@example.com \x13 4111 1111 1111 1111"
    out, counts = Masker([detector("card"), detector("email")], KEY).apply(data)
    assert out == GLUE + b"{\x02\x00 " + b"****" + b"*" * 11 + b" \x13 " + b"****" + b"*" * 15
    assert counts == {"card": 1, "email": 1}


def test_glue_zlib_payload_is_inflated_masked_and_sent_uncompressed():
    """A zlib-compressed Glue payload hides its secrets from any scan of the bytes as they are: it is inflated,
    masked, and sent with compression byte 0 (Glue's deserializers read the byte per record)."""
    data = GLUE_ZLIB + zlib.compress(GLUE_JSON)
    assert b"4111" not in data and b"bob@" not in data     # invisible as it comes
    out, counts = Masker([detector("card", strategy="partial", keep_last=4), detector("email")], KEY).apply(data)
    # The payload is JSON, so it is masked as JSON (each match replaced inside its string).
    assert out == GLUE + GLUE_JSON.replace(b"4111 1111 1111 1111", b"***************1111").replace(
        b"bob@example.com", b"****")
    assert counts == {"card": 1, "email": 1}
    # A path rule masks the inflated payload whole, as for any framed payload.
    assert Masker([path("card.number")], KEY).apply(data) == (GLUE + b"****", {"card.number": 1})


def test_glue_zlib_payload_without_secrets_stays_as_it_came():
    data = GLUE_ZLIB + zlib.compress(b'{"note": "nothing to mask here"}')
    assert Masker([detector("card"), detector("email")], KEY).apply(data) == (data, {})


@pytest.mark.parametrize("case", ["corrupt", "truncated", "bomb"])
def test_glue_zlib_payload_that_does_not_inflate_is_refused(case):
    """Masking cannot see into a zlib payload it cannot inflate (or only past the cap): refused, never passed."""
    stream = zlib.compress(b"0" * (1 << 20) if case == "bomb" else GLUE_JSON)
    payload = {"corrupt": stream[:2] + bytes(b ^ 0x5A for b in stream[2:]), "truncated": stream[:-6],
               "bomb": stream}[case]
    with pytest.raises(UnmaskableField, match="Glue-framed zlib payload"):
        Masker([detector("card")], KEY).apply(GLUE_ZLIB + payload, max_inflated=1 << 16)


def test_a_field_that_starts_like_glue_zlib_without_a_zlib_stream_is_scanned_as_it_is():
    data = b"\x03\x05" + b"not zlib, card 4111 1111 1111 1111"
    out = masked([detector("card")], data)
    assert out == b"\x03\x05" + b"not zlib, card ****"


def test_keys_and_headers():
    m = Masker([
        detector("email", target="key"),
        rule(name="auth", target="header", header="authorization", kind="regex", pattern=".+"),
        rule(name="any-header", target="header", kind="detector", detector="ssn"),
    ], KEY)
    assert m.apply(b"user a@example.com", target="key") == (b"user ****", {"email": 1})
    assert m.apply(b"a@example.com") == (b"a@example.com", {})
    assert m.apply(b"Bearer abc", target="header", header="authorization") == (b"****", {"auth": 1})
    assert m.apply(b"Bearer abc", target="header", header="other") == (b"Bearer abc", {})
    assert m.apply(b"ssn 123-45-6789", target="header", header="x") == (b"ssn ****", {"any-header": 1})


def test_rules_run_in_order_on_each_others_output_and_count_by_name():
    rules = [detector("card", strategy="partial", keep_last=4), path("customer.email"),
             rule(name="card", kind="detector", detector="email")]
    data = b'{"customer": {"email": "c@example.com"}, "cards": ["4111111111111111", "5555555555554444"]}'
    result, counts = Masker(rules, KEY).apply(data)
    assert orjson.loads(result) == {"customer": {"email": "****"},
                                   "cards": ["************1111", "************4444"]}
    assert counts == {"card": 2, "customer.email": 1}


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "x", "target": "value", "kind": "detector", "detector": "card", "strategy": "redact", "extra": 1},
     "unknown keys"),
    (rule(kind="detector", detector="dna"), "detector"),
    (rule(kind="json_path", path="a..b"), "empty segment"),
    (rule(kind="json_path", path="a[0]"), "only names"),
    (rule(kind="regex", pattern="("), "bad pattern"),
    (rule(target="body", kind="detector", detector="card"), "target"),
    (rule(header="h", kind="detector", detector="card"), "header"),
    (rule(kind="detector", detector="card", path="a"), "does not apply"),
    (rule(kind="detector", detector="card", keep_last=2), "keep_last"),
    (rule(kind="detector", detector="card", strategy="shred"), "strategy"),
])
def test_bad_rules_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        Masker([spec], KEY)


def test_escaped_quotes_before_a_match_do_not_confuse_the_string_state():
    data = b'{"a": "say \\"hi\\" \\\\", "n": 4111111111111111, "s": "x\\"4111111111111111"}'
    out = masked([detector("card")], data)
    assert orjson.loads(out) == {"a": 'say "hi" \\', "n": "****", "s": 'x"****'}


# --- invariants on random documents --------------------------------------------------------------------------

SECRETS = ["4111 1111 1111 1111", "5555555555554444", "bob@example.com", "DE89 3704 0044 0532 0130 00",
           "123-45-6789", "+44 20 7946 0958"]
EVERY_DETECTOR = [detector(kind, strategy=strategy) for kind, strategy in
                  zip(POSITIVES, ["redact", "partial", "hash", "null", "redact"], strict=True)]


def random_document(rng, depth: int = 0):
    roll = rng.random()
    if depth < 4 and roll < 0.25:
        return {rng.choice(["a", "card", "b\"q", "é", "customer", rng.choice(SECRETS)]): random_document(rng, depth + 1)
                for _ in range(rng.randint(0, 4))}
    if depth < 4 and roll < 0.4:
        return [random_document(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.7:
        # Detectors do not take a match glued to a word, so secrets get a separator.
        return rng.choice(["", "plain", "tab\there", "quote \" and \\ slash", "ünïcode ✓"]) + \
            rng.choice([" ", ": "]) + rng.choice(SECRETS + [""]) + rng.choice(["", ".", " end"])
    return rng.choice([None, True, False, 0, -12.5, 4111111111111111, 5555555555554444, 1732849200000])


@pytest.mark.parametrize("seed", range(40))
def test_masked_json_stays_json_and_keeps_no_secret(seed):
    rng = random.Random(seed)
    m = Masker(EVERY_DETECTOR + [path("customer.*.card", strategy="hash"), path("[*].a", strategy="null")], KEY)
    for _ in range(25):
        document = [random_document(rng)] if rng.random() < 0.5 else {"customer": random_document(rng)}
        option = rng.choice([0, orjson.OPT_INDENT_2])
        data = orjson.dumps(document, option=option)
        if rng.random() < 0.3:
            data = json.dumps(document, ensure_ascii=True).encode()    # \u escapes everywhere
        out, _ = m.apply(data)
        decoded = orjson.loads(out)
        flat = orjson.dumps(decoded).decode()
        for secret in SECRETS:
            assert secret not in flat, (data, out)
        assert str(4111111111111111) not in flat and str(5555555555554444) not in flat


# --- path rules walked together ------------------------------------------------------------------------------

WALK_KEYS = ["a", "b", "c", "a\\u0062", "\\u0061"]     # the last two spell "ab" and "a" with escapes
WALK_PATHS = ["a", "b", "a.b", "a.*", "*.b", "a[*]", "a[*].b", "[*].a", "*", "b.c.a", "c[*][*]", "*.*.c"]


def walk_value(rng, depth: int) -> str:
    """JSON text of a random value whose members are named from WALK_KEYS (so that paths meet and nest)."""
    roll = rng.random()
    if depth < 4 and roll < 0.35:
        members = [f'"{rng.choice(WALK_KEYS)}": {walk_value(rng, depth + 1)}' for _ in range(rng.randint(0, 4))]
        return "{" + rng.choice([",", ", ", ",\n  "]).join(members) + "}"
    if depth < 4 and roll < 0.55:
        return "[" + ", ".join(walk_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    return rng.choice(['"x"', '"4111 1111 1111 1111"', '"esc\\"aped\\u0041"', "12", "-1.5e3", "null", "true",
                       '""', "[]", "{}"])


def walk_field(rng) -> bytes:
    data = walk_value(rng, 0).encode()
    roll = rng.random()
    if roll < 0.05:
        return data[:rng.randint(0, len(data))]                     # cut short: not JSON
    if roll < 0.10:
        return data + b" }"                                         # trailing bytes: not JSON
    if roll < 0.15:
        return b"\x00\x00\x00\x00\x07" + data                        # schema-registry framed
    if roll < 0.20:
        return b"\xef\xbb\xbf" + data                                # a byte order mark
    return data


def one_after_another(rules: list[dict], data: bytes, **where) -> tuple[bytes, dict]:
    """The rules applied each alone, in order, each on the previous one's result: what walking them together must
    give."""
    counts: dict[str, int] = {}
    for spec in rules:
        data, found = Masker([spec], KEY).apply(data, **where)
        for name, count in found.items():
            counts[name] = counts.get(name, 0) + count
    return data, counts


@pytest.mark.parametrize("seed", range(30))
def test_path_rules_walked_together_give_what_they_give_one_after_another(seed):
    """A run of path rules is walked once for all (mask.pyx, _apply_paths). On random documents whose names make
    the paths meet, nest and repeat (the same value reached by two rules, a rule ending above or below another,
    wildcards, arrays, escaped keys and targets, null targets), with every strategy, and on fields that are not
    plain JSON: the result and the counts are those of the rules applied one after another."""
    rng = random.Random(seed)
    changed = 0
    for _ in range(60):
        rules = [rule(name=f"r{i}", kind="json_path", path=rng.choice(WALK_PATHS), **rng.choice([
            {}, {"strategy": "partial", "keep_last": 2}, {"strategy": "hash"}, {"strategy": "null"}]))
            for i in range(rng.randint(2, 4))]
        data = walk_field(rng)
        together = Masker(rules, KEY).apply(data)
        assert together == one_after_another(rules, data), (rules, data)
        changed += together[0] != data
    assert changed > 10     # most documents had something masked: the comparison is not vacuous


def test_header_path_rules_are_walked_together_only_for_their_header():
    """Header path rules share a walk only with the rules for the same header: on each header, the rules for it
    (and those for every header) apply, one after another, and no other."""
    rules = [rule(name="a", target="header", header="h1", kind="json_path", path="a"),
             rule(name="b", target="header", header="h1", kind="json_path", path="b", strategy="null"),
             rule(name="c", target="header", header="h2", kind="json_path", path="c", strategy="hash"),
             rule(name="d", target="header", kind="json_path", path="d")]
    data = b'{"a": "x", "b": "y", "c": "z", "d": "w"}'
    for header, expected in (("h1", {"a": "****", "b": None, "c": "z", "d": "****"}),
                             ("h2", {"a": "x", "b": "y", "c": token(b"z"), "d": "****"}),
                             ("h3", {"a": "x", "b": "y", "c": "z", "d": "****"})):
        together = Masker(rules, KEY).apply(data, target="header", header=header)
        assert orjson.loads(together[0]) == expected, header
        assert together == one_after_another(rules, data, target="header", header=header), header


# Every kind of rule at once, for fuzzing: each detector, a path and a regex.
EVERY_KIND_OF_RULE = EVERY_DETECTOR + [path("a.b"), rule(name="re", kind="regex", pattern=r"\d{3}")]


def random_field(rng: random.Random, longest: int = 80) -> bytes:
    """Bytes of JSON structure, escapes, digits, signs, letters, a zero and 0xff, in any order."""
    alphabet = b'{}[]":,\\u0123456789 -+.@aeEDZ\x00\xff'
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_never_raise(seed):
    rng = random.Random(seed)
    m = Masker(EVERY_KIND_OF_RULE, KEY)
    for _ in range(200):
        data = random_field(rng)
        for target in ("key", "value"):
            out, counts = m.apply(data, target=target)
            assert isinstance(out, bytes) and isinstance(counts, dict)


# --- the fast paths: the detectors' merged pass and the sixteen-byte scans ------------------------------------

FILLER = b"~"   # in no byte class: not a letter, digit, separator or JSON structure, so it never joins a match
DENSE = b'0123456789 -+().@aAdeEZN"\\:,{}[]~'


def dense_bytes(rng, size: int) -> bytes:
    """Bytes on which every detector keeps waking up (digits, separators, signs, letters, quotes), with
    positives of every kind spliced in at random places, most of them set apart so that they stay matches."""
    out = bytearray(rng.choice(DENSE) for _ in range(size))
    for _ in range(rng.randint(0, 4)):
        at = rng.randint(0, len(out))
        apart = rng.choice([b"", b" "])
        out[at:at] = apart + rng.choice(rng.choice(list(POSITIVES.values()))).encode() + apart
    return bytes(out)


@pytest.mark.parametrize("seed", range(25))
def test_merged_pass_finds_exactly_what_each_detector_finds_alone(seed):
    """The merged pass marks where each detector could anchor a match and the detector looks only there: on
    random bytes dense in what detectors look for (0 to 300 bytes, across the 16-byte blocks and 64-bit words
    of the pass), every detector finds the same matches through the candidates as by its own scan, searching
    from the start and from anywhere; through the pass in use (AVX-512 where the CPU has it, masked loads for
    the last block) and the portable one alike."""
    rng = random.Random(seed)
    found = dict.fromkeys(POSITIVES, 0)
    for _ in range(80):
        data = dense_bytes(rng, rng.randint(0, 300))
        for kind in POSITIVES:
            for start in (0, rng.randint(0, len(data))):
                alone = _detector_matches(kind, data, False, start)
                assert _detector_matches(kind, data, True, start) == alone, (kind, data, start)
                assert _detector_matches(kind, data, True, start, portable=True) == alone, (kind, data, start)
                assert _detector_matches(kind, data, False, start, portable=True) == alone, (kind, data, start)
                found[kind] += len(alone)
    assert all(found.values()), found   # every detector did find something: the comparison is not vacuous


@pytest.mark.parametrize("seed", range(10))
def test_card_run_search_matches_the_portable_probe(seed):
    """The card detector's first step, the search for a run of 13 or more digits, spaces and dashes: the AVX-512
    one (64 bytes a word, runs carried across words) finds the same start as the portable probe from every
    start, on fields of runs from 1 to 200 bytes (shorter than, just at, and across one or more 64-byte words)
    among other bytes. Matches alone cannot show this: the detector re-checks every run it is given."""
    rng = random.Random(seed)
    found = 0
    for _ in range(40):
        parts = []
        while sum(map(len, parts)) < rng.randint(0, 400):
            length = rng.choice([rng.randint(1, 12), 12, 13, 14, rng.randint(13, 200)])
            parts.append("".join(rng.choice("0123456789 -") for _ in range(length)))
            parts.append(rng.choice(["x", '"', "a.b", ",", "\n"]) * rng.randint(1, 3))
        data = "".join(parts).encode()
        for start in sorted({0, len(data), *(rng.randint(0, len(data)) for _ in range(20))}):
            portable = _card_run_for_tests(data, start, portable=True)
            assert _card_run_for_tests(data, start) == portable, (data, start)
            found += portable >= 0
    assert found > 100


def luhn_digits(rng, valid: bool) -> str:
    """16 random digits, first 2-6, whose Luhn check passes or fails as asked."""
    digits = [rng.randint(2, 6)] + [rng.randint(0, 9) for _ in range(14)]
    total = sum(d if i % 2 else (2 * d if d < 5 else 2 * d - 9) for i, d in enumerate(digits))
    check = (10 - total % 10) % 10
    return "".join(map(str, digits + [check if valid else (check + rng.randint(1, 9)) % 10]))


@pytest.mark.parametrize("seed", range(10))
def test_common_card_shape_is_found_as_the_group_walk_finds_it(seed):
    """A run holding just 16 digits, alone or in four groups of four, is checked at once (mask.pyx,
    sw_card_common) instead of being walked group by group. Around such numbers, valid or not, with either
    separator, the bytes that decide (a letter, a decimal point, more digits or groups after spaces or dashes,
    a cut-off end): the same matches as the walk, which the portable search uses."""
    rng = random.Random(seed)
    found = 0
    for _ in range(300):
        number = luhn_digits(rng, rng.random() < 0.7)
        if rng.random() < 0.6:
            # Mostly single separators (the common shape), sometimes doubled or none (the walk decides).
            seps = [rng.choice(" -") for _ in range(3)] if rng.random() < 0.8 else [rng.choice(["  ", ""])] * 3
            number = number[:4] + seps[0] + number[4:8] + seps[1] + number[8:12] + seps[2] + number[12:]
        before = rng.choice(["", " ", "x", "a.", "1.", '"', ": ", "-", "12 "])
        after = rng.choice(["", " ", "x", ".5", ".", '"', " 1", "-1", " - 42", "1", "  x", " 1234", "-"])
        data = (before + number + after).encode()
        if rng.random() < 0.2:
            data = data[:rng.randint(0, len(data))]
        walked = _detector_matches("card", data, False, portable=True)
        assert _detector_matches("card", data, False) == walked, data
        assert _detector_matches("card", data, True) == walked, data
        found += len(walked)
    assert found > 60       # many of them were cards: the comparison is not vacuous


@pytest.mark.parametrize("kind", list(POSITIVES))
def test_every_positive_is_found_at_every_offset(kind):
    """Each positive at every offset of a 150-byte field, so that it starts, ends and straddles the edges of the
    16-byte blocks and 64-bit candidate words: found by the merged pass and alone, and masked by a Masker."""
    masker = Masker([detector(kind)], KEY)
    for text in POSITIVES[kind]:
        for offset in range(0, 150 - len(text)):
            data = FILLER * offset + text.encode() + FILLER * (150 - offset - len(text))
            expected = [(offset, offset + len(text))]
            assert _detector_matches(kind, data, True) == expected == _detector_matches(kind, data, False), offset
            assert _detector_matches(kind, data, True, portable=True) == expected, offset
            assert _detector_matches(kind, data, False, portable=True) == expected, offset
            assert masker.apply(data) == (FILLER * offset + b"****" + FILLER * (150 - offset - len(text)),
                                          {kind: 1})


@pytest.mark.parametrize("kind", ["card", "iban"])
def test_near_misses_stay_near_misses_at_every_offset(kind):
    """A 12-digit run (one short of a card) and an IBAN with a wrong check digit, at every offset across the
    block and word edges: neither the merged pass nor the detector alone takes them."""
    text = {"card": b"4111 1111 111", "iban": b"DE88 3704 0044 0532 0130 00"}[kind]
    for offset in range(0, 150 - len(text)):
        data = FILLER * offset + text + FILLER * (150 - offset - len(text))
        assert _detector_matches(kind, data, True) == [] == _detector_matches(kind, data, False), offset
        assert _detector_matches(kind, data, False, portable=True) == [], offset


@pytest.mark.parametrize("seed", range(20))
def test_rules_in_one_masker_act_as_if_applied_one_after_another(seed):
    """Rules run in order, each on the previous one's output; the detectors of a field share one merged pass,
    which must be dropped as soon as a rule changes the field. A Masker of several rules gives exactly what
    single-rule Maskers give applied in turn, counts included, on JSON and on text."""
    rng = random.Random(seed)
    changed = 0
    for _ in range(30):
        rules = [detector(rng.choice(list(POSITIVES)), strategy=rng.choice(["redact", "partial", "hash", "null"]))
                 for _ in range(rng.randint(2, 6))]
        if rng.random() < 0.3:
            rules.insert(rng.randrange(len(rules)), path(rng.choice(["customer.*.card", "[*].a", "a"])))
        if rng.random() < 0.5:
            data = orjson.dumps([random_document(rng)] if rng.random() < 0.5 else {"customer": random_document(rng)})
        else:
            data = dense_bytes(rng, rng.randint(0, 200))
        combined, counts = Masker(rules, KEY).apply(data)
        one_by_one, total = data, {}
        for spec in rules:
            one_by_one, got = Masker([spec], KEY).apply(one_by_one)
            for name, count in got.items():
                total[name] = total.get(name, 0) + count
        assert (combined, counts) == (one_by_one, total), (rules, data)
        changed += combined != data
    assert changed > 5


def test_a_field_rewritten_to_the_same_size_is_scanned_again():
    """In a framed binary payload every replacement keeps the matched length, so a field rewritten three times
    comes back to the first scratch buffer at the same size. The last rule must not read the candidates of the
    buffer's earlier content: the regex rule (which reads none, so the last pass on record is of that content)
    writes a phone number, its placeholder, that only a fresh pass marks."""
    rules = [detector("card"), detector("phone"),
             rule(name="iban-like", kind="regex", pattern="DE[0-9]{20}", placeholder="+44 20 7946 0958"),
             rule(name="phone-again", kind="detector", detector="phone")]
    data = FRAME + b"\x02 4111111111111111 +1 (415) 555-0199 DE89370400440532013000 \x04"
    combined, counts = Masker(rules, KEY).apply(data)
    one_by_one = data
    for spec in rules:
        one_by_one = Masker([spec], KEY).apply(one_by_one)[0]
    assert combined == one_by_one and len(combined) == len(data)
    assert b"+44" not in combined and counts == {"card": 1, "phone": 1, "iban-like": 1, "phone-again": 1}


@pytest.mark.parametrize("escaped", [False, True])
def test_strings_ending_at_every_offset_are_read_whole(escaped):
    """The string and structure scans read sixteen bytes at a time and a last partial block as the block that
    ends the field. Documents of every length from 40 to 140 bytes put a path target, a skipped member and a
    detector match (inside a string whose quote parity is counted up to it) at every offset near the end, with
    escaped quotes near the block edges when escaped."""
    m = Masker([path("a.b"), detector("card")], KEY)
    for size in range(0, 100):
        text = "x" * size
        if escaped and size:
            text = text[:size // 2] + '"' + text[size // 2:]
        data = json.dumps({"pad": text, "a": {"b": "secret " + text}, "c": "4111 1111 1111 1111 " + text},
                          separators=(",", ":")).encode()
        out, counts = m.apply(data)
        assert orjson.loads(out) == {"pad": text, "a": {"b": "****"}, "c": "**** " + text}, data
        assert counts == {"a.b": 1, "card": 1}
