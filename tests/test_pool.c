/* test_pool: the worker pool of src/core/pool.c (dispatch by an atomic generation, join by an
 * atomic count, a bounded spin before sleeping).  Every task of every run runs exactly once
 * with a thread id in range and its writes are visible to the caller when sq_pool_run returns:
 * back-to-back runs (workers still spinning), runs after a pause longer than the spin (workers
 * asleep), a caller that finishes first and must sleep until a slow worker is done, pools of
 * 1 .. 6 threads on this 2-core machine (oversubscribed), and create/destroy with workers busy,
 * spinning or asleep.  A lost wake-up hangs: CTest's timeout fails it. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shardq/core.h"

typedef struct {
    int n_threads;
    int64_t n_tasks;
    int *hits;                /* (n_tasks) plain writes: the join must publish them */
    atomic_int bad_thread;
    int64_t slow_task;        /* this task sleeps slow_us (-1: none) */
    int slow_us;
} run_ctx;

static void sleep_us(int us) {
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void task(void *ctx_, int64_t t, int thread) {
    run_ctx *c = ctx_;
    if (thread < 0 || thread >= c->n_threads) atomic_store(&c->bad_thread, 1);
    if (t == c->slow_task) sleep_us(c->slow_us);
    c->hits[t]++;
}

/* one run of n tasks; every hit exactly 1 */
static void run_once(sq_pool *p, int64_t n, int64_t slow_task, int slow_us, int *hits) {
    run_ctx c = {.n_threads = sq_pool_n_threads(p), .n_tasks = n, .hits = hits,
                 .slow_task = slow_task, .slow_us = slow_us};
    atomic_init(&c.bad_thread, 0);
    memset(hits, 0, (size_t)(n > 0 ? n : 1) * sizeof *hits);
    sq_pool_run(p, n, task, &c);
    ck_assert_int_eq(atomic_load(&c.bad_thread), 0);
    for (int64_t t = 0; t < n; t++)
        ck_assert_msg(hits[t] == 1, "%d threads, %lld tasks: task %lld ran %d times",
                      sq_pool_n_threads(p), (long long)n, (long long)t, hits[t]);
}

static sq_pool *mk_pool(int n) {
    sq_pool *p = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_pool_create(n, &p, &err), SQ_OK);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sq_pool_n_threads(p), n);
    return p;
}

START_TEST(test_back_to_back) {
    static const int64_t counts[] = {0, 1, 2, 3, 7, 64, 1000};
    int *hits = malloc(1000 * sizeof *hits);
    for (int n = 1; n <= 6; n++) {
        sq_pool *p = mk_pool(n);
        for (int r = 0; r < 3000; r++) run_once(p, counts[r % 7], -1, 0, hits);
        sq_pool_destroy(p);
    }
    free(hits);
}
END_TEST

START_TEST(test_after_sleep) {
    int hits[16];
    for (int n = 2; n <= 4; n++) {
        sq_pool *p = mk_pool(n);
        for (int r = 0; r < 30; r++) {
            sleep_us(300 + 100 * (r % 3));   /* longer than the spin: the workers sleep */
            run_once(p, 2 + r % 14, -1, 0, hits);
        }
        sq_pool_destroy(p);
    }
}
END_TEST

START_TEST(test_slow_worker) {
    /* the caller drains the quick tasks and waits longer than the spin for the slow one */
    int hits[8];
    sq_pool *p = mk_pool(2);
    for (int r = 0; r < 20; r++) {
        run_once(p, 8, r % 8, 2000, hits);
        run_once(p, 2, r % 2, 200 + 30 * r, hits);
    }
    sq_pool_destroy(p);
}
END_TEST

START_TEST(test_create_destroy) {
    int hits[8];
    for (int r = 0; r < 200; r++) {
        sq_pool *p = mk_pool(1 + r % 4);
        if (r % 3 == 1) run_once(p, 4, -1, 0, hits);           /* workers still spinning */
        if (r % 3 == 2) {
            run_once(p, 4, -1, 0, hits);
            sleep_us(200);                                     /* workers asleep */
        }
        sq_pool_destroy(p);
    }
    sq_pool_destroy(NULL);
    /* n <= 0: one per online core */
    sq_pool *p = NULL;
    ck_assert_int_eq(sq_pool_create(0, &p, NULL), SQ_OK);
    ck_assert_int_ge(sq_pool_n_threads(p), 1);
    run_once(p, 5, -1, 0, hits);
    sq_pool_destroy(p);
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_pool_create(1025, &p, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_back_to_back);
    tcase_add_test(tc, test_after_sleep);
    tcase_add_test(tc, test_slow_worker);
    tcase_add_test(tc, test_create_destroy);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
