/* Tests of `shardq serve` end to end over loopback: the test starts the shardq executable
 * (alone, or under mpirun with 2 ranks) on a tiny make-model checkpoint with a tokenizer, talks
 * to it with curl, and checks:
 *  - /health, /v1/models, /metrics; a completion (JSON and server-sent events in OpenAI's chunk
 *    format, ending "data: [DONE]") whose tokens equal `shardq run` on the same prompt, greedy
 *    and sampled with a seed, on 1 and 2 ranks; chat equal to `shardq run --chat`;
 *  - 16 concurrent clients with mixed prompt and output lengths, each equal to its answer alone;
 *  - bad input: malformed JSON, wrong types, prompt over the context, body over the limit,
 *    missing / wrong API key, unknown route and method, a full queue (429 + Retry-After);
 *    unknown fields ignored; stop strings;
 *  - a client that leaves mid-stream frees its slot; SIGTERM drains a running request and the
 *    server exits 0; a rank that hangs ends the request with an error and the job, no hang.
 * `test_serve real` (label real): SmolLM2's chat on 2 ranks equals `shardq run --chat`.
 * Every server is started in its own process group with --port 0 and killed on every path. */
#include <check.h>
#include <stdbool.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static char *g_root;
static char g_model[1024], g_pids[1100];
static int g_serial;

typedef struct server {
    pid_t pid;                 /* the process group: mpirun, or shardq alone */
    pid_t rank0;               /* shardq's rank 0 */
    int port;
    char log[1200];
} server;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static char *sh(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *sh(int *rc, const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *out = sq_test_run(cmd, rc);
    ck_assert_ptr_nonnull(out);
    return out;
}

/* `curl` against the server: the body (may be NULL), extra curl flags; returns the response
 * body (caller frees) and *code the HTTP status (0 when no response). */
static char *http(const server *s, const char *method, const char *path, const char *body, const char *extra,
                  int *code) {
    char file[1300];
    snprintf(file, sizeof file, "%s/body-%d-%d.json", g_root, (int)getpid(), ++g_serial);
    if (body) ck_assert_int_eq(sq_test_write_file(file, body, strlen(body)), 0);
    int rc = 0;
    char *out = sh(&rc, "curl -s --max-time 60 -X %s -H 'Content-Type: application/json' %s%s%s %s -w '\\n%%{http_code}' "
                   "'http://127.0.0.1:%d%s'",
                   method, body ? "--data-binary '@" : "", body ? file : "", body ? "'" : "", extra ? extra : "",
                   s->port, path);
    char *nl = strrchr(out, '\n');
    *code = nl ? atoi(nl + 1) : 0;
    if (nl) *nl = '\0';
    return out;
}

static bool log_has(const server *s, const char *what, char *copy, size_t n) {
    char *txt = sq_test_read_file(s->log, NULL);
    bool ok = txt && strstr(txt, what);
    if (ok && copy) snprintf(copy, n, "%s", strstr(txt, what));
    free(txt);
    return ok;
}

/* Starts `[mpirun -np np] shardq serve MODEL --port 0 ARGS` (np 0: alone) with `env` before it,
 * and waits until /health says 200. */
static void server_start(server *s, int np, const char *env, const char *args) {
    memset(s, 0, sizeof *s);
    snprintf(s->log, sizeof s->log, "%s/serve-%d-%d.log", g_root, (int)getpid(), ++g_serial);
    char cmd[8192];
    if (np == 0)
        snprintf(cmd, sizeof cmd, "exec env %s " SQ_SINGLETON_ENV "'%s' serve '%s' --port 0 %s >'%s' 2>&1",
                 env ? env : "", SQ_SHARDQ_EXE, g_model, args ? args : "", s->log);
    else
        snprintf(cmd, sizeof cmd, "exec env %s '%s' " SQ_MPIRUN_TEST_FLAGS " -np %d '%s' serve '%s' --port 0 %s >'%s' 2>&1",
                 env ? env : "", SQ_MPIEXEC, np, SQ_SHARDQ_EXE, g_model, args ? args : "", s->log);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    s->pid = pid;
    char line[256] = "";
    double t0 = now_s();
    while (now_s() - t0 < 60 && !log_has(s, "listening on http://127.0.0.1:", line, sizeof line)) nap(0.05);
    ck_assert_msg(line[0], "the server did not start: %s", (char *)sq_test_read_file(s->log, NULL));
    s->port = atoi(line + strlen("listening on http://127.0.0.1:"));
    ck_assert_int_gt(s->port, 0);
    const char *r0 = strstr(line, "(pids ");
    ck_assert_ptr_nonnull(r0);
    s->rank0 = (pid_t)atol(r0 + strlen("(pids "));
    ck_assert_int_gt(s->rank0, 1);
    /* every pid to the list main() kills at the end, whatever happened to the test */
    FILE *f = fopen(g_pids, "a");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%ld\n", (long)s->pid);
    for (const char *q = r0 + strlen("(pids "); *q >= '0' && *q <= '9'; q += *q == ',') {
        fprintf(f, "%ld\n", atol(q));
        while (*q >= '0' && *q <= '9') q++;
    }
    fclose(f);
    int code = 0;
    while (now_s() - t0 < 60) {
        free(http(s, "GET", "/health", NULL, NULL, &code));
        if (code == 200) break;
        nap(0.1);
    }
    ck_assert_msg(code == 200, "not healthy: %s", (char *)sq_test_read_file(s->log, NULL));
}

/* Waits up to timeout_s for the server to exit; kills its process group if it does not.
 * Returns its exit status (128 + signal when killed). */
static int server_wait(server *s, double timeout_s) {
    double t0 = now_s();
    int st = 0;
    for (;;) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) break;
        if (now_s() - t0 > timeout_s) {
            kill(-s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
            return -1;
        }
        nap(0.05);
    }
    kill(-s->pid, SIGKILL);   /* anything of its group left behind */
    s->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Stops a server: SIGTERM to rank 0 (every rank stops), then SIGKILL to what is left. */
static void server_kill(server *s) {
    if (s->pid <= 0) return;
    if (s->rank0 > 0) kill(s->rank0, SIGTERM);
    server_wait(s, 10);
}

/* Every process a test started (the list in g_pids), killed whatever state the test left. */
static void kill_leftovers(void) {
    char *txt = sq_test_read_file(g_pids, NULL);
    for (char *q = txt; q && *q;) {
        long pid = strtol(q, &q, 10);
        if (pid > 1) kill((pid_t)pid, SIGKILL);
        while (*q == '\n') q++;
    }
    free(txt);
}

static cJSON *parse(const char *txt) {
    cJSON *j = cJSON_Parse(txt);
    ck_assert_msg(j != NULL, "not JSON: %s", txt);
    return j;
}

static char *item_str(const cJSON *j, const char *path) {   /* "a.b.0.c" */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *x = j;
    char *save = NULL;
    for (char *t = strtok_r(buf, ".", &save); t && x; t = strtok_r(NULL, ".", &save))
        x = (*t >= '0' && *t <= '9') ? cJSON_GetArrayItem(x, atoi(t)) : cJSON_GetObjectItemCaseSensitive(x, t);
    ck_assert_msg(x != NULL, "no %s", path);
    return cJSON_IsString(x) ? strdup(x->valuestring) : cJSON_PrintUnformatted(x);
}

/* `shardq run` on one prompt: its token ids (JSON array text) and text. */
static void run_ref(const char *prompt, int max_new, const char *sample, bool chat, char **ids, char **text) {
    int rc = 0;
    char *out = sh(&rc, SQ_SINGLETON_ENV "timeout -s KILL 60 '%s' run '%s' --prompt '%s' --max-new-tokens %d %s %s --json",
                   SQ_SHARDQ_EXE, g_model, prompt, max_new, sample ? sample : "", chat ? "--chat" : "");
    ck_assert_msg(rc == 0, "run failed: %s", out);
    cJSON *j = parse(strstr(out, "{\"model\""));
    *ids = item_str(j, "tokens.0");
    *text = item_str(j, "text.0");
    cJSON_Delete(j);
    free(out);
}

static char *completion_body(const char *prompt, int max_tokens, const char *more) {
    char *b = malloc(4096);
    snprintf(b, 4096, "{\"model\": \"x\", \"prompt\": \"%s\", \"max_tokens\": %d, \"return_token_ids\": true%s%s}",
             prompt, max_tokens, more ? ", " : "", more ? more : "");
    return b;
}

/* Non-stream completion: checks the response's shape; returns token ids and text. */
static void complete(const server *s, const char *body, char **ids, char **text, char **finish) {
    int code = 0;
    char *out = http(s, "POST", "/v1/completions", body, NULL, &code);
    ck_assert_msg(code == 200, "HTTP %d: %s", code, out);
    cJSON *j = parse(out);
    char *obj = item_str(j, "object");
    ck_assert_str_eq(obj, "text_completion");
    free(obj);
    *ids = item_str(j, "choices.0.token_ids");
    *text = item_str(j, "choices.0.text");
    if (finish) *finish = item_str(j, "choices.0.finish_reason");
    cJSON *ids_j = cJSON_Parse(*ids);
    char *ct = item_str(j, "usage.completion_tokens");
    ck_assert_int_eq(atoi(ct), cJSON_GetArraySize(ids_j));
    free(ct);
    cJSON_Delete(ids_j);
    cJSON_Delete(j);
    free(out);
}

static const char *const k_prompts[4] = {"Hello there", "The quick brown fox jumps over", "a", "Once upon a time in a land far away there lived"};

/* ---- the endpoints and equality with run ------------------------------------------------------- */

static void equal_to_run(int np) {
    server s;
    /* on 2 ranks the prompts are read 3 tokens a step (chunked prefill) */
    server_start(&s, np, NULL, np == 2 ? "--max-seqs 4 --max-seq-len 128 --prefill-chunk 3" : "--max-seqs 4 --max-seq-len 128");
    int code = 0;
    char *out = http(&s, "GET", "/v1/models", NULL, NULL, &code);
    ck_assert_int_eq(code, 200);
    ck_assert_msg(strstr(out, "\"object\": \"list\"") && strstr(out, "\"id\": \"text\""), "%s", out);
    free(out);
    const char *samples[2] = {"\"temperature\": 0", "\"temperature\": 0.9, \"top_k\": 40, \"seed\": 7"};
    const char *run_samples[2] = {"", "--temperature 0.9 --top-k 40 --seed 7"};
    for (int k = 0; k < 2; k++) {
        char *ref_ids, *ref_text, *ids, *text;
        run_ref(k_prompts[1], 12, run_samples[k], false, &ref_ids, &ref_text);
        char *body = completion_body(k_prompts[1], 12, samples[k]);
        complete(&s, body, &ids, &text, NULL);
        ck_assert_str_eq(ids, ref_ids);
        ck_assert_str_eq(text, ref_text);
        free(body);
        free(ids);
        free(text);
        free(ref_ids);
        free(ref_text);
    }
    /* streamed: "data: {chunk}" events, text pieces adding up to run's, then [DONE] */
    char *ref_ids, *ref_text;
    run_ref(k_prompts[0], 10, "", false, &ref_ids, &ref_text);
    char *body = completion_body(k_prompts[0], 10, "\"temperature\": 0, \"stream\": true, \"stream_options\": {\"include_usage\": true}");
    out = http(&s, "POST", "/v1/completions", body, "-N", &code);
    ck_assert_int_eq(code, 200);
    char text[4096] = "";
    int n_events = 0, n_finish = 0;
    bool done = false, usage = false;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        ck_assert_msg(!done, "data after [DONE]");
        if (line[0] == ':') continue;   /* an SSE comment (the server's keep-alive while waiting) */
        ck_assert_msg(!strncmp(line, "data: ", 6), "not an SSE data line: '%s'", line);
        if (!strcmp(line + 6, "[DONE]")) {
            done = true;
            continue;
        }
        cJSON *j = parse(line + 6);
        n_events++;
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "choices");
        if (cJSON_GetArraySize(ch) == 0) {   /* the usage chunk */
            char *ct = item_str(j, "usage.completion_tokens");
            cJSON *ids_j = cJSON_Parse(ref_ids);
            ck_assert_int_eq(atoi(ct), cJSON_GetArraySize(ids_j));
            cJSON_Delete(ids_j);
            free(ct);
            usage = true;
        } else {
            char *obj = item_str(j, "object"), *t = item_str(j, "choices.0.text");
            ck_assert_str_eq(obj, "text_completion");
            strncat(text, t, sizeof text - strlen(text) - 1);
            const cJSON *fr = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(ch, 0), "finish_reason");
            if (cJSON_IsString(fr)) {
                n_finish++;
                char *ids = item_str(j, "choices.0.token_ids");
                ck_assert_str_eq(ids, ref_ids);
                free(ids);
            }
            free(obj);
            free(t);
        }
        cJSON_Delete(j);
    }
    ck_assert(done && usage);
    ck_assert_int_eq(n_finish, 1);
    ck_assert_int_ge(n_events, 3);
    ck_assert_str_eq(text, ref_text);
    free(out);
    free(body);
    free(ref_ids);
    free(ref_text);
    /* chat, as `run --chat` */
    char *ids_c, *text_c;
    run_ref("Hi, who are you?", 10, "", true, &ref_ids, &ref_text);
    out = http(&s, "POST", "/v1/chat/completions",
               "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi, who are you?\"}], \"max_tokens\": 10, "
               "\"temperature\": 0, \"return_token_ids\": true}", NULL, &code);
    ck_assert_msg(code == 200, "%s", out);
    cJSON *j = parse(out);
    ids_c = item_str(j, "choices.0.token_ids");
    text_c = item_str(j, "choices.0.message.content");
    char *role = item_str(j, "choices.0.message.role"), *obj = item_str(j, "object");
    ck_assert_str_eq(role, "assistant");
    ck_assert_str_eq(obj, "chat.completion");
    ck_assert_str_eq(ids_c, ref_ids);
    ck_assert_str_eq(text_c, ref_text);
    free(role);
    free(obj);
    free(ids_c);
    free(text_c);
    free(ref_ids);
    free(ref_text);
    cJSON_Delete(j);
    free(out);
    /* /metrics: Prometheus text with the counts of what ran */
    out = http(&s, "GET", "/metrics", NULL, NULL, &code);
    ck_assert_int_eq(code, 200);
    ck_assert_msg(strstr(out, "shardq_requests_total 4\n") && strstr(out, "shardq_queue_depth 0\n") &&
                      strstr(out, "shardq_running_sequences 0\n") && strstr(out, "shardq_stage_busy_fraction{rank=\"0\"}") &&
                      strstr(out, "shardq_pipeline_bubble_fraction"),
                  "%s", out);
    if (np == 2) ck_assert_msg(strstr(out, "shardq_stage_busy_seconds_total{rank=\"1\"}"), "%s", out);
    free(out);
    kill(s.rank0, SIGTERM);
    ck_assert_int_eq(server_wait(&s, 30), 0);
}

START_TEST(endpoints_equal_run_alone) { equal_to_run(0); }
END_TEST

START_TEST(endpoints_equal_run_2_ranks) { equal_to_run(2); }
END_TEST

/* ---- 16 concurrent clients ------------------------------------------------------------------- */

START_TEST(sixteen_concurrent_equal_alone) {
    server s;
    server_start(&s, 2, NULL, "--max-seqs 8 --max-seq-len 128 --prefill-chunk 4");
    char *solo_ids[16], *solo_text[16];
    char bodies[16][1024];
    for (int i = 0; i < 16; i++) {
        char more[256];
        snprintf(more, sizeof more, "\"temperature\": %s, \"seed\": %d", i % 2 ? "0.8" : "0", 100 + i);
        char *b = completion_body(k_prompts[i % 4], 4 + (i * 5) % 23, more);
        snprintf(bodies[i], sizeof bodies[i], "%s", b);
        free(b);
        complete(&s, bodies[i], &solo_ids[i], &solo_text[i], NULL);
    }
    /* all at once: 16 curl processes, each writing its answer to a file */
    char cmd[16384] = "";
    size_t at = 0;
    for (int i = 0; i < 16; i++) {
        char file[1300];
        snprintf(file, sizeof file, "%s/c%d.json", g_root, i);
        ck_assert_int_eq(sq_test_write_file(file, bodies[i], strlen(bodies[i])), 0);
        at += (size_t)snprintf(cmd + at, sizeof cmd - at,
                               "curl -s --max-time 60 -H 'Content-Type: application/json' --data-binary '@%s' "
                               "-o '%s.out' 'http://127.0.0.1:%d/v1/completions' & ",
                               file, file, s.port);
    }
    snprintf(cmd + at, sizeof cmd - at, "wait");
    int rc = 0;
    free(sh(&rc, "%s", cmd));
    for (int i = 0; i < 16; i++) {
        char file[1300];
        snprintf(file, sizeof file, "%s/c%d.json.out", g_root, i);
        char *txt = sq_test_read_file(file, NULL);
        ck_assert_msg(txt != NULL, "client %d got nothing", i);
        cJSON *j = parse(txt);
        char *ids = item_str(j, "choices.0.token_ids");
        ck_assert_msg(!strcmp(ids, solo_ids[i]), "client %d: %s alone, %s with 15 others", i, solo_ids[i], ids);
        free(ids);
        free(solo_ids[i]);
        free(solo_text[i]);
        cJSON_Delete(j);
        free(txt);
    }
    int code = 0;
    char *out = http(&s, "GET", "/metrics", NULL, NULL, &code);
    ck_assert_msg(strstr(out, "shardq_requests_total 32\n"), "%s", out);
    free(out);
    server_kill(&s);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------------------- */

static void expect(const server *s, const char *method, const char *path, const char *body, const char *extra,
                   int want, const char *has) {
    int code = 0;
    char *out = http(s, method, path, body, extra, &code);
    ck_assert_msg(code == want, "%s %s %s: HTTP %d (not %d): %s", method, path, body ? body : "", code, want, out);
    if (has) ck_assert_msg(strstr(out, has), "%s %s: no '%s' in %s", method, path, has, out);
    free(out);
}

START_TEST(bad_input_status_codes) {
    server s;
    server_start(&s, 0, NULL, "--max-seqs 2 --max-seq-len 64 --max-body 2048 --api-key sekrit");
    const char *auth = "-H 'Authorization: Bearer sekrit'";
    expect(&s, "GET", "/health", NULL, NULL, 200, "\"ok\"");   /* no key needed */
    expect(&s, "GET", "/v1/models", NULL, NULL, 401, "invalid_api_key");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\"}", "-H 'Authorization: Bearer sekrix'", 401, "\"error\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\"}", "-H 'Authorization: Bearer sekrit2'", 401, NULL);
    expect(&s, "GET", "/v1/models", NULL, auth, 200, "\"data\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", ", auth, 400, "\"invalid_request_error\"");
    expect(&s, "POST", "/v1/completions", "[1, 2]", auth, 400, "JSON object");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": 5}", auth, 400, "\"param\": \"prompt\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": \"8\"}", auth, 400, "\"param\": \"max_tokens\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"temperature\": true}", auth, 400, "\"param\": \"temperature\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"n\": 2}", auth, 400, "\"param\": \"n\"");
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"stop\": [1]}", auth, 400, "\"param\": \"stop\"");
    expect(&s, "POST", "/v1/chat/completions", "{\"messages\": \"hi\"}", auth, 400, "\"param\": \"messages\"");
    expect(&s, "POST", "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", auth, 400, "content");
    /* several turns render in the template; the last turn must be the user's */
    expect(&s, "POST", "/v1/chat/completions",
           "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, "
           "{\"role\": \"assistant\", \"content\": \"Hello!\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", "
           "\"text\": \"And?\"}]}], \"max_tokens\": 3}", auth, 200, "\"chat.completion\"");
    expect(&s, "POST", "/v1/chat/completions",
           "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}", auth,
           400, "last message");
    expect(&s, "POST", "/v1/chat/completions", "{\"messages\": [{\"role\": \"robot\", \"content\": \"Hi\"}]}", auth, 400,
           "role");
    /* unknown fields are ignored */
    expect(&s, "POST", "/v1/completions",
           "{\"prompt\": \"hi\", \"max_tokens\": 2, \"frobnicate\": {\"x\": [1]}, \"user\": \"u\"}", auth, 200,
           "\"text_completion\"");
    /* over the context: 64 positions */
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 64}", auth, 400, "context_length_exceeded");
    char big[4000];
    snprintf(big, sizeof big, "{\"prompt\": \"");
    for (int i = 0; i < 500; i++) strcat(big, "word ");
    strcat(big, "\", \"max_tokens\": 2}");
    expect(&s, "POST", "/v1/completions", big, auth, 413, "larger than 2048");
    char longp[1800];
    snprintf(longp, sizeof longp, "{\"prompt\": \"");
    for (int i = 0; i < 150; i++) strcat(longp, "go ");
    strcat(longp, "\", \"max_tokens\": 2}");
    expect(&s, "POST", "/v1/completions", longp, auth, 400, "maximum context length is 64");
    expect(&s, "GET", "/v2/nothing", NULL, auth, 404, NULL);
    expect(&s, "GET", "/v1/completions", NULL, auth, 405, NULL);
    /* a stop string cuts the text before it and says "stop" (two printable bytes of the
     * greedy text from its third byte on) */
    int code = 0;
    char *out = http(&s, "POST", "/v1/completions", "{\"prompt\": \"Hello there\", \"max_tokens\": 12, \"temperature\": 0}",
                     auth, &code);
    ck_assert_int_eq(code, 200);
    cJSON *j = parse(out);
    char *text = item_str(j, "choices.0.text");
    cJSON_Delete(j);
    free(out);
    char stop[3] = "";
    for (size_t i = 2; i + 1 < strlen(text) && !stop[0]; i++) {
        unsigned char a = (unsigned char)text[i], b = (unsigned char)text[i + 1];
        if (a > 0x20 && a < 0x7f && b > 0x20 && b < 0x7f && !strchr("\"\\'", a) && !strchr("\"\\'", b)) {
            stop[0] = (char)a;
            stop[1] = (char)b;
        }
    }
    ck_assert_msg(stop[0], "no two printable bytes in '%s'", text);
    size_t cut = (size_t)(strstr(text, stop) - text);
    char body[512];
    snprintf(body, sizeof body, "{\"prompt\": \"Hello there\", \"max_tokens\": 12, \"temperature\": 0, \"stop\": [\"zzzz\", \"%s\"]}", stop);
    out = http(&s, "POST", "/v1/completions", body, auth, &code);
    ck_assert_int_eq(code, 200);
    j = parse(out);
    char *t2 = item_str(j, "choices.0.text"), *fin = item_str(j, "choices.0.finish_reason");
    ck_assert_msg(strlen(t2) == cut && !strncmp(t2, text, cut), "stop '%s': '%s' from '%s'", stop, t2, text);
    ck_assert_str_eq(fin, "stop");
    free(t2);
    free(fin);
    free(text);
    cJSON_Delete(j);
    free(out);
    server_kill(&s);
}
END_TEST

/* A running request, one waiting, then 429 with Retry-After. */
START_TEST(full_queue_429) {
    server s;
    server_start(&s, 0, "SHARDQ_TEST_STEP_DELAY_MS=20", "--max-seqs 1 --max-queue 1 --max-seq-len 256");
    char cmd[4096];
    int rc = 0;
    /* 200 steps of 20 ms (the test hook): the first runs for about 4 s */
    const char *body = "{\"prompt\": \"Hello\", \"max_tokens\": 200, \"temperature\": 0}";
    char file[1300];
    snprintf(file, sizeof file, "%s/q.json", g_root);
    sq_test_write_file(file, body, strlen(body));
    snprintf(cmd, sizeof cmd, "curl -s --max-time 60 --data-binary '@%s' 'http://127.0.0.1:%d/v1/completions' >/dev/null 2>&1 &",
             file, s.port);
    free(sh(&rc, "%s", cmd));
    int code = 0;
    double t0 = now_s();
    char *out = NULL;
    for (; now_s() - t0 < 10; nap(0.02)) {
        free(out);
        out = http(&s, "GET", "/metrics", NULL, NULL, &code);
        if (strstr(out, "shardq_running_sequences 1\n")) break;
    }
    ck_assert_msg(strstr(out, "shardq_running_sequences 1\n"), "%s", out);
    free(out);
    free(sh(&rc, "%s", cmd));   /* the second waits */
    for (out = NULL, t0 = now_s(); now_s() - t0 < 10; nap(0.02)) {
        free(out);
        out = http(&s, "GET", "/metrics", NULL, NULL, &code);
        if (strstr(out, "shardq_queue_depth 1\n")) break;
    }
    ck_assert_msg(strstr(out, "shardq_queue_depth 1\n"), "%s", out);
    free(out);
    out = http(&s, "POST", "/v1/completions", body, "-D -", &code);
    ck_assert_msg(code == 429, "HTTP %d: %s", code, out);
    ck_assert_msg(strstr(out, "Retry-After: 1") && strstr(out, "rate_limit_error"), "%s", out);
    free(out);
    server_kill(&s);
}
END_TEST

/* A streaming client that leaves: its sequence is cancelled and its slot freed. */
START_TEST(disconnect_frees_slot) {
    server s;
    server_start(&s, 2, "SHARDQ_TEST_STEP_DELAY_MS=10", "--max-seqs 2 --max-seq-len 256");
    int code = 0;
    char *out = http(&s, "POST", "/v1/completions",
                     "{\"prompt\": \"Hello\", \"max_tokens\": 240, \"temperature\": 0.7, \"seed\": 1, \"stream\": true}",
                     "-N --max-time 1", &code);
    ck_assert_msg(strstr(out, "data: {"), "no chunk before leaving: %s", out);
    free(out);
    double t0 = now_s();
    for (out = NULL; now_s() - t0 < 10; nap(0.05)) {
        free(out);
        out = http(&s, "GET", "/metrics", NULL, NULL, &code);
        if (strstr(out, "shardq_running_sequences 0\n")) break;
    }
    ck_assert_msg(strstr(out, "shardq_running_sequences 0\n"), "slot not freed: %s", out);
    char *g = strstr(out, "\nshardq_generated_tokens_total ");
    ck_assert_ptr_nonnull(g);
    long n = atol(g + strlen("\nshardq_generated_tokens_total "));
    ck_assert_msg(n > 0 && n < 240, "generated %ld", n);
    free(out);
    /* the server goes on */
    expect(&s, "POST", "/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 3}", NULL, 200, "text_completion");
    server_kill(&s);
}
END_TEST

/* SIGTERM while a request runs: it completes, then every rank stops and the job exits 0. */
START_TEST(sigterm_drains) {
    server s;
    server_start(&s, 2, "SHARDQ_TEST_STEP_DELAY_MS=5", "--max-seqs 2 --max-seq-len 256");
    char file[1300], outf[1300], cmd[4096];
    snprintf(file, sizeof file, "%s/d.json", g_root);
    snprintf(outf, sizeof outf, "%s/d.out", g_root);
    const char *body = "{\"prompt\": \"Hello\", \"max_tokens\": 200, \"temperature\": 0.7, \"seed\": 3, \"stream\": true}";
    sq_test_write_file(file, body, strlen(body));
    snprintf(cmd, sizeof cmd, "curl -s -N --max-time 60 --data-binary '@%s' -o '%s' 'http://127.0.0.1:%d/v1/completions' >/dev/null 2>&1 &",
             file, outf, s.port);
    int rc = 0;
    free(sh(&rc, "%s", cmd));
    int code = 0;
    char *out = NULL;
    double t0 = now_s();
    for (; now_s() - t0 < 10; nap(0.02)) {
        free(out);
        out = http(&s, "GET", "/metrics", NULL, NULL, &code);
        if (strstr(out, "shardq_running_sequences 1\n")) break;
    }
    ck_assert_msg(strstr(out, "shardq_running_sequences 1\n"), "%s", out);
    free(out);
    kill(s.rank0, SIGTERM);
    ck_assert_int_eq(server_wait(&s, 40), 0);
    char *txt = sq_test_read_file(outf, NULL);
    ck_assert_msg(txt && strstr(txt, "\"finish_reason\": \"") && strstr(txt, "data: [DONE]"), "%s", txt ? txt : "");
    ck_assert_msg(!strstr(txt, "\"error\""), "%s", txt);
    free(txt);
    ck_assert(log_has(&s, "shardq serve: stopped", NULL, 0));
}
END_TEST

/* SIGTERM with a drain timeout shorter than the running request: the request ends early with an
 * error event (then [DONE]), every rank stops, the job exits 0, well before the request would
 * have ended. */
START_TEST(drain_timeout_cuts) {
    server s;
    server_start(&s, 2, "SHARDQ_TEST_STEP_DELAY_MS=20", "--max-seqs 2 --max-seq-len 256 --drain-timeout 0.5");
    char file[1300], outf[1300], cmd[4096];
    snprintf(file, sizeof file, "%s/dt.json", g_root);
    snprintf(outf, sizeof outf, "%s/dt.out", g_root);
    const char *body = "{\"prompt\": \"Hello\", \"max_tokens\": 200, \"ignore_eos\": true, \"stream\": true}";
    sq_test_write_file(file, body, strlen(body));
    snprintf(cmd, sizeof cmd, "curl -s -N --max-time 60 --data-binary '@%s' -o '%s' 'http://127.0.0.1:%d/v1/completions' >/dev/null 2>&1 &",
             file, outf, s.port);
    int rc = 0, code = 0;
    free(sh(&rc, "%s", cmd));
    char *out = NULL;
    double t0 = now_s();
    for (; now_s() - t0 < 10; nap(0.02)) {
        free(out);
        out = http(&s, "GET", "/metrics", NULL, NULL, &code);
        if (strstr(out, "shardq_running_sequences 1\n")) break;
    }
    ck_assert_msg(strstr(out, "shardq_running_sequences 1\n"), "%s", out);
    free(out);
    t0 = now_s();
    kill(s.rank0, SIGTERM);
    ck_assert_int_eq(server_wait(&s, 20), 0);
    ck_assert_msg(now_s() - t0 < 3.5, "stopping took %.1f s", now_s() - t0);
    char *txt = sq_test_read_file(outf, NULL);
    ck_assert_msg(txt && strstr(txt, "drain timeout") && strstr(txt, "data: [DONE]"), "%s", txt ? txt : "");
    free(txt);
}
END_TEST

/* A rank that hangs (_i 0) or is killed (_i 1) mid-request: the request ends (hung: 503 with
 * the error naming rank 1; killed: an error or the connection closed, as mpirun ends the job),
 * never a hang, and the job ends with a failure. */
START_TEST(dead_rank_errors) {
    server s;
    server_start(&s, 2, _i == 0 ? "SHARDQ_TEST_DIE_RANK=1 SHARDQ_TEST_DIE_STEP=4 SHARDQ_TEST_DIE_MODE=hang"
                                : "SHARDQ_TEST_DIE_RANK=1 SHARDQ_TEST_DIE_STEP=4 SHARDQ_TEST_DIE_MODE=kill",
                 "--max-seqs 2 --max-seq-len 128 --timeout 2");
    int code = 0;
    double t0 = now_s();
    char *out = http(&s, "POST", "/v1/completions", "{\"prompt\": \"Hello\", \"max_tokens\": 50}", NULL, &code);
    if (_i == 0) ck_assert_msg(code == 503 && strstr(out, "\"error\"") && strstr(out, "rank 1"), "HTTP %d: %s", code, out);
    else ck_assert_msg(code != 200, "HTTP %d: %s", code, out);
    ck_assert_msg(now_s() - t0 < 20, "took %.1f s", now_s() - t0);
    free(out);
    int st = server_wait(&s, 20);
    ck_assert_msg(st != 0 && st != -1, "exit %d", st);
}
END_TEST

/* ---- the real model (label real) ---------------------------------------------------------- */

/* SmolLM2 on 2 ranks: chat through its ChatML template (and its default system message) equals
 * `shardq run --chat`, greedy and sampled with a seed; streamed deltas add up to the same. */
START_TEST(real_chat_equals_run) {
    server s;
    server_start(&s, 2, NULL, "--max-seqs 4 --max-seq-len 256");
    const char *q = "What is the capital of France?";
    const char *samples[2] = {"\"temperature\": 0", "\"temperature\": 0.7, \"top_p\": 0.9, \"seed\": 11"};
    const char *run_samples[2] = {"", "--temperature 0.7 --top-p 0.9 --seed 11"};
    for (int k = 0; k < 2; k++) {
        char *ref_ids, *ref_text, body[1024];
        run_ref(q, 24, run_samples[k], true, &ref_ids, &ref_text);
        snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}], \"max_tokens\": 24, "
                 "%s, \"return_token_ids\": true}", q, samples[k]);
        int code = 0;
        char *out = http(&s, "POST", "/v1/chat/completions", body, NULL, &code);
        ck_assert_msg(code == 200, "%s", out);
        cJSON *j = parse(out);
        char *ids = item_str(j, "choices.0.token_ids"), *text = item_str(j, "choices.0.message.content");
        ck_assert_str_eq(ids, ref_ids);
        ck_assert_str_eq(text, ref_text);
        if (k == 0) ck_assert_msg(strstr(text, "Paris"), "%s", text);
        cJSON_Delete(j);
        free(out);
        /* streamed */
        snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}], \"max_tokens\": 24, "
                 "%s, \"stream\": true}", q, samples[k]);
        out = http(&s, "POST", "/v1/chat/completions", body, "-N", &code);
        ck_assert_int_eq(code, 200);
        char acc[4096] = "";
        int roles = 0;
        for (char *save = NULL, *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            if (!strcmp(line, "data: [DONE]") || line[0] == ':') continue;
            ck_assert_msg(!strncmp(line, "data: ", 6), "not an SSE data line: '%s'", line);
            cJSON *c = parse(line + 6);
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "choices"), 0), "delta");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(d, "content");
            roles += cJSON_GetObjectItemCaseSensitive(d, "role") != NULL;
            if (cJSON_IsString(content)) strncat(acc, content->valuestring, sizeof acc - strlen(acc) - 1);
            cJSON_Delete(c);
        }
        ck_assert_int_eq(roles, 1);
        ck_assert_str_eq(acc, ref_text);
        free(out);
        free(ids);
        free(text);
        free(ref_ids);
        free(ref_text);
    }
    server_kill(&s);
}
END_TEST

static int main_real(void) {
    const char *env = getenv("SHARDQ_REAL_MODEL");
    snprintf(g_model, sizeof g_model, "%s", env && *env ? env : SQ_BINARY_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    FILE *f = fopen(g_model, "rb");
    if (!f) {
        printf("SKIP: %s not found: run launch/fetch_model.sh (launch/test.sh does) or set SHARDQ_REAL_MODEL\n", g_model);
        return 77;
    }
    fclose(f);
    g_root = sq_test_tmpdir("serve-real");
    if (!g_root) return 1;
    snprintf(g_pids, sizeof g_pids, "%s/pids", g_root);
    Suite *su = suite_create("serve_real");
    TCase *tc = tcase_create("real");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, real_chat_equals_run);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    kill_leftovers();
    sq_test_rmtree(g_root);
    free(g_root);
    return failed ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "real")) return main_real();
    g_root = sq_test_tmpdir("serve");
    if (!g_root) return 1;
    snprintf(g_model, sizeof g_model, "%s/text", g_root);
    snprintf(g_pids, sizeof g_pids, "%s/pids", g_root);
    int rc = 0;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, SQ_SINGLETON_ENV "'%s' make-model --out '%s' --tokenizer '%s/tests/reference/tokenizers/llama3.json'",
             SQ_SHARDQ_EXE, g_model, SQ_SOURCE_DIR);
    char *out = sq_test_run(cmd, &rc);
    if (rc != 0) {
        fprintf(stderr, "fixture failed: %s\n", out ? out : "");
        return 1;
    }
    free(out);
    Suite *su = suite_create("serve");
    TCase *tc = tcase_create("serve");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, endpoints_equal_run_alone);
    tcase_add_test(tc, endpoints_equal_run_2_ranks);
    tcase_add_test(tc, sixteen_concurrent_equal_alone);
    tcase_add_test(tc, bad_input_status_codes);
    tcase_add_test(tc, full_queue_429);
    tcase_add_test(tc, disconnect_frees_slot);
    tcase_add_test(tc, sigterm_drains);
    tcase_add_test(tc, drain_timeout_cuts);
    tcase_add_loop_test(tc, dead_rank_errors, 0, 2);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    kill_leftovers();
    sq_test_rmtree(g_root);
    free(g_root);
    return failed ? 1 : 0;
}
