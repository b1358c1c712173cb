/* embed.cuh: token-embedding gather (sq_backend_embed), callable from C.  ids are on the device,
 * so a bad id cannot be refused before the launch: the kernel writes zeros for that row and
 * records the first bad (row, id) in bad_d (int64[2], {-1, -1} when none, set by the caller);
 * the backend reports it at its next sync as SQ_ERR_INVALID.  Only enqueues on `stream`. */
#ifndef SHARDQ_KERNELS_EMBED_CUH
#define SHARDQ_KERNELS_EMBED_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
/* table_d: (vocab, dim) float32 (bf16 = 0) or bfloat16 (bf16 = 1); out_d (n_rows, dim) float32. */
sq_status sq_cuda_embed(const void *table_d, int bf16, int64_t vocab, int64_t dim,
                        const int32_t *ids_d, int64_t n_rows, float *out_d,
                        long long *bad_d, cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
