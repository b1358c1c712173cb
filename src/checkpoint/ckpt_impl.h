/* Private to the checkpoint module: the handle, the GGUF parse, and what the two
 * implementations share. */
#ifndef SHARDQ_CKPT_IMPL_H
#define SHARDQ_CKPT_IMPL_H

#include <stdint.h>

#include "shardq/checkpoint.h"

/* GGUF metadata value types (gguf.h's enum gguf_type). */
enum {
    GGUF_U8 = 0, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL,
    GGUF_STRING, GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_TYPE_COUNT
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY_BYTES 65536

typedef struct gguf_kv {
    char *key;             /* malloc'd, NUL-terminated */
    uint32_t type;         /* GGUF_* */
    uint32_t arr_type;     /* arrays: the element type */
    uint64_t n;            /* arrays: element count; strings: byte length */
    uint64_t off;          /* where the value (a string's bytes, an array's first element) starts */
} gguf_kv;

typedef struct gguf_ti {
    char *name;            /* malloc'd */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];   /* innermost first */
    uint32_t type;         /* ggml type */
    uint64_t rel_off;      /* from the data section's start */
    uint64_t n_bytes;
} gguf_ti;

typedef struct gguf {
    const uint8_t *buf;    /* the file (or the prefix given to sq_gguf_check) */
    uint64_t buf_bytes, file_size;
    uint32_t version;
    uint64_t n_kv, n_ti;
    gguf_kv *kv;           /* (n_kv) */
    gguf_ti *ti;           /* (n_ti) */
    uint64_t alignment, data_start;
} gguf;

/* Parses and checks buf (see sq_gguf_check); on failure everything is freed. */
sq_status gguf_parse(const uint8_t *buf, uint64_t buf_bytes, uint64_t file_size, const char *path,
                     gguf *g, sq_error *err);
void gguf_free(gguf *g);
const gguf_kv *gguf_find(const gguf *g, const char *key);
/* Scalar getters: false when absent or not a number / string of that kind. */
bool gguf_get_int(const gguf *g, const char *key, int64_t *out);
bool gguf_get_float(const gguf *g, const char *key, double *out);
bool gguf_get_bool(const gguf *g, const char *key, bool *out);
/* A string value: pointer into the buffer (not NUL-terminated) and its length. */
bool gguf_get_str(const gguf *g, const char *key, const char **s, uint64_t *len);
/* Element i of an array of strings (bounds were checked at parse; walks from the start). */
typedef struct gguf_str_iter { const gguf *g; uint64_t pos, i, n; } gguf_str_iter;
bool gguf_str_iter_init(const gguf *g, const gguf_kv *kv, gguf_str_iter *it);
bool gguf_str_iter_next(gguf_str_iter *it, const char **s, uint64_t *len);
/* Element i of an array of integers (any integer element type). */
bool gguf_arr_int(const gguf *g, const gguf_kv *kv, uint64_t i, int64_t *out);
bool gguf_arr_float(const gguf *g, const gguf_kv *kv, uint64_t i, double *out);

/* ggml type facts (this module's own table: the file layout is checked for every type). */
const char *gguf_type_name(uint32_t type);   /* NULL for an unknown number */
bool gguf_type_supported(uint32_t type);     /* the types shardq computes on */

struct sq_ckpt {
    sq_ckpt_format format;
    char *path;
    size_t n_files;
    char **files;                 /* (n_files) */
    size_t n_tensors;
    sq_ckpt_tensor *tensors;      /* (n_tensors) */
    sq_ckpt_tensor **by_name;     /* (n_tensors) sorted by name */
    uint64_t data_bytes;
    /* safetensors */
    sq_st_model *st;
    const sq_tensor_info **st_src; /* (n_tensors) the safetensors entry of tensors[i] */
    /* gguf */
    const uint8_t *map;
    uint64_t map_bytes;
    gguf g;
    char **names;                 /* (n_tensors) mapped names, malloc'd */
};

/* GGUF implementation (gguf_model.c). */
sq_status ckpt_gguf_open(sq_ckpt *ck, sq_error *err);
sq_status ckpt_gguf_config(const sq_ckpt *ck, sq_model_config *out, sq_error *err);
sq_status ckpt_gguf_tokenizer(const sq_ckpt *ck, sq_tokenizer **out, bool *found, sq_error *err);
int ckpt_gguf_chat_family(const sq_ckpt *ck);
bool ckpt_gguf_chat_default_system(const sq_ckpt *ck, char *buf, size_t buf_bytes);

#endif
