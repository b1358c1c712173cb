/* The pure planner core: problem checks, evaluation of an assignment, and the exact solver.
 * Owns only arithmetic on the numbers in sq_plan_problem.  Must never look at a model, a file,
 * the clock or the machine: every rank has to get the same answer from the same numbers.
 *
 * The solver is three dynamic programs over (device j, layers [0, b) placed on devices 0..j):
 *   A. min over assignments of the worst overflow max_j (used_j − capacity_j): feasibility, and
 *      for an infeasible problem the exact shortfall;
 *   B. min bottleneck T* = min max_j t_j over the assignments where every stage fits;
 *   C. max over the assignments with every stage fitting and t_j <= T* of min_j headroom_j = H*;
 *   D. a tie-break among the optimal assignments: min sum_j t_j² subject to t_j <= T* and
 *      headroom_j >= H* (spreads layers instead of leaving ranks idle when the bottleneck is
 *      pinned, e.g. by lm_head on the last stage).
 * A-C are "min of max" (or "max of min") over contiguous partitions, D is additive under
 * per-stage constraints, so each recurrence best[j][b] = opt_a combine(best[j-1][a],
 * cost(j, a, b)) is exact.  O(n_devices · n_layers²). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan_impl.h"

#define LIMIT_62 (UINT64_C(1) << 62)

sq_status sq_plan_problem_check(const sq_plan_problem *p, sq_error *err) {
    if (!p) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: no problem given");
    if (p->n_layers < 1 || p->n_layers > SQ_PLAN_MAX_LAYERS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "plan: n_layers = %d, expected 1..%d", p->n_layers, SQ_PLAN_MAX_LAYERS);
    if (p->n_devices < 1 || p->n_devices > SQ_TOPO_MAX_DEVICES)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "plan: n_devices = %d, expected 1..%d", p->n_devices,
                            SQ_TOPO_MAX_DEVICES);
    if ((uint64_t)(p->n_devices + 1) * (uint64_t)(p->n_layers + 1) > SQ_PLAN_MAX_CELLS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "plan: %d devices x %d layers is too large to plan exactly",
                            p->n_devices, p->n_layers);
    if (!p->layer_bytes || !p->layer_read_bytes || !p->capacity_bytes || !p->bandwidth_bps)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: a per-layer or per-device array is missing");
    /* every sum the solver forms stays below 2^62, so int64 used/headroom never overflow */
    uint64_t w = 0, r = 0;
    for (int i = 0; i < p->n_layers; i++) {
        if (p->layer_bytes[i] >= LIMIT_62 || p->layer_read_bytes[i] >= LIMIT_62)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: layer %d bytes out of range", i);
        w += p->layer_bytes[i];
        r += p->layer_read_bytes[i];
        if (w >= LIMIT_62 || r >= LIMIT_62)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: total layer bytes out of range");
    }
    uint64_t kv_layer, kv_all;
    if (!sq_mul_u64(p->kv_token_layer_bytes, p->n_kv_tokens, &kv_layer) ||
        !sq_mul_u64(kv_layer, (uint64_t)p->n_layers, &kv_all) || kv_all >= LIMIT_62)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "plan: KV cache of %llu tokens x %llu bytes per token per layer is out of range",
                            (unsigned long long)p->n_kv_tokens,
                            (unsigned long long)p->kv_token_layer_bytes);
    const uint64_t extras[] = {p->embed_bytes, p->embed_read_bytes, p->head_bytes,
                               p->head_read_bytes, p->workspace_bytes, p->logits_bytes};
    uint64_t e = 0;
    for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++) {
        if (extras[i] >= LIMIT_62)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: embed/head/workspace bytes out of range");
        e += extras[i];
    }
    if (e >= LIMIT_62 || w + r + kv_all + kv_all + e >= LIMIT_62 ||
        p->tied_bytes > p->embed_bytes || p->tied_bytes > p->head_bytes)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: byte totals out of range");
    for (int j = 0; j < p->n_devices; j++) {
        if (p->capacity_bytes[j] >= LIMIT_62)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "plan: device %d capacity out of range", j);
        double bw = p->bandwidth_bps[j];
        if (!isfinite(bw) || !(bw > 0))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "plan: device %d memory bandwidth must be > 0 (got %g)", j, bw);
    }
    return SQ_OK;
}

void sq_plan_evaluate(const sq_plan_problem *p, const int *counts, int embed_dev, int head_dev,
                      sq_plan_stage_eval *stages, sq_plan_eval *out) {
    int n = p->n_layers, m = p->n_devices;
    uint64_t *W = malloc(sizeof(uint64_t) * (size_t)(n + 1));
    uint64_t *R = malloc(sizeof(uint64_t) * (size_t)(n + 1));
    SQ_ASSERT(W && R);
    sq_prefix_sums(p->layer_bytes, n, W);
    sq_prefix_sums(p->layer_read_bytes, n, R);
    sq_plan_eval e = {.fits = true, .bottleneck_s = 0, .min_headroom_bytes = INT64_MAX,
                      .max_kv_tokens = UINT64_MAX};
    int a = 0;
    for (int j = 0; j < m; j++) {
        int b = a + counts[j];
        SQ_ASSERT(counts[j] >= 0 && b <= n);
        bool em = j == embed_dev, hd = j == head_dev;
        sq_stage_cost c = sq_stage_cost_of(p, W, R, j, a, b, em, hd);
        int64_t cap = (int64_t)p->capacity_bytes[j];
        int64_t head = cap - c.used;
        uint64_t kv_tok = UINT64_MAX;
        if (b > a && p->kv_token_layer_bytes > 0) {
            int64_t free_for_kv = cap - (int64_t)(c.weights + c.fixed);
            uint64_t per_tok = p->kv_token_layer_bytes * (uint64_t)(b - a);
            kv_tok = free_for_kv > 0 ? (uint64_t)free_for_kv / per_tok : 0;
        }
        if (stages)
            stages[j] = (sq_plan_stage_eval){
                .first_layer = a, .n_layers = b - a, .has_embed = em, .has_head = hd,
                .weights_bytes = c.weights, .kv_bytes = c.kv,
                .workspace_bytes = p->workspace_bytes, .logits_bytes = hd ? p->logits_bytes : 0,
                .used_bytes = (uint64_t)c.used, .capacity_bytes = (uint64_t)cap,
                .headroom_bytes = head, .read_bytes = c.read, .step_s = c.t,
                .max_kv_tokens = kv_tok};
        if (head < 0) e.fits = false;
        if (head < e.min_headroom_bytes) e.min_headroom_bytes = head;
        if (c.t > e.bottleneck_s) e.bottleneck_s = c.t;
        if (kv_tok < e.max_kv_tokens) e.max_kv_tokens = kv_tok;
        a = b;
    }
    SQ_ASSERT(a == n);
    free(W);
    free(R);
    *out = e;
}

/* Range of a (start of device j's layers) for a stage ending at b, under the stage rule. */
static inline void a_range(int j, int b, int n, int m, bool allow_empty, int *lo, int *hi) {
    if (j == 0) {
        *lo = *hi = 0;
        return;
    }
    if (allow_empty) {
        *lo = 0;
        *hi = b;
    } else {
        *lo = j;        /* devices 0..j-1 hold >= 1 layer each */
        *hi = b - 1;    /* device j holds >= 1 layer */
    }
    (void)n;
    (void)m;
}

/* b is reachable for device j when the devices after j can still get their layers. */
static inline bool b_ok(int j, int b, int n, int m, bool allow_empty) {
    if (j == m - 1) return b == n;
    if (allow_empty) return true;
    return b >= j + 1 && n - b >= m - 1 - j;
}

enum { PASS_OVERFLOW, PASS_BOTTLENECK, PASS_HEADROOM, PASS_SPREAD };

/* One DP pass.  val is (m × (n+1)) of int64 (overflow / headroom) or double (bottleneck),
 * choice the a that realised it (-1: unreachable). */
static void dp_pass(const sq_plan_problem *p, const uint64_t *W, const uint64_t *R, int pass,
                    double tstar, int64_t hstar, int64_t *ival, double *dval, int *choice) {
    int n = p->n_layers, m = p->n_devices;
    bool allow_empty = n < m;
    size_t stride = (size_t)n + 1;
    for (int j = 0; j < m; j++) {
        int64_t cap = (int64_t)p->capacity_bytes[j];
        for (int b = 0; b <= n; b++) {
            size_t at = (size_t)j * stride + (size_t)b;
            choice[at] = -1;
            if (!b_ok(j, b, n, m, allow_empty)) continue;
            int lo, hi;
            a_range(j, b, n, m, allow_empty, &lo, &hi);
            int64_t best_i = pass == PASS_HEADROOM ? INT64_MIN : INT64_MAX;
            double best_d = INFINITY;
            for (int a = lo; a <= hi; a++) {
                if (j > 0 && choice[(size_t)(j - 1) * stride + (size_t)a] < 0) continue;
                sq_stage_cost c = sq_stage_cost_of(p, W, R, j, a, b, j == 0, j == m - 1);
                int64_t head = cap - c.used;
                if (pass == PASS_OVERFLOW) {
                    int64_t v = -head;
                    if (j > 0 && ival[(size_t)(j - 1) * stride + (size_t)a] > v)
                        v = ival[(size_t)(j - 1) * stride + (size_t)a];
                    if (v < best_i) { best_i = v; choice[at] = a; }
                } else if (pass == PASS_BOTTLENECK) {
                    if (head < 0) continue;
                    double v = c.t;
                    if (j > 0 && dval[(size_t)(j - 1) * stride + (size_t)a] > v)
                        v = dval[(size_t)(j - 1) * stride + (size_t)a];
                    if (v < best_d) { best_d = v; choice[at] = a; }
                } else if (pass == PASS_SPREAD) {
                    if (head < hstar || c.t > tstar) continue;
                    double v = c.t * c.t;
                    if (j > 0) v = dval[(size_t)(j - 1) * stride + (size_t)a] + v;
                    if (v < best_d) { best_d = v; choice[at] = a; }
                } else {
                    if (head < 0 || c.t > tstar) continue;
                    int64_t v = head;
                    if (j > 0 && ival[(size_t)(j - 1) * stride + (size_t)a] < v)
                        v = ival[(size_t)(j - 1) * stride + (size_t)a];
                    if (v > best_i) { best_i = v; choice[at] = a; }
                }
            }
            if (ival) ival[at] = best_i;
            if (dval) dval[at] = best_d;
        }
    }
}

static void backtrack(const sq_plan_problem *p, const int *choice, int *counts) {
    int n = p->n_layers, m = p->n_devices, b = n;
    size_t stride = (size_t)n + 1;
    for (int j = m - 1; j >= 0; j--) {
        int a = choice[(size_t)j * stride + (size_t)b];
        SQ_ASSERT(a >= 0);
        counts[j] = b - a;
        b = a;
    }
    SQ_ASSERT(b == 0);
}

sq_status sq_plan_solve(const sq_plan_problem *p, int *counts, sq_plan_eval *out, sq_error *err) {
    sq_status st = sq_plan_problem_check(p, err);
    if (st != SQ_OK) return st;
    int n = p->n_layers, m = p->n_devices;
    size_t cells = (size_t)m * ((size_t)n + 1);
    uint64_t *W = malloc(sizeof(uint64_t) * ((size_t)n + 1));
    uint64_t *R = malloc(sizeof(uint64_t) * ((size_t)n + 1));
    int64_t *ival = malloc(sizeof(int64_t) * cells);
    double *dval = calloc(cells, sizeof(double));   /* zeroed: -O3 cannot see dp_pass fill it */
    int *choice = malloc(sizeof(int) * cells);
    if (!W || !R || !ival || !dval || !choice) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "plan: out of memory for %zu DP cells", cells);
        goto done;
    }
    sq_prefix_sums(p->layer_bytes, n, W);
    sq_prefix_sums(p->layer_read_bytes, n, R);

    dp_pass(p, W, R, PASS_OVERFLOW, 0, 0, ival, NULL, choice);
    size_t last = (size_t)(m - 1) * ((size_t)n + 1) + (size_t)n;
    SQ_ASSERT(choice[last] >= 0);   /* some partition always exists under the stage rule */
    int64_t worst = ival[last];
    if (worst > 0) {
        backtrack(p, choice, counts);
        sq_plan_evaluate(p, counts, 0, m - 1, NULL, out);
        st = sq_error_set(err, SQ_ERR_FIT, NULL, NULL,
                          "does not fit: the best split still overflows a device by %.2f GiB",
                          (double)worst / (double)SQ_GIB);
        goto done;
    }
    dp_pass(p, W, R, PASS_BOTTLENECK, 0, 0, NULL, dval, choice);
    SQ_ASSERT(choice[last] >= 0);
    double tstar = dval[last];
    dp_pass(p, W, R, PASS_HEADROOM, tstar, 0, ival, NULL, choice);
    SQ_ASSERT(choice[last] >= 0);
    int64_t hstar = ival[last];
    dp_pass(p, W, R, PASS_SPREAD, tstar, hstar, NULL, dval, choice);
    SQ_ASSERT(choice[last] >= 0);
    backtrack(p, choice, counts);
    sq_plan_evaluate(p, counts, 0, m - 1, NULL, out);
    SQ_ASSERT(out->fits && out->bottleneck_s == tstar && out->min_headroom_bytes == hstar);
    st = SQ_OK;
done:
    free(W);
    free(R);
    free(ival);
    free(dval);
    free(choice);
    return st;
}
