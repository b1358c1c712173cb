/* Owns bitsandbytes' / transformers' serialization details: Python's repr of a
 * float, the quant_state JSON blob, config.json's quantization_config (4-bit and 8-bit), the
 * shard index, and the names / dtypes / shapes of an 8-bit Linear's parts.
 * Must never touch tensor bytes (it only points at them) or files, print, or keep state. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_impl.h"

const char *sq_bnb_quant_state_suffix(sq_quant_type t) {
    return t == SQ_QUANT_FP4 ? ".quant_state.bitsandbytes__fp4" : ".quant_state.bitsandbytes__nf4";
}

int sq_bnb_py_repr(double d, char *buf, size_t buf_bytes) {
    if (isnan(d)) return snprintf(buf, buf_bytes, "nan");
    if (isinf(d)) return snprintf(buf, buf_bytes, "%sinf", d < 0 ? "-" : "");
    if (d == 0) return snprintf(buf, buf_bytes, "%s0.0", signbit(d) ? "-" : "");
    /* the shortest %.*e that reads back to d: the digits Python's repr picks */
    char e[40];
    for (int p = 0; p <= 16; p++) {
        snprintf(e, sizeof e, "%.*e", p, d);
        if (strtod(e, NULL) == d) break;
    }
    const char *s = e;
    bool neg = *s == '-';
    if (neg) s++;
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.' && nd < 20) digits[nd++] = *s;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int exp10 = *s == 'e' ? atoi(s + 1) : 0;
    int decpt = exp10 + 1;   /* digits d1 d2 … mean 0.d1d2… x 10^decpt */
    char out[64];
    size_t k = 0;
    if (neg) out[k++] = '-';
    if (decpt <= -4 || decpt > 16) {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            for (int i = 1; i < nd; i++) out[k++] = digits[i];
        }
        k += (size_t)snprintf(out + k, sizeof out - k, "e%c%02d", exp10 < 0 ? '-' : '+',
                              exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -decpt; i++) out[k++] = '0';
        for (int i = 0; i < nd; i++) out[k++] = digits[i];
    } else if (decpt >= nd) {
        for (int i = 0; i < nd; i++) out[k++] = digits[i];
        for (int i = nd; i < decpt; i++) out[k++] = '0';
        out[k++] = '.';
        out[k++] = '0';
    } else {
        for (int i = 0; i < nd; i++) {
            if (i == decpt) out[k++] = '.';
            out[k++] = digits[i];
        }
    }
    out[k] = '\0';
    return snprintf(buf, buf_bytes, "%s", out);
}

sq_status sq_bnb_quant_state_json(const sq_qtensor *q, char **json, size_t *len, sq_error *err) {
    *json = NULL;
    *len = 0;
    const char *dtype = sq_torch_dtype_name(q->dtype);
    if (!dtype || (q->type != SQ_QUANT_NF4 && q->type != SQ_QUANT_FP4))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "quant_state: not a 4-bit tensor of a float dtype");
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "{\"quant_type\": \"%s\", \"blocksize\": %lld, \"dtype\": \"%s\", "
                     "\"shape\": [%lld, %lld]",
                     sq_quant_type_name(q->type), (long long)q->blocksize, dtype,
                     (long long)q->shape[0], (long long)q->shape[1]);
    if (q->double_quant) {
        if (!isfinite(q->nested_offset))
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "quant_state: nested_offset is not finite");
        char off[40];
        sq_bnb_py_repr((double)q->nested_offset, off, sizeof off);
        n += snprintf(buf + n, sizeof buf - (size_t)n,
                      ", \"nested_blocksize\": %lld, \"nested_dtype\": \"float32\", "
                      "\"nested_offset\": %s",
                      (long long)q->nested_blocksize, off);
    }
    n += snprintf(buf + n, sizeof buf - (size_t)n, "}");
    *json = strdup(buf);
    if (!*json) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory");
    *len = (size_t)n;
    return SQ_OK;
}

sq_status bnb_config_json(const char *text, size_t len, const char *path,
                          const sq_quant_scheme *s, const char *compute_dtype, char **out,
                          sq_error *err) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sq_error_set(err, SQ_ERR_FORMAT, path, NULL, "config.json is not a JSON object");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
    bool ok = q != NULL;
#define ADD(x) ok = ok && (x) != NULL
    if (ok && s->type == SQ_QUANT_INT8) {   /* BitsAndBytesConfig(load_in_8bit=True).to_dict() */
        ADD(cJSON_AddBoolToObject(q, "_load_in_4bit", false));
        ADD(cJSON_AddBoolToObject(q, "_load_in_8bit", true));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_compute_dtype", "float32"));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_storage", "uint8"));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_type", "fp4"));
        ADD(cJSON_AddBoolToObject(q, "bnb_4bit_use_double_quant", false));
        ADD(cJSON_AddBoolToObject(q, "llm_int8_enable_fp32_cpu_offload", false));
        ADD(cJSON_AddBoolToObject(q, "llm_int8_has_fp16_weight", false));
        ADD(cJSON_AddNullToObject(q, "llm_int8_skip_modules"));
        ADD(cJSON_AddRawToObject(q, "llm_int8_threshold", "6.0"));
        ADD(cJSON_AddBoolToObject(q, "load_in_4bit", false));
        ADD(cJSON_AddBoolToObject(q, "load_in_8bit", true));
        ADD(cJSON_AddStringToObject(q, "quant_method", "bitsandbytes"));
    } else if (ok) {   /* BitsAndBytesConfig.to_dict(), key for key (bnb-nf4-format.md §4.3) */
        ADD(cJSON_AddBoolToObject(q, "_load_in_4bit", true));
        ADD(cJSON_AddBoolToObject(q, "_load_in_8bit", false));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_compute_dtype", compute_dtype));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_storage", "uint8"));
        ADD(cJSON_AddStringToObject(q, "bnb_4bit_quant_type", sq_quant_type_name(s->type)));
        ADD(cJSON_AddBoolToObject(q, "bnb_4bit_use_double_quant", s->double_quant));
        ADD(cJSON_AddBoolToObject(q, "llm_int8_enable_fp32_cpu_offload", false));
        ADD(cJSON_AddBoolToObject(q, "llm_int8_has_fp16_weight", false));
        ADD(cJSON_AddNullToObject(q, "llm_int8_skip_modules"));
        /* raw "6.0": cJSON would print 6, and transformers refuses an int ("llm_int8_threshold
         * must be a float") */
        ADD(cJSON_AddRawToObject(q, "llm_int8_threshold", "6.0"));
        ADD(cJSON_AddBoolToObject(q, "load_in_4bit", true));
        ADD(cJSON_AddBoolToObject(q, "load_in_8bit", false));
        ADD(cJSON_AddStringToObject(q, "quant_method", "bitsandbytes"));
    }
#undef ADD
    char *txt = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!txt) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for config.json");
    size_t n = strlen(txt);
    char *nl = realloc(txt, n + 2);
    if (!nl) {
        free(txt);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for config.json");
    }
    nl[n] = '\n';
    nl[n + 1] = '\0';
    *out = nl;
    return SQ_OK;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}

/* appends a JSON string (names are ASCII in practice; escape what JSON needs anyway) */
static size_t put_json_str(char *dst, const char *s) {
    size_t k = 0;
    dst[k++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dst[k++] = '\\';
            dst[k++] = (char)c;
        } else if (c < 0x20) {
            k += (size_t)sprintf(dst + k, "\\u%04x", c);
        } else {
            dst[k++] = (char)c;
        }
    }
    dst[k++] = '"';
    return k;
}

sq_status bnb_index_json(index_entry *e, size_t n, uint64_t total_size, char **out,
                         sq_error *err) {
    *out = NULL;
    qsort(e, n, sizeof *e, cmp_entry);
    size_t cap = 128;
    for (size_t i = 0; i < n; i++) {
        if (i && !strcmp(e[i].name, e[i - 1].name))
            return sq_error_set(err, SQ_ERR_INTERNAL, NULL, e[i].name,
                                "tensor written by two ranks");
        cap += 6 * (strlen(e[i].name) + strlen(e[i].file)) + 16;
    }
    char *buf = malloc(cap);
    if (!buf) return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "out of memory for the index");
    size_t k = (size_t)sprintf(buf, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                    "  \"weight_map\": {",
                               (unsigned long long)total_size);
    for (size_t i = 0; i < n; i++) {
        k += (size_t)sprintf(buf + k, "%s\n    ", i ? "," : "");
        k += put_json_str(buf + k, e[i].name);
        buf[k++] = ':';
        buf[k++] = ' ';
        k += put_json_str(buf + k, e[i].file);
    }
    k += (size_t)sprintf(buf + k, "\n  }\n}\n");
    *out = buf;
    return SQ_OK;
}

sq_status bnb_int8_parts(const char *name, const sq_qtensor *q, char *base, size_t base_bytes,
                         bnb_part parts[BNB_INT8_PARTS], sq_error *err) {
    static const uint8_t row_format = 0;   /* LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"] */
    size_t n = strlen(name);
    if (q->type != SQ_QUANT_INT8 || !q->codes || !q->row_scale)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "bitsandbytes' 8-bit format holds int8 absmax weights, not %s",
                            sq_quant_type_name(q->type));
    if (n < 6 || strcmp(name + n - 6, "weight") != 0 || n - 6 >= base_bytes)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, name,
                            "an 8-bit weight's name must end in 'weight'");
    memcpy(base, name, n - 6);
    base[n - 6] = '\0';
    const int64_t rows = q->shape[0], cols = q->shape[1];
    parts[0] = (bnb_part){"weight", SQ_DTYPE_I8, 2, {rows, cols}, q->codes, (uint64_t)(rows * cols)};
    parts[1] = (bnb_part){"SCB", SQ_DTYPE_F32, 1, {rows, 0}, q->row_scale, (uint64_t)rows * 4};
    parts[2] = (bnb_part){"weight_format", SQ_DTYPE_U8, 0, {0, 0}, &row_format, 1};
    return SQ_OK;
}

bool bnb_config_is_8bit(const char *text, size_t len) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    const cJSON *l8 = cJSON_GetObjectItemCaseSensitive(q, "load_in_8bit");
    bool yes = cJSON_IsString(m) && !strcmp(m->valuestring, "bitsandbytes") && cJSON_IsTrue(l8);
    cJSON_Delete(root);
    return yes;
}
