/* Owns the serve engine: the bounded queue, the KV slots, the step-wise scheduler of continuous
 * batching on rank 0 (admit, form steps of prefill chunks and decode rows, keep up to n_ranks
 * steps in flight, take the sampled ids, retire), the stage loop of the other ranks, the stop
 * marker and the failure path.  The math is sq_stage's (model.h); bytes move through the
 * transport.  Must never print, exit, call MPI outside the run thread, or hold the lock
 * during a compute or a transport wait. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shardq/serve.h"

#define WIRE_MAGIC 0x53515356 /* "SQSV" */
enum { KIND_WORK = 1, KIND_STOP = 2, KIND_IDS = 3 };
enum { TAG_HDR = 0, TAG_ACT = 1, TAG_IDS = 2 };

/* One sequence of a step on the wire. */
typedef struct wire_seq {
    int32_t slot, pos, n_tokens, want;   /* want: sample its last row (prompt done) */
    int32_t step, top_k;                 /* step: the index of the id to sample */
    float temperature, top_p;
    uint64_t seed;
} wire_seq;

/* Leads every message; followed by wire_seq[n_seqs] (WORK) or int32 ids[n_seqs] (IDS).  busy:
 * each stage writes its compute seconds so far as the step passes, for /metrics. */
typedef struct wire_hdr {
    int32_t magic, kind, step_no, n_seqs;
    int64_t n_rows;
    double busy[SQ_SERVE_MAX_STAGES];
} wire_hdr;

struct sq_serve_seq {
    int32_t *prompt, n_prompt, max_new, extra_eos;
    bool ignore_eos;
    sq_sample_params sample;
    int32_t *gen, n_gen;       /* (max_new) */
    int32_t n_fed;             /* prompt tokens sent into the pipeline */
    int32_t slot;              /* -1 while waiting */
    bool in_flight;
    bool cancel;               /* asked to end */
    sq_serve_finish finish;
    double t_first;
    char error[256];
    int refs;                  /* caller + engine */
    sq_serve_seq *next;        /* waiting queue */
};

/* One step in flight (rank 0), or a receive buffer (other ranks). */
typedef struct lane {
    wire_hdr *hdr;             /* + wire_seq[max_seqs] */
    wire_hdr *ids;             /* + int32[max_seqs] */
    sq_serve_seq **seqs;       /* (max_seqs) rank 0: who is in the step */
    int32_t *tok;              /* (max_step_tokens) rank 0: ids to embed */
    sq_seq_span *spans;        /* (max_seqs) */
    void *act;                 /* (max_step_tokens, hidden) backend memory */
    sq_xfer *send_hdr, *send_act, *send_ids, *recv_ids;
    bool busy;
} lane;

struct sq_serve_engine {
    sq_serve_engine_params p;
    sq_backend *be;
    int rank, n;
    int64_t H, V;
    sq_mem_kind mem;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sq_serve_seq *wait_head, *wait_tail;
    int32_t n_waiting, n_running;
    sq_serve_seq **slots;      /* (max_seqs) */
    bool stopping, failed;
    sq_serve_stats st;
    double t_active0;          /* when the running count went above 0 */
    lane *lanes;
    int n_lanes;
    int *fifo, fifo_head, fifo_n;   /* lanes in flight, oldest first */
    int32_t step_no;
    int die_step, die_mode;
    double step_delay_s;       /* test hook: rank 0 waits this long after each step */
};

static size_t hdr_bytes(const sq_serve_engine *e) {
    return sizeof(wire_hdr) + (size_t)e->p.max_seqs * sizeof(wire_seq);
}
static size_t ids_bytes(const sq_serve_engine *e) {
    return sizeof(wire_hdr) + (size_t)e->p.max_seqs * sizeof(int32_t);
}

/* ---- create / destroy ---------------------------------------------------------------------- */

static void seq_unref(sq_serve_seq *s) {   /* under the lock */
    if (!s || --s->refs > 0) return;
    free(s->prompt);
    free(s->gen);
    free(s);
}

void sq_serve_engine_destroy(sq_serve_engine *e) {
    if (!e) return;
    for (int i = 0; e->lanes && i < e->n_lanes; i++) {
        lane *l = &e->lanes[i];
        sq_transport_cancel(e->p.t, l->send_hdr);
        sq_transport_cancel(e->p.t, l->send_act);
        sq_transport_cancel(e->p.t, l->send_ids);
        sq_transport_cancel(e->p.t, l->recv_ids);
        free(l->hdr);
        free(l->ids);
        free(l->seqs);
        free(l->tok);
        free(l->spans);
        if (l->act) sq_backend_free(e->be, l->act);
    }
    free(e->lanes);
    free(e->fifo);
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; e->slots && i < e->p.max_seqs; i++) seq_unref(e->slots[i]);
    for (sq_serve_seq *s = e->wait_head, *nx; s; s = nx) {
        nx = s->next;
        seq_unref(s);
    }
    pthread_mutex_unlock(&e->mu);
    free(e->slots);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

sq_status sq_serve_engine_create(const sq_serve_engine_params *p, sq_serve_engine **out,
                                 sq_error *err) {
    if (out) *out = NULL;
    if (!p || !out || !p->t || !p->stage)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "serve engine: NULL argument");
    const sq_stage_params *sp = sq_stage_get_params(p->stage);
    if (p->max_seqs < 1 || p->max_seqs > sp->max_batch || p->max_seq < 2 || p->max_seq > sp->max_seq ||
        p->max_step_tokens < p->max_seqs || p->max_step_tokens > sp->max_tokens || p->max_queue < 0 ||
        p->n_eos < 0 || p->n_eos > SQ_SERVE_MAX_EOS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "serve engine: %d sequences x %lld positions, %lld tokens a step do not "
                            "fit the stage (%lld slots x %lld positions, %lld rows)",
                            p->max_seqs, (long long)p->max_seq, (long long)p->max_step_tokens,
                            (long long)sp->max_batch, (long long)sp->max_seq, (long long)sp->max_tokens);
    if (sq_transport_n_ranks(p->t) > SQ_SERVE_MAX_STAGES)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL, "serve: at most %d ranks", SQ_SERVE_MAX_STAGES);
    sq_serve_engine *e = calloc(1, sizeof *e);
    if (!e) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "serve engine: out of memory");
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->p = *p;
    e->be = sq_stage_backend(p->stage);
    e->rank = sq_transport_rank(p->t);
    e->n = sq_transport_n_ranks(p->t);
    e->H = sp->cfg.hidden_size;
    e->V = sp->cfg.vocab_size;
    e->mem = !strncmp(sq_backend_name(e->be), "cpu", 3) ? SQ_MEM_HOST : SQ_MEM_DEVICE;
    e->st.max_seqs = p->max_seqs;
    e->st.n_stages = e->n;
    e->st.healthy = true;
    e->die_step = -1;
    const char *dr = getenv("SHARDQ_TEST_DIE_RANK");
    if (dr && e->rank > 0 && atoi(dr) == e->rank) {
        const char *ds = getenv("SHARDQ_TEST_DIE_STEP"), *dm = getenv("SHARDQ_TEST_DIE_MODE");
        e->die_step = ds ? atoi(ds) : 1;
        e->die_mode = dm && !strcmp(dm, "hang");
    }
    const char *sd = getenv("SHARDQ_TEST_STEP_DELAY_MS");
    if (sd && e->rank == 0) e->step_delay_s = atof(sd) / 1000.0;
    /* rank 0 keeps one step in flight per stage; the others double-buffer */
    e->n_lanes = e->rank == 0 ? e->n : 2;
    e->slots = calloc((size_t)p->max_seqs, sizeof *e->slots);
    e->lanes = calloc((size_t)e->n_lanes, sizeof *e->lanes);
    e->fifo = calloc((size_t)e->n_lanes, sizeof *e->fifo);
    if (!e->slots || !e->lanes || !e->fifo) goto nomem;
    for (int i = 0; i < e->n_lanes; i++) {
        lane *l = &e->lanes[i];
        l->hdr = calloc(1, hdr_bytes(e));
        l->ids = calloc(1, ids_bytes(e));
        l->seqs = calloc((size_t)p->max_seqs, sizeof *l->seqs);
        l->tok = calloc((size_t)p->max_step_tokens, sizeof *l->tok);
        l->spans = calloc((size_t)p->max_seqs, sizeof *l->spans);
        if (!l->hdr || !l->ids || !l->seqs || !l->tok || !l->spans) goto nomem;
        sq_status rc = sq_backend_alloc(e->be, (uint64_t)p->max_step_tokens * (uint64_t)e->H * sizeof(float),
                                        &l->act, err);
        if (rc != SQ_OK) {
            sq_serve_engine_destroy(e);
            return rc;
        }
    }
    *out = e;
    return SQ_OK;
nomem:
    sq_serve_engine_destroy(e);
    return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "serve engine: out of memory");
}

/* ---- the caller's side (any thread) ------------------------------------------------------- */

sq_serve_submit_result sq_serve_submit(sq_serve_engine *e, const sq_serve_request *r,
                                       sq_serve_seq **out, char *why, size_t why_n) {
    *out = NULL;
    if (!r || r->n_prompt < 1 || !r->prompt || r->max_new < 1 ||
        (int64_t)r->n_prompt + r->max_new > e->p.max_seq) {
        snprintf(why, why_n, "prompt of %d tokens + max_tokens %d exceeds the context of %lld",
                 r ? r->n_prompt : 0, r ? r->max_new : 0, (long long)e->p.max_seq);
        return SQ_SERVE_BAD_REQUEST;
    }
    for (int32_t i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= e->V) {
            snprintf(why, why_n, "token id %d at position %d is outside the vocabulary [0, %lld)",
                     r->prompt[i], i, (long long)e->V);
            return SQ_SERVE_BAD_REQUEST;
        }
    pthread_mutex_lock(&e->mu);
    sq_serve_submit_result res = SQ_SERVE_QUEUED;
    if (e->stopping || e->failed) {
        snprintf(why, why_n, "%s", e->failed ? "the pipeline failed" : "the server is shutting down");
        res = SQ_SERVE_NOT_ACCEPTING;
    } else if (e->n_waiting >= e->p.max_queue) {
        snprintf(why, why_n, "%d requests are waiting (the queue's bound); retry later", e->n_waiting);
        res = SQ_SERVE_QUEUE_FULL;
    }
    if (res != SQ_SERVE_QUEUED) {
        e->st.requests_rejected++;
        pthread_mutex_unlock(&e->mu);
        return res;
    }
    sq_serve_seq *s = calloc(1, sizeof *s);
    if (s) {
        s->prompt = malloc((size_t)r->n_prompt * sizeof *s->prompt);
        s->gen = malloc((size_t)r->max_new * sizeof *s->gen);
    }
    if (!s || !s->prompt || !s->gen) {
        if (s) {
            free(s->prompt);
            free(s->gen);
        }
        free(s);
        pthread_mutex_unlock(&e->mu);
        snprintf(why, why_n, "out of memory");
        return SQ_SERVE_NOT_ACCEPTING;
    }
    memcpy(s->prompt, r->prompt, (size_t)r->n_prompt * sizeof *s->prompt);
    s->n_prompt = r->n_prompt;
    s->max_new = r->max_new;
    s->sample = r->sample;
    s->extra_eos = r->extra_eos;
    s->ignore_eos = r->ignore_eos;
    s->slot = -1;
    s->refs = 2;
    if (e->wait_tail) e->wait_tail->next = s;
    else e->wait_head = s;
    e->wait_tail = s;
    e->n_waiting++;
    e->st.requests_total++;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *out = s;
    return SQ_SERVE_QUEUED;
}

int32_t sq_serve_seq_wait(sq_serve_engine *e, sq_serve_seq *s, int32_t have, double timeout_s,
                          int32_t *ids, int32_t cap, sq_serve_progress *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(timeout_s * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&e->mu);
    while (s->n_gen <= have && s->finish == SQ_SERVE_RUNNING)
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) != 0) break;
    int32_t n = 0;
    for (int32_t i = have; i < s->n_gen && n < cap; i++) ids[n++] = s->gen[i];
    if (out) {
        out->n_gen = s->n_gen;
        out->finish = s->finish;
        out->t_first_s = s->t_first;
        snprintf(out->error, sizeof out->error, "%s", s->error);
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

void sq_serve_seq_cancel(sq_serve_engine *e, sq_serve_seq *s) {
    if (!s) return;
    pthread_mutex_lock(&e->mu);
    s->cancel = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void sq_serve_seq_release(sq_serve_engine *e, sq_serve_seq *s) {
    if (!s) return;
    pthread_mutex_lock(&e->mu);
    s->cancel = true;
    seq_unref(s);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void sq_serve_engine_stats(sq_serve_engine *e, sq_serve_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    out->waiting = e->n_waiting;
    out->running = e->n_running;
    out->stopping = e->stopping;
    if (e->n_running > 0) out->active_s += sq_now_s() - e->t_active0;
    pthread_mutex_unlock(&e->mu);
}

/* ---- rank 0: the scheduler ------------------------------------------------------------------- */

/* Ends s (under the lock); the slot is freed by retire(). */
static void finish_seq(sq_serve_engine *e, sq_serve_seq *s, sq_serve_finish f, const char *why) {
    if (s->finish != SQ_SERVE_RUNNING) return;
    s->finish = f;
    if (why) snprintf(s->error, sizeof s->error, "%s", why);
    pthread_cond_broadcast(&e->cv);   /* its reader may be waiting */
}

/* Under the lock: frees the slots of ended sequences not in flight, ends cancelled ones, then
 * admits waiting sequences into free slots (FIFO). */
static void retire_and_admit(sq_serve_engine *e) {
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        sq_serve_seq *s = e->slots[i];
        if (!s || s->in_flight) continue;
        if (s->cancel) finish_seq(e, s, SQ_SERVE_CANCELLED, "cancelled");
        if (s->finish == SQ_SERVE_RUNNING) continue;
        e->slots[i] = NULL;
        s->slot = -1;
        if (--e->n_running == 0) e->st.active_s += sq_now_s() - e->t_active0;
        seq_unref(s);
    }
    /* cancelled while waiting: dropped from the queue */
    for (sq_serve_seq **pp = &e->wait_head; *pp;) {
        sq_serve_seq *s = *pp;
        if (s->cancel || e->stopping) {
            finish_seq(e, s, e->stopping && !s->cancel ? SQ_SERVE_ERROR : SQ_SERVE_CANCELLED,
                       e->stopping && !s->cancel ? "the server is shutting down" : "cancelled");
            *pp = s->next;
            e->n_waiting--;
            seq_unref(s);
        } else {
            pp = &s->next;
        }
    }
    e->wait_tail = NULL;
    for (sq_serve_seq *s = e->wait_head; s; s = s->next) e->wait_tail = s;
    for (int32_t i = 0; i < e->p.max_seqs && e->wait_head; i++) {
        if (e->slots[i]) continue;
        sq_serve_seq *s = e->wait_head;
        e->wait_head = s->next;
        if (!e->wait_head) e->wait_tail = NULL;
        s->next = NULL;
        e->n_waiting--;
        s->slot = i;
        e->slots[i] = s;
        if (e->n_running++ == 0) e->t_active0 = sq_now_s();
    }
}

/* Under the lock: fills lane l with up to `cap_seqs` sequences not in flight (slot order after
 * a rotating start, so every sequence gets its turn).  Returns the number of sequences. */
static int32_t form_step(sq_serve_engine *e, lane *l, int32_t cap_seqs, int32_t *rot) {
    wire_seq *ws = (wire_seq *)(l->hdr + 1);
    int32_t n = 0;
    int64_t rows = 0, budget = e->p.max_step_tokens;
    for (int32_t k = 0; k < e->p.max_seqs && n < cap_seqs && rows < budget; k++) {
        int32_t i = (*rot + k) % e->p.max_seqs;
        sq_serve_seq *s = e->slots[i];
        if (!s || s->in_flight || s->finish != SQ_SERVE_RUNNING || s->cancel) continue;
        int32_t nt, pos;
        bool want;
        if (s->n_fed < s->n_prompt) {   /* a prompt chunk */
            nt = s->n_prompt - s->n_fed;
            if (e->p.prefill_chunk > 0 && nt > e->p.prefill_chunk) nt = e->p.prefill_chunk;
            if (nt > budget - rows) nt = (int32_t)(budget - rows);
            pos = s->n_fed;
            want = s->n_fed + nt == s->n_prompt;
            memcpy(l->tok + rows, s->prompt + s->n_fed, (size_t)nt * sizeof(int32_t));
            s->n_fed += nt;
        } else {                        /* one decode row: the last id */
            nt = 1;
            pos = s->n_prompt + s->n_gen - 1;
            want = true;
            l->tok[rows] = s->gen[s->n_gen - 1];
        }
        s->in_flight = true;
        l->seqs[n] = s;
        ws[n] = (wire_seq){.slot = i, .pos = pos, .n_tokens = nt, .want = want, .step = s->n_gen,
                           .top_k = s->sample.top_k, .temperature = s->sample.temperature,
                           .top_p = s->sample.top_p, .seed = s->sample.seed};
        l->spans[n] = (sq_seq_span){.slot = i, .start_pos = pos, .n_tokens = nt};
        rows += nt;
        n++;
    }
    *rot = (*rot + (n > 0 ? 1 : 0)) % e->p.max_seqs;
    l->hdr->magic = WIRE_MAGIC;
    l->hdr->kind = KIND_WORK;
    l->hdr->n_seqs = n;
    l->hdr->n_rows = rows;
    return n;
}

/* Under the lock: takes a step's sampled ids (ids[i] for the step's sequence i). */
static void take_ids(sq_serve_engine *e, lane *l, const int32_t *ids) {
    const wire_seq *ws = (const wire_seq *)(l->hdr + 1);
    double now = sq_now_s();
    for (int32_t i = 0; i < l->hdr->n_seqs; i++) {
        sq_serve_seq *s = l->seqs[i];
        s->in_flight = false;
        if (!ws[i].want || s->finish != SQ_SERVE_RUNNING || s->cancel) continue;
        int32_t id = ids[i];
        s->gen[s->n_gen++] = id;
        if (s->n_gen == 1) {
            s->t_first = now;
            e->st.prompt_tokens += (uint64_t)s->n_prompt;
        }
        e->st.generated_tokens++;
        bool eos = id == s->extra_eos;
        for (int32_t k = 0; k < e->p.n_eos; k++) eos |= id == e->p.eos[k];
        if (eos && !s->ignore_eos) finish_seq(e, s, SQ_SERVE_EOS, NULL);
        else if (s->n_gen >= s->max_new) finish_seq(e, s, SQ_SERVE_LENGTH, NULL);
    }
    e->st.steps++;
    pthread_cond_broadcast(&e->cv);
}

/* The last stage's part of a step: head on each sequence's last row, then one draw per
 * sequence that wants one, keyed (seed, 0, step) as `shardq run` keys a lone prompt. */
static sq_status sample_step(sq_serve_engine *e, const wire_hdr *h, const sq_seq_span *spans, void *act,
                             int32_t *ids, sq_error *err) {
    const wire_seq *ws = (const wire_seq *)(h + 1);
    sq_stage_input in = {.n_seqs = h->n_seqs, .seqs = spans};
    sq_status rc = sq_stage_head(e->p.stage, &in, act, err);
    const float *logits = sq_stage_logits_d(e->p.stage);
    for (int32_t i = 0; rc == SQ_OK && i < h->n_seqs; i++) {
        ids[i] = -1;
        if (!ws[i].want) continue;
        sq_sample_params sp = {.temperature = ws[i].temperature, .top_k = ws[i].top_k,
                               .top_p = ws[i].top_p, .seed = ws[i].seed};
        uint64_t seq_id = 0, step = (uint64_t)ws[i].step;
        rc = sq_backend_sample(e->be, logits + (size_t)i * (size_t)e->V, 1, e->V, &sp, &seq_id, &step,
                               &ids[i], err);
        if (rc == SQ_OK && (ids[i] < 0 || ids[i] >= e->V))
            rc = sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "sampling returned id %d", ids[i]);
    }
    return rc;
}

/* Rank 0: runs stage 0 of lane l's step and sends it on (or, alone, the whole step). */
static sq_status launch(sq_serve_engine *e, lane *l, sq_error *err) {
    wire_hdr *h = l->hdr;
    sq_stage_input in = {.n_seqs = h->n_seqs, .seqs = l->spans, .token_ids = l->tok};
    double t0 = sq_now_s();
    sq_status rc = sq_stage_embed(e->p.stage, &in, l->act, err);
    if (rc == SQ_OK) rc = sq_stage_layers(e->p.stage, &in, l->act, err);
    if (rc == SQ_OK && e->mem == SQ_MEM_DEVICE) rc = sq_backend_sync(e->be, err);
    if (rc != SQ_OK) return rc;
    if (e->n == 1) {
        int32_t *ids = (int32_t *)(l->ids + 1);
        rc = sample_step(e, h, l->spans, l->act, ids, err);
        pthread_mutex_lock(&e->mu);
        e->st.busy_s[0] += sq_now_s() - t0;
        if (rc == SQ_OK) take_ids(e, l, ids);
        pthread_mutex_unlock(&e->mu);
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    e->st.busy_s[0] += sq_now_s() - t0;
    h->busy[0] = e->st.busy_s[0];
    pthread_mutex_unlock(&e->mu);
    h->step_no = e->step_no++;
    uint64_t act_bytes = (uint64_t)h->n_rows * (uint64_t)e->H * sizeof(float);
    rc = sq_transport_isend(e->p.t, 1, TAG_HDR, h, sizeof *h + (uint64_t)h->n_seqs * sizeof(wire_seq),
                            SQ_MEM_HOST, &l->send_hdr, err);
    if (rc == SQ_OK)
        rc = sq_transport_isend(e->p.t, 1, TAG_ACT, l->act, act_bytes, e->mem, &l->send_act, err);
    if (rc == SQ_OK)
        rc = sq_transport_irecv(e->p.t, e->n - 1, TAG_IDS, l->ids, ids_bytes(e), SQ_MEM_HOST, &l->recv_ids, err);
    if (rc == SQ_OK) {
        l->busy = true;
        e->fifo[(e->fifo_head + e->fifo_n++) % e->n_lanes] = (int)(l - e->lanes);
    }
    return rc;
}

/* Rank 0: the oldest step in flight, if its ids came back (non-blocking). */
static sq_status collect(sq_serve_engine *e, bool *got, sq_error *err) {
    *got = false;
    if (!e->fifo_n) return SQ_OK;
    lane *l = &e->lanes[e->fifo[e->fifo_head]];
    bool done = false;
    uint64_t n = 0;
    sq_status rc = sq_transport_test(e->p.t, l->recv_ids, &done, &n, err);
    if (rc != SQ_OK) {
        l->recv_ids = NULL;
        return rc;
    }
    if (!done) return SQ_OK;
    l->recv_ids = NULL;
    wire_hdr *r = l->ids;
    if (n < sizeof *r || r->magic != WIRE_MAGIC || r->kind != KIND_IDS || r->step_no != l->hdr->step_no ||
        r->n_seqs != l->hdr->n_seqs || n != sizeof *r + (uint64_t)r->n_seqs * sizeof(int32_t))
        return sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent malformed ids for step %d", e->n - 1,
                            l->hdr->step_no);
    const int32_t *ids = (const int32_t *)(r + 1);
    const wire_seq *ws = (const wire_seq *)(l->hdr + 1);
    for (int32_t i = 0; i < r->n_seqs; i++)
        if (ws[i].want && (ids[i] < 0 || ids[i] >= e->V))
            return sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent an impossible id %d", e->n - 1, ids[i]);
    /* the sends from this lane's buffers are done once the last stage answered */
    sq_status w = SQ_OK;
    if (l->send_hdr) w = sq_transport_wait(e->p.t, l->send_hdr, NULL, NULL, err);
    l->send_hdr = NULL;
    if (w == SQ_OK && l->send_act) w = sq_transport_wait(e->p.t, l->send_act, NULL, NULL, err);
    l->send_act = NULL;
    if (w != SQ_OK) return w;
    pthread_mutex_lock(&e->mu);
    for (int k = 1; k < e->n; k++) e->st.busy_s[k] = r->busy[k];
    take_ids(e, l, ids);
    pthread_mutex_unlock(&e->mu);
    l->busy = false;
    e->fifo_head = (e->fifo_head + 1) % e->n_lanes;
    e->fifo_n--;
    *got = true;
    return SQ_OK;
}

/* Rank 0 after a failure: every open request ends with the error. */
static void fail_all(sq_serve_engine *e, const sq_error *err) {
    char line[256];
    snprintf(line, sizeof line, "the pipeline failed: %.200s", err ? err->msg : "unknown error");
    pthread_mutex_lock(&e->mu);
    e->failed = true;
    e->st.healthy = false;
    for (int32_t i = 0; i < e->p.max_seqs; i++)
        if (e->slots[i]) finish_seq(e, e->slots[i], SQ_SERVE_ERROR, line);
    for (sq_serve_seq *s = e->wait_head; s; s = s->next) finish_seq(e, s, SQ_SERVE_ERROR, line);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static sq_status send_stop(sq_serve_engine *e, sq_error *err) {
    if (e->n == 1) return SQ_OK;
    lane *l = &e->lanes[0];
    memset(l->hdr, 0, sizeof *l->hdr);
    l->hdr->magic = WIRE_MAGIC;
    l->hdr->kind = KIND_STOP;
    l->hdr->step_no = e->step_no;
    sq_xfer *x = NULL, *r = NULL;
    sq_status rc = sq_transport_isend(e->p.t, 1, TAG_HDR, l->hdr, sizeof *l->hdr, SQ_MEM_HOST, &x, err);
    if (rc == SQ_OK) rc = sq_transport_wait(e->p.t, x, NULL, NULL, err);
    /* the last stage echoes the marker: every rank is past its last transfer */
    if (rc == SQ_OK) rc = sq_transport_irecv(e->p.t, e->n - 1, TAG_IDS, l->ids, ids_bytes(e), SQ_MEM_HOST, &r, err);
    if (rc == SQ_OK) rc = sq_transport_wait(e->p.t, r, NULL, NULL, err);
    if (rc == SQ_OK && (l->ids->magic != WIRE_MAGIC || l->ids->kind != KIND_STOP))
        rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d answered the stop marker wrongly", e->n - 1);
    return rc;
}

static void nap(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static sq_status run_first(sq_serve_engine *e, sq_error *err) {
    sq_status rc = SQ_OK;
    int32_t rot = 0;
    double deadline = 0, t_start = sq_now_s();
    int round = 0;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        if (e->p.stop_flag && *e->p.stop_flag && !e->stopping) {
            e->stopping = true;
            deadline = sq_now_s() + e->p.drain_timeout_s;
        }
        if (e->stopping && sq_now_s() > deadline)
            for (int32_t i = 0; i < e->p.max_seqs; i++)
                if (e->slots[i]) finish_seq(e, e->slots[i], SQ_SERVE_ERROR, "the server stopped (drain timeout)");
        retire_and_admit(e);
        bool quit = e->stopping && e->n_running == 0 && e->fifo_n == 0;
        pthread_mutex_unlock(&e->mu);
        if (quit) break;
        bool worked = false;
        /* launch steps on free lanes: split the ready sequences among them */
        for (int k = 0; k < e->n_lanes && e->fifo_n < e->n_lanes; k++) {
            lane *l = NULL;
            for (int j = 0; j < e->n_lanes && !l; j++)
                if (!e->lanes[j].busy) l = &e->lanes[j];
            if (!l) break;
            pthread_mutex_lock(&e->mu);
            int32_t cap = (e->n_running + e->n_lanes - 1) / e->n_lanes;
            if (cap < 1) cap = 1;
            int32_t n = form_step(e, l, cap, &rot);
            pthread_mutex_unlock(&e->mu);
            if (!n) break;
            if ((rc = launch(e, l, err)) != SQ_OK) goto fail;
            if (e->step_delay_s > 0) nap(e->step_delay_s);
            worked = true;
        }
        bool got = false;
        if ((rc = collect(e, &got, err)) != SQ_OK) goto fail;
        if (got || worked) {
            round = 0;
            continue;
        }
        if (e->n > 1 && (rc = sq_transport_alive(e->p.t, t_start, "the next step's ids", err)) != SQ_OK) goto fail;
        if (e->fifo_n) {   /* a step takes milliseconds: sleep, leave the cores to the stages */
            nap(round < 8 ? 20e-6 : round < 32 ? 100e-6 : 400e-6);
            round++;
        } else {
            /* idle: wait for a submission (the transport's heartbeats every few ms) */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 5000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&e->mu);
            if (!e->n_waiting && !e->n_running) pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
        }
    }
    rc = send_stop(e, err);
    if (rc == SQ_OK && e->n > 1) rc = sq_transport_close(e->p.t, err);
    if (rc != SQ_OK) goto fail;
    return SQ_OK;
fail:
    if (rc != SQ_ERR_PEER) sq_transport_abort_peers(e->p.t, err);
    fail_all(e, err);
    return rc == SQ_OK ? SQ_ERR_INTERNAL : rc;
}

/* ---- the other ranks ------------------------------------------------------------------------- */

static void maybe_die(sq_serve_engine *e, int32_t step) {
    if (e->die_step < 0 || step + 1 < e->die_step) return;
    if (!e->die_mode) raise(SIGKILL);
    for (;;) pause();
}

static sq_status run_other(sq_serve_engine *e, sq_error *err) {
    const bool last = e->rank == e->n - 1;
    const int prev = e->rank - 1, next = e->rank + 1;
    sq_status rc = SQ_OK;
    int32_t expect = 0;
    double busy = 0;
    for (int k = 0;; k = (k + 1) % e->n_lanes) {
        lane *l = &e->lanes[k];
        /* this buffer's sends from two steps ago must be out */
        if (l->send_hdr && (rc = sq_transport_wait(e->p.t, l->send_hdr, NULL, NULL, err)) != SQ_OK) break;
        l->send_hdr = NULL;
        if (l->send_act && (rc = sq_transport_wait(e->p.t, l->send_act, NULL, NULL, err)) != SQ_OK) break;
        l->send_act = NULL;
        if (l->send_ids && (rc = sq_transport_wait(e->p.t, l->send_ids, NULL, NULL, err)) != SQ_OK) break;
        l->send_ids = NULL;
        sq_xfer *x = NULL;
        uint64_t got = 0;
        if ((rc = sq_transport_irecv(e->p.t, prev, TAG_HDR, l->hdr, hdr_bytes(e), SQ_MEM_HOST, &x, err)) != SQ_OK) break;
        if ((rc = sq_transport_wait(e->p.t, x, &got, NULL, err)) != SQ_OK) break;
        wire_hdr *h = l->hdr;
        if (got < sizeof *h || h->magic != WIRE_MAGIC || (h->kind != KIND_WORK && h->kind != KIND_STOP) ||
            h->n_seqs < 0 || h->n_seqs > e->p.max_seqs || h->n_rows < 0 || h->n_rows > e->p.max_step_tokens ||
            (h->kind == KIND_WORK && (h->step_no != expect || got != sizeof *h + (uint64_t)h->n_seqs * sizeof(wire_seq)))) {
            rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent a malformed step header", prev);
            break;
        }
        if (h->kind == KIND_STOP) {   /* pass it on; the last stage echoes it to rank 0 */
            if ((rc = sq_transport_isend(e->p.t, last ? 0 : next, last ? TAG_IDS : TAG_HDR, h, sizeof *h,
                                         SQ_MEM_HOST, &x, err)) != SQ_OK)
                break;
            if ((rc = sq_transport_wait(e->p.t, x, NULL, NULL, err)) != SQ_OK) break;
            for (int j = 0; j < e->n_lanes && rc == SQ_OK; j++) {   /* nothing may be pending at close */
                lane *o = &e->lanes[j];
                sq_xfer **xs[3] = {&o->send_hdr, &o->send_act, &o->send_ids};
                for (int q = 0; q < 3 && rc == SQ_OK; q++)
                    if (*xs[q]) {
                        rc = sq_transport_wait(e->p.t, *xs[q], NULL, NULL, err);
                        *xs[q] = NULL;
                    }
            }
            if (rc != SQ_OK) break;
            return sq_transport_close(e->p.t, err);
        }
        expect++;
        const wire_seq *ws = (const wire_seq *)(h + 1);
        int64_t rows = 0;
        for (int32_t i = 0; i < h->n_seqs; i++) {
            if (ws[i].slot < 0 || ws[i].slot >= e->p.max_seqs || ws[i].n_tokens < 1 || ws[i].pos < 0 ||
                (int64_t)ws[i].pos + ws[i].n_tokens > e->p.max_seq) {
                rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent a step with a bad sequence", prev);
                break;
            }
            l->spans[i] = (sq_seq_span){.slot = ws[i].slot, .start_pos = ws[i].pos, .n_tokens = ws[i].n_tokens};
            rows += ws[i].n_tokens;
        }
        if (rc != SQ_OK) break;
        if (rows != h->n_rows) {
            rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent a step whose rows disagree", prev);
            break;
        }
        uint64_t act_bytes = (uint64_t)rows * (uint64_t)e->H * sizeof(float);
        if ((rc = sq_transport_irecv(e->p.t, prev, TAG_ACT, l->act, act_bytes, e->mem, &x, err)) != SQ_OK) break;
        if ((rc = sq_transport_wait(e->p.t, x, &got, NULL, err)) != SQ_OK) break;
        if (got != act_bytes) {
            rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "rank %d sent %llu activation bytes for %lld rows", prev,
                              (unsigned long long)got, (long long)rows);
            break;
        }
        maybe_die(e, expect - 1);
        double t0 = sq_now_s();
        sq_stage_input in = {.n_seqs = h->n_seqs, .seqs = l->spans};
        if ((rc = sq_stage_layers(e->p.stage, &in, l->act, err)) != SQ_OK) break;
        if (!last) {
            if (e->mem == SQ_MEM_DEVICE && (rc = sq_backend_sync(e->be, err)) != SQ_OK) break;
            busy += sq_now_s() - t0;
            h->busy[e->rank] = busy;
            if ((rc = sq_transport_isend(e->p.t, next, TAG_HDR, h, got = sizeof *h + (uint64_t)h->n_seqs * sizeof(wire_seq),
                                         SQ_MEM_HOST, &l->send_hdr, err)) != SQ_OK)
                break;
            if ((rc = sq_transport_isend(e->p.t, next, TAG_ACT, l->act, act_bytes, e->mem, &l->send_act, err)) != SQ_OK)
                break;
        } else {
            int32_t *ids = (int32_t *)(l->ids + 1);
            if ((rc = sample_step(e, h, l->spans, l->act, ids, err)) != SQ_OK) break;
            busy += sq_now_s() - t0;
            h->busy[e->rank] = busy;
            *l->ids = *h;
            l->ids->kind = KIND_IDS;
            if ((rc = sq_transport_isend(e->p.t, 0, TAG_IDS, l->ids, sizeof *h + (uint64_t)h->n_seqs * sizeof(int32_t),
                                         SQ_MEM_HOST, &l->send_ids, err)) != SQ_OK)
                break;
        }
    }
    if (rc != SQ_ERR_PEER) sq_transport_abort_peers(e->p.t, err);
    return rc == SQ_OK ? SQ_ERR_INTERNAL : rc;
}

sq_status sq_serve_engine_run(sq_serve_engine *e, sq_error *err) {
    if (!e) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "serve engine: NULL");
    return e->rank == 0 ? run_first(e, err) : run_other(e, err);
}
