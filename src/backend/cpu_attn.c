/* CPU RoPE and grouped-query attention over the KV cache.  Angles come from
 * kernels/rope_math.cuh (shared with CUDA).  Attention is one task per (row, head) with an
 * online softmax in a fixed position order, so a row's result does not depend on the batch it
 * came in (prefill and decode give the same bits).  Must never allocate or read cache positions
 * beyond a row's own position. */
#include "cpu_impl.h"

#include <math.h>
#include <string.h>

#include "../../kernels/rope_math.cuh"

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

static void attn_task(void *ctx_, int64_t t, int thread) {
    const attn_ctx *c = ctx_;
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
    int64_t p = sp->start_pos + (r - row0);
    int kvh = h / (c->n_heads / nkv);
    int64_t pos_stride = (int64_t)nkv * hd;
    const float *kb = (const float *)kv->k_d + (int64_t)sp->slot * kv->max_seq * pos_stride + kvh * hd;
    const float *vb = (const float *)kv->v_d + (int64_t)sp->slot * kv->max_seq * pos_stride + kvh * hd;
    const float *q = c->q + (r * c->n_heads + h) * hd;
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
    float *o = c->out + (r * c->n_heads + h) * hd;
    for (int i = 0; i < hd; i++) o[i] = acc[i] / l;
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
