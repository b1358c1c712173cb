/* quant.cu: the CUDA blockwise 4-bit quantizer and the pinned staging ring (kernels/quant.cuh).
 * Owns: kernel k_quant4 and its launcher, sq_cuda_stager.  The per-element math is
 * kernels/quant_math.cuh, the same code the CPU runs, so the GPU bytes equal the CPU's (and hence
 * bitsandbytes' CPU path): IEEE 1.0f/absmax and x/am (nvcc's default prec-div, no fast-math,
 * no FTZ), --fmad=false, compare-only bucketize.  bnb's own CUDA kernels differ (fast-math
 * reciprocal, compiled thresholds, zero blocks -> code 0); see quant_math.cuh and docs/QUANT.md.
 * Never: synchronizes in a launcher, allocates device memory, prints, exits. */
#include <stdlib.h>
#include <string.h>

#include "cuda_check.cuh"
#include "quant.cuh"
#include "quant_math.cuh"

namespace {

constexpr int kThreads = 256;  /* threads per CUDA block */

template <int SRC>
__device__ __forceinline__ float load_src(const void *p, uint64_t i) {
    if (SRC == SQ_DTYPE_BF16) return sq_qm_bf16_to_f32(((const uint16_t *)p)[i]);
    if (SRC == SQ_DTYPE_F16) return sq_qm_f16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* One group of G threads (G = min(B/2, 256)) per absmax block; kThreads / G blocks per CUDA
 * block.  Pass 1: max|x| (NaN wins, as torch) by a shared-memory tree; pass 2: each thread
 * writes whole bytes (two elements). */
template <int SRC>
__global__ void k_quant4(const void *__restrict__ src, uint64_t n, int B, int G, int is_fp4,
                         uint8_t *__restrict__ packed, float *__restrict__ absmax,
                         uint64_t n_blocks) {
    __shared__ float red[kThreads];
    const int t = threadIdx.x, grp = t / G, lane = t % G;
    const uint64_t qb = (uint64_t)blockIdx.x * (uint64_t)(kThreads / G) + (uint64_t)grp;
    const bool active = qb < n_blocks;
    const uint64_t first = qb * (uint64_t)B;
    const int64_t len = active ? (int64_t)(n - first < (uint64_t)B ? n - first : (uint64_t)B) : 0;

    float am = 0.0f;
    for (int64_t i = lane; i < len; i += G) am = sq_qm_absmax_step(am, load_src<SRC>(src, first + (uint64_t)i));
    red[t] = am;
    __syncthreads();
    for (int s = G / 2; s > 0; s >>= 1) {
        if (lane < s) red[t] = sq_qm_absmax_step(red[t], red[t + s]);
        __syncthreads();
    }
    if (!active) return;
    am = red[grp * G];
    const bool tail = len < B;
    float r = 0.0f;
    if (tail) am = sq_qm_absmax_floor(am);  /* bnb stores the clamped value for the tail */
    else r = sq_qm_full_recip(am);
    if (lane == 0) absmax[qb] = am;
    const int64_t n_pairs = (len + 1) / 2;
    for (int64_t p = lane; p < n_pairs; p += G) {
        const uint64_t i0 = first + 2u * (uint64_t)p;
        float x0 = load_src<SRC>(src, i0);
        float s0 = tail ? sq_qm_scale_tail(x0, am) : sq_qm_scale_full(x0, r);
        float s1 = 0.0f;  /* bnb pads an odd count with a scaled 0 */
        if (2 * p + 1 < len) {
            float x1 = load_src<SRC>(src, i0 + 1u);
            s1 = tail ? sq_qm_scale_tail(x1, am) : sq_qm_scale_full(x1, r);
        }
        packed[i0 / 2u] = sq_qm_pack(sq_qm_encode(is_fp4, s0), sq_qm_encode(is_fp4, s1));
    }
}

}  // namespace

extern "C" sq_status sq_cuda_quant_4bit(sq_dtype src_dtype, const void *src_d, uint64_t n,
                                        int64_t blocksize, int is_fp4, uint8_t *packed_d,
                                        float *absmax_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda quantize: blocksize %lld is not a power of two in 32..4096",
                            (long long)blocksize);
    if (n == 0 || !src_d || !packed_d || !absmax_d)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda quantize: empty input or output");
    const int B = (int)blocksize, G = B / 2 < kThreads ? B / 2 : kThreads;
    const uint64_t n_blocks = sq_ceil_div_u64(n, (uint64_t)B);
    const uint64_t per_cta = (uint64_t)(kThreads / G);
    const uint64_t grid = sq_ceil_div_u64(n_blocks, per_cta);
    if (grid > 0x7fffffffu)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda quantize: %llu elements need more than 2^31 CUDA blocks",
                            (unsigned long long)n);
    is_fp4 = is_fp4 ? 1 : 0;
    switch (src_dtype) {
    case SQ_DTYPE_F32:
        k_quant4<SQ_DTYPE_F32><<<(unsigned)grid, kThreads, 0, stream>>>(src_d, n, B, G, is_fp4, packed_d, absmax_d, n_blocks);
        break;
    case SQ_DTYPE_F16:
        k_quant4<SQ_DTYPE_F16><<<(unsigned)grid, kThreads, 0, stream>>>(src_d, n, B, G, is_fp4, packed_d, absmax_d, n_blocks);
        break;
    case SQ_DTYPE_BF16:
        k_quant4<SQ_DTYPE_BF16><<<(unsigned)grid, kThreads, 0, stream>>>(src_d, n, B, G, is_fp4, packed_d, absmax_d, n_blocks);
        break;
    default:
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "cuda quantize: source dtype %d is not F32, F16 or BF16", (int)src_dtype);
    }
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

/* ---- pinned staging ring ---------------------------------------------------------------- */
struct sq_cuda_stager {
    size_t chunk_bytes;
    int n_buffers;
    void **buf_h;        /* (n_buffers) pinned */
    cudaEvent_t *done;   /* (n_buffers) recorded after the copy out of buffer k */
    int next;
};

extern "C" void sq_cuda_stager_destroy(sq_cuda_stager *s) {
    if (!s) return;
    for (int k = 0; k < s->n_buffers; k++) {
        if (s->done && s->done[k]) {
            cudaEventSynchronize(s->done[k]);
            cudaEventDestroy(s->done[k]);
        }
        if (s->buf_h && s->buf_h[k]) cudaFreeHost(s->buf_h[k]);
    }
    free(s->done);
    free(s->buf_h);
    free(s);
}

extern "C" sq_status sq_cuda_stager_create(size_t chunk_bytes, int n_buffers, sq_cuda_stager **out,
                                           sq_error *err) {
    sq_status st = SQ_OK;
    *out = NULL;
    if (chunk_bytes == 0 || n_buffers < 2 || n_buffers > 64)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda stager: need chunk_bytes > 0 and 2..64 buffers (got %zu, %d)",
                            chunk_bytes, n_buffers);
    sq_cuda_stager *s = (sq_cuda_stager *)calloc(1, sizeof *s);
    if (!s) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "cuda stager: out of memory");
    s->chunk_bytes = chunk_bytes;
    s->n_buffers = n_buffers;
    s->buf_h = (void **)calloc((size_t)n_buffers, sizeof *s->buf_h);
    s->done = (cudaEvent_t *)calloc((size_t)n_buffers, sizeof *s->done);
    if (!s->buf_h || !s->done) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "cuda stager: out of memory");
        goto fail;
    }
    for (int k = 0; k < n_buffers; k++) {
        SQ_CUDA_CHECK(cudaHostAlloc(&s->buf_h[k], chunk_bytes, cudaHostAllocDefault));
        SQ_CUDA_CHECK(cudaEventCreateWithFlags(&s->done[k], cudaEventDisableTiming));
    }
    *out = s;
    return SQ_OK;
fail:
    sq_cuda_stager_destroy(s);
    return st;
}

extern "C" sq_status sq_cuda_stage_copy(sq_cuda_stager *s, void *dst_d, const void *src,
                                        size_t n_bytes, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    for (size_t off = 0; off < n_bytes; off += s->chunk_bytes) {
        size_t m = n_bytes - off < s->chunk_bytes ? n_bytes - off : s->chunk_bytes;
        int k = s->next;
        s->next = (k + 1) % s->n_buffers;
        /* buffer k is free once its previous transfer finished (never-recorded events are done) */
        SQ_CUDA_CHECK(cudaEventSynchronize(s->done[k]));
        memcpy(s->buf_h[k], (const char *)src + off, m);
        SQ_CUDA_CHECK(cudaMemcpyAsync((char *)dst_d + off, s->buf_h[k], m, cudaMemcpyHostToDevice, stream));
        SQ_CUDA_CHECK(cudaEventRecord(s->done[k], stream));
    }
    return SQ_OK;
fail:
    return st;
}
