/* Private to the plan module: the one stage-cost function that the solver, the evaluator and
 * the accelerate emulation all use, so that every figure is computed by the same arithmetic
 * (bottleneck comparisons are exact equalities between identically computed doubles). */
#ifndef SHARDQ_PLAN_IMPL_H
#define SHARDQ_PLAN_IMPL_H

#include "shardq/plan.h"

typedef struct sq_stage_cost {
    uint64_t weights, kv, fixed;   /* fixed = workspace + logits */
    int64_t used;                  /* weights + kv + fixed */
    uint64_t read;
    double t;                      /* seconds per decode step */
} sq_stage_cost;

/* Cost of device j holding layers [a, b) (+ embed / head).  W and R are prefix sums
 * (n_layers + 1) of layer_bytes and layer_read_bytes.  Overflow is excluded by
 * sq_plan_problem_check (every total stays below 2^62). */
static inline sq_stage_cost sq_stage_cost_of(const sq_plan_problem *p, const uint64_t *W,
                                             const uint64_t *R, int j, int a, int b,
                                             bool embed, bool head) {
    sq_stage_cost c;
    uint64_t nl = (uint64_t)(b - a);
    uint64_t kv_layer = p->kv_token_layer_bytes * p->n_kv_tokens;
    c.weights = W[b] - W[a] + (embed ? p->embed_bytes : 0) + (head ? p->head_bytes : 0) -
                (embed && head ? p->tied_bytes : 0);
    c.kv = nl * kv_layer;
    c.fixed = p->workspace_bytes + (head ? p->logits_bytes : 0);
    c.used = (int64_t)(c.weights + c.kv + c.fixed);
    c.read = R[b] - R[a] + nl * kv_layer + (embed ? p->embed_read_bytes : 0) +
             (head ? p->head_read_bytes : 0);
    c.t = (double)c.read / p->bandwidth_bps[j];
    return c;
}

/* Prefix sums of n values into out (n + 1). */
static inline void sq_prefix_sums(const uint64_t *v, int n, uint64_t *out) {
    out[0] = 0;
    for (int i = 0; i < n; i++) out[i + 1] = out[i] + v[i];
}

#endif
