/* `[mpirun -np N] shardq perplexity MODEL --text-file F [--ctx N] …`: the perplexity of a text
 * by llama.cpp's method (llama-perplexity), run through the pipeline.  Rank 0 tokenizes the
 * text once (the tokenizer adds BOS only if it adds one to every text), cuts it into chunks
 * of --ctx tokens (the tail that does not fill a chunk is dropped), and every chunk is one
 * sequence of the run: its prefill goes through the stages as micro-batches, and the last
 * stage scores the second half of the chunk (positions ctx/2 .. ctx-2 predict the next token)
 * with a log-softmax in double.  When the tokenizer adds BOS, each chunk's first token is BOS,
 * as llama.cpp does.  The figures do not depend on the rank count or the micro-batching.
 * Never: print on ranks other than 0 (errors aside). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "shardq/checkpoint.h"
#include "shardq/tokenizer.h"

#define MAX_TEXT_BYTES ((size_t)256 << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: [mpirun -np N] shardq perplexity MODEL --text-file F [--ctx N] [--chunks K]\n"
            "                      [--micro-batches M] [--quant none|nf4|fp4|int8|int8-zp] [--json] [--quiet]\n"
            "                      [--backend …] [--transport …] [--threads T] [--activations int8|f32] [--timeout S]\n\n"
            "Perplexity of a text, llama.cpp's way (llama-perplexity): the text is tokenized once,\n"
            "cut into chunks of --ctx tokens, and the second half of every chunk is scored (each\n"
            "position predicts the next token).  The chunks are the sequences of one pipelined run\n"
            "over the ranks started, each rank holding its own layers.  MODEL is a model folder\n"
            "(config.json + safetensors + tokenizer.json) or a .gguf file (run as stored unless\n"
            "--quant asks to re-quantize).\n"
            "  --text-file F        the text (UTF-8)\n"
            "  --ctx N              tokens per chunk (default 512, llama.cpp's; at least 4)\n"
            "  --chunks K           score at most the first K chunks (default: all)\n"
            "  --micro-batches M    chunks are split into M micro-batches (default: one per chunk)\n"
            "  --quant …, --double-quant, --blocksize, --backend, --transport, --device,\n"
            "  --threads, --activations, --stall-timeout as for `shardq run`\n"
            "  --timeout S          a peer silent for S seconds counts as dead (default 300: a stage\n"
            "                       computes a whole chunk between two messages)\n"
            "  --json               one JSON object: perplexity, uncertainty, n_tokens, n_chunks,\n"
            "                       scored, ctx, per-chunk running estimates, the run's figures\n"
            "  --quiet              no load progress\n"
            "Output: the running estimate after each chunk ([k]ppl, as llama.cpp prints it; shown\n"
            "when the run ends), then 'Final estimate: PPL = P +/- U' (U: the standard error\n"
            "carried through exp, llama.cpp's formula).  KV cache memory grows with chunks x ctx.\n");
}

typedef struct ppl_figures {
    double ppl, unc;
    int64_t scored;
    double *running;   /* (n_chunks) estimate after each chunk */
} ppl_figures;

/* llama.cpp's estimate from the per-chunk sums, chunk by chunk in order. */
static void figures_of(const sq_run_result *r, int32_t n_chunks, ppl_figures *f) {
    double nll = 0, nll2 = 0;
    int64_t n = 0;
    for (int32_t c = 0; c < n_chunks; c++) {
        nll += r->score_nll[c];
        nll2 += r->score_nll2[c];
        n += r->score_n[c];
        if (f->running) f->running[c] = n ? exp(nll / (double)n) : NAN;
    }
    f->scored = n;
    double mean = n ? nll / (double)n : NAN, mean2 = n ? nll2 / (double)n : NAN;
    f->ppl = exp(mean);
    double var = mean2 - mean * mean;
    f->unc = (n > 1 && var > 0) ? sqrt(var / (double)(n - 1)) * f->ppl : 0.0;
}

static int perplexity_cmd(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *cmd = "perplexity";
    sq_run_options o = sq_run_options_default();
    /* a stage scores whole chunks between two messages: a longer silence than run's default
     * is normal here (the liveness timeout must exceed the longest compute step) */
    o.timeout_s = 300.0;
    const char *text_path = NULL;
    int64_t n_ctx = 512, max_chunks = 0, n_micro = 0;
    bool json = false, quiet = false, quant_given = false;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        int urc = 0;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_run_flag(ctx, cmd, argc, argv, &i, &o, &quant_given, &missing, &urc)) {
            if (urc) return urc;
        } else if (sq_cli_flag_value(argc, argv, &i, "--text-file", &v, &missing)) {
            text_path = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--ctx", &v, &missing)) {
            if (v && !sq_cli_parse_i64(v, 4, 1 << 20, &n_ctx))
                return sq_cli_usage_error(ctx, cmd, "--ctx must be a whole number in 4..1048576, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--chunks", &v, &missing)) {
            if (v && !sq_cli_parse_i64(v, 1, 1 << 16, &max_chunks))
                return sq_cli_usage_error(ctx, cmd, "--chunks must be a whole number in 1..65536, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--micro-batches", &v, &missing)) {
            if (v && !sq_cli_parse_i64(v, 1, 1 << 16, &n_micro))
                return sq_cli_usage_error(ctx, cmd, "--micro-batches must be a whole number >= 1, not '%s'", v);
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return sq_cli_usage_error(ctx, cmd, "unknown option '%s'", argv[i]);
        } else if (!o.model_dir) {
            o.model_dir = argv[i];
        } else {
            return sq_cli_usage_error(ctx, cmd, "unexpected argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, cmd, "%s needs a value", argv[i]);
    }
    if (!o.model_dir) return sq_cli_usage_error(ctx, cmd, "no MODEL given");
    if (!text_path) return sq_cli_usage_error(ctx, cmd, "no text: give --text-file F");
    int urc0 = sq_cli_scheme_check(ctx, cmd, &o.scheme);
    if (urc0) return urc0;
    o.scheme_given = quant_given;

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_tokenizer *tok = NULL;
    char *text = NULL;
    size_t text_len = 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int32_t n_chunks = 0;
    int32_t **chunks = NULL, *lens = NULL;
    bool bos_added = false;
    sq_status st = SQ_OK;
    if (ctx->rank == 0) {
        sq_ckpt *ck = NULL;
        bool have_tok = false;
        st = sq_ckpt_open(o.model_dir, &ck, &err);
        if (st == SQ_OK) st = sq_ckpt_tokenizer(ck, &tok, &have_tok, &err);
        sq_ckpt_close(ck);
        if (st == SQ_OK && !have_tok)
            st = sq_error_set(&err, SQ_ERR_INVALID, o.model_dir, NULL,
                              "no tokenizer (tokenizer.json, or a GGUF's tokenizer.ggml.model): "
                              "perplexity needs the model's tokenizer");
        if (st == SQ_OK) st = sq_cli_read_text_file(text_path, MAX_TEXT_BYTES, &text, &text_len, &err);
        if (st == SQ_OK) st = sq_tokenizer_encode(tok, text, text_len, true, &ids, &n_ids, &err);
        int32_t bos = st == SQ_OK ? sq_tokenizer_bos_id(tok) : -1;
        bos_added = bos >= 0 && n_ids > 0 && ids[0] == bos;
        if (st == SQ_OK) {
            int64_t full = (int64_t)n_ids / n_ctx;
            if (full < 1)
                st = sq_error_set(&err, SQ_ERR_INVALID, text_path, NULL,
                                  "%zu tokens: fewer than one chunk of --ctx %lld (give a longer "
                                  "text or a smaller --ctx)", n_ids, (long long)n_ctx);
            n_chunks = (int32_t)(max_chunks > 0 && max_chunks < full ? max_chunks : full);
        }
        if (st == SQ_OK && n_micro > n_chunks)
            st = sq_error_set(&err, SQ_ERR_INVALID, NULL, NULL,
                              "--micro-batches %lld for %d chunks", (long long)n_micro, n_chunks);
        if (st == SQ_OK) {
            chunks = calloc((size_t)n_chunks, sizeof *chunks);
            lens = calloc((size_t)n_chunks, sizeof *lens);
            if (!chunks || !lens) st = sq_error_set(&err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
            for (int32_t c = 0; st == SQ_OK && c < n_chunks; c++) {
                chunks[c] = ids + (size_t)c * (size_t)n_ctx;
                lens[c] = (int32_t)n_ctx;
                if (bos_added) chunks[c][0] = bos;   /* llama.cpp: every chunk starts with BOS */
            }
        }
    }
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) {
        free(chunks);
        free(lens);
        free(ids);
        free(text);
        sq_tokenizer_destroy(tok);
        return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    }
    o.n_seqs = n_chunks;
    o.prompts = (const int32_t *const *)chunks;
    o.prompt_lens = lens;
    o.max_new_tokens = 1;
    o.ignore_eos = true;
    o.score = true;
    o.score_from = (int32_t)(n_ctx / 2);
    o.max_seq = ((n_ctx + 1) + 15) / 16 * 16;
    /* one chunk per micro-batch unless asked: every stage works on one chunk at a time (the
     * pipeline stays full, and no stage computes for long without a message) */
    o.n_micro_batches = (int32_t)(n_micro > 0 ? n_micro : n_chunks);
    if (quiet) o.log.fn = NULL;
    else o.log = ctx->log;
    if (!quiet && ctx->rank == 0) {
        o.progress = sq_cli_load_progress;
        o.progress_interval_s = 0.2;
    }

    sq_run_result *r = NULL;
    bool must_abort = false;
    double t0 = sq_now_s();
    sq_cli_watch(ctx, &o);
    st = sq_run(ctx->comm, &o, &r, &must_abort, &err);
    double wall = sq_now_s() - t0;
    if (st != SQ_OK && must_abort) sq_cli_abort_after_peer_failure(ctx, &err);
    int rc = 0;
    if (st != SQ_OK) {
        rc = ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    } else if (ctx->rank == 0) {
        ppl_figures f = {.running = calloc((size_t)n_chunks, sizeof(double))};
        figures_of(r, n_chunks, &f);
        char scheme[96];
        sq_cli_scheme_text(r, scheme, sizeof scheme);
        double tok_s = r->pipe->prefill_s > 0 ? (double)r->pipe->prefill_tokens / r->pipe->prefill_s : 0;
        if (json) {
            printf("{\"model\": ");
            sq_cli_json_str(stdout, o.model_dir);
            printf(", \"text_file\": ");
            sq_cli_json_str(stdout, text_path);
            printf(", \"scheme\": \"%s\", \"n_ranks\": %d, "
                   "\"ctx\": %lld, \"n_tokens\": %zu, \"n_chunks\": %d, \"scored\": %lld, "
                   "\"bos_added\": %s, \"perplexity\": %.6f, \"uncertainty\": %.6f, \"chunks\": [",
                   scheme, r->n_ranks, (long long)n_ctx, n_ids, n_chunks,
                   (long long)f.scored, bos_added ? "true" : "false", f.ppl, f.unc);
            for (int32_t c = 0; c < n_chunks; c++) printf("%s%.6f", c ? ", " : "", f.running ? f.running[c] : NAN);
            printf("], \"load_s\": %.4f, \"eval_s\": %.4f, \"tokens_per_s\": %.2f, \"wall_s\": %.4f}\n",
                   r->load_s, r->pipe->prefill_s, tok_s, wall);
        } else {
            printf("# shardq perplexity: %s (%s, %lld layers, vocab %lld): %s on %d rank%s, %s\n",
                   o.model_dir, r->cfg.architecture, (long long)r->cfg.n_layers,
                   (long long)r->cfg.vocab_size, scheme, r->n_ranks, r->n_ranks == 1 ? "" : "s",
                   r->backend);
            printf("# %s: %zu tokens%s, %d chunks of %lld, scoring the second half of each "
                   "(%lld tokens)\n", text_path, n_ids, bos_added ? " (BOS first in each chunk)" : "",
                   n_chunks, (long long)n_ctx, (long long)f.scored);
            for (int32_t c = 0; c < n_chunks && f.running; c++)
                printf("[%d]%.4f,%s", c + 1, f.running[c], (c + 1) % 10 == 0 || c + 1 == n_chunks ? "\n" : "");
            printf("Final estimate: PPL = %.4f +/- %.5f\n", f.ppl, f.unc);
            printf("# load %.3f s, eval %.3f s (%.1f tok/s) over %d micro-batch%s\n", r->load_s,
                   r->pipe->prefill_s, tok_s, r->pipe->n_micro_batches,
                   r->pipe->n_micro_batches == 1 ? "" : "es");
        }
        if (!f.running) rc = 1;
        free(f.running);
    }
    sq_run_result_destroy(r);
    free(chunks);
    free(lens);
    free(ids);
    free(text);
    sq_tokenizer_destroy(tok);
    return rc;
}

int sq_cli_perplexity(int argc, char **argv, sq_cli_ctx *ctx) {
    return perplexity_cmd(argc, argv, ctx);
}
