"""Per-request cost of authorization on the hot path: decode the request, decide every resource it names
against a 1,000-rule policy (decisions cached per connection, as in a live connection), build the outcome.

    .venv/bin/python -m pytest bench/bench_authz.py --benchmark-only -q

Compare with the request's own size: a Produce of three 16 KiB batches is ~48 KiB, so at 100 MB/s a
gateway worker sees ~2,000 of them per second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_policy import MASKING_SECTION, RULES, groups_of, policy_text  # noqa: E402

from gateway.authz import authorize  # noqa: E402
from gateway.policy import Engine, load_policies  # noqa: E402
from gateway.protocol import codec  # noqa: E402


class NoIds:
    def name_of(self, topic_id: bytes) -> str | None:
        return None

    def id_of(self, name: str) -> bytes | None:
        return None


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    """Principal user-15 of bench_policy's generated 1,000-rule policy: it may read and write app15.*."""
    policy = tmp_path_factory.mktemp("policy") / "rules.yaml"
    policy.write_text(policy_text(0, RULES) + MASKING_SECTION)
    return Engine(load_policies(policy)).for_principal("user-15", groups_of(15))


def frame_for(api_key: int, version: int, body: dict) -> bytes:
    return codec.encode_request_frame(api_key, version, 1, "bench", body)


def decide_and_authorize(view, api_key: int, version: int, frame: bytes):
    body = codec.decode_request(api_key, version, frame, codec.parse_request_header(frame)[4])
    return authorize(api_key, version, body, lambda kind, name, op: view.decide(kind, name, op).allowed, NoIds())


def batch_of_16_kib() -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    for offset in range(16):
        builder.append(offset, 1_700_000_000_000, None, b"v" * 1000, [])
    return bytes(builder.build())


def test_produce_three_partitions(benchmark, view):
    records = batch_of_16_kib()
    frame = frame_for(0, 9, {"acks": -1, "timeout_ms": 30000, "topic_data": [
        {"name": "app15.orders", "partition_data": [{"index": p, "records": records} for p in range(3)]}]})
    outcome = benchmark(decide_and_authorize, view, 0, 9, frame)
    assert outcome.forward is None and outcome.answer is None


def test_fetch_six_partitions(benchmark, view):
    frame = frame_for(1, 12, {"replica_id": -1, "max_wait_ms": 500, "min_bytes": 1, "max_bytes": 1 << 20,
                              "topics": [{"topic": "app15.orders", "partitions": [
                                  {"partition": p, "fetch_offset": 1000, "partition_max_bytes": 1 << 20}
                                  for p in range(6)]}]})
    outcome = benchmark(decide_and_authorize, view, 1, 12, frame)
    assert outcome.answer is None
