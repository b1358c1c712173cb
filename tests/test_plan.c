/* Tests of the plan module: the exact solver against brute force on thousands of random small
 * instances (feasible and not), hand-computed evaluations, accelerate's greedy emulation
 * against worked examples and against every map the real library gives
 * (tests/reference/accelerate_maps.json: transformers 5.23 + accelerate 1.15 on the committed
 * configs × nf4 / fp4 / bf16 × clusters), and the README's planner rows, both plans: layers,
 * bottleneck to 1e-4 ms and max_kv_tokens exactly (Llama-2-7B NF4 on 4×24 GiB, Llama-3-70B
 * NF4 on 2×40 GiB). */
#include <check.h>
#include <cjson/cJSON.h>
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
                      uint64_t rotary, int m, uint64_t mem, bool bnb, int *counts,
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
                        .head_bytes = head, .rotary_bytes = rotary, .max_memory = maxmem,
                        .bnb = bnb};
    sq_error err;
    ck_assert_int_eq(sq_plan_accelerate(&p, &a, counts, r, &err), SQ_OK);
    free(lb);
}

START_TEST(test_accelerate_worked_examples) {
    int c[4];
    sq_accel_result r;
    /* §9.1 Llama-2-7B bf16, 4 × 24 GiB: 7 / 9 / 9 / 7 (the decoder layer is the largest module) */
    run_accel(32, 404766720, 262144000, 262144000, 8192, 128, 4, 24 * SQ_GIB, false, c, &r);
    ck_assert_int_eq(c[0], 7); ck_assert_int_eq(c[1], 9);
    ck_assert_int_eq(c[2], 9); ck_assert_int_eq(c[3], 7);
    ck_assert_int_eq(r.embed_dev, 0);
    ck_assert_int_eq(r.head_dev, 3);
    ck_assert_int_eq(r.n_offloaded, 0);
    /* caps: GPUs 0-2 at total/4 + 1.25 × layer, exactly §9.1's 3,875,166,240 */
    ck_assert(r.caps[0] == 3875166240.0);
    ck_assert(r.caps[3] == (double)(24 * SQ_GIB));
    /* Llama-2-7B NF4, 4 × 24 GiB: the real library gives 6 / 11 / 11 / 4 (the anchors'
     * correction): the buffer is 1.25 × the bf16 embedding (262,144,000), not the 4-bit layer:
     * (3,762,823,424 / 4 + 327,680,000) × 0.9 */
    run_accel(32, 101203968, 262144000, 262144000, 8192, 256, 4, 24 * SQ_GIB, true, c, &r);
    ck_assert_int_eq(c[0], 6); ck_assert_int_eq(c[1], 11);
    ck_assert_int_eq(c[2], 11); ck_assert_int_eq(c[3], 4);
    ck_assert_msg(fabs(r.caps[0] - 1141547270.4) < 1.0, "%.1f", r.caps[0]);
    /* Llama-3-70B NF4, 2 × 40 GiB: 36 / 44 */
    run_accel(80, 427851776, 2101346304, 2101346304, 16384, 256, 2, 40 * SQ_GIB, true, c, &r);
    ck_assert_int_eq(c[0], 36); ck_assert_int_eq(c[1], 44);
    ck_assert_int_eq(r.head_dev, 1);
    /* one GPU given its memory keeps all of it (no ×0.9 when max_memory is given) */
    run_accel(4, 1000, 100, 100, 10, 0, 1, 10000, false, c, &r);
    ck_assert(r.caps[0] == 10000.0);
    ck_assert_int_eq(c[0], 4);
    ck_assert_int_eq(r.n_offloaded, 0);
    /* a card too small for anything: everything is skipped and goes to cpu */
    run_accel(4, 1000, 100, 100, 10, 0, 2, 500, true, c, &r);
    ck_assert_int_gt(r.n_offloaded, 0);
}
END_TEST


/* ---- with real model configs ------------------------------------------------------------- */
#define CFG(f) SQ_SOURCE_DIR "/tests/configs/" f

typedef struct fixture {
    sq_model_config cfg;
    sq_meta *m;
    sq_cluster *c;
    sq_quant_scheme s;
} fixture;

static void fx_open(fixture *f, const char *cfg_path, const char *cluster_json) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_config_load(cfg_path, &f->cfg, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_meta_create(&f->cfg, &f->m, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_cluster_parse(cluster_json, strlen(cluster_json), "test cluster", &f->c, &err) == SQ_OK,
                  "%s", err.msg);
    f->s = sq_quant_scheme_default();
    f->s.dense_dtype = f->cfg.torch_dtype;
}
static void fx_close(fixture *f) {
    sq_meta_destroy(f->m);
    sq_cluster_destroy(f->c);
}

static const char *k_4x24 =
    "{\"name\": \"4x24GiB\", \"nodes\": [{\"name\": \"box\", \"gpus\": [{\"name\": \"RTX-4090\", "
    "\"count\": 4, \"memory_gib\": 24}]}]}";
static const char *k_2x40 =
    "{\"name\": \"2x40GiB\", \"nodes\": [{\"name\": \"node\", \"gpus\": [{\"name\": \"A100-SXM4-40GB\", "
    "\"count\": 2, \"memory_gib\": 40}]}]}";

/* One README planner row, both plans asserted: layers per device, bottleneck to 1e-4 ms (the
 * README prints 4 decimals), max_kv_tokens exactly. */
typedef struct row_want {
    int counts[8];
    double bottleneck_ms;
    uint64_t max_kv_tokens;
} row_want;

static void check_row(const sq_plan *p, const row_want *w, int n_dev) {
    for (int j = 0; j < n_dev; j++)
        ck_assert_msg(p->stages[j].n_layers == w->counts[j], "%s: device %d has %d layers, want %d",
                      p->label, j, p->stages[j].n_layers, w->counts[j]);
    ck_assert_msg(fabs(p->bottleneck_ms - w->bottleneck_ms) < 1e-4, "%s: bottleneck %.6f ms, want %.4f",
                  p->label, p->bottleneck_ms, w->bottleneck_ms);
    ck_assert_msg(p->max_kv_tokens == w->max_kv_tokens, "%s: max_kv_tokens %" PRIu64 ", want %" PRIu64,
                  p->label, p->max_kv_tokens, w->max_kv_tokens);
}

static void compare(const char *cfg, const char *cluster, const row_want *acc_want,
                    const row_want *shardq_want, int n_dev) {
    fixture f;
    fx_open(&f, cfg, cluster);
    sq_plan_options o = sq_plan_options_default();
    sq_plan *p = NULL, *a = NULL;
    sq_error err;
    ck_assert_msg(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(sq_plan_make_accelerate(f.m, &f.s, f.c, &o, &a, &err), SQ_OK);
    ck_assert_int_eq(a->n_stages, n_dev);
    ck_assert(p->fits);
    check_row(a, acc_want, n_dev);
    check_row(p, shardq_want, n_dev);
    ck_assert_msg(p->bottleneck_ms < a->bottleneck_ms, "bottleneck %.4f vs %.4f", p->bottleneck_ms,
                  a->bottleneck_ms);
    ck_assert_uint_gt(p->max_kv_tokens, a->max_kv_tokens);
    fprintf(stderr, "done-when %s NF4 on %s (max_seq %lld, batch 1):\n", cfg, f.c->name,
            (long long)p->max_seq);
    const sq_plan *both[2] = {a, p};
    for (int k = 0; k < 2; k++) {
        fprintf(stderr, "  %-10s layers", both[k]->label);
        for (int j = 0; j < n_dev; j++) fprintf(stderr, " %d", both[k]->stages[j].n_layers);
        fprintf(stderr, "  bottleneck %.4f ms  max_kv_tokens %llu  min headroom",
                both[k]->bottleneck_ms, (unsigned long long)both[k]->max_kv_tokens);
        int64_t mh = INT64_MAX;
        for (int j = 0; j < n_dev; j++) if (both[k]->stages[j].headroom_bytes < mh) mh = both[k]->stages[j].headroom_bytes;
        fprintf(stderr, " %.3f GiB\n", (double)mh / (double)SQ_GIB);
    }
    /* deterministic: the same inputs give the same plan */
    sq_plan *p2 = NULL;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p2, &err), SQ_OK);
    ck_assert_uint_eq(sq_plan_hash(p2), sq_plan_hash(p));
    sq_plan_destroy(p2);
    sq_plan_destroy(p);
    sq_plan_destroy(a);
    fx_close(&f);
}

/* The emulation equals the real library: every map in tests/reference/accelerate_maps.json
 * (transformers 5.23 + accelerate 1.15 _get_device_map on the meta model, written by
 * tests/reference/gen_accelerate_maps.py) — layers per device, where embed_tokens, norm and
 * lm_head went, and how many layers went to cpu / disk. */
static int dev_of(const cJSON *v, int n_dev) {
    if (cJSON_IsNumber(v)) return (int)v->valuedouble;
    return n_dev;   /* "cpu" / "disk": offloaded */
}

START_TEST(test_accelerate_equals_committed_maps) {
    size_t n = 0;
    char *text = sq_test_read_file(SQ_SOURCE_DIR "/tests/reference/accelerate_maps.json", &n);
    ck_assert_ptr_nonnull(text);
    cJSON *doc = cJSON_Parse(text);
    ck_assert_ptr_nonnull(doc);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "cases");
    ck_assert_int_eq(cJSON_GetArraySize(cases), 5 * 3 * 6);
    int n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *model = cJSON_GetObjectItemCaseSensitive(c, "model")->valuestring;
        const char *quant = cJSON_GetObjectItemCaseSensitive(c, "quant")->valuestring;
        const char *cluster = cJSON_GetObjectItemCaseSensitive(c, "cluster")->valuestring;
        char cfg_path[1024], cl_path[1024];
        snprintf(cfg_path, sizeof cfg_path, "%s/tests/configs/%s", SQ_SOURCE_DIR, model);
        snprintf(cl_path, sizeof cl_path, "%s/%s", SQ_SOURCE_DIR, cluster);
        size_t cn = 0;
        char *cl = sq_test_read_file(cl_path, &cn);
        ck_assert_ptr_nonnull(cl);
        fixture f;
        fx_open(&f, cfg_path, cl);
        free(cl);
        f.s.type = !strcmp(quant, "nf4") ? SQ_QUANT_NF4 : !strcmp(quant, "fp4") ? SQ_QUANT_FP4
                                                                                 : SQ_QUANT_NONE;
        sq_plan_options o = sq_plan_options_default();
        sq_plan_built b;
        sq_error err;
        ck_assert_msg(sq_plan_problem_build(f.m, &f.s, f.c, &o, &b, &err) == SQ_OK, "%s", err.msg);
        int nd = b.p.n_devices;
        const cJSON *mm = cJSON_GetObjectItemCaseSensitive(c, "max_memory");
        ck_assert_int_eq(cJSON_GetArraySize(mm), nd);
        for (int j = 0; j < nd; j++)
            ck_assert_uint_eq(b.acc.max_memory[j], (uint64_t)cJSON_GetArrayItem(mm, j)->valuedouble);
        int counts[64];
        sq_accel_result r;
        ck_assert_int_eq(sq_plan_accelerate(&b.p, &b.acc, counts, &r, &err), SQ_OK);
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "layers");
        char got_s[512] = "", want_s[512] = "";
        size_t gl = 0, wl = 0;
        int sum = 0;
        for (int j = 0; j < nd; j++) {
            gl += (size_t)snprintf(got_s + gl, sizeof got_s - gl, "%s%d", j ? "/" : "", counts[j]);
            wl += (size_t)snprintf(want_s + wl, sizeof want_s - wl, "%s%d", j ? "/" : "",
                                   (int)cJSON_GetArrayItem(want, j)->valuedouble);
            sum += counts[j];
        }
        int off = (int)cJSON_GetObjectItemCaseSensitive(c, "offloaded_layers")->valuedouble;
        ck_assert_msg(!strcmp(got_s, want_s) && b.p.n_layers - sum == off,
                      "%s %s %s: emulation %s (+%d offloaded), accelerate %s (+%d)", model, quant,
                      cluster, got_s, b.p.n_layers - sum, want_s, off);
        int we = dev_of(cJSON_GetObjectItemCaseSensitive(c, "embed"), nd);
        int wn = dev_of(cJSON_GetObjectItemCaseSensitive(c, "norm"), nd);
        const cJSON *wh = cJSON_GetObjectItemCaseSensitive(c, "head");
        ck_assert_msg(r.embed_dev == we && r.norm_dev == wn, "%s %s %s: embed %d norm %d, want %d %d",
                      model, quant, cluster, r.embed_dev, r.norm_dev, we, wn);
        if (!(cJSON_IsString(wh) && !strcmp(wh->valuestring, "tied")))
            ck_assert_msg(r.head_dev == dev_of(wh, nd), "%s %s %s: head %d, want %d", model, quant,
                          cluster, r.head_dev, dev_of(wh, nd));
        n_cases++;
        sq_plan_problem_free(&b);
        fx_close(&f);
    }
    ck_assert_int_eq(n_cases, cJSON_GetArraySize(cases));
    cJSON_Delete(doc);
    free(text);
}
END_TEST

START_TEST(test_done_when_llama2_7b) {
    /* the README's first planner row; accelerate's 6 / 11 / 11 / 4 is the real library's map
     * (tests/reference/accelerate_maps.json) */
    const row_want acc = {{6, 11, 11, 4}, 1.9748, 129206}, sq = {{7, 9, 9, 7}, 1.6157, 159463};
    compare(CFG("llama-2-7b.json"), k_4x24, &acc, &sq, 4);
}
END_TEST

START_TEST(test_done_when_llama3_70b) {
    /* the README's second row: accelerate 36 / 44 (the real library's map) */
    const row_want acc = {{36, 44}, 15.4457, 99817}, sq = {{42, 38}, 13.5237, 110169};
    compare(CFG("llama-3-70b.json"), k_2x40, &acc, &sq, 2);
}
END_TEST

START_TEST(test_plan_fields_and_files) {
    fixture f;
    fx_open(&f, CFG("llama-2-7b.json"), k_4x24);
    sq_plan_options o = sq_plan_options_default();
    o.max_seq = 2048;
    o.batch = 2;
    sq_plan *p = NULL;
    sq_error err;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_OK);
    ck_assert_int_eq(p->n_stages, 4);
    ck_assert_int_eq(p->max_seq, 2048);
    ck_assert_int_eq(p->batch, 2);
    int next = 0;
    uint64_t weights = 0;
    for (int j = 0; j < 4; j++) {
        const sq_plan_stage *s = &p->stages[j];
        ck_assert_int_eq(s->rank, j);
        ck_assert_int_eq(s->first_layer, next);
        ck_assert_int_ge(s->n_layers, 1);
        next += s->n_layers;
        ck_assert_str_eq(s->node, "box");
        ck_assert_str_eq(s->device, "RTX-4090");
        ck_assert(s->has_embed == (j == 0) && s->has_head == (j == 3));
        /* KV: layers × tokens × 2 × kv_heads × head_dim × 2 bytes */
        ck_assert_uint_eq(s->kv_bytes, (uint64_t)s->n_layers * 2048 * 2 * 2 * 32 * 128 * 2);
        ck_assert_uint_eq(s->capacity_bytes, 23 * SQ_GIB);   /* 24 GiB − 1 GiB reserve */
        ck_assert_uint_eq(s->logits_bytes, j == 3 ? 2ull * 32000 * 4 : 0);
        ck_assert_int_eq(s->headroom_bytes, (int64_t)s->capacity_bytes -
                         (int64_t)(s->weights_bytes + s->kv_bytes + s->workspace_bytes + s->logits_bytes));
        weights += s->weights_bytes;
    }
    ck_assert_int_eq(next, 32);
    /* every weight is held exactly once (untied) */
    ck_assert_uint_eq(weights, sq_meta_total_bytes(f.m, &f.s));

    char *dir = sq_test_tmpdir("plan");
    char path[512], hf[512], svg[512];
    snprintf(path, sizeof path, "%s/plan.json", dir);
    snprintf(hf, sizeof hf, "%s/device_map.json", dir);
    snprintf(svg, sizeof svg, "%s/plan.svg", dir);
    ck_assert_int_eq(sq_plan_write_file(p, path, &err), SQ_OK);
    sq_plan *back = NULL;
    ck_assert_msg(sq_plan_read_file(path, &back, &err) == SQ_OK, "%s", err.msg);
    ck_assert_uint_eq(sq_plan_hash(back), sq_plan_hash(p));
    ck_assert_uint_eq(back->model_hash, sq_meta_hash(f.m));
    sq_plan_destroy(back);
    /* a tampered file is refused with the reason */
    size_t n = 0;
    char *text = sq_test_read_file(path, &n);
    char *at = strstr(text, "\"first_layer\":\t0");
    ck_assert_ptr_nonnull(at);
    at[15] = '1';
    ck_assert_int_eq(sq_test_write_file(path, text, n), 0);
    ck_assert_int_eq(sq_plan_read_file(path, &back, &err), SQ_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "contiguous"));
    ck_assert_ptr_null(back);
    free(text);
    ck_assert_int_eq(sq_test_write_file(path, "{\"format\": 3", 12), 0);
    ck_assert_int_eq(sq_plan_read_file(path, &back, &err), SQ_ERR_FORMAT);

    ck_assert_int_eq(sq_plan_write_hf_device_map(p, hf, &err), SQ_OK);
    text = sq_test_read_file(hf, &n);
    char want[64];
    snprintf(want, sizeof want, "\"model.layers.31\":\t3");
    ck_assert_ptr_nonnull(strstr(text, want));
    ck_assert_ptr_nonnull(strstr(text, "\"model.embed_tokens\":\t0"));
    ck_assert_ptr_nonnull(strstr(text, "\"lm_head\":\t3"));
    snprintf(want, sizeof want, "\"model.layers.%d\":\t1", p->stages[1].first_layer);
    ck_assert_ptr_nonnull(strstr(text, want));
    free(text);
    ck_assert_int_eq(sq_plan_write_svg(p, svg, &err), SQ_OK);
    text = sq_test_read_file(svg, &n);
    ck_assert_ptr_nonnull(strstr(text, "<svg"));
    ck_assert_int_eq(sq_test_count_lines(text) > 16, 1);
    free(text);
    remove(path); remove(hf); remove(svg); rmdir(dir);
    free(dir);
    sq_plan_destroy(p);
    fx_close(&f);
}
END_TEST

START_TEST(test_infeasible_and_bad_options) {
    fixture f;
    fx_open(&f, CFG("llama-3-70b.json"), k_4x24);   /* 4 × 24 GiB: 70B NF4 + KV at 4096 */
    sq_plan_options o = sq_plan_options_default();
    sq_plan *p = (sq_plan *)1;
    sq_error err;
    o.max_seq = 32768;
    o.batch = 8;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_FIT);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err.msg, "does not fit: 80 layers on 4 devices fall short by "));
    ck_assert_ptr_nonnull(strstr(err.msg, "would fit: --max-seq "));
    ck_assert_ptr_nonnull(strstr(err.msg, "more RTX-4090 devices"));
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    fprintf(stderr, "infeasible example: %s\n", err.msg);
    /* the advice is right: the suggested max_seq fits, one more token does not */
    const char *ms = strstr(err.msg, "--max-seq ") + 10;
    long long best = atoll(ms);
    o.max_seq = best;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_OK);
    sq_plan_destroy(p);
    o.max_seq = best + 1;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_FIT);

    o = sq_plan_options_default();
    o.batch = 0;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "--batch must be"));
    o.batch = 1;
    o.max_memory = "7=20GiB";
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "--max-memory: no device 7: the cluster has 4 (ranks 0..3)"));
    o.max_memory = "node3:0=20GiB";
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "no node 'node3'"));
    o.max_memory = "box:9=20GiB";
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "node 'box' has no device 9"));
    o.max_memory = "0=-3GiB";
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    o.max_memory = "0=20parsecs";
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_ERR_INVALID);
    fx_close(&f);
}
END_TEST

START_TEST(test_max_memory_spec) {
    fixture f;
    fx_open(&f, CFG("llama-2-7b.json"),
            "{\"nodes\": [{\"name\": \"node\", \"count\": 2, \"gpus\": [{\"name\": \"A10\", \"count\": 2, "
            "\"memory_gib\": 24}]}]}");
    uint64_t caps[4];
    sq_error err;
    ck_assert_int_eq(sq_plan_parse_max_memory("0=20GiB,node1:1=1.5GB,2=512MiB", f.c, caps, &err), SQ_OK);
    ck_assert_uint_eq(caps[0], 20 * SQ_GIB);
    ck_assert_uint_eq(caps[1], 0);
    ck_assert_uint_eq(caps[2], 512ull << 20);
    ck_assert_uint_eq(caps[3], 1500000000ull);
    /* --max-memory replaces capacity (no reserve taken off), and the planner respects it */
    sq_plan_options o = sq_plan_options_default();
    o.max_memory = "0=2GiB";
    sq_plan *p;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_OK);
    ck_assert_uint_eq(p->stages[0].capacity_bytes, 2 * SQ_GIB);
    ck_assert_int_ge(p->stages[0].headroom_bytes, 0);
    ck_assert_uint_eq(p->stages[1].capacity_bytes, 23 * SQ_GIB);
    sq_plan_destroy(p);
    o.max_memory = NULL;
    o.reserve_gib = 4;
    ck_assert_int_eq(sq_plan_make(f.m, &f.s, f.c, &o, &p, &err), SQ_OK);
    ck_assert_uint_eq(p->stages[3].capacity_bytes, 20 * SQ_GIB);
    sq_plan_destroy(p);
    fx_close(&f);
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
    TCase *tm = tcase_create("models");
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, test_accelerate_equals_committed_maps);
    tcase_add_test(tm, test_done_when_llama2_7b);
    tcase_add_test(tm, test_done_when_llama3_70b);
    tcase_add_test(tm, test_plan_fields_and_files);
    tcase_add_test(tm, test_infeasible_and_bad_options);
    tcase_add_test(tm, test_max_memory_spec);
    suite_add_tcase(s, tm);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(plan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
