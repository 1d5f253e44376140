"""The Cython walker against the Python codec: same spec, independent code, same verdicts.

The walker decides on the hot path what a frame holds (Produce acks, a Fetch
replica id, KIP-951 NodeEndpoints) without decoding it; these tests prove it
agrees with a full decode on every request and response of every version, and
that hostile bytes only ever raise WalkError.
"""

from __future__ import annotations

import random
import struct

import pytest

from _fastpath import WalkError
from gateway.protocol import codec, schema
from gateway.protocol.walkplan import plan_for
from tests.test_codec import SPECS, random_body, versions

FIXED_FORMATS = {"int8": ">b", "int16": ">h", "uint16": ">H", "int32": ">i", "int64": ">q", "float64": ">d"}


def frame_of(kind: str, api_key: int, version: int, body: dict) -> bytes:
    if kind == "request":
        return codec.encode_request_frame(api_key, version, 99, "walker-test", body)
    return codec.encode_response_frame(api_key, version, 99, body)


def top_level_fixed(spec: schema.MessageSpec, version: int) -> list[schema.FieldSpec]:
    flexible = spec.flexible(version)
    return [f for f in spec.fields if f.present(version) and not (flexible and f.tagged(version))
            and f.type in FIXED_FORMATS]


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_walk_agrees_with_decode_on_every_version(kind, spec):
    for version in versions(spec):
        fixed = top_level_fixed(spec, version)
        plan = plan_for(kind, spec.api_key, version, tuple(f.snake_name for f in fixed))
        for seed in range(4):
            body, expected = random_body(kind, spec, version, seed)
            frame = frame_of(kind, spec.api_key, version, body)
            marks = plan.walk(frame)
            for field in fixed:
                position = marks[plan.mark_slots[field.snake_name]]
                value = struct.unpack_from(FIXED_FORMATS[field.type], frame, position)[0]
                assert value == expected[field.snake_name], f"{spec.name} v{version} {field.snake_name}"


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[spec.name for _, spec in SPECS])
def test_every_truncation_and_trailing_byte_raise_walk_error(kind, spec):
    for version in versions(spec):
        body, _ = random_body(kind, spec, version, "truncate", long_values=False)
        frame = frame_of(kind, spec.api_key, version, body)
        plan = plan_for(kind, spec.api_key, version)
        for cut in range(4, len(frame)):
            with pytest.raises(WalkError):
                plan.walk(frame[:cut])
        with pytest.raises(WalkError):
            plan.walk(frame + b"\0")


@pytest.mark.parametrize("api_key,version", [(0, 10), (0, 13), (1, 16), (1, 18)])
def test_node_endpoints_tag_is_found_exactly_when_present(api_key, version):
    spec = schema.RESPONSES[api_key]
    plan = plan_for("response", api_key, version)
    body, _ = random_body("response", spec, version, 1)
    body["node_endpoints"] = []
    assert plan.walk(frame_of("response", api_key, version, body))[plan.tag_base + 0] == -1
    body["node_endpoints"] = [{"node_id": 2, "host": "10.0.0.2", "port": 9092, "rack": None}]
    assert plan.walk(frame_of("response", api_key, version, body))[plan.tag_base + 0] > 0


def test_mutations_are_walk_errors_or_agree_with_the_codec():
    """20,000 single-byte mutations: the walker never raises anything but WalkError, and accepts whatever
    the (stricter) codec accepts."""
    rng = random.Random(951)
    samples = []
    for kind, api_key, version in [("response", 0, 11), ("response", 1, 16), ("request", 0, 12),
                                   ("request", 1, 17), ("response", 3, 12)]:
        spec = (schema.REQUESTS if kind == "request" else schema.RESPONSES)[api_key]
        body, _ = random_body(kind, spec, version, "fuzz", long_values=False)
        samples.append((kind, api_key, version, frame_of(kind, api_key, version, body)))
    accepted = 0
    for _ in range(20_000):
        kind, api_key, version, frame = rng.choice(samples)
        mutated = bytearray(frame)
        mutated[rng.randrange(4, len(mutated))] = rng.randrange(256)
        mutated = bytes(mutated)
        try:
            plan_for(kind, api_key, version).walk(mutated)
            walked = True
        except WalkError:
            walked = False
        decoder = codec.decode_request_frame if kind == "request" else None
        try:
            if decoder is not None:
                decoder(mutated)
            else:
                codec.decode_response_frame(api_key, version, mutated)
            decoded = True
        except codec.DecodeError:
            decoded = False
        if decoded:
            assert walked, f"codec accepted what the walker refused: {kind} {api_key} v{version}"
        accepted += walked
    assert 0 < accepted < 20_000


def test_huge_counts_fail_before_looping():
    plan = plan_for("response", 3, 12)
    # header (correlation id, empty tags), throttle time, then a brokers array claiming 2^31-2 entries
    frame = struct.pack(">iib", 0, 1, 0) + struct.pack(">i", 0) + b"\xff\xff\xff\xff\x07"
    frame = struct.pack(">i", len(frame) - 4) + frame[4:]
    with pytest.raises(WalkError):
        plan.walk(frame)
