/* CUDA backend, weights already in the block-scaled integer form (int8 weights, qblock.c): the
 * host arrays copied to the device as cuda_ggml.c lays a GGUF weight out there, so the same
 * kernels (kernels/ggml_linear.cu) compute on them.  cuda.c calls this from its weight_qblock op.
 * Must never print, keep a dequantized copy, or synchronize outside the upload. */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../../kernels/cuda_check.cuh"

sq_status sq_cuda_weight_qblock_upload(sq_weight *w, const uint8_t *codes, const void *scales,
                                       const void *biases, void *stream_, sq_error *err) {
    cudaStream_t stream = stream_;
    sq_status st = SQ_OK;
    const uint64_t rows = (uint64_t)w->rows, nsub = (uint64_t)(w->cols / w->qf.block_elems);
    const size_t code_bytes = (size_t)(rows * (uint64_t)w->code_row_bytes);
    const size_t param_bytes = (size_t)(rows * nsub * (uint64_t)(w->qf.scale_bits / 8));
    SQ_CUDA_CHECK(cudaMalloc(&w->data_d, code_bytes));
    SQ_CUDA_CHECK(cudaMalloc(&w->absmax_d, param_bytes));
    if (w->qf.has_bias) SQ_CUDA_CHECK(cudaMalloc(&w->bias_d, param_bytes));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->data_d, codes, code_bytes, cudaMemcpyHostToDevice, stream));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->absmax_d, scales, param_bytes, cudaMemcpyHostToDevice, stream));
    if (w->qf.has_bias)
        SQ_CUDA_CHECK(cudaMemcpyAsync(w->bias_d, biases, param_bytes, cudaMemcpyHostToDevice, stream));
    /* the host arrays belong to the caller and may be freed as soon as this returns */
    SQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    w->n_bytes = code_bytes + param_bytes * (w->qf.has_bias ? 2 : 1);
    return SQ_OK;
fail:
    if (err && !err->tensor[0]) snprintf(err->tensor, sizeof err->tensor, "%s", w->name);
    cudaFree(w->data_d);
    cudaFree(w->absmax_d);
    cudaFree(w->bias_d);
    w->data_d = w->absmax_d = w->bias_d = NULL;
    return st;
}
