/* quant_avx2.c: the AVX2 block quantizer, chosen at run time (__builtin_cpu_supports) and
 * compiled per function with __attribute__((target)), so the rest of the build stays baseline
 * x86-64.  It must give exactly the bytes of quant_scalar.c: the scale is one IEEE multiply
 * (no FMA anywhere; the target list below leaves FMA out on purpose), the code is found by
 * counting compares against the float32 midpoints (exact, NaN counts as above every bound as
 * torch.bucketize does), and the trailing partial block is left to the scalar code.
 * Must never allocate or log. */
#include "quant_impl.h"

#if defined(SQ_QUANT_HAVE_AVX2_CODE)
#include <immintrin.h>

#include "../../kernels/quant_math.cuh"

#define SQ_AVX2 __attribute__((target("avx2,f16c")))

/* 8 source elements at src[first + i] -> float32 lanes. */
SQ_AVX2 static inline __m256 load8(sq_dtype d, const void *src, uint64_t i) {
    if (d == SQ_DTYPE_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (d == SQ_DTYPE_F16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
        return _mm256_cvtph_ps(h);  /* exact, subnormals included */
    }
    return _mm256_loadu_ps((const float *)src + i);
}

/* Sorted-position count #{k : !(v <= b[k])} (NaN lanes count all 15), in two levels: three
 * compares against b[3], b[7], b[11] give the quarter g, then three compares against
 * b[4g], b[4g+1], b[4g+2] fetched per lane with a permute.  The bounds are sorted, so this is
 * the same count as fifteen compares, with sixteen instructions instead of thirty. */
typedef struct { __m256 b3, b7, b11, t0, t1, t2; } bounds8;

SQ_AVX2 static inline bounds8 make_bounds(const float *b) {
    bounds8 r;
    r.b3 = _mm256_set1_ps(b[3]);
    r.b7 = _mm256_set1_ps(b[7]);
    r.b11 = _mm256_set1_ps(b[11]);
    r.t0 = _mm256_setr_ps(b[0], b[4], b[8], b[12], 0, 0, 0, 0);
    r.t1 = _mm256_setr_ps(b[1], b[5], b[9], b[13], 0, 0, 0, 0);
    r.t2 = _mm256_setr_ps(b[2], b[6], b[10], b[14], 0, 0, 0, 0);
    return r;
}

SQ_AVX2 static inline __m256i bucket8(__m256 v, const bounds8 *b) {
    __m256i g = _mm256_setzero_si256();
    g = _mm256_sub_epi32(g, _mm256_castps_si256(_mm256_cmp_ps(v, b->b3, _CMP_NLE_UQ)));
    g = _mm256_sub_epi32(g, _mm256_castps_si256(_mm256_cmp_ps(v, b->b7, _CMP_NLE_UQ)));
    g = _mm256_sub_epi32(g, _mm256_castps_si256(_mm256_cmp_ps(v, b->b11, _CMP_NLE_UQ)));
    __m256i acc = _mm256_slli_epi32(g, 2);
    acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(b->t0, g), _CMP_NLE_UQ)));
    acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(b->t1, g), _CMP_NLE_UQ)));
    acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(b->t2, g), _CMP_NLE_UQ)));
    return acc;
}

SQ_AVX2 static inline __attribute__((always_inline)) void
encode_avx2(const sq_quant_job *job, const sq_dtype dtype, const int is_fp4, const int G64,
            uint64_t first, int64_t len, const __m256 r, const bounds8 *bounds, __m256i fp4_order,
            uint8_t *dst);

/* One full block (len multiple of 32) from the source: absmax + packed bytes. */
/* Always inlined into a dispatcher with constant dtype and is_fp4, so the per-vector branches
 * fold away. */
SQ_AVX2 static inline __attribute__((always_inline)) void
block_avx2(const sq_quant_job *job, const sq_dtype dtype, const int is_fp4, const int G64,
           uint64_t first, int64_t len, const bounds8 *bounds, __m256i fp4_order,
           float *absmax_out, uint8_t *dst) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    /* pass 1: max|x| with torch's NaN propagation (track NaN lanes apart from the max) */
    __m256 mx = _mm256_setzero_ps(), nanm = _mm256_setzero_ps();
    for (int64_t i = 0; i < len; i += 8) {
        __m256 a = _mm256_and_ps(load8(dtype, job->src, first + (uint64_t)i), sign);
        nanm = _mm256_or_ps(nanm, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        mx = _mm256_max_ps(mx, a);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float am = _mm_cvtss_f32(m4);
    if (_mm256_movemask_ps(nanm)) {
        /* the block holds a NaN: let the scalar rule pick the same NaN bits */
        am = 0.0f;
        float buf[8];
        for (int64_t i = 0; i < len; i += 8) {
            _mm256_storeu_ps(buf, load8(dtype, job->src, first + (uint64_t)i));
            for (int j = 0; j < 8; j++) am = sq_qm_absmax_step(am, buf[j]);
        }
    }
    *absmax_out = am;
    encode_avx2(job, dtype, is_fp4, G64, first, len, _mm256_set1_ps(sq_qm_full_recip(am)), bounds,
                fp4_order, dst);
}

/* The codes of 32 elements from e, scaled by r, as bytes in the order of the packs below:
 * dword d of the result holds elements 8 (d % 4) + 4 (d / 4) + 0..3 (FP4: already mapped to
 * bnb's codes).  That order is G64's pos() order; BNB permutes it back to element order. */
SQ_AVX2 static inline __attribute__((always_inline)) __m256i
codes32_avx2(const sq_quant_job *job, const sq_dtype dtype, const int is_fp4, uint64_t e,
             const __m256 r, const bounds8 *bounds, __m256i fp4_order) {
    const __m256 lo = _mm256_set1_ps(-1.0f), hi = _mm256_set1_ps(1.0f);
    /* clamp keeping NaN: max/min return the second operand when either is NaN */
    __m256 v0 = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(load8(dtype, job->src, e), r)));
    __m256 v1 = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(load8(dtype, job->src, e + 8), r)));
    __m256 v2 = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(load8(dtype, job->src, e + 16), r)));
    __m256 v3 = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(load8(dtype, job->src, e + 24), r)));
    __m256i q0 = bucket8(v0, bounds), q1 = bucket8(v1, bounds);
    __m256i q2 = bucket8(v2, bounds), q3 = bucket8(v3, bounds);
    __m256i p16a = _mm256_packs_epi32(q0, q1);     /* a0-3 b0-3 | a4-7 b4-7 */
    __m256i p16b = _mm256_packs_epi32(q2, q3);
    __m256i p8 = _mm256_packus_epi16(p16a, p16b);  /* a0-3 b0-3 c0-3 d0-3 | a4-7 ... */
    if (is_fp4) p8 = _mm256_shuffle_epi8(fp4_order, p8);  /* sorted pos -> bnb code */
    return p8;
}

/* Pass 2 of a full block: scale by r (8 equal lanes), find codes, pack.  BNB: 32 elements ->
 * 16 bytes in element order.  G64 (len a multiple of 64): 64 elements -> 32 bytes, the low
 * nibbles from the first 32, the high from the next 32, already in pos() order. */
SQ_AVX2 static inline __attribute__((always_inline)) void
encode_avx2(const sq_quant_job *job, const sq_dtype dtype, const int is_fp4, const int G64,
            uint64_t first, int64_t len, const __m256 r, const bounds8 *bounds, __m256i fp4_order,
            uint8_t *dst) {
    if (G64) {
        for (int64_t i = 0; i < len; i += 64) {
            const uint64_t e = first + (uint64_t)i;
            __m256i c0 = codes32_avx2(job, dtype, is_fp4, e, r, bounds, fp4_order);
            __m256i c1 = codes32_avx2(job, dtype, is_fp4, e + 32, r, bounds, fp4_order);
            /* codes < 16: the 16-bit shift moves no bit across a byte */
            _mm256_storeu_si256((__m256i *)(dst + i / 2), _mm256_or_si256(c0, _mm256_slli_epi16(c1, 4)));
        }
        return;
    }
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i nib = _mm256_set1_epi16(0x0110);  /* even byte * 16 + odd byte * 1 */
    for (int64_t i = 0; i < len; i += 32) {
        __m256i p8 = codes32_avx2(job, dtype, is_fp4, first + (uint64_t)i, r, bounds, fp4_order);
        p8 = _mm256_permutevar8x32_epi32(p8, perm);         /* elements 0..31 in order */
        __m256i w = _mm256_maddubs_epi16(p8, nib);          /* 16 x (even << 4 | odd) */
        __m256i b = _mm256_packus_epi16(w, w);              /* bytes 0-7 | 8-15 per lane */
        b = _mm256_permute4x64_epi64(b, 0x08);              /* qwords 0, 2 */
        _mm_storeu_si128((__m128i *)(dst + i / 2), _mm256_castsi256_si128(b));
    }
}

#ifndef SQ_QUANT_PREFETCH
#define SQ_QUANT_PREFETCH 4096   /* bytes past the group being quantized */
#endif

/* Eight consecutive full blocks: the eight maxima are reduced together and the eight
 * reciprocals come from one vector division (the same IEEE 1.0f / max(absmax, 1e-38f) as the
 * scalar rule), which hides the per-block reduction and division latency of small blocks.
 * A group holding a NaN goes block by block (the scalar NaN rule). */
SQ_AVX2 static inline __attribute__((always_inline)) void
group8_avx2(const sq_quant_job *job, const sq_dtype dtype, const int is_fp4, const int G64,
            uint64_t first, int64_t B, const bounds8 *bounds, __m256i fp4_order, float *absmax_out,
            uint8_t *dst) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    /* the source a few KiB ahead: the hardware prefetcher stops at each 4 KiB page, and a
     * loaded weight streams from DRAM (the page cache), page by page */
    {
        const size_t es = dtype == SQ_DTYPE_F32 ? 4 : 2;
        /* an address, not a pointer: past the source's end it is only a hint (never faults) */
        const uintptr_t ahead = (uintptr_t)job->src + (first + 8 * (uint64_t)B) * es + SQ_QUANT_PREFETCH;
        for (size_t k = 0; k < 8 * (size_t)B * es; k += 64)
            _mm_prefetch((const char *)(ahead + k), _MM_HINT_T0);
    }
    __m256 m[8];
    int any_nan = 0;
    for (int g = 0; g < 8; g++) {
        __m256 mx = _mm256_setzero_ps(), nanm = _mm256_setzero_ps();
        const uint64_t f = first + (uint64_t)g * (uint64_t)B;
        for (int64_t i = 0; i < B; i += 8) {
            __m256 a = _mm256_and_ps(load8(dtype, job->src, f + (uint64_t)i), sign);
            nanm = _mm256_or_ps(nanm, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
            mx = _mm256_max_ps(mx, a);
        }
        m[g] = mx;
        any_nan |= _mm256_movemask_ps(nanm);
    }
    if (any_nan) {
        for (int g = 0; g < 8; g++)
            block_avx2(job, dtype, is_fp4, G64, first + (uint64_t)g * (uint64_t)B, B, bounds,
                       fp4_order, absmax_out + g, dst + (size_t)g * (size_t)B / 2);
        return;
    }
    /* 8 x 8 horizontal max: lane g of v = max over m[g] */
    __m256 s0 = _mm256_max_ps(_mm256_unpacklo_ps(m[0], m[1]), _mm256_unpackhi_ps(m[0], m[1]));
    __m256 s1 = _mm256_max_ps(_mm256_unpacklo_ps(m[2], m[3]), _mm256_unpackhi_ps(m[2], m[3]));
    __m256 s2 = _mm256_max_ps(_mm256_unpacklo_ps(m[4], m[5]), _mm256_unpackhi_ps(m[4], m[5]));
    __m256 s3 = _mm256_max_ps(_mm256_unpacklo_ps(m[6], m[7]), _mm256_unpackhi_ps(m[6], m[7]));
    __m256 u0 = _mm256_max_ps(_mm256_shuffle_ps(s0, s1, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(s0, s1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 u1 = _mm256_max_ps(_mm256_shuffle_ps(s2, s3, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(s2, s3, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 v = _mm256_max_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(absmax_out, v);
    const __m256 lo = _mm256_set1_ps(sq_qm_f32(SQ_QM_ABSMAX_FLOOR_BITS));
    const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_max_ps(lo, v));
    for (int g = 0; g < 8; g++)
        encode_avx2(job, dtype, is_fp4, G64, first + (uint64_t)g * (uint64_t)B, B,
                    _mm256_permutevar8x32_ps(r, _mm256_set1_epi32(g)), bounds, fp4_order,
                    dst + (size_t)g * (size_t)B / 2);
}

SQ_AVX2 void sq_quant_blocks_avx2(const sq_quant_job *job, uint64_t b0, uint64_t b1) {
    static const uint32_t nf4b[15] = SQ_QM_NF4_BOUND_BITS, fp4b[15] = SQ_QM_FP4_BOUND_BITS;
    static const uint8_t order[16] = SQ_QM_FP4_ORDER;
    float bf[15];
    for (int k = 0; k < 15; k++) bf[k] = sq_qm_f32(job->is_fp4 ? fp4b[k] : nf4b[k]);
    const bounds8 bounds = make_bounds(bf);
    __m128i o = _mm_loadu_si128((const __m128i *)order);
    __m256i fp4_order = _mm256_broadcastsi128_si256(o);
    const uint64_t B = (uint64_t)job->blocksize;
    const uint64_t n_full = job->n / B;  /* blocks before the trailing partial one */
    for (uint64_t b = b0; b < b1;) {
        uint64_t first = b * B;
        if (b >= n_full) {  /* the trailing partial block */
            sq_quant_blocks_scalar(job, b, b + 1);
            b++;
            continue;
        }
        float *am = &job->absmax[b];
        uint8_t *dst = job->packed + first / 2;
        const int group = b + 8 <= b1 && b + 8 <= n_full;
        b += group ? 8 : 1;
#define SQ_BLOCK(D, F, G)                                                                    \
    (group ? group8_avx2(job, D, F, G, first, (int64_t)B, &bounds, fp4_order, am, dst)     \
           : block_avx2(job, D, F, G, first, (int64_t)B, &bounds, fp4_order, am, dst))
        switch ((job->src_dtype * 2 + (job->is_fp4 != 0)) * 2 + (job->g64 != 0)) {
        case (SQ_DTYPE_BF16 * 2) * 2: SQ_BLOCK(SQ_DTYPE_BF16, 0, 0); break;
        case (SQ_DTYPE_BF16 * 2) * 2 + 1: SQ_BLOCK(SQ_DTYPE_BF16, 0, 1); break;
        case (SQ_DTYPE_BF16 * 2 + 1) * 2: SQ_BLOCK(SQ_DTYPE_BF16, 1, 0); break;
        case (SQ_DTYPE_BF16 * 2 + 1) * 2 + 1: SQ_BLOCK(SQ_DTYPE_BF16, 1, 1); break;
        case (SQ_DTYPE_F16 * 2) * 2: SQ_BLOCK(SQ_DTYPE_F16, 0, 0); break;
        case (SQ_DTYPE_F16 * 2) * 2 + 1: SQ_BLOCK(SQ_DTYPE_F16, 0, 1); break;
        case (SQ_DTYPE_F16 * 2 + 1) * 2: SQ_BLOCK(SQ_DTYPE_F16, 1, 0); break;
        case (SQ_DTYPE_F16 * 2 + 1) * 2 + 1: SQ_BLOCK(SQ_DTYPE_F16, 1, 1); break;
        case (SQ_DTYPE_F32 * 2 + 1) * 2: SQ_BLOCK(SQ_DTYPE_F32, 1, 0); break;
        case (SQ_DTYPE_F32 * 2 + 1) * 2 + 1: SQ_BLOCK(SQ_DTYPE_F32, 1, 1); break;
        case (SQ_DTYPE_F32 * 2) * 2 + 1: SQ_BLOCK(SQ_DTYPE_F32, 0, 1); break;
        default: SQ_BLOCK(SQ_DTYPE_F32, 0, 0); break;
        }
#undef SQ_BLOCK
    }
}
#endif
