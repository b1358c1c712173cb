/* rope.cu: one CTA per row, one thread per (head, pair); cos / sin once per pair
 * (rope_math.cuh, float64 cos / sin of the float32 angle, as on the CPU).
 * Never synchronizes, allocates, prints. */
#include "cuda_check.cuh"
#include "rope.cuh"
#include "rope_math.cuh"

namespace {
__global__ void k_rope(float *q, float *k, int n_heads, int n_kv_heads, int head_dim,
                       const int32_t *pos, const float *inv_freq) {
    const int64_t r = blockIdx.x;
    const int half = head_dim / 2;
    const int p = pos[r];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float cs, sn;
        sq_rope_cos_sin(p, inv_freq[i], &cs, &sn);
        float *qr = q + r * (int64_t)n_heads * head_dim;
        for (int h = 0; h < n_heads; h++)
            sq_rope_rotate_pair(&qr[(int64_t)h * head_dim + i], &qr[(int64_t)h * head_dim + i + half], cs, sn);
        if (k) {
            float *kr = k + r * (int64_t)n_kv_heads * head_dim;
            for (int h = 0; h < n_kv_heads; h++)
                sq_rope_rotate_pair(&kr[(int64_t)h * head_dim + i], &kr[(int64_t)h * head_dim + i + half], cs, sn);
        }
    }
}
}  // namespace

extern "C" sq_status sq_cuda_rope(float *q_d, float *k_d, int64_t n_rows, int n_heads,
                                  int n_kv_heads, int head_dim, const int32_t *pos_d,
                                  const float *inv_freq_d, cudaStream_t stream, sq_error *err) {
    sq_status st = SQ_OK;
    if (n_rows <= 0) return SQ_OK;
    if (n_rows > 0x7fffffff || head_dim <= 0 || head_dim % 2 || n_heads <= 0 || n_kv_heads <= 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "cuda rope: %lld rows, head_dim %d",
                            (long long)n_rows, head_dim);
    const int threads = head_dim / 2 < 128 ? (head_dim / 2 + 31) / 32 * 32 : 128;
    k_rope<<<(unsigned)n_rows, threads, 0, stream>>>(q_d, k_d, n_heads, n_kv_heads, head_dim, pos_d,
                                                    inv_freq_d);
    SQ_CUDA_CHECK(cudaGetLastError());
    return SQ_OK;
fail:
    return st;
}
