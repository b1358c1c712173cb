/* `shardq plan`: where every layer goes, from config.json alone (no weights) and a cluster
 * (a cluster-config file, or --discover: hwloc on every rank, gathered under mpirun).
 * Every rank computes the plan and the ranks check they agree (hash); rank 0 prints and writes
 * the files.  Must never read weights, and no rank may return before the others know the
 * outcome (every failure goes through sq_cli_agree). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "shardq/config.h"
#include "shardq/meta.h"
#include "shardq/plan.h"
#include "shardq/size.h"
#include "shardq/topology.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: [mpirun -np N] shardq plan (MODEL_DIR | --config config.json) (--cluster FILE | --discover)\n"
        "         [--quant nf4|fp4|int8|int8-zp|none] [--double-quant] [--blocksize N] [--max-seq N] [--batch N]\n"
        "         [--max-memory SPEC] [--reserve-gib G] [--compare accelerate] [--json]\n"
        "         [--out plan.json] [--hf-device-map FILE] [--svg FILE]\n\n"
        "Splits the decoder layers into contiguous stages, one per rank (embed_tokens on the first,\n"
        "norm + lm_head on the last), from config.json alone.  The plan is optimal: it fits, then\n"
        "minimises the slowest stage's time per decode step (bytes read: weights + KV cache at\n"
        "max_seq, over the device's memory bandwidth), then maximises the smallest headroom.\n"
        "Memory per device: exact weight bytes at the scheme + KV cache (max_seq x batch) + an\n"
        "activation workspace + the logits buffer on the last stage; capacity = total - reserve.\n"
        "Every stage holds at least one layer unless there are more ranks than layers.\n"
        "  --cluster FILE       a cluster-config JSON (cluster-configs/README.md)\n"
        "  --discover           this machine (hwloc), or under mpirun the ranks started: one\n"
        "                       rank per GPU by local rank; without GPUs each rank is a CPU device\n"
        "                       with host memory / ranks on its node\n"
        "  --quant Q            nf4 (default), fp4, int8, int8-zp or none (the checkpoint's dtype)\n"
        "  --double-quant       quantize the absmax too (bnb_4bit_use_double_quant)\n"
        "  --blocksize N        4-bit block size, 32..4096, power of two (default 64)\n"
        "  --max-seq N          tokens per sequence the KV cache holds (default min(4096, max pos))\n"
        "  --batch N            sequences (default 1)\n"
        "  --max-memory SPEC    capacities overriding total - reserve: '0=20GiB,1=22GiB' by rank,\n"
        "                       or 'node0:1=22GiB' (node, device on it); units B KB MB GB KiB MiB GiB\n"
        "  --reserve-gib G      runtime reserve per device (CUDA context, allocator); default 1\n"
        "  --compare accelerate also show what accelerate's device_map=\"auto\" would do given each\n"
        "                       device's memory (transformers 5.23 + accelerate 1.15, emulated;\n"
        "                       equal to the real library's maps in tests/reference/), evaluated\n"
        "                       with the same model\n"
        "  --json               print the plan as JSON (with --compare: plus an \"accelerate\" key)\n"
        "  --out FILE           write the plan file that quantize / run / bench read\n"
        "  --hf-device-map FILE write transformers' device_map JSON (for from_pretrained(\n"
        "                       device_map=...)): module -> the GPU's CUDA index on the node,\n"
        "                       or \"cpu\"; one-node plans only (one process, one machine)\n"
        "  --svg FILE           one stacked bar per device: weights / KV / workspace / headroom\n");
}

static double gib(double b) { return b / (double)SQ_GIB; }

/* "llama-2-7b" from tests/configs/llama-2-7b.json, "Llama-2-7b-hf" from a folder or
 * Llama-2-7b-hf/config.json */
static void model_label(const char *path, char *out, size_t n) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
    char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        if (!strcmp(base, "config.json") && base != buf) {
            base[-1] = '\0';
            char *p = strrchr(buf, '/');
            base = p ? p + 1 : buf;
        } else {
            char *dot = strstr(base, ".json");
            if (dot && dot[5] == '\0') *dot = '\0';
        }
    }
    snprintf(out, n, "%s", base);
}

static void print_table(const sq_plan *p, const sq_cluster *c, const char *title) {
    char bs[32] = " (one scale per row)";   /* int8 */
    if (!sq_quant_type_is_int8(p->scheme.type))
        snprintf(bs, sizeof bs, " blocksize %lld", (long long)p->scheme.blocksize);
    printf("# %s: %s (%d layers), %s%s%s, max_seq %lld x batch %lld, cluster %s (%d device%s)\n",
           title, p->model_name, p->n_layers, sq_quant_type_name(p->scheme.type),
           p->scheme.double_quant ? "+double-quant" : "", bs,
           (long long)p->max_seq, (long long)p->batch, c->name, c->n_devices,
           c->n_devices == 1 ? "" : "s");
    printf("# %4s  %-12s %-18s %-16s %10s %8s %9s %11s %11s %9s\n", "rank", "node", "device",
           "layers", "weights", "KV", "workspace", "headroom", "capacity", "est_step");
    printf("# %4s  %-12s %-18s %-16s %10s %8s %9s %11s %11s %9s\n", "", "", "", "", "GiB", "GiB",
           "GiB", "GiB", "GiB", "ms");
    uint64_t tw = 0, tkv = 0, tws = 0, tcap = 0;
    for (int i = 0; i < p->n_stages; i++) {
        const sq_plan_stage *s = &p->stages[i];
        char layers[48];
        if (s->n_layers)
            snprintf(layers, sizeof layers, "%d-%d (%d)%s%s", s->first_layer,
                     s->first_layer + s->n_layers - 1, s->n_layers, s->has_embed ? "+E" : "",
                     s->has_head ? "+H" : "");
        else
            snprintf(layers, sizeof layers, "none%s%s", s->has_embed ? "+E" : "", s->has_head ? "+H" : "");
        printf("  %4d  %-12.12s %-18.18s %-16s %10.3f %8.3f %9.3f %11.3f %11.3f %9.4f%s\n", s->rank,
               s->node, s->device, layers, gib((double)s->weights_bytes), gib((double)s->kv_bytes),
               gib((double)(s->workspace_bytes + s->logits_bytes)), gib((double)s->headroom_bytes),
               gib((double)s->capacity_bytes), s->est_step_ms, s->headroom_bytes < 0 ? "  OVER" : "");
        tw += s->weights_bytes;
        tkv += s->kv_bytes;
        tws += s->workspace_bytes + s->logits_bytes;
        tcap += s->capacity_bytes;
    }
    int64_t head = (int64_t)tcap - (int64_t)(tw + tkv + tws);
    printf("  %4s  %-12s %-18s %-16d %10.3f %8.3f %9.3f %11.3f %11.3f\n", "all", "", "", p->n_layers,
           gib((double)tw), gib((double)tkv), gib((double)tws), gib((double)head), gib((double)tcap));
    printf("# bottleneck %.4f ms/step; max_kv_tokens %" PRIu64 "; planned in %.3f ms%s\n",
           p->bottleneck_ms, p->max_kv_tokens, p->plan_ms,
           p->fits ? "" : p->n_offloaded ? "; DOES NOT FIT: modules offloaded to cpu/disk"
                                         : "; DOES NOT FIT: a device overflows");
}

int sq_cli_plan(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *model = NULL, *config = NULL, *cluster_path = NULL;
    const char *max_memory = NULL, *compare = NULL, *out_path = NULL, *hf_path = NULL, *svg_path = NULL;
    bool discover = false, json = false, scheme_given = false;
    int64_t max_seq = 0, batch = 1;
    int urc = 0;
    sq_quant_scheme scheme = sq_quant_scheme_default();
    double reserve = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--discover")) {
            discover = true;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (sq_cli_scheme_flag(ctx, "plan", argc, argv, &i, &scheme, true, &scheme_given,
                                      &missing, &urc)) {
            if (urc) return urc;
            if (missing) return sq_cli_usage_error(ctx, "plan", "%s needs a value", argv[i]);
        } else if (sq_cli_flag_value(argc, argv, &i, "--config", &config, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--cluster", &cluster_path, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--max-memory", &max_memory, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--compare", &compare, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--out", &out_path, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--hf-device-map", &hf_path, &missing) ||
                   sq_cli_flag_value(argc, argv, &i, "--svg", &svg_path, &missing)) {
            if (missing) return sq_cli_usage_error(ctx, "plan", "%s needs a value", argv[i]);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-seq", &v, &missing)) {
            if (missing || !sq_cli_parse_i64(v, 1, INT64_C(1) << 24, &max_seq))
                return sq_cli_usage_error(ctx, "plan", "--max-seq must be a whole number in 1..16777216");
        } else if (sq_cli_flag_value(argc, argv, &i, "--batch", &v, &missing)) {
            if (missing || !sq_cli_parse_i64(v, 1, 1 << 20, &batch))
                return sq_cli_usage_error(ctx, "plan", "--batch must be a whole number in 1..1048576 (got '%s')",
                                          v ? v : "");
        } else if (sq_cli_flag_value(argc, argv, &i, "--reserve-gib", &v, &missing)) {
            if (missing || !sq_cli_parse_f64(v, 0, 1024, &reserve))
                return sq_cli_usage_error(ctx, "plan", "--reserve-gib must be a number in 0..1024");
        } else if (argv[i][0] == '-') {
            return sq_cli_usage_error(ctx, "plan", "unknown option '%s'", argv[i]);
        } else if (!model) {
            model = argv[i];
        } else {
            return sq_cli_usage_error(ctx, "plan", "one MODEL_DIR only ('%s' is extra)", argv[i]);
        }
    }
    if (!!model + !!config != 1)
        return sq_cli_usage_error(ctx, "plan", "give MODEL_DIR or --config config.json (one of them)");
    if (!!cluster_path + discover != 1)
        return sq_cli_usage_error(ctx, "plan", "give --cluster FILE or --discover (one of them)");
    if (compare && strcmp(compare, "accelerate"))
        return sq_cli_usage_error(ctx, "plan", "--compare knows only 'accelerate'");
    if ((urc = sq_cli_scheme_check(ctx, "plan", &scheme)) != 0) return urc;

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_model_config cfg;
    sq_meta *meta = NULL;
    sq_cluster *cluster = NULL;
    sq_plan *plan = NULL, *acc = NULL;
    int rc = 1;
    /* every rank reads config.json (a few KB) and the cluster file: the same bytes */
    sq_status st = sq_cli_config_load(model ? model : config, &cfg, &err);
    if (st == SQ_OK) {
        scheme.dense_dtype = cfg.torch_dtype;
        st = sq_quant_scheme_check(&scheme, &err);
    }
    if (st == SQ_OK) st = sq_meta_create(&cfg, &meta, &err);
    if (st == SQ_OK && cluster_path) st = sq_cluster_load(cluster_path, &cluster, &err);
    sq_node_info local;
    memset(&local, 0, sizeof local);
    if (st == SQ_OK && discover) st = sq_topo_discover(NULL, &local, &err);
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) goto done;
    if (discover) {
        if (ctx->n_ranks > 1) st = sq_cluster_gather(ctx->comm, &local, &cluster, &err);
        else st = sq_cluster_from_node(&local, &cluster, &err);
        st = sq_cli_agree(ctx, st, &err);
        if (st != SQ_OK) goto done;
    }
    sq_plan_options o = sq_plan_options_default();
    o.max_seq = max_seq;
    o.batch = batch;
    o.reserve_gib = reserve;
    o.max_memory = max_memory;
    st = sq_plan_make(meta, &scheme, cluster, &o, &plan, &err);
    if (st == SQ_OK && compare) st = sq_plan_make_accelerate(meta, &scheme, cluster, &o, &acc, &err);
    char label[128];
    model_label(model ? model : config, label, sizeof label);
    if (plan) snprintf(plan->model_name, sizeof plan->model_name, "%s", label);
    if (acc) {
        snprintf(acc->model_name, sizeof acc->model_name, "%s", label);
        snprintf(acc->label, sizeof acc->label, "accelerate-emulated");
    }
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) goto done;
    /* every rank must hold the same plan */
    if (ctx->n_ranks > 1) {
        uint64_t h = sq_plan_hash(plan), lo = 0, hi = 0;
        if (MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, ctx->comm) != MPI_SUCCESS ||
            MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, ctx->comm) != MPI_SUCCESS) {
            st = sq_error_set(&err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce of plan hashes failed");
            goto done;
        }
        if (lo != hi) {
            st = sq_error_set(&err, SQ_ERR_INTERNAL, NULL, NULL, "ranks computed different plans");
            goto done;
        }
    }
    /* refused before anything is printed or written */
    if (hf_path && (st = sq_plan_hf_device_map_check(plan, &err)) != SQ_OK) goto done;
    if (ctx->rank == 0) {
        if (json) {
            char *js = NULL, *ja = NULL;
            st = sq_plan_to_json(plan, &js, &err);
            if (st == SQ_OK && acc) st = sq_plan_to_json(acc, &ja, &err);
            if (st == SQ_OK) {
                if (ja) {   /* splice "accelerate": {...} in before the closing brace */
                    size_t n = strlen(js);
                    while (n && js[n - 1] != '}') n--;
                    printf("%.*s,\n\t\"accelerate\":\t%s\n}\n", (int)(n ? n - 1 : 0), js, ja);
                } else {
                    printf("%s\n", js);
                }
            }
            free(js);
            free(ja);
        } else {
            print_table(plan, cluster, "shardq plan (optimal)");
            if (acc) {
                printf("\n");
                print_table(acc, cluster,
                            "accelerate plan (device_map=\"auto\", transformers 5.23 + accelerate 1.15, emulated)");
                printf("\n# compare: bottleneck %.4f ms (shardq) vs %.4f ms (accelerate): %+.1f%%; "
                       "max_kv_tokens %" PRIu64 " vs %" PRIu64 "\n",
                       plan->bottleneck_ms, acc->bottleneck_ms,
                       acc->bottleneck_ms > 0 ? (plan->bottleneck_ms / acc->bottleneck_ms - 1) * 100 : 0,
                       plan->max_kv_tokens, acc->max_kv_tokens);
            }
        }
        if (st == SQ_OK && out_path) st = sq_plan_write_file(plan, out_path, &err);
        if (st == SQ_OK && hf_path) st = sq_plan_write_hf_device_map(plan, hf_path, &err);
        if (st == SQ_OK && svg_path) st = sq_plan_write_svg(plan, svg_path, &err);
    }
    st = sq_cli_agree(ctx, st, &err);
    if (st == SQ_OK) rc = 0;
done:
    if (st != SQ_OK && ctx->rank == 0) rc = sq_cli_report(ctx, &err);
    sq_plan_destroy(plan);
    sq_plan_destroy(acc);
    sq_cluster_destroy(cluster);
    sq_meta_destroy(meta);
    return st == SQ_OK ? 0 : (rc ? rc : 1);
}
