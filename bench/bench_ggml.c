/* bench_ggml: CPU Linear on GGUF (ggml) weights kept as stored, batch 1 (decode GEMV) and 8.
 * For each type on OUT x IN (default 4096 x 4096 and 4096 x 14336): median ms per call, GB/s of
 * the weight bytes the backend holds (codes + float32 scales / biases: what the GEMV reads),
 * GB/s of the GGUF bytes the same weight takes in the file, and GFLOP/s; weights rotate over
 * enough copies (> 160 MB) that they come from DRAM.  A float32 read-sum over 512 MiB gives the
 * machine's read bandwidth for comparison.  Last, the Linear part of one decode step of
 * SmolLM2-135M as its Q4_1 GGUF stores it (30 layers of q, k, v, o, gate, up, down in Q4_1, the
 * tied Q8_0 head 49152 x 576; random blocks of the same types and shapes): ms per token and the
 * tokens/s that the Linears alone would allow.
 * Usage: bench_ggml [--threads N] [--reps N] [--quick]   (a program that prints, not a test) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/backend.h"
#include "shardq/ggml_quant.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
    const float *src;
    size_t n, chunk;
    float sums[64];
} rd_ctx;
static void read_task(void *c_, int64_t t, int th) {
    rd_ctx *c = c_;
    size_t off = (size_t)t * c->chunk, n = off + c->chunk > c->n ? c->n - off : c->chunk;
    float a[16] = {0};
    for (size_t i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) a[j] += c->src[off + i + j];
    for (int j = 0; j < 16; j++) c->sums[t % 64] += a[j];
}
static double read_gbs(int n_threads, int reps) {
    size_t n = (size_t)128 << 20;   /* floats: 512 MiB */
    float *a = aligned_alloc(64, n * 4);
    if (!a) return 0;
    memset(a, 0, n * 4);
    sq_pool *pool = NULL;
    sq_error err;
    if (sq_pool_create(n_threads, &pool, &err) != SQ_OK) { free(a); return 0; }
    rd_ctx c = {a, n, n / (size_t)(n_threads * 8), {0}};
    double t[32];
    for (int r = 0; r < reps; r++) {
        double t0 = sq_now_s();
        sq_pool_run(pool, (int64_t)((n + c.chunk - 1) / c.chunk), read_task, &c);
        t[r] = sq_now_s() - t0;
    }
    sq_pool_destroy(pool);
    free(a);
    return (double)n * 4 / median(t, reps) / 1e9;
}

/* random blocks with sane fp16 scales (1/1024 .. 1) */
static uint8_t *rand_blocks(int type, int64_t rows, int64_t cols, uint64_t *n_bytes) {
    uint64_t rb = 0;
    sq_ggml_row_bytes(type, cols, &rb, NULL);
    *n_bytes = rb * (uint64_t)rows;
    uint8_t *p = malloc(*n_bytes);
    for (uint64_t i = 0; i < *n_bytes; i++) p[i] = (uint8_t)(rnd() >> 33);
    int64_t bb = sq_ggml_block_bytes(type), nb = rows * cols / sq_ggml_block_elems(type);
    int d_off = type == SQ_GGML_Q6_K ? 208 : 0;
    for (int64_t b = 0; b < nb; b++) {
        uint16_t d = (uint16_t)(0x1400 + rnd() % 0x2800);
        memcpy(p + b * bb + d_off, &d, 2);
        if (type == SQ_GGML_Q4_1 || type == SQ_GGML_Q5_1 || type == SQ_GGML_Q4_K || type == SQ_GGML_Q5_K)
            memcpy(p + b * bb + 2, &d, 2);
    }
    return p;
}

/* One decode step's Linears of SmolLM2-135M-Instruct.Q4_1.gguf (hidden 576, 30 layers, 9 heads
 * of 64, 3 KV heads, intermediate 1536, vocab 49152). */
static int bench_smollm2(sq_backend *be, int reps) {
    enum { L = 30, H = 576, KV = 192, I = 1536, V = 49152, NW = 7 * L + 1 };
    static const int64_t shape[7][2] = {{H, H}, {KV, H}, {KV, H}, {H, H}, {I, H}, {I, H}, {H, I}};
    sq_weight *w[NW];
    sq_error err;
    sq_error_init(&err, -1);
    uint64_t held = 0, file = 0;
    for (int i = 0; i < NW; i++) {
        int t = i == NW - 1 ? SQ_GGML_Q8_0 : SQ_GGML_Q4_1;
        int64_t M = i == NW - 1 ? V : shape[i % 7][0], K = i == NW - 1 ? H : shape[i % 7][1];
        uint64_t nb = 0;
        uint8_t *raw = rand_blocks(t, M, K, &nb);
        if (sq_backend_weight_ggml(be, "smollm2", (sq_ggml_type)t, raw, M, K, &w[i], &err) != SQ_OK) {
            fprintf(stderr, "bench_ggml: %s\n", err.msg);
            free(raw);
            return 0;
        }
        free(raw);
        held += sq_weight_bytes(w[i]);
        file += nb;
    }
    void *x_d = NULL, *y_d = NULL;
    sq_backend_alloc(be, I * 4, &x_d, &err);
    sq_backend_alloc(be, (uint64_t)V * 4, &y_d, &err);
    sq_backend_memset(be, x_d, 0, I * 4, &err);
    double t[16];
    int ok = 1;
    for (int r = -1; r < reps; r++) {
        double t0 = sq_now_s();
        for (int i = 0; i < NW; i++)
            if (sq_backend_linear(be, x_d, 1, w[i], NULL, y_d, &err) != SQ_OK) ok = 0;
        if (r >= 0) t[r] = sq_now_s() - t0;
    }
    double med = median(t, reps);
    printf("# SmolLM2-135M Q4_1 (+ Q8_0 head), Linears of one decode step (batch 1)\n");
    printf("  %.1f MB held (%.1f MB in GGUF)  %8.3f ms/token  %8.1f tok/s (Linears only)  %6.2f GB/s\n",
           held / 1e6, file / 1e6, med * 1e3, 1.0 / med, held / med / 1e9);
    for (int i = 0; i < NW; i++) sq_backend_weight_free(be, w[i]);
    sq_backend_free(be, x_d);
    sq_backend_free(be, y_d);
    return ok;
}

int main(int argc, char **argv) {
    int n_threads = 0, reps = 5, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else { fprintf(stderr, "usage: bench_ggml [--threads N] [--reps N] [--quick]\n"); return 2; }
    }
    if (reps < 1) reps = 1;
    if (reps > 16) reps = 16;
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    if (sq_backend_create_cpu(n_threads, &be, &err) != SQ_OK) {
        fprintf(stderr, "bench_ggml: %s\n", err.msg);
        return 1;
    }
    sq_backend_limits lim = {.max_rows = 8, .max_width = 14336, .max_vocab = 0, .max_head_dim = 64};
    sq_backend_reserve(be, &lim, &err);
    int nt = sq_backend_n_threads(be);
    printf("# bench_ggml: backend %s, %d threads\n", sq_backend_name(be), nt);
    if (!quick) printf("# memory: float32 read-sum %.2f GB/s (%d threads, 512 MiB)\n", read_gbs(nt, 5), nt);
    printf("# %-5s %13s %5s %10s %12s %12s %10s\n", "type", "out x in", "batch", "ms",
           "GB/s_held", "GB/s_gguf", "GFLOP/s");
    static const int types[] = {SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q4_K, SQ_GGML_Q5_K,
                                SQ_GGML_Q6_K, SQ_GGML_Q8_0};
    static const int64_t shapes[2][2] = {{4096, 4096}, {4096, 14336}};
    int ok = 1;
    for (int s = 0; s < (quick ? 1 : 2); s++)
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            int64_t M = quick ? 512 : shapes[s][0], K = quick ? 1024 : shapes[s][1];
            uint64_t gbytes = 0;
            uint8_t *raw = rand_blocks(types[ti], M, K, &gbytes);
            sq_weight *w[32];
            int n_copies = quick ? 1 : (int)((uint64_t)(160u << 20) / gbytes) + 1;
            if (n_copies > 32) n_copies = 32;
            for (int i = 0; i < n_copies; i++)
                if (sq_backend_weight_ggml(be, "bench", (sq_ggml_type)types[ti], raw, M, K, &w[i],
                                           &err) != SQ_OK) {
                    fprintf(stderr, "bench_ggml: %s\n", err.msg);
                    return 1;
                }
            free(raw);
            uint64_t held = sq_weight_bytes(w[0]);
            void *x_d = NULL, *y_d = NULL;
            sq_backend_alloc(be, (uint64_t)(8 * K * 4), &x_d, &err);
            sq_backend_alloc(be, (uint64_t)(8 * M * 4), &y_d, &err);
            float *x = malloc((size_t)(8 * K) * 4);
            for (int64_t i = 0; i < 8 * K; i++) x[i] = (float)((int64_t)(rnd() % 2001) - 1000) * 1e-3f;
            sq_backend_upload(be, x_d, x, (uint64_t)(8 * K * 4), &err);
            free(x);
            for (int B = 1; B <= 8; B += 7) {
                double t[64];
                int n_runs = reps * n_copies < 64 ? reps * n_copies : 64;
                for (int r = -n_copies; r < n_runs; r++) {
                    int c = (r + n_copies) % n_copies;
                    double t0 = sq_now_s();
                    if (sq_backend_linear(be, x_d, B, w[c], NULL, y_d, &err) != SQ_OK) ok = 0;
                    if (r >= 0) t[r] = sq_now_s() - t0;
                }
                double med = median(t, n_runs);
                printf("  %-5s %6lld x %-6lld %5d %10.3f %12.2f %12.2f %10.2f\n",
                       sq_ggml_type_name(types[ti]), (long long)M, (long long)K, B, med * 1e3,
                       (double)held / med / 1e9, (double)gbytes / med / 1e9,
                       2.0 * (double)M * (double)K * B / med / 1e9);
            }
            for (int i = 0; i < n_copies; i++) sq_backend_weight_free(be, w[i]);
            sq_backend_free(be, x_d);
            sq_backend_free(be, y_d);
        }
    if (!quick) ok &= bench_smollm2(be, reps);
    sq_backend_destroy(be);
    printf("# %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
