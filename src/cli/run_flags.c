/* Flags several commands share, one parser each so that every command accepts, checks and
 * explains them alike: the 4-bit scheme (plan, quantize, run, bench) and where to execute
 * (run, bench). */
#include <string.h>

#include "cli.h"

bool sq_cli_scheme_flag(const sq_cli_ctx *ctx, const char *cmd, int argc, char **argv, int *i,
                        sq_quant_scheme *s, bool allow_none, bool *given, bool *missing,
                        int *usage_rc) {
    const char *v = NULL;
    int64_t v64 = 0;
    *usage_rc = 0;
    if (sq_cli_flag_value(argc, argv, i, "--quant", &v, missing)) {
        sq_quant_type t = SQ_QUANT_NF4;
        if (!*missing && (!sq_quant_type_from_name(v, &t) || (!allow_none && t == SQ_QUANT_NONE)))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--quant must be %s, not '%s'",
                                           allow_none ? "nf4, fp4, int8, int8-zp or none"
                                                      : "nf4, fp4, int8 or int8-zp", v);
        else if (!*missing)
            s->type = t;
    } else if (!strcmp(argv[*i], "--double-quant")) {
        s->double_quant = true;
    } else if (sq_cli_flag_value(argc, argv, i, "--blocksize", &v, missing)) {
        if (!*missing && (!sq_cli_parse_i64(v, 32, 4096, &v64) || (v64 & (v64 - 1)) != 0))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--blocksize must be a power of two in 32..4096, not '%s'", v);
        else if (!*missing)
            s->blocksize = v64;
    } else {
        return false;
    }
    *given = true;
    return true;
}

int sq_cli_scheme_check(const sq_cli_ctx *ctx, const char *cmd, const sq_quant_scheme *s) {
    if (s->type == SQ_QUANT_NONE && s->double_quant)
        return sq_cli_usage_error(ctx, cmd, "--double-quant quantizes the 4-bit absmax: it needs --quant nf4 or fp4");
    if (sq_quant_type_is_int8(s->type) && s->double_quant)
        return sq_cli_usage_error(ctx, cmd, "--double-quant quantizes the 4-bit absmax: %s has one float32 scale per row",
                                  sq_quant_type_name(s->type));
    return 0;
}

bool sq_cli_run_flag(const sq_cli_ctx *ctx, const char *cmd, int argc, char **argv, int *i,
                     sq_run_options *o, bool *quant_given, bool *missing, int *usage_rc) {
    const char *v = NULL;
    int64_t v64 = 0;
    double vd = 0;
    *usage_rc = 0;
    if (sq_cli_scheme_flag(ctx, cmd, argc, argv, i, &o->scheme, true, quant_given, missing, usage_rc)) {
        return true;
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
    } else if (sq_cli_flag_value(argc, argv, i, "--activations", &v, missing)) {
        if (!*missing && strcmp(v, "int8") != 0 && strcmp(v, "f32") != 0)
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--activations must be int8 or f32, not '%s'", v);
        else if (!*missing)
            o->activations = strcmp(v, "int8") == 0 ? SQ_CPU_ACT_INT8 : SQ_CPU_ACT_F32;
    } else if (sq_cli_flag_value(argc, argv, i, "--timeout", &v, missing)) {
        if (!*missing && (!sq_cli_parse_f64(v, 0, 1e6, &vd) || vd <= 0))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--timeout must be a positive number of seconds, not '%s'", v);
        else if (!*missing)
            o->timeout_s = vd;
    } else if (sq_cli_flag_value(argc, argv, i, "--stall-timeout", &v, missing)) {
        if (!*missing && (!sq_cli_parse_f64(v, 0, 1e6, &vd) || vd < 0))
            *usage_rc = sq_cli_usage_error(ctx, cmd, "--stall-timeout must be a number of seconds (0: off), not '%s'", v);
        else if (!*missing)
            o->stall_timeout_s = vd;
    } else {
        return false;
    }
    return true;
}
