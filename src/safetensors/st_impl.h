/* Private to the safetensors module: the parsed-header representation shared by the header
 * parser (st_header.c), the file/model layer (st_file.c) and the writer (st_writer.c).
 * Must never be included from outside src/safetensors/. */
#ifndef SHARDQ_ST_IMPL_H
#define SHARDQ_ST_IMPL_H

#include "shardq/safetensors.h"

/* A validated header.  Everything is allocated by st_header_parse and freed by
 * st_header_free; sizes are bounded by the (capped) header length, never by a number read
 * from the file. */
typedef struct st_header {
    uint64_t header_bytes;      /* the 8-byte length prefix */
    uint64_t data_bytes;        /* file size - 8 - header_bytes */
    size_t n_tensors;
    sq_tensor_info *tensors;    /* (n_tensors) header order; names point into `names` */
    const sq_tensor_info **by_name; /* (n_tensors) sorted by strcmp(name), for bsearch */
    char *names;                /* every tensor name, NUL-separated */
    size_t n_meta;
    char **meta;                /* (2 * n_meta) key, value, key, value... sorted by key; the
                                 * strings live in `meta_strings` */
    char *meta_strings;
} st_header;

/* Parses and validates the header in buf (see sq_st_header_check).  On failure *out is zeroed
 * and nothing is allocated. */
sq_status st_header_parse(const uint8_t *buf, size_t buf_bytes, uint64_t file_size,
                          const char *path, st_header *out, sq_error *err);
void st_header_free(st_header *h);
/* The tensor called `name`, or NULL. */
const sq_tensor_info *st_header_find(const st_header *h, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *st_header_metadata(const st_header *h, const char *key);
/* qsort/bsearch comparators on `const sq_tensor_info *` elements. */
int st_cmp_info_name(const void *a, const void *b);
int st_cmp_key_info_name(const void *key, const void *elem);

/* 2^53: the largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

#endif
