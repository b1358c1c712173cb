/* load: the per-rank streaming loader, and the distributed `quantize` that writes a
 * bitsandbytes 4-bit checkpoint with it.
 *
 * sq_load_stage() walks ONE stage's tensors (from the plan: embed_tokens on the first stage,
 * decoder layers [first_layer, first_layer + n_layers), model.norm + lm_head on the last;
 * with tied embeddings the embedding table again on the last stage when asked), in skeleton
 * order, and for each one: reads its bytes from file descriptors of its own (never another
 * stage's tensor, never through the safetensors mapping, so nothing but the bounded buffers
 * and windows below becomes resident), quantizes the decoder Linear weights to 4 bits
 * (bitsandbytes NF4 / FP4, bit-exact with sq_quant_4bit_from on the whole tensor) or keeps
 * them dense (scheme NONE), and hands the result to a consumer callback.  Weights already
 * stored in bitsandbytes' 4-bit layout (a pre-quantized checkpoint: sq_tensor_spec.stored_quant)
 * are read as they are — packed nibbles, absmax, nested absmax and offset — and never
 * re-quantized; their quant_map / nested_quant_map must be bitsandbytes' own tables.
 *
 * The pipeline: a read-ahead thread (one per call, sequential + WILLNEED advice on the next
 * reads it copies) walks the stage's pieces and dense tensors in load order into a ring of up
 * to 4 staging slots that share the budget B — a piece is a read-only mapped window of the file
 * (of one mapping of the whole file when pieces are 8 MiB or more) that the thread populates
 * (MADV_POPULATE_READ, which reads a cold file into 2 MiB folios) and gives back when the slot
 * is reused, so the quantizer reads the page cache in place; with read_copy, or where mapping
 * fails, a pread()
 * copy into the slot's buffer; dense tensors are pread() into buffers of their own (with
 * dense_map, one larger than a slot is instead a read-only mapped window of the file that the
 * pool populates and the consumer may keep: no copy, no fresh memory to zero) — while the calling thread quantizes the piece read
 * before (straight from BF16 / F16 / F32, no float32 copy; the pool splits its blocks) and
 * calls the consumer: reading, quantizing and the consumer's work (a backend's repack or
 * upload, quantize's file write) overlap.  Pre-quantized parts, GGUF blocks and rows to
 * reorder are read whole on the calling thread as before.
 *
 * Memory bound (host, per rank; B = staging_bytes, default 64 MiB):
 *   peak RSS <= baseline + share + S + T
 *   share: what the consumer keeps (for a consumer that keeps everything: the stage's
 *          output bytes, sq_load_stage_bytes().out_bytes = 4-bit parts + dense tensors);
 *   S:     the staging ring, sq_load_stage_bytes().staging_bytes = slots x the largest
 *          piece (whole absmax blocks; <= B unless B holds less than 4 blocks of float32);
 *          plus, while a tensor is quantized piece by piece (each piece straight into its
 *          place in the tensor's arrays), its float32 absmax before double quant —
 *          transient_bytes;
 *   T:     the tensor being handed over, when the consumer copies instead of taking it
 *          (<= sq_load_stage_bytes().max_out_bytes), and a dense tensor larger than a slot
 *          that the reader may have read ahead into its own buffer (at most one; it is part
 *          of the share for a consumer that keeps it).  With dense_pieces no dense tensor is
 *          ever whole in memory: T is the largest 4-bit weight.
 * Page cache is not counted beyond S: a mapped window counts while its slot holds it (at most
 * the slot's bytes + a page), and pread copies out of it; a dense_map window is page cache
 * shared with the file, resident (and counted in RSS) while its item or the weight keeping it
 * lives, in place of T's copy.
 *
 * GPU quantization (sq_load_options.quant_device >= 0, CUDA builds): each 4-bit weight is read
 * chunk by chunk (whole blocks) with pread() straight into a ring of 3 pinned buffers that
 * share the staging budget S, copied to the device and quantized there by sq_cuda_quant_4bit
 * (bit-identical to the CPU quantizer), while the next chunk is read: the reader blocks only
 * when the ring is full.  Device memory: the same 3 chunks plus their outputs (about
 * 1.3 * S), never a whole tensor.  Packed nibbles and float32 absmax come back to the host
 * sq_qtensor (double quant is then done on the host, as on the CPU path), so the consumer
 * interface stays a host sq_qtensor: a CUDA backend uploads it again, an extra round trip of
 * the 4-bit bytes (n/2 + 4 n/blocksize per weight: about 0.56 byte per element at blocksize
 * 64, i.e. 28% of the BF16 source's bytes) down and up over PCIe.  Bytes equal the CPU path's.
 * Without CUDA in the build, quant_device >= 0 fails with SQ_ERR_UNSUPPORTED; in a CUDA build
 * with no device likewise, and a device number past the machine's count with SQ_ERR_INVALID.
 * The calling thread's current CUDA device is left as it was.
 *
 * Bad data: a file that is shorter than its header said when it is read (truncated after the
 * headers were checked) fails with SQ_ERR_IO naming file and tensor; a quantizable weight
 * holding NaN or Inf (any block whose absmax is not finite) fails with SQ_ERR_FORMAT naming
 * the tensor and block — bitsandbytes would store a NaN absmax and silently poison the block.
 *
 * Progress: with a communicator, every rank of it must call sq_load_stage (it is collective
 * at the start and the end).  Non-root ranks send their byte counts to rank 0 of the
 * communicator with non-blocking point-to-point messages at most every progress_interval_s
 * (no collective inside the loop, so ranks that load at different speeds never wait for each
 * other); rank 0 calls the progress callback (never the library's own printing) with bytes
 * done across all ranks, GB/s and ETA, and once more with final = true when every rank is done.
 *
 * Ownership: the item handed to the consumer owns its buffers; the consumer may take them
 * (copy the struct and zero the pointers: item->data = NULL, memset(&item->q, 0, ...)), and
 * whatever is left is freed when the callback returns.  The checkpoint and sq_meta are
 * borrowed.  On failure nothing leaks and err names rank, file and tensor.
 * Never: prints, exits, or touches a tensor outside the stage. */
#ifndef SHARDQ_LOAD_H
#define SHARDQ_LOAD_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "shardq/core.h"
#include "shardq/meta.h"
#include "shardq/plan.h"
#include "shardq/quant.h"
#include "shardq/checkpoint.h"
#include "shardq/safetensors.h"
#include "shardq/size.h"
#include "shardq/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SQ_LOAD_DEFAULT_STAGING_BYTES (64ull << 20)

/* Which part of the model a rank loads (the fields of sq_plan_stage the loader uses). */
typedef struct sq_load_stage_desc {
    int first_layer, n_layers;
    bool has_embed, has_head;
} sq_load_stage_desc;

sq_load_stage_desc sq_load_stage_from_plan(const sq_plan_stage *s);

/* One tensor, handed to the consumer. */
typedef struct sq_load_item {
    int tensor;                    /* index in the skeleton */
    const sq_tensor_spec *spec;    /* points into the skeleton */
    bool tied_head;                /* the embedding table handed to the last stage as lm_head */
    bool prequantized;             /* read as stored in the checkpoint (no re-quantization) */
    bool is_4bit;                  /* q holds it; else data does */
    int ggml_type;                 /* >= 0: data holds the weight's rows in this ggml block
                                      format, as the checkpoint stores them (n_bytes), rows in
                                      HF order; -1: dense or 4-bit */
    /* dense: the checkpoint's bytes, unchanged (or a pre-quantized weight dequantized by
     * bitsandbytes' rule when the scheme is NONE) */
    sq_dtype dtype;
    int n_dims;
    int64_t shape[2];
    void *data;                    /* (n_bytes) malloc'd, with room for n_bytes rounded up to
                                      64 (a CPU backend may keep it: sq_stage_set_dense_take) */
    uint64_t n_bytes;
    /* 4-bit */
    sq_qtensor q;
    uint64_t src_bytes;            /* checkpoint bytes read for this tensor (this piece) */
    /* sq_load_options.dense_pieces: a dense tensor comes in pieces, data = bytes
     * [piece_offset, piece_offset + n_bytes) of its total_bytes, borrowed (a staging slot,
     * valid during the call only: never take it).  Otherwise 0, n_bytes and false. */
    uint64_t piece_offset, total_bytes;
    bool borrowed;
    /* sq_load_options.dense_map: data lies in this read-only mapping of the checkpoint file
     * (map_len bytes from mmap; the element-aligned tensor, with n_bytes rounded up to 64
     * readable), which the item owns: sq_load_item_release unmaps it, or a consumer takes it
     * (sq_stage_set_dense_map) and sets map to NULL (map_len stays: data is never freed).
     * NULL and 0 otherwise. */
    void *map;
    uint64_t map_len;
} sq_load_item;

/* Called once per tensor in skeleton order.  Returning non-OK stops the load with that error. */
typedef sq_status (*sq_load_consumer_fn)(void *user, sq_load_item *item, sq_error *err);

typedef struct sq_load_progress {
    uint64_t bytes_done, bytes_total;  /* checkpoint bytes, all ranks of the communicator */
    int n_ranks, ranks_done;
    double elapsed_s, gbps, eta_s;     /* gbps: 1e9 bytes / s; eta_s < 0 when unknown */
    bool final;
} sq_load_progress;
typedef void (*sq_load_progress_fn)(void *user, const sq_load_progress *p);

typedef struct sq_load_options {
    sq_quant_scheme scheme;        /* NONE: quantizable weights stay dense */
    uint64_t staging_bytes;        /* 0: SQ_LOAD_DEFAULT_STAGING_BYTES */
    sq_pool *pool;                 /* quantization threads; NULL: the calling thread */
    bool tied_head_copy;           /* tied embeddings: hand the table to the last stage too */
    MPI_Comm comm;                 /* MPI_COMM_NULL: no cross-rank progress (a lone loader) */
    sq_load_progress_fn progress;  /* called on rank 0 of comm (or alone); may be NULL */
    void *progress_user;
    double progress_interval_s;    /* <= 0: 0.25 s */
    sq_log log;
    int quant_device;              /* -1 (default): quantize on the CPU; >= 0: on this CUDA
                                      device (see "GPU quantization" above) */
    bool ggml_dense;               /* tensors kept in a ggml block format (not re-quantized) come
                                      out dense F32 (ggml's exact dequantized values) instead */
    sq_trace *trace;               /* NULL: off; else spans on tracks 0 "compute" and 1 "reader" */
    const char *consume_label;     /* the trace's name for the consumer's span (NULL: "consume") */
    bool dense_pieces;             /* dense tensors read as they are stored come in pieces of at
                                      most one staging slot (see sq_load_item): a consumer that
                                      writes them out never holds a whole one */
    bool read_copy;                /* pieces are pread() into the staging slots instead of
                                      read in place through a mapped window (see above) */
    bool dense_map;                /* a dense tensor larger than a staging slot, read as stored
                                      and aligned to its element size, comes as a read-only
                                      mapped window of the file (sq_load_item.map), populated
                                      by the pool, instead of a copy into fresh memory; where
                                      mapping fails it is copied as before */
    sq_q4_layout q4_layout;        /* 4-bit weights quantized here come in this layout where
                                      sq_q4_layout_fits (BNB, the default, otherwise): G64 for
                                      a consumer that keeps the CPU backend's layout */
} sq_load_options;

sq_load_options sq_load_options_default(void);

/* CUDA devices this process sees; 0 in a build without CUDA or without a usable device. */
int sq_load_cuda_device_count(void);

typedef struct sq_load_stats {
    int n_tensors;                 /* handed to the consumer */
    uint64_t bytes_read;           /* checkpoint bytes this rank read */
    uint64_t out_bytes;            /* bytes handed over (4-bit parts + dense) */
    double seconds;                /* this rank's load, from start to its last tensor */
    double gbps;                   /* bytes_read / seconds / 1e9 */
} sq_load_stats;

/* Byte counts of one stage, exactly as sq_load_stage will produce them. */
typedef struct sq_load_bytes {
    int n_tensors;
    uint64_t src_bytes;            /* checkpoint bytes to read */
    uint64_t out_bytes;            /* the quantized share: 4-bit parts (JSON excluded) + dense */
    uint64_t max_out_bytes;        /* the largest single output tensor */
    uint64_t staging_bytes;        /* the staging buffer that will be allocated */
    uint64_t transient_bytes;      /* largest piece output + float32 absmax (see the bound) */
} sq_load_bytes;

/* Tensor indices of the stage, in the order they are loaded; *idx malloc'd (caller frees). */
sq_status sq_load_stage_tensors(const sq_meta *m, const sq_load_stage_desc *stage,
                                bool tied_head_copy, int **idx, int *n, sq_error *err);
sq_status sq_load_stage_bytes(const sq_meta *m, const sq_ckpt *st,
                              const sq_load_stage_desc *stage, const sq_load_options *o,
                              sq_load_bytes *out, sq_error *err);

/* Loads the stage (see the top of this file).  stats may be NULL.  With o->comm every rank of
 * comm must call it, each with its own stage; the function returns this rank's status only
 * (agree on the outcome afterwards).  err->rank is left as the caller initialised it. */
sq_status sq_load_stage(const sq_ckpt *st, const sq_meta *m, const sq_load_stage_desc *stage,
                        const sq_load_options *o, sq_load_consumer_fn consumer, void *user,
                        sq_load_stats *stats, sq_error *err);

/* Frees what an item still owns (done by the loader after the consumer returns). */
void sq_load_item_release(sq_load_item *item);

/* ---- bitsandbytes' serialization (../shared/reference/bnb-nf4-format.md §4) -------------- */

/* Python's repr() of the double d (shortest digits that read back to d; exponent form when
 * the decimal exponent is < -4 or >= 16, "1e-05", "0.0001", "1.0", "nan", "inf").  Returns
 * the length; buf must hold 32 bytes. */
int sq_bnb_py_repr(double d, char *buf, size_t buf_bytes);
/* The quant_state JSON of q exactly as bnb's pack_dict_to_tensor writes it (json.dumps:
 * keys quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]).
 * *json malloc'd, NUL-terminated; *len excludes the NUL. */
sq_status sq_bnb_quant_state_json(const sq_qtensor *q, char **json, size_t *len, sq_error *err);
/* ".quant_state.bitsandbytes__nf4" or "…__fp4": the key suffix of the JSON blob. */
const char *sq_bnb_quant_state_suffix(sq_quant_type t);

/* ---- distributed quantize: `mpirun -np N shardq quantize` ---------------------------------- */
typedef enum sq_quantize_on {
    SQ_QUANTIZE_ON_CPU = 0,        /* every rank quantizes on its CPU */
    SQ_QUANTIZE_ON_AUTO,           /* a CUDA build on a rank whose machine has devices: device
                                      local rank mod count; else the CPU */
    SQ_QUANTIZE_ON_CUDA,           /* device quant_device on every rank, or fail */
} sq_quantize_on;

typedef struct sq_quantize_options {
    const char *model_dir;
    const char *out_dir;
    const char *plan_path;         /* NULL: plan for the ranks of comm (host memory capacity) */
    sq_quant_scheme scheme;        /* type NF4 / FP4; a pre-quantized input keeps its own */
    bool scheme_given;             /* the user chose the scheme (else a plan file's / default) */
    const char *compute_dtype;     /* "bfloat16" / "float16" (bnb_4bit_compute_dtype) */
    bool force;                    /* replace out_dir if it exists and holds a model */
    uint64_t staging_bytes;        /* 0: default */
    int n_threads;                 /* quantization threads per rank; <= 0: one per core */
    sq_load_progress_fn progress;  /* rank 0 of comm only; may be NULL */
    void *progress_user;
    double progress_interval_s;
    sq_log log;
    sq_quantize_on quant_on;       /* where 4-bit weights are quantized (CPU: the zero default) */
    int quant_device;              /* SQ_QUANTIZE_ON_CUDA: this device on every rank */
    sq_trace *trace;               /* this rank's tracer (NULL: off); the caller writes it */
} sq_quantize_options;

typedef struct sq_quantize_result {
    int n_ranks;
    int n_tensors;                 /* tensors (with companions) in the index */
    uint64_t total_size;           /* the index's metadata.total_size */
    uint64_t bytes_read;           /* all ranks */
    double seconds;                /* wall time of the load + write, slowest rank */
    double gbps;                   /* bytes_read / seconds */
    double load_seconds;           /* read + quantize only (no file writing), slowest rank */
    double load_gbps;              /* bytes_read / load_seconds */
    bool prequantized;             /* the input was already a bnb 4-bit checkpoint */
    sq_quant_scheme scheme;
    uint64_t max_rss_bytes;        /* largest VmHWM over the ranks (0 when unknown) */
    int cuda_ranks;                /* ranks that quantized on a CUDA device (0: all on CPUs) */
} sq_quantize_result;

/* Collective over comm (MPI_ERRORS_RETURN): every rank loads and quantizes its stage and
 * writes "model-<r+1>-of-<N>.safetensors" into "<out_dir>.tmp.<pid of rank 0>"; rank 0 adds
 * model.safetensors.index.json, config.json (with quantization_config), generation_config.json
 * and the tokenizer files; the folder is renamed to out_dir only after every rank succeeded.
 * On any failure every rank returns the same error, naming the first failing rank (its
 * err->rank), and no out_dir and no temporary are left.  The output folder must be on a file
 * system every rank sees.  res may be NULL. */
sq_status sq_quantize_run(MPI_Comm comm, const sq_quantize_options *o, sq_quantize_result *res,
                          sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
