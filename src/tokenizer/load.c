/* Owns reading a tokenizer.json into an sq_tokenizer: the BPE vocabulary and merges, added
 * tokens, and the normalizer / pre-tokenizer / decoder / post-processor descriptions, each
 * checked against what encode.c and decode.c implement.  cJSON stays inside this file.
 * Must never accept a configuration it cannot reproduce exactly: refuse it by name instead. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

/* Llama-3 / Qwen2 / GPT-2 Split patterns, as they appear (unescaped) in tokenizer.json. */
static const char *const k_split_patterns[] = {
    [SQ_SPLIT_GPT2] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
                      "\\s+(?!\\S)|\\s+",
    [SQ_SPLIT_LLAMA3] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                        "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                        "\\s+(?!\\S)|\\s+",
    [SQ_SPLIT_QWEN2] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                       "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                       "\\s+(?!\\S)|\\s+",
};

/* ---- small shared helpers ---------------------------------------------------------------- */

bool sq_tok_buf_reserve(sq_tok_buf *b, size_t extra) {
    if (b->cap - b->n > extra) return true; /* keeps room for a NUL */
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n <= extra) {
        if (cap > SIZE_MAX / 2) return false;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

bool sq_tok_buf_put(sq_tok_buf *b, const void *data, size_t n) {
    if (!sq_tok_buf_reserve(b, n)) return false;
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

uint64_t sq_tok_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int32_t sq_tok_vocab_find(const sq_tokenizer *tok, const char *s, size_t n) {
    if (!tok->vocab.slots) return -1;
    for (uint32_t i = (uint32_t)sq_tok_hash(s, n) & tok->vocab.mask;;
         i = (i + 1) & tok->vocab.mask) {
        int32_t id = tok->vocab.slots[i];
        if (id < 0) return -1;
        if ((size_t)tok->tok_len[id] == n && memcmp(tok->arena + tok->tok_off[id], s, n) == 0)
            return id;
    }
}

static uint32_t pow2_at_least(size_t n) {
    uint32_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* ---- JSON helpers ------------------------------------------------------------------------ */

typedef struct ctx {
    sq_tokenizer *tok;
    sq_error *err;
} ctx;

static sq_status fmt_err(ctx *c, const char *fmt, const char *what) {
    return sq_error_set(c->err, SQ_ERR_FORMAT, c->tok->name, NULL, fmt, what);
}

static sq_status unsupported(ctx *c, const char *kind, const char *what) {
    return sq_error_set(c->err, SQ_ERR_UNSUPPORTED, c->tok->name, NULL,
                        "unsupported %s '%s' (shardq supports BPE tokenizers of the "
                        "Llama, Mistral and Qwen2 families)", kind, what);
}

static const char *type_of(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static bool get_bool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *get_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static char *dup_str(const char *s, size_t *n) {
    *n = strlen(s);
    char *p = malloc(*n + 1);
    if (p) memcpy(p, s, *n + 1);
    return p;
}

/* A "pattern": {"String": s} (returned) or {"Regex": r} (returned in *regex). */
static const char *pattern_of(const cJSON *o, const char **regex) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    *regex = get_str(p, "Regex");
    return get_str(p, "String");
}

/* A single code point given as a JSON string ("▁", " "), or 0 when it is not one. */
static uint32_t single_char(const char *s, char out[8], size_t *out_bytes) {
    size_t n = strlen(s), i = 0;
    if (n == 0 || n > 4 || sq_utf8_valid(s, n) != n) return 0;
    uint32_t cp = sq_utf8_next(s, n, &i);
    if (i != n) return 0;
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
        *out_bytes = n;
    }
    return cp;
}

/* ---- model ------------------------------------------------------------------------------- */

static sq_status insert_merge(ctx *c, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    sq_tokenizer *tok = c->tok;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(h >> 32) & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        sq_tok_merge_slot *sl = &tok->merges[i];
        if (sl->key == UINT64_MAX) tok->n_merges++;
        if (sl->key == UINT64_MAX || sl->key == key) {
            /* a repeated pair: the later rank wins, as in the library's hash map */
            *sl = (sq_tok_merge_slot){key, rank, new_id};
            return SQ_OK;
        }
    }
}

static sq_status parse_merges(ctx *c, const cJSON *merges) {
    sq_tokenizer *tok = c->tok;
    int n = cJSON_GetArraySize(merges);
    tok->merge_mask = pow2_at_least((size_t)n * 2 + 1) - 1;
    tok->merges = malloc(((size_t)tok->merge_mask + 1) * sizeof *tok->merges);
    if (!tok->merges) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "merges");
    for (uint32_t i = 0; i <= tok->merge_mask; i++) tok->merges[i].key = UINT64_MAX;
    char buf[2 * SQ_TOK_MAX_TOKEN_BYTES + 2];
    int rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                    "merge %d '%.64s' is not two tokens separated by a space",
                                    rank, m->valuestring);
            a = m->valuestring;
            na = (size_t)(sp - a);
            b = sp + 1;
            nb = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
            a = m->child->valuestring;
            na = strlen(a);
            b = m->child->next->valuestring;
            nb = strlen(b);
        } else {
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "merge %d is neither \"a b\" nor [\"a\", \"b\"]", rank);
        }
        if (na > SQ_TOK_MAX_TOKEN_BYTES || nb > SQ_TOK_MAX_TOKEN_BYTES)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "merge %d: token longer than %d bytes", rank,
                                SQ_TOK_MAX_TOKEN_BYTES);
        memcpy(buf, a, na);
        memcpy(buf + na, b, nb);
        int32_t ia = sq_tok_vocab_find(tok, a, na), ib = sq_tok_vocab_find(tok, b, nb);
        int32_t inew = sq_tok_vocab_find(tok, buf, na + nb);
        if (ia < 0 || ib < 0 || inew < 0)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "merge %d ('%.*s' + '%.*s'): token not in the vocabulary",
                                rank, (int)(na > 64 ? 64 : na), a, (int)(nb > 64 ? 64 : nb), b);
        insert_merge(c, ia, ib, rank, inew);
    }
    return SQ_OK;
}

static sq_status parse_model(ctx *c, const cJSON *model) {
    sq_tokenizer *tok = c->tok;
    if (!cJSON_IsObject(model)) return fmt_err(c, "%s", "no \"model\" object");
    const char *type = type_of(model);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (type && strcmp(type, "BPE") != 0) return unsupported(c, "model type", type);
    if (!type && !merges) return fmt_err(c, "%s", "model has no \"type\"");
    if (!cJSON_IsObject(vocab)) return fmt_err(c, "%s", "model.vocab is not an object");
    if (!cJSON_IsArray(merges)) return fmt_err(c, "%s", "model.merges is not an array");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return unsupported(c, "BPE option", "dropout");
    const char *pre = get_str(model, "continuing_subword_prefix");
    const char *suf = get_str(model, "end_of_word_suffix");
    if (pre && *pre) return unsupported(c, "BPE option", "continuing_subword_prefix");
    if (suf && *suf) return unsupported(c, "BPE option", "end_of_word_suffix");
    tok->byte_fallback = get_bool(model, "byte_fallback", false);
    tok->fuse_unk = get_bool(model, "fuse_unk", false);
    tok->ignore_merges = get_bool(model, "ignore_merges", false);

    /* vocabulary: ids and string bytes first, so nothing is sized by an unchecked number */
    int32_t max_id = -1;
    size_t n_vocab = 0, bytes = 0;
    for (const cJSON *v = vocab->child; v; v = v->next, n_vocab++) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= SQ_TOK_MAX_VOCAB ||
            v->valuedouble != (double)v->valueint)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "vocab entry '%.64s' has no valid id", v->string);
        size_t len = strlen(v->string);
        if (len > SQ_TOK_MAX_TOKEN_BYTES)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "vocab entry %d is longer than %d bytes", v->valueint,
                                SQ_TOK_MAX_TOKEN_BYTES);
        if (v->valueint > max_id) max_id = v->valueint;
        bytes += len;
    }
    tok->n_ids = max_id + 1; /* raised later by added tokens */
    tok->arena = malloc(bytes + 1);
    tok->arena_bytes = bytes;
    size_t slots = tok->n_ids > 0 ? (size_t)tok->n_ids : 1;
    tok->tok_off = malloc(slots * sizeof *tok->tok_off);
    tok->tok_len = malloc(slots * sizeof *tok->tok_len);
    tok->vocab.mask = pow2_at_least(n_vocab * 2 + 1) - 1;
    tok->vocab.slots = malloc(((size_t)tok->vocab.mask + 1) * sizeof(int32_t));
    if (!tok->arena || !tok->tok_off || !tok->tok_len || !tok->vocab.slots)
        return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "vocabulary");
    for (size_t i = 0; i < slots; i++) tok->tok_len[i] = -1;
    memset(tok->vocab.slots, 0xFF, ((size_t)tok->vocab.mask + 1) * sizeof(int32_t));
    size_t off = 0;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        size_t len = strlen(v->string);
        int32_t id = v->valueint;
        if (tok->tok_len[id] >= 0)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "vocab id %d is given to two tokens", id);
        memcpy(tok->arena + off, v->string, len);
        tok->tok_off[id] = (int64_t)off;
        tok->tok_len[id] = (int32_t)len;
        off += len;
        if (sq_tok_vocab_find(tok, v->string, len) >= 0) continue; /* duplicate key */
        uint32_t i = (uint32_t)sq_tok_hash(v->string, len) & tok->vocab.mask;
        while (tok->vocab.slots[i] >= 0) i = (i + 1) & tok->vocab.mask;
        tok->vocab.slots[i] = id;
    }

    const char *unk = get_str(model, "unk_token");
    tok->unk_id = -1;
    if (unk) {
        tok->unk_id = sq_tok_vocab_find(tok, unk, strlen(unk));
        if (tok->unk_id < 0)
            return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                "unk_token '%.64s' is not in the vocabulary", unk);
    }
    tok->all_byte_ids = true;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = sq_tok_vocab_find(tok, name, 6);
        tok->all_byte_ids = tok->all_byte_ids && tok->byte_ids[b] >= 0;
    }
    return parse_merges(c, merges);
}

/* ---- added tokens ------------------------------------------------------------------------ */

static int cmp_added_len(const void *pa, const void *pb, void *arg) {
    const sq_tok_added *added = arg;
    const sq_tok_added *a = &added[*(const int32_t *)pa], *b = &added[*(const int32_t *)pb];
    if (a->content_bytes != b->content_bytes) return a->content_bytes > b->content_bytes ? -1 : 1;
    return 0;
}

static sq_status parse_added(ctx *c, const cJSON *arr) {
    sq_tokenizer *tok = c->tok;
    if (!arr || cJSON_IsNull(arr)) return SQ_OK;
    if (!cJSON_IsArray(arr)) return fmt_err(c, "%s", "added_tokens is not an array");
    int n = cJSON_GetArraySize(arr);
    tok->added = calloc((size_t)n + 1, sizeof *tok->added);
    if (!tok->added) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "added tokens");
    int32_t max_id = tok->n_ids - 1;
    for (const cJSON *a = arr->child; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const char *content = get_str(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= SQ_TOK_MAX_VOCAB ||
            !content)
            return fmt_err(c, "%s", "an added token lacks a valid \"id\" or \"content\"");
        sq_tok_added *t = &tok->added[tok->n_added++];
        t->id = id->valueint;
        t->content = dup_str(content, &t->content_bytes);
        if (!t->content) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "added");
        t->special = get_bool(a, "special", false);
        t->normalized = get_bool(a, "normalized", !t->special);
        t->lstrip = get_bool(a, "lstrip", false);
        t->rstrip = get_bool(a, "rstrip", false);
        t->single_word = get_bool(a, "single_word", false);
        if (t->id > max_id) max_id = t->id;
        if (t->normalized && tok->n_norm) {
            /* the library matches (and decodes) a normalized token by its normalized form */
            sq_tok_buf nb = {0};
            sq_status s = sq_tok_normalize(tok, t->content, t->content_bytes, &nb, c->err);
            if (s) {
                free(nb.p);
                return s;
            }
            t->orig = t->content;
            t->orig_bytes = t->content_bytes;
            t->content = nb.p ? nb.p : dup_str("", &t->content_bytes);
            t->content_bytes = nb.p ? nb.n : 0;
            if (!t->content) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "added");
        }
    }
    /* grow the id tables to cover added ids past the model vocabulary */
    if (max_id + 1 > tok->n_ids) {
        size_t n_new = (size_t)max_id + 1;
        int64_t *off = realloc(tok->tok_off, n_new * sizeof *off);
        if (off) tok->tok_off = off;
        int32_t *len = realloc(tok->tok_len, n_new * sizeof *len);
        if (len) tok->tok_len = len;
        if (!off || !len) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "ids");
        for (size_t i = (size_t)tok->n_ids; i < n_new; i++) tok->tok_len[i] = -1;
        tok->n_ids = (int32_t)n_new;
    }
    tok->added_of_id = malloc((size_t)(tok->n_ids > 0 ? tok->n_ids : 1) * sizeof(int32_t));
    if (!tok->added_of_id) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "ids");
    for (int32_t i = 0; i < tok->n_ids; i++) tok->added_of_id[i] = -1;
    int32_t count[256] = {0};
    for (size_t i = 0; i < tok->n_added; i++) {
        sq_tok_added *t = &tok->added[i];
        tok->added_of_id[t->id] = (int32_t)i;
        if (t->content_bytes == 0) continue;
        count[(unsigned char)t->content[0]]++;
        if (t->normalized) tok->any_normalized_added = true;
        else tok->any_raw_added = true;
    }
    for (int b = 0; b < 256; b++) {
        if (!count[b]) continue;
        tok->added_by_byte[b] = malloc((size_t)count[b] * sizeof(int32_t));
        if (!tok->added_by_byte[b]) return sq_error_set(c->err, SQ_ERR_NOMEM, NULL, NULL, "a");
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        const sq_tok_added *t = &tok->added[i];
        if (t->content_bytes == 0) continue;
        unsigned b = (unsigned char)t->content[0];
        tok->added_by_byte[b][tok->n_added_by_byte[b]++] = (int32_t)i;
    }
    for (int b = 0; b < 256; b++)
        if (count[b])
            qsort_r(tok->added_by_byte[b], (size_t)count[b], sizeof(int32_t), cmp_added_len,
                    tok->added);
    return SQ_OK;
}

/* ---- normalizer / pre-tokenizer / decoder / post-processor ------------------------------ */

static sq_status parse_normalizer(ctx *c, const cJSON *n) {
    sq_tokenizer *tok = c->tok;
    if (!n || cJSON_IsNull(n)) return SQ_OK;
    const char *type = type_of(n);
    if (!type) return fmt_err(c, "%s", "normalizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return fmt_err(c, "%s", "normalizer Sequence without a list");
        for (const cJSON *e = list->child; e; e = e->next) {
            sq_status s = parse_normalizer(c, e);
            if (s) return s;
        }
        return SQ_OK;
    }
    if (tok->n_norm == SQ_TOK_MAX_OPS) return unsupported(c, "normalizer", "(too many)");
    sq_tok_norm *op = &tok->norm[tok->n_norm];
    if (!strcmp(type, "Prepend")) {
        const char *p = get_str(n, "prepend");
        if (!p) return fmt_err(c, "%s", "Prepend normalizer without \"prepend\"");
        op->kind = SQ_NORM_PREPEND;
        op->a = dup_str(p, &op->a_bytes);
    } else if (!strcmp(type, "Replace")) {
        const char *regex, *pat = pattern_of(n, &regex), *content = get_str(n, "content");
        if (regex) return unsupported(c, "Replace normalizer regex", regex);
        if (!pat || !*pat || !content) return fmt_err(c, "%s", "Replace normalizer fields");
        op->kind = SQ_NORM_REPLACE;
        op->a = dup_str(pat, &op->a_bytes);
        op->b = dup_str(content, &op->b_bytes);
        if (!op->b) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "normalizer");
    } else if (!strcmp(type, "NFC")) {
        op->kind = SQ_NORM_NFC;
    } else {
        return unsupported(c, "normalizer", type);
    }
    if (op->kind != SQ_NORM_NFC && !op->a)
        return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "normalizer");
    tok->n_norm++;
    return SQ_OK;
}

static sq_status parse_scheme(ctx *c, const cJSON *o, sq_prepend_scheme *scheme) {
    const char *s = get_str(o, "prepend_scheme");
    if (!s) { /* older files: add_prefix_space */
        *scheme = get_bool(o, "add_prefix_space", true) ? SQ_PREPEND_ALWAYS : SQ_PREPEND_NEVER;
        return SQ_OK;
    }
    if (!strcmp(s, "always")) *scheme = SQ_PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *scheme = SQ_PREPEND_FIRST;
    else if (!strcmp(s, "never")) *scheme = SQ_PREPEND_NEVER;
    else return unsupported(c, "Metaspace prepend_scheme", s);
    return SQ_OK;
}

static sq_status parse_pre(ctx *c, const cJSON *p) {
    sq_tokenizer *tok = c->tok;
    if (!p || cJSON_IsNull(p)) return SQ_OK;
    const char *type = type_of(p);
    if (!type) return fmt_err(c, "%s", "pre_tokenizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return fmt_err(c, "%s", "pre_tokenizer Sequence without list");
        for (const cJSON *e = list->child; e; e = e->next) {
            sq_status s = parse_pre(c, e);
            if (s) return s;
        }
        return SQ_OK;
    }
    if (tok->n_pre == SQ_TOK_MAX_OPS) return unsupported(c, "pre-tokenizer", "(too many)");
    sq_tok_pre *op = &tok->pre[tok->n_pre];
    if (!strcmp(type, "Split")) {
        const char *regex, *str = pattern_of(p, &regex), *behavior = get_str(p, "behavior");
        if (!regex) return unsupported(c, "Split pattern", str ? str : "(none)");
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (!strcmp(regex, k_split_patterns[i])) k = i;
        if (k < 0) return unsupported(c, "Split regex", regex);
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return unsupported(c, "Split behavior", behavior ? behavior : "(none)");
        if (get_bool(p, "invert", false)) return unsupported(c, "Split option", "invert");
        op->kind = SQ_PRE_SPLIT;
        op->split = (sq_split_kind)k;
    } else if (!strcmp(type, "Digits")) {
        op->kind = SQ_PRE_SPLIT;
        op->split = get_bool(p, "individual_digits", false) ? SQ_SPLIT_DIGITS : SQ_SPLIT_DIGIT_RUNS;
    } else if (!strcmp(type, "ByteLevel")) {
        op->kind = SQ_PRE_BYTELEVEL;
        op->add_prefix_space = get_bool(p, "add_prefix_space", true);
        op->use_regex = get_bool(p, "use_regex", true);
        op->split = SQ_SPLIT_GPT2;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = get_str(p, "replacement");
        op->kind = SQ_PRE_METASPACE;
        if (!r || !single_char(r, op->repl, &op->repl_bytes))
            return fmt_err(c, "%s", "Metaspace replacement is not one character");
        sq_status s = parse_scheme(c, p, &op->scheme);
        if (s) return s;
        op->meta_split = get_bool(p, "split", true);
    } else {
        return unsupported(c, "pre-tokenizer", type);
    }
    tok->n_pre++;
    return SQ_OK;
}

static sq_status parse_decoder(ctx *c, const cJSON *d) {
    sq_tokenizer *tok = c->tok;
    if (!d || cJSON_IsNull(d)) return SQ_OK;
    tok->has_decoder = true;
    const char *type = type_of(d);
    if (!type) return fmt_err(c, "%s", "decoder has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list)) return fmt_err(c, "%s", "decoder Sequence without a list");
        for (const cJSON *e = list->child; e; e = e->next) {
            sq_status s = parse_decoder(c, e);
            if (s) return s;
        }
        return SQ_OK;
    }
    if (tok->n_dec == SQ_TOK_MAX_OPS) return unsupported(c, "decoder", "(too many)");
    sq_tok_dec *op = &tok->dec[tok->n_dec];
    if (!strcmp(type, "ByteLevel")) {
        op->kind = SQ_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        op->kind = SQ_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        op->kind = SQ_DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const char *regex, *pat = pattern_of(d, &regex), *content = get_str(d, "content");
        if (regex) return unsupported(c, "Replace decoder regex", regex);
        if (!pat || !*pat || !content) return fmt_err(c, "%s", "Replace decoder fields");
        op->kind = SQ_DEC_REPLACE;
        op->a = dup_str(pat, &op->a_bytes);
        op->b = dup_str(content, &op->b_bytes);
        if (!op->a || !op->b) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "dec");
    } else if (!strcmp(type, "Strip")) {
        const char *content = get_str(d, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(d, "stop");
        op->kind = SQ_DEC_STRIP;
        if (!content || !(op->strip_char = single_char(content, NULL, NULL)) ||
            !cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valueint < 0 ||
            stop->valueint < 0)
            return fmt_err(c, "%s", "Strip decoder fields");
        op->strip_start = start->valueint;
        op->strip_stop = stop->valueint;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = get_str(d, "replacement");
        op->kind = SQ_DEC_METASPACE;
        if (!r || !single_char(r, op->repl, &op->repl_bytes))
            return fmt_err(c, "%s", "Metaspace replacement is not one character");
        sq_prepend_scheme sc;
        sq_status s = parse_scheme(c, d, &sc);
        if (s) return s;
        op->meta_prepend = sc != SQ_PREPEND_NEVER;
    } else {
        return unsupported(c, "decoder", type);
    }
    tok->n_dec++;
    return SQ_OK;
}

static sq_status parse_post(ctx *c, const cJSON *p) {
    sq_tokenizer *tok = c->tok;
    if (!p || cJSON_IsNull(p)) return SQ_OK;
    const char *type = type_of(p);
    if (!type) return fmt_err(c, "%s", "post_processor has no \"type\"");
    if (!strcmp(type, "ByteLevel")) return SQ_OK; /* only trims offsets: ids unchanged */
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        if (!cJSON_IsArray(list)) return fmt_err(c, "%s", "post_processor Sequence w/o list");
        for (const cJSON *e = list->child; e; e = e->next) {
            sq_status s = parse_post(c, e);
            if (s) return s;
        }
        return SQ_OK;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return unsupported(c, "post-processor", type);
    if (tok->n_tpl) return unsupported(c, "post-processor", "two TemplateProcessing");
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single)) return fmt_err(c, "%s", "TemplateProcessing without \"single\"");
    for (const cJSON *it = single->child; it; it = it->next) {
        if (tok->n_tpl == SQ_TOK_MAX_OPS) return unsupported(c, "template", "(too long)");
        sq_tok_tpl *t = &tok->tpl[tok->n_tpl];
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            t->is_sequence = true;
        } else if (sp) {
            const char *name = get_str(sp, "id");
            const cJSON *entry = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
            if (!cJSON_IsArray(ids))
                return sq_error_set(c->err, SQ_ERR_FORMAT, tok->name, NULL,
                                    "template special token '%.64s' has no ids",
                                    name ? name : "?");
            int n = cJSON_GetArraySize(ids);
            t->ids = malloc(((size_t)n + 1) * sizeof(int32_t));
            if (!t->ids) return sq_error_set(c->err, SQ_ERR_NOMEM, tok->name, NULL, "tpl");
            for (const cJSON *x = ids->child; x; x = x->next) {
                if (!cJSON_IsNumber(x) || x->valueint < 0 || x->valueint >= tok->n_ids)
                    return fmt_err(c, "%s", "template special token id out of range");
                t->ids[t->n_ids++] = x->valueint;
            }
            if (tok->bos_id < 0 && t->n_ids && tok->n_tpl == 0) tok->bos_id = t->ids[0];
        } else {
            return fmt_err(c, "%s", "template item is neither SpecialToken nor Sequence");
        }
        tok->n_tpl++;
    }
    return SQ_OK;
}

/* ---- load / destroy ---------------------------------------------------------------------- */

void sq_tokenizer_destroy(sq_tokenizer *tok) {
    if (!tok) return;
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->added_of_id);
    free(tok->arena);
    free(tok->vocab.slots);
    free(tok->merges);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].orig);
    }
    free(tok->added);
    for (int b = 0; b < 256; b++) free(tok->added_by_byte[b]);
    for (int i = 0; i < tok->n_norm; i++) { free(tok->norm[i].a); free(tok->norm[i].b); }
    for (int i = 0; i < tok->n_dec; i++) { free(tok->dec[i].a); free(tok->dec[i].b); }
    for (int i = 0; i < tok->n_tpl; i++) free(tok->tpl[i].ids);
    free(tok);
}

sq_status sq_tokenizer_load_json(const char *json, size_t json_bytes, const char *name,
                                 sq_tokenizer **out, sq_error *err) {
    *out = NULL;
    sq_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return sq_error_set(err, SQ_ERR_NOMEM, name, NULL, "tokenizer");
    snprintf(tok->name, sizeof tok->name, "%s", name ? name : "tokenizer.json");
    tok->bos_id = tok->eos_id = tok->unk_id = -1;
    ctx c = {tok, err};
    sq_status s = SQ_OK;
    cJSON *root = cJSON_ParseWithLength(json, json_bytes);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr(); /* may point anywhere into json: bound it */
        size_t off = (at && at >= json && at <= json + json_bytes) ? (size_t)(at - json) : 0;
        s = sq_error_set(err, SQ_ERR_FORMAT, tok->name, NULL,
                         "not a JSON object (parse error near byte %zu)", off);
        goto fail;
    }
    if ((s = parse_model(&c, cJSON_GetObjectItemCaseSensitive(root, "model")))) goto fail;
    if ((s = parse_normalizer(&c, cJSON_GetObjectItemCaseSensitive(root, "normalizer"))))
        goto fail;
    if ((s = parse_added(&c, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")))) goto fail;
    if ((s = parse_pre(&c, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")))) goto fail;
    if ((s = parse_decoder(&c, cJSON_GetObjectItemCaseSensitive(root, "decoder")))) goto fail;
    if ((s = parse_post(&c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"))))
        goto fail;
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
    for (size_t i = 0; i < 3 && tok->eos_id < 0; i++) {
        int32_t id = sq_tokenizer_token_id(tok, eos_names[i], strlen(eos_names[i]));
        if (id >= 0 && sq_tokenizer_is_special(tok, id)) tok->eos_id = id;
    }
    cJSON_Delete(root);
    *out = tok;
    return SQ_OK;
fail:
    cJSON_Delete(root);
    sq_tokenizer_destroy(tok);
    return s;
}

sq_status sq_tokenizer_load(const char *path, sq_tokenizer **out, sq_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    sq_status s = SQ_OK;
    for (;;) {
        if (n == cap) {
            if (cap >= SQ_TOK_MAX_JSON_BYTES) {
                s = sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                 "larger than %zu MiB: not a tokenizer.json",
                                 SQ_TOK_MAX_JSON_BYTES >> 20);
                break;
            }
            cap = cap ? 2 * cap : (1 << 20);
            char *p = realloc(buf, cap);
            if (!p) { s = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "reading"); break; }
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) s = sq_error_set(err, SQ_ERR_IO, path, NULL, "read failed");
            break;
        }
    }
    fclose(f);
    if (s == SQ_OK) s = sq_tokenizer_load_json(buf, n, path, out, err);
    free(buf);
    return s;
}

/* ---- lookups ----------------------------------------------------------------------------- */

int32_t sq_tokenizer_vocab_size(const sq_tokenizer *tok) { return tok->n_ids; }
int32_t sq_tokenizer_bos_id(const sq_tokenizer *tok) { return tok->bos_id; }
int32_t sq_tokenizer_eos_id(const sq_tokenizer *tok) { return tok->eos_id; }

const char *sq_tokenizer_token_text(const sq_tokenizer *tok, int32_t id, size_t *bytes) {
    size_t n = 0;
    const char *s = sq_tok_str(tok, id, &n);
    if (bytes) *bytes = s ? n : 0;
    return s;
}

int32_t sq_tokenizer_token_id(const sq_tokenizer *tok, const char *text, size_t bytes) {
    for (size_t i = 0; i < tok->n_added; i++) {
        const sq_tok_added *a = &tok->added[i];
        const char *c = a->orig ? a->orig : a->content;
        size_t n = a->orig ? a->orig_bytes : a->content_bytes;
        if (n == bytes && !memcmp(c, text, bytes)) return a->id;
    }
    return sq_tok_vocab_find(tok, text, bytes);
}

bool sq_tokenizer_is_special(const sq_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_ids || tok->added_of_id[id] < 0) return false;
    return tok->added[tok->added_of_id[id]].special;
}
