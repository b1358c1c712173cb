/* test_ggml_quant: ggml's tensor types against the gguf Python package (gguf 0.19.0's
 * gguf.quants.dequantize; vectors in tests/reference/gguf/ggml_vectors.bin, made by
 * tests/reference/gen_gguf_vectors.py): sq_ggml_dequantize_row, the per-element math the CUDA
 * kernels share (kernels/ggml_quant_math.cuh) and the block-scaled integer form the backends
 * compute on, all bit for bit; sizes, names and refusals. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/ggml_quant.h"
#include "ggml_vectors.h"
#include "../kernels/ggml_quant_math.cuh"

static const int k_types[] = {SQ_GGML_F32, SQ_GGML_F16, SQ_GGML_BF16, SQ_GGML_Q8_0,
                              SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q5_0, SQ_GGML_Q5_1,
                              SQ_GGML_Q4_K, SQ_GGML_Q5_K, SQ_GGML_Q6_K};
#define N_TYPES ((int)(sizeof k_types / sizeof k_types[0]))

static uint64_t row_bytes_of(int type, int64_t n) {
    uint64_t rb = 0;
    ck_assert_int_eq(sq_ggml_row_bytes(type, n, &rb, NULL), SQ_OK);
    return rb;
}

/* Every type has vectors: quantized by gguf, raw blocks with extreme scales, several shapes. */
START_TEST(test_vectors_cover_every_type) {
    gv_file f;
    ck_assert_int_eq(gv_load(&f), 0);
    for (int t = 0; t < N_TYPES; t++) {
        int n = 0, n_raw = 0, shapes = 0;
        int64_t last_cols = -1;
        for (int i = 0; i < f.n_cases; i++) {
            if (f.cases[i].type != k_types[t]) continue;
            n++;
            if (strstr(f.cases[i].name, " raw ")) n_raw++;
            if (f.cases[i].cols != last_cols) shapes++;
            last_cols = f.cases[i].cols;
        }
        ck_assert_msg(n >= 5 && n_raw >= 1 && shapes >= 2, "%s: %d cases, %d raw, %d shapes",
                      sq_ggml_type_name(k_types[t]), n, n_raw, shapes);
    }
    /* and real rows of SmolLM2-135M-Instruct.Q4_1.gguf: its Q8_0 embedding, Q4_1 layers, F32 norm */
    int n_real = 0;
    for (int i = 0; i < f.n_cases; i++)
        if (strstr(f.cases[i].name, "SmolLM2")) {
            n_real++;
            ck_assert(f.cases[i].type == SQ_GGML_Q8_0 || f.cases[i].type == SQ_GGML_Q4_1 ||
                      f.cases[i].type == SQ_GGML_F32);
        }
    ck_assert_int_eq(n_real, 4);
    gv_free(&f);
}
END_TEST

/* sq_ggml_dequantize_row and sq_gq_elem (the CUDA kernels' per-element math) equal gguf's
 * dequantize bit for bit (NaN: both NaN). */
START_TEST(test_dequantize_row_bit_exact) {
    gv_file f;
    ck_assert_int_eq(gv_load(&f), 0);
    long n_checked = 0;
    for (int i = 0; i < f.n_cases; i++) {
        const gv_case *c = &f.cases[i];
        uint64_t rb = row_bytes_of(c->type, c->cols);
        ck_assert_uint_eq(rb * (uint64_t)c->rows, c->n_raw);
        float *row = malloc((size_t)c->cols * sizeof(float));
        const int64_t be = sq_ggml_block_elems(c->type), bb = sq_ggml_block_bytes(c->type);
        for (int64_t r = 0; r < c->rows; r++) {
            const uint8_t *src = c->raw + r * rb;
            sq_ggml_dequantize_row((sq_ggml_type)c->type, src, row, c->cols);
            for (int64_t k = 0; k < c->cols; k++) {
                float ref = gv_ref(c, r * c->cols + k);
                ck_assert_msg(gv_same(row[k], ref), "%s: row %lld elem %lld: %a, gguf %a",
                              c->name, (long long)r, (long long)k, row[k], ref);
                float e = sq_gq_elem(c->type, src + (k / be) * bb, (int)(k % be));
                ck_assert_msg(gv_same(e, ref), "%s: sq_gq_elem row %lld elem %lld: %a, gguf %a",
                              c->name, (long long)r, (long long)k, e, ref);
                n_checked++;
            }
        }
        free(row);
    }
    ck_assert_int_gt(n_checked, 20000);
    gv_free(&f);
}
END_TEST

/* The block-scaled integer form (codes + scale + bias per sub-block) gives the same bits. */
START_TEST(test_qblock_form_bit_exact) {
    gv_file f;
    ck_assert_int_eq(gv_load(&f), 0);
    int n_quant_cases = 0;
    for (int i = 0; i < f.n_cases; i++) {
        const gv_case *c = &f.cases[i];
        sq_qblock_format q;
        if (!sq_ggml_qblock_format(c->type, &q)) {
            ck_assert(c->type == SQ_GGML_F32 || c->type == SQ_GGML_F16 || c->type == SQ_GGML_BF16);
            continue;
        }
        n_quant_cases++;
        ck_assert(q.code_bits == 4 || q.code_bits == 8);
        ck_assert(q.block_elems == 16 || q.block_elems == 32);
        uint64_t rb = row_bytes_of(c->type, c->cols);
        int64_t nsub = c->cols / q.block_elems;
        uint8_t *codes = malloc((size_t)sq_qblock_code_bytes(&q, c->cols));
        float *sc = malloc((size_t)nsub * 4), *bi = malloc((size_t)nsub * 4);
        float *row = malloc((size_t)c->cols * 4);
        for (int64_t r = 0; r < c->rows; r++) {
            sq_ggml_to_qblock_row((sq_ggml_type)c->type, c->raw + r * rb, c->cols, codes, sc,
                                  q.has_bias ? bi : NULL);
            sq_qblock_dequantize_row(&q, codes, sc, bi, c->cols, row);
            for (int64_t k = 0; k < c->cols; k++) {
                float ref = gv_ref(c, r * c->cols + k);
                ck_assert_msg(gv_same(row[k], ref), "%s: qblock row %lld elem %lld: %a, gguf %a",
                              c->name, (long long)r, (long long)k, row[k], ref);
            }
        }
        free(codes); free(sc); free(bi); free(row);
    }
    ck_assert_int_gt(n_quant_cases, 50);
    gv_free(&f);
}
END_TEST

/* The form each type maps to (what the backends and issue 11's int8 path rely on). */
START_TEST(test_qblock_formats) {
    sq_qblock_format q;
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q4_0, &q));
    ck_assert(q.code_bits == 4 && q.code_zero == 8 && q.block_elems == 32 && !q.has_bias);
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q4_1, &q));
    ck_assert(q.code_bits == 4 && q.code_zero == 0 && q.has_bias);
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q4_K, &q));
    ck_assert(q.code_bits == 4 && q.block_elems == 32 && q.has_bias);
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q6_K, &q));
    ck_assert(q.code_bits == 8 && q.block_elems == 16 && !q.has_bias);
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q8_0, &q));
    ck_assert(q.code_bits == 8 && q.block_elems == 32 && !q.has_bias);
    ck_assert(sq_ggml_qblock_format(SQ_GGML_Q5_K, &q) && q.code_bits == 8 && q.has_bias);
    ck_assert(!sq_ggml_qblock_format(SQ_GGML_BF16, &q) && q.code_bits == 0);
    ck_assert(!sq_ggml_qblock_format(10 /* Q2_K */, &q));
    ck_assert_int_eq(sq_qblock_code_bytes(&(sq_qblock_format){4, 8, 32, false, 16}, 64), 32);
    ck_assert_int_eq(sq_qblock_code_bytes(&(sq_qblock_format){8, 0, 16, false, 32}, 64), 64);
    /* half scales exactly where ggml stores halves (d, m of the 32-element types) */
    static const int h16[] = {SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q5_0, SQ_GGML_Q5_1, SQ_GGML_Q8_0};
    static const int f32[] = {SQ_GGML_Q4_K, SQ_GGML_Q5_K, SQ_GGML_Q6_K};
    for (int i = 0; i < 5; i++) ck_assert(sq_ggml_qblock_format(h16[i], &q) && q.scale_bits == 16);
    for (int i = 0; i < 3; i++) ck_assert(sq_ggml_qblock_format(f32[i], &q) && q.scale_bits == 32);
    /* held bytes per row of 256: Q4_0 / Q4_1 / Q8_0 as in the file, K types with float32 scales */
    static const struct { int t; int64_t bytes; } held[] = {
        {SQ_GGML_Q4_0, 8 * 18}, {SQ_GGML_Q4_1, 8 * 20}, {SQ_GGML_Q8_0, 8 * 34},
        {SQ_GGML_Q5_0, 256 + 8 * 2}, {SQ_GGML_Q5_1, 256 + 8 * 4}, {SQ_GGML_Q4_K, 128 + 8 * 8},
        {SQ_GGML_Q5_K, 256 + 8 * 8}, {SQ_GGML_Q6_K, 256 + 16 * 4},
    };
    for (int i = 0; i < 8; i++) {
        ck_assert(sq_ggml_qblock_format(held[i].t, &q));
        ck_assert_int_eq(sq_qblock_row_bytes(&q, 256), held[i].bytes);
    }
}
END_TEST

START_TEST(test_sizes_and_names) {
    /* ggml-common.h's block sizes */
    static const struct { int t; int64_t be, bb; const char *nm; } k[] = {
        {SQ_GGML_F32, 1, 4, "F32"},      {SQ_GGML_F16, 1, 2, "F16"},
        {SQ_GGML_BF16, 1, 2, "BF16"},    {SQ_GGML_Q4_0, 32, 18, "Q4_0"},
        {SQ_GGML_Q4_1, 32, 20, "Q4_1"},  {SQ_GGML_Q5_0, 32, 22, "Q5_0"},
        {SQ_GGML_Q5_1, 32, 24, "Q5_1"},  {SQ_GGML_Q8_0, 32, 34, "Q8_0"},
        {SQ_GGML_Q4_K, 256, 144, "Q4_K"}, {SQ_GGML_Q5_K, 256, 176, "Q5_K"},
        {SQ_GGML_Q6_K, 256, 210, "Q6_K"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        ck_assert(sq_ggml_type_supported(k[i].t));
        ck_assert_int_eq(sq_ggml_block_elems(k[i].t), k[i].be);
        ck_assert_int_eq(sq_ggml_block_bytes(k[i].t), k[i].bb);
        ck_assert_str_eq(sq_ggml_type_name(k[i].t), k[i].nm);
        ck_assert_uint_eq(row_bytes_of(k[i].t, 768), (uint64_t)(768 / k[i].be * k[i].bb));
    }
    ck_assert_uint_eq(row_bytes_of(SQ_GGML_Q4_1, 576), 18 * 20);
    ck_assert_uint_eq(row_bytes_of(SQ_GGML_Q6_K, 1536), 6 * 210);
    ck_assert_uint_eq(row_bytes_of(SQ_GGML_F16, 7), 14);
    /* known but unsupported, and unknown */
    ck_assert_str_eq(sq_ggml_type_name(10), "Q2_K");
    ck_assert_str_eq(sq_ggml_type_name(20), "IQ4_NL");
    ck_assert(!sq_ggml_type_supported(10) && !sq_ggml_type_supported(9) && !sq_ggml_type_supported(-1));
    ck_assert_ptr_null(sq_ggml_type_name(1000));
    ck_assert_int_eq(sq_ggml_block_elems(11), 0);
    ck_assert_int_eq(sq_ggml_block_bytes(1000), 0);
}
END_TEST

START_TEST(test_row_bytes_refusals) {
    sq_error err = {0};
    uint64_t rb = 123;
    ck_assert_int_eq(sq_ggml_row_bytes(SQ_GGML_Q4_K, 576, &rb, &err), SQ_ERR_INVALID);
    ck_assert_uint_eq(rb, 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "Q4_K"));
    ck_assert_ptr_nonnull(strstr(err.msg, "576"));
    ck_assert_ptr_nonnull(strstr(err.msg, "256"));
    rb = 1;
    ck_assert_int_eq(sq_ggml_row_bytes(SQ_GGML_Q8_0, 33, &rb, &err), SQ_ERR_INVALID);
    ck_assert_uint_eq(rb, 0);
    ck_assert_int_eq(sq_ggml_row_bytes(SQ_GGML_Q8_0, 0, &rb, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_ggml_row_bytes(SQ_GGML_Q8_0, -32, &rb, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_ggml_row_bytes(10, 256, &rb, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "Q2_K"));
    ck_assert_int_eq(sq_ggml_row_bytes(77, 256, &rb, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "#77"));
}
END_TEST

/* The half conversion the scales go through, at its edges (exact; NaN keeps its payload). */
START_TEST(test_f16_edges) {
    ck_assert_float_eq(sq_gq_f16(0x3C00), 1.0f);
    ck_assert_float_eq(sq_gq_f16(0x7BFF), 65504.0f);
    ck_assert_float_eq(sq_gq_f16(0x0001), ldexpf(1.0f, -24));
    ck_assert_float_eq(sq_gq_f16(0x03FF), ldexpf(1023.0f, -24));
    ck_assert_float_eq(sq_gq_f16(0x0400), ldexpf(1.0f, -14));
    ck_assert(signbit(sq_gq_f16(0x8000)) && sq_gq_f16(0x8000) == 0.0f);
    ck_assert(isinf(sq_gq_f16(0xFC00)) && sq_gq_f16(0xFC00) < 0);
    ck_assert(isnan(sq_gq_f16(0x7E00)));
    /* every finite half: the float rounds back through float64 to the same half */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7C00) == 0x7C00) continue;
        int e = (int)((h >> 10) & 31), m = (int)(h & 0x3FF);
        double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
        if (h & 0x8000) v = -v;
        ck_assert_msg((double)sq_gq_f16((uint16_t)h) == v, "half %04x", h);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ggml_quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_vectors_cover_every_type);
    tcase_add_test(tc, test_dequantize_row_bit_exact);
    tcase_add_test(tc, test_qblock_form_bit_exact);
    tcase_add_test(tc, test_qblock_formats);
    tcase_add_test(tc, test_sizes_and_names);
    tcase_add_test(tc, test_row_bytes_refusals);
    tcase_add_test(tc, test_f16_edges);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
