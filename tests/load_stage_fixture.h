/* Test fixture shared by test_load.c and test_load_map.c: a model folder from a config preset
 * (load_fixture.h) opened as a checkpoint with its validated skeleton, and a consumer for
 * sq_load_stage that keeps every item it is handed (its buffers and mappings taken, as a
 * backend that keeps them), freed with collected_free.  Header-only, static; never used by
 * the product. */
#ifndef SHARDQ_LOAD_STAGE_FIXTURE_H
#define SHARDQ_LOAD_STAGE_FIXTURE_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_fixture.h"
#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "testutil.h"

typedef struct fixture {
    char *dir;
    sq_model_config cfg;
    sq_ckpt *st;
    sq_meta *meta;
} fixture;

/* The llama of cfg in two files split at its middle layer, under a new folder named after
 * tag. */
static void fixture_make_config(fixture *fx, const char *tag, const sq_model_config *cfg) {
    sq_error err;
    sq_error_init(&err, -1);
    fx->cfg = *cfg;
    fx->dir = sq_test_tmpdir(tag);
    ck_assert_ptr_nonnull(fx->dir);
    int split[2] = {0, lf_layer_first_tensor(&fx->cfg, (int)fx->cfg.n_layers / 2)};
    ck_assert_int_eq(lf_make_model(fx->dir, &fx->cfg, 2, split), 0);
    ck_assert_int_eq(sq_ckpt_open(fx->dir, &fx->st, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&fx->cfg, &fx->meta, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_validate(fx->meta, fx->st, &err), SQ_OK);
}

/* The preset's llama (tie_word_embeddings = tied), as fixture_make_config. */
static void fixture_make(fixture *fx, const char *tag, const char *preset, bool tied) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_model_config cfg;
    ck_assert_int_eq(sq_config_preset(preset, SQ_ARCH_LLAMA, &cfg, &err), SQ_OK);
    cfg.tie_word_embeddings = tied;
    fixture_make_config(fx, tag, &cfg);
}

static void fixture_free(fixture *fx) {
    sq_meta_destroy(fx->meta);
    sq_ckpt_close(fx->st);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", fx->dir);
    free(fx->dir);
}

typedef struct collected {
    sq_load_item items[512];
    int n;
} collected;

static sq_status collect(void *user, sq_load_item *it, sq_error *err) {
    collected *c = user;
    if (c->n >= 512) return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "too many");
    c->items[c->n++] = *it;
    it->data = NULL;
    it->map = NULL;
    memset(&it->q, 0, sizeof it->q);
    return SQ_OK;
}

static void collected_free(collected *c) {
    for (int i = 0; i < c->n; i++) sq_load_item_release(&c->items[i]);
    c->n = 0;
}

#endif
