/* Owns sq_run: the phases of one `shardq run` on a communicator — skeleton broadcast, plan
 * (file or made for the ranks started), scheme, request checks, every rank's stage created and
 * loaded, the pipeline, and the results (tokens, figures, kept logits) gathered on rank 0.
 * Every phase before the pipeline ends with all ranks agreeing on the status, so bad input
 * fails everywhere with one line and no rank waits for a failed peer.  Must never print, exit,
 * or let a rank read another stage's tensors. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "shardq/plan.h"
#include "shardq/runtime.h"
#include "shardq/topology.h"
#include "shardq/transport.h"
#include "run_impl.h"

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

bool sq_run_backend_from_name(const char *s, sq_run_backend *out) {
    static const char *const names[] = {"auto", "cpu", "cuda"};
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *out = (sq_run_backend)i;
            return true;
        }
    return false;
}

bool sq_run_transport_from_name(const char *s, sq_run_transport *out) {
    static const char *const names[] = {"auto", "mpi", "nccl"};
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *out = (sq_run_transport)i;
            return true;
        }
    return false;
}

sq_run_options sq_run_options_default(void) {
    sq_run_options o;
    memset(&o, 0, sizeof o);
    o.scheme = sq_quant_scheme_default();
    o.max_new_tokens = 16;
    o.sample = (sq_sample_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    o.timeout_s = 30.0;
    o.stall_timeout_s = 120.0;
    o.device = -1;
    return o;
}

/* Reports a phase to o->on_phase.  Test hook: SHARDQ_TEST_STALL_PHASE=NAME (with
 * SHARDQ_TEST_STALL_RANK=R, else every rank) stops the rank for good on entering phase NAME, as a
 * rank stuck in a device call or a collective would be. */
static void phase(const sq_run_options *o, int rank, const char *name, bool watched) {
    if (o && o->on_phase) o->on_phase(o->phase_user, name, watched);
    const char *stall = getenv("SHARDQ_TEST_STALL_PHASE");
    if (!stall || strcmp(stall, name) != 0) return;
    const char *r = getenv("SHARDQ_TEST_STALL_RANK");
    if (r && *r && atoi(r) != rank) return;
    for (;;) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
}

void sq_run_result_destroy(sq_run_result *r) {
    if (!r) return;
    sq_pipeline_result_destroy(r->pipe);
    free(r->stages);
    free(r->logits);
    free(r->score_nll);
    free(r->score_nll2);
    free(r->score_n);
    free(r);
}

/* ---- agreement (blocking collectives: only before the pipeline, while every rank is in one
 * of the same calls; a rank that loads for minutes must not look dead to the others) ------- */

static sq_status agree(MPI_Comm comm, int rank, int size, sq_status local, sq_error *err) {
    if (size == 1) return local;
    int mine = local == SQ_OK ? size : rank, first = size;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce failed agreeing on status");
    if (first == size) return SQ_OK;
    sq_error copy;
    memset(&copy, 0, sizeof copy);
    if (rank == first && err) copy = *err;
    if (MPI_Bcast(&copy, (int)sizeof copy, MPI_BYTE, first, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast failed agreeing on status");
    copy.msg[sizeof copy.msg - 1] = copy.file[sizeof copy.file - 1] = '\0';
    copy.tensor[sizeof copy.tensor - 1] = '\0';
    if (copy.code == SQ_OK) copy.code = SQ_ERR_PEER;
    copy.rank = first;
    if (err) *err = copy;
    return copy.code;
}

/* ---- backend, device and transport -------------------------------------------------------------- */

typedef struct exec_choice {
    bool cuda, nccl;
    int device;                   /* CUDA device of this rank; -1 with cpu */
    int local_rank, local_size;   /* among the ranks of this node (shared-memory domain) */
    int n_dev;                    /* CUDA devices this rank sees (0 without CUDA) */
} exec_choice;

static int cuda_device_count(void) {
#ifdef SHARDQ_HAVE_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();   /* no driver / no device: not sticky, but keep it clean */
        n = 0;
    }
    return n > 0 ? n : 0;
#else
    return 0;
#endif
}

/* Collective: every rank reaches the same backend and transport (see runtime.h), or every rank
 * fails with the lowest failing rank's line.  Reads no file and touches no GPU beyond counting. */
static sq_status choose_exec(MPI_Comm comm, int rank, int size, const sq_run_options *o,
                             exec_choice *x, sq_error *err) {
    memset(x, 0, sizeof *x);
    x->device = -1;
    x->local_size = 1;
    sq_status rc = SQ_OK;
    MPI_Comm node = MPI_COMM_NULL;
    if (size > 1) {
        if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) != MPI_SUCCESS ||
            MPI_Comm_rank(node, &x->local_rank) != MPI_SUCCESS ||
            MPI_Comm_size(node, &x->local_size) != MPI_SUCCESS)
            rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Comm_split_type (ranks of this node) failed");
        if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
    }
    x->n_dev = cuda_device_count();
#ifdef SHARDQ_HAVE_CUDA
    const bool built = true;
#else
    const bool built = false;
#endif
    /* 1. the backend */
    int has_dev = x->n_dev > 0, all_dev = has_dev;
    if (size > 1 && MPI_Allreduce(&has_dev, &all_dev, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce of the CUDA device counts failed");
    if (o->backend == SQ_RUN_BACKEND_CUDA) {
        if (!built)
            rc = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                              "--backend cuda: this shardq was built without CUDA (configure with "
                              "-DSHARDQ_CUDA=ON where nvcc and NCCL are found), use --backend cpu");
        else if (!has_dev)
            rc = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                              "--backend cuda: no CUDA device on this rank's machine, use --backend cpu");
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
        x->cuda = true;
    } else {
        x->cuda = o->backend == SQ_RUN_BACKEND_AUTO && built && all_dev;
    }
    /* 2. the device: local rank mod device count, or the one asked for */
    if (o->device >= 0 && !x->cuda) {
        if (o->backend == SQ_RUN_BACKEND_CPU)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--device %d goes with the cuda backend, not --backend cpu",
                              o->device);
        else if (rank == 0)
            sq_logf(&o->log, SQ_LOG_WARN, "--device %d ignored: %s, so the run uses the cpu backend",
                    o->device, built ? "not every rank has a CUDA device" : "this shardq was built without CUDA");
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
    }
    if (x->cuda) {
        if (o->device >= 0 && o->device >= x->n_dev)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--device %d: this rank's machine has %d CUDA device%s",
                              o->device, x->n_dev, x->n_dev == 1 ? "" : "s");
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
        x->device = o->device >= 0 ? o->device : x->local_rank % x->n_dev;
    }
    /* 3. the transport: nccl needs one GPU per rank, placed where the nccl transport puts it */
    bool alone = !x->cuda || (x->local_size <= x->n_dev && x->device == x->local_rank % x->n_dev);
    int shares = !alone, any_shares = shares;
    if (size > 1 && MPI_Allreduce(&shares, &any_shares, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce of GPU sharing failed");
    if (o->transport == SQ_RUN_TRANSPORT_NCCL) {
        if (!x->cuda)
            rc = sq_error_set(err, built ? SQ_ERR_INVALID : SQ_ERR_UNSUPPORTED, NULL, NULL,
                              "--transport nccl moves activations in GPU memory: it needs the cuda "
                              "backend (this run uses cpu%s), use --transport mpi",
                              !built ? ": this shardq was built without CUDA and NCCL"
                              : o->backend == SQ_RUN_BACKEND_CPU ? "" : ": not every rank has a GPU");
        else if (x->local_size > x->n_dev)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                              "--transport nccl: %d ranks on this node share its %d GPU%s and one NCCL "
                              "communicator cannot hold two ranks of one GPU, use --transport mpi",
                              x->local_size, x->n_dev, x->n_dev == 1 ? "" : "s");
        else if (shares)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                              "--transport nccl puts this rank on GPU %d (local rank %d mod %d GPUs), "
                              "not --device %d: leave out --device or use --transport mpi",
                              x->local_rank % x->n_dev, x->local_rank, x->n_dev, x->device);
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
        x->nccl = true;
    } else {
        x->nccl = o->transport == SQ_RUN_TRANSPORT_AUTO && x->cuda && !any_shares;
    }
    return SQ_OK;
}

/* The local machine's record as the plan should see it: no GPUs on the cpu backend; on cuda,
 * one GPU entry per rank of this node (the GPU it uses), a shared GPU's memory divided among
 * the ranks on it, so that several ranks may share one GPU. */
static void node_for_exec(sq_node_info *node, const exec_choice *x, int explicit_device) {
    if (!x->cuda || node->n_gpus <= 0) {
        node->n_gpus = 0;
        memset(node->gpus, 0, sizeof node->gpus);
        return;
    }
    int n = x->local_size < SQ_TOPO_MAX_GPUS ? x->local_size : SQ_TOPO_MAX_GPUS;
    int n_phys = node->n_gpus < x->n_dev ? node->n_gpus : x->n_dev;
    if (n_phys <= 0) n_phys = node->n_gpus;
    sq_gpu_info orig[SQ_TOPO_MAX_GPUS];
    memcpy(orig, node->gpus, sizeof orig);
    memset(node->gpus, 0, sizeof node->gpus);
    for (int i = 0; i < n; i++) {
        int g = explicit_device >= 0 ? explicit_device : i % n_phys;
        if (g >= node->n_gpus) g = node->n_gpus - 1;
        int sharing = 0;
        for (int j = 0; j < x->local_size; j++)
            sharing += (explicit_device >= 0 ? explicit_device : j % n_phys) == g;
        node->gpus[i] = orig[g];
        node->gpus[i].memory_bytes /= (uint64_t)(sharing > 0 ? sharing : 1);
        node->gpus[i].free_bytes /= (uint64_t)(sharing > 0 ? sharing : 1);
    }
    node->n_gpus = n;
}

/* ---- plan ------------------------------------------------------------------------------------ */

/* A plan file: it must be for this model (hash of the skeleton `shardq plan` builds from this
 * folder's config.json, or of the validated one) and for this many ranks. */
static sq_status read_plan(const char *path, const sq_meta *m, int size, sq_plan **out,
                           sq_error *err) {
    sq_plan *p = NULL;
    sq_status rc = sq_plan_read_file(path, &p, err);
    if (rc != SQ_OK) return rc;
    const sq_model_config *cfg = sq_meta_config(m);
    sq_meta *plain = NULL;
    uint64_t h_plain = 0;
    if (sq_meta_create(cfg, &plain, NULL) == SQ_OK) h_plain = sq_meta_hash(plain);
    sq_meta_destroy(plain);
    if (p->n_layers != cfg->n_layers || (p->model_hash != sq_meta_hash(m) && p->model_hash != h_plain))
        rc = sq_error_set(err, SQ_ERR_INVALID, path, NULL,
                          "the plan is for another model ('%s', %d layers, skeleton hash %016llx; "
                          "this one has %lld layers, hash %016llx): make one with "
                          "'shardq plan MODEL_DIR ... --out FILE'", p->model_name, p->n_layers,
                          (unsigned long long)p->model_hash, (long long)cfg->n_layers,
                          (unsigned long long)h_plain);
    else if (p->n_stages != size)
        rc = sq_error_set(err, SQ_ERR_INVALID, path, NULL,
                          "the plan has %d stages but %d ranks were started (run it with "
                          "mpirun -np %d, or plan for %d)", p->n_stages, size, p->n_stages, size);
    if (rc != SQ_OK) {
        sq_plan_destroy(p);
        return rc;
    }
    *out = p;
    return SQ_OK;
}

/* --discover semantics: every rank is a device (its GPU, or its share of host memory). */
static sq_status make_plan(MPI_Comm comm, int size, const sq_meta *m, const sq_quant_scheme *s,
                           int64_t max_seq, int64_t batch, const exec_choice *x,
                           int explicit_device, sq_plan **out, sq_error *err) {
    sq_node_info node;
    sq_status rc = sq_topo_discover(NULL, &node, err);
    if (rc == SQ_OK) node_for_exec(&node, x, explicit_device);
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) return rc;
    sq_cluster *cluster = NULL;
    if (size > 1) rc = sq_cluster_gather(comm, &node, &cluster, err);
    else rc = sq_cluster_from_node(&node, &cluster, err);
    if (rc != SQ_OK) return rc;
    sq_plan_options po = sq_plan_options_default();
    po.max_seq = max_seq;
    po.batch = batch;
    rc = sq_plan_make(m, s, cluster, &po, out, err);
    sq_cluster_destroy(cluster);
    return rc;
}

/* ---- the request ----------------------------------------------------------------------------- */

typedef struct req_shape {
    int64_t n_seqs, max_new, n_micro, total_tokens, max_seq, n_eos;
    int32_t eos[SQ_MAX_EOS_IDS + 8];
} req_shape;

#define MAX_EXTRA_EOS 8

static int64_t round_up16(int64_t x) { return (x + 15) / 16 * 16; }

/* Rank 0: checks the request against the model and the plan file, and decides max_seq. */
static sq_status check_request(const sq_run_options *o, const sq_model_config *cfg,
                               const sq_plan *plan_file, req_shape *sh, sq_error *err) {
    memset(sh, 0, sizeof *sh);
    if (o->n_seqs < 1 || !o->prompts || !o->prompt_lens)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no prompt given");
    if (o->n_seqs > (1 << 16))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "%d sequences (at most 65536)", o->n_seqs);
    if (o->max_new_tokens < 1 || o->max_new_tokens > (1 << 24))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "max-new-tokens %d (must be 1..16777216)", o->max_new_tokens);
    if (o->n_micro_batches < 0 || o->n_micro_batches > o->n_seqs)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "%d micro-batches for %d sequence%s (must be 1..%d, or 0 for automatic)",
                            o->n_micro_batches, o->n_seqs, o->n_seqs == 1 ? "" : "s", o->n_seqs);
    int64_t need = 0, total = 0;
    int32_t need_seq = 0;
    for (int32_t i = 0; i < o->n_seqs; i++) {
        int32_t L = o->prompt_lens[i];
        if (L <= 0 || !o->prompts[i])
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "sequence %d: empty prompt", i);
        for (int32_t j = 0; j < L; j++)
            if (o->prompts[i][j] < 0 || o->prompts[i][j] >= cfg->vocab_size)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "sequence %d: token id %d at position %d is outside the "
                                    "model's vocabulary [0, %lld)", i, o->prompts[i][j], j,
                                    (long long)cfg->vocab_size);
        total += L;
        if ((int64_t)L + o->max_new_tokens > need) {
            need = (int64_t)L + o->max_new_tokens;
            need_seq = i;
        }
    }
    int64_t L = need - o->max_new_tokens;
    int64_t max_pos = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : INT64_C(1) << 24;
    int64_t max_seq;
    if (plan_file) {
        if (need > plan_file->max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "sequence %d: prompt of %lld tokens + max-new-tokens %d = %lld "
                                "exceeds the plan's max_seq %lld", need_seq, (long long)L,
                                o->max_new_tokens, (long long)need, (long long)plan_file->max_seq);
        if (o->max_seq > plan_file->max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "--max-seq %lld exceeds the plan's max_seq %lld",
                                (long long)o->max_seq, (long long)plan_file->max_seq);
        max_pos = plan_file->max_seq;
    }
    if (o->max_seq > 0) {
        if (o->max_seq > max_pos)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "--max-seq %lld exceeds max_position_embeddings %lld",
                                (long long)o->max_seq, (long long)max_pos);
        if (need > o->max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "sequence %d: prompt of %lld tokens + max-new-tokens %d = %lld "
                                "exceeds --max-seq %lld", need_seq, (long long)L,
                                o->max_new_tokens, (long long)need, (long long)o->max_seq);
        max_seq = o->max_seq;
    } else {
        if (need > max_pos)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "sequence %d: prompt of %lld tokens + max-new-tokens %d = %lld "
                                "exceeds max_position_embeddings %lld", need_seq, (long long)L,
                                o->max_new_tokens, (long long)need, (long long)max_pos);
        max_seq = round_up16(need) < max_pos ? round_up16(need) : max_pos;
    }
    if (plan_file && (uint64_t)o->n_seqs * (uint64_t)max_seq >
                         (uint64_t)plan_file->batch * (uint64_t)plan_file->max_seq)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "%d sequences x max_seq %lld need a KV cache of %llu tokens; the plan "
                            "reserved %lld x %lld (re-plan with --batch / --max-seq)", o->n_seqs,
                            (long long)max_seq, (unsigned long long)o->n_seqs * (uint64_t)max_seq,
                            (long long)plan_file->batch, (long long)plan_file->max_seq);
    /* ids that end a sequence: the config's, then the caller's (chat stop) */
    int n_eos = 0;
    if (!o->ignore_eos) {
        for (int e = 0; e < cfg->n_eos; e++)
            if (cfg->eos_token_ids[e] >= 0 && cfg->eos_token_ids[e] < cfg->vocab_size)
                sh->eos[n_eos++] = (int32_t)cfg->eos_token_ids[e];
        if (o->n_extra_eos < 0 || o->n_extra_eos > MAX_EXTRA_EOS || (o->n_extra_eos && !o->extra_eos))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "%d extra EOS ids (at most %d)",
                                o->n_extra_eos, MAX_EXTRA_EOS);
        for (int e = 0; e < o->n_extra_eos; e++) {
            if (o->extra_eos[e] < 0 || o->extra_eos[e] >= cfg->vocab_size)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "stop id %d is outside the model's vocabulary [0, %lld)",
                                    o->extra_eos[e], (long long)cfg->vocab_size);
            sh->eos[n_eos++] = o->extra_eos[e];
        }
    }
    sh->n_seqs = o->n_seqs;
    sh->max_new = o->max_new_tokens;
    sh->n_micro = o->n_micro_batches;
    sh->total_tokens = total;
    sh->max_seq = max_seq;
    sh->n_eos = n_eos;
    return SQ_OK;
}

/* Cores this rank may use: the node's (its affinity mask) divided among the ranks on it. */
static int default_threads(MPI_Comm comm) {
    cpu_set_t set;
    int cores = 1;
    if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
    else cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int local = 1;
    MPI_Comm node = MPI_COMM_NULL;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &local);
        MPI_Comm_free(&node);
    }
    int n = cores / (local > 0 ? local : 1);
    return n > 0 ? n : 1;
}

/* ---- the run --------------------------------------------------------------------------------- */

sq_status sq_run(MPI_Comm comm, const sq_run_options *o, sq_run_result **out, bool *must_abort,
                 sq_error *err) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (out) *out = NULL;
    if (must_abort) *must_abort = false;
    if (err) err->rank = rank;
    sq_log log = o ? o->log : (sq_log){0};
    sq_ckpt *st = NULL;
    sq_meta *meta = NULL;
    sq_plan *plan = NULL;
    sq_backend *be = NULL;
    sq_stage *stage = NULL;
    sq_runtime_compute *rcomp = NULL;
    sq_transport *tr = NULL;
    sq_pipeline_result *pres = NULL;
    sq_run_result *res = NULL;
    sq_run_stage_info *infos = NULL;
    float *logits_all = NULL;
    int32_t *kept_n = NULL;
    int32_t *sc_lens = NULL, *sc_ids = NULL;   /* scoring: the prompts on every rank */
    int32_t **sc_prompts = NULL;
    double *sc_sums = NULL;                     /* (3, n_seqs): nll, nll^2, count */
    bool plan_file = false;

    sq_status rc = (!o || !o->model_dir) ? sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "run: no model folder")
                                         : SQ_OK;
    if (rc == SQ_OK && rank == 0 && !out)
        rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "run: no place for the result on rank 0");
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    /* 0. backend, device and transport: agreed before any file is read */
    exec_choice ex;
    phase(o, rank, "agreeing on the backend and transport", true);
    if ((rc = choose_exec(comm, rank, size, o, &ex, err)) != SQ_OK) goto out;
    /* 1. the skeleton: every rank opens the files (its loader reads through them); rank 0
     * reads config.json and checks the headers; every rank gets the same skeleton */
    phase(o, rank, "reading the model's skeleton", true);
    if (rc == SQ_OK) rc = sq_ckpt_open(o->model_dir, &st, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    rc = sq_meta_read_bcast(comm, 0, st, &meta, err);
    if (rc != SQ_OK) goto out;
    const sq_model_config *cfg = sq_meta_config(meta);

    /* 2. a plan file (every rank reads it: it must be where every rank sees it) */
    if (o->plan_path) {
        rc = read_plan(o->plan_path, meta, size, &plan, err);
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
        plan_file = true;
    }

    /* 3. the scheme: the user's, else a plan file's; a bnb folder keeps its own */
    sq_quant_scheme scheme = o->scheme, stored;
    if (!o->scheme_given && plan) scheme = plan->scheme;
    if (scheme.blocksize <= 0) scheme.blocksize = 64;
    scheme.dense_dtype = cfg->torch_dtype;
    rc = sq_meta_stored_scheme(meta, &stored, err);
    bool prequant = rc == SQ_OK && stored.type != SQ_QUANT_NONE;
    if (prequant) {
        bool dequant = o->scheme_given && o->scheme.type == SQ_QUANT_NONE;
        if (o->scheme_given && !dequant && !sq_quant_scheme_equal(&stored, &o->scheme))
            rc = sq_error_set(err, SQ_ERR_INVALID, o->model_dir, NULL,
                              "a bitsandbytes %s checkpoint (%s, blocksize %lld%s): its weights "
                              "run as stored; leave out --quant / --blocksize / --double-quant, "
                              "give the same values, or --quant none to dequantize",
                              stored.type == SQ_QUANT_INT8 ? "8-bit" : "4-bit",
                              sq_quant_type_name(stored.type), (long long)stored.blocksize,
                              stored.double_quant ? ", double quant" : "");
        if (!dequant) scheme = stored;
        else scheme.type = SQ_QUANT_NONE;
    }
    /* weights stored in ggml block formats (a GGUF) run as stored unless the user asks for
     * NF4 / FP4, which re-quantizes their exact values (and compounds the rounding) */
    if (rc == SQ_OK && !prequant && sq_meta_n_stored_ggml(meta) > 0) {
        if (!o->scheme_given) scheme.type = SQ_QUANT_NONE;
        else if (scheme.type != SQ_QUANT_NONE && rank == 0)
            sq_logf(&log, SQ_LOG_WARN, "re-quantizing a GGUF's weights to %s compounds their "
                    "quantization error (leave out --quant to run them as stored)",
                    sq_quant_type_name(scheme.type));
    }
    if (rc == SQ_OK && scheme.type != SQ_QUANT_NONE) rc = sq_quant_scheme_check(&scheme, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* 4. the request: checked on rank 0, its shape to everyone */
    req_shape sh;
    memset(&sh, 0, sizeof sh);
    if (rank == 0) rc = check_request(o, cfg, plan, &sh, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    if (size > 1 && MPI_Bcast(&sh, (int)sizeof sh, MPI_BYTE, 0, comm) != MPI_SUCCESS) {
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast of the request's shape failed");
        goto out;
    }

    /* 4b. scoring: every prompt scores itself on the last stage, which needs the prompts */
    if (o->score) {
        if (rank == 0 && sh.max_new != 1)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                              "scoring prompts needs max-new-tokens 1 (not %lld)", (long long)sh.max_new);
        if (rc == SQ_OK && o->score_from < 0)
            rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "scoring from position %d", o->score_from);
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
        sc_lens = malloc((size_t)sh.n_seqs * sizeof *sc_lens);
        sc_ids = malloc((size_t)sh.total_tokens * sizeof *sc_ids);
        sc_prompts = malloc((size_t)sh.n_seqs * sizeof *sc_prompts);
        if (!sc_lens || !sc_ids || !sc_prompts)
            rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the scored prompts");
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
        if (rank == 0) {
            int64_t at = 0;
            for (int64_t i = 0; i < sh.n_seqs; i++) {
                sc_lens[i] = o->prompt_lens[i];
                memcpy(sc_ids + at, o->prompts[i], (size_t)sc_lens[i] * sizeof *sc_ids);
                at += sc_lens[i];
            }
        }
        if (size > 1 && (MPI_Bcast(sc_lens, (int)sh.n_seqs, MPI_INT32_T, 0, comm) != MPI_SUCCESS ||
                         MPI_Bcast(sc_ids, (int)sh.total_tokens, MPI_INT32_T, 0, comm) != MPI_SUCCESS)) {
            rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast of the scored prompts failed");
            goto out;
        }
        int64_t at = 0;
        for (int64_t i = 0; i < sh.n_seqs; i++) {
            sc_prompts[i] = sc_ids + at;
            at += sc_lens[i];
        }
    }

    /* 5. no plan file: plan for the ranks started */
    phase(o, rank, "planning", true);
    if (!plan) {
        rc = make_plan(comm, size, meta, &scheme, sh.max_seq, sh.n_seqs, &ex, o->device, &plan, err);
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    }
    if (plan->n_stages != size) {   /* made for the ranks of comm: a bug if not */
        rc = sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "plan has %d stages for %d ranks",
                          plan->n_stages, size);
        goto out;
    }

    /* 6. this rank's stage: backend, run state (allocated before any weight) */
    phase(o, rank, "creating the backend and the run state", true);
    int n_threads = o->n_threads > 0 ? o->n_threads : default_threads(comm);
    sq_runtime_stage_params sp;
    memset(&sp, 0, sizeof sp);
    sp.stage = sq_load_stage_from_plan(&plan->stages[rank]);
    sp.scheme = scheme;
    sp.max_seq = sh.max_seq;
    sp.max_batch = sh.n_seqs;
    sp.max_tokens = sh.total_tokens > sh.n_seqs ? sh.total_tokens : sh.n_seqs;
    if (o->serve && o->max_tokens > sp.max_tokens) sp.max_tokens = o->max_tokens;
    sp.max_logit_rows = sh.n_seqs;
    if (o->score && sp.max_logit_rows < SQ_SCORE_ROWS) sp.max_logit_rows = SQ_SCORE_ROWS;
    sp.n_threads = n_threads;
    sp.comm = size > 1 ? comm : MPI_COMM_NULL;
    if (rank == 0) {
        sp.progress = o->progress;
        sp.progress_user = o->progress_user;
    }
    sp.progress_interval_s = o->progress_interval_s;
    sp.log = log;
    sp.quant_on_device = ex.cuda;   /* the cuda backend: 4-bit weights quantized on its GPU */
    sp.quant_device = ex.device;
    sp.trace = o->trace;
    if (ex.cuda && o->activations == SQ_CPU_ACT_INT8) {
        rc = sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                          "--activations int8 is for the cpu backend (this run uses cuda)");
    } else if (ex.cuda) {
#ifdef SHARDQ_HAVE_CUDA
        rc = sq_backend_create_cuda(ex.device, &be, err);
#else
        rc = sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "cuda chosen in a build without CUDA");
#endif
    } else {
        rc = sq_backend_create_cpu(n_threads, &be, err);
        if (rc == SQ_OK) rc = sq_backend_cpu_set_activations(be, o->activations, err);
    }
    if (rc == SQ_OK) rc = sq_runtime_create_stage(be, meta, &sp, &stage, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* 7. every rank loads its own stage */
    phase(o, rank, "loading the weights", false);
    sq_load_stats ls;
    memset(&ls, 0, sizeof ls);
    double t0 = sq_now_s();
    rc = sq_runtime_load_weights(stage, st, meta, &sp, &ls, err);
    double load_s = sq_now_s() - t0;
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    sq_ckpt_close(st);   /* the weights are in the stage now */
    st = NULL;

    /* 8. the adapter (+ kept logits), the receive buffer for them, then the transport */
    phase(o, rank, "bringing up the transport", true);
    sq_runtime_compute_params cp = {.sample = o->sample, .n_seqs = (int32_t)sh.n_seqs,
                                    .max_new_tokens = (int32_t)sh.max_new,
                                    .keep_logits = o->keep_logits,
                                    .on_token = rank == 0 ? o->on_token : NULL,
                                    .token_user = o->token_user,
                                    .score_prompts = o->score ? (const int32_t *const *)sc_prompts : NULL,
                                    .score_lens = sc_lens,
                                    .score_from = o->score_from};
    rc = sq_runtime_compute_create(stage, &cp, &rcomp, err);
    uint64_t n_keep = (uint64_t)sh.n_seqs * (uint64_t)sh.max_new * (uint64_t)cfg->vocab_size;
    if (rc == SQ_OK && rank == 0 && o->keep_logits) {
        logits_all = malloc((size_t)n_keep * sizeof(float));
        kept_n = calloc((size_t)sh.n_seqs, sizeof *kept_n);
        if (!logits_all || !kept_n)
            rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the kept logits");
    }
    infos = calloc((size_t)size, sizeof *infos);
    if (rc == SQ_OK && !infos) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    sq_run_stage_info mine = {.rank = rank, .first_layer = sp.stage.first_layer,
                              .n_layers = sp.stage.n_layers, .has_embed = sp.stage.has_embed,
                              .has_head = sp.stage.has_head, .device = ex.device,
                              .weight_bytes = sq_stage_weight_bytes(stage),
                              .state_bytes = sq_stage_state_bytes(stage), .load_s = load_s,
                              .bytes_read = ls.bytes_read};
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) mine.max_rss_bytes = (uint64_t)ru.ru_maxrss * 1024u;
    uint64_t bytes_read = ls.bytes_read, bytes_all = bytes_read;
    if (size > 1) {
        if (MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, infos, (int)sizeof mine, MPI_BYTE, 0,
                       comm) != MPI_SUCCESS ||
            MPI_Reduce(&bytes_read, &bytes_all, 1, MPI_UINT64_T, MPI_SUM, 0, comm) != MPI_SUCCESS)
            rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "gathering the stages' figures failed");
    } else {
        infos[0] = mine;
    }
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    sq_transport_params tp = sq_transport_params_default();
    tp.kind = ex.nccl ? SQ_TRANSPORT_NCCL : SQ_TRANSPORT_MPI;
    tp.comm = comm;
    tp.device = ex.device;   /* nccl joins on the backend's GPU, never one of its own choosing */
    tp.timeout_s = o->timeout_s > 0 ? o->timeout_s : 30.0;
    tp.log = log;
    rc = sq_transport_create(&tp, &tr, err);
    if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;

    /* 9. serving: the hook takes over the loaded stages (src/runtime/serve_hook.c) */
    phase(o, rank, o->serve ? "serving" : "generating", false);
    if (o->serve) {
        rc = sq_run_call_serve(comm, o, tr, stage, cfg, infos, be, ex.nccl, load_s, sh.n_seqs, sh.max_seq,
                               sp.max_tokens, sh.eos, (int32_t)sh.n_eos, err);
        if (rc != SQ_OK && must_abort) *must_abort = size > 1;
        goto out;
    }

    /* 9. generation */
    const int32_t *eos = sh.eos;
    sq_pipeline_request req = {.n_seqs = (int32_t)sh.n_seqs, .prompts = o->prompts,
                               .prompt_lens = o->prompt_lens, .max_new_tokens = NULL,
                               .eos_ids = sh.n_eos ? eos : NULL, .n_eos = (int32_t)sh.n_eos};
    int32_t *max_new = NULL;
    if (rank == 0) {
        max_new = malloc((size_t)sh.n_seqs * sizeof *max_new);
        for (int64_t i = 0; max_new && i < sh.n_seqs; i++) max_new[i] = (int32_t)sh.max_new;
        req.max_new_tokens = max_new;
    }
    sq_pipeline_params pp = {.n_micro_batches = (int32_t)sh.n_micro, .log = log, .trace = o->trace};
    rc = sq_pipeline_run(tr, sq_runtime_compute_get(rcomp), &pp, rank == 0 ? &req : NULL, &pres,
                         err);
    free(max_new);
    if (rc != SQ_OK) {
        if (must_abort) *must_abort = size > 1;
        goto out;
    }

    /* 10. kept logits to rank 0 (every rank is alive and past its last transfer) */
    if (o->keep_logits) {
        int last = size - 1;
        if (size == 1) {
            for (int32_t s = 0; s < (int32_t)sh.n_seqs; s++) {
                int32_t n = 0;
                const float *src = sq_runtime_compute_logits(rcomp, s, &n);
                kept_n[s] = n;
                memcpy(logits_all + (size_t)s * (size_t)sh.max_new * (size_t)cfg->vocab_size, src,
                       (size_t)n * (size_t)cfg->vocab_size * sizeof(float));
            }
        } else if (rank == last) {
            int32_t *n = malloc((size_t)sh.n_seqs * sizeof *n);
            const float *base = sq_runtime_compute_logits(rcomp, 0, NULL);
            int mrc = MPI_ERR_OTHER;
            if (n) {
                for (int32_t s = 0; s < (int32_t)sh.n_seqs; s++) sq_runtime_compute_logits(rcomp, s, &n[s]);
                mrc = MPI_Send(n, (int)sh.n_seqs, MPI_INT32_T, 0, 7001, comm);
                if (mrc == MPI_SUCCESS) mrc = MPI_Send(base, (int)n_keep, MPI_FLOAT, 0, 7002, comm);
            }
            free(n);
            if (mrc != MPI_SUCCESS) rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "sending the kept logits to rank 0 failed");
        } else if (rank == 0) {
            if (MPI_Recv(kept_n, (int)sh.n_seqs, MPI_INT32_T, last, 7001, comm, MPI_STATUS_IGNORE) != MPI_SUCCESS ||
                MPI_Recv(logits_all, (int)n_keep, MPI_FLOAT, last, 7002, comm, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "receiving the kept logits from rank %d failed", last);
        }
        if (rc == SQ_OK && rank == 0) {   /* compact to the tokens generated, in order */
            size_t V = (size_t)cfg->vocab_size, dst = 0;
            for (int32_t s = 0; s < (int32_t)sh.n_seqs && rc == SQ_OK; s++) {
                if (kept_n[s] != pres->n_tokens[s]) {
                    rc = sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                                      "sequence %d: %d logit rows kept for %d tokens", s, kept_n[s],
                                      pres->n_tokens[s]);
                    break;
                }
                memmove(logits_all + dst * V, logits_all + (size_t)s * (size_t)sh.max_new * V,
                        (size_t)kept_n[s] * V * sizeof(float));
                dst += (size_t)kept_n[s];
            }
        }
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    }

    /* 10b. the scores to rank 0 */
    if (o->score) {
        int last = size - 1;
        size_t n = (size_t)sh.n_seqs;
        sc_sums = calloc(3 * n, sizeof *sc_sums);
        if (!sc_sums) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the scores");
        if (rc == SQ_OK && rank == last) {
            for (int32_t s = 0; s < (int32_t)n && rc == SQ_OK; s++) {
                int64_t k = 0;
                rc = sq_runtime_compute_score(rcomp, s, &sc_sums[s], &sc_sums[n + (size_t)s], &k, err);
                sc_sums[2 * n + (size_t)s] = (double)k;
            }
        }
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
        if (size > 1 && MPI_Bcast(sc_sums, (int)(3 * n), MPI_DOUBLE, last, comm) != MPI_SUCCESS)
            rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "sending the scores to rank 0 failed");
        if ((rc = agree(comm, rank, size, rc, err)) != SQ_OK) goto out;
    }

    /* 11. the result */
    double load_max = load_s;
    if (size > 1 && MPI_Reduce(&load_s, &load_max, 1, MPI_DOUBLE, MPI_MAX, 0, comm) != MPI_SUCCESS)
        rc = sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Reduce failed");
    if (rc == SQ_OK && rank == 0) {
        res = calloc(1, sizeof *res);
        if (!res) {
            rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the result");
        } else {
            res->pipe = pres;
            pres = NULL;
            res->cfg = *cfg;
            res->scheme = scheme;
            res->prequantized = prequant;
            res->ggml_stored = scheme.type == SQ_QUANT_NONE && sq_meta_n_stored_ggml(meta) > 0;
            res->plan_from_file = plan_file;
            res->n_ranks = size;
            res->max_seq = sh.max_seq;
            res->load_s = load_max;
            res->bytes_read = bytes_all;
            res->stages = infos;
            infos = NULL;
            snprintf(res->backend, sizeof res->backend, "%s", sq_backend_name(be));
            snprintf(res->backend_kind, sizeof res->backend_kind, "%s", ex.cuda ? "cuda" : "cpu");
            snprintf(res->transport, sizeof res->transport, "%s", ex.nccl ? "nccl" : "mpi");
            res->n_threads = n_threads;
            res->logits = logits_all;
            logits_all = NULL;
            if (sc_sums) {
                size_t n = (size_t)sh.n_seqs;
                res->score_nll = malloc(n * sizeof(double));
                res->score_nll2 = malloc(n * sizeof(double));
                res->score_n = malloc(n * sizeof(int64_t));
                if (!res->score_nll || !res->score_nll2 || !res->score_n) {
                    rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the result");
                } else {
                    for (size_t i = 0; i < n; i++) {
                        res->score_nll[i] = sc_sums[i];
                        res->score_nll2[i] = sc_sums[n + i];
                        res->score_n[i] = (int64_t)sc_sums[2 * n + i];
                    }
                }
            }
            *out = res;
        }
    }
    rc = agree(comm, rank, size, rc, err);
    if (rc != SQ_OK && rank == 0 && out && *out) {
        sq_run_result_destroy(*out);
        *out = NULL;
    }

out:
    phase(o, rank, "tearing down", true);
    sq_transport_destroy(tr);
    sq_pipeline_result_destroy(pres);
    sq_runtime_compute_destroy(rcomp);
    sq_stage_destroy(stage);
    sq_backend_destroy(be);
    sq_plan_destroy(plan);
    sq_meta_destroy(meta);
    sq_ckpt_close(st);
    free(infos);
    free(logits_all);
    free(kept_n);
    free(sc_lens);
    free(sc_ids);
    free(sc_prompts);
    free(sc_sums);
    return rc;
}

/* ---- the logits dump --------------------------------------------------------------------------- */

static bool put_u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return fwrite(b, 1, 4, f) == 4;
}

sq_status sq_runtime_write_logits(const sq_run_result *r, const char *path, sq_error *err) {
    if (!r || !r->pipe || !path)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "logits dump: nothing to write");
    if (!r->logits)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "logits dump: the run kept no logits");
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, tmp, NULL, "cannot create the logits dump");
    const sq_pipeline_result *p = r->pipe;
    uint32_t V = (uint32_t)r->cfg.vocab_size;
    bool ok = fwrite("SQLOGIT1", 1, 8, f) == 8 && put_u32(f, (uint32_t)p->n_seqs) && put_u32(f, V);
    uint64_t rows = 0;
    for (int32_t s = 0; ok && s < p->n_seqs; s++) {
        ok = put_u32(f, (uint32_t)p->n_tokens[s]);
        rows += (uint64_t)p->n_tokens[s];
    }
    /* float32 little-endian: the host's bytes on a little-endian host, swapped otherwise */
    const float *x = r->logits;
    for (uint64_t i = 0; ok && i < rows * V; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        ok = put_u32(f, u);
    }
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "writing the logits dump failed");
    }
    return SQ_OK;
}
