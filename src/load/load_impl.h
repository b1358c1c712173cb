/* Private to the load module: the cross-rank progress reporter shared by load.c and
 * quantize.c.  Never included outside src/load/. */
#ifndef SHARDQ_LOAD_IMPL_H
#define SHARDQ_LOAD_IMPL_H

#include <mpi.h>

#include "shardq/load.h"

/* One rank's progress record, sent to rank 0 of the progress communicator. */
typedef struct prog_msg {
    uint64_t done;
    int32_t final;
    int32_t failed;
} prog_msg;

typedef struct load_prog {
    bool active;                /* a communicator is in use */
    MPI_Comm comm;              /* private duplicate (tags of its own) */
    int rank, size;
    uint64_t my_done, my_total, total;
    double t0, interval_s, last_send, last_report;
    sq_load_progress_fn fn;
    void *user;
    /* non-root */
    MPI_Request sreq;
    prog_msg sbuf;
    /* root */
    MPI_Request rreq;
    prog_msg rbuf;
    uint64_t *done_by_rank;     /* (size) */
    unsigned char *final_by_rank;
    int n_final;
} load_prog;

/* Collective over o->comm when it is not MPI_COMM_NULL: duplicates it and sums the ranks'
 * totals.  A failure anywhere turns cross-rank progress off on every rank (loading goes on);
 * never fails itself. */
void load_prog_start(load_prog *p, const sq_load_options *o, uint64_t my_total);
/* Counts bytes done and, at most every interval, sends them (non-root) or reports (root). */
void load_prog_add(load_prog *p, uint64_t bytes);
/* Sends this rank's final record; the root waits for every rank's and reports final = true. */
void load_prog_finish(load_prog *p, bool failed);

/* Peak resident set of this process (VmHWM), bytes; 0 when unknown. */
uint64_t load_max_rss_bytes(void);

/* ---- bnb_format.c ---------------------------------------------------------------------- */
typedef struct index_entry {
    const char *name;   /* borrowed */
    const char *file;   /* borrowed: the shard's file name */
} index_entry;

/* config.json text with quantization_config replaced by BitsAndBytesConfig.to_dict()'s keys;
 * every other key kept.  *out malloc'd. */
sq_status bnb_config_json(const char *text, size_t len, const char *path,
                          const sq_quant_scheme *s, const char *compute_dtype, char **out,
                          sq_error *err);
/* model.safetensors.index.json as transformers writes it (indent 2, keys sorted); sorts e. */
sq_status bnb_index_json(index_entry *e, size_t n, uint64_t total_size, char **out,
                         sq_error *err);

#endif
