/* test_backend_ggml: GGUF (ggml) weights on the CPU backend.  Linear on every type against the
 * gguf package's dequantized values (tests/reference/gguf/ggml_vectors.bin): bit-exact with the
 * backend's fixed order applied to gguf's floats, and within a named bound of a float64 dot
 * product; bit-identical across row counts, thread counts and ISA paths; embedding rows exact;
 * bad shapes and types refused naming the tensor and the type. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_testutil.h"
#include "shardq/backend.h"
#include "shardq/ggml_quant.h"
#include "ggml_vectors.h"

#define SQ_TEST_RNG_SEED 0x9e3779b9
#include "test_rng.h"

static const int k_qtypes[] = {SQ_GGML_Q8_0, SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q5_0,
                               SQ_GGML_Q5_1, SQ_GGML_Q4_K, SQ_GGML_Q5_K, SQ_GGML_Q6_K,
                               SQ_GGML_F32, SQ_GGML_F16, SQ_GGML_BF16};
#define N_QTYPES ((int)(sizeof k_qtypes / sizeof k_qtypes[0]))

static sq_backend *mk_be(int n_threads, const char *isa) {
    if (isa) setenv("SHARDQ_CPU_ISA", isa, 1);
    else unsetenv("SHARDQ_CPU_ISA");
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(n_threads, &be, &err), SQ_OK);
    unsetenv("SHARDQ_CPU_ISA");
    sq_backend_limits lim = {.max_rows = 256, .max_width = 8192, .max_vocab = 0, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    return be;
}

static sq_weight *mk_w(sq_backend *be, int type, const void *raw, int64_t rows, int64_t cols) {
    sq_weight *w = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status st = sq_backend_weight_ggml(be, "blk.0.ffn_up.weight", (sq_ggml_type)type, raw, rows,
                                          cols, &w, &err);
    ck_assert_msg(st == SQ_OK, "weight_ggml %s: %s", sq_ggml_type_name(type), err.msg);
    return w;
}

/* The backend's documented order (backend.h, cpu_linear.c) applied to given weight floats. */
static float fixed_order_dot(const float *w, const float *x, int64_t K, float bias) {
    float acc[8] = {0};
    int64_t K8 = K & ~(int64_t)7;
    for (int64_t k = 0; k < K8; k += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(w[k + l], x[k + l], acc[l]);
    float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (int64_t k = K8; k < K; k++) s = fmaf(w[k], x[k], s);
    return s + bias;
}

/* Every vector case, both ISA paths: out equals the fixed order over gguf's floats bit for bit
 * (so every weight value multiplied is gguf's), and is within
 *   |out - dot64| <= K * 2^-23 * sum_k |w_k x_k|  (+ 1e-30 absolute)
 * of the float64 dot product (float32 FMA chain of K/8 steps plus an 8-way sum). */
static void check_all_vectors(const char *isa) {
    gv_file f;
    ck_assert_int_eq(gv_load(&f), 0);
    sq_backend *be = mk_be(1, isa);
    int n_cases = 0;
    for (int i = 0; i < f.n_cases; i++) {
        const gv_case *c = &f.cases[i];
        const int64_t K = c->cols, N = c->rows, n = 3;
        float *wref = malloc((size_t)(N * K * 4)), *x = malloc((size_t)(n * K * 4));
        memcpy(wref, c->deq, (size_t)(N * K * 4));
        int finite = 1;
        for (int64_t j = 0; j < N * K; j++) finite &= isfinite(wref[j]) != 0;
        for (int64_t j = 0; j < n * K; j++) x[j] = rng_f(-1.0f, 1.0f);
        sq_weight *w = mk_w(be, c->type, c->raw, N, K);
        ck_assert_int_eq(sq_weight_ggml_type(w), c->type);
        float *out = sq_test_linear(be, w, x, n, NULL);
        for (int64_t r = 0; r < n; r++)
            for (int64_t o = 0; o < N; o++) {
                float got = out[r * N + o];
                float want = fixed_order_dot(wref + o * K, x + r * K, K, 0.0f);
                ck_assert_msg(gv_same(got, want), "%s [%s]: row %lld out %lld: %a, fixed order %a",
                              c->name, isa ? isa : "auto", (long long)r, (long long)o, got, want);
                if (!finite) continue;
                double d = 0, mag = 0;
                for (int64_t k = 0; k < K; k++) {
                    d += (double)wref[o * K + k] * (double)x[r * K + k];
                    mag += fabs((double)wref[o * K + k] * (double)x[r * K + k]);
                }
                if (!isfinite(d) || !isfinite(got)) {
                    ck_assert_msg(!isfinite(got) || mag > 3e38, "%s: finite weights, got %a", c->name, got);
                    continue;
                }
                double bound = (double)K * ldexp(1.0, -23) * mag + 1e-30;
                ck_assert_msg(fabs((double)got - d) <= bound, "%s: |%.9g - %.9g| > %.3g", c->name,
                              (double)got, d, bound);
            }
        free(out);
        free(wref);
        free(x);
        sq_backend_weight_free(be, w);
        n_cases++;
    }
    ck_assert_int_eq(n_cases, f.n_cases);
    sq_backend_destroy(be);
    gv_free(&f);
}

START_TEST(test_linear_vectors_auto) { check_all_vectors(NULL); }
END_TEST
START_TEST(test_linear_vectors_portable) { check_all_vectors("portable"); }
END_TEST

/* Random blocks of type t, rows x cols, with fp16 scales in [2^-10, 2): raw bytes, except the
 * scale fields, are random. */
static uint8_t *rand_blocks(int t, int64_t rows, int64_t cols, uint64_t *row_bytes) {
    ck_assert_int_eq(sq_ggml_row_bytes(t, cols, row_bytes, NULL), SQ_OK);
    uint64_t nb = *row_bytes * (uint64_t)rows;
    uint8_t *p = malloc(nb);
    for (uint64_t i = 0; i < nb; i++) p[i] = (uint8_t)(rng_u64() >> 24);
    int64_t bb = sq_ggml_block_bytes(t), be = sq_ggml_block_elems(t);
    if (t == SQ_GGML_F32 || t == SQ_GGML_F16 || t == SQ_GGML_BF16) {
        for (int64_t i = 0; i < rows * cols; i++) {
            float v = rng_f(-1, 1);
            if (t == SQ_GGML_F32) memcpy(p + 4 * i, &v, 4);
            else {
                uint32_t u;
                memcpy(&u, &v, 4);
                uint16_t h = t == SQ_GGML_BF16 ? (uint16_t)(u >> 16)
                                               : (uint16_t)(((u >> 31) << 15) | (0x3800 + (rng_u64() & 0x3ff)));
                memcpy(p + 2 * i, &h, 2);
            }
        }
        return p;
    }
    int d_off = t == SQ_GGML_Q6_K ? 208 : 0;
    int m_off = (t == SQ_GGML_Q4_1 || t == SQ_GGML_Q5_1 || t == SQ_GGML_Q4_K || t == SQ_GGML_Q5_K) ? 2 : -1;
    for (int64_t b = 0; b < rows * cols / be; b++) {
        uint16_t d = (uint16_t)(0x1800 + (rng_u64() % 0x2400)), m = (uint16_t)(d ^ 0x8000);
        memcpy(p + b * bb + d_off, &d, 2);
        if (m_off >= 0) memcpy(p + b * bb + m_off, &m, 2);
    }
    return p;
}

/* Row-count, thread-count and ISA invariance on a shape big enough for the thread pool and
 * both the few-row and the many-row kernels (and a float32 bias). */
START_TEST(test_invariance) {
    const int64_t N = 72, K = 768, NR = 41;
    sq_backend *b1 = mk_be(1, NULL), *b3 = mk_be(3, NULL), *bp = mk_be(2, "portable");
    float *x = malloc((size_t)(NR * K * 4)), *bias = malloc((size_t)N * 4);
    for (int64_t j = 0; j < NR * K; j++) x[j] = rng_f(-2, 2);
    for (int64_t j = 0; j < N; j++) bias[j] = rng_f(-1, 1);
    for (int t = 0; t < N_QTYPES; t++) {
        int type = k_qtypes[t];
        uint64_t rb = 0;
        uint8_t *raw = rand_blocks(type, N, K, &rb);
        sq_weight *w1 = mk_w(b1, type, raw, N, K), *w3 = mk_w(b3, type, raw, N, K);
        sq_weight *wp = mk_w(bp, type, raw, N, K);
        sq_weight *bs1 = NULL, *bs3 = NULL, *bsp = NULL;
        ck_assert_int_eq(sq_backend_weight_dense(b1, "bias", SQ_DTYPE_F32, bias, 1, N, &bs1, NULL), SQ_OK);
        ck_assert_int_eq(sq_backend_weight_dense(b3, "bias", SQ_DTYPE_F32, bias, 1, N, &bs3, NULL), SQ_OK);
        ck_assert_int_eq(sq_backend_weight_dense(bp, "bias", SQ_DTYPE_F32, bias, 1, N, &bsp, NULL), SQ_OK);
        float *all1 = sq_test_linear(b1, w1, x, NR, bs1), *all3 = sq_test_linear(b3, w3, x, NR, bs3);
        float *allp = sq_test_linear(bp, wp, x, NR, bsp);
        ck_assert_msg(memcmp(all1, all3, (size_t)(NR * N * 4)) == 0, "%s: 1 vs 3 threads",
                      sq_ggml_type_name(type));
        ck_assert_msg(memcmp(all1, allp, (size_t)(NR * N * 4)) == 0, "%s: avx2 vs portable",
                      sq_ggml_type_name(type));
        /* row r alone, and in calls of 2 and 5 rows */
        static const int64_t counts[] = {1, 2, 5};
        for (int ci = 0; ci < 3; ci++)
            for (int64_t r = 0; r + counts[ci] <= NR; r += 13) {
                float *part = sq_test_linear(b3, w3, x + r * K, counts[ci], bs3);
                ck_assert_msg(memcmp(part, all1 + r * N, (size_t)(counts[ci] * N * 4)) == 0,
                              "%s: rows %lld.. in a call of %lld", sq_ggml_type_name(type),
                              (long long)r, (long long)counts[ci]);
                free(part);
            }
        /* and every value equals dequantize-then-fixed-order */
        float *wrow = malloc((size_t)K * 4);
        for (int64_t o = 0; o < N; o++) {
            sq_ggml_dequantize_row((sq_ggml_type)type, raw + o * rb, wrow, K);
            for (int64_t r = 0; r < NR; r += 10)
                ck_assert(gv_same(all1[r * N + o], fixed_order_dot(wrow, x + r * K, K, bias[o])));
        }
        free(wrow);
        if (sq_weight_ggml_type(w1) != SQ_GGML_F32 && type != SQ_GGML_F16 && type != SQ_GGML_BF16) {
            sq_qblock_format q;
            ck_assert(sq_ggml_qblock_format(type, &q));
            uint64_t want = (uint64_t)N * (uint64_t)(sq_qblock_code_bytes(&q, K) +
                                                     K / q.block_elems * (q.scale_bits / 8) *
                                                         (q.has_bias ? 2 : 1));
            ck_assert_uint_eq((uint64_t)N * (uint64_t)sq_qblock_row_bytes(&q, K), want);
            /* Q4_0, Q4_1 and Q8_0 are held in exactly their GGUF bytes */
            if (type == SQ_GGML_Q4_0 || type == SQ_GGML_Q4_1 || type == SQ_GGML_Q8_0)
                ck_assert_uint_eq(sq_weight_bytes(w1), rb * (uint64_t)N);
            ck_assert_uint_eq(sq_weight_bytes(w1), want);
            ck_assert_int_eq(sq_weight_qtype(w1), SQ_QUANT_NONE);
        }
        free(all1); free(all3); free(allp); free(raw);
        sq_backend_weight_free(b1, w1); sq_backend_weight_free(b3, w3); sq_backend_weight_free(bp, wp);
        sq_backend_weight_free(b1, bs1); sq_backend_weight_free(b3, bs3); sq_backend_weight_free(bp, bsp);
    }
    free(x);
    free(bias);
    sq_backend_destroy(b1); sq_backend_destroy(b3); sq_backend_destroy(bp);
}
END_TEST

/* Embedding on a ggml table: each looked-up row is ggml's dequantized row, bit for bit. */
START_TEST(test_embed_exact) {
    sq_backend *be = mk_be(2, NULL);
    const int64_t V = 40, D = 512;
    int32_t ids[6] = {0, 39, 7, 7, 21, 3};
    for (int t = 0; t < N_QTYPES; t++) {
        int type = k_qtypes[t];
        uint64_t rb = 0;
        uint8_t *raw = rand_blocks(type, V, D, &rb);
        sq_weight *w = mk_w(be, type, raw, V, D);
        void *ids_d = NULL, *o_d = NULL;
        sq_error err;
        sq_error_init(&err, -1);
        ck_assert_int_eq(sq_backend_alloc(be, sizeof ids, &ids_d, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_alloc(be, 6 * D * 4, &o_d, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_upload(be, ids_d, ids, sizeof ids, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_embed(be, w, ids_d, 6, o_d, &err), SQ_OK);
        float *out = malloc(6 * D * 4), *ref = malloc(D * 4);
        ck_assert_int_eq(sq_backend_download(be, out, o_d, 6 * D * 4, &err), SQ_OK);
        for (int r = 0; r < 6; r++) {
            sq_ggml_dequantize_row((sq_ggml_type)type, raw + ids[r] * rb, ref, D);
            ck_assert_msg(memcmp(out + r * D, ref, D * 4) == 0, "%s: embed row %d",
                          sq_ggml_type_name(type), r);
        }
        int32_t bad_id = 40;
        ck_assert_int_eq(sq_backend_upload(be, ids_d, &bad_id, 4, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_embed(be, w, ids_d, 1, o_d, &err), SQ_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(err.msg, "40"));
        free(out); free(ref); free(raw);
        sq_backend_free(be, ids_d);
        sq_backend_free(be, o_d);
        sq_backend_weight_free(be, w);
    }
    sq_backend_destroy(be);
}
END_TEST

START_TEST(test_refusals) {
    sq_backend *be = mk_be(1, NULL);
    sq_error err;
    sq_error_init(&err, -1);
    sq_weight *w = (sq_weight *)1;
    uint8_t raw[4096] = {0};
    /* cols not a multiple of the block */
    ck_assert_int_eq(sq_backend_weight_ggml(be, "blk.3.attn_q.weight", SQ_GGML_Q4_K, raw, 2, 576,
                                            &w, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(w);
    ck_assert_str_eq(err.tensor, "blk.3.attn_q.weight");
    ck_assert_ptr_nonnull(strstr(err.msg, "Q4_K"));
    ck_assert_ptr_nonnull(strstr(err.msg, "576"));
    ck_assert_int_eq(sq_backend_weight_ggml(be, "t", SQ_GGML_Q8_0, raw, 1, 33, &w, &err),
                     SQ_ERR_INVALID);
    /* unsupported and unknown types */
    ck_assert_int_eq(sq_backend_weight_ggml(be, "output.weight", (sq_ggml_type)10, raw, 1, 256, &w,
                                            &err), SQ_ERR_UNSUPPORTED);
    ck_assert_str_eq(err.tensor, "output.weight");
    ck_assert_ptr_nonnull(strstr(err.msg, "Q2_K"));
    ck_assert_int_eq(sq_backend_weight_ggml(be, "x", (sq_ggml_type)99, raw, 1, 256, &w, &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "99"));
    /* bad shape, NULL data */
    ck_assert_int_eq(sq_backend_weight_ggml(be, "x", SQ_GGML_Q8_0, raw, 0, 32, &w, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_backend_weight_ggml(be, "x", SQ_GGML_Q8_0, NULL, 1, 32, &w, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(w);
    /* a ggml weight is no RMSNorm weight and no bias; dense weights are not ggml */
    sq_weight *q = NULL, *d = NULL;
    ck_assert_int_eq(sq_backend_weight_ggml(be, "n", SQ_GGML_Q8_0, raw, 1, 64, &q, &err), SQ_OK);
    ck_assert_int_eq(sq_weight_ggml_type(q), SQ_GGML_Q8_0);
    void *x_d = NULL;
    ck_assert_int_eq(sq_backend_alloc(be, 64 * 4, &x_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_memset(be, x_d, 0, 64 * 4, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_rmsnorm(be, x_d, q, 1e-5f, 1, x_d, &err), SQ_ERR_INVALID);
    float one[64] = {1};
    ck_assert_int_eq(sq_backend_weight_dense(be, "w", SQ_DTYPE_F32, one, 1, 64, &d, &err), SQ_OK);
    ck_assert_int_eq(sq_weight_ggml_type(d), -1);
    ck_assert_int_eq(sq_weight_ggml_type(NULL), -1);
    ck_assert_int_eq(sq_backend_linear(be, x_d, 1, d, q, x_d, &err), SQ_ERR_INVALID);
    /* F16 goes to the dense path and keeps its ggml type */
    sq_weight *h = NULL;
    ck_assert_int_eq(sq_backend_weight_ggml(be, "h", SQ_GGML_F16, raw, 1, 64, &h, &err), SQ_OK);
    ck_assert_int_eq(sq_weight_ggml_type(h), SQ_GGML_F16);
    ck_assert_int_eq(sq_backend_rmsnorm(be, x_d, h, 1e-5f, 1, x_d, &err), SQ_OK);
    sq_backend_free(be, x_d);
    sq_backend_weight_free(be, q);
    sq_backend_weight_free(be, d);
    sq_backend_weight_free(be, h);
    sq_backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("backend_ggml");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 100);
    tcase_add_test(tc, test_linear_vectors_auto);
    tcase_add_test(tc, test_linear_vectors_portable);
    tcase_add_test(tc, test_invariance);
    tcase_add_test(tc, test_embed_exact);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
