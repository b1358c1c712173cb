/* Reader of tests/reference/gguf/ggml_vectors.bin (made by tests/reference/gen_gguf_vectors.py):
 * raw GGUF rows of every supported ggml type and gguf.quants.dequantize's float32 values.
 * Header-only, for test_ggml_quant.c and the backend tests.  Cases point into the file buffer. */
#ifndef SHARDQ_TEST_GGML_VECTORS_H
#define SHARDQ_TEST_GGML_VECTORS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define GGML_VEC_PATH SQ_SOURCE_DIR "/tests/reference/gguf/ggml_vectors.bin"

typedef struct {
    char name[256];
    int type;
    int64_t rows, cols;
    uint64_t n_raw;
    const uint8_t *raw;   /* rows * row_bytes */
    const uint8_t *deq;   /* rows * cols float32 (unaligned: memcpy out) */
} gv_case;

typedef struct {
    uint8_t *buf;
    size_t n;
    int n_cases;
    gv_case *cases;
} gv_file;

static inline uint32_t gv_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* 0 on success; the file's layout is checked (a short or bad file fails, never overreads). */
static inline int gv_load(gv_file *f) {
    memset(f, 0, sizeof *f);
    f->buf = sq_test_read_file(GGML_VEC_PATH, &f->n);
    if (!f->buf || f->n < 12 || memcmp(f->buf, "SQGV", 4) != 0 || gv_u32(f->buf + 4) != 1) return -1;
    uint32_t nc = gv_u32(f->buf + 8);
    if (nc == 0 || nc > 100000) return -1;
    f->cases = calloc(nc, sizeof *f->cases);
    if (!f->cases) return -1;
    size_t p = 12;
    for (uint32_t i = 0; i < nc; i++) {
        gv_case *c = &f->cases[i];
        if (p + 1 > f->n) return -1;
        size_t nl = f->buf[p++];
        if (p + nl + 16 > f->n) return -1;
        memcpy(c->name, f->buf + p, nl);
        p += nl;
        c->type = (int)gv_u32(f->buf + p);
        c->rows = gv_u32(f->buf + p + 4);
        c->cols = gv_u32(f->buf + p + 8);
        c->n_raw = gv_u32(f->buf + p + 12);
        p += 16;
        uint64_t nd = (uint64_t)c->rows * (uint64_t)c->cols * 4;
        if (c->n_raw > f->n - p || nd > f->n - p - c->n_raw) return -1;
        c->raw = f->buf + p;
        c->deq = f->buf + p + c->n_raw;
        p += c->n_raw + nd;
        f->n_cases++;
    }
    return p == f->n ? 0 : -1;
}

static inline void gv_free(gv_file *f) {
    free(f->buf);
    free(f->cases);
    memset(f, 0, sizeof *f);
}

static inline float gv_ref(const gv_case *c, int64_t i) {
    float v;
    memcpy(&v, c->deq + 4 * i, 4);
    return v;
}

/* Bit-equal, or both NaN (NaN payloads are not compared). */
static inline int gv_same(float a, float b) {
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y || (a != a && b != b);
}

#endif
