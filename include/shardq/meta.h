/* meta: the model skeleton — ordered modules and every tensor's HF name, shape and dtype, and
 * which tensors a 4-bit scheme quantizes.  Built from the config alone; no weight bytes, ever.
 * Serializable to a flat, versioned byte buffer with a hash, for MPI_Bcast from rank 0.
 *
 * Ownership: sq_meta is opaque; sq_meta_create / sq_meta_deserialize pair with
 * sq_meta_destroy (takes NULL).  Returned pointers point into the sq_meta. */
#ifndef SHARDQ_META_H
#define SHARDQ_META_H

#include <stdbool.h>
#include <stdint.h>

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

/* Checks the skeleton against a checkpoint's headers: missing, unexpected and mis-shaped
 * tensors are all reported by name in one message (the first 8 of each, then a count).
 * Records the checkpoint's dtypes in the skeleton.  A pre-quantized bnb checkpoint's
 * quantized weights (weight U8 + absmax / quant_map / quant_state keys) are accepted. */
sq_status sq_meta_validate(sq_meta *m, const sq_st_model *st, sq_error *err);

/* Exact bytes of tensor i / module i under a scheme (quantizable tensors take the 4-bit size,
 * the rest dense in their dtype). */
uint64_t sq_meta_tensor_bytes(const sq_meta *m, int tensor, const sq_quant_scheme *s);
uint64_t sq_meta_module_bytes(const sq_meta *m, int module, const sq_quant_scheme *s);
uint64_t sq_meta_total_bytes(const sq_meta *m, const sq_quant_scheme *s);

/* Flat serialization: "SQMETA" magic, format version, the config and every spec, in a fixed
 * little-endian layout.  *buf is malloc'd (caller frees).  hash is FNV-1a 64 of the bytes. */
#define SQ_META_FORMAT_VERSION 1
sq_status sq_meta_serialize(const sq_meta *m, uint8_t **buf, size_t *buf_bytes, sq_error *err);
sq_status sq_meta_deserialize(const uint8_t *buf, size_t buf_bytes, sq_meta **out,
                              sq_error *err);
uint64_t sq_meta_hash(const sq_meta *m);
uint64_t sq_hash_fnv1a64(const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif
