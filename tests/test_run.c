/* Tests of `shardq run` end to end: the binary starts no MPI itself; it runs the shardq
 * executable alone (singleton) and under mpirun with 1..4 ranks, on make-model checkpoints of
 * two shapes (llama tiny: untied; qwen2 tiny: tied, q/k/v biases, GQA), and checks:
 *  - greedy tokens are identical for 1, 2, 3 and 4 ranks with --quant none and nf4, and the
 *    --dump-logits files are identical byte for byte at the same --micro-batches (and the
 *    tokens also across micro-batch counts); the dump's layout;
 *  - a pre-quantized folder from `shardq quantize` gives the same tokens and logits as nf4 on
 *    the fly;
 *  - bad input (id >= vocab, empty prompt, max-new-tokens beyond the plan's max_seq, a plan for
 *    another model or rank count, text without tokenizer.json) ends every rank with exit 1 and
 *    one shardq line, under a timeout;
 *  - a rank that hangs or is killed (SHARDQ_TEST_DIE_*) ends the job within seconds, named;
 *  - text in / out with a tokenizer.json attached by make-model --tokenizer: --prompt,
 *    --prompt-file, --chat, the JSON "text", and the streamed text equal to the decoded one. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shardq/core.h"
#include "testutil.h"

static char *g_root;
static char g_llama[1024], g_qwen[1024], g_text[1024], g_qwenq[1024];

#define SINGLETON SQ_SINGLETON_ENV

/* Runs a shell command line built from fmt; returns the output (caller frees). */
static char *sh(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *sh(int *rc, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *out = sq_test_run(cmd, rc);
    ck_assert_ptr_nonnull(out);
    return out;
}

/* `mpirun -np N shardq run ARGS` under a 60 s guard (np 0: singleton, no mpirun) */
static char *run_np(int np, int *rc, const char *args) {
    if (np == 0) return sh(rc, SINGLETON "timeout -s KILL 60 '%s' run %s", SQ_SHARDQ_EXE, args);
    return sh(rc, "timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' run %s", SQ_MPIEXEC,
              np, SQ_SHARDQ_EXE, args);
}

/* The last line that starts with '{' parsed as JSON (warnings may come before it). */
static cJSON *json_of(const char *out) {
    const char *p = strstr(out, "{\"model\"");
    ck_assert_msg(p != NULL, "no JSON in: %s", out);
    cJSON *j = cJSON_Parse(p);
    ck_assert_msg(j != NULL, "not JSON: %s", p);
    return j;
}

static char *tokens_of(const cJSON *j) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "tokens");
    ck_assert_msg(cJSON_IsArray(t), "no tokens");
    return cJSON_PrintUnformatted(t);
}

/* Counts how many of the output's lines carry shardq's own error prefix. */
static int shardq_lines(const char *out) {
    int n = 0;
    for (const char *q = out; (q = strstr(q, "shardq: ")) != NULL; q++) n++;
    return n;
}

/* ---- results do not depend on the number of ranks -------------------------------------------- */

static const char *const k_models[2] = {g_llama, g_qwen};
static const char *const k_quants[3] = {"none", "nf4", "int8"};

START_TEST(same_tokens_and_logits_on_1_to_4_ranks) {
    const char *model = k_models[_i / 3], *quant = k_quants[_i % 3];
    char *ref_tokens = NULL, *ref_dump = NULL;
    size_t ref_n = 0;
    for (int np = 1; np <= 4; np++) {
        char args[2048], dump[1200];
        snprintf(dump, sizeof dump, "%s/dump-%d-%d.bin", g_root, _i, np);
        snprintf(args, sizeof args,
                 "'%s' --quant %s --prompt-ids '3,7,11,5;9,4;13,8,6,12,10' --max-new-tokens 6 "
                 "--ignore-eos --micro-batches 1 --json --dump-logits '%s'", model, quant, dump);
        int rc = 0;
        char *out = run_np(np, &rc, args);
        ck_assert_msg(rc == 0, "np %d: rc %d: %s", np, rc, out);
        cJSON *j = json_of(out);
        ck_assert_int_eq((int)cJSON_GetObjectItemCaseSensitive(j, "n_ranks")->valuedouble, np);
        ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "quant")->valuestring, quant);
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "stages")), np);
        char *tok = tokens_of(j);
        size_t n = 0;
        char *d = sq_test_read_file(dump, &n);
        ck_assert_ptr_nonnull(d);
        /* layout: magic, n_seqs, vocab, n_tokens[3], 3 x 6 rows of vocab floats */
        uint32_t hdr[5];
        ck_assert_int_eq(memcmp(d, "SQLOGIT1", 8), 0);
        memcpy(hdr, d + 8, sizeof hdr);
        ck_assert_uint_eq(hdr[0], 3);
        ck_assert_uint_eq(hdr[2], 6);
        ck_assert_uint_eq(n, 8 + 4 * (2 + 3) + (size_t)18 * hdr[1] * 4);
        if (np == 1) {
            ref_tokens = tok;
            ref_dump = d;
            ref_n = n;
            /* the three sequences do not all say the same thing */
            ck_assert_msg(strstr(tok, "],[") != NULL, "%s", tok);
        } else {
            ck_assert_msg(!strcmp(tok, ref_tokens), "np %d: %s vs np 1: %s", np, tok, ref_tokens);
            ck_assert_msg(n == ref_n && !memcmp(d, ref_dump, n), "np %d: logits differ from np 1", np);
            free(tok);
            free(d);
        }
        cJSON_Delete(j);
        free(out);
    }
    /* another micro-batching on 2 ranks: the same tokens */
    char args[2048];
    snprintf(args, sizeof args, "'%s' --quant %s --prompt-ids '3,7,11,5;9,4;13,8,6,12,10' "
             "--max-new-tokens 6 --ignore-eos --micro-batches 3 --json", model, quant);
    int rc = 0;
    char *out = run_np(2, &rc, args);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    cJSON *j = json_of(out);
    char *tok = tokens_of(j);
    ck_assert_msg(!strcmp(tok, ref_tokens), "M=3: %s vs %s", tok, ref_tokens);
    ck_assert_int_eq((int)cJSON_GetObjectItemCaseSensitive(j, "n_micro_batches")->valuedouble, 3);
    free(tok);
    cJSON_Delete(j);
    free(out);
    free(ref_tokens);
    free(ref_dump);
}
END_TEST

/* Sampling end to end: --temperature / --top-k / --top-p / --seed give the same tokens on 1,
 * 2 and 3 ranks and with 1 or 3 micro-batches; they differ from greedy (a run that silently
 * ignored --temperature would not) and from another seed. */
static char *sampled_tokens(int np, int m, const char *extra) {
    char args[2048];
    snprintf(args, sizeof args, "'%s' --quant nf4 --prompt-ids '3,7,11,5;9,4;13,8,6,12,10' "
             "--max-new-tokens 8 --ignore-eos --micro-batches %d --json %s", g_llama, m, extra);
    int rc = 0;
    char *out = run_np(np, &rc, args);
    ck_assert_msg(rc == 0, "np %d M %d %s: rc %d: %s", np, m, extra, rc, out);
    cJSON *j = json_of(out);
    ck_assert_int_eq((int)cJSON_GetObjectItemCaseSensitive(j, "n_ranks")->valuedouble, np);
    ck_assert_int_eq((int)cJSON_GetObjectItemCaseSensitive(j, "n_micro_batches")->valuedouble, m);
    char *tok = tokens_of(j);
    cJSON_Delete(j);
    free(out);
    return tok;
}

START_TEST(sampling_same_on_any_ranks_and_micro_batches) {
    const char *samp = "--temperature 1.5 --top-k 40 --top-p 0.95 --seed 7";
    char *ref = sampled_tokens(1, 1, samp);
    static const int runs[][2] = {{2, 1}, {3, 1}, {1, 3}, {2, 3}, {3, 3}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        char *tok = sampled_tokens(runs[r][0], runs[r][1], samp);
        ck_assert_msg(!strcmp(tok, ref), "np %d M %d: %s vs np 1 M 1: %s", runs[r][0], runs[r][1],
                      tok, ref);
        free(tok);
    }
    char *greedy = sampled_tokens(2, 1, "");
    ck_assert_msg(strcmp(greedy, ref) != 0, "sampled tokens equal greedy: %s", ref);
    char *other = sampled_tokens(2, 1, "--temperature 1.5 --top-k 40 --top-p 0.95 --seed 8");
    ck_assert_msg(strcmp(other, ref) != 0, "seed 8 gave seed 7's tokens: %s", ref);
    free(greedy);
    free(other);
    free(ref);
}
END_TEST

/* A folder written by `shardq quantize` runs as stored: same tokens, same logits as on the fly. */
START_TEST(prequantized_equals_on_the_fly) {
    char a[1200], b[1200], args[3000];
    snprintf(a, sizeof a, "%s/pq-a.bin", g_root);
    snprintf(b, sizeof b, "%s/pq-b.bin", g_root);
    int rc = 0;
    snprintf(args, sizeof args, "'%s' --prompt-ids '3,7,11;9,4' --max-new-tokens 5 --ignore-eos "
             "--json --dump-logits '%s'", g_qwen, a);
    char *o1 = run_np(2, &rc, args);
    ck_assert_msg(rc == 0, "%s", o1);
    snprintf(args, sizeof args, "'%s' --prompt-ids '3,7,11;9,4' --max-new-tokens 5 --ignore-eos "
             "--json --dump-logits '%s'", g_qwenq, b);
    char *o2 = run_np(3, &rc, args);
    ck_assert_msg(rc == 0, "%s", o2);
    cJSON *j1 = json_of(o1), *j2 = json_of(o2);
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j1, "prequantized")));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j2, "prequantized")));
    char *t1 = tokens_of(j1), *t2 = tokens_of(j2);
    ck_assert_str_eq(t1, t2);
    size_t n1 = 0, n2 = 0;
    char *d1 = sq_test_read_file(a, &n1), *d2 = sq_test_read_file(b, &n2);
    ck_assert(d1 && d2 && n1 == n2 && !memcmp(d1, d2, n1));
    free(d1); free(d2); free(t1); free(t2);
    cJSON_Delete(j1); cJSON_Delete(j2);
    free(o1); free(o2);
    /* a different --quant than stored: one line; --quant none dequantizes and runs */
    snprintf(args, sizeof args, "'%s' --prompt-ids 3,7 --quant fp4", g_qwenq);
    char *o3 = run_np(2, &rc, args);
    ck_assert_msg(rc == 1 && strstr(o3, "a bitsandbytes 4-bit checkpoint (nf4") && shardq_lines(o3) == 1, "%s", o3);
    free(o3);
    snprintf(args, sizeof args, "'%s' --prompt-ids 3,7 --quant none --quiet", g_qwenq);
    char *o4 = run_np(0, &rc, args);
    ck_assert_msg(rc == 0 && strstr(o4, "seq 0:"), "%s", o4);
    free(o4);
}
END_TEST

/* ---- bad input: one line, exit 1, no rank left waiting ------------------------------------------ */

static void expect_bad(int np, const char *args, const char *want) {
    int rc = 0;
    double t0 = sq_now_s();
    char *out = run_np(np, &rc, args);
    ck_assert_msg(rc == 1, "%s: rc %d: %s", args, rc, out);
    ck_assert_msg(sq_now_s() - t0 < 30, "%s: took too long", args);
    ck_assert_msg(strstr(out, want), "%s: want '%s' in: %s", args, want, out);
    ck_assert_msg(shardq_lines(out) == 1, "%s: not one line: %s", args, out);
    free(out);
}

START_TEST(bad_input_one_line) {
    char args[3000], plan2[1200], plan3[1200], planq[1200];
    snprintf(plan2, sizeof plan2, "%s/plan2.json", g_root);
    snprintf(plan3, sizeof plan3, "%s/plan3.json", g_root);
    snprintf(planq, sizeof planq, "%s/planq.json", g_root);
    int rc = 0;
    char *o = sh(&rc, "timeout 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' plan '%s' --discover --max-seq 32 "
                 "--batch 2 --out '%s' && timeout 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np 3 '%s' plan '%s' "
                 "--discover --out '%s' && " SINGLETON "'%s' plan '%s' --discover --out '%s'",
                 SQ_MPIEXEC, SQ_SHARDQ_EXE, g_llama, plan2, SQ_MPIEXEC, SQ_SHARDQ_EXE, g_llama, plan3,
                 SQ_SHARDQ_EXE, g_qwen, planq);
    ck_assert_msg(rc == 0, "%s", o);
    free(o);
    /* the good case with the plan file first */
    snprintf(args, sizeof args, "'%s' --plan '%s' --prompt-ids '1,5;7' --max-new-tokens 8 --json", g_llama, plan2);
    o = run_np(2, &rc, args);
    ck_assert_msg(rc == 0 && strstr(o, "\"plan_file\": true"), "%s", o);
    free(o);

    snprintf(args, sizeof args, "'%s' --prompt-ids '1,2,320'", g_llama);
    expect_bad(2, args, "sequence 0: token id 320 at position 2 is outside the model's vocabulary [0, 320)");
    snprintf(args, sizeof args, "'%s' --prompt-ids '1,2;'", g_llama);
    expect_bad(2, args, "sequence 1: empty prompt");
    snprintf(args, sizeof args, "'%s' --prompt-ids '-1'", g_llama);
    expect_bad(2, args, "token id -1 at position 0");
    snprintf(args, sizeof args, "'%s' --plan '%s' --prompt-ids '1,5' --max-new-tokens 40", g_llama, plan2);
    expect_bad(2, args, "prompt of 2 tokens + max-new-tokens 40 = 42 exceeds the plan's max_seq 32");
    snprintf(args, sizeof args, "'%s' --prompt-ids '1,5' --max-new-tokens 300", g_llama);
    expect_bad(2, args, "exceeds max_position_embeddings 256");
    snprintf(args, sizeof args, "'%s' --plan '%s' --prompt-ids '1,5'", g_llama, plan3);
    expect_bad(2, args, "the plan has 3 stages but 2 ranks were started");
    snprintf(args, sizeof args, "'%s' --plan '%s' --prompt-ids '1,5'", g_llama, planq);
    expect_bad(1, args, "the plan is for another model");
    snprintf(args, sizeof args, "'%s' --prompt 'hello'", g_llama);
    expect_bad(2, args, "tokenizer.json: not found");
    snprintf(args, sizeof args, "'%s' --prompt-ids '1;2' --micro-batches 3", g_llama);
    expect_bad(2, args, "3 micro-batches for 2 sequences");
    snprintf(args, sizeof args, "'%s/nothing-here' --prompt-ids 1", g_root);
    expect_bad(2, args, "nothing-here");
    /* usage errors: exit 2 */
    o = run_np(0, &rc, "--prompt-ids 1");
    ck_assert_msg(rc == 2 && strstr(o, "no MODEL_DIR"), "%s", o);
    free(o);
    snprintf(args, sizeof args, "'%s' --prompt-ids '1,x'", g_llama);
    expect_bad(0, args, "--prompt-ids: 'x' is not a token id");
}
END_TEST

/* --activations: int8 logits the same bytes on 1 and 2 ranks and not f32's (the int8 path ran);
 * f32 is the default's bytes; a bad value is a usage error. */
START_TEST(int8_activations) {
    char *dumps[4] = {NULL};
    size_t sizes[4] = {0};
    static const char *const acts[4] = {"--activations int8", "--activations int8",
                                        "--activations f32", ""};
    static const int nps[4] = {1, 2, 1, 1};
    for (int i = 0; i < 4; i++) {
        char args[4096], dump[1200];
        snprintf(dump, sizeof dump, "%s/dump-act-%d.bin", g_root, i);
        snprintf(args, sizeof args,
                 "'%s' --quant nf4 --prompt-ids '3,7,11,5;9,4' --max-new-tokens 4 --ignore-eos "
                 "--json --dump-logits '%s' %s", g_llama, dump, acts[i]);
        int rc = 0;
        char *out = run_np(nps[i], &rc, args);
        ck_assert_msg(rc == 0, "%s: rc %d: %s", args, rc, out);
        ck_assert_msg((strstr(out, "int8 activations") != NULL) == (i < 2), "%s: %s", args, out);
        free(out);
        dumps[i] = sq_test_read_file(dump, &sizes[i]);
        ck_assert_ptr_nonnull(dumps[i]);
    }
    ck_assert(sizes[0] == sizes[1] && memcmp(dumps[0], dumps[1], sizes[0]) == 0);
    ck_assert(sizes[2] == sizes[3] && memcmp(dumps[2], dumps[3], sizes[2]) == 0);
    ck_assert(sizes[0] == sizes[2] && memcmp(dumps[0], dumps[2], sizes[0]) != 0);
    for (int i = 0; i < 4; i++) free(dumps[i]);
    int rc = 0;
    char args[1200];
    snprintf(args, sizeof args, "'%s' --prompt-ids 1 --activations int4", g_llama);
    char *o = run_np(0, &rc, args);
    ck_assert_msg(rc == 2 && strstr(o, "--activations must be int8 or f32, not 'int4'"), "%s", o);
    free(o);
}
END_TEST

/* ---- a rank that dies ------------------------------------------------------------------------- */

static char *run_die(const char *mode, int rank, int *rc, double *dt) {
    double t0 = sq_now_s();
    char *out = sh(rc, "SHARDQ_TEST_DIE_RANK=%d SHARDQ_TEST_DIE_STEP=2 SHARDQ_TEST_DIE_MODE=%s "
                   "timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -x SHARDQ_TEST_DIE_RANK "
                   "-x SHARDQ_TEST_DIE_STEP -x SHARDQ_TEST_DIE_MODE -np 3 '%s' run '%s' "
                   "--prompt-ids '1,2;3;4' --max-new-tokens 8 --ignore-eos --timeout 1.5 --quiet",
                   rank, mode, SQ_MPIEXEC, SQ_SHARDQ_EXE, g_llama);
    *dt = sq_now_s() - t0;
    return out;
}

START_TEST(dead_rank_ends_the_job_named) {
    int rc = 0;
    double dt = 0;
    char *out = run_die("hang", 1, &rc, &dt);
    ck_assert_msg(rc != 0 && rc != 137 && dt < 15, "rc %d, %.1f s: %s", rc, dt, out);
    ck_assert_msg(strstr(out, "shardq: rank ") && strstr(out, "rank 1 ") && strstr(out, "stopped responding"),
                  "%s", out);
    free(out);
    out = run_die("hang", 0, &rc, &dt);   /* rank 0 itself: rank 1 reports */
    ck_assert_msg(rc != 0 && rc != 137 && dt < 15, "rc %d, %.1f s: %s", rc, dt, out);
    ck_assert_msg(strstr(out, "shardq: rank 1: rank 0 stopped responding"), "%s", out);
    free(out);
    out = run_die("kill", 2, &rc, &dt);
    ck_assert_msg(rc != 0 && dt < 15, "rc %d, %.1f s: %s", rc, dt, out);
    ck_assert_msg(strstr(out, "rank 2 with PID") || strstr(out, "rank 2 stopped responding"), "%s", out);
    free(out);
}
END_TEST

/* ---- a rank stuck in bring-up or teardown ------------------------------------------------------ */

/* A rank that stops inside a collective step (as a rank stuck in a device call would) ends the
 * job within the stall limit, with one line naming a rank and the step; without the watchdog
 * (--stall-timeout 0) the same job would hang until `timeout` kills it. */
static char *run_stall(const char *phase, int rank, double *dt, int *rc) {
    double t0 = sq_now_s();
    char *out = sh(rc, "SHARDQ_TEST_STALL_RANK=%d SHARDQ_TEST_STALL_PHASE='%s' "
                   "timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -x SHARDQ_TEST_STALL_RANK "
                   "-x SHARDQ_TEST_STALL_PHASE -np 2 '%s' run '%s' --prompt-ids '1,2;3' "
                   "--max-new-tokens 2 --quiet --stall-timeout 1.5",
                   rank, phase, SQ_MPIEXEC, SQ_SHARDQ_EXE, g_llama);
    *dt = sq_now_s() - t0;
    return out;
}

START_TEST(stuck_rank_ends_the_job_named) {
    static const char *const phases[] = {"planning", "bringing up the transport", "tearing down"};
    for (int i = 0; i < 3; i++) {
        int rc = 0;
        double dt = 0;
        char *out = run_stall(phases[i], i % 2, &dt, &rc);
        char want[128];
        snprintf(want, sizeof want, ": no progress for 1.5 s while %s: ending the job", phases[i]);
        ck_assert_msg(rc != 0 && rc != 137 && dt < 30, "%s: rc %d, %.1f s: %s", phases[i], rc, dt, out);
        ck_assert_msg(strstr(out, want) && strstr(out, "shardq: rank "), "%s: %s", phases[i], out);
        free(out);
    }
}
END_TEST

START_TEST(stall_timeout_flag_checked) {
    int rc = 0;
    char args[1200];
    snprintf(args, sizeof args, "'%s' --prompt-ids 1 --stall-timeout -3", g_llama);
    char *o = run_np(0, &rc, args);
    ck_assert_msg(rc == 2 && strstr(o, "--stall-timeout must be a number of seconds (0: off), not '-3'"), "%s", o);
    free(o);
}
END_TEST

/* ---- text in, text out ------------------------------------------------------------------------- */

START_TEST(text_prompts) {
    char args[3000], pf[1200];
    int rc = 0;
    snprintf(args, sizeof args, "'%s' --prompt 'Hello, world' --prompt 'héllo 世界' --max-new-tokens 5 --ignore-eos --json",
             g_text);
    char *o = run_np(2, &rc, args);
    ck_assert_msg(rc == 0, "%s", o);
    cJSON *j = json_of(o);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    ck_assert_msg(cJSON_IsArray(text) && cJSON_GetArraySize(text) == 2, "%s", o);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "tokens"), 0)), 5);
    cJSON_Delete(j);
    free(o);

    /* one sequence streams; the streamed line equals the decoded text, and a prompt file
     * gives the same as the same text on the command line */
    snprintf(pf, sizeof pf, "%s/prompt.txt", g_root);
    ck_assert_int_eq(sq_test_write_file(pf, "Hello, world\n", 13), 0);
    snprintf(args, sizeof args, "'%s' --prompt-file '%s' --max-new-tokens 6 --ignore-eos --json", g_text, pf);
    o = run_np(0, &rc, args);
    ck_assert_msg(rc == 0, "%s", o);
    j = json_of(o);
    char *t_file = tokens_of(j);
    char *want = strdup(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "text"), 0)->valuestring);
    cJSON_Delete(j);
    free(o);
    snprintf(args, sizeof args, "'%s' --prompt 'Hello, world' --max-new-tokens 6 --ignore-eos --quiet", g_text);
    o = run_np(2, &rc, args);
    ck_assert_msg(rc == 0, "%s", o);
    ck_assert_msg(!strncmp(o, want, strlen(want)) && o[strlen(want)] == '\n', "streamed '%s', want '%s'", o, want);
    free(o);
    free(want);
    snprintf(args, sizeof args, "'%s' --prompt 'Hello, world' --max-new-tokens 6 --ignore-eos --json", g_text);
    o = run_np(1, &rc, args);
    j = json_of(o);
    char *t_arg = tokens_of(j);
    ck_assert_str_eq(t_file, t_arg);
    cJSON_Delete(j);
    free(o);
    free(t_file);
    free(t_arg);

    /* --chat: the prompt grows by the Llama-3 header tokens */
    snprintf(args, sizeof args, "'%s' --prompt 'Hi' --chat --system 'Be brief' --max-new-tokens 3 --json", g_text);
    o = run_np(0, &rc, args);
    ck_assert_msg(rc == 0, "%s", o);
    j = json_of(o);
    ck_assert_int_gt((int)cJSON_GetObjectItemCaseSensitive(j, "prefill_tokens")->valuedouble, 10);
    cJSON_Delete(j);
    free(o);
    snprintf(args, sizeof args, "'%s' --prompt-ids 1 --chat", g_text);
    o = run_np(0, &rc, args);
    ck_assert_msg(rc == 2 && strstr(o, "--chat formats text prompts"), "%s", o);
    free(o);
    /* invalid UTF-8 in a prompt: one line */
    snprintf(args, sizeof args, "'%s' --prompt \"$(printf 'a\\377b')\"", g_text);
    expect_bad(0, args, "UTF-8");
}
END_TEST

/* ---- human output -------------------------------------------------------------------------------- */

START_TEST(human_table) {
    char args[2048];
    int rc = 0;
    snprintf(args, sizeof args, "'%s' --prompt-ids '1,5;7' --max-new-tokens 4 --ignore-eos", g_llama);
    char *o = run_np(2, &rc, args);
    ck_assert_msg(rc == 0, "%s", o);
    ck_assert_msg(strstr(o, "seq 0: 4 tokens (length):") && strstr(o, "seq 1: 4 tokens (length):") &&
                  strstr(o, "# prefill") && strstr(o, "tok/s") && strstr(o, "# decode") &&
                  strstr(o, "model (p-1)/(m+p-1) = 0.333 with p = 2 stages, m = 2 micro-batches"),
                  "%s", o);
    free(o);
}
END_TEST

int main(void) {
    g_root = sq_test_tmpdir("run");
    if (!g_root) return 1;
    snprintf(g_llama, sizeof g_llama, "%s/llama", g_root);
    snprintf(g_qwen, sizeof g_qwen, "%s/qwen", g_root);
    snprintf(g_text, sizeof g_text, "%s/text", g_root);
    snprintf(g_qwenq, sizeof g_qwenq, "%s/qwen-nf4", g_root);
    int rc = 0;
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             SINGLETON "'%s' make-model --out '%s' --family llama && "
             SINGLETON "'%s' make-model --out '%s' --family qwen2 --shards 2 && "
             SINGLETON "'%s' make-model --out '%s' --tokenizer '%s/tests/reference/tokenizers/llama3.json' && "
             "'%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' quantize '%s' --out '%s' --quiet",
             SQ_SHARDQ_EXE, g_llama, SQ_SHARDQ_EXE, g_qwen, SQ_SHARDQ_EXE, g_text, SQ_SOURCE_DIR,
             SQ_MPIEXEC, SQ_SHARDQ_EXE, g_qwen, g_qwenq);
    char *out = sq_test_run(cmd, &rc);
    if (rc != 0) {
        fprintf(stderr, "fixtures failed: %s\n", out ? out : "");
        return 1;
    }
    free(out);
    Suite *s = suite_create("run");
    TCase *tc = tcase_create("run");
    tcase_set_timeout(tc, 240);
    tcase_add_loop_test(tc, same_tokens_and_logits_on_1_to_4_ranks, 0, 6);
    tcase_add_test(tc, prequantized_equals_on_the_fly);
    tcase_add_test(tc, bad_input_one_line);
    tcase_add_test(tc, dead_rank_ends_the_job_named);
    tcase_add_test(tc, stuck_rank_ends_the_job_named);
    tcase_add_test(tc, stall_timeout_flag_checked);
    tcase_add_test(tc, text_prompts);
    tcase_add_test(tc, human_table);
    tcase_add_test(tc, int8_activations);
    suite_add_tcase(s, tc);
    /* its own case, so CK_RUN_CASE=sampling runs it alone (tests/mutate.sh) */
    TCase *ts = tcase_create("sampling");
    tcase_set_timeout(ts, 240);
    tcase_add_test(ts, sampling_same_on_any_ranks_and_micro_batches);
    suite_add_tcase(s, ts);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!failed && sq_test_rmtree(g_root) != 0) failed = 1;
    free(g_root);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
