/* meta: the model skeleton — ordered modules and every tensor's HF name, shape and dtype, and
 * which tensors a 4-bit scheme quantizes.  Built from the config alone; no weight bytes, ever.
 * Serializable to a flat, versioned byte buffer with a hash, for MPI_Bcast from rank 0.
 *
 * Order: model.embed_tokens; per layer L (module "model.layers.L") input_layernorm,
 * self_attn.q_proj.weight (+ .bias), k_proj (+ bias), v_proj (+ bias), o_proj,
 * post_attention_layernorm, mlp.gate_proj, mlp.up_proj, mlp.down_proj; model.norm; lm_head
 * (absent when tie_word_embeddings).  Module i of layer L is 1 + L.
 * Quantizable (bitsandbytes' rule): the seven Linear weights of every decoder layer;
 * embeddings, norms, biases and lm_head stay dense.
 *
 * Ownership: sq_meta is opaque; sq_meta_create / sq_meta_deserialize / sq_meta_bcast pair with
 * sq_meta_destroy (takes NULL).  Returned pointers point into the sq_meta and live until it
 * is destroyed. */
#ifndef SHARDQ_META_H
#define SHARDQ_META_H

#include <stdbool.h>
#include <stdint.h>

#include <mpi.h>

#include "shardq/checkpoint.h"
#include "shardq/config.h"
#include "shardq/safetensors.h"
#include "shardq/size.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_module_kind {
    SQ_MODULE_EMBED = 0,   /* model.embed_tokens */
    SQ_MODULE_LAYER,       /* model.layers.N (all of one decoder layer) */
    SQ_MODULE_NORM,        /* model.norm */
    SQ_MODULE_LM_HEAD      /* lm_head (absent as a tensor when tied: reuses embed_tokens) */
} sq_module_kind;

/* Role of a tensor inside its module (lets the backend find weights without string work). */
typedef enum sq_tensor_role {
    SQ_ROLE_EMBED = 0, SQ_ROLE_ATTN_NORM, SQ_ROLE_Q, SQ_ROLE_K, SQ_ROLE_V, SQ_ROLE_O,
    SQ_ROLE_Q_BIAS, SQ_ROLE_K_BIAS, SQ_ROLE_V_BIAS, SQ_ROLE_MLP_NORM, SQ_ROLE_GATE, SQ_ROLE_UP,
    SQ_ROLE_DOWN, SQ_ROLE_FINAL_NORM, SQ_ROLE_LM_HEAD, SQ_ROLE_COUNT
} sq_tensor_role;

typedef struct sq_tensor_spec {
    char name[96];          /* HF name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    sq_tensor_role role;
    int module;             /* index into the module list */
    int64_t layer;          /* decoder layer, or -1 */
    int n_dims;
    int64_t shape[2];       /* [out, in] for Linear weights; [n] for norms / biases */
    uint64_t n_elements;
    sq_dtype dtype;         /* the checkpoint's dtype (from the headers when validated) */
    bool quantizable;       /* a Linear weight inside a decoder layer (bnb's rule) */
    /* Set by sq_meta_validate when the checkpoint already holds this weight in bitsandbytes'
     * 4-bit layout (dtype U8, shape [(n+1)/2, 1] + .absmax / .quant_map / .quant_state… keys):
     * NF4 or FP4, else SQ_QUANT_NONE.  shape / n_elements stay the logical [out, in]. */
    sq_quant_type stored_quant;
    bool stored_double_quant;
    int64_t stored_blocksize; /* from the absmax count (0 when not pre-quantized) */
    /* Set by sq_meta_validate for a checkpoint that stores tensors in ggml types (a GGUF): the
     * type number and its bytes (-1 / 0 otherwise).  Block formats (Q8_0, Q4_1, Q4_K, …) have
     * dtype U8 and are kept as stored; F32 / F16 / BF16 are dense (dtype says which). */
    int32_t stored_ggml;
    uint64_t stored_bytes;
} sq_tensor_spec;

typedef struct sq_module_spec {
    char name[64];          /* "model.embed_tokens", "model.layers.3", "model.norm", "lm_head" */
    sq_module_kind kind;
    int64_t layer;          /* decoder layer, or -1 */
    int first_tensor;       /* tensors of a module are contiguous */
    int n_tensors;
} sq_module_spec;

typedef struct sq_meta sq_meta;

/* Builds the skeleton from a config (dtype: config.torch_dtype).  On failure *out is NULL. */
sq_status sq_meta_create(const sq_model_config *cfg, sq_meta **out, sq_error *err);
void sq_meta_destroy(sq_meta *m);

const sq_model_config *sq_meta_config(const sq_meta *m);
int sq_meta_n_modules(const sq_meta *m);
const sq_module_spec *sq_meta_module(const sq_meta *m, int i);
int sq_meta_n_tensors(const sq_meta *m);
const sq_tensor_spec *sq_meta_tensor(const sq_meta *m, int i);
/* Index of the tensor with this HF name, or -1. */
int sq_meta_find(const sq_meta *m, const char *name);
/* Index of the module of decoder layer `layer`, or of the embed / norm / lm_head module. */
int sq_meta_layer_module(const sq_meta *m, int64_t layer);
int sq_meta_module_of_kind(const sq_meta *m, sq_module_kind kind);  /* -1 if absent (tied head) */
uint64_t sq_meta_n_params(const sq_meta *m);

/* Checks the skeleton against a checkpoint's headers: missing, unexpected and mis-shaped (or
 * non-float) tensors are all reported by name in one SQ_ERR_FORMAT message (up to 8 names of
 * each kind, as many as fit, then a count); with a single problem err->file is the tensor's
 * file and err->tensor its name, else err->file is the model folder.
 * On success records the checkpoint's dtypes (and pre-quantized layouts) in the skeleton;
 * on failure the skeleton is unchanged.
 * A pre-quantized bnb checkpoint's quantized weights (weight U8 [(n+1)/2, 1] + .absmax,
 * .quant_map, [.nested_absmax, .nested_quant_map,] .quant_state.bitsandbytes__nf4|__fp4) are
 * accepted with every companion's shape checked.  Also accepted and ignored: the legacy
 * "*.rotary_emb.inv_freq" buffers, and lm_head.weight of the right shape in a tied model. */
sq_status sq_meta_validate(sq_meta *m, const sq_ckpt *ck, sq_error *err);
/* A GGUF weight in a ggml block format is accepted where a matrix is expected (Linear weights,
 * embeddings, lm_head) with its logical shape; norms and biases must be F32/F16/BF16. */

/* How many tensors the checkpoint stores in ggml types (validated skeleton; a GGUF): such a
 * model runs as stored unless the scheme re-quantizes its Linear weights (NF4 / FP4). */
int sq_meta_n_stored_ggml(const sq_meta *m);

/* The scheme a validated pre-quantized (bitsandbytes 4-bit) checkpoint is stored in: every
 * decoder Linear weight must be stored alike.  For a dense checkpoint *out is type NONE,
 * blocksize 64, the checkpoint's dtype.  A partly quantized checkpoint, or weights stored with
 * different schemes: SQ_ERR_UNSUPPORTED naming the tensor. */
sq_status sq_meta_stored_scheme(const sq_meta *m, sq_quant_scheme *out, sq_error *err);

/* Exact bytes of tensor i / module i under a scheme: with s->type NF4/FP4 quantizable tensors
 * take sq_size_4bit_bytes; a tensor kept in a ggml block format takes its stored bytes; every
 * other tensor (and every tensor when s->type is NONE) is dense in s->dense_dtype.  So {NONE, BF16} gives the bf16 footprint of the whole model. */
uint64_t sq_meta_tensor_bytes(const sq_meta *m, int tensor, const sq_quant_scheme *s);
uint64_t sq_meta_module_bytes(const sq_meta *m, int module, const sq_quant_scheme *s);
uint64_t sq_meta_total_bytes(const sq_meta *m, const sq_quant_scheme *s);

/* Flat serialization: "SQMETA\0\0" magic, u32 format version, u32 total length, the config
 * field by field, the module and tensor specs, and a trailing u64: FNV-1a 64 of every byte
 * before it.  Fixed little-endian layout, no padding, no pointers.  *buf is malloc'd (caller
 * frees); on failure *buf is NULL and *buf_bytes 0.
 * sq_meta_deserialize checks everything before trusting it: magic, version, length, the
 * trailing hash, the config (sq_config_check), and that every module / tensor spec is exactly
 * the one the config produces (only dtypes and pre-quantized fields come from the buffer, and
 * they are range-checked).  Bad bytes give SQ_ERR_FORMAT, never a crash or an allocation
 * sized by the buffer.  On failure *out is NULL. */
#define SQ_META_FORMAT_VERSION 2
#define SQ_META_MAX_BYTES (64u << 20)
sq_status sq_meta_serialize(const sq_meta *m, uint8_t **buf, size_t *buf_bytes, sq_error *err);
sq_status sq_meta_deserialize(const uint8_t *buf, size_t buf_bytes, sq_meta **out,
                              sq_error *err);
/* FNV-1a 64 of the serialized skeleton (the value its trailer holds): equal hashes mean equal
 * skeletons, dtypes included. */
uint64_t sq_meta_hash(const sq_meta *m);
uint64_t sq_hash_fnv1a64(const void *data, size_t n);

/* Collective over comm (every rank must call it): the root serializes *m and broadcasts the
 * length, its hash and status, then the bytes; every other rank deserializes into a new *m;
 * every rank checks that its hash equals the root's, and the ranks agree (MPI_Allreduce) that
 * all succeeded.
 * On the root, *m is the caller's skeleton, or NULL when the root failed before: then err must
 * hold the root's error, which is broadcast so every rank returns it (no rank is left waiting).
 * On failure every rank returns the same error (naming the first failing rank; its code
 * SQ_ERR_PEER on the ranks that did not fail themselves), non-root ranks get *m NULL, and the
 * root's *m is left to its caller.  comm must have MPI_ERRORS_RETURN. */
sq_status sq_meta_bcast(MPI_Comm comm, int root, sq_meta **m, sq_error *err);
/* Collective: the root reads the checkpoint's config (sq_ckpt_config), builds the skeleton and
 * validates it against ck (the root's open checkpoint; other ranks' ck is not used), then
 * sq_meta_bcast gives every rank the same skeleton.  On success every rank owns a new *m; on
 * failure every rank returns the same error (the root's rank when it failed) and *m is NULL. */
sq_status sq_meta_read_bcast(MPI_Comm comm, int root, const sq_ckpt *ck, sq_meta **m,
                             sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
