/* Helpers shared by the CPU backend test binaries (header-only, static; need check.h). */
#ifndef SHARDQ_BACKEND_TESTUTIL_H
#define SHARDQ_BACKEND_TESTUTIL_H

#include <check.h>
#include <stdlib.h>

#include "shardq/backend.h"

/* A CPU backend with n_threads threads on ISA path isa (NULL: the best the CPU has, else
 * "avx2" or "portable", through SHARDQ_CPU_ISA), reserved for lim. */
static inline sq_backend *sq_test_cpu_backend(int n_threads, const char *isa,
                                              sq_backend_limits lim) {
    if (isa) setenv("SHARDQ_CPU_ISA", isa, 1);
    else unsetenv("SHARDQ_CPU_ISA");
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_create_cpu(n_threads, &be, &err), SQ_OK);
    unsetenv("SHARDQ_CPU_ISA");
    ck_assert_int_eq(sq_backend_reserve(be, &lim, &err), SQ_OK);
    return be;
}

/* bytes of backend memory holding src (zeroed when src is NULL) */
static inline void *sq_test_upload(sq_backend *be, const void *src, size_t bytes) {
    void *p = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_alloc(be, bytes, &p, &err), SQ_OK);
    if (src) ck_assert_int_eq(sq_backend_upload(be, p, src, bytes, &err), SQ_OK);
    else ck_assert_int_eq(sq_backend_memset(be, p, 0, bytes, &err), SQ_OK);
    return p;
}

/* out (n, rows) = x (n, cols) · wᵀ (+ bias) through the backend; malloc'd */
static inline float *sq_test_linear(sq_backend *be, const sq_weight *w, const float *x, int64_t n,
                                    const sq_weight *bias) {
    int64_t K = sq_weight_cols(w), N = sq_weight_rows(w);
    void *x_d = NULL, *o_d = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(n * K * 4), &x_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_alloc(be, (uint64_t)(n * N * 4), &o_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_upload(be, x_d, x, (uint64_t)(n * K * 4), &err), SQ_OK);
    ck_assert_int_eq(sq_backend_linear(be, x_d, n, w, bias, o_d, &err), SQ_OK);
    float *out = malloc((size_t)(n * N * 4));
    ck_assert_int_eq(sq_backend_download(be, out, o_d, (uint64_t)(n * N * 4), &err), SQ_OK);
    sq_backend_free(be, x_d);
    sq_backend_free(be, o_d);
    return out;
}

#endif
