/* CPU Linear with dynamic int8 activations (the backend's activation mode int8, see
 * sq_backend_cpu_set_activations): each row of x is quantized at run time, absmax per block of
 * 32 elements, and every quantized weight is multiplied with integer dot products and one float
 * scale per (block, output).
 *
 * Why a scale per block of 32 and not per row, measured: SmolLM2-135M Q4_1, GPL-3, ctx 256,
 * perplexity 20.8173 with float32 activations, 20.8876 (+0.34 %) with a scale per block of 32,
 * 21.8422 (+4.9 %) with one per row (docs/BENCHMARKS.md).  And it costs nothing in the kernel:
 * the weights carry their own scale per block of 16 or 32, so the product dw * dx is formed
 * per block either way; only the quantization of x (O(K) per row against O(K * N)) would get
 * cheaper per row.  Per block, a large outlier in one channel (SmolLM2's hidden state has such
 * channels) does not crush the resolution of the other 575 — llama.cpp's Q8_0 / Q8_K
 * activations are per block for the same reason.
 *
 * Activations of a row: for block b (elements 32 b .. 32 b + 31) amax = max |x|, dx = amax / 127
 * (float32 division), qx = x * (127 / amax) rounded to nearest even, in [-127, 127] (all zero
 * when amax = 0).
 * The same C function quantizes on every ISA path.
 *
 * Weights: the block-scaled integer form (ggml_quant.h: GGUF Q4_0 … Q6_K, int8) gives signed
 * integer codes c and a float scale s per sub-block (16 or 32 elements); NF4 / FP4 (the 4-bit
 * store of cpu_linear.c) give c = nearbyint(127 * code[q]) (an int8 code table, the way
 * llama.cpp's IQ4_NL is an int8 table) and s = fl(absmax * fl(1 / 127)).
 *
 * Two layouts, each with its own fixed order.  Weights interleaved by 16 outputs (w->q8i,
 * cpu_q8i.h: Q4_0, Q8_0, int8 absmax, NF4 / FP4 (with whole absmax blocks >= 64 per row), all
 * with out_features % 16 == 0, made at upload in int8 mode) take cpu_q8i.c (lanes = outputs):
 *   p_b = the exact int32 sum over block b of c * qx; acc = fma(fl(s_b * dx_b), (float)p_b, acc)
 *   for b ascending; y = acc + the Linear's bias.
 * Every other weight keeps the row-major layout and this order below.
 * The row-major order, fixed, the same on the portable, AVX2 and AVX-512 VNNI paths, for any
 * tiling and thread count, so results are bit-identical everywhere:
 *   lane i (0..7) of block b: p = sum of c * qx over the block's bytes 4 i .. 4 i + 3 (an exact
 *     int32: |p| <= 4 * 128 * 127); the bytes are the weight's codes in its layout order and
 *     the activation was quantized in the same order (NF4 / FP4 repacked groups: see
 *     q8_perm_elem);
 *   acc_i = fma(fl(s_{b,i} * dx_b), (float)p, acc_i) for b ascending (one 8-lane accumulator,
 *     s_{b,i} the scale of the sub-block holding lane i);
 *   formats with a bias m per block of 32, a second accumulator: bacc_i = fma(m_b, xs_{b,i},
 *     bacc_i) for b ascending, xs_{b,i} = fl(dx_b * the lane's sum of qx), and acc_i = acc_i +
 *     bacc_i at the end;
 *   y = hsum(acc) with the tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then + the Linear's
 *   bias.
 * The integer sums are exact on every path (AVX2: maddubs of |c| with qx signed by c, then
 * madd by ones: no int16 saturation for |qx| <= 127; VNNI: vpdpbusd of c + 128 with qx, started
 * from -128 * (the lane's sum of qx), or for 4-bit codes of the raw nibble, started from
 * -zero * (the lane's sum)), and everything after them is the same float operations in the same
 * order.  The GEMV forms the products fl(s * dx) of 8 blocks at once and reads them back per
 * block: the same values, so the same bits.  With AVX-512BW + VNNI the GEMM (more than 2 rows) runs the
 * same lanes two outputs to a 512-bit register (q8_tile_zmm): the same bits again.  Measured
 * (2 threads, 64-token prompt, Q4_0): prefill 1.07B 44-50 -> 81-98 tok/s, SmolLM2-135M
 * 240-400 -> 480-660 tok/s against the 256-bit tile.  Its ceiling is the fixed float order: per
 * (output, row, block) 8 lanes of cvt, mul and fma, against one fma lane in llama.cpp's
 * repacked Q4_0 GEMM, whose lanes are outputs (what cpu_q8i.c does for the weights it takes).
 * Supported: the block-scaled form with code_bits 4 (blocks of 32) or 8 (blocks of 16 or 32,
 * a bias only with blocks of 32); NF4 / FP4 with in_features % 64 == 0 and blocks >= 64.
 * Anything else (dense weights, ragged 4-bit rows) takes the float32 path of cpu_linear.c.
 * Must never allocate inside an op (the activation scratch is sized by reserve) or print. */
#include "cpu_impl.h"
#include "cpu_q8i.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/ggml_quant_math.cuh"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_HAVE_X86 1
#endif

enum {
    Q8_OTILE = 32,      /* outputs per task with few rows */
    Q8_FEW_ROWS = 2,    /* up to this many rows: the GEMV kernel */
    Q8_M_OTILE = 16,    /* outputs per task with many rows */
    Q8_M_RTILE = 32,    /* rows per task with many rows */
    Q8_KP = 8,          /* blocks of 32 per panel of the many-row path (its activations: L1) */
    Q8_PREFETCH = 512,  /* bytes ahead in a code row that the GEMV prefetches */
    Q8_PPREFETCH = 256  /* bytes ahead in a row's scales / biases that the GEMV prefetches */
};

typedef enum { K_Q4 = 0, K_I8 = 1, K_LUT = 2 } q8_kind;

typedef struct {
    const sq_weight *w;
    const float *bias;    /* (N) float32, or bias_bf16, or neither */
    const uint16_t *bias_bf16;
    float *out;           /* (n_rows, N) */
    const int8_t *qx;     /* (n_rows, K) quantized activations */
    const float *dx;      /* (n_rows, nb) their scales */
    const float *xs;      /* (n_rows, nb, 8) dx * the lane's sum of qx */
    const int32_t *corr;  /* (n_rows, nb, 8) -z * the lane's sum of qx: z = the 4-bit code zero
                           * for K_Q4, 128 otherwise (VNNI's unsigned operand: see q8_dot) */
    const int32_t *bsum;  /* (n_rows, nb) the sums of corr per block: interleaved weights */
    int64_t n_rows, K, N, nb;
    int64_t otile, n_otiles, rt;
    q8_kind kind;
    int lbs;              /* LUT: log2(blocksize) */
    int64_t rs;           /* LUT: packed bytes per row */
    int8_t lut[16];       /* LUT: the int8 code table */
    sq_cpu_isa isa;
    bool vnni, zmm;
} q8_ctx;

/* ---- which weights, the int8 code table, activation quantization ------------------------------ */

bool sq_cpu_q8_supported(const sq_weight *w) {
    if (w->store == SQ_WSTORE_QBLOCK) {
        const sq_qblock_format *f = &w->qf;
        if (w->cols % 32 != 0) return false;
        if (f->code_bits == 4) return f->block_elems == 32;
        if (f->code_bits != 8) return false;
        if (f->block_elems == 16) return !f->has_bias;
        return f->block_elems == 32;
    }
    if (w->store == SQ_WSTORE_Q4) return w->cols % 64 == 0 && w->blocksize >= 64;
    return false;
}

/* NF4 / FP4 code q as int8: code values lie in [-1, 1] */
static int8_t q8_lut_code(float v) {
    float t = nearbyintf(v * 127.0f);
    if (t > 127.0f) t = 127.0f;
    if (t < -127.0f) t = -127.0f;
    return (int8_t)t;
}

/* The element (0..31 within its block of 32) whose code sits at byte j of a repacked 4-bit
 * group half (cpu_impl.h, sq_cpu_q4_pos): pos(8 m + i) = 4 m + i (i < 4), 16 + 4 m + i - 4. */
static inline int q8_perm_elem(int j) {
    return j < 16 ? 8 * (j >> 2) + (j & 3) : 8 * ((j - 16) >> 2) + 4 + (j & 3);
}

/* Row x (K elements) into qx / dx / xs / corr (corr = -corr_zero * the lane's sum of qx);
 * perm: in the repacked 4-bit byte order. */
void sq_cpu_q8_quantize_row(const float *x, int64_t K, bool perm, int32_t corr_zero, int8_t *qx,
                            float *dx, float *xs, int32_t *corr) {
    /* round to nearest even by the 1.5 * 2^23 trick (|x * id| <= 127 + rounding): the same
     * float operations on every machine, no libm call */
    const float magic = 12582912.0f;
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int e = 0; e < 32; e++) {
            float a = fabsf(xb[e]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t *q = qx + 32 * b;
        for (int j = 0; j < 32; j++) {
            float t = (xb[perm ? q8_perm_elem(j) : j] * id + magic) - magic;
            t = t >= -127.0f ? t : -127.0f;   /* (a NaN becomes -127: never an undefined cast) */
            t = t <= 127.0f ? t : 127.0f;
            q[j] = (int8_t)t;
        }
        for (int i = 0; i < 8; i++) {
            int ls = q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3];
            corr[8 * b + i] = -corr_zero * ls;
            xs[8 * b + i] = d * (float)ls;
        }
        dx[b] = d;
    }
}

static inline float q8_bias_of(const q8_ctx *c, int64_t o) {
    if (c->bias) return c->bias[o];
    if (c->bias_bf16) return sq_bf16_to_f32_1(c->bias_bf16[o]);
    return 0.0f;
}

static inline float q8_hsum8(const float l[8]) {
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    float t0 = s0 + s2, t1 = s1 + s3;
    return t0 + t1;
}

/* A QBLOCK row's arrays (codes, scales, biases) */
static inline const uint8_t *q8_codes(const q8_ctx *c, int64_t o) {
    return (const uint8_t *)c->w->data_d +
           o * (c->kind == K_LUT ? c->rs : c->w->code_row_bytes);
}
static inline const void *q8_params(const q8_ctx *c, const void *base, int64_t o) {
    const sq_qblock_format *f = &c->w->qf;
    return (const char *)base + o * (c->K / f->block_elems) * (f->scale_bits / 8);
}

/* The weight scale of lane i of block b of output o (exactly as every path forms it). */
static inline float q8_wscale(const q8_ctx *c, int64_t o, int64_t b, int i) {
    if (c->kind == K_LUT) {
        const float *am = c->w->absmax_d;
        float a = am[((uint64_t)o * (uint64_t)c->K + (uint64_t)(32 * b)) >> c->lbs];
        return a * (1.0f / 127.0f);
    }
    const sq_qblock_format *f = &c->w->qf;
    int64_t s = f->block_elems == 16 ? 2 * b + (i >= 4) : b;
    return sq_qblock_param(f, q8_params(c, c->w->absmax_d, o), s);
}

static inline void q8_finish(const q8_ctx *c, int64_t o, int64_t r, float y) {
    c->out[r * c->N + o] = y + q8_bias_of(c, o);
}

/* ---- portable reference path ----------------------------------------------------------------- */

/* code at byte j (0..31) of block b of output row o */
static inline int q8_code(const q8_ctx *c, const uint8_t *row, int64_t b, int j) {
    switch (c->kind) {
    case K_Q4: return ((row[b * 16 + (j & 15)] >> ((j >> 4) * 4)) & 15) - c->w->qf.code_zero;
    case K_I8: return ((const int8_t *)row)[b * 32 + j];
    default: return c->lut[(row[(b >> 1) * 32 + j] >> ((b & 1) * 4)) & 15];
    }
}

static void q8_rows_portable(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = q8_codes(c, o);
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *qx = c->qx + r * c->K;
            const float *dx = c->dx + r * c->nb, *xs = c->xs + r * c->nb * 8;
            const bool bias = c->kind != K_LUT && c->w->qf.has_bias;
            const void *m = bias ? q8_params(c, c->w->bias_d, o) : NULL;
            float acc[8] = {0}, bacc[8] = {0};
            for (int64_t b = 0; b < c->nb; b++)
                for (int i = 0; i < 8; i++) {
                    int32_t p = 0;
                    for (int t = 0; t < 4; t++) p += q8_code(c, row, b, 4 * i + t) * qx[32 * b + 4 * i + t];
                    acc[i] = fmaf(q8_wscale(c, o, b, i) * dx[b], (float)p, acc[i]);
                    if (bias) bacc[i] = fmaf(sq_qblock_param(&c->w->qf, m, b), xs[8 * b + i], bacc[i]);
                }
            if (bias)
                for (int i = 0; i < 8; i++) acc[i] = acc[i] + bacc[i];
            q8_finish(c, o, r, q8_hsum8(acc));
        }
    }
}

/* ---- AVX2 and AVX-512 VNNI ------------------------------------------------------------------- */
#ifdef SQ_HAVE_X86
#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

/* One body, compiled twice: V = 0 (AVX2 maddubs) and V = 1 (VNNI); the integers agree. */
#define Q8_BODY(TGT, SFX, V)                                                                   \
TGT INLINE float q8_hsum_##SFX(__m256 v) {                                                     \
    /* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) */                                                \
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));             \
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));                                             \
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));                                         \
    return _mm_cvtss_f32(u);                                                                   \
}                                                                                              \
/* The 32 codes of block b of a row: 4-bit nibbles (the zero is applied by q8_dot), int8     \
 * codes, or the int8 table's values. */                                                       \
TGT INLINE __m256i q8_wcodes_##SFX(const uint8_t *row, int64_t b, __m256i lut, const int KIND) { \
    const __m256i m4 = _mm256_set1_epi8(15);                                                   \
    if (KIND == K_Q4) { /* the 16 bytes in both halves, the upper half shifted by 4: no      \
                         * lane-crossing shuffle */                                            \
        __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(row + b * 16))); \
        return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), m4); \
    }                                                                                          \
    if (KIND == K_I8) return _mm256_loadu_si256((const __m256i *)(row + b * 32));              \
    __m256i v = _mm256_loadu_si256((const __m256i *)(row + (b >> 1) * 32));                    \
    if (b & 1) v = _mm256_srli_epi16(v, 4);                                                    \
    return _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));                                  \
}                                                                                              \
/* lanes of p = sum over 4 bytes of code * qx (exact) */                                       \
TGT INLINE __m256i q8_dot_##SFX(__m256i w, __m256i qx, const int32_t *corr, __m256i zero,      \
                                const int KIND, const int UNSIGNED) {                          \
    if (V) {                                                                                   \
        /* unsigned operand: the nibble (corr = -zero * lane sum), the table's value + 128     \
         * (the table is stored so), int8 code + 128 (corr = -128 * lane sum) */               \
        if (UNSIGNED) return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, qx);               \
        __m256i u = KIND == K_I8 ? _mm256_xor_si256(w, zero) : w;                              \
        return _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)corr), u, qx);          \
    }                                                                                          \
    const __m256i ones = _mm256_set1_epi16(1);                                                 \
    if (UNSIGNED) return _mm256_madd_epi16(_mm256_maddubs_epi16(w, qx), ones);                 \
    __m256i s = KIND == K_Q4 ? _mm256_sub_epi8(w, zero) : w;                                   \
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(s, s),                      \
                                                  _mm256_sign_epi8(qx, s)), ones);             \
}                                                                                              \
/* parameter b (scale or bias) of a row, broadcast */                                          \
TGT INLINE __m256 q8_par_##SFX(const void *p, int64_t b, const int H16) {                      \
    if (H16) return _mm256_cvtph_ps(_mm_set1_epi16((short)((const uint16_t *)p)[b]));          \
    return _mm256_broadcast_ss((const float *)p + b);                                          \
}                                                                                              \
/* the weight scale of block b, per lane */                                                    \
TGT INLINE __m256 q8_ws_##SFX(const q8_ctx *c, const void *sp, int64_t o, int64_t b,           \
                              const int KIND, const int H16, const int B16) {                  \
    if (KIND == K_LUT) {                                                                       \
        const float *am = c->w->absmax_d;                                                      \
        float a = am[((uint64_t)o * (uint64_t)c->K + (uint64_t)(32 * b)) >> c->lbs];           \
        return _mm256_set1_ps(a * (1.0f / 127.0f));                                            \
    }                                                                                          \
    if (B16) {                                                                                 \
        const float *s = (const float *)sp + 2 * b;                                            \
        return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(s[0])),                 \
                                    _mm_set1_ps(s[1]), 1);                                     \
    }                                                                                          \
    return q8_par_##SFX(sp, b, H16);                                                           \
}                                                                                              \
TGT INLINE __m256i q8_zero_##SFX(const q8_ctx *c, const int KIND) {                            \
    if (KIND == K_Q4) return _mm256_set1_epi8((char)c->w->qf.code_zero);                       \
    return _mm256_set1_epi8((char)0x80);                                                       \
}                                                                                              \
/* One output's state: codes, scales, biases, accumulators. */                                 \
typedef struct {                                                                               \
    const uint8_t *w;                                                                          \
    const void *s, *m;                                                                         \
} q8_row_##SFX;                                                                                \
TGT INLINE q8_row_##SFX q8_row_of_##SFX(const q8_ctx *c, int64_t o, const int KIND,            \
                                        const int BIAS) {                                      \
    q8_row_##SFX R = {q8_codes(c, o), KIND == K_LUT ? NULL : q8_params(c, c->w->absmax_d, o),  \
                      BIAS ? q8_params(c, c->w->bias_d, o) : NULL};                            \
    return R;                                                                                  \
}                                                                                              \
/* acc + fl(ws * dx) * p for one (output, row, block) */                                     \
TGT INLINE __m256 q8_step_##SFX(__m256i w, __m256 ws, __m256i q, __m256 d, const int32_t *cr,  \
                                __m256i zero, __m256 acc, const int KIND, const int UNS) {     \
    __m256i p = q8_dot_##SFX(w, q, cr, zero, KIND, UNS);                                       \
    return _mm256_fmadd_ps(_mm256_mul_ps(ws, d), _mm256_cvtepi32_ps(p), acc);                  \
}                                                                                              \
TGT INLINE void q8_fin_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256 acc, __m256 bacc,   \
                             const int BIAS) {                                                 \
    if (BIAS) acc = _mm256_add_ps(acc, bacc);                                                  \
    q8_finish(c, o, r, q8_hsum_##SFX(acc));                                                    \
}                                                                                              \
/* The weight scales of blocks b .. b + 7 (not B16), as q8_ws forms each of them. */           \
TGT INLINE __m256 q8_ws8_##SFX(const q8_ctx *c, const void *sp, int64_t o, int64_t b,          \
                               const int KIND, const int H16) {                                \
    if (KIND == K_LUT) {                                                                       \
        const float *am = c->w->absmax_d;                                                      \
        __m256 a;                                                                              \
        if (c->lbs == 6) { /* K % 64 == 0: blocks 2 j and 2 j + 1 share absmax j of the row */ \
            __m128 v = _mm_loadu_ps(am + (((uint64_t)o * (uint64_t)c->K) >> 6) + (b >> 1));   \
            a = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v),                            \
                                         _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));           \
        } else {                                                                               \
            _Alignas(32) float t[8];                                                           \
            for (int k = 0; k < 8; k++)                                                        \
                t[k] = am[((uint64_t)o * (uint64_t)c->K + (uint64_t)(32 * (b + k))) >> c->lbs]; \
            a = _mm256_load_ps(t);                                                             \
        }                                                                                      \
        return _mm256_mul_ps(a, _mm256_set1_ps(1.0f / 127.0f));                                \
    }                                                                                          \
    if (H16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)sp + b))); \
    return _mm256_loadu_ps((const float *)sp + b);                                             \
}                                                                                              \
/* GEMV: NO (4 or 1) outputs from o, row r.  In chunks of 8 blocks the 8 products             \
 * fl(ws * dx) (and the biases) of an output are formed at once and read back one per block   \
 * as a broadcast load: the same values as q8_step forms, in the same order. */               \
TGT INLINE void q8_few_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256i lut, const int NO, \
                             const int KIND, const int UNS, const int H16, const int B16,      \
                             const int BIAS) {                                                 \
    const int8_t *qx = c->qx + r * c->K;                                                       \
    const float *dx = c->dx + r * c->nb, *xs = c->xs + r * c->nb * 8;                          \
    const int32_t *corr = c->corr + r * c->nb * 8;                                             \
    const __m256i zero = q8_zero_##SFX(c, KIND);                                               \
    const int64_t gb = KIND == K_Q4 ? 16 : 32;                                                 \
    q8_row_##SFX R[4];                                                                         \
    __m256 a[4], ba[4];                                                                        \
    _Pragma("GCC unroll 4") for (int i = 0; i < NO; i++) {                                     \
        R[i] = q8_row_of_##SFX(c, o + i, KIND, BIAS);                                          \
        a[i] = ba[i] = _mm256_setzero_ps();                                                    \
    }                                                                                          \
    int64_t b8 = 0;                                                                            \
    if (!B16) {                                                                                \
        _Alignas(32) float dt[4][8], mt[4][8];                                                 \
        for (; b8 + 8 <= c->nb; b8 += 8) {                                                     \
            const __m256 dx8 = _mm256_loadu_ps(dx + b8);                                       \
            _Pragma("GCC unroll 4") for (int i = 0; i < NO; i++) {                             \
                _mm256_store_ps(dt[i], _mm256_mul_ps(q8_ws8_##SFX(c, R[i].s, o + i, b8, KIND, H16), \
                                                     dx8));                                    \
                if (BIAS) _mm256_store_ps(mt[i], q8_ws8_##SFX(c, R[i].m, o + i, b8, K_I8, H16)); \
                const char *pf = (const char *)R[i].w + Q8_PREFETCH +                          \
                                 (KIND == K_LUT ? (b8 >> 1) * 32 : b8 * gb);                   \
                _mm_prefetch(pf, _MM_HINT_T0);                                                 \
                _mm_prefetch(pf + 64, _MM_HINT_T0);                                            \
                if (KIND == K_I8) {                                                            \
                    _mm_prefetch(pf + 128, _MM_HINT_T0);                                       \
                    _mm_prefetch(pf + 192, _MM_HINT_T0);                                       \
                }                                                                              \
                /* the scale (and bias) streams too: they cross 4 KiB pages as well */      \
                if (KIND == K_LUT)                                                             \
                    _mm_prefetch((const char *)(c->w->absmax_d) + Q8_PPREFETCH + 4 *           \
                                 (int64_t)((((uint64_t)(o + i) * (uint64_t)c->K) >> c->lbs) +  \
                                           (uint64_t)((32 * b8) >> c->lbs)), _MM_HINT_T0);     \
                else                                                                           \
                    _mm_prefetch((const char *)R[i].s + b8 * (H16 ? 2 : 4) + Q8_PPREFETCH,     \
                                 _MM_HINT_T0);                                                 \
                if (BIAS)                                                                      \
                    _mm_prefetch((const char *)R[i].m + b8 * (H16 ? 2 : 4) + Q8_PPREFETCH,     \
                                 _MM_HINT_T0);                                                 \
            }                                                                                  \
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {                              \
                const int64_t b = b8 + k;                                                      \
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));          \
                _Pragma("GCC unroll 4") for (int i = 0; i < NO; i++) {                         \
                    const __m256i wv = q8_wcodes_##SFX(R[i].w, b, lut, KIND);                  \
                    const __m256i p = q8_dot_##SFX(wv, q, corr + 8 * b, zero, KIND, UNS);      \
                    a[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dt[i][k]), _mm256_cvtepi32_ps(p), \
                                           a[i]);                                              \
                    if (BIAS)                                                                  \
                        ba[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(&mt[i][k]),                \
                                                _mm256_loadu_ps(xs + 8 * b), ba[i]);           \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    for (int64_t b = b8; b < c->nb; b++) {                                                     \
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));                  \
        const __m256 d = _mm256_broadcast_ss(dx + b);                                          \
        const int64_t pf = (KIND == K_LUT ? (b >> 1) * 32 : b * gb) + Q8_PREFETCH;             \
        _Pragma("GCC unroll 4") for (int i = 0; i < NO; i++) {                                 \
            _mm_prefetch((const char *)(R[i].w + pf), _MM_HINT_T0);                            \
            a[i] = q8_step_##SFX(q8_wcodes_##SFX(R[i].w, b, lut, KIND),                        \
                                 q8_ws_##SFX(c, R[i].s, o + i, b, KIND, H16, B16), q, d,       \
                                 corr + 8 * b, zero, a[i], KIND, UNS);                         \
            if (BIAS)                                                                          \
                ba[i] = _mm256_fmadd_ps(q8_par_##SFX(R[i].m, b, H16),                          \
                                        _mm256_loadu_ps(xs + 8 * b), ba[i]);                   \
        }                                                                                      \
    }                                                                                          \
    _Pragma("GCC unroll 4") for (int i = 0; i < NO; i++) q8_fin_##SFX(c, o + i, r, a[i], ba[i], BIAS); \
}                                                                                              \
/* GEMM: NO (1 or 2) outputs from o x NR (1 .. 4) rows from r over blocks [b0, b1); each      \
 * weight block is decoded once for the NR rows.  The accumulators come from and go back to    \
 * acc / bac (rows RS apart; exact float32 vectors: the chain and its bits are unchanged); LAST: \
 * finish the outputs instead. */                                                              \
TGT INLINE void q8_2xn_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256i lut, int64_t b0,   \
                             int64_t b1, __m256 *acc, __m256 *bac, const int LAST,             \
                             const int NO, const int NR, const int KIND, const int UNS,         \
                             const int H16, const int B16, const int BIAS) {                   \
    const __m256i zero = q8_zero_##SFX(c, KIND);                                               \
    const int64_t K = c->K, nb = c->nb;                                                        \
    const int8_t *qx = c->qx + r * K;                                                          \
    const float *dx = c->dx + r * nb, *xs = c->xs + r * nb * 8;                                \
    const int32_t *corr = c->corr + r * nb * 8;                                                \
    q8_row_##SFX R[2];                                                                         \
    __m256 a[2][4], ba[2][4];                                                                  \
    _Pragma("GCC unroll 2") for (int i = 0; i < NO; i++) {                                     \
        R[i] = q8_row_of_##SFX(c, o + i, KIND, BIAS);                                          \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
            a[i][j] = acc[i * Q8_M_RTILE + j];                                                 \
            ba[i][j] = BIAS ? bac[i * Q8_M_RTILE + j] : a[i][j];                               \
        }                                                                                      \
    }                                                                                          \
    for (int64_t b = b0; b < b1; b++) {                                                        \
        __m256i wc[2];                                                                         \
        __m256 ws[2], mb[2];                                                                   \
        _Pragma("GCC unroll 2") for (int i = 0; i < NO; i++) {                                 \
            wc[i] = q8_wcodes_##SFX(R[i].w, b, lut, KIND);                                     \
            ws[i] = q8_ws_##SFX(c, R[i].s, o + i, b, KIND, H16, B16);                          \
            mb[i] = BIAS ? q8_par_##SFX(R[i].m, b, H16) : ws[i];                               \
        }                                                                                      \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + j * K + 32 * b));      \
            const __m256 d = _mm256_broadcast_ss(dx + j * nb + b);                             \
            _Pragma("GCC unroll 2") for (int i = 0; i < NO; i++) {                             \
                a[i][j] = q8_step_##SFX(wc[i], ws[i], q, d, corr + (j * nb + b) * 8, zero,     \
                                        a[i][j], KIND, UNS);                                   \
                if (BIAS)                                                                      \
                    ba[i][j] = _mm256_fmadd_ps(mb[i], _mm256_loadu_ps(xs + (j * nb + b) * 8),  \
                                               ba[i][j]);                                      \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    _Pragma("GCC unroll 2") for (int i = 0; i < NO; i++)                                       \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
            if (LAST) {                                                                        \
                q8_fin_##SFX(c, o + i, r + j, a[i][j], ba[i][j], BIAS);                        \
            } else {                                                                           \
                acc[i * Q8_M_RTILE + j] = a[i][j];                                             \
                if (BIAS) bac[i * Q8_M_RTILE + j] = ba[i][j];                                  \
            }                                                                                  \
        }                                                                                      \
}                                                                                              \
/* 2 x NR from (o, r), LAST or not, over blocks [b0, b1) */                                    \
TGT INLINE void q8_2xn_l_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256i lut, int64_t b0, \
                               int64_t b1, __m256 *acc, __m256 *bac, int last, const int NO,   \
                               const int NR, const int KIND, const int UNS, const int H16,     \
                               const int B16, const int BIAS) {                                \
    if (last) q8_2xn_##SFX(c, o, r, lut, b0, b1, acc, bac, 1, NO, NR, KIND, UNS, H16, B16, BIAS); \
    else q8_2xn_##SFX(c, o, r, lut, b0, b1, acc, bac, 0, NO, NR, KIND, UNS, H16, B16, BIAS);   \
}                                                                                              \
TGT INLINE void q8_tile_t_##SFX(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0,           \
                                int64_t r1, const int KIND, const int UNS, const int H16,      \
                                const int B16, const int BIAS) {                               \
    __m256i lut = _mm256_setzero_si256();                                                      \
    if (KIND == K_LUT) { /* VNNI: the table's values + 128, its unsigned operand */            \
        lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c->lut));           \
        if (V) lut = _mm256_xor_si256(lut, _mm256_set1_epi8((char)0x80));                      \
    }                                                                                          \
    if (r1 - r0 <= Q8_FEW_ROWS) {                                                              \
        for (int64_t r = r0; r < r1; r++) {                                                    \
            int64_t o = o0;                                                                    \
            for (; o + 4 <= o1; o += 4) q8_few_##SFX(c, o, r, lut, 4, KIND, UNS, H16, B16, BIAS); \
            for (; o < o1; o++) q8_few_##SFX(c, o, r, lut, 1, KIND, UNS, H16, B16, BIAS);      \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    /* panels of Q8_KP blocks: the tile's activations of a panel stay in L1 while every output \
     * pair of the tile passes over them */                                                    \
    __m256 acc[Q8_M_OTILE * Q8_M_RTILE], bac[BIAS ? Q8_M_OTILE * Q8_M_RTILE : 1];              \
    for (int64_t i = 0; i < (o1 - o0) * Q8_M_RTILE; i++) {                                     \
        acc[i] = _mm256_setzero_ps();                                                          \
        if (BIAS) bac[i] = acc[i];                                                             \
    }                                                                                          \
    for (int64_t b0 = 0; b0 < c->nb; b0 += Q8_KP) {                                            \
        const int64_t b1 = b0 + Q8_KP < c->nb ? b0 + Q8_KP : c->nb;                            \
        const int last = b1 == c->nb;                                                          \
        for (int64_t o = o0; o < o1; o += 2) {                                                 \
            const int two = o + 1 < o1;                                                        \
            __m256 *ao = acc + (o - o0) * Q8_M_RTILE, *bo = BIAS ? bac + (o - o0) * Q8_M_RTILE : bac; \
            int64_t r = r0;                                                                    \
            for (; r + 4 <= r1; r += 4) {                                                      \
                if (two) q8_2xn_l_##SFX(c, o, r, lut, b0, b1, ao + (r - r0), BIAS ? bo + (r - r0) : bo, \
                                        last, 2, 4, KIND, UNS, H16, B16, BIAS);                \
                else q8_2xn_l_##SFX(c, o, r, lut, b0, b1, ao + (r - r0), BIAS ? bo + (r - r0) : bo, \
                                    last, 1, 4, KIND, UNS, H16, B16, BIAS);                    \
            }                                                                                  \
            for (; r < r1; r++) {                                                              \
                if (two) q8_2xn_l_##SFX(c, o, r, lut, b0, b1, ao + (r - r0), BIAS ? bo + (r - r0) : bo, \
                                        last, 2, 1, KIND, UNS, H16, B16, BIAS);                \
                else q8_2xn_l_##SFX(c, o, r, lut, b0, b1, ao + (r - r0), BIAS ? bo + (r - r0) : bo, \
                                    last, 1, 1, KIND, UNS, H16, B16, BIAS);                    \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
/* one instantiation per (half scales, bias) for a kind */                                     \
TGT INLINE void q8_disp_##SFX(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1, \
                              const int KIND, const int UNS, const int B16) {                  \
    const sq_qblock_format *f = &c->w->qf;                                                     \
    const int h16 = f->scale_bits == 16, bias = KIND != K_LUT && f->has_bias;                  \
    if (h16 && bias) q8_tile_t_##SFX(c, o0, o1, r0, r1, KIND, UNS, 1, B16, 1);                 \
    else if (h16) q8_tile_t_##SFX(c, o0, o1, r0, r1, KIND, UNS, 1, B16, 0);                    \
    else if (bias) q8_tile_t_##SFX(c, o0, o1, r0, r1, KIND, UNS, 0, B16, 1);                   \
    else q8_tile_t_##SFX(c, o0, o1, r0, r1, KIND, UNS, 0, B16, 0);                             \
}                                                                                              \
TGT static void q8_tile_##SFX(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) { \
    const sq_qblock_format *f = &c->w->qf;                                                     \
    switch (c->kind) {                                                                         \
    case K_LUT: q8_tile_t_##SFX(c, o0, o1, r0, r1, K_LUT, 0, 0, 0, 0); break;                  \
    case K_Q4:                                                                                 \
        if (f->code_zero == 0) q8_disp_##SFX(c, o0, o1, r0, r1, K_Q4, 1, 0);                   \
        else q8_disp_##SFX(c, o0, o1, r0, r1, K_Q4, 0, 0);                                     \
        break;                                                                                 \
    default:                                                                                   \
        if (f->block_elems == 16) q8_disp_##SFX(c, o0, o1, r0, r1, K_I8, 0, 1);                \
        else q8_disp_##SFX(c, o0, o1, r0, r1, K_I8, 0, 0);                                     \
        break;                                                                                 \
    }                                                                                          \
}

Q8_BODY(TGT_AVX2, avx2, 0)
Q8_BODY(TGT_VNNI, vnni, 1)

/* ---- the many-row GEMM with 512-bit VNNI ----------------------------------------------------- *
 * Two outputs share a zmm: the low 256 bits carry output o's 8 lanes, the high 256 bits output
 * o2's, and one row's activations of a block are broadcast to both halves.  Per (output, row,
 * block) every lane does exactly what q8_step / the bias step of the 256-bit paths do (the same
 * exact vpdpbusd sum, fl(ws * dx), one fma; the bias chain likewise), and a half is finished
 * by q8_fin: the same bits, with half the instructions per multiply-add.  An odd output count
 * pairs the last output with itself and finishes only the low half. */
#define TGT_ZMM __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/* register tile: pairs of outputs x rows (24 accumulators; with a bias chain 4 rows).  3 pairs
 * beat 2 by ~3 % on the 1.07B Q4_0 prefill (each activation load serves 3 pairs) */
enum { Q8_Z_NP = 3, Q8_Z_NR = 8, Q8_Z_NR_BIAS = 4 };

TGT_ZMM INLINE __m512i q8z_cat(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
TGT_ZMM INLINE __m512 q8z_catf(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                                               _mm256_castps_pd(hi), 1));
}
TGT_ZMM INLINE __m256 q8z_lo(__m512 v) { return _mm512_castps512_ps256(v); }
TGT_ZMM INLINE __m256 q8z_hi(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* One pair's decoded block: codes (VNNI's unsigned operand), weight scales, biases. */
typedef struct {
    __m512i wc;
    __m512 ws, mb;
} q8z_blk;

/* Decode pair (oa, ob) over blocks [b0, b1) into pb[0 .. b1 - b0): once per panel, then read
 * by every row of the tile. */
TGT_ZMM INLINE void q8z_decode(const q8_ctx *c, int64_t oa, int64_t ob, __m256i lut, int64_t b0,
                               int64_t b1, q8z_blk *pb, const int KIND, const int UNS,
                               const int H16, const int B16, const int BIAS) {
    const __m256i zero = q8_zero_vnni(c, KIND);
    const __m512i zz = q8z_cat(zero, zero);
    const q8_row_vnni A = q8_row_of_vnni(c, oa, KIND, BIAS), B = q8_row_of_vnni(c, ob, KIND, BIAS);
    for (int64_t b = b0; b < b1; b++) {
        q8z_blk *k = pb + (b - b0);
        k->wc = q8z_cat(q8_wcodes_vnni(A.w, b, lut, KIND), q8_wcodes_vnni(B.w, b, lut, KIND));
        if (!UNS && KIND == K_I8) k->wc = _mm512_xor_si512(k->wc, zz);
        k->ws = q8z_catf(q8_ws_vnni(c, A.s, oa, b, KIND, H16, B16),
                         q8_ws_vnni(c, B.s, ob, b, KIND, H16, B16));
        if (BIAS) k->mb = q8z_catf(q8_par_vnni(A.m, b, H16), q8_par_vnni(B.m, b, H16));
    }
}

/* NP pairs from output o (pair p: o + 2 p and the next, or itself at the tile's end o1; decoded
 * blocks pb + p * Q8_KP) x NR rows from r over blocks [b0, b1); accumulators in acc / bac
 * (pair-major, rows Q8_M_RTILE apart) or, LAST, finished. */
TGT_ZMM INLINE void q8z_kern(const q8_ctx *c, int64_t o, int64_t o1, int64_t r, const q8z_blk *pb,
                             int64_t b0, int64_t b1, __m512 *acc, __m512 *bac, const int LAST,
                             const int NP, const int NR, const int UNS, const int BIAS) {
    const int64_t K = c->K, nb = c->nb;
    const int8_t *qx = c->qx + r * K + 32 * b0;
    const float *dx = c->dx + r * nb + b0, *xs = c->xs + (r * nb + b0) * 8;
    const int32_t *corr = c->corr + (r * nb + b0) * 8;
    __m512 a[Q8_Z_NP][Q8_Z_NR], ba[Q8_Z_NP][Q8_Z_NR];
    _Pragma("GCC unroll 3") for (int p = 0; p < NP; p++)
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            a[p][j] = acc[p * Q8_M_RTILE + j];
            ba[p][j] = BIAS ? bac[p * Q8_M_RTILE + j] : a[p][j];
        }
    for (int64_t b = 0; b < b1 - b0; b++) {
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qx + j * K + 32 * b)));
            const __m512 d = _mm512_set1_ps(dx[j * nb + b]);
            const __m512i cr = UNS ? _mm512_setzero_si512()
                                   : _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(corr + (j * nb + b) * 8)));
            const __m512 xv = BIAS ? _mm512_castsi512_ps(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xs + (j * nb + b) * 8))))
                                   : d;
            _Pragma("GCC unroll 3") for (int p = 0; p < NP; p++) {
                const q8z_blk *k = pb + p * Q8_KP + b;
                const __m512i s = _mm512_dpbusd_epi32(cr, k->wc, q);
                a[p][j] = _mm512_fmadd_ps(_mm512_mul_ps(k->ws, d), _mm512_cvtepi32_ps(s), a[p][j]);
                if (BIAS) ba[p][j] = _mm512_fmadd_ps(k->mb, xv, ba[p][j]);
            }
        }
    }
    _Pragma("GCC unroll 3") for (int p = 0; p < NP; p++) {
        const int64_t oa = o + 2 * p, ob = oa + 1 < o1 ? oa + 1 : oa;
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            if (LAST) {
                q8_fin_vnni(c, oa, r + j, q8z_lo(a[p][j]), q8z_lo(ba[p][j]), BIAS);
                if (ob != oa) q8_fin_vnni(c, ob, r + j, q8z_hi(a[p][j]), q8z_hi(ba[p][j]), BIAS);
            } else {
                acc[p * Q8_M_RTILE + j] = a[p][j];
                if (BIAS) bac[p * Q8_M_RTILE + j] = ba[p][j];
            }
        }
    }
}
#define Q8Z_K(LASTV, NP, NRV) \
    q8z_kern(c, o, o1, r, pb + p * Q8_KP, b0, b1, ao, bo, LASTV, NP, NRV, UNS, BIAS)
#define Q8Z_NR_CASES(LASTV, NP)                                                                 \
    switch (r1 - r < nr ? r1 - r : nr) {                                                       \
    case 1: Q8Z_K(LASTV, NP, 1); break;                                                        \
    case 2: Q8Z_K(LASTV, NP, 2); break;                                                        \
    case 3: Q8Z_K(LASTV, NP, 3); break;                                                        \
    case 4: Q8Z_K(LASTV, NP, 4); break;                                                        \
    case 5: if (!BIAS) Q8Z_K(LASTV, NP, 5); break;                                             \
    case 6: if (!BIAS) Q8Z_K(LASTV, NP, 6); break;                                             \
    case 7: if (!BIAS) Q8Z_K(LASTV, NP, 7); break;                                             \
    default: if (!BIAS) Q8Z_K(LASTV, NP, 8); break;                                            \
    }
TGT_ZMM INLINE void q8z_tile_t(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                               const int KIND, const int UNS, const int H16, const int B16,
                               const int BIAS) {
    __m256i lut = _mm256_setzero_si256();
    if (KIND == K_LUT) /* the table's values + 128, VNNI's unsigned operand */
        lut = _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c->lut)),
                               _mm256_set1_epi8((char)0x80));
    const int64_t npairs = (o1 - o0 + 1) / 2, nr = BIAS ? Q8_Z_NR_BIAS : Q8_Z_NR;
    __m512 acc[(Q8_M_OTILE / 2) * Q8_M_RTILE], bac[BIAS ? (Q8_M_OTILE / 2) * Q8_M_RTILE : 1];
    q8z_blk pb[(Q8_M_OTILE / 2) * Q8_KP];   /* the tile's decoded panel */
    for (int64_t i = 0; i < npairs * Q8_M_RTILE; i++) {
        acc[i] = _mm512_setzero_ps();
        if (BIAS) bac[i] = acc[i];
    }
    for (int64_t b0 = 0; b0 < c->nb; b0 += Q8_KP) {
        const int64_t b1 = b0 + Q8_KP < c->nb ? b0 + Q8_KP : c->nb;
        const int last = b1 == c->nb;
        for (int64_t p = 0; p < npairs; p++) {
            const int64_t oa = o0 + 2 * p, ob = oa + 1 < o1 ? oa + 1 : oa;
            q8z_decode(c, oa, ob, lut, b0, b1, pb + p * Q8_KP, KIND, UNS, H16, B16, BIAS);
        }
        for (int64_t p = 0; p < npairs; p += Q8_Z_NP) {
            const int64_t o = o0 + 2 * p;
            const int64_t np = npairs - p < Q8_Z_NP ? npairs - p : Q8_Z_NP;
            for (int64_t r = r0; r < r1; r += nr) {
                __m512 *ao = acc + p * Q8_M_RTILE + (r - r0);
                __m512 *bo = BIAS ? bac + p * Q8_M_RTILE + (r - r0) : bac;
                if (last && np == 3) { Q8Z_NR_CASES(1, 3) }
                else if (last && np == 2) { Q8Z_NR_CASES(1, 2) }
                else if (last) { Q8Z_NR_CASES(1, 1) }
                else if (np == 3) { Q8Z_NR_CASES(0, 3) }
                else if (np == 2) { Q8Z_NR_CASES(0, 2) }
                else { Q8Z_NR_CASES(0, 1) }
            }
        }
    }
}
TGT_ZMM INLINE void q8z_disp(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                             const int KIND, const int UNS, const int B16) {
    const sq_qblock_format *f = &c->w->qf;
    const int h16 = f->scale_bits == 16, bias = KIND != K_LUT && f->has_bias;
    if (h16 && bias) q8z_tile_t(c, o0, o1, r0, r1, KIND, UNS, 1, B16, 1);
    else if (h16) q8z_tile_t(c, o0, o1, r0, r1, KIND, UNS, 1, B16, 0);
    else if (bias) q8z_tile_t(c, o0, o1, r0, r1, KIND, UNS, 0, B16, 1);
    else q8z_tile_t(c, o0, o1, r0, r1, KIND, UNS, 0, B16, 0);
}
TGT_ZMM static void q8_tile_zmm(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const sq_qblock_format *f = &c->w->qf;
    switch (c->kind) {
    case K_LUT: q8z_tile_t(c, o0, o1, r0, r1, K_LUT, 0, 0, 0, 0); break;
    case K_Q4:
        if (f->code_zero == 0) q8z_disp(c, o0, o1, r0, r1, K_Q4, 1, 0);
        else q8z_disp(c, o0, o1, r0, r1, K_Q4, 0, 0);
        break;
    default:
        if (f->block_elems == 16) q8z_disp(c, o0, o1, r0, r1, K_I8, 0, 1);
        else q8z_disp(c, o0, o1, r0, r1, K_I8, 0, 0);
        break;
    }
}

/* sq_cpu_q8_quantize_row with AVX2, the same float operations per element (amax by max, which
 * like the scalar loop skips NaNs; the product, the rounding trick, the clamps by max / min,
 * which like the scalar comparisons send NaN to -127), so the same bytes and scales. */
TGT_AVX2 static void q8_quantize_row_avx2(const float *x, int64_t K, bool perm, int32_t corr_zero,
                                          int8_t *qx, float *dx, float *xs, int32_t *corr) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 magic = _mm256_set1_ps(12582912.0f), lo = _mm256_set1_ps(-127.0f),
                 hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i cz = _mm256_set1_epi32(-corr_zero);
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4];
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) m = _mm256_max_ps(_mm256_and_ps(v[i], absm), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (perm) {   /* q8_perm_elem: bytes 0..15 take x 0-3, 8-11, 16-19, 24-27 */
            __m256 p0 = _mm256_permute2f128_ps(v[0], v[1], 0x20), p1 = _mm256_permute2f128_ps(v[2], v[3], 0x20);
            __m256 p2 = _mm256_permute2f128_ps(v[0], v[1], 0x31), p3 = _mm256_permute2f128_ps(v[2], v[3], 0x31);
            v[0] = p0;
            v[1] = p1;
            v[2] = p2;
            v[3] = p3;
        }
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            __m256 t = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[i], idv), magic), magic);
            t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            q[i] = _mm256_cvtps_epi32(t);   /* integral already: exact */
        }
        __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(qx + 32 * b), _mm256_permutevar8x32_epi32(bytes, order));
        __m256i ls = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
        ls = _mm256_permutevar8x32_epi32(ls, order);
        _mm256_storeu_si256((__m256i *)(corr + 8 * b), _mm256_mullo_epi32(ls, cz));
        _mm256_storeu_ps(xs + 8 * b, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(ls)));
        dx[b] = d;
    }
}
#endif /* SQ_HAVE_X86 */

/* ---- driver ---------------------------------------------------------------------------------- */

static void q8_task(void *ctx_, int64_t t, int thread) {
    const q8_ctx *c = ctx_;
    int64_t ot = t % c->n_otiles, rt = t / c->n_otiles;
    int64_t o0 = ot * c->otile, o1 = o0 + c->otile < c->N ? o0 + c->otile : c->N;
    int64_t r0 = rt * c->rt, r1 = r0 + c->rt < c->n_rows ? r0 + c->rt : c->n_rows;
    if (c->w->q8i) {   /* interleaved by 16 outputs: cpu_q8i.c */
        sq_q8i_args a = {c->w, c->bias, c->bias_bf16, c->out, c->qx, c->dx, c->bsum,
                         c->K, c->N, c->nb, c->isa, c->zmm, c->kind == K_LUT ? c->lut : NULL};
        sq_cpu_q8i_tile(&a, o0, o1, r0, r1);
        return;
    }
#ifdef SQ_HAVE_X86
    if (c->isa != SQ_CPU_PORTABLE) {
        if (c->zmm && r1 - r0 > Q8_FEW_ROWS) q8_tile_zmm(c, o0, o1, r0, r1);
        else if (c->vnni) q8_tile_vnni(c, o0, o1, r0, r1);
        else q8_tile_avx2(c, o0, o1, r0, r1);
        return;
    }
#endif
    q8_rows_portable(c, o0, o1, r0, r1);
}

typedef struct {
    const float *x;
    int64_t K;
    bool perm;
    int32_t corr_zero;
    sq_cpu_isa isa;
    int8_t *qx;
    float *dx, *xs;
    int32_t *corr;
} quant_ctx;

static void quant_task(void *ctx_, int64_t r, int thread) {
    const quant_ctx *q = ctx_;
    const int64_t nb = q->K / 32;
#ifdef SQ_HAVE_X86
    if (q->isa != SQ_CPU_PORTABLE) {
        q8_quantize_row_avx2(q->x + r * q->K, q->K, q->perm, q->corr_zero, q->qx + r * q->K,
                             q->dx + r * nb, q->xs + r * nb * 8, q->corr + r * nb * 8);
        return;
    }
#endif
    sq_cpu_q8_quantize_row(q->x + r * q->K, q->K, q->perm, q->corr_zero, q->qx + r * q->K, q->dx + r * nb,
                           q->xs + r * nb * 8, q->corr + r * nb * 8);
}

sq_status sq_cpu_reserve_q8(sq_cpu *cpu, int64_t max_rows, int64_t max_width, sq_error *err) {
    uint64_t n = 0;
    int64_t width = (max_width + 31) / 32 * 32;
    if (max_rows <= 0 || width <= 0) return SQ_OK;
    if (!sq_mul_u64((uint64_t)max_rows, (uint64_t)width, &n) || n > (UINT64_C(1) << 34))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                            "backend reserve: int8 activation scratch for %lld x %lld is too large",
                            (long long)max_rows, (long long)max_width);
    if (n <= cpu->q8_cap) return SQ_OK;
    /* per element: 1 byte of qx; per block of 32: dx, 8 lane sums xs, 8 corrections and their
     * sum (cpu_q8i.c) */
    uint64_t nb = n / 32;
    void *p = NULL;
    if (posix_memalign(&p, 64, n + nb * (4 + 32 + 32 + 4) + 64) != 0)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                            "backend reserve: out of memory for the int8 activation scratch");
    free(cpu->q8_buf);
    cpu->q8_buf = p;
    cpu->q8_cap = n;
    return SQ_OK;
}

/* The weight's part of a Linear's context: kind, code table, bias. */
static void q8_ctx_weight(q8_ctx *c, const sq_cpu *cpu, const sq_weight *w, const sq_weight *bias) {
    *c = (q8_ctx){.w = w, .N = w->rows, .K = w->cols, .nb = w->cols / 32, .isa = cpu->isa,
                  .vnni = cpu->vnni, .zmm = cpu->zmm};
    if (bias) {
        if (bias->store == SQ_WSTORE_BF16) c->bias_bf16 = bias->data_d;
        else c->bias = bias->data_d;
    }
    if (w->store == SQ_WSTORE_Q4) {
        c->kind = K_LUT;
        c->lbs = __builtin_ctzll((unsigned long long)w->blocksize);
        c->rs = sq_cpu_q4_row_bytes(c->K);
        for (int i = 0; i < 16; i++) c->lut[i] = q8_lut_code(w->code[i]);
    } else {
        c->kind = w->qf.code_bits == 4 ? K_Q4 : K_I8;
    }
}

/* The activation layout the weight reads: the element order (permuted for LUT groups) and the
 * zero of the corrections. */
static bool q8_perm_of(const q8_ctx *c) { return c->kind == K_LUT; }
static int32_t q8_corr_zero_of(const q8_ctx *c) { return c->kind == K_Q4 ? c->w->qf.code_zero : 128; }

/* The scratch's quantized rows (cpu->q8_buf: codes, then dx, xs, corr) into c. */
static void q8_ctx_scratch(q8_ctx *c, const sq_cpu *cpu) {
    const uint64_t cap_nb = cpu->q8_cap / 32;
    c->qx = cpu->q8_buf;
    c->dx = (const float *)(cpu->q8_buf + cpu->q8_cap);
    c->xs = c->dx + cap_nb;
    c->corr = (const int32_t *)(c->xs + cap_nb * 8);
    c->bsum = c->corr + cap_nb * 8;
}

/* Quantizes nr rows of x (width K) into the scratch in the layout c reads; with bsums also
 * the corrections' sum per block that interleaved weights read (cpu_q8i.c). */
static void q8_quantize_rows(sq_cpu *cpu, const q8_ctx *c, const float *x, int64_t nr, bool bsums) {
    const uint64_t cap_nb = cpu->q8_cap / 32;
    float *dx = (float *)(cpu->q8_buf + cpu->q8_cap), *xs = dx + cap_nb;
    int32_t *corr = (int32_t *)(xs + cap_nb * 8);
    quant_ctx qc = {x, c->K, q8_perm_of(c), q8_corr_zero_of(c), cpu->isa, cpu->q8_buf, dx, xs, corr};
    sq_pool_run((uint64_t)nr * (uint64_t)c->K < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, nr,
                quant_task, &qc);
    if (bsums) sq_cpu_q8i_block_sums(corr, nr, c->nb, cpu->isa, corr + cap_nb * 8);
}

/* The tiling of nr rows (out: the rows' outputs); returns the task count. */
static int64_t q8_ctx_tile(q8_ctx *c, int64_t nr, float *out) {
    c->out = out;
    c->n_rows = nr;
    if (nr > Q8_FEW_ROWS) {
        c->otile = Q8_M_OTILE;
        c->rt = nr < Q8_M_RTILE ? nr : Q8_M_RTILE;
    } else {
        c->otile = Q8_OTILE;
        c->rt = nr;
    }
    c->n_otiles = (c->N + c->otile - 1) / c->otile;
    return c->n_otiles * ((nr + c->rt - 1) / c->rt);
}

sq_status sq_cpu_linear_q8(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                           const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    const int64_t K = w->cols;
    q8_ctx c;
    q8_ctx_weight(&c, cpu, w, bias);
    /* rows in chunks that fit the reserved scratch */
    const int64_t chunk = (int64_t)(cpu->q8_cap / (uint64_t)K);
    if (chunk <= 0)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name,
                            "linear: no int8 activation scratch reserved for width %lld",
                            (long long)K);
    q8_ctx_scratch(&c, cpu);
    for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
        const int64_t nr = n_rows - r0 < chunk ? n_rows - r0 : chunk;
        q8_quantize_rows(cpu, &c, (const float *)x_d + r0 * K, nr, w->q8i);
        const int64_t n_tasks = q8_ctx_tile(&c, nr, (float *)out_d + r0 * c.N);
        uint64_t work = (uint64_t)c.N * (uint64_t)K * (uint64_t)nr;
        sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, n_tasks, q8_task, &c);
    }
    return SQ_OK;
}

/* Several Linears' tasks in one dispatch: task t belongs to the Linear i with
 * start[i] <= t < start[i + 1]. */
typedef struct {
    const q8_ctx *c;
    int n;
    int64_t start[SQ_BACKEND_MAX_LINEARS + 1];
} q8_multi_ctx;

static void q8_multi_task(void *ctx_, int64_t t, int thread) {
    const q8_multi_ctx *m = ctx_;
    int i = 0;
    while (t >= m->start[i + 1]) i++;
    q8_task((void *)&m->c[i], t - m->start[i], thread);
}

bool sq_cpu_linear_q8_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                            const sq_weight *const *w, const sq_weight *const *bias,
                            void *const *out_d) {
    sq_cpu *cpu = sq_cpu_of(be);
    const int64_t K = w[0]->cols;
    if (n < 1 || n > SQ_BACKEND_MAX_LINEARS || (uint64_t)n_rows * (uint64_t)K > cpu->q8_cap) return false;
    q8_ctx c[SQ_BACKEND_MAX_LINEARS];
    for (int i = 0; i < n; i++) {
        q8_ctx_weight(&c[i], cpu, w[i], bias ? bias[i] : NULL);
        if (q8_perm_of(&c[i]) != q8_perm_of(&c[0]) || q8_corr_zero_of(&c[i]) != q8_corr_zero_of(&c[0]))
            return false;
    }
    bool any_q8i = false;
    for (int i = 0; i < n; i++) any_q8i = any_q8i || w[i]->q8i;
    q8_quantize_rows(cpu, &c[0], x_d, n_rows, any_q8i);
    q8_multi_ctx m = {c, n, {0}};
    uint64_t work = 0;
    for (int i = 0; i < n; i++) {
        q8_ctx_scratch(&c[i], cpu);
        m.start[i + 1] = m.start[i] + q8_ctx_tile(&c[i], n_rows, out_d[i]);
        work += (uint64_t)c[i].N * (uint64_t)K * (uint64_t)n_rows;
    }
    sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, m.start[n], q8_multi_task, &m);
    return true;
}
