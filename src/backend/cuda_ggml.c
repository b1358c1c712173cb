/* CUDA backend, ggml weights: the upload of a GGUF tensor into the block-scaled integer form
 * (converted on the host row by row with sq_ggml_to_qblock_row, then copied), and the bridges
 * from sq_weight to the kernels of kernels/ggml_linear.cu.  cuda.c calls these from its ops.
 * Must never keep a dequantized copy of a weight, print, or synchronize outside the upload. */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../../kernels/cuda_check.cuh"
#include "../../kernels/ggml_linear.cuh"

static sq_cuda_ggml_desc desc_of(const sq_weight *w) {
    sq_cuda_ggml_desc d;
    memset(&d, 0, sizeof d);
    d.code_bits = w->qf.code_bits;
    d.code_zero = w->qf.code_zero;
    d.block_elems = w->qf.block_elems;
    d.has_bias = w->qf.has_bias;
    d.scale_bits = w->qf.scale_bits;
    d.rows = w->rows;
    d.cols = w->cols;
    d.code_row_bytes = w->code_row_bytes;
    d.codes_d = w->data_d;
    d.scales_d = w->absmax_d;
    d.biases_d = w->bias_d;
    return d;
}

sq_status sq_cuda_weight_ggml_upload(sq_weight *w, sq_ggml_type type, const void *data,
                                     void *stream_, sq_error *err) {
    cudaStream_t stream = stream_;
    sq_status st = SQ_OK;
    uint64_t rb = 0;
    st = sq_ggml_row_bytes((int)type, w->cols, &rb, err);
    if (st != SQ_OK) return st;
    const uint64_t rows = (uint64_t)w->rows, nsub = (uint64_t)(w->cols / w->qf.block_elems);
    const size_t code_bytes = (size_t)(rows * (uint64_t)w->code_row_bytes);
    const uint64_t pb = nsub * (uint64_t)(w->qf.scale_bits / 8);   /* bytes of a row's scales */
    const size_t scale_bytes = (size_t)(rows * pb);
    uint8_t *codes = malloc(code_bytes);
    char *scales = malloc(scale_bytes), *biases = w->qf.has_bias ? malloc(scale_bytes) : NULL;
    if (!codes || !scales || (w->qf.has_bias && !biases)) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, w->name, "out of host memory converting a ggml weight");
        goto fail_quiet;
    }
    for (uint64_t o = 0; o < rows; o++)
        sq_ggml_to_qblock_row(type, (const uint8_t *)data + o * rb, w->cols,
                              codes + o * (uint64_t)w->code_row_bytes, scales + o * pb,
                              biases ? biases + o * pb : NULL);
    SQ_CUDA_CHECK(cudaMalloc(&w->data_d, code_bytes));
    SQ_CUDA_CHECK(cudaMalloc(&w->absmax_d, scale_bytes));
    if (biases) SQ_CUDA_CHECK(cudaMalloc(&w->bias_d, scale_bytes));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->data_d, codes, code_bytes, cudaMemcpyHostToDevice, stream));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->absmax_d, scales, scale_bytes, cudaMemcpyHostToDevice, stream));
    if (biases)
        SQ_CUDA_CHECK(cudaMemcpyAsync(w->bias_d, biases, scale_bytes, cudaMemcpyHostToDevice, stream));
    SQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    free(codes);
    free(scales);
    free(biases);
    w->n_bytes = code_bytes + scale_bytes * (biases ? 2 : 1);
    return SQ_OK;
fail:
    if (err && !err->tensor[0]) snprintf(err->tensor, sizeof err->tensor, "%s", w->name);
fail_quiet:
    free(codes);
    free(scales);
    free(biases);
    cudaFree(w->data_d);
    cudaFree(w->absmax_d);
    cudaFree(w->bias_d);
    w->data_d = w->absmax_d = w->bias_d = NULL;
    return st;
}

sq_status sq_cuda_linear_ggml(const sq_weight *w, const void *x_d, int64_t n_rows,
                              const float *bias_d, void *out_d, void *stream, sq_error *err) {
    sq_cuda_ggml_desc d = desc_of(w);
    return sq_cuda_ggml_gemv(&d, x_d, n_rows, bias_d, out_d, (cudaStream_t)stream, err);
}

sq_status sq_cuda_ggml_band_to_f32(const sq_weight *w, int64_t row0, int64_t n, float *dst_d,
                                   void *stream, sq_error *err) {
    sq_cuda_ggml_desc d = desc_of(w);
    return sq_cuda_ggml_to_f32(&d, row0, n, dst_d, (cudaStream_t)stream, err);
}

sq_status sq_cuda_embed_ggml(const sq_weight *t, const void *ids_d, int64_t n_rows, void *out_d,
                             long long *bad_d, void *stream, sq_error *err) {
    sq_cuda_ggml_desc d = desc_of(t);
    return sq_cuda_ggml_embed(&d, ids_d, n_rows, out_d, bad_d, (cudaStream_t)stream, err);
}
