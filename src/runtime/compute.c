/* Owns the glue between the loader, the model stage and the pipeline: loading one stage of a
 * folder into an sq_stage (the loader's consumer hands each tensor to the stage's setters),
 * and the sq_stage_compute adapter (embed / layers / head + sampling, sequence i in KV slot i,
 * kept logits, the first stage's token callback).  Must never print, allocate inside a
 * compute callback, or read a tensor the stage does not own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/runtime.h"

/* ---- opening a folder ------------------------------------------------------------------------ */

sq_status sq_runtime_open_model(const char *model_dir, sq_ckpt **st, sq_meta **m,
                                sq_quant_scheme *stored, sq_error *err) {
    *st = NULL;
    *m = NULL;
    sq_model_config cfg;
    sq_status rc = sq_ckpt_open(model_dir, st, err);
    if (rc == SQ_OK) rc = sq_ckpt_config(*st, &cfg, err);
    if (rc == SQ_OK) rc = sq_meta_create(&cfg, m, err);
    if (rc == SQ_OK) rc = sq_meta_validate(*m, *st, err);
    sq_quant_scheme s;
    if (rc == SQ_OK) rc = sq_meta_stored_scheme(*m, &s, err);
    if (rc != SQ_OK) {
        sq_meta_destroy(*m);
        sq_ckpt_close(*st);
        *m = NULL;
        *st = NULL;
        return rc;
    }
    if (stored) *stored = s;
    return SQ_OK;
}

/* ---- loading one stage ----------------------------------------------------------------------- */

typedef struct consume_ctx {
    sq_stage *s;
} consume_ctx;

static sq_status consume(void *user, sq_load_item *it, sq_error *err) {
    consume_ctx *c = user;
    const sq_tensor_spec *t = it->spec;
    if (!sq_stage_wants(c->s, t->role, t->layer))
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, t->name,
                            "the loader handed a tensor this stage does not hold");
    /* 4-bit weights of any input width stay 4-bit: both backends take every row length */
    if (it->is_4bit)   /* given up: the loader frees whatever the backend did not take */
        return sq_stage_set_4bit_take(c->s, t->role, t->layer, t->name, &it->q, err);
    if (it->ggml_type >= 0)   /* a weight kept in its ggml block format */
        return sq_stage_set_ggml(c->s, t->role, t->layer, t->name, it->ggml_type, it->data,
                                 it->n_bytes, err);
    if (it->map)   /* a read-only window of the file (dense_map): the backend may keep it */
        return sq_stage_set_dense_map(c->s, t->role, t->layer, t->name, it->dtype, it->data,
                                      &it->map, (size_t)it->map_len, it->n_dims, it->shape, err);
    if (!it->borrowed)   /* the loader's own buffer (load_alloc_dense): the backend may keep it */
        return sq_stage_set_dense_take(c->s, t->role, t->layer, t->name, it->dtype, &it->data,
                                       it->n_dims, it->shape, err);
    return sq_stage_set_dense(c->s, t->role, t->layer, t->name, it->dtype, it->data, it->n_dims,
                              it->shape, err);
}

static sq_stage_params stage_params(const sq_meta *m, const sq_runtime_stage_params *p) {
    sq_stage_params sp;
    memset(&sp, 0, sizeof sp);
    sp.cfg = *sq_meta_config(m);
    sp.first_layer = p->stage.first_layer;
    sp.n_layers = p->stage.n_layers;
    sp.has_embed = p->stage.has_embed;
    sp.has_head = p->stage.has_head;
    sp.scheme = p->scheme;
    sp.max_seq = p->max_seq;
    sp.max_batch = p->max_batch;
    sp.max_tokens = p->max_tokens;
    sp.max_logit_rows = p->max_logit_rows;
    sp.log = p->log;
    return sp;
}

sq_status sq_runtime_create_stage(sq_backend *be, const sq_meta *m,
                                  const sq_runtime_stage_params *p, sq_stage **out,
                                  sq_error *err) {
    if (out) *out = NULL;
    if (!be || !m || !p || !out)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "create stage: NULL argument");
    sq_stage_params sp = stage_params(m, p);
    return sq_stage_create(be, &sp, out, err);
}

sq_status sq_runtime_load_weights(sq_stage *s, const sq_ckpt *st, const sq_meta *m,
                                  const sq_runtime_stage_params *p, sq_load_stats *stats,
                                  sq_error *err) {
    if (!s || !st || !m || !p)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "load stage: NULL argument");
    sq_pool *pool = NULL;
    sq_status rc = sq_pool_create(p->n_threads, &pool, err);
    sq_load_options lo = sq_load_options_default();
    lo.scheme = p->scheme;
    lo.pool = pool;              /* NULL after a failed create: the loader's own thread */
    lo.tied_head_copy = true;
    lo.dense_map = true;         /* large dense tensors: the page cache, mapped, kept in place */
    lo.comm = p->comm;
    lo.progress = p->progress;
    lo.progress_user = p->progress_user;
    lo.progress_interval_s = p->progress_interval_s;
    lo.log = p->log;
    if (p->quant_on_device) lo.quant_device = p->quant_device;
    lo.trace = p->trace;
    lo.consume_label = "repack/upload";   /* the backend places each weight */
    lo.q4_layout = sq_backend_q4_layout(sq_stage_backend(s));   /* no repack where it keeps it */
    /* collective with a comm: a rank whose pool failed still loads (on one thread) so that
     * nobody waits, and reports the pool's error afterwards */
    sq_error lerr = err ? *err : (sq_error){0};
    consume_ctx cc = {.s = s};
    sq_status lrc = sq_load_stage(st, m, &p->stage, &lo, consume, &cc, stats, &lerr);
    sq_pool_destroy(pool);
    if (rc != SQ_OK) return rc;
    if (lrc != SQ_OK) {
        if (err) *err = lerr;
        return lrc;
    }
    return sq_stage_check_ready(s, err);
}

sq_status sq_runtime_load_stage(sq_backend *be, const sq_ckpt *st, const sq_meta *m,
                                const sq_runtime_stage_params *p, sq_stage **out,
                                sq_load_stats *stats, sq_error *err) {
    sq_stage *s = NULL;
    sq_status rc = sq_runtime_create_stage(be, m, p, &s, err);
    if (rc == SQ_OK) rc = sq_runtime_load_weights(s, st, m, p, stats, err);
    if (rc != SQ_OK) {
        sq_stage_destroy(s);
        return rc;
    }
    *out = s;
    return SQ_OK;
}

/* ---- the compute adapter --------------------------------------------------------------------- */

struct sq_runtime_compute {
    sq_stage_compute c;
    sq_stage *stage;
    sq_backend *be;
    sq_runtime_compute_params p;
    int64_t vocab;
    sq_seq_span *spans;        /* (n_seqs) */
    uint64_t *seq_ids, *steps; /* (n_seqs) sampling keys */
    float *tmp;                /* (n_seqs, vocab) logits of one step, keep_logits only */
    float *kept;               /* (n_seqs, max_new_tokens, vocab) */
    int32_t *n_kept;           /* (n_seqs) */
    /* scoring (score_prompts set, last stage) */
    float *score_tmp;          /* (SQ_SCORE_ROWS, vocab) logits of one slice */
    double *nll, *nll2;        /* (n_seqs) */
    int64_t *n_scored;         /* (n_seqs) */
};

static sq_status spans_of(sq_runtime_compute *rc, const sq_stage_batch *b, sq_stage_input *in,
                          sq_error *err) {
    if (b->n_seqs < 1 || b->n_seqs > rc->p.n_seqs)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                            "stage compute: %d sequences in a step (at most %d)", b->n_seqs,
                            rc->p.n_seqs);
    for (int32_t i = 0; i < b->n_seqs; i++) {
        if (b->seq[i] < 0 || b->seq[i] >= rc->p.n_seqs)
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                                "stage compute: sequence %d outside [0, %d)", b->seq[i], rc->p.n_seqs);
        rc->spans[i] = (sq_seq_span){.slot = b->seq[i], .start_pos = b->pos[i],
                                     .n_tokens = b->n_tokens[i]};
    }
    memset(in, 0, sizeof *in);
    in->n_seqs = b->n_seqs;
    in->seqs = rc->spans;
    return SQ_OK;
}

static sq_status cb_embed(void *user, const sq_stage_batch *b, const int32_t *ids, float *act,
                          sq_error *err) {
    sq_runtime_compute *rc = user;
    sq_stage_input in;
    sq_status st = spans_of(rc, b, &in, err);
    if (st != SQ_OK) return st;
    in.token_ids = ids;
    if (b->step >= 1 && rc->p.on_token)   /* the ids of step - 1, as they come back */
        for (int32_t i = 0; i < b->n_seqs; i++)
            rc->p.on_token(rc->p.token_user, b->seq[i], b->step - 1, ids[b->row0[i]]);
    return sq_stage_embed(rc->stage, &in, act, err);
}

static sq_status cb_forward(void *user, const sq_stage_batch *b, float *act, sq_error *err) {
    sq_runtime_compute *rc = user;
    sq_stage_input in;
    sq_status st = spans_of(rc, b, &in, err);
    if (st != SQ_OK) return st;
    if ((st = sq_stage_layers(rc->stage, &in, act, err)) != SQ_OK) return st;
    /* device activations go to the transport next: its streams (nccl, or the mpi transport's
     * pinned staging) do not wait for the backend's stream, so the layers must have finished */
    if (rc->c.act_mem == SQ_MEM_DEVICE) st = sq_backend_sync(rc->be, err);
    return st;
}

/* -log softmax(x)[target] in double: max, then the sum of exp(x - max) in index order. */
static double nll_of(const float *x, int64_t n, int32_t target) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - (double)m);
    return log(sum) + (double)m - (double)x[target];
}

static int32_t argmax_of(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* Prefill with scoring: each sequence's prompt scores itself (see runtime.h), the logits made
 * SQ_SCORE_ROWS rows at a time from its own rows of act; the returned id is its last row's
 * argmax.  The same rows give the same bits whatever the batching (the head is per row). */
static sq_status score_step(sq_runtime_compute *rc, const sq_stage_batch *b, const float *act,
                            int32_t *ids, sq_error *err) {
    const int64_t V = rc->vocab, H = sq_stage_get_params(rc->stage)->cfg.hidden_size;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        int32_t s = b->seq[i], L = b->n_tokens[i];
        if (b->pos[i] != 0 || L != rc->p.score_lens[s])
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                                "scoring: sequence %d prefilled from %d with %d tokens (prompt %d)",
                                s, b->pos[i], L, rc->p.score_lens[s]);
        const int32_t *tok = rc->p.score_prompts[s];
        int32_t j0 = rc->p.score_from < L - 1 ? rc->p.score_from : L - 1;
        if (j0 < 0) j0 = 0;
        for (int32_t j = j0; j < L; j += SQ_SCORE_ROWS) {
            int32_t n = L - j < SQ_SCORE_ROWS ? L - j : SQ_SCORE_ROWS;
            sq_seq_span span = {.slot = s, .start_pos = j, .n_tokens = n};
            sq_stage_input in = {.n_seqs = 1, .seqs = &span, .all_logits = true};
            const char *x = (const char *)act + (size_t)(b->row0[i] + j) * (size_t)H * sizeof(float);
            sq_status st = sq_stage_head(rc->stage, &in, x, err);
            if (st == SQ_OK) st = sq_stage_read_logits(rc->stage, rc->score_tmp, n, err);
            if (st != SQ_OK) return st;
            for (int32_t r = 0; r < n; r++) {
                int32_t pos = j + r;
                const float *row = rc->score_tmp + (size_t)r * (size_t)V;
                if (pos + 1 < L && pos >= rc->p.score_from) {
                    int32_t t = tok[pos + 1];
                    if (t < 0 || t >= V)
                        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                            "scoring: token id %d outside the vocabulary", t);
                    double v = nll_of(row, V, t);
                    rc->nll[s] += v;
                    rc->nll2[s] += v * v;
                    rc->n_scored[s]++;
                }
                if (pos == L - 1) ids[i] = argmax_of(row, V);
            }
        }
    }
    return SQ_OK;
}

static sq_status cb_sample(void *user, const sq_stage_batch *b, const float *act, int32_t *ids,
                           sq_error *err) {
    sq_runtime_compute *rc = user;
    sq_stage_input in;
    sq_status st = spans_of(rc, b, &in, err);
    if (st != SQ_OK) return st;
    if (rc->score_tmp && b->step == 0) return score_step(rc, b, act, ids, err);
    if ((st = sq_stage_head(rc->stage, &in, act, err)) != SQ_OK) return st;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        rc->seq_ids[i] = (uint64_t)b->seq[i];
        rc->steps[i] = (uint64_t)b->step;   /* the generated token's index: batching-free */
    }
    if (rc->kept) {
        if (b->step < 0 || b->step >= rc->p.max_new_tokens)
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                                "stage compute: step %d beyond max-new-tokens %d", b->step,
                                rc->p.max_new_tokens);
        if ((st = sq_stage_read_logits(rc->stage, rc->tmp, b->n_seqs, err)) != SQ_OK) return st;
        for (int32_t i = 0; i < b->n_seqs; i++) {
            int32_t s = b->seq[i];
            size_t row = (size_t)s * (size_t)rc->p.max_new_tokens + (size_t)b->step;
            memcpy(rc->kept + row * (size_t)rc->vocab, rc->tmp + (size_t)i * (size_t)rc->vocab,
                   (size_t)rc->vocab * sizeof(float));
            if (b->step + 1 > rc->n_kept[s]) rc->n_kept[s] = b->step + 1;
        }
    }
    return sq_stage_sample(rc->stage, &rc->p.sample, rc->seq_ids, rc->steps, ids, err);
}

static void *cb_alloc(void *user, uint64_t n_bytes) {
    sq_runtime_compute *rc = user;
    void *p = NULL;
    return sq_backend_alloc(rc->be, n_bytes, &p, NULL) == SQ_OK ? p : NULL;
}

static void cb_free(void *user, void *p) {
    sq_runtime_compute *rc = user;
    sq_backend_free(rc->be, p);
}

void sq_runtime_compute_destroy(sq_runtime_compute *c) {
    if (!c) return;
    free(c->spans);
    free(c->seq_ids);
    free(c->steps);
    free(c->tmp);
    free(c->kept);
    free(c->n_kept);
    free(c->score_tmp);
    free(c->nll);
    free(c->nll2);
    free(c->n_scored);
    free(c);
}

sq_status sq_runtime_compute_create(sq_stage *stage, const sq_runtime_compute_params *p,
                                    sq_runtime_compute **out, sq_error *err) {
    if (out) *out = NULL;
    if (!stage || !p || !out)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage compute: NULL argument");
    const sq_stage_params *sp = sq_stage_get_params(stage);
    if (p->n_seqs < 1 || p->n_seqs > sp->max_batch || p->max_new_tokens < 1)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage compute: %d sequences (the stage has %lld KV slots), "
                            "max-new-tokens %d", p->n_seqs, (long long)sp->max_batch,
                            p->max_new_tokens);
    sq_runtime_compute *c = calloc(1, sizeof *c);
    if (!c) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage compute: out of memory");
    c->stage = stage;
    c->be = sq_stage_backend(stage);
    c->p = *p;
    c->vocab = sp->cfg.vocab_size;
    size_t n = (size_t)p->n_seqs;
    c->spans = malloc(n * sizeof *c->spans);
    c->seq_ids = malloc(n * sizeof *c->seq_ids);
    c->steps = malloc(n * sizeof *c->steps);
    if (!c->spans || !c->seq_ids || !c->steps) goto nomem;
    if (p->keep_logits && sp->has_head) {
        uint64_t rows = (uint64_t)p->n_seqs * (uint64_t)p->max_new_tokens, bytes = 0;
        if (!sq_mul_u64(rows, (uint64_t)c->vocab * sizeof(float), &bytes) || bytes > (4ull << 30)) {
            long long vocab = (long long)c->vocab;   /* c is freed before the message is made */
            sq_runtime_compute_destroy(c);
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "keeping the logits of %d sequences x %d tokens x %lld vocab "
                                "needs more than 4 GiB", p->n_seqs, p->max_new_tokens, vocab);
        }
        c->tmp = malloc(n * (size_t)c->vocab * sizeof(float));
        c->kept = calloc((size_t)rows * (size_t)c->vocab, sizeof(float));
        c->n_kept = calloc(n, sizeof *c->n_kept);
        if (!c->tmp || !c->kept || !c->n_kept) goto nomem;
    }
    if (p->score_prompts && sp->has_head) {
        if (!p->score_lens || sp->max_logit_rows < SQ_SCORE_ROWS) {
            sq_runtime_compute_destroy(c);
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "stage compute: scoring needs prompt lengths and %d logit rows",
                                SQ_SCORE_ROWS);
        }
        c->score_tmp = malloc((size_t)SQ_SCORE_ROWS * (size_t)c->vocab * sizeof(float));
        c->nll = calloc(n, sizeof *c->nll);
        c->nll2 = calloc(n, sizeof *c->nll2);
        c->n_scored = calloc(n, sizeof *c->n_scored);
        if (!c->score_tmp || !c->nll || !c->nll2 || !c->n_scored) goto nomem;
    }
    /* the CPU backend's memory is host memory; any other backend's is the device's */
    bool host = !strncmp(sq_backend_name(c->be), "cpu", 3);
    c->c = (sq_stage_compute){
        .user = c,
        .hidden_dim = sp->cfg.hidden_size,
        .vocab = c->vocab,
        .max_seq = sp->max_seq,
        .act_mem = host ? SQ_MEM_HOST : SQ_MEM_DEVICE,
        .embed = sp->has_embed ? cb_embed : NULL,
        .forward = cb_forward,
        .sample = sp->has_head ? cb_sample : NULL,
        .alloc_act = host ? NULL : cb_alloc,
        .free_act = host ? NULL : cb_free,
    };
    *out = c;
    return SQ_OK;
nomem:
    sq_runtime_compute_destroy(c);
    return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage compute: out of memory");
}

const sq_stage_compute *sq_runtime_compute_get(const sq_runtime_compute *c) {
    return c ? &c->c : NULL;
}

const float *sq_runtime_compute_logits(const sq_runtime_compute *c, int32_t s, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!c || !c->kept || s < 0 || s >= c->p.n_seqs) return NULL;
    if (n_tokens) *n_tokens = c->n_kept[s];
    return c->kept + (size_t)s * (size_t)c->p.max_new_tokens * (size_t)c->vocab;
}

sq_status sq_runtime_compute_score(const sq_runtime_compute *c, int32_t s, double *nll,
                                   double *nll2, int64_t *n_scored, sq_error *err) {
    if (!c || !c->nll || s < 0 || s >= c->p.n_seqs)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no score for sequence %d", s);
    if (nll) *nll = c->nll[s];
    if (nll2) *nll2 = c->nll2[s];
    if (n_scored) *n_scored = c->n_scored[s];
    return SQ_OK;
}
