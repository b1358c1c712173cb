/* Weights handed to a backend already in the block-scaled integer form (ggml_quant.h's
 * sq_qblock_format): the argument checks, the generic copy (alloc + upload through the vtable,
 * what the CPU backend uses; a backend with its own weight_qblock op, CUDA, does its own), and
 * int8 weights (quant.h's INT8 / INT8_ZP sq_qtensor) put into that form: codes as they are, the
 * row's float32 scale (and INT8_ZP's bias) repeated once per 32 elements.  Linear and embed then
 * run on them with the code every block-scaled weight runs with (cpu_ggml.c, cuda_ggml.c).
 * Must never print, and never touch device memory except through the vtable. */
#include "backend_impl.h"
#include "cpu_q8i.h"

#include <stdlib.h>
#include <string.h>

static bool format_ok(const sq_qblock_format *f) {
    if (f->scale_bits != 16 && f->scale_bits != 32) return false;
    if (f->code_bits == 8) return f->code_zero == 0 && (f->block_elems == 16 || f->block_elems == 32);
    if (f->code_bits == 4) return f->code_zero >= 0 && f->code_zero <= 15 && f->block_elems == 32;
    return false;
}

sq_status sq_backend_weight_qblock(sq_backend *be, const char *name, const sq_qblock_format *f,
                                   int64_t rows, int64_t cols, const uint8_t *codes,
                                   const void *scales, const void *biases, sq_weight **out,
                                   sq_error *err) {
    if (out) *out = NULL;
    if (!be) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend: NULL handle");
    if (!out || !f || !codes || !scales || (f->has_bias && !biases))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "backend weight_qblock: NULL pointer");
    if (!format_ok(f))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "backend weight_qblock: format (%d-bit codes, zero %d, %d per scale, "
                            "%d-bit scales) is not one the backends compute on",
                            f->code_bits, f->code_zero, f->block_elems, f->scale_bits);
    if (rows <= 0 || cols <= 0 || rows > (INT64_C(1) << 31) || cols > (INT64_C(1) << 31) || cols % 32)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "block-scaled weight shape [%lld, %lld] (cols must be a multiple of 32)",
                            (long long)rows, (long long)cols);
    sq_weight *w = sq_backend_weight_new(name, rows, cols);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
    w->qtype = SQ_QUANT_NONE;
    w->store = SQ_WSTORE_QBLOCK;
    w->qf = *f;
    w->blocksize = f->block_elems;
    w->code_row_bytes = sq_qblock_code_bytes(f, cols);
    const uint64_t code_bytes = (uint64_t)rows * (uint64_t)w->code_row_bytes;
    const uint64_t param_bytes = (uint64_t)rows * (uint64_t)(cols / f->block_elems) *
                                 (uint64_t)(f->scale_bits / 8);
    sq_status st = SQ_OK;
    if (be->ops->weight_qblock) {
        st = be->ops->weight_qblock(be, w, codes, scales, f->has_bias ? biases : NULL, err);
        if (st != SQ_OK) {
            free(w);
            return st;
        }
        *out = w;
        return SQ_OK;
    }
    sq_error e;
    sq_error_init(&e, -1);
    st = be->ops->alloc(be, code_bytes, &w->data_d, &e);
    if (st == SQ_OK) st = be->ops->alloc(be, param_bytes, &w->absmax_d, &e);
    if (st == SQ_OK && f->has_bias) st = be->ops->alloc(be, param_bytes, &w->bias_d, &e);
    if (st == SQ_OK) st = be->ops->upload(be, w->data_d, codes, code_bytes, &e);
    if (st == SQ_OK) st = be->ops->upload(be, w->absmax_d, scales, param_bytes, &e);
    if (st == SQ_OK && f->has_bias) st = be->ops->upload(be, w->bias_d, biases, param_bytes, &e);
    /* the CPU backend with int8 activations: the layout of their kernels (cpu_q8i.h) */
    if (st == SQ_OK && sq_backend_cpu_activations_int8(be)) st = sq_cpu_q8i_repack(NULL, w, &e);
    if (st != SQ_OK) {
        if (w->data_d) be->ops->free(be, w->data_d);
        if (w->absmax_d) be->ops->free(be, w->absmax_d);
        if (w->bias_d) be->ops->free(be, w->bias_d);
        free(w);
        return sq_error_set(err, st, NULL, name, "%s", e.msg);
    }
    w->n_bytes = code_bytes + param_bytes * (f->has_bias ? 2 : 1);
    *out = w;
    return SQ_OK;
}

sq_status sq_backend_weight_int8(sq_backend *be, const char *name, const sq_qtensor *q,
                                 sq_weight **out, sq_error *err) {
    if (out) *out = NULL;
    if (!be || !out || !q->codes || !q->row_scale || (q->type == SQ_QUANT_INT8_ZP && !q->row_zp))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "backend weight_int8: NULL pointer");
    const int64_t rows = q->shape[0], cols = q->shape[1];
    uint64_t n = 0;
    if (rows <= 0 || cols <= 0 || rows > (INT64_C(1) << 31) || cols > (INT64_C(1) << 31) ||
        !sq_mul_u64((uint64_t)rows, (uint64_t)cols, &n) || n != q->n_elements)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "int8 weight shape [%lld, %lld] does not hold %llu elements",
                            (long long)rows, (long long)cols, (unsigned long long)q->n_elements);
    sq_status st;
    if (cols % 32) {
        /* the block-scaled form needs whole groups of 32: the same float32 values, dense */
        float *v = malloc((size_t)n * sizeof(float));
        if (!v) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
        for (int64_t r = 0; r < rows; r++) sq_dequant_int8_row(q, r, v + r * cols);
        st = sq_backend_weight_dense(be, name, SQ_DTYPE_F32, v, rows, cols, out, err);
        free(v);
    } else {
        const sq_qblock_format f = {.code_bits = 8, .code_zero = 0, .block_elems = 32,
                                    .has_bias = q->type == SQ_QUANT_INT8_ZP, .scale_bits = 32};
        const int64_t nsub = cols / 32;
        float *sc = malloc((size_t)(rows * nsub) * sizeof(float));
        float *bi = f.has_bias ? malloc((size_t)(rows * nsub) * sizeof(float)) : NULL;
        if (!sc || (f.has_bias && !bi)) {
            free(sc);
            free(bi);
            return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
        }
        for (int64_t r = 0; r < rows; r++) {
            const float s = sq_int8_row_scale(q, r), b = sq_int8_row_bias(q, r);
            for (int64_t j = 0; j < nsub; j++) {
                sc[r * nsub + j] = s;
                if (bi) bi[r * nsub + j] = b;
            }
        }
        st = sq_backend_weight_qblock(be, name, &f, rows, cols, (const uint8_t *)q->codes, sc, bi,
                                      out, err);
        free(sc);
        free(bi);
    }
    if (st == SQ_OK) (*out)->qtype = q->type;
    return st;
}
