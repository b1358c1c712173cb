/* shardq tokenizer: text in, token ids out, and back, from a Hugging Face tokenizer.json.
 *
 * Supported: model type "BPE" of the two kinds the Llama / Mistral / Qwen2 families ship:
 *   - byte-level (GPT-2, Llama-3, Qwen2): ByteLevel pre-tokenizer + decoder, optionally after a
 *     Split pre-tokenizer whose regex is one of the GPT-2, Llama-3 or Qwen2 patterns (matched
 *     by hand-written matchers, recognised by comparing the pattern string);
 *   - SentencePiece-style (Llama-2, Mistral): Prepend/Replace normalizers or the Metaspace
 *     pre-tokenizer, byte_fallback <0xNN> tokens, Replace/ByteFallback/Fuse/Strip or Metaspace
 *     decoders.
 * Added / special tokens are matched before BPE as the tokenizers library does (leftmost
 * longest; "normalized" tokens after the normalizer; lstrip/rstrip/single_word honoured), and
 * the TemplateProcessing post-processor adds BOS and the like when add_special is true.
 * Anything else (Unigram, WordPiece, another regex, an NFKC normalizer, ...) is refused at load
 * time with SQ_ERR_UNSUPPORTED and a message naming it.
 *
 * Ownership: sq_tokenizer_load() / sq_tokenizer_destroy() pair (destroy takes NULL); a loaded
 * tokenizer is read-only, so encode/decode may run from many threads at once.  Id arrays and
 * texts returned by encode, decode and sq_chat_format are malloc'd: the caller frees them.
 * Texts are UTF-8, counted in bytes, and also NUL-terminated for convenience.
 * Token ids are int32_t (the tokenizers library's u32 ids all fit).
 * Never: print, exit, or keep global state. */
#ifndef SHARDQ_TOKENIZER_H
#define SHARDQ_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sq_tokenizer sq_tokenizer;

/* Reads and validates a tokenizer.json.  Errors name the file: SQ_ERR_IO (unreadable),
 * SQ_ERR_FORMAT (bad JSON, missing/ill-typed fields, a merge or special token not in the
 * vocabulary), SQ_ERR_UNSUPPORTED (model type, normalizer, pre-tokenizer, decoder,
 * post-processor or Split regex shardq does not implement: the message names it).
 * On failure *out is NULL and nothing leaks. */
sq_status sq_tokenizer_load(const char *path, sq_tokenizer **out, sq_error *err);
/* The same from JSON text in memory (json need not be NUL-terminated); `name` is used in
 * error messages as the file name (NULL: "tokenizer.json"). */
sq_status sq_tokenizer_load_json(const char *json, size_t json_bytes, const char *name,
                                 sq_tokenizer **out, sq_error *err);
void sq_tokenizer_destroy(sq_tokenizer *tok);

/* Encodes text[0, text_bytes) (UTF-8; embedded NULs are characters like any other).
 * add_special: apply the post-processor (BOS etc.); special-token strings in the text are
 * recognised either way, as in the tokenizers library.  On success *ids (malloc'd, may be
 * NULL when *n_ids is 0) holds *n_ids ids.  Invalid UTF-8 -> SQ_ERR_INVALID naming the byte
 * offset.  On failure *ids is NULL and *n_ids 0. */
sq_status sq_tokenizer_encode(const sq_tokenizer *tok, const char *text, size_t text_bytes,
                              bool add_special, int32_t **ids, size_t *n_ids, sq_error *err);

/* Decodes ids through the tokenizer's decoder.  skip_special drops special tokens.  Ids with
 * no token (past the vocabulary, as a model's padded embedding can produce) are skipped, as
 * the tokenizers library does; a negative id is SQ_ERR_INVALID.  Byte sequences that are not
 * UTF-8 become U+FFFD the way the library does it, so *text is always valid UTF-8.
 * *text is malloc'd and NUL-terminated; *text_bytes excludes the NUL.  On failure *text is NULL. */
sq_status sq_tokenizer_decode(const sq_tokenizer *tok, const int32_t *ids, size_t n_ids,
                              bool skip_special, char **text, size_t *text_bytes, sq_error *err);

/* 1 + the largest id of the model vocabulary and the added tokens. */
int32_t sq_tokenizer_vocab_size(const sq_tokenizer *tok);
/* The first special token the post-processor puts before a single sequence (Llama: <s>,
 * Llama-3: <|begin_of_text|>), or -1 when it adds none. */
int32_t sq_tokenizer_bos_id(const sq_tokenizer *tok);
/* The end-of-sequence token found among the special tokens ("</s>", "<|end_of_text|>",
 * "<|endoftext|>", in that order), or -1.  A model's config.json / generation_config.json
 * says better when it says; this is the fallback. */
int32_t sq_tokenizer_eos_id(const sq_tokenizer *tok);
/* The token's string as stored (byte-level tokens in their GPT-2 unicode form, SentencePiece
 * ones with U+2581), pointing into the tokenizer (valid until destroy); NULL for an unknown id.
 * *bytes (may be NULL) gets its length. */
const char *sq_tokenizer_token_text(const sq_tokenizer *tok, int32_t id, size_t *bytes);
/* The id of a token string (added tokens first, then the model vocabulary), or -1. */
int32_t sq_tokenizer_token_id(const sq_tokenizer *tok, const char *text, size_t bytes);
bool sq_tokenizer_is_special(const sq_tokenizer *tok, int32_t id);

/* ---- streaming decode ---------------------------------------------------------------------
 * Feeds ids one at a time and gets the text they add, exactly the text sq_tokenizer_decode()
 * gives for all ids pushed so far once sq_detok_stream_finish() has run.  Text that ends in an
 * incomplete UTF-8 sequence (a character split over byte tokens) is held back until a later
 * token completes it.  The stream keeps a pointer to tok: destroy the stream first. */
typedef struct sq_detok_stream sq_detok_stream;
sq_status sq_detok_stream_create(const sq_tokenizer *tok, bool skip_special,
                                 sq_detok_stream **out, sq_error *err);
/* Pushes one id.  *text points into the stream (valid until its next call) and *text_bytes
 * may be 0 when nothing is ready.  On failure the stream is unchanged. */
sq_status sq_detok_stream_push(sq_detok_stream *s, int32_t id, const char **text,
                               size_t *text_bytes, sq_error *err);
/* Returns what is still held back (e.g. an incomplete final character, as U+FFFD) and resets
 * the stream for a new sequence. */
sq_status sq_detok_stream_finish(sq_detok_stream *s, const char **text, size_t *text_bytes,
                                 sq_error *err);
void sq_detok_stream_destroy(sq_detok_stream *s);

/* ---- chat formats --------------------------------------------------------------------------
 * One user turn, written per family (no template engine):
 *   SQ_CHAT_LLAMA3:  <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>
 *                    <|start_header_id|>user<|end_header_id|>\n\nUSER<|eot_id|>
 *                    <|start_header_id|>assistant<|end_header_id|>\n\n
 *                    (system part only if given; contents trimmed as Meta's template does)
 *   SQ_CHAT_CHATML:  <|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nUSER<|im_end|>\n
 *                    <|im_start|>assistant\n   (Qwen2: SYS defaults to "You are a helpful
 *                    assistant." when system is NULL)
 *   SQ_CHAT_MISTRAL: <s>[INST] USER [/INST]   (no system role: a system message goes first in
 *                    the user turn, "SYS\n\nUSER")
 * The text already holds the BOS string where the format has one: encode it with
 * add_special = false.  system may be NULL.  Invalid UTF-8 -> SQ_ERR_INVALID.
 * *text is malloc'd and NUL-terminated; on failure it is NULL. */
typedef enum sq_chat_family { SQ_CHAT_LLAMA3 = 0, SQ_CHAT_CHATML, SQ_CHAT_MISTRAL } sq_chat_family;
sq_status sq_tokenizer_chat_format(sq_chat_family family, const char *system, const char *user,
                                   char **text, size_t *text_bytes, sq_error *err);
/* Picks the family from the tokenizer's special tokens: <|start_header_id|> -> LLAMA3,
 * <|im_start|> -> CHATML, [INST] or a SentencePiece-style <s> -> MISTRAL.
 * None of them -> SQ_ERR_UNSUPPORTED. */
sq_status sq_tokenizer_chat_family_guess(const sq_tokenizer *tok, sq_chat_family *out,
                                         sq_error *err);
/* The token that ends an assistant turn in that format (<|eot_id|>, <|im_end|>, </s>), or -1. */
int32_t sq_tokenizer_chat_stop_id(const sq_tokenizer *tok, sq_chat_family family);
const char *sq_tokenizer_chat_family_name(sq_chat_family family);

#ifdef __cplusplus
}
#endif
#endif
