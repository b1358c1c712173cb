/* CPU backend, private: block-scaled weights interleaved by groups of 16 outputs for the int8
 * activation kernels (cpu_q8i.c).  Must never be included outside src/backend/.
 *
 * Which weights (sq_cpu_q8i_eligible), rows % 16 == 0 always: QBLOCK, blocks of 32 elements, no
 * bias (GGUF Q4_0, Q8_0; int8 absmax weights); NF4 / FP4 (SQ_WSTORE_Q4) with cols % 64 == 0,
 * blocksize >= 64 and cols % blocksize == 0 (absmax blocks inside a row; double-quant absmax
 * is expanded to float32 at upload already).  The CPU backend stores them so (w->q8i) at upload
 * when its Linear takes int8 activations, on every ISA path alike; every other weight keeps the
 * row-major form.
 *
 * Layout, group g = rows 16 g .. 16 g + 15 at the place of those rows in the row-major arrays
 * (the same bytes in all, so no second copy):
 *   codes   a block's code bytes (16 for 4-bit, 32 for 8-bit) as NG = 4 or 8 dwords t; block b,
 *           dword t of row 16 g + i at byte (b * NG + t) * 64 + 4 i of the group: one 64-byte
 *           load is dword t of the 16 outputs, the lanes of one vpdpbusd.
 *   scales  scale b of row 16 g + i at index 16 b + i of the group (16 scales a block).
 * NF4 / FP4: a block of 32 is half b % 2 of the G64 group b / 2 (cpu_impl.h), its activation
 * bytes in q8_perm_elem's order (cpu_q8.c); code byte j (< 16) of the block holds the nibble of
 * activation byte j (low) and of 16 + j (high), as Q4_0's; nibbles stay 4-bit (decoded at run
 * time through the int8 code table).  Scales: absmax (float32, unscaled) of weight block B of
 * row 16 g + i at index 16 B + i of the group (16 a weight block; a block of 32 b reads B =
 * 32 b / blocksize), so the f32 path still finds each element's exact absmax. */
#ifndef SQ_CPU_Q8I_H
#define SQ_CPU_Q8I_H

#include "cpu_impl.h"

enum { SQ_Q8I_GROUP = 16 };

bool sq_cpu_q8i_eligible(const sq_weight *w);
/* Interleave group g of w from 16 row-major rows (codes: 16 x code_row_bytes; scales: 16 x
 * cols / 32 params; NF4 / FP4: 16 rows of layout G64, cols / 2 bytes, and their float32 absmax,
 * cols / blocksize each). */
void sq_cpu_q8i_pack_group(const sq_weight *w, int64_t g, const uint8_t *codes, const void *scales);
/* The code bytes of block b of row o in the row-major order (16 or 32 of them). */
void sq_cpu_q8i_block_codes(const sq_weight *w, int64_t o, int64_t b, uint8_t *dst);
/* Index of the scale of block b (of 32) of row o in w->absmax_d (NF4 / FP4: the absmax of the
 * weight block holding it). */
int64_t sq_cpu_q8i_param_index(const sq_weight *w, int64_t o, int64_t b);
/* NF4 / FP4 interleaved: element k of row o's nibble (the code table's index) and absmax. */
int sq_cpu_q8i_q4_nibble(const sq_weight *w, int64_t o, int64_t k);
float sq_cpu_q8i_q4_absmax(const sq_weight *w, int64_t o, int64_t k);

/* Interleave w in place (w->q8i) when it is eligible; nothing otherwise.  Upload only; groups
 * in parallel on pool (NULL: the calling thread). */
sq_status sq_cpu_q8i_repack(sq_pool *pool, sq_weight *w, sq_error *err);

/* One call of the int8-activation Linear on an interleaved weight (cpu_q8.c fills it). */
typedef struct {
    const sq_weight *w;
    const float *bias;        /* (N) float32, or bias_bf16, or neither */
    const uint16_t *bias_bf16;
    float *out;               /* (n_rows, N) */
    const int8_t *qx;         /* (n_rows, K) */
    const float *dx;          /* (n_rows, nb) */
    const int32_t *bsum;      /* (n_rows, nb): -z * the block's sum of qx (sq_cpu_q8i_block_sums) */
    int64_t K, N, nb;
    sq_cpu_isa isa;
    bool zmm;
    const int8_t *lut;        /* NF4 / FP4: the int8 code table (cpu_q8.c); NULL otherwise */
} sq_q8i_args;

/* bsum[r][b] = the sum of corr[r][b][0..7] (cpu_q8.c's lane corrections -z * the lane's sum
 * of qx), for n_rows rows of nb blocks; once per call, before the tiles. */
void sq_cpu_q8i_block_sums(const int32_t *corr, int64_t n_rows, int64_t nb, sq_cpu_isa isa,
                           int32_t *bsum);

/* Outputs [o0, o1) (whole groups) x rows [r0, r1). */
void sq_cpu_q8i_tile(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0, int64_t r1);

#endif
