/* Owns the mpi data plane's device buffers (CUDA builds): each transfer slot has a pinned host
 * buffer (grown on demand, kept for reuse) and an event; a send copies device -> pinned on the
 * staging stream and posts MPI_Isend once the copy is done; a receive lands in pinned memory and
 * is copied pinned -> device, complete when its event is.  This is how two ranks that share one
 * GPU (which cannot share an NCCL communicator) pass activations.
 * The caller's device buffer must hold its data when isend is called (its producer finished:
 * sq_backend_sync), because the staging stream does not wait for the caller's stream.
 * Must never block on the network or on a peer: every step is an event query or an MPI_Test. */
#include "transport_impl.h"

#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "../../kernels/cuda_check.cuh"

enum { ST_IDLE = 0, ST_COPY_OUT, ST_SEND, ST_RECV, ST_COPY_IN };

typedef struct stage {
    void *buf_h;        /* pinned (cap bytes) */
    size_t cap;
    cudaEvent_t ev;
    int state;
} stage;

typedef struct mpi_cuda {
    cudaStream_t stream;
    stage *st;          /* (n) one per transfer slot */
    int n;
} mpi_cuda;

static sq_status ensure_impl(sq_transport *t, sq_error *err) {
    sq_status st = SQ_OK;
    if (t->impl) return SQ_OK;
    mpi_cuda *m = calloc(1, sizeof *m);
    if (!m) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: out of memory for staging");
    m->st = calloc((size_t)t->n_xfers, sizeof *m->st);
    m->n = t->n_xfers;
    t->impl = m;   /* fini frees it whatever happens next */
    if (!m->st) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: out of memory for staging");
    SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    return SQ_OK;
fail:
    return st;
}

/* SQ_ERR_UNSUPPORTED without a CUDA device (as in a build without CUDA), SQ_ERR_INVALID when
 * the buffer is not device memory. */
static sq_status check_device_buffer(const sq_xfer *x, sq_error *err) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the mpi transport got a device buffer but this machine has no CUDA device");
    struct cudaPointerAttributes a;
    if (x->n_bytes && (cudaPointerGetAttributes(&a, x->buf) != cudaSuccess ||
                       (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged))) {
        cudaGetLastError();   /* clear the sticky-free error of a failed query */
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "the mpi transport got a buffer marked device that is not CUDA device memory");
    }
    return SQ_OK;
}

sq_status sq_mpi_stage_start(sq_transport *t, sq_xfer *x, sq_error *err) {
    sq_status st = check_device_buffer(x, err);
    if (st != SQ_OK) return st;
    st = ensure_impl(t, err);
    if (st != SQ_OK) return st;
    mpi_cuda *m = t->impl;
    stage *s = &m->st[x->index];
    size_t n = (size_t)x->n_bytes;
    if (!s->ev) SQ_CUDA_CHECK(cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming));
    if (n > s->cap) {
        SQ_CUDA_CHECK(cudaEventSynchronize(s->ev));   /* an old copy may still read it */
        cudaFreeHost(s->buf_h);
        s->buf_h = NULL;
        s->cap = 0;
        SQ_CUDA_CHECK(cudaHostAlloc(&s->buf_h, n, cudaHostAllocDefault));
        s->cap = n;
    }
    int tag = x->tag + SQ_TAG_DATA0;
    if (x->is_send) {
        if (n) SQ_CUDA_CHECK(cudaMemcpyAsync(s->buf_h, x->buf, n, cudaMemcpyDeviceToHost, m->stream));
        SQ_CUDA_CHECK(cudaEventRecord(s->ev, m->stream));
        s->state = ST_COPY_OUT;
    } else {
        SQ_MPI_CHECK(st, err, MPI_Irecv(s->buf_h, (int)n, MPI_BYTE, x->peer, tag, t->comm, &x->req));
        s->state = ST_RECV;
    }
    x->impl = s;
    return SQ_OK;
fail:
    x->req = MPI_REQUEST_NULL;
    x->impl = NULL;
    if (s) s->state = ST_IDLE;
    return st;
}

sq_status sq_mpi_stage_test(sq_transport *t, sq_xfer *x, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    mpi_cuda *m = t->impl;
    stage *s = x->impl;
    int flag = 0, count = 0;
    MPI_Status status;
    cudaError_t e;
    *done = false;
    switch (s->state) {
    case ST_COPY_OUT:
        e = cudaEventQuery(s->ev);
        if (e == cudaErrorNotReady) return SQ_OK;
        SQ_CUDA_CHECK(e);
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
        if (count) SQ_CUDA_CHECK(cudaMemcpyAsync(x->buf, s->buf_h, (size_t)count, cudaMemcpyHostToDevice, m->stream));
        SQ_CUDA_CHECK(cudaEventRecord(s->ev, m->stream));
        s->state = ST_COPY_IN;
        __attribute__((fallthrough));
    case ST_COPY_IN:
        e = cudaEventQuery(s->ev);
        if (e == cudaErrorNotReady) return SQ_OK;
        SQ_CUDA_CHECK(e);
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
    stage *s = x->impl;
    if (x->req != MPI_REQUEST_NULL) {
        if (!x->is_send) MPI_Cancel(&x->req);   /* a send may be on the wire: only released */
        MPI_Request_free(&x->req);
        x->req = MPI_REQUEST_NULL;
    }
    /* a copy in flight reads or writes the caller's buffer: let it finish before returning */
    if (s && (s->state == ST_COPY_OUT || s->state == ST_COPY_IN)) cudaEventSynchronize(s->ev);
    if (s) s->state = ST_IDLE;
    x->impl = NULL;
}

void sq_mpi_stage_fini(sq_transport *t) {
    mpi_cuda *m = t->impl;
    if (!m) return;
    if (m->stream) cudaStreamSynchronize(m->stream);
    for (int i = 0; m->st && i < m->n; i++) {
        if (m->st[i].ev) cudaEventDestroy(m->st[i].ev);
        cudaFreeHost(m->st[i].buf_h);
    }
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m->st);
    free(m);
    t->impl = NULL;
}
