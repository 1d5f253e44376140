"""Sign-in at the gateway: forged tokens refused before any upstream connection, sessions end with their tokens."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import secrets
import statistics
import struct
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dev.idp import DevIdp
from gateway.dev.process import GatewayProcess
from gateway.protocol import codec
from gateway.protocol.apis import API_VERSIONS, FETCH, METADATA, SASL_AUTHENTICATE, SASL_HANDSHAKE
from gateway.protocol.errors import SASL_AUTHENTICATION_FAILED
from tests.gateway_fixtures import oidc_overrides
from tests.wire import WireClient


def upstream_connects(gateway) -> int:
    time.sleep(1.2)  # workers publish their counters once a second
    return sum(w["upstream_connects_total"] for w in gateway.health()["workers"])


def metadata(wire: WireClient) -> dict:
    return wire.request(METADATA, 12, {"topics": [], "allow_auto_topic_creation": False})


class RecordingServer:
    """A local HTTP server that only counts requests: a token's jku must never make the gateway call it."""

    def __init__(self) -> None:
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.hits += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"keys": []}')

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def close(self) -> None:
        self.server.shutdown()


def forged_tokens(idp, jku_url: str) -> dict[str, str]:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "alg none": idp.mint("etl-job", algorithm="none"),
        "HS256 with the RSA public key": idp.mint("etl-job", algorithm="HS256"),
        "algorithm outside the allowed list (HS512)": idp.mint("etl-job", algorithm="HS512", key=b"k" * 64),
        "unknown kid": idp.mint("etl-job", key=other_key, headers={"kid": "not-a-known-kid"}),
        "kid with path traversal": idp.mint("etl-job", key=other_key, headers={"kid": "../../etc/passwd"}),
        "kid with injection": idp.mint("etl-job", key=other_key, headers={"kid": "' OR 1=1 --"}),
        "kid of 10 KB": idp.mint("etl-job", key=other_key, headers={"kid": "k" * 10_000}),
        "jku pointing elsewhere": idp.mint("etl-job", key=other_key, headers={"kid": "jku-kid", "jku": jku_url}),
        "missing exp": idp.mint("etl-job", extra_claims={"exp": None}),
        "missing iat": idp.mint("etl-job", extra_claims={"iat": None}),
        "missing iss": idp.mint("etl-job", extra_claims={"iss": None}),
        "missing aud": idp.mint("etl-job", extra_claims={"aud": None}),
        "missing sub": idp.mint("etl-job", extra_claims={"sub": None}),
        "expired beyond leeway": idp.mint("etl-job", lifetime_s=-120),
        "nbf in the future": idp.mint("etl-job", extra_claims={"nbf": int(time.time()) + 600}),
        "issuer that is a prefix": idp.mint("etl-job", issuer=idp.issuer[:-1]),
        "audience list without ours": idp.mint("etl-job", audience=["other", "streamward-prod"]),
        "unknown crit header": idp.mint("etl-job", headers={"crit": ["exp-policy"], "exp-policy": 1}),
        "signed by another key under a real kid": idp.mint("etl-job", key=other_key),
    }


def test_forged_and_bad_tokens_are_refused_without_touching_kafka(gateway, idp):
    jku = RecordingServer()
    try:
        tokens = forged_tokens(idp, jku.url)
        before = upstream_connects(gateway)
        for name, token in tokens.items():
            with WireClient(gateway.bootstrap) as wire:
                answer = wire.sign_in(token)
                assert answer["error_code"] == SASL_AUTHENTICATION_FAILED, name
                assert token not in (answer.get("error_message") or ""), name
                assert wire.closed_by_peer(timeout=5), f"{name}: connection stayed open"
        assert upstream_connects(gateway) == before, "a refused sign-in opened an upstream connection"
        assert jku.hits == 0, "the gateway fetched a URL named by a token"
    finally:
        jku.close()
    log = gateway.log_text()
    assert "sign-in failed" in log
    for token in tokens.values():
        assert token.split(".")[1] not in log, "a token reached the log"


@pytest.mark.parametrize("case", ["authzid of someone else", "wrong scheme", "token over the pre-auth cap"])
def test_bad_sasl_messages_are_refused(gateway, idp, case):
    token = idp.mint("etl-job")
    with WireClient(gateway.bootstrap) as wire:
        if case == "token over the pre-auth cap":
            wire.request(SASL_HANDSHAKE, 1, {"mechanism": "OAUTHBEARER"})
            big = b"n,,\x01auth=Bearer " + b"a" * 200_000 + b"\x01\x01"
            wire.send_raw(codec.encode_request_frame(SASL_AUTHENTICATE, 2, 9, "t", {"auth_bytes": big}))
            assert wire.closed_by_peer(timeout=5)
            return
        if case == "authzid of someone else":
            answer = wire.sign_in(token, authzid="admin")
        else:
            wire.request(SASL_HANDSHAKE, 1, {"mechanism": "OAUTHBEARER"})
            answer = wire.request(SASL_AUTHENTICATE, 2, {"auth_bytes": f"n,,\x01auth=Basic {token}\x01\x01".encode()})
        assert answer["error_code"] == SASL_AUTHENTICATION_FAILED
        assert wire.closed_by_peer(timeout=5)


@pytest.mark.parametrize("api_key,version,body", [
    (METADATA, 12, {"topics": [], "allow_auto_topic_creation": False}),
    (FETCH, 12, {"replica_id": -1, "topics": []}),
])
def test_only_three_apis_before_sign_in(gateway, api_key, version, body):
    with WireClient(gateway.bootstrap) as wire:
        versions = wire.request(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        assert {SASL_HANDSHAKE, SASL_AUTHENTICATE} <= {entry["api_key"] for entry in versions["api_keys"]}
        answered = len(wire.received)
        wire.send_raw(codec.encode_request_frame(api_key, version, 5, "t", body))
        assert wire.closed_by_peer(timeout=5)
        assert len(wire.received) == answered, "the gateway answered a request before sign-in"
    assert "before authentication" in gateway.log_text()


def test_valid_sign_in_reports_the_session_lifetime(gateway, idp):
    token = idp.mint("etl-job", groups=["etl"], lifetime_s=600)
    with WireClient(gateway.bootstrap) as wire:
        answer = wire.sign_in(token)
        assert answer["error_code"] == 0
        assert 590_000 <= answer["session_lifetime_ms"] <= 600_000
        assert metadata(wire)["brokers"]
    assert "signed in principal=etl-job groups=etl" in gateway.log_text()


def test_plain_with_the_token_as_password(gateway, idp):
    with WireClient(gateway.bootstrap) as wire:
        assert wire.sign_in(idp.mint("etl-job"), mechanism="PLAIN")["error_code"] == 0
        assert metadata(wire)["brokers"]
    with WireClient(gateway.bootstrap) as wire:
        assert wire.sign_in("not-a-token", mechanism="PLAIN")["error_code"] == SASL_AUTHENTICATION_FAILED


def test_connection_closes_when_its_token_expires_even_during_a_long_poll(gateway, idp, make_topic):
    topic = make_topic("expiry", partitions=1)
    with WireClient(gateway.bootstrap) as wire:
        assert wire.sign_in(idp.mint("etl-job"))["error_code"] == 0
        leader = wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})[
            "topics"][0]["partitions"][0]["leader_id"]
    wire = WireClient(f"127.0.0.1:{gateway.port_base + leader}")
    token = idp.mint("etl-job", lifetime_s=4)
    assert wire.sign_in(token)["error_code"] == 0
    signed_in = time.monotonic()
    fetch = {"replica_id": -1, "max_wait_ms": 30_000, "min_bytes": 1, "max_bytes": 1 << 20, "topics": [
        {"topic": topic, "partitions": [{"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}]}
    wire.send_raw(codec.encode_request_frame(FETCH, 12, 50, "t", fetch))
    assert wire.closed_by_peer(timeout=10), "the connection outlived its token"
    lived = time.monotonic() - signed_in
    assert 2.0 < lived < 5.5, lived
    wire.close()


def test_reauthentication_keeps_the_connection_and_a_new_principal_closes_it(gateway, idp):
    with WireClient(gateway.bootstrap) as wire:
        assert wire.sign_in(idp.mint("etl-job", lifetime_s=3))["error_code"] == 0
        time.sleep(1)
        answer = wire.sign_in(idp.mint("etl-job", lifetime_s=60))
        assert answer["error_code"] == 0 and answer["session_lifetime_ms"] > 50_000
        time.sleep(3)  # past the first token's expiry
        assert metadata(wire)["brokers"]
        assert wire.sign_in(idp.mint("analyst", lifetime_s=60))["error_code"] == SASL_AUTHENTICATION_FAILED
        assert wire.closed_by_peer(timeout=5)


async def _sign_in_raw(port: int, message: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(codec.encode_request_frame(SASL_HANDSHAKE, 1, 1, "storm", {"mechanism": "OAUTHBEARER"}))
        writer.write(codec.encode_request_frame(SASL_AUTHENTICATE, 2, 2, "storm", {"auth_bytes": message}))
        await writer.drain()
        for _ in range(2):
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            await reader.readexactly(size)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def test_random_kid_storm_neither_floods_the_idp_nor_stalls_others(gateway, idp):
    """10,000 sign-ins with random kids: a handful of JWKS fetches; a signed-in client keeps its latency."""
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    template = idp.mint("etl-job", key=other_key, headers={"kid": "KID"})
    head, payload, signature = template.split(".")

    def with_kid(kid: str) -> bytes:
        header = json.loads(base64.urlsafe_b64decode(head + "=="))
        header["kid"] = kid
        encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        return f"n,,\x01auth=Bearer {encoded}.{payload}.{signature}\x01\x01".encode()

    messages = [with_kid(secrets.token_hex(8)) for _ in range(10_000)]
    jwks_before = idp.request_counts["/jwks"]
    bystander = WireClient(gateway.bootstrap)
    assert bystander.sign_in(idp.mint("etl-job"))["error_code"] == 0
    baseline = []
    for _ in range(20):
        started = time.perf_counter()
        metadata(bystander)
        baseline.append(time.perf_counter() - started)

    async def storm() -> None:
        queue = list(messages)

        async def worker() -> None:
            while queue:
                await _sign_in_raw(gateway.port_base, queue.pop())

        await asyncio.gather(*(worker() for _ in range(32)))

    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            metadata(bystander)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        asyncio.run(storm())
    finally:
        stop.set()
        prober.join()
        bystander.close()
    fetches = idp.request_counts["/jwks"] - jwks_before
    assert fetches <= 6, f"the IdP saw {fetches} JWKS requests"
    assert len(latencies) > 10
    p95 = statistics.quantiles(latencies, n=20)[-1]
    assert p95 < max(0.25, 20 * statistics.median(baseline)), (p95, statistics.median(baseline))


def test_idp_outage_keeps_known_keys_and_fails_new_kids_closed(kafka_cluster, tmp_path):
    # An IdP of its own: rotating the shared one's key would leave the shared gateway briefly behind.
    with DevIdp({"audience": "streamward", "clients": []}, data_dir=tmp_path / "idp") as idp:
        _outage(kafka_cluster, idp, tmp_path)


def _outage(kafka_cluster, idp, tmp_path) -> None:
    overrides = oidc_overrides(idp, jwks_min_refresh_s=1, jwks_refresh_s=2)
    with GatewayProcess(tmp_path / "gw", kafka_cluster, workers=1, port_base=30592, admin_port=30600,
                             overrides=overrides) as gw:
        with WireClient(gw.bootstrap) as wire:
            assert wire.sign_in(idp.mint("etl-job"))["error_code"] == 0
        idp.fail_jwks = True
        try:
            time.sleep(3)  # a scheduled refresh fails while the IdP is down
            with WireClient(gw.bootstrap) as wire:
                assert wire.sign_in(idp.mint("etl-job"))["error_code"] == 0, "known key stopped working"
            old_kid_token = idp.mint("etl-job")
            idp.rotate_key()
            with WireClient(gw.bootstrap) as wire:
                assert wire.sign_in(idp.mint("etl-job"))["error_code"] == SASL_AUTHENTICATION_FAILED
            with WireClient(gw.bootstrap) as wire:
                assert wire.sign_in(old_kid_token)["error_code"] == 0
        finally:
            idp.fail_jwks = False


def test_sign_in_cost(gateway, idp):
    """Not a timed assertion beyond sanity: prints the sign-in cost (handshake + authenticate) for the note."""
    token = idp.mint("etl-job")
    costs = []
    for _ in range(50):
        with WireClient(gateway.bootstrap) as wire:
            started = time.perf_counter()
            assert wire.sign_in(token)["error_code"] == 0
            costs.append(time.perf_counter() - started)
    print(f"\nsign-in cost: median {statistics.median(costs) * 1000:.2f} ms, "
          f"p95 {statistics.quantiles(costs, n=20)[-1] * 1000:.2f} ms")
    assert statistics.median(costs) < 0.5
