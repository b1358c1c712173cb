/* CPU RoPE and grouped-query attention over the KV cache.  Angles come from
 * kernels/rope_math.cuh (shared with CUDA).  Attention is one task per (row, head) with an
 * online softmax over the row's positions 0 .. p in a fixed order, so a row's result does not
 * depend on the batch it came in, the thread count or the sequence's other rows (prefill and
 * decode give the same bits).  Must never allocate or read cache positions beyond a row's own
 * position.
 *
 * The AVX2 path (head_dim % 8 == 0) takes the positions in passes of ATT_CHUNK keys at fixed
 * offsets (0, 64, 128, ...): scores of 8 keys at a time (one 8-lane fma accumulator per key over
 * head_dim, then one fixed hadd tree per key: ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), the same
 * for every key whatever its place in the group; a group past the last key repeats the last
 * key and drops the copies), times 1 / sqrt(head_dim); the pass's max m' (a new running max
 * rescales l and the accumulator once by expf(m - m')); e_j = attn_exp8(s_j - m) eight at a
 * time; l += e_j in key order; acc += e_j * v_j in key order; finally out = acc / l.
 * Measured on SmolLM2-135M Q4_0 (2 threads, int8 activations): attention was 15-30 % of
 * prefill and decode with a dot and an expf per key (attn_task + sq_cpu_dot_avx2 + expf).
 * The portable path (no AVX2, or head_dim % 8 != 0) is the scalar loop: a sq_cpu_dot and an
 * expf per key. */
#include "cpu_impl.h"

#include <math.h>
#include <string.h>

#include "../../kernels/rope_math.cuh"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_HAVE_X86 1
#define TGT_AVX2 __attribute__((target("avx2,fma")))
#endif

typedef struct {
    float *q, *k;
    int n_heads, n_kv_heads, head_dim;
    const int32_t *pos;
    const float *inv_freq;
} rope_ctx;

static void rope_task(void *ctx_, int64_t r, int thread) {
    const rope_ctx *c = ctx_;
    int half = c->head_dim / 2;
    float *q = c->q + r * (int64_t)c->n_heads * c->head_dim;
    float *k = c->k ? c->k + r * (int64_t)c->n_kv_heads * c->head_dim : NULL;
    for (int i = 0; i < half; i++) {
        float cs, sn;
        sq_rope_cos_sin(c->pos[r], c->inv_freq[i], &cs, &sn);
        for (int h = 0; h < c->n_heads; h++) {
            float *x = q + (int64_t)h * c->head_dim;
            sq_rope_rotate_pair(&x[i], &x[i + half], cs, sn);
        }
        if (k)
            for (int h = 0; h < c->n_kv_heads; h++) {
                float *x = k + (int64_t)h * c->head_dim;
                sq_rope_rotate_pair(&x[i], &x[i + half], cs, sn);
            }
    }
}

sq_status sq_cpu_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                      int n_kv_heads, int head_dim, const int32_t *pos, const void *inv_freq_d,
                      sq_error *err) {
    rope_ctx c = {q_d, k_d, n_heads, n_kv_heads, head_dim, pos, inv_freq_d};
    bool small = (uint64_t)n_rows * (uint64_t)(n_heads + n_kv_heads) * (uint64_t)head_dim * 8 <
                 SQ_CPU_SERIAL_WORK;
    sq_pool_run(small ? NULL : sq_cpu_of(be)->pool, n_rows, rope_task, &c);
    return SQ_OK;
}

typedef struct {
    const float *q;
    const sq_kv_layer *kv;
    int n_heads, n_seqs;
    const sq_seq_span *seqs;
    float *out;
    sq_cpu_isa isa;
} attn_ctx;

/* The row, head, position and cache bases of task t. */
typedef struct {
    const float *q, *kb, *vb;
    float *o;
    int64_t p, stride;
} attn_row;

static attn_row attn_row_of(const attn_ctx *c, int64_t t) {
    const sq_kv_layer *kv = c->kv;
    int hd = kv->head_dim, nkv = kv->n_kv_heads;
    int64_t r = t / c->n_heads;
    int h = (int)(t % c->n_heads);
    /* find the row's sequence (batches hold few sequences) */
    int64_t row0 = 0;
    int s = 0;
    for (; s < c->n_seqs; s++) {
        if (r < row0 + c->seqs[s].n_tokens) break;
        row0 += c->seqs[s].n_tokens;
    }
    const sq_seq_span *sp = &c->seqs[s];
    int kvh = h / (c->n_heads / nkv);
    attn_row a;
    a.p = sp->start_pos + (r - row0);
    a.stride = (int64_t)nkv * hd;
    a.kb = (const float *)kv->k_d + (int64_t)sp->slot * kv->max_seq * a.stride + kvh * hd;
    a.vb = (const float *)kv->v_d + (int64_t)sp->slot * kv->max_seq * a.stride + kvh * hd;
    a.q = c->q + (r * c->n_heads + h) * hd;
    a.o = c->out + (r * c->n_heads + h) * hd;
    return a;
}

static void attn_task_portable(const attn_ctx *c, int64_t t);

#ifdef SQ_HAVE_X86
enum { ATT_CHUNK = 64 };   /* keys per pass of the AVX2 path (a multiple of 8) */

/* exp(x) of 8 lanes for x <= 0 (the softmax's s - max), Cephes' expf: x = n ln2 + r with n =
 * round(x log2 e), |r| <= ln2 / 2 (ln2 in two parts), e^r = 1 + r + r^2 P(r) with P of degree 5,
 * times 2^n through the exponent bits.  Relative error against exp() in float64 about 1 ulp
 * (tests/test_backend_attn.c sweeps [-87, 0]: at most 1.4e-7 through two divisions, bound
 * 2.5e-7); x < -87 gives 0 (exp(-87) = 1.6e-38,
 * so an absolute error below 1.7e-38 against a sum l >= 1); -inf gives 0, NaN stays NaN. */
TGT_AVX2 static inline __m256 attn_exp8(__m256 x) {
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), y);
}

/* Scores of the 8 keys k[0..7] against q (hd % 8 == 0), times scale, into out[0..7]. */
TGT_AVX2 static void attn_scores8(const float *q, const float *const k[8], int hd, float scale,
                                  float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[0] + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[1] + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[2] + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[3] + i), a3);
        a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[4] + i), a4);
        a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[5] + i), a5);
        a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[6] + i), a6);
        a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[7] + i), a7);
    }
    /* per key: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) */
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(out, _mm256_mul_ps(s, _mm256_set1_ps(scale)));
}

TGT_AVX2 static void attn_task_avx2(const attn_ctx *c, attn_row a) {
    const int hd = c->kv->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    _Alignas(32) float acc[1024];
    _Alignas(32) float sc[ATT_CHUNK];
    for (int i = 0; i < hd; i++) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 <= a.p; j0 += ATT_CHUNK) {
        const int n = (int)(a.p + 1 - j0 < ATT_CHUNK ? a.p + 1 - j0 : ATT_CHUNK);
        const float *kj = a.kb + j0 * a.stride, *vj = a.vb + j0 * a.stride;
        for (int g = 0; g < n; g += 8) {
            const float *k8[8];
            for (int i = 0; i < 8; i++) k8[i] = kj + (int64_t)(g + i < n ? g + i : n - 1) * a.stride;
            attn_scores8(a.q, k8, hd, scale, sc + g);
        }
        float mc = sc[0];
        for (int j = 1; j < n; j++) mc = sc[j] > mc ? sc[j] : mc;
        if (mc > m) {
            const float corr = expf(m - mc);   /* 0 on the first pass */
            l *= corr;
            const __m256 cv = _mm256_set1_ps(corr);
            for (int i = 0; i < hd; i += 8) _mm256_store_ps(acc + i, _mm256_mul_ps(_mm256_load_ps(acc + i), cv));
            m = mc;
        }
        const __m256 mv = _mm256_set1_ps(m);
        for (int g = 0; g < n; g += 8)
            _mm256_store_ps(sc + g, attn_exp8(_mm256_sub_ps(_mm256_load_ps(sc + g), mv)));
        for (int j = 0; j < n; j++) l += sc[j];
        int i = 0;
        for (; i + 32 <= hd; i += 32) {
            __m256 o0 = _mm256_load_ps(acc + i), o1 = _mm256_load_ps(acc + i + 8),
                   o2 = _mm256_load_ps(acc + i + 16), o3 = _mm256_load_ps(acc + i + 24);
            const float *v = vj + i;
            for (int j = 0; j < n; j++, v += a.stride) {
                const __m256 e = _mm256_broadcast_ss(sc + j);
                o0 = _mm256_fmadd_ps(e, _mm256_loadu_ps(v), o0);
                o1 = _mm256_fmadd_ps(e, _mm256_loadu_ps(v + 8), o1);
                o2 = _mm256_fmadd_ps(e, _mm256_loadu_ps(v + 16), o2);
                o3 = _mm256_fmadd_ps(e, _mm256_loadu_ps(v + 24), o3);
            }
            _mm256_store_ps(acc + i, o0);
            _mm256_store_ps(acc + i + 8, o1);
            _mm256_store_ps(acc + i + 16, o2);
            _mm256_store_ps(acc + i + 24, o3);
        }
        for (; i < hd; i += 8) {
            __m256 o0 = _mm256_load_ps(acc + i);
            const float *v = vj + i;
            for (int j = 0; j < n; j++, v += a.stride)
                o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + j), _mm256_loadu_ps(v), o0);
            _mm256_store_ps(acc + i, o0);
        }
    }
    for (int i = 0; i < hd; i++) a.o[i] = acc[i] / l;
}
#endif

static void attn_task(void *ctx_, int64_t t, int thread) {
    const attn_ctx *c = ctx_;
#ifdef SQ_HAVE_X86
    if (c->isa != SQ_CPU_PORTABLE && c->kv->head_dim % 8 == 0) {
        attn_task_avx2(c, attn_row_of(c, t));
        return;
    }
#endif
    attn_task_portable(c, t);
}

static void attn_task_portable(const attn_ctx *c, int64_t t) {
    const attn_row a = attn_row_of(c, t);
    const int hd = c->kv->head_dim;
    const int64_t p = a.p, pos_stride = a.stride;
    const float *kb = a.kb, *vb = a.vb, *q = a.q;
    float scale = 1.0f / sqrtf((float)hd);
    float acc[1024];
    for (int i = 0; i < hd; i++) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j <= p; j++) {
        float sc = sq_cpu_dot(c->isa, q, kb + j * pos_stride, hd) * scale;
        if (sc > m) {
            float corr = expf(m - sc);   /* 0 on the first position */
            l *= corr;
            for (int i = 0; i < hd; i++) acc[i] *= corr;
            m = sc;
        }
        float e = expf(sc - m);
        l += e;
        const float *v = vb + j * pos_stride;
        for (int i = 0; i < hd; i++) acc[i] += e * v[i];
    }
    for (int i = 0; i < hd; i++) a.o[i] = acc[i] / l;
}

sq_status sq_cpu_attention(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                           const sq_kv_layer *kv, int n_heads, int n_seqs,
                           const sq_seq_span *seqs, int64_t n_rows, void *out_d, sq_error *err) {
    /* 1. store this call's keys and values at (slot, pos) */
    size_t row_bytes = (size_t)kv->n_kv_heads * (size_t)kv->head_dim * sizeof(float);
    int64_t r = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int32_t t = 0; t < seqs[s].n_tokens; t++, r++) {
            int64_t dst = ((int64_t)seqs[s].slot * kv->max_seq + seqs[s].start_pos + t) *
                          (int64_t)(row_bytes / sizeof(float));
            memcpy((float *)kv->k_d + dst, (const float *)k_d + r * (int64_t)(row_bytes / sizeof(float)), row_bytes);
            memcpy((float *)kv->v_d + dst, (const float *)v_d + r * (int64_t)(row_bytes / sizeof(float)), row_bytes);
        }
    /* 2. attend */
    attn_ctx c = {q_d, kv, n_heads, n_seqs, seqs, out_d, sq_cpu_of(be)->isa};
    uint64_t work = 0;   /* multiply-adds: 2 * head_dim per (row, head, attended position) */
    for (int s = 0; s < n_seqs; s++)
        work += (uint64_t)seqs[s].n_tokens * (uint64_t)(seqs[s].start_pos + seqs[s].n_tokens);
    work *= (uint64_t)n_heads * (uint64_t)kv->head_dim * 2;
    sq_pool_run(work < SQ_CPU_SERIAL_WORK ? NULL : sq_cpu_of(be)->pool, n_rows * n_heads, attn_task, &c);
    return SQ_OK;
}
