/* `shardq inspect MODEL_DIR`: architecture, dims, parameter and tensor counts, files, and
 * exact bytes for bf16 / nf4 / nf4 + double quant / fp4; --verbose one line per module;
 * --json one object.  Reads config.json and the safetensors headers only.
 * Under mpirun rank 0 reads and validates, then sq_meta_bcast gives every rank the skeleton
 * and checks its hash; rank 0 prints.
 * Must never read tensor data (beyond what sq_meta_validate reads of bnb quant_state blobs),
 * and no rank may return before the others know the outcome. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "shardq/ggml_quant.h"
#include "shardq/config.h"
#include "shardq/meta.h"
#include "shardq/safetensors.h"
#include "shardq/size.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: [mpirun -np N] shardq inspect MODEL_DIR [--json] [--verbose]\n\n"
            "Shows a Hugging Face model folder (config.json + *.safetensors, sharded or not)\n"
            "without reading weights: architecture, dims, parameter and tensor counts, files,\n"
            "and the exact bytes it takes in bf16, nf4, nf4 with double quant and fp4 (bnb\n"
            "layout, blocksize 64; the quant_state JSON blobs are not counted).  Checks every\n"
            "tensor against the config.  Under mpirun rank 0 reads the folder and broadcasts the\n"
            "skeleton; every rank checks its hash.\n"
            "  --json     one JSON object: architecture, n_params, n_tensors, n_layers,\n"
            "             bytes {bf16, nf4, nf4_dq, fp4}, files, hash, ...\n"
            "  --verbose  one line per module (embeddings, each decoder layer, norm, lm_head)\n");
}

/* The four schemes reported, in order. */
typedef struct scheme_row {
    const char *name;
    sq_quant_scheme s;
} scheme_row;

#define N_SCHEMES 6
static void schemes(scheme_row rows[N_SCHEMES]) {
    sq_quant_scheme base = sq_quant_scheme_default();   /* NF4, blocksize 64, dense BF16 */
    rows[0] = (scheme_row){"bf16", base};
    rows[0].s.type = SQ_QUANT_NONE;
    rows[1] = (scheme_row){"nf4", base};
    rows[2] = (scheme_row){"nf4_dq", base};
    rows[2].s.double_quant = true;
    rows[3] = (scheme_row){"fp4", base};
    rows[3].s.type = SQ_QUANT_FP4;
    rows[4] = (scheme_row){"int8", base};   /* codes + float32 SCB per row */
    rows[4].s.type = SQ_QUANT_INT8;
    rows[5] = (scheme_row){"int8_zp", base};   /* + an int8 zero point per row */
    rows[5].s.type = SQ_QUANT_INT8_ZP;
}

/* 1234567 -> "1,234,567" */
static const char *commas(uint64_t v, char *buf, size_t n) {
    char raw[32];
    snprintf(raw, sizeof raw, "%" PRIu64, v);
    size_t len = strlen(raw), o = 0;
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = '\0';
    return buf;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static uint64_t module_params(const sq_meta *m, int i) {
    const sq_module_spec *md = sq_meta_module(m, i);
    uint64_t n = 0;
    for (int k = 0; k < md->n_tensors; k++) n += sq_meta_tensor(m, md->first_tensor + k)->n_elements;
    return n;
}

/* "BF16" or "BF16 x37, F32 x2"; pre-quantized weights as "U8 (bnb nf4 dq) x28". */
static void dtype_summary(const sq_meta *m, char *buf, size_t n) {
    int count[SQ_DTYPE_COUNT] = {0}, pre = 0, ggml[64] = {0};
    const char *pre_kind = "";
    for (int i = 0; i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        if (t->stored_ggml >= 0 && t->stored_ggml < 64 && t->dtype == SQ_DTYPE_U8) {
            ggml[t->stored_ggml]++;   /* a GGUF block format, kept as stored */
        } else if (t->stored_quant != SQ_QUANT_NONE) {
            pre++;
            pre_kind = t->stored_quant == SQ_QUANT_INT8 ? "int8"
                       : t->stored_quant == SQ_QUANT_NF4 ? (t->stored_double_quant ? "nf4 dq" : "nf4")
                                                         : (t->stored_double_quant ? "fp4 dq" : "fp4");
        } else {
            count[t->dtype]++;
        }
    }
    int kinds = 0;
    for (int d = 0; d < SQ_DTYPE_COUNT; d++) kinds += count[d] > 0;
    for (int g = 0; g < 64; g++) kinds += ggml[g] > 0;
    size_t used = 0;
    buf[0] = '\0';
    for (int d = 0; d < SQ_DTYPE_COUNT && used < n; d++) {
        if (!count[d]) continue;
        if (kinds == 1 && !pre) used += (size_t)snprintf(buf + used, n - used, "%s", sq_dtype_name((sq_dtype)d));
        else used += (size_t)snprintf(buf + used, n - used, "%s%s x%d", used ? ", " : "",
                                      sq_dtype_name((sq_dtype)d), count[d]);
    }
    for (int g = 0; g < 64 && used < n; g++)
        if (ggml[g])
            used += (size_t)snprintf(buf + used, n - used, "%s%s x%d", used ? ", " : "",
                                     sq_ggml_type_name(g) ? sq_ggml_type_name(g) : "?", ggml[g]);
    if (pre && used < n)
        snprintf(buf + used, n - used, "%s%s (pre-quantized bnb %s) x%d", used ? ", " : "",
                 strcmp(pre_kind, "int8") ? "U8" : "I8", pre_kind, pre);
}

static void print_json(const char *dir, const sq_meta *m, const sq_ckpt *st, int n_ranks,
                       bool verbose) {
    const sq_model_config *c = sq_meta_config(m);
    scheme_row rows[N_SCHEMES];
    schemes(rows);
    int n_q = 0;
    for (int i = 0; i < sq_meta_n_tensors(m); i++) n_q += sq_meta_tensor(m, i)->quantizable;
    printf("{\"model\": ");
    json_string(dir);
    printf(", \"architecture\": \"%s\", \"model_type\": \"%s\", \"dtype\": \"%s\", "
           "\"n_params\": %" PRIu64 ", \"n_tensors\": %d, \"n_quantizable\": %d, "
           "\"n_layers\": %lld, \"n_modules\": %d, \"hidden_size\": %lld, "
           "\"intermediate_size\": %lld, \"n_heads\": %lld, \"n_kv_heads\": %lld, "
           "\"head_dim\": %lld, \"vocab_size\": %lld, \"max_position_embeddings\": %lld, "
           "\"tie_word_embeddings\": %s, \"attention_bias\": %s, \"blocksize\": %lld, ",
           c->architecture, sq_arch_model_type(c->arch), sq_torch_dtype_name(c->torch_dtype),
           sq_meta_n_params(m), sq_meta_n_tensors(m), n_q, (long long)c->n_layers,
           sq_meta_n_modules(m), (long long)c->hidden_size, (long long)c->intermediate_size,
           (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim,
           (long long)c->vocab_size, (long long)c->max_position_embeddings,
           c->tie_word_embeddings ? "true" : "false", c->attention_bias ? "true" : "false",
           (long long)rows[1].s.blocksize);
    printf("\"bytes\": {");
    for (int k = 0; k < N_SCHEMES; k++)
        printf("%s\"%s\": %" PRIu64, k ? ", " : "", rows[k].name, sq_meta_total_bytes(m, &rows[k].s));
    printf("}, \"checkpoint_bytes\": %" PRIu64 ", \"files\": [", sq_ckpt_data_bytes(st));
    for (size_t f = 0; f < sq_ckpt_n_files(st); f++) {
        if (f) printf(", ");
        json_string(base_name(sq_ckpt_file_path(st, f)));
    }
    printf("], \"hash\": \"%016" PRIx64 "\", \"n_ranks\": %d", sq_meta_hash(m), n_ranks);
    if (verbose) {
        printf(", \"modules\": [");
        for (int i = 0; i < sq_meta_n_modules(m); i++) {
            const sq_module_spec *md = sq_meta_module(m, i);
            printf("%s{\"name\": \"%s\", \"layer\": %lld, \"n_tensors\": %d, \"n_params\": %" PRIu64
                   ", \"bytes\": {",
                   i ? ", " : "", md->name, (long long)md->layer, md->n_tensors, module_params(m, i));
            for (int k = 0; k < N_SCHEMES; k++)
                printf("%s\"%s\": %" PRIu64, k ? ", " : "", rows[k].name,
                       sq_meta_module_bytes(m, i, &rows[k].s));
            printf("}}");
        }
        printf("]");
    }
    printf("}\n");
}

static void print_text(const char *dir, const sq_meta *m, const sq_ckpt *st, int n_ranks,
                       bool verbose) {
    const sq_model_config *c = sq_meta_config(m);
    scheme_row rows[N_SCHEMES];
    schemes(rows);
    char a[32], b[32], dt[256];
    int n_q = 0;
    uint64_t q_params = 0;
    for (int i = 0; i < sq_meta_n_tensors(m); i++) {
        const sq_tensor_spec *t = sq_meta_tensor(m, i);
        n_q += t->quantizable;
        if (t->quantizable) q_params += t->n_elements;
    }
    static const char *rope[] = {"default", "linear", "dynamic", "llama3"};
    printf("model         %s\n", dir);
    printf("architecture  %s (%s), dtype %s\n", c->architecture, sq_arch_model_type(c->arch),
           sq_torch_dtype_name(c->torch_dtype));
    printf("dims          hidden %lld, intermediate %lld, layers %lld, heads %lld / kv %lld "
           "(head_dim %lld), vocab %lld\n",
           (long long)c->hidden_size, (long long)c->intermediate_size, (long long)c->n_layers,
           (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim,
           (long long)c->vocab_size);
    printf("attention     max positions %lld, rope theta %g (%s", (long long)c->max_position_embeddings,
           c->rope_theta, rope[c->rope_scaling.kind]);
    if (c->rope_scaling.kind != SQ_ROPE_DEFAULT) printf(" x%g", c->rope_scaling.factor);
    printf("), rms_norm_eps %g, q/k/v bias %s, embeddings %s\n", c->rms_norm_eps,
           c->attention_bias ? "yes" : "no", c->tie_word_embeddings ? "tied" : "untied");
    printf("parameters    %s in %d tensors (%d quantizable Linear weights: %s parameters)\n",
           commas(sq_meta_n_params(m), a, sizeof a), sq_meta_n_tensors(m), n_q,
           commas(q_params, b, sizeof b));
    size_t nf = sq_ckpt_n_files(st);
    printf("files         %zu:", nf);
    for (size_t f = 0; f < nf && f < 8; f++)
        printf("%s %s", f ? "," : "", base_name(sq_ckpt_file_path(st, f)));
    if (nf > 8) printf(", ... (%zu more)", nf - 8);
    dtype_summary(m, dt, sizeof dt);
    printf("\ncheckpoint    %s bytes of tensor data (%s)\n",
           commas(sq_ckpt_data_bytes(st), a, sizeof a), dt);
    printf("skeleton      %d modules, hash %016" PRIx64 ", identical on %d rank%s\n",
           sq_meta_n_modules(m), sq_meta_hash(m), n_ranks, n_ranks == 1 ? "" : "s");

    printf("\n# storage by scheme (bitsandbytes layout, 4-bit blocksize %lld, int8 one scale per row; "
           "quant_state JSON not counted)\n",
           (long long)rows[1].s.blocksize);
    printf("# %-8s %16s %12s %12s\n", "scheme", "bytes", "MiB", "bits/param");
    const double n_params = (double)sq_meta_n_params(m);
    for (int k = 0; k < N_SCHEMES; k++) {
        uint64_t bytes = sq_meta_total_bytes(m, &rows[k].s);
        printf("  %-8s %16s %12.2f %12.2f\n", rows[k].name, commas(bytes, a, sizeof a),
               (double)bytes / 1048576.0, n_params > 0 ? 8.0 * (double)bytes / n_params : 0.0);
    }
    if (!verbose) return;
    printf("\n# per module (bytes)\n# %-22s %7s %13s %14s %14s %14s %14s %14s %14s\n", "module",
           "tensors", "params", "bf16", "nf4", "nf4_dq", "fp4", "int8", "int8_zp");
    for (int i = 0; i < sq_meta_n_modules(m); i++) {
        const sq_module_spec *md = sq_meta_module(m, i);
        char p[32], col[N_SCHEMES][32];
        for (int k = 0; k < N_SCHEMES; k++) commas(sq_meta_module_bytes(m, i, &rows[k].s), col[k], sizeof col[k]);
        printf("  %-22s %7d %13s %14s %14s %14s %14s %14s %14s\n", md->name, md->n_tensors,
               commas(module_params(m, i), p, sizeof p), col[0], col[1], col[2], col[3], col[4],
               col[5]);
    }
}

/* Rank 0: config + headers -> validated skeleton. */
static sq_status read_model(const char *dir, sq_meta **m, sq_ckpt **st, sq_error *err) {
    sq_model_config cfg;
    sq_status s = sq_ckpt_open(dir, st, err);
    if (s == SQ_OK) s = sq_ckpt_config(*st, &cfg, err);
    if (s == SQ_OK) s = sq_meta_create(&cfg, m, err);
    if (s == SQ_OK) s = sq_meta_validate(*m, *st, err);
    if (s != SQ_OK) {
        sq_meta_destroy(*m);
        *m = NULL;
        sq_ckpt_close(*st);
        *st = NULL;
    }
    return s;
}

int sq_cli_inspect(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *dir = NULL;
    bool json = false, verbose = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--verbose") || !strcmp(argv[i], "-v")) {
            verbose = true;
        } else if (argv[i][0] == '-') {
            return sq_cli_usage_error(ctx, "inspect", "unknown option '%s'", argv[i]);
        } else if (dir) {
            return sq_cli_usage_error(ctx, "inspect", "one MODEL_DIR only ('%s' and '%s')", dir,
                                      argv[i]);
        } else {
            dir = argv[i];
        }
    }
    if (!dir) return sq_cli_usage_error(ctx, "inspect", "MODEL_DIR is required");

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_meta *m = NULL;
    sq_ckpt *st = NULL;
    if (ctx->rank == 0) read_model(dir, &m, &st, &err);   /* on failure m is NULL, err set */
    /* collective: the root's failure, a bad buffer or a hash mismatch on any rank ends every
     * rank here with the same error */
    sq_status s = sq_meta_bcast(ctx->comm, 0, &m, &err);
    if (s != SQ_OK) {
        if (ctx->rank == 0) {
            sq_meta_destroy(m);
            sq_ckpt_close(st);
            return sq_cli_report(ctx, &err);
        }
        return 1;
    }
    if (ctx->rank == 0) {
        if (json) print_json(dir, m, st, ctx->n_ranks, verbose);
        else print_text(dir, m, st, ctx->n_ranks, verbose);
    }
    sq_meta_destroy(m);
    sq_ckpt_close(st);
    return 0;
}
