# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Mask sensitive data inside one record field (key, value or a header value) without decoding it.

A ``Masker`` compiles rules once; ``mask_field`` runs them in order, each on the
previous one's result, writing into scratch buffers of a per-call ``MaskCtx`` (so
one Masker can serve any number of concurrent calls).

Fields
    A field whose first byte is 0 and that has at least 5 bytes is taken as
    schema-registry framed (Confluent: magic 0, 4-byte schema id; Protobuf's
    message-index varints follow, inside what is called the payload here). The
    5-byte header is kept; rules see the payload. A field (or payload) whose
    first non-blank byte is ``{`` or ``[`` is handled as JSON; anything else as
    text, or as binary when framed. A leading UTF-8 byte order mark is kept and
    the rest read as if it were not there (Jackson and Python's json skip it
    and read the JSON after it: its escapes must be read decoded here too).
    A field starting with a UTF-16 byte order mark (Kafka's StringSerializer
    with the encoding UTF-16 writes one) is decoded and the rules read it as
    UTF-8; when one changes it, it goes out as UTF-16 again, in the byte order
    it came in. One that does not decode as UTF-16 is read as bytes.

    Detectors and regexes also read UTF-16 and UTF-32 text without a byte
    order mark, in either byte order, wherever it sits in a field (a .NET
    producer's Encoding.Unicode, Java's UTF_16LE, a string inside a binary
    payload): each run of at least WIDE_MIN_RUN characters that are printable
    ASCII (or tab, CR, LF) in such an encoding (their other bytes zero) is
    read as one byte a character, and a match is replaced in place, fitted to
    its length and written back in that encoding, so the field keeps its
    length and its framing. Text without a zero byte costs one memchr; a
    binary field, a SIMD pass looking for four such characters in a row.

    AWS Glue schema registry framing is 18 bytes: version 3, a compression byte
    (0 none, 5 zlib) and the 16-byte schema version id. A path rule keeps the
    header and masks the payload whole; detectors and regexes keep the first two
    bytes and scan the rest, id included (a field that merely starts like Glue
    framing must not hide 16 bytes from them): the id as binary, and the payload
    as JSON when it is JSON (Glue's JSON format; its readers decode escapes),
    else as binary. A zlib-compressed
    payload (its zlib header checked) is inflated first, all such payloads of
    one call together up to a cap (mask_records: max_inflated), and rules
    run on it framed as uncompressed; when one changes it, the field goes out
    that way (compression byte 0, which Glue's deserializers read per record),
    else as it came. One that does not inflate within the cap raises
    UnmaskableField: compressed, it would pass every detector unseen.

Rules
    ``json_path``  A path of names, ``*`` (any member) and ``[*]`` (any element):
                   ``card.number``, ``customer.*.email``, ``items[*].iban``. A scan
                   in C follows the path, skipping everything else (duplicate
                   keys are all masked), and replaces each target value; path
                   rules listed one after another (for the same fields) share
                   one walk, which gives what they give one by one. It hands
                   the value to orjson (loads, mask, dumps) when it cannot decide:
                   an escaped key on the path, a target string with escapes for
                   ``partial``/``hash``, nesting deeper than MAX_JSON_DEPTH. A field
                   that is not JSON, and any framed payload (not decodable here),
                   is masked whole: fail closed.
    ``detector``   Finds values by shape anywhere in the bytes, in C (see below).
    ``regex``      Python ``re`` over the field's bytes: a bytes object per field
                   and a regex search per match, so roughly 1 µs per field plus the
                   regex's own time; use detectors on hot topics. Empty matches
                   are ignored.
    In JSON, a detector or regex match inside a string is replaced inside that
    string; a match in a number replaces the number with a JSON string, so the
    document stays valid JSON. A JSON field containing a ``\\u`` escape (which could
    spell digits or ``@``), or a regex match crossing a string's end or touching
    an escape, goes through the orjson route, where each decoded string is
    scanned on its own. In a framed binary payload every replacement is cut or
    padded with ``*`` to the matched length, so Avro's and Protobuf's length
    prefixes stay right.

Detectors (ASCII; a match never continues a word: the bytes around it are not letters or digits)
    The iban and phone detectors (and the card detector with them) share one pass over a field (sw_scan) that
    marks, per detector, the bytes where a match could be anchored; each then looks only there, and the pass is
    redone only after a rule changed the field. Alone, the card detector probes every 13th byte instead.
    card   13-19 digits, first digit 2-6 (every card brand: this leaves out
           millisecond timestamps and the like), Luhn-valid; either one run of
           digits or groups of 3-6 digits with one space or dash between groups.
           Digits right after ``<digit>.`` or right before ``.<digit>`` are parts
           of a decimal number, not cards. Overlapping candidates are masked as
           one span.
    email  local part of ``A-Za-z0-9._%+-``, ``@``, two or more labels of
           ``A-Za-z0-9-`` joined by dots, the last all letters and at least 2 long.
    iban   two letters naming a country of the IBAN registry, exactly that
           country's length, optional single spaces after every 4 characters,
           and a valid mod-97 check.
    ssn    ``AAA-GG-SSSS`` with dashes; area not 000, 666 or 9xx, group not 00,
           serial not 0000; not inside a longer dash-joined number. Nine bare
           digits are not taken: too many other numbers look like that.
    phone  ``+`` then 8-15 digits (first not 0), separated by single spaces, dashes
           or dots and at most one parenthesised group of 1-4 digits
           (``+1 (415) 555-0199``, ``+44 20 7946 0958``, ``+4915112345678``); or the
           North American separated forms ``415-555-0199``, ``415.555.0199``,
           ``(415) 555-0199``, optionally after ``1-``/``1.``, with area code and
           exchange starting 2-9. Bare digit runs without ``+`` are not phones.

Strategies
    redact   the placeholder (default ``****``; it may not contain ``"``, ``\\`` or
             control characters, so it is safe inside a JSON string).
    partial  the last ``keep_last`` characters (code points) kept, each other one
             replaced by ``*``; a value of ``keep_last`` characters or fewer is
             masked entirely. Objects and arrays get the placeholder.
    hash     HMAC-SHA256 of the matched bytes with the Masker's key, first 16
             bytes, base64url without padding (22 characters): the same input
             always gives the same token. A JSON string is hashed by its content,
             a number by its text, an object or array by its bytes.
    null     JSON ``null`` for a JSON value (a detector match that is the whole
             string makes it null; a part of a string is removed); an empty value
             for a whole field; a null record value or key stays null.
    A JSON target that is already ``null`` is left as it is and not counted.
"""

import re
import zlib

import orjson

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, _PyBytes_Resize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memset

from _fastpath.mask cimport (TARGET_HEADER, TARGET_KEY, TARGET_VALUE, Buf, buf_fill, buf_free, buf_init, buf_put,
                             buf_reserve)

cdef extern from "sha256.h":
    # HMAC-SHA256 in C from the key's two precomputed midstates (the hash strategy); see the header.
    ctypedef void (*sw_sha256_blocks_fn)(uint32_t* state, const uint8_t* data, size_t nblocks) noexcept nogil
    int SW_SHA256_AUTO
    int SW_SHA256_SCALAR
    int SW_SHA256_SHANI
    sw_sha256_blocks_fn sw_sha256_impl(int which) noexcept nogil
    void sw_sha256_init() noexcept nogil
    void sw_sha256_with(sw_sha256_blocks_fn blocks, const uint8_t* msg, size_t len, uint8_t* out) noexcept nogil
    void sw_sha256_midstate_with(sw_sha256_blocks_fn blocks, const uint8_t* block, uint32_t* state) noexcept nogil
    void sw_hmac_sha256_with(sw_sha256_blocks_fn blocks, const uint32_t* inner_mid, const uint32_t* outer_mid,
                             const uint8_t* msg, size_t len, uint8_t* out) noexcept nogil
    void sw_hmac_sha256(const uint32_t* inner_mid, const uint32_t* outer_mid, const uint8_t* msg, size_t len,
                        uint8_t* out) noexcept nogil

sw_sha256_init()    # SHA-NI when the CPU has it, else the portable code


# ---------------------------------------------------------------------------------------------------------------
# Output buffers (mask.pxd): the out-of-line part

cdef int buf_grow(Buf* b, Py_ssize_t need) except -1 nogil:
    """Make room in b for need bytes in all (mask.pxd). It takes the GIL for the allocator and for errors, so the
    kernel itself can run without it."""
    with gil:
        return _buf_grow_gil(b, need)


cdef int _buf_grow_gil(Buf* b, Py_ssize_t need) except -1:
    if need > b.limit:
        raise OverflowError(f"output would exceed {b.limit} bytes")
    # At least one byte: the empty bytes object is shared and cannot be resized.
    cdef Py_ssize_t cap = max(1, min(max(need, b.cap * 2, b.first), b.limit))
    cdef unsigned char* data
    cdef object block
    if b.as_bytes:
        if b.bytes == NULL:
            block = PyBytes_FromStringAndSize(NULL, cap)
            Py_INCREF(block)
            b.bytes = <PyObject*>block
        else:
            _PyBytes_Resize(&b.bytes, cap)
        data = <unsigned char*>PyBytes_AS_STRING(<object>b.bytes)
    else:
        data = <unsigned char*>PyMem_Realloc(b.data, cap)
        if data == NULL:
            raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef extern from "json_skip.h":
    # Skipping an object or array 64 bytes at a time (simdjson's stage 1); see the header.
    ctypedef struct sw_json_skip_impl:
        pass
    int SW_JSON_SKIP_AUTO
    int SW_JSON_SKIP_SCALAR
    int SW_JSON_SKIP_SIMD
    int SW_JSON_SKIP_AVX512
    Py_ssize_t SW_SKIP_FALLBACK
    const sw_json_skip_impl* sw_json_skip_get(int which) noexcept nogil
    const sw_json_skip_impl* sw_json_skip_fastest() noexcept nogil
    void sw_json_skip_init() noexcept nogil
    Py_ssize_t sw_json_skip_with(const sw_json_skip_impl* impl, const unsigned char* s, Py_ssize_t n, Py_ssize_t k,
                                 int max_depth) noexcept nogil

sw_json_skip_init()     # AVX-512BW or SSE2, with PCLMULQDQ, when the CPU has them, else the portable code

cdef extern from *:
    """
    /* Byte searches, sixteen bytes at a time with SSE2 (every x86-64 has it), else eight at a time (SWAR), else
       one at a time. No load passes n: a wide loop stops where a whole block no longer fits, and the rest is read
       as the block that ends at n (those bytes belong to the field too), or one byte at a time when the field is
       shorter than a block. */
    #if defined(__SSE2__) && defined(__GNUC__)
    #include <emmintrin.h>
    #define SW_SSE2 1
    #else
    #define SW_SSE2 0
    #endif
    /* SWAR: a byte of v equal to c shows as a zero byte of v ^ (c * ONES), and the lowest set high bit of
       (x - ONES) & ~x marks the first zero byte exactly (borrows only spoil higher ones). */
    #define SW_ONES 0x0101010101010101ULL
    #define SW_HIGHS 0x8080808080808080ULL
    #define SW_ZERO(x) (((x) - SW_ONES) & ~(x))
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define SW_WORDS 1
    #else
    #define SW_WORDS 0
    #endif

    /* Index of the first '"' or '\\' in s[k:n], or n. s[0:n] is all readable: a last partial block is read as
       the block that ends at n, its bytes before k dropped from the mask. */
    static inline Py_ssize_t sw_quote_or_backslash(const unsigned char *s, Py_ssize_t k, Py_ssize_t n) {
    #if SW_SSE2
        const __m128i quote = _mm_set1_epi8(0x22), backslash = _mm_set1_epi8(0x5C);
        __m128i v;
        unsigned int hit;
        for (; k + 16 <= n; k += 16) {
            v = _mm_loadu_si128((const __m128i *)(s + k));
            hit = (unsigned int)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
            if (hit) return k + __builtin_ctz(hit);
        }
        if (k < n && n >= 16) {
            v = _mm_loadu_si128((const __m128i *)(s + n - 16));
            hit = (unsigned int)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)))
                  >> (k - (n - 16));
            return hit ? k + __builtin_ctz(hit) : n;
        }
    #endif
    #if SW_WORDS
        for (; k + 8 <= n; k += 8) {
            uint64_t v, hit;
            memcpy(&v, s + k, 8);
            hit = (SW_ZERO(v ^ (SW_ONES * 0x22)) | SW_ZERO(v ^ (SW_ONES * 0x5C))) & SW_HIGHS;
            if (hit) return k + (__builtin_ctzll(hit) >> 3);
        }
    #endif
        while (k < n && s[k] != 0x22 && s[k] != 0x5C) k++;
        return k;
    }

    /* Index of the first '"', '{', '}', '[' or ']' in s[k:n] (all readable), or n. With bit 5 set, '[' and ']' read
       as '{' and '}'. */
    static inline Py_ssize_t sw_structural(const unsigned char *s, Py_ssize_t k, Py_ssize_t n) {
    #if SW_SSE2
        const __m128i quote = _mm_set1_epi8(0x22), open = _mm_set1_epi8(0x7B), close = _mm_set1_epi8(0x7D),
                      bit5 = _mm_set1_epi8(0x20);
        __m128i v, w;
        unsigned int hit;
        for (; k + 16 <= n; k += 16) {
            v = _mm_loadu_si128((const __m128i *)(s + k));
            w = _mm_or_si128(v, bit5);
            hit = (unsigned int)_mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(v, quote), _mm_or_si128(_mm_cmpeq_epi8(w, open), _mm_cmpeq_epi8(w, close))));
            if (hit) return k + __builtin_ctz(hit);
        }
        if (k < n && n >= 16) {     /* the block that ends at n, as in sw_quote_or_backslash */
            v = _mm_loadu_si128((const __m128i *)(s + n - 16));
            w = _mm_or_si128(v, bit5);
            hit = (unsigned int)_mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(v, quote), _mm_or_si128(_mm_cmpeq_epi8(w, open), _mm_cmpeq_epi8(w, close))))
                  >> (k - (n - 16));
            return hit ? k + __builtin_ctz(hit) : n;
        }
    #endif
    #if SW_WORDS
        for (; k + 8 <= n; k += 8) {
            uint64_t v, w, hit;
            memcpy(&v, s + k, 8);
            w = v | (SW_ONES * 0x20);
            hit = (SW_ZERO(v ^ (SW_ONES * 0x22)) | SW_ZERO(w ^ (SW_ONES * 0x7B)) | SW_ZERO(w ^ (SW_ONES * 0x7D)))
                  & SW_HIGHS;
            if (hit) return k + (__builtin_ctzll(hit) >> 3);
        }
    #endif
        while (k < n && s[k] != 0x22 && (s[k] | 0x20) != 0x7B && (s[k] | 0x20) != 0x7D) k++;
        return k;
    }

    /* Whether s[a:b] holds an odd number of '"' (s[0:b] all readable). SWAR's exact zero-byte test: the high bit
       of a byte of ~(((x & 0x7F..) + 0x7F..) | x | 0x7F..) is set only when that byte of x is zero; their parity
       folds down. */
    static inline int sw_odd_quotes(const unsigned char *s, Py_ssize_t a, Py_ssize_t b) {
        unsigned int odd = 0;
    #if SW_SSE2
        const __m128i quote = _mm_set1_epi8(0x22);
        unsigned int bits = 0;
        for (; a + 16 <= b; a += 16)
            bits ^= (unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + a)), quote));
        if (a < b && b >= 16) {     /* the block that ends at b, its bytes before a dropped */
            bits ^= (unsigned int)_mm_movemask_epi8(
                        _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + b - 16)), quote)) >> (a - (b - 16));
            a = b;
        }
        odd = (unsigned int)__builtin_parity(bits);
    #endif
    #if SW_WORDS
        const uint64_t low7 = SW_ONES * 0x7F;
        uint64_t parity = 0;
        for (; a + 8 <= b; a += 8) {
            uint64_t v;
            memcpy(&v, s + a, 8);
            v ^= SW_ONES * 0x22;
            parity ^= ~(((v & low7) + low7) | v | low7);
        }
        parity ^= parity >> 32;
        parity ^= parity >> 16;
        parity ^= parity >> 8;
        odd ^= (parity >> 7) & 1;
    #endif
        for (; a < b; a++) odd ^= s[a] == 0x22;
        return odd;
    }

    /* Index of the first byte of s[k:n] that is not an ASCII digit, or n. Eight at a time: a byte is a digit
       when its high nibble is 3 and stays 3 after adding 6. A carry out of a non-digit byte only spoils the bytes
       above it, never the first non-digit. */
    static inline Py_ssize_t sw_digits(const unsigned char *s, Py_ssize_t k, Py_ssize_t n) {
    #if SW_WORDS
        const uint64_t high = 0xF0F0F0F0F0F0F0F0ULL, threes = SW_ONES * 0x30;
        for (; k + 8 <= n; k += 8) {
            uint64_t v, bad;
            memcpy(&v, s + k, 8);
            bad = ((v & high) ^ threes) | (((v + SW_ONES * 6) & high) ^ threes);
            if (bad) return k + (__builtin_ctzll(bad) >> 3);
        }
    #endif
        while (k < n && (unsigned char)(s[k] - 0x30) <= 9) k++;
        return k;
    }

    /* Candidate bitmaps: the merged pass of the detectors. One pass over a field marks, for each detector asked
       for, every byte where that detector could anchor a match (a superset of where it does), one bit per byte,
       64 to a word (bit i of word t is byte 64t + i, no bit past n). A detector then looks only at those bytes,
       so most of a field costs a few instructions per 16 bytes and nothing per detector.
         card   s[i:i+13] are all digits, spaces or dashes: the runs long enough to hold a card start here
         iban   s[i], s[i+1] letters, s[i+2], s[i+3] digits, s[i-1] neither letter nor digit
         phone  '+', '(', or a digit whose s[i-1] is not a digit */
    #define SCAN_CARD 1
    #define SCAN_IBAN 2
    #define SCAN_PHONE 4

    static inline int sw_ctz64(uint64_t w) {
    #if defined(__GNUC__)
        return __builtin_ctzll(w);
    #else
        int i = 0;
        while (!(w & 1)) { w >>= 1; i++; }
        return i;
    #endif
    }

    typedef struct { uint64_t digit, run, alpha, sign; } sw_classes;  /* run: digit, space or dash; sign: + ( */

    /* The classes of the 64 bytes at p (all readable); kinds says which are needed. */
    static inline void sw_classes_of(const unsigned char *p, int kinds, sw_classes *c) {
        int i;
        c->digit = c->run = c->alpha = c->sign = 0;
    #if SW_SSE2
        const __m128i zero = _mm_set1_epi8(0x30), nine = _mm_set1_epi8(9), space = _mm_set1_epi8(0x20),
                      dash = _mm_set1_epi8(0x2D), a = _mm_set1_epi8(0x61), z = _mm_set1_epi8(25),
                      plus = _mm_set1_epi8(0x2B), paren = _mm_set1_epi8(0x28);
        for (i = 0; i < 64; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + i)), d = _mm_sub_epi8(v, zero), l;
            __m128i is_digit = _mm_cmpeq_epi8(_mm_min_epu8(d, nine), d);
            if (kinds & (SCAN_IBAN | SCAN_PHONE))
                c->digit |= (uint64_t)(unsigned int)_mm_movemask_epi8(is_digit) << i;
            if (kinds & SCAN_CARD)
                c->run |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_or_si128(is_digit, _mm_or_si128(
                    _mm_cmpeq_epi8(v, space), _mm_cmpeq_epi8(v, dash)))) << i;
            if (kinds & SCAN_IBAN) {
                l = _mm_sub_epi8(_mm_or_si128(v, space), a);
                c->alpha |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(l, z), l)) << i;
            }
            if (kinds & SCAN_PHONE)
                c->sign |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_or_si128(
                    _mm_cmpeq_epi8(v, plus), _mm_cmpeq_epi8(v, paren))) << i;
        }
    #else
        for (i = 0; i < 64; i++) {
            unsigned char b = p[i];
            uint64_t bit = 1ULL << i;
            if ((unsigned char)(b - 0x30) <= 9) c->digit |= bit, c->run |= bit;
            else if (b == 0x20 || b == 0x2D) c->run |= bit;
            else if ((unsigned char)((b | 0x20) - 0x61) <= 25) c->alpha |= bit;
            else if (b == 0x2B || b == 0x28) c->sign |= bit;
        }
    #endif
    }

    /* The classes of s[k:k+64], bytes past n counting as NUL (which is in no class). */
    static inline void sw_classes_at(const unsigned char *s, Py_ssize_t k, Py_ssize_t n, int kinds, sw_classes *c) {
        unsigned char tail[64];
        if (k + 64 <= n) {
            sw_classes_of(s + k, kinds, c);
            return;
        }
        memset(tail, 0, sizeof tail);
        memcpy(tail, s + k, (size_t)(n - k));
        sw_classes_of(tail, kinds, c);
    }

    /* Bit i set where w has 13 ones from bit i on; bits past 63 come from the next word. */
    static inline uint64_t sw_run13(uint64_t w, uint64_t next) {
        uint64_t w2 = w & (w >> 1 | next << 63), n2 = next & next >> 1;
        uint64_t w4 = w2 & (w2 >> 2 | n2 << 62), n4 = n2 & n2 >> 2;
        uint64_t w8 = w4 & (w4 >> 4 | n4 << 60);
        uint64_t w12 = w8 & (w4 >> 8 | n4 << 56);
        return w12 & (w >> 12 | next << 52);
    }

    typedef void (*sw_classes_fn)(const unsigned char *s, Py_ssize_t k, Py_ssize_t n, int kinds, sw_classes *c);

    /* Fill the bitmaps of the kinds asked for, (n + 63) / 64 words each, with classes_at for each 64 bytes.
       Always inlined, so each caller below gets its own copy with its classes_at inlined too. */
    static inline __attribute__((always_inline)) void sw_scan_with(
            sw_classes_fn classes_at, const unsigned char *s, Py_ssize_t n, int kinds, uint64_t *card,
            uint64_t *iban, uint64_t *phone) {
        Py_ssize_t words = (n + 63) / 64, t;
        sw_classes prev, cur, next;
        memset(&prev, 0, sizeof prev);
        memset(&next, 0, sizeof next);
        if (words == 0) return;
        classes_at(s, 0, n, kinds, &cur);
        for (t = 0; t < words; t++) {
            if (t + 1 < words) classes_at(s, (t + 1) * 64, n, kinds, &next);
            else memset(&next, 0, sizeof next);
            if (kinds & SCAN_CARD) card[t] = sw_run13(cur.run, next.run);
            if (kinds & SCAN_IBAN) {
                uint64_t alnum_before = (cur.alpha | cur.digit) << 1 | (prev.alpha | prev.digit) >> 63;
                iban[t] = cur.alpha & (cur.alpha >> 1 | next.alpha << 63) & (cur.digit >> 2 | next.digit << 62)
                          & (cur.digit >> 3 | next.digit << 61) & ~alnum_before;
            }
            if (kinds & SCAN_PHONE) phone[t] = cur.sign | (cur.digit & ~(cur.digit << 1 | prev.digit >> 63));
            prev = cur;
            cur = next;
        }
    }

    static void sw_scan_portable(const unsigned char *s, Py_ssize_t n, int kinds, uint64_t *card, uint64_t *iban,
                                 uint64_t *phone) {
        sw_scan_with(sw_classes_at, s, n, kinds, card, iban, phone);
    }

    #if SW_JSON_SKIP_HAVE_SIMD
    /* AVX-512BW: the 64 bytes in one load (a masked one past n, which reads nothing there: bytes past n are in no
       class), each class a mask compare straight into its 64-bit word. Gives what sw_classes_at gives. */
    __attribute__((target("avx512f,avx512bw")))
    static inline void sw_classes_at_avx512(const unsigned char *s, Py_ssize_t k, Py_ssize_t n, int kinds,
                                            sw_classes *c) {
        __m512i v = n - k >= 64 ? _mm512_loadu_si512((const void *)(s + k))
                                : _mm512_maskz_loadu_epi8(((__mmask64)1 << (n - k)) - 1, (const void *)(s + k));
        __mmask64 digit = _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, _mm512_set1_epi8(0x30)), _mm512_set1_epi8(9));
        c->digit = digit;
        c->run = c->alpha = c->sign = 0;
        if (kinds & SCAN_CARD)
            c->run = digit | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x20))
                     | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x2D));
        if (kinds & SCAN_IBAN)
            c->alpha = _mm512_cmple_epu8_mask(
                _mm512_sub_epi8(_mm512_or_si512(v, _mm512_set1_epi8(0x20)), _mm512_set1_epi8(0x61)),
                _mm512_set1_epi8(25));
        if (kinds & SCAN_PHONE)
            c->sign = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x2B))
                      | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x28));
    }

    __attribute__((target("avx512f,avx512bw")))
    static void sw_scan_avx512(const unsigned char *s, Py_ssize_t n, int kinds, uint64_t *card, uint64_t *iban,
                               uint64_t *phone) {
        sw_scan_with(sw_classes_at_avx512, s, n, kinds, card, iban, phone);
    }
    #endif

    typedef void (*sw_scan_fn)(const unsigned char *s, Py_ssize_t n, int kinds, uint64_t *card, uint64_t *iban,
                               uint64_t *phone);

    /* The merged pass in use: AVX-512BW where the CPU and OS have it (json_skip.h's check), else SSE2/portable. */
    static sw_scan_fn sw_scan_fastest(void) {
    #if SW_JSON_SKIP_HAVE_SIMD
        if (sw_json_cpu_has_avx512()) return sw_scan_avx512;
    #endif
        return sw_scan_portable;
    }

    /* The first set bit at or after i in a bitmap of s[0:n], or -1. */
    static inline Py_ssize_t sw_next(const uint64_t *bits, Py_ssize_t n, Py_ssize_t i) {
        Py_ssize_t t, words = (n + 63) / 64;
        uint64_t w;
        if (i < 0) i = 0;
        if (i >= n) return -1;
        t = i / 64;
        w = bits[t] & (~0ULL << (i % 64));
        while (!w) {
            if (++t >= words) return -1;
            w = bits[t];
        }
        return t * 64 + sw_ctz64(w);
    }

    /* Start of the first run of at least 13 digits, spaces and dashes in s[start:n] (bytes before start do not
       count), or -1: the only places a card can be. Such a run covers one of every 13 consecutive positions, so
       only those are probed; a probe that lands in a run measures it, sixteen bytes at a time where they fit,
       back to its start and on to 13 bytes. */
    #define SW_CARD_RUN 13
    static inline int sw_card_byte(unsigned char c) {
        return (unsigned char)(c - 0x30) <= 9 || c == 0x20 || c == 0x2D;
    }
    #if SW_SSE2
    static inline unsigned int sw_card_bits(const unsigned char *p) {   /* bit i: p[i] is a card byte */
        __m128i v = _mm_loadu_si128((const __m128i *)p), d = _mm_sub_epi8(v, _mm_set1_epi8(0x30));
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d),
                                   _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x20)),
                                                _mm_cmpeq_epi8(v, _mm_set1_epi8(0x2D))));
        return (unsigned int)_mm_movemask_epi8(hit);
    }
    #endif
    static inline Py_ssize_t sw_card_run(const unsigned char *s, Py_ssize_t start, Py_ssize_t n) {
        Py_ssize_t p = start + SW_CARD_RUN - 1, a, b;
        while (p < n) {
            if (!sw_card_byte(s[p])) {
                p += SW_CARD_RUN;
                continue;
            }
            a = p;
    #if SW_SSE2
            while (a - 16 >= start) {
                unsigned int m = sw_card_bits(s + a - 16);
                /* the run bytes that end the block: its leading ones */
                unsigned int ones = m == 0xFFFF ? 16 : (unsigned int)__builtin_clz(~(m << 16));
                a -= ones;
                if (ones < 16) break;
            }
            if (a - 16 < start)
    #endif
                while (a > start && sw_card_byte(s[a - 1])) a--;
            b = p + 1;
    #if SW_SSE2
            if (b - a < SW_CARD_RUN && b + 16 <= n) {
                unsigned int m = sw_card_bits(s + b);
                b += m == 0xFFFF ? 16 : __builtin_ctz(~m);
            }
    #endif
            while (b < n && b - a < SW_CARD_RUN && sw_card_byte(s[b])) b++;
            if (b - a >= SW_CARD_RUN) return a;
            p = b + SW_CARD_RUN;   /* s[b] ends the run: a long one starting after it covers b + 13 */
        }
        return -1;
    }

    #if SW_JSON_SKIP_HAVE_SIMD
    /* sw_card_run with AVX-512BW: each 64 bytes classified in one load (a masked one past n), and the runs of 13
       found with shifts of that word; carry is the run that ended the block before, so a run across blocks is
       found by its length there plus the card bytes that start this block. Gives what sw_card_run gives. */
    __attribute__((target("avx512f,avx512bw")))
    static Py_ssize_t sw_card_run_avx512(const unsigned char *s, Py_ssize_t start, Py_ssize_t n) {
        const __m512i zero = _mm512_set1_epi8(0x30), nine = _mm512_set1_epi8(9), space = _mm512_set1_epi8(0x20),
                      dash = _mm512_set1_epi8(0x2D);
        Py_ssize_t k, carry = 0;
        for (k = start; k < n; k += 64) {
            __m512i v = n - k >= 64 ? _mm512_loadu_si512((const void *)(s + k))
                                    : _mm512_maskz_loadu_epi8(((__mmask64)1 << (n - k)) - 1, (const void *)(s + k));
            uint64_t run = _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, zero), nine)
                           | _mm512_cmpeq_epi8_mask(v, space) | _mm512_cmpeq_epi8_mask(v, dash);
            uint64_t w2, w4, w8, w13;
            if (carry && carry + (~run ? __builtin_ctzll(~run) : 64) >= SW_CARD_RUN) return k - carry;
            /* bit i of w13: bytes i to i + 12 of this block are all card bytes */
            w2 = run & run >> 1;
            w4 = w2 & w2 >> 2;
            w8 = w4 & w4 >> 4;
            w13 = w8 & w4 >> 8 & run >> 12;
            if (w13) return k + __builtin_ctzll(w13);
            carry = __builtin_clzll(~run);     /* the card bytes that end the block (not all 64: that returned) */
        }
        return -1;
    }
    #endif

    typedef Py_ssize_t (*sw_card_run_fn)(const unsigned char *s, Py_ssize_t start, Py_ssize_t n);

    static Py_ssize_t sw_card_run_portable(const unsigned char *s, Py_ssize_t start, Py_ssize_t n) {
        return sw_card_run(s, start, n);
    }

    /* The card run search in use: AVX-512BW where the CPU and OS have it, else the probe above. */
    static sw_card_run_fn sw_card_run_fastest(void) {
    #if SW_JSON_SKIP_HAVE_SIMD
        if (sw_json_cpu_has_avx512()) return sw_card_run_avx512;
    #endif
        return sw_card_run_portable;
    }

    /* The shape most card numbers come in: 16 digits, alone or in four groups of four joined by one space or
       dash each ("4111 1111 1111 1111"). Its length at s[a] (16 or 19) when s[a:n] starts with it and no digit
       follows it after any spaces and dashes, else 0. In such a run the detector's group walk finds exactly
       that one candidate (the whole shape, 16 digits) and nothing more, so it can be checked at once. */
    static inline int sw_card_common(const unsigned char *s, Py_ssize_t a, Py_ssize_t n) {
        int length, i;
        Py_ssize_t t;
    #define SW_CARD_DIGIT(c) ((unsigned char)((c) - 0x30) <= 9)
    #define SW_CARD_SEP(c) ((c) == 0x20 || (c) == 0x2D)
        if (n - a >= 19 && SW_CARD_SEP(s[a + 4]) && SW_CARD_SEP(s[a + 9]) && SW_CARD_SEP(s[a + 14])) {
            for (i = 0; i < 16; i++)
                if (!SW_CARD_DIGIT(s[a + i + i / 4])) return 0;
            length = 19;
        } else if (n - a >= 16) {
            for (i = 0; i < 16; i++)
                if (!SW_CARD_DIGIT(s[a + i])) return 0;
            length = 16;
        } else {
            return 0;
        }
        for (t = a + length; t < n && SW_CARD_SEP(s[t]); t++) {}
        return t < n && SW_CARD_DIGIT(s[t]) ? 0 : length;
    #undef SW_CARD_DIGIT
    #undef SW_CARD_SEP
    }

    /* sw_luhn for the shape sw_card_common found at s[a] (length 16 or 19): its 16 digits at known places. */
    static inline int sw_luhn16(const unsigned char *s, Py_ssize_t a, int length) {
        static const unsigned char doubled[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
        unsigned int total = 0;
        int i, step = length == 19;
        for (i = 0; i < 16; i += 2)
            total += doubled[s[a + i + step * (i / 4)] - 0x30] + (s[a + i + 1 + step * ((i + 1) / 4)] - 0x30);
        return total % 10 == 0;
    }

    /* Whether the digits of s[a:b] (other bytes skipped) pass the Luhn check: from the right, every second
       digit doubled, its digits summed. */
    static inline int sw_luhn(const unsigned char *s, Py_ssize_t a, Py_ssize_t b) {
        static const unsigned char doubled[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
        unsigned char digits[32];
        unsigned int total = 0, d;
        int count = 0, j;
        Py_ssize_t i;
        /* Gathered first (a card has at most 19 digits; more fail), then summed a pair at a time from the right. */
        for (i = a; i < b; i++) {
            d = (unsigned int)s[i] - 0x30;
            if (d > 9) continue;
            if (count == 32) return 0;
            digits[count++] = (unsigned char)d;
        }
        for (j = count - 1; j >= 1; j -= 2) total += digits[j] + doubled[digits[j - 1]];
        if (j == 0) total += digits[0];
        return total % 10 == 0;
    }

    /* Whether s[0:n] is all ASCII. */
    static inline int sw_ascii(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t k = 0;
    #if SW_WORDS
        uint64_t high = 0;
        for (; k + 8 <= n; k += 8) {
            uint64_t v;
            memcpy(&v, s + k, 8);
            high |= v;
        }
        if (high & SW_HIGHS) return 0;
    #endif
        for (; k < n; k++) if (s[k] & 0x80) return 0;
        return 1;
    }

    /* The bytes of a wide (UTF-16 or UTF-32) character that is printable ASCII: one of them 0x20-0x7E, the
       others zero. */
    #define SW_PRINTABLE(c) ((unsigned char)((c) - 0x20) <= 0x5E)

    /* Adds to utf16 bit i when the window's bytes i, i+2, i+4, i+6 are printable and i+1, i+3, i+5, i+7 zero, or
       the other way round (four UTF-16 characters, either byte order), and to utf32 likewise for four UTF-32
       characters; from the zero and printable masks of a 64-byte window, for its first 48 positions (the
       longest pattern is 16 bytes). */
    static inline void sw_wide_window(uint64_t zero, uint64_t print, uint64_t *utf16, uint64_t *utf32) {
        uint64_t le = print & zero >> 1, be = zero & print >> 1, some = le | be, le4, be4;
        const uint64_t first48 = (1ULL << 48) - 1;
        /* Each pattern has four printable bytes beside a zero: most binary windows have fewer, and stop here. */
        some &= some - 1;
        some &= some - 1;
        some &= some - 1;
        if (!some) return;
        le4 = print & zero >> 1 & zero >> 2 & zero >> 3;
        be4 = zero & zero >> 1 & zero >> 2 & print >> 3;
        *utf16 |= ((le & le >> 2 & le >> 4 & le >> 6) | (be & be >> 2 & be >> 4 & be >> 6)) & first48;
        *utf32 |= ((le4 & le4 >> 4 & le4 >> 8 & le4 >> 12) | (be4 & be4 >> 4 & be4 >> 8 & be4 >> 12)) & first48;
    }

    /* Which wide encodings s[0:n] may hold four printable ASCII characters in a row in: bit 1 UTF-16, bit 2
       UTF-32, either byte order. 64-byte windows 48 apart, sixteen bytes at a time with SSE2; the last window
       is read from a copy padded with zeros (zeros alone complete no pattern: it needs printable bytes too). */
    static int sw_wide_layouts_portable(const unsigned char *s, Py_ssize_t n) {
        uint64_t utf16 = 0, utf32 = 0, zero, print;
        unsigned char tail[64];
        const unsigned char *w;
        Py_ssize_t k;
        int j;
        for (k = 0; k < n && !(utf16 && utf32); k += 48) {
            if (n - k >= 64) {
                w = s + k;
            } else {
                memset(tail, 0, 64);
                memcpy(tail, s + k, (size_t)(n - k));
                w = tail;
            }
            zero = print = 0;
    #if SW_SSE2
            for (j = 0; j < 4; j++) {
                __m128i v = _mm_loadu_si128((const __m128i *)(w + 16 * j));
                zero |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) << (16 * j);
                print |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_and_si128(
                    _mm_cmpgt_epi8(v, _mm_set1_epi8(0x1F)), _mm_cmplt_epi8(v, _mm_set1_epi8(0x7F)))) << (16 * j);
            }
    #else
            for (j = 0; j < 64; j++) {
                zero |= (uint64_t)(w[j] == 0) << j;
                print |= (uint64_t)SW_PRINTABLE(w[j]) << j;
            }
    #endif
            sw_wide_window(zero, print, &utf16, &utf32);
        }
        return (utf16 ? 1 : 0) | (utf32 ? 2 : 0);
    }

    #if SW_JSON_SKIP_HAVE_SIMD
    /* sw_wide_layouts with AVX-512BW: each window's masks in one compare each, the last window a masked load
       (zeros past n). Gives what the portable one gives. */
    __attribute__((target("avx512f,avx512bw")))
    static int sw_wide_layouts_avx512(const unsigned char *s, Py_ssize_t n) {
        const __m512i space = _mm512_set1_epi8(0x20), span = _mm512_set1_epi8(0x5E);
        uint64_t utf16 = 0, utf32 = 0;
        Py_ssize_t k;
        for (k = 0; k < n && !(utf16 && utf32); k += 48) {
            __m512i v = n - k >= 64 ? _mm512_loadu_si512((const void *)(s + k))
                                    : _mm512_maskz_loadu_epi8(((__mmask64)1 << (n - k)) - 1, (const void *)(s + k));
            sw_wide_window(_mm512_cmpeq_epi8_mask(v, _mm512_setzero_si512()),
                           _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, space), span), &utf16, &utf32);
        }
        return (utf16 ? 1 : 0) | (utf32 ? 2 : 0);
    }
    #endif

    typedef int (*sw_wide_layouts_fn)(const unsigned char *s, Py_ssize_t n);

    /* The wide text search in use: AVX-512BW where the CPU and OS have it, else SSE2 (or bytes). */
    static sw_wide_layouts_fn sw_wide_layouts_fastest(void) {
    #if SW_JSON_SKIP_HAVE_SIMD
        if (sw_json_cpu_has_avx512()) return sw_wide_layouts_avx512;
    #endif
        return sw_wide_layouts_portable;
    }
    """
    Py_ssize_t sw_quote_or_backslash(const unsigned char* s, Py_ssize_t k, Py_ssize_t n) noexcept nogil
    bint sw_odd_quotes(const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil
    Py_ssize_t sw_structural(const unsigned char* s, Py_ssize_t k, Py_ssize_t n) noexcept nogil
    bint sw_ascii(const unsigned char* s, Py_ssize_t n) noexcept nogil
    ctypedef int (*sw_wide_layouts_fn)(const unsigned char* s, Py_ssize_t n) noexcept nogil
    sw_wide_layouts_fn sw_wide_layouts_fastest() noexcept nogil
    int sw_wide_layouts_portable(const unsigned char* s, Py_ssize_t n) noexcept nogil
    bint sw_luhn(const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil
    int sw_card_common(const unsigned char* s, Py_ssize_t a, Py_ssize_t n) noexcept nogil
    bint sw_luhn16(const unsigned char* s, Py_ssize_t a, int length) noexcept nogil
    ctypedef Py_ssize_t (*sw_card_run_fn)(const unsigned char* s, Py_ssize_t start, Py_ssize_t n) noexcept nogil
    sw_card_run_fn sw_card_run_fastest() noexcept nogil
    Py_ssize_t sw_card_run_portable(const unsigned char* s, Py_ssize_t start, Py_ssize_t n) noexcept nogil
    Py_ssize_t sw_digits(const unsigned char* s, Py_ssize_t k, Py_ssize_t n) noexcept nogil
    enum:
        SCAN_CARD
        SCAN_IBAN
        SCAN_PHONE
    ctypedef void (*sw_scan_fn)(const unsigned char* s, Py_ssize_t n, int kinds, uint64_t* card, uint64_t* iban,
                                uint64_t* phone) noexcept nogil
    sw_scan_fn sw_scan_fastest() noexcept nogil
    void sw_scan_portable(const unsigned char* s, Py_ssize_t n, int kinds, uint64_t* card, uint64_t* iban,
                          uint64_t* phone) noexcept nogil
    Py_ssize_t sw_next(const uint64_t* bits, Py_ssize_t n, Py_ssize_t i) noexcept nogil
    int sw_ctz64(uint64_t w) noexcept nogil


cdef enum Kind:
    KIND_PATH = 0
    KIND_DETECTOR = 1
    KIND_REGEX = 2

cdef enum Detector:
    DET_CARD = 0
    DET_EMAIL = 1
    DET_IBAN = 2
    DET_SSN = 3
    DET_PHONE = 4

cdef enum Strategy:
    STRAT_REDACT = 0
    STRAT_PARTIAL = 1
    STRAT_HASH = 2
    STRAT_NULL = 3

# How a replacement is written: as it is (text, or inside a JSON string), as a JSON
# string of its own (replacing a JSON value), or cut/padded to the matched length.
cdef enum Mode:
    MODE_RAW = 0
    MODE_QUOTED = 1
    MODE_FIT = 2

# Outcome of a fast scan.
cdef enum Status:
    ST_OK = 0
    ST_UNDECIDED = 1    # the orjson route decides
    ST_INVALID = 2      # not JSON after all

cdef enum SegKind:
    SEG_KEY = 0         # a member by name
    SEG_ANY_KEY = 1     # *
    SEG_ANY_INDEX = 2   # [*]

DEF FRAME_HEADER = 5        # Confluent magic byte + schema id
DEF GLUE_HEADER = 18        # AWS Glue: version, compression, schema version id (16 bytes)
DEF GLUE_KEPT = 2           # what detectors and regexes leave of it: version and compression
DEF UTF8_BOM = 3            # a UTF-8 byte order mark, which JSON readers such as Jackson and Python's json skip
DEF UTF16_BE = 1            # the byte order of a UTF-16 field (its byte order mark says which)
DEF UTF16_LE = 2
DEF WIDE_MIN_RUN = 4        # UTF-16/32 text characters in a row that detectors read (_mask_wide); every built-in
                            # detector's shortest match is longer
DEF GLUE_VERSION = 3
DEF GLUE_UNCOMPRESSED = 0
DEF GLUE_ZLIB = 5
DEF GLUE_MAX_INFLATED = 64 << 20    # the default cap on what Glue payloads inflate to in one call (mask_records
                                    # passes its own, the same as for one batch)
DEF MAX_PATH = 32           # segments in one path; the path scan recurses once per segment
DEF DEPTH_WORDS = 8         # 64-bit words of open-bracket bits: the nesting (512) the skip scan follows
DEF MAX_JSON_DEPTH = DEPTH_WORDS * 64
DEF TOKEN_BYTES = 16        # HMAC bytes kept in a hash token
DEF TOKEN_CHARS = 22        # their base64url length, unpadded
DEF MIN_HMAC_KEY = 16

TARGETS = {"key": TARGET_KEY, "value": TARGET_VALUE, "header": TARGET_HEADER}
KINDS = {"json_path": KIND_PATH, "detector": KIND_DETECTOR, "regex": KIND_REGEX}
DETECTORS = {"card": DET_CARD, "email": DET_EMAIL, "iban": DET_IBAN, "ssn": DET_SSN, "phone": DET_PHONE}
STRATEGIES = {"redact": STRAT_REDACT, "partial": STRAT_PARTIAL, "hash": STRAT_HASH, "null": STRAT_NULL}
_KIND_KEYS = {KIND_PATH: "path", KIND_DETECTOR: "detector", KIND_REGEX: "pattern"}
_RULE_KEYS = {"name", "target", "header", "kind", "path", "detector", "pattern", "strategy", "keep_last", "placeholder"}

# Country code -> IBAN length, from the SWIFT IBAN registry.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


# ---------------------------------------------------------------------------------------------------------------
# Byte classes

cdef enum CharClass:
    C_DIGIT = 1
    C_ALPHA = 2         # ASCII letters
    C_CARDSEP = 4       # separators inside a card number: space, dash
    C_LOCAL = 8         # email local part
    C_DOMAIN = 16       # email domain label
    C_NUM = 32          # bytes of a JSON number token
    C_WS = 64           # JSON whitespace

cdef unsigned char CLS[256]
cdef unsigned char IBAN_LEN[26 * 26]
cdef const char* B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


cdef void _init_tables():
    cdef int i
    memset(CLS, 0, sizeof(CLS))
    for i in range(ord("0"), ord("9") + 1):
        CLS[i] |= C_DIGIT | C_LOCAL | C_DOMAIN | C_NUM
    for i in range(ord("A"), ord("Z") + 1):
        CLS[i] |= C_ALPHA | C_LOCAL | C_DOMAIN
        CLS[i + 32] |= C_ALPHA | C_LOCAL | C_DOMAIN
    for ch in b" -":
        CLS[ch] |= C_CARDSEP
    for ch in b"._%+-":
        CLS[ch] |= C_LOCAL
    CLS[ord("-")] |= C_DOMAIN
    for ch in b"+-.eE":
        CLS[ch] |= C_NUM
    for ch in b" \t\r\n":
        CLS[ch] |= C_WS
    memset(IBAN_LEN, 0, sizeof(IBAN_LEN))
    for country, length in _IBAN_LENGTHS.items():
        IBAN_LEN[(ord(country[0]) - 65) * 26 + ord(country[1]) - 65] = length


_init_tables()


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return CLS[c] & C_DIGIT


cdef inline bint _alnum(unsigned char c) noexcept nogil:
    return CLS[c] & (C_DIGIT | C_ALPHA)


cdef inline bint _digits(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not CLS[s[i]] & C_DIGIT:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Detectors: each finds the first match starting at or after `start` in s[0:n], as [ms, me).

cdef inline bint _card_edges_ok(const unsigned char* s, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Whether s[a:b] may be a card but for its digits: it starts with 2-6 and continues no word or decimal."""
    if s[a] < 0x32 or s[a] > 0x36:
        return False
    if a > 0 and (_alnum(s[a - 1]) or (s[a - 1] == c'.' and a > 1 and _digit(s[a - 2]))):
        return False
    return not (b < n and (_alnum(s[b]) or (s[b] == c'.' and b + 1 < n and _digit(s[b + 1]))))


cdef bint _card_ok(const unsigned char* s, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b, int digits) noexcept nogil:
    return 13 <= digits <= 19 and _card_edges_ok(s, n, a, b) and sw_luhn(s, a, b)


cdef inline void _card_union(Py_ssize_t a, Py_ssize_t b, Py_ssize_t* best_a, Py_ssize_t* best_b) noexcept nogil:
    """Add card [a, b) to the match being built; one that does not overlap it is left for the next search."""
    if best_a[0] < 0:
        best_a[0] = a
        best_b[0] = b
    elif a < best_b[0]:
        best_a[0] = min(best_a[0], a)
        best_b[0] = max(best_b[0], b)


# The card run search in use (sw_card_run_fastest): AVX-512BW where the CPU has it, else probing every 13th byte.
cdef sw_card_run_fn _card_run = sw_card_run_fastest()


cdef bint _find_card(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                     Py_ssize_t* ms, Py_ssize_t* me, const uint64_t* candidates,
                     sw_card_run_fn card_run, bint common=True) noexcept nogil:
    # Each run long enough to hold a card (card_run, or the first candidate bit at or after k, which is the
    # same place) is walked once, group by group. Candidates end at a group: the group alone (13-19 digits), or
    # it and up to five groups before it (3-6 digits each, joined by single separators). A run that is just the
    # common shape of 16 digits (sw_card_common) is checked at once instead: the walk would find that one
    # candidate alone (common=False walks it, for tests).
    cdef Py_ssize_t k = start, a, gap, best_a, best_b
    cdef Py_ssize_t group_start[8]
    cdef int group_len[8]
    cdef int groups, chain, length, digits, i
    while True:
        k = sw_next(candidates, n, k) if candidates != NULL else card_run(s, k, n)
        if k < 0:
            return False
        best_a = -1
        best_b = -1
        groups = 0
        chain = 0
        while True:
            gap = k
            while k < n and CLS[s[k]] & C_CARDSEP:
                k += 1
            # A group starting this far past the match cannot be part of a card overlapping it.
            if k >= n or not _digit(s[k]) or (best_a >= 0 and k >= best_b + 40):
                break
            if groups == 0 and common:
                length = sw_card_common(s, k, n)
                if length:
                    if _card_edges_ok(s, n, k, k + length) and sw_luhn16(s, k, length):
                        ms[0] = k
                        me[0] = k + length
                        return True
                    k += length
                    break
            a = k
            k = sw_digits(s, k, n)
            length = <int>(k - a)
            group_start[groups & 7] = a
            group_len[groups & 7] = length
            if length < 3 or length > 6:
                chain = 0
            elif chain > 0 and a - gap == 1:
                chain = min(chain + 1, 6)
            else:
                chain = 1
            if length >= 13:
                if _card_ok(s, n, a, k, length):
                    _card_union(a, k, &best_a, &best_b)
            else:
                digits = length
                for i in range(1, chain):
                    digits += group_len[(groups - i) & 7]
                    if digits > 19:
                        break
                    if digits >= 13 and _card_ok(s, n, group_start[(groups - i) & 7], k, digits):
                        _card_union(group_start[(groups - i) & 7], k, &best_a, &best_b)
            groups += 1
        if best_a >= 0:
            ms[0] = best_a
            me[0] = best_b
            return True


cdef bint _find_email(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                      Py_ssize_t* ms, Py_ssize_t* me) noexcept nogil:
    cdef Py_ssize_t i = start, at, l, j, k, good, x
    cdef int labels
    cdef bint letters
    cdef const void* hit
    while i < n:
        hit = memchr(s + i, c'@', n - i)
        if hit == NULL:
            return False
        at = <const unsigned char*>hit - s
        l = at
        while l > start and CLS[s[l - 1]] & C_LOCAL:
            l -= 1
        while l < at and s[l] == c'.':
            l += 1
        if l < at:
            j = at + 1
            good = -1
            labels = 0
            while j < n and _alnum(s[j]):
                k = j
                while k < n and CLS[s[k]] & C_DOMAIN:
                    k += 1
                if labels > 0 and k - j >= 2:
                    letters = True
                    for x in range(j, k):
                        if not CLS[s[x]] & C_ALPHA:
                            letters = False
                            break
                    if letters:
                        good = k
                labels += 1
                if k + 1 < n and s[k] == c'.':
                    j = k + 1
                else:
                    break
            if good > 0:
                ms[0] = l
                me[0] = good
                return True
        i = at + 1
    return False


cdef bint _iban_at(const unsigned char* s, Py_ssize_t n, Py_ssize_t i, int length, Py_ssize_t* me) noexcept nogil:
    cdef unsigned char chars[34]
    cdef int count = 0, k, v, remainder = 0
    cdef Py_ssize_t j = i
    cdef unsigned char c
    while count < length:
        if j >= n:
            return False
        c = s[j]
        if c == c' ' and count % 4 == 0 and count > 0 and j + 1 < n and _alnum(s[j + 1]):
            j += 1
            continue
        if not _alnum(c):
            return False
        chars[count] = c & 0xDF if CLS[c] & C_ALPHA else c
        count += 1
        j += 1
    if j < n and _alnum(s[j]):
        return False
    # mod-97 over the rearranged IBAN (BBAN, country code, check digits), letters as 10..35.
    for k in range(4, length + 4):
        c = chars[k % length]
        if _digit(c):
            remainder = (remainder * 10 + (c - 0x30)) % 97
        else:
            v = c - 0x41 + 10
            remainder = (remainder * 100 + v) % 97
    if remainder != 1:
        return False
    me[0] = j
    return True


cdef bint _find_iban(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                     Py_ssize_t* ms, Py_ssize_t* me, const uint64_t* candidates) noexcept nogil:
    cdef Py_ssize_t i = start
    cdef int length
    while i + 15 <= n:
        if candidates != NULL:
            i = sw_next(candidates, n, i)   # exactly the positions the test below accepts
            if i < 0 or i + 15 > n:
                return False
        if (CLS[s[i]] & C_ALPHA and CLS[s[i + 1]] & C_ALPHA and _digit(s[i + 2]) and _digit(s[i + 3])
                and (i == 0 or not _alnum(s[i - 1]))):
            length = IBAN_LEN[((s[i] & 0xDF) - 0x41) * 26 + (s[i + 1] & 0xDF) - 0x41]
            if length and _iban_at(s, n, i, length, me):
                ms[0] = i
                return True
        i += 1
    return False


cdef bint _find_ssn(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                    Py_ssize_t* ms, Py_ssize_t* me) noexcept nogil:
    # Anchored on the first dash: s[i-3:i] area, s[i+1:i+3] group, s[i+4:i+8] serial.
    cdef Py_ssize_t i = start + 3
    cdef int area
    cdef const void* hit
    while i + 8 <= n:
        hit = memchr(s + i, c'-', n - i)
        if hit == NULL:
            return False
        i = <const unsigned char*>hit - s
        if i + 8 > n:
            return False
        if (_digits(s + i - 3, 3) and _digits(s + i + 1, 2) and s[i + 3] == c'-' and _digits(s + i + 4, 4)
                and (i == 3 or not (_alnum(s[i - 4]) or s[i - 4] == c'-'))
                and (i + 8 == n or not (_alnum(s[i + 8])
                                        or (s[i + 8] == c'-' and i + 9 < n and _digit(s[i + 9]))))):
            area = (s[i - 3] - 0x30) * 100 + (s[i - 2] - 0x30) * 10 + s[i - 1] - 0x30
            if (area != 0 and area != 666 and area < 900 and (s[i + 1] != 0x30 or s[i + 2] != 0x30)
                    and not (s[i + 4] == 0x30 and s[i + 5] == 0x30 and s[i + 6] == 0x30 and s[i + 7] == 0x30)):
                ms[0] = i - 3
                me[0] = i + 8
                return True
        i += 1
    return False


cdef Py_ssize_t _phone_plus(const unsigned char* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t j = i + 1, k, last = -1
    cdef int digits = 0
    cdef bint paren = False
    cdef unsigned char c
    if j >= n or not _digit(s[j]) or s[j] == 0x30:
        return -1
    while j < n:
        c = s[j]
        if _digit(c):
            digits += 1
            if digits > 15:
                return -1
            j += 1
            last = j
        elif c == c' ' or c == c'-' or c == c'.':
            if j + 1 < n and (_digit(s[j + 1]) or (s[j + 1] == c'(' and not paren)):
                j += 1
            else:
                break
        elif c == c'(' and not paren:
            k = j + 1
            while k < n and _digit(s[k]) and k - j <= 4:
                k += 1
            if k >= n or s[k] != c')' or k == j + 1:
                break
            digits += <int>(k - j - 1)
            paren = True
            j = k + 1
            last = j
        else:
            break
    if digits < 8 or digits > 15 or (last < n and _alnum(s[last])):
        return -1
    return last


cdef Py_ssize_t _phone_nanp(const unsigned char* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t j = i, end
    cdef unsigned char sep
    if s[i] == c'(':
        if i + 5 > n or not _digits(s + i + 1, 3) or s[i + 4] != c')' or s[i + 1] < 0x32:
            return -1
        j = i + 5
        if j < n and s[j] == c' ':
            j += 1
        sep = s[j + 3] if j + 3 < n else 0
        if (j + 8 > n or not _digits(s + j, 3) or s[j] < 0x32 or not _digits(s + j + 4, 4)
                or (sep != c'-' and sep != c'.' and sep != c' ')):
            return -1
        end = j + 8
    else:
        if s[i] == c'1' and i + 2 < n and (s[i + 1] == c'-' or s[i + 1] == c'.'):
            j = i + 2
        if j + 12 > n or not _digits(s + j, 3) or not _digits(s + j + 4, 3) or not _digits(s + j + 8, 4):
            return -1
        sep = s[j + 3]
        if (sep != c'-' and sep != c'.') or s[j + 7] != sep or (j > i and s[i + 1] != sep):
            return -1
        if s[j] < 0x32 or s[j + 4] < 0x32:
            return -1
        end = j + 12
    if end < n and (_alnum(s[end]) or ((s[end] == c'-' or s[end] == c'.')
                                       and end + 1 < n and _digit(s[end + 1]))):
        return -1
    return end


cdef bint _find_phone(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                      Py_ssize_t* ms, Py_ssize_t* me, const uint64_t* candidates) noexcept nogil:
    cdef Py_ssize_t i = start - 1, end
    cdef unsigned char c, before
    while True:
        # Candidates are the '+', '(' and digits after no digit: every position the tests below can accept.
        i = sw_next(candidates, n, i + 1) if candidates != NULL else i + 1
        if i < 0 or i >= n:
            return False
        c = s[i]
        if c != c'+' and c != c'(' and not _digit(c):
            continue
        before = s[i - 1] if i > 0 else 0x20
        if _alnum(before) or before == c'+':
            continue
        if c == c'+':
            end = _phone_plus(s, n, i)
        elif before == c'-' or before == c'.':
            continue
        else:
            end = _phone_nanp(s, n, i)
        if end > 0:
            ms[0] = i
            me[0] = end
            return True


# ---------------------------------------------------------------------------------------------------------------
# Compiled rules

cdef struct Seg:
    int kind                    # SegKind
    const unsigned char* name   # SEG_KEY: the member name (bytes kept alive by Rule._names)
    Py_ssize_t name_len


# The kinds of candidate bitmaps each detector reads (email and ssn find their anchors with memchr).
SCAN_KINDS = {DET_CARD: SCAN_CARD, DET_EMAIL: 0, DET_IBAN: SCAN_IBAN, DET_SSN: 0, DET_PHONE: SCAN_PHONE}


cdef struct Candidates:
    const uint64_t* card        # each NULL unless its kind was scanned
    const uint64_t* iban
    const uint64_t* phone


# The merged pass in use: AVX-512BW where the CPU has it, else SSE2 (sw_scan_fastest).
cdef sw_scan_fn _sw_scan = sw_scan_fastest()


cdef int _scan(MaskCtx* ctx, const unsigned char* s, Py_ssize_t n, int kinds, Candidates* cand) except -1 nogil:
    """cand for s[0:n]: the merged pass (sw_scan) over s for every kind of detector the field's rules have, once
    for all of them; ctx keeps the bitmaps until a rule changes the field (mask_field clears ctx.scan_of)."""
    cdef Py_ssize_t words = (n + 63) // 64
    cdef uint64_t* bits
    if ctx.scan_of != s or ctx.scan_len != n or ctx.scan_kinds != kinds:
        ctx.scan_of = NULL
        ctx.scan.len = 0
        buf_reserve(&ctx.scan, 3 * words * sizeof(uint64_t))
        bits = <uint64_t*>ctx.scan.data
        _sw_scan(s, n, kinds, bits, bits + words, bits + 2 * words)
        ctx.scan_of = s
        ctx.scan_len = n
        ctx.scan_kinds = kinds
    bits = <uint64_t*>ctx.scan.data
    cand.card = bits if kinds & SCAN_CARD else NULL
    cand.iban = bits + words if kinds & SCAN_IBAN else NULL
    cand.phone = bits + 2 * words if kinds & SCAN_PHONE else NULL
    return 0


cdef class Rule:
    """One compiled rule; Masker keeps them per target."""

    cdef int index              # position in Masker.names
    cdef bytes header           # TARGET_HEADER: the header key it applies to, None for every header
    cdef int kind               # Kind
    cdef int detector           # Detector, for KIND_DETECTOR
    cdef object regex           # re.Pattern over bytes, for KIND_REGEX
    cdef int strategy           # Strategy
    cdef Py_ssize_t keep_last   # STRAT_PARTIAL
    cdef bytes placeholder      # STRAT_REDACT, and for objects/arrays under STRAT_PARTIAL
    cdef const char* placeholder_at     # its bytes and length, for code that runs without the GIL
    cdef Py_ssize_t placeholder_len
    cdef const char* header_at          # header's bytes (NULL: every header) and length, likewise
    cdef Py_ssize_t header_len
    cdef bytes hmac_key         # STRAT_HASH
    cdef uint32_t hmac_inner[8] # STRAT_HASH: SHA-256 state after the block (key ^ ipad); each token continues it
    cdef uint32_t hmac_outer[8] # STRAT_HASH: SHA-256 state after the block (key ^ opad)
    cdef Seg segs[MAX_PATH]     # KIND_PATH
    cdef int nseg
    cdef list _names            # per segment (bytes, str) for SEG_KEY, else None: Seg.name points into the
                                # bytes, the orjson route uses the str

    cdef int next_match(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t start, PyObject* text,
                        const Candidates* cand, Py_ssize_t* ms, Py_ssize_t* me) except -1 nogil:
        """1 and [ms, me) for the next match at or after start, or 0. text is s as bytes for a regex (the only
        kind that takes the GIL); cand, when not NULL, the candidate bitmaps of s (the same matches, faster)."""
        if self.kind == KIND_REGEX:
            with gil:
                return self._regex_match(<object>text, n, start, ms, me)
        if self.detector == DET_CARD:
            return _find_card(s, n, start, ms, me, cand.card if cand != NULL else NULL, _card_run)
        if self.detector == DET_EMAIL:
            return _find_email(s, n, start, ms, me)
        if self.detector == DET_IBAN:
            return _find_iban(s, n, start, ms, me, cand.iban if cand != NULL else NULL)
        if self.detector == DET_SSN:
            return _find_ssn(s, n, start, ms, me)
        return _find_phone(s, n, start, ms, me, cand.phone if cand != NULL else NULL)

    cdef int _regex_match(self, object text, Py_ssize_t n, Py_ssize_t start, Py_ssize_t* ms,
                          Py_ssize_t* me) except -1:
        while start <= n:
            found = self.regex.search(text, start)
            if found is None:
                return 0
            if found.end() > found.start():
                ms[0] = found.start()
                me[0] = found.end()
                return 1
            start = found.start() + 1
        return 0


cdef list _parse_path(str path):
    """'customer.*.email' / 'items[*].iban' -> [(SegKind, name or None), ...]."""
    cdef list segs = []
    for part in path.split("."):
        brackets = 0
        while part.endswith("[*]"):
            part = part[:len(part) - 3]
            brackets += 1
        if part == "*":
            segs.append((SEG_ANY_KEY, None))
        elif part:
            if any(ch in part for ch in "[]*"):
                raise ValueError(f"path {path!r}: only names, '*' and '[*]' are supported")
            segs.append((SEG_KEY, part))
        elif brackets == 0:
            raise ValueError(f"path {path!r} has an empty segment")
        segs.extend([(SEG_ANY_INDEX, None)] * brackets)
    if len(segs) > MAX_PATH:
        raise ValueError(f"path {path!r} has more than {MAX_PATH} segments")
    return segs


cdef Rule _compile_rule(object spec, int index, bytes hmac_key):
    if not isinstance(spec, dict):
        raise ValueError(f"rule {index}: a rule is a dict, not {type(spec).__name__}")
    unknown = set(spec) - _RULE_KEYS
    if unknown:
        raise ValueError(f"rule {index}: unknown keys {sorted(unknown)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule {index}: 'name' must be a non-empty string")
    where = f"rule {name!r}"
    cdef Rule rule = Rule()
    rule.index = index
    target = spec.get("target")
    if target not in TARGETS:
        raise ValueError(f"{where}: 'target' must be one of {sorted(TARGETS)}")
    header = spec.get("header")
    if header is not None:
        if target != "header" or not isinstance(header, str):
            raise ValueError(f"{where}: 'header' is a header name, for target 'header' only")
        rule.header = header.encode("utf-8")
        rule.header_at = PyBytes_AS_STRING(rule.header)
        rule.header_len = PyBytes_GET_SIZE(rule.header)
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: 'kind' must be one of {sorted(KINDS)}")
    rule.kind = KINDS[kind]
    for other, key in _KIND_KEYS.items():
        if other != rule.kind and key in spec:
            raise ValueError(f"{where}: {key!r} does not apply to kind {kind!r}")
    if rule.kind == KIND_PATH:
        path = spec.get("path")
        if not isinstance(path, str):
            raise ValueError(f"{where}: 'path' must be a string")
        rule._names = []
        for seg_kind, seg_name in _parse_path(path):
            rule.segs[rule.nseg].kind = seg_kind
            if seg_kind == SEG_KEY:
                encoded = seg_name.encode("utf-8")
                rule._names.append((encoded, seg_name))
                rule.segs[rule.nseg].name = <const unsigned char*>PyBytes_AS_STRING(encoded)
                rule.segs[rule.nseg].name_len = PyBytes_GET_SIZE(encoded)
            else:
                rule._names.append(None)
            rule.nseg += 1
    elif rule.kind == KIND_DETECTOR:
        detector = spec.get("detector")
        if detector not in DETECTORS:
            raise ValueError(f"{where}: 'detector' must be one of {sorted(DETECTORS)}")
        rule.detector = DETECTORS[detector]
    else:
        pattern = spec.get("pattern")
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: 'pattern' must be a string")
        try:
            rule.regex = re.compile(pattern.encode("utf-8"))
        except re.error as exc:
            raise ValueError(f"{where}: bad pattern: {exc}") from None
    strategy = spec.get("strategy")
    if strategy not in STRATEGIES:
        raise ValueError(f"{where}: 'strategy' must be one of {sorted(STRATEGIES)}")
    rule.strategy = STRATEGIES[strategy]
    if "keep_last" in spec and strategy != "partial":
        raise ValueError(f"{where}: 'keep_last' is for strategy 'partial'")
    if "placeholder" in spec and strategy != "redact":
        raise ValueError(f"{where}: 'placeholder' is for strategy 'redact'")
    keep_last = spec.get("keep_last", 4)
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
        raise ValueError(f"{where}: 'keep_last' must be a non-negative integer")
    rule.keep_last = keep_last
    placeholder = spec.get("placeholder", "****")
    if not isinstance(placeholder, str) or any(ch in '"\\' or ord(ch) < 0x20 for ch in placeholder):
        raise ValueError(f"{where}: 'placeholder' must be a string without quotes, backslashes or control characters")
    rule.placeholder = placeholder.encode("utf-8")
    rule.placeholder_at = PyBytes_AS_STRING(rule.placeholder)
    rule.placeholder_len = PyBytes_GET_SIZE(rule.placeholder)
    if rule.strategy == STRAT_HASH and len(hmac_key) < MIN_HMAC_KEY:
        raise ValueError(f"{where}: strategy 'hash' needs an hmac_key of at least {MIN_HMAC_KEY} bytes")
    rule.hmac_key = hmac_key
    if rule.strategy == STRAT_HASH:
        _hmac_midstates(sw_sha256_impl(SW_SHA256_AUTO), hmac_key, rule.hmac_inner, rule.hmac_outer)
    return rule


cdef int _hmac_midstates(sw_sha256_blocks_fn blocks, bytes key, uint32_t* inner, uint32_t* outer) except -1:
    """HMAC-SHA256 (RFC 2104) with the padded key hashed once here: the SHA-256 states after the blocks
    (key ^ ipad) and (key ^ opad), a key longer than the 64-byte block hashed first, a shorter one zero-padded.
    Each token then costs the compressions of its own bytes and of the outer hash (two for up to 55 bytes)."""
    cdef uint8_t digest[32]
    cdef uint8_t block[64]
    cdef uint8_t pad[64]
    cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key), i
    if n > 64:
        sw_sha256_with(blocks, k, <size_t>n, digest)
        k = digest
        n = 32
    memset(block, 0, 64)
    memcpy(block, k, n)
    for i in range(64):
        pad[i] = block[i] ^ 0x36
    sw_sha256_midstate_with(blocks, pad, inner)
    for i in range(64):
        pad[i] = block[i] ^ 0x5C
    sw_sha256_midstate_with(blocks, pad, outer)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Writing replacements

cdef struct Emit:
    const unsigned char* src    # the bytes being masked
    Py_ssize_t done             # src[0:done] is in dst already (copied or replaced)
    Buf* dst
    Py_ssize_t count            # replacements made


cdef inline int _emit_upto(Emit* em, Py_ssize_t upto) except -1 nogil:
    buf_put(em.dst, em.src + em.done, upto - em.done)
    em.done = upto
    return 0


cdef int _put_token(Rule rule, Buf* dst, const unsigned char* text, Py_ssize_t n) except -1 nogil:
    if n < 0:
        raise ValueError("negative length")
    cdef unsigned char d[32]
    sw_hmac_sha256(rule.hmac_inner, rule.hmac_outer, text, <size_t>n, d)
    cdef unsigned char out[TOKEN_CHARS + 2]
    cdef int i, k = 0
    cdef unsigned int triple
    for i in range(0, TOKEN_BYTES, 3):
        triple = d[i] << 16
        if i + 1 < TOKEN_BYTES:
            triple |= d[i + 1] << 8
        if i + 2 < TOKEN_BYTES:
            triple |= d[i + 2]
        out[k] = B64URL[(triple >> 18) & 63]
        out[k + 1] = B64URL[(triple >> 12) & 63]
        out[k + 2] = B64URL[(triple >> 6) & 63]
        out[k + 3] = B64URL[triple & 63]
        k += 4
    return buf_put(dst, out, TOKEN_CHARS)


cdef int _put_partial(Rule rule, Buf* dst, const unsigned char* text, Py_ssize_t n) except -1 nogil:
    # Characters are UTF-8 code points: count the bytes that do not continue one.
    cdef Py_ssize_t chars = 0, i, keep, tail = n, seen = 0
    if sw_ascii(text, n):
        chars = n
        keep = rule.keep_last if chars > rule.keep_last else 0
        tail = n - keep
    else:
        for i in range(n):
            if (text[i] & 0xC0) != 0x80:
                chars += 1
        keep = rule.keep_last if chars > rule.keep_last else 0
        while seen < keep:
            tail -= 1
            if (text[tail] & 0xC0) != 0x80:
                seen += 1
    buf_fill(dst, c'*', chars - keep)
    return buf_put(dst, text + tail, n - tail)


cdef int _put_masked(Rule rule, Buf* dst, const unsigned char* text, Py_ssize_t n, int mode) except -1 nogil:
    """The strategy's replacement for text (null writes nothing here: callers write JSON null themselves)."""
    cdef Py_ssize_t start
    if mode == MODE_QUOTED:
        buf_put(dst, b'"', 1)
    start = dst.len
    if rule.strategy == STRAT_REDACT:
        buf_put(dst, rule.placeholder_at, rule.placeholder_len)
    elif rule.strategy == STRAT_PARTIAL:
        _put_partial(rule, dst, text, n)
    elif rule.strategy == STRAT_HASH:
        _put_token(rule, dst, text, n)
    if mode == MODE_FIT:
        if dst.len - start > n:
            dst.len = start + n
        else:
            buf_fill(dst, c'*', n - (dst.len - start))
    elif mode == MODE_QUOTED:
        buf_put(dst, b'"', 1)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# JSON: the path scan, and where a detector's match sits

# The scanners pass positions by value and return the position after what they read, or one of these:
# (through a struct, every store to the position would force reloading the data pointer: char aliasing).
DEF AT_INVALID = -1     # not JSON after all
DEF AT_UNDECIDED = -2   # the orjson route decides
DEF AT_ERROR = -3       # a Python exception is set


cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # Every JSON blank is at most 0x20: one compare settles the common case, a token right here.
    while k < n and s[k] <= 0x20 and CLS[s[k]] & C_WS:
        k += 1
    return k


cdef inline bint _looks_json(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k = _ws(s, n, 0)
    return k < n and (s[k] == c'{' or s[k] == c'[')


cdef inline Py_ssize_t _string_end(const unsigned char* s, Py_ssize_t n, Py_ssize_t content,
                                   bint* escapes) noexcept nogil:
    """Index of the quote closing the string whose content starts at `content`, or -1; escapes[0] is set
    when the string has any."""
    cdef Py_ssize_t k = content
    while True:
        k = sw_quote_or_backslash(s, k, n)
        if k >= n:
            return AT_INVALID
        if s[k] == c'"':
            return k
        escapes[0] = True
        k += 2


# The block skip in use (json_skip.h), or NULL for the token walk alone: the fastest SIMD one the CPU has. The
# portable block code is slower than the token walk on ~1 KiB documents (five SWAR compares per 8 bytes), so
# without SIMD the token walk stays; _set_json_skip_impl forces any of them for tests.
cdef const sw_json_skip_impl* _json_skip = sw_json_skip_fastest()


cdef Py_ssize_t _skip_container(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Past the object or array at k, checking only that brackets match and strings close: the path scan
    validates what it walks through, and nothing inside a skipped value is a target. 64 bytes at a time
    (json_skip.h), which gives what the token walk gives; a backslash outside a string (which the block scan
    cannot read as the token walk does) hands the value to the token walk."""
    cdef Py_ssize_t e
    if _json_skip == NULL:
        return _skip_container_tokens(s, n, k)
    e = sw_json_skip_with(_json_skip, s, n, k, MAX_JSON_DEPTH)
    if e == SW_SKIP_FALLBACK:
        return _skip_container_tokens(s, n, k)
    return e


cdef Py_ssize_t _skip_container_tokens(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """_skip_container token by token: the reference the block skip agrees with, and its fallback."""
    cdef unsigned long long objects[DEPTH_WORDS]    # bit per open bracket: 1 for {, 0 for [
    cdef int depth = 0
    cdef unsigned char c
    cdef bint escapes = False
    while True:
        k = sw_structural(s, k, n)
        if k >= n:
            return AT_INVALID
        c = s[k]
        if c == c'"':
            k = _string_end(s, n, k + 1, &escapes)
            if k < 0:
                return AT_INVALID
            k += 1
            continue
        k += 1
        if c == c'{' or c == c'[':
            if depth == MAX_JSON_DEPTH:
                return AT_UNDECIDED
            if c == c'{':
                objects[depth >> 6] |= 1ULL << (depth & 63)
            else:
                objects[depth >> 6] &= ~(1ULL << (depth & 63))
            depth += 1
        else:
            if depth == 0 or ((objects[(depth - 1) >> 6] >> ((depth - 1) & 63)) & 1) != (c == c'}'):
                return AT_INVALID
            depth -= 1
            if depth == 0:
                return k


cdef inline Py_ssize_t _skip_string(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Past the string whose opening quote is at k, or AT_INVALID."""
    cdef bint escapes = False
    cdef Py_ssize_t e = sw_quote_or_backslash(s, k + 1, n)
    if e < n and s[e] == c'"':
        return e + 1
    e = _string_end(s, n, e, &escapes)
    return e + 1 if e >= 0 else AT_INVALID


cdef Py_ssize_t _skip_value(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Past the JSON value at k (after blanks)."""
    k = _ws(s, n, k)
    if k >= n:
        return AT_INVALID
    cdef unsigned char c = s[k]
    if c == c'"':
        return _skip_string(s, n, k)
    if c == c'-' or _digit(c):
        k = sw_digits(s, k + 1, n)
        while k < n and CLS[s[k]] & C_NUM:
            k += 1
        return k
    if c == c'{' or c == c'[':
        return _skip_container(s, n, k)
    if n - k >= 4 and (memcmp(s + k, b"true", 4) == 0 or memcmp(s + k, b"null", 4) == 0):
        return k + 4
    if n - k >= 5 and memcmp(s + k, b"false", 5) == 0:
        return k + 5
    return AT_INVALID


cdef inline Py_ssize_t _skip_member(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """_skip_value for a member's value, k right after its colon. Most are strings without escapes or numbers:
    settled here without a call."""
    cdef Py_ssize_t e
    if k < n and s[k] == c'"':
        e = sw_quote_or_backslash(s, k + 1, n)
        return e + 1 if e < n and s[e] == c'"' else _skip_value(s, n, k)
    if k < n and _digit(s[k]):
        k = sw_digits(s, k + 1, n)
        while k < n and CLS[s[k]] & C_NUM:
            k += 1
        return k
    return _skip_value(s, n, k)


cdef Py_ssize_t _mask_target(Rule rule, const unsigned char* s, Py_ssize_t n, Py_ssize_t k,
                             Emit* em) except AT_ERROR nogil:
    """Replace the JSON value at k (the end of a path); the position after it."""
    cdef Py_ssize_t vs, ve
    cdef bint escapes = False
    vs = _ws(s, n, k)
    if vs >= n:
        return AT_INVALID
    cdef unsigned char c = s[vs]
    if c == c'"':
        ve = _string_end(s, n, vs + 1, &escapes)
        if ve < 0:
            return AT_INVALID
        ve += 1
        if escapes and (rule.strategy == STRAT_PARTIAL or rule.strategy == STRAT_HASH):
            return AT_UNDECIDED
        _emit_upto(em, vs)
        if rule.strategy == STRAT_NULL:
            buf_put(em.dst, b"null", 4)
        else:
            _put_masked(rule, em.dst, s + vs + 1, ve - vs - 2, MODE_QUOTED)
    else:
        ve = _skip_value(s, n, vs)
        if ve < 0:
            return ve
        if ve - vs == 4 and memcmp(s + vs, b"null", 4) == 0:
            return ve
        _emit_upto(em, vs)
        if rule.strategy == STRAT_NULL:
            buf_put(em.dst, b"null", 4)
        elif (c == c'{' or c == c'[') and rule.strategy != STRAT_HASH:
            buf_put(em.dst, b'"', 1)
            buf_put(em.dst, rule.placeholder_at, rule.placeholder_len)
            buf_put(em.dst, b'"', 1)
        else:
            _put_masked(rule, em.dst, s + vs, ve - vs, MODE_QUOTED)
    em.done = ve
    em.count += 1
    return ve


cdef inline bint _same(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil:
    # Keys are short: a loop beats a call to memcmp.
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef Py_ssize_t _path_value(Rule rule, const unsigned char* s, Py_ssize_t n, Py_ssize_t k, int seg,
                            Emit* em) except AT_ERROR nogil:
    """Walk the value at k along rule.segs[seg:], masking what the path reaches; the position after it."""
    cdef Py_ssize_t ks, ke
    cdef bint hit, escapes
    if seg == rule.nseg:
        return _mask_target(rule, s, n, k, em)
    k = _ws(s, n, k)
    if k >= n:
        return AT_INVALID
    cdef int kind = rule.segs[seg].kind
    cdef unsigned char c = s[k]
    # Compact JSON has no blanks between tokens: each step tests for the token it expects before skipping any.
    if c == c'{' and kind != SEG_ANY_INDEX:
        k = _ws(s, n, k + 1)
        if k < n and s[k] == c'}':
            return k + 1
        while True:
            if k >= n or s[k] != c'"':
                return AT_INVALID
            ks = k + 1
            ke = sw_quote_or_backslash(s, ks, n)
            escapes = False
            if ke < n and s[ke] != c'"':
                ke = _string_end(s, n, ke, &escapes)
            if ke < 0 or ke >= n:
                return AT_INVALID
            k = ke + 1
            if k >= n or s[k] != c':':
                k = _ws(s, n, k)
                if k >= n or s[k] != c':':
                    return AT_INVALID
            if kind == SEG_ANY_KEY:
                hit = True
            elif escapes:
                return AT_UNDECIDED     # an escaped key may spell the name
            else:
                hit = ke - ks == rule.segs[seg].name_len and _same(s + ks, rule.segs[seg].name, ke - ks)
            k += 1
            k = _path_value(rule, s, n, k, seg + 1, em) if hit else _skip_member(s, n, k)
            if k < 0:
                return k
            if k >= n or (s[k] != c',' and s[k] != c'}'):
                k = _ws(s, n, k)
                if k >= n:
                    return AT_INVALID
            if s[k] == c'}':
                return k + 1
            if s[k] != c',':
                return AT_INVALID
            k += 1
            if k >= n or s[k] != c'"':
                k = _ws(s, n, k)
    if c == c'[' and kind == SEG_ANY_INDEX:
        k = _ws(s, n, k + 1)
        if k < n and s[k] == c']':
            return k + 1
        while True:
            k = _path_value(rule, s, n, k, seg + 1, em)
            if k < 0:
                return k
            k = _ws(s, n, k)
            if k >= n:
                return AT_INVALID
            if s[k] == c']':
                return k + 1
            if s[k] != c',':
                return AT_INVALID
            k += 1
    return _skip_value(s, n, k)     # not the container the path needs here: nothing below matches


DEF MAX_WALKED_TOGETHER = 64   # path rules in one shared walk: a bit each in a 64-bit word


cdef Py_ssize_t _paths_value(PyObject** rules, uint64_t active, const unsigned char* s, Py_ssize_t n, Py_ssize_t k,
                             int depth, Emit* em, Py_ssize_t* counts) except AT_ERROR nogil:
    """_path_value for several path rules in one walk: active, a bit per rule of `rules`, says which have followed
    their paths down to the value at k (each segment is one level, so all of them `depth` segments). Gives what
    applying them one after another gives, or AT_UNDECIDED where that could differ: when two of them end at the
    same value, or one ends where an earlier one goes on below (the earlier one's edits would be under the later
    one's). A later one going on below where an earlier one ends finds nothing there once it is masked: dropped.
    counts[j]: the values rules[j] masked. The member and element loops are _path_value's, written out again: shared
    through small helpers, both walks measured 3-7 % slower. test_path_rules_walked_together_* holds the two to the
    same reading of every document, invalid ones too."""
    cdef uint64_t ending = 0, bits, going, hits
    cdef Py_ssize_t ks, ke, masked
    cdef bint escapes
    cdef int j, first
    cdef Seg* seg
    bits = active
    while bits:
        j = sw_ctz64(bits)
        bits &= bits - 1
        if (<Rule>rules[j]).nseg == depth:
            ending |= 1ULL << j
    if ending:
        first = sw_ctz64(ending)
        if ending & (ending - 1) or active & ((1ULL << first) - 1):
            return AT_UNDECIDED
        masked = em.count
        k = _mask_target(<Rule>rules[first], s, n, k, em)
        counts[first] += em.count - masked
        return k
    k = _ws(s, n, k)
    if k >= n:
        return AT_INVALID
    cdef unsigned char c = s[k]
    going = 0
    bits = active
    while bits:
        j = sw_ctz64(bits)
        bits &= bits - 1
        if ((<Rule>rules[j]).segs[depth].kind == SEG_ANY_INDEX) == (c == c'['):
            going |= 1ULL << j
    if c == c'{' and going:
        k = _ws(s, n, k + 1)
        if k < n and s[k] == c'}':
            return k + 1
        while True:
            if k >= n or s[k] != c'"':
                return AT_INVALID
            ks = k + 1
            ke = sw_quote_or_backslash(s, ks, n)
            escapes = False
            if ke < n and s[ke] != c'"':
                ke = _string_end(s, n, ke, &escapes)
            if ke < 0 or ke >= n:
                return AT_INVALID
            k = ke + 1
            if k >= n or s[k] != c':':
                k = _ws(s, n, k)
                if k >= n or s[k] != c':':
                    return AT_INVALID
            hits = 0
            bits = going
            while bits:
                j = sw_ctz64(bits)
                bits &= bits - 1
                seg = &(<Rule>rules[j]).segs[depth]
                if seg.kind == SEG_ANY_KEY:
                    hits |= 1ULL << j
                elif escapes:
                    return AT_UNDECIDED     # an escaped key may spell the name
                elif ke - ks == seg.name_len and _same(s + ks, seg.name, ke - ks):
                    hits |= 1ULL << j
            k += 1
            k = _paths_value(rules, hits, s, n, k, depth + 1, em, counts) if hits else _skip_member(s, n, k)
            if k < 0:
                return k
            k = _ws(s, n, k)
            if k >= n:
                return AT_INVALID
            if s[k] == c'}':
                return k + 1
            if s[k] != c',':
                return AT_INVALID
            k = _ws(s, n, k + 1)
    if c == c'[' and going:
        k = _ws(s, n, k + 1)
        if k < n and s[k] == c']':
            return k + 1
        while True:
            k = _paths_value(rules, going, s, n, k, depth + 1, em, counts)
            if k < 0:
                return k
            k = _ws(s, n, k)
            if k >= n:
                return AT_INVALID
            if s[k] == c']':
                return k + 1
            if s[k] != c',':
                return AT_INVALID
            k += 1
    return _skip_value(s, n, k)


cdef int _apply_paths(PyObject** rules, int count, MaskCtx* ctx, const unsigned char* s, Py_ssize_t n,
                      Buf* dst) except -2 nogil:
    """The path rules rules[0:count] on s in one walk, written into dst: 1 when they changed it, 0 when not, -1 when
    the walk cannot stand for them (not plain JSON, or _paths_value undecided): the caller applies them one by
    one, which also settles every case the walk leaves out."""
    cdef Py_ssize_t counts[MAX_WALKED_TOGETHER]
    cdef Py_ssize_t k
    cdef Emit em
    cdef int j
    if _frame_head(s, n, KIND_PATH) != 0 or not _looks_json(s, n):
        return -1
    memset(counts, 0, count * sizeof(Py_ssize_t))
    _reset(&em, dst, s, 0)
    em.dst = dst
    em.src = s
    k = _paths_value(rules, ~0ULL >> (64 - count), s, n, 0, 0, &em, counts)
    if k < 0 or _ws(s, n, k) != n:
        return -1
    if em.count == 0:
        return 0
    _emit_upto(&em, n)
    for j in range(count):
        ctx.counts[(<Rule>rules[j]).index] += counts[j]
    ctx.masked += em.count
    return 1


cdef int _path_scan(Rule rule, const unsigned char* s, Py_ssize_t n, Emit* em) except -1 nogil:
    cdef Py_ssize_t k = _path_value(rule, s, n, 0, 0, em)
    if k == AT_UNDECIDED:
        return ST_UNDECIDED
    return ST_OK if k >= 0 and _ws(s, n, k) == n else ST_INVALID


cdef int _detect_json(Rule rule, const unsigned char* s, Py_ssize_t n, PyObject* text, const Candidates* cand,
                      Emit* em) except -1 nogil:
    """Detector or regex over a JSON document, each match replaced so the document stays JSON."""
    cdef Py_ssize_t pos = 0, ms, me, quotes = 0, content = 0, se = -1, ts, te, k
    cdef bint in_string = False, escapes, whole, ignored = False
    cdef const unsigned char* hit = <const unsigned char*>memchr(s, c'\\', n)
    escapes = hit != NULL
    while hit != NULL:
        # A \u escape can spell anything a detector looks for; decoded strings are scanned on the orjson route.
        k = hit - s
        if k + 1 < n and s[k + 1] == c'u':
            return ST_UNDECIDED
        hit = <const unsigned char*>memchr(s + k + 2, c'\\', n - k - 2) if k + 2 < n else NULL
    if escapes and rule.kind == KIND_REGEX:
        return ST_UNDECIDED     # a regex match may end inside an escape
    while rule.next_match(s, n, pos, text, cand, &ms, &me):
        # Whether ms is inside a string: quote parity from `quotes`, escapes honoured when there are any.
        # Detectors never match quotes or backslashes, so a match lies inside one string or outside all.
        if not escapes:
            in_string ^= sw_odd_quotes(s, quotes, ms)
            quotes = ms
        else:
            k = quotes
            while k < ms:
                if s[k] == c'"':
                    in_string = not in_string
                    content = k + 1
                    k += 1
                else:
                    k += 2 if s[k] == c'\\' and in_string else 1
            quotes = ms
        if in_string:
            # The end found for an earlier match in the same string still holds (no quote since).
            if se < ms:
                se = _string_end(s, n, content if escapes else ms, &ignored)
                if se < 0:
                    return ST_INVALID
            if me > se:
                return ST_UNDECIDED
            whole = ((ms == content) if escapes else s[ms - 1] == c'"') and me == se
            if whole:
                # A key cannot be null: like the orjson route, a nulled key becomes "".
                k = _ws(s, n, se + 1)
                whole = k >= n or s[k] != c':'
            if rule.strategy == STRAT_NULL and whole:
                _emit_upto(em, ms - 1)
                buf_put(em.dst, b"null", 4)
                em.done = se + 1
                in_string = False
                quotes = pos = se + 1
            else:
                _emit_upto(em, ms)
                _put_masked(rule, em.dst, s + ms, me - ms, MODE_RAW)
                em.done = quotes = pos = me
        else:
            # Outside strings only a number can hold a match; the whole number becomes a string.
            ts = ms
            while ts > 0 and CLS[s[ts - 1]] & C_NUM:
                ts -= 1
            te = me
            while te < n and CLS[s[te]] & C_NUM:
                te += 1
            if ts < em.done:
                return ST_UNDECIDED
            for k in range(ms, me):
                if not CLS[s[k]] & C_NUM:
                    return ST_UNDECIDED
            _emit_upto(em, ts)
            if rule.strategy == STRAT_NULL:
                buf_put(em.dst, b"null", 4)
            else:
                _put_masked(rule, em.dst, s + ms, me - ms, MODE_QUOTED)
            em.done = quotes = pos = te
        em.count += 1
    return ST_OK


cdef int _detect_raw(Rule rule, const unsigned char* s, Py_ssize_t n, PyObject* text, const Candidates* cand,
                     Emit* em, int mode) except -1 nogil:
    cdef Py_ssize_t pos = 0, ms, me
    while rule.next_match(s, n, pos, text, cand, &ms, &me):
        _emit_upto(em, ms)
        _put_masked(rule, em.dst, s + ms, me - ms, mode)
        em.done = me
        em.count += 1
        pos = me
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The orjson route, for the values the fast scans cannot decide

cdef object _mask_py_value(Rule rule, object value):
    """The masked form of one decoded JSON value (the end of a path)."""
    if rule.strategy == STRAT_NULL:
        return None
    if isinstance(value, str):
        raw = (<str>value).encode("utf-8")
    elif isinstance(value, (dict, list)) and rule.strategy != STRAT_HASH:
        return rule.placeholder.decode("utf-8")
    else:
        raw = orjson.dumps(value)
    cdef Buf tmp
    buf_init(&tmp, PY_SSIZE_T_MAX)
    try:
        _put_masked(rule, &tmp, <const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), MODE_RAW)
        return (<bytes>PyBytes_FromStringAndSize(<const char*>tmp.data, tmp.len)).decode("utf-8")
    finally:
        buf_free(&tmp)


cdef object _path_py(Rule rule, object node, int seg, list count):
    if seg == rule.nseg:
        if node is None:
            return None
        count[0] += 1
        return _mask_py_value(rule, node)
    cdef int kind = rule.segs[seg].kind
    if kind == SEG_KEY and type(node) is dict:
        name = rule._names[seg][1]
        if name in node:
            node[name] = _path_py(rule, node[name], seg + 1, count)
    elif kind == SEG_ANY_KEY and type(node) is dict:
        for key in node:
            node[key] = _path_py(rule, node[key], seg + 1, count)
    elif kind == SEG_ANY_INDEX and type(node) is list:
        for index in range(len(node)):
            node[index] = _path_py(rule, node[index], seg + 1, count)
    return node


cdef object _detect_py_text(Rule rule, str value, list count):
    """value with the rule's matches replaced; None when null strategy removed all of it."""
    raw = value.encode("utf-8")
    cdef Buf tmp
    cdef Emit em
    buf_init(&tmp, PY_SSIZE_T_MAX)
    try:
        em.src = <const unsigned char*>PyBytes_AS_STRING(raw)
        em.done = 0
        em.dst = &tmp
        em.count = 0
        _detect_raw(rule, em.src, PyBytes_GET_SIZE(raw), <PyObject*>raw, NULL, &em, MODE_RAW)
        if em.count == 0:
            return value
        _emit_upto(&em, PyBytes_GET_SIZE(raw))
        count[0] += em.count
        if tmp.len == 0 and rule.strategy == STRAT_NULL:
            return None
        # A regex may cut a multi-byte character; what is left of it cannot be anything but a replacement char.
        return (<bytes>PyBytes_FromStringAndSize(<const char*>tmp.data, tmp.len)).decode("utf-8", "replace")
    finally:
        buf_free(&tmp)


cdef object _detect_py(Rule rule, object node, list count):
    cdef type kind = type(node)
    if kind is str:
        return _detect_py_text(rule, node, count)
    if kind is dict:
        masked = {}
        for key, item in (<dict>node).items():
            new_key = _detect_py_text(rule, key, count)
            masked["" if new_key is None else new_key] = _detect_py(rule, item, count)
        return masked
    if kind is list:
        return [_detect_py(rule, item, count) for item in node]
    if kind is int:
        text = _detect_py_text(rule, str(node), count)
        return node if text == str(node) else text
    return node


cdef int _orjson_route(Rule rule, const unsigned char* s, Py_ssize_t n, Emit* em) except -1:
    """Mask s (JSON) through orjson; ST_INVALID when it does not parse."""
    try:
        document = orjson.loads(PyBytes_FromStringAndSize(<const char*>s, n))
    except orjson.JSONDecodeError:
        return ST_INVALID
    cdef list count = [0]
    if rule.kind == KIND_PATH:
        document = _path_py(rule, document, 0, count)
    else:
        document = _detect_py(rule, document, count)
    if count[0]:
        try:
            encoded = orjson.dumps(document)
        except TypeError:
            return ST_INVALID   # nested deeper than orjson writes: handled as not JSON, which fails closed
        buf_put(em.dst, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
        em.done = n
        em.count += count[0]
    return ST_OK


# ---------------------------------------------------------------------------------------------------------------
# One rule on one field

cdef inline int _reset(Emit* em, Buf* dst, const unsigned char* header, Py_ssize_t head) except -1 nogil:
    dst.len = 0
    buf_put(dst, header, head)
    em.done = 0
    em.count = 0
    return 0


cdef inline Py_ssize_t _frame_head(const unsigned char* s, Py_ssize_t n, int kind) noexcept nogil:
    """How many leading bytes of a field are framing that a rule of this kind keeps (see Fields above)."""
    if n >= FRAME_HEADER and s[0] == 0:
        return FRAME_HEADER
    if n >= GLUE_HEADER and s[0] == GLUE_VERSION and s[1] == GLUE_UNCOMPRESSED:
        return GLUE_HEADER if kind == KIND_PATH else GLUE_KEPT
    if n >= UTF8_BOM and s[0] == 0xEF and s[1] == 0xBB and s[2] == 0xBF:
        return UTF8_BOM
    return 0


cdef inline bint _glue_zlib(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Whether the field is Glue framed with a zlib payload: compression byte 5, then a zlib header (deflate,
    a window of at most 32 KiB, and the check bits that make CMF * 256 + FLG a multiple of 31)."""
    return (n >= GLUE_HEADER + 2 and s[0] == GLUE_VERSION and s[1] == GLUE_ZLIB
            and (s[GLUE_HEADER] & 0x0F) == 8 and (s[GLUE_HEADER] >> 4) <= 7
            and (s[GLUE_HEADER] * 256 + s[GLUE_HEADER + 1]) % 31 == 0)


cdef inline bint _utf16_bom(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Whether the field starts with a UTF-16 byte order mark (Java's StringSerializer writes one, big-endian, for
    the encoding UTF-16)."""
    return n >= 2 and ((s[0] == 0xFE and s[1] == 0xFF) or (s[0] == 0xFF and s[1] == 0xFE))


cdef int _utf16_to_utf8(MaskCtx* ctx, const unsigned char* s, Py_ssize_t n) except -1:
    """ctx.glue = the UTF-16 field s[0:n], after its byte order mark, as UTF-8. Returns the byte order (UTF16_BE or
    UTF16_LE), or 0, leaving ctx.glue alone, when s is not UTF-16 after all (an odd length, a lone surrogate): it is
    then read as the bytes it is."""
    cdef int order = UTF16_BE if s[0] == 0xFE else UTF16_LE
    try:
        text = PyBytes_FromStringAndSize(<const char*>s + 2, n - 2).decode(
            "utf-16-be" if order == UTF16_BE else "utf-16-le")
    except UnicodeDecodeError:
        return 0
    encoded = text.encode("utf-8")
    ctx.glue.len = 0
    buf_put(&ctx.glue, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
    return order


cdef int _utf8_to_utf16(MaskCtx* ctx, int order) except -1:
    """ctx.glue = ctx.result, masked UTF-8 text, as UTF-16 in that byte order, its byte order mark first."""
    try:
        text = PyBytes_FromStringAndSize(<const char*>ctx.result, ctx.result_len).decode("utf-8")
    except UnicodeDecodeError:
        raise UnmaskableField("masked UTF-16 text is no longer text") from None
    encoded = text.encode("utf-16-be" if order == UTF16_BE else "utf-16-le")
    ctx.glue.len = 0
    buf_put(&ctx.glue, b"\xfe\xff" if order == UTF16_BE else b"\xff\xfe", 2)
    buf_put(&ctx.glue, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
    return 0


class UnmaskableField(Exception):
    """A field the rules cannot be applied to, and which must therefore not be delivered."""


cdef int _inflate_glue(MaskCtx* ctx, const unsigned char* s, Py_ssize_t n) except -1:
    """ctx.glue = the Glue zlib field s[0:n] inflated: its header with compression byte 0, then the payload."""
    # The budget is shared by every field of the call: many fields each just under a per-field cap would
    # otherwise cost time without bound.
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(PyBytes_FromStringAndSize(<const char*>s + GLUE_HEADER, n - GLUE_HEADER),
                                      ctx.inflate_left + 1)
    except zlib.error as exc:
        raise UnmaskableField(f"Glue-framed zlib payload is corrupt: {exc}") from None
    if len(payload) > ctx.inflate_left or inflater.unconsumed_tail:
        raise UnmaskableField(f"Glue-framed zlib payload inflates past the {ctx.inflate_left} bytes left to inflate")
    if not inflater.eof:
        raise UnmaskableField("Glue-framed zlib payload ends before its zlib stream does")
    ctx.inflate_left -= len(payload)
    ctx.glue.len = 0
    buf_put(&ctx.glue, s, GLUE_HEADER)
    ctx.glue.data[1] = GLUE_UNCOMPRESSED
    buf_put(&ctx.glue, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
    return 0


cdef int _apply_rule(Rule rule, MaskCtx* ctx, const unsigned char* s, Py_ssize_t n, Buf* dst,
                     int kinds) except -1 nogil:
    """Write s masked by rule into dst and return 1, or return 0 when the rule changes nothing. kinds: the
    candidate bitmaps the field's detectors read (Masker.scan_kinds). Runs without the GIL, but for a regex
    rule, whose matching is Python's re, and the orjson route."""
    if rule.kind == KIND_REGEX:
        with gil:
            return _apply_regex_rule(rule, ctx, s, n, dst, kinds)
    return _apply(rule, ctx, s, n, dst, kinds, NULL)


cdef int _apply_regex_rule(Rule rule, MaskCtx* ctx, const unsigned char* s, Py_ssize_t n, Buf* dst,
                           int kinds) except -1:
    cdef Py_ssize_t head
    if _glue_json(s, n, rule.kind):
        text = PyBytes_FromStringAndSize(<const char*>s + GLUE_HEADER, n - GLUE_HEADER)
        id_text = PyBytes_FromStringAndSize(<const char*>s + GLUE_KEPT, GLUE_HEADER - GLUE_KEPT)
        return _apply_glue_json(rule, ctx, s, n, dst, kinds, <PyObject*>text, <PyObject*>id_text)
    head = _frame_head(s, n, rule.kind)
    text = PyBytes_FromStringAndSize(<const char*>s + head, n - head)
    return _apply(rule, ctx, s, n, dst, kinds, <PyObject*>text)


cdef inline bint _glue_json(const unsigned char* s, Py_ssize_t n, int kind) noexcept nogil:
    """Whether a detector or regex meets a Glue-framed (uncompressed) field whose payload is JSON."""
    return (kind != KIND_PATH and n > GLUE_HEADER and s[0] == GLUE_VERSION and s[1] == GLUE_UNCOMPRESSED
            and _looks_json(s + GLUE_HEADER, n - GLUE_HEADER))


cdef int _apply_glue_json(Rule rule, MaskCtx* ctx, const unsigned char* s, Py_ssize_t n, Buf* dst, int kinds,
                          PyObject* text, PyObject* id_text) except -1 nogil:
    """_apply for a Glue-framed field whose payload is JSON (Glue's JSON data format): the schema version id's 16
    bytes are scanned as binary, as in any Glue field (one that only looks framed hides nothing there), and the
    payload as any framed payload, which is read as JSON when it is: a JSON reader decodes \\u escapes, so the
    payload's strings must be read decoded too (the orjson route). A match cannot straddle the two: the payload
    starts with a bracket, which no detector takes. text, id_text: the payload and the id as bytes, for a regex
    rule."""
    cdef Emit em
    cdef Candidates candidates
    cdef const Candidates* cand = NULL
    em.dst = dst
    _reset(&em, dst, s, GLUE_KEPT)
    em.src = s + GLUE_KEPT
    if rule.kind == KIND_DETECTOR and kinds:
        _scan(ctx, em.src, GLUE_HEADER - GLUE_KEPT, kinds, &candidates)
        cand = &candidates
    _detect_raw(rule, em.src, GLUE_HEADER - GLUE_KEPT, id_text, cand, &em, MODE_FIT)
    _emit_upto(&em, GLUE_HEADER - GLUE_KEPT)
    return _apply_payload(rule, ctx, s + GLUE_HEADER, n - GLUE_HEADER, True, kinds, text, &em)


cdef int _apply(Rule rule, MaskCtx* ctx, const unsigned char* s, Py_ssize_t n, Buf* dst, int kinds,
                PyObject* text) except -1 nogil:
    """_apply_rule's work; text: the payload as bytes, for a regex rule (else NULL)."""
    cdef Py_ssize_t head = _frame_head(s, n, rule.kind)
    cdef Emit em
    if n == head:
        return 0
    if head == GLUE_KEPT and text == NULL and _glue_json(s, n, rule.kind):
        return _apply_glue_json(rule, ctx, s, n, dst, kinds, NULL, NULL)    # (a regex rule's went before)
    em.dst = dst
    _reset(&em, dst, s, head)
    # A byte order mark is kept, and what follows read as if it were not there: not a framing.
    return _apply_payload(rule, ctx, s + head, n - head, head != 0 and head != UTF8_BOM, kinds, text, &em)


cdef inline int _rewind(Emit* em, Py_ssize_t mark, Py_ssize_t count) except -1 nogil:
    """Undo what a failed attempt on the payload wrote: back to mark bytes in em.dst and count matches."""
    em.dst.len = mark
    em.done = 0
    em.count = count
    return 0


cdef int _apply_payload(Rule rule, MaskCtx* ctx, const unsigned char* payload, Py_ssize_t size, bint framed,
                        int kinds, PyObject* text, Emit* em) except -1 nogil:
    """The rule on a field's payload, what precedes it already in em.dst (and its matches in em.count): as JSON
    when it is JSON, else as text, or as binary when framed (each replacement fitted to its match)."""
    cdef Py_ssize_t mark = em.dst.len, count = em.count
    cdef int st
    cdef Candidates candidates
    cdef const Candidates* cand = NULL
    if rule.kind == KIND_DETECTOR and kinds:
        _scan(ctx, payload, size, kinds, &candidates)
        cand = &candidates
    em.src = payload
    em.done = 0
    # A framed payload cannot be decoded here, so a path never applies to it as JSON.
    if _looks_json(payload, size) and not (rule.kind == KIND_PATH and framed):
        if rule.kind == KIND_PATH:
            st = _path_scan(rule, payload, size, em)
        else:
            st = _detect_json(rule, payload, size, text, cand, em)
        if st == ST_UNDECIDED:
            _rewind(em, mark, count)
            with gil:
                st = _orjson_route(rule, payload, size, em)
        if st == ST_OK:
            return _finish(rule, ctx, em, size)
        _rewind(em, mark, count)
    if rule.kind == KIND_PATH:
        # Not JSON (or framed): the path cannot be followed, so the whole value goes.
        if rule.strategy != STRAT_NULL:
            _put_masked(rule, em.dst, payload, size, MODE_RAW)
        em.done = size
        em.count = count + 1
    else:
        _detect_raw(rule, payload, size, text, cand, em, MODE_FIT if framed else MODE_RAW)
    return _finish(rule, ctx, em, size)


cdef inline int _finish(Rule rule, MaskCtx* ctx, Emit* em, Py_ssize_t size) except -1 nogil:
    if em.count == 0:
        return 0
    _emit_upto(em, size)
    ctx.counts[rule.index] += em.count
    ctx.masked += em.count
    return 1


# ---------------------------------------------------------------------------------------------------------------

cdef int maskctx_init(MaskCtx* ctx, Masker masker) except -1:
    """Set ctx up for one call; maskctx_free releases it, also after this raised."""
    cdef Py_ssize_t rules = max(len(masker.names), 1)
    buf_init(&ctx.a, PY_SSIZE_T_MAX)
    buf_init(&ctx.b, PY_SSIZE_T_MAX)
    buf_init(&ctx.scan, PY_SSIZE_T_MAX)
    buf_init(&ctx.glue, PY_SSIZE_T_MAX)
    buf_init(&ctx.narrow, PY_SSIZE_T_MAX)
    buf_init(&ctx.narrow_masked, PY_SSIZE_T_MAX)
    ctx.inflate_left = GLUE_MAX_INFLATED
    ctx.scan_of = NULL
    ctx.scan_len = 0
    ctx.scan_kinds = 0
    ctx.counts = NULL
    ctx.masked = 0
    ctx.result = NULL
    ctx.result_len = 0
    # Reserved up front so that a result is never a NULL pointer, even when empty.
    buf_reserve(&ctx.a, 256)
    buf_reserve(&ctx.b, 256)
    ctx.counts = <Py_ssize_t*>PyMem_Malloc(rules * sizeof(Py_ssize_t))
    if ctx.counts == NULL:
        raise MemoryError()
    memset(ctx.counts, 0, rules * sizeof(Py_ssize_t))
    return 0


cdef void maskctx_free(MaskCtx* ctx) noexcept:
    buf_free(&ctx.a)
    buf_free(&ctx.b)
    buf_free(&ctx.scan)
    buf_free(&ctx.glue)
    buf_free(&ctx.narrow)
    buf_free(&ctx.narrow_masked)
    PyMem_Free(ctx.counts)
    ctx.counts = NULL


cdef inline bint _step(Rule rule, MaskCtx* ctx, int kinds, bint* flip) except -1 nogil:
    """Apply one rule to ctx.result, writing into the scratch buffer it is not in; whether it changed it.
    (Masker.mask_field, the hot loop, has this written out: through _step it measured 3-7 % slower.)"""
    cdef Buf* dst = &ctx.b if flip[0] else &ctx.a
    if not _apply_rule(rule, ctx, ctx.result, ctx.result_len, dst, kinds):
        return False
    ctx.result = dst.data
    ctx.result_len = dst.len
    ctx.scan_of = NULL
    flip[0] = not flip[0]
    return True


cdef _plan_walks(tuple rules, int* together):
    """together[i]: how many path rules from rules[i] on are walked as one (_apply_paths): a run of path rules
    for the same fields (the same header, or all) is, from its first rule; every other rule is walked alone."""
    cdef Py_ssize_t first = 0, end, i
    while first < len(rules):
        end = first + 1
        if (<Rule>rules[first]).kind == KIND_PATH:
            while (end < len(rules) and end - first < MAX_WALKED_TOGETHER and (<Rule>rules[end]).kind == KIND_PATH
                   and (<Rule>rules[end]).header == (<Rule>rules[first]).header):
                end += 1
        together[first] = <int>(end - first)
        for i in range(first + 1, end):
            together[i] = 1     # reached only after a failed shared walk: then one by one
        first = end


cdef inline bint _applies(Rule rule, int target, const unsigned char* header_key,
                          Py_ssize_t header_key_len) noexcept nogil:
    """Whether the rule applies to this field: a header rule naming a header applies to that header only."""
    return not (target == TARGET_HEADER and rule.header_at != NULL and (
        rule.header_len != header_key_len or memcmp(rule.header_at, header_key, header_key_len) != 0))


# ---------------------------------------------------------------------------------------------------------------
# UTF-16 and UTF-32 text without a byte order mark (see Fields above)

cdef inline bint _wide_char(unsigned char c) noexcept nogil:
    """Whether c is the low byte of a wide character that reads as text: printable ASCII, tab, line feed or
    carriage return (its other bytes zero)."""
    return 0x20 <= c <= 0x7E or c == 0x09 or c == 0x0A or c == 0x0D


# The wide text search in use: AVX-512BW where the CPU has it, else SSE2 (sw_wide_layouts_fastest).
cdef sw_wide_layouts_fn _sw_wide_layouts = sw_wide_layouts_fastest()


cdef int _wide_layouts(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Which wide encodings s may hold a run of WIDE_MIN_RUN text characters in (bit 1 UTF-16, bit 2 UTF-32): any
    secret is at least that many printable ones, which sw_wide_layouts looks for. A field without a zero byte
    (all text, all JSON) costs one memchr."""
    if memchr(s, 0, n) == NULL:
        return 0
    return _sw_wide_layouts(s, n)


cdef inline bint _wide_at(const unsigned char* s, Py_ssize_t p, int width, bint big) noexcept nogil:
    """Whether s[p:p + width] is one wide text character (_wide_char) in that byte order."""
    if width == 2:
        return s[p] == 0 and _wide_char(s[p + 1]) if big else s[p + 1] == 0 and _wide_char(s[p])
    if big:
        return s[p] == 0 and s[p + 1] == 0 and s[p + 2] == 0 and _wide_char(s[p + 3])
    return s[p + 1] == 0 and s[p + 2] == 0 and s[p + 3] == 0 and _wide_char(s[p])


cdef int _wide_rule(Rule rule, MaskCtx* ctx, int kinds) except -1 nogil:
    """A detector or regex rule over the narrowed run in ctx.narrow, each match replaced there in place (fitted to
    its length); how many it replaced."""
    if rule.kind == KIND_REGEX:
        with gil:
            text = PyBytes_FromStringAndSize(<const char*>ctx.narrow.data, ctx.narrow.len)
            return _wide_match(rule, ctx, kinds, <PyObject*>text)
    return _wide_match(rule, ctx, kinds, NULL)


cdef int _wide_match(Rule rule, MaskCtx* ctx, int kinds, PyObject* text) except -1 nogil:
    cdef Emit em
    cdef Candidates candidates
    cdef const Candidates* cand = NULL
    cdef Py_ssize_t n = ctx.narrow.len
    if rule.kind == KIND_DETECTOR and kinds:
        ctx.scan_of = NULL      # ctx.narrow is refilled in place: bitmaps kept by its address would be stale
        _scan(ctx, ctx.narrow.data, n, kinds, &candidates)
        cand = &candidates
    ctx.narrow_masked.len = 0
    em.src = ctx.narrow.data
    em.dst = &ctx.narrow_masked
    em.done = 0
    em.count = 0
    _detect_raw(rule, ctx.narrow.data, n, text, cand, &em, MODE_FIT)
    if _finish(rule, ctx, &em, n):
        memcpy(ctx.narrow.data, ctx.narrow_masked.data, n)     # MODE_FIT: the same length
    ctx.scan_of = NULL
    return <int>em.count


cdef class Masker:
    """Rules compiled once; see the module docstring for what each rule does.

    ``Masker(rules, hmac_key)``: ``rules`` is a list of dicts with ``name``, ``target``
    ("value" | "key" | "header"), optional ``header`` (a header name), ``kind``
    ("json_path" with ``path`` | "detector" with ``detector`` | "regex" with
    ``pattern``), ``strategy`` ("redact" with optional ``placeholder`` | "partial"
    with optional ``keep_last`` (4) | "hash" | "null"). Unknown or misplaced keys
    are errors: a typo must not silently switch masking off.
    """

    def __init__(self, list rules, bytes hmac_key):
        compiled = [_compile_rule(spec, index, hmac_key) for index, spec in enumerate(rules)]
        self.names = tuple(spec["name"] for spec in rules)
        self._key_rules = tuple(r for r, spec in zip(compiled, rules) if spec["target"] == "key")
        self._value_rules = tuple(r for r, spec in zip(compiled, rules) if spec["target"] == "value")
        self._header_rules = tuple(r for r, spec in zip(compiled, rules) if spec["target"] == "header")
        self.has_key_rules = len(self._key_rules) > 0
        self.has_value_rules = len(self._value_rules) > 0
        self.has_header_rules = len(self._header_rules) > 0
        cdef int target
        for target, target_rules in ((TARGET_KEY, self._key_rules), (TARGET_VALUE, self._value_rules),
                                     (TARGET_HEADER, self._header_rules)):
            self.scan_kinds[target] = 0
            self._reads_wide[target] = False
            for item in target_rules:
                if (<Rule>item).kind == KIND_DETECTOR:
                    self.scan_kinds[target] |= SCAN_KINDS[(<Rule>item).detector]
                self._reads_wide[target] |= (<Rule>item).kind != KIND_PATH
            # Alone, the card detector is faster probing every 13th byte than any pass over all of them; the iban
            # and phone detectors test every byte, so once they need a pass the card's bitmap comes nearly free.
            if self.scan_kinds[target] == SCAN_CARD:
                self.scan_kinds[target] = 0
            # The rules as borrowed pointers (the tuples keep them alive), for mask_field without the GIL.
            self._rules_at[target] = <PyObject**>PyMem_Malloc(max(len(target_rules), 1) * sizeof(PyObject*))
            if self._rules_at[target] == NULL:
                raise MemoryError()
            self._nrules[target] = len(target_rules)
            for index, item in enumerate(target_rules):
                self._rules_at[target][index] = <PyObject*>item
            self._walk_together[target] = <int*>PyMem_Malloc(max(len(target_rules), 1) * sizeof(int))
            if self._walk_together[target] == NULL:
                raise MemoryError()
            _plan_walks(target_rules, self._walk_together[target])

    def __dealloc__(self):
        cdef int target
        for target in range(3):
            PyMem_Free(self._rules_at[target])
            PyMem_Free(self._walk_together[target])

    cdef int mask_field(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                        const unsigned char* data, Py_ssize_t n) except -1 nogil:
        """1 when the rules for target changed the field (ctx.result holds it), else 0."""
        cdef int changed = self._mask_rules(ctx, target, header_key, header_key_len, data, n)
        if self._reads_wide[target]:
            changed |= self._mask_wide(ctx, target, header_key, header_key_len, data)
        return changed

    cdef int _mask_wide(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                        const unsigned char* data) except -1 nogil:
        """The detector and regex rules for target over the UTF-16 and UTF-32 text in ctx.result (the field as the
        rules left it), UTF-16 first, little-endian before big-endian: each reads what the one before left, so a
        match is replaced once. 1 when one replaced anything (ctx.result holds the field then), else 0."""
        cdef int layouts = _wide_layouts(ctx.result, ctx.result_len)
        cdef bint changed = False
        if layouts & 1:
            self._mask_wide_runs(ctx, target, header_key, header_key_len, data, 2, False, &changed)
            self._mask_wide_runs(ctx, target, header_key, header_key_len, data, 2, True, &changed)
        if layouts & 2:
            self._mask_wide_runs(ctx, target, header_key, header_key_len, data, 4, False, &changed)
            self._mask_wide_runs(ctx, target, header_key, header_key_len, data, 4, True, &changed)
        return changed

    cdef int _mask_wide_runs(self, MaskCtx* ctx, int target, const unsigned char* header_key,
                             Py_ssize_t header_key_len, const unsigned char* data, int width, bint big,
                             bint* changed) except -1 nogil:
        """_mask_wide for one encoding: every run of its text characters, at each alignment, narrowed, masked by
        each rule in turn, and written back where it was (the first time, into a scratch buffer of ctx.result's
        bytes unless ctx.result is one already: data, the caller's, is never written); changed[0] set then."""
        cdef PyObject** rules = self._rules_at[target]
        cdef int kinds = self.scan_kinds[target], i, replaced
        cdef Py_ssize_t n = ctx.result_len, align, p, start, count, k
        cdef Py_ssize_t low = width - 1 if big else 0     # where a character's ASCII byte sits in it
        cdef unsigned char* out
        for align in range(width):
            p = align
            count = 0
            start = 0
            while True:
                if p + width <= n and _wide_at(ctx.result, p, width, big):
                    if count == 0:
                        start = p
                    count += 1
                    p += width
                    continue
                if count >= WIDE_MIN_RUN:
                    ctx.narrow.len = 0
                    buf_reserve(&ctx.narrow, count)
                    for k in range(count):
                        ctx.narrow.data[k] = ctx.result[start + k * width + low]
                    ctx.narrow.len = count
                    replaced = 0
                    for i in range(self._nrules[target]):
                        if (<Rule>rules[i]).kind != KIND_PATH and _applies(<Rule>rules[i], target, header_key,
                                                                             header_key_len):
                            replaced += _wide_rule(<Rule>rules[i], ctx, kinds)
                    if replaced:
                        if ctx.result == data:
                            ctx.a.len = 0
                            buf_put(&ctx.a, data, n)
                            ctx.result = ctx.a.data
                        changed[0] = True
                        out = <unsigned char*>ctx.result
                        for k in range(count):
                            # A replacement is ASCII but for a placeholder's own characters: those go out as '*'.
                            out[start + k * width + low] = ctx.narrow.data[k] if ctx.narrow.data[k] < 0x80 else c'*'
                if p + width > n:
                    break
                count = 0
                p += width
        return 0

    cdef int _mask_rules(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                         const unsigned char* data, Py_ssize_t n) except -1 nogil:
        """mask_field's rules as written, each on the field as the one before left it."""
        cdef PyObject** rules = self._rules_at[target]
        cdef int* together = self._walk_together[target]
        cdef Buf* dst
        cdef bint flip = False, changed = False, framed = False
        cdef int kinds = self.scan_kinds[target], i = 0, done
        ctx.result = data
        ctx.result_len = n
        ctx.scan_of = NULL    # bitmaps of an earlier field may sit at the same address
        while i < self._nrules[target]:
            if not _applies(<Rule>rules[i], target, header_key, header_key_len):
                i += 1
                continue
            if not framed:
                # Once a rule applies to the field: a Glue zlib payload is inflated for every rule to see, and
                # UTF-16 text is read decoded (_mask_utf16).
                framed = True
                if _glue_zlib(data, n):
                    with gil:
                        _inflate_glue(ctx, data, n)
                    ctx.result = ctx.glue.data
                    ctx.result_len = ctx.glue.len
                elif _utf16_bom(data, n):
                    return self._mask_utf16(ctx, target, header_key, header_key_len, data, n)
            dst = &ctx.b if flip else &ctx.a
            # A run of path rules is walked once for all (when the walk cannot stand for them, one by one).
            done = _apply_paths(rules + i, together[i], ctx, ctx.result, ctx.result_len, dst) if together[i] > 1 else -1
            if done >= 0:
                i += together[i]
            else:
                done = _apply_rule(<Rule>rules[i], ctx, ctx.result, ctx.result_len, dst, kinds)
                i += 1
            if done:
                ctx.result = dst.data
                ctx.result_len = dst.len
                ctx.scan_of = NULL
                flip = not flip
                changed = True
        return changed

    cdef int _mask_utf16(self, MaskCtx* ctx, int target, const unsigned char* header_key, Py_ssize_t header_key_len,
                         const unsigned char* data, Py_ssize_t n) except -1 nogil:
        """mask_field for a field that starts with a UTF-16 byte order mark: every rule reads it decoded (as
        UTF-8), and when one changes it, it is encoded again in its byte order. Then the detectors and patterns
        also read its bytes as they are: a field that only starts like UTF-16 (ASCII after the two bytes, say)
        must not hide what they find there; in real UTF-16 text they find nothing, every other byte being zero.
        (A path has failed closed on such a field already: it is not JSON.)"""
        cdef PyObject** rules = self._rules_at[target]
        cdef bint flip = False, changed = False
        cdef int kinds = self.scan_kinds[target], i, order
        with gil:
            order = _utf16_to_utf8(ctx, data, n)
        if order:
            ctx.result = ctx.glue.data
            ctx.result_len = ctx.glue.len
            for i in range(self._nrules[target]):
                if _applies(<Rule>rules[i], target, header_key, header_key_len):
                    changed |= _step(<Rule>rules[i], ctx, kinds, &flip)
        if changed:
            with gil:
                _utf8_to_utf16(ctx, order)
            ctx.result = ctx.glue.data
            ctx.result_len = ctx.glue.len
        else:
            ctx.result = data
            ctx.result_len = n
        ctx.scan_of = NULL
        for i in range(self._nrules[target]):
            if (<Rule>rules[i]).kind != KIND_PATH or not order:
                if _applies(<Rule>rules[i], target, header_key, header_key_len):
                    changed |= _step(<Rule>rules[i], ctx, kinds, &flip)
        return changed

    def apply(self, data, *, str target="value", str header=None, Py_ssize_t max_inflated=GLUE_MAX_INFLATED):
        """Mask one field outside a batch: (masked bytes, or data itself when unchanged; counts by rule name).
        Raises UnmaskableField when the field cannot be masked."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}")
        cdef bytes field = bytes(data)
        cdef bytes key = header.encode("utf-8") if header is not None else b""
        cdef MaskCtx ctx
        try:
            maskctx_init(&ctx, self)
            ctx.inflate_left = max_inflated
            changed = self.mask_field(&ctx, TARGETS[target], <const unsigned char*>PyBytes_AS_STRING(key),
                                      PyBytes_GET_SIZE(key), <const unsigned char*>PyBytes_AS_STRING(field),
                                      PyBytes_GET_SIZE(field))
            result = PyBytes_FromStringAndSize(<const char*>ctx.result, ctx.result_len) if changed else data
            return result, counts_by_name(&ctx, self)
        finally:
            maskctx_free(&ctx)


def _card_run_for_tests(data, Py_ssize_t start=0, bint portable=False):
    """For tests: where the first run of 13 or more digits, spaces and dashes in data[start:] starts (bytes before
    start do not count), or -1; through the search in use, or the portable probe."""
    cdef bytes field = bytes(data)
    if start < 0 or start > len(field):
        raise ValueError("start out of range")
    return (sw_card_run_portable if portable else _card_run)(
        <const unsigned char*>PyBytes_AS_STRING(field), start, PyBytes_GET_SIZE(field))


def _wide_layouts_for_tests(data, bint portable=False):
    """For tests: which wide encodings data may hold four printable ASCII characters in a row in (bit 1 UTF-16,
    bit 2 UTF-32), through the search in use, or the portable (SSE2) one."""
    cdef bytes field = bytes(data)
    return (sw_wide_layouts_portable if portable else _sw_wide_layouts)(
        <const unsigned char*>PyBytes_AS_STRING(field), PyBytes_GET_SIZE(field))


def _detector_matches(str detector, data, bint merged, Py_ssize_t start=0, bint portable=False):
    """For tests: every match of one detector in data from start on, found one after another as the rules do
    (each search starting where the last match ended), as [(start, end), ...]. merged: through the candidate
    bitmaps of the merged pass over every kind, else by the detector's own scan; both must agree. portable: the merged
    pass and the card run search without AVX-512, and every card run walked group by group (no check of the common
    shape at once), which must find the same."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {sorted(DETECTORS)}")
    if start < 0:
        raise ValueError("start must not be negative")
    cdef bytes field = bytes(data)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(field)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(field), words = (n + 63) // 64, ms, me
    cdef int kind = DETECTORS[detector]
    cdef bint found
    cdef uint64_t* bits = NULL
    cdef const uint64_t* cand = NULL
    matches = []
    try:
        if merged and n:
            bits = <uint64_t*>PyMem_Malloc(3 * words * sizeof(uint64_t))
            if bits == NULL:
                raise MemoryError()
            (sw_scan_portable if portable else _sw_scan)(s, n, SCAN_CARD | SCAN_IBAN | SCAN_PHONE, bits, bits + words,
                                                         bits + 2 * words)
            cand = bits if kind == DET_CARD else bits + words if kind == DET_IBAN else bits + 2 * words
        while start <= n:
            if kind == DET_CARD:
                found = _find_card(s, n, start, &ms, &me, cand,
                                   sw_card_run_portable if portable else _card_run, not portable)
            elif kind == DET_EMAIL:
                found = _find_email(s, n, start, &ms, &me)
            elif kind == DET_IBAN:
                found = _find_iban(s, n, start, &ms, &me, cand)
            elif kind == DET_SSN:
                found = _find_ssn(s, n, start, &ms, &me)
            else:
                found = _find_phone(s, n, start, &ms, &me, cand)
            if not found:
                break
            matches.append((ms, me))
            start = me
    finally:
        PyMem_Free(bits)
    return matches


_SHA256_IMPLS = {"scalar": SW_SHA256_SCALAR, "sha-ni": SW_SHA256_SHANI}


def _sha256_impl():
    """For tests: the SHA-256 compression the hash strategy uses on this CPU, "sha-ni" or "scalar"."""
    return "sha-ni" if sw_sha256_impl(SW_SHA256_AUTO) == sw_sha256_impl(SW_SHA256_SHANI) else "scalar"


def _hmac_sha256_for_tests(bytes key, bytes msg, str impl=None):
    """For tests: the full 32-byte HMAC-SHA256 of msg under key, as the hash strategy computes it (same key
    handling, same C code), through the implementation in use or the one impl names ("scalar", "sha-ni");
    ValueError when this CPU lacks it."""
    cdef sw_sha256_blocks_fn blocks = sw_sha256_impl(SW_SHA256_AUTO)
    if impl is not None:
        if impl not in _SHA256_IMPLS:
            raise ValueError(f"impl must be one of {sorted(_SHA256_IMPLS)}")
        blocks = sw_sha256_impl(_SHA256_IMPLS[impl])
        if blocks == NULL:
            raise ValueError(f"{impl} is not available on this CPU")
    cdef uint32_t inner[8]
    cdef uint32_t outer[8]
    cdef uint8_t out[32]
    _hmac_midstates(blocks, key, inner, outer)
    sw_hmac_sha256_with(blocks, inner, outer, <const uint8_t*>PyBytes_AS_STRING(msg), <size_t>PyBytes_GET_SIZE(msg),
                        out)
    return PyBytes_FromStringAndSize(<const char*>out, 32)


cdef dict counts_by_name(MaskCtx* ctx, Masker masker):
    cdef dict counts = {}
    for index, name in enumerate(masker.names):
        if ctx.counts[index]:
            counts[name] = counts.get(name, 0) + ctx.counts[index]
    return counts


_JSON_SKIP_IMPLS = {"scalar": SW_JSON_SKIP_SCALAR, "simd": SW_JSON_SKIP_SIMD, "avx512": SW_JSON_SKIP_AVX512}


cdef str _json_skip_name(const sw_json_skip_impl* impl):
    if impl == NULL:
        return "tokens"
    for name, which in _JSON_SKIP_IMPLS.items():
        if impl == sw_json_skip_get(which):
            return name
    return "scalar"


cdef const sw_json_skip_impl* _json_skip_named(str impl) except? NULL:
    cdef const sw_json_skip_impl* found
    if impl not in _JSON_SKIP_IMPLS:
        raise ValueError(f"impl must be one of {sorted(_JSON_SKIP_IMPLS) + ['tokens']}")
    found = sw_json_skip_get(_JSON_SKIP_IMPLS[impl])
    if found == NULL:
        raise ValueError(f"{impl} is not available on this CPU")
    return found


def _json_skip_for_tests(data, Py_ssize_t start=0, str impl=None, bint raw=False):
    """For tests: where skipping the object or array at data[start] ends (the index past it, -1 invalid, -2
    undecided), through the skip in use, the token walk ("tokens"), or a block implementation ("scalar", "simd",
    "avx512");
    raw: the block scan's own answer, -4 where it hands over to the token walk. ValueError when this CPU lacks
    the implementation or data[start] is not '{' or '['."""
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    cdef Py_ssize_t n = view.shape[0], e
    cdef const unsigned char* s = &view[0] if n else <const unsigned char*>b""
    cdef const sw_json_skip_impl* chosen = _json_skip
    if not 0 <= start < n or (s[start] != c'{' and s[start] != c'['):
        raise ValueError("data[start] must be '{' or '['")
    if impl == "tokens":
        chosen = NULL
    elif impl is not None:
        chosen = _json_skip_named(impl)
    if chosen == NULL:
        return _skip_container_tokens(s, n, start)
    e = sw_json_skip_with(chosen, s, n, start, MAX_JSON_DEPTH)
    if e == SW_SKIP_FALLBACK and not raw:
        e = _skip_container_tokens(s, n, start)
    return e


def _set_json_skip_impl(str impl=None):
    """For tests: make every Masker skip containers through impl ("scalar", "simd", "avx512", "tokens"; None: the
    default, the fastest SIMD one the CPU has, else "tokens"); the name of the one in use before."""
    global _json_skip
    cdef str before = _json_skip_name(_json_skip)
    if impl is None:
        _json_skip = sw_json_skip_fastest()
    elif impl == "tokens":
        _json_skip = NULL
    else:
        _json_skip = _json_skip_named(impl)
    return before
