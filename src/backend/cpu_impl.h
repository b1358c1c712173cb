/* Private to the CPU backend: its handle, and the kernels split across cpu*.c files.
 * Must never be included outside src/backend/. */
#ifndef SHARDQ_CPU_IMPL_H
#define SHARDQ_CPU_IMPL_H

#include "backend_impl.h"

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

/* Dot product with the backend's fixed order: one 8-lane accumulator, fused multiply-adds
 * over k = 0, 8, 16, …, a fixed horizontal sum, then the tail fused one by one. */
float sq_cpu_dot(sq_cpu_isa isa, const float *a, const float *b, int64_t n);

#endif
