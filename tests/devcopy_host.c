/* The host-memory devcopy for tests (see devcopy_host.h). */
#include "devcopy_host.h"

#include <stdlib.h>
#include <string.h>

typedef struct block {
    struct block *next;
    uint64_t n;
} block;   /* header before each staging buffer (16 bytes: keeps the buffer aligned) */

struct sq_devcopy {
    sq_test_devcopy_stats *stats;
    block *freed;   /* poisoned, freed for real at destroy */
};

static sq_status hc_create(void *user, int n_slots, sq_devcopy **out, sq_error *err) {
    (void)n_slots;
    sq_devcopy *c = calloc(1, sizeof *c);
    *out = c;
    if (!c) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "test devcopy: out of memory");
    c->stats = user;
    return SQ_OK;
}

static void hc_destroy(sq_devcopy *c) {
    if (!c) return;
    while (c->freed) {
        block *b = c->freed;
        c->freed = b->next;
        free(b);
    }
    free(c);
}

static sq_status hc_check_device(sq_devcopy *c, const void *p, uint64_t n, sq_error *err) {
    (void)c, (void)p, (void)n, (void)err;
    return SQ_OK;
}

static void *hc_host_alloc(sq_devcopy *c, uint64_t n) {
    block *b = malloc(sizeof *b + (size_t)n);
    if (!b) return NULL;
    b->n = n;
    b->next = NULL;
    if (c->stats) c->stats->n_allocs++;
    return b + 1;
}

static void hc_host_free(sq_devcopy *c, void *p) {
    if (!p) return;
    block *b = (block *)p - 1;
    memset(p, 0xDD, (size_t)b->n);
    b->next = c->freed;
    c->freed = b;
    if (c->stats) c->stats->n_frees++;
}

static sq_status hc_copy(sq_devcopy *c, int slot, void *dst, const void *src, uint64_t n,
                         bool to_device, sq_error *err) {
    (void)slot, (void)to_device, (void)err;
    if (n) memcpy(dst, src, (size_t)n);
    if (c->stats) c->stats->n_copies++;
    return SQ_OK;
}

static sq_status hc_copy_test(sq_devcopy *c, int slot, bool *done, sq_error *err) {
    (void)c, (void)slot, (void)err;
    *done = true;
    return SQ_OK;
}

static void hc_copy_wait(sq_devcopy *c, int slot) { (void)c, (void)slot; }

const sq_devcopy_ops sq_test_devcopy_ops = {
    .name = "test-host",
    .create = hc_create,
    .destroy = hc_destroy,
    .check_device = hc_check_device,
    .host_alloc = hc_host_alloc,
    .host_free = hc_host_free,
    .copy = hc_copy,
    .copy_test = hc_copy_test,
    .copy_wait = hc_copy_wait,
};
