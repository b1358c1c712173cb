/* The GPU tests' start: exit 77 (CTest: skipped) only when there is no CUDA device to find —
 * cudaErrorNoDevice, or no NVIDIA driver loaded at all (cudaErrorInsufficientDriver with no
 * /dev/nvidiactl: the toolkit without a driver, as on the CPU-only CI machines).  Any other
 * cudaGetDeviceCount error (a driver too old for a GPU that is there, a broken install, ...) is
 * a failure, not a skip.  Header-only, for tests/test_*_gpu.c. */
#ifndef SHARDQ_GPU_SKIP_H
#define SHARDQ_GPU_SKIP_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <unistd.h>

/* Returns the device count (> 0), 0 to skip (message printed), or -1 on a real error. */
static inline int sq_test_gpu_count(const char *test) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess && n > 0) return n;
    if (e == cudaSuccess || e == cudaErrorNoDevice ||
        (e == cudaErrorInsufficientDriver && access("/dev/nvidiactl", F_OK) != 0)) {
        printf("%s: no CUDA device (%s): skipped\n", test,
               e == cudaSuccess ? "device count 0" : cudaGetErrorString(e));
        return 0;
    }
    fprintf(stderr, "%s: cudaGetDeviceCount failed: %s (%d): a failure, not a skip\n", test,
            cudaGetErrorString(e), (int)e);
    return -1;
}

#endif
