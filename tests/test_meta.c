/* Tests for meta: skeleton names / shapes / order for the three families, parameter counts of
 * published models, byte totals against hand-computed figures, lookups, serialization (round
 * trip, every corrupted byte, every truncation, forged buffers with a valid hash), and
 * validation against checkpoints written here (single file and sharded with an index; missing,
 * unexpected and mis-shaped tensors in one message; bitsandbytes pre-quantized layouts). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/checkpoint.h"
#include "shardq/meta.h"
#include "testutil.h"

#define CFG_DIR SQ_SOURCE_DIR "/tests/configs/"

static sq_meta *make_meta(const char *preset, sq_arch arch) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_preset(preset, arch, &c, &err), SQ_OK);
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_OK);
    return m;
}

static sq_meta *meta_from_file(const char *file) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_load(file, &c, &err), SQ_OK);
    sq_meta *m = NULL;
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_OK);
    return m;
}

START_TEST(llama_tiny_skeleton) {
    sq_meta *m = make_meta("tiny", SQ_ARCH_LLAMA);
    /* embed + 4 layers * 9 + norm + lm_head */
    ck_assert_int_eq(sq_meta_n_tensors(m), 39);
    ck_assert_int_eq(sq_meta_n_modules(m), 7);
    static const char *layer0[] = {
        "model.layers.0.input_layernorm.weight",          "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",         "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",         "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",            "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight"};
    static const int64_t shapes[][2] = {{64, 0}, {64, 64}, {32, 64}, {32, 64}, {64, 64},
                                        {64, 0}, {172, 64}, {172, 64}, {64, 172}};
    static const sq_tensor_role roles[] = {SQ_ROLE_ATTN_NORM, SQ_ROLE_Q, SQ_ROLE_K, SQ_ROLE_V,
                                           SQ_ROLE_O, SQ_ROLE_MLP_NORM, SQ_ROLE_GATE,
                                           SQ_ROLE_UP, SQ_ROLE_DOWN};
    const sq_tensor_spec *t = sq_meta_tensor(m, 0);
    ck_assert_str_eq(t->name, "model.embed_tokens.weight");
    ck_assert_int_eq(t->shape[0], 320);
    ck_assert_int_eq(t->shape[1], 64);
    ck_assert(!t->quantizable);
    ck_assert_int_eq(t->role, SQ_ROLE_EMBED);
    ck_assert_int_eq(t->dtype, SQ_DTYPE_BF16);
    for (int i = 0; i < 9; i++) {
        t = sq_meta_tensor(m, 1 + i);
        ck_assert_str_eq(t->name, layer0[i]);
        ck_assert_int_eq(t->n_dims, shapes[i][1] ? 2 : 1);
        ck_assert_int_eq(t->shape[0], shapes[i][0]);
        ck_assert_int_eq(t->shape[1], shapes[i][1]);
        ck_assert_int_eq(t->role, roles[i]);
        ck_assert_int_eq(t->quantizable, t->n_dims == 2);
        ck_assert_int_eq(t->layer, 0);
        ck_assert_int_eq(t->module, 1);
        ck_assert_int_eq(t->stored_quant, SQ_QUANT_NONE);
    }
    ck_assert_str_eq(sq_meta_tensor(m, 37)->name, "model.norm.weight");
    ck_assert_str_eq(sq_meta_tensor(m, 38)->name, "lm_head.weight");
    ck_assert(!sq_meta_tensor(m, 38)->quantizable);   /* lm_head stays dense, as bnb does */
    ck_assert_ptr_null(sq_meta_tensor(m, 39));
    ck_assert_ptr_null(sq_meta_tensor(m, -1));

    const sq_module_spec *md = sq_meta_module(m, 0);
    ck_assert_str_eq(md->name, "model.embed_tokens");
    ck_assert_int_eq(md->kind, SQ_MODULE_EMBED);
    md = sq_meta_module(m, 4);
    ck_assert_str_eq(md->name, "model.layers.3");
    ck_assert_int_eq(md->layer, 3);
    ck_assert_int_eq(md->first_tensor, 28);
    ck_assert_int_eq(md->n_tensors, 9);
    ck_assert_int_eq(sq_meta_layer_module(m, 3), 4);
    ck_assert_int_eq(sq_meta_layer_module(m, 4), -1);
    ck_assert_int_eq(sq_meta_layer_module(m, -1), -1);
    ck_assert_int_eq(sq_meta_module_of_kind(m, SQ_MODULE_NORM), 5);
    ck_assert_int_eq(sq_meta_module_of_kind(m, SQ_MODULE_LM_HEAD), 6);

    ck_assert_int_eq(sq_meta_find(m, "model.layers.2.mlp.up_proj.weight"), 1 + 2 * 9 + 7);
    ck_assert_int_eq(sq_meta_find(m, "lm_head.weight"), 38);
    ck_assert_int_eq(sq_meta_find(m, "model.embed_tokens.weight"), 0);
    ck_assert_int_eq(sq_meta_find(m, "model.layers.9.mlp.up_proj.weight"), -1);
    ck_assert_int_eq(sq_meta_find(m, "model.layers.02.mlp.up_proj.weight"), -1);
    ck_assert_int_eq(sq_meta_find(m, "model.layers.x"), -1);
    ck_assert_int_eq(sq_meta_find(m, ""), -1);
    ck_assert_int_eq(sq_meta_find(m, NULL), -1);

    /* 320*64*2 + 4 * (64 + 4096 + 2048 + 2048 + 4096 + 64 + 3 * 11008) + 64 */
    ck_assert_uint_eq(sq_meta_n_params(m), 222784u);
    sq_meta_destroy(m);
}
END_TEST

START_TEST(qwen2_tiny_tied_with_biases) {
    sq_meta *m = make_meta("tiny", SQ_ARCH_QWEN2);
    ck_assert_int_eq(sq_meta_n_tensors(m), 1 + 4 * 12 + 1);
    ck_assert_int_eq(sq_meta_n_modules(m), 6);
    ck_assert_int_eq(sq_meta_module_of_kind(m, SQ_MODULE_LM_HEAD), -1);
    ck_assert_int_eq(sq_meta_find(m, "lm_head.weight"), -1);
    static const char *order[] = {
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
        "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
        "self_attn.v_proj.bias", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
    const sq_module_spec *md = sq_meta_module(m, 2);
    for (int i = 0; i < 12; i++) {
        char want[96];
        snprintf(want, sizeof want, "model.layers.1.%s", order[i]);
        ck_assert_str_eq(sq_meta_tensor(m, md->first_tensor + i)->name, want);
    }
    const sq_tensor_spec *kb = sq_meta_tensor(m, sq_meta_find(m, "model.layers.1.self_attn.k_proj.bias"));
    ck_assert_int_eq(kb->role, SQ_ROLE_K_BIAS);
    ck_assert_int_eq(kb->n_dims, 1);
    ck_assert_int_eq(kb->shape[0], 32);
    ck_assert(!kb->quantizable);
    ck_assert_uint_eq(sq_meta_n_params(m), 202816u);
    sq_meta_destroy(m);
}
END_TEST

START_TEST(published_param_counts) {
    sq_meta *m = meta_from_file(CFG_DIR "llama-3.1-8b.json");
    ck_assert_uint_eq(sq_meta_n_params(m), 8030261248ull);
    sq_quant_scheme bf16 = {.type = SQ_QUANT_NONE, .blocksize = 64, .dense_dtype = SQ_DTYPE_BF16};
    ck_assert_uint_eq(sq_meta_total_bytes(m, &bf16), 2 * 8030261248ull);
    ck_assert_int_eq(sq_meta_n_tensors(m), 1 + 32 * 9 + 2);
    sq_meta_destroy(m);
    m = meta_from_file(CFG_DIR "qwen2-0.5b.json");
    ck_assert_uint_eq(sq_meta_n_params(m), 494032768ull);
    sq_meta_destroy(m);
    m = meta_from_file(CFG_DIR "mistral-7b-v0.1.json");
    ck_assert_uint_eq(sq_meta_n_params(m), 7241732096ull);
    sq_meta_destroy(m);
}
END_TEST

START_TEST(bytes_tiny_llama) {
    sq_meta *m = make_meta("tiny", SQ_ARCH_LLAMA);
    sq_quant_scheme s = sq_quant_scheme_default();
    s.type = SQ_QUANT_NONE;
    ck_assert_uint_eq(sq_meta_total_bytes(m, &s), 445568u);   /* 2 * 222,784 */
    /* NF4, blocksize 64, no double quant, per layer (packed + 4*blocks + 64-byte map):
     *   q, o: 2048 + 256 + 64 = 2368;  k, v: 1024 + 128 + 64 = 1216;
     *   gate, up, down (11,008 el.): 5504 + 172*4 + 64 = 6256;  two norms: 256
     *   => 2*2368 + 2*1216 + 3*6256 + 256 = 26,192 per layer
     * embed + lm_head + norm in bf16: 40960 + 40960 + 128 = 82,048 */
    s.type = SQ_QUANT_NF4;
    ck_assert_uint_eq(sq_meta_module_bytes(m, 1, &s), 26192u);
    ck_assert_uint_eq(sq_meta_total_bytes(m, &s), 4 * 26192u + 82048u);
    int q = sq_meta_find(m, "model.layers.0.self_attn.q_proj.weight");
    ck_assert_uint_eq(sq_meta_tensor_bytes(m, q, &s), 2368u);
    ck_assert_uint_eq(sq_meta_tensor_bytes(m, 0, &s), 40960u);
    s.type = SQ_QUANT_FP4;   /* same layout */
    ck_assert_uint_eq(sq_meta_total_bytes(m, &s), 4 * 26192u + 82048u);
    /* double quant: packed + blocks + 4*ceil(blocks/256) + 1024 + 64
     *   q, o: 2048 + 64 + 4 + 1088 = 3204;  k, v: 1024 + 32 + 4 + 1088 = 2148;
     *   gate, up, down: 5504 + 172 + 4 + 1088 = 6768;  norms 256
     *   => 2*3204 + 2*2148 + 3*6768 + 256 = 31,264 per layer (the 1 KiB map dominates) */
    s.type = SQ_QUANT_NF4;
    s.double_quant = true;
    ck_assert_uint_eq(sq_meta_module_bytes(m, 1, &s), 31264u);
    ck_assert_uint_eq(sq_meta_total_bytes(m, &s), 4 * 31264u + 82048u);
    sq_meta_destroy(m);
}
END_TEST

START_TEST(serialize_round_trip) {
    for (int f = 0; f < 3; f++) {
        sq_meta *m = make_meta(f == 1 ? "small" : "tiny", (sq_arch)f);
        sq_error err;
        sq_error_init(&err, -1);
        uint8_t *buf = NULL;
        size_t n = 0;
        ck_assert_int_eq(sq_meta_serialize(m, &buf, &n, &err), SQ_OK);
        ck_assert(n > 100);
        ck_assert(memcmp(buf, "SQMETA", 6) == 0);
        ck_assert_uint_eq(sq_hash_fnv1a64(buf, n - 8), sq_meta_hash(m));
        sq_meta *back = NULL;
        ck_assert_int_eq(sq_meta_deserialize(buf, n, &back, &err), SQ_OK);
        ck_assert_uint_eq(sq_meta_hash(back), sq_meta_hash(m));
        ck_assert_int_eq(sq_meta_n_tensors(back), sq_meta_n_tensors(m));
        for (int i = 0; i < sq_meta_n_tensors(m); i++)
            ck_assert_str_eq(sq_meta_tensor(back, i)->name, sq_meta_tensor(m, i)->name);
        ck_assert_int_eq(sq_meta_config(back)->hidden_size, sq_meta_config(m)->hidden_size);
        ck_assert_double_eq(sq_meta_config(back)->rope_theta, sq_meta_config(m)->rope_theta);
        uint8_t *buf2 = NULL;
        size_t n2 = 0;
        ck_assert_int_eq(sq_meta_serialize(back, &buf2, &n2, &err), SQ_OK);
        ck_assert_uint_eq(n2, n);
        ck_assert(memcmp(buf, buf2, n) == 0);
        free(buf2);
        free(buf);
        sq_meta_destroy(back);
        sq_meta_destroy(m);
    }
    /* different models hash differently */
    sq_meta *a = make_meta("tiny", SQ_ARCH_LLAMA), *b = make_meta("tiny", SQ_ARCH_MISTRAL);
    ck_assert_uint_ne(sq_meta_hash(a), sq_meta_hash(b));
    sq_meta_destroy(a);
    sq_meta_destroy(b);
    /* FNV-1a 64 reference values */
    ck_assert_uint_eq(sq_hash_fnv1a64("", 0), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(sq_hash_fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
    ck_assert_uint_eq(sq_hash_fnv1a64("foobar", 6), 0x85944171f73967e8ull);
}
END_TEST

START_TEST(deserialize_rejects_every_corruption) {
    sq_meta *m = make_meta("tiny", SQ_ARCH_QWEN2);
    sq_error err;
    sq_error_init(&err, -1);
    uint8_t *buf = NULL;
    size_t n = 0;
    ck_assert_int_eq(sq_meta_serialize(m, &buf, &n, &err), SQ_OK);
    uint8_t *bad = malloc(n);
    sq_meta *out = (sq_meta *)1;
    /* every single-bit flip of every byte */
    for (size_t i = 0; i < n; i++) {
        memcpy(bad, buf, n);
        bad[i] ^= (uint8_t)(1u << (i % 8));
        ck_assert_msg(sq_meta_deserialize(bad, n, &out, &err) == SQ_ERR_FORMAT, "byte %zu", i);
        ck_assert_ptr_null(out);
    }
    /* every truncation */
    for (size_t len = 0; len < n; len++)
        ck_assert_msg(sq_meta_deserialize(buf, len, &out, &err) == SQ_ERR_FORMAT, "len %zu", len);
    ck_assert_int_eq(sq_meta_deserialize(NULL, n, &out, &err), SQ_ERR_FORMAT);

    /* forged buffers that carry a valid hash: the structure checks must catch them */
    struct { size_t off; uint8_t val; const char *why; } forge[] = {
        {8, SQ_META_FORMAT_VERSION + 1, "format version"},   /* the next version */
        {16, 7, "invalid config"},           /* arch code 7 */
        {16 + 4 + 64, 0x41, "does not match"},  /* hidden_size 65: specs differ */
    };
    for (size_t k = 0; k < sizeof forge / sizeof forge[0]; k++) {
        memcpy(bad, buf, n);
        bad[forge[k].off] = forge[k].val;
        uint64_t h = sq_hash_fnv1a64(bad, n - 8);
        for (int i = 0; i < 8; i++) bad[n - 8 + i] = (uint8_t)(h >> (8 * i));
        ck_assert_int_eq(sq_meta_deserialize(bad, n, &out, &err), SQ_ERR_FORMAT);
        ck_assert_msg(strstr(err.msg, forge[k].why) != NULL, "%s", err.msg);
    }
    /* a tensor's dtype set to an unknown code, and a pre-quantized flag on a norm */
    const size_t tensors_end = n - 8;
    const size_t spec_bytes = 96 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 4 + 1 + 4 + 1 + 8 + 4 + 8;
    const size_t last = tensors_end - spec_bytes;   /* model.norm.weight (tied: the last) */
    ck_assert(memcmp(buf + last, "model.norm.weight", 17) == 0);
    size_t dtype_off = last + 96 + 4 + 4 + 8 + 4 + 8 + 8 + 8;
    for (int v = 0; v < 3; v++) {
        memcpy(bad, buf, n);
        if (v == 0) bad[dtype_off] = 200;
        else if (v == 1) bad[dtype_off + 4 + 1] = SQ_QUANT_NF4;
        else memset(bad + dtype_off + 4 + 1 + 4 + 1 + 8, 0, 4);   /* stored as ggml F32 blocks */
        uint64_t h = sq_hash_fnv1a64(bad, n - 8);
        for (int i = 0; i < 8; i++) bad[n - 8 + i] = (uint8_t)(h >> (8 * i));
        ck_assert_int_eq(sq_meta_deserialize(bad, n, &out, &err), SQ_ERR_FORMAT);
        ck_assert(strstr(err.msg, "model.norm.weight") != NULL);
    }
    /* a renamed tensor */
    memcpy(bad, buf, n);
    bad[last] = 'M';
    uint64_t h = sq_hash_fnv1a64(bad, n - 8);
    for (int i = 0; i < 8; i++) bad[n - 8 + i] = (uint8_t)(h >> (8 * i));
    ck_assert_int_eq(sq_meta_deserialize(bad, n, &out, &err), SQ_ERR_FORMAT);
    free(bad);
    free(buf);
    sq_meta_destroy(m);
}
END_TEST

START_TEST(create_rejects_bad_config) {
    sq_model_config c;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_config_preset("tiny", SQ_ARCH_LLAMA, &c, &err), SQ_OK);
    c.n_kv_heads = 3;
    sq_meta *m = (sq_meta *)1;
    ck_assert_int_eq(sq_meta_create(&c, &m, &err), SQ_ERR_FORMAT);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(sq_meta_create(NULL, &m, &err), SQ_ERR_INVALID);
}
END_TEST

/* ---- checkpoints written here --------------------------------------------------------- */

typedef struct override {
    const char *skip;            /* a tensor left out (prefix match), or NULL */
    const char *extra;           /* an additional tensor, or NULL */
    const char *misshape;        /* a tensor written with its first dim + 1 */
    sq_dtype dtype;              /* dtype of the dense tensors */
    const char *prequant_suffix; /* quantizable weights whose name ends with this are written
                                  * in bnb's 4-bit layout */
    bool double_quant;
    bool bad_absmax;             /* pre-quantized: absmax one element short */
} override;

static void add_zero(sq_st_writer *w, const char *name, sq_dtype d, int nd, const int64_t *shape) {
    uint64_t n = 1;
    for (int i = 0; i < nd; i++) n *= (uint64_t)shape[i];
    uint64_t bytes = n * sq_dtype_size(d);
    void *z = calloc(1, bytes ? bytes : 1);
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_st_writer_add(w, name, d, nd, shape, z, bytes, &err) == SQ_OK, "%s", err.msg);
    free(z);
}

static void add_prequant(sq_st_writer *w, const sq_tensor_spec *t, const override *o) {
    const uint64_t n = t->n_elements, nb = (n + 63) / 64;
    char name[160];
    int64_t shp[2] = {(int64_t)((n + 1) / 2), 1};
    add_zero(w, t->name, SQ_DTYPE_U8, 2, shp);
    snprintf(name, sizeof name, "%s.absmax", t->name);
    shp[0] = (int64_t)nb - (o->bad_absmax ? 1 : 0);
    add_zero(w, name, o->double_quant ? SQ_DTYPE_U8 : SQ_DTYPE_F32, 1, shp);
    snprintf(name, sizeof name, "%s.quant_map", t->name);
    shp[0] = 16;
    add_zero(w, name, SQ_DTYPE_F32, 1, shp);
    if (o->double_quant) {
        snprintf(name, sizeof name, "%s.nested_absmax", t->name);
        shp[0] = (int64_t)((nb + 255) / 256);
        add_zero(w, name, SQ_DTYPE_F32, 1, shp);
        snprintf(name, sizeof name, "%s.nested_quant_map", t->name);
        shp[0] = 256;
        add_zero(w, name, SQ_DTYPE_F32, 1, shp);
    }
    char json[256];
    int len = snprintf(json, sizeof json,
                       "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
                       "\"shape\": [%lld, %lld]%s}", (long long)t->shape[0],
                       (long long)t->shape[1],
                       o->double_quant ? ", \"nested_blocksize\": 256, \"nested_dtype\": "
                                         "\"float32\", \"nested_offset\": 0.0123" : "");
    snprintf(name, sizeof name, "%s.quant_state.bitsandbytes__nf4", t->name);
    shp[0] = len;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_st_writer_add(w, name, SQ_DTYPE_U8, 1, shp, json, (uint64_t)len, &err),
                     SQ_OK);
}

/* Writes the skeleton's tensors (with the overrides) into DIR: one file, or two shards split in
 * the middle of layer 1 with an index. */
static void write_checkpoint(const sq_meta *m, const char *dir, const override *o, bool sharded) {
    sq_error err;
    sq_error_init(&err, -1);
    char path[2][512];
    sq_st_writer *w[2] = {NULL, NULL};
    int n_files = sharded ? 2 : 1;
    for (int f = 0; f < n_files; f++) {
        if (sharded)
            snprintf(path[f], sizeof path[f], "%s/model-%05d-of-%05d.safetensors", dir, f + 1, 2);
        else
            snprintf(path[f], sizeof path[f], "%s/model.safetensors", dir);
        ck_assert_int_eq(sq_st_writer_create(path[f], &w[f], &err), SQ_OK);
    }
    int split = sq_meta_module(m, 2)->first_tensor + 4;   /* inside model.layers.1 */
    char *index = NULL;
    size_t index_len = 0;
    FILE *idx = sharded ? open_memstream(&index, &index_len) : NULL;
    if (idx) fprintf(idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    bool first = true;
    for (int i = 0; i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        int f = sharded && i >= split ? 1 : 0;
        if (o->skip && !strncmp(t->name, o->skip, strlen(o->skip))) continue;
        size_t nl = strlen(t->name), sl = o->prequant_suffix ? strlen(o->prequant_suffix) : 0;
        if (t->quantizable && o->prequant_suffix && nl > sl &&
            !strcmp(t->name + nl - sl, o->prequant_suffix)) {
            add_prequant(w[f], t, o);
            if (idx) {
                static const char *sfx[] = {"", ".absmax", ".quant_map", ".nested_absmax",
                                            ".nested_quant_map", ".quant_state.bitsandbytes__nf4"};
                for (int k = 0; k < 6; k++) {
                    if (!o->double_quant && (k == 3 || k == 4)) continue;
                    fprintf(idx, "%s\"%s%s\": \"model-%05d-of-00002.safetensors\"",
                            first ? "" : ", ", t->name, sfx[k], f + 1);
                    first = false;
                }
            }
            continue;
        }
        int64_t shp[2] = {t->shape[0], t->shape[1]};
        if (o->misshape && !strcmp(t->name, o->misshape)) shp[0] += 1;
        add_zero(w[f], t->name, o->dtype, t->n_dims, shp);
        if (idx) {
            fprintf(idx, "%s\"%s\": \"model-%05d-of-00002.safetensors\"", first ? "" : ", ",
                    t->name, f + 1);
            first = false;
        }
    }
    if (o->extra) {
        int64_t shp[1] = {8};
        add_zero(w[n_files - 1], o->extra, o->dtype, 1, shp);
        if (idx) fprintf(idx, ", \"%s\": \"model-00002-of-00002.safetensors\"", o->extra);
    }
    for (int f = 0; f < n_files; f++) {
        ck_assert_int_eq(sq_st_writer_finish(w[f], true, &err), SQ_OK);
        sq_st_writer_destroy(w[f]);
    }
    if (idx) {
        fprintf(idx, "}}\n");
        fclose(idx);
        char ipath[512];
        snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", dir);
        ck_assert_int_eq(sq_test_write_file(ipath, index, index_len), 0);
        free(index);
    }
}

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Writes a checkpoint and validates the preset's skeleton against it. */
static sq_status check_against(sq_arch arch, const override *o, bool sharded, sq_meta **mout,
                               sq_error *err) {
    sq_meta *m = make_meta("tiny", arch);
    char *dir = sq_test_tmpdir("meta");
    write_checkpoint(m, dir, o, sharded);
    sq_ckpt *st = NULL;
    sq_error_init(err, -1);
    ck_assert_msg(sq_ckpt_open(dir, &st, err) == SQ_OK, "%s", err->msg);
    sq_status s = sq_meta_validate(m, st, err);
    sq_ckpt_close(st);
    rm_rf(dir);
    free(dir);
    if (mout) *mout = m;
    else sq_meta_destroy(m);
    return s;
}

START_TEST(validate_ok_single_and_sharded) {
    for (int f = 0; f < 3; f++)
        for (int sh = 0; sh < 2; sh++) {
            override o = {.dtype = SQ_DTYPE_BF16};
            sq_error err;
            sq_status s = check_against((sq_arch)f, &o, sh, NULL, &err);
            ck_assert_msg(s == SQ_OK, "family %d sharded %d: %s", f, sh, err.msg);
        }
    /* the checkpoint's dtype is recorded and changes the hash */
    sq_meta *ref = make_meta("tiny", SQ_ARCH_LLAMA), *m = NULL;
    override o = {.dtype = SQ_DTYPE_F16};
    sq_error err;
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, false, &m, &err), SQ_OK);
    ck_assert_int_eq(sq_meta_tensor(m, 5)->dtype, SQ_DTYPE_F16);
    ck_assert_uint_ne(sq_meta_hash(m), sq_meta_hash(ref));
    sq_meta_destroy(m);
    sq_meta_destroy(ref);
    /* ignored: legacy rotary buffers; lm_head.weight of the right shape in a tied model */
    o = (override){.dtype = SQ_DTYPE_BF16, .extra = "model.layers.0.self_attn.rotary_emb.inv_freq"};
    ck_assert_int_eq(check_against(SQ_ARCH_QWEN2, &o, false, NULL, &err), SQ_OK);
}
END_TEST

START_TEST(validate_reports_all_problems_in_one_line) {
    override o = {.dtype = SQ_DTYPE_BF16,
                  .skip = "model.layers.2.mlp.down_proj.weight",
                  .extra = "model.layers.1.mlp.extra.weight",
                  .misshape = "model.layers.3.self_attn.k_proj.weight"};
    sq_meta *m = NULL;
    sq_error err;
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, true, &m, &err), SQ_ERR_FORMAT);
    char line[2048];
    sq_error_format(&err, line, sizeof line);
    ck_assert_msg(strstr(line, "3 tensors do not match the config (LlamaForCausalLM, 4 layers)"),
                  "%s", line);
    ck_assert(strstr(line, "missing 1: model.layers.2.mlp.down_proj.weight"));
    ck_assert(strstr(line, "unexpected 1: model.layers.1.mlp.extra.weight"));
    ck_assert(strstr(line, "mis-shaped 1: model.layers.3.self_attn.k_proj.weight [33,64] BF16, "
                           "want [32,64]"));
    ck_assert(!strchr(line, '\n'));
    ck_assert_str_eq(err.tensor, "");   /* several problems: the folder is named */
    /* on failure the skeleton is unchanged */
    sq_meta *ref = make_meta("tiny", SQ_ARCH_LLAMA);
    ck_assert_uint_eq(sq_meta_hash(m), sq_meta_hash(ref));
    sq_meta_destroy(ref);
    sq_meta_destroy(m);

    /* one problem: file and tensor named the usual way */
    o = (override){.dtype = SQ_DTYPE_BF16, .misshape = "model.layers.0.mlp.up_proj.weight"};
    ck_assert_int_eq(check_against(SQ_ARCH_MISTRAL, &o, false, NULL, &err), SQ_ERR_FORMAT);
    ck_assert_str_eq(err.tensor, "model.layers.0.mlp.up_proj.weight");
    ck_assert(strstr(err.file, "model.safetensors") != NULL);

    /* many missing: capped list and a count */
    o = (override){.dtype = SQ_DTYPE_BF16, .skip = "model.layers."};
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, false, NULL, &err), SQ_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "36 tensors do not match") && strstr(err.msg, "missing 36: "),
                  "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "more)") != NULL, "%s", err.msg);
    ck_assert(strlen(err.msg) < 700);

    /* non-float dense tensor */
    o = (override){.dtype = SQ_DTYPE_I32};
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, false, NULL, &err), SQ_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "I32") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(validate_prequantized) {
    for (int dq = 0; dq < 2; dq++) {
        override o = {.dtype = SQ_DTYPE_BF16, .prequant_suffix = "proj.weight",
                      .double_quant = dq};
        sq_meta *m = NULL;
        sq_error err;
        sq_status s = check_against(SQ_ARCH_QWEN2, &o, dq == 1, &m, &err);
        ck_assert_msg(s == SQ_OK, "dq %d: %s", dq, err.msg);
        const sq_tensor_spec *t = sq_meta_tensor(m, sq_meta_find(m, "model.layers.0.mlp.up_proj.weight"));
        ck_assert_int_eq(t->dtype, SQ_DTYPE_U8);
        ck_assert_int_eq(t->stored_quant, SQ_QUANT_NF4);
        ck_assert_int_eq(t->stored_double_quant, dq);
        ck_assert_int_eq(t->stored_blocksize, 64);
        ck_assert_int_eq(t->shape[0], 172);   /* logical shape kept */
        ck_assert_uint_eq(t->n_elements, 11008);
        t = sq_meta_tensor(m, sq_meta_find(m, "model.layers.0.self_attn.q_proj.bias"));
        ck_assert_int_eq(t->stored_quant, SQ_QUANT_NONE);
        /* the pre-quantized skeleton survives serialization */
        uint8_t *buf = NULL;
        size_t n = 0;
        ck_assert_int_eq(sq_meta_serialize(m, &buf, &n, &err), SQ_OK);
        sq_meta *back = NULL;
        ck_assert_int_eq(sq_meta_deserialize(buf, n, &back, &err), SQ_OK);
        ck_assert_uint_eq(sq_meta_hash(back), sq_meta_hash(m));
        free(buf);
        sq_meta_destroy(back);
        sq_meta_destroy(m);
    }
    /* a wrong absmax length is mis-shaped, with the reason */
    override o = {.dtype = SQ_DTYPE_BF16, .prequant_suffix = "down_proj.weight",
                  .double_quant = true, .bad_absmax = true};
    sq_error err;
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, false, NULL, &err), SQ_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "mis-shaped 4: model.layers.0.mlp.down_proj.weight.absmax "
                                  "must be F32 or U8 [172]"), "%s", err.msg);
    /* companions of a dense weight are unexpected */
    o = (override){.dtype = SQ_DTYPE_BF16, .extra = "model.layers.0.mlp.up_proj.weight.absmax"};
    ck_assert_int_eq(check_against(SQ_ARCH_LLAMA, &o, false, NULL, &err), SQ_ERR_FORMAT);
    ck_assert(strstr(err.msg, "unexpected 1: model.layers.0.mlp.up_proj.weight.absmax"));
}
END_TEST

int main(void) {
    Suite *s = suite_create("meta");
    TCase *tc = tcase_create("meta");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, llama_tiny_skeleton);
    tcase_add_test(tc, qwen2_tiny_tied_with_biases);
    tcase_add_test(tc, published_param_counts);
    tcase_add_test(tc, bytes_tiny_llama);
    tcase_add_test(tc, serialize_round_trip);
    tcase_add_test(tc, deserialize_rejects_every_corruption);
    tcase_add_test(tc, create_rejects_bad_config);
    tcase_add_test(tc, validate_ok_single_and_sharded);
    tcase_add_test(tc, validate_reports_all_problems_in_one_line);
    tcase_add_test(tc, validate_prequantized);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
