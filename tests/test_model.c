/* Tests of the model module: a tiny decoder (random weights made here; GQA; tied Llama and
 * untied Qwen2 with q/k/v biases; llama3 rope) run through sq_stage against an independent
 * float64 forward pass written plainly below (no backend), plus the bit-exact invariances:
 * batch vs alone, prefill vs token by token, one stage vs two, NF4 vs dense on the dequantized
 * weights; and the errors a loader or scheduler can hit. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/model.h"
#include "testutil.h"

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 7; }
static float rng_f(float lo, float hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

enum { NL = 4, MAXS = 16 };

typedef struct {
    sq_model_config cfg;
    float *embed, *final_norm, *lm_head;            /* lm_head NULL when tied */
    float *w[NL][SQ_ROLE_COUNT];                     /* per layer, by role */
} host_model;

static float *rvec(int64_t n, float lo, float hi) {
    float *v = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) v[i] = rng_f(lo, hi);
    return v;
}

static sq_model_config tiny_cfg(sq_arch arch, bool tied, bool bias, sq_rope_kind rope) {
    sq_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.n_layers = NL;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 96;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = rope == SQ_ROPE_LLAMA3 ? 500000 : 10000;
    c.rope_scaling.kind = rope;
    if (rope == SQ_ROPE_LLAMA3) {
        c.rope_scaling.factor = 8;
        c.rope_scaling.low_freq_factor = 1;
        c.rope_scaling.high_freq_factor = 4;
        c.rope_scaling.original_max_position_embeddings = 64;
    } else if (rope != SQ_ROPE_DEFAULT) {
        c.rope_scaling.factor = 2;
    }
    c.max_position_embeddings = 128;
    c.tie_word_embeddings = tied;
    c.attention_bias = bias;
    c.torch_dtype = SQ_DTYPE_F32;
    return c;
}

static void shape_of(const sq_model_config *c, sq_tensor_role r, int64_t *rows, int64_t *cols) {
    int64_t H = c->hidden_size, I = c->intermediate_size, q = c->n_heads * c->head_dim,
            k = c->n_kv_heads * c->head_dim;
    *rows = 1;
    switch (r) {
    case SQ_ROLE_Q: *rows = q; *cols = H; break;
    case SQ_ROLE_K: case SQ_ROLE_V: *rows = k; *cols = H; break;
    case SQ_ROLE_O: *rows = H; *cols = q; break;
    case SQ_ROLE_GATE: case SQ_ROLE_UP: *rows = I; *cols = H; break;
    case SQ_ROLE_DOWN: *rows = H; *cols = I; break;
    case SQ_ROLE_Q_BIAS: *cols = q; break;
    case SQ_ROLE_K_BIAS: case SQ_ROLE_V_BIAS: *cols = k; break;
    default: *cols = H; break;
    }
}

static const sq_tensor_role LAYER_ROLES[] = {
    SQ_ROLE_ATTN_NORM, SQ_ROLE_Q, SQ_ROLE_K, SQ_ROLE_V, SQ_ROLE_O, SQ_ROLE_Q_BIAS,
    SQ_ROLE_K_BIAS, SQ_ROLE_V_BIAS, SQ_ROLE_MLP_NORM, SQ_ROLE_GATE, SQ_ROLE_UP, SQ_ROLE_DOWN};
#define N_LAYER_ROLES (sizeof LAYER_ROLES / sizeof *LAYER_ROLES)

static bool is_bias(sq_tensor_role r) {
    return r == SQ_ROLE_Q_BIAS || r == SQ_ROLE_K_BIAS || r == SQ_ROLE_V_BIAS;
}
static bool is_norm(sq_tensor_role r) { return r == SQ_ROLE_ATTN_NORM || r == SQ_ROLE_MLP_NORM; }

static host_model make_model(sq_model_config cfg, uint64_t seed) {
    rng_seed(seed);
    host_model m;
    memset(&m, 0, sizeof m);
    m.cfg = cfg;
    int64_t H = cfg.hidden_size, V = cfg.vocab_size;
    m.embed = rvec(V * H, -1, 1);
    m.final_norm = rvec(H, 0.8f, 1.2f);
    if (!cfg.tie_word_embeddings) m.lm_head = rvec(V * H, -0.2f, 0.2f);
    for (int l = 0; l < NL; l++)
        for (size_t i = 0; i < N_LAYER_ROLES; i++) {
            sq_tensor_role r = LAYER_ROLES[i];
            if (is_bias(r) && !cfg.attention_bias) continue;
            int64_t rows, cols;
            shape_of(&cfg, r, &rows, &cols);
            float a = 1.0f / sqrtf((float)cols);
            m.w[l][r] = is_norm(r) ? rvec(cols, 0.8f, 1.2f) : is_bias(r) ? rvec(cols, -0.5f, 0.5f)
                                                                       : rvec(rows * cols, -a, a);
        }
    return m;
}

static void free_model(host_model *m) {
    free(m->embed); free(m->final_norm); free(m->lm_head);
    for (int l = 0; l < NL; l++)
        for (int r = 0; r < SQ_ROLE_COUNT; r++) free(m->w[l][r]);
}

/* ---- the float64 reference forward (whole sequence, no cache) ------------------------------- */

static void ref_rmsnorm(const double *x, const float *w, int64_t n, double eps, double *out) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}
static void ref_linear(const double *x, const float *w, const float *b, int64_t rows, int64_t cols,
                       double *out) {
    for (int64_t o = 0; o < rows; o++) {
        double s = b ? b[o] : 0;
        for (int64_t k = 0; k < cols; k++) s += (double)w[o * cols + k] * x[k];
        out[o] = s;
    }
}
static double ref_inv_freq(const sq_model_config *c, int i) {
    double inv = pow(c->rope_theta, -(2.0 * i) / (double)c->head_dim);
    const sq_rope_scaling *s = &c->rope_scaling;
    if (s->kind == SQ_ROPE_LINEAR) return inv / s->factor;
    if (s->kind == SQ_ROPE_LLAMA3) {
        double orig = (double)s->original_max_position_embeddings, wl = 2 * M_PI / inv;
        if (wl > orig / s->low_freq_factor) return inv / s->factor;
        if (wl < orig / s->high_freq_factor) return inv;
        double sm = (orig / wl - s->low_freq_factor) / (s->high_freq_factor - s->low_freq_factor);
        return (1 - sm) * inv / s->factor + sm * inv;
    }
    return inv;
}
static void ref_rope(double *x, int n_heads, int hd, int pos, const sq_model_config *c) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < hd / 2; i++) {
            double a = pos * ref_inv_freq(c, i), *p = x + h * hd;
            double x1 = p[i], x2 = p[i + hd / 2];
            p[i] = x1 * cos(a) - x2 * sin(a);
            p[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
        }
}

/* logits (T, V) for tokens[0..T) of one sequence */
static double *ref_forward(const host_model *m, const int32_t *tok, int T) {
    const sq_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int nh = (int)c->n_heads, nkv = (int)c->n_kv_heads, hd = (int)c->head_dim;
    int64_t qw = nh * hd, kw = nkv * hd;
    double *x = calloc(T * H, 8), *h = calloc(H, 8), *q = calloc(T * qw, 8), *k = calloc(T * kw, 8),
           *v = calloc(T * kw, 8), *att = calloc(qw, 8), *t = calloc(H, 8), *g = calloc(I, 8),
           *u = calloc(I, 8), *lg = calloc(T * V, 8);
    for (int p = 0; p < T; p++)
        for (int64_t i = 0; i < H; i++) x[p * H + i] = m->embed[tok[p] * H + i];
    for (int l = 0; l < NL; l++) {
        float *const *w = m->w[l];
        for (int p = 0; p < T; p++) {
            ref_rmsnorm(x + p * H, w[SQ_ROLE_ATTN_NORM], H, c->rms_norm_eps, h);
            ref_linear(h, w[SQ_ROLE_Q], w[SQ_ROLE_Q_BIAS], qw, H, q + p * qw);
            ref_linear(h, w[SQ_ROLE_K], w[SQ_ROLE_K_BIAS], kw, H, k + p * kw);
            ref_linear(h, w[SQ_ROLE_V], w[SQ_ROLE_V_BIAS], kw, H, v + p * kw);
            ref_rope(q + p * qw, nh, hd, p, c);
            ref_rope(k + p * kw, nkv, hd, p, c);
        }
        for (int p = 0; p < T; p++) {
            for (int hh = 0; hh < nh; hh++) {
                int gk = hh / (nh / nkv);
                double sc[MAXS], mx = -1e300, sum = 0;
                for (int j = 0; j <= p; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[p * qw + hh * hd + i] * k[j * kw + gk * hd + i];
                    sc[j] = d / sqrt((double)hd);
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int j = 0; j <= p; j++) o += sc[j] / sum * v[j * kw + gk * hd + i];
                    att[hh * hd + i] = o;
                }
            }
            ref_linear(att, w[SQ_ROLE_O], NULL, H, qw, t);
            for (int64_t i = 0; i < H; i++) x[p * H + i] += t[i];
            ref_rmsnorm(x + p * H, w[SQ_ROLE_MLP_NORM], H, c->rms_norm_eps, h);
            ref_linear(h, w[SQ_ROLE_GATE], NULL, I, H, g);
            ref_linear(h, w[SQ_ROLE_UP], NULL, I, H, u);
            for (int64_t i = 0; i < I; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            ref_linear(g, w[SQ_ROLE_DOWN], NULL, H, I, t);
            for (int64_t i = 0; i < H; i++) x[p * H + i] += t[i];
        }
    }
    for (int p = 0; p < T; p++) {
        ref_rmsnorm(x + p * H, m->final_norm, H, c->rms_norm_eps, h);
        ref_linear(h, m->lm_head ? m->lm_head : m->embed, NULL, V, H, lg + p * V);
    }
    free(x); free(h); free(q); free(k); free(v); free(att); free(t); free(g); free(u);
    return lg;
}

/* ---- building stages ------------------------------------------------------------------------- */

static sq_backend *g_be;

static void setup(void) {
    sq_error err;
    ck_assert_int_eq(sq_backend_create_cpu(2, &g_be, &err), SQ_OK);
}
static void teardown(void) { sq_backend_destroy(g_be); }

/* A stage with layers [first, first + n); quant NF4 / FP4 quantizes the decoder Linears with
 * the quant module; deq_out (optional) gets a copy of the model whose Linears hold the
 * dequantized values (to run the dense path on them). */
static sq_stage *mk_stage(const host_model *m, int64_t first, int64_t n, bool emb, bool head,
                          sq_quant_type quant, host_model *deq_out) {
    sq_stage_params p;
    memset(&p, 0, sizeof p);
    p.cfg = m->cfg;
    p.first_layer = first;
    p.n_layers = n;
    p.has_embed = emb;
    p.has_head = head;
    p.scheme.type = quant;
    p.scheme.blocksize = 64;
    p.scheme.dense_dtype = SQ_DTYPE_F32;
    p.max_seq = MAXS;
    p.max_batch = 3;
    p.max_tokens = 16;
    p.max_logit_rows = 16;
    sq_stage *s = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_stage_create(g_be, &p, &s, &err) == SQ_OK, "%s", err.msg);
    const sq_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, V = c->vocab_size;
    int64_t sh[2] = {V, H}, sh1[2] = {H, 0};
    if (sq_stage_wants(s, SQ_ROLE_EMBED, -1))
        ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_EMBED, -1, "embed", SQ_DTYPE_F32, m->embed, 2, sh, &err), SQ_OK);
    if (head) {
        ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_FINAL_NORM, -1, "norm", SQ_DTYPE_F32, m->final_norm, 1, sh1, &err), SQ_OK);
        if (m->lm_head)
            ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_LM_HEAD, -1, "lm_head", SQ_DTYPE_F32, m->lm_head, 2, sh, &err), SQ_OK);
    }
    for (int64_t l = first; l < first + n; l++)
        for (size_t i = 0; i < N_LAYER_ROLES; i++) {
            sq_tensor_role r = LAYER_ROLES[i];
            if (!m->w[l][r]) {
                ck_assert(!sq_stage_wants(s, r, l));
                continue;
            }
            ck_assert(sq_stage_wants(s, r, l));
            int64_t rows, cols;
            shape_of(c, r, &rows, &cols);
            int64_t shp[2] = {rows, cols}, shp1[2] = {cols, 0};
            bool lin = !is_bias(r) && !is_norm(r);
            if (lin && quant != SQ_QUANT_NONE) {
                sq_qtensor q;
                ck_assert_msg(sq_quant_4bit(m->w[l][r], rows, cols, SQ_DTYPE_F32, &p.scheme, NULL, &q, &err) == SQ_OK, "%s", err.msg);
                ck_assert_msg(sq_stage_set_4bit(s, r, l, "w", &q, &err) == SQ_OK, "%s", err.msg);
                if (deq_out) sq_dequant_4bit_f32(&q, 0, q.n_elements, deq_out->w[l][r]);
                sq_qtensor_free(&q);
            } else {
                ck_assert_msg(sq_stage_set_dense(s, r, l, "w", SQ_DTYPE_F32, m->w[l][r], lin ? 2 : 1, lin ? shp : shp1, &err) == SQ_OK, "%s", err.msg);
            }
        }
    ck_assert_msg(sq_stage_check_ready(s, &err) == SQ_OK, "%s", err.msg);
    return s;
}

static host_model copy_model(const host_model *m) {
    host_model c = *m;
    int64_t H = m->cfg.hidden_size, V = m->cfg.vocab_size;
#define DUP(dst, src, n) do { dst = malloc((n) * 4); memcpy(dst, src, (n) * 4); } while (0)
    DUP(c.embed, m->embed, V * H);
    DUP(c.final_norm, m->final_norm, H);
    if (m->lm_head) DUP(c.lm_head, m->lm_head, V * H);
    for (int l = 0; l < NL; l++)
        for (int r = 0; r < SQ_ROLE_COUNT; r++)
            if (m->w[l][r]) {
                int64_t rows, cols;
                shape_of(&m->cfg, (sq_tensor_role)r, &rows, &cols);
                DUP(c.w[l][r], m->w[l][r], rows * cols);
            }
    return c;
}

/* forward of one call; returns malloc'd logits (out rows x V) when the stage has a head */
static float *fwd(sq_stage *s, int n_seqs, const sq_seq_span *sp, const int32_t *tok,
                  const void *hidden_d, bool all) {
    sq_stage_input b = {n_seqs, sp, tok, hidden_d, all};
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_msg(sq_stage_forward(s, &b, &err) == SQ_OK, "%s", err.msg);
    if (!sq_stage_get_params(s)->has_head) return NULL;
    int64_t n = sq_stage_n_out_rows(s), V = sq_stage_get_params(s)->cfg.vocab_size;
    float *lg = malloc(n * V * 4);
    ck_assert_int_eq(sq_stage_read_logits(s, lg, n, &err), SQ_OK);
    return lg;
}

static void check_close(const float *got, const double *ref, int64_t n, double rel, const char *what) {
    double mx = 0;
    for (int64_t i = 0; i < n; i++) mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(got[i] - ref[i]) <= rel * mx, "%s [%lld]: %.8g vs %.8g (max %g)", what,
                      (long long)i, got[i], ref[i], mx);
}

static const int32_t TOK_A[9] = {5, 17, 88, 3, 42, 42, 0, 95, 61};
static const int32_t TOK_B[7] = {11, 7, 64, 2, 90, 33, 50};

/* The scenario: A prefilled (6 tokens, all logits) in slot 1; B prefilled (4) in slot 2;
 * then 3 decode steps with A and B in one batch.  Returns A's logits rows (9 x V). */
static float *scenario(sq_stage *const *stages, int n_stages, const host_model *m, float **b_rows) {
    int64_t V = m->cfg.vocab_size;
    float *a = malloc(9 * V * 4), *b = malloc(7 * V * 4);
    for (int call = 0; call < 5; call++) {
        sq_seq_span sp[2];
        int32_t tok[16];
        int ns;
        if (call == 0) { sp[0] = (sq_seq_span){1, 0, 6}; memcpy(tok, TOK_A, 6 * 4); ns = 1; }
        else if (call == 1) { sp[0] = (sq_seq_span){2, 0, 4}; memcpy(tok, TOK_B, 4 * 4); ns = 1; }
        else {
            int p = 4 + call;   /* A at 6, 7, 8; B at 4, 5, 6 */
            sp[0] = (sq_seq_span){2, p - 2, 1};
            sp[1] = (sq_seq_span){1, p, 1};
            tok[0] = TOK_B[p - 2];
            tok[1] = TOK_A[p];
            ns = 2;
        }
        const void *h = NULL;
        float *lg = NULL;
        for (int st = 0; st < n_stages; st++) {
            lg = fwd(stages[st], ns, sp, tok, h, call < 2);
            h = sq_stage_hidden_d(stages[st]);
        }
        if (call == 0) memcpy(a, lg, 6 * V * 4);
        else if (call == 1) memcpy(b, lg, 4 * V * 4);
        else {
            memcpy(b + (4 + call - 2) * V, lg, V * 4);
            memcpy(a + (4 + call) * V, lg + V, V * 4);
        }
        free(lg);
    }
    if (b_rows) *b_rows = b;
    else free(b);
    return a;
}

static void run_reference_case(sq_model_config cfg, uint64_t seed) {
    host_model m = make_model(cfg, seed);
    sq_stage *s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    float *b = NULL;
    float *a = scenario(&s, 1, &m, &b);
    int64_t V = cfg.vocab_size;
    double *ra = ref_forward(&m, TOK_A, 9), *rb = ref_forward(&m, TOK_B, 7);
    check_close(a, ra, 9 * V, 1e-5, "sequence A");
    check_close(b, rb, 7 * V, 1e-5, "sequence B");

    /* A alone, token by token, in another slot: the same bits as prefill + batched decode */
    sq_stage *s2 = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    for (int p = 0; p < 9; p++) {
        sq_seq_span sp = {0, p, 1};
        float *lg = fwd(s2, 1, &sp, &TOK_A[p], NULL, false);
        ck_assert_msg(memcmp(lg, a + p * V, V * 4) == 0, "A at %d: alone token by token differs", p);
        free(lg);
    }
    /* two stages [0, 2) + [2, 4) give the same bits as one */
    sq_stage *two[2] = {mk_stage(&m, 0, 2, true, false, SQ_QUANT_NONE, NULL),
                        mk_stage(&m, 2, 2, false, true, SQ_QUANT_NONE, NULL)};
    float *b2 = NULL;
    float *a2 = scenario(two, 2, &m, &b2);
    ck_assert_int_eq(memcmp(a, a2, 9 * V * 4), 0);
    ck_assert_int_eq(memcmp(b, b2, 7 * V * 4), 0);
    /* four stages of one layer each (the first with no layer work besides embedding is
     * covered by an embed-only stage in front) */
    sq_stage *five[5] = {mk_stage(&m, 0, 0, true, false, SQ_QUANT_NONE, NULL),
                         mk_stage(&m, 0, 1, false, false, SQ_QUANT_NONE, NULL),
                         mk_stage(&m, 1, 1, false, false, SQ_QUANT_NONE, NULL),
                         mk_stage(&m, 2, 1, false, false, SQ_QUANT_NONE, NULL),
                         mk_stage(&m, 3, 1, false, true, SQ_QUANT_NONE, NULL)};
    float *a5 = scenario(five, 5, &m, NULL);
    ck_assert_int_eq(memcmp(a, a5, 9 * V * 4), 0);
    for (int i = 0; i < 5; i++) sq_stage_destroy(five[i]);
    free(a5);
    free(a); free(b); free(a2); free(b2); free(ra); free(rb);
    sq_stage_destroy(s); sq_stage_destroy(s2); sq_stage_destroy(two[0]); sq_stage_destroy(two[1]);
    free_model(&m);
}

START_TEST(test_llama_tied) { run_reference_case(tiny_cfg(SQ_ARCH_LLAMA, true, false, SQ_ROPE_DEFAULT), 1); }
END_TEST
START_TEST(test_qwen2_untied_bias) { run_reference_case(tiny_cfg(SQ_ARCH_QWEN2, false, true, SQ_ROPE_DEFAULT), 2); }
END_TEST
START_TEST(test_llama3_rope) { run_reference_case(tiny_cfg(SQ_ARCH_LLAMA, false, false, SQ_ROPE_LLAMA3), 3); }
END_TEST
START_TEST(test_linear_rope) { run_reference_case(tiny_cfg(SQ_ARCH_MISTRAL, true, false, SQ_ROPE_LINEAR), 4); }
END_TEST

/* "dynamic" rope scaling within max_position_embeddings is the default rope, bit for bit
 * (HF only rescales past it); the same model with "linear" scaling differs, so the comparison
 * can see a stage that computes dynamic as linear. */
START_TEST(test_dynamic_rope_is_default_within_max_pos) {
    host_model m = make_model(tiny_cfg(SQ_ARCH_LLAMA, false, false, SQ_ROPE_DEFAULT), 6);
    ck_assert_int_le(MAXS, m.cfg.max_position_embeddings);
    int64_t V = m.cfg.vocab_size;
    sq_stage *s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    float *def = scenario(&s, 1, &m, NULL);
    sq_stage_destroy(s);
    m.cfg.rope_scaling.kind = SQ_ROPE_DYNAMIC;
    m.cfg.rope_scaling.factor = 2;
    s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    float *dyn = scenario(&s, 1, &m, NULL);
    sq_stage_destroy(s);
    ck_assert_msg(memcmp(def, dyn, 9 * (size_t)V * 4) == 0, "dynamic rope differs from default");
    m.cfg.rope_scaling.kind = SQ_ROPE_LINEAR;
    s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    float *lin = scenario(&s, 1, &m, NULL);
    sq_stage_destroy(s);
    ck_assert_msg(memcmp(def, lin, 9 * (size_t)V * 4) != 0, "linear rope should differ");
    free(def);
    free(dyn);
    free(lin);
    free_model(&m);
}
END_TEST

/* NF4 / FP4 stages equal, bit for bit, the dense path on the dequantized weights (the 4-bit
 * Linear uses the dequantized float32 value and the dense reduction order), and stay close to
 * the unquantized model. */
START_TEST(test_4bit_vs_dequantized) {
    sq_model_config cfg = tiny_cfg(SQ_ARCH_QWEN2, false, true, SQ_ROPE_DEFAULT);
    host_model m = make_model(cfg, 5);
    int64_t V = cfg.vocab_size;
    for (int qt = SQ_QUANT_NF4; qt <= SQ_QUANT_FP4; qt++) {
        host_model d = copy_model(&m);
        sq_stage *q = mk_stage(&m, 0, NL, true, true, (sq_quant_type)qt, &d);
        sq_stage *dense = mk_stage(&d, 0, NL, true, true, SQ_QUANT_NONE, NULL);
        float *aq = scenario(&q, 1, &m, NULL), *ad = scenario(&dense, 1, &d, NULL);
        ck_assert_msg(memcmp(aq, ad, 9 * V * 4) == 0, "quant %d: 4-bit and dequantized-dense differ", qt);
        /* close to the unquantized model: cosine similarity of the last logits */
        double *r = ref_forward(&m, TOK_A, 9), dot = 0, na = 0, nb = 0;
        for (int64_t i = 8 * V; i < 9 * V; i++) { dot += aq[i] * r[i]; na += (double)aq[i] * aq[i]; nb += r[i] * r[i]; }
        ck_assert_msg(dot / sqrt(na * nb) > 0.95, "quant %d: cosine %g", qt, dot / sqrt(na * nb));
        ck_assert_uint_lt(sq_stage_weight_bytes(q), sq_stage_weight_bytes(dense));
        free(aq); free(ad); free(r);
        sq_stage_destroy(q); sq_stage_destroy(dense);
        free_model(&d);
    }
    free_model(&m);
}
END_TEST

/* embed + layers + head on caller-held activations == forward, bit for bit */
START_TEST(test_split_calls) {
    sq_model_config cfg = tiny_cfg(SQ_ARCH_QWEN2, false, true, SQ_ROPE_DEFAULT);
    host_model m = make_model(cfg, 7);
    int64_t V = cfg.vocab_size, H = cfg.hidden_size;
    sq_stage *s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    sq_stage *t = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    sq_stage *mid = mk_stage(&m, 1, 2, false, false, SQ_QUANT_NONE, NULL);
    sq_seq_span sp = {2, 0, 6};
    float *ref = fwd(s, 1, &sp, TOK_A, NULL, true);
    void *act = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_int_eq(sq_backend_alloc(g_be, 16 * H * 4, &act, &err), SQ_OK);
    sq_stage_input in = {1, &sp, TOK_A, NULL, true};
    ck_assert_int_eq(sq_stage_embed(t, &in, act, &err), SQ_OK);
    ck_assert_int_eq(sq_stage_layers(t, &in, act, &err), SQ_OK);
    ck_assert_int_eq(sq_stage_head(t, &in, act, &err), SQ_OK);
    float *got = malloc(6 * V * 4);
    ck_assert_int_eq(sq_stage_read_logits(t, got, 6, &err), SQ_OK);
    ck_assert_int_eq(memcmp(ref, got, 6 * V * 4), 0);
    ck_assert_int_eq(sq_stage_embed(mid, &in, act, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "not the first stage"));
    ck_assert_int_eq(sq_stage_head(mid, &in, act, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "not the last stage"));
    sq_backend_free(g_be, act);
    free(ref); free(got);
    sq_stage_destroy(s); sq_stage_destroy(t); sq_stage_destroy(mid);
    free_model(&m);
}
END_TEST

START_TEST(test_errors) {
    sq_model_config cfg = tiny_cfg(SQ_ARCH_LLAMA, true, false, SQ_ROPE_DEFAULT);
    host_model m = make_model(cfg, 6);
    sq_stage_params p;
    memset(&p, 0, sizeof p);
    p.cfg = cfg;
    p.n_layers = 2;
    p.has_embed = true;
    p.max_seq = 8;
    p.max_batch = 2;
    p.max_tokens = 4;
    sq_stage *s = NULL;
    sq_error err;
    sq_error_init(&err, -1);
    /* bad params */
    sq_stage_params bp = p;
    bp.n_layers = 5;
    ck_assert_int_eq(sq_stage_create(g_be, &bp, &s, &err), SQ_ERR_INVALID);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(err.msg, "outside the model's 4 layers"));
    bp = p;
    bp.cfg.n_kv_heads = 3;
    ck_assert_int_eq(sq_stage_create(g_be, &bp, &s, &err), SQ_ERR_INVALID);
    bp = p;
    bp.cfg.rope_scaling.kind = SQ_ROPE_DYNAMIC;
    bp.cfg.rope_scaling.factor = 2;
    bp.max_seq = 1000;
    ck_assert_int_eq(sq_stage_create(g_be, &bp, &s, &err), SQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "dynamic"));
    bp.max_seq = 64;   /* within max_position_embeddings: runs as default */
    ck_assert_int_eq(sq_stage_create(g_be, &bp, &s, &err), SQ_OK);
    sq_stage_destroy(s);
    s = NULL;

    ck_assert_int_eq(sq_stage_create(g_be, &p, &s, &err), SQ_OK);
    /* forward before the weights: names the first missing one */
    int32_t tok[5] = {1, 2, 3, 4, 5};
    sq_seq_span sp = {0, 0, 2};
    sq_stage_input b = {1, &sp, tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "not set, first embed_tokens"));
    /* wrong shape, wrong stage, 4-bit norm */
    int64_t bad[2] = {cfg.vocab_size, cfg.hidden_size + 1};
    ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_EMBED, -1, "model.embed_tokens.weight", SQ_DTYPE_F32, m.embed, 2, bad, &err), SQ_ERR_FORMAT);
    ck_assert_str_eq(err.tensor, "model.embed_tokens.weight");
    ck_assert_ptr_nonnull(strstr(err.msg, "[96, 65], the config says [96, 64]"));
    int64_t hs[2] = {cfg.hidden_size, 0};
    ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_ATTN_NORM, 3, "n", SQ_DTYPE_F32, m.w[3][SQ_ROLE_ATTN_NORM], 1, hs, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "does not belong to this stage"));
    ck_assert_int_eq(sq_stage_set_dense(s, SQ_ROLE_FINAL_NORM, -1, "n", SQ_DTYPE_F32, m.final_norm, 1, hs, &err), SQ_ERR_INVALID);
    ck_assert(!sq_stage_wants(s, SQ_ROLE_Q_BIAS, 0));
    ck_assert(!sq_stage_wants(s, SQ_ROLE_LM_HEAD, -1));
    sq_qtensor q;
    memset(&q, 0, sizeof q);
    ck_assert_int_eq(sq_stage_set_4bit(s, SQ_ROLE_ATTN_NORM, 0, "n", &q, &err), SQ_ERR_INVALID);
    sq_stage_destroy(s);

    /* a complete stage; bad batches */
    s = mk_stage(&m, 0, NL, true, true, SQ_QUANT_NONE, NULL);
    int32_t bad_tok[2] = {1, 96};
    sq_seq_span two = {0, 0, 2};
    b = (sq_stage_input){1, &two, bad_tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "token id 96 (row 1)"));
    sq_seq_span past = {0, 15, 2};
    b = (sq_stage_input){1, &past, tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_ERR_INVALID);
    sq_seq_span dup[2] = {{1, 0, 1}, {1, 1, 1}};
    b = (sq_stage_input){2, dup, tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "twice"));
    sq_seq_span many = {0, 0, 17};
    b = (sq_stage_input){1, &many, tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_ERR_INVALID);
    /* sampling from the last forward: greedy == argmax of the read logits */
    sq_seq_span one = {0, 0, 3};
    b = (sq_stage_input){1, &one, tok, NULL, false};
    ck_assert_int_eq(sq_stage_forward(s, &b, &err), SQ_OK);
    float lg[96];
    ck_assert_int_eq(sq_stage_read_logits(s, lg, 1, &err), SQ_OK);
    ck_assert_int_eq(sq_stage_read_logits(s, lg, 2, &err), SQ_ERR_INVALID);
    int best = 0;
    for (int i = 1; i < 96; i++) best = lg[i] > lg[best] ? i : best;
    sq_sample_params gp = {0, 0, 1, 0};
    uint64_t z = 0;
    int32_t id = -1;
    ck_assert_int_eq(sq_stage_sample(s, &gp, &z, &z, &id, &err), SQ_OK);
    ck_assert_int_eq(id, best);
    ck_assert_uint_gt(sq_stage_state_bytes(s), 2u * NL * 3 * MAXS * 32 * 4);
    sq_stage_destroy(s);
    sq_stage_destroy(NULL);
    free_model(&m);
}
END_TEST

int main(void) {
    Suite *su = suite_create("model");
    TCase *tc = tcase_create("stage");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_llama_tied);
    tcase_add_test(tc, test_qwen2_untied_bias);
    tcase_add_test(tc, test_llama3_rope);
    tcase_add_test(tc, test_linear_rope);
    tcase_add_test(tc, test_dynamic_rope_is_default_within_max_pos);
    tcase_add_test(tc, test_4bit_vs_dequantized);
    tcase_add_test(tc, test_split_calls);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
