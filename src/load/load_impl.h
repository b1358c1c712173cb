/* Private to the load module: the cross-rank progress reporter shared by load.c and
 * quantize.c.  Never included outside src/load/. */
#ifndef SHARDQ_LOAD_IMPL_H
#define SHARDQ_LOAD_IMPL_H

#include <mpi.h>

#include "shardq/load.h"
#include "shardq/trace.h"

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
/* bitsandbytes' 8-bit serialization of one Linear (transformers save_pretrained after
 * load_in_8bit; ../shared/reference/bnb-int8-format.md): for the weight "<base>weight",
 *   "<base>weight"         I8  [out, in]   the codes
 *   "<base>SCB"            F32 [out]       the row absmax
 *   "<base>weight_format"  U8  []          0 ("row")
 * Only SQ_QUANT_INT8 has it (SQ_ERR_INVALID otherwise, and for a name not ending in "weight").
 * The parts point into q (and a static zero byte); base gets "<base>". */
#define BNB_INT8_PARTS 3
typedef struct bnb_part {
    const char *suffix;
    sq_dtype dtype;
    int n_dims;
    int64_t shape[2];
    const void *data;
    uint64_t n_bytes;
} bnb_part;
sq_status bnb_int8_parts(const char *name, const sq_qtensor *q, char *base, size_t base_bytes,
                         bnb_part parts[BNB_INT8_PARTS], sq_error *err);
/* True when config.json's quantization_config says load_in_8bit (a bnb 8-bit checkpoint). */
bool bnb_config_is_8bit(const char *text, size_t len);

/* model.safetensors.index.json as transformers writes it (indent 2, keys sorted); sorts e. */
sq_status bnb_index_json(index_entry *e, size_t n, uint64_t total_size, char **out,
                         sq_error *err);

/* ---- load_cuda.c (SHARDQ_HAVE_CUDA only; load.c answers SQ_ERR_UNSUPPORTED otherwise) -------- */

/* Reads bytes [off, off + n) of the weight being quantized into dst (pinned host memory). */
typedef sq_status (*load_read_fn)(void *ctx, uint64_t off, uint64_t n, void *dst, sq_error *err);

typedef struct load_gpu load_gpu;
/* The GPU quantization ring on CUDA device `device`: staging_bytes split over its slots (each
 * chunk whole blocks of `blocksize`; pinned host + the same on the device).  Errors: no CUDA
 * device (SQ_ERR_UNSUPPORTED), device out of range (SQ_ERR_INVALID), CUDA failures
 * (SQ_ERR_CUDA).  On failure *out is NULL and nothing leaks; the current device is unchanged. */
sq_status load_gpu_create(int device, uint64_t staging_bytes, int64_t blocksize, load_gpu **out,
                          sq_error *err);
/* Waits for outstanding work and frees everything.  Takes NULL. */
void load_gpu_destroy(load_gpu *g);
/* Fills q->packed and q->absmax (float32; q from sq_qtensor_init, not compressed yet) of a
 * weight of q->n_elements elements of dtype (F32 / F16 / BF16), reading its bytes with `read`
 * chunk by chunk; bytes equal sq_quant_4bit_from's.  Errors name path and name. */
sq_status load_gpu_quantize(load_gpu *g, sq_dtype dtype, load_read_fn read, void *ctx,
                            sq_qtensor *q, const char *path, const char *name, sq_error *err);

/* ---- load_int8.c ---------------------------------------------------------------------------- */

/* Rows of cols elements of elsize bytes per piece within staging_bytes (at least 1, at most rows). */
uint64_t load_int8_piece_rows(uint64_t staging_bytes, size_t elsize, int64_t rows, int64_t cols);
/* Reads the whole of checkpoint tensor c (c->n_bytes) into dst. */
typedef sq_status (*load_part_fn)(void *ctx, const sq_ckpt_tensor *c, void *dst, sq_error *err);
/* Checkpoint bytes of a weight stored as bitsandbytes 8-bit (weight + SCB + weight_format). */
uint64_t load_int8_src_bytes(const sq_ckpt *st, const sq_tensor_spec *t);
/* A weight stored as bitsandbytes 8-bit (meta: stored_quant INT8), read as stored into item->q
 * (INT8: codes = weight, row_scale = SCB; is_4bit set), never re-quantized; with dequantize
 * (scheme NONE) item->data holds the float32 values instead (sq_dequant_int8_row).  A
 * weight_format other than 0 ("row") is SQ_ERR_UNSUPPORTED; an SCB that is negative, NaN or
 * beyond float16 SQ_ERR_FORMAT.  On failure item->q is zeroed. */
sq_status load_int8_prequant(const sq_ckpt *st, const sq_tensor_spec *t, bool dequantize,
                             load_part_fn read, void *ctx, sq_load_item *item, sq_error *err);
/* ---- reader.c: the read-ahead thread ------------------------------------------------------ */

/* Trace tracks of a loading rank. */
enum { LOAD_TRACK_COMPUTE = 0, LOAD_TRACK_READER = 1 };

/* One read: a piece of a weight to quantize (into a staging slot) or a whole dense tensor
 * (into a buffer of its own that the caller takes). */
typedef struct load_unit {
    const char *name;      /* the tensor's (borrowed, for errors and the trace) */
    int file_index;
    uint64_t pos, n;       /* file offset, bytes */
    uint64_t data_end;     /* the tensor's last byte + 1 in the file (for the error) */
    bool dense;
    bool deferred;         /* dense and larger than a slot: the reader only advises it, the
                              loading thread reads it with its pool straight into the buffer
                              it hands over (load.c read_parallel) */
} load_unit;

/* A dense tensor's buffer of n bytes handed to the consumer: sq_alloc_huge of n rounded up to
 * 64 bytes (a backend may keep it as its own storage, as it keeps its own allocations). */
static inline void *load_alloc_dense(uint64_t n) {
    return sq_alloc_huge(((n + 63) & ~UINT64_C(63)) | (n == 0));
}

typedef struct load_reader load_reader;
/* Starts the reader on units[0, n_units) (borrowed, must outlive the reader) with n_slots
 * buffers of slot_bytes.  At most n_slots units are read ahead of the caller, and at most one
 * dense unit larger than slot_bytes.  map: pieces are mapped windows of the file instead of
 * pread() copies (falls back to pread by itself).  On failure *out is NULL. */
sq_status load_reader_start(const sq_ckpt *st, const load_unit *units, size_t n_units,
                            int n_slots, uint64_t slot_bytes, bool map, sq_trace *trace,
                            load_reader **out, sq_error *err);
/* Waits for unit u (units are taken in order) and gives its bytes: *buf the slot's bytes
 * (read-only when mapped; valid until load_reader_release(u)), and for a dense unit *dense, a malloc'd buffer the caller now owns.
 * A read error of that unit comes back here (err->rank kept). */
sq_status load_reader_get(load_reader *r, size_t u, uint8_t **buf, void **dense, sq_error *err);
void load_reader_release(load_reader *r, size_t u);
/* Stops the thread (it may be ahead), joins it, frees everything.  Takes NULL. */
void load_reader_stop(load_reader *r);

/* pread of [pos, pos + n) in full (EINTR retried); a short file is SQ_ERR_IO naming path,
 * name and data_end. */
sq_status load_pread(int fd, const char *path, const char *name, uint64_t pos, uint64_t n,
                     uint64_t data_end, void *dst, sq_error *err);
/* The whole of checkpoint tensor w (on fd) into *out (load_alloc_dense), in chunks of up to
 * 8 MiB read by pool's threads at once (a dense tensor larger than a staging slot, the reader's
 * deferred units); a failed chunk is read again on the calling thread for its error. */
sq_status load_read_parallel(const sq_ckpt *st, int fd, const sq_ckpt_tensor *w, const char *name,
                             sq_pool *pool, sq_trace *trace, void **out, sq_error *err);
/* dense_map: the whole of w (on fd) as a read-only mapped window of the file, populated by
 * pool's threads in chunks (MADV_POPULATE_READ, so a cold load reads the disk here, as a copy
 * would): *data its first byte, *map / *map_len the window to munmap.  False, nothing mapped,
 * where it cannot be: w not aligned to its element size, its bytes rounded up to 64 running
 * past the file's last page, mmap or population failing (the caller copies it instead, which
 * also gives a truncated file's error). */
bool load_map_parallel(int fd, const sq_ckpt_tensor *w, sq_pool *pool, sq_trace *trace,
                       const char *name, void **data, void **map, uint64_t *map_len);
/* fds[file_index], opened (O_RDONLY, sequential advice) on first use. */
sq_status load_open_fd(const sq_ckpt *st, int *fds, size_t n_files, int file_index,
                       const char *tensor, int *fd, sq_error *err);

/* ---- shard_writer.c: quantize's streaming shard writer ------------------------------------ */
typedef struct shard_writer shard_writer;
/* Upper bound of the header bytes of one entry named name + suffix. */
uint64_t shard_header_entry_bound(const char *name, const char *suffix);
/* Opens "<path>.tmp.<pid>" with room for a header of entries_bound bytes of entries (the sum
 * of shard_header_entry_bound over every entry to come).  On failure *out is NULL. */
sq_status shard_writer_create(const char *path, uint64_t entries_bound, shard_writer **out,
                              sq_error *err);
/* Starts an entry of total_bytes and writes its first n_bytes (data may be freed after);
 * the rest comes with shard_writer_append before the next entry. */
sq_status shard_writer_add(shard_writer *w, const char *name, sq_dtype dtype, int n_dims,
                           const int64_t *shape, uint64_t total_bytes, const void *data,
                           uint64_t n_bytes, sq_error *err);
sq_status shard_writer_append(shard_writer *w, const void *data, uint64_t n_bytes, sq_error *err);
/* Writes the header into its space (padded with spaces), fsyncs, renames to path. */
sq_status shard_writer_finish(shard_writer *w, sq_error *err);
/* Closes; removes the temporary unless finished.  Takes NULL. */
void shard_writer_destroy(shard_writer *w);

/* ---- stage.c + shared helpers of the loader ------------------------------------------------- */

static inline sq_quant_scheme load_effective_scheme(const sq_load_options *o) {
    sq_quant_scheme s = o->scheme;
    if (s.blocksize <= 0) s.blocksize = 64;
    return s;
}

/* Staging slots of the read-ahead ring: the budget is split over them, so one piece is
 * quantized while up to LOAD_SLOTS - 1 more are read. */
#define LOAD_SLOTS 4

/* Slots for a budget: LOAD_SLOTS, fewer when the budget holds fewer whole blocks of the widest
 * dtype (float32), at least 1 (then one block, even past the budget, as before the ring). */
static inline int load_n_slots(uint64_t budget, int64_t blocksize) {
    uint64_t k = budget / ((uint64_t)blocksize * 4);
    return k >= LOAD_SLOTS ? LOAD_SLOTS : k > 0 ? (int)k : 1;
}

/* Elements per quantization piece: the staging budget in whole absmax blocks (at least one). */
static inline uint64_t load_piece_elements(uint64_t staging_bytes, size_t elsize, int64_t blocksize) {
    uint64_t e = staging_bytes / elsize;
    e -= e % (uint64_t)blocksize;
    return e ? e : (uint64_t)blocksize;
}

/* A weight quantized now (not pre-quantized, scheme not NONE). */
static inline bool load_quantize_now(const sq_tensor_spec *t, const sq_quant_scheme *s) {
    return t->quantizable && t->stored_quant == SQ_QUANT_NONE && s->type != SQ_QUANT_NONE;
}

/* The checkpoint tensor named base + suffix, or NULL. */
const sq_ckpt_tensor *load_companion(const sq_ckpt *st, const char *base, const char *suffix);

#endif
