"""The block skip of JSON containers (_fastpath/json_skip.h) against the token walk it replaces.

Every answer of the block scan (portable and SIMD, each forced) must equal the token walk's: the index past the
container, -1 (invalid) or -2 (nesting too deep), on valid JSON, on mutations of it, and at every alignment of
the interesting bytes to the 64-byte blocks; the raw block scan may also hand over (-4), but only where a
backslash stands outside a string. End to end, a Masker gives the same output through every implementation.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import random

import pytest

from _fastpath.mask import Masker, _json_skip_for_tests, _set_json_skip_impl

KEY = b"k" * 32
INVALID, UNDECIDED, FALLBACK = -1, -2, -4
MAX_DEPTH = 512


def _impls() -> list[str]:
    impls = ["scalar"]
    for simd in ("simd", "avx512"):
        try:
            _json_skip_for_tests(b"{}", 0, simd)
            impls.append(simd)
        except ValueError:
            pass
    return impls


IMPLS = _impls()


def check(data: bytes, start: int = 0) -> int:
    """Every implementation agrees with the token walk on data[start]; the token walk's answer."""
    want = _json_skip_for_tests(data, start, "tokens")
    for impl in IMPLS:
        raw = _json_skip_for_tests(data, start, impl, raw=True)
        assert raw == want or raw == FALLBACK, (impl, data, start, raw, want)
        if raw == FALLBACK:
            assert b"\\" in data[start:], (impl, data, start)
        assert _json_skip_for_tests(data, start, impl) == want, (impl, data, start)
    assert _json_skip_for_tests(data, start) == want
    return want


# --- random documents ---

ESCAPES = ["\\\\", '\\"', "\\n", "\\t", "\\/", "\\b", "\\u00e9", "\\ud83d\\ude00", "\\u0022", "\\u005c"]


def rand_string(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.choice([0, 1, 2, 4, 8, 20])):
        r = rng.random()
        if r < 0.3:
            parts.append(rng.choice(ESCAPES))
        elif r < 0.4:
            parts.append("\\\\" * rng.randint(1, 4) + rng.choice(['\\"', "", "x"]))
        elif r < 0.5:
            parts.append(rng.choice(["{", "}", "[", "]", ":", ","]))
        elif r < 0.55:
            parts.append("é€😀")
        else:
            parts.append("x" * rng.choice([1, 3, 10, 30, 63, 64, 65, 130]))
    return '"' + "".join(parts) + '"'


def rand_value(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth < 6 and r < 0.35:
        ws = rng.choice(["", "", " ", "\n  "])
        if rng.random() < 0.5:
            members = [f"{rand_string(rng)}{ws}:{ws}{rand_value(rng, depth + 1)}" for _ in range(rng.randint(0, 6))]
            return "{" + ws + ("," + ws).join(members) + ws + "}"
        return "[" + ws + ("," + ws).join(rand_value(rng, depth + 1) for _ in range(rng.randint(0, 6))) + ws + "]"
    if r < 0.65:
        return rand_string(rng)
    if r < 0.85:
        return rng.choice(["0", "-1", "12345678901234567890", "1.5e-7", "-0.25E+3"])
    return rng.choice(["true", "false", "null"])


def rand_container(rng: random.Random) -> bytes:
    while True:
        text = rand_value(rng)
        if text[0] in "{[":
            return text.encode()


def mutate(rng: random.Random, doc: bytes) -> bytes:
    b = bytearray(doc)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0:
            del b[i:]
            if not b:
                b = bytearray(b"[")
        elif op == 1 and i < len(b):
            flip = {ord("{"): "}", ord("}"): "{", ord("["): "]", ord("]"): "["}
            b[i] = ord(flip.get(b[i], rng.choice("{}[]")))
        elif op == 2:
            b[i:i] = rng.choice([b'"', b"\\", b"\\\\", b"\x00", b"\x01", b"\x1f", b"\n", b"{", b"]", b'\\"'])
        elif op == 3 and i < len(b):
            del b[i]
        else:
            b[i:i] = b" " * rng.randint(1, 64)
    if not b or b[0] not in b"{[":
        b[0:0] = b"["
    return bytes(b)


def test_valid_documents_every_alignment():
    rng = random.Random(1)
    for _ in range(400):
        doc = rand_container(rng)
        json.loads(doc)
        for pad in (0, 1, 31, 63):
            data = b"x" * pad + doc + rng.choice([b"", b",1]", b' \\"}', b"]" * 70])
            assert check(data, pad) == pad + len(doc)


def test_mutations():
    rng = random.Random(2)
    for _ in range(4000):
        doc = mutate(rng, rand_container(rng))
        check(doc)
        check(b"  " + doc + b"}]", 2)


def test_every_truncation():
    rng = random.Random(3)
    for _ in range(60):
        doc = rand_container(rng)
        for cut in range(1, len(doc) + 1):
            check(doc[:cut])


@pytest.mark.parametrize("run", range(0, 7))
def test_backslash_runs_across_block_boundaries(run):
    # A run of `run` backslashes ending at every offset around the first three block boundaries, followed by
    # each kind of byte it may escape: the quote closes the string only when the run is even.
    for follow in ('"', "\\", "x", "}", "]"):
        for j in range(0, 200):
            body = '["' + "a" * j + "\\" * run + follow + '"]' + '"]'
            data = body.encode()
            got = check(data)
            # An even run leaves a quote after it to close the string, a backslash after it to escape the quote
            # that follows; then the string '"]"' sits in the array, which ends 2 bytes further on.
            closes_early = (follow == '"' and run % 2 == 0) or (follow == "\\" and run % 2 == 0)
            assert got == j + run + (7 if closes_early else 5), (run, follow, j)
            for pad in (1, 2):
                check(b"[" * pad + data + b"]" * pad)


def test_quotes_and_brackets_at_block_edges():
    for j in range(0, 140):
        for tail in (b'"}', b'\\""}', b'}', b'"{}"}', b'"]', b'\\\\"}'):
            for head in (b'{"', b'{"k":"', b'[{"a":[', b"{"):
                data = head + b"y" * j + tail
                check(data)
                check(data + b"  ]}")


def test_backslash_outside_strings_hands_over():
    cases = [b'{ \\"x" }', b'[\\]', b'[1,\\"]"]', b'{"a":1} \\', b'[' + b' ' * 70 + b'\\"]"]']
    for data in cases:
        check(data)
    assert _json_skip_for_tests(b'[\\"]"]', 0, "scalar", raw=True) == FALLBACK
    # A backslash outside strings past the end of the container changes nothing.
    assert _json_skip_for_tests(b'[1] \\"', 0, "scalar", raw=True) == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_limit(impl):
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        for o, c in ((b"[", b"]"), (b"{", b"}"), (b'[{"a":', b"}]")):
            reps = depth // (len(o) > 1 and 2 or 1)
            data = o * reps + c * reps
            want = _json_skip_for_tests(data, 0, "tokens")
            assert _json_skip_for_tests(data, 0, impl) == want
    assert _json_skip_for_tests(b"[" * 513 + b"]" * 513, 0, impl) == UNDECIDED
    assert _json_skip_for_tests(b"[" * 512 + b"]" * 512, 0, impl) == 1024
    assert _json_skip_for_tests(b"[" * 512 + b"}" + b"]" * 511, 0, impl) == INVALID


def test_mismatched_kinds():
    for data in (b"{]", b"[}", b'{"a":[1}]', b'[{"a":1]}', b"[[[[]]]}", b'{"x":{"y":[]]}}'):
        assert check(data) == INVALID


def test_inputs_of_every_small_length():
    rng = random.Random(4)
    alphabet = b'{}[]"\\ax:,\x00'
    for _ in range(20000):
        n = rng.randint(1, 40)
        data = bytes([rng.choice(b"{[")]) + bytes(rng.choice(alphabet) for _ in range(n))
        check(data)


def _guarded(data: bytes) -> tuple[mmap.mmap, memoryview]:
    """data placed to end exactly at a page that may not be read: a read past it faults."""
    page = mmap.PAGESIZE
    size = (len(data) // page + 2) * page
    mm = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    end = size - page
    mm[end - len(data):end] = data
    libc = ctypes.CDLL(None, use_errno=True)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    assert libc.mprotect(ctypes.c_void_p(base + end), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    return mm, memoryview(mm)[end - len(data):end]


def test_no_read_past_the_end():
    rng = random.Random(5)
    keep = []
    for length in list(range(1, 140)) + [255, 256, 257, 1000]:
        doc = (b'{"a":"' + b"\\" * (length % 5) + b"x" * length)[:length]
        if doc[0:1] not in (b"{", b"["):
            doc = b"[" + doc[1:]
        mm, view = _guarded(doc)
        keep.append(mm)
        for impl in IMPLS + ["tokens"]:
            assert _json_skip_for_tests(view, 0, impl) == _json_skip_for_tests(doc, 0, "tokens")
        doc2 = rand_container(rng)
        mm, view = _guarded(doc2)
        keep.append(mm)
        for impl in IMPLS:
            assert _json_skip_for_tests(view, 0, impl) == len(doc2)


# --- end to end ---

RULES = [
    [{"name": "e", "target": "value", "kind": "json_path", "path": "customer.email", "strategy": "redact"}],
    [{"name": "s", "target": "value", "kind": "json_path", "path": "items[*].sku", "strategy": "hash"},
     {"name": "n", "target": "value", "kind": "json_path", "path": "a.*", "strategy": "null"}],
    [{"name": "p", "target": "value", "kind": "json_path", "path": "customer", "strategy": "partial",
      "keep_last": 2}],
]


def _outputs(docs: list[bytes], impl: str) -> list:
    before = _set_json_skip_impl(impl)
    try:
        out = []
        for rules in RULES:
            masker = Masker(rules, KEY)
            for doc in docs:
                try:
                    out.append(masker.apply(doc))
                except Exception as exc:  # noqa: BLE001 - the same failure is what must match
                    out.append((type(exc).__name__, str(exc)))
        return out
    finally:
        _set_json_skip_impl(before)


def test_masker_outputs_identical():
    rng = random.Random(6)
    docs = []
    for _ in range(300):
        inner = rand_container(rng).decode()
        other = rand_container(rng).decode()
        email = rand_string(rng)
        order = [f'"items":{inner}', f'"customer":{{"id":"c-1","email":{email},"x":{other}}}',
                 f'"a":{{"k":{other},"email":1}}', '"customer":{"email":"dup@x.y"}']
        rng.shuffle(order)
        doc = ("{" + ",".join(order) + "}").encode()
        docs.append(doc)
        docs.append(mutate(rng, doc))
        docs.append(doc[: rng.randrange(1, len(doc))])
    want = _outputs(docs, "tokens")
    for impl in IMPLS:
        assert _outputs(docs, impl) == want, impl
    assert _set_json_skip_impl(None) in ("tokens", "simd", "avx512")


def test_default_is_the_fastest_simd_or_the_token_walk():
    """AVX-512 where the CPU (and OS) has it, else SSE2, else the token walk (the portable block code is slower)."""
    before = _set_json_skip_impl(None)
    assert _set_json_skip_impl(None) == ("avx512" if "avx512" in IMPLS else "simd" if "simd" in IMPLS else "tokens")
    _set_json_skip_impl(before)


def test_containers_starting_in_the_last_block_of_a_long_field():
    """A container that starts less than 64 bytes before the end of a field of 64 bytes or more is read from the
    block that ends at the field's end, shifted: at every start offset, with strings, escapes and brackets in the
    bytes shifted out before it, the block scan agrees with the token walk (valid, cut and mutated)."""
    rng = random.Random(4)
    lead = b'["}\\"{' + b"x" * 70 + b'"\\\\"'
    for _ in range(150):
        doc = rand_container(rng)
        for candidate in (doc, doc[:rng.randint(1, len(doc))], mutate(rng, doc)):
            for pad in range(max(0, 64 - len(candidate)), 64 + 1):
                data = lead[:pad] + candidate if pad <= len(lead) else b" " * pad + candidate
                check(data, pad)
