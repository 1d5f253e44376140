"""Masking fuzz soak: the test suite's fuzzers, run for as long as you give them, with fresh seeds.

    .venv/bin/python loadtest/fuzz_masking.py [--seconds S] [--seed N] [--only FUZZER]

Four fuzzers, S seconds each (60 by default):

- wide text: random binary holding secrets written in UTF-16 and UTF-32 (either byte order, at any offset, beside
  non-text bytes, non-ASCII text and a regex rule's matches), through every detector: no secret may come back in
  the encoding it was written in.
- corrupt batches: valid batches of every codec, with bytes flipped, cut and inserted, with and without a
  recomputed CRC: mask_records either refuses one (UnmaskableRecords) or returns batches with valid CRCs; and
  unless aiokafka cannot read the input at all, the gateway reads the input as aiokafka does, and aiokafka reads
  the output as the input with every field masked (tests/test_record_batch_reference.py's check_against).
- random fields: bytes from a JSON-like alphabet through every detector, a path and a regex rule: never an error.
- clients: corrupt batches as above, 2,000 at a time, against Kafka's Java consumer and franz-go, each through its
  own batch reader (one run of each a round; the Kafka jars are fetched and the Go reader built on first use):
  wherever a client can read an input the gateway accepted, the gateway reads it alike and the client reads the
  output as the input with every field masked (tests/test_record_batch_reference.py).

A failure prints the fuzzer, the seed and the case number (for clients, the round), writes the input to
fuzz-failure-<fuzzer>-<seed>.bin and exits 1; a crash of the kernel itself ends the process with its signal. The
test suite runs bounded versions of these (tests/test_mask.py, tests/test_record_batch.py,
tests/test_record_batch_reference.py) in every CI run; this is for soaks, before a release or after a change to
_fastpath. --only runs one of them.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _fastpath.mask import Masker  # noqa: E402
from gateway.dev.kafka import ensure_jars  # noqa: E402
from tests.reference_readers import Reader, aiokafka_reader, build_franz_reader, franz_reader, java_reader  # noqa: E402
from tests.test_mask import EVERY_DETECTOR, EVERY_KIND_OF_RULE, KEY, POSITIVES, random_field, rule  # noqa: E402
from tests.test_record_batch import (  # noqa: E402
    corrupted,
    corruption_originals,
)
from tests.test_record_batch_reference import ClientDisagrees, check_against  # noqa: E402

WIDE = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
DETECTORS = Masker(EVERY_DETECTOR, KEY)
DETECTORS_AND_REGEX = Masker(EVERY_DETECTOR + [rule(name="re", kind="regex", pattern=r"SECRET\d{4}")], KEY)
EVERYTHING = Masker(EVERY_KIND_OF_RULE, KEY)
AIOKAFKA = aiokafka_reader()


T = TypeVar("T")
TALLY: Counter[str] = Counter()  # what the cases of the running fuzzer came to, where that varies


class Failure(Exception):
    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


def guarded(call: Callable[[], T], data: bytes) -> T:
    """call(), any error it raises a Failure of this input."""
    try:
        return call()
    except Exception as exc:
        raise Failure(repr(exc), data) from exc


def wide_text_case(rng: random.Random) -> None:
    parts, secrets = [], []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.35:
            parts.append(rng.randbytes(rng.randint(0, 40)))
        elif roll < 0.5:
            parts.append(bytes(rng.choice(b"\x00\x01 a1@-.") for _ in range(rng.randint(0, 40))))
        else:
            secret = rng.choice(POSITIVES[rng.choice(["card", "email", "iban", "ssn"])])
            encoding = rng.choice(WIDE)
            text = rng.choice(["", "x ", "card ", "Zo\u00eb "]) + secret + rng.choice(["", " y", ".", " end"])
            if rng.random() < 0.2:
                text = f"SECRET{rng.randrange(10000):04d} {text}"
            # Set apart by bytes that are no text in any encoding: the secret is its own run.
            parts.append(b"\x01\x02" + text.encode(encoding) + b"\x01\x02")
            secrets.append((secret, encoding))
    data = b"\x00" * rng.randint(0, 5) + b"".join(parts)  # a leading zero reads as schema-registry framing
    masker = DETECTORS_AND_REGEX if rng.random() < 0.3 else DETECTORS
    out, _ = guarded(lambda: masker.apply(data, target="value"), data)
    for secret, encoding in secrets:
        if secret.encode(encoding) in out:
            raise Failure(f"{secret!r} came back in {encoding}", data)


def corrupt_batch_case(rng: random.Random, originals: list[bytes]) -> None:
    data = corrupted(rng, rng.choice(originals), edits=rng.randint(1, 3))
    try:
        TALLY.update(check_against(AIOKAFKA, [data]))
    except ClientDisagrees as exc:
        raise Failure(str(exc).split(":")[0], data) from exc
    except Exception as exc:
        raise Failure(f"the check raised {exc!r}", data) from exc


def random_field_case(rng: random.Random) -> None:
    data = random_field(rng, longest=120)
    for target in ("key", "value"):
        out, counts = guarded(lambda target=target: EVERYTHING.apply(data, target=target), data)
        if not isinstance(out, bytes) or not isinstance(counts, dict):
            raise Failure("apply returned something else than (bytes, dict)", data)


def clients_round_case(rng: random.Random, originals: list[bytes], readers: list[Reader]) -> None:
    """One round of 2,000 corrupted batches against each client (a case here is a round, not a batch)."""
    batches = [corrupted(rng, rng.choice(originals), edits=rng.randint(1, 3)) for _ in range(2000)]
    for reader in readers:
        try:
            TALLY.update({f"{reader.name}: {outcome}": count
                          for outcome, count in check_against(reader, batches).items()})
        except ClientDisagrees as exc:
            raise Failure(f"{reader.name}: {str(exc).split(':')[0]}", exc.batch) from exc


def soak(name: str, case: Callable[[random.Random], None], seed: int, seconds: float) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    TALLY.clear()
    cases = 0
    while time.monotonic() < deadline:
        cases += 1
        try:
            case(rng)
        except Failure as exc:
            Path(f"fuzz-failure-{name}-{seed}.bin").write_bytes(exc.data)
            print(f"{name}: FAILED at case {cases} (seed {seed}): {exc!r}", flush=True)
            return 1
    tally = "".join(f", {count:,} {outcome}" for outcome, count in sorted(TALLY.items()))
    print(f"{name}: {cases:,} cases in {seconds:.0f} s{tally}, seed {seed}: no failure", flush=True)
    return 0


FUZZERS = ("wide-text", "corrupt-batches", "random-fields", "clients")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="per fuzzer")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--only", choices=FUZZERS, default=None, help="run this fuzzer alone")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    setup = random.Random(seed)
    originals = corruption_originals(setup)
    # The clients fuzzer's readers need the Kafka jars and a Go build: made only when it runs.
    readers = [] if args.only not in (None, "clients") else [
        java_reader(ensure_jars()), franz_reader(build_franz_reader(Path(tempfile.mkdtemp(prefix="franz-reader-"))))]
    cases: dict[str, Callable[[random.Random], None]] = {
        "wide-text": wide_text_case,
        "corrupt-batches": lambda rng: corrupt_batch_case(rng, originals),
        "random-fields": random_field_case,
        "clients": lambda rng: clients_round_case(rng, originals, readers),
    }
    failed = 0
    for name in [args.only] if args.only else FUZZERS:
        failed |= soak(name, cases[name], seed, args.seconds)
    return failed


if __name__ == "__main__":
    sys.exit(main())
