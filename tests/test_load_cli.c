/* The loader's whole-process tests (a fresh process each: the test binary re-executed, or the
 * shardq command), label unit:
 *   - quantize's max RSS: a fresh process quantizes a model whose share is several times the
 *     staging ring + its largest 4-bit weight; its high-water mark over the RSS before the call
 *     stays under that bound (it would not if the share were held until the end);
 *   - --trace on quantize, bench and run: one valid trace-event file (tests/trace_check.h) with
 *     the spans each command makes; an unwritable trace path fails the command with a message
 *     and leaves nothing. */
#include <check.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load_fixture.h"
#include "shardq/config.h"
#include "shardq/load.h"
#include "testutil.h"
#include "trace_check.h"

/* Allowance over the bound: glibc's arenas and the pool's thread stacks (see test_load.c). */
#define RSS_STAGING (256u << 10)
#define RSS_SLACK (2u << 20)

typedef struct rss_report {
    unsigned long long before_rss, before_hwm, hwm, share, staging, transient, src;
} rss_report;

typedef struct fixture {
    char *dir;
    sq_model_config cfg;
} fixture;

/* a llama preset (vocab_size > 0: that vocabulary) in a new folder, two files */
static void fixture_make(fixture *fx, const char *preset, int64_t vocab_size) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_preset(preset, SQ_ARCH_LLAMA, &fx->cfg, &err), SQ_OK);
    if (vocab_size > 0) fx->cfg.vocab_size = vocab_size;
    fx->dir = sq_test_tmpdir("loadcli");
    ck_assert_ptr_nonnull(fx->dir);
    int split[2] = {0, lf_layer_first_tensor(&fx->cfg, (int)fx->cfg.n_layers / 2)};
    ck_assert_int_eq(lf_make_model(fx->dir, &fx->cfg, 2, split), 0);
}

/* ---- max RSS of quantize: dense and 4-bit bytes go to the file as they come --------------------- */

static uint64_t status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0, v;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && sscanf(line + n, " %llu kB", &v) == 1) kb = v;
    if (f) fclose(f);
    return (uint64_t)kb * 1024;
}

/* A fresh process (singleton MPI): quantize DIR with RSS_STAGING; prints the rss_report line
 * with share = the shard's tensor bytes and transient = the largest 4-bit weight (held whole
 * until written) plus its float32 absmax. */
static int quantize_rss_child(const char *dir) {
    MPI_Init(NULL, NULL);
    sq_error err;
    sq_error_init(&err, 0);
    sq_model_config cfg;
    if (sq_config_load(dir, &cfg, &err)) return 3;
    uint64_t big = 0;
    sq_meta *m = NULL;
    if (sq_meta_create(&cfg, &m, &err)) return 3;
    sq_quant_scheme qs = sq_quant_scheme_default();
    qs.double_quant = true;
    for (int i = 0; i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        uint64_t b = t->quantizable ? sq_size_4bit_bytes(t->n_elements, &qs) +
                                          t->n_elements / 64 * 4 : 0;
        if (b > big) big = b;
    }
    sq_meta_destroy(m);
    char out[4200];
    snprintf(out, sizeof out, "%s-rss", dir);
    sq_quantize_options o;
    memset(&o, 0, sizeof o);
    o.model_dir = dir;
    o.out_dir = out;
    o.scheme = qs;
    o.scheme_given = true;
    o.compute_dtype = "bfloat16";
    o.n_threads = 2;
    o.staging_bytes = RSS_STAGING;
    o.force = true;
    uint64_t before_rss = status_kb("VmRSS:"), before_hwm = status_kb("VmHWM:");
    sq_quantize_result res;
    if (sq_quantize_run(MPI_COMM_WORLD, &o, &res, &err)) {
        fprintf(stderr, "quantize: %s\n", err.msg);
        return 3;
    }
    printf("before_rss %llu before_hwm %llu hwm %llu share %llu staging %llu transient %llu "
           "src %llu\n", (unsigned long long)before_rss, (unsigned long long)before_hwm,
           (unsigned long long)status_kb("VmHWM:"), (unsigned long long)res.total_size,
           (unsigned long long)RSS_STAGING, (unsigned long long)big,
           (unsigned long long)res.bytes_read);
    MPI_Finalize();
    return 0;
}

START_TEST(test_quantize_max_rss) {
#if defined(__SANITIZE_ADDRESS__)
    fprintf(stderr, "test_quantize_max_rss: skipped under AddressSanitizer (quarantine)\n");
    return;
#endif
    /* `small` with a vocabulary of 8192: 8 MB of dense embedding + lm_head, 2.4 MB of 4-bit
     * weights, so the 10 MB share is well above the bound */
    fixture fx;
    fixture_make(&fx, "small", 8192);
    char self[4096], cmd[9000];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(n, 0);
    self[n] = '\0';
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' --quantize-rss-child '%s'", self, fx.dir);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "child failed (%d): %s", rc, out);
    rss_report r;
    ck_assert_int_eq(sscanf(out, "before_rss %llu before_hwm %llu hwm %llu share %llu staging "
                                 "%llu transient %llu src %llu", &r.before_rss, &r.before_hwm,
                            &r.hwm, &r.share, &r.staging, &r.transient, &r.src), 7);
    fprintf(stderr, "quantize rss: %s", out);
    free(out);
    /* over the RSS before the call: the staging ring, one 4-bit weight, slack; never the share */
    unsigned long long extra = r.staging + r.transient + RSS_SLACK;
    ck_assert_msg(r.share > 3 * extra, "fixture too small: share %llu vs bound %llu", r.share, extra);
    ck_assert_msg(r.hwm <= (r.before_hwm > r.before_rss + extra ? r.before_hwm : r.before_rss + extra),
                  "quantize max RSS %llu > RSS before %llu + staging %llu + largest 4-bit weight "
                  "%llu + slack %u (the share is %llu)", r.hwm, r.before_rss, r.staging,
                  r.transient, RSS_SLACK, r.share);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s-rss'", fx.dir, fx.dir);
    ck_assert_int_eq(system(cmd), 0);
    free(fx.dir);
}
END_TEST

/* ---- --trace on the commands -------------------------------------------------------------- */

/* Runs cmd; the trace at path must pass the checker, hold one pid and every name in want. */
static void check_traced(const char *cmd, const char *path, const char *const *want, size_t n_want) {
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s: %s", cmd, out);
    free(out);
    size_t len = 0;
    char *json = sq_test_read_file(path, &len), why[512] = "";
    ck_assert_msg(json, "no trace at %s", path);
    trace_stats st;
    ck_assert_msg(trace_check(json, len, &st, why, sizeof why), "%s: %s", path, why);
    ck_assert_int_eq(st.n_pids, 1);
    for (size_t i = 0; i < n_want; i++)
        ck_assert_msg(strstr(st.names, want[i]), "%s: no %s in %s", path, want[i], st.names);
    free(json);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.", path);
    ck_assert_msg(access(tmp, F_OK) != 0, "temporary left");
}

START_TEST(test_cli_trace) {
    fixture fx;
    fixture_make(&fx, "tiny", 0);
    char cmd[9000], path[4200], out[4200];
    snprintf(out, sizeof out, "%s-q", fx.dir);
    snprintf(path, sizeof path, "%s-quantize.json", fx.dir);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' quantize '%s' --out '%s' --double-quant "
             "--staging-mib 1 --quiet --trace '%s'", SQ_SHARDQ_EXE, fx.dir, out, path);
    const char *const wq[] = {"|read|", "|quantize|", "|double quant|", "|write|"};
    check_traced(cmd, path, wq, 4);
    snprintf(path, sizeof path, "%s-bench.json", fx.dir);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' bench '%s' --load-only --backend cpu "
             "--threads 2 --trace '%s'", SQ_SHARDQ_EXE, fx.dir, path);
    const char *const wb[] = {"|read|", "|quantize|", "|repack/upload|", "|embed|", "|forward|",
                              "|sample|"};
    check_traced(cmd, path, wb, 6);
    snprintf(path, sizeof path, "%s-run.json", fx.dir);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' run '%s' --prompt-ids 1,2,3 "
             "--max-new-tokens 3 --ignore-eos --quiet --trace '%s'", SQ_SHARDQ_EXE, fx.dir, path);
    check_traced(cmd, path, wb, 6);
    /* a trace that cannot be written: the command fails and says where */
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' run '%s' --prompt-ids 1,2 --max-new-tokens 1 "
             "--quiet --trace '%s/no/such/dir/t.json'", SQ_SHARDQ_EXE, fx.dir, fx.dir);
    int rc = 0;
    char *o = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 1 && strstr(o, "cannot create trace"), "rc %d: %s", rc, o);
    free(o);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s'-*.json", fx.dir, out, fx.dir);
    ck_assert_int_eq(system(cmd), 0);
    free(fx.dir);
}
END_TEST

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--quantize-rss-child")) return quantize_rss_child(argv[2]);
    Suite *s = suite_create("load_cli");
    TCase *tc = tcase_create("load_cli");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_quantize_max_rss);
    tcase_add_test(tc, test_cli_trace);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
