/* test_load_device (unit, no GPU needed): the loader's quant_device option and `shardq quantize
 * --device` where no CUDA device can be used (a build without CUDA, or a CUDA build on a machine
 * without a GPU): quant_device >= 0 fails with one clear error before any tensor is handed over,
 * -1 (the default) loads; `quantize --device 0` fails with one line and exit 1, `--device cpu`
 * and `--device auto` work and report "cpu", bad values exit 2.  On a machine with a GPU the
 * device-count checks use a device number past the machine's count instead. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load_fixture.h"
#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "testutil.h"

typedef struct fixture {
    char *dir;
    sq_model_config cfg;
    sq_ckpt *st;
    sq_meta *meta;
} fixture;

static void fixture_make(fixture *fx) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_preset("tiny", SQ_ARCH_LLAMA, &fx->cfg, &err), SQ_OK);
    fx->dir = sq_test_tmpdir("loaddev");
    ck_assert_ptr_nonnull(fx->dir);
    int split[1] = {0};
    ck_assert_int_eq(lf_make_model(fx->dir, &fx->cfg, 1, split), 0);
    ck_assert_int_eq(sq_ckpt_open(fx->dir, &fx->st, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&fx->cfg, &fx->meta, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_validate(fx->meta, fx->st, &err), SQ_OK);
}

static void fixture_free(fixture *fx) {
    sq_meta_destroy(fx->meta);
    sq_ckpt_close(fx->st);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", fx->dir);
    free(fx->dir);
}

static sq_status count(void *user, sq_load_item *it, sq_error *err) {
    (void)it;
    (void)err;
    (*(int *)user)++;
    return SQ_OK;
}

static bool built_with_cuda(void) {
#ifdef SHARDQ_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

START_TEST(test_default_is_cpu) {
    ck_assert_int_eq(sq_load_options_default().quant_device, -1);
    if (!built_with_cuda()) ck_assert_int_eq(sq_load_cuda_device_count(), 0);
}
END_TEST

START_TEST(test_device_refused) {
    fixture fx;
    fixture_make(&fx);
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = (int)fx.cfg.n_layers,
                              .has_embed = true, .has_head = true};
    const int n_dev = sq_load_cuda_device_count();
    sq_error err;
    sq_error_init(&err, 3);
    sq_load_options o = sq_load_options_default();
    o.staging_bytes = 4096;
    /* with NF4 (4-bit weights to quantize) and with NONE (nothing to quantize): same refusal */
    for (int k = 0; k < 2; k++) {
        o.scheme.type = k == 0 ? SQ_QUANT_NF4 : SQ_QUANT_NONE;
        o.quant_device = n_dev;   /* 0 where there is no device */
        int n = 0;
        sq_status rc = sq_load_stage(fx.st, fx.meta, &all, &o, count, &n, NULL, &err);
        ck_assert_int_eq(n, 0);
        ck_assert_int_eq(err.rank, 3);
        if (!built_with_cuda()) {
            ck_assert_int_eq(rc, SQ_ERR_UNSUPPORTED);
            ck_assert_str_eq(err.msg, "GPU quantize on CUDA device 0: this shardq was built without "
                                      "CUDA (rebuild with -DSHARDQ_CUDA=ON, or quantize on the CPU)");
        } else if (n_dev == 0) {
            ck_assert_int_eq(rc, SQ_ERR_UNSUPPORTED);
            ck_assert_msg(strstr(err.msg, "GPU quantize on CUDA device 0: no CUDA device on this "
                                          "machine ("), "%s", err.msg);
        } else {
            ck_assert_int_eq(rc, SQ_ERR_INVALID);
            char want[128];
            snprintf(want, sizeof want, "GPU quantize on CUDA device %d: this machine has %d CUDA device%s",
                     n_dev, n_dev, n_dev == 1 ? "" : "s");
            ck_assert_str_eq(err.msg, want);
        }
    }
    /* -1: the CPU, every tensor handed over */
    o.scheme.type = SQ_QUANT_NF4;
    o.quant_device = -1;
    int n = 0;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_load_stage(fx.st, fx.meta, &all, &o, count, &n, NULL, &err), SQ_OK);
    ck_assert_int_eq(n, sq_meta_n_tensors(fx.meta));
    fixture_free(&fx);
}
END_TEST

START_TEST(test_cli_device) {
    fixture fx;
    fixture_make(&fx);
    const int n_dev = sq_load_cuda_device_count();
    char cmd[9000], out[4200];
    int rc = 0;
    snprintf(out, sizeof out, "%s-q", fx.dir);
    /* a device this machine cannot use: one line, exit 1, no output folder */
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s' --device %d --quiet", SQ_SHARDQ_EXE,
             fx.dir, out, n_dev);
    char *o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1, "rc %d: %s", rc, o);
    ck_assert_msg(sq_test_count_lines(o) == 1, "%s", o);
    if (!built_with_cuda())
        ck_assert_msg(strstr(o, "--device 0: this shardq was built without CUDA (-DSHARDQ_CUDA=ON); "
                                "use --device cpu or auto"), "%s", o);
    else if (n_dev == 0)
        ck_assert_msg(strstr(o, "--device 0: no CUDA device on this rank's machine; use --device cpu "
                                "or auto"), "%s", o);
    else
        ck_assert_msg(strstr(o, "CUDA device"), "%s", o);
    free(o);
    ck_assert_int_ne(access(out, F_OK), 0);
    /* cpu: works and says so */
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s' --device cpu --json --quiet",
             SQ_SHARDQ_EXE, fx.dir, out);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    ck_assert_msg(strstr(o, "\"device\": \"cpu\", \"cuda_ranks\": 0}"), "%s", o);
    free(o);
    /* auto (the default): cpu where no GPU can be used; same bytes as --device cpu */
    char out2[4300];
    snprintf(out2, sizeof out2, "%s-q2", fx.dir);
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out '%s' --device auto --quiet", SQ_SHARDQ_EXE,
             fx.dir, out2);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    if (n_dev == 0) ck_assert_msg(strstr(o, "quantized on: cpu\n"), "%s", o);
    else ck_assert_msg(strstr(o, "quantized on: cuda on 1 of 1 rank (cuda)\n"), "%s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "cmp '%s/model-00001-of-00001.safetensors' "
             "'%s/model-00001-of-00001.safetensors'", out, out2);
    ck_assert_int_eq(system(cmd), 0);
    /* bad values: usage errors */
    const char *bad[] = {"gpu", "-1", "1024", "0x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out x --device '%s'", SQ_SHARDQ_EXE, fx.dir,
                 bad[i]);
        o = sq_test_run(cmd, &rc);
        ck_assert_msg(rc == 2, "'%s': rc %d: %s", bad[i], rc, o);
        char want[128];
        snprintf(want, sizeof want, "--device must be auto, cpu or a CUDA device number 0..1023, "
                 "not '%s'", bad[i]);
        ck_assert_msg(strstr(o, want), "%s", o);
        free(o);
    }
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' --out x --device", SQ_SHARDQ_EXE, fx.dir);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 2 && strstr(o, "--device needs a value"), "rc %d: %s", rc, o);
    free(o);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", out, out2);
    ck_assert_int_eq(system(cmd), 0);
    fixture_free(&fx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("load_device");
    TCase *tc = tcase_create("load_device");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_default_is_cpu);
    tcase_add_test(tc, test_device_refused);
    tcase_add_test(tc, test_cli_device);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
