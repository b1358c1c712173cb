/* linear.cu: few-row GEMV for dense and 4-bit weights, weight-to-float32 conversion for the
 * cuBLAS path, bias epilogue (kernels/linear.cuh).  Per-element math: kernels/backend_math.cuh
 * (a 4-bit element is code[q] * absmax, one float32 rounding, then a fused multiply-add with x).
 * Layout of the GEMV: a CTA of 4 warps computes 4 output features; in a warp, lane l reads the
 * 16-byte chunks l, l + 32, l + 64, … of the weight row (coalesced 512-byte warp reads), U
 * chunks loaded before the first is used so that several loads are in flight, and keeps one
 * float32 accumulator per row of x; a butterfly of shuffles sums the lanes.
 * Never: synchronizes, allocates device memory, prints, exits. */
#include "backend_math.cuh"
#include "quant_math.cuh"
#include "cuda_check.cuh"
#include "linear.cuh"

namespace {

constexpr int kWarps = 4;    /* output features per CTA */
constexpr int kUnroll = 4;   /* 16-byte chunks in flight per lane */

/* 256 byte values -> (code[hi nibble], code[lo nibble]): one shared-memory load per byte. */
struct PairLut {
    float2 v[256];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

/* acc[r] += w[e] * x[r][k0 + e] for the 32 elements of one 4-bit chunk. */
template <int R>
__device__ __forceinline__ void q4_chunk(const uint4 c, float am, const float2 *lut,
                                         const float *__restrict__ x, int64_t K, int64_t k0,
                                         float (&acc)[R]) {
    const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int wi = 0; wi < 4; wi++) {
        float w[8];
#pragma unroll
        for (int b = 0; b < 4; b++) {
            float2 p = lut[(words[wi] >> (8 * b)) & 0xffu];   /* (code[hi], code[lo]) */
            w[2 * b] = p.x * am;        /* element 2j: high nibble */
            w[2 * b + 1] = p.y * am;
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float4 *xp = reinterpret_cast<const float4 *>(x + (int64_t)r * K + k0 + 8 * wi);
            float4 a = __ldg(xp), b = __ldg(xp + 1);
            float s = acc[r];
            s = fmaf(w[0], a.x, s); s = fmaf(w[1], a.y, s); s = fmaf(w[2], a.z, s); s = fmaf(w[3], a.w, s);
            s = fmaf(w[4], b.x, s); s = fmaf(w[5], b.y, s); s = fmaf(w[6], b.z, s); s = fmaf(w[7], b.w, s);
            acc[r] = s;
        }
    }
}

template <int R>
__global__ void __launch_bounds__(kWarps * 32)
k_gemv_q4(const sq_cuda_wdesc w, const float *__restrict__ x, const float *__restrict__ bias,
          float *__restrict__ out) {
    __shared__ PairLut lut;
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        lut.v[i] = make_float2(w.code[i >> 4], w.code[i & 15]);
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (o >= w.rows) return;
    const int64_t K = w.cols, n_chunks = K / 32;
    const uint4 *row = reinterpret_cast<const uint4 *>(w.data_d) + o * n_chunks;
    const float *am_p = w.absmax_d;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    int64_t c = lane;
    for (; c + 32 * (kUnroll - 1) < n_chunks; c += 32 * kUnroll) {
        uint4 v[kUnroll];
        float am[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            v[u] = __ldcs(row + c + 32 * u);   /* streamed: read once, keep x in cache */
            am[u] = __ldg(am_p + (((o * K) + (c + 32 * u) * 32) >> w.log2_block));
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) q4_chunk<R>(v[u], am[u], lut.v, x, K, (c + 32 * u) * 32, acc);
    }
    for (; c < n_chunks; c += 32) {
        uint4 v = __ldcs(row + c);
        float am = __ldg(am_p + (((o * K) + c * 32) >> w.log2_block));
        q4_chunk<R>(v, am, lut.v, x, K, c * 32, acc);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(int64_t)r * w.rows + o] = bias ? s + bias[o] : s;
    }
}

/* 4-bit rows of any length (cols % 32 != 0: rows start anywhere in bnb's flat layout, even
 * mid-byte): lane l takes elements l, l + 32, …, each decoded from its flat index. */
template <int R>
__global__ void __launch_bounds__(kWarps * 32)
k_gemv_q4_any(const sq_cuda_wdesc w, const float *__restrict__ x, const float *__restrict__ bias,
              float *__restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (o >= w.rows) return;
    const int64_t K = w.cols;
    const uint8_t *packed = reinterpret_cast<const uint8_t *>(w.data_d);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
        const int64_t f = o * K + k;
        const unsigned b = __ldg(packed + (f >> 1));
        const float wk = sq_bm_q4_weight(w.code, (f & 1) ? (b & 15u) : (b >> 4), __ldg(w.absmax_d + (f >> w.log2_block)));
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = fmaf(wk, __ldg(x + (int64_t)r * K + k), acc[r]);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(int64_t)r * w.rows + o] = bias ? s + bias[o] : s;
    }
}

/* Dense rows: 16-byte chunks of 4 float32 or 8 bfloat16 when the row is 16-byte aligned and a
 * whole number of chunks; element-strided otherwise. */
template <int R, bool BF16>
__global__ void __launch_bounds__(kWarps * 32)
k_gemv_dense(const sq_cuda_wdesc w, const float *__restrict__ x, const float *__restrict__ bias,
             float *__restrict__ out, int vec) {
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (o >= w.rows) return;
    const int64_t K = w.cols;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    constexpr int E = BF16 ? 8 : 4;   /* elements per 16-byte chunk */
    if (vec) {
        const int64_t n_chunks = K / E;
        const uint4 *row = reinterpret_cast<const uint4 *>(
            (const char *)w.data_d + o * K * (BF16 ? 2 : 4));
        for (int64_t c0 = lane; c0 < n_chunks; c0 += 32 * kUnroll) {
            uint4 v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++)
                if (c0 + 32 * u < n_chunks) v[u] = __ldcs(row + c0 + 32 * u);
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int64_t c = c0 + 32 * u;
                if (c >= n_chunks) break;
                float wv[E];
                if (BF16) {
                    const uint32_t ws[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                    for (int i = 0; i < 4; i++) { wv[2 * i] = bf16_lo(ws[i]); wv[2 * i + 1] = bf16_hi(ws[i]); }
                } else {
                    wv[0] = __uint_as_float(v[u].x); wv[1] = __uint_as_float(v[u].y);
                    wv[2] = __uint_as_float(v[u].z); wv[3] = __uint_as_float(v[u].w);
                }
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float *xp = x + (int64_t)r * K + c * E;
                    float s = acc[r];
#pragma unroll
                    for (int e = 0; e < E; e++) s = fmaf(wv[e], __ldg(xp + e), s);
                    acc[r] = s;
                }
            }
        }
    } else {
        for (int64_t k = lane; k < K; k += 32) {
            float wk = BF16 ? sq_qm_bf16_to_f32(reinterpret_cast<const uint16_t *>(w.data_d)[o * K + k])
                            : reinterpret_cast<const float *>(w.data_d)[o * K + k];
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = fmaf(wk, __ldg(x + (int64_t)r * K + k), acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(int64_t)r * w.rows + o] = bias ? s + bias[o] : s;
    }
}

template <int R>
cudaError_t launch_gemv(const sq_cuda_wdesc &w, const float *x, const float *bias, float *out,
                        cudaStream_t stream) {
    const unsigned grid = (unsigned)((w.rows + kWarps - 1) / kWarps);
    if (w.store == SQ_CUDA_W_Q4 && (w.cols % 32 || (uintptr_t)x % 16)) {
        k_gemv_q4_any<R><<<grid, kWarps * 32, 0, stream>>>(w, x, bias, out);
    } else if (w.store == SQ_CUDA_W_Q4) {
        k_gemv_q4<R><<<grid, kWarps * 32, 0, stream>>>(w, x, bias, out);
    } else {
        const int esz = w.store == SQ_CUDA_W_BF16 ? 2 : 4;
        const int vec = ((uintptr_t)w.data_d % 16 == 0) && ((w.cols * esz) % 16 == 0) &&
                        ((uintptr_t)x % 16 == 0);
        if (w.store == SQ_CUDA_W_BF16)
            k_gemv_dense<R, true><<<grid, kWarps * 32, 0, stream>>>(w, x, bias, out, vec);
        else
            k_gemv_dense<R, false><<<grid, kWarps * 32, 0, stream>>>(w, x, bias, out, vec);
    }
    return cudaGetLastError();
}

/* One thread per 32 elements (4-bit with cols % 32 == 0: one 16-byte chunk; otherwise
 * element-wise). */
__global__ void k_weight_to_f32(const sq_cuda_wdesc w, int64_t row0, int64_t n_elems,
                                float *__restrict__ dst) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t e0 = g * 32;
    if (e0 >= n_elems) return;
    const int64_t base = row0 * w.cols;   /* flat index of the band's first element */
    if (w.store == SQ_CUDA_W_Q4 && w.cols % 32 == 0) {
        const uint4 c = reinterpret_cast<const uint4 *>(w.data_d)[(base + e0) / 32];
        const float am = w.absmax_d[(base + e0) >> w.log2_block];
        const uint32_t words[4] = {c.x, c.y, c.z, c.w};
        float v[32];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const unsigned b = (words[i / 4] >> (8 * (i % 4))) & 0xffu;
            v[2 * i] = sq_bm_q4_weight(w.code, b >> 4, am);
            v[2 * i + 1] = sq_bm_q4_weight(w.code, b & 15u, am);
        }
        float4 *d = reinterpret_cast<float4 *>(dst + e0);
#pragma unroll
        for (int i = 0; i < 8; i++) d[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
        return;
    }
    const int64_t e1 = e0 + 32 < n_elems ? e0 + 32 : n_elems;
    if (w.store == SQ_CUDA_W_Q4) {   /* any row length: element by element from the flat index */
        const uint8_t *packed = reinterpret_cast<const uint8_t *>(w.data_d);
        for (int64_t e = e0; e < e1; e++) {
            const int64_t f = base + e;
            const unsigned b = packed[f >> 1];
            dst[e] = sq_bm_q4_weight(w.code, (f & 1) ? (b & 15u) : (b >> 4), w.absmax_d[f >> w.log2_block]);
        }
        return;
    }
    for (int64_t e = e0; e < e1; e++)
        dst[e] = w.store == SQ_CUDA_W_BF16
                     ? sq_qm_bf16_to_f32(reinterpret_cast<const uint16_t *>(w.data_d)[base + e])
                     : reinterpret_cast<const float *>(w.data_d)[base + e];
}

__global__ void k_add_bias(float *__restrict__ out, const float *__restrict__ bias, int64_t n_rows,
                           int64_t n_cols) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_rows * n_cols) out[i] += bias[i % n_cols];
}

}  // namespace

extern "C" sq_status sq_cuda_gemv(const sq_cuda_wdesc *w, const float *x_d, int64_t n_rows,
                                  const float *bias_d, float *out_d, cudaStream_t stream,
                                  sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows < 1 || n_rows > SQ_CUDA_GEMV_MAX_ROWS || w->rows <= 0 || w->cols <= 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda gemv: %lld rows x [%lld, %lld] (needs 1..%d rows)", (long long)n_rows,
                            (long long)w->rows, (long long)w->cols, SQ_CUDA_GEMV_MAX_ROWS);
    if (w->rows / kWarps >= 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda gemv: %lld outputs", (long long)w->rows);
    cudaError_t e = cudaSuccess;
    switch (n_rows) {
#define SQ_GEMV_CASE(R) case R: e = launch_gemv<R>(*w, x_d, bias_d, out_d, stream); break;
    SQ_GEMV_CASE(1) SQ_GEMV_CASE(2) SQ_GEMV_CASE(3) SQ_GEMV_CASE(4) SQ_GEMV_CASE(5)
    SQ_GEMV_CASE(6) SQ_GEMV_CASE(7) SQ_GEMV_CASE(8) SQ_GEMV_CASE(9) SQ_GEMV_CASE(10)
    SQ_GEMV_CASE(11) SQ_GEMV_CASE(12) SQ_GEMV_CASE(13) SQ_GEMV_CASE(14) SQ_GEMV_CASE(15)
    SQ_GEMV_CASE(16)
#undef SQ_GEMV_CASE
    default: break;
    }
    SQ_CUDA_CHECK(e);
    return SQ_OK;
fail:
    return st;
}

/* The 4-bit band, coalesced: thread g converts elements [4g, 4g + 4) of the band (two packed
 * bytes, one absmax: blocks are >= 32 elements and 4-aligned) and stores one float4, so a warp
 * reads 64 contiguous bytes and writes 512 contiguous bytes per instruction (k_weight_to_f32's
 * 32-element-per-thread layout writes 128 bytes apart).  Needs (row0 * cols) % 4 == 0 and
 * n_elems % 4 == 0, i.e. cols % 4 == 0.  The same values: sq_bm_q4_weight per element. */
static __global__ void k_q4_band_to_f32(const sq_cuda_wdesc w, int64_t row0, int64_t n_quads,
                                 float4 *__restrict__ dst) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_quads) return;
    const int64_t f = row0 * w.cols + 4 * g;   /* flat index of the first element, even */
    const uint8_t *packed = reinterpret_cast<const uint8_t *>(w.data_d);
    const unsigned b0 = packed[f >> 1], b1 = packed[(f >> 1) + 1];
    const float am = w.absmax_d[f >> w.log2_block];
    dst[g] = make_float4(sq_bm_q4_weight(w.code, b0 >> 4, am), sq_bm_q4_weight(w.code, b0 & 15u, am),
                         sq_bm_q4_weight(w.code, b1 >> 4, am), sq_bm_q4_weight(w.code, b1 & 15u, am));
}

static sq_status q4_band_to_f32(const sq_cuda_wdesc *w, int64_t row0, int64_t n, float *dst_d,
                                cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    const int64_t n_quads = n * w->cols / 4, grid = (n_quads + 255) / 256;
    if (grid > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda weight_to_f32: band too large");
    k_q4_band_to_f32<<<(unsigned)grid, 256, 0, stream>>>(*w, row0, n_quads, reinterpret_cast<float4 *>(dst_d));
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_weight_to_f32(const sq_cuda_wdesc *w, int64_t row0, int64_t n,
                                           float *dst_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (row0 < 0 || n <= 0 || row0 + n > w->rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda weight_to_f32: rows [%lld, %lld) of %lld", (long long)row0,
                            (long long)(row0 + n), (long long)w->rows);
    if (w->store == SQ_CUDA_W_Q4 && w->cols % 4 == 0 && w->log2_block >= 2 &&
        ((uintptr_t)dst_d & 15u) == 0)
        return q4_band_to_f32(w, row0, n, dst_d, stream, err);
    const int64_t n_elems = n * w->cols, n_threads = (n_elems + 31) / 32;
    const int64_t grid = (n_threads + 255) / 256;
    if (grid > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda weight_to_f32: band too large");
    k_weight_to_f32<<<(unsigned)grid, 256, 0, stream>>>(*w, row0, n_elems, dst_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_add_bias(float *out_d, const float *bias_d, int64_t n_rows,
                                      int64_t n_cols, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    const int64_t n = n_rows * n_cols, grid = (n + 255) / 256;
    if (n <= 0) return SQ_OK;
    if (grid > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda add_bias: %lld elements", (long long)n);
    k_add_bias<<<(unsigned)grid, 256, 0, stream>>>(out_d, bias_d, n_rows, n_cols);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
