/* quant.cuh: the CUDA side of 4-bit quantization, callable from C.  Owns: the launcher of the
 * blockwise NF4 / FP4 quantize kernel (same per-element math as the CPU, kernels/quant_math.cuh,
 * so its bytes equal sq_quant_4bit's; double quant stays on the host: copy absmax back and call
 * sq_qtensor_compress) and a pinned staging ring that feeds host bytes to the device with
 * asynchronous copies, so reading, copying and quantizing overlap.
 * Never: synchronizes inside a launcher, prints, or exits.  Device pointers end in _d, pinned
 * host pointers in _h. */
#ifndef SHARDQ_KERNELS_QUANT_CUH
#define SHARDQ_KERNELS_QUANT_CUH

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "shardq/core.h"
#include "shardq/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Enqueues on `stream` the quantization of n elements src_d (F32, F16 or BF16, device memory)
 * into packed_d (ceil(n/2) bytes) and absmax_d (ceil(n/blocksize) float32), blocksize a power
 * of two in 32..4096, is_fp4 0 (NF4) or 1 (FP4).  Only enqueues: the results are there after
 * the stream is synchronized.  src_d must be aligned to its element size (cudaMalloc'd
 * memory is).  Returns SQ_ERR_INVALID for bad arguments, SQ_ERR_CUDA when the
 * launch fails; nothing is allocated. */
sq_status sq_cuda_quant_4bit(sq_dtype src_dtype, const void *src_d, uint64_t n,
                             int64_t blocksize, int is_fp4, uint8_t *packed_d, float *absmax_d,
                             cudaStream_t stream, sq_error *err);

/* A ring of pinned host buffers for host -> device copies. */
typedef struct sq_cuda_stager sq_cuda_stager;
/* n_buffers (>= 2) pinned buffers of chunk_bytes each.  On failure *out is NULL, nothing leaks. */
sq_status sq_cuda_stager_create(size_t chunk_bytes, int n_buffers, sq_cuda_stager **out,
                                sq_error *err);
/* Waits for outstanding copies, frees the buffers.  Takes NULL. */
void sq_cuda_stager_destroy(sq_cuda_stager *s);
/* Copies n_bytes of pageable host memory src to device memory dst_d on `stream`, chunk by chunk:
 * memcpy into a free pinned buffer, then cudaMemcpyAsync from it; the memcpy of chunk k+1
 * overlaps the transfer of chunk k.  Returns once every byte of src has been staged (src may be
 * reused); the device copy completes in stream order, so kernels enqueued after this call on the
 * same stream see the data.  On failure some bytes may have been copied. */
sq_status sq_cuda_stage_copy(sq_cuda_stager *s, void *dst_d, const void *src, size_t n_bytes,
                             cudaStream_t stream, sq_error *err);

#ifdef __cplusplus
}
#endif
#endif
