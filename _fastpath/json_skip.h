/* Skipping a JSON object or array 64 bytes at a time, for the masking kernel's path walk (mask.pyx): the end of
   a container the path does not go into, found in the manner of simdjson's stage 1.

   Per 64-byte block, as bitmasks (bit i is byte i of the block):
     backslash, quote, open ({ [), close (} ]) and curly ({ }) bytes;
     escaped: the byte after each odd-length backslash run (a run that ends the block carries into the next);
     string: the prefix XOR of the unescaped quotes (a carry-less multiply by all ones), continued from the
       previous block: 1 from an opening quote up to (not including) its closing quote;
     the brackets outside strings, walked in order against a bit stack of the open kinds (1 for {) exactly as
       the token walk does; a block with none is passed over whole.

   What this must agree with, and does: mask.pyx's _skip_container, the token walk, which checks only that
   strings close and that brackets match in kind, up to a nesting of max_depth (deeper: undecided). Its one
   reading this cannot share is a backslash outside a string (invalid JSON, which it passes over while the
   block scan would let it escape the next byte). Up to the first such backslash both read every byte alike, so
   the scan settles anything before one and reports SW_SKIP_FALLBACK at one; the caller then runs the token
   walk on that value.

   Returns the index just past the closing bracket, SW_SKIP_INVALID (a string or the container does not close
   within n, or a bracket of the wrong kind), SW_SKIP_UNDECIDED (nesting deeper than max_depth), or
   SW_SKIP_FALLBACK. s[k] must be '{' or '['. No byte at or past n is read: the last partial block is read as the
   64 bytes that end at n, shifted, or when n < 64 copied into a zero-padded local buffer (NUL is in no class).

   Three implementations of the block classification: AVX-512BW (one load, mask compares), SSE2 (four loads,
   compares and movemasks), both with a PCLMULQDQ prefix XOR and compiled through target attributes on those
   functions only, and portable C (SWAR, eight bytes a word, and a shift ladder for the prefix XOR).
   sw_json_skip_init picks the fastest from CPUID (and, for AVX-512, XGETBV: the OS must save ZMM state) once;
   until it runs (and on other CPUs, compilers and architectures) the portable one is used. All give identical
   bitmasks. Each has its own copy of the skip loop with its classification inlined (5-10 % faster on the 1 KiB
   values of the end-to-end benchmark than calling it through a pointer per block).

   Plain C99, no library. Every function is static: this header belongs to the one translation unit that
   includes it. */

#ifndef SW_JSON_SKIP_H
#define SW_JSON_SKIP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define SW_JSON_SKIP_HAVE_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define SW_JSON_SKIP_HAVE_SIMD 0
#endif

#define SW_SKIP_INVALID (-1)
#define SW_SKIP_UNDECIDED (-2)
#define SW_SKIP_FALLBACK (-4)
#define SW_SKIP_MAX_WORDS 8     /* the bit stack: max_depth may be at most 64 * this */

typedef struct {
    uint64_t backslash, quote, open, close, curly;
} sw_json_bits;

/* The classes of the 64 bytes at p (all readable). */
typedef void (*sw_json_classify_fn)(const unsigned char *p, sw_json_bits *b);
/* The prefix XOR of x: bit i is the XOR of bits 0..i. */
typedef uint64_t (*sw_json_prefix_xor_fn)(uint64_t x);

/* --- portable --- */

#define SW_JS_ONES 0x0101010101010101ULL
#define SW_JS_LOW7 0x7F7F7F7F7F7F7F7FULL

/* One bit per byte of v (bit j for byte j) where that byte equals c: the exact zero-byte test (no borrows),
   its high bits gathered by a multiply (no two partial products meet, so no carries). */
static inline uint64_t sw_js_eq8(uint64_t v, unsigned char c) {
    uint64_t x = v ^ (SW_JS_ONES * c);
    uint64_t zero = ~(((x & SW_JS_LOW7) + SW_JS_LOW7) | x | SW_JS_LOW7);   /* 0x80 where the byte is zero */
    return ((zero >> 7) * 0x0102040810204080ULL) >> 56;
}

static inline uint64_t sw_js_load8(const unsigned char *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
#endif
}

static void sw_json_classify_scalar(const unsigned char *p, sw_json_bits *b) {
    int i;
    b->backslash = b->quote = b->open = b->close = b->curly = 0;
    for (i = 0; i < 64; i += 8) {
        uint64_t v = sw_js_load8(p + i), w = v | (SW_JS_ONES * 0x20);   /* [ ] read as { } */
        uint64_t lo = sw_js_eq8(v, 0x7B), lc = sw_js_eq8(v, 0x7D);
        b->backslash |= sw_js_eq8(v, 0x5C) << i;
        b->quote |= sw_js_eq8(v, 0x22) << i;
        b->open |= sw_js_eq8(w, 0x7B) << i;
        b->close |= sw_js_eq8(w, 0x7D) << i;
        b->curly |= (lo | lc) << i;
    }
}

static uint64_t sw_json_prefix_xor_scalar(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

/* --- SSE2 + PCLMULQDQ --- */

#if SW_JSON_SKIP_HAVE_SIMD
__attribute__((target("sse2")))
static void sw_json_classify_sse2(const unsigned char *p, sw_json_bits *b) {
    const __m128i backslash = _mm_set1_epi8(0x5C), quote = _mm_set1_epi8(0x22), open = _mm_set1_epi8(0x7B),
                  close = _mm_set1_epi8(0x7D), bit5 = _mm_set1_epi8(0x20);
    int i;
    b->backslash = b->quote = b->open = b->close = b->curly = 0;
    for (i = 0; i < 64; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(p + i)), w = _mm_or_si128(v, bit5);
        __m128i lo = _mm_cmpeq_epi8(v, open), lc = _mm_cmpeq_epi8(v, close);
        b->backslash |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(v, backslash)) << i;
        b->quote |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) << i;
        b->open |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(w, open)) << i;
        b->close |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(w, close)) << i;
        b->curly |= (uint64_t)(unsigned int)_mm_movemask_epi8(_mm_or_si128(lo, lc)) << i;
    }
}

__attribute__((target("sse2,pclmul")))
static uint64_t sw_json_prefix_xor_clmul(uint64_t x) {
    __m128i v = _mm_set_epi64x(0, (long long)x), ones = _mm_set1_epi8((char)0xFF);
    return (uint64_t)_mm_cvtsi128_si64(_mm_clmulepi64_si128(v, ones, 0));
}

/* AVX-512BW: the 64-byte block in one load, each class a mask compare straight into a 64-bit mask. */
__attribute__((target("avx512f,avx512bw")))
static void sw_json_classify_avx512(const unsigned char *p, sw_json_bits *b) {
    const __m512i v = _mm512_loadu_si512((const void *)p), w = _mm512_or_si512(v, _mm512_set1_epi8(0x20));
    const __m512i open = _mm512_set1_epi8(0x7B), close = _mm512_set1_epi8(0x7D);
    b->backslash = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x5C));
    b->quote = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(0x22));
    b->open = _mm512_cmpeq_epi8_mask(w, open);
    b->close = _mm512_cmpeq_epi8_mask(w, close);
    b->curly = _mm512_cmpeq_epi8_mask(v, open) | _mm512_cmpeq_epi8_mask(v, close);
}

/* CPUID leaf 7: EBX bit 16 AVX512F, bit 30 AVX512BW; and the OS saves the ZMM state (XCR0 bits 1, 2, 5, 6, 7:
   SSE, AVX, opmask, upper ZMM halves, ZMM16-31; OSXSAVE is CPUID leaf 1 ECX bit 27). Plus PCLMULQDQ. */
static inline int sw_json_cpu_has_avx512(void) {
    unsigned int eax, ebx, ecx, edx, xcr0_lo, xcr0_hi;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27)) || !(ecx & (1u << 1)))
        return 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0xE6u) != 0xE6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ebx & (1u << 16)) && (ebx & (1u << 30));
}

/* CPUID leaf 1: ECX bit 1 is PCLMULQDQ, EDX bit 26 SSE2 (read directly, as sha256.h does). */
static inline int sw_json_cpu_has_simd(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ecx & (1u << 1)) && (edx & (1u << 26));
}
#endif

/* The bytes escaped by backslashes in a block: each odd-length run of backslashes escapes the byte after it.
   *carry is 1 when the previous block ended with such a run (its byte 0 is escaped, so a backslash there
   starts nothing); it is set for the next block. A run starting on an even bit, plus its start bit, carries
   out to the bit after the run; the run is odd when that bit is odd. Likewise for odd starts (ending on an
   even bit); those carry past bit 63 only when odd (a run from an even start ending at 63 is even). Distinct
   runs have a zero between them, where each carry stops, so the additions do not interfere. */
static inline uint64_t sw_json_escaped(uint64_t backslash, uint64_t *carry) {
    const uint64_t even = 0x5555555555555555ULL, odd = ~even;
    uint64_t b = backslash & ~*carry;
    uint64_t starts = b & ~(b << 1);
    uint64_t even_ends = (b + (starts & even)) & ~b;
    uint64_t odd_sum = b + (starts & odd);
    uint64_t odd_ends = odd_sum & ~b;
    uint64_t escaped = (even_ends & odd) | (odd_ends & even) | *carry;
    *carry = odd_sum < b;   /* overflow: an odd run ended the block */
    return escaped;
}

/* The skip with a given classification and prefix XOR; always inlined, so that each implementation below gets
   its own copy with both calls inlined (through the function pointers they cost a call each per block). */
#if defined(__GNUC__)
#define SW_JSON_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SW_JSON_ALWAYS_INLINE inline
#endif
static SW_JSON_ALWAYS_INLINE Py_ssize_t sw_json_skip_body(
        sw_json_classify_fn classify, sw_json_prefix_xor_fn prefix_xor, const unsigned char *s, Py_ssize_t n,
        Py_ssize_t k, int max_depth) {
    uint64_t stack[SW_SKIP_MAX_WORDS];          /* bit per open bracket: 1 for {, 0 for [ */
    unsigned char tail[64];
    sw_json_bits b;
    uint64_t esc_carry = 0, in_string = 0;      /* in_string: all ones when the previous block ended in one */
    int depth = 0;
    if (max_depth > 64 * SW_SKIP_MAX_WORDS)
        max_depth = 64 * SW_SKIP_MAX_WORDS;
    for (; k < n; k += 64) {
        uint64_t escaped, quotes, string, brackets, bad, limit;
        if (n - k >= 64) {
            classify(s + k, &b);
        } else if (n >= 64) {
            /* The last partial block read as the block that ends at n, its bytes before k shifted out: the same
               bits as the zero-padded copy below (zeros come in past n), without copying. 0 < shift < 64. */
            int shift = (int)(k - (n - 64));
            classify(s + n - 64, &b);
            b.backslash >>= shift;
            b.quote >>= shift;
            b.open >>= shift;
            b.close >>= shift;
            b.curly >>= shift;
        } else {
            memset(tail, 0, sizeof tail);
            memcpy(tail, s + k, (size_t)(n - k));
            classify(tail, &b);
        }
        escaped = b.backslash ? sw_json_escaped(b.backslash, &esc_carry) : esc_carry;
        if (!b.backslash) esc_carry = 0;
        quotes = b.quote & ~escaped;
        string = prefix_xor(quotes) ^ in_string;
        in_string = (uint64_t)0 - (string >> 63);
        brackets = (b.open | b.close) & ~string;
        bad = b.backslash & ~string;            /* a backslash outside a string: the token walk reads on */
        limit = bad ? (bad & (0 - bad)) - 1 : ~(uint64_t)0;     /* the bits before the first one */
        brackets &= limit;
        while (brackets) {
#if defined(__GNUC__)
            int i = __builtin_ctzll(brackets);
#else
            int i = 0;
            while (!((brackets >> i) & 1)) i++;
#endif
            uint64_t bit = (uint64_t)1 << i;
            uint64_t curly = (b.curly >> i) & 1;
            brackets &= brackets - 1;
            if (b.open & bit) {
                if (depth == max_depth)
                    return SW_SKIP_UNDECIDED;
                if (curly)
                    stack[depth >> 6] |= (uint64_t)1 << (depth & 63);
                else
                    stack[depth >> 6] &= ~((uint64_t)1 << (depth & 63));
                depth++;
            } else {
                if (depth == 0 || ((stack[(depth - 1) >> 6] >> ((depth - 1) & 63)) & 1) != curly)
                    return SW_SKIP_INVALID;
                depth--;
                if (depth == 0)
                    return k + i + 1;
            }
        }
        if (bad)
            return SW_SKIP_FALLBACK;
    }
    return SW_SKIP_INVALID;
}

#if SW_JSON_SKIP_HAVE_SIMD
__attribute__((target("avx512f,avx512bw,pclmul")))
static Py_ssize_t sw_json_skip_avx512(const unsigned char *s, Py_ssize_t n, Py_ssize_t k, int max_depth) {
    return sw_json_skip_body(sw_json_classify_avx512, sw_json_prefix_xor_clmul, s, n, k, max_depth);
}

__attribute__((target("sse2,pclmul")))
static Py_ssize_t sw_json_skip_sse2(const unsigned char *s, Py_ssize_t n, Py_ssize_t k, int max_depth) {
    return sw_json_skip_body(sw_json_classify_sse2, sw_json_prefix_xor_clmul, s, n, k, max_depth);
}
#endif

static Py_ssize_t sw_json_skip_portable(const unsigned char *s, Py_ssize_t n, Py_ssize_t k, int max_depth) {
    return sw_json_skip_body(sw_json_classify_scalar, sw_json_prefix_xor_scalar, s, n, k, max_depth);
}

enum { SW_JSON_SKIP_AUTO = -1, SW_JSON_SKIP_SCALAR = 0, SW_JSON_SKIP_SIMD = 1, SW_JSON_SKIP_AVX512 = 2 };

/* An implementation: its skip, with its own block classification and prefix XOR inlined. */
typedef struct {
    Py_ssize_t (*skip)(const unsigned char *s, Py_ssize_t n, Py_ssize_t k, int max_depth);
} sw_json_skip_impl;

static sw_json_skip_impl sw_json_skip_scalar_impl = {sw_json_skip_portable};
#if SW_JSON_SKIP_HAVE_SIMD
static sw_json_skip_impl sw_json_skip_simd_impl = {sw_json_skip_sse2};
static sw_json_skip_impl sw_json_skip_avx512_impl = {sw_json_skip_avx512};
#endif
static const sw_json_skip_impl *sw_json_skip_current = &sw_json_skip_scalar_impl;

/* The implementation `which` names (SW_JSON_SKIP_AUTO: the one in use), or NULL when this CPU or build lacks
   it. */
static inline const sw_json_skip_impl *sw_json_skip_get(int which) {
    if (which == SW_JSON_SKIP_AUTO)
        return sw_json_skip_current;
    if (which == SW_JSON_SKIP_SCALAR)
        return &sw_json_skip_scalar_impl;
#if SW_JSON_SKIP_HAVE_SIMD
    if (which == SW_JSON_SKIP_SIMD && sw_json_cpu_has_simd())
        return &sw_json_skip_simd_impl;
    if (which == SW_JSON_SKIP_AVX512 && sw_json_cpu_has_avx512())
        return &sw_json_skip_avx512_impl;
#endif
    return NULL;
}

/* The fastest block implementation this CPU has, or NULL when it has no SIMD one. */
static inline const sw_json_skip_impl *sw_json_skip_fastest(void) {
    const sw_json_skip_impl *impl = sw_json_skip_get(SW_JSON_SKIP_AVX512);
    return impl != NULL ? impl : sw_json_skip_get(SW_JSON_SKIP_SIMD);
}

static inline void sw_json_skip_init(void) {
    const sw_json_skip_impl *impl = sw_json_skip_fastest();
    if (impl != NULL)
        sw_json_skip_current = impl;
}

static inline Py_ssize_t sw_json_skip_with(const sw_json_skip_impl *impl, const unsigned char *s, Py_ssize_t n,
                                           Py_ssize_t k, int max_depth) {
    return impl->skip(s, n, k, max_depth);
}


static inline Py_ssize_t sw_json_skip(const unsigned char *s, Py_ssize_t n, Py_ssize_t k, int max_depth) {
    return sw_json_skip_with(sw_json_skip_current, s, n, k, max_depth);
}

#endif
