/* sample.cuh: sampling on the device (sq_backend_sample), callable from C.
 *   greedy: sq_cuda_argmax, one CTA per row, largest logit with the lowest index on ties.
 *   random: sq_cuda_sample, per row: a stable descending sort of (logit, index) (CUB segmented
 *           radix sort: ties keep the lower index first, as the CPU's comparator), the top_k
 *           prefix, float64 weights sq_bm_sample_weight in parallel, then one thread walks them
 *           once in order (sq_bm_sample_walk_prefix: running sums, then binary searches; the same
 *           pick as sq_bm_sample_walk) with u = sq_bm_uniform(seed, seq_id, step): the CPU
 *           backend's algorithm and summation order, the same counter-based generator.
 * Scratch (sq_cuda_sample_scratch): keys and indices (rows x vocab) x 2, float64 weights
 * (rows x vocab), segment offsets, CUB's temporary storage.  Sized once by the backend's
 * reserve; the launchers never allocate.  Only enqueue on `stream`; ids_d is int32 (n_rows). */
#ifndef SHARDQ_KERNELS_SAMPLE_CUH
#define SHARDQ_KERNELS_SAMPLE_CUH
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif

sq_status sq_cuda_argmax(const float *logits_d, int64_t n_rows, int64_t vocab, int32_t *ids_d,
                         cudaStream_t stream, sq_error *err);

/* Bytes of scratch for up to max_rows x max_vocab (one allocation; the launcher carves it). */
sq_status sq_cuda_sample_scratch_bytes(int64_t max_rows, int64_t max_vocab, size_t *bytes,
                                       sq_error *err);

/* seq_ids_d, steps_d: uint64 (n_rows) on the device. */
sq_status sq_cuda_sample(const float *logits_d, int64_t n_rows, int64_t vocab, float temperature,
                         int32_t top_k, float top_p, uint64_t seed, const uint64_t *seq_ids_d,
                         const uint64_t *steps_d, void *scratch_d, size_t scratch_bytes,
                         int32_t *ids_d, cudaStream_t stream, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
