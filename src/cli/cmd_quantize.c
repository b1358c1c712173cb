/* `shardq quantize MODEL_DIR --out DIR`: every rank quantizes its own stage and writes its own
 * shard of a bitsandbytes 4-bit checkpoint; the folder appears only when every rank succeeded.
 * Thin: parses flags, calls sq_quantize_run, prints progress (rank 0) and the summary.
 * Must never hold quantization or file logic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/load.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: [mpirun -np N] shardq quantize MODEL_DIR --out DIR [--plan plan.json]\n"
            "                      [--quant nf4|fp4|int8] [--double-quant] [--blocksize N]\n"
            "                      [--compute-dtype bf16|fp16] [--threads N] [--staging-mib N]\n"
            "                      [--device auto|cpu|N] [--quiet] [--json] [--force]\n\n"
            "Writes a bitsandbytes 4-bit checkpoint that transformers loads with\n"
            "AutoModelForCausalLM.from_pretrained: each rank reads only its own layers (from the\n"
            "plan), quantizes them and writes model-<r>-of-<N>.safetensors; rank 0 adds\n"
            "model.safetensors.index.json, config.json (with quantization_config), the tokenizer\n"
            "files and generation_config.json.  Everything goes to DIR.tmp.<pid> first and is\n"
            "renamed to DIR only after every rank succeeded.  DIR must be on a file system every\n"
            "rank sees.  A bitsandbytes 4-bit MODEL_DIR is copied as stored (not re-quantized).\n"
            "  --plan           use this plan file's layer split (it must have N stages); without\n"
            "                   it the ranks started are planned for (host memory as capacity on\n"
            "                   machines without GPUs)\n"
            "  --quant          nf4 (default), fp4 or int8 (bitsandbytes LLM.int8: weight int8 + SCB)\n"
            "  --double-quant   quantize the absmax too (bnb_4bit_use_double_quant)\n"
            "  --blocksize      elements per absmax block: 32..4096, a power of two (default 64)\n"
            "  --compute-dtype  bnb_4bit_compute_dtype written to config.json (default bf16)\n"
            "  --threads        quantization threads per rank (default: one per core)\n"
            "  --staging-mib    staging buffer per rank in MiB (default 64)\n"
            "  --device         where the 4-bit weights are quantized: auto (default: a CUDA build\n"
            "                   on a rank with a GPU uses GPU local-rank mod count, else the CPU),\n"
            "                   cpu, or CUDA device N on every rank (fails without one); same bytes\n"
            "  --quiet          no progress line\n"
            "  --json           print the summary as JSON on stdout\n"
            "  --force          replace DIR if it is a model folder or empty\n");
}

typedef struct cli_progress {
    bool tty;
} cli_progress;

static void on_progress(void *user, const sq_load_progress *p) {
    const cli_progress *c = user;
    char eta[32];
    if (p->eta_s < 0) snprintf(eta, sizeof eta, "--");
    else snprintf(eta, sizeof eta, "%.0f s", p->eta_s);
    char line[160];
    snprintf(line, sizeof line,
             "quantize: %.2f / %.2f GB read (%3.0f%%), %.2f GB/s, ETA %s, ranks done %d/%d",
             (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9,
             p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 100.0,
             p->gbps, eta, p->ranks_done, p->n_ranks);
    if (c->tty) fprintf(stderr, "\r%-100s%s", line, p->final ? "\n" : "");
    else fprintf(stderr, "shardq: %s\n", line);
    fflush(stderr);
}

int sq_cli_quantize(int argc, char **argv, sq_cli_ctx *ctx) {
    sq_quantize_options o;
    memset(&o, 0, sizeof o);
    o.scheme = sq_quant_scheme_default();
    o.compute_dtype = "bfloat16";
    o.quant_on = SQ_QUANTIZE_ON_AUTO;
    bool quiet = false, json = false, quant_given = false;
    int64_t staging_mib = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        int urc = 0;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_flag_value(argc, argv, &i, "--out", &v, &missing)) {
            o.out_dir = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--plan", &v, &missing)) {
            o.plan_path = v;
        } else if (sq_cli_scheme_flag(ctx, "quantize", argc, argv, &i, &o.scheme, false, &quant_given,
                                      &missing, &urc)) {
            if (urc) return urc;
        } else if (sq_cli_flag_value(argc, argv, &i, "--compute-dtype", &v, &missing)) {
            if (!missing && (!strcmp(v, "bf16") || !strcmp(v, "bfloat16"))) o.compute_dtype = "bfloat16";
            else if (!missing && (!strcmp(v, "fp16") || !strcmp(v, "float16"))) o.compute_dtype = "float16";
            else if (!missing)
                return sq_cli_usage_error(ctx, "quantize", "--compute-dtype must be bf16 or fp16, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--threads", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 4096, &threads))
                return sq_cli_usage_error(ctx, "quantize", "--threads must be 1..4096, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--staging-mib", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 1 << 20, &staging_mib))
                return sq_cli_usage_error(ctx, "quantize", "--staging-mib must be 1..1048576, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--device", &v, &missing)) {
            int64_t d = 0;
            if (!missing && !strcmp(v, "auto")) {
                o.quant_on = SQ_QUANTIZE_ON_AUTO;
            } else if (!missing && !strcmp(v, "cpu")) {
                o.quant_on = SQ_QUANTIZE_ON_CPU;
            } else if (!missing && sq_cli_parse_i64(v, 0, 1023, &d)) {
                o.quant_on = SQ_QUANTIZE_ON_CUDA;
                o.quant_device = (int)d;
            } else if (!missing) {
                return sq_cli_usage_error(ctx, "quantize",
                                          "--device must be auto, cpu or a CUDA device number 0..1023, not '%s'", v);
            }
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = true;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--force")) {
            o.force = true;
        } else if (argv[i][0] == '-') {
            return sq_cli_usage_error(ctx, "quantize", "unknown option '%s'", argv[i]);
        } else if (!o.model_dir) {
            o.model_dir = argv[i];
        } else {
            return sq_cli_usage_error(ctx, "quantize", "unexpected argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, "quantize", "%s needs a value", argv[i]);
    }
    if (!o.model_dir) return sq_cli_usage_error(ctx, "quantize", "no MODEL_DIR given");
    if (!o.out_dir) return sq_cli_usage_error(ctx, "quantize", "no --out DIR given");
    o.scheme_given = quant_given;
    int urc = sq_cli_scheme_check(ctx, "quantize", &o.scheme);
    if (urc) return urc;
    o.staging_bytes = (uint64_t)staging_mib << 20;
    o.n_threads = (int)threads;
    o.log = ctx->log;
    cli_progress cp = {.tty = isatty(fileno(stderr)) != 0};
    if (!quiet && ctx->rank == 0) {
        o.progress = on_progress;
        o.progress_user = &cp;
        o.progress_interval_s = cp.tty ? 0.2 : 5.0;
    }

    sq_error err;
    sq_error_init(&err, ctx->rank);
    sq_quantize_result r;
    sq_status st = sq_quantize_run(ctx->comm, &o, &r, &err);
    if (st != SQ_OK) return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    if (ctx->rank != 0) return 0;
    const char *qt = sq_quant_type_name(r.scheme.type);
    /* where the weights were quantized: "cpu", "cuda" (every rank) or "cuda+cpu" (some ranks) */
    const char *on = r.prequantized || r.cuda_ranks == 0 ? "cpu"
                     : r.cuda_ranks == r.n_ranks         ? "cuda" : "cuda+cpu";
    if (json) {
        printf("{\"out\": \"%s\", \"ranks\": %d, \"tensors\": %d, \"total_size\": %llu, "
               "\"bytes_read\": %llu, \"seconds\": %.6f, \"gbps\": %.6f, \"load_seconds\": %.6f, "
               "\"load_gbps\": %.6f, \"max_rss_bytes\": %llu, "
               "\"quant\": \"%s\", \"double_quant\": %s, \"blocksize\": %lld, "
               "\"prequantized\": %s, \"device\": \"%s\", \"cuda_ranks\": %d}\n",
               o.out_dir, r.n_ranks, r.n_tensors, (unsigned long long)r.total_size,
               (unsigned long long)r.bytes_read, r.seconds, r.gbps, r.load_seconds, r.load_gbps,
               (unsigned long long)r.max_rss_bytes, qt, r.scheme.double_quant ? "true" : "false",
               (long long)r.scheme.blocksize, r.prequantized ? "true" : "false", on, r.cuda_ranks);
    } else {
        char bs[48] = ", one scale per row";   /* int8 */
        if (!sq_quant_type_is_int8(r.scheme.type))
            snprintf(bs, sizeof bs, ", blocksize %lld", (long long)r.scheme.blocksize);
        printf("wrote %s: %d tensors, %.3f MB in %d shard%s (%s%s%s%s)\n", o.out_dir,
               r.n_tensors, (double)r.total_size / 1e6, r.n_ranks, r.n_ranks == 1 ? "" : "s", qt,
               r.scheme.double_quant ? " + double quant" : "", bs,
               r.prequantized ? ", copied as stored" : "");
        printf("read + quantized %.3f GB in %.3f s (%.3f GB/s); with writing %.3f s (%.3f GB/s); "
               "max RSS per rank %.1f MiB\n", (double)r.bytes_read / 1e9, r.load_seconds,
               r.load_gbps, r.seconds, r.gbps, (double)r.max_rss_bytes / 1048576.0);
        if (r.prequantized) printf("quantized on: nothing (copied as stored)\n");
        else if (r.cuda_ranks == 0) printf("quantized on: cpu\n");
        else printf("quantized on: cuda on %d of %d rank%s (%s)\n", r.cuda_ranks, r.n_ranks,
                    r.n_ranks == 1 ? "" : "s", on);
    }
    return 0;
}
