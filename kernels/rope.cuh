/* rope.cuh: rotary embedding in place (sq_backend_rope), callable from C, with the angle math
 * of kernels/rope_math.cuh (the CPU backend's).  pos_d: n_rows int32 positions on the device;
 * inv_freq_d: head_dim / 2 floats.  k_d may be NULL.
 * Only enqueues on `stream`; never synchronizes, allocates or prints. */
#ifndef SHARDQ_KERNELS_ROPE_CUH
#define SHARDQ_KERNELS_ROPE_CUH
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "shardq/core.h"
#ifdef __cplusplus
extern "C" {
#endif
sq_status sq_cuda_rope(float *q_d, float *k_d, int64_t n_rows, int n_heads, int n_kv_heads,
                       int head_dim, const int32_t *pos_d, const float *inv_freq_d,
                       cudaStream_t stream, sq_error *err);
#ifdef __cplusplus
}
#endif
#endif
