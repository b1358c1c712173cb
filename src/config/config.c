/* Owns config.json <-> sq_model_config for the Llama / Mistral / Qwen2 families, the
 * make-model presets and the torch dtype spellings.
 * Must never touch tensor bytes, print, or let a cJSON pointer escape this file. */
#include "shardq/config.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SUPPORTED_ARCHS "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

static const struct {
    sq_arch arch;
    const char *name, *model_type;
} k_archs[] = {
    {SQ_ARCH_LLAMA, "LlamaForCausalLM", "llama"},
    {SQ_ARCH_MISTRAL, "MistralForCausalLM", "mistral"},
    {SQ_ARCH_QWEN2, "Qwen2ForCausalLM", "qwen2"},
};
#define N_ARCHS (sizeof k_archs / sizeof k_archs[0])

const char *sq_arch_name(sq_arch a) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (k_archs[i].arch == a) return k_archs[i].name;
    return "unknown";
}

const char *sq_arch_model_type(sq_arch a) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (k_archs[i].arch == a) return k_archs[i].model_type;
    return "unknown";
}

bool sq_arch_from_name(const char *name, sq_arch *out) {
    if (!name) return false;
    for (size_t i = 0; i < N_ARCHS; i++)
        if (!strcmp(name, k_archs[i].name) || !strcmp(name, k_archs[i].model_type)) {
            *out = k_archs[i].arch;
            return true;
        }
    return false;
}

const char *sq_torch_dtype_name(sq_dtype d) {
    switch (d) {
    case SQ_DTYPE_BF16: return "bfloat16";
    case SQ_DTYPE_F16: return "float16";
    case SQ_DTYPE_F32: return "float32";
    case SQ_DTYPE_F64: return "float64";
    default: return NULL;
    }
}

bool sq_torch_dtype_from_name(const char *name, sq_dtype *out) {
    static const struct { const char *name; sq_dtype d; } k[] = {
        {"bfloat16", SQ_DTYPE_BF16}, {"bf16", SQ_DTYPE_BF16},
        {"float16", SQ_DTYPE_F16},   {"f16", SQ_DTYPE_F16},   {"half", SQ_DTYPE_F16},
        {"float32", SQ_DTYPE_F32},   {"f32", SQ_DTYPE_F32},   {"float", SQ_DTYPE_F32},
        {"float64", SQ_DTYPE_F64},
    };
    if (!name) return false;
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(name, k[i].name)) {
            *out = k[i].d;
            return true;
        }
    return false;
}

/* ---- JSON field readers: each names the field in its error ------------------------------ */

static const char *json_kind(const cJSON *j) {
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

/* Present and not null.  A key given twice: the last one wins, as with Python's json.loads
 * (which is what transformers reads config.json with). */
static const cJSON *field(const cJSON *obj, const char *key) {
    const cJSON *j = NULL, *it;
    cJSON_ArrayForEach(it, obj) {
        if (it->string && !strcmp(it->string, key)) j = it;
    }
    return (j && !cJSON_IsNull(j)) ? j : NULL;
}

/* An integral JSON number in [min, max]. */
static sq_status int_value(const cJSON *j, const char *what, int64_t min, int64_t max,
                           const char *path, int64_t *out, sq_error *err) {
    if (!cJSON_IsNumber(j))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be an integer, not %s",
                            what, json_kind(j));
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be an integer (got %g)",
                            what, v);
    if (v < (double)min || v > (double)max)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "'%s' = %.0f is out of range [%lld, %lld]", what, v, (long long)min,
                            (long long)max);
    *out = (int64_t)v;
    return SQ_OK;
}

static sq_status req_int(const cJSON *obj, const char *key, int64_t min, int64_t max,
                         const char *path, int64_t *out, sq_error *err) {
    const cJSON *j = field(obj, key);
    if (!j)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "missing required field '%s'", key);
    return int_value(j, key, min, max, path, out, err);
}

static sq_status opt_int(const cJSON *obj, const char *key, int64_t min, int64_t max,
                         int64_t dflt, const char *path, int64_t *out, sq_error *err) {
    const cJSON *j = field(obj, key);
    if (!j) {
        *out = dflt;
        return SQ_OK;
    }
    return int_value(j, key, min, max, path, out, err);
}

/* A finite number > 0 (positive = true) or >= 0. */
static sq_status opt_num(const cJSON *obj, const char *key, double dflt, const char *path,
                         double *out, sq_error *err) {
    const cJSON *j = field(obj, key);
    if (!j) {
        *out = dflt;
        return SQ_OK;
    }
    if (!cJSON_IsNumber(j))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be a number, not %s",
                            key, json_kind(j));
    if (!isfinite(j->valuedouble) || j->valuedouble <= 0)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "'%s' must be a positive finite number (got %g)", key,
                            j->valuedouble);
    *out = j->valuedouble;
    return SQ_OK;
}

static sq_status req_num(const cJSON *obj, const char *key, const char *ctx, const char *path,
                         double *out, sq_error *err) {
    if (!field(obj, key))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "%s: missing required field '%s'",
                            ctx, key);
    return opt_num(obj, key, 0, path, out, err);
}

static sq_status opt_bool(const cJSON *obj, const char *key, bool dflt, const char *path,
                          bool *out, sq_error *err) {
    const cJSON *j = field(obj, key);
    if (!j) {
        *out = dflt;
        return SQ_OK;
    }
    if (!cJSON_IsBool(j))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be true or false, not %s",
                            key, json_kind(j));
    *out = cJSON_IsTrue(j);
    return SQ_OK;
}

/* A string field copied into dst[dst_bytes]; absent/null -> dflt. */
static sq_status opt_str(const cJSON *obj, const char *key, const char *dflt, char *dst,
                         size_t dst_bytes, const char *path, sq_error *err) {
    const cJSON *j = field(obj, key);
    const char *v = dflt;
    if (j) {
        if (!cJSON_IsString(j))
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be a string, not %s",
                                key, json_kind(j));
        v = j->valuestring;
    }
    if (strlen(v) >= dst_bytes)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' is too long (%zu bytes)", key,
                            strlen(v));
    snprintf(dst, dst_bytes, "%s", v);
    return SQ_OK;
}

#define TRY(x)                                                                               \
    do {                                                                                     \
        sq_status st_ = (x);                                                                 \
        if (st_ != SQ_OK) return st_;                                                        \
    } while (0)

/* ---- the pieces of a config ------------------------------------------------------------- */

static sq_status parse_arch(const cJSON *root, const char *path, sq_model_config *c,
                            sq_error *err) {
    const cJSON *archs = field(root, "architectures");
    const char *name = NULL;
    if (archs) {
        if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) < 1 ||
            !cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "'architectures' must be a non-empty list of strings");
        name = cJSON_GetArrayItem(archs, 0)->valuestring;
        bool known = false;
        for (size_t i = 0; i < N_ARCHS; i++)
            if (!strcmp(name, k_archs[i].name)) {
                c->arch = k_archs[i].arch;
                known = true;
            }
        if (!known)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                                "architecture '%.100s' is not supported (supported: %s)", name,
                                SUPPORTED_ARCHS);
    } else {
        const cJSON *mt = field(root, "model_type");
        if (!mt)
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "missing required field 'architectures' (and no 'model_type')");
        if (!cJSON_IsString(mt))
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "'model_type' must be a string, not %s", json_kind(mt));
        bool known = false;
        for (size_t i = 0; i < N_ARCHS; i++)
            if (!strcmp(mt->valuestring, k_archs[i].model_type)) {
                c->arch = k_archs[i].arch;
                known = true;
            }
        if (!known)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                                "model_type '%.100s' is not supported (supported: %s)",
                                mt->valuestring, SUPPORTED_ARCHS);
    }
    snprintf(c->architecture, sizeof c->architecture, "%s", sq_arch_name(c->arch));
    return SQ_OK;
}

/* rope_scaling (4.x) or rope_parameters (5.x: also holds rope_theta). */
static sq_status parse_rope(const cJSON *root, const char *path, sq_model_config *c,
                            sq_error *err) {
    const cJSON *params = field(root, "rope_parameters");
    if (params && !cJSON_IsObject(params))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "'rope_parameters' must be an object, not %s", json_kind(params));
    c->rope_theta = 10000.0;
    if (field(root, "rope_theta"))
        TRY(opt_num(root, "rope_theta", 10000.0, path, &c->rope_theta, err));
    else if (params)
        TRY(opt_num(params, "rope_theta", 10000.0, path, &c->rope_theta, err));

    const cJSON *rs = field(root, "rope_scaling");
    const char *which = "rope_scaling";
    if (!rs) {
        rs = params;
        which = "rope_parameters";
    }
    memset(&c->rope_scaling, 0, sizeof c->rope_scaling);
    c->rope_scaling.kind = SQ_ROPE_DEFAULT;
    if (!rs) return SQ_OK;
    if (!cJSON_IsObject(rs))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be an object, not %s",
                            which, json_kind(rs));
    const cJSON *type = field(rs, "rope_type");
    if (!type) type = field(rs, "type");
    if (!type) {
        if (rs == params) return SQ_OK;   /* rope_parameters with just rope_theta */
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "'%s' has no 'rope_type' (or 'type')", which);
    }
    if (!cJSON_IsString(type))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "%s.rope_type must be a string",
                            which);
    const char *t = type->valuestring;
    sq_rope_scaling *r = &c->rope_scaling;
    char ctx[64];
    snprintf(ctx, sizeof ctx, "%s '%s'", which, t);
    if (!strcmp(t, "default")) {
        r->kind = SQ_ROPE_DEFAULT;
    } else if (!strcmp(t, "linear") || !strcmp(t, "dynamic")) {
        r->kind = t[0] == 'l' ? SQ_ROPE_LINEAR : SQ_ROPE_DYNAMIC;
        TRY(req_num(rs, "factor", ctx, path, &r->factor, err));
    } else if (!strcmp(t, "llama3")) {
        r->kind = SQ_ROPE_LLAMA3;
        TRY(req_num(rs, "factor", ctx, path, &r->factor, err));
        TRY(req_num(rs, "low_freq_factor", ctx, path, &r->low_freq_factor, err));
        TRY(req_num(rs, "high_freq_factor", ctx, path, &r->high_freq_factor, err));
        if (!field(rs, "original_max_position_embeddings"))
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "%s: missing required field 'original_max_position_embeddings'",
                                ctx);
        TRY(opt_int(rs, "original_max_position_embeddings", 1, INT32_MAX, 0, path,
                    &r->original_max_position_embeddings, err));
        if (r->high_freq_factor <= r->low_freq_factor)
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "%s: high_freq_factor (%g) must exceed low_freq_factor (%g)",
                                ctx, r->high_freq_factor, r->low_freq_factor);
    } else {
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "%s type '%.40s' is not supported (supported: default, linear, "
                            "dynamic, llama3)", which, t);
    }
    return SQ_OK;
}

static sq_status parse_eos(const cJSON *root, const char *path, sq_model_config *c,
                           sq_error *err) {
    const cJSON *eos = field(root, "eos_token_id");
    c->n_eos = 0;
    if (!eos) return SQ_OK;
    if (cJSON_IsArray(eos)) {
        int n = cJSON_GetArraySize(eos);
        if (n > SQ_MAX_EOS_IDS)
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "'eos_token_id' lists %d ids (at most %d)", n, SQ_MAX_EOS_IDS);
        const cJSON *it;
        cJSON_ArrayForEach(it, eos) {
            TRY(int_value(it, "eos_token_id", 0, INT32_MAX, path, &c->eos_token_ids[c->n_eos],
                          err));
            c->n_eos++;
        }
        return SQ_OK;
    }
    TRY(int_value(eos, "eos_token_id", 0, INT32_MAX, path, &c->eos_token_ids[0], err));
    c->n_eos = 1;
    return SQ_OK;
}

static sq_status parse_quant(const cJSON *root, const char *path, sq_model_config *c,
                             sq_error *err) {
    const cJSON *q = field(root, "quantization_config");
    if (!q) return SQ_OK;
    if (!cJSON_IsObject(q))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "'quantization_config' must be an object, not %s", json_kind(q));
    char method[32];
    TRY(opt_str(q, "quant_method", "bitsandbytes", method, sizeof method, path, err));
    if (strcmp(method, "bitsandbytes") != 0)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "quantization_config quant_method '%s' is not supported "
                            "(only bitsandbytes 4-bit)", method);
    bool in4 = false, in4_old = false, in8 = false;
    TRY(opt_bool(q, "load_in_4bit", false, path, &in4, err));
    TRY(opt_bool(q, "_load_in_4bit", false, path, &in4_old, err));
    TRY(opt_bool(q, "load_in_8bit", false, path, &in8, err));
    if (in8 && (in4 || in4_old))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "quantization_config: load_in_8bit and load_in_4bit both true");
    if (in8) {   /* LLM.int8: nothing else to read (the threshold is for bnb's outlier path) */
        c->bnb_8bit = true;
        return SQ_OK;
    }
    if (!(in4 || in4_old))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "quantization_config: only bitsandbytes load_in_4bit and load_in_8bit "
                            "checkpoints are supported (this one is neither)");
    c->bnb_4bit = true;
    /* BitsAndBytesConfig defaults: fp4, no double quant, compute float32 */
    TRY(opt_str(q, "bnb_4bit_quant_type", "fp4", c->bnb_quant_type, sizeof c->bnb_quant_type,
                path, err));
    if (strcmp(c->bnb_quant_type, "nf4") != 0 && strcmp(c->bnb_quant_type, "fp4") != 0)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "bnb_4bit_quant_type '%s' is not supported (nf4, fp4)",
                            c->bnb_quant_type);
    TRY(opt_bool(q, "bnb_4bit_use_double_quant", false, path, &c->bnb_double_quant, err));
    TRY(opt_str(q, "bnb_4bit_compute_dtype", "float32", c->bnb_compute_dtype,
                sizeof c->bnb_compute_dtype, path, err));
    sq_dtype d;
    if (!sq_torch_dtype_from_name(c->bnb_compute_dtype, &d))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "bnb_4bit_compute_dtype '%s' is not a float dtype",
                            c->bnb_compute_dtype);
    return SQ_OK;
}

static sq_status parse_root(const cJSON *root, const char *path, sq_model_config *c,
                            sq_error *err) {
    if (!cJSON_IsObject(root))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "config is not a JSON object (%s)",
                            json_kind(root));
    TRY(parse_arch(root, path, c, err));
    TRY(req_int(root, "hidden_size", 1, SQ_CONFIG_MAX_DIM, path, &c->hidden_size, err));
    TRY(req_int(root, "intermediate_size", 1, SQ_CONFIG_MAX_DIM, path, &c->intermediate_size,
                err));
    TRY(req_int(root, "num_hidden_layers", 1, SQ_CONFIG_MAX_LAYERS, path, &c->n_layers, err));
    TRY(req_int(root, "num_attention_heads", 1, SQ_CONFIG_MAX_DIM, path, &c->n_heads, err));
    TRY(opt_int(root, "num_key_value_heads", 1, SQ_CONFIG_MAX_DIM, c->n_heads, path,
                &c->n_kv_heads, err));
    if (field(root, "head_dim")) {
        TRY(opt_int(root, "head_dim", 1, SQ_CONFIG_MAX_DIM, 0, path, &c->head_dim, err));
    } else {
        if (c->hidden_size % c->n_heads != 0)
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "num_attention_heads (%lld) does not divide hidden_size (%lld) "
                                "and no head_dim is given",
                                (long long)c->n_heads, (long long)c->hidden_size);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    TRY(req_int(root, "vocab_size", 1, SQ_CONFIG_MAX_VOCAB, path, &c->vocab_size, err));
    TRY(opt_num(root, "rms_norm_eps", 1e-6, path, &c->rms_norm_eps, err));
    TRY(parse_rope(root, path, c, err));
    static const int64_t k_max_pos[] = {[SQ_ARCH_LLAMA] = 2048, [SQ_ARCH_MISTRAL] = 131072,
                                        [SQ_ARCH_QWEN2] = 32768};
    TRY(opt_int(root, "max_position_embeddings", 1, INT32_MAX, k_max_pos[c->arch], path,
                &c->max_position_embeddings, err));
    TRY(opt_bool(root, "tie_word_embeddings", false, path, &c->tie_word_embeddings, err));

    bool attn_bias = false, mlp_bias = false;
    TRY(opt_bool(root, "attention_bias", false, path, &attn_bias, err));
    TRY(opt_bool(root, "mlp_bias", false, path, &mlp_bias, err));
    if (mlp_bias)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "mlp_bias = true is not supported (gate/up/down without bias only)");
    switch (c->arch) {
    case SQ_ARCH_QWEN2: c->attention_bias = true; break;   /* Qwen2Attention: q/k/v bias=True */
    case SQ_ARCH_MISTRAL: c->attention_bias = false; break; /* MistralAttention has no bias */
    case SQ_ARCH_LLAMA:
        if (attn_bias)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                                "attention_bias = true on LlamaForCausalLM (q/k/v/o biases) is "
                                "not supported");
        c->attention_bias = false;
        break;
    }

    char act[32];
    TRY(opt_str(root, "hidden_act", "silu", act, sizeof act, path, err));
    if (strcmp(act, "silu") != 0)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                            "hidden_act '%s' is not supported (silu only)", act);

    /* torch_dtype (4.x) or dtype (5.x); "auto" or absent -> BF16 */
    const cJSON *dt = field(root, "torch_dtype");
    const char *dt_key = "torch_dtype";
    if (!dt) {
        dt = field(root, "dtype");
        dt_key = "dtype";
    }
    c->torch_dtype = SQ_DTYPE_BF16;
    if (dt) {
        if (!cJSON_IsString(dt))
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "'%s' must be a string, not %s",
                                dt_key, json_kind(dt));
        if (strcmp(dt->valuestring, "auto") != 0 &&
            !sq_torch_dtype_from_name(dt->valuestring, &c->torch_dtype))
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, path, NULL,
                                "%s '%.40s' is not supported (bfloat16, float16, float32)",
                                dt_key, dt->valuestring);
    }
    TRY(opt_int(root, "bos_token_id", 0, INT32_MAX, -1, path, &c->bos_token_id, err));
    TRY(parse_eos(root, path, c, err));

    bool use_sw = c->arch != SQ_ARCH_QWEN2;   /* Qwen2 records the window only when used */
    TRY(opt_bool(root, "use_sliding_window", use_sw, path, &use_sw, err));
    int64_t sw = 0;
    TRY(opt_int(root, "sliding_window", 1, INT32_MAX, 0, path, &sw, err));
    c->sliding_window = use_sw ? sw : 0;
    TRY(parse_quant(root, path, c, err));
    return sq_config_check(c, path, err);
}
#undef TRY

sq_status sq_config_check(const sq_model_config *c, const char *path, sq_error *err) {
    if ((unsigned)c->arch >= N_ARCHS)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "unknown architecture code %d",
                            (int)c->arch);
    if (!memchr(c->architecture, 0, sizeof c->architecture) ||
        !memchr(c->bnb_quant_type, 0, sizeof c->bnb_quant_type) ||
        !memchr(c->bnb_compute_dtype, 0, sizeof c->bnb_compute_dtype))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "unterminated string in config");
    struct { const char *name; int64_t v, max; } dims[] = {
        {"hidden_size", c->hidden_size, SQ_CONFIG_MAX_DIM},
        {"intermediate_size", c->intermediate_size, SQ_CONFIG_MAX_DIM},
        {"num_hidden_layers", c->n_layers, SQ_CONFIG_MAX_LAYERS},
        {"num_attention_heads", c->n_heads, SQ_CONFIG_MAX_DIM},
        {"num_key_value_heads", c->n_kv_heads, SQ_CONFIG_MAX_DIM},
        {"head_dim", c->head_dim, SQ_CONFIG_MAX_DIM},
        {"vocab_size", c->vocab_size, SQ_CONFIG_MAX_VOCAB},
        {"max_position_embeddings", c->max_position_embeddings, INT32_MAX},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v < 1 || dims[i].v > dims[i].max)
            return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                "'%s' = %lld is out of range [1, %lld]", dims[i].name,
                                (long long)dims[i].v, (long long)dims[i].max);
    if (c->n_heads % c->n_kv_heads != 0)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "num_key_value_heads (%lld) does not divide num_attention_heads "
                            "(%lld)", (long long)c->n_kv_heads, (long long)c->n_heads);
    /* q_proj is [heads*head_dim, hidden]: keep every product well inside int64 */
    if (c->n_heads * c->head_dim > SQ_CONFIG_MAX_DIM * 4)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "num_attention_heads * head_dim (%lld) is too large",
                            (long long)(c->n_heads * c->head_dim));
    if (!(isfinite(c->rms_norm_eps) && c->rms_norm_eps > 0))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "rms_norm_eps must be positive");
    if (!(isfinite(c->rope_theta) && c->rope_theta > 0))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "rope_theta must be positive");
    const sq_rope_scaling *r = &c->rope_scaling;
    if ((unsigned)r->kind > SQ_ROPE_LLAMA3)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "unknown rope scaling kind %d",
                            (int)r->kind);
    if (r->kind != SQ_ROPE_DEFAULT && !(isfinite(r->factor) && r->factor > 0))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "rope scaling factor must be positive");
    if (r->kind == SQ_ROPE_LLAMA3 &&
        !(isfinite(r->low_freq_factor) && isfinite(r->high_freq_factor) &&
          r->low_freq_factor > 0 && r->high_freq_factor > r->low_freq_factor &&
          r->original_max_position_embeddings >= 1))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "invalid llama3 rope scaling");
    if (!sq_torch_dtype_name(c->torch_dtype))
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "torch_dtype is not a float dtype");
    if (c->n_eos < 0 || c->n_eos > SQ_MAX_EOS_IDS)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "eos id count %d out of range",
                            c->n_eos);
    if (c->sliding_window < 0)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "sliding_window is negative");
    return SQ_OK;
}

sq_status sq_config_parse(const char *json_text, size_t len, const char *path,
                          sq_model_config *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    if (!json_text || len == 0)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "config is empty");
    if (len > SQ_CONFIG_MAX_FILE_BYTES)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "config is %zu bytes (more than %u)", len, SQ_CONFIG_MAX_FILE_BYTES);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json_text, len, &end, false);
    if (!root) {
        size_t at = (end && end >= json_text && end <= json_text + len)
                        ? (size_t)(end - json_text) : 0;
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "config is not valid JSON (near byte %zu)",
                            at);
    }
    sq_model_config c;
    memset(&c, 0, sizeof c);
    sq_status st = parse_root(root, path, &c, err);
    cJSON_Delete(root);
    if (st == SQ_OK) *out = c;
    return st;
}

sq_status sq_config_load(const char *path_or_dir, sq_model_config *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    if (!path_or_dir || !*path_or_dir)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no model path given");
    char path[4096];
    struct stat sb;
    if (stat(path_or_dir, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (snprintf(path, sizeof path, "%s/config.json", path_or_dir) >= (int)sizeof path)
            return sq_error_set(err, SQ_ERR_INVALID, path_or_dir, NULL, "path too long");
    } else {
        snprintf(path, sizeof path, "%s", path_or_dir);
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    sq_status st = SQ_OK;
    char *buf = NULL;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = sq_error_set(err, SQ_ERR_IO, path, NULL, "not a regular file");
        goto done;
    }
    if ((uint64_t)sb.st_size > SQ_CONFIG_MAX_FILE_BYTES) {
        st = sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "config is %lld bytes (more than %u)",
                          (long long)sb.st_size, SQ_CONFIG_MAX_FILE_BYTES);
        goto done;
    }
    size_t n = (size_t)sb.st_size;
    buf = malloc(n + 1);
    if (!buf) {
        st = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory reading config");
        goto done;
    }
    size_t got = n ? fread(buf, 1, n, f) : 0;
    if (got != n || ferror(f)) {
        st = sq_error_set(err, SQ_ERR_IO, path, NULL, "short read (%zu of %zu bytes)", got, n);
        goto done;
    }
    st = sq_config_parse(buf, n, path, out, err);
done:
    free(buf);
    fclose(f);
    return st;
}

/* ---- writing config.json ---------------------------------------------------------------- */

sq_status sq_config_to_json(const sq_model_config *c, char **json, sq_error *err) {
    *json = NULL;
    sq_status st = sq_config_check(c, NULL, err);
    if (st != SQ_OK) return st;
    cJSON *o = cJSON_CreateObject();
    if (!o) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for config JSON");
    bool ok = true;
#define ADD(x) ok = ok && ((x) != NULL)
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    ok = archs != NULL;
    if (ok) cJSON_AddItemToArray(archs, cJSON_CreateString(sq_arch_name(c->arch)));
    ADD(cJSON_AddNumberToObject(o, "attention_dropout", 0.0));
    if (c->arch == SQ_ARCH_LLAMA) ADD(cJSON_AddBoolToObject(o, "attention_bias", false));
    if (c->bos_token_id >= 0) ADD(cJSON_AddNumberToObject(o, "bos_token_id", (double)c->bos_token_id));
    else ADD(cJSON_AddNullToObject(o, "bos_token_id"));
    if (c->n_eos == 1) {
        ADD(cJSON_AddNumberToObject(o, "eos_token_id", (double)c->eos_token_ids[0]));
    } else if (c->n_eos > 1) {
        cJSON *e = cJSON_AddArrayToObject(o, "eos_token_id");
        ok = ok && e;
        for (int i = 0; ok && i < c->n_eos; i++)
            cJSON_AddItemToArray(e, cJSON_CreateNumber((double)c->eos_token_ids[i]));
    } else {
        ADD(cJSON_AddNullToObject(o, "eos_token_id"));
    }
    ADD(cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim));
    ADD(cJSON_AddStringToObject(o, "hidden_act", "silu"));
    ADD(cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size));
    ADD(cJSON_AddNumberToObject(o, "initializer_range", 0.02));
    ADD(cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size));
    ADD(cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position_embeddings));
    if (c->arch == SQ_ARCH_QWEN2)
        ADD(cJSON_AddNumberToObject(o, "max_window_layers", (double)c->n_layers));
    if (c->arch == SQ_ARCH_LLAMA) ADD(cJSON_AddBoolToObject(o, "mlp_bias", false));
    ADD(cJSON_AddStringToObject(o, "model_type", sq_arch_model_type(c->arch)));
    ADD(cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->n_heads));
    ADD(cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->n_layers));
    ADD(cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->n_kv_heads));
    ADD(cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps));
    const sq_rope_scaling *r = &c->rope_scaling;
    if (r->kind == SQ_ROPE_DEFAULT) {
        ADD(cJSON_AddNullToObject(o, "rope_scaling"));
    } else {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        ok = ok && rs;
        if (ok) {
            const char *t = r->kind == SQ_ROPE_LINEAR ? "linear"
                            : r->kind == SQ_ROPE_DYNAMIC ? "dynamic" : "llama3";
            ADD(cJSON_AddNumberToObject(rs, "factor", r->factor));
            if (r->kind == SQ_ROPE_LLAMA3) {
                ADD(cJSON_AddNumberToObject(rs, "high_freq_factor", r->high_freq_factor));
                ADD(cJSON_AddNumberToObject(rs, "low_freq_factor", r->low_freq_factor));
                ADD(cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                            (double)r->original_max_position_embeddings));
            }
            ADD(cJSON_AddStringToObject(rs, "rope_type", t));
        }
    }
    ADD(cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta));
    if (c->arch != SQ_ARCH_LLAMA) {
        if (c->sliding_window > 0)
            ADD(cJSON_AddNumberToObject(o, "sliding_window", (double)c->sliding_window));
        else
            ADD(cJSON_AddNullToObject(o, "sliding_window"));
    }
    ADD(cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings));
    ADD(cJSON_AddStringToObject(o, "torch_dtype", sq_torch_dtype_name(c->torch_dtype)));
    ADD(cJSON_AddBoolToObject(o, "use_cache", true));
    if (c->arch == SQ_ARCH_QWEN2)
        ADD(cJSON_AddBoolToObject(o, "use_sliding_window", c->sliding_window > 0));
    ADD(cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size));
    if (c->bnb_4bit) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
        ok = ok && q;
        if (ok) {
            ADD(cJSON_AddStringToObject(q, "bnb_4bit_compute_dtype", c->bnb_compute_dtype));
            ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_storage", "uint8"));
            ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_type", c->bnb_quant_type));
            ADD(cJSON_AddBoolToObject(q, "bnb_4bit_use_double_quant", c->bnb_double_quant));
            ADD(cJSON_AddBoolToObject(q, "load_in_4bit", true));
            ADD(cJSON_AddBoolToObject(q, "load_in_8bit", false));
            ADD(cJSON_AddStringToObject(q, "quant_method", "bitsandbytes"));
        }
    } else if (c->bnb_8bit) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
        ok = ok && q;
        if (ok) {
            ADD(cJSON_AddBoolToObject(q, "load_in_4bit", false));
            ADD(cJSON_AddBoolToObject(q, "load_in_8bit", true));
            ADD(cJSON_AddStringToObject(q, "quant_method", "bitsandbytes"));
        }
    }
#undef ADD
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!text) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for config JSON");
    size_t n = strlen(text);
    char *withnl = realloc(text, n + 2);
    if (!withnl) {
        free(text);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for config JSON");
    }
    withnl[n] = '\n';
    withnl[n + 1] = '\0';
    *json = withnl;
    return SQ_OK;
}

/* ---- presets ------------------------------------------------------------------------------ */

sq_status sq_config_preset(const char *preset, sq_arch family, sq_model_config *out,
                           sq_error *err) {
    memset(out, 0, sizeof *out);
    if ((unsigned)family >= N_ARCHS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "unknown family code %d",
                            (int)family);
    sq_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = family;
    snprintf(c.architecture, sizeof c.architecture, "%s", sq_arch_name(family));
    if (preset && !strcmp(preset, "tiny")) {
        /* intermediate 172 is deliberately not a multiple of 64: partial 4-bit blocks */
        c.hidden_size = 64;
        c.intermediate_size = 172;
        c.n_layers = 4;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.vocab_size = 320;
        c.max_position_embeddings = 256;
    } else if (preset && !strcmp(preset, "small")) {
        c.hidden_size = 256;
        c.intermediate_size = 704;
        c.n_layers = 6;
        c.n_heads = 8;
        c.n_kv_heads = 2;
        c.vocab_size = 2048;
        c.max_position_embeddings = 1024;
    } else {
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "unknown preset '%.40s' (known: tiny, small)", preset ? preset : "");
    }
    c.head_dim = c.hidden_size / c.n_heads;
    c.rms_norm_eps = family == SQ_ARCH_LLAMA ? 1e-5 : 1e-6;
    c.rope_theta = family == SQ_ARCH_QWEN2 ? 1000000.0 : 10000.0;
    c.rope_scaling.kind = SQ_ROPE_DEFAULT;
    c.tie_word_embeddings = family == SQ_ARCH_QWEN2;
    c.attention_bias = family == SQ_ARCH_QWEN2;
    c.torch_dtype = SQ_DTYPE_BF16;
    c.bos_token_id = 1;
    c.n_eos = 1;
    c.eos_token_ids[0] = 2;
    c.sliding_window = 0;
    sq_status st = sq_config_check(&c, NULL, err);
    if (st == SQ_OK) *out = c;
    return st;
}
