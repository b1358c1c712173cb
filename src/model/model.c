/* One pipeline stage: its weights, KV cache and run-state buffers, and the decoder forward pass
 * composed from backend ops.  Owns the shape checks of every weight against the config and of
 * every batch against the limits given at create.  Must never dereference backend memory,
 * allocate inside forward, or print (warnings go through the stage's sq_log). */
#include "shardq/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/rope_math.cuh"

enum { L_ATTN_NORM = 0, L_Q, L_K, L_V, L_O, L_QB, L_KB, L_VB, L_MLP_NORM, L_GATE, L_UP, L_DOWN,
       L_COUNT };

typedef struct layer_w {
    sq_weight *w[L_COUNT];
} layer_w;

struct sq_stage {
    sq_backend *be;
    sq_stage_params p;
    int64_t H, I, V, hd, nh, nkv, qw, kw;   /* hidden, inter, vocab, head_dim, heads, widths */
    /* weights */
    layer_w *layers;            /* (n_layers) */
    sq_weight *embed, *final_norm, *lm_head;
    bool head_is_embed;         /* tied: lm_head points at embed (or holds the table alone) */
    /* run state, backend memory; shapes in rows of max_tokens (R) */
    void *x_d;                  /* (R, H) residual stream */
    void *h_d;                  /* (R, H) normed */
    void *q_d, *k_d, *v_d;      /* (R, qw) (R, kw) (R, kw) */
    void *att_d;                /* (R, qw) */
    void *g_d, *u_d;            /* (R, I) */
    void *t_d;                  /* (R, H) projection outputs */
    void *ids_d;                /* (R) int32 */
    void *inv_freq_d;           /* (hd / 2) */
    void *kc_d, *vc_d;          /* (n_layers, max_batch, max_seq, nkv, hd) each */
    void *hl_d;                 /* (max_logit_rows, H) rows picked for logits */
    void *logits_d;             /* (max_logit_rows, V) */
    int32_t *pos;               /* host (R) */
    uint64_t state_bytes;
    int64_t n_out_rows;
};

static const char *const ROLE_NAMES[SQ_ROLE_COUNT] = {
    "embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "q_proj.bias",
    "k_proj.bias", "v_proj.bias", "post_attention_layernorm", "gate_proj", "up_proj",
    "down_proj", "norm", "lm_head"};

const char *sq_stage_role_name(sq_tensor_role r) {
    return (r >= 0 && r < SQ_ROLE_COUNT) ? ROLE_NAMES[r] : "?";
}

static int layer_slot(sq_tensor_role r) {
    switch (r) {
    case SQ_ROLE_ATTN_NORM: return L_ATTN_NORM;
    case SQ_ROLE_Q: return L_Q;
    case SQ_ROLE_K: return L_K;
    case SQ_ROLE_V: return L_V;
    case SQ_ROLE_O: return L_O;
    case SQ_ROLE_Q_BIAS: return L_QB;
    case SQ_ROLE_K_BIAS: return L_KB;
    case SQ_ROLE_V_BIAS: return L_VB;
    case SQ_ROLE_MLP_NORM: return L_MLP_NORM;
    case SQ_ROLE_GATE: return L_GATE;
    case SQ_ROLE_UP: return L_UP;
    case SQ_ROLE_DOWN: return L_DOWN;
    default: return -1;
    }
}

static bool is_linear(int slot) {
    return slot == L_Q || slot == L_K || slot == L_V || slot == L_O || slot == L_GATE ||
           slot == L_UP || slot == L_DOWN;
}

/* ---- create / destroy ---------------------------------------------------------------------- */

void sq_stage_destroy(sq_stage *s) {
    if (!s) return;
    sq_backend *be = s->be;
    if (s->layers)
        for (int64_t l = 0; l < s->p.n_layers; l++)
            for (int i = 0; i < L_COUNT; i++) sq_backend_weight_free(be, s->layers[l].w[i]);
    free(s->layers);
    if (!s->head_is_embed || !s->embed) sq_backend_weight_free(be, s->lm_head);
    sq_backend_weight_free(be, s->embed);
    sq_backend_weight_free(be, s->final_norm);
    void *bufs[] = {s->x_d, s->h_d, s->q_d, s->k_d, s->v_d, s->att_d, s->g_d, s->u_d, s->t_d,
                    s->ids_d, s->inv_freq_d, s->kc_d, s->vc_d, s->hl_d, s->logits_d};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) sq_backend_free(be, bufs[i]);
    free(s->pos);
    free(s);
}

static sq_status bad_cfg(sq_error *err, const char *what) {
    return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage: %s", what);
}

static sq_status alloc_buf(sq_stage *s, uint64_t a, uint64_t b, uint64_t c, void **out,
                           sq_error *err) {
    uint64_t n;
    if (!sq_mul_u64(a, b, &n) || !sq_mul_u64(n, c, &n))
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage: buffer size overflows");
    sq_status st = sq_backend_alloc(s->be, n ? n : 1, out, err);
    if (st == SQ_OK) s->state_bytes += n;
    return st;
}

sq_status sq_stage_create(sq_backend *be, const sq_stage_params *p, sq_stage **out,
                          sq_error *err) {
    if (!out) return bad_cfg(err, "NULL output");
    *out = NULL;
    if (!be || !p) return bad_cfg(err, "NULL backend or params");
    const sq_model_config *c = &p->cfg;
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab_size <= 0 || c->n_layers < 0 ||
        c->hidden_size > (1 << 20) || c->intermediate_size > (1 << 22) || c->n_heads > 4096 ||
        c->vocab_size > (1 << 26))
        return bad_cfg(err, "config has a non-positive or implausibly large size");
    if (c->n_heads % c->n_kv_heads)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage: %lld attention heads are not a multiple of %lld kv heads",
                            (long long)c->n_heads, (long long)c->n_kv_heads);
    if (c->head_dim % 2 || c->head_dim > 1024)
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                            "stage: head_dim %lld (needs an even value <= 1024)", (long long)c->head_dim);
    if (p->first_layer < 0 || p->n_layers < 0 || p->first_layer + p->n_layers > c->n_layers)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage: layers [%lld, %lld) outside the model's %lld layers",
                            (long long)p->first_layer, (long long)(p->first_layer + p->n_layers),
                            (long long)c->n_layers);
    if (p->max_seq <= 0 || p->max_batch <= 0 || p->max_tokens <= 0 || p->max_logit_rows < 0 ||
        p->max_seq > (1 << 24) || p->max_batch > (1 << 16) || p->max_tokens > (1 << 20) ||
        p->max_logit_rows > (1 << 20))
        return bad_cfg(err, "max_seq, max_batch, max_tokens or max_logit_rows out of range");
    if (!(c->rms_norm_eps >= 0) || !(c->rope_theta > 0))
        return bad_cfg(err, "rms_norm_eps or rope_theta is not positive");
    const sq_rope_scaling *rs = &c->rope_scaling;
    int rope_kind = SQ_ROPE_MATH_DEFAULT;
    switch (rs->kind) {
    case SQ_ROPE_DEFAULT: break;
    case SQ_ROPE_LINEAR:
        if (!(rs->factor > 0)) return bad_cfg(err, "linear rope_scaling factor is not positive");
        rope_kind = SQ_ROPE_MATH_LINEAR;
        break;
    case SQ_ROPE_LLAMA3:
        if (!(rs->factor > 0) || !(rs->low_freq_factor > 0) ||
            !(rs->high_freq_factor > rs->low_freq_factor) ||
            rs->original_max_position_embeddings <= 0)
            return bad_cfg(err, "llama3 rope_scaling needs factor > 0, 0 < low < high freq factor "
                                "and original_max_position_embeddings");
        rope_kind = SQ_ROPE_MATH_LLAMA3;
        break;
    case SQ_ROPE_DYNAMIC:
        if (c->max_position_embeddings <= 0 || p->max_seq > c->max_position_embeddings)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                                "stage: \"dynamic\" rope scaling beyond max_position_embeddings "
                                "(%lld) is not supported (max_seq %lld)",
                                (long long)c->max_position_embeddings, (long long)p->max_seq);
        sq_logf(&p->log, SQ_LOG_WARN,
                "\"dynamic\" rope scaling runs as the default rope: max_seq %lld stays within "
                "max_position_embeddings %lld, where the two are equal",
                (long long)p->max_seq, (long long)c->max_position_embeddings);
        break;
    default: return bad_cfg(err, "unknown rope_scaling kind");
    }

    sq_stage *s = calloc(1, sizeof *s);
    if (!s) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage: out of memory");
    s->be = be;
    s->p = *p;
    if (s->p.max_logit_rows == 0) s->p.max_logit_rows = p->max_batch;
    s->H = c->hidden_size;
    s->I = c->intermediate_size;
    s->V = c->vocab_size;
    s->hd = c->head_dim;
    s->nh = c->n_heads;
    s->nkv = c->n_kv_heads;
    s->qw = s->nh * s->hd;
    s->kw = s->nkv * s->hd;
    s->head_is_embed = c->tie_word_embeddings;
    uint64_t R = (uint64_t)p->max_tokens, LR = (uint64_t)s->p.max_logit_rows;
    int64_t width = s->H > s->qw ? s->H : s->qw;
    if (s->I > width) width = s->I;
    sq_backend_limits lim = {.max_rows = (int64_t)(R > LR ? R : LR), .max_width = width,
                             .max_vocab = p->has_head ? s->V : 0, .max_head_dim = s->hd,
                             .max_sample_rows = (int64_t)LR};   /* sampling: logit rows only */
    sq_status st = sq_backend_reserve(be, &lim, err);
    if (st != SQ_OK) goto fail;
    s->layers = calloc(p->n_layers ? (size_t)p->n_layers : 1, sizeof *s->layers);
    s->pos = malloc(R * sizeof *s->pos);
    if (!s->layers || !s->pos) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage: out of memory");
        goto fail;
    }
    uint64_t kv_elems;
    if (!sq_mul_u64((uint64_t)p->n_layers, (uint64_t)p->max_batch, &kv_elems) ||
        !sq_mul_u64(kv_elems, (uint64_t)p->max_seq, &kv_elems) ||
        !sq_mul_u64(kv_elems, (uint64_t)s->kw, &kv_elems)) {
        st = sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "stage: KV cache size overflows");
        goto fail;
    }
    if ((st = alloc_buf(s, R, (uint64_t)s->H, 4, &s->x_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->H, 4, &s->h_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->qw, 4, &s->q_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->kw, 4, &s->k_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->kw, 4, &s->v_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->qw, 4, &s->att_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->I, 4, &s->g_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->I, 4, &s->u_d, err)) ||
        (st = alloc_buf(s, R, (uint64_t)s->H, 4, &s->t_d, err)) ||
        (st = alloc_buf(s, R, 1, 4, &s->ids_d, err)) ||
        (st = alloc_buf(s, (uint64_t)s->hd / 2, 1, 4, &s->inv_freq_d, err)) ||
        (st = alloc_buf(s, kv_elems, 4, 1, &s->kc_d, err)) ||
        (st = alloc_buf(s, kv_elems, 4, 1, &s->vc_d, err)))
        goto fail;
    if (p->has_head &&
        ((st = alloc_buf(s, LR, (uint64_t)s->H, 4, &s->hl_d, err)) ||
         (st = alloc_buf(s, LR, (uint64_t)s->V, 4, &s->logits_d, err))))
        goto fail;
    /* the cache starts zeroed so that a read of an unfilled position is at least defined */
    if ((st = sq_backend_memset(be, s->kc_d, 0, kv_elems * 4, err)) ||
        (st = sq_backend_memset(be, s->vc_d, 0, kv_elems * 4, err)))
        goto fail;
    float inv[512];
    for (int i = 0; i < s->hd / 2; i++)
        inv[i] = sq_rope_inv_freq(rope_kind, c->rope_theta, (int)s->hd, i, rs->factor,
                                  rs->low_freq_factor, rs->high_freq_factor,
                                  (double)rs->original_max_position_embeddings);
    if ((st = sq_backend_upload(be, s->inv_freq_d, inv, (uint64_t)(s->hd / 2) * 4, err))) goto fail;
    *out = s;
    return SQ_OK;
fail:
    sq_stage_destroy(s);
    return st;
}

/* ---- weights ------------------------------------------------------------------------------- */

bool sq_stage_wants(const sq_stage *s, sq_tensor_role role, int64_t layer) {
    if (!s) return false;
    bool tied = s->p.cfg.tie_word_embeddings;
    switch (role) {
    case SQ_ROLE_EMBED: return layer == -1 && (s->p.has_embed || (s->p.has_head && tied));
    case SQ_ROLE_FINAL_NORM: return layer == -1 && s->p.has_head;
    case SQ_ROLE_LM_HEAD: return layer == -1 && s->p.has_head && !tied;
    case SQ_ROLE_Q_BIAS:
    case SQ_ROLE_K_BIAS:
    case SQ_ROLE_V_BIAS:
        if (!s->p.cfg.attention_bias) return false;
        /* fall through */
    default:
        return layer_slot(role) >= 0 && layer >= s->p.first_layer &&
               layer < s->p.first_layer + s->p.n_layers;
    }
}

/* Expected [rows, cols] (rows 1 for 1-D) of a role. */
static void expected_shape(const sq_stage *s, sq_tensor_role role, int64_t *rows, int64_t *cols,
                           int *n_dims) {
    *n_dims = 2;
    *rows = 1;
    switch (role) {
    case SQ_ROLE_EMBED: case SQ_ROLE_LM_HEAD: *rows = s->V; *cols = s->H; break;
    case SQ_ROLE_Q: *rows = s->qw; *cols = s->H; break;
    case SQ_ROLE_K: case SQ_ROLE_V: *rows = s->kw; *cols = s->H; break;
    case SQ_ROLE_O: *rows = s->H; *cols = s->qw; break;
    case SQ_ROLE_GATE: case SQ_ROLE_UP: *rows = s->I; *cols = s->H; break;
    case SQ_ROLE_DOWN: *rows = s->H; *cols = s->I; break;
    case SQ_ROLE_Q_BIAS: *n_dims = 1; *cols = s->qw; break;
    case SQ_ROLE_K_BIAS: case SQ_ROLE_V_BIAS: *n_dims = 1; *cols = s->kw; break;
    default: *n_dims = 1; *cols = s->H; break;   /* the norms */
    }
}

static sq_weight **slot_of(sq_stage *s, sq_tensor_role role, int64_t layer) {
    switch (role) {
    case SQ_ROLE_EMBED: return s->p.has_embed ? &s->embed : &s->lm_head;
    case SQ_ROLE_FINAL_NORM: return &s->final_norm;
    case SQ_ROLE_LM_HEAD: return &s->lm_head;
    default: return &s->layers[layer - s->p.first_layer].w[layer_slot(role)];
    }
}

static sq_status check_target(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                              sq_error *err) {
    if ((int)role < 0 || role >= SQ_ROLE_COUNT)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "stage: unknown tensor role %d", (int)role);
    if (!sq_stage_wants(s, role, layer))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "stage: %s of layer %lld does not belong to this stage (layers "
                            "[%lld, %lld)%s%s)", sq_stage_role_name(role), (long long)layer,
                            (long long)s->p.first_layer,
                            (long long)(s->p.first_layer + s->p.n_layers),
                            s->p.has_embed ? ", embed" : "", s->p.has_head ? ", head" : "");
    return SQ_OK;
}

static void install(sq_stage *s, sq_tensor_role role, int64_t layer, sq_weight *w) {
    sq_weight **slot = slot_of(s, role, layer);
    if (role == SQ_ROLE_EMBED && s->head_is_embed && s->p.has_embed && s->p.has_head)
        s->lm_head = w;   /* one table serves both; freed once as embed */
    sq_backend_weight_free(s->be, *slot);
    *slot = w;
}

static sq_status set_dense(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                          sq_dtype dtype, const void *data, void **give, void **map,
                          size_t map_len, int n_dims, const int64_t shape[2], sq_error *err) {
    if (!s || !data || !shape) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "stage: NULL argument");
    sq_status st = check_target(s, role, layer, name, err);
    if (st != SQ_OK) return st;
    int64_t rows, cols;
    int nd;
    expected_shape(s, role, &rows, &cols, &nd);
    int64_t got_rows = n_dims == 2 ? shape[0] : 1, got_cols = n_dims == 2 ? shape[1] : shape[0];
    if (n_dims != nd || got_rows != rows || got_cols != cols) {
        if (nd == 2)
            return sq_error_set(err, SQ_ERR_FORMAT, NULL, name,
                                "stage: %s has shape %s[%lld, %lld], the config says [%lld, %lld]",
                                sq_stage_role_name(role), n_dims == 2 ? "" : "1-D ",
                                (long long)got_rows, (long long)got_cols, (long long)rows, (long long)cols);
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, name,
                            "stage: %s has %d dims (%lld ...), the config says [%lld]",
                            sq_stage_role_name(role), n_dims, (long long)shape[0], (long long)cols);
    }
    sq_weight *w = NULL;
    st = give  ? sq_backend_weight_dense_take(s->be, name, dtype, give, rows, cols, &w, err)
         : map ? sq_backend_weight_dense_map(s->be, name, dtype, data, map, map_len, rows, cols,
                                             &w, err)
               : sq_backend_weight_dense(s->be, name, dtype, data, rows, cols, &w, err);
    if (st != SQ_OK) return st;
    install(s, role, layer, w);
    return SQ_OK;
}

sq_status sq_stage_set_dense(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                             sq_dtype dtype, const void *data, int n_dims,
                             const int64_t shape[2], sq_error *err) {
    return set_dense(s, role, layer, name, dtype, data, NULL, NULL, 0, n_dims, shape, err);
}

sq_status sq_stage_set_dense_take(sq_stage *s, sq_tensor_role role, int64_t layer,
                                  const char *name, sq_dtype dtype, void **data, int n_dims,
                                  const int64_t shape[2], sq_error *err) {
    return set_dense(s, role, layer, name, dtype, data ? *data : NULL, data, NULL, 0, n_dims,
                     shape, err);
}

sq_status sq_stage_set_dense_map(sq_stage *s, sq_tensor_role role, int64_t layer,
                                 const char *name, sq_dtype dtype, const void *data, void **map,
                                 size_t map_len, int n_dims, const int64_t shape[2],
                                 sq_error *err) {
    if (!map) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "stage: NULL argument");
    return set_dense(s, role, layer, name, dtype, data, NULL, map, map_len, n_dims, shape, err);
}

static sq_status set_4bit(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                         const sq_qtensor *q, sq_qtensor *give, sq_error *err) {
    if (!s || !q) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "stage: NULL argument");
    sq_status st = check_target(s, role, layer, name, err);
    if (st != SQ_OK) return st;
    if (layer_slot(role) < 0 || !is_linear(layer_slot(role)))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "stage: %s cannot be 4-bit (only decoder Linear weights are)",
                            sq_stage_role_name(role));
    int64_t rows, cols;
    int nd;
    expected_shape(s, role, &rows, &cols, &nd);
    if (q->shape[0] != rows || q->shape[1] != cols)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, name,
                            "stage: 4-bit %s has shape [%lld, %lld], the config says [%lld, %lld]",
                            sq_stage_role_name(role), (long long)q->shape[0],
                            (long long)q->shape[1], (long long)rows, (long long)cols);
    sq_weight *w = NULL;
    st = give ? sq_backend_weight_4bit_take(s->be, name, give, &w, err)
              : sq_backend_weight_4bit(s->be, name, q, &w, err);
    if (st != SQ_OK) return st;
    install(s, role, layer, w);
    return SQ_OK;
}

sq_status sq_stage_set_4bit(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                            const sq_qtensor *q, sq_error *err) {
    return set_4bit(s, role, layer, name, q, NULL, err);
}

sq_status sq_stage_set_4bit_take(sq_stage *s, sq_tensor_role role, int64_t layer,
                                 const char *name, sq_qtensor *q, sq_error *err) {
    return set_4bit(s, role, layer, name, q, q, err);
}

sq_status sq_stage_set_ggml(sq_stage *s, sq_tensor_role role, int64_t layer, const char *name,
                            int ggml_type, const void *data, uint64_t n_bytes, sq_error *err) {
    if (!s || !data) return sq_error_set(err, SQ_ERR_INVALID, NULL, name, "stage: NULL argument");
    sq_status st = check_target(s, role, layer, name, err);
    if (st != SQ_OK) return st;
    bool matrix = role == SQ_ROLE_EMBED || role == SQ_ROLE_LM_HEAD ||
                  (layer_slot(role) >= 0 && is_linear(layer_slot(role)));
    if (!matrix)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "stage: %s cannot be a ggml block weight (only matrices are)",
                            sq_stage_role_name(role));
    int64_t rows, cols;
    int nd;
    expected_shape(s, role, &rows, &cols, &nd);
    uint64_t row_bytes = 0;
    st = sq_ggml_row_bytes(ggml_type, cols, &row_bytes, err);
    if (st != SQ_OK) return st;
    if (row_bytes * (uint64_t)rows != n_bytes)
        return sq_error_set(err, SQ_ERR_FORMAT, NULL, name,
                            "stage: %s holds %llu bytes of %s, [%lld, %lld] needs %llu",
                            sq_stage_role_name(role), (unsigned long long)n_bytes,
                            sq_ggml_type_name(ggml_type), (long long)rows, (long long)cols,
                            (unsigned long long)(row_bytes * (uint64_t)rows));
    sq_weight *w = NULL;
    st = sq_backend_weight_ggml(s->be, name, (sq_ggml_type)ggml_type, data, rows, cols, &w, err);
    if (st != SQ_OK) return st;
    install(s, role, layer, w);
    return SQ_OK;
}

sq_status sq_stage_check_ready(const sq_stage *s, sq_error *err) {
    if (!s) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage: NULL handle");
    int missing = 0;
    char first[160] = "";
    sq_stage *m = (sq_stage *)s;
    for (int r = 0; r < SQ_ROLE_COUNT; r++) {
        bool layered = layer_slot((sq_tensor_role)r) >= 0;
        int64_t l0 = layered ? s->p.first_layer : -1;
        int64_t l1 = layered ? s->p.first_layer + s->p.n_layers : 0;
        for (int64_t l = l0; l < l1; l++) {
            if (!sq_stage_wants(s, (sq_tensor_role)r, l)) continue;
            if (*slot_of(m, (sq_tensor_role)r, l)) continue;
            if (!missing++)
                snprintf(first, sizeof first, "%s%s (layer %lld)", sq_stage_role_name((sq_tensor_role)r),
                         r == SQ_ROLE_EMBED && !s->p.has_embed ? " as tied lm_head" : "", (long long)l);
        }
    }
    if (missing)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage: %d weight%s not set, first %s", missing, missing > 1 ? "s" : "", first);
    return SQ_OK;
}

/* ---- forward ------------------------------------------------------------------------------- */

#define TRY(x) do { if ((st = (x)) != SQ_OK) return st; } while (0)

/* Checks a batch against the limits; on success *n_rows is its row count and s->pos holds
 * every row's position. */
static sq_status check_batch(sq_stage *s, const sq_stage_input *b, int64_t *n_rows,
                             sq_error *err) {
    if (!b || !b->seqs) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage forward: NULL argument");
    sq_status st;
    TRY(sq_stage_check_ready(s, err));
    if (b->n_seqs <= 0 || b->n_seqs > s->p.max_batch)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage forward: %d sequences (max_batch %lld)", b->n_seqs,
                            (long long)s->p.max_batch);
    int64_t n = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const sq_seq_span *sp = &b->seqs[i];
        if (sp->n_tokens <= 0 || sp->slot < 0 || sp->slot >= s->p.max_batch || sp->start_pos < 0 ||
            (int64_t)sp->start_pos + sp->n_tokens > s->p.max_seq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "stage forward: sequence %d (slot %d, %d tokens from position %d) "
                                "outside max_batch %lld / max_seq %lld", i, sp->slot, sp->n_tokens,
                                sp->start_pos, (long long)s->p.max_batch, (long long)s->p.max_seq);
        n += sp->n_tokens;
        if (n > s->p.max_tokens)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "stage forward: more than max_tokens %lld rows in one call",
                                (long long)s->p.max_tokens);
        for (int j = 0; j < i; j++)
            if (b->seqs[j].slot == sp->slot)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "stage forward: slot %d appears twice", sp->slot);
    }
    int64_t r = 0;
    for (int i = 0; i < b->n_seqs; i++)
        for (int32_t t = 0; t < b->seqs[i].n_tokens; t++) s->pos[r++] = b->seqs[i].start_pos + t;
    *n_rows = n;
    return SQ_OK;
}

static sq_status embed_rows(sq_stage *s, const sq_stage_input *b, int64_t n, void *out_d,
                            sq_error *err) {
    sq_status st;
    if (!b->token_ids) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage forward: no token ids");
    for (int64_t r = 0; r < n; r++)
        if (b->token_ids[r] < 0 || b->token_ids[r] >= s->V)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "stage forward: token id %d (row %lld) is outside the vocabulary [0, %lld)",
                                b->token_ids[r], (long long)r, (long long)s->V);
    TRY(sq_backend_upload(s->be, s->ids_d, b->token_ids, (uint64_t)n * 4, err));
    return sq_backend_embed(s->be, s->embed, s->ids_d, n, out_d, err);
}

/* The decoder layers on the residual stream x (n, H), in place. */
static sq_status run_layers(sq_stage *s, const sq_stage_input *b, int64_t n, void *x,
                            sq_error *err) {
    sq_status st;
    sq_backend *be = s->be;
    float eps = (float)s->p.cfg.rms_norm_eps;
    uint64_t kv_layer = (uint64_t)s->p.max_batch * (uint64_t)s->p.max_seq * (uint64_t)s->kw * 4;
    for (int64_t l = 0; l < s->p.n_layers; l++) {
        sq_weight *const *w = s->layers[l].w;
        sq_kv_layer kv = {(char *)s->kc_d + (uint64_t)l * kv_layer, (char *)s->vc_d + (uint64_t)l * kv_layer,
                          s->p.max_batch, s->p.max_seq, (int)s->nkv, (int)s->hd};
        /* attention block */
        TRY(sq_backend_rmsnorm(be, x, w[L_ATTN_NORM], eps, n, s->h_d, err));
        {   /* q, k, v of one normed x: quantized once (int8 activations), one dispatch */
            const sq_weight *qkv[3] = {w[L_Q], w[L_K], w[L_V]}, *qkv_b[3] = {w[L_QB], w[L_KB], w[L_VB]};
            void *qkv_out[3] = {s->q_d, s->k_d, s->v_d};
            TRY(sq_backend_linear_multi(be, s->h_d, n, 3, qkv, qkv_b, qkv_out, err));
        }
        TRY(sq_backend_rope(be, s->q_d, s->k_d, n, (int)s->nh, (int)s->nkv, (int)s->hd, s->pos,
                            s->inv_freq_d, err));
        TRY(sq_backend_attention(be, s->q_d, s->k_d, s->v_d, &kv, (int)s->nh, b->n_seqs, b->seqs,
                                 s->att_d, err));
        TRY(sq_backend_linear(be, s->att_d, n, w[L_O], NULL, s->t_d, err));
        TRY(sq_backend_add(be, x, s->t_d, n * s->H, x, err));
        /* MLP block */
        TRY(sq_backend_rmsnorm(be, x, w[L_MLP_NORM], eps, n, s->h_d, err));
        {
            const sq_weight *gu[2] = {w[L_GATE], w[L_UP]};
            void *gu_out[2] = {s->g_d, s->u_d};
            TRY(sq_backend_linear_multi(be, s->h_d, n, 2, gu, NULL, gu_out, err));
        }
        TRY(sq_backend_swiglu(be, s->g_d, s->u_d, n * s->I, s->g_d, err));
        TRY(sq_backend_linear(be, s->g_d, n, w[L_DOWN], NULL, s->t_d, err));
        TRY(sq_backend_add(be, x, s->t_d, n * s->H, x, err));
    }
    return SQ_OK;
}

/* Final norm + lm_head on each sequence's last row of x (or every row with all_logits). */
static sq_status run_head(sq_stage *s, const sq_stage_input *b, int64_t n, const void *x,
                          sq_error *err) {
    sq_status st;
    sq_backend *be = s->be;
    int64_t out_rows = b->all_logits ? n : b->n_seqs;
    if (out_rows > s->p.max_logit_rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage forward: %lld logit rows exceed max_logit_rows %lld",
                            (long long)out_rows, (long long)s->p.max_logit_rows);
    uint64_t row_bytes = (uint64_t)s->H * 4;
    if (b->all_logits) {
        TRY(sq_backend_copy(be, s->hl_d, x, (uint64_t)n * row_bytes, err));
    } else {
        int64_t last = -1;
        for (int i = 0; i < b->n_seqs; i++) {
            last += b->seqs[i].n_tokens;
            TRY(sq_backend_copy(be, (char *)s->hl_d + (uint64_t)i * row_bytes,
                                (const char *)x + (uint64_t)last * row_bytes, row_bytes, err));
        }
    }
    TRY(sq_backend_rmsnorm(be, s->hl_d, s->final_norm, (float)s->p.cfg.rms_norm_eps, out_rows,
                           s->hl_d, err));
    TRY(sq_backend_linear(be, s->hl_d, out_rows, s->lm_head, NULL, s->logits_d, err));
    s->n_out_rows = out_rows;
    return SQ_OK;
}

sq_status sq_stage_forward(sq_stage *s, const sq_stage_input *b, sq_error *err) {
    if (!s) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage forward: NULL stage");
    int64_t n = 0;
    sq_status st;
    TRY(check_batch(s, b, &n, err));
    if (s->p.has_head && (b->all_logits ? n : b->n_seqs) > s->p.max_logit_rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage forward: %lld logit rows exceed max_logit_rows %lld",
                            (long long)(b->all_logits ? n : b->n_seqs), (long long)s->p.max_logit_rows);
    if (s->p.has_embed) {
        TRY(embed_rows(s, b, n, s->x_d, err));
    } else {
        if (!b->hidden_in_d)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage forward: no hidden states in");
        TRY(sq_backend_copy(s->be, s->x_d, b->hidden_in_d, (uint64_t)(n * s->H) * 4, err));
    }
    TRY(run_layers(s, b, n, s->x_d, err));
    if (s->p.has_head) return run_head(s, b, n, s->x_d, err);
    s->n_out_rows = n;
    return SQ_OK;
}

sq_status sq_stage_embed(sq_stage *s, const sq_stage_input *b, void *out_d, sq_error *err) {
    if (!s || !out_d) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage embed: NULL argument");
    if (!s->p.has_embed) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage embed: not the first stage");
    int64_t n = 0;
    sq_status st;
    TRY(check_batch(s, b, &n, err));
    return embed_rows(s, b, n, out_d, err);
}

sq_status sq_stage_layers(sq_stage *s, const sq_stage_input *b, void *act_d, sq_error *err) {
    if (!s || !act_d) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage layers: NULL argument");
    int64_t n = 0;
    sq_status st;
    TRY(check_batch(s, b, &n, err));
    return run_layers(s, b, n, act_d, err);
}

sq_status sq_stage_head(sq_stage *s, const sq_stage_input *b, const void *act_d, sq_error *err) {
    if (!s || !act_d) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage head: NULL argument");
    if (!s->p.has_head) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage head: not the last stage");
    int64_t n = 0;
    sq_status st;
    TRY(check_batch(s, b, &n, err));
    return run_head(s, b, n, act_d, err);
}

const void *sq_stage_hidden_d(const sq_stage *s) { return s ? s->x_d : NULL; }
const void *sq_stage_logits_d(const sq_stage *s) { return s ? s->logits_d : NULL; }
int64_t sq_stage_n_out_rows(const sq_stage *s) { return s ? s->n_out_rows : 0; }
sq_backend *sq_stage_backend(const sq_stage *s) { return s ? s->be : NULL; }
const sq_stage_params *sq_stage_get_params(const sq_stage *s) { return s ? &s->p : NULL; }
uint64_t sq_stage_state_bytes(const sq_stage *s) { return s ? s->state_bytes : 0; }

uint64_t sq_stage_weight_bytes(const sq_stage *s) {
    if (!s) return 0;
    uint64_t n = sq_weight_bytes(s->embed) + sq_weight_bytes(s->final_norm);
    if (!(s->head_is_embed && s->embed)) n += sq_weight_bytes(s->lm_head);
    for (int64_t l = 0; l < s->p.n_layers; l++)
        for (int i = 0; i < L_COUNT; i++) n += sq_weight_bytes(s->layers[l].w[i]);
    return n;
}

sq_status sq_stage_read_logits(sq_stage *s, float *dst, int64_t n_rows, sq_error *err) {
    if (!s || !dst || !s->p.has_head || n_rows < 0 || n_rows > s->n_out_rows)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "stage: no head, or %lld logit rows asked (the last forward made %lld)",
                            (long long)n_rows, (long long)(s ? s->n_out_rows : 0));
    return sq_backend_download(s->be, dst, s->logits_d, (uint64_t)n_rows * (uint64_t)s->V * 4, err);
}

sq_status sq_stage_sample(sq_stage *s, const sq_sample_params *p, const uint64_t *seq_ids,
                          const uint64_t *steps, int32_t *ids_out, sq_error *err) {
    if (!s || !s->p.has_head)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "stage: sampling needs the last stage");
    return sq_backend_sample(s->be, s->logits_d, s->n_out_rows, s->V, p, seq_ids, steps, ids_out, err);
}
