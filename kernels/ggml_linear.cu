/* ggml_linear.cu: GEMV, float32 conversion and embedding on ggml weights in the block-scaled
 * integer form (kernels/ggml_linear.cuh).  Per-element math: kernels/ggml_quant_math.cuh,
 * shared with the CPU.  Never: synchronizes, allocates device memory, prints, exits. */
#include "cuda_check.cuh"
#include "ggml_linear.cuh"
#include "ggml_quant_math.cuh"

namespace {

constexpr int kWarps = 4;   /* output features per CTA */

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Scale or bias i (flat over the weight) as float32, exactly. */
__device__ __forceinline__ float param(const sq_cuda_ggml_desc &w, const void *p, int64_t i) {
    if (w.scale_bits == 16) return sq_gq_f16(static_cast<const uint16_t *>(p)[i]);
    return static_cast<const float *>(p)[i];
}

/* The 32 values of group g of row o into v (element order). */
template <int BITS>
__device__ __forceinline__ void group_values(const sq_cuda_ggml_desc &w, int64_t o, int64_t g,
                                             float (&v)[32]) {
    const uint8_t *cr = w.codes_d + o * w.code_row_bytes;
    const int64_t nsub = w.cols / w.block_elems;
    const int64_t s0 = o * nsub + (g * 32) / w.block_elems;
    const int two = w.block_elems == 16;
    const float sc0 = param(w, w.scales_d, s0), sc1 = two ? param(w, w.scales_d, s0 + 1) : sc0;
    const float bi0 = w.has_bias ? param(w, w.biases_d, s0) : 0.0f;
    const float bi1 = w.has_bias && two ? param(w, w.biases_d, s0 + 1) : bi0;
    if (BITS == 4) {
        const uint4 q = *reinterpret_cast<const uint4 *>(cr + g * 16);   /* 16-byte aligned */
        const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int b = (int)((words[j >> 2] >> (8 * (j & 3))) & 0xffu);
            v[j] = sq_gq_qblock_value((b & 15) - w.code_zero, sc0, bi0, w.has_bias);
            v[j + 16] = sq_gq_qblock_value((b >> 4) - w.code_zero, sc1, bi1, w.has_bias);
        }
    } else {
        const uint4 *p = reinterpret_cast<const uint4 *>(cr + g * 32);
        const uint4 q0 = p[0], q1 = p[1];
        const uint32_t words[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int code = (int)(int8_t)((words[j >> 2] >> (8 * (j & 3))) & 0xffu);
            v[j] = sq_gq_qblock_value(code, j < 16 ? sc0 : sc1, j < 16 ? bi0 : bi1, w.has_bias);
        }
    }
}

template <int R, int BITS>
__global__ void __launch_bounds__(kWarps * 32)
k_ggml_gemv(const sq_cuda_ggml_desc w, const float *__restrict__ x, const float *__restrict__ bias,
            float *__restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (o >= w.rows) return;
    const int64_t K = w.cols, ng = K / 32;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int64_t g = lane; g < ng; g += 32) {
        float v[32];
        group_values<BITS>(w, o, g, v);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float *xr = x + (int64_t)r * K + g * 32;
            float s = acc[r];
#pragma unroll
            for (int e = 0; e < 32; e++) s = fmaf(v[e], __ldg(xr + e), s);
            acc[r] = s;
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(int64_t)r * w.rows + o] = bias ? s + bias[o] : s;
    }
}

__device__ __forceinline__ float elem_value(const sq_cuda_ggml_desc &w, int64_t o, int64_t k) {
    const uint8_t *cr = w.codes_d + o * w.code_row_bytes;
    int code;
    if (w.code_bits == 4) code = ((cr[(k >> 5) * 16 + (k & 15)] >> (((k >> 4) & 1) * 4)) & 15) - w.code_zero;
    else code = (int8_t)cr[k];
    const int64_t b = o * (w.cols / w.block_elems) + k / w.block_elems;
    return sq_gq_qblock_value(code, param(w, w.scales_d, b),
                              w.has_bias ? param(w, w.biases_d, b) : 0.0f, w.has_bias);
}

__global__ void k_ggml_to_f32(const sq_cuda_ggml_desc w, int64_t row0, int64_t n, float *dst) {
    const int64_t total = n * w.cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = elem_value(w, row0 + i / w.cols, i % w.cols);
}

__global__ void k_ggml_embed(const sq_cuda_ggml_desc w, const int32_t *ids, float *out,
                             long long *bad) {
    const int64_t r = blockIdx.x;
    const int32_t id = ids[r];
    const bool ok = id >= 0 && id < w.rows;
    if (!ok && threadIdx.x == 0 && atomicCAS((unsigned long long *)&bad[0], ~0ull,
                                             (unsigned long long)r) == ~0ull)
        bad[1] = id;
    for (int64_t i = threadIdx.x; i < w.cols; i += blockDim.x)
        out[r * w.cols + i] = ok ? elem_value(w, id, i) : 0.0f;
}

template <int BITS>
void launch_gemv(const sq_cuda_ggml_desc &w, const float *x, int64_t n_rows, const float *bias,
                 float *out, cudaStream_t s) {
    const unsigned grid = (unsigned)((w.rows + kWarps - 1) / kWarps);
    switch (n_rows) {
#define SQ_GG_CASE(R) case R: k_ggml_gemv<R, BITS><<<grid, kWarps * 32, 0, s>>>(w, x, bias, out); break;
    SQ_GG_CASE(1) SQ_GG_CASE(2) SQ_GG_CASE(3) SQ_GG_CASE(4) SQ_GG_CASE(5) SQ_GG_CASE(6)
    SQ_GG_CASE(7) SQ_GG_CASE(8) SQ_GG_CASE(9) SQ_GG_CASE(10) SQ_GG_CASE(11) SQ_GG_CASE(12)
    SQ_GG_CASE(13) SQ_GG_CASE(14) SQ_GG_CASE(15) SQ_GG_CASE(16)
#undef SQ_GG_CASE
    default: break;
    }
}

sq_status check_desc(const sq_cuda_ggml_desc *w, sq_error *err) {
    if (!w || w->cols <= 0 || w->cols % 32 || w->rows <= 0 || (w->code_bits != 4 && w->code_bits != 8) ||
        (w->block_elems != 16 && w->block_elems != 32) || (w->scale_bits != 16 && w->scale_bits != 32) ||
        !w->codes_d || !w->scales_d ||
        (w->has_bias && !w->biases_d) || w->rows / kWarps >= 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda ggml: bad weight descriptor");
    return SQ_OK;
}

}  // namespace

extern "C" sq_status sq_cuda_ggml_gemv(const sq_cuda_ggml_desc *w, const float *x_d,
                                       int64_t n_rows, const float *bias_d, float *out_d,
                                       cudaStream_t stream, sq_error *err) {
    sq_status st = check_desc(w, err);
    if (st != SQ_OK) return st;
    if (n_rows < 1 || n_rows > 16)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda ggml gemv: %lld rows (1..16)",
                            (long long)n_rows);
    if (w->code_bits == 4) launch_gemv<4>(*w, x_d, n_rows, bias_d, out_d, stream);
    else launch_gemv<8>(*w, x_d, n_rows, bias_d, out_d, stream);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_ggml_to_f32(const sq_cuda_ggml_desc *w, int64_t row0, int64_t n,
                                         float *dst_d, cudaStream_t stream, sq_error *err) {
    sq_status st = check_desc(w, err);
    if (st != SQ_OK) return st;
    if (row0 < 0 || n <= 0 || row0 + n > w->rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda ggml to_f32: rows %lld..%lld of %lld",
                            (long long)row0, (long long)(row0 + n), (long long)w->rows);
    {
        int64_t total = n * w->cols, blocks = (total + 255) / 256;
        k_ggml_to_f32<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(*w, row0, n, dst_d);
    }
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_ggml_embed(const sq_cuda_ggml_desc *w, const int32_t *ids_d,
                                        int64_t n_rows, float *out_d, long long *bad_d,
                                        cudaStream_t stream, sq_error *err) {
    sq_status st = check_desc(w, err);
    if (st != SQ_OK || n_rows <= 0) return st;
    if (n_rows > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda ggml embed: %lld rows", (long long)n_rows);
    k_ggml_embed<<<(unsigned)n_rows, 256, 0, stream>>>(*w, ids_d, out_d, bad_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
