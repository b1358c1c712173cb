/* test_load_gpu (label gpu): the streaming loader with quant_device 0 hands over exactly the
 * bytes of the CPU loader (quant_device -1) — packed nibbles, absmax or absmax codes + nested
 * absmax + offset, and every dense tensor — for `shardq make-model` checkpoints in BF16, F16 and
 * F32, NF4 / FP4, with and without double quant, blocksize 64 / 128, with a staging budget small
 * enough that every weight goes through the ring in many chunks (and with the default budget).
 * Prints the loader's GPU quantize GB/s (checkpoint bytes read / load seconds; a small model, so
 * a lower bound dominated by per-chunk latency) next to the CPU loader's.
 * Exits 77 (CTest skip) when cudaGetDeviceCount finds no device. */
#include <check.h>
#include "gpu_skip.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "shardq/checkpoint.h"
#include "shardq/config.h"
#include "shardq/load.h"
#include "testutil.h"

typedef struct collected {
    sq_load_item items[512];
    int n;
} collected;

static sq_status collect(void *user, sq_load_item *it, sq_error *err) {
    collected *c = user;
    if (c->n >= 512) return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "too many");
    c->items[c->n++] = *it;
    it->data = NULL;
    memset(&it->q, 0, sizeof it->q);
    return SQ_OK;
}

static void collected_free(collected *c) {
    for (int i = 0; i < c->n; i++) sq_load_item_release(&c->items[i]);
    c->n = 0;
}

static void same_items(const sq_load_item *a, const sq_load_item *b) {
    const char *name = a->spec->name;
    ck_assert_int_eq(a->tensor, b->tensor);
    ck_assert_int_eq(a->is_4bit, b->is_4bit);
    ck_assert_uint_eq(a->src_bytes, b->src_bytes);
    if (!a->is_4bit) {
        ck_assert_uint_eq(a->n_bytes, b->n_bytes);
        ck_assert_msg(!memcmp(a->data, b->data, (size_t)a->n_bytes), "%s: dense bytes", name);
        return;
    }
    const sq_qtensor *p = &a->q, *q = &b->q;
    ck_assert_msg(p->type == q->type && p->blocksize == q->blocksize &&
                      p->n_elements == q->n_elements && p->n_blocks == q->n_blocks &&
                      p->double_quant == q->double_quant && p->dtype == q->dtype,
                  "%s: header", name);
    ck_assert_msg(!memcmp(p->packed, q->packed, (size_t)((p->n_elements + 1) / 2)), "%s: packed", name);
    if (!p->double_quant) {
        ck_assert_msg(!memcmp(p->absmax, q->absmax, (size_t)p->n_blocks * 4), "%s: absmax", name);
    } else {
        uint64_t nn = (p->n_blocks + 255) / 256;
        ck_assert_msg(!memcmp(p->absmax_q, q->absmax_q, (size_t)p->n_blocks), "%s: absmax codes", name);
        ck_assert_msg(!memcmp(p->nested_absmax, q->nested_absmax, (size_t)nn * 4), "%s: nested", name);
        ck_assert_msg(!memcmp(&p->nested_offset, &q->nested_offset, 4), "%s: offset", name);
    }
}

static char *g_root;

/* make-model --dtype dt into g_root/dt (once) */
static const char *model_dir(const char *dt) {
    static char path[3][4200];
    int k = !strcmp(dt, "bf16") ? 0 : !strcmp(dt, "f16") ? 1 : 2;
    snprintf(path[k], sizeof path[k], "%s/%s", g_root, dt);
    char cmd[2 * sizeof path + 512];
    snprintf(cmd, sizeof cmd, "test -d '%s' || '%s' make-model --out '%s' --preset tiny --dtype %s "
             "--shards 2 --seed 7 >/dev/null", path[k], SQ_SHARDQ_EXE, path[k], dt);
    ck_assert_int_eq(system(cmd), 0);
    return path[k];
}

static void load(const char *dir, int dev, const sq_quant_scheme *s, uint64_t staging,
                 collected *c, sq_load_stats *stats) {
    sq_error err;
    sq_error_init(&err, 0);
    sq_ckpt *st = NULL;
    sq_meta *m = NULL;
    sq_model_config cfg;
    ck_assert_int_eq(sq_config_load(dir, &cfg, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_open(dir, &st, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&cfg, &m, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_validate(m, st, &err), SQ_OK);
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = (int)cfg.n_layers, .has_embed = true,
                              .has_head = true};
    sq_load_options o = sq_load_options_default();
    o.scheme = *s;
    o.staging_bytes = staging;
    o.quant_device = dev;
    sq_status rc = sq_load_stage(st, m, &all, &o, collect, c, stats, &err);
    char msg[2048];
    sq_error_format(&err, msg, sizeof msg);
    ck_assert_msg(rc == SQ_OK, "device %d: %s", dev, msg);
    ck_assert_int_eq(c->n, sq_meta_n_tensors(m));
    sq_meta_destroy(m);
    sq_ckpt_close(st);
}

START_TEST(test_gpu_loader_equals_cpu) {
    const char *dts[] = {"bf16", "f16", "f32"};
    /* 1 KiB: a few blocks per chunk (many chunks per weight, the ring wraps); 0: the default */
    const uint64_t stagings[] = {1024, 24 * 1024, 0};
    int compared = 0;
    for (int d = 0; d < 3; d++) {
        const char *dir = model_dir(dts[d]);
        for (int t = 0; t < 2; t++)
            for (int dq = 0; dq < 2; dq++)
                for (int b = 0; b < 2; b++)
                    for (int k = 0; k < 3; k++) {
                        if (k == 2 && (dq || b)) continue;   /* default staging: once per type */
                        sq_quant_scheme s = {.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4,
                                             .double_quant = dq, .blocksize = b ? 128 : 64};
                        collected *cpu = calloc(1, sizeof *cpu), *gpu = calloc(1, sizeof *gpu);
                        load(dir, -1, &s, stagings[k], cpu, NULL);
                        load(dir, 0, &s, stagings[k], gpu, NULL);
                        ck_assert_int_eq(cpu->n, gpu->n);
                        for (int i = 0; i < cpu->n; i++) {
                            same_items(&cpu->items[i], &gpu->items[i]);
                            compared += cpu->items[i].is_4bit;
                        }
                        collected_free(cpu);
                        collected_free(gpu);
                        free(cpu);
                        free(gpu);
                    }
    }
    ck_assert_int_gt(compared, 100);
}
END_TEST

/* an out-of-range device: a clear error, nothing handed over */
START_TEST(test_gpu_bad_device) {
    int n_dev = 0;
    ck_assert_int_eq(cudaGetDeviceCount(&n_dev), cudaSuccess);
    const char *dir = model_dir("bf16");
    sq_error err;
    sq_error_init(&err, 0);
    sq_ckpt *st = NULL;
    sq_meta *m = NULL;
    sq_model_config cfg;
    ck_assert_int_eq(sq_config_load(dir, &cfg, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_open(dir, &st, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&cfg, &m, &err), SQ_OK);
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = (int)cfg.n_layers, .has_embed = true,
                              .has_head = true};
    sq_load_options o = sq_load_options_default();
    o.quant_device = n_dev;
    collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(sq_load_stage(st, m, &all, &o, collect, c, NULL, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(c->n, 0);
    ck_assert_msg(strstr(err.msg, "CUDA device"), "%s", err.msg);
    free(c);
    sq_meta_destroy(m);
    sq_ckpt_close(st);
}
END_TEST

/* GB/s of the loader, GPU vs CPU (one thread), on the f32 checkpoint with the default staging */
START_TEST(test_gpu_loader_gbps) {
    const char *dir = model_dir("f32");
    sq_quant_scheme s = {.type = SQ_QUANT_NF4, .double_quant = true, .blocksize = 64};
    double best[2] = {0, 0};
    uint64_t bytes = 0;
    for (int rep = 0; rep < 3; rep++)
        for (int g = 0; g < 2; g++) {
            collected *c = calloc(1, sizeof *c);
            sq_load_stats stats;
            load(dir, g ? 0 : -1, &s, 0, c, &stats);
            if (stats.gbps > best[g]) best[g] = stats.gbps;
            bytes = stats.bytes_read;
            collected_free(c);
            free(c);
        }
    printf("GPU quantize in loader GB/s: %.3f (CPU loader, 1 thread: %.3f; %llu bytes, tiny "
           "preset f32, nf4 + double quant, page cache warm)\n", best[1], best[0],
           (unsigned long long)bytes);
    ck_assert_double_gt(best[1], 0);
}
END_TEST

int main(void) {
    int n_dev = sq_test_gpu_count("test_load_gpu");
    if (n_dev <= 0) return n_dev == 0 ? 77 : 1;
    g_root = sq_test_tmpdir("loadgpu");
    Suite *s = suite_create("load_gpu");
    TCase *tc = tcase_create("load_gpu");
    tcase_set_timeout(tc, 110);
    tcase_add_test(tc, test_gpu_loader_equals_cpu);
    tcase_add_test(tc, test_gpu_bad_device);
    tcase_add_test(tc, test_gpu_loader_gbps);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    if (sq_test_rmtree(g_root) != 0) fprintf(stderr, "could not remove %s\n", g_root);
    free(g_root);
    return failed ? 1 : 0;
}
