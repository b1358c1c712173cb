/* Tests of `shardq perplexity` (src/cli/cmd_perplexity.c over sq_run's score mode).
 *
 * The reference is computed here, in-process and without the pipeline: the whole make-model
 * folder as one stage (sq_runtime_load_stage), the text tokenized with the folder's tokenizer,
 * cut into chunks of ctx tokens (each chunk's first token replaced by BOS, since the Llama-3
 * tokenizer adds one), every chunk forwarded at once with logits for every row, and the second
 * half scored with a log-softmax in long double.  The CLI on 1, 2 and 3 ranks (micro-batches
 * 1..3) must print the same perplexity, equal to the reference to the printed digits; the
 * chunk, token and scored counts must be exact; bad input ends with one line and exit 1/2. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/checkpoint.h"
#include "shardq/config.h"
#include "shardq/meta.h"
#include "shardq/model.h"
#include "shardq/runtime.h"
#include "shardq/tokenizer.h"
#include "testutil.h"

#define CTX 32
#define SINGLETON SQ_SINGLETON_ENV

static char *g_dir, *g_model, *g_text;

static void make_text(const char *path) {
    static const char *words[] = {"the", "pipeline", "passes", "activations", "from", "rank",
                                  "to", "rank,", "and", "every", "stage", "holds", "its", "own",
                                  "layers", "in", "4-bit", "weights", "42", "times."};
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    uint32_t x = 12345;
    for (int i = 0; i < 900; i++) {
        x = x * 1103515245u + 12345u;
        fprintf(f, "%s%s", words[(x >> 16) % 20], (i % 17 == 16) ? "\n" : " ");
    }
    ck_assert_int_eq(fclose(f), 0);
}

static void setup_once(void) {
    g_dir = sq_test_tmpdir("ppl");
    ck_assert_ptr_nonnull(g_dir);
    size_t n = strlen(g_dir) + 64;
    g_model = malloc(n);
    g_text = malloc(n);
    snprintf(g_model, n, "%s/tiny", g_dir);
    snprintf(g_text, n, "%s/text.txt", g_dir);
    make_text(g_text);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             SINGLETON "'%s' make-model --preset tiny --family llama --out '%s' --tokenizer "
                       "'%s/tests/reference/tokenizers/llama3.json'",
             SQ_SHARDQ_EXE, g_model, SQ_SOURCE_DIR);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "make-model: %s", out);
    free(out);
}

static void teardown_once(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    free(g_dir);
    free(g_model);
    free(g_text);
}

typedef struct ref_ppl {
    double ppl;
    int64_t n_tokens, n_chunks, scored;
} ref_ppl;

/* The reference, in-process: one stage with every layer, each chunk forwarded whole. */
static ref_ppl reference(sq_quant_type type) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    sq_meta *m = NULL;
    ck_assert_msg(sq_runtime_open_model(g_model, &ck, &m, NULL, &err) == SQ_OK, "%s", err.msg);
    sq_tokenizer *tok = NULL;
    bool found = false;
    ck_assert_msg(sq_ckpt_tokenizer(ck, &tok, &found, &err) == SQ_OK && found, "%s", err.msg);
    size_t text_n = 0;
    char *text = sq_test_read_file(g_text, &text_n);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ck_assert(sq_tokenizer_encode(tok, text, text_n, true, &ids, &n_ids, &err) == SQ_OK);
    int32_t bos = sq_tokenizer_bos_id(tok);
    ck_assert_int_ge(bos, 0);
    ck_assert_int_eq(ids[0], bos);   /* the Llama-3 tokenizer adds BOS: chunks start with it */

    const sq_model_config *cfg = sq_meta_config(m);
    sq_backend *be = NULL;
    ck_assert(sq_backend_create_cpu(1, &be, &err) == SQ_OK);
    sq_runtime_stage_params p;
    memset(&p, 0, sizeof p);
    p.stage = (sq_load_stage_desc){0, (int)cfg->n_layers, true, true};
    p.scheme = (sq_quant_scheme){.type = type, .blocksize = 64, .dense_dtype = cfg->torch_dtype};
    p.max_seq = CTX;
    p.max_batch = 1;
    p.max_tokens = CTX;
    p.max_logit_rows = CTX;
    p.n_threads = 1;
    p.comm = MPI_COMM_NULL;
    sq_stage *s = NULL;
    ck_assert_msg(sq_runtime_load_stage(be, ck, m, &p, &s, NULL, &err) == SQ_OK, "%s", err.msg);
    int64_t V = cfg->vocab_size;
    float *logits = malloc((size_t)CTX * (size_t)V * sizeof *logits);
    ref_ppl r = {.n_tokens = (int64_t)n_ids, .n_chunks = (int64_t)n_ids / CTX};
    long double nll = 0;
    for (int64_t c = 0; c < r.n_chunks; c++) {
        int32_t chunk[CTX];
        memcpy(chunk, ids + c * CTX, sizeof chunk);
        chunk[0] = bos;
        sq_seq_span sp = {0, 0, CTX};
        sq_stage_input in = {.n_seqs = 1, .seqs = &sp, .token_ids = chunk, .all_logits = true};
        ck_assert_msg(sq_stage_forward(s, &in, &err) == SQ_OK, "%s", err.msg);
        ck_assert(sq_stage_read_logits(s, logits, CTX, &err) == SQ_OK);
        for (int j = CTX / 2; j < CTX - 1; j++) {
            const float *row = logits + (size_t)j * (size_t)V;
            long double mx = row[0], sum = 0;
            for (int64_t v = 1; v < V; v++)
                if (row[v] > mx) mx = row[v];
            for (int64_t v = 0; v < V; v++) sum += expl((long double)row[v] - mx);
            nll += logl(sum) + mx - (long double)row[chunk[j + 1]];
            r.scored++;
        }
    }
    r.ppl = (double)expl(nll / (long double)r.scored);
    free(logits);
    sq_stage_destroy(s);
    sq_backend_destroy(be);
    free(ids);
    free(text);
    sq_tokenizer_destroy(tok);
    sq_meta_destroy(m);
    sq_ckpt_close(ck);
    return r;
}

/* Runs the CLI (np 0: alone) and returns its parsed --json object. */
static cJSON *run_ppl(int np, const char *extra) {
    char cmd[4096];
    if (np == 0)
        snprintf(cmd, sizeof cmd, SINGLETON "'%s' perplexity '%s' --text-file '%s' --ctx %d --json --quiet %s",
                 SQ_SHARDQ_EXE, g_model, g_text, CTX, extra);
    else
        snprintf(cmd, sizeof cmd, "'%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' perplexity '%s' "
                 "--text-file '%s' --ctx %d --json --quiet %s",
                 SQ_MPIEXEC, np, SQ_SHARDQ_EXE, g_model, g_text, CTX, extra);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s\n%s", cmd, out);
    const char *brace = strchr(out, '{');
    ck_assert_msg(brace, "no JSON in: %s", out);
    cJSON *j = cJSON_Parse(brace);
    ck_assert_msg(j, "bad JSON: %s", out);
    free(out);
    return j;
}

static double num(const cJSON *j, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    ck_assert_msg(cJSON_IsNumber(v), "no number '%s'", k);
    return v->valuedouble;
}

START_TEST(matches_reference_on_1_2_3_ranks) {
    ref_ppl ref = reference(SQ_QUANT_NONE);
    ck_assert_int_ge(ref.n_chunks, 6);
    ck_assert_int_eq(ref.scored, ref.n_chunks * (CTX - 1 - CTX / 2));
    const struct { int np; const char *extra; } runs[] = {
        {0, "--quant none"}, {2, "--quant none"}, {2, "--quant none --micro-batches 2"},
        {3, "--quant none --micro-batches 3"}};
    double first = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        cJSON *j = run_ppl(runs[i].np, runs[i].extra);
        double ppl = num(j, "perplexity");
        ck_assert_int_eq((int64_t)num(j, "n_tokens"), ref.n_tokens);
        ck_assert_int_eq((int64_t)num(j, "n_chunks"), ref.n_chunks);
        ck_assert_int_eq((int64_t)num(j, "scored"), ref.scored);
        ck_assert_int_eq((int)num(j, "ctx"), CTX);
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "bos_added")));
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "chunks");
        ck_assert_int_eq(cJSON_GetArraySize(ch), (int)ref.n_chunks);
        ck_assert_double_eq_tol(cJSON_GetArrayItem(ch, (int)ref.n_chunks - 1)->valuedouble, ppl, 1e-6);
        /* the printed figure (6 decimals) equals the reference */
        ck_assert_msg(fabs(ppl - ref.ppl) <= 1e-6 * ref.ppl + 1e-6, "np %d %s: %.9f vs reference %.9f",
                      runs[i].np, runs[i].extra, ppl, ref.ppl);
        if (i == 0) first = ppl;
        ck_assert_msg(ppl == first, "np %d: %.6f differs from 1 rank's %.6f", runs[i].np, ppl, first);
        cJSON_Delete(j);
    }
}
END_TEST

START_TEST(nf4_matches_reference) {
    ref_ppl ref = reference(SQ_QUANT_NF4);
    ref_ppl dense = reference(SQ_QUANT_NONE);
    cJSON *j = run_ppl(2, "--quant nf4");
    double ppl = num(j, "perplexity");
    ck_assert_msg(fabs(ppl - ref.ppl) <= 1e-6 * ref.ppl + 1e-6, "%.9f vs %.9f", ppl, ref.ppl);
    ck_assert_msg(ppl != dense.ppl, "nf4 gave the dense figure");
    cJSON_Delete(j);
}
END_TEST

static void expect_fail(const char *args, int want_rc, const char *want) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, SINGLETON "'%s' perplexity %s", SQ_SHARDQ_EXE, args);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == want_rc, "%s: exit %d\n%s", args, rc, out);
    ck_assert_msg(strstr(out, want), "%s: no '%s' in:\n%s", args, want, out);
    free(out);
}

START_TEST(bad_input) {
    char a[4096];
    snprintf(a, sizeof a, "'%s'", g_model);
    expect_fail(a, 2, "no text: give --text-file");
    snprintf(a, sizeof a, "'%s' --text-file '%s' --ctx 2", g_model, g_text);
    expect_fail(a, 2, "--ctx must be");
    snprintf(a, sizeof a, "'%s' --text-file '%s/none.txt'", g_model, g_dir);
    expect_fail(a, 1, "none.txt: cannot open");
    snprintf(a, sizeof a, "'%s' --text-file '%s' --ctx 100000", g_model, g_text);
    expect_fail(a, 1, "fewer than one chunk");
    snprintf(a, sizeof a, "'%s' --text-file '%s' --ctx 32 --micro-batches 500", g_model, g_text);
    expect_fail(a, 1, "--micro-batches 500 for");
}
END_TEST

START_TEST(chunks_limit_and_text_output) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, SINGLETON "'%s' perplexity '%s' --text-file '%s' --ctx %d --chunks 2 --quant none --quiet",
             SQ_SHARDQ_EXE, g_model, g_text, CTX);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_msg(strstr(out, "2 chunks of 32"), "%s", out);
    ck_assert_msg(strstr(out, "[1]") && strstr(out, "[2]") && !strstr(out, "[3]"), "%s", out);
    ck_assert_msg(strstr(out, "Final estimate: PPL = "), "%s", out);
    free(out);
}
END_TEST

int main(void) {
    Suite *s = suite_create("perplexity");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 240);
    tcase_add_unchecked_fixture(tc, setup_once, teardown_once);
    tcase_add_test(tc, matches_reference_on_1_2_3_ranks);
    tcase_add_test(tc, nf4_matches_reference);
    tcase_add_test(tc, bad_input);
    tcase_add_test(tc, chunks_limit_and_text_output);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
