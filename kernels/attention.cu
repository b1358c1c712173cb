/* attention.cu: KV-cache store and attention (kernels/attention.cuh).
 * One CTA of kWarps warps per (row, head).  Warp w takes a contiguous share of the positions
 * [0, pos]; in it lane l holds elements l, l + 32, … of q and of the running output; the score
 * of a position is a lane-strided fused dot product summed by a butterfly; the online softmax
 * step is sq_bm_softmax_step (backend_math.cuh, the CPU's expressions).  The warps' partial
 * (max, sum, output) are merged in warp order at the end, so the result is deterministic.
 * Never synchronizes, allocates, prints. */
#include <math.h>

#include "attention.cuh"
#include "backend_math.cuh"
#include "cuda_check.cuh"

namespace {
constexpr int kWarps = 4;

__global__ void k_kv_store(const float *k, const float *v, const int32_t *slot, const int32_t *pos,
                           float *ck, float *cv, int64_t max_seq, int64_t row_elems) {
    const int64_t r = blockIdx.x;
    const int64_t dst = ((int64_t)slot[r] * max_seq + pos[r]) * row_elems;
    for (int64_t i = threadIdx.x; i < row_elems; i += blockDim.x) {
        ck[dst + i] = k[r * row_elems + i];
        cv[dst + i] = v[r * row_elems + i];
    }
}

template <int E>   /* elements per lane: head_dim <= 32 * E */
__global__ void __launch_bounds__(kWarps * 32)
k_attention(const float *q, const float *ck, const float *cv, const int32_t *slot,
            const int32_t *pos, int64_t max_seq, int n_heads, int n_kv_heads, int hd, float scale,
            float *out) {
    extern __shared__ float sh[];   /* (kWarps, hd) outputs, then (kWarps) m, (kWarps) l */
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int64_t r = blockIdx.x / n_heads;
    const int h = (int)(blockIdx.x % n_heads);
    const int kvh = h / (n_heads / n_kv_heads);
    const int64_t p = pos[r];
    const int64_t pos_stride = (int64_t)n_kv_heads * hd;
    const float *kb = ck + (int64_t)slot[r] * max_seq * pos_stride + (int64_t)kvh * hd;
    const float *vb = cv + (int64_t)slot[r] * max_seq * pos_stride + (int64_t)kvh * hd;
    const float *qr = q + (r * n_heads + h) * (int64_t)hd;
    float qv[E], acc[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        const int d = lane + 32 * e;
        qv[e] = d < hd ? qr[d] : 0.0f;
        acc[e] = 0.0f;
    }
    /* positions of this warp: [j0, j1) */
    const int64_t n_pos = p + 1, share = (n_pos + kWarps - 1) / kWarps;
    const int64_t j0 = wid * share < n_pos ? wid * share : n_pos;
    const int64_t j1 = j0 + share < n_pos ? j0 + share : n_pos;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = j0; j < j1; j++) {
        const float *kj = kb + j * pos_stride, *vj = vb + j * pos_stride;
        float part = 0.0f, vv[E];
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int d = lane + 32 * e;
            float kd = 0.0f;
            vv[e] = 0.0f;
            if (d < hd) { kd = kj[d]; vv[e] = vj[d]; }
            part = fmaf(qv[e], kd, part);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        float e_j;
        const float corr = sq_bm_softmax_step(part * scale, &m, &l, &e_j);
#pragma unroll
        for (int e = 0; e < E; e++) acc[e] = acc[e] * corr + e_j * vv[e];
    }
    float *acc_s = sh, *m_s = sh + kWarps * hd, *l_s = m_s + kWarps;
#pragma unroll
    for (int e = 0; e < E; e++) {
        const int d = lane + 32 * e;
        if (d < hd) acc_s[wid * hd + d] = acc[e];
    }
    if (lane == 0) { m_s[wid] = m; l_s[wid] = l; }
    __syncthreads();
    float M = m_s[0];
    for (int w = 1; w < kWarps; w++) M = fmaxf(M, m_s[w]);
    float L = 0.0f;
    for (int w = 0; w < kWarps; w++)
        if (sq_bm_attn_merge_keeps(m_s[w], l_s[w])) L += l_s[w] * expf(m_s[w] - M);
    float *o = out + (r * n_heads + h) * (int64_t)hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < kWarps; w++)   /* a NaN partial is kept: NaN propagates (the CPU's) */
            if (sq_bm_attn_merge_keeps(m_s[w], l_s[w])) a += acc_s[w * hd + d] * expf(m_s[w] - M);
        o[d] = a / L;
    }
}
}  // namespace

extern "C" sq_status sq_cuda_kv_store(const float *k_d, const float *v_d, int64_t n_rows,
                                      const int32_t *row_slot_d, const int32_t *row_pos_d,
                                      float *cache_k_d, float *cache_v_d, int64_t max_seq,
                                      int n_kv_heads, int head_dim, cudaStream_t stream,
                                      sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (n_rows > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda kv_store: %lld rows", (long long)n_rows);
    k_kv_store<<<(unsigned)n_rows, 128, 0, stream>>>(k_d, v_d, row_slot_d, row_pos_d, cache_k_d, cache_v_d,
                                                     max_seq, (int64_t)n_kv_heads * head_dim);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_attention(const float *q_d, const float *cache_k_d,
                                       const float *cache_v_d, int64_t n_rows,
                                       const int32_t *row_slot_d, const int32_t *row_pos_d,
                                       int64_t max_seq, int n_heads, int n_kv_heads, int head_dim,
                                       float scale, float *out_d, cudaStream_t stream,
                                       sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (head_dim <= 0 || head_dim > 1024 || n_kv_heads <= 0 || n_heads % n_kv_heads ||
        n_rows * n_heads > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda attention: head_dim %d (max 1024), %d heads / %d kv heads, %lld rows",
                            head_dim, n_heads, n_kv_heads, (long long)n_rows);
    const unsigned grid = (unsigned)(n_rows * n_heads);
    const size_t smem = (size_t)(kWarps * head_dim + 2 * kWarps) * sizeof(float);
    const int E = (head_dim + 31) / 32;
#define SQ_ATTN(EE)                                                                            \
    k_attention<EE><<<grid, kWarps * 32, smem, stream>>>(q_d, cache_k_d, cache_v_d, row_slot_d, \
                                                         row_pos_d, max_seq, n_heads, n_kv_heads, \
                                                         head_dim, scale, out_d)
    if (E <= 1) SQ_ATTN(1);
    else if (E <= 2) SQ_ATTN(2);
    else if (E <= 4) SQ_ATTN(4);
    else if (E <= 8) SQ_ATTN(8);
    else if (E <= 16) SQ_ATTN(16);
    else SQ_ATTN(32);
#undef SQ_ATTN
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
