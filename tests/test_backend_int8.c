/* test_backend_int8: int8 weights (absmax and zero-point, quant.h) on the CPU backend, held in
 * the block-scaled integer form.  The values a Linear multiplies by are sq_dequant_int8_row's
 * bit for bit (checked through embed, which returns the looked-up rows); Linear on the few-row
 * and the many-row paths, portable and AVX2, one and three threads, against a float64 reference
 * over those values with a named bound; a column count that is not a multiple of 32 (held dense
 * float32, same values); sq_backend_weight_qblock's argument checks. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/backend.h"
#include "shardq/quant.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float rng_f(float lo, float hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static sq_backend *mk_be(int n_threads, const char *isa) {
    if (isa) setenv("SHARDQ_CPU_ISA", isa, 1);
    else unsetenv("SHARDQ_CPU_ISA");
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(n_threads, &be, &err), SQ_OK);
    unsetenv("SHARDQ_CPU_ISA");
    sq_backend_limits lim = {.max_rows = 64, .max_width = 4096, .max_vocab = 0, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    return be;
}

/* a bf16 weight with a spread of row magnitudes, a zero row and a skewed (all-positive) row */
static uint16_t *mk_src(int64_t rows, int64_t cols) {
    uint16_t *w = malloc((size_t)(rows * cols) * 2);
    for (int64_t r = 0; r < rows; r++) {
        float mag = 0.01f * (float)(1 + r % 7);
        for (int64_t k = 0; k < cols; k++) {
            float v = rng_f(-mag, mag);
            if (r == 3) v = 0.0f;
            if (r == 5) v = fabsf(v) + 0.2f;
            w[r * cols + k] = sq_f32_to_bf16_1(v);
        }
    }
    return w;
}

static void check_type(sq_quant_type type, int64_t rows, int64_t cols) {
    uint16_t *src = mk_src(rows, cols);
    sq_qtensor q;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_quant_int8_from(type, SQ_DTYPE_BF16, src, rows, cols, NULL, &q, &err), SQ_OK);
    float *val = malloc((size_t)(rows * cols) * sizeof(float));   /* (rows, cols) the values */
    for (int64_t r = 0; r < rows; r++) sq_dequant_int8_row(&q, r, val + r * cols);
    const int n_max = 40;
    float *x = malloc((size_t)(n_max * cols) * sizeof(float));
    float *out = malloc((size_t)(n_max * rows) * sizeof(float));
    float *first = malloc((size_t)(n_max * rows) * sizeof(float));
    for (int64_t i = 0; i < n_max * cols; i++) x[i] = rng_f(-2.0f, 2.0f);
    const char *isas[] = {"portable", NULL};
    const int threads[] = {1, 3};
    bool have_first = false;
    for (int ii = 0; ii < 2; ii++)
        for (int ti = 0; ti < 2; ti++) {
            sq_backend *be = mk_be(threads[ti], isas[ii]);
            sq_weight *w = NULL;
            ck_assert_msg(sq_backend_weight_4bit(be, "model.layers.0.mlp.up_proj.weight", &q, &w, &err) == SQ_OK,
                          "%s", err.msg);
            ck_assert_int_eq(sq_weight_qtype(w), type);
            ck_assert_int_eq(sq_weight_ggml_type(w), -1);
            uint64_t want_bytes = cols % 32 ? (uint64_t)(rows * cols) * 4
                                            : (uint64_t)(rows * cols) + (uint64_t)(rows * cols / 32) * 4 *
                                                  (type == SQ_QUANT_INT8_ZP ? 2 : 1);
            ck_assert_uint_eq(sq_weight_bytes(w), want_bytes);
            /* embed returns the rows a Linear multiplies by */
            int32_t ids[3] = {0, 3, (int32_t)(rows - 1)};
            float *rowv = malloc((size_t)(3 * cols) * sizeof(float));
            ck_assert_int_eq(sq_backend_embed(be, w, ids, 3, rowv, &err), SQ_OK);
            for (int i = 0; i < 3; i++)
                ck_assert_msg(memcmp(rowv + i * cols, val + ids[i] * cols, (size_t)cols * 4) == 0,
                              "%s: embedded row %d differs from sq_dequant_int8_row", sq_quant_type_name(type), ids[i]);
            free(rowv);
            const int ns[] = {1, 2, 5, n_max};
            for (int ni = 0; ni < 4; ni++) {
                int n = ns[ni];
                ck_assert_int_eq(sq_backend_linear(be, x, n, w, NULL, out, &err), SQ_OK);
                for (int r = 0; r < n; r++)
                    for (int64_t o = 0; o < rows; o++) {
                        double ref = 0, mag = 0;
                        for (int64_t k = 0; k < cols; k++) {
                            ref += (double)val[o * cols + k] * x[r * cols + k];
                            mag += fabs((double)val[o * cols + k] * x[r * cols + k]);
                        }
                        /* float32 FMA chain of cols/8 steps per lane + the horizontal sum */
                        double bound = (double)(cols / 8 + 4) * 0x1p-24 * mag + 1e-30;
                        double got = out[r * rows + o];
                        ck_assert_msg(fabs(got - ref) <= bound, "%s [%lld x %lld] n %d row %d out %lld: %.9g vs %.9g (bound %.3g)",
                                      sq_quant_type_name(type), (long long)rows, (long long)cols, n, r,
                                      (long long)o, got, ref, bound);
                    }
                if (n == n_max) {
                    /* every ISA path and thread count gives the same bits */
                    if (!have_first) memcpy(first, out, (size_t)(n * rows) * sizeof(float));
                    else ck_assert_msg(memcmp(first, out, (size_t)(n * rows) * sizeof(float)) == 0,
                                       "%s: results differ across ISA / threads", sq_quant_type_name(type));
                    have_first = true;
                }
            }
            sq_backend_weight_free(be, w);
            sq_backend_destroy(be);
        }
    free(first);
    free(out);
    free(x);
    free(val);
    sq_qtensor_free(&q);
    free(src);
}

START_TEST(test_int8_absmax) { check_type(SQ_QUANT_INT8, 48, 96); }
END_TEST
START_TEST(test_int8_zero_point) { check_type(SQ_QUANT_INT8_ZP, 48, 96); }
END_TEST
START_TEST(test_int8_odd_cols) {
    check_type(SQ_QUANT_INT8, 17, 33);
    check_type(SQ_QUANT_INT8_ZP, 17, 33);
}
END_TEST

START_TEST(test_qblock_checks) {
    sq_backend *be = mk_be(1, NULL);
    sq_error err;
    sq_error_init(&err, -1);
    uint8_t codes[64] = {0};
    float sc[2] = {1, 1};
    sq_weight *w = (sq_weight *)1;
    sq_qblock_format f = {.code_bits = 8, .code_zero = 0, .block_elems = 32, .has_bias = false, .scale_bits = 32};
    ck_assert_int_eq(sq_backend_weight_qblock(be, "t", &f, 1, 64, codes, sc, NULL, &w, &err), SQ_OK);
    ck_assert_uint_eq(sq_weight_bytes(w), 64 + 8);
    sq_backend_weight_free(be, w);
    w = (sq_weight *)1;
    ck_assert_int_eq(sq_backend_weight_qblock(be, "t", &f, 1, 48, codes, sc, NULL, &w, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(w);
    ck_assert_msg(strstr(err.msg, "multiple of 32") != NULL, "%s", err.msg);
    f.has_bias = true;   /* a bias format without biases */
    ck_assert_int_eq(sq_backend_weight_qblock(be, "t", &f, 1, 64, codes, sc, NULL, &w, &err), SQ_ERR_INVALID);
    f.has_bias = false;
    f.code_bits = 5;
    ck_assert_int_eq(sq_backend_weight_qblock(be, "t", &f, 1, 64, codes, sc, NULL, &w, &err), SQ_ERR_INVALID);
    sq_backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("backend_int8");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_int8_absmax);
    tcase_add_test(tc, test_int8_zero_point);
    tcase_add_test(tc, test_int8_odd_cols);
    tcase_add_test(tc, test_qblock_checks);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
