/* Private to the serve module: an OpenAI request as parsed from its JSON body (api.c), and
 * the chat rendering of its messages.  Who frees: sq_api_req_free frees what parse filled. */
#ifndef SHARDQ_SERVE_IMPL_H
#define SHARDQ_SERVE_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shardq/serve.h"

#define SQ_API_MAX_STOP 4
#define SQ_API_MAX_MESSAGES 256

typedef struct sq_api_msg {
    char *role, *content;
} sq_api_msg;

typedef struct sq_api_req {
    bool chat;
    bool stream, include_usage, return_token_ids;
    bool ignore_eos;              /* vLLM's extension: only max_tokens ends the sequence */
    char *prompt;                 /* completions: text (or NULL with prompt_ids) */
    int32_t *prompt_ids;          /* completions: token ids */
    int32_t n_prompt_ids;
    sq_api_msg *msgs;             /* chat */
    int n_msgs;
    int32_t max_tokens;           /* -1: not given */
    sq_sample_params sample;
    bool seed_given;
    char *stop[SQ_API_MAX_STOP];
    int n_stop;
} sq_api_req;

/* Parses body as an OpenAI completions (chat false) or chat completions request.  Unknown
 * fields are ignored; wrong types and values out of range fail.  Returns true, or false with
 * a message and the offending parameter name (may be "") for a 400. */
bool sq_api_parse(const char *body, size_t n, bool chat, sq_api_req *out, char *msg, size_t msg_n,
                  char *param, size_t param_n);
void sq_api_req_free(sq_api_req *r);

/* Renders the messages in the template of `family` (sq_chat_family) ending with the assistant's
 * turn opened.  A lone user message (with or without one system message before it) goes through
 * sq_tokenizer_chat_format, so it equals `shardq run --chat`.  *out malloc'd. */
bool sq_api_render_chat(const sq_api_req *r, int family, const char *default_system, char **out,
                        size_t *out_n, char *msg, size_t msg_n);

/* sq_buf (the JSON string builder) is core's (shardq/core.h). */

#endif
