/* The cluster view under mpirun (1, 2 and 4 ranks): every rank discovers its node, one
 * MPI_Allgather builds the cluster, and every rank must hold the identical view (same hash).
 * Also simulated multi-node runs: each rank pretends to be on node r/2 (a saved DGX or PCIe
 * hwloc XML), so grouping by host, local ranks and the GPU per rank are checked on one box. */
#include <check.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/topology.h"
#include "testutil.h"

static int g_rank, g_size;

/* All ranks' hashes equal? */
static void assert_same_everywhere(uint64_t h) {
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)g_size);
    ck_assert_int_eq(MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD),
                     MPI_SUCCESS);
    for (int r = 0; r < g_size; r++) ck_assert_uint_eq(all[r], all[0]);
    free(all);
}

START_TEST(test_live_cluster_identical) {
    sq_node_info local;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_topo_discover(NULL, &local, &err), SQ_OK);
    sq_cluster *c = NULL;
    ck_assert_int_eq(sq_cluster_gather(MPI_COMM_WORLD, &local, &c, &err), SQ_OK);
    ck_assert_int_eq(c->n_devices, g_size);
    ck_assert_int_eq(c->n_nodes, 1);   /* every test rank runs on this machine */
    for (int r = 0; r < g_size; r++) {
        ck_assert_int_eq(c->devices[r].rank, r);
        ck_assert_int_eq(c->devices[r].local_rank, r);
        if (c->devices[r].kind == SQ_DEVICE_CPU) {
            /* no GPU: each rank is a CPU device with an equal share of host memory */
            ck_assert_uint_eq(c->devices[r].memory_bytes, local.host_memory_bytes / (uint64_t)g_size);
            ck_assert(c->devices[r].mem_bandwidth_gbps == SQ_TOPO_CPU_BANDWIDTH_GBPS / g_size);
        }
    }
    ck_assert_int_eq(c->nodes[0].n_devices, g_size);
    assert_same_everywhere(sq_cluster_hash(c));
    sq_cluster_destroy(c);
}
END_TEST

START_TEST(test_simulated_nodes) {
    /* node k = ranks 2k, 2k+1; even nodes are the DGX box, odd nodes the PCIe box */
    int node = g_rank / 2;
    sq_node_info local;
    sq_error err;
    sq_error_init(&err, g_rank);
    const char *xml = node % 2 == 0 ? SQ_SOURCE_DIR "/tests/topologies/dgx-h100-2socket-8gpu.xml"
                                    : SQ_SOURCE_DIR "/tests/topologies/pcie-1socket-4gpu.xml";
    ck_assert_int_eq(sq_topo_discover(xml, &local, &err), SQ_OK);
    snprintf(local.host, sizeof local.host, "fake-node-%d", node);
    sq_cluster *c = NULL;
    ck_assert_int_eq(sq_cluster_gather(MPI_COMM_WORLD, &local, &c, &err), SQ_OK);
    ck_assert_int_eq(c->n_nodes, (g_size + 1) / 2);
    ck_assert_int_eq(c->n_devices, g_size);
    for (int r = 0; r < g_size; r++) {
        const sq_device *d = &c->devices[r];
        ck_assert_int_eq(d->node, r / 2);
        ck_assert_int_eq(d->local_rank, r % 2);
        ck_assert_int_eq(d->kind, SQ_DEVICE_GPU);
        if ((r / 2) % 2 == 0) {
            ck_assert_str_eq(d->name, "NVIDIA H100 80GB HBM3");
            ck_assert_str_eq(d->pci_busid, r % 2 ? "0000:2a:00.0" : "0000:18:00.0");
            ck_assert_int_eq(d->numa_node, 0);
        } else {
            ck_assert_str_eq(d->name, "NVIDIA GeForce RTX 4090");
            ck_assert_str_eq(d->pci_busid, r % 2 ? "0000:21:00.0" : "0000:01:00.0");
        }
        char want[32];
        snprintf(want, sizeof want, "fake-node-%d", r / 2);
        ck_assert_str_eq(c->nodes[d->node].name, want);
    }
    assert_same_everywhere(sq_cluster_hash(c));
    sq_cluster_destroy(c);
}
END_TEST

START_TEST(test_more_ranks_than_gpus) {
    /* every rank on one host that has a single GPU: fine with 1 rank, the same error on every
     * rank with more */
    sq_node_info local;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_topo_discover(SQ_SOURCE_DIR "/tests/topologies/pcie-1socket-4gpu.xml",
                                      &local, &err), SQ_OK);
    local.n_gpus = 1;
    sq_cluster *c = NULL;
    sq_status st = sq_cluster_gather(MPI_COMM_WORLD, &local, &c, &err);
    if (g_size == 1) {
        ck_assert_int_eq(st, SQ_OK);
        sq_cluster_destroy(c);
    } else {
        ck_assert_int_eq(st, SQ_ERR_INVALID);
        ck_assert_ptr_null(c);
        char want[128];
        snprintf(want, sizeof want, "node 'box4090' has 1 GPU but %d ranks were started on it", g_size);
        ck_assert_msg(strstr(err.msg, want) != NULL, "%s", err.msg);
    }
    /* a record with no GPU and no memory is rejected by every rank, naming the rank */
    local.n_gpus = 0;
    local.host_memory_bytes = g_rank == g_size - 1 ? 0 : local.host_memory_bytes;
    st = sq_cluster_gather(MPI_COMM_WORLD, &local, &c, &err);
    ck_assert_int_eq(st, SQ_ERR_INVALID);
    char want[64];
    snprintf(want, sizeof want, "rank %d (host 'box4090'): no GPU and no host memory", g_size - 1);
    ck_assert_msg(strstr(err.msg, want) != NULL, "%s", err.msg);
}
END_TEST

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    Suite *s = suite_create("cluster_mpi");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, test_live_cluster_identical);
    tcase_add_test(tc, test_simulated_nodes);
    tcase_add_test(tc, test_more_ranks_than_gpus);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);   /* every rank prints its own failures */
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
