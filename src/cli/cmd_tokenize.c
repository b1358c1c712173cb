/* `shardq tokenize MODEL (--text S | --file F) [--json] [--verbose]`: the token ids the
 * model's tokenizer (tokenizer.json of a folder, or a GGUF's tokenizer.ggml.* metadata, via the
 * checkpoint interface) gives a text, with the tokenizer's special tokens (BOS) added as it adds
 * them; with --verbose also each id's piece.  Rank 0 does the work; other ranks only agree.
 * Must never read a tensor. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "shardq/checkpoint.h"
#include "shardq/tokenizer.h"

#define MAX_TEXT_FILE_BYTES (64u << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: shardq tokenize MODEL (--text S | --file F) [--json] [--verbose]\n\n"
            "Encodes a text with the model's tokenizer: MODEL is a folder with tokenizer.json or a\n"
            ".gguf file (its tokenizer.ggml.* metadata).  Special tokens the tokenizer adds (BOS)\n"
            "are added; special-token strings in the text are recognised.\n"
            "  --text S     the text\n"
            "  --file F     the text is the file's bytes (UTF-8, as they are)\n"
            "  --json       {\"ids\": [...]} (with --verbose also \"pieces\")\n"
            "  --verbose    one line per token: id and its piece as stored in the vocabulary\n"
            "Output: the ids on one line, separated by spaces.\n");
}


static void json_str(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') printf("\\n");
        else if (c == '\t') printf("\\t");
        else if (c == '\r') printf("\\r");
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int sq_cli_tokenize(int argc, char **argv, sq_cli_ctx *ctx) {
    const char *model = NULL, *text = NULL, *file = NULL;
    bool json = false, verbose = false;
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v = NULL;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            if (ctx->rank == 0) usage(stdout);
            return 0;
        } else if (sq_cli_flag_value(argc, argv, &i, "--text", &v, &missing)) {
            text = v;
        } else if (sq_cli_flag_value(argc, argv, &i, "--file", &v, &missing)) {
            file = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--verbose")) {
            verbose = true;
        } else if (argv[i][0] == '-' && !missing) {
            return sq_cli_usage_error(ctx, "tokenize", "unknown flag '%s'", argv[i]);
        } else if (!missing && !model) {
            model = argv[i];
        } else if (!missing) {
            return sq_cli_usage_error(ctx, "tokenize", "unexpected argument '%s'", argv[i]);
        }
        if (missing) return sq_cli_usage_error(ctx, "tokenize", "%s needs a value", argv[i]);
    }
    if (!model) return sq_cli_usage_error(ctx, "tokenize", "no MODEL given");
    if (!text == !file) return sq_cli_usage_error(ctx, "tokenize", "give exactly one of --text and --file");

    sq_error err;
    sq_error_init(&err, ctx->n_ranks > 1 ? ctx->rank : -1);
    sq_status st = SQ_OK;
    sq_ckpt *ck = NULL;
    sq_tokenizer *tok = NULL;
    char *buf = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, len = 0;
    if (ctx->rank == 0) {
        bool found = false;
        st = sq_ckpt_open(model, &ck, &err);
        if (st == SQ_OK) st = sq_ckpt_tokenizer(ck, &tok, &found, &err);
        if (st == SQ_OK && !found)
            st = sq_error_set(&err, SQ_ERR_INVALID, model, NULL,
                              "no tokenizer (no tokenizer.json, no tokenizer.ggml.model)");
        if (st == SQ_OK && file) st = sq_cli_read_text_file(file, MAX_TEXT_FILE_BYTES, &buf, &len, &err);
        if (st == SQ_OK) {
            const char *t = file ? buf : text;
            if (!file) len = strlen(text);
            st = sq_tokenizer_encode(tok, t, len, true, &ids, &n_ids, &err);
        }
    }
    st = sq_cli_agree(ctx, st, &err);
    int rc = 0;
    if (st != SQ_OK) {
        rc = ctx->rank == 0 ? sq_cli_report(ctx, &err) : 1;
    } else if (ctx->rank == 0) {
        if (json) {
            printf("{\"ids\": [");
            for (size_t i = 0; i < n_ids; i++) printf("%s%d", i ? ", " : "", ids[i]);
            printf("]");
            if (verbose) {
                printf(", \"pieces\": [");
                for (size_t i = 0; i < n_ids; i++) {
                    size_t pn = 0;
                    const char *p = sq_tokenizer_token_text(tok, ids[i], &pn);
                    if (i) printf(", ");
                    json_str(p ? p : "", p ? pn : 0);
                }
                printf("]");
            }
            printf("}\n");
        } else if (verbose) {
            for (size_t i = 0; i < n_ids; i++) {
                size_t pn = 0;
                const char *p = sq_tokenizer_token_text(tok, ids[i], &pn);
                printf("%8d  ", ids[i]);
                json_str(p ? p : "", p ? pn : 0);
                putchar('\n');
            }
        } else {
            for (size_t i = 0; i < n_ids; i++) printf("%s%d", i ? " " : "", ids[i]);
            putchar('\n');
        }
        if (fflush(stdout) != 0) rc = 1;
    }
    free(ids);
    free(buf);
    sq_tokenizer_destroy(tok);
    sq_ckpt_close(ck);
    return rc;
}
