/* rmsnorm.cuh: fused RMSNorm (sq_backend_rmsnorm), callable from C: one CTA per row computes
 * the float64 sum of squares, the scale (sq_bm_rms_scale) and the weighted output in one pass
 * over global memory for the read and one for the write.  out may equal x.
 * Only enqueues on `stream`; never synchronizes, allocates or prints. */
#ifndef SHARDQ_KERNELS_RMSNORM_CUH
#define SHARDQ_KERNELS_RMSNORM_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
/* x_d, out_d (n_rows, n); w_d (n) float32 (w_bf16 = 0) or bfloat16 (w_bf16 = 1). */
sq_status sq_cuda_rmsnorm(const float *x_d, const void *w_d, int w_bf16, float eps, int64_t n_rows,
                          int64_t n, float *out_d, cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
