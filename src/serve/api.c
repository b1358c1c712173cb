/* Owns the OpenAI request format of `shardq serve`: the JSON body of /v1/completions and
 * /v1/chat/completions into an sq_api_req (cJSON), the checks of types and ranges (400s),
 * and the chat messages rendered in the model's template (the responses are built with core's
 * sq_buf).  Must never print, or accept a value of the wrong type silently. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve_impl.h"
#include "shardq/tokenizer.h"

/* ---- parsing --------------------------------------------------------------------------------- */

void sq_api_req_free(sq_api_req *r) {
    if (!r) return;
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_msgs; i++) {
        free(r->msgs[i].role);
        free(r->msgs[i].content);
    }
    free(r->msgs);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

#define BAD(p, ...)                                        \
    do {                                                   \
        snprintf(param, param_n, "%s", p);                 \
        snprintf(msg, msg_n, __VA_ARGS__);                 \
        goto fail;                                         \
    } while (0)

static bool is_int(const cJSON *x) {
    return cJSON_IsNumber(x) && x->valuedouble == floor(x->valuedouble) && fabs(x->valuedouble) < 9.0e15;
}

static bool absent(const cJSON *x) { return !x || cJSON_IsNull(x); }

/* A message's content: a string, or an array of {"type": "text", "text": …} parts. */
static char *content_of(const cJSON *c) {
    if (cJSON_IsString(c)) return strdup(c->valuestring);
    if (!cJSON_IsArray(c)) return NULL;
    sq_buf b = {0};
    SQ_BUF_LIT(&b, "");
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
            free(b.p);
            return NULL;
        }
        sq_buf_add(&b, text->valuestring, strlen(text->valuestring));
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

bool sq_api_parse(const char *body, size_t n, bool chat, sq_api_req *out, char *msg, size_t msg_n,
                  char *param, size_t param_n) {
    memset(out, 0, sizeof *out);
    out->chat = chat;
    out->max_tokens = -1;
    out->sample = (sq_sample_params){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    cJSON *j = cJSON_ParseWithLength(body, n);
    const cJSON *x;
    if (!j) BAD("", "the body is not valid JSON");
    if (!cJSON_IsObject(j)) BAD("", "the body must be a JSON object");
    if (chat) {
        x = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) < 1)
            BAD("messages", "'messages' must be a non-empty array of {role, content}");
        int k = cJSON_GetArraySize(x);
        if (k > SQ_API_MAX_MESSAGES) BAD("messages", "at most %d messages", SQ_API_MAX_MESSAGES);
        out->msgs = calloc((size_t)k, sizeof *out->msgs);
        if (!out->msgs) BAD("", "out of memory");
        const cJSON *m;
        cJSON_ArrayForEach(m, x) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role)) BAD("messages", "messages[%d].role must be a string", out->n_msgs);
            if (strcmp(role->valuestring, "system") && strcmp(role->valuestring, "user") &&
                strcmp(role->valuestring, "assistant") && strcmp(role->valuestring, "developer"))
                BAD("messages", "messages[%d].role '%.64s' is not system, developer, user or assistant",
                    out->n_msgs, role->valuestring);
            char *c = content_of(content);
            if (!c) BAD("messages", "messages[%d].content must be a string or text parts", out->n_msgs);
            out->msgs[out->n_msgs].role = strdup(!strcmp(role->valuestring, "developer") ? "system" : role->valuestring);
            out->msgs[out->n_msgs++].content = c;
            if (!out->msgs[out->n_msgs - 1].role) BAD("", "out of memory");
        }
    } else {
        x = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (cJSON_IsString(x)) {
            if (!(out->prompt = strdup(x->valuestring))) BAD("", "out of memory");
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 1 && cJSON_IsString(cJSON_GetArrayItem(x, 0))) {
            if (!(out->prompt = strdup(cJSON_GetArrayItem(x, 0)->valuestring))) BAD("", "out of memory");
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) >= 1 && is_int(cJSON_GetArrayItem(x, 0))) {
            int k = cJSON_GetArraySize(x);
            out->prompt_ids = malloc((size_t)k * sizeof *out->prompt_ids);
            if (!out->prompt_ids) BAD("", "out of memory");
            const cJSON *id;
            cJSON_ArrayForEach(id, x) {
                if (!is_int(id) || id->valuedouble < 0 || id->valuedouble > 2147483647.0)
                    BAD("prompt", "prompt[%d] is not a token id", out->n_prompt_ids);
                out->prompt_ids[out->n_prompt_ids++] = (int32_t)id->valuedouble;
            }
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) > 1) {
            BAD("prompt", "one prompt per request (n = 1): 'prompt' is an array of several");
        } else {
            BAD("prompt", "'prompt' must be a string or an array of token ids");
        }
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!absent(x) && !cJSON_IsString(x)) BAD("model", "'model' must be a string");
    x = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (!absent(x) && !cJSON_IsBool(x)) BAD("stream", "'stream' must be true or false");
    out->stream = cJSON_IsTrue(x);
    x = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    if (!absent(x)) {
        if (!cJSON_IsObject(x)) BAD("stream_options", "'stream_options' must be an object");
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(x, "include_usage");
        if (!absent(u) && !cJSON_IsBool(u)) BAD("stream_options", "'include_usage' must be true or false");
        out->include_usage = cJSON_IsTrue(u);
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "return_token_ids");
    if (!absent(x) && !cJSON_IsBool(x)) BAD("return_token_ids", "'return_token_ids' must be true or false");
    out->return_token_ids = cJSON_IsTrue(x);
    x = cJSON_GetObjectItemCaseSensitive(j, "ignore_eos");
    if (!absent(x) && !cJSON_IsBool(x)) BAD("ignore_eos", "'ignore_eos' must be true or false");
    out->ignore_eos = cJSON_IsTrue(x);
    const char *mt = "max_tokens";
    x = cJSON_GetObjectItemCaseSensitive(j, mt);
    if (absent(x) && chat) x = cJSON_GetObjectItemCaseSensitive(j, mt = "max_completion_tokens");
    if (!absent(x)) {
        if (!is_int(x)) BAD(mt, "'%s' must be an integer", mt);
        if (x->valuedouble < 1 || x->valuedouble > 16777216.0) BAD(mt, "'%s' must be 1..16777216", mt);
        out->max_tokens = (int32_t)x->valuedouble;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "temperature");
    if (!absent(x)) {
        if (!cJSON_IsNumber(x)) BAD("temperature", "'temperature' must be a number");
        if (!(x->valuedouble >= 0 && x->valuedouble <= 2)) BAD("temperature", "'temperature' must be in [0, 2]");
        out->sample.temperature = (float)x->valuedouble;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "top_p");
    if (!absent(x)) {
        if (!cJSON_IsNumber(x)) BAD("top_p", "'top_p' must be a number");
        if (!(x->valuedouble > 0 && x->valuedouble <= 1)) BAD("top_p", "'top_p' must be in (0, 1]");
        out->sample.top_p = (float)x->valuedouble;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "top_k");
    if (!absent(x)) {
        if (!is_int(x)) BAD("top_k", "'top_k' must be an integer");
        if (x->valuedouble < -1 || x->valuedouble > 2147483647.0) BAD("top_k", "'top_k' must be -1 (all), 0 (all) or more");
        out->sample.top_k = x->valuedouble < 0 ? 0 : (int32_t)x->valuedouble;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "seed");
    if (!absent(x)) {
        if (!is_int(x) || x->valuedouble < 0) BAD("seed", "'seed' must be an integer >= 0");
        out->sample.seed = (uint64_t)x->valuedouble;
        out->seed_given = true;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "n");
    if (!absent(x)) {
        if (!is_int(x)) BAD("n", "'n' must be an integer");
        if (x->valuedouble != 1) BAD("n", "only n = 1 is supported");
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "stop");
    if (cJSON_IsString(x)) {
        if (x->valuestring[0] && !(out->stop[out->n_stop++] = strdup(x->valuestring))) BAD("", "out of memory");
    } else if (cJSON_IsArray(x)) {
        if (cJSON_GetArraySize(x) > SQ_API_MAX_STOP) BAD("stop", "at most %d stop strings", SQ_API_MAX_STOP);
        const cJSON *s;
        cJSON_ArrayForEach(s, x) {
            if (!cJSON_IsString(s)) BAD("stop", "'stop' must be a string or an array of strings");
            if (s->valuestring[0] && !(out->stop[out->n_stop++] = strdup(s->valuestring))) BAD("", "out of memory");
        }
    } else if (!absent(x)) {
        BAD("stop", "'stop' must be a string or an array of strings");
    }
    cJSON_Delete(j);
    return true;
fail:
    cJSON_Delete(j);
    sq_api_req_free(out);
    return false;
}

/* ---- chat rendering -------------------------------------------------------------------------- */

bool sq_api_render_chat(const sq_api_req *r, int family, const char *default_system, char **out,
                        size_t *out_n, char *msg, size_t msg_n) {
    *out = NULL;
    const sq_api_msg *m = r->msgs;
    int n = r->n_msgs;
    if (family < 0) {
        snprintf(msg, msg_n, "this model has no chat template: use /v1/completions");
        return false;
    }
    if (strcmp(m[n - 1].role, "user")) {
        snprintf(msg, msg_n, "the last message must be the user's");
        return false;
    }
    /* one user turn (after at most one system message): the tokenizer module's own format */
    if (n == 1 || (n == 2 && !strcmp(m[0].role, "system"))) {
        const char *sys = n == 2 ? m[0].content : default_system;
        sq_error err;
        sq_error_init(&err, -1);
        if (sq_tokenizer_chat_format((sq_chat_family)family, sys, m[n - 1].content, out, out_n, &err) != SQ_OK) {
            snprintf(msg, msg_n, "%s", err.msg);
            return false;
        }
        return true;
    }
    /* several turns: ChatML and Llama-3 written turn by turn; Mistral's [INST] pairs */
    sq_buf b = {0};
    bool has_sys = !strcmp(m[0].role, "system");
    if (family == SQ_CHAT_CHATML) {
        const char *sys = has_sys ? m[0].content : default_system ? default_system : "You are a helpful assistant.";
        sq_buf_addf(&b, "<|im_start|>system\n%s<|im_end|>\n", sys);
        for (int i = has_sys; i < n; i++) sq_buf_addf(&b, "<|im_start|>%s\n%s<|im_end|>\n", m[i].role, m[i].content);
        sq_buf_addf(&b, "<|im_start|>assistant\n");
    } else if (family == SQ_CHAT_LLAMA3) {
        sq_buf_addf(&b, "<|begin_of_text|>");
        for (int i = 0; i < n; i++)
            sq_buf_addf(&b, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>", m[i].role, m[i].content);
        sq_buf_addf(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    } else {
        sq_buf_addf(&b, "<s>");
        for (int i = has_sys; i < n; i++) {
            if (!strcmp(m[i].role, "user")) {
                if (has_sys && i == 1) sq_buf_addf(&b, "[INST] %s\n\n%s [/INST]", m[0].content, m[i].content);
                else sq_buf_addf(&b, "[INST] %s [/INST]", m[i].content);
            } else {
                sq_buf_addf(&b, "%s</s>", m[i].content);
            }
        }
    }
    if (b.oom) {
        free(b.p);
        snprintf(msg, msg_n, "out of memory");
        return false;
    }
    *out = b.p;
    *out_n = b.n;
    return true;
}
