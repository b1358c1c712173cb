/* ggml_quant_math.cuh: the per-block math of ggml's tensor types (GGUF), shared by the CPU
 * (src/quant/ggml_quant.c, src/backend/cpu_ggml.c, plain C) and the CUDA kernels
 * (kernels/ggml_linear.cu), so that the CPU tests also test the GPU's arithmetic.  Owns: the
 * IEEE half -> float conversion, the block layouts (block_q4_0 … block_q6_K, as ggml-common.h
 * lays them out, little-endian), get_scale_min_k4, and for every block type the two views of
 * one element:
 *   - sq_gq_elem(): the value ggml's dequantize_row_<type> writes, in ggml's operation order;
 *   - sq_gq_code() / sq_gq_sub_params(): the same value as an integer code, a float32 scale
 *     and an optional float32 bias per sub-block, with value = scale * code (+ bias) in two
 *     roundings.  That is the block-scaled integer form the backends store (sq_qblock_format):
 *       Q4_0  code = q - 8         scale = d                       no bias
 *       Q4_1  code = q             scale = d           bias = m
 *       Q5_0  code = q - 16        scale = d                       no bias
 *       Q5_1  code = q             scale = d           bias = m
 *       Q8_0  code = q (int8)      scale = d                       no bias
 *       Q4_K  code = q (4 bits)    scale = d * sc[j]   bias = -(dmin * m[j])   (32 per sub-block)
 *       Q5_K  code = q (5 bits)    scale = d * sc[j]   bias = -(dmin * m[j])   (32 per sub-block)
 *       Q6_K  code = q - 32        scale = d * sc[j]               no bias     (16 per sub-block)
 *     It is exact: ggml computes d1 = d * sc and m1 = dmin * m once (float32) and then
 *     d1 * q - m1, and x - m1 is the same IEEE operation as x + (-m1); ggml's x0 * d with an
 *     int x0 is d * (float)x0.  The tests check both views against gguf.quants.dequantize.
 * Must never allocate, log, touch global state, or be compiled with fast-math / FMA contraction
 * (C builds with -ffp-contract=off, CUDA with --fmad=false: value = scale * code + bias is two
 * roundings, as in ggml's reference C). */
#ifndef SHARDQ_GGML_QUANT_MATH_CUH
#define SHARDQ_GGML_QUANT_MATH_CUH

#include <stdint.h>

#if defined(__CUDACC__)
#define SQ_GQ_HD __host__ __device__ __forceinline__
#else
#define SQ_GQ_HD static inline
#endif

/* ggml_type numbers (the same as sq_ggml_type in include/shardq/ggml_quant.h) */
#define SQ_GQ_F32 0
#define SQ_GQ_F16 1
#define SQ_GQ_Q4_0 2
#define SQ_GQ_Q4_1 3
#define SQ_GQ_Q5_0 6
#define SQ_GQ_Q5_1 7
#define SQ_GQ_Q8_0 8
#define SQ_GQ_Q4_K 12
#define SQ_GQ_Q5_K 13
#define SQ_GQ_Q6_K 14
#define SQ_GQ_BF16 30

#define SQ_GQ_QK 32     /* elements of a Q4_0 … Q8_0 block */
#define SQ_GQ_QK_K 256  /* elements of a K block */

/* Bytes per block (ggml-common.h's static asserts). */
#define SQ_GQ_Q4_0_BYTES 18   /* half d; u8 qs[16] */
#define SQ_GQ_Q4_1_BYTES 20   /* half d, m; u8 qs[16] */
#define SQ_GQ_Q5_0_BYTES 22   /* half d; u8 qh[4]; u8 qs[16] */
#define SQ_GQ_Q5_1_BYTES 24   /* half d, m; u8 qh[4]; u8 qs[16] */
#define SQ_GQ_Q8_0_BYTES 34   /* half d; i8 qs[32] */
#define SQ_GQ_Q4_K_BYTES 144  /* half d, dmin; u8 scales[12]; u8 qs[128] */
#define SQ_GQ_Q5_K_BYTES 176  /* half d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] */
#define SQ_GQ_Q6_K_BYTES 210  /* u8 ql[128]; u8 qh[64]; i8 scales[16]; half d */

SQ_GQ_HD float sq_gq_f32_bits(uint32_t u) {
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}

/* IEEE binary16 -> float32, exact for every input (subnormals included; an Inf stays Inf, a NaN
 * keeps its payload shifted into the float's mantissa, as numpy converts it). */
SQ_GQ_HD float sq_gq_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        /* m * 2^-24 is exact in float32 (m < 2^10) */
        float v = (float)m * 5.9604644775390625e-8f;
        union { float f; uint32_t u; } t;
        t.f = v;
        return sq_gq_f32_bits(t.u | sign);
    }
    if (e == 31) return sq_gq_f32_bits(sign | 0x7f800000u | (m << 13));
    return sq_gq_f32_bits(sign | ((e + 112u) << 23) | (m << 13));
}
SQ_GQ_HD float sq_gq_bf16(uint16_t h) { return sq_gq_f32_bits((uint32_t)h << 16); }

SQ_GQ_HD uint16_t sq_gq_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
SQ_GQ_HD uint32_t sq_gq_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K. */
SQ_GQ_HD void sq_gq_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* ---- the block-scaled integer view -------------------------------------------------------- */

/* Elements per sub-block (one scale, one bias): 16 for Q6_K, 32 for the other block types. */
SQ_GQ_HD int sq_gq_sub_elems(int type) { return type == SQ_GQ_Q6_K ? 16 : 32; }

/* Scale and bias (0 when the type has none) of sub-block s of the block at blk. */
SQ_GQ_HD void sq_gq_sub_params(int type, const uint8_t *blk, int s, float *scale, float *bias) {
    int sc, m;
    *bias = 0.0f;
    switch (type) {
    case SQ_GQ_Q4_0: case SQ_GQ_Q5_0: case SQ_GQ_Q8_0:
        *scale = sq_gq_f16(sq_gq_u16(blk));
        break;
    case SQ_GQ_Q4_1: case SQ_GQ_Q5_1:
        *scale = sq_gq_f16(sq_gq_u16(blk));
        *bias = sq_gq_f16(sq_gq_u16(blk + 2));
        break;
    case SQ_GQ_Q4_K: case SQ_GQ_Q5_K:
        sq_gq_scale_min_k4(s, blk + 4, &sc, &m);
        *scale = sq_gq_f16(sq_gq_u16(blk)) * (float)sc;
        *bias = -(sq_gq_f16(sq_gq_u16(blk + 2)) * (float)m);
        break;
    case SQ_GQ_Q6_K:
        *scale = sq_gq_f16(sq_gq_u16(blk + 208)) * (float)(int8_t)blk[192 + s];
        break;
    default:
        *scale = 0.0f;
        break;
    }
}

/* Integer code of element i of the block at blk (value = scale * code + bias). */
SQ_GQ_HD int sq_gq_code(int type, const uint8_t *blk, int i) {
    switch (type) {
    case SQ_GQ_Q4_0: return ((blk[2 + (i & 15)] >> ((i >> 4) * 4)) & 0xF) - 8;
    case SQ_GQ_Q4_1: return (blk[4 + (i & 15)] >> ((i >> 4) * 4)) & 0xF;
    case SQ_GQ_Q5_0: {
        int lo = (blk[6 + (i & 15)] >> ((i >> 4) * 4)) & 0xF;
        return (lo | (int)(((sq_gq_u32(blk + 2) >> i) & 1u) << 4)) - 16;
    }
    case SQ_GQ_Q5_1: {
        int lo = (blk[8 + (i & 15)] >> ((i >> 4) * 4)) & 0xF;
        return lo | (int)(((sq_gq_u32(blk + 4) >> i) & 1u) << 4);
    }
    case SQ_GQ_Q8_0: return (int8_t)blk[2 + i];
    case SQ_GQ_Q4_K: {
        /* 64-element chunk c: 32 bytes, element l (< 32) low nibble, l + 32 high nibble */
        int c = i >> 6, l = i & 31, hi = (i >> 5) & 1;
        return (blk[16 + 32 * c + l] >> (4 * hi)) & 0xF;
    }
    case SQ_GQ_Q5_K: {
        int c = i >> 6, l = i & 31, hi = (i >> 5) & 1, sub = i >> 5;
        int lo = (blk[48 + 32 * c + l] >> (4 * hi)) & 0xF;
        return lo | (((blk[16 + l] >> sub) & 1) << 4);
    }
    case SQ_GQ_Q6_K: {
        /* 128-element half n: ql 64 bytes, qh 32 bytes; quarter g = (i % 128) / 32 */
        int n = i >> 7, r = i & 127, g = r >> 5, l = r & 31;
        int ql = blk[64 * n + l + 32 * (g & 1)];
        int lo = (g < 2) ? (ql & 0xF) : (ql >> 4);
        int h = (blk[128 + 32 * n + l] >> (2 * g)) & 3;
        return (lo | (h << 4)) - 32;
    }
    default: return 0;
    }
}

/* ---- ggml's own order ---------------------------------------------------------------------- */

/* Element i of the block at blk exactly as ggml's dequantize_row_<type> computes it. */
SQ_GQ_HD float sq_gq_elem(int type, const uint8_t *blk, int i) {
    switch (type) {
    case SQ_GQ_F32: return sq_gq_f32_bits(sq_gq_u32(blk + 4 * i));
    case SQ_GQ_F16: return sq_gq_f16(sq_gq_u16(blk + 2 * i));
    case SQ_GQ_BF16: return sq_gq_bf16(sq_gq_u16(blk + 2 * i));
    case SQ_GQ_Q4_0: case SQ_GQ_Q5_0: case SQ_GQ_Q8_0:   /* x0 * d */
        return (float)sq_gq_code(type, blk, i) * sq_gq_f16(sq_gq_u16(blk));
    case SQ_GQ_Q4_1: case SQ_GQ_Q5_1:                    /* x0 * d + m */
        return (float)sq_gq_code(type, blk, i) * sq_gq_f16(sq_gq_u16(blk)) +
               sq_gq_f16(sq_gq_u16(blk + 2));
    case SQ_GQ_Q4_K: case SQ_GQ_Q5_K: {                  /* d1 * q - m1 */
        int sc, m;
        sq_gq_scale_min_k4(i >> 5, blk + 4, &sc, &m);
        float d1 = sq_gq_f16(sq_gq_u16(blk)) * (float)sc;
        float m1 = sq_gq_f16(sq_gq_u16(blk + 2)) * (float)m;
        return d1 * (float)sq_gq_code(type, blk, i) - m1;
    }
    case SQ_GQ_Q6_K:                                     /* d * sc[is] * q */
        return sq_gq_f16(sq_gq_u16(blk + 208)) * (float)(int8_t)blk[192 + (i >> 4)] *
               (float)sq_gq_code(type, blk, i);
    default: return 0.0f;
    }
}

/* Element value from the block-scaled integer view (the backends' arithmetic). */
SQ_GQ_HD float sq_gq_qblock_value(int code, float scale, float bias, int has_bias) {
    float v = scale * (float)code;
    return has_bias ? v + bias : v;
}

#endif
