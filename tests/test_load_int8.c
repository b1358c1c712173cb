/* test_load_int8: `shardq quantize --quant int8` writes transformers' bitsandbytes 8-bit
 * serialization (per Linear: weight I8 + SCB F32 + weight_format U8 0; config.json
 * quantization_config with load_in_8bit), its bytes equal sq_quant_int8_from on the source;
 * that folder is read back as stored ("copied as stored"), identical bytes; int8-zp, which
 * bitsandbytes has no format for, is refused.  (tests/reference/check_int8_roundtrip.py checks
 * the same folder with transformers itself.) */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shardq/checkpoint.h"
#include "shardq/quant.h"
#include "testutil.h"

static sq_ckpt *open_ckpt(const char *dir) {
    sq_ckpt *st = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_ckpt_open(dir, &st, &err) == SQ_OK, "%s", err.msg);
    return st;
}

START_TEST(test_quantize_int8_bnb_format) {
    char *dir = sq_test_tmpdir("load_int8");
    char src[4200], out[4200], out2[4200], cmd[13000];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(out, sizeof out, "%s/int8", dir);
    snprintf(out2, sizeof out2, "%s/int8-copy", dir);
    int rc = 0;
    snprintf(cmd, sizeof cmd, "'%s' make-model --out '%s' --preset tiny --family llama --dtype bf16 --seed 3",
             SQ_SHARDQ_EXE, src);
    char *o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s' --quant int8 --threads 2", SQ_SHARDQ_EXE, src, out);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0 && strstr(o, "(int8, one scale per row)"), "%s", o);
    free(o);

    sq_ckpt *s = open_ckpt(src), *q = open_ckpt(out);
    sq_error err;
    sq_error_init(&err, -1);
    int n_lin = 0;
    for (size_t i = 0; i < sq_ckpt_n_tensors(s); i++) {
        const sq_ckpt_tensor *t = sq_ckpt_tensor_at(s, i);
        const sq_ckpt_tensor *w = sq_ckpt_find(q, t->name);
        ck_assert_msg(w, "%s missing from the output", t->name);
        bool linear = t->n_dims == 2 && strstr(t->name, "layers.") && strstr(t->name, "_proj.weight");
        if (!linear) {   /* embeddings, norms, lm_head: as they were */
            ck_assert_int_eq(w->dtype, t->dtype);
            ck_assert_int_eq(memcmp(sq_ckpt_data(q, w), sq_ckpt_data(s, t), (size_t)t->n_bytes), 0);
            continue;
        }
        n_lin++;
        const int64_t rows = t->shape[0], cols = t->shape[1];
        ck_assert_int_eq(w->dtype, SQ_DTYPE_I8);
        ck_assert(w->n_dims == 2 && w->shape[0] == rows && w->shape[1] == cols);
        char base[256], name[300];
        snprintf(base, sizeof base, "%.*s", (int)strlen(t->name) - 6, t->name);
        snprintf(name, sizeof name, "%sSCB", base);
        const sq_ckpt_tensor *scb = sq_ckpt_find(q, name);
        ck_assert_msg(scb && scb->dtype == SQ_DTYPE_F32 && scb->n_dims == 1 && scb->shape[0] == rows, "%s", name);
        snprintf(name, sizeof name, "%sweight_format", base);
        const sq_ckpt_tensor *fmt = sq_ckpt_find(q, name);
        ck_assert_msg(fmt && fmt->dtype == SQ_DTYPE_U8 && fmt->n_dims == 0 && fmt->n_bytes == 1, "%s", name);
        ck_assert_int_eq(*(const uint8_t *)sq_ckpt_data(q, fmt), 0);
        sq_qtensor ref;
        ck_assert_int_eq(sq_quant_int8_from(SQ_QUANT_INT8, t->dtype, sq_ckpt_data(s, t), rows, cols, NULL, &ref, &err),
                         SQ_OK);
        ck_assert_int_eq(memcmp(sq_ckpt_data(q, w), ref.codes, (size_t)(rows * cols)), 0);
        ck_assert_int_eq(memcmp(sq_ckpt_data(q, scb), ref.row_scale, (size_t)rows * 4), 0);
        sq_qtensor_free(&ref);
    }
    ck_assert_int_eq(n_lin, 4 * 7);
    ck_assert_uint_eq(sq_ckpt_n_tensors(q), sq_ckpt_n_tensors(s) + 2 * 28);
    sq_ckpt_close(s);
    size_t n = 0;
    char p[4400];
    snprintf(p, sizeof p, "%s/config.json", out);
    char *cfg = sq_test_read_file(p, &n);
    ck_assert_ptr_nonnull(strstr(cfg, "\"load_in_8bit\":\ttrue"));
    ck_assert_ptr_nonnull(strstr(cfg, "\"load_in_4bit\":\tfalse"));
    ck_assert_ptr_nonnull(strstr(cfg, "\"quant_method\":\t\"bitsandbytes\""));
    free(cfg);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out);
    char *idx = sq_test_read_file(p, &n);
    ck_assert_ptr_nonnull(strstr(idx, "\"model.layers.3.mlp.down_proj.SCB\""));
    free(idx);

    /* the 8-bit folder again: copied as stored, the same bytes */
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s' --quant nf4", SQ_SHARDQ_EXE, out, out2);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1 && strstr(o, "already a bitsandbytes"), "%s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s'", SQ_SHARDQ_EXE, out, out2);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0 && strstr(o, "copied as stored"), "%s", o);
    free(o);
    sq_ckpt *q2 = open_ckpt(out2);
    ck_assert_uint_eq(sq_ckpt_n_tensors(q2), sq_ckpt_n_tensors(q));
    for (size_t i = 0; i < sq_ckpt_n_tensors(q); i++) {
        const sq_ckpt_tensor *a = sq_ckpt_tensor_at(q, i), *b = sq_ckpt_find(q2, a->name);
        ck_assert_msg(b && b->dtype == a->dtype && b->n_bytes == a->n_bytes &&
                          !memcmp(sq_ckpt_data(q, a), sq_ckpt_data(q2, b), (size_t)a->n_bytes),
                      "%s differs after the copy", a->name);
    }
    sq_ckpt_close(q2);
    sq_ckpt_close(q);

    /* int8-zp has no bitsandbytes format */
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s/zp' --quant int8-zp", SQ_SHARDQ_EXE, src, dir);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1 && strstr(o, "quantize writes nf4, fp4 or int8 (bitsandbytes' formats), not int8-zp"),
                  "%s", o);
    free(o);
    snprintf(p, sizeof p, "%s/zp", dir);
    ck_assert_int_ne(access(p, F_OK), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("load_int8");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_quantize_int8_bnb_format);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
