/* size: exact integer byte counts.  Pure functions, no I/O.
 * Per tensor and per module, for dense dtypes and for bitsandbytes' 4-bit storage
 * (../shared/reference/bnb-nf4-format.md §4, §6): packed data ceil(n/2); absmax float32 per
 * block (uint8 with double quant, + float32 nested absmax per 256 blocks + the 256-entry
 * float32 nested map); the 16-entry float32 quant_map; the quant_state JSON bytes. */
#ifndef SHARDQ_SIZE_H
#define SHARDQ_SIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/config.h"
#include "shardq/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_quant_type { SQ_QUANT_NONE = 0, SQ_QUANT_NF4, SQ_QUANT_FP4 } sq_quant_type;

typedef struct sq_quant_scheme {
    sq_quant_type type;   /* NONE: weights stay in `dense_dtype` */
    bool double_quant;
    int64_t blocksize;    /* 32..4096, power of two; default 64 */
    sq_dtype dense_dtype; /* dtype of unquantized tensors (the checkpoint's, usually BF16) */
} sq_quant_scheme;

/* Defaults: NF4, no double quant, blocksize 64, BF16. */
sq_quant_scheme sq_quant_scheme_default(void);
/* Checks blocksize range and power of two. */
sq_status sq_quant_scheme_check(const sq_quant_scheme *s, sq_error *err);
const char *sq_quant_type_name(sq_quant_type t);   /* "none", "nf4", "fp4" */

/* Bytes of one 4-bit quantized weight of n elements, as stored on disk and in memory
 * (packed + absmax + maps + nested; the JSON blob excluded). */
uint64_t sq_size_4bit_bytes(uint64_t n_elements, const sq_quant_scheme *s);
/* Bytes of the packed nibbles only: ceil(n/2). */
uint64_t sq_size_4bit_packed_bytes(uint64_t n_elements);
/* Number of absmax blocks: ceil(n / blocksize). */
uint64_t sq_size_4bit_n_blocks(uint64_t n_elements, int64_t blocksize);
/* Dense bytes: n * dtype size (saturating at UINT64_MAX). */
uint64_t sq_size_dense_bytes(uint64_t n_elements, sq_dtype d);

/* KV cache bytes of ONE layer for n_tokens tokens (batch x seq): 2 * n_kv_heads * head_dim *
 * n_tokens * kv dtype size. */
uint64_t sq_size_kv_bytes_per_layer(const sq_model_config *c, uint64_t n_tokens, sq_dtype kv);

#ifdef __cplusplus
}
#endif
#endif
