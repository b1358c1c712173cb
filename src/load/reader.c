/* Owns the loader's read-ahead thread: it walks a fixed list of read units (pieces of weights
 * to quantize, whole dense tensors) in order on file descriptors of its own, into a ring of
 * n_slots staging slots (pieces) or freshly malloc'd buffers (dense tensors; one larger than a
 * slot is deferred: only advised here, read by the loading thread's pool), while the loading
 * thread converts and quantizes the units already read.  A piece is mapped: a read-only window
 * populated by this thread with MADV_POPULATE_READ and given back when its slot is reused, so
 * the quantizer reads the page cache in place instead of a pread() copy of it, which cost as
 * much CPU as quantizing when the file is cached.  Pieces of 8 MiB and more are windows of one
 * mapping of the whole file (made once), given back with MADV_DONTNEED: mmap / munmap take the
 * address space for writing, and one pair per piece made the loading thread's allocations wait
 * behind them (0.1 s of a 2.5 s warm 8B load), where populate and MADV_DONTNEED only read it;
 * and 2 MiB folios of the page cache are mapped whole (populating a warm 8B checkpoint from
 * 4 KiB pages cost 0.4 s of CPU, from 2 MiB ones 0.03 s).  Smaller pieces get a mapping each,
 * exactly their pages, so a small staging budget bounds what is mapped.  Where mapping is off or
 * fails (a file system without mmap, a kernel without MADV_POPULATE_READ, a file shorter than
 * its header says) the piece is pread() into the slot's buffer as before, which also gives the
 * truncation error.  Also owns load_read_parallel, the pool's chunked read of a deferred dense
 * unit, and load_map_parallel, the same unit kept as a populated mapped window (dense_map).  Must never hold more than n_slots units read ahead or mapped, more than
 * one dense tensor larger than a slot, or let either thread wait for the other after a stop. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "load_impl.h"

typedef enum { SLOT_FREE = 0, SLOT_FILLED } slot_state;

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22   /* Linux 5.14 */
#endif

typedef struct slot {
    slot_state state;
    size_t unit;           /* the unit it holds when FILLED */
    uint8_t *buf;          /* (slot_bytes) the pread() buffer */
    uint8_t *data;         /* the unit's bytes when FILLED: buf, or into map */
    void *map;             /* the unit's mapped window (map_len bytes), NULL when read */
    size_t map_len;
    int map_file;          /* its file */
    bool map_own;          /* a mapping of its own (else a window of the file's) */
    void *dense;           /* a dense unit's own buffer, handed to the caller */
    sq_status rc;
    sq_error err;
} slot;

struct load_reader {
    const sq_ckpt *st;
    const load_unit *units;
    size_t n_units;
    int n_slots;
    uint64_t slot_bytes;
    slot *slots;
    int *fds;              /* (n_files) the reader's own, -1 before first use */
    size_t n_files;
    sq_trace *trace;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    int big_in_flight;     /* dense units larger than a slot read but not yet taken */
    size_t advised;        /* units [0, advised) have had their WILLNEED advice */
    bool use_map;          /* pieces are mapped (turned off for good by the first failure) */
    uint64_t page;
    uint64_t *file_size;   /* (n_files) at open, 0 before */
    uint8_t **fmap;        /* (n_files) the whole file, mapped on first use (whole_map) */
    bool whole_map;        /* pieces are windows of the file's mapping (slot_bytes >= 8 MiB) */
};

sq_status load_pread(int fd, const char *path, const char *name, uint64_t pos, uint64_t n,
                     uint64_t data_end, void *dst, sq_error *err) {
    uint64_t done = 0;
    while (done < n) {
        uint64_t want = n - done;
        if (want > (1u << 30)) want = 1u << 30;
        ssize_t got = pread(fd, (uint8_t *)dst + done, (size_t)want, (off_t)(pos + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return sq_error_set(err, SQ_ERR_IO, path, name, "read of %llu bytes at byte %llu "
                                "failed: %s", (unsigned long long)want,
                                (unsigned long long)(pos + done), strerror(errno));
        if (got == 0) {
            struct stat sb;
            long long size = fstat(fd, &sb) == 0 ? (long long)sb.st_size : -1;
            return sq_error_set(err, SQ_ERR_IO, path, name,
                                "file ends at byte %lld but the tensor's data runs to byte %llu "
                                "(truncated or replaced after its header was read)",
                                size, (unsigned long long)data_end);
        }
        done += (uint64_t)got;
    }
    return SQ_OK;
}

sq_status load_open_fd(const sq_ckpt *st, int *fds, size_t n_files, int file_index,
                       const char *tensor, int *fd, sq_error *err) {
    if (file_index < 0 || (size_t)file_index >= n_files)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, tensor, "bad file index %d", file_index);
    const char *path = sq_ckpt_file_path(st, (size_t)file_index);
    if (fds[file_index] < 0) {
        int f = open(path, O_RDONLY | O_CLOEXEC);
        if (f < 0)
            return sq_error_set(err, SQ_ERR_IO, path, tensor, "cannot open: %s", strerror(errno));
        struct stat sb;
        if (fstat(f, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            close(f);
            return sq_error_set(err, SQ_ERR_IO, path, tensor, "not a regular file any more");
        }
        posix_fadvise(f, 0, 0, POSIX_FADV_SEQUENTIAL);
        fds[file_index] = f;
    }
    *fd = fds[file_index];
    return SQ_OK;
}

/* Whether byte pos of fd is in the page cache (a one-byte read that must not wait for the disk).
 * The read-ahead advice is skipped for a unit whose first, middle and last bytes are: on a warm
 * load WILLNEED only walks the cache, at a cost that showed in the profile. */
static bool cached(int fd, uint64_t pos) {
#ifdef RWF_NOWAIT
    unsigned char b;
    struct iovec v = {.iov_base = &b, .iov_len = 1};
    return preadv2(fd, &v, 1, (off_t)pos, RWF_NOWAIT) == 1;
#else
    (void)fd, (void)pos;
    return false;
#endif
}

#define MAP_REGION ((uint64_t)2 << 20)     /* a PMD: what a 2 MiB folio is mapped in */
#define WHOLE_MAP_MIN (4 * MAP_REGION)       /* pieces from which files are mapped whole */
#define POPULATE_STEP ((size_t)4 << 20)      /* the address space is held this long at most */

/* Gives slot s's window back.  A mapping of its own is unmapped.  A window of the file's
 * mapping is given back with MADV_DONTNEED (the page cache keeps the pages), reaching out to
 * the 2 MiB boundaries around it, short of any other slot's window: the kernel maps more than
 * the window (fault-around, whole large folios), and so the last window given back in a 2 MiB
 * region takes all of it: what is mapped stays within the regions of the ring's windows. */
static void unmap_slot(load_reader *r, slot *s) {
    if (!s->map) return;
    if (s->map_own) {
        munmap(s->map, s->map_len);
    } else {
        uint8_t *base = r->fmap[s->map_file];
        const uint64_t a = (uint64_t)((uint8_t *)s->map - base), b = a + s->map_len;
        uint64_t lo = a - a % MAP_REGION, hi = b + (MAP_REGION - b % MAP_REGION) % MAP_REGION;
        if (hi > r->file_size[s->map_file]) hi = r->file_size[s->map_file];
        for (int k = 0; k < r->n_slots; k++) {
            const slot *o = &r->slots[k];
            if (o == s || !o->map || o->map_own || o->map_file != s->map_file) continue;
            const uint64_t oa = (uint64_t)((uint8_t *)o->map - base), ob = oa + o->map_len;
            if (oa < a && ob > lo) lo = ob;   /* ends in our lower region (or shares a page) */
            if (ob > b && oa < hi) hi = oa;   /* starts in our upper region */
        }
        lo += (r->page - lo % r->page) % r->page;   /* whole pages only */
        if (lo < hi) madvise(base + lo, (size_t)(hi - lo), MADV_DONTNEED);
    }
    s->map = NULL;
    s->map_len = 0;
}

/* The window [start, start + len) of file fd (size file_size) for the caller to populate:
 * the file's mapping (made and advised on first use) or a mapping of its own; NULL if mmap
 * fails. */
static uint8_t *window(load_reader *r, int file, int fd, uint64_t file_size, uint64_t start,
                       size_t len) {
    if (!r->whole_map) {
        void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)start);
        return p == MAP_FAILED ? NULL : p;
    }
    if (!r->fmap[file]) {
        void *p = mmap(NULL, (size_t)file_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return NULL;
        /* advice: a cold read fills the page cache in 2 MiB folios, mapped whole later */
        (void)madvise(p, (size_t)file_size, MADV_HUGEPAGE);
        r->fmap[file] = p;
    }
    return r->fmap[file] + start;
}

/* Maps piece un of file fd (size file_size) into s and populates it: true when s->data holds
 * its bytes.  False (nothing left mapped) when the piece runs past the end of the file or the
 * mapping or its population fails: the caller reads it instead. */
static bool map_unit(load_reader *r, const load_unit *un, int fd, uint64_t file_size, slot *s) {
    if (un->n == 0 || un->pos + un->n > file_size || file_size > SIZE_MAX) return false;
    const uint64_t start = un->pos - un->pos % r->page;
    const size_t len = (size_t)(un->pos + un->n - start);
    uint8_t *p = window(r, un->file_index, fd, file_size, start, len);
    if (!p) return false;
    s->map = p;
    s->map_len = len;
    s->map_file = un->file_index;
    s->map_own = !r->whole_map;
    for (size_t o = 0; o < len; o += POPULATE_STEP) {
        if (madvise(p + o, len - o < POPULATE_STEP ? len - o : POPULATE_STEP,
                    MADV_POPULATE_READ) != 0) {
            /* EINVAL: a kernel without it; EFAULT / EIO: the file shrank or cannot be read */
            unmap_slot(r, s);
            return false;
        }
    }
    s->data = p + (un->pos - start);
    return true;
}

/* Reads unit u into s (mapped, its slot buffer, or a new dense buffer). */
static void read_unit(load_reader *r, size_t u, slot *s) {
    const load_unit *un = &r->units[u];
    sq_error_init(&s->err, -1);
    s->dense = NULL;
    unmap_slot(r, s);   /* the window of the unit this slot held before */
    void *dst = s->buf;
    s->data = s->buf;
    if (un->dense && !un->deferred) {
        s->dense = load_alloc_dense(un->n);
        if (!s->dense) {
            s->rc = sq_error_set(&s->err, SQ_ERR_NOMEM, NULL, un->name,
                                 "out of memory for %llu bytes", (unsigned long long)un->n);
            return;
        }
        dst = s->dense;
    }
    int fd = -1;
    s->rc = load_open_fd(r->st, r->fds, r->n_files, un->file_index, un->name, &fd, &s->err);
    if (s->rc != SQ_OK) return;
    /* ask the kernel for the units up to a ring's worth ahead: the disk always has that
     * much queued while this read and the quantizer work (a deferred unit: itself too).  Not
     * for windows of a whole-file mapping: the advice reads into 4 KiB folios, where
     * populating the window (advised MADV_HUGEPAGE) reads into 2 MiB ones, which every later
     * warm load then maps whole (4 KiB ones cost it 0.4 s of CPU on the 8B shape); the reader
     * populating the ring's windows one after the other keeps the disk as busy */
    const size_t from = u + (un->deferred ? 0 : 1);
    for (size_t v = r->advised > from ? r->advised : from;
         v < r->n_units && v <= u + (size_t)r->n_slots; v++) {
        const load_unit *nx = &r->units[v];
        int nfd = -1;
        sq_error ignored;
        if (!(r->whole_map && r->use_map && !nx->dense) &&
            load_open_fd(r->st, r->fds, r->n_files, nx->file_index, nx->name, &nfd, &ignored) == SQ_OK &&
            !(cached(nfd, nx->pos) && cached(nfd, nx->pos + nx->n / 2) && cached(nfd, nx->pos + nx->n - 1)))
            posix_fadvise(nfd, (off_t)nx->pos, (off_t)nx->n, POSIX_FADV_WILLNEED);
        r->advised = v + 1;
    }
    if (un->deferred) {   /* the loading thread reads it (load.c) */
        s->rc = SQ_OK;
        return;
    }
    double t0 = sq_trace_begin(r->trace);
    if (!un->dense && r->use_map) {
        if (!r->file_size[un->file_index]) {
            struct stat sb;
            r->file_size[un->file_index] = fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        }
        if (map_unit(r, un, fd, r->file_size[un->file_index], s)) {
            s->rc = SQ_OK;
            sq_trace_end_ex(r->trace, LOAD_TRACK_READER, "read", t0, un->name, (int64_t)un->n);
            return;
        }
        if (un->pos + un->n <= r->file_size[un->file_index]) r->use_map = false;
    }
    s->rc = load_pread(fd, sq_ckpt_file_path(r->st, (size_t)un->file_index), un->name, un->pos,
                       un->n, un->data_end, dst, &s->err);
    sq_trace_end_ex(r->trace, LOAD_TRACK_READER, "read", t0, un->name, (int64_t)un->n);
}

static void *reader_main(void *arg) {
    load_reader *r = arg;
    for (size_t u = 0; u < r->n_units; u++) {
        slot *s = &r->slots[u % (size_t)r->n_slots];
        const bool big = r->units[u].dense && !r->units[u].deferred && r->units[u].n > r->slot_bytes;
        pthread_mutex_lock(&r->mu);
        while (!r->stop && (s->state != SLOT_FREE || (big && r->big_in_flight > 0)))
            pthread_cond_wait(&r->cv, &r->mu);
        bool stop = r->stop;
        if (big && !stop) r->big_in_flight++;
        pthread_mutex_unlock(&r->mu);
        if (stop) break;
        read_unit(r, u, s);
        pthread_mutex_lock(&r->mu);
        s->unit = u;
        s->state = SLOT_FILLED;
        pthread_cond_broadcast(&r->cv);
        bool failed = s->rc != SQ_OK;
        pthread_mutex_unlock(&r->mu);
        if (failed) break;   /* the consumer stops at this unit */
    }
    return NULL;
}

sq_status load_reader_start(const sq_ckpt *st, const load_unit *units, size_t n_units,
                            int n_slots, uint64_t slot_bytes, bool map, sq_trace *trace,
                            load_reader **out, sq_error *err) {
    *out = NULL;
    load_reader *r = calloc(1, sizeof *r);
    if (!r) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the reader");
    r->st = st;
    r->units = units;
    r->n_units = n_units;
    r->n_slots = n_slots > 0 ? n_slots : 1;
    r->slot_bytes = slot_bytes;
    r->trace = trace;
    r->n_files = sq_ckpt_n_files(st);
    r->use_map = map;
    long page = sysconf(_SC_PAGESIZE);
    r->page = page > 0 ? (uint64_t)page : 4096;
    r->slots = calloc((size_t)r->n_slots, sizeof *r->slots);
    r->fds = malloc((r->n_files ? r->n_files : 1) * sizeof *r->fds);
    r->file_size = calloc(r->n_files ? r->n_files : 1, sizeof *r->file_size);
    r->fmap = calloc(r->n_files ? r->n_files : 1, sizeof *r->fmap);
    r->whole_map = slot_bytes >= WHOLE_MAP_MIN;
    bool ok = r->slots && r->fds && r->file_size && r->fmap;
    for (size_t i = 0; ok && i < r->n_files; i++) r->fds[i] = -1;
    for (int i = 0; ok && slot_bytes && i < r->n_slots; i++)
        ok = (r->slots[i].buf = malloc((size_t)slot_bytes)) != NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (!ok) {
        load_reader_stop(r);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                            "out of memory for %d staging buffers of %llu bytes", n_slots,
                            (unsigned long long)slot_bytes);
    }
    if (n_units > 0) {
        if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
            load_reader_stop(r);
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "cannot start the reader thread");
        }
        r->started = true;
    }
    *out = r;
    return SQ_OK;
}

sq_status load_reader_get(load_reader *r, size_t u, uint8_t **buf, void **dense, sq_error *err) {
    *buf = NULL;
    *dense = NULL;
    if (!r || u >= r->n_units)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "reader: no unit %zu", u);
    slot *s = &r->slots[u % (size_t)r->n_slots];
    double t0 = sq_trace_begin(r->trace);
    pthread_mutex_lock(&r->mu);
    while (!(s->state == SLOT_FILLED && s->unit == u)) pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    if (r->trace && sq_trace_now_us() - t0 > 50)   /* only waits worth seeing */
        sq_trace_end_ex(r->trace, LOAD_TRACK_COMPUTE, "wait read", t0, r->units[u].name, -1);
    if (s->rc != SQ_OK) {
        if (err) {
            int rank = err->rank;
            *err = s->err;
            err->rank = rank;
        }
        return s->rc;
    }
    *buf = s->data;
    if (s->dense) {
        *dense = s->dense;
        s->dense = NULL;
        if (r->units[u].n > r->slot_bytes && !r->units[u].deferred) {
            pthread_mutex_lock(&r->mu);
            r->big_in_flight--;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
        }
    }
    return SQ_OK;
}

void load_reader_release(load_reader *r, size_t u) {
    slot *s = &r->slots[u % (size_t)r->n_slots];
    pthread_mutex_lock(&r->mu);
    s->state = SLOT_FREE;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void load_reader_stop(load_reader *r) {
    if (!r) return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
    }
    for (int i = 0; r->slots && i < r->n_slots; i++) {
        unmap_slot(r, &r->slots[i]);
        free(r->slots[i].buf);
        free(r->slots[i].dense);
    }
    for (size_t i = 0; r->fmap && i < r->n_files; i++)
        if (r->fmap[i]) munmap(r->fmap[i], (size_t)r->file_size[i]);
    free(r->fmap);
    free(r->file_size);
    for (size_t i = 0; r->fds && i < r->n_files; i++)
        if (r->fds[i] >= 0) close(r->fds[i]);
    free(r->fds);
    free(r->slots);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* ---- a large dense tensor, read by the pool straight into the buffer handed over ---- */

#define PAR_CHUNK_BYTES (8ull << 20)

typedef struct par_read {
    int fd;
    uint64_t pos, n;          /* the tensor's bytes in the file */
    uint64_t chunk;           /* bytes per task: PAR_CHUNK_BYTES, less for a small tensor */
    uint8_t *dst;
    unsigned char *failed;    /* (n_tasks) */
} par_read;

static void par_read_task(void *ctx, int64_t t, int thread) {
    (void)thread;
    const par_read *p = ctx;
    const uint64_t off = (uint64_t)t * p->chunk;
    const uint64_t m = p->n - off < p->chunk ? p->n - off : p->chunk;
    for (uint64_t done = 0; done < m;) {
        ssize_t got = pread(p->fd, p->dst + off + done, (size_t)(m - done), (off_t)(p->pos + off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            p->failed[t] = 1;
            return;
        }
        done += (uint64_t)got;
    }
}

/* The whole of w into *out (load_alloc_dense): chunks of up to PAR_CHUNK_BYTES over the pool, so a
 * dense tensor larger than a staging slot (embeddings, lm_head) is copied out of the page cache
 * by every thread at once instead of by the reader alone while the loading thread waits; a
 * failed chunk is read again on this thread for its error (a short file, an I/O error). */
sq_status load_read_parallel(const sq_ckpt *st, int fd, const sq_ckpt_tensor *w, const char *name,
                             sq_pool *pool, sq_trace *trace, void **out, sq_error *err) {
    sq_status rc = SQ_OK;
    /* at least 16 tasks (of 4 KiB or more) so that every thread gets some */
    uint64_t chunk = w->n_bytes / 16 < PAR_CHUNK_BYTES ? w->n_bytes / 16 : PAR_CHUNK_BYTES;
    chunk = chunk < 4096 ? 4096 : chunk - chunk % 4096;
    const int64_t n_tasks = (int64_t)sq_ceil_div_u64(w->n_bytes, chunk);
    uint8_t *dst = load_alloc_dense(w->n_bytes);
    unsigned char *failed = calloc((size_t)(n_tasks ? n_tasks : 1), 1);
    if (!dst || !failed) {
        free(dst);
        free(failed);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, name, "out of memory for %llu bytes",
                            (unsigned long long)w->n_bytes);
    }
    double t0 = sq_trace_begin(trace);
    par_read p = {.fd = fd, .pos = w->offset, .n = w->n_bytes, .chunk = chunk, .dst = dst,
                  .failed = failed};
    sq_pool_run(n_tasks > 1 ? pool : NULL, n_tasks, par_read_task, &p);
    for (int64_t t = 0; rc == SQ_OK && t < n_tasks; t++)
        if (failed[t]) {
            const uint64_t off = (uint64_t)t * chunk;
            const uint64_t m = w->n_bytes - off < chunk ? w->n_bytes - off : chunk;
            rc = load_pread(fd, sq_ckpt_file_path(st, (size_t)w->file_index), name,
                            w->offset + off, m, w->offset + w->n_bytes, dst + off, err);
        }
    sq_trace_end_ex(trace, LOAD_TRACK_COMPUTE, "read", t0, name, (int64_t)w->n_bytes);
    free(failed);
    if (rc != SQ_OK) {
        free(dst);
        return rc;
    }
    *out = dst;
    return SQ_OK;
}

/* ---- a large dense tensor kept as a mapped window of the page cache (dense_map) ---- */

typedef struct par_map {
    uint8_t *base;
    uint64_t len, chunk;
    unsigned char *failed;    /* (n_tasks) */
} par_map;

static void par_map_task(void *ctx, int64_t t, int thread) {
    (void)thread;
    const par_map *p = ctx;
    const uint64_t off = (uint64_t)t * p->chunk;
    const uint64_t m = p->len - off < p->chunk ? p->len - off : p->chunk;
    if (madvise(p->base + off, (size_t)m, MADV_POPULATE_READ) != 0) p->failed[t] = 1;
}

bool load_map_parallel(int fd, const sq_ckpt_tensor *w, sq_pool *pool, sq_trace *trace,
                       const char *name, void **data, void **map, uint64_t *map_len) {
    *data = *map = NULL;
    *map_len = 0;
    const size_t es = sq_dtype_size(w->dtype);
    long pg = sysconf(_SC_PAGESIZE);
    const uint64_t page = pg > 0 ? (uint64_t)pg : 4096;
    struct stat sb;
    if (w->n_bytes == 0 || es == 0 || w->offset % es != 0 || fstat(fd, &sb) != 0 || sb.st_size <= 0)
        return false;
    const uint64_t size = (uint64_t)sb.st_size;
    /* the tensor and its bytes up to the next multiple of 64 readable: within the file's pages
     * (the last one reads as zeros past the end of the file; a page beyond it would SIGBUS) */
    const uint64_t last = w->offset + ((w->n_bytes + 63) & ~UINT64_C(63)) - 1;
    if (w->offset + w->n_bytes > size || last / page > (size - 1) / page) return false;
    const uint64_t start = w->offset - w->offset % page;
    const uint64_t len = (last / page + 1) * page - start;
    double t0 = sq_trace_begin(trace);
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (p == MAP_FAILED) return false;
    uint64_t chunk = len / 16 < PAR_CHUNK_BYTES ? len / 16 : PAR_CHUNK_BYTES;
    chunk = chunk < page ? page : chunk - chunk % page;
    const int64_t n_tasks = (int64_t)sq_ceil_div_u64(len, chunk);
    unsigned char *failed = calloc((size_t)n_tasks, 1);
    bool ok = failed != NULL;
    if (ok) {
        par_map pm = {.base = p, .len = len, .chunk = chunk, .failed = failed};
        sq_pool_run(n_tasks > 1 ? pool : NULL, n_tasks, par_map_task, &pm);
        for (int64_t t = 0; ok && t < n_tasks; t++) ok = !failed[t];
    }
    free(failed);
    if (!ok) {   /* EINVAL: a kernel without MADV_POPULATE_READ; EFAULT / EIO: the file shrank */
        munmap(p, (size_t)len);
        return false;
    }
    sq_trace_end_ex(trace, LOAD_TRACK_COMPUTE, "map", t0, name, (int64_t)w->n_bytes);
    *map = p;
    *map_len = len;
    *data = (uint8_t *)p + (w->offset - start);
    return true;
}
