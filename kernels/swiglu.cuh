/* swiglu.cuh: out = silu(gate) * up over n float32 (sq_backend_swiglu), callable from C; the
 * element is sq_bm_swiglu1 (kernels/backend_math.cuh), shared with the host.  out may equal
 * gate or up.  Only enqueues on `stream`; never synchronizes, allocates or prints. */
#ifndef SHARDQ_KERNELS_SWIGLU_CUH
#define SHARDQ_KERNELS_SWIGLU_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
sq_status sq_cuda_swiglu(const float *gate_d, const float *up_d, int64_t n, float *out_d,
                         cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
