/* quant: blockwise NF4 / FP4 quantization and dequantization, bit-exact with bitsandbytes'
 * CPU (torch default) path, with double quantization of the absmax.
 * Per-element math (code tables, nearest-code search, packing, dequant) lives in
 * kernels/quant_math.cuh (host+device) so the CPU tests cover the GPU's arithmetic.
 *
 * Ownership: an sq_qtensor owns its arrays (malloc'd); sq_qtensor_free releases them (takes
 * NULL / zeroed).  On failure the output is zeroed and nothing leaks. */
#ifndef SHARDQ_QUANT_H
#define SHARDQ_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"
#include "shardq/safetensors.h"
#include "shardq/size.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One quantized weight, in bitsandbytes' layout (flat row-major index i = row * in + col). */
typedef struct sq_qtensor {
    sq_quant_type type;        /* NF4 or FP4 */
    int64_t blocksize;         /* elements per absmax block */
    uint64_t n_elements;
    int64_t shape[2];          /* [out_features, in_features] */
    sq_dtype dtype;            /* original dtype (dequant output dtype in bnb's JSON) */
    uint8_t *packed;           /* (ceil(n/2)) element 2j in the high nibble of byte j */
    uint64_t n_blocks;         /* ceil(n / blocksize) */
    /* without double quant: */
    float *absmax;             /* (n_blocks) float32; NULL with double quant */
    /* with double quant: */
    bool double_quant;
    uint8_t *absmax_q;         /* (n_blocks) 8-bit dynamic-map codes of absmax - offset */
    float *nested_absmax;      /* (ceil(n_blocks / nested_blocksize)) */
    int64_t nested_blocksize;  /* 256 */
    float nested_offset;       /* mean of the float absmax */
} sq_qtensor;

/* The 16-entry code table ("quant_map" as bnb stores it) and the 256-entry dynamic map. */
const float *sq_quant_code_table(sq_quant_type t);
const float *sq_quant_dynamic_map(void);

/* Quantizes n float32 values (a [rows, cols] weight; shape recorded) with scheme s into *out.
 * pool may be NULL (single thread). */
sq_status sq_quant_4bit(const float *x, int64_t rows, int64_t cols, sq_dtype orig_dtype,
                        const sq_quant_scheme *s, sq_pool *pool, sq_qtensor *out,
                        sq_error *err);
/* Same, reading the source in its own dtype (BF16/F16/F32) and converting in bounded chunks:
 * no full-precision copy of the tensor is made. */
sq_status sq_quant_4bit_from(sq_dtype src_dtype, const void *src, int64_t rows, int64_t cols,
                             const sq_quant_scheme *s, sq_pool *pool, sq_qtensor *out,
                             sq_error *err);
/* The float32 absmax of block b (reconstructed exactly as bnb does with double quant:
 * t = dyn[q] * nested; t = t + offset, two roundings). */
float sq_qtensor_absmax(const sq_qtensor *q, uint64_t block);
/* Dequantizes elements [first, first + n) to float32 (code[q] * absmax, float32). */
void sq_dequant_4bit_f32(const sq_qtensor *q, uint64_t first, uint64_t n, float *out);
/* Dequantizes to the original dtype as bnb does (float32 product, RNE to BF16/F16). */
sq_status sq_dequant_4bit(const sq_qtensor *q, void *out, sq_dtype out_dtype, sq_error *err);
void sq_qtensor_free(sq_qtensor *q);

#ifdef __cplusplus
}
#endif
#endif
