"""A broker connection authenticated with the gateway's service credential.

States::

    CONNECTING --tcp/tls--> AUTHENTICATING --SaslHandshake+SaslAuthenticate--> READY --attach--> ATTACHED
         \\                        \\                                              |
          +------------------------+-------------------> CLOSED <-----------------+

While AUTHENTICATING (or READY and used by the gateway itself, e.g. for cluster
discovery) the connection runs one request at a time through ``request()``.
Once ``attach()``ed to a client connection, every response frame goes straight
to that connection and the gateway never sends requests of its own on it: one
upstream connection per client connection, never shared across identities.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from typing import Any, Protocol

from _fastpath.frame import unfilled_bytearray
from gateway.config import Limits, UpstreamSettings
from gateway.protocol import codec
from gateway.protocol.apis import SASL_AUTHENTICATE, SASL_HANDSHAKE
from gateway.scram import SaslFailure, ScramClient, plain_message

log = logging.getLogger("streamward.upstream")

GATEWAY_CLIENT_ID = "streamward"


class UpstreamError(Exception):
    """The broker could not be reached or refused the gateway; safe to log (never holds the credential)."""


class UpstreamSink(Protocol):
    def upstream_frames(self, frames: list[tuple[Any, int]]) -> None: ...
    def upstream_progress(self, frame: bytearray, received: int) -> None: ...
    def upstream_closed(self, reason: str) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


def tls_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    context = ssl.create_default_context(cafile=settings.tls.ca_file)
    if not settings.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_SIZE = struct.Struct(">ii")  # frame size, then the response's correlation id
SCRATCH_BYTES = 32 * 1024  # per upstream connection: small, as idle connections can be many


class Upstream(asyncio.BufferedProtocol):
    """Responses are received straight into memory the gateway owns (BufferedProtocol): small frames
    through a scratch buffer, and a large frame (a Fetch response of megabytes) into a buffer of its own
    size, so its bytes are never copied in user space between the broker's socket and the client's."""

    def __init__(self, limits: Limits, address: tuple[str, int]) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self._max_frame = limits.max_response_bytes
        self._scratch = bytearray(SCRATCH_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._scratch_len = 0  # bytes of the scratch buffer not yet cut into frames
        self._large: bytearray | None = None  # the large frame being received, size prefix included
        self._large_view: memoryview | None = None
        self._large_have = 0
        self._sink: UpstreamSink | None = None
        self._waiter: asyncio.Future[Any] | None = None
        self._next_correlation_id = 0
        self._closed_reason: str | None = None
        self._write_buffer_high = limits.write_buffer_high

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, settings: UpstreamSettings, limits: Limits, address: tuple[str, int]) -> Upstream:
        loop = asyncio.get_running_loop()
        context = tls_context(settings)
        server_hostname = None
        if context is not None:
            server_hostname = (settings.tls.server_hostname if settings.tls else None) or address[0]
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cls(limits, address), address[0], address[1], ssl=context, server_hostname=server_hostname
                ),
                settings.connect_timeout_s,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect to broker {address[0]}:{address[1]}: {exc!r}") from None
        try:
            if settings.sasl is not None:
                await asyncio.wait_for(upstream._authenticate(settings), settings.connect_timeout_s)
        except BaseException as exc:
            upstream.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise UpstreamError(f"broker {address[0]}:{address[1]} did not complete authentication") from None
            if isinstance(exc, SaslFailure | codec.DecodeError):
                raise UpstreamError(f"authentication to broker {address[0]}:{address[1]} failed: {exc}") from None
            raise
        return upstream

    async def _authenticate(self, settings: UpstreamSettings) -> None:
        sasl = settings.sasl
        assert sasl is not None
        handshake = await self.request(SASL_HANDSHAKE, 1, {"mechanism": sasl.mechanism})
        if handshake["error_code"] != 0:
            raise SaslFailure(f"broker does not accept mechanism {sasl.mechanism} (error {handshake['error_code']})")
        if sasl.mechanism == "PLAIN":
            await self._sasl_step(plain_message(sasl))
            return
        scram = ScramClient(sasl)
        server_first = await self._sasl_step(scram.first())
        server_final = await self._sasl_step(scram.final(server_first))
        scram.verify(server_final)

    async def _sasl_step(self, auth_bytes: bytes) -> bytes:
        response = await self.request(SASL_AUTHENTICATE, 2, {"auth_bytes": auth_bytes})
        if response["error_code"] != 0:
            # The broker's message is about the gateway's principal, never the password itself.
            raise SaslFailure(f"error {response['error_code']}: {(response.get('error_message') or '')[:120]}")
        return bytes(response["auth_bytes"])

    # -- the gateway's own requests (before attach) -----------------------------------------------------
    async def request(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        if self._sink is not None or self.transport is None:
            raise UpstreamError("upstream connection is attached or closed")
        self._next_correlation_id += 1
        correlation_id = self._next_correlation_id
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(codec.encode_request_frame(api_key, version, correlation_id, GATEWAY_CLIENT_ID, body))
        frame = await self._waiter
        got, response = codec.decode_response_frame(api_key, version, frame)
        if got != correlation_id:
            raise UpstreamError(f"broker answered correlation id {got}, expected {correlation_id}")
        return response

    # -- attached to a client connection ------------------------------------------------------------------
    def attach(self, sink: UpstreamSink) -> None:
        self._sink = sink
        if self._closed_reason is not None:
            sink.upstream_closed(self._closed_reason)

    def write(self, frames: list[Any]) -> None:
        if self.transport is not None:
            self.transport.writelines(frames)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        transport.set_write_buffer_limits(high=self._write_buffer_high)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large_view is not None:
            return self._large_view[self._large_have:]
        return self._scratch_view[self._scratch_len:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_have += nbytes
            if self._large_have < len(self._large):
                if self._sink is not None:
                    self._sink.upstream_progress(self._large, self._large_have)
                return
            frame = self._large
            assert self._large_view is not None
            self._large_view.release()  # the frame is handed on and never written again
            self._large, self._large_view = None, None
            self._deliver([(frame, _SIZE.unpack_from(frame)[1])])
            return
        self._scratch_len += nbytes
        try:
            frames = self._cut_frames()
        except ValueError as exc:
            self._fail(f"broker sent an unframeable response: {exc}")
            return
        if frames:
            self._deliver(frames)

    def _cut_frames(self) -> list[tuple[Any, int]]:
        """Whole frames out of the scratch buffer; a large incomplete one moves to a buffer of its own."""
        frames = []
        view, end, pos = self._scratch_view, self._scratch_len, 0
        while end - pos >= 8:
            size, correlation_id = _SIZE.unpack_from(view, pos)
            if size < 4 or size > self._max_frame:
                raise ValueError(f"frame size {size} outside 4..{self._max_frame}")
            total = size + 4
            if end - pos >= total:
                frames.append((bytes(view[pos:pos + total]), correlation_id))
                pos += total
                continue
            if total > SCRATCH_BYTES // 2:
                # The rest goes straight into its final place (the broker is trusted with the size: it is
                # capped by max_response_bytes, and the gateway asked for this response).
                # Not zeroed: every byte is received into it before the frame is handed on.
                self._large = unfilled_bytearray(total)
                self._large_view = memoryview(self._large)
                self._large[:end - pos] = view[pos:end]
                self._large_have = end - pos
                pos = end
            break
        if pos:
            remaining = end - pos
            # bytes() first: an in-place slice copy of overlapping ranges would be a memcpy, not a memmove.
            self._scratch[:remaining] = bytes(view[pos:end])
            self._scratch_len = remaining
        return frames

    def _deliver(self, frames: list[tuple[Any, int]]) -> None:
        if self._sink is not None:
            self._sink.upstream_frames(frames)
        elif self._waiter is not None and not self._waiter.done() and len(frames) == 1:
            self._waiter.set_result(frames[0][0])
        else:
            self._fail("broker sent a response nobody asked for")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("broker closed the connection" if exc is None else f"broker connection lost: {exc!r}")
        self.transport = None

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_resume_writing()

    def _fail(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        if self.transport is not None:
            self.transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(UpstreamError(reason))
        if self._sink is not None:
            self._sink.upstream_closed(reason)
