/* bench_gpu: GPU figures for docs/BENCHMARKS.md (a program that prints, not a test).
 *   1. device-to-device copy bandwidth (cudaMemcpyAsync of 1 GiB; bytes read + written)
 *   2. NF4 dequantize-GEMV (kernels/linear.cu) for 4096x4096, 4096x14336, 14336x4096 at batch
 *      1, 4, 16: time, GB/s of the bytes it must move (packed weights + absmax + x + out) and
 *      the fraction of (1); next to cuBLAS fp16 (cublasGemmEx, fp16 in / fp16 out / fp32
 *      compute) on the same shapes, whose bytes are the fp16 weights + x + out
 *   3. GPU quantize (kernels/quant.cu) of a BF16 4096x14336 weight to NF4: GB/s read + written
 * Weights are random bytes (never zeros); enough copies are rotated to exceed twice the L2 so
 * every timed pass reads from HBM.  Times: median of 50 timed passes after 5 warm-up passes,
 * cudaEvent per pass.  Footer: OK when the batch-1 GEMV of each shape agrees with cuBLAS
 * SGEMV on the same dequantized weights within 1e-4 relative, FAILED otherwise.
 * Exits 77 without a CUDA device.  Usage: bench_gpu [--quick] */
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "linear.cuh"
#include "quant.cuh"
#include "shardq/quant.h"

#define CK(call)                                                                               \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "bench_gpu: %s failed: %s (%s:%d)\n", #call, cudaGetErrorString(e_), \
                    __FILE__, __LINE__);                                                       \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define CKB(call)                                                                              \
    do {                                                                                       \
        cublasStatus_t s_ = (call);                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            fprintf(stderr, "bench_gpu: %s failed: %s\n", #call, cublasGetStatusString(s_));   \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define CKS(call)                                                                              \
    do {                                                                                       \
        sq_error e_;                                                                           \
        sq_error_init(&e_, -1);                                                                \
        if ((call) != SQ_OK) {                                                                 \
            fprintf(stderr, "bench_gpu: %s failed: %s\n", #call, e_.msg);                      \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

__global__ void k_fill_random(uint32_t *p, size_t n_words, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_words;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t z = (uint32_t)i * 2654435761u + seed;
        z ^= z >> 15; z *= 0x2c1b3c6du; z ^= z >> 12; z *= 0x297a2d39u; z ^= z >> 15;
        p[i] = z;
    }
}
/* absmax in [0.5, 1.5); float activations in [-1, 1); fp16 copies of both kinds */
__global__ void k_fill_floats(float *p, size_t n, float lo, float hi, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t z = (uint32_t)i * 2654435761u + seed;
        z ^= z >> 15; z *= 0x2c1b3c6du; z ^= z >> 12;
        p[i] = lo + (hi - lo) * (float)(z >> 8) * (1.0f / 16777216.0f);
    }
}
__global__ void k_to_half(const float *s, __half *d, size_t n, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = __float2half(s[i] * scale);
}
__global__ void k_to_bf16(const float *s, uint16_t *d, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = (uint16_t)(__float_as_uint(s[i]) >> 16);
}

static double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* Times `fn(rep)` over reps passes, returns the median in microseconds. */
template <class F>
static double time_us(F fn, int warm, int reps, cudaStream_t s) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < warm; i++) fn(i);
    std::vector<float> ms;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a, s));
        fn(i);
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float t = 0;
        CK(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return median(ms) * 1000.0;
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: bench_gpu has nothing to measure\n");
        return 77;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaSetDevice(0));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cublasHandle_t blas;
    CKB(cublasCreate(&blas));
    CKB(cublasSetStream(blas, st));
    const int warm = 5, reps = quick ? 10 : 50;
    printf("# device: %s (sm_%d%d, %d SMs, L2 %d MiB)\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, prop.l2CacheSize >> 20);

    /* 1. copy bandwidth */
    const size_t copy_bytes = (size_t)1 << 30;
    void *c0, *c1;
    CK(cudaMalloc(&c0, copy_bytes));
    CK(cudaMalloc(&c1, copy_bytes));
    k_fill_random<<<1024, 256, 0, st>>>((uint32_t *)c0, copy_bytes / 4, 1);
    double copy_us = time_us([&](int) { CK(cudaMemcpyAsync(c1, c0, copy_bytes, cudaMemcpyDeviceToDevice, st)); },
                             3, quick ? 5 : 20, st);
    double copy_gbs = 2.0 * copy_bytes / (copy_us * 1e3);
    CK(cudaFree(c0));
    CK(cudaFree(c1));
    printf("# device-to-device copy: %.1f GB/s (1 GiB, read + write)\n", copy_gbs);

    /* 2. GEMV */
    printf("#\n# %-13s %5s %11s %9s %7s %13s %11s %7s\n", "shape(NxK)", "batch", "nf4(us)", "nf4(GB/s)",
           "of-copy", "cublas16(us)", "cublas(GB/s)", "of-copy");
    const int64_t shapes[3][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
    const int batches[3] = {1, 4, 16};
    bool all_ok = true;
    for (auto &sh : shapes) {
        const int64_t N = sh[0], K = sh[1];
        const size_t packed = (size_t)(N * K / 2), n_blocks = (size_t)(N * K / 64);
        const size_t one = packed + n_blocks * 4;
        int copies = (int)std::max<size_t>(2, (4 * (size_t)prop.l2CacheSize) / one + 1);
        std::vector<uint8_t *> wq(copies);
        std::vector<float *> am(copies);
        for (int c = 0; c < copies; c++) {
            CK(cudaMalloc(&wq[c], packed));
            CK(cudaMalloc(&am[c], n_blocks * 4));
            k_fill_random<<<1024, 256, 0, st>>>((uint32_t *)wq[c], packed / 4, 7 + c);
            k_fill_floats<<<1024, 256, 0, st>>>(am[c], n_blocks, 0.5f, 1.5f, 11 + c);
        }
        float *x, *out, *ref;
        CK(cudaMalloc(&x, (size_t)16 * K * 4));
        CK(cudaMalloc(&out, (size_t)16 * N * 4));
        CK(cudaMalloc(&ref, (size_t)N * 4));
        k_fill_floats<<<256, 256, 0, st>>>(x, (size_t)16 * K, -1.0f, 1.0f, 3);
        sq_cuda_wdesc wd;
        memset(&wd, 0, sizeof wd);
        wd.store = SQ_CUDA_W_Q4;
        wd.log2_block = 6;
        wd.rows = N;
        wd.cols = K;
        memcpy(wd.code, sq_quant_code_table(SQ_QUANT_NF4), sizeof wd.code);
        /* correctness: batch 1 vs SGEMV on the dequantized weight (copy 0) */
        {
            wd.data_d = wq[0];
            wd.absmax_d = am[0];
            float *wf;
            CK(cudaMalloc(&wf, (size_t)N * K * 4));
            CKS(sq_cuda_weight_to_f32(&wd, 0, N, wf, st, &e_));
            CKS(sq_cuda_gemv(&wd, x, 1, NULL, out, st, &e_));
            const float one_f = 1.0f, zero_f = 0.0f;
            CKB(cublasSgemv(blas, CUBLAS_OP_T, (int)K, (int)N, &one_f, wf, (int)K, x, 1, &zero_f, ref, 1));
            std::vector<float> h_out(N), h_ref(N);
            CK(cudaMemcpyAsync(h_out.data(), out, N * 4, cudaMemcpyDeviceToHost, st));
            CK(cudaMemcpyAsync(h_ref.data(), ref, N * 4, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
            double mx = 1.0, md = 0.0;
            for (int64_t i = 0; i < N; i++) mx = std::max(mx, (double)std::fabs(h_ref[i]));
            for (int64_t i = 0; i < N; i++) md = std::max(md, (double)std::fabs(h_out[i] - h_ref[i]));
            if (!(md / mx <= 1e-4)) {
                all_ok = false;
                printf("# %lldx%lld: GEMV differs from SGEMV by %.3g relative\n", (long long)N, (long long)K, md / mx);
            }
            CK(cudaFree(wf));
        }
        /* cuBLAS fp16 on the same shape: its own rotated fp16 weights */
        const size_t w16_bytes = (size_t)N * K * 2;
        int copies16 = (int)std::max<size_t>(2, (4 * (size_t)prop.l2CacheSize) / w16_bytes + 1);
        std::vector<__half *> w16(copies16);
        float *tmp;
        CK(cudaMalloc(&tmp, (size_t)N * K * 4));
        k_fill_floats<<<1024, 256, 0, st>>>(tmp, (size_t)N * K, -0.05f, 0.05f, 5);
        for (int c = 0; c < copies16; c++) {
            CK(cudaMalloc(&w16[c], w16_bytes));
            k_to_half<<<1024, 256, 0, st>>>(tmp, w16[c], (size_t)N * K, 1.0f + 0.01f * c);
        }
        CK(cudaFree(tmp));
        __half *x16, *o16;
        CK(cudaMalloc(&x16, (size_t)16 * K * 2));
        CK(cudaMalloc(&o16, (size_t)16 * N * 2));
        k_to_half<<<256, 256, 0, st>>>(x, x16, (size_t)16 * K, 1.0f);
        CK(cudaGetLastError());
        for (int b : batches) {
            double us = time_us([&](int i) {
                wd.data_d = wq[i % copies];
                wd.absmax_d = am[i % copies];
                CKS(sq_cuda_gemv(&wd, x, b, NULL, out, st, &e_));
            }, warm, reps, st);
            double bytes = (double)one + 4.0 * b * (K + N);
            const float a1 = 1.0f, b0 = 0.0f;
            double us16 = time_us([&](int i) {
                CKB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, b, (int)K, &a1, w16[i % copies16],
                                 CUDA_R_16F, (int)K, x16, CUDA_R_16F, (int)K, &b0, o16, CUDA_R_16F, (int)N,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }, warm, reps, st);
            double bytes16 = (double)w16_bytes + 2.0 * b * (K + N);
            double gbs = bytes / (us * 1e3), gbs16 = bytes16 / (us16 * 1e3);
            printf("  %5lldx%-7lld %5d %11.1f %9.0f %6.0f%% %13.1f %11.0f %6.0f%%\n", (long long)N, (long long)K, b,
                   us, gbs, 100.0 * gbs / copy_gbs, us16, gbs16, 100.0 * gbs16 / copy_gbs);
        }
        for (int c = 0; c < copies; c++) { CK(cudaFree(wq[c])); CK(cudaFree(am[c])); }
        for (int c = 0; c < copies16; c++) CK(cudaFree(w16[c]));
        CK(cudaFree(x)); CK(cudaFree(out)); CK(cudaFree(ref)); CK(cudaFree(x16)); CK(cudaFree(o16));
    }

    /* 3. quantize */
    {
        const int64_t N = 4096, K = 14336;
        const size_t n = (size_t)(N * K);
        float *tmp;
        uint16_t *src;
        uint8_t *packed;
        float *absmax;
        CK(cudaMalloc(&tmp, n * 4));
        CK(cudaMalloc(&src, n * 2));
        CK(cudaMalloc(&packed, n / 2));
        CK(cudaMalloc(&absmax, n / 64 * 4));
        k_fill_floats<<<1024, 256, 0, st>>>(tmp, n, -0.1f, 0.1f, 9);
        k_to_bf16<<<1024, 256, 0, st>>>(tmp, src, n);
        CK(cudaFree(tmp));
        double us = time_us([&](int) {
            CKS(sq_cuda_quant_4bit(SQ_DTYPE_BF16, src, n, 64, 0, packed, absmax, st, &e_));
        }, warm, reps, st);
        double bytes = 2.0 * n + n / 2.0 + n / 64.0 * 4.0;
        printf("#\n# quantize BF16 -> NF4 (blocksize 64), %lldx%lld: %.1f us, %.0f GB/s (read + write), "
               "%.0f%% of copy\n", (long long)N, (long long)K, us, bytes / (us * 1e3),
               100.0 * bytes / (us * 1e3) / copy_gbs);
        CK(cudaFree(src)); CK(cudaFree(packed)); CK(cudaFree(absmax));
    }
    CK(cudaStreamSynchronize(st));
    CK(cudaGetLastError());
    printf("# %s\n", all_ok ? "OK" : "FAILED");
    cublasDestroy(blas);
    cudaStreamDestroy(st);
    return all_ok ? 0 : 1;
}
