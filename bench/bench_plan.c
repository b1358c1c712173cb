/* bench_plan: planning time for Llama-3.1-405B (config.json only) across 16 nodes x 8 H100
 * (128 ranks), NF4, max_seq 4096, batch 1.  Prints a table; not a timed test.
 *   usage: bench_plan [config.json] [repeats]   (default: tests/configs/llama-3.1-405b.json, 20) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/plan.h"

static const char *k_cluster =
    "{\"name\": \"dgx-h100-16node\", \"nodes\": [{\"name\": \"node\", \"count\": 16, "
    "\"host_memory_gib\": 2048, \"gpus\": [{\"name\": \"H100-SXM5-80GB\", \"count\": 8, "
    "\"memory_gib\": 80, \"mem_bandwidth_gbps\": 3350, \"bf16_tflops\": 989}]}]}";

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *cfg_path = argc > 1 ? argv[1] : SQ_SOURCE_DIR "/tests/configs/llama-3.1-405b.json";
    int reps = argc > 2 ? atoi(argv[2]) : 20;
    if (reps < 1 || reps > 100000) reps = 20;
    sq_error err;
    sq_error_init(&err, -1);
    sq_model_config cfg;
    sq_meta *m = NULL;
    sq_cluster *c = NULL;
    char line[2048];
    if (sq_config_load(cfg_path, &cfg, &err) != SQ_OK || sq_meta_create(&cfg, &m, &err) != SQ_OK ||
        sq_cluster_parse(k_cluster, strlen(k_cluster), "bench cluster", &c, &err) != SQ_OK) {
        sq_error_format(&err, line, sizeof line);
        fprintf(stderr, "bench_plan: %s\n", line);
        return 1;
    }
    sq_quant_scheme s = sq_quant_scheme_default();
    s.dense_dtype = cfg.torch_dtype;
    sq_plan_options o = sq_plan_options_default();
    o.max_seq = 4096;
    double *t_sq = malloc(sizeof(double) * (size_t)reps), *t_acc = malloc(sizeof(double) * (size_t)reps);
    sq_plan *p = NULL, *a = NULL;
    for (int r = 0; r < reps; r++) {
        sq_plan_destroy(p);
        sq_plan_destroy(a);
        double t0 = sq_now_s();
        sq_status st = sq_plan_make(m, &s, c, &o, &p, &err);
        double t1 = sq_now_s();
        sq_status st2 = sq_plan_make_accelerate(m, &s, c, &o, &a, &err);
        double t2 = sq_now_s();
        if (st != SQ_OK || st2 != SQ_OK) {
            sq_error_format(&err, line, sizeof line);
            fprintf(stderr, "bench_plan: %s\n", line);
            return 1;
        }
        t_sq[r] = (t1 - t0) * 1e3;
        t_acc[r] = (t2 - t1) * 1e3;
    }
    qsort(t_sq, (size_t)reps, sizeof(double), cmp_d);
    qsort(t_acc, (size_t)reps, sizeof(double), cmp_d);
    int idle = 0;
    for (int i = 0; i < p->n_stages; i++) idle += p->stages[i].n_layers == 0;
    printf("# bench_plan: %s (%d layers), %s, %d ranks, nf4, max_seq %lld, batch %lld, %d repeats\n",
           p->model_name, p->n_layers, c->name, c->n_devices, (long long)p->max_seq,
           (long long)p->batch, reps);
    printf("# %-34s %12s %12s %12s %14s %14s\n", "planner", "min_ms", "median_ms", "max_ms",
           "bottleneck_ms", "max_kv_tokens");
    printf("  %-34s %12.3f %12.3f %12.3f %14.4f %14llu\n", "shardq (exact DP, incl. build)", t_sq[0],
           t_sq[reps / 2], t_sq[reps - 1], p->bottleneck_ms, (unsigned long long)p->max_kv_tokens);
    printf("  %-34s %12.3f %12.3f %12.3f %14.4f %14llu\n", "accelerate-style (emulated)", t_acc[0],
           t_acc[reps / 2], t_acc[reps - 1], a->bottleneck_ms, (unsigned long long)a->max_kv_tokens);
    printf("# solver alone (plan_ms of the last run): %.3f ms; ranks with no layer: %d (126 layers on 128 ranks)\n",
           p->plan_ms, idle);
    printf("# %s\n", a->fits ? "OK" : "accelerate-style plan does not fit (see n_offloaded)");
    free(t_sq);
    free(t_acc);
    sq_plan_destroy(p);
    sq_plan_destroy(a);
    sq_cluster_destroy(c);
    sq_meta_destroy(m);
    return 0;
}
