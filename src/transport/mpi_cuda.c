/* Owns CUDA's copies for the mpi data plane's staging of device buffers (CUDA builds): the
 * sq_devcopy_ops under mpi_stage.c.  Pinned host memory (cudaHostAlloc), one non-blocking
 * stream, one event per transfer slot marking that slot's last copy.
 * Must never block except copy_wait (a cancel, or a buffer about to be freed) and destroy. */
#include "transport_impl.h"

#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "../../kernels/cuda_check.cuh"

struct sq_devcopy {
    cudaStream_t stream;
    cudaEvent_t *ev;    /* (n) created at a slot's first copy */
    int n;
};

static void dc_destroy(sq_devcopy *c) {
    if (!c) return;
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (int i = 0; c->ev && i < c->n; i++)
        if (c->ev[i]) cudaEventDestroy(c->ev[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->ev);
    free(c);
}

static sq_status dc_create(void *user, int n_slots, sq_devcopy **out, sq_error *err) {
    (void)user;
    sq_status st = SQ_OK;
    int n_dev = 0;
    *out = NULL;
    /* SQ_ERR_UNSUPPORTED without a CUDA device, as in a build without CUDA */
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "the mpi transport got a device buffer but this machine has no CUDA device");
    }
    sq_devcopy *c = calloc(1, sizeof *c);
    *out = c;
    if (!c || !(c->ev = calloc((size_t)n_slots, sizeof *c->ev)))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "mpi transport: out of memory for staging");
    c->n = n_slots;
    SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    return SQ_OK;
fail:
    return st;
}

static sq_status dc_check_device(sq_devcopy *c, const void *p, uint64_t n, sq_error *err) {
    (void)c;
    struct cudaPointerAttributes a;
    if (n && (cudaPointerGetAttributes(&a, p) != cudaSuccess ||
              (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged))) {
        cudaGetLastError();   /* clear the error of a failed query */
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "the mpi transport got a buffer marked device that is not CUDA device memory");
    }
    return SQ_OK;
}

static void *dc_host_alloc(sq_devcopy *c, uint64_t n) {
    (void)c;
    void *p = NULL;
    if (cudaHostAlloc(&p, n ? (size_t)n : 1, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

static void dc_host_free(sq_devcopy *c, void *p) {
    (void)c;
    if (p) cudaFreeHost(p);
}

static sq_status dc_copy(sq_devcopy *c, int slot, void *dst, const void *src, uint64_t n,
                         bool to_device, sq_error *err) {
    sq_status st = SQ_OK;
    if (!c->ev[slot]) SQ_CUDA_CHECK(cudaEventCreateWithFlags(&c->ev[slot], cudaEventDisableTiming));
    if (n)
        SQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                                      c->stream));
    SQ_CUDA_CHECK(cudaEventRecord(c->ev[slot], c->stream));
    return SQ_OK;
fail:
    return st;
}

static sq_status dc_copy_test(sq_devcopy *c, int slot, bool *done, sq_error *err) {
    sq_status st = SQ_OK;
    *done = false;
    cudaError_t e = c->ev[slot] ? cudaEventQuery(c->ev[slot]) : cudaSuccess;
    if (e == cudaErrorNotReady) return SQ_OK;
    SQ_CUDA_CHECK(e);
    *done = true;
    return SQ_OK;
fail:
    return st;
}

static void dc_copy_wait(sq_devcopy *c, int slot) {
    if (c && c->ev[slot]) cudaEventSynchronize(c->ev[slot]);
}

const sq_devcopy_ops sq_devcopy_cuda_ops = {
    .name = "cuda",
    .create = dc_create,
    .destroy = dc_destroy,
    .check_device = dc_check_device,
    .host_alloc = dc_host_alloc,
    .host_free = dc_host_free,
    .copy = dc_copy,
    .copy_test = dc_copy_test,
    .copy_wait = dc_copy_wait,
};
