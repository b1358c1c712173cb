/* Tests of the backend module on the CPU backend: every op against a plain float64
 * implementation written here, bit-for-bit batch / thread / ISA invariance, prefill vs decode
 * attention, 4-bit Linear vs dequantize-then-float64, sampling determinism and distributions,
 * and argument errors. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/quant_math.cuh"
#include "../kernels/rope_math.cuh"
#include "shardq/backend.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------ */

#define SQ_TEST_RNG_SEED 0x1234567
#include "test_rng.h"
static float *rand_vec(int64_t n, float lo, float hi) {
    float *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = rng_f(lo, hi);
    return v;
}

static sq_backend *mk_be(int n_threads, const char *isa) {
    if (isa) setenv("SHARDQ_CPU_ISA", isa, 1);
    else unsetenv("SHARDQ_CPU_ISA");
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(n_threads, &be, &err), SQ_OK);
    unsetenv("SHARDQ_CPU_ISA");
    sq_backend_limits lim = {.max_rows = 256, .max_width = 4096, .max_vocab = 4096, .max_head_dim = 256};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    return be;
}

/* uploads n floats; returns the device pointer */
static void *up(sq_backend *be, const void *src, size_t bytes) {
    void *p = NULL;
    sq_error err;
    ck_assert_int_eq(sq_backend_alloc(be, bytes, &p, &err), SQ_OK);
    if (src) ck_assert_int_eq(sq_backend_upload(be, p, src, bytes, &err), SQ_OK);
    return p;
}
static void down(sq_backend *be, void *dst, const void *src_d, size_t bytes) {
    sq_error err;
    ck_assert_int_eq(sq_backend_download(be, dst, src_d, bytes, &err), SQ_OK);
}
static sq_weight *dense_w(sq_backend *be, const float *src, int64_t rows, int64_t cols, bool bf16) {
    sq_weight *w = NULL;
    sq_error err;
    if (bf16) {
        uint16_t *h = malloc((size_t)(rows * cols) * 2);
        sq_f32_to_bf16(src, h, (size_t)(rows * cols));
        ck_assert_int_eq(sq_backend_weight_dense(be, "w", SQ_DTYPE_BF16, h, rows, cols, &w, &err), SQ_OK);
        free(h);
    } else {
        ck_assert_int_eq(sq_backend_weight_dense(be, "w", SQ_DTYPE_F32, src, rows, cols, &w, &err), SQ_OK);
    }
    return w;
}
static float bf16_round(float f) { return sq_bf16_to_f32_1(sq_f32_to_bf16_1(f)); }

/* ---- RMSNorm ------------------------------------------------------------------------------ */

START_TEST(test_rmsnorm) {
    rng_seed(1);
    sq_backend *be = mk_be(2, NULL);
    const int64_t R = 3, D = 67;
    for (int bf = 0; bf < 2; bf++) {
        float *x = rand_vec(R * D, -3, 3), *wt = rand_vec(D, 0.5f, 1.5f), *y = malloc(R * D * 4);
        sq_weight *w = dense_w(be, wt, 1, D, bf);
        void *x_d = up(be, x, R * D * 4), *y_d = up(be, NULL, R * D * 4);
        sq_error err;
        ck_assert_int_eq(sq_backend_rmsnorm(be, x_d, w, 1e-5f, R, y_d, &err), SQ_OK);
        down(be, y, y_d, R * D * 4);
        for (int64_t r = 0; r < R; r++) {
            double ss = 0;
            for (int64_t i = 0; i < D; i++) ss += (double)x[r * D + i] * x[r * D + i];
            double inv = 1.0 / sqrt(ss / D + 1e-5);
            for (int64_t i = 0; i < D; i++) {
                double wv = bf ? bf16_round(wt[i]) : wt[i];
                double ref = x[r * D + i] * inv * wv;
                ck_assert_msg(fabs(y[r * D + i] - ref) <= 1e-6 * fabs(ref) + 1e-7,
                              "row %lld col %lld: %g vs %g", (long long)r, (long long)i, y[r * D + i], ref);
            }
        }
        /* in place gives the same bits */
        float *y2 = malloc(R * D * 4);
        ck_assert_int_eq(sq_backend_rmsnorm(be, x_d, w, 1e-5f, R, x_d, &err), SQ_OK);
        down(be, y2, x_d, R * D * 4);
        ck_assert_int_eq(memcmp(y, y2, R * D * 4), 0);
        free(x); free(wt); free(y); free(y2);
        sq_backend_free(be, x_d); sq_backend_free(be, y_d);
        sq_backend_weight_free(be, w);
    }
    sq_backend_destroy(be);
}
END_TEST

/* ---- RoPE --------------------------------------------------------------------------------- */

/* HF's inv_freq written out plainly (float32 steps as torch does them, llama3 in float64). */
static double ref_inv_freq(int kind, double theta, int hd, int i, double factor, double lo,
                           double hi, double orig) {
    float e = (float)(2 * i) / (float)hd;
    float base = (float)pow(theta, (double)e);
    double inv = (double)(1.0f / base);
    if (kind == SQ_ROPE_LINEAR) return (double)(float)(inv / factor);
    if (kind == SQ_ROPE_LLAMA3) {
        double wl = 2 * M_PI / inv, low_wl = orig / lo, high_wl = orig / hi;
        double scaled = wl > low_wl ? inv / factor : inv;
        if (wl >= high_wl && wl <= low_wl) {
            double sm = (orig / wl - lo) / (hi - lo);
            scaled = (1 - sm) * inv / factor + sm * inv;
        }
        return (double)(float)scaled;
    }
    return inv;
}

START_TEST(test_rope) {
    rng_seed(2);
    sq_backend *be = mk_be(2, NULL);
    const int H = 4, KVH = 2, HD = 64, half = HD / 2, R = 5;
    int32_t pos[5] = {0, 1, 17, 1000, 8191};
    struct { int kind; double theta, factor, lo, hi, orig; } cases[] = {
        {SQ_ROPE_DEFAULT, 10000, 1, 1, 1, 1},
        {SQ_ROPE_LINEAR, 10000, 4, 1, 1, 1},
        {SQ_ROPE_LLAMA3, 500000, 8, 1, 4, 8192},
    };
    for (size_t cs = 0; cs < 3; cs++) {
        float inv[32];
        double invr[32];
        for (int i = 0; i < half; i++) {
            inv[i] = sq_rope_inv_freq(cases[cs].kind, cases[cs].theta, HD, i, cases[cs].factor,
                                      cases[cs].lo, cases[cs].hi, cases[cs].orig);
            invr[i] = ref_inv_freq(cases[cs].kind, cases[cs].theta, HD, i, cases[cs].factor,
                                   cases[cs].lo, cases[cs].hi, cases[cs].orig);
            ck_assert_msg(fabs(inv[i] - invr[i]) <= 1e-7 * invr[i], "kind %d pair %d: %g vs %g",
                          cases[cs].kind, i, (double)inv[i], invr[i]);
        }
        if (cases[cs].kind == SQ_ROPE_LLAMA3) {   /* the lowest frequency is divided by factor */
            double plain = ref_inv_freq(SQ_ROPE_DEFAULT, 500000, HD, half - 1, 1, 1, 1, 1);
            ck_assert(fabs(invr[half - 1] - plain / 8) <= 1e-7 * plain);
            ck_assert(invr[0] == ref_inv_freq(SQ_ROPE_DEFAULT, 500000, HD, 0, 1, 1, 1, 1));
        }
        float *q = rand_vec(R * H * HD, -1, 1), *k = rand_vec(R * KVH * HD, -1, 1);
        float *qo = malloc(R * H * HD * 4), *ko = malloc(R * KVH * HD * 4);
        void *q_d = up(be, q, R * H * HD * 4), *k_d = up(be, k, R * KVH * HD * 4);
        void *f_d = up(be, inv, half * 4);
        sq_error err;
        ck_assert_int_eq(sq_backend_rope(be, q_d, k_d, R, H, KVH, HD, pos, f_d, &err), SQ_OK);
        down(be, qo, q_d, R * H * HD * 4);
        down(be, ko, k_d, R * KVH * HD * 4);
        for (int r = 0; r < R; r++)
            for (int which = 0; which < 2; which++) {
                int nh = which ? KVH : H;
                const float *src = which ? k : q, *got = which ? ko : qo;
                for (int h = 0; h < nh; h++)
                    for (int i = 0; i < half; i++) {
                        double ang = (double)((float)pos[r] * (float)invr[i]);
                        int64_t b = ((int64_t)r * nh + h) * HD;
                        double x1 = src[b + i], x2 = src[b + i + half];
                        double r1 = x1 * cos(ang) - x2 * sin(ang), r2 = x2 * cos(ang) + x1 * sin(ang);
                        ck_assert_msg(fabs(got[b + i] - r1) <= 1e-6 && fabs(got[b + i + half] - r2) <= 1e-6,
                                      "kind %d row %d head %d pair %d", cases[cs].kind, r, h, i);
                    }
            }
        free(q); free(k); free(qo); free(ko);
        sq_backend_free(be, q_d); sq_backend_free(be, k_d); sq_backend_free(be, f_d);
    }
    sq_backend_destroy(be);
}
END_TEST

/* ---- attention ---------------------------------------------------------------------------- */

START_TEST(test_attention) {
    rng_seed(3);
    sq_backend *be = mk_be(2, NULL);
    const int H = 4, KVH = 2, HD = 16, T = 7, SLOTS = 3, MAXS = 16;
    const int qw = H * HD, kw = KVH * HD;
    float *q = rand_vec(T * qw, -2, 2), *k = rand_vec(T * kw, -2, 2), *v = rand_vec(T * kw, -1, 1);
    size_t cache_bytes = (size_t)SLOTS * MAXS * kw * 4;
    sq_kv_layer kv1 = {up(be, NULL, cache_bytes), up(be, NULL, cache_bytes), SLOTS, MAXS, KVH, HD};
    sq_kv_layer kv2 = {up(be, NULL, cache_bytes), up(be, NULL, cache_bytes), SLOTS, MAXS, KVH, HD};
    void *q_d = up(be, q, T * qw * 4), *k_d = up(be, k, T * kw * 4), *v_d = up(be, v, T * kw * 4);
    void *o_d = up(be, NULL, T * qw * 4);
    sq_error err;
    /* prefill: one sequence, T tokens, slot 1 */
    sq_seq_span sp = {1, 0, T};
    ck_assert_int_eq(sq_backend_attention(be, q_d, k_d, v_d, &kv1, H, 1, &sp, o_d, &err), SQ_OK);
    float *pre = malloc(T * qw * 4);
    down(be, pre, o_d, T * qw * 4);
    /* float64 reference */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / KVH);
            double sc[16], mx = -1e300, sum = 0;
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
                ck_assert_msg(fabs(pre[t * qw + h * HD + i] - o) <= 1e-5, "t %d h %d i %d: %g vs %g",
                              t, h, i, pre[t * qw + h * HD + i], o);
            }
        }
    /* decode the same sequence token by token in slot 2 of another cache, while a second
     * sequence (slot 0, other values) is decoded in the same calls: bit-identical rows */
    float *q2 = rand_vec(T * qw, -2, 2), *k2 = rand_vec(T * kw, -2, 2), *v2 = rand_vec(T * kw, -1, 1);
    void *qb = up(be, NULL, 2 * qw * 4), *kb = up(be, NULL, 2 * kw * 4), *vb = up(be, NULL, 2 * kw * 4);
    void *ob = up(be, NULL, 2 * qw * 4);
    float *row = malloc(2 * qw * 4);
    for (int t = 0; t < T; t++) {
        sq_backend_upload(be, qb, q2 + t * qw, qw * 4, &err);
        sq_backend_upload(be, (char *)qb + qw * 4, q + t * qw, qw * 4, &err);
        sq_backend_upload(be, kb, k2 + t * kw, kw * 4, &err);
        sq_backend_upload(be, (char *)kb + kw * 4, k + t * kw, kw * 4, &err);
        sq_backend_upload(be, vb, v2 + t * kw, kw * 4, &err);
        sq_backend_upload(be, (char *)vb + kw * 4, v + t * kw, kw * 4, &err);
        sq_seq_span two[2] = {{0, t, 1}, {2, t, 1}};
        ck_assert_int_eq(sq_backend_attention(be, qb, kb, vb, &kv2, H, 2, two, ob, &err), SQ_OK);
        down(be, row, ob, 2 * qw * 4);
        ck_assert_msg(memcmp(row + qw, pre + t * qw, qw * 4) == 0, "decode step %d differs from prefill", t);
    }
    /* errors: a slot outside the cache, a duplicate slot, positions past max_seq */
    sq_seq_span bad1 = {3, 0, 1}, bad2[2] = {{0, 0, 1}, {0, 1, 1}}, bad3 = {0, 15, 2};
    ck_assert_int_eq(sq_backend_attention(be, qb, kb, vb, &kv2, H, 1, &bad1, ob, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "outside the cache"));
    ck_assert_int_eq(sq_backend_attention(be, qb, kb, vb, &kv2, H, 2, bad2, ob, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_backend_attention(be, qb, kb, vb, &kv2, H, 1, &bad3, ob, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_backend_attention(be, qb, kb, vb, &kv2, 3, 1, &sp, ob, &err), SQ_ERR_INVALID);
    free(q); free(k); free(v); free(q2); free(k2); free(v2); free(pre); free(row);
    void *ptrs[] = {kv1.k_d, kv1.v_d, kv2.k_d, kv2.v_d, q_d, k_d, v_d, o_d, qb, kb, vb, ob};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) sq_backend_free(be, ptrs[i]);
    sq_backend_destroy(be);
}
END_TEST

/* ---- Linear ------------------------------------------------------------------------------- */

/* A 4-bit weight built by hand in bnb's layout: random codes and absmax. */
static void hand_qtensor(sq_quant_type type, int64_t N, int64_t K, int64_t bs, sq_qtensor *q) {
    memset(q, 0, sizeof *q);
    q->type = type;
    q->blocksize = bs;
    q->n_elements = (uint64_t)(N * K);
    q->shape[0] = N;
    q->shape[1] = K;
    q->dtype = SQ_DTYPE_BF16;
    q->packed = malloc((q->n_elements + 1) / 2);
    for (uint64_t i = 0; i < (q->n_elements + 1) / 2; i++) q->packed[i] = (uint8_t)rng_u64();
    q->n_blocks = (q->n_elements + bs - 1) / bs;
    q->absmax = malloc(q->n_blocks * 4);
    for (uint64_t b = 0; b < q->n_blocks; b++) q->absmax[b] = rng_f(0.01f, 0.2f);
}

/* The dequantized weight, written plainly from bnb's layout (even element = high nibble). */
static float *deq_plain(const sq_qtensor *q) {
    const float *code = sq_quant_code_table(q->type);
    float *w = malloc(q->n_elements * 4);
    for (uint64_t i = 0; i < q->n_elements; i++) {
        uint8_t b = q->packed[i / 2];
        int c = (i & 1) ? (b & 15) : (b >> 4);
        float am = q->double_quant ? sq_qtensor_absmax(q, i / q->blocksize) : q->absmax[i / q->blocksize];
        w[i] = code[c] * am;
    }
    return w;
}

/* out = x wᵀ (+b) through the backend. */
static float *run_linear(sq_backend *be, const sq_weight *w, const sq_weight *b, const float *x,
                         int64_t R) {
    int64_t N = sq_weight_rows(w), K = sq_weight_cols(w);
    void *x_d = up(be, x, R * K * 4), *y_d = up(be, NULL, R * N * 4);
    float *y = malloc(R * N * 4);
    sq_error err;
    ck_assert_int_eq(sq_backend_linear(be, x_d, R, w, b, y_d, &err), SQ_OK);
    down(be, y, y_d, R * N * 4);
    sq_backend_free(be, x_d);
    sq_backend_free(be, y_d);
    return y;
}

/* |y - ref| <= (K/8 + 8) 2^-23 sum |w x| (one fused chain of K/8, a 3-level sum, the tail) */
static void check_vs_f64(const float *y, const float *wf, const float *bias, const float *x,
                         int64_t R, int64_t N, int64_t K) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t o = 0; o < N; o++) {
            double ref = bias ? bias[o] : 0, mag = fabs(ref);
            for (int64_t k = 0; k < K; k++) {
                ref += (double)wf[o * K + k] * x[r * K + k];
                mag += fabs((double)wf[o * K + k] * x[r * K + k]);
            }
            double bound = (K / 8.0 + 8 + (K % 8)) * ldexp(1, -23) * mag;
            ck_assert_msg(fabs(y[r * N + o] - ref) <= bound, "r %lld o %lld: %.9g vs %.9g (bound %g)",
                          (long long)r, (long long)o, y[r * N + o], ref, bound);
        }
}

static const int64_t ROWS[] = {1, 2, 3, 5, 8, 67, 130};

START_TEST(test_linear_4bit) {
    rng_seed(4);
    const char *isas[] = {NULL, "avx2", "portable"};
    sq_backend *bes[4] = {mk_be(2, NULL), mk_be(1, NULL), mk_be(2, "avx2"), mk_be(2, "portable")};
    const int64_t N = 45, K = 352;   /* 5 full 64-groups and a half group */
    (void)isas;
    for (int variant = 0; variant < 4; variant++) {
        sq_qtensor q;
        if (variant < 2) {
            hand_qtensor(variant ? SQ_QUANT_FP4 : SQ_QUANT_NF4, N, K, variant ? 128 : 64, &q);
        } else {   /* the quant module's own output, with double quant and blocks across rows */
            float *src = rand_vec(N * K, -1, 1);
            sq_quant_scheme s = {.type = SQ_QUANT_NF4, .blocksize = 64, .dense_dtype = SQ_DTYPE_BF16};
            s.type = variant == 2 ? SQ_QUANT_NF4 : SQ_QUANT_FP4;
            s.double_quant = true;
            s.blocksize = variant == 2 ? 64 : 256;   /* 256 does not divide 320: blocks cross rows */
            sq_error err;
            ck_assert_int_eq(sq_quant_4bit(src, N, K, SQ_DTYPE_BF16, &s, NULL, &q, &err), SQ_OK);
            free(src);
        }
        float *wf = deq_plain(&q);
        float *x = rand_vec(130 * K, -1, 1), *bias = rand_vec(N, -1, 1);
        float *ref_rows = NULL;
        for (int b = 0; b < 4; b++) {
            sq_backend *be = bes[b];
            sq_weight *w = NULL, *bw = dense_w(be, bias, 1, N, false);
            sq_error err;
            ck_assert_int_eq(sq_backend_weight_4bit(be, "q", &q, &w, &err), SQ_OK);
            ck_assert_uint_eq(sq_weight_bytes(w), N * K / 2 + q.n_blocks * 4);
            for (size_t ri = 0; ri < sizeof ROWS / sizeof *ROWS; ri++) {
                int64_t R = ROWS[ri];
                float *y = run_linear(be, w, bw, x, R);
                if (!ref_rows) {
                    check_vs_f64(y, wf, bias, x, R, N, K);
                    if (R == 130) ref_rows = y, y = NULL;
                } else {
                    /* every row equals the same row of the 130-row batch, bit for bit, on every
                     * thread count and ISA */
                    ck_assert_msg(memcmp(y, ref_rows, R * N * 4) == 0,
                                  "variant %d backend %d rows %lld differ", variant, b, (long long)R);
                }
                free(y);
            }
            /* without bias: ref - bias rounded */
            float *y1 = run_linear(be, w, NULL, x, 1);
            check_vs_f64(y1, wf, NULL, x, 1, N, K);
            free(y1);
            sq_backend_weight_free(be, w);
            sq_backend_weight_free(be, bw);
        }
        /* the first run (R = 1 .. 67) was checked; the batch of 130 rows too against f64 */
        check_vs_f64(ref_rows, wf, bias, x, 130, N, K);
        free(ref_rows);
        free(wf); free(x); free(bias);
        sq_qtensor_free(&q);
    }
    /* a lying block count */
    sq_qtensor q;
    hand_qtensor(SQ_QUANT_NF4, 4, 48, 64, &q);
    sq_weight *w = NULL;
    sq_error err;
    q.n_blocks = 1;
    ck_assert_int_eq(sq_backend_weight_4bit(bes[0], "x", &q, &w, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(w);
    sq_qtensor_free(&q);
    for (int b = 0; b < 4; b++) sq_backend_destroy(bes[b]);
}
END_TEST

/* in_features that are not a multiple of 32 (or of 8, or even): rows start anywhere in bnb's
 * flat layout, blocks cross rows and 8-element chunks straddle two blocks.  Every K against
 * float64 on the dequantized weights; every row count, thread count and ISA bit for bit equal
 * to the 1-row result; the 64-row result equal to the dense F32 weight of the dequantized
 * values (same order, same operands). */
START_TEST(test_linear_4bit_any_width) {
    rng_seed(41);
    sq_backend *bes[3] = {mk_be(2, NULL), mk_be(1, NULL), mk_be(2, "portable")};
    static const int64_t Ks[] = {1, 7, 8, 33, 63, 65, 100, 128, 172, 200, 360};
    static const int64_t Rs[] = {1, 2, 3, 5, 9, 64};
    const int64_t N = 13;
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
        for (int variant = 0; variant < 3; variant++) {
            const int64_t K = Ks[ki];
            sq_qtensor q;
            if (variant < 2) {   /* blocks of 32 (FP4) and 64 (NF4) */
                hand_qtensor(variant ? SQ_QUANT_FP4 : SQ_QUANT_NF4, N, K, variant ? 32 : 64, &q);
            } else {             /* the quant module's output, double quant, blocks of 128 */
                float *src = rand_vec(N * K, -1, 1);
                sq_quant_scheme sc = {.type = SQ_QUANT_NF4, .blocksize = 128,
                                      .dense_dtype = SQ_DTYPE_BF16, .double_quant = true};
                sq_error e;
                ck_assert_int_eq(sq_quant_4bit(src, N, K, SQ_DTYPE_BF16, &sc, NULL, &q, &e), SQ_OK);
                free(src);
            }
            float *wf = deq_plain(&q);
            float *x = rand_vec(64 * K, -1, 1), *bias = rand_vec(N, -1, 1);
            float *ref = NULL;   /* rows computed one at a time on the first backend */
            for (int b = 0; b < 3; b++) {
                sq_backend *be = bes[b];
                sq_weight *w = NULL, *bw = dense_w(be, bias, 1, N, false);
                sq_error err;
                ck_assert_msg(sq_backend_weight_4bit(be, "q", &q, &w, &err) == SQ_OK, "K %lld: %s",
                              (long long)K, err.msg);
                ck_assert_int_eq(sq_weight_cols(w), K);
                ck_assert_uint_ge(sq_weight_bytes(w), (N * K + 1) / 2 + q.n_blocks * 4);
                ck_assert_uint_le(sq_weight_bytes(w), N * (K / 2 + 32) + q.n_blocks * 4);
                if (!ref) {
                    ref = malloc(64 * N * 4);
                    for (int64_t r = 0; r < 64; r++) {
                        float *y = run_linear(be, w, bw, x + r * K, 1);
                        memcpy(ref + r * N, y, N * 4);
                        free(y);
                    }
                    check_vs_f64(ref, wf, bias, x, 64, N, K);
                    /* the dense path on the dequantized values: the same order, the same bits */
                    sq_weight *dw = dense_w(be, wf, N, K, false);
                    float *yd = run_linear(be, dw, bw, x, 64);
                    ck_assert_msg(memcmp(yd, ref, 64 * N * 4) == 0, "K %lld variant %d: 4-bit != dense",
                                  (long long)K, variant);
                    free(yd);
                    sq_backend_weight_free(be, dw);
                }
                for (size_t ri = 0; ri < sizeof Rs / sizeof *Rs; ri++) {
                    float *y = run_linear(be, w, bw, x, Rs[ri]);
                    ck_assert_msg(memcmp(y, ref, Rs[ri] * N * 4) == 0,
                                  "K %lld variant %d backend %d rows %lld differ from alone",
                                  (long long)K, variant, b, (long long)Rs[ri]);
                    free(y);
                }
                sq_backend_weight_free(be, w);
                sq_backend_weight_free(be, bw);
            }
            free(ref); free(wf); free(x); free(bias);
            sq_qtensor_free(&q);
        }
    for (int b = 0; b < 3; b++) sq_backend_destroy(bes[b]);
}
END_TEST

/* A weight in layout G64 (the loader quantizes straight into it for the CPU backend) is held
 * exactly as the repack of its BNB twin: every Linear result bit-identical (f32 and int8
 * activations, AVX2 and portable, 1 / 3 / 40 rows), the same bytes held; taken over without a
 * copy when given up (q's packed, and absmax without double quant, set NULL); refused where the
 * width does not allow G64. */
START_TEST(test_linear_4bit_g64) {
    rng_seed(77);
    sq_backend *bes[3] = {mk_be(2, NULL), mk_be(2, "portable"), mk_be(2, NULL)};
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_cpu_set_activations(bes[2], SQ_CPU_ACT_INT8, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_q4_layout(bes[0]), SQ_Q4_LAYOUT_G64);
    static const int64_t Ks[] = {64, 128, 448};
    static const int64_t Rs[] = {1, 3, 40};
    const int64_t N = 21;
    int checked = 0;
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
        for (int variant = 0; variant < 3; variant++) {
            const int64_t K = Ks[ki];
            float *src = rand_vec(N * K, -1, 1), *x = rand_vec(40 * K, -1, 1);
            sq_quant_scheme sc = {.type = variant == 1 ? SQ_QUANT_FP4 : SQ_QUANT_NF4,
                                  .blocksize = variant == 2 ? 128 : 64,
                                  .dense_dtype = SQ_DTYPE_BF16, .double_quant = variant == 2};
            sq_qtensor q;
            ck_assert_int_eq(sq_quant_4bit(src, N, K, SQ_DTYPE_BF16, &sc, NULL, &q, &err), SQ_OK);
            for (int b = 0; b < 3; b++) {
                sq_backend *be = bes[b];
                sq_weight *w0 = NULL, *w1 = NULL, *w2 = NULL;
                ck_assert_int_eq(sq_backend_weight_4bit(be, "q", &q, &w0, &err), SQ_OK);
                /* G64 twins: one uploaded as a copy, one given up */
                sq_qtensor g = q, t = q;
                g.packed = malloc(N * K / 2);
                t.packed = malloc(N * K / 2);
                sq_q4_convert_groups(q.packed, g.packed, (uint64_t)(N * K / 64), true);
                memcpy(t.packed, g.packed, N * K / 2);
                g.layout = t.layout = SQ_Q4_LAYOUT_G64;
                float *t_absmax = NULL;
                if (!q.double_quant) {
                    t_absmax = t.absmax = malloc(q.n_blocks * 4);
                    memcpy(t.absmax, q.absmax, q.n_blocks * 4);
                }
                ck_assert_int_eq(sq_backend_weight_4bit(be, "g", &g, &w1, &err), SQ_OK);
                ck_assert_int_eq(sq_backend_weight_4bit_take(be, "t", &t, &w2, &err), SQ_OK);
                ck_assert_ptr_null(t.packed);   /* taken */
                ck_assert_ptr_nonnull(g.packed);
                if (!q.double_quant) ck_assert_ptr_null(t.absmax);
                else ck_assert_ptr_eq(t.absmax_q, q.absmax_q);   /* left to the caller */
                ck_assert_uint_eq(sq_weight_bytes(w1), sq_weight_bytes(w0));
                ck_assert_uint_eq(sq_weight_bytes(w2), sq_weight_bytes(w0));
                for (size_t ri = 0; ri < sizeof Rs / sizeof *Rs; ri++) {
                    float *y0 = run_linear(be, w0, NULL, x, Rs[ri]);
                    float *y1 = run_linear(be, w1, NULL, x, Rs[ri]);
                    float *y2 = run_linear(be, w2, NULL, x, Rs[ri]);
                    ck_assert_msg(!memcmp(y0, y1, (size_t)(Rs[ri] * N * 4)) &&
                                      !memcmp(y0, y2, (size_t)(Rs[ri] * N * 4)),
                                  "K %lld variant %d backend %d rows %lld: G64 != BNB", (long long)K,
                                  variant, b, (long long)Rs[ri]);
                    free(y0);
                    free(y1);
                    free(y2);
                    checked++;
                }
                free(g.packed);
                (void)t_absmax;   /* taken: the backend frees it */
                sq_backend_weight_free(be, w0);
                sq_backend_weight_free(be, w1);
                sq_backend_weight_free(be, w2);
            }
            free(src);
            free(x);
            sq_qtensor_free(&q);
        }
    ck_assert_int_eq(checked, 3 * 3 * 3 * 3);
    /* a width that is not whole groups of 64 cannot be G64 */
    sq_qtensor q;
    sq_quant_scheme sc = {.type = SQ_QUANT_NF4, .blocksize = 64, .dense_dtype = SQ_DTYPE_BF16};
    float *src = rand_vec(4 * 96, -1, 1);
    ck_assert_int_eq(sq_quant_4bit(src, 4, 96, SQ_DTYPE_BF16, &sc, NULL, &q, &err), SQ_OK);
    q.layout = SQ_Q4_LAYOUT_G64;
    sq_weight *w = NULL;
    ck_assert_int_eq(sq_backend_weight_4bit_take(bes[0], "bad", &q, &w, &err), SQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "not a layout it can have"), "%s", err.msg);
    ck_assert_ptr_null(w);
    ck_assert_ptr_nonnull(q.packed);
    sq_qtensor_free(&q);
    free(src);
    for (int b = 0; b < 3; b++) sq_backend_destroy(bes[b]);
}
END_TEST

/* A dense weight given up (sq_backend_weight_dense_take): F32 and BF16 are kept as they are
 * (the caller's pointer set NULL, the same Linear bits and bytes as a copied weight), F16 is
 * converted and stays the caller's. */
START_TEST(test_weight_dense_take) {
    rng_seed(78);
    sq_backend *be = mk_be(2, NULL);
    sq_error err;
    sq_error_init(&err, -1);
    const int64_t N = 19, K = 40;
    float *wf = rand_vec(N * K, -1, 1), *x = rand_vec(5 * K, -1, 1);
    const sq_dtype dts[3] = {SQ_DTYPE_F32, SQ_DTYPE_BF16, SQ_DTYPE_F16};
    for (int d = 0; d < 3; d++) {
        const size_t es = dts[d] == SQ_DTYPE_F32 ? 4 : 2, bytes = (size_t)(N * K) * es;
        void *src = malloc((bytes + 63) & ~(size_t)63);
        if (dts[d] == SQ_DTYPE_F32) memcpy(src, wf, bytes);
        else if (dts[d] == SQ_DTYPE_BF16) sq_f32_to_bf16(wf, src, (size_t)(N * K));
        else for (int64_t i = 0; i < N * K; i++) ((uint16_t *)src)[i] = sq_qm_f32_to_f16(wf[i]);
        sq_weight *w0 = NULL, *w1 = NULL;
        ck_assert_int_eq(sq_backend_weight_dense(be, "w", dts[d], src, N, K, &w0, &err), SQ_OK);
        void *give = src;
        ck_assert_int_eq(sq_backend_weight_dense_take(be, "w", dts[d], &give, N, K, &w1, &err), SQ_OK);
        if (dts[d] == SQ_DTYPE_F16) {
            ck_assert_ptr_eq(give, src);   /* converted: still the caller's */
            free(src);
        } else {
            ck_assert_ptr_null(give);      /* kept: the backend frees it */
        }
        ck_assert_uint_eq(sq_weight_bytes(w1), sq_weight_bytes(w0));
        float *y0 = run_linear(be, w0, NULL, x, 5), *y1 = run_linear(be, w1, NULL, x, 5);
        ck_assert_msg(!memcmp(y0, y1, (size_t)(5 * N * 4)), "dtype %d: taken != copied", (int)dts[d]);
        free(y0);
        free(y1);
        sq_backend_weight_free(be, w0);
        sq_backend_weight_free(be, w1);
    }
    void *none = NULL;
    sq_weight *w = NULL;
    ck_assert_int_eq(sq_backend_weight_dense_take(be, "w", SQ_DTYPE_F32, NULL, N, K, &w, &err),
                     SQ_ERR_INVALID);
    ck_assert_int_eq(sq_backend_weight_dense_take(be, "w", SQ_DTYPE_F32, &none, N, K, &w, &err),
                     SQ_ERR_INVALID);
    free(wf);
    free(x);
    sq_backend_destroy(be);
}
END_TEST

/* Big enough for the thread pool and the many-row tiles (several panels, odd output count):
 * 1, 2, 3, 8 and 40 rows on 1 and 2 threads, AVX2 and portable, all bit-identical per row. */
START_TEST(test_linear_4bit_tiles) {
    rng_seed(43);
    sq_backend *bes[3] = {mk_be(2, NULL), mk_be(1, NULL), mk_be(1, "portable")};
    static const int64_t Ks[] = {1024, 300};
    static const int64_t Rs[] = {1, 2, 3, 8, 40};
    const int64_t N = 71;
    for (size_t ki = 0; ki < 2; ki++) {
        const int64_t K = Ks[ki];
        sq_qtensor q;
        hand_qtensor(SQ_QUANT_NF4, N, K, 64, &q);
        float *wf = deq_plain(&q), *x = rand_vec(40 * K, -1, 1);
        float *ref = NULL;
        for (int b = 0; b < 3; b++) {
            sq_weight *w = NULL;
            sq_error err;
            ck_assert_int_eq(sq_backend_weight_4bit(bes[b], "q", &q, &w, &err), SQ_OK);
            for (size_t ri = 0; ri < sizeof Rs / sizeof *Rs; ri++) {
                float *y = run_linear(bes[b], w, NULL, x, Rs[ri]);
                if (!ref) {
                    check_vs_f64(y, wf, NULL, x, 1, N, K);
                    ref = malloc(40 * N * 4);
                    for (int64_t r = 0; r < 40; r++) {   /* each row alone */
                        float *y1 = run_linear(bes[b], w, NULL, x + r * K, 1);
                        memcpy(ref + r * N, y1, N * 4);
                        free(y1);
                    }
                }
                ck_assert_msg(memcmp(y, ref, Rs[ri] * N * 4) == 0, "K %lld backend %d rows %lld",
                              (long long)K, b, (long long)Rs[ri]);
                free(y);
            }
            sq_backend_weight_free(bes[b], w);
        }
        check_vs_f64(ref, wf, NULL, x, 40, N, K);
        free(ref); free(wf); free(x);
        sq_qtensor_free(&q);
    }
    for (int b = 0; b < 3; b++) sq_backend_destroy(bes[b]);
}
END_TEST

START_TEST(test_linear_dense) {
    rng_seed(5);
    sq_backend *bes[3] = {mk_be(2, NULL), mk_be(1, "avx2"), mk_be(2, "portable")};
    const int64_t N = 37, K = 77;   /* K % 8 != 0: the scalar tail */
    for (int bf = 0; bf < 2; bf++) {
        float *wt = rand_vec(N * K, -1, 1), *x = rand_vec(130 * K, -1, 1), *bias = rand_vec(N, -1, 1);
        float *wf = malloc(N * K * 4), *bf_bias = malloc(N * 4);
        for (int64_t i = 0; i < N * K; i++) wf[i] = bf ? bf16_round(wt[i]) : wt[i];
        for (int64_t i = 0; i < N; i++) bf_bias[i] = bf ? bf16_round(bias[i]) : bias[i];
        float *ref_rows = NULL;
        for (int b = 0; b < 3; b++) {
            sq_weight *w = dense_w(bes[b], wt, N, K, bf), *bw = dense_w(bes[b], bias, 1, N, bf);
            ck_assert_uint_eq(sq_weight_bytes(w), N * K * (bf ? 2 : 4));
            for (size_t ri = 0; ri < sizeof ROWS / sizeof *ROWS; ri++) {
                int64_t R = ROWS[ri];
                float *y = run_linear(bes[b], w, bw, x, R);
                if (b == 0) check_vs_f64(y, wf, bf_bias, x, R, N, K);
                if (!ref_rows && R == 130) { ref_rows = y; continue; }
                if (ref_rows) ck_assert_msg(memcmp(y, ref_rows, R * N * 4) == 0, "bf %d backend %d rows %lld", bf, b, (long long)R);
                free(y);
            }
            float *y1 = run_linear(bes[b], w, bw, x, 1);
            ck_assert_int_eq(memcmp(y1, ref_rows, N * 4), 0);
            free(y1);
            sq_backend_weight_free(bes[b], w);
            sq_backend_weight_free(bes[b], bw);
        }
        free(ref_rows); free(wt); free(x); free(bias); free(wf); free(bf_bias);
    }
    /* a bias of the wrong length */
    float one[8] = {0};
    sq_weight *w = dense_w(bes[0], one, 2, 4, false), *bw = dense_w(bes[0], one, 1, 3, false);
    sq_error err;
    void *x_d = up(bes[0], one, 32), *y_d = up(bes[0], NULL, 32);
    ck_assert_int_eq(sq_backend_linear(bes[0], x_d, 1, w, bw, y_d, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_backend_linear(bes[0], x_d, 100000, w, NULL, y_d, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "exceed the reserved"));
    sq_backend_free(bes[0], x_d); sq_backend_free(bes[0], y_d);
    sq_backend_weight_free(bes[0], w); sq_backend_weight_free(bes[0], bw);
    ck_assert_int_eq(sq_backend_weight_dense(bes[0], "t", SQ_DTYPE_I32, one, 1, 2, &w, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(w);
    for (int b = 0; b < 3; b++) sq_backend_destroy(bes[b]);
}
END_TEST

/* ---- embedding, add, swiglu ----------------------------------------------------------------- */

START_TEST(test_embed_elementwise) {
    rng_seed(6);
    sq_backend *be = mk_be(2, NULL);
    const int64_t V = 50, D = 24;
    float *tab = rand_vec(V * D, -1, 1);
    sq_weight *t = dense_w(be, tab, V, D, true);
    int32_t ids[4] = {3, 0, 49, 3};
    void *ids_d = up(be, ids, sizeof ids), *o_d = up(be, NULL, 4 * D * 4);
    sq_error err;
    ck_assert_int_eq(sq_backend_embed(be, t, ids_d, 4, o_d, &err), SQ_OK);
    float out[4 * 24];
    down(be, out, o_d, sizeof out);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < D; i++) ck_assert(out[r * D + i] == bf16_round(tab[ids[r] * D + i]));
    int32_t bad[2] = {1, 50};
    sq_backend_upload(be, ids_d, bad, sizeof bad, &err);
    ck_assert_int_eq(sq_backend_embed(be, t, ids_d, 2, o_d, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "token id 50 at row 1"));

    const int64_t n = 1000;
    float *a = rand_vec(n, -8, 8), *b = rand_vec(n, -2, 2), *y = malloc(n * 4);
    void *a_d = up(be, a, n * 4), *b_d = up(be, b, n * 4), *y_d = up(be, NULL, n * 4);
    ck_assert_int_eq(sq_backend_add(be, a_d, b_d, n, y_d, &err), SQ_OK);
    down(be, y, y_d, n * 4);
    for (int64_t i = 0; i < n; i++) ck_assert(y[i] == a[i] + b[i]);
    ck_assert_int_eq(sq_backend_swiglu(be, a_d, b_d, n, y_d, &err), SQ_OK);
    down(be, y, y_d, n * 4);
    for (int64_t i = 0; i < n; i++) {
        double ref = (double)a[i] / (1 + exp(-(double)a[i])) * b[i];
        ck_assert_msg(fabs(y[i] - ref) <= 4e-7 * fabs(ref) + 1e-30, "%g vs %g", y[i], ref);
    }
    free(tab); free(a); free(b); free(y);
    void *ptrs[] = {ids_d, o_d, a_d, b_d, y_d};
    for (int i = 0; i < 5; i++) sq_backend_free(be, ptrs[i]);
    sq_backend_weight_free(be, t);
    sq_backend_destroy(be);
}
END_TEST

/* ---- sampling ----------------------------------------------------------------------------- */

static int32_t sample1(sq_backend *be, const float *logits, int64_t V, sq_sample_params p,
                       uint64_t seq, uint64_t step) {
    void *l_d = up(be, logits, V * 4);
    int32_t id = -1;
    sq_error err;
    ck_assert_int_eq(sq_backend_sample(be, l_d, 1, V, &p, &seq, &step, &id, &err), SQ_OK);
    sq_backend_free(be, l_d);
    return id;
}

START_TEST(test_sampling) {
    rng_seed(7);
    sq_backend *be = mk_be(2, NULL);
    /* greedy: lowest index among equal maxima */
    float tie[6] = {0.5f, 2.0f, -1.0f, 2.0f, 2.0f, 1.0f};
    sq_sample_params greedy = {0.0f, 0, 1.0f, 1};
    ck_assert_int_eq(sample1(be, tie, 6, greedy, 0, 0), 1);
    /* top_k = 1 and a tiny top_p are greedy, whatever the temperature and seed */
    const int64_t V = 1000;
    float *lg = rand_vec(V, -5, 5);
    int32_t g = sample1(be, lg, V, greedy, 0, 0);
    for (uint64_t s = 0; s < 20; s++) {
        sq_sample_params k1 = {1.5f, 1, 1.0f, s}, p0 = {1.5f, 0, 1e-6f, s};
        ck_assert_int_eq(sample1(be, lg, V, k1, s, s), g);
        ck_assert_int_eq(sample1(be, lg, V, p0, s, s), g);
        ck_assert_int_eq(sample1(be, tie, 6, k1, s, s), 1);
    }
    /* top-k keeps exactly the k best (partial selection for k <= 64, a sort above) */
    int32_t *order = malloc(V * 4);
    for (int64_t i = 0; i < V; i++) order[i] = (int32_t)i;
    for (int64_t i = 1; i < V; i++)   /* insertion sort by decreasing logit, ties low index */
        for (int64_t j = i; j > 0 && (lg[order[j]] > lg[order[j - 1]] ||
                                      (lg[order[j]] == lg[order[j - 1]] && order[j] < order[j - 1])); j--) {
            int32_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    int ks[2] = {10, 100};
    for (int ki = 0; ki < 2; ki++) {
        bool seen_last = false;
        for (uint64_t d = 0; d < 400; d++) {
            sq_sample_params tk = {8.0f, ks[ki], 1.0f, 9};
            int32_t id = sample1(be, lg, V, tk, 3, d);
            int64_t rank = 0;
            while (order[rank] != id) rank++;
            ck_assert_msg(rank < ks[ki], "top_k %d drew rank %lld", ks[ki], (long long)rank);
            seen_last |= rank >= ks[ki] / 2;
        }
        ck_assert(seen_last);   /* a hot temperature reaches the lower half of the kept set */
    }
    free(order);
    /* a row of NaN logits falls back to greedy, whose argmax keeps the first element when no
     * logit compares greater: id 0, sampled or greedy, whatever the seed */
    float nan4[4] = {NAN, NAN, NAN, NAN};
    sq_sample_params hot = {1.0f, 0, 0.9f, 1};
    ck_assert_int_eq(sample1(be, nan4, 4, hot, 0, 0), 0);
    ck_assert_int_eq(sample1(be, nan4, 4, hot, 5, 3), 0);
    ck_assert_int_eq(sample1(be, nan4, 4, greedy, 0, 0), 0);
    /* frequencies: p = (0.1, 0.2, 0.3, 0.4) at T = 1, with top-k / top-p / temperature */
    float lp[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    struct { sq_sample_params p; double expect[4]; } cases[] = {
        {{1.0f, 0, 1.0f, 42}, {0.1, 0.2, 0.3, 0.4}},
        {{1.0f, 2, 1.0f, 43}, {0, 0, 3.0 / 7, 4.0 / 7}},
        {{1.0f, 0, 0.65f, 44}, {0, 0, 3.0 / 7, 4.0 / 7}},
        {{0.5f, 0, 1.0f, 45}, {0.01 / 0.3, 0.04 / 0.3, 0.09 / 0.3, 0.16 / 0.3}},
    };
    const int DRAWS = 20000;
    const int64_t batch = 200;
    void *l_d = up(be, NULL, batch * 4 * 4);
    for (int64_t r = 0; r < batch; r++) sq_backend_upload(be, (char *)l_d + r * 16, lp, 16, NULL);
    uint64_t seq[200], step[200];
    int32_t ids[200];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int count[4] = {0};
        for (int d = 0; d < DRAWS; d += batch) {
            for (int64_t r = 0; r < batch; r++) { seq[r] = (uint64_t)r; step[r] = (uint64_t)d; }
            sq_error err;
            ck_assert_int_eq(sq_backend_sample(be, l_d, batch, 4, &cases[c].p, seq, step, ids, &err), SQ_OK);
            for (int64_t r = 0; r < batch; r++) {
                ck_assert(ids[r] >= 0 && ids[r] < 4);
                count[ids[r]]++;
                /* the same key alone gives the same token */
                if (r % 50 == 7) ck_assert_int_eq(sample1(be, lp, 4, cases[c].p, seq[r], step[r]), ids[r]);
            }
        }
        for (int i = 0; i < 4; i++) {
            double f = (double)count[i] / DRAWS, e = cases[c].expect[i];
            double sd = sqrt(e * (1 - e) / DRAWS);
            ck_assert_msg(fabs(f - e) <= 5 * sd + 1e-12, "case %zu token %d: %g vs %g", c, i, f, e);
        }
    }
    /* uniform generator: in [0, 1), depends on every key part */
    double u = sq_sample_uniform(1, 2, 3);
    ck_assert(u >= 0 && u < 1);
    ck_assert(u == sq_sample_uniform(1, 2, 3));
    ck_assert(u != sq_sample_uniform(1, 2, 4) && u != sq_sample_uniform(1, 3, 3) && u != sq_sample_uniform(2, 2, 3));
    /* vocab above the reserved one */
    sq_error err;
    int32_t id;
    uint64_t z = 0;
    ck_assert_int_eq(sq_backend_sample(be, l_d, 1, 5000, &greedy, &z, &z, &id, &err), SQ_ERR_INVALID);
    sq_backend_free(be, l_d);
    free(lg);
    sq_backend_destroy(be);
}
END_TEST

START_TEST(test_lifecycle_errors) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(5000, NULL, &err), SQ_ERR_INVALID);
    sq_backend *be = NULL;
    ck_assert_int_eq(sq_backend_create_cpu(5000, &be, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(be);
    be = mk_be(1, NULL);
    ck_assert_str_ne(sq_backend_name(be), "");
    ck_assert_int_eq(sq_backend_n_threads(be), 1);
    sq_backend_limits lim = {.max_rows = -1};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_ERR_INVALID);
    void *p = NULL;
    ck_assert_int_eq(sq_backend_alloc(be, UINT64_MAX - 8, &p, &err), SQ_ERR_NOMEM);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(sq_backend_upload(be, NULL, &lim, 4, &err), SQ_ERR_INVALID);
    sq_backend_free(be, NULL);
    sq_backend_weight_free(be, NULL);
    sq_backend_destroy(be);
    sq_backend_destroy(NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_linear_4bit);
    tcase_add_test(tc, test_linear_4bit_any_width);
    tcase_add_test(tc, test_linear_4bit_g64);
    tcase_add_test(tc, test_weight_dense_take);
    tcase_add_test(tc, test_linear_4bit_tiles);
    tcase_add_test(tc, test_linear_dense);
    tcase_add_test(tc, test_embed_elementwise);
    tcase_add_test(tc, test_sampling);
    tcase_add_test(tc, test_lifecycle_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
