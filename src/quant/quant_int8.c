/* quant_int8.c: int8 weights with one scale per row — absmax (bitsandbytes LLM.int8, bit-exact
 * with Int8Params._quantize / int8_vectorwise_quant on the CPU, threshold 0) and zero-point
 * (shardq's asymmetric int8).  The formulas are in include/shardq/quant.h; the bnb facts in
 * ../shared/reference/bnb-int8-format.md and tests/reference/gen_int8_vectors.py.  Rows are split
 * over the pool; each task converts its rows to float32 in a buffer of its own (no copy of the
 * tensor).  Must never print, exit, or keep mutable globals. */
#include "shardq/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* rows per pool task: about this many elements */
#define SQ_INT8_TASK_ELEMENTS (64 * 1024)

sq_status sq_qtensor_init_int8(sq_qtensor *q, sq_quant_type type, int64_t rows, int64_t cols,
                               sq_dtype orig_dtype, sq_error *err) {
    if (q) memset(q, 0, sizeof *q);
    if (!q || !sq_quant_type_is_int8(type))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize int8: bad arguments");
    uint64_t n = 0;
    if (rows <= 0 || cols <= 0 || rows > (INT64_C(1) << 31) || cols > (INT64_C(1) << 31) ||
        !sq_mul_u64((uint64_t)rows, (uint64_t)cols, &n) || n > (UINT64_C(1) << 40))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize int8: shape [%lld, %lld]",
                            (long long)rows, (long long)cols);
    q->type = type;
    q->shape[0] = rows;
    q->shape[1] = cols;
    q->n_elements = n;
    q->blocksize = cols;
    q->n_blocks = (uint64_t)rows;
    q->dtype = orig_dtype;
    q->codes = malloc((size_t)n);
    q->row_scale = malloc((size_t)rows * sizeof(float));
    if (type == SQ_QUANT_INT8_ZP) q->row_zp = malloc((size_t)rows);
    if (!q->codes || !q->row_scale || (type == SQ_QUANT_INT8_ZP && !q->row_zp)) {
        sq_qtensor_free(q);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                            "quantize int8: out of memory for a [%lld, %lld] weight",
                            (long long)rows, (long long)cols);
    }
    return SQ_OK;
}

float sq_int8_row_scale(const sq_qtensor *q, int64_t r) {
    return q->type == SQ_QUANT_INT8 ? q->row_scale[r] / 127.0f : q->row_scale[r];
}

float sq_int8_row_bias(const sq_qtensor *q, int64_t r) {
    if (q->type != SQ_QUANT_INT8_ZP) return 0.0f;
    return -((float)q->row_zp[r] * q->row_scale[r]);
}

void sq_dequant_int8_row(const sq_qtensor *q, int64_t r, float *out) {
    const float s = sq_int8_row_scale(q, r), b = sq_int8_row_bias(q, r);
    const int8_t *c = q->codes + r * q->shape[1];
    for (int64_t j = 0; j < q->shape[1]; j++) {
        float v = s * (float)c[j];
        out[j] = q->type == SQ_QUANT_INT8_ZP ? v + b : v;
    }
}

/* Row quantizers on the row's float32 values x (cols of them); false when a value cannot be
 * quantized (non-finite, or beyond float16 for INT8). */
static bool absmax_row(float *x, uint16_t *h, int64_t cols, int8_t *codes, float *scb) {
    sq_f32_to_f16(x, h, (size_t)cols);   /* RNE, overflow -> inf: the rounding torch does */
    sq_f16_to_f32(h, x, (size_t)cols);
    float m = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
        float a = fabsf(x[j]);
        if (!(a <= 65504.0f)) return false;   /* inf (overflow) or NaN */
        if (a > m) m = a;
    }
    *scb = m;
    if (m == 0.0f) {   /* bnb: 0 * inf = NaN, which torch turns into code 0 */
        memset(codes, 0, (size_t)cols);
        return true;
    }
    volatile float rcp = 1.0f / m;   /* two float32 roundings, never fused or folded */
    const float s = rcp * 127.0f;
    for (int64_t j = 0; j < cols; j++) {
        float v = nearbyintf(x[j] * s);   /* round half to even (default rounding mode) */
        codes[j] = (int8_t)(v > 127.0f ? 127.0f : v < -128.0f ? -128.0f : v);
    }
    return true;
}

static bool zp_row(const float *x, int64_t cols, int8_t *codes, float *scale, int8_t *zp) {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
        if (!isfinite(x[j])) return false;
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    const float s = (float)(((double)hi - (double)lo) / 255.0);
    if (s == 0.0f) {   /* zeros only, or a range below float32's smallest step */
        *scale = 0.0f;
        *zp = 0;
        memset(codes, 0, (size_t)cols);
        return true;
    }
    float z = -128.0f - nearbyintf(lo / s);
    z = z < -128.0f ? -128.0f : z > 127.0f ? 127.0f : z;
    for (int64_t j = 0; j < cols; j++) {
        float v = nearbyintf(x[j] / s) + z;
        codes[j] = (int8_t)(v > 127.0f ? 127.0f : v < -128.0f ? -128.0f : v);
    }
    *scale = s;
    *zp = (int8_t)z;
    return true;
}

typedef struct {
    sq_dtype dtype;
    const uint8_t *src;
    size_t esize;
    int64_t row0, n_rows, rows_per_task;
    sq_qtensor *q;
    int64_t *bad_row;   /* (n_tasks) first row that failed, -1 none */
    bool *nomem;        /* (n_tasks) */
} i8_ctx;

static void i8_task(void *ctx_, int64_t t, int thread) {
    (void)thread;
    const i8_ctx *c = ctx_;
    sq_qtensor *q = c->q;
    const int64_t cols = q->shape[1], r0 = t * c->rows_per_task;
    const int64_t r1 = r0 + c->rows_per_task < c->n_rows ? r0 + c->rows_per_task : c->n_rows;
    c->bad_row[t] = -1;
    c->nomem[t] = false;
    float *x = malloc((size_t)cols * sizeof(float));
    uint16_t *h = malloc((size_t)cols * sizeof(uint16_t));
    if (!x || !h) {
        c->nomem[t] = true;
        goto out;
    }
    for (int64_t i = r0; i < r1; i++) {
        const int64_t r = c->row0 + i;   /* the row of q */
        sq_error e;
        sq_error_init(&e, -1);
        if (sq_convert_to_f32(c->dtype, c->src + (size_t)i * (size_t)cols * c->esize, x,
                              (size_t)cols, &e) != SQ_OK) {
            c->bad_row[t] = r;
            break;
        }
        bool ok = q->type == SQ_QUANT_INT8
                      ? absmax_row(x, h, cols, q->codes + r * cols, &q->row_scale[r])
                      : zp_row(x, cols, q->codes + r * cols, &q->row_scale[r], &q->row_zp[r]);
        if (!ok) {
            c->bad_row[t] = r;
            break;
        }
    }
out:
    free(x);
    free(h);
}

sq_status sq_quant_int8_rows(sq_qtensor *q, int64_t row0, sq_dtype src_dtype, const void *src,
                             int64_t n_rows, sq_pool *pool, sq_error *err) {
    if (!q || !src || !q->codes || !q->row_scale || !sq_quant_type_is_int8(q->type) ||
        (q->type == SQ_QUANT_INT8_ZP && !q->row_zp))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize int8: NULL pointer");
    if (src_dtype != SQ_DTYPE_F32 && src_dtype != SQ_DTYPE_F16 && src_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize int8: source dtype %s (need F32, F16 or BF16)",
                            sq_dtype_name(src_dtype));
    if (row0 < 0 || n_rows < 0 || row0 > q->shape[0] - n_rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize int8: rows %lld + %lld outside [0, %lld)", (long long)row0,
                            (long long)n_rows, (long long)q->shape[0]);
    if (n_rows == 0) return SQ_OK;
    const int64_t cols = q->shape[1];
    int64_t per = SQ_INT8_TASK_ELEMENTS / cols;
    if (per < 1) per = 1;
    const int64_t n_tasks = (n_rows + per - 1) / per;
    sq_status st = SQ_OK;
    i8_ctx c = {src_dtype, src, sq_dtype_size(src_dtype), row0, n_rows, per, q,
                malloc((size_t)n_tasks * sizeof(int64_t)), malloc((size_t)n_tasks * sizeof(bool))};
    if (!c.bad_row || !c.nomem) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "quantize int8: out of memory");
        goto done;
    }
    sq_pool_run(pool, n_tasks, i8_task, &c);
    for (int64_t t = 0; t < n_tasks && st == SQ_OK; t++) {
        if (c.nomem[t])
            st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "quantize int8: out of memory for a row buffer");
        else if (c.bad_row[t] >= 0)
            st = sq_error_set(err, SQ_ERR_FORMAT, NULL, NULL,
                              "row %lld holds NaN or Inf%s: it cannot be quantized to %s",
                              (long long)c.bad_row[t],
                              q->type == SQ_QUANT_INT8 ? " (or a value beyond float16's 65504)" : "",
                              sq_quant_type_name(q->type));
    }
done:
    free(c.bad_row);
    free(c.nomem);
    return st;
}

sq_status sq_quant_int8_from(sq_quant_type type, sq_dtype src_dtype, const void *src,
                             int64_t rows, int64_t cols, sq_pool *pool, sq_qtensor *out,
                             sq_error *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!out || !src)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize int8: NULL pointer");
    if (src_dtype != SQ_DTYPE_F32 && src_dtype != SQ_DTYPE_F16 && src_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize int8: source dtype %s (need F32, F16 or BF16)",
                            sq_dtype_name(src_dtype));
    sq_status st = sq_qtensor_init_int8(out, type, rows, cols, src_dtype, err);
    if (st == SQ_OK) st = sq_quant_int8_rows(out, 0, src_dtype, src, rows, pool, err);
    if (st != SQ_OK) sq_qtensor_free(out);
    return st;
}
