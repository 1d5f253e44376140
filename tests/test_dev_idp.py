"""The development IdP: discovery, JWKS and token endpoint over real HTTP, its test helpers, and librdkafka."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dev.idp import DevIdp, load_config

REPO = Path(__file__).resolve().parent.parent
# A secret with ':' (the Basic separator) and '%' (the URL-encoding escape), to prove both readings work.
ETL_SECRET = "dev:only%41secret+x"
CONFIG = {
    "audience": "streamward",
    "token_lifetime_s": 600,
    "clients": [
        {"id": "etl-job", "secret": ETL_SECRET, "groups": ["etl"]},
        {"id": "analyst", "secret": "dev-only-analyst", "groups": ["analysts", "readers"],
         "subject": "alice", "lifetime_s": 120},
    ],
}
# What SECURITY.md asks the gateway to require.
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


@pytest.fixture
def idp(tmp_path):
    with DevIdp(CONFIG, data_dir=tmp_path / "idp") as server:
        yield server


def http(url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         body: bytes | None = None):
    """(status, headers, JSON body) of a GET, or of a form POST when `form` or `body` is given."""
    if form is not None:
        body = urlencode(form).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())


def basic(client_id: str, secret: str, *, url_encode: bool) -> dict[str, str]:
    if url_encode:
        client_id, secret = quote(client_id, safe=""), quote(secret, safe="")
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def verify(idp: DevIdp, token: str, **options) -> dict:
    """Validate a token the way the gateway will: key from the JWKS over HTTP, exact issuer and audience."""
    signing_key = jwt.PyJWKClient(idp.jwks_uri, cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="streamward", issuer=idp.issuer,
                      options={"require": REQUIRED_CLAIMS}, **options)


def test_discovery_and_jwks(idp):
    status, _, discovery = http(idp.discovery_uri)
    assert status == 200
    assert discovery["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    assert discovery["jwks_uri"] == idp.jwks_uri
    assert discovery["token_endpoint"] == idp.token_endpoint
    assert discovery["grant_types_supported"] == ["client_credentials"]
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(discovery["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}

    status, _, jwks = http(discovery["jwks_uri"])
    assert status == 200
    [key] = jwks["keys"]
    assert key == {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": idp.kid, "n": key["n"], "e": key["e"]}
    # RFC 7638 thumbprint, recomputed here from the published members.
    canonical = json.dumps({"e": key["e"], "kty": "RSA", "n": key["n"]}, separators=(",", ":")).encode()
    assert key["kid"] == base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert len(base64.urlsafe_b64decode(key["n"] + "==")) == 256  # RSA-2048


@pytest.mark.parametrize("url_encode", [True, False], ids=["rfc6749-url-encoded", "as-is-like-librdkafka"])
def test_token_with_basic_auth(idp, url_encode):
    before = int(time.time())
    status, headers, body = http(idp.token_endpoint, {"grant_type": "client_credentials"},
                                 basic("etl-job", ETL_SECRET, url_encode=url_encode))
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert "scope" not in body

    claims = verify(idp, body["access_token"])
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == "streamward"
    assert claims["sub"] == "etl-job"
    assert claims["client_id"] == "etl-job"
    assert claims["groups"] == ["etl"]
    assert "scope" not in claims
    assert claims["exp"] - claims["iat"] == 600
    assert before <= claims["iat"] <= claims["nbf"] <= int(time.time())
    assert jwt.get_unverified_header(body["access_token"])["kid"] == idp.kid


def test_token_with_form_credentials_and_scope(idp):
    status, _, body = http(idp.token_endpoint, {"grant_type": "client_credentials", "client_id": "analyst",
                                                "client_secret": "dev-only-analyst",
                                                "scope": "kafka:read kafka:write"})
    assert status == 200, body
    assert body["scope"] == "kafka:read kafka:write"
    assert body["expires_in"] == 120
    claims = verify(idp, body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "analyst"
    assert claims["groups"] == ["analysts", "readers"]
    assert claims["scope"] == "kafka:read kafka:write"
    assert claims["exp"] - claims["iat"] == 120
    # Two tokens for the same client are distinct.
    _, _, again = http(idp.token_endpoint, {"grant_type": "client_credentials", "client_id": "analyst",
                                            "client_secret": "dev-only-analyst"})
    assert verify(idp, again["access_token"])["jti"] != claims["jti"]


@pytest.mark.parametrize("form, headers", [
    ({"grant_type": "client_credentials"}, basic("etl-job", "wrong", url_encode=True)),
    ({"grant_type": "client_credentials"}, basic("nobody", ETL_SECRET, url_encode=True)),
    # The right secret of another client.
    ({"grant_type": "client_credentials"}, basic("etl-job", "dev-only-analyst", url_encode=True)),
    ({"grant_type": "client_credentials", "client_id": "analyst", "client_secret": "wrong"}, {}),
    ({"grant_type": "client_credentials"}, {}),
    ({"grant_type": "client_credentials"}, {"Authorization": "Basic not-base64!"}),
    ({"grant_type": "client_credentials"}, {"Authorization": "Bearer " + "x" * 20}),
], ids=["wrong-secret", "unknown-client", "other-clients-secret", "form-wrong-secret", "no-credentials",
        "malformed-basic", "not-basic"])
def test_bad_client_credentials_are_401(idp, form, headers):
    status, response_headers, body = http(idp.token_endpoint, form, headers)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert response_headers["WWW-Authenticate"].startswith("Basic ")
    assert "access_token" not in body


@pytest.mark.parametrize("form, headers, error", [
    ({"grant_type": "password"}, basic("etl-job", ETL_SECRET, url_encode=True), "unsupported_grant_type"),
    ({}, basic("etl-job", ETL_SECRET, url_encode=True), "invalid_request"),
    ({"grant_type": "client_credentials", "client_id": "etl-job", "client_secret": ETL_SECRET},
     basic("etl-job", ETL_SECRET, url_encode=True), "invalid_request"),
    ({"grant_type": "client_credentials", "scope": 'bad"scope'},
     basic("etl-job", ETL_SECRET, url_encode=True), "invalid_scope"),
], ids=["wrong-grant", "no-grant", "two-auth-methods", "bad-scope"])
def test_bad_requests_are_400(idp, form, headers, error):
    status, _, body = http(idp.token_endpoint, form, headers)
    assert (status, body["error"]) == (400, error)


def test_malformed_bodies_are_400(idp):
    auth = basic("etl-job", ETL_SECRET, url_encode=True)
    repeated = b"grant_type=client_credentials&grant_type=client_credentials"
    status, _, body = http(idp.token_endpoint, body=repeated, headers=auth)
    assert (status, body["error"]) == (400, "invalid_request")
    as_json = json.dumps({"grant_type": "client_credentials"}).encode()
    status, _, body = http(idp.token_endpoint, body=as_json, headers={**auth, "Content-Type": "application/json"})
    assert (status, body["error"]) == (400, "invalid_request")


def test_key_persists_across_restarts_and_rotates(tmp_path):
    data_dir = tmp_path / "idp"
    with DevIdp(CONFIG, data_dir=data_dir) as first:
        kid = first.kid
        token = first.mint("etl-job")
        port = first.port
    key_file = data_dir / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # Same port, so the same issuer: a token from before the restart is still good.
    with DevIdp(CONFIG, port=port, data_dir=data_dir) as second:
        assert second.kid == kid
        assert verify(second, token)["sub"] == "etl-job"

        new_kid = second.rotate_key()
        assert new_kid == second.kid != kid
        _, _, jwks = http(second.jwks_uri)
        assert [key["kid"] for key in jwks["keys"]] == [new_kid]
        with pytest.raises(jwt.PyJWKClientError):
            verify(second, token)  # signed under the dropped kid
        assert verify(second, second.mint("etl-job"))["sub"] == "etl-job"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    third = DevIdp(CONFIG, data_dir=data_dir)
    with third:
        assert third.kid == new_kid
        issuer, token = third.issuer, third.mint("etl-job")
    # The same object starts again on the port it had, so its issuer and its tokens stay good.
    with third:
        assert third.issuer == issuer
        assert verify(third, token)["sub"] == "etl-job"


def test_request_counts_and_jwks_outage(idp):
    token = idp.mint("etl-job")
    cached_key = jwt.PyJWKClient(idp.jwks_uri).get_signing_key_from_jwt(token)
    http(idp.jwks_uri)
    http(idp.token_endpoint, {"grant_type": "client_credentials"}, basic("etl-job", ETL_SECRET, url_encode=True))
    http(idp.jwks_uri + "?ignored=query")
    assert idp.request_counts["/jwks"] == 3
    assert idp.request_counts["/token"] == 1

    idp.fail_jwks = True
    status, _, _ = http(idp.jwks_uri)
    assert status == 503
    assert idp.request_counts["/jwks"] == 4  # failed fetches count too: a test can see the retries
    with pytest.raises(jwt.PyJWKClientError):
        verify(idp, token)
    # A verifier that cached the key before the outage still accepts tokens minted earlier.
    claims = jwt.decode(token, cached_key.key, algorithms=["RS256"], audience="streamward", issuer=idp.issuer)
    assert claims["sub"] == "etl-job"
    # Tokens are still issued during a JWKS outage.
    status, _, _ = http(idp.token_endpoint, {"grant_type": "client_credentials"},
                        basic("etl-job", ETL_SECRET, url_encode=True))
    assert status == 200

    idp.fail_jwks = False
    assert http(idp.jwks_uri)[0] == 200


def test_request_counts_under_concurrency(idp):
    def fetch_many():
        for _ in range(25):
            http(idp.jwks_uri)

    threads = [threading.Thread(target=fetch_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert idp.request_counts["/jwks"] == 200


def test_mint_honours_its_arguments(idp):
    claims = verify(idp, idp.mint("bob"))
    assert (claims["sub"], claims["groups"], claims["exp"] - claims["iat"]) == ("bob", [], 600)
    assert "client_id" not in claims

    token = idp.mint("carol", groups=["etl", "ops"], lifetime_s=30, audience="other", issuer="https://elsewhere",
                     extra_claims={"tenant": "t1", "nbf": None}, headers={"jku": "http://attacker/jwks"})
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "carol"
    assert claims["groups"] == ["etl", "ops"]
    assert claims["exp"] - claims["iat"] == 30
    assert (claims["aud"], claims["iss"], claims["tenant"]) == ("other", "https://elsewhere", "t1")
    assert "nbf" not in claims
    assert jwt.get_unverified_header(token)["jku"] == "http://attacker/jwks"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(idp, idp.mint("carol", audience="other"))
    with pytest.raises(jwt.InvalidIssuerError):
        verify(idp, idp.mint("carol", issuer="https://elsewhere"))

    with pytest.raises(jwt.ExpiredSignatureError):
        verify(idp, idp.mint("dave", lifetime_s=-60))
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify(idp, idp.mint("erin", extra_claims={"exp": None}))
    assert "kid" not in jwt.get_unverified_header(idp.mint("frank", headers={"kid": None}))

    # Another key, same kid: the forgery finds the real public key and fails on the signature.
    forged = idp.mint("mallory", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert jwt.get_unverified_header(forged)["kid"] == idp.kid
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, forged)

    # HS256 keyed with the public key PEM (algorithm confusion) and an unsigned token.
    confused = idp.mint("mallory", algorithm="HS256")
    signing_input, _, signature = confused.rpartition(".")
    published = jwt.PyJWKClient(idp.jwks_uri).get_signing_key(idp.kid).key
    public_pem = published.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert signature == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(idp, confused)
    unsigned = idp.mint("mallory", algorithm="none")
    assert unsigned.endswith(".") and jwt.get_unverified_header(unsigned)["alg"] == "none"
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(idp, unsigned)


def test_groups_claim_name_and_issuer_override(tmp_path):
    config = {**CONFIG, "groups_claim": "roles", "issuer": "https://idp.example.test"}
    with DevIdp(config, data_dir=tmp_path) as idp:
        _, _, discovery = http(idp.discovery_uri)
        assert discovery["issuer"] == "https://idp.example.test"
        assert discovery["token_endpoint"] == idp.token_endpoint  # still where it listens
        _, _, body = http(idp.token_endpoint, {"grant_type": "client_credentials"},
                          basic("etl-job", ETL_SECRET, url_encode=True))
        claims = verify(idp, body["access_token"])
        assert claims["iss"] == "https://idp.example.test"
        assert claims["roles"] == ["etl"] and "groups" not in claims


@pytest.mark.parametrize("config, message", [
    ({"clients": [{"id": "a", "secret": "x"}, {"id": "a", "secret": "y"}]}, "duplicate client ids"),
    ({"client": []}, "unknown keys"),
    ({"clients": [{"id": "a"}]}, "clients[0].secret"),
    ({"clients": [{"id": "a", "secret": "x", "groups": "etl"}]}, "clients[0].groups"),
    ({"token_lifetime_s": 0}, "token_lifetime_s"),
])
def test_bad_config_is_refused(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(config)


def test_example_config_loads():
    config = load_config(REPO / "examples" / "idp-clients.yaml")
    assert {client.id: client.groups for client in config.clients} == {
        "etl-job": ("etl",), "analyst": ("analysts",), "approver": ("approvers",)}


def test_librdkafka_oidc_fetches_a_token(idp):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    # A port with nothing listening: the token fetch happens before (and regardless of) any broker connection.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    errors: dict[str, list] = {"right": [], "wrong": []}
    producers = []
    for name, secret in (("right", ETL_SECRET), ("wrong", "not-the-secret")):
        producers.append(confluent_kafka.Producer({
            "bootstrap.servers": f"127.0.0.1:{closed_port}",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": "etl-job",
            "sasl.oauthbearer.client.secret": secret,
            "sasl.oauthbearer.scope": "kafka",
            "sasl.oauthbearer.token.endpoint.url": idp.token_endpoint,
            "error_cb": errors[name].append,
            "log_level": 0,
        }))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for producer in producers:
            producer.poll(0.1)

    assert idp.request_counts["/token"] >= 2
    # librdkafka reports a failed token fetch through error_cb as _AUTHENTICATION: the wrong secret proves the
    # check can fail, the right one (with ':' and '%', sent as is in the Basic header) got its token.
    auth_failures = {name: [e for e in found if e.code() == confluent_kafka.KafkaError._AUTHENTICATION]
                     for name, found in errors.items()}
    assert auth_failures["right"] == []
    assert auth_failures["wrong"] and "invalid_client" in auth_failures["wrong"][0].str()


def test_cli_prints_working_settings(tmp_path):
    config = tmp_path / "clients.yaml"
    config.write_text(json.dumps(CONFIG))  # JSON is YAML
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gateway.dev.idp import main; sys.exit(main(sys.argv[1:]))",
         "--config", str(config), "--port", "0", "--data-dir", str(tmp_path / "idp")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = process.stdout.readline()
            assert line, f"the IdP exited early: {process.stderr.read()}"
            lines.append(line.strip())
        printed = "\n".join(lines)
        token_url = next(line.split()[-1] for line in lines if line.startswith("token:"))
        assert f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={token_url}" in printed
        assert f"sasl.oauthbearer.token.endpoint.url={token_url}" in printed
        assert "sasl.oauthbearer.method=oidc" in printed
        assert 'clientId="etl-job"' in printed and "curl -s -u" in printed
        # The printed curl command's credentials work (curl sends them as they are).
        status, _, body = http(token_url, {"grant_type": "client_credentials"},
                               basic("etl-job", ETL_SECRET, url_encode=False))
        assert status == 200, body
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM
