/* Owns which tensors a stage loads, in which order, and the byte counts a load will produce
 * (src, out, staging, transient), from the skeleton and the checkpoint's headers alone.
 * Must never read tensor data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_impl.h"

/* ---- which tensors ------------------------------------------------------------------------ */

static int push_module(const sq_meta *m, int mod, int *idx, int n) {
    if (mod < 0) return n;
    const sq_module_spec *ms = sq_meta_module(m, mod);
    for (int k = 0; k < ms->n_tensors; k++) idx[n++] = ms->first_tensor + k;
    return n;
}

sq_status sq_load_stage_tensors(const sq_meta *m, const sq_load_stage_desc *stage,
                                bool tied_head_copy, int **idx, int *n, sq_error *err) {
    *idx = NULL;
    *n = 0;
    const sq_model_config *c = sq_meta_config(m);
    if (stage->first_layer < 0 || stage->n_layers < 0 ||
        (int64_t)stage->first_layer + stage->n_layers > c->n_layers)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage layers [%d, %d) are outside the model's %lld layers",
                            stage->first_layer, stage->first_layer + stage->n_layers,
                            (long long)c->n_layers);
    int *out = malloc(((size_t)sq_meta_n_tensors(m) + 1) * sizeof *out);
    if (!out) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory listing tensors");
    int k = 0;
    int embed = sq_meta_module_of_kind(m, SQ_MODULE_EMBED);
    if (stage->has_embed) k = push_module(m, embed, out, k);
    for (int L = stage->first_layer; L < stage->first_layer + stage->n_layers; L++)
        k = push_module(m, sq_meta_layer_module(m, L), out, k);
    if (stage->has_head) {
        k = push_module(m, sq_meta_module_of_kind(m, SQ_MODULE_NORM), out, k);
        k = push_module(m, sq_meta_module_of_kind(m, SQ_MODULE_LM_HEAD), out, k);
        if (c->tie_word_embeddings && tied_head_copy && !stage->has_embed)
            k = push_module(m, embed, out, k);
    }
    *idx = out;
    *n = k;
    return SQ_OK;
}

const sq_ckpt_tensor *load_companion(const sq_ckpt *st, const char *base, const char *suffix) {
    char name[256];
    if (snprintf(name, sizeof name, "%s%s", base, suffix) >= (int)sizeof name) return NULL;
    return sq_ckpt_find(st, name);
}

static const char *const k_parts[] = {"", ".absmax", ".quant_map", ".nested_absmax",
                                      ".nested_quant_map"};

/* The checkpoint tensors a spec reads (1, or the bnb weight and its companions). */
static uint64_t spec_src_bytes(const sq_ckpt *st, const sq_tensor_spec *t) {
    uint64_t total = 0;
    const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
    if (!w) return 0;
    if (t->stored_quant == SQ_QUANT_NONE) return w->n_bytes;
    if (t->stored_quant == SQ_QUANT_INT8) return load_int8_src_bytes(st, t);
    for (size_t k = 0; k < sizeof k_parts / sizeof k_parts[0]; k++) {
        const sq_ckpt_tensor *c = load_companion(st, t->name, k_parts[k]);
        if (c) total += c->n_bytes;
    }
    const sq_ckpt_tensor *qs = load_companion(st, t->name, sq_bnb_quant_state_suffix(t->stored_quant));
    if (qs) total += qs->n_bytes;
    return total;
}


sq_status sq_load_stage_bytes(const sq_meta *m, const sq_ckpt *st,
                              const sq_load_stage_desc *stage, const sq_load_options *o,
                              sq_load_bytes *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    int *idx = NULL, n = 0;
    sq_status rc = sq_load_stage_tensors(m, stage, o->tied_head_copy, &idx, &n, err);
    if (rc != SQ_OK) return rc;
    const sq_quant_scheme s = load_effective_scheme(o);
    const uint64_t budget = o->staging_bytes ? o->staging_bytes : SQ_LOAD_DEFAULT_STAGING_BYTES;
    out->n_tensors = n;
    for (int i = 0; i < n; i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, idx[i]);
        const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
        if (!w) {
            free(idx);
            return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name, "not in the checkpoint");
        }
        out->src_bytes += spec_src_bytes(st, t);
        uint64_t ob = 0;
        if (load_quantize_now(t, &s) && w->ggml_type >= 0 &&
            (w->dtype == SQ_DTYPE_U8 || w->rope_heads > 0)) {
            /* re-quantized whole: the stored bytes + their float32 values + the 4-bit result */
            ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &s);
            uint64_t tr = w->n_bytes + t->n_elements * 4;
            if (tr > out->transient_bytes) out->transient_bytes = tr;
        } else if (load_quantize_now(t, &s) && sq_quant_type_is_int8(s.type)) {
            /* int8: whole rows through the staging slots (load.c's make_units) */
            ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &s);
            size_t es = sq_dtype_size(w->dtype);
            const int slots = load_n_slots(budget, s.blocksize);
            uint64_t pr = load_int8_piece_rows(budget / (uint64_t)slots, es, t->shape[0], t->shape[1]);
            uint64_t stg = pr * (uint64_t)t->shape[1] * es * (uint64_t)slots;
            if (stg > out->staging_bytes) out->staging_bytes = stg;
        } else if (load_quantize_now(t, &s)) {
            ob = sq_size_4bit_bytes(t->n_elements, &s);
            size_t es = sq_dtype_size(w->dtype);
            const int slots = load_n_slots(budget, s.blocksize);
            uint64_t pe = load_piece_elements(budget / (uint64_t)slots, es, s.blocksize);
            if (pe > t->n_elements) pe = t->n_elements;
            uint64_t stg = pe * es * (uint64_t)slots;
            if (stg > out->staging_bytes) out->staging_bytes = stg;
            /* pieces are quantized in place (sq_quant_4bit_part): only the float32 absmax
             * that double quant compresses afterwards comes and goes */
            (void)pe;
            uint64_t tr = 0;
            if (s.double_quant) tr += sq_size_4bit_n_blocks(t->n_elements, s.blocksize) * 4;
            if (tr > out->transient_bytes) out->transient_bytes = tr;
        } else if (t->stored_quant != SQ_QUANT_NONE) {
            if (s.type == SQ_QUANT_NONE) {   /* int8 comes out float32 (load_int8.c) */
                ob = t->stored_quant == SQ_QUANT_INT8
                         ? t->n_elements * 4
                         : sq_size_dense_bytes(t->n_elements, sq_meta_config(m)->torch_dtype);
            } else {
                sq_quant_scheme ss = {.type = t->stored_quant, .double_quant = t->stored_double_quant,
                                      .blocksize = t->stored_blocksize};
                ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &ss);
            }
        } else {
            ob = t->stored_ggml >= 0 && t->dtype == SQ_DTYPE_U8 && o->ggml_dense
                     ? t->n_elements * 4 : w->n_bytes;
        }
        out->out_bytes += ob;
        if (ob > out->max_out_bytes) out->max_out_bytes = ob;
    }
    free(idx);
    return SQ_OK;
}
