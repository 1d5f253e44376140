"""Where the approvals take the time from: the system clock, a fake one for unit tests, or a file.

Grants expire by the clock, so tests must be able to move time without sleeping. `FakeClock` does it
inside one process; `FileClock` does it for a gateway running as a subprocess, whose time is whatever
number the test last wrote into a file. A clock that cannot tell the time says `inf`: every grant then
counts as expired, which fails closed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger("streamward.clock")

FILE_CLOCK_REFRESH_S = 0.010  # a FileClock reads its file at most this often
_FILE_CLOCK_MAX_BYTES = 64  # a time is a short number; anything longer is garbage


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, t: float) -> None:
        self._now = float(t)


class FileClock:
    """The time is the float written in a file; missing, unreadable or garbage means `inf` (fail closed)."""

    def __init__(self, path: str | Path, refresh_s: float = FILE_CLOCK_REFRESH_S) -> None:
        self.path = Path(path)
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._value = math.inf
        self._read_at: float | None = None  # time.monotonic() of the last read
        self._failing = False  # logged once per stretch of failures, not on every read

    def now(self) -> float:
        with self._lock:
            checked = time.monotonic()
            if self._read_at is None or checked - self._read_at >= self._refresh_s:
                self._read_at = checked
                self._value = self._read()
            return self._value

    def _read(self) -> float:
        try:
            with self.path.open("rb") as file:
                raw = file.read(_FILE_CLOCK_MAX_BYTES + 1)
            problem = None if len(raw) <= _FILE_CLOCK_MAX_BYTES else "more than a number"
            value = float(raw.decode("ascii")) if problem is None else math.nan
        except OSError as exc:
            problem, value = exc.strerror or type(exc).__name__, math.nan
        except (UnicodeDecodeError, ValueError):
            problem, value = "not a number", math.nan
        # nan or -inf would make every comparison with an expiry time say "not yet": refuse them.
        if problem is None and not (math.isfinite(value) and value >= 0):
            problem = f"{value!r} is not a time"
        if problem is not None:
            if not self._failing:
                log.error("clock file %s: %s; every grant counts as expired until it holds a time", self.path, problem)
                self._failing = True
            return math.inf
        if self._failing:
            log.warning("clock file %s holds a time again", self.path)
            self._failing = False
        return value


def clock_from_spec(spec: str | None) -> Clock:
    """None or "system": the system clock; "file:PATH": a FileClock on PATH."""
    if spec is None or spec == "system":
        return SystemClock()
    kind, sep, path = spec.partition(":")
    if kind == "file" and sep and path:
        return FileClock(path)
    raise ValueError(f"unknown clock {spec!r}: use 'system' or 'file:PATH'")
