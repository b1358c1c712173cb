/* CPU tests of the per-element math the CUDA kernels share with the host
 * (kernels/backend_math.cuh): each shared function, run on the CPU, against the CPU backend or
 * the quant module it must agree with.  Bit-exact where both sides run the same expression on
 * the host (generator, 4-bit element, SwiGLU, RMSNorm, sampling walk); a tight bound for the
 * attention step (the CPU backend's dot product has its own summation order). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend_math.cuh"
#include "../kernels/sample_size.cuh"
#include "shardq/backend.h"
#include "shardq/quant.h"

#include "test_rng.h"
static sq_backend *cpu_be(void) {
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(1, &be, &err), SQ_OK);
    sq_backend_limits lim = {.max_rows = 8, .max_width = 4096, .max_vocab = 4096, .max_head_dim = 128};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    return be;
}

START_TEST(test_uniform_matches_backend) {
    rng_seed(1);
    for (int i = 0; i < 100000; i++) {
        uint64_t seed = rng_u64(), seq = i % 7 ? rng_u64() % 64 : rng_u64(), step = rng_u64() % 4096;
        double a = sq_bm_uniform(seed, seq, step), b = sq_sample_uniform(seed, seq, step);
        ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "key (%llu, %llu, %llu): %.17g vs %.17g",
                      (unsigned long long)seed, (unsigned long long)seq, (unsigned long long)step, a, b);
        ck_assert(a >= 0.0 && a < 1.0);
    }
    /* fixed point: splitmix64's published first output for state 0 + golden gamma */
    ck_assert_uint_eq(sq_bm_mix64(0x9e3779b97f4a7c15ull), 0xe220a8397b1dcdafull);
}
END_TEST

/* The 4-bit element the GEMV and the band conversion compute equals bnb's dequantized value. */
START_TEST(test_q4_element_matches_dequant) {
    rng_seed(2);
    const int64_t rows = 5, cols = 96;
    float *x = malloc(rows * cols * sizeof *x), *ref = malloc(rows * cols * sizeof *ref);
    for (int64_t i = 0; i < rows * cols; i++) x[i] = rng_f(-2.0f, 2.0f);
    for (int t = 0; t < 2; t++)
        for (int dq = 0; dq < 2; dq++) {
            sq_quant_scheme s;
            memset(&s, 0, sizeof s);
            s.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4;
            s.blocksize = 64;
            s.double_quant = dq;
            sq_qtensor q;
            sq_error err;
            sq_error_init(&err, -1);
            ck_assert_int_eq(sq_quant_4bit(x, rows, cols, SQ_DTYPE_F32, &s, NULL, &q, &err), SQ_OK);
            sq_dequant_4bit_f32(&q, 0, (uint64_t)(rows * cols), ref);
            const float *code = sq_quant_code_table(q.type);
            for (int64_t o = 0; o < rows; o++)
                for (int64_t k = 0; k < cols; k++) {
                    uint64_t flat = (uint64_t)(o * cols + k);
                    float am = q.double_quant ? sq_qtensor_absmax(&q, flat / 64) : q.absmax[flat / 64];
                    unsigned c = sq_bm_q4_code(q.packed + o * cols / 2, k);
                    float v = sq_bm_q4_weight(code, c, am);
                    ck_assert_msg(v == ref[flat], "type %d dq %d (%lld, %lld): %a vs %a", t, dq,
                                  (long long)o, (long long)k, v, ref[flat]);
                }
            sq_qtensor_free(&q);
        }
    free(x);
    free(ref);
}
END_TEST

START_TEST(test_swiglu_and_rmsnorm_match_cpu) {
    rng_seed(3);
    sq_backend *be = cpu_be();
    sq_error err;
    sq_error_init(&err, -1);
    const int64_t R = 3, D = 1000;
    float *g = malloc(R * D * 4), *u = malloc(R * D * 4), *o = malloc(R * D * 4), *w = malloc(D * 4);
    for (int64_t i = 0; i < R * D; i++) { g[i] = rng_f(-12, 12); u[i] = rng_f(-3, 3); }
    for (int64_t i = 0; i < D; i++) w[i] = rng_f(0.5f, 1.5f);
    ck_assert_int_eq(sq_backend_swiglu(be, g, u, R * D, o, &err), SQ_OK);
    for (int64_t i = 0; i < R * D; i++) ck_assert_msg(o[i] == sq_bm_swiglu1(g[i], u[i]), "swiglu %lld", (long long)i);
    sq_weight *wt = NULL;
    ck_assert_int_eq(sq_backend_weight_dense(be, "norm", SQ_DTYPE_F32, w, 1, D, &wt, &err), SQ_OK);
    const float eps = 1e-5f;
    ck_assert_int_eq(sq_backend_rmsnorm(be, g, wt, eps, R, o, &err), SQ_OK);
    for (int64_t r = 0; r < R; r++) {
        double ss = 0.0;
        for (int64_t i = 0; i < D; i++) ss += (double)g[r * D + i] * (double)g[r * D + i];
        float sc = sq_bm_rms_scale(ss, D, eps);
        for (int64_t i = 0; i < D; i++)
            ck_assert_msg(o[r * D + i] == sq_bm_rms_apply(g[r * D + i], sc, w[i]), "rmsnorm (%lld, %lld)",
                          (long long)r, (long long)i);
    }
    sq_backend_weight_free(be, wt);
    sq_backend_destroy(be);
    free(g); free(u); free(o); free(w);
}
END_TEST

/* One attention row on the host with the shared softmax step vs the CPU backend. */
START_TEST(test_softmax_step_matches_cpu_attention) {
    rng_seed(4);
    sq_backend *be = cpu_be();
    sq_error err;
    sq_error_init(&err, -1);
    const int hd = 64, T = 7;
    float *q = malloc(T * hd * 4), *k = malloc(T * hd * 4), *v = malloc(T * hd * 4), *o = malloc(T * hd * 4);
    float *ck = calloc((size_t)T * hd, 4), *cv = calloc((size_t)T * hd, 4);
    for (int i = 0; i < T * hd; i++) { q[i] = rng_f(-2, 2); k[i] = rng_f(-2, 2); v[i] = rng_f(-1, 1); }
    sq_kv_layer kv = {ck, cv, 1, T, 1, hd};
    sq_seq_span sp = {0, 0, T};
    ck_assert_int_eq(sq_backend_attention(be, q, k, v, &kv, 1, 1, &sp, o, &err), SQ_OK);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int r = 0; r < T; r++) {
        float m = -INFINITY, l = 0.0f, acc[64] = {0};
        for (int j = 0; j <= r; j++) {
            double d = 0.0;
            for (int i = 0; i < hd; i++) d += (double)q[r * hd + i] * (double)k[j * hd + i];
            float e;
            float corr = sq_bm_softmax_step((float)d * scale, &m, &l, &e);
            for (int i = 0; i < hd; i++) acc[i] = acc[i] * corr + e * v[j * hd + i];
        }
        for (int i = 0; i < hd; i++)
            ck_assert_msg(fabsf(acc[i] / l - o[r * hd + i]) <= 2e-6f, "row %d elem %d: %g vs %g", r, i,
                          acc[i] / l, o[r * hd + i]);
    }
    sq_backend_destroy(be);
    free(q); free(k); free(v); free(o); free(ck); free(cv);
}
END_TEST

/* The device's sampling algorithm (stable descending sort, weights, sequential walk, generator),
 * run on the host, picks the CPU backend's token for every key and parameter set. */
static const float *g_sort_x;
static int cmp_desc(const void *a_, const void *b_) {
    int32_t a = *(const int32_t *)a_, b = *(const int32_t *)b_;
    if (g_sort_x[a] > g_sort_x[b]) return -1;
    if (g_sort_x[a] < g_sort_x[b]) return 1;
    return (a > b) - (a < b);
}
START_TEST(test_sampling_walk_matches_cpu) {
    rng_seed(5);
    sq_backend *be = cpu_be();
    sq_error err;
    sq_error_init(&err, -1);
    const int64_t V = 1000, R = 4;
    float *x = malloc(R * V * 4);
    int32_t *idx = malloc(V * 4);
    double *pr = malloc(V * 8);
    const sq_sample_params ps[] = {{1.0f, 0, 1.0f, 7}, {0.7f, 40, 0.9f, 8}, {1.3f, 0, 0.5f, 9},
                                   {0.9f, 5, 1.0f, 10}, {2.0f, 1000, 0.99f, 11}};
    int n_checked = 0;
    for (int trial = 0; trial < 20; trial++) {
        for (int64_t i = 0; i < R * V; i++)   /* many ties; odd trials span > 64 nats */
            x[i] = (float)(int)rng_f(-40, 40) * (trial % 2 ? 4.0f : 0.125f);
        for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
            uint64_t seq[4] = {0, 1, 2, 3}, steps[4] = {(uint64_t)trial, 5, 6, 7};
            int32_t ids[4];
            ck_assert_int_eq(sq_backend_sample(be, x, R, V, &ps[pi], seq, steps, ids, &err), SQ_OK);
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * V;
                for (int64_t i = 0; i < V; i++) idx[i] = (int32_t)i;
                g_sort_x = xr;
                qsort(idx, (size_t)V, sizeof *idx, cmp_desc);
                float *sorted = malloc(V * sizeof *sorted);
                for (int64_t i = 0; i < V; i++) sorted[i] = xr[idx[i]];
                int64_t n = sq_bm_sample_n_candidates(sorted, V, ps[pi].temperature, ps[pi].top_k);
                free(sorted);
                double inv_t = 1.0 / (double)ps[pi].temperature;
                for (int64_t i = 0; i < n; i++) pr[i] = sq_bm_sample_weight(xr[idx[i]], xr[idx[0]], inv_t);
                int64_t pick = sq_bm_sample_walk(pr, n, ps[pi].top_p,
                                                 sq_bm_uniform(ps[pi].seed, seq[r], steps[r]));
                ck_assert_int_eq(idx[pick], ids[r]);
                n_checked++;
            }
        }
    }
    ck_assert_int_eq(n_checked, 20 * 5 * 4);
    sq_backend_destroy(be);
    free(x); free(idx); free(pr);
}
END_TEST

/* Issue 15: the sampling scratch is sized by the rows sampled (one per sequence), not by the
 * prompt tokens of a micro-batch.  Llama-3's vocabulary, 16k prompt tokens, 8 sequences. */
START_TEST(test_sample_reserve_llama3) {
    const int64_t vocab = 128256, prompt_tokens = 16384, n_seqs = 8;
    /* the model's limits: max_rows covers the prefill, max_sample_rows the logit rows */
    ck_assert_int_eq(sq_sample_reserve_rows(prompt_tokens, n_seqs), 8);
    ck_assert_int_eq(sq_sample_reserve_rows(prompt_tokens, 0), prompt_tokens);   /* unsaid: as before */
    ck_assert_int_eq(sq_sample_reserve_rows(4, 8), 4);   /* never above max_rows */
    size_t off[6];
    ck_assert(sq_sample_carve(sq_sample_reserve_rows(prompt_tokens, n_seqs), vocab, off));
    /* n = 8 x 128256 = 1,026,048 logits: float64 weights 8,208,384 B, keys 4,104,192 B, indices
     * in and out 4,104,192 B each (all multiples of 256), offsets 9 x 4 = 36 B -> 256 */
    ck_assert_uint_eq(off[0], 0);
    ck_assert_uint_eq(off[1], 8208384u);
    ck_assert_uint_eq(off[2], 12312576u);
    ck_assert_uint_eq(off[3], 16416768u);
    ck_assert_uint_eq(off[4], 20520960u);
    ck_assert_uint_eq(off[5], 20521216u);   /* 19.6 MiB + CUB's storage, was refused */
    /* sized by prompt tokens (the defect): 16384 x 128256 = 2.1e9 logits, 20 B each, ~42 GB
     * before CUB's part; from 16,744 prompt tokens past 2^31 - 1 logits, refused even for
     * greedy decoding */
    ck_assert(sq_sample_carve(prompt_tokens, vocab, off));
    ck_assert_uint_eq(off[5], 42026991872u);
    ck_assert(!sq_sample_carve(16744, vocab, off));
    ck_assert(!sq_sample_carve(0, vocab, off));
    ck_assert(!sq_sample_carve(1, 0, off));
}
END_TEST

/* The GPU's one-pass walk (running sums + binary searches) picks what the CPU's three-pass
 * walk picks, bit for bit: random weights (many exact zeros and ties, huge and tiny), every
 * top_p class, u at the ends, and NaN weights. */
START_TEST(test_sample_walk_prefix_matches_walk) {
    rng_seed(515);
    enum { NMAX = 700 };
    double pr[NMAX], pp[NMAX];
    const float top_ps[] = {1.0f, 0.95f, 0.5f, 0.1f, 0.0f, 1e-7f};
    int checked = 0;
    for (int trial = 0; trial < 3000; trial++) {
        int64_t n = 1 + (int64_t)(rng_u64() % NMAX);
        int kind = trial % 5;
        for (int64_t i = 0; i < n; i++) {
            double w = rng_f(0.0f, 1.0f);
            if (kind == 1) w = (rng_u64() % 3 == 0) ? 0.0 : 0.25;          /* zeros and ties */
            if (kind == 2) w = exp(-(double)rng_f(0.0f, 700.0f));          /* down to subnormal */
            if (kind == 3) w = i == 0 ? 1.0 : 1e-17;                      /* below one ulp of the sum */
            pr[i] = w;
        }
        if (kind == 4 && n > 3) pr[n / 2] = NAN;
        double u = (double)rng_f(0.0f, 1.0f);
        if (trial % 7 == 0) u = 0.0;
        if (trial % 11 == 0) u = 0.9999999999999999;
        for (size_t k = 0; k < sizeof top_ps / sizeof top_ps[0]; k++) {
            memcpy(pp, pr, (size_t)n * sizeof *pp);
            int64_t want = sq_bm_sample_walk(pr, n, top_ps[k], u);
            int64_t got = sq_bm_sample_walk_prefix(pp, n, top_ps[k], u);
            ck_assert_msg(got == want, "trial %d kind %d n %lld top_p %g u %.17g: %lld != %lld", trial, kind,
                          (long long)n, (double)top_ps[k], u, (long long)got, (long long)want);
            checked++;
        }
    }
    ck_assert_int_eq(checked, 3000 * 6);
}
END_TEST

/* Attention's merge of warp partials: only a warp that saw no position is left out; a NaN
 * partial is kept (the old test "l > 0" dropped it, so a NaN score vanished on the GPU while
 * the CPU's output was NaN). */
START_TEST(test_attn_merge_keeps_nan) {
    ck_assert(!sq_bm_attn_merge_keeps(-INFINITY, 0.0f));   /* empty warp */
    ck_assert(sq_bm_attn_merge_keeps(0.5f, 1.0f));
    ck_assert(sq_bm_attn_merge_keeps(-3.0f, 1e-30f));
    ck_assert(sq_bm_attn_merge_keeps(2.0f, NAN));          /* a NaN score made l NaN */
    ck_assert(sq_bm_attn_merge_keeps(NAN, NAN));
    /* the kernel's merge on the host: 3 warps, one saw a NaN score, one saw nothing */
    float m[3], l[3], acc[3];
    float e;
    m[0] = l[0] = -INFINITY; l[0] = 0.0f; acc[0] = 0.0f;
    for (int j = 0; j < 2; j++) { float c = sq_bm_softmax_step(0.5f * j, &m[0], &l[0], &e); acc[0] = acc[0] * c + e * 2.0f; }
    m[1] = -INFINITY; l[1] = 0.0f; acc[1] = 0.0f;
    { float c = sq_bm_softmax_step(NAN, &m[1], &l[1], &e); acc[1] = acc[1] * c + e * 1.0f; }
    ck_assert(!(l[1] > 0.0f));   /* what the old merge tested: this partial was dropped */
    m[2] = -INFINITY; l[2] = 0.0f; acc[2] = 0.0f;   /* no position */
    float M = m[0];
    for (int w = 1; w < 3; w++) M = fmaxf(M, m[w]);
    float L = 0.0f, a = 0.0f;
    for (int w = 0; w < 3; w++)
        if (sq_bm_attn_merge_keeps(m[w], l[w])) { L += l[w] * expf(m[w] - M); a += acc[w] * expf(m[w] - M); }
    ck_assert_msg(isnan(a / L), "merged %g: the NaN was dropped", (double)(a / L));
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_math");
    TCase *tc = tcase_create("shared");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_uniform_matches_backend);
    tcase_add_test(tc, test_q4_element_matches_dequant);
    tcase_add_test(tc, test_swiglu_and_rmsnorm_match_cpu);
    tcase_add_test(tc, test_softmax_step_matches_cpu_attention);
    tcase_add_test(tc, test_sampling_walk_matches_cpu);
    tcase_add_test(tc, test_sample_reserve_llama3);
    tcase_add_test(tc, test_sample_walk_prefix_matches_walk);
    tcase_add_test(tc, test_attn_merge_keeps_nan);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
