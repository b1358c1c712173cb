/* The CPU backend: host memory, weight upload (dense kept as F32 / BF16; 4-bit repacked per
 * 64-element group by cpu_linear.c, any in_features), element-wise ops, embedding and RMSNorm.
 * Kernels for Linear, RoPE, attention and sampling are in cpu_linear.c, cpu_attn.c and
 * cpu_sample.c.
 * Must never keep a dequantized copy of a 4-bit weight, allocate inside an op, or print. */
#include "cpu_impl.h"
#include "cpu_q8i.h"

#include <math.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>

/* ---- life cycle and memory ---------------------------------------------------------------- */

/* the kernels in use; ", int8 activations" when Linear quantizes them (cpu_q8.c) */
static const char *cpu_name(const sq_backend *be) {
    const sq_cpu *c = (const sq_cpu *)be;
    switch (c->isa) {
    case SQ_CPU_AVX512:
        if (c->act_int8) return c->vnni ? "cpu-avx512vl, int8 activations (vnni)" : "cpu-avx512vl, int8 activations";
        return "cpu-avx512vl";
    case SQ_CPU_AVX2: return c->act_int8 ? "cpu-avx2, int8 activations" : "cpu-avx2";
    default: return c->act_int8 ? "cpu-portable, int8 activations" : "cpu-portable";
    }
}

static void cpu_destroy(sq_backend *be) {
    sq_cpu *c = sq_cpu_of(be);
    sq_pool_destroy(c->pool);
    free(c->sample_idx);
    free(c->sample_p);
    free(c->q8_buf);
    free(c);
}

static sq_status cpu_reserve(sq_backend *be, const sq_backend_limits *lim, sq_error *err) {
    sq_cpu *c = sq_cpu_of(be);
    sq_status st = sq_cpu_reserve_q8(c, lim->max_rows, lim->max_width, err);
    if (st != SQ_OK) return st;
    if (lim->max_vocab > 0 && (lim->max_rows > c->sample_cap_rows ||
                               lim->max_vocab > c->sample_cap_vocab)) {
        uint64_t n = 0;
        if (!sq_mul_u64((uint64_t)lim->max_rows, (uint64_t)lim->max_vocab, &n) ||
            n > (UINT64_C(1) << 34))
            return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                                "backend reserve: sampling scratch for %lld x %lld is too large",
                                (long long)lim->max_rows, (long long)lim->max_vocab);
        int32_t *idx = malloc(n * sizeof *idx + 1);
        double *p = malloc(n * sizeof *p + 1);
        if (!idx || !p) {
            free(idx);
            free(p);
            return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                                "backend reserve: out of memory for sampling scratch");
        }
        free(c->sample_idx);
        free(c->sample_p);
        c->sample_idx = idx;
        c->sample_p = p;
        c->sample_cap_rows = lim->max_rows;
        c->sample_cap_vocab = lim->max_vocab;
    }
    return SQ_OK;
}

static sq_status cpu_alloc(sq_backend *be, uint64_t n, void **out, sq_error *err) {
    uint64_t rounded = (n + 63) & ~UINT64_C(63);
    if (rounded < n || rounded > (UINT64_C(1) << 46))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "backend alloc: %llu bytes is too large",
                            (unsigned long long)n);
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "backend alloc: out of memory for %llu bytes",
                            (unsigned long long)n);
    *out = p;
    return SQ_OK;
}
static void cpu_free(sq_backend *be, void *p) { free(p); }
static sq_status cpu_upload(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    memcpy(dst, src, n);
    return SQ_OK;
}
static sq_status cpu_download(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    memcpy(dst, src, n);
    return SQ_OK;
}
static sq_status cpu_copy(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    memmove(dst, src, n);
    return SQ_OK;
}
static sq_status cpu_memset(sq_backend *be, void *dst, int v, uint64_t n, sq_error *err) {
    memset(dst, v, n);
    return SQ_OK;
}
static sq_status cpu_sync(sq_backend *be, sq_error *err) { return SQ_OK; }

/* ---- weights ------------------------------------------------------------------------------ */

static sq_status cpu_weight_dense(sq_backend *be, sq_weight *w, sq_dtype dt, const void *src,
                                  sq_error *err) {
    uint64_t n = (uint64_t)w->rows * (uint64_t)w->cols;
    w->store = dt == SQ_DTYPE_BF16 ? SQ_WSTORE_BF16 : SQ_WSTORE_F32;
    uint64_t bytes = n * (w->store == SQ_WSTORE_BF16 ? 2 : 4);
    sq_status st = cpu_alloc(be, bytes, &w->data_d, err);
    if (st != SQ_OK) return st;
    if (dt == SQ_DTYPE_F16) sq_f16_to_f32(src, w->data_d, n);
    else memcpy(w->data_d, src, bytes);
    w->n_bytes = bytes;
    return SQ_OK;
}

/* Repacked into the layout of sq_cpu_q4_pos (cpu_impl.h, any in_features; cpu_linear.c does
 * it); absmax stays one float32 per bnb block (flat index (o * cols + k) / blocksize, blocks
 * may cross rows), double-quant absmax expanded once.  In int8 mode then interleaved by 16
 * outputs where it fits (sq_cpu_q4_q8i). */
static sq_status cpu_weight_4bit(sq_backend *be, sq_weight *w, const sq_qtensor *q,
                                 sq_error *err) {
    const float *code = sq_quant_code_table(q->type);
    if (!code)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name, "no code table for quant type %d",
                            (int)q->type);
    memcpy(w->code, code, sizeof w->code);
    uint64_t packed_bytes = (uint64_t)w->rows * (uint64_t)sq_cpu_q4_row_bytes(w->cols);
    void *packed = NULL, *absmax = NULL;
    sq_status st = cpu_alloc(be, packed_bytes, &packed, err);
    if (st == SQ_OK) st = cpu_alloc(be, q->n_blocks * sizeof(float), &absmax, err);
    if (st != SQ_OK) {
        free(packed);
        return st;
    }
    sq_cpu_q4_repack(sq_cpu_of(be)->pool, q->packed, packed, w->rows, w->cols);
    float *am = absmax;
    for (uint64_t b = 0; b < q->n_blocks; b++)
        am[b] = q->double_quant ? sq_qtensor_absmax(q, b) : q->absmax[b];
    w->data_d = packed;
    w->absmax_d = absmax;
    w->n_bytes = packed_bytes + q->n_blocks * sizeof(float);
    return sq_cpu_q4_q8i(be, w, err);
}

static void cpu_weight_release(sq_backend *be, sq_weight *w) {
    if (w->map) munmap(w->map, w->map_len);   /* data_d lies in it */
    else free(w->data_d);
    w->map = NULL;
    free(w->absmax_d);
    free(w->bias_d);
    w->data_d = w->absmax_d = w->bias_d = NULL;
}

/* Row r of a dense weight as float32 (copies BF16 rows). */
static void dense_row(const sq_weight *w, int64_t r, float *out) {
    if (w->store == SQ_WSTORE_BF16) {
        const uint16_t *s = (const uint16_t *)w->data_d + r * w->cols;
        for (int64_t i = 0; i < w->cols; i++) out[i] = sq_bf16_to_f32_1(s[i]);
    } else {
        memcpy(out, (const float *)w->data_d + r * w->cols, (size_t)w->cols * sizeof(float));
    }
}

/* ---- embedding, RMSNorm, element-wise ------------------------------------------------------ */

static sq_status cpu_embed(sq_backend *be, const sq_weight *t, const void *ids_d, int64_t n_rows,
                           void *out_d, sq_error *err) {
    const int32_t *ids = ids_d;
    for (int64_t r = 0; r < n_rows; r++)
        if (ids[r] < 0 || ids[r] >= t->rows)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, t->name,
                                "token id %d at row %lld is outside the vocabulary [0, %lld)",
                                ids[r], (long long)r, (long long)t->rows);
    float *out = out_d;
    for (int64_t r = 0; r < n_rows; r++) {
        if (t->store == SQ_WSTORE_QBLOCK) sq_cpu_ggml_row(t, ids[r], out + r * t->cols);
        else dense_row(t, ids[r], out + r * t->cols);
    }
    return SQ_OK;
}

typedef struct {
    const float *x;
    const sq_weight *w;
    float eps;
    float *out;
} rms_ctx;

static void rms_task(void *ctx_, int64_t r, int thread) {
    const rms_ctx *c = ctx_;
    int64_t n = c->w->cols;
    const float *x = c->x + r * n;
    float *y = c->out + r * n;
    double ss = 0.0;   /* float64 sum of squares: fixed order, no cancellation issue */
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + (double)c->eps));
    if (c->w->store == SQ_WSTORE_BF16) {
        const uint16_t *wb = c->w->data_d;
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * sq_bf16_to_f32_1(wb[i]);
    } else {
        const float *wf = c->w->data_d;
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * wf[i];
    }
}

static sq_status cpu_rmsnorm(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                             int64_t n_rows, void *out_d, sq_error *err) {
    rms_ctx c = {x_d, w, eps, out_d};
    bool small = (uint64_t)n_rows * (uint64_t)w->cols < SQ_CPU_SERIAL_WORK / 4;
    sq_pool_run(small ? NULL : sq_cpu_of(be)->pool, n_rows, rms_task, &c);
    return SQ_OK;
}

static sq_status cpu_add(sq_backend *be, const void *a_d, const void *b_d, int64_t n,
                         void *out_d, sq_error *err) {
    const float *a = a_d, *b = b_d;
    float *o = out_d;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] + b[i];
    return SQ_OK;
}

static sq_status cpu_swiglu(sq_backend *be, const void *g_d, const void *u_d, int64_t n,
                            void *out_d, sq_error *err) {
    const float *g = g_d, *u = u_d;
    float *o = out_d;
    for (int64_t i = 0; i < n; i++) o[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
    return SQ_OK;
}

static const sq_backend_ops cpu_ops = {
    .name = cpu_name, .destroy = cpu_destroy, .reserve = cpu_reserve, .alloc = cpu_alloc,
    .free = cpu_free, .upload = cpu_upload, .download = cpu_download, .copy = cpu_copy,
    .memset = cpu_memset, .sync = cpu_sync, .weight_dense = cpu_weight_dense,
    .weight_dense_take = sq_cpu_weight_dense_take, .weight_dense_map = sq_cpu_weight_dense_map,
    .weight_4bit = cpu_weight_4bit, .weight_4bit_g64 = sq_cpu_weight_4bit_g64,
    .weight_ggml = sq_cpu_weight_ggml,
    .weight_release = cpu_weight_release, .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm, .rope = sq_cpu_rope, .attention = sq_cpu_attention,
    .linear = sq_cpu_linear, .linear_multi = sq_cpu_linear_multi, .add = cpu_add, .swiglu = cpu_swiglu, .sample = sq_cpu_sample,
};

sq_status sq_backend_cpu_set_activations(sq_backend *be, sq_cpu_activations a, sq_error *err) {
    if (!be || be->ops != &cpu_ops)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "--activations int8|f32 is a cpu backend setting; this backend is %s",
                            be ? sq_backend_name(be) : "none");
    if (a != SQ_CPU_ACT_F32 && a != SQ_CPU_ACT_INT8 && a != SQ_CPU_ACT_DEFAULT)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "activations: unknown mode %d", (int)a);
    sq_cpu_of(be)->act_int8 = a == SQ_CPU_ACT_DEFAULT ? SQ_CPU_ACT_INT8_DEFAULT : a == SQ_CPU_ACT_INT8;
    return SQ_OK;
}

bool sq_backend_cpu_activations_int8(const sq_backend *be) {
    return be && be->ops == &cpu_ops && ((const sq_cpu *)be)->act_int8;
}

sq_status sq_backend_create_cpu(int n_threads, sq_backend **out, sq_error *err) {
    if (!out) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend: NULL output");
    *out = NULL;
    sq_cpu *c = calloc(1, sizeof *c);
    if (!c) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the cpu backend");
    sq_status st = sq_pool_create(n_threads, &c->pool, err);
    if (st != SQ_OK) {
        free(c);
        return st;
    }
    c->base.ops = &cpu_ops;
    c->base.n_threads = sq_pool_n_threads(c->pool);
    __builtin_cpu_init();
    c->isa = SQ_CPU_PORTABLE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        c->isa = SQ_CPU_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
            c->isa = SQ_CPU_AVX512;
    }
    c->vnni = c->isa == SQ_CPU_AVX512 && __builtin_cpu_supports("avx512vnni");
    /* SHARDQ_CPU_ISA=portable|avx2 caps the kernels (tests compare paths; benches) */
    const char *cap = getenv("SHARDQ_CPU_ISA");
    if (cap && strcmp(cap, "portable") == 0) c->isa = SQ_CPU_PORTABLE;
    else if (cap && strcmp(cap, "avx2") == 0 && c->isa > SQ_CPU_AVX2) c->isa = SQ_CPU_AVX2;
    if (c->isa != SQ_CPU_AVX512) c->vnni = false;
    c->zmm = c->vnni && __builtin_cpu_supports("avx512bw");
    c->act_int8 = SQ_CPU_ACT_INT8_DEFAULT;
    *out = &c->base;
    return SQ_OK;
}
