/* safetensors: the only code that touches checkpoint bytes.
 *
 * Reads single files and sharded folders (model.safetensors.index.json), validates every
 * header before any tensor byte is touched (overflow-safe), looks tensors up by name, converts
 * BF16/F16/F32 <-> float32, and writes files (temporary name, renamed at the end).
 *
 * Ownership: sq_st_file / sq_st_model are opaque; *_open pairs with *_close (takes NULL).
 * Every `const sq_tensor_info *` and every data pointer returned points into the handle and
 * lives until it is closed.  On failure *out is NULL, nothing leaks, err names file + tensor.
 *
 * Status codes of the readers: SQ_ERR_IO for a file that cannot be opened or mapped and for a
 * file shorter than its header says (header length past the end, data_offsets past the end of
 * the data section); SQ_ERR_UNSUPPORTED for an unknown dtype or more than SQ_MAX_DIMS
 * dimensions; SQ_ERR_FORMAT for everything else a header or index.json gets wrong (empty or
 * < 8-byte file, header over 100 MB, not JSON, not an object of objects, bad shape or offsets,
 * shape x dtype size != span, overlaps, duplicate names); SQ_ERR_NOMEM.  The message is one
 * line: "<file>: tensor '<name>': <cause>" (sq_error_format).
 *
 * Not checked (as the Rust crate is stricter): gaps between tensors and unused bytes at the
 * end of the data section are allowed; keys other than dtype/shape/data_offsets in an entry
 * are ignored.  Numbers above 2^53 (not exact in JSON's doubles) are rejected.
 *
 * Alignment: a tensor's bytes start at 8 + header length + data_offsets[0]; files from the
 * Rust crate and from sq_st_writer keep that a multiple of 8 when every tensor before it is,
 * but a foreign file may not.  sq_convert_to_f32 accepts any alignment; the typed loops
 * (sq_bf16_to_f32, ...) need their element alignment. */
#ifndef SHARDQ_SAFETENSORS_H
#define SHARDQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "shardq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sq_dtype {
    SQ_DTYPE_F64 = 0, SQ_DTYPE_F32, SQ_DTYPE_F16, SQ_DTYPE_BF16,
    SQ_DTYPE_I64, SQ_DTYPE_I32, SQ_DTYPE_I16, SQ_DTYPE_I8, SQ_DTYPE_U8, SQ_DTYPE_BOOL,
    SQ_DTYPE_F8_E4M3, SQ_DTYPE_F8_E5M2,
    SQ_DTYPE_COUNT
} sq_dtype;

/* "F32", "BF16", … exactly as safetensors spells them. */
const char *sq_dtype_name(sq_dtype d);
/* Bytes per element. */
size_t sq_dtype_size(sq_dtype d);
/* Looks a safetensors dtype name up; returns false for an unknown name. */
bool sq_dtype_from_name(const char *name, sq_dtype *out);

#define SQ_MAX_DIMS 8
#define SQ_ST_MAX_HEADER_BYTES (100u * 1000u * 1000u)

typedef struct sq_tensor_info {
    const char *name;          /* owned by the handle */
    sq_dtype dtype;
    int n_dims;                /* 0 for a scalar */
    int64_t shape[SQ_MAX_DIMS];
    uint64_t n_elements;
    uint64_t offset;           /* absolute byte offset in its file (8 + header + data_offsets[0]) */
    uint64_t n_bytes;
    int file_index;            /* which file of a sharded model: sq_st_model_file(m, i)
                                * (0 for a file opened alone) */
} sq_tensor_info;

/* ---- one file ------------------------------------------------------------------------- */
typedef struct sq_st_file sq_st_file;

/* Opens, maps and validates one .safetensors file: header length <= 100 MB and <= size - 8;
 * the header is a JSON object of objects; known dtypes; shapes of non-negative integers;
 * prod(shape) * dtype size == the data_offsets span; offsets inside the data section; no
 * overlaps; no duplicate names.  Tensor bytes are not read. */
sq_status sq_st_file_open(const char *path, sq_st_file **out, sq_error *err);
void sq_st_file_close(sq_st_file *f);
const char *sq_st_file_path(const sq_st_file *f);
uint64_t sq_st_file_size(const sq_st_file *f);
size_t sq_st_file_n_tensors(const sq_st_file *f);
/* Tensors in header order (i < n_tensors). */
const sq_tensor_info *sq_st_file_tensor(const sq_st_file *f, size_t i);
/* NULL when absent. */
const sq_tensor_info *sq_st_file_find(const sq_st_file *f, const char *name);
/* __metadata__ value for key, or NULL. */
const char *sq_st_file_metadata(const sq_st_file *f, const char *key);
/* Pointer to the tensor's bytes inside the mapping (pages are faulted in on first touch). */
const void *sq_st_file_data(const sq_st_file *f, const sq_tensor_info *t);

/* Parses and validates a header held in memory: `buf` is the whole file prefix (at least
 * 8 + header length bytes, or fewer to test truncation) and file_size the file's size.
 * Used by sq_st_file_open and by the fuzzer.  On success returns the tensor count. */
sq_status sq_st_header_check(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                             const char *path, size_t *n_tensors, sq_error *err);

/* ---- a model folder: one file or an index of shards --------------------------------------- */
typedef struct sq_st_model sq_st_model;

/* Opens DIR/model.safetensors.index.json (every shard it names must exist and hold the tensors
 * the weight_map assigns to it) or else DIR/model.safetensors, or else the only *.safetensors
 * (several and no index: SQ_ERR_FORMAT; none: SQ_ERR_IO).  Shard names must be plain file
 * names inside DIR.  Files are kept in name order.  The model's tensors are every tensor of
 * every file (a shard's tensor missing from weight_map is kept); a name found in two files is
 * an error.  Lookups by name are a binary search. */
sq_status sq_st_model_open(const char *dir, sq_st_model **out, sq_error *err);
void sq_st_model_close(sq_st_model *m);
size_t sq_st_model_n_files(const sq_st_model *m);
const char *sq_st_model_file_path(const sq_st_model *m, size_t i);
const sq_st_file *sq_st_model_file(const sq_st_model *m, size_t i);
size_t sq_st_model_n_tensors(const sq_st_model *m);
/* All tensors across files, in a stable order (file order, then header order). */
const sq_tensor_info *sq_st_model_tensor(const sq_st_model *m, size_t i);
const sq_tensor_info *sq_st_model_find(const sq_st_model *m, const char *name);
const void *sq_st_model_data(const sq_st_model *m, const sq_tensor_info *t);
/* Sum of n_bytes over the model's tensors. */
uint64_t sq_st_model_data_bytes(const sq_st_model *m);

/* ---- conversion (hot path: vectorizable loops, round-to-nearest-even) ---------------------
 * Bit-exact with F16C / AVX512-BF16 hardware: RNE; F16 subnormals exact both ways; F16
 * overflow -> inf; NaN stays NaN with its sign and top payload bits and comes out quiet.
 * src and dst must not overlap (except sq_convert_to_f32 from F32, a memmove). */
void sq_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
void sq_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void sq_f32_to_bf16(const float *src, uint16_t *dst, size_t n);   /* RNE; NaN stays NaN */
void sq_f32_to_f16(const float *src, uint16_t *dst, size_t n);    /* RNE; overflow -> inf */
/* Any of F32/F16/BF16 (and F64) to float32; SQ_ERR_UNSUPPORTED for other dtypes. */
sq_status sq_convert_to_f32(sq_dtype src_dtype, const void *src, float *dst, size_t n,
                            sq_error *err);
static inline float sq_bf16_to_f32_1(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t sq_f32_to_bf16_1(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);  /* quiet NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* ---- writer --------------------------------------------------------------------------- */
typedef struct sq_st_writer sq_st_writer;

/* Starts a file at `path`; bytes go to "<path>.tmp.<pid>" until sq_st_writer_finish renames
 * it.  Tensors are declared with add (name, dtype, shape, bytes copied).  The header lists
 * __metadata__ first, then tensors in the order added, with consecutive data_offsets, padded
 * with spaces to a multiple of 8 bytes as the Rust crate does. */
sq_status sq_st_writer_create(const char *path, sq_st_writer **out, sq_error *err);
/* Adds one tensor; `data` (n_bytes = prod(shape) * dtype size) is copied, so it may be freed
 * after the call.  Duplicate names are rejected. */
sq_status sq_st_writer_add(sq_st_writer *w, const char *name, sq_dtype dtype, int n_dims,
                           const int64_t *shape, const void *data, uint64_t n_bytes,
                           sq_error *err);
/* Makes bytes [offset, offset + n) of a tensor into buf (n <= 16 MiB, a multiple of 8 except at
 * the end; offsets come in increasing order, each tensor once).  A failure stops the finish. */
typedef sq_status (*sq_st_fill_fn)(void *user, void *buf, uint64_t offset, uint64_t n,
                                   sq_error *err);
/* Like sq_st_writer_add, but the bytes are made by `fill` while finish writes them, 16 MiB at
 * a time: a file of any size is written in bounded memory.  user must outlive the finish. */
sq_status sq_st_writer_add_fill(sq_st_writer *w, const char *name, sq_dtype dtype, int n_dims,
                                const int64_t *shape, uint64_t n_bytes, sq_st_fill_fn fill,
                                void *user, sq_error *err);
/* Adds a "__metadata__" string entry (a key given twice: SQ_ERR_INVALID). */
sq_status sq_st_writer_metadata(sq_st_writer *w, const char *key, const char *value,
                                sq_error *err);
/* Writes the header + data to the temporary file, fsyncs and renames it to `path` (then
 * fsyncs the folder).  With rename_now false it stops before the rename (multi-rank commit):
 * call sq_st_writer_commit later, or destroy to remove the temporary.  Tensor copies are freed
 * as they are written.  After a failure the temporary is gone and the writer only accepts
 * destroy; `path` is untouched. */
sq_status sq_st_writer_finish(sq_st_writer *w, bool rename_now, sq_error *err);
sq_status sq_st_writer_commit(sq_st_writer *w, sq_error *err);
/* Frees the writer; removes the temporary file if it was not renamed. Takes NULL. */
void sq_st_writer_destroy(sq_st_writer *w);

#ifdef __cplusplus
}
#endif
#endif
