/* Flag parsing and cross-rank agreement shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "shardq/checkpoint.h"

bool sq_cli_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out) {
    if (!s || !*s) return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

bool sq_cli_parse_f64(const char *s, double min, double max, double *out) {
    if (!s || !*s) return false;
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < min || v > max) return false;
    *out = v;
    return true;
}

bool sq_cli_flag_value(int argc, char **argv, int *i, const char *name, const char **val,
                       bool *missing) {
    if (strcmp(argv[*i], name) != 0) return false;
    if (*i + 1 >= argc) {
        *missing = true;
        *val = NULL;
        return true;
    }
    *val = argv[++*i];
    return true;
}

sq_status sq_cli_agree(const sq_cli_ctx *ctx, sq_status local, sq_error *err) {
    if (ctx->n_ranks == 1) return local;
    /* lowest failing rank, or n_ranks if none */
    int mine = local == SQ_OK ? ctx->n_ranks : ctx->rank, first = ctx->n_ranks;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, ctx->comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce failed while agreeing on status");
    if (first == ctx->n_ranks) return SQ_OK;
    sq_error copy;
    if (ctx->rank == first) copy = *err;
    if (MPI_Bcast(&copy, (int)sizeof copy, MPI_BYTE, first, ctx->comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Bcast failed while agreeing on status");
    *err = copy;
    if (err->code == SQ_OK) err->code = SQ_ERR_PEER;
    return err->code;
}

sq_status sq_cli_config_load(const char *path, sq_model_config *cfg, sq_error *err) {
    if (!sq_ckpt_is_gguf(path)) return sq_config_load(path, cfg, err);
    sq_ckpt *ck = NULL;
    sq_status s = sq_ckpt_open(path, &ck, err);
    if (s == SQ_OK) s = sq_ckpt_config(ck, cfg, err);
    sq_ckpt_close(ck);
    return s;
}

void sq_cli_abort_after_peer_failure(const sq_cli_ctx *ctx, const sq_error *err) {
    bool blames_0 = !strncmp(err->msg, "rank 0 ", 7);
    bool own = err->code != SQ_ERR_PEER;
    if (ctx->rank == 0 || own || (blames_0 && ctx->rank == 1)) {
        sq_cli_report(ctx, err);
    } else {
        struct timespec ts = {1, 0};   /* let the rank that reports do it first */
        nanosleep(&ts, NULL);
    }
    fflush(stdout);
    MPI_Abort(ctx->comm, 1);
}

void sq_cli_load_progress(void *user, const sq_load_progress *p) {
    (void)user;
    if (!isatty(fileno(stderr))) return;
    fprintf(stderr, "\rload: %.3f / %.3f GB (%3.0f%%), %.2f GB/s, ranks done %d/%d%s",
            (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9,
            p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 100.0,
            p->gbps, p->ranks_done, p->n_ranks, p->final ? "\n" : "   ");
    fflush(stderr);
}

sq_status sq_cli_read_text_file(const char *path, size_t max_bytes, char **out, size_t *len,
                                sq_error *err) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return sq_error_set(err, SQ_ERR_IO, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > max_bytes) {
        fclose(f);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "not a regular file of at most %zu bytes",
                            max_bytes);
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)sb.st_size, f) : 0;
    fclose(f);
    if (!buf || n != (size_t)sb.st_size) {
        free(buf);
        return sq_error_set(err, SQ_ERR_IO, path, NULL, "short read");
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return SQ_OK;
}

void sq_cli_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

const char *sq_cli_scheme_text(const sq_run_result *r, char *buf, size_t n) {
    if (r->ggml_stored)
        snprintf(buf, n, "GGUF weights as stored");
    else if (r->scheme.type == SQ_QUANT_NONE)
        snprintf(buf, n, "none");
    else if (sq_quant_type_is_int8(r->scheme.type))
        snprintf(buf, n, "%s (one scale per row)%s", sq_quant_type_name(r->scheme.type),
                 r->prequantized ? " (as stored)" : "");
    else
        snprintf(buf, n, "%s%s blocksize %lld%s", sq_quant_type_name(r->scheme.type),
                 r->scheme.double_quant ? "+double-quant" : "", (long long)r->scheme.blocksize,
                 r->prequantized ? " (as stored)" : "");
    return buf;
}
