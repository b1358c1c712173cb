/* Owns parsing a GGUF file's header (v2 / v3, little-endian): magic, version, counts, every
 * metadata key / value (all value types, arrays included), every tensor info, the alignment
 * and the data section's start, with each length, count and offset checked against the bytes
 * there are before it is used (overflow-safe), and the tensors' extents checked against the
 * file size, their alignment and each other.  Also the table of ggml types (names, block
 * sizes).  Must never read past the buffer it is given, allocate by an unchecked count, or
 * touch tensor data. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_impl.h"

/* ---- ggml types ------------------------------------------------------------------------------ */

typedef struct type_info { const char *name; uint32_t blck, bytes; bool supported; } type_info;

/* ggml.c's type_traits (block elements and bytes); removed numbers (4, 5, 31-33, 36-38) are NULL. */
static const type_info k_types[] = {
    [0] = {"F32", 1, 4, true},       [1] = {"F16", 1, 2, true},
    [2] = {"Q4_0", 32, 18, true},    [3] = {"Q4_1", 32, 20, true},
    [6] = {"Q5_0", 32, 22, true},    [7] = {"Q5_1", 32, 24, true},
    [8] = {"Q8_0", 32, 34, true},    [9] = {"Q8_1", 32, 36, false},
    [10] = {"Q2_K", 256, 84, false}, [11] = {"Q3_K", 256, 110, false},
    [12] = {"Q4_K", 256, 144, true}, [13] = {"Q5_K", 256, 176, true},
    [14] = {"Q6_K", 256, 210, true}, [15] = {"Q8_K", 256, 292, false},
    [16] = {"IQ2_XXS", 256, 66, false}, [17] = {"IQ2_XS", 256, 74, false},
    [18] = {"IQ3_XXS", 256, 98, false}, [19] = {"IQ1_S", 256, 50, false},
    [20] = {"IQ4_NL", 32, 18, false},   [21] = {"IQ3_S", 256, 110, false},
    [22] = {"IQ2_S", 256, 82, false},   [23] = {"IQ4_XS", 256, 136, false},
    [24] = {"I8", 1, 1, false},  [25] = {"I16", 1, 2, false}, [26] = {"I32", 1, 4, false},
    [27] = {"I64", 1, 8, false}, [28] = {"F64", 1, 8, false}, [29] = {"IQ1_M", 256, 56, false},
    [30] = {"BF16", 1, 2, true}, [34] = {"TQ1_0", 256, 54, false},
    [35] = {"TQ2_0", 256, 66, false}, [39] = {"MXFP4", 32, 17, false},
};
#define N_TYPES (sizeof k_types / sizeof k_types[0])

static const type_info *tinfo(uint32_t type) {
    return type < N_TYPES && k_types[type].name ? &k_types[type] : NULL;
}
const char *gguf_type_name(uint32_t type) {
    const type_info *t = tinfo(type);
    return t ? t->name : NULL;
}
bool gguf_type_supported(uint32_t type) {
    const type_info *t = tinfo(type);
    return t && t->supported;
}

/* ---- the reader ------------------------------------------------------------------------------ */

static const uint32_t k_value_size[GGUF_TYPE_COUNT] = {
    [GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4, [GGUF_I32] = 4,
    [GGUF_F32] = 4, [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

typedef struct rd {
    const uint8_t *buf;
    uint64_t n, pos, file_size;
    const char *path;
    sq_error *err;
} rd;

/* Fails for want more bytes than there are: a file shorter than its header says (IO) when the
 * file itself ends, else a lying count (FORMAT). */
static sq_status need(rd *r, uint64_t want, const char *what, const char *key) {
    if (want <= r->n - r->pos) return SQ_OK;
    if (r->n >= r->file_size || want > r->file_size)
        return sq_error_set(r->err, want > r->file_size ? SQ_ERR_FORMAT : SQ_ERR_IO, r->path,
                            NULL, "%s%s%s: needs %" PRIu64 " bytes at byte %" PRIu64
                            " but the file has %" PRIu64 " (truncated or corrupt)",
                            what, key ? " of key " : "", key ? key : "", want, r->pos,
                            r->file_size);
    return sq_error_set(r->err, SQ_ERR_IO, r->path, NULL, "%s: header runs past the %" PRIu64
                        " bytes given", what, r->n);
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static sq_status get_u32(rd *r, uint32_t *v, const char *what, const char *key) {
    sq_status s = need(r, 4, what, key);
    if (s == SQ_OK) { *v = (uint32_t)le(r->buf + r->pos, 4); r->pos += 4; }
    return s;
}
static sq_status get_u64(rd *r, uint64_t *v, const char *what, const char *key) {
    sq_status s = need(r, 8, what, key);
    if (s == SQ_OK) { *v = le(r->buf + r->pos, 8); r->pos += 8; }
    return s;
}
/* A gguf_string: u64 length then bytes; *off / *len say where. */
static sq_status get_str(rd *r, uint64_t *off, uint64_t *len, const char *what, const char *key) {
    sq_status s = get_u64(r, len, what, key);
    if (s == SQ_OK) s = need(r, *len, what, key);
    if (s == SQ_OK) { *off = r->pos; r->pos += *len; }
    return s;
}

static char *dup_n(const uint8_t *p, uint64_t n) {
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    return s;
}

/* Skips one value of type t (not an array). */
static sq_status skip_value(rd *r, uint32_t t, const char *key) {
    if (t == GGUF_STRING) {
        uint64_t off, len;
        return get_str(r, &off, &len, "string value", key);
    }
    sq_status s = need(r, k_value_size[t], "value", key);
    if (s == SQ_OK) r->pos += k_value_size[t];
    return s;
}

static sq_status parse_kv(rd *r, gguf_kv *kv, uint64_t i) {
    uint64_t off, len;
    char what[64];
    snprintf(what, sizeof what, "metadata key %" PRIu64, i);
    sq_status s = get_str(r, &off, &len, what, NULL);
    if (s != SQ_OK) return s;
    if (len == 0 || len > GGUF_MAX_KEY_BYTES)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s: key of %" PRIu64 " bytes",
                            what, len);
    if (!(kv->key = dup_n(r->buf + off, len)))
        return sq_error_set(r->err, SQ_ERR_NOMEM, r->path, NULL, "out of memory");
    if (strlen(kv->key) != len)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s holds a NUL byte", what);
    if ((s = get_u32(r, &kv->type, "value type", kv->key)) != SQ_OK) return s;
    if (kv->type >= GGUF_TYPE_COUNT)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                            "key '%s': unknown value type %u", kv->key, kv->type);
    if (kv->type == GGUF_STRING) {
        s = get_str(r, &kv->off, &kv->n, "string value", kv->key);
        return s;
    }
    if (kv->type != GGUF_ARRAY) {
        kv->off = r->pos;
        return skip_value(r, kv->type, kv->key);
    }
    if ((s = get_u32(r, &kv->arr_type, "array type", kv->key)) != SQ_OK) return s;
    if ((s = get_u64(r, &kv->n, "array count", kv->key)) != SQ_OK) return s;
    if (kv->arr_type >= GGUF_TYPE_COUNT || kv->arr_type == GGUF_ARRAY)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                            "key '%s': array of unsupported type %u", kv->key, kv->arr_type);
    kv->off = r->pos;
    if (kv->arr_type != GGUF_STRING) {
        uint64_t bytes;
        if (!sq_mul_u64(kv->n, k_value_size[kv->arr_type], &bytes))
            return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                                "key '%s': array of %" PRIu64 " elements", kv->key, kv->n);
        if ((s = need(r, bytes, "array", kv->key)) != SQ_OK) return s;
        r->pos += bytes;
        return SQ_OK;
    }
    /* every string needs 8 bytes at least: a count past that cannot be right */
    if (kv->n > (r->file_size - r->pos) / 8)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                            "key '%s': %" PRIu64 " strings cannot fit in the file", kv->key, kv->n);
    for (uint64_t k = 0; k < kv->n; k++)
        if ((s = skip_value(r, GGUF_STRING, kv->key)) != SQ_OK) return s;
    return SQ_OK;
}

static int cmp_ti_off(const void *a, const void *b) {
    const gguf_ti *x = *(const gguf_ti *const *)a, *y = *(const gguf_ti *const *)b;
    return x->rel_off < y->rel_off ? -1 : x->rel_off > y->rel_off;
}
static int cmp_ti_name(const void *a, const void *b) {
    return strcmp((*(const gguf_ti *const *)a)->name, (*(const gguf_ti *const *)b)->name);
}

static sq_status parse_ti(rd *r, gguf_ti *t, uint64_t i) {
    uint64_t off, len;
    char what[64];
    snprintf(what, sizeof what, "tensor info %" PRIu64, i);
    sq_status s = get_str(r, &off, &len, what, NULL);
    if (s != SQ_OK) return s;
    if (len == 0 || len > 1024)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s: name of %" PRIu64 " bytes",
                            what, len);
    if (!(t->name = dup_n(r->buf + off, len)))
        return sq_error_set(r->err, SQ_ERR_NOMEM, r->path, NULL, "out of memory");
    if (strlen(t->name) != len)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s: name holds a NUL", what);
    if ((s = get_u32(r, &t->n_dims, "dims", t->name)) != SQ_OK) return s;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name, "%u dimensions (1..%d)",
                            t->n_dims, GGUF_MAX_DIMS);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if ((s = get_u64(r, &t->ne[d], "dim", t->name)) != SQ_OK) return s;
        if (t->ne[d] == 0 || t->ne[d] > INT64_MAX || !sq_mul_u64(n_el, t->ne[d], &n_el) ||
            n_el > (uint64_t)INT64_MAX)
            return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name,
                                "dimension %u is %" PRIu64 " (zero or overflowing)", d, t->ne[d]);
    }
    for (uint32_t d = t->n_dims; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    if ((s = get_u32(r, &t->type, "type", t->name)) != SQ_OK) return s;
    if ((s = get_u64(r, &t->rel_off, "offset", t->name)) != SQ_OK) return s;
    const type_info *ty = tinfo(t->type);
    if (!ty)
        return sq_error_set(r->err, SQ_ERR_UNSUPPORTED, r->path, t->name,
                            "unknown ggml tensor type %u", t->type);
    if (!ty->supported)
        return sq_error_set(r->err, SQ_ERR_UNSUPPORTED, r->path, t->name,
                            "tensor type %s is not supported (supported: F32, F16, BF16, Q8_0, "
                            "Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)", ty->name);
    if (t->ne[0] % ty->blck)
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name,
                            "row of %" PRIu64 " elements is not a whole number of %s blocks (%u)",
                            t->ne[0], ty->name, ty->blck);
    uint64_t rows = n_el / t->ne[0];
    if (!sq_mul_u64(t->ne[0] / ty->blck, ty->bytes, &t->n_bytes) ||
        !sq_mul_u64(t->n_bytes, rows, &t->n_bytes))
        return sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name, "size overflows");
    return SQ_OK;
}

void gguf_free(gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++) free(g->kv[i].key);
    for (uint64_t i = 0; g->ti && i < g->n_ti; i++) free(g->ti[i].name);
    free(g->kv);
    free(g->ti);
    memset(g, 0, sizeof *g);
}

static sq_status check_layout(gguf *g, rd *r) {
    sq_status s = SQ_OK;
    if (g->n_ti == 0) return SQ_OK;
    gguf_ti **p = malloc((size_t)g->n_ti * sizeof *p);
    if (!p) return sq_error_set(r->err, SQ_ERR_NOMEM, r->path, NULL, "out of memory");
    for (uint64_t i = 0; i < g->n_ti; i++) p[i] = &g->ti[i];
    qsort(p, (size_t)g->n_ti, sizeof *p, cmp_ti_name);
    for (uint64_t i = 1; i < g->n_ti && s == SQ_OK; i++)
        if (!strcmp(p[i - 1]->name, p[i]->name))
            s = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, p[i]->name, "duplicate tensor name");
    qsort(p, (size_t)g->n_ti, sizeof *p, cmp_ti_off);
    for (uint64_t i = 0; i < g->n_ti && s == SQ_OK; i++) {
        gguf_ti *t = p[i];
        uint64_t start, end;
        if (t->rel_off % g->alignment)
            s = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name,
                             "data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                             t->rel_off, g->alignment);
        else if (!sq_add_u64(g->data_start, t->rel_off, &start) ||
                 !sq_add_u64(start, t->n_bytes, &end) || end > g->file_size)
            s = sq_error_set(r->err, SQ_ERR_IO, r->path, t->name,
                             "data (%" PRIu64 " bytes at offset %" PRIu64 ") runs past the end of "
                             "the file (%" PRIu64 " bytes)", t->n_bytes, t->rel_off, g->file_size);
        else if (i > 0 && p[i - 1]->rel_off + p[i - 1]->n_bytes > t->rel_off)
            s = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, t->name, "data overlaps tensor '%s'",
                             p[i - 1]->name);
    }
    free(p);
    return s;
}

sq_status gguf_parse(const uint8_t *buf, uint64_t buf_bytes, uint64_t file_size, const char *path,
                     gguf *g, sq_error *err) {
    memset(g, 0, sizeof *g);
    g->buf = buf;
    g->buf_bytes = buf_bytes;
    g->file_size = file_size;
    rd r = {.buf = buf, .n = buf_bytes < file_size ? buf_bytes : file_size, .pos = 0,
            .file_size = file_size, .path = path, .err = err};
    uint32_t magic = 0;
    sq_status s = SQ_OK;
    if (r.n < 4 || memcmp(buf, "GGUF", 4) != 0) {
        s = r.n < 4 && file_size >= 4 ? need(&r, 4, "magic", NULL)
                                      : sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                                                     "not a GGUF file (bad magic)");
        goto fail;
    }
    if ((s = get_u32(&r, &magic, "magic", NULL)) != SQ_OK) goto fail;
    if ((s = get_u32(&r, &g->version, "version", NULL)) != SQ_OK) goto fail;
    if (g->version != 2 && g->version != 3) {
        s = sq_error_set(err, g->version > 0xffff ? SQ_ERR_FORMAT : SQ_ERR_UNSUPPORTED, path, NULL,
                         "GGUF version %u (2 and 3 are read%s)", g->version,
                         g->version > 0xffff ? "; a big-endian file?" : "");
        goto fail;
    }
    if ((s = get_u64(&r, &g->n_ti, "tensor count", NULL)) != SQ_OK) goto fail;
    if ((s = get_u64(&r, &g->n_kv, "metadata count", NULL)) != SQ_OK) goto fail;
    /* each key / tensor info takes at least 8 + 1 + 4 bytes: counts past that lie */
    if (g->n_kv > file_size / 13 || g->n_ti > file_size / 13) {
        s = sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                         "%" PRIu64 " metadata keys and %" PRIu64 " tensors cannot fit in %" PRIu64
                         " bytes", g->n_kv, g->n_ti, file_size);
        uint64_t nk = g->n_kv, nt = g->n_ti;
        g->n_kv = g->n_ti = 0;
        (void)nk, (void)nt;
        goto fail;
    }
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    g->ti = calloc(g->n_ti ? (size_t)g->n_ti : 1, sizeof *g->ti);
    if (!g->kv || !g->ti) {
        s = sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < g->n_kv; i++)
        if ((s = parse_kv(&r, &g->kv[i], i)) != SQ_OK) goto fail;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_find(g, "general.alignment");
    if (al) {
        int64_t a = 0;
        if (!gguf_get_int(g, "general.alignment", &a) || a <= 0 || a > (1 << 24) || (a & (a - 1))) {
            s = sq_error_set(err, SQ_ERR_FORMAT, path, "general.alignment",
                             "general.alignment must be a power of two (got %lld)", (long long)a);
            goto fail;
        }
        g->alignment = (uint64_t)a;
    }
    for (uint64_t i = 0; i < g->n_ti; i++)
        if ((s = parse_ti(&r, &g->ti[i], i)) != SQ_OK) goto fail;
    g->data_start = r.pos + (g->alignment - r.pos % g->alignment) % g->alignment;
    if (g->data_start > file_size) {
        s = sq_error_set(err, SQ_ERR_IO, path, NULL, "file ends before its data section");
        goto fail;
    }
    if ((s = check_layout(g, &r)) != SQ_OK) goto fail;
    return SQ_OK;
fail:
    gguf_free(g);
    return s;
}

sq_status sq_gguf_check(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                        const char *path, size_t *n_tensors, sq_error *err) {
    gguf g;
    sq_status s = gguf_parse(buf, buf_bytes, file_size, path, &g, err);
    if (s == SQ_OK && n_tensors) *n_tensors = (size_t)g.n_ti;
    /* the getters over every key, as the config / tokenizer readers use them */
    for (uint64_t i = 0; s == SQ_OK && i < g.n_kv; i++) {
        const gguf_kv *kv = &g.kv[i];
        if (kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING) {
            gguf_str_iter it;
            const char *str;
            uint64_t len;
            if (gguf_str_iter_init(&g, kv, &it))
                while (gguf_str_iter_next(&it, &str, &len)) {}
        } else if (kv->type == GGUF_ARRAY && kv->n) {
            int64_t v;
            double d;
            (void)gguf_arr_int(&g, kv, kv->n - 1, &v);
            (void)gguf_arr_float(&g, kv, kv->n - 1, &d);
        }
    }
    gguf_free(&g);
    return s;
}

/* ---- getters --------------------------------------------------------------------------------- */

const gguf_kv *gguf_find(const gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

static bool scalar_int(const uint8_t *p, uint32_t t, int64_t *out) {
    switch (t) {
    case GGUF_U8: case GGUF_BOOL: *out = p[0]; return true;
    case GGUF_I8: *out = (int8_t)p[0]; return true;
    case GGUF_U16: *out = (int64_t)le(p, 2); return true;
    case GGUF_I16: *out = (int16_t)le(p, 2); return true;
    case GGUF_U32: *out = (int64_t)le(p, 4); return true;
    case GGUF_I32: *out = (int32_t)le(p, 4); return true;
    case GGUF_U64: { uint64_t v = le(p, 8); if (v > INT64_MAX) return false; *out = (int64_t)v; return true; }
    case GGUF_I64: *out = (int64_t)le(p, 8); return true;
    default: return false;
    }
}

static bool scalar_float(const uint8_t *p, uint32_t t, double *out) {
    if (t == GGUF_F32) {
        uint32_t u = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &u, 4);
        *out = f;
        return true;
    }
    if (t == GGUF_F64) {
        uint64_t u = le(p, 8);
        memcpy(out, &u, 8);
        return true;
    }
    int64_t v;
    if (!scalar_int(p, t, &v)) return false;
    *out = (double)v;
    return true;
}

bool gguf_get_int(const gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find(g, key);
    return kv && kv->type != GGUF_ARRAY && kv->type != GGUF_STRING && kv->type != GGUF_F32 &&
           kv->type != GGUF_F64 && scalar_int(g->buf + kv->off, kv->type, out);
}
bool gguf_get_float(const gguf *g, const char *key, double *out) {
    const gguf_kv *kv = gguf_find(g, key);
    return kv && kv->type != GGUF_ARRAY && kv->type != GGUF_STRING &&
           scalar_float(g->buf + kv->off, kv->type, out);
}
bool gguf_get_bool(const gguf *g, const char *key, bool *out) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_BOOL) return false;
    *out = g->buf[kv->off] != 0;
    return true;
}
bool gguf_get_str(const gguf *g, const char *key, const char **s, uint64_t *len) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_STRING) return false;
    *s = (const char *)g->buf + kv->off;
    *len = kv->n;
    return true;
}
bool gguf_str_iter_init(const gguf *g, const gguf_kv *kv, gguf_str_iter *it) {
    if (!kv || kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING) return false;
    *it = (gguf_str_iter){.g = g, .pos = kv->off, .i = 0, .n = kv->n};
    return true;
}
bool gguf_str_iter_next(gguf_str_iter *it, const char **s, uint64_t *len) {
    if (it->i >= it->n) return false;
    *len = le(it->g->buf + it->pos, 8);   /* bounds were checked by parse_kv */
    *s = (const char *)it->g->buf + it->pos + 8;
    it->pos += 8 + *len;
    it->i++;
    return true;
}
bool gguf_arr_int(const gguf *g, const gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->n || kv->arr_type == GGUF_STRING ||
        kv->arr_type == GGUF_F32 || kv->arr_type == GGUF_F64)
        return false;
    return scalar_int(g->buf + kv->off + i * k_value_size[kv->arr_type], kv->arr_type, out);
}
bool gguf_arr_float(const gguf *g, const gguf_kv *kv, uint64_t i, double *out) {
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->n || kv->arr_type == GGUF_STRING) return false;
    return scalar_float(g->buf + kv->off + i * k_value_size[kv->arr_type], kv->arr_type, out);
}
