/* Private to the transport module: the handle, the pending-transfer pool and the vtable a
 * data-plane implementation fills in (mpi.c; nccl.c over an sq_dplane_ops, NCCL's in
 * nccl_dev.c).  The control plane (heartbeats, abort notices, collectives) lives in
 * transport.c and is the same for every implementation.
 * Must never be included outside src/transport/. */
#ifndef SHARDQ_TRANSPORT_IMPL_H
#define SHARDQ_TRANSPORT_IMPL_H

#include "shardq/transport.h"

/* MPI tags: control first, then the caller's data tags shifted by SQ_TAG_DATA0. */
enum { SQ_TAG_HEARTBEAT = 0, SQ_TAG_ABORT = 1, SQ_TAG_DATA0 = 4 };

struct sq_xfer {
    int index;              /* in the pool */
    bool in_use;
    bool is_send;
    int peer, tag;          /* tag as the caller gave it */
    void *buf;              /* caller's buffer (const for sends) */
    uint64_t n_bytes;       /* send size, or receive capacity */
    sq_mem_kind mem;
    uint64_t got_bytes;     /* set by ops->test when done */
    MPI_Request req;        /* the MPI implementation's request */
    const struct sq_transport_ops *ops;   /* who carries it: t->ops, or mpi for host buffers */
    void *impl;             /* per-transfer state of other implementations (events, staging) */
};

typedef struct sq_transport_ops {
    const char *name;
    /* Posts the transfer described by x (fields filled by the caller). */
    sq_status (*start)(sq_transport *t, sq_xfer *x, sq_error *err);
    /* Non-blocking: *done and x->got_bytes when complete. */
    sq_status (*test)(sq_transport *t, sq_xfer *x, bool *done, sq_error *err);
    /* Best effort; x is recycled by the caller afterwards. */
    void (*cancel)(sq_transport *t, sq_xfer *x);
    /* Frees t->impl. */
    void (*fini)(sq_transport *t);
    /* Optional (NULL: nothing to do): collective set-up after the communicator is duplicated
     * and the handle filled, before the first transfer (the nccl bring-up).  On failure the
     * caller destroys t, which calls fini. */
    sq_status (*init)(sq_transport *t, sq_error *err);
    /* true: SQ_MEM_HOST transfers go over the mpi data plane instead (nccl: headers, ids). */
    bool host_via_mpi;
} sq_transport_ops;

/* One neighbour's heartbeat channel.  Payload: a sequence number >= 0, or -1 for "closed". */
typedef struct sq_hb_chan {
    int peer;
    MPI_Request send_req, recv_req;
    int64_t send_val, recv_val;
    double last_heard, last_sent;
    bool peer_closed;
} sq_hb_chan;

/* An abort notice as it travels. */
typedef struct sq_abort_msg {
    int32_t magic;
    int32_t blamed;    /* the rank that failed */
    int32_t reporter;  /* the rank that noticed */
    int32_t code;      /* sq_status */
    char msg[496];
} sq_abort_msg;

struct sq_transport {
    const sq_transport_ops *ops;
    void *impl;
    MPI_Comm comm;          /* our duplicate, MPI_ERRORS_RETURN */
    int rank, n_ranks, prev, next;
    int max_tag;            /* largest caller tag */
    double timeout_s, hb_interval_s;
    sq_log log;
    sq_xfer *xfers;         /* (n_xfers) */
    int n_xfers;
    int n_chans;            /* distinct neighbours other than self: 0..2 */
    sq_hb_chan chans[2];
    int64_t hb_seq;
    bool closing;           /* close sent: no more heartbeats */
    MPI_Request abort_req;
    sq_abort_msg abort_in;
    sq_abort_msg abort_out[1];
    bool failed;            /* a transfer failed or a peer is gone: keep the communicator */
    sq_error peer_err;      /* sticky: the first abort notice received */
    bool have_peer_err;
    /* nccl: the device (params->device), the data plane and its argument */
    int device;
    const sq_dplane_ops *dplane;
    void *dplane_user;
    /* mpi: the staging of device buffers (NULL: refused) and its argument */
    const sq_devcopy_ops *devcopy;
    void *devcopy_user;
};

/* sq_transport_alive (transport.h) also serves the implementations' bring-up loops. */
/* The poll loop's pacing: spin, then sleep up to 200 us. */
void sq_transport_backoff(int *round);

extern const sq_transport_ops sq_transport_mpi_ops;
/* nccl.c: device buffers over t->dplane, host ones over mpi (every build). */
extern const sq_transport_ops sq_transport_nccl_ops;

/* mpi_stage.c: the mpi data plane's device buffers, staged through host memory over
 * t->devcopy; x->impl points at the transfer's staging state while it is pending. */
sq_status sq_mpi_stage_start(sq_transport *t, sq_xfer *x, sq_error *err);
sq_status sq_mpi_stage_test(sq_transport *t, sq_xfer *x, bool *done, sq_error *err);
void sq_mpi_stage_cancel(sq_transport *t, sq_xfer *x);
void sq_mpi_stage_fini(sq_transport *t);

#ifdef SHARDQ_HAVE_CUDA
/* nccl_dev.c: NCCL's data plane; mpi_cuda.c: CUDA's copies for staging (CUDA builds only). */
extern const sq_dplane_ops sq_dplane_nccl_ops;
extern const sq_devcopy_ops sq_devcopy_cuda_ops;
#endif

#endif
