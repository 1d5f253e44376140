"""JwksCache against a stand-in identity provider on 127.0.0.1: rate limits, fail-closed staleness, URL rules."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth import jwks
from gateway.auth.jwks import JwksCache, JwksError
from gateway.auth.tokens import TokenError, TokenValidator
from gateway.config import OidcSettings

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://idp.streamward.test/realms/main"
AUDIENCE = "streamward"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KEY_2 = ec.generate_private_key(ec.SECP256R1())


class IdpServer:
    """An identity provider on 127.0.0.1 serving JSON documents by path, recording every request."""

    def __init__(self) -> None:
        self.documents: dict[str, dict] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[str] = []
        self.delay_s = 0.0
        self.drip_s = 0.0  # pause between bytes of the body: a server that never quite stops sending
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests.append(self.path)
                time.sleep(idp.delay_s)
                if self.path in idp.redirects:
                    self.send_response(302)
                    self.send_header("Location", idp.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                document = idp.documents.get(self.path)
                body = orjson.dumps(document if document is not None else {"error": "not found"})
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if idp.drip_s:
                        for byte in body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(idp.drip_s)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout tests)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, path: str) -> int:
        return self.requests.count(path)

    def stop(self) -> None:
        """Shut down and close the socket: later connections are refused."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def jwk_for(private_key, kid: str | None, **members: object) -> dict:
    """The public JWK of a private key, as an identity provider publishes it."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(members)
    return jwk


def claims(now: float | None = None, **overrides: object) -> dict:
    now = time.time() if now is None else now
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(now) - 10, "exp": int(now) + 600}
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def sign(private_key, algorithm: str, kid: str | None, payload: dict, **headers: object) -> str:
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(payload, private_key, algorithm=algorithm, headers=headers)


def unsigned(header: dict, payload: dict, signature: bytes = b"\x00" * 64) -> str:
    """A token with any header and a signature nobody made, for the checks that run before verification."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return ".".join([b64(orjson.dumps(header)), b64(orjson.dumps(payload)), b64(signature)])


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp():
    server = IdpServer()
    server.documents["/jwks"] = {"keys": [jwk_for(EC_KEY, "ec1")]}
    yield server
    server.stop()


def settings_for(idp: IdpServer, **overrides: object) -> OidcSettings:
    values = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": idp.url + "/jwks"}
    values.update(overrides)
    return OidcSettings(**values)


def test_start_fetches_once_and_known_kids_need_no_request(idp):
    async def main():
        cache = JwksCache(settings_for(idp))
        await cache.start()
        try:
            for _ in range(100):
                assert (await cache.key_for("ec1")).algorithms == {"ES256"}
        finally:
            cache.close()
        return cache.stats

    stats = asyncio.run(main())
    assert idp.count("/jwks") == 1
    assert (stats.fetches, stats.failures, stats.keys) == (1, 0, 1)
    assert stats.last_success is not None


def test_unknown_kids_refresh_at_most_once_per_min_interval(idp):
    clock = FakeClock()

    async def main():
        cache = JwksCache(settings_for(idp, jwks_min_refresh_s=30.0), clock=clock)
        await cache.start()
        try:
            # Within 30 s of the last fetch: refused at once, and not remembered as absent.
            assert await cache.key_for("new-1") is None
            assert idp.count("/jwks") == 1
            clock.now += 31
            assert await cache.key_for("new-1") is None  # one refresh, still absent: remembered
            assert idp.count("/jwks") == 2
            clock.now += 31
            assert await cache.key_for("new-1") is None  # remembered: no refresh even though one is allowed
            assert idp.count("/jwks") == 2
            # The IdP rotates in a new key: the next unknown kid refreshes and finds it.
            idp.documents["/jwks"] = {"keys": [jwk_for(EC_KEY, "ec1"), jwk_for(EC_KEY_2, "ec2")]}
            assert await cache.key_for("ec2") is not None
            assert idp.count("/jwks") == 3
            assert cache.stats.unknown_kids == 0  # the kid set changed, so absences are forgotten
        finally:
            cache.close()

    asyncio.run(main())


def test_random_kid_flood_neither_floods_the_idp_nor_stalls_the_loop(idp):
    """10,000 tokens with random kids: a handful of JWKS requests, and the event loop stays responsive."""
    clock = FakeClock()
    settings = settings_for(idp, jwks_min_refresh_s=30.0, http_timeout_s=5.0)
    good = sign(EC_KEY, "ES256", "ec1", claims())

    async def main():
        loop = asyncio.get_running_loop()
        cache = JwksCache(settings, clock=clock)
        await cache.start()
        validator = TokenValidator(settings, cache)
        idp.delay_s = 0.3  # a slow IdP: blocking the loop on it would show as 300 ms stalls
        clock.now += 31  # a refresh is allowed again, so the flood gets exactly one
        lateness = []
        done = asyncio.Event()

        async def probe():
            while not done.is_set():
                started = loop.time()
                await asyncio.sleep(0.001)
                lateness.append(loop.time() - started - 0.001)

        async def timed_good():
            started = loop.time()
            await validator.validate(good)
            return loop.time() - started

        probe_task = asyncio.create_task(probe())
        reasons: dict[str, int] = {}
        good_latency = None
        started = loop.time()
        for batch in range(200):
            forged = [unsigned({"alg": "ES256", "kid": secrets.token_urlsafe(12)}, claims()) for _ in range(50)]
            calls = [validator.validate(token) for token in forged]
            if batch == 0:  # while the one refresh is in flight, a known kid still validates at once
                calls.append(timed_good())
            results = await asyncio.gather(*calls, return_exceptions=True)
            if batch == 0:
                good_latency = results.pop()
            for result in results:
                assert isinstance(result, TokenError), result
                reasons[result.reason] = reasons.get(result.reason, 0) + 1
        elapsed = loop.time() - started
        done.set()
        await probe_task
        stats = cache.stats
        cache.close()
        return reasons, good_latency, lateness, elapsed, stats

    reasons, good_latency, lateness, elapsed, stats = asyncio.run(main())
    lateness.sort()
    p50, p99, worst = lateness[len(lateness) // 2], lateness[len(lateness) * 99 // 100], lateness[-1]
    print(f"\n10,000 random kids in {elapsed:.2f} s; JWKS requests {idp.count('/jwks')}; "
          f"good token during the refresh {good_latency * 1000:.1f} ms; a 1 ms sleep late by "
          f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {worst * 1000:.2f} ms")
    assert reasons == {"unknown kid": 10_000}
    assert idp.count("/jwks") == 2  # the start, and one refresh shared by the first batch
    assert good_latency < 0.05
    # A fetch on the loop would stall it for 300 ms. What remains is the refusals' own CPU time
    # (50 per batch, one signature check each) and the odd garbage collection; a busy CI box doubles it.
    assert p99 < 0.05
    assert worst < 0.15
    assert stats.unknown_kids == 50  # the first batch waited for the refresh; later kids were rate-limited
    assert elapsed < 10


def test_concurrent_callers_share_one_refresh_and_wait_at_most_the_timeout(idp):
    idp.delay_s = 1.0
    settings = settings_for(idp, http_timeout_s=0.2)

    async def main():
        cache = JwksCache(settings)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(cache.key_for(f"kid-{i}") for i in range(500)))
            return results, time.monotonic() - started
        finally:
            cache.close()

    results, elapsed = asyncio.run(main())
    assert results == [None] * 500
    assert elapsed < 0.8
    assert idp.count("/jwks") == 1


def test_a_server_dripping_bytes_cannot_hold_the_fetch_thread(idp):
    idp.drip_s = 0.01  # each byte well within the socket timeout, the whole body far beyond it
    clock = FakeClock()

    async def main():
        cache = JwksCache(settings_for(idp, http_timeout_s=0.3), clock=clock)
        try:
            started = time.monotonic()
            await cache.start()
            first = time.monotonic() - started
            idp.drip_s = 0.0
            clock.now += 31
            # The one fetch thread is free again: the next refresh succeeds.
            return first, await cache.key_for("ec1"), cache.stats
        finally:
            cache.close()

    first, key, stats = asyncio.run(main())
    assert first < 0.5
    assert key is not None
    assert (stats.fetches, stats.failures) == (2, 1)


def test_negative_cache_is_bounded_and_least_recently_used_goes_first(idp, monkeypatch):
    monkeypatch.setattr(jwks, "UNKNOWN_KIDS_MAX", 3)
    clock = FakeClock()

    async def main():
        cache = JwksCache(settings_for(idp, jwks_min_refresh_s=30.0), clock=clock)
        try:
            for kid in ("a", "b", "c"):
                clock.now += 31
                assert await cache.key_for(kid) is None
            assert await cache.key_for("a") is None  # touch "a": "b" is now the oldest
            clock.now += 31
            assert await cache.key_for("d") is None  # evicts "b"
            assert cache.stats.unknown_kids == 3
            requests = idp.count("/jwks")
            clock.now += 31
            assert await cache.key_for("a") is None  # still cached: no request
            assert idp.count("/jwks") == requests
            assert await cache.key_for("b") is None  # evicted: refreshes again
            assert idp.count("/jwks") == requests + 1
        finally:
            cache.close()

    asyncio.run(main())


@pytest.mark.parametrize("kid", ["' OR 1=1 --", "x" * 10_240, "a" * 129, "", "kid\nX-Injected: 1", "ké", "$(id)"])
def test_malformed_kids_are_refused_without_any_lookup(idp, kid):
    async def main():
        cache = JwksCache(settings_for(idp))
        try:
            return await cache.key_for(kid)
        finally:
            cache.close()

    assert asyncio.run(main()) is None
    assert idp.requests == []


def test_idp_down_keeps_known_keys_fails_new_kids_and_drops_keys_when_stale(idp):
    clock = FakeClock()
    settings = settings_for(idp, jwks_min_refresh_s=30.0, jwks_max_stale_s=3600.0, http_timeout_s=1.0)
    token = sign(EC_KEY, "ES256", "ec1", claims())
    new_kid_token = sign(EC_KEY_2, "ES256", "ec2", claims())

    async def main():
        cache = JwksCache(settings, clock=clock)
        await cache.start()
        validator = TokenValidator(settings, cache)
        idp.stop()
        try:
            clock.now += 60
            assert (await validator.validate(token)).subject == "alice"
            with pytest.raises(TokenError) as refused:
                await validator.validate(new_kid_token)  # a refresh is tried, fails: closed
            assert refused.value.reason == "unknown kid"
            assert (cache.stats.fetches, cache.stats.failures) == (2, 1)
            clock.now += 3000  # 3060 s after the last success: still inside the 3600 s window
            assert (await validator.validate(token)).subject == "alice"
            clock.now += 541  # 3601 s: the keys may have been revoked meanwhile
            with pytest.raises(TokenError) as refused:
                await validator.validate(token)
            assert refused.value.reason == "unknown kid"
            assert cache.stats.keys == 0
        finally:
            cache.close()

    asyncio.run(main())


def test_scheduled_refresh_runs_and_stops_on_close(idp):
    async def main():
        cache = JwksCache(settings_for(idp, jwks_refresh_s=0.1))
        await cache.start()
        await asyncio.sleep(0.35)
        cache.close()
        during = idp.count("/jwks")
        await asyncio.sleep(0.25)
        return during, idp.count("/jwks")

    during, after = asyncio.run(main())
    assert during >= 3
    assert after == during


def test_discovery_finds_the_jwks_uri(idp):
    issuer = idp.url + "/realms/main"
    idp.documents["/realms/main/.well-known/openid-configuration"] = {"issuer": issuer, "jwks_uri": idp.url + "/jwks"}

    async def main():
        cache = JwksCache(OidcSettings(issuer=issuer, audience=AUDIENCE))
        await cache.start()
        try:
            return await cache.key_for("ec1")
        finally:
            cache.close()

    assert asyncio.run(main()) is not None
    assert idp.requests == ["/realms/main/.well-known/openid-configuration", "/jwks"]


@pytest.mark.parametrize("document", [
    {"issuer": "{url}/realms/main/", "jwks_uri": "{url}/jwks"},  # trailing slash: not the same issuer
    {"issuer": "{url}/realms/mai", "jwks_uri": "{url}/jwks"},  # a prefix
    {"issuer": "{url}/realms/main-evil", "jwks_uri": "{url}/jwks"},
    {"jwks_uri": "{url}/jwks"},
    {"issuer": "{url}/realms/main", "jwks_uri": "http://idp.streamward.test/jwks"},  # plain http, not loopback
    {"issuer": "{url}/realms/main", "jwks_uri": "file:///etc/passwd"},
    {"issuer": "{url}/realms/main"},
])
def test_discovery_refused_when_issuer_or_jwks_uri_is_wrong(idp, document):
    issuer = idp.url + "/realms/main"
    idp.documents["/realms/main/.well-known/openid-configuration"] = {
        name: value.format(url=idp.url) for name, value in document.items()}

    async def main():
        cache = JwksCache(OidcSettings(issuer=issuer, audience=AUDIENCE))
        await cache.start()
        try:
            return await cache.key_for("ec1"), cache.stats
        finally:
            cache.close()

    key, stats = asyncio.run(main())
    assert key is None
    assert (stats.fetches, stats.failures, stats.keys) == (1, 1, 0)
    assert idp.count("/jwks") == 0


@pytest.mark.parametrize(("issuer", "jwks_uri"), [
    (ISSUER, "http://idp.streamward.test/jwks"),
    ("http://idp.streamward.test/realms/main", None),  # discovery over plain http
    (ISSUER, "http://10.0.0.1/jwks"),
    (ISSUER, "http://127.0.0.1.nip.io/jwks"),
    (ISSUER, "http://localhost.streamward.test/jwks"),
    (ISSUER, "ftp://idp.streamward.test/jwks"),
    (ISSUER, "file:///etc/passwd"),
    (ISSUER, "https://user:secret@idp.streamward.test/jwks"),
    (ISSUER, "https:///jwks"),
    (ISSUER, "https://idp.streamward.test:99999/jwks"),
])
def test_urls_other_than_https_or_loopback_http_are_refused_at_construction(issuer, jwks_uri):
    with pytest.raises(JwksError):
        JwksCache(OidcSettings(issuer=issuer, audience=AUDIENCE, jwks_uri=jwks_uri))


@pytest.mark.parametrize("jwks_uri", [
    "https://idp.streamward.test/jwks", "http://127.0.0.1:8080/jwks", "http://127.8.9.10/jwks",
    "http://localhost:8080/jwks", "http://[::1]:8080/jwks",
])
def test_https_and_loopback_http_are_allowed(jwks_uri):
    JwksCache(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=jwks_uri)).close()


def test_redirects_are_not_followed(idp):
    idp.redirects["/jwks"] = idp.url + "/elsewhere"
    idp.documents["/elsewhere"] = {"keys": [jwk_for(EC_KEY, "ec1")]}

    async def main():
        cache = JwksCache(settings_for(idp))
        await cache.start()
        try:
            return await cache.key_for("ec1"), cache.stats.failures
        finally:
            cache.close()

    assert asyncio.run(main()) == (None, 1)
    assert idp.count("/elsewhere") == 0


def test_oversize_documents_are_refused(idp):
    idp.documents["/jwks"] = {"keys": [jwk_for(EC_KEY, "ec1")], "padding": "x" * jwks.MAX_DOCUMENT_BYTES}

    async def main():
        cache = JwksCache(settings_for(idp))
        await cache.start()
        try:
            return await cache.key_for("ec1"), cache.stats.failures
        finally:
            cache.close()

    assert asyncio.run(main()) == (None, 1)


def test_only_asymmetric_signing_keys_are_loaded(idp):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    private_ec = ECAlgorithm.to_jwk(EC_KEY_2, as_dict=True)
    idp.documents["/jwks"] = {"keys": [
        jwk_for(rsa_key, "rsa-sig", use="sig"),
        jwk_for(rsa_key, "rsa-enc", use="enc"),
        jwk_for(weak_rsa, "rsa-1024"),
        jwk_for(EC_KEY, "ec-as-rs256", alg="RS256"),  # alg contradicts kty
        jwk_for(EC_KEY, "ec-es256", alg="ES256"),
        jwk_for(ed_key, "ed"),
        {**private_ec, "kid": "ec-private"},
        {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"secret" * 8).decode()},
        {"kty": "XYZ", "kid": "strange"},
        {"kty": "EC", "kid": "ec-k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "rsa-broken", "n": 17, "e": "AQAB"},
        jwk_for(EC_KEY, "bad kid with spaces"),
        "not a key",
    ]}

    async def main():
        cache = JwksCache(settings_for(idp))
        await cache.start()
        try:
            kids = ["rsa-sig", "rsa-enc", "rsa-1024", "ec-as-rs256", "ec-es256", "ed", "ec-private", "hmac",
                    "strange", "ec-k1", "rsa-broken"]
            return {kid: await cache.key_for(kid) for kid in kids}, cache.stats.keys
        finally:
            cache.close()

    keys, count = asyncio.run(main())
    assert {kid for kid, key in keys.items() if key is not None} == {"rsa-sig", "ec-es256", "ed"}
    assert count == 3
    assert keys["rsa-sig"].algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert keys["ed"].algorithms == {"EdDSA"}


def test_keys_are_narrowed_to_the_configured_algorithms(idp):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.documents["/jwks"] = {"keys": [jwk_for(rsa_key, "rsa"), jwk_for(EC_KEY, "ec1")]}

    async def main():
        cache = JwksCache(settings_for(idp, algorithms=("PS256",)))
        await cache.start()
        try:
            return await cache.key_for("rsa"), await cache.key_for("ec1")
        finally:
            cache.close()

    rsa_entry, ec_entry = asyncio.run(main())
    assert rsa_entry.algorithms == {"PS256"}
    assert ec_entry is None


def test_a_token_without_kid_uses_the_only_key(idp):
    clock = FakeClock()

    async def main():
        cache = JwksCache(settings_for(idp), clock=clock)
        await cache.start()
        try:
            single = await cache.key_for(None)
            idp.documents["/jwks"] = {"keys": [jwk_for(EC_KEY, "ec1"), jwk_for(EC_KEY_2, "ec2")]}
            clock.now += 31
            assert await cache.key_for("ec2") is not None
            return single, await cache.key_for(None)
        finally:
            cache.close()

    single, ambiguous = asyncio.run(main())
    assert single is not None and single.kid == "ec1"
    assert ambiguous is None


def test_fetches_run_in_a_thread_not_on_the_event_loop():
    threads = []

    def fetch_json(url: str) -> dict:
        threads.append(threading.current_thread().name)
        return {"keys": [jwk_for(EC_KEY, "ec1")]}

    async def main():
        cache = JwksCache(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=ISSUER + "/jwks"),
                          fetch_json=fetch_json)
        await cache.start()
        cache.close()

    asyncio.run(main())
    assert len(threads) == 1 and threads[0].startswith("jwks")
