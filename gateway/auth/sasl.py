"""Client-side SASL messages the gateway terminates: OAUTHBEARER (RFC 7628) and PLAIN (RFC 4616).

OAUTHBEARER client-first message::

    gs2-header  = "n," [ "a=" authzid ] ","      ; no channel binding ("y"/"p=" refused)
    message     = gs2-header %x01 *( key "=" value %x01 ) %x01
    key "auth"  = "Bearer" SP token               ; scheme compared case-insensitively

PLAIN::

    message     = [authzid] NUL authcid NUL passwd ; with the token as the password

Both parsers treat the bytes as hostile: size-capped, strict about separators,
and their errors never contain the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 64 * 1024
_KEY = re.compile(r"[A-Za-z]+")
# RFC 7628 3.1: value = *(VCHAR / SP / HTAB / CR / LF)
_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token


class SaslError(Exception):
    """The client's SASL message is malformed; the reason is safe to log."""


@dataclass(frozen=True)
class BearerMessage:
    authzid: str
    token: str
    extensions: dict[str, str]


def _saslname(value: str) -> str:
    # RFC 5801: "," and "=" in authzid are escaped as =2C and =3D; any other "=" is an error.
    if re.search(r"=(?!2C|3D)", value):
        raise SaslError("malformed authzid escape")
    return value.replace("=2C", ",").replace("=3D", "=")


def parse_oauthbearer(message: bytes) -> BearerMessage:
    if len(message) > MAX_MESSAGE_BYTES:
        raise SaslError("OAUTHBEARER message too large")
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise SaslError("OAUTHBEARER message is not ASCII") from None
    header, sep, rest = text.partition("\x01")
    if not sep or not rest.endswith("\x01\x01") and rest != "\x01":
        raise SaslError("OAUTHBEARER message is not terminated by two ^A")
    parts = header.split(",")
    if len(parts) != 3 or parts[0] != "n" or parts[2] != "":
        raise SaslError("OAUTHBEARER GS2 header must be 'n,[a=authzid],' (no channel binding)")
    authzid = ""
    if parts[1]:
        if not parts[1].startswith("a="):
            raise SaslError("OAUTHBEARER GS2 header has an unknown attribute")
        authzid = _saslname(parts[1][2:])
    pairs: dict[str, str] = {}
    for item in rest[:-2].split("\x01") if rest != "\x01" else []:
        key, eq, value = item.partition("=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise SaslError("OAUTHBEARER key/value pair is malformed")
        if key in pairs:
            raise SaslError(f"OAUTHBEARER key {key!r} repeated")
        pairs[key] = value
    auth = pairs.pop("auth", None)
    if auth is None:
        raise SaslError("OAUTHBEARER message has no auth= value")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        raise SaslError("OAUTHBEARER auth scheme must be Bearer")
    token = token.strip(" ")
    if not _TOKEN.fullmatch(token):
        raise SaslError("OAUTHBEARER bearer token is malformed")
    return BearerMessage(authzid, token, pairs)


def parse_plain(message: bytes) -> tuple[str, str, str]:
    """(authzid, username, password) of a SASL/PLAIN message."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise SaslError("PLAIN message too large")
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("PLAIN message must have three NUL-separated fields")
    try:
        authzid, username, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN message is not UTF-8") from None
    if not username or not password:
        raise SaslError("PLAIN username and password must not be empty")
    return authzid, username, password
