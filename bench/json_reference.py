"""What reading the kernel benchmark's JSON records costs the fastest JSON reader there is, beside the gateway's kernel.

Run from the repository root (needs a C++17 compiler and PyPI):

    .venv/bin/python bench/json_reference.py

bench/bench_mask.py's target is mask_records at 2 GB/s per core on 1,000 records of ~200-byte JSON: 105 µs for the
batch, for walking it, reading each record's JSON, masking two fields and computing the CRC. This measures, on
the same records and in the same run, how much of that budget reading the JSON alone takes simdjson (3.12, the
copy vendored in pysimdjson's source release, built here with -O3 and its own run-time choice of SIMD), three
ways (bench/json_reference.cpp):

    first   on demand, to customer.email and no further (the rest of each record neither read nor checked)
    every   on demand, every member of the record and of customer visited, customer.email read, the end checked:
            the walk the kernel's path rule makes (a later duplicate key is masked too; the record must be JSON)
    dom     the whole record parsed and validated, customer.email looked up

beside the kernel's own rows: mask_records with the customer.email rule where the member is absent (the walk,
no rewrite), walk only (batch framing and CRC, no JSON read), and with it present (the rewrite too). The two
sides alternate, three times, and each keeps its best. Figures are µs per 1,000 records and MB/s of the
uncompressed batch, as in bench_mask.py. Results go to bench/results/json_reference.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fastpath.record_batch import mask_records  # noqa: E402
from bench.bench_mask import BATCHES, PARTS, SIZE, VALUES  # noqa: E402

PYSIMDJSON = "7.0.2"        # its source release vendors simdjson 3.12.3 (simdjson.h, simdjson.cpp)
PYSIMDJSON_SHA256 = "44cf276e48912a3b9c7ca362c14da8420a7ac15a9f1a16ec95becff86db3904a"   # of that release's archive
CACHE = ROOT / ".cache" / "json_reference"
SOURCE = ROOT / "bench" / "json_reference.cpp"
KERNEL_ROWS = {
    "walk only": PARTS["walk only"],
    "json path, member absent": PARTS["json path, member absent"],
    "json path alone": PARTS["json path alone"],
}


def simdjson_dir() -> pathlib.Path:
    """simdjson.h and simdjson.cpp from pysimdjson's source release, downloaded once into the cache."""
    target = CACHE / f"simdjson-{PYSIMDJSON}"
    if (target / "simdjson.cpp").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, f"pysimdjson=={PYSIMDJSON}"], check=True)
        (archive,) = pathlib.Path(tmp).glob("pysimdjson-*.tar.gz")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != PYSIMDJSON_SHA256:
            raise SystemExit(f"{archive.name}: sha256 {digest}, expected {PYSIMDJSON_SHA256}")
        with tarfile.open(archive) as tar:
            for name in ("simdjson.h", "simdjson.cpp"):
                member = tar.getmember(f"pysimdjson-{PYSIMDJSON}/simdjson/{name}")
                target.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target / name, "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst)
    return target


def build() -> pathlib.Path:
    binary = CACHE / f"json_reference-{PYSIMDJSON}"
    if binary.exists() and binary.stat().st_mtime > SOURCE.stat().st_mtime:
        return binary
    include = simdjson_dir()
    print("building the simdjson reference ...", flush=True)
    subprocess.run(["c++", "-O3", "-std=c++17", "-I", str(include), str(SOURCE), str(include / "simdjson.cpp"),
                    "-o", str(binary)], check=True)
    return binary


def simdjson_run(binary: pathlib.Path, records: pathlib.Path, rounds: int, repeat: int) -> tuple[str, dict[str, float]]:
    out = subprocess.run([str(binary), str(records), str(rounds), str(repeat)], check=True, capture_output=True,
                         text=True).stdout
    lines = out.split("\n")
    figures = {name: float(us) for name, us in (line.split() for line in lines[1:] if line.strip())}
    return lines[0].removeprefix("implementation "), figures


def kernel_run(rounds: int, repeat: int) -> dict[str, float]:
    batch = BATCHES["none"]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, masker in KERNEL_ROWS.items():
            start = time.perf_counter()
            for _ in range(repeat):
                mask_records(batch, masker, max_output=1 << 30)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / repeat * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one pass of each, to check that it runs (tests)")
    args = parser.parse_args()
    rounds, repeat, alternations = (1, 1, 1) if args.quick else (9, 100, 3)
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = build()
    records = CACHE / "records.bin"
    records.write_bytes(b"".join(struct.pack("<I", len(value)) + value for value in VALUES))
    reference: dict[str, float] = {}
    kernel: dict[str, float] = {}
    implementation = ""
    for _ in range(alternations):   # alternating, so drift in the machine's speed falls on both sides alike
        implementation, figures = simdjson_run(binary, records, rounds, repeat)
        for name, us in figures.items():
            reference[name] = min(reference.get(name, float("inf")), us)
        for name, us in kernel_run(rounds, repeat).items():
            kernel[name] = min(kernel.get(name, float("inf")), us)
    walk = kernel["json path, member absent"] - kernel["walk only"]
    rows = [
        (f"simdjson {implementation}, on demand, to customer.email only", reference["first"]),
        (f"simdjson {implementation}, on demand, every member visited", reference["every"]),
        (f"simdjson {implementation}, whole record parsed (DOM)", reference["dom"]),
        ("kernel, walk only (batch framing, CRC)", kernel["walk only"]),
        ("kernel, customer.email rule, member absent", kernel["json path, member absent"]),
        ("kernel, its JSON walk (the two rows above, subtracted)", walk),
        ("kernel, customer.email rule, masked", kernel["json path alone"]),
    ]
    budget = SIZE / 2e9 * 1e6
    print(f"1,000 records of ~200-byte JSON, {SIZE:,} bytes as a batch; 2 GB/s leaves {budget:.0f} µs for the batch")
    for name, us in rows:
        print(f"  {name:<62} {us:7.1f} µs  {SIZE / us:6.0f} MB/s")
    if args.quick:
        return
    (ROOT / "bench" / "results" / "json_reference.json").write_text(json.dumps(
        {"implementation": implementation, "batch_bytes": SIZE, "us": dict(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
