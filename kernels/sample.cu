/* sample.cu: device sampling (kernels/sample.cuh).  The per-row arithmetic is backend_math.cuh's
 * (the weights and the sequential walk), so a draw picks what the CPU backend picks for the same
 * logits and key, up to the last-ulp differences of CUDA's exp() (documented in
 * backend_math.cuh).  Never synchronizes, allocates, prints. */
#include <cub/device/device_segmented_radix_sort.cuh>

#include "backend_math.cuh"
#include "cuda_check.cuh"
#include "sample.cuh"
#include "sample_size.cuh"

namespace {
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
k_argmax(const float *logits, int64_t vocab, int32_t *ids) {
    __shared__ float bv[kThreads];
    __shared__ int64_t bi[kThreads];
    const float *x = logits + (int64_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int64_t idx = -1;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads)
        if (idx < 0 || x[i] > best) { best = x[i]; idx = i; }   /* ascending i: lowest on ties */
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float v2 = bv[threadIdx.x + s];
            int64_t i2 = bi[threadIdx.x + s];
            if (i2 >= 0 && (bi[threadIdx.x] < 0 || v2 > bv[threadIdx.x] ||
                            (v2 == bv[threadIdx.x] && i2 < bi[threadIdx.x]))) {
                bv[threadIdx.x] = v2;
                bi[threadIdx.x] = i2;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = (int32_t)bi[0];
}

__global__ void k_iota_rows(int32_t *idx, int64_t n_rows, int64_t vocab, int *offsets) {
    const int64_t n = n_rows * vocab;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        idx[i] = (int32_t)(i % vocab);
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t <= n_rows) offsets[t] = (int)(t * vocab);
}

__global__ void __launch_bounds__(kThreads)
k_draw(const float *keys, const int32_t *idx, int64_t vocab, float temperature, int32_t top_k,
       float top_p, uint64_t seed, const uint64_t *seq_ids, const uint64_t *steps, double *pr,
       int32_t *ids) {
    __shared__ int64_t n_s;
    const int64_t r = blockIdx.x;
    const float *kr = keys + r * vocab;
    double *p = pr + r * vocab;
    const double inv_t = 1.0 / (double)temperature;
    if (threadIdx.x == 0) n_s = sq_bm_sample_n_candidates(kr, vocab, temperature, top_k);
    __syncthreads();
    const int64_t n = n_s;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) p[i] = sq_bm_sample_weight(kr[i], kr[0], inv_t);
    __syncthreads();
    if (threadIdx.x == 0) {
        const double u = sq_bm_uniform(seed, seq_ids[r], steps[r]);
        ids[r] = idx[r * vocab + sq_bm_sample_walk_prefix(p, n, top_p, u)];   /* = sq_bm_sample_walk */
    }
}

/* Carves the scratch: keys_out, idx_in, idx_out (rows x vocab), pr, offsets, CUB's part. */
struct Carve {
    float *keys;
    int32_t *idx_in, *idx_out;
    double *pr;
    int *offsets;
    void *cub;
    size_t cub_bytes, total;
};
Carve carve(void *base, int64_t rows, int64_t vocab, size_t cub_bytes) {
    Carve c{};
    size_t off[6] = {0, 0, 0, 0, 0, 0};
    (void)sq_sample_carve(rows, vocab, off);   /* callers checked rows x vocab */
    char *b = (char *)base;
    c.pr = (double *)(b + off[0]);
    c.keys = (float *)(b + off[1]);
    c.idx_in = (int32_t *)(b + off[2]);
    c.idx_out = (int32_t *)(b + off[3]);
    c.offsets = (int *)(b + off[4]);
    c.cub = b + off[5];
    c.cub_bytes = cub_bytes;
    c.total = off[5] + cub_bytes;
    return c;
}

cudaError_t cub_bytes_for(int64_t rows, int64_t vocab, size_t *bytes) {
    *bytes = 0;
    return cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, *bytes, (const float *)nullptr, (float *)nullptr, (const int32_t *)nullptr,
        (int32_t *)nullptr, (int)(rows * vocab), (int)rows, (const int *)nullptr,
        (const int *)nullptr, 0, (int)sizeof(float) * 8, (cudaStream_t)0);
}
}  // namespace

extern "C" sq_status sq_cuda_argmax(const float *logits_d, int64_t n_rows, int64_t vocab,
                                    int32_t *ids_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (n_rows > 0x7fffffff || vocab <= 0 || vocab > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda argmax: %lld rows of %lld",
                            (long long)n_rows, (long long)vocab);
    k_argmax<<<(unsigned)n_rows, kThreads, 0, stream>>>(logits_d, vocab, ids_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_sample_scratch_bytes(int64_t max_rows, int64_t max_vocab,
                                                  size_t *bytes, sq_error *err) {
    sq_status st = SQ_OK;
    *bytes = 0;
    if (max_rows <= 0 || max_vocab <= 0 || max_rows * max_vocab > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "cuda sample: %lld rows x vocab %lld (at most 2^31 - 1 logits per call)",
                            (long long)max_rows, (long long)max_vocab);
    size_t cb = 0;
    SQ_CUDA_CHECK(cub_bytes_for(max_rows, max_vocab, &cb));
    *bytes = carve(nullptr, max_rows, max_vocab, cb).total;
    return SQ_OK;
fail:
    return st;
}

extern "C" sq_status sq_cuda_sample(const float *logits_d, int64_t n_rows, int64_t vocab,
                                    float temperature, int32_t top_k, float top_p, uint64_t seed,
                                    const uint64_t *seq_ids_d, const uint64_t *steps_d,
                                    void *scratch_d, size_t scratch_bytes, int32_t *ids_d,
                                    cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (!(temperature > 0.0f) || top_k == 1) return sq_cuda_argmax(logits_d, n_rows, vocab, ids_d, stream, err);
    size_t cb = 0;
    if (n_rows * vocab > 0x7fffffff)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda sample: %lld rows x vocab %lld",
                            (long long)n_rows, (long long)vocab);
    SQ_CUDA_CHECK(cub_bytes_for(n_rows, vocab, &cb));
    {
        Carve c = carve(scratch_d, n_rows, vocab, cb);
        if (!scratch_d || c.total > scratch_bytes)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "cuda sample: %zu bytes of scratch needed, %zu reserved", c.total,
                                scratch_bytes);
        const int64_t n = n_rows * vocab;
        int64_t grid = (n > n_rows + 1 ? n : n_rows + 1) / 256 + 1;
        if (grid > 65535) grid = 65535;
        if (grid * 256 <= n_rows) grid = n_rows / 256 + 1;
        k_iota_rows<<<(unsigned)grid, 256, 0, stream>>>(c.idx_in, n_rows, vocab, c.offsets);
        SQ_CUDA_CHECK(cudaGetLastError());
        size_t tb = c.cub_bytes;
        SQ_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            c.cub, tb, logits_d, c.keys, c.idx_in, c.idx_out, (int)n, (int)n_rows, c.offsets,
            c.offsets + 1, 0, (int)sizeof(float) * 8, stream));
        k_draw<<<(unsigned)n_rows, kThreads, 0, stream>>>(c.keys, c.idx_out, vocab, temperature,
                                                         top_k, top_p, seed, seq_ids_d, steps_d,
                                                         c.pr, ids_d);
        SQ_CUDA_CHECK(cudaGetLastError());
    }
    return SQ_OK;
fail:
    return st;
}
