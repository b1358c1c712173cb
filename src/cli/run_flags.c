/* The flags `shardq run` and `shardq bench` share: the 4-bit scheme and where to execute.
 * One parser so that both commands accept, check and explain them alike. */
#include <string.h>

#include "cli.h"

bool sq_cli_run_flag(const sq_cli_ctx *ctx, const char *cmd, int argc, char **argv, int *i,
                     sq_run_options *o, bool *dq, bool *quant_given, bool *missing,
                     int *usage_rc) {
    const char *v = NULL;
    int64_t v64 = 0;
    double vd = 0;
    *usage_rc = 0;
    if (sq_cli_flag_value(argc, argv, i, "--quant", &v, missing)) {
        if (!*missing && !sq_quant_type_from_name(v, &o->scheme.type))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--quant must be nf4, fp4 or none, not '%s'", v);
        *quant_given = true;
    } else if (!strcmp(argv[*i], "--double-quant")) {
        *dq = true;
    } else if (sq_cli_flag_value(argc, argv, i, "--blocksize", &v, missing)) {
        if (!*missing && (!sq_cli_parse_i64(v, 32, 4096, &v64) || (v64 & (v64 - 1)) != 0))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--blocksize must be a power of two in 32..4096, not '%s'", v);
        else if (!*missing)
            o->scheme.blocksize = v64;
        *quant_given = true;
    } else if (sq_cli_flag_value(argc, argv, i, "--backend", &v, missing)) {
        if (!*missing && !sq_run_backend_from_name(v, &o->backend))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--backend must be auto, cpu or cuda, not '%s'", v);
    } else if (sq_cli_flag_value(argc, argv, i, "--transport", &v, missing)) {
        if (!*missing && !sq_run_transport_from_name(v, &o->transport))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--transport must be auto, mpi or nccl, not '%s'", v);
    } else if (sq_cli_flag_value(argc, argv, i, "--device", &v, missing)) {
        if (!*missing && !sq_cli_parse_i64(v, 0, 1023, &v64))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--device must be a CUDA device number 0..1023, not '%s'", v);
        else if (!*missing)
            o->device = (int)v64;
    } else if (sq_cli_flag_value(argc, argv, i, "--threads", &v, missing)) {
        if (!*missing && !sq_cli_parse_i64(v, 1, 4096, &v64))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--threads must be 1..4096, not '%s'", v);
        else if (!*missing)
            o->n_threads = (int)v64;
    } else if (sq_cli_flag_value(argc, argv, i, "--timeout", &v, missing)) {
        if (!*missing && (!sq_cli_parse_f64(v, 0, 1e6, &vd) || vd <= 0))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--timeout must be a positive number of seconds, not '%s'", v);
        else if (!*missing)
            o->timeout_s = vd;
    } else {
        return false;
    }
    return true;
}
