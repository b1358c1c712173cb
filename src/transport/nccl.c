/* Owns the nccl transport's logic, in every build: routing (host buffers over the mpi data
 * plane, see transport.c; device buffers here), the MPI header that announces each device
 * transfer, the pair order, bring-up and cancel.  What NCCL itself does (communicators,
 * streams, events) is behind t->dplane: NCCL's implementation in nccl_dev.c (CUDA builds), an
 * MPI-backed stand-in in the tests, so a CPU-only run drives this file exactly as a multi-GPU
 * run does.  The control plane (heartbeats, abort notices, collectives) stays MPI
 * (transport.c).
 *
 * Bring-up, every step one every rank reaches (no rank waits in a call another skipped):
 *  1. the device: this rank's GPU is the caller's (the backend's, params->device); the ranks
 *     of one node (MPI_Comm_split_type) must not share one (NCCL cannot hold two ranks of one
 *     GPU in a communicator: use the mpi transport, which stages device buffers);
 *  2. rank 0 creates the id; every rank agrees on its status (a failure there ends every rank
 *     naming rank 0), then the id is broadcast;
 *  3. every rank starts joining (non-blocking); every rank agrees on the start's status (a rank
 *     whose device or init fails ends every rank naming it; the others abandon their join);
 *  4. every rank polls the join to completion together with the control plane: a rank whose
 *     join fails later tells the others (abort notice), a rank that dies goes silent; the
 *     others fail naming it instead of waiting forever.
 *
 * NCCL has no tags and no "at most cap_bytes": a transfer is announced by an MPI header on the
 * caller's tag, {bytes, sequence number of the pair}; the receiver posts its data-plane
 * receive with exactly that size, in the sender's order.  A header that arrives before its
 * predecessor waits.  Receives between two ranks must therefore be posted for every send, in
 * some order that lets them all be posted (they may be posted out of order; they are issued in
 * order).
 *
 * Liveness: a transfer may stay pending for as long as its peer is alive (a send completes
 * only when the receiver posts its receive, after its current micro-batch); the heartbeats of
 * sq_transport_wait decide whether a peer is gone, never the age of one operation.
 *
 * The caller's device buffer must hold its data when isend is called (the producer finished:
 * sq_backend_sync); the data plane does not wait for the caller's stream.
 * Must never: print, exit, block on a peer after the bring-up's collectives, or keep using a
 * data plane after aborting it. */
#include "transport_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

enum { OP_IDLE = 0, OP_HDR, OP_QUEUED, OP_ENQUEUED };

typedef struct nccl_op {
    int state;
    int chan;                /* data-plane channel: 0 lower -> higher rank, 1 the other way */
    int64_t hdr[2];          /* {bytes, sequence} */
} nccl_op;

typedef struct nccl_impl {
    sq_dplane *d;
    bool aborted;
    int64_t *send_seq, *recv_seq;   /* (n_ranks) per peer: next sequence number */
    nccl_op *ops;                   /* (n_xfers) */
} nccl_impl;

static void abort_plane(sq_transport *t, nccl_impl *n) {
    if (n->aborted) return;
    n->aborted = true;
    t->failed = true;
    if (n->d) t->dplane->abort(n->d);
}

static void nccl_fini(sq_transport *t) {
    nccl_impl *n = t->impl;
    if (!n) return;
    if (t->failed) abort_plane(t, n);
    if (n->d) t->dplane->destroy(n->d);
    free(n->ops);
    free(n->send_seq);
    free(n->recv_seq);
    free(n);
    t->impl = NULL;
}

/* Step 1: the ranks of one node must be on different devices.  Local status only. */
static sq_status check_devices(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK;
    MPI_Comm node = MPI_COMM_NULL;
    int devs_stack[256], *devs = devs_stack, n_local = 0;
    SQ_MPI_CHECK(st, err, MPI_Comm_split_type(t->comm, MPI_COMM_TYPE_SHARED, t->rank, MPI_INFO_NULL, &node));
    SQ_MPI_CHECK(st, err, MPI_Comm_size(node, &n_local));
    if (n_local > 256 && !(devs = malloc((size_t)n_local * sizeof *devs))) {
        /* (a node with more than 256 ranks and no memory for 1 KiB: its peers wait) */
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl transport: out of memory");
        goto fail;
    }
    int mine = t->device;
    SQ_MPI_CHECK(st, err, MPI_Allgather(&mine, 1, MPI_INT, devs, 1, MPI_INT, node));
    for (int i = 0; st == SQ_OK && i < n_local; i++)
        for (int j = i + 1; j < n_local; j++)
            if (devs[i] >= 0 && devs[i] == devs[j]) {
                st = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                                  "nccl transport: two ranks of this node are on GPU %d; NCCL cannot "
                                  "hold two ranks of one GPU in a communicator (use --transport mpi)",
                                  devs[i]);
                break;
            }
fail:
    if (devs != devs_stack) free(devs);
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    return st;
}

static sq_status init_steps(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK, local = SQ_OK;
    int p = t->n_ranks;
    uint8_t id[SQ_DPLANE_ID_BYTES];
    memset(id, 0, sizeof id);
    nccl_impl *n = calloc(1, sizeof *n);
    if (n) {
        t->impl = n;   /* fini frees what follows, whatever fails */
        n->ops = calloc((size_t)t->n_xfers, sizeof *n->ops);
        n->send_seq = calloc((size_t)p, sizeof *n->send_seq);
        n->recv_seq = calloc((size_t)p, sizeof *n->recv_seq);
    }
    if (!n || !n->ops || !n->send_seq || !n->recv_seq)
        local = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl transport: out of memory");
    /* 1. devices: a refusal is agreed, so that no rank goes on into the join alone */
    sq_status dev = SQ_OK;
    if (t->device < 0 && t->dplane->resolve_device)
        dev = t->dplane->resolve_device(t->dplane_user, &t->device, err);
    sq_status dup = check_devices(t, err);
    if (dev == SQ_OK) dev = dup;
    if (local == SQ_OK) local = dev;
    if ((st = sq_transport_agree(t, local, err)) != SQ_OK) return st;
    /* 2. rank 0's id: its status first, then the bytes */
    if (t->rank == 0) local = t->dplane->get_id(t->dplane_user, id, err);
    if (local != SQ_OK && err) {
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        sq_error_set(err, local, NULL, NULL, "nccl transport: creating the unique id failed: %s", why);
    }
    if ((st = sq_transport_agree(t, local, err)) != SQ_OK) return st;
    if ((st = sq_transport_bcast(t, id, sizeof id, 0, err)) != SQ_OK) return st;
    /* 3. the join starts everywhere; a rank whose start failed (device, init) ends them all */
    local = t->dplane->init_start(t->dplane_user, id, p, t->rank, t->device, t->n_xfers, &n->d, err);
    if ((st = sq_transport_agree(t, local, err)) != SQ_OK) return st;
    /* 4. the join completes everywhere, or its failure reaches every rank */
    double start = sq_now_s();
    int round = 0;
    for (;;) {
        bool done = false;
        st = t->dplane->init_test(n->d, &done, err);
        if (st != SQ_OK) {
            sq_error mine;
            if (err) mine = *err;
            else sq_error_init(&mine, t->rank);
            mine.rank = t->rank;
            sq_transport_abort_peers(t, &mine);
            return st;
        }
        if (done) return SQ_OK;
        st = sq_transport_alive(t, start, "the other ranks to join the nccl communicators", err);
        if (st != SQ_OK) return st;
        sq_transport_backoff(&round);
    }
}

static sq_status nccl_init(sq_transport *t, sq_error *err) {
    sq_status st = init_steps(t, err);
    /* a join may be half done: fini aborts it rather than drain it; the communicator stays */
    if (st != SQ_OK) t->failed = true;
    return st;
}

static int chan_of(int sender, int receiver) { return sender < receiver ? 0 : 1; }

/* Posts the data-plane transfer of x, whose turn it is. */
static sq_status issue(sq_transport *t, sq_xfer *x, nccl_op *o, sq_error *err) {
    nccl_impl *n = t->impl;
    uint64_t bytes = (uint64_t)o->hdr[0];
    o->state = OP_ENQUEUED;
    if (!x->is_send) {
        x->got_bytes = bytes;
        n->recv_seq[x->peer]++;
    }
    if (bytes == 0) return SQ_OK;   /* nothing crosses the data plane; the header said it all */
    sq_status st = t->dplane->post(n->d, o->chan, x->is_send, x->buf, bytes, x->peer, x->index, err);
    if (st != SQ_OK) abort_plane(t, n);   /* the pair's order is lost */
    return st;
}

static sq_status nccl_start(sq_transport *t, sq_xfer *x, sq_error *err) {
    nccl_impl *n = t->impl;
    nccl_op *o = &n->ops[x->index];
    sq_status st = SQ_OK;
    if (n->aborted)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl transport: aborted after an earlier failure");
    if (x->mem != SQ_MEM_DEVICE)   /* transport.c routes host buffers to mpi: a bug if here */
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "nccl transport: a host buffer reached the data plane");
    if (x->peer == t->rank)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the nccl transport does not send a rank's data to itself");
    int tag = x->tag + SQ_TAG_DATA0;
    x->impl = o;
    o->chan = x->is_send ? chan_of(t->rank, x->peer) : chan_of(x->peer, t->rank);
    if (x->is_send) {
        o->hdr[0] = (int64_t)x->n_bytes;
        o->hdr[1] = n->send_seq[x->peer]++;
        SQ_MPI_CHECK(st, err, MPI_Isend(o->hdr, 2, MPI_INT64_T, x->peer, tag, t->comm, &x->req));
        st = issue(t, x, o, err);   /* sends go out in call order: the pair's sequence */
        if (st != SQ_OK) goto fail;
        x->got_bytes = x->n_bytes;
    } else {
        SQ_MPI_CHECK(st, err, MPI_Irecv(o->hdr, 2, MPI_INT64_T, x->peer, tag, t->comm, &x->req));
        o->state = OP_HDR;
    }
    return SQ_OK;
fail:
    if (x->req != MPI_REQUEST_NULL) MPI_Request_free(&x->req);
    x->req = MPI_REQUEST_NULL;
    o->state = OP_IDLE;
    x->impl = NULL;
    return st;
}

/* Receives from `peer` whose header came and whose turn it is now. */
static sq_status issue_ready(sq_transport *t, int peer, sq_error *err) {
    nccl_impl *n = t->impl;
    bool progress = true;
    while (progress) {
        progress = false;
        for (int i = 0; i < t->n_xfers; i++) {
            sq_xfer *y = &t->xfers[i];
            nccl_op *o = &n->ops[i];
            if (y->in_use && y->ops == t->ops && !y->is_send && y->peer == peer &&
                o->state == OP_QUEUED && o->hdr[1] == n->recv_seq[peer]) {
                sq_status st = issue(t, y, o, err);
                if (st != SQ_OK) return st;
                progress = true;
            }
        }
    }
    return SQ_OK;
}

static sq_status nccl_test(sq_transport *t, sq_xfer *x, bool *done, sq_error *err) {
    nccl_impl *n = t->impl;
    nccl_op *o = x->impl;
    sq_status st = SQ_OK;
    int flag = 0;
    *done = false;
    if (n->aborted)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl transport: aborted after an earlier failure");
    if (o->state == OP_HDR) {
        SQ_MPI_CHECK(st, err, MPI_Test(&x->req, &flag, MPI_STATUS_IGNORE));
        if (!flag) return SQ_OK;
        if (o->hdr[0] < 0 || (uint64_t)o->hdr[0] > x->n_bytes || o->hdr[1] < n->recv_seq[x->peer]) {
            st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL,
                              "nccl transport: rank %d announced %lld bytes (sequence %lld) for a "
                              "receive of at most %llu (expected sequence >= %lld)", x->peer,
                              (long long)o->hdr[0], (long long)o->hdr[1],
                              (unsigned long long)x->n_bytes, (long long)n->recv_seq[x->peer]);
            abort_plane(t, n);   /* the pair's order is lost */
            return st;
        }
        o->state = OP_QUEUED;
        st = issue_ready(t, x->peer, err);
        if (st != SQ_OK) return st;
    }
    if (o->state == OP_QUEUED) return SQ_OK;   /* a predecessor is not posted or not arrived */
    if (x->is_send && x->req != MPI_REQUEST_NULL) {
        SQ_MPI_CHECK(st, err, MPI_Test(&x->req, &flag, MPI_STATUS_IGNORE));
    }
    bool plane_done = o->hdr[0] == 0;
    if (!plane_done) {
        st = t->dplane->test(n->d, x->index, &plane_done, err);
        if (st != SQ_OK) {
            abort_plane(t, n);
            return st;
        }
    }
    /* Not done: pending for as long as the peer lives.  sq_transport_wait's heartbeats decide
     * that, not the age of this operation (a receiver may post late without being dead). */
    if (plane_done && x->req == MPI_REQUEST_NULL) {
        o->state = OP_IDLE;
        x->impl = NULL;
        *done = true;
    }
    return SQ_OK;
fail:
    abort_plane(t, n);
    return st;
}

static void nccl_cancel(sq_transport *t, sq_xfer *x) {
    nccl_impl *n = t->impl;
    nccl_op *o = x->impl;
    if (x->req != MPI_REQUEST_NULL) {
        if (!x->is_send) MPI_Cancel(&x->req);
        MPI_Request_free(&x->req);
        x->req = MPI_REQUEST_NULL;
    }
    if (o && !n->aborted) {
        bool done = false;
        sq_error ignored;
        sq_error_init(&ignored, t->rank);
        /* an operation in flight cannot be withdrawn: the data plane goes */
        if (o->state == OP_ENQUEUED && o->hdr[0] != 0 &&
            (t->dplane->test(n->d, x->index, &done, &ignored) != SQ_OK || !done))
            abort_plane(t, n);
        /* a queued receive never issued leaves a hole in the pair's order: same */
        if (o->state == OP_QUEUED) abort_plane(t, n);
    }
    if (o) o->state = OP_IDLE;
    x->impl = NULL;
}

const sq_transport_ops sq_transport_nccl_ops = {
    .name = "nccl",
    .start = nccl_start,
    .test = nccl_test,
    .cancel = nccl_cancel,
    .fini = nccl_fini,
    .init = nccl_init,
    .host_via_mpi = true,
};
