/* `shardq run MODEL_DIR`: pipelined generation across the ranks started (sq_run), prompts as
 * token ids or text (tokenizer.json from the folder, optional chat format), generated text
 * streamed on rank 0, then the figures (table or --json) and an optional logits dump.
 * Thin: parses flags, turns text into ids and back, calls sq_run, prints.  Must never hold
 * model, plan or pipeline logic; a failure during generation ends the job with MPI_Abort (a
 * dead or hung rank cannot be finalized), every other failure is agreed by every rank. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/checkpoint.h"
#include "shardq/runtime.h"
#include "shardq/tokenizer.h"

#define MAX_PROMPTS 4096
#define MAX_PROMPT_FILE_BYTES (64u << 20)

static void usage(FILE *f) {
    fprintf(f,
        "usage: [mpirun -np N] shardq run MODEL_DIR [--plan plan.json] [--quant nf4|fp4|int8|int8-zp|none]\n"
        "          [--double-quant] [--blocksize N] (--prompt-ids \"1,2,3;4,5\" | --prompt TEXT ...\n"
        "          | --prompt-file FILE ...) [--chat] [--system TEXT] [--max-new-tokens N]\n"
        "          [--max-seq N] [--micro-batches M] [--temperature T] [--top-k K] [--top-p P]\n"
        "          [--seed S] [--ignore-eos] [--threads N] [--activations int8|f32] [--timeout S] [--stall-timeout S] [--quiet] [--json]\n"
        "          [--dump-logits FILE] [--backend auto|cpu|cuda] [--transport auto|mpi|nccl]\n"
        "          [--device N] [--trace FILE]\n\n"
        "Runs the model as a pipeline over the ranks started: each rank loads only its own\n"
        "layers (from the plan), quantizing them to 4 bits as they are read, and the ranks pass\n"
        "activations rank to rank; several micro-batches are in flight at once.\n"
        "  --plan FILE         a plan from 'shardq plan ... --out FILE' for this model and this\n"
        "                      many ranks; without it the ranks started are planned for (as\n"
        "                      'shardq plan --discover': host memory on machines without GPUs)\n"
        "  --quant Q           nf4 (default), fp4, int8 (row-wise absmax, bitsandbytes LLM.int8),\n"
        "                      int8-zp (row-wise zero-point) or none (the checkpoint's dtype).  A folder\n"
        "                      written by 'shardq quantize' runs as stored: --quant and friends\n"
        "                      may be left out or must match it; --quant none dequantizes it\n"
        "  --double-quant      quantize the absmax too;  --blocksize N: 32..4096 (default 64)\n"
        "  --prompt-ids IDS    token ids, ',' between ids, ';' between sequences\n"
        "  --prompt TEXT       a text prompt (repeatable: one sequence each); needs\n"
        "                      MODEL_DIR/tokenizer.json (or a GGUF's tokenizer metadata).  Encoded\n"
        "                      with the tokenizer's special\n"
        "                      tokens (BOS) as its post-processor says\n"
        "  --prompt-file FILE  the whole file is one text prompt (one trailing newline dropped);\n"
        "                      repeatable, and may be mixed with --prompt\n"
        "  --chat              wrap each text prompt in the family's chat format (Llama-3,\n"
        "                      ChatML for Qwen2, Mistral [INST]) and stop at its end-of-turn id\n"
        "  --system TEXT       the system message of --chat\n"
        "  --max-new-tokens N  tokens to generate per sequence (default 16); a sequence also\n"
        "                      ends at an EOS id of config.json (kept in its output)\n"
        "  --max-seq N         KV cache positions per sequence; default: the longest prompt +\n"
        "                      max-new-tokens rounded up to a multiple of 16, at most\n"
        "                      max_position_embeddings (or the plan's max_seq)\n"
        "  --micro-batches M   1..number of sequences (default min(sequences, ranks))\n"
        "  --temperature T     0 (default) is greedy; else softmax sampling with --top-k K\n"
        "                      (0: all), --top-p P (1: all) and --seed S (default 0): the same\n"
        "                      seed gives the same tokens on any number of ranks\n"
        "  --ignore-eos        only --max-new-tokens ends a sequence\n"
        "  --threads N         compute threads per rank (default: cores / ranks on the node)\n"
        "  --activations int8|f32  cpu backend: quantize each activation row to int8 (per block\n"
        "                      of 32) and multiply quantized weights with integer dot products,\n"
        "                      or keep float32 (the bit-exact reference; the default)\n"
        "  --backend B         auto (default: cuda when this build has CUDA and every rank sees a\n"
        "                      GPU, else cpu), cpu, or cuda (activations in GPU memory)\n"
        "  --transport T       auto (default: nccl when every rank runs cuda on a GPU of its own,\n"
        "                      else mpi), mpi (host messages; GPU activations are staged through\n"
        "                      pinned memory, so ranks may share a GPU), or nccl\n"
        "  --device N          the CUDA device of every rank (default: local rank mod GPUs)\n"
        "  --timeout S         seconds of silence after which a peer counts as dead (default 30)\n"
        "  --stall-timeout S   seconds a rank may spend in one step of bring-up or teardown (agreeing,\n"
        "                      planning, creating the backend, the transport, MPI_Finalize) before\n"
        "                      the job ends naming the rank and step (default 120, 0: off)\n"
        "  --quiet             no progress and no summary table: only the generated output\n"
        "  --json              one JSON object on stdout: tokens, text, figures\n"
        "  --dump-logits FILE  rank 0 writes the logits each token was sampled from, float32\n"
        "                      little-endian: \"SQLOGIT1\", u32 n_seqs, u32 vocab, u32\n"
        "                      n_tokens[n_seqs], then n_tokens[s] x vocab floats per sequence\n"
        "  --trace FILE        a Chrome trace-event JSON of every rank: load (read, quantize,\n"
        "                      repack/upload) and each pipeline step (compute, sends, waits)\n"
        "MODEL_DIR may be a .gguf file: its weights run as stored unless --quant nf4|fp4 is given.\n"
        "Output: generated ids per sequence (and text when the model has a tokenizer; one\n"
        "sequence's text streams as it is generated, several print at the end), then load time,\n"
        "prefill and decode tokens/s, per-stage busy / idle time and the bubble fraction next to\n"
        "the (p-1)/(m+p-1) model.\n");
}

/* ---- prompts --------------------------------------------------------------------------------- */

typedef struct prompts {
    int n;
    int32_t *ids[MAX_PROMPTS];
    int32_t len[MAX_PROMPTS];
} prompts;

static void prompts_free(prompts *p) {
    for (int i = 0; i < p->n; i++) free(p->ids[i]);
    p->n = 0;
}

/* "1,2,3;4,5" -> sequences; an empty sequence stays (the run reports it).  false: malformed. */
static bool parse_ids(const char *s, prompts *p, char *why, size_t why_n) {
    const char *q = s;
    for (;;) {
        if (p->n == MAX_PROMPTS) {
            snprintf(why, why_n, "more than %d sequences", MAX_PROMPTS);
            return false;
        }
        const char *end = strchr(q, ';');
        size_t n = end ? (size_t)(end - q) : strlen(q);
        int32_t *ids = malloc((n / 2 + 2) * sizeof *ids);
        if (!ids) {
            snprintf(why, why_n, "out of memory");
            return false;
        }
        int32_t k = 0;
        const char *c = q, *stop = q + n;
        while (c < stop) {
            while (c < stop && (*c == ' ' || *c == '\t')) c++;
            if (c == stop) break;
            char *e = NULL;
            errno = 0;
            long long v = strtoll(c, &e, 10);
            if (e == c || errno || v < INT32_MIN || v > INT32_MAX || e > stop) {
                snprintf(why, why_n, "'%.*s' is not a token id", (int)(stop - c), c);
                free(ids);
                return false;
            }
            ids[k++] = (int32_t)v;
            c = e;
            while (c < stop && (*c == ' ' || *c == '\t')) c++;
            if (c < stop && *c != ',') {
                snprintf(why, why_n, "expected ',' or ';' at '%.*s'", (int)(stop - c), c);
                free(ids);
                return false;
            }
            if (c < stop) c++;
        }
        p->ids[p->n] = ids;
        p->len[p->n++] = k;
        if (!end) return true;
        q = end + 1;
    }
}

typedef struct text_src {
    const char *text;   /* --prompt */
    const char *file;   /* --prompt-file */
} text_src;

static sq_status read_prompt_file(const char *path, char **out, size_t *len, sq_error *err) {
    sq_status st = sq_cli_read_text_file(path, MAX_PROMPT_FILE_BYTES, out, len, err);
    if (st != SQ_OK) return st;
    size_t n = *len;   /* one trailing newline is the file's, not the prompt's */
    if (n && (*out)[n - 1] == '\n') n--;
    if (n && (*out)[n - 1] == '\r') n--;
    (*out)[n] = '\0';
    *len = n;
    return SQ_OK;
}

typedef struct text_opts {
    bool chat;
    const char *system;
    int family;   /* the checkpoint's chat family (sq_ckpt_chat_family), -1: guess */
} text_opts;

/* Rank 0: text prompts -> ids through the folder's tokenizer (and the chat format). */
static sq_status encode_texts(const sq_tokenizer *tok, const text_src *src, int n_src,
                              const text_opts *to, prompts *p, int32_t *stop_id, sq_error *err) {
    sq_chat_family fam = SQ_CHAT_LLAMA3;
    *stop_id = -1;
    sq_status rc = SQ_OK;
    if (to->chat) {
        if (to->family >= 0) fam = (sq_chat_family)to->family;
        else if ((rc = sq_tokenizer_chat_family_guess(tok, &fam, err)) != SQ_OK) return rc;
        *stop_id = sq_tokenizer_chat_stop_id(tok, fam);
    }
    for (int i = 0; i < n_src && rc == SQ_OK; i++) {
        char *file_text = NULL, *chat = NULL;
        size_t len = 0;
        const char *text = src[i].text;
        if (src[i].file) {
            if ((rc = read_prompt_file(src[i].file, &file_text, &len, err)) != SQ_OK) break;
            text = file_text;
        } else {
            len = strlen(text);
        }
        if (to->chat) {
            rc = sq_tokenizer_chat_format(fam, to->system, text, &chat, &len, err);
            text = chat;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        if (rc == SQ_OK) rc = sq_tokenizer_encode(tok, text, len, !to->chat, &ids, &n, err);
        if (rc == SQ_OK && n > INT32_MAX) rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "prompt too long");
        if (rc == SQ_OK) {
            p->ids[p->n] = ids;
            p->len[p->n++] = (int32_t)n;
        } else {
            free(ids);
            if (err && src[i].file && !err->file[0]) snprintf(err->file, sizeof err->file, "%s", src[i].file);
        }
        free(file_text);
        free(chat);
    }
    return rc;
}

/* ---- output ---------------------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* streaming of one sequence's text on rank 0 */
typedef struct streamer {
    sq_detok_stream *ds;
    int32_t streamed;   /* ids of sequence 0 pushed so far */
    bool on;
} streamer;

static void on_token(void *user, int32_t seq, int32_t index, int32_t id) {
    streamer *s = user;
    if (!s->on || seq != 0 || index != s->streamed) return;
    const char *t = NULL;
    size_t n = 0;
    if (sq_detok_stream_push(s->ds, id, &t, &n, NULL) == SQ_OK && n) {
        fwrite(t, 1, n, stdout);
        fflush(stdout);
    }
    s->streamed++;
}

typedef struct cli_progress {
    bool tty;
} cli_progress;

static void on_progress(void *user, const sq_load_progress *p) {
    const cli_progress *c = user;
    if (!c->tty) return;
    fprintf(stderr, "\rload: %.3f / %.3f GB (%3.0f%%), %.2f GB/s, ranks done %d/%d%s",
            (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9,
            p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 100.0,
            p->gbps, p->ranks_done, p->n_ranks, p->final ? "\n" : "   ");
    fflush(stderr);
}

static const char *finish_name(sq_finish_reason f) { return f == SQ_FINISH_EOS ? "eos" : "length"; }

static void stage_layers(const sq_run_stage_info *s, char *buf, size_t n) {
    if (s->n_layers)
        snprintf(buf, n, "%d-%d (%d)%s%s", s->first_layer, s->first_layer + s->n_layers - 1,
                 s->n_layers, s->has_embed ? "+E" : "", s->has_head ? "+H" : "");
    else
        snprintf(buf, n, "none%s%s", s->has_embed ? "+E" : "", s->has_head ? "+H" : "");
}

static void print_json(const sq_run_result *r, char **texts, size_t *text_lens, const char *model,
                       const prompts *pr) {
    const sq_pipeline_result *p = r->pipe;
    printf("{\"model\": ");
    json_str(stdout, model, strlen(model));
    printf(", \"architecture\": \"%s\", \"n_ranks\": %d, \"backend\": ", r->cfg.architecture, r->n_ranks);
    json_str(stdout, r->backend, strlen(r->backend));
    printf(", \"backend_kind\": \"%s\", \"transport\": \"%s\", \"threads\": %d, "
           "\"quant\": \"%s\", \"double_quant\": %s, \"blocksize\": %lld, \"prequantized\": %s, \"gguf_as_stored\": %s, "
           "\"plan_file\": %s, \"max_seq\": %lld, \"n_micro_batches\": %d,\n \"tokens\": [",
           r->backend_kind, r->transport, r->n_threads, sq_quant_type_name(r->scheme.type), r->scheme.double_quant ? "true" : "false",
           (long long)r->scheme.blocksize, r->prequantized ? "true" : "false", r->ggml_stored ? "true" : "false",
           r->plan_from_file ? "true" : "false", (long long)r->max_seq, p->n_micro_batches);
    for (int32_t s = 0; s < p->n_seqs; s++) {
        printf("%s[", s ? ", " : "");
        for (int32_t i = 0; i < p->n_tokens[s]; i++) printf("%s%d", i ? ", " : "", p->tokens[s][i]);
        printf("]");
    }
    printf("],\n \"prompt_ids\": [");
    for (int s = 0; s < pr->n; s++) {
        printf("%s[", s ? ", " : "");
        for (int32_t i = 0; i < pr->len[s]; i++) printf("%s%d", i ? ", " : "", pr->ids[s][i]);
        printf("]");
    }
    printf("],\n \"finish\": [");
    for (int32_t s = 0; s < p->n_seqs; s++) printf("%s\"%s\"", s ? ", " : "", finish_name(p->finish[s]));
    printf("],\n");
    if (texts) {
        printf(" \"text\": [");
        for (int32_t s = 0; s < p->n_seqs; s++) {
            if (s) printf(", ");
            json_str(stdout, texts[s] ? texts[s] : "", texts[s] ? text_lens[s] : 0);
        }
        printf("],\n");
    }
    printf(" \"load_s\": %.6f, \"bytes_read\": %llu, \"prefill_tokens\": %lld, \"prefill_s\": %.6f, "
           "\"prefill_tok_s\": %.3f, \"decode_tokens\": %lld, \"decode_s\": %.6f, \"decode_tok_s\": %.3f,\n",
           r->load_s, (unsigned long long)r->bytes_read, (long long)p->prefill_tokens, p->prefill_s,
           p->prefill_s > 0 ? (double)p->prefill_tokens / p->prefill_s : 0.0, (long long)p->decode_tokens,
           p->decode_s, p->decode_s > 0 ? (double)p->decode_tokens / p->decode_s : 0.0);
    printf(" \"stages\": [");
    for (int i = 0; i < p->n_stages; i++) {
        const sq_stage_stats *s = &p->stages[i];
        const sq_run_stage_info *in = &r->stages[i];
        printf("%s\n  {\"rank\": %d, \"first_layer\": %d, \"n_layers\": %d, \"embed\": %s, \"head\": %s, "
               "\"device\": %d, \"weight_bytes\": %llu, \"state_bytes\": %llu, \"load_s\": %.6f, \"busy_s\": %.6f, "
               "\"idle_s\": %.6f, \"wall_s\": %.6f}", i ? "," : "", s->rank, in->first_layer, in->n_layers,
               in->has_embed ? "true" : "false", in->has_head ? "true" : "false", in->device,
               (unsigned long long)in->weight_bytes, (unsigned long long)in->state_bytes, in->load_s,
               s->busy_s, s->idle_s, s->wall_s);
    }
    printf("],\n \"bubble_fraction\": %.6f, \"prefill_bubble_fraction\": %.6f, "
           "\"decode_bubble_fraction\": %.6f, \"bubble_model\": %.6f}\n",
           p->bubble_fraction, p->prefill_bubble_fraction, p->decode_bubble_fraction, p->bubble_model);
}

static void print_table(const sq_run_result *r) {
    const sq_pipeline_result *p = r->pipe;
    printf("# load %.4f s (slowest rank), %.3f MB read\n", r->load_s, (double)r->bytes_read / 1e6);
    printf("# prefill %6lld tok in %9.4f s: %10.1f tok/s\n", (long long)p->prefill_tokens, p->prefill_s,
           p->prefill_s > 0 ? (double)p->prefill_tokens / p->prefill_s : 0.0);
    printf("# decode  %6lld tok in %9.4f s: %10.1f tok/s\n", (long long)p->decode_tokens, p->decode_s,
           p->decode_s > 0 ? (double)p->decode_tokens / p->decode_s : 0.0);
    printf("# %4s  %-14s %10s %9s %9s %9s %9s\n", "rank", "layers", "weights", "load", "busy", "idle", "wall");
    printf("# %4s  %-14s %10s %9s %9s %9s %9s\n", "", "", "MB", "s", "s", "s", "s");
    for (int i = 0; i < p->n_stages; i++) {
        char layers[48];
        stage_layers(&r->stages[i], layers, sizeof layers);
        const sq_stage_stats *s = &p->stages[i];
        printf("  %4d  %-14s %10.3f %9.4f %9.4f %9.4f %9.4f\n", s->rank, layers,
               (double)r->stages[i].weight_bytes / 1e6, r->stages[i].load_s, s->busy_s, s->idle_s, s->wall_s);
    }
    printf("# bubble fraction %.3f (prefill %.3f, decode %.3f); model (p-1)/(m+p-1) = %.3f "
           "with p = %d stages, m = %d micro-batches\n",
           p->bubble_fraction, p->prefill_bubble_fraction, p->decode_bubble_fraction, p->bubble_model,
           p->n_stages, p->n_micro_batches);
}

/* The context's log without debug lines (and without info lines under --quiet). */
typedef struct log_filter {
    sq_log inner;
    sq_log_level max;
} log_filter;

static void filtered_log(void *user, sq_log_level level, const char *msg) {
    const log_filter *f = user;
    if (level <= f->max && f->inner.fn) f->inner.fn(f->inner.user, level, msg);
}

/* ---- the command ------------------------------------------------------------------------------- */

/* After a failure during generation: one line from the rank that can say it (rank 0, or rank 1
 * when rank 0 is the one that failed), then the job ends. */

static int run_cmd(int argc, char **argv, sq_cli_ctx *ctx, text_src *srcs) {
    const char *cmd = "run";
    sq_run_options o = sq_run_options_default();
    const char *ids_arg = NULL, *dump = NULL, *system = NULL;
    int n_src = 0;
    bool quiet = false, json = false, chat = false, quant_given = false;
    const char *trace_path = NULL;
    int urc0 = 0;
    int64_t v64 = 0;
    double vd = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        int urc = 0;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_run_flag(ctx, cmd, argc, argv, &i, &o, &quant_given, &missing, &urc)) {
            if (urc) return urc;
        } else if (sq_cli_flag_value(argc, argv, &i, "--plan", &v, &missing)) {
            o.plan_path = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--prompt-ids", &v, &missing)) {
            if (ids_arg) return sq_cli_usage_error(ctx, cmd, "--prompt-ids given twice (use ';' between sequences)");
            ids_arg = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--prompt", &v, &missing)) {
            if (!missing && n_src == MAX_PROMPTS) return sq_cli_usage_error(ctx, cmd, "more than %d prompts", MAX_PROMPTS);
            if (!missing) srcs[n_src++] = (text_src){.text = v};
        } else if (sq_cli_flag_value(argc, argv, &i, "--prompt-file", &v, &missing)) {
            if (!missing && n_src == MAX_PROMPTS) return sq_cli_usage_error(ctx, cmd, "more than %d prompts", MAX_PROMPTS);
            if (!missing) srcs[n_src++] = (text_src){.file = v};
        } else if (!strcmp(argv[i], "--chat")) {
            chat = true;
        } else if (sq_cli_flag_value(argc, argv, &i, "--system", &v, &missing)) {
            system = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-new-tokens", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 1 << 24, &v64))
                return sq_cli_usage_error(ctx, cmd, "--max-new-tokens must be 1..16777216, not '%s'", v);
            o.max_new_tokens = (int32_t)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-seq", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 1 << 24, &v64))
                return sq_cli_usage_error(ctx, cmd, "--max-seq must be 1..16777216, not '%s'", v);
            o.max_seq = v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--micro-batches", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, MAX_PROMPTS, &v64))
                return sq_cli_usage_error(ctx, cmd, "--micro-batches must be 1..%d, not '%s'", MAX_PROMPTS, v);
            o.n_micro_batches = (int32_t)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--temperature", &v, &missing)) {
            if (!missing && !sq_cli_parse_f64(v, 0, 1000, &vd))
                return sq_cli_usage_error(ctx, cmd, "--temperature must be a number in 0..1000, not '%s'", v);
            o.sample.temperature = (float)vd;
        } else if (sq_cli_flag_value(argc, argv, &i, "--top-k", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 0, INT32_MAX, &v64))
                return sq_cli_usage_error(ctx, cmd, "--top-k must be a whole number >= 0, not '%s'", v);
            o.sample.top_k = (int32_t)v64;
        } else if (sq_cli_flag_value(argc, argv, &i, "--top-p", &v, &missing)) {
            if (!missing && (!sq_cli_parse_f64(v, 0, 1, &vd) || vd <= 0))
                return sq_cli_usage_error(ctx, cmd, "--top-p must be in (0, 1], not '%s'", v);
            o.sample.top_p = (float)vd;
        } else if (sq_cli_flag_value(argc, argv, &i, "--seed", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 0, INT64_MAX, &v64))
                return sq_cli_usage_error(ctx, cmd, "--seed must be a whole number >= 0, not '%s'", v);
            o.sample.seed = (uint64_t)v64;
        } else if (!strcmp(argv[i], "--ignore-eos")) {
            o.ignore_eos = true;
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = true;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (sq_cli_flag_value(argc, argv, &i, "--dump-logits", &v, &missing)) {
            dump = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--trace", &v, &missing)) {
            trace_path = v;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return sq_cli_usage_error(ctx, cmd, "unknown option '%s'", argv[i]);
        } else if (!o.model_dir) {
            o.model_dir = argv[i];
        } else {
            return sq_cli_usage_error(ctx, cmd, "unexpected argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, cmd, "%s needs a value", argv[i]);
    }
    if (!o.model_dir) return sq_cli_usage_error(ctx, cmd, "no MODEL_DIR given");
    if (!ids_arg && !n_src) return sq_cli_usage_error(ctx, cmd, "no prompt: give --prompt-ids, --prompt or --prompt-file");
    if (ids_arg && n_src) return sq_cli_usage_error(ctx, cmd, "give token ids (--prompt-ids) or text prompts, not both");
    if (chat && !n_src) return sq_cli_usage_error(ctx, cmd, "--chat formats text prompts (--prompt / --prompt-file)");
    if (system && !chat) return sq_cli_usage_error(ctx, cmd, "--system goes with --chat");
    if ((urc0 = sq_cli_scheme_check(ctx, cmd, &o.scheme)) != 0) return urc0;
    o.scheme_given = quant_given;
    o.keep_logits = dump != NULL;
    log_filter lf = {.inner = ctx->log, .max = quiet ? SQ_LOG_WARN : SQ_LOG_INFO};
    o.log = (sq_log){.fn = filtered_log, .user = &lf};

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    prompts p;
    memset(&p, 0, sizeof p);
    sq_tokenizer *tok = NULL;
    sq_detok_stream *ds = NULL;
    streamer sm = {0};
    cli_progress cp = {.tty = isatty(fileno(stderr)) != 0};
    int32_t stop_id = -1;
    sq_status st = SQ_OK;
    /* rank 0: the prompts as ids, and the tokenizer when the folder has one */
    if (ctx->rank == 0) {
        /* the tokenizer and chat family through the checkpoint (tokenizer.json of a folder,
         * the metadata of a GGUF) */
        sq_ckpt *ck = NULL;
        bool have_tok = false;
        int family = -1;
        char default_system[1024];
        bool have_default = false;
        st = sq_ckpt_open(o.model_dir, &ck, &err);
        if (st == SQ_OK) st = sq_ckpt_tokenizer(ck, &tok, &have_tok, &err);
        if (st == SQ_OK) family = sq_ckpt_chat_family(ck);
        if (st == SQ_OK && family == SQ_CHAT_CHATML)   /* the template's own default system */
            have_default = sq_ckpt_chat_default_system(ck, default_system, sizeof default_system);
        sq_ckpt_close(ck);
        if (st == SQ_OK && n_src && !have_tok)
            st = sq_error_set(&err, SQ_ERR_INVALID, o.model_dir, NULL,
                              "tokenizer.json: not found (nor a GGUF's tokenizer.ggml.model): text "
                              "prompts need the model's tokenizer (or give --prompt-ids)");
        if (st == SQ_OK && n_src) {
            text_opts to = {.chat = chat, .system = system ? system : have_default ? default_system : NULL,
                            .family = family};
            st = encode_texts(tok, srcs, n_src, &to, &p, &stop_id, &err);
        }
        if (st == SQ_OK && ids_arg) {
            char why[256];
            if (!parse_ids(ids_arg, &p, why, sizeof why))
                st = sq_error_set(&err, SQ_ERR_INVALID, NULL, NULL, "--prompt-ids: %s", why);
        }
        if (st == SQ_OK && tok) st = sq_detok_stream_create(tok, true, &ds, &err);
    }
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) {
        prompts_free(&p);
        sq_detok_stream_destroy(ds);
        sq_tokenizer_destroy(tok);
        return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    }
    o.n_seqs = p.n;
    o.prompts = (const int32_t *const *)p.ids;
    o.prompt_lens = p.len;
    if (stop_id >= 0) {
        o.extra_eos = &stop_id;
        o.n_extra_eos = 1;
    }
    sm.ds = ds;
    sm.on = ctx->rank == 0 && ds && p.n == 1 && !json;
    if (sm.on) {
        o.on_token = on_token;
        o.token_user = &sm;
    }
    if (!quiet && ctx->rank == 0) {
        o.progress = on_progress;
        o.progress_user = &cp;
        o.progress_interval_s = 0.2;
    }

    sq_run_result *r = NULL;
    bool must_abort = false;
    o.trace = sq_cli_trace_open(ctx, trace_path);
    sq_cli_watch(ctx, &o);
    st = sq_run(ctx->comm, &o, &r, &must_abort, &err);
    if (st != SQ_OK && must_abort) sq_cli_abort_after_peer_failure(ctx, &err);
    /* every rank agrees on st: the trace is written (collectively) after a success only */
    int trc = st == SQ_OK ? sq_cli_trace_close(ctx, o.trace, trace_path, 0) : 0;
    if (st != SQ_OK) sq_trace_destroy(o.trace);
    if (st != SQ_OK) {
        if (sm.on && sm.streamed) printf("\n");
        prompts_free(&p);
        sq_detok_stream_destroy(ds);
        sq_tokenizer_destroy(tok);
        return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    }
    int rc = trc;
    if (ctx->rank == 0) {
        const sq_pipeline_result *pr = r->pipe;
        /* the rest of the streamed sequence (its last id never went round the ring again) */
        if (sm.on) {
            const char *t = NULL;
            size_t n = 0;
            for (int32_t i = sm.streamed; i < pr->n_tokens[0]; i++)
                if (sq_detok_stream_push(ds, pr->tokens[0][i], &t, &n, NULL) == SQ_OK && n) fwrite(t, 1, n, stdout);
            if (sq_detok_stream_finish(ds, &t, &n, NULL) == SQ_OK && n) fwrite(t, 1, n, stdout);
            printf("\n");
        }
        char **texts = NULL;
        size_t *text_lens = NULL;
        if (tok) {
            texts = calloc((size_t)pr->n_seqs, sizeof *texts);
            text_lens = calloc((size_t)pr->n_seqs, sizeof *text_lens);
            for (int32_t s = 0; texts && text_lens && s < pr->n_seqs; s++)
                if (sq_tokenizer_decode(tok, pr->tokens[s], (size_t)pr->n_tokens[s], true, &texts[s],
                                        &text_lens[s], &err) != SQ_OK)
                    texts[s] = NULL;
            if (!texts || !text_lens) {
                free(texts);
                free(text_lens);
                texts = NULL;
                text_lens = NULL;
            }
        }
        if (json) {
            print_json(r, texts, text_lens, o.model_dir, &p);
        } else {
            char scheme[96];
            if (!quiet)
                printf("# shardq run: %s (%s, %lld layers, vocab %lld): %s on %d rank%s "
                       "x %d thread%s (backend %s, transport %s), max_seq %lld, %d sequence%s in %d "
                       "micro-batch%s, %s\n",
                       o.model_dir, r->cfg.architecture, (long long)r->cfg.n_layers,
                       (long long)r->cfg.vocab_size,
                       sq_cli_scheme_text(r, scheme, sizeof scheme), r->n_ranks, r->n_ranks == 1 ? "" : "s",
                       r->n_threads, r->n_threads == 1 ? "" : "s", r->backend, r->transport, (long long)r->max_seq,
                       pr->n_seqs, pr->n_seqs == 1 ? "" : "s", pr->n_micro_batches,
                       pr->n_micro_batches == 1 ? "" : "es",
                       o.sample.temperature > 0 ? "sampled" : "greedy");
            for (int32_t s = 0; s < pr->n_seqs && !(quiet && sm.on); s++) {
                if (quiet && texts && texts[s]) {   /* quiet: the text only */
                    printf("%s\n", texts[s]);
                    continue;
                }
                printf("seq %d: %d tokens (%s):", s, pr->n_tokens[s], finish_name(pr->finish[s]));
                for (int32_t i = 0; i < pr->n_tokens[s]; i++) printf(" %d", pr->tokens[s][i]);
                printf("\n");
                if (texts && texts[s]) {
                    printf("  text: ");
                    json_str(stdout, texts[s], text_lens[s]);
                    printf("\n");
                }
            }
            if (!quiet) print_table(r);
        }
        for (int32_t s = 0; texts && s < pr->n_seqs; s++) free(texts[s]);
        free(texts);
        free(text_lens);
        if (dump && sq_runtime_write_logits(r, dump, &err) != SQ_OK) rc = sq_cli_report(ctx, &err);
    }
    /* the dump is rank 0's: every rank leaves with its status */
    if (ctx->n_ranks > 1) {
        int mine = rc, all = 0;
        MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MAX, ctx->comm);
        rc = all;
    }
    sq_run_result_destroy(r);
    prompts_free(&p);
    sq_detok_stream_destroy(ds);
    sq_tokenizer_destroy(tok);
    return rc;
}

int sq_cli_run(int argc, char **argv, sq_cli_ctx *ctx) {
    text_src *srcs = calloc(MAX_PROMPTS, sizeof *srcs);   /* the text prompts' sources */
    if (!srcs) {
        fprintf(stderr, "shardq run: out of memory\n");
        return 1;
    }
    int rc = run_cmd(argc, argv, ctx, srcs);
    free(srcs);
    return rc;
}
