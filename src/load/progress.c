/* Owns the loader's progress across ranks: non-root ranks send byte counts to rank 0 with
 * non-blocking point-to-point messages (at most one in flight), rank 0 polls for them and
 * calls the progress callback.  No collective runs inside the load loop, so a slow rank never
 * holds a fast one.  Must never print, block outside start / finish, or fail a load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "load_impl.h"

#define PROG_TAG 7301

static void report(load_prog *p, bool final) {
    if (!p->fn) return;
    uint64_t done = p->my_done;
    int ranks_done = 0;
    if (p->active) {
        done = 0;
        for (int r = 0; r < p->size; r++) done += p->done_by_rank[r];
        ranks_done = p->n_final;
    } else if (final) {
        ranks_done = 1;
    }
    sq_load_progress pr = {.bytes_done = done, .bytes_total = p->total,
                           .n_ranks = p->active ? p->size : 1, .ranks_done = ranks_done,
                           .final = final};
    pr.elapsed_s = sq_now_s() - p->t0;
    pr.gbps = pr.elapsed_s > 0 ? (double)done / pr.elapsed_s / 1e9 : 0;
    pr.eta_s = -1;
    if (done >= p->total) pr.eta_s = 0;
    else if (done > 0 && pr.elapsed_s > 0)
        pr.eta_s = (double)(p->total - done) / ((double)done / pr.elapsed_s);
    p->fn(p->user, &pr);
    p->last_report = sq_now_s();
}

/* root: takes every record that has arrived */
static void drain(load_prog *p) {
    for (;;) {
        int flag = 0;
        MPI_Status status;
        if (MPI_Test(&p->rreq, &flag, &status) != MPI_SUCCESS || !flag) return;
        int src = status.MPI_SOURCE;
        if (src > 0 && src < p->size) {
            if (p->rbuf.done > p->done_by_rank[src]) p->done_by_rank[src] = p->rbuf.done;
            if (p->rbuf.final && !p->final_by_rank[src]) {
                p->final_by_rank[src] = 1;
                p->n_final++;
            }
        }
        if (MPI_Irecv(&p->rbuf, (int)sizeof p->rbuf, MPI_BYTE, MPI_ANY_SOURCE, PROG_TAG, p->comm,
                      &p->rreq) != MPI_SUCCESS) {
            p->rreq = MPI_REQUEST_NULL;
            return;
        }
    }
}

void load_prog_start(load_prog *p, const sq_load_options *o, uint64_t my_total) {
    memset(p, 0, sizeof *p);
    p->comm = MPI_COMM_NULL;
    p->sreq = p->rreq = MPI_REQUEST_NULL;
    p->fn = o->progress;
    p->user = o->progress_user;
    p->interval_s = o->progress_interval_s > 0 ? o->progress_interval_s : 0.25;
    p->my_total = p->total = my_total;
    p->t0 = sq_now_s();
    p->last_send = p->last_report = p->t0;
    if (o->comm == MPI_COMM_NULL) return;

    int rank = 0, size = 1;
    MPI_Comm_rank(o->comm, &rank);
    MPI_Comm_size(o->comm, &size);
    MPI_Comm dup = MPI_COMM_NULL;
    int ok = MPI_Comm_dup(o->comm, &dup) == MPI_SUCCESS;
    if (ok) MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    if (ok && rank == 0) {
        p->done_by_rank = calloc((size_t)size, sizeof *p->done_by_rank);
        p->final_by_rank = calloc((size_t)size, 1);
        ok = p->done_by_rank && p->final_by_rank;
    }
    /* sum of totals and "everyone is set up", on the caller's communicator */
    uint64_t in[2] = {my_total, (uint64_t)!ok}, out[2] = {my_total, 1};
    if (MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, o->comm) != MPI_SUCCESS) out[1] = 1;
    if (out[1] != 0) {   /* progress off everywhere; loading goes on */
        if (dup != MPI_COMM_NULL) MPI_Comm_free(&dup);
        free(p->done_by_rank);
        free(p->final_by_rank);
        p->done_by_rank = NULL;
        p->final_by_rank = NULL;
        if (rank != 0) p->fn = NULL;
        return;
    }
    p->active = true;
    p->comm = dup;
    p->rank = rank;
    p->size = size;
    p->total = out[0];
    if (rank == 0) {
        p->final_by_rank[0] = 0;
        if (MPI_Irecv(&p->rbuf, (int)sizeof p->rbuf, MPI_BYTE, MPI_ANY_SOURCE, PROG_TAG, p->comm,
                      &p->rreq) != MPI_SUCCESS)
            p->rreq = MPI_REQUEST_NULL;
    } else {
        p->fn = NULL;   /* only rank 0 reports */
    }
}

void load_prog_add(load_prog *p, uint64_t bytes) {
    p->my_done += bytes;
    double now = sq_now_s();
    if (!p->active) {
        if (now - p->last_report >= p->interval_s) report(p, false);
        return;
    }
    if (p->rank == 0) {
        p->done_by_rank[0] = p->my_done;
        drain(p);
        if (now - p->last_report >= p->interval_s) report(p, false);
        return;
    }
    if (now - p->last_send < p->interval_s) return;
    int flag = 1;
    if (p->sreq != MPI_REQUEST_NULL && MPI_Test(&p->sreq, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        flag = 0;
    if (!flag) return;   /* the previous record is still in flight */
    p->sbuf = (prog_msg){.done = p->my_done};
    if (MPI_Isend(&p->sbuf, (int)sizeof p->sbuf, MPI_BYTE, 0, PROG_TAG, p->comm, &p->sreq) !=
        MPI_SUCCESS)
        p->sreq = MPI_REQUEST_NULL;
    p->last_send = now;
}

void load_prog_finish(load_prog *p, bool failed) {
    if (!p->active) {
        report(p, true);
        return;
    }
    if (p->rank != 0) {
        if (p->sreq != MPI_REQUEST_NULL) MPI_Wait(&p->sreq, MPI_STATUS_IGNORE);
        prog_msg fin = {.done = p->my_done, .final = 1, .failed = failed};
        MPI_Send(&fin, (int)sizeof fin, MPI_BYTE, 0, PROG_TAG, p->comm);
    } else {
        p->done_by_rank[0] = p->my_done;
        p->final_by_rank[0] = 1;
        p->n_final++;
        const struct timespec pause = {0, 1000000};   /* 1 ms between polls */
        while (p->n_final < p->size && p->rreq != MPI_REQUEST_NULL) {
            drain(p);
            if (p->n_final >= p->size) break;
            if (sq_now_s() - p->last_report >= p->interval_s) report(p, false);
            nanosleep(&pause, NULL);
        }
        if (p->rreq != MPI_REQUEST_NULL) {
            MPI_Cancel(&p->rreq);
            MPI_Wait(&p->rreq, MPI_STATUS_IGNORE);
        }
        report(p, true);
    }
    MPI_Comm_free(&p->comm);
    free(p->done_by_rank);
    free(p->final_by_rank);
    p->done_by_rank = NULL;
    p->final_by_rank = NULL;
    p->active = false;
}

uint64_t load_max_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024u;
}
