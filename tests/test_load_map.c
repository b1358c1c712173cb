/* test_load_map (fixture: load_stage_fixture.h, a tiny llama whose embedding and lm_head are
 * [320 x 64] bf16, 40 KiB each): dense tensors kept as read-only mapped windows of the
 * checkpoint file (sq_load_options.dense_map) instead of copies into fresh memory: the loader
 * hands a large dense tensor over as a mapping that outlives the loader's file descriptors and
 * the checkpoint itself; a truncated file still fails with the truncation error; the CPU
 * backend keeps such a mapping as a weight's storage (the same Linear output as a copied
 * weight, the file unlinked under it) and refuses data not aligned to its element size (copied,
 * the mapping left to the caller); `shardq run` maps a large embedding and lm_head and gives
 * the same logits on 1 and 2 ranks. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "load_stage_fixture.h"
#include "shardq/backend.h"
#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "shardq/safetensors.h"
#include "testutil.h"

/* Slots of 1 KiB (staging 4 KiB): the embedding and lm_head are larger than a slot, so with
 * dense_map they come mapped; the norms (128 bytes) are read into buffers as before.  Their
 * bytes equal the checkpoint's after the loader has closed its files and after the checkpoint
 * itself is closed; without dense_map nothing is mapped. */
static void load_whole(bool dense_map) {
    fixture fx;
    fixture_make(&fx, "load_map", "tiny", false);
    sq_error err;
    sq_error_init(&err, -1);
    sq_pool *pool = NULL;
    ck_assert_int_eq(sq_pool_create(2, &pool, &err), SQ_OK);
    sq_load_options o = sq_load_options_default();
    o.pool = pool;
    o.staging_bytes = 4096;
    o.dense_map = dense_map;
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = (int)fx.cfg.n_layers,
                              .has_embed = true, .has_head = true};
    collected *c = calloc(1, sizeof *c);
    ck_assert_msg(sq_load_stage(fx.st, fx.meta, &all, &o, collect, c, NULL, &err) == SQ_OK, "%s",
                  err.msg);
    sq_pool_destroy(pool);
    /* the expected bytes of every dense item, copied before the checkpoint is closed */
    void *want[128] = {0};
    int n_mapped = 0;
    for (int i = 0; i < c->n; i++) {
        const sq_load_item *it = &c->items[i];
        if (it->is_4bit) continue;
        const sq_ckpt_tensor *t = sq_ckpt_find(fx.st, it->spec->name);
        ck_assert_uint_eq(it->n_bytes, t->n_bytes);
        want[i] = malloc(t->n_bytes);
        memcpy(want[i], sq_ckpt_data(fx.st, t), t->n_bytes);
        const bool big = t->n_bytes > 1024;
        if (dense_map && big) {
            ck_assert_msg(it->map && it->map_len >= it->n_bytes, "%s not mapped", it->spec->name);
            ck_assert((uint8_t *)it->data >= (uint8_t *)it->map &&
                      (uint8_t *)it->data + ((it->n_bytes + 63) & ~UINT64_C(63)) <=
                          (uint8_t *)it->map + it->map_len);
            ck_assert_uint_eq((uintptr_t)it->data % 2, 0);
            n_mapped++;
        } else {
            ck_assert_ptr_null(it->map);
            ck_assert_uint_eq(it->map_len, 0);
        }
    }
    ck_assert_int_eq(n_mapped, dense_map ? 2 : 0);   /* embed_tokens and lm_head */
    sq_ckpt_close(fx.st);   /* its mapping and descriptors gone: the items' windows stay */
    fx.st = NULL;
    for (int i = 0; i < c->n; i++) {
        if (!want[i]) continue;
        ck_assert_msg(!memcmp(c->items[i].data, want[i], c->items[i].n_bytes), "%s differs",
                      c->items[i].spec->name);
        free(want[i]);
    }
    collected_free(c);
    free(c);
    fixture_free(&fx);
}

/* The pages this process has mapped of files under dir (the Rss of those mappings in
 * /proc/self/smaps), in bytes: the checkpoint's, not the code pages a first call faults in. */
static uint64_t rss_under(const char *dir) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[4608];
    unsigned long long kb = 0, total = 0;
    bool ours = false;
    const size_t n = strlen(dir);
    while (f && fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strchr(line, ':') && line[0] != ' ' &&
            sscanf(line, "%*s %*s %*s %*s %llu", &kb) == 1) {   /* a mapping's header */
            const char *path = strchr(line, '/');
            ours = path && !strncmp(path, dir, n);
        } else if (ours && sscanf(line, "Rss: %llu kB", &kb) == 1) {
            total += kb;
        }
    }
    if (f) fclose(f);
    return (uint64_t)total * 1024;
}

typedef struct watched {
    collected c;
    const char *dir;
    uint64_t peak;   /* the most of dir's files mapped when an item was handed over */
} watched;

static sq_status collect_watched(void *user, sq_load_item *it, sq_error *err) {
    watched *w = user;
    uint64_t r = rss_under(w->dir);
    if (r > w->peak) w->peak = r;
    return collect(&w->c, it, err);
}

/* Pieces of 8 MiB (staging 32 MiB over 4 slots): windows of one mapping per file instead of a
 * mapping each.  The model: 3 layers of hidden 1024 / intermediate 4096 (the MLP weights are
 * 8 MiB each), 98 MiB in all.  While loading, what the process maps stays within the ring's
 * windows and the 2 MiB regions around them (4 x (8 + 4) MiB, half the files); after, nothing
 * stays mapped; and the bytes equal a whole-tensor quantization. */
START_TEST(test_pieces_in_file_windows) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_model_config cfg;
    ck_assert_int_eq(sq_config_preset("small", SQ_ARCH_LLAMA, &cfg, &err), SQ_OK);
    cfg.hidden_size = 1024;
    cfg.intermediate_size = 4096;
    cfg.n_layers = 3;
    cfg.n_heads = cfg.n_kv_heads = 8;
    cfg.head_dim = 128;
    cfg.vocab_size = 512;
    fixture fx;
    fixture_make_config(&fx, "load_win", &cfg);
    sq_pool *pool = NULL;
    ck_assert_int_eq(sq_pool_create(2, &pool, &err), SQ_OK);
    sq_load_options o = sq_load_options_default();
    o.pool = pool;
    o.scheme = (sq_quant_scheme){.type = SQ_QUANT_NF4, .blocksize = 64,
                                 .dense_dtype = SQ_DTYPE_BF16};
    o.staging_bytes = 32u << 20;
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = 3, .has_embed = true,
                              .has_head = true};
    watched *w = calloc(1, sizeof *w);
    w->dir = fx.dir;
    const uint64_t before = rss_under(fx.dir);
    ck_assert_int_eq(sq_load_stage(fx.st, fx.meta, &all, &o, collect_watched, w, NULL, &err),
                     SQ_OK);
    const uint64_t after = rss_under(fx.dir);
    const uint64_t bound = 4 * ((8u << 20) + (4u << 20));
    ck_assert_uint_ge(sq_ckpt_data_bytes(fx.st), 2 * bound);
    ck_assert_msg(w->peak <= before + bound, "mapped %llu bytes of the checkpoint while loading "
                  "(bound %llu)", (unsigned long long)(w->peak - before), (unsigned long long)bound);
    ck_assert_msg(after <= before, "%llu bytes still mapped after the load",
                  (unsigned long long)(after - before));
    int n_q = 0;
    for (int i = 0; i < w->c.n; i++) {
        sq_load_item *it = &w->c.items[i];
        if (!it->is_4bit) continue;
        n_q++;
        const sq_ckpt_tensor *info = sq_ckpt_find(fx.st, it->spec->name);
        sq_qtensor ref;
        ck_assert_int_eq(sq_quant_4bit_from(SQ_DTYPE_BF16, sq_ckpt_data(fx.st, info),
                                            it->spec->shape[0], it->spec->shape[1], &o.scheme,
                                            pool, &ref, &err), SQ_OK);
        ck_assert_msg(!memcmp(it->q.packed, ref.packed, (ref.n_elements + 1) / 2) &&
                          !memcmp(it->q.absmax, ref.absmax, ref.n_blocks * 4),
                      "%s differs from a whole-tensor quantization", it->spec->name);
        sq_qtensor_free(&ref);
    }
    ck_assert_int_eq(n_q, 3 * 7);
    collected_free(&w->c);
    free(w);
    sq_pool_destroy(pool);
    fixture_free(&fx);
}
END_TEST

START_TEST(test_dense_mapped_outlives_loader) { load_whole(true); }
END_TEST
START_TEST(test_dense_copied_without_option) { load_whole(false); }
END_TEST

/* lm_head cut short after its headers were read: the window is refused (it would run past the
 * file) and the copy gives the truncation error naming the tensor, never a SIGBUS. */
START_TEST(test_dense_map_truncated) {
    fixture fx;
    fixture_make(&fx, "load_map", "tiny", false);
    const sq_ckpt_tensor *t = sq_ckpt_find(fx.st, "lm_head.weight");
    ck_assert_int_eq(t->file_index, 1);
    const char *path2 = sq_ckpt_file_path(fx.st, 1);
    ck_assert_int_eq(truncate(path2, (off_t)(t->offset + (9 << 10))), 0);
    sq_error err;
    sq_error_init(&err, -1);
    sq_pool *pool = NULL;
    ck_assert_int_eq(sq_pool_create(2, &pool, &err), SQ_OK);
    sq_load_options o = sq_load_options_default();
    o.pool = pool;
    o.staging_bytes = 4096;
    o.dense_map = true;
    sq_load_stage_desc s1 = {.first_layer = 2, .n_layers = 2, .has_head = true};
    collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(sq_load_stage(fx.st, fx.meta, &s1, &o, collect, c, NULL, &err), SQ_ERR_IO);
    ck_assert_str_eq(err.file, path2);
    ck_assert_str_eq(err.tensor, "lm_head.weight");
    ck_assert_msg(strstr(err.msg, "truncated or replaced after its header was read"), "%s", err.msg);
    collected_free(c);
    free(c);
    sq_pool_destroy(pool);
    fixture_free(&fx);
}
END_TEST

/* ---- the CPU backend keeps a mapping --------------------------------------------------------- */

static float *linear(sq_backend *be, const sq_weight *w, const float *x, int64_t R, int64_t N,
                     int64_t K) {
    sq_error err;
    sq_error_init(&err, -1);
    void *x_d = NULL, *y_d = NULL;
    ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(R * K * 4), &x_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(R * N * 4), &y_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_upload(be, x_d, x, (uint64_t)(R * K * 4), &err), SQ_OK);
    ck_assert_int_eq(sq_backend_linear(be, x_d, R, w, NULL, y_d, &err), SQ_OK);
    float *y = malloc((size_t)(R * N * 4));
    ck_assert_int_eq(sq_backend_download(be, y, y_d, (uint64_t)(R * N * 4), &err), SQ_OK);
    sq_backend_free(be, x_d);
    sq_backend_free(be, y_d);
    return y;
}

/* A BF16 [19 x 40] weight at byte 4098 of a file (element-aligned, not 64-aligned) and an F32
 * one at byte 10 (not aligned to 4): the first is kept in the mapping (given up, the file
 * unlinked and closed, the Linear bits of a copied weight), the second is copied and its
 * mapping stays the caller's. */
START_TEST(test_backend_keeps_mapping) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_backend *be = NULL;
    ck_assert_int_eq(sq_backend_create_cpu(2, &be, &err), SQ_OK);
    sq_backend_limits lim = {.max_rows = 16, .max_width = 256, .max_vocab = 256, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    const int64_t N = 19, K = 40, R = 3;
    float wf[19 * 40], x[3 * 40];
    uint64_t u = 7;
    for (int i = 0; i < N * K; i++) {
        u = u * 6364136223846793005ull + 1442695040888963407ull;
        wf[i] = (float)(u >> 40) * 0x1p-24f - 0.5f;
    }
    for (int i = 0; i < R * K; i++) x[i] = (float)(i % 7) - 3.0f;
    uint16_t wb[19 * 40];
    sq_f32_to_bf16(wf, wb, (size_t)(N * K));
    char *dir = sq_test_tmpdir("load_map_be");
    char path[4200];
    snprintf(path, sizeof path, "%s/w.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, wb, sizeof wb, 4098), (ssize_t)sizeof wb);
    ck_assert_int_eq(pwrite(fd, wf, sizeof wf, 10), (ssize_t)sizeof wf);
    ck_assert_int_eq(ftruncate(fd, 8192), 0);
    const size_t len = 8192;
    void *map_b = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    void *map_f = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    ck_assert(map_b != MAP_FAILED && map_f != MAP_FAILED);
    close(fd);
    unlink(path);
    rmdir(dir);
    free(dir);

    sq_weight *copied = NULL, *kept = NULL, *f32 = NULL;
    ck_assert_int_eq(sq_backend_weight_dense(be, "w", SQ_DTYPE_BF16, wb, N, K, &copied, &err), SQ_OK);
    void *give = map_b;
    ck_assert_int_eq(sq_backend_weight_dense_map(be, "w", SQ_DTYPE_BF16, (uint8_t *)map_b + 4098,
                                                 &give, len, N, K, &kept, &err), SQ_OK);
    ck_assert_ptr_null(give);   /* the weight owns the mapping now */
    ck_assert_uint_eq(sq_weight_bytes(kept), sq_weight_bytes(copied));
    float *y0 = linear(be, copied, x, R, N, K), *y1 = linear(be, kept, x, R, N, K);
    ck_assert(!memcmp(y0, y1, sizeof(float) * (size_t)(R * N)));
    free(y0);
    free(y1);

    give = map_f;
    ck_assert_int_eq(sq_backend_weight_dense_map(be, "w", SQ_DTYPE_F32, (uint8_t *)map_f + 10,
                                                 &give, len, N, K, &f32, &err), SQ_OK);
    ck_assert_ptr_eq(give, map_f);   /* misaligned: copied, still the caller's */
    ck_assert_int_eq(munmap(map_f, len), 0);   /* the copy does not need it */
    sq_weight *f32_ref = NULL;
    ck_assert_int_eq(sq_backend_weight_dense(be, "w", SQ_DTYPE_F32, wf, N, K, &f32_ref, &err), SQ_OK);
    y0 = linear(be, f32_ref, x, R, N, K);
    y1 = linear(be, f32, x, R, N, K);
    ck_assert(!memcmp(y0, y1, sizeof(float) * (size_t)(R * N)));
    free(y0);
    free(y1);

    /* data outside the mapping is refused */
    void *other = map_b;   /* not mapped any more, only compared */
    sq_weight *bad = NULL;
    ck_assert_int_eq(sq_backend_weight_dense_map(be, "w", SQ_DTYPE_BF16, wb, &other, len, N, K,
                                                 &bad, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(bad);
    ck_assert_ptr_eq(other, map_b);
    sq_backend_weight_free(be, copied);
    sq_backend_weight_free(be, kept);   /* unmaps */
    sq_backend_weight_free(be, f32);
    sq_backend_weight_free(be, f32_ref);
    sq_backend_destroy(be);
}
END_TEST


/* ---- `shardq run`: the embedding and lm_head (20 MB, larger than a staging slot) mapped -------- */

/* A 1-layer model whose embedding and lm_head [40000 x 256] bf16 are larger than the default
 * staging slot (16 MiB): run's load maps both (the trace's "map" spans name them), the CPU
 * backend keeps the windows, and generation on 1 and 2 ranks gives the same logits (rank 0
 * holds the mapped embedding, the last rank the mapped lm_head). */
START_TEST(test_run_mapped_embedding) {
    char *dir = sq_test_tmpdir("load_map_run");
    char cfg[4200], model[4200], trace[4200], l1[4200], l2[4200], cmd[20000];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(model, sizeof model, "%s/m", dir);
    snprintf(trace, sizeof trace, "%s/trace.json", dir);
    snprintf(l1, sizeof l1, "%s/l1.bin", dir);
    snprintf(l2, sizeof l2, "%s/l2.bin", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 256,"
          " \"intermediate_size\": 704, \"num_hidden_layers\": 2, \"num_attention_heads\": 8,"
          " \"num_key_value_heads\": 2, \"head_dim\": 32, \"vocab_size\": 40000, \"rms_norm_eps\": 1e-05,"
          " \"rope_theta\": 10000.0, \"max_position_embeddings\": 256, \"tie_word_embeddings\": false,"
          " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 1, \"eos_token_id\": 2}", f);
    ck_assert_int_eq(fclose(f), 0);
    int rc = 0;
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' make-model --out '%s' --config '%s'",
             SQ_SHARDQ_EXE, model, cfg);
    char *o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    free(o);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' run '%s' --prompt-ids '1,2,3;40,41' "
             "--max-new-tokens 4 --threads 2 --quiet --trace '%s' --dump-logits '%s'",
             SQ_SHARDQ_EXE, model, trace, l1);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    free(o);
    size_t tn = 0;
    char *t = sq_test_read_file(trace, &tn);
    ck_assert_ptr_nonnull(t);
    ck_assert_msg(strstr(t, "\"map\"") && strstr(t, "model.embed_tokens.weight") &&
                      strstr(t, "lm_head.weight"), "no map spans in the trace");
    int n_map = 0;
    for (const char *p = t; (p = strstr(p, "\"name\":\"map\"")); p++) n_map++;
    ck_assert_int_eq(n_map, 2);
    free(t);
    snprintf(cmd, sizeof cmd, "'%s' --oversubscribe -np 2 '%s' run '%s' --prompt-ids '1,2,3;40,41' "
             "--max-new-tokens 4 --threads 1 --quiet --dump-logits '%s'",
             SQ_MPIEXEC, SQ_SHARDQ_EXE, model, l2);
    o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", o);
    free(o);
    size_t n1 = 0, n2 = 0;
    char *a = sq_test_read_file(l1, &n1), *b = sq_test_read_file(l2, &n2);
    ck_assert(a && b && n1 > 0 && n1 == n2);
    ck_assert_msg(!memcmp(a, b, n1), "1 rank and 2 ranks differ");
    free(a);
    free(b);
    ck_assert_int_eq(sq_test_rmtree(dir), 0);
    free(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("load_map");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pieces_in_file_windows);
    tcase_add_test(tc, test_dense_mapped_outlives_loader);
    tcase_add_test(tc, test_dense_copied_without_option);
    tcase_add_test(tc, test_dense_map_truncated);
    tcase_add_test(tc, test_backend_keeps_mapping);
    tcase_add_test(tc, test_run_mapped_embedding);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
