/* config: config.json -> a typed struct for the Llama / Mistral / Qwen2 families.
 * cJSON stays inside this module (and safetensors).  Plain data: sq_model_config holds no
 * pointers, so it can be copied and broadcast as bytes. */
#ifndef SHARDQ_CONFIG_H
#define SHARDQ_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"
#include "shardq/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_arch { SQ_ARCH_LLAMA = 0, SQ_ARCH_MISTRAL, SQ_ARCH_QWEN2 } sq_arch;
typedef enum sq_rope_kind {
    SQ_ROPE_DEFAULT = 0, SQ_ROPE_LINEAR, SQ_ROPE_DYNAMIC, SQ_ROPE_LLAMA3
} sq_rope_kind;

#define SQ_MAX_EOS_IDS 8

typedef struct sq_rope_scaling {
    sq_rope_kind kind;
    double factor;                       /* linear / dynamic / llama3 */
    double low_freq_factor;              /* llama3 */
    double high_freq_factor;             /* llama3 */
    int64_t original_max_position_embeddings; /* llama3 */
} sq_rope_scaling;

typedef struct sq_model_config {
    sq_arch arch;
    char architecture[64];      /* as written: "LlamaForCausalLM" … */
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t n_layers;           /* num_hidden_layers */
    int64_t n_heads;            /* num_attention_heads */
    int64_t n_kv_heads;         /* num_key_value_heads (default: n_heads) */
    int64_t head_dim;           /* default hidden_size / n_heads */
    int64_t vocab_size;
    double rms_norm_eps;
    double rope_theta;          /* default 10000 */
    sq_rope_scaling rope_scaling;
    int64_t max_position_embeddings;
    bool tie_word_embeddings;
    bool attention_bias;        /* q/k/v biases; always true for Qwen2 */
    sq_dtype torch_dtype;       /* torch_dtype / dtype; BF16 when absent */
    int64_t bos_token_id;       /* -1 when absent */
    int n_eos;                  /* eos_token_id: int or list */
    int64_t eos_token_ids[SQ_MAX_EOS_IDS];
    int64_t sliding_window;     /* 0 when absent / null (recorded, not used) */
    /* pre-quantized bitsandbytes checkpoints (quantization_config) */
    bool bnb_4bit;
    char bnb_quant_type[8];     /* "nf4" / "fp4" */
    bool bnb_double_quant;
    char bnb_compute_dtype[16]; /* "bfloat16" … */
} sq_model_config;

/* Parses config.json text.  `path` names the file in errors.  Unknown architectures fail with
 * SQ_ERR_UNSUPPORTED naming it and the supported ones; missing / invalid fields with
 * SQ_ERR_FORMAT naming the field.  On failure *out is zeroed. */
sq_status sq_config_parse(const char *json_text, size_t len, const char *path,
                          sq_model_config *out, sq_error *err);
/* Reads DIR/config.json (or a config.json path) and parses it. */
sq_status sq_config_load(const char *path_or_dir, sq_model_config *out, sq_error *err);
const char *sq_arch_name(sq_arch a);   /* "LlamaForCausalLM" … */

#ifdef __cplusplus
}
#endif
#endif
