/* size: exact integer byte counts.  Pure functions, no I/O.
 * Per tensor and per module, for dense dtypes and for bitsandbytes' 4-bit storage
 * (../shared/reference/bnb-nf4-format.md §4, §6).  One 4-bit weight of n elements, B = the
 * scheme's blocksize, nb = ceil(n / B):
 *   packed            ceil(n/2)                  uint8, two codes a byte
 *   absmax            nb * 4                     float32 (no double quant)
 *                     nb * 1                     uint8 codes (double quant)
 *   nested_absmax     ceil(nb / 256) * 4         float32 (double quant only)
 *   nested_quant_map  256 * 4 = 1024             float32 (double quant only)
 *   quant_map         16 * 4 = 64                float32, always
 * The quant_state JSON blob (~170 bytes: bnb-nf4-format.md §4.2) and the double-quant offset
 * it carries are EXCLUDED everywhere: their length depends on the printed float, and they are
 * metadata rather than tensor storage.  So a 4096x4096 NF4 weight counts
 *   8,388,608 + 1,048,576 + 64                   = 9,437,248 bytes without double quant,
 *   8,388,608 + 262,144 + 4,096 + 1,024 + 64     = 8,655,936 bytes with it. */
#ifndef SHARDQ_SIZE_H
#define SHARDQ_SIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/config.h"
#include "shardq/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NF4 / FP4: bitsandbytes 4-bit, blockwise.  INT8: row-wise absmax int8 (bitsandbytes LLM.int8,
 * Int8Params: int8 codes + a float32 SCB per row).  INT8_ZP: row-wise asymmetric int8 (a float32
 * scale and an int8 zero point per row; shardq's own, docs/QUANT.md).  The int8 types ignore
 * blocksize and double_quant (one scale per row). */
typedef enum sq_quant_type {
    SQ_QUANT_NONE = 0, SQ_QUANT_NF4, SQ_QUANT_FP4, SQ_QUANT_INT8, SQ_QUANT_INT8_ZP
} sq_quant_type;

/* True for INT8 and INT8_ZP. */
static inline bool sq_quant_type_is_int8(sq_quant_type t) {
    return t == SQ_QUANT_INT8 || t == SQ_QUANT_INT8_ZP;
}

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
/* True when a and b store weights alike (type, and for 4-bit double quant and blocksize; dense
 * dtype not compared). */
bool sq_quant_scheme_equal(const sq_quant_scheme *a, const sq_quant_scheme *b);
const char *sq_quant_type_name(sq_quant_type t);   /* "none", "nf4", "fp4", "int8", "int8-zp" */
/* Inverse of sq_quant_type_name; false for an unknown name. */
bool sq_quant_type_from_name(const char *name, sq_quant_type *out);

#define SQ_BNB_QUANT_MAP_BYTES 64u           /* 16 float32 */
#define SQ_BNB_NESTED_BLOCKSIZE 256u         /* absmax values per nested block */
#define SQ_BNB_NESTED_MAP_BYTES 1024u        /* 256 float32 */

/* The parts of one 4-bit weight (bytes), as listed at the top of this header. */
typedef struct sq_4bit_parts {
    uint64_t packed, absmax, nested_absmax, nested_quant_map, quant_map;
    uint64_t n_blocks, n_nested_blocks;
    uint64_t total;
} sq_4bit_parts;

/* The parts of an n-element weight under s (s->type NF4 or FP4; blocksize must pass
 * sq_quant_scheme_check — anything else is a bug and asserts). */
sq_4bit_parts sq_size_4bit_parts(uint64_t n_elements, const sq_quant_scheme *s);
/* Bytes of one 4-bit quantized weight of n elements, as stored on disk and in memory
 * (packed + absmax + maps + nested; the JSON blob excluded).  With s->type NONE: the dense
 * bytes in s->dense_dtype.  Not for the int8 types (they need the row count: a bug, asserts). */
uint64_t sq_size_4bit_bytes(uint64_t n_elements, const sq_quant_scheme *s);
/* Bytes of the packed nibbles only: ceil(n/2). */
uint64_t sq_size_4bit_packed_bytes(uint64_t n_elements);
/* Number of absmax blocks: ceil(n / blocksize) (blocksize > 0, else a bug). */
uint64_t sq_size_4bit_n_blocks(uint64_t n_elements, int64_t blocksize);
/* Bytes of one int8 weight [rows, cols] (saturating):
 *   INT8     rows * cols (int8 codes) + 4 * rows (float32 SCB)
 *   INT8_ZP  rows * cols (int8 codes) + 4 * rows (float32 scale) + rows (int8 zero point)
 * This is the checkpoint storage (bnb's `weight` + `SCB`), the figure plans and inspect use; a
 * backend holds the row's scale once per 32 elements (sq_qblock_format), 1/8 byte per element
 * more (1/4 with INT8_ZP's bias). */
uint64_t sq_size_int8_bytes(uint64_t rows, uint64_t cols, sq_quant_type t);
/* Bytes of a quantizable weight [rows, cols] under s, whatever its type: NONE dense in
 * s->dense_dtype, NF4 / FP4 sq_size_4bit_bytes, INT8 / INT8_ZP sq_size_int8_bytes. */
uint64_t sq_size_weight_bytes(uint64_t rows, uint64_t cols, const sq_quant_scheme *s);
/* Dense bytes: n * dtype size (saturating at UINT64_MAX). */
uint64_t sq_size_dense_bytes(uint64_t n_elements, sq_dtype d);

/* KV cache bytes of ONE layer for n_tokens tokens (batch x seq): 2 * n_kv_heads * head_dim *
 * n_tokens * kv dtype size (saturating at UINT64_MAX). */
uint64_t sq_size_kv_bytes_per_layer(const sq_model_config *c, uint64_t n_tokens, sq_dtype kv);

#ifdef __cplusplus
}
#endif
#endif
