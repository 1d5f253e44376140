"""The kernel benchmarks still run: `make bench` broke once without any test noticing (a generated policy
the loader had started to refuse). Each benchmark runs once here, briefly; the figures are not checked."""

from __future__ import annotations

import subprocess
import sys

from gateway.dev.process import REPO


def test_every_kernel_benchmark_runs():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *sorted(str(p) for p in (REPO / "bench").glob("bench_*.py")), "-q",
         "--benchmark-only", "--benchmark-max-time=0.001", "--benchmark-min-rounds=1", "--benchmark-warmup=off",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_the_simdjson_reference_builds_and_runs():
    """bench/json_reference.py, which make bench runs: pysimdjson's source from PyPI, a C++ build, one pass."""
    result = subprocess.run([sys.executable, "bench/json_reference.py", "--quick"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.rstrip().endswith("MB/s")]
    assert len(rows) == 7 and any(row.lstrip().startswith("simdjson") for row in rows), result.stdout
