/* cuda_check.cuh: SQ_CUDA_CHECK, the one way shardq code checks a CUDA runtime call.  Owns only
 * the macro.  It turns a failing cudaError_t into an sq_error (SQ_ERR_CUDA, naming the call, the
 * CUDA message and the source line) and jumps to the function's `fail:` label, which frees in
 * reverse order.  Must never print, exit or return early (the nccl-tests habit that leaks).
 *
 * Use inside a function that has `sq_error *err` and `sq_status st` in scope and a `fail:` label:
 *     SQ_CUDA_CHECK(cudaMalloc(&buf_d, n));
 *     ...
 *     return SQ_OK;
 *   fail:
 *     cudaFree(buf_d);
 *     return st;                      (st == SQ_ERR_CUDA after a failed check) */
#ifndef SHARDQ_CUDA_CHECK_CUH
#define SHARDQ_CUDA_CHECK_CUH

#include <cuda_runtime_api.h>

#include "shardq/core.h"

#define SQ_CUDA_CHECK(call)                                                                  \
    do {                                                                                     \
        cudaError_t sq_cuda_e_ = (call);                                                     \
        if (sq_cuda_e_ != cudaSuccess) {                                                     \
            st = sq_error_set(err, SQ_ERR_CUDA, NULL, NULL, "%s failed: %s (%s, %s:%d)",     \
                              #call, cudaGetErrorString(sq_cuda_e_),                         \
                              cudaGetErrorName(sq_cuda_e_), __FILE__, __LINE__);             \
            goto fail;                                                                       \
        }                                                                                    \
    } while (0)

#endif
