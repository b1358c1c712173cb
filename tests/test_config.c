/* Tests for config: the three families from published config.json files (tests/configs/),
 * transformers 4.x and 5.x spellings, every bad input that concerns config, the presets and
 * the config.json writer's round trip. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/config.h"
#include "testutil.h"

#define CFG_DIR SQ_SOURCE_DIR "/tests/configs/"

static sq_status parse(const char *json, sq_model_config *c, sq_error *err) {
    sq_error_init(err, -1);
    return sq_config_parse(json, strlen(json), "config.json", c, err);
}

/* A minimal valid Llama config with one field replaced: "%s" is spliced in before the end. */
static char *llama_with(const char *extra) {
    static const char base[] =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
        "\"intermediate_size\": 172, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
        "\"num_key_value_heads\": 2, \"vocab_size\": 320%s}";
    size_t n = sizeof base + strlen(extra) + 8;
    char *s = malloc(n);
    snprintf(s, n, base, extra);
    return s;
}

START_TEST(llama31_8b) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load(CFG_DIR "llama-3.1-8b.json", &c, &err), SQ_OK);
    ck_assert_int_eq(c.arch, SQ_ARCH_LLAMA);
    ck_assert_str_eq(c.architecture, "LlamaForCausalLM");
    ck_assert_int_eq(c.hidden_size, 4096);
    ck_assert_int_eq(c.intermediate_size, 14336);
    ck_assert_int_eq(c.n_layers, 32);
    ck_assert_int_eq(c.n_heads, 32);
    ck_assert_int_eq(c.n_kv_heads, 8);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.vocab_size, 128256);
    ck_assert_double_eq(c.rms_norm_eps, 1e-5);
    ck_assert_double_eq(c.rope_theta, 500000.0);
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_LLAMA3);
    ck_assert_double_eq(c.rope_scaling.factor, 8.0);
    ck_assert_double_eq(c.rope_scaling.low_freq_factor, 1.0);
    ck_assert_double_eq(c.rope_scaling.high_freq_factor, 4.0);
    ck_assert_int_eq(c.rope_scaling.original_max_position_embeddings, 8192);
    ck_assert_int_eq(c.max_position_embeddings, 131072);
    ck_assert(!c.tie_word_embeddings);
    ck_assert(!c.attention_bias);
    ck_assert_int_eq(c.torch_dtype, SQ_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, 128000);
    ck_assert_int_eq(c.n_eos, 3);
    ck_assert_int_eq(c.eos_token_ids[0], 128001);
    ck_assert_int_eq(c.eos_token_ids[1], 128008);
    ck_assert_int_eq(c.eos_token_ids[2], 128009);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert(!c.bnb_4bit);
}
END_TEST

START_TEST(mistral_7b) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load(CFG_DIR "mistral-7b-v0.1.json", &c, &err), SQ_OK);
    ck_assert_int_eq(c.arch, SQ_ARCH_MISTRAL);
    ck_assert_str_eq(c.architecture, "MistralForCausalLM");
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.n_kv_heads, 8);
    ck_assert_int_eq(c.vocab_size, 32000);
    ck_assert_int_eq(c.sliding_window, 4096);
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_DEFAULT);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_token_ids[0], 2);
    ck_assert_int_eq(c.bos_token_id, 1);
    ck_assert(!c.attention_bias);
}
END_TEST

/* transformers 5: "dtype", rope_parameters holding rope_theta and the scaling; explicit
 * head_dim (128) that is not hidden / heads (160); sliding_window null. */
START_TEST(mistral_tf5_spelling) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load(CFG_DIR "mistral-nemo-tf5.json", &c, &err), SQ_OK);
    ck_assert_int_eq(c.arch, SQ_ARCH_MISTRAL);
    ck_assert_int_eq(c.hidden_size, 5120);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.n_layers, 40);
    ck_assert_double_eq(c.rope_theta, 1000000.0);
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_LINEAR);
    ck_assert_double_eq(c.rope_scaling.factor, 2.0);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(c.torch_dtype, SQ_DTYPE_BF16);
    ck_assert_double_eq(c.rms_norm_eps, 1e-6);
}
END_TEST

START_TEST(qwen2_05b) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    /* a folder path finds DIR/config.json: make one */
    char *dir = sq_test_tmpdir("cfg");
    ck_assert_ptr_nonnull(dir);
    size_t n = 0;
    char *text = sq_test_read_file(CFG_DIR "qwen2-0.5b.json", &n);
    ck_assert_ptr_nonnull(text);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_int_eq(sq_test_write_file(path, text, n), 0);
    ck_assert_int_eq(sq_config_load(dir, &c, &err), SQ_OK);
    ck_assert_int_eq(c.arch, SQ_ARCH_QWEN2);
    ck_assert_int_eq(c.hidden_size, 896);
    ck_assert_int_eq(c.n_heads, 14);
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.intermediate_size, 4864);
    ck_assert_int_eq(c.vocab_size, 151936);
    ck_assert(c.tie_word_embeddings);
    ck_assert(c.attention_bias);            /* Qwen2: q/k/v bias without the key */
    ck_assert_int_eq(c.sliding_window, 0);  /* use_sliding_window: false */
    ck_assert_double_eq(c.rope_theta, 1000000.0);
    ck_assert_int_eq(c.bos_token_id, 151643);
    ck_assert_int_eq(c.n_eos, 1);
    remove(path);
    rmdir(dir);
    free(dir);
    free(text);
}
END_TEST

START_TEST(bnb_prequantized) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load(CFG_DIR "llama-3-8b-bnb-4bit.json", &c, &err), SQ_OK);
    ck_assert(c.bnb_4bit);
    ck_assert_str_eq(c.bnb_quant_type, "nf4");
    ck_assert(c.bnb_double_quant);
    ck_assert_str_eq(c.bnb_compute_dtype, "bfloat16");
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_DEFAULT);   /* rope_scaling: null */
    /* BitsAndBytesConfig defaults when keys are missing: fp4, no double quant, float32 */
    char *s = llama_with(", \"quantization_config\": {\"load_in_4bit\": true, "
                         "\"quant_method\": \"bitsandbytes\"}");
    ck_assert_int_eq(parse(s, &c, &err), SQ_OK);
    ck_assert_str_eq(c.bnb_quant_type, "fp4");
    ck_assert(!c.bnb_double_quant);
    ck_assert_str_eq(c.bnb_compute_dtype, "float32");
    ck_assert(!c.bnb_8bit);
    free(s);
    /* bitsandbytes 8-bit (transformers' BitsAndBytesConfig(load_in_8bit=True).to_dict()) */
    s = llama_with(", \"quantization_config\": {\"_load_in_4bit\": false, \"_load_in_8bit\": true, "
                   "\"llm_int8_threshold\": 6.0, \"load_in_4bit\": false, \"load_in_8bit\": true, "
                   "\"quant_method\": \"bitsandbytes\"}");
    ck_assert_int_eq(parse(s, &c, &err), SQ_OK);
    ck_assert(c.bnb_8bit && !c.bnb_4bit);
    free(s);
}
END_TEST

START_TEST(defaults_and_spellings) {
    sq_model_config c;
    sq_error err;
    /* model_type instead of architectures; kv heads default to heads; defaults */
    ck_assert_int_eq(parse("{\"model_type\": \"qwen2\", \"hidden_size\": 32, "
                           "\"intermediate_size\": 40, \"num_hidden_layers\": 1, "
                           "\"num_attention_heads\": 4, \"vocab_size\": 10}", &c, &err), SQ_OK);
    ck_assert_int_eq(c.arch, SQ_ARCH_QWEN2);
    ck_assert_str_eq(c.architecture, "Qwen2ForCausalLM");
    ck_assert_int_eq(c.n_kv_heads, 4);
    ck_assert_int_eq(c.head_dim, 8);
    ck_assert_double_eq(c.rms_norm_eps, 1e-6);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.torch_dtype, SQ_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, -1);
    ck_assert_int_eq(c.n_eos, 0);
    ck_assert_int_eq(c.max_position_embeddings, 32768);
    ck_assert(c.attention_bias);

    char *s = llama_with(", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.5}, "
                         "\"torch_dtype\": \"float16\", \"head_dim\": null, "
                         "\"eos_token_id\": 7");
    ck_assert_int_eq(parse(s, &c, &err), SQ_OK);
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_DYNAMIC);
    ck_assert_double_eq(c.rope_scaling.factor, 2.5);
    ck_assert_int_eq(c.torch_dtype, SQ_DTYPE_F16);
    ck_assert_int_eq(c.head_dim, 16);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_token_ids[0], 7);
    free(s);
    s = llama_with(", \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 5e5}, "
                   "\"dtype\": \"float32\"");
    ck_assert_int_eq(parse(s, &c, &err), SQ_OK);
    ck_assert_int_eq(c.rope_scaling.kind, SQ_ROPE_DEFAULT);
    ck_assert_double_eq(c.rope_theta, 500000.0);
    ck_assert_int_eq(c.torch_dtype, SQ_DTYPE_F32);
    free(s);
}
END_TEST

/* Each bad config: the status, and words the one-line message must contain. */
static const struct {
    const char *json;   /* spliced into llama_with unless it starts with '{' or is raw */
    sq_status code;
    const char *must1, *must2;
} k_bad[] = {
    {"{\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 172, "
     "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 320}",
     SQ_ERR_FORMAT, "missing required field 'hidden_size'", NULL},
    {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
     "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 320}",
     SQ_ERR_FORMAT, "'intermediate_size'", NULL},
    {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 8, "
     "\"num_hidden_layers\": 4, \"num_attention_heads\": 4}",
     SQ_ERR_FORMAT, "'vocab_size'", NULL},
    {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 8, "
     "\"num_hidden_layers\": 4, \"num_attention_heads\": 5, \"vocab_size\": 320}",
     SQ_ERR_FORMAT, "num_attention_heads (5) does not divide hidden_size (64)", NULL},
    {", \"num_key_value_heads\": 3", SQ_ERR_FORMAT,
     "num_key_value_heads (3) does not divide num_attention_heads (4)", NULL},
    {"{\"architectures\": [\"GPT2LMHeadModel\"], \"hidden_size\": 64}", SQ_ERR_UNSUPPORTED,
     "GPT2LMHeadModel", "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"},
    {"{\"model_type\": \"gemma\", \"hidden_size\": 64}", SQ_ERR_UNSUPPORTED, "gemma",
     "Qwen2ForCausalLM"},
    {"{\"hidden_size\": 64}", SQ_ERR_FORMAT, "'architectures'", NULL},
    {"{\"architectures\": [], \"hidden_size\": 64}", SQ_ERR_FORMAT, "architectures", NULL},
    {", \"hidden_size\": 0", SQ_ERR_FORMAT, "'hidden_size' = 0", NULL},
    {", \"num_hidden_layers\": -3", SQ_ERR_FORMAT, "'num_hidden_layers' = -3", NULL},
    {", \"num_hidden_layers\": 100000", SQ_ERR_FORMAT, "'num_hidden_layers'", NULL},
    {", \"vocab_size\": 12.5", SQ_ERR_FORMAT, "'vocab_size' must be an integer", NULL},
    {", \"vocab_size\": \"320\"", SQ_ERR_FORMAT, "'vocab_size' must be an integer, not a string", NULL},
    {", \"head_dim\": 0", SQ_ERR_FORMAT, "'head_dim'", NULL},
    {", \"num_key_value_heads\": 0", SQ_ERR_FORMAT, "'num_key_value_heads'", NULL},
    {", \"rms_norm_eps\": -1", SQ_ERR_FORMAT, "rms_norm_eps", NULL},
    {", \"rope_theta\": \"big\"", SQ_ERR_FORMAT, "rope_theta", NULL},
    {", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}", SQ_ERR_UNSUPPORTED, "yarn", NULL},
    {", \"rope_scaling\": {\"rope_type\": \"linear\"}", SQ_ERR_FORMAT, "'factor'", NULL},
    {", \"rope_scaling\": {\"factor\": 2}", SQ_ERR_FORMAT, "rope_type", NULL},
    {", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
     "\"high_freq_factor\": 4}", SQ_ERR_FORMAT, "original_max_position_embeddings", NULL},
    {", \"rope_scaling\": 3", SQ_ERR_FORMAT, "rope_scaling", NULL},
    {", \"eos_token_id\": [1,2,3,4,5,6,7,8,9]", SQ_ERR_FORMAT, "eos_token_id", NULL},
    {", \"eos_token_id\": [1, \"x\"]", SQ_ERR_FORMAT, "eos_token_id", NULL},
    {", \"tie_word_embeddings\": 1", SQ_ERR_FORMAT, "tie_word_embeddings", NULL},
    {", \"torch_dtype\": \"int8\"", SQ_ERR_UNSUPPORTED, "int8", NULL},
    {", \"hidden_act\": \"gelu\"", SQ_ERR_UNSUPPORTED, "gelu", NULL},
    {", \"mlp_bias\": true", SQ_ERR_UNSUPPORTED, "mlp_bias", NULL},
    {", \"attention_bias\": true", SQ_ERR_UNSUPPORTED, "attention_bias", NULL},
    {", \"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}", SQ_ERR_UNSUPPORTED,
     "gptq", NULL},
    {", \"quantization_config\": {\"load_in_8bit\": true, \"load_in_4bit\": true}", SQ_ERR_FORMAT,
     "both true", NULL},
    {", \"quantization_config\": {\"load_in_4bit\": false}", SQ_ERR_UNSUPPORTED, "neither", NULL},
    {", \"quantization_config\": {\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"int4\"}",
     SQ_ERR_UNSUPPORTED, "int4", NULL},
    {"[1, 2]", SQ_ERR_FORMAT, "not a JSON object", NULL},
    {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": ", SQ_ERR_FORMAT,
     "not valid JSON", NULL},
    {"not json at all", SQ_ERR_FORMAT, "not valid JSON", NULL},
};

START_TEST(bad_configs) {
    int i = _i;
    const char *j = k_bad[i].json;
    char *s = (j[0] == '{' || j[0] == '[' || j[0] == 'n') ? strdup(j) : llama_with(j);
    sq_model_config c;
    memset(&c, 0x5a, sizeof c);
    sq_error err;
    sq_status st = parse(s, &c, &err);
    char line[2048];
    sq_error_format(&err, line, sizeof line);
    ck_assert_msg(st == k_bad[i].code, "case %d: status %d, want %d: %s", i, st, k_bad[i].code,
                  line);
    ck_assert_msg(strstr(line, k_bad[i].must1), "case %d: '%s' lacks '%s'", i, line,
                  k_bad[i].must1);
    if (k_bad[i].must2)
        ck_assert_msg(strstr(line, k_bad[i].must2), "case %d: '%s' lacks '%s'", i, line,
                      k_bad[i].must2);
    ck_assert_msg(strstr(line, "config.json: ") == line, "case %d: no file in '%s'", i, line);
    ck_assert(!strchr(line, '\n'));
    /* on failure the output is zeroed */
    sq_model_config zero;
    memset(&zero, 0, sizeof zero);
    ck_assert(memcmp(&c, &zero, sizeof c) == 0);
    free(s);
}
END_TEST

START_TEST(load_errors) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load("/nonexistent/dir/config.json", &c, &err), SQ_ERR_IO);
    ck_assert_str_eq(err.file, "/nonexistent/dir/config.json");
    char *dir = sq_test_tmpdir("cfg");
    /* a folder without config.json names DIR/config.json */
    ck_assert_int_eq(sq_config_load(dir, &c, &err), SQ_ERR_IO);
    ck_assert(strstr(err.file, "/config.json") != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_int_eq(sq_test_write_file(path, "", 0), 0);
    ck_assert_int_eq(sq_config_load(dir, &c, &err), SQ_ERR_FORMAT);
    ck_assert(strstr(err.msg, "empty") != NULL);
    remove(path);
    rmdir(dir);
    free(dir);
    ck_assert_int_eq(sq_config_parse(NULL, 0, "x", &c, &err), SQ_ERR_FORMAT);
}
END_TEST

static void assert_config_eq(const sq_model_config *a, const sq_model_config *b) {
    ck_assert_int_eq(a->arch, b->arch);
    ck_assert_str_eq(a->architecture, b->architecture);
    ck_assert_int_eq(a->hidden_size, b->hidden_size);
    ck_assert_int_eq(a->intermediate_size, b->intermediate_size);
    ck_assert_int_eq(a->n_layers, b->n_layers);
    ck_assert_int_eq(a->n_heads, b->n_heads);
    ck_assert_int_eq(a->n_kv_heads, b->n_kv_heads);
    ck_assert_int_eq(a->head_dim, b->head_dim);
    ck_assert_int_eq(a->vocab_size, b->vocab_size);
    ck_assert_double_eq(a->rms_norm_eps, b->rms_norm_eps);
    ck_assert_double_eq(a->rope_theta, b->rope_theta);
    ck_assert_int_eq(a->rope_scaling.kind, b->rope_scaling.kind);
    ck_assert_double_eq(a->rope_scaling.factor, b->rope_scaling.factor);
    ck_assert_double_eq(a->rope_scaling.low_freq_factor, b->rope_scaling.low_freq_factor);
    ck_assert_double_eq(a->rope_scaling.high_freq_factor, b->rope_scaling.high_freq_factor);
    ck_assert_int_eq(a->rope_scaling.original_max_position_embeddings,
                     b->rope_scaling.original_max_position_embeddings);
    ck_assert_int_eq(a->max_position_embeddings, b->max_position_embeddings);
    ck_assert_int_eq(a->tie_word_embeddings, b->tie_word_embeddings);
    ck_assert_int_eq(a->attention_bias, b->attention_bias);
    ck_assert_int_eq(a->torch_dtype, b->torch_dtype);
    ck_assert_int_eq(a->bos_token_id, b->bos_token_id);
    ck_assert_int_eq(a->n_eos, b->n_eos);
    for (int i = 0; i < a->n_eos; i++) ck_assert_int_eq(a->eos_token_ids[i], b->eos_token_ids[i]);
    ck_assert_int_eq(a->sliding_window, b->sliding_window);
    ck_assert_int_eq(a->bnb_4bit, b->bnb_4bit);
    ck_assert_int_eq(a->bnb_8bit, b->bnb_8bit);
    ck_assert_str_eq(a->bnb_quant_type, b->bnb_quant_type);
    ck_assert_int_eq(a->bnb_double_quant, b->bnb_double_quant);
    ck_assert_str_eq(a->bnb_compute_dtype, b->bnb_compute_dtype);
}

START_TEST(presets_and_round_trip) {
    static const char *presets[] = {"tiny", "small"};
    sq_error err;
    sq_error_init(&err, -1);
    for (int f = 0; f < 3; f++)
        for (int p = 0; p < 2; p++) {
            sq_model_config c, back;
            ck_assert_int_eq(sq_config_preset(presets[p], (sq_arch)f, &c, &err), SQ_OK);
            ck_assert_int_eq(c.arch, f);
            ck_assert_int_eq(c.n_kv_heads < c.n_heads, 1);   /* GQA */
            ck_assert(c.n_layers >= 4);
            ck_assert_int_eq(c.tie_word_embeddings, f == SQ_ARCH_QWEN2);
            ck_assert_int_eq(c.attention_bias, f == SQ_ARCH_QWEN2);
            char *json = NULL;
            ck_assert_int_eq(sq_config_to_json(&c, &json, &err), SQ_OK);
            ck_assert(strstr(json, "\"model_type\":") != NULL);
            ck_assert(strstr(json, "\"torch_dtype\":\t\"bfloat16\"") != NULL);
            ck_assert_int_eq(json[strlen(json) - 1], '\n');
            ck_assert_int_eq(sq_config_parse(json, strlen(json), "rt", &back, &err), SQ_OK);
            assert_config_eq(&c, &back);
            free(json);
        }
    sq_model_config c;
    ck_assert_int_eq(sq_config_preset("tiny", SQ_ARCH_LLAMA, &c, &err), SQ_OK);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.intermediate_size, 172);
    ck_assert_int_eq(c.intermediate_size % 64 != 0, 1);
    ck_assert_int_eq(c.n_layers, 4);
    ck_assert_int_eq(c.n_heads, 4);
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert_int_eq(c.vocab_size, 320);
    ck_assert_int_eq(c.max_position_embeddings, 256);
    ck_assert_int_eq(sq_config_preset("small", SQ_ARCH_MISTRAL, &c, &err), SQ_OK);
    ck_assert_int_eq(c.hidden_size, 256);
    ck_assert_int_eq(c.vocab_size, 2048);
    ck_assert_int_eq(c.max_position_embeddings, 1024);
    ck_assert_int_eq(sq_config_preset("huge", SQ_ARCH_LLAMA, &c, &err), SQ_ERR_INVALID);
    ck_assert(strstr(err.msg, "huge") && strstr(err.msg, "tiny, small"));

    /* the published configs survive a write / read round trip too */
    static const char *files[] = {"llama-3.1-8b.json", "mistral-7b-v0.1.json", "qwen2-0.5b.json",
                                  "llama-3-8b-bnb-4bit.json", "mistral-nemo-tf5.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, CFG_DIR "%s", files[i]);
        sq_model_config a, b;
        ck_assert_int_eq(sq_config_load(path, &a, &err), SQ_OK);
        char *json = NULL;
        ck_assert_int_eq(sq_config_to_json(&a, &json, &err), SQ_OK);
        ck_assert_int_eq(sq_config_parse(json, strlen(json), "rt", &b, &err), SQ_OK);
        assert_config_eq(&a, &b);
        free(json);
    }
}
END_TEST

START_TEST(check_rejects_bytes_from_outside) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_preset("tiny", SQ_ARCH_LLAMA, &c, &err), SQ_OK);
    ck_assert_int_eq(sq_config_check(&c, "x", &err), SQ_OK);
    sq_model_config b = c;
    b.arch = (sq_arch)7;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    b.n_kv_heads = 3;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    memset(b.architecture, 'A', sizeof b.architecture);
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    b.n_eos = 99;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    b.rms_norm_eps = NAN;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    b.torch_dtype = SQ_DTYPE_U8;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    b = c;
    b.vocab_size = -1;
    ck_assert_int_eq(sq_config_check(&b, "x", &err), SQ_ERR_FORMAT);
    char *json = NULL;
    ck_assert_int_eq(sq_config_to_json(&b, &json, &err), SQ_ERR_FORMAT);
    ck_assert_ptr_null(json);
}
END_TEST

START_TEST(names) {
    sq_arch a;
    ck_assert(sq_arch_from_name("MistralForCausalLM", &a) && a == SQ_ARCH_MISTRAL);
    ck_assert(sq_arch_from_name("qwen2", &a) && a == SQ_ARCH_QWEN2);
    ck_assert(!sq_arch_from_name("gpt2", &a));
    ck_assert_str_eq(sq_arch_name(SQ_ARCH_LLAMA), "LlamaForCausalLM");
    ck_assert_str_eq(sq_arch_model_type(SQ_ARCH_QWEN2), "qwen2");
    sq_dtype d;
    ck_assert(sq_torch_dtype_from_name("bf16", &d) && d == SQ_DTYPE_BF16);
    ck_assert(sq_torch_dtype_from_name("float16", &d) && d == SQ_DTYPE_F16);
    ck_assert(!sq_torch_dtype_from_name("int4", &d));
    ck_assert_str_eq(sq_torch_dtype_name(SQ_DTYPE_F32), "float32");
    ck_assert_ptr_null(sq_torch_dtype_name(SQ_DTYPE_I8));
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, llama31_8b);
    tcase_add_test(tc, mistral_7b);
    tcase_add_test(tc, mistral_tf5_spelling);
    tcase_add_test(tc, qwen2_05b);
    tcase_add_test(tc, bnb_prequantized);
    tcase_add_test(tc, defaults_and_spellings);
    tcase_add_loop_test(tc, bad_configs, 0, (int)(sizeof k_bad / sizeof k_bad[0]));
    tcase_add_test(tc, load_errors);
    tcase_add_test(tc, presets_and_round_trip);
    tcase_add_test(tc, check_rejects_bytes_from_outside);
    tcase_add_test(tc, names);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
