/* plan: where every decoder layer goes.  Each rank holds one contiguous range of decoder layers
 * (a stage), stages in rank order; embed_tokens is on rank 0, norm + lm_head on the last rank
 * (a tied embedding / lm_head matrix is counted on both when they are on different ranks).
 *
 * Two layers:
 *   1. The PURE core (sq_plan_problem → stages): numbers in, numbers out, no model, no files.
 *      Objective, lexicographic: (1) every stage fits its capacity; (2) minimise the bottleneck
 *      = max over stages of (bytes the stage reads per decode step ÷ its memory bandwidth);
 *      (3) among those, maximise the smallest headroom (capacity − used); (4) a tie-break:
 *      among those, minimise the sum of squared stage times (spreads the layers).  Solved
 *      exactly by dynamic programming over (devices × layers), O(n_devices · n_layers²).
 *      Stage rule: when n_layers >= n_devices every stage holds at least one layer; otherwise
 *      (more ranks than layers) a stage may hold none: that rank only forwards activations.
 *      Also: accelerate's "balanced" greedy (transformers 5.23 + accelerate 1.15), re-implemented
 *      (../shared/reference/device-map-anchors.md §4-§5) for side-by-side comparison.
 *   2. The glue: builds the problem from an sq_meta + quant scheme + sq_cluster + options, runs
 *      the core, and keeps the result as an sq_plan that can be written / read as a plan file,
 *      written as transformers' device_map JSON, or drawn as an SVG.
 *
 * Deterministic: the same inputs give the same plan, bit for bit, on every rank (no free
 * memory, no clocks, no threads in the solver; plan_ms is the only measured field).
 * Ownership: sq_plan from sq_plan_make / sq_plan_make_accelerate / sq_plan_read_file is freed
 * with sq_plan_destroy (takes NULL); on failure *out is NULL.  Arrays in sq_plan_problem belong
 * to whoever filled it (sq_plan_problem_free for one made by sq_plan_problem_build).
 * Never: prints, exits, or reads weight bytes. */
#ifndef SHARDQ_PLAN_H
#define SHARDQ_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "shardq/config.h"
#include "shardq/core.h"
#include "shardq/meta.h"
#include "shardq/size.h"
#include "shardq/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SQ_PLAN_MAX_LAYERS 100000
#define SQ_PLAN_MAX_CELLS (1u << 26)   /* (n_devices + 1) * (n_layers + 1) the DP may use */

/* ==== 1. the pure core ====================================================================== */
typedef struct sq_plan_problem {
    int n_layers;
    const uint64_t *layer_bytes;       /* (n_layers) resident weight bytes of each layer */
    const uint64_t *layer_read_bytes;  /* (n_layers) weight bytes each layer reads per step */
    uint64_t embed_bytes;              /* resident bytes of embed_tokens */
    uint64_t embed_read_bytes;         /* per step: only the rows indexed (batch × hidden) */
    uint64_t head_bytes;               /* norm + lm_head (the tied matrix when tied) */
    uint64_t head_read_bytes;          /* per step: lm_head read whole + norm */
    uint64_t tied_bytes;               /* bytes embed and head share (tied matrix), counted once
                                          when both are on one device; 0 when untied */
    uint64_t kv_token_layer_bytes;     /* KV bytes per token per layer (K and V) */
    uint64_t n_kv_tokens;              /* batch × max_seq the KV cache is sized for */
    uint64_t workspace_bytes;          /* activation workspace on every device */
    uint64_t logits_bytes;             /* logits buffer on the head device */
    int n_devices;
    const uint64_t *capacity_bytes;    /* (n_devices) usable: total − reserve, or --max-memory */
    const double *bandwidth_bps;       /* (n_devices) memory bandwidth, bytes per second, > 0 */
} sq_plan_problem;

/* One device's share under some assignment. */
typedef struct sq_plan_stage_eval {
    int first_layer, n_layers;
    bool has_embed, has_head;
    uint64_t weights_bytes;            /* layers + embed / head it holds */
    uint64_t kv_bytes;                 /* n_layers × n_kv_tokens × kv_token_layer_bytes */
    uint64_t workspace_bytes, logits_bytes;
    uint64_t used_bytes, capacity_bytes;
    int64_t headroom_bytes;            /* capacity − used; negative when it does not fit */
    uint64_t read_bytes;               /* per decode step: weights multiplied + KV at max_seq */
    double step_s;                     /* read_bytes / bandwidth */
    uint64_t max_kv_tokens;            /* tokens of KV it could hold; UINT64_MAX with no layers */
} sq_plan_stage_eval;

typedef struct sq_plan_eval {
    bool fits;
    double bottleneck_s;               /* max step_s */
    int64_t min_headroom_bytes;        /* min headroom (negative: the worst overflow) */
    uint64_t max_kv_tokens;            /* min over stages */
} sq_plan_eval;

/* Checks a problem's numbers (counts, NULL arrays, bandwidth > 0 and finite, sums that would
 * overflow, DP size).  Messages name the field. */
sq_status sq_plan_problem_check(const sq_plan_problem *p, sq_error *err);

/* Evaluates an assignment: counts[j] layers on device j, contiguous in device order (they
 * must sum to n_layers); embed on device embed_dev, head on device head_dev.  stages (may be
 * NULL) gets n_devices entries.  The problem must have passed sq_plan_problem_check. */
void sq_plan_evaluate(const sq_plan_problem *p, const int *counts, int embed_dev, int head_dev,
                      sq_plan_stage_eval *stages, sq_plan_eval *out);

/* The optimal plan: counts (n_devices) gets layers per device; embed on device 0, head on
 * device n_devices − 1.  Returns SQ_OK, or SQ_ERR_FIT when no assignment fits: then counts is
 * the assignment with the smallest worst overflow, *out its evaluation (min_headroom_bytes =
 * −shortfall), and err says by how much it falls short.  SQ_ERR_INVALID / SQ_ERR_NOMEM for
 * bad input; then counts is unspecified. */
sq_status sq_plan_solve(const sq_plan_problem *p, int *counts, sq_plan_eval *out, sq_error *err);

/* What accelerate's device_map="auto" (= "balanced") does under transformers 5.23 +
 * accelerate 1.15, given max_memory = each device's memory; re-implemented, not accelerate's
 * code, and checked against the real library's maps (tests/reference/accelerate_maps.json).  Sizes are what accelerate counts: quantized Linear weights at 0.5 B per
 * element and no absmax, everything else at its dtype; a tied lm_head counts 0 and follows
 * embed_tokens. */
typedef struct sq_accel_input {
    const uint64_t *layer_bytes;       /* (n_layers) as accelerate counts them */
    uint64_t embed_bytes, norm_bytes, head_bytes;
    uint64_t rotary_bytes;             /* model.rotary_emb's inv_freq buffer (counted, never largest) */
    bool tied;                         /* lm_head tied to embed_tokens */
    const uint64_t *max_memory;        /* (n_devices) what accelerate is given (total memory) */
    bool bnb;                          /* bitsandbytes: ×0.9 on every budget (adjust_max_memory) */
} sq_accel_input;

typedef struct sq_accel_result {
    int embed_dev, head_dev, norm_dev; /* n_devices means offloaded to cpu / disk */
    int n_offloaded;                   /* modules accelerate would put on cpu / disk */
    double caps[64];                   /* the balanced budgets of the first 64 devices */
} sq_accel_result;

/* counts (n_devices) gets accelerate's layers per device (offloaded layers are not counted). */
sq_status sq_plan_accelerate(const sq_plan_problem *p, const sq_accel_input *a, int *counts,
                             sq_accel_result *out, sq_error *err);

/* ==== 2. the glue: from a model and a cluster =============================================== */
typedef struct sq_plan_options {
    int64_t max_seq;          /* tokens per sequence the KV cache holds; <= 0: min(4096, max pos) */
    int64_t batch;            /* sequences; >= 1 (default 1) */
    double reserve_gib;       /* runtime reserve per device (CUDA context, allocator); < 0: 1 GiB */
    const char *max_memory;   /* NULL or "0=20GiB,1=22GiB" (by rank) / "node0:1=22GiB" */
    int64_t prefill_chunk;    /* tokens per prefill micro-batch for the workspace; <= 0: 256 */
} sq_plan_options;

sq_plan_options sq_plan_options_default(void);

/* Parses a --max-memory SPEC against a cluster: caps (n_devices) gets the override or 0 where
 * the spec says nothing.  Units: B, KB, MB, GB (10^3), KiB, MiB, GiB, TiB (2^10); a bare
 * number is bytes.  Errors: unknown device, node or unit; negative or malformed amounts. */
sq_status sq_plan_parse_max_memory(const char *spec, const sq_cluster *c, uint64_t *caps,
                                   sq_error *err);

/* Activation workspace estimate for one device (bytes): fp32 activations of one prefill chunk
 * (rows = batch × min(chunk, max_seq): residual, norm, attention out, o_proj out, q, k, v,
 * gate, up, act) + one head's attention scores (rows × max_seq fp32) + one dequantized bf16
 * copy of the largest Linear weight.  An estimate for planning, not a measurement. */
uint64_t sq_plan_workspace_bytes(const sq_model_config *cfg, int64_t batch, int64_t max_seq,
                                 int64_t prefill_chunk);

/* The problem for a model at a scheme on a cluster (arrays malloc'd; free with
 * sq_plan_problem_free), and accelerate's view of the same model (acc may be NULL). */
typedef struct sq_plan_built {
    sq_plan_problem p;
    sq_accel_input acc;
    uint64_t *bufs[6];                 /* owned arrays */
    double *bw;
} sq_plan_built;
sq_status sq_plan_problem_build(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                                const sq_plan_options *o, sq_plan_built *out, sq_error *err);
void sq_plan_problem_free(sq_plan_built *b);

/* A finished plan. */
typedef struct sq_plan_stage {
    int rank;
    char node[SQ_TOPO_NAME_BYTES];
    char device[SQ_TOPO_NAME_BYTES];
    int first_layer, n_layers;
    bool has_embed, has_head;
    uint64_t weights_bytes, kv_bytes, workspace_bytes, logits_bytes, capacity_bytes;
    int64_t headroom_bytes;
    double est_step_ms;
    uint64_t max_kv_tokens;
} sq_plan_stage;

typedef struct sq_plan {
    char model_name[128];     /* config architecture + hidden/layers, e.g. "LlamaForCausalLM" */
    uint64_t model_hash;      /* sq_meta_hash of the skeleton planned for */
    char cluster_name[SQ_TOPO_NAME_BYTES];
    char label[32];           /* "shardq" or "accelerate-style (balanced greedy, emulated)" */
    int n_layers;
    sq_quant_scheme scheme;
    int64_t max_seq, batch;
    bool fits;                /* false only for an accelerate-style plan that does not fit */
    int n_offloaded;          /* accelerate-style: modules it would put on cpu / disk */
    int n_stages;             /* = n_ranks */
    sq_plan_stage *stages;    /* (n_stages) */
    double bottleneck_ms;
    uint64_t max_kv_tokens;
    double plan_ms;           /* wall time of the solve (the only non-deterministic field) */
} sq_plan;

/* Plans a model on a cluster.  SQ_ERR_FIT when it cannot fit: err says by how many GiB it
 * falls short on the tightest device of the best split and what would fit (a smaller
 * max_seq, how many more devices of the last kind, double quant / 4 bits). */
sq_status sq_plan_make(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                       const sq_plan_options *o, sq_plan **out, sq_error *err);
/* accelerate's placement of the same model, evaluated with shardq's exact memory and time
 * model (fits = false when something overflows a device or goes to cpu / disk). */
sq_status sq_plan_make_accelerate(const sq_meta *m, const sq_quant_scheme *s,
                                  const sq_cluster *c, const sq_plan_options *o, sq_plan **out,
                                  sq_error *err);
void sq_plan_destroy(sq_plan *p);
/* FNV-1a 64 over the deterministic fields (plan_ms excluded). */
uint64_t sq_plan_hash(const sq_plan *p);

/* Plan file (JSON, written to PATH.tmp.PID then renamed).  Read validates every field:
 * stages in rank order, contiguous layers covering [0, n_layers), embed on the first, head on
 * the last. */
sq_status sq_plan_write_file(const sq_plan *p, const char *path, sq_error *err);
sq_status sq_plan_read_file(const char *path, sq_plan **out, sq_error *err);
/* The plan as JSON text (the --json output; malloc'd, caller frees). */
sq_status sq_plan_to_json(const sq_plan *p, char **out, sq_error *err);
/* transformers' device_map: {"model.embed_tokens": D, "model.layers.0": D, …, "model.norm": D',
 * "lm_head": D'} where D is "cpu" for a stage on host memory, else the CUDA index of the stage's
 * GPU on its node (the node's GPU stages in rank order: 0, 1, …).  One process, one machine:
 * a plan whose stages span nodes is refused (SQ_ERR_UNSUPPORTED) by the check, which the
 * writer runs first and callers may run before writing anything else. */
sq_status sq_plan_hf_device_map_check(const sq_plan *p, sq_error *err);
sq_status sq_plan_write_hf_device_map(const sq_plan *p, const char *path, sq_error *err);
/* One stacked bar per device: weights / KV / workspace + logits / headroom. */
sq_status sq_plan_write_svg(const sq_plan *p, const char *path, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
