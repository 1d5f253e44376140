"""Fail-closed version negotiation, answered by the gateway itself.

Clients learn what they may send from ApiVersions. The gateway answers it
locally (before authentication there is no upstream connection to ask) from
the broker's own answer, learned at discovery, cut down to the intersection of
(a) the APIs the gateway forwards, at the versions its message specs know, and
(b) the broker's ranges; plus the APIs the gateway itself serves (ApiVersions,
and the SASL pair when sign-in is on). The broker's features (finalized
metadata, transaction and group versions) pass through unchanged: clients
decide on protocols from them. A client that asks with an ApiVersions version
newer than the gateway's gets the v0 error response Kafka defines.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol import codec, schema
from gateway.protocol.apis import API_VERSIONS, FORWARDED, SASL_AUTHENTICATE, SASL_HANDSHAKE
from gateway.protocol.errors import UNSUPPORTED_VERSION

VersionTable = dict[int, tuple[int, int]]


def spec_versions(api_key: int) -> tuple[int, int]:
    """Versions the gateway can decode in both directions."""
    request, response = schema.REQUESTS[api_key].valid_versions, schema.RESPONSES[api_key].valid_versions
    return max(request[0], response[0]), min(request[1], response[1])


def forwarded_versions(broker: VersionTable) -> VersionTable:
    """What the gateway forwards: its forwarded APIs at versions both it and the broker know."""
    table = {}
    for api_key in FORWARDED:
        if api_key in broker:
            low, high = spec_versions(api_key)
            low, high = max(low, broker[api_key][0]), min(high, broker[api_key][1])
            if low <= high:
                table[api_key] = (low, high)
    return table


def advertised_versions(forwarded: VersionTable, sasl: bool) -> VersionTable:
    """What clients are told: the forwarded APIs plus those the gateway answers itself."""
    table = dict(forwarded)
    table[API_VERSIONS] = spec_versions(API_VERSIONS)
    if sasl:
        table[SASL_HANDSHAKE] = spec_versions(SASL_HANDSHAKE)
        table[SASL_AUTHENTICATE] = spec_versions(SASL_AUTHENTICATE)
    return table


def broker_versions(body: dict[str, Any]) -> VersionTable:
    return {entry["api_key"]: (entry["min_version"], entry["max_version"]) for entry in body["api_keys"]}


def local_response(version: int, correlation_id: int, broker_body: dict[str, Any], advertised: VersionTable) -> bytes:
    """The broker's ApiVersions answer with only the advertised APIs, encoded at the client's version."""
    body = dict(broker_body)
    body["error_code"] = 0
    body["api_keys"] = [{"api_key": api_key, "min_version": low, "max_version": high}
                        for api_key, (low, high) in sorted(advertised.items())]
    return codec.encode_response_frame(API_VERSIONS, version, correlation_id, body)


def too_new_response(correlation_id: int) -> bytes:
    """Kafka's answer to an ApiVersions request of a version it does not know: v0, error 35, our range."""
    low, high = spec_versions(API_VERSIONS)
    body = {"error_code": UNSUPPORTED_VERSION,
            "api_keys": [{"api_key": API_VERSIONS, "min_version": low, "max_version": high}]}
    return codec.encode_response_frame(API_VERSIONS, 0, correlation_id, body)
