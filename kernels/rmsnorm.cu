/* rmsnorm.cu: fused RMSNorm (kernels/rmsnorm.cuh).  The sum of squares is accumulated in float64
 * per thread and combined by a fixed tree, so the result is deterministic; the scale and the
 * output element are backend_math.cuh's.  Never synchronizes, allocates, prints. */
#include "backend_math.cuh"
#include "cuda_check.cuh"
#include "quant_math.cuh"
#include "rmsnorm.cuh"

namespace {
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
k_rmsnorm(const float *x, const void *w, int w_bf16, float eps, int64_t n, float *out) {
    __shared__ double red[kThreads];
    __shared__ float scale_s;
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = out + (int64_t)blockIdx.x * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) ss += (double)xr[i] * (double)xr[i];
    red[threadIdx.x] = ss;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) scale_s = sq_bm_rms_scale(red[0], n, eps);
    __syncthreads();
    const float scale = scale_s;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        float wi = w_bf16 ? sq_qm_bf16_to_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
        yr[i] = sq_bm_rms_apply(xr[i], scale, wi);
    }
}
}  // namespace

extern "C" sq_status sq_cuda_rmsnorm(const float *x_d, const void *w_d, int w_bf16, float eps,
                                     int64_t n_rows, int64_t n, float *out_d, cudaStream_t stream,
                                     sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (n_rows > 0x7fffffff || n <= 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda rmsnorm: %lld rows of %lld",
                            (long long)n_rows, (long long)n);
    k_rmsnorm<<<(unsigned)n_rows, kThreads, 0, stream>>>(x_d, w_d, w_bf16, eps, n, out_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
