/* bench_quant: how fast the CPU quantizes BF16 weights to NF4, per core and in total, next to
 * memcpy of the same buffer.  A program that prints figures, not a test.
 *   bench_quant [--rows R] [--cols C] [--reps N] [--threads T] [--isa auto|scalar|avx2]
 * GB/s counts bytes of BF16 source read (2 bytes per weight); memcpy GB/s counts the bytes
 * copied (the same buffer size).  Each figure is the best of --reps runs.
 * Owns nothing else; prints only to stdout (errors to stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shardq/quant.h"

static double best_quant(const uint16_t *src, int64_t rows, int64_t cols,
                         const sq_quant_scheme *s, sq_pool *pool, sq_quant_isa isa, int reps,
                         uint64_t *check) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        sq_qtensor q;
        sq_error err;
        sq_error_init(&err, -1);
        double t0 = sq_now_s();
        if (sq_quant_4bit_isa(SQ_DTYPE_BF16, src, rows, cols, s, pool, isa, &q, &err) != SQ_OK) {
            fprintf(stderr, "bench_quant: %s\n", err.msg);
            exit(1);
        }
        double dt = sq_now_s() - t0;
        if (dt < best) best = dt;
        *check += q.packed[q.n_elements / 4];
        sq_qtensor_free(&q);
    }
    return best;
}

static double best_memcpy(void *dst, const void *src, size_t n, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = sq_now_s();
        memcpy(dst, src, n);
        double dt = sq_now_s() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    int64_t rows = 4096, cols = 4096;
    int reps = 5, threads = 0;
    sq_quant_isa isa = SQ_QUANT_ISA_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "bench_quant: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--rows")) rows = atoll(v);
        else if (!strcmp(a, "--cols")) cols = atoll(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--isa")) isa = !strcmp(v, "scalar") ? SQ_QUANT_ISA_SCALAR
                                          : !strcmp(v, "avx2") ? SQ_QUANT_ISA_AVX2 : SQ_QUANT_ISA_AUTO;
        else { fprintf(stderr, "bench_quant: unknown flag %s\n", a); return 2; }
        i++;
    }
    if (rows <= 0 || cols <= 0 || reps <= 0) { fprintf(stderr, "bench_quant: bad sizes\n"); return 2; }
    size_t n = (size_t)rows * (size_t)cols, bytes = n * 2;
    uint16_t *src = malloc(bytes);
    uint8_t *dst = malloc(bytes);
    if (!src || !dst) { fprintf(stderr, "bench_quant: out of memory\n"); return 1; }
    uint64_t u = 42;
    for (size_t i = 0; i < n; i++) {  /* bf16 of roughly N(0, 0.02)-sized values */
        u = u * 6364136223846793005ull + 1442695040888963407ull;
        float f = ((float)(u >> 40) * 0x1p-24f - 0.5f) * 0.08f;
        uint32_t b;
        memcpy(&b, &f, 4);
        src[i] = (uint16_t)(b >> 16);
    }
    memset(dst, 1, bytes);
    sq_pool *pool = NULL;
    sq_error err;
    if (sq_pool_create(threads, &pool, &err) != SQ_OK) { fprintf(stderr, "bench_quant: %s\n", err.msg); return 1; }
    int nt = sq_pool_n_threads(pool);
    uint64_t check = 0;
    printf("# bench_quant: BF16 [%lld x %lld] (%.1f MiB) -> NF4 blocksize 64, path %s, best of %d\n",
           (long long)rows, (long long)cols, (double)bytes / (1 << 20), sq_quant_isa_name(isa), reps);
    printf("# %-8s %3s %7s %12s %12s %14s\n", "scheme", "dq", "threads", "time_ms", "GB/s_src", "Gweights/s");
    double memcpy_1 = best_memcpy(dst, src, bytes, reps);
    for (int dq = 0; dq < 2; dq++) {
        sq_quant_scheme s = {.type = SQ_QUANT_NF4, .double_quant = dq, .blocksize = 64,
                             .dense_dtype = SQ_DTYPE_BF16};
        int tcounts[2] = {1, nt};
        for (int k = 0; k < (nt > 1 ? 2 : 1); k++) {
            double t = best_quant(src, rows, cols, &s, tcounts[k] == 1 ? NULL : pool, isa, reps, &check);
            printf("  %-8s %3s %7d %12.2f %12.2f %14.3f\n", "nf4", dq ? "on" : "off", tcounts[k],
                   t * 1e3, (double)bytes / t / 1e9, (double)n / t / 1e9);
        }
    }
    printf("  %-8s %3s %7d %12.2f %12.2f %14s\n", "memcpy", "-", 1, memcpy_1 * 1e3,
           (double)bytes / memcpy_1 / 1e9, "-");
    printf("# GB/s_src = bytes of BF16 source per second; memcpy = the same bytes copied, 1 thread\n");
    printf("# %s (checksum %llu)\n", "OK", (unsigned long long)check);
    sq_pool_destroy(pool);
    free(src);
    free(dst);
    return 0;
}
