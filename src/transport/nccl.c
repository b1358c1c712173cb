/* Owns the nccl data plane (CUDA builds): device buffers moved with ncclSend / ncclRecv on
 * dedicated streams, completion seen through events, failures seen by polling
 * ncclCommGetAsyncError, and ncclCommAbort when a transfer fails, times out or is cancelled
 * mid-flight.  The control plane (heartbeats, abort notices, collectives) stays MPI
 * (transport.c).
 *
 * Bring-up (nccl-tests' order): hash of the host name, MPI_Allgather of (hash, GPU count), local
 * rank = ranks before this one on the same host, device = local rank % GPUs of the host; refuse
 * when a host has more ranks than GPUs (one NCCL communicator cannot hold two ranks of one GPU:
 * use the mpi transport, which stages device buffers); rank 0 calls ncclGetUniqueId, MPI_Bcast,
 * ncclCommInitRank; then one byte each way with the ring neighbours, so the point-to-point
 * connections exist before the first real transfer (a lazy connection would block inside it).
 *
 * Two communicators: comm[0] carries transfers from a lower to a higher rank, comm[1] from a
 * higher to a lower one, each with its own stream.  NCCL serializes the operations of one
 * communicator, and a pipeline sends forward while it waits for tokens coming back: one
 * communicator for both would deadlock.
 *
 * NCCL has no tags and no "at most cap_bytes": a transfer is announced by an MPI header on the
 * caller's tag, {bytes, sequence number of the pair}; the receiver posts ncclRecv with exactly
 * that size, in the sender's order.  A header that arrives before its predecessor waits.
 * Receives between two ranks must therefore be posted for every send, in some order that lets
 * them all be posted (they may be posted out of order; they are issued in order).
 *
 * The caller's device buffer must hold its data when isend is called (the producer finished:
 * sq_backend_sync); the nccl streams do not wait for the caller's stream.
 * Must never: print, exit, block after create except for the short cudaEventSynchronize of a
 * cancelled copy, or keep using a communicator after aborting it. */
#include "transport_impl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "../../kernels/cuda_check.cuh"

#define SQ_NCCL_CHECK(call)                                                                 \
    do {                                                                                    \
        ncclResult_t sq_nccl_r_ = (call);                                                   \
        if (sq_nccl_r_ != ncclSuccess && sq_nccl_r_ != ncclInProgress) {                    \
            st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "%s failed: %s", #call,         \
                              ncclGetErrorString(sq_nccl_r_));                              \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

enum { OP_IDLE = 0, OP_HDR, OP_QUEUED, OP_ENQUEUED };

typedef struct nccl_op {
    int state;
    int dir;                 /* communicator / stream index */
    int64_t hdr[2];          /* {bytes, sequence} */
    cudaEvent_t ev;
    double t_enq;            /* when the NCCL call was issued */
} nccl_op;

typedef struct nccl_impl {
    ncclComm_t comm[2];
    cudaStream_t stream[2];
    int device, local_rank;
    bool aborted;
    int64_t *send_seq, *recv_seq;   /* (n_ranks) per peer: next sequence number */
    nccl_op *ops;                   /* (n_xfers) */
} nccl_impl;

static uint64_t host_hash(void) {
    char name[256] = {0};
    if (gethostname(name, sizeof name - 1) != 0) strcpy(name, "unknown");
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
    return h;
}

static int dir_of(const sq_transport *t, int sender, int receiver) {
    (void)t;
    return sender < receiver ? 0 : 1;
}

static void abort_comms(nccl_impl *n) {
    if (n->aborted) return;
    n->aborted = true;
    for (int d = 0; d < 2; d++)
        if (n->comm[d]) ncclCommAbort(n->comm[d]);
}

/* Non-NCCL-blocking wait for an event with the transport's timeout, polling async errors. */
static sq_status wait_event(sq_transport *t, nccl_impl *n, cudaEvent_t ev, const char *what,
                            sq_error *err) {
    sq_status st = SQ_OK;
    double start = sq_now_s();
    for (;;) {
        cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) return SQ_OK;
        if (e != cudaErrorNotReady) SQ_CUDA_CHECK(e);
        for (int d = 0; d < 2; d++) {
            ncclResult_t r = ncclSuccess;
            SQ_NCCL_CHECK(ncclCommGetAsyncError(n->comm[d], &r));
            if (r != ncclSuccess && r != ncclInProgress) {
                st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl %s: %s (%s)", what,
                                  ncclGetErrorString(r), ncclGetLastError(n->comm[d]));
                goto fail;
            }
        }
        if (sq_now_s() - start > t->timeout_s) {
            st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl %s: not done after %.1f s", what,
                              t->timeout_s);
            goto fail;
        }
        usleep(100);
    }
fail:
    abort_comms(n);
    return st;
}

static void nccl_fini(sq_transport *t) {
    nccl_impl *n = t->impl;
    if (!n) return;
    if (t->failed) abort_comms(n);
    for (int d = 0; d < 2; d++) {
        if (n->stream[d] && !n->aborted) cudaStreamSynchronize(n->stream[d]);
        if (n->comm[d] && !n->aborted) ncclCommDestroy(n->comm[d]);
        if (n->stream[d]) cudaStreamDestroy(n->stream[d]);
    }
    for (int i = 0; n->ops && i < t->n_xfers; i++)
        if (n->ops[i].ev) cudaEventDestroy(n->ops[i].ev);
    free(n->ops);
    free(n->send_seq);
    free(n->recv_seq);
    free(n);
    t->impl = NULL;
}

static sq_status nccl_init(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK;
    int p = t->n_ranks;
    uint64_t *hosts = NULL;
    int n_dev = 0;
    cudaEvent_t ev = NULL;
    nccl_impl *n = calloc(1, sizeof *n);
    if (!n) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl transport: out of memory");
    t->impl = n;   /* fini frees what follows, whatever fails */
    n->ops = calloc((size_t)t->n_xfers, sizeof *n->ops);
    n->send_seq = calloc((size_t)p, sizeof *n->send_seq);
    n->recv_seq = calloc((size_t)p, sizeof *n->recv_seq);
    hosts = calloc((size_t)p * 2, sizeof *hosts);
    if (!n->ops || !n->send_seq || !n->recv_seq || !hosts) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl transport: out of memory");
        goto fail;
    }
    /* 1. host hash and GPU count of every rank (a failed count travels as 0: every rank then
     *    refuses alike, instead of some waiting in ncclCommInitRank for the others) */
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess) n_dev = 0;
    uint64_t mine[2] = {host_hash(), (uint64_t)n_dev};
    SQ_MPI_CHECK(st, err, MPI_Allgather(mine, 2, MPI_UINT64_T, hosts, 2, MPI_UINT64_T, t->comm));
    for (int r = 0; r < p; r++) {
        int local = 0, on_host = 0;
        for (int q = 0; q < p; q++)
            if (hosts[2 * q] == hosts[2 * r]) { on_host++; if (q < r) local++; }
        if (r == t->rank) n->local_rank = local;
        if ((uint64_t)on_host > hosts[2 * r + 1]) {
            st = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                              "nccl transport: rank %d's host runs %d ranks on %llu GPU(s); NCCL "
                              "cannot hold two ranks of one GPU in a communicator (use --transport mpi)",
                              r, on_host, (unsigned long long)hosts[2 * r + 1]);
            goto fail;
        }
    }
    n->device = n->local_rank % n_dev;
    SQ_CUDA_CHECK(cudaSetDevice(n->device));
    /* 2. rank 0's ids, broadcast; one communicator per direction */
    ncclUniqueId id[2];
    memset(id, 0, sizeof id);
    if (t->rank == 0)
        for (int d = 0; d < 2; d++) SQ_NCCL_CHECK(ncclGetUniqueId(&id[d]));
    SQ_MPI_CHECK(st, err, MPI_Bcast(id, (int)sizeof id, MPI_BYTE, 0, t->comm));
    SQ_NCCL_CHECK(ncclGroupStart());
    for (int d = 0; d < 2; d++) SQ_NCCL_CHECK(ncclCommInitRank(&n->comm[d], p, id[d], t->rank));
    SQ_NCCL_CHECK(ncclGroupEnd());
    for (int d = 0; d < 2; d++)
        SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&n->stream[d], cudaStreamNonBlocking));
    for (int i = 0; i < t->n_xfers; i++)
        SQ_CUDA_CHECK(cudaEventCreateWithFlags(&n->ops[i].ev, cudaEventDisableTiming));
    /* 3. connect the ring neighbours now: one byte each way on both communicators */
    if (p > 1) {
        uint8_t *one_d = NULL;
        SQ_CUDA_CHECK(cudaMalloc((void **)&one_d, 4));
        int nbs[2] = {(t->rank + 1) % p, (t->rank - 1 + p) % p};
        for (int d = 0; d < 2; d++) {
            SQ_NCCL_CHECK(ncclGroupStart());
            for (int k = 0; k < (p == 2 ? 1 : 2); k++) {
                SQ_NCCL_CHECK(ncclSend(one_d, 1, ncclUint8, nbs[k], n->comm[d], n->stream[d]));
                SQ_NCCL_CHECK(ncclRecv(one_d + 1 + k, 1, ncclUint8, nbs[k], n->comm[d], n->stream[d]));
            }
            SQ_NCCL_CHECK(ncclGroupEnd());
        }
        SQ_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        for (int d = 0; d < 2 && st == SQ_OK; d++) {
            SQ_CUDA_CHECK(cudaEventRecord(ev, n->stream[d]));
            st = wait_event(t, n, ev, "connecting to the ring neighbours", err);
        }
        cudaFree(one_d);
        if (st != SQ_OK) goto fail;
    }
    if (ev) cudaEventDestroy(ev);
    free(hosts);
    return SQ_OK;
fail:
    if (ev) cudaEventDestroy(ev);
    abort_comms(n);
    free(hosts);
    return st;
}

/* Issues the NCCL call of a transfer whose turn it is. */
static sq_status issue(sq_transport *t, sq_xfer *x, nccl_op *o, sq_error *err) {
    nccl_impl *n = t->impl;
    sq_status st = SQ_OK;
    size_t bytes = (size_t)o->hdr[0];
    if (bytes) {
        if (x->is_send)
            SQ_NCCL_CHECK(ncclSend(x->buf, bytes, ncclUint8, x->peer, n->comm[o->dir], n->stream[o->dir]));
        else
            SQ_NCCL_CHECK(ncclRecv(x->buf, bytes, ncclUint8, x->peer, n->comm[o->dir], n->stream[o->dir]));
    }
    SQ_CUDA_CHECK(cudaEventRecord(o->ev, n->stream[o->dir]));
    o->state = OP_ENQUEUED;
    o->t_enq = sq_now_s();
    if (!x->is_send) {
        x->got_bytes = (uint64_t)bytes;
        n->recv_seq[x->peer]++;
    }
    return SQ_OK;
fail:
    abort_comms(n);
    return st;
}

static sq_status nccl_start(sq_transport *t, sq_xfer *x, sq_error *err) {
    nccl_impl *n = t->impl;
    nccl_op *o = &n->ops[x->index];
    sq_status st = SQ_OK;
    if (n->aborted)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl transport: aborted after an earlier failure");
    if (x->mem != SQ_MEM_DEVICE)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the nccl transport takes device buffers only (host ones go over mpi)");
    if (x->peer == t->rank)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the nccl transport does not send a rank's data to itself");
    int tag = x->tag + SQ_TAG_DATA0;
    x->impl = o;
    o->dir = x->is_send ? dir_of(t, t->rank, x->peer) : dir_of(t, x->peer, t->rank);
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
            if (y->in_use && !y->is_send && y->peer == peer && o->state == OP_QUEUED &&
                o->hdr[1] == n->recv_seq[peer]) {
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
            abort_comms(n);   /* the pair's NCCL order is lost */
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
    cudaError_t e = cudaEventQuery(o->ev);
    if (e == cudaSuccess && x->req == MPI_REQUEST_NULL) {
        o->state = OP_IDLE;
        x->impl = NULL;
        *done = true;
        return SQ_OK;
    }
    if (e != cudaSuccess && e != cudaErrorNotReady) SQ_CUDA_CHECK(e);
    ncclResult_t r = ncclSuccess;
    SQ_NCCL_CHECK(ncclCommGetAsyncError(n->comm[o->dir], &r));
    if (r != ncclSuccess && r != ncclInProgress) {
        st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "%s (%s)", ncclGetErrorString(r),
                          ncclGetLastError(n->comm[o->dir]));
        abort_comms(n);
        return st;
    }
    if (e == cudaErrorNotReady && sq_now_s() - o->t_enq > t->timeout_s) {
        st = sq_error_set(err, SQ_ERR_NCCL, NULL, NULL,
                          "NCCL %s did not complete within %.1f s (communicator aborted)",
                          x->is_send ? "send" : "receive", t->timeout_s);
        abort_comms(n);
        return st;
    }
    return SQ_OK;
fail:
    abort_comms(n);
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
    /* an NCCL operation in flight cannot be withdrawn: the communicators go */
    if (o && o->state == OP_ENQUEUED && cudaEventQuery(o->ev) != cudaSuccess) abort_comms(n);
    /* a queued receive never issued leaves a hole in the pair's order: same */
    if (o && o->state == OP_QUEUED) abort_comms(n);
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
};
