/* Tests of `shardq run --backend / --transport / --device` (issue 6) through the executable,
 * alone and under mpirun with 1 and 2 ranks, on a make-model tiny checkpoint:
 *  - the name parsers of runtime.h;
 *  - --backend cpu --transport mpi gives the same tokens as the default on a machine without a
 *    GPU (or in a build without CUDA), and --json / the summary name the backend and transport;
 *  - --backend cuda: in a build without CUDA, or on a machine without a CUDA device, exit 1 with
 *    one line naming the cause on every rank count, quickly; on a machine with one (CUDA build)
 *    it runs and reports cuda;
 *  - --transport nccl with the cpu backend, --device with --backend cpu: one line, exit 1;
 *    bad flag values: exit 2. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SHARDQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "shardq/core.h"
#include "shardq/runtime.h"
#include "testutil.h"

static char *g_root;
static char g_model[1024];
static int g_gpus;   /* CUDA devices this test sees (0 in a build without CUDA) */

#define SINGLETON SQ_SINGLETON_ENV
#define PROMPT "--prompt-ids '3,7,11,5;9,4;13,8,6' --max-new-tokens 5 --ignore-eos"

/* `shardq run ARGS` alone (np 0) or under mpirun -np N, with a 60 s guard; output malloc'd */
static char *run_np(int np, int *rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *run_np(int np, int *rc, const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    if (np == 0)
        snprintf(cmd, sizeof cmd, SINGLETON "timeout -s KILL 60 '%s' run %s", SQ_SHARDQ_EXE, args);
    else
        snprintf(cmd, sizeof cmd, "timeout -s KILL 60 '%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' run %s",
                 SQ_MPIEXEC, np, SQ_SHARDQ_EXE, args);
    char *out = sq_test_run(cmd, rc);
    ck_assert_ptr_nonnull(out);
    return out;
}

static cJSON *json_of(const char *out) {
    const char *p = strstr(out, "{\"model\"");
    ck_assert_msg(p != NULL, "no JSON in: %s", out);
    cJSON *j = cJSON_Parse(p);
    ck_assert_msg(j != NULL, "not JSON: %s", p);
    return j;
}

static const char *str_of(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsString(v), "no string '%s'", key);
    return v->valuestring;
}

static int shardq_lines(const char *out) {
    int n = 0;
    for (const char *q = out; (q = strstr(q, "shardq: ")) != NULL; q++) n++;
    return n;
}

/* exit 1, one shardq line containing `want`, within 30 s */
static void expect_one_line(int np, const char *want, const char *extra) {
    int rc = 0;
    double t0 = sq_now_s();
    char *out = run_np(np, &rc, "'%s' " PROMPT " %s", g_model, extra);
    ck_assert_msg(rc == 1, "np %d %s: rc %d: %s", np, extra, rc, out);
    ck_assert_msg(sq_now_s() - t0 < 30, "np %d %s: took too long", np, extra);
    ck_assert_msg(strstr(out, want), "np %d %s: want '%s' in: %s", np, extra, want, out);
    ck_assert_msg(shardq_lines(out) == 1, "np %d %s: not one line: %s", np, extra, out);
    free(out);
}

START_TEST(names) {
    sq_run_backend b = SQ_RUN_BACKEND_CPU;
    sq_run_transport t = SQ_RUN_TRANSPORT_MPI;
    ck_assert(sq_run_backend_from_name("auto", &b) && b == SQ_RUN_BACKEND_AUTO);
    ck_assert(sq_run_backend_from_name("cuda", &b) && b == SQ_RUN_BACKEND_CUDA);
    ck_assert(sq_run_backend_from_name("cpu", &b) && b == SQ_RUN_BACKEND_CPU);
    ck_assert(!sq_run_backend_from_name("gpu", &b) && b == SQ_RUN_BACKEND_CPU);
    ck_assert(!sq_run_backend_from_name(NULL, &b));
    ck_assert(sq_run_transport_from_name("nccl", &t) && t == SQ_RUN_TRANSPORT_NCCL);
    ck_assert(sq_run_transport_from_name("auto", &t) && t == SQ_RUN_TRANSPORT_AUTO);
    ck_assert(sq_run_transport_from_name("mpi", &t) && t == SQ_RUN_TRANSPORT_MPI);
    ck_assert(!sq_run_transport_from_name("MPI", &t) && t == SQ_RUN_TRANSPORT_MPI);
    sq_run_options o = sq_run_options_default();
    ck_assert_int_eq(o.backend, SQ_RUN_BACKEND_AUTO);
    ck_assert_int_eq(o.transport, SQ_RUN_TRANSPORT_AUTO);
    ck_assert_int_eq(o.device, -1);
}
END_TEST

/* explicit cpu + mpi == the default, on 1 and 2 ranks, for none and nf4 */
START_TEST(explicit_cpu_mpi_equals_default) {
    const char *quant = _i ? "nf4" : "none";
    for (int np = 1; np <= 2; np++) {
        int rc = 0;
        char *a = run_np(np, &rc, "'%s' --quant %s " PROMPT " --json", g_model, quant);
        ck_assert_msg(rc == 0, "%s", a);
        char *b = run_np(np, &rc, "'%s' --quant %s " PROMPT " --json --backend cpu --transport mpi",
                         g_model, quant);
        ck_assert_msg(rc == 0, "%s", b);
        cJSON *ja = json_of(a), *jb = json_of(b);
        char *ta = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(ja, "tokens"));
        char *tb = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(jb, "tokens"));
        ck_assert_msg(!strcmp(ta, tb), "np %d %s: default %s, cpu/mpi %s", np, quant, ta, tb);
        ck_assert_msg(strstr(ta, "],[") && strlen(ta) > 20, "%s", ta);   /* 3 sequences of 5 */
        ck_assert_str_eq(str_of(jb, "backend_kind"), "cpu");
        ck_assert_str_eq(str_of(jb, "transport"), "mpi");
        ck_assert_msg(!strncmp(str_of(jb, "backend"), "cpu", 3), "%s", str_of(jb, "backend"));
        /* the default: cpu + mpi where there is no GPU; cuda + (nccl or mpi) where there is */
        if (g_gpus == 0) {
            ck_assert_str_eq(str_of(ja, "backend_kind"), "cpu");
            ck_assert_str_eq(str_of(ja, "transport"), "mpi");
        } else {
            ck_assert_str_eq(str_of(ja, "backend_kind"), "cuda");
        }
        const cJSON *stages = cJSON_GetObjectItemCaseSensitive(jb, "stages");
        ck_assert_int_eq(cJSON_GetArraySize(stages), np);
        for (int s = 0; s < np; s++)
            ck_assert_int_eq((int)cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(stages, s), "device")->valuedouble, -1);
        free(ta);
        free(tb);
        cJSON_Delete(ja);
        cJSON_Delete(jb);
        free(a);
        free(b);
    }
    /* the human summary names them too */
    int rc = 0;
    char *h = run_np(2, &rc, "'%s' --quant %s " PROMPT " --backend cpu --transport mpi", g_model, quant);
    ck_assert_msg(rc == 0 && strstr(h, "(backend cpu-") && strstr(h, ", transport mpi)"), "%s", h);
    free(h);
}
END_TEST

/* --backend cuda where it cannot run: one line, exit 1, on every rank count */
START_TEST(cuda_refused_without_cuda_or_gpu) {
    if (g_gpus > 0) {   /* a GPU machine: it runs and says so */
        int rc = 0;
        char *o = run_np(1, &rc, "'%s' " PROMPT " --json --backend cuda --transport mpi", g_model);
        ck_assert_msg(rc == 0, "%s", o);
        cJSON *j = json_of(o);
        ck_assert_str_eq(str_of(j, "backend_kind"), "cuda");
        ck_assert_msg(!strncmp(str_of(j, "backend"), "cuda:", 5), "%s", str_of(j, "backend"));
        cJSON_Delete(j);
        free(o);
        return;
    }
#ifdef SHARDQ_HAVE_CUDA
    const char *want = "--backend cuda: no CUDA device on this rank's machine, use --backend cpu";
#else
    const char *want = "--backend cuda: this shardq was built without CUDA";
#endif
    for (int np = 0; np <= 2; np++) {
        expect_one_line(np, want, "--backend cuda");
        expect_one_line(np, want, "--backend cuda --transport mpi --device 0");
    }
}
END_TEST

START_TEST(nccl_with_cpu_and_bad_flags) {
    for (int np = 1; np <= 2; np++) {
        expect_one_line(np, "--transport nccl moves activations in GPU memory: it needs the cuda backend "
                            "(this run uses cpu", "--backend cpu --transport nccl");
        expect_one_line(np, "--device 0 goes with the cuda backend, not --backend cpu",
                        "--backend cpu --device 0");
    }
    if (g_gpus == 0)   /* auto resolves to cpu here: nccl cannot be had either */
        expect_one_line(2, "it needs the cuda backend (this run uses cpu", "--transport nccl");
    /* usage errors: exit 2, one line naming the flag */
    static const char *const bad[][2] = {
        {"--backend gpu", "--backend must be auto, cpu or cuda, not 'gpu'"},
        {"--transport ucx", "--transport must be auto, mpi or nccl, not 'ucx'"},
        {"--device -1", "--device must be a CUDA device number 0..1023, not '-1'"},
        {"--backend", "--backend needs a value"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int rc = 0;
        char *o = run_np(0, &rc, "'%s' --prompt-ids 1 %s", g_model, bad[k][0]);
        ck_assert_msg(rc == 2 && strstr(o, bad[k][1]), "%s: rc %d: %s", bad[k][0], rc, o);
        free(o);
    }
}
END_TEST

int main(void) {
#ifdef SHARDQ_HAVE_CUDA
    if (cudaGetDeviceCount(&g_gpus) != cudaSuccess) g_gpus = 0;
#endif
    g_root = sq_test_tmpdir("runbe");
    if (!g_root) return 1;
    snprintf(g_model, sizeof g_model, "%s/tiny", g_root);
    int rc = 0;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, SINGLETON "'%s' make-model --out '%s'", SQ_SHARDQ_EXE, g_model);
    char *out = sq_test_run(cmd, &rc);
    if (rc != 0) {
        fprintf(stderr, "fixture failed: %s\n", out ? out : "");
        return 1;
    }
    free(out);
    Suite *s = suite_create("run_backend");
    TCase *tc = tcase_create("run_backend");
    tcase_set_timeout(tc, 200);
    tcase_add_test(tc, names);
    tcase_add_loop_test(tc, explicit_cpu_mpi_equals_default, 0, 2);
    tcase_add_test(tc, cuda_refused_without_cuda_or_gpu);
    tcase_add_test(tc, nccl_with_cpu_and_bad_flags);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!failed && sq_test_rmtree(g_root) != 0) failed = 1;
    free(g_root);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
