/* Owns the fixed worker pool behind sq_pool_run().  Tasks are handed out with an atomic
 * counter so uneven tasks balance; the caller works too.
 *
 * Dispatch and join are cheap because a decode step runs a few hundred small runs back to back
 * (one per op): waking a worker through a condition variable costs a futex call and a
 * scheduler wake-up per run, as much as the op itself on a small model.  So a run is published
 * by bumping an atomic generation counter and joined by an atomic count of workers done; a
 * worker that finishes a run (and the caller waiting on a join) spins on those counters for a
 * bounded time (SQ_POOL_SPIN_NS, with a pause per probe) and only then sleeps on the condition
 * variable.  The bound keeps the pool polite when the machine is oversubscribed (several MPI
 * ranks x threads on few cores): a spinner gives its core up after tens of microseconds.
 * Sleep and wake-up pair through seq_cst counters (n_sleeping, caller_sleeping) so no wake-up
 * is lost: a sleeper announces itself before its last look at the counter, a waker looks for
 * sleepers after changing it.
 * Must never be used from two threads at once (one run at a time per pool). */
#include "shardq/core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_POOL_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define SQ_POOL_PAUSE() __asm__ __volatile__("yield")
#else
#define SQ_POOL_PAUSE() ((void)0)
#endif

/* How long a worker (or the joining caller) spins before it sleeps: long enough to cover the
 * gap between two ops of a decode step (the caller's serial work: norms, adds, attention of a
 * short sequence), short enough that an oversubscribed machine loses little to it. */
#define SQ_POOL_SPIN_NS 50000

struct sq_pool {
    int n_threads;                 /* workers + the caller */
    pthread_t *workers;            /* (n_threads - 1) */
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    _Alignas(64) atomic_uint_fast64_t generation;   /* bumped per run; workers wait for a new one */
    atomic_int n_sleeping;         /* workers asleep (or about to be) on start_cv */
    atomic_bool quit;
    _Alignas(64) atomic_int n_done;                 /* workers finished with the current run */
    atomic_int caller_sleeping;    /* the caller is asleep (or about to be) on done_cv */
    /* the current run: written by the caller before it bumps generation */
    _Alignas(64) sq_pool_fn fn;
    void *ctx;
    int64_t n_tasks;
    _Alignas(64) atomic_int_fast64_t next;
};

typedef struct { sq_pool *pool; int thread; } worker_arg;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static void drain(sq_pool *p, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t, thread);
    }
}

/* Spin until *gen differs from seen or quit is set, for at most SQ_POOL_SPIN_NS; the clock is
 * read every 16 probes.  Returns whether the wait ended. */
static bool spin_for_run(sq_pool *p, uint64_t seen) {
    uint64_t t0 = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(&p->generation, memory_order_acquire) != seen ||
            atomic_load_explicit(&p->quit, memory_order_relaxed))
            return true;
        if ((i & 15) == 0) {
            uint64_t t = now_ns();
            if (i == 0) t0 = t;
            else if (t - t0 > SQ_POOL_SPIN_NS) return false;
        }
        SQ_POOL_PAUSE();
    }
}

static void *worker_main(void *arg_) {
    worker_arg *arg = arg_;
    sq_pool *p = arg->pool;
    int thread = arg->thread;
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        if (!spin_for_run(p, seen)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while (!atomic_load(&p->quit) && atomic_load(&p->generation) == seen)
                pthread_cond_wait(&p->start_cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        drain(p, thread);
        /* the last worker done wakes the caller if it went to sleep */
        if (atomic_fetch_add(&p->n_done, 1) + 1 == p->n_threads - 1 &&
            atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

sq_status sq_pool_create(int n_threads, sq_pool **out, sq_error *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "thread count %d is above 1024", n_threads);
    sq_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
    if (!p) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a thread pool");
    memset(p, 0, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->quit, false);
    atomic_init(&p->n_done, 0);
    atomic_init(&p->caller_sleeping, 0);
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
    atomic_store(&p->quit, true);
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
    const int n_workers = p->n_threads - 1;
    /* every worker checked in for the previous run, so none reads these now */
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1);   /* seq_cst: publishes the run, then the look below */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->start_cv);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, 0);
    /* join: spin a while, then sleep until the last worker signals */
    uint64_t t0 = 0;
    for (unsigned i = 0; atomic_load_explicit(&p->n_done, memory_order_acquire) < n_workers; i++) {
        if ((i & 15) == 0) {
            uint64_t t = now_ns();
            if (i == 0) t0 = t;
            else if (t - t0 > SQ_POOL_SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                atomic_store(&p->caller_sleeping, 1);
                while (atomic_load(&p->n_done) < n_workers) pthread_cond_wait(&p->done_cv, &p->mu);
                atomic_store(&p->caller_sleeping, 0);
                pthread_mutex_unlock(&p->mu);
                break;
            }
        }
        SQ_POOL_PAUSE();
    }
    atomic_thread_fence(memory_order_acquire);
}
