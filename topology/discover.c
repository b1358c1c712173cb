/* topology/discover.c: one machine through hwloc (live, or a saved XML), plus the table of
 * known GPUs' memory bandwidth and bf16 throughput.  Owns every hwloc call in shardq.
 * Must never create a CUDA context (only device properties are read), print, or exit. */
#include <ctype.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "shardq/topology.h"

/* ---- known GPUs ---------------------------------------------------------------------------
 * Public spec-sheet figures: memory bandwidth (GB/s) and dense bf16 tensor TFLOPS.  Order
 * matters: the first entry whose every key is a substring of the name wins ("A100" before
 * "A10", "L40S" before "L40" before "L4"). */
typedef struct gpu_fact {
    const char *key1, *key2;   /* key2 may be NULL */
    uint64_t min_mem_gib;      /* entry applies when memory >= this (0: any) */
    double bandwidth_gbps, bf16_tflops;
} gpu_fact;

static const gpu_fact k_gpus[] = {
    {"GB200", NULL, 0, 8000, 2500},  {"B200", NULL, 0, 8000, 2250},
    {"GH200", NULL, 0, 4000, 989},   {"H200", NULL, 0, 4800, 989},
    {"H100", "NVL", 0, 3900, 835},   {"H100", "PCIE", 0, 2000, 756},
    {"H100", NULL, 0, 3350, 989},    {"H800", NULL, 0, 3350, 989},
    {"A100", NULL, 60, 2039, 312},   {"A100", "80", 0, 2039, 312},
    {"A100", NULL, 0, 1555, 312},    {"A800", NULL, 0, 2039, 312},
    {"A10G", NULL, 0, 600, 70},      {"A10", NULL, 0, 600, 125},
    {"A30", NULL, 0, 933, 165},      {"A40", NULL, 0, 696, 150},
    {"L40S", NULL, 0, 864, 362},     {"L40", NULL, 0, 864, 181},
    {"L4", NULL, 0, 300, 121},       {"6000 ADA", NULL, 0, 960, 364},
    {"A6000", NULL, 0, 768, 155},    {"5090", NULL, 0, 1792, 209},
    {"4090", NULL, 0, 1008, 165},    {"3090", NULL, 0, 936, 71},
    {"V100", NULL, 0, 900, 125},     {"T4", NULL, 0, 320, 65},
    {"MI300X", NULL, 0, 5300, 1307}, {"MI250", NULL, 0, 3277, 383},
};

static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *h = hay; *h; h++) {
        size_t i = 0;
        while (i < n && h[i] && toupper((unsigned char)h[i]) == toupper((unsigned char)needle[i])) i++;
        if (i == n) return true;
    }
    return false;
}

bool sq_topo_gpu_facts(const char *name, uint64_t memory_bytes, double *bandwidth_gbps,
                       double *bf16_tflops) {
    if (!name) return false;
    for (size_t i = 0; i < sizeof k_gpus / sizeof k_gpus[0]; i++) {
        const gpu_fact *f = &k_gpus[i];
        if (!contains_ci(name, f->key1) || (f->key2 && !contains_ci(name, f->key2))) continue;
        if (f->min_mem_gib && memory_bytes < f->min_mem_gib * SQ_GIB) continue;
        if (bandwidth_gbps) *bandwidth_gbps = f->bandwidth_gbps;
        if (bf16_tflops) *bf16_tflops = f->bf16_tflops;
        return true;
    }
    return false;
}

/* ---- hwloc ------------------------------------------------------------------------------ */
static const char *info(hwloc_obj_t o, const char *name) {
    const char *v = hwloc_obj_get_info_by_name(o, name);
    return v ? v : "";
}

static bool is_gpu_osdev(hwloc_obj_t o) {
    if (o->type != HWLOC_OBJ_OS_DEVICE) return false;
    const char *sub = o->subtype ? o->subtype : info(o, "CoProcType");
    if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC && !strcmp(sub, "CUDA")) return true;
    if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU &&
        (!strcmp(sub, "NVML") || !strcmp(sub, "RSMI")))
        return true;
    return false;
}

static int numa_of(hwloc_topology_t t, hwloc_obj_t o) {
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t, o);
    if (!anc || !anc->nodeset || hwloc_bitmap_weight(anc->nodeset) != 1) return -1;
    return hwloc_bitmap_first(anc->nodeset);
}

static int cmp_busid(const void *a, const void *b) {
    return strcmp(((const sq_gpu_info *)a)->pci_busid, ((const sq_gpu_info *)b)->pci_busid);
}

static sq_status add_hwloc_gpus(hwloc_topology_t t, sq_node_info *out, const char *src,
                                sq_error *err) {
    for (hwloc_obj_t o = hwloc_get_next_osdev(t, NULL); o; o = hwloc_get_next_osdev(t, o)) {
        if (!is_gpu_osdev(o)) continue;
        hwloc_obj_t pci = o->parent;
        while (pci && pci->type != HWLOC_OBJ_PCI_DEVICE) pci = pci->parent;
        char busid[24] = "";
        if (pci)
            snprintf(busid, sizeof busid, "%04x:%02x:%02x.%01x", pci->attr->pcidev.domain,
                     pci->attr->pcidev.bus, pci->attr->pcidev.dev, pci->attr->pcidev.func);
        sq_gpu_info *g = NULL;
        for (int i = 0; i < out->n_gpus && busid[0]; i++)
            if (!strcmp(out->gpus[i].pci_busid, busid)) g = &out->gpus[i];
        if (!g) {
            if (out->n_gpus >= SQ_TOPO_MAX_GPUS)
                return sq_error_set(err, SQ_ERR_UNSUPPORTED, src, NULL,
                                    "more than %d GPUs on one machine", SQ_TOPO_MAX_GPUS);
            g = &out->gpus[out->n_gpus++];
            snprintf(g->pci_busid, sizeof g->pci_busid, "%s", busid);
            g->numa_node = numa_of(t, o);
        }
        const char *model = info(o, "GPUModel");
        if (!g->name[0] && model[0]) snprintf(g->name, sizeof g->name, "%s", model);
        const char *kib = info(o, "CUDAGlobalMemorySize");
        if (kib[0]) {
            char *end = NULL;
            unsigned long long v = strtoull(kib, &end, 10);
            if (end && !*end && v < (UINT64_C(1) << 44)) g->memory_bytes = (uint64_t)v * 1024;
        }
    }
    return SQ_OK;
}

#ifdef SHARDQ_HAVE_CUDA
/* The CUDA runtime's view replaces hwloc's when it sees GPUs: names and total memory from
 * cudaGetDeviceProperties (no context is created), NUMA locality from hwloc by bus id. */
static void add_cuda_gpus(hwloc_topology_t t, sq_node_info *out) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        return;
    }
    if (n > SQ_TOPO_MAX_GPUS) n = SQ_TOPO_MAX_GPUS;
    sq_gpu_info gpus[SQ_TOPO_MAX_GPUS];
    memset(gpus, 0, sizeof gpus);
    for (int i = 0; i < n; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) return;
        snprintf(gpus[i].name, sizeof gpus[i].name, "%.*s", (int)sizeof gpus[i].name - 1, p.name);
        snprintf(gpus[i].pci_busid, sizeof gpus[i].pci_busid, "%04x:%02x:%02x.0",
                 (unsigned)p.pciDomainID, (unsigned)p.pciBusID, (unsigned)p.pciDeviceID);
        gpus[i].memory_bytes = (uint64_t)p.totalGlobalMem;
        hwloc_obj_t pci = hwloc_get_pcidev_by_busid(t, (unsigned)p.pciDomainID,
                                                    (unsigned)p.pciBusID,
                                                    (unsigned)p.pciDeviceID, 0);
        gpus[i].numa_node = pci ? numa_of(t, pci) : -1;
    }
    memcpy(out->gpus, gpus, sizeof gpus);
    out->n_gpus = n;
}
#endif

sq_status sq_topo_discover(const char *xml_path, sq_node_info *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    const char *src = xml_path ? xml_path : "hwloc";
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0)
        return sq_error_set(err, SQ_ERR_NOMEM, src, NULL, "hwloc_topology_init failed");
    sq_status st = SQ_OK;
    if (xml_path && hwloc_topology_set_xml(t, xml_path) != 0) {
        st = sq_error_set(err, SQ_ERR_FORMAT, xml_path, NULL,
                          "hwloc cannot read this XML topology");
        goto done;
    }
    hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(t) != 0) {
        st = sq_error_set(err, xml_path ? SQ_ERR_FORMAT : SQ_ERR_IO, src, NULL,
                          "hwloc could not load the topology");
        goto done;
    }
    hwloc_obj_t root = hwloc_get_root_obj(t);
    const char *host = info(root, "HostName");
    if (xml_path && host[0]) {
        snprintf(out->host, sizeof out->host, "%s", host);
    } else {
        char h[256] = "";
        if (gethostname(h, sizeof h - 1) != 0) snprintf(h, sizeof h, "localhost");
        snprintf(out->host, sizeof out->host, "%.*s", (int)sizeof out->host - 1, h);
    }
    out->n_packages = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
    out->n_numa = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    out->n_cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    out->n_pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    out->host_memory_bytes = root->total_memory;
    if (!xml_path) {
        /* hwloc sums the NUMA nodes' memory; on VMs with hot-added memory that can miss part of
         * MemTotal, so the live machine takes the larger of the two */
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        if (pages > 0 && psz > 0 && (uint64_t)pages * (uint64_t)psz > out->host_memory_bytes)
            out->host_memory_bytes = (uint64_t)pages * (uint64_t)psz;
    }
    st = add_hwloc_gpus(t, out, src, err);
    if (st != SQ_OK) goto done;
#ifdef SHARDQ_HAVE_CUDA
    if (!xml_path) add_cuda_gpus(t, out);
#endif
    qsort(out->gpus, (size_t)out->n_gpus, sizeof out->gpus[0], cmp_busid);
    for (int i = 0; i < out->n_gpus; i++) {
        sq_gpu_info *g = &out->gpus[i];
        if (!g->name[0]) {
            char busid[sizeof g->pci_busid];
            memcpy(busid, g->pci_busid, sizeof busid);
            busid[sizeof busid - 1] = '\0';
            snprintf(g->name, sizeof g->name, "GPU %s", busid);
        }
        if (!sq_topo_gpu_facts(g->name, g->memory_bytes, &g->mem_bandwidth_gbps, &g->bf16_tflops)) {
            g->mem_bandwidth_gbps = 0;
            g->bf16_tflops = 0;
        }
    }
done:
    hwloc_topology_destroy(t);
    if (st != SQ_OK) memset(out, 0, sizeof *out);
    return st;
}
