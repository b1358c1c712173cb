/* quant_dq.c: double quantization exactly as bitsandbytes 0.50.2 does it on the CPU.
 *   offset = absmax.mean()  -- torch's float32 CPU reduction, emulated below (sum, then / n)
 *   codes, nested = quantize_blockwise(absmax - offset, blocksize=256)
 *                 -- libbitsandbytes_cpu quantize_cpu_impl<float>: a 65536-bin LUT
 * Must never print or keep mutable globals (the LUT is built per call, 64 KiB). */
#include <stdlib.h>
#include <string.h>

#include "quant_impl.h"
#include "../../kernels/quant_math.cuh"

/* ---- torch.sum for a contiguous float32 vector (ATen SumKernel.cpp, cascade_sum) ------------
 * Vectorized<float> has 8 lanes under torch's AVX2 CPU kernels (what torch picks on AVX2
 * machines; an AVX-512 dispatch would use 16 lanes and can differ in the last bits). */
enum { TS_LANES = 8, TS_ILP = 4, TS_LEVELS = 4 };

static int64_t ceil_log2_i64(int64_t x) {
    if (x <= 2) return 1;
    return 64 - __builtin_clzll((unsigned long long)(x - 1));
}

/* multi_row_sum: `size` rows of TS_ILP items of `w` floats each (row i starts at a + i*TS_ILP*w),
 * four cascade levels; returns TS_ILP partial sums of w lanes in out[k * w + lane]. */
static void multi_row_sum(const float *a, int64_t size, int w, float *out) {
    const int64_t level_power = ceil_log2_i64(size) / TS_LEVELS > 4 ? ceil_log2_i64(size) / TS_LEVELS : 4;
    const int64_t level_step = (int64_t)1 << level_power, level_mask = level_step - 1;
    float acc[TS_LEVELS][TS_ILP][TS_LANES];
    memset(acc, 0, sizeof acc);
    int64_t i = 0;
    for (; i + level_step <= size;) {
        for (int64_t j = 0; j < level_step; ++j, ++i)
            for (int k = 0; k < TS_ILP; k++)
                for (int l = 0; l < w; l++) acc[0][k][l] += a[(i * TS_ILP + k) * w + l];
        for (int j = 1; j < TS_LEVELS; j++) {
            for (int k = 0; k < TS_ILP; k++)
                for (int l = 0; l < w; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < size; ++i)
        for (int k = 0; k < TS_ILP; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += a[(i * TS_ILP + k) * w + l];
    for (int j = 1; j < TS_LEVELS; j++)
        for (int k = 0; k < TS_ILP; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += acc[j][k][l];
    for (int k = 0; k < TS_ILP; k++)
        for (int l = 0; l < w; l++) out[k * w + l] = acc[0][k][l];
}

/* row_sum over `size` items of w lanes: ILP partials, tail items into partial 0, fold 1..3. */
static void row_sum(const float *a, int64_t size, int w, float *res) {
    float ps[TS_ILP * TS_LANES];
    const int64_t size_ilp = size / TS_ILP;
    multi_row_sum(a, size_ilp, w, ps);
    for (int64_t i = size_ilp * TS_ILP; i < size; i++)
        for (int l = 0; l < w; l++) ps[l] += a[i * w + l];
    for (int k = 1; k < TS_ILP; k++)
        for (int l = 0; l < w; l++) ps[l] += ps[k * w + l];
    for (int l = 0; l < w; l++) res[l] = ps[l];
}

/* One serial reduction call of cascade_sum over a[0..n). */
static float cascade_sum(const float *a, int64_t n) {
    if (n >= TS_LANES) {
        const int64_t vec_size = n / TS_LANES;
        float v[TS_LANES];
        row_sum(a, vec_size, TS_LANES, v);
        float fin = 0.0f;
        for (int64_t k = vec_size * TS_LANES; k < n; k++) fin += a[k];
        for (int l = 0; l < TS_LANES; l++) fin += v[l];
        return fin;
    }
    float s;
    row_sum(a, n, 1, &s);
    return s;
}

float sq_quant_torch_mean(const float *x, uint64_t n, int torch_threads) {
    if (n == 0) return sq_qm_f32(0x7fc00000u);  /* torch: mean of nothing is NaN */
    const int64_t grain = 32768;                 /* at::internal::GRAIN_SIZE */
    int64_t N = (int64_t)n, T = torch_threads < 1 ? 1 : torch_threads;
    float sum;
    if (N < grain || T == 1) {
        sum = 0.0f + cascade_sum(x, N);
    } else {
        /* TensorIterator two_pass_reduction: at::parallel_for chunks, one partial per thread
         * slot (zero-initialised), then the slots reduced in order by the same kernel. */
        float buf[1024];
        if (T > 1024) T = 1024;
        int64_t nt = (N + grain - 1) / grain;
        if (nt > T) nt = T;
        int64_t chunk = (N + nt - 1) / nt;
        memset(buf, 0, sizeof buf);
        for (int64_t t = 0; t < nt; t++) {
            int64_t b = t * chunk;
            if (b < N) buf[t] = buf[t] + cascade_sum(x + b, (N - b < chunk ? N - b : chunk));
        }
        sum = 0.0f + cascade_sum(buf, T);
    }
    return sum / (float)n;  /* sum_out(...).div_(n): one float32 division */
}

/* ---- the 8-bit nested step ------------------------------------------------------------------ */
/* lut[i] for all 65536 bins by one merge over the monotone bin values (as build_quantize_lut). */
static void build_dyn_lut(uint8_t *lut) {
    float mid[255];
    for (int k = 0; k < 255; k++) mid[k] = 0.5f * (sq_qm_dyn_value((unsigned)k) + sq_qm_dyn_value((unsigned)k + 1u));
    int c = 0;
    for (int i = 0; i < 65536; i++) {
        float val = (2.0f * (float)i) / 65535.0f - 1.0f;
        while (c < 255 && mid[c] < val) c++;
        lut[i] = (uint8_t)c;
    }
}

static void dyn8_blocks(const float *x, uint64_t n, int64_t blocksize, uint8_t *codes,
                        float *absmax, const uint8_t *lut) {
    const uint64_t B = (uint64_t)blocksize;
    for (uint64_t b = 0, first = 0; first < n; b++, first += B) {
        uint64_t end = n - first < B ? n : first + B;
        /* std::max(acc, |x|) from -inf: NaN elements never win; then max(0, acc) */
        float am = sq_qm_f32(0xff800000u);
        for (uint64_t i = first; i < end; i++) {
            float a = sq_qm_f32(sq_qm_bits(x[i]) & 0x7fffffffu);
            if (am < a) am = a;
        }
        if (!(0.0f <= am)) am = 0.0f;
        absmax[b] = am;
        if (am == 0.0f) {
            memset(codes + first, 0, (size_t)(end - first));
            continue;
        }
        float r = 1.0f / am;
        for (uint64_t i = first; i < end; i++) codes[i] = lut[sq_qm_dyn_lut_index(sq_qm_clamp1(x[i] * r))];
    }
}

void sq_quant_8bit_dynamic(const float *x, uint64_t n, int64_t blocksize, uint8_t *codes,
                           float *absmax) {
    uint8_t *lut = malloc(65536);
    if (lut) {
        build_dyn_lut(lut);
        dyn8_blocks(x, n, blocksize, codes, absmax, lut);
        free(lut);
        return;
    }
    /* no memory for the table: same answers through the per-element search */
    const uint64_t B = (uint64_t)blocksize;
    for (uint64_t b = 0, first = 0; first < n; b++, first += B) {
        uint64_t end = n - first < B ? n : first + B;
        float am = sq_qm_f32(0xff800000u);
        for (uint64_t i = first; i < end; i++) {
            float a = sq_qm_f32(sq_qm_bits(x[i]) & 0x7fffffffu);
            if (am < a) am = a;
        }
        if (!(0.0f <= am)) am = 0.0f;
        absmax[b] = am;
        float r = am == 0.0f ? 0.0f : 1.0f / am;
        for (uint64_t i = first; i < end; i++) codes[i] = am == 0.0f ? 0 : (uint8_t)sq_qm_dyn_encode(x[i], r);
    }
}

sq_status sq_qtensor_compress(sq_qtensor *q, sq_error *err) {
    return sq_qtensor_compress_ex(q, 1, err);
}

sq_status sq_qtensor_compress_ex(sq_qtensor *q, int torch_threads, sq_error *err) {
    if (!q->double_quant) return SQ_OK;
    if (!q->absmax || !q->absmax_q || !q->nested_absmax)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "double quant: tensor has no float32 absmax to compress");
    float offset = sq_quant_torch_mean(q->absmax, q->n_blocks, torch_threads);
    for (uint64_t b = 0; b < q->n_blocks; b++) q->absmax[b] = q->absmax[b] - offset;
    sq_quant_8bit_dynamic(q->absmax, q->n_blocks, q->nested_blocksize, q->absmax_q,
                          q->nested_absmax);
    q->nested_offset = offset;
    free(q->absmax);
    q->absmax = NULL;
    return SQ_OK;
}
