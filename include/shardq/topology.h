/* topology: what hardware there is to plan for.
 *   - discovery of one machine with hwloc (the live machine, or a saved hwloc XML file):
 *     host name, NUMA nodes, cores, host memory, GPUs (name, memory, PCI bus id, NUMA node)
 *     from hwloc's CUDA / NVML OS devices, or the CUDA runtime when built with CUDA;
 *   - cluster-config JSON files (cluster-configs/README.md has the schema);
 *   - the cluster view under MPI: every rank's sq_node_info is MPI_Allgather'd as a fixed-size
 *     record, and every rank builds the same sq_cluster from the same bytes.
 *
 * Devices are listed in rank order: device i is the one rank i uses.  Offline (a cluster file,
 * or the local machine without mpirun) that is node order, then GPU order inside a node.
 * Under mpirun: rank r uses GPU number (local rank of r) on its node.  A node without GPUs
 * offers its host memory as CPU devices: offline one per node (or "cpu_devices" of them);
 * under mpirun one per rank started there, each with host memory / ranks on that node.
 *
 * Ownership: sq_node_info is plain bytes owned by the caller.  sq_cluster_* constructors
 * allocate an sq_cluster that sq_cluster_destroy() frees (takes NULL); on failure *out is NULL.
 * Never: prints, exits, or touches a GPU beyond reading its properties. */
#ifndef SHARDQ_TOPOLOGY_H
#define SHARDQ_TOPOLOGY_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SQ_TOPO_MAX_GPUS 16        /* per node */
#define SQ_TOPO_MAX_DEVICES 65536  /* per cluster (a cluster file cannot ask for more) */
#define SQ_TOPO_MAX_NODES 4096
#define SQ_TOPO_NAME_BYTES 64
#define SQ_GIB 1073741824ull

/* Memory bandwidth assumed for a CPU device when nothing says otherwise (GB/s, shared by the
 * CPU devices of one node), and the default runtime reserve per device. */
#define SQ_TOPO_CPU_BANDWIDTH_GBPS 20.0
#define SQ_TOPO_GPU_BANDWIDTH_GBPS_UNKNOWN 1000.0

typedef enum sq_device_kind { SQ_DEVICE_CPU = 0, SQ_DEVICE_GPU } sq_device_kind;

typedef struct sq_gpu_info {
    char name[SQ_TOPO_NAME_BYTES];   /* "NVIDIA H100 80GB HBM3" */
    char pci_busid[24];              /* "0000:18:00.0"; "" when unknown */
    uint64_t memory_bytes;           /* total device memory; 0 when unknown */
    uint64_t free_bytes;             /* 0 when unknown (hwloc reports none) */
    int32_t numa_node;               /* OS index of the local NUMA node, -1 when unknown */
    int32_t reserved_;               /* zero: keeps the record free of padding */
    double mem_bandwidth_gbps;       /* GB/s (1e9 B/s) from the known-GPU table; 0 unknown */
    double bf16_tflops;              /* dense bf16, from the same table; 0 unknown */
} sq_gpu_info;

/* One machine.  Plain bytes with no padding holes: MPI_Allgather'd as MPI_BYTE. */
typedef struct sq_node_info {
    char host[SQ_TOPO_NAME_BYTES];
    int32_t n_packages, n_numa, n_cores, n_pus;
    uint64_t host_memory_bytes;
    int32_t n_gpus;                  /* <= SQ_TOPO_MAX_GPUS; ordered by PCI bus id */
    int32_t reserved_;
    sq_gpu_info gpus[SQ_TOPO_MAX_GPUS];
} sq_node_info;

/* Discovers one machine: xml_path NULL for the live machine, else a saved hwloc XML file
 * (hwloc_topology_set_xml).  GPUs come from hwloc OS devices (CUDA "cudaN" coprocessors and
 * NVML "nvmlN" GPUs, merged by PCI bus id) and, when built with CUDA and xml_path is NULL,
 * from the CUDA runtime.  On failure *out is zeroed. */
sq_status sq_topo_discover(const char *xml_path, sq_node_info *out, sq_error *err);

/* Memory bandwidth (GB/s) and dense bf16 TFLOPS of a GPU known by name (case-insensitive
 * substring match on e.g. "H100", "A100", "4090"); false when unknown. */
bool sq_topo_gpu_facts(const char *name, uint64_t memory_bytes, double *bandwidth_gbps,
                       double *bf16_tflops);

/* ---- the cluster ------------------------------------------------------------------------ */
typedef struct sq_device {
    int32_t rank;                    /* position in rank order (= index in devices[]) */
    int32_t node;                    /* index into nodes[] */
    int32_t local_index;             /* GPU number on its node, or CPU device number */
    int32_t local_rank;              /* rank among the ranks on the node (= local_index offline) */
    sq_device_kind kind;
    char name[SQ_TOPO_NAME_BYTES];   /* "H100-SXM5-80GB", "cpu" */
    char pci_busid[24];
    int32_t numa_node;               /* -1 when unknown */
    uint64_t memory_bytes;           /* total memory (CPU device: its share of host memory) */
    double mem_bandwidth_gbps;       /* > 0 */
    double bf16_tflops;              /* 0 when unknown */
} sq_device;

typedef struct sq_cluster_node {
    char name[SQ_TOPO_NAME_BYTES];   /* "node0" … (a cluster file's name, indexed when count > 1),
                                        or the host name under mpirun */
    char host[SQ_TOPO_NAME_BYTES];
    uint64_t host_memory_bytes;
    int32_t n_numa, n_cores;
    int32_t n_devices;               /* devices (ranks) on this node */
    char link_kind[32];              /* "nvlink", "pcie", "" */
    double link_bandwidth_gbps;      /* 0 when unknown */
} sq_cluster_node;

typedef struct sq_cluster {
    char name[SQ_TOPO_NAME_BYTES];
    int n_nodes;
    sq_cluster_node *nodes;          /* (n_nodes) */
    int n_devices;
    sq_device *devices;              /* (n_devices), in rank order */
    char network_kind[32];
    double network_bandwidth_gbps, network_latency_us;
} sq_cluster;

/* Parses a cluster-config JSON text (`path` names it in errors).  Errors name the node / GPU
 * entry and the field: malformed JSON, missing or negative memory, a node with neither GPUs
 * nor host memory, counts out of range. */
sq_status sq_cluster_parse(const char *json_text, size_t len, const char *path, sq_cluster **out,
                           sq_error *err);
/* Reads and parses a cluster-config file (at most 16 MiB). */
sq_status sq_cluster_load(const char *path, sq_cluster **out, sq_error *err);
/* The local machine as a one-node cluster: all its GPUs, or its host memory as one CPU device. */
sq_status sq_cluster_from_node(const sq_node_info *node, sq_cluster **out, sq_error *err);
/* Collective over comm: MPI_Allgather of every rank's `local` record; returns the same cluster
 * on every rank, one device per rank (see the top of this file).  Fails (on every rank alike)
 * when a node has fewer GPUs than ranks started on it. */
sq_status sq_cluster_gather(MPI_Comm comm, const sq_node_info *local, sq_cluster **out,
                            sq_error *err);
void sq_cluster_destroy(sq_cluster *c);
/* FNV-1a 64 over every field (names included): equal clusters hash equal on every rank. */
uint64_t sq_cluster_hash(const sq_cluster *c);

#ifdef __cplusplus
}
#endif
#endif
