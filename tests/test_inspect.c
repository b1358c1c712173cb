/* CLI-level tests of `shardq make-model` and `shardq inspect` (run as the real executable):
 * tiny models of the three families, single file and sharded, checked value by value through
 * `inspect --json`; determinism of make-model; refusing to overwrite; and bad input (missing
 * config field, unsupported architecture, corrupted safetensors, config / weights mismatch),
 * each ending with exit 1 and one line on stderr, also under mpirun -np 2. */
#include <check.h>
#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/safetensors.h"
#include "testutil.h"

static char *g_root;   /* one scratch folder for the whole binary (made in main) */

/* Runs `shardq ARGS`, returns the output (caller frees). */
static char *shardq(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *shardq(int *rc, const char *fmt, ...) {
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    /* singleton MPI start-up without the UCX probe: ~40 ms instead of ~400 ms a run */
    snprintf(cmd, sizeof cmd,
             "env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self '%s' %s",
             SQ_SHARDQ_EXE, args);
    char *out = sq_test_run(cmd, rc);
    ck_assert_ptr_nonnull(out);
    return out;
}

/* make-model into g_root/NAME (once per name); returns the path (static per call site use). */
static void make(const char *name, const char *flags, char *path, size_t n) {
    snprintf(path, n, "%s/%s", g_root, name);
    int rc = 0;
    char *out = shardq(&rc, "make-model --out '%s' --force %s", path, flags);
    ck_assert_msg(rc == 0, "make-model %s: rc %d: %s", flags, rc, out);
    free(out);
}

static cJSON *inspect_json(const char *dir) {
    int rc = 0;
    char *out = shardq(&rc, "inspect '%s' --json", dir);
    ck_assert_msg(rc == 0, "inspect %s: rc %d: %s", dir, rc, out);
    ck_assert_int_eq(sq_test_count_lines(out), 1);
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j != NULL, "not JSON: %s", out);
    free(out);
    return j;
}

static double num(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsNumber(v), "'%s' is not a number", key);
    return v->valuedouble;
}

static const char *str(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsString(v), "'%s' is not a string", key);
    return v->valuestring;
}

/* Expected figures, computed by hand in tests/test_meta.c (bytes_tiny_llama) and here for the
 * tied Qwen2: minus lm_head (40,960 bytes, 20,480 params), plus q/k/v biases 64+32+32 = 128
 * params (256 bytes bf16, dense in every scheme) per layer. */
static const struct {
    const char *family, *arch;
    uint64_t params, tensors, bf16, nf4, nf4_dq, fp4, int8, int8_zp;
} k_fam[] = {
    /* int8: 83,072 dense bytes + 181,248 codes + 4 x 2,400 rows (SCB); int8_zp + 2,400 zero points */
    {"llama", "LlamaForCausalLM", 222784, 39, 445568, 186816, 207104, 186816, 273920, 276320},
    {"mistral", "MistralForCausalLM", 222784, 39, 445568, 186816, 207104, 186816, 273920, 276320},
    {"qwen2", "Qwen2ForCausalLM", 202816, 50, 405632, 186816 - 40960 + 4 * 256,
     207104 - 40960 + 4 * 256, 186816 - 40960 + 4 * 256, 273920 - 40960 + 4 * 256,
     276320 - 40960 + 4 * 256},
};

START_TEST(inspect_json_three_families) {
    int f = _i;
    char hash[2][32];
    for (int sharded = 0; sharded < 2; sharded++) {
        char name[64], dir[1024], flags[128];
        snprintf(name, sizeof name, "%s-%d", k_fam[f].family, sharded);
        snprintf(flags, sizeof flags, "--family %s --shards %d", k_fam[f].family, sharded ? 3 : 1);
        make(name, flags, dir, sizeof dir);
        cJSON *j = inspect_json(dir);
        ck_assert_str_eq(str(j, "architecture"), k_fam[f].arch);
        ck_assert_str_eq(str(j, "model_type"), k_fam[f].family);
        ck_assert_str_eq(str(j, "dtype"), "bfloat16");
        ck_assert_uint_eq((uint64_t)num(j, "n_params"), k_fam[f].params);
        ck_assert_uint_eq((uint64_t)num(j, "n_tensors"), k_fam[f].tensors);
        ck_assert_int_eq((int)num(j, "n_layers"), 4);
        ck_assert_int_eq((int)num(j, "n_quantizable"), 28);
        ck_assert_int_eq((int)num(j, "hidden_size"), 64);
        ck_assert_int_eq((int)num(j, "n_kv_heads"), 2);
        ck_assert_int_eq((int)num(j, "n_ranks"), 1);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "bytes");
        ck_assert_uint_eq((uint64_t)num(b, "bf16"), k_fam[f].bf16);
        ck_assert_uint_eq((uint64_t)num(b, "nf4"), k_fam[f].nf4);
        ck_assert_uint_eq((uint64_t)num(b, "nf4_dq"), k_fam[f].nf4_dq);
        ck_assert_uint_eq((uint64_t)num(b, "fp4"), k_fam[f].fp4);
        ck_assert_uint_eq((uint64_t)num(b, "int8"), k_fam[f].int8);
        ck_assert_uint_eq((uint64_t)num(b, "int8_zp"), k_fam[f].int8_zp);
        ck_assert_uint_eq((uint64_t)num(j, "checkpoint_bytes"), k_fam[f].bf16);
        const cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files");
        ck_assert_int_eq(cJSON_GetArraySize(files), sharded ? 3 : 1);
        ck_assert_str_eq(cJSON_GetArrayItem(files, 0)->valuestring,
                         sharded ? "model-00001-of-00003.safetensors" : "model.safetensors");
        ck_assert_int_eq((int)strlen(str(j, "hash")), 16);
        snprintf(hash[sharded], sizeof hash[sharded], "%s", str(j, "hash"));
        cJSON_Delete(j);
    }
    /* the skeleton does not depend on how the files are cut */
    ck_assert_str_eq(hash[0], hash[1]);
}
END_TEST

START_TEST(inspect_text_and_verbose) {
    char dir[1024];
    make("text-llama", "--family llama", dir, sizeof dir);
    int rc = 0;
    char *out = shardq(&rc, "inspect '%s'", dir);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(out, "architecture  LlamaForCausalLM (llama), dtype bfloat16"), "%s", out);
    ck_assert(strstr(out, "parameters    222,784 in 39 tensors"));
    ck_assert(strstr(out, "files         1: model.safetensors"));
    ck_assert(strstr(out, "  bf16              445,568         0.42        16.00"));
    ck_assert(strstr(out, "  nf4_dq            207,104         0.20"));
    ck_assert(!strstr(out, "model.layers.0 "));
    free(out);
    out = shardq(&rc, "inspect '%s' --verbose", dir);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(out, "  model.layers.3               9        45,440         90,880"
                              "         26,192         31,264         26,192"), "%s", out);
    ck_assert(strstr(out, "  lm_head "));
    free(out);
    out = shardq(&rc, "inspect --help");
    ck_assert_int_eq(rc, 0);
    ck_assert(strstr(out, "--json"));
    free(out);
}
END_TEST

START_TEST(make_model_is_deterministic) {
    char a[1024], b[1024], c[1024], s[1024];
    make("det-a", "--family qwen2 --seed 42", a, sizeof a);
    make("det-b", "--family qwen2 --seed 42", b, sizeof b);
    make("det-c", "--family qwen2 --seed 43", c, sizeof c);
    make("det-s", "--family qwen2 --seed 42 --shards 2", s, sizeof s);
    char p[1200];
    size_t na = 0, nb = 0, nc = 0;
    snprintf(p, sizeof p, "%s/model.safetensors", a);
    char *fa = sq_test_read_file(p, &na);
    snprintf(p, sizeof p, "%s/model.safetensors", b);
    char *fb = sq_test_read_file(p, &nb);
    snprintf(p, sizeof p, "%s/model.safetensors", c);
    char *fc = sq_test_read_file(p, &nc);
    ck_assert(fa && fb && fc);
    ck_assert_uint_eq(na, nb);
    ck_assert(memcmp(fa, fb, na) == 0);
    ck_assert_uint_eq(na, nc);
    ck_assert(memcmp(fa, fc, na) != 0);
    free(fa);
    free(fb);
    free(fc);

    /* sharded: same tensor bytes; some decoder layer spans two files; index total_size */
    sq_st_model *one = NULL, *two = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_st_model_open(a, &one, &err), SQ_OK);
    ck_assert_msg(sq_st_model_open(s, &two, &err) == SQ_OK, "%s", err.msg);
    ck_assert_uint_eq(sq_st_model_n_files(two), 2);
    ck_assert_uint_eq(sq_st_model_n_tensors(one), sq_st_model_n_tensors(two));
    int split_layers = 0;
    for (int l = 0; l < 4; l++) {
        int seen[2] = {0, 0};
        for (size_t i = 0; i < sq_st_model_n_tensors(two); i++) {
            const sq_tensor_info *t = sq_st_model_tensor(two, i);
            char prefix[32];
            snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
            if (!strncmp(t->name, prefix, strlen(prefix))) seen[t->file_index] = 1;
        }
        split_layers += seen[0] && seen[1];
    }
    ck_assert_int_ge(split_layers, 1);
    for (size_t i = 0; i < sq_st_model_n_tensors(one); i++) {
        const sq_tensor_info *t1 = sq_st_model_tensor(one, i);
        const sq_tensor_info *t2 = sq_st_model_find(two, t1->name);
        ck_assert_ptr_nonnull(t2);
        ck_assert_uint_eq(t1->n_bytes, t2->n_bytes);
        ck_assert_int_eq(t1->dtype, SQ_DTYPE_BF16);
        ck_assert(memcmp(sq_st_model_data(one, t1), sq_st_model_data(two, t2), t1->n_bytes) == 0);
    }
    /* trained-model-like scales: weights ~ N(0, 0.02), norms ~ 1 */
    const sq_tensor_info *w = sq_st_model_find(one, "model.layers.1.mlp.up_proj.weight");
    const sq_tensor_info *nrm = sq_st_model_find(one, "model.layers.1.input_layernorm.weight");
    float *v = malloc(w->n_elements * sizeof *v);
    ck_assert_int_eq(sq_convert_to_f32(w->dtype, sq_st_model_data(one, w), v, w->n_elements, &err), SQ_OK);
    double s1 = 0, s2 = 0;
    for (uint64_t i = 0; i < w->n_elements; i++) s1 += v[i], s2 += (double)v[i] * v[i];
    double mean = s1 / (double)w->n_elements, sd = sqrt(s2 / (double)w->n_elements - mean * mean);
    ck_assert_msg(fabs(mean) < 0.002 && sd > 0.019 && sd < 0.021, "mean %g sd %g", mean, sd);
    ck_assert_int_eq(sq_convert_to_f32(nrm->dtype, sq_st_model_data(one, nrm), v, nrm->n_elements, &err), SQ_OK);
    for (uint64_t i = 0; i < nrm->n_elements; i++) ck_assert(v[i] > 0.9f && v[i] < 1.1f);
    free(v);
    sq_st_model_close(one);
    sq_st_model_close(two);

    snprintf(p, sizeof p, "%s/model.safetensors.index.json", s);
    char *idx = sq_test_read_file(p, NULL);
    ck_assert_msg(strstr(idx, "\"total_size\": 405632"), "%s", idx);
    free(idx);
    snprintf(p, sizeof p, "%s/generation_config.json", a);
    char *gen = sq_test_read_file(p, NULL);
    ck_assert(gen && strstr(gen, "\"eos_token_id\": 2"));
    free(gen);
}
END_TEST

START_TEST(make_model_flags) {
    char dir[1024];
    make("flags", "--family mistral --dtype f32 --tie-embeddings --preset small", dir, sizeof dir);
    cJSON *j = inspect_json(dir);
    ck_assert_str_eq(str(j, "dtype"), "float32");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings")));
    ck_assert_int_eq((int)num(j, "hidden_size"), 256);
    ck_assert_int_eq((int)num(j, "n_layers"), 6);
    /* checkpoint holds f32: 4 bytes per parameter */
    ck_assert_uint_eq((uint64_t)num(j, "checkpoint_bytes"), 4 * (uint64_t)num(j, "n_params"));
    cJSON_Delete(j);

    int rc = 0;
    /* an existing folder needs --force */
    char *out = shardq(&rc, "make-model --out '%s'", dir);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "already exists (use --force") && sq_test_count_lines(out) == 1, "%s", out);
    free(out);
    /* --force never replaces a folder that is not a model */
    char other[1200];
    snprintf(other, sizeof other, "%s/not-a-model", g_root);
    mkdir(other, 0755);
    char keep[1300];
    snprintf(keep, sizeof keep, "%s/precious.txt", other);
    ck_assert_int_eq(sq_test_write_file(keep, "x", 1), 0);
    out = shardq(&rc, "make-model --out '%s' --force", other);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "not a model folder"), "%s", out);
    ck_assert_int_eq(access(keep, F_OK), 0);
    free(out);
    /* usage errors: exit 2 */
    static const char *bad[] = {"make-model", "make-model --out x --dtype int8",
                                "make-model --out x --shards 0", "make-model --out x --seed -1",
                                "make-model --out x --bogus", "make-model --out", "inspect",
                                "inspect a b", "inspect --bogus x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        out = shardq(&rc, "%s", bad[i]);
        ck_assert_msg(rc == 2, "'%s': rc %d: %s", bad[i], rc, out);
        ck_assert_msg(sq_test_count_lines(out) == 1, "'%s': %s", bad[i], out);
        free(out);
    }
    /* bad values that parse: exit 1 with the reason */
    out = shardq(&rc, "make-model --out '%s/x' --family gpt2", g_root);
    ck_assert_int_eq(rc, 1);
    ck_assert(strstr(out, "unknown family 'gpt2'"));
    free(out);
    out = shardq(&rc, "make-model --out '%s/x' --preset huge", g_root);
    ck_assert_int_eq(rc, 1);
    ck_assert(strstr(out, "unknown preset 'huge'"));
    free(out);
    out = shardq(&rc, "make-model --out '%s/x' --shards 30", g_root);
    ck_assert_int_eq(rc, 1);
    ck_assert(strstr(out, "at most 19 shards"));
    free(out);
    snprintf(other, sizeof other, "%s/x", g_root);
    ck_assert_int_ne(access(other, F_OK), 0);   /* nothing half-written */
    /* missing parent folders are made; a trailing slash is fine */
    out = shardq(&rc, "make-model --out '%s/p/q/r/' --family qwen2", g_root);
    ck_assert_msg(rc == 0, "%s", out);
    free(out);
    snprintf(other, sizeof other, "%s/p/q/r/model.safetensors", g_root);
    ck_assert_int_eq(access(other, F_OK), 0);
}
END_TEST

/* ---- bad input: exit 1, one line naming the file (and tensor) and the cause ---------------- */

static void copy_model(const char *src, const char *dst) {
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    ck_assert_int_eq(system(cmd), 0);
}

/* Replaces the first occurrence of `from` with `to` in DIR/config.json. */
static void edit_config(const char *dir, const char *from, const char *to) {
    char p[1200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    size_t n = 0;
    char *s = sq_test_read_file(p, &n);
    char *at = strstr(s, from);
    ck_assert_msg(at != NULL, "'%s' not in config", from);
    size_t nf = strlen(from), nt = strlen(to);
    char *o = malloc(n - nf + nt + 1);
    size_t pre = (size_t)(at - s);
    memcpy(o, s, pre);
    memcpy(o + pre, to, nt);
    memcpy(o + pre + nt, at + nf, n - pre - nf);
    ck_assert_int_eq(sq_test_write_file(p, o, n - nf + nt), 0);
    free(o);
    free(s);
}

static void expect_failure(const char *dir, const char *must1, const char *must2) {
    int rc = 0;
    char *out = shardq(&rc, "inspect '%s'", dir);
    ck_assert_msg(rc == 1, "%s: rc %d: %s", dir, rc, out);
    ck_assert_msg(sq_test_count_lines(out) == 1, "not one line: %s", out);
    ck_assert_msg(!strncmp(out, "shardq: ", 8), "%s", out);
    ck_assert_msg(strstr(out, must1), "'%s' lacks '%s'", out, must1);
    if (must2) ck_assert_msg(strstr(out, must2), "'%s' lacks '%s'", out, must2);
    free(out);
    /* the same through --json: still one error line, no JSON on stdout */
    out = shardq(&rc, "inspect '%s' --json", dir);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(sq_test_count_lines(out), 1);
    ck_assert(strstr(out, must1));
    free(out);
}

START_TEST(bad_inputs) {
    char good[1024], sharded[1024], d[1200];
    make("bad-src", "--family llama", good, sizeof good);
    make("bad-src-sharded", "--family llama --shards 2", sharded, sizeof sharded);

    snprintf(d, sizeof d, "%s/bad-nohidden", g_root);
    copy_model(good, d);
    edit_config(d, "\"hidden_size\"", "\"hidden_sizes\"");
    expect_failure(d, "config.json: missing required field 'hidden_size'", NULL);

    snprintf(d, sizeof d, "%s/bad-arch", g_root);
    copy_model(good, d);
    edit_config(d, "LlamaForCausalLM", "GPT2LMHeadModel");
    expect_failure(d, "architecture 'GPT2LMHeadModel' is not supported",
                   "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM");

    snprintf(d, sizeof d, "%s/bad-heads", g_root);
    copy_model(good, d);
    edit_config(d, "\"num_attention_heads\":\t4", "\"num_attention_heads\":\t3");
    edit_config(d, "\"head_dim\":\t16,", "");
    expect_failure(d, "num_attention_heads (3) does not divide hidden_size (64)", NULL);

    /* corrupted safetensors: truncated data, then a header length past the end */
    snprintf(d, sizeof d, "%s/bad-trunc", g_root);
    copy_model(good, d);
    char p[1300];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    ck_assert_int_eq(truncate(p, 300000), 0);
    expect_failure(d, "model.safetensors", NULL);
    size_t n = 0;
    char *bytes = sq_test_read_file(p, &n);
    memset(bytes, 0x7f, 8);
    ck_assert_int_eq(sq_test_write_file(p, bytes, n), 0);
    free(bytes);
    expect_failure(d, "model.safetensors", NULL);
    ck_assert_int_eq(sq_test_write_file(p, "", 0), 0);
    expect_failure(d, "model.safetensors", NULL);

    /* the config and the weights disagree: the mismatched tensors are named */
    snprintf(d, sizeof d, "%s/bad-mismatch", g_root);
    copy_model(sharded, d);
    edit_config(d, "\"intermediate_size\":\t172", "\"intermediate_size\":\t176");
    expect_failure(d, "12 tensors do not match the config (LlamaForCausalLM, 4 layers)",
                   "mis-shaped 12: model.layers.0.mlp.gate_proj.weight [172,64] BF16, want [176,64]");

    /* a shard the index names is gone */
    snprintf(d, sizeof d, "%s/bad-shard", g_root);
    copy_model(sharded, d);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", d);
    ck_assert_int_eq(remove(p), 0);
    expect_failure(d, "model-00002-of-00002.safetensors", NULL);

    snprintf(d, sizeof d, "%s/does-not-exist", g_root);
    expect_failure(d, "does-not-exist: cannot open", NULL);
}
END_TEST

/* Under mpirun: the good case reports every rank; a bad model ends every rank with exit 1 and
 * rank 0's one-line message (no rank left waiting). */
START_TEST(inspect_under_mpirun) {
    char good[1024], d[1200];
    make("mpi-good", "--family qwen2 --shards 2", good, sizeof good);
    char cmd[4096];
    int rc = 0;
    snprintf(cmd, sizeof cmd, "timeout 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' inspect '%s'",
             SQ_MPIEXEC, SQ_SHARDQ_EXE, good);
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    ck_assert_msg(strstr(out, "identical on 2 ranks"), "%s", out);
    ck_assert_int_eq((int)(strstr(out, "architecture") - out) >= 0, 1);
    free(out);

    snprintf(d, sizeof d, "%s/mpi-bad", g_root);
    copy_model(good, d);
    edit_config(d, "\"vocab_size\"", "\"vocab\"");
    snprintf(cmd, sizeof cmd, "timeout 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' inspect '%s'",
             SQ_MPIEXEC, SQ_SHARDQ_EXE, d);
    out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
    ck_assert_msg(strstr(out, "shardq: rank 0: ") && strstr(out, "missing required field 'vocab_size'"),
                  "%s", out);
    /* mpirun adds its own banner about the non-zero exit; shardq's part is one line */
    int ours = 0;
    for (const char *q = out; (q = strstr(q, "shardq")) != NULL; q++) ours++;
    ck_assert_msg(ours == 1, "%s", out);
    free(out);
}
END_TEST

int main(void) {
    g_root = sq_test_tmpdir("inspect");
    if (!g_root) return 1;
    Suite *s = suite_create("inspect");
    TCase *tc = tcase_create("inspect");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, inspect_json_three_families, 0, 3);
    tcase_add_test(tc, inspect_text_and_verbose);
    tcase_add_test(tc, make_model_is_deterministic);
    tcase_add_test(tc, make_model_flags);
    tcase_add_test(tc, bad_inputs);
    tcase_add_test(tc, inspect_under_mpirun);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!failed && sq_test_rmtree(g_root) != 0) failed = 1;
    free(g_root);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
