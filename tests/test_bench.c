/* Tests of `shardq bench` through the executable, alone and under mpirun with 1 and 2 ranks:
 *  - the table: `#` header with the column names and a units line, one fixed-width row per
 *    micro-batch count with ranks / batch / prompt / new / M as asked, positive tokens/s, the
 *    bubble in [0, 1) and the model column equal to (p-1)/(M+p-1), then an OK footer;
 *  - --json: the same facts under fixed keys, token counts exact (prefill B x L, decode
 *    B x (N-1)), one row per M, ok and same_tokens true on the cpu backend;
 *  - --preset-model leaves nothing in $TMPDIR; a MODEL_DIR is used as given;
 *  - bad input: --batch 0, M above the batch, no model, both a folder and a preset (exit 2, one
 *    line); a missing folder and --backend cuda where CUDA or a GPU is missing (exit 1, one
 *    line), on 1 and 2 ranks. */
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "shardq/core.h"
#include "testutil.h"

static char *g_root;
static char g_model[1024], g_tmp[1024];
static int g_gpus;

#define SINGLETON SQ_SINGLETON_ENV

/* `shardq bench ARGS` alone (np 0) or under mpirun, TMPDIR = g_tmp, 60 s guard */
static char *bench_np(int np, int *rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *bench_np(int np, int *rc, const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    if (np == 0)
        snprintf(cmd, sizeof cmd, SINGLETON "TMPDIR='%s' timeout -s KILL 60 '%s' bench %s", g_tmp,
                 SQ_SHARDQ_EXE, args);
    else
        snprintf(cmd, sizeof cmd, "TMPDIR='%s' timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS
                 " -x TMPDIR -np %d '%s' bench %s", g_tmp, SQ_MPIEXEC, np, SQ_SHARDQ_EXE, args);
    char *out = sq_test_run(cmd, rc);
    ck_assert_ptr_nonnull(out);
    return out;
}

static int shardq_lines(const char *out) {
    int n = 0;
    for (const char *q = out; (q = strstr(q, "shardq")) != NULL; q++)
        if (q == out || q[-1] == '\n') n++;
    return n;
}

static int entries_in(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* ---- the table ---------------------------------------------------------------------------------- */

START_TEST(table_shape) {
    int np = _i;   /* 0: singleton, 1, 2 ranks */
    int p = np ? np : 1;
    int rc = 0;
    char *out = bench_np(np, &rc, "--preset-model tiny --batch 4 --prompt-len 8 --new-tokens 4 "
                                  "--micro-batches 1,2 --micro-batches 4");
    ck_assert_msg(rc == 0, "np %d: rc %d: %s", np, rc, out);
    int n_rows = 0, n_hdr = 0;
    bool names = false, units = false, footer = false;
    char *save = NULL;
    static const int want_m[3] = {1, 2, 4};
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            n_hdr++;
            if (strstr(line, "ranks") && strstr(line, "batch") && strstr(line, " M ") &&
                strstr(line, "prefill") && strstr(line, "decode") && strstr(line, "bubble") &&
                strstr(line, "model") && strstr(line, "load"))
                names = true;
            if (strstr(line, "(tok/s)") && strstr(line, "(s)")) units = true;
            if (!strncmp(line, "# OK: 3 configurations on ", 26)) {
                ck_assert_msg(n_rows == 3, "footer before the rows: %s", line);
                char want[64];
                snprintf(want, sizeof want, "on %d rank%s, the same tokens", p, p == 1 ? "" : "s");
                ck_assert_msg(strstr(line, want), "%s", line);
                footer = true;
            }
            if (!strncmp(line, "# shardq bench: ", 16))
                ck_assert_msg(strstr(line, "4 layers, hidden 64, vocab 320") && strstr(line, "[preset"), "%s", line);
            continue;
        }
        if (!strncmp(line, "shardq: ", 8)) continue;   /* a warning */
        int ranks, batch, plen, nnew, m;
        double pre, dec, bub, model, load;
        char extra;
        ck_assert_msg(sscanf(line, "%d %d %d %d %d %lf %lf %lf %lf %lf %c", &ranks, &batch, &plen, &nnew,
                             &m, &pre, &dec, &bub, &model, &load, &extra) == 10,
                      "not a row: '%s'", line);
        ck_assert_msg(n_rows < 3, "too many rows: %s", line);
        ck_assert_int_eq(ranks, p);
        ck_assert_int_eq(batch, 4);
        ck_assert_int_eq(plen, 8);
        ck_assert_int_eq(nnew, 4);
        ck_assert_int_eq(m, want_m[n_rows]);
        ck_assert_msg(pre > 0 && dec > 0 && load >= 0, "%s", line);
        ck_assert_msg(bub >= 0 && bub < 1, "%s", line);
        ck_assert_msg(fabs(model - (double)(p - 1) / (m + p - 1)) < 6e-4, "%s", line);
        /* fixed width: the rows line up with the header's columns */
        ck_assert_int_eq((int)strlen(line), 2 + 5 + 7 * 3 + 6 + 13 * 2 + 9 * 2 + 10);
        n_rows++;
    }
    ck_assert_msg(names && units && footer && n_rows == 3 && n_hdr >= 5, "np %d: table incomplete", np);
    free(out);
    ck_assert_int_eq(entries_in(g_tmp), 0);   /* the preset's folder is gone */
}
END_TEST

/* ---- --json ----------------------------------------------------------------------------------- */

static double num(const cJSON *j, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    ck_assert_msg(cJSON_IsNumber(v), "no number '%s'", k);
    return v->valuedouble;
}

START_TEST(json_keys) {
    int rc = 0;
    char *out = bench_np(2, &rc, "'%s' --quant none --batch 3 --prompt-len 5 --new-tokens 3 --micro-batches 1,3 "
                                 "--seed 7 --json --backend cpu", g_model);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    const char *brace = strstr(out, "{\"model\"");
    ck_assert_msg(brace != NULL, "%s", out);
    cJSON *j = cJSON_Parse(brace);
    ck_assert_msg(j != NULL, "not JSON: %s", brace);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "model")->valuestring, g_model);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "preset")));
    static const char *const strs[] = {"architecture", "backend", "backend_kind", "transport", "quant"};
    for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++)
        ck_assert_msg(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, strs[k])), "no '%s'", strs[k]);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "backend_kind")->valuestring, "cpu");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "transport")->valuestring, "mpi");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "quant")->valuestring, "none");
    ck_assert_int_eq((int)num(j, "n_ranks"), 2);
    ck_assert_int_eq((int)num(j, "batch"), 3);
    ck_assert_int_eq((int)num(j, "prompt_len"), 5);
    ck_assert_int_eq((int)num(j, "new_tokens"), 3);
    ck_assert_int_eq((int)num(j, "seed"), 7);
    ck_assert_int_eq((int)num(j, "vocab_size"), 320);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok")));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "same_tokens")));
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "rows");
    ck_assert_int_eq(cJSON_GetArraySize(rows), 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *r = cJSON_GetArrayItem(rows, i);
        int m = i ? 3 : 1;
        ck_assert_int_eq((int)num(r, "ranks"), 2);
        ck_assert_int_eq((int)num(r, "batch"), 3);
        ck_assert_int_eq((int)num(r, "micro_batches"), m);
        ck_assert_int_eq((int)num(r, "prefill_tokens"), 15);
        ck_assert_int_eq((int)num(r, "decode_tokens"), 6);
        ck_assert(num(r, "prefill_tok_s") > 0 && num(r, "decode_tok_s") > 0);
        ck_assert(num(r, "prefill_s") > 0 && num(r, "decode_s") > 0 && num(r, "load_s") >= 0);
        /* tokens/s = tokens / seconds, seconds printed to 1 us: allow that rounding */
        double tps = num(r, "prefill_tok_s"), ps = num(r, "prefill_s");
        ck_assert_msg(fabs(tps * ps - 15) < 15e-4 + tps * 6e-7, "%.3f tok/s x %.6f s != 15", tps, ps);
        ck_assert(num(r, "bubble") >= 0 && num(r, "bubble") < 1);
        ck_assert(num(r, "prefill_bubble") >= 0 && num(r, "decode_bubble") >= 0);
        ck_assert(fabs(num(r, "bubble_model") - 1.0 / (m + 1)) < 1e-6);
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "tokens_ok")));
    }
    /* bench's tokens are what `shardq run` gives on the same prompts (a check outside bench,
     * not bench reporting on itself): every row, prompt by prompt */
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(j, "prompts");
    ck_assert_int_eq(cJSON_GetArraySize(prompts), 3);
    char ids[1024] = "";
    size_t at = 0;
    for (int s = 0; s < 3; s++) {
        const cJSON *pr = cJSON_GetArrayItem(prompts, s);
        ck_assert_int_eq(cJSON_GetArraySize(pr), 5);
        for (int t = 0; t < 5; t++)
            at += (size_t)snprintf(ids + at, sizeof ids - at, "%s%d", t ? "," : s ? ";" : "",
                                   (int)cJSON_GetArrayItem(pr, t)->valuedouble);
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' run '%s' "
             "--quant none --backend cpu --prompt-ids '%s' --max-new-tokens 3 --ignore-eos --json",
             SQ_MPIEXEC, SQ_SHARDQ_EXE, g_model, ids);
    char *ro = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "shardq run: rc %d: %s", rc, ro);
    const cJSON *rj = cJSON_Parse(strstr(ro, "{\"model\""));
    ck_assert_ptr_nonnull(rj);
    char *run_tokens = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(rj, "tokens"));
    for (int i = 0; i < 2; i++) {
        char *bt = cJSON_PrintUnformatted(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rows, i), "tokens"));
        ck_assert_msg(!strcmp(bt, run_tokens), "bench row %d tokens %s, shardq run %s", i, bt, run_tokens);
        free(bt);
    }
    ck_assert_msg(strchr(run_tokens, '-') == NULL, "%s", run_tokens);
    free(run_tokens);
    cJSON_Delete((cJSON *)rj);
    free(ro);
    cJSON_Delete(j);
    free(out);
    ck_assert_int_eq(entries_in(g_tmp), 0);   /* a MODEL_DIR run makes no temporary folder */
}
END_TEST

/* ---- bad input ---------------------------------------------------------------------------------- */

static void expect(int np, int want_rc, const char *want, const char *args) {
    int rc = 0;
    double t0 = sq_now_s();
    char *out = bench_np(np, &rc, "%s", args);
    ck_assert_msg(rc == want_rc, "np %d '%s': rc %d: %s", np, args, rc, out);
    ck_assert_msg(sq_now_s() - t0 < 30, "'%s': took too long", args);
    ck_assert_msg(strstr(out, want), "'%s': want '%s' in: %s", args, want, out);
    ck_assert_msg(shardq_lines(out) == 1, "'%s': not one line: %s", args, out);
    ck_assert_msg(!strstr(out, "# ranks"), "'%s': a table after an error: %s", args, out);
    free(out);
}

/* --load-only: per-rank bytes that add up to the checkpoint's, the same total whatever the rank
 * count, a load time and a peak RSS for every rank; the text table's header and total line */
static cJSON *load_json(int np) {
    int rc = 0;
    char *out = bench_np(np, &rc, "'%s' --quant none --load-only --json --backend cpu", g_model);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    const char *brace = strstr(out, "{\"model\"");
    ck_assert_msg(brace != NULL, "%s", out);
    cJSON *j = cJSON_Parse(brace);
    ck_assert_msg(j != NULL, "not JSON: %s", brace);
    free(out);
    return j;
}

START_TEST(load_only) {
    cJSON *one = load_json(0), *two = load_json(2);
    double total1 = cJSON_GetObjectItemCaseSensitive(one, "bytes_read")->valuedouble;
    double total2 = cJSON_GetObjectItemCaseSensitive(two, "bytes_read")->valuedouble;
    ck_assert_msg(total1 > 0 && total1 == total2, "1 rank read %.0f B, 2 ranks %.0f B", total1, total2);
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(two, "ranks");
    ck_assert_int_eq(cJSON_GetArraySize(ranks), 2);
    double sum = 0;
    for (int i = 0; i < 2; i++) {
        const cJSON *r = cJSON_GetArrayItem(ranks, i);
        ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(r, "rank")->valueint, i);
        double b = cJSON_GetObjectItemCaseSensitive(r, "bytes_read")->valuedouble;
        ck_assert(b > 0);
        sum += b;
        ck_assert(cJSON_GetObjectItemCaseSensitive(r, "load_s")->valuedouble > 0);
        ck_assert(cJSON_GetObjectItemCaseSensitive(r, "max_rss_bytes")->valuedouble > 1e6);
    }
    ck_assert_msg(sum == total2, "ranks read %.0f B, total %.0f B", sum, total2);
    cJSON_Delete(one);
    cJSON_Delete(two);
    int rc = 0;
    char *out = bench_np(2, &rc, "'%s' --quant nf4 --load-only --backend cpu", g_model);
    ck_assert_msg(rc == 0 && strstr(out, "read+q") && strstr(out, "max_RSS") &&
                  strstr(out, "# total ") && strstr(out, "GB/s"), "%s", out);
    free(out);
}
END_TEST

START_TEST(bad_input) {
    char args[2048];
    for (int np = 0; np <= 2; np += 2) {
        expect(np, 2, "--batch must be 1..4096, not '0'", "--preset-model tiny --batch 0");
        expect(np, 2, "--micro-batches 8 exceeds --batch 4", "--preset-model tiny --batch 4 --micro-batches 2,8");
        expect(np, 2, "--micro-batches: '0' is not a count", "--preset-model tiny --micro-batches 1,0");
        expect(np, 2, "give MODEL_DIR or --preset-model tiny|small", "--batch 2");
        expect(np, 2, "--preset-model must be tiny or small, not 'huge'", "--preset-model huge");
        snprintf(args, sizeof args, "'%s' --preset-model tiny", g_model);
        expect(np, 2, "give MODEL_DIR or --preset-model, not both", args);
        snprintf(args, sizeof args, "'%s/nothing-here' --batch 2", g_root);
        expect(np, 1, "nothing-here", args);
        if (g_gpus == 0) {
#ifdef SHARDQ_HAVE_CUDA
            const char *want = "--backend cuda: no CUDA device";
#else
            const char *want = "--backend cuda: this shardq was built without CUDA";
#endif
            expect(np, 1, want, "--preset-model tiny --batch 2 --backend cuda");
        }
    }
    ck_assert_int_eq(entries_in(g_tmp), 0);
}
END_TEST

int main(void) {
#ifdef SHARDQ_HAVE_CUDA
    if (cudaGetDeviceCount(&g_gpus) != cudaSuccess) g_gpus = 0;
#endif
    g_root = sq_test_tmpdir("bench");
    if (!g_root) return 1;
    snprintf(g_model, sizeof g_model, "%s/tiny", g_root);
    snprintf(g_tmp, sizeof g_tmp, "%s/tmp", g_root);
    int rc = 0;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && " SINGLETON "'%s' make-model --out '%s' --seed 3", g_tmp,
             SQ_SHARDQ_EXE, g_model);
    char *out = sq_test_run(cmd, &rc);
    if (rc != 0) {
        fprintf(stderr, "fixture failed: %s\n", out ? out : "");
        return 1;
    }
    free(out);
    Suite *s = suite_create("bench");
    TCase *tc = tcase_create("bench");
    tcase_set_timeout(tc, 200);
    tcase_add_loop_test(tc, table_shape, 0, 3);
    tcase_add_test(tc, json_keys);
    tcase_add_test(tc, load_only);
    tcase_add_test(tc, bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!failed && sq_test_rmtree(g_root) != 0) failed = 1;
    free(g_root);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
