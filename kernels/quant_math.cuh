/* quant_math.cuh: the per-element math of bitsandbytes' blockwise 4-bit quantization, shared by
 * the CPU quantizer (src/quant/, plain C) and the CUDA kernels (kernels/quant.cu), so that the
 * CPU tests also test the GPU's arithmetic.  Owns: the NF4 / FP4 code tables, the float32
 * bucketize bounds, the 8-bit dynamic map, nearest-code search, the block scale, packing, the
 * dequantization of one element and the double-quant absmax reconstruction.
 * Must never allocate, log, touch global state, or be compiled with fast-math / FMA contraction
 * (the project builds C with -ffp-contract=off and CUDA with --fmad=false; the two-rounding
 * expressions below rely on it).
 *
 * Reference: bitsandbytes 0.50.2 on the CPU (torch 2.15), which is what the tests can run:
 *   4-bit  (backends/default/ops.py, quantize_4bit; no CPU-native 4-bit quantizer in 0.50.2):
 *     full block:     absmax = max|x| (NaN propagates);  s = clamp(x * (1.0f / max(absmax,1e-38f)), -1, 1)
 *     trailing block: am = max(max|x|, 1e-38f) (stored!);  s = clamp(x / am, -1, 1)  (a true division)
 *     code = torch.bucketize(s, float32 midpoints of the sorted table, right=False): ties go LOW,
 *            NaN goes past the end (sorted index 15).  FP4: sorted index -> bnb code via argsort.
 *     packing: byte j = code[2j] << 4 | code[2j+1]; an odd count is padded with s = 0.
 *   8-bit nested step (backends/cpu/ops.py -> libbitsandbytes_cpu quantize_cpu_impl<float>):
 *     absmax = max(0, max over the block of |x|, NaN ignored); absmax == 0 -> every code 0;
 *     else v = clamp(x * (1.0f / absmax), -1, 1);
 *     i = (uint16)(int)trunc(fmaf((v + 1.0f) * 0.5f, 65535.0f, 0.5f))  (the .so uses vfmadd213ss)
 *     code = lut[i], lut[i] = #{ k < 255 : mid[k] < (2.0f * i) / 65535.0f - 1.0f },
 *     mid[k] = 0.5f * (dyn[k] + dyn[k + 1]).  NaN v -> i = 0 (cvttss2si gives INT_MIN).
 *
 * Where bitsandbytes' CUDA kernels differ (documented, not emulated; see docs/QUANT.md):
 *   - NF4 thresholds are 15 decimal literals compiled to float32; 4 of them (bf591cd9, 3df64863,
 *     3f006d03, 3f5c89d9) are one ulp away from the float32 midpoints used here, so inputs equal to
 *     bf591cd8, 3df64863, 3f006d04, 3f5c89da scale to a different code; FP4 thresholds
 *     (0.583333f etc.) are several ulp off the midpoints.
 *   - the library is built with --use_fast_math: 1.0f/absmax is an approximate reciprocal and the
 *     trailing block is not divided but multiplied, so a nibble can differ where x*r is within an
 *     ulp of a threshold; denormals are flushed.
 *   - an all-zero block gives 0 * inf = NaN -> code 0 (bytes 0x00, dequant -0.0); here code 7
 *     (bytes 0x77) and, for a trailing partial block, a stored absmax of 1e-38f.
 *   - the 8-bit nested step on CUDA is a tree search with its own tie rule (not a 65536-bin LUT).
 * NaN / Inf (what this code does, identical to bnb CPU): a block holding a NaN gets absmax NaN and
 * every code 15 (NF4: +1.0; FP4: code 15 = -0.25) and dequantizes to NaN; a block holding +-Inf
 * gets absmax Inf, its finite elements code 7 (s = 0) and its infinite ones code 15 (s = NaN).
 * CUDA bnb gives NaN-block codes 0 and Inf-block codes from x * 0. */
#ifndef SHARDQ_QUANT_MATH_CUH
#define SHARDQ_QUANT_MATH_CUH

#include <stdint.h>

#if defined(__CUDACC__)
#define SQ_HD __host__ __device__ __forceinline__
#else
#define SQ_HD static inline
#endif
/* Constant tables: `static const` on the host (one copy in .rodata), plain locals on the device. */
#if defined(__CUDA_ARCH__)
#define SQ_QM_TABLE const
#else
#define SQ_QM_TABLE static const
#endif

#define SQ_QM_NESTED_BLOCKSIZE 256
/* torch: absmax.clamp(min=1e-38): 1e-38 rounded to float32 is the subnormal 0x006ce3ee. */
#define SQ_QM_ABSMAX_FLOOR_BITS 0x006ce3eeu

SQ_HD float sq_qm_f32(uint32_t u) {
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}
SQ_HD uint32_t sq_qm_bits(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
}
SQ_HD int sq_qm_isnan(float f) { return (sq_qm_bits(f) & 0x7fffffffu) > 0x7f800000u; }

/* ---- tables (float32 bit patterns, exactly as bitsandbytes 0.50.2 builds them) ------------- */
/* get_4bit_type("nf4"): the 16 NF4 values, sorted. */
#define SQ_QM_NF4_CODE_BITS                                                                   \
    {0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, \
     0x00000000u, 0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u,         \
     0x3f1007abu, 0x3f3913b3u, 0x3f800000u}
/* get_4bit_type("fp4"): bnb's own FP4 in bit order (sign = bit 3), /12; index 8 is +0 (as stored). */
#define SQ_QM_FP4_CODE_BITS                                                                   \
    {0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, \
     0x3e800000u, 0x00000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, \
     0xbe2aaaabu, 0xbe800000u}

/* Code value of a 4-bit code (what bnb's dequantization multiplies by absmax). */
SQ_HD float sq_qm_nf4_value(unsigned q) {
    SQ_QM_TABLE uint32_t t[16] = SQ_QM_NF4_CODE_BITS;
    return sq_qm_f32(t[q & 15u]);
}
SQ_HD float sq_qm_fp4_value(unsigned q) {
    SQ_QM_TABLE uint32_t t[16] = SQ_QM_FP4_CODE_BITS;
    return sq_qm_f32(t[q & 15u]);
}
SQ_HD float sq_qm_code_value(int is_fp4, unsigned q) {
    return is_fp4 ? sq_qm_fp4_value(q) : sq_qm_nf4_value(q);
}
/* The value bnb's native dequantizers (CUDA kDequantizeBlockwise, libbitsandbytes_cpu
 * dDequantizeFP4) multiply by: the FP4 sign-magnitude LUT, so code 8 is -0.0 rather than the
 * +0.0 of the stored quant_map.  bnb 0.50.2 on the CPU takes the native path when the last dim is
 * even and the torch path (quant_map, +0.0) when it is odd (or, on AVX-512 machines, when the
 * blocksize is >= 2048); only the sign of a zero differs. */
SQ_HD float sq_qm_dequant_value(int is_fp4, int native, unsigned q) {
    float v = sq_qm_code_value(is_fp4, q);
    if (is_fp4 && native && (q & 15u) == 8u) v = sq_qm_f32(0x80000000u);
    return v;
}

/* Bucketize bounds: (code[order[k]] + code[order[k+1]]) / 2 in float32 over the sorted table. */
#define SQ_QM_NF4_BOUND_BITS                                                                  \
    {0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, \
     0x3d22faffu, 0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u,         \
     0x3f248dafu, 0x3f5c89dau}
#define SQ_QM_FP4_BOUND_BITS                                                                  \
    {0xbf555556u, 0xbf155556u, 0xbed55556u, 0xbe955556u, 0xbe555556u, 0xbdb00000u, 0xbb2aaaabu, \
     0x00000000u, 0x3b2aaaabu, 0x3db00000u, 0x3e555556u, 0x3e955556u, 0x3ed55556u, 0x3f155556u, \
     0x3f555556u}
/* torch.argsort of the FP4 table on the CPU (its tie order between the two zeros, 0 then 8, is
 * what makes tiny positive values code 8 and tiny negative ones code 0). */
#define SQ_QM_FP4_ORDER {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3}

/* torch.bucketize(s, bounds, right=False) for 15 bounds: the number of bounds b with
 * !(s <= b), i.e. s > b, and 15 for NaN.  Compare-only, so exact. */
SQ_HD unsigned sq_qm_nf4_encode(float s) {
    SQ_QM_TABLE uint32_t b[15] = SQ_QM_NF4_BOUND_BITS;
    unsigned q = 0;
    for (int k = 0; k < 15; k++) q += !(s <= sq_qm_f32(b[k]));
    return q;
}
SQ_HD unsigned sq_qm_fp4_encode(float s) {
    SQ_QM_TABLE uint32_t b[15] = SQ_QM_FP4_BOUND_BITS;
    SQ_QM_TABLE uint8_t order[16] = SQ_QM_FP4_ORDER;
    unsigned q = 0;
    for (int k = 0; k < 15; k++) q += !(s <= sq_qm_f32(b[k]));
    return order[q];
}
SQ_HD unsigned sq_qm_encode(int is_fp4, float s) {
    return is_fp4 ? sq_qm_fp4_encode(s) : sq_qm_nf4_encode(s);
}

/* ---- block scale --------------------------------------------------------------------------- */
/* torch.clamp(v, -1, 1): NaN stays NaN. */
SQ_HD float sq_qm_clamp1(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }
/* absmax.clamp(min=1e-38): NaN stays NaN. */
SQ_HD float sq_qm_absmax_floor(float am) {
    float lo = sq_qm_f32(SQ_QM_ABSMAX_FLOOR_BITS);
    return am < lo ? lo : am;
}
/* Full block: the multiplier r = 1.0f / max(absmax, 1e-38f) (IEEE division, then x * r). */
SQ_HD float sq_qm_full_recip(float absmax) { return 1.0f / sq_qm_absmax_floor(absmax); }
SQ_HD float sq_qm_scale_full(float x, float r) { return sq_qm_clamp1(x * r); }
/* Trailing partial block: x / am where am = max(absmax, 1e-38f) is also what is stored. */
SQ_HD float sq_qm_scale_tail(float x, float am) { return sq_qm_clamp1(x / am); }
/* torch's max|x| step: NaN wins. */
SQ_HD float sq_qm_absmax_step(float acc, float x) {
    float a = sq_qm_f32(sq_qm_bits(x) & 0x7fffffffu);
    if (sq_qm_isnan(acc) || sq_qm_isnan(a)) return sq_qm_isnan(acc) ? acc : a;
    return a > acc ? a : acc;
}

/* ---- packing ------------------------------------------------------------------------------- */
SQ_HD uint8_t sq_qm_pack(unsigned q_even, unsigned q_odd) {
    return (uint8_t)(((q_even & 15u) << 4) | (q_odd & 15u));
}
/* The 4-bit code of element i of a packed array. */
SQ_HD unsigned sq_qm_unpack(const uint8_t *packed, uint64_t i) {
    uint8_t by = packed[i >> 1];
    return (i & 1u) ? (by & 15u) : (unsigned)(by >> 4);
}

/* ---- dequantization ------------------------------------------------------------------------ */
/* One element: value[q] * absmax, one float32 rounding (bnb's CPU and CUDA kernels alike);
 * `native` picks the -0.0 FP4 zero of the native kernels (see sq_qm_dequant_value). */
SQ_HD float sq_qm_dequant(int is_fp4, int native, unsigned q, float absmax) {
    return sq_qm_dequant_value(is_fp4, native, q) * absmax;
}
/* Double quant: absmax = dyn[code] * nested_absmax, then + offset, two roundings (no FMA). */
SQ_HD float sq_qm_absmax_dq(float dyn_value, float nested_absmax, float offset) {
    float t = dyn_value * nested_absmax;
    return t + offset;
}

/* ---- the 8-bit dynamic map (create_dynamic_map(signed=True, 7, 8)) ------------------------- */
/* All 256 entries, sorted; index 127 is 0, index 0 is -0.99296874 and index 255 is +1.0
 * (SHA-256 of the little-endian floats e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c). */
#define SQ_QM_DYN_BITS                                                                        \
    {0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, \
     0xbf650000u, 0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, \
     0xbf4bcccdu, 0xbf483333u, 0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, \
     0xbf32999au, 0xbf2f0000u, 0xbf2b6666u, 0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, \
     0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, \
     0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53333u, \
     0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u, 0xbea2ccccu, \
     0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu, \
     0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, \
     0xbddb3334u, 0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, \
     0xbda75c2au, 0xbda1999au, 0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, \
     0xbd7e147bu, 0xbd728f5du, 0xbd670a3du, 0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, \
     0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u, 0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u, \
     0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, 0xbc1f3b64u, 0xbc160418u, \
     0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du, \
     0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, \
     0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, \
     0xb923d70bu, 0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, \
     0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, \
     0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu, 0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, \
     0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du, 0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, \
     0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu, 0x3be24dd3u, \
     0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u, \
     0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u, \
     0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, \
     0x3d670a3du, 0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, \
     0x3d9bd70au, 0x3da1999au, 0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, \
     0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u, 0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, \
     0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu, 0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, \
     0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u, 0x3eb13333u, 0x3eb86666u, \
     0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au, 0x3eeaccccu, \
     0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au, \
     0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, \
     0x3f2b6666u, 0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, \
     0x3f44999au, 0x3f483333u, 0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, \
     0x3f5dcccdu, 0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, \
     0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u}

/* dyn[i] for i in 0..255. */
SQ_HD float sq_qm_dyn_value(unsigned i) {
    SQ_QM_TABLE uint32_t t[256] = SQ_QM_DYN_BITS;
    return sq_qm_f32(t[i & 255u]);
}

/* The 65536-bin index of a scaled value v (already clamped to [-1, 1], or NaN): the .so computes
 * fmaf((v + 1) * 0.5f, 65535, 0.5f) and truncates.  h * 65535 + 0.5 is exact in double (24 + 16
 * bits), so one rounding to float equals the fused result. */
SQ_HD unsigned sq_qm_dyn_lut_index(float v) {
    if (sq_qm_isnan(v)) return 0u;
    float h = (v + 1.0f) * 0.5f;
    float t = (float)((double)h * 65535.0 + 0.5);
    return (unsigned)(int)t & 0xffffu;
}
/* lut[i]: the number of midpoints 0.5f * (dyn[k] + dyn[k+1]) (k < 255) strictly below
 * (2.0f * i) / 65535.0f - 1.0f.  Binary search over the monotone midpoints. */
SQ_HD unsigned sq_qm_dyn_lut(unsigned i) {
    float val = (2.0f * (float)i) / 65535.0f - 1.0f;
    unsigned lo = 0, hi = 255;                      /* answer in [lo, hi] */
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2u;
        float m = 0.5f * (sq_qm_dyn_value(mid) + sq_qm_dyn_value(mid + 1u));
        if (m < val) lo = mid + 1u; else hi = mid;
    }
    return lo;
}
/* bnb CPU 8-bit code of x in a block with absmax am (> 0, not NaN) and r = 1.0f / am. */
SQ_HD unsigned sq_qm_dyn_encode(float x, float r) {
    return sq_qm_dyn_lut(sq_qm_dyn_lut_index(sq_qm_clamp1(x * r)));
}

/* ---- float conversions used by the kernels and the CPU path -------------------------------- */
SQ_HD float sq_qm_bf16_to_f32(uint16_t h) { return sq_qm_f32((uint32_t)h << 16); }
/* IEEE half to float, exact (subnormals included). */
SQ_HD float sq_qm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3ffu;
    if (e == 31u) return sq_qm_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0u) {
        float f = (float)m * sq_qm_f32(0x33800000u);  /* m * 2^-24, exact */
        return sq_qm_f32(sq_qm_bits(f) | sign);
    }
    return sq_qm_f32(sign | ((e + 112u) << 23) | (m << 13));
}
/* float -> bf16 round-to-nearest-even (NaN kept quiet), as torch .to(bfloat16). */
SQ_HD uint16_t sq_qm_f32_to_bf16(float f) {
    uint32_t u = sq_qm_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
/* float -> IEEE half round-to-nearest-even, overflow to inf, NaN kept quiet. */
SQ_HD uint16_t sq_qm_f32_to_f16(float f) {
    uint32_t u = sq_qm_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);           /* >= 65520: inf */
    if (a < 0x38800000u) {                                              /* half subnormal */
        if (a < 0x33000000u) return (uint16_t)sign;                     /* < 2^-25: zero */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;                                      /* 14 .. 24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u;                                       /* rebias 127 -> 15 */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | r);
}

#endif
