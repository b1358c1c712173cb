/* Unit tests of the safetensors module: writer round trips, the reader on hand-made bytes,
 * every bad input of issue 2 that concerns safetensors files and index.json (status code AND
 * a message naming the file and the cause), model folders (single, only file, sharded with a
 * layer spanning two files), the conversions against scalar references over every 16-bit
 * pattern and many float32 patterns (in test_safetensors_convert.c), and a replay of the
 * fuzzer's seed corpus.
 * `test_safetensors --bench` prints conversion throughput instead of testing. */
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shardq/safetensors.h"
#include "testutil.h"

static char *g_dir; /* a fresh folder for this run's fixtures */

/* tests/test_safetensors_convert.c */
TCase *st_convert_tcase(void);
int st_convert_bench(void);

static char *path_in(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *fresh_dir(const char *tag) {
    char *p = path_in(g_dir, tag);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    return p;
}

/* A raw file: 8-byte little-endian length of `header`, the header, then n_data bytes
 * (0, 1, 2, ... mod 251). `hlen_override` replaces the length prefix when not ~0. */
static void write_raw(const char *path, const char *header, uint64_t hlen_override, size_t n_data) {
    size_t h = strlen(header);
    uint64_t len = hlen_override != ~0ull ? hlen_override : h;
    uint8_t *buf = malloc(8 + h + n_data + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < n_data; i++) buf[8 + h + i] = (uint8_t)(i % 251);
    ck_assert_int_eq(sq_test_write_file(path, buf, 8 + h + n_data), 0);
    free(buf);
}

static void assert_msg_has(const sq_error *err, const char *needle) {
    char line[2048];
    sq_error_format(err, line, sizeof line);
    ck_assert_msg(needle == NULL || strstr(line, needle) != NULL,
                  "message \"%s\" lacks \"%s\"", line, needle);
    ck_assert_msg(strchr(line, '\n') == NULL, "message is not one line: %s", line);
}

/* Opens path, which must fail with `code`; the message must name the file and contain the
 * cause (and the tensor, when given). */
static void expect_file_error(const char *path, sq_status code, const char *cause,
                              const char *tensor) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_file *f = (sq_st_file *)0x1;
    sq_status st = sq_st_file_open(path, &f, &err);
    char line[2048];
    sq_error_format(&err, line, sizeof line);
    ck_assert_msg(st == code, "%s: got status %s, want %s (%s)", path, sq_status_name(st),
                  sq_status_name(code), line);
    ck_assert_int_eq(err.code, code);
    ck_assert_ptr_null(f);
    assert_msg_has(&err, path);
    assert_msg_has(&err, cause);
    if (tensor) {
        char q[300];
        snprintf(q, sizeof q, "tensor '%s'", tensor);
        assert_msg_has(&err, q);
    }
}

/* Writes header + data as a file called `name` and expects the error. */
static void bad_file(const char *name, const char *header, size_t n_data, sq_status code,
                     const char *cause, const char *tensor) {
    char *p = path_in(g_dir, name);
    write_raw(p, header, ~0ull, n_data);
    expect_file_error(p, code, cause, tensor);
    free(p);
}

/* ---- dtypes ------------------------------------------------------------------------------ */

START_TEST(test_dtype_table) {
    static const char *names[] = {"F64", "F32", "F16", "BF16", "I64", "I32",
                                  "I16", "I8",  "U8",  "BOOL", "F8_E4M3", "F8_E5M2"};
    static const size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1, 1, 1};
    ck_assert_int_eq(SQ_DTYPE_COUNT, 12);
    for (int d = 0; d < SQ_DTYPE_COUNT; d++) {
        ck_assert_str_eq(sq_dtype_name((sq_dtype)d), names[d]);
        ck_assert_uint_eq(sq_dtype_size((sq_dtype)d), sizes[d]);
        sq_dtype got = SQ_DTYPE_COUNT;
        ck_assert(sq_dtype_from_name(names[d], &got));
        ck_assert_int_eq(got, d);
    }
    sq_dtype got;
    ck_assert(!sq_dtype_from_name("bf16", &got));
    ck_assert(!sq_dtype_from_name("F4", &got));
    ck_assert(!sq_dtype_from_name("", &got));
    ck_assert(!sq_dtype_from_name(NULL, &got));
}
END_TEST

/* ---- writer round trip -------------------------------------------------------------------- */

START_TEST(test_writer_round_trip) {
    char *dir = fresh_dir("rt");
    char *path = path_in(dir, "w.safetensors");
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_writer *w = NULL;
    ck_assert_int_eq(sq_st_writer_create(path, &w, &err), SQ_OK);
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    uint16_t b[4] = {0x3f80, 0xbf80, 0x7f80, 0x0001};
    int64_t c = -42;
    uint8_t d[3] = {1, 0, 1};
    int64_t sa[2] = {2, 3}, sb[1] = {4}, sd[1] = {3}, sz[2] = {0, 5};
    ck_assert_int_eq(sq_st_writer_add(w, "z.first", SQ_DTYPE_F32, 2, sa, a, sizeof a, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "a.second", SQ_DTYPE_BF16, 1, sb, b, sizeof b, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "scalar", SQ_DTYPE_I64, 0, NULL, &c, 8, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "empty", SQ_DTYPE_F16, 2, sz, NULL, 0, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "quote\"back\\slash\nnl", SQ_DTYPE_BOOL, 1, sd, d, 3, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_metadata(w, "format", "pt", &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_metadata(w, "note", "a \"quoted\" value", &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_finish(w, true, &err), SQ_OK);
    sq_st_writer_destroy(w);

    /* the raw bytes: length prefix, padded header, keys in insertion order */
    size_t n = 0;
    char *raw = sq_test_read_file(path, &n);
    ck_assert_ptr_nonnull(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)raw[i];
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_uint_eq(n, 8 + hlen + 24 + 8 + 8 + 0 + 3);
    ck_assert(raw[8] == '{');
    ck_assert(strncmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"", 30) == 0);
    char *p1 = strstr(raw + 8, "\"z.first\""), *p2 = strstr(raw + 8, "\"a.second\""),
         *p3 = strstr(raw + 8, "\"scalar\"");
    ck_assert(p1 && p2 && p3 && p1 < p2 && p2 < p3);
    ck_assert(strstr(raw + 8, "\"z.first\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"));
    for (uint64_t i = 8 + hlen; i > 8 && raw[i - 1] != '}'; i--) ck_assert(raw[i - 1] == ' ');
    free(raw);

    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(path, &f, &err), SQ_OK);
    ck_assert_str_eq(sq_st_file_path(f), path);
    ck_assert_uint_eq(sq_st_file_size(f), n);
    ck_assert_uint_eq(sq_st_file_n_tensors(f), 5);
    const char *order[] = {"z.first", "a.second", "scalar", "empty", "quote\"back\\slash\nnl"};
    uint64_t at = 8 + hlen;
    for (size_t i = 0; i < 5; i++) {
        const sq_tensor_info *t = sq_st_file_tensor(f, i);
        ck_assert_str_eq(t->name, order[i]);
        ck_assert_ptr_eq(sq_st_file_find(f, order[i]), t);
        ck_assert_uint_eq(t->offset, at);
        ck_assert_int_eq(t->file_index, 0);
        at += t->n_bytes;
    }
    ck_assert_ptr_null(sq_st_file_tensor(f, 5));
    ck_assert_ptr_null(sq_st_file_find(f, "missing"));
    const sq_tensor_info *t = sq_st_file_find(f, "z.first");
    ck_assert_int_eq(t->dtype, SQ_DTYPE_F32);
    ck_assert_int_eq(t->n_dims, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->n_elements, 6);
    ck_assert_uint_eq(t->n_bytes, 24);
    ck_assert_mem_eq(sq_st_file_data(f, t), a, sizeof a);
    t = sq_st_file_find(f, "a.second");
    ck_assert_int_eq(t->dtype, SQ_DTYPE_BF16);
    ck_assert_mem_eq(sq_st_file_data(f, t), b, sizeof b);
    t = sq_st_file_find(f, "scalar");
    ck_assert_int_eq(t->n_dims, 0);
    ck_assert_uint_eq(t->n_elements, 1);
    ck_assert_mem_eq(sq_st_file_data(f, t), &c, 8);
    t = sq_st_file_find(f, "empty");
    ck_assert_uint_eq(t->n_elements, 0);
    ck_assert_uint_eq(t->n_bytes, 0);
    ck_assert_int_eq(t->shape[1], 5);
    t = sq_st_file_find(f, "quote\"back\\slash\nnl");
    ck_assert_int_eq(t->dtype, SQ_DTYPE_BOOL);
    ck_assert_mem_eq(sq_st_file_data(f, t), d, 3);
    ck_assert_str_eq(sq_st_file_metadata(f, "format"), "pt");
    ck_assert_str_eq(sq_st_file_metadata(f, "note"), "a \"quoted\" value");
    ck_assert_ptr_null(sq_st_file_metadata(f, "nope"));
    /* a tensor that belongs to another handle gives no data */
    sq_tensor_info other = *sq_st_file_tensor(f, 0);
    ck_assert_ptr_null(sq_st_file_data(f, &other));
    sq_st_file_close(f);

    /* no temporary left behind */
    DIR *dd = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(dd));) entries += e->d_name[0] != '.';
    closedir(dd);
    ck_assert_int_eq(entries, 1);
    free(path);
    free(dir);
}
END_TEST

START_TEST(test_writer_two_phase) {
    char *dir = fresh_dir("twophase");
    char *path = path_in(dir, "r.safetensors");
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    sq_error err;
    sq_error_init(&err, -1);
    float v[2] = {1, 2};
    int64_t s[1] = {2};

    /* finish without rename, then commit */
    sq_st_writer *w = NULL;
    ck_assert_int_eq(sq_st_writer_create(path, &w, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "x", SQ_DTYPE_F32, 1, s, v, 8, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_commit(w, &err), SQ_ERR_INVALID);
    assert_msg_has(&err, "commit before finish");
    ck_assert_int_eq(sq_st_writer_finish(w, false, &err), SQ_OK);
    ck_assert_int_eq(access(path, F_OK), -1);
    ck_assert_int_eq(access(tmp, F_OK), 0);
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_F32, 1, s, v, 8, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_st_writer_commit(w, &err), SQ_OK);
    ck_assert_int_eq(access(path, F_OK), 0);
    ck_assert_int_eq(access(tmp, F_OK), -1);
    ck_assert_int_eq(sq_st_writer_commit(w, &err), SQ_ERR_INVALID);
    sq_st_writer_destroy(w);
    ck_assert_int_eq(access(path, F_OK), 0);
    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(path, &f, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_file_n_tensors(f), 1);
    sq_st_file_close(f);

    /* finish without rename, then destroy: the temporary goes, the old file stays */
    ck_assert_int_eq(sq_st_writer_create(path, &w, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "x", SQ_DTYPE_F32, 1, s, v, 8, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_F32, 1, s, v, 8, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_finish(w, false, &err), SQ_OK);
    ck_assert_int_eq(access(tmp, F_OK), 0);
    sq_st_writer_destroy(w);
    ck_assert_int_eq(access(tmp, F_OK), -1);
    ck_assert_int_eq(sq_st_file_open(path, &f, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_file_n_tensors(f), 1);
    sq_st_file_close(f);

    /* a writer into a folder that does not exist fails at finish, leaving nothing */
    char *bad = path_in(dir, "nodir/x.safetensors");
    ck_assert_int_eq(sq_st_writer_create(bad, &w, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_finish(w, true, &err), SQ_ERR_IO);
    assert_msg_has(&err, "nodir/x.safetensors.tmp.");
    sq_st_writer_destroy(w);
    sq_st_writer_destroy(NULL);
    free(bad);
    free(path);
    free(dir);
}
END_TEST

START_TEST(test_writer_rejects) {
    char *path = path_in(g_dir, "rej.safetensors");
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_writer *w = NULL;
    ck_assert_int_eq(sq_st_writer_create(path, &w, &err), SQ_OK);
    float v[4] = {0};
    int64_t s[1] = {4}, neg[1] = {-4}, many[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(sq_st_writer_add(w, "x", SQ_DTYPE_F32, 1, s, v, 16, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_add(w, "x", SQ_DTYPE_F32, 1, s, v, 16, &err), SQ_ERR_INVALID);
    assert_msg_has(&err, "duplicate tensor name");
    assert_msg_has(&err, "tensor 'x'");
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_F32, 1, s, v, 12, &err), SQ_ERR_INVALID);
    assert_msg_has(&err, "needs 16");
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_F32, 1, neg, v, 16, &err), SQ_ERR_INVALID);
    assert_msg_has(&err, "negative");
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_F32, 9, many, v, 4, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_st_writer_add(w, "__metadata__", SQ_DTYPE_F32, 1, s, v, 16, &err),
                     SQ_ERR_INVALID);
    ck_assert_int_eq(sq_st_writer_add(w, "y", SQ_DTYPE_COUNT, 1, s, v, 16, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_st_writer_metadata(w, "k", "v", &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_metadata(w, "k", "w", &err), SQ_ERR_INVALID);
    /* many names: the hash set grows and still finds every duplicate */
    char name[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "t.%d", i);
        ck_assert_int_eq(sq_st_writer_add(w, name, SQ_DTYPE_U8, 0, NULL, v, 1, &err), SQ_OK);
    }
    for (int i = 0; i < 3000; i += 7) {
        snprintf(name, sizeof name, "t.%d", i);
        ck_assert_int_eq(sq_st_writer_add(w, name, SQ_DTYPE_U8, 0, NULL, v, 1, &err), SQ_ERR_INVALID);
    }
    ck_assert_int_eq(sq_st_writer_finish(w, true, &err), SQ_OK);
    sq_st_writer_destroy(w);
    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(path, &f, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_file_n_tensors(f), 3001);
    ck_assert_uint_eq(sq_st_file_find(f, "t.2999")->offset - sq_st_file_find(f, "t.0")->offset,
                      2999);
    sq_st_file_close(f);
    free(path);
}
END_TEST

/* ---- reader on hand-made bytes --------------------------------------------------------------- */

START_TEST(test_header_check_buffers) {
    sq_error err;
    sq_error_init(&err, -1);
    const char *h = "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                    "\"s\":{\"dtype\":\"I8\",\"shape\":[],\"data_offsets\":[8,9]},"
                    "\"e\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[9,9],\"extra\":1},"
                    "\"__metadata__\":{\"k\":\"v\"}}   \n";
    size_t hn = strlen(h);
    uint8_t buf[512] = {0};
    buf[0] = (uint8_t)hn;
    memcpy(buf + 8, h, hn);
    size_t n = 0;
    ck_assert_int_eq(sq_st_header_check(buf, 8 + hn + 9, 8 + hn + 9, "mem", &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 3);
    /* more file than the tensors use is fine; less is not */
    ck_assert_int_eq(sq_st_header_check(buf, 8 + hn, 8 + hn + 100, "mem", &n, &err), SQ_OK);
    ck_assert_int_eq(sq_st_header_check(buf, 8 + hn, 8 + hn + 8, "mem", &n, &err), SQ_ERR_IO);
    assert_msg_has(&err, "mem: tensor 's': data_offsets [8, 9] end past the end of the data "
                         "section (8 bytes)");
    /* a buffer shorter than the header it announces */
    ck_assert_int_eq(sq_st_header_check(buf, 20, 8 + hn + 9, "mem", &n, &err), SQ_ERR_IO);
    assert_msg_has(&err, "header truncated");
    ck_assert_int_eq(sq_st_header_check(buf, 4, 8 + hn + 9, "mem", &n, &err), SQ_ERR_IO);
    /* an empty header object is a valid file with no tensors */
    uint8_t e[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    ck_assert_int_eq(sq_st_header_check(e, 16, 16, "mem", &n, &err), SQ_OK);
    ck_assert_uint_eq(n, 0);
    /* NUL padding is not JSON whitespace */
    e[15] = 0;
    ck_assert_int_eq(sq_st_header_check(e, 16, 16, "mem", &n, &err), SQ_ERR_FORMAT);
    assert_msg_has(&err, "unexpected bytes after the object");
}
END_TEST

START_TEST(test_hand_made_file_data) {
    /* two F32 tensors stored in reverse order of the header; unaligned offsets are allowed */
    char *p = path_in(g_dir, "hand.safetensors");
    write_raw(p,
              "{\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[5,8]},"
              "\"a\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[0,5]}}",
              ~0ull, 8);
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(p, &f, &err), SQ_OK);
    const uint8_t *b = sq_st_file_data(f, sq_st_file_find(f, "b"));
    const uint8_t *a = sq_st_file_data(f, sq_st_file_find(f, "a"));
    ck_assert_int_eq(a[0], 0);
    ck_assert_int_eq(a[4], 4);
    ck_assert_int_eq(b[0], 5);
    ck_assert_int_eq(b[2], 7);
    ck_assert_str_eq(sq_st_file_tensor(f, 0)->name, "b");
    sq_st_file_close(f);
    sq_st_file_close(NULL);
    free(p);
}
END_TEST

/* A file written by the official safetensors package (tests/reference/make_st_fuzz_seed.py): read
 * exactly, and rewritten by sq_st_writer in the same order it is the same file, byte for byte. */
START_TEST(test_rust_crate_file) {
    const char *path = SQ_SOURCE_DIR "/tests/fuzz/corpus_st/ok_rust_crate";
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(path, &f, &err), SQ_OK);
    static const char *names[] = {"d.i64", "c.f64", "b.f32", "g.scalar", "model.embed_tokens.weight",
                                  "a.f16", "f.f8", "h.empty", "e.bool"};
    static const sq_dtype dtypes[] = {SQ_DTYPE_I64, SQ_DTYPE_F64, SQ_DTYPE_F32, SQ_DTYPE_F32,
                                      SQ_DTYPE_BF16, SQ_DTYPE_F16, SQ_DTYPE_F8_E4M3, SQ_DTYPE_I8,
                                      SQ_DTYPE_BOOL};
    ck_assert_uint_eq(sq_st_file_n_tensors(f), 9);
    const sq_tensor_info *first = sq_st_file_tensor(f, 0);
    ck_assert_uint_eq(first->offset % 8, 0);
    for (size_t i = 0; i < 9; i++) {
        ck_assert_str_eq(sq_st_file_tensor(f, i)->name, names[i]);
        ck_assert_int_eq(sq_st_file_tensor(f, i)->dtype, dtypes[i]);
    }
    ck_assert_str_eq(sq_st_file_metadata(f, "format"), "pt");
    float v[12];
    const sq_tensor_info *t = sq_st_file_find(f, "d.i64");
    int64_t i64;
    memcpy(&i64, sq_st_file_data(f, t), 8);
    ck_assert_int_eq(i64, -7);
    t = sq_st_file_find(f, "c.f64");
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_st_file_data(f, t), v, 1, &err), SQ_OK);
    ck_assert_float_eq(v[0], 3.25f);
    t = sq_st_file_find(f, "b.f32");
    ck_assert_int_eq(t->n_dims, 2);
    ck_assert_int_eq(t->shape[0], 1);
    ck_assert_int_eq(t->shape[1], 2);
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_st_file_data(f, t), v, 2, &err), SQ_OK);
    ck_assert_float_eq(v[0], 1.5f);
    ck_assert_float_eq(v[1], 2.5f);
    t = sq_st_file_find(f, "g.scalar");
    ck_assert_int_eq(t->n_dims, 0);
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_st_file_data(f, t), v, 1, &err), SQ_OK);
    ck_assert_float_eq(v[0], 9.0f);
    t = sq_st_file_find(f, "model.embed_tokens.weight");
    ck_assert_uint_eq(t->n_elements, 12);
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_st_file_data(f, t), v, 12, &err), SQ_OK);
    for (int i = 0; i < 12; i++) ck_assert_float_eq(v[i], (float)i / 8);
    t = sq_st_file_find(f, "a.f16");
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_st_file_data(f, t), v, 3, &err), SQ_OK);
    ck_assert_float_eq(v[0], 0.5f);
    ck_assert_float_eq(v[1], -2.0f);
    ck_assert_float_eq(v[2], 65504.0f);
    t = sq_st_file_find(f, "f.f8");
    ck_assert_mem_eq(sq_st_file_data(f, t), "\x38\xb0", 2); /* e4m3fn 1.0, -0.5 */
    t = sq_st_file_find(f, "e.bool");
    ck_assert_mem_eq(sq_st_file_data(f, t), "\x01\x00", 2);
    t = sq_st_file_find(f, "h.empty");
    ck_assert_uint_eq(t->n_bytes, 0);
    ck_assert_int_eq(t->shape[0], 0);
    ck_assert_int_eq(t->shape[1], 3);

    char *out = path_in(g_dir, "rewritten.safetensors");
    sq_st_writer *w = NULL;
    ck_assert_int_eq(sq_st_writer_create(out, &w, &err), SQ_OK);
    ck_assert_int_eq(sq_st_writer_metadata(w, "format", "pt", &err), SQ_OK);
    for (size_t i = 0; i < 9; i++) {
        t = sq_st_file_tensor(f, i);
        ck_assert_int_eq(sq_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape,
                                          sq_st_file_data(f, t), t->n_bytes, &err), SQ_OK);
    }
    ck_assert_int_eq(sq_st_writer_finish(w, true, &err), SQ_OK);
    sq_st_writer_destroy(w);
    size_t na = 0, nb = 0;
    char *a = sq_test_read_file(path, &na), *b = sq_test_read_file(out, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(a, b, na);
    free(a);
    free(b);
    free(out);
    sq_st_file_close(f);
}
END_TEST

/* ---- every bad input of issue 2 (files) ------------------------------------------------ */

#define T1(dtype, shape, offs) "{\"w\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

START_TEST(test_bad_empty_and_short) {
    char *p = path_in(g_dir, "empty.safetensors");
    ck_assert_int_eq(sq_test_write_file(p, "", 0), 0);
    expect_file_error(p, SQ_ERR_FORMAT, "empty file", NULL);
    free(p);
    p = path_in(g_dir, "short.safetensors");
    ck_assert_int_eq(sq_test_write_file(p, "\x02\0\0\0\0", 5), 0);
    expect_file_error(p, SQ_ERR_FORMAT, "5 bytes, shorter than the 8-byte header length", NULL);
    free(p);
    p = path_in(g_dir, "missing.safetensors");
    expect_file_error(p, SQ_ERR_IO, "cannot open: No such file", NULL);
    free(p);
    expect_file_error(g_dir, SQ_ERR_IO, "is a folder", NULL);
}
END_TEST

START_TEST(test_bad_header_length) {
    char *p = path_in(g_dir, "hlen.safetensors");
    write_raw(p, "{}      ", 9, 0); /* says 9, has 8 */
    expect_file_error(p, SQ_ERR_IO, "header length 9 bytes is larger than the file (8 bytes", NULL);
    write_raw(p, "{}      ", 0xffffffffffffffffull - 3, 0); /* overflow bait */
    expect_file_error(p, SQ_ERR_FORMAT, "exceeds the 100 MB limit", NULL);
    write_raw(p, "{}      ", 100000001, 0);
    expect_file_error(p, SQ_ERR_FORMAT, "header length 100000001 bytes exceeds the 100 MB limit", NULL);
    write_raw(p, "{}      ", 100000000, 0); /* at the cap: then too long for the file */
    expect_file_error(p, SQ_ERR_IO, "larger than the file", NULL);
    free(p);
}
END_TEST

START_TEST(test_bad_json) {
    bad_file("notjson.safetensors", "{\"w\": {\"dtype\": ", 0, SQ_ERR_FORMAT,
             "header is not valid JSON", NULL);
    bad_file("garbage.safetensors", "\x89PNG\r\n\x1a\n", 0, SQ_ERR_FORMAT, "not valid JSON", NULL);
    bad_file("trailing.safetensors", "{} {}", 0, SQ_ERR_FORMAT, "unexpected bytes after the object",
             NULL);
    bad_file("array.safetensors", "[1, 2]", 0, SQ_ERR_FORMAT,
             "header is an array, not a JSON object", NULL);
    bad_file("string.safetensors", "\"hi\"", 0, SQ_ERR_FORMAT, "header is a string, not a JSON object",
             NULL);
    bad_file("entry.safetensors", "{\"w\": 5}", 0, SQ_ERR_FORMAT, "header entry is a number, not an object", "w");
    bad_file("nodtype.safetensors", "{\"w\":{\"shape\":[],\"data_offsets\":[0,0]}}", 0,
             SQ_ERR_FORMAT, "no \"dtype\"", "w");
    bad_file("twodtype.safetensors",
             "{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1,
             SQ_ERR_FORMAT, "key \"dtype\" appears twice", "w");
    bad_file("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0, SQ_ERR_FORMAT,
             "__metadata__ value for \"k\" is a number, not a string", NULL);
    bad_file("meta2.safetensors", "{\"__metadata__\":[]}", 0, SQ_ERR_FORMAT,
             "__metadata__ is an array, not an object", NULL);
    bad_file("meta3.safetensors", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, SQ_ERR_FORMAT,
             "__metadata__ key \"k\" appears twice", NULL);
}
END_TEST

START_TEST(test_bad_dtype) {
    bad_file("dtype.safetensors", T1("F4", "[2]", "[0,1]"), 1, SQ_ERR_UNSUPPORTED,
             "unknown dtype 'F4' (safetensors dtypes: F64 F32 F16 BF16", "w");
    bad_file("dtype2.safetensors", T1("bf16", "[2]", "[0,4]"), 4, SQ_ERR_UNSUPPORTED,
             "unknown dtype 'bf16'", "w");
    bad_file("dtype3.safetensors", "{\"w\":{\"dtype\":7,\"shape\":[],\"data_offsets\":[0,1]}}", 1,
             SQ_ERR_FORMAT, "dtype is a number, not a string", "w");
}
END_TEST

START_TEST(test_bad_shape) {
    bad_file("span.safetensors", T1("F32", "[2,3]", "[0,20]"), 24, SQ_ERR_FORMAT,
             "shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20 bytes", "w");
    bad_file("span2.safetensors", T1("BF16", "[4]", "[0,16]"), 16, SQ_ERR_FORMAT,
             "needs 8 bytes but data_offsets [0, 16] span 16 bytes", "w");
    bad_file("neg.safetensors", T1("F32", "[2,-3]", "[0,24]"), 24, SQ_ERR_FORMAT,
             "shape entry 1 (-3) is negative", "w");
    bad_file("frac.safetensors", T1("F32", "[2.5,2]", "[0,20]"), 24, SQ_ERR_FORMAT,
             "shape entry 0 (2.5) is not an integer", "w");
    bad_file("strdim.safetensors", T1("F32", "[\"2\"]", "[0,8]"), 8, SQ_ERR_FORMAT,
             "shape entry 0 is a string, not a non-negative integer", "w");
    bad_file("nulldim.safetensors", T1("F32", "[null]", "[0,8]"), 8, SQ_ERR_FORMAT,
             "shape entry 0 is null", "w");
    bad_file("huge.safetensors", T1("F32", "[1e300]", "[0,8]"), 8, SQ_ERR_FORMAT,
             "is larger than 2^53", "w");
    bad_file("notarray.safetensors", T1("F32", "{}", "[0,8]"), 8, SQ_ERR_FORMAT,
             "shape is an object, not an array", "w");
    bad_file("dims.safetensors", T1("U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]"), 1, SQ_ERR_UNSUPPORTED,
             "more than 8 dimensions", "w");
    bad_file("overflow.safetensors", T1("F32", "[4294967296,4294967296,16]", "[0,8]"), 8,
             SQ_ERR_FORMAT, "element count overflows 64 bits", "w");
    bad_file("overflow2.safetensors", T1("F64", "[2147483648,4294967296]", "[0,8]"), 8,
             SQ_ERR_FORMAT, "overflows 64 bits of bytes", "w");
}
END_TEST

START_TEST(test_bad_offsets) {
    bad_file("past.safetensors", T1("F32", "[2]", "[0,8]"), 7, SQ_ERR_IO,
             "data_offsets [0, 8] end past the end of the data section (7 bytes)", "w");
    bad_file("past2.safetensors", T1("U8", "[1]", "[1000000000000,1000000000001]"), 7, SQ_ERR_IO,
             "past the end of the data section", "w");
    bad_file("rev.safetensors", T1("U8", "[0]", "[4,0]"), 8, SQ_ERR_FORMAT,
             "data_offsets [4, 0] end before they begin", "w");
    bad_file("negoff.safetensors", T1("U8", "[1]", "[-1,0]"), 8, SQ_ERR_FORMAT,
             "data_offsets begin is negative", "w");
    bad_file("fracoff.safetensors", T1("U8", "[1]", "[0,1.5]"), 8, SQ_ERR_FORMAT,
             "data_offsets end is not an integer", "w");
    bad_file("threeoff.safetensors", T1("U8", "[1]", "[0,1,2]"), 8, SQ_ERR_FORMAT,
             "data_offsets is an array of the wrong length", "w");
    bad_file("overlap.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             12, SQ_ERR_FORMAT, "data_offsets [4, 12) overlap tensor 'a' [0, 8)", "b");
    bad_file("contained.safetensors",
             "{\"big\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
             "\"mid\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]},"
             "\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
             16, SQ_ERR_FORMAT, "overlap tensor 'big'", NULL);
    bad_file("same.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             4, SQ_ERR_FORMAT, "overlap tensor", NULL);
    /* empty tensors own no bytes: sitting inside another one is fine */
    char *p = path_in(g_dir, "emptyin.safetensors");
    write_raw(p,
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
              "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
              ~0ull, 4);
    sq_error err;
    sq_st_file *f = NULL;
    ck_assert_int_eq(sq_st_file_open(p, &f, &err), SQ_OK);
    sq_st_file_close(f);
    free(p);
}
END_TEST

START_TEST(test_bad_duplicates) {
    bad_file("dup.safetensors",
             "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"v\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
             "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
             3, SQ_ERR_FORMAT, "duplicate tensor name", "w");
}
END_TEST

/* ---- model folders ---------------------------------------------------------------------- */

/* Writes `n` tensors named names[i] (F32, shape [i + 1, 2], values i * 100 + j) into path. */
static void write_shard(const char *path, const char **names, int n, int first) {
    sq_error err;
    sq_st_writer *w = NULL;
    ck_assert_int_eq(sq_st_writer_create(path, &w, &err), SQ_OK);
    for (int i = 0; i < n; i++) {
        int k = first + i;
        float v[64];
        for (int j = 0; j < 2 * (k + 1); j++) v[j] = (float)(k * 100 + j);
        int64_t shape[2] = {k + 1, 2};
        ck_assert_int_eq(sq_st_writer_add(w, names[i], SQ_DTYPE_F32, 2, shape, v,
                                          (uint64_t)(8 * (k + 1)), &err), SQ_OK);
    }
    ck_assert_int_eq(sq_st_writer_finish(w, true, &err), SQ_OK);
    sq_st_writer_destroy(w);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = path_in(dir, name);
    ck_assert_int_eq(sq_test_write_file(p, text, strlen(text)), 0);
    free(p);
}

static const char *k_names1[] = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                 "model.layers.0.self_attn.k_proj.weight"};
static const char *k_names2[] = {"model.layers.0.self_attn.v_proj.weight",
                                 "model.layers.0.self_attn.o_proj.weight", "model.norm.weight"};
#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static char *make_sharded(const char *tag) {
    char *dir = fresh_dir(tag);
    char *p1 = path_in(dir, SHARD1), *p2 = path_in(dir, SHARD2);
    write_shard(p1, k_names1, 3, 0);
    write_shard(p2, k_names2, 3, 3);
    free(p1);
    free(p2);
    return dir;
}

static const char *k_index =
    "{\"metadata\":{\"total_size\":168},\"weight_map\":{"
    "\"model.embed_tokens.weight\":\"" SHARD1 "\","
    "\"model.layers.0.self_attn.q_proj.weight\":\"" SHARD1 "\","
    "\"model.layers.0.self_attn.k_proj.weight\":\"" SHARD1 "\","
    "\"model.layers.0.self_attn.v_proj.weight\":\"" SHARD2 "\","
    "\"model.layers.0.self_attn.o_proj.weight\":\"" SHARD2 "\","
    "\"model.norm.weight\":\"" SHARD2 "\"}}";

START_TEST(test_model_sharded) {
    char *dir = make_sharded("sharded");
    /* an index listed in reverse order: the files still come in name order */
    write_text(dir, "model.safetensors.index.json", k_index);
    write_text(dir, "stray.txt", "not a model");
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_model *m = NULL;
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_model_n_files(m), 2);
    ck_assert(strstr(sq_st_model_file_path(m, 0), SHARD1));
    ck_assert(strstr(sq_st_model_file_path(m, 1), SHARD2));
    ck_assert_ptr_null(sq_st_model_file_path(m, 2));
    ck_assert_uint_eq(sq_st_model_n_tensors(m), 6);
    ck_assert_uint_eq(sq_st_model_data_bytes(m), 8 * (1 + 2 + 3 + 4 + 5 + 6));
    for (int k = 0; k < 6; k++) {
        const char *name = k < 3 ? k_names1[k] : k_names2[k - 3];
        const sq_tensor_info *t = sq_st_model_find(m, name);
        ck_assert_ptr_nonnull(t);
        ck_assert_ptr_eq(sq_st_model_tensor(m, (size_t)k), t);
        ck_assert_int_eq(t->file_index, k < 3 ? 0 : 1);
        ck_assert_ptr_eq(sq_st_file_find(sq_st_model_file(m, (size_t)t->file_index), name), t);
        ck_assert_int_eq(t->shape[0], k + 1);
        const float *v = sq_st_model_data(m, t);
        for (int j = 0; j < 2 * (k + 1); j++) ck_assert_float_eq(v[j], (float)(k * 100 + j));
    }
    ck_assert_ptr_null(sq_st_model_find(m, "model.layers.1.mlp.up_proj.weight"));
    ck_assert_ptr_null(sq_st_model_tensor(m, 6));
    sq_st_model_close(m);
    sq_st_model_close(NULL);
    /* a shard's tensor that weight_map leaves out is still found (transformers loads it too) */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.embed_tokens.weight\":\"" SHARD1 "\","
               "\"model.layers.0.self_attn.v_proj.weight\":\"" SHARD2 "\"}}");
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_model_n_tensors(m), 6);
    ck_assert_int_eq(sq_st_model_find(m, "model.norm.weight")->file_index, 1);
    sq_st_model_close(m);
    free(dir);
}
END_TEST

START_TEST(test_model_single_and_only) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_model *m = NULL;
    char *dir = fresh_dir("single");
    char *p = path_in(dir, "model.safetensors");
    write_shard(p, k_names1, 3, 0);
    write_text(dir, "other.safetensors", "junk: ignored because model.safetensors exists");
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_model_n_files(m), 1);
    ck_assert_uint_eq(sq_st_model_n_tensors(m), 3);
    ck_assert_int_eq(sq_st_model_find(m, k_names1[2])->file_index, 0);
    sq_st_model_close(m);
    free(p);
    free(dir);

    dir = fresh_dir("only");
    p = path_in(dir, "consolidated.safetensors");
    write_shard(p, k_names2, 3, 3);
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_OK);
    ck_assert_uint_eq(sq_st_model_n_tensors(m), 3);
    ck_assert(strstr(sq_st_model_file_path(m, 0), "consolidated.safetensors"));
    sq_st_model_close(m);
    free(p);

    p = path_in(dir, "second.safetensors");
    write_shard(p, k_names1, 3, 0);
    m = (sq_st_model *)0x1;
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_ERR_FORMAT);
    ck_assert_ptr_null(m);
    assert_msg_has(&err, dir);
    assert_msg_has(&err, "2 *.safetensors files");
    assert_msg_has(&err, "no model.safetensors.index.json");
    free(p);
    free(dir);

    dir = fresh_dir("none");
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_ERR_IO);
    assert_msg_has(&err, "no model.safetensors.index.json, model.safetensors or other");
    p = path_in(dir, "nope");
    ck_assert_int_eq(sq_st_model_open(p, &m, &err), SQ_ERR_IO);
    assert_msg_has(&err, "cannot open model folder");
    free(p);
    free(dir);

    /* a bad single file is reported with its own name */
    dir = fresh_dir("badsingle");
    p = path_in(dir, "model.safetensors");
    ck_assert_int_eq(sq_test_write_file(p, "", 0), 0);
    ck_assert_int_eq(sq_st_model_open(dir, &m, &err), SQ_ERR_FORMAT);
    assert_msg_has(&err, p);
    assert_msg_has(&err, "empty file");
    free(p);
    free(dir);
}
END_TEST

static void expect_model_error(const char *dir, sq_status code, const char *a, const char *b,
                               const char *c) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_st_model *m = (sq_st_model *)0x1;
    sq_status st = sq_st_model_open(dir, &m, &err);
    char line[2048];
    sq_error_format(&err, line, sizeof line);
    ck_assert_msg(st == code, "got %s want %s: %s", sq_status_name(st), sq_status_name(code), line);
    ck_assert_ptr_null(m);
    assert_msg_has(&err, a);
    assert_msg_has(&err, b);
    assert_msg_has(&err, c);
}

START_TEST(test_model_bad_index) {
    char *dir = make_sharded("badindex");
    /* index.json naming a missing file */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"" SHARD2 "\","
               "\"model.layers.1.mlp.up_proj.weight\":\"model-00003-of-00003.safetensors\"}}");
    expect_model_error(dir, SQ_ERR_IO, "model.safetensors.index.json",
                       "weight_map names file 'model-00003-of-00003.safetensors', which does not exist",
                       "tensor 'model.layers.1.mlp.up_proj.weight'");
    /* index.json naming a tensor its file lacks */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"" SHARD2 "\","
               "\"model.layers.0.self_attn.q_proj.weight\":\"" SHARD2 "\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "model.safetensors.index.json: tensor "
                       "'model.layers.0.self_attn.q_proj.weight'",
                       "weight_map puts the tensor in", SHARD2 ", which has no such tensor");
    /* the same tensor in two shards */
    char *p3 = path_in(dir, "model-extra.safetensors");
    write_shard(p3, k_names2 + 2, 1, 5);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"" SHARD2 "\","
               "\"model.embed_tokens.weight\":\"model-extra.safetensors\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "model-extra.safetensors", "tensor 'model.embed_tokens.weight'",
                       "which has no such tensor");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"" SHARD2 "\","
               "\"model.embed_tokens.weight\":\"" SHARD1 "\",\"x\":\"model-extra.safetensors\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "tensor 'x'", "which has no such tensor", NULL);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"model-extra.safetensors\","
               "\"model.embed_tokens.weight\":\"" SHARD1 "\",\"model.layers.0.self_attn.o_proj.weight\":\"" SHARD2 "\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "tensor 'model.norm.weight'", "tensor is also in",
                       SHARD2);
    free(p3);
    /* malformed indexes */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":");
    expect_model_error(dir, SQ_ERR_FORMAT, "model.safetensors.index.json", "not valid JSON", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "model.safetensors.index.json", "no \"weight_map\"", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "model.safetensors.index.json", "weight_map is empty", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../" SHARD1 "\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "tensor 'a'", "not the name of a file in the model folder", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":3}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "tensor 'a'", "not the name of a file", NULL);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"" SHARD2 "\",\"model.norm.weight\":\"" SHARD2 "\"}}");
    expect_model_error(dir, SQ_ERR_FORMAT, "tensor 'model.norm.weight'", "appears twice in weight_map", NULL);
    /* a shard that is itself broken is named */
    char *p2 = path_in(dir, SHARD2);
    write_raw(p2, T1("F32", "[2]", "[0,8]"), ~0ull, 3);
    write_text(dir, "model.safetensors.index.json", k_index);
    expect_model_error(dir, SQ_ERR_IO, SHARD2, "past the end of the data section", "tensor 'w'");
    free(p2);
    free(dir);
}
END_TEST

/* ---- the fuzzer's seed corpus: ok_* must pass, bad_* must fail ----------------------------- */

START_TEST(test_fuzz_corpus_replay) {
    const char *dir = SQ_SOURCE_DIR "/tests/fuzz/corpus_st";
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n_ok = 0, n_bad = 0;
    for (struct dirent *e; (e = readdir(d));) {
        bool ok = strncmp(e->d_name, "ok_", 3) == 0, bad = strncmp(e->d_name, "bad_", 4) == 0;
        if (!ok && !bad) continue;
        char *p = path_in(dir, e->d_name);
        size_t n = 0;
        uint8_t *buf = sq_test_read_file(p, &n);
        ck_assert_ptr_nonnull(buf);
        sq_error err;
        sq_error_init(&err, -1);
        size_t nt = 0;
        sq_status st = sq_st_header_check(buf, n, n, e->d_name, &nt, &err);
        ck_assert_msg((st == SQ_OK) == ok, "%s: %s (%s)", e->d_name, sq_status_name(st), err.msg);
        n_ok += ok;
        n_bad += bad;
        free(buf);
        free(p);
    }
    closedir(d);
    ck_assert_int_ge(n_ok, 2);
    ck_assert_int_ge(n_bad, 4);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dtype_table);
    tcase_add_test(tc, test_writer_round_trip);
    tcase_add_test(tc, test_writer_two_phase);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_header_check_buffers);
    tcase_add_test(tc, test_hand_made_file_data);
    tcase_add_test(tc, test_rust_crate_file);
    tcase_add_test(tc, test_bad_empty_and_short);
    tcase_add_test(tc, test_bad_header_length);
    tcase_add_test(tc, test_bad_json);
    tcase_add_test(tc, test_bad_dtype);
    tcase_add_test(tc, test_bad_shape);
    tcase_add_test(tc, test_bad_offsets);
    tcase_add_test(tc, test_bad_duplicates);
    tcase_add_test(tc, test_model_sharded);
    tcase_add_test(tc, test_model_single_and_only);
    tcase_add_test(tc, test_model_bad_index);
    tcase_add_test(tc, test_fuzz_corpus_replay);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, st_convert_tcase());
    return s;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) return st_convert_bench();
    g_dir = sq_test_tmpdir("st");
    if (!g_dir) return 1;
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (failed == 0 && system(cmd) != 0) failed = 1;
    free(g_dir);
    return failed ? 1 : 0;
}
