/* Owns the transport handle, the pool of pending transfers, the poll loop with its deadline,
 * and the control plane: heartbeats to the ring neighbours, abort notices, agree / bcast /
 * gather / close.  The data plane itself is behind t->ops (mpi.c).
 * Must never call a blocking MPI function after create (everything is MPI_Test in a loop with
 * a deadline), never print, never exit. */
#include "transport_impl.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SQ_ABORT_MAGIC 0x53514142 /* "SQAB" */

sq_status sq_mpi_error(sq_error *err, int mpi_rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(mpi_rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "code %d", mpi_rc);
    /* "MPI_Isend(buf, …)" -> "MPI_Isend" keeps the line short */
    char name[64];
    size_t k = 0;
    while (what && what[k] && what[k] != '(' && k + 1 < sizeof name) { name[k] = what[k]; k++; }
    name[k] = '\0';
    return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "%s failed: %s", name, s);
}

sq_transport_params sq_transport_params_default(void) {
    sq_transport_params p;
    memset(&p, 0, sizeof p);
    p.kind = SQ_TRANSPORT_MPI;
    p.comm = MPI_COMM_WORLD;
    p.prev = p.next = -1;
    p.timeout_s = 30.0;
    p.max_inflight = 256;
    p.device = -1;
    return p;
}

/* ---- the poll loop's pacing ------------------------------------------------------------ */

/* Spin briefly (latency), then sleep in growing steps up to 200 us (oversubscribed ranks must
 * leave the CPU to the ones computing). */
void sq_transport_backoff(int *round) {
    int r = (*round)++;
    if (r < 32) {
        sched_yield();
        return;
    }
    long us = r < 64 ? 20 : (r < 128 ? 50 : 200);
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

/* ---- create / destroy ------------------------------------------------------------------ */

static void hb_post_recv(sq_transport *t, sq_hb_chan *c, sq_error *err, sq_status *st) {
    int rc = MPI_Irecv(&c->recv_val, 1, MPI_INT64_T, c->peer, SQ_TAG_HEARTBEAT, t->comm,
                       &c->recv_req);
    if (rc != MPI_SUCCESS) *st = sq_mpi_error(err, rc, "MPI_Irecv(heartbeat)");
}

sq_status sq_transport_create(const sq_transport_params *params, sq_transport **out,
                              sq_error *err) {
    *out = NULL;
    sq_status st = SQ_OK;
    if (!params) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: no parameters");
    const sq_transport_ops *ops = NULL;
    const sq_dplane_ops *dplane = params->dplane;
    if (params->kind == SQ_TRANSPORT_MPI) ops = &sq_transport_mpi_ops;
    else if (params->kind == SQ_TRANSPORT_NCCL) {
        ops = &sq_transport_nccl_ops;
#ifdef SHARDQ_HAVE_CUDA
        if (!dplane) dplane = &sq_dplane_nccl_ops;
#else
        if (!dplane)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                                "the nccl transport is not built in this shardq (use --transport mpi)");
#endif
    } else return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "unknown transport kind %d", (int)params->kind);

    sq_transport *t = calloc(1, sizeof *t);
    if (!t) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a transport");
    t->ops = ops;
    t->comm = MPI_COMM_NULL;
    t->abort_req = MPI_REQUEST_NULL;
    t->log = params->log;
    t->device = params->device;
    t->dplane = dplane;
    t->dplane_user = params->dplane_user;
    t->devcopy = params->devcopy;
    t->devcopy_user = params->devcopy_user;
#ifdef SHARDQ_HAVE_CUDA
    if (!t->devcopy) t->devcopy = &sq_devcopy_cuda_ops;
#endif
    t->timeout_s = params->timeout_s > 0 ? params->timeout_s : 30.0;
    t->hb_interval_s = t->timeout_s / 8 < 0.5 ? t->timeout_s / 8 : 0.5;
    t->n_xfers = params->max_inflight > 0 ? params->max_inflight : 256;
    if (t->n_xfers > 1 << 20) t->n_xfers = 1 << 20;
    for (int i = 0; i < 2; i++)
        t->chans[i].send_req = t->chans[i].recv_req = MPI_REQUEST_NULL;

    SQ_MPI_CHECK(st, err, MPI_Comm_dup(params->comm, &t->comm));
    SQ_MPI_CHECK(st, err, MPI_Comm_set_errhandler(t->comm, MPI_ERRORS_RETURN));
    SQ_MPI_CHECK(st, err, MPI_Comm_rank(t->comm, &t->rank));
    SQ_MPI_CHECK(st, err, MPI_Comm_size(t->comm, &t->n_ranks));
    if (err) err->rank = t->rank;
    int p = t->n_ranks;
    t->prev = params->prev >= 0 ? params->prev : (t->rank - 1 + p) % p;
    t->next = params->next >= 0 ? params->next : (t->rank + 1) % p;
    if (t->prev >= p || t->next >= p) {
        st = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                          "transport: neighbour rank %d or %d out of range (%d ranks)", t->prev,
                          t->next, p);
        goto fail;
    }
    {
        void *v = NULL;
        int flag = 0;
        SQ_MPI_CHECK(st, err, MPI_Comm_get_attr(t->comm, MPI_TAG_UB, &v, &flag));
        int ub = flag && v ? *(int *)v : 32767;
        t->max_tag = ub - SQ_TAG_DATA0;
    }
    t->xfers = calloc((size_t)t->n_xfers, sizeof *t->xfers);
    if (!t->xfers) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for %d transfer handles", t->n_xfers);
        goto fail;
    }
    for (int i = 0; i < t->n_xfers; i++) {
        t->xfers[i].index = i;
        t->xfers[i].req = MPI_REQUEST_NULL;
    }
    double now = sq_now_s();
    int nb[2] = {t->prev, t->next};
    for (int i = 0; i < 2; i++) {
        if (nb[i] == t->rank || (i == 1 && t->n_chans == 1 && t->chans[0].peer == nb[i])) continue;
        sq_hb_chan *c = &t->chans[t->n_chans++];
        c->peer = nb[i];
        c->last_heard = c->last_sent = now;
        hb_post_recv(t, c, err, &st);
        if (st != SQ_OK) goto fail;
    }
    SQ_MPI_CHECK(st, err, MPI_Irecv(&t->abort_in, (int)sizeof t->abort_in, MPI_BYTE, MPI_ANY_SOURCE,
                                    SQ_TAG_ABORT, t->comm, &t->abort_req));
    /* after the control plane: a bring-up polls heartbeats and abort notices while it waits */
    if (ops->init) {
        st = ops->init(t, err);
        if (st != SQ_OK) goto fail;
    }
    *out = t;
    return SQ_OK;
fail:
    sq_transport_destroy(t);
    return st;
}

static void cancel_req(MPI_Request *r) {
    if (*r == MPI_REQUEST_NULL) return;
    MPI_Cancel(r);
    MPI_Request_free(r);
    *r = MPI_REQUEST_NULL;
}

void sq_transport_destroy(sq_transport *t) {
    if (!t) return;
    if (t->xfers)
        for (int i = 0; i < t->n_xfers; i++)
            if (t->xfers[i].in_use) sq_transport_cancel(t, &t->xfers[i]);
    for (int i = 0; i < t->n_chans; i++) {
        cancel_req(&t->chans[i].recv_req);
        if (t->chans[i].send_req != MPI_REQUEST_NULL) MPI_Request_free(&t->chans[i].send_req);
    }
    cancel_req(&t->abort_req);
    if (t->ops && t->ops->fini) t->ops->fini(t);
    /* After a failure messages may still be in flight on this communicator; freeing it would
     * let its context id be reused by a later one where they could match.  Keep it. */
    if (t->comm != MPI_COMM_NULL && !t->failed) MPI_Comm_free(&t->comm);
    free(t->xfers);
    free(t);
}

int sq_transport_rank(const sq_transport *t) { return t->rank; }
int sq_transport_n_ranks(const sq_transport *t) { return t->n_ranks; }
const char *sq_transport_name(const sq_transport *t) { return t->ops->name; }
double sq_transport_timeout_s(const sq_transport *t) { return t->timeout_s; }
int sq_transport_max_tag(const sq_transport *t) { return t->max_tag; }

/* ---- control plane ---------------------------------------------------------------------- */

static sq_hb_chan *chan_of(sq_transport *t, int peer) {
    for (int i = 0; i < t->n_chans; i++)
        if (t->chans[i].peer == peer) return &t->chans[i];
    return NULL;
}

static sq_status peer_failed(sq_transport *t, sq_error *err) {
    t->failed = true;
    if (err) {
        int rank = err->rank;
        *err = t->peer_err;
        err->rank = rank;
    }
    return t->peer_err.code;
}

sq_status sq_transport_poll(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK;
    if (t->have_peer_err) return peer_failed(t, err);
    int flag = 0;
    MPI_Status status;
    if (t->abort_req != MPI_REQUEST_NULL) {
        SQ_MPI_CHECK(st, err, MPI_Test(&t->abort_req, &flag, &status));
        if (flag) {
            sq_abort_msg *m = &t->abort_in;
            m->msg[sizeof m->msg - 1] = '\0';
            int blamed = m->magic == SQ_ABORT_MAGIC ? m->blamed : status.MPI_SOURCE;
            int reporter = m->magic == SQ_ABORT_MAGIC ? m->reporter : status.MPI_SOURCE;
            sq_error_init(&t->peer_err, t->rank);
            if (blamed == reporter)
                sq_error_set(&t->peer_err, SQ_ERR_PEER, NULL, NULL, "rank %d failed: %s", blamed, m->msg);
            else
                sq_error_set(&t->peer_err, SQ_ERR_PEER, NULL, NULL,
                             "rank %d failed (reported by rank %d): %s", blamed, reporter, m->msg);
            t->have_peer_err = true;
            return peer_failed(t, err);
        }
    }
    double now = sq_now_s();
    for (int i = 0; i < t->n_chans; i++) {
        sq_hb_chan *c = &t->chans[i];
        /* drain every heartbeat that arrived */
        while (c->recv_req != MPI_REQUEST_NULL) {
            SQ_MPI_CHECK(st, err, MPI_Test(&c->recv_req, &flag, MPI_STATUS_IGNORE));
            if (!flag) break;
            c->last_heard = now;
            if (c->recv_val < 0) {
                c->peer_closed = true;
                break;
            }
            hb_post_recv(t, c, err, &st);
            if (st != SQ_OK) goto fail;
        }
        if (c->send_req != MPI_REQUEST_NULL) {
            SQ_MPI_CHECK(st, err, MPI_Test(&c->send_req, &flag, MPI_STATUS_IGNORE));
        }
        if (!t->closing && c->send_req == MPI_REQUEST_NULL && now - c->last_sent >= t->hb_interval_s) {
            c->send_val = t->hb_seq++;
            SQ_MPI_CHECK(st, err, MPI_Isend(&c->send_val, 1, MPI_INT64_T, c->peer, SQ_TAG_HEARTBEAT,
                                            t->comm, &c->send_req));
            c->last_sent = now;
        }
    }
    return SQ_OK;
fail:
    t->failed = true;
    return st;
}

void sq_transport_abort_peers(sq_transport *t, const sq_error *cause) {
    if (!t || t->n_ranks <= 1) return;
    t->failed = true;
    sq_abort_msg *m = &t->abort_out[0];
    memset(m, 0, sizeof *m);
    m->magic = SQ_ABORT_MAGIC;
    m->reporter = t->rank;
    m->blamed = cause && cause->rank >= 0 ? cause->rank : t->rank;
    m->code = cause ? (int32_t)cause->code : (int32_t)SQ_ERR_INTERNAL;
    if (cause) {
        sq_error c = *cause;
        c.rank = -1;   /* the rank travels in `blamed` */
        sq_error_format(&c, m->msg, sizeof m->msg);
    } else {
        snprintf(m->msg, sizeof m->msg, "aborted");
    }
    MPI_Request *reqs = calloc((size_t)t->n_ranks, sizeof *reqs);
    if (!reqs) return;
    int n = 0;
    for (int r = 0; r < t->n_ranks; r++) {
        if (r == t->rank) continue;
        if (MPI_Isend(m, (int)sizeof *m, MPI_BYTE, r, SQ_TAG_ABORT, t->comm, &reqs[n]) == MPI_SUCCESS) n++;
    }
    /* Small messages go out eagerly; wait up to a second for that, then let them be. */
    double deadline = sq_now_s() + 1.0;
    int round = 0, done = 0;
    while (n > 0 && sq_now_s() < deadline) {
        if (MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS || done) break;
        sq_transport_backoff(&round);
    }
    if (!done)
        for (int i = 0; i < n; i++)
            if (reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&reqs[i]);
    free(reqs);
}

/* A peer silent for longer than the timeout: blame it, tell everyone, fail. */
static sq_status peer_silent(sq_transport *t, int peer, double silent_s, const char *what,
                             sq_error *err) {
    sq_error blame;
    sq_error_init(&blame, peer);
    sq_error_set(&blame, SQ_ERR_PEER, NULL, NULL,
                 "stopped responding: nothing from it for %.1f s while rank %d waited for %s; "
                 "it died or hung", silent_s, t->rank, what);
    sq_transport_abort_peers(t, &blame);
    return sq_error_set(err, SQ_ERR_PEER, NULL, NULL,
                        "rank %d stopped responding: nothing from it for %.1f s while waiting for %s; "
                        "it died or hung", peer, silent_s, what);
}

/* Liveness check for a wait that started at `start` on `peer` (-1: any neighbour). */
static sq_status check_alive(sq_transport *t, int peer, double start, double now,
                             const char *what, sq_error *err) {
    if (peer >= 0 && peer != t->rank) {
        sq_hb_chan *c = chan_of(t, peer);
        double last = start;
        if (c && c->last_heard > last) last = c->last_heard;
        if (now - last > t->timeout_s) return peer_silent(t, peer, now - last, what, err);
        return SQ_OK;
    }
    for (int i = 0; i < t->n_chans; i++) {
        sq_hb_chan *c = &t->chans[i];
        double last = c->last_heard > start ? c->last_heard : start;
        if (!c->peer_closed && now - last > t->timeout_s)
            return peer_silent(t, c->peer, now - last, what, err);
    }
    return SQ_OK;
}

sq_status sq_transport_alive(sq_transport *t, double start, const char *what, sq_error *err) {
    sq_status st = sq_transport_poll(t, err);
    if (st == SQ_OK) st = check_alive(t, -1, start, sq_now_s(), what, err);
    return st;
}

/* ---- data plane ------------------------------------------------------------------------ */

static sq_status xfer_start(sq_transport *t, bool is_send, int peer, int tag, void *buf,
                            uint64_t n_bytes, sq_mem_kind mem, sq_xfer **out, sq_error *err) {
    *out = NULL;
    if (peer < 0 || peer >= t->n_ranks)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: peer rank %d out of range (%d ranks)", peer, t->n_ranks);
    if (tag < 0 || tag > t->max_tag)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: tag %d out of range [0, %d]", tag, t->max_tag);
    if (n_bytes > (uint64_t)INT_MAX)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "transport: a message of %llu bytes is above the 2 GiB limit of one transfer",
                            (unsigned long long)n_bytes);
    if (n_bytes > 0 && !buf)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: NULL buffer");
    sq_xfer *x = NULL;
    for (int i = 0; i < t->n_xfers; i++)
        if (!t->xfers[i].in_use) { x = &t->xfers[i]; break; }
    if (!x)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                            "transport: all %d transfer handles are pending", t->n_xfers);
    x->in_use = true;
    x->is_send = is_send;
    x->peer = peer;
    x->tag = tag;
    x->buf = buf;
    x->n_bytes = n_bytes;
    x->mem = mem;
    x->got_bytes = 0;
    x->req = MPI_REQUEST_NULL;
    x->impl = NULL;
    /* nccl: headers and token ids (host memory) go over MPI, activations over the data plane */
    x->ops = mem == SQ_MEM_HOST && t->ops->host_via_mpi ? &sq_transport_mpi_ops : t->ops;
    sq_status st = x->ops->start(t, x, err);
    if (st != SQ_OK) {
        x->in_use = false;
        return st;
    }
    *out = x;
    return SQ_OK;
}

sq_status sq_transport_isend(sq_transport *t, int peer, int tag, const void *buf,
                             uint64_t n_bytes, sq_mem_kind mem, sq_xfer **x, sq_error *err) {
    return xfer_start(t, true, peer, tag, (void *)buf, n_bytes, mem, x, err);
}

sq_status sq_transport_irecv(sq_transport *t, int peer, int tag, void *buf, uint64_t cap_bytes,
                             sq_mem_kind mem, sq_xfer **x, sq_error *err) {
    return xfer_start(t, false, peer, tag, buf, cap_bytes, mem, x, err);
}

void sq_transport_cancel(sq_transport *t, sq_xfer *x) {
    if (!t || !x || !x->in_use) return;
    x->ops->cancel(t, x);
    x->in_use = false;
}

static sq_status xfer_test(sq_transport *t, sq_xfer *x, bool *done, uint64_t *n_bytes,
                           sq_error *err) {
    *done = false;
    sq_status st = x->ops->test(t, x, done, err);
    if (st != SQ_OK) {
        t->failed = true;
        char what[sizeof err->msg];
        memcpy(what, err ? err->msg : "", err ? sizeof what : 1);
        sq_error_set(err, st, NULL, NULL, "%s rank %d (tag %d): %s", x->is_send ? "sending to" : "receiving from",
                     x->peer, x->tag, what);
        sq_transport_cancel(t, x);
        return st;
    }
    if (*done) {
        sq_hb_chan *c = chan_of(t, x->peer);
        if (c) c->last_heard = sq_now_s();
        if (n_bytes) *n_bytes = x->got_bytes;
        x->in_use = false;
    }
    return SQ_OK;
}

sq_status sq_transport_test(sq_transport *t, sq_xfer *x, bool *done, uint64_t *n_bytes,
                            sq_error *err) {
    *done = false;
    if (!x || !x->in_use) return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "transport: test of a finished transfer");
    sq_status st = xfer_test(t, x, done, n_bytes, err);
    if (st != SQ_OK || *done) return st;
    st = sq_transport_poll(t, err);
    if (st != SQ_OK) sq_transport_cancel(t, x);
    return st;
}

sq_status sq_transport_wait(sq_transport *t, sq_xfer *x, uint64_t *n_bytes, double *idle_s,
                            sq_error *err) {
    if (!x || !x->in_use) return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "transport: wait on a finished transfer");
    double start = sq_now_s();
    int round = 0;
    sq_status st = SQ_OK;
    for (;;) {
        bool done = false;
        st = xfer_test(t, x, &done, n_bytes, err);
        if (st != SQ_OK || done) break;
        st = sq_transport_poll(t, err);
        if (st == SQ_OK) {
            char what[96];
            snprintf(what, sizeof what, "%s (tag %d)", x->is_send ? "a send to complete" : "a message", x->tag);
            st = check_alive(t, x->peer, start, sq_now_s(), what, err);
        }
        if (st != SQ_OK) {
            sq_transport_cancel(t, x);
            break;
        }
        sq_transport_backoff(&round);
    }
    if (idle_s) *idle_s += sq_now_s() - start;
    return st;
}

/* ---- collectives ------------------------------------------------------------------------ */

static sq_status wait_collective(sq_transport *t, MPI_Request *req, const char *what,
                                 sq_error *err) {
    double start = sq_now_s();
    int round = 0;
    sq_status st = SQ_OK;
    for (;;) {
        int flag = 0;
        SQ_MPI_CHECK(st, err, MPI_Test(req, &flag, MPI_STATUS_IGNORE));
        if (flag) return SQ_OK;
        st = sq_transport_poll(t, err);
        if (st == SQ_OK) st = check_alive(t, -1, start, sq_now_s(), what, err);
        if (st != SQ_OK) return st;
        sq_transport_backoff(&round);
    }
fail:
    t->failed = true;
    return st;
}

sq_status sq_transport_agree(sq_transport *t, sq_status local, sq_error *err) {
    sq_status st = SQ_OK;
    MPI_Request req = MPI_REQUEST_NULL;
    int mine = local == SQ_OK ? INT_MAX : t->rank, lowest = INT_MAX;
    SQ_MPI_CHECK(st, err, MPI_Iallreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, t->comm, &req));
    st = wait_collective(t, &req, "the other ranks to agree on a status", err);
    if (st != SQ_OK) return st;
    if (lowest == INT_MAX) return SQ_OK;
    sq_error e;
    if (err && t->rank == lowest) e = *err;
    else sq_error_init(&e, lowest);
    if (t->rank == lowest && !err) sq_error_set(&e, local, NULL, NULL, "%s", sq_status_name(local));
    e.rank = lowest;
    SQ_MPI_CHECK(st, err, MPI_Ibcast(&e, (int)sizeof e, MPI_BYTE, lowest, t->comm, &req));
    st = wait_collective(t, &req, "the error of a failed rank", err);
    if (st != SQ_OK) return st;
    e.file[sizeof e.file - 1] = e.tensor[sizeof e.tensor - 1] = e.msg[sizeof e.msg - 1] = '\0';
    if (err) *err = e;
    return e.code != SQ_OK ? e.code : SQ_ERR_INTERNAL;
fail:
    t->failed = true;
    return st;
}

sq_status sq_transport_bcast(sq_transport *t, void *buf, uint64_t n_bytes, int root,
                             sq_error *err) {
    sq_status st = SQ_OK;
    if (n_bytes > (uint64_t)INT_MAX || root < 0 || root >= t->n_ranks)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: broadcast of %llu bytes from rank %d",
                            (unsigned long long)n_bytes, root);
    MPI_Request req = MPI_REQUEST_NULL;
    SQ_MPI_CHECK(st, err, MPI_Ibcast(buf, (int)n_bytes, MPI_BYTE, root, t->comm, &req));
    return wait_collective(t, &req, "a broadcast", err);
fail:
    t->failed = true;
    return st;
}

sq_status sq_transport_gather(sq_transport *t, const void *send, uint64_t n_bytes, void *recv,
                              int root, sq_error *err) {
    sq_status st = SQ_OK;
    if (n_bytes > (uint64_t)INT_MAX || root < 0 || root >= t->n_ranks)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "transport: gather of %llu bytes to rank %d",
                            (unsigned long long)n_bytes, root);
    MPI_Request req = MPI_REQUEST_NULL;
    SQ_MPI_CHECK(st, err, MPI_Igather(send, (int)n_bytes, MPI_BYTE, recv, (int)n_bytes, MPI_BYTE,
                                      root, t->comm, &req));
    return wait_collective(t, &req, "a gather", err);
fail:
    t->failed = true;
    return st;
}

sq_status sq_transport_close(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK;
    for (int i = 0; i < t->n_xfers; i++)
        if (t->xfers[i].in_use)
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "transport: close with transfer %d (tag %d) pending",
                                i, t->xfers[i].tag);
    double start = sq_now_s();
    int round = 0;
    /* send "closed" once the last heartbeat to that neighbour is out */
    bool sent[2] = {false, false};
    t->closing = true;
    for (;;) {
        bool all = true;
        for (int i = 0; i < t->n_chans; i++) {
            sq_hb_chan *c = &t->chans[i];
            int flag = 0;
            if (c->send_req != MPI_REQUEST_NULL) SQ_MPI_CHECK(st, err, MPI_Test(&c->send_req, &flag, MPI_STATUS_IGNORE));
            if (!sent[i] && c->send_req == MPI_REQUEST_NULL) {
                c->send_val = -1;
                SQ_MPI_CHECK(st, err, MPI_Isend(&c->send_val, 1, MPI_INT64_T, c->peer, SQ_TAG_HEARTBEAT,
                                                t->comm, &c->send_req));
                sent[i] = true;
            }
            if (!sent[i] || c->send_req != MPI_REQUEST_NULL || !c->peer_closed) all = false;
        }
        if (all) return SQ_OK;
        st = sq_transport_poll(t, err);
        if (st != SQ_OK) return st;
        double now = sq_now_s();
        for (int i = 0; i < t->n_chans; i++) {
            sq_hb_chan *c = &t->chans[i];
            if (c->peer_closed) continue;
            double last = c->last_heard > start ? c->last_heard : start;
            if (now - last > t->timeout_s)
                return peer_silent(t, c->peer, now - last, "the end-of-run handshake", err);
        }
        sq_transport_backoff(&round);
    }
fail:
    t->failed = true;
    return st;
}
