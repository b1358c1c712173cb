/* The shardq executable: MPI start-up, subcommand dispatch, top-level --help.
 * Must never hold model logic: every subcommand calls the library. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    sq_cli_cmd_fn fn;
    const char *help;
} command;

#define SQ_CLI_ENTRY(name, help) {#name, sq_cli_##name, help},
static const command k_commands[] = {SQ_CLI_COMMANDS(SQ_CLI_ENTRY)};
#undef SQ_CLI_ENTRY

static void print_help(FILE *f) {
    fprintf(f,
            "shardq %s: run a Hugging Face causal LM too large for one GPU across the GPUs of\n"
            "one or many nodes, quantized to 4 bits (bitsandbytes NF4/FP4) on the fly.\n\n"
            "usage: [mpirun -np N] shardq <command> [options]   (shardq <command> --help for more)\n\n"
            "commands:\n",
            "0.1.0");
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s", k_commands[i].name);
        for (char *p = name; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %-12s %s\n", name, k_commands[i].help);
    }
    fprintf(f, "\nErrors are one line on stderr naming the file, tensor and rank; exit status is\n"
               "0 on success, 1 on failure, 2 on a usage error.\n");
}

static void log_to_stderr(void *user, sq_log_level level, const char *msg) {
    const sq_cli_ctx *ctx = user;
    if (ctx->rank != 0 && level > SQ_LOG_WARN) return;
    fprintf(stderr, "shardq: %s%s\n", level == SQ_LOG_WARN ? "warning: " : "", msg);
}

int sq_cli_report(const sq_cli_ctx *ctx, const sq_error *err) {
    char line[2048];
    sq_error_format(err, line, sizeof line);
    fprintf(stderr, "%s: %s\n", ctx->prog, line);
    fflush(stderr);
    return 1;
}

int sq_cli_usage_error(const sq_cli_ctx *ctx, const char *cmd, const char *fmt, ...) {
    if (ctx->rank == 0) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "%s %s: %s (see '%s %s --help')\n", ctx->prog, cmd, msg, ctx->prog, cmd);
    }
    return 2;
}

int main(int argc, char **argv) {
    sq_cli_ctx ctx = {.rank = 0, .n_ranks = 1, .prog = "shardq"};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        print_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("shardq 0.1.0\n");
        return 0;
    }
    const command *cmd = NULL;
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s", k_commands[i].name);
        for (char *p = name; *p; p++)
            if (*p == '_') *p = '-';
        if (!strcmp(name, argv[1])) cmd = &k_commands[i];
    }
    if (!cmd) {
        fprintf(stderr, "shardq: unknown command '%s' (see 'shardq --help')\n", argv[1]);
        return 2;
    }

    /* A rank that dies closes its sockets; Open MPI's TCP transport writing to it would then
     * kill this rank with SIGPIPE, and mpirun would name this rank as the one that failed.
     * Ignored, the write fails with EPIPE and the liveness check or mpirun names the dead one. */
    signal(SIGPIPE, SIG_IGN);
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "shardq: MPI_Init_thread failed\n");
        return 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &ctx.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ctx.n_ranks);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &ctx.comm) != MPI_SUCCESS) {
        fprintf(stderr, "shardq: rank %d: MPI_Comm_dup failed\n", ctx.rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Comm_set_errhandler(ctx.comm, MPI_ERRORS_RETURN);
    ctx.log.fn = log_to_stderr;
    ctx.log.user = &ctx;

    int rc = cmd->fn(argc - 1, argv + 1, &ctx);
    fflush(stdout);
    fflush(stderr);
    sq_cli_watchdog_phase(ctx.watchdog, "finalizing MPI", true);
    MPI_Comm_free(&ctx.comm);
    MPI_Finalize();
    sq_cli_watchdog_stop(ctx.watchdog);
    return rc;
}
