/* Owns sq_error formatting, the log helper, the clock and the bug handler.
 * Must never keep state between calls: everything lives in the caller's sq_error. */
#include "shardq/core.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void copy_str(char *dst, size_t dst_bytes, const char *src) {
    if (!src) src = "";
    size_t n = strlen(src);
    if (n >= dst_bytes) n = dst_bytes - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void sq_error_init(sq_error *err, int rank) {
    if (!err) return;
    memset(err, 0, sizeof *err);
    err->rank = rank;
}

void sq_error_clear(sq_error *err) {
    if (!err) return;
    int rank = err->rank;
    sq_error_init(err, rank);
}

sq_status sq_error_setv(sq_error *err, sq_status code, const char *file, const char *tensor,
                        const char *fmt, va_list ap) {
    if (!err) return code;
    err->code = code;
    copy_str(err->file, sizeof err->file, file);
    copy_str(err->tensor, sizeof err->tensor, tensor);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    /* one line, always: a cause quoted from a file must not break it */
    for (char *p = err->msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return code;
}

sq_status sq_error_set(sq_error *err, sq_status code, const char *file, const char *tensor,
                       const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sq_status s = sq_error_setv(err, code, file, tensor, fmt, ap);
    va_end(ap);
    return s;
}

void sq_error_format(const sq_error *err, char *buf, size_t buf_bytes) {
    if (!buf || buf_bytes == 0) return;
    buf[0] = '\0';
    if (!err) return;
    size_t used = 0;
#define APPEND(...)                                                                  \
    do {                                                                             \
        if (used < buf_bytes) {                                                      \
            int n_ = snprintf(buf + used, buf_bytes - used, __VA_ARGS__);            \
            if (n_ > 0) used += (size_t)n_;                                          \
        }                                                                            \
    } while (0)
    if (err->rank >= 0) APPEND("rank %d: ", err->rank);
    if (err->file[0]) APPEND("%s: ", err->file);
    if (err->tensor[0]) APPEND("tensor '%s': ", err->tensor);
    APPEND("%s", err->msg[0] ? err->msg : sq_status_name(err->code));
#undef APPEND
}

const char *sq_status_name(sq_status s) {
    switch (s) {
    case SQ_OK: return "ok";
    case SQ_ERR_IO: return "i/o error";
    case SQ_ERR_FORMAT: return "format error";
    case SQ_ERR_INVALID: return "invalid argument";
    case SQ_ERR_UNSUPPORTED: return "unsupported";
    case SQ_ERR_NOMEM: return "out of memory";
    case SQ_ERR_FIT: return "does not fit";
    case SQ_ERR_MPI: return "MPI error";
    case SQ_ERR_CUDA: return "CUDA error";
    case SQ_ERR_NCCL: return "NCCL error";
    case SQ_ERR_PEER: return "peer rank failed";
    case SQ_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

void sq_logf(const sq_log *log, sq_log_level level, const char *fmt, ...) {
    if (!log || !log->fn) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log->fn(log->user, level, buf);
}

double sq_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void sq_bug(const char *file, int line, const char *expr) {
    fprintf(stderr, "shardq: internal error (bug): %s:%d: assertion '%s' failed\n", file, line,
            expr);
    fflush(stderr);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, 70);
    abort();
}
