"""Fail-closed version negotiation.

Clients learn what they may send from ApiVersions; the gateway rewrites that
answer to the intersection of (a) the APIs it forwards, at the versions its
message specs know, and (b) the broker's ranges. A client that asks with an
ApiVersions version newer than the gateway's gets the v0 error response Kafka
defines, listing the ApiVersions range it may retry with.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol import codec, schema
from gateway.protocol.apis import API_VERSIONS, FORWARDED
from gateway.protocol.errors import UNSUPPORTED_VERSION

VersionTable = dict[int, tuple[int, int]]


def gateway_versions() -> VersionTable:
    """Versions the gateway can decode in both directions, for every API it forwards."""
    table = {}
    for api_key in FORWARDED:
        request, response = schema.REQUESTS[api_key].valid_versions, schema.RESPONSES[api_key].valid_versions
        low, high = max(request[0], response[0]), min(request[1], response[1])
        if low <= high:
            table[api_key] = (low, high)
    return table


def intersect(gateway: VersionTable, broker: VersionTable) -> VersionTable:
    table = {}
    for api_key, (low, high) in gateway.items():
        if api_key in broker:
            broker_low, broker_high = broker[api_key]
            low, high = max(low, broker_low), min(high, broker_high)
            if low <= high:
                table[api_key] = (low, high)
    return table


def broker_versions(body: dict[str, Any]) -> VersionTable:
    return {entry["api_key"]: (entry["min_version"], entry["max_version"]) for entry in body["api_keys"]}


def filter_response(body: dict[str, Any], version: int, allowed: VersionTable) -> bool:
    """Advertise only what the gateway will forward; returns True (the body always changes)."""
    kept = []
    for entry in body["api_keys"]:
        negotiated = allowed.get(entry["api_key"])
        if negotiated is not None:
            kept.append({**entry, "min_version": negotiated[0], "max_version": negotiated[1]})
    body["api_keys"] = kept
    return True


def too_new_response(correlation_id: int) -> bytes:
    """Kafka's answer to an ApiVersions request of a version it does not know: v0, error 35, our range."""
    high = gateway_versions()[API_VERSIONS][1]
    body = {"error_code": UNSUPPORTED_VERSION, "api_keys": [{"api_key": API_VERSIONS, "min_version": 0,
                                                              "max_version": high}]}
    return codec.encode_response_frame(API_VERSIONS, 0, correlation_id, body)
