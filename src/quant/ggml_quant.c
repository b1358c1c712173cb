/* ggml_quant: GGUF tensor types — names, block sizes, row sizes, ggml-exact dequantization and
 * the conversion of a stored row into the block-scaled integer form (codes + float32 scale +
 * optional bias per sub-block) that the backends compute on.  The per-element math is in
 * kernels/ggml_quant_math.cuh, shared with the CUDA kernels.
 * Must never allocate, print, or round a value twice where ggml rounds it once (the project
 * compiles C with -ffp-contract=off). */
#include "shardq/ggml_quant.h"

#include <stdio.h>
#include <string.h>

#include "../../kernels/ggml_quant_math.cuh"

const char *sq_ggml_type_name(int type) {
    switch (type) {
    case 0: return "F32";
    case 1: return "F16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 4: return "Q4_2";   /* removed from ggml; still named so a refusal is clear */
    case 5: return "Q4_3";
    case 6: return "Q5_0";
    case 7: return "Q5_1";
    case 8: return "Q8_0";
    case 9: return "Q8_1";
    case 10: return "Q2_K";
    case 11: return "Q3_K";
    case 12: return "Q4_K";
    case 13: return "Q5_K";
    case 14: return "Q6_K";
    case 15: return "Q8_K";
    case 16: return "IQ2_XXS";
    case 17: return "IQ2_XS";
    case 18: return "IQ3_XXS";
    case 19: return "IQ1_S";
    case 20: return "IQ4_NL";
    case 21: return "IQ3_S";
    case 22: return "IQ2_S";
    case 23: return "IQ4_XS";
    case 24: return "I8";
    case 25: return "I16";
    case 26: return "I32";
    case 27: return "I64";
    case 28: return "F64";
    case 29: return "IQ1_M";
    case 30: return "BF16";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    case 39: return "MXFP4";
    default: return NULL;
    }
}

bool sq_ggml_type_supported(int type) {
    switch (type) {
    case SQ_GGML_F32: case SQ_GGML_F16: case SQ_GGML_BF16: case SQ_GGML_Q4_0: case SQ_GGML_Q4_1:
    case SQ_GGML_Q5_0: case SQ_GGML_Q5_1: case SQ_GGML_Q8_0: case SQ_GGML_Q4_K:
    case SQ_GGML_Q5_K: case SQ_GGML_Q6_K:
        return true;
    default:
        return false;
    }
}

int64_t sq_ggml_block_elems(int type) {
    switch (type) {
    case SQ_GGML_F32: case SQ_GGML_F16: case SQ_GGML_BF16: return 1;
    case SQ_GGML_Q4_0: case SQ_GGML_Q4_1: case SQ_GGML_Q5_0: case SQ_GGML_Q5_1:
    case SQ_GGML_Q8_0: return SQ_GQ_QK;
    case SQ_GGML_Q4_K: case SQ_GGML_Q5_K: case SQ_GGML_Q6_K: return SQ_GQ_QK_K;
    default: return 0;
    }
}

int64_t sq_ggml_block_bytes(int type) {
    switch (type) {
    case SQ_GGML_F32: return 4;
    case SQ_GGML_F16: case SQ_GGML_BF16: return 2;
    case SQ_GGML_Q4_0: return SQ_GQ_Q4_0_BYTES;
    case SQ_GGML_Q4_1: return SQ_GQ_Q4_1_BYTES;
    case SQ_GGML_Q5_0: return SQ_GQ_Q5_0_BYTES;
    case SQ_GGML_Q5_1: return SQ_GQ_Q5_1_BYTES;
    case SQ_GGML_Q8_0: return SQ_GQ_Q8_0_BYTES;
    case SQ_GGML_Q4_K: return SQ_GQ_Q4_K_BYTES;
    case SQ_GGML_Q5_K: return SQ_GQ_Q5_K_BYTES;
    case SQ_GGML_Q6_K: return SQ_GQ_Q6_K_BYTES;
    default: return 0;
    }
}

static const char *name_or_number(int type, char buf[16]) {
    const char *nm = sq_ggml_type_name(type);
    if (nm) return nm;
    snprintf(buf, 16, "#%d", type);
    return buf;
}

sq_status sq_ggml_row_bytes(int type, int64_t n, uint64_t *out, sq_error *err) {
    if (out) *out = 0;
    char buf[16];
    if (!sq_ggml_type_supported(type))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "ggml tensor type %s is not supported (supported: F32, F16, BF16, "
                            "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                            name_or_number(type, buf));
    int64_t be = sq_ggml_block_elems(type);
    if (n <= 0 || n % be != 0 || n > (INT64_C(1) << 40))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "ggml tensor type %s: a row of %lld elements is not a positive "
                            "multiple of its block of %lld",
                            name_or_number(type, buf), (long long)n, (long long)be);
    if (out) *out = (uint64_t)(n / be) * (uint64_t)sq_ggml_block_bytes(type);
    return SQ_OK;
}

/* ---- dequantization in ggml's loop order ----------------------------------------------------- */

/* Q4_K / Q5_K: per 64-element chunk, d1 = d * sc and m1 = dmin * m for both halves, then
 * y = d1 * q - m1 (dequantize_row_q4_K / q5_K). */
static void deq_k45(int type, const uint8_t *b, float *y) {
    const float d = sq_gq_f16(sq_gq_u16(b)), mn = sq_gq_f16(sq_gq_u16(b + 2));
    for (int j = 0; j < 8; j++) {
        int sc, m;
        sq_gq_scale_min_k4(j, b + 4, &sc, &m);
        const float d1 = d * (float)sc, m1 = mn * (float)m;
        for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * (float)sq_gq_code(type, b, 32 * j + l) - m1;
    }
}

void sq_ggml_dequantize_row(sq_ggml_type type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch ((int)type) {
    case SQ_GGML_F32:
        memcpy(dst, src, (size_t)n * 4);   /* the host is little-endian like GGUF */
        return;
    case SQ_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = sq_gq_f16(sq_gq_u16(s + 2 * i));
        return;
    case SQ_GGML_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = sq_gq_bf16(sq_gq_u16(s + 2 * i));
        return;
    case SQ_GGML_Q4_K: case SQ_GGML_Q5_K:
        for (int64_t b = 0; b < n / SQ_GQ_QK_K; b++)
            deq_k45((int)type, s + b * sq_ggml_block_bytes(type), dst + b * SQ_GQ_QK_K);
        return;
    default: {
        const int64_t be = sq_ggml_block_elems(type), bb = sq_ggml_block_bytes(type);
        if (be == 0) return;
        for (int64_t b = 0; b < n / be; b++)
            for (int i = 0; i < be; i++) dst[b * be + i] = sq_gq_elem((int)type, s + b * bb, i);
        return;
    }
    }
}

/* ---- the block-scaled integer form ------------------------------------------------------------ */

bool sq_ggml_qblock_format(int type, sq_qblock_format *out) {
    sq_qblock_format f = {0, 0, 32, false, 16};
    switch (type) {
    case SQ_GGML_Q4_0: f.code_bits = 4; f.code_zero = 8; break;
    case SQ_GGML_Q4_1: f.code_bits = 4; f.has_bias = true; break;
    case SQ_GGML_Q4_K: f.code_bits = 4; f.has_bias = true; f.scale_bits = 32; break;
    case SQ_GGML_Q5_0: case SQ_GGML_Q8_0: f.code_bits = 8; break;
    case SQ_GGML_Q5_1: f.code_bits = 8; f.has_bias = true; break;
    case SQ_GGML_Q5_K: f.code_bits = 8; f.has_bias = true; f.scale_bits = 32; break;
    case SQ_GGML_Q6_K: f.code_bits = 8; f.block_elems = 16; f.scale_bits = 32; break;
    default:
        memset(out, 0, sizeof *out);
        return false;
    }
    *out = f;
    return true;
}

int64_t sq_qblock_code_bytes(const sq_qblock_format *f, int64_t n) {
    return f->code_bits == 4 ? n / 2 : n;
}

float sq_qblock_param(const sq_qblock_format *f, const void *params, int64_t i) {
    if (f->scale_bits == 16) return sq_gq_f16(((const uint16_t *)params)[i]);
    return ((const float *)params)[i];
}

int64_t sq_qblock_row_bytes(const sq_qblock_format *f, int64_t n) {
    return sq_qblock_code_bytes(f, n) +
           n / f->block_elems * (f->scale_bits / 8) * (f->has_bias ? 2 : 1);
}

void sq_ggml_to_qblock_row(sq_ggml_type type, const void *src, int64_t n, uint8_t *codes,
                           void *scales, void *biases) {
    sq_qblock_format f;
    if (!sq_ggml_qblock_format((int)type, &f)) return;
    const uint8_t *s = src;
    const int64_t be = sq_ggml_block_elems(type), bb = sq_ggml_block_bytes(type);
    const int se = f.block_elems, n_sub = (int)(be / se);
    for (int64_t b = 0; b < n / be; b++) {
        const uint8_t *blk = s + b * bb;
        if (f.scale_bits == 16) {
            /* the block's own halves: d at byte 0, m at byte 2 (Q4_1, Q5_1) */
            ((uint16_t *)scales)[b] = sq_gq_u16(blk);
            if (f.has_bias && biases) ((uint16_t *)biases)[b] = sq_gq_u16(blk + 2);
        } else {
            for (int j = 0; j < n_sub; j++) {
                float sc, bi;
                sq_gq_sub_params((int)type, blk, j, &sc, &bi);
                ((float *)scales)[b * n_sub + j] = sc;
                if (f.has_bias && biases) ((float *)biases)[b * n_sub + j] = bi;
            }
        }
        if (f.code_bits == 4) {
            uint8_t *c = codes + b * (be / 2);
            for (int g = 0; g < be / 32; g++)
                for (int j = 0; j < 16; j++) {
                    int lo = sq_gq_code((int)type, blk, 32 * g + j) + f.code_zero;
                    int hi = sq_gq_code((int)type, blk, 32 * g + j + 16) + f.code_zero;
                    c[16 * g + j] = (uint8_t)(lo | (hi << 4));
                }
        } else {
            int8_t *c = (int8_t *)codes + b * be;
            for (int i = 0; i < be; i++) c[i] = (int8_t)sq_gq_code((int)type, blk, i);
        }
    }
}

void sq_qblock_dequantize_row(const sq_qblock_format *f, const uint8_t *codes,
                              const void *scales, const void *biases, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) {
        int code;
        if (f->code_bits == 4)
            code = ((codes[(i >> 5) * 16 + (i & 15)] >> (((i >> 4) & 1) * 4)) & 0xF) - f->code_zero;
        else
            code = ((const int8_t *)codes)[i];
        int64_t b = i / f->block_elems;
        dst[i] = sq_gq_qblock_value(code, sq_qblock_param(f, scales, b),
                                    f->has_bias ? sq_qblock_param(f, biases, b) : 0.0f, f->has_bias);
    }
}
