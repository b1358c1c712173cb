/* Tests of the transport module under mpirun (NP 2 and 4): ring transfers with tags matched
 * out of order, sizes reported, a large (rendezvous) message, polling with test(), bad
 * arguments, a truncated receive, agree / bcast / gather, the close handshake, an abort
 * notice, and a silent (hung) peer detected within the timeout and named.
 * The nccl transport's logic over the MPI-backed test data plane (tests/dplane_mpi.c): host
 * buffers routed to MPI, the caller's device, bring-up failures injected (rank 0's id, one
 * rank's init, one rank's join) ending every rank, a receiver later than the timeout but
 * alive, a cancelled send in flight. */
#include <check.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "devcopy_host.h"
#include "dplane_mpi.h"
#include "shardq/transport.h"
#include "testutil.h"

/* CUDA devices this process sees: 0 in a build without CUDA or on a machine without a GPU. */
static int n_cuda_devices(void) {
    int n = 0;
#ifdef SHARDQ_HAVE_CUDA
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;
    }
#endif
    return n;
}

static int g_rank, g_size;

static sq_transport *make(double timeout_s) {
    sq_transport_params p = sq_transport_params_default();
    p.timeout_s = timeout_s;
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_transport *t = NULL;
    sq_status st = sq_transport_create(&p, &t, &err);
    ck_assert_msg(st == SQ_OK, "create: %s", err.msg);
    ck_assert_int_eq(sq_transport_rank(t), g_rank);
    ck_assert_int_eq(sq_transport_n_ranks(t), g_size);
    ck_assert_str_eq(sq_transport_name(t), "mpi");
    return t;
}

static void fill(uint8_t *b, size_t n, int seed) {
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)((i * 131u + (unsigned)seed * 7u) & 0xff);
}

START_TEST(ring_tags_out_of_order) {
    sq_transport *t = make(10);
    sq_error err;
    sq_error_init(&err, g_rank);
    int next = (g_rank + 1) % g_size, prev = (g_rank - 1 + g_size) % g_size;
    /* sizes per tag; tag 2 is 8 MiB so it goes through the rendezvous protocol */
    const size_t sizes[3] = {17, 4096, 8u << 20};
    uint8_t *sbuf[3], *rbuf[3];
    sq_xfer *sx[3], *rx[3];
    for (int k = 0; k < 3; k++) {
        sbuf[k] = malloc(sizes[k]);
        rbuf[k] = calloc(1, sizes[k] + 8);
        fill(sbuf[k], sizes[k], g_rank * 3 + k);
    }
    /* send in order 2, 0, 1; receive in order 0, 1, 2: tags keep them apart */
    int order[3] = {2, 0, 1};
    for (int i = 0; i < 3; i++) {
        int k = order[i];
        ck_assert_int_eq(sq_transport_isend(t, next, k, sbuf[k], sizes[k], SQ_MEM_HOST, &sx[k], &err), SQ_OK);
    }
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(sq_transport_irecv(t, prev, k, rbuf[k], sizes[k] + 8, SQ_MEM_HOST, &rx[k], &err), SQ_OK);
    for (int k = 0; k < 3; k++) {
        uint64_t got = 0;
        double idle = 0;
        ck_assert_msg(sq_transport_wait(t, rx[k], &got, &idle, &err) == SQ_OK, "%s", err.msg);
        ck_assert_uint_eq(got, sizes[k]);
        ck_assert(idle >= 0);
        uint8_t *want = malloc(sizes[k]);
        fill(want, sizes[k], prev * 3 + k);
        ck_assert(memcmp(want, rbuf[k], sizes[k]) == 0);
        free(want);
    }
    for (int k = 0; k < 3; k++) {
        uint64_t got = 0;
        ck_assert_int_eq(sq_transport_wait(t, sx[k], &got, NULL, &err), SQ_OK);
        ck_assert_uint_eq(got, sizes[k]);
    }
    /* polling with test(): a short message, the same tag reused in order */
    int32_t v = 1000 + g_rank, w = -1, v2 = 2000 + g_rank, w2 = -1;
    sq_xfer *s1, *s2, *r1, *r2;
    ck_assert_int_eq(sq_transport_isend(t, next, 5, &v, sizeof v, SQ_MEM_HOST, &s1, &err), SQ_OK);
    ck_assert_int_eq(sq_transport_isend(t, next, 5, &v2, sizeof v2, SQ_MEM_HOST, &s2, &err), SQ_OK);
    ck_assert_int_eq(sq_transport_irecv(t, prev, 5, &w, sizeof w, SQ_MEM_HOST, &r1, &err), SQ_OK);
    ck_assert_int_eq(sq_transport_irecv(t, prev, 5, &w2, sizeof w2, SQ_MEM_HOST, &r2, &err), SQ_OK);
    bool done = false;
    double deadline = sq_now_s() + 10;
    while (!done && sq_now_s() < deadline) ck_assert_int_eq(sq_transport_test(t, r1, &done, NULL, &err), SQ_OK);
    ck_assert(done);
    ck_assert_int_eq(sq_transport_wait(t, r2, NULL, NULL, &err), SQ_OK);
    ck_assert_int_eq(w, 1000 + prev);
    ck_assert_int_eq(w2, 2000 + prev);
    ck_assert_int_eq(sq_transport_wait(t, s1, NULL, NULL, &err), SQ_OK);
    ck_assert_int_eq(sq_transport_wait(t, s2, NULL, NULL, &err), SQ_OK);
    ck_assert_msg(sq_transport_close(t, &err) == SQ_OK, "%s", err.msg);
    sq_transport_destroy(t);
    for (int k = 0; k < 3; k++) { free(sbuf[k]); free(rbuf[k]); }
}
END_TEST

START_TEST(bad_arguments) {
    sq_transport *t = make(10);
    sq_error err;
    sq_error_init(&err, g_rank);
    char b[4];
    sq_xfer *x = (sq_xfer *)&err;
    ck_assert_int_eq(sq_transport_isend(t, g_size, 0, b, 4, SQ_MEM_HOST, &x, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(x);
    ck_assert(strstr(err.msg, "out of range"));
    ck_assert_int_eq(sq_transport_irecv(t, 0, -1, b, 4, SQ_MEM_HOST, &x, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_transport_irecv(t, 0, sq_transport_max_tag(t) + 1, b, 4, SQ_MEM_HOST, &x, &err), SQ_ERR_INVALID);
    ck_assert_int_ge(sq_transport_max_tag(t), 32767 - 4);
    ck_assert_int_eq(sq_transport_isend(t, 0, 0, b, (uint64_t)1 << 31, SQ_MEM_HOST, &x, &err), SQ_ERR_INVALID);
    ck_assert(strstr(err.msg, "2 GiB"));
    /* a host buffer marked device: without CUDA (build or device) the mpi transport cannot
     * stage it; with a GPU the CUDA build sees it is not device memory */
    int n_gpus = n_cuda_devices();
    sq_status want_dev = n_gpus > 0 ? SQ_ERR_INVALID : SQ_ERR_UNSUPPORTED;
    ck_assert_int_eq(sq_transport_isend(t, 0, 0, b, 4, SQ_MEM_DEVICE, &x, &err), want_dev);
    ck_assert_ptr_null(x);
    ck_assert_msg(strstr(err.msg, n_gpus > 0 ? "not CUDA device memory" : "device"), "%s", err.msg);
    /* nccl: unsupported without CUDA; in a CUDA build it needs a GPU per rank (all ranks of
     * this test run on one host) */
    sq_transport_params p = sq_transport_params_default();
    p.kind = SQ_TRANSPORT_NCCL;
    sq_transport *t2 = (sq_transport *)&err;
    sq_status got = sq_transport_create(&p, &t2, &err);
#ifdef SHARDQ_HAVE_CUDA
    if (n_gpus >= g_size) {
        ck_assert_msg(got == SQ_OK, "%s", err.msg);
        ck_assert_str_eq(sq_transport_name(t2), "nccl");
        ck_assert_int_eq(sq_transport_close(t2, &err), SQ_OK);
        sq_transport_destroy(t2);
    } else {
        ck_assert_int_eq(got, SQ_ERR_UNSUPPORTED);
        ck_assert_ptr_null(t2);
        ck_assert_msg(strstr(err.msg, "GPU"), "%s", err.msg);
    }
#else
    ck_assert_int_eq(got, SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(t2);
#endif
    ck_assert_int_eq(sq_transport_close(t, &err), SQ_OK);
    sq_transport_destroy(t);
    sq_transport_destroy(NULL);
}
END_TEST

START_TEST(collectives) {
    sq_transport *t = make(10);
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_transport_agree(t, SQ_OK, &err), SQ_OK);
    /* ranks 1 and the last fail: everyone sees rank 1's error */
    sq_status local = SQ_OK;
    if (g_rank == 1 || g_rank == g_size - 1) {
        local = sq_error_set(&err, g_rank == 1 ? SQ_ERR_FORMAT : SQ_ERR_IO, "f.json", NULL,
                             "bad thing %d", g_rank);
    }
    ck_assert_int_eq(sq_transport_agree(t, local, &err), SQ_ERR_FORMAT);
    ck_assert_int_eq(err.rank, 1);
    ck_assert_str_eq(err.msg, "bad thing 1");
    ck_assert_str_eq(err.file, "f.json");
    sq_error_init(&err, g_rank);
    int64_t v[2] = {g_rank == g_size - 1 ? 77 : 0, g_rank == g_size - 1 ? -5 : 0};
    ck_assert_int_eq(sq_transport_bcast(t, v, sizeof v, g_size - 1, &err), SQ_OK);
    ck_assert_int_eq(v[0], 77);
    ck_assert_int_eq(v[1], -5);
    int32_t mine = 10 * g_rank + 3, all[8] = {0};
    ck_assert_int_eq(sq_transport_gather(t, &mine, sizeof mine, all, 0, &err), SQ_OK);
    if (g_rank == 0)
        for (int r = 0; r < g_size; r++) ck_assert_int_eq(all[r], 10 * r + 3);
    ck_assert_int_eq(sq_transport_close(t, &err), SQ_OK);
    sq_transport_destroy(t);
}
END_TEST

START_TEST(truncated_receive) {
    sq_transport *t = make(10);
    sq_error err;
    sq_error_init(&err, g_rank);
    int next = (g_rank + 1) % g_size, prev = (g_rank - 1 + g_size) % g_size;
    char big[100] = {0}, small[50];
    sq_xfer *s, *r;
    ck_assert_int_eq(sq_transport_isend(t, next, 3, big, sizeof big, SQ_MEM_HOST, &s, &err), SQ_OK);
    ck_assert_int_eq(sq_transport_irecv(t, prev, 3, small, sizeof small, SQ_MEM_HOST, &r, &err), SQ_OK);
    sq_status st = sq_transport_wait(t, r, NULL, NULL, &err);
    ck_assert_int_eq(st, SQ_ERR_MPI);
    ck_assert_msg(strstr(err.msg, "receiving from rank") && strstr(err.msg, "MPI_Test"), "%s", err.msg);
    ck_assert_int_eq(sq_transport_wait(t, s, NULL, NULL, &err), SQ_OK);
    sq_transport_destroy(t);   /* failed: keeps its communicator (documented) */
}
END_TEST

START_TEST(abort_notice) {
    sq_transport *t = make(20);
    sq_error err;
    sq_error_init(&err, g_rank);
    int prev = (g_rank - 1 + g_size) % g_size;
    ck_assert_int_eq(sq_transport_agree(t, SQ_OK, &err), SQ_OK);
    /* A nonblocking collective can complete on one rank while another is still in it; an
     * abort notice arriving then fails that rank's agree (correctly).  The test wants the
     * notice to reach a receive, so every rank leaves the agree first. */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = sq_now_s();
    if (g_rank == 1) {
        sq_error cause;
        sq_error_init(&cause, 1);
        sq_error_set(&cause, SQ_ERR_CUDA, NULL, NULL, "toy failure");
        sq_transport_abort_peers(t, &cause);
    } else {
        char b[8];
        sq_xfer *r;
        ck_assert_int_eq(sq_transport_irecv(t, prev, 9, b, sizeof b, SQ_MEM_HOST, &r, &err), SQ_OK);
        sq_status st = sq_transport_wait(t, r, NULL, NULL, &err);
        ck_assert_int_eq(st, SQ_ERR_PEER);
        ck_assert_msg(strstr(err.msg, "rank 1 failed: toy failure"), "%s", err.msg);
        ck_assert_int_eq(err.rank, g_rank);
        ck_assert_msg(sq_now_s() - t0 < 10.0, "took %.1f s", sq_now_s() - t0);
        /* sticky: the next call says the same */
        ck_assert_int_eq(sq_transport_poll(t, &err), SQ_ERR_PEER);
    }
    sq_transport_destroy(t);
}
END_TEST

START_TEST(silent_peer_named) {
    const double timeout = 0.6;
    sq_transport *t = make(timeout);
    sq_error err;
    sq_error_init(&err, g_rank);
    int prev = (g_rank - 1 + g_size) % g_size;
    ck_assert_int_eq(sq_transport_agree(t, SQ_OK, &err), SQ_OK);
    /* A nonblocking collective can complete on one rank while another is still in it; an
     * abort notice arriving then fails that rank's agree (correctly).  The test wants the
     * notice to reach a receive, so every rank leaves the agree first. */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = sq_now_s();
    if (g_rank == 1) {
        /* hang: no polling, no heartbeats */
        struct timespec ts = {2, 500000000L};
        nanosleep(&ts, NULL);
        sq_status st = SQ_OK;
        while (st == SQ_OK && sq_now_s() - t0 < 10) st = sq_transport_poll(t, &err);
        ck_assert_int_eq(st, SQ_ERR_PEER);
        ck_assert_msg(strstr(err.msg, "rank 1 "), "%s", err.msg);
    } else {
        char b[8];
        sq_xfer *r;
        ck_assert_int_eq(sq_transport_irecv(t, prev, 9, b, sizeof b, SQ_MEM_HOST, &r, &err), SQ_OK);
        sq_status st = sq_transport_wait(t, r, NULL, NULL, &err);
        double dt = sq_now_s() - t0;
        ck_assert_int_eq(st, SQ_ERR_PEER);
        ck_assert_msg(strstr(err.msg, "rank 1 stopped responding") || strstr(err.msg, "rank 1 failed"),
                      "%s", err.msg);
        /* the upper bound is loose on purpose: CI runs other MPI tests on the same 2 cores */
        ck_assert_msg(dt >= timeout * 0.9 && dt < timeout + 8.0, "took %.2f s", dt);
    }
    sq_transport_destroy(t);
}
END_TEST

/* ---- the nccl transport's logic over the MPI-backed test data plane (tests/dplane_mpi.c) ---- */

/* Creates an nccl transport over the test plane *u (already set up by the caller). */
static sq_status make_nccl(double timeout_s, int device, sq_test_dplane *u, sq_transport **t,
                           sq_error *err) {
    sq_transport_params p = sq_transport_params_default();
    p.kind = SQ_TRANSPORT_NCCL;
    p.timeout_s = timeout_s;
    p.device = device;
    p.dplane = &sq_test_dplane_ops;
    p.dplane_user = u;
    sq_error_init(err, g_rank);
    return sq_transport_create(&p, t, err);
}

/* Defect 1: the pipeline's headers and token ids are host memory.  The nccl transport must
 * carry them over MPI and only device buffers over the data plane (before, every host
 * transfer failed with "the nccl transport takes device buffers only"). */
START_TEST(nccl_routes_host_to_mpi) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    sq_transport *t = NULL;
    sq_error err;
    ck_assert_msg(make_nccl(10, 100 + g_rank, &u, &t, &err) == SQ_OK, "create: %s", err.msg);
    ck_assert_str_eq(sq_transport_name(t), "nccl");
    int next = (g_rank + 1) % g_size, prev = (g_rank - 1 + g_size) % g_size;
    /* host 17 B and 4 KiB, "device" 4 KiB and 8 MiB, and a device message of 0 bytes */
    const size_t sizes[5] = {17, 4096, 4096, 8u << 20, 0};
    const sq_mem_kind mem[5] = {SQ_MEM_HOST, SQ_MEM_HOST, SQ_MEM_DEVICE, SQ_MEM_DEVICE, SQ_MEM_DEVICE};
    uint8_t *sbuf[5], *rbuf[5];
    sq_xfer *sx[5], *rx[5];
    for (int k = 0; k < 5; k++) {
        sbuf[k] = malloc(sizes[k] + 1);
        rbuf[k] = malloc(sizes[k] + 1);
        fill(sbuf[k], sizes[k], g_rank * 10 + k);
        memset(rbuf[k], 0, sizes[k] + 1);
    }
    /* receives posted in reverse, device ones out of their send order */
    for (int k = 4; k >= 0; k--)
        ck_assert_msg(sq_transport_irecv(t, prev, k, rbuf[k], sizes[k], mem[k], &rx[k], &err) == SQ_OK, "%s", err.msg);
    for (int k = 0; k < 5; k++)
        ck_assert_msg(sq_transport_isend(t, next, k, sbuf[k], sizes[k], mem[k], &sx[k], &err) == SQ_OK,
                      "isend %d (%s): %s", k, mem[k] == SQ_MEM_HOST ? "host" : "device", err.msg);
    for (int k = 0; k < 5; k++) {
        uint64_t got = 0;
        ck_assert_msg(sq_transport_wait(t, rx[k], &got, NULL, &err) == SQ_OK, "recv %d: %s", k, err.msg);
        ck_assert_int_eq(got, sizes[k]);
        uint8_t *want = malloc(sizes[k] + 1);
        fill(want, sizes[k], prev * 10 + k);
        ck_assert_msg(memcmp(want, rbuf[k], sizes[k]) == 0, "tag %d: bytes differ", k);
        free(want);
        ck_assert_msg(sq_transport_wait(t, sx[k], NULL, NULL, &err) == SQ_OK, "send %d: %s", k, err.msg);
    }
    /* only the two non-empty device messages each way crossed the data plane */
    ck_assert_int_eq(u.n_posts, 4);
    ck_assert_int_eq(u.bytes_posted, 2 * (4096 + (8u << 20)));
    ck_assert_int_eq(sq_transport_close(t, &err), SQ_OK);
    sq_transport_destroy(t);
    sq_test_dplane_fini(&u, 0);
    for (int k = 0; k < 5; k++) {
        free(sbuf[k]);
        free(rbuf[k]);
    }
}
END_TEST

/* Defect 6: the device is the caller's (the backend's), not derived from a host-name hash;
 * two ranks of one node on one device are refused on every rank before any join. */
START_TEST(nccl_device_is_the_callers) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    sq_transport *t = NULL;
    sq_error err;
    /* devices in reverse of any local-rank order: a choice of its own would differ */
    int dev = 7 * (g_size - g_rank);
    ck_assert_msg(make_nccl(10, dev, &u, &t, &err) == SQ_OK, "create: %s", err.msg);
    ck_assert_int_eq(u.device_seen, dev);
    ck_assert_int_eq(sq_transport_close(t, &err), SQ_OK);
    sq_transport_destroy(t);
    sq_test_dplane_fini(&u, 0);

    /* every rank of this test runs on one node: all on device 3 is refused everywhere */
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    t = (sq_transport *)&err;
    sq_status st = make_nccl(10, 3, &u, &t, &err);
    ck_assert_int_eq(st, SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "two ranks of this node are on GPU 3"), "%s", err.msg);
    ck_assert_int_eq(u.device_seen, -2);   /* no rank started a join */
    sq_test_dplane_fini(&u, 1);
}
END_TEST

/* Defect 4: bring-up failures end every rank, none waits forever.  Before: rank 0 skipped the
 * broadcast the others waited in; a rank whose init failed left the others in theirs. */
static void expect_bringup_failure(sq_test_dplane *u, int blamed, sq_status code_blamed,
                                   const char *want) {
    sq_transport *t = (sq_transport *)u;
    sq_error err;
    double t0 = sq_now_s();
    sq_status st = make_nccl(2.0, 20 + g_rank, u, &t, &err);
    double dt = sq_now_s() - t0;
    ck_assert_ptr_null(t);
    ck_assert_msg(st == (g_rank == blamed ? code_blamed : st) && st != SQ_OK, "rank %d: %d %s", g_rank, st, err.msg);
    if (g_rank != blamed) ck_assert_msg(st == code_blamed || st == SQ_ERR_PEER, "%d: %s", st, err.msg);
    ck_assert_msg(err.rank == blamed || strstr(err.msg, "rank ") != NULL, "rank %d: %s", err.rank, err.msg);
    char who[32];
    snprintf(who, sizeof who, "rank %d", blamed);
    ck_assert_msg(err.rank == blamed || strstr(err.msg, who), "blamed %d: rank %d: %s", blamed, err.rank, err.msg);
    ck_assert_msg(strstr(err.msg, want), "want '%s': %s", want, err.msg);
    ck_assert_msg(dt < 10.0, "took %.1f s", dt);
    sq_test_dplane_fini(u, 1);
    MPI_Barrier(MPI_COMM_WORLD);   /* the next test starts together */
}

START_TEST(nccl_bringup_id_failure) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    u.fail_get_id = 1;
    expect_bringup_failure(&u, 0, SQ_ERR_NCCL, "creating the unique id failed: ncclGetUniqueId failed: injected");
    ck_assert_int_eq(u.device_seen, -2);   /* no rank went on to join */
}
END_TEST

START_TEST(nccl_bringup_init_failure) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    u.fail_init_rank = g_size - 1;
    expect_bringup_failure(&u, g_size - 1, SQ_ERR_NCCL, "ncclCommInitRank failed: injected");
}
END_TEST

START_TEST(nccl_bringup_join_failure) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    u.fail_join_rank = 1;
    u.join_fail_after_s = 0.5;
    expect_bringup_failure(&u, 1, SQ_ERR_NCCL, "(async) failed: injected");
}
END_TEST

/* Defect 3: a receiver that posts its receive later than the timeout, while alive (polling,
 * so heartbeats flow), does not fail the sender.  Before: the send failed once the operation
 * was older than the timeout and the communicators were aborted. */
START_TEST(nccl_slow_receiver_is_alive) {
    const double timeout = 1.0, late = 2.5;
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    sq_transport *t = NULL;
    sq_error err;
    ck_assert_msg(make_nccl(timeout, 40 + g_rank, &u, &t, &err) == SQ_OK, "create: %s", err.msg);
    const size_t n = 1u << 20;
    uint8_t *b = malloc(n);
    sq_xfer *x = NULL;
    if (g_rank == 0) {
        fill(b, n, 5);
        ck_assert_msg(sq_transport_isend(t, 1, 3, b, n, SQ_MEM_DEVICE, &x, &err) == SQ_OK, "%s", err.msg);
        double t0 = sq_now_s();
        ck_assert_msg(sq_transport_wait(t, x, NULL, NULL, &err) == SQ_OK, "slow receiver: %s", err.msg);
        ck_assert_msg(sq_now_s() - t0 >= late * 0.9, "the send completed before the receive was posted");
    } else if (g_rank == 1) {
        double t0 = sq_now_s();
        while (sq_now_s() - t0 < late) {
            ck_assert_msg(sq_transport_poll(t, &err) == SQ_OK, "%s", err.msg);
            struct timespec ts = {0, 2000000L};
            nanosleep(&ts, NULL);
        }
        ck_assert_int_eq(sq_transport_irecv(t, 0, 3, b, n, SQ_MEM_DEVICE, &x, &err), SQ_OK);
        uint64_t got = 0;
        ck_assert_msg(sq_transport_wait(t, x, &got, NULL, &err) == SQ_OK, "%s", err.msg);
        ck_assert_int_eq(got, n);
        uint8_t *want = malloc(n);
        fill(want, n, 5);
        ck_assert(memcmp(want, b, n) == 0);
        free(want);
    }
    ck_assert_msg(sq_transport_close(t, &err) == SQ_OK, "%s", err.msg);
    sq_transport_destroy(t);
    sq_test_dplane_fini(&u, 0);
    free(b);
}
END_TEST

/* A device send cancelled in flight abandons the data plane (NCCL cannot withdraw an
 * operation): later transfers on this rank fail at once with a clear line instead of
 * matching the peer's next receive against the cancelled bytes. */
START_TEST(nccl_cancel_in_flight_aborts) {
    sq_test_dplane u;
    sq_test_dplane_init(&u, MPI_COMM_WORLD);
    sq_transport *t = NULL;
    sq_error err;
    ck_assert_msg(make_nccl(5, 60 + g_rank, &u, &t, &err) == SQ_OK, "create: %s", err.msg);
    ck_assert_int_eq(sq_transport_agree(t, SQ_OK, &err), SQ_OK);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0) {
        uint8_t b[64] = {0};
        sq_xfer *x = NULL;
        ck_assert_int_eq(sq_transport_isend(t, 1, 0, b, sizeof b, SQ_MEM_DEVICE, &x, &err), SQ_OK);
        sq_transport_cancel(t, x);   /* rank 1 never receives: still in flight */
        ck_assert_int_eq(sq_transport_isend(t, 1, 0, b, sizeof b, SQ_MEM_DEVICE, &x, &err), SQ_ERR_NCCL);
        ck_assert_msg(strstr(err.msg, "aborted after an earlier failure"), "%s", err.msg);
        /* host messages still travel over MPI: the control of the run can still end it */
        sq_error cause;
        sq_error_init(&cause, 0);
        sq_error_set(&cause, SQ_ERR_NCCL, NULL, NULL, "cancelled");
        sq_transport_abort_peers(t, &cause);
    } else {
        sq_status st = SQ_OK;
        double t0 = sq_now_s();
        while (st == SQ_OK && sq_now_s() - t0 < 10) st = sq_transport_poll(t, &err);
        ck_assert_int_eq(st, SQ_ERR_PEER);
        ck_assert_msg(strstr(err.msg, "rank 0 failed"), "%s", err.msg);
    }
    sq_transport_destroy(t);
    sq_test_dplane_fini(&u, 1);
    MPI_Barrier(MPI_COMM_WORLD);
}
END_TEST

/* Defect 5: a staged device send cancelled while MPI still reads its staging buffer, then a
 * new send on the same slot (same size: the buffer refilled; larger: the buffer freed and
 * grown).  The receiver must get the cancelled message's bytes, not the next one's or freed
 * memory's.  Staging runs over the host-memory devcopy (tests/devcopy_host.c). */
START_TEST(staged_send_cancel_then_reuse) {
    sq_test_devcopy_stats stats = {0, 0, 0};
    sq_transport_params p = sq_transport_params_default();
    p.timeout_s = 10;
    p.devcopy = &sq_test_devcopy_ops;
    p.devcopy_user = &stats;
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_transport *t = NULL;
    ck_assert_msg(sq_transport_create(&p, &t, &err) == SQ_OK, "%s", err.msg);
    const size_t n = 4u << 20;   /* rendezvous: MPI reads the buffer when the receive comes */
    const size_t sizes[4] = {n, n, n, 2 * n};
    uint8_t *b[4];
    for (int k = 0; k < 4; k++) {
        b[k] = malloc(sizes[k]);
        fill(b[k], sizes[k], 11 + k);
    }
    if (g_rank == 0) {
        for (int round = 0; round < 2; round++) {
            sq_xfer *x = NULL, *y = NULL;
            bool done = true;
            ck_assert_int_eq(sq_transport_isend(t, 1, 5, b[2 * round], sizes[2 * round], SQ_MEM_DEVICE, &x, &err), SQ_OK);
            ck_assert_int_eq(sq_transport_test(t, x, &done, NULL, &err), SQ_OK);   /* copied, posted */
            ck_assert(!done);
            sq_transport_cancel(t, x);   /* MPI still has to send it */
            ck_assert_int_eq(sq_transport_isend(t, 1, 5, b[2 * round + 1], sizes[2 * round + 1], SQ_MEM_DEVICE, &y, &err), SQ_OK);
            ck_assert_ptr_eq(y, x);      /* the same slot, reused */
            ck_assert_int_eq(sq_transport_test(t, y, &done, NULL, &err), SQ_OK);
            MPI_Barrier(MPI_COMM_WORLD);   /* only now does rank 1 receive */
            ck_assert_msg(sq_transport_wait(t, y, NULL, NULL, &err) == SQ_OK, "%s", err.msg);
        }
        ck_assert_int_eq(stats.n_copies, 4);
    } else {
        for (int round = 0; round < 2; round++) {
            MPI_Barrier(MPI_COMM_WORLD);
            if (g_rank != 1) continue;
            for (int k = 2 * round; k < 2 * round + 2; k++) {
                uint8_t *r = malloc(sizes[k]);
                sq_xfer *x = NULL;
                uint64_t got = 0;
                ck_assert_int_eq(sq_transport_irecv(t, 0, 5, r, sizes[k], SQ_MEM_HOST, &x, &err), SQ_OK);
                ck_assert_msg(sq_transport_wait(t, x, &got, NULL, &err) == SQ_OK, "%s", err.msg);
                ck_assert_int_eq(got, sizes[k]);
                size_t bad = 0;
                while (bad < sizes[k] && r[bad] == b[k][bad]) bad++;
                ck_assert_msg(bad == sizes[k], "message %d differs from what was sent at byte %zu (0x%02x)", k, bad,
                              bad < sizes[k] ? r[bad] : 0);
                free(r);
            }
        }
    }
    ck_assert_msg(sq_transport_close(t, &err) == SQ_OK, "%s", err.msg);
    sq_transport_destroy(t);
    if (g_rank == 0) ck_assert_int_eq(stats.n_frees, stats.n_allocs);   /* nothing leaked */
    for (int k = 0; k < 4; k++) free(b[k]);
}
END_TEST

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    Suite *s = suite_create("transport");
    TCase *tc = tcase_create("mpi");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ring_tags_out_of_order);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, collectives);
    tcase_add_test(tc, truncated_receive);
    tcase_add_test(tc, abort_notice);
    tcase_add_test(tc, silent_peer_named);
    tcase_add_test(tc, nccl_routes_host_to_mpi);
    tcase_add_test(tc, nccl_device_is_the_callers);
    tcase_add_test(tc, nccl_bringup_id_failure);
    tcase_add_test(tc, nccl_bringup_init_failure);
    tcase_add_test(tc, nccl_bringup_join_failure);
    tcase_add_test(tc, nccl_slow_receiver_is_alive);
    tcase_add_test(tc, nccl_cancel_in_flight_aborts);
    tcase_add_test(tc, staged_send_cancel_then_reuse);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    /* every rank prints its failures (a rank-specific failure must be visible) */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
