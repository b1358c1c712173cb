/* CPU Linear: out = x · wᵀ (+ bias) for dense F32 / BF16 and repacked 4-bit NF4 / FP4 weights,
 * plus the fixed-order dot product the attention kernel shares.
 *
 * The reduction order per output element is fixed and is the same in every path: one 8-lane
 * accumulator, acc = fma(w[k..k+8), x[k..k+8), acc) for k = 0, 8, 16, … ascending, then the
 * horizontal sum ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the K % 8 tail with scalar fused
 * multiply-adds, then + bias.  A 4-bit weight element is code[q] * absmax rounded to float32
 * (exactly bnb's dequantized value) before it meets x.  Tiling (how many rows share a decoded
 * weight vector, how many outputs run side by side, which thread) therefore never changes a
 * result bit; the portable path uses fmaf() in the same order and agrees bit for bit.
 * Must never materialize a dequantized weight beyond one 8-element vector per output. */
#include "cpu_impl.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_HAVE_X86 1
#endif

typedef struct {
    const sq_weight *w;
    const float *x;       /* (n_rows, K) */
    const float *bias;    /* (N) float32 or NULL (converted once per call: see below) */
    const uint16_t *bias_bf16;
    float *out;           /* (n_rows, N) */
    int64_t n_rows, K, N;
    int lbs;              /* log2(blocksize) for 4-bit */
    int64_t n_otiles, rt;
} lin_ctx;

enum { OTILE = 32 };      /* outputs per task */

static inline float bias_of(const lin_ctx *c, int64_t o) {
    if (c->bias) return c->bias[o];
    if (c->bias_bf16) return sq_bf16_to_f32_1(c->bias_bf16[o]);
    return 0.0f;
}

/* ---- portable reference path (same order, fmaf) --------------------------------------------- */

static inline float w_elem(const lin_ctx *c, int64_t o, int64_t k) {
    const sq_weight *w = c->w;
    switch (w->store) {
    case SQ_WSTORE_F32: return ((const float *)w->data_d)[o * c->K + k];
    case SQ_WSTORE_BF16: return sq_bf16_to_f32_1(((const uint16_t *)w->data_d)[o * c->K + k]);
    default: {
        int64_t byte;
        int shift;
        sq_cpu_q4_pos(c->K, k, &byte, &shift);
        int q = (((const uint8_t *)w->data_d)[o * (c->K / 2) + byte] >> shift) & 0x0F;
        float am = ((const float *)w->absmax_d)[(uint64_t)(o * c->K + k) >> c->lbs];
        return w->code[q] * am;
    }
    }
}

static float hsum8_portable(const float l[8]) {
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    float t0 = s0 + s2, t1 = s1 + s3;
    return t0 + t1;
}

static void lin_rows_portable(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    int64_t K = c->K, K8 = K & ~(int64_t)7;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t r = r0; r < r1; r++) {
            const float *x = c->x + r * K;
            float acc[8] = {0};
            for (int64_t k = 0; k < K8; k += 8)
                for (int l = 0; l < 8; l++) acc[l] = fmaf(w_elem(c, o, k + l), x[k + l], acc[l]);
            float s = hsum8_portable(acc);
            for (int64_t k = K8; k < K; k++) s = fmaf(w_elem(c, o, k), x[k], s);
            c->out[r * c->N + o] = s + bias_of(c, o);
        }
}

float sq_cpu_dot_portable(const float *a, const float *b, int64_t n) {
    int64_t n8 = n & ~(int64_t)7;
    float acc[8] = {0};
    for (int64_t k = 0; k < n8; k += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(a[k + l], b[k + l], acc[l]);
    float s = hsum8_portable(acc);
    for (int64_t k = n8; k < n; k++) s = fmaf(a[k], b[k], s);
    return s;
}

#ifdef SQ_HAVE_X86
/* ---- AVX2 + FMA (and AVX-512VL for the 16-entry lookup) ------------------------------------- */
#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define TGT_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl")))
#define INLINE static inline __attribute__((always_inline))

TGT_AVX2 INLINE float hsum8_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(u);
}

TGT_AVX2 float sq_cpu_dot_avx2(const float *a, const float *b, int64_t n) {
    int64_t n8 = n & ~(int64_t)7;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = 0; k < n8; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float s = hsum8_avx2(acc);
    for (int64_t k = n8; k < n; k++) s = fmaf(a[k], b[k], s);
    return s;
}

/* code[idx & 15] for 8 lanes; only bits 0..3 of idx matter and `sign` holds bit 3 of the
 * nibble in its sign bit (vpermps reads the low 3 bits of a lane, blendv the sign bit). */
TGT_AVX2 INLINE __m256 lut16_avx2(__m256 lo, __m256 hi, __m256i idx, __m256i sign) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(sign));
}
/* vpermt2ps reads the low 4 bits of each lane: a 16-entry lookup in one instruction. */
TGT_AVX512 INLINE __m256 lut16_avx512(__m256 lo, __m256 hi, __m256i idx, __m256i sign) {
    (void)sign;
    return _mm256_permutex2var_ps(lo, idx, hi);
}

/* The weight vector w[o][k .. k + 8) as float32 (STORE 0 f32, 1 bf16, 2 4-bit).  For 4-bit the
 * 32 lane bytes of the element's group are (re)loaded from L1 and chunk (k / 8) % 8 is shifted
 * down: no shuffle but the lookup itself.  w = code[q] * absmax, rounded once (bnb's value). */
#define SQ_WVEC(NAME, TGT, LUT)                                                                 \
TGT INLINE __m256 NAME(const lin_ctx *c, int64_t o, int64_t k, const int STORE) {              \
    const int64_t K = c->K;                                                                    \
    if (STORE == 0) return _mm256_loadu_ps((const float *)c->w->data_d + o * K + k);           \
    if (STORE == 1) {                                                                          \
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)c->w->data_d + o * K + k)); \
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));           \
    }                                                                                          \
    const uint8_t *row = (const uint8_t *)c->w->data_d + o * (K / 2);                          \
    int64_t full = K & ~(int64_t)63;                                                           \
    __m256i lanes;                                                                             \
    int ch;                                                                                    \
    if (k < full) {                                                                            \
        lanes = _mm256_loadu_si256((const __m256i *)(row + (k >> 6) * 32));                    \
        ch = (int)((k >> 3) & 7);                                                              \
    } else {                                                                                   \
        lanes = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + full / 2)));     \
        ch = (int)((k - full) >> 3);                                                           \
    }                                                                                          \
    __m256i idx = _mm256_srl_epi32(lanes, _mm_cvtsi32_si128(4 * ch));                          \
    __m256i sg = _mm256_sll_epi32(lanes, _mm_cvtsi32_si128(28 - 4 * ch));                      \
    const float *am = (const float *)c->w->absmax_d + ((uint64_t)(o * K + k) >> c->lbs);       \
    return _mm256_mul_ps(LUT(_mm256_loadu_ps(c->w->code), _mm256_loadu_ps(c->w->code + 8), idx, sg), \
                         _mm256_broadcast_ss(am));                                             \
}

SQ_WVEC(wvec_avx2, TGT_AVX2, lut16_avx2)
SQ_WVEC(wvec_avx512, TGT_AVX512, lut16_avx512)

/* One 8-element chunk (ch: constant once unrolled) of a 4-bit group held in `lanes`. */
#define SQ_Q4W(NAME, TGT, LUT)                                                                  \
TGT INLINE __m256 NAME(__m256i lanes, const int ch, __m256 clo, __m256 chi, const float *a) {  \
    __m256i idx = ch ? _mm256_srli_epi32(lanes, 4 * ch) : lanes;                               \
    __m256i sg = ch == 7 ? lanes : _mm256_slli_epi32(lanes, 28 - 4 * ch);                      \
    return _mm256_mul_ps(LUT(clo, chi, idx, sg), _mm256_broadcast_ss(a));                      \
}
SQ_Q4W(q4w_avx2, TGT_AVX2, lut16_avx2)
SQ_Q4W(q4w_avx512, TGT_AVX512, lut16_avx512)

/* Walks the 4-bit groups of NO output rows: for each group, BODY runs for ch = 0 .. n_ch - 1
 * with W(i) the weight vector of output i and KX the element offset (k) of the chunk.  Same k
 * order as the dense path; only the way w is produced differs. */
#define SQ_Q4_WALK(Q4W, NO, ...)                                                               \
    do {                                                                                       \
        const int64_t K = c->K, full = K & ~(int64_t)63;                                       \
        const __m256 clo = _mm256_loadu_ps(c->w->code), chi = _mm256_loadu_ps(c->w->code + 8); \
        const float *am = (const float *)c->w->absmax_d;                                       \
        const uint8_t *rows[4];                                                                \
        uint64_t flat[4];                                                                      \
        for (int i = 0; i < NO; i++) {                                                         \
            rows[i] = (const uint8_t *)c->w->data_d + (o + i) * (K / 2);                       \
            flat[i] = (uint64_t)((o + i) * K);                                                 \
        }                                                                                      \
        for (int64_t g = 0; g < full; g += 64) {                                               \
            __m256i L[4];                                                                      \
            const float *A0[4], *A1[4];                                                        \
            for (int i = 0; i < NO; i++) {                                                     \
                L[i] = _mm256_loadu_si256((const __m256i *)(rows[i] + g / 2));                 \
                A0[i] = am + ((flat[i] + (uint64_t)g) >> c->lbs);                              \
                A1[i] = am + ((flat[i] + (uint64_t)g + 32) >> c->lbs);                         \
            }                                                                                  \
            _Pragma("GCC unroll 8") for (int ch = 0; ch < 8; ch++) {                           \
                const int64_t KX = g + ch * 8;                                                 \
                __VA_ARGS__                                                                    \
            }                                                                                  \
        }                                                                                      \
        if (K & 32) {                                                                          \
            __m256i L[4];                                                                      \
            const float *A0[4], *A1[4];                                                        \
            for (int i = 0; i < NO; i++) {                                                     \
                L[i] = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(rows[i] + full / 2))); \
                A0[i] = A1[i] = am + ((flat[i] + (uint64_t)full) >> c->lbs);                   \
            }                                                                                  \
            _Pragma("GCC unroll 4") for (int ch = 0; ch < 4; ch++) {                           \
                const int64_t KX = full + ch * 8;                                              \
                __VA_ARGS__                                                                    \
            }                                                                                  \
        }                                                                                      \
    } while (0)
#define SQ_Q4_W(Q4W, i) Q4W(L[i], ch, clo, chi, ch < 4 ? A0[i] : A1[i])

/* hsum, the K % 8 tail, the bias: the end of every output element's fixed order */
TGT_AVX2 INLINE void finish_avx2(const lin_ctx *c, int64_t o, int64_t r, __m256 acc) {
    float s = hsum8_avx2(acc);
    const float *x = c->x + r * c->K;
    for (int64_t k = c->K & ~(int64_t)7; k < c->K; k++) s = fmaf(w_elem(c, o, k), x[k], s);
    c->out[r * c->N + o] = s + bias_of(c, o);
}

/* Register tiles: named accumulators (arrays would live on the stack).  4 outputs x 1 row,
 * 2 x 4 and 1 x 8 share each decoded weight vector / each x vector; every accumulator is one
 * (row, output) chain over k ascending, so the tile never changes a bit. */
#define SQ_TILES(SFX, TGT, WV, Q4W)                                                                  \
TGT INLINE void mk4x1_##SFX(const lin_ctx *c, int64_t o, int64_t r, const int S) {             \
    const float *x = c->x + r * c->K;                                                          \
    const int64_t K8 = c->K & ~(int64_t)7;                                                     \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                \
    if (S == 2) {                                                                              \
        SQ_Q4_WALK(Q4W, 4, {                                                                   \
            __m256 xv = _mm256_loadu_ps(x + KX);                                               \
            a0 = _mm256_fmadd_ps(SQ_Q4_W(Q4W, 0), xv, a0);                                     \
            a1 = _mm256_fmadd_ps(SQ_Q4_W(Q4W, 1), xv, a1);                                     \
            a2 = _mm256_fmadd_ps(SQ_Q4_W(Q4W, 2), xv, a2);                                     \
            a3 = _mm256_fmadd_ps(SQ_Q4_W(Q4W, 3), xv, a3);                                     \
        });                                                                                    \
    } else                                                                                     \
    for (int64_t k = 0; k < K8; k += 8) {                                                      \
        __m256 xv = _mm256_loadu_ps(x + k);                                                    \
        a0 = _mm256_fmadd_ps(WV(c, o, k, S), xv, a0);                                          \
        a1 = _mm256_fmadd_ps(WV(c, o + 1, k, S), xv, a1);                                      \
        a2 = _mm256_fmadd_ps(WV(c, o + 2, k, S), xv, a2);                                      \
        a3 = _mm256_fmadd_ps(WV(c, o + 3, k, S), xv, a3);                                      \
    }                                                                                          \
    finish_avx2(c, o, r, a0); finish_avx2(c, o + 1, r, a1);                                    \
    finish_avx2(c, o + 2, r, a2); finish_avx2(c, o + 3, r, a3);                                \
}                                                                                              \
TGT INLINE void mk1x1_##SFX(const lin_ctx *c, int64_t o, int64_t r, const int S) {             \
    const float *x = c->x + r * c->K;                                                          \
    const int64_t K8 = c->K & ~(int64_t)7;                                                     \
    __m256 a0 = _mm256_setzero_ps();                                                           \
    if (S == 2) {                                                                              \
        SQ_Q4_WALK(Q4W, 1, { a0 = _mm256_fmadd_ps(SQ_Q4_W(Q4W, 0), _mm256_loadu_ps(x + KX), a0); }); \
    } else                                                                                     \
    for (int64_t k = 0; k < K8; k += 8)                                                        \
        a0 = _mm256_fmadd_ps(WV(c, o, k, S), _mm256_loadu_ps(x + k), a0);                      \
    finish_avx2(c, o, r, a0);                                                                  \
}                                                                                              \
TGT INLINE void mk2x4_##SFX(const lin_ctx *c, int64_t o, int64_t r, const int S) {             \
    const int64_t K = c->K, K8 = K & ~(int64_t)7;                                              \
    const float *x = c->x + r * K;                                                             \
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                         \
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                         \
    if (S == 2) {                                                                              \
        SQ_Q4_WALK(Q4W, 2, {                                                                   \
            __m256 w0 = SQ_Q4_W(Q4W, 0), w1 = SQ_Q4_W(Q4W, 1), xv;                             \
            xv = _mm256_loadu_ps(x + KX);                                                      \
            a00 = _mm256_fmadd_ps(w0, xv, a00); a10 = _mm256_fmadd_ps(w1, xv, a10);            \
            xv = _mm256_loadu_ps(x + K + KX);                                                  \
            a01 = _mm256_fmadd_ps(w0, xv, a01); a11 = _mm256_fmadd_ps(w1, xv, a11);            \
            xv = _mm256_loadu_ps(x + 2 * K + KX);                                              \
            a02 = _mm256_fmadd_ps(w0, xv, a02); a12 = _mm256_fmadd_ps(w1, xv, a12);            \
            xv = _mm256_loadu_ps(x + 3 * K + KX);                                              \
            a03 = _mm256_fmadd_ps(w0, xv, a03); a13 = _mm256_fmadd_ps(w1, xv, a13);            \
        });                                                                                    \
    } else                                                                                     \
    for (int64_t k = 0; k < K8; k += 8) {                                                      \
        __m256 w0 = WV(c, o, k, S), w1 = WV(c, o + 1, k, S), xv;                               \
        xv = _mm256_loadu_ps(x + k);                                                           \
        a00 = _mm256_fmadd_ps(w0, xv, a00); a10 = _mm256_fmadd_ps(w1, xv, a10);                \
        xv = _mm256_loadu_ps(x + K + k);                                                       \
        a01 = _mm256_fmadd_ps(w0, xv, a01); a11 = _mm256_fmadd_ps(w1, xv, a11);                \
        xv = _mm256_loadu_ps(x + 2 * K + k);                                                   \
        a02 = _mm256_fmadd_ps(w0, xv, a02); a12 = _mm256_fmadd_ps(w1, xv, a12);                \
        xv = _mm256_loadu_ps(x + 3 * K + k);                                                   \
        a03 = _mm256_fmadd_ps(w0, xv, a03); a13 = _mm256_fmadd_ps(w1, xv, a13);                \
    }                                                                                          \
    finish_avx2(c, o, r, a00); finish_avx2(c, o, r + 1, a01);                                  \
    finish_avx2(c, o, r + 2, a02); finish_avx2(c, o, r + 3, a03);                              \
    finish_avx2(c, o + 1, r, a10); finish_avx2(c, o + 1, r + 1, a11);                          \
    finish_avx2(c, o + 1, r + 2, a12); finish_avx2(c, o + 1, r + 3, a13);                      \
}                                                                                              \
TGT INLINE void mk1x8_##SFX(const lin_ctx *c, int64_t o, int64_t r, const int S) {             \
    const int64_t K = c->K, K8 = K & ~(int64_t)7;                                              \
    const float *x = c->x + r * K;                                                             \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,     \
           a7 = a0;                                                                            \
    if (S == 2) {                                                                              \
        SQ_Q4_WALK(Q4W, 1, {                                                                   \
            __m256 w = SQ_Q4_W(Q4W, 0);                                                        \
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + KX), a0);                              \
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + K + KX), a1);                          \
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 2 * K + KX), a2);                      \
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 3 * K + KX), a3);                      \
            a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 4 * K + KX), a4);                      \
            a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 5 * K + KX), a5);                      \
            a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 6 * K + KX), a6);                      \
            a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 7 * K + KX), a7);                      \
        });                                                                                    \
    } else                                                                                     \
    for (int64_t k = 0; k < K8; k += 8) {                                                      \
        __m256 w = WV(c, o, k, S);                                                             \
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + k), a0);                                   \
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + K + k), a1);                               \
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 2 * K + k), a2);                           \
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 3 * K + k), a3);                           \
        a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 4 * K + k), a4);                           \
        a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 5 * K + k), a5);                           \
        a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 6 * K + k), a6);                           \
        a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 7 * K + k), a7);                           \
    }                                                                                          \
    finish_avx2(c, o, r, a0); finish_avx2(c, o, r + 1, a1);                                    \
    finish_avx2(c, o, r + 2, a2); finish_avx2(c, o, r + 3, a3);                                \
    finish_avx2(c, o, r + 4, a4); finish_avx2(c, o, r + 5, a5);                                \
    finish_avx2(c, o, r + 6, a6); finish_avx2(c, o, r + 7, a7);                                \
}                                                                                              \
/* A tile [o0, o1) x [r0, r1): rows by 8 (one output), then by 4 (two outputs), then one at a \
 * time (four outputs side by side hide the FMA latency). */                                   \
TGT static void tile_##SFX##_s(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1, \
                               const int S) {                                                  \
    int64_t r = r0;                                                                            \
    for (; r + 8 <= r1; r += 8)                                                                \
        for (int64_t o = o0; o < o1; o++) mk1x8_##SFX(c, o, r, S);                             \
    for (; r + 4 <= r1; r += 4) {                                                              \
        int64_t o = o0;                                                                        \
        for (; o + 2 <= o1; o += 2) mk2x4_##SFX(c, o, r, S);                                   \
        for (; o < o1; o++)                                                                    \
            for (int64_t rr = r; rr < r + 4; rr++) mk1x1_##SFX(c, o, rr, S);                   \
    }                                                                                          \
    for (; r < r1; r++) {                                                                      \
        int64_t o = o0;                                                                        \
        for (; o + 4 <= o1; o += 4) mk4x1_##SFX(c, o, r, S);                                   \
        for (; o < o1; o++) mk1x1_##SFX(c, o, r, S);                                           \
    }                                                                                          \
}                                                                                              \
TGT static void lin_tile_##SFX(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) { \
    switch (c->w->store) {                                                                     \
    case SQ_WSTORE_F32: tile_##SFX##_s(c, o0, o1, r0, r1, 0); break;                           \
    case SQ_WSTORE_BF16: tile_##SFX##_s(c, o0, o1, r0, r1, 1); break;                          \
    default: tile_##SFX##_s(c, o0, o1, r0, r1, 2); break;                                     \
    }                                                                                          \
}

SQ_TILES(avx2, TGT_AVX2, wvec_avx2, q4w_avx2)
SQ_TILES(avx512, TGT_AVX512, wvec_avx512, q4w_avx512)
#endif /* SQ_HAVE_X86 */

float sq_cpu_dot(sq_cpu_isa isa, const float *a, const float *b, int64_t n) {
#ifdef SQ_HAVE_X86
    if (isa != SQ_CPU_PORTABLE) return sq_cpu_dot_avx2(a, b, n);
#endif
    return sq_cpu_dot_portable(a, b, n);
}

typedef struct {
    lin_ctx lc;
    sq_cpu_isa isa;
} lin_task_ctx;

static void lin_task(void *ctx_, int64_t t, int thread) {
    const lin_task_ctx *tc = ctx_;
    const lin_ctx *c = &tc->lc;
    int64_t ot = t % c->n_otiles, rt = t / c->n_otiles;
    int64_t o0 = ot * OTILE, o1 = o0 + OTILE < c->N ? o0 + OTILE : c->N;
    int64_t r0 = rt * c->rt, r1 = r0 + c->rt < c->n_rows ? r0 + c->rt : c->n_rows;
#ifdef SQ_HAVE_X86
    if (tc->isa == SQ_CPU_AVX512) { lin_tile_avx512(c, o0, o1, r0, r1); return; }
    if (tc->isa == SQ_CPU_AVX2) { lin_tile_avx2(c, o0, o1, r0, r1); return; }
#endif
    lin_rows_portable(c, o0, o1, r0, r1);
}

sq_status sq_cpu_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                        const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    lin_task_ctx tc = {.isa = cpu->isa};
    lin_ctx *c = &tc.lc;
    c->w = w;
    c->x = x_d;
    c->out = out_d;
    c->n_rows = n_rows;
    c->K = w->cols;
    c->N = w->rows;
    if (bias) {
        if (bias->store == SQ_WSTORE_BF16) c->bias_bf16 = bias->data_d;
        else c->bias = bias->data_d;
    }
    if (w->store == SQ_WSTORE_Q4) c->lbs = __builtin_ctzll((unsigned long long)w->blocksize);
    c->n_otiles = (c->N + OTILE - 1) / OTILE;
    /* rows per task: a weight tile (OTILE rows of w) is reused across up to 64 rows of x */
    c->rt = n_rows < 64 ? n_rows : 64;
    int64_t n_rtiles = (n_rows + c->rt - 1) / c->rt;
    /* small products run on the calling thread: waking the pool costs more than they do (the
     * result bits do not depend on it) */
    uint64_t work = (uint64_t)c->N * (uint64_t)c->K * (uint64_t)n_rows;
    sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, c->n_otiles * n_rtiles, lin_task, &tc);
    return SQ_OK;
}
