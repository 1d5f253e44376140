"""A minimal raw Kafka client for tests that must see exact bytes: requests by the project's codec."""

from __future__ import annotations

import socket
import struct

from gateway.protocol import codec


class WireClient:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.next_id = 0
        self.received = bytearray()  # every byte the gateway sent, for leak scans

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._read_exact(4))[0]
        return struct.pack(">i", size) + self._read_exact(size)

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed by the gateway")
            self.received += chunk
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def request(self, api_key: int, version: int, body: dict, client_id: str = "wire-test") -> dict:
        self.next_id += 1
        self.sock.sendall(codec.encode_request_frame(api_key, version, self.next_id, client_id, body))
        correlation_id, response = codec.decode_response_frame(api_key, version, self.read_frame())
        assert correlation_id == self.next_id, (correlation_id, self.next_id)
        return response

    def sign_in(self, token: str, mechanism: str = "OAUTHBEARER", authzid: str = "") -> dict:
        """SaslHandshake v1 + SaslAuthenticate v2, as Kafka clients do; returns the SaslAuthenticate answer."""
        from gateway.protocol.apis import SASL_AUTHENTICATE, SASL_HANDSHAKE

        handshake = self.request(SASL_HANDSHAKE, 1, {"mechanism": mechanism})
        assert handshake["error_code"] == 0, handshake
        if mechanism == "PLAIN":
            message = f"{authzid}\0user\0{token}".encode()
        else:
            message = f"n,{'a=' + authzid if authzid else ''},\x01auth=Bearer {token}\x01\x01".encode()
        return self.request(SASL_AUTHENTICATE, 2, {"auth_bytes": message})

    def sign_in_scram(self, username: str, password: str) -> None:
        """SCRAM-SHA-512 straight to a broker, for comparing the gateway with Kafka's own authorizer."""
        from gateway.config import SaslSettings, Secret
        from gateway.protocol.apis import SASL_AUTHENTICATE, SASL_HANDSHAKE
        from gateway.scram import ScramClient

        assert self.request(SASL_HANDSHAKE, 1, {"mechanism": "SCRAM-SHA-512"})["error_code"] == 0
        scram = ScramClient(SaslSettings("SCRAM-SHA-512", username, Secret(password, "test")))
        first = self.request(SASL_AUTHENTICATE, 2, {"auth_bytes": scram.first()})
        assert first["error_code"] == 0, first
        final = self.request(SASL_AUTHENTICATE, 2, {"auth_bytes": scram.final(bytes(first["auth_bytes"]))})
        assert final["error_code"] == 0, final
        scram.verify(bytes(final["auth_bytes"]))

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the gateway closes the connection (EOF or reset) within the timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.received += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
