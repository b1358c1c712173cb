/* CPU backend, ggml weights: upload of a GGUF tensor into the block-scaled integer form of
 * ggml_quant.h (codes + one scale, and for some types one bias, per sub-block of 16 or 32
 * elements; float32, or the IEEE half the file stores for Q4_0 … Q8_0, converted exactly when
 * used), Linear on that form, and one row dequantized for an embedding lookup.
 *
 * Values: a weight element is fl(scale * code) or fl(fl(scale * code) + bias) — exactly ggml's
 * dequantized value (kernels/ggml_quant_math.cuh shows why; tests/test_ggml_quant.c checks it
 * against gguf) — before it meets x.  Order: the backend's one order for every Linear
 * (cpu_linear.c): one 8-lane accumulator, acc = fma(w[k..k+8), x[k..k+8), acc) for k ascending,
 * the horizontal sum ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then + bias.  cols is a multiple of
 * 32, so there is no scalar tail.  The AVX2 path and the portable path (fmaf) agree bit for bit;
 * tiling and threads never change a result.
 * Few rows (decode): four outputs decode 32 elements at a time straight into their accumulators.
 * More rows: one output's panel of 256 elements is decoded once into a stack buffer and reused
 * by every row of the tile.
 * Must never keep a dequantized copy of a weight beyond one panel per running task, allocate
 * inside an op, or print. */
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
    GL_OTILE = 32,      /* outputs per task with few rows */
    GL_FEW_ROWS = 2,    /* up to this many rows: decode straight into the accumulators */
    GL_M_OTILE = 16,    /* outputs per task with many rows */
    GL_M_RTILE = 32,    /* rows per task with many rows */
    GL_PANEL = 256,     /* elements of one output decoded at a time on the many-row path */
    GL_PREFETCH = 512   /* bytes ahead in a code row that the few-row path prefetches */
};

/* ---- upload ------------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *src;
    uint64_t src_row_bytes;
    sq_weight *w;
    sq_ggml_type type;
} up_ctx;

static void up_task(void *ctx_, int64_t t, int thread) {
    const up_ctx *c = ctx_;
    sq_weight *w = c->w;
    const int64_t nsub = w->cols / w->qf.block_elems;
    int64_t end = 64 * t + 64 < w->rows ? 64 * t + 64 : w->rows;
    const int64_t pb = nsub * (w->qf.scale_bits / 8);   /* bytes of a row's scales */
    for (int64_t o = 64 * t; o < end; o++)
        sq_ggml_to_qblock_row(c->type, c->src + (uint64_t)o * c->src_row_bytes, w->cols,
                              (uint8_t *)w->data_d + o * w->code_row_bytes,
                              (char *)w->absmax_d + o * pb, w->bias_d ? (char *)w->bias_d + o * pb : NULL);
}

sq_status sq_cpu_weight_ggml(sq_backend *be, sq_weight *w, sq_ggml_type type, const void *data,
                             sq_error *err) {
    uint64_t rb = 0;
    sq_status st = sq_ggml_row_bytes((int)type, w->cols, &rb, err);
    if (st != SQ_OK) return st;
    const uint64_t rows = (uint64_t)w->rows, nsub = (uint64_t)(w->cols / w->qf.block_elems);
    const uint64_t code_bytes = rows * (uint64_t)w->code_row_bytes;
    const uint64_t scale_bytes = rows * nsub * (uint64_t)(w->qf.scale_bits / 8);
    void *codes = NULL, *scales = NULL, *biases = NULL;
    sq_error e;
    sq_error_init(&e, -1);
    st = be->ops->alloc(be, code_bytes, &codes, &e);
    if (st == SQ_OK) st = be->ops->alloc(be, scale_bytes, &scales, &e);
    if (st == SQ_OK && w->qf.has_bias) st = be->ops->alloc(be, scale_bytes, &biases, &e);
    if (st != SQ_OK) {
        free(codes);
        free(scales);
        return sq_error_set(err, st, NULL, w->name, "%s", e.msg);
    }
    w->data_d = codes;
    w->absmax_d = scales;
    w->bias_d = biases;
    up_ctx uc = {data, rb, w, type};
    sq_pool_run(sq_cpu_of(be)->pool, (w->rows + 63) / 64, up_task, &uc);
    w->n_bytes = code_bytes + scale_bytes * (w->qf.has_bias ? 2 : 1);
    /* int8 activations: the layout of their kernels (cpu_q8i.h) */
    if (sq_cpu_of(be)->act_int8) {
        st = sq_cpu_q8i_repack(sq_cpu_of(be)->pool, w, err);
        if (st != SQ_OK) {
            free(codes);
            free(scales);
            free(biases);
        }
        return st;
    }
    return SQ_OK;
}

void sq_cpu_ggml_row(const sq_weight *w, int64_t r, float *out) {
    if (w->q8i) {   /* interleaved (cpu_q8i.h): block by block, the same values */
        const int sb = w->qf.scale_bits / 8;
        for (int64_t b = 0; b < w->cols / 32; b++) {
            uint8_t cb[32];
            sq_cpu_q8i_block_codes(w, r, b, cb);
            sq_qblock_dequantize_row(&w->qf, cb,
                                     (const char *)w->absmax_d + sq_cpu_q8i_param_index(w, r, b) * sb,
                                     NULL, 32, out + 32 * b);
        }
        return;
    }
    const int64_t pb = w->cols / w->qf.block_elems * (w->qf.scale_bits / 8);
    sq_qblock_dequantize_row(&w->qf, (const uint8_t *)w->data_d + r * w->code_row_bytes,
                             (const char *)w->absmax_d + r * pb,
                             w->bias_d ? (const char *)w->bias_d + r * pb : NULL, w->cols, out);
}

/* ---- Linear -------------------------------------------------------------------------------------- */

typedef struct {
    const sq_weight *w;
    const float *x;       /* (n_rows, K) */
    const float *bias;    /* (N) float32, or bias_bf16, or neither */
    const uint16_t *bias_bf16;
    float *out;           /* (n_rows, N) */
    int64_t n_rows, K, N, nsub;
    int64_t otile, n_otiles, rt;
    sq_cpu_isa isa;
} gl_ctx;

static inline float bias_of(const gl_ctx *c, int64_t o) {
    if (c->bias) return c->bias[o];
    if (c->bias_bf16) return sq_bf16_to_f32_1(c->bias_bf16[o]);
    return 0.0f;
}

static inline float gw(const gl_ctx *c, int64_t o, int64_t k) {
    const sq_weight *w = c->w;
    if (w->q8i) {   /* interleaved (cpu_q8i.h; blocks of 32, no bias) */
        uint8_t cb[32];
        sq_cpu_q8i_block_codes(w, o, k / 32, cb);
        int code = w->qf.code_bits == 4 ? ((cb[k & 15] >> (((k >> 4) & 1) * 4)) & 15) - w->qf.code_zero
                                        : (int8_t)cb[k & 31];
        return sq_gq_qblock_value(code, sq_qblock_param(&w->qf, w->absmax_d, sq_cpu_q8i_param_index(w, o, k / 32)),
                                  0.0f, false);
    }
    const uint8_t *cr = (const uint8_t *)w->data_d + o * w->code_row_bytes;
    int code = w->qf.code_bits == 4
                   ? ((cr[(k >> 5) * 16 + (k & 15)] >> (((k >> 4) & 1) * 4)) & 15) - w->qf.code_zero
                   : ((const int8_t *)cr)[k];
    int64_t b = o * c->nsub + k / w->qf.block_elems;
    return sq_gq_qblock_value(code, sq_qblock_param(&w->qf, w->absmax_d, b),
                              w->bias_d ? sq_qblock_param(&w->qf, w->bias_d, b) : 0.0f,
                              w->qf.has_bias);
}

static void gl_rows_portable(const gl_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const int64_t K = c->K;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t r = r0; r < r1; r++) {
            const float *x = c->x + r * K;
            float acc[8] = {0};
            for (int64_t k = 0; k < K; k += 8)
                for (int l = 0; l < 8; l++) acc[l] = fmaf(gw(c, o, k + l), x[k + l], acc[l]);
            float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
            float t0 = s0 + s2, t1 = s1 + s3;
            c->out[r * c->N + o] = (t0 + t1) + bias_of(c, o);
        }
}

#ifdef SQ_HAVE_X86
/* F16C for the half scales: every AVX2 CPU has it, and cpu.c checks it with AVX2 */
#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

TGT_AVX2 INLINE float gl_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(u);
}

TGT_AVX2 INLINE void gl_finish(const gl_ctx *c, int64_t o, int64_t r, __m256 acc) {
    c->out[r * c->N + o] = gl_hsum8(acc) + bias_of(c, o);
}

/* One output row's arrays: codes, float32 scales, float32 biases (NULL without). */
typedef struct {
    const uint8_t *c;
    const void *s, *b;   /* float32, or IEEE half with scale_bits 16 */
} gl_row;

TGT_AVX2 INLINE gl_row gl_row_of(const gl_ctx *c, int64_t o) {
    const sq_weight *w = c->w;
    const int64_t pb = c->nsub * (w->qf.scale_bits / 8);
    gl_row r = {(const uint8_t *)w->data_d + o * w->code_row_bytes,
                (const char *)w->absmax_d + o * pb,
                w->bias_d ? (const char *)w->bias_d + o * pb : NULL};
    return r;
}

/* scale or bias i of a row, broadcast (H16: stored as a half, converted exactly) */
TGT_AVX2 INLINE __m256 gl_param(const void *p, int64_t i, const int H16) {
    if (H16) return _mm256_cvtph_ps(_mm_set1_epi16((short)((const uint16_t *)p)[i]));
    return _mm256_broadcast_ss((const float *)p + i);
}

/* The 32 weights of group g (elements 32 g .. 32 g + 31) of a row, as four vectors of 8 in k
 * order.  BITS: 4 or 8; BIAS: the format has a bias; B16: 16 elements per scale (Q6_K);
 * zero: the 4-bit code_zero in every byte. */
TGT_AVX2 INLINE void gl_dec32(gl_row R, int64_t g, __m128i zero, __m256 f[4], const int BITS,
                              const int BIAS, const int B16, const int H16) {
    __m256i q0, q1, q2, q3;
    if (BITS == 4) {
        const __m128i m = _mm_set1_epi8(15);
        __m128i v = _mm_loadu_si128((const __m128i *)(R.c + g * 16));
        __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m), zero);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), zero);
        q0 = _mm256_cvtepi8_epi32(lo);
        q1 = _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8));
        q2 = _mm256_cvtepi8_epi32(hi);
        q3 = _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8));
    } else {
        const uint8_t *p = R.c + g * 32;
        q0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
        q1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)));
        q2 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 16)));
        q3 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 24)));
    }
    const int64_t b0 = B16 ? 2 * g : g, b1 = B16 ? 2 * g + 1 : g;
    const __m256 s0 = gl_param(R.s, b0, H16), s1 = B16 ? gl_param(R.s, b1, H16) : s0;
    f[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), s0);
    f[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(q1), s0);
    f[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(q2), s1);
    f[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(q3), s1);
    if (BIAS) {
        const __m256 c0 = gl_param(R.b, b0, H16), c1 = B16 ? gl_param(R.b, b1, H16) : c0;
        f[0] = _mm256_add_ps(f[0], c0);
        f[1] = _mm256_add_ps(f[1], c0);
        f[2] = _mm256_add_ps(f[2], c1);
        f[3] = _mm256_add_ps(f[3], c1);
    }
}

#define GL_FMA4(acc, f, xv)                                                                    \
    acc = _mm256_fmadd_ps(f[0], xv[0], acc);                                                   \
    acc = _mm256_fmadd_ps(f[1], xv[1], acc);                                                   \
    acc = _mm256_fmadd_ps(f[2], xv[2], acc);                                                   \
    acc = _mm256_fmadd_ps(f[3], xv[3], acc);

/* Few rows: NO (4 or 1) outputs from o, row r; each group's x vectors are loaded once. */
TGT_AVX2 INLINE void gl_few(const gl_ctx *c, int64_t o, int64_t r, const int NO, const int BITS,
                            const int BIAS, const int B16, const int H16) {
    const int64_t ng = c->K >> 5, gb = BITS == 4 ? 16 : 32;
    const float *x = c->x + r * c->K;
    const __m128i zero = _mm_set1_epi8((char)c->w->qf.code_zero);
    const gl_row R0 = gl_row_of(c, o), R1 = NO > 1 ? gl_row_of(c, o + 1) : R0;
    const gl_row R2 = NO > 1 ? gl_row_of(c, o + 2) : R0, R3 = NO > 1 ? gl_row_of(c, o + 3) : R0;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = 0; g < ng; g++) {
        __m256 xv[4], f[4];
        xv[0] = _mm256_loadu_ps(x + 32 * g);
        xv[1] = _mm256_loadu_ps(x + 32 * g + 8);
        xv[2] = _mm256_loadu_ps(x + 32 * g + 16);
        xv[3] = _mm256_loadu_ps(x + 32 * g + 24);
        _mm_prefetch((const char *)(R0.c + g * gb + GL_PREFETCH), _MM_HINT_T0);
        gl_dec32(R0, g, zero, f, BITS, BIAS, B16, H16);
        GL_FMA4(a0, f, xv)
        if (NO > 1) {
            _mm_prefetch((const char *)(R1.c + g * gb + GL_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(R2.c + g * gb + GL_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(R3.c + g * gb + GL_PREFETCH), _MM_HINT_T0);
            gl_dec32(R1, g, zero, f, BITS, BIAS, B16, H16);
            GL_FMA4(a1, f, xv)
            gl_dec32(R2, g, zero, f, BITS, BIAS, B16, H16);
            GL_FMA4(a2, f, xv)
            gl_dec32(R3, g, zero, f, BITS, BIAS, B16, H16);
            GL_FMA4(a3, f, xv)
        }
    }
    gl_finish(c, o, r, a0);
    if (NO > 1) {
        gl_finish(c, o + 1, r, a1);
        gl_finish(c, o + 2, r, a2);
        gl_finish(c, o + 3, r, a3);
    }
}

/* acc0[j] += w0 · x_j and acc1[j] += w1 · x_j over one panel, for NR (1 .. 4) rows starting at
 * x (rows K apart); TWO = 0: only w0 / acc0. */
#define GL_PROW(j)                                                                             \
    if (NR > j) {                                                                              \
        __m256 xv = _mm256_loadu_ps(x + j * K + k);                                            \
        a0##j = _mm256_fmadd_ps(w0, xv, a0##j);                                                \
        if (TWO) a1##j = _mm256_fmadd_ps(w1, xv, a1##j);                                       \
    }
TGT_AVX2 INLINE void gl_panel_rows(const float *wb0, const float *wb1, const float *x, int64_t K,
                                   int64_t kn, __m256 *acc0, __m256 *acc1, const int NR,
                                   const int TWO) {
    __m256 a00 = acc0[0], a01 = NR > 1 ? acc0[1] : a00, a02 = NR > 2 ? acc0[2] : a00;
    __m256 a03 = NR > 3 ? acc0[3] : a00;
    __m256 a10 = TWO ? acc1[0] : a00, a11 = TWO && NR > 1 ? acc1[1] : a00;
    __m256 a12 = TWO && NR > 2 ? acc1[2] : a00, a13 = TWO && NR > 3 ? acc1[3] : a00;
    for (int64_t k = 0; k < kn; k += 8) {
        __m256 w0 = _mm256_load_ps(wb0 + k), w1 = TWO ? _mm256_load_ps(wb1 + k) : w0;
        GL_PROW(0) GL_PROW(1) GL_PROW(2) GL_PROW(3)
    }
    acc0[0] = a00;
    if (NR > 1) acc0[1] = a01;
    if (NR > 2) acc0[2] = a02;
    if (NR > 3) acc0[3] = a03;
    if (TWO) {
        acc1[0] = a10;
        if (NR > 1) acc1[1] = a11;
        if (NR > 2) acc1[2] = a12;
        if (NR > 3) acc1[3] = a13;
    }
}

TGT_AVX2 INLINE void gl_decode_panel(gl_row R, int64_t kp, int64_t kn, __m128i zero, float *wb,
                                     const int BITS, const int BIAS, const int B16, const int H16) {
    for (int64_t g = 0; g < kn / 32; g++) {
        __m256 f[4];
        gl_dec32(R, (kp >> 5) + g, zero, f, BITS, BIAS, B16, H16);
        _mm256_store_ps(wb + 32 * g, f[0]);
        _mm256_store_ps(wb + 32 * g + 8, f[1]);
        _mm256_store_ps(wb + 32 * g + 16, f[2]);
        _mm256_store_ps(wb + 32 * g + 24, f[3]);
    }
}

/* Many rows: per panel, each pair of outputs is decoded once and every row of the tile
 * accumulates from it (accumulators spill to acc between panels: the same chain, same bits). */
TGT_AVX2 INLINE void gl_many(const gl_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                             const int BITS, const int BIAS, const int B16, const int H16) {
    const int64_t K = c->K, R = r1 - r0, NO = o1 - o0;
    const __m128i zero = _mm_set1_epi8((char)c->w->qf.code_zero);
    __m256 acc[GL_M_OTILE][GL_M_RTILE];
    float wb[2][GL_PANEL] __attribute__((aligned(32)));
    for (int64_t i = 0; i < NO; i++)
        for (int64_t r = 0; r < R; r++) acc[i][r] = _mm256_setzero_ps();
    for (int64_t kp = 0; kp < K; kp += GL_PANEL) {
        const int64_t kn = K - kp < GL_PANEL ? K - kp : GL_PANEL;
        const float *x = c->x + r0 * K + kp;
        int64_t i = 0;
        for (; i + 2 <= NO; i += 2) {
            gl_decode_panel(gl_row_of(c, o0 + i), kp, kn, zero, wb[0], BITS, BIAS, B16, H16);
            gl_decode_panel(gl_row_of(c, o0 + i + 1), kp, kn, zero, wb[1], BITS, BIAS, B16, H16);
            int64_t r = 0;
            for (; r + 4 <= R; r += 4)
                gl_panel_rows(wb[0], wb[1], x + r * K, K, kn, &acc[i][r], &acc[i + 1][r], 4, 1);
            for (; r < R; r++)
                gl_panel_rows(wb[0], wb[1], x + r * K, K, kn, &acc[i][r], &acc[i + 1][r], 1, 1);
        }
        if (i < NO) {
            gl_decode_panel(gl_row_of(c, o0 + i), kp, kn, zero, wb[0], BITS, BIAS, B16, H16);
            int64_t r = 0;
            for (; r + 4 <= R; r += 4)
                gl_panel_rows(wb[0], NULL, x + r * K, K, kn, &acc[i][r], NULL, 4, 0);
            for (; r < R; r++) gl_panel_rows(wb[0], NULL, x + r * K, K, kn, &acc[i][r], NULL, 1, 0);
        }
    }
    for (int64_t i = 0; i < NO; i++)
        for (int64_t r = 0; r < R; r++) gl_finish(c, o0 + i, r0 + r, acc[i][r]);
}

TGT_AVX2 INLINE void gl_tile_t(const gl_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1,
                               const int BITS, const int BIAS, const int B16, const int H16) {
    if (r1 - r0 > GL_FEW_ROWS) {
        gl_many(c, o0, o1, r0, r1, BITS, BIAS, B16, H16);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        int64_t o = o0;
        for (; o + 4 <= o1; o += 4) gl_few(c, o, r, 4, BITS, BIAS, B16, H16);
        for (; o < o1; o++) gl_few(c, o, r, 1, BITS, BIAS, B16, H16);
    }
}

/* One instantiation per (code bits, bias, 16-element blocks, half scales) combination. */
#define GL_DISPATCH(BITS, B16)                                                                 \
    do {                                                                                       \
        if (f->has_bias) {                                                                     \
            if (h16) gl_tile_t(c, o0, o1, r0, r1, BITS, 1, B16, 1);                            \
            else gl_tile_t(c, o0, o1, r0, r1, BITS, 1, B16, 0);                                \
        } else {                                                                               \
            if (h16) gl_tile_t(c, o0, o1, r0, r1, BITS, 0, B16, 1);                            \
            else gl_tile_t(c, o0, o1, r0, r1, BITS, 0, B16, 0);                                \
        }                                                                                      \
    } while (0)
TGT_AVX2 static void gl_tile_avx2(const gl_ctx *c, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const sq_qblock_format *f = &c->w->qf;
    const int h16 = f->scale_bits == 16;
    if (f->code_bits == 4) GL_DISPATCH(4, 0);   /* 4-bit codes come in groups of 32 */
    else if (f->block_elems == 16) GL_DISPATCH(8, 1);
    else GL_DISPATCH(8, 0);
}
#endif /* SQ_HAVE_X86 */

static void gl_task(void *ctx_, int64_t t, int thread) {
    const gl_ctx *c = ctx_;
    int64_t ot = t % c->n_otiles, rt = t / c->n_otiles;
    int64_t o0 = ot * c->otile, o1 = o0 + c->otile < c->N ? o0 + c->otile : c->N;
    int64_t r0 = rt * c->rt, r1 = r0 + c->rt < c->n_rows ? r0 + c->rt : c->n_rows;
#ifdef SQ_HAVE_X86
    /* an interleaved weight (uploaded for int8 activations) meets float32 ones: the portable
     * path, the same bits, slower */
    if (c->isa != SQ_CPU_PORTABLE && !c->w->q8i) { gl_tile_avx2(c, o0, o1, r0, r1); return; }
#endif
    gl_rows_portable(c, o0, o1, r0, r1);
}

sq_status sq_cpu_linear_ggml(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                             const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    gl_ctx c = {.w = w, .x = x_d, .out = out_d, .n_rows = n_rows, .K = w->cols, .N = w->rows,
                .nsub = w->cols / w->qf.block_elems, .isa = cpu->isa};
    if (bias) {
        if (bias->store == SQ_WSTORE_BF16) c.bias_bf16 = bias->data_d;
        else c.bias = bias->data_d;
    }
    if (n_rows > GL_FEW_ROWS) {
        c.otile = GL_M_OTILE;
        c.rt = n_rows < GL_M_RTILE ? n_rows : GL_M_RTILE;
    } else {
        c.otile = GL_OTILE;
        c.rt = n_rows;
    }
    c.n_otiles = (c.N + c.otile - 1) / c.otile;
    int64_t n_rtiles = (n_rows + c.rt - 1) / c.rt;
    uint64_t work = (uint64_t)c.N * (uint64_t)c.K * (uint64_t)n_rows;
    sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : cpu->pool, c.n_otiles * n_rtiles, gl_task, &c);
    return SQ_OK;
}
