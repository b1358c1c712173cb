/* Owns dtype conversion between BF16 / F16 / F32 (and F64 -> F32): a hot path of loading.
 * Every loop is branch-free per element (selects, no early exits) so that the compiler
 * vectorizes it; this file is built with -ftree-vectorize -fvect-cost-model=dynamic (see
 * CMakeLists.txt).  Rounding is IEEE round-to-nearest-even, exactly as F16C / AVX512-BF16
 * hardware does it; NaN stays NaN (quiet, sign and top payload bits kept).
 * Must never depend on the FP environment beyond the default (RNE, no flush-to-zero) nor use
 * fast-math: the F16 paths use float arithmetic whose rounding is the conversion's rounding. */
#include <string.h>

#include "st_impl.h"

/* x86-64: each public loop is also compiled for x86-64-v3 (AVX2: twice the lanes), picked at
 * load time by an ifunc; other machines get the baseline loop.  Sanitizer builds keep only the
 * baseline loop, so the test suite checks both versions between the two builds. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(__SANITIZE_ADDRESS__)
#define SQ_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef SQ_CLONES
#define SQ_CLONES
#endif

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

SQ_CLONES void sq_bf16_to_f32(const uint16_t *restrict src, float *restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_from((uint32_t)src[i] << 16);
}

/* After M. Dukhan's FP16 library: a normal or inf/NaN half is its bits shifted into a
 * float's place, rebiased by a multiply (exact; inf/NaN stay so; a signalling NaN comes out
 * quiet, as vcvtph2ps does); a subnormal half is built as 0.5 + m * 2^-24 in the mantissa of
 * a float and the 0.5 subtracted (exact). */
static inline uint32_t f16_to_f32_bits(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w; /* drops the sign */
    const float normalized = f32_from((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = f32_from((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t mag = two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized);
    return sign | mag;
}

SQ_CLONES void sq_f16_to_f32(const uint16_t *restrict src, float *restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_from(f16_to_f32_bits(src[i]));
}

/* RNE on the bits: add 0x7fff plus the lowest kept bit, truncate.  NaN: keep the top payload,
 * set the quiet bit (a NaN whose payload sits in the low 16 bits must not become inf). */
static inline uint16_t f32_to_bf16_bits(uint32_t u) {
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

SQ_CLONES void sq_f32_to_bf16(const float *restrict src, uint16_t *restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16_bits(f32_bits(src[i]));
}

/* After M. Dukhan's FP16 library: scaling |x| by 2^112 then 2^-110 turns values past the
 * half range into inf; adding a power of two `bias` that puts the half's last kept bit at
 * a float's last mantissa bit makes the FPU round to nearest even (normals and subnormals
 * alike); the half's exponent and mantissa are then read off the sum's bits. */
static inline uint16_t f32_to_f16_bits(uint32_t w) {
    const float x = f32_from(w & 0x7fffffffu);
    float base = (x * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = f32_from((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    const uint32_t nan = 0x7E00u | ((w >> 13) & 0x3FFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? nan : nonsign));
}

SQ_CLONES void sq_f32_to_f16(const float *restrict src, uint16_t *restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16_bits(f32_bits(src[i]));
}

static void f64_to_f32(const double *restrict src, float *restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* A tensor inside a file written without padding may sit at an odd address: such a source
 * is copied in chunks to an aligned buffer first (the typed loops assume alignment). */
static void convert_aligned(sq_dtype dtype, const void *src, float *dst, size_t n) {
    switch (dtype) {
    case SQ_DTYPE_BF16: sq_bf16_to_f32(src, dst, n); break;
    case SQ_DTYPE_F16: sq_f16_to_f32(src, dst, n); break;
    case SQ_DTYPE_F64: f64_to_f32(src, dst, n); break;
    default: memmove(dst, src, n * sizeof *dst); break;
    }
}

sq_status sq_convert_to_f32(sq_dtype src_dtype, const void *src, float *dst, size_t n,
                            sq_error *err) {
    size_t esize = sq_dtype_size(src_dtype);
    if ((src_dtype == SQ_DTYPE_F32 || src_dtype == SQ_DTYPE_BF16 || src_dtype == SQ_DTYPE_F16 ||
         src_dtype == SQ_DTYPE_F64) && (uintptr_t)src % esize != 0) {
        double bounce[1024]; /* 8 KiB, aligned for every source type */
        size_t per = sizeof bounce / esize;
        for (size_t i = 0; i < n; i += per) {
            size_t k = n - i < per ? n - i : per;
            memcpy(bounce, (const char *)src + i * esize, k * esize);
            convert_aligned(src_dtype, bounce, dst + i, k);
        }
        return SQ_OK;
    }
    switch (src_dtype) {
    case SQ_DTYPE_F32: memmove(dst, src, n * sizeof *dst); return SQ_OK;
    case SQ_DTYPE_BF16: sq_bf16_to_f32(src, dst, n); return SQ_OK;
    case SQ_DTYPE_F16: sq_f16_to_f32(src, dst, n); return SQ_OK;
    case SQ_DTYPE_F64: f64_to_f32(src, dst, n); return SQ_OK;
    default:
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "cannot convert %s to float32 (F64, F32, F16 and BF16 only)",
                            sq_dtype_name(src_dtype));
    }
}
