/* Plan files and the other things a plan is written as: the plan JSON (--json / --out, read
 * back by quantize / run / bench), transformers' device_map JSON, an SVG bar chart, and the
 * plan hash.  Every file is written to PATH.tmp.PID and renamed.  Must never trust a plan file:
 * every field is checked before an sq_plan is handed out. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plan_impl.h"

#define PLAN_FORMAT "shardq-plan"
#define PLAN_VERSION 1
#define MAX_PLAN_FILE (64u << 20)

/* ---- hash ------------------------------------------------------------------------------- */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define FNV_V(h, v) do { __typeof__(v) _v = (v); h = fnv(h, &_v, sizeof _v); } while (0)
#define FNV_S(h, s) h = fnv(h, s, strlen(s) + 1)

uint64_t sq_plan_hash(const sq_plan *p) {
    uint64_t h = 1469598103934665603ull;
    FNV_S(h, p->model_name);
    FNV_V(h, p->model_hash);
    FNV_S(h, p->cluster_name);
    FNV_S(h, p->label);
    FNV_V(h, (int64_t)p->n_layers);
    FNV_V(h, (int64_t)p->scheme.type);
    FNV_V(h, (int64_t)p->scheme.double_quant);
    FNV_V(h, p->scheme.blocksize);
    FNV_V(h, (int64_t)p->scheme.dense_dtype);
    FNV_V(h, p->max_seq);
    FNV_V(h, p->batch);
    FNV_V(h, (int64_t)p->fits);
    FNV_V(h, (int64_t)p->n_offloaded);
    FNV_V(h, (int64_t)p->n_stages);
    for (int i = 0; i < p->n_stages; i++) {
        const sq_plan_stage *s = &p->stages[i];
        FNV_V(h, (int64_t)s->rank);
        FNV_S(h, s->node);
        FNV_S(h, s->device);
        FNV_V(h, (int64_t)s->first_layer);
        FNV_V(h, (int64_t)s->n_layers);
        FNV_V(h, (int64_t)s->has_embed);
        FNV_V(h, (int64_t)s->has_head);
        FNV_V(h, s->weights_bytes);
        FNV_V(h, s->kv_bytes);
        FNV_V(h, s->workspace_bytes);
        FNV_V(h, s->logits_bytes);
        FNV_V(h, s->capacity_bytes);
        FNV_V(h, s->headroom_bytes);
        FNV_V(h, s->est_step_ms);
        FNV_V(h, s->max_kv_tokens);
    }
    FNV_V(h, p->bottleneck_ms);
    FNV_V(h, p->max_kv_tokens);
    return h;
}

/* ---- atomic write ----------------------------------------------------------------------- */
static sq_status write_atomic(const char *path, const char *text, size_t n, sq_error *err) {
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        sq_status st = sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    bool ok = fwrite(text, 1, n, f) == n;
    ok = fflush(f) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        free(tmp);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "write failed: %s", strerror(e));
    }
    free(tmp);
    return SQ_OK;
}

/* ---- plan JSON -------------------------------------------------------------------------- */
static cJSON *plan_json(const sq_plan *p) {
    cJSON *o = cJSON_CreateObject();
    char hex[24];
    snprintf(hex, sizeof hex, "%016" PRIx64, p->model_hash);
    cJSON_AddStringToObject(o, "format", PLAN_FORMAT);
    cJSON_AddNumberToObject(o, "version", PLAN_VERSION);
    cJSON_AddStringToObject(o, "planner", p->label);
    cJSON_AddStringToObject(o, "model", p->model_name);
    cJSON_AddStringToObject(o, "model_hash", hex);
    cJSON_AddNumberToObject(o, "n_layers", p->n_layers);
    cJSON_AddStringToObject(o, "cluster", p->cluster_name);
    cJSON_AddNumberToObject(o, "n_ranks", p->n_stages);
    cJSON *sc = cJSON_AddObjectToObject(o, "scheme");
    cJSON_AddStringToObject(sc, "quant", sq_quant_type_name(p->scheme.type));
    cJSON_AddBoolToObject(sc, "double_quant", p->scheme.double_quant);
    cJSON_AddNumberToObject(sc, "blocksize", (double)p->scheme.blocksize);
    cJSON_AddStringToObject(sc, "dense_dtype", sq_dtype_name(p->scheme.dense_dtype));
    cJSON_AddNumberToObject(o, "max_seq", (double)p->max_seq);
    cJSON_AddNumberToObject(o, "batch", (double)p->batch);
    cJSON_AddBoolToObject(o, "fits", p->fits);
    cJSON_AddNumberToObject(o, "n_offloaded", p->n_offloaded);
    cJSON *st = cJSON_AddArrayToObject(o, "stages");
    uint64_t tw = 0, tkv = 0, tws = 0, tcap = 0;
    for (int i = 0; i < p->n_stages; i++) {
        const sq_plan_stage *s = &p->stages[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "rank", s->rank);
        cJSON_AddStringToObject(e, "node", s->node);
        cJSON_AddStringToObject(e, "device", s->device);
        cJSON_AddNumberToObject(e, "first_layer", s->first_layer);
        cJSON_AddNumberToObject(e, "n_layers", s->n_layers);
        cJSON_AddBoolToObject(e, "has_embed", s->has_embed);
        cJSON_AddBoolToObject(e, "has_head", s->has_head);
        cJSON_AddNumberToObject(e, "weights_bytes", (double)s->weights_bytes);
        cJSON_AddNumberToObject(e, "kv_bytes", (double)s->kv_bytes);
        cJSON_AddNumberToObject(e, "workspace_bytes", (double)s->workspace_bytes);
        cJSON_AddNumberToObject(e, "logits_bytes", (double)s->logits_bytes);
        cJSON_AddNumberToObject(e, "capacity_bytes", (double)s->capacity_bytes);
        cJSON_AddNumberToObject(e, "headroom_bytes", (double)s->headroom_bytes);
        cJSON_AddNumberToObject(e, "est_step_ms", s->est_step_ms);
        cJSON_AddNumberToObject(e, "max_kv_tokens", (double)s->max_kv_tokens);
        cJSON_AddItemToArray(st, e);
        tw += s->weights_bytes;
        tkv += s->kv_bytes;
        tws += s->workspace_bytes + s->logits_bytes;
        tcap += s->capacity_bytes;
    }
    cJSON *tot = cJSON_AddObjectToObject(o, "totals");
    cJSON_AddNumberToObject(tot, "weights_bytes", (double)tw);
    cJSON_AddNumberToObject(tot, "kv_bytes", (double)tkv);
    cJSON_AddNumberToObject(tot, "workspace_bytes", (double)tws);
    cJSON_AddNumberToObject(tot, "capacity_bytes", (double)tcap);
    cJSON_AddNumberToObject(o, "bottleneck_ms", p->bottleneck_ms);
    cJSON_AddNumberToObject(o, "max_kv_tokens", (double)p->max_kv_tokens);
    cJSON_AddNumberToObject(o, "plan_ms", p->plan_ms);
    return o;
}

sq_status sq_plan_to_json(const sq_plan *p, char **out, sq_error *err) {
    *out = NULL;
    cJSON *o = plan_json(p);
    char *s = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!s) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory printing the plan");
    *out = s;
    return SQ_OK;
}

sq_status sq_plan_write_file(const sq_plan *p, const char *path, sq_error *err) {
    char *s;
    sq_status st = sq_plan_to_json(p, &s, err);
    if (st != SQ_OK) return st;
    size_t n = strlen(s);
    s[n] = '\0';
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    st = write_atomic(path, t, n + 1, err);
    free(t);
    return st;
}

/* reading: every field checked */
typedef struct rd {
    const char *path;
    sq_error *err;
    sq_status st;
} rd;

static double rnum(rd *r, const cJSON *o, const char *where, const char *key, double lo, double hi) {
    if (r->st != SQ_OK) return 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s\"%s\": missing or out of range",
                             where, key);
        return 0;
    }
    return v->valuedouble;
}
static int64_t rint_(rd *r, const cJSON *o, const char *where, const char *key, double lo, double hi) {
    double d = rnum(r, o, where, key, lo, hi);
    if (r->st == SQ_OK && d != floor(d))
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s\"%s\": not a whole number", where, key);
    return (int64_t)d;
}
static bool rbool(rd *r, const cJSON *o, const char *where, const char *key) {
    if (r->st != SQ_OK) return false;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(v)) {
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s\"%s\": expected true/false", where, key);
        return false;
    }
    return cJSON_IsTrue(v);
}
static void rstr(rd *r, const cJSON *o, const char *where, const char *key, char *out, size_t n) {
    if (r->st != SQ_OK) return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n) {
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%s\"%s\": missing or too long", where, key);
        return;
    }
    snprintf(out, n, "%s", v->valuestring);
}

static sq_status plan_from_json(const cJSON *o, rd *r, sq_plan **out) {
    sq_plan *p = calloc(1, sizeof *p);
    if (!p) return sq_error_set(r->err, SQ_ERR_NOMEM, r->path, NULL, "out of memory");
    char fmt[32] = "", hex[24] = "", quant[16] = "", dense[16] = "";
    rstr(r, o, "", "format", fmt, sizeof fmt);
    if (r->st == SQ_OK && strcmp(fmt, PLAN_FORMAT))
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "not a shardq plan (format '%s')", fmt);
    int64_t ver = rint_(r, o, "", "version", 0, 1e9);
    if (r->st == SQ_OK && ver != PLAN_VERSION)
        r->st = sq_error_set(r->err, SQ_ERR_UNSUPPORTED, r->path, NULL,
                             "plan format version %lld; this shardq reads version %d", (long long)ver, PLAN_VERSION);
    rstr(r, o, "", "planner", p->label, sizeof p->label);
    rstr(r, o, "", "model", p->model_name, sizeof p->model_name);
    rstr(r, o, "", "model_hash", hex, sizeof hex);
    if (r->st == SQ_OK) {
        char *end = NULL;
        errno = 0;
        p->model_hash = strtoull(hex, &end, 16);
        if (errno || !hex[0] || *end)
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "\"model_hash\": not hexadecimal");
    }
    rstr(r, o, "", "cluster", p->cluster_name, sizeof p->cluster_name);
    p->n_layers = (int)rint_(r, o, "", "n_layers", 1, SQ_PLAN_MAX_LAYERS);
    p->n_stages = (int)rint_(r, o, "", "n_ranks", 1, SQ_TOPO_MAX_DEVICES);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(o, "scheme");
    if (r->st == SQ_OK && !cJSON_IsObject(sc))
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "\"scheme\": missing");
    rstr(r, sc, "scheme.", "quant", quant, sizeof quant);
    rstr(r, sc, "scheme.", "dense_dtype", dense, sizeof dense);
    if (r->st == SQ_OK) {
        p->scheme = sq_quant_scheme_default();
        if (!sq_quant_type_from_name(quant, &p->scheme.type))
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "scheme.quant: unknown '%s'", quant);
        if (r->st == SQ_OK && !sq_dtype_from_name(dense, &p->scheme.dense_dtype))
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "scheme.dense_dtype: unknown '%s'", dense);
    }
    p->scheme.double_quant = rbool(r, sc, "scheme.", "double_quant");
    p->scheme.blocksize = rint_(r, sc, "scheme.", "blocksize", 32, 4096);
    if (r->st == SQ_OK && sq_quant_scheme_check(&p->scheme, r->err) != SQ_OK) r->st = r->err->code;
    p->max_seq = rint_(r, o, "", "max_seq", 1, (double)(INT64_C(1) << 24));
    p->batch = rint_(r, o, "", "batch", 1, 1 << 20);
    p->fits = rbool(r, o, "", "fits");
    p->n_offloaded = (int)rint_(r, o, "", "n_offloaded", 0, 1e9);
    p->bottleneck_ms = rnum(r, o, "", "bottleneck_ms", 0, 1e300);
    p->max_kv_tokens = (uint64_t)rint_(r, o, "", "max_kv_tokens", 0, 9e15);
    p->plan_ms = rnum(r, o, "", "plan_ms", 0, 1e300);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stages");
    if (r->st == SQ_OK && (!cJSON_IsArray(st) || cJSON_GetArraySize(st) != p->n_stages))
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                             "\"stages\" must be an array of n_ranks = %d entries", p->n_stages);
    if (r->st == SQ_OK) {
        p->stages = calloc((size_t)p->n_stages, sizeof *p->stages);
        if (!p->stages) r->st = sq_error_set(r->err, SQ_ERR_NOMEM, r->path, NULL, "out of memory");
    }
    int i = 0, next = 0;
    const cJSON *e;
    if (r->st == SQ_OK) cJSON_ArrayForEach(e, st) {
        char w[32];
        snprintf(w, sizeof w, "stages[%d].", i);
        sq_plan_stage *s = &p->stages[i];
        s->rank = (int)rint_(r, e, w, "rank", i, i);
        rstr(r, e, w, "node", s->node, sizeof s->node);
        rstr(r, e, w, "device", s->device, sizeof s->device);
        s->first_layer = (int)rint_(r, e, w, "first_layer", 0, p->n_layers);
        s->n_layers = (int)rint_(r, e, w, "n_layers", 0, p->n_layers);
        s->has_embed = rbool(r, e, w, "has_embed");
        s->has_head = rbool(r, e, w, "has_head");
        s->weights_bytes = (uint64_t)rint_(r, e, w, "weights_bytes", 0, 9e15);
        s->kv_bytes = (uint64_t)rint_(r, e, w, "kv_bytes", 0, 9e15);
        s->workspace_bytes = (uint64_t)rint_(r, e, w, "workspace_bytes", 0, 9e15);
        s->logits_bytes = (uint64_t)rint_(r, e, w, "logits_bytes", 0, 9e15);
        s->capacity_bytes = (uint64_t)rint_(r, e, w, "capacity_bytes", 0, 9e15);
        s->headroom_bytes = rint_(r, e, w, "headroom_bytes", -9e15, 9e15);
        s->est_step_ms = rnum(r, e, w, "est_step_ms", 0, 1e300);
        s->max_kv_tokens = (uint64_t)rint_(r, e, w, "max_kv_tokens", 0, 9e15);
        if (r->st != SQ_OK) break;
        if (s->first_layer != next || s->n_layers > p->n_layers - next) {
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                                 "%slayers %d..%d do not continue from layer %d (stages must be contiguous)",
                                 w, s->first_layer, s->first_layer + s->n_layers - 1, next);
            break;
        }
        if (p->n_layers >= p->n_stages && s->n_layers < 1) {
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL, "%sholds no layer", w);
            break;
        }
        if (s->has_embed != (i == 0) || s->has_head != (i == p->n_stages - 1)) {
            r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                                 "%sembed must be on the first stage and the head on the last", w);
            break;
        }
        next += s->n_layers;
        i++;
    }
    if (r->st == SQ_OK && next != p->n_layers)
        r->st = sq_error_set(r->err, SQ_ERR_FORMAT, r->path, NULL,
                             "stages cover %d of %d layers", next, p->n_layers);
    if (r->st != SQ_OK) {
        sq_plan_destroy(p);
        return r->st;
    }
    *out = p;
    return SQ_OK;
}

sq_status sq_plan_read_file(const char *path, sq_plan **out, sq_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    char *buf = malloc(MAX_PLAN_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_PLAN_FILE + 1, f) : 0;
    bool bad = ferror(f);
    fclose(f);
    if (!buf) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    sq_status st;
    if (bad) {
        st = sq_error_set(err, SQ_ERR_IO, path, NULL, "read failed");
    } else if (n > MAX_PLAN_FILE) {
        st = sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "larger than %u bytes", MAX_PLAN_FILE);
    } else {
        cJSON *o = cJSON_ParseWithLength(buf, n);
        if (!o || !cJSON_IsObject(o)) {
            st = sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "malformed JSON");
        } else {
            rd r = {.path = path, .err = err, .st = SQ_OK};
            st = plan_from_json(o, &r, out);
        }
        cJSON_Delete(o);
    }
    free(buf);
    return st;
}

/* ---- transformers' device_map ----------------------------------------------------------- */
/* A stage whose device is the host's memory (a CPU device: the topology names it "cpu"). */
static bool stage_is_cpu(const sq_plan_stage *st) { return strcmp(st->device, "cpu") == 0; }

sq_status sq_plan_hf_device_map_check(const sq_plan *p, sq_error *err) {
    for (int i = 1; i < p->n_stages; i++)
        if (strcmp(p->stages[i].node, p->stages[0].node) != 0)
            return sq_error_set(err, SQ_ERR_UNSUPPORTED, NULL, NULL,
                                "--hf-device-map: the plan spans nodes %s and %s, but transformers' "
                                "device_map places the modules of one process on one machine; plan "
                                "for a one-node cluster to get one",
                                p->stages[0].node, p->stages[i].node);
    return SQ_OK;
}

sq_status sq_plan_write_hf_device_map(const sq_plan *p, const char *path, sq_error *err) {
    sq_status st = sq_plan_hf_device_map_check(p, err);
    if (st != SQ_OK) {
        snprintf(err->file, sizeof err->file, "%s", path);
        return st;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    /* the value of stage i: "cpu", or the CUDA index of its GPU on the node (GPUs in rank
     * order, as shardq's ranks pick them by local rank) */
    int gpu = 0;
    for (int i = 0; i < p->n_stages; i++) {
        const sq_plan_stage *sg = &p->stages[i];
        cJSON *v = stage_is_cpu(sg) ? cJSON_CreateString("cpu") : cJSON_CreateNumber(gpu++);
        if (!v) break;
        if (sg->has_embed) cJSON_AddItemToObject(o, "model.embed_tokens", cJSON_Duplicate(v, 1));
        for (int l = sg->first_layer; l < sg->first_layer + sg->n_layers; l++) {
            char key[48];
            snprintf(key, sizeof key, "model.layers.%d", l);
            cJSON_AddItemToObject(o, key, cJSON_Duplicate(v, 1));
        }
        if (sg->has_head) {
            cJSON_AddItemToObject(o, "model.norm", cJSON_Duplicate(v, 1));
            cJSON_AddItemToObject(o, "lm_head", cJSON_Duplicate(v, 1));
        }
        cJSON_Delete(v);
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
    st = write_atomic(path, s, strlen(s), err);
    free(s);
    return st;
}

/* ---- SVG: one stacked bar per device ------------------------------------------------------ */
static void xml_escape(char *out, size_t n, const char *in) {
    size_t o = 0;
    for (; *in && o + 7 < n; in++) {
        const char *rep = *in == '<' ? "&lt;" : *in == '>' ? "&gt;" : *in == '&' ? "&amp;"
                        : *in == '"' ? "&quot;" : NULL;
        if (rep) o += (size_t)snprintf(out + o, n - o, "%s", rep);
        else out[o++] = *in;
    }
    out[o] = '\0';
}

sq_status sq_plan_write_svg(const sq_plan *p, const char *path, sq_error *err) {
    size_t cap = 4096 + (size_t)p->n_stages * 1536, at = 0;
    char *s = malloc(cap);
    if (!s) return sq_error_set(err, SQ_ERR_NOMEM, path, NULL, "out of memory");
#define OUT(...) at += (size_t)snprintf(s + at, at < cap ? cap - at : 0, __VA_ARGS__)
    double maxcap = 1;
    for (int i = 0; i < p->n_stages; i++) {
        double used = (double)(p->stages[i].weights_bytes + p->stages[i].kv_bytes +
                               p->stages[i].workspace_bytes + p->stages[i].logits_bytes);
        double c = (double)p->stages[i].capacity_bytes;
        if (c > maxcap) maxcap = c;
        if (used > maxcap) maxcap = used;
    }
    const int bw = 48, gap = 16, left = 60, top = 40, h = 300;
    int width = left + p->n_stages * (bw + gap) + 200;
    if (width < 860) width = 860; /* room for the one-line title */
    char model[256], label[64];
    xml_escape(model, sizeof model, p->model_name);
    xml_escape(label, sizeof label, p->label);
    OUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n",
        width, top + h + 60);
    OUT("<text x=\"%d\" y=\"20\" font-size=\"13\">%s: %s, %s%s, max_seq %lld x batch %lld; bottleneck %.3f ms/step, max KV tokens %llu</text>\n",
        left, label, model, sq_quant_type_name(p->scheme.type), p->scheme.double_quant ? "+dq" : "",
        (long long)p->max_seq, (long long)p->batch, p->bottleneck_ms, (unsigned long long)p->max_kv_tokens);
    OUT("<text x=\"10\" y=\"%d\">%.0f GiB</text><text x=\"10\" y=\"%d\">0</text>\n", top + 10,
        maxcap / (double)SQ_GIB, top + h);
    static const char *colors[4] = {"#4e79a7", "#f28e2b", "#9c755f", "#e0e0e0"};
    static const char *names[4] = {"weights", "KV cache", "workspace + logits", "headroom"};
    for (int i = 0; i < p->n_stages; i++) {
        const sq_plan_stage *st = &p->stages[i];
        double parts[4] = {(double)st->weights_bytes, (double)st->kv_bytes,
                           (double)(st->workspace_bytes + st->logits_bytes),
                           st->headroom_bytes > 0 ? (double)st->headroom_bytes : 0};
        int x = left + i * (bw + gap);
        double y = top + h;
        for (int k = 0; k < 4; k++) {
            double ph = parts[k] / maxcap * h;
            y -= ph;
            OUT("<rect x=\"%d\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"%s\"><title>rank %d %s: %.3f GiB</title></rect>\n",
                x, y, bw, ph, colors[k], st->rank, names[k], parts[k] / (double)SQ_GIB);
        }
        double capy = top + h - (double)st->capacity_bytes / maxcap * h;
        OUT("<line x1=\"%d\" x2=\"%d\" y1=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"2\"/>\n", x - 2,
            x + bw + 2, capy, capy, st->headroom_bytes < 0 ? "#d62728" : "#333");
        char dev[96];
        xml_escape(dev, sizeof dev, st->device);
        OUT("<text x=\"%d\" y=\"%d\">r%d</text><text x=\"%d\" y=\"%d\">%dL</text>\n", x, top + h + 14,
            st->rank, x, top + h + 28, st->n_layers);
        OUT("<text x=\"%d\" y=\"%d\" font-size=\"8\">%.12s</text>\n", x, top + h + 42, dev);
    }
    int lx = left + p->n_stages * (bw + gap) + 10;
    for (int k = 0; k < 4; k++)
        OUT("<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
            lx, top + k * 18, colors[k], lx + 16, top + k * 18 + 10, names[k]);
    OUT("</svg>\n");
#undef OUT
    sq_status st;
    if (at >= cap) st = sq_error_set(err, SQ_ERR_INTERNAL, path, NULL, "SVG buffer too small");
    else st = write_atomic(path, s, at, err);
    free(s);
    return st;
}
