/* A host-memory stand-in for CUDA's copies under the mpi transport's staging
 * (sq_devcopy_ops), for tests only: "device" buffers are plain memory, copies are memcpy and
 * done at once.  Staging memory that is freed is poisoned (0xDD) and kept until destroy, so
 * that MPI reading a staging buffer after it was freed or refilled is seen as wrong bytes,
 * not as a crash.  Counts what it did. */
#ifndef SHARDQ_TESTS_DEVCOPY_HOST_H
#define SHARDQ_TESTS_DEVCOPY_HOST_H

#include "shardq/transport.h"

typedef struct sq_test_devcopy_stats {
    int64_t n_copies, n_allocs, n_frees;
} sq_test_devcopy_stats;

/* user: an sq_test_devcopy_stats (may be NULL). */
extern const sq_devcopy_ops sq_test_devcopy_ops;

#endif
