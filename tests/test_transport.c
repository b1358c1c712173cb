/* Tests of the transport module under mpirun (NP 2 and 4): ring transfers with tags matched
 * out of order, sizes reported, a large (rendezvous) message, polling with test(), bad
 * arguments, a truncated receive, agree / bcast / gather, the close handshake, an abort
 * notice, and a silent (hung) peer detected within the timeout and named. */
#include <check.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

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
