/* quant.c: the public face of the quant module: argument checks, allocation of sq_qtensor,
 * splitting the blocks of a tensor over the thread pool (each task converts its own blocks from
 * BF16/F16/F32 in a bounded per-block buffer: no full-precision copy of the tensor), choosing
 * the CPU code path, and dequantization.  The bit-exact math lives in kernels/quant_math.cuh,
 * double quant in quant_dq.c.  Must never print, exit, or keep mutable globals. */
#include "shardq/quant.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "quant_impl.h"
#include "../../kernels/quant_math.cuh"

/* Elements per pool task: large enough to amortize the hand-out, small enough to balance. */
#define SQ_QUANT_TASK_ELEMENTS (64 * 1024)

/* The tables are stored as bit patterns and read as floats through a union (C11 type punning,
 * no aliasing trouble). */
typedef union { uint32_t u[16]; float f[16]; } table16;
typedef union { uint32_t u[256]; float f[256]; } table256;

const float *sq_quant_code_table(sq_quant_type t) {
    static const table16 nf4 = {SQ_QM_NF4_CODE_BITS}, fp4 = {SQ_QM_FP4_CODE_BITS};
    if (t == SQ_QUANT_NF4) return nf4.f;
    if (t == SQ_QUANT_FP4) return fp4.f;
    return NULL;
}

const float *sq_quant_dynamic_map(void) {
    static const table256 dyn = {SQ_QM_DYN_BITS};
    return dyn.f;
}

bool sq_quant_isa_available(sq_quant_isa isa) {
    if (isa != SQ_QUANT_ISA_AVX2) return true;
#if defined(SQ_QUANT_HAVE_AVX2_CODE)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

static sq_quant_isa resolve_isa(sq_quant_isa isa) {
    if (isa == SQ_QUANT_ISA_AUTO)
        return sq_quant_isa_available(SQ_QUANT_ISA_AVX2) ? SQ_QUANT_ISA_AVX2 : SQ_QUANT_ISA_SCALAR;
    return isa;
}

const char *sq_quant_isa_name(sq_quant_isa isa) {
    return resolve_isa(isa) == SQ_QUANT_ISA_AVX2 ? "avx2" : "scalar";
}

void sq_qtensor_free(sq_qtensor *q) {
    if (!q) return;
    free(q->packed);
    free(q->absmax);
    free(q->absmax_q);
    free(q->nested_absmax);
    free(q->codes);
    free(q->row_scale);
    free(q->row_zp);
    memset(q, 0, sizeof *q);
}

static sq_status check_args(const sq_quant_scheme *s, int64_t rows, int64_t cols, uint64_t *n,
                            sq_error *err) {
    if (!s) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize: no scheme given");
    if (s->type != SQ_QUANT_NF4 && s->type != SQ_QUANT_FP4)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize: scheme type %d is not nf4 or fp4", (int)s->type);
    int64_t B = s->blocksize;
    if (B < 32 || B > SQ_QUANT_MAX_BLOCKSIZE || (B & (B - 1)) != 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize: blocksize %lld is not a power of two in 32..4096",
                            (long long)B);
    if (rows <= 0 || cols <= 0 || !sq_mul_u64((uint64_t)rows, (uint64_t)cols, n) ||
        *n > (uint64_t)INT64_MAX / 2)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize: shape [%lld, %lld] is empty or too large",
                            (long long)rows, (long long)cols);
    return SQ_OK;
}

static sq_status qtensor_init(sq_qtensor *q, const sq_quant_scheme *s, int64_t rows, int64_t cols,
                             sq_dtype orig_dtype, bool huge, sq_error *err) {
    memset(q, 0, sizeof *q);
    uint64_t n = 0;
    sq_status st = check_args(s, rows, cols, &n, err);
    if (st != SQ_OK) return st;
    q->type = s->type;
    q->blocksize = s->blocksize;
    q->n_elements = n;
    q->shape[0] = rows;
    q->shape[1] = cols;
    q->dtype = orig_dtype;
    q->n_blocks = sq_ceil_div_u64(n, (uint64_t)s->blocksize);
    q->double_quant = s->double_quant;
    q->nested_blocksize = SQ_QM_NESTED_BLOCKSIZE;
    q->packed = huge ? sq_alloc_huge((n + 1) / 2) : malloc((size_t)((n + 1) / 2));
    q->absmax = huge ? sq_alloc_huge(q->n_blocks * sizeof(float))
                     : malloc((size_t)q->n_blocks * sizeof(float));
    if (!q->packed || !q->absmax) goto nomem;
    if (q->double_quant) {
        q->absmax_q = malloc((size_t)q->n_blocks);
        q->nested_absmax = malloc((size_t)sq_ceil_div_u64(q->n_blocks, SQ_QM_NESTED_BLOCKSIZE) *
                                  sizeof(float));
        if (!q->absmax_q || !q->nested_absmax) goto nomem;
    }
    return SQ_OK;
nomem:
    sq_qtensor_free(q);
    return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                        "quantize: out of memory for a [%lld, %lld] 4-bit tensor",
                        (long long)rows, (long long)cols);
}

sq_status sq_qtensor_init(sq_qtensor *q, const sq_quant_scheme *s, int64_t rows, int64_t cols,
                          sq_dtype orig_dtype, sq_error *err) {
    return qtensor_init(q, s, rows, cols, orig_dtype, false, err);
}

sq_status sq_qtensor_init_huge(sq_qtensor *q, const sq_quant_scheme *s, int64_t rows,
                               int64_t cols, sq_dtype orig_dtype, sq_error *err) {
    return qtensor_init(q, s, rows, cols, orig_dtype, true, err);
}

typedef struct {
    const sq_quant_job *job;
    uint64_t blocks_per_task;
    sq_quant_isa isa;
} pool_ctx;

static void run_task(void *ctx_, int64_t task, int thread) {
    (void)thread;
    const pool_ctx *c = ctx_;
    uint64_t b0 = (uint64_t)task * c->blocks_per_task;
    uint64_t b1 = b0 + c->blocks_per_task;
    if (b1 > c->job->n_blocks) b1 = c->job->n_blocks;
#if defined(SQ_QUANT_HAVE_AVX2_CODE)
    if (c->isa == SQ_QUANT_ISA_AVX2) {
        sq_quant_blocks_avx2(c->job, b0, b1);
        return;
    }
#endif
    sq_quant_blocks_scalar(c->job, b0, b1);
}

/* The first block of [b0, b1) whose absmax is NaN or Inf (all exponent bits set), or b1; the
 * scan is branch-free per 64 blocks. */
static uint64_t first_nonfinite(const float *absmax, uint64_t b0, uint64_t b1) {
    for (uint64_t g = b0; g < b1; g += 64) {
        const uint64_t ge = g + 64 < b1 ? g + 64 : b1;
        uint32_t bad = 0;
        for (uint64_t b = g; b < ge; b++) {
            uint32_t bits;
            memcpy(&bits, &absmax[b], 4);
            bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (!bad) continue;
        for (uint64_t b = g; b < ge; b++) {
            uint32_t bits;
            memcpy(&bits, &absmax[b], 4);
            if ((bits & 0x7f800000u) == 0x7f800000u) return b;
        }
    }
    return b1;
}

static void run_task_checked(void *ctx_, int64_t task, int thread) {
    run_task(ctx_, task, thread);
    const pool_ctx *c = ctx_;
    uint64_t b0 = (uint64_t)task * c->blocks_per_task;
    uint64_t b1 = b0 + c->blocks_per_task;
    if (b1 > c->job->n_blocks) b1 = c->job->n_blocks;
    const uint64_t bad = first_nonfinite(c->job->absmax, b0, b1);
    if (bad == b1) return;
    uint64_t cur = atomic_load_explicit(c->job->first_bad, memory_order_relaxed);
    while (bad < cur && !atomic_compare_exchange_weak_explicit(c->job->first_bad, &cur, bad,
                                                               memory_order_relaxed,
                                                               memory_order_relaxed)) {
    }
}

/* Runs job over pool (NULL: the calling thread) in tasks of SQ_QUANT_TASK_ELEMENTS. */
static void run_job(const sq_quant_job *job, sq_pool *pool, sq_quant_isa isa) {
    pool_ctx c = {.job = job, .isa = resolve_isa(isa)};
    c.blocks_per_task = SQ_QUANT_TASK_ELEMENTS / (uint64_t)job->blocksize;
    if (c.blocks_per_task == 0) c.blocks_per_task = 1;
    int64_t n_tasks = (int64_t)sq_ceil_div_u64(job->n_blocks, c.blocks_per_task);
    const sq_pool_fn fn = job->first_bad ? run_task_checked : run_task;
    if (pool && n_tasks > 1) {
        sq_pool_run(pool, n_tasks, fn, &c);
    } else {
        for (int64_t t = 0; t < n_tasks; t++) fn(&c, t, 0);
    }
}

bool sq_q4_layout_fits(sq_q4_layout l, int64_t cols, int64_t blocksize) {
    if (l == SQ_Q4_LAYOUT_BNB) return true;
    return l == SQ_Q4_LAYOUT_G64 && cols > 0 && cols % 64 == 0 && blocksize >= 64;
}

/* G64's byte of element e (< 32) of a group, and of e + 32 */
static const uint8_t k_g64_pos[32] = {0,  1,  2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
                                      8,  9,  10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

void sq_q4_convert_groups(const uint8_t *src, uint8_t *dst, uint64_t n_groups, bool to_g64) {
    for (uint64_t g = 0; g < n_groups; g++) {
        uint8_t n[64], out[32];
        const uint8_t *s = src + 32 * g;
        if (to_g64) {
            for (int b = 0; b < 32; b++) {
                n[2 * b] = (uint8_t)(s[b] >> 4);
                n[2 * b + 1] = (uint8_t)(s[b] & 15);
            }
            for (int e = 0; e < 32; e++) out[k_g64_pos[e]] = (uint8_t)(n[e] | (n[e + 32] << 4));
        } else {
            for (int e = 0; e < 32; e++) {
                n[e] = (uint8_t)(s[k_g64_pos[e]] & 15);
                n[e + 32] = (uint8_t)(s[k_g64_pos[e]] >> 4);
            }
            for (int b = 0; b < 32; b++) out[b] = (uint8_t)(n[2 * b] << 4 | n[2 * b + 1]);
        }
        memcpy(dst + 32 * g, out, 32);
    }
}

/* The 4-bit code of flat element i of q, in either layout. */
static inline unsigned q4_code(const sq_qtensor *q, uint64_t i) {
    if (q->layout != SQ_Q4_LAYOUT_G64) return sq_qm_unpack(q->packed, i);
    uint8_t b = q->packed[(i >> 6) * 32 + k_g64_pos[i & 31]];
    return (i & 32) ? (unsigned)(b >> 4) : (unsigned)(b & 15);
}

sq_status sq_quant_4bit_part(sq_qtensor *q, uint64_t first, sq_dtype src_dtype, const void *src,
                             uint64_t n, sq_pool *pool, sq_error *err) {
    return sq_quant_4bit_part_checked(q, first, src_dtype, src, n, pool, SQ_QUANT_ISA_AUTO, NULL,
                                      err);
}

sq_status sq_quant_4bit_part_isa(sq_qtensor *q, uint64_t first, sq_dtype src_dtype,
                                 const void *src, uint64_t n, sq_pool *pool, sq_quant_isa isa,
                                 sq_error *err) {
    return sq_quant_4bit_part_checked(q, first, src_dtype, src, n, pool, isa, NULL, err);
}

sq_status sq_quant_4bit_part_checked(sq_qtensor *q, uint64_t first, sq_dtype src_dtype,
                                     const void *src, uint64_t n, sq_pool *pool, sq_quant_isa isa,
                                     uint64_t *bad_block, sq_error *err) {
    if (bad_block) *bad_block = UINT64_MAX;
    if (!q || !q->packed || !q->absmax || (q->type != SQ_QUANT_NF4 && q->type != SQ_QUANT_FP4))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize part: not a 4-bit tensor with a float32 absmax");
    if (src_dtype != SQ_DTYPE_F32 && src_dtype != SQ_DTYPE_F16 && src_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize: source dtype %d is not F32, F16 or BF16", (int)src_dtype);
    const uint64_t B = (uint64_t)q->blocksize, N = q->n_elements;
    const bool g64 = q->layout == SQ_Q4_LAYOUT_G64;
    if (!src || n == 0 || first > N || n > N - first || first % B != 0 ||
        (first + n != N && n % B != 0) ||
        (g64 && (!sq_q4_layout_fits(q->layout, q->shape[1], q->blocksize) || n % 64 != 0)))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quantize part: elements [%llu, %llu) are not whole blocks of a "
                            "%llu-element tensor (blocksize %llu%s)", (unsigned long long)first,
                            (unsigned long long)(first + n), (unsigned long long)N,
                            (unsigned long long)B, g64 ? ", layout g64" : "");
    sq_quant_job job = {
        .src_dtype = src_dtype, .src = src, .n = n, .blocksize = q->blocksize,
        .is_fp4 = q->type == SQ_QUANT_FP4, .n_blocks = sq_ceil_div_u64(n, B),
        .absmax = q->absmax + first / B, .packed = q->packed + first / 2, .g64 = g64,
    };
    if (!sq_quant_isa_available(isa))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize: the AVX2 code path is not available on this CPU");
    _Atomic uint64_t first_bad = UINT64_MAX;
    if (bad_block) job.first_bad = &first_bad;
    run_job(&job, pool, isa);
    if (bad_block && atomic_load(&first_bad) != UINT64_MAX)
        *bad_block = first / B + atomic_load(&first_bad);
    return SQ_OK;
}

sq_status sq_quant_4bit_isa(sq_dtype src_dtype, const void *src, int64_t rows, int64_t cols,
                            const sq_quant_scheme *s, sq_pool *pool, sq_quant_isa isa,
                            sq_qtensor *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    if (src_dtype != SQ_DTYPE_F32 && src_dtype != SQ_DTYPE_F16 && src_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize: source dtype %d is not F32, F16 or BF16", (int)src_dtype);
    if (!src) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize: no source data");
    if (!sq_quant_isa_available(isa))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "quantize: the AVX2 code path is not available on this CPU");
    sq_status st = sq_qtensor_init(out, s, rows, cols, src_dtype, err);
    if (st != SQ_OK) return st;
    sq_quant_job job = {
        .src_dtype = src_dtype, .src = src, .n = out->n_elements, .blocksize = out->blocksize,
        .is_fp4 = out->type == SQ_QUANT_FP4, .n_blocks = out->n_blocks, .absmax = out->absmax,
        .packed = out->packed,
    };
    run_job(&job, pool, isa);
    st = sq_qtensor_compress(out, err);
    if (st != SQ_OK) sq_qtensor_free(out);
    return st;
}

sq_status sq_quant_4bit_from(sq_dtype src_dtype, const void *src, int64_t rows, int64_t cols,
                             const sq_quant_scheme *s, sq_pool *pool, sq_qtensor *out,
                             sq_error *err) {
    return sq_quant_4bit_isa(src_dtype, src, rows, cols, s, pool, SQ_QUANT_ISA_AUTO, out, err);
}

sq_status sq_quant_4bit(const float *x, int64_t rows, int64_t cols, sq_dtype orig_dtype,
                        const sq_quant_scheme *s, sq_pool *pool, sq_qtensor *out,
                        sq_error *err) {
    sq_status st = sq_quant_4bit_isa(SQ_DTYPE_F32, x, rows, cols, s, pool, SQ_QUANT_ISA_AUTO,
                                     out, err);
    if (st == SQ_OK) out->dtype = orig_dtype;
    return st;
}

float sq_qtensor_absmax(const sq_qtensor *q, uint64_t block) {
    if (!q->double_quant) return q->absmax[block];
    return sq_qm_absmax_dq(sq_qm_dyn_value(q->absmax_q[block]),
                           q->nested_absmax[block / (uint64_t)q->nested_blocksize],
                           q->nested_offset);
}

void sq_dequant_4bit_f32(const sq_qtensor *q, uint64_t first, uint64_t n, float *out) {
    const int is_fp4 = q->type == SQ_QUANT_FP4;
    /* bnb 0.50.2 (CPU) dequantizes natively (FP4 zero = -0.0) when the last dim is even */
    const int native = q->shape[1] % 2 == 0;
    const uint64_t B = (uint64_t)q->blocksize;
    uint64_t i = first, end = first + n;
    while (i < end) {
        uint64_t b = i / B, stop = (b + 1) * B < end ? (b + 1) * B : end;
        float am = sq_qtensor_absmax(q, b);
        for (; i < stop; i++) out[i - first] = sq_qm_dequant(is_fp4, native, q4_code(q, i), am);
    }
}

sq_status sq_dequant_4bit(const sq_qtensor *q, void *out, sq_dtype out_dtype, sq_error *err) {
    if (out_dtype != SQ_DTYPE_F32 && out_dtype != SQ_DTYPE_F16 && out_dtype != SQ_DTYPE_BF16)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "dequantize: output dtype %d is not F32, F16 or BF16", (int)out_dtype);
    if (!q || !q->packed || !out)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "dequantize: empty tensor");
    float buf[1024];
    for (uint64_t i = 0; i < q->n_elements; i += 1024) {
        uint64_t m = q->n_elements - i < 1024 ? q->n_elements - i : 1024;
        sq_dequant_4bit_f32(q, i, m, buf);
        if (out_dtype == SQ_DTYPE_F32) {
            memcpy((float *)out + i, buf, (size_t)m * sizeof(float));
        } else if (out_dtype == SQ_DTYPE_BF16) {
            for (uint64_t j = 0; j < m; j++) ((uint16_t *)out)[i + j] = sq_qm_f32_to_bf16(buf[j]);
        } else {
            for (uint64_t j = 0; j < m; j++) ((uint16_t *)out)[i + j] = sq_qm_f32_to_f16(buf[j]);
        }
    }
    return SQ_OK;
}
