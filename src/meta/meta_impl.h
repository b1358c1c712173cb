/* Private to the meta module: the sq_meta layout shared by meta.c (skeleton, queries, sizes),
 * meta_validate.c and meta_serial.c.  Must never be included from outside src/meta/. */
#ifndef SHARDQ_META_IMPL_H
#define SHARDQ_META_IMPL_H

#include "shardq/meta.h"

struct sq_meta {
    sq_model_config cfg;
    int n_modules;
    sq_module_spec *modules;   /* (n_modules) embed, layers 0..L-1, norm, [lm_head] */
    int n_tensors;
    sq_tensor_spec *tensors;   /* (n_tensors) in module order */
    uint64_t hash;             /* FNV-1a 64 of the serialization; kept current by every
                                * function that changes a spec */
};

/* Recomputes m->hash from the serialization.  Returns SQ_ERR_NOMEM only. */
sq_status meta_rehash(sq_meta *m, sq_error *err);

#endif
