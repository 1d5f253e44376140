"""The masking kernel's SHA-256 and HMAC-SHA256 (_fastpath/sha256.h, used by the hash strategy), against Python's
hmac and RFC 4231, through both compression functions: the SHA-NI one (where the CPU has it) and the portable one.
"""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from _fastpath.mask import _hmac_sha256_for_tests, _sha256_impl

KEY_SIZES = [0, 1, 16, 32, 55, 56, 63, 64, 65, 128, 200]


def _cpu_has_sha_ni() -> bool | None:
    """Whether /proc/cpuinfo lists the SHA extensions; None where there is no /proc/cpuinfo or it has no flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith("flags")]
    except OSError:
        return None
    return any("sha_ni" in line.split() for line in lines) if lines else None


def _available(impl: str) -> str:
    try:
        _hmac_sha256_for_tests(b"k", b"", impl)
    except ValueError:
        pytest.skip(f"{impl} is not available on this CPU")
    return impl


@pytest.fixture(params=["scalar", "sha-ni"])
def impl(request) -> str:
    return _available(request.param)


def test_the_fastest_implementation_is_selected():
    has = _cpu_has_sha_ni()
    if has is None:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    assert _sha256_impl() == ("sha-ni" if has else "scalar")


def test_rfc_4231_vectors(impl):
    cases = [
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ]
    for key, msg, expected in cases:
        assert _hmac_sha256_for_tests(key, msg, impl).hex() == expected


@pytest.mark.parametrize("key_size", KEY_SIZES)
def test_every_message_length_up_to_300(impl, key_size):
    """Every length across the 55/56-byte padding edge and the first block edges, for keys that are padded,
    exactly one block, or hashed first."""
    rng = random.Random(key_size)
    key = rng.randbytes(key_size)
    for n in range(301):
        msg = rng.randbytes(n)
        assert _hmac_sha256_for_tests(key, msg, impl) == hmac.new(key, msg, hashlib.sha256).digest(), n


@pytest.mark.parametrize("key_size", KEY_SIZES)
def test_kilobyte_messages(impl, key_size):
    rng = random.Random(1000 + key_size)
    key = rng.randbytes(key_size)
    lengths = [1023, 1024, 1025, 4096, 65_536 + 55, 65_536 + 56] + [rng.randrange(1000, 20_000) for _ in range(8)]
    for n in lengths:
        msg = rng.randbytes(n)
        assert _hmac_sha256_for_tests(key, msg, impl) == hmac.new(key, msg, hashlib.sha256).digest(), n


def test_implementations_agree_and_default_is_the_selected_one():
    rng = random.Random(5)
    impls = [name for name in ("scalar", "sha-ni") if name == "scalar" or _cpu_has_sha_ni()]
    for _ in range(200):
        key, msg = rng.randbytes(rng.randrange(100)), rng.randbytes(rng.randrange(3000))
        digests = {_hmac_sha256_for_tests(key, msg, name) for name in impls}
        digests.add(_hmac_sha256_for_tests(key, msg))
        assert digests == {hmac.new(key, msg, hashlib.sha256).digest()}


def test_unknown_implementation_is_an_error():
    with pytest.raises(ValueError, match="impl"):
        _hmac_sha256_for_tests(b"k", b"m", "sha-3")
