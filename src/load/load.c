/* Owns the per-rank streaming loader: which tensors a stage holds, the list of reads the
 * read-ahead thread (reader.c) makes for them, quantizing decoder Linear weights piece by piece
 * as the pieces arrive (whole absmax blocks at a time, so the bytes equal a whole-tensor
 * sq_quant_4bit_from), reading pre-quantized bitsandbytes weights, GGUF blocks and rows to
 * reorder whole with pread() on this thread, and handing each result to the consumer; with
 * quant_device >= 0 the 4-bit weights go through the GPU ring of load_cuda.c instead of the CPU
 * quantizer.  Must never read a tensor outside the stage, touch the safetensors mapping's data
 * pages, print, or hold more than the staging ring and one dense tensor read ahead. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "load_impl.h"
#include "shardq/ggml_quant.h"

#define READ_CHUNK_BYTES (8ull << 20)   /* dense reads tick progress this often */
#define MAX_QUANT_STATE_BYTES 4096

sq_load_options sq_load_options_default(void) {
    return (sq_load_options){.scheme = sq_quant_scheme_default(), .staging_bytes = 0,
                             .pool = NULL, .tied_head_copy = false, .comm = MPI_COMM_NULL,
                             .progress = NULL, .progress_user = NULL, .progress_interval_s = 0,
                             .quant_device = -1};
}

#ifndef SHARDQ_HAVE_CUDA
/* Built without CUDA: no device, and the GPU ring cannot be made (load_cuda.c is not built). */
int sq_load_cuda_device_count(void) { return 0; }

sq_status load_gpu_create(int device, uint64_t staging_bytes, int64_t blocksize, load_gpu **out,
                          sq_error *err) {
    (void)staging_bytes;
    (void)blocksize;
    *out = NULL;
    return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                        "GPU quantize on CUDA device %d: this shardq was built without CUDA "
                        "(rebuild with -DSHARDQ_CUDA=ON, or quantize on the CPU)", device);
}
void load_gpu_destroy(load_gpu *g) { (void)g; }
sq_status load_gpu_quantize(load_gpu *g, sq_dtype dtype, load_read_fn read, void *ctx,
                            sq_qtensor *q, const char *path, const char *name, sq_error *err) {
    (void)g, (void)dtype, (void)read, (void)ctx, (void)q;
    return sq_error_set(err, SQ_ERR_INTERNAL, path, name, "GPU quantize in a build without CUDA");
}
#endif

sq_load_stage_desc sq_load_stage_from_plan(const sq_plan_stage *s) {
    return (sq_load_stage_desc){.first_layer = s->first_layer, .n_layers = s->n_layers,
                                .has_embed = s->has_embed, .has_head = s->has_head};
}

void sq_load_item_release(sq_load_item *item) {
    if (!item) return;
    if (item->map_len) {   /* data lies in a mapping: the item's, or taken by the consumer */
        if (item->map) munmap(item->map, (size_t)item->map_len);
    } else if (!item->borrowed) {
        free(item->data);
    }
    item->data = item->map = NULL;
    item->map_len = 0;
    sq_qtensor_free(&item->q);
}

/* ---- the loader --------------------------------------------------------------------------- */

typedef struct loader {
    const sq_ckpt *st;
    const sq_meta *m;
    const sq_load_options *o;
    const sq_load_stage_desc *stage;
    int *fds;                /* (n_files) opened on first use, -1 before */
    size_t n_files;
    load_gpu *gpu;           /* quant_device >= 0: the GPU ring (then staging is NULL) */
    load_prog prog;
    /* the CPU path: pieces and dense tensors come from the read-ahead thread */
    load_reader *rd;
    load_unit *units;        /* (n_units) in load order */
    size_t n_units, next_unit;
    unsigned char *kind;     /* (n) per stage tensor: unit_kind */
    sq_trace *trace;         /* borrowed; NULL: off */
} loader;

/* Re-labels an error from a lower layer with the tensor's name (its message kept). */
static sq_status with_tensor(sq_error *err, sq_status rc, const char *name) {
    if (!err) return rc;
    char msg[sizeof err->msg], file[sizeof err->file];
    memcpy(msg, err->msg, sizeof msg);
    memcpy(file, err->file, sizeof file);
    return sq_error_set(err, rc, file[0] ? file : NULL, name, "%s", msg);
}


static sq_status get_fd(loader *L, int file_index, const char *tensor, int *fd, sq_error *err) {
    return load_open_fd(L->st, L->fds, L->n_files, file_index, tensor, fd, err);
}

/* Reads bytes [off, off + n) of tensor `t` into dst on the calling thread, counting progress
 * (the paths that read a tensor whole: GGUF blocks, rows to reorder, pre-quantized parts). */
static sq_status read_range(loader *L, const sq_ckpt_tensor *t, uint64_t off, uint64_t n,
                            void *dst, const char *name, sq_error *err) {
    int fd = -1;
    sq_status rc = get_fd(L, t->file_index, name, &fd, err);
    if (rc != SQ_OK) return rc;
    const char *path = sq_ckpt_file_path(L->st, (size_t)t->file_index);
    double t0 = sq_trace_begin(L->trace);
    for (uint64_t done = 0; done < n;) {
        uint64_t m = n - done < READ_CHUNK_BYTES ? n - done : READ_CHUNK_BYTES;
        rc = load_pread(fd, path, name, t->offset + off + done, m, t->offset + t->n_bytes,
                        (uint8_t *)dst + done, err);
        if (rc != SQ_OK) return rc;
        done += m;
        load_prog_add(&L->prog, m);
    }
    sq_trace_end_ex(L->trace, LOAD_TRACK_COMPUTE, "read", t0, name, (int64_t)n);
    return SQ_OK;
}

static void prefetch(loader *L, const sq_ckpt_tensor *t, uint64_t off, uint64_t n) {
    if (t->file_index < 0 || (size_t)t->file_index >= L->n_files || L->fds[t->file_index] < 0)
        return;
    posix_fadvise(L->fds[t->file_index], (off_t)(t->offset + off), (off_t)n, POSIX_FADV_WILLNEED);
}

static sq_status check_absmax(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                              const sq_qtensor *q, sq_error *err);

/* The float32 values of a [rows, cols] weight stored in a ggml block format (*out malloc'd). */
static sq_status load_ggml_dequantize(int type, const void *raw, int64_t rows, int64_t cols,
                                      float **out, const char *name, sq_error *err) {
    *out = NULL;
    uint64_t row_bytes = 0, n = 0;
    sq_status rc = sq_ggml_row_bytes(type, cols, &row_bytes, err);
    if (rc != SQ_OK) return with_tensor(err, rc, name);
    if (!sq_mul_u64((uint64_t)rows, (uint64_t)cols, &n) || !(*out = load_alloc_dense(n * sizeof(float))))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for %lld x %lld floats",
                            (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; r++)
        sq_ggml_dequantize_row((sq_ggml_type)type, (const uint8_t *)raw + (uint64_t)r * row_bytes,
                               *out + (uint64_t)r * (uint64_t)cols, cols);
    return SQ_OK;
}

/* Reads the whole of w (n_bytes, malloc'd into *out) and puts its rows in HF order. */
static sq_status read_whole(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                            void **out, sq_error *err) {
    *out = load_alloc_dense(w->n_bytes);
    if (!*out)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory for %llu bytes",
                            (unsigned long long)w->n_bytes);
    sq_status rc = read_range(L, w, 0, w->n_bytes, *out, t->name, err);
    if (rc == SQ_OK && w->rope_heads > 0 && w->n_dims >= 1 && w->shape[0] > 0)
        rc = sq_ckpt_unpermute_rows(w, *out, w->n_bytes / (uint64_t)w->shape[0], err);
    if (rc != SQ_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* A weight kept in its ggml block format: the stored rows, in HF row order. */
static sq_status load_ggml(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                           sq_load_item *item, sq_error *err) {
    item->dtype = SQ_DTYPE_U8;
    item->ggml_type = w->ggml_type;
    item->n_dims = 2;
    item->shape[0] = t->shape[0];
    item->shape[1] = t->shape[1];
    item->n_bytes = w->n_bytes;
    item->src_bytes = w->n_bytes;
    return read_whole(L, t, w, &item->data, err);
}

/* Re-quantizes a weight that cannot be read piece by piece (a ggml block format, or rows in
 * llama.cpp's order): the whole tensor, its exact float32 values, then NF4 / FP4. */
static sq_status load_quantize_whole(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                                     const sq_quant_scheme *s, sq_load_item *item, sq_error *err) {
    void *raw = NULL;
    sq_status rc = read_whole(L, t, w, &raw, err);
    if (rc != SQ_OK) return rc;
    sq_dtype src_dtype = w->dtype;
    void *src = raw;
    float *f32 = NULL;
    if (w->ggml_type >= 0 && w->dtype == SQ_DTYPE_U8) {
        rc = load_ggml_dequantize(w->ggml_type, raw, t->shape[0], t->shape[1], &f32, t->name, err);
        src = f32;
        src_dtype = SQ_DTYPE_F32;
    }
    item->is_4bit = true;
    item->src_bytes = w->n_bytes;
    if (sq_quant_type_is_int8(s->type)) {   /* int8: the rows of the exact float32 values */
        if (rc == SQ_OK)
            rc = sq_quant_int8_from(s->type, src_dtype, src, t->shape[0], t->shape[1], L->o->pool,
                                    &item->q, err);
        free(raw);
        free(f32);
        return rc == SQ_OK ? rc : with_tensor(err, rc, t->name);
    }
    sq_quant_scheme whole = *s;
    whole.double_quant = false;   /* done by sq_qtensor_compress, as on the piece path */
    if (rc == SQ_OK)
        rc = sq_quant_4bit_from(src_dtype, src, t->shape[0], t->shape[1], &whole, L->o->pool,
                                &item->q, err);
    free(raw);
    free(f32);
    if (rc != SQ_OK) return with_tensor(err, rc, t->name);
    rc = check_absmax(L, t, w, &item->q, err);
    if (rc == SQ_OK && s->double_quant) {   /* the absmax into a double-quant tensor, compressed */
        sq_qtensor dq;
        rc = sq_qtensor_init(&dq, s, t->shape[0], t->shape[1], src_dtype, err);
        if (rc == SQ_OK) {
            memcpy(dq.packed, item->q.packed, (size_t)sq_size_4bit_packed_bytes(t->n_elements));
            memcpy(dq.absmax, item->q.absmax, (size_t)item->q.n_blocks * sizeof(float));
            sq_qtensor_free(&item->q);
            item->q = dq;
            rc = sq_qtensor_compress(&item->q, err);
        }
        if (rc != SQ_OK) rc = with_tensor(err, rc, t->name);
    }
    return rc;
}

static sq_status load_dense(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                            sq_load_item *item, sq_error *err) {
    if (w->rope_heads > 0) {   /* rows to put back in order: the whole tensor at once */
        item->dtype = w->dtype;
        item->n_dims = t->n_dims;
        item->shape[0] = t->shape[0];
        item->shape[1] = t->n_dims > 1 ? t->shape[1] : 0;
        item->n_bytes = w->n_bytes;
        item->src_bytes = w->n_bytes;
        return read_whole(L, t, w, &item->data, err);
    }
    item->dtype = w->dtype;
    item->n_dims = t->n_dims;
    item->shape[0] = t->shape[0];
    item->shape[1] = t->n_dims > 1 ? t->shape[1] : 0;
    item->n_bytes = w->n_bytes;
    item->src_bytes = w->n_bytes;
    /* read by the reader thread into a buffer of its own, now the item's; a deferred one (larger
     * than a slot) by the pool here */
    const size_t u = L->next_unit++;
    uint8_t *slot = NULL;
    sq_status rc = load_reader_get(L->rd, u, &slot, &item->data, err);
    if (rc == SQ_OK && L->units[u].deferred) {
        int fd = -1;
        rc = get_fd(L, w->file_index, t->name, &fd, err);
        if (rc == SQ_OK && !(L->o->dense_map &&
                             load_map_parallel(fd, w, L->o->pool, L->trace, t->name, &item->data,
                                               &item->map, &item->map_len)))
            rc = load_read_parallel(L->st, fd, w, t->name, L->o->pool, L->trace, &item->data, err);
    }
    if (rc == SQ_OK) load_prog_add(&L->prog, w->n_bytes);
    load_reader_release(L->rd, u);
    return rc;
}

/* The GPU ring's reader: one chunk of the weight into pinned memory, then read-ahead advice for
 * the next chunk. */
typedef struct gpu_read_ctx {
    loader *L;
    const sq_ckpt_tensor *w;
    const char *name;
} gpu_read_ctx;

static sq_status gpu_read(void *ctx, uint64_t off, uint64_t n, void *dst, sq_error *err) {
    gpu_read_ctx *c = ctx;
    sq_status rc = read_range(c->L, c->w, off, n, dst, c->name, err);
    if (rc == SQ_OK && off + n < c->w->n_bytes) {
        uint64_t left = c->w->n_bytes - off - n;
        prefetch(c->L, c->w, off + n, left < n ? left : n);
    }
    return rc;
}

/* Every absmax of blocks [b0, b1) finite, else SQ_ERR_FORMAT naming the first bad block (bnb
 * would store a NaN absmax).  The scan is branch-free per 64 blocks (it runs on every piece
 * while its absmax is still in cache); only a group holding a bad one is looked at closely. */
static sq_status check_absmax_range(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                                    const sq_qtensor *q, uint64_t b0, uint64_t b1, sq_error *err) {
    const uint64_t n = q->n_elements, B = (uint64_t)q->blocksize;
    for (uint64_t g = b0; g < b1; g += 64) {
        const uint64_t ge = g + 64 < b1 ? g + 64 : b1;
        uint32_t bad = 0;
        for (uint64_t b = g; b < ge; b++) {
            uint32_t bits;
            memcpy(&bits, &q->absmax[b], 4);
            bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);   /* NaN or Inf */
        }
        if (!bad) continue;
        for (uint64_t b = g; b < ge; b++) {
            if (isfinite(q->absmax[b])) continue;
            uint64_t e0 = b * B, e1 = e0 + B < n ? e0 + B : n;
            return sq_error_set(err, SQ_ERR_FORMAT, sq_ckpt_file_path(L->st, (size_t)w->file_index),
                                t->name, "block %llu (elements %llu..%llu, row %llu) holds NaN or "
                                "Inf: the checkpoint is corrupt", (unsigned long long)b,
                                (unsigned long long)e0, (unsigned long long)(e1 - 1),
                                (unsigned long long)(e0 / (uint64_t)t->shape[1]));
        }
    }
    return SQ_OK;
}

static sq_status check_absmax(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                              const sq_qtensor *q, sq_error *err) {
    return check_absmax_range(L, t, w, q, 0, q->n_blocks, err);
}

static sq_status load_quantize(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                               const sq_quant_scheme *s, sq_load_item *item, sq_error *err) {
    if (w->dtype != SQ_DTYPE_BF16 && w->dtype != SQ_DTYPE_F16 && w->dtype != SQ_DTYPE_F32)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                            "cannot quantize dtype %s", sq_dtype_name(w->dtype));
    const size_t es = sq_dtype_size(w->dtype);
    const uint64_t n = t->n_elements;
    item->is_4bit = true;
    item->src_bytes = w->n_bytes;
    if (sq_quant_type_is_int8(s->type)) {   /* on the CPU: the reader's pieces are whole rows */
        sq_qtensor *q = &item->q;
        sq_status rc = sq_qtensor_init_int8(q, s->type, t->shape[0], t->shape[1], w->dtype, err);
        if (rc != SQ_OK) return with_tensor(err, rc, t->name);
        const uint64_t row_bytes = (uint64_t)t->shape[1] * es;
        for (uint64_t r0 = 0; rc == SQ_OK && r0 < (uint64_t)t->shape[0];) {
            const size_t u = L->next_unit++;
            uint8_t *buf = NULL;
            void *none = NULL;
            rc = load_reader_get(L->rd, u, &buf, &none, err);
            if (rc != SQ_OK) break;
            const uint64_t m = L->units[u].n / row_bytes;
            double t0 = sq_trace_begin(L->trace);
            rc = sq_quant_int8_rows(q, (int64_t)r0, w->dtype, buf, (int64_t)m, L->o->pool, err);
            sq_trace_end_ex(L->trace, LOAD_TRACK_COMPUTE, "quantize", t0, t->name,
                            (int64_t)(m * row_bytes));
            load_reader_release(L->rd, u);
            if (rc != SQ_OK) rc = with_tensor(err, rc, t->name);
            load_prog_add(&L->prog, m * row_bytes);
            r0 += m;
        }
        if (rc != SQ_OK) sq_qtensor_free(q);
        return rc;
    }
    sq_qtensor *q = &item->q;
    /* filled once, front to back: huge pages spare most of the page faults */
    sq_status rc = sq_qtensor_init_huge(q, s, t->shape[0], t->shape[1], w->dtype, err);
    if (rc != SQ_OK) return with_tensor(err, rc, t->name);
    if (L->gpu) {
        gpu_read_ctx c = {.L = L, .w = w, .name = t->name};
        rc = load_gpu_quantize(L->gpu, w->dtype, gpu_read, &c, q,
                               sq_ckpt_file_path(L->st, (size_t)w->file_index), t->name, err);
        if (rc == SQ_OK) rc = check_absmax(L, t, w, q, err);
        if (rc == SQ_OK) rc = sq_qtensor_compress(q, err);
        return rc == SQ_OK || rc == SQ_ERR_FORMAT || rc == SQ_ERR_CUDA || rc == SQ_ERR_IO
                   ? rc : with_tensor(err, rc, t->name);
    }
    /* the consumer's layout where the shape allows (pieces are whole blocks of >= 64) */
    if (sq_q4_layout_fits(L->o->q4_layout, t->shape[1], s->blocksize)) q->layout = L->o->q4_layout;
    /* the pieces, in order, as the reader thread read them (their sizes: make_units), each
     * quantized straight into its place in q (whole blocks; double quant later: its offset is
     * the mean over the whole tensor) */
    for (uint64_t first = 0; first < n;) {
        const size_t u = L->next_unit++;
        uint8_t *buf = NULL;
        void *none = NULL;
        rc = load_reader_get(L->rd, u, &buf, &none, err);
        if (rc != SQ_OK) return rc;
        const uint64_t m = L->units[u].n / es;
        double t0 = sq_trace_begin(L->trace);
        uint64_t bad = UINT64_MAX;   /* looked for by the quantizer's tasks, in cache */
        rc = sq_quant_4bit_part_checked(q, first, w->dtype, buf, m, L->o->pool,
                                        SQ_QUANT_ISA_AUTO, &bad, err);
        sq_trace_end_ex(L->trace, LOAD_TRACK_COMPUTE, "quantize", t0, t->name, (int64_t)(m * es));
        load_reader_release(L->rd, u);
        if (rc != SQ_OK) return with_tensor(err, rc, t->name);
        if (bad != UINT64_MAX) return check_absmax_range(L, t, w, q, bad, bad + 1, err);
        load_prog_add(&L->prog, m * es);
        first += m;
    }
    double t0 = sq_trace_begin(L->trace);
    rc = sq_qtensor_compress(q, err);
    if (s->double_quant) sq_trace_end_ex(L->trace, LOAD_TRACK_COMPUTE, "double quant", t0, t->name, -1);
    if (rc != SQ_OK) return with_tensor(err, rc, t->name);
    return SQ_OK;
}

/* bitsandbytes' tables, compared bit for bit (the sign of a zero entry aside: bnb's FP4
 * quant_map stores +0.0 where its kernels use -0.0) */
static bool same_table(const float *stored, const float *want, int n, int *bad) {
    for (int i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &stored[i], 4);
        memcpy(&b, &want[i], 4);
        if (a != b && !((a & 0x7fffffffu) == 0 && (b & 0x7fffffffu) == 0)) {
            *bad = i;
            return false;
        }
    }
    return true;
}

static sq_status read_part(loader *L, const sq_tensor_spec *t, const char *suffix, sq_dtype dtype,
                           uint64_t n_bytes, void *dst, uint64_t *src, sq_error *err) {
    const sq_ckpt_tensor *c = load_companion(L->st, t->name, suffix);
    if (!c || c->dtype != dtype || c->n_bytes != n_bytes)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                            "pre-quantized weight: '%s%s' is missing or not %s of %llu bytes",
                            t->name, suffix, sq_dtype_name(dtype), (unsigned long long)n_bytes);
    *src += c->n_bytes;
    return read_range(L, c, 0, n_bytes, dst, t->name, err);
}

static sq_status load_prequant(loader *L, const sq_tensor_spec *t, const sq_quant_scheme *s,
                               sq_load_item *item, sq_error *err) {
    sq_qtensor *q = &item->q;
    memset(q, 0, sizeof *q);
    const sq_quant_type type = t->stored_quant;
    const char *qs_suffix = sq_bnb_quant_state_suffix(type);
    const sq_ckpt_tensor *qs = load_companion(L->st, t->name, qs_suffix);
    if (!qs || qs->dtype != SQ_DTYPE_U8 || qs->n_bytes == 0 || qs->n_bytes > MAX_QUANT_STATE_BYTES)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                            "pre-quantized weight: no usable '%s%s'", t->name, qs_suffix);
    char blob[MAX_QUANT_STATE_BYTES + 1];
    uint64_t src = 0;
    sq_status rc = read_part(L, t, qs_suffix, SQ_DTYPE_U8, qs->n_bytes, blob, &src, err);
    if (rc != SQ_OK) return rc;
    blob[qs->n_bytes] = '\0';
    cJSON *j = cJSON_ParseWithLength(blob, (size_t)qs->n_bytes);
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(j, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "blocksize");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *nbs = cJSON_GetObjectItemCaseSensitive(j, "nested_blocksize");
    const cJSON *ndt = cJSON_GetObjectItemCaseSensitive(j, "nested_dtype");
    const cJSON *nof = cJSON_GetObjectItemCaseSensitive(j, "nested_offset");
    sq_dtype dtype = SQ_DTYPE_BF16;
    bool ok = cJSON_IsObject(j) && cJSON_IsString(qt) &&
              !strcmp(qt->valuestring, sq_quant_type_name(type)) && cJSON_IsNumber(bs) &&
              bs->valuedouble == (double)t->stored_blocksize && cJSON_IsString(dt) &&
              sq_torch_dtype_from_name(dt->valuestring, &dtype) &&
              (dtype == SQ_DTYPE_BF16 || dtype == SQ_DTYPE_F16 || dtype == SQ_DTYPE_F32) &&
              cJSON_IsArray(sh) && cJSON_GetArraySize(sh) == 2 &&
              cJSON_GetArrayItem(sh, 0)->valuedouble == (double)t->shape[0] &&
              cJSON_GetArrayItem(sh, 1)->valuedouble == (double)t->shape[1];
    double offset = 0;
    if (ok && t->stored_double_quant) {
        ok = cJSON_IsNumber(nbs) && nbs->valuedouble == SQ_BNB_NESTED_BLOCKSIZE &&
             cJSON_IsString(ndt) && !strcmp(ndt->valuestring, "float32") && cJSON_IsNumber(nof) &&
             isfinite(nof->valuedouble);
        if (ok) offset = nof->valuedouble;
    }
    cJSON_Delete(j);
    if (!ok)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                            "pre-quantized weight: quant_state JSON is invalid or disagrees with "
                            "the weight (want quant_type %s, blocksize %lld, shape [%lld, %lld]%s): %.200s",
                            sq_quant_type_name(type), (long long)t->stored_blocksize,
                            (long long)t->shape[0], (long long)t->shape[1],
                            t->stored_double_quant ? ", nested_blocksize 256, nested_offset" : "",
                            blob);

    q->type = type;
    q->blocksize = t->stored_blocksize;
    q->n_elements = t->n_elements;
    q->shape[0] = t->shape[0];
    q->shape[1] = t->shape[1];
    q->dtype = dtype;
    q->n_blocks = sq_size_4bit_n_blocks(t->n_elements, t->stored_blocksize);
    q->double_quant = t->stored_double_quant;
    q->nested_blocksize = SQ_BNB_NESTED_BLOCKSIZE;
    q->nested_offset = (float)offset;   /* exact: the JSON holds the float32's repr */
    const uint64_t packed = sq_size_4bit_packed_bytes(t->n_elements);
    const uint64_t nn = sq_ceil_div_u64(q->n_blocks, SQ_BNB_NESTED_BLOCKSIZE);
    q->packed = malloc((size_t)packed);
    if (q->double_quant) {
        q->absmax_q = malloc((size_t)q->n_blocks);
        q->nested_absmax = malloc((size_t)nn * sizeof(float));
    } else {
        q->absmax = malloc((size_t)q->n_blocks * sizeof(float));
    }
    if (!q->packed || (q->double_quant ? !q->absmax_q || !q->nested_absmax : !q->absmax))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory");
    float qmap[16], nmap[256];
    rc = read_part(L, t, "", SQ_DTYPE_U8, packed, q->packed, &src, err);
    if (rc == SQ_OK) rc = read_part(L, t, ".quant_map", SQ_DTYPE_F32, sizeof qmap, qmap, &src, err);
    if (rc == SQ_OK && q->double_quant) {
        rc = read_part(L, t, ".absmax", SQ_DTYPE_U8, q->n_blocks, q->absmax_q, &src, err);
        if (rc == SQ_OK)
            rc = read_part(L, t, ".nested_absmax", SQ_DTYPE_F32, nn * 4, q->nested_absmax, &src, err);
        if (rc == SQ_OK)
            rc = read_part(L, t, ".nested_quant_map", SQ_DTYPE_F32, sizeof nmap, nmap, &src, err);
    } else if (rc == SQ_OK) {
        rc = read_part(L, t, ".absmax", SQ_DTYPE_F32, q->n_blocks * 4, q->absmax, &src, err);
    }
    if (rc != SQ_OK) return rc;
    int bad = 0;
    if (!same_table(qmap, sq_quant_code_table(type), 16, &bad))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                            "quant_map entry %d differs from bitsandbytes' %s table", bad,
                            sq_quant_type_name(type));
    if (q->double_quant && !same_table(nmap, sq_quant_dynamic_map(), 256, &bad))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                            "nested_quant_map entry %d differs from bitsandbytes' dynamic map", bad);
    item->src_bytes = src;
    item->prequantized = true;
    if (s->type != SQ_QUANT_NONE) {
        item->is_4bit = true;
        return SQ_OK;
    }
    /* scheme NONE: bitsandbytes' dequantization, to the weight's original dtype */
    item->dtype = dtype;
    item->n_dims = 2;
    item->shape[0] = t->shape[0];
    item->shape[1] = t->shape[1];
    item->n_bytes = t->n_elements * sq_dtype_size(dtype);
    item->data = load_alloc_dense(item->n_bytes);
    if (!item->data) return sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory");
    rc = sq_dequant_4bit(q, item->data, dtype, err);
    sq_qtensor_free(q);
    return rc;
}

/* load_int8.c's reader: one whole checkpoint tensor */
static sq_status part_read(void *ctx, const sq_ckpt_tensor *c, void *dst, sq_error *err) {
    return read_range(ctx, c, 0, c->n_bytes, dst, c->name, err);
}

static sq_status load_one(loader *L, int ti, sq_load_item *item, sq_error *err) {
    const sq_tensor_spec *t = sq_meta_tensor(L->m, ti);
    memset(item, 0, sizeof *item);
    item->tensor = ti;
    item->spec = t;
    item->tied_head = t->role == SQ_ROLE_EMBED && !L->stage->has_embed;
    item->ggml_type = -1;
    const sq_ckpt_tensor *w = sq_ckpt_find(L->st, t->name);
    if (!w) return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name, "not in the checkpoint");
    const sq_quant_scheme s = load_effective_scheme(L->o);
    if (t->stored_quant == SQ_QUANT_INT8)
        return load_int8_prequant(L->st, t, s.type == SQ_QUANT_NONE, part_read, L, item, err);
    if (t->stored_quant != SQ_QUANT_NONE) return load_prequant(L, t, &s, item, err);
    if (load_quantize_now(t, &s))
        return w->ggml_type >= 0 && (w->dtype == SQ_DTYPE_U8 || w->rope_heads > 0)
                   ? load_quantize_whole(L, t, w, &s, item, err)
                   : load_quantize(L, t, w, &s, item, err);
    const bool blocks = t->stored_ggml >= 0 && t->dtype == SQ_DTYPE_U8;
    if (blocks && L->o->ggml_dense) {
        sq_status rc = load_ggml(L, t, w, item, err);
        float *f32 = NULL;
        if (rc == SQ_OK)
            rc = load_ggml_dequantize(w->ggml_type, item->data, t->shape[0], t->shape[1], &f32,
                                      t->name, err);
        free(item->data);
        item->data = f32;
        item->ggml_type = -1;
        item->dtype = SQ_DTYPE_F32;
        item->n_bytes = t->n_elements * 4;
        return rc;
    }
    if (blocks) return load_ggml(L, t, w, item, err);
    return load_dense(L, t, w, item, err);
}

/* What the reader thread reads for tensor t: 1 pieces of a weight quantized on the CPU,
 * 2 a dense tensor read whole; 0 nothing (read on the loading thread: pre-quantized parts,
 * GGUF blocks, rows to reorder, the GPU path).  Mirrors load_one's dispatch. */
static int unit_kind(const loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                     const sq_quant_scheme *s) {
    if (t->stored_quant != SQ_QUANT_NONE) return 0;
    if (load_quantize_now(t, s)) {
        if (L->gpu || (w->ggml_type >= 0 && (w->dtype == SQ_DTYPE_U8 || w->rope_heads > 0)))
            return 0;
        return w->dtype == SQ_DTYPE_BF16 || w->dtype == SQ_DTYPE_F16 || w->dtype == SQ_DTYPE_F32;
    }
    if (t->stored_ggml >= 0 && t->dtype == SQ_DTYPE_U8) return 0;
    return w->rope_heads > 0 ? 0 : 2;
}

/* The reader's list: every piece and dense tensor of the stage, in load order; *slot_bytes
 * the largest piece. */
static sq_status make_units(loader *L, const int *idx, int n, uint64_t budget,
                            uint64_t *slot_bytes, sq_error *err) {
    const sq_quant_scheme s = load_effective_scheme(L->o);
    size_t cap = 64, k = 0;
    load_unit *u = malloc(cap * sizeof *u);
    *slot_bytes = 0;
    if (!(L->kind = calloc((size_t)(n ? n : 1), 1))) {
        free(u);
        u = NULL;
    }
    for (int i = 0; u && i < n; i++) {
        const sq_tensor_spec *t = sq_meta_tensor(L->m, idx[i]);
        const sq_ckpt_tensor *w = sq_ckpt_find(L->st, t->name);
        int kind = w ? unit_kind(L, t, w, &s) : 0;
        L->kind[i] = (unsigned char)kind;
        if (!kind) continue;
        const size_t es = sq_dtype_size(w->dtype);
        const uint64_t slot_budget = budget / (uint64_t)load_n_slots(budget, s.blocksize);
        const bool pieces = kind == 2 && L->o->dense_pieces;
        const uint64_t step =
            kind == 1 && sq_quant_type_is_int8(s.type)   /* int8: whole rows (load_int8.c) */
                ? load_int8_piece_rows(slot_budget, es, t->shape[0], t->shape[1]) *
                      (uint64_t)t->shape[1] * es
            : kind == 1 ? load_piece_elements(slot_budget, es, s.blocksize) * es
            : pieces    ? (slot_budget ? slot_budget : 1)
                        : w->n_bytes;
        for (uint64_t off = 0; u && (off < w->n_bytes || (off == 0 && kind == 2));) {
            uint64_t m = w->n_bytes - off < step ? w->n_bytes - off : step;
            if (k == cap) {
                load_unit *g = realloc(u, 2 * cap * sizeof *u);
                if (!g) {
                    free(u);
                    u = NULL;
                    break;
                }
                u = g;
                cap *= 2;
            }
            u[k++] = (load_unit){.name = t->name, .file_index = w->file_index,
                                 .pos = w->offset + off, .n = m,
                                 .data_end = w->offset + w->n_bytes, .dense = kind == 2 && !pieces,
                                 .deferred = kind == 2 && !pieces && m > slot_budget};
            if ((kind == 1 || pieces) && m > *slot_bytes) *slot_bytes = m;
            off += m;
            if (m == 0) break;
        }
    }
    if (!u) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory listing reads");
    L->units = u;
    L->n_units = k;
    return SQ_OK;
}

/* A dense tensor handed over piece by piece straight from the staging slots (dense_pieces). */
static sq_status load_dense_pieces(loader *L, int ti, sq_load_consumer_fn consumer, void *user,
                                   const char *cname, sq_load_stats *stats, sq_error *err) {
    const sq_tensor_spec *t = sq_meta_tensor(L->m, ti);
    const sq_ckpt_tensor *w = sq_ckpt_find(L->st, t->name);
    sq_status rc = SQ_OK;
    for (uint64_t off = 0; rc == SQ_OK && (off < w->n_bytes || off == 0);) {
        const size_t u = L->next_unit++;
        sq_load_item item;
        memset(&item, 0, sizeof item);
        void *none = NULL;
        uint8_t *buf = NULL;
        rc = load_reader_get(L->rd, u, &buf, &none, err);
        if (rc != SQ_OK) break;
        item.tensor = ti;
        item.spec = t;
        item.tied_head = t->role == SQ_ROLE_EMBED && !L->stage->has_embed;
        item.ggml_type = -1;
        item.dtype = w->dtype;
        item.n_dims = t->n_dims;
        item.shape[0] = t->shape[0];
        item.shape[1] = t->n_dims > 1 ? t->shape[1] : 0;
        item.data = buf;
        item.borrowed = true;
        item.n_bytes = item.src_bytes = L->units[u].n;
        item.piece_offset = off;
        item.total_bytes = w->n_bytes;
        load_prog_add(&L->prog, item.n_bytes);
        double c0 = sq_trace_begin(L->trace);
        rc = consumer(user, &item, err);
        sq_trace_end_ex(L->trace, LOAD_TRACK_COMPUTE, cname, c0, t->name, (int64_t)item.n_bytes);
        load_reader_release(L->rd, u);
        if (rc == SQ_OK && stats) {
            stats->bytes_read += item.n_bytes;
            stats->out_bytes += item.n_bytes;
            if (off + item.n_bytes >= w->n_bytes) stats->n_tensors++;
        }
        off += item.n_bytes;
        if (item.n_bytes == 0) break;
    }
    return rc;
}

sq_status sq_load_stage(const sq_ckpt *st, const sq_meta *m, const sq_load_stage_desc *stage,
                        const sq_load_options *o, sq_load_consumer_fn consumer, void *user,
                        sq_load_stats *stats, sq_error *err) {
    if (stats) memset(stats, 0, sizeof *stats);
    loader L = {.st = st, .m = m, .o = o, .stage = stage, .trace = o ? o->trace : NULL};
    int *idx = NULL, n = 0;
    sq_load_bytes bytes;
    /* argument problems are found before the collective start, but every rank still goes
     * through start / finish so that no peer waits for it */
    sq_status rc = (!st || !m || !stage || !o || !consumer)
                       ? sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "load: missing argument")
                       : SQ_OK;
    if (rc == SQ_OK && o->scheme.type != SQ_QUANT_NONE) rc = sq_quant_scheme_check(&o->scheme, err);
    if (rc == SQ_OK) rc = sq_load_stage_bytes(m, st, stage, o, &bytes, err);
    if (rc == SQ_OK) rc = sq_load_stage_tensors(m, stage, o->tied_head_copy, &idx, &n, err);
    /* the GPU ring is made before the collective start, so a missing device or a build without
     * CUDA fails before any byte is read */
    const bool use_gpu = rc == SQ_OK && o->quant_device >= 0 && o->scheme.type != SQ_QUANT_NONE &&
                         !sq_quant_type_is_int8(o->scheme.type);   /* int8: on the CPU */
    if (rc == SQ_OK && o->quant_device >= 0) {
        const sq_quant_scheme es = load_effective_scheme(o);
        const uint64_t budget = o->staging_bytes ? o->staging_bytes : SQ_LOAD_DEFAULT_STAGING_BYTES;
        /* the budget, but no more than the largest weight needs (bytes.staging_bytes) */
        uint64_t want = bytes.staging_bytes < budget ? bytes.staging_bytes : budget;
        if (use_gpu) rc = load_gpu_create(o->quant_device, want, es.blocksize, &L.gpu, err);
        else if (sq_load_cuda_device_count() <= o->quant_device)
            rc = load_gpu_create(o->quant_device, 0, 64, &L.gpu, err);   /* for its message */
    }
    sq_load_options none = sq_load_options_default();
    load_prog_start(&L.prog, o ? o : &none, rc == SQ_OK ? bytes.src_bytes : 0);
    double t0 = sq_now_s();
    if (rc == SQ_OK) {
        L.n_files = sq_ckpt_n_files(st);
        L.fds = malloc((L.n_files ? L.n_files : 1) * sizeof *L.fds);
        if (!L.fds) rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
        for (size_t i = 0; L.fds && i < L.n_files; i++) L.fds[i] = -1;
    }
    /* the read-ahead thread and its LOAD_SLOTS staging buffers (together bytes.staging_bytes) */
    uint64_t slot_bytes = 0;
    const uint64_t budget = o && o->staging_bytes ? o->staging_bytes : SQ_LOAD_DEFAULT_STAGING_BYTES;
    if (rc == SQ_OK) rc = make_units(&L, idx, n, budget, &slot_bytes, err);
    if (rc == SQ_OK)
        rc = load_reader_start(st, L.units, L.n_units, load_n_slots(budget, load_effective_scheme(o).blocksize),
                               slot_bytes, !o->read_copy, L.trace, &L.rd, err);
    if (L.trace) {
        sq_trace_set_track_name(L.trace, LOAD_TRACK_COMPUTE, "compute");
        sq_trace_set_track_name(L.trace, LOAD_TRACK_READER, "reader");
    }
    const char *consume_name = o && o->consume_label ? o->consume_label : "consume";
    for (int i = 0; rc == SQ_OK && i < n; i++) {
        if (L.kind[i] == 2 && o->dense_pieces) {
            rc = load_dense_pieces(&L, idx[i], consumer, user, consume_name, stats, err);
            continue;
        }
        sq_load_item item;
        rc = load_one(&L, idx[i], &item, err);
        if (rc == SQ_OK) {
            uint64_t out = item.is_4bit ? sq_size_weight_bytes((uint64_t)item.q.shape[0],
                                                               (uint64_t)item.q.shape[1],
                                                               &(sq_quant_scheme){
                                                                   .type = item.q.type,
                                                                   .double_quant = item.q.double_quant,
                                                                   .blocksize = item.q.blocksize})
                                        : item.n_bytes;
            uint64_t src = item.src_bytes;
            if (!item.is_4bit) item.total_bytes = item.n_bytes;
            double c0 = sq_trace_begin(L.trace);
            rc = consumer(user, &item, err);
            sq_trace_end_ex(L.trace, LOAD_TRACK_COMPUTE, consume_name, c0, item.spec->name,
                            (int64_t)out);
            if (rc == SQ_OK && stats) {
                stats->n_tensors++;
                stats->bytes_read += src;
                stats->out_bytes += out;
            }
        }
        sq_load_item_release(&item);
    }
    if (stats) {
        stats->seconds = sq_now_s() - t0;
        stats->gbps = stats->seconds > 0 ? (double)stats->bytes_read / stats->seconds / 1e9 : 0;
    }
    load_reader_stop(L.rd);
    free(L.units);
    free(L.kind);
    load_prog_finish(&L.prog, rc != SQ_OK);
    for (size_t i = 0; L.fds && i < L.n_files; i++)
        if (L.fds[i] >= 0) close(L.fds[i]);
    free(L.fds);
    load_gpu_destroy(L.gpu);
    free(idx);
    return rc;
}
