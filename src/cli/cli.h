/* Private to the CLI: the context every subcommand gets and small flag-parsing helpers.
 * The CLI is thin: it parses flags, calls the library, prints.  Only rank 0 prints tables and
 * progress; errors are printed by the rank that has them, as one line on stderr. */
#ifndef SHARDQ_CLI_H
#define SHARDQ_CLI_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "shardq/trace.h"
#include "shardq/core.h"
#include "shardq/runtime.h"

typedef struct sq_cli_watchdog sq_cli_watchdog;

typedef struct sq_cli_ctx {
    int rank, n_ranks;      /* MPI_COMM_WORLD; 0 and 1 outside mpirun */
    MPI_Comm comm;          /* a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
    sq_log log;             /* to stderr on rank 0, prefixed "shardq: " */
    const char *prog;       /* "shardq" */
    sq_cli_watchdog *watchdog;   /* started by sq_cli_watch; main stops it after MPI_Finalize */
} sq_cli_ctx;

/* A subcommand: argv[0] is the subcommand's name.  Returns the process exit code
 * (0 ok, 1 failure, 2 usage error). */
typedef int (*sq_cli_cmd_fn)(int argc, char **argv, sq_cli_ctx *ctx);

/* Prints err as one line "shardq: rank R: file: tensor 'T': cause" on stderr; returns 1. */
int sq_cli_report(const sq_cli_ctx *ctx, const sq_error *err);

/* --trace FILE (trace_flag.c): this rank's tracer, NULL without a path (or when it cannot be
 * made: a warning, the command goes on).  close is collective over ctx->comm: writes the one
 * file, frees the tracer, and returns rc, or 1 when the file could not be written. */
sq_trace *sq_cli_trace_open(const sq_cli_ctx *ctx, const char *path);
int sq_cli_trace_close(const sq_cli_ctx *ctx, sq_trace *t, const char *path, int rc);
/* Prints "shardq <cmd>: <msg>" and a pointer to --help on stderr (rank 0 only); returns 2. */
int sq_cli_usage_error(const sq_cli_ctx *ctx, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Strict number parsing for flag values: the whole string must parse and fit. */
bool sq_cli_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
bool sq_cli_parse_f64(const char *s, double min, double max, double *out);

/* True when argv[i] equals `name`; then *val gets argv[i+1] and i advances.  A flag given as
 * the last argument with no value sets *missing. */
bool sq_cli_flag_value(int argc, char **argv, int *i, const char *name, const char **val,
                       bool *missing);

/* The 4-bit scheme flags plan, quantize, run and bench share (src/cli/run_flags.c): --quant
 * (nf4, fp4, and none when allow_none), --double-quant, --blocksize (a power of two in
 * 32..4096), written into *s.  Returns true when argv[*i] is one of them (then *i is past its
 * value and *given is set); *usage_rc is 0, or 2 after a usage error was printed; *missing is
 * set when the value is absent (the caller reports it). */
bool sq_cli_scheme_flag(const sq_cli_ctx *ctx, const char *cmd, int argc, char **argv, int *i,
                        sq_quant_scheme *s, bool allow_none, bool *given, bool *missing,
                        int *usage_rc);
/* After parsing: 0, or 2 after printing why the scheme is contradictory (--double-quant
 * with --quant none). */
int sq_cli_scheme_check(const sq_cli_ctx *ctx, const char *cmd, const sq_quant_scheme *s);

/* The stall watchdog (watchdog.c): a thread that ends the process with one line on stderr
 * ("rank R: no progress for S s while PHASE") when a watched phase lasts longer than limit_s.
 * start returns NULL when limit_s <= 0 or no thread could be made (the run goes on unwatched). */
sq_cli_watchdog *sq_cli_watchdog_start(int rank, double limit_s);
void sq_cli_watchdog_phase(void *user, const char *phase, bool watched);   /* sq_run_phase_fn */
void sq_cli_watchdog_stop(sq_cli_watchdog *w);
/* Before sq_run: starts ctx's watchdog with o->stall_timeout_s (once per process) and points
 * o->on_phase at it. */
void sq_cli_watch(sq_cli_ctx *ctx, sq_run_options *o);

/* The flags run and bench share: the scheme flags above (into o->scheme) and --backend,
 * --transport, --device, --threads, --timeout, --stall-timeout; the same contract. */
bool sq_cli_run_flag(const sq_cli_ctx *ctx, const char *cmd, int argc, char **argv, int *i,
                     sq_run_options *o, bool *quant_given, bool *missing, int *usage_rc);

/* Collective: every rank passes its local status; returns SQ_OK only if all ranks are OK.
 * On failure *err on every rank describes the lowest failing rank's error (broadcast),
 * so rank 0 can print it.  Never hangs as long as every rank calls it. */
sq_status sq_cli_agree(const sq_cli_ctx *ctx, sq_status local, sq_error *err);

/* A model's config: config.json of a folder (or a config.json path), or a GGUF file's
 * metadata (through the checkpoint interface). */
sq_status sq_cli_config_load(const char *path, sq_model_config *cfg, sq_error *err);

/* After a failure during generation (sq_run's must_abort): the rank that has the error (or rank
 * 0) reports it, then the job ends with MPI_Abort.  Never returns. */
void sq_cli_abort_after_peer_failure(const sq_cli_ctx *ctx, const sq_error *err);
/* A sq_load_progress_fn that draws one updating line on stderr when it is a terminal. */
void sq_cli_load_progress(void *user, const sq_load_progress *p);
/* A whole text file (at most max_bytes) into *out (malloc'd, NUL-terminated, *len bytes). */
sq_status sq_cli_read_text_file(const char *path, size_t max_bytes, char **out, size_t *len,
                                sq_error *err);

/* What ran, in words, for headers: "GGUF weights as stored", "none", or
 * "nf4+double-quant blocksize 64" (+ " (as stored)" for a bnb folder).  Returns buf. */
const char *sq_cli_scheme_text(const sq_run_result *r, char *buf, size_t n);

/* s as a JSON string (quotes, backslashes and control bytes escaped). */
void sq_cli_json_str(FILE *f, const char *s);

/* The subcommands (one file each: cmd_<name>.c). */
#define SQ_CLI_COMMANDS(X)                                                                  \
    X(inspect, "show a model folder: architecture, sizes, tensors (config + headers only)")  \
    X(make_model, "write a deterministic random model folder from a preset (tests, demo)")  \
    X(topo, "show this machine (hwloc: NUMA, cores, GPUs) or, under mpirun, the cluster")     \
    X(plan, "plan where every layer goes (optimal; config.json + a cluster, no weights)")      \
    X(quantize, "write a bitsandbytes 4-bit checkpoint, each rank quantizing its own layers") \
    X(run, "generate: the ranks run the model as a pipeline, each its own 4-bit layers")   \
    X(bench, "throughput of the pipeline: prefill / decode tok/s and bubble per micro-batch count") \
    X(tokenize, "text -> token ids with the model's tokenizer (tokenizer.json or a GGUF's)") \
    X(perplexity, "perplexity of a text through the pipeline (llama.cpp's method)")         \
    X(serve, "keep the model loaded and serve an OpenAI-compatible HTTP API (continuous batching)")
/* make_model is spelled make-model on the command line */

#define SQ_CLI_DECLARE(name, help) int sq_cli_##name(int argc, char **argv, sq_cli_ctx *ctx);
SQ_CLI_COMMANDS(SQ_CLI_DECLARE)
#undef SQ_CLI_DECLARE

#endif
