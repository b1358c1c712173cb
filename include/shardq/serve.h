/* serve: `shardq serve` — one loaded model across the ranks, many requests over HTTP.
 *
 * Two parts, both here:
 *  - the engine (src/serve/engine.c): continuous batching through the pipeline.  Every rank
 *    runs sq_serve_engine_run() on its loaded stage (sq_run's serve hook, runtime.h).  Rank 0
 *    holds the scheduler: requests wait in a bounded queue, are admitted at step boundaries
 *    while a KV slot is free (max_seqs slots of max_seq positions: the plan's budget), and
 *    retire when they end (EOS, length, cancel).  A step is one micro-batch: each admitted
 *    sequence not already in flight contributes its next prompt chunk (at most prefill_chunk
 *    tokens: prefill interleaves with decode) or its last generated id; up to n_ranks
 *    micro-batches are in flight at once, each with its own sequences.  The last stage samples
 *    each sequence with that request's own parameters and key (seed, 0, token index): a
 *    request's tokens are those `shardq run` gives for its prompt alone, whatever runs beside
 *    it.  Other ranks loop: header + activations in, their layers, out (the last: ids back to
 *    rank 0) until rank 0 sends the stop marker.
 *  - the HTTP front end (src/serve/http.c, api.c): libmicrohttpd on rank 0 (a thread per
 *    connection), OpenAI's /v1/completions, /v1/chat/completions (stream or not), /v1/models,
 *    /health, /metrics; JSON with cJSON.  It may start before the engine exists (/health
 *    answers 503 "loading" until sq_serve_http_attach).
 *
 * Threads: sq_serve_engine_run is called from the thread that owns MPI (MPI_THREAD_FUNNELED):
 * the engine's other functions (submit / wait / release / stats) may be called from any
 * thread and never touch MPI.
 *
 * Failure: a peer that dies or goes silent during a step makes run return SQ_ERR_PEER; every
 * request still open then ends with an error (never a hang) and the caller must end the job
 * (MPI_Abort).  Test hook (tests of failure only): SHARDQ_TEST_DIE_RANK=R makes rank R > 0 die
 * before its SHARDQ_TEST_DIE_STEP-th step (default 1), SHARDQ_TEST_DIE_MODE=kill (default) or
 * hang, as pipeline.h's hook does; SHARDQ_TEST_STEP_DELAY_MS=D makes rank 0 wait D ms after
 * each step it starts (slow generation on a tiny model, for the tests of queue and cancel).
 *
 * Ownership: create / destroy pairs (destroy takes NULL).  A sequence from sq_serve_submit
 * belongs to the caller until sq_serve_seq_release (which cancels it if it still runs); the
 * engine keeps its own reference until it retires it.  Never: print, exit. */
#ifndef SHARDQ_SERVE_H
#define SHARDQ_SERVE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "shardq/backend.h"
#include "shardq/core.h"
#include "shardq/model.h"
#include "shardq/tokenizer.h"
#include "shardq/transport.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SQ_SERVE_MAX_STAGES 64
#define SQ_SERVE_MAX_EOS 16

/* ---- the engine ------------------------------------------------------------------------------ */

typedef struct sq_serve_engine sq_serve_engine;
typedef struct sq_serve_seq sq_serve_seq;

typedef struct sq_serve_engine_params {
    sq_transport *t;              /* borrowed; the ranks of the pipeline */
    sq_stage *stage;              /* borrowed; this rank's stage, loaded */
    int32_t max_seqs;             /* KV slots (<= the stage's max_batch) */
    int64_t max_seq;              /* positions per slot (<= the stage's max_seq) */
    int64_t max_step_tokens;      /* rows of one step (<= the stage's max_tokens) */
    int32_t prefill_chunk;        /* prompt tokens of one sequence per step; <= 0: no limit */
    int32_t max_queue;            /* waiting requests before submit says "full" */
    int32_t eos[SQ_SERVE_MAX_EOS];   /* ids that end every sequence (the config's) */
    int32_t n_eos;
    double drain_timeout_s;       /* after stop: running requests may finish for this long */
    const volatile sig_atomic_t *stop_flag;   /* rank 0: non-zero asks for a drain and stop */
    sq_log log;
} sq_serve_engine_params;

/* Every rank.  On failure *out is NULL. */
sq_status sq_serve_engine_create(const sq_serve_engine_params *p, sq_serve_engine **out,
                                 sq_error *err);
/* Every rank (collective over the transport): serves until rank 0 stops (its stop_flag, then
 * the drain), then the stop marker goes round and the transport is closed.  SQ_ERR_PEER on a
 * dead / silent / failed peer (then every open request has ended with an error). */
sq_status sq_serve_engine_run(sq_serve_engine *e, sq_error *err);
void sq_serve_engine_destroy(sq_serve_engine *e);

typedef enum sq_serve_finish {
    SQ_SERVE_RUNNING = 0, SQ_SERVE_EOS, SQ_SERVE_LENGTH, SQ_SERVE_CANCELLED, SQ_SERVE_ERROR
} sq_serve_finish;

typedef struct sq_serve_request {
    const int32_t *prompt;        /* copied */
    int32_t n_prompt;             /* >= 1; n_prompt + max_new <= max_seq */
    int32_t max_new;              /* >= 1 */
    sq_sample_params sample;
    int32_t extra_eos;            /* another id that ends this sequence (chat stop); -1: none */
    bool ignore_eos;              /* only max_new ends it */
} sq_serve_request;

typedef enum sq_serve_submit_result {
    SQ_SERVE_QUEUED = 0, SQ_SERVE_QUEUE_FULL, SQ_SERVE_NOT_ACCEPTING, SQ_SERVE_BAD_REQUEST
} sq_serve_submit_result;

/* Rank 0, any thread.  QUEUED: *out is the sequence (release it); otherwise *out is NULL and
 * why says so (QUEUE_FULL: retry later; NOT_ACCEPTING: stopping or failed). */
sq_serve_submit_result sq_serve_submit(sq_serve_engine *e, const sq_serve_request *r,
                                       sq_serve_seq **out, char *why, size_t why_n);

typedef struct sq_serve_progress {
    int32_t n_gen;                /* ids generated so far */
    sq_serve_finish finish;       /* RUNNING while it goes on */
    double t_first_s;             /* sq_now_s() of the first id (0 before) */
    char error[256];              /* with SQ_SERVE_ERROR / CANCELLED: why */
} sq_serve_progress;

/* Waits up to timeout_s until the sequence has more than `have` ids or has ended; copies ids
 * [have, n_gen) to ids (at most cap of them) and returns how many it copied. */
int32_t sq_serve_seq_wait(sq_serve_engine *e, sq_serve_seq *s, int32_t have, double timeout_s,
                          int32_t *ids, int32_t cap, sq_serve_progress *out);
/* Asks for the sequence to end early (a stop string was seen); it ends CANCELLED. */
void sq_serve_seq_cancel(sq_serve_engine *e, sq_serve_seq *s);
/* The caller is done with s: a running sequence is cancelled and its KV slot freed at the next
 * step boundary.  NULL is fine. */
void sq_serve_seq_release(sq_serve_engine *e, sq_serve_seq *s);

typedef struct sq_serve_stats {
    uint64_t requests_total, requests_rejected, prompt_tokens, generated_tokens, steps;
    int32_t waiting, running, max_seqs, n_stages;
    bool healthy, stopping;
    double active_s;                          /* wall time with at least one sequence running */
    double busy_s[SQ_SERVE_MAX_STAGES];       /* per stage, inside compute */
} sq_serve_stats;
void sq_serve_engine_stats(sq_serve_engine *e, sq_serve_stats *out);

/* ---- the HTTP front end (rank 0) ------------------------------------------------------------- */

typedef struct sq_serve_http sq_serve_http;

typedef struct sq_serve_http_params {
    const char *host;             /* address to bind; NULL: 127.0.0.1 */
    int port;                     /* 0: any free port (sq_serve_http_port says which) */
    const char *api_key;          /* NULL: no key; else "Authorization: Bearer KEY" required */
    const char *model_name;       /* /v1/models and the "model" of responses */
    const sq_tokenizer *tok;      /* borrowed; NULL: prompts as token ids only, no chat */
    int chat_family;              /* sq_chat_family; < 0: no chat template */
    const char *default_system;   /* the template's own system message; may be NULL */
    int32_t chat_stop_id;         /* end-of-turn id of the template; -1: none */
    int64_t max_seq;              /* context: prompt + max_tokens must fit */
    uint64_t max_body_bytes;      /* larger bodies: 413; 0: 1 MiB */
    unsigned max_connections;     /* 0: 256 */
    sq_log log;
} sq_serve_http_params;

/* Starts listening (a thread per connection).  On failure *out is NULL. */
sq_status sq_serve_http_create(const sq_serve_http_params *p, sq_serve_http **out,
                               sq_error *err);
int sq_serve_http_port(const sq_serve_http *h);
/* From now on requests go to e (and /health is 200 while e is healthy); NULL detaches. */
void sq_serve_http_attach(sq_serve_http *h, sq_serve_engine *e);
/* Waits up to timeout_s until every generation request taken so far has been answered to its
 * end (after the engine stopped: their last bytes are out).  True when none is left. */
bool sq_serve_http_quiesce(sq_serve_http *h, double timeout_s);
/* Stops listening and waits for the connection threads.  NULL is fine. */
void sq_serve_http_destroy(sq_serve_http *h);

#ifdef __cplusplus
}
#endif
#endif
