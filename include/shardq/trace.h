/* trace: a bounded in-memory recorder of timed spans, written as one Chrome trace-event JSON
 * file (what Perfetto and chrome://tracing open): one process per rank (pid = rank), one track
 * per thread or logical lane (tid), "X" (complete) events with ts / dur in microseconds.
 *
 * Cost: every recording call takes the tracer as its first argument and returns at once when
 * it is NULL, so code paths that may trace pay one branch when tracing is off.  When on, the
 * events live in chunks of fixed size allocated as they fill, up to max_events; past that they
 * are counted as dropped (written into the file's "otherData") and memory stays bounded at
 * about max_events * sizeof(event) (~96 bytes each).
 *
 * Threads: sq_trace_end / sq_trace_event may be called from any thread at once (a mutex
 * guards the event store); create, set_track_name, write and destroy from one thread.  Events
 * on one track must nest (each span inside or after the previous one on that track), which
 * holds when one thread records a track's spans begin/end in LIFO order.
 *
 * Ownership: the tracer owns its events; `name` passed to the recording calls must outlive the
 * tracer (string literals), `detail` is copied (truncated to 55 bytes).
 * Never: prints, exits, or touches anything but its own memory and the file it writes. */
#ifndef SHARDQ_TRACE_H
#define SHARDQ_TRACE_H

#include <mpi.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SQ_TRACE_DEFAULT_MAX_EVENTS (1u << 18)   /* 262144 events, ~25 MiB when full */
#define SQ_TRACE_MAX_TRACKS 64

typedef struct sq_trace sq_trace;

/* A tracer for `rank` (the pid of its events) keeping at most max_events (0: the default).
 * On failure *out is NULL. */
sq_status sq_trace_create(int rank, uint32_t max_events, sq_trace **out, sq_error *err);
/* Frees the tracer and its events.  Takes NULL. */
void sq_trace_destroy(sq_trace *t);

/* Names track `tid` (0 <= tid < SQ_TRACE_MAX_TRACKS) in the viewer ("compute", "reader");
 * the name is copied.  NULL tracer: no-op. */
void sq_trace_set_track_name(sq_trace *t, int tid, const char *name);

/* Microseconds on this process's monotonic clock (the time base of every event). */
double sq_trace_now_us(void);

/* The start of a span: the current time, or 0 when t is NULL (nothing is read). */
static inline double sq_trace_begin(const sq_trace *t) { return t ? sq_trace_now_us() : 0; }
/* Ends the span that began at t0 (from sq_trace_begin) on track tid.  NULL tracer: no-op. */
void sq_trace_end(sq_trace *t, int tid, const char *name, double t0);
/* Same, with a detail string (e.g. the tensor; copied) and a byte count (< 0: none) shown as
 * the event's args. */
void sq_trace_end_ex(sq_trace *t, int tid, const char *name, double t0, const char *detail,
                     int64_t bytes);
/* A span given by its start and duration (microseconds on sq_trace_now_us's clock). */
void sq_trace_event(sq_trace *t, int tid, const char *name, double ts_us, double dur_us,
                    const char *detail, int64_t bytes);

/* Events kept and events dropped so far (0, 0 for NULL). */
uint32_t sq_trace_n_events(const sq_trace *t);
uint64_t sq_trace_n_dropped(const sq_trace *t);

/* Writes one trace file at `path` from every rank of comm (collective; every rank passes its
 * own tracer, or NULL for none: it then contributes nothing but still takes part).  The ranks'
 * clocks are aligned at a barrier and the earliest event is put at ts 0.  Rank 0 writes
 * "<path>.tmp.<pid>" and renames it to path; with comm MPI_COMM_NULL the calling process
 * writes its own events alone.  Every rank returns the same status.  On failure no file and no
 * temporary are left. */
sq_status sq_trace_write(sq_trace *t, MPI_Comm comm, const char *path, sq_error *err);

/* The JSON text of this process's events alone (no clock alignment), *out malloc'd; for
 * tests and for callers that store it elsewhere. */
sq_status sq_trace_to_json(const sq_trace *t, char **out, size_t *len, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
