/* SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) from precomputed midstates, for the masking kernel's
   `hash` strategy (mask.pyx).

   The HMAC key is fixed per rule, so its two 64-byte blocks (key ^ ipad, key ^ opad) are compressed once, when
   the rule is compiled (sw_sha256_midstate); each token then continues from those states (sw_hmac_sha256): for
   a message of at most 55 bytes that is one compression for the inner hash and one for the outer.

   Two compression functions: one with the x86 SHA extensions (SHA-NI), compiled for that one function through
   a target attribute so the rest of the module needs no extra compiler flags, and a portable scalar one. The
   fast one is chosen at run time by sw_sha256_init, from CPUID; until it runs (and on other CPUs, compilers
   and architectures) the scalar one is used, so every call gives the right digest whatever the order.

   Plain C99, no library. Every function is static: this header belongs to the one translation unit that
   includes it. */

#ifndef SW_SHA256_H
#define SW_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define SW_SHA256_HAVE_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define SW_SHA256_HAVE_SHANI 0
#endif

/* Compresses nblocks consecutive 64-byte blocks of data into state. */
typedef void (*sw_sha256_blocks_fn)(uint32_t state[8], const uint8_t *data, size_t nblocks);

static const uint32_t sw_sha256_iv[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au, 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

static const uint32_t sw_sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static inline uint32_t sw_sha256_load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void sw_sha256_store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t sw_sha256_rotr(uint32_t x, unsigned n) {
    return (x >> n) | (x << (32u - n));
}

/* ---- portable ------------------------------------------------------------------------------------------- */

static void sw_sha256_blocks_scalar(uint32_t state[8], const uint8_t *data, size_t nblocks) {
    uint32_t w[64];
    while (nblocks--) {
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        int i;
        for (i = 0; i < 16; i++)
            w[i] = sw_sha256_load_be32(data + 4 * i);
        for (i = 16; i < 64; i++) {
            uint32_t s0 = sw_sha256_rotr(w[i - 15], 7) ^ sw_sha256_rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = sw_sha256_rotr(w[i - 2], 17) ^ sw_sha256_rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        for (i = 0; i < 64; i++) {
            uint32_t t1 = h + (sw_sha256_rotr(e, 6) ^ sw_sha256_rotr(e, 11) ^ sw_sha256_rotr(e, 25))
                          + ((e & f) ^ (~e & g)) + sw_sha256_k[i] + w[i];
            uint32_t t2 = (sw_sha256_rotr(a, 2) ^ sw_sha256_rotr(a, 13) ^ sw_sha256_rotr(a, 22))
                          + ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
        data += 64;
    }
}

/* ---- x86 SHA extensions --------------------------------------------------------------------------------- */

#if SW_SHA256_HAVE_SHANI

/* SHA256RNDS2 keeps the state as two vectors, ABEF and CDGH (A in the high lane), and does two rounds given
   the two (message word + round constant) sums in the low lanes of its third operand. SHA256MSG1/MSG2 extend
   the message schedule four words at a time. */

/* Four rounds with the message words m (four words, first in the low lane) and constants k[4q .. 4q + 3]. */
#define SW_SHANI_ROUNDS(m, q)                                                                          \
    do {                                                                                               \
        __m128i sw_wk_ = _mm_add_epi32((m), _mm_loadu_si128((const __m128i *)(sw_sha256_k + 4 * (q)))); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, sw_wk_);                                              \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(sw_wk_, 0x0E));                     \
    } while (0)

/* m0 <- the four words after m3, from the sixteen in m0..m3 (m0 holding the oldest four). */
#define SW_SHANI_SCHEDULE(m0, m1, m2, m3)                                                                       \
    (m0) = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), \
                                (m3))

__attribute__((target("sha,sse4.1")))
static void sw_sha256_blocks_shani(uint32_t state[8], const uint8_t *data, size_t nblocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)state);          /* A in the low lane */
    __m128i hgfe = _mm_loadu_si128((const __m128i *)(state + 4));
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    while (nblocks--) {
        const __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 0)), bswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16)), bswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 32)), bswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 48)), bswap);
        int q;
        SW_SHANI_ROUNDS(m0, 0);
        SW_SHANI_ROUNDS(m1, 1);
        SW_SHANI_ROUNDS(m2, 2);
        SW_SHANI_ROUNDS(m3, 3);
        for (q = 4; q < 16; q += 4) {
            SW_SHANI_SCHEDULE(m0, m1, m2, m3);
            SW_SHANI_ROUNDS(m0, q);
            SW_SHANI_SCHEDULE(m1, m2, m3, m0);
            SW_SHANI_ROUNDS(m1, q + 1);
            SW_SHANI_SCHEDULE(m2, m3, m0, m1);
            SW_SHANI_ROUNDS(m2, q + 2);
            SW_SHANI_SCHEDULE(m3, m0, m1, m2);
            SW_SHANI_ROUNDS(m3, q + 3);
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
        data += 64;
    }
    {
        __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
        __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        _mm_storeu_si128((__m128i *)state, _mm_blend_epi16(feba, dchg, 0xF0));        /* DCBA */
        _mm_storeu_si128((__m128i *)(state + 4), _mm_alignr_epi8(dchg, feba, 8));    /* HGFE */
    }
}

#undef SW_SHANI_ROUNDS
#undef SW_SHANI_SCHEDULE

/* CPUID: SHA (leaf 7, EBX bit 29), SSSE3 (leaf 1, ECX bit 9) and SSE4.1 (leaf 1, ECX bit 19) - what
   __builtin_cpu_supports("sha") and ("sse4.1") test, read directly because older GCC and Clang releases do
   not know the "sha" feature name. */
static inline int sw_sha256_cpu_has_shani(void) {
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 9)) || !(ecx & (1u << 19)))
        return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx & (1u << 29)) != 0;
}

#endif /* SW_SHA256_HAVE_SHANI */

/* ---- selection ------------------------------------------------------------------------------------------ */

enum { SW_SHA256_AUTO = -1, SW_SHA256_SCALAR = 0, SW_SHA256_SHANI = 1 };

static sw_sha256_blocks_fn sw_sha256_blocks = sw_sha256_blocks_scalar;

/* The implementation `which` names (SW_SHA256_AUTO: the one in use), or NULL when this CPU or build lacks it. */
static inline sw_sha256_blocks_fn sw_sha256_impl(int which) {
    if (which == SW_SHA256_AUTO)
        return sw_sha256_blocks;
    if (which == SW_SHA256_SCALAR)
        return sw_sha256_blocks_scalar;
#if SW_SHA256_HAVE_SHANI
    if (which == SW_SHA256_SHANI) {
        /* CPUID once: under a hypervisor each CPUID is a VM exit (tens of microseconds here). */
        static int has = -1;
        if (has < 0)
            has = sw_sha256_cpu_has_shani();
        return has ? sw_sha256_blocks_shani : NULL;
    }
#endif
    return NULL;
}

/* Picks the fastest implementation this CPU runs. Call once, before other threads can hash (module import):
   it sets this header's two statics. */
static inline void sw_sha256_init(void) {
    sw_sha256_blocks_fn fast = sw_sha256_impl(SW_SHA256_SHANI);
    sw_sha256_blocks = fast != NULL ? fast : sw_sha256_blocks_scalar;
}

/* ---- hashing -------------------------------------------------------------------------------------------- */

/* Finishes a hash whose state has absorbed `before` bytes (a multiple of 64) with msg[0:len], into out. */
static inline void sw_sha256_finish(sw_sha256_blocks_fn blocks, uint32_t state[8], uint64_t before,
                                    const uint8_t *msg, size_t len, uint8_t out[32]) {
    uint8_t tail[128];
    size_t full = len / 64, rest = len % 64, tail_len;
    /* Message length in bits, modulo 2^64 as FIPS 180-4 has it. */
    uint64_t bits = (before + (uint64_t)len) << 3;
    int i;
    if (full)
        blocks(state, msg, full);
    if (rest)
        memcpy(tail, msg + full * 64, rest);
    tail[rest] = 0x80;
    tail_len = rest < 56 ? 64 : 128;            /* room for the 0x80 byte and the 8-byte length */
    memset(tail + rest + 1, 0, tail_len - 8 - (rest + 1));
    for (i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    blocks(state, tail, tail_len / 64);
    for (i = 0; i < 8; i++)
        sw_sha256_store_be32(out + 4 * i, state[i]);
}

/* SHA-256 of msg[0:len]. */
static inline void sw_sha256_with(sw_sha256_blocks_fn blocks, const uint8_t *msg, size_t len,
                                  uint8_t out[32]) {
    uint32_t state[8];
    memcpy(state, sw_sha256_iv, sizeof(state));
    sw_sha256_finish(blocks, state, 0, msg, len, out);
}

/* The state after the one block `block`, from the initial value. */
static inline void sw_sha256_midstate_with(sw_sha256_blocks_fn blocks, const uint8_t block[64],
                                           uint32_t state[8]) {
    memcpy(state, sw_sha256_iv, 8 * sizeof(uint32_t));
    blocks(state, block, 1);
}

/* HMAC-SHA256 of msg[0:len] given the midstates of the key's blocks: inner_mid after (key ^ ipad), outer_mid
   after (key ^ opad), the key zero-padded to 64 bytes (hashed first when longer). The midstates are read only. */
static inline void sw_hmac_sha256_with(sw_sha256_blocks_fn blocks, const uint32_t inner_mid[8],
                                       const uint32_t outer_mid[8], const uint8_t *msg, size_t len, uint8_t out[32]) {
    uint32_t state[8];
    uint8_t inner[32];
    memcpy(state, inner_mid, sizeof(state));
    sw_sha256_finish(blocks, state, 64, msg, len, inner);
    memcpy(state, outer_mid, sizeof(state));
    sw_sha256_finish(blocks, state, 64, inner, sizeof(inner), out);
}

static inline void sw_sha256(const uint8_t *msg, size_t len, uint8_t out[32]) {
    sw_sha256_with(sw_sha256_blocks, msg, len, out);
}

static inline void sw_sha256_midstate(const uint8_t block[64], uint32_t state[8]) {
    sw_sha256_midstate_with(sw_sha256_blocks, block, state);
}

static inline void sw_hmac_sha256(const uint32_t inner_mid[8], const uint32_t outer_mid[8], const uint8_t *msg,
                                  size_t len, uint8_t out[32]) {
    sw_hmac_sha256_with(sw_sha256_blocks, inner_mid, outer_mid, msg, len, out);
}

#endif /* SW_SHA256_H */
