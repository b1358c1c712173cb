/* Owns the checkpoint handle: opening a model path as a safetensors folder or a GGUF file, the
 * tensor list both share (HF names, sorted for lookup), the safetensors implementation (a thin
 * view over sq_st_model + config.json + tokenizer.json), and restoring llama.cpp's Q / K row
 * order.  Must never read tensor bytes at open or print. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_impl.h"

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    return p ? memcpy(p, s, n) : NULL;
}

bool sq_ckpt_is_gguf(const char *path) {
    struct stat sb;
    if (!path || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char m[4];
    bool yes = read(fd, m, 4) == 4 && !memcmp(m, "GGUF", 4);
    close(fd);
    return yes;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(sq_ckpt_tensor *const *)a)->name, (*(sq_ckpt_tensor *const *)b)->name);
}

/* Sorts the lookup table; a name found twice (two GGUF names mapping to one) is an error. */
static sq_status index_names(sq_ckpt *ck, sq_error *err) {
    ck->by_name = malloc((ck->n_tensors ? ck->n_tensors : 1) * sizeof *ck->by_name);
    if (!ck->by_name) return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    ck->data_bytes = 0;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        ck->by_name[i] = &ck->tensors[i];
        ck->data_bytes += ck->tensors[i].n_bytes;
    }
    qsort(ck->by_name, ck->n_tensors, sizeof *ck->by_name, cmp_name);
    for (size_t i = 1; i < ck->n_tensors; i++)
        if (!strcmp(ck->by_name[i - 1]->name, ck->by_name[i]->name))
            return sq_error_set(err, SQ_ERR_FORMAT, ck->path, ck->by_name[i]->stored_name,
                                "two tensors are both '%s'", ck->by_name[i]->name);
    return SQ_OK;
}

static sq_status open_st(sq_ckpt *ck, sq_error *err) {
    sq_status s = sq_st_model_open(ck->path, &ck->st, err);
    if (s != SQ_OK) return s;
    ck->n_files = sq_st_model_n_files(ck->st);
    ck->n_tensors = sq_st_model_n_tensors(ck->st);
    ck->files = calloc(ck->n_files ? ck->n_files : 1, sizeof *ck->files);
    ck->tensors = calloc(ck->n_tensors ? ck->n_tensors : 1, sizeof *ck->tensors);
    ck->st_src = calloc(ck->n_tensors ? ck->n_tensors : 1, sizeof *ck->st_src);
    if (!ck->files || !ck->tensors || !ck->st_src)
        return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    for (size_t i = 0; i < ck->n_files; i++)
        if (!(ck->files[i] = dup_str(sq_st_model_file_path(ck->st, i))))
            return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const sq_tensor_info *w = sq_st_model_tensor(ck->st, i);
        sq_ckpt_tensor *t = &ck->tensors[i];
        ck->st_src[i] = w;
        t->name = t->stored_name = w->name;
        t->dtype = w->dtype;
        t->ggml_type = -1;
        t->n_dims = w->n_dims;
        memcpy(t->shape, w->shape, sizeof t->shape);
        t->n_elements = w->n_elements;
        t->offset = w->offset;
        t->n_bytes = w->n_bytes;
        t->file_index = w->file_index;
        t->rope_heads = 0;
    }
    return SQ_OK;
}

static sq_status open_gguf(sq_ckpt *ck, sq_error *err) {
    int fd = open(ck->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sq_error_set(err, SQ_ERR_IO, ck->path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return sq_error_set(err, SQ_ERR_IO, ck->path, NULL, "not a regular file");
    }
    ck->map_bytes = (uint64_t)sb.st_size;
    if (ck->map_bytes > 0) {
        void *m = mmap(NULL, (size_t)ck->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            return sq_error_set(err, SQ_ERR_IO, ck->path, NULL, "mmap failed: %s", strerror(errno));
        }
        ck->map = m;
    }
    close(fd);
    ck->n_files = 1;
    ck->files = calloc(1, sizeof *ck->files);
    if (!ck->files || !(ck->files[0] = dup_str(ck->path)))
        return sq_error_set(err, SQ_ERR_NOMEM, ck->path, NULL, "out of memory");
    static const uint8_t empty[1];
    sq_status s = gguf_parse(ck->map ? ck->map : empty, ck->map_bytes, ck->map_bytes, ck->path,
                             &ck->g, err);
    if (s == SQ_OK) s = ckpt_gguf_open(ck, err);
    return s;
}

sq_status sq_ckpt_open(const char *path, sq_ckpt **out, sq_error *err) {
    if (out) *out = NULL;
    if (!path || !out)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "sq_ckpt_open: NULL argument");
    sq_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = dup_str(path))) {
        free(ck);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    struct stat sb;
    bool is_file = stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
    ck->format = is_file ? SQ_CKPT_GGUF : SQ_CKPT_SAFETENSORS;
    sq_status s = is_file ? open_gguf(ck, err) : open_st(ck, err);
    if (s == SQ_OK) s = index_names(ck, err);
    if (s != SQ_OK) {
        sq_ckpt_close(ck);
        return s;
    }
    *out = ck;
    return SQ_OK;
}

void sq_ckpt_close(sq_ckpt *ck) {
    if (!ck) return;
    sq_st_model_close(ck->st);
    if (ck->map) munmap((void *)ck->map, (size_t)ck->map_bytes);
    gguf_free(&ck->g);
    for (size_t i = 0; ck->names && i < ck->n_tensors; i++) free(ck->names[i]);
    free(ck->names);
    for (size_t i = 0; ck->files && i < ck->n_files; i++) free(ck->files[i]);
    free(ck->files);
    free(ck->tensors);
    free(ck->by_name);
    free(ck->st_src);
    free(ck->path);
    free(ck);
}

sq_ckpt_format sq_ckpt_format_of(const sq_ckpt *ck) { return ck->format; }
const char *sq_ckpt_path(const sq_ckpt *ck) { return ck->path; }
size_t sq_ckpt_n_files(const sq_ckpt *ck) { return ck->n_files; }
const char *sq_ckpt_file_path(const sq_ckpt *ck, size_t i) {
    return i < ck->n_files ? ck->files[i] : NULL;
}
size_t sq_ckpt_n_tensors(const sq_ckpt *ck) { return ck->n_tensors; }
const sq_ckpt_tensor *sq_ckpt_tensor_at(const sq_ckpt *ck, size_t i) {
    return i < ck->n_tensors ? &ck->tensors[i] : NULL;
}
uint64_t sq_ckpt_data_bytes(const sq_ckpt *ck) { return ck->data_bytes; }

const sq_ckpt_tensor *sq_ckpt_find(const sq_ckpt *ck, const char *name) {
    size_t lo = 0, hi = ck->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->by_name[mid]->name, name);
        if (c == 0) return ck->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const void *sq_ckpt_data(const sq_ckpt *ck, const sq_ckpt_tensor *t) {
    if (!t || t < ck->tensors || t >= ck->tensors + ck->n_tensors) return NULL;
    if (ck->st) return sq_st_model_data(ck->st, ck->st_src[t - ck->tensors]);
    return ck->map ? ck->map + t->offset : NULL;
}

sq_status sq_ckpt_config(const sq_ckpt *ck, sq_model_config *out, sq_error *err) {
    if (ck->format == SQ_CKPT_GGUF) return ckpt_gguf_config(ck, out, err);
    return sq_config_load(ck->path, out, err);
}

sq_status sq_ckpt_tokenizer(const sq_ckpt *ck, sq_tokenizer **out, bool *found, sq_error *err) {
    *out = NULL;
    if (found) *found = false;
    if (ck->format == SQ_CKPT_GGUF) return ckpt_gguf_tokenizer(ck, out, found, err);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/tokenizer.json", ck->path) >= (int)sizeof path)
        return sq_error_set(err, SQ_ERR_INVALID, ck->path, NULL, "path too long");
    if (access(path, F_OK) != 0) return SQ_OK;
    if (found) *found = true;
    return sq_tokenizer_load(path, out, err);
}

int sq_ckpt_chat_family(const sq_ckpt *ck) {
    return ck->format == SQ_CKPT_GGUF ? ckpt_gguf_chat_family(ck) : -1;
}

bool sq_ckpt_chat_default_system(const sq_ckpt *ck, char *buf, size_t buf_bytes) {
    return ck->format == SQ_CKPT_GGUF && ckpt_gguf_chat_default_system(ck, buf, buf_bytes);
}

sq_status sq_ckpt_unpermute_rows(const sq_ckpt_tensor *t, void *data, uint64_t row_bytes,
                                 sq_error *err) {
    if (t->rope_heads <= 0) return SQ_OK;
    const uint64_t rows = (uint64_t)t->shape[0], heads = (uint64_t)t->rope_heads;
    if (rows % heads || (rows / heads) % 2)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, t->name,
                            "%llu rows do not split into %llu heads of even size",
                            (unsigned long long)rows, (unsigned long long)heads);
    const uint64_t hd = rows / heads, half = hd / 2;
    uint8_t *tmp = malloc((size_t)(hd * row_bytes));
    if (!tmp) return sq_error_set(err, SQ_ERR_NOMEM, NULL, t->name, "out of memory");
    uint8_t *d = data;
    for (uint64_t h = 0; h < heads; h++) {
        uint8_t *head = d + h * hd * row_bytes;
        /* file row 2i + j holds HF row j * half + i */
        for (uint64_t i = 0; i < half; i++)
            for (uint64_t j = 0; j < 2; j++)
                memcpy(tmp + (j * half + i) * row_bytes, head + (2 * i + j) * row_bytes,
                       (size_t)row_bytes);
        memcpy(head, tmp, (size_t)(hd * row_bytes));
    }
    free(tmp);
    return SQ_OK;
}
