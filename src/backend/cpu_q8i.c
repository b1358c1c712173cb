/* CPU Linear with int8 activations on weights interleaved by groups of 16 outputs (cpu_q8i.h):
 * the layout of llama.cpp's repacked Q4_0 GEMM, where the lanes of a vector are outputs.
 *
 * The order, fixed, the same on the portable, AVX2 and AVX-512 VNNI paths, for any tiling,
 * thread count and row count (the GEMV and the GEMM give the same bits per row):
 *   p_b = the exact int32 sum over block b of code * qx (|p| <= 32 * 128 * 127 < 2^24, so
 *     (float)p is exact too);
 *   acc = fma(fl(s_b * dx_b), (float)p_b, acc) for b ascending, one accumulator per output;
 *   y = acc + the Linear's bias.
 * NF4 / FP4: c = the int8 code table's entry of the nibble (cpu_q8.c: nearbyint(127 * code)),
 * s_b = fl(absmax * fl(1 / 127)) of the absmax block holding block b, the activations in
 * q8_perm_elem's order as on the row-major path (p_b is the same exact sum in any order).
 * The integer sums: portable, a plain loop; AVX2, maddubs of |c| with qx signed by c then madd
 * by ones (no int16 saturation for |qx| <= 127); VNNI, vpdpbusd of the unsigned nibble (or the
 * int8 code + 128) with qx, started from -zero * (the block's sum of qx).  NF4 / FP4 decode the
 * nibbles by vpshufb through the table (+ 128 for VNNI, whose start is then -128 * the sum).  Per block and 16
 * outputs that is one cvt, one mul and one fma, against 16 x 8 lanes of them on the row-major
 * layout (cpu_q8.c).  The GEMM (q8i_tile_zmm) keeps a register tile of up to 8 rows and reuses
 * each decoded weight register across them.
 * Must never allocate inside an op or print. */
#include "cpu_q8i.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/ggml_quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_HAVE_X86 1
#endif

enum {
    Q8I_CH = 64,     /* blocks per chunk of a task's loop */
    Q8I_NR = 8,      /* rows of the 512-bit register tile */
    Q8I_MAXG = 2,    /* groups of 16 outputs a task handles at a time */
    Q8I_PREFETCH = 4096   /* bytes ahead in a group's codes that the kernel prefetches */
};

bool sq_cpu_q8i_eligible(const sq_weight *w) {
    if (w->store == SQ_WSTORE_Q4)   /* NF4 / FP4 in layout G64, absmax blocks inside a row */
        return w->rows % SQ_Q8I_GROUP == 0 && w->cols % 64 == 0 && w->cols > 0 &&
               w->blocksize >= 64 && w->cols % w->blocksize == 0;
    if (w->store != SQ_WSTORE_QBLOCK) return false;
    const sq_qblock_format *f = &w->qf;
    return f->block_elems == 32 && !f->has_bias && (f->code_bits == 4 || f->code_bits == 8) &&
           w->rows % SQ_Q8I_GROUP == 0 && w->cols % 32 == 0 && w->cols > 0;
}

/* NF4 / FP4: codes through the int8 table, float32 absmax per weight block */
static inline bool q8i_lutw(const sq_weight *w) { return w->store == SQ_WSTORE_Q4; }
/* dwords per block: 4 (4-bit) or 8 (8-bit) */
static inline int64_t q8i_ng(const sq_weight *w) { return q8i_lutw(w) || w->qf.code_bits == 4 ? 4 : 8; }
/* code bytes per row */
static inline int64_t q8i_crb(const sq_weight *w) { return q8i_lutw(w) ? w->cols / 2 : w->code_row_bytes; }
/* scales per row (NF4 / FP4: absmax blocks), bytes per scale, and log2(blocks of 32 a scale) */
static inline int64_t q8i_spr(const sq_weight *w) { return q8i_lutw(w) ? w->cols / w->blocksize : w->cols / 32; }
static inline int q8i_sb(const sq_weight *w) { return q8i_lutw(w) ? 4 : w->qf.scale_bits / 8; }
static inline int q8i_ssh(const sq_weight *w) {
    return q8i_lutw(w) ? __builtin_ctzll((unsigned long long)w->blocksize) - 5 : 0;
}

/* NF4 / FP4 group g from 16 rows in layout G64 (cpu_impl.h) and their absmax: block b = half
 * b % 2 of group b / 2, whose activation bytes (q8_perm_elem's order) j = 0..31 hold the nibble of
 * G64 byte j; block byte j (< 16) takes that of byte j (low) and of byte 16 + j (high), the
 * arrangement of Q4_0's 16 bytes. */
static void q8i_pack_group_q4(const sq_weight *w, int64_t g, const uint8_t *codes, const float *am) {
    const int64_t crb = q8i_crb(w), nb = w->cols / 32, spr = q8i_spr(w);
    uint8_t *gb = (uint8_t *)w->data_d + g * SQ_Q8I_GROUP * crb;
    float *sp = (float *)w->absmax_d + g * SQ_Q8I_GROUP * spr;
    for (int i = 0; i < SQ_Q8I_GROUP; i++) {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *src = codes + i * crb + (b >> 1) * 32;
            const int sh = (int)(b & 1) * 4;
            uint8_t blk[16];
            for (int j = 0; j < 16; j++)
                blk[j] = (uint8_t)(((src[j] >> sh) & 15) | (((src[16 + j] >> sh) & 15) << 4));
            for (int t = 0; t < 4; t++) memcpy(gb + (b * 4 + t) * 64 + 4 * i, blk + 4 * t, 4);
        }
        for (int64_t B = 0; B < spr; B++) sp[B * SQ_Q8I_GROUP + i] = am[i * spr + B];
    }
}

void sq_cpu_q8i_pack_group(const sq_weight *w, int64_t g, const uint8_t *codes, const void *scales) {
    if (q8i_lutw(w)) {
        q8i_pack_group_q4(w, g, codes, scales);
        return;
    }
    const int64_t crb = w->code_row_bytes, nb = w->cols / 32, ng = q8i_ng(w);
    const int sb = w->qf.scale_bits / 8;
    uint8_t *gb = (uint8_t *)w->data_d + g * SQ_Q8I_GROUP * crb;
    char *sp = (char *)w->absmax_d + g * SQ_Q8I_GROUP * nb * sb;
    for (int i = 0; i < SQ_Q8I_GROUP; i++)
        for (int64_t b = 0; b < nb; b++) {
            for (int64_t t = 0; t < ng; t++)
                memcpy(gb + (b * ng + t) * 64 + 4 * i, codes + i * crb + (b * ng + t) * 4, 4);
            memcpy(sp + (b * SQ_Q8I_GROUP + i) * sb, (const char *)scales + (i * nb + b) * sb, (size_t)sb);
        }
}

void sq_cpu_q8i_block_codes(const sq_weight *w, int64_t o, int64_t b, uint8_t *dst) {
    const int64_t ng = q8i_ng(w), i = o % SQ_Q8I_GROUP;
    const uint8_t *gb = (const uint8_t *)w->data_d + (o - i) * q8i_crb(w);
    for (int64_t t = 0; t < ng; t++) memcpy(dst + 4 * t, gb + (b * ng + t) * 64 + 4 * i, 4);
}

int64_t sq_cpu_q8i_param_index(const sq_weight *w, int64_t o, int64_t b) {
    const int64_t i = o % SQ_Q8I_GROUP;
    return (o - i) * q8i_spr(w) + (b >> q8i_ssh(w)) * SQ_Q8I_GROUP + i;
}

int sq_cpu_q8i_q4_nibble(const sq_weight *w, int64_t o, int64_t k) {
    int64_t byte;
    int shift;
    sq_cpu_q4_pos(w->cols, k, &byte, &shift);   /* byte % 32: the element's activation byte */
    const int j = (int)(byte & 31);
    uint8_t cb[16];
    sq_cpu_q8i_block_codes(w, o, k / 32, cb);
    return (cb[j & 15] >> ((j >> 4) * 4)) & 15;
}

float sq_cpu_q8i_q4_absmax(const sq_weight *w, int64_t o, int64_t k) {
    return ((const float *)w->absmax_d)[sq_cpu_q8i_param_index(w, o, k / 32)];
}

static inline float q8i_bias(const sq_q8i_args *a, int64_t o) {
    if (a->bias) return a->bias[o];
    if (a->bias_bf16) return sq_bf16_to_f32_1(a->bias_bf16[o]);
    return 0.0f;
}

/* ---- portable reference path ----------------------------------------------------------------- */

static void q8i_rows_portable(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const sq_weight *w = a->w;
    const bool b4 = q8i_ng(w) == 4;
    const int zero = w->qf.code_zero;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *qx = a->qx + r * a->K;
            const float *dx = a->dx + r * a->nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < a->nb; b++) {
                uint8_t cb[32];
                sq_cpu_q8i_block_codes(w, o, b, cb);
                int32_t p = 0;
                for (int e = 0; e < 32; e++) {
                    const int nib = (cb[e & 15] >> ((e >> 4) * 4)) & 15;
                    int c = a->lut ? a->lut[nib] : b4 ? nib - zero : (int8_t)cb[e];
                    p += c * qx[32 * b + e];
                }
                const int64_t pi = sq_cpu_q8i_param_index(w, o, b);
                float s = a->lut ? ((const float *)w->absmax_d)[pi] * (1.0f / 127.0f)
                                 : sq_qblock_param(&w->qf, w->absmax_d, pi);
                acc = fmaf(s * dx[b], (float)p, acc);
            }
            a->out[r * a->N + o] = acc + q8i_bias(a, o);
        }
}

/* ---- AVX2 and AVX-512 VNNI ------------------------------------------------------------------- */
#ifdef SQ_HAVE_X86
#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_ZMM __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

static inline int32_t q8i_dw(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Eight outputs o .. o + 7 (half of a group), every row: maddubs, then the same float steps. */
TGT_AVX2 static void q8i_tile_avx2(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const sq_weight *w = a->w;
    const bool b4 = q8i_ng(w) == 4, h16 = !a->lut && w->qf.scale_bits == 16;
    const int64_t nb = a->nb, ng = q8i_ng(w);
    const int ssh = q8i_ssh(w);
    const __m256i m4 = _mm256_set1_epi8(15), z = _mm256_set1_epi8((char)w->qf.code_zero),
                  ones = _mm256_set1_epi16(1),
                  lut = a->lut ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)a->lut))
                               : _mm256_setzero_si256();
    for (int64_t o = o0; o < o1; o += 8) {
        const int64_t h = (o % SQ_Q8I_GROUP) / 8, g0 = o - o % SQ_Q8I_GROUP;
        const uint8_t *gb = (const uint8_t *)w->data_d + g0 * q8i_crb(w) + 32 * h;
        const int64_t pi = g0 * q8i_spr(w) + 8 * h;
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *qx = a->qx + r * a->K;
            const float *dx = a->dx + r * nb;
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                __m256i p = _mm256_setzero_si256();
                const int8_t *q = qx + 32 * b;
                for (int64_t t = 0; t < ng; t++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(gb + (b * ng + t) * 64));
                    if (b4) {
                        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        lo = a->lut ? _mm256_shuffle_epi8(lut, lo) : _mm256_sub_epi8(lo, z);
                        hi = a->lut ? _mm256_shuffle_epi8(lut, hi) : _mm256_sub_epi8(hi, z);
                        __m256i ql = _mm256_set1_epi32(q8i_dw(q + 4 * t)), qh = _mm256_set1_epi32(q8i_dw(q + 16 + 4 * t));
                        p = _mm256_add_epi32(p, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(ql, lo)), ones));
                        p = _mm256_add_epi32(p, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(qh, hi)), ones));
                    } else {
                        __m256i qv = _mm256_set1_epi32(q8i_dw(q + 4 * t));
                        p = _mm256_add_epi32(p, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(qv, v)), ones));
                    }
                }
                __m256 s = h16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w->absmax_d + pi + 16 * b)))
                               : _mm256_loadu_ps((const float *)w->absmax_d + pi + 16 * (b >> ssh));
                if (a->lut) s = _mm256_mul_ps(s, _mm256_set1_ps(1.0f / 127.0f));
                acc = _mm256_fmadd_ps(_mm256_mul_ps(s, _mm256_set1_ps(dx[b])), _mm256_cvtepi32_ps(p), acc);
            }
            float y[8];
            _mm256_storeu_ps(y, acc);
            for (int i = 0; i < 8 && o + i < o1; i++) a->out[r * a->N + o + i] = y[i] + q8i_bias(a, o + i);
        }
    }
}

/* One group (gb: its codes, sp: its scales) x NR rows over blocks [b0, b1); acc: the rows'
 * accumulators. */
TGT_ZMM INLINE void q8i_kern(const sq_q8i_args *a, const uint8_t *gb, const void *sp, int64_t r,
                             int64_t b0, int64_t b1, __m512 *acc,
                             const int NR, const int B4, const int H16, const int LUT) {
    const int64_t K = a->K, nb = a->nb;
    const int ssh = LUT ? q8i_ssh(a->w) : 0;
    const __m512i m4 = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8((char)0x80);
    /* NF4 / FP4: the int8 table + 128 (vpdpbusd's unsigned operand; bsum holds -128 * sum qx) */
    const __m512i lut = LUT ? _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a->lut)), x80)
                            : _mm512_setzero_si512();
    __m512 ac[Q8I_NR];
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) ac[j] = acc[j];
    for (int64_t b = b0; b < b1; b++) {
        __m512i wv[8];
        /* one stream per group: the hardware prefetchers stop at 4 KiB pages */
        for (int t = 0; t < (B4 ? 4 : 8); t++)
            _mm_prefetch((const char *)(gb + (b * (B4 ? 4 : 8) + t) * 64 + Q8I_PREFETCH), _MM_HINT_T0);
        if (B4) {
            _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) {
                __m512i v = _mm512_loadu_si512((const void *)(gb + (b * 4 + t) * 64));
                wv[t] = _mm512_and_si512(v, m4);
                wv[4 + t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                if (LUT) {
                    wv[t] = _mm512_shuffle_epi8(lut, wv[t]);
                    wv[4 + t] = _mm512_shuffle_epi8(lut, wv[4 + t]);
                }
            }
        } else {
            _Pragma("GCC unroll 8") for (int t = 0; t < 8; t++)
                wv[t] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(gb + (b * 8 + t) * 64)), x80);
        }
        const __m512 s = H16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)sp + 16 * b)))
                       : LUT ? _mm512_mul_ps(_mm512_loadu_ps((const float *)sp + 16 * (b >> ssh)), _mm512_set1_ps(1.0f / 127.0f))
                             : _mm512_loadu_ps((const float *)sp + 16 * b);
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            const int8_t *q = a->qx + (r + j) * K + 32 * b;
            __m512i p0 = _mm512_set1_epi32(a->bsum[(r + j) * nb + b]), p1 = _mm512_setzero_si512();
            /* 4-bit: dword t holds elements 4 t .. 4 t + 3 (low nibbles) and 16 + 4 t .. (high);
             * 8-bit: elements 4 t .. 4 t + 3 */
            _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) {
                p0 = _mm512_dpbusd_epi32(p0, wv[t], _mm512_set1_epi32(q8i_dw(q + 4 * t)));
                p1 = _mm512_dpbusd_epi32(p1, wv[4 + t], _mm512_set1_epi32(q8i_dw(q + 16 + 4 * t)));
            }
            const __m512i p = _mm512_add_epi32(p0, p1);
            ac[j] = _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(a->dx[(r + j) * nb + b])),
                                    _mm512_cvtepi32_ps(p), ac[j]);
        }
    }
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) acc[j] = ac[j];
}

#define Q8I_K(NRV) q8i_kern(a, gb, sp, r, b0, b1, acc[gi], NRV, B4, H16, LUT)
TGT_ZMM INLINE void q8i_tile_zmm_t(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0,
                                   int64_t r1, const int B4, const int H16, const int LUT) {
    const sq_weight *w = a->w;
    const int64_t nb = a->nb, crb = q8i_crb(w), srb = q8i_spr(w) * q8i_sb(w);
    for (int64_t og = o0; og < o1; og += Q8I_MAXG * SQ_Q8I_GROUP) {
        const int64_t ng = (o1 - og) / SQ_Q8I_GROUP < Q8I_MAXG ? (o1 - og) / SQ_Q8I_GROUP : Q8I_MAXG;
        for (int64_t r = r0; r < r1; r += Q8I_NR) {
            const int64_t nr = r1 - r < Q8I_NR ? r1 - r : Q8I_NR;
            __m512 acc[Q8I_MAXG][Q8I_NR];
            for (int64_t gi = 0; gi < ng; gi++)
                for (int64_t j = 0; j < nr; j++) acc[gi][j] = _mm512_setzero_ps();
            for (int64_t b0 = 0; b0 < nb; b0 += Q8I_CH) {
                const int64_t b1 = b0 + Q8I_CH < nb ? b0 + Q8I_CH : nb;
                for (int64_t gi = 0; gi < ng; gi++) {
                    const int64_t o = og + gi * SQ_Q8I_GROUP;
                    const uint8_t *gb = (const uint8_t *)w->data_d + o * crb;
                    const void *sp = (const char *)w->absmax_d + o * srb;
                    switch (nr) {
                    case 1: Q8I_K(1); break;
                    case 2: Q8I_K(2); break;
                    case 3: Q8I_K(3); break;
                    case 4: Q8I_K(4); break;
                    case 5: Q8I_K(5); break;
                    case 6: Q8I_K(6); break;
                    case 7: Q8I_K(7); break;
                    default: Q8I_K(8); break;
                    }
                }
            }
            for (int64_t gi = 0; gi < ng; gi++) {
                const int64_t o = og + gi * SQ_Q8I_GROUP;
                /* + bias lane by lane: the same float additions as the portable path */
                __m512 bv = _mm512_setzero_ps();
                if (a->bias) bv = _mm512_loadu_ps(a->bias + o);
                else if (a->bias_bf16)
                    bv = _mm512_castsi512_ps(_mm512_slli_epi32(
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(a->bias_bf16 + o))), 16));
                for (int64_t j = 0; j < nr; j++)
                    _mm512_storeu_ps(a->out + (r + j) * a->N + o,
                                     _mm512_add_ps(acc[gi][j], bv));   /* + 0 without bias, as there */
            }
        }
    }
}
TGT_ZMM static void q8i_tile_zmm(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
    const bool b4 = a->w->qf.code_bits == 4, h16 = a->w->qf.scale_bits == 16;
    if (a->lut) q8i_tile_zmm_t(a, o0, o1, r0, r1, 1, 0, 1);
    else if (b4 && h16) q8i_tile_zmm_t(a, o0, o1, r0, r1, 1, 1, 0);
    else if (b4) q8i_tile_zmm_t(a, o0, o1, r0, r1, 1, 0, 0);
    else if (h16) q8i_tile_zmm_t(a, o0, o1, r0, r1, 0, 1, 0);
    else q8i_tile_zmm_t(a, o0, o1, r0, r1, 0, 0, 0);
}
#endif /* SQ_HAVE_X86 */

#ifdef SQ_HAVE_X86
/* cs[b - b0] = the sum of the 8 lane corrections of block b (-zero * the block's sum of qx) */
TGT_AVX2 static void q8i_corr_sums_avx2(const int32_t *corr, int64_t b0, int64_t b1, int32_t *cs) {
    int64_t b = b0;
    for (; b + 8 <= b1; b += 8) {
        __m256i v[8];
        for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_si256((const __m256i *)(corr + 8 * (b + k)));
        __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
        __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
        __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
        __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20),
                                     _mm256_permute2x128_si256(q0, q1, 0x31));
        _mm256_storeu_si256((__m256i *)(cs + (b - b0)), s);
    }
    for (; b < b1; b++) {
        int32_t s = 0;
        for (int k = 0; k < 8; k++) s += corr[8 * b + k];
        cs[b - b0] = s;
    }
}

#endif

void sq_cpu_q8i_block_sums(const int32_t *corr, int64_t n_rows, int64_t nb, sq_cpu_isa isa,
                           int32_t *bsum) {
    for (int64_t r = 0; r < n_rows; r++) {
#ifdef SQ_HAVE_X86
        if (isa != SQ_CPU_PORTABLE) {
            q8i_corr_sums_avx2(corr + r * nb * 8, 0, nb, bsum + r * nb);
            continue;
        }
#endif
        for (int64_t b = 0; b < nb; b++) {
            int32_t s = 0;
            for (int k = 0; k < 8; k++) s += corr[(r * nb + b) * 8 + k];
            bsum[r * nb + b] = s;
        }
    }
}

void sq_cpu_q8i_tile(const sq_q8i_args *a, int64_t o0, int64_t o1, int64_t r0, int64_t r1) {
#ifdef SQ_HAVE_X86
    if (a->isa != SQ_CPU_PORTABLE) {
        if (a->zmm) q8i_tile_zmm(a, o0, o1, r0, r1);
        else q8i_tile_avx2(a, o0, o1, r0, r1);
        return;
    }
#endif
    q8i_rows_portable(a, o0, o1, r0, r1);
}

/* ---- upload ---------------------------------------------------------------------------------- */

typedef struct {
    const sq_weight *w;
    uint8_t *tmp;           /* per pool thread: one group's codes, then its scales */
    size_t cbytes, sbytes;
} q8i_repack_ctx;

/* Group g, in place through the thread's copy of it. */
static void q8i_repack_task(void *ctx_, int64_t g, int thread) {
    const q8i_repack_ctx *c = ctx_;
    uint8_t *tmp = c->tmp + (size_t)thread * (c->cbytes + c->sbytes);
    memcpy(tmp, (const uint8_t *)c->w->data_d + g * (int64_t)c->cbytes, c->cbytes);
    memcpy(tmp + c->cbytes, (const char *)c->w->absmax_d + g * (int64_t)c->sbytes, c->sbytes);
    sq_cpu_q8i_pack_group(c->w, g, tmp, tmp + c->cbytes);
}

sq_status sq_cpu_q8i_repack(sq_pool *pool, sq_weight *w, sq_error *err) {
    if (!sq_cpu_q8i_eligible(w)) return SQ_OK;
    const int nt = pool ? sq_pool_n_threads(pool) : 1;
    q8i_repack_ctx c = {w, NULL, (size_t)(SQ_Q8I_GROUP * q8i_crb(w)),
                        (size_t)(SQ_Q8I_GROUP * q8i_spr(w) * q8i_sb(w))};
    c.tmp = malloc((size_t)nt * (c.cbytes + c.sbytes));
    if (!c.tmp)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, w->name,
                            "backend alloc: out of memory interleaving a weight");
    sq_pool_run(pool, w->rows / SQ_Q8I_GROUP, q8i_repack_task, &c);
    free(c.tmp);
    w->q8i = true;
    return SQ_OK;
}
