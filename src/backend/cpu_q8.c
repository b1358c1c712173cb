/* CPU Linear with dynamic int8 activations (the backend's activation mode int8, see
 * sq_backend_cpu_set_activations): each row of x is quantized at run time, absmax per block of
 * 32 elements, and every quantized weight is multiplied with integer dot products and one float
 * scale per (block, output).
 *
 * Why a scale per block of 32 and not per row: the weights carry their own scale per block of
 * 16 or 32, so the kernel does one float multiply-add per weight block whatever the activation
 * granularity is; a per-row activation scale would save nothing in the kernel (the product
 * dw * dx is formed per block either way) and only the quantization of x (O(K) per row against
 * O(K * N)) would get cheaper.  Per block it keeps a large outlier in one channel from crushing
 * the resolution of the other 575 (SmolLM2's hidden state has such channels), which is what
 * llama.cpp's Q8_0 / Q8_K activations do too.
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
 * The order, fixed, the same on the portable, AVX2 and AVX-512 VNNI paths, for any tiling and
 * thread count, so results are bit-identical everywhere:
 *   lane i (0..7) of block b: p = sum of c * qx over the block's bytes 4 i .. 4 i + 3 (an exact
 *     int32: |p| <= 4 * 128 * 127); the bytes are the weight's codes in its layout order and
 *     the activation was quantized in the same order (NF4 / FP4 repacked groups: see
 *     q8_perm_elem);
 *   acc_i = fma(fl(s_{b,i} * dx_b), (float)p, acc_i) for b ascending (one 8-lane accumulator,
 *     s_{b,i} the scale of the sub-block holding lane i);
 *   y = hsum(acc) with the tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7));
 *   formats with a bias m per block of 32: y = y + hsum(bacc), bacc_{b % 8} = fma(m_b, xs_b,
 *     bacc_{b % 8}) for b ascending, xs_b = fl(dx_b * sum of the block's qx);
 *   then + the Linear's bias.
 * The integer sums are exact on every path (AVX2: maddubs of |c| with qx signed by c, then
 * madd by ones: no int16 saturation for |qx| <= 127; VNNI: vpdpbusd of c + 128 with qx, started
 * from -128 * (the lane's sum of qx)), and everything after them is the same float operations
 * in the same order.
 * Supported: the block-scaled form with code_bits 4 (blocks of 32) or 8 (blocks of 16 or 32,
 * a bias only with blocks of 32); NF4 / FP4 with in_features % 64 == 0 and blocks >= 64.
 * Anything else (dense weights, ragged 4-bit rows) takes the float32 path of cpu_linear.c.
 * Must never allocate inside an op (the activation scratch is sized by reserve) or print. */
#include "cpu_impl.h"

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
    Q8_PREFETCH = 512   /* bytes ahead in a code row that the GEMV prefetches */
};

typedef enum { K_Q4 = 0, K_I8 = 1, K_LUT = 2 } q8_kind;

typedef struct {
    const sq_weight *w;
    const float *bias;    /* (N) float32, or bias_bf16, or neither */
    const uint16_t *bias_bf16;
    float *out;           /* (n_rows, N) */
    const int8_t *qx;     /* (n_rows, K) quantized activations */
    const float *dx;      /* (n_rows, nb) their scales */
    const float *xs;      /* (n_rows, nb) dx * sum of the block's qx */
    const int32_t *corr;  /* (n_rows, nb, 8) -128 * the lane's sum of qx */
    int64_t n_rows, K, N, nb;
    int64_t otile, n_otiles, rt;
    q8_kind kind;
    int lbs;              /* LUT: log2(blocksize) */
    int64_t rs;           /* LUT: packed bytes per row */
    int8_t lut[16];       /* LUT: the int8 code table */
    sq_cpu_isa isa;
    bool vnni;
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

/* Row x (K elements) into qx / dx / xs / corr; perm: in the repacked 4-bit byte order. */
void sq_cpu_q8_quantize_row(const float *x, int64_t K, bool perm, int8_t *qx, float *dx,
                            float *xs, int32_t *corr) {
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
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            float t = (xb[perm ? q8_perm_elem(j) : j] * id + magic) - magic;
            t = t >= -127.0f ? t : -127.0f;   /* (a NaN becomes -127: never an undefined cast) */
            t = t <= 127.0f ? t : 127.0f;
            q[j] = (int8_t)t;
            sum += q[j];
        }
        for (int i = 0; i < 8; i++)
            corr[8 * b + i] = -128 * (q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
        dx[b] = d;
        xs[b] = d * (float)sum;
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

/* The bias part: bacc_{b % 8} = fma(m_b, xs_b, bacc) — one C function for every path. */
static float q8_bias_dot(const q8_ctx *c, int64_t o, int64_t r) {
    const sq_qblock_format *f = &c->w->qf;
    const void *m = q8_params(c, c->w->bias_d, o);
    const float *xs = c->xs + r * c->nb;
    float a[8] = {0};
    for (int64_t b = 0; b < c->nb; b++) a[b & 7] = fmaf(sq_qblock_param(f, m, b), xs[b], a[b & 7]);
    return q8_hsum8(a);
}

static inline void q8_finish(const q8_ctx *c, int64_t o, int64_t r, float y) {
    if (c->kind != K_LUT && c->w->qf.has_bias) y = y + q8_bias_dot(c, o, r);
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
            const float *dx = c->dx + r * c->nb;
            float acc[8] = {0};
            for (int64_t b = 0; b < c->nb; b++)
                for (int i = 0; i < 8; i++) {
                    int32_t p = 0;
                    for (int t = 0; t < 4; t++) p += q8_code(c, row, b, 4 * i + t) * qx[32 * b + 4 * i + t];
                    acc[i] = fmaf(q8_wscale(c, o, b, i) * dx[b], (float)p, acc[i]);
                }
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
/* q8_bias_dot's order, 8 blocks per vector (lane j: blocks b = j mod 8), the tail by lanes */  \
TGT INLINE float q8_bdot_##SFX(const q8_ctx *c, int64_t o, int64_t r) {                        \
    const sq_qblock_format *f = &c->w->qf;                                                     \
    const void *m = q8_params(c, c->w->bias_d, o);                                             \
    const float *xs = c->xs + r * c->nb;                                                       \
    const int64_t nb = c->nb, n8 = nb & ~(int64_t)7;                                           \
    __m256 a = _mm256_setzero_ps();                                                            \
    for (int64_t b = 0; b < n8; b += 8) {                                                      \
        __m256 mv = f->scale_bits == 16                                                        \
                        ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)m + b))) \
                        : _mm256_loadu_ps((const float *)m + b);                               \
        a = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xs + b), a);                                   \
    }                                                                                          \
    if (n8 < nb) {                                                                             \
        float l[8];                                                                            \
        _mm256_storeu_ps(l, a);                                                                \
        for (int64_t b = n8; b < nb; b++) {                                                    \
            float mb = f->scale_bits == 16                                                     \
                           ? _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(((const uint16_t *)m)[b]))) \
                           : ((const float *)m)[b];                                            \
            l[b & 7] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(mb), _mm_set_ss(xs[b]),           \
                                                  _mm_set_ss(l[b & 7])));                      \
        }                                                                                      \
        a = _mm256_loadu_ps(l);                                                                \
    }                                                                                          \
    return q8_hsum_##SFX(a);                                                                   \
}                                                                                              \
TGT INLINE void q8_fin_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256 acc) {              \
    float y = q8_hsum_##SFX(acc);                                                              \
    if (c->kind != K_LUT && c->w->qf.has_bias) y = y + q8_bdot_##SFX(c, o, r);                 \
    c->out[r * c->N + o] = y + q8_bias_of(c, o);                                               \
}                                                                                              \
/* The 32 codes of block b of a row: signed (sgn) and, for V, offset by 128 (u). */            \
TGT INLINE __m256i q8_wcodes_##SFX(const q8_ctx *c, const uint8_t *row, int64_t b,             \
                                   __m256i lut, const int KIND) {                              \
    const __m256i m4 = _mm256_set1_epi8(15);                                                   \
    if (KIND == K_Q4) {                                                                        \
        __m128i v = _mm_loadu_si128((const __m128i *)(row + b * 16));                          \
        __m256i n = _mm256_and_si256(                                                          \
            _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), m4);  \
        return n;   /* nibbles; the zero is applied by the caller */                           \
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
        if (UNSIGNED) return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, qx);               \
        __m256i u = KIND == K_Q4 ? _mm256_add_epi8(w, zero) : _mm256_xor_si256(w, zero);       \
        return _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)corr), u, qx);          \
    }                                                                                          \
    const __m256i ones = _mm256_set1_epi16(1);                                                 \
    if (UNSIGNED) return _mm256_madd_epi16(_mm256_maddubs_epi16(w, qx), ones);                 \
    __m256i s = KIND == K_Q4 ? _mm256_sub_epi8(w, zero) : w;                                   \
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(s, s),                      \
                                                  _mm256_sign_epi8(qx, s)), ones);             \
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
    if (H16) return _mm256_cvtph_ps(_mm_set1_epi16((short)((const uint16_t *)sp)[b]));         \
    return _mm256_broadcast_ss((const float *)sp + b);                                         \
}                                                                                              \
TGT INLINE __m256i q8_zero_##SFX(const q8_ctx *c, const int KIND) {                            \
    if (KIND == K_Q4) return _mm256_set1_epi8((char)(V ? 128 - c->w->qf.code_zero              \
                                                       : c->w->qf.code_zero));                 \
    return _mm256_set1_epi8((char)0x80);                                                       \
}                                                                                              \
/* GEMV: NO (4 or 1) outputs from o, row r */                                                  \
TGT INLINE void q8_few_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256i lut, const int NO, \
                             const int KIND, const int UNS, const int H16, const int B16) {    \
    const int8_t *qx = c->qx + r * c->K;                                                       \
    const float *dx = c->dx + r * c->nb;                                                       \
    const int32_t *corr = c->corr + r * c->nb * 8;                                             \
    const __m256i zero = q8_zero_##SFX(c, KIND);                                               \
    const int64_t gb = KIND == K_Q4 ? 16 : 32;                                                 \
    const uint8_t *w0 = q8_codes(c, o), *w1 = NO > 1 ? q8_codes(c, o + 1) : w0;                \
    const uint8_t *w2 = NO > 1 ? q8_codes(c, o + 2) : w0, *w3 = NO > 1 ? q8_codes(c, o + 3) : w0; \
    const void *s0 = KIND == K_LUT ? NULL : q8_params(c, c->w->absmax_d, o);                   \
    const void *s1 = KIND == K_LUT || NO == 1 ? s0 : q8_params(c, c->w->absmax_d, o + 1);      \
    const void *s2 = KIND == K_LUT || NO == 1 ? s0 : q8_params(c, c->w->absmax_d, o + 2);      \
    const void *s3 = KIND == K_LUT || NO == 1 ? s0 : q8_params(c, c->w->absmax_d, o + 3);      \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                \
    for (int64_t b = 0; b < c->nb; b++) {                                                      \
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));                  \
        const __m256 d = _mm256_broadcast_ss(dx + b);                                          \
        const int64_t pf = (KIND == K_LUT ? (b >> 1) * 32 : b * gb) + Q8_PREFETCH;             \
        _mm_prefetch((const char *)(w0 + pf), _MM_HINT_T0);                                    \
        __m256i p = q8_dot_##SFX(q8_wcodes_##SFX(c, w0, b, lut, KIND), q, corr + 8 * b, zero,  \
                                 KIND, UNS);                                                   \
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(q8_ws_##SFX(c, s0, o, b, KIND, H16, B16), d),       \
                             _mm256_cvtepi32_ps(p), a0);                                       \
        if (NO > 1) {                                                                          \
            _mm_prefetch((const char *)(w1 + pf), _MM_HINT_T0);                                \
            _mm_prefetch((const char *)(w2 + pf), _MM_HINT_T0);                                \
            _mm_prefetch((const char *)(w3 + pf), _MM_HINT_T0);                                \
            p = q8_dot_##SFX(q8_wcodes_##SFX(c, w1, b, lut, KIND), q, corr + 8 * b, zero,      \
                             KIND, UNS);                                                       \
            a1 = _mm256_fmadd_ps(_mm256_mul_ps(q8_ws_##SFX(c, s1, o + 1, b, KIND, H16, B16), d), \
                                 _mm256_cvtepi32_ps(p), a1);                                   \
            p = q8_dot_##SFX(q8_wcodes_##SFX(c, w2, b, lut, KIND), q, corr + 8 * b, zero,      \
                             KIND, UNS);                                                       \
            a2 = _mm256_fmadd_ps(_mm256_mul_ps(q8_ws_##SFX(c, s2, o + 2, b, KIND, H16, B16), d), \
                                 _mm256_cvtepi32_ps(p), a2);                                   \
            p = q8_dot_##SFX(q8_wcodes_##SFX(c, w3, b, lut, KIND), q, corr + 8 * b, zero,      \
                             KIND, UNS);                                                       \
            a3 = _mm256_fmadd_ps(_mm256_mul_ps(q8_ws_##SFX(c, s3, o + 3, b, KIND, H16, B16), d), \
                                 _mm256_cvtepi32_ps(p), a3);                                   \
        }                                                                                      \
    }                                                                                          \
    q8_fin_##SFX(c, o, r, a0);                                                                 \
    if (NO > 1) {                                                                              \
        q8_fin_##SFX(c, o + 1, r, a1);                                                         \
        q8_fin_##SFX(c, o + 2, r, a2);                                                         \
        q8_fin_##SFX(c, o + 3, r, a3);                                                         \
    }                                                                                          \
}                                                                                              \
/* GEMM: 2 outputs (o, o + 1; TWO = 0: o only) x NR (1 .. 4) rows from r; each weight block    \
 * is decoded once for the NR rows. */                                                         \
TGT INLINE void q8_2xn_##SFX(const q8_ctx *c, int64_t o, int64_t r, __m256i lut, const int TWO, \
                             const int NR, const int KIND, const int UNS, const int H16,       \
                             const int B16) {                                                  \
    const __m256i zero = q8_zero_##SFX(c, KIND);                                               \
    const uint8_t *w0 = q8_codes(c, o), *w1 = TWO ? q8_codes(c, o + 1) : w0;                   \
    const void *s0 = KIND == K_LUT ? NULL : q8_params(c, c->w->absmax_d, o);                   \
    const void *s1 = KIND == K_LUT || !TWO ? s0 : q8_params(c, c->w->absmax_d, o + 1);         \
    const int8_t *qx = c->qx + r * c->K;                                                       \
    const float *dx = c->dx + r * c->nb;                                                       \
    const int32_t *corr = c->corr + r * c->nb * 8;                                             \
    const int64_t K = c->K, nb = c->nb;                                                        \
    __m256 a[2][4];                                                                            \
    for (int j = 0; j < 4; j++) a[0][j] = a[1][j] = _mm256_setzero_ps();                       \
    for (int64_t b = 0; b < nb; b++) {                                                         \
        const __m256i c0 = q8_wcodes_##SFX(c, w0, b, lut, KIND);                               \
        const __m256i c1 = TWO ? q8_wcodes_##SFX(c, w1, b, lut, KIND) : c0;                    \
        const __m256 ws0 = q8_ws_##SFX(c, s0, o, b, KIND, H16, B16);                           \
        const __m256 ws1 = TWO ? q8_ws_##SFX(c, s1, o + 1, b, KIND, H16, B16) : ws0;           \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + j * K + 32 * b));      \
            const __m256 d = _mm256_broadcast_ss(dx + j * nb + b);                             \
            const int32_t *cr = corr + (j * nb + b) * 8;                                       \
            __m256i p = q8_dot_##SFX(c0, q, cr, zero, KIND, UNS);                              \
            a[0][j] = _mm256_fmadd_ps(_mm256_mul_ps(ws0, d), _mm256_cvtepi32_ps(p), a[0][j]);  \
            if (TWO) {                                                                         \
                p = q8_dot_##SFX(c1, q, cr, zero, KIND, UNS);                                  \
                a[1][j] = _mm256_fmadd_ps(_mm256_mul_ps(ws1, d), _mm256_cvtepi32_ps(p), a[1][j]); \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    for (int j = 0; j < NR; j++) {                                                             \
        q8_fin_##SFX(c, o, r + j, a[0][j]);                                                    \
        if (TWO) q8_fin_##SFX(c, o + 1, r + j, a[1][j]);                                       \
    }                                                                                          \
}                                                                                              \
TGT INLINE void q8_tile_t_##SFX(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0,           \
                                int64_t r1, const int KIND, const int UNS, const int H16,      \
                                const int B16) {                                               \
    __m256i lut = _mm256_setzero_si256();                                                      \
    if (KIND == K_LUT) {                                                                       \
        lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c->lut));           \
    }                                                                                          \
    if (r1 - r0 <= Q8_FEW_ROWS) {                                                              \
        for (int64_t r = r0; r < r1; r++) {                                                    \
            int64_t o = o0;                                                                    \
            for (; o + 4 <= o1; o += 4) q8_few_##SFX(c, o, r, lut, 4, KIND, UNS, H16, B16);    \
            for (; o < o1; o++) q8_few_##SFX(c, o, r, lut, 1, KIND, UNS, H16, B16);            \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    for (int64_t o = o0; o < o1; o += 2) {                                                     \
        const int two = o + 1 < o1;                                                            \
        int64_t r = r0;                                                                        \
        for (; r + 4 <= r1; r += 4) {                                                          \
            if (two) q8_2xn_##SFX(c, o, r, lut, 1, 4, KIND, UNS, H16, B16);                    \
            else q8_2xn_##SFX(c, o, r, lut, 0, 4, KIND, UNS, H16, B16);                        \
        }                                                                                      \
        for (; r < r1; r++) {                                                                  \
            if (two) q8_2xn_##SFX(c, o, r, lut, 1, 1, KIND, UNS, H16, B16);                    \
            else q8_2xn_##SFX(c, o, r, lut, 0, 1, KIND, UNS, H16, B16);                        \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
TGT static void q8_tile_##SFX(const q8_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) { \
    const sq_qblock_format *f = &c->w->qf;                                                     \
    switch (c->kind) {                                                                         \
    case K_LUT: q8_tile_t_##SFX(c, o0, o1, r0, r1, K_LUT, 0, 0, 0); break;                     \
    case K_Q4:                                                                                 \
        if (f->code_zero == 0) {                                                               \
            if (f->scale_bits == 16) q8_tile_t_##SFX(c, o0, o1, r0, r1, K_Q4, 1, 1, 0);        \
            else q8_tile_t_##SFX(c, o0, o1, r0, r1, K_Q4, 1, 0, 0);                            \
        } else {                                                                               \
            if (f->scale_bits == 16) q8_tile_t_##SFX(c, o0, o1, r0, r1, K_Q4, 0, 1, 0);        \
            else q8_tile_t_##SFX(c, o0, o1, r0, r1, K_Q4, 0, 0, 0);                            \
        }                                                                                      \
        break;                                                                                 \
    default:                                                                                   \
        if (f->block_elems == 16) {                                                            \
            if (f->scale_bits == 16) q8_tile_t_##SFX(c, o0, o1, r0, r1, K_I8, 0, 1, 1);        \
            else q8_tile_t_##SFX(c, o0, o1, r0, r1, K_I8, 0, 0, 1);                            \
        } else if (f->scale_bits == 16) {                                                      \
            q8_tile_t_##SFX(c, o0, o1, r0, r1, K_I8, 0, 1, 0);                                 \
        } else {                                                                               \
            q8_tile_t_##SFX(c, o0, o1, r0, r1, K_I8, 0, 0, 0);                                 \
        }                                                                                      \
        break;                                                                                 \
    }                                                                                          \
}

Q8_BODY(TGT_AVX2, avx2, 0)
Q8_BODY(TGT_VNNI, vnni, 1)
#endif /* SQ_HAVE_X86 */

/* ---- driver ---------------------------------------------------------------------------------- */

static void q8_task(void *ctx_, int64_t t, int thread) {
    const q8_ctx *c = ctx_;
    int64_t ot = t % c->n_otiles, rt = t / c->n_otiles;
    int64_t o0 = ot * c->otile, o1 = o0 + c->otile < c->N ? o0 + c->otile : c->N;
    int64_t r0 = rt * c->rt, r1 = r0 + c->rt < c->n_rows ? r0 + c->rt : c->n_rows;
#ifdef SQ_HAVE_X86
    if (c->isa != SQ_CPU_PORTABLE) {
        if (c->vnni) q8_tile_vnni(c, o0, o1, r0, r1);
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
    int8_t *qx;
    float *dx, *xs;
    int32_t *corr;
} quant_ctx;

static void quant_task(void *ctx_, int64_t r, int thread) {
    const quant_ctx *q = ctx_;
    const int64_t nb = q->K / 32;
    sq_cpu_q8_quantize_row(q->x + r * q->K, q->K, q->perm, q->qx + r * q->K, q->dx + r * nb,
                           q->xs + r * nb, q->corr + r * nb * 8);
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
    /* per element: 1 byte of qx; per block of 32: dx, xs and 8 lane corrections */
    uint64_t nb = n / 32;
    void *p = NULL;
    if (posix_memalign(&p, 64, n + nb * (4 + 4 + 32) + 64) != 0)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                            "backend reserve: out of memory for the int8 activation scratch");
    free(cpu->q8_buf);
    cpu->q8_buf = p;
    cpu->q8_cap = n;
    return SQ_OK;
}

sq_status sq_cpu_linear_q8(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                           const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    const int64_t K = w->cols, nb = K / 32;
    q8_ctx c = {.w = w, .N = w->rows, .K = K, .nb = nb, .isa = cpu->isa, .vnni = cpu->vnni};
    if (bias) {
        if (bias->store == SQ_WSTORE_BF16) c.bias_bf16 = bias->data_d;
        else c.bias = bias->data_d;
    }
    if (w->store == SQ_WSTORE_Q4) {
        c.kind = K_LUT;
        c.lbs = __builtin_ctzll((unsigned long long)w->blocksize);
        c.rs = sq_cpu_q4_row_bytes(K);
        for (int i = 0; i < 16; i++) c.lut[i] = q8_lut_code(w->code[i]);
    } else {
        c.kind = w->qf.code_bits == 4 ? K_Q4 : K_I8;
    }
    /* rows in chunks that fit the reserved scratch */
    const int64_t chunk = (int64_t)(cpu->q8_cap / (uint64_t)K);
    if (chunk <= 0)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name,
                            "linear: no int8 activation scratch reserved for width %lld",
                            (long long)K);
    const uint64_t cap_nb = cpu->q8_cap / 32;
    int8_t *qx = cpu->q8_buf;
    float *dx = (float *)(cpu->q8_buf + cpu->q8_cap), *xs = dx + cap_nb;
    int32_t *corr = (int32_t *)(xs + cap_nb);
    for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
        const int64_t nr = n_rows - r0 < chunk ? n_rows - r0 : chunk;
        quant_ctx qc = {(const float *)x_d + r0 * K, K, c.kind == K_LUT, qx, dx, xs, corr};
        sq_pool_run((uint64_t)nr * (uint64_t)K < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, nr,
                    quant_task, &qc);
        c.qx = qx;
        c.dx = dx;
        c.xs = xs;
        c.corr = corr;
        c.out = (float *)out_d + r0 * c.N;
        c.n_rows = nr;
        if (nr > Q8_FEW_ROWS) {
            c.otile = Q8_M_OTILE;
            c.rt = nr < Q8_M_RTILE ? nr : Q8_M_RTILE;
        } else {
            c.otile = Q8_OTILE;
            c.rt = nr;
        }
        c.n_otiles = (c.N + c.otile - 1) / c.otile;
        const int64_t n_rtiles = (nr + c.rt - 1) / c.rt;
        uint64_t work = (uint64_t)c.N * (uint64_t)K * (uint64_t)nr;
        sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, c.n_otiles * n_rtiles, q8_task, &c);
    }
    return SQ_OK;
}
