/* Private to the CPU backend: its handle, and the kernels split across cpu*.c files.
 * Must never be included outside src/backend/. */
#ifndef SHARDQ_CPU_IMPL_H
#define SHARDQ_CPU_IMPL_H

#include "backend_impl.h"

/* Below this many multiply-adds an op runs on the calling thread alone. */
#define SQ_CPU_SERIAL_WORK (UINT64_C(1) << 17)

typedef enum { SQ_CPU_PORTABLE = 0, SQ_CPU_AVX2, SQ_CPU_AVX512 } sq_cpu_isa;

typedef struct sq_cpu {
    sq_backend base;            /* first: a sq_backend * is a sq_cpu * */
    sq_pool *pool;
    sq_cpu_isa isa;
    /* sampling scratch (sized by reserve): per row of a call, vocab entries */
    int64_t sample_cap_rows, sample_cap_vocab;
    int32_t *sample_idx;        /* (max_rows, max_vocab) */
    double *sample_p;           /* (max_rows, max_vocab) */
} sq_cpu;

static inline sq_cpu *sq_cpu_of(sq_backend *be) { return (sq_cpu *)be; }

sq_status sq_cpu_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                        const sq_weight *bias, void *out_d, sq_error *err);
sq_status sq_cpu_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                      int n_kv_heads, int head_dim, const int32_t *pos, const void *inv_freq_d,
                      sq_error *err);
sq_status sq_cpu_attention(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                           const sq_kv_layer *kv, int n_heads, int n_seqs,
                           const sq_seq_span *seqs, int64_t n_rows, void *out_d, sq_error *err);
sq_status sq_cpu_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                        const sq_sample_params *p, const uint64_t *seq_ids,
                        const uint64_t *steps, int32_t *ids_out, sq_error *err);

/* The CPU backend's 4-bit layout.  Row o of a [N, K] weight (K % 32 == 0) takes K / 2 bytes at
 * o * K / 2.  Each full group of 64 elements is 32 bytes read as eight 32-bit lanes: lane l holds,
 * in nibble c (bits 4c .. 4c + 3), element 8c + l of the group, so the 8-element chunk c of the
 * group is `lanes >> 4c` with no shuffle.  A trailing half group (K % 64 == 32) is 16 bytes read
 * as eight 16-bit lanes with the same rule for its 4 chunks.  Element k's byte and nibble shift: */
static inline void sq_cpu_q4_pos(int64_t K, int64_t k, int64_t *byte, int *shift) {
    int64_t G = K / 64;
    if (k < G * 64) {
        int64_t e = k & 63;
        *byte = (k >> 6) * 32 + 4 * (e & 7) + (e >> 4);
        *shift = (int)((e >> 3) & 1) * 4;
    } else {
        int64_t e = k - G * 64;
        *byte = G * 32 + 2 * (e & 7) + (e >> 4);
        *shift = (int)((e >> 3) & 1) * 4;
    }
}

/* Dot product with the backend's fixed order: one 8-lane accumulator, fused multiply-adds
 * over k = 0, 8, 16, …, a fixed horizontal sum, then the tail fused one by one. */
float sq_cpu_dot(sq_cpu_isa isa, const float *a, const float *b, int64_t n);

#endif
