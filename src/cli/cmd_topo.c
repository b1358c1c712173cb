/* `shardq topo`: the local machine (hwloc: host, NUMA nodes, cores, memory, GPUs), or under
 * mpirun the cluster every rank sees (MPI_Allgather of per-rank records), as a table or JSON.
 * Must never touch a GPU beyond reading its properties, and no rank may return before the
 * others know the outcome. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "shardq/topology.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: [mpirun -np N] shardq topo [--json] [--xml FILE]\n\n"
            "Shows this machine as hwloc sees it: host, packages, NUMA nodes, cores, host memory and\n"
            "GPUs (name, memory, PCI bus id, NUMA node, assumed memory bandwidth), and the devices\n"
            "shardq would plan for (a machine without GPUs offers its host memory as one CPU device).\n"
            "Under mpirun: the cluster, identical on every rank: nodes (by host name), and per rank\n"
            "its node, local rank and device (GPU number = local rank; without GPUs a CPU device with\n"
            "host memory / ranks on the node).\n"
            "  --json      one JSON object {\"local\": {...}, \"cluster\": {...}}\n"
            "  --xml FILE  read a saved hwloc XML topology instead of the live machine\n");
}

static double gib(uint64_t b) { return (double)b / (double)SQ_GIB; }

static cJSON *node_json(const sq_node_info *n) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "host", n->host);
    cJSON_AddNumberToObject(o, "n_packages", n->n_packages);
    cJSON_AddNumberToObject(o, "n_numa", n->n_numa);
    cJSON_AddNumberToObject(o, "n_cores", n->n_cores);
    cJSON_AddNumberToObject(o, "n_pus", n->n_pus);
    cJSON_AddNumberToObject(o, "host_memory_bytes", (double)n->host_memory_bytes);
    cJSON *g = cJSON_AddArrayToObject(o, "gpus");
    for (int i = 0; i < n->n_gpus; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "index", i);
        cJSON_AddStringToObject(e, "name", n->gpus[i].name);
        cJSON_AddStringToObject(e, "pci_busid", n->gpus[i].pci_busid);
        cJSON_AddNumberToObject(e, "memory_bytes", (double)n->gpus[i].memory_bytes);
        cJSON_AddNumberToObject(e, "numa_node", n->gpus[i].numa_node);
        cJSON_AddNumberToObject(e, "mem_bandwidth_gbps", n->gpus[i].mem_bandwidth_gbps);
        cJSON_AddNumberToObject(e, "bf16_tflops", n->gpus[i].bf16_tflops);
        cJSON_AddItemToArray(g, e);
    }
    return o;
}

static cJSON *cluster_json(const sq_cluster *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", c->name);
    char hex[24];
    snprintf(hex, sizeof hex, "%016" PRIx64, sq_cluster_hash(c));
    cJSON_AddStringToObject(o, "hash", hex);
    cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
    for (int i = 0; i < c->n_nodes; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", c->nodes[i].name);
        cJSON_AddNumberToObject(e, "host_memory_bytes", (double)c->nodes[i].host_memory_bytes);
        cJSON_AddNumberToObject(e, "n_numa", c->nodes[i].n_numa);
        cJSON_AddNumberToObject(e, "n_cores", c->nodes[i].n_cores);
        cJSON_AddNumberToObject(e, "n_devices", c->nodes[i].n_devices);
        cJSON_AddItemToArray(nodes, e);
    }
    cJSON *devs = cJSON_AddArrayToObject(o, "devices");
    for (int i = 0; i < c->n_devices; i++) {
        const sq_device *d = &c->devices[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "rank", d->rank);
        cJSON_AddStringToObject(e, "node", c->nodes[d->node].name);
        cJSON_AddNumberToObject(e, "local_rank", d->local_rank);
        cJSON_AddStringToObject(e, "kind", d->kind == SQ_DEVICE_GPU ? "gpu" : "cpu");
        cJSON_AddStringToObject(e, "name", d->name);
        cJSON_AddStringToObject(e, "pci_busid", d->pci_busid);
        cJSON_AddNumberToObject(e, "numa_node", d->numa_node);
        cJSON_AddNumberToObject(e, "memory_bytes", (double)d->memory_bytes);
        cJSON_AddNumberToObject(e, "mem_bandwidth_gbps", d->mem_bandwidth_gbps);
        cJSON_AddItemToArray(devs, e);
    }
    return o;
}

int sq_cli_topo(int argc, char **argv, sq_cli_ctx *ctx) {
    bool json = false;
    const char *xml = NULL;
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (sq_cli_flag_value(argc, argv, &i, "--xml", &xml, &missing)) {
            if (missing) return sq_cli_usage_error(ctx, "topo", "--xml needs a file");
        } else {
            return sq_cli_usage_error(ctx, "topo", "unknown argument '%s'", argv[i]);
        }
    }
    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_node_info local;
    sq_cluster *c = NULL;
    sq_status st = sq_topo_discover(xml, &local, &err);
    st = sq_cli_agree(ctx, st, &err);
    if (st == SQ_OK) {
        st = ctx->n_ranks > 1 ? sq_cluster_gather(ctx->comm, &local, &c, &err)
                              : sq_cluster_from_node(&local, &c, &err);
        st = sq_cli_agree(ctx, st, &err);
    }
    if (st != SQ_OK) {
        int rc = ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
        sq_cluster_destroy(c);
        return rc;
    }
    if (ctx->rank == 0) {
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(o, "local", node_json(&local));
            cJSON_AddItemToObject(o, "cluster", cluster_json(c));
            char *s = cJSON_Print(o);
            printf("%s\n", s ? s : "{}");
            free(s);
            cJSON_Delete(o);
        } else {
            printf("# host %s: %d package%s, %d NUMA node%s, %d cores, %d PUs, %.1f GiB host memory, %d GPU%s\n",
                   local.host, local.n_packages, local.n_packages == 1 ? "" : "s", local.n_numa,
                   local.n_numa == 1 ? "" : "s", local.n_cores, local.n_pus,
                   gib(local.host_memory_bytes), local.n_gpus, local.n_gpus == 1 ? "" : "s");
            if (local.n_gpus) {
                printf("# %3s  %-28s %12s  %-13s %4s %10s\n", "gpu", "name", "memory_GiB", "pci_busid",
                       "numa", "bw_GB/s");
                for (int i = 0; i < local.n_gpus; i++)
                    printf("  %3d  %-28.28s %12.2f  %-13s %4d %10.0f\n", i, local.gpus[i].name,
                           gib(local.gpus[i].memory_bytes), local.gpus[i].pci_busid,
                           local.gpus[i].numa_node, local.gpus[i].mem_bandwidth_gbps);
            }
            printf("\n# cluster '%s': %d node%s, %d device%s (hash %016" PRIx64 ")\n", c->name,
                   c->n_nodes, c->n_nodes == 1 ? "" : "s", c->n_devices, c->n_devices == 1 ? "" : "s",
                   sq_cluster_hash(c));
            printf("# %4s  %-16s %5s  %-4s %-28s %12s  %-13s %4s %10s\n", "rank", "node", "local",
                   "kind", "device", "memory_GiB", "pci_busid", "numa", "bw_GB/s");
            for (int i = 0; i < c->n_devices; i++) {
                const sq_device *d = &c->devices[i];
                printf("  %4d  %-16.16s %5d  %-4s %-28.28s %12.2f  %-13s %4d %10.1f\n", d->rank,
                       c->nodes[d->node].name, d->local_rank, d->kind == SQ_DEVICE_GPU ? "gpu" : "cpu",
                       d->name, gib(d->memory_bytes), d->pci_busid[0] ? d->pci_busid : "-",
                       d->numa_node, d->mem_bandwidth_gbps);
            }
        }
    }
    sq_cluster_destroy(c);
    return 0;
}
