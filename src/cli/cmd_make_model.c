/* `shardq make-model`: writes a deterministic random model folder (config.json,
 * generation_config.json, safetensors, optionally sharded with an index) from a preset.  The
 * demo's built-in model and the tests' fixture source.
 * Values: per tensor a splitmix64 stream seeded from (--seed, tensor name), Box-Muller normals;
 * Linear / embedding weights N(0, 0.02), norms 1 + 0.02 N(0, 1), biases N(0, 0.01).  Same
 * seed, same bytes, whatever --shards.
 * Writes everything under "<out>.tmp.<pid>" and renames at the end; an existing --out is only
 * replaced with --force, and only when it is empty or holds a config.json.
 * Must never write outside that temporary folder before the final rename, and only rank 0
 * writes. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/config.h"
#include "shardq/meta.h"
#include "shardq/safetensors.h"
#include "shardq/tokenizer.h"

#define MAX_SHARDS 64

static void usage(FILE *f) {
    fprintf(f,
            "usage: shardq make-model --out DIR [--preset tiny|small | --config FILE]\n"
            "                         [--family llama|mistral|qwen2]\n"
            "                         [--dtype bf16|f16|f32] [--shards N] [--seed S]\n"
            "                         [--tie-embeddings] [--tokenizer tokenizer.json] [--force]\n"
            "                         [--json]\n\n"
            "Writes a deterministic random Hugging Face model folder: config.json,\n"
            "generation_config.json and model.safetensors (or N shards + index.json, with at\n"
            "least one decoder layer split across two files).  Weights ~ N(0, 0.02), norms near 1.\n"
            "  --preset    tiny (default: hidden 64, 4 layers, 4 heads / 2 kv, intermediate 172,\n"
            "              vocab 320) or small (hidden 256, 6 layers, 8 / 2 heads, 704, vocab 2048)\n"
            "  --config    a Hugging Face config.json (or a folder holding one) of any size:\n"
            "              Llama-3.1-8B, 70B, 405B, Qwen2-72B… (its family and shape; --family\n"
            "              and --preset are ignored).  Weights are random and written shard by\n"
            "              shard in bounded memory (16 MiB pieces), with a progress line; refused\n"
            "              before writing when the file system lacks the space\n"
            "  --family    llama (default), mistral, qwen2 (tied embeddings, q/k/v biases)\n"
            "  --dtype     bf16 (default), f16 or f32\n"
            "  --shards    number of safetensors files (default 1)\n"
            "  --seed      PRNG seed (default 0); the same seed gives the same bytes\n"
            "  --tie-embeddings  tie lm_head to embed_tokens (no lm_head.weight)\n"
            "  --tokenizer FILE  copy this tokenizer.json into the folder (checked by loading it);\n"
            "              when its vocabulary is larger than the preset's, vocab_size becomes its\n"
            "              size rounded up to a multiple of 64 (a padded embedding, as real models\n"
            "              have); bos_token_id / eos_token_id become the tokenizer's BOS and EOS\n"
            "  --force     replace DIR if it exists (only if empty or a model folder)\n"
            "  --json      print a JSON summary instead of text\n");
}

/* ---- deterministic values ----------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n standard normals (Box-Muller on two uniforms in (0, 1]) continuing the stream *s; n even
 * except for a tensor's last piece, so pieces give the same values as one whole call. */
static void normals(uint64_t *s, float *out, uint64_t n) {
    for (uint64_t i = 0; i < n; i += 2) {
        double u1 = ((double)(splitmix64(s) >> 11) + 1.0) * 0x1p-53;
        double u2 = (double)(splitmix64(s) >> 11) * 0x1p-53;
        double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
        out[i] = (float)(r * cos(a));
        if (i + 1 < n) out[i + 1] = (float)(r * sin(a));
    }
}

/* One tensor's values, made piece by piece as the writer asks for its bytes (bounded memory:
 * a 405B model's embedding is never whole in RAM). */
typedef struct gen_progress {
    uint64_t done, total;
    double last_print, t0;
    bool tty;
} gen_progress;

typedef struct gen_tensor {
    const sq_tensor_spec *t;
    sq_dtype dtype;
    uint64_t stream;     /* the Box-Muller stream's state */
    uint64_t next;       /* next element */
    float *tmp;          /* shared scratch of FILL_FLOATS floats */
    gen_progress *prog;
} gen_tensor;

#define FILL_FLOATS ((uint64_t)4 << 20)   /* 16 MiB of writer chunk / the smallest dtype */

static sq_status gen_fill(void *user, void *buf, uint64_t offset, uint64_t n, sq_error *err) {
    gen_tensor *g = user;
    const sq_tensor_spec *t = g->t;
    size_t es = sq_dtype_size(g->dtype);
    uint64_t first = offset / es, count = n / es;
    if (first != g->next || count * es != n)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, t->name, "values asked out of order");
    bool norm = t->role == SQ_ROLE_ATTN_NORM || t->role == SQ_ROLE_MLP_NORM ||
                t->role == SQ_ROLE_FINAL_NORM;
    bool bias = t->role == SQ_ROLE_Q_BIAS || t->role == SQ_ROLE_K_BIAS ||
                t->role == SQ_ROLE_V_BIAS;
    for (uint64_t at = 0; at < count; at += FILL_FLOATS) {
        uint64_t k = count - at < FILL_FLOATS ? count - at : FILL_FLOATS;
        float *v = g->dtype == SQ_DTYPE_F32 ? (float *)buf + at : g->tmp;
        normals(&g->stream, v, k);
        for (uint64_t i = 0; i < k; i++)
            v[i] = norm ? 1.0f + 0.02f * v[i] : (bias ? 0.01f : 0.02f) * v[i];
        if (g->dtype == SQ_DTYPE_BF16) sq_f32_to_bf16(v, (uint16_t *)buf + at, k);
        else if (g->dtype == SQ_DTYPE_F16) sq_f32_to_f16(v, (uint16_t *)buf + at, k);
    }
    g->next += count;
    gen_progress *p = g->prog;
    p->done += n;
    double now = sq_now_s();
    if (p->tty && (now - p->last_print > 0.5 || p->done == p->total)) {
        p->last_print = now;
        double gbps = now > p->t0 ? (double)p->done / 1e9 / (now - p->t0) : 0;
        fprintf(stderr, "\rmake-model: %.2f / %.2f GB written (%3.0f%%), %.2f GB/s%s",
                (double)p->done / 1e9, (double)p->total / 1e9,
                p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, gbps,
                p->done == p->total ? "\n" : "   ");
        fflush(stderr);
    }
    return SQ_OK;
}

static void gen_init(gen_tensor *g, const sq_tensor_spec *t, sq_dtype dtype, uint64_t seed,
                     float *tmp, gen_progress *prog) {
    uint64_t s = seed ^ sq_hash_fnv1a64(t->name, strlen(t->name));
    *g = (gen_tensor){.t = t, .dtype = dtype, .stream = splitmix64(&s), .tmp = tmp, .prog = prog};
}

/* ---- files ------------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* dir + "/" + name into path[PATH_BYTES]; false when it does not fit. */
#define PATH_BYTES 4096
static bool join(char *path, const char *dir, const char *name) {
    int n = snprintf(path, PATH_BYTES, "%s/%s", dir, name);
    return n > 0 && n < PATH_BYTES;
}

static sq_status write_text(const char *path, const char *text, sq_error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create: %s", strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n;
    ok = (fclose(f) == 0) && ok;
    return ok ? SQ_OK : sq_error_set(err, SQ_ERR_IO, path, NULL, "write failed: %s", strerror(errno));
}

/* mkdir -p of the folder that will hold `path` (not `path` itself). */
static sq_status make_parents(const char *path, sq_error *err) {
    char p[PATH_BYTES];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        return sq_error_set(err, SQ_ERR_INVALID, path, NULL, "path too long");
    char *last = strrchr(p, '/');
    if (!last || last == p) return SQ_OK;
    *last = '\0';
    for (char *q = p + 1; ; q++) {
        bool end = *q == '\0';
        if (*q == '/' || end) {
            *q = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return sq_error_set(err, SQ_ERR_IO, p, NULL, "cannot create folder: %s",
                                    strerror(errno));
            if (end) break;
            *q = '/';
        }
    }
    return SQ_OK;
}

/* An existing --out may be replaced only when it is an empty folder or holds config.json. */
static bool replaceable(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return false;
    char p[PATH_BYTES];
    if (!join(p, dir, "config.json")) return false;
    if (access(p, F_OK) == 0) return true;
    DIR *d = opendir(dir);
    if (!d) return false;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n == 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct plan {
    int n_files;
    int first[MAX_SHARDS + 1];   /* tensor index where file f starts; first[n_files] = n */
    uint64_t total_bytes;
} plan;

/* Splits the tensors into n contiguous files of about equal bytes; a boundary that falls on
 * the first tensor of a decoder layer moves one tensor on, so every boundary between layers
 * splits that layer across two files (what the index must handle). */
static void plan_shards(const sq_meta *m, sq_dtype d, int n_files, plan *p) {
    int n = sq_meta_n_tensors(m);
    p->n_files = n_files;
    p->total_bytes = 0;
    for (int i = 0; i < n; i++)
        p->total_bytes += sq_meta_tensor(m, i)->n_elements * sq_dtype_size(d);
    p->first[0] = 0;
    uint64_t acc = 0;
    int f = 1;
    for (int i = 0; i < n && f < n_files; i++) {
        acc += sq_meta_tensor(m, i)->n_elements * sq_dtype_size(d);
        if (acc * (uint64_t)n_files >= p->total_bytes * (uint64_t)f) {
            int b = i + 1;
            const sq_tensor_spec *t = b < n ? sq_meta_tensor(m, b) : NULL;
            if (t && t->layer >= 0 && sq_meta_module(m, t->module)->first_tensor == b) b++;
            if (b <= p->first[f - 1]) b = p->first[f - 1] + 1;
            if (b > n - (n_files - f)) b = n - (n_files - f);
            p->first[f++] = b;
            acc = 0;
            for (int k = 0; k < b; k++) acc += sq_meta_tensor(m, k)->n_elements * sq_dtype_size(d);
            i = b - 1;
        }
    }
    while (f < n_files) {   /* only for tiny byte counts: one tensor per remaining file */
        p->first[f] = p->first[f - 1] + 1;
        f++;
    }
    p->first[n_files] = n;
}

static void file_name(char *buf, size_t n, int f, int n_files) {
    if (n_files == 1) snprintf(buf, n, "model.safetensors");
    else snprintf(buf, n, "model-%05d-of-%05d.safetensors", f + 1, n_files);
}

typedef struct options {
    const char *out, *preset, *family, *tokenizer, *config;
    sq_dtype dtype;
    int64_t shards, seed;
    bool tie, force, json;
} options;

/* Copies src (at most 64 MiB, already checked by loading it) to dir/name. */
static sq_status copy_file(const char *src, const char *dir, const char *name, sq_error *err) {
    char path[PATH_BYTES];
    if (!join(path, dir, name)) return sq_error_set(err, SQ_ERR_INVALID, dir, NULL, "path too long");
    FILE *in = fopen(src, "rb");
    if (!in) return sq_error_set(err, SQ_ERR_IO, src, NULL, "cannot open: %s", strerror(errno));
    FILE *out = fopen(path, "wb");
    if (!out) {
        fclose(in);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create: %s", strerror(errno));
    }
    char buf[65536];
    size_t n, total = 0;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) {
        ok = fwrite(buf, 1, n, out) == n && (total += n) <= (64u << 20);
    }
    ok = !ferror(in) && ok;
    fclose(in);
    ok = (fclose(out) == 0) && ok;
    return ok ? SQ_OK : sq_error_set(err, SQ_ERR_IO, path, NULL, "copying %s failed", src);
}

static sq_status write_model(const options *o, const sq_meta *m, const char *tmp,
                             sq_error *err) {
    const sq_model_config *c = sq_meta_config(m);
    if (mkdir(tmp, 0755) != 0)
        return sq_error_set(err, SQ_ERR_IO, tmp, NULL, "cannot create folder: %s", strerror(errno));
    char path[PATH_BYTES];
    if (!join(path, tmp, "model.safetensors.index.json"))   /* the longest name written */
        return sq_error_set(err, SQ_ERR_INVALID, tmp, NULL, "path too long");
    char *json = NULL;
    sq_status st = sq_config_to_json(c, &json, err);
    if (st != SQ_OK) return st;
    join(path, tmp, "config.json");
    st = write_text(path, json, err);
    free(json);
    if (st != SQ_OK) return st;

    char gen[256];
    int gn = snprintf(gen, sizeof gen, "{\n  \"_from_model_config\": true");
    if (c->bos_token_id >= 0)
        gn += snprintf(gen + gn, sizeof gen - (size_t)gn, ",\n  \"bos_token_id\": %lld",
                       (long long)c->bos_token_id);
    if (c->n_eos > 0)
        gn += snprintf(gen + gn, sizeof gen - (size_t)gn, ",\n  \"eos_token_id\": %lld",
                       (long long)c->eos_token_ids[0]);
    snprintf(gen + gn, sizeof gen - (size_t)gn, "\n}\n");
    join(path, tmp, "generation_config.json");
    if ((st = write_text(path, gen, err)) != SQ_OK) return st;
    if (o->tokenizer && (st = copy_file(o->tokenizer, tmp, "tokenizer.json", err)) != SQ_OK) return st;

    plan p;
    plan_shards(m, o->dtype, (int)o->shards, &p);
    int n_t = sq_meta_n_tensors(m);
    float *v = malloc(FILL_FLOATS * sizeof *v);
    gen_tensor *gens = calloc((size_t)n_t, sizeof *gens);
    if (!v || !gens) {
        free(v);
        free(gens);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory generating weights");
    }
    gen_progress prog = {.total = p.total_bytes, .t0 = sq_now_s(), .tty = isatty(2) != 0};
    for (int f = 0; f < p.n_files && st == SQ_OK; f++) {
        char name[64];
        file_name(name, sizeof name, f, p.n_files);
        join(path, tmp, name);
        sq_st_writer *w = NULL;
        st = sq_st_writer_create(path, &w, err);
        if (st == SQ_OK) st = sq_st_writer_metadata(w, "format", "pt", err);
        for (int i = p.first[f]; i < p.first[f + 1] && st == SQ_OK; i++) {
            const sq_tensor_spec *t = sq_meta_tensor(m, i);
            gen_init(&gens[i], t, o->dtype, (uint64_t)o->seed, v, &prog);
            st = sq_st_writer_add_fill(w, t->name, o->dtype, t->n_dims, t->shape,
                                       t->n_elements * sq_dtype_size(o->dtype), gen_fill,
                                       &gens[i], err);
        }
        if (st == SQ_OK) st = sq_st_writer_finish(w, true, err);
        sq_st_writer_destroy(w);
    }
    free(v);
    free(gens);
    if (st != SQ_OK || p.n_files == 1) return st;

    /* model.safetensors.index.json: weight_map sorted by name, as transformers writes it */
    int n = sq_meta_n_tensors(m);
    const char **names = malloc((size_t)n * sizeof *names);
    if (!names) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the index");
    for (int i = 0; i < n; i++) names[i] = sq_meta_tensor(m, i)->name;
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    join(path, tmp, "model.safetensors.index.json");
    FILE *idx = fopen(path, "wb");
    if (!idx) {
        free(names);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create: %s", strerror(errno));
    }
    fprintf(idx, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
            (unsigned long long)p.total_bytes);
    for (int i = 0; i < n; i++) {
        int ti = sq_meta_find(m, names[i]), f = 0;
        while (ti >= p.first[f + 1]) f++;
        char fname[64];
        file_name(fname, sizeof fname, f, p.n_files);
        fprintf(idx, "    \"%s\": \"%s\"%s\n", names[i], fname, i + 1 < n ? "," : "");
    }
    fprintf(idx, "  }\n}\n");
    free(names);
    if (ferror(idx) | (fclose(idx) != 0))
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "write failed");
    return SQ_OK;
}

/* Refuses before writing when the file system that will hold `out` has less free space than
 * the weights need (+ 1 MiB for the JSON files). */
static sq_status check_space(const char *out, uint64_t need, sq_error *err) {
    char dir[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    struct statvfs vs;
    if (statvfs(dir, &vs) != 0) return SQ_OK;   /* unknown: let the writes tell */
    uint64_t avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
    if (avail < need + (1u << 20))
        return sq_error_set(err, SQ_ERR_IO, dir, NULL,
                            "%.2f GB free, the model needs %.2f GB: not enough space",
                            (double)avail / 1e9, (double)need / 1e9);
    return SQ_OK;
}

/* Rank 0's whole job; returns the status (err set). */
static sq_status make_model(const options *o, sq_meta **mout, sq_error *err) {
    sq_arch arch;
    if (!sq_arch_from_name(o->family, &arch))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "unknown family '%s' (llama, mistral, qwen2)", o->family);
    sq_model_config c;
    sq_status st = o->config ? sq_config_load(o->config, &c, err)
                             : sq_config_preset(o->preset, arch, &c, err);
    if (st != SQ_OK) return st;
    c.torch_dtype = o->dtype;
    if (o->tie) c.tie_word_embeddings = true;
    if (o->tokenizer) {   /* the model's vocabulary and special ids follow the tokenizer */
        sq_tokenizer *tok = NULL;
        if ((st = sq_tokenizer_load(o->tokenizer, &tok, err)) != SQ_OK) return st;
        int64_t v = sq_tokenizer_vocab_size(tok);
        if (v > c.vocab_size) c.vocab_size = (v + 63) / 64 * 64;
        c.bos_token_id = sq_tokenizer_bos_id(tok);
        int32_t eos = sq_tokenizer_eos_id(tok);
        c.n_eos = eos >= 0 ? 1 : 0;
        c.eos_token_ids[0] = eos >= 0 ? eos : 0;
        sq_tokenizer_destroy(tok);
        if ((st = sq_config_check(&c, o->tokenizer, err)) != SQ_OK) return st;
    }
    sq_meta *m = NULL;
    if ((st = sq_meta_create(&c, &m, err)) != SQ_OK) return st;
    if (o->shards > sq_meta_n_tensors(m) / 2) {
        st = sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                          "--shards %lld: this model has only %d tensors (at most %d shards)",
                          (long long)o->shards, sq_meta_n_tensors(m), sq_meta_n_tensors(m) / 2);
        sq_meta_destroy(m);
        return st;
    }
    struct stat sb;
    bool exists = stat(o->out, &sb) == 0;
    if (exists && !o->force) {
        sq_meta_destroy(m);
        return sq_error_set(err, SQ_ERR_INVALID, o->out, NULL,
                            "already exists (use --force to replace it)");
    }
    if (exists && !replaceable(o->out)) {
        sq_meta_destroy(m);
        return sq_error_set(err, SQ_ERR_INVALID, o->out, NULL,
                            "exists and is not a model folder (no config.json) nor empty: "
                            "refusing to replace it even with --force");
    }
    char tmp[PATH_BYTES / 2], old[PATH_BYTES / 2];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o->out, (long)getpid()) >= (int)sizeof tmp ||
        snprintf(old, sizeof old, "%s.old.%ld", o->out, (long)getpid()) >= (int)sizeof old) {
        sq_meta_destroy(m);
        return sq_error_set(err, SQ_ERR_INVALID, o->out, NULL, "path too long");
    }
    rm_tree(tmp);
    st = make_parents(o->out, err);
    if (st == SQ_OK) st = check_space(o->out, sq_meta_total_bytes(m, &(sq_quant_scheme){.type = SQ_QUANT_NONE, .dense_dtype = o->dtype}), err);
    if (st == SQ_OK) st = write_model(o, m, tmp, err);
    if (st == SQ_OK && exists && rename(o->out, old) != 0)
        st = sq_error_set(err, SQ_ERR_IO, o->out, NULL, "cannot move the old folder aside: %s",
                          strerror(errno));
    if (st == SQ_OK && rename(tmp, o->out) != 0) {
        st = sq_error_set(err, SQ_ERR_IO, o->out, NULL, "cannot rename %s into place: %s", tmp,
                          strerror(errno));
        if (exists) rename(old, o->out);
    }
    if (st != SQ_OK) {
        rm_tree(tmp);
        sq_meta_destroy(m);
        return st;
    }
    if (exists) rm_tree(old);
    *mout = m;
    return SQ_OK;
}

int sq_cli_make_model(int argc, char **argv, sq_cli_ctx *ctx) {
    options o = {.preset = "tiny", .family = "llama", .dtype = SQ_DTYPE_BF16, .shards = 1};
    const char *cmd = "make-model";
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        bool missing = false;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_flag_value(argc, argv, &i, "--out", &val, &missing)) {
            o.out = val;
        } else if (sq_cli_flag_value(argc, argv, &i, "--config", &val, &missing)) {
            o.config = val;
        } else if (sq_cli_flag_value(argc, argv, &i, "--preset", &val, &missing)) {
            o.preset = val;
        } else if (sq_cli_flag_value(argc, argv, &i, "--family", &val, &missing)) {
            o.family = val;
        } else if (sq_cli_flag_value(argc, argv, &i, "--dtype", &val, &missing)) {
            if (!missing && !sq_torch_dtype_from_name(val, &o.dtype))
                return sq_cli_usage_error(ctx, cmd, "--dtype '%s': use bf16, f16 or f32", val);
            if (!missing && o.dtype == SQ_DTYPE_F64)
                return sq_cli_usage_error(ctx, cmd, "--dtype '%s': use bf16, f16 or f32", val);
        } else if (sq_cli_flag_value(argc, argv, &i, "--shards", &val, &missing)) {
            if (!missing && !sq_cli_parse_i64(val, 1, MAX_SHARDS, &o.shards))
                return sq_cli_usage_error(ctx, cmd, "--shards '%s': an integer in [1, %d]", val,
                                          MAX_SHARDS);
        } else if (sq_cli_flag_value(argc, argv, &i, "--seed", &val, &missing)) {
            if (!missing && !sq_cli_parse_i64(val, 0, INT64_MAX, &o.seed))
                return sq_cli_usage_error(ctx, cmd, "--seed '%s': a non-negative integer", val);
        } else if (sq_cli_flag_value(argc, argv, &i, "--tokenizer", &val, &missing)) {
            o.tokenizer = val;
        } else if (!strcmp(argv[i], "--tie-embeddings")) {
            o.tie = true;
        } else if (!strcmp(argv[i], "--force")) {
            o.force = true;
        } else if (!strcmp(argv[i], "--json")) {
            o.json = true;
        } else {
            return sq_cli_usage_error(ctx, cmd, "unknown argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, cmd, "%s needs a value", argv[i]);
    }
    if (!o.out || !*o.out) return sq_cli_usage_error(ctx, cmd, "--out DIR is required");
    char out[PATH_BYTES / 2];
    if (snprintf(out, sizeof out, "%s", o.out) >= (int)sizeof out)
        return sq_cli_usage_error(ctx, cmd, "--out: path too long");
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--) out[n - 1] = '\0';
    o.out = out;

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_meta *m = NULL;
    sq_status st = SQ_OK;
    if (ctx->rank == 0) st = make_model(&o, &m, &err);   /* one writer */
    st = sq_cli_agree(ctx, st, &err);
    if (st != SQ_OK) {
        sq_meta_destroy(m);
        return ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    }
    if (ctx->rank == 0) {
        const sq_model_config *c = sq_meta_config(m);
        uint64_t bytes = 0;
        for (int i = 0; i < sq_meta_n_tensors(m); i++)
            bytes += sq_meta_tensor(m, i)->n_elements * sq_dtype_size(o.dtype);
        if (o.json) {
            printf("{\"out\": \"");
            for (const char *p = o.out; *p; p++) {
                if (*p == '"' || *p == '\\') putchar('\\');
                if ((unsigned char)*p < 0x20) printf("\\u%04x", *p);
                else putchar(*p);
            }
            printf("\", \"architecture\": \"%s\", \"%s\": \"%s\", \"random_weights\": true, \"dtype\": \"%s\", "
                   "\"n_params\": %llu, \"n_tensors\": %d, \"n_layers\": %lld, \"n_files\": %lld, "
                   "\"bytes\": %llu, \"seed\": %lld, \"tie_word_embeddings\": %s}\n",
                   c->architecture, o.config ? "config" : "preset", o.config ? o.config : o.preset,
                   sq_torch_dtype_name(o.dtype), (unsigned long long)sq_meta_n_params(m), sq_meta_n_tensors(m),
                   (long long)c->n_layers, (long long)o.shards, (unsigned long long)bytes,
                   (long long)o.seed, c->tie_word_embeddings ? "true" : "false");
        } else {
            printf("wrote %s: %s %s '%s' (%lld layers, hidden %lld, %lld heads / %lld kv), "
                   "%llu parameters in %d tensors, %lld file%s, %llu bytes of %s, seed %lld "
                   "(random weights)\n",
                   o.out, c->architecture, o.config ? "config" : "preset", o.config ? o.config : o.preset, (long long)c->n_layers,
                   (long long)c->hidden_size, (long long)c->n_heads, (long long)c->n_kv_heads,
                   (unsigned long long)sq_meta_n_params(m), sq_meta_n_tensors(m),
                   (long long)o.shards, o.shards == 1 ? "" : "s", (unsigned long long)bytes,
                   sq_torch_dtype_name(o.dtype), (long long)o.seed);
        }
    }
    sq_meta_destroy(m);
    return 0;
}
