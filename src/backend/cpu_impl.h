/* Private to the CPU backend: its handle, and the kernels split across cpu*.c files.
 * Must never be included outside src/backend/. */
#ifndef SHARDQ_CPU_IMPL_H
#define SHARDQ_CPU_IMPL_H

#include "backend_impl.h"

/* Below this many multiply-adds an op runs on the calling thread alone.  2^15 since the pool
 * dispatches through spinning workers (a run costs ~1 us, not a futex wake-up): measured on
 * SmolLM2-135M Q4_0 decode, 2 threads, 2^15 beat 2^17 by ~10 % (k / v projections, attention
 * of short sequences, norms now use both threads), 2^13 / 2^14 no better. */
#define SQ_CPU_SERIAL_WORK (UINT64_C(1) << 15)

typedef enum { SQ_CPU_PORTABLE = 0, SQ_CPU_AVX2, SQ_CPU_AVX512 } sq_cpu_isa;

typedef struct sq_cpu {
    sq_backend base;            /* first: a sq_backend * is a sq_cpu * */
    sq_pool *pool;
    sq_cpu_isa isa;
    bool vnni;                  /* AVX-512 VNNI (256-bit vpdpbusd) on the int8 path */
    bool zmm;                   /* and AVX-512BW: the int8 GEMM's 512-bit tile (cpu_q8.c) */
    bool act_int8;              /* Linear quantizes activations to int8 (cpu_q8.c) */
    int8_t *q8_buf;             /* int8 activation scratch: q8_cap codes, then per 32 of them
                                   dx, 8 lane sums xs (float), 8 int32 corrections */
    uint64_t q8_cap;
    /* sampling scratch (sized by reserve): per row of a call, vocab entries */
    int64_t sample_cap_rows, sample_cap_vocab;
    int32_t *sample_idx;        /* (max_rows, max_vocab) */
    double *sample_p;           /* (max_rows, max_vocab) */
} sq_cpu;

static inline sq_cpu *sq_cpu_of(sq_backend *be) { return (sq_cpu *)be; }

sq_status sq_cpu_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                        const sq_weight *bias, void *out_d, sq_error *err);
/* n Linears of one x (sq_backend_linear_multi): int8 activations quantized once and one pool
 * dispatch when every weight takes them with the same activation layout, else n Linears. */
sq_status sq_cpu_linear_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                              const sq_weight *const *w, const sq_weight *const *bias,
                              void *const *out_d, sq_error *err);
sq_status sq_cpu_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                      int n_kv_heads, int head_dim, const int32_t *pos, const void *inv_freq_d,
                      sq_error *err);
sq_status sq_cpu_attention(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                           const sq_kv_layer *kv, int n_heads, int n_seqs,
                           const sq_seq_span *seqs, int64_t n_rows, void *out_d, sq_error *err);
sq_status sq_cpu_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                        const sq_sample_params *p, const uint64_t *seq_ids,
                        const uint64_t *steps, int32_t *ids_out, sq_error *err);

/* The CPU backend's 4-bit layout (any K >= 1).  Row o of a [N, K] weight takes
 * sq_cpu_q4_row_bytes(K) bytes at o * that.  Each group of 64 elements k = 64 G + e is 32 bytes at
 * 32 G: element e sits in the low nibble (e < 32) or the high nibble (e >= 32) of byte
 * pos(e % 32), pos(8 j + i) = 4 j + i for i < 4 and 16 + 4 j + (i - 4) for i >= 4, so that a
 * vpshufb lookup of the 32 nibbles of a half and two rounds of unpacks give the half's four
 * 8-element chunks in k order.  A last group of 1 .. 32 elements takes 16 bytes: element e in
 * byte pos(e) % 16, low nibble for pos(e) < 16.  Unused nibbles are zero.  Element k's byte and
 * nibble shift: */
static inline void sq_cpu_q4_pos(int64_t K, int64_t k, int64_t *byte, int *shift) {
    int64_t G = k >> 6;
    int e = (int)(k & 63), i = e & 7, j = (e >> 3) & 3;
    int p = i < 4 ? 4 * j + i : 16 + 4 * j + (i - 4);
    if (K - G * 64 > 32) {
        *byte = G * 32 + p;
        *shift = (e >> 5) * 4;
    } else {
        *byte = G * 32 + (p & 15);
        *shift = (p >> 4) * 4;
    }
}
/* Packed bytes per weight row. */
int64_t sq_cpu_q4_row_bytes(int64_t K);
/* bnb's packed nibbles of a [rows, K] weight (flat element i in byte i / 2, even i in the high
 * nibble) into the layout above, rows in parallel on pool (NULL: the calling thread). */
void sq_cpu_q4_repack(sq_pool *pool, const uint8_t *src, uint8_t *dst, int64_t rows, int64_t K);
/* In int8 mode: a 4-bit weight just made (G64 rows, float32 absmax) interleaved by 16 outputs
 * for the int8 kernels when it fits (cpu_q8i.h); on failure its buffers are freed. */
sq_status sq_cpu_q4_q8i(sq_backend *be, sq_weight *w, sq_error *err);
/* A 4-bit weight in layout G64 (cpu_repack.c: kept as it is, taken over with take). */
sq_status sq_cpu_weight_4bit_g64(sq_backend *be, sq_weight *w, sq_qtensor *q, bool take,
                                 sq_error *err);
/* A dense F32 / BF16 weight kept in the caller's buffer (cpu_repack.c); false for F16. */
bool sq_cpu_weight_dense_take(sq_backend *be, sq_weight *w, sq_dtype src_dtype, void *src);
/* The same for src inside a read-only file mapping the weight then owns (w->map): F32 / BF16
 * aligned to their element size (the kernels load unaligned vectors), else false (copied). */
bool sq_cpu_weight_dense_map(sq_backend *be, sq_weight *w, sq_dtype src_dtype, const void *src,
                             void *map, size_t map_len);

/* ggml weights in the block-scaled integer form (cpu_ggml.c): upload, Linear (the same fixed
 * order as every other Linear), and one row dequantized (embedding). */
sq_status sq_cpu_weight_ggml(sq_backend *be, sq_weight *w, sq_ggml_type type, const void *data,
                             sq_error *err);
sq_status sq_cpu_linear_ggml(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                             const sq_weight *bias, void *out_d, sq_error *err);
void sq_cpu_ggml_row(const sq_weight *w, int64_t r, float *out);

/* Dynamic int8 activations (cpu_q8.c): whether w can take them, the Linear, the scratch it
 * needs (max_rows x max_width codes; grows only), and one row's quantization (tests). */
bool sq_cpu_q8_supported(const sq_weight *w);
sq_status sq_cpu_linear_q8(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                           const sq_weight *bias, void *out_d, sq_error *err);
/* n of them on one x (n <= SQ_BACKEND_MAX_LINEARS); false (nothing done) when they cannot share
 * one quantization of x (activation layouts differ, or rows past the scratch) */
bool sq_cpu_linear_q8_multi(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                            const sq_weight *const *w, const sq_weight *const *bias,
                            void *const *out_d);
sq_status sq_cpu_reserve_q8(sq_cpu *cpu, int64_t max_rows, int64_t max_width, sq_error *err);
void sq_cpu_q8_quantize_row(const float *x, int64_t K, bool perm, int32_t corr_zero, int8_t *qx,
                            float *dx, float *xs, int32_t *corr);

/* Dot product with the backend's fixed order: one 8-lane accumulator, fused multiply-adds
 * over k = 0, 8, 16, …, a fixed horizontal sum, then the tail fused one by one. */
float sq_cpu_dot(sq_cpu_isa isa, const float *a, const float *b, int64_t n);

#endif
