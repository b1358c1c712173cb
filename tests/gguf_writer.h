/* A tiny GGUF writer for tests (v3, little-endian): metadata of every kind the reader takes and
 * tensor infos + data, built in memory so tests can break any byte of it.  Tests only. */
#ifndef SHARDQ_TEST_GGUF_WRITER_H
#define SHARDQ_TEST_GGUF_WRITER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct gw_buf { uint8_t *p; size_t n, cap; } gw_buf;

static inline void gw_put(gw_buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static inline void gw_u32(gw_buf *b, uint32_t v) { uint8_t x[4] = {v, v >> 8, v >> 16, v >> 24}; gw_put(b, x, 4); }
static inline void gw_u64(gw_buf *b, uint64_t v) { gw_u32(b, (uint32_t)v); gw_u32(b, (uint32_t)(v >> 32)); }
static inline void gw_str(gw_buf *b, const char *s) { gw_u64(b, strlen(s)); gw_put(b, s, strlen(s)); }

#define GW_MAX_T 64
typedef struct gw_tensor {
    char name[96];
    uint32_t n_dims, type;
    uint64_t ne[4];
    const void *data;
    size_t n_bytes;
    uint64_t off_override;   /* != 0: write this offset instead of the right one */
} gw_tensor;

typedef struct gguf_w {
    gw_buf kv;
    uint64_t n_kv;
    gw_tensor t[GW_MAX_T];
    int n_t;
    uint32_t version;
} gguf_w;

static inline void gw_key(gguf_w *w, const char *k, uint32_t type) { gw_str(&w->kv, k); gw_u32(&w->kv, type); w->n_kv++; }
static inline void gw_kv_u32(gguf_w *w, const char *k, uint32_t v) { gw_key(w, k, 4); gw_u32(&w->kv, v); }
static inline void gw_kv_f32(gguf_w *w, const char *k, float f) { uint32_t u; memcpy(&u, &f, 4); gw_key(w, k, 6); gw_u32(&w->kv, u); }
static inline void gw_kv_bool(gguf_w *w, const char *k, int v) { uint8_t x = (uint8_t)v; gw_key(w, k, 7); gw_put(&w->kv, &x, 1); }
static inline void gw_kv_str(gguf_w *w, const char *k, const char *s) { gw_key(w, k, 8); gw_str(&w->kv, s); }
static inline void gw_kv_strs(gguf_w *w, const char *k, const char *const *s, uint64_t n) {
    gw_key(w, k, 9); gw_u32(&w->kv, 8); gw_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) gw_str(&w->kv, s[i]);
}
static inline void gw_kv_i32s(gguf_w *w, const char *k, const int32_t *v, uint64_t n) {
    gw_key(w, k, 9); gw_u32(&w->kv, 5); gw_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) gw_u32(&w->kv, (uint32_t)v[i]);
}
/* ne innermost first, as GGUF stores them. */
static inline gw_tensor *gw_tensor_add(gguf_w *w, const char *name, uint32_t type, uint32_t n_dims,
                                       const uint64_t *ne, const void *data, size_t n_bytes) {
    gw_tensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->data = data;
    t->n_bytes = n_bytes;
    return t;
}
/* The file's bytes (malloc'd), alignment 32. */
static inline uint8_t *gw_finish(gguf_w *w, size_t *n_out) {
    gw_buf b = {0};
    gw_put(&b, "GGUF", 4);
    gw_u32(&b, w->version ? w->version : 3);
    gw_u64(&b, (uint64_t)w->n_t);
    gw_u64(&b, w->n_kv);
    gw_put(&b, w->kv.p, w->kv.n);
    uint64_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        gw_tensor *t = &w->t[i];
        gw_str(&b, t->name);
        gw_u32(&b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) gw_u64(&b, t->ne[d]);
        gw_u32(&b, t->type);
        gw_u64(&b, t->off_override ? t->off_override : off);
        off += (t->n_bytes + 31) / 32 * 32;
    }
    static const uint8_t zeros[32];
    gw_put(&b, zeros, (32 - b.n % 32) % 32);
    for (int i = 0; i < w->n_t; i++) {
        gw_put(&b, w->t[i].data, w->t[i].n_bytes);
        gw_put(&b, zeros, (32 - w->t[i].n_bytes % 32) % 32);
    }
    free(w->kv.p);
    w->kv.p = NULL;
    *n_out = b.n;
    return b.p;
}

#endif
