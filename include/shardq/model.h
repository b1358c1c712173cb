/* model: one pipeline stage of a Llama / Mistral / Qwen2 decoder — its weights, its KV cache,
 * its run-state buffers, and its forward pass composed from backend ops (backend.h).
 * A stage holds decoder layers [first_layer, first_layer + n_layers); the first stage also
 * embeds token ids, the last also applies the final norm and lm_head (tied embeddings: the
 * embedding table serves as lm_head).
 *
 * State split by lifetime (llama2.c): the config and the limits are fixed at create; weights
 * are set once, tensor by tensor, by a loader; every run-state buffer (activations, KV cache,
 * logits, positions) is allocated at create, so forward() allocates nothing.
 *
 * KV cache: per layer, K and V float32 [slot][pos][kv_head][head_dim] (sq_kv_layer), with
 * max_batch slots of max_seq positions each.
 *
 * RoPE: "default", "linear" and "llama3" as in transformers; "dynamic" (NTK) equals the default
 * while every position is below max_position_embeddings, so a stage with max_seq <=
 * max_position_embeddings runs it as the default (and logs a warning); a larger max_seq is
 * refused with SQ_ERR_UNSUPPORTED.
 *
 * Ownership: sq_stage_create / sq_stage_destroy pair (destroy takes NULL); the stage borrows the
 * backend, which must outlive it.  Weight data passed to the setters is copied to the backend:
 * the caller frees it afterwards.  Pointers returned by the accessors point into the stage and
 * live until the next forward or destroy.  On failure, outputs are NULL and the stage is as it
 * was before the call. */
#ifndef SHARDQ_MODEL_H
#define SHARDQ_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/backend.h"
#include "shardq/config.h"
#include "shardq/core.h"
#include "shardq/meta.h"
#include "shardq/quant.h"
#include "shardq/size.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sq_stage sq_stage;

typedef struct sq_stage_params {
    sq_model_config cfg;        /* copied */
    int64_t first_layer;        /* decoder layers [first_layer, first_layer + n_layers) */
    int64_t n_layers;           /* may be 0 (an embedding-only or head-only stage) */
    bool has_embed;             /* first stage: token ids in */
    bool has_head;              /* last stage: final norm + lm_head, logits out */
    sq_quant_scheme scheme;     /* NONE: dense Linear weights; NF4 / FP4: 4-bit ones expected */
    int64_t max_seq;            /* positions per sequence slot (prompt + generated) */
    int64_t max_batch;          /* sequence slots in the KV cache */
    int64_t max_tokens;         /* rows per forward call (tokens of one micro-batch) */
    int64_t max_logit_rows;     /* rows of logits one call may produce (0: max_batch) */
    sq_log log;                 /* warnings (may be zero: silent) */
} sq_stage_params;

/* Checks the config and the limits, reserves the backend's scratch, and allocates every
 * run-state buffer.  On failure *out is NULL and nothing leaks. */
sq_status sq_stage_create(sq_backend *be, const sq_stage_params *p, sq_stage **out,
                          sq_error *err);
void sq_stage_destroy(sq_stage *s);

/* Whether this stage holds the tensor of `role` in `layer` (-1 for embed / final norm /
 * lm_head).  With tied embeddings the last stage wants SQ_ROLE_EMBED (as its lm_head) and never
 * SQ_ROLE_LM_HEAD; biases are wanted only when cfg.attention_bias. */
bool sq_stage_wants(const sq_stage *s, sq_tensor_role role, int64_t layer);

/* Sets one weight from dense host data (F32 / F16 / BF16).  shape: [out, in] for Linear and
 * embedding weights (n_dims 2), [n] for norms and biases (n_dims 1); it must match the config.
 * Replaces a weight set before.  `name` (HF name, may be NULL) is used in errors. */
sq_status sq_stage_set_dense(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                             sq_dtype dtype, const void *data, int n_dims,
                             const int64_t shape[2], sq_error *err);
/* The same for a buffer the caller gives up (*data: malloc'd, room for the weight rounded up to
 * 64 bytes): the backend may keep it instead of copying (sq_backend_weight_dense_take; then
 * *data is set to NULL), else it stays the caller's to free. */
sq_status sq_stage_set_dense_take(sq_stage *s, sq_tensor_role role, int64_t layer,
                                  const char *name, sq_dtype dtype, void **data, int n_dims,
                                  const int64_t shape[2], sq_error *err);
/* The same for data inside a read-only file mapping the caller gives up (*map, map_len; see
 * sq_backend_weight_dense_map): the backend may read it in place and own the mapping (then
 * *map is set to NULL), else the data is copied and the mapping stays the caller's. */
sq_status sq_stage_set_dense_map(sq_stage *s, sq_tensor_role role, int64_t layer,
                                 const char *name, sq_dtype dtype, const void *data, void **map,
                                 size_t map_len, int n_dims, const int64_t shape[2],
                                 sq_error *err);
/* Sets one decoder Linear weight (Q, K, V, O, GATE, UP, DOWN) from a 4-bit tensor; q is copied
 * (repacked) and may be freed afterwards. */
sq_status sq_stage_set_4bit(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                            const sq_qtensor *q, sq_error *err);
/* The same for a q the caller gives up: the backend may keep its arrays instead of copying
 * them (sq_backend_weight_4bit_take); what is left in q stays the caller's to free. */
sq_status sq_stage_set_4bit_take(sq_stage *s, sq_tensor_role role, int64_t layer,
                                 const char *name, sq_qtensor *q, sq_error *err);
/* Sets a matrix (embeddings, lm_head or a decoder Linear weight) kept in a ggml block format:
 * data is the [rows, cols] weight's rows exactly as a GGUF stores them (n_bytes = rows *
 * sq_ggml_row_bytes(type, cols)), copied by the backend (sq_backend_weight_ggml). */
sq_status sq_stage_set_ggml(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                            int ggml_type, const void *data, uint64_t n_bytes, sq_error *err);
/* SQ_OK when every wanted weight is set; else SQ_ERR_INVALID naming the first missing one
 * (role and layer) and how many are missing. */
sq_status sq_stage_check_ready(const sq_stage *s, sq_error *err);

/* One micro-batch.  Sequences' rows are consecutive (sq_seq_span); sum of n_tokens <=
 * max_tokens, each n_tokens >= 1, slot < max_batch, start_pos + n_tokens <= max_seq, no slot
 * twice.  A sequence's tokens must continue its cache: positions before start_pos were filled
 * by earlier calls (not checked). */
typedef struct sq_stage_input {
    int n_seqs;
    const sq_seq_span *seqs;
    const int32_t *token_ids;   /* host, one per row: the first stage (has_embed) */
    const void *hidden_in_d;    /* backend memory (n_rows, hidden) float32: other stages */
    bool all_logits;            /* last stage: logits for every row, not only each sequence's
                                   last row (needs n_rows <= max_logit_rows) */
} sq_stage_input;

/* Runs the stage's layers on the batch.  Afterwards: a non-last stage's output is
 * sq_stage_hidden_d (n_rows, hidden); the last stage's is sq_stage_logits_d (one row per
 * sequence, or per row with all_logits; vocab wide).  KV cache positions of the batch are
 * written.  Bad token ids / batch descriptions fail with SQ_ERR_INVALID before any op runs. */
sq_status sq_stage_forward(sq_stage *s, const sq_stage_input *b, sq_error *err);

/* The three parts of sq_stage_forward, for executors that hold the activations themselves
 * (act_d: backend memory, (n_rows, hidden) float32).  Each checks the batch like forward.
 * embed: token ids -> act_d (first stage);  layers: this stage's layers in place on act_d
 * (writes the KV cache);  head: final norm + lm_head on each sequence's last row of act_d (every
 * row with all_logits) -> sq_stage_logits_d (last stage).  embed + layers + head on one stage
 * give the same bits as sq_stage_forward. */
sq_status sq_stage_embed(sq_stage *s, const sq_stage_input *b, void *act_d, sq_error *err);
sq_status sq_stage_layers(sq_stage *s, const sq_stage_input *b, void *act_d, sq_error *err);
sq_status sq_stage_head(sq_stage *s, const sq_stage_input *b, const void *act_d, sq_error *err);

const void *sq_stage_hidden_d(const sq_stage *s);   /* (max_tokens, hidden) float32 */
const void *sq_stage_logits_d(const sq_stage *s);   /* (max_logit_rows, vocab) float32; NULL
                                                       without a head */
int64_t sq_stage_n_out_rows(const sq_stage *s);     /* rows of the last forward's output */
/* Copies the first n_rows rows of logits to host memory. */
sq_status sq_stage_read_logits(sq_stage *s, float *dst, int64_t n_rows, sq_error *err);
/* Samples one token per logits row of the last forward (see sq_backend_sample). */
sq_status sq_stage_sample(sq_stage *s, const sq_sample_params *p, const uint64_t *seq_ids,
                          const uint64_t *steps, int32_t *ids_out, sq_error *err);

sq_backend *sq_stage_backend(const sq_stage *s);
const sq_stage_params *sq_stage_get_params(const sq_stage *s);
/* Backend bytes: weights set so far / run state (activations, KV cache, logits). */
uint64_t sq_stage_weight_bytes(const sq_stage *s);
uint64_t sq_stage_state_bytes(const sq_stage *s);
/* "q_proj", "input_layernorm", … for messages. */
const char *sq_stage_role_name(sq_tensor_role role);

#ifdef __cplusplus
}
#endif
#endif
