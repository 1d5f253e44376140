# cython: language_level=3, boundscheck=False, wraparound=False
"""Walk a Kafka message along a plan compiled from Kafka's own specs, without decoding it.

The hot path needs a handful of facts from frames it otherwise forwards as
they are: where Produce's ``acks`` sits, whether a Produce or Fetch response
carries the KIP-951 NodeEndpoints tagged field, a Fetch request's replica id.
Decoding the whole message in Python to learn them costs tens of microseconds;
this walker skips over everything else in well under one.

A plan (built by ``gateway.protocol.walkplan`` from the message specs, never
typed by hand) is a flat int32 program:

    SKIP n                  n fixed bytes
    STR16 nullable          int16 length, then bytes (-1: null)
    STRC nullable           unsigned varint length+1, then bytes (0: null)
    BYTES32 nullable        int32 length, then bytes (-1: null)
    BYTESC nullable         unsigned varint length+1, then bytes (0: null)
    ARRAY32 nullable len    int32 count, then count x the next len ops
    ARRAYC nullable len     unsigned varint count+1, then count x the next len ops
    NSTRUCT len             int8 presence (-1: null, else present), then the next len ops
    MARK slot               record the current position in marks[slot]
    TAGS watch              tagged fields: varint count, then (varint tag, varint size, size bytes);
                            when watch >= 0, the value position of tag t < 8 goes to marks[watch + t]
    LOG code                append (code, current position) to the log: MARK for fields inside arrays,
                            which occur once per element (walk_logged only; walk ignores it)

Every length is checked against the bytes that are left before it is used;
varints longer than 5 bytes are errors. Any violation raises WalkError.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc


class WalkError(ValueError):
    """The message does not follow its spec; the connection must be closed."""


cdef enum:
    OP_SKIP = 0
    OP_STR16 = 1
    OP_STRC = 2
    OP_BYTES32 = 3
    OP_BYTESC = 4
    OP_ARRAY32 = 5
    OP_ARRAYC = 6
    OP_NSTRUCT = 7
    OP_MARK = 8
    OP_TAGS = 9
    OP_LOG = 10

OPS = {"SKIP": OP_SKIP, "STR16": OP_STR16, "STRC": OP_STRC, "BYTES32": OP_BYTES32, "BYTESC": OP_BYTESC,
       "ARRAY32": OP_ARRAY32, "ARRAYC": OP_ARRAYC, "NSTRUCT": OP_NSTRUCT, "MARK": OP_MARK, "TAGS": OP_TAGS, "LOG": OP_LOG}

# Nesting is bounded by the specs (a handful of levels); the limit guards the C stack.
DEF MAX_DEPTH = 16
DEF MAX_MARKS = 64


cdef struct Cursor:
    const unsigned char* data
    Py_ssize_t pos
    Py_ssize_t end


cdef inline int _need(Cursor* c, Py_ssize_t n) except -1:
    if n < 0 or c.end - c.pos < n:
        raise WalkError(f"needs {n} bytes at offset {c.pos}, {c.end - c.pos} left")
    return 0


cdef inline Py_ssize_t _uvarint(Cursor* c) except -1:
    cdef unsigned long long value = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        _need(c, 1)
        b = c.data[c.pos]
        c.pos += 1
        value |= <unsigned long long>(b & 0x7F) << shift
        if not (b & 0x80):
            break
        shift += 7
        if shift >= 35:
            raise WalkError(f"varint longer than 5 bytes at offset {c.pos}")
    if value > 0x7FFFFFFF:
        raise WalkError(f"varint {value} out of range at offset {c.pos}")
    return <Py_ssize_t>value


cdef inline Py_ssize_t _int16(Cursor* c) except? -99999:
    _need(c, 2)
    cdef short v = <short>((c.data[c.pos] << 8) | c.data[c.pos + 1])
    c.pos += 2
    return v


cdef inline Py_ssize_t _int32(Cursor* c) except? -99999:
    _need(c, 4)
    cdef int v = <int>((<unsigned int>c.data[c.pos] << 24) | (<unsigned int>c.data[c.pos + 1] << 16)
                       | (<unsigned int>c.data[c.pos + 2] << 8) | c.data[c.pos + 3])
    c.pos += 4
    return v


cdef inline int _skip_sized(Cursor* c, Py_ssize_t size, bint nullable, bint is_null) except -1:
    if is_null:
        if not nullable:
            raise WalkError(f"null in a non-nullable field at offset {c.pos}")
        return 0
    if size < 0:
        raise WalkError(f"negative length {size} at offset {c.pos}")
    _need(c, size)
    c.pos += size
    return 0


cdef int _run(const int* ops, Py_ssize_t start, Py_ssize_t stop, Cursor* c, Py_ssize_t* marks, list log,
              int depth) except -1:
    cdef Py_ssize_t i = start, n, count, k, body, tag, size, watch, value_at
    cdef int op
    if depth > MAX_DEPTH:
        raise WalkError("plan nests too deep")
    while i < stop:
        op = ops[i]
        if op == OP_SKIP:
            _need(c, ops[i + 1])
            c.pos += ops[i + 1]
            i += 2
        elif op == OP_STR16:
            n = _int16(c)
            _skip_sized(c, n, ops[i + 1], n == -1)
            i += 2
        elif op == OP_STRC or op == OP_BYTESC:
            n = _uvarint(c)
            _skip_sized(c, n - 1, ops[i + 1], n == 0)
            i += 2
        elif op == OP_BYTES32:
            n = _int32(c)
            _skip_sized(c, n, ops[i + 1], n == -1)
            i += 2
        elif op == OP_ARRAY32 or op == OP_ARRAYC:
            body = ops[i + 2]
            if op == OP_ARRAY32:
                count = _int32(c)
                if count == -1:
                    _skip_sized(c, 0, ops[i + 1], True)
                    count = 0
            else:
                count = _uvarint(c) - 1
                if count == -1:
                    _skip_sized(c, 0, ops[i + 1], True)
                    count = 0
            if count < 0:
                raise WalkError(f"negative array length at offset {c.pos}")
            # Every element takes at least one byte unless its body is empty: an array claiming more
            # elements than bytes left is rejected before the loop, not after billions of empty turns.
            if count > c.end - c.pos and body > 0:
                raise WalkError(f"array of {count} elements with {c.end - c.pos} bytes left")
            if body > 0:
                for k in range(count):
                    _run(ops, i + 3, i + 3 + body, c, marks, log, depth + 1)
            i += 3 + body
        elif op == OP_NSTRUCT:
            _need(c, 1)
            body = ops[i + 1]
            if <signed char>c.data[c.pos] == -1:
                c.pos += 1
            else:
                c.pos += 1
                _run(ops, i + 2, i + 2 + body, c, marks, log, depth + 1)
            i += 2 + body
        elif op == OP_MARK:
            marks[ops[i + 1]] = c.pos
            i += 2
        elif op == OP_TAGS:
            watch = ops[i + 1]
            count = _uvarint(c)
            for k in range(count):
                tag = _uvarint(c)
                size = _uvarint(c)
                value_at = c.pos
                _need(c, size)
                c.pos += size
                if watch >= 0 and tag < 8:
                    marks[watch + tag] = value_at
            i += 2
        elif op == OP_LOG:
            if log is not None:
                log.append((ops[i + 1], c.pos))
            i += 2
        else:
            raise WalkError(f"bad plan opcode {op}")
    return 0


cdef class Plan:
    """A compiled walk program and the number of mark slots it writes."""

    cdef int* _ops
    cdef Py_ssize_t _len
    cdef readonly int marks

    def __cinit__(self, ops, int marks):
        if marks > MAX_MARKS:
            raise ValueError("too many marks")
        self._len = len(ops)
        self._ops = <int*>PyMem_Malloc(max(self._len, 1) * sizeof(int))
        if self._ops == NULL:
            raise MemoryError()
        for k in range(self._len):
            self._ops[k] = ops[k]
        self.marks = marks

    def __dealloc__(self):
        PyMem_Free(self._ops)

    def walk(self, frame, Py_ssize_t start=4):
        """Walk frame[start:] to its end; return the marks (positions in frame, -1 when absent)."""
        return self._walk(frame, start, None)

    def walk_logged(self, frame, Py_ssize_t start=4, Py_ssize_t received=-1):
        """As walk, and also the log: [(code, position)] of every LOG passed, in frame order.

        With ``received`` >= 0 only frame[:received] has arrived: the walk goes as far as those bytes allow
        and returns what it logged on the way, raising nothing (the whole frame is walked again once it is
        complete, and only that walk judges it). Marks are then meaningless."""
        log = []
        marks = self._walk(frame, start, log, received)
        return marks, log

    cdef list _walk(self, frame, Py_ssize_t start, list log, Py_ssize_t received=-1):
        cdef Py_buffer view
        cdef Cursor c
        cdef Py_ssize_t marks[MAX_MARKS]
        cdef Py_ssize_t k
        for k in range(self.marks):
            marks[k] = -1
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            c.data = <const unsigned char*>view.buf
            c.end = view.len if received < 0 else min(received, view.len)
            c.pos = start
            if start < 0 or start > c.end:
                if received >= 0:
                    return []
                raise WalkError("start outside the frame")
            try:
                _run(self._ops, 0, self._len, &c, marks, log, 0)
            except WalkError:
                if received < 0:
                    raise
                return []
            if c.pos != c.end and received < 0:
                raise WalkError(f"{c.end - c.pos} bytes left after the message")
        finally:
            PyBuffer_Release(&view)
        return [marks[k] for k in range(self.marks)]
