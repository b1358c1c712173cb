/* rope_math.cuh: the rotary-embedding angle math shared by the CPU backend and the CUDA
 * kernels (host + device, plain C when included from a .c file).  Owns: inverse frequencies for
 * the "default", "linear" and "llama3" scalings, and the rotation of one (x1, x2) pair.
 * Must never allocate, log or touch global state.
 *
 * Numerics follow Hugging Face transformers (modeling_rope_utils.py) in float32:
 *   inv_freq[i] = 1.0f / powf(theta, (float)(2i) / (float)head_dim)      (torch float32 ops)
 *   linear:  inv_freq[i] / factor
 *   llama3:  wavelengths above original_max / low_freq_factor are divided by factor, below
 *            original_max / high_freq_factor kept, in between smoothly interpolated
 *   angle = (float)pos * inv_freq[i]  (one float32 rounding), cos / sin of that float32
 *   angle evaluated in double and rounded to float32;
 *   out[i] = x[i] cos - x[i + half] sin;  out[i + half] = x[i + half] cos + x[i] sin
 *   (the "rotate_half" pairing of HF Llama / Mistral / Qwen2, not the interleaved one).
 * The pow / division steps are done in double and rounded once, which can differ from torch's
 * float32 pow by one ulp of inv_freq. */
#ifndef SHARDQ_ROPE_MATH_CUH
#define SHARDQ_ROPE_MATH_CUH

#include <math.h>

#if defined(__CUDACC__)
#define SQ_ROPE_HD __host__ __device__ __forceinline__
#else
#define SQ_ROPE_HD static inline
#endif

enum { SQ_ROPE_MATH_DEFAULT = 0, SQ_ROPE_MATH_LINEAR = 1, SQ_ROPE_MATH_LLAMA3 = 3 };

/* inv_freq of pair i (0 <= i < head_dim / 2) for kind (values of sq_rope_kind: 0 default,
 * 1 linear, 3 llama3; "dynamic" (2) is refused by callers before this point). */
SQ_ROPE_HD float sq_rope_inv_freq(int kind, double theta, int head_dim, int i, double factor,
                             double low_freq_factor, double high_freq_factor,
                             double original_max_pos) {
    float expo = (float)(2 * i) / (float)head_dim;
    float base = (float)pow(theta, (double)expo);
    float inv = 1.0f / base;
    if (kind == SQ_ROPE_MATH_LINEAR) {
        inv = (float)((double)inv / factor);
    } else if (kind == SQ_ROPE_MATH_LLAMA3) {
        double low_wl = original_max_pos / low_freq_factor;
        double high_wl = original_max_pos / high_freq_factor;
        double wl = 2.0 * 3.14159265358979323846 / (double)inv;
        double f = (double)inv;
        if (wl > low_wl) {
            f = f / factor;
        } else if (!(wl < high_wl)) {
            double smooth = (original_max_pos / wl - low_freq_factor) /
                            (high_freq_factor - low_freq_factor);
            f = (1.0 - smooth) * f / factor + smooth * f;
        }
        inv = (float)f;
    }
    return inv;
}

/* cos / sin of the float32 angle pos * inv_freq. */
SQ_ROPE_HD void sq_rope_cos_sin(int pos, float inv_freq, float *c, float *s) {
    float angle = (float)pos * inv_freq;
    *c = (float)cos((double)angle);
    *s = (float)sin((double)angle);
}

/* Rotates one head in place: x has head_dim floats, pairs (i, i + head_dim / 2). */
SQ_ROPE_HD void sq_rope_rotate_pair(float *x1, float *x2, float c, float s) {
    float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
}

#undef SQ_ROPE_HD
#endif
