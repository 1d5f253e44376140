"""TokenValidator: every forged or broken token refused with its reason; good tokens accepted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import statistics
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.jwks import JwksCache
from gateway.auth.tokens import Claims, TokenError, TokenValidator, describe, whoami
from gateway.config import OidcSettings
from tests.test_jwks import AUDIENCE, ISSUER, IdpServer, claims, jwk_for, sign, unsigned

pytestmark = pytest.mark.timeout(60)

NOW = 1_750_000_000.0  # the validator's clock in these tests
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
JWKS = {"keys": [jwk_for(RSA_KEY, "rsa1"), jwk_for(EC_KEY, "ec1"), jwk_for(ED_KEY, "ed1")]}
SETTINGS = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=ISSUER + "/protocol/openid-connect/certs")


def payload(**overrides: object) -> dict:
    return claims(NOW, **overrides)


def rs256(**overrides: object) -> str:
    return sign(RSA_KEY, "RS256", "rsa1", payload(**overrides))


def rs256_bytes(body: bytes) -> str:
    """A correctly signed token around any payload bytes, even ones jwt.encode refuses to produce."""
    return jwt.PyJWS().encode(body, RSA_KEY, algorithm="RS256", headers={"kid": "rsa1"})


async def _validate(token: str, settings: OidcSettings, jwks: dict) -> Claims:
    cache = JwksCache(settings, fetch_json=lambda url: jwks)
    await cache.start()
    try:
        return await TokenValidator(settings, cache, clock=lambda: NOW).validate(token)
    finally:
        cache.close()


def accept(token: str, settings: OidcSettings = SETTINGS, jwks: dict = JWKS) -> Claims:
    return asyncio.run(_validate(token, settings, jwks))


def refusal(token: str, settings: OidcSettings = SETTINGS, jwks: dict = JWKS) -> str:
    with pytest.raises(TokenError) as refused:
        accept(token, settings, jwks)
    return refused.value.reason


@pytest.mark.parametrize(("algorithm", "private_key", "kid"), [
    ("RS256", RSA_KEY, "rsa1"),
    ("PS256", RSA_KEY, "rsa1"),  # the same RSA key: a JWK without "alg" serves RS* and PS*
    ("ES256", EC_KEY, "ec1"),
    ("EdDSA", ED_KEY, "ed1"),
])
def test_valid_tokens_are_accepted(algorithm, private_key, kid):
    result = accept(sign(private_key, algorithm, kid, payload(groups=["ops"])))
    assert result.subject == "alice"
    assert result.groups == ("ops",)
    assert result.issuer == ISSUER
    assert result.expires_at == int(NOW) + 600
    assert result.issued_at == int(NOW) - 10
    assert result.raw["aud"] == AUDIENCE


def test_alg_none_is_refused():
    assert refusal(unsigned({"alg": "none", "kid": "rsa1"}, payload(), b"")) == "algorithm none not allowed"


def test_hs256_signed_with_the_rsa_public_key_as_secret_is_refused():
    # The classic key-confusion forgery: the verifier's public key PEM used as an HMAC secret.
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(orjson.dumps({"alg": "HS256", "kid": "rsa1"})).rstrip(b"=")
    body = base64.urlsafe_b64encode(orjson.dumps(payload())).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.digest(pem, header + b"." + body, hashlib.sha256)).rstrip(b"=")
    assert refusal(b".".join([header, body, signature]).decode()) == "algorithm HS256 not allowed"


def test_symmetric_algorithms_cannot_be_configured():
    with pytest.raises(ValueError, match="HS256"):
        TokenValidator(OidcSettings(issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256", "HS256")),
                       JwksCache(SETTINGS, fetch_json=lambda url: JWKS))


def test_algorithms_outside_the_configured_list_are_refused():
    only_rs256 = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=SETTINGS.jwks_uri, algorithms=("RS256",))
    assert refusal(sign(EC_KEY, "ES256", "ec1", payload()), only_rs256) == "algorithm ES256 not allowed"
    assert refusal(sign(RSA_KEY, "PS256", "rsa1", payload()), only_rs256) == "algorithm PS256 not allowed"
    assert refusal(unsigned({"alg": "ES256K", "kid": "ec1"}, payload())) == "algorithm ES256K not allowed"
    assert refusal(unsigned({"alg": ["RS256"], "kid": "rsa1"}, payload())) == "algorithm (invalid) not allowed"
    assert refusal(unsigned({"kid": "rsa1"}, payload())) == "algorithm (invalid) not allowed"


def test_an_algorithm_the_key_cannot_do_is_refused():
    # The EC key's kid with an RSA algorithm, and a P-256 key with ES384.
    assert refusal(unsigned({"alg": "RS256", "kid": "ec1"}, payload())) == "algorithm RS256 does not match the key"
    assert refusal(unsigned({"alg": "ES384", "kid": "ec1"}, payload())) == "algorithm ES384 does not match the key"


def test_unknown_kid_is_refused():
    assert refusal(sign(RSA_KEY, "RS256", "rsa2", payload())) == "unknown kid"


@pytest.mark.parametrize(("kid", "reason"), [
    ("../../etc/passwd", "unknown kid"),  # only URL-safe characters: looked up as the plain string it is
    ("' OR 1=1 --", "invalid kid"),
    ("x" * 10_240, "invalid kid"),
    ("", "invalid kid"),
    (42, "invalid kid"),
    ("rsa1\x00", "invalid kid"),
])
def test_hostile_kids_are_refused(kid, reason):
    assert refusal(unsigned({"alg": "RS256", "kid": kid}, payload())) == reason


def test_key_urls_in_the_token_header_are_never_fetched_or_trusted():
    attacker = IdpServer()
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker.documents["/jwks"] = {"keys": [jwk_for(attacker_key, "rsa1"), jwk_for(attacker_key, "evil")]}
    pointers = {"jku": attacker.url + "/jwks", "x5u": attacker.url + "/cert.pem",
                "jwk": jwk_for(attacker_key, "rsa1")}
    try:
        # Our kid, the attacker's key: the signature does not verify with our key.
        assert refusal(sign(attacker_key, "RS256", "rsa1", payload(), **pointers)) == "bad signature"
        # The attacker's kid: unknown to our JWKS, whatever jku says.
        assert refusal(sign(attacker_key, "RS256", "evil", payload(), **pointers)) == "unknown kid"
    finally:
        attacker.stop()
    assert attacker.requests == []


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
def test_each_required_claim_must_be_present(claim):
    assert refusal(rs256(**{claim: None})) == f"missing claim {claim}"


def test_empty_subject_or_audience_count_as_missing():
    assert refusal(rs256(sub="")) == "missing claim sub"
    assert refusal(rs256(aud=[])) == "missing claim aud"


def test_expiry_is_enforced_with_leeway():
    leeway = SETTINGS.leeway_s
    assert refusal(rs256(exp=int(NOW - leeway - 1))) == "expired"
    assert refusal(rs256(exp=int(NOW - leeway))) == "expired"
    assert accept(rs256(exp=int(NOW - leeway + 1))).expires_at == int(NOW - leeway + 1)


def test_not_before_and_issued_at_in_the_future_are_refused():
    leeway = SETTINGS.leeway_s
    assert refusal(rs256(nbf=int(NOW + leeway + 5))) == "token not yet valid"
    assert accept(rs256(nbf=int(NOW + leeway - 5))).subject == "alice"
    assert refusal(rs256(iat=int(NOW + leeway + 5))) == "token issued in the future"


@pytest.mark.parametrize(("claim", "value"), [
    ("exp", "9999999999"),  # pyjwt alone accepts this: it calls int() on the claim
    ("exp", True),
    ("exp", float("inf")),
    ("exp", -1),
    ("exp", 1e30),
    ("exp", [NOW + 60]),
    ("iat", "1750000000"),
    ("nbf", "soon"),
])
def test_times_must_be_plain_numbers(claim, value):
    assert refusal(rs256(**{claim: value})) == f"malformed claim {claim}"


@pytest.mark.parametrize("issuer", [
    ISSUER[:-1],  # a prefix of ours
    ISSUER.rsplit("/", 1)[0],
    ISSUER + "/",
    ISSUER + "-evil",
    ISSUER.upper(),
])
def test_issuer_must_match_exactly(issuer):
    assert refusal(rs256(iss=issuer)) == "issuer mismatch"
    # An issuer list, which jwt.encode will not write; pyjwt refuses anything but a string.
    assert refusal(rs256_bytes(orjson.dumps(payload(iss=[ISSUER])))) == "issuer mismatch"


def test_audience_must_include_ours():
    assert refusal(rs256(aud="someone-else")) == "audience mismatch"
    assert refusal(rs256(aud=["someone-else", "another"])) == "audience mismatch"
    assert refusal(rs256(aud=AUDIENCE.upper())) == "audience mismatch"
    assert accept(rs256(aud=["someone-else", AUDIENCE])).subject == "alice"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "exp"])
def test_critical_headers_are_refused(crit):
    token = sign(RSA_KEY, "RS256", "rsa1", payload(), crit=crit, exp=1)
    assert refusal(token) == "unsupported critical header"


def test_oversize_tokens_are_refused_before_parsing():
    token = rs256(padding="x" * 16_384)
    assert refusal(token) == "token too large"
    assert refusal("a" * 1_000_000) == "token too large"


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "###.###.###", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln==",
    "bm90IGpzb24.e30.c2ln",  # header is not JSON
    "WyJSUzI1NiJd.e30.c2ln",  # header is a JSON list
    "é.e30.c2ln",
    b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
])
def test_malformed_tokens_are_refused(token):
    assert refusal(token) == "malformed token"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"exp": NaN'])
def test_signed_payloads_that_are_not_a_json_object_are_refused(body):
    assert refusal(rs256_bytes(body)) == "malformed token"


def test_bad_signatures_are_refused():
    assert refusal(sign(OTHER_RSA_KEY, "RS256", "rsa1", payload())) == "bad signature"
    header, body, signature = rs256().split(".")
    tampered = base64.urlsafe_b64encode(orjson.dumps(payload(sub="admin"))).rstrip(b"=").decode()
    assert refusal(".".join([header, tampered, signature])) == "bad signature"
    assert refusal(".".join([header, body, ""])) == "bad signature"


@pytest.mark.parametrize(("groups_claim", "value", "expected"), [
    ("groups", ["dev", "ops"], ("dev", "ops")),
    ("groups", "dev ops  audit", ("dev", "ops", "audit")),
    ("groups", "dev,ops, audit", ("dev", "ops", "audit")),
    ("groups", "dev,dev ops", ("dev", "ops")),
    ("groups", "", ()),
    ("realm_access.roles", {"realm_access": {"roles": ["kafka-admin", "reader"]}}, ("kafka-admin", "reader")),
    ("https://streamward.test/groups", {"https://streamward.test/groups": ["dev"]}, ("dev",)),
    ("realm_access.roles", {"realm_access": {}}, ()),
    ("groups", None, ()),
])
def test_groups_come_from_lists_strings_and_nested_paths(groups_claim, value, expected):
    settings = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=SETTINGS.jwks_uri, groups_claim=groups_claim)
    extra = value if isinstance(value, dict) else {"groups": value}
    assert accept(rs256(**extra), settings).groups == expected


@pytest.mark.parametrize("value", [42, ["dev", 7], {"dev": True}])
def test_unreadable_groups_refuse_the_token(value):
    assert refusal(rs256(groups=value)) == "malformed claim groups"


def test_principal_comes_from_the_configured_claim():
    settings = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_uri=SETTINGS.jwks_uri,
                            principal_claim="preferred_username")
    assert accept(rs256(preferred_username="alice.smith"), settings).subject == "alice.smith"
    assert refusal(rs256(), settings) == "missing claim preferred_username"
    assert refusal(rs256(preferred_username="alice\nadmin"), settings) == "malformed claim preferred_username"
    assert refusal(rs256(preferred_username=["alice"]), settings) == "malformed claim preferred_username"


def test_a_token_without_kid_is_verified_with_the_only_key():
    single = {"keys": [jwk_for(RSA_KEY, "rsa1")]}
    assert accept(sign(RSA_KEY, "RS256", None, payload()), jwks=single).subject == "alice"
    assert refusal(sign(RSA_KEY, "RS256", None, payload())) == "unknown kid"  # three keys: ambiguous


def test_refusals_take_about_the_same_time_whatever_the_reason():
    # Tokens of one shape (RS256-sized signature, same claims), refused for different reasons. An EC
    # or EdDSA token would cost that curve's verification instead, which the header announces anyway.
    good = rs256()
    header_length = len(base64.urlsafe_b64decode(good.split(".")[0] + "=="))
    not_json = base64.urlsafe_b64encode(b"x" * header_length).rstrip(b"=").decode()
    rsa_sized = b"\x01" * 256
    forged = {
        "malformed header": ".".join([not_json, *good.split(".")[1:]]),
        "alg none": unsigned({"alg": "none", "kid": "rsa1", "typ": "JWT"}, payload(), rsa_sized),
        "alg HS256": unsigned({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}, payload(), rsa_sized),
        "invalid kid": sign(RSA_KEY, "RS256", "' OR 1", payload()),
        "unknown kid": sign(RSA_KEY, "RS256", "rsa9", payload()),
        "crit": sign(RSA_KEY, "RS256", "rsa1", payload(), crit=["x"]),
        "bad signature": sign(OTHER_RSA_KEY, "RS256", "rsa1", payload()),
        "expired": rs256(exp=int(NOW - 3600)),
        "audience": rs256(aud="someone-else"),
    }

    async def main():
        cache = JwksCache(SETTINGS, fetch_json=lambda url: JWKS)
        await cache.start()
        validator = TokenValidator(SETTINGS, cache, clock=lambda: NOW)
        durations: dict[str, list[float]] = {name: [] for name in forged}
        for _ in range(300):  # interleaved, so drifts in CPU speed hit every reason alike
            for name, token in forged.items():
                started = time.perf_counter()
                with pytest.raises(TokenError):
                    await validator.validate(token)
                durations[name].append(time.perf_counter() - started)
        cache.close()
        return {name: statistics.median(values) for name, values in durations.items()}

    medians = asyncio.run(main())
    print("\nmedian time to refuse: " + ", ".join(f"{name} {value * 1e6:.0f} µs" for name, value in medians.items()))
    # A header that is not JSON stops pyjwt's decoding early; its sender knows it is garbage, so that
    # difference tells nothing. Among the rest, without the verification spent on early refusals,
    # "unknown kid" would take a tenth of "bad signature": the bound is loose enough that scheduler
    # noise on a shared two-core machine cannot fail it, and tight enough to catch that leak.
    medians.pop("malformed header")
    assert max(medians.values()) < 2.0 * min(medians.values())


def test_tokens_never_reach_logs_or_reasons(caplog):
    caplog.set_level(logging.DEBUG)
    tokens = [rs256(exp=int(NOW - 3600)), sign(OTHER_RSA_KEY, "RS256", "rsa1", payload()),
              sign(RSA_KEY, "RS256", "unknown", payload()), rs256(iss="https://evil.test"),
              rs256(padding="x" * 20_000), rs256_bytes(b"not json")]
    for token in tokens:
        reason = refusal(token)
        for part in token.split("."):
            assert part not in reason
            assert part not in caplog.text


def test_describe_shows_principal_groups_and_expiry():
    result = Claims("alice", ("dev", "ops"), NOW + 3600, NOW - 10, ISSUER, {})
    text = describe(result, now=NOW)
    assert "principal: alice" in text
    assert "groups:    dev, ops" in text
    assert "expires:   2025-06-15T16:06:40Z (in 3600 s)" in text
    assert "expired 60 s ago" in describe(Claims("bob", (), NOW - 60, NOW - 600, ISSUER, {}), now=NOW)
    assert "groups:    (none)" in describe(Claims("bob", (), NOW - 60, NOW - 600, ISSUER, {}), now=NOW)


def test_whoami_discovers_fetches_and_validates():
    idp = IdpServer()
    try:
        settings = OidcSettings(issuer=idp.url, audience=AUDIENCE)
        idp.documents["/.well-known/openid-configuration"] = {"issuer": idp.url, "jwks_uri": idp.url + "/keys"}
        idp.documents["/keys"] = JWKS
        token = sign(EC_KEY, "ES256", "ec1", claims(iss=idp.url, realm_access={"roles": ["x"]}))
        result = asyncio.run(whoami(settings, token))
        assert result.subject == "alice"
        assert idp.requests == ["/.well-known/openid-configuration", "/keys"]
        del idp.documents["/keys"]
        with pytest.raises(TokenError) as refused:
            asyncio.run(whoami(settings, token))
        assert refused.value.reason == "cannot fetch the identity provider's signing keys"
    finally:
        idp.stop()
