/* Owns the skeleton's flat byte form (serialize, deserialize, FNV-1a hash) and its broadcast
 * from one rank to all.  Layout: see meta.h; every field is written explicitly, little-endian,
 * so the bytes (and the hash) do not depend on struct padding or the host.
 * Must never trust a byte it reads: every count is checked against what the config implies
 * before it is used, and nothing is allocated by a length taken from the buffer. */
#include "meta_impl.h"

#include <stdlib.h>
#include <string.h>

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
static const uint8_t k_magic[8] = {'S', 'Q', 'M', 'E', 'T', 'A', 0, 0};

static uint64_t fnv_update(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

uint64_t sq_hash_fnv1a64(const void *data, size_t n) {
    return fnv_update(FNV_OFFSET, data, n);
}

/* ---- writing: one pass counts, hashes, and (when buf is set) stores ------------------------ */

typedef struct writer {
    uint8_t *buf;   /* NULL: count and hash only */
    size_t pos;
    uint64_t h;
} writer;

static void put(writer *w, const void *p, size_t n) {
    if (w->buf) memcpy(w->buf + w->pos, p, n);
    w->h = fnv_update(w->h, p, n);
    w->pos += n;
}
static void put_u8(writer *w, unsigned v) {
    uint8_t b = (uint8_t)v;
    put(w, &b, 1);
}
static void put_u32(writer *w, uint32_t v) {
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, 4);
}
static void put_u64(writer *w, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, 8);
}
static void put_i64(writer *w, int64_t v) { put_u64(w, (uint64_t)v); }
static void put_f64(writer *w, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    put_u64(w, u);
}

static void put_config(writer *w, const sq_model_config *c) {
    put_u32(w, (uint32_t)c->arch);
    put(w, c->architecture, sizeof c->architecture);
    put_i64(w, c->hidden_size);
    put_i64(w, c->intermediate_size);
    put_i64(w, c->n_layers);
    put_i64(w, c->n_heads);
    put_i64(w, c->n_kv_heads);
    put_i64(w, c->head_dim);
    put_i64(w, c->vocab_size);
    put_f64(w, c->rms_norm_eps);
    put_f64(w, c->rope_theta);
    put_u32(w, (uint32_t)c->rope_scaling.kind);
    put_f64(w, c->rope_scaling.factor);
    put_f64(w, c->rope_scaling.low_freq_factor);
    put_f64(w, c->rope_scaling.high_freq_factor);
    put_i64(w, c->rope_scaling.original_max_position_embeddings);
    put_i64(w, c->max_position_embeddings);
    put_u8(w, c->tie_word_embeddings);
    put_u8(w, c->attention_bias);
    put_u32(w, (uint32_t)c->torch_dtype);
    put_i64(w, c->bos_token_id);
    put_u32(w, (uint32_t)c->n_eos);
    for (int i = 0; i < SQ_MAX_EOS_IDS; i++) put_i64(w, c->eos_token_ids[i]);
    put_i64(w, c->sliding_window);
    put_u8(w, c->bnb_4bit);
    put_u8(w, c->bnb_8bit);
    put(w, c->bnb_quant_type, sizeof c->bnb_quant_type);
    put_u8(w, c->bnb_double_quant);
    put(w, c->bnb_compute_dtype, sizeof c->bnb_compute_dtype);
}

/* Everything before the trailer.  total = the whole buffer's length (known from a count pass). */
static void put_body(writer *w, const sq_meta *m, uint32_t total) {
    put(w, k_magic, sizeof k_magic);
    put_u32(w, SQ_META_FORMAT_VERSION);
    put_u32(w, total);
    put_config(w, &m->cfg);
    put_u32(w, (uint32_t)m->n_modules);
    put_u32(w, (uint32_t)m->n_tensors);
    for (int i = 0; i < m->n_modules; i++) {
        const sq_module_spec *md = &m->modules[i];
        put(w, md->name, sizeof md->name);
        put_u32(w, (uint32_t)md->kind);
        put_i64(w, md->layer);
        put_u32(w, (uint32_t)md->first_tensor);
        put_u32(w, (uint32_t)md->n_tensors);
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const sq_tensor_spec *t = &m->tensors[i];
        put(w, t->name, sizeof t->name);
        put_u32(w, (uint32_t)t->role);
        put_u32(w, (uint32_t)t->module);
        put_i64(w, t->layer);
        put_u32(w, (uint32_t)t->n_dims);
        put_i64(w, t->shape[0]);
        put_i64(w, t->shape[1]);
        put_u64(w, t->n_elements);
        put_u32(w, (uint32_t)t->dtype);
        put_u8(w, t->quantizable);
        put_u32(w, (uint32_t)t->stored_quant);
        put_u8(w, t->stored_double_quant);
        put_i64(w, t->stored_blocksize);
        put_u32(w, (uint32_t)t->stored_ggml);
        put_u64(w, t->stored_bytes);
    }
}

static size_t body_bytes(const sq_meta *m) {
    writer w = {.buf = NULL, .pos = 0, .h = FNV_OFFSET};
    put_body(&w, m, 0);
    return w.pos;
}

sq_status meta_rehash(sq_meta *m, sq_error *err) {
    size_t n = body_bytes(m);
    if (n + 8 > SQ_META_MAX_BYTES)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "skeleton of %zu bytes is too large",
                            n + 8);
    writer w = {.buf = NULL, .pos = 0, .h = FNV_OFFSET};
    put_body(&w, m, (uint32_t)(n + 8));
    m->hash = w.h;
    return SQ_OK;
}

uint64_t sq_meta_hash(const sq_meta *m) { return m->hash; }

sq_status sq_meta_serialize(const sq_meta *m, uint8_t **buf, size_t *buf_bytes, sq_error *err) {
    *buf = NULL;
    *buf_bytes = 0;
    size_t total = body_bytes(m) + 8;
    if (total > SQ_META_MAX_BYTES)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "skeleton of %zu bytes is too large",
                            total);
    uint8_t *b = malloc(total);
    if (!b) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory serializing the skeleton");
    writer w = {.buf = b, .pos = 0, .h = FNV_OFFSET};
    put_body(&w, m, (uint32_t)total);
    uint64_t h = w.h;
    put_u64(&w, h);
    SQ_ASSERT(w.pos == total && h == m->hash);
    *buf = b;
    *buf_bytes = total;
    return SQ_OK;
}

/* ---- reading: bounds-checked; the first short read makes every later one fail ------------- */

typedef struct reader {
    const uint8_t *p;
    size_t n, pos;
    bool bad;
} reader;

static const uint8_t *take(reader *r, size_t n) {
    if (r->bad || n > r->n - r->pos) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->pos;
    r->pos += n;
    return p;
}
static void get(reader *r, void *dst, size_t n) {
    const uint8_t *p = take(r, n);
    if (p) memcpy(dst, p, n);
    else memset(dst, 0, n);
}
static uint64_t get_uint(reader *r, int bytes) {
    const uint8_t *p = take(r, (size_t)bytes);
    uint64_t v = 0;
    if (p)
        for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static uint32_t get_u32(reader *r) { return (uint32_t)get_uint(r, 4); }
static uint64_t get_u64(reader *r) { return get_uint(r, 8); }
static int64_t get_i64(reader *r) { return (int64_t)get_uint(r, 8); }
static double get_f64(reader *r) {
    uint64_t u = get_u64(r);
    double d;
    memcpy(&d, &u, 8);
    return d;
}
/* A 0/1 byte; anything else marks the buffer bad. */
static bool get_bool(reader *r) {
    uint64_t v = get_uint(r, 1);
    if (v > 1) r->bad = true;
    return v == 1;
}

static void get_config(reader *r, sq_model_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = (sq_arch)get_u32(r);
    get(r, c->architecture, sizeof c->architecture);
    c->hidden_size = get_i64(r);
    c->intermediate_size = get_i64(r);
    c->n_layers = get_i64(r);
    c->n_heads = get_i64(r);
    c->n_kv_heads = get_i64(r);
    c->head_dim = get_i64(r);
    c->vocab_size = get_i64(r);
    c->rms_norm_eps = get_f64(r);
    c->rope_theta = get_f64(r);
    c->rope_scaling.kind = (sq_rope_kind)get_u32(r);
    c->rope_scaling.factor = get_f64(r);
    c->rope_scaling.low_freq_factor = get_f64(r);
    c->rope_scaling.high_freq_factor = get_f64(r);
    c->rope_scaling.original_max_position_embeddings = get_i64(r);
    c->max_position_embeddings = get_i64(r);
    c->tie_word_embeddings = get_bool(r);
    c->attention_bias = get_bool(r);
    c->torch_dtype = (sq_dtype)get_u32(r);
    c->bos_token_id = get_i64(r);
    c->n_eos = (int)get_u32(r);
    for (int i = 0; i < SQ_MAX_EOS_IDS; i++) c->eos_token_ids[i] = get_i64(r);
    c->sliding_window = get_i64(r);
    c->bnb_4bit = get_bool(r);
    c->bnb_8bit = get_bool(r);
    get(r, c->bnb_quant_type, sizeof c->bnb_quant_type);
    c->bnb_double_quant = get_bool(r);
    get(r, c->bnb_compute_dtype, sizeof c->bnb_compute_dtype);
}

#define BAD(...) sq_error_set(err, SQ_ERR_FORMAT, "skeleton buffer", NULL, __VA_ARGS__)

sq_status sq_meta_deserialize(const uint8_t *buf, size_t buf_bytes, sq_meta **out,
                              sq_error *err) {
    *out = NULL;
    if (!buf) return BAD("no buffer");
    if (buf_bytes < sizeof k_magic + 8 + 8 || buf_bytes > SQ_META_MAX_BYTES)
        return BAD("%zu bytes is not a plausible length", buf_bytes);
    if (memcmp(buf, k_magic, sizeof k_magic) != 0) return BAD("bad magic (not an SQMETA buffer)");
    reader r = {.p = buf, .n = buf_bytes, .pos = sizeof k_magic};
    uint32_t version = get_u32(&r), total = get_u32(&r);
    if (version != SQ_META_FORMAT_VERSION)
        return BAD("format version %u (this build reads %u)", version, SQ_META_FORMAT_VERSION);
    if (total != buf_bytes) return BAD("length field says %u bytes, buffer has %zu", total, buf_bytes);
    uint64_t want = 0;
    for (int i = 0; i < 8; i++) want |= (uint64_t)buf[buf_bytes - 8 + i] << (8 * i);
    uint64_t h = sq_hash_fnv1a64(buf, buf_bytes - 8);
    if (h != want)
        return BAD("hash mismatch (trailer %016llx, bytes hash to %016llx)",
                   (unsigned long long)want, (unsigned long long)h);
    r.n = buf_bytes - 8;   /* the body ends before the trailer */

    sq_model_config cfg;
    get_config(&r, &cfg);
    if (r.bad) return BAD("truncated or invalid config section");
    sq_error cerr;
    sq_error_init(&cerr, -1);
    if (sq_config_check(&cfg, "skeleton buffer", &cerr) != SQ_OK)
        return BAD("invalid config: %s", cerr.msg);
    if (strcmp(cfg.architecture, sq_arch_name(cfg.arch)) != 0)
        return BAD("architecture '%s' does not match its code %d", cfg.architecture, (int)cfg.arch);

    /* The specs must be exactly the ones this config produces; build them and compare. */
    sq_meta *m = NULL;
    sq_status st = sq_meta_create(&cfg, &m, err);
    if (st != SQ_OK) return st;
    uint32_t n_modules = get_u32(&r), n_tensors = get_u32(&r);
    if (r.bad || n_modules != (uint32_t)m->n_modules || n_tensors != (uint32_t)m->n_tensors) {
        st = BAD("%u modules / %u tensors, the config implies %d / %d", n_modules, n_tensors,
                 m->n_modules, m->n_tensors);
        goto fail;
    }
    for (int i = 0; i < m->n_modules; i++) {
        const sq_module_spec *md = &m->modules[i];
        char name[sizeof md->name];
        get(&r, name, sizeof name);
        uint32_t kind = get_u32(&r);
        int64_t layer = get_i64(&r);
        uint32_t first = get_u32(&r), n = get_u32(&r);
        if (r.bad || memcmp(name, md->name, sizeof name) != 0 || kind != (uint32_t)md->kind ||
            layer != md->layer || first != (uint32_t)md->first_tensor ||
            n != (uint32_t)md->n_tensors) {
            st = BAD("module %d does not match the config's '%s'", i, md->name);
            goto fail;
        }
    }
    for (int i = 0; i < m->n_tensors; i++) {
        sq_tensor_spec *t = &m->tensors[i];
        char name[sizeof t->name];
        get(&r, name, sizeof name);
        uint32_t role = get_u32(&r), module = get_u32(&r);
        int64_t layer = get_i64(&r);
        uint32_t n_dims = get_u32(&r);
        int64_t s0 = get_i64(&r), s1 = get_i64(&r);
        uint64_t n_el = get_u64(&r);
        uint32_t dtype = get_u32(&r);
        bool quantizable = get_bool(&r);
        uint32_t sq = get_u32(&r);
        bool sdq = get_bool(&r);
        int64_t sbs = get_i64(&r);
        int32_t sgg = (int32_t)get_u32(&r);
        uint64_t sgb = get_u64(&r);
        if (r.bad || memcmp(name, t->name, sizeof name) != 0 || role != (uint32_t)t->role ||
            module != (uint32_t)t->module || layer != t->layer ||
            n_dims != (uint32_t)t->n_dims || s0 != t->shape[0] || s1 != t->shape[1] ||
            n_el != t->n_elements || quantizable != t->quantizable) {
            st = BAD("tensor spec %d does not match the config's '%s'", i, t->name);
            goto fail;
        }
        bool dtype_ok = dtype < SQ_DTYPE_COUNT;
        bool stored_ok;
        if (sq == SQ_QUANT_NONE)
            stored_ok = !sdq && sbs == 0;
        else
            stored_ok = sq == SQ_QUANT_INT8
                            ? quantizable && dtype == SQ_DTYPE_I8 && !sdq && n_dims == 2 &&
                                  sbs == t->shape[1]
                            : sq <= SQ_QUANT_FP4 && quantizable && dtype == SQ_DTYPE_U8 &&
                                  sbs >= 32 && sbs <= 4096 && (sbs & (sbs - 1)) == 0;
        if (sgg < 0) stored_ok = stored_ok && sgg == -1 && sgb == 0;
        else stored_ok = stored_ok && sq == SQ_QUANT_NONE && sgg < 64 && sgb > 0 &&
                         sgb <= t->n_elements * 4 &&
                         (dtype == SQ_DTYPE_U8 ? sgg != 0 && sgg != 1 && sgg != 30
                                               : (sgg == 0 && dtype == SQ_DTYPE_F32) ||
                                                 (sgg == 1 && dtype == SQ_DTYPE_F16) ||
                                                 (sgg == 30 && dtype == SQ_DTYPE_BF16));
        if (!dtype_ok || !stored_ok) {
            st = BAD("tensor '%s': invalid dtype / pre-quantized fields", t->name);
            goto fail;
        }
        t->dtype = (sq_dtype)dtype;
        t->stored_quant = (sq_quant_type)sq;
        t->stored_double_quant = sdq;
        t->stored_blocksize = sbs;
        t->stored_ggml = sgg;
        t->stored_bytes = sgb;
    }
    if (r.pos != r.n) {
        st = BAD("%zu trailing bytes after the specs", r.n - r.pos);
        goto fail;
    }
    st = meta_rehash(m, err);
    if (st != SQ_OK) goto fail;
    /* the buffer's layout is canonical: re-serializing must give the same hash */
    if (m->hash != want) {
        st = BAD("buffer is not in canonical form");
        goto fail;
    }
    *out = m;
    return SQ_OK;
fail:
    sq_meta_destroy(m);
    return st;
}
#undef BAD

/* ---- broadcast ------------------------------------------------------------------------- */

/* The first failing rank's error becomes everyone's (its own code there, SQ_ERR_PEER
 * elsewhere).  Returns SQ_OK when no rank failed. */
static sq_status agree(MPI_Comm comm, int rank, int n_ranks, sq_status local, sq_error *err) {
    int mine = local == SQ_OK ? n_ranks : rank, first = n_ranks;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL,
                            "MPI_Allreduce failed while checking the skeleton");
    if (first == n_ranks) return SQ_OK;
    sq_error copy;
    if (rank == first) copy = *err;
    else memset(&copy, 0, sizeof copy);
    if (MPI_Bcast(&copy, (int)sizeof copy, MPI_BYTE, first, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL,
                            "MPI_Bcast failed while reporting rank %d's error", first);
    if (rank == first) return local;
    copy.msg[sizeof copy.msg - 1] = '\0';
    copy.file[sizeof copy.file - 1] = '\0';
    copy.tensor[sizeof copy.tensor - 1] = '\0';
    copy.code = SQ_ERR_PEER;
    *err = copy;
    return SQ_ERR_PEER;
}

sq_status sq_meta_bcast(MPI_Comm comm, int root, sq_meta **m, sq_error *err) {
    sq_error own;
    if (!err) {
        sq_error_init(&own, -1);
        err = &own;
    }
    int rank = 0, n_ranks = 1;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &n_ranks) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Comm_rank/size failed");
    if (root < 0 || root >= n_ranks)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "root %d outside [0, %d)", root,
                            n_ranks);
    if (rank != root) *m = NULL;

    /* 1. the root's status, length and hash */
    uint8_t *buf = NULL;
    size_t len = 0;
    sq_status local = SQ_OK;
    uint64_t head[3] = {0, 0, 0};   /* status, length, hash */
    if (rank == root) {
        if (!*m) {
            local = err->code != SQ_OK ? err->code : SQ_ERR_INTERNAL;
            if (err->code == SQ_OK)
                sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL, "no skeleton to broadcast");
        } else {
            local = sq_meta_serialize(*m, &buf, &len, err);
        }
        head[0] = (uint64_t)local;
        head[1] = len;
        head[2] = local == SQ_OK ? sq_meta_hash(*m) : 0;
    }
    if (MPI_Bcast(head, 3, MPI_UINT64_T, root, comm) != MPI_SUCCESS) {
        free(buf);
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast of the skeleton header failed");
    }
    if (head[0] != SQ_OK) {
        /* the root failed: everyone reports its error (all ranks saw the same head) */
        free(buf);
        return agree(comm, rank, n_ranks, rank == root ? local : SQ_OK, err);
    }
    /* every rank saw the same head, so every rank returns here together */
    if (head[1] == 0 || head[1] > SQ_META_MAX_BYTES) {
        free(buf);
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, NULL,
                            "root announced a skeleton of %llu bytes", (unsigned long long)head[1]);
    }
    len = (size_t)head[1];

    /* 2. the bytes, in bounded pieces: a rank that could not allocate still takes part in
     * every broadcast (receiving into `sink`), so no rank is left waiting */
    if (rank != root) {
        buf = malloc(len);   /* len <= SQ_META_MAX_BYTES */
        if (!buf)
            local = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL,
                                 "out of memory for a %zu-byte skeleton", len);
    }
    enum { CHUNK = 1 << 16 };
    uint8_t sink[CHUNK];
    for (size_t off = 0; off < len; off += CHUNK) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        if (MPI_Bcast(buf ? buf + off : sink, (int)n, MPI_BYTE, root, comm) != MPI_SUCCESS) {
            free(buf);
            return sq_error_set(err, SQ_ERR_MPI, NULL, NULL,
                                "MPI_Bcast of the skeleton bytes failed");
        }
    }

    /* 3. every other rank rebuilds the skeleton and checks the root's hash; all agree */
    sq_meta *mine = NULL;
    if (rank != root && local == SQ_OK) {
        local = sq_meta_deserialize(buf, len, &mine, err);
        if (local == SQ_OK && sq_meta_hash(mine) != head[2])
            local = sq_error_set(err, SQ_ERR_FORMAT, NULL, NULL,
                                 "skeleton hash %016llx differs from the root's %016llx",
                                 (unsigned long long)sq_meta_hash(mine),
                                 (unsigned long long)head[2]);
    }
    free(buf);
    sq_status st = agree(comm, rank, n_ranks, local, err);
    if (st != SQ_OK) {
        sq_meta_destroy(mine);
        return st;
    }
    if (rank != root) *m = mine;
    return SQ_OK;
}

sq_status sq_meta_read_bcast(MPI_Comm comm, int root, const sq_ckpt *ck, sq_meta **m,
                             sq_error *err) {
    *m = NULL;
    int rank = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Comm_rank failed");
    if (rank == root) {
        sq_model_config cfg;
        sq_status rc = !ck ? sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                          "no checkpoint to read the skeleton from")
                           : sq_ckpt_config(ck, &cfg, err);
        if (rc == SQ_OK) rc = sq_meta_create(&cfg, m, err);
        /* sq_meta_validate records the checkpoint's dtypes: it needs a mutable skeleton */
        if (rc == SQ_OK) rc = sq_meta_validate(*m, ck, err);
        if (rc != SQ_OK) {
            sq_meta_destroy(*m);
            *m = NULL;
        }
    }
    sq_status rc = sq_meta_bcast(comm, root, m, err);
    if (rc != SQ_OK) {
        if (rank == root) sq_meta_destroy(*m);
        *m = NULL;
        if (err && err->rank < 0) err->rank = root;
    }
    return rc;
}
