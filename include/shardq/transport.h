/* transport: moves tensors (activations, token ids) between pipeline stage ranks.
 *
 * One opaque handle per run, over a duplicate of the caller's communicator.  Two planes:
 *  - the data plane (isend / irecv / test / wait): asynchronous point-to-point transfers to
 *    and from a neighbour rank, each with a completion handle (sq_xfer).  It sits behind a
 *    vtable (src/transport/transport_impl.h): `mpi` (host memory, MPI_Isend/MPI_Irecv, one
 *    tag per micro-batch; device buffers staged through host memory, sq_devcopy_ops below)
 *    and `nccl` (device buffers over an sq_dplane_ops, NCCL's in CUDA builds; host buffers of
 *    an nccl transport — the pipeline's headers and token ids — travel over `mpi`).
 *    sq_mem_kind says which memory a buffer is in.
 *  - the control plane, always MPI on host memory whatever the data plane: heartbeats to the
 *    ring neighbours, abort notices, agreement on a status, broadcast, gather, close.
 *
 * Liveness: every wait polls (MPI_Test, never a blocking MPI call) with a deadline.  While a
 * rank polls it sends heartbeats to its neighbours (prev and next in the ring), so a peer that
 * is merely waiting too is known to be alive; a wait on peer X fails with SQ_ERR_PEER naming
 * X when nothing (data or heartbeat) came from X for `timeout_s`.  A rank that computes for
 * longer than timeout_s without polling looks dead to its neighbours: the timeout must exceed
 * the longest single compute step.  A rank that fails calls sq_transport_abort_peers(), and
 * every other rank's next wait then fails at once with SQ_ERR_PEER naming it.
 *
 * Ownership: sq_transport_create()/sq_transport_destroy() pair (destroy takes NULL and cancels
 * what is pending).  An sq_xfer points into the transport's fixed pool: it stays valid until a
 * test/wait reports it done, it fails, or it is cancelled; then it is recycled.  Buffers
 * handed to isend/irecv belong to the caller and must stay valid (and, for isend, unchanged)
 * until the transfer is done or cancelled.
 * Never: print, exit, or call a blocking MPI function after create. */
#ifndef SHARDQ_TRANSPORT_H
#define SHARDQ_TRANSPORT_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Converts an MPI return code into *err (SQ_ERR_MPI, "<what>: <MPI_Error_string>") and
 * returns SQ_ERR_MPI.  err may be NULL. */
sq_status sq_mpi_error(sq_error *err, int mpi_rc, const char *what);

/* SQ_MPI_CHECK(st, err, MPI_Call(...)): on a code other than MPI_SUCCESS, records it in err,
 * sets the sq_status variable `st` to SQ_ERR_MPI and jumps to the enclosing `fail:` label.
 * The communicator must have MPI_ERRORS_RETURN, or errors never come back here. */
#define SQ_MPI_CHECK(st, err, call)                                                         \
    do {                                                                                    \
        int sq_mpi_rc_ = (call);                                                            \
        if (sq_mpi_rc_ != MPI_SUCCESS) {                                                    \
            (st) = sq_mpi_error((err), sq_mpi_rc_, #call);                                  \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

typedef enum sq_transport_kind { SQ_TRANSPORT_MPI = 0, SQ_TRANSPORT_NCCL } sq_transport_kind;
/* Where a buffer lives.  mpi: HOST, and DEVICE when it has a devcopy (CUDA builds: pinned
 * staging).  nccl: HOST goes over MPI, DEVICE over the data plane. */
typedef enum sq_mem_kind { SQ_MEM_HOST = 0, SQ_MEM_DEVICE } sq_mem_kind;

/* ---- the device data plane under the nccl transport -------------------------------------
 *
 * The nccl transport is two layers.  The logic (src/transport/nccl.c, built everywhere):
 * routing (host buffers: headers, token ids, go over MPI; device buffers over the data plane),
 * an MPI header {bytes, sequence} announcing each device transfer on the caller's tag, the
 * pair order, bring-up (device check per node, rank 0's id broadcast with its status, a
 * non-blocking join polled with the control plane's liveness, the abort notice of a rank that
 * fails), liveness by MPI heartbeats (never by the age of one operation), cancel.  Below it,
 * this vtable: what NCCL itself does.  The CUDA build's implementation is NCCL on two
 * communicators (src/transport/nccl_dev.c); tests supply an MPI-backed one
 * (tests/dplane_mpi.c), so a CPU-only run drives the same logic.
 *
 * Channels: 0 carries transfers from a lower to a higher rank, 1 the other way (NCCL
 * serializes a communicator's operations; one per direction keeps a pipeline that sends
 * forward while it waits for tokens from behind from deadlocking).  Transfers on one channel
 * between one pair complete in the order posted, a send only once the receive is posted.
 * Slots: completion handles 0..n_slots-1, chosen by the caller, one transfer each at a time. */
#define SQ_DPLANE_ID_BYTES 256
typedef struct sq_dplane sq_dplane;   /* an implementation's state */
typedef struct sq_dplane_ops {
    const char *name;
    /* Optional (NULL: the device is used as given): turns a device < 0 into this rank's
     * current one; no device at all is SQ_ERR_UNSUPPORTED.  Runs before the per-node check. */
    sq_status (*resolve_device)(void *user, int *device, sq_error *err);
    /* Rank 0 only: the id every rank joins with.  On failure the bring-up fails on every rank
     * naming rank 0 and quoting err. */
    sq_status (*get_id)(void *user, uint8_t id[SQ_DPLANE_ID_BYTES], sq_error *err);
    /* Every rank: starts joining (must not block waiting for the other ranks) on `device`
     * (the backend's device; the implementation must not choose another).  On failure *out may
     * be non-NULL and is destroyed by the caller. */
    sq_status (*init_start)(void *user, const uint8_t id[SQ_DPLANE_ID_BYTES], int n_ranks,
                            int rank, int device, int n_slots, sq_dplane **out, sq_error *err);
    /* Non-blocking: *done once joined and connected to the ring neighbours. */
    sq_status (*init_test)(sq_dplane *d, bool *done, sq_error *err);
    /* Posts a transfer of exactly n_bytes (> 0) on channel chan, tracked by slot. */
    sq_status (*post)(sq_dplane *d, int chan, bool is_send, void *buf, uint64_t n_bytes,
                      int peer, int slot, sq_error *err);
    /* Non-blocking: *done when slot's transfer completed; an asynchronous failure of the
     * plane is an error. */
    sq_status (*test)(sq_dplane *d, int slot, bool *done, sq_error *err);
    /* Abandons everything in flight (ncclCommAbort); after it every test fails. */
    void (*abort)(sq_dplane *d);
    /* Frees d (NULL is fine). */
    void (*destroy)(sq_dplane *d);
} sq_dplane_ops;

/* ---- device memory under the mpi transport ----------------------------------------------
 *
 * The mpi data plane passes device buffers by staging them through host memory, one staging
 * buffer per transfer slot (src/transport/mpi_stage.c, built everywhere): a send copies device
 * -> host and posts MPI_Isend once the copy is done; a receive lands in host memory and is
 * copied host -> device.  A send released while MPI may still read its staging buffer (a
 * cancel) keeps that buffer until MPI is done with it; the slot gets a new one.  The copies
 * are behind this vtable: CUDA's (pinned memory, a stream, one event per slot; CUDA builds),
 * or a test's plain host memory, so a CPU test drives the staging logic. */
typedef struct sq_devcopy sq_devcopy;
typedef struct sq_devcopy_ops {
    const char *name;
    /* Called at the first device transfer (a build with CUDA on a machine without a device
     * fails there, not at create).  On failure *out may be non-NULL and is destroyed. */
    sq_status (*create)(void *user, int n_slots, sq_devcopy **out, sq_error *err);
    void (*destroy)(sq_devcopy *c);   /* waits for copies in flight; NULL is fine */
    /* SQ_OK when p (n bytes) is device memory; SQ_ERR_INVALID when not. */
    sq_status (*check_device)(sq_devcopy *c, const void *p, uint64_t n, sq_error *err);
    void *(*host_alloc)(sq_devcopy *c, uint64_t n);   /* staging memory; NULL on failure */
    void (*host_free)(sq_devcopy *c, void *p);
    /* Starts a copy of n bytes (to_device: host -> device) tracked by slot. */
    sq_status (*copy)(sq_devcopy *c, int slot, void *dst, const void *src, uint64_t n,
                      bool to_device, sq_error *err);
    sq_status (*copy_test)(sq_devcopy *c, int slot, bool *done, sq_error *err);
    void (*copy_wait)(sq_devcopy *c, int slot);
} sq_devcopy_ops;

typedef struct sq_transport_params {
    sq_transport_kind kind;
    MPI_Comm comm;        /* duplicated inside; the caller keeps and frees its own */
    int prev, next;       /* neighbour ranks for heartbeats; < 0: the ring (r-1+p)%p, (r+1)%p */
    double timeout_s;     /* silence from a peer before it is declared gone; <= 0: 30 s */
    int max_inflight;     /* data-plane transfers pending at once; <= 0: 256 */
    /* nccl only.  device: this rank's GPU, the backend's (< 0: the current CUDA device).
     * dplane: NULL for NCCL (CUDA builds); tests pass an MPI-backed stand-in, which also
     * makes SQ_TRANSPORT_NCCL available in a build without CUDA.  dplane_user: its argument. */
    int device;
    const sq_dplane_ops *dplane;
    void *dplane_user;
    /* mpi: how device buffers are staged; NULL: CUDA's (CUDA builds) or none (device
     * buffers refused).  Tests pass a host-memory stand-in. */
    const sq_devcopy_ops *devcopy;
    void *devcopy_user;
    sq_log log;
} sq_transport_params;

/* Defaults: MPI, MPI_COMM_WORLD, ring neighbours, 30 s, 256 transfers, device -1, NCCL's own
 * data plane, silent. */
sq_transport_params sq_transport_params_default(void);

typedef struct sq_transport sq_transport;
typedef struct sq_xfer sq_xfer;   /* a pending transfer: the completion handle */

/* Collective over params->comm (MPI_Comm_dup).  Sets MPI_ERRORS_RETURN on the duplicate.
 * On failure *out is NULL and nothing leaks; with nccl every rank fails (the rank that failed
 * with its own error, the others with SQ_ERR_PEER or SQ_ERR_NCCL naming it), none hangs.
 * SQ_TRANSPORT_NCCL without a CUDA build and without params->dplane: SQ_ERR_UNSUPPORTED.
 * With nccl, host buffers (SQ_MEM_HOST) travel over MPI and device ones over the data plane;
 * two ranks of one node on the same device: SQ_ERR_UNSUPPORTED on every rank. */
sq_status sq_transport_create(const sq_transport_params *params, sq_transport **out,
                              sq_error *err);
/* Cancels pending transfers and frees the communicator.  Not collective.  NULL is fine. */
void sq_transport_destroy(sq_transport *t);

int sq_transport_rank(const sq_transport *t);
int sq_transport_n_ranks(const sq_transport *t);
const char *sq_transport_name(const sq_transport *t);   /* "mpi" or "nccl" */
double sq_transport_timeout_s(const sq_transport *t);

/* Data plane.  tag >= 0 chooses the stream (e.g. 2*micro_batch for activations,
 * 2*micro_batch+1 for token ids); transfers between the same two ranks with the same tag
 * match in order.  A receive accepts at most cap_bytes; the size that came is reported on
 * completion.  n_bytes above INT_MAX, a tag above sq_transport_max_tag() or a peer out of
 * range: SQ_ERR_INVALID; no free handle: SQ_ERR_INTERNAL.  On failure *x is NULL. */
sq_status sq_transport_isend(sq_transport *t, int peer, int tag, const void *buf,
                             uint64_t n_bytes, sq_mem_kind mem, sq_xfer **x, sq_error *err);
sq_status sq_transport_irecv(sq_transport *t, int peer, int tag, void *buf, uint64_t cap_bytes,
                             sq_mem_kind mem, sq_xfer **x, sq_error *err);
int sq_transport_max_tag(const sq_transport *t);

/* Non-blocking check.  *done true: x is recycled and *n_bytes (may be NULL) holds the size
 * transferred.  Also runs one round of the control plane (heartbeats, abort notices), so an
 * abort notice from another rank is reported here as SQ_ERR_PEER.  On failure x is
 * cancelled and recycled. */
sq_status sq_transport_test(sq_transport *t, sq_xfer *x, bool *done, uint64_t *n_bytes,
                            sq_error *err);
/* Polls x to completion.  Fails with SQ_ERR_PEER naming the peer when it has been silent for
 * timeout_s, or naming the failed rank on an abort notice; x is then cancelled and recycled.
 * *idle_s (may be NULL) gets the seconds spent waiting added to it. */
sq_status sq_transport_wait(sq_transport *t, sq_xfer *x, uint64_t *n_bytes, double *idle_s,
                            sq_error *err);
/* Cancels a pending transfer and recycles x.  NULL is fine. */
void sq_transport_cancel(sq_transport *t, sq_xfer *x);

/* One round of the control plane: heartbeats due, incoming heartbeats, abort notices
 * (reported as SQ_ERR_PEER).  For callers running their own loop. */
sq_status sq_transport_poll(sq_transport *t, sq_error *err);
/* sq_transport_poll, then the liveness check of every neighbour for a wait that began at
 * `start` (sq_now_s() time): SQ_ERR_PEER naming one silent for timeout_s (the others are told),
 * or the rank of an abort notice.  For callers with their own loop (the serve engine). */
sq_status sq_transport_alive(sq_transport *t, double start, const char *what, sq_error *err);

/* Tells every other rank that this run failed with `cause` (best effort, returns within about
 * a second): their next wait fails with SQ_ERR_PEER naming cause->rank, or this rank when
 * cause->rank < 0, and quoting cause's message. */
void sq_transport_abort_peers(sq_transport *t, const sq_error *cause);

/* Control plane collectives: non-blocking MPI collectives polled with the same liveness rules.
 * sq_transport_agree: every rank passes its local status; returns SQ_OK only if all are OK,
 * else on every rank *err holds the error of the lowest failing rank (rank set to it). */
sq_status sq_transport_agree(sq_transport *t, sq_status local, sq_error *err);
sq_status sq_transport_bcast(sq_transport *t, void *buf, uint64_t n_bytes, int root,
                             sq_error *err);
/* Gathers n_bytes from every rank into recv (n_ranks * n_bytes, significant at root only). */
sq_status sq_transport_gather(sq_transport *t, const void *send, uint64_t n_bytes, void *recv,
                              int root, sq_error *err);

/* End-of-run handshake with the neighbours: tells them this rank sends nothing more and waits
 * until they say the same (so no heartbeat is left unmatched).  Every rank calls it once after
 * its last data transfer completed; after it only destroy is allowed. */
sq_status sq_transport_close(sq_transport *t, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
