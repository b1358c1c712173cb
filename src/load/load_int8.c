/* load_int8.c: int8 weights in the loader (load.c and stage.c call these few hooks): how many
 * whole rows a staging slot takes (load.c quantizes the reader's whole-row pieces with
 * sq_quant_int8_rows, bytes equal to sq_quant_int8_from on the whole tensor since each row is
 * quantized alone), and a bitsandbytes 8-bit weight (weight + SCB) read as stored.  Must never
 * print or read a tensor outside the one it is given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_impl.h"

/* err's message again, now naming the tensor (copied first: the message is the argument) */
static sq_status relabel(sq_error *err, sq_status rc, const char *name) {
    if (!err) return rc;
    char msg[sizeof err->msg];
    memcpy(msg, err->msg, sizeof msg);
    return sq_error_set(err, rc, NULL, name, "%s", msg);
}

uint64_t load_int8_piece_rows(uint64_t staging_bytes, size_t elsize, int64_t rows, int64_t cols) {
    uint64_t row_bytes = (uint64_t)cols * elsize;
    uint64_t r = staging_bytes / row_bytes;
    if (r < 1) r = 1;
    return r < (uint64_t)rows ? r : (uint64_t)rows;
}

/* "<base>" of "<base>weight" into buf; false when name does not end in "weight" */
static bool int8_base(const char *name, char *buf, size_t n) {
    size_t len = strlen(name);
    if (len < 6 || len - 6 >= n || strcmp(name + len - 6, "weight") != 0) return false;
    memcpy(buf, name, len - 6);
    buf[len - 6] = '\0';
    return true;
}

static const sq_ckpt_tensor *int8_part(const sq_ckpt *st, const char *base, const char *suffix) {
    char name[300];
    if (snprintf(name, sizeof name, "%s%s", base, suffix) >= (int)sizeof name) return NULL;
    return sq_ckpt_find(st, name);
}

uint64_t load_int8_src_bytes(const sq_ckpt *st, const sq_tensor_spec *t) {
    char base[256];
    const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
    if (!w || !int8_base(t->name, base, sizeof base)) return 0;
    const sq_ckpt_tensor *scb = int8_part(st, base, "SCB"), *fmt = int8_part(st, base, "weight_format");
    return w->n_bytes + (scb ? scb->n_bytes : 0) + (fmt ? fmt->n_bytes : 0);
}

sq_status load_int8_prequant(const sq_ckpt *st, const sq_tensor_spec *t, bool dequantize,
                             load_part_fn read, void *ctx, sq_load_item *item, sq_error *err) {
    sq_qtensor *q = &item->q;
    memset(q, 0, sizeof *q);
    char base[256];
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
    const sq_ckpt_tensor *scb = int8_base(t->name, base, sizeof base) ? int8_part(st, base, "SCB") : NULL;
    const sq_ckpt_tensor *fmt = scb ? int8_part(st, base, "weight_format") : NULL;
    if (!w || w->dtype != SQ_DTYPE_I8 || w->n_bytes != (uint64_t)(rows * cols) || !scb ||
        scb->dtype != SQ_DTYPE_F32 || scb->n_bytes != (uint64_t)rows * 4 ||
        (fmt && (fmt->dtype != SQ_DTYPE_U8 || fmt->n_bytes != 1)))
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                            "bitsandbytes 8-bit weight: want I8 [%lld, %lld] + %sSCB F32 [%lld] "
                            "(+ %sweight_format U8)", (long long)rows, (long long)cols, base,
                            (long long)rows, base);
    /* bnb keeps no source dtype for 8-bit weights; its compute path is float16 */
    sq_status rc = sq_qtensor_init_int8(q, SQ_QUANT_INT8, rows, cols, SQ_DTYPE_F16, err);
    if (rc != SQ_OK) return relabel(err, rc, t->name);
    uint8_t format = 0;
    rc = read(ctx, w, q->codes, err);
    if (rc == SQ_OK) rc = read(ctx, scb, q->row_scale, err);
    if (rc == SQ_OK && fmt) rc = read(ctx, fmt, &format, err);
    if (rc == SQ_OK && format != 0)
        rc = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                          "bitsandbytes 8-bit weight_format %u: only 0 ('row') is supported", format);
    for (int64_t r = 0; rc == SQ_OK && r < rows; r++)
        if (!(q->row_scale[r] >= 0.0f && q->row_scale[r] <= 65504.0f))
            rc = sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                              "SCB[%lld] = %g: a row absmax must be finite, >= 0 and within float16",
                              (long long)r, (double)q->row_scale[r]);
    if (rc != SQ_OK) {
        sq_qtensor_free(q);
        return rc;
    }
    item->src_bytes = load_int8_src_bytes(st, t);
    item->prequantized = true;
    if (!dequantize) {
        item->is_4bit = true;   /* q holds it */
        return SQ_OK;
    }
    /* scheme NONE: the float32 values a backend would multiply by (quant.h) */
    item->dtype = SQ_DTYPE_F32;
    item->n_dims = 2;
    item->shape[0] = rows;
    item->shape[1] = cols;
    item->n_bytes = (uint64_t)(rows * cols) * 4;
    item->data = load_alloc_dense(item->n_bytes);
    if (!item->data) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory");
    for (int64_t r = 0; rc == SQ_OK && r < rows; r++) sq_dequant_int8_row(q, r, (float *)item->data + r * cols);
    sq_qtensor_free(q);
    return rc;
}
