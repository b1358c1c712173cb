/* Tests of the trace module, run under mpirun with 1 and 2 ranks (CK_FORK=no):
 *   - a NULL tracer records nothing and costs nothing (every call returns);
 *   - events from two threads at once are all kept; the JSON passes the trace-event checker
 *     (tests/trace_check.h: valid JSON, required keys, ts / dur numbers, spans nest), details
 *     with quotes and control bytes are escaped, byte counts appear as args;
 *   - the cap: past max_events events are counted as dropped, never stored, and the count is
 *     in the file;
 *   - the collective write: one file with every rank's events as pid = rank, the ranks'
 *     clocks aligned (spans recorded right after a barrier start close together), no
 *     temporary left; an unwritable path fails on every rank with the same status;
 *   - the checker itself rejects spans that overlap without nesting and events missing keys;
 *   - the example in docs/ (the demo's 2-rank run, `--trace`) passes the checker and holds both
 *     ranks' load and pipeline spans. */
#include <check.h>
#include <dirent.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shardq/trace.h"
#include "testutil.h"
#include "trace_check.h"

static int g_rank, g_size;
static char g_dir[1024];

static bool all_ranks(bool ok) {
    int mine = ok, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all != 0;
}

START_TEST(test_null_tracer) {
    sq_trace *t = NULL;
    double t0 = sq_trace_begin(t);
    ck_assert(t0 == 0);
    sq_trace_end(t, 0, "x", t0);
    sq_trace_end_ex(t, 0, "x", t0, "d", 5);
    sq_trace_event(t, 0, "x", 1, 2, NULL, -1);
    sq_trace_set_track_name(t, 0, "compute");
    ck_assert_uint_eq(sq_trace_n_events(t), 0);
    ck_assert_uint_eq(sq_trace_n_dropped(t), 0);
    sq_trace_destroy(NULL);
}
END_TEST

typedef struct { sq_trace *t; int tid, n; } rec_arg;
static void *recorder(void *a_) {
    rec_arg *a = a_;
    for (int i = 0; i < a->n; i++) {
        double outer = sq_trace_begin(a->t);
        double inner = sq_trace_begin(a->t);
        sq_trace_end_ex(a->t, a->tid, "quantize", inner, "layer \"0\"\n", 4096);
        sq_trace_end(a->t, a->tid, "step", outer);
    }
    return NULL;
}

START_TEST(test_threads_and_json) {
    sq_trace *t = NULL;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_trace_create(g_rank, 0, &t, &err), SQ_OK);
    sq_trace_set_track_name(t, 0, "compute");
    sq_trace_set_track_name(t, 1, "reader \"io\"");
    rec_arg a = {t, 0, 500}, b = {t, 1, 500};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, recorder, &b), 0);
    recorder(&a);
    pthread_join(th, NULL);
    ck_assert_uint_eq(sq_trace_n_events(t), 2000);
    ck_assert_uint_eq(sq_trace_n_dropped(t), 0);
    char *json = NULL;
    size_t len = 0;
    ck_assert_int_eq(sq_trace_to_json(t, &json, &len, &err), SQ_OK);
    trace_stats st;
    char why[512] = "";
    ck_assert_msg(trace_check(json, len, &st, why, sizeof why), "%s", why);
    ck_assert_int_eq(st.n_x, 2000);
    ck_assert_int_eq(st.n_pids, 1);
    ck_assert_int_eq(st.max_pid, g_rank);
    ck_assert_str_eq(st.names, "|quantize|step|");
    ck_assert_msg(strstr(json, "\"detail\":\"layer \\\"0\\\"\\n\",\"bytes\":4096"), "%.400s", json);
    ck_assert_msg(strstr(json, "\"name\":\"reader \\\"io\\\"\""), "track name not escaped");
    ck_assert(st.dropped == 0);
    free(json);
    sq_trace_destroy(t);
}
END_TEST

START_TEST(test_cap_counts_drops) {
    sq_trace *t = NULL;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_trace_create(g_rank, 10, &t, &err), SQ_OK);
    for (int i = 0; i < 25; i++) sq_trace_event(t, 0, "read", 100.0 * i, 50, NULL, i);
    ck_assert_uint_eq(sq_trace_n_events(t), 10);
    ck_assert_uint_eq(sq_trace_n_dropped(t), 15);
    char *json = NULL;
    size_t len = 0;
    ck_assert_int_eq(sq_trace_to_json(t, &json, &len, &err), SQ_OK);
    trace_stats st;
    char why[512] = "";
    ck_assert_msg(trace_check(json, len, &st, why, sizeof why), "%s", why);
    ck_assert_int_eq(st.n_x, 10);
    ck_assert(st.dropped == 15);
    /* the earliest event is at ts 0, the tenth at 900 us */
    ck_assert_msg(strstr(json, "\"ts\":0.000,\"dur\":50.000") &&
                  strstr(json, "\"ts\":900.000,\"dur\":50.000"), "%.300s", json);
    free(json);
    sq_trace_destroy(t);
}
END_TEST

START_TEST(test_collective_write) {
    sq_trace *t = NULL;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_trace_create(g_rank, 0, &t, &err), SQ_OK);
    sq_trace_set_track_name(t, 0, "compute");
    /* a rank-dependent sleep before the barrier: the aligned spans after it start together */
    usleep((useconds_t)(g_rank * 30000));
    double s0 = sq_trace_begin(t);
    usleep(2000);
    sq_trace_end(t, 0, "before", s0);
    MPI_Barrier(MPI_COMM_WORLD);
    double s1 = sq_trace_begin(t);
    usleep(1000);
    sq_trace_end(t, 0, "aligned", s1);
    char path[1100];
    snprintf(path, sizeof path, "%s/all.json", g_dir);
    sq_status rc = sq_trace_write(t, MPI_COMM_WORLD, path, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK), "rank %d: %s", g_rank, err.msg);
    char fail[600] = "";
    if (g_rank == 0) {
        size_t len = 0;
        char *json = sq_test_read_file(path, &len);
        trace_stats st;
        char why[512] = "";
        if (!json || !trace_check(json, len, &st, why, sizeof why))
            snprintf(fail, sizeof fail, "bad file: %s", json ? why : "missing");
        else if (st.n_x != 2 * g_size || st.n_pids != g_size || st.max_pid != g_size - 1)
            snprintf(fail, sizeof fail, "%d events over %d pids", st.n_x, st.n_pids);
        /* the "aligned" spans: every rank's within 20 ms of rank 0's */
        cJSON *root = json ? cJSON_Parse(json) : NULL;
        const cJSON *e;
        double first = -1;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "traceEvents")) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (!fail[0] && cJSON_IsString(nm) && !strcmp(nm->valuestring, "aligned")) {
                double ts = cJSON_GetObjectItemCaseSensitive(e, "ts")->valuedouble;
                if (first < 0) first = ts;
                else if (ts - first > 20000 || first - ts > 20000)
                    snprintf(fail, sizeof fail, "aligned spans %.0f us apart", ts - first);
            }
        }
        cJSON_Delete(root);
        free(json);
        DIR *d = opendir(g_dir);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (strstr(de->d_name, ".tmp.")) snprintf(fail, sizeof fail, "left: %s", de->d_name);
        if (d) closedir(d);
    }
    MPI_Bcast(fail, sizeof fail, MPI_CHAR, 0, MPI_COMM_WORLD);
    ck_assert_msg(!fail[0], "%s", fail);
    /* an unwritable path: the same failure everywhere */
    snprintf(path, sizeof path, "%s/no/such/folder/t.json", g_dir);
    rc = sq_trace_write(g_rank == 0 ? t : NULL, MPI_COMM_WORLD, path, &err);
    int code = (int)rc, max = 0, min = 0;
    MPI_Allreduce(&code, &max, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&code, &min, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    ck_assert_int_eq(min, SQ_ERR_IO);
    ck_assert_int_eq(max, SQ_ERR_IO);
    ck_assert(access(path, F_OK) != 0);
    sq_trace_destroy(t);
}
END_TEST

START_TEST(test_checker_rejects) {
    trace_stats st;
    char why[512];
    const char *overlap =
        "{\"traceEvents\":[{\"name\":\"a\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":0,\"dur\":10},"
        "{\"name\":\"b\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":5,\"dur\":10}]}";
    ck_assert(!trace_check(overlap, strlen(overlap), &st, why, sizeof why));
    ck_assert_msg(strstr(why, "must nest"), "%s", why);
    const char *other_tid =   /* the same spans on two tracks are fine */
        "{\"traceEvents\":[{\"name\":\"a\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":0,\"dur\":10},"
        "{\"name\":\"b\",\"ph\":\"X\",\"pid\":0,\"tid\":1,\"ts\":5,\"dur\":10}]}";
    ck_assert_msg(trace_check(other_tid, strlen(other_tid), &st, why, sizeof why), "%s", why);
    const char *no_dur = "{\"traceEvents\":[{\"name\":\"a\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":0}]}";
    ck_assert(!trace_check(no_dur, strlen(no_dur), &st, why, sizeof why));
    const char *not_json = "{\"traceEvents\":[";
    ck_assert(!trace_check(not_json, strlen(not_json), &st, why, sizeof why));
}
END_TEST

START_TEST(test_docs_example) {
    size_t len = 0;
    char *json = sq_test_read_file(SQ_SOURCE_DIR "/docs/trace-demo.json", &len);
    ck_assert_msg(json, "docs/trace-demo.json is missing");
    trace_stats st;
    char why[512] = "";
    ck_assert_msg(trace_check(json, len, &st, why, sizeof why), "docs/trace-demo.json: %s", why);
    ck_assert_int_eq(st.n_pids, 2);
    const char *want[] = {"|read|", "|repack/upload|", "|embed|", "|forward|", "|sample|",
                          "|receiving activations|", "|receiving token ids|"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(st.names, want[i]), "no %s span in %s", want[i], st.names);
    ck_assert(st.dropped == 0);
    free(json);
}
END_TEST

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    if (g_rank == 0) {
        char *d = sq_test_tmpdir("trace");
        snprintf(g_dir, sizeof g_dir, "%s", d ? d : "");
        free(d);
    }
    MPI_Bcast(g_dir, sizeof g_dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    Suite *s = suite_create("trace");
    TCase *tc = tcase_create("trace");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_null_tracer);
    tcase_add_test(tc, test_threads_and_json);
    tcase_add_test(tc, test_cap_counts_drops);
    tcase_add_test(tc, test_collective_write);
    tcase_add_test(tc, test_checker_rejects);
    tcase_add_test(tc, test_docs_example);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0 && !failed && g_dir[0]) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    }
    MPI_Finalize();
    return failed ? 1 : 0;
}
