/* The CUDA backend: one device, one stream, one cuBLAS handle; device memory, weight upload
 * (dense BF16 / F32 kept, F16 and every 1-D weight made F32; 4-bit kept in bitsandbytes' packed
 * layout with one float32 absmax per block), and the ops, each one launcher of kernels/<op>.cu
 * enqueued on the stream.  Host descriptors (positions, sequence slots, sampling keys) travel
 * through a ring of pinned slots mirrored on the device, each slot fenced by an event, so an op
 * never waits for the device unless the ring wraps onto a copy still in flight.
 * Must never: allocate inside an op (scratch is sized by reserve and by weight uploads), keep a
 * dequantized copy of a whole 4-bit weight (the many-row path converts a bounded band of rows at
 * a time), synchronize inside an op other than sample and download (which return host data),
 * print, or exit. */
#include "backend_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../../kernels/add.cuh"
#include "../../kernels/attention.cuh"
#include "../../kernels/cuda_check.cuh"
#include "../../kernels/embed.cuh"
#include "../../kernels/linear.cuh"
#include "../../kernels/rmsnorm.cuh"
#include "../../kernels/rope.cuh"
#include "../../kernels/sample.cuh"
#include "../../kernels/sample_size.cuh"
#include "../../kernels/swiglu.cuh"

enum {
    kSlots = 16,                          /* descriptor staging slots */
    kBlasWorkspace = 32 << 20,            /* cuBLAS workspace (Hopper's recommended size) */
};
/* float32 elements of the band a many-row linear converts at once (64 MiB) */
#define SQ_CUDA_BAND_ELEMS (INT64_C(16) << 20)

typedef struct sq_cuda {
    sq_backend base;              /* first: a sq_backend * is a sq_cuda * */
    int device;
    char name[192];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws_d;              /* (kBlasWorkspace) */
    /* descriptor ring: slot k is slots_h + k * slot_bytes (pinned) -> slots_d + k * slot_bytes */
    size_t slot_bytes;
    uint8_t *slots_h, *slots_d;
    cudaEvent_t slot_ev[kSlots];
    int next_slot;
    /* many-row linear: a band of weight rows as float32 (band_elems) */
    float *band_d;
    int64_t band_elems;
    /* sampling: scratch for (max_rows, max_vocab), ids out */
    void *sample_d;
    size_t sample_bytes;
    int32_t *ids_d;               /* (max_rows) */
    int32_t *ids_h;               /* (max_rows) pinned */
    /* embed's bad-id report: mapped pinned {row, id}, {-1, -1} when clean */
    long long *bad_h, *bad_dp;
    /* ops enqueued since the stream last completed (a ring, oldest at n_recent - kRecent): a
     * fault inside a kernel surfaces in whatever CUDA call comes next, so it is reported
     * against these, not against that call */
    char recent[8][80];
    int n_recent;
} sq_cuda;

static inline sq_cuda *cuda_of(sq_backend *be) { return (sq_cuda *)be; }

enum { kRecent = 8 };

static void note_op(sq_cuda *c, const char *op, const char *tensor) {
    snprintf(c->recent[c->n_recent % kRecent], sizeof c->recent[0], tensor && tensor[0] ? "%s '%s'" : "%s", op,
             tensor);
    c->n_recent++;
}

/* A CUDA failure caused by an earlier kernel's fault (the context's sticky error) is reported
 * as such: the ops enqueued since the last completed sync, oldest first, and where it
 * surfaced; the tensor of the call where it surfaced is dropped (it is not the culprit). */
static sq_status blame(sq_cuda *c, sq_status st, sq_error *err) {
    if (st != SQ_ERR_CUDA || !err) return st;
    cudaError_t e = cudaStreamQuery(c->stream);
    if (e == cudaSuccess || e == cudaErrorNotReady) return st;   /* not a kernel fault */
    static const char kHead[] = "a kernel failed on the device";
    if (!strncmp(err->msg, kHead, sizeof kHead - 1)) return st;   /* blamed already (finish) */
    char where[sizeof err->msg], ops[8 * 84] = "";
    snprintf(where, sizeof where, "%s", err->msg);
    int first = c->n_recent > kRecent ? c->n_recent - kRecent : 0;
    size_t k = 0;
    for (int i = first; i < c->n_recent && k < sizeof ops; i++)
        k += (size_t)snprintf(ops + k, sizeof ops - k, "%s%s", i > first ? ", " : "", c->recent[i % kRecent]);
    err->tensor[0] = '\0';
    return sq_error_set(err, SQ_ERR_CUDA, NULL, NULL,
                        "%s (%s: %s); the fault is in one of the %d op%s "
                        "enqueued since the last completed sync (%s%s), not necessarily where it surfaced: %.300s",
                        kHead, cudaGetErrorName(e), cudaGetErrorString(e), c->n_recent, c->n_recent == 1 ? "" : "s",
                        c->n_recent > kRecent ? "the last ones: " : "oldest first: ", ops, where);
}

/* Puts the weight's name on an error a CUDA check recorded without it. */
static void name_it(sq_error *err, const char *name) {
    if (err && name && !err->tensor[0]) snprintf(err->tensor, sizeof err->tensor, "%s", name);
}

/* ---- descriptor staging ----------------------------------------------------------------- */

/* Host pointer of the next slot (once its previous copy has left it) and its device twin. */
static sq_status slot_begin(sq_cuda *c, size_t bytes, void **h, void **d, sq_error *err) {
    sq_status st = SQ_OK;
    if (bytes > c->slot_bytes)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                            "cuda backend: %zu bytes of descriptors exceed the %zu-byte slot", bytes,
                            c->slot_bytes);
    int k = c->next_slot;
    SQ_CUDA_CHECK(cudaEventSynchronize(c->slot_ev[k]));
    *h = c->slots_h + (size_t)k * c->slot_bytes;
    *d = c->slots_d + (size_t)k * c->slot_bytes;
    return SQ_OK;
fail:
    return st;
}
/* Enqueues the copy of the slot just filled and fences it. */
static sq_status slot_commit(sq_cuda *c, size_t bytes, sq_error *err) {
    sq_status st = SQ_OK;
    int k = c->next_slot;
    c->next_slot = (k + 1) % kSlots;
    SQ_CUDA_CHECK(cudaMemcpyAsync(c->slots_d + (size_t)k * c->slot_bytes,
                                  c->slots_h + (size_t)k * c->slot_bytes, bytes,
                                  cudaMemcpyHostToDevice, c->stream));
    SQ_CUDA_CHECK(cudaEventRecord(c->slot_ev[k], c->stream));
    return SQ_OK;
fail:
    return st;
}

/* ---- life cycle and memory ---------------------------------------------------------------- */

static const char *cuda_name(const sq_backend *be) { return ((const sq_cuda *)be)->name; }

static void free_scratch(sq_cuda *c) {
    cudaFreeHost(c->slots_h);
    cudaFree(c->slots_d);
    cudaFree(c->sample_d);
    cudaFree(c->ids_d);
    cudaFreeHost(c->ids_h);
    c->slots_h = c->slots_d = NULL;
    c->sample_d = NULL;
    c->ids_d = c->ids_h = NULL;
    c->slot_bytes = c->sample_bytes = 0;
}

static void cuda_destroy(sq_backend *be) {
    sq_cuda *c = cuda_of(be);
    if (c->stream) cudaStreamSynchronize(c->stream);
    free_scratch(c);
    for (int k = 0; k < kSlots; k++)
        if (c->slot_ev[k]) cudaEventDestroy(c->slot_ev[k]);
    cudaFree(c->band_d);
    cudaFreeHost(c->bad_h);
    if (c->blas) cublasDestroy(c->blas);
    cudaFree(c->blas_ws_d);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static sq_status cuda_reserve(sq_backend *be, const sq_backend_limits *lim, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    /* per op at most: sampling keys 2 x 8 bytes per row, attention 2 x 4, rope 4 */
    size_t slot_bytes = (size_t)lim->max_rows * 16 + 256;
    if (slot_bytes < 4096) slot_bytes = 4096;
    /* sampling: the rows one sample call sees (one per sequence), not the prompt tokens of a
     * micro-batch: 16k prompt tokens x a 128k vocabulary would ask for ~40 GiB */
    size_t sample_bytes = 0;
    int64_t sample_rows = sq_sample_reserve_rows(lim->max_rows, lim->max_sample_rows);
    if (lim->max_vocab > 0 && sample_rows > 0) {
        st = sq_cuda_sample_scratch_bytes(sample_rows, lim->max_vocab, &sample_bytes, err);
        if (st != SQ_OK) return st;
    }
    if (slot_bytes <= c->slot_bytes && sample_bytes <= c->sample_bytes &&
        (lim->max_rows <= be->limits.max_rows || lim->max_rows == 0))
        return SQ_OK;
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));   /* nothing may still read the old ones */
    free_scratch(c);
    size_t rows = (size_t)(lim->max_rows > 0 ? lim->max_rows : 1);
    SQ_CUDA_CHECK(cudaHostAlloc((void **)&c->slots_h, slot_bytes * kSlots, cudaHostAllocDefault));
    SQ_CUDA_CHECK(cudaMalloc((void **)&c->slots_d, slot_bytes * kSlots));
    c->slot_bytes = slot_bytes;
    SQ_CUDA_CHECK(cudaMalloc((void **)&c->ids_d, rows * sizeof(int32_t)));
    SQ_CUDA_CHECK(cudaHostAlloc((void **)&c->ids_h, rows * sizeof(int32_t), cudaHostAllocDefault));
    if (sample_bytes) {
        SQ_CUDA_CHECK(cudaMalloc(&c->sample_d, sample_bytes));
        c->sample_bytes = sample_bytes;
    }
    return SQ_OK;
fail:
    free_scratch(c);
    /* the backend stays usable, with no scratch: every op with rows fails until a reserve works */
    be->limits.max_rows = 0;
    return st;
}

static sq_status cuda_alloc(sq_backend *be, uint64_t n, void **out, sq_error *err) {
    sq_status st = SQ_OK;
    void *p = NULL;
    SQ_CUDA_CHECK(cudaMalloc(&p, n ? (size_t)n : 64));
    *out = p;
    return SQ_OK;
fail:
    return st;
}
static void cuda_free(sq_backend *be, void *p) { cudaFree(p); }

/* Waits for the stream, then reports a bad token id an embed recorded since the last check. */
static sq_status finish(sq_cuda *c, sq_error *err) {
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    c->n_recent = 0;   /* everything enqueued so far ran */
    if (c->bad_h[0] >= 0) {
        long long row = c->bad_h[0], id = c->bad_h[1];
        c->bad_h[0] = c->bad_h[1] = -1;
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "backend embed: token id %lld at row %lld is outside the vocabulary "
                            "(found on the device; that row was written as zeros)", id, row);
    }
    return SQ_OK;
fail:
    return blame(c, st, err);
}

static sq_status cuda_upload(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n, cudaMemcpyHostToDevice, c->stream));
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));   /* src is the caller's again on return */
    return SQ_OK;
fail:
    return st;
}
static sq_status cuda_download(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n, cudaMemcpyDeviceToHost, c->stream));
    return finish(c, err);
fail:
    return st;
}
static sq_status cuda_copy(sq_backend *be, void *dst, const void *src, uint64_t n, sq_error *err) {
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n, cudaMemcpyDeviceToDevice, cuda_of(be)->stream));
    return SQ_OK;
fail:
    return st;
}
static sq_status cuda_memset(sq_backend *be, void *dst, int v, uint64_t n, sq_error *err) {
    sq_status st = SQ_OK;
    SQ_CUDA_CHECK(cudaMemsetAsync(dst, v, (size_t)n, cuda_of(be)->stream));
    return SQ_OK;
fail:
    return st;
}
static sq_status cuda_sync(sq_backend *be, sq_error *err) { return finish(cuda_of(be), err); }

/* ---- weights ------------------------------------------------------------------------------ */

/* The band a many-row linear on w converts at once; grows c->band_d to hold it. */
static int64_t band_rows(const sq_weight *w) {
    int64_t r = SQ_CUDA_BAND_ELEMS / w->cols;
    if (r < 64) r = 64;
    return r < w->rows ? r : w->rows;
}
static sq_status ensure_band(sq_cuda *c, const sq_weight *w, sq_error *err) {
    sq_status st = SQ_OK;
    int64_t need = band_rows(w) * w->cols;
    if (need <= c->band_elems) return SQ_OK;
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    cudaFree(c->band_d);
    c->band_d = NULL;
    c->band_elems = 0;
    SQ_CUDA_CHECK(cudaMalloc((void **)&c->band_d, (size_t)need * sizeof(float)));
    c->band_elems = need;
    return SQ_OK;
fail:
    name_it(err, w->name);
    return st;
}

static sq_status cuda_weight_dense(sq_backend *be, sq_weight *w, sq_dtype dt, const void *src,
                                   sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    uint64_t n = (uint64_t)w->rows * (uint64_t)w->cols;
    /* 1-D weights (norms, biases) become float32 so every kernel reads them one way */
    w->store = (dt == SQ_DTYPE_BF16 && w->rows > 1) ? SQ_WSTORE_BF16 : SQ_WSTORE_F32;
    uint64_t bytes = n * (w->store == SQ_WSTORE_BF16 ? 2 : 4);
    float *tmp = NULL;
    const void *up = src;
    if (w->store == SQ_WSTORE_F32 && dt != SQ_DTYPE_F32) {
        tmp = malloc((size_t)bytes);
        if (!tmp) return sq_error_set(err, SQ_ERR_NOMEM, NULL, w->name, "out of host memory converting a weight");
        if (dt == SQ_DTYPE_F16) sq_f16_to_f32(src, tmp, (size_t)n);
        else for (uint64_t i = 0; i < n; i++) tmp[i] = sq_bf16_to_f32_1(((const uint16_t *)src)[i]);
        up = tmp;
    }
    SQ_CUDA_CHECK(cudaMalloc(&w->data_d, (size_t)bytes));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->data_d, up, (size_t)bytes, cudaMemcpyHostToDevice, c->stream));
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    free(tmp);
    tmp = NULL;
    w->n_bytes = bytes;
    if (w->store == SQ_WSTORE_BF16 && w->rows > SQ_CUDA_GEMV_MAX_ROWS) {
        st = ensure_band(c, w, err);
        if (st != SQ_OK) goto fail_quiet;
    }
    return SQ_OK;
fail:
    name_it(err, w->name);
fail_quiet:
    free(tmp);
    cudaFree(w->data_d);
    w->data_d = NULL;
    return st;
}

static sq_status cuda_weight_4bit(sq_backend *be, sq_weight *w, const sq_qtensor *q,
                                  sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    const float *code = sq_quant_code_table(q->type);
    if (!code)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name, "no code table for quant type %d", (int)q->type);
    memcpy(w->code, code, sizeof w->code);
    float *am = malloc(q->n_blocks * sizeof(float));
    if (!am) return sq_error_set(err, SQ_ERR_NOMEM, NULL, w->name, "out of host memory for absmax");
    for (uint64_t b = 0; b < q->n_blocks; b++)
        am[b] = q->double_quant ? sq_qtensor_absmax(q, b) : q->absmax[b];
    size_t packed_bytes = (size_t)((q->n_elements + 1) / 2), am_bytes = q->n_blocks * sizeof(float);
    SQ_CUDA_CHECK(cudaMalloc(&w->data_d, packed_bytes));
    SQ_CUDA_CHECK(cudaMalloc(&w->absmax_d, am_bytes));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->data_d, q->packed, packed_bytes, cudaMemcpyHostToDevice, c->stream));
    SQ_CUDA_CHECK(cudaMemcpyAsync(w->absmax_d, am, am_bytes, cudaMemcpyHostToDevice, c->stream));
    SQ_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    free(am);
    am = NULL;
    w->n_bytes = packed_bytes + am_bytes;
    if (w->rows > 0) {
        st = ensure_band(c, w, err);
        if (st != SQ_OK) goto fail_quiet;
    }
    return SQ_OK;
fail:
    name_it(err, w->name);
fail_quiet:
    free(am);
    cudaFree(w->data_d);
    cudaFree(w->absmax_d);
    w->data_d = w->absmax_d = NULL;
    return st;
}

/* ggml (GGUF) weights: cuda_ggml.c converts and uploads; the many-row path needs the band. */
static sq_status cuda_weight_ggml(sq_backend *be, sq_weight *w, sq_ggml_type type, const void *data,
                                  sq_error *err) {
    sq_status st = sq_cuda_weight_ggml_upload(w, type, data, cuda_of(be)->stream, err);
    return st == SQ_OK ? ensure_band(cuda_of(be), w, err) : st;
}

/* a weight already in the block-scaled form (int8 weights): cuda_qblock.c copies it up */
static sq_status cuda_weight_qblock(sq_backend *be, sq_weight *w, const uint8_t *codes,
                                    const void *scales, const void *biases, sq_error *err) {
    sq_status st = sq_cuda_weight_qblock_upload(w, codes, scales, biases, cuda_of(be)->stream, err);
    return st == SQ_OK ? ensure_band(cuda_of(be), w, err) : st;
}

static void cuda_weight_release(sq_backend *be, sq_weight *w) {
    cudaFree(w->data_d);
    cudaFree(w->absmax_d);
    cudaFree(w->bias_d);
    w->data_d = w->absmax_d = w->bias_d = NULL;
}

static sq_cuda_wdesc wdesc_of(const sq_weight *w) {
    sq_cuda_wdesc d;
    memset(&d, 0, sizeof d);
    d.store = w->store == SQ_WSTORE_Q4 ? SQ_CUDA_W_Q4
              : (w->store == SQ_WSTORE_BF16 ? SQ_CUDA_W_BF16 : SQ_CUDA_W_F32);
    d.log2_block = w->store == SQ_WSTORE_Q4 ? __builtin_ctzll((unsigned long long)w->blocksize) : 0;
    d.rows = w->rows;
    d.cols = w->cols;
    d.data_d = w->data_d;
    d.absmax_d = w->absmax_d;
    memcpy(d.code, w->code, sizeof d.code);
    return d;
}

/* ---- ops ---------------------------------------------------------------------------------- */

static sq_status embed_op(sq_backend *be, const sq_weight *t, const void *ids_d, int64_t n_rows,
                            void *out_d, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    if (t->store == SQ_WSTORE_QBLOCK)
        return sq_cuda_embed_ggml(t, ids_d, n_rows, out_d, c->bad_dp, c->stream, err);
    return sq_cuda_embed(t->data_d, t->store == SQ_WSTORE_BF16, t->rows, t->cols, ids_d, n_rows,
                         out_d, c->bad_dp, c->stream, err);
}

static sq_status rmsnorm_op(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                              int64_t n_rows, void *out_d, sq_error *err) {
    return sq_cuda_rmsnorm(x_d, w->data_d, w->store == SQ_WSTORE_BF16, eps, n_rows, w->cols, out_d,
                           cuda_of(be)->stream, err);
}

static sq_status rope_op(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                           int n_kv_heads, int head_dim, const int32_t *pos,
                           const void *inv_freq_d, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    void *h = NULL, *d = NULL;
    size_t bytes = (size_t)n_rows * sizeof(int32_t);
    sq_status st = slot_begin(c, bytes, &h, &d, err);
    if (st != SQ_OK) return st;
    memcpy(h, pos, bytes);
    st = slot_commit(c, bytes, err);
    if (st != SQ_OK) return st;
    return sq_cuda_rope(q_d, k_d, n_rows, n_heads, n_kv_heads, head_dim, d, inv_freq_d, c->stream, err);
}

static sq_status attention_op(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                                const sq_kv_layer *kv, int n_heads, int n_seqs,
                                const sq_seq_span *seqs, int64_t n_rows, void *out_d,
                                sq_error *err) {
    sq_cuda *c = cuda_of(be);
    void *h = NULL, *d = NULL;
    size_t half = ((size_t)n_rows * sizeof(int32_t) + 15) & ~(size_t)15;
    sq_status st = slot_begin(c, 2 * half, &h, &d, err);
    if (st != SQ_OK) return st;
    int32_t *slot_h = h, *pos_h = (int32_t *)((char *)h + half);
    int64_t r = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int32_t t = 0; t < seqs[s].n_tokens; t++, r++) {
            slot_h[r] = seqs[s].slot;
            pos_h[r] = seqs[s].start_pos + t;
        }
    st = slot_commit(c, 2 * half, err);
    if (st != SQ_OK) return st;
    const int32_t *slot_d = d, *pos_d = (const int32_t *)((char *)d + half);
    st = sq_cuda_kv_store(k_d, v_d, n_rows, slot_d, pos_d, kv->k_d, kv->v_d, kv->max_seq,
                          kv->n_kv_heads, kv->head_dim, c->stream, err);
    if (st != SQ_OK) return st;
    float scale = 1.0f / sqrtf((float)kv->head_dim);   /* as the CPU backend rounds it */
    return sq_cuda_attention(q_d, kv->k_d, kv->v_d, n_rows, slot_d, pos_d, kv->max_seq, n_heads,
                             kv->n_kv_heads, kv->head_dim, scale, out_d, c->stream, err);
}

/* Few rows: the dequantize-on-the-fly GEMV.  Many rows: band by band, weight rows converted to
 * float32 (4-bit: code * absmax, the same values) and multiplied by cuBLAS SGEMM (float32
 * accumulation), then the bias.  The two paths round differently: a row's result depends on
 * whether its call had more than SQ_CUDA_GEMV_MAX_ROWS rows (within float32 rounding). */
static sq_status linear_op(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                             const sq_weight *bias, void *out_d, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    sq_cuda_wdesc wd = wdesc_of(w);
    const float *bias_d = bias ? bias->data_d : NULL;   /* 1-D weights are float32 here */
    const bool ggml = w->store == SQ_WSTORE_QBLOCK;
    if (n_rows <= SQ_CUDA_GEMV_MAX_ROWS)
        return ggml ? sq_cuda_linear_ggml(w, x_d, n_rows, bias_d, out_d, c->stream, err)
                    : sq_cuda_gemv(&wd, x_d, n_rows, bias_d, out_d, c->stream, err);
    if (w->cols > INT32_MAX || w->rows > INT32_MAX || n_rows > INT32_MAX)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, w->name, "cuda linear: shape beyond cuBLAS's int range");
    const int64_t band = band_rows(w);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t o0 = 0; o0 < w->rows; o0 += band) {
        int64_t nb = w->rows - o0 < band ? w->rows - o0 : band;
        const float *a = NULL;
        if (w->store == SQ_WSTORE_F32) {
            a = (const float *)w->data_d + o0 * w->cols;
        } else {
            if (band * w->cols > c->band_elems)
                return sq_error_set(err, SQ_ERR_INTERNAL, NULL, w->name, "cuda linear: conversion band not sized");
            st = ggml ? sq_cuda_ggml_band_to_f32(w, o0, nb, c->band_d, c->stream, err)
                      : sq_cuda_weight_to_f32(&wd, o0, nb, c->band_d, c->stream, err);
            if (st != SQ_OK) return st;
            a = c->band_d;
        }
        /* column-major view: out^T (N x n) = W (N x K, stored as K x N) ^T * x^T (K x n) */
        cublasStatus_t bs = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nb, (int)n_rows,
                                        (int)w->cols, &one, a, (int)w->cols, x_d, (int)w->cols,
                                        &zero, (float *)out_d + o0, (int)w->rows);
        if (bs != CUBLAS_STATUS_SUCCESS)
            return sq_error_set(err, SQ_ERR_CUDA, NULL, w->name, "cublasSgemm failed: %s (%d)",
                                cublasGetStatusString(bs), (int)bs);
    }
    if (bias_d) return sq_cuda_add_bias(out_d, bias_d, n_rows, w->rows, c->stream, err);
    return SQ_OK;
}

static sq_status add_op(sq_backend *be, const void *a_d, const void *b_d, int64_t n,
                          void *out_d, sq_error *err) {
    return sq_cuda_add(a_d, b_d, n, out_d, cuda_of(be)->stream, err);
}
static sq_status swiglu_op(sq_backend *be, const void *g_d, const void *u_d, int64_t n,
                             void *out_d, sq_error *err) {
    return sq_cuda_swiglu(g_d, u_d, n, out_d, cuda_of(be)->stream, err);
}

static sq_status sample_op(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                             const sq_sample_params *p, const uint64_t *seq_ids,
                             const uint64_t *steps, int32_t *ids_out, sq_error *err) {
    sq_cuda *c = cuda_of(be);
    sq_status st = SQ_OK;
    bool greedy = !(p->temperature > 0.0f) || p->top_k == 1;
    if (greedy) {
        st = sq_cuda_argmax(logits_d, n_rows, vocab, c->ids_d, c->stream, err);
    } else {
        void *h = NULL, *d = NULL;
        size_t half = (size_t)n_rows * sizeof(uint64_t);
        st = slot_begin(c, 2 * half, &h, &d, err);
        if (st != SQ_OK) return st;
        memcpy(h, seq_ids, half);
        memcpy((char *)h + half, steps, half);
        st = slot_commit(c, 2 * half, err);
        if (st != SQ_OK) return st;
        st = sq_cuda_sample(logits_d, n_rows, vocab, p->temperature, p->top_k, p->top_p, p->seed, d,
                            (const uint64_t *)((char *)d + half), c->sample_d, c->sample_bytes,
                            c->ids_d, c->stream, err);
    }
    if (st != SQ_OK) return st;
    SQ_CUDA_CHECK(cudaMemcpyAsync(c->ids_h, c->ids_d, (size_t)n_rows * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, c->stream));
    st = finish(c, err);
    if (st != SQ_OK) return st;
    memcpy(ids_out, c->ids_h, (size_t)n_rows * sizeof(int32_t));
    return SQ_OK;
fail:
    return st;
}

/* The ops as the vtable sees them: each notes itself, and a failure that is an earlier
 * kernel's fault is reported against the ops enqueued since the last sync (blame). */
#define SQ_CUDA_OP(label, tensor, call)                                                     \
    do {                                                                                    \
        sq_cuda *c_ = cuda_of(be);                                                          \
        note_op(c_, label, tensor);                                                         \
        return blame(c_, (call), err);                                                      \
    } while (0)
static sq_status cuda_embed(sq_backend *be, const sq_weight *t, const void *ids_d, int64_t n_rows,
                            void *out_d, sq_error *err) {
    SQ_CUDA_OP("embed", t->name, embed_op(be, t, ids_d, n_rows, out_d, err));
}
static sq_status cuda_rmsnorm(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                              int64_t n_rows, void *out_d, sq_error *err) {
    SQ_CUDA_OP("rmsnorm", w->name, rmsnorm_op(be, x_d, w, eps, n_rows, out_d, err));
}
static sq_status cuda_rope(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                           int n_kv_heads, int head_dim, const int32_t *pos,
                           const void *inv_freq_d, sq_error *err) {
    SQ_CUDA_OP("rope", NULL, rope_op(be, q_d, k_d, n_rows, n_heads, n_kv_heads, head_dim, pos, inv_freq_d, err));
}
static sq_status cuda_attention(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                                const sq_kv_layer *kv, int n_heads, int n_seqs,
                                const sq_seq_span *seqs, int64_t n_rows, void *out_d,
                                sq_error *err) {
    SQ_CUDA_OP("attention", NULL, attention_op(be, q_d, k_d, v_d, kv, n_heads, n_seqs, seqs, n_rows, out_d, err));
}
static sq_status cuda_linear(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                             const sq_weight *bias, void *out_d, sq_error *err) {
    SQ_CUDA_OP("linear", w->name, linear_op(be, x_d, n_rows, w, bias, out_d, err));
}
static sq_status cuda_add(sq_backend *be, const void *a_d, const void *b_d, int64_t n,
                          void *out_d, sq_error *err) {
    SQ_CUDA_OP("add", NULL, add_op(be, a_d, b_d, n, out_d, err));
}
static sq_status cuda_swiglu(sq_backend *be, const void *g_d, const void *u_d, int64_t n,
                             void *out_d, sq_error *err) {
    SQ_CUDA_OP("swiglu", NULL, swiglu_op(be, g_d, u_d, n, out_d, err));
}
static sq_status cuda_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                             const sq_sample_params *p, const uint64_t *seq_ids,
                             const uint64_t *steps, int32_t *ids_out, sq_error *err) {
    SQ_CUDA_OP("sample", NULL, sample_op(be, logits_d, n_rows, vocab, p, seq_ids, steps, ids_out, err));
}
#undef SQ_CUDA_OP

static const sq_backend_ops cuda_ops = {
    .name = cuda_name, .destroy = cuda_destroy, .reserve = cuda_reserve, .alloc = cuda_alloc,
    .free = cuda_free, .upload = cuda_upload, .download = cuda_download, .copy = cuda_copy,
    .memset = cuda_memset, .sync = cuda_sync, .weight_dense = cuda_weight_dense,
    .weight_4bit = cuda_weight_4bit, .weight_ggml = cuda_weight_ggml,
    .weight_qblock = cuda_weight_qblock, .weight_release = cuda_weight_release, .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm, .rope = cuda_rope, .attention = cuda_attention,
    .linear = cuda_linear, .add = cuda_add, .swiglu = cuda_swiglu, .sample = cuda_sample,
};

sq_status sq_backend_create_cuda(int device, sq_backend **out, sq_error *err) {
    if (!out) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "backend: NULL output");
    *out = NULL;
    sq_status st = SQ_OK;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL, "no CUDA device (%s)",
                            e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
    if (device < 0) {
        e = cudaGetDevice(&device);
        if (e != cudaSuccess) device = 0;
    }
    if (device >= n_dev)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "CUDA device %d does not exist (%d found)",
                            device, n_dev);
    sq_cuda *c = calloc(1, sizeof *c);
    if (!c) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the cuda backend");
    c->base.ops = &cuda_ops;
    c->base.n_threads = 1;
    c->device = device;
    struct cudaDeviceProp prop;
    SQ_CUDA_CHECK(cudaSetDevice(device));
    SQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(c->name, sizeof c->name, "cuda:%d %.120s (sm_%d%d)", device, prop.name, prop.major, prop.minor);
    SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    for (int k = 0; k < kSlots; k++)
        SQ_CUDA_CHECK(cudaEventCreateWithFlags(&c->slot_ev[k], cudaEventDisableTiming));
    SQ_CUDA_CHECK(cudaHostAlloc((void **)&c->bad_h, 2 * sizeof(long long), cudaHostAllocMapped));
    SQ_CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->bad_dp, c->bad_h, 0));
    c->bad_h[0] = c->bad_h[1] = -1;
    SQ_CUDA_CHECK(cudaMalloc(&c->blas_ws_d, kBlasWorkspace));
    {
        cublasStatus_t bs = cublasCreate(&c->blas);
        if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetStream(c->blas, c->stream);
        if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetWorkspace(c->blas, c->blas_ws_d, kBlasWorkspace);
        /* float32 products stay float32 (no TF32 unless NVIDIA_TF32_OVERRIDE asks for it) */
        if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            st = sq_error_set(err, SQ_ERR_CUDA, NULL, NULL, "cuBLAS set-up failed: %s (%d)",
                              cublasGetStatusString(bs), (int)bs);
            goto fail_quiet;
        }
    }
    *out = &c->base;
    return SQ_OK;
fail:
fail_quiet:
    cuda_destroy(&c->base);
    return st;
}
