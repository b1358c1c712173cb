/* add.cu: element-wise sum (kernels/add.cuh); 16-byte accesses when the three pointers allow.
 * Never synchronizes, allocates, prints. */
#include "add.cuh"
#include "cuda_check.cuh"
#include "eltwise_common.cuh"

namespace {
__global__ void k_add4(const float4 *a, const float4 *b, int64_t n4, float4 *o) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
         i += (int64_t)gridDim.x * blockDim.x) {
        float4 x = a[i], y = b[i];
        o[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
}
__global__ void k_add1(const float *a, const float *b, int64_t first, int64_t n, float *o) {
    for (int64_t i = first + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        o[i] = a[i] + b[i];
}
}  // namespace

extern "C" sq_status sq_cuda_add(const float *a_d, const float *b_d, int64_t n, float *out_d,
                                 cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n <= 0) return SQ_OK;
    int64_t n4 = 0;
    if (((uintptr_t)a_d | (uintptr_t)b_d | (uintptr_t)out_d) % 16 == 0) {
        n4 = n / 4;
        if (n4) k_add4<<<sq_elt::grid_for(n4), sq_elt::kThreads, 0, stream>>>(
                (const float4 *)a_d, (const float4 *)b_d, n4, (float4 *)out_d);
    }
    if (4 * n4 < n)
        k_add1<<<sq_elt::grid_for(n - 4 * n4), sq_elt::kThreads, 0, stream>>>(a_d, b_d, 4 * n4, n, out_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
