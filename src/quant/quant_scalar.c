/* quant_scalar.c: the portable block quantizer (the reference every faster path must equal
 * byte for byte) and the dtype loader both paths use.  All per-element math comes from
 * kernels/quant_math.cuh.  Must never allocate, log, or depend on the CPU's features. */
#include "quant_impl.h"

#include <string.h>

#include "../../kernels/quant_math.cuh"

/* Sources need no alignment (a safetensors tensor may start at any byte): elements are read
 * with memcpy, which compiles to plain loads. */
void sq_quant_load_f32(sq_dtype d, const void *src, uint64_t first, int64_t n, float *dst) {
    const unsigned char *p = (const unsigned char *)src;
    switch (d) {
    case SQ_DTYPE_BF16:
    case SQ_DTYPE_F16: {
        p += first * 2u;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = d == SQ_DTYPE_BF16 ? sq_qm_bf16_to_f32(h) : sq_qm_f16_to_f32(h);
        }
        break;
    }
    default:  /* F32 (the caller checked the dtype) */
        memcpy(dst, p + first * 4u, (size_t)n * sizeof(float));
        break;
    }
}

/* Portable, but written so the compiler can vectorize it with the baseline ISA (SSE2, NEON):
 * one loop scales, one loop finds codes by branch-free compare counts, one loop packs. */
void sq_quant_block_scalar(const float *x, int64_t len, bool tail, int is_fp4, float *absmax,
                           uint8_t *packed) {
    float am = 0.0f;
    for (int64_t i = 0; i < len; i++) am = sq_qm_absmax_step(am, x[i]);
    float s[SQ_QUANT_MAX_BLOCKSIZE + 4];
    if (!tail) {
        /* full block: stored absmax unclamped; multiply by the IEEE reciprocal */
        *absmax = am;
        const float r = sq_qm_full_recip(am);
        for (int64_t i = 0; i < len; i++) s[i] = sq_qm_scale_full(x[i], r);
    } else {
        /* trailing partial block: absmax clamped to 1e-38 (stored so), true division */
        am = sq_qm_absmax_floor(am);
        *absmax = am;
        for (int64_t i = 0; i < len; i++) s[i] = sq_qm_scale_tail(x[i], am);
    }
    s[len] = 0.0f;  /* bnb pads an odd count with a scaled 0 */
    uint8_t q[SQ_QUANT_MAX_BLOCKSIZE + 4];
    const int64_t m = len + (len & 1);
    static const uint32_t nb[15] = SQ_QM_NF4_BOUND_BITS, fb[15] = SQ_QM_FP4_BOUND_BITS;
    static const uint8_t order[16] = SQ_QM_FP4_ORDER;
    float bounds[15];
    for (int k = 0; k < 15; k++) bounds[k] = sq_qm_f32(is_fp4 ? fb[k] : nb[k]);
    /* GCC/Clang generic vectors: SSE2 / NEON without target-specific code.  ~(v <= b) is -1
     * exactly where !(v <= b), NaN included. */
    typedef float v4f __attribute__((vector_size(16)));
    typedef int32_t v4i __attribute__((vector_size(16)));
    for (int64_t i = m; i < ((m + 3) & ~(int64_t)3); i++) s[i] = 0.0f;
    for (int64_t i = 0; i < m; i += 4) {
        v4f v;
        memcpy(&v, s + i, sizeof v);
        v4i c = {0, 0, 0, 0};
        for (int k = 0; k < 15; k++) {
            v4f b = {bounds[k], bounds[k], bounds[k], bounds[k]};
            c -= ~(v4i)(v <= b);
        }
        for (int j = 0; j < 4; j++) q[i + j] = (uint8_t)c[j];
    }
    if (is_fp4)
        for (int64_t i = 0; i < m; i++) q[i] = order[q[i]];
    for (int64_t j = 0; j < m / 2; j++) packed[j] = sq_qm_pack(q[2 * j], q[2 * j + 1]);
}

void sq_quant_blocks_scalar(const sq_quant_job *job, uint64_t b0, uint64_t b1) {
    float buf[SQ_QUANT_MAX_BLOCKSIZE];
    const uint64_t B = (uint64_t)job->blocksize;
    for (uint64_t b = b0; b < b1; b++) {
        uint64_t first = b * B;
        uint64_t len = job->n - first < B ? job->n - first : B;
        sq_quant_load_f32(job->src_dtype, job->src, first, (int64_t)len, buf);
        /* B is even, so a block starts on a byte boundary */
        sq_quant_block_scalar(buf, (int64_t)len, len < B, job->is_fp4, &job->absmax[b],
                              job->packed + first / 2);
        if (job->g64)   /* len is whole groups of 64 then */
            sq_q4_convert_groups(job->packed + first / 2, job->packed + first / 2, len / 64, true);
    }
}
