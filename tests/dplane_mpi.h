/* An MPI-backed stand-in for NCCL under the nccl transport (sq_dplane_ops), for tests only:
 * with it a CPU-only build runs the nccl transport's whole logic (routing of host buffers to
 * MPI, headers, pair order, bring-up, liveness, cancel) as a multi-GPU run does.  It behaves
 * as NCCL does where the logic depends on it:
 *  - the join completes only once every rank has started it (as ncclCommInitRank);
 *  - a send completes only once its receive is posted (MPI_Issend: NCCL's rendezvous);
 *  - transfers of one channel between one pair complete in the order posted;
 *  - "device" buffers are plain host memory here.
 * Failure injection, per rank: get_id fails (rank 0), init_start fails, the join fails after
 * a delay.  What it records (device asked for, transfers posted) lets tests check routing and
 * the device choice. */
#ifndef SHARDQ_TESTS_DPLANE_MPI_H
#define SHARDQ_TESTS_DPLANE_MPI_H

#include <mpi.h>
#include <stdint.h>

#include "shardq/transport.h"

typedef struct sq_test_dplane {
    MPI_Comm comm;            /* a fresh duplicate per transport (MPI_ERRORS_RETURN) */
    int fail_get_id;          /* != 0: rank 0's get_id fails */
    int fail_init_rank;       /* this rank's init_start fails (-1: none) */
    int fail_join_rank;       /* this rank's join fails after join_fail_after_s (-1: none) */
    double join_fail_after_s;
    /* recorded */
    int device_seen;          /* the device init_start was given (-2: not called) */
    int64_t n_posts;          /* transfers posted on the plane */
    uint64_t bytes_posted;
} sq_test_dplane;

/* Fills *u with no failure injected and a duplicate of `comm`. */
void sq_test_dplane_init(sq_test_dplane *u, MPI_Comm comm);
/* Frees the duplicate unless `failed` (messages of a failed run may still be in flight). */
void sq_test_dplane_fini(sq_test_dplane *u, int failed);

extern const sq_dplane_ops sq_test_dplane_ops;

#endif
