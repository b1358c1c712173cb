/* Tests of the topology module without the hardware: the saved hwloc XML machines under
 * tests/topologies/ (a 2-socket 8-GPU DGX-like box, a 1-socket 4-GPU PCIe box), the live
 * machine (whatever it is), every shipped cluster-config, and bad cluster files. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/topology.h"
#include "testutil.h"

#define TOPO(f) SQ_SOURCE_DIR "/tests/topologies/" f
#define CONF(f) SQ_SOURCE_DIR "/cluster-configs/" f

START_TEST(test_dgx_xml) {
    sq_node_info n;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_topo_discover(TOPO("dgx-h100-2socket-8gpu.xml"), &n, &err), SQ_OK);
    ck_assert_str_eq(n.host, "dgx01");
    ck_assert_int_eq(n.n_packages, 2);
    ck_assert_int_eq(n.n_numa, 2);
    ck_assert_int_eq(n.n_cores, 16);
    ck_assert_int_eq(n.n_pus, 32);
    ck_assert_uint_eq(n.host_memory_bytes, 2ull << 40);
    ck_assert_int_eq(n.n_gpus, 8);   /* 8 PCI GPUs, each with a CUDA and an NVML OS device */
    const char *bus[8] = {"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
                          "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"};
    for (int i = 0; i < 8; i++) {
        ck_assert_str_eq(n.gpus[i].pci_busid, bus[i]);
        ck_assert_str_eq(n.gpus[i].name, "NVIDIA H100 80GB HBM3");
        ck_assert_uint_eq(n.gpus[i].memory_bytes, 83058176ull * 1024);
        ck_assert_int_eq(n.gpus[i].numa_node, i < 4 ? 0 : 1);
        ck_assert(n.gpus[i].mem_bandwidth_gbps == 3350);
        ck_assert(n.gpus[i].bf16_tflops == 989);
        ck_assert_uint_eq(n.gpus[i].free_bytes, 0);
    }
    sq_cluster *c;
    ck_assert_int_eq(sq_cluster_from_node(&n, &c, &err), SQ_OK);
    ck_assert_int_eq(c->n_nodes, 1);
    ck_assert_int_eq(c->n_devices, 8);
    ck_assert_int_eq(c->devices[5].kind, SQ_DEVICE_GPU);
    ck_assert_int_eq(c->devices[5].local_rank, 5);
    ck_assert_int_eq(c->devices[5].numa_node, 1);
    ck_assert_str_eq(c->nodes[0].name, "dgx01");
    sq_cluster_destroy(c);
}
END_TEST

START_TEST(test_pcie_xml) {
    sq_node_info n;
    sq_error err;
    ck_assert_int_eq(sq_topo_discover(TOPO("pcie-1socket-4gpu.xml"), &n, &err), SQ_OK);
    ck_assert_str_eq(n.host, "box4090");
    ck_assert_int_eq(n.n_packages, 1);
    ck_assert_int_eq(n.n_numa, 1);
    ck_assert_int_eq(n.n_cores, 8);
    ck_assert_uint_eq(n.host_memory_bytes, 128ull << 30);
    /* 6 GPU OS devices (4 CUDA + 2 NVML) on 4 PCI devices: 4 GPUs */
    ck_assert_int_eq(n.n_gpus, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(n.gpus[i].name, "NVIDIA GeForce RTX 4090");
        ck_assert_uint_eq(n.gpus[i].memory_bytes, 25153536ull * 1024);
        ck_assert_int_eq(n.gpus[i].numa_node, 0);
        ck_assert(n.gpus[i].mem_bandwidth_gbps == 1008);
    }
    ck_assert_str_eq(n.gpus[3].pci_busid, "0000:61:00.0");
}
END_TEST

START_TEST(test_bad_xml) {
    sq_node_info n;
    sq_error err;
    ck_assert_int_eq(sq_topo_discover("/nonexistent/topo.xml", &n, &err), SQ_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.file, "/nonexistent/topo.xml"));
    char *dir = sq_test_tmpdir("topo");
    char path[512];
    snprintf(path, sizeof path, "%s/bad.xml", dir);
    const char *junk = "<?xml version=\"1.0\"?><topology version=\"2.0\"><object type=\"Nope\">";
    ck_assert_int_eq(sq_test_write_file(path, junk, strlen(junk)), 0);
    ck_assert_int_eq(sq_topo_discover(path, &n, &err), SQ_ERR_FORMAT);
    ck_assert_int_eq(n.n_gpus, 0);
    remove(path);
    rmdir(dir);
    free(dir);
}
END_TEST

START_TEST(test_live_machine) {
    sq_node_info n;
    sq_error err;
    ck_assert_int_eq(sq_topo_discover(NULL, &n, &err), SQ_OK);
    ck_assert_int_ge(n.n_pus, 1);
    ck_assert_int_ge(n.n_numa, 1);
    ck_assert_uint_gt(n.host_memory_bytes, 0);
    ck_assert(n.host[0] != '\0');
    sq_cluster *c;
    ck_assert_int_eq(sq_cluster_from_node(&n, &c, &err), SQ_OK);
    if (n.n_gpus == 0) {   /* no GPU: host memory as one CPU device */
        ck_assert_int_eq(c->n_devices, 1);
        ck_assert_int_eq(c->devices[0].kind, SQ_DEVICE_CPU);
        ck_assert_uint_eq(c->devices[0].memory_bytes, n.host_memory_bytes);
        ck_assert(c->devices[0].mem_bandwidth_gbps == SQ_TOPO_CPU_BANDWIDTH_GBPS);
    } else {
        ck_assert_int_eq(c->n_devices, n.n_gpus);
    }
    sq_cluster_destroy(c);
}
END_TEST

START_TEST(test_gpu_facts) {
    double bw = 0, tf = 0;
    ck_assert(sq_topo_gpu_facts("NVIDIA A100-SXM4-80GB", 80 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 2039);
    ck_assert(sq_topo_gpu_facts("NVIDIA A100-SXM4-40GB", 40 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 1555);
    ck_assert(sq_topo_gpu_facts("NVIDIA A10", 24 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 600);
    ck_assert(sq_topo_gpu_facts("NVIDIA L40S", 48 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 864 && tf == 362);
    ck_assert(sq_topo_gpu_facts("NVIDIA L4", 24 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 300);
    ck_assert(sq_topo_gpu_facts("NVIDIA H100 PCIe", 80 * SQ_GIB, &bw, &tf));
    ck_assert(bw == 2000);
    ck_assert(!sq_topo_gpu_facts("Mystery Accelerator 9000", 0, &bw, &tf));
}
END_TEST

static sq_cluster *load_ok(const char *path) {
    sq_cluster *c = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status st = sq_cluster_load(path, &c, &err);
    ck_assert_msg(st == SQ_OK, "%s: %s", path, err.msg);
    return c;
}

START_TEST(test_shipped_configs) {
    sq_cluster *c = load_ok(CONF("dgx-h100-2node.json"));
    ck_assert_str_eq(c->name, "dgx-h100-2node");
    ck_assert_int_eq(c->n_nodes, 2);
    ck_assert_int_eq(c->n_devices, 16);
    ck_assert_str_eq(c->nodes[0].name, "node0");
    ck_assert_str_eq(c->nodes[1].name, "node1");
    ck_assert_int_eq(c->devices[9].node, 1);
    ck_assert_int_eq(c->devices[9].local_index, 1);
    ck_assert_int_eq(c->devices[9].rank, 9);
    ck_assert_uint_eq(c->devices[9].memory_bytes, 80 * SQ_GIB);
    ck_assert(c->devices[9].mem_bandwidth_gbps == 3350);
    ck_assert_str_eq(c->nodes[1].link_kind, "nvlink");
    ck_assert(c->network_bandwidth_gbps == 50 && c->network_latency_us == 3);
    ck_assert_str_eq(c->network_kind, "infiniband");
    uint64_t h = sq_cluster_hash(c);
    sq_cluster *c2 = load_ok(CONF("dgx-h100-2node.json"));
    ck_assert_uint_eq(sq_cluster_hash(c2), h);
    c2->devices[15].memory_bytes--;
    ck_assert_uint_ne(sq_cluster_hash(c2), h);
    sq_cluster_destroy(c2);
    sq_cluster_destroy(c);

    c = load_ok(CONF("a100-40gb-8x.json"));
    ck_assert_int_eq(c->n_devices, 8);
    ck_assert_uint_eq(c->devices[7].memory_bytes, 40 * SQ_GIB);
    sq_cluster_destroy(c);

    c = load_ok(CONF("rtx4090-4x-pcie.json"));
    ck_assert_int_eq(c->n_devices, 4);
    ck_assert_str_eq(c->nodes[0].name, "box");
    ck_assert(c->devices[3].mem_bandwidth_gbps == 1008);
    sq_cluster_destroy(c);

    c = load_ok(CONF("a100-80gb-2xa10-hetero.json"));
    ck_assert_int_eq(c->n_devices, 3);
    ck_assert_uint_eq(c->devices[0].memory_bytes, 80 * SQ_GIB);
    ck_assert_uint_eq(c->devices[1].memory_bytes, 24 * SQ_GIB);
    ck_assert_uint_eq(c->devices[2].memory_bytes, 24 * SQ_GIB);
    ck_assert_str_eq(c->devices[2].name, "A10-24GB");
    ck_assert_int_eq(c->devices[2].local_index, 2);
    sq_cluster_destroy(c);

    c = load_ok(CONF("cpu-4rank.json"));
    ck_assert_int_eq(c->n_devices, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c->devices[i].kind, SQ_DEVICE_CPU);
        ck_assert_uint_eq(c->devices[i].memory_bytes, 6 * SQ_GIB);
        ck_assert(c->devices[i].mem_bandwidth_gbps == 5.0);
    }
    sq_cluster_destroy(c);
}
END_TEST

static void bad(const char *json, sq_status code, const char *needle) {
    sq_cluster *c = (sq_cluster *)1;
    sq_error err;
    sq_error_init(&err, -1);
    sq_status st = sq_cluster_parse(json, strlen(json), "bad.json", &c, &err);
    ck_assert_msg(st == code, "%s: got %d (%s)", json, st, err.msg);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "'%s' not in '%s'", needle, err.msg);
    ck_assert_str_eq(err.file, "bad.json");
    ck_assert_ptr_null(strchr(err.msg, '\n'));
}

START_TEST(test_bad_clusters) {
    bad("{\"nodes\": [", SQ_ERR_FORMAT, "malformed JSON");
    bad("[1,2]", SQ_ERR_FORMAT, "object");
    bad("{\"nodes\": []}", SQ_ERR_FORMAT, "non-empty");
    bad("{\"nodes\": [{\"name\": \"empty\", \"gpus\": []}]}", SQ_ERR_FORMAT,
        "nodes[0] ('empty'): a node with no GPUs needs host_memory_gib > 0");
    bad("{\"nodes\": [{\"host_memory_gib\": 0}]}", SQ_ERR_FORMAT, "no GPUs");
    bad("{\"nodes\": [{\"gpus\": [{\"name\": \"H100\", \"memory_gib\": -80}]}]}", SQ_ERR_FORMAT,
        "nodes[0].gpus[0] ('H100').memory_gib: must be > 0 (got -80)");
    bad("{\"nodes\": [{\"host_memory_gib\": -4}]}", SQ_ERR_FORMAT, "host_memory_gib");
    bad("{\"nodes\": [{\"gpus\": [{\"name\": \"H100\"}]}]}", SQ_ERR_FORMAT,
        "nodes[0].gpus[0]: missing \"memory_gib\"");
    bad("{\"nodes\": [{\"gpus\": [{\"name\": \"Zorp\", \"memory_gib\": 16}]}]}", SQ_ERR_FORMAT,
        "mem_bandwidth_gbps");
    bad("{\"nodes\": [{\"count\": 0, \"host_memory_gib\": 4}]}", SQ_ERR_FORMAT, "count");
    bad("{\"nodes\": [{\"count\": 1.5, \"host_memory_gib\": 4}]}", SQ_ERR_FORMAT, "whole number");
    bad("{\"nodes\": [{\"gpus\": [{\"name\": \"H100\", \"memory_gib\": \"80\"}]}]}", SQ_ERR_FORMAT,
        "expected a number");
    bad("{\"nodes\": [{\"gpus\": [{\"name\": \"H100\", \"memory_gib\": 80, \"count\": 17}]}]}",
        SQ_ERR_FORMAT, "count");
    bad("{\"nodes\": [{\"count\": 4000, \"gpus\": [{\"name\": \"H100\", \"memory_gib\": 80, "
        "\"count\": 16}]}, {\"count\": 96, \"cpu_devices\": 20, \"host_memory_gib\": 1}]}",
        SQ_ERR_FORMAT, "exceed");
    sq_cluster *c;
    sq_error err;
    ck_assert_int_eq(sq_cluster_load("/nonexistent/cluster.json", &c, &err), SQ_ERR_IO);
    ck_assert_ptr_null(c);
}
END_TEST

static Suite *topology_suite(void) {
    Suite *s = suite_create("topology");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, test_dgx_xml);
    tcase_add_test(tc, test_pcie_xml);
    tcase_add_test(tc, test_bad_xml);
    tcase_add_test(tc, test_live_machine);
    tcase_add_test(tc, test_gpu_facts);
    tcase_add_test(tc, test_shipped_configs);
    tcase_add_test(tc, test_bad_clusters);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(topology_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
