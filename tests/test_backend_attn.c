/* test_backend_attn: the CPU backend's attention over long sequences (src/backend/cpu_attn.c):
 * several passes of keys (the AVX2 path takes 64 keys a pass), head_dims that take the AVX2
 * path with and without its 32-wide value loop and the portable path, against a float64
 * softmax; bit-identical rows whatever the thread count and however the sequence is split
 * across calls; and the softmax weights' exponential against exp() over [-87, 0] (with
 * scores below -87 giving 0 and -inf giving 0). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_testutil.h"
#include "shardq/backend.h"

#define SQ_TEST_RNG_SEED 0x2545f491
#include "test_rng.h"

static sq_backend *mk_be(int n_threads, const char *isa) {
    sq_backend_limits lim = {.max_rows = 256, .max_width = 1024, .max_vocab = 64, .max_head_dim = 128};
    return sq_test_cpu_backend(n_threads, isa, lim);
}

/* Attention of rows [r0, r0 + n) of one sequence (slot 1) on be, into out (host, all rows). */
static void attend(sq_backend *be, const sq_kv_layer *kv, int H, const float *q, const float *k,
                   const float *v, int r0, int n, float *out) {
    const int qw = H * kv->head_dim, kw = kv->n_kv_heads * kv->head_dim;
    void *q_d = sq_test_upload(be, q + (size_t)r0 * qw, (size_t)n * qw * 4);
    void *k_d = sq_test_upload(be, k + (size_t)r0 * kw, (size_t)n * kw * 4);
    void *v_d = sq_test_upload(be, v + (size_t)r0 * kw, (size_t)n * kw * 4);
    void *o_d = sq_test_upload(be, NULL, (size_t)n * qw * 4);
    sq_seq_span sp = {1, r0, n};
    sq_error err;
    ck_assert_int_eq(sq_backend_attention(be, q_d, k_d, v_d, kv, H, 1, &sp, o_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_download(be, out + (size_t)r0 * qw, o_d, (size_t)n * qw * 4, &err), SQ_OK);
    sq_backend_free(be, q_d); sq_backend_free(be, k_d); sq_backend_free(be, v_d); sq_backend_free(be, o_d);
}

/* A sequence of T = 150 tokens (passes of 64, 64, 22 keys) for head_dim 64 (the AVX2 value loop
 * 32 wide), 24 (8 wide), 12 (the portable path): every row within 1e-5 of float64; split across
 * 3 calls (50, 1, 99 rows) on 3 threads, the same bits as one call on 2 threads. */
START_TEST(test_long_sequence) {
    static const int hds[] = {64, 24, 12};
    const char *isa = _i == 1 ? "portable" : NULL;
    for (int c = 0; c < 3; c++) {
        const int H = 6, KVH = 2, HD = hds[c], T = 150, SLOTS = 2, MAXS = 160;
        const int qw = H * HD, kw = KVH * HD;
        float *q = malloc((size_t)T * qw * 4), *k = malloc((size_t)T * kw * 4), *v = malloc((size_t)T * kw * 4);
        for (int i = 0; i < T * qw; i++) q[i] = rng_f(-1.5f, 1.5f);
        for (int i = 0; i < T * kw; i++) k[i] = rng_f(-1.5f, 1.5f), v[i] = rng_f(-1, 1);
        /* a late key that dominates: the running max changes in the third pass */
        for (int i = 0; i < HD; i++) k[140 * kw + i] = q[149 * qw + i] * 4;
        float *one = malloc((size_t)T * qw * 4), *split = malloc((size_t)T * qw * 4);
        size_t cache = (size_t)SLOTS * MAXS * kw * 4;
        sq_backend *b2 = mk_be(2, isa), *b3 = mk_be(3, isa);
        sq_kv_layer kv2 = {sq_test_upload(b2, NULL, cache), sq_test_upload(b2, NULL, cache), SLOTS,
                           MAXS, KVH, HD};
        sq_kv_layer kv3 = {sq_test_upload(b3, NULL, cache), sq_test_upload(b3, NULL, cache), SLOTS,
                           MAXS, KVH, HD};
        attend(b2, &kv2, H, q, k, v, 0, T, one);
        attend(b3, &kv3, H, q, k, v, 0, 50, split);
        attend(b3, &kv3, H, q, k, v, 50, 1, split);
        attend(b3, &kv3, H, q, k, v, 51, 99, split);
        ck_assert_msg(memcmp(one, split, (size_t)T * qw * 4) == 0, "hd %d: split calls / threads differ", HD);
        double *sc = malloc(T * sizeof *sc);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                int g = h / (H / KVH);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < HD; i++) d += (double)q[t * qw + h * HD + i] * k[j * kw + g * HD + i];
                    sc[j] = d / sqrt((double)HD);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= t; j++) { sc[j] = exp(sc[j] - mx); sum += sc[j]; }
                for (int i = 0; i < HD; i++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += sc[j] / sum * v[j * kw + g * HD + i];
                    ck_assert_msg(fabs(one[t * qw + h * HD + i] - o) <= 1e-5, "hd %d t %d h %d i %d: %g vs %g",
                                  HD, t, h, i, (double)one[t * qw + h * HD + i], o);
                }
            }
        free(sc);
        sq_backend_free(b2, kv2.k_d); sq_backend_free(b2, kv2.v_d);
        sq_backend_free(b3, kv3.k_d); sq_backend_free(b3, kv3.v_d);
        sq_backend_destroy(b2); sq_backend_destroy(b3);
        free(q); free(k); free(v); free(one); free(split);
    }
}
END_TEST

/* The weights' exponential: one head (head_dim 64) whose key j has score exactly a_j (q = 8 e_0,
 * k_j = a_j e_0, scale 1/8) and whose value j is e_j, so that the last row's output j is
 * exp(a_j - a_max) / l and out_j / out_0 = exp(a_j) with a_0 = 0 the max: within 2.5e-7
 * relative of exp() (measured 1.4e-7: the exponential and two float divisions; a coefficient of
 * the polynomial off by 1e-5 gives 2.9e-7) for a_j in [-87, 0];
 * at most 2e-38 for a_j in [-100, -87); exactly 0 for -inf. */
START_TEST(test_exp_bound) {
    const int HD = 64, T = 64;
    sq_backend *be = mk_be(2, NULL);
    sq_kv_layer kv = {sq_test_upload(be, NULL, 2 * T * HD * 4),
                      sq_test_upload(be, NULL, 2 * T * HD * 4), 2, T, 1, HD};
    float *q = calloc((size_t)T * HD, 4), *k = calloc((size_t)T * HD, 4), *v = calloc((size_t)T * HD, 4);
    float *out = malloc((size_t)T * HD * 4);
    for (int i = 0; i < T; i++) q[i * HD] = 8.0f, v[i * HD + i] = 1.0f;
    double worst = 0;
    for (int call = 0; call < 60; call++) {
        float a[64];
        a[0] = 0.0f;
        for (int j = 1; j < T; j++) {
            if (call == 0) a[j] = -87.0f * (float)j / (T - 1);   /* the ends of the range */
            else a[j] = rng_f(-87.0f, 0.0f);
        }
        if (call == 1) for (int j = 1; j < 16; j++) a[j] = rng_f(-100.0f, -87.0f);
        if (call == 2) a[5] = -INFINITY;
        for (int j = 0; j < T; j++) k[j * HD] = a[j];
        attend(be, &kv, 1, q, k, v, 0, T, out);
        const float *o = out + (T - 1) * HD;
        for (int j = 1; j < T; j++) {
            if (a[j] < -87.0f) {
                ck_assert_msg(o[j] >= 0 && o[j] <= 2e-38f, "a %g: %g", (double)a[j], (double)o[j]);
                if (a[j] == -INFINITY) ck_assert(o[j] == 0.0f);
                continue;
            }
            double rel = fabs((double)o[j] / o[0] - exp((double)a[j])) / exp((double)a[j]);
            if (rel > worst) worst = rel;
            ck_assert_msg(rel <= 2.5e-7, "a %.9g: ratio %.9g vs exp %.9g (rel %g)", (double)a[j],
                          (double)o[j] / o[0], exp((double)a[j]), rel);
        }
    }
    fprintf(stderr, "test_exp_bound: worst relative error %.3g\n", worst);
    sq_backend_free(be, kv.k_d); sq_backend_free(be, kv.v_d);
    sq_backend_destroy(be);
    free(q); free(k); free(v); free(out);
}
END_TEST

int main(void) {
    Suite *s = suite_create("backend_attn");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_long_sequence, 0, 2);
    tcase_add_test(tc, test_exp_bound);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
