"""Benchmarks for the schema-driven codec (gateway/protocol/codec.py).

Run from the repository root:

    .venv/bin/python -m pytest bench/bench_codec.py --benchmark-only -q

Targets: a ProduceResponse v11 (1 topic x 3 partitions) decodes in under ~10 us
and a FetchResponse v16 (1 topic x 6 partitions) is walked in under ~20 us
whatever the record size, since records come back as slices of the input.
"""

from __future__ import annotations

import os

import pytest

from gateway.protocol import codec

_MIB = 1 << 20


def _produce_response_v11() -> bytes:
    partitions = [
        {
            "index": index,
            "error_code": 0,
            "base_offset": 1_000_000 + index,
            "log_append_time_ms": -1,
            "log_start_offset": 0,
            "record_errors": [],
            "error_message": None,
        }
        for index in range(3)
    ]
    body = {"responses": [{"name": "orders", "partition_responses": partitions}], "throttle_time_ms": 0}
    return codec.encode_response(0, 11, body)


def _fetch_response_v16(record_size: int) -> bytes:
    records = os.urandom(record_size)
    partitions = [
        {
            "partition_index": index,
            "error_code": 0,
            "high_watermark": 5000,
            "last_stable_offset": 5000,
            "log_start_offset": 0,
            "aborted_transactions": None,
            "preferred_read_replica": -1,
            "records": records,
        }
        for index in range(6)
    ]
    body = {"session_id": 7, "responses": [{"topic_id": os.urandom(16), "partitions": partitions}]}
    return codec.encode_response(1, 16, body)


def _metadata_response_v12() -> bytes:
    brokers = [
        {"node_id": node, "host": f"broker-{node}.kafka.internal", "port": 9092, "rack": f"rack-{node}"}
        for node in range(3)
    ]
    topics = [
        {
            "error_code": 0,
            "name": f"topic-{index:03d}",
            "topic_id": os.urandom(16),
            "is_internal": False,
            "partitions": [
                {
                    "error_code": 0,
                    "partition_index": partition,
                    "leader_id": partition % 3,
                    "leader_epoch": 12,
                    "replica_nodes": [0, 1, 2],
                    "isr_nodes": [0, 1, 2],
                    "offline_replicas": [],
                }
                for partition in range(6)
            ],
            "topic_authorized_operations": -2147483648,
        }
        for index in range(50)
    ]
    body = {"brokers": brokers, "cluster_id": "streamward-bench", "controller_id": 1, "topics": topics}
    return codec.encode_response(3, 12, body)


def test_decode_produce_response_v11(benchmark):
    wire = _produce_response_v11()
    body = benchmark(codec.decode_response, 0, 11, wire)
    assert len(body["responses"][0]["partition_responses"]) == 3


@pytest.mark.parametrize("record_size", [1024, _MIB], ids=["1KiB", "1MiB"])
def test_decode_fetch_response_v16(benchmark, record_size):
    wire = _fetch_response_v16(record_size)
    body = benchmark(codec.decode_response, 1, 16, wire)
    partitions = body["responses"][0]["partitions"]
    assert len(partitions) == 6
    assert all(isinstance(p["records"], memoryview) and len(p["records"]) == record_size for p in partitions)


def test_decode_encode_metadata_response_v12(benchmark):
    wire = _metadata_response_v12()

    def round_trip() -> bytes:
        return codec.encode_response(3, 12, codec.decode_response(3, 12, wire))

    assert benchmark(round_trip) == wire


def test_decode_metadata_response_v12(benchmark):
    wire = _metadata_response_v12()
    body = benchmark(codec.decode_response, 3, 12, wire)
    assert len(body["topics"]) == 50


def test_encode_metadata_response_v12(benchmark):
    wire = _metadata_response_v12()
    body = codec.decode_response(3, 12, wire)
    assert benchmark(codec.encode_response, 3, 12, body) == wire
