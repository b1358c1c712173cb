/* The plan glue: turns a model skeleton (sq_meta) + quant scheme + cluster + options into the
 * pure planner's numbers, runs the solver (or the accelerate emulation), and keeps the result
 * as an sq_plan; explains an infeasible model in one line with what would fit.
 * Must never read weight bytes, look at free memory, or print. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan_impl.h"

sq_plan_options sq_plan_options_default(void) {
    return (sq_plan_options){.max_seq = 0, .batch = 1, .reserve_gib = -1, .max_memory = NULL,
                             .prefill_chunk = 0};
}

/* ---- --max-memory ----------------------------------------------------------------------- */
static bool parse_amount(const char *s, size_t n, uint64_t *out) {
    char buf[64];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end == buf || !isfinite(v) || v < 0) return false;
    while (*end == ' ') end++;
    static const struct { const char *u; double mul; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].u) != 0) continue;
        double b = v * units[i].mul;
        if (b >= 4e18) return false;
        *out = (uint64_t)llround(b);
        return true;
    }
    return false;
}

sq_status sq_plan_parse_max_memory(const char *spec, const sq_cluster *c, uint64_t *caps,
                                   sq_error *err) {
    for (int j = 0; j < c->n_devices; j++) caps[j] = 0;
    if (!spec || !*spec) return SQ_OK;
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (!eq)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "--max-memory: '%.*s' is not DEVICE=AMOUNT (e.g. 0=20GiB or node0:1=22GiB)",
                                (int)len, p);
        char key[64];
        size_t kl = (size_t)(eq - p);
        if (kl == 0 || kl >= sizeof key)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--max-memory: missing device in '%.*s'",
                                (int)len, p);
        memcpy(key, p, kl);
        key[kl] = '\0';
        int dev = -1;
        char *colon = strchr(key, ':');
        char *end = NULL;
        if (colon) {
            *colon = '\0';
            int node = -1;
            for (int k = 0; k < c->n_nodes; k++)
                if (!strcmp(c->nodes[k].name, key)) node = k;
            if (node < 0 && !strncmp(key, "node", 4) && isdigit((unsigned char)key[4])) {
                long v = strtol(key + 4, &end, 10);
                if (!*end && v >= 0 && v < c->n_nodes) node = (int)v;
            }
            if (node < 0)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "--max-memory: no node '%s' in the cluster (%d node%s: node0..node%d)",
                                    key, c->n_nodes, c->n_nodes == 1 ? "" : "s", c->n_nodes - 1);
            long local = strtol(colon + 1, &end, 10);
            if (!colon[1] || *end || local < 0)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "--max-memory: '%s:%s' is not NODE:DEVICE", key, colon + 1);
            for (int j = 0; j < c->n_devices; j++)
                if (c->devices[j].node == node && c->devices[j].local_index == local) dev = j;
            if (dev < 0)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "--max-memory: node '%s' has no device %ld (it has %d)",
                                    c->nodes[node].name, local, c->nodes[node].n_devices);
        } else {
            long v = strtol(key, &end, 10);
            if (*end || v < 0)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "--max-memory: '%s' is not a rank or NODE:DEVICE", key);
            if (v >= c->n_devices)
                return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                    "--max-memory: no device %ld: the cluster has %d (ranks 0..%d)",
                                    v, c->n_devices, c->n_devices - 1);
            dev = (int)v;
        }
        uint64_t amount;
        if (!parse_amount(eq + 1, len - kl - 1, &amount) || amount == 0)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "--max-memory: '%.*s' is not a positive amount (e.g. 20GiB, 500MB)",
                                (int)(len - kl - 1), eq + 1);
        caps[dev] = amount;
        p += len;
        if (*p == ',') p++;
    }
    return SQ_OK;
}

/* ---- sizes ------------------------------------------------------------------------------ */
uint64_t sq_plan_workspace_bytes(const sq_model_config *cfg, int64_t batch, int64_t max_seq,
                                 int64_t prefill_chunk) {
    uint64_t chunk = (uint64_t)(prefill_chunk > 0 ? prefill_chunk : 256);
    if ((uint64_t)max_seq < chunk) chunk = (uint64_t)max_seq;
    uint64_t rows = (uint64_t)batch * chunk;
    uint64_t h = (uint64_t)cfg->hidden_size, inter = (uint64_t)cfg->intermediate_size;
    uint64_t q = (uint64_t)(cfg->n_heads * cfg->head_dim), kv = (uint64_t)(cfg->n_kv_heads * cfg->head_dim);
    /* fp32 rows: residual, normed, attention out, o_proj out; q, k, v; gate, up, act */
    uint64_t act = rows * (4 * h + q + 2 * kv + 3 * inter) * 4;
    uint64_t scores = rows * (uint64_t)max_seq * 4;   /* one head's scores at a time */
    uint64_t biggest = inter * h;   /* gate / up / down */
    if (q * h > biggest) biggest = q * h;
    return act + scores + biggest * 2;   /* + one dequantized bf16 weight */
}

static uint64_t accel_tensor_bytes(const sq_tensor_spec *t, const sq_quant_scheme *s) {
    if (t->quantizable && s->type != SQ_QUANT_NONE) return t->n_elements / 2;   /* INT4: 0.5 B */
    return t->n_elements * sq_dtype_size(s->dense_dtype);
}

static uint64_t accel_module_bytes(const sq_meta *m, int mod, const sq_quant_scheme *s) {
    const sq_module_spec *ms = sq_meta_module(m, mod);
    uint64_t b = 0;
    for (int i = 0; i < ms->n_tensors; i++) b += accel_tensor_bytes(sq_meta_tensor(m, ms->first_tensor + i), s);
    return b;
}

void sq_plan_problem_free(sq_plan_built *b) {
    if (!b) return;
    for (size_t i = 0; i < sizeof b->bufs / sizeof b->bufs[0]; i++) free(b->bufs[i]);
    free(b->bw);
    memset(b, 0, sizeof *b);
}

static int64_t resolve_max_seq(const sq_model_config *cfg, const sq_plan_options *o) {
    if (o->max_seq > 0) return o->max_seq;
    int64_t d = 4096;
    if (cfg->max_position_embeddings > 0 && cfg->max_position_embeddings < d) d = cfg->max_position_embeddings;
    return d;
}

sq_status sq_plan_problem_build(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                                const sq_plan_options *o, sq_plan_built *out, sq_error *err) {
    memset(out, 0, sizeof *out);
    const sq_model_config *cfg = sq_meta_config(m);
    sq_status st = sq_quant_scheme_check(s, err);
    if (st != SQ_OK) return st;
    if (o->batch < 1 || o->batch > (1 << 20))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--batch must be 1..%d (got %lld)",
                            1 << 20, (long long)o->batch);
    int64_t max_seq = resolve_max_seq(cfg, o);
    if (max_seq < 1 || max_seq > (INT64_C(1) << 24))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--max-seq must be 1..%lld (got %lld)",
                            (long long)(INT64_C(1) << 24), (long long)max_seq);
    if (!(o->reserve_gib < 0) && !(o->reserve_gib <= 1024))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "--reserve-gib must be 0..1024");
    if (c->n_devices < 1) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "the cluster has no devices");
    int n = (int)cfg->n_layers, nd = c->n_devices;
    if (n < 1 || n > SQ_PLAN_MAX_LAYERS)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "model has %d layers", n);
    uint64_t *lb = malloc(sizeof(uint64_t) * (size_t)n), *ab = malloc(sizeof(uint64_t) * (size_t)n);
    uint64_t *cap = malloc(sizeof(uint64_t) * (size_t)nd), *maxmem = malloc(sizeof(uint64_t) * (size_t)nd);
    uint64_t *over = malloc(sizeof(uint64_t) * (size_t)nd);
    double *bw = malloc(sizeof(double) * (size_t)nd);
    out->bufs[0] = lb;
    out->bufs[1] = ab;
    out->bufs[2] = cap;
    out->bufs[3] = maxmem;
    out->bufs[4] = over;
    out->bw = bw;
    if (!lb || !ab || !cap || !maxmem || !over || !bw) {
        sq_plan_problem_free(out);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    }
    st = sq_plan_parse_max_memory(o->max_memory, c, over, err);
    if (st != SQ_OK) {
        sq_plan_problem_free(out);
        return st;
    }
    for (int i = 0; i < n; i++) {
        int mod = sq_meta_layer_module(m, i);
        lb[i] = sq_meta_module_bytes(m, mod, s);
        ab[i] = accel_module_bytes(m, mod, s);
    }
    int me = sq_meta_module_of_kind(m, SQ_MODULE_EMBED), mn = sq_meta_module_of_kind(m, SQ_MODULE_NORM);
    int mh = sq_meta_module_of_kind(m, SQ_MODULE_LM_HEAD);
    bool tied = mh < 0;
    uint64_t embed = sq_meta_module_bytes(m, me, s), norm = sq_meta_module_bytes(m, mn, s);
    uint64_t head = tied ? embed : sq_meta_module_bytes(m, mh, s);
    size_t dsz = sq_dtype_size(s->dense_dtype);
    uint64_t reserve = o->reserve_gib < 0 ? SQ_GIB : (uint64_t)llround(o->reserve_gib * (double)SQ_GIB);
    for (int j = 0; j < nd; j++) {
        const sq_device *d = &c->devices[j];
        cap[j] = over[j] ? over[j] : (d->memory_bytes > reserve ? d->memory_bytes - reserve : 0);
        maxmem[j] = over[j] ? over[j] : d->memory_bytes;
        bw[j] = d->mem_bandwidth_gbps * 1e9;
    }
    out->p = (sq_plan_problem){
        .n_layers = n, .layer_bytes = lb, .layer_read_bytes = lb,
        .embed_bytes = embed,
        .embed_read_bytes = (uint64_t)o->batch * (uint64_t)cfg->hidden_size * dsz,
        .head_bytes = norm + head, .head_read_bytes = norm + head,
        .tied_bytes = tied ? embed : 0,
        .kv_token_layer_bytes = sq_size_kv_bytes_per_layer(cfg, 1, s->dense_dtype),
        .n_kv_tokens = (uint64_t)o->batch * (uint64_t)max_seq,
        .workspace_bytes = sq_plan_workspace_bytes(cfg, o->batch, max_seq, o->prefill_chunk),
        .logits_bytes = (uint64_t)o->batch * (uint64_t)cfg->vocab_size * 4,
        .n_devices = nd, .capacity_bytes = cap, .bandwidth_bps = bw};
    out->acc = (sq_accel_input){
        .layer_bytes = ab, .embed_bytes = accel_module_bytes(m, me, s),
        .norm_bytes = accel_module_bytes(m, mn, s),
        .head_bytes = tied ? 0 : accel_module_bytes(m, mh, s),
        .rotary_bytes = (uint64_t)cfg->head_dim / 2 * 4, .tied = tied,
        .max_memory = maxmem, .bnb = s->type != SQ_QUANT_NONE};
    st = sq_plan_problem_check(&out->p, err);
    if (st != SQ_OK) sq_plan_problem_free(out);
    return st;
}

/* ---- results ---------------------------------------------------------------------------- */
void sq_plan_destroy(sq_plan *p) {
    if (!p) return;
    free(p->stages);
    free(p);
}

static sq_plan *plan_from_eval(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                               const sq_plan_options *o, const sq_plan_problem *p,
                               const int *counts, int embed_dev, int head_dev, const char *label,
                               sq_error *err) {
    const sq_model_config *cfg = sq_meta_config(m);
    sq_plan *pl = calloc(1, sizeof *pl);
    sq_plan_stage_eval *ev = calloc((size_t)p->n_devices, sizeof *ev);
    if (pl) pl->stages = calloc((size_t)p->n_devices, sizeof *pl->stages);
    if (!pl || !ev || !pl->stages) {
        free(ev);
        sq_plan_destroy(pl);
        sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    sq_plan_eval e;
    sq_plan_evaluate(p, counts, embed_dev, head_dev, ev, &e);
    snprintf(pl->model_name, sizeof pl->model_name, "%s-%lldL-%lldH", cfg->architecture,
             (long long)cfg->n_layers, (long long)cfg->hidden_size);
    pl->model_hash = sq_meta_hash(m);
    snprintf(pl->cluster_name, sizeof pl->cluster_name, "%s", c->name);
    snprintf(pl->label, sizeof pl->label, "%s", label);
    pl->n_layers = p->n_layers;
    pl->scheme = *s;
    pl->max_seq = resolve_max_seq(cfg, o);
    pl->batch = o->batch;
    pl->fits = e.fits;
    pl->n_stages = p->n_devices;
    for (int j = 0; j < p->n_devices; j++) {
        sq_plan_stage *st = &pl->stages[j];
        const sq_device *d = &c->devices[j];
        st->rank = j;
        snprintf(st->node, sizeof st->node, "%s", c->nodes[d->node].name);
        snprintf(st->device, sizeof st->device, "%s", d->name);
        st->first_layer = ev[j].first_layer;
        st->n_layers = ev[j].n_layers;
        st->has_embed = ev[j].has_embed;
        st->has_head = ev[j].has_head;
        st->weights_bytes = ev[j].weights_bytes;
        st->kv_bytes = ev[j].kv_bytes;
        st->workspace_bytes = ev[j].workspace_bytes;
        st->logits_bytes = ev[j].logits_bytes;
        st->capacity_bytes = ev[j].capacity_bytes;
        st->headroom_bytes = ev[j].headroom_bytes;
        st->est_step_ms = ev[j].step_s * 1e3;
        st->max_kv_tokens = ev[j].max_kv_tokens == UINT64_MAX ? 0 : ev[j].max_kv_tokens;
    }
    pl->bottleneck_ms = e.bottleneck_s * 1e3;
    pl->max_kv_tokens = e.max_kv_tokens == UINT64_MAX ? 0 : e.max_kv_tokens;
    free(ev);
    return pl;
}

/* Does the model fit with these options / this scheme / extra devices?  (Used for advice.) */
static bool fits_with(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                      const sq_plan_options *o, int extra_devices) {
    sq_plan_built b;
    sq_error e2;
    sq_error_init(&e2, -1);
    if (sq_plan_problem_build(m, s, c, o, &b, &e2) != SQ_OK) return false;
    bool ok = false;
    int nd = b.p.n_devices + extra_devices;
    uint64_t *cap = malloc(sizeof(uint64_t) * (size_t)nd);
    double *bw = malloc(sizeof(double) * (size_t)nd);
    int *counts = malloc(sizeof(int) * (size_t)nd);
    if (cap && bw && counts) {
        for (int j = 0; j < nd; j++) {
            int from = j < b.p.n_devices ? j : b.p.n_devices - 1;
            cap[j] = b.p.capacity_bytes[from];
            bw[j] = b.p.bandwidth_bps[from];
        }
        sq_plan_problem p = b.p;
        p.n_devices = nd;
        p.capacity_bytes = cap;
        p.bandwidth_bps = bw;
        sq_plan_eval e;
        ok = sq_plan_solve(&p, counts, &e, &e2) == SQ_OK;
    }
    free(cap);
    free(bw);
    free(counts);
    sq_plan_problem_free(&b);
    return ok;
}

static void explain_infeasible(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                               const sq_plan_options *o, const sq_plan_problem *p,
                               const int *counts, sq_error *err) {
    sq_plan_stage_eval *ev = calloc((size_t)p->n_devices, sizeof *ev);
    if (!ev) return;   /* keep the solver's message */
    sq_plan_eval e;
    sq_plan_evaluate(p, counts, 0, p->n_devices - 1, ev, &e);
    int worst = 0;
    for (int j = 1; j < p->n_devices; j++)
        if (ev[j].headroom_bytes < ev[worst].headroom_bytes) worst = j;
    char advice[512] = "";
    size_t at = 0;
#define ADD(...) at += (size_t)snprintf(advice + at, at < sizeof advice ? sizeof advice - at : 0, __VA_ARGS__)
    /* a smaller max_seq: largest that fits (fits is monotone in max_seq) */
    int64_t cur = resolve_max_seq(sq_meta_config(m), o);
    sq_plan_options t = *o;
    t.max_seq = 1;
    if (cur > 1 && fits_with(m, s, c, &t, 0)) {
        int64_t lo = 1, hi = cur - 1;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo + 1) / 2;
            t.max_seq = mid;
            if (fits_with(m, s, c, &t, 0)) lo = mid; else hi = mid - 1;
        }
        ADD("--max-seq %lld", (long long)lo);
    }
    /* more devices like the last one: doubling, then bisection; the k reported is one that
     * was solved and fits */
    int limit = p->n_devices * 8 < 1024 ? p->n_devices * 8 : 1024, bad = 0, good = 0;
    for (int k = 1; k <= limit; k *= 2) {
        if (fits_with(m, s, c, o, k)) { good = k; break; }
        bad = k;
    }
    while (good && good - bad > 1) {
        int mid = bad + (good - bad) / 2;
        if (fits_with(m, s, c, o, mid)) good = mid; else bad = mid;
    }
    if (good)
        ADD("%s%d more %s device%s", at ? ", or " : "", good, c->devices[c->n_devices - 1].name,
            good == 1 ? "" : "s");
    /* a smaller scheme */
    sq_quant_scheme q = *s;
    if (s->type == SQ_QUANT_NONE) {
        q.type = SQ_QUANT_NF4;
        if (fits_with(m, &q, c, o, 0)) ADD("%s--quant nf4 (or fp4)", at ? ", or " : "");
        else {
            q.double_quant = true;
            if (fits_with(m, &q, c, o, 0)) ADD("%s--quant nf4 --double-quant", at ? ", or " : "");
        }
    } else if (!s->double_quant) {
        q.double_quant = true;
        if (fits_with(m, &q, c, o, 0)) ADD("%s--double-quant", at ? ", or " : "");
    }
#undef ADD
    sq_error_set(err, SQ_ERR_FIT, NULL, NULL,
                 "does not fit: %d layers on %d device%s fall short by %.2f GiB (best split: rank %d "
                 "needs %.2f GiB of %.2f GiB usable); would fit: %s",
                 p->n_layers, p->n_devices, p->n_devices == 1 ? "" : "s",
                 (double)(-e.min_headroom_bytes) / (double)SQ_GIB, worst,
                 (double)ev[worst].used_bytes / (double)SQ_GIB,
                 (double)ev[worst].capacity_bytes / (double)SQ_GIB,
                 at ? advice : "nothing shardq can change (more or larger devices)");
    free(ev);
}

sq_status sq_plan_make(const sq_meta *m, const sq_quant_scheme *s, const sq_cluster *c,
                       const sq_plan_options *o, sq_plan **out, sq_error *err) {
    *out = NULL;
    sq_plan_built b;
    sq_status st = sq_plan_problem_build(m, s, c, o, &b, err);
    if (st != SQ_OK) return st;
    int *counts = malloc(sizeof(int) * (size_t)b.p.n_devices);
    if (!counts) {
        sq_plan_problem_free(&b);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    }
    double t0 = sq_now_s();
    sq_plan_eval e;
    st = sq_plan_solve(&b.p, counts, &e, err);
    double t1 = sq_now_s();
    if (st == SQ_ERR_FIT) {
        explain_infeasible(m, s, c, o, &b.p, counts, err);
    } else if (st == SQ_OK) {
        *out = plan_from_eval(m, s, c, o, &b.p, counts, 0, b.p.n_devices - 1, "shardq", err);
        if (!*out) st = err->code;
        else (*out)->plan_ms = (t1 - t0) * 1e3;
    }
    free(counts);
    sq_plan_problem_free(&b);
    return st;
}

sq_status sq_plan_make_accelerate(const sq_meta *m, const sq_quant_scheme *s,
                                  const sq_cluster *c, const sq_plan_options *o, sq_plan **out,
                                  sq_error *err) {
    *out = NULL;
    sq_plan_built b;
    sq_status st = sq_plan_problem_build(m, s, c, o, &b, err);
    if (st != SQ_OK) return st;
    int nd = b.p.n_devices;
    int *counts = malloc(sizeof(int) * (size_t)nd);
    if (!counts) {
        sq_plan_problem_free(&b);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    }
    double t0 = sq_now_s();
    sq_accel_result r;
    st = sq_plan_accelerate(&b.p, &b.acc, counts, &r, err);
    double t1 = sq_now_s();
    if (st == SQ_OK) {
        /* offloaded layers are counted on the last device so the evaluation covers them; the
         * plan is then marked as not fitting */
        int sum = 0;
        for (int j = 0; j < nd; j++) sum += counts[j];
        counts[nd - 1] += b.p.n_layers - sum;
        *out = plan_from_eval(m, s, c, o, &b.p, counts, r.embed_dev, r.head_dev, "accelerate", err);
        if (!*out) {
            st = err->code;
        } else {
            (*out)->plan_ms = (t1 - t0) * 1e3;
            (*out)->n_offloaded = r.n_offloaded;
            if (r.n_offloaded) (*out)->fits = false;
        }
    }
    free(counts);
    sq_plan_problem_free(&b);
    return st;
}
