/* MPI tests of `quantize` (sq_quantize_run) and of the loader's cross-rank progress, run under
 * mpirun with 1, 2 and 3 ranks (CK_FORK=no).  Rank 0 makes the fixture; checks that need
 * files run on rank 0 and their verdict is broadcast, so every rank asserts the same thing
 * and no rank is left waiting in a collective.
 *   - 1..N ranks (sub-communicators of the world): byte-identical tensors and index
 *     total_size whatever the rank count, and equal to quantizing in memory (+ bnb's JSON);
 *   - reading the output back: pre-quantized weights equal the in-memory sq_qtensor, their
 *     dequantization equals, and re-quantizing the output copies it as stored;
 *   - a rank that fails mid-way (a NaN in a weight only the last rank reads) leaves no output
 *     and no temporary, and every rank reports that rank;
 *   - progress: rank 0 sees every rank's bytes and one final report;
 *   - the trace of a quantize: one valid trace-event file with every rank's read (reader
 *     track), quantize and write spans. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load_fixture.h"
#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "testutil.h"
#include "trace_check.h"

static int g_rank, g_size;
static char g_base[1024];   /* the shared work folder */
static char g_src[1100];    /* the fixture model */

/* rank 0's verdict to every rank */
static void verdict(const char *fail) {
    char msg[1024] = "";
    if (g_rank == 0 && fail) snprintf(msg, sizeof msg, "%s", fail[0] ? fail : "failed");
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, 0, MPI_COMM_WORLD);
    ck_assert_msg(msg[0] == '\0', "rank 0 found: %s", msg);
}

static bool all_ranks(bool ok) {
    int mine = ok, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all != 0;
}

static sq_quantize_options opts(const char *model, const char *out) {
    sq_quantize_options o;
    memset(&o, 0, sizeof o);
    o.model_dir = model;
    o.out_dir = out;
    o.scheme = sq_quant_scheme_default();
    o.scheme.double_quant = true;
    o.scheme_given = true;
    o.compute_dtype = "bfloat16";
    o.n_threads = 1;
    return o;
}

/* ---- comparisons (rank 0) ----------------------------------------------------------------------- */

static char g_fail[2048];
#define FAIL(...) (snprintf(g_fail, sizeof g_fail, __VA_ARGS__), g_fail)

static const char *same_tensor(const sq_ckpt *a, const sq_ckpt_tensor *ta, const sq_ckpt *b,
                               const char *what) {
    const sq_ckpt_tensor *tb = sq_ckpt_find(b, ta->name);
    if (!tb) return FAIL("%s: '%s' missing", what, ta->name);
    if (ta->dtype != tb->dtype || ta->n_dims != tb->n_dims || ta->n_bytes != tb->n_bytes ||
        memcmp(ta->shape, tb->shape, sizeof ta->shape[0] * (size_t)ta->n_dims))
        return FAIL("%s: '%s' dtype/shape differ", what, ta->name);
    if (memcmp(sq_ckpt_data(a, ta), sq_ckpt_data(b, tb), ta->n_bytes))
        return FAIL("%s: '%s' bytes differ", what, ta->name);
    return NULL;
}

static const char *same_model(const char *dir_a, const char *dir_b, size_t want_files) {
    sq_error err;
    sq_ckpt *a = NULL, *b = NULL;
    const char *f = NULL;
    if (sq_ckpt_open(dir_a, &a, &err) || sq_ckpt_open(dir_b, &b, &err))
        f = FAIL("open: %s", err.msg);
    if (!f && sq_ckpt_n_tensors(a) != sq_ckpt_n_tensors(b))
        f = FAIL("%s has %zu tensors, %s %zu", dir_a, sq_ckpt_n_tensors(a), dir_b,
                 sq_ckpt_n_tensors(b));
    if (!f && sq_ckpt_n_files(b) != want_files)
        f = FAIL("%s has %zu shards, want %zu", dir_b, sq_ckpt_n_files(b), want_files);
    for (size_t i = 0; !f && i < sq_ckpt_n_tensors(a); i++)
        f = same_tensor(a, sq_ckpt_tensor_at(a, i), b, dir_b);
    /* index metadata.total_size */
    char p[1200];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir_a);
    char *ia = sq_test_read_file(p, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir_b);
    char *ib = sq_test_read_file(p, NULL);
    if (!f && (!ia || !ib)) f = FAIL("index missing");
    if (!f) {
        const char *sa = strstr(ia, "\"total_size\": "), *sb = strstr(ib, "\"total_size\": ");
        if (!sa || !sb || strtoull(sa + 14, NULL, 10) != strtoull(sb + 14, NULL, 10))
            f = FAIL("total_size differs");
    }
    free(ia);
    free(ib);
    sq_ckpt_close(a);
    sq_ckpt_close(b);
    return f;
}

static const char *expect_part(const sq_ckpt *out, const char *name, const char *suffix,
                               sq_dtype dtype, const void *bytes, uint64_t n) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", name, suffix);
    const sq_ckpt_tensor *t = sq_ckpt_find(out, key);
    if (!t) return FAIL("'%s' missing", key);
    if (t->dtype != dtype || t->n_bytes != n || memcmp(sq_ckpt_data(out, t), bytes, n))
        return FAIL("'%s' differs from the in-memory quantization", key);
    return NULL;
}

/* every tensor of out equals quantizing the source in memory (bnb layout, JSON included) */
static const char *matches_reference(const char *src_dir, const char *out_dir,
                                     const sq_quant_scheme *s) {
    sq_error err;
    sq_model_config cfg;
    sq_ckpt *src = NULL, *out = NULL;
    sq_meta *m = NULL;
    const char *f = NULL;
    if (sq_config_load(src_dir, &cfg, &err) || sq_ckpt_open(src_dir, &src, &err) ||
        sq_ckpt_open(out_dir, &out, &err) || sq_meta_create(&cfg, &m, &err))
        return FAIL("open: %s", err.msg);
    size_t n_expected = 0;
    for (int i = 0; !f && i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        const sq_ckpt_tensor *ti = sq_ckpt_find(src, t->name);
        if (!t->quantizable) {
            n_expected++;
            f = same_tensor(src, ti, out, out_dir);
            continue;
        }
        n_expected += s->double_quant ? 6 : 4;
        sq_qtensor q;
        if (sq_quant_4bit_from(ti->dtype, sq_ckpt_data(src, ti), t->shape[0], t->shape[1], s,
                               NULL, &q, &err))
            return FAIL("quantize: %s", err.msg);
        f = expect_part(out, t->name, "", SQ_DTYPE_U8, q.packed, (q.n_elements + 1) / 2);
        if (!f && q.double_quant)
            f = expect_part(out, t->name, ".absmax", SQ_DTYPE_U8, q.absmax_q, q.n_blocks);
        if (!f && !q.double_quant)
            f = expect_part(out, t->name, ".absmax", SQ_DTYPE_F32, q.absmax, q.n_blocks * 4);
        if (!f)
            f = expect_part(out, t->name, ".quant_map", SQ_DTYPE_F32, sq_quant_code_table(q.type), 64);
        if (!f && q.double_quant)
            f = expect_part(out, t->name, ".nested_absmax", SQ_DTYPE_F32, q.nested_absmax,
                            (q.n_blocks + 255) / 256 * 4);
        if (!f && q.double_quant)
            f = expect_part(out, t->name, ".nested_quant_map", SQ_DTYPE_F32,
                            sq_quant_dynamic_map(), 1024);
        char *json = NULL;
        size_t len = 0;
        if (!f && sq_bnb_quant_state_json(&q, &json, &len, &err)) f = FAIL("json: %s", err.msg);
        if (!f)
            f = expect_part(out, t->name, sq_bnb_quant_state_suffix(q.type), SQ_DTYPE_U8, json, len);
        free(json);
        sq_qtensor_free(&q);
    }
    if (!f && sq_ckpt_n_tensors(out) != n_expected)
        f = FAIL("%s holds %zu tensors, want %zu", out_dir, sq_ckpt_n_tensors(out), n_expected);
    sq_meta_destroy(m);
    sq_ckpt_close(src);
    sq_ckpt_close(out);
    return f;
}

/* ---- tests --------------------------------------------------------------------------------------- */

START_TEST(test_rank_counts_identical) {
    bool ok = true;
    char outs[4][1200];
    sq_error err;
    sq_error_init(&err, g_rank);
    for (int k = 1; k <= g_size && k <= 3; k++) {
        snprintf(outs[k], sizeof outs[k], "%s/out-%d", g_base, k);
        MPI_Comm c = MPI_COMM_NULL;
        MPI_Comm_split(MPI_COMM_WORLD, g_rank < k ? 0 : MPI_UNDEFINED, g_rank, &c);
        if (c != MPI_COMM_NULL) {
            MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
            sq_quantize_options o = opts(g_src, outs[k]);
            sq_quantize_result r;
            sq_status rc = sq_quantize_run(c, &o, &r, &err);
            if (rc != SQ_OK) {
                fprintf(stderr, "rank %d, %d ranks: %s\n", g_rank, k, err.msg);
                ok = false;
            } else if (r.n_ranks != k || r.prequantized || r.bytes_read == 0) {
                ok = false;
            }
            MPI_Comm_free(&c);
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
    ck_assert_msg(all_ranks(ok), "a quantize run failed");
    const char *f = NULL;
    if (g_rank == 0) {
        sq_quant_scheme s = opts(NULL, NULL).scheme;
        f = matches_reference(g_src, outs[1], &s);
        for (int k = 2; !f && k <= g_size && k <= 3; k++) f = same_model(outs[1], outs[k], (size_t)k);
    }
    verdict(f);
}
END_TEST

static sq_status collect_q(void *user, sq_load_item *it, sq_error *err) {
    sq_load_item *items = user;
    items[it->tensor] = *it;
    it->data = NULL;
    memset(&it->q, 0, sizeof it->q);
    (void)err;
    return SQ_OK;
}

/* rank 0: out-1 read back as a pre-quantized checkpoint */
static const char *read_back(void) {
    static sq_load_item items[256], dense[256];
    char out1[1200];
    snprintf(out1, sizeof out1, "%s/out-1", g_base);
    sq_error err;
    sq_model_config cfg;
    sq_ckpt *st = NULL, *src = NULL;
    sq_meta *m = NULL;
    if (sq_config_load(out1, &cfg, &err) || sq_ckpt_open(out1, &st, &err) ||
        sq_ckpt_open(g_src, &src, &err) || sq_meta_create(&cfg, &m, &err) ||
        sq_meta_validate(m, st, &err))
        return FAIL("open the output: %s", err.msg);
    if (!cfg.bnb_4bit || strcmp(cfg.bnb_quant_type, "nf4") || !cfg.bnb_double_quant ||
        strcmp(cfg.bnb_compute_dtype, "bfloat16"))
        return FAIL("config.json's quantization_config reads back wrong");
    sq_load_options o = sq_load_options_default();
    sq_load_stage_desc all = {0, (int)cfg.n_layers, true, true};
    memset(items, 0, sizeof items);
    memset(dense, 0, sizeof dense);
    if (sq_load_stage(st, m, &all, &o, collect_q, items, NULL, &err))
        return FAIL("load 4-bit: %s", err.msg);
    o.scheme.type = SQ_QUANT_NONE;
    if (sq_load_stage(st, m, &all, &o, collect_q, dense, NULL, &err))
        return FAIL("load dense: %s", err.msg);
    const char *f = NULL;
    sq_quant_scheme s = opts(NULL, NULL).scheme;
    int n_q = 0;
    for (int i = 0; !f && i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        if (!t->quantizable) continue;
        n_q++;
        const sq_load_item *it = &items[i];
        if (!it->is_4bit || !it->prequantized || t->stored_quant != SQ_QUANT_NF4 ||
            !t->stored_double_quant || t->stored_blocksize != 64) {
            f = FAIL("%s: not read as a pre-quantized nf4 weight", t->name);
            break;
        }
        const sq_ckpt_tensor *ti = sq_ckpt_find(src, t->name);
        sq_qtensor ref;
        sq_quant_4bit_from(ti->dtype, sq_ckpt_data(src, ti), t->shape[0], t->shape[1], &s,
                           NULL, &ref, &err);
        const sq_qtensor *q = &it->q;
        if (q->n_blocks != ref.n_blocks || q->dtype != ref.dtype || q->shape[1] != ref.shape[1] ||
            memcmp(q->packed, ref.packed, (ref.n_elements + 1) / 2) ||
            memcmp(q->absmax_q, ref.absmax_q, ref.n_blocks) ||
            memcmp(q->nested_absmax, ref.nested_absmax, (ref.n_blocks + 255) / 256 * 4) ||
            memcmp(&q->nested_offset, &ref.nested_offset, 4))
            f = FAIL("%s: read-back sq_qtensor differs from the in-memory one", t->name);
        uint16_t *a = malloc(ref.n_elements * 2), *b = malloc(ref.n_elements * 2);
        float *fa = malloc(ref.n_elements * 4), *fb = malloc(ref.n_elements * 4);
        sq_dequant_4bit(q, a, SQ_DTYPE_BF16, &err);
        sq_dequant_4bit(&ref, b, SQ_DTYPE_BF16, &err);
        sq_dequant_4bit_f32(q, 0, ref.n_elements, fa);
        sq_dequant_4bit_f32(&ref, 0, ref.n_elements, fb);
        if (!f && (memcmp(a, b, ref.n_elements * 2) || memcmp(fa, fb, ref.n_elements * 4)))
            f = FAIL("%s: dequantized values differ", t->name);
        if (!f && (dense[i].is_4bit || dense[i].dtype != SQ_DTYPE_BF16 ||
                   dense[i].n_bytes != ref.n_elements * 2 ||
                   memcmp(dense[i].data, b, ref.n_elements * 2)))
            f = FAIL("%s: --quant none read-back is not bnb's dequantization", t->name);
        free(a);
        free(b);
        free(fa);
        free(fb);
        sq_qtensor_free(&ref);
    }
    if (!f && n_q != 28) f = FAIL("%d quantized weights, want 28", n_q);
    for (int i = 0; i < 256; i++) {
        sq_load_item_release(&items[i]);
        sq_load_item_release(&dense[i]);
    }
    sq_meta_destroy(m);
    sq_ckpt_close(st);
    sq_ckpt_close(src);
    return f;
}

START_TEST(test_prequantized_read_back) {
    verdict(g_rank == 0 ? read_back() : NULL);
    /* quantize the quantized folder again: copied as stored, whatever the rank count */
    char out1[1200], again[1200];
    snprintf(out1, sizeof out1, "%s/out-1", g_base);
    snprintf(again, sizeof again, "%s/again", g_base);
    sq_quantize_options o = opts(out1, again);
    o.scheme_given = false;
    sq_quantize_result r;
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_status rc = sq_quantize_run(MPI_COMM_WORLD, &o, &r, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK && r.prequantized && r.scheme.double_quant),
                  "re-quantize: %s", err.msg);
    const char *f = NULL;
    if (g_rank == 0) f = same_model(out1, again, (size_t)g_size);
    verdict(f);
    /* and another scheme is refused, on every rank alike */
    char other[1200];
    snprintf(other, sizeof other, "%s/other", g_base);
    o = opts(out1, other);
    o.scheme.type = SQ_QUANT_FP4;
    sq_error_init(&err, g_rank);
    rc = sq_quantize_run(MPI_COMM_WORLD, &o, &r, &err);
    ck_assert_int_eq(rc, SQ_ERR_INVALID);
    ck_assert_int_eq(err.rank, 0);
    ck_assert_msg(strstr(err.msg, "already a bitsandbytes 4-bit checkpoint"), "%s", err.msg);
    ck_assert_int_ne(access(other, F_OK), 0);
}
END_TEST

static const char *no_leftovers(const char *prefix) {
    DIR *d = opendir(g_base);
    if (!d) return FAIL("cannot list %s", g_base);
    struct dirent *e;
    const char *f = NULL;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) f = FAIL("left behind: %s", e->d_name);
    closedir(d);
    return f;
}

START_TEST(test_failing_rank_leaves_nothing) {
    char bad[1200], out[1200];
    snprintf(bad, sizeof bad, "%s/bad-src", g_base);
    snprintf(out, sizeof out, "%s/bad-out", g_base);
    const char *name = "model.layers.3.mlp.down_proj.weight";   /* the last rank's */
    const char *f = NULL;
    if (g_rank == 0) {
        char cmd[2600];
        snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", g_src, bad);
        sq_error err;
        sq_ckpt *st = NULL;
        if (system(cmd) != 0 || sq_ckpt_open(bad, &st, &err)) {
            f = FAIL("copy");
        } else {
            /* corrupt it after "planning": a NaN at element 100 of a weight only the last
             * rank reads */
            const sq_ckpt_tensor *t = sq_ckpt_find(st, name);
            int fd = open(sq_ckpt_file_path(st, (size_t)t->file_index), O_WRONLY);
            uint16_t nan = 0xffc0;
            if (fd < 0 || pwrite(fd, &nan, 2, (off_t)(t->offset + 200)) != 2) f = FAIL("poison");
            if (fd >= 0) close(fd);
            sq_ckpt_close(st);
        }
    }
    verdict(f);
    sq_quantize_options o = opts(bad, out);
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_status rc = sq_quantize_run(MPI_COMM_WORLD, &o, NULL, &err);
    bool ok = rc == SQ_ERR_FORMAT && err.rank == g_size - 1 && !strcmp(err.tensor, name) &&
              strstr(err.msg, "holds NaN or Inf") != NULL;
    char line[2048];
    sq_error_format(&err, line, sizeof line);
    if (g_rank == 0) fprintf(stderr, "failure as reported: %s\n", line);
    ck_assert_msg(all_ranks(ok), "rank %d got: %s", g_rank, line);
    char want[64];
    snprintf(want, sizeof want, "rank %d: ", g_size - 1);
    ck_assert_msg(!strncmp(line, want, strlen(want)), "%s", line);
    f = NULL;
    if (g_rank == 0) {
        if (access(out, F_OK) == 0) f = FAIL("%s exists after a failure", out);
        if (!f) f = no_leftovers("bad-out");
    }
    verdict(f);

    /* an existing folder: refused without --force (rank 0 says so), replaced with it */
    char out1[1200];
    snprintf(out1, sizeof out1, "%s/out-1", g_base);
    o = opts(g_src, out1);
    sq_error_init(&err, g_rank);
    rc = sq_quantize_run(MPI_COMM_WORLD, &o, NULL, &err);
    ck_assert_int_eq(rc, SQ_ERR_INVALID);
    ck_assert_int_eq(err.rank, 0);
    ck_assert_msg(strstr(err.msg, "already exists (pass --force to replace it)"), "%s", err.msg);
    o.force = true;
    sq_error_init(&err, g_rank);
    rc = sq_quantize_run(MPI_COMM_WORLD, &o, NULL, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK), "--force: %s", err.msg);
    f = NULL;
    if (g_rank == 0) {
        sq_quant_scheme s = opts(NULL, NULL).scheme;
        f = matches_reference(g_src, out1, &s);
        if (!f) f = no_leftovers("out-1.");
    }
    verdict(f);
}
END_TEST

START_TEST(test_trace_of_quantize) {
    char out[1200], path[1200];
    snprintf(out, sizeof out, "%s/out-trace", g_base);
    snprintf(path, sizeof path, "%s/quantize-trace.json", g_base);
    sq_quantize_options o = opts(g_src, out);
    o.staging_bytes = 4096;   /* several pieces per weight: reads and quantizes interleave */
    o.force = true;
    sq_error err;
    sq_error_init(&err, g_rank);
    ck_assert_int_eq(sq_trace_create(g_rank, 0, &o.trace, &err), SQ_OK);
    sq_status rc = sq_quantize_run(MPI_COMM_WORLD, &o, NULL, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK), "%s", err.msg);
    rc = sq_trace_write(o.trace, MPI_COMM_WORLD, path, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK), "%s", err.msg);
    sq_trace_destroy(o.trace);
    const char *f = NULL;
    if (g_rank == 0) {
        size_t len = 0;
        char *json = sq_test_read_file(path, &len), why[512] = "";
        trace_stats ts;
        if (!json || !trace_check(json, len, &ts, why, sizeof why))
            f = FAIL("trace: %s", json ? why : "no file");
        else if (ts.n_pids != g_size || ts.max_pid != g_size - 1)
            f = FAIL("trace: %d pids, want %d", ts.n_pids, g_size);
        else if (!strstr(ts.names, "|read|") || !strstr(ts.names, "|quantize|") ||
                 !strstr(ts.names, "|write|") || !strstr(ts.names, "|double quant|"))
            f = FAIL("trace: names %s", ts.names);
        else if (!strstr(json, "\"tid\":1,\"ts\""))
            f = FAIL("trace: no span on the reader track");
        free(json);
        /* 4 KiB of staging: every dense tensor went to the file in several pieces, every
         * weight was quantized in several; the bytes are still the in-memory quantizer's */
        if (!f) {
            sq_quant_scheme s = o.scheme;
            f = matches_reference(g_src, out, &s);
        }
        if (!f) f = no_leftovers("out-trace.");
    }
    verdict(f);
}
END_TEST

typedef struct prog_seen {
    int n, n_final, ranks_done, n_ranks;
    uint64_t done, total;
} prog_seen;

static void on_prog(void *user, const sq_load_progress *p) {
    prog_seen *s = user;
    s->n++;
    s->n_final += p->final;
    s->done = p->bytes_done;
    s->total = p->bytes_total;
    s->ranks_done = p->ranks_done;
    s->n_ranks = p->n_ranks;
}

static sq_status drop_slowly(void *user, sq_load_item *it, sq_error *err) {
    (void)user;
    (void)it;
    (void)err;
    usleep(1000);
    return SQ_OK;
}

START_TEST(test_progress_across_ranks) {
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_model_config cfg;
    sq_ckpt *st = NULL;
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_config_load(g_src, &cfg, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_open(g_src, &st, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&cfg, &m, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_validate(m, st, &err), SQ_OK);
    /* equal split of the 4 layers; rank 0 waits longest (more tensors) only on 1 rank */
    int L = (int)cfg.n_layers, first = L * g_rank / g_size, next = L * (g_rank + 1) / g_size;
    sq_load_stage_desc s = {first, next - first, g_rank == 0, g_rank == g_size - 1};
    prog_seen seen = {0};
    sq_load_options o = sq_load_options_default();
    o.comm = MPI_COMM_WORLD;
    o.progress = on_prog;   /* only rank 0's is called */
    o.progress_user = &seen;
    o.progress_interval_s = 0.001;
    if (g_rank == g_size - 1) usleep(100000);   /* the last rank starts late: no one waits */
    sq_status rc = sq_load_stage(st, m, &s, &o, drop_slowly, NULL, NULL, &err);
    ck_assert_msg(all_ranks(rc == SQ_OK), "%s", err.msg);
    const char *f = NULL;
    if (g_rank == 0) {
        if (seen.n_final != 1 || seen.ranks_done != g_size || seen.n_ranks != g_size)
            f = FAIL("final reports %d, ranks done %d/%d", seen.n_final, seen.ranks_done,
                     seen.n_ranks);
        else if (seen.done != sq_ckpt_data_bytes(st) || seen.total != seen.done)
            f = FAIL("bytes %llu / %llu, want %llu", (unsigned long long)seen.done,
                     (unsigned long long)seen.total,
                     (unsigned long long)sq_ckpt_data_bytes(st));
        else if (seen.n < 2)
            f = FAIL("only %d reports", seen.n);
    } else if (seen.n != 0) {
        f = "";   /* not rank 0's verdict: reported below */
    }
    ck_assert_msg(all_ranks(g_rank == 0 || seen.n == 0), "a non-root rank reported progress");
    verdict(g_rank == 0 ? f : NULL);
    sq_meta_destroy(m);
    sq_ckpt_close(st);
}
END_TEST

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    int ok = 1;
    if (g_rank == 0) {
        char tag[32];
        snprintf(tag, sizeof tag, "quantize-np%d", g_size);
        char *d = sq_test_tmpdir(tag);
        snprintf(g_base, sizeof g_base, "%s", d ? d : "");
        free(d);
        snprintf(g_src, sizeof g_src, "%s/src", g_base);
        sq_model_config cfg;
        sq_error err;
        ok = g_base[0] && sq_config_preset("tiny", SQ_ARCH_LLAMA, &cfg, &err) == SQ_OK &&
             mkdir(g_src, 0755) == 0;
        /* three files: embed + layer 0 | layers 1-2 | layer 3 + norm + lm_head */
        int split[3] = {0, lf_layer_first_tensor(&cfg, 1), lf_layer_first_tensor(&cfg, 3)};
        ok = ok && lf_make_model(g_src, &cfg, 3, split) == 0;
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(g_base, sizeof g_base, MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_Bcast(g_src, sizeof g_src, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!ok) {
        fprintf(stderr, "fixture failed\n");
        MPI_Finalize();
        return 1;
    }
    Suite *s = suite_create("quantize_mpi");
    TCase *tc = tcase_create("quantize");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rank_counts_identical);
    tcase_add_test(tc, test_prequantized_read_back);
    tcase_add_test(tc, test_failing_rank_leaves_nothing);
    tcase_add_test(tc, test_progress_across_ranks);
    tcase_add_test(tc, test_trace_of_quantize);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);   /* every rank prints its own failures */
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0 && !failed) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_base);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_base);
    }
    MPI_Finalize();
    return failed ? 1 : 0;
}
