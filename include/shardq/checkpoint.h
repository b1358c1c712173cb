/* checkpoint: the one seam between the code that uses a model's files (load/, meta/, runtime/,
 * the CLI) and the files themselves.  Two implementations: a Hugging Face safetensors folder
 * (config.json + *.safetensors [+ index], through the safetensors module) and a GGUF file
 * (llama.cpp's single-file format, v2 / v3, little-endian: src/checkpoint/gguf*.c).
 *
 * What it offers: the tensors (HF names, dtype or ggml type, shape outermost-first, where their
 * bytes are), the model config (config.json, or the GGUF's llama.* / qwen2.* metadata), the
 * tokenizer (tokenizer.json, or the GGUF's tokenizer.ggml.* metadata) and the chat family.
 * Tensor bytes are read by the caller with pread() on sq_ckpt_file_path(t->file_index) at
 * t->offset (n_bytes), or through sq_ckpt_data (the mapping; used for small blobs only).
 *
 * GGUF specifics kept behind the seam: tensor names are mapped to the HF names the skeleton
 * uses (token_embd -> model.embed_tokens, blk.N.attn_q -> model.layers.N.self_attn.q_proj, …);
 * dims (stored innermost-first) are reversed; block-quantized tensors (ggml_type >= 0 and not
 * F32/F16/BF16) have dtype U8 and n_bytes = rows * row bytes; Llama's Q / K rows are stored in
 * llama.cpp's RoPE order (rope_heads > 0): sq_ckpt_unpermute_rows puts whole rows back in HF's
 * order (it moves row bytes, so it works on quantized rows too).
 *
 * Ownership: sq_ckpt_open / sq_ckpt_close pair (close takes NULL).  Every pointer returned
 * (tensors, names, paths) points into the handle and lives until it is closed.  On failure
 * *out is NULL, nothing leaks and err names the file (and tensor / key).
 * Never: prints, exits, or reads tensor bytes at open (beyond the GGUF metadata). */
#ifndef SHARDQ_CHECKPOINT_H
#define SHARDQ_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/config.h"
#include "shardq/core.h"
#include "shardq/safetensors.h"
#include "shardq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_ckpt_format { SQ_CKPT_SAFETENSORS = 0, SQ_CKPT_GGUF } sq_ckpt_format;
typedef struct sq_ckpt sq_ckpt;

typedef struct sq_ckpt_tensor {
    const char *name;          /* HF name (a GGUF name that maps to none is kept as is) */
    const char *stored_name;   /* the name in the file (== name for safetensors) */
    sq_dtype dtype;            /* F32/F16/BF16/…; U8 for a GGUF block-quantized tensor */
    int ggml_type;             /* -1 for safetensors; GGUF: the stored ggml type number */
    int n_dims;                /* 0 for a scalar */
    int64_t shape[SQ_MAX_DIMS];/* outermost first: [out, in] for a Linear weight */
    uint64_t n_elements;
    uint64_t offset;           /* absolute byte offset in its file */
    uint64_t n_bytes;
    int file_index;            /* sq_ckpt_file_path(ck, file_index) */
    int32_t rope_heads;        /* > 0: rows in llama.cpp's RoPE order over this many heads */
} sq_ckpt_tensor;

/* Opens a model: a folder (safetensors: sq_st_model_open) or a file that starts with the GGUF
 * magic.  The config and tokenizer are read on demand (sq_ckpt_config, sq_ckpt_tokenizer).
 * GGUF: SQ_ERR_IO for an unreadable file and one shorter than its header / tensors say;
 * SQ_ERR_FORMAT for a bad magic, a version other than 2 / 3, a string / array / dims / offset
 * that does not fit, misaligned or overlapping data, duplicate names; SQ_ERR_UNSUPPORTED for a
 * tensor type shardq does not compute (named, with the tensor). */
sq_status sq_ckpt_open(const char *path, sq_ckpt **out, sq_error *err);
void sq_ckpt_close(sq_ckpt *ck);

sq_ckpt_format sq_ckpt_format_of(const sq_ckpt *ck);
/* The path it was opened with. */
const char *sq_ckpt_path(const sq_ckpt *ck);
/* True when path names a GGUF file (by its first 4 bytes); false for folders and the rest. */
bool sq_ckpt_is_gguf(const char *path);
size_t sq_ckpt_n_files(const sq_ckpt *ck);
const char *sq_ckpt_file_path(const sq_ckpt *ck, size_t i);
size_t sq_ckpt_n_tensors(const sq_ckpt *ck);
/* Tensors in a stable order (file order, then stored order). */
const sq_ckpt_tensor *sq_ckpt_tensor_at(const sq_ckpt *ck, size_t i);
/* By HF name; NULL when absent.  Binary search. */
const sq_ckpt_tensor *sq_ckpt_find(const sq_ckpt *ck, const char *name);
/* The tensor's bytes inside the file mapping (pages fault in on touch: small blobs only). */
const void *sq_ckpt_data(const sq_ckpt *ck, const sq_ckpt_tensor *t);
/* Sum of n_bytes over the tensors. */
uint64_t sq_ckpt_data_bytes(const sq_ckpt *ck);

/* The model config: config.json of a folder, or the GGUF's metadata (general.architecture
 * llama / qwen2; <arch>.block_count, embedding_length, feed_forward_length,
 * attention.head_count[_kv], attention.key_length, rope.freq_base, rope.scaling.*,
 * attention.layer_norm_rms_epsilon, context_length; vocab from tokenizer.ggml.tokens; tied
 * when there is no output.weight; torch_dtype F32).  On failure *out is zeroed; an unknown
 * architecture is SQ_ERR_UNSUPPORTED naming it. */
sq_status sq_ckpt_config(const sq_ckpt *ck, sq_model_config *out, sq_error *err);

/* The tokenizer: folder/tokenizer.json, or one built from the GGUF's tokenizer.ggml.* keys.
 * None there: *out NULL and SQ_OK with *found false (found may be NULL). */
sq_status sq_ckpt_tokenizer(const sq_ckpt *ck, sq_tokenizer **out, bool *found, sq_error *err);
/* The chat family the checkpoint's template names (GGUF tokenizer.chat_template: <|im_start|>
 * ChatML, <|start_header_id|> Llama-3, [INST] Mistral); -1 when it names none (guess from the
 * tokenizer's special tokens then). */
int sq_ckpt_chat_family(const sq_ckpt *ck);
/* The system message a ChatML template writes when the conversation has none (a literal
 * "<|im_start|>system\nTEXT<|im_end|>" in tokenizer.chat_template, as SmolLM2's and Qwen2's
 * templates hold): copied NUL-terminated into buf; false when there is none or it does not fit
 * (buf untouched then). */
bool sq_ckpt_chat_default_system(const sq_ckpt *ck, char *buf, size_t buf_bytes);

/* Puts the rows of t (t->shape[0] rows of row_bytes each, in data) back in HF order when
 * t->rope_heads > 0 (llama.cpp's permute: within each head, row 2i + j of the file is HF row
 * j * head_dim / 2 + i); nothing to do otherwise.  SQ_ERR_FORMAT when the rows do not divide
 * into heads of even size; SQ_ERR_NOMEM. */
sq_status sq_ckpt_unpermute_rows(const sq_ckpt_tensor *t, void *data, uint64_t row_bytes,
                                 sq_error *err);

/* GGUF header check on bytes in memory (the fuzzer's entry): buf is the file's prefix and
 * file_size its size.  Parses the header, every metadata key / value and tensor info, checks
 * them as sq_ckpt_open does, and frees everything.  On success *n_tensors is the count. */
sq_status sq_gguf_check(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                        const char *path, size_t *n_tensors, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
