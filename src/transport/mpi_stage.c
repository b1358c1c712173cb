/* Owns the mpi data plane's device buffers, in every build: each transfer slot has a host
 * staging buffer (grown on demand, kept for reuse); a send copies device -> host and posts
 * MPI_Isend once the copy is done; a receive lands in host memory and is copied host ->
 * device, complete when that copy is.  The copies are t->devcopy's (CUDA's pinned memory and
 * events in mpi_cuda.c; a test's plain memory), so a CPU test drives this file.  This is how
 * two ranks that share one GPU (which cannot share an NCCL communicator) pass activations.
 *
 * A cancelled transfer whose MPI request may still touch its staging buffer (a send on the
 * wire, a receive already matched) is not released over a live buffer: request and buffer go
 * to an orphan list together, the slot gets a new buffer at its next use, and the buffer is
 * freed only once MPI reports the request complete (reaped at every start and at fini; at fini
 * a request still pending after a cancel is released and its buffer deliberately kept).
 * The caller's device buffer must hold its data when isend is called (its producer finished:
 * sq_backend_sync), because the staging copy does not wait for the caller's stream.
 * Must never block on the network or on a peer: every step is a copy query or an MPI_Test. */
#include "transport_impl.h"

#include <stdlib.h>

enum { ST_IDLE = 0, ST_COPY_OUT, ST_SEND, ST_RECV, ST_COPY_IN };

typedef struct stage {
    void *buf_h;        /* host staging (cap bytes), the devcopy's memory */
    uint64_t cap;
    int state;
} stage;

typedef struct orphan {
    MPI_Request req;
    void *buf_h;
} orphan;

typedef struct mpi_stage {
    sq_devcopy *dc;
    stage *st;          /* (n) one per transfer slot */
    int n;
    orphan *orphans;    /* (n_orphans, cap_orphans) */
    int n_orphans, cap_orphans;
} mpi_stage;

static sq_status ensure_impl(sq_transport *t, sq_error *err) {
    mpi_stage *m = t->impl;
    if (m && m->dc) return SQ_OK;
    if (m) {   /* an earlier create failed: try again (and fail alike) */
        t->devcopy->destroy(m->dc);
        m->dc = NULL;
        return t->devcopy->create(t->devcopy_user, t->n_xfers, &m->dc, err);
    }
    m = calloc(1, sizeof *m);
    if (!m) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: out of memory for staging");
    t->impl = m;   /* fini frees it whatever happens next */
    m->st = calloc((size_t)t->n_xfers, sizeof *m->st);
    m->n = t->n_xfers;
    if (!m->st) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: out of memory for staging");
    return t->devcopy->create(t->devcopy_user, t->n_xfers, &m->dc, err);
}

/* Frees the buffers of orphans whose requests completed. */
static void reap(sq_transport *t, mpi_stage *m) {
    int k = 0;
    for (int i = 0; i < m->n_orphans; i++) {
        orphan *o = &m->orphans[i];
        int flag = 0;
        if (o->req != MPI_REQUEST_NULL && MPI_Test(&o->req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) flag = 0;
        if (o->req == MPI_REQUEST_NULL || flag) t->devcopy->host_free(m->dc, o->buf_h);
        else m->orphans[k++] = *o;
    }
    m->n_orphans = k;
}

/* Hands a request that may still use the slot's buffer to the orphan list; the slot forgets
 * the buffer.  Without memory for the list the buffer is leaked rather than freed under MPI. */
static void orphan_slot(mpi_stage *m, stage *s, MPI_Request *req) {
    if (m->n_orphans == m->cap_orphans) {
        int cap = m->cap_orphans ? 2 * m->cap_orphans : 8;
        orphan *o = realloc(m->orphans, (size_t)cap * sizeof *o);
        if (o) {
            m->orphans = o;
            m->cap_orphans = cap;
        }
    }
    if (m->n_orphans < m->cap_orphans) {
        m->orphans[m->n_orphans].req = *req;
        m->orphans[m->n_orphans].buf_h = s->buf_h;
        m->n_orphans++;
    } else {
        MPI_Request_free(req);
    }
    *req = MPI_REQUEST_NULL;
    s->buf_h = NULL;
    s->cap = 0;
}

sq_status sq_mpi_stage_start(sq_transport *t, sq_xfer *x, sq_error *err) {
    sq_status st = ensure_impl(t, err);
    if (st != SQ_OK) return st;
    mpi_stage *m = t->impl;
    if ((st = t->devcopy->check_device(m->dc, x->buf, x->n_bytes, err)) != SQ_OK) return st;
    reap(t, m);
    stage *s = &m->st[x->index];
    uint64_t n = x->n_bytes;
    if (n > s->cap) {
        t->devcopy->copy_wait(m->dc, x->index);   /* an old copy may still use it */
        t->devcopy->host_free(m->dc, s->buf_h);
        s->cap = 0;
        if (!(s->buf_h = t->devcopy->host_alloc(m->dc, n)))
            return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: no %llu bytes of staging memory",
                                (unsigned long long)n);
        s->cap = n;
    }
    int tag = x->tag + SQ_TAG_DATA0;
    if (x->is_send) {
        if ((st = t->devcopy->copy(m->dc, x->index, s->buf_h, x->buf, n, false, err)) != SQ_OK) return st;
        s->state = ST_COPY_OUT;
    } else {
        SQ_MPI_CHECK(st, err, MPI_Irecv(s->buf_h, (int)n, MPI_BYTE, x->peer, tag, t->comm, &x->req));
        s->state = ST_RECV;
    }
    x->impl = s;
    return SQ_OK;
fail:
    x->req = MPI_REQUEST_NULL;
    s->state = ST_IDLE;
    return st;
}

sq_status sq_mpi_stage_test(sq_transport *t, sq_xfer *x, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    mpi_stage *m = t->impl;
    stage *s = x->impl;
    int flag = 0, count = 0;
    bool copied = false;
    MPI_Status status;
    *done = false;
    switch (s->state) {
    case ST_COPY_OUT:
        if ((st = t->devcopy->copy_test(m->dc, x->index, &copied, err)) != SQ_OK) return st;
        if (!copied) return SQ_OK;
        SQ_MPI_CHECK(st, err, MPI_Isend(s->buf_h, (int)x->n_bytes, MPI_BYTE, x->peer,
                                        x->tag + SQ_TAG_DATA0, t->comm, &x->req));
        s->state = ST_SEND;
        __attribute__((fallthrough));   /* an eager send may be done already */
    case ST_SEND:
        SQ_MPI_CHECK(st, err, MPI_Test(&x->req, &flag, MPI_STATUS_IGNORE));
        if (!flag) return SQ_OK;
        x->got_bytes = x->n_bytes;
        break;
    case ST_RECV:
        SQ_MPI_CHECK(st, err, MPI_Test(&x->req, &flag, &status));
        if (!flag) return SQ_OK;
        SQ_MPI_CHECK(st, err, MPI_Get_count(&status, MPI_BYTE, &count));
        x->got_bytes = (uint64_t)count;
        if ((st = t->devcopy->copy(m->dc, x->index, x->buf, s->buf_h, (uint64_t)count, true, err)) != SQ_OK)
            return st;
        s->state = ST_COPY_IN;
        __attribute__((fallthrough));
    case ST_COPY_IN:
        if ((st = t->devcopy->copy_test(m->dc, x->index, &copied, err)) != SQ_OK) return st;
        if (!copied) return SQ_OK;
        break;
    default:
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "mpi transport: staging slot in state %d", s->state);
    }
    s->state = ST_IDLE;
    x->impl = NULL;
    *done = true;
    return SQ_OK;
fail:
    return st;
}

void sq_mpi_stage_cancel(sq_transport *t, sq_xfer *x) {
    mpi_stage *m = t->impl;
    stage *s = x->impl;
    if (x->req != MPI_REQUEST_NULL) {
        /* a receive is cancelled for real (or already matched); a send may be on the wire.
         * Either way MPI may still touch the staging buffer: it leaves with the request. */
        if (!x->is_send) MPI_Cancel(&x->req);
        int flag = 0;
        if (MPI_Test(&x->req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) flag = 0;
        if (!flag && s) orphan_slot(m, s, &x->req);
        else if (!flag) MPI_Request_free(&x->req);
        x->req = MPI_REQUEST_NULL;
    }
    /* a copy in flight reads or writes the caller's buffer: let it finish before returning */
    if (s && (s->state == ST_COPY_OUT || s->state == ST_COPY_IN)) t->devcopy->copy_wait(m->dc, x->index);
    if (s) s->state = ST_IDLE;
    x->impl = NULL;
}

void sq_mpi_stage_fini(sq_transport *t) {
    mpi_stage *m = t->impl;
    if (!m) return;
    reap(t, m);
    for (int i = 0; i < m->n_orphans; i++) {
        /* still pending: cancel, and if MPI still holds it, release it and keep its buffer */
        MPI_Cancel(&m->orphans[i].req);
        int flag = 0;
        if (MPI_Test(&m->orphans[i].req, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag)
            t->devcopy->host_free(m->dc, m->orphans[i].buf_h);
        else if (m->orphans[i].req != MPI_REQUEST_NULL)
            MPI_Request_free(&m->orphans[i].req);
    }
    for (int i = 0; m->dc && m->st && i < m->n; i++) {
        t->devcopy->copy_wait(m->dc, i);
        t->devcopy->host_free(m->dc, m->st[i].buf_h);
    }
    if (t->devcopy) t->devcopy->destroy(m->dc);
    free(m->orphans);
    free(m->st);
    free(m);
    t->impl = NULL;
}
