/* GPU test (label gpu) of the CUDA backend (issue 15).  The sampling reserve: a stage with 16k
 * prompt tokens per micro-batch, Llama-3's vocabulary (128256) and 8 sequences reserves sampling
 * scratch for the 8 sampled rows (kernels/sample_size.cuh), not for 16k rows x 128256 (about
 * 42 GB before CUB's part, and refused from 16,744 tokens), then samples 8 rows of that
 * vocabulary as the CPU backend does.  A kernel fault: reported against the ops enqueued since
 * the last sync, not the call where it surfaced.  Exits 77 where there is no CUDA device. */
#include <check.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/sample_size.cuh"
#include "shardq/backend.h"

enum { VOCAB = 128256, PROMPT_TOKENS = 16384, N_SEQS = 8 };

START_TEST(reserve_16k_prompt_tokens_llama3_vocab) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_backend *gpu = NULL, *cpu = NULL;
    ck_assert_msg(sq_backend_create_cuda(0, &gpu, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(sq_backend_create_cpu(2, &cpu, &err), SQ_OK);
    size_t free0 = 0, free1 = 0, total = 0;
    ck_assert_int_eq(cudaMemGetInfo(&free0, &total), cudaSuccess);
    sq_backend_limits lim = {.max_rows = PROMPT_TOKENS, .max_width = 4096, .max_vocab = VOCAB,
                             .max_head_dim = 128, .max_sample_rows = N_SEQS};
    ck_assert_msg(sq_backend_reserve(gpu, &lim, &err) == SQ_OK, "reserve: %s", err.msg);
    ck_assert_int_eq(cudaMemGetInfo(&free1, &total), cudaSuccess);
    size_t off[6];
    ck_assert(sq_sample_carve(N_SEQS, VOCAB, off));
    double used = (double)free0 - (double)free1;
    fprintf(stderr, "  reserve at %d prompt tokens, vocab %d, %d sequences: %.1f MiB of device memory "
            "(sampling carve %.1f MiB + CUB + op scratch)\n", PROMPT_TOKENS, VOCAB, N_SEQS,
            used / 1048576.0, (double)off[5] / 1048576.0);
    /* the carve is 19.6 MiB; CUB's part is of the same order; the op scratch 16 B per row */
    ck_assert_msg(used < 256.0 * 1048576.0, "the reserve took %.0f MiB", used / 1048576.0);
    sq_backend_limits lc = {.max_rows = N_SEQS, .max_width = 64, .max_vocab = VOCAB, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(cpu, &lc, &err), SQ_OK);
    float *x = malloc((size_t)N_SEQS * VOCAB * sizeof *x);
    uint32_t s = 12345;
    for (size_t i = 0; i < (size_t)N_SEQS * VOCAB; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)(s >> 8) / 16777216.0f * 16.0f - 8.0f + (i % 101 == 0 ? 6.0f : 0.0f);
    }
    void *x_d = NULL;
    ck_assert_int_eq(sq_backend_alloc(gpu, (uint64_t)N_SEQS * VOCAB * 4, &x_d, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_upload(gpu, x_d, x, (uint64_t)N_SEQS * VOCAB * 4, &err), SQ_OK);
    const sq_sample_params ps[] = {{0.0f, 0, 1.0f, 1}, {1.0f, 0, 1.0f, 2}, {0.8f, 40, 0.95f, 3}};
    int agree = 0, n = 0;
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        uint64_t seq[N_SEQS], steps[N_SEQS];
        int32_t ic[N_SEQS], ig[N_SEQS];
        for (int r = 0; r < N_SEQS; r++) seq[r] = (uint64_t)r, steps[r] = 7;
        ck_assert_int_eq(sq_backend_sample(cpu, x, N_SEQS, VOCAB, &ps[pi], seq, steps, ic, &err), SQ_OK);
        ck_assert_msg(sq_backend_sample(gpu, x_d, N_SEQS, VOCAB, &ps[pi], seq, steps, ig, &err) == SQ_OK,
                      "sample: %s", err.msg);
        for (int r = 0; r < N_SEQS; r++) {
            ck_assert(ig[r] >= 0 && ig[r] < VOCAB);
            if (pi == 0) ck_assert_int_eq(ig[r], ic[r]);   /* greedy: exact */
            agree += ig[r] == ic[r];
            n++;
        }
    }
    /* exp() may differ by an ulp between CUDA and glibc: one miss allowed */
    ck_assert_msg(agree >= n - 1, "only %d of %d sampled tokens agree with the CPU's", agree, n);
    sq_backend_free(gpu, x_d);
    free(x);
    sq_backend_destroy(gpu);
    sq_backend_destroy(cpu);
}
END_TEST

/* A kernel that faults (an add reading an unmapped address) is reported when the stream is
 * next synchronized, against the ops enqueued since the last completed sync (add, then swiglu),
 * not under the name of the call where the fault surfaced.  Runs last: the fault ends the
 * process's CUDA context. */
START_TEST(kernel_fault_names_recent_ops) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_backend *gpu = NULL;
    ck_assert_msg(sq_backend_create_cuda(0, &gpu, &err) == SQ_OK, "%s", err.msg);
    sq_backend_limits lim = {.max_rows = 16, .max_width = 1024, .max_vocab = 0, .max_head_dim = 64};
    ck_assert_int_eq(sq_backend_reserve(gpu, &lim, &err), SQ_OK);
    const int64_t n = 1 << 20;
    void *a = NULL, *o = NULL;
    ck_assert_int_eq(sq_backend_alloc(gpu, n * 4, &a, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_alloc(gpu, n * 4, &o, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_memset(gpu, a, 0, n * 4, &err), SQ_OK);
    ck_assert_int_eq(sq_backend_sync(gpu, &err), SQ_OK);
    void *bogus = (void *)(uintptr_t)0x10000;   /* never a device allocation */
    sq_status st = sq_backend_add(gpu, a, bogus, n, o, &err);
    if (st == SQ_OK) st = sq_backend_swiglu(gpu, a, a, n, o, &err);
    if (st == SQ_OK) st = sq_backend_sync(gpu, &err);
    ck_assert_int_eq(st, SQ_ERR_CUDA);
    fprintf(stderr, "  fault reported as: %s\n", err.msg);
    ck_assert_msg(strstr(err.msg, "a kernel failed on the device"), "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "add"), "%s", err.msg);
    ck_assert_str_eq(err.tensor, "");
    /* the context is gone: nothing more is freed here */
}
END_TEST

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipping the sampling reserve test\n");
        return 77;
    }
    Suite *su = suite_create("cuda_reserve");
    TCase *tc = tcase_create("gpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, reserve_16k_prompt_tokens_llama3_vocab);
    tcase_add_test(tc, kernel_fault_names_recent_ops);   /* last: it ends the CUDA context */
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
