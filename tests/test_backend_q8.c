/* test_backend_q8: the CPU backend's dynamic int8 activations (src/backend/cpu_q8.c).
 * Every quantized weight format (each ggml type, NF4, FP4, int8 and zero-point int8 in the
 * block-scaled form): bit-identical results across the
 * portable, AVX2 and AVX-512 VNNI paths, thread counts 1 / 2 / 3 and row counts 1 / 2 / 5 / 41
 * (the GEMV and the GEMM kernels); every value within a derived bound of a float64 dot product of
 * the dequantized weight with the float32 x; one row's quantization exact; the mode switch
 * refused on a non-CPU call and f32 mode unchanged; several Linears of one x
 * (sq_backend_linear_multi) bit-identical to one call each.  The weights interleaved by 16
 * outputs (cpu_q8i.c: Q4_0, Q8_0, int8, NF4 / FP4 with and without double quant, absmax blocks
 * 64 / 128 / 256, from BNB and from G64) give the documented order's bits on every path, also
 * used with float32 activations afterwards. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_testutil.h"
#include "shardq/backend.h"
#include "shardq/ggml_quant.h"
#include "shardq/quant.h"
#include "shardq/size.h"

#define SQ_TEST_RNG_SEED 0x51ed2701
#include "test_rng.h"

/* the quantized ggml types, then NF4 and FP4 (as negative tags) */
#define W_NF4 (-1)
#define W_FP4 (-2)
#define W_I8 (-3)     /* int8 weights in the block-scaled form: 8-bit codes, float32 scales */
#define W_I8ZP (-4)   /* the same with a bias (zero-point int8) */
static const int k_kinds[] = {SQ_GGML_Q8_0, SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q5_0,
                              SQ_GGML_Q5_1, SQ_GGML_Q4_K, SQ_GGML_Q5_K, SQ_GGML_Q6_K,
                              W_NF4,        W_FP4,        W_I8,         W_I8ZP};
#define N_KINDS ((int)(sizeof k_kinds / sizeof k_kinds[0]))
static const char *kind_name(int k) {
    return k == W_NF4 ? "NF4" : k == W_FP4 ? "FP4" : k == W_I8 ? "int8" : k == W_I8ZP ? "int8-zp"
                                                                           : sq_ggml_type_name(k);
}

/* isa: NULL (the best the CPU has), "avx2" or "portable" */
static sq_backend *mk_be(int n_threads, const char *isa, sq_cpu_activations act) {
    if (isa) setenv("SHARDQ_CPU_ISA", isa, 1);
    else unsetenv("SHARDQ_CPU_ISA");
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(n_threads, &be, &err), SQ_OK);
    unsetenv("SHARDQ_CPU_ISA");
    sq_backend_limits lim = {.max_rows = 64, .max_width = 1024, .max_vocab = 0, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_cpu_set_activations(be, act, &err), SQ_OK);
    return be;
}

/* A weight of kind k: ggml raw blocks (random codes, sane scales) or a 4-bit quantization of
 * random floats; deq gets its dequantized values (N x K). */
typedef struct {
    uint8_t *raw;
    uint64_t rb;
    sq_qtensor q;
    float *deq;
    sq_qblock_format f;   /* W_I8 / W_I8ZP */
    float *scales, *biases;
} src_w;

/* dq: NF4 / FP4 with double quant */
static void mk_src_dq(int k, int64_t N, int64_t K, int blocksize, bool dq, src_w *s) {
    memset(s, 0, sizeof *s);
    s->deq = malloc((size_t)(N * K) * 4);
    if (k == W_I8 || k == W_I8ZP) {
        s->f = (sq_qblock_format){.code_bits = 8, .code_zero = 0, .block_elems = 32,
                                  .has_bias = k == W_I8ZP, .scale_bits = 32};
        s->raw = malloc((size_t)(N * K));
        s->scales = malloc((size_t)(N * K / 32) * 4);
        s->biases = malloc((size_t)(N * K / 32) * 4);
        for (int64_t i = 0; i < N * K; i++) s->raw[i] = (uint8_t)(rng_u64() >> 24);
        for (int64_t o = 0; o < N; o++) {   /* one scale (and bias) per row, as bnb's int8 */
            float sc = rng_f(0.001f, 0.01f), bi = rng_f(-0.2f, 0.2f);
            for (int64_t b = 0; b < K / 32; b++) {
                s->scales[o * (K / 32) + b] = sc;
                s->biases[o * (K / 32) + b] = bi;
            }
            sq_qblock_dequantize_row(&s->f, s->raw + o * K, s->scales + o * (K / 32),
                                     s->f.has_bias ? s->biases + o * (K / 32) : NULL, K, s->deq + o * K);
        }
        return;
    }
    if (k < 0) {
        float *v = malloc((size_t)(N * K) * 4);
        for (int64_t i = 0; i < N * K; i++) v[i] = rng_f(-1, 1) * rng_f(0, 1);
        sq_quant_scheme sc = sq_quant_scheme_default();
        sc.type = k == W_NF4 ? SQ_QUANT_NF4 : SQ_QUANT_FP4;
        sc.blocksize = blocksize;
        sc.double_quant = dq;
        ck_assert_int_eq(sq_quant_4bit(v, N, K, SQ_DTYPE_F32, &sc, NULL, &s->q, NULL), SQ_OK);
        sq_dequant_4bit_f32(&s->q, 0, (uint64_t)(N * K), s->deq);
        free(v);
        return;
    }
    ck_assert_int_eq(sq_ggml_row_bytes(k, K, &s->rb, NULL), SQ_OK);
    uint64_t nb = s->rb * (uint64_t)N;
    s->raw = malloc(nb);
    for (uint64_t i = 0; i < nb; i++) s->raw[i] = (uint8_t)(rng_u64() >> 24);
    int64_t bb = sq_ggml_block_bytes(k), be = sq_ggml_block_elems(k);
    int d_off = k == SQ_GGML_Q6_K ? 208 : 0;
    int m_off = (k == SQ_GGML_Q4_1 || k == SQ_GGML_Q5_1 || k == SQ_GGML_Q4_K || k == SQ_GGML_Q5_K) ? 2 : -1;
    for (int64_t b = 0; b < N * K / be; b++) {
        uint16_t d = (uint16_t)(0x1800 + (rng_u64() % 0x2400)), m = (uint16_t)(d ^ 0x8000);
        memcpy(s->raw + b * bb + d_off, &d, 2);
        if (m_off >= 0) memcpy(s->raw + b * bb + m_off, &m, 2);
    }
    for (int64_t o = 0; o < N; o++)
        sq_ggml_dequantize_row((sq_ggml_type)k, s->raw + o * s->rb, s->deq + o * K, K);
}

static void mk_src(int k, int64_t N, int64_t K, int blocksize, src_w *s) {
    mk_src_dq(k, N, K, blocksize, false, s);
}

static void free_src(src_w *s) {
    free(s->raw);
    free(s->scales);
    free(s->biases);
    free(s->deq);
    if (s->q.packed) sq_qtensor_free(&s->q);
}

static sq_weight *mk_w(sq_backend *be, int k, const src_w *s, int64_t N, int64_t K) {
    sq_weight *w = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status st;
    if (k == W_I8 || k == W_I8ZP)
        st = sq_backend_weight_qblock(be, "blk.0.ffn_up.weight", &s->f, N, K, s->raw, s->scales,
                                      s->f.has_bias ? s->biases : NULL, &w, &err);
    else if (k < 0)
        st = sq_backend_weight_4bit(be, "blk.0.ffn_up.weight", &s->q, &w, &err);
    else
        st = sq_backend_weight_ggml(be, "blk.0.ffn_up.weight", (sq_ggml_type)k, s->raw, N, K, &w, &err);
    ck_assert_msg(st == SQ_OK, "weight %s: %s", kind_name(k), err.msg);
    return w;
}

/* |y - sum w x| over one output: the activation rounding (|x - dx q| <= dx / 2 per element,
 * dx = amax / 127 of its block of 32), for NF4 / FP4 the int8 code table's rounding
 * (|code - c / 127| <= 1 / 254 of the block's absmax), and float32 accumulation (generously
 * 64 eps of sum |w x| plus the bias). */
static double q8_bound(const float *w, const float *x, int64_t K, bool table, float absmax_hi) {
    double b = 0.0, mag = 0.0;
    for (int64_t blk = 0; blk < K / 32; blk++) {
        double amax = 0.0, sw = 0.0, sx = 0.0;
        for (int e = 0; e < 32; e++) {
            amax = fmax(amax, fabs(x[32 * blk + e]));
            sw += fabs(w[32 * blk + e]);
            sx += fabs(x[32 * blk + e]);
            mag += fabs((double)w[32 * blk + e] * x[32 * blk + e]);
        }
        b += amax / 127.0 / 2.0 * sw * 1.0001;
        if (table) b += sx * (double)absmax_hi / 254.0 * 1.0001;
    }
    return b + 64.0 * FLT_EPSILON * (mag + 4.0);
}

/* _i: 0: in_features 768 (whole chunks of 8 blocks of 32), NF4 / FP4 absmax blocks of 64;
 * 1: 832 (a tail of 2 blocks after the chunks), NF4 / FP4 blocks of 128 that cross rows
 * (kinds with blocks of 256 skip it), and an odd output count (the 512-bit GEMM pairs the last
 * output with itself).  41 rows: a tile of 32 and one of 9 (register tiles of 4 and a row).
 * 2, 3: out_features 80 and 96 (multiples of 16: Q4_0, Q8_0 and int8 take the layout
 * interleaved by 16 outputs, cpu_q8i.c), in_features 768 and 2112 (66 blocks: a chunk of 64
 * blocks and a tail). */
START_TEST(test_paths_identical_and_bounded) {
    static const int64_t Ns[] = {70, 71, 80, 96}, Ks[] = {768, 832, 768, 2112};
    const int64_t N = Ns[_i], K = Ks[_i], NR = 41;
    const int qbs = _i % 2 == 0 ? 64 : 128;
    sq_backend *bv = mk_be(3, NULL, SQ_CPU_ACT_INT8), *b2 = mk_be(1, "avx2", SQ_CPU_ACT_INT8);
    sq_backend *bp = mk_be(2, "portable", SQ_CPU_ACT_INT8), *bf = mk_be(2, NULL, SQ_CPU_ACT_F32);
    float *x = malloc((size_t)(NR * K * 4)), *bias = malloc((size_t)N * 4);
    for (int64_t j = 0; j < NR * K; j++) x[j] = rng_f(-2, 2) * (j % 97 == 0 ? 20.0f : 1.0f);
    for (int64_t j = 0; j < N; j++) bias[j] = rng_f(-1, 1);
    for (int t = 0; t < N_KINDS; t++) {
        const int k = k_kinds[t];
        if (k >= 0 && K % sq_ggml_block_elems(k) != 0) continue;
        src_w s;
        mk_src(k, N, K, qbs, &s);
        sq_backend *bes[4] = {bv, b2, bp, bf};
        sq_weight *w[4], *bs[4];
        float *all[4];
        for (int i = 0; i < 4; i++) {
            w[i] = mk_w(bes[i], k, &s, N, K);
            ck_assert_int_eq(sq_backend_weight_dense(bes[i], "bias", SQ_DTYPE_F32, bias, 1, N, &bs[i], NULL), SQ_OK);
            all[i] = sq_test_linear(bes[i], w[i], x, NR, bs[i]);
        }
        ck_assert_msg(memcmp(all[0], all[1], (size_t)(NR * N * 4)) == 0, "%s: %s vs avx2",
                      kind_name(k), sq_backend_name(bv));
        ck_assert_msg(memcmp(all[0], all[2], (size_t)(NR * N * 4)) == 0, "%s: %s vs portable",
                      kind_name(k), sq_backend_name(bv));
        /* the int8 path ran: it differs from the float32 activations somewhere */
        ck_assert_msg(memcmp(all[0], all[3], (size_t)(NR * N * 4)) != 0, "%s: int8 == f32",
                      kind_name(k));
        /* rows alone and in calls of 2, 5 and 7 (the GEMV; GEMM register tiles cut short), on
         * every path */
        static const int64_t counts[] = {1, 2, 5, 7};
        for (int i = 0; i < 3; i++)
            for (int ci = 0; ci < 4; ci++)
                for (int64_t r = 0; r + counts[ci] <= NR; r += 17) {
                    float *part = sq_test_linear(bes[i], w[i], x + r * K, counts[ci], bs[i]);
                    ck_assert_msg(memcmp(part, all[0] + r * N, (size_t)(counts[ci] * N * 4)) == 0,
                                  "%s: path %d rows %lld.. in a call of %lld", kind_name(k), i,
                                  (long long)r, (long long)counts[ci]);
                    free(part);
                }
        /* every value within the bound of a float64 reference */
        double worst = 0.0;
        for (int64_t o = 0; o < N; o++) {
            const float *wr = s.deq + o * K;
            float amax_hi = 0.0f;
            const bool table = k == W_NF4 || k == W_FP4;
            if (table)
                for (int64_t e = 0; e < K; e++) amax_hi = fmaxf(amax_hi, fabsf(wr[e]));
            /* a block's absmax is at least its largest |w|; the code table maps 1 to it: use
             * the largest absmax of the row's blocks */
            if (table)
                for (int64_t b = o * K / qbs; b <= ((o + 1) * K - 1) / qbs; b++)
                    amax_hi = fmaxf(amax_hi, s.q.absmax[b]);
            for (int64_t r = 0; r < NR; r++) {
                double ref = bias[o];
                for (int64_t e = 0; e < K; e++) ref += (double)wr[e] * (double)x[r * K + e];
                double err = fabs((double)all[0][r * N + o] - ref);
                double bd = q8_bound(wr, x + r * K, K, table, amax_hi);
                ck_assert_msg(err <= bd, "%s: out (%lld, %lld) = %.9g, float64 %.9g, error %.3g > bound %.3g",
                              kind_name(k), (long long)r, (long long)o, all[0][r * N + o], ref, err, bd);
                if (bd > 0 && err / bd > worst) worst = err / bd;
            }
        }
        /* the bound is not vacuous: the worst error uses a visible part of it */
        ck_assert_msg(worst > 0.01, "%s: worst error / bound %.4f", kind_name(k), worst);
        for (int i = 0; i < 4; i++) {
            free(all[i]);
            sq_backend_weight_free(bes[i], w[i]);
            sq_backend_weight_free(bes[i], bs[i]);
        }
        free_src(&s);
    }
    free(x);
    free(bias);
    for (int i = 0; i < 4; i++) sq_backend_destroy(i == 0 ? bv : i == 1 ? b2 : i == 2 ? bp : bf);
}
END_TEST

/* f32 mode (and int8 mode on weights it does not take) keep the float32 results exactly. */
START_TEST(test_f32_mode_unchanged) {
    const int64_t N = 40, K = 96, NR = 5;
    sq_backend *b8 = mk_be(2, NULL, SQ_CPU_ACT_INT8), *bf = mk_be(2, NULL, SQ_CPU_ACT_F32);
    ck_assert(sq_backend_cpu_activations_int8(b8));
    ck_assert(!sq_backend_cpu_activations_int8(bf));
    float *x = malloc((size_t)(NR * K * 4)), *wv = malloc((size_t)(N * K * 4));
    for (int64_t j = 0; j < NR * K; j++) x[j] = rng_f(-2, 2);
    for (int64_t j = 0; j < N * K; j++) wv[j] = rng_f(-1, 1);
    /* dense weights stay float32 in int8 mode */
    sq_weight *d8 = NULL, *df = NULL;
    ck_assert_int_eq(sq_backend_weight_dense(b8, "w", SQ_DTYPE_F32, wv, N, K, &d8, NULL), SQ_OK);
    ck_assert_int_eq(sq_backend_weight_dense(bf, "w", SQ_DTYPE_F32, wv, N, K, &df, NULL), SQ_OK);
    float *y8 = sq_test_linear(b8, d8, x, NR, NULL), *yf = sq_test_linear(bf, df, x, NR, NULL);
    ck_assert(memcmp(y8, yf, (size_t)(NR * N * 4)) == 0);
    free(y8);
    free(yf);
    /* NF4 with in_features 96 (not a multiple of 64) stays float32 too */
    sq_quant_scheme sc = sq_quant_scheme_default();
    sq_qtensor q;
    ck_assert_int_eq(sq_quant_4bit(wv, N, K, SQ_DTYPE_F32, &sc, NULL, &q, NULL), SQ_OK);
    sq_weight *q8 = NULL, *qf = NULL;
    ck_assert_int_eq(sq_backend_weight_4bit(b8, "q", &q, &q8, NULL), SQ_OK);
    ck_assert_int_eq(sq_backend_weight_4bit(bf, "q", &q, &qf, NULL), SQ_OK);
    y8 = sq_test_linear(b8, q8, x, NR, NULL);
    yf = sq_test_linear(bf, qf, x, NR, NULL);
    ck_assert(memcmp(y8, yf, (size_t)(NR * N * 4)) == 0);
    free(y8);
    free(yf);
    sq_qtensor_free(&q);
    sq_backend_weight_free(b8, d8); sq_backend_weight_free(bf, df);
    sq_backend_weight_free(b8, q8); sq_backend_weight_free(bf, qf);
    free(x);
    free(wv);
    sq_backend_destroy(b8);
    sq_backend_destroy(bf);
}
END_TEST

/* The documented quantization of a row of x (cpu_q8.c) and the order of the interleaved
 * kernels (cpu_q8i.c), written out: per block p = the exact sum of code * qx, acc = fma(fl(s *
 * dx), p, acc), y = acc + bias.  Every path must give these bits for Q4_0, Q8_0 and int8 with
 * out_features a multiple of 16 (and so fails where the row-major order runs instead). */
static void ref_quant(const float *x, int64_t K, int8_t *q, float *dx) {
    const float magic = 12582912.0f;
    for (int64_t b = 0; b < K / 32; b++) {
        float amax = 0.0f;
        for (int e = 0; e < 32; e++) amax = fabsf(x[32 * b + e]) > amax ? fabsf(x[32 * b + e]) : amax;
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int e = 0; e < 32; e++) {
            float t = (x[32 * b + e] * id + magic) - magic;
            t = t >= -127.0f ? t : -127.0f;
            t = t <= 127.0f ? t : 127.0f;
            q[32 * b + e] = (int8_t)t;
        }
        dx[b] = d;
    }
}

static float half_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023u, u;
    if (e == 0) {   /* subnormal or zero: m * 2^-24 exactly */
        float v = (float)m * (1.0f / 16777216.0f);
        return s ? -v : v;
    }
    u = s | ((e == 31 ? 255u : e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* NF4 / FP4 code q as the int8 the order uses: nearbyint(127 * code), written out */
static int ref_lut(sq_quant_type t, int q) {
    float v = 127.0f * sq_quant_code_table(t)[q], r = floorf(v + 0.5f);
    if (r - v == 0.5f && fmodf(r, 2.0f) != 0.0f) r -= 1.0f;   /* ties to even */
    return (int)fmaxf(-127.0f, fminf(127.0f, r));
}

/* The documented interleaved order for weight s of kind k (N x K) on NR rows of x: want. */
static void ref_interleaved(int k, const src_w *s, const float *x, int64_t NR, int64_t N,
                            int64_t K, const float *bias, float *want) {
    int8_t *qx = malloc((size_t)(NR * K));
    float *dx = malloc((size_t)(NR * K / 32 * 4));
    for (int64_t r = 0; r < NR; r++) ref_quant(x + r * K, K, qx + r * K, dx + r * (K / 32));
    for (int64_t o = 0; o < N; o++)
        for (int64_t r = 0; r < NR; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < K / 32; b++) {
                int32_t p = 0;
                float sc;
                if (k == W_NF4 || k == W_FP4) {   /* bnb's flat nibbles, even index high */
                    const uint64_t f0 = (uint64_t)(o * K + 32 * b);
                    sc = sq_qtensor_absmax(&s->q, f0 / (uint64_t)s->q.blocksize) * (1.0f / 127.0f);
                    for (int e = 0; e < 32; e++) {
                        uint64_t f = f0 + (uint64_t)e;
                        int nib = (s->q.packed[f / 2] >> ((f & 1) ? 0 : 4)) & 15;
                        p += ref_lut(s->q.type, nib) * qx[r * K + 32 * b + e];
                    }
                } else if (k == W_I8) {
                    sc = s->scales[o * (K / 32) + b];
                    for (int e = 0; e < 32; e++) p += (int8_t)s->raw[o * K + 32 * b + e] * qx[r * K + 32 * b + e];
                } else {
                    const uint8_t *blk = s->raw + o * s->rb + b * (k == SQ_GGML_Q4_0 ? 18 : 34);
                    uint16_t d;
                    memcpy(&d, blk, 2);
                    sc = half_to_f32(d);
                    for (int e = 0; e < 32; e++) {
                        int c = k == SQ_GGML_Q4_0 ? ((blk[2 + (e & 15)] >> ((e >> 4) * 4)) & 15) - 8
                                                  : (int8_t)blk[2 + e];
                        p += c * qx[r * K + 32 * b + e];
                    }
                }
                acc = fmaf(sc * dx[r * (K / 32) + b], (float)p, acc);
            }
            want[r * N + o] = acc + (bias ? bias[o] : 0.0f);
        }
    free(qx);
    free(dx);
}

/* Q4_0, Q8_0, int8; NF4 / FP4 with absmax blocks of 64, 128, 256, with and without double
 * quant (the interleaved layout from both 4-bit uploads: BNB, and G64 kept). */
START_TEST(test_interleaved_order) {
    const int64_t N = 32, K = 2304, NR = 9;   /* 72 blocks: a chunk of 64 and a tail */
    static const int kinds[] = {SQ_GGML_Q4_0, SQ_GGML_Q8_0, W_I8, W_NF4, W_FP4, W_NF4, W_FP4, W_NF4};
    static const int qbs[] = {64, 64, 64, 64, 64, 256, 128, 128};
    static const bool dqs[] = {false, false, false, false, true, true, false, true};
    sq_backend *bes[3] = {mk_be(2, NULL, SQ_CPU_ACT_INT8), mk_be(1, "avx2", SQ_CPU_ACT_INT8),
                          mk_be(3, "portable", SQ_CPU_ACT_INT8)};
    float *x = malloc((size_t)(NR * K * 4)), *bias = malloc((size_t)N * 4);
    for (int64_t j = 0; j < NR * K; j++) x[j] = rng_f(-3, 3) * (j % 89 == 0 ? 30.0f : 1.0f);
    uint16_t bias16[32];   /* the bias exact in bfloat16 too: also taken as a BF16 weight */
    for (int64_t j = 0; j < N; j++) {
        float v = rng_f(-1, 1);
        uint32_t u;
        memcpy(&u, &v, 4);
        u &= 0xffff0000u;
        memcpy(&bias[j], &u, 4);
        bias16[j] = (uint16_t)(u >> 16);
    }
    float *want = malloc((size_t)(NR * N * 4));
    for (int t = 0; t < (int)(sizeof kinds / sizeof *kinds); t++) {
        const int k = kinds[t];
        src_w s;
        mk_src_dq(k, N, K, qbs[t], dqs[t], &s);
        ref_interleaved(k, &s, x, NR, N, K, bias, want);
        for (int i = 0; i < 3; i++) {
            sq_weight *w = NULL, *bw = NULL;
            if (k < 0 && k != W_I8 && t % 2 == 0) {   /* the loader's G64 form, kept */
                sq_qtensor g = s.q;
                g.layout = SQ_Q4_LAYOUT_G64;
                g.packed = malloc((size_t)(N * K / 2));
                sq_q4_convert_groups(s.q.packed, g.packed, (uint64_t)(N * K / 64), true);
                ck_assert_int_eq(sq_backend_weight_4bit(bes[i], "g64", &g, &w, NULL), SQ_OK);
                free(g.packed);
            } else {
                w = mk_w(bes[i], k, &s, N, K);
            }
            ck_assert_int_eq(sq_backend_weight_dense(bes[i], "bias", t == 1 ? SQ_DTYPE_BF16 : SQ_DTYPE_F32,
                                                     t == 1 ? (const void *)bias16 : bias, 1, N, &bw, NULL), SQ_OK);
            for (int64_t n = 1; n <= NR; n += 4) {   /* 1, 5, 9 rows: the GEMV and the GEMM */
                float *y = sq_test_linear(bes[i], w, x, n, bw);
                for (int64_t j = 0; j < n * N; j++)
                    ck_assert_msg(memcmp(&y[j], &want[j], 4) == 0, "%s bs %d dq %d on %s, %lld rows: out %lld = %.9g, order says %.9g",
                                  kind_name(k), qbs[t], (int)dqs[t], sq_backend_name(bes[i]), (long long)n, (long long)j, y[j], want[j]);
                free(y);
            }
            sq_backend_weight_free(bes[i], w);
            sq_backend_weight_free(bes[i], bw);
        }
        free_src(&s);
    }
    free(want);
    free(x);
    free(bias);
    for (int i = 0; i < 3; i++) sq_backend_destroy(bes[i]);
}
END_TEST

/* A weight uploaded for int8 activations (interleaved: its int8 results are the documented
 * order's), then used with float32 ones and (not 4-bit) as an embedding table: the same bits as
 * the weight uploaded in f32 mode, on every path.  NF4 with absmax blocks of 128 (64 for FP4,
 * with double quant). */
START_TEST(test_interleaved_f32_and_embed) {
    const int64_t N = 48, K = 256, NR = 3;
    static const int kinds[] = {SQ_GGML_Q4_0, SQ_GGML_Q8_0, W_I8, W_NF4, W_FP4};
    float *x = malloc((size_t)(NR * K * 4));
    for (int64_t j = 0; j < NR * K; j++) x[j] = rng_f(-2, 2);
    static const char *isas[] = {NULL, "avx2", "portable"};
    float *want = malloc((size_t)(NR * N * 4));
    for (int t = 0; t < 5; t++)
        for (int i = 0; i < 3; i++) {
            const int k = kinds[t];
            src_w s;
            mk_src_dq(k, N, K, k == W_NF4 ? 128 : 64, k == W_FP4, &s);
            sq_backend *b8 = mk_be(2, isas[i], SQ_CPU_ACT_INT8), *bf = mk_be(2, isas[i], SQ_CPU_ACT_F32);
            sq_weight *w8 = mk_w(b8, k, &s, N, K), *wf = mk_w(bf, k, &s, N, K);
            float *yq = sq_test_linear(b8, w8, x, NR, NULL);   /* int8: differs from f32 */
            ref_interleaved(k, &s, x, NR, N, K, NULL, want);
            ck_assert_msg(memcmp(yq, want, (size_t)(NR * N * 4)) == 0, "%s: int8 not the interleaved order",
                          kind_name(k));
            ck_assert_int_eq(sq_backend_cpu_set_activations(b8, SQ_CPU_ACT_F32, NULL), SQ_OK);
            float *y8 = sq_test_linear(b8, w8, x, NR, NULL), *yf = sq_test_linear(bf, wf, x, NR, NULL);
            ck_assert_msg(memcmp(y8, yf, (size_t)(NR * N * 4)) == 0, "%s: f32 linear", kind_name(k));
            ck_assert_msg(memcmp(yq, yf, (size_t)(NR * N * 4)) != 0, "%s: int8 == f32", kind_name(k));
            /* and back to int8: the interleaved results again */
            ck_assert_int_eq(sq_backend_cpu_set_activations(b8, SQ_CPU_ACT_INT8, NULL), SQ_OK);
            float *yq2 = sq_test_linear(b8, w8, x, NR, NULL);
            ck_assert(memcmp(yq2, want, (size_t)(NR * N * 4)) == 0);
            free(yq2);
            if (k != W_NF4 && k != W_FP4) {   /* no 4-bit embedding tables */
                int32_t ids[4] = {0, 17, 47, 31};
                float *e8 = malloc((size_t)(4 * K * 4)), *ef = malloc((size_t)(4 * K * 4));
                ck_assert_int_eq(sq_backend_embed(b8, w8, ids, 4, e8, NULL), SQ_OK);
                ck_assert_int_eq(sq_backend_embed(bf, wf, ids, 4, ef, NULL), SQ_OK);
                ck_assert_int_eq(sq_backend_sync(b8, NULL), SQ_OK);
                ck_assert_int_eq(sq_backend_sync(bf, NULL), SQ_OK);
                ck_assert_msg(memcmp(e8, ef, (size_t)(4 * K * 4)) == 0, "%s: embedding rows", kind_name(k));
                for (int64_t e = 0; e < K; e++) ck_assert(memcmp(&ef[K + e], &s.deq[17 * K + e], 4) == 0);
                free(e8);
                free(ef);
            }
            free(yq);
            free(y8);
            free(yf);
            sq_backend_weight_free(b8, w8);
            sq_backend_weight_free(bf, wf);
            sq_backend_destroy(b8);
            sq_backend_destroy(bf);
            free_src(&s);
        }
    free(want);
    free(x);
}
END_TEST

/* sq_backend_linear_multi: the same bits as one sq_backend_linear per weight, for groups that
 * share one quantization of x (Q4_0 x 3 with a bias, NF4 x 3, int8 with and without zero
 * point; the third weight of each, 80 outputs, interleaved by 16 outputs and the others not) and groups that cannot (Q4_0 + Q8_0: other corrections; Q4_K + Q6_K + Q4_0; a dense
 * weight), 1 / 5 / 41 rows, int8 and float32 activations.  Then x is rewritten in place and the
 * call repeated: the outputs are those of the new x (no stale quantization is reused).  And the
 * argument errors: overlapping outputs, mismatched widths, counts outside [1, 8]. */
START_TEST(test_linear_multi) {
    const int64_t K = 256, Ns[3] = {40, 24, 80}, rows[3] = {1, 5, 41};   /* 80: interleaved */
    static const int groups[][3] = {{SQ_GGML_Q4_0, SQ_GGML_Q4_0, SQ_GGML_Q4_0},
                                    {W_NF4, W_NF4, W_NF4},
                                    {W_I8, W_I8ZP, W_I8},
                                    {SQ_GGML_Q4_0, SQ_GGML_Q8_0, 0},
                                    {SQ_GGML_Q4_K, SQ_GGML_Q6_K, SQ_GGML_Q4_0},
                                    {SQ_GGML_Q8_0, 1000, 0}};   /* 1000: dense F32 */
    static const int group_n[] = {3, 3, 3, 2, 3, 2};
    sq_error err;
    sq_error_init(&err, -1);
    for (int act = 0; act < 2; act++) {
        sq_backend *be = mk_be(2, NULL, act ? SQ_CPU_ACT_F32 : SQ_CPU_ACT_INT8);
        for (int g = 0; g < (int)(sizeof group_n / sizeof *group_n); g++) {
            const int n = group_n[g];
            src_w src[3];
            const sq_weight *w[3] = {NULL, NULL, NULL}, *bias[3] = {NULL, NULL, NULL};
            float *bv = malloc((size_t)Ns[0] * 4), *dense = malloc((size_t)(Ns[2] * K) * 4);
            for (int64_t i = 0; i < Ns[0]; i++) bv[i] = rng_f(-1, 1);
            for (int64_t i = 0; i < Ns[2] * K; i++) dense[i] = rng_f(-1, 1);
            sq_weight *bw = NULL;
            ck_assert_int_eq(sq_backend_weight_dense(be, "b", SQ_DTYPE_F32, bv, 1, Ns[0], &bw, &err), SQ_OK);
            for (int i = 0; i < n; i++) {
                sq_weight *wi = NULL;
                if (groups[g][i] == 1000) {
                    memset(&src[i], 0, sizeof src[i]);
                    ck_assert_int_eq(sq_backend_weight_dense(be, "d", SQ_DTYPE_F32, dense, Ns[i], K, &wi, &err), SQ_OK);
                } else {
                    mk_src(groups[g][i], Ns[i], K, 64, &src[i]);
                    wi = mk_w(be, groups[g][i], &src[i], Ns[i], K);
                }
                w[i] = wi;
            }
            if (g == 0) bias[0] = bw;
            for (int ri = 0; ri < 3; ri++) {
                const int64_t R = rows[ri];
                float *x = malloc((size_t)(R * K) * 4);
                void *x_d = NULL, *o_d[3] = {NULL, NULL, NULL};
                ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(R * K * 4), &x_d, &err), SQ_OK);
                for (int i = 0; i < n; i++)
                    ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(R * Ns[i] * 4), &o_d[i], &err), SQ_OK);
                for (int pass = 0; pass < 2; pass++) {   /* pass 1: x rewritten in place */
                    for (int64_t j = 0; j < R * K; j++) x[j] = rng_f(-2, 2) * (j % 97 == 3 ? 20.0f : 1.0f);
                    ck_assert_int_eq(sq_backend_upload(be, x_d, x, (uint64_t)(R * K * 4), &err), SQ_OK);
                    ck_assert_msg(sq_backend_linear_multi(be, x_d, R, n, w, bias, o_d, &err) == SQ_OK, "%s", err.msg);
                    for (int i = 0; i < n; i++) {
                        float *ref = sq_test_linear(be, w[i], x, R, bias[i]);
                        float *got = malloc((size_t)(R * Ns[i]) * 4);
                        ck_assert_int_eq(sq_backend_download(be, got, o_d[i], (uint64_t)(R * Ns[i] * 4), &err), SQ_OK);
                        ck_assert_msg(memcmp(got, ref, (size_t)(R * Ns[i]) * 4) == 0,
                                      "act %d group %d weight %d rows %lld pass %d: differs from linear",
                                      act, g, i, (long long)R, pass);
                        free(ref);
                        free(got);
                    }
                }
                if (g == 0 && ri == 1) {   /* argument errors */
                    void *bad[3] = {o_d[0], x_d, o_d[2]};
                    ck_assert_int_eq(sq_backend_linear_multi(be, x_d, R, 3, w, bias, bad, &err), SQ_ERR_INVALID);
                    ck_assert_ptr_nonnull(strstr(err.msg, "overlaps the input"));
                    void *dup[3] = {o_d[0], o_d[1], (char *)o_d[0] + 4};
                    ck_assert_int_eq(sq_backend_linear_multi(be, x_d, R, 3, w, bias, dup, &err), SQ_ERR_INVALID);
                    ck_assert_ptr_nonnull(strstr(err.msg, "overlaps output 0"));
                    ck_assert_int_eq(sq_backend_linear_multi(be, x_d, R, 0, w, bias, o_d, &err), SQ_ERR_INVALID);
                    ck_assert_int_eq(sq_backend_linear_multi(be, x_d, R, 9, w, bias, o_d, &err), SQ_ERR_INVALID);
                    const sq_weight *wb[2] = {w[0], bw};   /* bw: 40 inputs, not 256 */
                    ck_assert_int_eq(sq_backend_linear_multi(be, x_d, R, 2, wb, NULL, o_d, &err), SQ_ERR_INVALID);
                    ck_assert_ptr_nonnull(strstr(err.msg, "40 inputs"));
                }
                sq_backend_free(be, x_d);
                for (int i = 0; i < n; i++) sq_backend_free(be, o_d[i]);
                free(x);
            }
            for (int i = 0; i < n; i++) {
                sq_backend_weight_free(be, (sq_weight *)w[i]);
                if (groups[g][i] != 1000) free_src(&src[i]);
            }
            sq_backend_weight_free(be, bw);
            free(bv);
            free(dense);
        }
        sq_backend_destroy(be);
    }
}
END_TEST

START_TEST(test_refusals) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_cpu_set_activations(NULL, SQ_CPU_ACT_INT8, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "cpu backend"));
    sq_backend *be = mk_be(1, NULL, SQ_CPU_ACT_F32);
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_cpu_set_activations(be, (sq_cpu_activations)7, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown mode 7"));
    ck_assert(!sq_backend_cpu_activations_int8(NULL));
    sq_backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("backend_q8");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 100);
    tcase_add_loop_test(tc, test_paths_identical_and_bounded, 0, 4);
    tcase_add_test(tc, test_interleaved_order);
    tcase_add_test(tc, test_interleaved_f32_and_embed);
    tcase_add_test(tc, test_f32_mode_unchanged);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_linear_multi);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
