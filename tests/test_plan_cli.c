/* CLI-level tests of `shardq plan` and `shardq topo` (through SQ_SHARDQ_EXE): tables, JSON
 * keys, files written, --discover under mpirun (4 CPU ranks), and every bad input ending with
 * one clear line and a non-zero exit. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define CFG SQ_SOURCE_DIR "/tests/configs/"
#define CLU SQ_SOURCE_DIR "/cluster-configs/"

static char *run(const char *args, int *rc) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", SQ_SHARDQ_EXE, args);
    return sq_test_run(cmd, rc);
}

/* exits non-zero with exactly one line containing `needle` */
static void one_line_failure(const char *args, int want_rc, const char *needle) {
    int rc;
    char *out = run(args, &rc);
    ck_assert_msg(rc == want_rc, "%s: rc %d (want %d): %s", args, rc, want_rc, out);
    ck_assert_msg(sq_test_count_lines(out) == 1, "%s: not one line: %s", args, out);
    ck_assert_msg(strstr(out, needle) != NULL, "%s: '%s' not in: %s", args, needle, out);
    free(out);
}

/* The README's planner example, numbers checked: both tables' layer columns, the bottleneck and
 * max_kv_tokens lines and the compare line (accelerate's map is the real library's, see
 * tests/reference/accelerate_maps.json). */
START_TEST(test_plan_readme_numbers) {
    int rc;
    char *out = run("plan --config " CFG "llama-2-7b.json --cluster " CLU "rtx4090-4x-pcie.json "
                    "--compare accelerate", &rc);
    ck_assert_msg(rc == 0, "%s", out);
    static const char *const want[] = {
        "0-6 (7)+E ", "7-15 (9) ", "16-24 (9) ", "25-31 (7)+H ",
        "# bottleneck 1.6157 ms/step; max_kv_tokens 159463;",
        "0-5 (6)+E ", "6-16 (11) ", "17-27 (11) ", "28-31 (4)+H ",
        "# bottleneck 1.9748 ms/step; max_kv_tokens 129206;",
        "# compare: bottleneck 1.6157 ms (shardq) vs 1.9748 ms (accelerate): -18.2%; "
        "max_kv_tokens 159463 vs 129206\n"};
    const char *at = out;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *f = strstr(at, want[i]);
        ck_assert_msg(f != NULL, "'%s' not found (in order) in: %s", want[i], out);
        at = f + strlen(want[i]);
    }
    free(out);
}
END_TEST

START_TEST(test_plan_table_and_compare) {
    int rc;
    char *out = run("plan --config " CFG "llama-3-70b.json --cluster " CLU "a100-40gb-8x.json "
                    "--compare accelerate", &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "# shardq plan (optimal): llama-3-70b (80 layers), nf4"));
    ck_assert_ptr_nonnull(strstr(out, "# accelerate plan (device_map=\"auto\", transformers 5.23 + accelerate 1.15, emulated)"));
    ck_assert_ptr_nonnull(strstr(out, "# compare: bottleneck"));
    ck_assert_ptr_nonnull(strstr(out, "+E"));
    ck_assert_ptr_nonnull(strstr(out, "+H"));
    ck_assert_ptr_nonnull(strstr(out, "   all  "));
    free(out);
}
END_TEST

START_TEST(test_plan_json_and_files) {
    char *dir = sq_test_tmpdir("plancli");
    char args[2048], path[600];
    snprintf(args, sizeof args,
             "plan --config " CFG "llama-2-7b.json --cluster " CLU "rtx4090-4x-pcie.json --json "
             "--max-seq 2048 --out %s/plan.json --hf-device-map %s/dm.json --svg %s/plan.svg",
             dir, dir, dir);
    int rc;
    char *out = run(args, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    const char *keys[] = {"\"stages\":", "\"rank\":", "\"node\":", "\"device\":", "\"first_layer\":",
                          "\"n_layers\":", "\"has_embed\":", "\"has_head\":", "\"weights_bytes\":",
                          "\"kv_bytes\":", "\"capacity_bytes\":", "\"est_step_ms\":",
                          "\"bottleneck_ms\":", "\"max_kv_tokens\":", "\"plan_ms\":", "\"totals\":"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        ck_assert_msg(strstr(out, keys[i]) != NULL, "missing %s", keys[i]);
    ck_assert_ptr_nonnull(strstr(out, "\"max_seq\":\t2048"));
    free(out);
    const char *files[] = {"plan.json", "dm.json", "plan.svg"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        size_t n = 0;
        char *t = sq_test_read_file(path, &n);
        ck_assert_msg(t && n > 100, "%s", path);
        if (i == 1) ck_assert_ptr_nonnull(strstr(t, "\"model.layers.31\":\t3"));
        free(t);
        remove(path);
    }
    rmdir(dir);
    free(dir);
}
END_TEST

/* --hf-device-map: values are CUDA indices on the node or "cpu"; a plan over two nodes is
 * refused before any file is written */
START_TEST(test_hf_device_map_devices) {
    char *dir = sq_test_tmpdir("planhf");
    char args[2048], path[600];
    int rc;
    snprintf(args, sizeof args,
             "plan --config " CFG "llama-2-7b.json --cluster " CLU "cpu-4rank.json --max-seq 512 "
             "--hf-device-map %s/cpu.json", dir);
    char *out = run(args, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/cpu.json", dir);
    size_t n = 0;
    char *t = sq_test_read_file(path, &n);
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_nonnull(strstr(t, "\"model.embed_tokens\":\t\"cpu\""));
    ck_assert_ptr_nonnull(strstr(t, "\"model.layers.31\":\t\"cpu\""));
    ck_assert_ptr_nonnull(strstr(t, "\"lm_head\":\t\"cpu\""));
    ck_assert_ptr_null(strstr(t, ":\t0"));
    free(t);
    remove(path);

    snprintf(args, sizeof args,
             "plan --config " CFG "llama-3-70b.json --cluster " CLU "dgx-h100-2node.json "
             "--out %s/plan.json --hf-device-map %s/dm.json", dir, dir);
    one_line_failure(args, 1, "--hf-device-map: the plan spans nodes node0 and node1, but transformers' "
                              "device_map places the modules of one process on one machine");
    snprintf(path, sizeof path, "%s/plan.json", dir);
    ck_assert_int_eq(access(path, F_OK), -1);
    snprintf(path, sizeof path, "%s/dm.json", dir);
    ck_assert_int_eq(access(path, F_OK), -1);
    rmdir(dir);
    free(dir);
}
END_TEST

START_TEST(test_plan_discover_mpi) {
    /* 4 CPU ranks on this box: one plan, every rank agreeing, 4 stages of CPU devices */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s " SQ_MPIRUN_TEST_FLAGS " -np 4 %s plan --config " CFG "llama-2-7b.json --discover "
             "--max-seq 512 --json", SQ_MPIEXEC, SQ_SHARDQ_EXE);
    int rc;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\"n_ranks\":\t4"));
    ck_assert_ptr_nonnull(strstr(out, "\"rank\":\t3"));
    ck_assert_ptr_null(strstr(out, "\"rank\":\t4"));
    ck_assert_ptr_nonnull(strstr(out, "\"device\":\t\"cpu\""));
    /* printed once (rank 0 only) */
    const char *first = strstr(out, "\"format\"");
    ck_assert_ptr_nonnull(first);
    ck_assert_ptr_null(strstr(first + 1, "\"format\""));
    free(out);
}
END_TEST

START_TEST(test_topo) {
    int rc;
    char *out = run("topo --xml " SQ_SOURCE_DIR "/tests/topologies/dgx-h100-2socket-8gpu.xml", &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "# host dgx01: 2 packages, 2 NUMA nodes, 16 cores, 32 PUs, 2048.0 GiB host memory, 8 GPUs"));
    ck_assert_ptr_nonnull(strstr(out, "0000:db:00.0"));
    free(out);
    out = run("topo --json", &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\"local\":"));
    ck_assert_ptr_nonnull(strstr(out, "\"devices\":"));
    free(out);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s " SQ_MPIRUN_TEST_FLAGS " -np 2 %s topo", SQ_MPIEXEC, SQ_SHARDQ_EXE);
    out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "cluster 'mpirun: 2 ranks on 1 node'"));
    free(out);
    one_line_failure("topo --xml /nonexistent.xml", 1, "/nonexistent.xml: hwloc cannot read this XML topology");
}
END_TEST

START_TEST(test_bad_inputs) {
    char *dir = sq_test_tmpdir("planbad");
    char p1[512], p2[512], p3[512], args[2048];
    snprintf(p1, sizeof p1, "%s/malformed.json", dir);
    snprintf(p2, sizeof p2, "%s/empty-node.json", dir);
    snprintf(p3, sizeof p3, "%s/negative.json", dir);
    const char *j1 = "{\"nodes\": [{\"gpus\": [ }";
    const char *j2 = "{\"nodes\": [{\"name\": \"ghost\", \"gpus\": []}]}";
    const char *j3 = "{\"nodes\": [{\"gpus\": [{\"name\": \"A10\", \"memory_gib\": -24}]}]}";
    sq_test_write_file(p1, j1, strlen(j1));
    sq_test_write_file(p2, j2, strlen(j2));
    sq_test_write_file(p3, j3, strlen(j3));
    const char *base = "plan --config " CFG "llama-2-7b.json --cluster ";
    snprintf(args, sizeof args, "%s%s", base, p1);
    one_line_failure(args, 1, "malformed.json: malformed JSON near byte");
    snprintf(args, sizeof args, "%s%s", base, p2);
    one_line_failure(args, 1, "nodes[0] ('ghost'): a node with no GPUs needs host_memory_gib > 0");
    snprintf(args, sizeof args, "%s%s", base, p3);
    one_line_failure(args, 1, "memory_gib: must be > 0 (got -24)");
    one_line_failure("plan --config " CFG "llama-2-7b.json --cluster " CLU "rtx4090-4x-pcie.json "
                     "--max-memory 4=20GiB", 1, "--max-memory: no device 4: the cluster has 4 (ranks 0..3)");
    one_line_failure("plan --config " CFG "llama-2-7b.json --cluster " CLU "rtx4090-4x-pcie.json "
                     "--max-memory node2:0=20GiB", 1, "no node 'node2'");
    one_line_failure("plan --config " CFG "llama-2-7b.json --cluster " CLU "rtx4090-4x-pcie.json --batch 0",
                     2, "--batch must be a whole number in 1..1048576 (got '0')");
    one_line_failure("plan --config " CFG "llama-2-7b.json", 2, "give --cluster FILE or --discover");
    /* the scheme flags: one parser for plan, quantize, run and bench, the same messages */
    const char *cmds[] = {"plan --config " CFG "llama-2-7b.json --cluster " CLU "cpu-4rank.json",
                          "quantize /nonexistent --out /nonexistent-out",
                          "run /nonexistent --prompt-ids 1", "bench --preset-model tiny"};
    for (int c = 0; c < 4; c++) {
        snprintf(args, sizeof args, "%s --blocksize 100", cmds[c]);
        one_line_failure(args, 2, "--blocksize must be a power of two in 32..4096, not '100'");
        snprintf(args, sizeof args, "%s --quant nf5", cmds[c]);
        one_line_failure(args, 2, c == 1 ? "--quant must be nf4, fp4, int8 or int8-zp, not 'nf5'"
                                         : "--quant must be nf4, fp4, int8, int8-zp or none, not 'nf5'");
        snprintf(args, sizeof args, "%s --quant none --double-quant", cmds[c]);
        one_line_failure(args, 2, c == 1 ? "--quant must be nf4, fp4, int8 or int8-zp, not 'none'"
                                         : "--double-quant quantizes the 4-bit absmax: it needs --quant nf4 or fp4");
        snprintf(args, sizeof args, "%s --quant int8 --double-quant", cmds[c]);
        one_line_failure(args, 2, "--double-quant quantizes the 4-bit absmax: int8 has one float32 scale per row");
    }
    one_line_failure("plan --config " CFG "llama-3.1-405b.json --cluster " CLU "rtx4090-4x-pcie.json",
                     1, "does not fit: 126 layers on 4 devices fall short by ");
    one_line_failure("plan --config /nonexistent/config.json --cluster " CLU "cpu-4rank.json", 1,
                     "/nonexistent/config.json");
    remove(p1); remove(p2); remove(p3); rmdir(dir);
    free(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("plan_cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_plan_table_and_compare);
    tcase_add_test(tc, test_plan_readme_numbers);
    tcase_add_test(tc, test_plan_json_and_files);
    tcase_add_test(tc, test_hf_device_map_devices);
    tcase_add_test(tc, test_plan_discover_mpi);
    tcase_add_test(tc, test_topo);
    tcase_add_test(tc, test_bad_inputs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
