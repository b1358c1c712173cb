/* Owns the streaming shard writer of `quantize`: tensor bytes go to "<path>.tmp.<pid>" as they
 * arrive, after a header space reserved up front from a bound on the header's length; at the
 * end the header (the same JSON sq_st_writer writes: __metadata__ first, tensors in the order
 * added, consecutive data_offsets) is written into that space, padded with spaces as the
 * safetensors format allows, and the file is fsynced and renamed.  Memory: the entries'
 * names and shapes, never a tensor's bytes.  Must never leave the temporary behind after
 * destroy, nor write past the reserved header space. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load_impl.h"

#define PATH_BYTES 4096

typedef struct sw_entry {
    char *name;
    sq_dtype dtype;
    int n_dims;
    int64_t shape[2];
    uint64_t begin, end;      /* data offsets */
} sw_entry;

struct shard_writer {
    char path[PATH_BYTES], tmp[PATH_BYTES];
    int fd;
    uint64_t reserve;         /* header bytes (after the 8-byte length), a multiple of 8 */
    uint64_t at;              /* data bytes written */
    uint64_t open_end;        /* > at: the last entry still expects bytes up to here */
    sw_entry *e;
    size_t n, cap;
    bool done;
};

/* Bytes of s as a JSON string (quotes included), escaped as sq_st_writer escapes. */
static uint64_t json_str_len(const char *s) {
    uint64_t n = 2;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += *p == '"' || *p == '\\' ? 2 : *p < 0x20 ? 6 : 1;
    return n;
}

/* The fixed part of one header entry, at its longest: a dtype name of at most 4 characters
 * ("BF16", "U8"), two shape numbers and two offsets of at most 20 digits each, the keys, quotes,
 * brackets and separators: {"dtype":"BF16","shape":[R,C],"data_offsets":[B,E]}, with R, C, B, E
 * of 20 digits is 128 bytes; 160 leaves room. */
#define ENTRY_FIXED_BYTES 160
#define HEADER_FIXED_BYTES 64     /* {"__metadata__":{"format":"pt"} … } */

uint64_t shard_header_entry_bound(const char *name, const char *suffix) {
    return json_str_len(name) + json_str_len(suffix) + ENTRY_FIXED_BYTES;
}

sq_status shard_writer_create(const char *path, uint64_t entries_bound, shard_writer **out,
                              sq_error *err) {
    *out = NULL;
    shard_writer *w = calloc(1, sizeof *w);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    w->fd = -1;
    if (snprintf(w->path, sizeof w->path, "%s", path) >= (int)sizeof w->path ||
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof w->tmp) {
        free(w);
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "path too long");
    }
    uint64_t r = entries_bound + HEADER_FIXED_BYTES;
    r += (8 - (8 + r) % 8) % 8;
    if (r > SQ_ST_MAX_HEADER_BYTES) {
        free(w);
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL,
                            "header would need up to %llu bytes, over the 100 MB limit",
                            (unsigned long long)r);
    }
    w->reserve = r;
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int e = errno;
        sq_status rc = sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create %s: %s", w->tmp,
                                    strerror(e));
        free(w);
        return rc;
    }
    *out = w;
    return SQ_OK;
}

static sq_status put(shard_writer *w, const void *data, uint64_t n, const char *name,
                     sq_error *err) {
    const uint8_t *p = data;
    uint64_t done = 0;
    while (done < n) {
        size_t chunk = n - done > (1u << 30) ? (1u << 30) : (size_t)(n - done);
        ssize_t r = pwrite(w->fd, p + done, chunk, (off_t)(8 + w->reserve + w->at + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return sq_error_set(err, SQ_ERR_IO, w->tmp, name, "write failed: %s",
                                r < 0 ? strerror(errno) : "no progress");
        done += (uint64_t)r;
    }
    w->at += n;
    return SQ_OK;
}

sq_status shard_writer_add(shard_writer *w, const char *name, sq_dtype dtype, int n_dims,
                           const int64_t *shape, uint64_t total_bytes, const void *data,
                           uint64_t n_bytes, sq_error *err) {
    if (w->done || w->open_end > w->at || n_dims < 0 || n_dims > 2 || n_bytes > total_bytes)
        return sq_error_set(err, SQ_ERR_INTERNAL, w->path, name,
                            "shard writer: entry added out of order");
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        sw_entry *g = realloc(w->e, cap * sizeof *g);
        if (!g) return sq_error_set(err, SQ_ERR_NOMEM, w->path, name, "out of memory");
        w->e = g;
        w->cap = cap;
    }
    sw_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) return sq_error_set(err, SQ_ERR_NOMEM, w->path, name, "out of memory");
    e->dtype = dtype;
    e->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) e->shape[d] = shape[d];
    e->begin = w->at;
    e->end = w->at + total_bytes;
    w->n++;
    w->open_end = e->end;
    return put(w, data, n_bytes, name, err);
}

sq_status shard_writer_append(shard_writer *w, const void *data, uint64_t n_bytes, sq_error *err) {
    const char *name = w->n ? w->e[w->n - 1].name : NULL;
    if (w->done || w->at + n_bytes > w->open_end)
        return sq_error_set(err, SQ_ERR_INTERNAL, w->path, name,
                            "shard writer: more bytes than the entry holds");
    return put(w, data, n_bytes, name, err);
}

sq_status shard_writer_finish(shard_writer *w, sq_error *err) {
    if (w->done || w->open_end > w->at)
        return sq_error_set(err, SQ_ERR_INTERNAL, w->path, NULL,
                            "shard writer: finished with an entry short of its bytes");
    char *h = malloc((size_t)w->reserve + 1);
    if (!h) return sq_error_set(err, SQ_ERR_NOMEM, w->path, NULL, "out of memory for the header");
    uint64_t n = 0;
    bool fits = true;
#define H_PUT(...)                                                                           \
    do {                                                                                     \
        int k_ = snprintf(h + n, (size_t)(w->reserve + 1 - n), __VA_ARGS__);                 \
        if (k_ < 0 || (uint64_t)k_ > w->reserve - n) fits = false;                           \
        else n += (uint64_t)k_;                                                              \
    } while (0)
    H_PUT("{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; fits && i < w->n; i++) {
        const sw_entry *e = &w->e[i];
        H_PUT(",\"");
        for (const unsigned char *p = (const unsigned char *)e->name; fits && *p; p++) {
            if (*p == '"' || *p == '\\') H_PUT("\\%c", *p);
            else if (*p < 0x20) H_PUT("\\u%04x", *p);
            else H_PUT("%c", *p);
        }
        H_PUT("\":{\"dtype\":\"%s\",\"shape\":[", sq_dtype_name(e->dtype));
        for (int d = 0; d < e->n_dims; d++) H_PUT("%s%" PRId64, d ? "," : "", e->shape[d]);
        H_PUT("],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", e->begin, e->end);
    }
    H_PUT("}");
#undef H_PUT
    if (!fits) {
        free(h);
        return sq_error_set(err, SQ_ERR_INTERNAL, w->path, NULL,
                            "shard writer: header longer than its reserved %llu bytes",
                            (unsigned long long)w->reserve);
    }
    memset(h + n, ' ', (size_t)(w->reserve - n));   /* the format's padding */
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(w->reserve >> (8 * i));
    bool ok = pwrite(w->fd, len, 8, 0) == 8;
    for (uint64_t done = 0; ok && done < w->reserve;) {
        ssize_t r = pwrite(w->fd, h + done, (size_t)(w->reserve - done), (off_t)(8 + done));
        if (r < 0 && errno == EINTR) continue;
        ok = r > 0;
        if (ok) done += (uint64_t)r;
    }
    free(h);
    if (!ok || fsync(w->fd) != 0)
        return sq_error_set(err, SQ_ERR_IO, w->tmp, NULL, "write failed: %s", strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0 || rename(w->tmp, w->path) != 0)
        return sq_error_set(err, SQ_ERR_IO, w->path, NULL, "cannot put the shard in place: %s",
                            strerror(errno));
    w->done = true;
    return SQ_OK;
}

void shard_writer_destroy(shard_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (!w->done) unlink(w->tmp);
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w);
}
