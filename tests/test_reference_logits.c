/* Numerical reference checks of the whole CPU forward on real `shardq make-model` folders,
 * loaded as `shardq run` loads a stage (sq_runtime_load_stage: the streaming loader feeding an
 * sq_stage), here one stage holding every layer:
 *
 *   1. --quant none vs transformers (committed logits, tests/reference/logits/, written by
 *      tests/reference/gen_reference_logits.py): every prompt position and every cached decode
 *      step within 2e-5 of the prompt's largest |logit|, and the same 8 greedy ids;
 *   2. --quant none vs a float64 forward written plainly below (its own RMSNorm, RoPE, GQA
 *      attention, SwiGLU; weights read by name through sq_ckpt + sq_convert_to_f32, not the
 *      loader or the backend) within 1e-5 of the largest |logit|;
 *   3. NF4 (and NF4 + double quant) logits equal, bit for bit, the dense path run on the
 *      weights dequantized by sq_dequant_4bit_f32 (int8 and int8-zp likewise, on the values of
 *      sq_dequant_int8_row, and closer to --quant none than NF4), and stay as close to --quant none as
 *      bitsandbytes' own NF4 does in transformers (per-row cosine within 1e-4 of the committed
 *      figure) on the `small` preset; see test_small_nf4 for why not the issue's > 0.99.
 *
 * The models are regenerated at run time with the shardq executable and identified by the
 * FNV-1a 64 of model.safetensors recorded in the manifest: when make-model's output changes,
 * the test says to rerun the script.  It prints one line of figures per model.
 * Never: writes outside its temporary folder, or needs Python. */
#include <cJSON.h>
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "shardq/model.h"
#include "shardq/runtime.h"
#include "testutil.h"

#define REF_DIR SQ_SOURCE_DIR "/tests/reference/logits"
#define MAX_PROMPTS 8
#define MAX_IDS 32
#define MAX_SEQ 32
#define MAX_TOKENS 16

/* Bounds (relative to the largest |logit| of the rows compared):
 * - shardq vs float64: float32 activations and float32 dot products of length <= 704, one
 *   rounding per FMA, give a few 1e-7 of the largest value (measured <= 4e-7); 1e-5 is the
 *   issue's figure.
 * - the committed transformers logits vs float64: the same argument for torch's float32
 *   kernels (measured <= 4e-7); checked at 1e-5 so a stale or damaged file fails here.
 * - shardq vs transformers: by the triangle inequality the two checks above bound it by
 *   2e-5 (measured <= 4.1e-7), ~35x below the smallest top-1 / top-2 logit gap recorded in the
 *   manifest (7e-4 of the largest |logit|), so the greedy ids must agree. */
#define REL_F64 1e-5
#define REL_HF_F64 1e-5
#define REL_HF 2e-5

/* ---- the manifest ------------------------------------------------------------------------- */

typedef struct {
    int n_ids, n_gen, rows;
    int32_t ids[MAX_IDS], gen[MAX_IDS];
    char file[128];
    double min_gap;
} ref_prompt;

typedef struct {
    char name[64], arch[64];
    char args[512];            /* make-model args, quoted, space-separated (no --out) */
    uint64_t fnv;              /* FNV-1a 64 of model.safetensors */
    int64_t vocab;
    int n_prompts;
    ref_prompt p[MAX_PROMPTS];
    /* nf4_models: bitsandbytes' NF4 round trip, per-row cosine vs float32 */
    int n_tok;
    int32_t tok[MAX_IDS];
    double cos_nf4[MAX_IDS], cos_nf4_dq[MAX_IDS];
} ref_model;

static int read_ids(const cJSON *a, int32_t *out) {
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        ck_assert_int_lt(n, MAX_IDS);
        out[n++] = (int32_t)v->valuedouble;
    }
    return n;
}

static int read_doubles(const cJSON *a, double *out) {
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        ck_assert_int_lt(n, MAX_IDS);
        out[n++] = v->valuedouble;
    }
    return n;
}

static void read_common(const cJSON *m, ref_model *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", cJSON_GetStringValue(cJSON_GetObjectItem(m, "name")));
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItem(m, "make_model_args")) {
        size_t l = strlen(r->args);
        snprintf(r->args + l, sizeof r->args - l, "%s'%s'", l ? " " : "", a->valuestring);
    }
    const char *h = cJSON_GetStringValue(cJSON_GetObjectItem(m, "safetensors_fnv1a64"));
    ck_assert_msg(h && r->args[0], "manifest: model %s lacks args or hash", r->name);
    r->fnv = strtoull(h, NULL, 16);
}

/* Parses the manifest: `list` is "models" (transformers logits) or "nf4_models"; returns the
 * number of models (<= cap). */
static int load_manifest(const char *list, ref_model *out, int cap, char *versions,
                         size_t vbytes) {
    size_t n = 0;
    char *txt = sq_test_read_file(REF_DIR "/manifest.json", &n);
    ck_assert_msg(txt, "cannot read %s/manifest.json", REF_DIR);
    cJSON *root = cJSON_ParseWithLength(txt, n);
    ck_assert_msg(root, "manifest.json is not JSON");
    const char *tv = cJSON_GetStringValue(cJSON_GetObjectItem(root, "torch")),
               *xv = cJSON_GetStringValue(cJSON_GetObjectItem(root, "transformers")),
               *bv = cJSON_GetStringValue(cJSON_GetObjectItem(root, "bitsandbytes"));
    snprintf(versions, vbytes, "torch %s, transformers %s, bitsandbytes %s", tv ? tv : "?",
             xv ? xv : "?", bv ? bv : "?");
    int n_new = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(root, "n_new"));
    int nm = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(root, list)) {
        ck_assert_int_lt(nm, cap);
        ref_model *r = &out[nm++];
        read_common(m, r);
        if (strcmp(list, "nf4_models") == 0) {
            r->n_tok = read_ids(cJSON_GetObjectItem(m, "tokens"), r->tok);
            ck_assert_int_le(r->n_tok, MAX_SEQ);
            ck_assert_int_eq(read_doubles(cJSON_GetObjectItem(m, "bnb_nf4_row_cosine"), r->cos_nf4), r->n_tok);
            ck_assert_int_eq(read_doubles(cJSON_GetObjectItem(m, "bnb_nf4_dq_row_cosine"), r->cos_nf4_dq), r->n_tok);
            continue;
        }
        snprintf(r->arch, sizeof r->arch, "%s",
                 cJSON_GetStringValue(cJSON_GetObjectItem(m, "architecture")));
        r->vocab = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(m, "vocab_size"));
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(m, "prompts")) {
            ck_assert_int_lt(r->n_prompts, MAX_PROMPTS);
            ref_prompt *q = &r->p[r->n_prompts++];
            q->n_ids = read_ids(cJSON_GetObjectItem(p, "ids"), q->ids);
            q->n_gen = read_ids(cJSON_GetObjectItem(p, "generated"), q->gen);
            q->rows = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(p, "rows"));
            q->min_gap = cJSON_GetNumberValue(cJSON_GetObjectItem(p, "min_top2_gap"));
            snprintf(q->file, sizeof q->file, "%s", cJSON_GetStringValue(cJSON_GetObjectItem(p, "file")));
            ck_assert_int_eq(q->n_gen, n_new);
            ck_assert_int_eq(q->rows, q->n_ids + q->n_gen - 1);
            ck_assert_int_le(q->rows, MAX_SEQ);
            ck_assert_int_le(q->n_ids, MAX_TOKENS);
        }
    }
    cJSON_Delete(root);
    free(txt);
    return nm;
}

/* rows x vocab float32 LE from the committed file (this test runs on little-endian hosts) */
static float *load_ref_logits(const ref_model *m, const ref_prompt *p) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", REF_DIR, p->file);
    size_t n = 0;
    float *v = sq_test_read_file(path, &n);
    ck_assert_msg(v, "cannot read %s", path);
    ck_assert_msg(n == (size_t)p->rows * (size_t)m->vocab * 4, "%s: %zu bytes, expected %d x %lld floats",
                  path, n, p->rows, (long long)m->vocab);
    return v;
}

/* ---- model folders -------------------------------------------------------------------------- */

static void make_model(const char *dir, const char *args) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self '%s' "
             "make-model --out '%s' %s",
             SQ_SHARDQ_EXE, dir, args);
    int rc = 0;
    char *out = sq_test_run(cmd, &rc);
    ck_assert_msg(rc == 0, "make-model %s failed (%d): %s", args, rc, out ? out : "");
    free(out);
}

static void check_hash(const char *dir, const ref_model *m) {
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t n = 0;
    void *b = sq_test_read_file(path, &n);
    ck_assert_msg(b, "cannot read %s", path);
    uint64_t h = sq_hash_fnv1a64(b, n);
    free(b);
    ck_assert_msg(h == m->fnv,
                  "%s: `shardq make-model %s` now writes a model.safetensors with FNV-1a 64 "
                  "%016" PRIx64 ", the manifest says %016" PRIx64 ": make-model's output changed; "
                  "rerun `python3 tests/reference/gen_reference_logits.py <shardq>` and commit "
                  "tests/reference/logits/",
                  m->name, m->args, h, m->fnv);
}

static void rm_rf(const char *dir) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- loading a folder into one stage ---------------------------------------------------------- */

typedef struct {
    sq_model_config cfg;
    sq_ckpt *st;
    sq_meta *meta;
} folder;

static void folder_open(folder *f, const char *dir) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_config_load(dir, &f->cfg, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_ckpt_open(dir, &f->st, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_meta_create(&f->cfg, &f->meta, &err) == SQ_OK, "%s", err.msg);
    ck_assert_msg(sq_meta_validate(f->meta, f->st, &err) == SQ_OK, "%s", err.msg);
}
static void folder_close(folder *f) {
    sq_meta_destroy(f->meta);
    sq_ckpt_close(f->st);
}

static sq_quant_scheme scheme_of(const folder *f, sq_quant_type type, bool dq) {
    return (sq_quant_scheme){.type = type, .double_quant = dq, .blocksize = 64,
                             .dense_dtype = f->cfg.torch_dtype};
}

/* The whole folder as one stage, loaded exactly as `shardq run --quant none|nf4` loads a
 * stage (sq_runtime_load_stage: the streaming loader handing every tensor to the stage). */
static sq_stage *load_stage(sq_backend *be, const folder *f, sq_quant_type type, bool dq) {
    sq_runtime_stage_params p;
    memset(&p, 0, sizeof p);
    p.stage = (sq_load_stage_desc){0, (int)f->cfg.n_layers, true, true};
    p.scheme = scheme_of(f, type, dq);
    p.max_seq = MAX_SEQ;
    p.max_batch = 2;
    p.max_tokens = MAX_TOKENS;
    p.max_logit_rows = MAX_TOKENS;
    p.n_threads = 2;
    p.comm = MPI_COMM_NULL;
    sq_stage *s = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_runtime_load_stage(be, f->st, f->meta, &p, &s, NULL, &err) == SQ_OK,
                  "load (%s): %s", sq_quant_type_name(type), err.msg);
    return s;
}

/* The dense twin of an NF4 stage: every 4-bit weight the loader hands over is dequantized with
 * sq_dequant_4bit_f32 and set as a float32 dense weight; every other tensor as it comes. */
static sq_status consume_dequantized(void *user, sq_load_item *it, sq_error *err) {
    sq_stage *s = user;
    const sq_tensor_spec *sp = it->spec;
    if (!sq_stage_wants(s, sp->role, sp->layer))
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, sp->name, "the stage does not want it");
    if (!it->is_4bit)
        return sq_stage_set_dense(s, sp->role, sp->layer, sp->name, it->dtype, it->data,
                                  it->n_dims, it->shape, err);
    float *w = malloc(it->q.n_elements * sizeof *w);
    if (!w) return sq_error_set(err, SQ_ERR_NOMEM, NULL, sp->name, "dequantized copy");
    if (sq_quant_type_is_int8(it->q.type))   /* the float32 values of quant.h */
        for (int64_t r = 0; r < it->q.shape[0]; r++) sq_dequant_int8_row(&it->q, r, w + r * it->q.shape[1]);
    else
        sq_dequant_4bit_f32(&it->q, 0, it->q.n_elements, w);
    sq_status rc = sq_stage_set_dense(s, sp->role, sp->layer, sp->name, SQ_DTYPE_F32, w, 2,
                                      it->q.shape, err);
    free(w);
    return rc;
}

static sq_stage *load_dequantized(sq_backend *be, const folder *f, sq_quant_type type, bool dq) {
    sq_stage_params p;
    memset(&p, 0, sizeof p);
    p.cfg = f->cfg;
    p.n_layers = f->cfg.n_layers;
    p.has_embed = p.has_head = true;
    p.scheme = scheme_of(f, SQ_QUANT_NONE, false);
    p.max_seq = MAX_SEQ;
    p.max_batch = 2;
    p.max_tokens = MAX_TOKENS;
    p.max_logit_rows = MAX_TOKENS;
    sq_stage *s = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_stage_create(be, &p, &s, &err) == SQ_OK, "%s", err.msg);
    sq_load_options o = sq_load_options_default();
    o.scheme = scheme_of(f, type, dq);
    o.tied_head_copy = false;   /* one stage: the table is its embedding and its lm_head */
    sq_load_stage_desc all = {0, (int)f->cfg.n_layers, true, true};
    ck_assert_msg(sq_load_stage(f->st, f->meta, &all, &o, consume_dequantized, s, NULL, &err) == SQ_OK,
                  "load (dequantized %s): %s", sq_quant_type_name(type), err.msg);
    ck_assert_msg(sq_stage_check_ready(s, &err) == SQ_OK, "%s", err.msg);
    return s;
}

/* ---- running sequences through a stage ---------------------------------------------------------- */

static float *forward_rows(sq_stage *s, int slot, int start, const int32_t *tok, int n, bool all,
                           float *dst) {
    sq_seq_span sp = {slot, start, n};
    sq_stage_input in = {1, &sp, tok, NULL, all};
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_stage_forward(s, &in, &err) == SQ_OK, "%s", err.msg);
    int64_t rows = sq_stage_n_out_rows(s);
    ck_assert_int_eq(rows, all ? n : 1);
    ck_assert_int_eq(sq_stage_read_logits(s, dst, rows, &err), SQ_OK);
    return dst;
}

/* Greedy choice from row `row` of the stage's last logits, with the backend's sampler
 * (temperature 0: argmax, lowest index on ties). */
static int32_t greedy_row(sq_stage *s, int64_t row) {
    int64_t V = sq_stage_get_params(s)->cfg.vocab_size;
    sq_sample_params gp = {0, 0, 1, 0};
    uint64_t z = 0;
    int32_t id = -1;
    sq_error err;
    sq_error_init(&err, -1);
    const char *lg_d = sq_stage_logits_d(s);
    ck_assert_msg(sq_backend_sample(sq_stage_backend(s), lg_d + (size_t)row * V * 4, 1, V, &gp,
                                    &z, &z, &id, &err) == SQ_OK, "%s", err.msg);
    return id;
}

/* Prefill of tok[0, n_prompt) (all rows) in slot 0, then one token at a time.  With gen_out
 * the stage picks each next token greedily and feeds it, n_gen of them; without,
 * tok[n_prompt, n_total) are fed.  Returns (n_rows, V) logits, n_rows = n_prompt + n_gen - 1
 * (the last greedy choice is not fed) or n_total. */
static float *run_sequence(sq_stage *s, const int32_t *tok, int n_prompt, int n_total,
                           int32_t *gen_out, int n_gen) {
    int64_t V = sq_stage_get_params(s)->cfg.vocab_size;
    int n_rows = gen_out ? n_prompt + n_gen - 1 : n_total;
    ck_assert_int_le(n_rows, MAX_SEQ);
    float *lg = malloc((size_t)n_rows * V * 4);
    forward_rows(s, 0, 0, tok, n_prompt, true, lg);
    int32_t seq[MAX_SEQ];
    memcpy(seq, tok, (size_t)n_total * 4);
    if (gen_out) seq[n_prompt] = gen_out[0] = greedy_row(s, n_prompt - 1);
    for (int pos = n_prompt; pos < n_rows; pos++) {
        forward_rows(s, 0, pos, &seq[pos], 1, false, lg + (size_t)pos * V);
        if (gen_out) gen_out[pos + 1 - n_prompt] = seq[pos + 1] = greedy_row(s, 0);
    }
    return lg;
}

/* ---- the float64 reference forward (plain loops, whole sequence, no cache) --------------------- */

typedef struct {
    sq_model_config cfg;
    float *embed, *norm, *head;
    float *w[SQ_ROLE_COUNT][64];     /* [role][layer] */
} f64_model;

static float *read_f32(const sq_ckpt *st, const char *name, uint64_t want_n) {
    const sq_ckpt_tensor *t = sq_ckpt_find(st, name);
    ck_assert_msg(t, "tensor %s missing", name);
    ck_assert_uint_eq(t->n_elements, want_n);
    float *v = malloc(t->n_elements * 4);
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_convert_to_f32(t->dtype, sq_ckpt_data(st, t), v, t->n_elements, &err), SQ_OK);
    return v;
}

static f64_model f64_open(const folder *f) {
    f64_model m;
    memset(&m, 0, sizeof m);
    m.cfg = f->cfg;
    const sq_model_config *c = &f->cfg;
    ck_assert_int_le(c->n_layers, 64);
    ck_assert_int_eq(c->rope_scaling.kind, SQ_ROPE_DEFAULT);
    uint64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size,
             Q = c->n_heads * c->head_dim, K = c->n_kv_heads * c->head_dim;
    m.embed = read_f32(f->st, "model.embed_tokens.weight", V * H);
    m.norm = read_f32(f->st, "model.norm.weight", H);
    m.head = c->tie_word_embeddings ? NULL : read_f32(f->st, "lm_head.weight", V * H);
    static const struct { sq_tensor_role r; const char *name; int shape; } L[] = {
        {SQ_ROLE_ATTN_NORM, "input_layernorm.weight", 0},
        {SQ_ROLE_Q, "self_attn.q_proj.weight", 1}, {SQ_ROLE_K, "self_attn.k_proj.weight", 2},
        {SQ_ROLE_V, "self_attn.v_proj.weight", 2}, {SQ_ROLE_O, "self_attn.o_proj.weight", 3},
        {SQ_ROLE_Q_BIAS, "self_attn.q_proj.bias", 4}, {SQ_ROLE_K_BIAS, "self_attn.k_proj.bias", 5},
        {SQ_ROLE_V_BIAS, "self_attn.v_proj.bias", 5},
        {SQ_ROLE_MLP_NORM, "post_attention_layernorm.weight", 0},
        {SQ_ROLE_GATE, "mlp.gate_proj.weight", 6}, {SQ_ROLE_UP, "mlp.up_proj.weight", 6},
        {SQ_ROLE_DOWN, "mlp.down_proj.weight", 6}};
    uint64_t n_of[7] = {H, Q * H, K * H, H * Q, Q, K, I * H};
    for (int l = 0; l < c->n_layers; l++)
        for (size_t i = 0; i < sizeof L / sizeof *L; i++) {
            if (L[i].shape >= 4 && L[i].shape <= 5 && !c->attention_bias) continue;
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, L[i].name);
            m.w[L[i].r][l] = read_f32(f->st, name, n_of[L[i].shape]);
        }
    return m;
}

static void f64_close(f64_model *m) {
    free(m->embed); free(m->norm); free(m->head);
    for (int r = 0; r < SQ_ROLE_COUNT; r++)
        for (int l = 0; l < 64; l++) free(m->w[r][l]);
}

static void d_rmsnorm(const double *x, const float *w, int64_t n, double eps, double *out) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}
/* out (rows) = W (rows, cols) x + b */
static void d_linear(const double *x, const float *w, const float *b, int64_t rows, int64_t cols,
                     double *out) {
    for (int64_t o = 0; o < rows; o++) {
        double s = b ? b[o] : 0;
        for (int64_t k = 0; k < cols; k++) s += (double)w[o * cols + k] * x[k];
        out[o] = s;
    }
}
/* rotate-half RoPE (transformers' layout: pairs (i, i + hd/2)), default frequencies */
static void d_rope(double *x, int n_heads, int hd, int pos, double theta) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < hd / 2; i++) {
            double a = pos * pow(theta, -(2.0 * i) / hd), *p = x + h * hd;
            double x1 = p[i], x2 = p[i + hd / 2];
            p[i] = x1 * cos(a) - x2 * sin(a);
            p[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
        }
}

/* logits (T, V) of tokens tok[0, T) of one sequence; malloc'd */
static double *f64_forward(const f64_model *m, const int32_t *tok, int T) {
    const sq_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int nh = (int)c->n_heads, nkv = (int)c->n_kv_heads, hd = (int)c->head_dim;
    int64_t qw = nh * hd, kw = nkv * hd;
    double *x = calloc(T * H, 8), *h = calloc(H, 8), *q = calloc(T * qw, 8),
           *k = calloc(T * kw, 8), *v = calloc(T * kw, 8), *att = calloc(qw, 8), *t = calloc(H, 8),
           *g = calloc(I, 8), *u = calloc(I, 8), *lg = calloc(T * V, 8), sc[MAX_SEQ];
    for (int p = 0; p < T; p++)
        for (int64_t i = 0; i < H; i++) x[p * H + i] = m->embed[tok[p] * H + i];
    for (int l = 0; l < c->n_layers; l++) {
        for (int p = 0; p < T; p++) {
            d_rmsnorm(x + p * H, m->w[SQ_ROLE_ATTN_NORM][l], H, c->rms_norm_eps, h);
            d_linear(h, m->w[SQ_ROLE_Q][l], m->w[SQ_ROLE_Q_BIAS][l], qw, H, q + p * qw);
            d_linear(h, m->w[SQ_ROLE_K][l], m->w[SQ_ROLE_K_BIAS][l], kw, H, k + p * kw);
            d_linear(h, m->w[SQ_ROLE_V][l], m->w[SQ_ROLE_V_BIAS][l], kw, H, v + p * kw);
            d_rope(q + p * qw, nh, hd, p, c->rope_theta);
            d_rope(k + p * kw, nkv, hd, p, c->rope_theta);
        }
        for (int p = 0; p < T; p++) {
            for (int hh = 0; hh < nh; hh++) {
                int gk = hh / (nh / nkv);   /* the kv head this query head reads */
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= p; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[p * qw + hh * hd + i] * k[j * kw + gk * hd + i];
                    sc[j] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int j = 0; j <= p; j++) o += sc[j] / sum * v[j * kw + gk * hd + i];
                    att[hh * hd + i] = o;
                }
            }
            d_linear(att, m->w[SQ_ROLE_O][l], NULL, H, qw, t);
            for (int64_t i = 0; i < H; i++) x[p * H + i] += t[i];
            d_rmsnorm(x + p * H, m->w[SQ_ROLE_MLP_NORM][l], H, c->rms_norm_eps, h);
            d_linear(h, m->w[SQ_ROLE_GATE][l], NULL, I, H, g);
            d_linear(h, m->w[SQ_ROLE_UP][l], NULL, I, H, u);
            for (int64_t i = 0; i < I; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            d_linear(g, m->w[SQ_ROLE_DOWN][l], NULL, H, I, t);
            for (int64_t i = 0; i < H; i++) x[p * H + i] += t[i];
        }
    }
    for (int p = 0; p < T; p++) {
        d_rmsnorm(x + p * H, m->norm, H, c->rms_norm_eps, h);
        d_linear(h, m->head ? m->head : m->embed, NULL, V, H, lg + p * V);
    }
    free(x); free(h); free(q); free(k); free(v); free(att); free(t); free(g); free(u);
    return lg;
}

/* ---- figures -------------------------------------------------------------------------------- */

/* max |got - ref| / max |ref| over n values; *at gets the index of the largest difference */
static double rel_diff_f(const float *got, const float *ref, int64_t n, int64_t *at) {
    double mx = 0, d = 0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)got[i] - ref[i]) > d) { d = fabs((double)got[i] - ref[i]); *at = i; }
    return d / mx;
}
static double rel_diff_d(const float *got, const double *ref, int64_t n, int64_t *at) {
    double mx = 0, d = 0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++)
        if (fabs(got[i] - ref[i]) > d) { d = fabs(got[i] - ref[i]); *at = i; }
    return d / mx;
}
static double cosine(const float *a, const float *b, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

/* ---- 4-bit vs dequantized-dense vs none on one folder ----------------------------------------- */

/* Runs the token sequence tok[0, n) (prefill n_prompt, then one by one) through NF4
 * [+ double quant] and its dequantized-dense twin: asserts the two identical bit for bit, and
 * writes the per-row cosine vs `none_lg` (the --quant none logits of the same tokens) to
 * cos[n]. */
static void check_quant(sq_backend *be, const folder *f, sq_quant_type type, bool dq,
                        const int32_t *tok, int n_prompt, int n, const float *none_lg,
                        const char *what, double *cos) {
    sq_stage *q = load_stage(be, f, type, dq);
    sq_stage *deq = load_dequantized(be, f, type, dq);
    int64_t V = f->cfg.vocab_size;
    float *lq = run_sequence(q, tok, n_prompt, n, NULL, 0);
    float *ld = run_sequence(deq, tok, n_prompt, n, NULL, 0);
    for (int r = 0; r < n; r++) {
        int64_t at = 0;
        double d = rel_diff_f(lq + (size_t)r * V, ld + (size_t)r * V, V, &at);
        ck_assert_msg(memcmp(lq + (size_t)r * V, ld + (size_t)r * V, V * 4) == 0,
                      "%s %s%s row %d: quantized and dense-on-dequantized differ (rel %.3g at %lld: "
                      "%.9g vs %.9g)", what, sq_quant_type_name(type), dq ? "+dq" : "", r, d, (long long)at,
                      lq[r * V + at], ld[r * V + at]);
        cos[r] = cosine(lq + (size_t)r * V, none_lg + (size_t)r * V, V);
    }
    ck_assert_uint_lt(sq_stage_weight_bytes(q), sq_stage_weight_bytes(deq));
    free(lq); free(ld);
    sq_stage_destroy(q);
    sq_stage_destroy(deq);
}

/* ---- the tests -------------------------------------------------------------------------------- */

static sq_backend *g_be;

static void setup(void) {
    sq_error err;
    ck_assert_int_eq(sq_backend_create_cpu(2, &g_be, &err), SQ_OK);
}
static void teardown(void) { sq_backend_destroy(g_be); }

#define MAX_MODELS 8

START_TEST(test_manifest) {
    ref_model *ms = calloc(MAX_MODELS, sizeof *ms);
    char ver[256];
    int n = load_manifest("models", ms, MAX_MODELS, ver, sizeof ver);
    ck_assert_int_ge(n, 3);
    bool f32 = false, tied_bias = false, untied = false;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        f32 |= strstr(ms[i].args, "'f32'") != NULL;
        tied_bias |= strcmp(ms[i].arch, "Qwen2ForCausalLM") == 0;
        untied |= strcmp(ms[i].arch, "LlamaForCausalLM") == 0;
        ck_assert_int_ge(ms[i].n_prompts, 2);
        for (int p = 0; p < ms[i].n_prompts; p++) {
            float *v = load_ref_logits(&ms[i], &ms[i].p[p]);
            total += (size_t)ms[i].p[p].rows * ms[i].vocab * 4;
            free(v);
        }
    }
    ck_assert_msg(f32 && tied_bias && untied, "the manifest lacks an f32, a Qwen2 or a Llama model");
    ck_assert_uint_lt(total, 300u << 10);
    ck_assert_int_ge(load_manifest("nf4_models", ms, MAX_MODELS, ver, sizeof ver), 2);
    printf("reference logits: %d models, %zu bytes of logits, from %s\n", n, total, ver);
    fflush(stdout);
    free(ms);
}
END_TEST

/* One committed model: none vs transformers and vs float64, greedy ids, last-row-only head;
 * NF4 == dense-on-dequantized bit for bit and its cosine to none (reported only: the bound is
 * checked on the `small` preset below).  The 4-bit kernels take any input width, so the
 * equality covers every Linear, the tiny preset's down_proj (172 inputs) included. */
START_TEST(test_model_vs_references) {
    ref_model *ms = calloc(MAX_MODELS, sizeof *ms);
    char ver[256];
    int n = load_manifest("models", ms, MAX_MODELS, ver, sizeof ver);
    ck_assert_int_lt(_i, n);
    const ref_model *m = &ms[_i];
    char *dir = sq_test_tmpdir("reflogits");
    char mdir[1024];
    snprintf(mdir, sizeof mdir, "%s/%s", dir, m->name);
    make_model(mdir, m->args);
    check_hash(mdir, m);

    folder f;
    folder_open(&f, mdir);
    ck_assert_str_eq(f.cfg.architecture, m->arch);
    ck_assert_int_eq(f.cfg.vocab_size, m->vocab);
    f64_model r = f64_open(&f);
    sq_stage *s = load_stage(g_be, &f, SQ_QUANT_NONE, false);
    int64_t V = m->vocab;
    double worst_hf = 0, worst_f64 = 0, worst_hf_f64 = 0, worst_cos = 1, min_gap = 1e9;
    double worst_cos_i8 = 1, worst_cos_zp = 1;
    for (int pi = 0; pi < m->n_prompts; pi++) {
        const ref_prompt *p = &m->p[pi];
        min_gap = fmin(min_gap, p->min_gap);
        float *hf = load_ref_logits(m, p);
        int32_t gen[MAX_IDS];
        float *lg = run_sequence(s, p->ids, p->n_ids, p->n_ids, gen, p->n_gen);
        for (int k = 0; k < p->n_gen; k++)
            ck_assert_msg(gen[k] == p->gen[k], "%s prompt %d: greedy token %d is %d, transformers "
                          "chose %d", m->name, pi, k, gen[k], p->gen[k]);
        int64_t at = 0, nv = (int64_t)p->rows * V;
        double d = rel_diff_f(lg, hf, nv, &at);
        ck_assert_msg(d <= REL_HF, "%s prompt %d: vs transformers %.3g of max |logit| at row %lld "
                      "token %lld (%.8g vs %.8g)", m->name, pi, d, (long long)(at / V),
                      (long long)(at % V), lg[at], hf[at]);
        worst_hf = fmax(worst_hf, d);

        /* the float64 forward on the same tokens (prompt + the fed greedy ids) */
        int32_t seq[MAX_SEQ];
        memcpy(seq, p->ids, (size_t)p->n_ids * 4);
        memcpy(seq + p->n_ids, gen, (size_t)(p->n_gen - 1) * 4);
        double *ref = f64_forward(&r, seq, p->rows);
        d = rel_diff_d(lg, ref, nv, &at);
        ck_assert_msg(d <= REL_F64, "%s prompt %d: vs float64 %.3g of max |logit| at row %lld "
                      "token %lld (%.8g vs %.10g)", m->name, pi, d, (long long)(at / V),
                      (long long)(at % V), lg[at], ref[at]);
        worst_f64 = fmax(worst_f64, d);
        /* the committed file against float64 as well: a corrupt or stale file fails here */
        d = rel_diff_d(hf, ref, nv, &at);
        ck_assert_msg(d <= REL_HF_F64, "%s prompt %d: the transformers file vs float64: %.3g", m->name,
                      pi, d);
        worst_hf_f64 = fmax(worst_hf_f64, d);

        /* the last-row-only head (what decoding uses) in another slot: the same bits */
        float *last = malloc(V * 4);
        forward_rows(s, 1, 0, p->ids, p->n_ids, false, last);
        ck_assert_msg(memcmp(last, lg + (size_t)(p->n_ids - 1) * V, V * 4) == 0,
                      "%s prompt %d: last-row logits differ from the all-rows ones", m->name, pi);
        free(last);

        /* NF4 on the same tokens: bit-exact with dense-on-dequantized, cosine to none */
        double cos[MAX_SEQ];
        check_quant(g_be, &f, SQ_QUANT_NF4, false, seq, p->n_ids, p->rows, lg, m->name, cos);
        for (int k = 0; k < p->rows; k++) worst_cos = fmin(worst_cos, cos[k]);
        /* int8 (absmax, zero-point): the same, and closer to none than NF4 */
        check_quant(g_be, &f, SQ_QUANT_INT8, false, seq, p->n_ids, p->rows, lg, m->name, cos);
        for (int k = 0; k < p->rows; k++) worst_cos_i8 = fmin(worst_cos_i8, cos[k]);
        check_quant(g_be, &f, SQ_QUANT_INT8_ZP, false, seq, p->n_ids, p->rows, lg, m->name, cos);
        for (int k = 0; k < p->rows; k++) worst_cos_zp = fmin(worst_cos_zp, cos[k]);
        free(ref); free(hf); free(lg);
    }
    printf("reference %-17s none vs transformers %.2e, vs float64 %.2e (transformers file vs "
           "float64 %.2e); greedy ids equal (smallest top-2 gap %.2e); nf4, int8, int8-zp == "
           "dense(dequantized) bit for bit, min row cosine vs none: nf4 %.5f, int8 %.6f, int8-zp %.6f\n",
           m->name, worst_hf, worst_f64, worst_hf_f64, min_gap, worst_cos, worst_cos_i8, worst_cos_zp);
    /* 8 bits per weight (255 steps per row) against NF4's 16 levels per block: closer to none */
    ck_assert_msg(worst_cos_i8 > worst_cos && worst_cos_zp > worst_cos,
                  "%s: int8 (%.6f) / int8-zp (%.6f) not closer to none than nf4 (%.6f)", m->name,
                  worst_cos_i8, worst_cos_zp, worst_cos);
    fflush(stdout);
    sq_stage_destroy(s);
    f64_close(&r);
    folder_close(&f);
    rm_rf(dir);
    free(dir);
    free(ms);
}
END_TEST

/* The `small` preset (manifest "nf4_models"): none vs float64; NF4 and NF4 + double quant ==
 * dense on the dequantized weights, bit for bit; and the per-row cosine nf4 vs none equal to the
 * one bitsandbytes' own NF4 round trip gives in transformers (committed), within 1e-4.
 * The issue asks for cosine > 0.99 here: no NF4 implementation reaches it on make-model's iid
 * N(0, 0.02) weights (bitsandbytes measures 0.954-0.961 on these three models), so the bound
 * checked is "as close to none as bitsandbytes' NF4", plus a floor of MIN_COSINE_SMALL. */
#define COS_VS_BNB 1e-4
#define MIN_COSINE_SMALL 0.95

START_TEST(test_small_nf4) {
    ref_model *ms = calloc(MAX_MODELS, sizeof *ms);
    char ver[256];
    int n = load_manifest("nf4_models", ms, MAX_MODELS, ver, sizeof ver);
    ck_assert_int_lt(_i, n);
    const ref_model *m = &ms[_i];
    char *dir = sq_test_tmpdir("refsmall");
    char mdir[1024];
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    make_model(mdir, m->args);
    check_hash(mdir, m);
    folder f;
    folder_open(&f, mdir);
    int64_t V = f.cfg.vocab_size;
    int NT = m->n_tok, NP = NT / 2 + 1;   /* prefill 9 of 16, then 7 decode steps */
    sq_stage *s = load_stage(g_be, &f, SQ_QUANT_NONE, false);
    float *none = run_sequence(s, m->tok, NP, NT, NULL, 0);
    f64_model r = f64_open(&f);
    double *ref = f64_forward(&r, m->tok, NT);
    int64_t at = 0;
    double d64 = rel_diff_d(none, ref, NT * V, &at);
    ck_assert_msg(d64 <= REL_F64, "%s: none vs float64 %.3g", m->name, d64);
    double cq[MAX_SEQ], cd[MAX_SEQ], mq = 1, md = 1, dev = 0;
    check_quant(g_be, &f, SQ_QUANT_NF4, false, m->tok, NP, NT, none, m->name, cq);
    check_quant(g_be, &f, SQ_QUANT_NF4, true, m->tok, NP, NT, none, m->name, cd);
    for (int k = 0; k < NT; k++) {
        mq = fmin(mq, cq[k]);
        md = fmin(md, cd[k]);
        dev = fmax(dev, fmax(fabs(cq[k] - m->cos_nf4[k]), fabs(cd[k] - m->cos_nf4_dq[k])));
        ck_assert_msg(fabs(cq[k] - m->cos_nf4[k]) <= COS_VS_BNB, "%s row %d: nf4 cosine %.6f, "
                      "bitsandbytes' %.6f", m->name, k, cq[k], m->cos_nf4[k]);
        ck_assert_msg(fabs(cd[k] - m->cos_nf4_dq[k]) <= COS_VS_BNB, "%s row %d: nf4+dq cosine "
                      "%.6f, bitsandbytes' %.6f", m->name, k, cd[k], m->cos_nf4_dq[k]);
    }
    printf("reference %-17s none vs float64 %.2e; nf4 == dense(dequantized) bit for bit; min row "
           "cosine vs none over %d rows: nf4 %.5f, nf4+dq %.5f (bitsandbytes' within %.1e)\n",
           m->name, d64, NT, mq, md, dev);
    fflush(stdout);
    ck_assert_msg(mq > MIN_COSINE_SMALL && md > MIN_COSINE_SMALL, "%s: cosine %.5f / %.5f",
                  m->name, mq, md);
    free(none); free(ref);
    f64_close(&r);
    sq_stage_destroy(s);
    folder_close(&f);
    rm_rf(dir);
    free(dir);
    free(ms);
}
END_TEST

/* ---- a bitsandbytes 8-bit folder saved by transformers, run as stored -------------------------- */

#define INT8_DIR SQ_SOURCE_DIR "/tests/reference/int8/llama_tiny_bnb8"

typedef struct {
    const sq_ckpt *st;
    int n_int8;
} int8_check;

/* every 8-bit weight the loader hands over is the file's bytes: codes = weight, row_scale = SCB */
static sq_status consume_check_int8(void *user, sq_load_item *it, sq_error *err) {
    (void)err;
    int8_check *c = user;
    if (!it->spec->quantizable) return SQ_OK;
    ck_assert_msg(it->is_4bit && it->prequantized && it->q.type == SQ_QUANT_INT8, "%s", it->spec->name);
    const sq_ckpt_tensor *w = sq_ckpt_find(c->st, it->spec->name);
    char scb_name[256];
    snprintf(scb_name, sizeof scb_name, "%.*sSCB", (int)strlen(it->spec->name) - 6, it->spec->name);
    const sq_ckpt_tensor *scb = sq_ckpt_find(c->st, scb_name);
    ck_assert(w && scb && w->dtype == SQ_DTYPE_I8);
    ck_assert_int_eq(memcmp(it->q.codes, sq_ckpt_data(c->st, w), (size_t)w->n_bytes), 0);
    ck_assert_int_eq(memcmp(it->q.row_scale, sq_ckpt_data(c->st, scb), (size_t)scb->n_bytes), 0);
    c->n_int8++;
    return SQ_OK;
}

/* transformers' save_pretrained after load_in_8bit (tests/reference/check_int8_roundtrip.py
 * fixture): read as stored (no re-quantization), its logits equal the dense path on the
 * dequantized values bit for bit, and match transformers' float32 forward on the dequantized
 * model (int8 * SCB / 127) within REL_HF with the same greedy tokens. */
START_TEST(test_bnb_int8_as_stored) {
    sq_error err;
    sq_error_init(&err, -1);
    folder f;
    folder_open(&f, INT8_DIR);
    ck_assert(f.cfg.bnb_8bit);
    sq_quant_scheme stored;
    ck_assert_int_eq(sq_meta_stored_scheme(f.meta, &stored, &err), SQ_OK);
    ck_assert_int_eq(stored.type, SQ_QUANT_INT8);
    int8_check chk = {f.st, 0};
    sq_load_options o = sq_load_options_default();
    o.scheme = stored;
    sq_load_stage_desc all = {0, (int)f.cfg.n_layers, true, true};
    ck_assert_msg(sq_load_stage(f.st, f.meta, &all, &o, consume_check_int8, &chk, NULL, &err) == SQ_OK,
                  "%s", err.msg);
    ck_assert_int_eq(chk.n_int8, 7 * f.cfg.n_layers);

    size_t len = 0;
    char *txt = sq_test_read_file(INT8_DIR ".json", &len);
    cJSON *j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    ck_assert_msg(j, "cannot read %s.json", INT8_DIR);
    int32_t prompt[MAX_IDS], want[MAX_IDS];
    int np = read_ids(cJSON_GetObjectItem(j, "prompt"), prompt);
    int ng = read_ids(cJSON_GetObjectItem(j, "generated"), want);
    int rows = (int)cJSON_GetObjectItem(j, "rows")->valuedouble;
    int64_t V = (int64_t)cJSON_GetObjectItem(j, "vocab")->valuedouble;
    cJSON_Delete(j);
    free(txt);
    ck_assert_int_eq(rows, np + ng - 1);
    ck_assert_int_eq(V, f.cfg.vocab_size);
    size_t nref = 0;
    float *ref = (float *)sq_test_read_file(INT8_DIR ".logits.f32", &nref);
    ck_assert(ref && nref == (size_t)rows * V * 4);

    sq_stage *s = load_stage(g_be, &f, SQ_QUANT_INT8, false);
    int32_t gen[MAX_IDS];
    float *lg = run_sequence(s, prompt, np, np, gen, ng);
    for (int k = 0; k < ng; k++)
        ck_assert_msg(gen[k] == want[k], "greedy token %d is %d, transformers (dequantized) chose %d", k,
                      gen[k], want[k]);
    int64_t at = 0;
    double d = rel_diff_f(lg, ref, (int64_t)rows * V, &at);
    ck_assert_msg(d <= REL_HF, "vs transformers on the dequantized weights: %.3g of max |logit| at row %lld",
                  d, (long long)(at / V));
    int32_t seq[MAX_SEQ];
    memcpy(seq, prompt, (size_t)np * 4);
    memcpy(seq + np, gen, (size_t)(ng - 1) * 4);
    double cos[MAX_SEQ];
    check_quant(g_be, &f, SQ_QUANT_INT8, false, seq, np, rows, lg, "llama_tiny_bnb8", cos);
    printf("reference llama_tiny_bnb8   transformers' 8-bit folder as stored: %d int8 weights = the file's "
           "bytes; == dense(dequantized) bit for bit; vs transformers float32 on the dequantized "
           "weights %.2e of max |logit|, %d greedy ids equal\n", chk.n_int8, d, ng);
    fflush(stdout);
    free(lg);
    free(ref);
    sq_stage_destroy(s);
    folder_close(&f);
}
END_TEST

static int manifest_count(const char *list) {
    size_t len = 0;
    char *txt = sq_test_read_file(REF_DIR "/manifest.json", &len);
    cJSON *root = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    int n = root ? cJSON_GetArraySize(cJSON_GetObjectItem(root, list)) : 0;
    cJSON_Delete(root);
    free(txt);
    return n > MAX_MODELS ? MAX_MODELS : n;
}

int main(void) {
    Suite *su = suite_create("reference_logits");
    TCase *tc = tcase_create("reference");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_manifest);
    /* a broken manifest (no models) fails test_manifest */
    tcase_add_loop_test(tc, test_model_vs_references, 0, manifest_count("models"));
    tcase_add_loop_test(tc, test_small_nf4, 0, manifest_count("nf4_models"));
    tcase_add_test(tc, test_bnb_int8_as_stored);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
