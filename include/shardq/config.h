/* config: config.json -> a typed struct for the Llama / Mistral / Qwen2 families, and back
 * (make-model writes config.json through sq_config_to_json).
 * cJSON stays inside this module (and safetensors).  Plain data: sq_model_config holds no
 * pointers, so it can be copied and broadcast as bytes.
 *
 * Accepted spellings (transformers 4.x and 5.x): architectures[0] (or model_type when
 * architectures is absent); torch_dtype or dtype; rope_theta at top level or inside
 * rope_parameters; rope_scaling or rope_parameters with "rope_type" or "type"; eos_token_id an
 * int or a list; head_dim absent or null (= hidden / heads).
 * Limits (so that nothing downstream allocates by an untrusted length or overflows): every dim
 * in [1, SQ_CONFIG_MAX_DIM], vocab_size <= SQ_CONFIG_MAX_VOCAB, num_hidden_layers <=
 * SQ_CONFIG_MAX_LAYERS.
 * Rejected as SQ_ERR_UNSUPPORTED (well-formed but not what the backends compute): a hidden_act
 * other than silu, mlp_bias = true, attention_bias = true on Llama (it adds an o_proj bias),
 * rope types other than default / linear / dynamic / llama3, non-bitsandbytes or 8-bit
 * quantization_config. */
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
#define SQ_CONFIG_MAX_DIM (1 << 20)         /* hidden, intermediate, heads, head_dim */
#define SQ_CONFIG_MAX_VOCAB (1 << 24)
#define SQ_CONFIG_MAX_LAYERS 4096
#define SQ_CONFIG_MAX_FILE_BYTES (16u << 20) /* config.json larger than this is refused */

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
    int64_t sliding_window;     /* 0 when absent / null, or Qwen2 with use_sliding_window false
                                   (recorded, not used) */
    /* pre-quantized bitsandbytes checkpoints (quantization_config) */
    bool bnb_4bit;
    bool bnb_8bit;              /* load_in_8bit: LLM.int8 weights (weight int8 + SCB) */
    char bnb_quant_type[8];     /* "nf4" / "fp4" */
    bool bnb_double_quant;
    char bnb_compute_dtype[16]; /* "bfloat16" … */
} sq_model_config;

/* Parses config.json text (need not be NUL-terminated).  `path` names the file in errors (may
 * be NULL).  Unknown architectures fail with SQ_ERR_UNSUPPORTED naming it and the supported
 * ones; missing / invalid fields with SQ_ERR_FORMAT naming the field.  The result passes
 * sq_config_check.  On failure *out is zeroed. */
sq_status sq_config_parse(const char *json_text, size_t len, const char *path,
                          sq_model_config *out, sq_error *err);
/* Reads DIR/config.json (or a config.json path) and parses it.  Files larger than
 * SQ_CONFIG_MAX_FILE_BYTES are refused.  On failure *out is zeroed. */
sq_status sq_config_load(const char *path_or_dir, sq_model_config *out, sq_error *err);
/* Checks the invariants every consumer relies on (dims in range, heads divide, head_dim set,
 * eps / theta positive and finite, n_eos in range, strings NUL-terminated, known enums).
 * Used on configs that arrive as bytes (another rank).  `path` names the source in errors. */
sq_status sq_config_check(const sq_model_config *c, const char *path, sq_error *err);
/* config.json text in transformers' own format (architectures, model_type, torch_dtype,
 * rope_theta, rope_scaling, …) that LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM
 * load and that sq_config_parse reads back to an equal struct.  *json is malloc'd (caller
 * frees), NUL-terminated, ends with a newline.  On failure *json is NULL. */
sq_status sq_config_to_json(const sq_model_config *c, char **json, sq_error *err);
/* The make-model presets: "tiny" (a few MB: hidden 64, 4 layers, 4 heads, 2 kv heads,
 * intermediate 172, vocab 320, 256 positions) and "small" (tens of MB: hidden 256, 6 layers,
 * 8 heads, 2 kv heads, intermediate 704, vocab 2048, 1024 positions) for one family.  Qwen2
 * presets are tied (like Qwen2-0.5B) and carry q/k/v biases; Llama / Mistral are untied.
 * dtype BF16.  Unknown preset: SQ_ERR_INVALID listing the known ones; *out zeroed. */
sq_status sq_config_preset(const char *preset, sq_arch family, sq_model_config *out,
                           sq_error *err);
const char *sq_arch_name(sq_arch a);   /* "LlamaForCausalLM" … */
const char *sq_arch_model_type(sq_arch a);   /* "llama", "mistral", "qwen2" */
/* Family by architecture name ("LlamaForCausalLM") or model_type / short name ("llama"). */
bool sq_arch_from_name(const char *name, sq_arch *out);
/* "bfloat16", "float16", "float32", "float64" (torch's spelling); NULL for other dtypes. */
const char *sq_torch_dtype_name(sq_dtype d);
/* Inverse of sq_torch_dtype_name (also accepts "bf16", "f16"/"half", "f32"/"float"). */
bool sq_torch_dtype_from_name(const char *name, sq_dtype *out);

#ifdef __cplusplus
}
#endif
#endif
