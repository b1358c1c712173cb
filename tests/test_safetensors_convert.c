/* Unit tests of the safetensors conversions (part of test_safetensors; main is in
 * test_safetensors.c): every BF16 and F16 pattern to float32 and many float32 patterns
 * (ties, subnormals, inf, NaN, a prime-stride sweep of all 2^32, pseudo-random) to BF16/F16,
 * against scalar integer references written independently of the library; the compiler's
 * _Float16 as a third opinion; and the --bench throughput table. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/safetensors.h"

TCase *st_convert_tcase(void);
int st_convert_bench(void);

/* ---- conversion ---------------------------------------------------------------------------- */

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Scalar integer references, written independently of the library's arithmetic. */
static uint32_t ref_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    int e = (h >> 10) & 0x1f;
    uint32_t m = h & 0x3ff;
    if (e == 0x1f) return sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0); /* NaN quieted */
    if (e == 0) {
        if (m == 0) return sign;
        e = 1;
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        m &= 0x3ff;
    }
    return sign | ((uint32_t)(e + 112) << 23) | (m << 13);
}

static uint16_t ref_f32_to_f16(uint32_t u) {
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int exp = (u >> 23) & 0xff;
    uint32_t mant = u & 0x7fffff;
    if (exp == 0xff) return sign | (mant ? (uint16_t)(0x7e00 | (mant >> 13)) : 0x7c00);
    int e = exp - 127 + 15;
    if (e >= 31) return sign | 0x7c00;
    if (e >= 1) {
        uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    if (exp == 0) return sign;
    uint32_t m = mant | 0x800000;
    int shift = 126 - exp; /* value / 2^-24 = m >> shift */
    if (shift > 25) return sign;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

static uint16_t ref_f32_to_bf16(uint32_t u) {
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    uint32_t hi = u >> 16, lo = u & 0xffff;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) hi++;
    return (uint16_t)hi;
}

START_TEST(test_convert_16bit_all_patterns) {
    static uint16_t src[65536 + 3];
    static float dst[65536 + 3];
    for (uint32_t i = 0; i < 65536; i++) src[i] = (uint16_t)i;
    const float sentinel = 12345.0f;
    dst[65536] = sentinel;
    sq_bf16_to_f32(src, dst, 65536);
    ck_assert_float_eq(dst[65536], sentinel);
    for (uint32_t i = 0; i < 65536; i++) {
        ck_assert_uint_eq(bits_of(dst[i]), i << 16);
        ck_assert_uint_eq(bits_of(sq_bf16_to_f32_1((uint16_t)i)), i << 16);
    }
    sq_f16_to_f32(src, dst, 65536);
    ck_assert_float_eq(dst[65536], sentinel);
    for (uint32_t i = 0; i < 65536; i++)
        ck_assert_msg(bits_of(dst[i]) == ref_f16_to_f32((uint16_t)i), "f16 %04x -> %08x, want %08x",
                      i, bits_of(dst[i]), ref_f16_to_f32((uint16_t)i));
#ifdef __FLT16_MAX__
    /* a third opinion: the compiler's own _Float16 */
    for (uint32_t i = 0; i < 65536; i++) {
        _Float16 h;
        uint16_t b = (uint16_t)i;
        memcpy(&h, &b, 2);
        float want = (float)h;
        if (isnan(want)) ck_assert(isnan(dst[i]));
        else ck_assert_uint_eq(bits_of(dst[i]), bits_of(want));
    }
#endif
    /* every non-NaN half survives f16 -> f32 -> f16; every bf16 survives too */
    uint16_t back[65536];
    sq_f32_to_f16(dst, back, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
        bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff);
        if (nan) ck_assert_uint_eq(back[i], i | 0x200);
        else ck_assert_uint_eq(back[i], i);
    }
    sq_bf16_to_f32(src, dst, 65536);
    sq_f32_to_bf16(dst, back, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
        bool nan = (i & 0x7f80) == 0x7f80 && (i & 0x7f);
        ck_assert_uint_eq(back[i], nan ? (i | 0x40) : i);
    }
    /* short and odd lengths: nothing written past n */
    for (size_t n = 0; n < 20; n++) {
        for (size_t i = 0; i < 24; i++) dst[i] = sentinel;
        sq_f16_to_f32(src + 0x3c00, dst, n);
        for (size_t i = 0; i < 24; i++)
            ck_assert_uint_eq(bits_of(dst[i]), i < n ? ref_f16_to_f32((uint16_t)(0x3c00 + i))
                                                     : bits_of(sentinel));
    }
}
END_TEST

/* Converts src (n) both ways and compares with the references. */
static void check_f32_batch(const uint32_t *u, size_t n, uint16_t *o16, uint16_t *ob) {
    sq_f32_to_f16((const float *)u, o16, n);
    sq_f32_to_bf16((const float *)u, ob, n);
    for (size_t i = 0; i < n; i++) {
        if (o16[i] != ref_f32_to_f16(u[i]))
            ck_abort_msg("f32 %08x -> f16 %04x, want %04x", u[i], o16[i], ref_f32_to_f16(u[i]));
        if (ob[i] != ref_f32_to_bf16(u[i]))
            ck_abort_msg("f32 %08x -> bf16 %04x, want %04x", u[i], ob[i], ref_f32_to_bf16(u[i]));
        if (ob[i] != sq_f32_to_bf16_1(float_of(u[i])))
            ck_abort_msg("f32 %08x: inline bf16 %04x, loop %04x", u[i],
                         sq_f32_to_bf16_1(float_of(u[i])), ob[i]);
    }
}

START_TEST(test_convert_f32_patterns) {
    enum { CHUNK = 1 << 20 };
    uint32_t *u = malloc(CHUNK * sizeof *u);
    uint16_t *a = malloc(CHUNK * 2), *b = malloc(CHUNK * 2);
    size_t n = 0;
    /* structured: every sign and exponent with mantissas around every rounding boundary */
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t e = 0; e < 256; e++)
            for (int k = 0; k < 23; k++) {
                uint32_t bit = 1u << k, ms[] = {0, bit, bit - 1, bit + 1, bit | (bit << 1),
                                                (bit | (bit << 1)) - 1, 0x7fffffu ^ bit, 0x7fffff,
                                                (bit << 1) | (bit >> 1)};
                for (size_t j = 0; j < sizeof ms / sizeof ms[0]; j++)
                    u[n++] = (s << 31) | (e << 23) | (ms[j] & 0x7fffff);
            }
    check_f32_batch(u, n, a, b);
    /* a sweep over all 2^32 patterns with a prime stride, then pseudo-random ones */
    n = 0;
    for (uint64_t x = 0; x < (1ull << 32); x += 97) {
        u[n++] = (uint32_t)x;
        if (n == CHUNK) {
            check_f32_batch(u, n, a, b);
            n = 0;
        }
    }
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 2 * CHUNK; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        u[n++] = (uint32_t)(r >> 16);
        if (n == CHUNK) {
            check_f32_batch(u, n, a, b);
            n = 0;
        }
    }
    check_f32_batch(u, n, a, b);
    free(u);
    free(a);
    free(b);

    /* hand-checked values */
    float f[] = {1.0f, 65504.0f, 65519.99f, 65520.0f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f,
                 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-24f, -0.0f, INFINITY, NAN,
                 0x1p-14f, 0x1.ff8p-15f};
    uint16_t want16[] = {0x3c00, 0x7bff, 0x7bff, 0x7c00, 0x3c00, 0x3c02, 0x0001, 0x0000, 0x0001,
                         0x0002, 0x8000, 0x7c00, 0x7e00, 0x0400, 0x03ff};
    uint16_t h[15];
    sq_f32_to_f16(f, h, 15);
    for (int i = 0; i < 15; i++) ck_assert_msg(h[i] == want16[i], "%d: %04x", i, h[i]);
    float g[] = {float_of(0x3f808000), float_of(0x3f818000), float_of(0x3f808001),
                 float_of(0x7f800001), float_of(0xff800000), float_of(0x7f7fffff)};
    uint16_t wantb[] = {0x3f80, 0x3f82, 0x3f81, 0x7fc0, 0xff80, 0x7f80};
    sq_f32_to_bf16(g, h, 6);
    for (int i = 0; i < 6; i++) ck_assert_msg(h[i] == wantb[i], "%d: %04x", i, h[i]);
}
END_TEST

START_TEST(test_convert_to_f32_dispatch) {
    sq_error err;
    sq_error_init(&err, -1);
    /* unaligned sources (a file written without padding) go through a bounce buffer */
    static uint8_t raw[2 * 3000 + 8 * 3000 + 16];
    static float out[3000];
    uint16_t hv[3000];
    for (int i = 0; i < 3000; i++) hv[i] = (uint16_t)(0x3c00 + i);
    memcpy(raw + 1, hv, sizeof hv);
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_F16, raw + 1, out, 3000, &err), SQ_OK);
    for (int i = 0; i < 3000; i++) ck_assert_uint_eq(bits_of(out[i]), ref_f16_to_f32(hv[i]));
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_BF16, raw + 1, out, 3000, &err), SQ_OK);
    for (int i = 0; i < 3000; i++) ck_assert_uint_eq(bits_of(out[i]), (uint32_t)hv[i] << 16);
    double dv[3000];
    for (int i = 0; i < 3000; i++) dv[i] = 1.0 + i * 0x1p-30;
    memcpy(raw + 3, dv, sizeof dv);
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_F64, raw + 3, out, 3000, &err), SQ_OK);
    for (int i = 0; i < 3000; i++) ck_assert_float_eq(out[i], (float)dv[i]);
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_F64, dv, out, 3000, &err), SQ_OK);
    ck_assert_float_eq(out[2999], (float)dv[2999]);
    float fv[5] = {1, 2, 3, 4, 5};
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_F32, fv, out, 5, &err), SQ_OK);
    ck_assert_mem_eq(out, fv, sizeof fv);
    ck_assert_int_eq(sq_convert_to_f32(SQ_DTYPE_I32, fv, out, 5, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "cannot convert I32 to float32"), "%s", err.msg);
}
END_TEST

/* ---- throughput (--bench) -------------------------------------------------------------------- */

int st_convert_bench(void) {
    size_t n = (size_t)64 << 20; /* 64 Mi elements */
    uint16_t *h = malloc(n * 2);
    float *f = malloc(n * 4);
    if (!h || !f) return 1;
    uint64_t r = 1;
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        f[i] = (float)((double)(int32_t)(uint32_t)r * 0x1p-36);
        h[i] = sq_f32_to_bf16_1(f[i]);
    }
    struct {
        const char *name;
        int kind;
    } ops[] = {{"bf16->f32", 0}, {"f16->f32", 1}, {"f32->bf16", 2}, {"f32->f16", 3}};
    printf("# conversion throughput, %zu elements, best of 5 (GB/s counts bytes read + written)\n", n);
    printf("# %-10s %10s %12s\n", "op", "GB/s", "Gelem/s");
    for (size_t k = 0; k < 4; k++) {
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = sq_now_s();
            switch (ops[k].kind) {
            case 0: sq_bf16_to_f32(h, f, n); break;
            case 1: sq_f16_to_f32(h, f, n); break;
            case 2: sq_f32_to_bf16(f, h, n); break;
            default: sq_f32_to_f16(f, h, n); break;
            }
            double t = sq_now_s() - t0;
            if (t < best) best = t;
        }
        printf("  %-10s %10.2f %12.3f\n", ops[k].name, (double)n * 6 / best / 1e9,
               (double)n / best / 1e9);
    }
    free(h);
    free(f);
    return 0;
}


TCase *st_convert_tcase(void) {
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_convert_16bit_all_patterns);
    tcase_add_test(tc, test_convert_f32_patterns);
    tcase_add_test(tc, test_convert_to_f32_dispatch);
    return tc;
}
