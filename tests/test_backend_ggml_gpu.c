/* GPU test of ggml (GGUF) weights (label gpu): for every supported type, the CUDA backend
 * against the CPU backend on the same blocks.  Embedding rows: bit-identical (both compute
 * scale * code (+ bias) in two roundings, kernels/ggml_quant_math.cuh).  Linear, GEMV (1, 3, 16
 * rows) and the cuBLAS path (40 rows), with a float32 bias: per element
 *   |gpu - cpu| <= K * 2^-22 * sum_k |w_k x_k|   (two float32 sums of K terms in different orders)
 * with w gguf's dequantized values; the GEMV gives a row the same bits alone or in a batch.  GPU
 * outputs are poisoned (0xFF bytes, NaN) first, so an element never written fails.
 * Exits 77 ("no CUDA device") where there is none; runs without fork (CK_FORK=no). */
#include <check.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/backend.h"
#include "shardq/ggml_quant.h"

#define SQ_TEST_RNG_SEED 0x51f15eed
#include "test_rng.h"

static const int k_types[] = {SQ_GGML_Q8_0, SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q5_0,
                              SQ_GGML_Q5_1, SQ_GGML_Q4_K, SQ_GGML_Q5_K, SQ_GGML_Q6_K,
                              SQ_GGML_F32, SQ_GGML_F16, SQ_GGML_BF16};

static sq_backend *cpu_be, *gpu_be;

/* random blocks, fp16 scales in [2^-11, 2) (raw bytes otherwise random); dense: values in [-1, 1] */
static uint8_t *rand_blocks(int t, int64_t rows, int64_t cols, uint64_t *rb) {
    ck_assert_int_eq(sq_ggml_row_bytes(t, cols, rb, NULL), SQ_OK);
    uint64_t nb = *rb * (uint64_t)rows;
    uint8_t *p = malloc(nb);
    for (uint64_t i = 0; i < nb; i++) p[i] = (uint8_t)(rng_u64() >> 24);
    if (t == SQ_GGML_F32 || t == SQ_GGML_F16 || t == SQ_GGML_BF16) {
        for (int64_t i = 0; i < rows * cols; i++) {
            float v = rng_f(-1, 1);
            uint32_t u;
            memcpy(&u, &v, 4);
            if (t == SQ_GGML_F32) memcpy(p + 4 * i, &v, 4);
            else {
                uint16_t h = t == SQ_GGML_BF16 ? (uint16_t)(u >> 16)
                                               : (uint16_t)(((u >> 31) << 15) | (0x3400 + (rng_u64() & 0x7ff)));
                memcpy(p + 2 * i, &h, 2);
            }
        }
        return p;
    }
    int64_t bb = sq_ggml_block_bytes(t), be = sq_ggml_block_elems(t);
    int d_off = t == SQ_GGML_Q6_K ? 208 : 0;
    int m_off = (t == SQ_GGML_Q4_1 || t == SQ_GGML_Q5_1 || t == SQ_GGML_Q4_K || t == SQ_GGML_Q5_K) ? 2 : -1;
    for (int64_t b = 0; b < rows * cols / be; b++) {
        uint16_t d = (uint16_t)(0x1000 + (rng_u64() % 0x2c00)), m = (uint16_t)(d ^ 0x8000);
        memcpy(p + b * bb + d_off, &d, 2);
        if (m_off >= 0) memcpy(p + b * bb + m_off, &m, 2);
    }
    return p;
}

static void *dev(sq_backend *be, const void *src, size_t n, int poison) {
    void *p = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_alloc(be, n, &p, &err), SQ_OK);
    if (src) ck_assert_int_eq(sq_backend_upload(be, p, src, n, &err), SQ_OK);
    if (poison) ck_assert_int_eq(sq_backend_memset(be, p, 0xFF, n, &err), SQ_OK);
    return p;
}

static float *linear_on(sq_backend *be, const sq_weight *w, const sq_weight *bias,
                        const float *x, int64_t n, int64_t K, int64_t N) {
    sq_error err;
    sq_error_init(&err, -1);
    void *x_d = dev(be, x, (size_t)(n * K * 4), 0), *o_d = dev(be, NULL, (size_t)(n * N * 4), 1);
    ck_assert_msg(sq_backend_linear(be, x_d, n, w, bias, o_d, &err) == SQ_OK, "%s", err.msg);
    float *out = malloc((size_t)(n * N * 4));
    ck_assert_int_eq(sq_backend_download(be, out, o_d, (uint64_t)(n * N * 4), &err), SQ_OK);
    ck_assert_int_eq(sq_backend_sync(be, &err), SQ_OK);
    sq_backend_free(be, x_d);
    sq_backend_free(be, o_d);
    return out;
}

START_TEST(test_ggml_types_gpu_vs_cpu) {
    const int64_t N = 72, K = 768, V = 40;
    sq_error err;
    sq_error_init(&err, -1);
    for (size_t t = 0; t < sizeof k_types / sizeof k_types[0]; t++) {
        const int type = k_types[t];
        const char *tn = sq_ggml_type_name(type);
        uint64_t rb = 0;
        uint8_t *raw = rand_blocks(type, N, K, &rb);
        sq_weight *wc = NULL, *wg = NULL, *bc = NULL, *bg = NULL;
        ck_assert_int_eq(sq_backend_weight_ggml(cpu_be, "w", (sq_ggml_type)type, raw, N, K, &wc, &err), SQ_OK);
        ck_assert_msg(sq_backend_weight_ggml(gpu_be, "w", (sq_ggml_type)type, raw, N, K, &wg, &err) == SQ_OK,
                      "%s: %s", tn, err.msg);
        ck_assert_int_eq(sq_weight_ggml_type(wg), type);
        float *bias = malloc(N * 4), *wf = malloc((size_t)(N * K * 4));
        for (int64_t o = 0; o < N; o++) bias[o] = rng_f(-1, 1);
        for (int64_t o = 0; o < N; o++) sq_ggml_dequantize_row((sq_ggml_type)type, raw + o * rb, wf + o * K, K);
        ck_assert_int_eq(sq_backend_weight_dense(cpu_be, "b", SQ_DTYPE_F32, bias, 1, N, &bc, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_weight_dense(gpu_be, "b", SQ_DTYPE_F32, bias, 1, N, &bg, &err), SQ_OK);
        static const int64_t counts[] = {1, 3, 16, 40};
        float *x = malloc((size_t)(40 * K * 4));
        for (int64_t i = 0; i < 40 * K; i++) x[i] = rng_f(-1, 1);
        float *g1 = NULL;
        for (int ci = 0; ci < 4; ci++) {
            int64_t n = counts[ci];
            float *c = linear_on(cpu_be, wc, bc, x, n, K, N), *g = linear_on(gpu_be, wg, bg, x, n, K, N);
            for (int64_t r = 0; r < n; r++)
                for (int64_t o = 0; o < N; o++) {
                    double mag = fabs(bias[o]);
                    for (int64_t k = 0; k < K; k++) mag += fabs((double)wf[o * K + k] * x[r * K + k]);
                    double bound = (double)K * ldexp(1.0, -22) * mag;
                    float gv = g[r * N + o], cv = c[r * N + o];
                    ck_assert_msg(isfinite(gv) && fabs((double)gv - cv) <= bound,
                                  "%s n=%lld row %lld out %lld: gpu %.9g cpu %.9g bound %.3g", tn,
                                  (long long)n, (long long)r, (long long)o, gv, cv, bound);
                }
            if (n == 1) g1 = g;
            else {
                if (n <= 16)   /* the GEMV: row 0 has the same bits alone and in a batch */
                    ck_assert_msg(memcmp(g, g1, (size_t)N * 4) == 0, "%s: GEMV row 0 alone vs in %lld rows",
                                  tn, (long long)n);
                free(g);
            }
            free(c);
        }
        free(g1);
        free(x);
        /* embedding: bit-identical rows (the first V rows as a table) */
        sq_weight *tc = NULL, *tg = NULL;
        ck_assert_int_eq(sq_backend_weight_ggml(cpu_be, "tok", (sq_ggml_type)type, raw, V, K, &tc, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_weight_ggml(gpu_be, "tok", (sq_ggml_type)type, raw, V, K, &tg, &err), SQ_OK);
        int32_t ids[5] = {0, 39, 5, 5, 17};
        void *ic = dev(cpu_be, ids, sizeof ids, 0), *ig = dev(gpu_be, ids, sizeof ids, 0);
        void *oc = dev(cpu_be, NULL, 5 * K * 4, 0), *og = dev(gpu_be, NULL, 5 * K * 4, 1);
        ck_assert_int_eq(sq_backend_embed(cpu_be, tc, ic, 5, oc, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_embed(gpu_be, tg, ig, 5, og, &err), SQ_OK);
        float *ec = malloc(5 * K * 4), *eg = malloc(5 * K * 4);
        ck_assert_int_eq(sq_backend_download(cpu_be, ec, oc, 5 * K * 4, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_download(gpu_be, eg, og, 5 * K * 4, &err), SQ_OK);
        ck_assert_msg(memcmp(ec, eg, 5 * K * 4) == 0, "%s: embed rows differ", tn);
        int32_t bad = V;
        ck_assert_int_eq(sq_backend_upload(gpu_be, ig, &bad, 4, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_embed(gpu_be, tg, ig, 1, og, &err), SQ_OK);
        ck_assert_int_eq(sq_backend_sync(gpu_be, &err), SQ_ERR_INVALID);
        free(ec); free(eg); free(bias); free(wf); free(raw);
        sq_backend_free(cpu_be, ic); sq_backend_free(gpu_be, ig);
        sq_backend_free(cpu_be, oc); sq_backend_free(gpu_be, og);
        sq_backend_weight_free(cpu_be, tc); sq_backend_weight_free(gpu_be, tg);
        sq_backend_weight_free(cpu_be, wc); sq_backend_weight_free(gpu_be, wg);
        sq_backend_weight_free(cpu_be, bc); sq_backend_weight_free(gpu_be, bg);
    }
}
END_TEST

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipping the ggml GPU backend test\n");
        return 77;
    }
    sq_error err;
    sq_error_init(&err, -1);
    if (sq_backend_create_cpu(2, &cpu_be, &err) != SQ_OK || sq_backend_create_cuda(0, &gpu_be, &err) != SQ_OK) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    sq_backend_limits lim = {.max_rows = 64, .max_width = 1024, .max_vocab = 0, .max_head_dim = 64};
    if (sq_backend_reserve(cpu_be, &lim, &err) != SQ_OK || sq_backend_reserve(gpu_be, &lim, &err) != SQ_OK) {
        fprintf(stderr, "reserve: %s\n", err.msg);
        return 1;
    }
    Suite *s = suite_create("backend_ggml_gpu");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_ggml_types_gpu_vs_cpu);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    sq_backend_destroy(gpu_be);
    sq_backend_destroy(cpu_be);
    return failed ? 1 : 0;
}
