/* Owns the check of a skeleton against a checkpoint's headers: missing, unexpected and
 * mis-shaped tensors in one message; bitsandbytes pre-quantized layouts (the companions'
 * shapes, and the ~170-byte quant_state JSON blob, the only tensor bytes it reads).
 * Must never read weight bytes, and never change the skeleton unless everything matched. */
#include "meta_impl.h"

#include <cJSON.h>
#include <stdarg.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LISTED 8          /* names shown per kind of problem */
#define LIST_BUDGET 300       /* characters per kind, so the line stays readable */
#define MAX_QUANT_STATE_BYTES 4096

typedef struct problem_list {
    const char *label;
    int n;                    /* all problems of this kind */
    int shown;
    char text[LIST_BUDGET + 64];
    size_t used;
    const sq_ckpt_tensor *first;   /* the first one's tensor in the checkpoint, if any */
    char first_name[96];
} problem_list;

static void note(problem_list *l, const char *name, const sq_ckpt_tensor *info,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void note(problem_list *l, const char *name, const sq_ckpt_tensor *info,
                 const char *fmt, ...) {
    if (l->n++ == 0) {
        l->first = info;
        snprintf(l->first_name, sizeof l->first_name, "%s", name);
    }
    if (l->shown >= MAX_LISTED) return;
    char item[512];
    int k = snprintf(item, sizeof item, "%s%s", l->shown ? ", " : "", name);
    if (fmt && k > 0 && (size_t)k < sizeof item) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(item + k, sizeof item - (size_t)k, fmt, ap);
        va_end(ap);
    }
    size_t n = strlen(item);
    if (l->used + n > LIST_BUDGET) return;
    memcpy(l->text + l->used, item, n + 1);
    l->used += n;
    l->shown++;
}

static void shape_str(char *buf, size_t n, int n_dims, const int64_t *shape) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

static bool is_float(sq_dtype d) {
    return d == SQ_DTYPE_F32 || d == SQ_DTYPE_F16 || d == SQ_DTYPE_BF16;
}

static bool shape_is(const sq_ckpt_tensor *t, int n_dims, int64_t d0, int64_t d1) {
    if (t->n_dims != n_dims) return false;
    if (n_dims >= 1 && t->shape[0] != d0) return false;
    if (n_dims >= 2 && t->shape[1] != d1) return false;
    return true;
}

static const sq_ckpt_tensor *find_suffixed(const sq_ckpt *st, const char *base,
                                           const char *suffix) {
    char name[256];
    if (snprintf(name, sizeof name, "%s%s", base, suffix) >= (int)sizeof name) return NULL;
    return sq_ckpt_find(st, name);
}

/* The result of checking one quantizable weight stored as U8: stored_* set on success, else
 * `why` says what is wrong. */
typedef struct prequant {
    sq_quant_type type;
    bool double_quant;
    int64_t blocksize;
} prequant;

static bool check_prequant(const sq_ckpt *st, const sq_tensor_spec *t,
                           const sq_ckpt_tensor *w, prequant *out, char *why, size_t why_n) {
    const uint64_t n = t->n_elements;
    if (!shape_is(w, 2, (int64_t)sq_size_4bit_packed_bytes(n), 1)) {
        char s[64];
        shape_str(s, sizeof s, w->n_dims, w->shape);
        snprintf(why, why_n, " U8 %s, want packed 4-bit [%llu,1]", s,
                 (unsigned long long)sq_size_4bit_packed_bytes(n));
        return false;
    }
    const sq_ckpt_tensor *nf4 = find_suffixed(st, t->name, ".quant_state.bitsandbytes__nf4");
    const sq_ckpt_tensor *fp4 = find_suffixed(st, t->name, ".quant_state.bitsandbytes__fp4");
    const sq_ckpt_tensor *absmax = find_suffixed(st, t->name, ".absmax");
    const sq_ckpt_tensor *qmap = find_suffixed(st, t->name, ".quant_map");
    if ((nf4 != NULL) == (fp4 != NULL)) {
        snprintf(why, why_n, " (U8 4-bit weight needs exactly one .quant_state.bitsandbytes__nf4 "
                             "or __fp4)");
        return false;
    }
    if (!absmax || !qmap) {
        snprintf(why, why_n, " (U8 4-bit weight lacks .%s)", absmax ? "quant_map" : "absmax");
        return false;
    }
    const sq_ckpt_tensor *qs = nf4 ? nf4 : fp4;
    out->type = nf4 ? SQ_QUANT_NF4 : SQ_QUANT_FP4;
    if (qs->dtype != SQ_DTYPE_U8 || qs->n_dims != 1 || qs->n_bytes == 0 ||
        qs->n_bytes > MAX_QUANT_STATE_BYTES) {
        snprintf(why, why_n, " (quant_state is not a U8 JSON blob of 1..%d bytes)",
                 MAX_QUANT_STATE_BYTES);
        return false;
    }
    /* the blob: {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [o, i], …} */
    const void *bytes = sq_ckpt_data(st, qs);
    cJSON *j = bytes ? cJSON_ParseWithLength(bytes, (size_t)qs->n_bytes) : NULL;
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(j, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "blocksize");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(j, "shape");
    bool ok = cJSON_IsObject(j) && cJSON_IsString(qt) && cJSON_IsNumber(bs) &&
              cJSON_IsArray(shape) && cJSON_GetArraySize(shape) == 2;
    int64_t blocksize = ok ? (int64_t)bs->valuedouble : 0;
    if (ok) {
        ok = !strcmp(qt->valuestring, sq_quant_type_name(out->type)) &&
             (double)blocksize == bs->valuedouble && blocksize >= 32 && blocksize <= 4096 &&
             (blocksize & (blocksize - 1)) == 0;
        const cJSON *s0 = cJSON_GetArrayItem(shape, 0), *s1 = cJSON_GetArrayItem(shape, 1);
        ok = ok && cJSON_IsNumber(s0) && cJSON_IsNumber(s1) &&
             s0->valuedouble == (double)t->shape[0] && s1->valuedouble == (double)t->shape[1];
    }
    cJSON_Delete(j);
    if (!ok) {
        snprintf(why, why_n, " (quant_state JSON is invalid or disagrees: want quant_type '%s', "
                             "a blocksize in 32..4096, shape [%lld,%lld])",
                 sq_quant_type_name(out->type), (long long)t->shape[0], (long long)t->shape[1]);
        return false;
    }
    out->blocksize = blocksize;
    const uint64_t nb = sq_size_4bit_n_blocks(n, blocksize);
    if (!(qmap->dtype == SQ_DTYPE_F32 && shape_is(qmap, 1, 16, 0))) {
        snprintf(why, why_n, ".quant_map must be F32 [16]");
        return false;
    }
    out->double_quant = absmax->dtype == SQ_DTYPE_U8;
    if (!((absmax->dtype == SQ_DTYPE_U8 || absmax->dtype == SQ_DTYPE_F32) &&
          shape_is(absmax, 1, (int64_t)nb, 0))) {
        snprintf(why, why_n, ".absmax must be F32 or U8 [%llu] (blocksize %lld)",
                 (unsigned long long)nb, (long long)blocksize);
        return false;
    }
    const sq_ckpt_tensor *nabs = find_suffixed(st, t->name, ".nested_absmax");
    const sq_ckpt_tensor *nmap = find_suffixed(st, t->name, ".nested_quant_map");
    if (out->double_quant) {
        uint64_t nn = sq_ceil_div_u64(nb, SQ_BNB_NESTED_BLOCKSIZE);
        if (!nabs || nabs->dtype != SQ_DTYPE_F32 || !shape_is(nabs, 1, (int64_t)nn, 0) ||
            !nmap || nmap->dtype != SQ_DTYPE_F32 || !shape_is(nmap, 1, 256, 0)) {
            snprintf(why, why_n, " (double quant needs .nested_absmax F32 [%llu] and "
                                 ".nested_quant_map F32 [256])", (unsigned long long)nn);
            return false;
        }
    } else if (nabs || nmap) {
        snprintf(why, why_n, " (float32 .absmax with nested keys)");
        return false;
    }
    return true;
}

/* A weight stored as bitsandbytes 8-bit (transformers' save_pretrained after load_in_8bit):
 * "<base>weight" I8 [out, in], "<base>SCB" F32 [out], optional "<base>weight_format" U8 scalar
 * (0: "row"; its value is checked by the loader). */
static bool check_prequant_int8(const sq_ckpt *st, const sq_tensor_spec *t,
                                const sq_ckpt_tensor *w, char *why, size_t why_n) {
    size_t n = strlen(t->name);
    char base[256];
    if (n < 6 || n - 6 >= sizeof base || strcmp(t->name + n - 6, "weight") != 0) {
        snprintf(why, why_n, " I8, but the name does not end in 'weight'");
        return false;
    }
    memcpy(base, t->name, n - 6);
    base[n - 6] = '\0';
    if (!shape_is(w, 2, t->shape[0], t->shape[1])) {
        char s[64];
        shape_str(s, sizeof s, w->n_dims, w->shape);
        snprintf(why, why_n, " I8 %s, want [%lld,%lld]", s, (long long)t->shape[0],
                 (long long)t->shape[1]);
        return false;
    }
    const sq_ckpt_tensor *scb = find_suffixed(st, base, "SCB");
    if (!scb || scb->dtype != SQ_DTYPE_F32 || !shape_is(scb, 1, t->shape[0], 0)) {
        snprintf(why, why_n, " (I8 8-bit weight needs %.150sSCB F32 [%lld])", base, (long long)t->shape[0]);
        return false;
    }
    const sq_ckpt_tensor *fmt = find_suffixed(st, base, "weight_format");
    if (fmt && (fmt->dtype != SQ_DTYPE_U8 || fmt->n_bytes != 1)) {
        snprintf(why, why_n, " (%.150sweight_format must be one U8)", base);
        return false;
    }
    return true;
}

/* the 8-bit companions: "<base>SCB" / "<base>weight_format" of the weight "<base>weight" */
static bool int8_companion(const sq_meta *m, const sq_tensor_spec *next, const char *name) {
    static const char *const sfx[] = {"SCB", "weight_format"};
    for (size_t k = 0; k < 2; k++) {
        size_t n = strlen(name), ks = strlen(sfx[k]);
        if (n <= ks || n - ks + 6 >= 256 || strcmp(name + n - ks, sfx[k]) != 0) continue;
        char w[256];
        memcpy(w, name, n - ks);
        memcpy(w + n - ks, "weight", 7);
        int ti = sq_meta_find(m, w);
        if (ti >= 0 && next[ti].stored_quant == SQ_QUANT_INT8) return true;
    }
    return false;
}

static const char *const k_companions[] = {
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
    ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4",
};

static bool ends_with(const char *s, const char *suffix, size_t *base_len) {
    size_t n = strlen(s), k = strlen(suffix);
    if (n <= k || strcmp(s + n - k, suffix) != 0) return false;
    *base_len = n - k;
    return true;
}

sq_status sq_meta_validate(sq_meta *m, const sq_ckpt *st, sq_error *err) {
    if (!m || !st) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no skeleton or model");
    char folder[512] = ".";
    if (sq_ckpt_format_of(st) == SQ_CKPT_GGUF) {
        snprintf(folder, sizeof folder, "%s", sq_ckpt_path(st));
    } else if (sq_ckpt_n_files(st) > 0) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", sq_ckpt_file_path(st, 0));
        snprintf(folder, sizeof folder, "%s", dirname(tmp));
    }
    /* the new per-tensor facts, applied only if everything matches */
    sq_tensor_spec *next = malloc((size_t)m->n_tensors * sizeof *next);
    if (!next) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory validating");
    memcpy(next, m->tensors, (size_t)m->n_tensors * sizeof *next);

    problem_list missing = {.label = "missing"}, unexpected = {.label = "unexpected"},
                 bad = {.label = "mis-shaped"};
    for (int i = 0; i < m->n_tensors; i++) {
        sq_tensor_spec *t = &next[i];
        const sq_ckpt_tensor *info = sq_ckpt_find(st, t->name);
        if (!info) {
            note(&missing, t->name, NULL, NULL);
            continue;
        }
        if (t->quantizable && info->dtype == SQ_DTYPE_I8 && info->ggml_type < 0) {
            char why[256] = "";
            if (!check_prequant_int8(st, t, info, why, sizeof why)) {
                note(&bad, t->name, info, "%s", why);
                continue;
            }
            t->dtype = SQ_DTYPE_I8;
            t->stored_quant = SQ_QUANT_INT8;
            t->stored_double_quant = false;
            t->stored_blocksize = t->shape[1];   /* one scale per row */
            continue;
        }
        if (t->quantizable && info->dtype == SQ_DTYPE_U8 && info->ggml_type < 0) {
            prequant pq = {0};
            char why[256] = "";
            if (!check_prequant(st, t, info, &pq, why, sizeof why)) {
                note(&bad, t->name, info, "%s", why);
                continue;
            }
            t->dtype = SQ_DTYPE_U8;
            t->stored_quant = pq.type;
            t->stored_double_quant = pq.double_quant;
            t->stored_blocksize = pq.blocksize;
            continue;
        }
        if (info->ggml_type >= 0 && !is_float(info->dtype)) {   /* a ggml block format */
            bool matrix = t->n_dims == 2 && (t->quantizable || t->role == SQ_ROLE_EMBED ||
                                             t->role == SQ_ROLE_LM_HEAD);
            if (!matrix || !shape_is(info, t->n_dims, t->shape[0], t->shape[1])) {
                char got[96], want[96];
                shape_str(got, sizeof got, info->n_dims, info->shape);
                shape_str(want, sizeof want, t->n_dims, t->shape);
                note(&bad, t->name, info, " %s ggml type %d, want %s%s", got, info->ggml_type, want,
                     matrix ? "" : " F32/F16/BF16");
                continue;
            }
            t->dtype = SQ_DTYPE_U8;
            t->stored_quant = SQ_QUANT_NONE;
            t->stored_double_quant = false;
            t->stored_blocksize = 0;
            t->stored_ggml = info->ggml_type;
            t->stored_bytes = info->n_bytes;
            continue;
        }
        if (!is_float(info->dtype) || !shape_is(info, t->n_dims, t->shape[0], t->shape[1])) {
            char got[96], want[96];
            shape_str(got, sizeof got, info->n_dims, info->shape);
            shape_str(want, sizeof want, t->n_dims, t->shape);
            note(&bad, t->name, info, " %s %s, want %s %s", got, sq_dtype_name(info->dtype),
                 want, is_float(info->dtype) ? "" : "F32/F16/BF16");
            continue;
        }
        t->dtype = info->dtype;
        t->stored_quant = SQ_QUANT_NONE;
        t->stored_double_quant = false;
        t->stored_blocksize = 0;
        t->stored_ggml = info->ggml_type;   /* a GGUF's F32 / F16 / BF16: kept as stored too */
        t->stored_bytes = info->ggml_type >= 0 ? info->n_bytes : 0;
    }

    const sq_model_config *c = &m->cfg;
    for (size_t i = 0; i < sq_ckpt_n_tensors(st); i++) {
        const sq_ckpt_tensor *info = sq_ckpt_tensor_at(st, i);
        const char *name = info->name;
        if (sq_meta_find(m, name) >= 0) continue;
        size_t base_len = 0;
        if (ends_with(name, ".rotary_emb.inv_freq", &base_len)) continue;   /* legacy buffer */
        if (c->tie_word_embeddings && !strcmp(name, "lm_head.weight")) {
            if (!shape_is(info, 2, c->vocab_size, c->hidden_size) || !is_float(info->dtype)) {
                char got[96];
                shape_str(got, sizeof got, info->n_dims, info->shape);
                note(&bad, name, info, " %s %s, want [%lld,%lld] (tied)", got,
                     sq_dtype_name(info->dtype), (long long)c->vocab_size,
                     (long long)c->hidden_size);
            }
            continue;
        }
        bool companion = false;
        for (size_t k = 0; k < sizeof k_companions / sizeof k_companions[0] && !companion; k++) {
            if (!ends_with(name, k_companions[k], &base_len) || base_len >= 96) continue;
            char base[96];
            memcpy(base, name, base_len);
            base[base_len] = '\0';
            int ti = sq_meta_find(m, base);
            companion = ti >= 0 && next[ti].stored_quant != SQ_QUANT_NONE;
        }
        if (!companion) companion = int8_companion(m, next, name);
        if (!companion) note(&unexpected, name, info, NULL);
    }

    int total = missing.n + unexpected.n + bad.n;
    if (total == 0) {
        memcpy(m->tensors, next, (size_t)m->n_tensors * sizeof *next);
        free(next);
        return meta_rehash(m, err);
    }
    free(next);

    /* one line: "<n> tensors do not match the config (...): missing 2: a, b; unexpected …" */
    char msg[1024];
    size_t used = (size_t)snprintf(msg, sizeof msg, "%d tensor%s do%s not match the config (%s, %lld layers): ",
                                   total, total == 1 ? "" : "s", total == 1 ? "es" : "",
                                   c->architecture, (long long)c->n_layers);
    problem_list *lists[] = {&missing, &unexpected, &bad};
    bool first = true;
    for (int k = 0; k < 3; k++) {
        problem_list *l = lists[k];
        if (!l->n || used >= sizeof msg) continue;
        used += (size_t)snprintf(msg + used, sizeof msg - used, "%s%s %d: %s", first ? "" : "; ",
                                 l->label, l->n, l->text);
        if (l->n > l->shown && used < sizeof msg)
            used += (size_t)snprintf(msg + used, sizeof msg - used, " (%d more)",
                                     l->n - l->shown);
        first = false;
    }
    /* a single problem names its file and tensor the usual way */
    const char *file = folder, *tensor = NULL;
    if (total == 1) {
        problem_list *l = missing.n ? &missing : unexpected.n ? &unexpected : &bad;
        tensor = l->first_name;
        if (l->first && (size_t)l->first->file_index < sq_ckpt_n_files(st))
            file = sq_ckpt_file_path(st, (size_t)l->first->file_index);
    }
    return sq_error_set(err, SQ_ERR_FORMAT, file, tensor, "%s", msg);
}
