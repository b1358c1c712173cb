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
        const uint8_t *p = (const uint8_t *)w->data_d + (o * (c->K / 32) + (k >> 5)) * 16;
        int e = (int)(k & 31);
        int q = e < 16 ? (p[e] & 0x0F) : (p[e - 16] >> 4);
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

TGT_AVX2 INLINE __m256 lut16_avx2(__m256 lo, __m256 hi, __m256i idx) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
TGT_AVX512 INLINE __m256 lut16_avx512(__m256 lo, __m256 hi, __m256i idx) {
    return _mm256_permutex2var_ps(lo, idx, hi);
}

/* One micro-kernel body for a tile of O outputs x R rows, all accumulators in registers.
 * STORE: 0 f32, 1 bf16, 2 q4.  Instantiated per ISA with the lookup above. */
#define SQ_MICRO_KERNEL(NAME, TGT, LUT)                                                         \
TGT INLINE void NAME(const lin_ctx *c, int64_t o0, const int O, int64_t r0, const int R,       \
                     const int STORE) {                                                        \
    const int64_t K = c->K;                                                                    \
    const int64_t K8 = K & ~(int64_t)7;                                                        \
    __m256 acc[4][4];                                                                          \
    _Pragma("GCC unroll 4") for (int i = 0; i < O; i++)                                       \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[i][r] = _mm256_setzero_ps();      \
    if (STORE == 2) {                                                                          \
        const uint8_t *pk = (const uint8_t *)c->w->data_d;                                     \
        const float *am = (const float *)c->w->absmax_d;                                       \
        const __m256 clo = _mm256_loadu_ps(c->w->code), chi = _mm256_loadu_ps(c->w->code + 8); \
        const __m256i m4 = _mm256_set1_epi32(0x0F);                                            \
        const int64_t G = K / 32;                                                              \
        for (int64_t g = 0; g < G; g++) {                                                      \
            __m256 lo[4], hi[4];                                                               \
            const uint8_t *p[4];                                                               \
            _Pragma("GCC unroll 4") for (int i = 0; i < O; i++) {                             \
                __m256 a = _mm256_set1_ps(am[(uint64_t)((o0 + i) * K + g * 32) >> c->lbs]);    \
                lo[i] = _mm256_mul_ps(clo, a);                                                 \
                hi[i] = _mm256_mul_ps(chi, a);                                                 \
                p[i] = pk + ((o0 + i) * G + g) * 16;                                           \
            }                                                                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                             \
                __m256 w[4];                                                                   \
                _Pragma("GCC unroll 4") for (int i = 0; i < O; i++) {                         \
                    __m256i b = _mm256_cvtepu8_epi32(                                          \
                        _mm_loadl_epi64((const __m128i *)(p[i] + 8 * (j & 1))));               \
                    __m256i idx = j < 2 ? _mm256_and_si256(b, m4) : _mm256_srli_epi32(b, 4);   \
                    w[i] = LUT(lo[i], hi[i], idx);                                             \
                }                                                                              \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                         \
                    __m256 xv = _mm256_loadu_ps(c->x + (r0 + r) * K + g * 32 + j * 8);         \
                    _Pragma("GCC unroll 4") for (int i = 0; i < O; i++)                       \
                        acc[i][r] = _mm256_fmadd_ps(w[i], xv, acc[i][r]);                      \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    } else {                                                                                   \
        for (int64_t k = 0; k < K8; k += 8) {                                                  \
            __m256 w[4];                                                                       \
            _Pragma("GCC unroll 4") for (int i = 0; i < O; i++) {                             \
                if (STORE == 0) {                                                              \
                    w[i] = _mm256_loadu_ps((const float *)c->w->data_d + (o0 + i) * K + k);    \
                } else {                                                                       \
                    __m128i h = _mm_loadu_si128(                                               \
                        (const __m128i *)((const uint16_t *)c->w->data_d + (o0 + i) * K + k)); \
                    w[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); \
                }                                                                              \
            }                                                                                  \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                             \
                __m256 xv = _mm256_loadu_ps(c->x + (r0 + r) * K + k);                          \
                _Pragma("GCC unroll 4") for (int i = 0; i < O; i++)                           \
                    acc[i][r] = _mm256_fmadd_ps(w[i], xv, acc[i][r]);                          \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    _Pragma("GCC unroll 4") for (int i = 0; i < O; i++)                                       \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                     \
        float s = hsum8_avx2(acc[i][r]);                                                       \
        const float *x = c->x + (r0 + r) * K;                                                  \
        for (int64_t k = K8; k < K; k++) s = fmaf(w_elem(c, o0 + i, k), x[k], s);              \
        c->out[(r0 + r) * c->N + o0 + i] = s + bias_of(c, o0 + i);                             \
    }                                                                                          \
}

SQ_MICRO_KERNEL(mk_avx2, TGT_AVX2, lut16_avx2)
SQ_MICRO_KERNEL(mk_avx512, TGT_AVX512, lut16_avx512)

/* A tile [o0, o1) x [r0, r1): rows in blocks of 4 with 2 outputs side by side (8 chains),
 * leftover rows one at a time with 4 outputs side by side (4 chains hide the FMA latency). */
#define SQ_TILE_FN(NAME, TGT, MK)                                                               \
TGT static void NAME##_s(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,    \
                         const int S) {                                                        \
    int64_t r = r0;                                                                            \
    for (; r + 4 <= r1; r += 4) {                                                              \
        int64_t o = o0;                                                                        \
        for (; o + 2 <= o1; o += 2) MK(c, o, 2, r, 4, S);                                      \
        for (; o < o1; o++) MK(c, o, 1, r, 4, S);                                              \
    }                                                                                          \
    for (; r < r1; r++) {                                                                      \
        int64_t o = o0;                                                                        \
        for (; o + 4 <= o1; o += 4) MK(c, o, 4, r, 1, S);                                      \
        for (; o < o1; o++) MK(c, o, 1, r, 1, S);                                              \
    }                                                                                          \
}                                                                                              \
TGT static void NAME(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {       \
    switch (c->w->store) {                                                                     \
    case SQ_WSTORE_F32: NAME##_s(c, o0, o1, r0, r1, 0); break;                                 \
    case SQ_WSTORE_BF16: NAME##_s(c, o0, o1, r0, r1, 1); break;                                \
    default: NAME##_s(c, o0, o1, r0, r1, 2); break;                                            \
    }                                                                                          \
}

SQ_TILE_FN(lin_tile_avx2, TGT_AVX2, mk_avx2)
SQ_TILE_FN(lin_tile_avx512, TGT_AVX512, mk_avx512)
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
    sq_pool_run(cpu->pool, c->n_otiles * n_rtiles, lin_task, &tc);
    return SQ_OK;
}
