"""The Cython frame reader: same frames whatever the chunking, sizes refused before allocation."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest

from _fastpath import FrameError, FrameReader


def request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">hhih", api_key, version, correlation_id, 3) + b"cid" + body
    return struct.pack(">i", len(payload)) + payload


def response(correlation_id: int, body: bytes) -> bytes:
    return struct.pack(">ii", len(body) + 4, correlation_id) + body


def frames_of(reader: FrameReader, chunks: list[bytes]) -> list[tuple]:
    out = []
    for chunk in chunks:
        out += [(bytes(entry[0]), *entry[1:]) for entry in reader.feed(chunk)]
    return out


def test_every_split_point_gives_the_same_frames():
    stream = b"".join(request(3, 12, i, bytes([i]) * i) for i in range(1, 6))
    whole = frames_of(FrameReader(1 << 20, True), [stream])
    assert [f[1:] for f in whole] == [(3, 12, i) for i in range(1, 6)]
    assert b"".join(f[0] for f in whole) == stream
    for cut in range(len(stream)):
        for second_cut in range(cut, len(stream), 7):
            chunks = [stream[:cut], stream[cut:second_cut], stream[second_cut:]]
            assert frames_of(FrameReader(1 << 20, True), chunks) == whole


def test_random_chunking_of_responses():
    rng = random.Random(11)
    frames = [response(i, rng.randbytes(rng.randrange(0, 3000))) for i in range(200)]
    stream = b"".join(frames)
    reader = FrameReader(1 << 20, False)
    chunks, pos = [], 0
    while pos < len(stream):
        size = rng.choice([1, 2, 3, 5, 100, 4096, 70000])
        chunks.append(stream[pos:pos + size])
        pos += size
    got = frames_of(reader, chunks)
    assert [f[0] for f in got] == frames
    assert [f[1] for f in got] == list(range(200))
    assert reader.buffered == 0


@pytest.mark.parametrize("size", [2**31 - 1, (1 << 20) + 1, -1, -(2**31), 0, 9])
def test_bad_sizes_are_refused_as_soon_as_known(size):
    reader = FrameReader(1 << 20, True)
    assert reader.feed(struct.pack(">i", size)[:2]) == []  # not yet known: nothing to say
    with pytest.raises(FrameError):
        reader.feed(struct.pack(">i", size)[2:])


def test_a_declared_huge_frame_costs_only_what_arrived():
    reader = FrameReader(100 << 20, True)
    tracemalloc.start()
    reader.feed(struct.pack(">i", 100 << 20) + b"\0" * 100)
    for _ in range(100):
        reader.feed(b"\0" * 100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reader.buffered == 4 + 100 * 101
    assert peak < 200_000


def test_limit_can_be_raised_after_authentication():
    reader = FrameReader(16, True)
    big = request(0, 9, 1, b"x" * 64)
    with pytest.raises(FrameError):
        reader.feed(big)
    reader = FrameReader(16, True)
    reader.max_frame = 1 << 20
    assert len(reader.feed(big)) == 1
