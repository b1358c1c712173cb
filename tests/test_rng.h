/* The xorshift generator of the backend test binaries (header-only, static): a file defines
 * SQ_TEST_RNG_SEED, its stream's start, before including it; rng_seed restarts the stream
 * from a mixed seed.  Never used by the product. */
#ifndef SHARDQ_TEST_RNG_H
#define SHARDQ_TEST_RNG_H

#include <stdint.h>

#ifndef SQ_TEST_RNG_SEED
#define SQ_TEST_RNG_SEED 0
#endif

static uint64_t rng_state = SQ_TEST_RNG_SEED;

static inline void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }

static inline uint64_t rng_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* uniform in [lo, hi) from the top 24 bits */
static inline float rng_f(float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_u64() >> 40) * (1.0 / 16777216.0));
}

#endif
