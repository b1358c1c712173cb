/* shardq core: the status type, the one-line error that travels with every fallible call,
 * the log callback, overflow-checked arithmetic and a small fixed thread pool.
 *
 * Ownership: an sq_error is a plain struct the caller owns (usually on the stack); nothing in
 * it needs freeing.  sq_pool_create()/sq_pool_destroy() pair; destroy takes NULL.
 * Never: exit, print (except through a sq_log_fn), or keep mutable globals. */
#ifndef SHARDQ_CORE_H
#define SHARDQ_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_status {
    SQ_OK = 0,
    SQ_ERR_IO,          /* open/read/write/rename failed, or a file is shorter than it says */
    SQ_ERR_FORMAT,      /* a file, JSON or header is malformed or lies */
    SQ_ERR_INVALID,     /* a bad argument, flag, or value from outside */
    SQ_ERR_UNSUPPORTED, /* well-formed but not something shardq handles (architecture, dtype…) */
    SQ_ERR_NOMEM,
    SQ_ERR_FIT,         /* a model does not fit the devices */
    SQ_ERR_MPI,
    SQ_ERR_CUDA,
    SQ_ERR_NCCL,
    SQ_ERR_PEER,        /* another rank failed or died */
    SQ_ERR_INTERNAL     /* a bug */
} sq_status;

/* The one-line cause of a failure.  `rank` is -1 outside MPI; `file` and `tensor` are empty
 * when they do not apply.  Format with sq_error_format(). */
typedef struct sq_error {
    sq_status code;
    int rank;
    char file[512];
    char tensor[256];
    char msg[1024];
} sq_error;

/* Resets *err to SQ_OK, keeping its rank. NULL is fine. */
void sq_error_clear(sq_error *err);
/* Initialises *err: SQ_OK, the given rank (-1 for none). */
void sq_error_init(sq_error *err, int rank);
/* Records a failure and returns `code` so callers can write `return sq_error_set(...)`.
 * `file` and `tensor` may be NULL.  err may be NULL (the code is still returned). */
sq_status sq_error_set(sq_error *err, sq_status code, const char *file, const char *tensor,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
sq_status sq_error_setv(sq_error *err, sq_status code, const char *file, const char *tensor,
                        const char *fmt, va_list ap);
/* Writes "rank R: FILE: tensor 'T': MSG" (omitting absent parts) into buf (always NUL-terminated). */
void sq_error_format(const sq_error *err, char *buf, size_t buf_bytes);
/* Short name of a status, e.g. "format". */
const char *sq_status_name(sq_status s);

/* Log levels and callback: library code reports progress only through this. */
typedef enum { SQ_LOG_ERROR = 0, SQ_LOG_WARN, SQ_LOG_INFO, SQ_LOG_DEBUG } sq_log_level;
typedef void (*sq_log_fn)(void *user, sq_log_level level, const char *msg);
typedef struct sq_log {
    sq_log_fn fn;   /* NULL: silent */
    void *user;
} sq_log;
void sq_logf(const sq_log *log, sq_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked arithmetic on sizes: return false on overflow (and leave *out unspecified). */
static inline bool sq_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool sq_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline uint64_t sq_ceil_div_u64(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

/* Monotonic wall clock in seconds. */
double sq_now_s(void);

/* A buffer of n bytes for a large array written once (src/core/alloc.c): from 4 MiB on
 * 2 MiB-aligned and advised for transparent huge pages (far fewer page faults when it is first
 * filled), plain malloc below that.  Uninitialised; free() it.  NULL when out of memory. */
void *sq_alloc_huge(uint64_t n);

/* A growing string buffer (always NUL-terminated once written to).  Zero-initialize it; free(p)
 * when done.  A failed allocation sets oom and makes later appends no-ops. */
typedef struct sq_buf {
    char *p;
    size_t n, cap;
    bool oom;
} sq_buf;
void sq_buf_add(sq_buf *b, const char *s, size_t n);
void sq_buf_addf(sq_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s[0..n) as a JSON string: quoted; quotes, backslashes and control bytes escaped. */
void sq_buf_json_str(sq_buf *b, const char *s, size_t n);
/* A string literal, its length counted by the compiler. */
#define SQ_BUF_LIT(b, lit) sq_buf_add((b), (lit), sizeof(lit) - 1)

/* A fixed pool of worker threads.  sq_pool_run() runs fn(ctx, task, thread) for every task in
 * [0, n_tasks) across the pool (the calling thread works too) and returns when all are done.
 * thread is in [0, sq_pool_n_threads()).  Not re-entrant: one run at a time per pool. */
typedef struct sq_pool sq_pool;
typedef void (*sq_pool_fn)(void *ctx, int64_t task, int thread);
/* n_threads <= 0 means one per online core.  On failure *out is NULL. */
sq_status sq_pool_create(int n_threads, sq_pool **out, sq_error *err);
void sq_pool_destroy(sq_pool *pool);
int sq_pool_n_threads(const sq_pool *pool);
void sq_pool_run(sq_pool *pool, int64_t n_tasks, sq_pool_fn fn, void *ctx);

/* Asserts are for bugs only.  Under MPI the CLI installs an abort hook so no peer hangs. */
void sq_bug(const char *file, int line, const char *expr) __attribute__((noreturn));
#define SQ_ASSERT(x) ((x) ? (void)0 : sq_bug(__FILE__, __LINE__, #x))

#ifdef __cplusplus
}
#endif
#endif
