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
/* q := the [rows, cols] weight of dtype (F32 / F16 / BF16) quantized to type (INT8 / INT8_ZP),
 * read with `read` piece by piece (whole rows, load_int8_piece_rows of staging_cap) into
 * staging.  Bytes equal sq_quant_int8_from's on the whole tensor.  Errors name `name` (a read
 * error keeps its own); on failure q is zeroed. */
sq_status load_int8_quantize(sq_quant_type type, sq_dtype dtype, int64_t rows, int64_t cols,
                             load_read_fn read, void *ctx, uint8_t *staging, uint64_t staging_cap,
                             sq_pool *pool, sq_qtensor *q, const char *name, sq_error *err);

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

#endif
