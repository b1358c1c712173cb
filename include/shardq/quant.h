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

/* Where the 4-bit codes of sq_qtensor.packed sit.
 *   BNB (0, the default): bitsandbytes' layout, flat element i in byte i / 2, the even one in
 *        the high nibble.  Everything written to or read from files is BNB.
 *   G64: groups of 64 flat elements, 32 bytes each at byte 32 g (the same bytes per group as
 *        BNB, so the same size and offsets at group granularity): element 64 g + e sits in byte
 *        32 g + pos(e % 32), low nibble for e < 32, high for e >= 32, with pos(8 j + i) = 4 j + i
 *        for i < 4 and 16 + 4 j + (i - 4) for i >= 4.  For a [rows, cols] weight with
 *        cols % 64 == 0 that is exactly the CPU backend's repacked layout, so the backend can
 *        keep the buffer as it is; the quantizer writes it as cheaply as BNB.  Only for
 *        weights that sq_q4_layout_fits. */
typedef enum sq_q4_layout { SQ_Q4_LAYOUT_BNB = 0, SQ_Q4_LAYOUT_G64 = 1 } sq_q4_layout;

/* One quantized weight, in bitsandbytes' layout (flat row-major index i = row * in + col). */
typedef struct sq_qtensor {
    sq_quant_type type;        /* NF4 or FP4 */
    int64_t blocksize;         /* elements per absmax block */
    uint64_t n_elements;
    int64_t shape[2];          /* [out_features, in_features] */
    sq_dtype dtype;            /* original dtype (dequant output dtype in bnb's JSON) */
    uint8_t *packed;           /* (ceil(n/2)) element 2j in the high nibble of byte j (BNB) */
    sq_q4_layout layout;       /* of packed: BNB unless a producer chose G64 */
    uint64_t n_blocks;         /* ceil(n / blocksize) */
    /* without double quant: */
    float *absmax;             /* (n_blocks) float32; NULL with double quant */
    /* with double quant: */
    bool double_quant;
    uint8_t *absmax_q;         /* (n_blocks) 8-bit dynamic-map codes of absmax - offset */
    float *nested_absmax;      /* (ceil(n_blocks / nested_blocksize)) */
    int64_t nested_blocksize;  /* 256 */
    float nested_offset;       /* mean of the float absmax */
    /* int8 (type INT8 / INT8_ZP): blocksize = shape[1] and n_blocks = shape[0] (one scale per
     * row); packed, absmax and the double-quant fields stay NULL */
    int8_t *codes;             /* (rows, cols) int8 */
    float *row_scale;          /* (rows) INT8: bitsandbytes' SCB (the row's absmax after the
                                  float16 rounding; the scale is SCB / 127); INT8_ZP: the scale */
    int8_t *row_zp;            /* (rows) INT8_ZP: the zero point; NULL for INT8 */
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
 * no full-precision copy of the tensor is made.  src needs no alignment.  Uses AVX2 when the
 * CPU has it (same bytes as the portable path); pool splits the blocks over its threads. */
sq_status sq_quant_4bit_from(sq_dtype src_dtype, const void *src, int64_t rows, int64_t cols,
                             const sq_quant_scheme *s, sq_pool *pool, sq_qtensor *out,
                             sq_error *err);
/* The float32 absmax of block b (reconstructed exactly as bnb does with double quant:
 * t = dyn[q] * nested; t = t + offset, two roundings). */
float sq_qtensor_absmax(const sq_qtensor *q, uint64_t block);
/* Dequantizes elements [first, first + n) to float32 (value[q] * absmax, float32).  FP4 code 8
 * gives -0.0 when shape[1] is even (bnb 0.50.2 CPU native kernel), +0.0 when odd (its torch path). */
void sq_dequant_4bit_f32(const sq_qtensor *q, uint64_t first, uint64_t n, float *out);
/* Dequantizes to the original dtype as bnb does (float32 product, RNE to BF16/F16). */
sq_status sq_dequant_4bit(const sq_qtensor *q, void *out, sq_dtype out_dtype, sq_error *err);
void sq_qtensor_free(sq_qtensor *q);

/* ---- additions (quant helper) -------------------------------------------------------------- */

/* Which CPU code path quantizes: AUTO picks AVX2 when __builtin_cpu_supports says so.  Every
 * path gives identical bytes (the tests compare them). */
typedef enum sq_quant_isa { SQ_QUANT_ISA_AUTO = 0, SQ_QUANT_ISA_SCALAR, SQ_QUANT_ISA_AVX2 } sq_quant_isa;
/* True when this build and this CPU can run `isa` (AUTO and SCALAR always). */
bool sq_quant_isa_available(sq_quant_isa isa);
/* "scalar" / "avx2": what AUTO resolves to on this machine. */
const char *sq_quant_isa_name(sq_quant_isa isa);

/* sq_quant_4bit_from with an explicit code path; SQ_ERR_UNSUPPORTED when `isa` is not
 * available here.  src holds rows * cols elements of src_dtype (F32, F16 or BF16). */
sq_status sq_quant_4bit_isa(sq_dtype src_dtype, const void *src, int64_t rows, int64_t cols,
                            const sq_quant_scheme *s, sq_pool *pool, sq_quant_isa isa,
                            sq_qtensor *out, sq_error *err);

/* Allocates q's arrays for a [rows, cols] weight under scheme s, leaving the values unset:
 * packed (ceil(n/2)) and a float32 absmax (n_blocks) always; with s->double_quant also
 * absmax_q and nested_absmax, filled later by sq_qtensor_compress.  For producers that fill
 * packed / absmax themselves (the CUDA path).  On failure *q is zeroed. */
sq_status sq_qtensor_init(sq_qtensor *q, const sq_quant_scheme *s, int64_t rows, int64_t cols,
                          sq_dtype orig_dtype, sq_error *err);
/* Quantizes elements [first, first + n) of q (from sq_qtensor_init, float32 absmax not yet
 * compressed) from src, n elements of src_dtype (F32 / F16 / BF16, no alignment needed), into
 * q->packed (in q->layout) and q->absmax: the bytes a whole-tensor sq_quant_4bit_from gives
 * there, for a loader that quantizes a weight piece by piece without a copy.  first must be a
 * multiple of q->blocksize, n too unless first + n == q->n_elements (the tensor's last part);
 * with G64 both are multiples of 64 as well.  pool may be NULL.  Fails with SQ_ERR_INVALID on
 * a bad range, SQ_ERR_UNSUPPORTED on a bad dtype; q is left as it was on failure. */
sq_status sq_quant_4bit_part(sq_qtensor *q, uint64_t first, sq_dtype src_dtype, const void *src,
                             uint64_t n, sq_pool *pool, sq_error *err);
/* sq_quant_4bit_part with an explicit code path (SQ_ERR_UNSUPPORTED when not available). */
sq_status sq_quant_4bit_part_isa(sq_qtensor *q, uint64_t first, sq_dtype src_dtype,
                                 const void *src, uint64_t n, sq_pool *pool, sq_quant_isa isa,
                                 sq_error *err);
/* sq_quant_4bit_part_isa that also looks for a corrupt source while the part's absmax is in
 * cache: *bad_block (non-NULL) is set to the index in q of the part's first block whose absmax
 * came out NaN or Inf (a NaN or Inf element), UINT64_MAX when there is none.  The same bytes
 * as sq_quant_4bit_part. */
sq_status sq_quant_4bit_part_checked(sq_qtensor *q, uint64_t first, sq_dtype src_dtype,
                                     const void *src, uint64_t n, sq_pool *pool, sq_quant_isa isa,
                                     uint64_t *bad_block, sq_error *err);
/* True when a [rows, cols] 4-bit weight with this blocksize may be held in layout l: BNB
 * always; G64 when cols % 64 == 0 and blocksize >= 64. */
bool sq_q4_layout_fits(sq_q4_layout l, int64_t cols, int64_t blocksize);
/* Rewrites n_groups groups of 64 elements (32 bytes each) from BNB to G64 (to_g64) or back;
 * src and dst may be the same buffer. */
void sq_q4_convert_groups(const uint8_t *src, uint8_t *dst, uint64_t n_groups, bool to_g64);
/* The same with packed and absmax from sq_alloc_huge (core.h): for a producer that fills a
 * large weight once (the loader), far fewer page faults. */
sq_status sq_qtensor_init_huge(sq_qtensor *q, const sq_quant_scheme *s, int64_t rows,
                               int64_t cols, sq_dtype orig_dtype, sq_error *err);
/* With double_quant: computes offset, absmax_q and nested_absmax from the float32 absmax
 * exactly as bnb 0.50.2 on the CPU does, then frees absmax (NULL afterwards).  No-op
 * without double quant. */
sq_status sq_qtensor_compress(sq_qtensor *q, sq_error *err);
/* Same, with the offset reduced as torch does when it runs `torch_threads` threads (matters only
 * for n_blocks >= 32768; sq_qtensor_compress uses 1).  bnb's offset depends on that setting. */
sq_status sq_qtensor_compress_ex(sq_qtensor *q, int torch_threads, sq_error *err);

/* torch's float32 x.mean() on the CPU (AVX2 kernel: 8-lane, 4-way ILP cascade sum, then / n),
 * including the split it makes for n >= 32768 when torch runs `torch_threads` threads.
 * bnb's double-quant offset is this mean; shardq uses torch_threads = 1 (see docs/QUANT.md). */
float sq_quant_torch_mean(const float *x, uint64_t n, int torch_threads);
/* bnb CPU 8-bit blockwise quantization with the dynamic map (the nested step of double quant):
 * n values x in blocks of `blocksize`, codes (n) and block absmax (ceil(n/blocksize)). */
void sq_quant_8bit_dynamic(const float *x, uint64_t n, int64_t blocksize, uint8_t *codes,
                           float *absmax);

/* ---- int8 weights, one scale per row (quant_int8.c) -------------------------------------------
 * INT8 (absmax, bitsandbytes LLM.int8: Int8Params._quantize on the CPU, bit for bit), row r:
 *   a_j    = float16(x_j)                     (RNE; a float16 source as it is)
 *   SCB    = float32(max_j |a_j|)
 *   s      = fl(fl(1 / SCB) * 127)            (torch evaluates 127.0 / t as reciprocal * 127)
 *   code_j = int8(round_half_even(fl(float32(a_j) * s)))      (SCB = 0: every code 0)
 *   value  = fl(code * fl(SCB / 127))         the float32 a backend multiplies by
 * INT8_ZP (asymmetric, shardq's own; zero always exactly representable), row r, x in float32:
 *   lo = min(0, min_j x_j), hi = max(0, max_j x_j)
 *   scale  = float32((hi - lo) / 255)         (in double, then rounded once)
 *   zp     = clamp(-128 - round_half_even(lo / scale), -128, 127)       (float32 division)
 *   code_j = clamp(round_half_even(fl(x_j / scale)) + zp, -128, 127)
 *   value  = fl(fl(scale * code) + bias), bias = fl(-zp * scale)
 *   (scale 0, i.e. a row of zeros or of values too small to scale: codes 0, zp 0, value 0)
 * A value that is NaN or Inf, or (INT8) overflows float16, fails with SQ_ERR_FORMAT naming the
 * row: bitsandbytes would store SCB = inf / NaN and silently zero the row. */

/* Quantizes a [rows, cols] weight held in src_dtype (F32 / F16 / BF16, no alignment needed) to
 * type (INT8 or INT8_ZP) into *out (arrays malloc'd, freed by sq_qtensor_free).  pool may be
 * NULL.  On failure *out is zeroed. */
sq_status sq_quant_int8_from(sq_quant_type type, sq_dtype src_dtype, const void *src,
                             int64_t rows, int64_t cols, sq_pool *pool, sq_qtensor *out,
                             sq_error *err);
/* Allocates an int8 q for [rows, cols] (codes, row_scale, and row_zp for INT8_ZP), values unset.
 * On failure *q is zeroed. */
sq_status sq_qtensor_init_int8(sq_qtensor *q, sq_quant_type type, int64_t rows, int64_t cols,
                               sq_dtype orig_dtype, sq_error *err);
/* Quantizes rows [row0, row0 + n_rows) of q (from sq_qtensor_init_int8) from src, n_rows rows of
 * q->shape[1] elements in src_dtype: what sq_quant_int8_from does for the whole tensor, for a
 * loader that reads a weight piece by piece (same bytes).  Errors name the row of q; the rows
 * of this call are then partly written (q stays the caller's to free). */
sq_status sq_quant_int8_rows(sq_qtensor *q, int64_t row0, sq_dtype src_dtype, const void *src,
                             int64_t n_rows, sq_pool *pool, sq_error *err);
/* The float32 scale and bias of row r as the backends use them (value = fl(fl(scale * code) +
 * bias); INT8: bias 0 and scale fl(SCB / 127)). */
float sq_int8_row_scale(const sq_qtensor *q, int64_t r);
float sq_int8_row_bias(const sq_qtensor *q, int64_t r);
/* Row r dequantized to float32 (cols values): the values above. */
void sq_dequant_int8_row(const sq_qtensor *q, int64_t r, float *out);

#ifdef __cplusplus
}
#endif
#endif
