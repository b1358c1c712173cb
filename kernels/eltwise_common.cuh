/* eltwise_common.cuh: launch geometry shared by the element-wise kernels (add, swiglu, embed,
 * bias): a grid-stride loop over n elements with a capped grid.  Owns nothing else.
 * Must never allocate or synchronize.  CUDA only (included from .cu files). */
#ifndef SHARDQ_ELTWISE_COMMON_CUH
#define SHARDQ_ELTWISE_COMMON_CUH

#include <stdint.h>

namespace sq_elt {
constexpr int kThreads = 256;
/* Blocks for n work items: enough to fill any current GPU, few enough to stay in range. */
inline unsigned grid_for(int64_t n) {
    int64_t g = (n + kThreads - 1) / kThreads;
    if (g > 65536) g = 65536;
    return (unsigned)(g < 1 ? 1 : g);
}
}  // namespace sq_elt

#endif
