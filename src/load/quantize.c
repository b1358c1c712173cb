/* Owns the distributed `quantize`: the ranks agree on the skeleton and the plan, each loads
 * and quantizes its own stage into its own shard file inside one temporary folder, rank 0
 * adds the index, config.json and tokenizer files, and the folder is renamed into place only
 * after every rank succeeded.  Must never leave a partial output or a temporary behind, never
 * let one rank wait for a failed peer, and never print. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "load_impl.h"
#include "shardq/topology.h"

#define PATH_BYTES 4096
#define MAX_COPY_BYTES (512ull << 20)

/* ---- where to quantize ------------------------------------------------------------------------ */

/* This rank's CUDA device for quantizing (-1: the CPU), from o->quant_on.  Collective over comm
 * (the node split for the local rank); an explicit device that this rank cannot use fails here,
 * before any file is written. */
static sq_status choose_quant_device(MPI_Comm comm, int rank, int size,
                                     const sq_quantize_options *o, int *dev, sq_error *err) {
    *dev = -1;
    int local_rank = 0;
    if (size > 1 && o->quant_on == SQ_QUANTIZE_ON_AUTO) {
        MPI_Comm node = MPI_COMM_NULL;
        if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) != MPI_SUCCESS ||
            MPI_Comm_rank(node, &local_rank) != MPI_SUCCESS)
            return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Comm_split_type (ranks of this node) failed");
        MPI_Comm_free(&node);
    }
    const int n_dev = sq_load_cuda_device_count();
    if (o->quant_on == SQ_QUANTIZE_ON_AUTO) {
        if (n_dev > 0) *dev = local_rank % n_dev;
    } else if (o->quant_on == SQ_QUANTIZE_ON_CUDA) {
#ifdef SHARDQ_HAVE_CUDA
        if (n_dev == 0)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                                "--device %d: no CUDA device on this rank's machine; use --device "
                                "cpu or auto", o->quant_device);
        if (o->quant_device < 0 || o->quant_device >= n_dev)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "--device %d: this rank's machine has %d CUDA device%s",
                                o->quant_device, n_dev, n_dev == 1 ? "" : "s");
        *dev = o->quant_device;
#else
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "--device %d: this shardq was built without CUDA (-DSHARDQ_CUDA=ON); "
                            "use --device cpu or auto", o->quant_device);
#endif
    }
    return SQ_OK;
}

/* ---- agreement ------------------------------------------------------------------------------ */

/* Every rank passes its status; SQ_OK only if all are OK, else every rank gets the lowest
 * failing rank's error (code SQ_ERR_PEER where the copy arrived with none). */
static sq_status agree(MPI_Comm comm, int rank, int size, sq_status local, sq_error *err) {
    if (size == 1) return local;
    int mine = local == SQ_OK ? size : rank, first = size;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce failed agreeing on status");
    if (first == size) return SQ_OK;
    sq_error copy;
    memset(&copy, 0, sizeof copy);
    if (rank == first) copy = *err;
    if (MPI_Bcast(&copy, (int)sizeof copy, MPI_BYTE, first, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast failed agreeing on status");
    copy.msg[sizeof copy.msg - 1] = copy.file[sizeof copy.file - 1] = '\0';
    copy.tensor[sizeof copy.tensor - 1] = '\0';
    if (copy.code == SQ_OK) copy.code = SQ_ERR_PEER;
    copy.rank = first;
    *err = copy;
    return err->code;
}

/* ---- files ---------------------------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static bool join(char *out, const char *dir, const char *name) {
    return snprintf(out, PATH_BYTES, "%s/%s", dir, name) < PATH_BYTES;
}

static sq_status read_file(const char *path, uint64_t max, char **out, size_t *len, sq_error *err) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > max) {
        fclose(f);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "not a regular file of at most %llu bytes",
                            (unsigned long long)max);
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        fclose(f);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    size_t got = fread(buf, 1, (size_t)sb.st_size, f);
    fclose(f);
    if (got != (size_t)sb.st_size) {
        free(buf);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "short read");
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return SQ_OK;
}

static sq_status write_file(const char *path, const void *data, size_t n, sq_error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create: %s", strerror(errno));
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)data + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            return sq_error_set(err, SQ_ERR_IO, path, NULL, "write failed: %s", strerror(e));
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0)
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "fsync/close failed: %s", strerror(errno));
    return SQ_OK;
}

/* ---- the shard writer consumer ------------------------------------------------------------- */

typedef struct shard_ctx {
    sq_st_writer *w;
    char **names;            /* (n_names) strdup'd */
    size_t n_names, cap;
    uint64_t bytes;          /* tensor bytes added */
} shard_ctx;

static sq_status add(shard_ctx *c, const char *base, const char *suffix, sq_dtype dtype,
                     int n_dims, const int64_t *shape, const void *data, uint64_t n_bytes,
                     sq_error *err) {
    char name[512];
    if (snprintf(name, sizeof name, "%s%s", base, suffix) >= (int)sizeof name)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, base, "tensor name too long");
    if (c->n_names == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        char **p = realloc(c->names, cap * sizeof *p);
        if (!p) return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory");
        c->names = p;
        c->cap = cap;
    }
    if (!(c->names[c->n_names] = strdup(name)))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory");
    c->n_names++;
    c->bytes += n_bytes;
    return sq_st_writer_add(c->w, name, dtype, n_dims, shape, data, n_bytes, err);
}

static sq_status consume(void *user, sq_load_item *it, sq_error *err) {
    shard_ctx *c = user;
    const char *name = it->spec->name;
    if (!it->is_4bit)
        return add(c, name, "", it->dtype, it->n_dims, it->shape, it->data, it->n_bytes, err);
    const sq_qtensor *q = &it->q;
    if (sq_quant_type_is_int8(q->type)) {   /* bnb 8-bit: weight int8 + SCB + weight_format */
        bnb_part p[BNB_INT8_PARTS];
        char base[256];
        sq_status rc = bnb_int8_parts(name, q, base, sizeof base, p, err);
        for (int i = 0; rc == SQ_OK && i < BNB_INT8_PARTS; i++)
            rc = add(c, base, p[i].suffix, p[i].dtype, p[i].n_dims, p[i].shape, p[i].data,
                     p[i].n_bytes, err);
        return rc;
    }
    const uint64_t packed = sq_size_4bit_packed_bytes(q->n_elements);
    const int64_t wshape[2] = {(int64_t)packed, 1}, nb[1] = {(int64_t)q->n_blocks};
    const int64_t qm[1] = {16}, nm[1] = {256};
    const int64_t nn[1] = {(int64_t)sq_ceil_div_u64(q->n_blocks, (uint64_t)q->nested_blocksize)};
    sq_status rc = add(c, name, "", SQ_DTYPE_U8, 2, wshape, q->packed, packed, err);
    if (rc != SQ_OK) return rc;
    if (q->double_quant)
        rc = add(c, name, ".absmax", SQ_DTYPE_U8, 1, nb, q->absmax_q, q->n_blocks, err);
    else
        rc = add(c, name, ".absmax", SQ_DTYPE_F32, 1, nb, q->absmax, q->n_blocks * 4, err);
    if (rc == SQ_OK)
        rc = add(c, name, ".quant_map", SQ_DTYPE_F32, 1, qm, sq_quant_code_table(q->type), 64, err);
    if (rc == SQ_OK && q->double_quant) {
        rc = add(c, name, ".nested_absmax", SQ_DTYPE_F32, 1, nn, q->nested_absmax,
                 (uint64_t)nn[0] * 4, err);
        if (rc == SQ_OK)
            rc = add(c, name, ".nested_quant_map", SQ_DTYPE_F32, 1, nm, sq_quant_dynamic_map(),
                     1024, err);
    }
    if (rc != SQ_OK) return rc;
    char *json = NULL;
    size_t len = 0;
    rc = sq_bnb_quant_state_json(q, &json, &len, err);
    if (rc != SQ_OK) return rc;
    const int64_t js[1] = {(int64_t)len};
    rc = add(c, name, sq_bnb_quant_state_suffix(q->type), SQ_DTYPE_U8, 1, js, json, len, err);
    free(json);
    return rc;
}

/* ---- scheme and plan ------------------------------------------------------------------------ */

static sq_status make_plan(MPI_Comm comm, int size, const sq_quantize_options *o,
                           const sq_meta *m, sq_quant_scheme *scheme, bool prequant,
                           sq_plan **plan, sq_log log, sq_error *err) {
    *plan = NULL;
    sq_status rc;
    if (o->plan_path) {
        rc = sq_plan_read_file(o->plan_path, plan, err);
        if (rc != SQ_OK) return rc;
        const sq_plan *p = *plan;
        if (p->n_stages != size)
            return sq_error_set(err, SQ_ERR_INVALID, o->plan_path, NULL,
                                "the plan has %d stages but %d ranks were started (mpirun -np %d)",
                                p->n_stages, size, p->n_stages);
        if (p->n_layers != sq_meta_config(m)->n_layers)
            return sq_error_set(err, SQ_ERR_INVALID, o->plan_path, NULL,
                                "the plan is for %d layers, the model has %lld", p->n_layers,
                                (long long)sq_meta_config(m)->n_layers);
        if (p->model_hash != sq_meta_hash(m))
            sq_logf(&log, SQ_LOG_WARN, "%s: planned for a skeleton with another hash (%016llx, "
                    "this model %016llx); only its layer split is used", o->plan_path,
                    (unsigned long long)p->model_hash, (unsigned long long)sq_meta_hash(m));
        if (!o->scheme_given && !prequant && p->scheme.type != SQ_QUANT_NONE) {
            scheme->type = p->scheme.type;
            scheme->double_quant = p->scheme.double_quant;
            scheme->blocksize = p->scheme.blocksize;
        }
        return SQ_OK;
    }
    /* the ranks started, each a device (its GPU, or its share of host memory) */
    sq_node_info node;
    rc = sq_topo_discover(NULL, &node, err);
    int ok = rc == SQ_OK, all = 0;
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce failed");
    if (!ok) return rc;
    if (!all) return sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "topology discovery failed on a peer");
    sq_cluster *cluster = NULL;
    rc = sq_cluster_gather(comm, &node, &cluster, err);
    if (rc != SQ_OK) return rc;
    sq_plan_options po = sq_plan_options_default();
    po.max_seq = 1;        /* quantize keeps no KV cache and runs nothing */
    po.batch = 1;
    po.reserve_gib = 0;
    rc = sq_plan_make(m, scheme, cluster, &po, plan, err);
    sq_cluster_destroy(cluster);
    return rc;
}

/* ---- output folder (rank 0) ----------------------------------------------------------------- */

static bool dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return false;
    bool empty = true;
    struct dirent *e;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = false;
    closedir(d);
    return empty;
}

static sq_status prepare_out(const sq_quantize_options *o, const char *tmp, sq_error *err) {
    struct stat sb;
    if (stat(o->out_dir, &sb) == 0) {
        if (!o->force)
            return sq_error_set(err, SQ_ERR_INVALID, o->out_dir, NULL,
                                "already exists (pass --force to replace it)");
        bool replaceable = false;
        if (S_ISDIR(sb.st_mode)) {   /* a model folder (config.json) or an empty folder */
            char cfg[PATH_BYTES];
            replaceable = join(cfg, o->out_dir, "config.json") && access(cfg, F_OK) == 0;
            if (!replaceable) replaceable = dir_is_empty(o->out_dir);
        }
        if (!replaceable)
            return sq_error_set(err, SQ_ERR_INVALID, o->out_dir, NULL,
                                "exists and is neither a model folder (config.json) nor empty: "
                                "not replacing it");
    }
    rm_tree(tmp);   /* a leftover of a crashed run with the same pid */
    if (mkdir(tmp, 0755) != 0)
        return sq_error_set(err, SQ_ERR_IO, tmp, NULL, "cannot create folder: %s", strerror(errno));
    return SQ_OK;
}

static const char *const k_copied[] = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
};

/* rank 0: index, config.json, the copied files; then checks every rank's shard is visible */
static sq_status write_folder_files(const sq_quantize_options *o, const sq_model_config *cfg,
                                    const char *tmp, int size,
                                    const sq_quant_scheme *scheme, index_entry *e, size_t n_e,
                                    uint64_t total_size, sq_error *err) {
    char src[PATH_BYTES], dst[PATH_BYTES];
    char *text = NULL, *out = NULL;
    size_t len = 0;
    sq_status rc = bnb_index_json(e, n_e, total_size, &out, err);
    if (rc == SQ_OK) {
        join(dst, tmp, "model.safetensors.index.json");
        rc = write_file(dst, out, strlen(out), err);
    }
    free(out);
    out = NULL;
    if (rc != SQ_OK) return rc;
    join(src, o->model_dir, "config.json");
    /* the folder's own config.json (every field kept), else one made from the config (a
     * checkpoint whose config comes from elsewhere, e.g. a GGUF's metadata) */
    if (access(src, F_OK) == 0) {
        rc = read_file(src, SQ_CONFIG_MAX_FILE_BYTES, &text, &len, err);
    } else {
        rc = sq_config_to_json(cfg, &text, err);
        len = text ? strlen(text) : 0;
    }
    if (rc == SQ_OK)
        rc = bnb_config_json(text, len, src, scheme, o->compute_dtype ? o->compute_dtype : "bfloat16",
                             &out, err);
    if (rc == SQ_OK) {
        join(dst, tmp, "config.json");
        rc = write_file(dst, out, strlen(out), err);
    }
    free(text);
    free(out);
    for (size_t i = 0; rc == SQ_OK && i < sizeof k_copied / sizeof k_copied[0]; i++) {
        join(src, o->model_dir, k_copied[i]);
        if (access(src, F_OK) != 0) continue;
        rc = read_file(src, MAX_COPY_BYTES, &text, &len, err);
        if (rc == SQ_OK) {
            join(dst, tmp, k_copied[i]);
            rc = write_file(dst, text, len, err);
        }
        free(text);
        text = NULL;
    }
    for (int r = 0; rc == SQ_OK && r < size; r++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", r + 1, size);
        join(dst, tmp, name);
        if (access(dst, F_OK) != 0)
            rc = sq_error_set(err, SQ_ERR_IO, dst, NULL,
                              "rank %d's shard is not visible on rank 0: the output folder must "
                              "be on a file system every rank shares", r);
    }
    return rc;
}

/* rank 0: tmp -> out_dir (an existing out_dir, checked replaceable, goes away after) */
static sq_status rename_into_place(const sq_quantize_options *o, const char *tmp, int pid,
                                   sq_error *err) {
    char old[PATH_BYTES];
    snprintf(old, sizeof old, "%s.old.%d", o->out_dir, pid);
    bool exists = access(o->out_dir, F_OK) == 0;
    if (exists && rename(o->out_dir, old) != 0)
        return sq_error_set(err, SQ_ERR_IO, o->out_dir, NULL, "cannot move the old folder aside: %s",
                            strerror(errno));
    if (rename(tmp, o->out_dir) != 0) {
        int e = errno;
        if (exists) rename(old, o->out_dir);
        return sq_error_set(err, SQ_ERR_IO, o->out_dir, NULL, "cannot rename %s into place: %s",
                            tmp, strerror(e));
    }
    if (exists) rm_tree(old);
    return SQ_OK;
}

sq_status sq_quantize_run(MPI_Comm comm, const sq_quantize_options *o, sq_quantize_result *res,
                          sq_error *err) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (err) err->rank = rank;
    if (res) memset(res, 0, sizeof *res);
    sq_ckpt *st = NULL;
    sq_meta *meta = NULL;
    sq_plan *plan = NULL;
    sq_pool *pool = NULL;
    sq_st_writer *w = NULL;
    shard_ctx sc = {0};
    char tmp[PATH_BYTES] = "", shard_path[PATH_BYTES] = "";
    bool tmp_made = false, shard_done = false;
    int pid0 = (int)getpid();
    sq_log log = o ? o->log : (sq_log){0};

    sq_status rc = (!o || !o->model_dir || !o->out_dir)
                       ? sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "quantize: no model or --out")
                       : SQ_OK;
    if (rc == SQ_OK) rc = sq_ckpt_open(o->model_dir, &st, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* the skeleton: rank 0 reads config + headers, every rank gets the same bytes */
    rc = sq_meta_read_bcast(comm, 0, st, &meta, err);
    if (rc != SQ_OK) goto out;

    /* the scheme: a pre-quantized input keeps its own */
    sq_quant_scheme scheme = o->scheme, stored;
    if (scheme.blocksize <= 0) scheme.blocksize = 64;
    scheme.dense_dtype = sq_meta_config(meta)->torch_dtype;
    rc = sq_meta_stored_scheme(meta, &stored, err);
    bool prequant = rc == SQ_OK && stored.type != SQ_QUANT_NONE;
    if (prequant) {
        if (o->scheme_given && !sq_quant_scheme_equal(&stored, &scheme))
            rc = sq_error_set(err, SQ_ERR_INVALID, o->model_dir, NULL,
                              "already a bitsandbytes %s checkpoint (%s, blocksize %lld%s): its "
                              "weights are copied as stored; leave out --quant / --blocksize / "
                              "--double-quant or give the same values",
                              stored.type == SQ_QUANT_INT8 ? "8-bit" : "4-bit",
                              sq_quant_type_name(stored.type), (long long)stored.blocksize,
                              stored.double_quant ? ", double quant" : "");
        scheme = stored;
    }
    if (rc == SQ_OK && !prequant && sq_meta_n_stored_ggml(meta) > 0 && rank == 0)
        sq_logf(&log, SQ_LOG_WARN, "re-quantizing a GGUF's weights to %s compounds their "
                "quantization error (`shardq run` runs them as stored)",
                sq_quant_type_name(scheme.type));
    int qdev = -1;
    if (rc == SQ_OK && !prequant) rc = choose_quant_device(comm, rank, size, o, &qdev, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    rc = make_plan(comm, size, o, meta, &scheme, prequant, &plan, log, err);
    if (rc == SQ_OK && !prequant) {
        if (scheme.type != SQ_QUANT_NF4 && scheme.type != SQ_QUANT_FP4 && scheme.type != SQ_QUANT_INT8)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                              "quantize writes nf4, fp4 or int8 (bitsandbytes' formats), not %s",
                              sq_quant_type_name(scheme.type));
        else
            rc = sq_quant_scheme_check(&scheme, err);
    }
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* one temporary folder, named by rank 0 */
    if (MPI_Bcast(&pid0, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast failed");
    if (rc == SQ_OK && snprintf(tmp, sizeof tmp, "%s.tmp.%d", o->out_dir, pid0) >= (int)sizeof tmp - 64)
        rc = sq_error_set(err, SQ_ERR_INVALID, o->out_dir, NULL, "path too long");
    if (rc == SQ_OK && rank == 0) {
        rc = prepare_out(o, tmp, err);
        tmp_made = rc == SQ_OK;
    }
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    tmp_made = true;

    char shard_name[64];
    snprintf(shard_name, sizeof shard_name, "model-%05d-of-%05d.safetensors", rank + 1, size);
    join(shard_path, tmp, shard_name);
    rc = sq_st_writer_create(shard_path, &w, err);
    sc.w = w;
    if (rc == SQ_OK) rc = sq_st_writer_metadata(w, "format", "pt", err);
    if (rc == SQ_OK) rc = sq_pool_create(o->n_threads, &pool, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* every rank: its stage, into its shard */
    sq_load_options lo = sq_load_options_default();
    lo.scheme = scheme;
    lo.staging_bytes = o->staging_bytes;
    lo.pool = pool;
    lo.comm = comm;
    lo.progress = o->progress;
    lo.progress_user = o->progress_user;
    lo.progress_interval_s = o->progress_interval_s;
    lo.log = log;
    if (sq_quant_type_is_int8(scheme.type)) qdev = -1;   /* int8 is quantized on the CPU */
    lo.quant_device = qdev;
    lo.ggml_dense = true;   /* a safetensors folder holds no ggml blocks: their exact values */
    sq_load_stage_desc stage = sq_load_stage_from_plan(&plan->stages[rank]);
    sq_load_stats stats;
    double t0 = sq_now_s();
    rc = sq_load_stage(st, meta, &stage, &lo, consume, &sc, &stats, err);
    if (rc == SQ_OK) rc = sq_st_writer_finish(w, true, err);
    shard_done = rc == SQ_OK;
    double secs = sq_now_s() - t0;
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* figures and names to rank 0 */
    double mx[3] = {secs, (double)load_max_rss_bytes(), stats.seconds};
    double mx_all[3] = {secs, mx[1], mx[2]};
    uint64_t sm[4] = {stats.bytes_read, sc.bytes, sc.n_names, qdev >= 0},
             sm_all[4] = {sm[0], sm[1], sm[2], sm[3]};
    size_t blen = 0;
    for (size_t i = 0; i < sc.n_names; i++) blen += strlen(sc.names[i]) + 1;
    char *blob = malloc(blen ? blen : 1);
    int my_len = (int)blen, *lens = NULL, *displs = NULL;
    char *all = NULL;
    if (!blob || blen > (size_t)1 << 30) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    for (size_t i = 0, k = 0; blob && i < sc.n_names; i++) {
        size_t n = strlen(sc.names[i]) + 1;
        memcpy(blob + k, sc.names[i], n);
        k += n;
    }
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) {
        free(blob);
        goto out;
    }
    if (MPI_Allreduce(mx, mx_all, 3, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS ||
        MPI_Allreduce(sm, sm_all, 4, MPI_UINT64_T, MPI_SUM, comm) != MPI_SUCCESS)
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce failed");
    if (rank == 0) {
        lens = calloc((size_t)size, sizeof *lens);
        displs = calloc((size_t)size, sizeof *displs);
    }
    if (rc == SQ_OK &&
        MPI_Gather(&my_len, 1, MPI_INT, lens, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Gather failed");
    size_t total_len = 0;
    if (rank == 0 && rc == SQ_OK) {
        if (!lens || !displs) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
        for (int r = 0; rc == SQ_OK && r < size; r++) {
            displs[r] = (int)total_len;
            total_len += (size_t)lens[r];
        }
        all = malloc(total_len ? total_len : 1);
        if (rc == SQ_OK && (!all || total_len > (size_t)1 << 30))
            rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the index");
    }
    /* the Gatherv runs on every rank whatever rank 0 found, so nobody waits */
    int go = rc == SQ_OK, go_all = 0;
    MPI_Allreduce(&go, &go_all, 1, MPI_INT, MPI_MIN, comm);
    if (go_all && MPI_Gatherv(blob, my_len, MPI_CHAR, all, lens, displs, MPI_CHAR, 0, comm) !=
                      MPI_SUCCESS)
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Gatherv failed");
    if (!go_all && rc == SQ_OK) rc = sq_error_set(err, SQ_ERR_PEER, NULL, NULL, "a peer failed");
    free(blob);

    if (rank == 0 && rc == SQ_OK) {
        index_entry *e = malloc((sm_all[2] ? sm_all[2] : 1) * sizeof *e);
        char (*files)[64] = malloc((size_t)size * sizeof *files);
        size_t n_e = 0;
        if (!e || !files) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
        for (int r = 0; rc == SQ_OK && r < size; r++) {
            snprintf(files[r], sizeof files[r], "model-%05d-of-%05d.safetensors", r + 1, size);
            for (size_t k = (size_t)displs[r]; k < (size_t)displs[r] + (size_t)lens[r] && n_e < sm_all[2];) {
                e[n_e].name = all + k;
                e[n_e].file = files[r];
                n_e++;
                k += strlen(all + k) + 1;
            }
        }
        if (rc == SQ_OK)
            rc = write_folder_files(o, sq_meta_config(meta), tmp, size, &scheme, e, n_e,
                                    sm_all[1], err);
        if (rc == SQ_OK) rc = rename_into_place(o, tmp, pid0, err);
        if (rc == SQ_OK) tmp_made = false;
        free(e);
        free(files);
    }
    free(all);
    free(lens);
    free(displs);
    rc = agree(comm, rank, size, rc, err);
    if (rc == SQ_OK) {
        tmp_made = false;
        if (res) {
            res->n_ranks = size;
            res->n_tensors = (int)sm_all[2];
            res->total_size = sm_all[1];
            res->bytes_read = sm_all[0];
            res->seconds = mx_all[0];
            res->gbps = mx_all[0] > 0 ? (double)sm_all[0] / mx_all[0] / 1e9 : 0;
            res->load_seconds = mx_all[2];
            res->load_gbps = mx_all[2] > 0 ? (double)sm_all[0] / mx_all[2] / 1e9 : 0;
            res->prequantized = prequant;
            res->scheme = scheme;
            res->max_rss_bytes = (uint64_t)mx_all[1];
            res->cuda_ranks = (int)sm_all[3];
        }
    }

out:
    sq_st_writer_destroy(w);   /* removes its temporary if it was not renamed */
    if (rc != SQ_OK && shard_done) unlink(shard_path);
    if (rc != SQ_OK && rank == 0 && tmp_made) rm_tree(tmp);
    sq_pool_destroy(pool);
    for (size_t i = 0; i < sc.n_names; i++) free(sc.names[i]);
    free(sc.names);
    sq_plan_destroy(plan);
    sq_meta_destroy(meta);
    sq_ckpt_close(st);
    return rc;
}
