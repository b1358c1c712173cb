/* Owns opening checkpoints: one .safetensors file (open, mmap, validate through st_header) and
 * a model folder (model.safetensors.index.json with its shards, model.safetensors, or the only
 * *.safetensors), plus tensor lookup by name.
 * Must never read a tensor byte (callers fault pages in through the returned pointers), open a
 * path outside the model folder because an index says so, or read an index larger than the
 * header cap. */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_impl.h"

struct sq_st_file {
    char *path;
    const uint8_t *map;  /* the whole file, read-only; NULL when the file is empty */
    uint64_t size;
    st_header h;
};

struct sq_st_model {
    char *dir;
    size_t n_files;
    sq_st_file **files;              /* (n_files) */
    size_t n_tensors;
    const sq_tensor_info **tensors;  /* (n_tensors) file order, then header order */
    const sq_tensor_info **by_name;  /* (n_tensors) sorted by name */
    uint64_t data_bytes;
};

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    return p ? memcpy(p, s, n) : NULL;
}

/* "dir/name", malloc'd. */
static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t at = a;
    if (a == 0 || dir[a - 1] != '/') p[at++] = '/';
    memcpy(p + at, name, b + 1);
    return p;
}

/* ---- one file ------------------------------------------------------------------------- */

sq_status sq_st_file_open(const char *path, sq_st_file **out, sq_error *err) {
    if (out) *out = NULL;
    if (!path || !out)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "sq_st_file_open: NULL argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "%s",
                            S_ISDIR(sb.st_mode) ? "is a folder, not a safetensors file"
                                                : "not a regular file");
    }
    sq_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = dup_str(path))) {
        close(fd);
        free(f);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    f->size = (uint64_t)sb.st_size;
    if (f->size >= 8) {
        void *map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            sq_st_file_close(f);
            return sq_error_set(err, SQ_ERR_IO, path, NULL, "mmap of %" PRIu64 " bytes failed: %s",
                                (uint64_t)sb.st_size, strerror(e));
        }
        f->map = map;
    }
    close(fd); /* the mapping keeps the file */
    sq_status st = st_header_parse(f->map, f->map ? (size_t)f->size : 0, f->size, path, &f->h, err);
    if (st != SQ_OK) {
        sq_st_file_close(f);
        return st;
    }
    *out = f;
    return SQ_OK;
}

void sq_st_file_close(sq_st_file *f) {
    if (!f) return;
    if (f->map) munmap((void *)f->map, (size_t)f->size);
    st_header_free(&f->h);
    free(f->path);
    free(f);
}

const char *sq_st_file_path(const sq_st_file *f) { return f ? f->path : NULL; }
uint64_t sq_st_file_size(const sq_st_file *f) { return f ? f->size : 0; }
size_t sq_st_file_n_tensors(const sq_st_file *f) { return f ? f->h.n_tensors : 0; }

const sq_tensor_info *sq_st_file_tensor(const sq_st_file *f, size_t i) {
    return f && i < f->h.n_tensors ? &f->h.tensors[i] : NULL;
}

const sq_tensor_info *sq_st_file_find(const sq_st_file *f, const char *name) {
    return f ? st_header_find(&f->h, name) : NULL;
}

const char *sq_st_file_metadata(const sq_st_file *f, const char *key) {
    return f ? st_header_metadata(&f->h, key) : NULL;
}

static bool owns_info(const sq_st_file *f, const sq_tensor_info *t) {
    uintptr_t p = (uintptr_t)t, lo = (uintptr_t)f->h.tensors;
    return p >= lo && p < lo + f->h.n_tensors * sizeof *t && (p - lo) % sizeof *t == 0;
}

const void *sq_st_file_data(const sq_st_file *f, const sq_tensor_info *t) {
    if (!f || !t || !f->map || !owns_info(f, t)) return NULL;
    return f->map + t->offset; /* validated: offset + n_bytes <= size */
}

/* ---- a model folder ------------------------------------------------------------------- */

void sq_st_model_close(sq_st_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_files; i++) sq_st_file_close(m->files[i]);
    free(m->files);
    free(m->tensors);
    free(m->by_name);
    free(m->dir);
    free(m);
}

/* Sets file_index on every tensor, builds the flat and by-name lists, and rejects a tensor
 * name found in two files. */
static sq_status index_tensors(sq_st_model *m, sq_error *err) {
    size_t n = 0;
    for (size_t i = 0; i < m->n_files; i++) n += m->files[i]->h.n_tensors;
    m->tensors = calloc(n ? n : 1, sizeof *m->tensors);
    m->by_name = calloc(n ? n : 1, sizeof *m->by_name);
    if (!m->tensors || !m->by_name)
        return sq_error_set(err, SQ_ERR_NOMEM, m->dir, NULL, "out of memory for %zu tensors", n);
    size_t k = 0;
    for (size_t i = 0; i < m->n_files; i++) {
        st_header *h = &m->files[i]->h;
        for (size_t j = 0; j < h->n_tensors; j++, k++) {
            h->tensors[j].file_index = (int)i;
            m->tensors[k] = m->by_name[k] = &h->tensors[j];
            m->data_bytes += h->tensors[j].n_bytes;
        }
    }
    m->n_tensors = n;
    qsort(m->by_name, n, sizeof *m->by_name, st_cmp_info_name);
    for (size_t i = 1; i < n; i++) {
        const sq_tensor_info *a = m->by_name[i - 1], *b = m->by_name[i];
        if (strcmp(a->name, b->name) == 0) {
            if (a->file_index > b->file_index) {
                const sq_tensor_info *t = a;
                a = b;
                b = t;
            }
            return sq_error_set(err, SQ_ERR_FORMAT, m->files[b->file_index]->path, b->name,
                                "tensor is also in %s: a tensor may live in one file only",
                                m->files[a->file_index]->path);
        }
    }
    return SQ_OK;
}

static sq_status open_files(sq_st_model *m, char **names, size_t n, sq_error *err) {
    m->files = calloc(n, sizeof *m->files);
    if (!m->files) return sq_error_set(err, SQ_ERR_NOMEM, m->dir, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char *path = join_path(m->dir, names[i]);
        if (!path) return sq_error_set(err, SQ_ERR_NOMEM, m->dir, NULL, "out of memory");
        sq_status st = sq_st_file_open(path, &m->files[i], err);
        free(path);
        if (st != SQ_OK) return st;
        m->n_files = i + 1;
    }
    return SQ_OK;
}

/* Reads a small JSON file (capped at SQ_ST_MAX_HEADER_BYTES) and parses it. */
static sq_status read_json(const char *path, cJSON **out, sq_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "not a regular file");
    }
    if ((uint64_t)sb.st_size > SQ_ST_MAX_HEADER_BYTES) {
        close(fd);
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "%" PRIu64 " bytes, larger than the 100 MB limit for an index",
                            (uint64_t)sb.st_size);
    }
    size_t size = (size_t)sb.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "short read: %zu of %zu bytes", got, size);
    }
    buf[size] = '\0';
    const char *end = buf;
    *out = cJSON_ParseWithLengthOpts(buf, size, &end, 0);
    size_t at = end >= buf ? (size_t)(end - buf) : 0;
    free(buf);
    if (!*out)
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL,
                            "not valid JSON (parse error near byte %zu of %zu)", at, size);
    return SQ_OK;
}

typedef struct {
    const char *file, *tensor;
} map_entry;

static int cmp_entry_file(const void *a, const void *b) {
    const map_entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->tensor, y->tensor);
}

static int cmp_entry_tensor(const void *a, const void *b) {
    return strcmp(((const map_entry *)a)->tensor, ((const map_entry *)b)->tensor);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool plain_file_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static sq_status open_index(sq_st_model *m, const char *index_path, sq_error *err) {
    cJSON *root = NULL;
    map_entry *entries = NULL;
    char **files = NULL;
    size_t n = 0, n_files = 0;
    sq_status st = read_json(index_path, &root, err);
    if (st != SQ_OK) return st;
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        st = sq_error_set(err, SQ_ERR_FORMAT, index_path, NULL, "%s",
                          cJSON_IsObject(root) ? "has no \"weight_map\" object"
                                               : "is not a JSON object with a \"weight_map\"");
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) n++;
    if (n == 0) {
        st = sq_error_set(err, SQ_ERR_FORMAT, index_path, NULL, "weight_map is empty");
        goto done;
    }
    entries = calloc(n, sizeof *entries);
    files = calloc(n, sizeof *files);
    if (!entries || !files) {
        st = sq_error_set(err, SQ_ERR_NOMEM, index_path, NULL, "out of memory");
        goto done;
    }
    size_t k = 0;
    for (const cJSON *e = wm->child; e; e = e->next, k++) {
        if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
            st = sq_error_set(err, SQ_ERR_FORMAT, index_path, e->string,
                              "weight_map value is not the name of a file in the model folder");
            goto done;
        }
        entries[k] = (map_entry){e->valuestring, e->string};
    }
    qsort(entries, n, sizeof *entries, cmp_entry_tensor);
    for (k = 1; k < n; k++) {
        if (strcmp(entries[k - 1].tensor, entries[k].tensor) == 0) {
            st = sq_error_set(err, SQ_ERR_FORMAT, index_path, entries[k].tensor,
                              "tensor appears twice in weight_map");
            goto done;
        }
    }
    /* The shards, in name order, each checked to exist before any is opened. */
    qsort(entries, n, sizeof *entries, cmp_entry_file);
    for (k = 0; k < n; k++) {
        if (k > 0 && strcmp(entries[k - 1].file, entries[k].file) == 0) continue;
        files[n_files++] = (char *)entries[k].file;
        char *path = join_path(m->dir, entries[k].file);
        struct stat sb;
        int rc = path ? stat(path, &sb) : -1;
        int e = errno;
        if (rc != 0 || !S_ISREG(sb.st_mode)) {
            st = sq_error_set(err, SQ_ERR_IO, index_path, entries[k].tensor,
                              "weight_map names file '%.200s', which %s (%.300s)", entries[k].file,
                              rc != 0 && e == ENOENT ? "does not exist"
                              : rc != 0              ? "cannot be read"
                                                     : "is not a regular file",
                              path ? path : "?");
            free(path);
            goto done;
        }
        free(path);
    }
    st = open_files(m, files, n_files, err);
    if (st != SQ_OK) goto done;
    /* Every tensor the index names must be in the file it names. */
    for (k = 0; k < n; k++) {
        char **hit = bsearch(&entries[k].file, files, n_files, sizeof *files, cmp_str_ptr);
        SQ_ASSERT(hit);
        const sq_st_file *f = m->files[hit - files];
        if (!st_header_find(&f->h, entries[k].tensor)) {
            st = sq_error_set(err, SQ_ERR_FORMAT, index_path, entries[k].tensor,
                              "weight_map puts the tensor in %s, which has no such tensor",
                              f->path);
            goto done;
        }
    }
    st = index_tensors(m, err);
done:
    free(files);
    free(entries);
    cJSON_Delete(root);
    return st;
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && strcmp(s + a - b, suffix) == 0;
}

/* No index and no model.safetensors: the folder's only *.safetensors. */
static sq_status open_only_file(sq_st_model *m, sq_error *err) {
    DIR *d = opendir(m->dir);
    if (!d) return sq_error_set(err, SQ_ERR_IO, m->dir, NULL, "cannot list: %s", strerror(errno));
    char *found[3] = {NULL, NULL, NULL};
    size_t n = 0;
    sq_status st = SQ_OK;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!has_suffix(e->d_name, ".safetensors")) continue;
        if (n < 3 && !(found[n] = dup_str(e->d_name))) {
            st = sq_error_set(err, SQ_ERR_NOMEM, m->dir, NULL, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (st == SQ_OK && n == 0)
        st = sq_error_set(err, SQ_ERR_IO, m->dir, NULL,
                          "no model.safetensors.index.json, model.safetensors or other "
                          "*.safetensors file in the folder");
    else if (st == SQ_OK && n > 1)
        st = sq_error_set(err, SQ_ERR_FORMAT, m->dir, NULL,
                          "%zu *.safetensors files (%s, %s%s) and no model.safetensors.index.json "
                          "to say which tensor is where", n, found[0], found[1],
                          n > 2 ? ", ..." : "");
    if (st == SQ_OK) st = open_files(m, found, 1, err);
    if (st == SQ_OK) st = index_tensors(m, err);
    for (size_t i = 0; i < 3; i++) free(found[i]);
    return st;
}

sq_status sq_st_model_open(const char *dir, sq_st_model **out, sq_error *err) {
    if (out) *out = NULL;
    if (!dir || !out)
        return sq_error_set(err, SQ_ERR_INVALID, dir, NULL, "sq_st_model_open: NULL argument");
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return sq_error_set(err, SQ_ERR_IO, dir, NULL, "cannot open model folder: %s",
                            strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return sq_error_set(err, SQ_ERR_INVALID, dir, NULL, "not a folder (a model is a folder "
                            "with config.json and *.safetensors)");
    sq_st_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = dup_str(dir))) {
        free(m);
        return sq_error_set(err, SQ_ERR_NOMEM, dir, NULL, "out of memory");
    }
    sq_status st;
    char *index = join_path(dir, "model.safetensors.index.json");
    char *single = join_path(dir, "model.safetensors");
    if (!index || !single) {
        st = sq_error_set(err, SQ_ERR_NOMEM, dir, NULL, "out of memory");
    } else if (stat(index, &sb) == 0) {
        st = open_index(m, index, err);
    } else if (stat(single, &sb) == 0) {
        char *name = "model.safetensors";
        st = open_files(m, &name, 1, err);
        if (st == SQ_OK) st = index_tensors(m, err);
    } else {
        st = open_only_file(m, err);
    }
    free(index);
    free(single);
    if (st != SQ_OK) {
        sq_st_model_close(m);
        return st;
    }
    *out = m;
    return SQ_OK;
}

size_t sq_st_model_n_files(const sq_st_model *m) { return m ? m->n_files : 0; }

const char *sq_st_model_file_path(const sq_st_model *m, size_t i) {
    return m && i < m->n_files ? m->files[i]->path : NULL;
}

const sq_st_file *sq_st_model_file(const sq_st_model *m, size_t i) {
    return m && i < m->n_files ? m->files[i] : NULL;
}

size_t sq_st_model_n_tensors(const sq_st_model *m) { return m ? m->n_tensors : 0; }

const sq_tensor_info *sq_st_model_tensor(const sq_st_model *m, size_t i) {
    return m && i < m->n_tensors ? m->tensors[i] : NULL;
}

const sq_tensor_info *sq_st_model_find(const sq_st_model *m, const char *name) {
    if (!m || !name || m->n_tensors == 0) return NULL;
    const sq_tensor_info **hit =
        bsearch(name, m->by_name, m->n_tensors, sizeof *m->by_name, st_cmp_key_info_name);
    return hit ? *hit : NULL;
}

const void *sq_st_model_data(const sq_st_model *m, const sq_tensor_info *t) {
    if (!m || !t || t->file_index < 0 || (size_t)t->file_index >= m->n_files) return NULL;
    return sq_st_file_data(m->files[t->file_index], t);
}

uint64_t sq_st_model_data_bytes(const sq_st_model *m) { return m ? m->data_bytes : 0; }
