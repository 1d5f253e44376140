# cython: language_level=3, boundscheck=False, wraparound=False
"""Cut Kafka's length-prefixed frames out of a byte stream and peek their headers.

Wire layout (all integers big-endian):

    Frame            := Size:int32  Payload[Size]
    Request payload  := ApiKey:int16 @0  ApiVersion:int16 @2  CorrelationId:int32 @4
                        ClientId:nullable_string(int16 length) @8  ...body
    Response payload := CorrelationId:int32 @0  ...

A frame handed out includes its 4-byte size prefix, so a frame the gateway does
not change is forwarded as the exact bytes it arrived as. Frames that sit whole
inside one received chunk are handed out as zero-copy memoryviews of that
(immutable) chunk; a frame that spans chunks is joined once when complete.

The size is checked against ``max_frame`` as soon as its four bytes are known,
before anything is allocated for the body, and the bytes of a partial frame are
held only as the chunks that actually arrived: a peer that declares a huge frame
and sends nothing costs nothing.
"""

from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


class FrameError(Exception):
    """The stream cannot be framed; the connection must be closed. The message is safe to log."""


def unfilled_bytearray(Py_ssize_t size):
    """A bytearray of size bytes, not zeroed: for a buffer that is filled whole before anyone reads it.
    (``bytearray(size)`` writes zeros over megabytes only for them to be overwritten.)"""
    if size < 0:
        raise ValueError("negative size")
    return PyByteArray_FromStringAndSize(NULL, size)


cdef inline int _be32(const unsigned char* p) noexcept nogil:
    return <int>((<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3])


cdef inline short _be16(const unsigned char* p) noexcept nogil:
    return <short>((p[0] << 8) | p[1])


# Smallest payloads that still hold the fixed part of a header.
DEF REQUEST_HEADER_MIN = 10   # api_key, api_version, correlation_id, client_id length
DEF RESPONSE_HEADER_MIN = 4   # correlation_id


cdef class FrameReader:
    """Incremental framer for one direction of one connection.

    ``feed(chunk)`` returns the frames completed by that chunk. For a request
    reader each item is ``(frame, api_key, api_version, correlation_id)``; for a
    response reader ``(frame, correlation_id)``.
    """

    cdef public Py_ssize_t max_frame   # largest payload accepted; can be raised after authentication
    cdef bint _requests                # peek request headers (True) or response headers (False)
    cdef list _parts                   # chunks of the incomplete frame (or of its size prefix)
    cdef Py_ssize_t _have              # bytes held in _parts
    cdef Py_ssize_t _need              # full length of the incomplete frame incl. prefix; 0 until the prefix is known

    def __cinit__(self, Py_ssize_t max_frame, bint requests):
        self.max_frame = max_frame
        self._requests = requests
        self._parts = []
        self._have = 0
        self._need = 0

    @property
    def buffered(self):
        """Bytes held for an incomplete frame."""
        return self._have

    cdef Py_ssize_t _check_size(self, int size) except -1:
        cdef Py_ssize_t minimum = REQUEST_HEADER_MIN if self._requests else RESPONSE_HEADER_MIN
        if size < minimum:
            raise FrameError(f"frame size {size} is smaller than a header")
        if size > self.max_frame:
            raise FrameError(f"frame size {size} exceeds the limit of {self.max_frame} bytes")
        return size + 4

    cdef object _entry(self, object frame, const unsigned char* p):
        # p points at the size prefix of frame
        if self._requests:
            return (frame, _be16(p + 4), _be16(p + 6), _be32(p + 8))
        return (frame, _be32(p + 4))

    def feed(self, bytes chunk):
        cdef list out = []
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, full
        cdef bytes joined
        cdef object view

        if self._have:
            if self._need == 0:
                take = min(4 - self._have, n)
                self._parts.append(chunk[:take])
                self._have += take
                pos = take
                if self._have < 4:
                    return out
                joined = b"".join(self._parts)
                self._need = self._check_size(_be32(<const unsigned char*>PyBytes_AS_STRING(joined)))
                self._parts = [joined]
            take = min(self._need - self._have, n - pos)
            if take > 0:
                self._parts.append(chunk[pos:pos + take])
                self._have += take
                pos += take
            if self._have < self._need:
                return out
            joined = b"".join(self._parts)
            self._parts = []
            self._have = 0
            self._need = 0
            out.append(self._entry(joined, <const unsigned char*>PyBytes_AS_STRING(joined)))

        view = memoryview(chunk)
        while n - pos >= 4:
            full = self._check_size(_be32(p + pos))
            if n - pos < full:
                self._need = full
                break
            out.append(self._entry(view[pos:pos + full], p + pos))
            pos += full
        if pos < n:
            self._parts.append(chunk[pos:])
            self._have = n - pos
        return out
