"""SASL client mechanisms for the gateway's own (vaulted) credential: PLAIN and SCRAM (RFC 5802, 7677).

Only the gateway speaks these, upstream to the brokers; nothing here is reachable by a client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from gateway.config import SaslSettings


class SaslFailure(Exception):
    """Upstream authentication failed; the message never contains the credential."""


_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


@lru_cache(maxsize=16)
def _salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    # PBKDF2 with thousands of iterations costs milliseconds; the broker's salt and
    # iteration count are fixed per user, so one derivation serves every connection.
    return hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)


class ScramClient:
    """Three steps: first() -> final(server_first) -> verify(server_final)."""

    MIN_ITERATIONS = 4096  # RFC 7677; a broker asking for fewer is not trusted with our credential

    def __init__(self, settings: SaslSettings) -> None:
        self._hash = _HASHES[settings.mechanism]
        self._settings = settings
        self._nonce = secrets.token_urlsafe(24)
        self._first_bare = f"n={_saslname(settings.username)},r={self._nonce}"
        self._auth_message = b""
        self._salted = b""

    def first(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        try:
            attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise SaslFailure("malformed SCRAM server-first message") from exc
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise SaslFailure("SCRAM server nonce does not extend the client nonce")
        if iterations < self.MIN_ITERATIONS:
            raise SaslFailure(f"SCRAM iteration count {iterations} below {self.MIN_ITERATIONS}")
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        self._salted = _salted_password(self._hash, self._settings.password.reveal(), salt, iterations)
        client_key = hmac.digest(self._salted, b"Client Key", self._hash)
        stored_key = hashlib.new(self._hash, client_key).digest()
        signature = hmac.digest(stored_key, self._auth_message, self._hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        text = server_final.decode(errors="replace")
        if text.startswith("e="):
            raise SaslFailure(f"broker refused the SCRAM proof: {text[2:80]}")
        server_key = hmac.digest(self._salted, b"Server Key", self._hash)
        expected = base64.b64encode(hmac.digest(server_key, self._auth_message, self._hash)).decode()
        if not hmac.compare_digest(text, f"v={expected}"):
            raise SaslFailure("broker's SCRAM server signature does not verify")


def plain_message(settings: SaslSettings) -> bytes:
    return b"\0" + settings.username.encode() + b"\0" + settings.password.reveal().encode()
