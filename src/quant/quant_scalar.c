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

void sq_quant_block_scalar(const float *x, int64_t len, bool tail, int is_fp4, float *absmax,
                           uint8_t *packed) {
    float am = 0.0f;
    for (int64_t i = 0; i < len; i++) am = sq_qm_absmax_step(am, x[i]);
    unsigned q[2];
    int k = 0;
    if (!tail) {
        /* full block: stored absmax unclamped; multiply by the IEEE reciprocal */
        *absmax = am;
        float r = sq_qm_full_recip(am);
        for (int64_t i = 0; i < len; i++) {
            q[k++] = sq_qm_encode(is_fp4, sq_qm_scale_full(x[i], r));
            if (k == 2) { packed[i >> 1] = sq_qm_pack(q[0], q[1]); k = 0; }
        }
    } else {
        /* trailing partial block: absmax clamped to 1e-38 (stored so), true division */
        am = sq_qm_absmax_floor(am);
        *absmax = am;
        for (int64_t i = 0; i < len; i++) {
            q[k++] = sq_qm_encode(is_fp4, sq_qm_scale_tail(x[i], am));
            if (k == 2) { packed[i >> 1] = sq_qm_pack(q[0], q[1]); k = 0; }
        }
    }
    /* odd count: bnb pads the scaled values with 0.0 */
    if (k == 1) packed[len >> 1] = sq_qm_pack(q[0], sq_qm_encode(is_fp4, 0.0f));
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
    }
}
