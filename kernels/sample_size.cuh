/* sample_size.cuh: the arithmetic of the sampling scratch (kernels/sample.cu), in host + device
 * `static inline` functions (plain C when included from a .c file), so that host code and the
 * CPU tests (tests/test_cuda_math.c) compute exactly the bytes the CUDA backend reserves.
 * Owns: how many rows the scratch is sized for, and the carve of one allocation into float64
 * weights, sorted keys, indices in and out (rows x vocab each), segment offsets (rows + 1),
 * then CUB's temporary storage (its size comes from CUB and is added by the caller).
 * Must never allocate, log or touch global state. */
#ifndef SHARDQ_SAMPLE_SIZE_CUH
#define SHARDQ_SAMPLE_SIZE_CUH

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SQ_SS_HD __host__ __device__ __forceinline__
#else
#define SQ_SS_HD static inline
#endif

/* Rows the sampling scratch is sized for: the rows one sample call sees (one per sampled
 * sequence), never the prompt tokens of a micro-batch.  max_sample_rows <= 0 (a caller that
 * does not say): max_rows. */
SQ_SS_HD int64_t sq_sample_reserve_rows(int64_t max_rows, int64_t max_sample_rows) {
    if (max_sample_rows <= 0) return max_rows;
    return max_sample_rows < max_rows || max_rows <= 0 ? max_sample_rows : max_rows;
}

/* The carve of the scratch for rows x vocab, CUB's part excluded: off[0..4] the byte offsets
 * of the float64 weights, the float keys, the int32 indices in and out, the int offsets;
 * off[5] where CUB's storage starts (every part 256-byte aligned).  False when rows x vocab
 * is not in [1, 2^31 - 1] (CUB's segmented sort counts items in int). */
SQ_SS_HD bool sq_sample_carve(int64_t rows, int64_t vocab, size_t off[6]) {
    if (rows <= 0 || vocab <= 0 || rows > 0x7fffffff || vocab > 0x7fffffff ||
        rows * vocab > 0x7fffffff)
        return false;
    const size_t n = (size_t)rows * (size_t)vocab;
    const size_t sizes[5] = {n * sizeof(double), n * sizeof(float), n * sizeof(int32_t),
                             n * sizeof(int32_t), (size_t)(rows + 1) * sizeof(int)};
    size_t o = 0;
    for (int i = 0; i < 5; i++) {
        off[i] = o;
        o = (o + sizes[i] + 255) & ~(size_t)255;
    }
    off[5] = o;
    return true;
}

#endif
