from typing import Literal

Target = Literal["key", "value", "header"]

class UnmaskableField(Exception): ...

class Masker:
    """Masking rules compiled once; see _fastpath/mask.pyx for the rule format and what each rule does."""

    names: tuple[str, ...]
    has_key_rules: bool
    has_value_rules: bool
    has_header_rules: bool
    def __init__(self, rules: list[dict[str, object]], hmac_key: bytes) -> None: ...
    def apply(
        self, data: bytes | bytearray | memoryview, *, target: Target = "value", header: str | None = None,
        max_inflated: int = ...,
    ) -> tuple[bytes, dict[str, int]]: ...

def _detector_matches(
    detector: str, data: bytes | bytearray | memoryview, merged: bool, start: int = 0, portable: bool = False
) -> list[tuple[int, int]]:
    """For tests: a detector's matches one after another, found through the merged pass's candidates or not,
    with or without the AVX-512 searches."""
def _card_run_for_tests(data: bytes | bytearray | memoryview, start: int = 0, portable: bool = False) -> int:
    """For tests: the start of the first run of 13+ digits, spaces and dashes at or after start, or -1."""
def _wide_layouts_for_tests(data: bytes | bytearray | memoryview, portable: bool = False) -> int:
    """For tests: bit 1 when data may hold four printable ASCII UTF-16 characters in a row, bit 2 UTF-32."""
def _sha256_impl() -> str:
    """For tests: the SHA-256 compression in use, "sha-ni" or "scalar"."""
def _hmac_sha256_for_tests(key: bytes, msg: bytes, impl: str | None = None) -> bytes:
    """For tests: HMAC-SHA256 through the kernel's own C code, optionally forcing an implementation."""
def _json_skip_for_tests(
    data: bytes | bytearray | memoryview, start: int = 0, impl: str | None = None, raw: bool = False
) -> int:
    """For tests: the end of the object or array at data[start] through a chosen skip implementation."""
def _set_json_skip_impl(impl: str | None = None) -> str:
    """For tests: make every Masker skip containers through impl; the name of the one in use before."""
