/* Helpers shared by the test binaries (header-only, static).  Fixtures are made at run time
 * under a fresh temporary folder; nothing binary is committed.
 *   sq_test_tmpdir(tag)         -> malloc'd path of a new empty folder under $TMPDIR
 *   sq_test_run(cmd, &out, &rc) -> runs `cmd` through /bin/sh, captures stdout+stderr
 *                                  (malloc'd, NUL-terminated); rc = exit status, or 128+signal
 *   sq_test_write_file(path, data, n) / sq_test_read_file(path, &n)
 *   sq_test_rd + sq_test_take / sq_test_u32 / sq_test_u8: reading committed vector files
 *   SQ_SHARDQ_EXE, SQ_MPIEXEC, SQ_SOURCE_DIR, SQ_BINARY_DIR come from CMake. */
#ifndef SHARDQ_TESTUTIL_H
#define SHARDQ_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Prefix for running the shardq executable alone (no mpirun) quickly: Open MPI's singleton
 * start-up without a runtime daemon and with shared-memory transports off. */
#define SQ_SINGLETON_ENV "env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self "

#define SQ_MPIRUN_TEST_FLAGS \
    "--allow-run-as-root --oversubscribe --bind-to none --mca btl self,tcp " \
    "--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"

static inline char *sq_test_tmpdir(const char *tag) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    size_t n = strlen(base) + strlen(tag) + 32;
    char *p = malloc(n);
    if (!p) return NULL;
    snprintf(p, n, "%s/sq-%s-XXXXXX", base, tag);
    if (!mkdtemp(p)) { free(p); return NULL; }
    return p;
}

static inline int sq_test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    int rc = fclose(f);
    return (w == n && rc == 0) ? 0 : -1;
}

static inline void *sq_test_read_file(const char *path, size_t *n_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (n_out) *n_out = n;
    return buf;
}

/* Runs cmd (2>&1 appended), returns captured output; *rc = exit status or 128 + signal. */
static inline char *sq_test_run(const char *cmd, int *rc) {
    size_t n = strlen(cmd) + 16;
    char *full = malloc(n);
    snprintf(full, n, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    free(full);
    if (!p) { *rc = -1; return NULL; }
    size_t cap = 1 << 14, len = 0;
    char *out = malloc(cap + 1);
    for (size_t r; (r = fread(out + len, 1, cap - len, p)) > 0;) {
        len += r;
        if (len == cap) { cap *= 2; out = realloc(out, cap + 1); }
    }
    out[len] = '\0';
    int st = pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : (WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1);
    return out;
}

/* Removes a fixture folder (rm -rf); returns 0 on success.  path is quoted with '…', so it
 * must not contain a single quote (sq_test_tmpdir's never do). */
static inline int sq_test_rmtree(const char *path) {
    size_t n = strlen(path) + 16;
    char *cmd = malloc(n);
    if (!cmd) return -1;
    snprintf(cmd, n, "rm -rf '%s'", path);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

/* Counts lines in s. */
static inline int sq_test_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}
/* Reading a committed little-endian vector file: take n bytes (NULL and bad set when short). */
typedef struct sq_test_rd {
    const uint8_t *p, *end;
    int bad;
} sq_test_rd;
static inline const uint8_t *sq_test_take(sq_test_rd *r, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) { r->bad = 1; return NULL; }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}
static inline uint32_t sq_test_u32(sq_test_rd *r) {
    const uint8_t *q = sq_test_take(r, 4);
    uint32_t v = 0;
    if (q) memcpy(&v, q, 4);
    return v;
}
static inline uint8_t sq_test_u8(sq_test_rd *r) {
    const uint8_t *q = sq_test_take(r, 1);
    return q ? *q : 0;
}

#endif
