/* Test fixture shared by test_load.c, test_load_map.c (through load_stage_fixture.h) and
 * test_quantize_mpi.c: writes a deterministic model folder from a config preset (config.json,
 * generation_config.json, tokenizer_config.json, BF16 safetensors split into files at given
 * tensor indices, model.safetensors.index.json). Header-only, static; never used by the
 * product. */
#ifndef SHARDQ_LOAD_FIXTURE_H
#define SHARDQ_LOAD_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/config.h"
#include "shardq/meta.h"
#include "shardq/safetensors.h"

/* deterministic values in about [-0.06, 0.06], every 7th block of 64 scaled up, so blocks
 * have different absmax; an all-zero 64-block at the start of every weight with >= 256
 * elements (bitsandbytes' zero-block rule) */
static inline void lf_values(uint64_t seed, uint16_t *out, uint64_t n) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (uint64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(s >> 11) * 0x1p-53 * 2.0 - 1.0;
        double v = u * u * u * 0.06 * ((i / 64) % 7 == 3 ? 4.0 : 1.0);
        if (n >= 256 && i < 64) v = 0;
        out[i] = sq_f32_to_bf16_1((float)v);
    }
}

static inline uint64_t lf_name_seed(const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (; *name; name++) h = (h ^ (unsigned char)*name) * 1099511628211ull;
    return h;
}

/* Writes the model into dir (which must exist).  split[f] is the first tensor (skeleton
 * index) of file f, split[0] == 0; n_files files.  Returns 0 on success. */
static inline int lf_make_model(const char *dir, const sq_model_config *cfg, int n_files,
                                const int *split) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_meta *m = NULL;
    if (sq_meta_create(cfg, &m, &err) != SQ_OK) return -1;
    char path[4096];
    char *json = NULL;
    if (sq_config_to_json(cfg, &json, &err) != SQ_OK) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(json, f);
    fclose(f);
    free(json);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (!(f = fopen(path, "w"))) return -1;
    fputs("{\"bos_token_id\": 1, \"eos_token_id\": 2}\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (!(f = fopen(path, "w"))) return -1;
    fputs("{\"model_max_length\": 256}\n", f);
    fclose(f);
    int n = sq_meta_n_tensors(m);
    char idx_path[4096];
    snprintf(idx_path, sizeof idx_path, "%s/model.safetensors.index.json", dir);
    FILE *ix = fopen(idx_path, "w");
    if (!ix) return -1;
    fprintf(ix, "{\"metadata\": {\"total_size\": %llu}, \"weight_map\": {",
            (unsigned long long)(sq_meta_n_params(m) * 2));
    int rc = 0;
    for (int fi = 0; fi < n_files && rc == 0; fi++) {
        int t0 = split[fi], t1 = fi + 1 < n_files ? split[fi + 1] : n;
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", fi + 1, n_files);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        sq_st_writer *w = NULL;
        if (sq_st_writer_create(path, &w, &err) != SQ_OK) return -1;
        sq_st_writer_metadata(w, "format", "pt", &err);
        for (int t = t0; t < t1 && rc == 0; t++) {
            const sq_tensor_spec *s = sq_meta_tensor(m, t);
            uint16_t *v = malloc(s->n_elements * 2);
            lf_values(lf_name_seed(s->name), v, s->n_elements);
            if (s->role == SQ_ROLE_ATTN_NORM || s->role == SQ_ROLE_MLP_NORM ||
                s->role == SQ_ROLE_FINAL_NORM)
                for (uint64_t i = 0; i < s->n_elements; i++)
                    v[i] = sq_f32_to_bf16_1(1.0f + sq_bf16_to_f32_1(v[i]));
            if (sq_st_writer_add(w, s->name, SQ_DTYPE_BF16, s->n_dims, s->shape, v,
                                 s->n_elements * 2, &err) != SQ_OK)
                rc = -1;
            free(v);
            fprintf(ix, "%s\"%s\": \"%s\"", t ? ", " : "", s->name, name);
        }
        if (rc == 0 && sq_st_writer_finish(w, true, &err) != SQ_OK) rc = -1;
        sq_st_writer_destroy(w);
    }
    fprintf(ix, "}}\n");
    fclose(ix);
    sq_meta_destroy(m);
    return rc;
}

/* The first tensor of decoder layer L in the skeleton of cfg. */
static inline int lf_layer_first_tensor(const sq_model_config *cfg, int layer) {
    sq_error err;
    sq_meta *m = NULL;
    if (sq_meta_create(cfg, &m, &err) != SQ_OK) return -1;
    int t = sq_meta_module(m, sq_meta_layer_module(m, layer))->first_tensor;
    sq_meta_destroy(m);
    return t;
}

#endif
