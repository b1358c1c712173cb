/* test_quant_int8: row-wise int8 weights.  Absmax int8 against bitsandbytes 0.50.2's
 * Int8Params._quantize on the CPU (tests/reference/quant/int8_vectors.bin, made by
 * tests/reference/gen_int8_vectors.py): codes and SCB byte for byte, one thread and a pool;
 * the dequantized value against bnb's int8_vectorwise_dequant; zero-point int8 against the
 * formula of include/shardq/quant.h recomputed here in double; bad input. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/quant.h"
#include "testutil.h"

#define VEC_PATH SQ_SOURCE_DIR "/tests/reference/quant/int8_vectors.bin"

static sq_dtype dt_enum(int dt) {
    return dt == 0 ? SQ_DTYPE_F32 : (dt == 1 ? SQ_DTYPE_F16 : SQ_DTYPE_BF16);
}

static void check_vectors(sq_pool *pool) {
    size_t n_buf = 0;
    uint8_t *buf = sq_test_read_file(VEC_PATH, &n_buf);
    ck_assert_msg(buf != NULL, "cannot read %s", VEC_PATH);
    sq_test_rd r = {buf, buf + n_buf, 0};
    const uint8_t *magic = sq_test_take(&r, 4);
    ck_assert(magic && memcmp(magic, "SQI8", 4) == 0);
    ck_assert_uint_eq(sq_test_u32(&r), 1);
    uint32_t n_cases = sq_test_u32(&r);
    ck_assert_uint_ge(n_cases, 10);
    uint64_t n_codes = 0, n_deq_exact = 0;
    int saw_zero_row = 0, saw_f16 = 0, saw_bf16 = 0, saw_odd = 0;
    for (uint32_t c = 0; c < n_cases; c++) {
        const uint8_t *nl = sq_test_take(&r, 1);
        ck_assert(nl);
        char name[256] = {0};
        const uint8_t *nm = sq_test_take(&r, *nl);
        ck_assert(nm);
        memcpy(name, nm, *nl);
        const uint8_t *hd = sq_test_take(&r, 4);
        ck_assert(hd);
        int dt = hd[0];
        uint32_t rows = sq_test_u32(&r), cols = sq_test_u32(&r);
        uint64_t n = (uint64_t)rows * cols;
        const uint8_t *in = sq_test_take(&r, n * (dt == 0 ? 4 : 2));
        const uint8_t *cb = sq_test_take(&r, n);
        const uint8_t *scb = sq_test_take(&r, (size_t)rows * 4);
        const uint8_t *deq = sq_test_take(&r, n * 4);
        ck_assert_msg(!r.bad, "vector file truncated at case %u", c);
        saw_f16 |= dt == 1;
        saw_bf16 |= dt == 2;
        saw_odd |= cols % 2;
        sq_qtensor q;
        sq_error e;
        sq_error_init(&e, -1);
        ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, dt_enum(dt), in, rows, cols, pool, &q, &e), SQ_OK);
        ck_assert_int_eq(q.type, SQ_QUANT_INT8);
        ck_assert_ptr_null(q.row_zp);
        for (uint64_t i = 0; i < n; i++)
            ck_assert_msg((uint8_t)q.codes[i] == cb[i], "%s: code %llu is %d, bitsandbytes %d", name,
                          (unsigned long long)i, q.codes[i], (int8_t)cb[i]);
        ck_assert_msg(memcmp(q.row_scale, scb, (size_t)rows * 4) == 0, "%s: SCB differs", name);
        float *row = malloc(cols * sizeof(float));
        for (uint32_t i = 0; i < rows; i++) {
            saw_zero_row |= q.row_scale[i] == 0.0f;
            sq_dequant_int8_row(&q, i, row);
            for (uint32_t j = 0; j < cols; j++) {
                float want;
                memcpy(&want, deq + ((uint64_t)i * cols + j) * 4, 4);
                /* shardq: code * fl(SCB / 127), one rounding; bnb: fl(code * SCB) * fl(1/127) */
                ck_assert_msg(fabsf(row[j] - want) <= fabsf(want) * 0x1p-22f, "%s: [%u, %u] %.9g vs bnb %.9g",
                              name, i, j, row[j], want);
                n_deq_exact += row[j] == want;
            }
        }
        free(row);
        n_codes += n;
        sq_qtensor_free(&q);
    }
    ck_assert_msg(saw_zero_row && saw_f16 && saw_bf16 && saw_odd, "the vectors lack an edge case");
    fprintf(stderr, "test_quant_int8: %u cases, %llu codes + SCB equal to bitsandbytes (%s); "
                    "dequantized %llu of %llu bit-equal, the rest within 2 ulp\n",
            n_cases, (unsigned long long)n_codes, pool ? "pool" : "one thread",
            (unsigned long long)n_deq_exact, (unsigned long long)n_codes);
    free(buf);
}

START_TEST(test_bnb_vectors) { check_vectors(NULL); }
END_TEST

START_TEST(test_bnb_vectors_pool) {
    sq_pool *pool = NULL;
    sq_error e;
    sq_error_init(&e, -1);
    ck_assert_int_eq(sq_pool_create(3, &pool, &e), SQ_OK);
    check_vectors(pool);
    sq_pool_destroy(pool);
}
END_TEST

/* the zero-point formula recomputed in double where it is exact, float32 where quant.h says so */
static void zp_reference(const float *x, int64_t cols, int8_t *codes, float *scale, int *zp) {
    double lo = 0, hi = 0;
    for (int64_t j = 0; j < cols; j++) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
    }
    float s = (float)((hi - lo) / 255.0);
    *scale = s;
    if (s == 0.0f) {
        *zp = 0;
        memset(codes, 0, (size_t)cols);
        return;
    }
    double z = -128.0 - nearbyint((double)((float)lo / s));
    z = z < -128 ? -128 : z > 127 ? 127 : z;
    *zp = (int)z;
    for (int64_t j = 0; j < cols; j++) {
        double v = nearbyint((double)(x[j] / s)) + z;
        codes[j] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
    }
}

START_TEST(test_zero_point) {
    enum { ROWS = 9, COLS = 77 };
    float *x = malloc(ROWS * COLS * sizeof(float));
    uint32_t st = 12345;
    for (int i = 0; i < ROWS * COLS; i++) {
        st = st * 1664525u + 1013904223u;
        x[i] = ((float)(st >> 8) / 16777216.0f - 0.3f) * 0.1f;   /* skewed: more positive */
    }
    for (int j = 0; j < COLS; j++) {
        x[1 * COLS + j] = 0.0f;                 /* zeros */
        x[2 * COLS + j] = 0.5f + 0.001f * j;     /* all positive: lo clamps to 0 */
        x[3 * COLS + j] = -2.0f - 0.01f * j;     /* all negative: hi clamps to 0 */
        x[4 * COLS + j] = 3.0e38f * (j % 2 ? 1.0f : -1.0f);   /* range beyond float32 */
    }
    x[5 * COLS + 3] = 0.0f;
    sq_qtensor q;
    sq_error e;
    sq_error_init(&e, -1);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8_ZP, SQ_DTYPE_F32, x, ROWS, COLS, NULL, &q, &e), SQ_OK);
    ck_assert_ptr_nonnull(q.row_zp);
    int8_t codes[COLS];
    float row[COLS];
    for (int r = 0; r < ROWS; r++) {
        float s;
        int zp;
        zp_reference(x + r * COLS, COLS, codes, &s, &zp);
        ck_assert_msg(s == q.row_scale[r], "row %d scale %.9g, want %.9g", r, q.row_scale[r], s);
        ck_assert_int_eq(q.row_zp[r], zp);
        ck_assert_mem_eq(q.codes + r * COLS, codes, COLS);
        sq_dequant_int8_row(&q, r, row);
        for (int j = 0; j < COLS; j++) {
            float xv = x[r * COLS + j];
            /* within half a step (plus the float32 roundings of value = scale*code + bias) */
            double bound = 0.5 * s + 4 * 0x1p-24 * (fabs(xv) + 256.0 * s);
            ck_assert_msg(fabs((double)row[j] - xv) <= bound, "row %d col %d: %.9g vs %.9g", r, j,
                          row[j], xv);
            if (xv == 0.0f) ck_assert_msg(row[j] == 0.0f, "row %d: zero comes back as %g", r, row[j]);
        }
    }
    ck_assert_float_eq(q.row_scale[1], 0.0f);
    ck_assert_int_eq(q.row_zp[2], -128);   /* lo = 0: code -128 is zero */
    ck_assert_int_eq(q.row_zp[3], 127);    /* hi = 0: code 127 is zero */
    sq_qtensor_free(&q);
    free(x);
}
END_TEST

START_TEST(test_bad_input) {
    float x[2 * 40];
    for (int i = 0; i < 80; i++) x[i] = 0.25f * (float)(i % 7) - 0.5f;
    sq_qtensor q;
    sq_error e;
    sq_error_init(&e, -1);
    x[40 + 5] = NAN;
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_ERR_FORMAT);
    ck_assert_msg(strstr(e.msg, "row 1") != NULL, "%s", e.msg);
    ck_assert_ptr_null(q.codes);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8_ZP, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_ERR_FORMAT);
    x[40 + 5] = INFINITY;
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8_ZP, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_ERR_FORMAT);
    /* beyond float16: bnb would store SCB = inf and zero the row; refused */
    x[40 + 5] = 70000.0f;
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_ERR_FORMAT);
    ck_assert_msg(strstr(e.msg, "65504") != NULL, "%s", e.msg);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8_ZP, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_OK);
    sq_qtensor_free(&q);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_NF4, SQ_DTYPE_F32, x, 2, 40, NULL, &q, &e), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, SQ_DTYPE_I32, x, 2, 40, NULL, &q, &e), SQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, SQ_DTYPE_F32, x, 0, 40, NULL, &q, &e), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, SQ_DTYPE_F32, NULL, 2, 40, NULL, &q, &e), SQ_ERR_INVALID);
}
END_TEST

int main(void) {
    Suite *s = suite_create("quant_int8");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_bnb_vectors);
    tcase_add_test(tc, test_bnb_vectors_pool);
    tcase_add_test(tc, test_zero_point);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
