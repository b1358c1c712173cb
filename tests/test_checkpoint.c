/* Tests of the checkpoint module: GGUF files written by tests/gguf_writer.h (a tiny Llama with
 * a byte-level tokenizer) read through sq_ckpt (names, shapes, offsets, config, tokenizer),
 * Llama's Q / K rows put back in HF order, bad files refused with one line naming file and
 * tensor / key, every truncation refused, and the end-to-end check: a make-model Llama folder
 * rewritten as a GGUF (llama.cpp's names, dims and Q / K permutation) generates the same tokens
 * as the folder through `shardq run`, alone and on 2 ranks. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_writer.h"
#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "shardq/meta.h"
#include "shardq/safetensors.h"
#include "testutil.h"

#define H 64
#define FF 96
#define NL 2
#define NH 4
#define NKV 2
#define HD (H / NH)
#define V 16

static char *g_dir;
static float g_f32[FF * H + 64];    /* every F32 / F16 / BF16 tensor's data (large enough) */
static uint8_t g_q8[H * (FF / 32) * 34];   /* ffn_down [H rows, FF cols] in Q8_0 */
static float g_q[H * H];            /* attn_q in llama.cpp's row order: file row -> HF row */

static const char *const k_tokens[V] = {"<|endoftext|>", "a", "b", "c", "ab", "\xc4\xa0",
                                        "\xc4\xa0" "a", "abc", "x8", "x9", "x10", "x11",
                                        "x12", "x13", "x14", "x15"};
static const int32_t k_types[V] = {3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const char *const k_merges[] = {"a b", "\xc4\xa0 a", "ab c"};

/* Which part of a good file to break. */
enum { OK = 0, NO_MERGES, ARCH, SHAPE, TYPE_Q2K, TYPE_UNKNOWN, PAST_END, MISALIGNED,
       NO_BLOCKS, VERSION1, DUP };

static uint8_t *build(int variant, size_t *n) {
    gguf_w w;
    memset(&w, 0, sizeof w);
    if (variant == VERSION1) w.version = 1;
    gw_kv_str(&w, "general.architecture", variant == ARCH ? "falcon" : "llama");
    gw_kv_u32(&w, "general.alignment", 32);
    if (variant != NO_BLOCKS) gw_kv_u32(&w, "llama.block_count", NL);
    gw_kv_u32(&w, "llama.context_length", 256);
    gw_kv_u32(&w, "llama.embedding_length", H);
    gw_kv_u32(&w, "llama.feed_forward_length", FF);
    gw_kv_u32(&w, "llama.attention.head_count", NH);
    gw_kv_u32(&w, "llama.attention.head_count_kv", NKV);
    gw_kv_f32(&w, "llama.rope.freq_base", 500000.0f);
    gw_kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
    gw_kv_str(&w, "tokenizer.ggml.pre", "gpt2");
    gw_kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, V);
    gw_kv_i32s(&w, "tokenizer.ggml.token_type", k_types, V);
    if (variant != NO_MERGES) gw_kv_strs(&w, "tokenizer.ggml.merges", k_merges, 3);
    gw_kv_u32(&w, "tokenizer.ggml.bos_token_id", 0);
    gw_kv_u32(&w, "tokenizer.ggml.eos_token_id", 0);
    gw_kv_bool(&w, "tokenizer.ggml.add_bos_token", 0);
    gw_kv_str(&w, "tokenizer.chat_template", "{{'<|im_start|>' + message['role']}}");
    uint64_t emb[2] = {H, V}, norm[1] = {H};
    gw_tensor *t0 = gw_tensor_add(&w, "token_embd.weight", variant == TYPE_Q2K ? 10 : 0, 2, emb,
                                  g_f32, variant == TYPE_Q2K ? (H / 256 + 1) * 84 * V : H * V * 4);
    if (variant == TYPE_UNKNOWN) t0->type = 200;
    gw_tensor_add(&w, "output_norm.weight", 0, 1, norm, g_f32, H * 4);
    for (int L = 0; L < NL; L++) {
        char name[96];
        uint64_t sq[2] = {H, H}, kv[2] = {H, NKV * HD}, up[2] = {H, FF}, down[2] = {FF, H};
        if (variant == SHAPE && L == 1) kv[1] = NKV * HD + 2;
#define ADD(suffix, type, nd, ne, data, bytes)                                     \
        (snprintf(name, sizeof name, "blk.%d." suffix, L),                         \
         gw_tensor_add(&w, name, type, nd, ne, data, bytes))
        ADD("attn_norm.weight", 0, 1, norm, g_f32, H * 4);
        ADD("ffn_norm.weight", 0, 1, norm, g_f32, H * 4);
        ADD("attn_q.weight", 0, 2, sq, g_q, H * H * 4);
        ADD("attn_k.weight", 0, 2, kv, g_f32, kv[1] * H * 4);
        ADD("attn_v.weight", 0, 2, kv, g_f32, kv[1] * H * 4);
        ADD("attn_output.weight", 0, 2, sq, g_q, H * H * 4);
        ADD("ffn_gate.weight", 1, 2, up, g_f32, FF * H * 2);
        ADD("ffn_up.weight", 30, 2, up, g_f32, FF * H * 2);
        gw_tensor *d = ADD("ffn_down.weight", 8, 2, down, g_q8, sizeof g_q8);
        if (variant == PAST_END && L == 1) d->off_override = 1u << 24;
        if (variant == MISALIGNED && L == 1) d->off_override = 40;
#undef ADD
    }
    if (variant == DUP) snprintf(w.t[2].name, sizeof w.t[2].name, "%s", w.t[3].name);
    return gw_finish(&w, n);
}

static char *write_variant(int variant, const char *file) {
    size_t n = 0;
    uint8_t *b = build(variant, &n);
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, file);
    ck_assert_int_eq(sq_test_write_file(path, b, n), 0);
    free(b);
    return path;
}

START_TEST(reads_tensors_config_tokenizer) {
    const char *path = write_variant(OK, "ok.gguf");
    ck_assert(sq_ckpt_is_gguf(path));
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    ck_assert_msg(sq_ckpt_open(path, &ck, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(sq_ckpt_format_of(ck), SQ_CKPT_GGUF);
    ck_assert_uint_eq(sq_ckpt_n_tensors(ck), 2 + NL * 9);
    const sq_ckpt_tensor *e = sq_ckpt_find(ck, "model.embed_tokens.weight");
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e->stored_name, "token_embd.weight");
    ck_assert_int_eq(e->n_dims, 2);
    ck_assert_int_eq(e->shape[0], V);   /* dims reversed: [vocab, hidden] */
    ck_assert_int_eq(e->shape[1], H);
    ck_assert_int_eq(e->dtype, SQ_DTYPE_F32);
    ck_assert_uint_eq(e->offset % 32, 0);
    ck_assert(!memcmp(sq_ckpt_data(ck, e), g_f32, H * V * 4));
    const sq_ckpt_tensor *d = sq_ckpt_find(ck, "model.layers.1.mlp.down_proj.weight");
    ck_assert_int_eq(d->ggml_type, 8);
    ck_assert_int_eq(d->dtype, SQ_DTYPE_U8);
    ck_assert_int_eq(d->shape[0], H);
    ck_assert_int_eq(d->shape[1], FF);
    ck_assert_uint_eq(d->n_bytes, sizeof g_q8);
    ck_assert(!memcmp(sq_ckpt_data(ck, d), g_q8, sizeof g_q8));
    ck_assert_int_eq(sq_ckpt_find(ck, "model.layers.0.self_attn.q_proj.weight")->rope_heads, NH);
    ck_assert_int_eq(sq_ckpt_find(ck, "model.layers.0.self_attn.k_proj.weight")->rope_heads, NKV);
    ck_assert_int_eq(sq_ckpt_find(ck, "model.layers.0.self_attn.v_proj.weight")->rope_heads, 0);
    ck_assert_int_eq(sq_ckpt_find(ck, "model.layers.0.mlp.up_proj.weight")->dtype, SQ_DTYPE_BF16);

    sq_model_config c;
    ck_assert_msg(sq_ckpt_config(ck, &c, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(c.arch, SQ_ARCH_LLAMA);
    ck_assert_int_eq(c.hidden_size, H);
    ck_assert_int_eq(c.intermediate_size, FF);
    ck_assert_int_eq(c.n_layers, NL);
    ck_assert_int_eq(c.n_heads, NH);
    ck_assert_int_eq(c.n_kv_heads, NKV);
    ck_assert_int_eq(c.head_dim, HD);
    ck_assert_int_eq(c.vocab_size, V);
    ck_assert_int_eq(c.max_position_embeddings, 256);
    ck_assert(c.rope_theta == 500000.0);
    ck_assert(c.rms_norm_eps == (double)1e-5f);
    ck_assert(c.tie_word_embeddings);
    ck_assert_int_eq(c.eos_token_ids[0], 0);
    ck_assert_int_eq(sq_ckpt_chat_family(ck), SQ_CHAT_CHATML);
    char sys[64];
    ck_assert(!sq_ckpt_chat_default_system(ck, sys, sizeof sys));   /* no literal system turn */

    /* the skeleton accepts it: the Q8_0 weight kept as stored, its bytes counted */
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_OK);
    ck_assert_msg(sq_meta_validate(m, ck, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(sq_meta_n_stored_ggml(m), 2 + NL * 9);   /* every GGUF tensor */
    int di = sq_meta_find(m, "model.layers.0.mlp.down_proj.weight");
    ck_assert_int_eq(sq_meta_tensor(m, di)->stored_ggml, 8);
    sq_quant_scheme none = {.type = SQ_QUANT_NONE, .blocksize = 64, .dense_dtype = SQ_DTYPE_F32};
    ck_assert_uint_eq(sq_meta_tensor_bytes(m, di, &none), sizeof g_q8);
    /* the serialized skeleton carries it */
    uint8_t *buf = NULL;
    size_t nb = 0;
    sq_meta *back = NULL;
    ck_assert_int_eq(sq_meta_serialize(m, &buf, &nb, &err), SQ_OK);
    ck_assert_msg(sq_meta_deserialize(buf, nb, &back, &err) == SQ_OK, "%s", err.msg);
    ck_assert_uint_eq(sq_meta_hash(back), sq_meta_hash(m));
    ck_assert_int_eq(sq_meta_tensor(back, di)->stored_ggml, 8);
    free(buf);
    sq_meta_destroy(back);
    sq_meta_destroy(m);

    sq_tokenizer *tok = NULL;
    bool found = false;
    ck_assert_msg(sq_ckpt_tokenizer(ck, &tok, &found, &err) == SQ_OK, "%s", err.msg);
    ck_assert(found);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    const char *text = "abc ab a<|endoftext|>";
    ck_assert_int_eq(sq_tokenizer_encode(tok, text, strlen(text), true, &ids, &n_ids, &err), SQ_OK);
    int32_t want[] = {7, 5, 4, 6, 0};
    ck_assert_uint_eq(n_ids, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(ids[i], want[i]);
    free(ids);
    sq_tokenizer_destroy(tok);
    sq_ckpt_close(ck);
}
END_TEST

/* The loader hands q_proj back in HF row order and the Q8_0 weight as stored. */
typedef struct seen { int q_ok, down_ok, n; } seen;
static sq_status collect(void *user, sq_load_item *it, sq_error *err) {
    (void)err;
    seen *s = user;
    s->n++;
    if (!strcmp(it->spec->name, "model.layers.1.self_attn.q_proj.weight")) {
        const float *f = it->data;
        s->q_ok = it->ggml_type == -1 && it->dtype == SQ_DTYPE_F32;
        for (int r = 0; r < H; r++)
            for (int c = 0; c < H; c++) s->q_ok &= f[r * H + c] == (float)r;
    }
    if (!strcmp(it->spec->name, "model.layers.0.mlp.down_proj.weight"))
        s->down_ok = it->ggml_type == 8 && it->n_bytes == sizeof g_q8 &&
                     !memcmp(it->data, g_q8, sizeof g_q8);
    return SQ_OK;
}

START_TEST(loader_unpermutes_and_keeps_ggml) {
    const char *path = write_variant(OK, "load.gguf");
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    sq_model_config c;
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_ckpt_open(path, &ck, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_config(ck, &c, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_validate(m, ck, &err), SQ_OK);
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = NL, .has_embed = true, .has_head = true};
    sq_load_options o = sq_load_options_default();
    o.scheme.type = SQ_QUANT_NONE;
    seen s = {0};
    ck_assert_msg(sq_load_stage(ck, m, &all, &o, collect, &s, NULL, &err) == SQ_OK, "%s", err.msg);
    ck_assert(s.q_ok);
    ck_assert(s.down_ok);
    ck_assert_int_eq(s.n, 2 + NL * 9);
    sq_meta_destroy(m);
    sq_ckpt_close(ck);
}
END_TEST

/* Each broken file: the status, and the one line names the file and the tensor or key. */
START_TEST(bad_files_refused) {
    struct { int variant; sq_status code; const char *where, *why; bool at_config; } cases[] = {
        {NO_MERGES, SQ_ERR_FORMAT, "tokenizer.ggml.merges", "merges", false},
        {ARCH, SQ_ERR_UNSUPPORTED, "general.architecture", "falcon", true},
        {SHAPE, SQ_ERR_FORMAT, "model.layers.1.self_attn.k_proj.weight", "want [32,64]", true},
        {TYPE_Q2K, SQ_ERR_UNSUPPORTED, "token_embd.weight", "Q2_K", false},
        {TYPE_UNKNOWN, SQ_ERR_UNSUPPORTED, "token_embd.weight", "unknown ggml tensor type 200", false},
        {PAST_END, SQ_ERR_IO, "blk.1.ffn_down.weight", "past the end", false},
        {MISALIGNED, SQ_ERR_FORMAT, "blk.1.ffn_down.weight", "alignment", false},
        {NO_BLOCKS, SQ_ERR_FORMAT, "llama.block_count", "missing", true},
        {VERSION1, SQ_ERR_UNSUPPORTED, "", "version 1", false},
        {DUP, SQ_ERR_FORMAT, "", "duplicate", false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char file[32];
        snprintf(file, sizeof file, "bad%zu.gguf", k);
        const char *path = write_variant(cases[k].variant, file);
        sq_error err;
        sq_error_init(&err, -1);
        sq_ckpt *ck = NULL;
        sq_status s = sq_ckpt_open(path, &ck, &err);
        if (s == SQ_OK) {
            sq_model_config c;
            sq_meta *m = NULL;
            s = sq_ckpt_config(ck, &c, &err);
            if (s == SQ_OK) s = sq_meta_create(&c, &m, &err);
            if (s == SQ_OK) s = sq_meta_validate(m, ck, &err);
            if (s == SQ_OK) {
                sq_tokenizer *tok = NULL;
                s = sq_ckpt_tokenizer(ck, &tok, NULL, &err);
                sq_tokenizer_destroy(tok);
            }
            sq_meta_destroy(m);
            sq_ckpt_close(ck);
        } else {
            ck_assert_ptr_null(ck);
        }
        char line[2048];
        sq_error_format(&err, line, sizeof line);
        ck_assert_msg(s == cases[k].code, "case %zu: %d: %s", k, s, line);
        ck_assert_msg(strstr(line, path) != NULL, "case %zu: %s", k, line);
        ck_assert_msg(strstr(line, cases[k].where) && strstr(line, cases[k].why), "case %zu: %s", k, line);
        ck_assert_msg(!strchr(line, '\n'), "case %zu: two lines", k);
    }
    /* the bad magic, and the CLI: one line, exit 1 */
    char path[1024];
    snprintf(path, sizeof path, "%s/magic.gguf", g_dir);
    ck_assert_int_eq(sq_test_write_file(path, "GGUG\3\0\0\0", 8), 0);
    sq_error err;
    sq_ckpt *ck = NULL;
    ck_assert_int_eq(sq_ckpt_open(path, &ck, &err), SQ_ERR_FORMAT);
    ck_assert(strstr(err.msg, "bad magic"));
    char cmd[4096];
    int rc = 0;
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' tokenize '%s/bad0.gguf' --text hi 2>&1",
             SQ_SHARDQ_EXE, g_dir);
    char *out = sq_test_run(cmd, &rc);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(sq_test_count_lines(out), 1);
    ck_assert_msg(strstr(out, "bad0.gguf") && strstr(out, "tokenizer.ggml.merges"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' inspect '%s/bad5.gguf' 2>&1", SQ_SHARDQ_EXE, g_dir);
    out = sq_test_run(cmd, &rc);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(sq_test_count_lines(out), 1);
    ck_assert_msg(strstr(out, "bad5.gguf") && strstr(out, "blk.1.ffn_down.weight"), "%s", out);
    free(out);
}
END_TEST

/* Every prefix of a good file fails cleanly (the fuzzer's entry point), never crashes. */
START_TEST(every_truncation_refused) {
    size_t n = 0;
    uint8_t *b = build(OK, &n);
    sq_error err;
    size_t nt = 0;
    ck_assert_msg(sq_gguf_check(b, n, n, "x.gguf", &nt, &err) == SQ_OK, "%s", err.msg);
    ck_assert_uint_eq(nt, 2 + NL * 9);
    b[4] = 2;   /* GGUF v2 has v3's layout */
    ck_assert_msg(sq_gguf_check(b, n, n, "x.gguf", &nt, &err) == SQ_OK, "%s", err.msg);
    b[4] = 4;
    ck_assert_int_eq(sq_gguf_check(b, n, n, "x.gguf", &nt, &err), SQ_ERR_UNSUPPORTED);
    b[4] = 0;
    b[7] = 3;   /* a big-endian file's version */
    ck_assert_int_eq(sq_gguf_check(b, n, n, "x.gguf", &nt, &err), SQ_ERR_FORMAT);
    ck_assert(strstr(err.msg, "big-endian"));
    b[4] = 3;
    b[7] = 0;
    for (size_t len = 0; len < n; len += (len < 4096 ? 1 : 997)) {
        uint8_t *p = malloc(len ? len : 1);
        memcpy(p, b, len);
        sq_status s = sq_gguf_check(p, len, len, "x.gguf", &nt, &err);
        ck_assert_msg(s == SQ_ERR_IO || s == SQ_ERR_FORMAT, "len %zu: %d", len, s);
        free(p);
    }
    free(b);
}
END_TEST

/* The fuzzer's seeds (tests/fuzz/make_gguf_corpus.py, written by the `gguf` package): ok_* pass,
 * bad_* fail. */
START_TEST(fuzz_seeds) {
    const char *names[] = {"ok_tiny", "bad_magic", "bad_version", "bad_truncated", "bad_counts",
                           "bad_empty"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, SQ_SOURCE_DIR "/tests/fuzz/corpus_gguf/%s", names[i]);
        size_t n = 0;
        uint8_t *b = sq_test_read_file(path, &n);
        ck_assert_ptr_nonnull(b);
        sq_error err;
        sq_error_init(&err, -1);
        size_t nt = 0;
        sq_status s = sq_gguf_check(b, n, n, path, &nt, &err);
        if (names[i][0] == 'o') {
            ck_assert_msg(s == SQ_OK, "%s: %s", names[i], err.msg);
            ck_assert_uint_eq(nt, 3);
        } else {
            ck_assert_msg(s != SQ_OK, "%s passed", names[i]);
        }
        free(b);
    }
}
END_TEST

START_TEST(cli_tokenize) {
    const char *path = write_variant(OK, "tok.gguf");
    char cmd[4096];
    int rc = 0;
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' tokenize '%s' --text 'abc ab a' --json",
             SQ_SHARDQ_EXE, path);
    char *out = sq_test_run(cmd, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(out, "{\"ids\": [7, 5, 4, 6]}\n");
    free(out);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' tokenize '%s' --text 'abc ab a' --verbose",
             SQ_SHARDQ_EXE, path);
    out = sq_test_run(cmd, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(sq_test_count_lines(out), 4);
    ck_assert_msg(strstr(out, "\"abc\"") && strstr(out, "\"\xc4\xa0" "a\""), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' tokenize '%s' 2>&1", SQ_SHARDQ_EXE, path);
    out = sq_test_run(cmd, &rc);
    ck_assert_int_eq(rc, 2);
    free(out);
}
END_TEST

/* ---- a make-model folder rewritten as a GGUF runs to the same tokens ------------------------- */

static const struct { const char *hf, *gguf; } k_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"}, {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"}, {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"}, {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"}, {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

/* llama.cpp's convert_hf_to_gguf: HF names -> GGUF names, dims reversed, Llama's Q / K rows
 * permuted (file row h*hd + 2i + j <- HF row h*hd + j*hd/2 + i), everything as F32. */
static void folder_to_gguf(const char *dir, const char *out) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    sq_model_config c;
    ck_assert_msg(sq_ckpt_open(dir, &ck, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_ckpt_config(ck, &c, &err) == SQ_OK, "%s", err.msg);
    const char *arch = c.arch == SQ_ARCH_QWEN2 ? "qwen2" : "llama";
    gguf_w w;
    memset(&w, 0, sizeof w);
    char k[128];
    gw_kv_str(&w, "general.architecture", arch);
#define KV(key, v) (snprintf(k, sizeof k, "%s." key, arch), gw_kv_u32(&w, k, (uint32_t)(v)))
    KV("block_count", c.n_layers);
    KV("context_length", c.max_position_embeddings);
    KV("embedding_length", c.hidden_size);
    KV("feed_forward_length", c.intermediate_size);
    KV("attention.head_count", c.n_heads);
    KV("attention.head_count_kv", c.n_kv_heads);
    KV("vocab_size", c.vocab_size);
#undef KV
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    gw_kv_f32(&w, k, (float)c.rope_theta);
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
    gw_kv_f32(&w, k, (float)c.rms_norm_eps);
    float *bufs[GW_MAX_T] = {0};
    int nb = 0;
    for (size_t i = 0; i < sq_ckpt_n_tensors(ck); i++) {
        const sq_ckpt_tensor *t = sq_ckpt_tensor_at(ck, i);
        char name[128] = "";
        int layer = -1, heads = 0;
        if (!strcmp(t->name, "model.embed_tokens.weight")) snprintf(name, sizeof name, "token_embd.weight");
        else if (!strcmp(t->name, "model.norm.weight")) snprintf(name, sizeof name, "output_norm.weight");
        else if (!strcmp(t->name, "lm_head.weight")) snprintf(name, sizeof name, "output.weight");
        else if (sscanf(t->name, "model.layers.%d.", &layer) == 1) {
            const char *rest = strchr(t->name + strlen("model.layers."), '.') + 1;
            for (size_t j = 0; j < sizeof k_names / sizeof k_names[0]; j++)
                if (!strcmp(rest, k_names[j].hf)) snprintf(name, sizeof name, "blk.%d.%s", layer, k_names[j].gguf);
            if (c.arch != SQ_ARCH_QWEN2 && !strcmp(rest, "self_attn.q_proj.weight")) heads = (int)c.n_heads;
            if (c.arch != SQ_ARCH_QWEN2 && !strcmp(rest, "self_attn.k_proj.weight")) heads = (int)c.n_kv_heads;
        }
        ck_assert_msg(name[0], "no GGUF name for %s", t->name);
        float *f = malloc(t->n_elements * 4), *g = malloc(t->n_elements * 4);
        ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_ckpt_data(ck, t), f, t->n_elements, &err), SQ_OK);
        memcpy(g, f, t->n_elements * 4);
        if (heads) {
            int64_t rows = t->shape[0], cols = t->shape[1], hd = rows / heads;
            for (int64_t h = 0; h < heads; h++)
                for (int64_t i2 = 0; i2 < hd / 2; i2++)
                    for (int64_t j = 0; j < 2; j++)
                        memcpy(g + (h * hd + 2 * i2 + j) * cols, f + (h * hd + j * hd / 2 + i2) * cols,
                               (size_t)cols * 4);
        }
        free(f);
        bufs[nb++] = g;
        uint64_t ne[2] = {(uint64_t)t->shape[t->n_dims - 1], t->n_dims == 2 ? (uint64_t)t->shape[0] : 1};
        gw_tensor_add(&w, name, 0, (uint32_t)t->n_dims, ne, g, t->n_elements * 4);
    }
    size_t n = 0;
    uint8_t *b = gw_finish(&w, &n);
    ck_assert_int_eq(sq_test_write_file(out, b, n), 0);
    free(b);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    sq_ckpt_close(ck);
}

/* Every tensor the loader hands over: name -> bytes (dense F32 models only). */
typedef struct grab { char names[64][96]; void *data[64]; uint64_t n_bytes[64]; int n; } grab;
static sq_status grab_item(void *user, sq_load_item *it, sq_error *err) {
    (void)err;
    grab *g = user;
    ck_assert(g->n < 64 && it->ggml_type == -1 && !it->is_4bit && it->dtype == SQ_DTYPE_F32);
    snprintf(g->names[g->n], sizeof g->names[0], "%s", it->spec->name);
    g->data[g->n] = it->data;
    g->n_bytes[g->n++] = it->n_bytes;
    it->data = NULL;
    return SQ_OK;
}
static void load_all(const char *path, grab *g) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    sq_model_config c;
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_ckpt_open(path, &ck, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_config(ck, &c, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_OK);
    ck_assert_msg(sq_meta_validate(m, ck, &err) == SQ_OK, "%s", err.msg);
    sq_load_stage_desc all = {.first_layer = 0, .n_layers = (int)c.n_layers, .has_embed = true,
                              .has_head = true};
    sq_load_options o = sq_load_options_default();
    o.scheme.type = SQ_QUANT_NONE;
    memset(g, 0, sizeof *g);
    ck_assert_msg(sq_load_stage(ck, m, &all, &o, grab_item, g, NULL, &err) == SQ_OK, "%s", err.msg);
    sq_meta_destroy(m);
    sq_ckpt_close(ck);
}

static char *tokens_of(const char *out) {
    const char *t = strstr(out, "\"tokens\": ");
    ck_assert_msg(t != NULL, "%s", out);
    size_t n = strcspn(t, "\n");
    char *s = malloc(n + 1);
    memcpy(s, t, n);
    s[n] = '\0';
    return s;
}

START_TEST(gguf_runs_like_its_folder) {
    const char *families[] = {"qwen2", "llama"};
    for (int f = 0; f < 2; f++) {
        char dir[1024], file[1024], cmd[8192];
        snprintf(dir, sizeof dir, "%s/%s-f32", g_dir, families[f]);
        snprintf(file, sizeof file, "%s/%s.gguf", g_dir, families[f]);
        snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' make-model --out '%s' --family %s --dtype f32 >/dev/null",
                 SQ_SHARDQ_EXE, dir, families[f]);
        int rc = system(cmd);
        ck_assert_int_eq(rc, 0);
        folder_to_gguf(dir, file);
        /* the loader gives the same tensors, bit for bit, from both */
        static grab ga, gb;
        load_all(dir, &ga);
        load_all(file, &gb);
        ck_assert_int_eq(ga.n, gb.n);
        for (int i = 0; i < ga.n; i++) {
            ck_assert_str_eq(ga.names[i], gb.names[i]);
            ck_assert_msg(ga.n_bytes[i] == gb.n_bytes[i] && !memcmp(ga.data[i], gb.data[i], ga.n_bytes[i]),
                          "%s: %s differs", families[f], ga.names[i]);
            free(ga.data[i]);
            free(gb.data[i]);
        }
        const char *args = "--prompt-ids '3,7,11,5;9,4' --max-new-tokens 8 --ignore-eos --json --quiet";
        snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' run '%s' --quant none %s", SQ_SHARDQ_EXE, dir, args);
        char *a = sq_test_run(cmd, &rc);
        ck_assert_msg(rc == 0, "%s", a);
        snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' run '%s' %s", SQ_SHARDQ_EXE, file, args);
        char *b = sq_test_run(cmd, &rc);
        ck_assert_msg(rc == 0, "%s", b);
        snprintf(cmd, sizeof cmd, "'%s' " SQ_MPIRUN_TEST_FLAGS " -np 2 '%s' run '%s' %s", SQ_MPIEXEC,
                 SQ_SHARDQ_EXE, file, args);
        char *c2 = sq_test_run(cmd, &rc);
        ck_assert_msg(rc == 0, "%s", c2);
        char *ta = tokens_of(a), *tb = tokens_of(b), *tc = tokens_of(c2);
        ck_assert_msg(!strcmp(ta, tb), "%s: folder %s, gguf %s", families[f], ta, tb);
        ck_assert_msg(!strcmp(tb, tc), "%s: gguf 1 rank %s, 2 ranks %s", families[f], tb, tc);
        ck_assert_msg(strstr(b, "\"prompt_ids\": [[3, 7, 11, 5], [9, 4]]"), "%s", b);
        free(ta), free(tb), free(tc), free(a), free(b), free(c2);
    }
}
END_TEST

/* ---- the tokenizer of a real GGUF against the committed reference ---------------------------- */

static char *unhex(const char *h, size_t *n) {
    size_t len = strcspn(h, "\n");
    char *out = malloc(len / 2 + 1);
    for (size_t i = 0; i + 1 < len; i += 2) {
        unsigned v;
        sscanf(h + i, "%2x", &v);
        out[i / 2] = (char)v;
    }
    out[len / 2] = '\0';
    *n = len / 2;
    return out;
}

static bool same_ids(const char *line, const int32_t *ids, size_t n) {
    char *end;
    long cnt = strtol(line, &end, 10);
    if (cnt != (long)n) return false;
    for (size_t i = 0; i < n; i++)
        if (strtol(end, &end, 10) != ids[i]) return false;
    return true;
}

/* tests/reference/gen_gguf_tokenizer.py: SmolLM2's tokenizer metadata in a GGUF without tensors,
 * and the tokenizers library's ids / texts for 103 texts. */
static void check_reference(const char *name, int32_t vocab) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *ck = NULL;
    sq_tokenizer *tok = NULL;
    char path[1024];
    snprintf(path, sizeof path, SQ_SOURCE_DIR "/tests/reference/gguf/%s.gguf", name);
    ck_assert_msg(sq_ckpt_open(path, &ck, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_ckpt_tokenizer(ck, &tok, NULL, &err) == SQ_OK, "%s", err.msg);
    ck_assert_int_eq(sq_tokenizer_vocab_size(tok), vocab);
    snprintf(path, sizeof path, SQ_SOURCE_DIR "/tests/reference/gguf/%s.expected", name);
    char *buf = sq_test_read_file(path, NULL);
    ck_assert_ptr_nonnull(buf);
    int n_cases = 0, n_checked = 0;
    char *text = NULL;
    size_t text_n = 0;
    int32_t *ids1 = NULL;
    size_t n1 = 0;
    for (char *line = buf; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (!strncmp(line, "case ", 5)) {
            n_cases++;
        } else if (!strncmp(line, "text ", 5)) {
            free(text);
            text = unhex(line + 5, &text_n);
        } else if (!strncmp(line, "ids1 ", 5) || !strncmp(line, "ids0 ", 5)) {
            bool add = line[3] == '1';
            int32_t *ids = NULL;
            size_t n = 0;
            ck_assert_int_eq(sq_tokenizer_encode(tok, text, text_n, add, &ids, &n, &err), SQ_OK);
            ck_assert_msg(same_ids(line + 5, ids, n), "%s case %d (%.4s): got %zu ids, want %s",
                          name, n_cases - 1, line, n, line + 5);
            if (add) {
                free(ids1);
                ids1 = ids;
                n1 = n;
            } else {
                free(ids);
            }
            n_checked++;
        } else if (!strncmp(line, "dec1 ", 5)) {
            size_t want_n = 0, got_n = 0;
            char *want = unhex(line + 5, &want_n), *got = NULL;
            ck_assert_int_eq(sq_tokenizer_decode(tok, ids1, n1, false, &got, &got_n, &err), SQ_OK);
            ck_assert_msg(got_n == want_n && !memcmp(got, want, want_n), "%s case %d: decode differs",
                          name, n_cases - 1);
            free(got);
            free(want);
        }
        line = next;
    }
    ck_assert_int_eq(n_cases, 103);
    ck_assert_int_eq(n_checked, 2 * 103);
    free(text);
    free(ids1);
    free(buf);
    sq_tokenizer_destroy(tok);
    sq_ckpt_close(ck);
}

START_TEST(gguf_tokenizer_reference) {
    check_reference("smollm2_tokenizer", 49152);   /* gpt2: byte-level BPE, pre "smollm" */
    check_reference("llama2_tokenizer", 1156);     /* llama: merges derived from the scores */
    sq_error err;
    sq_ckpt *ck = NULL;
    ck_assert_int_eq(sq_ckpt_open(SQ_SOURCE_DIR "/tests/reference/gguf/smollm2_tokenizer.gguf",
                                  &ck, &err), SQ_OK);
    ck_assert_int_eq(sq_ckpt_chat_family(ck), SQ_CHAT_CHATML);
    char sys[256], tiny[8];
    ck_assert(sq_ckpt_chat_default_system(ck, sys, sizeof sys));
    ck_assert_str_eq(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    ck_assert(!sq_ckpt_chat_default_system(ck, tiny, sizeof tiny));   /* does not fit */
    sq_ckpt_close(ck);
}
END_TEST

int main(void) {
    g_dir = sq_test_tmpdir("ckpt");
    if (!g_dir) return 1;
    /* data: F32 values that survive BF16/F16 reinterpretation as finite numbers; Q8_0 blocks
     * with a small f16 scale (0x2000) and codes i % 7 - 3 */
    for (size_t i = 0; i < sizeof g_f32 / sizeof g_f32[0]; i++) g_f32[i] = (float)(i % 13) / 16.0f;
    for (size_t b = 0; b < sizeof g_q8 / 34; b++) {
        g_q8[b * 34] = 0x00;
        g_q8[b * 34 + 1] = 0x20;
        for (int j = 0; j < 32; j++) g_q8[b * 34 + 2 + j] = (uint8_t)(int8_t)((j + (int)b) % 7 - 3);
    }
    /* attn_q in llama.cpp's order: file row h*HD + 2i + j holds HF row h*HD + j*HD/2 + i */
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < HD / 2; i++)
            for (int j = 0; j < 2; j++)
                for (int c = 0; c < H; c++)
                    g_q[(h * HD + 2 * i + j) * H + c] = (float)(h * HD + j * HD / 2 + i);
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, reads_tensors_config_tokenizer);
    tcase_add_test(tc, loader_unpermutes_and_keeps_ggml);
    tcase_add_test(tc, bad_files_refused);
    tcase_add_test(tc, every_truncation_refused);
    tcase_add_test(tc, cli_tokenize);
    tcase_add_test(tc, fuzz_seeds);
    tcase_add_test(tc, gguf_tokenizer_reference);
    tcase_add_test(tc, gguf_runs_like_its_folder);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    sq_test_rmtree(g_dir);
    free(g_dir);
    return failed ? 1 : 0;
}
