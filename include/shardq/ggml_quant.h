/* ggml_quant: the tensor types of GGUF files (ggml's block quantization formats), kept as
 * stored.  A GGUF Linear weight [rows, cols] is rows * row_bytes bytes; each row is
 * cols / block_elems blocks laid out as ggml lays them out (block_q4_0, block_q4_K, …).
 * Dequantization is bit-exact with ggml's dequantize_row_* (and the `gguf` Python package's
 * gguf.quants.dequantize), so the values a Linear multiplies by are the values llama.cpp uses.
 * Per-element math shared with the CUDA kernels lives in kernels/ggml_quant_math.cuh.
 *
 * Nothing here allocates; all functions are pure and thread-safe.  The caller owns every
 * buffer; sizes are the caller's to check (sq_ggml_row_bytes). */
#ifndef SHARDQ_GGML_QUANT_H
#define SHARDQ_GGML_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The values are ggml's enum ggml_type (the numbers stored in a GGUF tensor info). */
typedef enum sq_ggml_type {
    SQ_GGML_F32 = 0,
    SQ_GGML_F16 = 1,
    SQ_GGML_Q4_0 = 2,
    SQ_GGML_Q4_1 = 3,
    SQ_GGML_Q5_0 = 6,
    SQ_GGML_Q5_1 = 7,
    SQ_GGML_Q8_0 = 8,
    SQ_GGML_Q4_K = 12,
    SQ_GGML_Q5_K = 13,
    SQ_GGML_Q6_K = 14,
    SQ_GGML_BF16 = 30,
} sq_ggml_type;

/* "Q4_1", "F32", …; for a number this build does not support: ggml's name when known
 * ("Q2_K", "IQ4_NL", …), else NULL. */
const char *sq_ggml_type_name(int type);
/* True for the types listed in sq_ggml_type. */
bool sq_ggml_type_supported(int type);
/* Elements per block (32 for Q*_0/Q*_1/Q8_0, 256 for the K types, 1 for F32/F16/BF16) and
 * bytes per block.  0 for an unsupported type. */
int64_t sq_ggml_block_elems(int type);
int64_t sq_ggml_block_bytes(int type);
/* Bytes of a row of n elements; SQ_ERR_INVALID (naming the type) when n is not a multiple of
 * the block size or the type is unsupported.  *out is 0 on failure. */
sq_status sq_ggml_row_bytes(int type, int64_t n, uint64_t *out, sq_error *err);
/* Dequantizes one row of n elements (n a multiple of the block size) to float32, bit-exact
 * with ggml's dequantize_row_<type>. */
void sq_ggml_dequantize_row(sq_ggml_type type, const void *src, float *dst, int64_t n);

/* ---- the block-scaled integer form the backends compute on -------------------------------------
 * Every quantized type above is, exactly, integer codes with one scale (and for some an additive
 * bias) per sub-block:  value = scale * code  or  (scale * code) + bias, two float32 roundings, bit-equal to ggml's dequantization (kernels/ggml_quant_math.cuh lists the
 * mapping per type; Q4_K's "d1 * q - m1" is scale d1 and bias -m1).  The same form holds
 * absmax / zero-point int8 weights and int8 activations (codes 8-bit, a scale per block).
 *
 * A row of n elements (n a multiple of 32) in this form is three arrays:
 *   codes   4-bit: n / 2 bytes; each group of 32 elements is 16 bytes, byte j holding element j
 *           in its low nibble and element j + 16 in its high nibble (ggml's Q4_0 order); the
 *           code is the nibble minus code_zero.
 *           8-bit: n bytes, one int8 code per element.
 *   scales  n / block_elems of them: float32 (scale_bits 32) or IEEE half (scale_bits 16).
 *   biases  the same count and kind (only when has_bias).
 * Half scales are used where they are exact, the types whose d (and m) are stored as halves
 * (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the form then holds Q4_0 / Q4_1 / Q8_0 in as many bytes as
 * the GGUF file.  The K types' d * sc products need float32. */
typedef struct sq_qblock_format {
    int code_bits;      /* 4 or 8 */
    int code_zero;      /* 4-bit codes: subtracted from the nibble (Q4_0: 8); 8-bit: 0 */
    int block_elems;    /* elements per scale: 16 or 32 */
    bool has_bias;
    int scale_bits;     /* 32: float32 scales and biases; 16: IEEE half */
} sq_qblock_format;

/* The form a quantized ggml type is computed in; false (and *out zeroed) for F32 / F16 / BF16
 * and unsupported types. */
bool sq_ggml_qblock_format(int type, sq_qblock_format *out);
/* Bytes of the codes of a row of n elements in format f. */
int64_t sq_qblock_code_bytes(const sq_qblock_format *f, int64_t n);
/* All bytes of a row of n elements in format f (codes + scales + biases): what a backend holds
 * per row of such a weight (sq_weight_bytes = rows x this), for size models and plans. */
int64_t sq_qblock_row_bytes(const sq_qblock_format *f, int64_t n);
/* One stored ggml row (n elements, a multiple of the block size) into the form above: codes
 * (sq_qblock_code_bytes), scales and biases (n / f.block_elems each, f.scale_bits wide;
 * biases may be NULL when the format has none).  Exact: sq_qblock_dequantize_row of the result equals
 * sq_ggml_dequantize_row of src bit for bit. */
void sq_ggml_to_qblock_row(sq_ggml_type type, const void *src, int64_t n, uint8_t *codes,
                           void *scales, void *biases);
/* value = scale * code (+ bias) for a row of n elements (n a multiple of 32). */
void sq_qblock_dequantize_row(const sq_qblock_format *f, const uint8_t *codes,
                              const void *scales, const void *biases, int64_t n, float *dst);
/* Scale (or bias) i of a row's scale array in format f, as float32 (exact). */
float sq_qblock_param(const sq_qblock_format *f, const void *params, int64_t i);

#ifdef __cplusplus
}
#endif
#endif
