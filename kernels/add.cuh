/* add.cuh: out = a + b over n float32 (sq_backend_add), callable from C.  out may equal a or b.
 * Only enqueues on `stream`; never synchronizes, allocates or prints. */
#ifndef SHARDQ_KERNELS_ADD_CUH
#define SHARDQ_KERNELS_ADD_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
sq_status sq_cuda_add(const float *a_d, const float *b_d, int64_t n, float *out_d,
                      cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
