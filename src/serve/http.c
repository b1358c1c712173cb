/* Owns the HTTP front end of `shardq serve` on rank 0: libmicrohttpd with a thread per
 * connection, the routes (/v1/completions, /v1/chat/completions, /v1/models, /health,
 * /metrics), the bearer key, body limits, prompts to ids (tokenizer, chat template), the
 * request's life against the engine (submit, wait, stop strings, release on disconnect),
 * server-sent events in OpenAI's chunk format, and OpenAI's error JSON.  Must never print,
 * parse HTTP itself, or call MPI. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve_impl.h"

struct sq_serve_http {
    sq_serve_http_params p;
    char *host, *api_key, *model_name, *default_system;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;        /* e, counters */
    pthread_mutex_t tok_mu;    /* the tokenizer */
    sq_serve_engine *e;
    uint64_t next_id;
    uint64_t codes[6];         /* responses: 2xx, 400, 401/404/405, 413, 429, 5xx */
    int n_gens;                /* generation requests whose response is not fully out */
    pthread_cond_t gens_cv;
};

typedef struct conn {
    sq_buf body;
    bool too_big;
    bool gen_counted;          /* a generation request, in sq_serve_http.n_gens */
} conn;

/* One generation request's life (a stream's reader state, or a blocking handler's). */
typedef struct gen {
    sq_serve_http *h;
    sq_serve_engine *e;
    sq_serve_seq *s;
    sq_api_req req;
    int32_t n_prompt, max_new;
    int32_t *ids, have;        /* (max_new) ids taken so far */
    sq_detok_stream *ds;
    sq_buf text;               /* the text so far (cut at a stop string) */
    size_t sent;               /* bytes of text already sent (stream) */
    size_t max_stop;
    bool done, failed;
    const char *finish;        /* "stop" / "length" */
    char error[300];
    sq_buf out;                /* stream: bytes not yet handed to MHD */
    size_t out_off;
    int phase;                 /* stream: 0 role chunk, 1 tokens, 2 done */
    char id[48];
    long created;
    double t_last;
} gen;

/* ---- responses ------------------------------------------------------------------------------- */

static void count(sq_serve_http *h, unsigned code) {
    int k = code < 300 ? 0 : code == 400 ? 1 : code == 413 ? 3 : code == 429 ? 4 : code >= 500 ? 5 : 2;
    pthread_mutex_lock(&h->mu);
    h->codes[k]++;
    pthread_mutex_unlock(&h->mu);
}

static enum MHD_Result reply(sq_serve_http *h, struct MHD_Connection *c, unsigned code, const char *type,
                             const char *body, size_t n, const char *retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    if (code == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result res = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    count(h, code);
    return res;
}

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result reply_error(sq_serve_http *h, struct MHD_Connection *c, unsigned code, const char *type,
                                   const char *param, const char *ecode, const char *msg) {
    sq_buf b = {0};
    SQ_BUF_LIT(&b, "{\"error\": {\"message\": ");
    sq_buf_json_str(&b, msg, strlen(msg));
    sq_buf_addf(&b, ", \"type\": \"%s\", \"param\": ", type);
    if (param && *param) sq_buf_json_str(&b, param, strlen(param));
    else SQ_BUF_LIT(&b, "null");
    SQ_BUF_LIT(&b, ", \"code\": ");
    if (ecode) sq_buf_json_str(&b, ecode, strlen(ecode));
    else SQ_BUF_LIT(&b, "null");
    SQ_BUF_LIT(&b, "}}\n");
    enum MHD_Result r = b.oom ? MHD_NO
                              : reply(h, c, code, "application/json", b.p, b.n, code == 429 ? "1" : NULL);
    free(b.p);
    return r;
}

/* ---- the generation ------------------------------------------------------------------------ */

static void gen_free(gen *g) {
    if (!g) return;
    if (g->s) sq_serve_seq_release(g->e, g->s);
    sq_detok_stream_destroy(g->ds);
    sq_api_req_free(&g->req);
    free(g->ids);
    free(g->text.p);
    free(g->out.p);
    free(g);
}

/* Earliest stop string in text at or after `from`; SIZE_MAX when none. */
static size_t find_stop(const gen *g, size_t from) {
    size_t best = (size_t)-1;
    for (int i = 0; i < g->req.n_stop; i++) {
        const char *hit = g->text.n > from ? memmem(g->text.p + from, g->text.n - from, g->req.stop[i],
                                                    strlen(g->req.stop[i]))
                                           : NULL;
        if (hit && (size_t)(hit - g->text.p) < best) best = (size_t)(hit - g->text.p);
    }
    return best;
}

/* Takes the ids that came (waiting up to timeout_s), turns them into text, and ends the request
 * at an EOS, its length, a stop string, or an error. */
static void advance(gen *g, double timeout_s) {
    if (g->done) return;
    sq_serve_progress pr;
    int32_t n = sq_serve_seq_wait(g->e, g->s, g->have, timeout_s, g->ids + g->have, g->max_new - g->have, &pr);
    for (int32_t i = 0; i < n && !g->done; i++) {
        const char *t = NULL;
        size_t tn = 0;
        size_t before = g->text.n;
        pthread_mutex_lock(&g->h->tok_mu);
        if (g->ds && sq_detok_stream_push(g->ds, g->ids[g->have], &t, &tn, NULL) == SQ_OK && tn)
            sq_buf_add(&g->text, t, tn);
        pthread_mutex_unlock(&g->h->tok_mu);
        g->have++;
        if (g->req.n_stop) {
            size_t at = find_stop(g, before > g->max_stop ? before - g->max_stop : 0);
            if (at != (size_t)-1) {
                g->text.n = at;
                if (g->text.p) g->text.p[at] = '\0';
                g->done = true;
                g->finish = "stop";
                sq_serve_seq_cancel(g->e, g->s);
            }
        }
    }
    if (g->done) return;
    if (pr.finish != SQ_SERVE_RUNNING && g->have >= pr.n_gen) {
        g->done = true;
        if (pr.finish == SQ_SERVE_ERROR || pr.finish == SQ_SERVE_CANCELLED) {
            g->failed = true;
            snprintf(g->error, sizeof g->error, "%s", pr.error[0] ? pr.error : "the request ended early");
        }
        g->finish = pr.finish == SQ_SERVE_LENGTH ? "length" : "stop";
        const char *t = NULL;
        size_t tn = 0;
        pthread_mutex_lock(&g->h->tok_mu);
        if (g->ds && sq_detok_stream_finish(g->ds, &t, &tn, NULL) == SQ_OK && tn) sq_buf_add(&g->text, t, tn);
        pthread_mutex_unlock(&g->h->tok_mu);
        size_t at = g->req.n_stop ? find_stop(g, 0) : (size_t)-1;
        if (at != (size_t)-1) {
            g->text.n = at;
            g->text.p[at] = '\0';
            g->finish = "stop";
        }
    }
}

static void usage_json(sq_buf *b, const gen *g) {
    sq_buf_addf(b, "\"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, \"total_tokens\": %d}",
                g->n_prompt, g->have, g->n_prompt + g->have);
}

static void ids_json(sq_buf *b, const gen *g) {
    SQ_BUF_LIT(b, ", \"token_ids\": [");
    for (int32_t i = 0; i < g->have; i++) sq_buf_addf(b, "%s%d", i ? ", " : "", g->ids[i]);
    SQ_BUF_LIT(b, "]");
}

/* One "data: {...}\n\n" event with text [from, to) (or a role delta / the final chunk). */
static void chunk(gen *g, const char *text, size_t n, const char *finish, bool role) {
    sq_buf *b = &g->out;
    sq_buf_addf(b, "data: {\"id\": \"%s\", \"object\": \"%s\", \"created\": %ld, \"model\": ", g->id,
                g->req.chat ? "chat.completion.chunk" : "text_completion", g->created);
    sq_buf_json_str(b, g->h->model_name, strlen(g->h->model_name));
    SQ_BUF_LIT(b, ", \"choices\": [{\"index\": 0, ");
    if (g->req.chat) {
        if (role) sq_buf_addf(b, "\"delta\": {\"role\": \"assistant\", \"content\": \"\"}");
        else if (finish) sq_buf_addf(b, "\"delta\": {}");
        else {
            SQ_BUF_LIT(b, "\"delta\": {\"content\": ");
            sq_buf_json_str(b, text, n);
            SQ_BUF_LIT(b, "}");
        }
    } else {
        SQ_BUF_LIT(b, "\"text\": ");
        sq_buf_json_str(b, text, n);
        SQ_BUF_LIT(b, ", \"logprobs\": null");
    }
    if (finish) sq_buf_addf(b, ", \"finish_reason\": \"%s\"", finish);
    else SQ_BUF_LIT(b, ", \"finish_reason\": null");
    if (finish && g->req.return_token_ids) ids_json(b, g);
    SQ_BUF_LIT(b, "}]");
    if (g->req.include_usage) SQ_BUF_LIT(b, ", \"usage\": null");
    SQ_BUF_LIT(b, "}\n\n");
}

/* The next bytes of a stream, blocking until some exist (the connection's own thread). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    gen *g = cls;
    for (;;) {
        if (g->out_off < g->out.n) {
            size_t n = g->out.n - g->out_off < max ? g->out.n - g->out_off : max;
            memcpy(buf, g->out.p + g->out_off, n);
            g->out_off += n;
            if (g->out_off == g->out.n) g->out.n = g->out_off = 0;
            g->t_last = sq_now_s();
            return (ssize_t)n;
        }
        if (g->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (g->phase == 2) return MHD_CONTENT_READER_END_OF_STREAM;
        if (g->phase == 0) {
            if (g->req.chat) chunk(g, NULL, 0, NULL, true);
            g->phase = 1;
            continue;
        }
        advance(g, 0.5);
        /* hold back what could be the start of a stop string, and never split a character */
        size_t upto = g->text.n;
        if (!g->done) upto = g->text.n > g->max_stop ? g->text.n - g->max_stop : 0;
        while (upto > g->sent && upto < g->text.n && ((unsigned char)g->text.p[upto] & 0xC0) == 0x80) upto--;
        if (upto > g->sent) {
            chunk(g, g->text.p + g->sent, upto - g->sent, NULL, false);
            g->sent = upto;
        }
        if (g->done) {
            if (g->failed) {
                SQ_BUF_LIT(&g->out, "data: {\"error\": {\"message\": ");
                sq_buf_json_str(&g->out, g->error, strlen(g->error));
                SQ_BUF_LIT(&g->out, ", \"type\": \"server_error\", \"param\": null, \"code\": null}}\n\n");
            } else {
                chunk(g, NULL, 0, g->finish, false);
                if (g->req.include_usage) {
                    sq_buf_addf(&g->out, "data: {\"id\": \"%s\", \"object\": \"%s\", \"created\": %ld, \"model\": ", g->id,
                                g->req.chat ? "chat.completion.chunk" : "text_completion", g->created);
                    sq_buf_json_str(&g->out, g->h->model_name, strlen(g->h->model_name));
                    SQ_BUF_LIT(&g->out, ", \"choices\": [], ");
                    usage_json(&g->out, g);
                    SQ_BUF_LIT(&g->out, "}\n\n");
                }
            }
            SQ_BUF_LIT(&g->out, "data: [DONE]\n\n");
            g->phase = 2;
            continue;
        }
        /* waiting (queued, or a long prefill): a comment line every 2 s lets a client that
         * left be noticed (the write fails and the request is released) */
        if (g->out.n == 0 && sq_now_s() - g->t_last > 2.0) SQ_BUF_LIT(&g->out, ": waiting\n\n");
    }
}

static void stream_free(void *cls) { gen_free(cls); }

static enum MHD_Result reply_whole(sq_serve_http *h, struct MHD_Connection *c, gen *g) {
    while (!g->done) advance(g, 1.0);
    if (g->failed) return reply_error(h, c, 503, "server_error", NULL, NULL, g->error);
    sq_buf b = {0};
    sq_buf_addf(&b, "{\"id\": \"%s\", \"object\": \"%s\", \"created\": %ld, \"model\": ", g->id,
                g->req.chat ? "chat.completion" : "text_completion", g->created);
    sq_buf_json_str(&b, h->model_name, strlen(h->model_name));
    SQ_BUF_LIT(&b, ", \"choices\": [{\"index\": 0, ");
    if (g->req.chat) {
        SQ_BUF_LIT(&b, "\"message\": {\"role\": \"assistant\", \"content\": ");
        sq_buf_json_str(&b, g->text.p ? g->text.p : "", g->text.n);
        SQ_BUF_LIT(&b, "}");
    } else {
        SQ_BUF_LIT(&b, "\"text\": ");
        sq_buf_json_str(&b, g->text.p ? g->text.p : "", g->text.n);
        SQ_BUF_LIT(&b, ", \"logprobs\": null");
    }
    sq_buf_addf(&b, ", \"finish_reason\": \"%s\"", g->finish);
    if (g->req.return_token_ids) ids_json(&b, g);
    SQ_BUF_LIT(&b, "}], ");
    usage_json(&b, g);
    SQ_BUF_LIT(&b, "}\n");
    enum MHD_Result r = b.oom ? MHD_NO : reply(h, c, 200, "application/json", b.p, b.n, NULL);
    free(b.p);
    return r;
}

static enum MHD_Result generate(sq_serve_http *h, struct MHD_Connection *c, conn *k, bool chat) {
    pthread_mutex_lock(&h->mu);
    sq_serve_engine *e = h->e;
    uint64_t serial = ++h->next_id;
    pthread_mutex_unlock(&h->mu);
    if (!e) return reply_error(h, c, 503, "server_error", NULL, NULL, "the model is still loading");
    char msg[512] = "", param[64] = "";
    gen *g = calloc(1, sizeof *g);
    if (!g) return MHD_NO;
    /* counted until MHD says the response went out (on_completed), not until it is queued */
    pthread_mutex_lock(&h->mu);
    h->n_gens++;
    k->gen_counted = true;
    pthread_mutex_unlock(&h->mu);
    g->h = h;
    g->e = e;
    if (!sq_api_parse(k->body.p ? k->body.p : "", k->body.n, chat, &g->req, msg, sizeof msg, param, sizeof param)) {
        gen_free(g);
        return reply_error(h, c, 400, "invalid_request_error", param, NULL, msg);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    sq_status st = SQ_OK;
    sq_error err;
    sq_error_init(&err, -1);
    int32_t extra_eos = -1;
    if (chat || g->req.prompt) {
        char *text = NULL;
        size_t len = 0;
        if (!h->p.tok) {
            gen_free(g);
            return reply_error(h, c, 400, "invalid_request_error", chat ? "messages" : "prompt", NULL,
                               "this model has no tokenizer: give the prompt as token ids");
        }
        if (chat) {
            if (!sq_api_render_chat(&g->req, h->p.chat_family, h->default_system, &text, &len, msg, sizeof msg)) {
                gen_free(g);
                return reply_error(h, c, 400, "invalid_request_error", "messages", NULL, msg);
            }
            extra_eos = h->p.chat_stop_id;
        }
        pthread_mutex_lock(&h->tok_mu);
        st = sq_tokenizer_encode(h->p.tok, chat ? text : g->req.prompt, chat ? len : strlen(g->req.prompt), !chat,
                                 &ids, &n_ids, &err);
        pthread_mutex_unlock(&h->tok_mu);
        free(text);
        if (st != SQ_OK) {
            gen_free(g);
            return reply_error(h, c, 400, "invalid_request_error", "prompt", NULL, err.msg);
        }
    } else {
        ids = g->req.prompt_ids;
        n_ids = (size_t)g->req.n_prompt_ids;
        g->req.prompt_ids = NULL;
        g->req.n_prompt_ids = 0;
    }
    int64_t ctx = h->p.max_seq;
    g->n_prompt = (int32_t)(n_ids < (size_t)INT32_MAX ? n_ids : INT32_MAX);
    int32_t want = g->req.max_tokens > 0 ? g->req.max_tokens : chat ? (int32_t)(ctx - g->n_prompt) : 16;
    if (g->req.max_tokens <= 0 && !chat && ctx - g->n_prompt < want) want = (int32_t)(ctx - g->n_prompt);
    if (n_ids == 0 || (int64_t)n_ids >= ctx || (int64_t)n_ids + want > ctx || want < 1) {
        if (n_ids == 0) snprintf(msg, sizeof msg, "the prompt is empty");
        else
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %lld tokens. However, you requested %lld tokens "
                     "(%lld in the prompt, %d for the completion). Please reduce the prompt or max_tokens.",
                     (long long)ctx, (long long)n_ids + (want > 0 ? want : 0), (long long)n_ids, want > 0 ? want : 0);
        free(ids);
        gen_free(g);
        return reply_error(h, c, 400, "invalid_request_error", chat ? "messages" : "prompt",
                           n_ids ? "context_length_exceeded" : NULL, msg);
    }
    g->max_new = want;
    g->ids = malloc((size_t)want * sizeof *g->ids);
    for (int i = 0; i < g->req.n_stop; i++)
        if (strlen(g->req.stop[i]) > g->max_stop) g->max_stop = strlen(g->req.stop[i]);
    if (g->max_stop) g->max_stop--;   /* bytes that could begin a stop string */
    sq_serve_request r = {.prompt = ids, .n_prompt = g->n_prompt, .max_new = want, .sample = g->req.sample,
                          .extra_eos = extra_eos, .ignore_eos = g->req.ignore_eos};
    if (!g->req.seed_given) r.sample.seed = (uint64_t)time(NULL) * 1000003u + serial;
    if (h->p.tok) {
        pthread_mutex_lock(&h->tok_mu);
        st = sq_detok_stream_create(h->p.tok, true, &g->ds, &err);
        pthread_mutex_unlock(&h->tok_mu);
    }
    if (!g->ids || st != SQ_OK) {
        free(ids);
        gen_free(g);
        return reply_error(h, c, 500, "server_error", NULL, NULL, "out of memory");
    }
    sq_serve_submit_result sr = sq_serve_submit(e, &r, &g->s, msg, sizeof msg);
    free(ids);
    if (sr != SQ_SERVE_QUEUED) {
        gen_free(g);
        if (sr == SQ_SERVE_QUEUE_FULL) return reply_error(h, c, 429, "rate_limit_error", NULL, NULL, msg);
        if (sr == SQ_SERVE_BAD_REQUEST) return reply_error(h, c, 400, "invalid_request_error", "prompt", NULL, msg);
        return reply_error(h, c, 503, "server_error", NULL, NULL, msg);
    }
    snprintf(g->id, sizeof g->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)serial);
    g->created = (long)time(NULL);
    g->t_last = sq_now_s();
    if (!g->req.stream) {
        enum MHD_Result res = reply_whole(h, c, g);
        gen_free(g);
        return res;
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, g, stream_free);
    if (!resp) {
        gen_free(g);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result res = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    count(h, 200);
    return res;
}

/* ---- the other routes ------------------------------------------------------------------------ */

static enum MHD_Result metrics(sq_serve_http *h, struct MHD_Connection *c) {
    pthread_mutex_lock(&h->mu);
    sq_serve_engine *e = h->e;
    uint64_t codes[6];
    memcpy(codes, h->codes, sizeof codes);
    pthread_mutex_unlock(&h->mu);
    sq_serve_stats s;
    memset(&s, 0, sizeof s);
    if (e) sq_serve_engine_stats(e, &s);
    sq_buf b = {0};
#define METRIC(name, type, help, fmt, ...)                                                        \
    sq_buf_addf(&b, "# HELP shardq_" name " " help "\n# TYPE shardq_" name " " type "\nshardq_" name fmt "\n", \
                __VA_ARGS__)
    METRIC("up", "gauge", "1 when every rank is loaded and the pipeline is healthy.", " %d", e && s.healthy ? 1 : 0);
    METRIC("requests_total", "counter", "Generation requests accepted into the queue.", " %llu",
           (unsigned long long)s.requests_total);
    METRIC("requests_rejected_total", "counter", "Generation requests refused (queue full, stopping).", " %llu",
           (unsigned long long)s.requests_rejected);
    METRIC("prompt_tokens_total", "counter", "Prompt tokens prefilled.", " %llu", (unsigned long long)s.prompt_tokens);
    METRIC("generated_tokens_total", "counter", "Tokens generated.", " %llu", (unsigned long long)s.generated_tokens);
    METRIC("steps_total", "counter", "Pipeline steps (micro-batches) completed.", " %llu", (unsigned long long)s.steps);
    METRIC("queue_depth", "gauge", "Requests waiting for a KV slot.", " %d", s.waiting);
    METRIC("running_sequences", "gauge", "Sequences holding a KV slot.", " %d", s.running);
    METRIC("max_sequences", "gauge", "KV slots (the plan's batch).", " %d", s.max_seqs);
    METRIC("active_seconds_total", "counter", "Wall seconds with at least one sequence running.", " %.6f", s.active_s);
    sq_buf_addf(&b, "# HELP shardq_stage_busy_seconds_total Seconds each stage spent computing.\n"
                    "# TYPE shardq_stage_busy_seconds_total counter\n");
    for (int r = 0; r < s.n_stages; r++)
        sq_buf_addf(&b, "shardq_stage_busy_seconds_total{rank=\"%d\"} %.6f\n", r, s.busy_s[r]);
    sq_buf_addf(&b, "# HELP shardq_stage_busy_fraction Busy seconds over active seconds, per stage.\n"
                    "# TYPE shardq_stage_busy_fraction gauge\n");
    double sum = 0;
    for (int r = 0; r < s.n_stages; r++) {
        double f = s.active_s > 0 ? s.busy_s[r] / s.active_s : 0.0;
        sum += f;
        sq_buf_addf(&b, "shardq_stage_busy_fraction{rank=\"%d\"} %.6f\n", r, f);
    }
    METRIC("pipeline_bubble_fraction", "gauge", "1 - mean stage busy fraction while active.", " %.6f",
           s.n_stages && s.active_s > 0 ? 1.0 - sum / s.n_stages : 0.0);
    static const char *const names[6] = {"2xx", "400", "4xx", "413", "429", "5xx"};
    sq_buf_addf(&b, "# HELP shardq_http_responses_total HTTP responses by status class.\n"
                    "# TYPE shardq_http_responses_total counter\n");
    for (int i = 0; i < 6; i++)
        sq_buf_addf(&b, "shardq_http_responses_total{code=\"%s\"} %llu\n", names[i], (unsigned long long)codes[i]);
#undef METRIC
    enum MHD_Result r = b.oom ? MHD_NO : reply(h, c, 200, "text/plain; version=0.0.4", b.p, b.n, NULL);
    free(b.p);
    return r;
}

/* Constant time in the key's length: every byte of both is looked at. */
static bool key_ok(const char *want, const char *got) {
    if (!got) return false;
    size_t a = strlen(want), b = strlen(got), n = a > b ? a : b;
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < a ? (unsigned char)want[i] : 0, y = i < b ? (unsigned char)got[i] : 0;
        diff |= (unsigned char)(x ^ y);
    }
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_n, void **con_cls) {
    sq_serve_http *h = cls;
    conn *k = *con_cls;
    bool post = !strcmp(method, "POST");
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *con_cls = k;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (post && cl && strtoull(cl, NULL, 10) > h->p.max_body_bytes) k->too_big = true;
        return MHD_YES;
    }
    if (*upload_n) {
        if (!k->too_big) {
            if (k->body.n + *upload_n > h->p.max_body_bytes) k->too_big = true;
            else sq_buf_add(&k->body, upload, *upload_n);
        }
        *upload_n = 0;
        return MHD_YES;
    }
    bool gen_route = !strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions");
    bool get_route = !strcmp(url, "/health") || !strcmp(url, "/v1/models") || !strcmp(url, "/metrics");
    if (!gen_route && !get_route)
        return reply_error(h, c, 404, "invalid_request_error", NULL, NULL, "no such route");
    if (h->api_key && strcmp(url, "/health")) {
        const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!a || strncmp(a, "Bearer ", 7) || !key_ok(h->api_key, a + 7))
            return reply_error(h, c, 401, "invalid_request_error", NULL, "invalid_api_key",
                               "a valid API key is required (Authorization: Bearer KEY)");
    }
    if (gen_route != post)
        return reply_error(h, c, 405, "invalid_request_error", NULL, NULL, post ? "use GET" : "use POST");
    if (k->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the body is larger than %llu bytes", (unsigned long long)h->p.max_body_bytes);
        return reply_error(h, c, 413, "invalid_request_error", NULL, NULL, msg);
    }
    if (post) return generate(h, c, k, !strcmp(url, "/v1/chat/completions"));
    if (!strcmp(url, "/metrics")) return metrics(h, c);
    pthread_mutex_lock(&h->mu);
    sq_serve_engine *e = h->e;
    pthread_mutex_unlock(&h->mu);
    if (!strcmp(url, "/health")) {
        sq_serve_stats s;
        if (e) sq_serve_engine_stats(e, &s);
        const char *st = !e ? "loading" : !s.healthy ? "error" : s.stopping ? "stopping" : "ok";
        char body[64];
        int n = snprintf(body, sizeof body, "{\"status\": \"%s\"}\n", st);
        return reply(h, c, !strcmp(st, "ok") ? 200 : 503, "application/json", body, (size_t)n, NULL);
    }
    sq_buf b = {0};
    SQ_BUF_LIT(&b, "{\"object\": \"list\", \"data\": [{\"id\": ");
    sq_buf_json_str(&b, h->model_name, strlen(h->model_name));
    sq_buf_addf(&b, ", \"object\": \"model\", \"created\": %ld, \"owned_by\": \"shardq\", \"max_model_len\": %lld}]}\n",
                (long)time(NULL), (long long)h->p.max_seq);
    enum MHD_Result r = b.oom ? MHD_NO : reply(h, c, 200, "application/json", b.p, b.n, NULL);
    free(b.p);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    sq_serve_http *h = cls;
    conn *k = *con_cls;
    if (k && k->gen_counted) {
        pthread_mutex_lock(&h->mu);
        if (--h->n_gens == 0) pthread_cond_broadcast(&h->gens_cv);
        pthread_mutex_unlock(&h->mu);
    }
    if (k) {
        free(k->body.p);
        free(k);
    }
    *con_cls = NULL;
}

/* ---- create / destroy ------------------------------------------------------------------------ */

void sq_serve_http_destroy(sq_serve_http *h) {
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->tok_mu);
    pthread_cond_destroy(&h->gens_cv);
    free(h->host);
    free(h->api_key);
    free(h->model_name);
    free(h->default_system);
    free(h);
}

sq_status sq_serve_http_create(const sq_serve_http_params *p, sq_serve_http **out, sq_error *err) {
    if (out) *out = NULL;
    if (!p || !out) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "serve http: NULL argument");
    if (p->port < 0 || p->port > 65535)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--port %d (must be 0..65535)", p->port);
    sq_serve_http *h = calloc(1, sizeof *h);
    if (!h) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "serve http: out of memory");
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->tok_mu, NULL);
    pthread_cond_init(&h->gens_cv, NULL);
    h->p = *p;
    if (!h->p.max_body_bytes) h->p.max_body_bytes = 1u << 20;
    if (!h->p.max_connections) h->p.max_connections = 256;
    h->host = strdup(p->host ? p->host : "127.0.0.1");
    h->api_key = p->api_key ? strdup(p->api_key) : NULL;
    h->model_name = strdup(p->model_name ? p->model_name : "shardq");
    h->default_system = p->default_system ? strdup(p->default_system) : NULL;
    if (!h->host || !h->model_name || (p->api_key && !h->api_key) || (p->default_system && !h->default_system)) {
        sq_serve_http_destroy(h);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "serve http: out of memory");
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)p->port);
    if (inet_pton(AF_INET, h->host, &sa.sin_addr) != 1) {
        sq_status rc = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--host '%s' is not an IPv4 address", h->host);
        sq_serve_http_destroy(h);
        return rc;
    }
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                            0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_LIMIT,
                            h->p.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!h->d) {
        sq_status rc = sq_error_set(err, SQ_ERR_IO, NULL, NULL, "cannot listen on %s:%d (in use, or not an address of this machine)",
                                    h->host, p->port);
        sq_serve_http_destroy(h);
        return rc;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : p->port;
    *out = h;
    return SQ_OK;
}

int sq_serve_http_port(const sq_serve_http *h) { return h ? h->port : 0; }

void sq_serve_http_attach(sq_serve_http *h, sq_serve_engine *e) {
    pthread_mutex_lock(&h->mu);
    h->e = e;
    pthread_mutex_unlock(&h->mu);
}

bool sq_serve_http_quiesce(sq_serve_http *h, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(timeout_s * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&h->mu);
    while (h->n_gens > 0)
        if (pthread_cond_timedwait(&h->gens_cv, &h->mu, &ts) != 0) break;
    bool done = h->n_gens == 0;
    pthread_mutex_unlock(&h->mu);
    return done;
}
