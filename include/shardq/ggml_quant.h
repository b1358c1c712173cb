/* ggml_quant: the tensor types of GGUF files (ggml's block quantization formats), kept as
 * stored.  A GGUF Linear weight [rows, cols] is rows * row_bytes bytes; each row is
 * cols / block_elems blocks laid out as ggml lays them out (block_q4_0, block_q4_K, …).
 * Dequantization is bit-exact with ggml's dequantize_row_* (and the `gguf` Python package's
 * gguf.quants.dequantize), so the values a Linear multiplies by are the values llama.cpp uses.
 * Per-element math shared with the CUDA kernels lives in kernels/ggml_quant_math.cuh.
 *
 * Nothing here allocates; all functions are pure. */
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

#ifdef __cplusplus
}
#endif
#endif
