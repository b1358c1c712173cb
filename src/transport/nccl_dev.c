/* Owns NCCL's data plane (CUDA builds): the sq_dplane_ops under the nccl transport's logic
 * (nccl.c).  Two communicators, comm[0] for transfers from a lower to a higher rank and
 * comm[1] the other way, each with its own stream; one event per slot marks completion; the
 * communicators are created non-blocking (ncclConfig_t.blocking = 0) so that the logic can
 * poll the join together with MPI liveness and abort it when another rank failed; once joined,
 * one byte each way with the ring neighbours on both communicators, so the point-to-point
 * connections exist before the first real transfer (a lazy connection would block inside it).
 * The device is the caller's (the backend's): never chosen here.
 * Must never: print, exit, block (except cudaStreamSynchronize in destroy of a plane that did
 * not fail), or use a communicator after aborting it. */
#include "transport_impl.h"

#include <stdlib.h>
#include <string.h>

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

_Static_assert(2 * NCCL_UNIQUE_ID_BYTES <= SQ_DPLANE_ID_BYTES, "two NCCL ids fit the plane's id");

enum { JOIN_COMMS = 0, JOIN_CONNECT, JOIN_DONE };

struct sq_dplane {
    ncclComm_t comm[2];
    cudaStream_t stream[2];
    cudaEvent_t *ev;      /* (n_slots) */
    int *chan;            /* (n_slots) channel of the slot's transfer */
    int n_slots, n_ranks, rank, device;
    int join;
    cudaEvent_t join_ev;
    uint8_t *one_d;       /* 4 bytes for the connecting exchange */
    bool aborted;
};

static sq_status nd_resolve_device(void *user, int *device, sq_error *err) {
    (void)user;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the nccl transport needs a GPU and this rank's machine has no CUDA device");
    }
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaGetDevice(device));
    return SQ_OK;
fail:
    return st;
}

static sq_status nd_get_id(void *user, uint8_t id[SQ_DPLANE_ID_BYTES], sq_error *err) {
    (void)user;
    sq_status st = SQ_OK;
    ncclUniqueId u[2];
    for (int d = 0; d < 2; d++) SQ_NCCL_CHECK(ncclGetUniqueId(&u[d]));
    memcpy(id, u, sizeof u);
    return SQ_OK;
fail:
    return st;
}

static void nd_abort(sq_dplane *d) {
    if (!d || d->aborted) return;
    d->aborted = true;
    for (int c = 0; c < 2; c++)
        if (d->comm[c]) ncclCommAbort(d->comm[c]);
}

static void nd_destroy(sq_dplane *d) {
    if (!d) return;
    for (int c = 0; c < 2; c++) {
        if (d->stream[c] && !d->aborted) cudaStreamSynchronize(d->stream[c]);
        if (d->comm[c] && !d->aborted) ncclCommDestroy(d->comm[c]);
    }
    for (int c = 0; c < 2; c++)
        if (d->stream[c]) cudaStreamDestroy(d->stream[c]);
    for (int i = 0; d->ev && i < d->n_slots; i++)
        if (d->ev[i]) cudaEventDestroy(d->ev[i]);
    if (d->join_ev) cudaEventDestroy(d->join_ev);
    cudaFree(d->one_d);
    free(d->ev);
    free(d->chan);
    free(d);
}

static sq_status nd_init_start(void *user, const uint8_t id[SQ_DPLANE_ID_BYTES], int n_ranks,
                               int rank, int device, int n_slots, sq_dplane **out, sq_error *err) {
    (void)user;
    sq_status st = SQ_OK;
    bool group_open = false;
    sq_dplane *d = calloc(1, sizeof *d);
    *out = d;
    if (!d) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl: out of memory");
    d->n_slots = n_slots;
    d->n_ranks = n_ranks;
    d->rank = rank;
    d->device = device;
    d->ev = calloc((size_t)n_slots, sizeof *d->ev);
    d->chan = calloc((size_t)n_slots, sizeof *d->chan);
    if (!d->ev || !d->chan) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "nccl: out of memory");
    SQ_CUDA_CHECK(cudaSetDevice(device));
    for (int c = 0; c < 2; c++)
        SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&d->stream[c], cudaStreamNonBlocking));
    for (int i = 0; i < n_slots; i++)
        SQ_CUDA_CHECK(cudaEventCreateWithFlags(&d->ev[i], cudaEventDisableTiming));
    SQ_CUDA_CHECK(cudaEventCreateWithFlags(&d->join_ev, cudaEventDisableTiming));
    SQ_CUDA_CHECK(cudaMalloc((void **)&d->one_d, 4));
    ncclUniqueId u[2];
    memcpy(u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;   /* returns at once; nd_init_test polls, the logic can abort */
    SQ_NCCL_CHECK(ncclGroupStart());
    group_open = true;
    for (int c = 0; c < 2; c++) SQ_NCCL_CHECK(ncclCommInitRankConfig(&d->comm[c], n_ranks, u[c], rank, &cfg));
    group_open = false;
    SQ_NCCL_CHECK(ncclGroupEnd());
    d->join = JOIN_COMMS;
    return SQ_OK;
fail:
    if (group_open) ncclGroupEnd();   /* never leave a group open */
    return st;
}

static sq_status comm_error(sq_dplane *d, int c, bool *in_progress, sq_error *err) {
    sq_status st = SQ_OK;
    ncclResult_t r = ncclSuccess;
    SQ_NCCL_CHECK(ncclCommGetAsyncError(d->comm[c], &r));
    if (in_progress) *in_progress = r == ncclInProgress;
    if (r != ncclSuccess && r != ncclInProgress)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl: %s (%s)", ncclGetErrorString(r),
                            ncclGetLastError(d->comm[c]));
    return SQ_OK;
fail:
    return st;
}

/* One byte each way with the ring neighbours on both communicators; join_ev marks both. */
static sq_status connect_ring(sq_dplane *d, sq_error *err) {
    sq_status st = SQ_OK;
    int p = d->n_ranks;
    int nbs[2] = {(d->rank + 1) % p, (d->rank - 1 + p) % p};
    bool group_open = false;
    for (int c = 0; c < 2; c++) {
        SQ_NCCL_CHECK(ncclGroupStart());
        group_open = true;
        for (int k = 0; k < (p == 2 ? 1 : 2); k++) {
            SQ_NCCL_CHECK(ncclSend(d->one_d, 1, ncclUint8, nbs[k], d->comm[c], d->stream[c]));
            SQ_NCCL_CHECK(ncclRecv(d->one_d + 1 + k, 1, ncclUint8, nbs[k], d->comm[c], d->stream[c]));
        }
        group_open = false;
        SQ_NCCL_CHECK(ncclGroupEnd());
    }
    /* stream 0 waits for stream 1's exchange, then join_ev marks both */
    SQ_CUDA_CHECK(cudaEventRecord(d->join_ev, d->stream[1]));
    SQ_CUDA_CHECK(cudaStreamWaitEvent(d->stream[0], d->join_ev, 0));
    SQ_CUDA_CHECK(cudaEventRecord(d->join_ev, d->stream[0]));
    return SQ_OK;
fail:
    if (group_open) ncclGroupEnd();   /* never leave a group open */
    return st;
}

static sq_status nd_init_test(sq_dplane *d, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    *done = false;
    if (d->aborted) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl: communicators aborted");
    if (d->join == JOIN_COMMS) {
        for (int c = 0; c < 2; c++) {
            bool busy = false;
            if ((st = comm_error(d, c, &busy, err)) != SQ_OK) return st;
            if (busy) return SQ_OK;
        }
        if (d->n_ranks > 1 && (st = connect_ring(d, err)) != SQ_OK) return st;
        d->join = d->n_ranks > 1 ? JOIN_CONNECT : JOIN_DONE;
    }
    if (d->join == JOIN_CONNECT) {
        cudaError_t e = cudaEventQuery(d->join_ev);
        if (e == cudaErrorNotReady) {
            for (int c = 0; c < 2; c++)
                if ((st = comm_error(d, c, NULL, err)) != SQ_OK) return st;
            return SQ_OK;
        }
        SQ_CUDA_CHECK(e);
        d->join = JOIN_DONE;
    }
    *done = true;
    return SQ_OK;
fail:
    return st;
}

static sq_status nd_post(sq_dplane *d, int chan, bool is_send, void *buf, uint64_t n_bytes,
                         int peer, int slot, sq_error *err) {
    sq_status st = SQ_OK;
    if (is_send)
        SQ_NCCL_CHECK(ncclSend(buf, (size_t)n_bytes, ncclUint8, peer, d->comm[chan], d->stream[chan]));
    else
        SQ_NCCL_CHECK(ncclRecv(buf, (size_t)n_bytes, ncclUint8, peer, d->comm[chan], d->stream[chan]));
    SQ_CUDA_CHECK(cudaEventRecord(d->ev[slot], d->stream[chan]));
    d->chan[slot] = chan;
    return SQ_OK;
fail:
    return st;
}

static sq_status nd_test(sq_dplane *d, int slot, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    *done = false;
    if (d->aborted) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "nccl: communicators aborted");
    cudaError_t e = cudaEventQuery(d->ev[slot]);
    if (e == cudaSuccess) {
        *done = true;
        return SQ_OK;
    }
    if (e != cudaErrorNotReady) SQ_CUDA_CHECK(e);
    return comm_error(d, d->chan[slot], NULL, err);
fail:
    return st;
}

const sq_dplane_ops sq_dplane_nccl_ops = {
    .name = "nccl",
    .resolve_device = nd_resolve_device,
    .get_id = nd_get_id,
    .init_start = nd_init_start,
    .init_test = nd_init_test,
    .post = nd_post,
    .test = nd_test,
    .abort = nd_abort,
    .destroy = nd_destroy,
};
