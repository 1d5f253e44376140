from _fastpath.mask import Masker

class UnmaskableRecords(Exception): ...

class MaskResult:
    data: bytes | memoryview
    masked: int
    counts: dict[str, int]
    changed: bool

def mask_records(
    records: bytes | memoryview, masker: Masker, *, max_output: int, max_inflated: int = 67108864
) -> MaskResult: ...
def batch_cuts(records: bytes | memoryview, piece_bytes: int) -> list[int]: ...
def iter_records(
    records: bytes | memoryview, *, max_inflated: int = 67108864
) -> list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]: ...
