/* linear.cuh: the CUDA side of sq_backend_linear, callable from C.  Owns the weight descriptor
 * the kernels read, the few-row GEMV (dense F32 / BF16 and bitsandbytes-packed NF4 / FP4, 1..16
 * rows of x, each weight byte read once with 16-byte loads), the conversion of a band of weight
 * rows to float32 for the many-row path (the caller then runs cuBLAS SGEMM on it), and the bias
 * epilogue of that path.
 * Never: synchronizes, allocates, prints or exits; launchers only enqueue on `stream` and return
 * SQ_ERR_CUDA when a launch fails, SQ_ERR_INVALID for shapes they do not take. */
#ifndef SHARDQ_KERNELS_LINEAR_CUH
#define SHARDQ_KERNELS_LINEAR_CUH

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { SQ_CUDA_W_F32 = 0, SQ_CUDA_W_BF16 = 1, SQ_CUDA_W_Q4 = 2 };   /* = sq_wstore */
enum { SQ_CUDA_GEMV_MAX_ROWS = 16 };

/* A weight [rows, cols] (PyTorch [out, in]) on the device.  Q4: data_d is bnb's packed bytes
 * (row-major, element 2j in the high nibble of byte j), absmax_d one float32 per block of
 * 2^log2_block elements (flat index), code the 16 code values.  Any cols: with cols % 32 == 0
 * (and x 16-byte aligned) the GEMV reads 16-byte chunks, otherwise elements one by one from
 * their flat index (rows may start mid-byte; blocks cross rows). */
typedef struct sq_cuda_wdesc {
    int store;
    int log2_block;
    int64_t rows, cols;
    const void *data_d;
    const float *absmax_d;
    float code[16];
} sq_cuda_wdesc;

/* out_d (n_rows, w.rows) = x_d (n_rows, w.cols) · wᵀ (+ bias_d, float32 (w.rows) or NULL),
 * 1 <= n_rows <= SQ_CUDA_GEMV_MAX_ROWS.  One warp per output element column; every weight byte
 * is read once for all rows; per output the reduction order is fixed (lane-strided fused
 * multiply-adds, then a butterfly), so a row's result does not depend on n_rows. */
sq_status sq_cuda_gemv(const sq_cuda_wdesc *w, const float *x_d, int64_t n_rows,
                       const float *bias_d, float *out_d, cudaStream_t stream, sq_error *err);

/* Writes rows [row0, row0 + n) of w as float32 into dst_d ((n, w.cols), row-major): the 4-bit
 * values are code[q] * absmax exactly as the GEMV and bnb compute them. */
sq_status sq_cuda_weight_to_f32(const sq_cuda_wdesc *w, int64_t row0, int64_t n, float *dst_d,
                                cudaStream_t stream, sq_error *err);

/* out_d (n_rows, n_cols) += bias_d (n_cols) per row. */
sq_status sq_cuda_add_bias(float *out_d, const float *bias_d, int64_t n_rows, int64_t n_cols,
                           cudaStream_t stream, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
