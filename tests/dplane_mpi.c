/* The MPI-backed data plane for tests (see dplane_mpi.h).  Never blocks: init_test and test
 * are MPI_Test; abort cancels what it can and frees the rest. */
#include "dplane_mpi.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_JOIN = 1, TAG_CHAN0 = 100 };

struct sq_dplane {
    sq_test_dplane *u;
    int n_ranks, rank, n_slots;
    MPI_Request *slot;        /* (n_slots) */
    bool *slot_recv;          /* (n_slots) */
    MPI_Request *join;        /* (2 * n_ranks) sends then receives */
    uint8_t *join_in;         /* (n_ranks, 16) */
    uint8_t id[16];
    double t_start;
    bool aborted, joined;
};

void sq_test_dplane_init(sq_test_dplane *u, MPI_Comm comm) {
    memset(u, 0, sizeof *u);
    u->fail_init_rank = u->fail_join_rank = -1;
    u->device_seen = -2;
    MPI_Comm_dup(comm, &u->comm);
    MPI_Comm_set_errhandler(u->comm, MPI_ERRORS_RETURN);
}

void sq_test_dplane_fini(sq_test_dplane *u, int failed) {
    if (!failed && u->comm != MPI_COMM_NULL) MPI_Comm_free(&u->comm);
    u->comm = MPI_COMM_NULL;
}

static sq_status td_get_id(void *user, uint8_t id[SQ_DPLANE_ID_BYTES], sq_error *err) {
    sq_test_dplane *u = user;
    if (u->fail_get_id)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "ncclGetUniqueId failed: injected by the test");
    memset(id, 0, SQ_DPLANE_ID_BYTES);
    uint64_t stamp = (uint64_t)(sq_now_s() * 1e6);
    memcpy(id, "SQTESTID", 8);
    memcpy(id + 8, &stamp, 8);
    return SQ_OK;
}

static void td_abort(sq_dplane *d) {
    if (!d || d->aborted) return;
    d->aborted = true;
    for (int i = 0; i < d->n_slots; i++)
        if (d->slot[i] != MPI_REQUEST_NULL) {
            if (d->slot_recv[i]) MPI_Cancel(&d->slot[i]);
            MPI_Request_free(&d->slot[i]);
        }
    for (int i = 0; d->join && i < 2 * d->n_ranks; i++)
        if (d->join[i] != MPI_REQUEST_NULL) {
            if (i >= d->n_ranks) MPI_Cancel(&d->join[i]);
            MPI_Request_free(&d->join[i]);
        }
}

static void td_destroy(sq_dplane *d) {
    if (!d) return;
    td_abort(d);   /* releases whatever is still pending */
    free(d->slot);
    free(d->slot_recv);
    free(d->join);
    free(d->join_in);
    free(d);
}

static sq_status td_init_start(void *user, const uint8_t id[SQ_DPLANE_ID_BYTES], int n_ranks,
                               int rank, int device, int n_slots, sq_dplane **out, sq_error *err) {
    sq_test_dplane *u = user;
    u->device_seen = device;
    *out = NULL;
    if (rank == u->fail_init_rank)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "ncclCommInitRank failed: injected by the test");
    sq_dplane *d = calloc(1, sizeof *d);
    if (!d) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "test dplane: out of memory");
    *out = d;
    d->u = u;
    d->n_ranks = n_ranks;
    d->rank = rank;
    d->n_slots = n_slots;
    d->t_start = sq_now_s();
    memcpy(d->id, id, sizeof d->id);
    d->slot = malloc((size_t)n_slots * sizeof *d->slot);
    d->slot_recv = calloc((size_t)n_slots, sizeof *d->slot_recv);
    d->join = malloc(2 * (size_t)n_ranks * sizeof *d->join);
    d->join_in = calloc((size_t)n_ranks, 16);
    if (!d->slot || !d->slot_recv || !d->join || !d->join_in)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "test dplane: out of memory");
    for (int i = 0; i < n_slots; i++) d->slot[i] = MPI_REQUEST_NULL;
    for (int i = 0; i < 2 * n_ranks; i++) d->join[i] = MPI_REQUEST_NULL;
    /* the join: everyone's id to everyone; done when all came (no one finishes alone) */
    for (int r = 0; r < n_ranks; r++) {
        /* a rank whose join will fail never shows up: the others wait, as NCCL's would */
        if (r == rank || rank == u->fail_join_rank) continue;
        if (MPI_Isend(d->id, 16, MPI_BYTE, r, TAG_JOIN, u->comm, &d->join[r]) != MPI_SUCCESS ||
            MPI_Irecv(d->join_in + 16 * r, 16, MPI_BYTE, r, TAG_JOIN, u->comm, &d->join[n_ranks + r]) != MPI_SUCCESS)
            return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "test dplane: posting the join failed");
    }
    return SQ_OK;
}

static sq_status td_init_test(sq_dplane *d, bool *done, sq_error *err) {
    *done = false;
    if (d->aborted) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: aborted");
    if (d->rank == d->u->fail_join_rank && sq_now_s() - d->t_start >= d->u->join_fail_after_s)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "ncclCommInitRank (async) failed: injected by the test");
    if (d->rank == d->u->fail_join_rank) return SQ_OK;   /* until the failure is due */
    if (d->joined) {
        *done = true;
        return SQ_OK;
    }
    int flag = 0;
    if (MPI_Testall(2 * d->n_ranks, d->join, &flag, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "test dplane: the join failed");
    if (!flag) return SQ_OK;
    for (int r = 0; r < d->n_ranks; r++)
        if (r != d->rank && memcmp(d->join_in + 16 * r, d->id, 16) != 0)
            return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: rank %d joined with another id", r);
    d->joined = true;
    *done = true;
    return SQ_OK;
}

static sq_status td_post(sq_dplane *d, int chan, bool is_send, void *buf, uint64_t n_bytes,
                         int peer, int slot, sq_error *err) {
    if (d->aborted) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: aborted");
    if (slot < 0 || slot >= d->n_slots || d->slot[slot] != MPI_REQUEST_NULL || n_bytes == 0 ||
        n_bytes > (uint64_t)INT32_MAX || chan < 0 || chan > 1)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "test dplane: bad post (slot %d, %llu bytes, channel %d)",
                            slot, (unsigned long long)n_bytes, chan);
    int rc = is_send ? MPI_Issend(buf, (int)n_bytes, MPI_BYTE, peer, TAG_CHAN0 + chan, d->u->comm, &d->slot[slot])
                     : MPI_Irecv(buf, (int)n_bytes, MPI_BYTE, peer, TAG_CHAN0 + chan, d->u->comm, &d->slot[slot]);
    if (rc != MPI_SUCCESS) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: post failed");
    d->slot_recv[slot] = !is_send;
    d->u->n_posts++;
    d->u->bytes_posted += n_bytes;
    return SQ_OK;
}

static sq_status td_test(sq_dplane *d, int slot, bool *done, sq_error *err) {
    *done = false;
    if (d->aborted) return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: aborted");
    if (d->slot[slot] == MPI_REQUEST_NULL) {
        *done = true;
        return SQ_OK;
    }
    int flag = 0;
    if (MPI_Test(&d->slot[slot], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_NCCL, NULL, NULL, "test dplane: transfer failed (size mismatch?)");
    *done = flag != 0;
    return SQ_OK;
}

const sq_dplane_ops sq_test_dplane_ops = {
    .name = "test-mpi",
    .get_id = td_get_id,
    .init_start = td_init_start,
    .init_test = td_init_test,
    .post = td_post,
    .test = td_test,
    .abort = td_abort,
    .destroy = td_destroy,
};
