/* topology/cluster.c: the cluster view — from a cluster-config JSON file, from the local
 * machine, or from every rank's discovery under MPI (MPI_Allgather of fixed-size records).
 * Owns the cluster-config schema (cluster-configs/README.md).  Must never trust a count or a
 * size from a file or a peer before checking it, and never give two ranks different views. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/topology.h"

#define MAX_FILE_BYTES (16u << 20)
#define MAX_MEMORY_GIB (1024.0 * 1024.0)   /* 1 PiB: anything larger is a typo */

void sq_cluster_destroy(sq_cluster *c) {
    if (!c) return;
    free(c->nodes);
    free(c->devices);
    free(c);
}

static sq_cluster *cluster_alloc(int n_nodes, int n_devices) {
    sq_cluster *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->nodes = calloc((size_t)n_nodes, sizeof *c->nodes);
    c->devices = calloc((size_t)n_devices, sizeof *c->devices);
    if (!c->nodes || !c->devices) {
        sq_cluster_destroy(c);
        return NULL;
    }
    c->n_nodes = n_nodes;
    c->n_devices = n_devices;
    return c;
}

/* ---- JSON helpers: every error names the path of the field -------------------------------- */
typedef struct jctx {
    const char *path;
    sq_error *err;
} jctx;

/* Optional number field: absent → *out = def; present must be a finite number in [lo, hi]. */
static sq_status num_field(const jctx *j, const cJSON *obj, const char *where, const char *key,
                           bool required, double def, double lo, double hi, bool integer,
                           double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s: missing \"%s\"", where, key);
        *out = def;
        return SQ_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s.%s: expected a number", where, key);
    double d = v->valuedouble;
    if (d < lo || d > hi)
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                            "%s.%s: %g is out of range (expected %g..%g)", where, key, d, lo, hi);
    if (integer && d != floor(d))
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                            "%s.%s: expected a whole number, got %g", where, key, d);
    *out = d;
    return SQ_OK;
}

static sq_status str_field(const jctx *j, const cJSON *obj, const char *where, const char *key,
                           const char *def, char *out, size_t out_bytes) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        snprintf(out, out_bytes, "%s", def);
        return SQ_OK;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s.%s: expected a string", where, key);
    if (strlen(v->valuestring) >= out_bytes)
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                            "%s.%s: longer than %zu characters", where, key, out_bytes - 1);
    snprintf(out, out_bytes, "%s", v->valuestring);
    return SQ_OK;
}

static uint64_t gib_to_bytes(double gib) { return (uint64_t)llround(gib * (double)SQ_GIB); }

#define TRY(x)                      \
    do {                            \
        st = (x);                   \
        if (st != SQ_OK) goto fail; \
    } while (0)

/* Two passes over the same JSON: pass 0 validates and counts, pass 1 fills c. */
static sq_status walk(const jctx *j, const cJSON *root, int pass, sq_cluster *c, int *n_nodes,
                      int *n_devices) {
    sq_status st = SQ_OK;
    const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(root, "nodes");
    if (!cJSON_IsArray(nodes) || cJSON_GetArraySize(nodes) == 0)
        return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                            "\"nodes\" must be a non-empty array");
    int node_at = 0, dev_at = 0, ni = 0;
    const cJSON *node;
    cJSON_ArrayForEach(node, nodes) {
        char where[64];
        snprintf(where, sizeof where, "nodes[%d]", ni);
        if (!cJSON_IsObject(node))
            return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s: expected an object", where);
        char name[SQ_TOPO_NAME_BYTES - 12], link_kind[32];   /* room for the index suffix */
        double count, host_gib, cpu_devs, cpu_bw, link_bw;
        TRY(str_field(j, node, where, "name", "node", name, sizeof name));
        TRY(num_field(j, node, where, "count", false, 1, 1, SQ_TOPO_MAX_NODES, true, &count));
        TRY(num_field(j, node, where, "host_memory_gib", false, 0, 0, MAX_MEMORY_GIB, false, &host_gib));
        TRY(num_field(j, node, where, "cpu_devices", false, 1, 1, 1024, true, &cpu_devs));
        TRY(num_field(j, node, where, "cpu_mem_bandwidth_gbps", false, SQ_TOPO_CPU_BANDWIDTH_GBPS,
                      1e-3, 1e6, false, &cpu_bw));
        link_kind[0] = '\0';
        link_bw = 0;
        const cJSON *link = cJSON_GetObjectItemCaseSensitive(node, "link");
        if (link && !cJSON_IsNull(link)) {
            char lw[80];
            snprintf(lw, sizeof lw, "%s.link", where);
            if (!cJSON_IsObject(link))
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s: expected an object", lw);
            TRY(str_field(j, link, lw, "kind", "", link_kind, sizeof link_kind));
            TRY(num_field(j, link, lw, "bandwidth_gbps", false, 0, 0, 1e6, false, &link_bw));
        }
        const cJSON *gpus = cJSON_GetObjectItemCaseSensitive(node, "gpus");
        if (gpus && !cJSON_IsNull(gpus) && !cJSON_IsArray(gpus))
            return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s.gpus: expected an array", where);
        /* count this node's GPUs (validating every entry) */
        int n_gpu = 0, gi = 0;
        const cJSON *g;
        if (gpus) cJSON_ArrayForEach(g, gpus) {
            char gw[96];
            snprintf(gw, sizeof gw, "%s.gpus[%d]", where, gi++);
            if (!cJSON_IsObject(g))
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "%s: expected an object", gw);
            double gc, mem, bw, tf;
            char gname[SQ_TOPO_NAME_BYTES];
            TRY(str_field(j, g, gw, "name", "GPU", gname, sizeof gname));
            TRY(num_field(j, g, gw, "count", false, 1, 1, SQ_TOPO_MAX_GPUS, true, &gc));
            const cJSON *mv = cJSON_GetObjectItemCaseSensitive(g, "memory_gib");
            if (cJSON_IsNumber(mv) && mv->valuedouble <= 0)
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                                    "%s ('%s').memory_gib: must be > 0 (got %g)", gw, gname, mv->valuedouble);
            TRY(num_field(j, g, gw, "memory_gib", true, 0, 1e-3, MAX_MEMORY_GIB, false, &mem));
            double tbw = 0, ttf = 0;
            bool known = sq_topo_gpu_facts(gname, gib_to_bytes(mem), &tbw, &ttf);
            const cJSON *bv = cJSON_GetObjectItemCaseSensitive(g, "mem_bandwidth_gbps");
            if (!known && (!bv || cJSON_IsNull(bv)))
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                                    "%s: GPU '%s' is not in shardq's table: give \"mem_bandwidth_gbps\"",
                                    gw, gname);
            TRY(num_field(j, g, gw, "mem_bandwidth_gbps", false, tbw, 1e-3, 1e6, false, &bw));
            TRY(num_field(j, g, gw, "bf16_tflops", false, ttf, 0, 1e6, false, &tf));
            if (n_gpu + (int)gc > SQ_TOPO_MAX_GPUS)
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                                    "%s: more than %d GPUs in one node", where, SQ_TOPO_MAX_GPUS);
            n_gpu += (int)gc;
        }
        if (n_gpu == 0 && host_gib <= 0)
            return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                                "%s ('%s'): a node with no GPUs needs host_memory_gib > 0 "
                                "(its memory is what a CPU device offers)", where, name);
        int per_node = n_gpu ? n_gpu : (int)cpu_devs;
        if (node_at + (int)count > SQ_TOPO_MAX_NODES ||
            (int64_t)dev_at + (int64_t)count * per_node > SQ_TOPO_MAX_DEVICES)
            return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL,
                                "%s: the cluster would exceed %d nodes or %d devices", where,
                                SQ_TOPO_MAX_NODES, SQ_TOPO_MAX_DEVICES);
        if (pass == 1) {
            for (int rep = 0; rep < (int)count; rep++) {
                sq_cluster_node *cn = &c->nodes[node_at + rep];
                if (count > 1)
                    snprintf(cn->name, sizeof cn->name, "%s%u", name, (unsigned)rep);
                else
                    snprintf(cn->name, sizeof cn->name, "%s", name);
                snprintf(cn->host, sizeof cn->host, "%s", cn->name);
                cn->host_memory_bytes = gib_to_bytes(host_gib);
                cn->n_numa = cn->n_cores = 0;
                cn->n_devices = per_node;
                snprintf(cn->link_kind, sizeof cn->link_kind, "%s", link_kind);
                cn->link_bandwidth_gbps = link_bw;
                int local = 0;
                if (n_gpu) {
                    const cJSON *ge;
                    cJSON_ArrayForEach(ge, gpus) {
                        char gname[SQ_TOPO_NAME_BYTES];
                        double gc, mem, bw, tf, tbw = 0, ttf = 0;
                        jctx q = *j;
                        TRY(str_field(&q, ge, "", "name", "GPU", gname, sizeof gname));
                        TRY(num_field(&q, ge, "", "count", false, 1, 1, SQ_TOPO_MAX_GPUS, true, &gc));
                        TRY(num_field(&q, ge, "", "memory_gib", true, 0, 1e-3, MAX_MEMORY_GIB, false, &mem));
                        sq_topo_gpu_facts(gname, gib_to_bytes(mem), &tbw, &ttf);
                        TRY(num_field(&q, ge, "", "mem_bandwidth_gbps", false, tbw, 1e-3, 1e6, false, &bw));
                        TRY(num_field(&q, ge, "", "bf16_tflops", false, ttf, 0, 1e6, false, &tf));
                        for (int k = 0; k < (int)gc; k++, local++) {
                            sq_device *d = &c->devices[dev_at];
                            d->rank = dev_at++;
                            d->node = node_at + rep;
                            d->local_index = d->local_rank = local;
                            d->kind = SQ_DEVICE_GPU;
                            snprintf(d->name, sizeof d->name, "%s", gname);
                            d->numa_node = -1;
                            d->memory_bytes = gib_to_bytes(mem);
                            d->mem_bandwidth_gbps = bw;
                            d->bf16_tflops = tf;
                        }
                    }
                } else {
                    for (int k = 0; k < (int)cpu_devs; k++) {
                        sq_device *d = &c->devices[dev_at];
                        d->rank = dev_at++;
                        d->node = node_at + rep;
                        d->local_index = d->local_rank = k;
                        d->kind = SQ_DEVICE_CPU;
                        snprintf(d->name, sizeof d->name, "cpu");
                        d->numa_node = -1;
                        d->memory_bytes = cn->host_memory_bytes / (uint64_t)cpu_devs;
                        d->mem_bandwidth_gbps = cpu_bw / cpu_devs;
                    }
                }
            }
        } else {
            dev_at += (int)count * per_node;
        }
        node_at += (int)count;
        ni++;
    }
    *n_nodes = node_at;
    *n_devices = dev_at;
    if (pass == 1) {
        /* default name: the file's base name without .json */
        char def[SQ_TOPO_NAME_BYTES];
        const char *base = strrchr(j->path, '/');
        snprintf(def, sizeof def, "%s", base ? base + 1 : j->path);
        char *dot = strstr(def, ".json");
        if (dot) *dot = '\0';
        TRY(str_field(j, root, "cluster", "name", def, c->name, sizeof c->name));
        const cJSON *net = cJSON_GetObjectItemCaseSensitive(root, "network");
        if (net && !cJSON_IsNull(net)) {
            if (!cJSON_IsObject(net))
                return sq_error_set(j->err, SQ_ERR_FORMAT, j->path, NULL, "network: expected an object");
            TRY(str_field(j, net, "network", "kind", "", c->network_kind, sizeof c->network_kind));
            TRY(num_field(j, net, "network", "bandwidth_gbps", false, 0, 0, 1e6, false,
                          &c->network_bandwidth_gbps));
            TRY(num_field(j, net, "network", "latency_us", false, 0, 0, 1e9, false,
                          &c->network_latency_us));
        }
    }
    return SQ_OK;
fail:
    return st;
}

sq_status sq_cluster_parse(const char *json_text, size_t len, const char *path, sq_cluster **out,
                           sq_error *err) {
    *out = NULL;
    jctx j = {.path = path ? path : "cluster", .err = err};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json_text, len, &end, false);
    if (!root) {
        size_t at = end && end >= json_text ? (size_t)(end - json_text) : 0;
        return sq_error_set(err, SQ_ERR_FORMAT, j.path, NULL, "malformed JSON near byte %zu", at);
    }
    sq_status st;
    sq_cluster *c = NULL;
    if (!cJSON_IsObject(root)) {
        st = sq_error_set(err, SQ_ERR_FORMAT, j.path, NULL, "expected a JSON object at the top");
        goto done;
    }
    int n_nodes = 0, n_devices = 0;
    st = walk(&j, root, 0, NULL, &n_nodes, &n_devices);
    if (st != SQ_OK) goto done;
    c = cluster_alloc(n_nodes, n_devices);
    if (!c) {
        st = sq_error_set(err, SQ_ERR_NOMEM, j.path, NULL, "out of memory for %d devices", n_devices);
        goto done;
    }
    st = walk(&j, root, 1, c, &n_nodes, &n_devices);
    if (st == SQ_OK && (n_nodes != c->n_nodes || n_devices != c->n_devices))
        st = sq_error_set(err, SQ_ERR_INTERNAL, j.path, NULL, "cluster counts changed between passes");
done:
    cJSON_Delete(root);
    if (st != SQ_OK) {
        sq_cluster_destroy(c);
        return st;
    }
    *out = c;
    return SQ_OK;
}

sq_status sq_cluster_load(const char *path, sq_cluster **out, sq_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    char *buf = malloc(MAX_FILE_BYTES + 1);
    if (!buf) {
        fclose(f);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    size_t n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    bool bad = ferror(f);
    fclose(f);
    sq_status st;
    if (bad)
        st = sq_error_set(err, SQ_ERR_IO, path, NULL, "read failed");
    else if (n > MAX_FILE_BYTES)
        st = sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "larger than %u bytes", MAX_FILE_BYTES);
    else
        st = sq_cluster_parse(buf, n, path, out, err);
    free(buf);
    return st;
}

/* ---- from discovery --------------------------------------------------------------------- */
static void gpu_device(sq_device *d, const sq_gpu_info *g) {
    d->kind = SQ_DEVICE_GPU;
    snprintf(d->name, sizeof d->name, "%s", g->name);
    snprintf(d->pci_busid, sizeof d->pci_busid, "%s", g->pci_busid);
    d->numa_node = g->numa_node;
    d->memory_bytes = g->memory_bytes;
    d->mem_bandwidth_gbps = g->mem_bandwidth_gbps > 0 ? g->mem_bandwidth_gbps
                                                      : SQ_TOPO_GPU_BANDWIDTH_GBPS_UNKNOWN;
    d->bf16_tflops = g->bf16_tflops;
}

static void node_from_info(sq_cluster_node *cn, const sq_node_info *ni, int n_devices) {
    snprintf(cn->name, sizeof cn->name, "%s", ni->host);
    snprintf(cn->host, sizeof cn->host, "%s", ni->host);
    cn->host_memory_bytes = ni->host_memory_bytes;
    cn->n_numa = ni->n_numa;
    cn->n_cores = ni->n_cores;
    cn->n_devices = n_devices;
}

static sq_status check_info(const sq_node_info *ni, int rank, sq_error *err) {
    if (ni->n_gpus < 0 || ni->n_gpus > SQ_TOPO_MAX_GPUS || !memchr(ni->host, 0, sizeof ni->host))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "rank %d sent a malformed topology record", rank);
    for (int i = 0; i < ni->n_gpus; i++)
        if (!memchr(ni->gpus[i].name, 0, sizeof ni->gpus[i].name) ||
            !memchr(ni->gpus[i].pci_busid, 0, sizeof ni->gpus[i].pci_busid))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "rank %d sent a malformed GPU record", rank);
    if (ni->n_gpus == 0 && ni->host_memory_bytes == 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "rank %d (host '%s'): no GPU and no host memory found", rank, ni->host);
    for (int i = 0; i < ni->n_gpus; i++)
        if (ni->gpus[i].memory_bytes == 0)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "rank %d (host '%s'): GPU %d (%s) reports no memory size", rank,
                                ni->host, i, ni->gpus[i].pci_busid);
    return SQ_OK;
}

sq_status sq_cluster_from_node(const sq_node_info *ni, sq_cluster **out, sq_error *err) {
    *out = NULL;
    sq_status st = check_info(ni, 0, err);
    if (st != SQ_OK) return st;
    int n = ni->n_gpus ? ni->n_gpus : 1;
    sq_cluster *c = cluster_alloc(1, n);
    if (!c) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    snprintf(c->name, sizeof c->name, "%s", ni->host);
    node_from_info(&c->nodes[0], ni, n);
    for (int i = 0; i < n; i++) {
        sq_device *d = &c->devices[i];
        d->rank = i;
        d->local_index = d->local_rank = i;
        if (ni->n_gpus) {
            gpu_device(d, &ni->gpus[i]);
        } else {
            d->kind = SQ_DEVICE_CPU;
            snprintf(d->name, sizeof d->name, "cpu");
            d->numa_node = -1;
            d->memory_bytes = ni->host_memory_bytes;
            d->mem_bandwidth_gbps = SQ_TOPO_CPU_BANDWIDTH_GBPS;
        }
    }
    *out = c;
    return SQ_OK;
}

sq_status sq_cluster_gather(MPI_Comm comm, const sq_node_info *local, sq_cluster **out,
                            sq_error *err) {
    *out = NULL;
    int rank = 0, size = 1;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Comm_rank/size failed");
    sq_node_info *all = calloc((size_t)size, sizeof *all);
    int *node_of = calloc((size_t)size, sizeof(int));
    int *local_rank = calloc((size_t)size, sizeof(int));
    int *first_rank = calloc((size_t)size, sizeof(int));   /* per node: its first rank */
    int *per_node = calloc((size_t)size, sizeof(int));
    sq_cluster *c = NULL;
    sq_status st = SQ_OK;
    if (!all || !node_of || !local_rank || !first_rank || !per_node) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for %d ranks", size);
        goto done;
    }
    /* every rank calls Allgather, even one whose own discovery failed: no peer may hang */
    if (MPI_Allgather(local, (int)sizeof *local, MPI_BYTE, all, (int)sizeof *local, MPI_BYTE,
                      comm) != MPI_SUCCESS) {
        st = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allgather of topology records failed");
        goto done;
    }
    for (int r = 0; r < size; r++) {
        st = check_info(&all[r], r, err);
        if (st != SQ_OK) goto done;
    }
    /* nodes in order of their first rank; local rank = order among the node's ranks */
    int n_nodes = 0;
    for (int r = 0; r < size; r++) {
        int nd = -1;
        for (int k = 0; k < n_nodes; k++)
            if (!strcmp(all[first_rank[k]].host, all[r].host)) nd = k;
        if (nd < 0) {
            nd = n_nodes++;
            first_rank[nd] = r;
        }
        node_of[r] = nd;
        local_rank[r] = per_node[nd]++;
    }
    for (int k = 0; k < n_nodes; k++) {
        const sq_node_info *ni = &all[first_rank[k]];
        if (ni->n_gpus > 0 && per_node[k] > ni->n_gpus) {
            st = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                              "node '%s' has %d GPU%s but %d ranks were started on it "
                              "(one rank per GPU)", ni->host, ni->n_gpus,
                              ni->n_gpus == 1 ? "" : "s", per_node[k]);
            goto done;
        }
    }
    c = cluster_alloc(n_nodes, size);
    if (!c) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
        goto done;
    }
    snprintf(c->name, sizeof c->name, "mpirun: %d rank%s on %d node%s", size, size == 1 ? "" : "s",
             n_nodes, n_nodes == 1 ? "" : "s");
    for (int k = 0; k < n_nodes; k++) node_from_info(&c->nodes[k], &all[first_rank[k]], per_node[k]);
    for (int r = 0; r < size; r++) {
        const sq_node_info *ni = &all[first_rank[node_of[r]]];
        sq_device *d = &c->devices[r];
        d->rank = r;
        d->node = node_of[r];
        d->local_rank = d->local_index = local_rank[r];
        if (ni->n_gpus) {
            gpu_device(d, &ni->gpus[local_rank[r]]);
        } else {
            /* CPU ranks share the node: each gets an equal share of its memory and bandwidth */
            d->kind = SQ_DEVICE_CPU;
            snprintf(d->name, sizeof d->name, "cpu");
            d->numa_node = -1;
            d->memory_bytes = ni->host_memory_bytes / (uint64_t)per_node[node_of[r]];
            d->mem_bandwidth_gbps = SQ_TOPO_CPU_BANDWIDTH_GBPS / per_node[node_of[r]];
        }
    }
done:
    free(all);
    free(node_of);
    free(local_rank);
    free(first_rank);
    free(per_node);
    if (st != SQ_OK) {
        sq_cluster_destroy(c);
        return st;
    }
    *out = c;
    return SQ_OK;
}

/* ---- hash ------------------------------------------------------------------------------- */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}
static uint64_t fnv_str(uint64_t h, const char *s) { return fnv(h, s, strlen(s) + 1); }
static uint64_t fnv_i64(uint64_t h, int64_t v) { return fnv(h, &v, sizeof v); }
static uint64_t fnv_f64(uint64_t h, double v) { return fnv(h, &v, sizeof v); }

uint64_t sq_cluster_hash(const sq_cluster *c) {
    uint64_t h = 1469598103934665603ull;
    h = fnv_str(h, c->name);
    h = fnv_i64(h, c->n_nodes);
    h = fnv_i64(h, c->n_devices);
    for (int i = 0; i < c->n_nodes; i++) {
        const sq_cluster_node *n = &c->nodes[i];
        h = fnv_str(fnv_str(h, n->name), n->host);
        h = fnv_i64(fnv_i64(fnv_i64(h, (int64_t)n->host_memory_bytes), n->n_numa), n->n_cores);
        h = fnv_i64(fnv_str(h, n->link_kind), n->n_devices);
        h = fnv_f64(h, n->link_bandwidth_gbps);
    }
    for (int i = 0; i < c->n_devices; i++) {
        const sq_device *d = &c->devices[i];
        h = fnv_i64(fnv_i64(fnv_i64(fnv_i64(h, d->rank), d->node), d->local_index), d->local_rank);
        h = fnv_i64(fnv_str(fnv_str(h, d->name), d->pci_busid), d->kind);
        h = fnv_i64(fnv_i64(h, d->numa_node), (int64_t)d->memory_bytes);
        h = fnv_f64(fnv_f64(h, d->mem_bandwidth_gbps), d->bf16_tflops);
    }
    h = fnv_str(h, c->network_kind);
    h = fnv_f64(fnv_f64(h, c->network_bandwidth_gbps), c->network_latency_us);
    return h;
}
