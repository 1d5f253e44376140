"""A development OIDC identity provider: discovery, a JWKS and an OAuth2 token endpoint (client_credentials).

`streamward dev idp` runs it for the quick start; tests use `DevIdp` directly. Every Kafka client's standard
OAuth settings work against it:

- Java's `OAuthBearerLoginCallbackHandler` (`sasl.oauthbearer.token.endpoint.url`) and librdkafka's
  `sasl.oauthbearer.method=oidc` POST `grant_type=client_credentials[&scope=...]` with HTTP Basic auth and read
  `access_token`. Both send the client id and secret in the Basic header *as is* by default (Java URL-encodes
  them only with `sasl.oauthbearer.header.urlencode=true`), while RFC 6749 2.3.1 says to URL-encode them, so
  the token endpoint accepts either form.
- Programmatic token providers (aiokafka, kafka-python, franz-go) POST the same way, or put `client_id` and
  `client_secret` in the form body (RFC 6749 2.3.1).

Access tokens are RS256 JWTs signed with an RSA-2048 key kept in `data_dir` (PEM, mode 0600), so tokens and
key ids survive restarts. For tests, `mint()` signs arbitrary (forged, expired, odd) tokens, `request_counts`
counts requests per path, `rotate_key()` replaces the key and `fail_jwks` simulates an IdP outage.

Development only: the client secrets sit in a YAML file in clear, and nothing here is hardened for the internet.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm, get_default_algorithms

logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
TOKEN_PATH = "/token"
KEY_FILE = "signing-key.pem"
GRANT_TYPE = "client_credentials"
# A token request is a few hundred bytes; anything much bigger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
# RFC 6749 3.3: scope tokens are printable ASCII except space, '"' and '\', separated by single spaces.
SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")
CONFIG_KEYS = {"issuer", "audience", "token_lifetime_s", "groups_claim", "clients"}
CLIENT_KEYS = {"id", "secret", "groups", "subject", "lifetime_s"}
JAVA_LOGIN_HANDLER = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler"
JAVA_LOGIN_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"


@dataclass(frozen=True)
class IdpClient:
    id: str
    secret: str
    subject: str
    groups: tuple[str, ...]
    lifetime_s: int


@dataclass(frozen=True)
class IdpConfig:
    issuer: str | None
    audience: str
    token_lifetime_s: int
    groups_claim: str
    clients: tuple[IdpClient, ...]


@dataclass(frozen=True)
class _SigningKey:
    private_key: rsa.RSAPrivateKey
    kid: str
    public_jwk: dict[str, str]
    public_pem: bytes


def load_config(config: Mapping[str, Any] | Path | str) -> IdpConfig:
    """Validate the IdP config (a dict, or a YAML file); raise ValueError naming the first bad field."""
    if isinstance(config, (Path, str)):
        raw = yaml.safe_load(Path(config).read_text()) or {}
    else:
        raw = config
    if not isinstance(raw, Mapping):
        raise ValueError("idp config: must be a mapping")
    unknown = set(raw) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"idp config: unknown keys {sorted(unknown)}")
    issuer = raw.get("issuer")
    if issuer is not None:
        _require_text(issuer, "issuer")
    audience = _require_text(raw.get("audience", "streamward"), "audience")
    lifetime = _require_lifetime(raw.get("token_lifetime_s", 3600), "token_lifetime_s")
    groups_claim = _require_text(raw.get("groups_claim", "groups"), "groups_claim")
    raw_clients = raw.get("clients") or []
    if not isinstance(raw_clients, list):
        raise ValueError("idp config: clients must be a list")
    clients = []
    for index, entry in enumerate(raw_clients):
        where = f"clients[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"idp config: {where} must be a mapping")
        unknown = set(entry) - CLIENT_KEYS
        if unknown:
            raise ValueError(f"idp config: {where} has unknown keys {sorted(unknown)}")
        client_id = _require_text(entry.get("id"), f"{where}.id")
        groups = entry.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(group, str) and group for group in groups):
            raise ValueError(f"idp config: {where}.groups must be a list of non-empty strings")
        clients.append(IdpClient(
            id=client_id,
            secret=_require_text(entry.get("secret"), f"{where}.secret"),
            subject=_require_text(entry.get("subject", client_id), f"{where}.subject"),
            groups=tuple(groups),
            lifetime_s=_require_lifetime(entry.get("lifetime_s", lifetime), f"{where}.lifetime_s"),
        ))
    ids = [client.id for client in clients]
    duplicates = sorted({client_id for client_id in ids if ids.count(client_id) > 1})
    if duplicates:
        raise ValueError(f"idp config: duplicate client ids {duplicates}")
    return IdpConfig(issuer, audience, lifetime, groups_claim, tuple(clients))


def _require_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"idp config: {where} must be a non-empty string")
    return value


def _require_lifetime(value: Any, where: str) -> int:
    # bool is an int subclass; `lifetime_s: yes` is a typo, not one second.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"idp config: {where} must be a positive whole number of seconds")
    return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _signing_key(private_key: rsa.RSAPrivateKey) -> _SigningKey:
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    # RFC 7638: SHA-256 over the required members only, in lexicographic order, without whitespace.
    kid = _b64url(hashlib.sha256(_compact_json({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]})).digest())
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _SigningKey(private_key, kid, {"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": kid,
                                         "use": "sig", "alg": "RS256"}, public_pem)


def _digest(text: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest from leaking the secret's length as well.
    return hashlib.sha256(text.encode("utf-8")).digest()


class DevIdp:
    """The development IdP; `start()` serves it on a daemon thread, `stop()` ends it (or use `with`)."""

    def __init__(self, config: Mapping[str, Any] | Path | str, *, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Path) -> None:
        self.config = load_config(config)
        self._clients = {client.id: client for client in self.config.clients}
        # Unknown client ids are checked against this, so they cost the same time as a wrong secret.
        self._dummy_secret_digest = _digest(secrets.token_urlsafe(32))
        self._host = host
        self._port = port
        self._key_path = Path(data_dir) / KEY_FILE
        self._signing: _SigningKey | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counts_lock = threading.Lock()
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.fail_jwks = False

    # -- lifecycle --

    def start(self) -> DevIdp:
        """Serve; after a stop(), the same object listens on the same port again, so its issuer is unchanged."""
        if self._server is not None:
            raise RuntimeError("the IdP is already running")
        self._signing = _signing_key(self._load_or_create_key())
        server = _Server((self._host, self._port), _Handler)
        server.idp = self
        self._server = server
        self._port = server.server_address[1]
        # stop() waits up to one poll interval; the default half second adds up over a test suite.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="dev-idp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> DevIdp:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses --

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one); before that, the port asked for."""
        return self._port

    @property
    def base_url(self) -> str:
        """Where the endpoints are served: the bound address (a wildcard host is reached via 127.0.0.1)."""
        if self._port == 0:
            raise RuntimeError("port 0 is chosen at start(): the IdP's URLs are known only after it")
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self._port}"

    @property
    def issuer(self) -> str:
        return self.config.issuer or self.base_url

    @property
    def discovery_uri(self) -> str:
        return self.base_url + DISCOVERY_PATH

    @property
    def jwks_uri(self) -> str:
        return self.base_url + JWKS_PATH

    @property
    def token_endpoint(self) -> str:
        return self.base_url + TOKEN_PATH

    # -- keys --

    @property
    def kid(self) -> str:
        return self._current_key().kid

    def _current_key(self) -> _SigningKey:
        if self._signing is None:
            raise RuntimeError("the IdP has no key before start()")
        return self._signing

    def _load_or_create_key(self) -> rsa.RSAPrivateKey:
        if self._key_path.exists():
            key = serialization.load_pem_private_key(self._key_path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{self._key_path} does not hold an RSA private key")
            return key
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._save_key(key)
        return key

    def _save_key(self, key: rsa.RSAPrivateKey) -> None:
        self._key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # Write a private temporary file and rename it, so the key is never readable by others, even briefly,
        # and a crash never leaves half a key behind.
        temporary = self._key_path.with_name(self._key_path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply when the file already existed
            os.write(fd, pem)
        finally:
            os.close(fd)
        os.replace(temporary, self._key_path)

    def rotate_key(self) -> str:
        """Replace the signing key (saved, so it survives restarts); the old kid leaves the JWKS. Returns the kid."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._save_key(key)
        # One attribute assignment: request threads see either the old key or the new one, never a mix.
        self._signing = _signing_key(key)
        return self._signing.kid

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [dict(self._current_key().public_jwk)]}

    # -- tokens --

    def mint(self, subject: str, groups: Iterable[str] = (), lifetime_s: int | None = None,
             audience: str | list[str] | None = None, issuer: str | None = None,
             extra_claims: Mapping[str, Any] | None = None, headers: Mapping[str, Any] | None = None,
             algorithm: str = "RS256", key: Any = None) -> str:
        """Sign a JWT; the token endpoint issues its tokens through here too.

        Defaults: this IdP's issuer, audience and lifetime; header `kid` = the current kid, also when signing
        with another `key` (a forgery that names a real kid). `extra_claims` and `headers` are merged over the
        defaults; a value of None removes that claim or header (to test a token without `exp`, `kid`...).
        A negative `lifetime_s` gives an already expired token. `key` is a private key (object or PEM) for
        RS*/PS*/ES*/EdDSA, or the secret for HS*; for HS* it defaults to this IdP's public key PEM, which is
        the classic RS256-to-HS256 algorithm-confusion forgery. `algorithm="none"` gives an unsigned token.
        """
        signing = self._current_key()
        now = int(time.time())
        lifetime = self.config.token_lifetime_s if lifetime_s is None else lifetime_s
        claims: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "aud": self.config.audience if audience is None else audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
            self.config.groups_claim: list(groups),
        }
        claims.update(extra_claims or {})
        header: dict[str, Any] = {"alg": algorithm, "typ": "JWT", "kid": signing.kid}
        header.update(headers or {})
        signing_input = (_b64url(_compact_json({k: v for k, v in header.items() if v is not None})) + "."
                         + _b64url(_compact_json({k: v for k, v in claims.items() if v is not None})))
        message = signing_input.encode("ascii")
        algorithms = get_default_algorithms()
        if algorithm not in algorithms:
            raise ValueError(f"unknown JWS algorithm {algorithm!r}; known: {sorted(algorithms)}")
        algorithm_impl = algorithms[algorithm]
        if isinstance(algorithm_impl, HMACAlgorithm):
            # Raw bytes on purpose: pyjwt's prepare_key refuses a PEM public key as an HMAC secret, and
            # signing with exactly that is what an algorithm-confusion test needs.
            secret = signing.public_pem if key is None else key
            signature = algorithm_impl.sign(message, secret.encode("utf-8") if isinstance(secret, str) else secret)
        else:
            if key is None and algorithm != "none":
                key = signing.private_key
            signature = algorithm_impl.sign(message, algorithm_impl.prepare_key(key))
        return signing_input + "." + _b64url(signature)

    def _issue(self, client: IdpClient, scope: str | None) -> dict[str, Any]:
        token = self.mint(client.subject, client.groups, lifetime_s=client.lifetime_s,
                          extra_claims={"client_id": client.id, "scope": scope})
        response: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": client.lifetime_s}
        if scope is not None:
            response["scope"] = scope
        return response

    def _authenticate(self, candidates: list[tuple[str, str]]) -> IdpClient | None:
        """The client whose id and secret match one of the candidate (id, secret) readings, else None.

        Every candidate is compared, in constant time, whatever matched, so failures all take the same time.
        """
        found = None
        for client_id, secret in candidates:
            client = self._clients.get(client_id)
            expected = _digest(client.secret) if client else self._dummy_secret_digest
            if hmac.compare_digest(_digest(secret), expected) and client is not None and found is None:
                found = client
        return found

    def _count(self, path: str) -> None:
        with self._counts_lock:
            self.request_counts[path] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    idp: DevIdp


class _OAuthError(Exception):
    """An RFC 6749 5.2 error response."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A client that stops sending mid-request must not hold a thread forever.
    timeout = 10

    def do_GET(self) -> None:
        idp = self.server.idp
        path = urlsplit(self.path).path
        idp._count(path)
        if path == DISCOVERY_PATH:
            self._send_json(200, {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "token_endpoint": idp.token_endpoint,
                "grant_types_supported": [GRANT_TYPE],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "id_token_signing_alg_values_supported": ["RS256"],
                # Required by OpenID Connect Discovery 1.0; some validators insist on them.
                "response_types_supported": ["token"],
                "subject_types_supported": ["public"],
            })
        elif path == JWKS_PATH:
            if idp.fail_jwks:
                self._send_json(503, {"error": "temporarily_unavailable"})
            else:
                self._send_json(200, idp.jwks())
        elif path == TOKEN_PATH:
            self._send_json(405, {"error": "invalid_request", "error_description": "use POST"},
                            extra_headers={"Allow": "POST"})
        else:
            self._send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        idp = self.server.idp
        path = urlsplit(self.path).path
        idp._count(path)
        if path != TOKEN_PATH:
            self._send_json(404, {"error": "not_found"})
            return
        try:
            form = self._read_form()
            client = idp._authenticate(self._credentials(form))
            if client is None:
                raise _OAuthError(401, "invalid_client", "unknown client or wrong secret")
            grant_type = form.get("grant_type")
            if grant_type is None:
                raise _OAuthError(400, "invalid_request", "grant_type is missing")
            if grant_type != GRANT_TYPE:
                raise _OAuthError(400, "unsupported_grant_type", f"only {GRANT_TYPE} is supported")
            scope = form.get("scope") or None
            if scope is not None and not SCOPE_RE.fullmatch(scope):
                raise _OAuthError(400, "invalid_scope", "scope must be space-separated RFC 6749 scope tokens")
        except _OAuthError as exc:
            # RFC 6749 5.2: a failed client authentication answers 401 with a WWW-Authenticate challenge.
            challenge = {"WWW-Authenticate": 'Basic realm="streamward-dev-idp"'} if exc.status == 401 else {}
            self._send_json(exc.status, {"error": exc.error, "error_description": exc.description},
                            extra_headers=challenge)
            return
        self._send_json(200, idp._issue(client, scope))

    def _read_form(self) -> dict[str, str]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _OAuthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise _OAuthError(400, "invalid_request", "Content-Length is required")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            raise _OAuthError(400, "invalid_request", "the body is too large")
        body = self.rfile.read(length)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:  # includes UnicodeDecodeError
            raise _OAuthError(400, "invalid_request", "the body is not a valid form") from exc
        form: dict[str, str] = {}
        for name, value in pairs:
            if name in form:
                # RFC 6749 3.2: parameters must not be repeated.
                raise _OAuthError(400, "invalid_request", f"parameter {name} is repeated")
            form[name] = value
        return form

    def _credentials(self, form: dict[str, str]) -> list[tuple[str, str]]:
        """The (client id, secret) readings to try, from the Basic header or from the form body."""
        authorization = self.headers.get("Authorization")
        if authorization is None:
            if "client_id" not in form or "client_secret" not in form:
                raise _OAuthError(401, "invalid_client", "client authentication is required")
            return [(form["client_id"], form["client_secret"])]
        if "client_id" in form or "client_secret" in form:
            raise _OAuthError(400, "invalid_request", "use one client authentication method, not two")
        scheme, _, encoded = authorization.partition(" ")
        try:
            if scheme.lower() != "basic":
                raise ValueError("not Basic")
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, binascii.Error) as exc:
            raise _OAuthError(401, "invalid_client", "malformed Basic credentials") from exc
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            raise _OAuthError(401, "invalid_client", "malformed Basic credentials")
        # RFC 6749 2.3.1 says URL-encode both, but librdkafka and Java (by default) send them as they are:
        # accept either reading. Both still need the secret, so this admits nobody who lacks it.
        return [(unquote_plus(client_id), unquote_plus(secret)), (client_id, secret)]

    def _send_json(self, status: int, body: Mapping[str, Any], extra_headers: Mapping[str, str] | None = None
                   ) -> None:
        payload = _compact_json(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        # RFC 6749 5.1: token responses must not be cached.
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def version_string(self) -> str:
        return "streamward-dev-idp"

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only: credentials travel in headers and the body, never logged.
        logger.info("%s %s", self.address_string(), format % args)


def describe(idp: DevIdp) -> str:
    """The URLs, and ready-to-paste client settings for the first configured client."""
    lines = [
        "Streamward development IdP (development only: secrets are in the config file in clear)",
        f"  issuer:    {idp.issuer}",
        f"  discovery: {idp.discovery_uri}",
        f"  jwks:      {idp.jwks_uri}",
        f"  token:     {idp.token_endpoint}",
        f"  audience:  {idp.config.audience}",
        "  clients:   " + (", ".join(f"{client.id} (groups: {', '.join(client.groups) or '-'})"
                                     for client in idp.config.clients) or "none configured"),
    ]
    if not idp.config.clients:
        return "\n".join(lines)
    client = idp.config.clients[0]

    def jaas_quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines += [
        "",
        f"Java client (Kafka 4.2 or newer), as {client.id}:",
        "  security.protocol=SASL_PLAINTEXT",
        "  sasl.mechanism=OAUTHBEARER",
        f"  sasl.login.callback.handler.class={JAVA_LOGIN_HANDLER}",
        f"  sasl.oauthbearer.token.endpoint.url={idp.token_endpoint}",
        f"  sasl.jaas.config={JAVA_LOGIN_MODULE} required clientId={jaas_quote(client.id)}"
        f" clientSecret={jaas_quote(client.secret)};",
        "  and the JVM flag (Kafka 4 refuses token URLs not listed there; for Kafka's own tools put it in KAFKA_OPTS):",
        f"  -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.token_endpoint}",
        "",
        f"librdkafka / confluent-kafka, as {client.id}:",
        "  security.protocol=SASL_PLAINTEXT",
        "  sasl.mechanisms=OAUTHBEARER",
        "  sasl.oauthbearer.method=oidc",
        f"  sasl.oauthbearer.client.id={client.id}",
        f"  sasl.oauthbearer.client.secret={client.secret}",
        f"  sasl.oauthbearer.token.endpoint.url={idp.token_endpoint}",
        "",
        "A token by hand:",
        f"  curl -s -u {shlex.quote(client.id + ':' + client.secret)} -d grant_type={GRANT_TYPE} "
        f"{idp.token_endpoint}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamward dev idp",
                                     description="A development OIDC identity provider (client_credentials).")
    parser.add_argument("--config", type=Path, default=Path("examples") / "idp-clients.yaml",
                        help="clients YAML (default: examples/idp-clients.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9400, help="port to listen on (default: 9400; 0 picks one)")
    parser.add_argument("--data-dir", type=Path, default=Path("var") / "idp",
                        help="where the signing key is kept (default: var/idp)")
    options = parser.parse_args(argv)

    try:
        idp = DevIdp(options.config, host=options.host, port=options.port, data_dir=options.data_dir)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{options.config}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # SIGTERM unwinds like Ctrl-C, through the `finally` below, which stops the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        idp.start()
    except OSError as exc:
        print(f"cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(describe(idp), flush=True)
        print("\nCtrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        idp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
