/* ggml_linear.cuh: the CUDA side of sq_backend_linear / sq_backend_embed on ggml (GGUF) weights,
 * callable from C.  The weight is in the block-scaled integer form of ggml_quant.h (codes 4- or
 * 8-bit, one float32 scale and optional bias per sub-block of 16 or 32); a weight value is
 * scale * code (+ bias) in two roundings (kernels/ggml_quant_math.cuh, --fmad=false), the same
 * bits as ggml's dequantization and as the CPU backend.
 * Owns: the few-row GEMV (1..SQ_CUDA_GEMV_MAX_ROWS rows; one warp per output, lane l takes the
 * 32-element groups l, l + 32, …, one float32 accumulator per row, then a butterfly), the
 * conversion of a band of rows to float32 (for the caller's cuBLAS path) and the embedding
 * gather with the device-side id check of embed.cuh.
 * Never: synchronizes, allocates, prints or exits; launchers only enqueue on `stream`. */
#ifndef SHARDQ_KERNELS_GGML_LINEAR_CUH
#define SHARDQ_KERNELS_GGML_LINEAR_CUH

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A ggml weight [rows, cols] on the device (cols % 32 == 0).  codes_d: rows x code_row_bytes;
 * scales_d, biases_d: rows x (cols / block_elems) float32, or IEEE halves when scale_bits is 16
 * (biases_d NULL without). */
typedef struct sq_cuda_ggml_desc {
    int code_bits, code_zero, block_elems, has_bias, scale_bits;
    int64_t rows, cols, code_row_bytes;
    const uint8_t *codes_d;
    const void *scales_d, *biases_d;
} sq_cuda_ggml_desc;

/* out_d (n_rows, w.rows) = x_d (n_rows, w.cols) · wᵀ (+ bias_d float32 (w.rows) or NULL),
 * 1 <= n_rows <= 16.  Per output the reduction order is fixed, so a row's result does not depend
 * on n_rows. */
sq_status sq_cuda_ggml_gemv(const sq_cuda_ggml_desc *w, const float *x_d, int64_t n_rows,
                            const float *bias_d, float *out_d, cudaStream_t stream, sq_error *err);
/* Rows [row0, row0 + n) of w as float32 into dst_d ((n, w.cols), row-major). */
sq_status sq_cuda_ggml_to_f32(const sq_cuda_ggml_desc *w, int64_t row0, int64_t n, float *dst_d,
                              cudaStream_t stream, sq_error *err);
/* out_d (n_rows, w.cols) = rows ids_d of w; a bad id: zeros and the first (row, id) in bad_d. */
sq_status sq_cuda_ggml_embed(const sq_cuda_ggml_desc *w, const int32_t *ids_d, int64_t n_rows,
                             float *out_d, long long *bad_d, cudaStream_t stream, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
