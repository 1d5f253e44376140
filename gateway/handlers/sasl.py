"""Client sign-in, terminated at the gateway: SaslHandshake (v0, v1) and SaslAuthenticate (v0-v2).

The client's SASL bytes never go upstream. A bearer token is validated against
the IdP's keys; the result is a Principal for the connection and a session
lifetime (KIP-368) equal to the time left on the token. Failures answer
SASL_AUTHENTICATION_FAILED at once (Kafka's RFC 7628 error challenge breaks
franz-go and fools aiokafka) with a message that names no token and no key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import Principal
from gateway.auth.sasl import SaslError, parse_oauthbearer, parse_plain
from gateway.protocol import codec
from gateway.protocol.apis import SASL_AUTHENTICATE, SASL_HANDSHAKE
from gateway.protocol.errors import ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM

log = logging.getLogger("streamward.auth")

OAUTHBEARER = "OAUTHBEARER"
PLAIN = "PLAIN"
FAILED_MESSAGE = "Authentication failed: invalid or expired token"


class AuthFailure(Exception):
    """Sign-in refused; ``reason`` is precise and safe to log, the client only sees FAILED_MESSAGE."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignIn:
    principal: Principal
    lifetime_ms: int


def mechanisms(plain_enabled: bool) -> list[str]:
    return [OAUTHBEARER, PLAIN] if plain_enabled else [OAUTHBEARER]


def handshake(frame: Any, version: int, correlation_id: int, enabled: list[str]) -> tuple[bytes, str | None]:
    """Answer SaslHandshake; returns the response and the chosen mechanism (None if not offered)."""
    _, body = codec.decode_request_frame(frame)
    chosen = body["mechanism"] if body["mechanism"] in enabled else None
    response = {"error_code": 0 if chosen else UNSUPPORTED_SASL_MECHANISM, "mechanisms": enabled}
    return codec.encode_response_frame(SASL_HANDSHAKE, version, correlation_id, response), chosen


def authenticate_response(version: int, correlation_id: int, outcome: SignIn | AuthFailure) -> bytes:
    if isinstance(outcome, SignIn):
        body = {"error_code": 0, "auth_bytes": b"", "session_lifetime_ms": outcome.lifetime_ms}
    else:
        body = {"error_code": SASL_AUTHENTICATION_FAILED, "error_message": FAILED_MESSAGE, "auth_bytes": b""}
    return codec.encode_response_frame(SASL_AUTHENTICATE, version, correlation_id, body)


def out_of_order_response(version: int, correlation_id: int) -> bytes:
    body = {"error_code": ILLEGAL_SASL_STATE, "error_message": "SaslAuthenticate before SaslHandshake",
            "auth_bytes": b""}
    return codec.encode_response_frame(SASL_AUTHENTICATE, version, correlation_id, body)


Validate = Callable[[str], Awaitable[Any]]  # token -> Claims (subject, groups, expires_at), or raises


async def sign_in(mechanism: str, auth_bytes: bytes, validate: Validate, client_address: str,
                  client_id: str | None, token_error: type[Exception]) -> SignIn:
    """Check the client's SASL message and token; raise AuthFailure with the reason."""
    try:
        if mechanism == OAUTHBEARER:
            message = parse_oauthbearer(auth_bytes)
            authzid, token = message.authzid, message.token
        else:
            authzid, _username, token = parse_plain(auth_bytes)
    except SaslError as exc:
        raise AuthFailure(str(exc)) from None
    try:
        claims = await validate(token)
    except token_error as exc:
        raise AuthFailure(getattr(exc, "reason", str(exc))) from None
    if authzid and authzid != claims.subject:
        # CVE-2017-12610: the authorization id must not name someone else.
        raise AuthFailure("authzid differs from the token's principal")
    lifetime_ms = int((claims.expires_at - time.time()) * 1000)
    if lifetime_ms <= 0:
        raise AuthFailure("token expired")
    principal = Principal(claims.subject, tuple(claims.groups), claims.expires_at, client_address, client_id,
                          mechanism)
    return SignIn(principal, lifetime_ms)
