/* `shardq serve MODEL`: loads the model across the ranks as `run` does (sq_run's serve hook),
 * then rank 0 answers OpenAI-style HTTP requests (serve.h) and every rank runs the serve engine
 * until SIGTERM / SIGINT on rank 0 drains it.  Thin: flags, the tokenizer and chat template,
 * the listening socket, the signal flag; the engine and the HTTP front end are the library's.
 * A failure while serving ends the job with MPI_Abort (a dead rank cannot be finalized). */
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/checkpoint.h"
#include "shardq/serve.h"
#include "shardq/tokenizer.h"

/* The only process-wide state: a signal handler can reach nothing else. */
static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
        "usage: [mpirun -np N] shardq serve MODEL [--host 127.0.0.1] [--port 8080] [--api-key KEY]\n"
        "          [--max-seqs S] [--max-seq-len L] [--max-queue Q] [--prefill-chunk C]\n"
        "          [--max-step-tokens T] [--max-body BYTES] [--drain-timeout S] [--model-name NAME]\n"
        "          [--plan plan.json] [--quant nf4|fp4|int8|int8-zp|none] [--double-quant]\n"
        "          [--blocksize N] [--threads N] [--activations int8|f32] [--timeout S]\n"
        "          [--backend auto|cpu|cuda] [--transport auto|mpi|nccl] [--device N]\n\n"
        "Loads MODEL across the ranks started (as 'shardq run' does) and keeps it loaded; rank 0\n"
        "serves an OpenAI-compatible HTTP API: POST /v1/completions, POST /v1/chat/completions\n"
        "(stream true: server-sent events), GET /v1/models, GET /health (200 once every rank has\n"
        "loaded), GET /metrics (Prometheus).  Requests are batched continuously through the\n"
        "pipeline: a new one joins at the next step while a KV slot is free.\n"
        "  --host ADDR         IPv4 address to listen on (default 127.0.0.1: this machine only)\n"
        "  --port N            TCP port (default 8080; 0: any free port, printed at start)\n"
        "  --api-key KEY       require 'Authorization: Bearer KEY' (default: $SHARDQ_API_KEY, or none)\n"
        "  --max-seqs S        sequences at once: KV slots (default 16)\n"
        "  --max-seq-len L     positions per slot, prompt + completion (default min(2048,\n"
        "                      max_position_embeddings))\n"
        "  --max-queue Q       requests waiting for a slot before 429 (default 64)\n"
        "  --prefill-chunk C   prompt tokens of one request per step (default 256), so running\n"
        "                      requests keep getting tokens while a long prompt is read\n"
        "  --max-step-tokens T rows of one step (default max(512, S))\n"
        "  --max-body BYTES    larger request bodies get 413 (default 1048576)\n"
        "  --drain-timeout S   on SIGTERM / SIGINT, running requests may finish for S seconds (30)\n"
        "  --model-name NAME   the model id of /v1/models (default: MODEL's file or folder name)\n"
        "  --timeout S         seconds of silence after which a peer counts as dead (default 30)\n"
        "  --stall-timeout S   as for 'shardq run': the limit on one step of bring-up or teardown\n"
        "  --quant, --double-quant, --blocksize, --threads, --activations, --backend, --transport,\n"
        "  --device: as for 'shardq run'\n"
        "Sampling per request: temperature (default 1), top_p, top_k, seed; temperature 0 is greedy.\n"
        "A request's tokens equal 'shardq run' on its prompt alone with the same settings.\n");
}

typedef struct serve_state {
    const sq_cli_ctx *ctx;
    sq_serve_http *http;          /* rank 0 */
    int32_t max_queue, prefill_chunk;
    double drain_s;
    const char *model;
} serve_state;

static sq_status serve_hook(void *user, const sq_run_serve_ctx *c, sq_error *err) {
    serve_state *S = user;
    sq_serve_engine_params ep;
    memset(&ep, 0, sizeof ep);
    ep.t = c->t;
    ep.stage = c->stage;
    ep.max_seqs = c->n_slots;
    ep.max_seq = c->max_seq;
    ep.max_step_tokens = c->max_tokens;
    ep.prefill_chunk = S->prefill_chunk;
    ep.max_queue = S->max_queue;
    ep.n_eos = c->n_eos < SQ_SERVE_MAX_EOS ? c->n_eos : SQ_SERVE_MAX_EOS;
    memcpy(ep.eos, c->eos, (size_t)ep.n_eos * sizeof *ep.eos);
    ep.drain_timeout_s = S->drain_s;
    ep.stop_flag = &g_stop;
    ep.log = S->ctx->log;
    sq_serve_engine *e = NULL;
    sq_status rc = sq_serve_engine_create(&ep, &e, err);
    if (rc != SQ_OK) return rc;
    if (c->rank == 0) {
        sq_serve_http_attach(S->http, e);
        fprintf(stderr, "shardq serve: ready: %s on %d rank%s (%s, transport %s), %d slots x %lld positions, "
                        "loaded in %.2f s\n",
                S->model, c->n_ranks, c->n_ranks == 1 ? "" : "s", c->backend, c->transport, c->n_slots,
                (long long)c->max_seq, c->load_s);
        fflush(stderr);
    }
    rc = sq_serve_engine_run(e, err);
    if (c->rank == 0) {
        /* every request has ended: the connections write their last bytes (an error, the end of a
         * stream) before the listener stops; then no thread of it touches the engine */
        sq_serve_http_quiesce(S->http, 2.0);
        sq_serve_http_destroy(S->http);
        S->http = NULL;
    }
    sq_serve_engine_destroy(e);
    return rc;
}

int sq_cli_serve(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *cmd = "serve";
    sq_run_options o = sq_run_options_default();
    const char *host = "127.0.0.1", *api_key = getenv("SHARDQ_API_KEY"), *model_name = NULL;
    int64_t port = 8080, max_seqs = 16, max_len = 0, max_queue = 64, chunk = 256, step_tokens = 0;
    int64_t max_body = 1 << 20;
    double drain = 30;
    bool quant_given = false;
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
        } else if (sq_cli_flag_value(argc, argv, &i, "--host", &v, &missing)) {
            host = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--api-key", &v, &missing)) {
            api_key = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--model-name", &v, &missing)) {
            model_name = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--port", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 0, 65535, &port))
                return sq_cli_usage_error(ctx, cmd, "--port must be 0..65535, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-seqs", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 4096, &max_seqs))
                return sq_cli_usage_error(ctx, cmd, "--max-seqs must be 1..4096, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-seq-len", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 2, 1 << 24, &max_len))
                return sq_cli_usage_error(ctx, cmd, "--max-seq-len must be 2..16777216, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-queue", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 0, 1 << 20, &max_queue))
                return sq_cli_usage_error(ctx, cmd, "--max-queue must be 0..1048576, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--prefill-chunk", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 1 << 24, &chunk))
                return sq_cli_usage_error(ctx, cmd, "--prefill-chunk must be 1..16777216, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-step-tokens", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 1, 1 << 20, &step_tokens))
                return sq_cli_usage_error(ctx, cmd, "--max-step-tokens must be 1..1048576, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--max-body", &v, &missing)) {
            if (!missing && !sq_cli_parse_i64(v, 64, INT64_C(1) << 32, &max_body))
                return sq_cli_usage_error(ctx, cmd, "--max-body must be 64..4294967296 bytes, not '%s'", v);
        } else if (sq_cli_flag_value(argc, argv, &i, "--drain-timeout", &v, &missing)) {
            if (!missing && !sq_cli_parse_f64(v, 0, 86400, &drain))
                return sq_cli_usage_error(ctx, cmd, "--drain-timeout must be 0..86400 seconds, not '%s'", v);
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
    int urc = sq_cli_scheme_check(ctx, cmd, &o.scheme);
    if (urc) return urc;
    if (step_tokens && step_tokens < max_seqs)
        return sq_cli_usage_error(ctx, cmd, "--max-step-tokens %lld is below --max-seqs %lld", (long long)step_tokens,
                                  (long long)max_seqs);
    o.scheme_given = quant_given;

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_model_config cfg;
    sq_status st = sq_cli_config_load(o.model_dir, &cfg, &err);
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    if (!max_len) max_len = cfg.max_position_embeddings > 0 && cfg.max_position_embeddings < 2048 ? cfg.max_position_embeddings : 2048;

    /* rank 0: the tokenizer, the chat template, the listening socket */
    serve_state S = {.ctx = ctx, .max_queue = (int32_t)max_queue, .prefill_chunk = (int32_t)chunk, .drain_s = drain};
    sq_tokenizer *tok = NULL;
    char default_system[1024], name_buf[1024];
    snprintf(name_buf, sizeof name_buf, "%s", o.model_dir);
    size_t nl = strlen(name_buf);
    while (nl > 1 && name_buf[nl - 1] == '/') name_buf[--nl] = '\0';
    S.model = model_name ? model_name : basename(name_buf);
    /* every rank's pid, for the listening line (scripts that must stop every rank) */
    char pids[512] = "";
    {
        long me = (long)getpid(), *all = ctx->rank == 0 ? calloc((size_t)ctx->n_ranks, sizeof *all) : NULL;
        if (ctx->n_ranks > 1) MPI_Gather(&me, 1, MPI_LONG, all, 1, MPI_LONG, 0, ctx->comm);
        else if (all) all[0] = me;
        for (int r = 0; all && r < ctx->n_ranks; r++) {
            size_t at = strlen(pids);
            snprintf(pids + at, sizeof pids - at, "%s%ld", r ? "," : "", all[r]);
        }
        free(all);
    }
    if (ctx->rank == 0) {
        sq_ckpt *ck = NULL;
        bool have_tok = false, have_default = false;
        int family = -1;
        st = sq_ckpt_open(o.model_dir, &ck, &err);
        if (st == SQ_OK) st = sq_ckpt_tokenizer(ck, &tok, &have_tok, &err);
        if (st == SQ_OK) family = sq_ckpt_chat_family(ck);
        if (st == SQ_OK && family == SQ_CHAT_CHATML)
            have_default = sq_ckpt_chat_default_system(ck, default_system, sizeof default_system);
        sq_ckpt_close(ck);
        if (st == SQ_OK && tok && family < 0) {
            sq_chat_family f;
            sq_error e2;
            sq_error_init(&e2, -1);
            if (sq_tokenizer_chat_family_guess(tok, &f, &e2) == SQ_OK) family = (int)f;
        }
        if (st == SQ_OK) {
            sq_serve_http_params hp = {.host = host, .port = (int)port, .api_key = api_key && *api_key ? api_key : NULL,
                                       .model_name = S.model, .tok = tok, .chat_family = tok ? family : -1,
                                       .default_system = have_default ? default_system : NULL,
                                       .chat_stop_id = tok && family >= 0 ? sq_tokenizer_chat_stop_id(tok, (sq_chat_family)family) : -1,
                                       .max_seq = max_len, .max_body_bytes = (uint64_t)max_body, .log = ctx->log};
            st = sq_serve_http_create(&hp, &S.http, &err);
        }
        if (st == SQ_OK) {
            fprintf(stderr, "shardq serve: listening on http://%s:%d (pids %s; loading %s on %d rank%s)%s\n",
                    host, sq_serve_http_port(S.http), pids, o.model_dir, ctx->n_ranks, ctx->n_ranks == 1 ? "" : "s",
                    api_key && *api_key ? ", API key required" : "");
            fflush(stderr);
        }
    }
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) {
        sq_serve_http_destroy(S.http);
        sq_tokenizer_destroy(tok);
        return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* the request only sizes the KV cache: max_seqs slots of max_len positions */
    int32_t *one = calloc((size_t)max_seqs, sizeof *one);
    int32_t *lens = malloc((size_t)max_seqs * sizeof *lens);
    int32_t **prompts = malloc((size_t)max_seqs * sizeof *prompts);
    if (!one || !lens || !prompts) {
        free(one);
        free(lens);
        free(prompts);
        sq_serve_http_destroy(S.http);
        sq_tokenizer_destroy(tok);
        fprintf(stderr, "shardq serve: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < max_seqs; i++) {
        lens[i] = 1;
        prompts[i] = &one[i];
    }
    o.n_seqs = (int32_t)max_seqs;
    o.prompts = (const int32_t *const *)prompts;
    o.prompt_lens = lens;
    o.max_new_tokens = (int32_t)(max_len - 1);
    o.max_seq = max_len;
    o.max_tokens = step_tokens ? step_tokens : (max_seqs > 512 ? max_seqs : 512);
    o.log = ctx->log;
    if (ctx->rank == 0) {
        o.progress = sq_cli_load_progress;
        o.progress_interval_s = 0.2;
    }
    o.serve = serve_hook;
    o.serve_user = &S;
    sq_run_result *r = NULL;
    bool must_abort = false;
    sq_cli_watch(ctx, &o);
    st = sq_run(ctx->comm, &o, &r, &must_abort, &err);
    sq_run_result_destroy(r);
    free(one);
    free(lens);
    free(prompts);
    if (st != SQ_OK && must_abort) sq_cli_abort_after_peer_failure(ctx, &err);
    sq_serve_http_destroy(S.http);
    sq_tokenizer_destroy(tok);
    if (st != SQ_OK) return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    if (ctx->rank == 0) fprintf(stderr, "shardq serve: stopped\n");
    return 0;
}
