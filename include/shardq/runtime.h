/* runtime: the glue that turns a model folder and a set of MPI ranks into pipelined generation.
 *
 *  - sq_runtime_load_stage(): one stage of a model folder into a new sq_stage (model.h) on a
 *    backend, through the streaming loader (load.h): every tensor the stage wants is handed to
 *    sq_stage_set_dense / sq_stage_set_4bit as it arrives.  Usable without MPI (one process
 *    holding the whole model: the reference-logits tests) or per rank.
 *  - sq_runtime_compute: the sq_stage_compute adapter (pipeline.h) around an sq_stage: embed /
 *    layers / head + sampling with sequence i in KV slot i, optionally keeping every step's
 *    final-position logits and reporting tokens to a callback as rank 0 sees them.
 *  - sq_run(): the whole `shardq run` on a communicator: rank 0 reads config + headers, the
 *    skeleton is broadcast (sq_meta_bcast), the plan comes from a plan file (checked against
 *    this model and the rank count) or is made for the ranks started (hwloc discovery on each,
 *    gathered), every rank loads only its stage, then sq_pipeline_run; results on rank 0.
 *
 * Request rules (checked on rank 0 before any weight is read, agreed by every rank): at least
 * one sequence, no empty prompt, every id in [0, vocab_size), prompt + max_new_tokens <= the
 * plan's max_seq (a plan file's) or <= max_position_embeddings (no plan file).
 * KV cache: max_batch = the number of sequences; max_seq = o->max_seq when given, else the
 * longest prompt + max_new_tokens rounded up to a multiple of 16, capped at
 * max_position_embeddings (and at a plan file's max_seq).  With a plan file the cache must fit
 * what the plan reserved: n_seqs * max_seq <= plan.batch * plan.max_seq.
 *
 * Logits dump (sq_run_result.logits, and `shardq run --dump-logits FILE`): for every sequence
 * in prompt order, for every generated token t in order, the vocab_size float32 logits the
 * last stage sampled token t from (the sequence's final position at that step).
 * sq_runtime_write_logits() writes them as a file, little-endian:
 *     "SQLOGIT1" (8 bytes), u32 n_seqs, u32 vocab,
 *     u32 n_tokens[n_seqs],
 *     float32 logits[sum(n_tokens)][vocab]   (sequence-major, then token)
 * to PATH.tmp.<pid> first, renamed to PATH when complete.
 *
 * Failure: every phase before the pipeline ends with all ranks agreeing on the status (the
 * lowest failing rank's one-line error, on every rank); those failures leave the communicator
 * usable.  A failure during generation (a rank that dies, hangs or fails) is reported by the
 * pipeline as SQ_ERR_PEER naming the rank; then *must_abort is set: the caller must end the
 * job (MPI_Abort) because a dead or hung rank cannot be finalized.
 *
 * Ownership: sq_run_result from sq_run (rank 0 only) is freed with sq_run_result_destroy
 * (takes NULL); sq_runtime_compute_create / _destroy and sq_runtime_load_stage's stage
 * (sq_stage_destroy) pair as usual; nothing is kept of the options' pointers after return.
 * Never: print, exit, or read a tensor outside this rank's stage. */
#ifndef SHARDQ_RUNTIME_H
#define SHARDQ_RUNTIME_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "shardq/backend.h"
#include "shardq/config.h"
#include "shardq/core.h"
#include "shardq/load.h"
#include "shardq/meta.h"
#include "shardq/model.h"
#include "shardq/pipeline.h"
#include "shardq/quant.h"
#include "shardq/safetensors.h"
#include "shardq/size.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- one stage from a model folder ---------------------------------------------------------- */

typedef struct sq_runtime_stage_params {
    sq_load_stage_desc stage;   /* which layers (+ embed / head) */
    sq_quant_scheme scheme;     /* NONE: dense; NF4/FP4: quantized on the fly (a pre-quantized
                                   checkpoint is taken as stored, or dequantized with NONE) */
    int64_t max_seq, max_batch, max_tokens, max_logit_rows;   /* as sq_stage_params */
    int n_threads;              /* quantization threads; <= 0: one per core */
    MPI_Comm comm;              /* MPI_COMM_NULL: alone; else collective load progress */
    sq_load_progress_fn progress;
    void *progress_user;
    double progress_interval_s;
    sq_log log;
    bool quant_on_device;       /* quantize 4-bit weights on CUDA device quant_device (the loader's
                                   GPU path; sq_run sets it with the cuda backend); false: CPU */
    int quant_device;
    sq_trace *trace;            /* NULL: off; else the loader's spans (sq_load_options.trace) */
} sq_runtime_stage_params;

/* Creates the stage on `be` and loads its weights from st (checked against m, which must have
 * been validated against st) and checks every wanted weight is set.  stats may be NULL.
 * With p->comm every rank of it must call this (the loader's progress is collective).
 * On failure *out is NULL and nothing leaks. */
sq_status sq_runtime_load_stage(sq_backend *be, const sq_ckpt *st, const sq_meta *m,
                                const sq_runtime_stage_params *p, sq_stage **out,
                                sq_load_stats *stats, sq_error *err);

/* The two halves of sq_runtime_load_stage, for callers that agree between them (sq_run):
 * create the stage (run state allocated, no weights; on failure *out NULL), then load its
 * weights and check every wanted one is set (with p->comm: collective, every rank calls it). */
sq_status sq_runtime_create_stage(sq_backend *be, const sq_meta *m,
                                  const sq_runtime_stage_params *p, sq_stage **out,
                                  sq_error *err);
sq_status sq_runtime_load_weights(sq_stage *s, const sq_ckpt *st, const sq_meta *m,
                                  const sq_runtime_stage_params *p, sq_load_stats *stats,
                                  sq_error *err);

/* Opens a model (folder or GGUF file: sq_ckpt_open), reads its config, builds and validates
 * the skeleton.  The
 * checkpoint's own 4-bit scheme (a bnb folder) goes to *stored (type NONE otherwise; may be
 * NULL; see sq_meta_stored_scheme).  On failure *st and *m are NULL. */
sq_status sq_runtime_open_model(const char *model_dir, sq_ckpt **st, sq_meta **m,
                                sq_quant_scheme *stored, sq_error *err);

/* ---- the sq_stage_compute adapter ----------------------------------------------------------- */

/* Called on the first stage for each generated id as it reaches that stage (ids of step k are
 * reported when step k+1 embeds them; a sequence's last id is only in the result).  token_index
 * is the id's place in its sequence's output (0-based). */
typedef void (*sq_run_token_fn)(void *user, int32_t seq, int32_t token_index, int32_t id);

/* Called on every rank as sq_run enters each phase of its bring-up and teardown: phase is a
 * static string ("planning", "loading the weights", ...); watched is false for the phases that
 * report progress of their own (loading) or find silent peers themselves (generating, serving),
 * true for the others, which should end in seconds.  The CLI's stall watchdog uses it. */
typedef void (*sq_run_phase_fn)(void *user, const char *phase, bool watched);

typedef struct sq_runtime_compute_params {
    sq_sample_params sample;
    int32_t n_seqs;             /* sequence i uses KV slot i */
    int32_t max_new_tokens;     /* largest of any sequence (sizes the logits store) */
    bool keep_logits;           /* last stage: keep every step's logits (see the top) */
    sq_run_token_fn on_token;   /* first stage; may be NULL */
    /* scoring (perplexity), last stage: when score_prompts is set, the prefill of sequence s
     * scores its own prompt: for every position j in [score_from, prompt_lens[s] - 1), the
     * log-probability of score_prompts[s][j + 1] from the logits at j (log-softmax in double),
     * summed per sequence (sq_runtime_compute_score).  Logits are made SQ_SCORE_ROWS rows at a
     * time (the stage needs max_logit_rows >= that).  The id it returns for the sequence is
     * the argmax of its last row. */
    const int32_t *const *score_prompts;   /* (n_seqs) host arrays; NULL: no scoring */
    const int32_t *score_lens;             /* (n_seqs) */
    int32_t score_from;
    void *token_user;
} sq_runtime_compute_params;

typedef struct sq_runtime_compute sq_runtime_compute;

/* The adapter borrows the stage (it must outlive it).  keep_logits allocates n_seqs *
 * max_new_tokens * vocab floats up front (refused above 4 GiB).  On failure *out is NULL. */
sq_status sq_runtime_compute_create(sq_stage *stage, const sq_runtime_compute_params *p,
                                    sq_runtime_compute **out, sq_error *err);
void sq_runtime_compute_destroy(sq_runtime_compute *c);
/* The compute to hand to sq_pipeline_run (points into c). */
const sq_stage_compute *sq_runtime_compute_get(const sq_runtime_compute *c);
/* Rows of logits the scoring head makes at a time (bounds the logits buffer). */
#define SQ_SCORE_ROWS 64
/* Per-sequence scores (see score_prompts): negative log-likelihood sum, sum of squares and the
 * number of scored tokens; SQ_ERR_INVALID outside [0, n_seqs) or without scoring. */
sq_status sq_runtime_compute_score(const sq_runtime_compute *c, int32_t s, double *nll,
                                   double *nll2, int64_t *n_scored, sq_error *err);
/* Kept logits of sequence s: *n_tokens rows of vocab floats (points into c; NULL without
 * keep_logits or outside [0, n_seqs)). */
const float *sq_runtime_compute_logits(const sq_runtime_compute *c, int32_t s, int32_t *n_tokens);

/* ---- the whole run -------------------------------------------------------------------------- */

/* Where a rank computes and how activations move (shardq run --backend / --transport).
 *  backend AUTO: cuda when this build has CUDA and every rank sees at least one CUDA device
 *    (agreed over the communicator), else cpu.  CUDA asked for in a build without CUDA, or on
 *    a rank without a device: SQ_ERR_UNSUPPORTED on every rank, before any file is read.
 *  device: with cuda, the GPU of each rank: o->device when >= 0 (the same number on every
 *    rank), else (local rank on its node) mod (CUDA devices on the node); the local rank comes
 *    from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).  Ranks of one node may share a GPU.
 *  transport AUTO: nccl when every rank runs cuda and no two ranks of a node share a GPU (each
 *    on GPU local rank mod device count: the nccl transport's own placement), else mpi (which
 *    stages device activations through pinned host memory).  NCCL asked for with the cpu
 *    backend, in a build without CUDA, or for ranks that share a GPU: SQ_ERR_UNSUPPORTED /
 *    SQ_ERR_INVALID on every rank, one line naming the cause.
 * Planning without a plan file follows the backend: host memory for cpu; the GPUs for cuda,
 * a GPU's memory divided among the ranks that share it. */
typedef enum sq_run_backend { SQ_RUN_BACKEND_AUTO = 0, SQ_RUN_BACKEND_CPU, SQ_RUN_BACKEND_CUDA } sq_run_backend;
typedef enum sq_run_transport {
    SQ_RUN_TRANSPORT_AUTO = 0, SQ_RUN_TRANSPORT_MPI, SQ_RUN_TRANSPORT_NCCL
} sq_run_transport;
/* "auto", "cpu", "cuda" / "auto", "mpi", "nccl" -> value; false for anything else. */
bool sq_run_backend_from_name(const char *s, sq_run_backend *out);
bool sq_run_transport_from_name(const char *s, sq_run_transport *out);

/* The serve hook (see sq_run_options.serve and sq_run_serve_ctx below). */
typedef struct sq_run_serve_ctx sq_run_serve_ctx;
typedef sq_status (*sq_run_serve_fn)(void *user, const sq_run_serve_ctx *ctx, sq_error *err);

typedef struct sq_run_options {
    const char *model_dir;
    const char *plan_path;          /* NULL: plan for the ranks of comm */
    sq_quant_scheme scheme;         /* type NONE / NF4 / FP4, double quant, blocksize */
    bool scheme_given;              /* the user chose it (else a plan file's, or a bnb folder's) */
    /* the request (rank 0; ignored elsewhere) */
    int32_t n_seqs;
    const int32_t *const *prompts;  /* (n_seqs) arrays of prompt_lens[i] ids */
    const int32_t *prompt_lens;     /* (n_seqs) */
    int32_t max_new_tokens;         /* per sequence, >= 1 */
    const int32_t *extra_eos;       /* ids that end a sequence besides the config's (chat stop) */
    int32_t n_extra_eos;
    bool ignore_eos;                /* only max_new_tokens ends a sequence */
    int64_t max_seq;                /* 0: the default (see the top) */
    int32_t n_micro_batches;        /* 0: min(n_seqs, n_ranks) */
    sq_sample_params sample;
    bool keep_logits;               /* result->logits (the dump) */
    bool score;                     /* perplexity: every prompt scores itself from position
                                       score_from on (see sq_runtime_compute_params); needs
                                       max_new_tokens == 1; result->score_* get the sums */
    int32_t score_from;
    sq_run_token_fn on_token;       /* rank 0; may be NULL */
    void *token_user;
    /* execution */
    sq_run_backend backend;         /* AUTO (default), CPU, CUDA: see above */
    sq_run_transport transport;     /* AUTO (default), MPI, NCCL */
    int device;                     /* CUDA device on every rank; < 0 (the default): local
                                       rank mod device count */
    int n_threads;                  /* backend + quantization threads per rank; <= 0: the
                                       node's cores / the ranks started on the node */
    sq_cpu_activations activations; /* cpu backend: Linear on float32 or int8 activations
                                       (backend.h); DEFAULT: the backend's default; INT8 with
                                       the cuda backend is refused */
    double timeout_s;               /* peer silence during generation; <= 0: 30 s */
    sq_run_phase_fn on_phase;       /* every rank; may be NULL */
    void *phase_user;
    double stall_timeout_s;         /* for the caller's watchdog (the CLI's --stall-timeout):
                                       how long a watched phase may last; sq_run ignores it */
    sq_load_progress_fn progress;   /* rank 0; may be NULL */
    void *progress_user;
    double progress_interval_s;
    sq_log log;
    sq_trace *trace;                /* this rank's tracer (NULL: off): the load's and the
                                       pipeline's spans; the caller writes it */
    /* serve (`shardq serve`): when set, every rank calls serve() in place of the pipeline and
     * sq_run returns its status (no result); the request only sizes the KV cache (n_seqs slots
     * of max_seq positions) and max_tokens (> 0) the rows of one forward.  A failure inside
     * serve() sets must_abort (more than one rank). */
    sq_run_serve_fn serve;
    void *serve_user;
    int64_t max_tokens;
} sq_run_options;

sq_run_options sq_run_options_default(void);


typedef struct sq_run_stage_info {
    int32_t rank, first_layer, n_layers;
    bool has_embed, has_head;
    int32_t device;                       /* CUDA device number; -1 on the cpu backend */
    uint64_t weight_bytes, state_bytes;   /* backend bytes: weights, run state (KV etc.) */
    uint64_t bytes_read;                  /* checkpoint bytes this rank read */
    uint64_t max_rss_bytes;               /* the process's peak resident set after its load */
    double load_s;
} sq_run_stage_info;

/* What the serve hook gets (every rank, after every rank loaded its stage and the transport is
 * up): everything is borrowed for the duration of the call. */
struct sq_run_serve_ctx {
    sq_transport *t;
    sq_stage *stage;
    const sq_model_config *cfg;
    int rank, n_ranks;
    int32_t n_slots;                /* KV slots (the request's n_seqs) */
    int64_t max_seq;                /* positions per slot */
    int64_t max_tokens;             /* rows of one forward */
    const int32_t *eos;             /* the config's EOS ids (and the request's extra ones) */
    int32_t n_eos;
    const sq_run_stage_info *stages;   /* (n_ranks) rank 0 only; NULL elsewhere */
    const char *backend;            /* this rank's backend name */
    const char *transport;          /* "mpi" or "nccl" */
    double load_s;                  /* slowest rank's load */
};
typedef struct sq_run_result {
    sq_pipeline_result *pipe;       /* tokens, finish reasons, stage times, bubble */
    sq_model_config cfg;
    sq_quant_scheme scheme;         /* what ran */
    bool prequantized;              /* weights taken as stored from a bnb folder */
    bool ggml_stored;               /* scheme NONE on a GGUF: weights in their ggml types */
    bool plan_from_file;
    int32_t n_ranks;
    int64_t max_seq;
    double load_s;                  /* slowest rank's load */
    uint64_t bytes_read;            /* checkpoint bytes, all ranks */
    sq_run_stage_info *stages;      /* (n_ranks) */
    char backend[96];               /* rank 0's backend: "cpu-avx2", "cuda:0 NVIDIA H100 … (sm_90)" */
    char backend_kind[8];           /* "cpu" or "cuda" (every rank the same) */
    char transport[8];              /* "mpi" or "nccl" */
    int n_threads;                  /* per rank (rank 0's) */
    /* with score: per sequence the sum of -log p(token) over its scored positions, the sum of
     * squares, and how many (n_seqs each) */
    double *score_nll, *score_nll2;
    int64_t *score_n;
    /* with keep_logits: per sequence n_tokens[s] rows of cfg.vocab_size floats, in order */
    float *logits;                  /* (sum n_tokens, vocab) */
} sq_run_result;

/* Collective over comm (MPI_ERRORS_RETURN): see the top of this file.  *out is set on rank 0
 * only (NULL elsewhere and on failure).  must_abort (may be NULL) is set when the failure
 * happened during generation and the job must be ended with MPI_Abort. */
sq_status sq_run(MPI_Comm comm, const sq_run_options *o, sq_run_result **out, bool *must_abort,
                 sq_error *err);
void sq_run_result_destroy(sq_run_result *r);

/* Writes r's logits as the dump file described at the top (PATH.tmp.<pid>, then rename). */
sq_status sq_runtime_write_logits(const sq_run_result *r, const char *path, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
