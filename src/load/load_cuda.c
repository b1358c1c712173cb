/* Owns the loader's GPU quantization (compiled only when SHARDQ_HAVE_CUDA): a ring of
 * LOAD_GPU_SLOTS slots, each a pinned host source buffer, a pinned host output (packed + absmax),
 * device buffers of the same chunk size, a stream and an event.  For each chunk of a weight
 * (whole absmax blocks): wait only if the slot is still busy (its previous chunk's results are
 * then copied into the host sq_qtensor), pread into the slot's pinned buffer, then enqueue on
 * the slot's stream: host -> device copy, sq_cuda_quant_4bit, device -> host copies of packed
 * and absmax into pinned memory, event.  The reader goes on with the next chunk while the copy
 * and kernel run; with one stream per slot the copy of chunk k+1 overlaps the kernel of chunk k.
 * Device memory is LOAD_GPU_SLOTS chunks, never a whole tensor.
 * Must never: print, exit, leave a CUDA error unreported, leave the caller's current device
 * changed, or leak on failure. */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "load_impl.h"
#include "quant.cuh"

#define LOAD_GPU_SLOTS 3

typedef struct gpu_slot {
    void *src_h, *src_d;        /* (chunk_bytes) pinned / device */
    uint8_t *packed_h, *packed_d; /* (packed_cap) */
    float *absmax_h, *absmax_d; /* (absmax_cap) */
    cudaStream_t stream;
    cudaEvent_t done;           /* recorded after the device -> host copies */
    bool busy;                  /* holds a chunk whose results are not in q yet */
    uint64_t first, m;          /* the chunk: elements [first, first + m) */
} gpu_slot;

struct load_gpu {
    int device, prev_device;
    uint64_t chunk_bytes;       /* a multiple of 4 * blocksize: whole blocks for 2- and 4-byte sources */
    uint64_t packed_cap, absmax_cap;
    int64_t blocksize;
    gpu_slot slot[LOAD_GPU_SLOTS];
    int next;
};

/* A failing CUDA call: SQ_ERR_CUDA naming the file and tensor being loaded, the call and the
 * CUDA error (the rank is the caller's err->rank). */
#define GCHECK(call)                                                                          \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            st = sq_error_set(err, SQ_ERR_CUDA, path, name, "GPU quantize on CUDA device %d: " \
                              "%s failed: %s (%s)", g->device, #call, cudaGetErrorString(e_), \
                              cudaGetErrorName(e_));                                          \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

int sq_load_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;
    }
    return n > 0 ? n : 0;
}

void load_gpu_destroy(load_gpu *g) {
    if (!g) return;
    int cur = g->prev_device;   /* the device current at this call, restored at the end */
    if (g->prev_device >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != g->device)
        (void)cudaSetDevice(g->device);
    for (int k = 0; k < LOAD_GPU_SLOTS; k++) {
        gpu_slot *s = &g->slot[k];
        if (s->stream) (void)cudaStreamSynchronize(s->stream);
        if (s->done) (void)cudaEventDestroy(s->done);
        if (s->stream) (void)cudaStreamDestroy(s->stream);
        if (s->src_d) (void)cudaFree(s->src_d);
        if (s->packed_d) (void)cudaFree(s->packed_d);
        if (s->absmax_d) (void)cudaFree(s->absmax_d);
        if (s->src_h) (void)cudaFreeHost(s->src_h);
        if (s->packed_h) (void)cudaFreeHost(s->packed_h);
        if (s->absmax_h) (void)cudaFreeHost(s->absmax_h);
    }
    (void)cudaGetLastError();
    if (cur >= 0) (void)cudaSetDevice(cur);
    free(g);
}

sq_status load_gpu_create(int device, uint64_t staging_bytes, int64_t blocksize, load_gpu **out,
                          sq_error *err) {
    sq_status st = SQ_OK;
    const char *path = NULL, *name = NULL;
    *out = NULL;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev <= 0) {
        (void)cudaGetLastError();
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "GPU quantize on CUDA device %d: no CUDA device on this machine (%s)",
                            device, e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
    }
    if (device < 0 || device >= n_dev)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "GPU quantize on CUDA device %d: this machine has %d CUDA device%s",
                            device, n_dev, n_dev == 1 ? "" : "s");
    if (blocksize < 32 || blocksize > 4096)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "GPU quantize: blocksize %lld",
                            (long long)blocksize);
    load_gpu *g = calloc(1, sizeof *g);
    if (!g) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    g->device = device;
    g->prev_device = -1;
    g->blocksize = blocksize;
    const uint64_t unit = 4u * (uint64_t)blocksize;
    uint64_t cb = staging_bytes / LOAD_GPU_SLOTS;
    cb -= cb % unit;
    g->chunk_bytes = cb ? cb : unit;
    g->packed_cap = g->chunk_bytes / 4;                          /* <= chunk_bytes / 2 elements */
    g->absmax_cap = g->chunk_bytes / 2 / (uint64_t)blocksize;    /* whole blocks */
    int prev = -1;
    GCHECK(cudaGetDevice(&prev));
    g->prev_device = prev;
    GCHECK(cudaSetDevice(device));
    for (int k = 0; k < LOAD_GPU_SLOTS; k++) {
        gpu_slot *s = &g->slot[k];
        GCHECK(cudaHostAlloc(&s->src_h, (size_t)g->chunk_bytes, cudaHostAllocDefault));
        GCHECK(cudaHostAlloc((void **)&s->packed_h, (size_t)g->packed_cap, cudaHostAllocDefault));
        GCHECK(cudaHostAlloc((void **)&s->absmax_h, (size_t)g->absmax_cap * sizeof(float),
                             cudaHostAllocDefault));
        GCHECK(cudaMalloc(&s->src_d, (size_t)g->chunk_bytes));
        GCHECK(cudaMalloc((void **)&s->packed_d, (size_t)g->packed_cap));
        GCHECK(cudaMalloc((void **)&s->absmax_d, (size_t)g->absmax_cap * sizeof(float)));
        GCHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
        GCHECK(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    }
    GCHECK(cudaSetDevice(prev));
    *out = g;
    return SQ_OK;
fail:
    load_gpu_destroy(g);
    if (prev >= 0) (void)cudaSetDevice(prev);
    return st;
}

/* Waits for a busy slot and moves its results into q. */
static sq_status drain(load_gpu *g, gpu_slot *s, sq_qtensor *q, const char *path,
                       const char *name, sq_error *err) {
    sq_status st = SQ_OK;
    if (!s->busy) return SQ_OK;
    s->busy = false;
    GCHECK(cudaEventSynchronize(s->done));
    const uint64_t B = (uint64_t)q->blocksize;
    memcpy(q->packed + s->first / 2, s->packed_h, (size_t)((s->m + 1) / 2));
    memcpy(q->absmax + s->first / B, s->absmax_h, (size_t)sq_ceil_div_u64(s->m, B) * sizeof(float));
    return SQ_OK;
fail:
    return st;
}

sq_status load_gpu_quantize(load_gpu *g, sq_dtype dtype, load_read_fn read, void *ctx,
                            sq_qtensor *q, const char *path, const char *name, sq_error *err) {
    sq_status st = SQ_OK;
    const size_t es = sq_dtype_size(dtype);
    if (q->blocksize != g->blocksize || (es != 2 && es != 4) || !q->absmax)
        return sq_error_set(err, SQ_ERR_INTERNAL, path, name,
                            "GPU quantize: blocksize %lld / dtype %s / absmax do not fit the ring",
                            (long long)q->blocksize, sq_dtype_name(dtype));
    const uint64_t n = q->n_elements, pe = g->chunk_bytes / es;   /* whole blocks */
    int cur = -1;
    GCHECK(cudaGetDevice(&cur));
    if (cur != g->device) GCHECK(cudaSetDevice(g->device));
    for (uint64_t first = 0; first < n; first += pe) {
        const uint64_t m = n - first < pe ? n - first : pe;
        gpu_slot *s = &g->slot[g->next];
        g->next = (g->next + 1) % LOAD_GPU_SLOTS;
        st = drain(g, s, q, path, name, err);   /* blocks only when the ring is full */
        if (st != SQ_OK) goto fail;
        st = read(ctx, first * es, m * es, s->src_h, err);
        if (st != SQ_OK) goto fail;
        GCHECK(cudaMemcpyAsync(s->src_d, s->src_h, (size_t)(m * es), cudaMemcpyHostToDevice,
                               s->stream));
        st = sq_cuda_quant_4bit(dtype, s->src_d, m, q->blocksize, q->type == SQ_QUANT_FP4,
                                s->packed_d, s->absmax_d, s->stream, err);
        if (st != SQ_OK) {
            char msg[sizeof err->msg];
            memcpy(msg, err->msg, sizeof msg);
            st = sq_error_set(err, st, path, name, "GPU quantize on CUDA device %d: %s", g->device,
                              msg);
            goto fail;
        }
        GCHECK(cudaMemcpyAsync(s->packed_h, s->packed_d, (size_t)((m + 1) / 2),
                               cudaMemcpyDeviceToHost, s->stream));
        GCHECK(cudaMemcpyAsync(s->absmax_h, s->absmax_d,
                               (size_t)sq_ceil_div_u64(m, (uint64_t)q->blocksize) * sizeof(float),
                               cudaMemcpyDeviceToHost, s->stream));
        GCHECK(cudaEventRecord(s->done, s->stream));
        s->first = first;
        s->m = m;
        s->busy = true;
    }
    for (int k = 0; k < LOAD_GPU_SLOTS; k++) {
        /* oldest first, so results land in order (not needed for correctness) */
        gpu_slot *s = &g->slot[(g->next + k) % LOAD_GPU_SLOTS];
        st = drain(g, s, q, path, name, err);
        if (st != SQ_OK) goto fail;
    }
    if (cur != g->device) GCHECK(cudaSetDevice(cur));
    return SQ_OK;
fail:
    /* leave no chunk in flight that could write a slot the next call reuses */
    for (int k = 0; k < LOAD_GPU_SLOTS; k++) {
        if (g->slot[k].stream) (void)cudaStreamSynchronize(g->slot[k].stream);
        g->slot[k].busy = false;
    }
    (void)cudaGetLastError();
    if (cur >= 0 && cur != g->device) (void)cudaSetDevice(cur);
    return st;
}
