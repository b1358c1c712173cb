/* CPU Linear: out = x · wᵀ (+ bias) for dense F32 / BF16 and repacked 4-bit NF4 / FP4 weights,
 * the 4-bit repacking itself, plus the fixed-order dot product the attention kernel shares.
 *
 * The reduction order per output element is fixed and is the same in every path: one 8-lane
 * accumulator, acc = fma(w[k..k+8), x[k..k+8), acc) for k = 0, 8, 16, … ascending, then the
 * horizontal sum ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the K % 8 tail with scalar fused
 * multiply-adds, then + bias.  A 4-bit weight element is code[q] * absmax rounded to float32
 * (exactly bnb's dequantized value, absmax of the bnb block holding the element's flat index
 * o * K + k) before it meets x.  Tiling (how many rows share a decoded weight vector, how many
 * outputs run side by side, which thread) therefore never changes a result bit; the portable
 * path uses fmaf() in the same order and agrees bit for bit.  A 4-bit weight interleaved for
 * the int8 kernels (w->q8i, cpu_q8i.h; uploaded in int8 mode, then used with float32
 * activations) takes that portable path, element by element: slow, the same bits.
 * 4-bit on AVX2: the 16 code values are split into 4 byte planes; vpshufb looks up 32 nibbles
 * per plane at once and two rounds of unpacks rebuild the float32 codes in k order (the repacked
 * layout, sq_cpu_q4_pos, is made for that), then one multiply by absmax and the FMA.  Few rows:
 * four outputs decode side by side straight into their accumulators.  More rows: a panel of
 * two outputs is decoded once into a small stack buffer and reused by every row of the tile.
 * Must never keep a dequantized copy of a weight beyond one panel per running task. */
#include "cpu_impl.h"
#include "cpu_q8i.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_HAVE_X86 1
#endif

typedef struct {
    const sq_weight *w;
    const float *x;       /* (n_rows, K) */
    const float *bias;    /* (N) float32 or NULL */
    const uint16_t *bias_bf16;
    float *out;           /* (n_rows, N) */
    int64_t n_rows, K, N;
    int lbs;              /* log2(blocksize) for 4-bit */
    int64_t rs;           /* 4-bit: packed bytes per weight row (sq_cpu_q4_row_bytes) */
    int64_t otile, n_otiles, rt;
} lin_ctx;

enum {
    OTILE = 32,           /* outputs per task (dense; 4-bit with few rows) */
    Q4_OTILE = 16,        /* outputs per task, 4-bit with many rows */
    Q4_RTILE = 32,        /* rows per task, 4-bit with many rows */
    Q4_FEW_ROWS = 2,      /* up to this many rows: decode straight into the accumulators */
    Q4_PANEL = 128,       /* elements of one output decoded at a time on the many-row path */
    Q4_PREFETCH = 512     /* bytes ahead in a weight row that the few-row path prefetches */
};

static inline float bias_of(const lin_ctx *c, int64_t o) {
    if (c->bias) return c->bias[o];
    if (c->bias_bf16) return sq_bf16_to_f32_1(c->bias_bf16[o]);
    return 0.0f;
}

/* ---- 4-bit layout ----------------------------------------------------------------------------- */

int64_t sq_cpu_q4_row_bytes(int64_t K) {
    int64_t rem = K & 63;
    return (K >> 6) * 32 + (rem == 0 ? 0 : rem <= 32 ? 16 : 32);
}

typedef struct {
    const uint8_t *src;   /* bnb: flat element i in byte i / 2, the even one in the high nibble */
    uint8_t *dst;
    int64_t K, rows, rs;
} repack_ctx;

/* pos(e) of sq_cpu_q4_pos for e < 32: the byte of a full group's element e (and of e + 32) */
static const uint8_t k_q4_pos32[32] = {0,  1,  2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
                                       8,  9,  10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

/* Rows [64 t, 64 t + 64).  Full groups of 64 elements whose source starts on a byte (K even):
 * the 32 source bytes' 64 nibbles, then 32 stores through k_q4_pos32 (the loader spends most of
 * a warm load here otherwise).  The rest nibble by nibble through sq_cpu_q4_pos.  The layout
 * does not depend on the host's endianness; padding nibbles are zero.  Both ways give the same
 * bytes (test_linear_4bit_any_width: K of full groups, partial groups, odd K; a wrong byte
 * breaks its equality with the dense path). */
static void repack_task(void *ctx_, int64_t t, int thread) {
    const repack_ctx *c = ctx_;
    int64_t K = c->K, end = 64 * t + 64 < c->rows ? 64 * t + 64 : c->rows;
    for (int64_t o = 64 * t; o < end; o++) {
        uint8_t *d = c->dst + o * c->rs;
        memset(d, 0, (size_t)c->rs);
        uint64_t f = (uint64_t)o * (uint64_t)K;
        int64_t k = 0;
        if (!(f & 1)) {
            for (; k + 64 <= K; k += 64, f += 64) {
                const uint8_t *s = c->src + (f >> 1);
                uint8_t *g = d + (k >> 6) * 32;
#ifdef SQ_HAVE_X86
                /* SSE2: nibbles of bytes 0..15 (elements 0..31) and 16..31 (32..63) in element
                 * order, C[e] = n[e] | n[e + 32] << 4, then pos(): dwords 0 2 4 6 | 1 3 5 7 */
                const __m128i m15 = _mm_set1_epi8(15);
                __m128i s0 = _mm_loadu_si128((const __m128i *)s);
                __m128i s1 = _mm_loadu_si128((const __m128i *)(s + 16));
                __m128i h0 = _mm_and_si128(_mm_srli_epi16(s0, 4), m15), l0 = _mm_and_si128(s0, m15);
                __m128i h1 = _mm_and_si128(_mm_srli_epi16(s1, 4), m15), l1 = _mm_and_si128(s1, m15);
                __m128i c0 = _mm_or_si128(_mm_unpacklo_epi8(h0, l0),
                                          _mm_slli_epi16(_mm_unpacklo_epi8(h1, l1), 4));
                __m128i c1 = _mm_or_si128(_mm_unpackhi_epi8(h0, l0),
                                          _mm_slli_epi16(_mm_unpackhi_epi8(h1, l1), 4));
                __m128 f0 = _mm_castsi128_ps(c0), f1 = _mm_castsi128_ps(c1);
                _mm_storeu_si128((__m128i *)g, _mm_castps_si128(_mm_shuffle_ps(f0, f1, _MM_SHUFFLE(2, 0, 2, 0))));
                _mm_storeu_si128((__m128i *)(g + 16),
                                 _mm_castps_si128(_mm_shuffle_ps(f0, f1, _MM_SHUFFLE(3, 1, 3, 1))));
                continue;
#endif
                uint8_t n[64];
                for (int b = 0; b < 32; b++) {
                    n[2 * b] = (uint8_t)(s[b] >> 4);
                    n[2 * b + 1] = (uint8_t)(s[b] & 15);
                }
                for (int e = 0; e < 32; e++) g[k_q4_pos32[e]] = (uint8_t)(n[e] | (n[e + 32] << 4));
            }
        }
        for (; k < K; k++, f++) {
            uint8_t b = c->src[f >> 1];
            int q = (f & 1) ? (b & 15) : (b >> 4);
            int64_t byte;
            int shift;
            sq_cpu_q4_pos(K, k, &byte, &shift);
            d[byte] |= (uint8_t)(q << shift);
        }
    }
}

void sq_cpu_q4_repack(sq_pool *pool, const uint8_t *src, uint8_t *dst, int64_t rows, int64_t K) {
    repack_ctx rc = {src, dst, K, rows, sq_cpu_q4_row_bytes(K)};
    sq_pool_run(pool, (rows + 63) / 64, repack_task, &rc);
}

/* ---- portable reference path (same order, fmaf) --------------------------------------------- */

static inline float w_elem(const lin_ctx *c, int64_t o, int64_t k) {
    const sq_weight *w = c->w;
    switch (w->store) {
    case SQ_WSTORE_F32: return ((const float *)w->data_d)[o * c->K + k];
    case SQ_WSTORE_BF16: return sq_bf16_to_f32_1(((const uint16_t *)w->data_d)[o * c->K + k]);
    default: {
        if (w->q8i) return w->code[sq_cpu_q8i_q4_nibble(w, o, k)] * sq_cpu_q8i_q4_absmax(w, o, k);
        int64_t byte;
        int shift;
        sq_cpu_q4_pos(c->K, k, &byte, &shift);
        int q = (((const uint8_t *)w->data_d)[o * c->rs + byte] >> shift) & 0x0F;
        float am = ((const float *)w->absmax_d)[((uint64_t)o * (uint64_t)c->K + (uint64_t)k) >> c->lbs];
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
/* ---- AVX2 + FMA ------------------------------------------------------------------------------ */
#define TGT_AVX2 __attribute__((target("avx2,fma")))
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

/* hsum, the K % 8 tail, the bias: the end of every output element's fixed order */
TGT_AVX2 INLINE void finish_avx2(const lin_ctx *c, int64_t o, int64_t r, __m256 acc) {
    float s = hsum8_avx2(acc);
    const float *x = c->x + r * c->K;
    for (int64_t k = c->K & ~(int64_t)7; k < c->K; k++) s = fmaf(w_elem(c, o, k), x[k], s);
    c->out[r * c->N + o] = s + bias_of(c, o);
}

/* ---- dense (F32 / BF16) register tiles ---- */

/* w[o][k .. k + 8) as float32 (BF16: 1). */
TGT_AVX2 INLINE __m256 wvec_dense(const lin_ctx *c, int64_t o, int64_t k, const int BF16) {
    if (!BF16) return _mm256_loadu_ps((const float *)c->w->data_d + o * c->K + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)c->w->data_d + o * c->K + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Register tiles with named accumulators (arrays would live on the stack): 4 outputs x 1 row,
 * 2 x 4 and 1 x 8 share each weight vector / each x vector; every accumulator is one
 * (row, output) chain over k ascending, so the tile never changes a bit. */
TGT_AVX2 INLINE void dk4x1(const lin_ctx *c, int64_t o, int64_t r, const int S) {
    const float *x = c->x + r * c->K;
    const int64_t K8 = c->K & ~(int64_t)7;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    /* the next 4 outputs' rows, one cache line per row every 64 bytes of this row's: the
     * GEMV is a DRAM stream (a BF16 lm_head: 57 MB a token), and these run ahead of the
     * hardware prefetcher across the row boundaries */
    const int64_t pf_step = S ? 32 : 16, pf_end = o + 8 <= c->N ? K8 : 0;
    for (int64_t k = 0; k < K8; k += 8) {
        if (k % pf_step == 0 && k < pf_end) {
            const char *nb = (const char *)c->w->data_d + ((o + 4) * c->K + k) * (S ? 2 : 4);
            const int64_t rb = c->K * (S ? 2 : 4);
            _mm_prefetch(nb, _MM_HINT_T0);
            _mm_prefetch(nb + rb, _MM_HINT_T0);
            _mm_prefetch(nb + 2 * rb, _MM_HINT_T0);
            _mm_prefetch(nb + 3 * rb, _MM_HINT_T0);
        }
        __m256 xv = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(wvec_dense(c, o, k, S), xv, a0);
        a1 = _mm256_fmadd_ps(wvec_dense(c, o + 1, k, S), xv, a1);
        a2 = _mm256_fmadd_ps(wvec_dense(c, o + 2, k, S), xv, a2);
        a3 = _mm256_fmadd_ps(wvec_dense(c, o + 3, k, S), xv, a3);
    }
    finish_avx2(c, o, r, a0); finish_avx2(c, o + 1, r, a1);
    finish_avx2(c, o + 2, r, a2); finish_avx2(c, o + 3, r, a3);
}
TGT_AVX2 INLINE void dk1x1(const lin_ctx *c, int64_t o, int64_t r, const int S) {
    const float *x = c->x + r * c->K;
    const int64_t K8 = c->K & ~(int64_t)7;
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8)
        a0 = _mm256_fmadd_ps(wvec_dense(c, o, k, S), _mm256_loadu_ps(x + k), a0);
    finish_avx2(c, o, r, a0);
}
TGT_AVX2 INLINE void dk2x4(const lin_ctx *c, int64_t o, int64_t r, const int S) {
    const int64_t K = c->K, K8 = K & ~(int64_t)7;
    const float *x = c->x + r * K;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 w0 = wvec_dense(c, o, k, S), w1 = wvec_dense(c, o + 1, k, S), xv;
        xv = _mm256_loadu_ps(x + k);
        a00 = _mm256_fmadd_ps(w0, xv, a00); a10 = _mm256_fmadd_ps(w1, xv, a10);
        xv = _mm256_loadu_ps(x + K + k);
        a01 = _mm256_fmadd_ps(w0, xv, a01); a11 = _mm256_fmadd_ps(w1, xv, a11);
        xv = _mm256_loadu_ps(x + 2 * K + k);
        a02 = _mm256_fmadd_ps(w0, xv, a02); a12 = _mm256_fmadd_ps(w1, xv, a12);
        xv = _mm256_loadu_ps(x + 3 * K + k);
        a03 = _mm256_fmadd_ps(w0, xv, a03); a13 = _mm256_fmadd_ps(w1, xv, a13);
    }
    finish_avx2(c, o, r, a00); finish_avx2(c, o, r + 1, a01);
    finish_avx2(c, o, r + 2, a02); finish_avx2(c, o, r + 3, a03);
    finish_avx2(c, o + 1, r, a10); finish_avx2(c, o + 1, r + 1, a11);
    finish_avx2(c, o + 1, r + 2, a12); finish_avx2(c, o + 1, r + 3, a13);
}
TGT_AVX2 INLINE void dk1x8(const lin_ctx *c, int64_t o, int64_t r, const int S) {
    const int64_t K = c->K, K8 = K & ~(int64_t)7;
    const float *x = c->x + r * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 w = wvec_dense(c, o, k, S);
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + K + k), a1);
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 2 * K + k), a2);
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 3 * K + k), a3);
        a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 4 * K + k), a4);
        a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 5 * K + k), a5);
        a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 6 * K + k), a6);
        a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 7 * K + k), a7);
    }
    finish_avx2(c, o, r, a0); finish_avx2(c, o, r + 1, a1);
    finish_avx2(c, o, r + 2, a2); finish_avx2(c, o, r + 3, a3);
    finish_avx2(c, o, r + 4, a4); finish_avx2(c, o, r + 5, a5);
    finish_avx2(c, o, r + 6, a6); finish_avx2(c, o, r + 7, a7);
}
/* A tile [o0, o1) x [r0, r1): rows by 8 (one output), then by 4 (two outputs), then one at a
 * time (four outputs side by side hide the FMA latency). */
TGT_AVX2 INLINE void dense_tile_s(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                              const int S) {
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8)
        for (int64_t o = o0; o < o1; o++) dk1x8(c, o, r, S);
    for (; r + 4 <= r1; r += 4) {
        int64_t o = o0;
        for (; o + 2 <= o1; o += 2) dk2x4(c, o, r, S);
        for (; o < o1; o++)
            for (int64_t rr = r; rr < r + 4; rr++) dk1x1(c, o, rr, S);
    }
    for (; r < r1; r++) {
        int64_t o = o0;
        for (; o + 4 <= o1; o += 4) dk4x1(c, o, r, S);
        for (; o < o1; o++) dk1x1(c, o, r, S);
    }
}

/* ---- 4-bit ---- */

/* The code table as 4 byte planes (plane p: byte p of code[0..15], in both 128-bit lanes). */
typedef struct {
    __m256i p0, p1, p2, p3, m;
} q4_lut;

TGT_AVX2 INLINE q4_lut q4_lut_make(const float code[16]) {
    uint8_t pl[4][32];
    for (int i = 0; i < 16; i++) {
        uint32_t u;
        memcpy(&u, &code[i], 4);
        for (int p = 0; p < 4; p++) pl[p][i] = pl[p][16 + i] = (uint8_t)(u >> (8 * p));
    }
    q4_lut L;
    L.p0 = _mm256_loadu_si256((const __m256i *)pl[0]);
    L.p1 = _mm256_loadu_si256((const __m256i *)pl[1]);
    L.p2 = _mm256_loadu_si256((const __m256i *)pl[2]);
    L.p3 = _mm256_loadu_si256((const __m256i *)pl[3]);
    L.m = _mm256_set1_epi8(15);
    return L;
}

/* 32 nibble indices (one byte each) of half h of the group at `grp`; narrow: the last group of
 * a row with <= 32 elements, 16 bytes (low nibbles: index bytes 0..15, high: 16..31). */
TGT_AVX2 INLINE __m256i q4_idx(const q4_lut *L, const uint8_t *grp, int h, int narrow) {
    if (narrow) {
        __m128i v = _mm_loadu_si128((const __m128i *)grp), m = _mm256_castsi256_si128(L->m);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    }
    __m256i v = _mm256_loadu_si256((const __m256i *)grp);
    return _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, L->m);
}

/* code[idx] for 32 indices: f[j] = elements 8j .. 8j + 7 of the half, in k order (index byte
 * 4j + i holds element 8j + i, byte 16 + 4j + i element 8j + 4 + i: sq_cpu_q4_pos). */
TGT_AVX2 INLINE void q4_deq32(const q4_lut *L, __m256i I, __m256 f[4]) {
    __m256i b0 = _mm256_shuffle_epi8(L->p0, I), b1 = _mm256_shuffle_epi8(L->p1, I);
    __m256i b2 = _mm256_shuffle_epi8(L->p2, I), b3 = _mm256_shuffle_epi8(L->p3, I);
    __m256i lo01 = _mm256_unpacklo_epi8(b0, b1), hi01 = _mm256_unpackhi_epi8(b0, b1);
    __m256i lo23 = _mm256_unpacklo_epi8(b2, b3), hi23 = _mm256_unpackhi_epi8(b2, b3);
    f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23));
    f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23));
    f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23));
    f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23));
}

/* How the absmax of a chunk of 8 elements is found: one per 64-group (K % 64 == 0 and blocks
 * of >= 64), one per chunk (K % 8 == 0: a chunk never crosses a block), or per lane (a chunk
 * may straddle two blocks when rows do not start on a multiple of 8). */
enum { SM_GROUP = 0, SM_CHUNK = 1, SM_SPLIT = 2 };

/* absmax for the elements of flat indices f .. f + 7, one lane each */
TGT_AVX2 INLINE __m256 q4_scale(const lin_ctx *c, uint64_t f, const int SM) {
    const float *am = c->w->absmax_d;
    uint64_t b0 = f >> c->lbs;
    __m256 s0 = _mm256_broadcast_ss(am + b0);
    if (SM != SM_SPLIT) return s0;
    uint64_t b1 = (f + 7) >> c->lbs;
    if (b1 == b0) return s0;
    int split = (int)((b1 << c->lbs) - f);   /* lanes >= split are in block b1 */
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 sel = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(split - 1)));
    return _mm256_blendv_ps(s0, _mm256_broadcast_ss(am + b1), sel);
}

/* Few rows: outputs o .. o + NO - 1 (NO = 4 or 1) for row r, decoded straight into the
 * accumulators.  A whole group of output i (written out: the decoded vectors must stay in
 * registers), then the last partial group of 1 .. 7 chunks. */
#define Q4_SC(i, k) (SM == SM_GROUP ? sg##i : q4_scale(c, fb##i + (uint64_t)(k), SM))
#define Q4_FMA4(i, acc, f, k)                                                                   \
    acc = _mm256_fmadd_ps(_mm256_mul_ps(f[0], Q4_SC(i, (k))), _mm256_loadu_ps(x + (k)), acc);   \
    acc = _mm256_fmadd_ps(_mm256_mul_ps(f[1], Q4_SC(i, (k) + 8)), _mm256_loadu_ps(x + (k) + 8), acc); \
    acc = _mm256_fmadd_ps(_mm256_mul_ps(f[2], Q4_SC(i, (k) + 16)), _mm256_loadu_ps(x + (k) + 16), acc); \
    acc = _mm256_fmadd_ps(_mm256_mul_ps(f[3], Q4_SC(i, (k) + 24)), _mm256_loadu_ps(x + (k) + 24), acc);
#define Q4_GROUP(i, acc, G)                                                                     \
    do {                                                                                       \
        __m256i v_ = _mm256_loadu_si256((const __m256i *)(p##i + (G) * 32));                   \
        _mm_prefetch((const char *)(p##i + (G) * 32 + Q4_PREFETCH), _MM_HINT_T0);              \
        __m256 f_[4];                                                                          \
        if (SM == SM_GROUP) sg##i = q4_scale(c, fb##i + (uint64_t)(G) * 64, SM);               \
        q4_deq32(&L, _mm256_and_si256(v_, L.m), f_);                                           \
        Q4_FMA4(i, acc, f_, (G) * 64)                                                          \
        q4_deq32(&L, _mm256_and_si256(_mm256_srli_epi16(v_, 4), L.m), f_);                     \
        Q4_FMA4(i, acc, f_, (G) * 64 + 32)                                                     \
    } while (0)
#define Q4_PARTIAL(i, acc)                                                                      \
    for (int h_ = 0; h_ < 2 && 4 * h_ < nch; h_++) {                                           \
        __m256 f_[4];                                                                          \
        q4_deq32(&L, q4_idx(&L, p##i + nG * 32, h_, narrow), f_);                              \
        for (int ch_ = 0; ch_ < 4 && 4 * h_ + ch_ < nch; ch_++) {                              \
            const int64_t k_ = nG * 64 + h_ * 32 + ch_ * 8;                                    \
            acc = _mm256_fmadd_ps(_mm256_mul_ps(f_[ch_], q4_scale(c, fb##i + (uint64_t)k_, SM)), \
                                  _mm256_loadu_ps(x + k_), acc);                               \
        }                                                                                      \
    }
#define Q4_OUT_DECL(i)                                                                         \
    const uint8_t *p##i = (const uint8_t *)c->w->data_d + (o + i) * c->rs;                      \
    const uint64_t fb##i = (uint64_t)(o + i) * (uint64_t)K;                                     \
    __m256 a##i = _mm256_setzero_ps(), sg##i = a##i;                                           \
    (void)fb##i; (void)sg##i;

TGT_AVX2 INLINE void q4_few(const lin_ctx *c, const q4_lut *Lp, int64_t o, int64_t r,
                            const int NO, const int SM) {
    const q4_lut L = *Lp;
    const int64_t K = c->K, K8 = K & ~(int64_t)7, nG = K8 >> 6;
    const float *x = c->x + r * K;
    Q4_OUT_DECL(0) Q4_OUT_DECL(1) Q4_OUT_DECL(2) Q4_OUT_DECL(3)
    for (int64_t G = 0; G < nG; G++) {
        Q4_GROUP(0, a0, G);
        if (NO > 1) {
            Q4_GROUP(1, a1, G);
            Q4_GROUP(2, a2, G);
            Q4_GROUP(3, a3, G);
        }
    }
    if (SM != SM_GROUP && K8 > nG * 64) {
        const int nch = (int)((K8 - nG * 64) >> 3), narrow = K - nG * 64 <= 32;
        Q4_PARTIAL(0, a0)
        if (NO > 1) {
            Q4_PARTIAL(1, a1)
            Q4_PARTIAL(2, a2)
            Q4_PARTIAL(3, a3)
        }
    }
    finish_avx2(c, o, r, a0);
    if (NO > 1) {
        finish_avx2(c, o + 1, r, a1);
        finish_avx2(c, o + 2, r, a2);
        finish_avx2(c, o + 3, r, a3);
    }
}

/* Output o's weights for elements [k0, k0 + n) (k0 % 64 == 0, n % 8 == 0, k0 + n <= K8) as
 * float32 into buf: the same values the accumulators see on the few-row path. */
#define Q4_STORE4(f, k)                                                                        \
    for (int ch_ = 0; ch_ < 4; ch_++)                                                          \
        _mm256_store_ps(buf + ((k) - k0) + 8 * ch_,                                            \
                        _mm256_mul_ps(f[ch_], SM == SM_GROUP ? sg                              \
                                      : q4_scale(c, fb + (uint64_t)((k) + 8 * ch_), SM)));
TGT_AVX2 INLINE void q4_decode(const lin_ctx *c, const q4_lut *L, int64_t o, int64_t k0,
                               int64_t n, float *buf, const int SM) {
    const int64_t K = c->K, kf = k0 + (n & ~(int64_t)63);
    const uint8_t *row = (const uint8_t *)c->w->data_d + o * c->rs;
    const uint64_t fb = (uint64_t)o * (uint64_t)K;
    __m256 f[4], sg = _mm256_setzero_ps();
    /* the tile walks Q4_OTILE rows a panel at a time: too many slow streams for the hardware
     * prefetcher, so fetch this row's bytes a few panels ahead */
    _mm_prefetch((const char *)(row + (k0 >> 1) + Q4_PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + (k0 >> 1) + Q4_PREFETCH + 32), _MM_HINT_T0);
    for (int64_t k = k0; k < kf; k += 64) {   /* whole groups */
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + (k >> 6) * 32));
        if (SM == SM_GROUP) sg = q4_scale(c, fb + (uint64_t)k, SM);
        q4_deq32(L, _mm256_and_si256(v, L->m), f);
        _Pragma("GCC unroll 4") Q4_STORE4(f, k)
        q4_deq32(L, _mm256_and_si256(_mm256_srli_epi16(v, 4), L->m), f);
        _Pragma("GCC unroll 4") Q4_STORE4(f, k + 32)
    }
    for (int64_t k = kf; k < k0 + n; k += 32) {   /* the rest: 1 .. 7 chunks of a group */
        int64_t G = k >> 6;
        q4_deq32(L, q4_idx(L, row + G * 32, (int)((k >> 5) & 1), K - G * 64 <= 32), f);
        int nch = k0 + n - k >= 32 ? 4 : (int)((k0 + n - k) >> 3);
        for (int ch = 0; ch < nch; ch++)
            _mm256_store_ps(buf + (k - k0) + 8 * ch,
                            _mm256_mul_ps(f[ch], q4_scale(c, fb + (uint64_t)(k + 8 * ch), SM)));
    }
}

/* acc(i, j) += w_i · x_j over one panel for outputs i = 0, 1 (w0, w1: decoded panels) and NR
 * rows (1 .. 4) of the x panel xp (rows Q4_PANEL apart). */
#define Q4_ROW(j)                                                                              \
    if (NR > j) {                                                                              \
        __m256 xv = _mm256_load_ps(xp + j * Q4_PANEL + k);                                     \
        a0##j = _mm256_fmadd_ps(w0, xv, a0##j);                                                \
        a1##j = _mm256_fmadd_ps(w1, xv, a1##j);                                                \
    }
TGT_AVX2 INLINE void q4_fma_2xn(const float *wp0, const float *wp1, const float *xp, int64_t kn,
                                __m256 *acc0, __m256 *acc1, const int NR) {
    __m256 a00 = acc0[0], a01 = NR > 1 ? acc0[1] : a00, a02 = NR > 2 ? acc0[2] : a00;
    __m256 a03 = NR > 3 ? acc0[3] : a00;
    __m256 a10 = acc1[0], a11 = NR > 1 ? acc1[1] : a10, a12 = NR > 2 ? acc1[2] : a10;
    __m256 a13 = NR > 3 ? acc1[3] : a10;
    for (int64_t k = 0; k < kn; k += 8) {
        __m256 w0 = _mm256_load_ps(wp0 + k), w1 = _mm256_load_ps(wp1 + k);
        Q4_ROW(0) Q4_ROW(1) Q4_ROW(2) Q4_ROW(3)
    }
    acc0[0] = a00; acc1[0] = a10;
    if (NR > 1) { acc0[1] = a01; acc1[1] = a11; }
    if (NR > 2) { acc0[2] = a02; acc1[2] = a12; }
    if (NR > 3) { acc0[3] = a03; acc1[3] = a13; }
}

/* Many rows: for each panel of Q4_PANEL elements the tile's x rows are copied next to each
 * other (rows K apart would share L1 sets), then two outputs at a time are decoded once and
 * every row accumulates from them.  Accumulators live in acc between panels (a spill of the
 * exact float32 vector: the chain and its bits are the same). */
TGT_AVX2 INLINE void q4_many(const lin_ctx *c, const q4_lut *L, int64_t o0, int64_t o1,
                             int64_t r0, int64_t r1, const int SM) {
    const int64_t K = c->K, K8 = K & ~(int64_t)7, R = r1 - r0, NO = o1 - o0;
    __m256 acc[Q4_OTILE + 1][Q4_RTILE];   /* + 1: the unused partner of an odd last output */
    float wb[2][Q4_PANEL] __attribute__((aligned(32)));
    float xb[Q4_RTILE * Q4_PANEL] __attribute__((aligned(32)));
    for (int64_t i = 0; i <= NO; i++)
        for (int64_t r = 0; r < R; r++) acc[i][r] = _mm256_setzero_ps();
    for (int64_t kp = 0; kp < K8; kp += Q4_PANEL) {
        const int64_t kn = K8 - kp < Q4_PANEL ? K8 - kp : Q4_PANEL;
        for (int64_t r = 0; r < R; r++)
            for (int64_t k = 0; k < kn; k += 8) {
                _mm256_store_ps(xb + r * Q4_PANEL + k, _mm256_loadu_ps(c->x + (r0 + r) * K + kp + k));
                __asm__("" ::: "memory");   /* keeps it a vector loop, not a slow `rep movs` */
            }
        for (int64_t i = 0; i < NO; i += 2) {
            q4_decode(c, L, o0 + i, kp, kn, wb[0], SM);
            if (i + 1 < NO) q4_decode(c, L, o0 + i + 1, kp, kn, wb[1], SM);
            else   /* the partner of an odd last output: computed, never kept */
                for (int64_t k = 0; k < kn; k += 8) _mm256_store_ps(wb[1] + k, _mm256_load_ps(wb[0] + k));
            int64_t r = 0;
            for (; r + 4 <= R; r += 4)
                q4_fma_2xn(wb[0], wb[1], xb + r * Q4_PANEL, kn, &acc[i][r], &acc[i + 1][r], 4);
            switch (R - r) {
            case 3: q4_fma_2xn(wb[0], wb[1], xb + r * Q4_PANEL, kn, &acc[i][r], &acc[i + 1][r], 3); break;
            case 2: q4_fma_2xn(wb[0], wb[1], xb + r * Q4_PANEL, kn, &acc[i][r], &acc[i + 1][r], 2); break;
            case 1: q4_fma_2xn(wb[0], wb[1], xb + r * Q4_PANEL, kn, &acc[i][r], &acc[i + 1][r], 1); break;
            default: break;
            }
        }
    }
    for (int64_t i = 0; i < NO; i++)
        for (int64_t r = 0; r < R; r++) finish_avx2(c, o0 + i, r0 + r, acc[i][r]);
}

TGT_AVX2 INLINE void q4_tile_sm(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                            const int SM) {
    const q4_lut L = q4_lut_make(c->w->code);
    if (r1 - r0 > Q4_FEW_ROWS) {
        q4_many(c, &L, o0, o1, r0, r1, SM);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        int64_t o = o0;
        for (; o + 4 <= o1; o += 4) q4_few(c, &L, o, r, 4, SM);
        for (; o < o1; o++) q4_few(c, &L, o, r, 1, SM);
    }
}

TGT_AVX2 static void lin_tile_avx2(const lin_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    switch (c->w->store) {
    case SQ_WSTORE_F32: dense_tile_s(c, o0, o1, r0, r1, 0); break;
    case SQ_WSTORE_BF16: dense_tile_s(c, o0, o1, r0, r1, 1); break;
    default:
        if (c->K % 64 == 0 && c->lbs >= 6) q4_tile_sm(c, o0, o1, r0, r1, SM_GROUP);
        else if (c->K % 8 == 0) q4_tile_sm(c, o0, o1, r0, r1, SM_CHUNK);
        else q4_tile_sm(c, o0, o1, r0, r1, SM_SPLIT);
        break;
    }
}
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
    int64_t o0 = ot * c->otile, o1 = o0 + c->otile < c->N ? o0 + c->otile : c->N;
    int64_t r0 = rt * c->rt, r1 = r0 + c->rt < c->n_rows ? r0 + c->rt : c->n_rows;
#ifdef SQ_HAVE_X86
    /* interleaved for int8 activations (cpu_q8i.h): the portable path reads it, same bits */
    if (tc->isa != SQ_CPU_PORTABLE && !c->w->q8i) { lin_tile_avx2(c, o0, o1, r0, r1); return; }
#endif
    lin_rows_portable(c, o0, o1, r0, r1);
}

sq_status sq_cpu_linear_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                              const sq_weight *const *w, const sq_weight *const *bias,
                              void *const *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    bool q8 = cpu->act_int8;
    for (int i = 0; i < n && q8; i++) q8 = cpu->q8_cap >= (uint64_t)w[i]->cols && sq_cpu_q8_supported(w[i]);
    if (q8 && sq_cpu_linear_q8_multi(be, x_d, n_rows, n, w, bias, out_d)) return SQ_OK;
    for (int i = 0; i < n; i++) {
        sq_status st = sq_cpu_linear(be, x_d, n_rows, w[i], bias ? bias[i] : NULL, out_d[i], err);
        if (st != SQ_OK) return st;
    }
    return SQ_OK;
}

sq_status sq_cpu_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                        const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    if (cpu->act_int8 && cpu->q8_cap >= (uint64_t)w->cols && sq_cpu_q8_supported(w))
        return sq_cpu_linear_q8(be, x_d, n_rows, w, bias, out_d, err);
    if (w->store == SQ_WSTORE_QBLOCK) return sq_cpu_linear_ggml(be, x_d, n_rows, w, bias, out_d, err);
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
    c->otile = OTILE;
    /* rows per task: a weight tile (OTILE rows of w) is reused across up to 64 rows of x */
    c->rt = n_rows < 64 ? n_rows : 64;
    if (w->store == SQ_WSTORE_Q4) {
        c->lbs = __builtin_ctzll((unsigned long long)w->blocksize);
        c->rs = sq_cpu_q4_row_bytes(c->K);
        if (n_rows > Q4_FEW_ROWS) {   /* q4_many's accumulator tile */
            c->otile = Q4_OTILE;
            c->rt = n_rows < Q4_RTILE ? n_rows : Q4_RTILE;
        }
    }
    c->n_otiles = (c->N + c->otile - 1) / c->otile;
    int64_t n_rtiles = (n_rows + c->rt - 1) / c->rt;
    /* small products run on the calling thread: waking the pool costs more than they do (the
     * result bits do not depend on it) */
    uint64_t work = (uint64_t)c->N * (uint64_t)c->K * (uint64_t)n_rows;
    sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, c->n_otiles * n_rtiles, lin_task, &tc);
    return SQ_OK;
}
