# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Walk Kafka v2 record batches and rebuild the ones whose records masking changed.

Wire layout of one batch (big-endian; offsets from the batch start):

    BASE_OFFSET             @0   int64
    BATCH_LENGTH            @8   int32   bytes after this field
    PARTITION_LEADER_EPOCH  @12  int32
    MAGIC                   @16  int8    2 (0 and 1 are the legacy message sets, same offset)
    CRC                     @17  uint32  CRC32C of ATTRIBUTES..end of batch
    ATTRIBUTES              @21  int16   bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd),
                                         bit 3 log-append time, bit 4 transactional, bit 5 control
    LAST_OFFSET_DELTA       @23  int32
    BASE_TIMESTAMP          @27  int64
    MAX_TIMESTAMP           @35  int64
    PRODUCER_ID             @43  int64
    PRODUCER_EPOCH          @51  int16
    BASE_SEQUENCE           @53  int32
    RECORD_COUNT            @57  int32
    RECORDS                 @61  the records, compressed as one block when the codec is not none

    Record := length:varint attributes:int8 timestampDelta:varlong offsetDelta:varint
              keyLength:varint key valueLength:varint value      (length -1: null)
              headerCount:varint [keyLength:varint key valueLength:varint value]*

A record's attributes must be 0: Kafka defines no record attribute, and its clients
write 0. One with the high bit set is read as a varint by aiokafka and kafka-python,
which then split the record's fields elsewhere than the gateway masked them, so a
record with any other byte there is unmaskable.

A Fetch or Produce partition's ``records`` holds batches back to back. Brokers end
a fetch with a partial batch when the next one does not fit; clients skip it.
``mask_records`` and ``iter_records`` leave it out too (it can be neither
checked nor masked) and never raise for it; the data they return stops after
the last complete batch, and the client fetches the rest from there.

Masking keeps every header field except BATCH_LENGTH and CRC, which are
recomputed; control batches pass untouched; compressed batches come back with
the codec they had (gzip level 1, snappy in the framing it came in, lz4 frames
of independent 64 KiB blocks like Kafka's own, zstd level 1). Nothing is copied
unless something changed. Every failure raises UnmaskableRecords: the caller
blanks the partition rather than send anything partly masked.

The record walk and the rules run without the GIL (batch by batch), so threads
can mask several partitions at once; the codecs release it too (cramjam). Only
regex rules, the orjson route, growing the output and raising take it back.
"""

from cpython.buffer cimport PyBUF_READ, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport PyObject
from libc.string cimport memcmp, memmove

from _fastpath.cursor cimport (Cursor, cursor_fail, cursor_has, cursor_init, cursor_init_nogil, cursor_need,
                               read_int8, read_int16, read_int32, read_int64, read_sized, read_span, read_uint32,
                               read_uvarint32, read_varint, read_varlong)
from _fastpath.mask cimport (TARGET_HEADER, TARGET_KEY, TARGET_VALUE, Buf, Masker, MaskCtx, buf_free, buf_init,
                             buf_init_bytes, buf_put, buf_reserve, buf_take_bytes, counts_by_name, maskctx_free,
                             maskctx_init)
import cramjam
from crc32c import crc32c

from _fastpath.mask import UnmaskableField


class UnmaskableRecords(Exception):
    """The records cannot be masked (legacy format, malformed, or over a limit); the message says why."""


cdef PyObject* _UNMASKABLE = <PyObject*>UnmaskableRecords   # for cursors made without the GIL (the class lives on)


cdef enum:
    BASE_OFFSET = 0
    BATCH_LENGTH = BASE_OFFSET + 8
    PARTITION_LEADER_EPOCH = BATCH_LENGTH + 4
    MAGIC = PARTITION_LEADER_EPOCH + 4
    CRC = MAGIC + 1
    ATTRIBUTES = CRC + 4
    LAST_OFFSET_DELTA = ATTRIBUTES + 2
    BASE_TIMESTAMP = LAST_OFFSET_DELTA + 4
    MAX_TIMESTAMP = BASE_TIMESTAMP + 8
    PRODUCER_ID = MAX_TIMESTAMP + 8
    PRODUCER_EPOCH = PRODUCER_ID + 8
    BASE_SEQUENCE = PRODUCER_EPOCH + 2
    RECORD_COUNT = BASE_SEQUENCE + 4
    RECORDS = RECORD_COUNT + 4
    LOG_OVERHEAD = BATCH_LENGTH + 4     # the bytes BATCH_LENGTH does not count

cdef enum:
    CODEC_MASK = 0x07
    CODEC_NONE = 0
    CODEC_GZIP = 1
    CODEC_SNAPPY = 2
    CODEC_LZ4 = 3
    CODEC_ZSTD = 4
    LOG_APPEND_TIME = 0x08
    CONTROL = 0x20

DEF DEFAULT_MAX_INFLATED = 64 << 20     # a decompressed batch larger than this is refused as a bomb
DEF FIRST_GUESS = 1 << 20               # first output buffer for codecs that do not state their size...
DEF GUESS_RATIO = 32                    # ...or this many times the compressed size, whichever is larger
DEF GZIP_LEVEL = 1
DEF ZSTD_LEVEL = 1
DEF XERIAL_HEADER = 16                  # magic, version int32, compatible-version int32
DEF XERIAL_BLOCK = 32 * 1024            # uncompressed bytes per block, as snappy-java writes them
DEF LZ4_BLOCK = 64 * 1024               # matches the frame header's block-size byte below

_XERIAL_START = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"  # magic, version 1, compatible 1
# LZ4 frame: magic, FLG 0x60 (version 1, independent blocks, no checksums), BD 0x40 (64 KiB blocks),
# header checksum. Kafka's Java reader decodes blocks independently: linked blocks would break it.
_LZ4_START = b"\x04\x22\x4d\x18\x60\x40\x82"
_LZ4_END = b"\x00\x00\x00\x00"
_CODEC_NAMES = {CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy", CODEC_LZ4: "lz4", CODEC_ZSTD: "zstd"}


cdef class MaskResult:
    """What mask_records did. data: new bytes; or, when no record changed, the input itself (or a slice of it
    without a trailing partial batch). masked: replacements made; counts: the same by rule name."""

    cdef readonly object data
    cdef readonly Py_ssize_t masked
    cdef readonly dict counts
    cdef readonly bint changed

    def __repr__(self):
        return f"MaskResult(changed={self.changed}, masked={self.masked}, counts={self.counts}, {len(self.data)} bytes)"


cdef struct Batch:
    Py_ssize_t start        # offset of BASE_OFFSET
    Py_ssize_t end          # one past the batch
    int attributes
    int count               # RECORD_COUNT


cdef inline void _put_be32(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = v >> 24
    p[1] = v >> 16
    p[2] = v >> 8
    p[3] = v


cdef inline object _view(const unsigned char* p, Py_ssize_t n):
    return PyMemoryView_FromMemory(<char*>p, n, PyBUF_READ)


cdef int _next_batch(Cursor* c, Batch* b) except -1:
    """Read the batch at c.pos: 1 when complete (c moves past it), 0 at the end or before a trailing partial batch."""
    cdef Cursor h
    cdef int length, magic
    cdef long long crc
    # A batch is partial when its header does not show the magic byte yet, or its declared length runs past the end.
    if not cursor_has(c, MAGIC + 1):
        return 0
    cursor_init(&h, c.data, c.pos, c.end, UnmaskableRecords)
    read_int64(&h)
    length = read_int32(&h)
    read_int32(&h)
    magic = read_int8(&h)
    if magic == 0 or magic == 1:
        cursor_fail(c, "legacy message format")
    if magic != 2:
        cursor_fail(c, f"unknown magic {magic}")
    if length < RECORDS - LOG_OVERHEAD:
        cursor_fail(c, f"batch length {length} is shorter than a batch header")
    if not cursor_has(c, LOG_OVERHEAD + length):
        return 0
    b.start = read_span(c, LOG_OVERHEAD + length)
    b.end = c.pos
    h.end = b.end
    crc = read_uint32(&h)
    if crc32c(_view(c.data + h.pos, h.end - h.pos)) != crc:
        cursor_fail(&h, "batch CRC does not match")
    b.attributes = read_int16(&h)
    read_span(&h, RECORD_COUNT - LAST_OFFSET_DELTA)
    b.count = read_int32(&h)
    if b.count < 0:
        cursor_fail(&h, f"negative record count {b.count}")
    if (b.attributes & CODEC_MASK) > CODEC_ZSTD:
        cursor_fail(&h, f"unknown compression codec {b.attributes & CODEC_MASK}")
    return 1


# ---------------------------------------------------------------------------------------------------------------
# Codecs (cramjam). Decompression writes into a buffer of bounded size and fails, rather than grows, when the
# data does not fit; a buffer is allocated uninitialised, so only the bytes actually written cost memory.
# zstandard decompressed zstd about 1.4x faster here, but its bounded stream reader returns a truncated frame
# without an error and its one-shot call allocates whatever size the frame header claims; lz4.frame was within
# 10% of cramjam. Neither is worth a second dependency.

cdef object _inflate(int codec, const unsigned char* src, Py_ssize_t n, Py_ssize_t cap, Py_ssize_t* size,
                    bint* xerial):
    """Decompress src[0:n] into a new bytearray whose first size[0] bytes are the records.
    xerial tells whether snappy data came in xerial framing, so that it goes back the same way."""
    xerial[0] = False
    if codec == CODEC_SNAPPY:
        xerial[0] = n >= XERIAL_HEADER and memcmp(src, b"\x82SNAPPY\x00", 8) == 0
        return _inflate_snappy(src, n, cap, size, xerial[0])
    module = cramjam.gzip if codec == CODEC_GZIP else cramjam.lz4 if codec == CODEC_LZ4 else cramjam.zstd
    cdef Py_ssize_t want = min(cap, max(FIRST_GUESS, n * GUESS_RATIO))
    while True:
        out = PyByteArray_FromStringAndSize(NULL, want)
        try:
            size[0] = module.decompress_into(_view(src, n), out)
            return out
        except cramjam.DecompressionError:
            # Too small or corrupt: the library does not say which, so grow until the cap settles it.
            if want >= cap:
                raise UnmaskableRecords(
                    f"{_CODEC_NAMES[codec]} data is corrupt or inflates past {cap} bytes") from None
            want = min(cap, want * 4)


cdef unsigned int _snappy_length(const unsigned char* block, Py_ssize_t n) except? 0xFFFFFFFF:
    """The uncompressed length a raw snappy block starts with."""
    cdef Cursor c
    cursor_init(&c, block, 0, n, UnmaskableRecords)
    return read_uvarint32(&c)


cdef object _inflate_snappy(const unsigned char* src, Py_ssize_t n, Py_ssize_t cap, Py_ssize_t* size, bint xerial):
    # Raw snappy states its uncompressed length up front; xerial framing (snappy-java, what Kafka's Java
    # client writes) is a header, then blocks of int32 length + raw snappy. Either way the total is known
    # and checked against the cap before anything is allocated.
    cdef Cursor c
    cdef Py_ssize_t total = 0, start, length
    cdef list blocks = []
    if xerial:
        cursor_init(&c, src, XERIAL_HEADER, n, UnmaskableRecords)
        while c.pos < c.end:
            length = read_int32(&c)
            start = read_span(&c, length)
            blocks.append((start, length, _snappy_length(src + start, length)))
    else:
        blocks.append((0, n, _snappy_length(src, n)))
    for start, length, declared in blocks:
        total += declared
    if total > cap:
        raise UnmaskableRecords(f"snappy data inflates past {cap} bytes")
    out = PyByteArray_FromStringAndSize(NULL, total)
    target = memoryview(out)
    total = 0
    try:
        for start, length, declared in blocks:
            if cramjam.snappy.decompress_raw_into(_view(src + <Py_ssize_t>start, length),
                                                  target[total:total + declared]) != declared:
                raise UnmaskableRecords("snappy block shorter than it declares")
            total += declared
    except cramjam.DecompressionError as exc:
        raise UnmaskableRecords(f"snappy data is corrupt: {exc}") from None
    finally:
        target.release()
    size[0] = total
    return out


cdef int _put_object(Buf* out, object data) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        buf_put(out, view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int _put_u32(Buf* out, unsigned int v, bint little) except -1:
    cdef unsigned char b[4]
    if little:
        b[0] = v
        b[1] = v >> 8
        b[2] = v >> 16
        b[3] = v >> 24
    else:
        _put_be32(b, v)
    return buf_put(out, b, 4)


cdef int _deflate(int codec, bint xerial, const unsigned char* src, Py_ssize_t n, Buf* out) except -1:
    """Append src[0:n] compressed with codec (in xerial framing for snappy when xerial) to out."""
    cdef Py_ssize_t off, take
    data = _view(src, n)
    if codec == CODEC_GZIP:
        return _put_object(out, cramjam.gzip.compress(data, level=GZIP_LEVEL))
    if codec == CODEC_ZSTD:
        return _put_object(out, cramjam.zstd.compress(data, level=ZSTD_LEVEL))
    if codec == CODEC_SNAPPY and not xerial:
        return _put_object(out, cramjam.snappy.compress_raw(data))
    if codec == CODEC_SNAPPY:
        _put_object(out, _XERIAL_START)
        for off in range(0, n, XERIAL_BLOCK):
            block = cramjam.snappy.compress_raw(data[off:off + XERIAL_BLOCK])
            _put_u32(out, len(block), False)
            _put_object(out, block)
        return 0
    _put_object(out, _LZ4_START)
    for off in range(0, n, LZ4_BLOCK):
        take = min(LZ4_BLOCK, n - off)
        block = cramjam.lz4.compress_block(data[off:off + take], store_size=False)
        if len(block) < take:
            _put_u32(out, len(block), True)
            _put_object(out, block)
        else:
            # The frame format stores a block that does not shrink as it is, flagged by the size's high bit.
            _put_u32(out, <unsigned int>take | 0x80000000u, True)
            buf_put(out, src + off, take)
    return _put_object(out, _LZ4_END)


# ---------------------------------------------------------------------------------------------------------------
# Records

cdef struct Rebuild:
    const unsigned char* src    # the bytes the records are read from
    Buf* dst                    # where the rebuilt bytes go
    Py_ssize_t synced           # src[:synced] is represented in dst


cdef inline int _sync(Rebuild* rb, Py_ssize_t upto) except -1 nogil:
    buf_put(rb.dst, rb.src + rb.synced, upto - rb.synced)
    rb.synced = upto
    return 0


cdef inline int _varint_size(long long v) noexcept nogil:
    cdef unsigned long long u = (<unsigned long long>v << 1) ^ <unsigned long long>(v >> 63)
    cdef int k = 1
    while u >= 0x80:
        u >>= 7
        k += 1
    return k


cdef inline void _write_varint(unsigned char* p, long long v) noexcept nogil:
    """Zigzag varint at p; the caller has made room for _varint_size(v) bytes."""
    cdef unsigned long long u = (<unsigned long long>v << 1) ^ <unsigned long long>(v >> 63)
    while u >= 0x80:
        p[0] = (u & 0x7F) | 0x80
        u >>= 7
        p += 1
    p[0] = u


cdef inline int _put_varint(Buf* out, long long v) except -1 nogil:
    cdef int size = _varint_size(v)
    buf_reserve(out, size)
    _write_varint(out.data + out.len, v)
    out.len += size
    return 0


cdef struct Record:
    Py_ssize_t start        # its length varint
    Py_ssize_t body         # the byte after the length
    Py_ssize_t copied       # once changed: src[body:copied] is in dst
    Py_ssize_t at           # once changed: dst offset of its length
    int length              # the length it came with
    bint changed


cdef int _field(Masker masker, MaskCtx* ctx, Rebuild* rb, Cursor* c, Record* r, int target,
                const unsigned char* header_key, Py_ssize_t header_key_len) except -1 nogil:
    """Read the nullable field at c; when the rules for target change it, write the record so far into dst."""
    cdef Py_ssize_t length_at = c.pos, field
    cdef Py_ssize_t size = read_sized(c, &field, True)
    if size < 0 or not masker.mask_field(ctx, target, header_key, header_key_len, rb.src + field, size):
        return 0
    if not r.changed:
        # The record's length comes first but is known only at its end: leave room for the old one.
        r.changed = True
        _sync(rb, r.start)
        r.at = rb.dst.len
        buf_reserve(rb.dst, _varint_size(r.length))
        rb.dst.len += _varint_size(r.length)
        r.copied = r.body
    buf_put(rb.dst, rb.src + r.copied, length_at - r.copied)
    _put_varint(rb.dst, ctx.result_len)
    buf_put(rb.dst, ctx.result, ctx.result_len)
    r.copied = field + size
    return 0


cdef int _finish_record(Rebuild* rb, Record* r, Py_ssize_t end) except -1 nogil:
    """Copy the rest of a changed record and set its length."""
    buf_put(rb.dst, rb.src + r.copied, end - r.copied)
    cdef int old_prefix = _varint_size(r.length)
    cdef Py_ssize_t size = rb.dst.len - r.at - old_prefix
    if size > 0x7FFFFFFF:
        with gil:
            raise UnmaskableRecords("masked record exceeds 2 GiB")
    cdef int new_prefix = _varint_size(size)
    if new_prefix != old_prefix:
        buf_reserve(rb.dst, new_prefix - old_prefix)
        memmove(rb.dst.data + r.at + new_prefix, rb.dst.data + r.at + old_prefix, size)
        rb.dst.len += new_prefix - old_prefix
    _write_varint(rb.dst.data + r.at, size)
    rb.synced = end
    return 0


cdef int _undefined_attributes(Cursor* c) except -1:
    return cursor_fail(c, f"record attributes {c.data[c.pos - 1]:#04x}: Kafka defines none, and clients read "
                          "such a record differently")


cdef bint _mask_records(Masker masker, MaskCtx* ctx, Rebuild* rb, Py_ssize_t start, Py_ssize_t end,
                        int count) except -1 nogil:
    """Mask the count records in src[start:end]; the changed ones go rebuilt into dst (after syncing what
    precedes them). Returns whether any changed; the caller syncs the rest."""
    cdef Cursor c
    cdef Record r
    cdef Py_ssize_t record_end, field, key, key_size
    cdef int headers, i, h
    cdef bint dirty = False
    cursor_init_nogil(&c, rb.src, start, end, _UNMASKABLE)
    for i in range(count):
        r.start = c.pos
        r.length = read_varint(&c)
        cursor_need(&c, r.length)
        r.body = c.pos
        r.changed = False
        record_end = r.body + r.length
        # The record's own length bounds every field in it.
        c.end = record_end
        if read_int8(&c) != 0:
            with gil:
                _undefined_attributes(&c)
        read_varlong(&c)
        read_varint(&c)
        if masker.has_key_rules:
            _field(masker, ctx, rb, &c, &r, TARGET_KEY, NULL, 0)
        else:
            read_sized(&c, &field, True)
        if masker.has_value_rules:
            _field(masker, ctx, rb, &c, &r, TARGET_VALUE, NULL, 0)
        else:
            read_sized(&c, &field, True)
        headers = read_varint(&c)
        if headers < 0:
            with gil:
                cursor_fail(&c, f"negative header count {headers}")
        for h in range(headers):
            key_size = read_sized(&c, &key, False)
            if masker.has_header_rules:
                _field(masker, ctx, rb, &c, &r, TARGET_HEADER, rb.src + key, key_size)
            else:
                read_sized(&c, &field, True)
        if c.pos != record_end:
            with gil:
                cursor_fail(&c, f"record declares {r.length} bytes but its fields end {record_end - c.pos} before")
        c.end = end
        if r.changed:
            _finish_record(rb, &r, record_end)
            dirty = True
    if c.pos != end:
        with gil:
            cursor_fail(&c, f"{end - c.pos} bytes after the batch's {count} records")
    return dirty


cdef int _seal(Buf* out, Py_ssize_t batch) except -1:
    """Set BATCH_LENGTH and CRC of the batch rebuilt at out[batch:]."""
    cdef Py_ssize_t length = out.len - batch - LOG_OVERHEAD
    if length > 0x7FFFFFFF:
        raise UnmaskableRecords("masked batch exceeds 2 GiB")
    _put_be32(out.data + batch + BATCH_LENGTH, <unsigned int>length)
    _put_be32(out.data + batch + CRC, crc32c(_view(out.data + batch + ATTRIBUTES, out.len - batch - ATTRIBUTES)))
    return 0


def mask_records(records, Masker masker, *, Py_ssize_t max_output, Py_ssize_t max_inflated=DEFAULT_MAX_INFLATED):
    """Mask every complete batch in a Fetch/Produce ``records`` field; see the module docstring.

    ``max_output`` caps the returned data; ``max_inflated`` caps one decompressed batch, and what the
    Glue-framed zlib values of all the records inflate to, together.
    Raises UnmaskableRecords when the records cannot be masked, whatever the reason.
    """
    cdef Py_buffer view
    cdef Cursor c
    cdef Batch b
    cdef MaskCtx ctx
    cdef Buf out, records_out
    cdef Rebuild rb, inner
    cdef Py_ssize_t before_len, before_synced, size, batch_at
    cdef int codec
    cdef bint xerial, dirty
    cdef const unsigned char* src
    PyObject_GetBuffer(records, &view, PyBUF_SIMPLE)
    # About the input's size, in a bytes object that becomes the result: no growing, no final copy.
    buf_init_bytes(&out, max_output, view.len + view.len // 8 + 1024)
    buf_init(&records_out, PY_SSIZE_T_MAX)
    try:
        maskctx_init(&ctx, masker)
        ctx.inflate_left = max_inflated    # also what Glue-framed zlib fields may inflate to, together
        src = <const unsigned char*>view.buf
        cursor_init(&c, src, 0, view.len, UnmaskableRecords)
        rb.src = src
        rb.dst = &out
        rb.synced = 0
        while _next_batch(&c, &b):
            if b.attributes & CONTROL:
                continue
            if b.count == 0:
                # Kafka's empty batches (kept by compaction for producer state) have no payload at all.
                # Bytes behind a zero count would be delivered by readers that read to the batch's end
                # (librdkafka does) without ever being masked: refuse them.
                if b.end != b.start + RECORDS:
                    raise UnmaskableRecords(f"a batch declares no records but carries {b.end - b.start - RECORDS} "
                                            f"bytes of them")
                continue
            codec = b.attributes & CODEC_MASK
            if codec == CODEC_NONE:
                before_len = out.len
                before_synced = rb.synced
                with nogil:     # the record walk and the rules run without the GIL: partitions mask side by side
                    dirty = _mask_records(masker, &ctx, &rb, b.start + RECORDS, b.end, b.count)
                if dirty:
                    _sync(&rb, b.end)
                    _seal(&out, before_len + b.start - before_synced)
                continue
            inflated = _inflate(codec, src + b.start + RECORDS, b.end - b.start - RECORDS, max_inflated, &size,
                                &xerial)
            inner.src = <const unsigned char*>PyByteArray_AS_STRING(inflated)
            inner.dst = &records_out
            inner.synced = 0
            records_out.len = 0
            with nogil:
                dirty = _mask_records(masker, &ctx, &inner, 0, size, b.count)
            if dirty:
                _sync(&inner, size)
                _sync(&rb, b.start)
                batch_at = out.len
                buf_put(&out, src + b.start, RECORDS)
                _deflate(codec, xerial, records_out.data, records_out.len, &out)
                rb.synced = b.end
                _seal(&out, batch_at)
        result = MaskResult()
        result.masked = ctx.masked
        result.counts = counts_by_name(&ctx, masker)
        result.changed = rb.synced > 0 or c.pos != view.len
        if rb.synced > 0:
            _sync(&rb, c.pos)
            result.data = buf_take_bytes(&out)
        elif c.pos != view.len:
            result.data = records[:c.pos]
        else:
            result.data = records
        if len(result.data) > max_output:
            raise UnmaskableRecords(f"records exceed max_output ({max_output} bytes)")
        return result
    except OverflowError:
        # Only the output buffer has a limit.
        raise UnmaskableRecords(f"records exceed max_output ({max_output} bytes)") from None
    except UnmaskableField as exc:
        raise UnmaskableRecords(str(exc)) from None
    finally:
        maskctx_free(&ctx)
        buf_free(&records_out)
        buf_free(&out)
        PyBuffer_Release(&view)


def batch_cuts(records, Py_ssize_t piece_bytes):
    """Where to cut ``records`` into pieces of whole batches of at least ``piece_bytes`` each, the last one at
    least half that (and never empty): the offsets of the cuts, in order. Masking each piece on its own gives,
    joined, what masking the whole gives, as every batch is masked and sealed on its own. Only lengths that lead
    to another whole batch are followed; anything else (a truncated last batch, a hostile length) is left in the
    last piece, for mask_records to judge as it would in the whole. In C: a partition of many small batches
    costs nanoseconds per batch."""
    cdef Py_buffer view
    cdef Py_ssize_t at = 0, start = 0, end, length, last = max(piece_bytes // 2, 1)
    cdef const unsigned char* p
    cuts = []
    PyObject_GetBuffer(records, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        end = view.len
        while end - at >= LOG_OVERHEAD:
            length = <int>((<unsigned int>p[at + BATCH_LENGTH] << 24) | (<unsigned int>p[at + BATCH_LENGTH + 1] << 16)
                           | (<unsigned int>p[at + BATCH_LENGTH + 2] << 8) | p[at + BATCH_LENGTH + 3])
            if length < 0 or length > end - at - LOG_OVERHEAD:
                break
            at += LOG_OVERHEAD + length
            if at - start >= piece_bytes and end - at >= last:
                cuts.append(at)
                start = at
        return cuts
    finally:
        PyBuffer_Release(&view)


def iter_records(records, *, Py_ssize_t max_inflated=DEFAULT_MAX_INFLATED):
    """Every record of every complete batch as (offset, timestamp, key, value, headers); for tests and debugging.

    Headers are [(str key, bytes or None)], as Kafka clients give them; control batches are included.
    """
    cdef Py_buffer view
    cdef Cursor c, r
    cdef Batch b
    cdef Py_ssize_t size, field, record_end, batch_end
    cdef long long base_offset, base_timestamp, max_timestamp, timestamp
    cdef int length, i, h, headers
    cdef bint xerial
    cdef const unsigned char* data
    out = []
    PyObject_GetBuffer(records, &view, PyBUF_SIMPLE)
    try:
        cursor_init(&c, <const unsigned char*>view.buf, 0, view.len, UnmaskableRecords)
        while _next_batch(&c, &b):
            if b.count == 0:
                continue
            cursor_init(&r, c.data, b.start, b.end, UnmaskableRecords)
            base_offset = read_int64(&r)
            read_span(&r, BASE_TIMESTAMP - BATCH_LENGTH)
            base_timestamp = read_int64(&r)
            max_timestamp = read_int64(&r)
            if b.attributes & CODEC_MASK:
                inflated = _inflate(b.attributes & CODEC_MASK, c.data + b.start + RECORDS, b.end - b.start - RECORDS,
                                    max_inflated, &size, &xerial)
                data = <const unsigned char*>PyByteArray_AS_STRING(inflated)
                cursor_init(&r, data, 0, size, UnmaskableRecords)
            else:
                data = c.data
                cursor_init(&r, data, b.start + RECORDS, b.end, UnmaskableRecords)
            for i in range(b.count):
                length = read_varint(&r)
                cursor_need(&r, length)
                record_end = r.pos + length
                batch_end = r.end
                r.end = record_end
                if read_int8(&r) != 0:
                    _undefined_attributes(&r)
                timestamp = read_varlong(&r)
                timestamp = max_timestamp if b.attributes & LOG_APPEND_TIME else base_timestamp + timestamp
                offset = base_offset + read_varint(&r)
                size = read_sized(&r, &field, True)
                key = None if size < 0 else PyBytes_FromStringAndSize(<const char*>data + field, size)
                size = read_sized(&r, &field, True)
                value = None if size < 0 else PyBytes_FromStringAndSize(<const char*>data + field, size)
                headers = read_varint(&r)
                if headers < 0:
                    cursor_fail(&r, f"negative header count {headers}")
                header_list = []
                for h in range(headers):
                    size = read_sized(&r, &field, False)
                    try:
                        name = PyBytes_FromStringAndSize(<const char*>data + field, size).decode("utf-8")
                    except UnicodeDecodeError:
                        cursor_fail(&r, "header key is not UTF-8")
                    size = read_sized(&r, &field, True)
                    header_list.append((name, None if size < 0 else
                                        PyBytes_FromStringAndSize(<const char*>data + field, size)))
                if r.pos != record_end:
                    cursor_fail(&r, f"record declares {length} bytes but its fields end {record_end - r.pos} before")
                r.end = batch_end
                out.append((offset, timestamp, key, value, header_list))
            if r.pos != r.end:
                cursor_fail(&r, f"{r.end - r.pos} bytes after the batch's {b.count} records")
    finally:
        PyBuffer_Release(&view)
    return out
