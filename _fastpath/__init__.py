"""Cython hot path. There is no pure-Python fallback: a missing build is an error, not a slow mode."""
try:
    from _fastpath.frame import FrameError, FrameReader
    from _fastpath.walker import Plan, WalkError
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "Streamward's Cython extensions (_fastpath.frame, _fastpath.walker) are not built. "
        "Run `pip install .` (or `make build` in a checkout) to compile it."
    ) from exc

__all__ = ["FrameError", "FrameReader", "Plan", "WalkError"]
