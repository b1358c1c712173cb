/* Owns the fixed worker pool behind sq_pool_run().  Workers sleep on a condition variable
 * between runs; tasks are handed out with an atomic counter so uneven tasks balance.
 * Must never be used from two threads at once (one run at a time per pool). */
#include "shardq/core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct sq_pool {
    int n_threads;          /* workers + the caller */
    pthread_t *workers;     /* (n_threads - 1) */
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    uint64_t generation;    /* bumped per run; workers wait for a new one */
    int n_done;             /* workers finished with the current run */
    bool quit;
    /* the current run */
    sq_pool_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_int_fast64_t next;
};

typedef struct { sq_pool *pool; int thread; } worker_arg;

static void drain(sq_pool *p, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t, thread);
    }
}

static void *worker_main(void *arg_) {
    worker_arg *arg = arg_;
    sq_pool *p = arg->pool;
    int thread = arg->thread;
    free(arg);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        drain(p, thread);
        pthread_mutex_lock(&p->mu);
        if (++p->n_done == p->n_threads - 1) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

sq_status sq_pool_create(int n_threads, sq_pool **out, sq_error *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "thread count %d is above 1024", n_threads);
    sq_pool *p = calloc(1, sizeof *p);
    if (!p) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a thread pool");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->next, 0);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) goto nomem;
        for (int i = 0; i < n_threads - 1; i++) {
            worker_arg *a = malloc(sizeof *a);
            if (!a) { p->n_threads = i + 1; goto nomem; }
            a->pool = p;
            a->thread = i + 1;
            if (pthread_create(&p->workers[i], NULL, worker_main, a) != 0) {
                free(a);
                p->n_threads = i + 1;
                sq_pool_destroy(p);
                return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "cannot start worker thread %d", i + 1);
            }
        }
    }
    *out = p;
    return SQ_OK;
nomem:
    sq_pool_destroy(p);
    return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a thread pool");
}

void sq_pool_destroy(sq_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    if (p->workers)
        for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->workers[i], NULL);
    free(p->workers);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p);
}

int sq_pool_n_threads(const sq_pool *p) { return p ? p->n_threads : 1; }

void sq_pool_run(sq_pool *p, int64_t n_tasks, sq_pool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    p->n_done = 0;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->n_done < p->n_threads - 1) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
