/* test_quant_gpu: the CUDA quantize kernel (kernels/quant.cu) gives exactly the CPU's bytes
 * (packed nibbles, float32 absmax, and after host double quant the codes / nested absmax /
 * offset) on random data with zero blocks, NaN, Inf, denormals and partial last blocks, for
 * F32 / F16 / BF16 sources, NF4 / FP4 and blocksizes 32..4096; and the pinned staging ring
 * copies bytes intact.  Exits 77 (CTest skip) when cudaGetDeviceCount finds no device. */
#include <check.h>
#include "gpu_skip.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "shardq/quant.h"
#include "quant.cuh"
#include "quant_math.cuh"

#define CU(x) ck_assert_msg((x) == cudaSuccess, "%s: %s", #x, cudaGetErrorString(x))

enum { N = 3 * 4096 + 1001 };

static void make_data(float *f, uint16_t *h, uint16_t *bf) {
    uint64_t u = 99;
    for (int i = 0; i < N; i++) {
        u = u * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)(u >> 40) * 0x1p-22f - 2.0f;
        if ((i / 64) % 7 == 3) v *= 1e-3f;
        if ((i / 128) % 11 == 5) v = 0.0f;
        if ((i / 256) % 13 == 7) v *= 1e-39f;  /* float32 denormals */
        f[i] = v;
    }
    f[777] = NAN;
    f[5000] = INFINITY;
    f[5001] = -INFINITY;
    for (int i = N - 40; i < N; i++) f[i] = 0.0f;  /* an all-zero trailing partial block */
    for (int i = 0; i < N; i++) {
        h[i] = sq_qm_f32_to_f16(f[i]);
        bf[i] = sq_qm_f32_to_bf16(f[i]);
    }
}

START_TEST(test_gpu_equals_cpu) {
    float *f = malloc(N * sizeof *f);
    uint16_t *h = malloc(N * 2), *bf = malloc(N * 2);
    make_data(f, h, bf);
    const void *src[3] = {f, h, bf};
    const sq_dtype dts[3] = {SQ_DTYPE_F32, SQ_DTYPE_F16, SQ_DTYPE_BF16};
    const size_t es[3] = {4, 2, 2};
    const int64_t bss[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    void *src_d = NULL;
    uint8_t *packed_d = NULL;
    float *absmax_d = NULL;
    cudaStream_t stream;
    CU(cudaStreamCreate(&stream));
    CU(cudaMalloc(&src_d, N * 4));
    CU(cudaMalloc((void **)&packed_d, (N + 1) / 2));
    CU(cudaMalloc((void **)&absmax_d, (N / 32 + 1) * sizeof(float)));
    sq_cuda_stager *stg = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_cuda_stager_create(4096, 3, &stg, &err), SQ_OK);
    int compared = 0;
    for (int d = 0; d < 3; d++) {
        ck_assert_int_eq(sq_cuda_stage_copy(stg, src_d, src[d], N * es[d], stream, &err), SQ_OK);
        for (int t = 0; t < 2; t++)
            for (int bi = 0; bi < 8; bi++)
                for (int dq = 0; dq < 2; dq++) {
                    sq_quant_scheme s = {.type = t ? SQ_QUANT_FP4 : SQ_QUANT_NF4,
                                         .double_quant = dq, .blocksize = bss[bi]};
                    sq_qtensor cpu, gpu;
                    ck_assert_int_eq(sq_quant_4bit_from(dts[d], src[d], 1, N, &s, NULL, &cpu, &err), SQ_OK);
                    ck_assert_int_eq(sq_qtensor_init(&gpu, &s, 1, N, dts[d], &err), SQ_OK);
                    ck_assert_int_eq(sq_cuda_quant_4bit(dts[d], src_d, N, bss[bi], t, packed_d,
                                                        absmax_d, stream, &err), SQ_OK);
                    CU(cudaMemcpyAsync(gpu.packed, packed_d, (N + 1) / 2, cudaMemcpyDeviceToHost, stream));
                    CU(cudaMemcpyAsync(gpu.absmax, absmax_d, gpu.n_blocks * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream));
                    CU(cudaStreamSynchronize(stream));
                    ck_assert_int_eq(sq_qtensor_compress(&gpu, &err), SQ_OK);
                    for (uint64_t j = 0; j < (N + 1) / 2; j++)
                        ck_assert_msg(gpu.packed[j] == cpu.packed[j],
                                      "dtype %d fp4 %d bs %lld: byte %llu gpu %02x cpu %02x", d, t,
                                      (long long)bss[bi], (unsigned long long)j, gpu.packed[j],
                                      cpu.packed[j]);
                    if (dq) {
                        ck_assert_mem_eq(gpu.absmax_q, cpu.absmax_q, cpu.n_blocks);
                        ck_assert_uint_eq(sq_qm_bits(gpu.nested_offset), sq_qm_bits(cpu.nested_offset));
                        ck_assert_mem_eq(gpu.nested_absmax, cpu.nested_absmax,
                                         ((cpu.n_blocks + 255) / 256) * sizeof(float));
                    } else {
                        ck_assert_mem_eq(gpu.absmax, cpu.absmax, cpu.n_blocks * sizeof(float));
                    }
                    sq_qtensor_free(&cpu);
                    sq_qtensor_free(&gpu);
                    compared++;
                }
    }
    ck_assert_int_eq(compared, 96);
    fprintf(stderr, "test_quant_gpu: %d configurations byte-identical to the CPU\n", compared);
    ck_assert_int_eq(sq_cuda_quant_4bit(SQ_DTYPE_F32, src_d, N, 48, 0, packed_d, absmax_d, stream, &err),
                     SQ_ERR_INVALID);
    ck_assert_int_eq(sq_cuda_quant_4bit(SQ_DTYPE_I32, src_d, N, 64, 0, packed_d, absmax_d, stream, &err),
                     SQ_ERR_UNSUPPORTED);
    sq_cuda_stager_destroy(stg);
    cudaFree(src_d);
    cudaFree(packed_d);
    cudaFree(absmax_d);
    cudaStreamDestroy(stream);
    free(f);
    free(h);
    free(bf);
}
END_TEST

START_TEST(test_stager) {
    enum { M = 10 * 1000 * 1000 + 17 };
    uint8_t *a = malloc(M), *b = malloc(M);
    for (int i = 0; i < M; i++) a[i] = (uint8_t)(i * 2654435761u >> 13);
    void *d = NULL;
    cudaStream_t stream;
    CU(cudaStreamCreate(&stream));
    CU(cudaMalloc(&d, M));
    sq_cuda_stager *stg = NULL;
    sq_error err;
    ck_assert_int_eq(sq_cuda_stager_create(1 << 20, 3, &stg, &err), SQ_OK);
    ck_assert_int_eq(sq_cuda_stage_copy(stg, d, a, M, stream, &err), SQ_OK);
    CU(cudaMemcpyAsync(b, d, M, cudaMemcpyDeviceToHost, stream));
    CU(cudaStreamSynchronize(stream));
    ck_assert_mem_eq(a, b, M);
    sq_cuda_stager_destroy(stg);
    ck_assert_int_eq(sq_cuda_stager_create(0, 3, &stg, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(stg);
    cudaFree(d);
    cudaStreamDestroy(stream);
    free(a);
    free(b);
}
END_TEST

int main(void) {
    int n_dev = sq_test_gpu_count("test_quant_gpu");
    if (n_dev <= 0) return n_dev == 0 ? 77 : 1;
    Suite *s = suite_create("quant_gpu");
    TCase *tc = tcase_create("gpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gpu_equals_cpu);
    tcase_add_test(tc, test_stager);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
