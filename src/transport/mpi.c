/* Owns the MPI data plane: host buffers, MPI_Isend / MPI_Irecv on the transport's duplicate
 * communicator, the caller's tag shifted past the control tags.  Device buffers are staged
 * through host memory by mpi_stage.c over t->devcopy (CUDA's in CUDA builds), refused without
 * one (x->impl holds the staging state while such a transfer is pending).
 * Must never block: start posts, test polls. */
#include "transport_impl.h"

static sq_status mpi_start(sq_transport *t, sq_xfer *x, sq_error *err) {
    if (x->mem == SQ_MEM_DEVICE && t->devcopy) return sq_mpi_stage_start(t, x, err);
    if (x->mem != SQ_MEM_HOST)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the mpi transport of this build takes host buffers only "
                            "(device buffers need the CUDA build)");
    sq_status st = SQ_OK;
    int tag = x->tag + SQ_TAG_DATA0;
    if (x->is_send)
        SQ_MPI_CHECK(st, err, MPI_Isend(x->buf, (int)x->n_bytes, MPI_BYTE, x->peer, tag, t->comm, &x->req));
    else
        SQ_MPI_CHECK(st, err, MPI_Irecv(x->buf, (int)x->n_bytes, MPI_BYTE, x->peer, tag, t->comm, &x->req));
    return SQ_OK;
fail:
    x->req = MPI_REQUEST_NULL;
    return st;
}

static sq_status mpi_test(sq_transport *t, sq_xfer *x, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    int flag = 0, count = 0;
    MPI_Status status;
    *done = false;
    if (x->impl) return sq_mpi_stage_test(t, x, done, err);
    SQ_MPI_CHECK(st, err, MPI_Test(&x->req, &flag, &status));
    if (!flag) return SQ_OK;
    if (x->is_send) {
        x->got_bytes = x->n_bytes;
    } else {
        SQ_MPI_CHECK(st, err, MPI_Get_count(&status, MPI_BYTE, &count));
        x->got_bytes = (uint64_t)count;
    }
    *done = true;
    return SQ_OK;
fail:
    return st;
}

static void mpi_cancel(sq_transport *t, sq_xfer *x) {
    if (x->impl) {
        sq_mpi_stage_cancel(t, x);
        return;
    }
    if (x->req == MPI_REQUEST_NULL) return;
    /* A receive is cancelled for real; a send may already be on the wire, so it is only
     * released (MPI completes it in the background). */
    if (!x->is_send) MPI_Cancel(&x->req);
    MPI_Request_free(&x->req);
    x->req = MPI_REQUEST_NULL;
}

static void mpi_fini(sq_transport *t) { sq_mpi_stage_fini(t); }

const sq_transport_ops sq_transport_mpi_ops = {
    .name = "mpi",
    .start = mpi_start,
    .test = mpi_test,
    .cancel = mpi_cancel,
    .fini = mpi_fini,
};
