/* embed.cu: row gather with device-side id check (kernels/embed.cuh).
 * Never synchronizes, allocates, prints. */
#include "cuda_check.cuh"
#include "embed.cuh"
#include "quant_math.cuh"

namespace {
__global__ void k_embed(const void *table, int bf16, int64_t vocab, int64_t dim,
                        const int32_t *ids, float *out, long long *bad) {
    const int64_t r = blockIdx.x;
    const int32_t id = ids[r];
    const bool ok = id >= 0 && id < vocab;
    if (!ok && threadIdx.x == 0 && atomicCAS((unsigned long long *)&bad[0], ~0ull,
                                             (unsigned long long)r) == ~0ull)
        bad[1] = id;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = 0.0f;
        if (ok) v = bf16 ? sq_qm_bf16_to_f32(((const uint16_t *)table)[(int64_t)id * dim + i])
                         : ((const float *)table)[(int64_t)id * dim + i];
        out[r * dim + i] = v;
    }
}
}  // namespace

extern "C" sq_status sq_cuda_embed(const void *table_d, int bf16, int64_t vocab, int64_t dim,
                                   const int32_t *ids_d, int64_t n_rows, float *out_d,
                                   long long *bad_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (n_rows > 0x7fffffff || dim <= 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda embed: %lld rows of %lld",
                            (long long)n_rows, (long long)dim);
    k_embed<<<(unsigned)n_rows, 256, 0, stream>>>(table_d, bf16, vocab, dim, ids_d, out_d, bad_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
