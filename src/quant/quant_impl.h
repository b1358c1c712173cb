/* Private to the quant module: the block-range job the scalar and AVX2 paths share.
 * Never included outside src/quant/. */
#ifndef SHARDQ_QUANT_IMPL_H
#define SHARDQ_QUANT_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/quant.h"

/* Elements converted to float32 at a time per thread: one block (<= 4096 floats, 16 KiB). */
#define SQ_QUANT_MAX_BLOCKSIZE 4096

typedef struct sq_quant_job {
    sq_dtype src_dtype;  /* F32, F16 or BF16 */
    const void *src;     /* (n) elements of src_dtype */
    uint64_t n;          /* elements */
    int64_t blocksize;   /* 32..4096, power of two */
    int is_fp4;
    uint64_t n_blocks;   /* ceil(n / blocksize) */
    float *absmax;       /* (n_blocks) out */
    uint8_t *packed;     /* (ceil(n / 2)) out */
    int g64;             /* packed in layout G64 (then n % 64 == 0 and blocksize >= 64) */
    /* non-NULL: lowered (atomically) to the index within the job of the first block whose
     * absmax is NaN or Inf; each task looks at its own absmax while it is in cache */
    _Atomic uint64_t *first_bad;
} sq_quant_job;

/* Quantizes blocks [b0, b1) of job: absmax[b] and the packed bytes of those blocks.  The
 * trailing partial block (if in range) always goes through the scalar code. */
void sq_quant_blocks_scalar(const sq_quant_job *job, uint64_t b0, uint64_t b1);
#if defined(__x86_64__)
#define SQ_QUANT_HAVE_AVX2_CODE 1
void sq_quant_blocks_avx2(const sq_quant_job *job, uint64_t b0, uint64_t b1);
#endif

/* One block of float32 values x[0..len) (len even unless it is the tail) -> absmax + packed. */
void sq_quant_block_scalar(const float *x, int64_t len, bool tail, int is_fp4, float *absmax,
                           uint8_t *packed);
/* Converts src elements [first, first + n) of dtype d to float32 (n <= SQ_QUANT_MAX_BLOCKSIZE). */
void sq_quant_load_f32(sq_dtype d, const void *src, uint64_t first, int64_t n, float *dst);

#endif
