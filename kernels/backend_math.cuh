/* backend_math.cuh: per-element math of the backend ops that the CUDA kernels (the .cu files of kernels/) and
 * the host share, in host + device `static inline` functions (plain C when included from a .c
 * file), so that CPU tests (tests/test_cuda_math.c) test the GPU's arithmetic.  Owns: SwiGLU's
 * element, the RMSNorm scale, one element of a bitsandbytes-packed 4-bit row, the attention
 * online-softmax step, the counter-based sampling generator (bit-identical to
 * sq_sample_uniform in src/backend/backend.c) and the sequential top-p / draw walk of sampling.
 * Must never allocate, log, touch global state, or be compiled with FMA contraction (C builds
 * with -ffp-contract=off, CUDA with --fmad=false): where a fused multiply-add is meant it is
 * written as fmaf().
 *
 * What is shared and what is not: the formulas and their rounding steps are the same on both
 * sides; expf / exp / sqrt of the CUDA math library may differ from glibc's by an ulp or two
 * (CUDA Programming Guide, "Mathematical Functions": expf 2 ulp, exp 1 ulp), which is why the
 * GPU-vs-CPU test compares with error bounds, not bits. */
#ifndef SHARDQ_BACKEND_MATH_CUH
#define SHARDQ_BACKEND_MATH_CUH

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SQ_BM_HD __host__ __device__ __forceinline__
#else
#define SQ_BM_HD static inline
#endif

/* silu(g) * u with silu(g) = g / (1 + exp(-g)): the CPU backend's expression, same roundings. */
SQ_BM_HD float sq_bm_swiglu1(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

/* RMSNorm: the float32 scale 1 / sqrt(mean(x^2) + eps) from a float64 sum of squares of n
 * elements (the CPU sums in float64 too, so both round once at the end). */
SQ_BM_HD float sq_bm_rms_scale(double sum_sq, int64_t n, float eps) {
    return (float)(1.0 / sqrt(sum_sq / (double)n + (double)eps));
}
/* One output element: (x * scale) * w, two float32 roundings as in the CPU backend. */
SQ_BM_HD float sq_bm_rms_apply(float x, float scale, float w) { return (x * scale) * w; }

/* Element k of a row of a bitsandbytes-packed 4-bit weight (element 2j in the high nibble of
 * byte j): code[q] * absmax, one float32 rounding, exactly bnb's dequantized value. */
SQ_BM_HD unsigned sq_bm_q4_code(const uint8_t *row_packed, int64_t k) {
    uint8_t b = row_packed[k >> 1];
    return (k & 1) ? (unsigned)(b & 15u) : (unsigned)(b >> 4);
}
SQ_BM_HD float sq_bm_q4_weight(const float code[16], unsigned q, float absmax) {
    return code[q & 15u] * absmax;
}

/* Attention's online softmax over positions in ascending order, one step with score sc:
 * (m, l) are the running max and sum; returns the factor the accumulated values are multiplied
 * by before adding e * v, and sets *e.  Same expressions as src/backend/cpu_attn.c. */
SQ_BM_HD float sq_bm_softmax_step(float sc, float *m, float *l, float *e) {
    float corr = 1.0f;
    if (sc > *m) {
        corr = expf(*m - sc);   /* 0 on the first position (m = -inf) */
        *l *= corr;
        *m = sc;
    }
    *e = expf(sc - *m);
    *l += *e;
    return corr;
}

/* Whether one warp's partial (running max m, sum l) of attention's online softmax takes part
 * in the merge of the warps' partials: only a warp that saw no position (m = -inf, l = 0) is
 * left out.  A partial made NaN by a NaN score takes part, so NaN reaches the output as the
 * CPU backend's single pass propagates it (a test of "l > 0" would drop it). */
SQ_BM_HD int sq_bm_attn_merge_keeps(float m, float l) { return !(m == -INFINITY && l == 0.0f); }

/* ---- sampling -------------------------------------------------------------------------------- */
/* splitmix64 finalizer and the counter-based uniform of sq_sample_uniform: 53 random bits of
 * the key (seed, seq_id, step) in [0, 1). */
SQ_BM_HD uint64_t sq_bm_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
SQ_BM_HD double sq_bm_uniform(uint64_t seed, uint64_t seq_id, uint64_t step) {
    const uint64_t g = 0x9e3779b97f4a7c15ull;
    uint64_t h = sq_bm_mix64(seed + g);
    h = sq_bm_mix64(h ^ (seq_id + 2 * g));
    h = sq_bm_mix64(h ^ (step + 3 * g));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/* Candidates are the logits within 64 temperature-scaled nats of the best one (the rest weigh
 * less than V e^-64 of the mass): x is kept when (double)x >= this floor (src/backend/cpu_sample.c
 * applies the same rule).  On a list sorted by decreasing logit they form a prefix; returns its
 * length (binary search), then top_k (> 0) caps it. */
SQ_BM_HD int64_t sq_bm_sample_n_candidates(const float *sorted, int64_t n, float temperature,
                                           int32_t top_k) {
    double floor_l = (double)sorted[0] - 64.0 * (double)temperature;
    int64_t lo = 1, hi = n;   /* sorted[0] always stays; answer in [lo, hi] */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if ((double)sorted[mid] >= floor_l) lo = mid + 1; else hi = mid;
    }
    return (top_k > 0 && top_k < lo) ? top_k : lo;
}

/* The unnormalized probability of a candidate with logit x, given the largest kept logit x0 and
 * 1 / temperature (float64, as the CPU backend). */
SQ_BM_HD double sq_bm_sample_weight(float x, float x0, double inv_t) {
    return exp((double)x * inv_t - (double)x0 * inv_t);
}

/* The sequential walk of a draw over n candidates sorted by decreasing logit (ties by lower
 * vocabulary index), pr their weights: keeps the smallest prefix whose mass reaches top_p
 * (top_p >= 1: all, at least one always), then returns the position i in the sorted list where
 * u01 * (kept mass) falls.  Summation order is the CPU backend's (ascending i, float64), so the
 * same weights give the same pick. */
SQ_BM_HD int64_t sq_bm_sample_walk(const double *pr, int64_t n, float top_p, double u01) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += pr[i];
    if (top_p < 1.0f) {
        double target = (double)top_p * sum, cum = 0.0;
        int64_t keep = 0;
        while (keep < n) {
            cum += pr[keep++];
            if (cum >= target) break;
        }
        n = keep;
        sum = cum;
    }
    double u = u01 * sum, cum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        cum += pr[i];
        if (u < cum) return i;
    }
    return n - 1;
}

/* sq_bm_sample_walk in one sequential pass: pr is overwritten with its running sums (float64,
 * ascending i: exactly the partial sums every loop of sq_bm_sample_walk computes), then the
 * top-p cut and the draw are binary searches over them.  Returns the same position as
 * sq_bm_sample_walk for the same weights, bit for bit: the running sums of non-negative weights
 * never decrease, and a NaN weight makes the total and every comparison with it NaN / false
 * alike in both.  One walk over the vocabulary instead of three on the GPU's single thread. */
SQ_BM_HD int64_t sq_bm_sample_walk_prefix(double *pr, int64_t n, float top_p, double u01) {
    double cum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        cum += pr[i];
        pr[i] = cum;
    }
    double sum = n > 0 ? pr[n - 1] : 0.0;
    if (top_p < 1.0f) {
        /* keep = 1 + the first i with pr[i] >= target, or n */
        const double target = (double)top_p * sum;
        int64_t lo = 0, hi = n;
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (pr[mid] >= target) hi = mid; else lo = mid + 1;
        }
        n = lo < n ? lo + 1 : n;
        sum = pr[n - 1];
    }
    const double u = u01 * sum;
    int64_t lo = 0, hi = n;   /* the first i with u < pr[i], or n - 1 */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (u < pr[mid]) hi = mid; else lo = mid + 1;
    }
    return lo < n ? lo : n - 1;
}

#undef SQ_BM_HD
#endif
