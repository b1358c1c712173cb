/* test_quant: the quant module against bitsandbytes 0.50.2 (CPU) reference vectors
 * (tests/reference/quant/bnb_vectors.bin, made by tests/reference/gen_quant_vectors.py), every
 * CPU code path against the others, the torch mean emulation, the 8-bit LUT, and bad input. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/quant.h"
#include "testutil.h"
#include "../kernels/quant_math.cuh"

#define VEC_PATH SQ_SOURCE_DIR "/tests/reference/quant/bnb_vectors.bin"

/* ---- the vector file ----------------------------------------------------------------------- */
typedef struct {
    char name[256];
    int quant, dq, dtype;
    uint32_t blocksize, rows, cols;
    uint64_t n;
    const uint8_t *input, *packed, *absmax, *absmax_q, *nested, *offset, *absmax_deq, *deq;
    uint32_t n_blocks, n_nested;
} vcase;

static size_t dt_size(int dt) { return dt == 0 ? 4 : 2; }
static sq_dtype dt_enum(int dt) {
    return dt == 0 ? SQ_DTYPE_F32 : (dt == 1 ? SQ_DTYPE_F16 : SQ_DTYPE_BF16);
}

static int read_case(sq_test_rd *r, vcase *c) {
    memset(c, 0, sizeof *c);
    uint8_t nl = sq_test_u8(r);
    const uint8_t *nm = sq_test_take(r, nl);
    if (!nm) return 0;
    memcpy(c->name, nm, nl);
    c->quant = sq_test_u8(r);
    c->dq = sq_test_u8(r);
    c->dtype = sq_test_u8(r);
    (void)sq_test_u8(r);
    c->blocksize = sq_test_u32(r);
    c->rows = sq_test_u32(r);
    c->cols = sq_test_u32(r);
    c->n = (uint64_t)c->rows * c->cols;
    c->input = sq_test_take(r, c->n * dt_size(c->dtype));
    c->packed = sq_test_take(r, (c->n + 1) / 2);
    c->n_blocks = sq_test_u32(r);
    if (!c->dq) {
        c->absmax = sq_test_take(r, (size_t)c->n_blocks * 4);
    } else {
        c->absmax_q = sq_test_take(r, c->n_blocks);
        c->n_nested = sq_test_u32(r);
        c->nested = sq_test_take(r, (size_t)c->n_nested * 4);
        c->offset = sq_test_take(r, 4);
        c->absmax_deq = sq_test_take(r, (size_t)c->n_blocks * 4);
    }
    c->deq = sq_test_take(r, c->n * dt_size(c->dtype));
    return !r->bad;
}

typedef struct {
    uint8_t *buf;
    size_t n;
    sq_test_rd r;
    uint32_t n_cases, n_means;
    const uint8_t *nf4_map, *fp4_map, *dyn_map, *means;
} vfile;

static void open_vectors(vfile *v) {
    memset(v, 0, sizeof *v);
    v->buf = sq_test_read_file(VEC_PATH, &v->n);
    ck_assert_msg(v->buf != NULL, "cannot read %s", VEC_PATH);
    v->r.p = v->buf;
    v->r.end = v->buf + v->n;
    const uint8_t *magic = sq_test_take(&v->r, 4);
    ck_assert(magic && memcmp(magic, "SQQV", 4) == 0);
    ck_assert_uint_eq(sq_test_u32(&v->r), 1);
    v->n_cases = sq_test_u32(&v->r);
    v->n_means = sq_test_u32(&v->r);
    v->nf4_map = sq_test_take(&v->r, 64);
    v->fp4_map = sq_test_take(&v->r, 64);
    v->dyn_map = sq_test_take(&v->r, 1024);
    v->means = sq_test_take(&v->r, (size_t)v->n_means * 20);
    ck_assert(!v->r.bad);
}

static uint32_t bits_at(const uint8_t *p, uint64_t i) {
    uint32_t u;
    memcpy(&u, p + 4 * i, 4);
    return u;
}

/* Quantizes one case with one code path and compares every output with bnb's. */
static void check_case(const vcase *c, sq_quant_isa isa, sq_pool *pool) {
    sq_quant_scheme s = {.type = c->quant == 1 ? SQ_QUANT_NF4 : SQ_QUANT_FP4,
                         .double_quant = c->dq != 0, .blocksize = c->blocksize,
                         .dense_dtype = SQ_DTYPE_BF16};
    sq_qtensor q;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status st = sq_quant_4bit_isa(dt_enum(c->dtype), c->input, c->rows, c->cols, &s, pool,
                                     isa, &q, &err);
    ck_assert_msg(st == SQ_OK, "%s: %s", c->name, err.msg);
    ck_assert_uint_eq(q.n_blocks, c->n_blocks);
    for (uint64_t j = 0; j < (c->n + 1) / 2; j++)
        ck_assert_msg(q.packed[j] == c->packed[j], "%s [%s]: packed byte %llu: %02x, bnb %02x",
                      c->name, sq_quant_isa_name(isa), (unsigned long long)j, q.packed[j],
                      c->packed[j]);
    if (!c->dq) {
        ck_assert(q.absmax != NULL && q.absmax_q == NULL);
        for (uint32_t b = 0; b < c->n_blocks; b++)
            ck_assert_msg(sq_qm_bits(q.absmax[b]) == bits_at(c->absmax, b),
                          "%s: absmax %u: %08x, bnb %08x", c->name, b, sq_qm_bits(q.absmax[b]),
                          bits_at(c->absmax, b));
    } else {
        ck_assert(q.absmax == NULL && q.absmax_q != NULL);
        ck_assert_msg(sq_qm_bits(q.nested_offset) == bits_at(c->offset, 0),
                      "%s: offset %08x, bnb %08x", c->name, sq_qm_bits(q.nested_offset),
                      bits_at(c->offset, 0));
        ck_assert_uint_eq((c->n_blocks + 255) / 256, c->n_nested);
        for (uint32_t g = 0; g < c->n_nested; g++)
            ck_assert_msg(sq_qm_bits(q.nested_absmax[g]) == bits_at(c->nested, g),
                          "%s: nested absmax %u: %08x, bnb %08x", c->name, g,
                          sq_qm_bits(q.nested_absmax[g]), bits_at(c->nested, g));
        for (uint32_t b = 0; b < c->n_blocks; b++) {
            ck_assert_msg(q.absmax_q[b] == c->absmax_q[b], "%s: absmax code %u: %u, bnb %u",
                          c->name, b, q.absmax_q[b], c->absmax_q[b]);
            ck_assert_msg(sq_qm_bits(sq_qtensor_absmax(&q, b)) == bits_at(c->absmax_deq, b),
                          "%s: dequantized absmax %u: %08x, bnb %08x", c->name, b,
                          sq_qm_bits(sq_qtensor_absmax(&q, b)), bits_at(c->absmax_deq, b));
        }
    }
    /* dequantization in the input dtype, as bnb.functional.dequantize_4bit returns it */
    size_t es = dt_size(c->dtype);
    uint8_t *out = malloc(c->n * es);
    ck_assert(out != NULL);
    ck_assert_int_eq(sq_dequant_4bit(&q, out, dt_enum(c->dtype), &err), SQ_OK);
    for (uint64_t i = 0; i < c->n; i++) {
        uint32_t a = 0, b = 0;
        memcpy(&a, out + i * es, es);
        memcpy(&b, c->deq + i * es, es);
        ck_assert_msg(a == b, "%s: dequant %llu: %08x, bnb %08x", c->name,
                      (unsigned long long)i, a, b);
    }
    free(out);
    sq_qtensor_free(&q);
    ck_assert(q.packed == NULL && q.n_elements == 0);
}

START_TEST(test_vectors_scalar) {
    vfile v;
    open_vectors(&v);
    int n_dq = 0, n_fp4 = 0, n_tail = 0;
    for (uint32_t k = 0; k < v.n_cases; k++) {
        vcase c;
        ck_assert_msg(read_case(&v.r, &c), "vector file truncated at case %u", k);
        check_case(&c, SQ_QUANT_ISA_SCALAR, NULL);
        n_dq += c.dq;
        n_fp4 += c.quant == 2;
        n_tail += c.n % c.blocksize != 0;
    }
    ck_assert_ptr_eq(v.r.p, v.r.end);
    ck_assert_uint_ge(v.n_cases, 100);
    ck_assert_int_ge(n_dq, 30);
    ck_assert_int_ge(n_fp4, 30);
    ck_assert_int_ge(n_tail, 30);
    fprintf(stderr, "test_quant: %u bnb vectors equal (scalar path): %d with double quant, "
            "%d fp4, %d with a partial last block\n", v.n_cases, n_dq, n_fp4, n_tail);
    free(v.buf);
}
END_TEST

/* run by the CTest entry test_quant_avx2 (`test_quant --avx2`), which exits 77 without AVX2 */
START_TEST(test_vectors_avx2_pool) {
    ck_assert(sq_quant_isa_available(SQ_QUANT_ISA_AVX2));
    vfile v;
    open_vectors(&v);
    sq_pool *pool = NULL;
    sq_error err;
    ck_assert_int_eq(sq_pool_create(3, &pool, &err), SQ_OK);
    for (uint32_t k = 0; k < v.n_cases; k++) {
        vcase c;
        ck_assert(read_case(&v.r, &c));
        check_case(&c, SQ_QUANT_ISA_AVX2, NULL);
        check_case(&c, SQ_QUANT_ISA_AUTO, pool);
    }
    sq_pool_destroy(pool);
    free(v.buf);
}
END_TEST

START_TEST(test_tables) {
    vfile v;
    open_vectors(&v);
    const float *nf4 = sq_quant_code_table(SQ_QUANT_NF4), *fp4 = sq_quant_code_table(SQ_QUANT_FP4);
    const float *dyn = sq_quant_dynamic_map();
    for (int i = 0; i < 16; i++) {
        ck_assert_uint_eq(sq_qm_bits(nf4[i]), bits_at(v.nf4_map, i));
        ck_assert_uint_eq(sq_qm_bits(fp4[i]), bits_at(v.fp4_map, i));
        ck_assert_uint_eq(sq_qm_bits(sq_qm_code_value(0, i)), bits_at(v.nf4_map, i));
        ck_assert_uint_eq(sq_qm_bits(sq_qm_code_value(1, i)), bits_at(v.fp4_map, i));
    }
    for (int i = 0; i < 256; i++) {
        ck_assert_uint_eq(sq_qm_bits(dyn[i]), bits_at(v.dyn_map, i));
        ck_assert_uint_eq(sq_qm_bits(sq_qm_dyn_value(i)), bits_at(v.dyn_map, i));
    }
    ck_assert_ptr_null(sq_quant_code_table(SQ_QUANT_NONE));
    /* bounds are the float32 midpoints of the sorted tables, as torch computes them */
    static const uint32_t nb[15] = SQ_QM_NF4_BOUND_BITS;
    for (int k = 0; k < 15; k++) ck_assert_float_eq(sq_qm_f32(nb[k]), (nf4[k] + nf4[k + 1]) / 2.0f);
    ck_assert_uint_eq(sq_qm_nf4_encode(sq_qm_f32(nb[8])), 8);            /* tie goes low */
    ck_assert_uint_eq(sq_qm_nf4_encode(nextafterf(sq_qm_f32(nb[8]), 2.0f)), 9);
    ck_assert_uint_eq(sq_qm_nf4_encode(NAN), 15);
    ck_assert_uint_eq(sq_qm_nf4_encode(-0.0f), 7);
    ck_assert_uint_eq(sq_qm_fp4_encode(0.0f), 0);
    ck_assert_uint_eq(sq_qm_fp4_encode(1e-4f), 8);                         /* torch argsort ties */
    ck_assert_uint_eq(sq_qm_fp4_encode(-1e-4f), 0);
    ck_assert_uint_eq(sq_qm_fp4_encode(-1.0f), 11);
    free(v.buf);
}
END_TEST

static void lcg_floats(uint32_t n, uint64_t seed, float *out) {
    uint64_t u = seed;
    for (uint32_t i = 0; i < n; i++) {
        u = u * 6364136223846793005ull + 1442695040888963407ull;
        out[i] = (float)(u >> 40) * 0x1p-22f;
    }
}

START_TEST(test_torch_mean) {
    vfile v;
    open_vectors(&v);
    for (uint32_t k = 0; k < v.n_means; k++) {
        const uint8_t *m = v.means + 20 * k;
        uint32_t n, seed;
        memcpy(&n, m, 4);
        memcpy(&seed, m + 4, 4);
        float *x = malloc((size_t)n * sizeof *x);
        lcg_floats(n, seed, x);
        for (int t = 1; t <= 3; t++)
            ck_assert_msg(sq_qm_bits(sq_quant_torch_mean(x, n, t)) == bits_at(m + 8, t - 1),
                          "mean of %u lcg floats, %d torch threads: %08x, torch %08x", n, t,
                          sq_qm_bits(sq_quant_torch_mean(x, n, t)), bits_at(m + 8, t - 1));
        free(x);
    }
    ck_assert_uint_ge(v.n_means, 9);
    free(v.buf);
}
END_TEST

/* The 65536-bin LUT (as libbitsandbytes_cpu builds it, by merging) equals the per-element
 * binary search the device-capable header uses, for every bin. */
START_TEST(test_dyn_lut) {
    float mid[255];
    for (int k = 0; k < 255; k++) mid[k] = 0.5f * (sq_qm_dyn_value(k) + sq_qm_dyn_value(k + 1));
    int c = 0;
    for (unsigned i = 0; i < 65536; i++) {
        float val = -1.0f + (2.0f * (float)i) / 65535.0f;
        while (c < 255 && mid[c] < val) c++;
        ck_assert_msg(sq_qm_dyn_lut(i) == (unsigned)c, "bin %u: %u vs %d", i, sq_qm_dyn_lut(i), c);
    }
    ck_assert_uint_eq(sq_qm_dyn_lut_index(-1.0f), 0);
    ck_assert_uint_eq(sq_qm_dyn_lut_index(1.0f), 65535);
    ck_assert_uint_eq(sq_qm_dyn_lut_index(NAN), 0);
    /* the whole nested step equals per-element encoding */
    enum { N = 3000 };
    float x[N], am[(N + 255) / 256];
    uint8_t codes[N];
    lcg_floats(N, 77, x);
    for (int i = 0; i < N; i++) x[i] = (x[i] - 2.0f) * (i % 7 == 0 ? 1e-3f : 1.0f);
    x[5] = NAN;
    sq_quant_8bit_dynamic(x, N, 256, codes, am);
    for (int i = 0; i < N; i++) {
        float r = 1.0f / am[i / 256];
        ck_assert_uint_eq(codes[i], sq_qm_dyn_encode(x[i], r));
    }
}
END_TEST

/* Scalar, AVX2, threaded: identical bytes on random data with specials, every dtype/blocksize. */
START_TEST(test_paths_agree) {
    enum { N = 5 * 4096 + 77 };
    float *f = malloc(N * sizeof *f);
    uint16_t *h = malloc(N * sizeof *h), *bf = malloc(N * sizeof *bf);
    lcg_floats(N, 5, f);
    for (int i = 0; i < N; i++) {
        f[i] = (f[i] - 2.0f) * ((i / 64) % 5 == 0 ? 1e-3f : 1.0f);
        if ((i / 128) % 9 == 4) f[i] = 0.0f;
    }
    f[1000] = NAN;
    f[3000] = INFINITY;
    f[3001] = -INFINITY;
    for (int i = 0; i < N; i++) {
        h[i] = sq_qm_f32_to_f16(f[i]);
        bf[i] = sq_qm_f32_to_bf16(f[i]);
    }
    const void *src[3] = {f, h, bf};
    const sq_dtype dts[3] = {SQ_DTYPE_F32, SQ_DTYPE_F16, SQ_DTYPE_BF16};
    sq_pool *pool = NULL;
    sq_error err;
    ck_assert_int_eq(sq_pool_create(2, &pool, &err), SQ_OK);
    const int64_t bss[] = {32, 64, 128, 256, 1024, 4096};
    int checked = 0;
    for (int d = 0; d < 3; d++)
        for (int t = 0; t < 2; t++)
            for (int bi = 0; bi < 6; bi++)
                for (int dq = 0; dq < 2; dq++) {
                    sq_quant_scheme s = {.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4,
                                         .double_quant = dq, .blocksize = bss[bi]};
                    sq_qtensor a, b;
                    ck_assert_int_eq(sq_quant_4bit_isa(dts[d], src[d], 1, N, &s, NULL,
                                                       SQ_QUANT_ISA_SCALAR, &a, &err), SQ_OK);
                    sq_quant_isa other = sq_quant_isa_available(SQ_QUANT_ISA_AVX2)
                                             ? SQ_QUANT_ISA_AVX2 : SQ_QUANT_ISA_SCALAR;
                    ck_assert_int_eq(sq_quant_4bit_isa(dts[d], src[d], 1, N, &s, pool, other,
                                                       &b, &err), SQ_OK);
                    ck_assert_mem_eq(a.packed, b.packed, (N + 1) / 2);
                    if (dq) {
                        ck_assert_mem_eq(a.absmax_q, b.absmax_q, a.n_blocks);
                        ck_assert_uint_eq(sq_qm_bits(a.nested_offset), sq_qm_bits(b.nested_offset));
                    } else {
                        ck_assert_mem_eq(a.absmax, b.absmax, a.n_blocks * sizeof(float));
                    }
                    sq_qtensor_free(&a);
                    sq_qtensor_free(&b);
                    checked++;
                }
    ck_assert_int_eq(checked, 72);
    sq_pool_destroy(pool);
    free(f);
    free(h);
    free(bf);
}
END_TEST

/* sq_quant_4bit_part: a tensor quantized in parts of whole blocks straight into its arrays gives
 * the whole-tensor bytes (BNB); in layout G64 the same absmax and the BNB bytes regrouped
 * (sq_q4_convert_groups, both ways), on every code path, partial last blocks and NaN / Inf /
 * zero blocks included, and the same dequantized values; sq_quant_4bit_part_checked names each
 * part's first block whose absmax is NaN or Inf (the Inf's block always). */
START_TEST(test_parts_and_g64) {
    enum { ROWS = 6, COLS = 17 * 64, N = ROWS * COLS };
    float *f = malloc(N * sizeof *f);
    uint16_t *h = malloc(N * sizeof *h), *bf = malloc(N * sizeof *bf);
    lcg_floats(N, 9, f);
    for (int i = 0; i < N; i++) {
        f[i] = (f[i] - 2.0f) * ((i / 64) % 7 == 0 ? 1e-3f : 1.0f);
        if ((i / 64) % 11 == 5) f[i] = 0.0f;
    }
    f[700] = NAN;
    f[2000] = INFINITY;
    for (int i = 0; i < N; i++) {
        h[i] = sq_qm_f32_to_f16(f[i]);
        bf[i] = sq_qm_f32_to_bf16(f[i]);
    }
    const void *src[3] = {f, h, bf};
    const sq_dtype dts[3] = {SQ_DTYPE_F32, SQ_DTYPE_F16, SQ_DTYPE_BF16};
    const size_t es[3] = {4, 2, 2};
    sq_pool *pool = NULL;
    sq_error err;
    ck_assert_int_eq(sq_pool_create(2, &pool, &err), SQ_OK);
    const int64_t bss[] = {64, 128, 256, 4096};   /* 256, 4096: a partial last block */
    const sq_quant_isa isas[2] = {SQ_QUANT_ISA_SCALAR, SQ_QUANT_ISA_AVX2};
    uint8_t *conv = malloc(N / 2);
    float *d0 = malloc(N * sizeof *d0), *d1 = malloc(N * sizeof *d1);
    int checked = 0;
    for (int d = 0; d < 3; d++)
        for (int t = 0; t < 2; t++)
            for (int bi = 0; bi < 4; bi++)
                for (int ii = 0; ii < 2; ii++)
                    for (int lay = 0; lay < 2; lay++) {
                        if (!sq_quant_isa_available(isas[ii])) continue;
                        sq_quant_scheme s = {.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4,
                                             .blocksize = bss[bi]};
                        sq_qtensor whole, q;
                        ck_assert_int_eq(sq_quant_4bit_isa(dts[d], src[d], ROWS, COLS, &s, NULL,
                                                           SQ_QUANT_ISA_SCALAR, &whole, &err), SQ_OK);
                        ck_assert_int_eq(sq_qtensor_init(&q, &s, ROWS, COLS, dts[d], &err), SQ_OK);
                        ck_assert(sq_q4_layout_fits(SQ_Q4_LAYOUT_G64, COLS, s.blocksize));
                        q.layout = lay ? SQ_Q4_LAYOUT_G64 : SQ_Q4_LAYOUT_BNB;
                        const uint64_t piece = 3 * (uint64_t)s.blocksize, B = (uint64_t)s.blocksize;
                        bool inf_seen = false;
                        for (uint64_t first = 0; first < N; first += piece) {
                            uint64_t m = N - first < piece ? N - first : piece, bad = 0;
                            ck_assert_int_eq(sq_quant_4bit_part_checked(&q, first, dts[d],
                                                                        (const char *)src[d] + first * es[d],
                                                                        m, ii ? pool : NULL, isas[ii],
                                                                        &bad, &err),
                                             SQ_OK);
                            /* the part's first block whose absmax is not finite, or none */
                            uint64_t want = UINT64_MAX;
                            for (uint64_t b = first / B; want == UINT64_MAX && b < (first + m + B - 1) / B; b++)
                                if (!isfinite(whole.absmax[b])) want = b;
                            ck_assert_uint_eq(bad, want);
                            if (bad == 2000 / B) inf_seen = true;
                        }
                        ck_assert(inf_seen);   /* the Inf's block is always reported */
                        ck_assert_mem_eq(q.absmax, whole.absmax, whole.n_blocks * sizeof(float));
                        if (lay) {
                            sq_q4_convert_groups(whole.packed, conv, N / 64, true);
                            ck_assert_mem_eq(q.packed, conv, N / 2);
                            sq_dequant_4bit_f32(&whole, 0, N, d0);
                            sq_dequant_4bit_f32(&q, 0, N, d1);
                            ck_assert_mem_eq(d0, d1, N * sizeof(float));
                            sq_q4_convert_groups(q.packed, q.packed, N / 64, false);   /* in place */
                        }
                        ck_assert_mem_eq(q.packed, whole.packed, N / 2);
                        sq_qtensor_free(&whole);
                        sq_qtensor_free(&q);
                        checked++;
                    }
    ck_assert_int_ge(checked, 3 * 2 * 4 * 2);
    /* ranges that are not whole blocks, and G64 where the width does not allow it */
    sq_quant_scheme s = {.type = SQ_QUANT_NF4, .blocksize = 64};
    sq_qtensor q;
    ck_assert_int_eq(sq_qtensor_init(&q, &s, ROWS, COLS, SQ_DTYPE_BF16, &err), SQ_OK);
    ck_assert_int_eq(sq_quant_4bit_part(&q, 32, SQ_DTYPE_BF16, bf, 64, NULL, &err), SQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "not whole blocks"), "%s", err.msg);
    ck_assert_int_eq(sq_quant_4bit_part(&q, 0, SQ_DTYPE_BF16, bf, 100, NULL, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_4bit_part(&q, N - 64, SQ_DTYPE_BF16, bf, 128, NULL, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_4bit_part(&q, 0, SQ_DTYPE_U8, bf, 64, NULL, &err), SQ_ERR_UNSUPPORTED);
    sq_qtensor_free(&q);
    ck_assert_int_eq(sq_qtensor_init(&q, &s, 3, 96, SQ_DTYPE_BF16, &err), SQ_OK);
    ck_assert(!sq_q4_layout_fits(SQ_Q4_LAYOUT_G64, 96, 64));
    ck_assert(!sq_q4_layout_fits(SQ_Q4_LAYOUT_G64, 128, 32));
    q.layout = SQ_Q4_LAYOUT_G64;
    ck_assert_int_eq(sq_quant_4bit_part(&q, 0, SQ_DTYPE_BF16, bf, 288, NULL, &err), SQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "layout g64"), "%s", err.msg);
    sq_qtensor_free(&q);
    sq_pool_destroy(pool);
    free(conv);
    free(d0);
    free(d1);
    free(f);
    free(h);
    free(bf);
}
END_TEST

/* Dequantized values are within half the widest code gap of the input (times absmax). */
START_TEST(test_error_bound) {
    enum { N = 64 * 50 + 13 };
    float x[N], y[N];
    lcg_floats(N, 9, x);
    for (int i = 0; i < N; i++) x[i] = x[i] - 2.0f;
    for (int t = 0; t < 2; t++) {
        sq_quant_scheme s = {.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4, .blocksize = 64};
        sq_qtensor q;
        sq_error err;
        ck_assert_int_eq(sq_quant_4bit(x, 1, N, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_OK);
        sq_dequant_4bit_f32(&q, 0, N, y);
        /* widest gap: NF4 -1 .. -0.6961928 = 0.3038; FP4 0.6667 .. 1 = 0.3333 */
        float half_gap = t ? 0.16667f : 0.15191f;
        for (int i = 0; i < N; i++) {
            float am = q.absmax[i / 64];
            ck_assert_msg(fabsf(y[i] - x[i]) <= half_gap * am * 1.0001f, "elem %d: %g vs %g", i,
                          y[i], x[i]);
        }
        /* a sub-range dequantizes to the same values */
        float z[100];
        sq_dequant_4bit_f32(&q, 1001, 100, z);
        ck_assert_mem_eq(z, y + 1001, sizeof z);
        sq_qtensor_free(&q);
    }
}
END_TEST

START_TEST(test_bad_input) {
    float x[64] = {0};
    sq_qtensor q;
    sq_error err;
    sq_error_init(&err, -1);
    sq_quant_scheme s = {.type = SQ_QUANT_NF4, .blocksize = 48};
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "blocksize 48"));
    ck_assert_ptr_null(q.packed);
    s.blocksize = 8192;
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    s.blocksize = 16;
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    s.blocksize = 64;
    s.type = SQ_QUANT_NONE;
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "not nf4 or fp4"));
    s.type = SQ_QUANT_NF4;
    ck_assert_int_eq(sq_quant_4bit(x, 0, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "shape [0, 64]"));
    ck_assert_int_eq(sq_quant_4bit(x, INT64_MAX, 4, SQ_DTYPE_F32, &s, NULL, &q, &err),
                     SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_4bit_from(SQ_DTYPE_I32, x, 1, 64, &s, NULL, &q, &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "source dtype"));
    ck_assert_int_eq(sq_quant_4bit(NULL, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, NULL, NULL, &q, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_4bit(x, 1, 64, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_OK);
    uint8_t out[256];
    ck_assert_int_eq(sq_dequant_4bit(&q, out, SQ_DTYPE_I8, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(sq_qtensor_compress(&q, &err), SQ_OK);  /* no dq: a no-op */
    sq_qtensor_free(&q);
    sq_qtensor_free(&q);  /* zeroed: safe twice */
    sq_qtensor_free(NULL);
    ck_assert_str_eq(sq_quant_isa_name(SQ_QUANT_ISA_SCALAR), "scalar");
}
END_TEST

/* The half-float helpers round-trip every finite half and round like IEEE RNE. */
START_TEST(test_f16_convert) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sq_qm_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        ck_assert_uint_eq(sq_qm_f32_to_f16(f), h);
    }
    ck_assert_uint_eq(sq_qm_f32_to_f16(65520.0f), 0x7c00);      /* ties to even -> inf */
    ck_assert_uint_eq(sq_qm_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(sq_qm_f32_to_f16(0x1p-25f), 0x0000);      /* tie to even zero */
    ck_assert_uint_eq(sq_qm_f32_to_f16(0x1.8p-25f), 0x0001);
    ck_assert_uint_eq(sq_qm_f32_to_bf16(1.00390625f), 0x3f80);  /* tie to even */
    ck_assert_uint_eq(sq_qm_f32_to_bf16(1.01171875f), 0x3f82);
}
END_TEST

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--avx2") && !sq_quant_isa_available(SQ_QUANT_ISA_AVX2)) {
        fprintf(stderr, "test_quant --avx2: this host has no AVX2: SKIPPED (exit 77)\n");
        return 77;   /* the AVX2 entry is skipped visibly */
    }
    Suite *s = suite_create("quant");
    if (argc == 2 && !strcmp(argv[1], "--avx2")) {
        TCase *ta = tcase_create("avx2");
        tcase_set_timeout(ta, 60);
        tcase_add_test(ta, test_vectors_avx2_pool);
        suite_add_tcase(s, ta);
        SRunner *sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
    }
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_tables);
    tcase_add_test(tc, test_vectors_scalar);
    tcase_add_test(tc, test_torch_mean);
    tcase_add_test(tc, test_dyn_lut);
    tcase_add_test(tc, test_paths_agree);
    tcase_add_test(tc, test_parts_and_g64);
    tcase_add_test(tc, test_error_bound);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_f16_convert);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
