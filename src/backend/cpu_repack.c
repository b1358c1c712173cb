/* Weights the CPU backend keeps in a buffer the caller gives up instead of copying it.
 * 4-bit: the ones that come already in its layout: a q in layout G64 (quant.h;
 * in_features % 64 == 0) holds exactly the bytes sq_cpu_q4_repack would make of its BNB twin,
 * so it is kept as it is — taken over (no copy at all) when the caller gives q up, copied
 * otherwise — with one float32 absmax per bnb block as cpu_weight_4bit keeps (taken too
 * without double quant; double-quant absmax expanded once).  Saves the loader a repack pass
 * and a second buffer per weight.  Dense F32 / BF16: the buffer as it is (the caller's is at
 * least the weight rounded up to 64 bytes, as the backend's own allocations).  Must never
 * change a byte of what the backend holds (test_backend compares it with the copied weight
 * and with the repack of the BNB twin).  In int8 mode a 4-bit weight, kept or copied, is then
 * interleaved in place for the int8 kernels where it fits (sq_cpu_q4_q8i, cpu_q8i.h), the same
 * bytes either way. */
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"
#include "cpu_q8i.h"

/* aligned_alloc(64) of n rounded up, as the backend's own allocations (freed with free()) */
static void *alloc64(uint64_t n) {
    uint64_t rounded = (n + 63) & ~UINT64_C(63);
    return aligned_alloc(64, (size_t)(rounded ? rounded : 64));
}

sq_status sq_cpu_weight_4bit_g64(sq_backend *be, sq_weight *w, sq_qtensor *q, bool take,
                                 sq_error *err) {
    const float *code = sq_quant_code_table(q->type);
    if (!code)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name, "no code table for quant type %d",
                            (int)q->type);
    /* rows of cols / 64 whole groups: the row bytes are sq_cpu_q4_row_bytes(cols) = cols / 2 */
    const uint64_t packed_bytes = q->n_elements / 2;
    const uint64_t absmax_bytes = q->n_blocks * sizeof(float);
    uint8_t *packed = take ? q->packed : alloc64(packed_bytes);
    float *absmax = take && !q->double_quant ? q->absmax : alloc64(absmax_bytes);
    if (!packed || !absmax) {
        if (!take) free(packed);
        if (!(take && !q->double_quant)) free(absmax);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, w->name,
                            "backend alloc: out of memory for a 4-bit weight");
    }
    if (!take) memcpy(packed, q->packed, (size_t)packed_bytes);
    if (q->double_quant)
        for (uint64_t b = 0; b < q->n_blocks; b++) absmax[b] = sq_qtensor_absmax(q, b);
    else if (!take)
        memcpy(absmax, q->absmax, (size_t)absmax_bytes);
    if (take) {
        q->packed = NULL;
        if (!q->double_quant) q->absmax = NULL;
    }
    memcpy(w->code, code, sizeof w->code);
    w->data_d = packed;
    w->absmax_d = absmax;
    w->n_bytes = packed_bytes + absmax_bytes;
    return sq_cpu_q4_q8i(be, w, err);
}

sq_status sq_cpu_q4_q8i(sq_backend *be, sq_weight *w, sq_error *err) {
    if (!sq_cpu_of(be)->act_int8) return SQ_OK;
    sq_status st = sq_cpu_q8i_repack(sq_cpu_of(be)->pool, w, err);
    if (st != SQ_OK) {   /* the buffers are the weight's now (taken or allocated) */
        free(w->data_d);
        free(w->absmax_d);
        w->data_d = w->absmax_d = NULL;
    }
    return st;
}

bool sq_cpu_weight_dense_map(sq_backend *be, sq_weight *w, sq_dtype src_dtype, const void *src,
                             void *map, size_t map_len) {
    const size_t es = src_dtype == SQ_DTYPE_BF16 ? 2 : 4;
    if ((uintptr_t)src % es != 0) return false;   /* the kernels read whole elements */
    if (!sq_cpu_weight_dense_take(be, w, src_dtype, (void *)(uintptr_t)src)) return false;
    w->map = map;
    w->map_len = map_len;
    return true;
}

bool sq_cpu_weight_dense_take(sq_backend *be, sq_weight *w, sq_dtype src_dtype, void *src) {
    (void)be;
    if (src_dtype != SQ_DTYPE_BF16 && src_dtype != SQ_DTYPE_F32) return false;   /* F16: converted */
    w->store = src_dtype == SQ_DTYPE_BF16 ? SQ_WSTORE_BF16 : SQ_WSTORE_F32;
    w->data_d = src;
    w->n_bytes = (uint64_t)w->rows * (uint64_t)w->cols * (src_dtype == SQ_DTYPE_BF16 ? 2 : 4);
    return true;
}
