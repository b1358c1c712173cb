/* Checks a Chrome trace-event JSON text against the format Perfetto / chrome://tracing read
 * (header-only, static; used by test_trace and the CLI tests that pass --trace).
 *   trace_check(text, len, &stats, why, why_bytes) -> true when:
 *     - the text is one JSON object with a "traceEvents" array (JSON Object Format);
 *     - every event is an object with a string "name", a one-letter string "ph" and integer
 *       "pid" / "tid" >= 0;
 *     - "X" events have numbers "ts" >= 0 and "dur" >= 0; "M" events are process_name /
 *       thread_name / process_sort_index with an "args" object;
 *     - "X" events on one (pid, tid) nest: sorted by start, each one either starts after the
 *       enclosing span ends or ends inside it (1 ns of float slack);
 *   stats: X events, distinct pids, names seen (a '|'-joined list, for assertions). */
#ifndef SHARDQ_TRACE_CHECK_H
#define SHARDQ_TRACE_CHECK_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct trace_stats {
    int n_x;             /* complete events */
    int n_pids;          /* distinct pids of X events */
    int max_pid;
    double dropped;      /* otherData.dropped_events, -1 when absent */
    char names[1024];    /* "|name|name|…|" of X events, each once */
} trace_stats;

typedef struct tc_ev { int pid, tid; double ts, end; } tc_ev;

static int tc_cmp(const void *a_, const void *b_) {
    const tc_ev *a = a_, *b = b_;
    if (a->pid != b->pid) return a->pid < b->pid ? -1 : 1;
    if (a->tid != b->tid) return a->tid < b->tid ? -1 : 1;
    if (a->ts != b->ts) return a->ts < b->ts ? -1 : 1;
    return a->end > b->end ? -1 : a->end < b->end;   /* the enclosing one first */
}

static bool tc_int(const cJSON *x) {
    return cJSON_IsNumber(x) && x->valuedouble >= 0 && x->valuedouble == floor(x->valuedouble);
}

static bool trace_check(const char *text, size_t len, trace_stats *st, char *why, size_t nwhy) {
    memset(st, 0, sizeof *st);
    st->dropped = -1;
    st->max_pid = -1;
    snprintf(st->names, sizeof st->names, "|");
    cJSON *root = cJSON_ParseWithLength(text, len);
    tc_ev *evs = NULL;
    bool ok = false;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    if (!cJSON_IsObject(root) || !cJSON_IsArray(arr)) {
        snprintf(why, nwhy, "not a JSON object with a traceEvents array");
        goto out;
    }
    const cJSON *od = cJSON_GetObjectItemCaseSensitive(root, "otherData");
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(od, "dropped_events");
    if (cJSON_IsNumber(dr)) st->dropped = dr->valuedouble;
    int n = cJSON_GetArraySize(arr), k = 0;
    evs = calloc((size_t)(n ? n : 1), sizeof *evs);
    char seen_pid[4096] = {0};
    const cJSON *e;
    int i = 0;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *ph = cJSON_GetObjectItemCaseSensitive(e, "ph");
        const cJSON *pid = cJSON_GetObjectItemCaseSensitive(e, "pid");
        const cJSON *tid = cJSON_GetObjectItemCaseSensitive(e, "tid");
        if (!cJSON_IsObject(e) || !cJSON_IsString(name) || !cJSON_IsString(ph) ||
            strlen(ph->valuestring) != 1 || !tc_int(pid) || !tc_int(tid)) {
            snprintf(why, nwhy, "event %d lacks name / ph / integer pid, tid", i);
            goto out;
        }
        if (!strcmp(ph->valuestring, "M")) {
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(e, "args");
            if (!cJSON_IsObject(args) || (strcmp(name->valuestring, "process_name") &&
                                          strcmp(name->valuestring, "thread_name") &&
                                          strcmp(name->valuestring, "process_sort_index"))) {
                snprintf(why, nwhy, "metadata event %d (%s) is not one the viewers know", i,
                         name->valuestring);
                goto out;
            }
        } else if (!strcmp(ph->valuestring, "X")) {
            const cJSON *ts = cJSON_GetObjectItemCaseSensitive(e, "ts");
            const cJSON *dur = cJSON_GetObjectItemCaseSensitive(e, "dur");
            if (!cJSON_IsNumber(ts) || !cJSON_IsNumber(dur) || ts->valuedouble < 0 ||
                dur->valuedouble < 0 || !isfinite(ts->valuedouble) || !isfinite(dur->valuedouble)) {
                snprintf(why, nwhy, "X event %d (%s): ts / dur not non-negative numbers", i,
                         name->valuestring);
                goto out;
            }
            int p = (int)pid->valuedouble;
            evs[k++] = (tc_ev){p, (int)tid->valuedouble, ts->valuedouble,
                               ts->valuedouble + dur->valuedouble};
            if (p < (int)sizeof seen_pid && !seen_pid[p]) {
                seen_pid[p] = 1;
                st->n_pids++;
            }
            if (p > st->max_pid) st->max_pid = p;
            char key[128];
            snprintf(key, sizeof key, "|%s|", name->valuestring);
            if (!strstr(st->names, key) && strlen(st->names) + strlen(key) < sizeof st->names)
                strcat(st->names, key + 1);
        } else {
            snprintf(why, nwhy, "event %d has phase '%s' (this writer makes only X and M)", i,
                     ph->valuestring);
            goto out;
        }
        i++;
    }
    st->n_x = k;
    qsort(evs, (size_t)k, sizeof *evs, tc_cmp);
    /* per track: a stack of open spans */
    double stack[64];
    int depth = 0;
    for (int j = 0; j < k; j++) {
        if (j == 0 || evs[j].pid != evs[j - 1].pid || evs[j].tid != evs[j - 1].tid) depth = 0;
        while (depth > 0 && evs[j].ts >= stack[depth - 1] - 1e-3) depth--;
        if (depth > 0 && evs[j].end > stack[depth - 1] + 1e-3) {
            snprintf(why, nwhy, "pid %d tid %d: a span at ts %.3f ends at %.3f, past its parent's "
                     "end %.3f (spans on a track must nest)", evs[j].pid, evs[j].tid, evs[j].ts,
                     evs[j].end, stack[depth - 1]);
            goto out;
        }
        if (depth < 64) stack[depth++] = evs[j].end;
    }
    ok = true;
out:
    free(evs);
    cJSON_Delete(root);
    return ok;
}

#endif
