/* attention.cuh: grouped-query causal attention over the KV cache (sq_backend_attention),
 * callable from C.  Two launches, in stream order: sq_cuda_kv_store writes this call's keys and
 * values at (slot, pos) of each row, then sq_cuda_attention attends every (row, head) over
 * positions [0, pos] of the row's slot.  row_slot_d / row_pos_d: n_rows int32 each on the
 * device (the backend expands the sequence spans into them).  Prefill and decode are the same
 * kernels; a row's result does not depend on the other rows of the call.
 * Cache layout: k, v float32 (n_slots, max_seq, n_kv_heads, head_dim).
 * Only enqueues on `stream`; never synchronizes, allocates or prints. */
#ifndef SHARDQ_KERNELS_ATTENTION_CUH
#define SHARDQ_KERNELS_ATTENTION_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
sq_status sq_cuda_kv_store(const float *k_d, const float *v_d, int64_t n_rows,
                           const int32_t *row_slot_d, const int32_t *row_pos_d, float *cache_k_d,
                           float *cache_v_d, int64_t max_seq, int n_kv_heads, int head_dim,
                           cudaStream_t stream, sq_error *err);
/* q_d, out_d (n_rows, n_heads, head_dim); scale = 1 / sqrt(head_dim) as the caller rounds it;
 * head_dim <= 1024. */
sq_status sq_cuda_attention(const float *q_d, const float *cache_k_d, const float *cache_v_d,
                            int64_t n_rows, const int32_t *row_slot_d, const int32_t *row_pos_d,
                            int64_t max_seq, int n_heads, int n_kv_heads, int head_dim,
                            float scale, float *out_d, cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
