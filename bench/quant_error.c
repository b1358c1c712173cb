/* quant_error: how far each weight scheme puts a real model's Linear weights from their values.
 * Reads a model (folder or .gguf) with the streaming loader, every tensor dense (a GGUF's block
 * formats dequantized exactly to float32, as llama.cpp does; a folder's BF16 / F16 converted), and for every quantizable (decoder
 * Linear) weight quantizes and dequantizes it with NF4 and FP4 (bitsandbytes, blocksize 64),
 * int8 (bitsandbytes LLM.int8 row absmax) and int8-zp (row zero-point), as shardq computes with
 * them (quant.h), and prints one table: mean |w - q(w)|, that over mean |w|, the RMS error and
 * the largest |w - q(w)|, over all those weights.  A program that prints figures, not a test.
 *
 *   build/src/load/quant_error MODEL [--json]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/checkpoint.h"
#include "shardq/load.h"
#include "shardq/meta.h"
#include "shardq/quant.h"

enum { N_SCHEMES = 4 };
static const sq_quant_type k_types[N_SCHEMES] = {SQ_QUANT_NF4, SQ_QUANT_FP4, SQ_QUANT_INT8,
                                                 SQ_QUANT_INT8_ZP};

typedef struct {
    double sum_abs_err[N_SCHEMES], sum_sq_err[N_SCHEMES], max_err[N_SCHEMES];
    double sum_abs_w;
    uint64_t n, n_weights;
    sq_pool *pool;
} acc;

static sq_status consume(void *user, sq_load_item *it, sq_error *err) {
    acc *a = user;
    if (!it->spec->quantizable) return SQ_OK;
    if (it->is_4bit)
        return sq_error_set(err, SQ_ERR_INTERNAL, NULL, it->spec->name, "expected a dense weight");
    const int64_t rows = it->shape[0], cols = it->shape[1];
    const uint64_t n = (uint64_t)(rows * cols);
    float *w = malloc((size_t)n * sizeof(float)), *d = malloc((size_t)n * sizeof(float));
    if (!w || !d) {
        free(w);
        free(d);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, it->spec->name, "out of memory");
    }
    sq_status cs = sq_convert_to_f32(it->dtype, it->data, w, (size_t)n, err);
    if (cs != SQ_OK) {
        free(w);
        free(d);
        return cs;
    }
    for (int k = 0; k < N_SCHEMES; k++) {
        sq_qtensor q;
        sq_status st;
        if (sq_quant_type_is_int8(k_types[k])) {
            st = sq_quant_int8_from(k_types[k], SQ_DTYPE_F32, w, rows, cols, a->pool, &q, err);
            if (st == SQ_OK)
                for (int64_t r = 0; r < rows; r++) sq_dequant_int8_row(&q, r, d + r * cols);
        } else {
            sq_quant_scheme s = sq_quant_scheme_default();
            s.type = k_types[k];
            st = sq_quant_4bit_from(SQ_DTYPE_F32, w, rows, cols, &s, a->pool, &q, err);
            if (st == SQ_OK) sq_dequant_4bit_f32(&q, 0, n, d);
        }
        if (st != SQ_OK) {
            free(w);
            free(d);
            return st;
        }
        for (uint64_t i = 0; i < n; i++) {
            double e = fabs((double)d[i] - (double)w[i]);
            a->sum_abs_err[k] += e;
            a->sum_sq_err[k] += e * e;
            if (e > a->max_err[k]) a->max_err[k] = e;
        }
        sq_qtensor_free(&q);
    }
    for (uint64_t i = 0; i < n; i++) a->sum_abs_w += fabs((double)w[i]);
    a->n += n;
    a->n_weights++;
    free(w);
    free(d);
    return SQ_OK;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--json"))) {
        fprintf(stderr, "usage: quant_error MODEL [--json]\n");
        return 2;
    }
    const bool json = argc == 3;
    sq_error err;
    sq_error_init(&err, -1);
    sq_ckpt *st = NULL;
    sq_meta *m = NULL;
    sq_model_config cfg;
    acc a;
    memset(&a, 0, sizeof a);
    sq_status rc = sq_ckpt_open(argv[1], &st, &err);
    if (rc == SQ_OK) rc = sq_ckpt_config(st, &cfg, &err);
    if (rc == SQ_OK) rc = sq_meta_create(&cfg, &m, &err);
    if (rc == SQ_OK) rc = sq_meta_validate(m, st, &err);
    if (rc == SQ_OK) rc = sq_pool_create(0, &a.pool, &err);
    if (rc == SQ_OK) {
        sq_load_options o = sq_load_options_default();
        o.scheme.type = SQ_QUANT_NONE;
        o.ggml_dense = true;
        o.pool = a.pool;
        sq_load_stage_desc all = {0, (int)cfg.n_layers, true, false};
        rc = sq_load_stage(st, m, &all, &o, consume, &a, NULL, &err);
    }
    if (rc != SQ_OK) {
        fprintf(stderr, "quant_error: %s%s%s\n", err.tensor[0] ? err.tensor : "",
                err.tensor[0] ? ": " : "", err.msg);
    } else if (json) {
        printf("{\"model\": \"%s\", \"n_weights\": %llu, \"n_elements\": %llu, \"mean_abs_w\": %.6e, \"schemes\": {",
               argv[1], (unsigned long long)a.n_weights, (unsigned long long)a.n, a.sum_abs_w / (double)a.n);
        for (int k = 0; k < N_SCHEMES; k++)
            printf("%s\"%s\": {\"mean_abs_err\": %.6e, \"rel\": %.6e, \"rms_err\": %.6e, \"max_err\": %.6e}",
                   k ? ", " : "", sq_quant_type_name(k_types[k]), a.sum_abs_err[k] / (double)a.n,
                   a.sum_abs_err[k] / a.sum_abs_w, sqrt(a.sum_sq_err[k] / (double)a.n), a.max_err[k]);
        printf("}}\n");
    } else {
        printf("# %s: %llu Linear weights, %llu elements, mean |w| %.4e\n", argv[1],
               (unsigned long long)a.n_weights, (unsigned long long)a.n, a.sum_abs_w / (double)a.n);
        printf("# %-8s %14s %12s %14s %14s\n", "scheme", "mean |err|", "/ mean |w|", "rms err", "max |err|");
        for (int k = 0; k < N_SCHEMES; k++)
            printf("  %-8s %14.4e %12.4f %14.4e %14.4e\n", sq_quant_type_name(k_types[k]),
                   a.sum_abs_err[k] / (double)a.n, a.sum_abs_err[k] / a.sum_abs_w,
                   sqrt(a.sum_sq_err[k] / (double)a.n), a.max_err[k]);
    }
    sq_pool_destroy(a.pool);
    sq_meta_destroy(m);
    sq_ckpt_close(st);
    return rc == SQ_OK ? 0 : 1;
}
