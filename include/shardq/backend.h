/* backend: the compute interface every stage runs on.  One opaque handle with a vtable behind
 * it; `cpu` is implemented here (src/backend/cpu*.c), `cuda` later behind the same calls.
 * Nothing above this header knows which one runs.
 *
 * Memory model (made for device memory and streams):
 *   - Tensor data lives in backend memory.  sq_backend_alloc() returns an opaque pointer
 *     (suffix `_d`): host memory on the CPU backend, device memory on CUDA.  Callers may offset
 *     it by bytes ((char *)p_d + off) but never dereference it; bytes move in and out only with
 *     sq_backend_upload / sq_backend_download / sq_backend_copy / sq_backend_memset.
 *   - Small per-call descriptors (positions, sequence slots, sampling parameters) are HOST
 *     arrays; a device backend stages them itself.
 *   - Ops are enqueued in order on the backend's one stream; sq_backend_sync() waits for them.
 *     On the CPU backend every op has finished when it returns.  Downloads are synchronous.
 *   - Activations are float32, row-major [n_rows, width].
 *   - Ops never allocate: sq_backend_reserve() sizes the backend's internal scratch once from
 *     the largest shapes a stage will use (call it before the first op; it only grows).
 *
 * Weights: sq_weight is an opaque, backend-resident weight.  Dense uploads keep BF16 and F32 as
 * they are (F16 becomes F32); 4-bit uploads may be repacked into a SIMD-friendly layout, but
 * no dequantized copy of a whole weight is ever kept.  Linear weights are [out, in] (PyTorch).
 *
 * Determinism: every output element has a fixed reduction order.  A row's result does not
 * depend on how many rows are in the call, on which thread computes it, or on the thread count;
 * a sequence decoded alone or in a batch gives bit-identical results (on one machine: the
 * AVX2+FMA and the portable path use the same order and fused multiply-adds, so they agree).
 *
 * KV cache layout (one buffer for K and one for V per layer, float32):
 *   [slot][pos][kv_head][head_dim]  — see sq_kv_layer.
 *
 * Ownership: create/destroy pair (destroy takes NULL, frees nothing the caller still holds:
 * free buffers and weights first).  On failure every function leaves its outputs NULL / zero
 * and the backend usable; err names the op and the cause. */
#ifndef SHARDQ_BACKEND_H
#define SHARDQ_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/config.h"
#include "shardq/core.h"
#include "shardq/ggml_quant.h"
#include "shardq/quant.h"
#include "shardq/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sq_backend sq_backend;
typedef struct sq_weight sq_weight;

/* ---- life cycle --------------------------------------------------------------------------- */

/* CPU backend with a pool of n_threads (<= 0: one per online core).  Uses AVX2 + FMA when the
 * CPU has them, a portable path otherwise.  On failure *out is NULL. */
sq_status sq_backend_create_cpu(int n_threads, sq_backend **out, sq_error *err);
/* How the CPU backend's Linear treats activations.  F32: float32 x against the dequantized
 * weight value (the bit-exact reference, e.g. against transformers).  INT8: each row of x is
 * quantized to int8 at run time (absmax per block of 32) and quantized weights (ggml block
 * formats, int8, NF4 / FP4 through an int8 code table) are multiplied with integer dot
 * products (src/backend/cpu_q8.c: the order and why per block); dense weights, NF4 / FP4 rows
 * whose in_features is not a multiple of 64, and calls made before sq_backend_reserve sized the
 * scratch stay float32.  Results stay bit-identical across thread counts, row counts and ISA
 * paths in either mode.  Set the mode before uploading weights: in INT8 mode GGUF Q4_0 / Q8_0
 * and int8 absmax weights with out_features % 16 == 0 are stored interleaved by 16 outputs for
 * the int8 kernels (src/backend/cpu_q8i.c, their own float order); such a weight used later
 * with F32 activations gives the same bits as ever on a slower path.
 * DEFAULT: the build's default (SQ_CPU_ACT_INT8_DEFAULT). */
typedef enum sq_cpu_activations {
    SQ_CPU_ACT_DEFAULT = 0,
    SQ_CPU_ACT_F32 = 1,
    SQ_CPU_ACT_INT8 = 2
} sq_cpu_activations;
#define SQ_CPU_ACT_INT8_DEFAULT false
/* SQ_ERR_UNSUPPORTED on a backend other than the CPU's. */
sq_status sq_backend_cpu_set_activations(sq_backend *be, sq_cpu_activations a, sq_error *err);
/* True when be is a CPU backend whose Linear takes int8 activations. */
bool sq_backend_cpu_activations_int8(const sq_backend *be);
/* CUDA backend on `device` (< 0: the calling thread's current device), built only when
 * SHARDQ_HAVE_CUDA (src/backend/cuda.c): one stream, one cuBLAS handle, kernels in kernels/.
 * It makes `device` the calling thread's current device; ops must be called from threads whose
 * current device it is.  No device: SQ_ERR_UNSUPPORTED ("no CUDA device").  Differences from
 * the CPU backend: 4-bit weights are kept in bitsandbytes' packed layout; a bad token id in
 * sq_backend_embed is reported by the next sq_backend_sync / download (the row reads zeros);
 * linear switches from a GEMV (<= 16 rows) to cuBLAS SGEMM, so a row's bits can depend on the
 * call's row count (within float32 rounding).  On failure *out is NULL. */
sq_status sq_backend_create_cuda(int device, sq_backend **out, sq_error *err);
void sq_backend_destroy(sq_backend *be);
const char *sq_backend_name(const sq_backend *be);   /* "cpu-avx2", "cpu-portable", … */
int sq_backend_n_threads(const sq_backend *be);

/* Largest shapes ops will see; sizes internal scratch (grows, never shrinks). */
typedef struct sq_backend_limits {
    int64_t max_rows;       /* rows per op call (tokens in a micro-batch) */
    int64_t max_width;      /* widest activation row (max of hidden, n_heads*head_dim, inter) */
    int64_t max_vocab;      /* logits row width for sampling (0: no sampling) */
    int64_t max_head_dim;
    int64_t max_sample_rows;  /* rows per sample call (sequences sampled at once); 0: max_rows */
} sq_backend_limits;
sq_status sq_backend_reserve(sq_backend *be, const sq_backend_limits *lim, sq_error *err);

/* ---- memory -------------------------------------------------------------------------------- */

/* n_bytes of backend memory, 64-byte aligned, contents undefined.  *out_d NULL on failure. */
sq_status sq_backend_alloc(sq_backend *be, uint64_t n_bytes, void **out_d, sq_error *err);
void sq_backend_free(sq_backend *be, void *p_d);            /* takes NULL */
sq_status sq_backend_upload(sq_backend *be, void *dst_d, const void *src, uint64_t n_bytes,
                            sq_error *err);
sq_status sq_backend_download(sq_backend *be, void *dst, const void *src_d, uint64_t n_bytes,
                              sq_error *err);
sq_status sq_backend_copy(sq_backend *be, void *dst_d, const void *src_d, uint64_t n_bytes,
                          sq_error *err);
sq_status sq_backend_memset(sq_backend *be, void *dst_d, int value, uint64_t n_bytes,
                            sq_error *err);
/* Waits for every enqueued op (no-op on the CPU backend). */
sq_status sq_backend_sync(sq_backend *be, sq_error *err);

/* ---- weights ------------------------------------------------------------------------------- */

/* A dense weight [rows, cols] (a 1-D tensor is rows = 1) from host data in src_dtype
 * (F32, F16, BF16).  `name` is used in errors only (may be NULL).  *out NULL on failure. */
sq_status sq_backend_weight_dense(sq_backend *be, const char *name, sq_dtype src_dtype,
                                  const void *src, int64_t rows, int64_t cols, sq_weight **out,
                                  sq_error *err);
/* The same for a buffer the caller gives up (*src: malloc'd, room for rows * cols elements
 * rounded up to 64 bytes): a backend that can keep it as its storage (the CPU backend, F32 and
 * BF16) takes it instead of copying and sets *src to NULL; otherwise it is copied and stays the
 * caller's.  Same weight either way. */
sq_status sq_backend_weight_dense_take(sq_backend *be, const char *name, sq_dtype src_dtype,
                                       void **src, int64_t rows, int64_t cols, sq_weight **out,
                                       sq_error *err);
/* The same for data inside a read-only mapping of a file that the caller gives up (*map,
 * map_len bytes, from mmap; src inside it, aligned to its element size, with at least
 * rows * cols elements rounded up to 64 bytes readable from src within the mapping): a backend
 * that can read it in place (the CPU backend, F32 and BF16) keeps the mapping as the weight's
 * storage, sets *map to NULL and unmaps it when the weight is freed; otherwise the data is
 * copied and the mapping stays the caller's.  The file must then not be truncated while the
 * weight lives (its pages would be gone: SIGBUS, as with any mapped model file). */
sq_status sq_backend_weight_dense_map(sq_backend *be, const char *name, sq_dtype src_dtype,
                                      const void *src, void **map, size_t map_len, int64_t rows,
                                      int64_t cols, sq_weight **out, sq_error *err);
/* A 4-bit NF4 / FP4 weight (bitsandbytes layout, shape [out, in], any in >= 1: rows may start
 * mid-byte and blocks may cross rows; or layout G64 where sq_q4_layout_fits).  Both backends keep one float32 absmax per block
 * (double-quant absmax is expanded once, exactly as bnb reconstructs it).  q is not kept: the
 * caller may free it afterwards.
 * An int8 q (INT8 / INT8_ZP, quant.h) becomes a block-scaled weight (sq_backend_weight_qblock:
 * code_bits 8, block_elems 32, float32 scales = the row's scale once per 32 elements, and for
 * INT8_ZP biases = the row's bias): every element's value is sq_dequant_int8_row's, float32.
 * With in not a multiple of 32 it is held dense float32 with those same values. */
sq_status sq_backend_weight_4bit(sq_backend *be, const char *name, const sq_qtensor *q,
                                 sq_weight **out, sq_error *err);
/* The same for a q the caller gives up: a backend that keeps q's arrays as they are (the CPU
 * backend with q->layout G64: its packed and, without double quant, its absmax) takes them
 * instead of copying and sets those pointers of q to NULL; whatever is left in q stays the
 * caller's to free.  Same result bytes as sq_backend_weight_4bit. */
sq_status sq_backend_weight_4bit_take(sq_backend *be, const char *name, sq_qtensor *q,
                                      sq_weight **out, sq_error *err);
/* The 4-bit layout (quant.h) this backend keeps as it is: G64 for the CPU backend (a producer
 * that quantizes straight into it saves the backend a repack and a copy), BNB otherwise. */
sq_q4_layout sq_backend_q4_layout(const sq_backend *be);
/* A GGUF tensor kept as stored: data is rows x row_bytes (sq_ggml_row_bytes(type, cols)), the
 * rows of a ggml tensor whose ne[0] = cols, exactly as the file holds them; the caller may free
 * it afterwards.  F32 / F16 / BF16 become a dense weight (as sq_backend_weight_dense).  The
 * quantized types are kept in the block-scaled integer form of ggml_quant.h (codes + one scale
 * and bias per sub-block, halves where the file's are, never a float per element; Q4_0, Q4_1
 * and Q8_0 take exactly their GGUF bytes): every value a Linear multiplies by
 * equals sq_ggml_dequantize_row's bit for bit.  sq_backend_linear and sq_backend_embed (which
 * dequantizes the looked-up rows) take such a weight; rmsnorm and bias refuse it.
 * Unsupported type: SQ_ERR_UNSUPPORTED; cols not a multiple of the block: SQ_ERR_INVALID (both
 * name the tensor and the type).  *out NULL on failure. */
sq_status sq_backend_weight_ggml(sq_backend *be, const char *name, sq_ggml_type type,
                                 const void *data, int64_t rows, int64_t cols, sq_weight **out,
                                 sq_error *err);
/* A weight [rows, cols] already in the block-scaled integer form of ggml_quant.h, format f:
 * codes (rows x sq_qblock_code_bytes(f, cols)), scales (rows x cols / f->block_elems params,
 * f->scale_bits wide) and biases (the same; only with f->has_bias, else NULL), row after row, in
 * host memory; copied, the caller keeps them.  cols must be a multiple of 32 (SQ_ERR_INVALID).
 * Linear and embed take it as they take a GGUF weight (value = scale * code (+ bias), float32);
 * sq_weight_ggml_type is -1.  *out NULL on failure. */
sq_status sq_backend_weight_qblock(sq_backend *be, const char *name, const sq_qblock_format *f,
                                   int64_t rows, int64_t cols, const uint8_t *codes,
                                   const void *scales, const void *biases, sq_weight **out,
                                   sq_error *err);
void sq_backend_weight_free(sq_backend *be, sq_weight *w);  /* takes NULL */
int64_t sq_weight_rows(const sq_weight *w);
int64_t sq_weight_cols(const sq_weight *w);
sq_quant_type sq_weight_qtype(const sq_weight *w);        /* SQ_QUANT_NONE for dense and ggml;
                                                              INT8 / INT8_ZP for int8 ones */
uint64_t sq_weight_bytes(const sq_weight *w);              /* backend memory it holds */
int sq_weight_ggml_type(const sq_weight *w);   /* its sq_ggml_type, or -1 if not made from GGUF */

/* ---- ops (float32 activations; out may not alias inputs unless said) ---------------------- */

/* out[r] = table row ids[r] (ids_d: int32 on the backend, n_rows of them).  An id outside
 * [0, rows) fails with SQ_ERR_INVALID naming it (the CPU backend checks every id). */
sq_status sq_backend_embed(sq_backend *be, const sq_weight *table, const void *ids_d,
                           int64_t n_rows, void *out_d, sq_error *err);

/* out = x / sqrt(mean(x^2) + eps) * w, per row of width w->cols.  out may equal x. */
sq_status sq_backend_rmsnorm(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                             int64_t n_rows, void *out_d, sq_error *err);

/* Rotary embedding in place on q (n_rows, n_heads, head_dim) and k (n_rows, n_kv_heads,
 * head_dim); pos: host array of n_rows positions; inv_freq_d: head_dim / 2 floats on the
 * backend (see kernels/rope_math.cuh, sq_rope_inv_freq).  k_d may be NULL. */
sq_status sq_backend_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                          int n_kv_heads, int head_dim, const int32_t *pos,
                          const void *inv_freq_d, sq_error *err);

/* One sequence's part of a batch: rows [row0, row0 + n_tokens) of the activations belong to
 * cache slot `slot` at positions start_pos, start_pos + 1, …  Sequences are laid out one after
 * another (row0 = sum of the previous n_tokens). */
typedef struct sq_seq_span {
    int32_t slot;
    int32_t start_pos;
    int32_t n_tokens;
} sq_seq_span;

/* One layer's KV cache: k_d, v_d each float32 (n_slots, max_seq, n_kv_heads, head_dim). */
typedef struct sq_kv_layer {
    void *k_d, *v_d;
    int64_t n_slots, max_seq;
    int n_kv_heads, head_dim;
} sq_kv_layer;

/* Grouped-query causal attention.  q (n_rows, n_heads, head_dim), k and v (n_rows, n_kv_heads,
 * head_dim), already roped.  First stores k, v at (slot, pos) in the cache, then for every row
 * at position p attends over cache positions [0, p] of its slot with scale 1/sqrt(head_dim);
 * head h reads kv head h / (n_heads / n_kv_heads).  out (n_rows, n_heads, head_dim).
 * Prefill (one sequence, many tokens) and decode (many sequences, one token each) are the same
 * call; a row's result is the same bits either way. */
sq_status sq_backend_attention(sq_backend *be, const void *q_d, const void *k_d,
                               const void *v_d, const sq_kv_layer *kv, int n_heads,
                               int n_seqs, const sq_seq_span *seqs, void *out_d,
                               sq_error *err);

/* out (n_rows, w->rows) = x (n_rows, w->cols) · wᵀ (+ bias (1, w->rows) when not NULL).
 * Dense (F32 / BF16), 4-bit or ggml weights; few rows take a dequantize-on-the-fly GEMV, many rows a
 * blocked GEMM that reuses each dequantized tile across rows, with the same per-element
 * reduction order (so results do not depend on n_rows). */
sq_status sq_backend_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                            const sq_weight *bias, void *out_d, sq_error *err);

/* Up to SQ_BACKEND_MAX_LINEARS Linears of the same x (q / k / v, gate / up): out_d[i] =
 * x · w[i]ᵀ (+ bias[i]; bias may be NULL, or hold NULLs), every w[i] with the same cols.  The
 * same bits as n sq_backend_linear calls in order; the CPU backend with int8 activations
 * quantizes x once for all of them (when their activation layouts agree) and runs them in one
 * pool dispatch.  No out_d[i] may overlap x_d or another out_d[j] (SQ_ERR_INVALID). */
#define SQ_BACKEND_MAX_LINEARS 8
sq_status sq_backend_linear_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                                  const sq_weight *const *w, const sq_weight *const *bias,
                                  void *const *out_d, sq_error *err);

/* out = a + b, n floats.  out may equal a or b. */
sq_status sq_backend_add(sq_backend *be, const void *a_d, const void *b_d, int64_t n,
                         void *out_d, sq_error *err);
/* out = silu(gate) * up, n floats (silu(g) = g / (1 + exp(-g))).  out may equal gate or up. */
sq_status sq_backend_swiglu(sq_backend *be, const void *gate_d, const void *up_d, int64_t n,
                            void *out_d, sq_error *err);

/* ---- sampling ------------------------------------------------------------------------------ */

/* temperature <= 0 or top_k == 1: greedy (argmax, lowest index on ties).  Otherwise softmax of
 * logits / temperature restricted to the top_k largest (top_k <= 0: all; ties by lower index),
 * then to the smallest prefix (by decreasing probability, ties by lower index) whose mass
 * reaches top_p (top_p >= 1: all; at least one token always stays), renormalized, and one draw
 * with u = sq_sample_uniform(seed, seq_id, step): results depend only on the logits and
 * (seed, seq_id, step), never on batching or rank count. */
typedef struct sq_sample_params {
    float temperature;
    int32_t top_k;
    float top_p;
    uint64_t seed;
} sq_sample_params;

/* Counter-based uniform in [0, 1) with 53 random bits (splitmix64 of the key). */
double sq_sample_uniform(uint64_t seed, uint64_t seq_id, uint64_t step);

/* Samples one token per row of logits_d (n_rows, vocab); seq_ids / steps are host arrays of
 * n_rows (the key of each draw); ids_out a host array of n_rows.  n_rows <= reserved max_rows,
 * vocab <= reserved max_vocab. */
sq_status sq_backend_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                            const sq_sample_params *p, const uint64_t *seq_ids,
                            const uint64_t *steps, int32_t *ids_out, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
