/* The public face of the backend module: argument checks that do not depend on the
 * implementation, then a call through the vtable.  Owns sq_weight's common fields and the
 * counter-based sampling generator.  Must never touch tensor bytes itself (they may live on a
 * device) and never print. */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_BE(be) \
    do { if (!(be)) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend: NULL handle"); } while (0)

static sq_status bad(sq_error *err, const char *op, const char *what) {
    return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend %s: %s", op, what);
}

static sq_status check_rows(const sq_backend *be, const char *op, int64_t n_rows, sq_error *err) {
    if (n_rows < 0) return bad(err, op, "negative row count");
    if (n_rows > be->limits.max_rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "backend %s: %lld rows exceed the reserved %lld (sq_backend_reserve)",
                            op, (long long)n_rows, (long long)be->limits.max_rows);
    return SQ_OK;
}

void sq_backend_destroy(sq_backend *be) {
    if (be) be->ops->destroy(be);
}
const char *sq_backend_name(const sq_backend *be) { return be ? be->ops->name(be) : "none"; }
int sq_backend_n_threads(const sq_backend *be) { return be ? be->n_threads : 0; }

sq_status sq_backend_reserve(sq_backend *be, const sq_backend_limits *lim, sq_error *err) {
    CHECK_BE(be);
    if (!lim || lim->max_rows < 0 || lim->max_width < 0 || lim->max_vocab < 0 ||
        lim->max_head_dim < 0 || lim->max_rows > (1 << 24) || lim->max_width > (1 << 24) ||
        lim->max_vocab > (1 << 26) || lim->max_head_dim > 1024)
        return bad(err, "reserve", "limits missing, negative or implausibly large");
    sq_backend_limits m = be->limits;
    if (lim->max_rows > m.max_rows) m.max_rows = lim->max_rows;
    if (lim->max_width > m.max_width) m.max_width = lim->max_width;
    if (lim->max_vocab > m.max_vocab) m.max_vocab = lim->max_vocab;
    if (lim->max_head_dim > m.max_head_dim) m.max_head_dim = lim->max_head_dim;
    if (lim->max_sample_rows > m.max_sample_rows) m.max_sample_rows = lim->max_sample_rows;
    sq_status st = be->ops->reserve(be, &m, err);
    if (st == SQ_OK) be->limits = m;
    return st;
}

sq_status sq_backend_alloc(sq_backend *be, uint64_t n_bytes, void **out_d, sq_error *err) {
    if (out_d) *out_d = NULL;
    CHECK_BE(be);
    if (!out_d) return bad(err, "alloc", "NULL output");
    return be->ops->alloc(be, n_bytes, out_d, err);
}
void sq_backend_free(sq_backend *be, void *p_d) {
    if (be && p_d) be->ops->free(be, p_d);
}
sq_status sq_backend_upload(sq_backend *be, void *dst_d, const void *src, uint64_t n,
                            sq_error *err) {
    CHECK_BE(be);
    if (n && (!dst_d || !src)) return bad(err, "upload", "NULL pointer");
    return n ? be->ops->upload(be, dst_d, src, n, err) : SQ_OK;
}
sq_status sq_backend_download(sq_backend *be, void *dst, const void *src_d, uint64_t n,
                              sq_error *err) {
    CHECK_BE(be);
    if (n && (!dst || !src_d)) return bad(err, "download", "NULL pointer");
    return n ? be->ops->download(be, dst, src_d, n, err) : SQ_OK;
}
sq_status sq_backend_copy(sq_backend *be, void *dst_d, const void *src_d, uint64_t n,
                          sq_error *err) {
    CHECK_BE(be);
    if (n && (!dst_d || !src_d)) return bad(err, "copy", "NULL pointer");
    return n ? be->ops->copy(be, dst_d, src_d, n, err) : SQ_OK;
}
sq_status sq_backend_memset(sq_backend *be, void *dst_d, int v, uint64_t n, sq_error *err) {
    CHECK_BE(be);
    if (n && !dst_d) return bad(err, "memset", "NULL pointer");
    return n ? be->ops->memset(be, dst_d, v, n, err) : SQ_OK;
}
sq_status sq_backend_sync(sq_backend *be, sq_error *err) {
    CHECK_BE(be);
    return be->ops->sync(be, err);
}

/* ---- weights ------------------------------------------------------------------------------ */

sq_weight *sq_backend_weight_new(const char *name, int64_t rows, int64_t cols) {
    sq_weight *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    snprintf(w->name, sizeof w->name, "%s", name ? name : "");
    w->rows = rows;
    w->cols = cols;
    w->ggml_type = -1;
    return w;
}

static sq_status weight_dense(sq_backend *be, const char *name, sq_dtype src_dtype,
                              const void *src, void **give, void **map, size_t map_len,
                              int64_t rows, int64_t cols, sq_weight **out, sq_error *err) {
    if (out) *out = NULL;
    CHECK_BE(be);
    if (!out || !src) return bad(err, "weight_dense", "NULL pointer");
    if (src_dtype != SQ_DTYPE_F32 && src_dtype != SQ_DTYPE_F16 && src_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, name,
                            "dense weight dtype %s (need F32, F16 or BF16)",
                            sq_dtype_name(src_dtype));
    if (rows <= 0 || cols <= 0 || rows > (INT64_C(1) << 31) || cols > (INT64_C(1) << 31))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "dense weight shape [%lld, %lld]",
                            (long long)rows, (long long)cols);
    sq_weight *w = sq_backend_weight_new(name, rows, cols);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
    w->qtype = SQ_QUANT_NONE;
    if (give && be->ops->weight_dense_take && be->ops->weight_dense_take(be, w, src_dtype, *give)) {
        *give = NULL;
        *out = w;
        return SQ_OK;
    }
    if (map && *map && be->ops->weight_dense_map &&
        be->ops->weight_dense_map(be, w, src_dtype, src, *map, map_len)) {
        *map = NULL;
        *out = w;
        return SQ_OK;
    }
    sq_status st = be->ops->weight_dense(be, w, src_dtype, src, err);
    if (st != SQ_OK) { free(w); return st; }
    *out = w;
    return SQ_OK;
}

sq_status sq_backend_weight_dense(sq_backend *be, const char *name, sq_dtype src_dtype,
                                  const void *src, int64_t rows, int64_t cols, sq_weight **out,
                                  sq_error *err) {
    return weight_dense(be, name, src_dtype, src, NULL, NULL, 0, rows, cols, out, err);
}

sq_status sq_backend_weight_dense_take(sq_backend *be, const char *name, sq_dtype src_dtype,
                                       void **src, int64_t rows, int64_t cols, sq_weight **out,
                                       sq_error *err) {
    if (out) *out = NULL;
    if (!src) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "weight_dense_take: NULL pointer");
    return weight_dense(be, name, src_dtype, *src, src, NULL, 0, rows, cols, out, err);
}

sq_status sq_backend_weight_dense_map(sq_backend *be, const char *name, sq_dtype src_dtype,
                                      const void *src, void **map, size_t map_len, int64_t rows,
                                      int64_t cols, sq_weight **out, sq_error *err) {
    if (out) *out = NULL;
    if (!map || !src)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "weight_dense_map: NULL pointer");
    if (*map && ((const uint8_t *)src < (const uint8_t *)*map ||
                 (const uint8_t *)src > (const uint8_t *)*map + map_len))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "weight_dense_map: the data is not inside the mapping");
    return weight_dense(be, name, src_dtype, src, NULL, map, map_len, rows, cols, out, err);
}

/* weight_4bit and weight_4bit_take: q may be given up (take) when give != NULL (then q ==
 * give). */
static sq_status weight_4bit(sq_backend *be, const char *name, const sq_qtensor *q,
                             sq_qtensor *give, sq_weight **out, sq_error *err) {
    if (out) *out = NULL;
    CHECK_BE(be);
    if (q && sq_quant_type_is_int8(q->type)) return sq_backend_weight_int8(be, name, q, out, err);
    if (!out || !q || !q->packed) return bad(err, "weight_4bit", "NULL pointer");
    if (q->type != SQ_QUANT_NF4 && q->type != SQ_QUANT_FP4)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "4-bit weight of quant type %d",
                            (int)q->type);
    uint64_t n = 0;
    if (q->shape[0] <= 0 || q->shape[1] <= 0 || q->shape[0] > (INT64_C(1) << 31) ||
        q->shape[1] > (INT64_C(1) << 31) ||
        !sq_mul_u64((uint64_t)q->shape[0], (uint64_t)q->shape[1], &n) || n != q->n_elements)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "4-bit weight shape [%lld, %lld] does not hold %llu elements",
                            (long long)q->shape[0], (long long)q->shape[1],
                            (unsigned long long)q->n_elements);
    if (q->blocksize < 32 || q->blocksize > 4096 || (q->blocksize & (q->blocksize - 1)) ||
        q->n_blocks != sq_ceil_div_u64(n, (uint64_t)q->blocksize))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "4-bit weight blocksize %lld / %llu blocks do not fit %llu elements",
                            (long long)q->blocksize, (unsigned long long)q->n_blocks,
                            (unsigned long long)n);
    if (q->double_quant ? (!q->absmax_q || !q->nested_absmax || q->nested_blocksize <= 0)
                        : !q->absmax)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "4-bit weight without its absmax");
    if (q->layout != SQ_Q4_LAYOUT_BNB &&
        (q->layout != SQ_Q4_LAYOUT_G64 || !sq_q4_layout_fits(q->layout, q->shape[1], q->blocksize)))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "4-bit weight [%lld, %lld] blocksize %lld in layout %d: not a layout "
                            "it can have", (long long)q->shape[0], (long long)q->shape[1],
                            (long long)q->blocksize, (int)q->layout);
    sq_weight *w = sq_backend_weight_new(name, q->shape[0], q->shape[1]);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
    w->qtype = q->type;
    w->blocksize = q->blocksize;
    w->store = SQ_WSTORE_Q4;
    sq_status st = SQ_OK;
    if (q->layout == SQ_Q4_LAYOUT_BNB) {
        st = be->ops->weight_4bit(be, w, q, err);
    } else if (be->ops->weight_4bit_g64) {
        sq_qtensor view = *q;   /* without take the op leaves it alone */
        st = be->ops->weight_4bit_g64(be, w, give ? give : &view, give != NULL, err);
    } else {   /* a backend without G64: a BNB copy of the codes */
        sq_qtensor bnb = *q;
        bnb.layout = SQ_Q4_LAYOUT_BNB;
        bnb.packed = malloc((size_t)(n / 2));
        if (!bnb.packed) {
            free(w);
            return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
        }
        sq_q4_convert_groups(q->packed, bnb.packed, n / 64, false);
        st = be->ops->weight_4bit(be, w, &bnb, err);
        free(bnb.packed);
    }
    if (st != SQ_OK) { free(w); return st; }
    *out = w;
    return SQ_OK;
}

sq_status sq_backend_weight_4bit(sq_backend *be, const char *name, const sq_qtensor *q,
                                 sq_weight **out, sq_error *err) {
    return weight_4bit(be, name, q, NULL, out, err);
}

sq_status sq_backend_weight_4bit_take(sq_backend *be, const char *name, sq_qtensor *q,
                                      sq_weight **out, sq_error *err) {
    return weight_4bit(be, name, q, q, out, err);
}

sq_q4_layout sq_backend_q4_layout(const sq_backend *be) {
    return be && be->ops && be->ops->weight_4bit_g64 ? SQ_Q4_LAYOUT_G64 : SQ_Q4_LAYOUT_BNB;
}

sq_status sq_backend_weight_ggml(sq_backend *be, const char *name, sq_ggml_type type,
                                 const void *data, int64_t rows, int64_t cols, sq_weight **out,
                                 sq_error *err) {
    if (out) *out = NULL;
    CHECK_BE(be);
    if (!out || !data) return bad(err, "weight_ggml", "NULL pointer");
    if (rows <= 0 || cols <= 0 || rows > (INT64_C(1) << 31) || cols > (INT64_C(1) << 31))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "ggml weight shape [%lld, %lld]",
                            (long long)rows, (long long)cols);
    sq_error e;
    sq_error_init(&e, -1);
    uint64_t rb = 0;
    sq_status st = sq_ggml_row_bytes((int)type, cols, &rb, &e);
    if (st != SQ_OK) return sq_error_set(err, st, NULL, name, "%s", e.msg);
    sq_dtype dt = type == SQ_GGML_F32 ? SQ_DTYPE_F32 : type == SQ_GGML_F16 ? SQ_DTYPE_F16
                : SQ_DTYPE_BF16;
    if (type == SQ_GGML_F32 || type == SQ_GGML_F16 || type == SQ_GGML_BF16) {
        /* the dense path reads whole elements: a GGUF buffer need not be aligned to them */
        void *tmp = NULL;
        if ((uintptr_t)data % (uintptr_t)sq_ggml_block_bytes((int)type) != 0) {
            tmp = malloc((size_t)(rb * (uint64_t)rows));
            if (!tmp) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
            memcpy(tmp, data, (size_t)(rb * (uint64_t)rows));
        }
        st = sq_backend_weight_dense(be, name, dt, tmp ? tmp : data, rows, cols, out, err);
        free(tmp);
        if (st == SQ_OK) (*out)->ggml_type = (int)type;
        return st;
    }
    if (!be->ops->weight_ggml)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, name,
                            "backend %s cannot hold ggml type %s", be->ops->name(be),
                            sq_ggml_type_name((int)type));
    sq_weight *w = sq_backend_weight_new(name, rows, cols);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for a weight");
    w->qtype = SQ_QUANT_NONE;
    w->store = SQ_WSTORE_QBLOCK;
    w->ggml_type = (int)type;
    sq_ggml_qblock_format((int)type, &w->qf);
    w->blocksize = w->qf.block_elems;
    w->code_row_bytes = sq_qblock_code_bytes(&w->qf, cols);
    st = be->ops->weight_ggml(be, w, type, data, err);
    if (st != SQ_OK) { free(w); return st; }
    *out = w;
    return SQ_OK;
}

void sq_backend_weight_free(sq_backend *be, sq_weight *w) {
    if (!w) return;
    if (be) be->ops->weight_release(be, w);
    free(w);
}
int64_t sq_weight_rows(const sq_weight *w) { return w ? w->rows : 0; }
int64_t sq_weight_cols(const sq_weight *w) { return w ? w->cols : 0; }
sq_quant_type sq_weight_qtype(const sq_weight *w) { return w ? w->qtype : SQ_QUANT_NONE; }
uint64_t sq_weight_bytes(const sq_weight *w) { return w ? w->n_bytes : 0; }
int sq_weight_ggml_type(const sq_weight *w) { return w ? w->ggml_type : -1; }

/* ---- ops ---------------------------------------------------------------------------------- */

sq_status sq_backend_embed(sq_backend *be, const sq_weight *t, const void *ids_d,
                           int64_t n_rows, void *out_d, sq_error *err) {
    CHECK_BE(be);
    if (!t || (n_rows && (!ids_d || !out_d))) return bad(err, "embed", "NULL pointer");
    if (t->store == SQ_WSTORE_Q4) return bad(err, "embed", "a 4-bit embedding table");
    sq_status st = check_rows(be, "embed", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    return be->ops->embed(be, t, ids_d, n_rows, out_d, err);
}

sq_status sq_backend_rmsnorm(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                             int64_t n_rows, void *out_d, sq_error *err) {
    CHECK_BE(be);
    if (!w || (n_rows && (!x_d || !out_d))) return bad(err, "rmsnorm", "NULL pointer");
    if (w->rows != 1 || w->store == SQ_WSTORE_Q4 || w->store == SQ_WSTORE_QBLOCK)
        return bad(err, "rmsnorm", "weight is not 1-D dense");
    if (!(eps >= 0.0f)) return bad(err, "rmsnorm", "negative or NaN eps");
    sq_status st = check_rows(be, "rmsnorm", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    return be->ops->rmsnorm(be, x_d, w, eps, n_rows, out_d, err);
}

sq_status sq_backend_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                          int n_kv_heads, int head_dim, const int32_t *pos,
                          const void *inv_freq_d, sq_error *err) {
    CHECK_BE(be);
    if (n_rows && (!q_d || !pos || !inv_freq_d)) return bad(err, "rope", "NULL pointer");
    if (n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || head_dim % 2 ||
        head_dim > be->limits.max_head_dim)
        return bad(err, "rope", "bad head counts or head_dim (odd, or above the reserved one)");
    sq_status st = check_rows(be, "rope", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    for (int64_t r = 0; r < n_rows; r++)
        if (pos[r] < 0)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend rope: row %lld has position %d",
                                (long long)r, pos[r]);
    return be->ops->rope(be, q_d, k_d, n_rows, n_heads, n_kv_heads, head_dim, pos, inv_freq_d, err);
}

sq_status sq_backend_attention(sq_backend *be, const void *q_d, const void *k_d,
                               const void *v_d, const sq_kv_layer *kv, int n_heads,
                               int n_seqs, const sq_seq_span *seqs, void *out_d,
                               sq_error *err) {
    CHECK_BE(be);
    if (!kv || !kv->k_d || !kv->v_d || n_seqs < 0 || (n_seqs && !seqs))
        return bad(err, "attention", "NULL pointer or negative sequence count");
    if (n_heads <= 0 || kv->n_kv_heads <= 0 || n_heads % kv->n_kv_heads || kv->head_dim <= 0 ||
        kv->head_dim > be->limits.max_head_dim)
        return bad(err, "attention", "n_heads not a multiple of n_kv_heads, or bad head_dim");
    int64_t n_rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        const sq_seq_span *sp = &seqs[s];
        if (sp->slot < 0 || sp->slot >= kv->n_slots || sp->start_pos < 0 || sp->n_tokens < 0 ||
            (int64_t)sp->start_pos + sp->n_tokens > kv->max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "backend attention: sequence %d (slot %d, positions %d..%d) "
                                "outside the cache (%lld slots, %lld positions)",
                                s, sp->slot, sp->start_pos, sp->start_pos + sp->n_tokens - 1,
                                (long long)kv->n_slots, (long long)kv->max_seq);
        for (int t = 0; t < s; t++)
            if (seqs[t].slot == sp->slot)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "backend attention: slot %d appears twice in one batch", sp->slot);
        n_rows += sp->n_tokens;
    }
    sq_status st = check_rows(be, "attention", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    if (!q_d || !k_d || !v_d || !out_d) return bad(err, "attention", "NULL pointer");
    return be->ops->attention(be, q_d, k_d, v_d, kv, n_heads, n_seqs, seqs, n_rows, out_d, err);
}

sq_status sq_backend_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                            const sq_weight *bias, void *out_d, sq_error *err) {
    CHECK_BE(be);
    if (!w || (n_rows && (!x_d || !out_d))) return bad(err, "linear", "NULL pointer");
    if (bias && (bias->rows != 1 || bias->cols != w->rows || bias->store == SQ_WSTORE_Q4 ||
                 bias->store == SQ_WSTORE_QBLOCK))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, bias->name,
                            "backend linear: bias [%lld, %lld] does not match %lld outputs",
                            (long long)bias->rows, (long long)bias->cols, (long long)w->rows);
    sq_status st = check_rows(be, "linear", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    return be->ops->linear(be, x_d, n_rows, w, bias, out_d, err);
}

static bool overlaps(const void *a, uint64_t a_bytes, const void *b, uint64_t b_bytes) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

sq_status sq_backend_linear_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                                  const sq_weight *const *w, const sq_weight *const *bias,
                                  void *const *out_d, sq_error *err) {
    CHECK_BE(be);
    if (!w || !out_d || n < 1 || n > SQ_BACKEND_MAX_LINEARS)
        return bad(err, "linear_multi", "NULL array or a count outside [1, 8]");
    sq_status st = check_rows(be, "linear_multi", n_rows, err);
    if (st != SQ_OK) return st;
    for (int i = 0; i < n; i++) {
        if (!w[i]) return bad(err, "linear_multi", "NULL weight");
        if (w[i]->cols != w[0]->cols)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, w[i]->name,
                                "backend linear_multi: %lld inputs, the first weight has %lld",
                                (long long)w[i]->cols, (long long)w[0]->cols);
        const sq_weight *b = bias ? bias[i] : NULL;
        if (b && (b->rows != 1 || b->cols != w[i]->rows || b->store == SQ_WSTORE_Q4 ||
                  b->store == SQ_WSTORE_QBLOCK))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, b->name,
                                "backend linear_multi: bias [%lld, %lld] does not match %lld outputs",
                                (long long)b->rows, (long long)b->cols, (long long)w[i]->rows);
    }
    if (n_rows == 0) return SQ_OK;
    if (!x_d) return bad(err, "linear_multi", "NULL pointer");
    const uint64_t x_bytes = (uint64_t)n_rows * (uint64_t)w[0]->cols * 4;
    for (int i = 0; i < n; i++) {
        const uint64_t oi = (uint64_t)n_rows * (uint64_t)w[i]->rows * 4;
        if (!out_d[i]) return bad(err, "linear_multi", "NULL pointer");
        if (overlaps(out_d[i], oi, x_d, x_bytes))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, w[i]->name,
                                "backend linear_multi: output %d overlaps the input", i);
        for (int j = 0; j < i; j++)
            if (overlaps(out_d[i], oi, out_d[j], (uint64_t)n_rows * (uint64_t)w[j]->rows * 4))
                return sq_error_set(err, SQ_ERR_INVALID, NULL, w[i]->name,
                                    "backend linear_multi: output %d overlaps output %d", i, j);
    }
    if (be->ops->linear_multi) return be->ops->linear_multi(be, x_d, n_rows, n, w, bias, out_d, err);
    for (int i = 0; i < n; i++) {
        st = be->ops->linear(be, x_d, n_rows, w[i], bias ? bias[i] : NULL, out_d[i], err);
        if (st != SQ_OK) return st;
    }
    return SQ_OK;
}

sq_status sq_backend_add(sq_backend *be, const void *a_d, const void *b_d, int64_t n,
                         void *out_d, sq_error *err) {
    CHECK_BE(be);
    if (n < 0 || (n && (!a_d || !b_d || !out_d))) return bad(err, "add", "NULL pointer or negative size");
    return n ? be->ops->add(be, a_d, b_d, n, out_d, err) : SQ_OK;
}

sq_status sq_backend_swiglu(sq_backend *be, const void *g_d, const void *u_d, int64_t n,
                            void *out_d, sq_error *err) {
    CHECK_BE(be);
    if (n < 0 || (n && (!g_d || !u_d || !out_d))) return bad(err, "swiglu", "NULL pointer or negative size");
    return n ? be->ops->swiglu(be, g_d, u_d, n, out_d, err) : SQ_OK;
}

sq_status sq_backend_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                            const sq_sample_params *p, const uint64_t *seq_ids,
                            const uint64_t *steps, int32_t *ids_out, sq_error *err) {
    CHECK_BE(be);
    if (!p || (n_rows && (!logits_d || !seq_ids || !steps || !ids_out)))
        return bad(err, "sample", "NULL pointer");
    if (vocab <= 0 || vocab > be->limits.max_vocab)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "backend sample: vocab %lld outside (0, reserved %lld]",
                            (long long)vocab, (long long)be->limits.max_vocab);
    if (p->temperature != p->temperature || p->top_p != p->top_p)
        return bad(err, "sample", "NaN temperature or top_p");
    sq_status st = check_rows(be, "sample", n_rows, err);
    if (st != SQ_OK || n_rows == 0) return st;
    return be->ops->sample(be, logits_d, n_rows, vocab, p, seq_ids, steps, ids_out, err);
}

/* splitmix64 finalizer */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

double sq_sample_uniform(uint64_t seed, uint64_t seq_id, uint64_t step) {
    const uint64_t g = UINT64_C(0x9e3779b97f4a7c15);
    uint64_t h = mix64(seed + g);
    h = mix64(h ^ (seq_id + 2 * g));
    h = mix64(h ^ (step + 3 * g));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}
