/* `shardq make-model --config FILE` (src/cli/cmd_make_model.c): any config.json, random
 * weights written piece by piece.  Checked: the folder has the config's shape (inspect reads it
 * back), the bytes are deterministic and equal whatever --shards, the peak RSS stays far below
 * one tensor's size (the old writer held a whole shard), and a model larger than the free space
 * is refused before anything is written. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "testutil.h"

#define SINGLETON SQ_SINGLETON_ENV

static char *g_dir;

static void setup(void) { g_dir = sq_test_tmpdir("mkcfg"); ck_assert_ptr_nonnull(g_dir); }
static void teardown(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    free(g_dir);
}

/* a Llama config with one big tensor: the embedding, vocab x hidden */
static void write_config(const char *path, int vocab, int hidden, int layers) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
             "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
             "\"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"vocab_size\": %d, "
             "\"max_position_embeddings\": 2048, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, "
             "\"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 1, "
             "\"eos_token_id\": 2}\n", hidden, hidden * 2, layers, vocab);
    ck_assert_int_eq(sq_test_write_file(path, json, strlen(json)), 0);
}

static char *run_ok(const char *cmd) {
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s\n%s", cmd, out);
    return out;
}

START_TEST(config_shape_deterministic_any_shards) {
    char cfg[4096], cmd[16384];
    snprintf(cfg, sizeof cfg, "%s/config.json", g_dir);
    write_config(cfg, 1000, 128, 3);
    snprintf(cmd, sizeof cmd, SINGLETON "'%s' make-model --config '%s' --out '%s/a' && "
             SINGLETON "'%s' make-model --config '%s' --out '%s/b' --shards 3 && "
             SINGLETON "'%s' inspect '%s/b' --json",
             SQ_SHARDQ_EXE, cfg, g_dir, SQ_SHARDQ_EXE, cfg, g_dir, SQ_SHARDQ_EXE, g_dir);
    char *out = run_ok(cmd);
    ck_assert_msg(strstr(out, "(random weights)"), "%s", out);
    ck_assert_msg(strstr(out, "\"hidden_size\": 128") || strstr(out, "\"hidden\": 128"), "%s", out);
    free(out);
    /* the same values whatever the sharding: dequantize-free check through `run` logits would be
     * slow; compare a tensor's bytes through inspect's data hash is not available, so compare
     * run's greedy tokens of the two folders */
    snprintf(cmd, sizeof cmd,
             SINGLETON "'%s' run '%s/a' --quant none --prompt-ids 1,2,3 --max-new-tokens 4 --ignore-eos --quiet --dump-logits '%s/a.bin' > /dev/null && "
             SINGLETON "'%s' run '%s/b' --quant none --prompt-ids 1,2,3 --max-new-tokens 4 --ignore-eos --quiet --dump-logits '%s/b.bin' > /dev/null && "
             "cmp '%s/a.bin' '%s/b.bin'",
             SQ_SHARDQ_EXE, g_dir, g_dir, SQ_SHARDQ_EXE, g_dir, g_dir, g_dir, g_dir);
    free(run_ok(cmd));
}
END_TEST

/* Runs shardq with argv (no shell), returns its max RSS in MiB; asserts exit 0. */
static long rss_of(char *const argv[]) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setenv("OMPI_MCA_ess_singleton_isolated", "1", 1);
        setenv("OMPI_MCA_pml", "ob1", 1);
        setenv("OMPI_MCA_btl", "self", 1);
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        execv(SQ_SHARDQ_EXE, argv);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    ck_assert_int_eq(wait4(pid, &status, 0, &ru), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed: %d", argv[1], status);
    return ru.ru_maxrss / 1024;
}

START_TEST(bounded_memory) {
    /* embedding 131072 x 1024 bf16 = 268 MB in one tensor */
    char cfg[4096], out[4096];
    snprintf(cfg, sizeof cfg, "%s/big.json", g_dir);
    snprintf(out, sizeof out, "%s/big", g_dir);
    write_config(cfg, 131072, 1024, 1);
    /* the baseline: the same binary doing almost nothing (a CUDA build maps ~200 MiB of
     * libraries at start) */
    char *base_argv[] = {SQ_SHARDQ_EXE, "topo", NULL};
    char *argv[] = {SQ_SHARDQ_EXE, "make-model", "--config", cfg, "--out", out, NULL};
    long base = rss_of(base_argv), rss = rss_of(argv);
    fprintf(stderr, "make-model of a 268 MB tensor: max RSS %ld MiB (%ld MiB at start)\n", rss, base);
    ck_assert_msg(rss - base < 120, "max RSS %ld MiB over a %ld MiB start: the 268 MB tensor was held whole",
                  rss, base);
}
END_TEST

START_TEST(refused_without_space) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, SINGLETON "'%s' make-model --config '%s/tests/configs/llama-3.1-405b.json' --out '%s/huge'",
             SQ_SHARDQ_EXE, SQ_SOURCE_DIR, g_dir);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1 && strstr(out, "not enough space"), "exit %d\n%s", rc, out);
    free(out);
    char path[4096];
    snprintf(path, sizeof path, "%s/huge", g_dir);
    ck_assert_msg(access(path, F_OK) != 0, "something was written");
}
END_TEST

int main(void) {
    Suite *s = suite_create("make_model");
    TCase *tc = tcase_create("config");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_shape_deterministic_any_shards);
    tcase_add_test(tc, bounded_memory);
    tcase_add_test(tc, refused_without_space);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
