/* Flag parsing and cross-rank agreement shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
