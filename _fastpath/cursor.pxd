# cython: language_level=3
"""The one bounded read cursor: the only place that turns wire bytes into numbers and spans.

Every read checks the bytes left before it touches memory, and every violation
raises the parser's own exception class (``Cursor.error``) with the offset, so a
parser never does pointer arithmetic of its own. Kafka's varints are ProtoBuf's:
7 bits per byte, least significant group first, zigzag for signed values. An
int varint has at most 5 bytes and a long at most 10; a longer one, or one whose
value does not fit its type, is an error rather than something to wrap around.

Each read returns a sentinel that the type cannot otherwise produce or, for
full-width integers, one after which Cython checks the error indicator.
"""

from cpython.ref cimport PyObject


cdef struct Cursor:
    const unsigned char* data   # base of the buffer; positions are offsets from it
    Py_ssize_t pos              # next byte to read
    Py_ssize_t end              # one past the last byte this cursor may read
    PyObject* error             # exception class raised on a violation; a module-level class, so borrowed


cdef inline void cursor_init_nogil(Cursor* c, const unsigned char* data, Py_ssize_t pos, Py_ssize_t end,
                                   PyObject* error) noexcept nogil:
    """cursor_init for code that runs without the GIL: error is the class, borrowed (a module-level one)."""
    c.data = data
    c.pos = pos
    c.end = end
    c.error = error


cdef inline void cursor_init(Cursor* c, const unsigned char* data, Py_ssize_t pos, Py_ssize_t end,
                             object error) noexcept:
    cursor_init_nogil(c, data, pos, end, <PyObject*>error)


cdef inline int cursor_fail(Cursor* c, str what) except -1:
    raise (<object>c.error)(f"{what} at offset {c.pos}")


cdef extern from *:
    # Cython's own branch hint: keeps the raising paths out of the way of the inlined checks.
    bint unlikely(bint condition) noexcept nogil


cdef inline int _cursor_short(Cursor* c, Py_ssize_t n) except -1 nogil:
    with gil:
        if n < 0:
            raise (<object>c.error)(f"negative length {n} at offset {c.pos}")
        raise (<object>c.error)(f"needs {n} bytes at offset {c.pos}, {c.end - c.pos} left")


cdef inline int cursor_need(Cursor* c, Py_ssize_t n) except -1 nogil:
    if unlikely(n < 0 or c.end - c.pos < n):
        return _cursor_short(c, n)
    return 0


cdef inline bint cursor_has(Cursor* c, Py_ssize_t n) noexcept nogil:
    """Whether n more bytes can be read; for the one place a short read is not an error (a partial batch)."""
    return n >= 0 and c.end - c.pos >= n


cdef inline int read_int8(Cursor* c) except -0x80000000 nogil:
    cursor_need(c, 1)
    c.pos += 1
    return <signed char>c.data[c.pos - 1]


cdef inline int read_int16(Cursor* c) except -0x80000000 nogil:
    cursor_need(c, 2)
    cdef const unsigned char* p = c.data + c.pos
    c.pos += 2
    return <short>((p[0] << 8) | p[1])


cdef inline unsigned int _be32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline int read_int32(Cursor* c) except? -0x7FFFFFFF - 1 nogil:
    cursor_need(c, 4)
    c.pos += 4
    return <int>_be32(c.data + c.pos - 4)


cdef inline long long read_uint32(Cursor* c) except -1 nogil:
    cursor_need(c, 4)
    c.pos += 4
    return _be32(c.data + c.pos - 4)


cdef inline long long read_int64(Cursor* c) except? -1 nogil:
    cursor_need(c, 8)
    cdef unsigned long long v = (<unsigned long long>_be32(c.data + c.pos) << 32) | _be32(c.data + c.pos + 4)
    c.pos += 8
    return <long long>v


cdef inline unsigned long long _read_uvarint(Cursor* c, int max_bytes,
                                             unsigned long long limit) except? 0xFFFFFFFFFFFFFFFF nogil:
    cdef unsigned char b
    cdef unsigned long long value = 0
    cdef int shift = 0
    cdef int count = 0
    while True:
        if count == max_bytes:
            with gil:
                cursor_fail(c, f"varint longer than {max_bytes} bytes")
        cursor_need(c, 1)
        b = c.data[c.pos]
        c.pos += 1
        # Bits shifted past 64 would vanish silently; the limit check below cannot see them.
        if shift == 63 and (b & 0x7F) > 1:
            with gil:
                cursor_fail(c, "varint overflows 64 bits")
        value |= <unsigned long long>(b & 0x7F) << shift
        count += 1
        if not (b & 0x80):
            break
        shift += 7
    if value > limit:
        with gil:
            cursor_fail(c, f"varint {value} does not fit its type")
    return value


cdef inline int read_varint(Cursor* c) except? -0x7FFFFFFF - 1 nogil:
    """A zigzag int32 varint of at most 5 bytes."""
    cdef unsigned int u
    # Spelled out here so that the one- and two-byte cases (record lengths, deltas) inline into the record walk.
    if c.pos < c.end and c.data[c.pos] < 0x80:
        u = c.data[c.pos]
        c.pos += 1
    elif c.end - c.pos >= 2 and c.data[c.pos + 1] < 0x80:
        u = (c.data[c.pos] & 0x7F) | (<unsigned int>c.data[c.pos + 1] << 7)
        c.pos += 2
    else:
        u = <unsigned int>_read_uvarint(c, 5, 0xFFFFFFFF)
    return <int>((u >> 1) ^ (-(<int>(u & 1))))


cdef inline long long read_varlong(Cursor* c) except? -1 nogil:
    """A zigzag int64 varint of at most 10 bytes."""
    cdef unsigned long long u
    if c.pos < c.end and c.data[c.pos] < 0x80:
        u = c.data[c.pos]
        c.pos += 1
    elif c.end - c.pos >= 2 and c.data[c.pos + 1] < 0x80:
        u = (c.data[c.pos] & 0x7F) | (<unsigned long long>c.data[c.pos + 1] << 7)
        c.pos += 2
    else:
        u = _read_uvarint(c, 10, 0xFFFFFFFFFFFFFFFF)
    return <long long>((u >> 1) ^ (-(<long long>(u & 1))))


cdef inline unsigned int read_uvarint32(Cursor* c) except? 0xFFFFFFFF nogil:
    """An unsigned varint of at most 5 bytes whose value fits 32 bits (snappy's length preamble)."""
    return <unsigned int>_read_uvarint(c, 5, 0xFFFFFFFF)


cdef inline Py_ssize_t read_span(Cursor* c, Py_ssize_t n) except -1 nogil:
    """Skip n bytes (n >= 0, all present); return where they start."""
    cursor_need(c, n)
    c.pos += n
    return c.pos - n


cdef inline Py_ssize_t read_sized(Cursor* c, Py_ssize_t* start, bint nullable) except -2 nogil:
    """A varint length then that many bytes: return the length (-1 for null) and set start."""
    cdef int n = read_varint(c)
    if n == -1 and nullable:
        start[0] = c.pos
        return -1
    start[0] = read_span(c, n)
    return n
