/* Owns the tokenizer a GGUF file describes (tokenizer.ggml.*): written as the tokenizer.json the
 * tokenizers library would hold for it and handed to the tokenizer module, so there is one
 * tokenizer implementation with two sources.  gpt2 (byte-level BPE: tokens, merges, token
 * types, the pre-tokenizer of tokenizer.ggml.pre) and llama (SentencePiece-style BPE: tokens
 * with scores; merges from the file or, as transformers' GGUF loader does, from the scores).
 * Must never print or read tensor data. */
#include <cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_impl.h"

/* ---- tokenizer ------------------------------------------------------------------------------- */

/* The Split patterns the tokenizer module recognises (as tokenizer.json spells them). */
static const char k_llama3_re[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_qwen2_re[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static cJSON *bytelevel(bool use_regex) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "ByteLevel");
    cJSON_AddBoolToObject(b, "add_prefix_space", false);
    cJSON_AddBoolToObject(b, "trim_offsets", true);
    cJSON_AddBoolToObject(b, "use_regex", use_regex);
    return b;
}

static cJSON *split(const char *re) {
    cJSON *s = cJSON_CreateObject(), *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "Regex", re);
    cJSON_AddStringToObject(s, "type", "Split");
    cJSON_AddItemToObject(s, "pattern", p);
    cJSON_AddStringToObject(s, "behavior", "Isolated");
    cJSON_AddBoolToObject(s, "invert", false);
    return s;
}

static cJSON *sequence(cJSON *a, cJSON *b) {
    cJSON *s = cJSON_CreateObject(), *l = cJSON_CreateArray();
    cJSON_AddStringToObject(s, "type", "Sequence");
    cJSON_AddItemToArray(l, a);
    cJSON_AddItemToArray(l, b);
    cJSON_AddItemToObject(s, "pretokenizers", l);
    return s;
}

/* The pre-tokenizer llama.cpp uses for tokenizer.ggml.pre (NULL: not one shardq knows). */
static cJSON *pre_for(const char *pre, bool *ignore_merges) {
    static const char *const llama3[] = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe",
                                         "falcon3", "pixtral", "dbrx"};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", "megrez"};
    *ignore_merges = false;
    for (size_t i = 0; i < sizeof llama3 / sizeof llama3[0]; i++)
        if (!strcmp(pre, llama3[i])) {
            *ignore_merges = true;
            return sequence(split(k_llama3_re), bytelevel(false));
        }
    for (size_t i = 0; i < sizeof qwen2 / sizeof qwen2[0]; i++)
        if (!strcmp(pre, qwen2[i])) return sequence(split(k_qwen2_re), bytelevel(false));
    if (!strcmp(pre, "smollm")) {   /* \p{N} one by one, then GPT-2's regex (HF: Digits) */
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "type", "Digits");
        cJSON_AddBoolToObject(d, "individual_digits", true);
        return sequence(d, bytelevel(true));
    }
    if (!strcmp(pre, "gpt2") || !strcmp(pre, "default") || !pre[0]) return bytelevel(true);
    return NULL;
}

static cJSON *template_bos(const char *bos, int64_t id) {
    cJSON *p = cJSON_CreateObject(), *single = cJSON_CreateArray(), *pair = cJSON_CreateArray();
    cJSON_AddStringToObject(p, "type", "TemplateProcessing");
    for (int k = 0; k < 2; k++) {
        cJSON *arr = k ? pair : single;
        cJSON *sp = cJSON_CreateObject(), *spi = cJSON_CreateObject();
        cJSON_AddStringToObject(spi, "id", bos);
        cJSON_AddNumberToObject(spi, "type_id", 0);
        cJSON_AddItemToObject(sp, "SpecialToken", spi);
        cJSON_AddItemToArray(arr, sp);
        cJSON *sq = cJSON_CreateObject(), *sqi = cJSON_CreateObject();
        cJSON_AddStringToObject(sqi, "id", "A");
        cJSON_AddNumberToObject(sqi, "type_id", 0);
        cJSON_AddItemToObject(sq, "Sequence", sqi);
        cJSON_AddItemToArray(arr, sq);
    }
    cJSON_AddItemToObject(p, "single", single);
    cJSON_AddItemToObject(p, "pair", pair);
    cJSON *sts = cJSON_CreateObject(), *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "id", bos);
    cJSON *ids = cJSON_CreateArray(), *toks = cJSON_CreateArray();
    cJSON_AddItemToArray(ids, cJSON_CreateNumber((double)id));
    cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
    cJSON_AddItemToObject(e, "ids", ids);
    cJSON_AddItemToObject(e, "tokens", toks);
    cJSON_AddItemToObject(sts, bos, e);
    cJSON_AddItemToObject(p, "special_tokens", sts);
    return p;
}

/* A NUL-terminated copy of a GGUF string (tokens can hold anything but NUL). */
static char *cstr(const char *s, uint64_t n) {
    if (memchr(s, 0, (size_t)n)) return NULL;
    char *p = malloc((size_t)n + 1);
    if (!p) return NULL;
    memcpy(p, s, (size_t)n);
    p[n] = '\0';
    return p;
}

/* ---- SentencePiece-style merges from scores (transformers' generate_merges) -------------------- */

typedef struct tokmap { uint32_t mask; int64_t *slot; } tokmap;   /* string -> last id */

static uint64_t fnv(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

/* The slot of s (its id, or -1 when s is not a token). */
static int64_t *tm_slot(const tokmap *m, char *const *tok, const char *s, size_t n) {
    for (uint64_t h = fnv(s, n) & m->mask;; h = (h + 1) & m->mask) {
        int64_t id = m->slot[h];
        if (id < 0 || (strlen(tok[id]) == n && !memcmp(tok[id], s, n))) return &m->slot[h];
    }
}

typedef struct merge { int64_t l, r; float score; int32_t ll, rl; uint64_t seq; } merge;

static int cmp_local(const void *a, const void *b) {
    const merge *x = a, *y = b;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    if (x->r != y->r) return x->r < y->r ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}
/* Python's sorted(key=(score, len(l), len(r)), reverse=True): descending, stable. */
static int cmp_global(const void *a, const void *b) {
    const merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->ll != y->ll) return x->ll > y->ll ? -1 : 1;
    if (x->rl != y->rl) return x->rl > y->rl ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int32_t n_chars(const char *s, size_t n) {
    int32_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((uint8_t)s[i] & 0xc0) != 0x80;
    return c;
}

/* Every (left, right) split of a token into two tokens, ranked by the token's score: the
 * merges transformers derives for a GGUF with scores and no merges.  Appends [l, r] pairs. */
static sq_status spm_merges(char *const *tok, const float *score, int64_t n, cJSON *ml,
                            const char *path, sq_error *err) {
    tokmap m = {0};
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap *= 2;
    m.mask = (uint32_t)(cap - 1);
    m.slot = malloc(cap * sizeof *m.slot);
    int64_t *first = malloc((size_t)n * sizeof *first);
    size_t mcap = 1024, nm = 0;
    merge *all = malloc(mcap * sizeof *all);
    sq_status s = SQ_OK;
    if (!m.slot || !first || !all) {
        s = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < cap; i++) m.slot[i] = -1;
    for (int64_t i = 0; i < n; i++) {   /* dict comprehension: the last id of a string wins */
        int64_t *sl = tm_slot(&m, tok, tok[i], strlen(tok[i]));
        first[i] = *sl < 0 ? i : -1;
        *sl = i;
    }
    for (int64_t i = 0; i < n && s == SQ_OK; i++) {
        if (first[i] < 0) continue;   /* dict(zip(...)): first position, last score */
        const char *t = tok[i];
        size_t len = strlen(t);
        int64_t last = *tm_slot(&m, tok, t, len);
        size_t start = nm;
        for (size_t k = 1; k < len; k++) {
            if (((uint8_t)t[k] & 0xc0) == 0x80) continue;   /* split on characters */
            int64_t l = *tm_slot(&m, tok, t, k), r = *tm_slot(&m, tok, t + k, len - k);
            if (l < 0 || r < 0) continue;
            if (nm == mcap) {
                merge *p = realloc(all, (mcap *= 2) * sizeof *all);
                if (!p) {
                    s = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
                    break;
                }
                all = p;
            }
            all[nm] = (merge){.l = l, .r = r, .score = score[last], .ll = n_chars(t, k),
                              .rl = n_chars(t + k, len - k), .seq = nm};
            nm++;
        }
        qsort(all + start, nm - start, sizeof *all, cmp_local);
    }
    for (size_t i = 0; i < nm; i++) all[i].seq = i;
    qsort(all, nm, sizeof *all, cmp_global);
    for (size_t i = 0; s == SQ_OK && i < nm; i++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(tok[all[i].l]));
        cJSON_AddItemToArray(pair, cJSON_CreateString(tok[all[i].r]));
        cJSON_AddItemToArray(ml, pair);
    }
done:
    free(m.slot);
    free(first);
    free(all);
    return s;
}

static cJSON *str_replace_dec(const char *from, const char *to) {
    cJSON *d = cJSON_CreateObject(), *p = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "type", "Replace");
    cJSON_AddStringToObject(p, "String", from);
    cJSON_AddItemToObject(d, "pattern", p);
    cJSON_AddStringToObject(d, "content", to);
    return d;
}

static cJSON *typed(const char *type) {
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "type", type);
    return d;
}

/* ---- the tokenizer --------------------------------------------------------------------------- */

sq_status ckpt_gguf_tokenizer(const sq_ckpt *ck, sq_tokenizer **out, bool *found, sq_error *err) {
    const gguf *g = &ck->g;
    const char *model, *pre = "";
    uint64_t model_n, pre_n = 0;
    if (!gguf_get_str(g, "tokenizer.ggml.model", &model, &model_n)) return SQ_OK;
    if (found) *found = true;
    const bool spm = model_n == 5 && !memcmp(model, "llama", 5);
    if (!spm && !(model_n == 4 && !memcmp(model, "gpt2", 4)))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "tokenizer.ggml.model",
                            "tokenizer model '%.*s' is not supported (gpt2: byte-level BPE; "
                            "llama: SentencePiece-style BPE)",
                            (int)(model_n < 64 ? model_n : 64), model);
    const gguf_kv *tokens = gguf_find(g, "tokenizer.ggml.tokens");
    const gguf_kv *merges = gguf_find(g, "tokenizer.ggml.merges");
    const gguf_kv *types = gguf_find(g, "tokenizer.ggml.token_type");
    const gguf_kv *scores = gguf_find(g, "tokenizer.ggml.scores");
    gguf_str_iter it;
    if (!gguf_str_iter_init(g, tokens, &it) || tokens->n == 0 || tokens->n > (1u << 24))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.tokens",
                            "missing, empty, too long or not an array of strings");
    const bool have_merges = merges && merges->type == GGUF_ARRAY && merges->arr_type == GGUF_STRING;
    if (merges && !have_merges)
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.merges", "not strings");
    if (!spm && !have_merges)
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.merges",
                            "a byte-level BPE tokenizer needs its merges (missing)");
    if (spm && !have_merges &&
        (!scores || scores->type != GGUF_ARRAY || scores->n != tokens->n ||
         scores->arr_type == GGUF_STRING))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.scores",
                            "a SentencePiece-style tokenizer without merges needs one score per "
                            "token");
    if (types && (types->type != GGUF_ARRAY || types->n != tokens->n))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.token_type",
                            "not one integer per token");
    char pre_s[64] = "";
    if (gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_n) && pre_n < sizeof pre_s) {
        memcpy(pre_s, pre, (size_t)pre_n);
        pre_s[pre_n] = '\0';
    }
    bool ignore_merges = false, add_prefix = true;
    (void)gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &add_prefix);
    cJSON *pt = NULL;
    if (spm) {
        pt = typed("Metaspace");
        cJSON_AddStringToObject(pt, "replacement", "\xe2\x96\x81");
        cJSON_AddStringToObject(pt, "prepend_scheme", add_prefix ? "first" : "never");
        cJSON_AddBoolToObject(pt, "split", false);
    } else if (!(pt = pre_for(pre_s, &ignore_merges))) {
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "tokenizer.ggml.pre",
                            "pre-tokenizer '%s' is not supported (gpt2, smollm, llama-bpe / "
                            "llama3, qwen2)", pre_s);
    }
    const int64_t n = (int64_t)tokens->n;
    sq_status s = SQ_OK;
    cJSON *root = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *added = cJSON_CreateArray(), *ml = cJSON_CreateArray();
    cJSON *bpe = cJSON_CreateObject();
    char **tok = calloc((size_t)n, sizeof *tok);
    float *sc = spm ? calloc((size_t)n, sizeof *sc) : NULL;
    int64_t bos_id = -1;
    bool add_bos = spm;   /* llama.cpp and transformers add BOS to a SentencePiece vocabulary */
    (void)gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    (void)gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos_id);
    if (!tok || (spm && !sc)) s = sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    const char *str;
    uint64_t len;
    for (int64_t i = 0; s == SQ_OK && gguf_str_iter_next(&it, &str, &len); i++) {
        if (!(tok[i] = cstr(str, len))) {
            s = sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.tokens",
                             "token %" PRId64 " holds a NUL byte (or out of memory)", i);
            break;
        }
        cJSON_AddItemToObject(vocab, tok[i], cJSON_CreateNumber((double)i));
        double d = 0;
        if (sc && gguf_arr_float(g, scores, (uint64_t)i, &d)) sc[i] = (float)d;
        int64_t ty = 1;
        if (types) (void)gguf_arr_int(g, types, (uint64_t)i, &ty);
        /* CONTROL (and a SentencePiece vocabulary's UNKNOWN, as transformers adds it) ->
         * special added token; USER_DEFINED -> added token */
        if (ty == 3 || ty == 4 || (spm && ty == 2)) {
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", (double)i);
            cJSON_AddStringToObject(a, "content", tok[i]);
            cJSON_AddBoolToObject(a, "single_word", false);
            cJSON_AddBoolToObject(a, "lstrip", false);
            cJSON_AddBoolToObject(a, "rstrip", false);
            cJSON_AddBoolToObject(a, "normalized", false);
            cJSON_AddBoolToObject(a, "special", ty != 4);
            cJSON_AddItemToArray(added, a);
        }
    }
    if (s == SQ_OK && have_merges && gguf_str_iter_init(g, merges, &it))
        for (uint64_t i = 0; gguf_str_iter_next(&it, &str, &len); i++) {
            char *mg = cstr(str, len);
            if (!mg) {
                s = sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.merges",
                                 "merge %" PRIu64 " holds a NUL byte (or out of memory)", i);
                break;
            }
            cJSON_AddItemToArray(ml, cJSON_CreateString(mg));
            free(mg);
        }
    if (s == SQ_OK && !have_merges) s = spm_merges(tok, sc, n, ml, ck->path, err);
    if (s == SQ_OK && add_bos && (bos_id < 0 || bos_id >= n))
        s = sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.bos_token_id",
                         "add_bos_token is set but the BOS id is missing or past the tokens");
    char *json = NULL;
    if (s == SQ_OK) {
        cJSON_AddStringToObject(root, "version", "1.0");
        cJSON_AddItemToObject(root, "added_tokens", added);
        added = NULL;
        cJSON_AddNullToObject(root, "normalizer");
        cJSON_AddItemToObject(root, "pre_tokenizer", pt);
        pt = NULL;
        if (add_bos) cJSON_AddItemToObject(root, "post_processor", template_bos(tok[bos_id], bos_id));
        else cJSON_AddNullToObject(root, "post_processor");
        cJSON *dec;
        if (spm) {
            dec = typed("Sequence");
            cJSON *l = cJSON_CreateArray();
            cJSON_AddItemToArray(l, str_replace_dec("\xe2\x96\x81", " "));
            cJSON_AddItemToArray(l, typed("ByteFallback"));
            cJSON_AddItemToArray(l, typed("Fuse"));
            if (add_prefix) {
                cJSON *st = typed("Strip");
                cJSON_AddStringToObject(st, "content", " ");
                cJSON_AddNumberToObject(st, "start", 1);
                cJSON_AddNumberToObject(st, "stop", 0);
                cJSON_AddItemToArray(l, st);
            }
            cJSON_AddItemToObject(dec, "decoders", l);
        } else {
            dec = bytelevel(true);
        }
        cJSON_AddItemToObject(root, "decoder", dec);
        cJSON_AddStringToObject(bpe, "type", "BPE");
        cJSON_AddNullToObject(bpe, "unk_token");   /* byte fallback covers every byte */
        cJSON_AddBoolToObject(bpe, "fuse_unk", spm);
        cJSON_AddBoolToObject(bpe, "byte_fallback", spm);
        cJSON_AddBoolToObject(bpe, "ignore_merges", ignore_merges);
        cJSON_AddItemToObject(bpe, "vocab", vocab);
        cJSON_AddItemToObject(bpe, "merges", ml);
        vocab = ml = NULL;
        cJSON_AddItemToObject(root, "model", bpe);
        bpe = NULL;
        json = cJSON_PrintUnformatted(root);
        if (!json) s = sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    }
    cJSON_Delete(root);
    cJSON_Delete(vocab);
    cJSON_Delete(ml);
    cJSON_Delete(added);
    cJSON_Delete(bpe);
    cJSON_Delete(pt);
    for (int64_t i = 0; tok && i < n; i++) free(tok[i]);
    free(tok);
    free(sc);
    if (s == SQ_OK) {
        char name[600];
        snprintf(name, sizeof name, "%s (tokenizer.ggml.*)", ck->path);
        s = sq_tokenizer_load_json(json, strlen(json), name, out, err);
    }
    free(json);
    return s;
}
