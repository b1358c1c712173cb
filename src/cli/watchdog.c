/* The stall watchdog of run, bench, perplexity and serve: sq_run reports each phase of its
 * bring-up and teardown (sq_run_options.on_phase); a watched phase that lasts longer than the
 * limit (--stall-timeout) ends the job with one line naming the rank and the phase, so a rank
 * stuck in a collective, a device call or MPI_Finalize never hangs the job silently.  Loading
 * and generating are not watched: the loader reports progress and the pipeline's heartbeats
 * (--timeout) find a silent peer there.
 * Owns one thread per process; ends the process with _exit(1) (mpirun then ends the others). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/core.h"

struct sq_cli_watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int rank;
    double limit_s;
    const char *phase;   /* static strings; NULL: nothing watched */
    double since;        /* sq_now_s() when the phase began */
    bool stop;
};

static void *watch(void *arg) {
    sq_cli_watchdog *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        int rc = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        if (rc != 0 && rc != ETIMEDOUT) break;
        if (w->stop || !w->phase) continue;
        double dt = sq_now_s() - w->since;
        if (dt > w->limit_s) {
            fflush(stdout);
            fprintf(stderr, "shardq: rank %d: no progress for %g s while %s: ending the job "
                            "(a rank is stuck; --stall-timeout sets the limit)\n",
                    w->rank, w->limit_s, w->phase);
            fflush(stderr);
            _exit(1);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

sq_cli_watchdog *sq_cli_watchdog_start(int rank, double limit_s) {
    if (!(limit_s > 0)) return NULL;
    sq_cli_watchdog *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->rank = rank;
    w->limit_s = limit_s;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, watch, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return NULL;
    }
    return w;
}

void sq_cli_watchdog_phase(void *user, const char *phase, bool watched) {
    sq_cli_watchdog *w = user;
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->phase = watched ? phase : NULL;
    w->since = sq_now_s();
    pthread_mutex_unlock(&w->mu);
}

void sq_cli_watchdog_stop(sq_cli_watchdog *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void sq_cli_watch(sq_cli_ctx *ctx, sq_run_options *o) {
    if (!ctx->watchdog) ctx->watchdog = sq_cli_watchdog_start(ctx->rank, o->stall_timeout_s);
    o->on_phase = ctx->watchdog ? sq_cli_watchdog_phase : NULL;
    o->phase_user = ctx->watchdog;
}
