/* `--trace FILE` for run, bench and quantize: each rank records into its own tracer, and after
 * the command every rank takes part in writing one Chrome trace-event JSON (rank 0 writes it
 * under a temporary name and renames it).  Thin: the recording and the file are the trace
 * module's.  Must never fail the command's own result silently: a trace that cannot be written
 * is reported and turns the exit code to 1. */
#include "cli.h"

sq_trace *sq_cli_trace_open(const sq_cli_ctx *ctx, const char *path) {
    if (!path) return NULL;
    sq_trace *t = NULL;
    sq_error err;
    sq_error_init(&err, ctx->rank);
    if (sq_trace_create(ctx->rank, 0, &t, &err) != SQ_OK)
        sq_logf(&ctx->log, SQ_LOG_WARN, "--trace: %s (no spans from rank %d)", err.msg, ctx->rank);
    return t;
}

int sq_cli_trace_close(const sq_cli_ctx *ctx, sq_trace *t, const char *path, int rc) {
    if (!path) return rc;
    sq_error err;
    sq_error_init(&err, ctx->rank);
    sq_status st = sq_trace_write(t, ctx->comm, path, &err);
    uint64_t dropped = sq_trace_n_dropped(t);
    sq_trace_destroy(t);
    if (st != SQ_OK) return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    if (dropped)
        sq_logf(&ctx->log, SQ_LOG_WARN, "--trace: rank %d dropped %llu spans past its cap",
                ctx->rank, (unsigned long long)dropped);
    return rc;
}
