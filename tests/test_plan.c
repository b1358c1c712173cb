/* Tests of the plan module: the exact solver against brute force on thousands of random small
 * instances (feasible and not), hand-computed evaluations, accelerate's greedy emulation
 * against the worked examples of device-map-anchors.md §9, and (with the model configs under
 * tests/configs/) the done-when comparison: shardq beats the accelerate-style plan on
 * Llama-2-7B NF4 on 4×24 GiB and Llama-3-70B NF4 on 2×40 GiB. */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/plan.h"
#include "testutil.h"

/* ---- brute force ------------------------------------------------------------------------ */
typedef struct best {
    bool feasible;
    double bottleneck;
    int64_t headroom;       /* feasible: max min-headroom at the min bottleneck */
    double spread;          /* feasible: min sum of squared stage times at (bottleneck, headroom) */
    int64_t best_min_head;  /* over all assignments: max of min headroom (−shortfall) */
    long n_assignments;
} best;

static void brute_rec(const sq_plan_problem *p, int *counts, int j, int left, best *b) {
    int m = p->n_devices;
    int minc = p->n_layers < m ? 0 : 1;
    if (j == m - 1) {
        if (left < minc) return;
        counts[j] = left;
        sq_plan_eval e;
        sq_plan_stage_eval st[4];
        sq_plan_evaluate(p, counts, 0, m - 1, st, &e);
        double spread = 0;
        for (int k = 0; k < m; k++) spread = k ? spread + st[k].step_s * st[k].step_s
                                                : st[k].step_s * st[k].step_s;
        b->n_assignments++;
        if (e.min_headroom_bytes > b->best_min_head) b->best_min_head = e.min_headroom_bytes;
        if (!e.fits) return;
        if (!b->feasible || e.bottleneck_s < b->bottleneck ||
            (e.bottleneck_s == b->bottleneck && e.min_headroom_bytes > b->headroom) ||
            (e.bottleneck_s == b->bottleneck && e.min_headroom_bytes == b->headroom &&
             spread < b->spread)) {
            b->feasible = true;
            b->bottleneck = e.bottleneck_s;
            b->headroom = e.min_headroom_bytes;
            b->spread = spread;
        }
        return;
    }
    for (int c = minc; c <= left - minc * (m - 1 - j); c++) {
        counts[j] = c;
        brute_rec(p, counts, j + 1, left - c, b);
    }
}

static uint64_t rng_next(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}
static uint64_t rnd(uint64_t *s, uint64_t lo, uint64_t hi) { return lo + rng_next(s) % (hi - lo + 1); }

START_TEST(test_solver_equals_brute_force) {
    uint64_t seed = 12345;
    int n_feasible = 0, n_infeasible = 0, n_empty_allowed = 0;
    for (int iter = 0; iter < 4000; iter++) {
        int n = (int)rnd(&seed, 1, 10), m = (int)rnd(&seed, 1, 4);
        uint64_t lb[10], rb[10], cap[4];
        double bw[4];
        bool same = rnd(&seed, 0, 3) == 0;   /* identical layers: many ties */
        for (int i = 0; i < n; i++) {
            lb[i] = same ? 40 : rnd(&seed, 1, 100);
            rb[i] = rnd(&seed, 0, 1) ? lb[i] : rnd(&seed, 1, 100);
        }
        uint64_t embed = rnd(&seed, 0, 150), head = rnd(&seed, 0, 150);
        bool tied = rnd(&seed, 0, 3) == 0;
        if (tied) head = embed + rnd(&seed, 0, 5);
        sq_plan_problem p = {
            .n_layers = n, .layer_bytes = lb, .layer_read_bytes = rb,
            .embed_bytes = embed, .embed_read_bytes = rnd(&seed, 0, 3),
            .head_bytes = head, .head_read_bytes = head,
            .tied_bytes = tied ? embed : 0,
            .kv_token_layer_bytes = rnd(&seed, 0, 4), .n_kv_tokens = rnd(&seed, 0, 6),
            .workspace_bytes = rnd(&seed, 0, 30), .logits_bytes = rnd(&seed, 0, 30),
            .n_devices = m, .capacity_bytes = cap, .bandwidth_bps = bw};
        for (int j = 0; j < m; j++) {
            cap[j] = rnd(&seed, 60, 700);
            bw[j] = rnd(&seed, 0, 2) == 0 ? 1.0 : (double)rnd(&seed, 1, 9) * 0.5;
        }
        best b = {.best_min_head = INT64_MIN};
        int counts[4], bc[4];
        brute_rec(&p, bc, 0, n, &b);
        ck_assert_int_gt(b.n_assignments, 0);
        sq_plan_eval e;
        sq_error err;
        sq_error_init(&err, -1);
        sq_status st = sq_plan_solve(&p, counts, &e, &err);
        int sum = 0;
        for (int j = 0; j < m; j++) {
            sum += counts[j];
            if (n >= m) ck_assert_int_ge(counts[j], 1);
        }
        ck_assert_int_eq(sum, n);
        if (n < m) n_empty_allowed++;
        if (b.feasible) {
            n_feasible++;
            ck_assert_msg(st == SQ_OK, "iter %d: brute force fits, solver says %s", iter, err.msg);
            ck_assert_msg(e.fits, "iter %d", iter);
            ck_assert_msg(e.bottleneck_s == b.bottleneck, "iter %d: bottleneck %.17g vs brute %.17g",
                          iter, e.bottleneck_s, b.bottleneck);
            ck_assert_msg(e.min_headroom_bytes == b.headroom, "iter %d: headroom %" PRId64
                          " vs brute %" PRId64, iter, e.min_headroom_bytes, b.headroom);
            sq_plan_stage_eval st[4];
            sq_plan_evaluate(&p, counts, 0, m - 1, st, &e);
            double spread = 0;
            for (int k = 0; k < m; k++) spread = k ? spread + st[k].step_s * st[k].step_s
                                                    : st[k].step_s * st[k].step_s;
            ck_assert_msg(spread == b.spread, "iter %d: spread %.17g vs brute %.17g", iter, spread,
                          b.spread);
        } else {
            n_infeasible++;
            ck_assert_msg(st == SQ_ERR_FIT, "iter %d: brute force infeasible, solver %d", iter, st);
            ck_assert(!e.fits);
            /* the reported split has the smallest possible worst overflow */
            ck_assert_int_eq(e.min_headroom_bytes, b.best_min_head);
            ck_assert_ptr_nonnull(strstr(err.msg, "does not fit"));
        }
    }
    /* the generator must cover both outcomes and the more-devices-than-layers rule */
    ck_assert_int_gt(n_feasible, 800);
    ck_assert_int_gt(n_infeasible, 300);
    ck_assert_int_gt(n_empty_allowed, 100);
}
END_TEST

START_TEST(test_evaluate_by_hand) {
    /* 4 layers of 10 B (read 10 B), embed 7 (reads 1), head 9 (reads 9), KV 2 B/token/layer ×
     * 3 tokens, workspace 5, logits 4; devices: cap 60 @ 1 B/s, cap 70 @ 2 B/s */
    uint64_t lb[4] = {10, 10, 10, 10}, cap[2] = {60, 70};
    double bw[2] = {1, 2};
    sq_plan_problem p = {.n_layers = 4, .layer_bytes = lb, .layer_read_bytes = lb,
                         .embed_bytes = 7, .embed_read_bytes = 1, .head_bytes = 9,
                         .head_read_bytes = 9, .kv_token_layer_bytes = 2, .n_kv_tokens = 3,
                         .workspace_bytes = 5, .logits_bytes = 4, .n_devices = 2,
                         .capacity_bytes = cap, .bandwidth_bps = bw};
    int counts[2] = {1, 3};
    sq_plan_stage_eval s[2];
    sq_plan_eval e;
    sq_plan_evaluate(&p, counts, 0, 1, s, &e);
    /* dev 0: weights 10+7 = 17, kv 6, fixed 5 → used 28, headroom 32; read 10+6+1 = 17 → 17 s */
    ck_assert_int_eq(s[0].weights_bytes, 17);
    ck_assert_int_eq(s[0].kv_bytes, 6);
    ck_assert_int_eq(s[0].used_bytes, 28);
    ck_assert_int_eq(s[0].headroom_bytes, 32);
    ck_assert_int_eq(s[0].read_bytes, 17);
    ck_assert(s[0].step_s == 17.0);
    /* KV tokens: (60 − 17 − 5) / (2 × 1) = 19 */
    ck_assert_int_eq(s[0].max_kv_tokens, 19);
    /* dev 1: weights 30+9 = 39, kv 18, fixed 5+4 → used 66, headroom 4; read 30+18+9 = 57 → 28.5 s */
    ck_assert_int_eq(s[1].used_bytes, 66);
    ck_assert_int_eq(s[1].headroom_bytes, 4);
    ck_assert(s[1].step_s == 28.5);
    ck_assert_int_eq(s[1].max_kv_tokens, (70 - 39 - 9) / 6);
    ck_assert(e.fits);
    ck_assert(e.bottleneck_s == 28.5);
    ck_assert_int_eq(e.min_headroom_bytes, 4);
    ck_assert_int_eq(e.max_kv_tokens, 3);
    /* the optimum: 2/2 gives dev0 (20+12+1)/1 = 33 s; 1/3 gives max(17, 28.5); 3/1 worse */
    sq_error err;
    counts[0] = counts[1] = -1;
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_OK);
    ck_assert_int_eq(counts[0], 1);
    ck_assert_int_eq(counts[1], 3);
    ck_assert(e.bottleneck_s == 28.5);
    /* a slower device 1 (0.5 B/s): 1/3 → 114 s, 2/2 → max(33, 82), 3/1 → max(49, 25 / 0.5 = 50);
     * 3/1 uses all 60 bytes of device 0 (30 + 7 + 18 + 5) */
    bw[1] = 0.5;
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_OK);
    ck_assert_int_eq(counts[0], 3);
    ck_assert(e.bottleneck_s == 50.0);
    ck_assert_int_eq(e.min_headroom_bytes, 0);
    bw[1] = 2;
    /* tied: one device holding both counts the shared matrix once */
    p.n_devices = 1;
    p.tied_bytes = 7;
    p.head_bytes = 9;
    uint64_t big[1] = {1000};
    p.capacity_bytes = big;
    int one[1] = {4};
    sq_plan_evaluate(&p, one, 0, 0, s, &e);
    ck_assert_int_eq(s[0].weights_bytes, 40 + 7 + 9 - 7);
}
END_TEST

START_TEST(test_bad_problems) {
    uint64_t lb[2] = {1, 1}, cap[1] = {100};
    double bw[1] = {0};
    sq_plan_problem p = {.n_layers = 2, .layer_bytes = lb, .layer_read_bytes = lb,
                         .n_devices = 1, .capacity_bytes = cap, .bandwidth_bps = bw};
    int counts[1];
    sq_plan_eval e;
    sq_error err;
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "bandwidth"));
    bw[0] = 1;
    p.n_layers = 0;
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_ERR_INVALID);
    p.n_layers = 2;
    p.kv_token_layer_bytes = UINT64_MAX / 2;
    p.n_kv_tokens = 4;
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "KV"));
    p.kv_token_layer_bytes = 0;
    p.tied_bytes = 5;   /* more than embed */
    ck_assert_int_eq(sq_plan_solve(&p, counts, &e, &err), SQ_ERR_INVALID);
}
END_TEST

/* ---- accelerate's greedy against the worked examples (device-map-anchors.md §9) ---------- */
static void run_accel(int n, uint64_t layer, uint64_t embed, uint64_t head, uint64_t norm,
                      uint64_t rotary, uint64_t n_leaves, int m, uint64_t mem, bool bnb, int *counts,
                      sq_accel_result *r) {
    uint64_t *lb = malloc(sizeof(uint64_t) * (size_t)n), cap[8];
    double bw[8];
    uint64_t maxmem[8];
    for (int i = 0; i < n; i++) lb[i] = layer;
    for (int j = 0; j < m; j++) { cap[j] = mem; bw[j] = 1e12; maxmem[j] = mem; }
    sq_plan_problem p = {.n_layers = n, .layer_bytes = lb, .layer_read_bytes = lb,
                         .embed_bytes = embed, .head_bytes = head, .n_devices = m,
                         .capacity_bytes = cap, .bandwidth_bps = bw};
    sq_accel_input a = {.layer_bytes = lb, .embed_bytes = embed, .norm_bytes = norm,
                        .head_bytes = head, .rotary_bytes = rotary, .n_leaves = n_leaves, .max_memory = maxmem,
                        .bnb = bnb};
    sq_error err;
    ck_assert_int_eq(sq_plan_accelerate(&p, &a, counts, r, &err), SQ_OK);
    free(lb);
}

START_TEST(test_accelerate_worked_examples) {
    int c[4];
    sq_accel_result r;
    /* §9.1 Llama-2-7B bf16, 4 × 24 GiB: 7 / 9 / 9 / 7 */
    run_accel(32, 404766720, 262144000, 262144000, 8192, 128, 292, 4, 24 * SQ_GIB, false, c, &r);
    ck_assert_int_eq(c[0], 7); ck_assert_int_eq(c[1], 9);
    ck_assert_int_eq(c[2], 9); ck_assert_int_eq(c[3], 7);
    ck_assert_int_eq(r.embed_dev, 0);
    ck_assert_int_eq(r.head_dev, 3);
    ck_assert_int_eq(r.n_offloaded, 0);
    /* caps: GPUs 0-2 at total/4 + 1.25 × layer, exactly §9.1's 3,875,166,240 */
    ck_assert(r.caps[0] == 3875166240.0);
    ck_assert(r.caps[3] == (double)(24 * SQ_GIB));
    /* §9.2 Llama-2-7B NF4 (v5 accounting), 4 × 24 GiB: 4 / 9 / 9 / 10 */
    run_accel(32, 101203968, 262144000, 262144000, 8192, 256, 292, 4, 24 * SQ_GIB, true, c, &r);
    ck_assert_int_eq(c[0], 4); ck_assert_int_eq(c[1], 9);
    ck_assert_int_eq(c[2], 9); ck_assert_int_eq(c[3], 10);
    ck_assert(fabs(r.caps[0] - 960489734.4) < 1.0);
    /* §9.3 Llama-3-70B NF4, 2 × 40 GiB: 31 / 49 */
    run_accel(80, 427851776, 2101346304, 2101346304, 16384, 256, 724, 2, 40 * SQ_GIB, true, c, &r);
    ck_assert_int_eq(c[0], 31); ck_assert_int_eq(c[1], 49);
    ck_assert_int_eq(r.head_dev, 1);
    /* a card too small for anything: everything is skipped and goes to cpu */
    run_accel(4, 1000, 100, 100, 10, 0, 40, 2, 500, true, c, &r);
    ck_assert_int_gt(r.n_offloaded, 0);
}
END_TEST

static Suite *plan_suite(void) {
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_solver_equals_brute_force);
    tcase_add_test(tc, test_evaluate_by_hand);
    tcase_add_test(tc, test_bad_problems);
    tcase_add_test(tc, test_accelerate_worked_examples);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(plan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
