/* `shardq bench [MODEL_DIR | --preset-model tiny|small]`: sharded quantized throughput.  For
 * each micro-batch count asked for, one sq_run over the ranks started with synthetic prompts
 * (deterministic from --seed, no EOS id in them, EOS ignored while generating), then an
 * nccl-tests-style table: a `#` header with names and units, one fixed-width row per
 * configuration (ranks, batch, M, prefill and decode tokens/s, bubble measured vs the
 * (p-1)/(m+p-1) model, load seconds), and an OK / FAILED footer; --json carries the same facts.
 * Without MODEL_DIR, --preset-model makes a model with make-model's own code in a temporary
 * folder (rank 0 writes it; every rank reads it, so it must be on a file system they share) and
 * removes it afterwards.
 * Thin: parses flags, makes prompts, calls sq_run, prints.  Must never hold model or pipeline
 * logic; a failure during generation ends the job with MPI_Abort like `shardq run`. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/config.h"
#include "shardq/runtime.h"

#define MAX_CONFIGS 16
#define MAX_BATCH 4096
#define MAX_PROMPT_LEN 65536
#define MAX_NEW_TOKENS 65536

static void usage(FILE *f) {
    fprintf(f,
        "usage: [mpirun -np N] shardq bench (MODEL_DIR | --preset-model tiny|small)\n"
        "          [--quant nf4|fp4|int8|int8-zp|none] [--double-quant] [--blocksize N] [--batch B]\n"
        "          [--prompt-len L] [--new-tokens N] [--micro-batches M[,M...]] [--seed S]\n"
        "          [--backend auto|cpu|cuda] [--transport auto|mpi|nccl] [--device N]\n"
        "          [--threads N] [--activations int8|f32] [--timeout S] [--json] [--load-only]\n"
        "          [--trace FILE]\n\n"
        "Measures pipelined 4-bit generation over the ranks started: for each micro-batch count\n"
        "M, B synthetic prompts of L token ids (deterministic from --seed, never an EOS id) are\n"
        "prefilled and decoded for N new tokens each (EOS ignored), exactly as 'shardq run' does;\n"
        "the model is loaded (and quantized) again for every M.\n"
        "  MODEL_DIR           a Hugging Face folder (config.json + *.safetensors)\n"
        "  --preset-model P    no folder: make-model's preset P (tiny or small) in a temporary\n"
        "                      folder under $TMPDIR (removed afterwards)\n"
        "  --quant Q           nf4 (default), fp4, int8, int8-zp or none;  --double-quant;  --blocksize N\n"
        "  --batch B           sequences per run, 1..%d (default 4)\n"
        "  --prompt-len L      prompt tokens per sequence, 1..%d (default 32)\n"
        "  --new-tokens N      generated tokens per sequence, 1..%d (default 16)\n"
        "  --micro-batches M   comma-separated and/or repeated, each 1..B (default: 1, 2, 4, ...\n"
        "                      up to B)\n"
        "  --seed S            prompt ids seed (default 0)\n"
        "  --backend, --transport, --device, --threads, --activations, --timeout, --stall-timeout:\n"
        "                      as for 'shardq run'\n"
        "  --json              one JSON object with the same facts\n"
        "  --load-only         only load: per rank the GB read, load seconds (read + convert +\n"
        "                      quantize + place), GB/s and peak RSS (one 1-token run)\n"
        "  --trace FILE        a Chrome trace-event JSON of every rank over all the runs: load\n"
        "                      (read, quantize, repack/upload) and pipeline steps (compute, waits)\n"
        "Columns: ranks, batch, M, prefill tokens/s (prompt tokens / prefill wall time, slowest\n"
        "rank), decode tokens/s (tokens after each sequence's first / decode wall time), bubble:\n"
        "1 - sum(busy) / (ranks x wall) over the run, model: (p-1)/(M+p-1), load: slowest rank's\n"
        "load seconds.  Footer OK when every run generated B x N tokens and (on the cpu backend,\n"
        "whose results do not depend on batching) the tokens are the same for every M.\n",
        MAX_BATCH, MAX_PROMPT_LEN, MAX_NEW_TOKENS);
}

/* ---- the temporary preset model -------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

static void remove_tree(const char *path) {
    if (path && *path) nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Collective: rank 0 makes a temporary folder, every rank learns its name, and make-model's
 * code writes the preset into <tmp>/model (its summary line silenced).  On failure *tmp is
 * "" or a folder to remove. */
static sq_status make_preset(sq_cli_ctx *ctx, const char *preset, char *tmp, size_t tmp_n,
                             char *model, size_t model_n, sq_error *err) {
    sq_status st = SQ_OK;
    tmp[0] = '\0';
    if (ctx->rank == 0) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
        if (snprintf(tmp, tmp_n, "%s/shardq-bench-XXXXXX", base) >= (int)tmp_n)
            st = sq_error_set(err, SQ_ERR_INVALID, base, NULL, "TMPDIR: path too long");
        else if (!mkdtemp(tmp)) {
            st = sq_error_set(err, SQ_ERR_IO, tmp, NULL, "cannot make a temporary folder: %s", strerror(errno));
            tmp[0] = '\0';
        }
    }
    if ((st = sq_cli_agree(ctx, st, err)) != SQ_OK) return st;
    if (ctx->n_ranks > 1 && MPI_Bcast(tmp, (int)tmp_n, MPI_CHAR, 0, ctx->comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast of the temporary folder's name failed");
    tmp[tmp_n - 1] = '\0';
    snprintf(model, model_n, "%s/model", tmp);
    char a0[] = "make-model", a1[] = "--out", a3[] = "--preset";
    char *argv[] = {a0, a1, model, a3, (char *)preset, NULL};
    /* make-model prints one summary line on rank 0: not part of the benchmark's output */
    int saved = -1;
    if (ctx->rank == 0) {
        fflush(stdout);
        saved = dup(STDOUT_FILENO);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            close(null);
        }
    }
    int rc = sq_cli_make_model(5, argv, ctx);   /* collective; reports its own error line */
    if (saved >= 0) {
        fflush(stdout);
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    if (rc != 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "make-model --preset %s failed", preset);
    return SQ_OK;
}

/* ---- synthetic prompts ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool is_eos(const sq_model_config *c, int64_t id) {
    for (int e = 0; e < c->n_eos; e++)
        if (c->eos_token_ids[e] == id) return true;
    return false;
}

/* (batch, len) ids in [0, vocab), none an EOS id of the config; sequence s's stream is seeded
 * from (seed, s), so a sequence's prompt does not depend on the batch size. */
static int32_t *make_prompts(const sq_model_config *c, uint64_t seed, int batch, int len) {
    int32_t *ids = malloc((size_t)batch * (size_t)len * sizeof *ids);
    if (!ids) return NULL;
    for (int s = 0; s < batch; s++) {
        uint64_t st = seed * 0x100000001b3ull ^ ((uint64_t)s + 1) * 0x9e3779b97f4a7c15ull;
        for (int j = 0; j < len; j++) {
            int64_t id = (int64_t)(splitmix64(&st) % (uint64_t)c->vocab_size);
            for (int k = 0; k < c->n_eos + 1 && is_eos(c, id); k++) id = (id + 1) % c->vocab_size;
            ids[(size_t)s * (size_t)len + (size_t)j] = (int32_t)id;
        }
    }
    return ids;
}

/* ---- flags ----------------------------------------------------------------------------------- */

typedef struct bench_opts {
    const char *model_dir, *preset;
    int batch, prompt_len, new_tokens, n_m;
    int m[MAX_CONFIGS];
    uint64_t seed;
    bool json;
    bool load_only;   /* one run of 1 token: the load figures per rank */
    const char *trace_path;   /* --trace FILE */
} bench_opts;

/* "1,2,4" appended to o->m; false with why filled */
static bool parse_m_list(const char *v, bench_opts *o, char *why, size_t why_n) {
    const char *p = v;
    for (;;) {
        const char *end = strchr(p, ',');
        char item[32];
        size_t n = end ? (size_t)(end - p) : strlen(p);
        int64_t x = 0;
        if (n == 0 || n >= sizeof item) {
            snprintf(why, why_n, "--micro-batches '%s': expected numbers separated by ','", v);
            return false;
        }
        memcpy(item, p, n);
        item[n] = '\0';
        if (!sq_cli_parse_i64(item, 1, MAX_BATCH, &x)) {
            snprintf(why, why_n, "--micro-batches: '%s' is not a count in 1..%d", item, MAX_BATCH);
            return false;
        }
        if (o->n_m == MAX_CONFIGS) {
            snprintf(why, why_n, "--micro-batches: at most %d configurations", MAX_CONFIGS);
            return false;
        }
        o->m[o->n_m++] = (int)x;
        if (!end) return true;
        p = end + 1;
    }
}

/* ---- output ---------------------------------------------------------------------------------- */

typedef struct row {
    int ranks, batch, m;
    double prefill_tok_s, decode_tok_s, prefill_s, decode_s;
    int64_t prefill_tokens, decode_tokens;
    double bubble, prefill_bubble, decode_bubble, bubble_model, load_s;
    bool tokens_ok;      /* batch x new_tokens tokens came back */
    int32_t *tokens;     /* (batch, new_tokens) what this configuration generated (-1: none) */
} row;

static void print_preamble(const bench_opts *o, const char *model, const sq_run_result *r) {
    printf("# shardq bench: %s (%s, %lld layers, hidden %lld, vocab %lld)%s\n", model,
           r->cfg.architecture, (long long)r->cfg.n_layers, (long long)r->cfg.hidden_size,
           (long long)r->cfg.vocab_size, o->preset ? " [preset, temporary]" : "");
    char scheme[96];
    printf("# %s, backend %s, transport %s, %d thread%s per rank, prompt seed %llu\n",
           sq_cli_scheme_text(r, scheme, sizeof scheme), r->backend,
           r->transport, r->n_threads, r->n_threads == 1 ? "" : "s", (unsigned long long)o->seed);
    printf("#\n");
    printf("# %5s %6s %6s %6s %5s %12s %12s %8s %8s %9s\n", "ranks", "batch", "prompt", "new", "M",
           "prefill", "decode", "bubble", "model", "load");
    printf("# %5s %6s %6s %6s %5s %12s %12s %8s %8s %9s\n", "", "", "(tok)", "(tok)", "",
           "(tok/s)", "(tok/s)", "", "", "(s)");
    fflush(stdout);
}

static void print_row(const bench_opts *o, const row *w) {
    printf("  %5d %6d %6d %6d %5d %12.1f %12.1f %8.3f %8.3f %9.3f\n", w->ranks, w->batch, o->prompt_len,
           o->new_tokens, w->m, w->prefill_tok_s, w->decode_tok_s, w->bubble, w->bubble_model, w->load_s);
    fflush(stdout);
}

static void print_ids(const int32_t *ids, int n_seqs, int n) {
    printf("[");
    for (int s = 0; s < n_seqs; s++) {
        printf("%s[", s ? ", " : "");
        for (int t = 0; t < n; t++) printf("%s%d", t ? ", " : "", ids[(size_t)s * (size_t)n + (size_t)t]);
        printf("]");
    }
    printf("]");
}

/* prompts and every row's tokens are printed so that a test can check them against
 * `shardq run` on the same prompts, not against bench itself */
static void print_json(const bench_opts *o, const char *model, const sq_run_result *r, const row *rows,
                       int n_rows, bool same_tokens, bool ok, const int32_t *prompt_ids) {
    printf("{\"model\": ");
    sq_cli_json_str(stdout, model);
    printf(", \"preset\": ");
    if (o->preset) sq_cli_json_str(stdout, o->preset);
    else printf("null");
    printf(", \"architecture\": \"%s\", \"n_layers\": %lld, \"hidden_size\": %lld, \"vocab_size\": %lld, "
           "\"n_ranks\": %d, \"backend\": ", r->cfg.architecture, (long long)r->cfg.n_layers,
           (long long)r->cfg.hidden_size, (long long)r->cfg.vocab_size, r->n_ranks);
    sq_cli_json_str(stdout, r->backend);
    printf(", \"backend_kind\": \"%s\", \"transport\": \"%s\", \"threads\": %d, \"quant\": \"%s\", "
           "\"double_quant\": %s, \"blocksize\": %lld, \"prequantized\": %s, \"batch\": %d, "
           "\"prompt_len\": %d, \"new_tokens\": %d, \"seed\": %llu,\n",
           r->backend_kind, r->transport, r->n_threads, sq_quant_type_name(r->scheme.type),
           r->scheme.double_quant ? "true" : "false", (long long)r->scheme.blocksize,
           r->prequantized ? "true" : "false", o->batch, o->prompt_len, o->new_tokens,
           (unsigned long long)o->seed);
    printf(" \"prompts\": ");
    print_ids(prompt_ids, o->batch, o->prompt_len);
    printf(",\n \"rows\": [");
    for (int i = 0; i < n_rows; i++) {
        const row *w = &rows[i];
        printf("%s\n  {\"ranks\": %d, \"batch\": %d, \"micro_batches\": %d, \"prefill_tokens\": %lld, "
               "\"prefill_s\": %.6f, \"prefill_tok_s\": %.3f, \"decode_tokens\": %lld, \"decode_s\": %.6f, "
               "\"decode_tok_s\": %.3f, \"bubble\": %.6f, \"prefill_bubble\": %.6f, \"decode_bubble\": %.6f, "
               "\"bubble_model\": %.6f, \"load_s\": %.6f, \"tokens_ok\": %s, \"tokens\": ", i ? "," : "",
               w->ranks, w->batch, w->m, (long long)w->prefill_tokens, w->prefill_s, w->prefill_tok_s,
               (long long)w->decode_tokens, w->decode_s, w->decode_tok_s, w->bubble, w->prefill_bubble,
               w->decode_bubble, w->bubble_model, w->load_s, w->tokens_ok ? "true" : "false");
        print_ids(w->tokens, o->batch, o->new_tokens);
        printf("}");
    }
    printf("],\n \"same_tokens\": %s, \"ok\": %s}\n", same_tokens ? "true" : "false", ok ? "true" : "false");
}

/* --load-only: per rank the checkpoint bytes read, the load time (read + convert + quantize +
 * place), its GB/s and the peak RSS; the total over the slowest rank's time. */
static void print_load(const bench_opts *o, const char *model, const sq_run_result *r) {
    double total_gb = (double)r->bytes_read / 1e9, slow = r->load_s;
    if (o->json) {
        printf("{\"model\": ");
        sq_cli_json_str(stdout, model);
        printf(", \"n_ranks\": %d, \"quant\": \"%s\", \"backend\": ", r->n_ranks,
               r->ggml_stored ? "gguf-as-stored" : sq_quant_type_name(r->scheme.type));
        sq_cli_json_str(stdout, r->backend);
        printf(", \"threads\": %d, \"bytes_read\": %llu, \"load_s\": %.6f, \"gb_per_s\": %.4f, \"ranks\": [",
               r->n_threads, (unsigned long long)r->bytes_read, slow, slow > 0 ? total_gb / slow : 0.0);
        for (int i = 0; i < r->n_ranks; i++) {
            const sq_run_stage_info *s = &r->stages[i];
            printf("%s{\"rank\": %d, \"first_layer\": %d, \"n_layers\": %d, \"bytes_read\": %llu, "
                   "\"load_s\": %.6f, \"gb_per_s\": %.4f, \"max_rss_bytes\": %llu, \"weight_bytes\": %llu}",
                   i ? ", " : "", s->rank, s->first_layer, s->n_layers, (unsigned long long)s->bytes_read,
                   s->load_s, s->load_s > 0 ? (double)s->bytes_read / 1e9 / s->load_s : 0.0,
                   (unsigned long long)s->max_rss_bytes, (unsigned long long)s->weight_bytes);
        }
        printf("]}\n");
        return;
    }
    char scheme[96];
    printf("# shardq bench --load-only: %s, %s on %d rank%s x %d thread%s (%s)\n", model,
           sq_cli_scheme_text(r, scheme, sizeof scheme),
           r->n_ranks, r->n_ranks == 1 ? "" : "s", r->n_threads, r->n_threads == 1 ? "" : "s",
           r->backend);
    printf("# %4s  %-14s %10s %9s %8s %12s %12s\n", "rank", "layers", "read", "load", "read+q",
           "held", "max_RSS");
    printf("# %4s  %-14s %10s %9s %8s %12s %12s\n", "", "", "GB", "s", "GB/s", "GB", "GiB");
    for (int i = 0; i < r->n_ranks; i++) {
        const sq_run_stage_info *s = &r->stages[i];
        char layers[48];
        snprintf(layers, sizeof layers, "%d-%d%s%s", s->first_layer, s->first_layer + s->n_layers - 1,
                 s->has_embed ? "+E" : "", s->has_head ? "+H" : "");
        printf("  %4d  %-14s %10.3f %9.3f %8.3f %12.3f %12.3f\n", s->rank, layers,
               (double)s->bytes_read / 1e9, s->load_s,
               s->load_s > 0 ? (double)s->bytes_read / 1e9 / s->load_s : 0.0,
               (double)s->weight_bytes / 1e9, (double)s->max_rss_bytes / (1024.0 * 1024.0 * 1024.0));
    }
    printf("# total %.3f GB read in %.3f s (slowest rank): %.3f GB/s\n", total_gb, slow,
           slow > 0 ? total_gb / slow : 0.0);
}

/* The context's log: warnings and errors only (the runs' info lines would repeat per row). */
static void warn_log(void *user, sq_log_level level, const char *msg) {
    const sq_log *inner = user;
    if (level <= SQ_LOG_WARN && inner->fn) inner->fn(inner->user, level, msg);
}

/* ---- the command ----------------------------------------------------------------------------- */

int sq_cli_bench(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *cmd = "bench";
    bench_opts o = {.batch = 4, .prompt_len = 32, .new_tokens = 16};
    sq_run_options ro = sq_run_options_default();
    bool quant_given = false;
    int urc0 = 0;
    int64_t v64 = 0;
    char why[256];
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        int urc = 0;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_run_flag(ctx, cmd, argc, argv, &i, &ro, &quant_given, &missing, &urc)) {
            if (urc) return urc;
        } else if (sq_cli_flag_value(argc, argv, &i, "--preset-model", &v, &missing)) {
            if (!missing && strcmp(v, "tiny") && strcmp(v, "small"))
                return sq_cli_usage_error(ctx, cmd, "--preset-model must be tiny or small, not '%s'", v);
            o.preset = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--batch", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, MAX_BATCH, &v64))
                return sq_cli_usage_error(ctx, cmd, "--batch must be 1..%d, not '%s'", MAX_BATCH, v);
            o.batch = (int)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--prompt-len", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, MAX_PROMPT_LEN, &v64))
                return sq_cli_usage_error(ctx, cmd, "--prompt-len must be 1..%d, not '%s'", MAX_PROMPT_LEN, v);
            o.prompt_len = (int)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--new-tokens", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, MAX_NEW_TOKENS, &v64))
                return sq_cli_usage_error(ctx, cmd, "--new-tokens must be 1..%d, not '%s'", MAX_NEW_TOKENS, v);
            o.new_tokens = (int)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--micro-batches", &v, &missing)) {
            if (!missing && !parse_m_list(v, &o, why, sizeof why)) return sq_cli_usage_error(ctx, cmd, "%s", why);
        } else if (sq_cli_flag_value(argc, argv, &i, "--seed", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 0, INT64_MAX, &v64))
                return sq_cli_usage_error(ctx, cmd, "--seed must be a whole number >= 0, not '%s'", v);
            o.seed = (uint64_t)v64;
        } else if (!strcmp(argv[i], "--json")) {
            o.json = true;
        } else if (!strcmp(argv[i], "--load-only")) {
            o.load_only = true;
        } else if (sq_cli_flag_value(argc, argv, &i, "--trace", &v, &missing)) {
            o.trace_path = v;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return sq_cli_usage_error(ctx, cmd, "unknown option '%s'", argv[i]);
        } else if (!o.model_dir) {
            o.model_dir = argv[i];
        } else {
            return sq_cli_usage_error(ctx, cmd, "unexpected argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, cmd, "%s needs a value", argv[i]);
    }
    if (!o.model_dir && !o.preset) return sq_cli_usage_error(ctx, cmd, "give MODEL_DIR or --preset-model tiny|small");
    if (o.load_only) {   /* one run whose generation is a single token: the load is the figure */
        o.batch = 1;
        o.prompt_len = 1;
        o.new_tokens = 1;
        o.n_m = 1;
        o.m[0] = 1;
    }
    if (o.model_dir && o.preset) return sq_cli_usage_error(ctx, cmd, "give MODEL_DIR or --preset-model, not both");
    if (o.n_m == 0)
        for (int m = 1; m <= o.batch && o.n_m < MAX_CONFIGS; m *= 2) o.m[o.n_m++] = m;
    for (int k = 0; k < o.n_m; k++)
        if (o.m[k] > o.batch)
            return sq_cli_usage_error(ctx, cmd, "--micro-batches %d exceeds --batch %d", o.m[k], o.batch);
    if ((urc0 = sq_cli_scheme_check(ctx, cmd, &ro.scheme)) != 0) return urc0;
    ro.scheme_given = quant_given;

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    char tmp[1024] = "", model[1200];
    sq_status st = SQ_OK;
    if (o.preset) {
        st = make_preset(ctx, o.preset, tmp, sizeof tmp, model, sizeof model, &err);
        if (st != SQ_OK) {
            if (ctx->rank == 0) remove_tree(tmp);
            /* make-model reported its own line; anything before it is reported here */
            return (ctx->rank == 0 && !strstr(err.msg, "make-model")) ? sq_cli_report(ctx, &err) : 1;
        }
    } else {
        snprintf(model, sizeof model, "%s", o.model_dir);
    }

    /* rank 0: the prompts, from the config's vocabulary and EOS ids */
    int32_t *ids = NULL;
    const int32_t **prompts = NULL;
    int32_t *lens = NULL;
    row *rows = calloc((size_t)o.n_m, sizeof *rows);
    int32_t *first_tokens = NULL;   /* (batch, new_tokens) of the first configuration */
    int32_t *row_tokens = NULL;     /* (n_m, batch, new_tokens) every configuration's, printed */
    if (!rows) st = sq_error_set(&err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    if (st == SQ_OK && ctx->rank == 0) {
        sq_model_config cfg;
        st = sq_cli_config_load(model, &cfg, &err);
        if (st == SQ_OK) {
            ids = make_prompts(&cfg, o.seed, o.batch, o.prompt_len);
            prompts = malloc((size_t)o.batch * sizeof *prompts);
            lens = malloc((size_t)o.batch * sizeof *lens);
            first_tokens = calloc((size_t)o.batch * (size_t)o.new_tokens, sizeof *first_tokens);
            row_tokens = calloc((size_t)o.n_m * (size_t)o.batch * (size_t)o.new_tokens, sizeof *row_tokens);
            if (!ids || !prompts || !lens || !first_tokens || !row_tokens) {
                st = sq_error_set(&err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for %d prompts of %d tokens",
                                  o.batch, o.prompt_len);
            } else {
                for (int s = 0; s < o.batch; s++) {
                    prompts[s] = ids + (size_t)s * (size_t)o.prompt_len;
                    lens[s] = o.prompt_len;
                }
            }
        }
    }
    st = sq_cli_agree(ctx, st, &err);
    sq_log inner = ctx->log;
    ro.log = (sq_log){.fn = warn_log, .user = &inner};
    ro.model_dir = model;
    ro.n_seqs = o.batch;
    ro.prompts = (const int32_t *const *)prompts;
    ro.prompt_lens = lens;
    ro.max_new_tokens = o.new_tokens;
    ro.ignore_eos = true;

    ro.trace = sq_cli_trace_open(ctx, o.trace_path);
    sq_run_result *first = NULL;   /* rank 0: the first run's result (config, backend, …) */
    bool same_tokens = true, all_ok = true;
    int n_rows = 0;
    for (int k = 0; st == SQ_OK && k < o.n_m; k++) {
        ro.n_micro_batches = o.m[k];
        sq_run_result *r = NULL;
        bool must_abort = false;
        sq_cli_watch(ctx, &ro);
        st = sq_run(ctx->comm, &ro, &r, &must_abort, &err);
        if (st != SQ_OK && must_abort) {
            if (ctx->rank == 0) remove_tree(tmp);
            sq_cli_abort_after_peer_failure(ctx, &err);
        }
        if (st != SQ_OK || ctx->rank != 0) continue;
        const sq_pipeline_result *p = r->pipe;
        row *w = &rows[n_rows++];
        *w = (row){.ranks = r->n_ranks, .batch = o.batch, .m = p->n_micro_batches,
                   .prefill_s = p->prefill_s, .decode_s = p->decode_s,
                   .prefill_tokens = p->prefill_tokens, .decode_tokens = p->decode_tokens,
                   .prefill_tok_s = p->prefill_s > 0 ? (double)p->prefill_tokens / p->prefill_s : 0,
                   .decode_tok_s = p->decode_s > 0 ? (double)p->decode_tokens / p->decode_s : 0,
                   .bubble = p->bubble_fraction, .prefill_bubble = p->prefill_bubble_fraction,
                   .decode_bubble = p->decode_bubble_fraction, .bubble_model = p->bubble_model,
                   .load_s = r->load_s, .tokens_ok = p->n_seqs == o.batch,
                   .tokens = row_tokens + (size_t)k * (size_t)o.batch * (size_t)o.new_tokens};
        for (size_t q = 0; q < (size_t)o.batch * (size_t)o.new_tokens; q++) w->tokens[q] = -1;
        for (int32_t s = 0; s < p->n_seqs && s < o.batch; s++)
            for (int32_t t = 0; t < p->n_tokens[s] && t < o.new_tokens; t++)
                w->tokens[(size_t)s * (size_t)o.new_tokens + (size_t)t] = p->tokens[s][t];
        for (int32_t s = 0; w->tokens_ok && s < p->n_seqs; s++) {
            if (p->n_tokens[s] != o.new_tokens) {
                w->tokens_ok = false;
                break;
            }
            int32_t *ref = first_tokens + (size_t)s * (size_t)o.new_tokens;
            if (k == 0) memcpy(ref, p->tokens[s], (size_t)o.new_tokens * sizeof *ref);
            else if (memcmp(ref, p->tokens[s], (size_t)o.new_tokens * sizeof *ref)) same_tokens = false;
        }
        all_ok = all_ok && w->tokens_ok;
        if (k == 0) {
            first = r;
            if (!o.json && !o.load_only) print_preamble(&o, model, first);
        } else {
            sq_run_result_destroy(r);
        }
        if (!o.json && !o.load_only) print_row(&o, w);
    }
    /* every rank agrees on st: the trace is written (collectively) after a success only */
    int rc = st == SQ_OK ? sq_cli_trace_close(ctx, ro.trace, o.trace_path, 0) : 0;
    if (st != SQ_OK) sq_trace_destroy(ro.trace);
    if (st != SQ_OK) {
        rc = ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    } else if (ctx->rank == 0 && !first) {
        sq_error_set(&err, SQ_ERR_INTERNAL, NULL, NULL, "bench: no configuration ran");
        rc = sq_cli_report(ctx, &err);   /* not reached: every configuration ran or failed */
    } else if (ctx->rank == 0 && o.load_only) {
        print_load(&o, model, first);
    } else if (ctx->rank == 0) {
        /* batching does not change the cpu backend's results; cuda's rounding may depend on
         * the rows per call, so there a difference is reported, not failed */
        bool cpu = !strcmp(first->backend_kind, "cpu");
        bool ok = all_ok && (same_tokens || !cpu);
        if (o.json) {
            print_json(&o, model, first, rows, n_rows, same_tokens, ok, ids);
        } else {
            printf("# %s: %d configuration%s on %d rank%s, %s%s\n", ok ? "OK" : "FAILED", n_rows,
                   n_rows == 1 ? "" : "s", first->n_ranks, first->n_ranks == 1 ? "" : "s",
                   !all_ok ? "a run generated fewer tokens than asked"
                   : same_tokens ? "the same tokens for every micro-batch count"
                                 : "tokens differ between micro-batch counts",
                   !same_tokens && !cpu ? " (cuda: rounding depends on rows per call)" : "");
        }
        rc = ok && rc == 0 ? 0 : 1;
    }
    if (ctx->n_ranks > 1) {   /* every rank leaves with rank 0's verdict, after the last read */
        int all = rc;
        MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, ctx->comm);
        rc = all;
    }
    if (ctx->rank == 0) remove_tree(tmp);
    sq_run_result_destroy(first);
    free(row_tokens);
    free(rows);
    free(first_tokens);
    free(ids);
    free(prompts);
    free(lens);
    return rc;
}
