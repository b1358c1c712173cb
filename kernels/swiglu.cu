/* swiglu.cu: silu(gate) * up (kernels/swiglu.cuh), element math from backend_math.cuh.
 * Never synchronizes, allocates, prints. */
#include "backend_math.cuh"
#include "cuda_check.cuh"
#include "eltwise_common.cuh"
#include "swiglu.cuh"

namespace {
__global__ void k_swiglu(const float *g, const float *u, int64_t n, float *o) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        o[i] = sq_bm_swiglu1(g[i], u[i]);
}
}  // namespace

extern "C" sq_status sq_cuda_swiglu(const float *gate_d, const float *up_d, int64_t n,
                                    float *out_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n <= 0) return SQ_OK;
    k_swiglu<<<sq_elt::grid_for(n), sq_elt::kThreads, 0, stream>>>(gate_d, up_d, n, out_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
