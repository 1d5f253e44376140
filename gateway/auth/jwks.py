"""The identity provider's signing keys, fetched from its JWKS endpoint and cached per worker.

pyjwt's ``PyJWKClient`` refetches the whole key set on every unknown ``kid`` and
blocks while doing it. Here a token with an unknown kid costs at most one
refresh per ``jwks_min_refresh_s`` for the whole worker: concurrent callers share
the refresh in flight, kids still missing afterwards go into a bounded negative
cache, and every HTTP request runs in a thread so the event loop never waits on
the identity provider.

The only URLs ever fetched are the configured ``jwks_uri``, or the issuer's
discovery document and the ``jwks_uri`` it names. Of a token only its kid reaches
this module, never ``jku`` or ``x5u``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config import ASYMMETRIC_ALGORITHMS, OidcSettings, is_loopback_host

log = logging.getLogger("streamward.jwks")

MAX_KID_LENGTH = 128
_KID = re.compile(r"[A-Za-z0-9._~:+/=-]+")
UNKNOWN_KIDS_MAX = 10_000  # negative cache entries; at ~200 bytes each about 2 MB per worker
MAX_DOCUMENT_BYTES = 1024 * 1024  # real JWKS and discovery documents are a few KiB
MIN_RSA_BITS = 2048

# What each key type may verify. The curve decides the ECDSA algorithm: RFC 7518 binds
# ES256 to P-256 and so on, and a mismatch is an algorithm-confusion attempt.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
# JWK members that hold private key material (RFC 7518 section 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


class JwksError(Exception):
    """A JWKS or discovery URL is not allowed, or a fetched document is unusable."""


@dataclass(frozen=True)
class VerificationKey:
    """One public signing key and the algorithms it may verify (already narrowed to the configured ones)."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any  # a cryptography public key object, as jwt.decode takes it


@dataclass(frozen=True)
class JwksStats:
    fetches: int  # key-set refreshes attempted (discovery and JWKS together count as one)
    failures: int
    last_success: float | None  # the cache's clock() at the last successful refresh
    keys: int
    unknown_kids: int  # entries in the negative cache


def is_valid_kid(kid: object) -> bool:
    """A kid worth looking up: a short string of URL-safe characters. Anything else is refused unseen."""
    return isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH and _KID.fullmatch(kid) is not None


def check_url(url: str, what: str) -> None:
    """Allow https anywhere and plain http only to a loopback host; raise JwksError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises ValueError for a malformed port
    except ValueError as exc:
        raise JwksError(f"{what} {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise JwksError(f"{what} {url!r} must be an https URL")
    if parts.username is not None or parts.password is not None:
        # URLs are logged; credentials in them would leak.
        raise JwksError(f"{what} must not contain credentials")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise JwksError(f"{what} {url!r} must use https (plain http is allowed only to a loopback host)")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would let the server choose a URL the config never named; treat 3xx as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _http_fetcher(settings: OidcSettings) -> Callable[[str], dict]:
    """A blocking GET returning a JSON object; it runs in the cache's thread, never on the event loop."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise JwksError(f"cannot load ca_file {settings.ca_file}: {exc}") from None
    # An https proxy from the environment is honoured (TLS to the IdP stays end to end through
    # CONNECT); plain http is only ever loopback, which must not go through a proxy.
    https_proxy = urllib.request.getproxies().get("https")
    opener = urllib.request.build_opener(
        _NoRedirects(),
        urllib.request.HTTPSHandler(context=context),
        urllib.request.ProxyHandler({"https": https_proxy} if https_proxy else {}),
    )

    def fetch_json(url: str) -> dict:
        # The socket timeout bounds each read, not the whole response: a server dripping bytes
        # would hold the thread for hours. The deadline bounds the total.
        deadline = time.monotonic() + settings.http_timeout_s
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "streamward"})
        with opener.open(request, timeout=settings.http_timeout_s) as response:
            body = bytearray()
            while chunk := response.read1(65536):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"response larger than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise JwksError(f"response took longer than {settings.http_timeout_s} s")
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise JwksError("response is not a JSON object")
        return document

    return fetch_json


class JwksCache:
    """Signing keys for one worker process; use from its event loop."""

    def __init__(self, settings: OidcSettings, *, fetch_json: Callable[[str], dict] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not settings.issuer:
            raise JwksError("an issuer is required")
        if settings.jwks_uri is not None:
            check_url(settings.jwks_uri, "jwks_uri")
            self._discovery_url = None
        else:
            # OpenID Connect Discovery 1.0 section 4: drop a trailing slash before appending.
            self._discovery_url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            check_url(self._discovery_url, "issuer")
        self._settings = settings
        self._algorithms = frozenset(settings.algorithms) & frozenset(ASYMMETRIC_ALGORITHMS)
        if not self._algorithms:
            raise JwksError("no asymmetric signing algorithm is configured")
        self._fetch_json = fetch_json if fetch_json is not None else _http_fetcher(settings)
        self._clock = clock
        # A thread of our own: a hung IdP holds at most this one thread, never the loop's default
        # executor (which also serves getaddrinfo for upstream connections).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jwks")
        self._keys: list[VerificationKey] = []
        self._by_kid: dict[str, VerificationKey] = {}
        self._by_algorithm: dict[str, VerificationKey] = {}
        self._unknown_kids: OrderedDict[str, None] = OrderedDict()
        self._inflight: asyncio.Task[bool] | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._last_attempt: float | None = None
        self._last_success: float | None = None
        self._fetches = 0
        self._failures = 0

    @property
    def stats(self) -> JwksStats:
        return JwksStats(self._fetches, self._failures, self._last_success, len(self._keys), len(self._unknown_kids))

    async def start(self) -> None:
        """Fetch the key set once (a failure is logged, not raised) and refresh it every jwks_refresh_s."""
        ok = await (self._inflight or self._start_refresh())
        self._periodic = asyncio.get_running_loop().create_task(self._refresh_periodically(ok))

    def close(self) -> None:
        for task in (self._periodic, self._inflight):
            if task is not None:
                task.cancel()
        self._periodic = self._inflight = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key for a token's kid, or None. Waits only when an allowed refresh is running, at most http_timeout_s."""
        if kid is not None and not is_valid_kid(kid):
            return None
        key = self._lookup(kid)
        if key is not None:
            return key
        if kid is not None and kid in self._unknown_kids:
            self._unknown_kids.move_to_end(kid)
            return None
        if not await self._refresh_for_unknown_kid():
            return None
        key = self._lookup(kid)
        if key is None and kid is not None:
            # Confirmed absent by a fresh key set: this kid will not trigger another refresh.
            self._unknown_kids[kid] = None
            if len(self._unknown_kids) > UNKNOWN_KIDS_MAX:
                self._unknown_kids.popitem(last=False)
        return key

    def sample_key(self, algorithm: str | None) -> VerificationKey | None:
        """A loaded key for ``algorithm``, else any loaded key: refusals verify once with it, as acceptances do."""
        self._expire_stale_keys()
        return self._by_algorithm.get(algorithm) or next(iter(self._keys), None)

    def _lookup(self, kid: str | None) -> VerificationKey | None:
        self._expire_stale_keys()
        if kid is None:
            # Without a kid only an unambiguous key set will do.
            return self._keys[0] if len(self._keys) == 1 else None
        return self._by_kid.get(kid)

    def _expire_stale_keys(self) -> None:
        """Fail closed: past jwks_max_stale_s without a successful fetch, the old keys may have been revoked."""
        if self._last_success is None or not self._keys:
            return
        age = self._clock() - self._last_success
        if age > self._settings.jwks_max_stale_s:
            log.error("JWKS not refreshed for %.0f s (limit %.0f s): dropping all signing keys",
                      age, self._settings.jwks_max_stale_s)
            self._set_keys([])

    async def _refresh_for_unknown_kid(self) -> bool:
        """Join the refresh in flight or start one if the rate limit allows; True if a fresh key set arrived."""
        task = self._inflight
        if task is None:
            if (self._last_attempt is not None
                    and self._clock() - self._last_attempt < self._settings.jwks_min_refresh_s):
                return False
            task = self._start_refresh()
        try:
            # shield: a caller that gives up or is cancelled must not cancel the refresh others wait on.
            return await asyncio.wait_for(asyncio.shield(task), self._settings.http_timeout_s)
        except TimeoutError:
            return False

    def _start_refresh(self) -> asyncio.Task[bool]:
        self._last_attempt = self._clock()
        self._inflight = asyncio.get_running_loop().create_task(self._refresh())
        return self._inflight

    async def _refresh_periodically(self, ok: bool) -> None:
        while True:
            # After a failure retry sooner, so an IdP outage does not run the key set into jwks_max_stale_s.
            await asyncio.sleep(self._settings.jwks_refresh_s if ok else self._settings.jwks_min_refresh_s)
            ok = await (self._inflight or self._start_refresh())

    async def _refresh(self) -> bool:
        self._fetches += 1
        try:
            jwks_uri = self._settings.jwks_uri or await self._discover()
            keys = _load_keys(await self._fetch(jwks_uri), self._algorithms)
        except Exception as exc:  # anything the IdP sends or fails to send must not end the refresh cycle
            self._failures += 1
            log.warning("JWKS refresh failed: %s: %s", type(exc).__name__, exc)
            self._expire_stale_keys()
            return False
        else:
            self._install(keys)
            return True
        finally:
            self._inflight = None

    async def _discover(self) -> str:
        assert self._discovery_url is not None
        document = await self._fetch(self._discovery_url)
        issuer = document.get("issuer")
        if issuer != self._settings.issuer:
            # OpenID Connect Discovery 1.0 section 4.3: the issuer must match exactly.
            raise JwksError(f"discovery document names issuer {issuer!r:.200}, expected {self._settings.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise JwksError("discovery document has no jwks_uri")
        check_url(jwks_uri, "jwks_uri from discovery")
        return jwks_uri

    async def _fetch(self, url: str) -> dict:
        loop = asyncio.get_running_loop()
        document = await asyncio.wait_for(loop.run_in_executor(self._executor, self._fetch_json, url),
                                          self._settings.http_timeout_s)
        if not isinstance(document, dict):
            raise JwksError(f"{url} did not return a JSON object")
        return document

    def _install(self, keys: list[VerificationKey]) -> None:
        old_kids = self._by_kid.keys()
        self._set_keys(keys)
        if self._by_kid.keys() != old_kids:
            # A kid confirmed absent may exist now; let it trigger a refresh again.
            self._unknown_kids.clear()
        self._last_success = self._clock()
        log.info("JWKS refreshed: %d signing keys", len(keys))

    def _set_keys(self, keys: list[VerificationKey]) -> None:
        by_kid: dict[str, VerificationKey] = {}
        by_algorithm: dict[str, VerificationKey] = {}
        for key in keys:
            if key.kid is not None and by_kid.setdefault(key.kid, key) is not key:
                log.warning("JWKS lists kid %r more than once; using the first", key.kid)
            for algorithm in key.algorithms:
                by_algorithm.setdefault(algorithm, key)
        self._keys, self._by_kid, self._by_algorithm = keys, by_kid, by_algorithm


def _load_keys(document: dict, allowed: frozenset[str]) -> list[VerificationKey]:
    """The usable signing keys of a JWKS document; raise JwksError when there are none (keep the old set)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JwksError("JWKS document has no keys list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            key = _load_key(entry, allowed)
        except Exception as exc:  # a malformed key is skipped; the others still count
            log.warning("JWKS key %.100r skipped: %s", entry.get("kid"), exc)
            continue
        if key is not None:
            keys.append(key)
    if not keys:
        raise JwksError("JWKS document has no usable signing keys")
    return keys


def _load_key(jwk: dict, allowed: frozenset[str]) -> VerificationKey | None:
    """One JWK as a VerificationKey, None when it is not for verifying our tokens; raise when it is broken."""
    kty, kid, use, alg = jwk.get("kty"), jwk.get("kid"), jwk.get("use"), jwk.get("alg")
    if use not in (None, "sig"):
        return None
    if kid is not None and not is_valid_kid(kid):
        raise JwksError("kid is not a short URL-safe string")
    if _PRIVATE_MEMBERS & jwk.keys():
        # A published private key means anyone can sign tokens; never trust it.
        raise JwksError("JWK contains private key material")
    if kty == "RSA":
        key = RSAAlgorithm.from_jwk(jwk)
        if key.key_size < MIN_RSA_BITS:
            raise JwksError(f"RSA key of {key.key_size} bits is below {MIN_RSA_BITS}")
        algorithms = _RSA_ALGORITHMS
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in _EC_ALGORITHMS:
            raise JwksError(f"unsupported curve {crv!r:.20}")
        key = ECAlgorithm.from_jwk(jwk)
        algorithms = frozenset({_EC_ALGORITHMS[crv]})
    elif kty == "OKP":
        if jwk.get("crv") not in _OKP_CURVES:
            raise JwksError(f"unsupported curve {jwk.get('crv')!r:.20}")
        key = OKPAlgorithm.from_jwk(jwk)
        algorithms = frozenset({"EdDSA"})
    else:
        return None  # "oct" (shared secrets) and anything unknown: never a verification key here
    if alg is not None:
        # RFC 7517 section 4.4: a key that names its algorithm is for that algorithm only.
        algorithms = algorithms & {alg}
    algorithms &= allowed
    if not algorithms:
        return None
    return VerificationKey(kid, kty, algorithms, key)
