/* Owns the skeleton built from a config: module and tensor specs in HF order, lookups, and
 * byte counts per tensor / module / model under a scheme.
 * Must never read or hold weight bytes, and never print. */
#include "meta_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct builder {
    sq_meta *m;
    int cap_modules, cap_tensors;
} builder;

static int add_module(builder *b, sq_module_kind kind, int64_t layer, const char *name) {
    sq_meta *m = b->m;
    SQ_ASSERT(m->n_modules < b->cap_modules);
    sq_module_spec *md = &m->modules[m->n_modules];
    memset(md, 0, sizeof *md);
    snprintf(md->name, sizeof md->name, "%s", name);
    md->kind = kind;
    md->layer = layer;
    md->first_tensor = m->n_tensors;
    md->n_tensors = 0;
    return m->n_modules++;
}

static void add_tensor(builder *b, int module, const char *name, sq_tensor_role role,
                       int n_dims, int64_t d0, int64_t d1, bool quantizable) {
    sq_meta *m = b->m;
    SQ_ASSERT(m->n_tensors < b->cap_tensors);
    sq_tensor_spec *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);   /* zero padding: the serialization (and its hash) is exact */
    int n = snprintf(t->name, sizeof t->name, "%s", name);
    SQ_ASSERT(n > 0 && (size_t)n < sizeof t->name);
    t->role = role;
    t->module = module;
    t->layer = m->modules[module].layer;
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = n_dims == 2 ? d1 : 0;
    /* dims are bounded by the config's limits (<= 2^24 * 2^22): no overflow */
    t->n_elements = (uint64_t)d0 * (uint64_t)(n_dims == 2 ? d1 : 1);
    t->dtype = m->cfg.torch_dtype;
    t->quantizable = quantizable;
    t->stored_quant = SQ_QUANT_NONE;
    t->stored_double_quant = false;
    t->stored_blocksize = 0;
    t->stored_ggml = -1;
    t->stored_bytes = 0;
    m->modules[module].n_tensors++;
}

/* A copy of the config with every string's tail zeroed, so equal configs serialize equally. */
static void normalize_config(const sq_model_config *in, sq_model_config *out) {
    *out = *in;
    size_t n = strnlen(out->architecture, sizeof out->architecture);
    memset(out->architecture + n, 0, sizeof out->architecture - n);
    n = strnlen(out->bnb_quant_type, sizeof out->bnb_quant_type);
    memset(out->bnb_quant_type + n, 0, sizeof out->bnb_quant_type - n);
    n = strnlen(out->bnb_compute_dtype, sizeof out->bnb_compute_dtype);
    memset(out->bnb_compute_dtype + n, 0, sizeof out->bnb_compute_dtype - n);
    for (int i = out->n_eos; i < SQ_MAX_EOS_IDS; i++) out->eos_token_ids[i] = 0;
    if (out->rope_scaling.kind == SQ_ROPE_DEFAULT) {
        memset(&out->rope_scaling, 0, sizeof out->rope_scaling);
    } else if (out->rope_scaling.kind != SQ_ROPE_LLAMA3) {
        out->rope_scaling.low_freq_factor = out->rope_scaling.high_freq_factor = 0;
        out->rope_scaling.original_max_position_embeddings = 0;
    }
}

sq_status sq_meta_create(const sq_model_config *cfg, sq_meta **out, sq_error *err) {
    *out = NULL;
    if (!cfg) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no config");
    sq_status st = sq_config_check(cfg, NULL, err);
    if (st != SQ_OK) return st;
    sq_meta *m = calloc(1, sizeof *m);
    if (!m) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the skeleton");
    normalize_config(cfg, &m->cfg);
    const sq_model_config *c = &m->cfg;
    const int64_t L = c->n_layers;   /* <= SQ_CONFIG_MAX_LAYERS: the counts fit an int */
    const int per_layer = 9 + (c->attention_bias ? 3 : 0);
    builder b = {.m = m,
                 .cap_modules = (int)L + 3,
                 .cap_tensors = 1 + (int)L * per_layer + 1 + (c->tie_word_embeddings ? 0 : 1)};
    m->modules = calloc((size_t)b.cap_modules, sizeof *m->modules);
    m->tensors = calloc((size_t)b.cap_tensors, sizeof *m->tensors);
    if (!m->modules || !m->tensors) {
        sq_meta_destroy(m);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the skeleton");
    }
    const int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const int64_t Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;

    int mod = add_module(&b, SQ_MODULE_EMBED, -1, "model.embed_tokens");
    add_tensor(&b, mod, "model.embed_tokens.weight", SQ_ROLE_EMBED, 2, V, H, false);
    char mname[64], tname[96];
    for (int64_t l = 0; l < L; l++) {
        snprintf(mname, sizeof mname, "model.layers.%lld", (long long)l);
        mod = add_module(&b, SQ_MODULE_LAYER, l, mname);
#define T(suffix, role, nd, d0, d1, q)                                                       \
    do {                                                                                     \
        snprintf(tname, sizeof tname, "%s.%s", mname, suffix);                               \
        add_tensor(&b, mod, tname, role, nd, d0, d1, q);                                     \
    } while (0)
        T("input_layernorm.weight", SQ_ROLE_ATTN_NORM, 1, H, 0, false);
        T("self_attn.q_proj.weight", SQ_ROLE_Q, 2, Q, H, true);
        if (c->attention_bias) T("self_attn.q_proj.bias", SQ_ROLE_Q_BIAS, 1, Q, 0, false);
        T("self_attn.k_proj.weight", SQ_ROLE_K, 2, KV, H, true);
        if (c->attention_bias) T("self_attn.k_proj.bias", SQ_ROLE_K_BIAS, 1, KV, 0, false);
        T("self_attn.v_proj.weight", SQ_ROLE_V, 2, KV, H, true);
        if (c->attention_bias) T("self_attn.v_proj.bias", SQ_ROLE_V_BIAS, 1, KV, 0, false);
        T("self_attn.o_proj.weight", SQ_ROLE_O, 2, H, Q, true);
        T("post_attention_layernorm.weight", SQ_ROLE_MLP_NORM, 1, H, 0, false);
        T("mlp.gate_proj.weight", SQ_ROLE_GATE, 2, I, H, true);
        T("mlp.up_proj.weight", SQ_ROLE_UP, 2, I, H, true);
        T("mlp.down_proj.weight", SQ_ROLE_DOWN, 2, H, I, true);
#undef T
    }
    mod = add_module(&b, SQ_MODULE_NORM, -1, "model.norm");
    add_tensor(&b, mod, "model.norm.weight", SQ_ROLE_FINAL_NORM, 1, H, 0, false);
    if (!c->tie_word_embeddings) {
        mod = add_module(&b, SQ_MODULE_LM_HEAD, -1, "lm_head");
        add_tensor(&b, mod, "lm_head.weight", SQ_ROLE_LM_HEAD, 2, V, H, false);
    }
    SQ_ASSERT(m->n_tensors == b.cap_tensors);
    st = meta_rehash(m, err);
    if (st != SQ_OK) {
        sq_meta_destroy(m);
        return st;
    }
    *out = m;
    return SQ_OK;
}

void sq_meta_destroy(sq_meta *m) {
    if (!m) return;
    free(m->modules);
    free(m->tensors);
    free(m);
}

const sq_model_config *sq_meta_config(const sq_meta *m) { return &m->cfg; }
int sq_meta_n_modules(const sq_meta *m) { return m->n_modules; }
int sq_meta_n_tensors(const sq_meta *m) { return m->n_tensors; }

const sq_module_spec *sq_meta_module(const sq_meta *m, int i) {
    return (i >= 0 && i < m->n_modules) ? &m->modules[i] : NULL;
}

const sq_tensor_spec *sq_meta_tensor(const sq_meta *m, int i) {
    return (i >= 0 && i < m->n_tensors) ? &m->tensors[i] : NULL;
}

/* Names are regular: parse "model.layers.N." to jump to the layer's module instead of
 * scanning every spec. */
int sq_meta_find(const sq_meta *m, const char *name) {
    if (!name) return -1;
    int lo = 0, hi = m->n_tensors;
    static const char prefix[] = "model.layers.";
    if (!strncmp(name, prefix, sizeof prefix - 1)) {
        char *end = NULL;
        const char *p = name + sizeof prefix - 1;
        if (*p >= '0' && *p <= '9') {
            long long l = strtoll(p, &end, 10);
            if (end && *end == '.' && l >= 0 && l < m->cfg.n_layers) {
                const sq_module_spec *md = &m->modules[1 + l];
                lo = md->first_tensor;
                hi = md->first_tensor + md->n_tensors;
            } else {
                return -1;
            }
        }
    }
    for (int i = lo; i < hi; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

int sq_meta_layer_module(const sq_meta *m, int64_t layer) {
    return (layer >= 0 && layer < m->cfg.n_layers) ? (int)(1 + layer) : -1;
}

int sq_meta_module_of_kind(const sq_meta *m, sq_module_kind kind) {
    for (int i = 0; i < m->n_modules; i++)
        if (m->modules[i].kind == kind) return i;
    return -1;
}

uint64_t sq_meta_n_params(const sq_meta *m) {
    uint64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += m->tensors[i].n_elements;
    return n;
}

uint64_t sq_meta_tensor_bytes(const sq_meta *m, int tensor, const sq_quant_scheme *s) {
    SQ_ASSERT(tensor >= 0 && tensor < m->n_tensors && s);
    const sq_tensor_spec *t = &m->tensors[tensor];
    if (t->quantizable && s->type != SQ_QUANT_NONE)
        return sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], s);
    if (t->stored_ggml >= 0) return t->stored_bytes;
    return sq_size_dense_bytes(t->n_elements, s->dense_dtype);
}

uint64_t sq_meta_module_bytes(const sq_meta *m, int module, const sq_quant_scheme *s) {
    SQ_ASSERT(module >= 0 && module < m->n_modules);
    const sq_module_spec *md = &m->modules[module];
    uint64_t total = 0;
    for (int i = 0; i < md->n_tensors; i++) {
        uint64_t b = sq_meta_tensor_bytes(m, md->first_tensor + i, s);
        if (!sq_add_u64(total, b, &total)) return UINT64_MAX;
    }
    return total;
}

uint64_t sq_meta_total_bytes(const sq_meta *m, const sq_quant_scheme *s) {
    uint64_t total = 0;
    for (int i = 0; i < m->n_modules; i++) {
        uint64_t b = sq_meta_module_bytes(m, i, s);
        if (!sq_add_u64(total, b, &total)) return UINT64_MAX;
    }
    return total;
}

int sq_meta_n_stored_ggml(const sq_meta *m) {
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += m->tensors[i].stored_ggml >= 0;
    return n;
}

sq_status sq_meta_stored_scheme(const sq_meta *m, sq_quant_scheme *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    out->type = SQ_QUANT_NONE;
    out->blocksize = 64;
    out->dense_dtype = sq_meta_config(m)->torch_dtype;
    int n_q = 0, n_stored = 0;
    for (int i = 0; i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        if (!t->quantizable) continue;
        n_q++;
        if (t->stored_quant == SQ_QUANT_NONE) continue;
        sq_quant_scheme s = {.type = t->stored_quant, .double_quant = t->stored_double_quant,
                             .blocksize = t->stored_blocksize,
                             .dense_dtype = sq_meta_config(m)->torch_dtype};
        if (n_stored++ && !sq_quant_scheme_equal(&s, out))
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                                "pre-quantized weights disagree (%s blocksize %lld%s here, %s "
                                "blocksize %lld%s before)", sq_quant_type_name(s.type),
                                (long long)s.blocksize, s.double_quant ? " double quant" : "",
                                sq_quant_type_name(out->type), (long long)out->blocksize,
                                out->double_quant ? " double quant" : "");
        *out = s;
    }
    if (n_stored && n_stored != n_q)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "%d of %d decoder Linear weights are stored in 4 bits: a partly "
                            "quantized checkpoint is not supported", n_stored, n_q);
    return SQ_OK;
}
