"""Hostile and malformed frames: a clear error or a closed connection, flat memory, other clients unaffected."""

from __future__ import annotations

import random
import struct
import time

import psutil
import pytest

from gateway.protocol import codec
from gateway.protocol.apis import API_VERSIONS, FETCH, METADATA
from gateway.protocol.errors import UNSUPPORTED_VERSION
from tests.wire import WireClient


def header(api_key: int, version: int, correlation_id: int = 1) -> bytes:
    return struct.pack(">hhih", api_key, version, correlation_id, -1)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def metadata_works(wire: WireClient) -> bool:
    return bool(wire.request(METADATA, 12, {"topics": [], "allow_auto_topic_creation": False})["brokers"])


CLOSING_INPUTS = {
    "2 GiB frame": struct.pack(">i", 2**31 - 1) + b"\0" * 64,
    "negative size": struct.pack(">i", -5) + b"\0" * 16,
    "size smaller than a header": struct.pack(">i", 3) + b"abc",
    "unknown api key": frame(header(999, 0) + b"\0" * 8),
    "metadata version from the future": frame(header(METADATA, 99) + b"\0" * 8),
    "garbage body for a known request": frame(header(FETCH, 12) + b"\xff" * 40),
    "replica fetch": codec.encode_request_frame(FETCH, 12, 1, "x", {"replica_id": 1, "max_wait_ms": 0,
                                                                      "min_bytes": 1, "topics": []}),
}


@pytest.mark.parametrize("name", sorted(CLOSING_INPUTS))
def test_malformed_input_closes_only_that_connection(gateway, connect, name):
    with connect() as bystander, connect() as attacker:
        signed_in = len(attacker.received)
        assert metadata_works(bystander)
        attacker.send_raw(CLOSING_INPUTS[name])
        assert attacker.closed_by_peer(timeout=5), f"{name}: the gateway kept the connection open"
        assert len(attacker.received) == signed_in, f"{name}: the gateway answered instead of closing"
        assert metadata_works(bystander)
    assert "closing connection" in gateway.log_text()


def test_apiversions_from_the_future_gets_the_v0_error_response(gateway, connect):
    with connect() as wire:
        wire.send_raw(frame(header(API_VERSIONS, 99, correlation_id=42) + b"\0" * 4))
        correlation_id, body = codec.decode_response_frame(API_VERSIONS, 0, wire.read_frame())
        assert correlation_id == 42
        assert body["error_code"] == UNSUPPORTED_VERSION
        assert [entry["api_key"] for entry in body["api_keys"]] == [API_VERSIONS]
        # The connection stays usable: the client retries with a version it was told.
        assert wire.request(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})[
            "error_code"] == 0


@pytest.mark.parametrize("api_key,version", [(29, 3), (38, 3), (50, 0), (57, 1)])
def test_never_forwarded_apis_get_unsupported_version(gateway, connect, api_key, version):
    """DescribeAcls, CreateDelegationToken, DescribeUserScramCredentials, UpdateFeatures: answered, not forwarded."""
    with connect() as wire:
        body = codec.decode_request(api_key, version, codec.encode_request(api_key, version, {}))
        wire.send_raw(codec.encode_request_frame(api_key, version, 5, "x", body))
        correlation_id, response = codec.decode_response_frame(api_key, version, wire.read_frame())
        assert correlation_id == 5 and response["error_code"] == UNSUPPORTED_VERSION
        assert metadata_works(wire)


def test_advertised_versions_exclude_refused_apis(gateway, connect):
    with connect() as wire:
        body = wire.request(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
    advertised = {entry["api_key"] for entry in body["api_keys"]}
    assert {0, 1, 3, 18} <= advertised
    assert not advertised & {4, 5, 6, 7, 27, 29, 30, 31, 38, 39, 40, 41, 48, 49, 50, 51, 57, 58, 67}


def test_truncated_frame_then_disconnect_leaves_gateway_serving(gateway, connect):
    for _ in range(20):
        with connect() as wire:
            wire.send_raw(struct.pack(">i", 1000) + header(METADATA, 12)[:6])
    with connect() as wire:
        assert metadata_works(wire)


def test_memory_stays_flat_under_a_barrage(gateway, connect):
    """500 hostile connections (and 200 signed-in ones declaring 100 MiB frames they never send) leave RSS flat."""
    workers = [psutil.Process(pid) for pid in gateway.worker_pids()]

    def rss() -> int:
        return sum(p.memory_info().rss for p in workers)

    rng = random.Random(7)
    inputs = list(CLOSING_INPUTS.values())
    for _ in range(50):  # warm-up: first-use allocations are not growth
        with WireClient(gateway.bootstrap) as wire:
            wire.send_raw(rng.choice(inputs))
            wire.closed_by_peer(timeout=5)
    before = rss()
    for _ in range(500):
        with WireClient(gateway.bootstrap) as wire:
            wire.send_raw(rng.choice(inputs))
            wire.closed_by_peer(timeout=5)
    holders = []
    for _ in range(200):
        wire = connect()
        wire.send_raw(struct.pack(">i", 100 * 1024 * 1024) + header(METADATA, 12))
        holders.append(wire)
    time.sleep(1)
    during = rss()
    for wire in holders:
        wire.close()
    growth_mb = (during - before) / 2**20
    assert growth_mb < 40, f"workers grew by {growth_mb:.1f} MiB"
    with connect() as wire:
        assert metadata_works(wire)
