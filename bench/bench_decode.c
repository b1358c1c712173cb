/* bench_decode: CPU backend figures.
 *   1. memory: memcpy GB/s (read + written bytes) and a read GB/s (32-byte loads folded by
 *      XOR: the read ceiling), 1 thread and all threads, over buffers far larger than the
 *      last-level cache;
 *   2. Linear on NF4 and on GGUF Q4_0 / Q4_1 / Q8_0 weights as stored, with float32 and with
 *      int8 activations (--activations), on 4096x4096, 4096x14336, 14336x4096 at batch 1, 8
 *      and 64 (--quick: 4096x14336 at 1 and 8): ms, GB/s of the weight bytes the backend holds
 *      and that as a % of the all-thread read bandwidth of 1., and GFLOP/s, rotating over
 *      enough copies of the weight (twice the LLC) that they come from DRAM;
 *   3. decode tokens/s of a random NF4 model of the `small` preset shape (hidden 256, 6 layers,
 *      8 heads, 2 kv heads, intermediate 704, vocab 2048), batch 1 and 8.
 * Usage: bench_decode [--threads N] [--reps N] [--quick] [--activations f32|int8|both]
 *        [--gemv-only]
 * Prints a table (#-prefixed header with units) and an OK / FAILED footer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shardq/model.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float rndf(float a) { return a * ((float)((rnd() >> 40) * (1.0 / 8388608.0)) - 1.0f); }

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- memory ---------------------------------------------------------------------------------- */

/* Bytes of weight copies that a rotation must cycle through so each copy comes from DRAM:
 * twice the last-level cache (this host's L3 is 300 MiB; a fixed 160 MiB left GEMV weights in
 * it), at least 160 MiB. */
static uint64_t past_llc_bytes(void) {
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    uint64_t b = llc > 0 ? 2 * (uint64_t)llc : 0;
    return b > (UINT64_C(160) << 20) ? b : UINT64_C(160) << 20;
}

typedef struct {
    char *dst;
    const char *src;
    size_t n, chunk;
    double sums[64];
} mem_ctx;

static void copy_task(void *c_, int64_t t, int th) {
    mem_ctx *c = c_;
    size_t off = (size_t)t * c->chunk, n = off + c->chunk > c->n ? c->n - off : c->chunk;
    memcpy(c->dst + off, c->src + off, n);
}
/* The read ceiling: 32-byte loads folded with XOR into four independent accumulators (AVX2
 * when the CPU has it, chosen at run time; 8-byte words otherwise), so the loop is bound by
 * memory, not by the adds of a float sum. */
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t read_avx2(const char *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i x = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(x, 0) ^ (uint64_t)_mm256_extract_epi64(x, 3);
}
#endif
static void read_task(void *c_, int64_t t, int th) {
    mem_ctx *c = c_;
    size_t off = (size_t)t * c->chunk, n = off + c->chunk > c->n ? c->n - off : c->chunk;
    uint64_t x = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        c->sums[t % 64] += (double)(read_avx2(c->src + off, n) & 1);
        return;
    }
#endif
    const uint64_t *w = (const uint64_t *)(c->src + off);
    for (size_t i = 0; i < n / 8; i++) x ^= w[i];
    c->sums[t % 64] += (double)(x & 1);
}

static void bench_memory(int n_threads, int reps, double *copy_gbs, double *read_gbs) {
    size_t n = (size_t)512 << 20;
    char *a = aligned_alloc(64, n), *b = aligned_alloc(64, n);
    memset(a, 1, n);
    memset(b, 2, n);
    sq_pool *pool = NULL;
    sq_error err;
    sq_pool_create(n_threads, &pool, &err);
    mem_ctx c = {b, a, n, n / (size_t)(n_threads * 8), {0}};
    int64_t tasks = (int64_t)((n + c.chunk - 1) / c.chunk);
    double t[32];
    for (int r = 0; r < reps; r++) {
        double t0 = sq_now_s();
        sq_pool_run(pool, tasks, copy_task, &c);
        t[r] = sq_now_s() - t0;
    }
    *copy_gbs = 2.0 * (double)n / median(t, reps) / 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = sq_now_s();
        sq_pool_run(pool, tasks, read_task, &c);
        t[r] = sq_now_s() - t0;
    }
    *read_gbs = (double)n / median(t, reps) / 1e9;
    sq_pool_destroy(pool);
    free(a);
    free(b);
}

/* ---- NF4 Linear -------------------------------------------------------------------------------- */

static void rand_q(int64_t M, int64_t K, sq_qtensor *q) {
    memset(q, 0, sizeof *q);
    q->type = SQ_QUANT_NF4;
    q->blocksize = 64;
    q->n_elements = (uint64_t)(M * K);
    q->shape[0] = M;
    q->shape[1] = K;
    q->dtype = SQ_DTYPE_BF16;
    q->n_blocks = q->n_elements / 64;
    q->packed = malloc(q->n_elements / 2);
    q->absmax = malloc(q->n_blocks * 4);
    for (uint64_t i = 0; i < q->n_elements / 2; i += 8) {
        uint64_t v = rnd();
        memcpy(q->packed + i, &v, 8);
    }
    for (uint64_t b = 0; b < q->n_blocks; b++) q->absmax[b] = 0.01f + 0.001f * (float)(b % 7);
}

/* random GGUF blocks of type t (random codes, a sane half scale d and bias m) */
static uint8_t *rand_gguf(int t, int64_t M, int64_t K, uint64_t *bytes) {
    uint64_t rb = 0;
    sq_ggml_row_bytes(t, K, &rb, NULL);
    *bytes = rb * (uint64_t)M;
    uint8_t *p = malloc(*bytes);
    for (uint64_t i = 0; i + 8 <= *bytes; i += 8) {
        uint64_t v = rnd();
        memcpy(p + i, &v, 8);
    }
    int64_t bb = sq_ggml_block_bytes(t), nb = (int64_t)(*bytes / (uint64_t)bb);
    for (int64_t b = 0; b < nb; b++) {
        uint16_t d = 0x2000, m = 0xa000;
        memcpy(p + b * bb, &d, 2);
        if (t == SQ_GGML_Q4_1) memcpy(p + b * bb + 2, &m, 2);
    }
    return p;
}

/* Linear on NF4 and on GGUF Q4_0 / Q4_1 / Q8_0 as stored, f32 and int8 activations
 * (act: 1 f32, 2 int8, 3 both), each shape at batch 1, 8 and 64: ms, GB/s of the weight bytes
 * the backend holds, that as a share of the all-thread read bandwidth rd_gbs, and GFLOP/s. */
static int bench_gemv(sq_backend *be, int reps, int act, double rd_gbs, int quick) {
    static const int64_t shapes[3][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
    static const int batches[3] = {1, 8, 64};
    static const int fmts[4] = {-1, SQ_GGML_Q4_0, SQ_GGML_Q4_1, SQ_GGML_Q8_0};
    int ok = 1;
    for (int s = quick ? 1 : 0; s < (quick ? 2 : 3); s++)
        for (int fi = 0; fi < 4; fi++)
        for (int a = 1; a <= 2; a++) {
            /* each activation mode uploads its own weights: in int8 mode the CPU backend
             * interleaves Q4_0 / Q8_0 for its kernels (cpu_q8i.h) */
            if (!(act & a)) continue;
            sq_backend_cpu_set_activations(be, a == 1 ? SQ_CPU_ACT_F32 : SQ_CPU_ACT_INT8, NULL);
            int64_t M = shapes[s][0], K = shapes[s][1];
            sq_qtensor q;
            uint8_t *raw = NULL;
            uint64_t rawb = 0;
            if (fmts[fi] < 0) rand_q(M, K, &q);
            else raw = rand_gguf(fmts[fi], M, K, &rawb);
            sq_weight *w[64];
            sq_error err;
            sq_error_init(&err, -1);
            int n_copies = 1;
            for (int i = 0; i < n_copies; i++) {
                sq_status st = fmts[fi] < 0 ? sq_backend_weight_4bit(be, "bench", &q, &w[i], &err)
                                            : sq_backend_weight_ggml(be, "bench", (sq_ggml_type)fmts[fi],
                                                                     raw, M, K, &w[i], &err);
                if (st != SQ_OK) {
                    fprintf(stderr, "bench_decode: %s\n", err.msg);
                    return 0;
                }
                if (i == 0) {   /* copies past the LLC: twice its size, at least 160 MiB */
                    n_copies = (int)(past_llc_bytes() / sq_weight_bytes(w[0])) + 1;
                    if (n_copies > 64) n_copies = 64;
                }
            }
            uint64_t wbytes = sq_weight_bytes(w[0]);
            if (fmts[fi] < 0) sq_qtensor_free(&q);
            free(raw);
            void *x_d = NULL, *y_d = NULL;
            sq_backend_alloc(be, (uint64_t)(64 * K * 4), &x_d, &err);
            sq_backend_alloc(be, (uint64_t)(64 * M * 4), &y_d, &err);
            float *x = malloc((size_t)(64 * K) * 4);
            for (int64_t i = 0; i < 64 * K; i++) x[i] = rndf(1.0f);
            sq_backend_upload(be, x_d, x, (uint64_t)(64 * K * 4), &err);
            free(x);
            const char *name = fmts[fi] < 0 ? "nf4" : sq_ggml_type_name(fmts[fi]);
            for (int bi = 0; bi < (quick ? 2 : 3); bi++) {
                    int B = batches[bi];
                    double t[64];
                    int n_runs = reps * n_copies < 64 ? reps * n_copies : 64;
                    if (B == 64 && n_runs > reps) n_runs = reps;
                    for (int r = -n_copies; r < n_runs; r++) {   /* one warm-up round */
                        int c = (r + n_copies) % n_copies;
                        double t0 = sq_now_s();
                        if (sq_backend_linear(be, x_d, B, w[c], NULL, y_d, &err) != SQ_OK) ok = 0;
                        if (r >= 0) t[r] = sq_now_s() - t0;
                    }
                    double med = median(t, n_runs), gbs = (double)wbytes / med / 1e9;
                    printf("  %-6s %-4s %6lld x %-6lld %5d %10.3f %8.2f %6.0f%% %9.2f\n", name,
                           a == 1 ? "f32" : "int8", (long long)M, (long long)K, B, med * 1e3, gbs,
                           100.0 * gbs / rd_gbs, 2.0 * (double)M * (double)K * B / med / 1e9);
                }
            for (int i = 0; i < n_copies; i++) sq_backend_weight_free(be, w[i]);
            sq_backend_free(be, x_d);
            sq_backend_free(be, y_d);
        }
    return ok;
}

/* ---- decode tokens/s on the small preset shape ---------------------------------------------- */

static int bench_model(sq_backend *be, int n_new, double *tok_s1, double *tok_s8) {
    sq_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SQ_ARCH_LLAMA;
    c.hidden_size = 256;
    c.intermediate_size = 704;
    c.n_layers = 6;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 32;
    c.vocab_size = 2048;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.max_position_embeddings = 2048;
    c.tie_word_embeddings = false;
    sq_stage_params p;
    memset(&p, 0, sizeof p);
    p.cfg = c;
    p.n_layers = c.n_layers;
    p.has_embed = p.has_head = true;
    p.scheme.type = SQ_QUANT_NF4;
    p.scheme.blocksize = 64;
    p.scheme.dense_dtype = SQ_DTYPE_BF16;
    p.max_seq = 16 + n_new;
    p.max_batch = 8;
    p.max_tokens = 16 * 8;
    sq_stage *s = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    if (sq_stage_create(be, &p, &s, &err) != SQ_OK) goto fail;
    int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, q = 256, k = 64;
    float *buf = malloc((size_t)(V * H) * 4);
    for (int64_t i = 0; i < V * H; i++) buf[i] = rndf(0.05f);
    int64_t sh[2] = {V, H}, s1[2] = {H, 0};
    if (sq_stage_set_dense(s, SQ_ROLE_EMBED, -1, "embed", SQ_DTYPE_F32, buf, 2, sh, &err) ||
        sq_stage_set_dense(s, SQ_ROLE_LM_HEAD, -1, "lm_head", SQ_DTYPE_F32, buf, 2, sh, &err))
        goto fail;
    for (int64_t i = 0; i < H; i++) buf[i] = 1.0f + rndf(0.1f);
    if (sq_stage_set_dense(s, SQ_ROLE_FINAL_NORM, -1, "norm", SQ_DTYPE_F32, buf, 1, s1, &err)) goto fail;
    struct { sq_tensor_role r; int64_t rows, cols; } lin[] = {
        {SQ_ROLE_Q, q, H}, {SQ_ROLE_K, k, H}, {SQ_ROLE_V, k, H}, {SQ_ROLE_O, H, q},
        {SQ_ROLE_GATE, I, H}, {SQ_ROLE_UP, I, H}, {SQ_ROLE_DOWN, H, I}};
    for (int64_t l = 0; l < c.n_layers; l++) {
        if (sq_stage_set_dense(s, SQ_ROLE_ATTN_NORM, l, "n", SQ_DTYPE_F32, buf, 1, s1, &err) ||
            sq_stage_set_dense(s, SQ_ROLE_MLP_NORM, l, "n", SQ_DTYPE_F32, buf, 1, s1, &err))
            goto fail;
        for (size_t i = 0; i < sizeof lin / sizeof *lin; i++) {
            float *w = malloc((size_t)(lin[i].rows * lin[i].cols) * 4);
            for (int64_t j = 0; j < lin[i].rows * lin[i].cols; j++) w[j] = rndf(0.06f);
            sq_qtensor qt;
            sq_status st = sq_quant_4bit(w, lin[i].rows, lin[i].cols, SQ_DTYPE_BF16, &p.scheme, NULL, &qt, &err);
            free(w);
            if (st == SQ_OK) st = sq_stage_set_4bit(s, lin[i].r, l, "w", &qt, &err);
            sq_qtensor_free(&qt);
            if (st != SQ_OK) goto fail;
        }
    }
    free(buf);
    for (int bi = 0; bi < 2; bi++) {
        int B = bi ? 8 : 1;
        sq_seq_span sp[8];
        int32_t tok[128];
        uint64_t seq[8], step[8];
        for (int i = 0; i < B; i++) {   /* prefill 16 tokens per sequence */
            sp[0] = (sq_seq_span){i, 0, 16};
            for (int t = 0; t < 16; t++) tok[t] = (int32_t)(rnd() % (uint64_t)V);
            sq_stage_input b = {1, sp, tok, NULL, false};
            if (sq_stage_forward(s, &b, &err)) goto fail;
        }
        for (int i = 0; i < B; i++) tok[i] = 1 + i;
        sq_sample_params gp = {0, 0, 1, 0};
        double t0 = sq_now_s();
        for (int step_i = 0; step_i < n_new; step_i++) {
            for (int i = 0; i < B; i++) {
                sp[i] = (sq_seq_span){i, 16 + step_i, 1};
                seq[i] = (uint64_t)i;
                step[i] = (uint64_t)step_i;
            }
            sq_stage_input b = {B, sp, tok, NULL, false};
            if (sq_stage_forward(s, &b, &err) || sq_stage_sample(s, &gp, seq, step, tok, &err)) goto fail;
        }
        double dt = sq_now_s() - t0;
        *(bi ? tok_s8 : tok_s1) = (double)(n_new * B) / dt;
    }
    sq_stage_destroy(s);
    return 1;
fail:
    fprintf(stderr, "bench_decode: %s\n", err.msg);
    sq_stage_destroy(s);
    return 0;
}

int main(int argc, char **argv) {
    int n_threads = 0, reps = 7, quick = 0, act = 3, gemv_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--activations") && i + 1 < argc) {
            const char *v = argv[++i];
            act = !strcmp(v, "f32") ? 1 : !strcmp(v, "int8") ? 2 : !strcmp(v, "both") ? 3 : 0;
            if (!act) {
                fprintf(stderr, "bench_decode: --activations must be f32, int8 or both\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--gemv-only")) gemv_only = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "usage: bench_decode [--threads N] [--reps N] [--quick] "
                            "[--activations f32|int8|both] [--gemv-only]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 31) reps = 7;
    sq_backend *be = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    if (sq_backend_create_cpu(n_threads, &be, &err) != SQ_OK) {
        fprintf(stderr, "bench_decode: %s\n", err.msg);
        return 1;
    }
    sq_backend_limits lim = {.max_rows = 128, .max_width = 14336, .max_vocab = 0, .max_head_dim = 128};
    sq_backend_reserve(be, &lim, &err);
    int nt = sq_backend_n_threads(be), ok = 1;
    printf("# shardq bench_decode: backend %s, %d threads, median of %d\n", sq_backend_name(be), nt, reps);
    double c1, r1, cn, rn;
    bench_memory(1, reps, &c1, &r1);
    bench_memory(nt, reps, &cn, &rn);
    printf("# %-30s %10s %10s\n", "memory", "1 thr GB/s", "all GB/s");
    printf("  %-30s %10.2f %10.2f\n", "memcpy 512 MiB (read+write)", c1, cn);
    printf("  %-30s %10.2f %10.2f\n", "read (xor-fold) 512 MiB", r1, rn);
    printf("# %-11s %15s %5s %10s %8s %7s %9s\n", "linear", "out x in", "batch", "ms",
           "GB/s", "% read", "GFLOP/s");
    ok &= bench_gemv(be, reps, act, rn, quick);
    sq_backend_cpu_set_activations(be, act == 2 ? SQ_CPU_ACT_INT8 : SQ_CPU_ACT_F32, NULL);
    if (gemv_only) {
        printf("# %s\n", ok ? "OK" : "FAILED");
        sq_backend_destroy(be);
        return ok ? 0 : 1;
    }
    double t1 = 0, t8 = 0;
    ok &= bench_model(be, quick ? 32 : 128, &t1, &t8);
    printf("# %-40s %12s\n", "decode, small preset shape, nf4", "tokens/s");
    printf("  %-40s %12.1f\n", "batch 1", t1);
    printf("  %-40s %12.1f\n", "batch 8", t8);
    printf("# %s\n", ok ? "OK" : "FAILED");
    sq_backend_destroy(be);
    return ok ? 0 : 1;
}
