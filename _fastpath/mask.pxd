# cython: language_level=3
"""What record_batch needs from the masking kernel: the output buffer, the per-call context, the Masker."""

from cpython.bytes cimport PyBytes_AS_STRING, _PyBytes_Resize
from cpython.mem cimport PyMem_Free
from cpython.ref cimport Py_DECREF, PyObject
from libc.string cimport memcpy, memset


# Which part of a record a field is; rules name one of them as their target.
cdef enum Target:
    TARGET_KEY = 0
    TARGET_VALUE = 1
    TARGET_HEADER = 2


cdef struct Buf:
    unsigned char* data     # the bytes written so far, or NULL before the first write
    Py_ssize_t len          # bytes written
    Py_ssize_t cap          # bytes allocated
    Py_ssize_t limit        # len may not grow past this; OverflowError names it
    Py_ssize_t first        # size of the first allocation
    bint as_bytes           # data lives in a bytes object (made by buf_init_bytes), handed out by buf_take_bytes
    PyObject* bytes         # that object (owned), once allocated


cdef inline void buf_init(Buf* b, Py_ssize_t limit) noexcept:
    b.data = NULL
    b.len = 0
    b.cap = 0
    b.limit = limit
    b.first = 256
    b.as_bytes = False
    b.bytes = NULL


cdef inline void buf_init_bytes(Buf* b, Py_ssize_t limit, Py_ssize_t first) noexcept:
    """A buffer that buf_take_bytes turns into a bytes object without copying; first sizes its first allocation,
    so that a result about as large as its input is written without growing. Nothing is allocated until written."""
    buf_init(b, limit)
    b.first = first
    b.as_bytes = True


cdef inline object buf_take_bytes(Buf* b):
    """The bytes written, as the bytes object they were written in; b is left empty."""
    if b.bytes == NULL:
        return b""
    _PyBytes_Resize(&b.bytes, b.len)
    cdef object result = <object>b.bytes
    Py_DECREF(result)
    buf_init_bytes(b, b.limit, b.first)
    return result


cdef inline void buf_free(Buf* b) noexcept:
    if b.bytes != NULL:
        Py_DECREF(<object>b.bytes)
    elif not b.as_bytes:
        PyMem_Free(b.data)
    b.data = NULL
    b.bytes = NULL
    b.len = 0
    b.cap = 0


# Growing is rare (the first write of a call, or an output larger than guessed), and kept out of line (mask.pyx):
# the puts below stay small enough for the compiler to inline them where the kernel writes.
cdef int buf_grow(Buf* b, Py_ssize_t need) except -1 nogil


cdef inline int buf_reserve(Buf* b, Py_ssize_t extra) except -1 nogil:
    if b.cap - b.len < extra:
        buf_grow(b, b.len + extra)
    return 0


cdef inline int buf_put(Buf* b, const void* src, Py_ssize_t n) except -1 nogil:
    if b.cap - b.len < n:
        buf_grow(b, b.len + n)
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef inline int buf_fill(Buf* b, unsigned char byte, Py_ssize_t n) except -1 nogil:
    if b.cap - b.len < n:
        buf_grow(b, b.len + n)
    memset(b.data + b.len, byte, n)
    b.len += n
    return 0


cdef struct MaskCtx:
    Buf a                       # scratch: each rule reads the previous rule's result and writes the other one
    Buf b
    const unsigned char* result # the masked field, valid until the next mask_field call
    Py_ssize_t result_len
    Py_ssize_t* counts          # replacements made (one per match or masked value), per rule index (Masker.names)
    Py_ssize_t masked           # replacements made, all rules
    Buf scan                    # the detectors' candidate bitmaps (mask.pyx, _scan)...
    const unsigned char* scan_of    # ...of this field's payload, or NULL: stale once the field changes
    Py_ssize_t scan_len
    int scan_kinds
    Buf glue                    # the field as the rules read it: a Glue zlib one inflated (framed as uncompressed),
                                # UTF-16 text as UTF-8; and a UTF-16 field's result encoded back
    Py_ssize_t inflate_left     # what such fields may still inflate to, all together (one partition's budget)
    Buf narrow                  # a run of UTF-16 or UTF-32 ASCII characters as one byte each (mask.pyx, _mask_wide)
    Buf narrow_masked           # and what a rule made of it


cdef class Masker:
    cdef readonly tuple names   # rule names by rule index
    cdef tuple _key_rules       # compiled rules per target, in the order they were given
    cdef tuple _value_rules
    cdef tuple _header_rules
    cdef readonly bint has_key_rules
    cdef readonly bint has_value_rules
    cdef readonly bint has_header_rules
    cdef int scan_kinds[3]      # per target: the candidate bitmaps its detector rules read (SCAN_* bits)
    cdef PyObject** _rules_at[3]  # per target: its rules, borrowed from the tuples above
    cdef int _nrules[3]
    cdef int* _walk_together[3]   # per target and rule: how many path rules from it on are walked as one (1: alone)
    cdef bint _reads_wide[3]    # per target: it has detector or regex rules, which also read UTF-16/32 text

    cdef int mask_field(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                        const unsigned char* data, Py_ssize_t n) except -1 nogil
    cdef int _mask_rules(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                         const unsigned char* data, Py_ssize_t n) except -1 nogil
    cdef int _mask_utf16(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                         const unsigned char* data, Py_ssize_t n) except -1 nogil
    cdef int _mask_wide(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                        const unsigned char* data) except -1 nogil
    cdef int _mask_wide_runs(self, MaskCtx* ctx, int target, const unsigned char* header_key,
                             Py_ssize_t header_key_len, const unsigned char* data, int width, bint big,
                             bint* changed) except -1 nogil


cdef int maskctx_init(MaskCtx* ctx, Masker masker) except -1
cdef void maskctx_free(MaskCtx* ctx) noexcept
cdef dict counts_by_name(MaskCtx* ctx, Masker masker)
