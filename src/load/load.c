/* Owns the per-rank streaming loader: which tensors a stage holds, reading them with pread()
 * into a bounded staging buffer (or straight into a dense output), quantizing decoder Linear
 * weights piece by piece (whole absmax blocks at a time, so the bytes equal a whole-tensor
 * sq_quant_4bit_from), reading pre-quantized bitsandbytes weights as stored, and handing each
 * result to the consumer; with quant_device >= 0 the 4-bit weights go through the GPU ring of
 * load_cuda.c instead of the CPU quantizer.  Must never read a tensor outside the stage, touch the safetensors
 * mapping's data pages, print, or hold more than one staging buffer. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    free(item->data);
    item->data = NULL;
    sq_qtensor_free(&item->q);
}

/* ---- which tensors ------------------------------------------------------------------------ */

static int push_module(const sq_meta *m, int mod, int *idx, int n) {
    if (mod < 0) return n;
    const sq_module_spec *ms = sq_meta_module(m, mod);
    for (int k = 0; k < ms->n_tensors; k++) idx[n++] = ms->first_tensor + k;
    return n;
}

sq_status sq_load_stage_tensors(const sq_meta *m, const sq_load_stage_desc *stage,
                                bool tied_head_copy, int **idx, int *n, sq_error *err) {
    *idx = NULL;
    *n = 0;
    const sq_model_config *c = sq_meta_config(m);
    if (stage->first_layer < 0 || stage->n_layers < 0 ||
        (int64_t)stage->first_layer + stage->n_layers > c->n_layers)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage layers [%d, %d) are outside the model's %lld layers",
                            stage->first_layer, stage->first_layer + stage->n_layers,
                            (long long)c->n_layers);
    int *out = malloc(((size_t)sq_meta_n_tensors(m) + 1) * sizeof *out);
    if (!out) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory listing tensors");
    int k = 0;
    int embed = sq_meta_module_of_kind(m, SQ_MODULE_EMBED);
    if (stage->has_embed) k = push_module(m, embed, out, k);
    for (int L = stage->first_layer; L < stage->first_layer + stage->n_layers; L++)
        k = push_module(m, sq_meta_layer_module(m, L), out, k);
    if (stage->has_head) {
        k = push_module(m, sq_meta_module_of_kind(m, SQ_MODULE_NORM), out, k);
        k = push_module(m, sq_meta_module_of_kind(m, SQ_MODULE_LM_HEAD), out, k);
        if (c->tie_word_embeddings && tied_head_copy && !stage->has_embed)
            k = push_module(m, embed, out, k);
    }
    *idx = out;
    *n = k;
    return SQ_OK;
}

/* ---- the loader --------------------------------------------------------------------------- */

typedef struct loader {
    const sq_ckpt *st;
    const sq_meta *m;
    const sq_load_options *o;
    const sq_load_stage_desc *stage;
    int *fds;                /* (n_files) opened on first use, -1 before */
    size_t n_files;
    uint8_t *staging;        /* (staging_cap) */
    uint64_t staging_cap;
    load_gpu *gpu;           /* quant_device >= 0: the GPU ring (then staging is NULL) */
    load_prog prog;
} loader;

static sq_quant_scheme effective_scheme(const sq_load_options *o) {
    sq_quant_scheme s = o->scheme;
    if (s.blocksize <= 0) s.blocksize = 64;
    return s;
}

/* Elements per quantization piece: the staging budget in whole absmax blocks (at least one). */
static uint64_t piece_elements(uint64_t staging_bytes, size_t elsize, int64_t blocksize) {
    uint64_t e = staging_bytes / elsize;
    e -= e % (uint64_t)blocksize;
    return e ? e : (uint64_t)blocksize;
}

/* Re-labels an error from a lower layer with the tensor's name (its message kept). */
static sq_status with_tensor(sq_error *err, sq_status rc, const char *name) {
    if (!err) return rc;
    char msg[sizeof err->msg], file[sizeof err->file];
    memcpy(msg, err->msg, sizeof msg);
    memcpy(file, err->file, sizeof file);
    return sq_error_set(err, rc, file[0] ? file : NULL, name, "%s", msg);
}

static const sq_ckpt_tensor *companion(const sq_ckpt *st, const char *base,
                                       const char *suffix) {
    char name[256];
    if (snprintf(name, sizeof name, "%s%s", base, suffix) >= (int)sizeof name) return NULL;
    return sq_ckpt_find(st, name);
}

static const char *const k_parts[] = {"", ".absmax", ".quant_map", ".nested_absmax",
                                      ".nested_quant_map"};

/* The checkpoint tensors a spec reads (1, or the bnb weight and its companions). */
static uint64_t spec_src_bytes(const sq_ckpt *st, const sq_tensor_spec *t) {
    uint64_t total = 0;
    const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
    if (!w) return 0;
    if (t->stored_quant == SQ_QUANT_NONE) return w->n_bytes;
    if (t->stored_quant == SQ_QUANT_INT8) return load_int8_src_bytes(st, t);
    for (size_t k = 0; k < sizeof k_parts / sizeof k_parts[0]; k++) {
        const sq_ckpt_tensor *c = companion(st, t->name, k_parts[k]);
        if (c) total += c->n_bytes;
    }
    const sq_ckpt_tensor *qs = companion(st, t->name, sq_bnb_quant_state_suffix(t->stored_quant));
    if (qs) total += qs->n_bytes;
    return total;
}

static bool quantize_now(const sq_tensor_spec *t, const sq_quant_scheme *s) {
    return t->quantizable && t->stored_quant == SQ_QUANT_NONE && s->type != SQ_QUANT_NONE;
}

sq_status sq_load_stage_bytes(const sq_meta *m, const sq_ckpt *st,
                              const sq_load_stage_desc *stage, const sq_load_options *o,
                              sq_load_bytes *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    int *idx = NULL, n = 0;
    sq_status rc = sq_load_stage_tensors(m, stage, o->tied_head_copy, &idx, &n, err);
    if (rc != SQ_OK) return rc;
    const sq_quant_scheme s = effective_scheme(o);
    const uint64_t budget = o->staging_bytes ? o->staging_bytes : SQ_LOAD_DEFAULT_STAGING_BYTES;
    out->n_tensors = n;
    for (int i = 0; i < n; i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, idx[i]);
        const sq_ckpt_tensor *w = sq_ckpt_find(st, t->name);
        if (!w) {
            free(idx);
            return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name, "not in the checkpoint");
        }
        out->src_bytes += spec_src_bytes(st, t);
        uint64_t ob = 0;
        if (quantize_now(t, &s) && w->ggml_type >= 0 &&
            (w->dtype == SQ_DTYPE_U8 || w->rope_heads > 0)) {
            /* re-quantized whole: the stored bytes + their float32 values + the 4-bit result */
            ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &s);
            uint64_t tr = w->n_bytes + t->n_elements * 4;
            if (tr > out->transient_bytes) out->transient_bytes = tr;
        } else if (quantize_now(t, &s) && sq_quant_type_is_int8(s.type)) {
            /* int8: whole rows through the staging buffer (load_int8.c) */
            ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &s);
            size_t es = sq_dtype_size(w->dtype);
            uint64_t pr = load_int8_piece_rows(budget, es, t->shape[0], t->shape[1]);
            uint64_t stg = pr * (uint64_t)t->shape[1] * es;
            if (stg > out->staging_bytes) out->staging_bytes = stg;
        } else if (quantize_now(t, &s)) {
            ob = sq_size_4bit_bytes(t->n_elements, &s);
            size_t es = sq_dtype_size(w->dtype);
            uint64_t pe = piece_elements(budget, es, s.blocksize);
            if (pe > t->n_elements) pe = t->n_elements;
            uint64_t stg = pe * es;
            if (stg > out->staging_bytes) out->staging_bytes = stg;
            uint64_t tr = (pe + 1) / 2 + sq_size_4bit_n_blocks(pe, s.blocksize) * 4;
            if (s.double_quant) tr += sq_size_4bit_n_blocks(t->n_elements, s.blocksize) * 4;
            if (tr > out->transient_bytes) out->transient_bytes = tr;
        } else if (t->stored_quant != SQ_QUANT_NONE) {
            if (s.type == SQ_QUANT_NONE) {   /* int8 comes out float32 (load_int8.c) */
                ob = t->stored_quant == SQ_QUANT_INT8
                         ? t->n_elements * 4
                         : sq_size_dense_bytes(t->n_elements, sq_meta_config(m)->torch_dtype);
            } else {
                sq_quant_scheme ss = {.type = t->stored_quant, .double_quant = t->stored_double_quant,
                                      .blocksize = t->stored_blocksize};
                ob = sq_size_weight_bytes((uint64_t)t->shape[0], (uint64_t)t->shape[1], &ss);
            }
        } else {
            ob = t->stored_ggml >= 0 && t->dtype == SQ_DTYPE_U8 && o->ggml_dense
                     ? t->n_elements * 4 : w->n_bytes;
        }
        out->out_bytes += ob;
        if (ob > out->max_out_bytes) out->max_out_bytes = ob;
    }
    free(idx);
    return SQ_OK;
}

static sq_status get_fd(loader *L, int file_index, const char *tensor, int *fd, sq_error *err) {
    if (file_index < 0 || (size_t)file_index >= L->n_files)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, tensor, "bad file index %d", file_index);
    const char *path = sq_ckpt_file_path(L->st, (size_t)file_index);
    if (L->fds[file_index] < 0) {
        int f = open(path, O_RDONLY | O_CLOEXEC);
        if (f < 0)
            return sq_error_set(err, SQ_ERR_IO, path, tensor, "cannot open: %s", strerror(errno));
        struct stat sb;
        if (fstat(f, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            close(f);
            return sq_error_set(err, SQ_ERR_IO, path, tensor, "not a regular file any more");
        }
        posix_fadvise(f, 0, 0, POSIX_FADV_SEQUENTIAL);
        L->fds[file_index] = f;
    }
    *fd = L->fds[file_index];
    return SQ_OK;
}

/* Reads bytes [off, off + n) of tensor `t` into dst, counting progress. */
static sq_status read_range(loader *L, const sq_ckpt_tensor *t, uint64_t off, uint64_t n,
                            void *dst, const char *name, sq_error *err) {
    int fd = -1;
    sq_status rc = get_fd(L, t->file_index, name, &fd, err);
    if (rc != SQ_OK) return rc;
    const char *path = sq_ckpt_file_path(L->st, (size_t)t->file_index);
    uint64_t pos = t->offset + off, done = 0, ticked = 0;
    while (done < n) {
        uint64_t want = n - done;
        if (want > (1u << 30)) want = 1u << 30;
        ssize_t got = pread(fd, (uint8_t *)dst + done, (size_t)want, (off_t)(pos + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return sq_error_set(err, SQ_ERR_IO, path, name, "read of %llu bytes at byte %llu "
                                "failed: %s", (unsigned long long)want,
                                (unsigned long long)(pos + done), strerror(errno));
        if (got == 0) {
            struct stat sb;
            long long size = fstat(fd, &sb) == 0 ? (long long)sb.st_size : -1;
            return sq_error_set(err, SQ_ERR_IO, path, name,
                                "file ends at byte %lld but the tensor's data runs to byte %llu "
                                "(truncated or replaced after its header was read)",
                                size, (unsigned long long)(t->offset + t->n_bytes));
        }
        done += (uint64_t)got;
        if (done - ticked >= READ_CHUNK_BYTES || done == n) {
            load_prog_add(&L->prog, done - ticked);
            ticked = done;
        }
    }
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
    if (!sq_mul_u64((uint64_t)rows, (uint64_t)cols, &n) || !(*out = malloc((size_t)n * sizeof(float))))
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
    *out = malloc(w->n_bytes ? (size_t)w->n_bytes : 1);
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
    item->data = malloc(w->n_bytes ? (size_t)w->n_bytes : 1);
    if (!item->data)
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory for %llu bytes",
                            (unsigned long long)w->n_bytes);
    return read_range(L, w, 0, w->n_bytes, item->data, t->name, err);
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

/* Every absmax finite, else SQ_ERR_FORMAT naming the block (bnb would store a NaN absmax). */
static sq_status check_absmax(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                              const sq_qtensor *q, sq_error *err) {
    const uint64_t n = q->n_elements, B = (uint64_t)q->blocksize;
    for (uint64_t b = 0; b < q->n_blocks; b++)
        if (!isfinite(q->absmax[b])) {
            uint64_t e0 = b * B, e1 = e0 + B < n ? e0 + B : n;
            return sq_error_set(err, SQ_ERR_FORMAT, sq_ckpt_file_path(L->st, (size_t)w->file_index),
                                t->name, "block %llu (elements %llu..%llu, row %llu) holds NaN or "
                                "Inf: the checkpoint is corrupt", (unsigned long long)b,
                                (unsigned long long)e0, (unsigned long long)(e1 - 1),
                                (unsigned long long)(e0 / (uint64_t)t->shape[1]));
        }
    return SQ_OK;
}

static sq_status load_quantize(loader *L, const sq_tensor_spec *t, const sq_ckpt_tensor *w,
                               const sq_quant_scheme *s, sq_load_item *item, sq_error *err) {
    if (w->dtype != SQ_DTYPE_BF16 && w->dtype != SQ_DTYPE_F16 && w->dtype != SQ_DTYPE_F32)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, t->name,
                            "cannot quantize dtype %s", sq_dtype_name(w->dtype));
    const size_t es = sq_dtype_size(w->dtype);
    const uint64_t n = t->n_elements, B = (uint64_t)s->blocksize;
    item->is_4bit = true;
    item->src_bytes = w->n_bytes;
    if (sq_quant_type_is_int8(s->type)) {   /* on the CPU, whole rows at a time (load_int8.c) */
        gpu_read_ctx c = {.L = L, .w = w, .name = t->name};
        return load_int8_quantize(s->type, w->dtype, t->shape[0], t->shape[1], gpu_read, &c,
                                  L->staging, L->staging_cap, L->o->pool, &item->q, t->name, err);
    }
    sq_qtensor *q = &item->q;
    sq_status rc = sq_qtensor_init(q, s, t->shape[0], t->shape[1], w->dtype, err);
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
    uint64_t pe = piece_elements(L->staging_cap, es, s->blocksize);
    sq_quant_scheme piece_s = *s;
    piece_s.double_quant = false;   /* the offset is the mean over the whole tensor: later */
    for (uint64_t first = 0; first < n; first += pe) {
        uint64_t m = n - first < pe ? n - first : pe;
        if (first + m < n) prefetch(L, w, (first + m) * es, (n - first - m < pe ? n - first - m : pe) * es);
        rc = read_range(L, w, first * es, m * es, L->staging, t->name, err);
        if (rc != SQ_OK) return rc;
        sq_qtensor piece;
        rc = sq_quant_4bit_from(w->dtype, L->staging, 1, (int64_t)m, &piece_s, L->o->pool, &piece,
                                err);
        if (rc != SQ_OK) return with_tensor(err, rc, t->name);
        /* first is a multiple of B (even): whole bytes and whole blocks */
        memcpy(q->packed + first / 2, piece.packed, (size_t)((m + 1) / 2));
        memcpy(q->absmax + first / B, piece.absmax, (size_t)piece.n_blocks * sizeof(float));
        sq_qtensor_free(&piece);
    }
    rc = check_absmax(L, t, w, q, err);
    if (rc != SQ_OK) return rc;
    rc = sq_qtensor_compress(q, err);
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
    const sq_ckpt_tensor *c = companion(L->st, t->name, suffix);
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
    const sq_ckpt_tensor *qs = companion(L->st, t->name, qs_suffix);
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
    item->data = malloc((size_t)item->n_bytes);
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
    const sq_quant_scheme s = effective_scheme(L->o);
    if (t->stored_quant == SQ_QUANT_INT8)
        return load_int8_prequant(L->st, t, s.type == SQ_QUANT_NONE, part_read, L, item, err);
    if (t->stored_quant != SQ_QUANT_NONE) return load_prequant(L, t, &s, item, err);
    if (quantize_now(t, &s))
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

sq_status sq_load_stage(const sq_ckpt *st, const sq_meta *m, const sq_load_stage_desc *stage,
                        const sq_load_options *o, sq_load_consumer_fn consumer, void *user,
                        sq_load_stats *stats, sq_error *err) {
    if (stats) memset(stats, 0, sizeof *stats);
    loader L = {.st = st, .m = m, .o = o, .stage = stage};
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
        const sq_quant_scheme es = effective_scheme(o);
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
        L.staging_cap = use_gpu ? 0 : bytes.staging_bytes;
        L.staging = L.staging_cap ? malloc((size_t)L.staging_cap) : NULL;
        if (!L.fds || (L.staging_cap && !L.staging))
            rc = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                              "out of memory for a %llu-byte staging buffer",
                              (unsigned long long)L.staging_cap);
        for (size_t i = 0; L.fds && i < L.n_files; i++) L.fds[i] = -1;
    }
    for (int i = 0; rc == SQ_OK && i < n; i++) {
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
            rc = consumer(user, &item, err);
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
    load_prog_finish(&L.prog, rc != SQ_OK);
    for (size_t i = 0; L.fds && i < L.n_files; i++)
        if (L.fds[i] >= 0) close(L.fds[i]);
    free(L.fds);
    free(L.staging);
    load_gpu_destroy(L.gpu);
    free(idx);
    return rc;
}
