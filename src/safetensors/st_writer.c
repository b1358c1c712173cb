/* Owns writing .safetensors files: collects tensors (copies of their bytes) and metadata,
 * then writes the header (keys in insertion order, consecutive offsets, spaces to a multiple
 * of 8 as the Rust crate pads) and the data to "<path>.tmp.<pid>", fsyncs and renames.
 * Must never leave a half-written file under the final name, nor a temporary behind after
 * destroy. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "st_impl.h"

typedef struct {
    char *name;
    sq_dtype dtype;
    int n_dims;
    int64_t shape[SQ_MAX_DIMS];
    uint64_t n_bytes;
    void *data;      /* (n_bytes) a copy; freed once written; NULL with fill */
    sq_st_fill_fn fill;   /* or: bytes made at finish, FILL_CHUNK at a time */
    void *fill_user;
} w_tensor;

#define FILL_CHUNK ((uint64_t)16 << 20)

typedef enum { W_OPEN, W_WRITTEN, W_DONE, W_FAILED } w_state;

struct sq_st_writer {
    char *path, *tmp;
    w_tensor *t;
    size_t n, cap;
    char **meta;     /* (2 * n_meta) key, value, ... in insertion order */
    size_t n_meta, meta_cap;
    size_t *slots;   /* open-addressing set of names: tensor index + 1, 0 = empty */
    size_t n_slots;  /* a power of two, at least 2 * n */
    w_state state;
    bool tmp_exists;
};

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    return p ? memcpy(p, s, n) : NULL;
}

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Slot holding `name`, or the empty slot where it would go. */
static size_t find_slot(const sq_st_writer *w, const char *name) {
    size_t mask = w->n_slots - 1, i = (size_t)hash_name(name) & mask;
    while (w->slots[i] && strcmp(w->t[w->slots[i] - 1].name, name) != 0) i = (i + 1) & mask;
    return i;
}

static bool grow_slots(sq_st_writer *w) {
    size_t n_slots = w->n_slots ? 2 * w->n_slots : 64;
    size_t *old = w->slots, old_n = w->n_slots;
    w->slots = calloc(n_slots, sizeof *w->slots);
    if (!w->slots) {
        w->slots = old;
        return false;
    }
    w->n_slots = n_slots;
    for (size_t i = 0; i < old_n; i++)
        if (old[i]) w->slots[find_slot(w, w->t[old[i] - 1].name)] = old[i];
    free(old);
    return true;
}

sq_status sq_st_writer_create(const char *path, sq_st_writer **out, sq_error *err) {
    if (out) *out = NULL;
    if (!path || !*path || !out)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "sq_st_writer_create: no path");
    sq_st_writer *w = calloc(1, sizeof *w);
    size_t n = strlen(path) + 32;
    if (!w || !(w->path = dup_str(path)) || !(w->tmp = malloc(n)) || !grow_slots(w)) {
        sq_st_writer_destroy(w);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    *out = w;
    return SQ_OK;
}

static sq_status add_tensor(sq_st_writer *w, const char *name, sq_dtype dtype, int n_dims,
                            const int64_t *shape, const void *data, uint64_t n_bytes,
                            sq_st_fill_fn fill, void *fill_user, sq_error *err) {
    if (!w) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "sq_st_writer_add: NULL writer");
    if (w->state != W_OPEN)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "writer is already finished");
    if (!name || strcmp(name, "__metadata__") == 0)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "not a valid tensor name");
    if ((unsigned)dtype >= SQ_DTYPE_COUNT)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "unknown dtype %d", (int)dtype);
    if (n_dims < 0 || n_dims > SQ_MAX_DIMS || (n_dims > 0 && !shape))
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name,
                            "%d dimensions (0..%d allowed)", n_dims, SQ_MAX_DIMS);
    uint64_t want = sq_dtype_size(dtype);
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0)
            return sq_error_set(err, SQ_ERR_INVALID, w->path, name,
                                "shape entry %d is negative (%" PRId64 ")", i, shape[i]);
        if (!sq_mul_u64(want, (uint64_t)shape[i], &want))
            return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "shape overflows 64 bits");
    }
    if (want != n_bytes)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name,
                            "%" PRIu64 " bytes given but the shape of %s needs %" PRIu64,
                            n_bytes, sq_dtype_name(dtype), want);
    if (n_bytes > 0 && !data && !fill)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "no data for %" PRIu64 " bytes",
                            n_bytes);
    if (!fill && n_bytes > SIZE_MAX)
        return sq_error_set(err, SQ_ERR_NOMEM, w->path, name, "too large for memory");
    if (w->slots[find_slot(w, name)])
        return sq_error_set(err, SQ_ERR_INVALID, w->path, name, "duplicate tensor name");
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        w_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return sq_error_set(err, SQ_ERR_NOMEM, w->path, name, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    if (2 * (w->n + 1) > w->n_slots && !grow_slots(w))
        return sq_error_set(err, SQ_ERR_NOMEM, w->path, name, "out of memory");
    w_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = dup_str(name);
    t->data = fill ? NULL : malloc(n_bytes ? (size_t)n_bytes : 1);
    t->fill = fill;
    t->fill_user = fill_user;
    if (!t->name || (!fill && !t->data)) {
        free(t->name);
        free(t->data);
        return sq_error_set(err, SQ_ERR_NOMEM, w->path, name,
                            "out of memory copying %" PRIu64 " bytes", n_bytes);
    }
    if (n_bytes && !fill) memcpy(t->data, data, (size_t)n_bytes);
    t->dtype = dtype;
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->n_bytes = n_bytes;
    w->n++;
    w->slots[find_slot(w, name)] = w->n;
    return SQ_OK;
}

sq_status sq_st_writer_add(sq_st_writer *w, const char *name, sq_dtype dtype, int n_dims,
                           const int64_t *shape, const void *data, uint64_t n_bytes,
                           sq_error *err) {
    return add_tensor(w, name, dtype, n_dims, shape, data, n_bytes, NULL, NULL, err);
}

sq_status sq_st_writer_add_fill(sq_st_writer *w, const char *name, sq_dtype dtype, int n_dims,
                                const int64_t *shape, uint64_t n_bytes, sq_st_fill_fn fill,
                                void *user, sq_error *err) {
    if (!fill) return sq_error_set(err, SQ_ERR_INVALID, w ? w->path : NULL, name, "no fill function");
    return add_tensor(w, name, dtype, n_dims, shape, NULL, n_bytes, fill, user, err);
}

sq_status sq_st_writer_metadata(sq_st_writer *w, const char *key, const char *value,
                                sq_error *err) {
    if (!w || !key || !value)
        return sq_error_set(err, SQ_ERR_INVALID, w ? w->path : NULL, NULL,
                            "sq_st_writer_metadata: NULL argument");
    if (w->state != W_OPEN)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, NULL, "writer is already finished");
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta[2 * i], key) == 0)
            return sq_error_set(err, SQ_ERR_INVALID, w->path, NULL,
                                "__metadata__ key \"%.128s\" given twice", key);
    if (w->n_meta == w->meta_cap) {
        size_t cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **m = realloc(w->meta, 2 * cap * sizeof *m);
        if (!m) return sq_error_set(err, SQ_ERR_NOMEM, w->path, NULL, "out of memory");
        w->meta = m;
        w->meta_cap = cap;
    }
    char *k = dup_str(key), *v = dup_str(value);
    if (!k || !v) {
        free(k);
        free(v);
        return sq_error_set(err, SQ_ERR_NOMEM, w->path, NULL, "out of memory");
    }
    w->meta[2 * w->n_meta] = k;
    w->meta[2 * w->n_meta + 1] = v;
    w->n_meta++;
    return SQ_OK;
}

static bool write_all(int fd, const void *buf, uint64_t n) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = write(fd, p, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        n -= (uint64_t)r;
    }
    return true;
}

/* Makes a rename durable: fsync the folder holding `path` (best effort). */
/* Writes a fill tensor's bytes, FILL_CHUNK at a time, from one reused buffer. */
static sq_status write_filled(int fd, const w_tensor *t, uint8_t **buf, const char *tmp,
                              sq_error *err) {
    if (t->n_bytes && !*buf && !(*buf = malloc((size_t)FILL_CHUNK)))
        return sq_error_set(err, SQ_ERR_NOMEM, tmp, t->name, "out of memory for the fill buffer");
    for (uint64_t at = 0; at < t->n_bytes; at += FILL_CHUNK) {
        uint64_t n = t->n_bytes - at < FILL_CHUNK ? t->n_bytes - at : FILL_CHUNK;
        sq_status st = t->fill(t->fill_user, *buf, at, n, err);
        if (st != SQ_OK) return st;
        if (!write_all(fd, *buf, n))
            return sq_error_set(err, SQ_ERR_IO, tmp, t->name, "write failed: %s", strerror(errno));
    }
    return SQ_OK;
}

static void sync_parent(const char *path) {
    char *copy = dup_str(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

static sq_status build_header(const sq_st_writer *w, sq_buf *b, sq_error *err) {
    SQ_BUF_LIT(b, "{");
    if (w->n_meta) {
        SQ_BUF_LIT(b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i) SQ_BUF_LIT(b, ",");
            sq_buf_json_str(b, w->meta[2 * i], strlen(w->meta[2 * i]));
            SQ_BUF_LIT(b, ":");
            sq_buf_json_str(b, w->meta[2 * i + 1], strlen(w->meta[2 * i + 1]));
        }
        SQ_BUF_LIT(b, "}");
    }
    uint64_t at = 0;
    for (size_t i = 0; i < w->n; i++) {
        const w_tensor *t = &w->t[i];
        if (i || w->n_meta) SQ_BUF_LIT(b, ",");
        sq_buf_json_str(b, t->name, strlen(t->name));
        sq_buf_addf(b, ":{\"dtype\":\"%s\",\"shape\":[", sq_dtype_name(t->dtype));
        for (int d = 0; d < t->n_dims; d++) sq_buf_addf(b, "%s%" PRId64, d ? "," : "", t->shape[d]);
        uint64_t end;
        if (!sq_add_u64(at, t->n_bytes, &end) || (double)end > ST_MAX_JSON_INT)
            return sq_error_set(err, SQ_ERR_INVALID, w->path, t->name,
                                "data offsets pass 2^53 bytes");
        sq_buf_addf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", at, end);
        at = end;
    }
    SQ_BUF_LIT(b, "}");
    while (b->n % 8) SQ_BUF_LIT(b, " ");
    if (b->oom) return sq_error_set(err, SQ_ERR_NOMEM, w->path, NULL, "out of memory for the header");
    if (b->n > SQ_ST_MAX_HEADER_BYTES)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, NULL,
                            "header would be %zu bytes, over the 100 MB limit", b->n);
    return SQ_OK;
}

sq_status sq_st_writer_finish(sq_st_writer *w, bool rename_now, sq_error *err) {
    if (!w) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "sq_st_writer_finish: NULL writer");
    if (w->state != W_OPEN)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, NULL, "writer is already finished");
    sq_buf b = {0};
    sq_status st = build_header(w, &b, err);
    int fd = -1;
    if (st != SQ_OK) goto fail;
    fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = sq_error_set(err, SQ_ERR_IO, w->tmp, NULL, "cannot create: %s", strerror(errno));
        goto fail;
    }
    w->tmp_exists = true;
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)b.n >> (8 * i));
    bool ok = write_all(fd, len, 8) && write_all(fd, b.p, b.n);
    uint8_t *fbuf = NULL;
    for (size_t i = 0; ok && i < w->n; i++) {
        if (w->t[i].fill) {
            st = write_filled(fd, &w->t[i], &fbuf, w->tmp, err);
            if (st != SQ_OK) {
                free(fbuf);
                goto fail;
            }
            continue;
        }
        ok = write_all(fd, w->t[i].data, w->t[i].n_bytes);
        free(w->t[i].data); /* written: give the memory back now */
        w->t[i].data = NULL;
    }
    free(fbuf);
    if (!ok || fsync(fd) != 0) {
        st = sq_error_set(err, SQ_ERR_IO, w->tmp, NULL, "write failed: %s", strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        st = sq_error_set(err, SQ_ERR_IO, w->tmp, NULL, "close failed: %s", strerror(errno));
        goto fail;
    }
    fd = -1;
    free(b.p);
    w->state = W_WRITTEN;
    return rename_now ? sq_st_writer_commit(w, err) : SQ_OK;
fail:
    if (fd >= 0) close(fd);
    if (w->tmp_exists) unlink(w->tmp);
    w->tmp_exists = false;
    w->state = W_FAILED;
    free(b.p);
    return st;
}

sq_status sq_st_writer_commit(sq_st_writer *w, sq_error *err) {
    if (!w) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "sq_st_writer_commit: NULL writer");
    if (w->state != W_WRITTEN)
        return sq_error_set(err, SQ_ERR_INVALID, w->path, NULL, "%s",
                            w->state == W_OPEN   ? "commit before finish"
                            : w->state == W_DONE ? "already committed"
                                                 : "finish failed: nothing to commit");
    if (rename(w->tmp, w->path) != 0) {
        int e = errno;
        return sq_error_set(err, SQ_ERR_IO, w->path, NULL, "cannot rename %s to it: %s", w->tmp,
                            strerror(e));
    }
    w->tmp_exists = false;
    w->state = W_DONE;
    sync_parent(w->path);
    return SQ_OK;
}

void sq_st_writer_destroy(sq_st_writer *w) {
    if (!w) return;
    if (w->tmp_exists && w->tmp) unlink(w->tmp);
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (size_t i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    free(w->meta);
    free(w->t);
    free(w->slots);
    free(w->tmp);
    free(w->path);
    free(w);
}
