/* Owns the span recorder behind include/shardq/trace.h: events in lazily allocated fixed-size
 * chunks (bounded by max_events, the rest counted as dropped), their Chrome trace-event JSON,
 * and the collective write that aligns the ranks' clocks and puts every rank's events into one
 * file written under a temporary name and renamed.  Must never print, exit, grow past
 * max_events, or leave a temporary file behind. */
#include "shardq/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_EVENTS 4096u
#define DETAIL_BYTES 56
#define TRACK_NAME_BYTES 32

typedef struct ev {
    const char *name;      /* borrowed, outlives the tracer */
    double ts, dur;        /* microseconds */
    int64_t bytes;         /* < 0: none */
    int32_t tid;
    char detail[DETAIL_BYTES];
} ev;

struct sq_trace {
    int rank;
    uint32_t max_events, n;
    uint64_t dropped;
    ev **chunks;           /* (ceil(max_events / CHUNK_EVENTS)) allocated as they fill */
    pthread_mutex_t mu;
    char tracks[SQ_TRACE_MAX_TRACKS][TRACK_NAME_BYTES];
};

double sq_trace_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

sq_status sq_trace_create(int rank, uint32_t max_events, sq_trace **out, sq_error *err) {
    *out = NULL;
    if (max_events == 0) max_events = SQ_TRACE_DEFAULT_MAX_EVENTS;
    sq_trace *t = calloc(1, sizeof *t);
    uint32_t n_chunks = (max_events + CHUNK_EVENTS - 1) / CHUNK_EVENTS;
    if (t) t->chunks = calloc(n_chunks, sizeof *t->chunks);
    if (!t || !t->chunks) {
        if (t) free(t->chunks);
        free(t);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for a tracer");
    }
    t->rank = rank;
    t->max_events = max_events;
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return SQ_OK;
}

void sq_trace_destroy(sq_trace *t) {
    if (!t) return;
    for (uint32_t c = 0; c < (t->max_events + CHUNK_EVENTS - 1) / CHUNK_EVENTS; c++)
        free(t->chunks[c]);
    free(t->chunks);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void sq_trace_set_track_name(sq_trace *t, int tid, const char *name) {
    if (!t || tid < 0 || tid >= SQ_TRACE_MAX_TRACKS || !name) return;
    snprintf(t->tracks[tid], TRACK_NAME_BYTES, "%s", name);
}

void sq_trace_event(sq_trace *t, int tid, const char *name, double ts_us, double dur_us,
                    const char *detail, int64_t bytes) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    uint32_t i = t->n, c = i / CHUNK_EVENTS;
    if (i >= t->max_events ||
        (!t->chunks[c] && !(t->chunks[c] = malloc(CHUNK_EVENTS * sizeof(ev))))) {
        t->dropped++;
        pthread_mutex_unlock(&t->mu);
        return;
    }
    ev *e = &t->chunks[c][i % CHUNK_EVENTS];
    e->name = name ? name : "?";
    e->ts = ts_us;
    e->dur = dur_us >= 0 ? dur_us : 0;
    e->bytes = bytes;
    e->tid = tid;
    snprintf(e->detail, sizeof e->detail, "%s", detail ? detail : "");
    t->n = i + 1;
    pthread_mutex_unlock(&t->mu);
}

void sq_trace_end(sq_trace *t, int tid, const char *name, double t0) {
    if (!t) return;
    sq_trace_event(t, tid, name, t0, sq_trace_now_us() - t0, NULL, -1);
}

void sq_trace_end_ex(sq_trace *t, int tid, const char *name, double t0, const char *detail,
                     int64_t bytes) {
    if (!t) return;
    sq_trace_event(t, tid, name, t0, sq_trace_now_us() - t0, detail, bytes);
}

uint32_t sq_trace_n_events(const sq_trace *t) { return t ? t->n : 0; }
uint64_t sq_trace_n_dropped(const sq_trace *t) { return t ? t->dropped : 0; }

/* ---- JSON ------------------------------------------------------------------------------------ */

static double num(double x) { return isfinite(x) ? x : 0; }

/* Earliest event start, +inf when there is none. */
static double min_ts(const sq_trace *t) {
    double m = INFINITY;
    for (uint32_t i = 0; t && i < t->n; i++) {
        const ev *e = &t->chunks[i / CHUNK_EVENTS][i % CHUNK_EVENTS];
        if (e->ts < m) m = e->ts;
    }
    return m;
}

/* This rank's events (and its process / track names) with ts shifted by -origin, each
 * followed by ",\n". */
static void fragment(const sq_trace *t, double origin, sq_buf *b) {
    if (!t) return;
    sq_buf_addf(b, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
                 "\"args\":{\"name\":\"rank %d\"}},\n", t->rank, t->rank);
    sq_buf_addf(b, "{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
                 "\"args\":{\"sort_index\":%d}},\n", t->rank, t->rank);
    for (int k = 0; k < SQ_TRACE_MAX_TRACKS; k++) {
        if (!t->tracks[k][0]) continue;
        sq_buf_addf(b, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":",
                  t->rank, k);
        sq_buf_json_str(b, t->tracks[k], strlen(t->tracks[k]));
        sq_buf_add(b, "}},\n", 4);
    }
    for (uint32_t i = 0; i < t->n; i++) {
        const ev *e = &t->chunks[i / CHUNK_EVENTS][i % CHUNK_EVENTS];
        sq_buf_add(b, "{\"name\":", 8);
        sq_buf_json_str(b, e->name, strlen(e->name));
        sq_buf_addf(b, ",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f", t->rank,
                  (int)e->tid, num(e->ts - origin), num(e->dur));
        if (e->detail[0] || e->bytes >= 0) {
            sq_buf_add(b, ",\"args\":{", 9);
            if (e->detail[0]) {
                sq_buf_add(b, "\"detail\":", 9);
                sq_buf_json_str(b, e->detail, strlen(e->detail));
            }
            if (e->bytes >= 0) sq_buf_addf(b, "%s\"bytes\":%lld", e->detail[0] ? "," : "",
                                         (long long)e->bytes);
            sq_buf_add(b, "}", 1);
        }
        sq_buf_add(b, "},\n", 3);
    }
}

/* Wraps the concatenated fragments (each event followed by ",\n") into the JSON object. */
static sq_status wrap(const char *events, size_t n, uint64_t dropped, int n_ranks, char **out,
                      size_t *len, sq_error *err) {
    sq_buf b = {0};
    sq_buf_addf(&b, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"shardq\","
                  "\"ranks\":%d,\"dropped_events\":%llu},\n\"traceEvents\":[\n", n_ranks,
              (unsigned long long)dropped);
    /* the last ",\n" of the events goes */
    if (n >= 2) sq_buf_add(&b, events, n - 2);
    sq_buf_add(&b, "\n]}\n", 4);
    if (b.oom) {
        free(b.p);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory writing a trace");
    }
    *out = b.p;
    *len = b.n;
    return SQ_OK;
}

sq_status sq_trace_to_json(const sq_trace *t, char **out, size_t *len, sq_error *err) {
    *out = NULL;
    *len = 0;
    sq_buf b = {0};
    double m = min_ts(t);
    fragment(t, isfinite(m) ? m : 0, &b);
    if (b.oom) {
        free(b.p);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory writing a trace");
    }
    sq_status rc = wrap(b.p ? b.p : "", b.n, sq_trace_n_dropped(t), 1, out, len, err);
    free(b.p);
    return rc;
}

static sq_status write_renamed(const char *path, const char *text, size_t n, sq_error *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "trace path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return sq_error_set(err, SQ_ERR_IO, tmp, NULL, "cannot create trace: %s", strerror(errno));
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, text + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return sq_error_set(err, SQ_ERR_IO, tmp, NULL, "trace write failed: %s", strerror(e));
        }
        done += (size_t)w;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot write trace: %s", strerror(e));
    }
    return SQ_OK;
}

#define PINGS 8

/* *shift: add to this rank's clock to get rank 0's. */
static sq_status clock_offset(MPI_Comm comm, int rank, int size, double *shift) {
    *shift = 0;
    if (MPI_Barrier(comm) != MPI_SUCCESS) return SQ_ERR_MPI;
    for (int r = 1; r < size; r++) {
        double best_rtt = INFINITY;
        for (int k = 0; k < PINGS; k++) {
            if (rank == 0) {
                double dummy = 0, now = 0;
                if (MPI_Recv(&dummy, 1, MPI_DOUBLE, r, 7101, comm, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                    return SQ_ERR_MPI;
                now = sq_trace_now_us();
                if (MPI_Send(&now, 1, MPI_DOUBLE, r, 7102, comm) != MPI_SUCCESS) return SQ_ERR_MPI;
            } else if (rank == r) {
                double t1 = sq_trace_now_us(), t0 = 0;
                if (MPI_Send(&t1, 1, MPI_DOUBLE, 0, 7101, comm) != MPI_SUCCESS ||
                    MPI_Recv(&t0, 1, MPI_DOUBLE, 0, 7102, comm, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                    return SQ_ERR_MPI;
                double t2 = sq_trace_now_us();
                if (t2 - t1 < best_rtt) {
                    best_rtt = t2 - t1;
                    *shift = t0 - (t1 + t2) / 2;
                }
            }
        }
    }
    return SQ_OK;
}

sq_status sq_trace_write(sq_trace *t, MPI_Comm comm, const char *path, sq_error *err) {
    if (comm == MPI_COMM_NULL) {
        char *json = NULL;
        size_t len = 0;
        sq_status rc = sq_trace_to_json(t, &json, &len, err);
        if (rc == SQ_OK) rc = write_renamed(path, json, len, err);
        free(json);
        return rc;
    }
    int rank = 0, size = 1;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, path, NULL, "trace: MPI_Comm_rank/size failed");
    /* clocks: each rank's offset to rank 0's, NTP-style: ping-pongs with rank 0, keeping the
     * one with the shortest round trip (the offset's error is at most half of it) */
    double shift = 0;
    sq_status crc = clock_offset(comm, rank, size, &shift);
    if (crc != SQ_OK) return sq_error_set(err, crc, path, NULL, "trace: aligning clocks failed");
    double gmin = 0, my_min = 0;
    my_min = min_ts(t);
    my_min = isfinite(my_min) ? my_min + shift : 1e300;
    unsigned long long drop = sq_trace_n_dropped(t), drop_all = 0;
    if (MPI_Allreduce(&my_min, &gmin, 1, MPI_DOUBLE, MPI_MIN, comm) != MPI_SUCCESS ||
        MPI_Reduce(&drop, &drop_all, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, path, NULL, "trace: MPI_Allreduce failed");
    if (gmin >= 1e300) gmin = 0;
    sq_buf b = {0};
    fragment(t, gmin - shift, &b);
    int my_len = b.oom || b.n > (1u << 30) ? -1 : (int)b.n;
    int *lens = rank == 0 ? calloc((size_t)size, sizeof *lens) : NULL;
    int *displs = rank == 0 ? calloc((size_t)size, sizeof *displs) : NULL;
    char *all = NULL;
    int ok = 1;
    if (MPI_Gather(&my_len, 1, MPI_INT, lens, 1, MPI_INT, 0, comm) != MPI_SUCCESS) ok = 0;
    if (rank == 0) {
        uint64_t total = 0;
        if (!lens || !displs) ok = 0;
        for (int r = 0; ok && r < size; r++) {
            if (lens[r] < 0) ok = 0;
            displs[r] = (int)total;
            total += ok ? (uint64_t)lens[r] : 0;
        }
        if (ok && (total > (1u << 30) || !(all = malloc(total ? total : 1)))) ok = 0;
    } else if (my_len < 0) {
        ok = 0;
    }
    int ok_all = 0;
    if (MPI_Allreduce(&ok, &ok_all, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS) ok_all = 0;
    sq_status rc = SQ_OK;
    if (!ok_all) {
        rc = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "trace: out of memory gathering events");
    } else if (MPI_Gatherv(b.p ? b.p : "", my_len, MPI_CHAR, all, lens, displs, MPI_CHAR, 0,
                           comm) != MPI_SUCCESS) {
        rc = sq_error_set(err, SQ_ERR_MPI, path, NULL, "trace: MPI_Gatherv failed");
    }
    if (rank == 0 && rc == SQ_OK) {
        size_t total = (size_t)displs[size - 1] + (size_t)lens[size - 1];
        char *json = NULL;
        size_t len = 0;
        rc = wrap(all, total, drop_all, size, &json, &len, err);
        if (rc == SQ_OK) rc = write_renamed(path, json, len, err);
        free(json);
    }
    free(b.p);
    free(all);
    free(lens);
    free(displs);
    /* the same outcome everywhere */
    int code = (int)rc;
    if (MPI_Bcast(&code, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, path, NULL, "trace: MPI_Bcast failed");
    if (code != SQ_OK && rc == SQ_OK)
        return sq_error_set(err, (sq_status)code, path, NULL, "trace: rank 0 could not write it");
    return rc;
}
