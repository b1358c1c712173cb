/* Owns the pipeline scheduler: request validation and agreement, the micro-batch split, the
 * prefill and decode loops of every stage, the messages between stages (headers, activations,
 * token ids back to rank 0), busy / idle accounting, the gathered statistics and the result.
 * The math is the caller's sq_stage_compute; the bytes move through the transport.
 * Must never block outside a transport wait (each has a deadline), print, or exit — except
 * the documented SHARDQ_TEST_DIE_* hook, which kills or hangs this process on purpose. */
#include "shardq/pipeline.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SQ_PIPE_MAGIC 0x53515050 /* "SQPP" */
#define SQ_MAX_SEQS (1 << 20)
#define SQ_MAX_EOS 1024

enum { MSG_ACT = 1, MSG_STOP = 2, MSG_TOK = 3 };

/* Tags: three streams per micro-batch. */
static int tag_hdr(int m) { return 3 * m; }
static int tag_act(int m) { return 3 * m + 1; }
static int tag_tok(int m) { return 3 * m + 2; }

/* Leads every header and token message.  Followed by int32 seq[n_seqs] (the live sequences)
 * in a header; by int32 ids[n_seqs], int32 finished[n_seqs] in a token message. */
typedef struct msg_hdr {
    int32_t magic, kind, mb, step, n_seqs, pad;
    int64_t n_rows;
} msg_hdr;

/* Per micro-batch state of this rank. */
typedef struct mb_state {
    int32_t s0, n;           /* sequences [s0, s0 + n) of the request */
    int32_t step;            /* next step to run */
    bool stopped;
    int32_t n_live;
    int32_t *live;           /* (n) live sequences, request indices, ascending */
    int32_t *n_tok, *pos;    /* (n) descriptor arrays */
    int64_t *row0;           /* (n) */
    int64_t rows_cap;        /* max rows: max(sum of prompt lengths, n) */
    float *act;              /* (rows_cap, hidden) in compute->act_mem */
    int32_t *ids;            /* (rows_cap) token ids to embed (rank 0) */
    msg_hdr *hdr;            /* header buffer: msg_hdr + n int32 */
    msg_hdr *tok;            /* token message buffer: msg_hdr + 2n int32 */
    sq_xfer *send_hdr, *send_act, *send_tok;   /* pending sends of this micro-batch */
} mb_state;

typedef struct run {
    sq_transport *t;
    sq_trace *trace;                /* NULL: off */
    const sq_stage_compute *c;
    int rank, p;
    bool first, last;
    int32_t n_seqs, M, n_eos;
    int32_t *lens, *max_new, *eos;   /* (n_seqs), (n_seqs), (n_eos) on every rank */
    const sq_pipeline_request *req; /* rank 0 */
    mb_state *mbs;                  /* (M) */
    int32_t *gen;                   /* (n_seqs) ids generated so far (rank 0 and last stage) */
    int32_t **out;                  /* (n_seqs) generated ids (rank 0) */
    sq_finish_reason *finish;       /* (n_seqs) rank 0 */
    int die_rank, die_step, die_mode;   /* test hook; die_rank < 0: off */
    sq_stage_stats stats;
    double t0;
} run;

double sq_pipeline_bubble_model(int n_stages, int n_micro_batches) {
    if (n_stages <= 0 || n_micro_batches <= 0) return 0.0;
    return (double)(n_stages - 1) / (double)(n_micro_batches + n_stages - 1);
}

void sq_pipeline_result_destroy(sq_pipeline_result *r) {
    if (!r) return;
    if (r->tokens)
        for (int32_t i = 0; i < r->n_seqs; i++) free(r->tokens[i]);
    free(r->tokens);
    free(r->n_tokens);
    free(r->finish);
    free(r->stages);
    free(r);
}

/* ---- the test hook ---------------------------------------------------------------------- */

static void read_die_hook(run *R) {
    R->die_rank = -1;
    const char *r = getenv("SHARDQ_TEST_DIE_RANK");
    if (!r || !*r) return;
    char *end = NULL;
    long v = strtol(r, &end, 10);
    if (*end || v < 0 || v > 1 << 20) return;
    R->die_rank = (int)v;
    R->die_step = 1;
    const char *s = getenv("SHARDQ_TEST_DIE_STEP");
    if (s && *s) {
        long w = strtol(s, &end, 10);
        if (!*end && w >= 0 && w < 1 << 30) R->die_step = (int)w;
    }
    const char *m = getenv("SHARDQ_TEST_DIE_MODE");
    R->die_mode = (m && !strcmp(m, "hang")) ? 1 : 0;
}

static void maybe_die(run *R, int step) {
    if (R->die_rank != R->rank || step != R->die_step) return;
    if (R->die_mode == 1) {
        for (;;) {   /* hang: alive, but never polls again */
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
    }
    raise(SIGKILL);
}

/* ---- set-up ----------------------------------------------------------------------------- */

static sq_status check_request(const sq_pipeline_request *q, const sq_stage_compute *c,
                               int32_t M, int p, int max_tag, sq_error *err) {
    if (!q) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no request on rank 0");
    if (q->n_seqs < 1) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "the request has no sequences");
    if (q->n_seqs > SQ_MAX_SEQS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "the request has %d sequences (at most %d)",
                            q->n_seqs, SQ_MAX_SEQS);
    if (!q->prompts || !q->prompt_lens || !q->max_new_tokens)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "the request lacks prompts, lengths or max-new-tokens");
    if (q->n_eos < 0 || q->n_eos > SQ_MAX_EOS || (q->n_eos > 0 && !q->eos_ids))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "%d EOS ids (at most %d)", q->n_eos, SQ_MAX_EOS);
    for (int32_t e = 0; e < q->n_eos; e++)
        if (q->eos_ids[e] < 0 || q->eos_ids[e] >= c->vocab)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "EOS id %d is outside the vocabulary [0, %lld)",
                                q->eos_ids[e], (long long)c->vocab);
    for (int32_t i = 0; i < q->n_seqs; i++) {
        int32_t L = q->prompt_lens[i], n = q->max_new_tokens[i];
        if (L <= 0 || !q->prompts[i])
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "sequence %d: empty prompt", i);
        for (int32_t j = 0; j < L; j++)
            if (q->prompts[i][j] < 0 || q->prompts[i][j] >= c->vocab)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "sequence %d: token id %d at position %d is outside the vocabulary [0, %lld)",
                                    i, q->prompts[i][j], j, (long long)c->vocab);
        if (n < 1)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "sequence %d: max-new-tokens %d (must be >= 1)", i, n);
        if ((int64_t)L + n > c->max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "sequence %d: prompt of %d tokens + max-new-tokens %d = %lld exceeds max_seq %lld",
                                i, L, n, (long long)L + n, (long long)c->max_seq);
    }
    if (M < 0 || M > q->n_seqs)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "%d micro-batches for %d sequences (must be 1..%d, or 0 for automatic)", M,
                            q->n_seqs, q->n_seqs);
    int32_t m_eff = M ? M : (q->n_seqs < p ? q->n_seqs : p);
    if (3 * (int64_t)m_eff + 2 > max_tag)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "%d micro-batches are more than the transport's tags allow",
                            m_eff);
    return SQ_OK;
}

static sq_status check_compute(const run *R, sq_error *err) {
    const sq_stage_compute *c = R->c;
    if (!c) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no stage compute");
    if (c->hidden_dim < 1 || c->hidden_dim > (1 << 24) || c->vocab < 1 || c->vocab > INT32_MAX || c->max_seq < 1)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage compute: hidden_dim %lld, vocab %lld, max_seq %lld out of range",
                            (long long)c->hidden_dim, (long long)c->vocab, (long long)c->max_seq);
    if (!c->forward || (R->first && !c->embed) || (R->last && !c->sample))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage compute of %s stage lacks %s",
                            R->first ? "the first" : (R->last ? "the last" : "a middle"),
                            !c->forward ? "forward" : (R->first && !c->embed ? "embed" : "sample"));
    if (c->act_mem != SQ_MEM_HOST && (!c->alloc_act || !c->free_act))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage compute: device activations need alloc_act and free_act");
    return SQ_OK;
}

static void free_run(run *R) {
    if (R->mbs) {
        for (int32_t m = 0; m < R->M; m++) {
            mb_state *b = &R->mbs[m];
            sq_transport_cancel(R->t, b->send_hdr);
            sq_transport_cancel(R->t, b->send_act);
            sq_transport_cancel(R->t, b->send_tok);
            if (b->act) {
                if (R->c->act_mem == SQ_MEM_HOST) free(b->act);
                else R->c->free_act(R->c->user, b->act);
            }
            free(b->live); free(b->n_tok); free(b->pos); free(b->row0);
            free(b->ids); free(b->hdr); free(b->tok);
        }
    }
    free(R->mbs);
    if (R->out)
        for (int32_t i = 0; i < R->n_seqs; i++) free(R->out[i]);
    free(R->out);
    free(R->finish);
    free(R->gen);
    free(R->lens); free(R->max_new); free(R->eos);
}

/* Shares the request's shape with every rank and allocates all run state.  Collective. */
static sq_status share_and_allocate(run *R, const sq_pipeline_params *params, sq_error *err) {
    sq_status st;
    int64_t shape[6] = {0};
    if (R->first) {
        int32_t M = params ? params->n_micro_batches : 0;
        if (M == 0) M = R->req->n_seqs < R->p ? R->req->n_seqs : R->p;
        shape[0] = R->req->n_seqs; shape[1] = M; shape[2] = R->req->n_eos;
        shape[3] = R->c->hidden_dim; shape[4] = R->c->vocab; shape[5] = R->c->max_seq;
    }
    if ((st = sq_transport_bcast(R->t, shape, sizeof shape, 0, err)) != SQ_OK) return st;
    R->n_seqs = (int32_t)shape[0];
    R->M = (int32_t)shape[1];
    R->n_eos = (int32_t)shape[2];
    sq_status local = SQ_OK;
    if (shape[3] != R->c->hidden_dim || shape[4] != R->c->vocab || shape[5] != R->c->max_seq)
        local = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                             "stage compute disagrees with rank 0: hidden_dim %lld vs %lld, vocab %lld vs %lld, "
                             "max_seq %lld vs %lld", (long long)R->c->hidden_dim, (long long)shape[3],
                             (long long)R->c->vocab, (long long)shape[4], (long long)R->c->max_seq,
                             (long long)shape[5]);
    R->lens = calloc((size_t)R->n_seqs, sizeof *R->lens);
    R->max_new = calloc((size_t)R->n_seqs, sizeof *R->max_new);
    R->eos = calloc((size_t)R->n_eos + 1, sizeof *R->eos);
    R->gen = calloc((size_t)R->n_seqs, sizeof *R->gen);
    if (!R->lens || !R->max_new || !R->eos || !R->gen) {
        /* cannot take part in the broadcasts: tell the others and stop */
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a request of %d sequences", R->n_seqs);
        sq_transport_abort_peers(R->t, err);
        return st;
    }
    if (R->first) {
        memcpy(R->lens, R->req->prompt_lens, (size_t)R->n_seqs * sizeof *R->lens);
        memcpy(R->max_new, R->req->max_new_tokens, (size_t)R->n_seqs * sizeof *R->max_new);
        if (R->n_eos) memcpy(R->eos, R->req->eos_ids, (size_t)R->n_eos * sizeof *R->eos);
    }
    if ((st = sq_transport_bcast(R->t, R->lens, (uint64_t)R->n_seqs * 4, 0, err)) != SQ_OK) return st;
    if ((st = sq_transport_bcast(R->t, R->max_new, (uint64_t)R->n_seqs * 4, 0, err)) != SQ_OK) return st;
    if (R->n_eos && (st = sq_transport_bcast(R->t, R->eos, (uint64_t)R->n_eos * 4, 0, err)) != SQ_OK) return st;

    R->mbs = calloc((size_t)R->M, sizeof *R->mbs);
    if (R->first) {
        R->out = calloc((size_t)R->n_seqs, sizeof *R->out);
        R->finish = calloc((size_t)R->n_seqs, sizeof *R->finish);
    }
    if (!R->mbs || (R->first && (!R->out || !R->finish))) goto nomem;
    if (R->first)
        for (int32_t i = 0; i < R->n_seqs; i++)
            if (!(R->out[i] = malloc((size_t)R->max_new[i] * sizeof **R->out))) goto nomem;
    uint64_t hidden_bytes = (uint64_t)R->c->hidden_dim * sizeof(float);
    for (int32_t m = 0; m < R->M && local == SQ_OK; m++) {
        mb_state *b = &R->mbs[m];
        b->s0 = (int32_t)((int64_t)m * R->n_seqs / R->M);
        b->n = (int32_t)((int64_t)(m + 1) * R->n_seqs / R->M) - b->s0;
        int64_t rows = 0;
        for (int32_t i = 0; i < b->n; i++) rows += R->lens[b->s0 + i];
        b->rows_cap = rows > b->n ? rows : b->n;
        uint64_t act_bytes = 0;
        if (!sq_mul_u64((uint64_t)b->rows_cap, hidden_bytes, &act_bytes) || act_bytes > (uint64_t)INT32_MAX) {
            local = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                 "micro-batch %d holds %lld prompt tokens: its activations exceed the 2 GiB of "
                                 "one transfer (use more micro-batches)", m, (long long)rows);
            break;
        }
        size_t n = (size_t)b->n;
        b->live = malloc(n * sizeof *b->live);
        b->n_tok = malloc(n * sizeof *b->n_tok);
        b->pos = malloc(n * sizeof *b->pos);
        b->row0 = malloc(n * sizeof *b->row0);
        b->hdr = malloc(sizeof(msg_hdr) + n * sizeof(int32_t));
        b->tok = malloc(sizeof(msg_hdr) + 2 * n * sizeof(int32_t));
        if (R->first) b->ids = malloc((size_t)b->rows_cap * sizeof *b->ids);
        b->act = R->c->act_mem == SQ_MEM_HOST ? malloc(act_bytes) : R->c->alloc_act(R->c->user, act_bytes);
        if (!b->live || !b->n_tok || !b->pos || !b->row0 || !b->hdr || !b->tok || !b->act ||
            (R->first && !b->ids))
            goto nomem;
        b->n_live = b->n;
        for (int32_t i = 0; i < b->n; i++) b->live[i] = b->s0 + i;
    }
    return sq_transport_agree(R->t, local, err);
nomem:
    local = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the pipeline's buffers (%d micro-batches)", R->M);
    return sq_transport_agree(R->t, local, err);
}

/* ---- one stage step --------------------------------------------------------------------- */

/* Fills the descriptor of micro-batch b's current step from its live list. */
static void describe(run *R, mb_state *b, sq_stage_batch *d) {
    int64_t row = 0;
    for (int32_t i = 0; i < b->n_live; i++) {
        int32_t s = b->live[i];
        b->n_tok[i] = b->step == 0 ? R->lens[s] : 1;
        b->pos[i] = b->step == 0 ? 0 : R->lens[s] + b->step - 1;
        b->row0[i] = row;
        row += b->n_tok[i];
    }
    d->mb = (int32_t)(b - R->mbs);
    d->step = b->step;
    d->n_seqs = b->n_live;
    d->seq = b->live;
    d->n_tokens = b->n_tok;
    d->pos = b->pos;
    d->row0 = b->row0;
    d->n_rows = row;
}

/* Waits for a transfer of micro-batch m; a failure says which message it was. */
static sq_status wait_x(run *R, sq_xfer **x, uint64_t *got, const char *what, int m, sq_error *err) {
    if (!*x) return SQ_OK;
    double idle = 0, t0 = sq_trace_begin(R->trace);
    sq_status st = sq_transport_wait(R->t, *x, got, &idle, err);
    if (R->trace) {
        char d[48];
        snprintf(d, sizeof d, "mb %d step %d", m, R->mbs[m].step);
        sq_trace_end_ex(R->trace, 0, what, t0, d, -1);
    }
    *x = NULL;
    R->stats.idle_s += idle;
    if (st != SQ_OK && err) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, " [%s, micro-batch %d, step %d]", what, m, R->mbs[m].step);
    }
    return st;
}

/* Runs a compute callback into `st`, counting its time as busy. */
#define BUSY(R, st, name, mb, call)                                                         \
    do {                                                                                    \
        double t_ = sq_now_s(), tr_ = sq_trace_begin((R)->trace);                           \
        (st) = (call);                                                                      \
        (R)->stats.busy_s += sq_now_s() - t_;                                               \
        if ((R)->trace) trace_step((R), (name), tr_, (mb));                                 \
    } while (0)

static void trace_step(run *R, const char *name, double t0, int m) {
    char d[48];
    snprintf(d, sizeof d, "mb %d step %d", m, R->mbs[m].step);
    sq_trace_end_ex(R->trace, 0, name, t0, d, -1);
}

static bool is_eos(const run *R, int32_t id) {
    for (int32_t e = 0; e < R->n_eos; e++)
        if (R->eos[e] == id) return true;
    return false;
}

static sq_status bad_message(run *R, int m, const char *what, sq_error *err) {
    return sq_error_set(err, SQ_ERR_PEER, NULL, NULL,
                        "rank %d sent a malformed message for micro-batch %d (step %d): %s", R->rank - 1 < 0 ? R->p - 1 : R->rank - 1,
                        m, R->mbs[m].step, what);
}

/* Runs this rank's part of micro-batch m's current step.  Returns with b->step advanced, or
 * b->stopped set when the stop marker came through. */
static sq_status stage_step(run *R, int m, sq_error *err) {
    mb_state *b = &R->mbs[m];
    sq_status st;
    uint64_t hidden_bytes = (uint64_t)R->c->hidden_dim * sizeof(float);
    int prev = R->rank - 1, next = R->rank + 1;
    sq_stage_batch d;
    /* the previous step's sends from these buffers must be out before they are reused */
    if ((st = wait_x(R, &b->send_hdr, NULL, "sending a header", m, err)) != SQ_OK) return st;
    if ((st = wait_x(R, &b->send_act, NULL, "sending activations", m, err)) != SQ_OK) return st;
    if (!R->first) {
        sq_xfer *x = NULL;
        uint64_t got = 0;
        uint64_t cap = sizeof(msg_hdr) + (uint64_t)b->n * sizeof(int32_t);
        if ((st = sq_transport_irecv(R->t, prev, tag_hdr(m), b->hdr, cap, SQ_MEM_HOST, &x, err)) != SQ_OK) return st;
        if ((st = wait_x(R, &x, &got, "receiving a header", m, err)) != SQ_OK) return st;
        msg_hdr *h = b->hdr;
        if (got < sizeof *h || h->magic != SQ_PIPE_MAGIC || h->mb != m || h->step != b->step ||
            (h->kind != MSG_ACT && h->kind != MSG_STOP) || h->n_seqs < 0 || h->n_seqs > b->n ||
            got != sizeof *h + (uint64_t)h->n_seqs * sizeof(int32_t))
            return bad_message(R, m, "header does not match the expected micro-batch and step", err);
        if (h->kind == MSG_STOP) {
            b->stopped = true;
            if (!R->last)
                return sq_transport_isend(R->t, next, tag_hdr(m), b->hdr, sizeof *h, SQ_MEM_HOST, &b->send_hdr, err);
            return SQ_OK;
        }
        const int32_t *live = (const int32_t *)(h + 1);
        for (int32_t i = 0; i < h->n_seqs; i++)
            if (live[i] < b->s0 || live[i] >= b->s0 + b->n || (i > 0 && live[i] <= live[i - 1]))
                return bad_message(R, m, "live sequence list out of range", err);
        memcpy(b->live, live, (size_t)h->n_seqs * sizeof *live);
        b->n_live = h->n_seqs;
        describe(R, b, &d);
        if (d.n_rows != h->n_rows) return bad_message(R, m, "row count disagrees with the live sequences", err);
        if ((st = sq_transport_irecv(R->t, prev, tag_act(m), b->act, (uint64_t)d.n_rows * hidden_bytes,
                                     R->c->act_mem, &x, err)) != SQ_OK)
            return st;
        if ((st = wait_x(R, &x, &got, "receiving activations", m, err)) != SQ_OK) return st;
        if (got != (uint64_t)d.n_rows * hidden_bytes) return bad_message(R, m, "activation size", err);
    } else {
        describe(R, b, &d);
    }
    maybe_die(R, b->step);
    const sq_stage_compute *c = R->c;
    if (R->first) {
        /* prefill: the prompts; decode: the last id generated for each live sequence */
        for (int32_t i = 0; i < d.n_seqs; i++) {
            int32_t s = d.seq[i];
            if (b->step == 0) memcpy(b->ids + d.row0[i], R->req->prompts[s], (size_t)R->lens[s] * sizeof(int32_t));
            else b->ids[d.row0[i]] = R->out[s][R->gen[s] - 1];
        }
        BUSY(R, st, "embed", m, c->embed(c->user, &d, b->ids, b->act, err));
        if (st != SQ_OK) return st;
    }
    BUSY(R, st, "forward", m, c->forward(c->user, &d, b->act, err));
    if (st != SQ_OK) return st;
    if (!R->last) {
        msg_hdr *h = b->hdr;
        *h = (msg_hdr){.magic = SQ_PIPE_MAGIC, .kind = MSG_ACT, .mb = m, .step = b->step,
                       .n_seqs = d.n_seqs, .n_rows = d.n_rows};
        memcpy(h + 1, d.seq, (size_t)d.n_seqs * sizeof(int32_t));
        if ((st = sq_transport_isend(R->t, next, tag_hdr(m), h, sizeof *h + (uint64_t)d.n_seqs * 4, SQ_MEM_HOST,
                                     &b->send_hdr, err)) != SQ_OK)
            return st;
        if ((st = sq_transport_isend(R->t, next, tag_act(m), b->act, (uint64_t)d.n_rows * hidden_bytes,
                                     c->act_mem, &b->send_act, err)) != SQ_OK)
            return st;
    } else {
        if ((st = wait_x(R, &b->send_tok, NULL, "sending token ids", m, err)) != SQ_OK) return st;
        msg_hdr *h = b->tok;
        int32_t *ids = (int32_t *)(h + 1), *fin = ids + d.n_seqs;
        BUSY(R, st, "sample", m, c->sample(c->user, &d, b->act, ids, err));
        if (st != SQ_OK) return st;
        for (int32_t i = 0; i < d.n_seqs; i++) {
            int32_t s = d.seq[i];
            if (ids[i] < 0 || ids[i] >= c->vocab)
                return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "sampling returned id %d for sequence %d, outside [0, %lld)",
                                    ids[i], s, (long long)c->vocab);
            /* rank 0 counts in take_tokens; a lone stage must not count twice */
            int32_t g = R->first ? R->gen[s] + 1 : ++R->gen[s];
            fin[i] = is_eos(R, ids[i]) ? SQ_FINISH_EOS : (g >= R->max_new[s] ? SQ_FINISH_LENGTH : 0);
        }
        *h = (msg_hdr){.magic = SQ_PIPE_MAGIC, .kind = MSG_TOK, .mb = m, .step = b->step,
                       .n_seqs = d.n_seqs, .n_rows = 0};
        if (!R->first &&
            (st = sq_transport_isend(R->t, 0, tag_tok(m), h, sizeof *h + 2 * (uint64_t)d.n_seqs * 4, SQ_MEM_HOST,
                                     &b->send_tok, err)) != SQ_OK)
            return st;
    }
    b->step++;
    return SQ_OK;
}

/* Rank 0: takes micro-batch m's sampled ids (from the last stage, or from itself when it is
 * the only stage), records them, drops finished sequences.  Sets b->stopped when none is left
 * and sends the stop marker down the ring. */
static sq_status take_tokens(run *R, int m, sq_error *err) {
    mb_state *b = &R->mbs[m];
    sq_status st;
    msg_hdr *h = b->tok;
    if (!R->last) {
        sq_xfer *x = NULL;
        uint64_t got = 0;
        if ((st = sq_transport_irecv(R->t, R->p - 1, tag_tok(m), h, sizeof *h + 2 * (uint64_t)b->n * 4, SQ_MEM_HOST,
                                     &x, err)) != SQ_OK)
            return st;
        if ((st = wait_x(R, &x, &got, "receiving token ids", m, err)) != SQ_OK) return st;
        if (got < sizeof *h || h->magic != SQ_PIPE_MAGIC || h->kind != MSG_TOK || h->mb != m ||
            h->step != b->step - 1 || h->n_seqs != b->n_live ||
            got != sizeof *h + 2 * (uint64_t)h->n_seqs * sizeof(int32_t))
            return sq_error_set(err, SQ_ERR_PEER, NULL, NULL,
                                "rank %d sent malformed token ids for micro-batch %d (step %d)", R->p - 1, m, b->step - 1);
    }
    const int32_t *ids = (const int32_t *)(h + 1), *fin = ids + h->n_seqs;
    int32_t n_keep = 0;
    for (int32_t i = 0; i < b->n_live; i++) {
        int32_t s = b->live[i];
        if (ids[i] < 0 || ids[i] >= R->c->vocab || R->gen[s] >= R->max_new[s] || fin[i] < 0 || fin[i] > SQ_FINISH_LENGTH)
            return sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent an impossible token id %d for sequence %d",
                                R->p - 1, ids[i], s);
        R->out[s][R->gen[s]++] = ids[i];
        /* the last stage decides; a sequence at its limit ends whatever it says */
        bool done = fin[i] != 0 || R->gen[s] >= R->max_new[s];
        if (done) R->finish[s] = fin[i] == SQ_FINISH_EOS ? SQ_FINISH_EOS : SQ_FINISH_LENGTH;
        else b->live[n_keep++] = s;
    }
    b->n_live = n_keep;
    if (n_keep > 0) return SQ_OK;
    b->stopped = true;
    if (R->p == 1) return SQ_OK;
    if ((st = wait_x(R, &b->send_hdr, NULL, "sending a header", m, err)) != SQ_OK) return st;
    *b->hdr = (msg_hdr){.magic = SQ_PIPE_MAGIC, .kind = MSG_STOP, .mb = m, .step = b->step, .n_seqs = 0};
    return sq_transport_isend(R->t, 1, tag_hdr(m), b->hdr, sizeof(msg_hdr), SQ_MEM_HOST, &b->send_hdr, err);
}

static sq_status run_loops(run *R, sq_error *err) {
    sq_status st;
    int32_t n_stopped = 0;
    /* prefill: every micro-batch once, in order; stage 0 never waits here */
    for (int32_t m = 0; m < R->M; m++)
        if ((st = stage_step(R, m, err)) != SQ_OK) return st;
    R->stats.prefill_busy_s = R->stats.busy_s;
    R->stats.prefill_idle_s = R->stats.idle_s;
    R->stats.prefill_wall_s = sq_now_s() - R->t0;
    /* decode: cycle over the micro-batches still circulating, in the same order on every
     * rank (rank 0 decides when one stops and the marker travels in that order) */
    while (n_stopped < R->M) {
        for (int32_t m = 0; m < R->M; m++) {
            mb_state *b = &R->mbs[m];
            if (b->stopped) continue;
            if (R->first && (st = take_tokens(R, m, err)) != SQ_OK) return st;
            if (!b->stopped && (st = stage_step(R, m, err)) != SQ_OK) return st;
            if (b->stopped) n_stopped++;
        }
    }
    for (int32_t m = 0; m < R->M; m++) {
        mb_state *b = &R->mbs[m];
        if ((st = wait_x(R, &b->send_hdr, NULL, "sending a header", m, err)) != SQ_OK) return st;
        if ((st = wait_x(R, &b->send_act, NULL, "sending activations", m, err)) != SQ_OK) return st;
        if ((st = wait_x(R, &b->send_tok, NULL, "sending token ids", m, err)) != SQ_OK) return st;
    }
    R->stats.wall_s = sq_now_s() - R->t0;
    R->stats.decode_busy_s = R->stats.busy_s - R->stats.prefill_busy_s;
    R->stats.decode_idle_s = R->stats.idle_s - R->stats.prefill_idle_s;
    R->stats.decode_wall_s = R->stats.wall_s - R->stats.prefill_wall_s;
    return SQ_OK;
}

static sq_status make_result(run *R, const sq_stage_stats *all, sq_pipeline_result **out, sq_error *err) {
    sq_pipeline_result *r = calloc(1, sizeof *r);
    if (!r) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the result");
    r->n_seqs = R->n_seqs;
    r->n_stages = R->p;
    r->n_micro_batches = R->M;
    r->tokens = calloc((size_t)R->n_seqs, sizeof *r->tokens);
    r->n_tokens = calloc((size_t)R->n_seqs, sizeof *r->n_tokens);
    r->finish = calloc((size_t)R->n_seqs, sizeof *r->finish);
    r->stages = calloc((size_t)R->p, sizeof *r->stages);
    if (!r->tokens || !r->n_tokens || !r->finish || !r->stages) goto nomem;
    for (int32_t i = 0; i < R->n_seqs; i++) {
        r->tokens[i] = R->out[i];   /* handed over */
        R->out[i] = NULL;
        r->n_tokens[i] = R->gen[i];
        r->finish[i] = R->finish[i];
        r->prefill_tokens += R->lens[i];
        r->decode_tokens += R->gen[i] - 1;
    }
    memcpy(r->stages, all, (size_t)R->p * sizeof *all);
    double busy = 0, pbusy = 0, dbusy = 0, wall = 0, pwall = 0;
    for (int i = 0; i < R->p; i++) {
        busy += all[i].busy_s;
        pbusy += all[i].prefill_busy_s;
        dbusy += all[i].decode_busy_s;
        if (all[i].wall_s > wall) wall = all[i].wall_s;
        if (all[i].prefill_wall_s > pwall) pwall = all[i].prefill_wall_s;
    }
    r->prefill_s = pwall;
    r->decode_s = wall - pwall;
    r->bubble_fraction = wall > 0 ? 1.0 - busy / (R->p * wall) : 0.0;
    r->prefill_bubble_fraction = pwall > 0 ? 1.0 - pbusy / (R->p * pwall) : 0.0;
    r->decode_bubble_fraction = wall - pwall > 0 ? 1.0 - dbusy / (R->p * (wall - pwall)) : 0.0;
    r->bubble_model = sq_pipeline_bubble_model(R->p, R->M);
    *out = r;
    return SQ_OK;
nomem:
    sq_pipeline_result_destroy(r);
    return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the result");
}

sq_status sq_pipeline_run(sq_transport *t, const sq_stage_compute *compute,
                          const sq_pipeline_params *params, const sq_pipeline_request *req,
                          sq_pipeline_result **out, sq_error *err) {
    if (out) *out = NULL;
    if (!t) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "pipeline: no transport");
    run R;
    memset(&R, 0, sizeof R);
    R.t = t;
    R.trace = params ? params->trace : NULL;
    R.c = compute;
    R.rank = sq_transport_rank(t);
    R.p = sq_transport_n_ranks(t);
    R.first = R.rank == 0;
    R.last = R.rank == R.p - 1;
    R.req = R.first ? req : NULL;
    if (err) err->rank = R.rank;
    read_die_hook(&R);

    /* 1. every rank checks what it holds; rank 0 the request.  Agree before anything moves. */
    sq_status local = check_compute(&R, err);
    if (local == SQ_OK && R.first) {
        if (!out) local = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "pipeline: no place for the result on rank 0");
        else local = check_request(req, compute, params ? params->n_micro_batches : 0, R.p,
                                   sq_transport_max_tag(t), err);
    }
    sq_status st = sq_transport_agree(t, local, err);
    if (st != SQ_OK) return st;
    /* 2. share the request's shape, allocate everything, agree again */
    st = share_and_allocate(&R, params, err);
    if (st != SQ_OK) goto fail;
    sq_logf(params ? &params->log : NULL, SQ_LOG_DEBUG, "pipeline: rank %d of %d, %d sequences in %d micro-batches",
            R.rank, R.p, R.n_seqs, R.M);
    /* 3. run */
    R.stats.rank = R.rank;
    R.t0 = sq_now_s();
    st = run_loops(&R, err);
    if (st != SQ_OK) {
        /* tell the others at once (a peer's failure was already told by whoever saw it) */
        if (st != SQ_ERR_PEER) sq_transport_abort_peers(t, err);
        goto fail;
    }
    /* 4. statistics to rank 0, end-of-run handshake */
    sq_stage_stats *all = R.first ? calloc((size_t)R.p, sizeof *all) : NULL;
    if (R.first && !all) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for statistics");
        sq_transport_abort_peers(t, err);
        goto fail;
    }
    st = sq_transport_gather(t, &R.stats, sizeof R.stats, all, 0, err);
    if (st == SQ_OK) st = sq_transport_close(t, err);
    if (st == SQ_OK && R.first) st = make_result(&R, all, out, err);
    free(all);
fail:
    free_run(&R);
    return st;
}
