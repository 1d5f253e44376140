"""Bearer-token validation: a client's JWT becomes Claims, or a TokenError with a reason safe to log.

Everything cheap and attacker-controlled is checked before any key is looked up
(size, shape, header, algorithm, kid); pyjwt then verifies the signature, issuer,
audience and required claims against a key from the JwksCache. Header members that
point at keys (``jku``, ``x5u``, ``x5c``, ``jwk``) are never read: keys come only
from the configured JWKS.

pyjwt's own time checks read ``datetime.now()`` and coerce with ``int()`` (a string
"exp" passes, a fraction is cut off), so exp/nbf/iat are checked here instead,
against the injected clock, as JSON numbers only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import get_algorithm_by_name
from jwt.exceptions import (  # InvalidSubjectError is not exported as jwt.InvalidSubjectError
    DecodeError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)

from gateway.auth.jwks import JwksCache, VerificationKey, is_valid_kid
from gateway.config import ASYMMETRIC_ALGORITHMS, OidcSettings

log = logging.getLogger("streamward.tokens")

MAX_TOKEN_BYTES = 16 * 1024  # real access tokens are 1-4 KiB; this bounds parsing work before any check
_LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: later NumericDates are garbage, not timestamps
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
# JWS compact serialization: base64url without padding, three parts; the signature is empty for alg "none".
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SHORT_NAME = re.compile(r"[A-Za-z0-9]{1,16}")
_GROUP_SEPARATORS = re.compile(r"[\s,]+")
_MAX_PRINCIPAL = 256


class TokenError(Exception):
    """A token was refused. ``reason`` is short and safe to log: it never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    subject: str  # the principal, from settings.principal_claim
    groups: tuple[str, ...]
    expires_at: float  # epoch seconds
    issued_at: float
    issuer: str
    raw: dict  # every claim, as verified


class TokenValidator:
    """Validates bearer tokens for one worker; share one instance across its connections."""

    def __init__(self, settings: OidcSettings, keys: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.issuer or not settings.audience:
            raise ValueError("token validation needs an issuer and an audience")
        symmetric = set(settings.algorithms) - set(ASYMMETRIC_ALGORITHMS)
        if symmetric:
            raise ValueError(f"only asymmetric algorithms may verify tokens, not {', '.join(sorted(symmetric))}")
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._issuer = settings.issuer.encode()

    async def validate(self, token: str) -> Claims:
        """The token's verified claims, or TokenError."""
        try:
            key, alg = await self._select_key(token)
        except TokenError:
            self._spend_one_verification(token)
            raise
        claims = self._verify(token, key.key, alg)
        return Claims(
            subject=self._principal(claims),
            groups=self._groups(claims),
            expires_at=float(claims["exp"]),
            issued_at=float(claims["iat"]),
            issuer=claims["iss"],
            raw=claims,
        )

    async def _select_key(self, token: str) -> tuple[VerificationKey, str]:
        """The cheap checks on attacker-controlled input, then the key the header names."""
        if not isinstance(token, str):
            raise TokenError("malformed token")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token too large")
        if not _COMPACT.fullmatch(token):
            raise TokenError("malformed token")
        header = _header(token)
        if "crit" in header:
            # RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
            raise TokenError("unsupported critical header")
        alg = header.get("alg")
        if alg not in self._settings.algorithms:
            shown = alg if isinstance(alg, str) and _SHORT_NAME.fullmatch(alg) else "(invalid)"
            raise TokenError(f"algorithm {shown} not allowed")
        kid = header.get("kid")
        if kid is not None and not is_valid_kid(kid):
            raise TokenError("invalid kid")
        key = await self._keys.key_for(kid)
        if key is None:
            raise TokenError("unknown kid")
        if alg not in key.algorithms:
            raise TokenError(f"algorithm {alg} does not match the key")
        return key, alg

    def _spend_one_verification(self, token: object) -> None:
        """Make a refusal before verification cost what verification costs.

        Otherwise a malformed token is refused in microseconds and a badly signed one after
        a signature check, and the time taken tells which check refused. Padding with a
        sleep cannot hide this: the event loop wakes on millisecond boundaries counted from
        when it went idle, so the work done before the sleep still shows. Instead one real
        verification runs, with a key of the family the header asks for and a dummy
        signature of the right length (the wrong length would be refused without the math).
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            return  # refused on type or size alone, both plain to the sender
        try:
            # pyjwt's strict decoding of all three segments, which jwt.decode would have done.
            alg = jwt.get_unverified_header(token).get("alg")
        except PyJWTError:
            alg = None
        if not isinstance(alg, str):
            alg = None
        key = self._keys.sample_key(alg)
        if key is None:
            return  # no keys at all: nothing verifies, every token is refused alike
        if alg not in key.algorithms:
            alg = min(key.algorithms)
        get_algorithm_by_name(alg).verify(token.rpartition(".")[0].encode(), key.key, _dummy_signature(key.key))

    def _verify(self, token: str, key: Any, alg: str) -> dict:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],  # one algorithm, already matched to the key's type
                issuer=self._settings.issuer,
                audience=self._settings.audience,
                # exp/nbf/iat: checked below against our clock (see the module docstring).
                options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except MissingRequiredClaimError as exc:
            raise TokenError(f"missing claim {exc.claim}") from None
        except InvalidSignatureError:
            raise TokenError("bad signature") from None
        except InvalidIssuerError:
            raise TokenError("issuer mismatch") from None
        except InvalidAudienceError:
            raise TokenError("audience mismatch") from None
        except InvalidSubjectError:
            raise TokenError("malformed claim sub") from None
        except DecodeError:
            raise TokenError("malformed token") from None
        except PyJWTError as exc:
            raise TokenError(f"invalid token ({type(exc).__name__})") from None
        except Exception as exc:  # hostile input must end in TokenError, whatever the crypto layer raises
            log.warning("unexpected %s while verifying a token", type(exc).__name__)
            raise TokenError("invalid token") from None
        # pyjwt 2.10.0 compared the issuer as a substring (CVE-2024-53861) and the project allows
        # pyjwt>=2.8, so the exact match is checked here as well.
        if not hmac.compare_digest(claims["iss"].encode(), self._issuer):
            raise TokenError("issuer mismatch")
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict) -> None:
        now, leeway = self._clock(), self._settings.leeway_s
        exp, iat = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        if exp <= now - leeway:
            raise TokenError("expired")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + leeway:
            raise TokenError("token not yet valid")
        if iat > now + leeway:
            raise TokenError("token issued in the future")

    def _principal(self, claims: dict) -> str:
        name = self._settings.principal_claim
        principal = _claim_at(claims, name)
        if principal is None or principal == "":
            raise TokenError(f"missing claim {name}")
        # The principal goes into ACL decisions, logs and audit records: no control characters.
        if not isinstance(principal, str) or len(principal) > _MAX_PRINCIPAL or not principal.isprintable():
            raise TokenError(f"malformed claim {name}")
        return principal

    def _groups(self, claims: dict) -> tuple[str, ...]:
        value = _claim_at(claims, self._settings.groups_claim)
        if value is None:
            return ()
        if isinstance(value, str):
            names = _GROUP_SEPARATORS.split(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            names = value
        else:
            # Groups grant access; a claim we cannot read must refuse the token, not grant nothing silently.
            raise TokenError(f"malformed claim {self._settings.groups_claim}")
        return tuple(dict.fromkeys(name for name in names if name))


def _dummy_signature(public_key: Any) -> bytes:
    """Bytes of a valid signature's length for this key, with the value in range, so verifying does the math."""
    if isinstance(public_key, rsa.RSAPublicKey):
        size = public_key.key_size // 8
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        size = 2 * ((public_key.curve.key_size + 7) // 8)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        size = 64
    else:
        size = 114  # Ed448
    # The last byte is the most significant of EdDSA's S, which must stay below the group order.
    return b"\x5a" * (size - 1) + b"\x00"


def _header(token: str) -> dict:
    segment = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, orjson.JSONDecodeError):
        raise TokenError("malformed token") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token")
    return header


def _numeric_date(claims: dict, name: str) -> float:
    """RFC 7519 NumericDate: a JSON number (not a string, not a boolean) within a sane range."""
    value = claims[name]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not 0 <= value <= _LATEST_TIME:
        raise TokenError(f"malformed claim {name}")
    return float(value)


def _claim_at(claims: dict, path: str) -> Any:
    """A claim by name, or by dotted path (realm_access.roles) when no claim has that literal name.

    The literal name wins because namespaced claims (https://example.com/roles) contain dots.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def describe(claims: Claims, *, now: float | None = None) -> str:
    """Who a token says its bearer is, for ``streamward whoami``."""
    now = time.time() if now is None else now
    left = claims.expires_at - now
    expiry = datetime.fromtimestamp(claims.expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    remaining = f"in {int(left)} s" if left >= 0 else f"expired {int(-left)} s ago"
    return "\n".join([
        f"principal: {claims.subject}",
        f"groups:    {', '.join(claims.groups) if claims.groups else '(none)'}",
        f"issuer:    {claims.issuer}",
        f"expires:   {expiry} ({remaining})",
    ])


async def whoami(settings: OidcSettings, token: str) -> Claims:
    """Fetch the key set once and validate one token, for the CLI."""
    keys = JwksCache(settings)
    try:
        await keys.start()
        if keys.stats.last_success is None:
            # start() logged the cause; "unknown kid" would point at the token instead of the IdP.
            raise TokenError("cannot fetch the identity provider's signing keys")
        return await TokenValidator(settings, keys).validate(token)
    finally:
        keys.close()
