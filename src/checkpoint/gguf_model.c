/* Owns what a GGUF file means to shardq: its tensors under HF names (dims reversed, Llama's
 * Q / K marked for un-permuting), the model config from the llama.* / qwen2.* metadata, the
 * tokenizer built from tokenizer.ggml.* (as a tokenizer.json handed to the tokenizer module:
 * one tokenizer implementation, two sources), and the chat family of tokenizer.chat_template.
 * Must never read tensor data or print. */
#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_impl.h"

/* ---- names ----------------------------------------------------------------------------------- */

static const struct { const char *gguf, *hf; } k_layer_names[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},   {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

/* The HF name of a GGUF tensor name (malloc'd; the GGUF name itself when none maps). */
static char *hf_name(const char *g) {
    char buf[160];
    const char *hf = NULL;
    if (!strcmp(g, "token_embd.weight")) hf = "model.embed_tokens.weight";
    else if (!strcmp(g, "output_norm.weight")) hf = "model.norm.weight";
    else if (!strcmp(g, "output.weight")) hf = "lm_head.weight";
    else if (!strncmp(g, "blk.", 4)) {
        char *end = NULL;
        unsigned long layer = strtoul(g + 4, &end, 10);
        if (end != g + 4 && *end == '.' && layer < 100000)
            for (size_t i = 0; i < sizeof k_layer_names / sizeof k_layer_names[0]; i++)
                if (!strcmp(end + 1, k_layer_names[i].gguf)) {
                    snprintf(buf, sizeof buf, "model.layers.%lu.%s", layer, k_layer_names[i].hf);
                    hf = buf;
                }
    }
    if (!hf) hf = g;
    size_t n = strlen(hf) + 1;
    char *p = malloc(n);
    return p ? memcpy(p, hf, n) : NULL;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* The architecture string (NUL-terminated copy) or "" when absent. */
static void arch_of(const gguf *g, char *out, size_t cap) {
    const char *s;
    uint64_t n;
    out[0] = '\0';
    if (gguf_get_str(g, "general.architecture", &s, &n) && n < cap) {
        memcpy(out, s, (size_t)n);
        out[n] = '\0';
    }
}

static bool arch_int(const gguf *g, const char *arch, const char *key, int64_t *v) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return gguf_get_int(g, k, v);
}

sq_status ckpt_gguf_open(sq_ckpt *ck, sq_error *err) {
    const gguf *g = &ck->g;
    char arch[64];
    arch_of(g, arch, sizeof arch);
    int64_t heads = 0, kv_heads = 0;
    bool llama = !strcmp(arch, "llama");
    if (llama) {
        arch_int(g, arch, "attention.head_count", &heads);
        if (!arch_int(g, arch, "attention.head_count_kv", &kv_heads)) kv_heads = heads;
    }
    ck->n_tensors = (size_t)g->n_ti;
    ck->tensors = calloc(ck->n_tensors ? ck->n_tensors : 1, sizeof *ck->tensors);
    ck->names = calloc(ck->n_tensors ? ck->n_tensors : 1, sizeof *ck->names);
    if (!ck->tensors || !ck->names) return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const gguf_ti *ti = &g->ti[i];
        sq_ckpt_tensor *t = &ck->tensors[i];
        if (!gguf_type_supported(ti->type)) {
            const char *tn = gguf_type_name(ti->type);
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, ti->name,
                                "tensor type %s is not supported (supported: F32, F16, BF16, Q8_0, "
                                "Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)", tn ? tn : "(unknown)");
        }
        if (!(ck->names[i] = hf_name(ti->name)))
            return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
        t->name = ck->names[i];
        t->stored_name = ti->name;
        t->ggml_type = (int)ti->type;
        t->dtype = ti->type == 0 ? SQ_DTYPE_F32 : ti->type == 1 ? SQ_DTYPE_F16
                 : ti->type == 30 ? SQ_DTYPE_BF16 : SQ_DTYPE_U8;
        t->n_dims = (int)ti->n_dims;
        t->n_elements = 1;
        for (uint32_t d = 0; d < ti->n_dims; d++) {
            t->shape[d] = (int64_t)ti->ne[ti->n_dims - 1 - d];
            t->n_elements *= ti->ne[d];
        }
        t->offset = g->data_start + ti->rel_off;
        t->n_bytes = ti->n_bytes;
        t->file_index = 0;
        if (llama && ends_with(ti->name, ".attn_q.weight")) t->rope_heads = (int32_t)heads;
        if (llama && ends_with(ti->name, ".attn_k.weight")) t->rope_heads = (int32_t)kv_heads;
        if (t->rope_heads < 0 || t->rope_heads > (1 << 20)) t->rope_heads = 0;
    }
    return SQ_OK;
}

/* ---- config ---------------------------------------------------------------------------------- */

static sq_status need_int(const sq_ckpt *ck, const char *arch, const char *key, int64_t *v,
                          sq_error *err) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (!gguf_get_int(&ck->g, k, v))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, k,
                            gguf_find(&ck->g, k) ? "metadata key is not an integer"
                                                 : "metadata key is missing");
    return SQ_OK;
}

sq_status ckpt_gguf_config(const sq_ckpt *ck, sq_model_config *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    const gguf *g = &ck->g;
    sq_model_config c;
    memset(&c, 0, sizeof c);
    char arch[64];
    arch_of(g, arch, sizeof arch);
    if (!arch[0])
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "general.architecture",
                            "metadata key is missing or not a string");
    if (!strcmp(arch, "llama")) {
        c.arch = SQ_ARCH_LLAMA;
    } else if (!strcmp(arch, "qwen2")) {
        c.arch = SQ_ARCH_QWEN2;
        c.attention_bias = true;
    } else {
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "general.architecture",
                            "architecture '%s' is not supported (supported: llama (and Mistral "
                            "files), qwen2)", arch);
    }
    snprintf(c.architecture, sizeof c.architecture, "%s", sq_arch_name(c.arch));
    sq_status s;
    if ((s = need_int(ck, arch, "block_count", &c.n_layers, err)) ||
        (s = need_int(ck, arch, "embedding_length", &c.hidden_size, err)) ||
        (s = need_int(ck, arch, "feed_forward_length", &c.intermediate_size, err)) ||
        (s = need_int(ck, arch, "attention.head_count", &c.n_heads, err)))
        return s;
    if (!arch_int(g, arch, "attention.head_count_kv", &c.n_kv_heads)) c.n_kv_heads = c.n_heads;
    if (!arch_int(g, arch, "context_length", &c.max_position_embeddings))
        c.max_position_embeddings = 4096;
    c.head_dim = c.n_heads > 0 ? c.hidden_size / c.n_heads : 0;
    int64_t kl = 0, rd = 0;
    if (arch_int(g, arch, "attention.key_length", &kl)) c.head_dim = kl;
    if (arch_int(g, arch, "rope.dimension_count", &rd) && rd != c.head_dim)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "rope.dimension_count",
                            "partial rotary embeddings (%lld of head_dim %lld) are not supported",
                            (long long)rd, (long long)c.head_dim);
    char k[160];
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
    if (!gguf_get_float(g, k, &c.rms_norm_eps))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, k, "metadata key is missing");
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    if (!gguf_get_float(g, k, &c.rope_theta)) c.rope_theta = 10000.0;
    /* rope scaling: rope.scaling.type (none / linear), or the older rope.scale_linear */
    c.rope_scaling.kind = SQ_ROPE_DEFAULT;
    const char *st;
    uint64_t stn;
    double factor = 0;
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    if (gguf_get_str(g, k, &st, &stn) && !(stn == 4 && !memcmp(st, "none", 4))) {
        if (!(stn == 6 && !memcmp(st, "linear", 6)))
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, k,
                                "rope scaling '%.*s' is not supported (none, linear)", (int)stn, st);
        snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
        if (!gguf_get_float(g, k, &factor) || !(factor > 0))
            return sq_error_set(err, SQ_ERR_FORMAT, ck->path, k, "linear rope scaling without a factor");
    } else {
        snprintf(k, sizeof k, "%s.rope.scale_linear", arch);
        if (gguf_get_float(g, k, &factor) && factor != 1.0 && !(factor > 0))
            return sq_error_set(err, SQ_ERR_FORMAT, ck->path, k, "bad factor");
        if (factor == 1.0) factor = 0;
    }
    if (factor > 0) {
        c.rope_scaling.kind = SQ_ROPE_LINEAR;
        c.rope_scaling.factor = factor;
    }
    if (sq_ckpt_find(ck, "rope_freqs.weight"))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "rope_freqs.weight",
                            "per-frequency rope factors (Llama 3.1-style scaling baked into the "
                            "file) are not supported");
    const gguf_kv *toks = gguf_find(g, "tokenizer.ggml.tokens");
    if (toks && toks->type == GGUF_ARRAY) {
        c.vocab_size = (int64_t)toks->n;
    } else if (!arch_int(g, arch, "vocab_size", &c.vocab_size)) {
        const sq_ckpt_tensor *e = sq_ckpt_find(ck, "model.embed_tokens.weight");
        if (!e || e->n_dims != 2)
            return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.tokens",
                                "no vocabulary size (no token list, no %s.vocab_size)", arch);
        c.vocab_size = e->shape[0];
    }
    c.tie_word_embeddings = sq_ckpt_find(ck, "lm_head.weight") == NULL;
    c.torch_dtype = SQ_DTYPE_F32;
    int64_t v;
    c.bos_token_id = gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v) ? v : -1;
    if (gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v)) c.eos_token_ids[c.n_eos++] = v;
    if (gguf_get_int(g, "tokenizer.ggml.eot_token_id", &v) && (c.n_eos == 0 || v != c.eos_token_ids[0]))
        c.eos_token_ids[c.n_eos++] = v;
    c.sliding_window = 0;
    s = sq_config_check(&c, ck->path, err);
    if (s != SQ_OK) return s;
    *out = c;
    return SQ_OK;
}

/* ---- chat family ----------------------------------------------------------------------------- */

static bool contains(const char *s, uint64_t n, const char *needle) {
    size_t m = strlen(needle);
    for (uint64_t i = 0; i + m <= n; i++)
        if (!memcmp(s + i, needle, m)) return true;
    return false;
}

int ckpt_gguf_chat_family(const sq_ckpt *ck) {
    const char *t;
    uint64_t n;
    if (!gguf_get_str(&ck->g, "tokenizer.chat_template", &t, &n)) return -1;
    if (contains(t, n, "<|start_header_id|>")) return SQ_CHAT_LLAMA3;
    if (contains(t, n, "<|im_start|>")) return SQ_CHAT_CHATML;
    if (contains(t, n, "[INST]")) return SQ_CHAT_MISTRAL;
    return -1;
}

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

sq_status ckpt_gguf_tokenizer(const sq_ckpt *ck, sq_tokenizer **out, bool *found, sq_error *err) {
    const gguf *g = &ck->g;
    const char *model, *pre = "";
    uint64_t model_n, pre_n = 0;
    if (!gguf_get_str(g, "tokenizer.ggml.model", &model, &model_n)) return SQ_OK;
    if (found) *found = true;
    if (!(model_n == 4 && !memcmp(model, "gpt2", 4)))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "tokenizer.ggml.model",
                            "tokenizer model '%.*s' is not supported (gpt2: byte-level BPE)",
                            (int)(model_n < 64 ? model_n : 64), model);
    const gguf_kv *tokens = gguf_find(g, "tokenizer.ggml.tokens");
    const gguf_kv *merges = gguf_find(g, "tokenizer.ggml.merges");
    const gguf_kv *types = gguf_find(g, "tokenizer.ggml.token_type");
    gguf_str_iter it;
    if (!gguf_str_iter_init(g, tokens, &it) || tokens->n == 0)
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.tokens",
                            "missing, empty or not an array of strings");
    if (!merges || merges->type != GGUF_ARRAY || merges->arr_type != GGUF_STRING)
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.merges",
                            "a byte-level BPE tokenizer needs its merges (missing or not strings)");
    if (types && (types->type != GGUF_ARRAY || types->n != tokens->n))
        return sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.token_type",
                            "not one integer per token");
    char pre_s[64] = "";
    if (gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_n) && pre_n < sizeof pre_s) {
        memcpy(pre_s, pre, (size_t)pre_n);
        pre_s[pre_n] = '\0';
    }
    bool ignore_merges = false;
    cJSON *pt = pre_for(pre_s, &ignore_merges);
    if (!pt)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, ck->path, "tokenizer.ggml.pre",
                            "pre-tokenizer '%s' is not supported (gpt2, smollm, llama-bpe / "
                            "llama3, qwen2)", pre_s);
    sq_status s = SQ_OK;
    cJSON *root = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *added = cJSON_CreateArray(), *ml = cJSON_CreateArray();
    cJSON *bpe = cJSON_CreateObject();
    char *bos_str = NULL;
    int64_t bos_id = -1;
    bool add_bos = false;
    (void)gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    (void)gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos_id);
    const char *str;
    uint64_t len;
    for (uint64_t i = 0; s == SQ_OK && gguf_str_iter_next(&it, &str, &len); i++) {
        char *tok = cstr(str, len);
        if (!tok) {
            s = sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.tokens",
                             "token %" PRIu64 " holds a NUL byte (or out of memory)", i);
            break;
        }
        cJSON_AddItemToObject(vocab, tok, cJSON_CreateNumber((double)i));
        int64_t ty = 1;
        if (types) (void)gguf_arr_int(g, types, i, &ty);
        if (ty == 3 || ty == 4) {   /* CONTROL -> special added token; USER_DEFINED -> added */
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", (double)i);
            cJSON_AddStringToObject(a, "content", tok);
            cJSON_AddBoolToObject(a, "single_word", false);
            cJSON_AddBoolToObject(a, "lstrip", false);
            cJSON_AddBoolToObject(a, "rstrip", false);
            cJSON_AddBoolToObject(a, "normalized", false);
            cJSON_AddBoolToObject(a, "special", ty == 3);
            cJSON_AddItemToArray(added, a);
        }
        if ((int64_t)i == bos_id) bos_str = tok;
        else free(tok);
    }
    if (s == SQ_OK && gguf_str_iter_init(g, merges, &it))
        for (uint64_t i = 0; gguf_str_iter_next(&it, &str, &len); i++) {
            char *m = cstr(str, len);
            if (!m) {
                s = sq_error_set(err, SQ_ERR_FORMAT, ck->path, "tokenizer.ggml.merges",
                                 "merge %" PRIu64 " holds a NUL byte (or out of memory)", i);
                break;
            }
            cJSON_AddItemToArray(ml, cJSON_CreateString(m));
            free(m);
        }
    if (s == SQ_OK && add_bos && !bos_str)
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
        if (add_bos) cJSON_AddItemToObject(root, "post_processor", template_bos(bos_str, bos_id));
        else cJSON_AddNullToObject(root, "post_processor");
        cJSON *dec = bytelevel(true);
        cJSON_AddItemToObject(root, "decoder", dec);
        cJSON_AddStringToObject(bpe, "type", "BPE");
        cJSON_AddNullToObject(bpe, "unk_token");
        cJSON_AddBoolToObject(bpe, "fuse_unk", false);
        cJSON_AddBoolToObject(bpe, "byte_fallback", false);
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
    free(bos_str);
    if (s == SQ_OK) {
        char name[600];
        snprintf(name, sizeof name, "%s (tokenizer.ggml.*)", ck->path);
        s = sq_tokenizer_load_json(json, strlen(json), name, out, err);
    }
    free(json);
    return s;
}
