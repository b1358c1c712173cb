/* Owns what a GGUF file means to shardq: its tensors under HF names (dims reversed, Llama's
 * Q / K marked for un-permuting), the model config from the llama.* / qwen2.* metadata, the
 * chat family of tokenizer.chat_template (the tokenizer itself: gguf_tokenizer.c).
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

bool ckpt_gguf_chat_default_system(const sq_ckpt *ck, char *buf, size_t buf_bytes) {
    const char *t;
    uint64_t n;
    if (!gguf_get_str(&ck->g, "tokenizer.chat_template", &t, &n)) return false;
    static const char head[] = "<|im_start|>system", end[] = "<|im_end|>";
    for (uint64_t i = 0; i + sizeof head - 1 <= n; i++) {
        if (memcmp(t + i, head, sizeof head - 1)) continue;
        uint64_t p = i + sizeof head - 1;
        if (p < n && t[p] == '\n') p += 1;                                /* a newline */
        else if (p + 1 < n && t[p] == '\\' && t[p + 1] == 'n') p += 2;  /* or Jinja's \n */
        else continue;
        uint64_t q = p;
        while (q + sizeof end - 1 <= n && memcmp(t + q, end, sizeof end - 1)) {
            if (t[q] == '{' || t[q] == '\'' || t[q] == '"' || t[q] == '\\') break;   /* not a literal */
            q++;
        }
        if (q + sizeof end - 1 > n || memcmp(t + q, end, sizeof end - 1) || q == p) continue;
        if (q - p + 1 > buf_bytes) return false;
        memcpy(buf, t + p, (size_t)(q - p));
        buf[q - p] = '\0';
        return true;
    }
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

