/* Tests of the tokenizer module against vectors from the tokenizers library
 * (tests/reference/gen_tokenizers.py -> tests/reference/tokenizers/NAME.{json,expected}):
 * exact ids with and without special tokens, exact decode with and without skip_special,
 * round trips, streaming decode, chat formats, and the refusals (bad JSON, unsupported
 * types named, invalid UTF-8).  Also a speed bound on a 100 kB prompt. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/tokenizer.h"
#include "testutil.h"

#define REF_DIR SQ_SOURCE_DIR "/tests/reference/tokenizers/"

/* ---- the expected-file reader ------------------------------------------------------------ */

typedef struct tcase {
    int index;
    char *text, *dec1, *dec0;
    size_t text_n, dec1_n, dec0_n;
    int32_t *ids1, *ids0;
    size_t n1, n0;
    int rt;
} tcase;

static char *unhex(const char *h, size_t *n) {
    size_t len = strcspn(h, "\n");
    char *out = malloc(len / 2 + 1);
    for (size_t i = 0; i + 1 < len; i += 2) {
        unsigned v;
        sscanf(h + i, "%2x", &v);
        out[i / 2] = (char)v;
    }
    out[len / 2] = '\0';
    *n = len / 2;
    return out;
}

static int32_t *read_ids(const char *p, size_t *n) {
    char *end;
    long cnt = strtol(p, &end, 10);
    int32_t *ids = malloc(((size_t)cnt + 1) * sizeof *ids);
    for (long i = 0; i < cnt; i++) ids[i] = (int32_t)strtol(end, &end, 10);
    *n = (size_t)cnt;
    return ids;
}

static tcase *load_cases(const char *name, size_t *n_cases) {
    char path[512];
    snprintf(path, sizeof path, REF_DIR "%s.expected", name);
    char *buf = sq_test_read_file(path, NULL);
    ck_assert_msg(buf != NULL, "cannot read %s", path);
    size_t cap = 256, n = 0;
    tcase *cs = calloc(cap, sizeof *cs);
    for (char *line = buf; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (!strncmp(line, "case ", 5)) {
            ck_assert(n < cap);
            cs[n++].index = atoi(line + 5);
        } else if (n && !strncmp(line, "text ", 5)) {
            cs[n - 1].text = unhex(line + 5, &cs[n - 1].text_n);
        } else if (n && !strncmp(line, "ids1 ", 5)) {
            cs[n - 1].ids1 = read_ids(line + 5, &cs[n - 1].n1);
        } else if (n && !strncmp(line, "ids0 ", 5)) {
            cs[n - 1].ids0 = read_ids(line + 5, &cs[n - 1].n0);
        } else if (n && !strncmp(line, "dec1 ", 5)) {
            cs[n - 1].dec1 = unhex(line + 5, &cs[n - 1].dec1_n);
        } else if (n && !strncmp(line, "dec0 ", 5)) {
            const char *src = line[5] == '=' ? NULL : line + 5;
            if (src) {
                cs[n - 1].dec0 = unhex(src, &cs[n - 1].dec0_n);
            } else { /* same as dec1 */
                ck_assert_ptr_nonnull(cs[n - 1].dec1);
                cs[n - 1].dec0_n = cs[n - 1].dec1_n;
                cs[n - 1].dec0 = malloc(cs[n - 1].dec1_n + 1);
                memcpy(cs[n - 1].dec0, cs[n - 1].dec1, cs[n - 1].dec1_n + 1);
            }
        } else if (n && !strncmp(line, "rt ", 3)) {
            cs[n - 1].rt = atoi(line + 3);
        }
        line = next;
    }
    free(buf);
    *n_cases = n;
    return cs;
}

static void free_cases(tcase *cs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(cs[i].text);
        free(cs[i].dec1);
        free(cs[i].dec0);
        free(cs[i].ids1);
        free(cs[i].ids0);
    }
    free(cs);
}

static sq_tokenizer *load_ref(const char *name) {
    char path[512];
    snprintf(path, sizeof path, REF_DIR "%s.json", name);
    sq_tokenizer *tok = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status s = sq_tokenizer_load(path, &tok, &err);
    ck_assert_msg(s == SQ_OK, "%s: %s", path, err.msg);
    return tok;
}

static char *ids_str(const int32_t *ids, size_t n) {
    size_t cap = 16 + 12 * n;
    char *s = malloc(cap), *p = s;
    *p = '\0';
    for (size_t i = 0; i < n && i < 64; i++) p += sprintf(p, "%d ", ids[i]);
    return s;
}

static void check_ids(const char *name, const tcase *c, bool add, const int32_t *got,
                      size_t n_got) {
    const int32_t *want = add ? c->ids1 : c->ids0;
    size_t n_want = add ? c->n1 : c->n0;
    bool same = n_got == n_want && (n_want == 0 || !memcmp(got, want, n_want * sizeof *got));
    if (!same) {
        char *g = ids_str(got, n_got), *w = ids_str(want, n_want);
        ck_abort_msg("%s case %d (add_special=%d): got %zu ids [%s], want %zu [%s]", name,
                     c->index, add, n_got, g, n_want, w);
    }
}

static void check_text(const char *name, const tcase *c, const char *what, const char *got,
                       size_t n_got, const char *want, size_t n_want) {
    ck_assert_msg(n_got == n_want && !memcmp(got, want, n_want),
                  "%s case %d: %s gives '%.*s' (%zu bytes), want '%.*s' (%zu bytes)", name,
                  c->index, what, (int)n_got, got, n_got, (int)n_want, want, n_want);
}

/* Streams ids one by one; the pieces must be valid UTF-8 and add up to want. */
static void check_stream(const char *name, const tcase *c, const sq_tokenizer *tok,
                         bool skip, const char *want, size_t n_want) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_detok_stream *st = NULL;
    ck_assert_int_eq(sq_detok_stream_create(tok, skip, &st, &err), SQ_OK);
    char *acc = malloc(4 * n_want + 64);
    size_t n = 0;
    for (size_t i = 0; i < c->n1; i++) {
        const char *piece;
        size_t pn;
        ck_assert_int_eq(sq_detok_stream_push(st, c->ids1[i], &piece, &pn, &err), SQ_OK);
        ck_assert_msg(n + pn <= 4 * n_want + 64, "%s case %d: stream runs long", name, c->index);
        memcpy(acc + n, piece, pn);
        n += pn;
    }
    const char *piece;
    size_t pn;
    ck_assert_int_eq(sq_detok_stream_finish(st, &piece, &pn, &err), SQ_OK);
    ck_assert(n + pn <= 4 * n_want + 64);
    memcpy(acc + n, piece, pn);
    n += pn;
    check_text(name, c, skip ? "stream(skip_special)" : "stream", acc, n, want, n_want);
    free(acc);
    sq_detok_stream_destroy(st);
}

static void run_reference(const char *name) {
    size_t n_cases;
    tcase *cs = load_cases(name, &n_cases);
    ck_assert_uint_ge(n_cases, 100);
    sq_tokenizer *tok = load_ref(name);
    sq_error err;
    sq_error_init(&err, -1);
    for (size_t k = 0; k < n_cases; k++) {
        const tcase *c = &cs[k];
        for (int add = 1; add >= 0; add--) {
            int32_t *ids = NULL;
            size_t n = 0;
            sq_status s = sq_tokenizer_encode(tok, c->text, c->text_n, add, &ids, &n, &err);
            ck_assert_msg(s == SQ_OK, "%s case %d: %s", name, c->index, err.msg);
            check_ids(name, c, add, ids, n);
            if (!add && c->rt) {
                char *back = NULL;
                size_t nb = 0;
                ck_assert_int_eq(sq_tokenizer_decode(tok, ids, n, false, &back, &nb, &err),
                                 SQ_OK);
                check_text(name, c, "decode(encode(x))", back, nb, c->text, c->text_n);
                free(back);
            }
            free(ids);
        }
        char *d = NULL;
        size_t nd = 0;
        ck_assert_int_eq(sq_tokenizer_decode(tok, c->ids1, c->n1, false, &d, &nd, &err), SQ_OK);
        check_text(name, c, "decode", d, nd, c->dec1, c->dec1_n);
        free(d);
        ck_assert_int_eq(sq_tokenizer_decode(tok, c->ids1, c->n1, true, &d, &nd, &err), SQ_OK);
        check_text(name, c, "decode(skip_special)", d, nd, c->dec0, c->dec0_n);
        free(d);
        check_stream(name, c, tok, false, c->dec1, c->dec1_n);
        check_stream(name, c, tok, true, c->dec0, c->dec0_n);
    }
    sq_tokenizer_destroy(tok);
    free_cases(cs, n_cases);
}

START_TEST(test_ref_llama3) { run_reference("llama3"); }
END_TEST
START_TEST(test_ref_qwen2) { run_reference("qwen2"); }
END_TEST
START_TEST(test_ref_gpt2) { run_reference("gpt2"); }
END_TEST
START_TEST(test_ref_llama2) { run_reference("llama2"); }
END_TEST
START_TEST(test_ref_mistral) { run_reference("mistral"); }
END_TEST
START_TEST(test_ref_flags) { run_reference("flags"); }
END_TEST

/* ---- lookups ----------------------------------------------------------------------------- */

START_TEST(test_lookups) {
    sq_tokenizer *l3 = load_ref("llama3"), *l2 = load_ref("llama2"), *q = load_ref("qwen2");
    ck_assert_int_eq(sq_tokenizer_bos_id(l3), 1500);
    ck_assert_int_eq(sq_tokenizer_eos_id(l3), 1501); /* <|end_of_text|> */
    ck_assert_int_eq(sq_tokenizer_vocab_size(l3), 1505);
    ck_assert_int_eq(sq_tokenizer_bos_id(l2), 1);
    ck_assert_int_eq(sq_tokenizer_eos_id(l2), 2);
    ck_assert_int_eq(sq_tokenizer_bos_id(q), -1);
    ck_assert_int_eq(sq_tokenizer_eos_id(q), sq_tokenizer_token_id(q, "<|endoftext|>", 13));
    ck_assert_int_ge(sq_tokenizer_eos_id(q), 0);
    ck_assert_int_eq(sq_tokenizer_token_id(l2, "<0x41>", 6), 3 + 0x41);
    size_t n = 0;
    ck_assert_str_eq(sq_tokenizer_token_text(l2, 1, &n), "<s>");
    ck_assert_uint_eq(n, 3);
    ck_assert_ptr_null(sq_tokenizer_token_text(l2, 1 << 20, &n));
    ck_assert_ptr_null(sq_tokenizer_token_text(l2, -1, &n));
    ck_assert(sq_tokenizer_is_special(l2, 1));
    ck_assert(!sq_tokenizer_is_special(l2, 100));
    ck_assert_int_eq(sq_tokenizer_token_id(l2, "no such token", 13), -1);
    sq_tokenizer_destroy(l3);
    sq_tokenizer_destroy(l2);
    sq_tokenizer_destroy(q);
}
END_TEST

/* ---- streaming hold-back ----------------------------------------------------------------- */

START_TEST(test_stream_holds_partial_utf8) {
    sq_tokenizer *tok = load_ref("llama2"); /* 日 = E6 97 A5 only as <0xNN> tokens here */
    sq_error err;
    sq_error_init(&err, -1);
    sq_detok_stream *st = NULL;
    ck_assert_int_eq(sq_detok_stream_create(tok, true, &st, &err), SQ_OK);
    const char *t;
    size_t n;
    int32_t hi = sq_tokenizer_token_id(tok, "▁hi", strlen("▁hi"));
    int32_t h = sq_tokenizer_token_id(tok, "▁", strlen("▁"));
    ck_assert_int_ge(h, 0);
    ck_assert_int_eq(sq_detok_stream_push(st, 1, &t, &n, &err), SQ_OK); /* <s>: skipped */
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sq_detok_stream_push(st, h, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 0); /* the leading space is stripped, as decode does */
    ck_assert_int_eq(sq_detok_stream_push(st, 3 + 0xE6, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sq_detok_stream_push(st, 3 + 0x97, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sq_detok_stream_push(st, 3 + 0xA5, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert(!memcmp(t, "日", 3));
    ck_assert_int_eq(sq_detok_stream_push(st, h, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert(t[0] == ' ');
    /* an unfinished character at the end comes out as U+FFFD, as decode() gives it */
    ck_assert_int_eq(sq_detok_stream_push(st, 3 + 0xE6, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sq_detok_stream_finish(st, &t, &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert(!memcmp(t, "\xEF\xBF\xBD", 3));
    /* after finish: a new sequence, whose first space is stripped again */
    if (hi >= 0) {
        ck_assert_int_eq(sq_detok_stream_push(st, hi, &t, &n, &err), SQ_OK);
        ck_assert_uint_eq(n, 2);
        ck_assert(!memcmp(t, "hi", 2));
    }
    ck_assert_int_eq(sq_detok_stream_push(st, -5, &t, &n, &err), SQ_ERR_INVALID);
    sq_detok_stream_destroy(st);
    sq_tokenizer_destroy(tok);
}
END_TEST

/* ---- chat formats ------------------------------------------------------------------------ */

START_TEST(test_chat_formats) {
    sq_error err;
    sq_error_init(&err, -1);
    char *t = NULL;
    size_t n = 0;
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_LLAMA3, " Be brief.\n", " Hi there ",
                                              &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                        "Hi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    ck_assert_uint_eq(n, strlen(t));
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_LLAMA3, NULL, "Hi", &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                        "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_CHATML, NULL, "Hi", &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_CHATML, "S", "U", &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                        "<|im_start|>assistant\n");
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_MISTRAL, NULL, "Hi", &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<s>[INST] Hi [/INST]");
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_MISTRAL, "S", "U", &t, &n, &err), SQ_OK);
    ck_assert_str_eq(t, "<s>[INST] S\n\nU [/INST]");
    free(t);
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_MISTRAL, NULL, "bad \xC3", &t, &n, &err),
                     SQ_ERR_INVALID);
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(err.msg, "UTF-8"));

    /* the specials of the formatted text become single tokens */
    sq_tokenizer *l3 = load_ref("llama3");
    ck_assert_int_eq(sq_tokenizer_chat_format(SQ_CHAT_LLAMA3, NULL, "Hi", &t, &n, &err), SQ_OK);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ck_assert_int_eq(sq_tokenizer_encode(l3, t, n, false, &ids, &n_ids, &err), SQ_OK);
    ck_assert_int_ge(n_ids, 8);
    ck_assert_int_eq(ids[0], 1500);
    ck_assert_int_eq(ids[1], sq_tokenizer_token_id(l3, "<|start_header_id|>", 19));
    int32_t hdr = sq_tokenizer_token_id(l3, "<|end_header_id|>", 17), n_hdr = 0;
    for (size_t i = 0; i < n_ids; i++) n_hdr += ids[i] == hdr;
    ck_assert_int_eq(n_hdr, 2);
    char *back = NULL;
    size_t nb = 0;
    ck_assert_int_eq(sq_tokenizer_decode(l3, ids, n_ids, false, &back, &nb, &err), SQ_OK);
    ck_assert_str_eq(back, t);
    free(back);
    free(ids);
    free(t);
    sq_chat_family fam;
    ck_assert_int_eq(sq_tokenizer_chat_family_guess(l3, &fam, &err), SQ_OK);
    ck_assert_int_eq(fam, SQ_CHAT_LLAMA3);
    ck_assert_int_eq(sq_tokenizer_chat_stop_id(l3, fam), sq_tokenizer_token_id(l3, "<|eot_id|>", 10));
    ck_assert_int_ge(sq_tokenizer_chat_stop_id(l3, fam), 0);
    sq_tokenizer *q = load_ref("qwen2"), *m = load_ref("mistral"), *g = load_ref("gpt2");
    ck_assert_int_eq(sq_tokenizer_chat_family_guess(q, &fam, &err), SQ_OK);
    ck_assert_int_eq(fam, SQ_CHAT_CHATML);
    ck_assert_int_ge(sq_tokenizer_chat_stop_id(q, fam), 0);
    ck_assert_int_eq(sq_tokenizer_chat_family_guess(m, &fam, &err), SQ_OK);
    ck_assert_int_eq(fam, SQ_CHAT_MISTRAL);
    ck_assert_int_eq(sq_tokenizer_chat_stop_id(m, fam), 2);
    ck_assert_int_eq(sq_tokenizer_chat_family_guess(g, &fam, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_str_eq(sq_tokenizer_chat_family_name(SQ_CHAT_CHATML), "chatml");
    sq_tokenizer_destroy(l3);
    sq_tokenizer_destroy(q);
    sq_tokenizer_destroy(m);
    sq_tokenizer_destroy(g);
}
END_TEST

/* ---- refusals ---------------------------------------------------------------------------- */

/* Loads the reference llama2.json with the first `from` replaced by `to`; returns the status
 * and leaves the message in err. */
static sq_status load_edited(const char *name, const char *from, const char *to, sq_error *err) {
    char path[512];
    snprintf(path, sizeof path, REF_DIR "%s.json", name);
    size_t n;
    char *js = sq_test_read_file(path, &n);
    ck_assert_ptr_nonnull(js);
    char *at = strstr(js, from);
    ck_assert_msg(at != NULL, "'%s' not in %s", from, path);
    size_t nf = strlen(from), nt = strlen(to);
    char *ed = malloc(n - nf + nt + 1);
    memcpy(ed, js, (size_t)(at - js));
    memcpy(ed + (at - js), to, nt);
    memcpy(ed + (at - js) + nt, at + nf, n - (size_t)(at - js) - nf + 1);
    sq_tokenizer *tok = (sq_tokenizer *)1;
    sq_error_init(err, -1);
    sq_status s = sq_tokenizer_load_json(ed, n - nf + nt, "edited.json", &tok, err);
    if (s == SQ_OK) sq_tokenizer_destroy(tok);
    else ck_assert_ptr_null(tok);
    free(ed);
    free(js);
    return s;
}

START_TEST(test_refusals) {
    sq_error err;
    ck_assert_int_eq(load_edited("llama2", "\"type\": \"BPE\"", "\"type\": \"Unigram\"", &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "model type 'Unigram'"));
    ck_assert_str_eq(err.file, "edited.json");
    ck_assert_int_eq(load_edited("llama2", "\"type\": \"BPE\"", "\"type\": \"WordPiece\"", &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "'WordPiece'"));
    ck_assert_int_eq(load_edited("llama2", "\"type\": \"Prepend\"", "\"type\": \"NFKC\"", &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "normalizer 'NFKC'"));
    ck_assert_int_eq(load_edited("mistral", "\"type\": \"Metaspace\"", "\"type\": \"Whitespace\"",
                                 &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "pre-tokenizer 'Whitespace'"));
    ck_assert_int_eq(load_edited("llama3", "\\\\p{N}{1,3}", "\\\\p{N}{1,4}", &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "Split regex"));
    ck_assert_ptr_nonnull(strstr(err.msg, "{1,4}"));
    ck_assert_int_eq(load_edited("llama3", "\"Isolated\"", "\"Removed\"", &err),
                     SQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(load_edited("llama2", "\"type\": \"ByteFallback\"", "\"type\": \"WordPiece\"",
                                 &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "decoder 'WordPiece'"));
    ck_assert_int_eq(load_edited("llama2", "\"type\": \"TemplateProcessing\"",
                                 "\"type\": \"RobertaProcessing\"", &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "'RobertaProcessing'"));
    /* a merge naming a token that is not in the vocabulary */
    ck_assert_int_eq(load_edited("llama2", "\"merges\": [\n   \"", "\"merges\": [\n   \"zz\\u00e9q t\", \"",
                                 &err), SQ_ERR_FORMAT);
    ck_assert_str_eq(err.msg, "merge 0 ('zz\xC3\xA9q' + 't'): token not in the vocabulary");
    ck_assert_int_eq(load_edited("llama2", "\"merges\": [\n   \"", "\"merges\": [\n   \"a b c\", \"",
                                 &err), SQ_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "not two tokens"));
    ck_assert_int_eq(load_edited("llama2", "\"vocab\": {", "\"vocab\": {\"bad\": -3, ", &err),
                     SQ_ERR_FORMAT);
    ck_assert_int_eq(load_edited("llama2", "\"model\":", "\"modelx\":", &err), SQ_ERR_FORMAT);

    /* malformed JSON: every truncation of a real file is refused, none crashes */
    size_t n;
    char *js = sq_test_read_file(REF_DIR "gpt2.json", &n);
    for (size_t cut = 0; cut < n - 2; cut += n / 37 + 1) {
        sq_tokenizer *tok = NULL;
        sq_error_init(&err, -1);
        ck_assert_int_eq(sq_tokenizer_load_json(js, cut, "cut.json", &tok, &err), SQ_ERR_FORMAT);
        ck_assert_ptr_null(tok);
        ck_assert_ptr_nonnull(strstr(err.msg, "JSON"));
    }
    free(js);
    sq_tokenizer *tok = NULL;
    ck_assert_int_eq(sq_tokenizer_load("/nonexistent/tokenizer.json", &tok, &err), SQ_ERR_IO);
    ck_assert_str_eq(err.file, "/nonexistent/tokenizer.json");

    /* invalid UTF-8 in the text to encode; a negative id to decode */
    tok = load_ref("llama3");
    int32_t *ids = (int32_t *)1;
    size_t n_ids = 7;
    ck_assert_int_eq(sq_tokenizer_encode(tok, "ok \xFF no", 7, true, &ids, &n_ids, &err),
                     SQ_ERR_INVALID);
    ck_assert_ptr_null(ids);
    ck_assert_uint_eq(n_ids, 0);
    ck_assert_str_eq(err.msg, "text is not valid UTF-8 (byte 0xFF at offset 3)");
    ck_assert_int_eq(sq_tokenizer_encode(tok, "\xE6\x97", 2, true, &ids, &n_ids, &err),
                     SQ_ERR_INVALID); /* truncated character */
    ck_assert_int_eq(sq_tokenizer_encode(tok, "\xED\xA0\x80", 3, true, &ids, &n_ids, &err),
                     SQ_ERR_INVALID); /* a surrogate */
    char *text = NULL;
    int32_t bad[] = {5, -2};
    ck_assert_int_eq(sq_tokenizer_decode(tok, bad, 2, false, &text, &n, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(text);
    /* ids past the vocabulary (a model's padded embedding) are skipped, as the library does */
    int32_t past[] = {1 << 20, sq_tokenizer_token_id(tok, "a", 1)};
    ck_assert_int_eq(sq_tokenizer_decode(tok, past, 2, false, &text, &n, &err), SQ_OK);
    ck_assert_str_eq(text, "a");
    free(text);
    sq_tokenizer_destroy(tok);

    /* Qwen2's NFC normalizer: decomposed text tokenizes as its composed form */
    tok = load_ref("qwen2");
    int32_t *ids2 = NULL;
    size_t n_ids2 = 0;
    ck_assert_int_eq(sq_tokenizer_encode(tok, "Cafe\xCC\x81!", 7, false, &ids, &n_ids, &err),
                     SQ_OK);
    ck_assert_int_eq(sq_tokenizer_encode(tok, "Caf\xC3\xA9!", 6, false, &ids2, &n_ids2, &err),
                     SQ_OK);
    ck_assert_uint_eq(n_ids, n_ids2);
    ck_assert(!memcmp(ids, ids2, n_ids * sizeof *ids));
    ck_assert_int_eq(sq_tokenizer_decode(tok, ids, n_ids, false, &text, &n, &err), SQ_OK);
    ck_assert_str_eq(text, "Caf\xC3\xA9!");
    free(text);
    free(ids);
    free(ids2);
    sq_tokenizer_destroy(tok);
}
END_TEST

/* ---- speed ------------------------------------------------------------------------------- */

static void time_encode(const char *name, const char *text, size_t n) {
    sq_tokenizer *tok = load_ref(name);
    sq_error err;
    sq_error_init(&err, -1);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    double t0 = sq_now_s();
    ck_assert_int_eq(sq_tokenizer_encode(tok, text, n, true, &ids, &n_ids, &err), SQ_OK);
    double dt = sq_now_s() - t0;
    char *back = NULL;
    size_t nb = 0;
    double t1 = sq_now_s();
    ck_assert_int_eq(sq_tokenizer_decode(tok, ids, n_ids, true, &back, &nb, &err), SQ_OK);
    double dt_dec = sq_now_s() - t1;
    fprintf(stderr, "tokenizer speed: %s: encode %zu bytes -> %zu ids in %.1f ms; decode %.1f ms\n",
            name, n, n_ids, 1e3 * dt, 1e3 * dt_dec);
    /* a guard against quadratic BPE (seconds to minutes on 100 kB), loose enough for ASan on a
     * busy 2-core CI machine; the figure itself is printed above */
    ck_assert_msg(dt < 3.0, "%s: encoding %zu bytes took %.3f s", name, n, dt);
    ck_assert_uint_gt(n_ids, n / 20);
    free(back);
    free(ids);
    sq_tokenizer_destroy(tok);
}

START_TEST(test_speed_100k) {
    /* 100 kB of the design notes' kind of text, with some Unicode and code mixed in */
    static const char *const parts[] = {
        "Every rank computes the same plan from the same inputs; rank 0 never ships weights. ",
        "Résumé: naïve café — 日本語のテキスト 😀 ",
        "for (int i = 0; i < n; i++) { y[i] += a * x[i]; }\n",
        "1234567 89 0.5e-3\n\n",
        "    indented line\twith tabs\n",
    };
    size_t cap = 100 * 1024, n = 0;
    char *text = malloc(cap + 256);
    for (int k = 0; n < cap; k++) {
        const char *p = parts[(k * 7 + k / 3) % 5];
        size_t len = strlen(p);
        memcpy(text + n, p, len);
        n += len;
    }
    time_encode("llama3", text, n);
    time_encode("llama2", text, n); /* no pre-tokenizer: one 100 kB BPE word */
    time_encode("gpt2", text, n);
    /* worst cases for the merge loop: one 100 kB pre-token of letters, and of CJK */
    for (size_t i = 0; i < cap; i++) text[i] = "abcab"[i % 5];
    time_encode("llama3", text, cap);
    time_encode("llama2", text, cap);
    static const char cjk[] = "日本語中文文本";
    for (n = 0; n + sizeof cjk - 1 <= cap; n += sizeof cjk - 1) memcpy(text + n, cjk, sizeof cjk - 1);
    time_encode("qwen2", text, n);
    time_encode("mistral", text, n);
    free(text);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ref_llama3);
    tcase_add_test(tc, test_ref_qwen2);
    tcase_add_test(tc, test_ref_gpt2);
    tcase_add_test(tc, test_ref_llama2);
    tcase_add_test(tc, test_ref_mistral);
    tcase_add_test(tc, test_ref_flags);
    suite_add_tcase(s, tc);
    TCase *tu = tcase_create("api");
    tcase_set_timeout(tu, 60);
    tcase_add_test(tu, test_lookups);
    tcase_add_test(tu, test_stream_holds_partial_utf8);
    tcase_add_test(tu, test_chat_formats);
    tcase_add_test(tu, test_refusals);
    tcase_add_test(tu, test_speed_100k);
    suite_add_tcase(s, tu);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
