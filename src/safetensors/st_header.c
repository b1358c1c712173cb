/* Owns the safetensors header: the 8-byte little-endian length, the JSON (parsed with cJSON),
 * the dtype table, and every rule a header must pass before any tensor byte is touched.
 * Must never read tensor bytes, use a number from the file before checking it (all sums and
 * products are overflow-checked), or allocate by a length read from the file: every
 * allocation here is bounded by the header length, which is capped at 100 MB first. */
#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st_impl.h"

static const struct {
    const char *name;
    size_t size;
} k_dtypes[SQ_DTYPE_COUNT] = {
    [SQ_DTYPE_F64] = {"F64", 8},          [SQ_DTYPE_F32] = {"F32", 4},
    [SQ_DTYPE_F16] = {"F16", 2},          [SQ_DTYPE_BF16] = {"BF16", 2},
    [SQ_DTYPE_I64] = {"I64", 8},          [SQ_DTYPE_I32] = {"I32", 4},
    [SQ_DTYPE_I16] = {"I16", 2},          [SQ_DTYPE_I8] = {"I8", 1},
    [SQ_DTYPE_U8] = {"U8", 1},            [SQ_DTYPE_BOOL] = {"BOOL", 1},
    [SQ_DTYPE_F8_E4M3] = {"F8_E4M3", 1},  [SQ_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

#define KNOWN_DTYPES "F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL F8_E4M3 F8_E5M2"

const char *sq_dtype_name(sq_dtype d) {
    return (unsigned)d < SQ_DTYPE_COUNT ? k_dtypes[d].name : "?";
}

size_t sq_dtype_size(sq_dtype d) { return (unsigned)d < SQ_DTYPE_COUNT ? k_dtypes[d].size : 0; }

bool sq_dtype_from_name(const char *name, sq_dtype *out) {
    if (!name) return false;
    for (int d = 0; d < SQ_DTYPE_COUNT; d++) {
        if (strcmp(name, k_dtypes[d].name) == 0) {
            if (out) *out = (sq_dtype)d;
            return true;
        }
    }
    return false;
}

int st_cmp_info_name(const void *a, const void *b) {
    const sq_tensor_info *x = *(const sq_tensor_info *const *)a;
    const sq_tensor_info *y = *(const sq_tensor_info *const *)b;
    return strcmp(x->name, y->name);
}

int st_cmp_key_info_name(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const sq_tensor_info *const *)elem)->name);
}

/* Orders by first byte, then last byte, so the overlap scan sees each tensor after every
 * tensor that starts before it. */
static int cmp_info_offset(const void *a, const void *b) {
    const sq_tensor_info *x = *(const sq_tensor_info *const *)a;
    const sq_tensor_info *y = *(const sq_tensor_info *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->n_bytes != y->n_bytes) return x->n_bytes < y->n_bytes ? -1 : 1;
    return 0;
}

const sq_tensor_info *st_header_find(const st_header *h, const char *name) {
    if (!h || !name || h->n_tensors == 0) return NULL;
    const sq_tensor_info **hit =
        bsearch(name, h->by_name, h->n_tensors, sizeof *h->by_name, st_cmp_key_info_name);
    return hit ? *hit : NULL;
}

void st_header_free(st_header *h) {
    if (!h) return;
    free(h->tensors);
    free(h->by_name);
    free(h->names);
    free(h->meta);
    free(h->meta_strings);
    memset(h, 0, sizeof *h);
}

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static const char *json_type_name(const cJSON *j) {
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    return "an invalid value";
}

/* A JSON number that must be a non-negative integer below 2^53 (exact in a double). */
typedef enum { UINT_OK, UINT_NOT_NUMBER, UINT_NEGATIVE, UINT_FRACTION, UINT_TOO_BIG } uint_check;

static uint_check json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return UINT_NOT_NUMBER;
    double d = j->valuedouble;
    if (isnan(d)) return UINT_FRACTION;
    if (d < 0) return UINT_NEGATIVE;
    if (d > ST_MAX_JSON_INT) return UINT_TOO_BIG;
    if (d != floor(d)) return UINT_FRACTION;
    *out = (uint64_t)d;
    return UINT_OK;
}

static const char *uint_check_text(uint_check c) {
    switch (c) {
    case UINT_NOT_NUMBER: return "is not a number";
    case UINT_NEGATIVE: return "is negative";
    case UINT_FRACTION: return "is not an integer";
    case UINT_TOO_BIG: return "is larger than 2^53";
    case UINT_OK: break;
    }
    return "is fine";
}

/* Writes "[2, 3]" into buf. */
static void shape_text(const sq_tensor_info *t, char *buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->n_dims && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%" PRId64, i ? ", " : "", t->shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* Fills *t from one header entry; the name is set by the caller. */
static sq_status parse_tensor(const cJSON *entry, uint64_t header_bytes, uint64_t data_bytes,
                              const char *file, const char *name, sq_tensor_info *t,
                              sq_error *err) {
    if (!cJSON_IsObject(entry))
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "header entry is %s, not an object with dtype, shape and data_offsets",
                            json_type_name(entry));
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *m = entry->child; m; m = m->next) {
        const cJSON **slot = NULL;
        if (strcmp(m->string, "dtype") == 0) slot = &dtype;
        else if (strcmp(m->string, "shape") == 0) slot = &shape;
        else if (strcmp(m->string, "data_offsets") == 0) slot = &offsets;
        if (!slot) continue; /* unknown keys are ignored, as the Rust crate does */
        if (*slot)
            return sq_error_set(err, SQ_ERR_FORMAT, file, name, "key \"%s\" appears twice",
                                m->string);
        *slot = m;
    }
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offsets ? "data_offsets" : NULL;
    if (missing)
        return sq_error_set(err, SQ_ERR_FORMAT, file, name, "header entry has no \"%s\"", missing);

    if (!cJSON_IsString(dtype))
        return sq_error_set(err, SQ_ERR_FORMAT, file, name, "dtype is %s, not a string",
                            json_type_name(dtype));
    if (!sq_dtype_from_name(dtype->valuestring, &t->dtype))
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, file, name,
                            "unknown dtype '%.64s' (safetensors dtypes: " KNOWN_DTYPES ")",
                            dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return sq_error_set(err, SQ_ERR_FORMAT, file, name, "shape is %s, not an array",
                            json_type_name(shape));
    int n_dims = 0;
    uint64_t n_elements = 1;
    for (const cJSON *d = shape->child; d; d = d->next, n_dims++) {
        if (n_dims >= SQ_MAX_DIMS)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, file, name,
                                "shape has more than %d dimensions", SQ_MAX_DIMS);
        uint64_t v = 0;
        uint_check c = json_uint(d, &v);
        if (c == UINT_NOT_NUMBER)
            return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                                "shape entry %d is %s, not a non-negative integer", n_dims,
                                json_type_name(d));
        if (c != UINT_OK)
            return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                                "shape entry %d (%.17g) %s; shape entries must be non-negative "
                                "integers", n_dims, d->valuedouble, uint_check_text(c));
        t->shape[n_dims] = (int64_t)v;
        if (!sq_mul_u64(n_elements, v, &n_elements))
            return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                                "shape's element count overflows 64 bits");
    }
    t->n_dims = n_dims;
    t->n_elements = n_elements;

    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "data_offsets is %s, not an array [begin, end]",
                            cJSON_IsArray(offsets) ? "an array of the wrong length"
                                                   : json_type_name(offsets));
    uint64_t begin = 0, end = 0;
    uint_check cb = json_uint(offsets->child, &begin);
    uint_check ce = json_uint(offsets->child->next, &end);
    if (cb != UINT_OK || ce != UINT_OK)
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "data_offsets %s %s; offsets must be non-negative integers",
                            cb != UINT_OK ? "begin" : "end", uint_check_text(cb != UINT_OK ? cb : ce));
    if (begin > end)
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                            begin, end);
    if (end > data_bytes)
        return sq_error_set(err, SQ_ERR_IO, file, name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] end past the end of the "
                            "data section (%" PRIu64 " bytes): file truncated or header wrong",
                            begin, end, data_bytes);

    uint64_t n_bytes = 0;
    char shp[160];
    shape_text(t, shp, sizeof shp);
    if (!sq_mul_u64(n_elements, sq_dtype_size(t->dtype), &n_bytes))
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "shape %s of %s overflows 64 bits of bytes", shp,
                            sq_dtype_name(t->dtype));
    if (n_bytes != end - begin)
        return sq_error_set(err, SQ_ERR_FORMAT, file, name,
                            "shape %s of %s needs %" PRIu64 " bytes but data_offsets [%" PRIu64
                            ", %" PRIu64 "] span %" PRIu64 " bytes",
                            shp, sq_dtype_name(t->dtype), n_bytes, begin, end, end - begin);
    t->n_bytes = n_bytes;
    t->offset = 8 + header_bytes + begin; /* <= file size: no overflow */
    t->file_index = 0;
    return SQ_OK;
}

static int cmp_meta_key(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

const char *st_header_metadata(const st_header *h, const char *key) {
    if (!h || !key || h->n_meta == 0) return NULL;
    char *const *hit = bsearch(&key, h->meta, h->n_meta, 2 * sizeof *h->meta, cmp_meta_key);
    return hit ? hit[1] : NULL;
}

/* __metadata__: an object of strings, kept sorted by key. */
static sq_status parse_metadata(const cJSON *meta, const char *file, st_header *h,
                                size_t *strings_used, sq_error *err) {
    size_t k = 0;
    for (const cJSON *m = meta->child; m; m = m->next, k++) {
        if (!cJSON_IsString(m))
            return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                                "__metadata__ value for \"%.128s\" is %s, not a string",
                                m->string, json_type_name(m));
        const char *src[2] = {m->string, m->valuestring};
        for (int s = 0; s < 2; s++) {
            size_t n = strlen(src[s]) + 1;
            h->meta[2 * k + (size_t)s] = memcpy(h->meta_strings + *strings_used, src[s], n);
            *strings_used += n;
        }
    }
    /* sorted by key (for bsearch); a duplicate key is then a neighbour */
    qsort(h->meta, h->n_meta, 2 * sizeof *h->meta, cmp_meta_key);
    for (k = 1; k < h->n_meta; k++)
        if (strcmp(h->meta[2 * k - 2], h->meta[2 * k]) == 0)
            return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                                "__metadata__ key \"%.128s\" appears twice", h->meta[2 * k]);
    return SQ_OK;
}

sq_status st_header_parse(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                          const char *path, st_header *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    const char *file = path ? path : "(buffer)";
    if (file_size == 0)
        return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                            "empty file (0 bytes): not a safetensors file");
    if (file_size < 8)
        return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                            "file is %" PRIu64 " bytes, shorter than the 8-byte header length: "
                            "not a safetensors file", file_size);
    if (!buf || buf_bytes < 8)
        return sq_error_set(err, SQ_ERR_IO, file, NULL,
                            "only %zu of the 8 header-length bytes could be read", buf ? buf_bytes : 0);
    uint64_t header_bytes = read_le64(buf);
    if (header_bytes > SQ_ST_MAX_HEADER_BYTES)
        return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                            "header length %" PRIu64 " bytes exceeds the 100 MB limit (%u bytes)",
                            header_bytes, SQ_ST_MAX_HEADER_BYTES);
    if (header_bytes > file_size - 8)
        return sq_error_set(err, SQ_ERR_IO, file, NULL,
                            "header length %" PRIu64 " bytes is larger than the file "
                            "(%" PRIu64 " bytes after the 8-byte length)",
                            header_bytes, file_size - 8);
    if (buf_bytes - 8 < header_bytes)
        return sq_error_set(err, SQ_ERR_IO, file, NULL,
                            "header truncated: %zu of its %" PRIu64 " bytes available",
                            buf_bytes - 8, header_bytes);

    const char *json = (const char *)buf + 8;
    const char *parse_end = json;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)header_bytes, &parse_end, 0);
    if (!root) {
        size_t at = parse_end >= json ? (size_t)(parse_end - json) : 0;
        if (at > header_bytes) at = (size_t)header_bytes;
        return sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                            "header is not valid JSON (parse error near byte %zu of %" PRIu64 ")",
                            at, header_bytes);
    }
    sq_status st = SQ_OK;
    const sq_tensor_info **by_offset = NULL;
    for (const char *p = parse_end; p < json + header_bytes; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                              "header is not valid JSON (unexpected bytes after the object at "
                              "byte %zu of %" PRIu64 ")", (size_t)(p - json), header_bytes);
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                          "header is %s, not a JSON object of tensors", json_type_name(root));
        goto fail;
    }

    /* First pass: count, and size the string arenas (bounded by the header length). */
    const cJSON *meta = NULL;
    size_t n_tensors = 0, name_bytes = 0, n_meta = 0, meta_bytes = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (meta) {
                st = sq_error_set(err, SQ_ERR_FORMAT, file, NULL, "__metadata__ appears twice");
                goto fail;
            }
            if (!cJSON_IsObject(e)) {
                st = sq_error_set(err, SQ_ERR_FORMAT, file, NULL,
                                  "__metadata__ is %s, not an object of strings",
                                  json_type_name(e));
                goto fail;
            }
            meta = e;
            for (const cJSON *m = e->child; m; m = m->next) {
                n_meta++;
                meta_bytes += strlen(m->string) + 1 + (cJSON_IsString(m) ? strlen(m->valuestring) + 1 : 0);
            }
            continue;
        }
        n_tensors++;
        name_bytes += strlen(e->string) + 1;
    }

    out->header_bytes = header_bytes;
    out->data_bytes = file_size - 8 - header_bytes;
    out->n_tensors = n_tensors;
    out->n_meta = n_meta;
    out->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *out->tensors);
    out->by_name = calloc(n_tensors ? n_tensors : 1, sizeof *out->by_name);
    by_offset = calloc(n_tensors ? n_tensors : 1, sizeof *by_offset);
    out->names = malloc(name_bytes ? name_bytes : 1);
    out->meta = calloc(2 * n_meta + 1, sizeof *out->meta);
    out->meta_strings = malloc(meta_bytes ? meta_bytes : 1);
    if (!out->tensors || !out->by_name || !by_offset || !out->names || !out->meta ||
        !out->meta_strings) {
        st = sq_error_set(err, SQ_ERR_NOMEM, file, NULL,
                          "out of memory for a header of %zu tensors", n_tensors);
        goto fail;
    }
    if (meta) {
        size_t used = 0;
        st = parse_metadata(meta, file, out, &used, err);
        if (st != SQ_OK) goto fail;
    }

    size_t i = 0, names_used = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (e == meta) continue;
        sq_tensor_info *t = &out->tensors[i];
        size_t n = strlen(e->string) + 1;
        t->name = memcpy(out->names + names_used, e->string, n);
        names_used += n;
        st = parse_tensor(e, header_bytes, out->data_bytes, file, t->name, t, err);
        if (st != SQ_OK) goto fail;
        out->by_name[i] = t;
        by_offset[i] = t;
        i++;
    }

    /* No duplicate names (cJSON keeps every duplicate key). */
    qsort(out->by_name, n_tensors, sizeof *out->by_name, st_cmp_info_name);
    for (i = 1; i < n_tensors; i++) {
        if (strcmp(out->by_name[i - 1]->name, out->by_name[i]->name) == 0) {
            st = sq_error_set(err, SQ_ERR_FORMAT, file, out->by_name[i]->name,
                              "duplicate tensor name in the header");
            goto fail;
        }
    }

    /* No two tensors share a byte.  Empty tensors own no bytes and cannot overlap. */
    qsort(by_offset, n_tensors, sizeof *by_offset, cmp_info_offset);
    const sq_tensor_info *reach = NULL; /* the tensor that ends furthest so far */
    uint64_t base = 8 + header_bytes;
    for (i = 0; i < n_tensors; i++) {
        const sq_tensor_info *t = by_offset[i];
        if (t->n_bytes == 0) continue;
        if (reach && t->offset < reach->offset + reach->n_bytes) {
            st = sq_error_set(err, SQ_ERR_FORMAT, file, t->name,
                              "data_offsets [%" PRIu64 ", %" PRIu64 ") overlap tensor '%.200s' "
                              "[%" PRIu64 ", %" PRIu64 ")",
                              t->offset - base, t->offset - base + t->n_bytes, reach->name,
                              reach->offset - base, reach->offset - base + reach->n_bytes);
            goto fail;
        }
        if (!reach || t->offset + t->n_bytes > reach->offset + reach->n_bytes) reach = t;
    }
    free(by_offset);
    cJSON_Delete(root);
    return SQ_OK;

fail:
    free(by_offset);
    st_header_free(out);
    cJSON_Delete(root);
    return st;
}

sq_status sq_st_header_check(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                             const char *path, size_t *n_tensors, sq_error *err) {
    st_header h;
    sq_status st = st_header_parse(buf, buf_bytes, file_size, path, &h, err);
    if (st != SQ_OK) return st;
    if (n_tensors) *n_tensors = h.n_tensors;
    st_header_free(&h);
    return SQ_OK;
}
