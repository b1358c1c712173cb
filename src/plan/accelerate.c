/* accelerate's device_map="auto" ("balanced") as transformers 5.23 + accelerate 1.15 compute it
 * (get_balanced_memory, the bitsandbytes quantizer's adjust_max_memory ×0.9, then
 * infer_auto_device_map; ../shared/reference/device-map-anchors.md §2-§7 with its correction),
 * re-implemented for the side-by-side comparison: not accelerate's code.  The real functions'
 * maps for every committed config × scheme × cluster are in tests/reference/accelerate_maps.json
 * (tests/reference/gen_accelerate_maps.py); tests/test_plan.c asserts this gives each of them.
 * Must never be used to place anything: shardq's own plan comes from sq_plan_solve.
 *
 * Simplifications (documented): the module tree is the Llama one, [model [embed_tokens,
 * layers [0..n-1], norm, rotary_emb], lm_head]; rotary_emb (a buffer) only counts in the
 * totals and is never placed on its own; cpu and disk
 * are one unbounded "offload" device after the GPUs; every device is a GPU. */
#include <stdlib.h>
#include <string.h>

#include "plan_impl.h"

enum { N_MODEL = 0, N_HEAD, N_EMBED, N_LAYERS, N_NORM, N_LAYER0 };

typedef struct tree {
    const sq_accel_input *a;
    int n;
    uint64_t *sufmax;    /* (n + 1) max layer size over layers i..n-1 */
    uint64_t layers_total;
} tree;

static uint64_t node_size(const tree *t, int id) {
    switch (id) {
    case N_MODEL: return t->a->embed_bytes + t->layers_total + t->a->norm_bytes + t->a->rotary_bytes;
    case N_HEAD: return t->a->tied ? 0 : t->a->head_bytes;
    case N_EMBED: return t->a->embed_bytes;
    case N_LAYERS: return t->layers_total;
    case N_NORM: return t->a->norm_bytes;
    default: return t->a->layer_bytes[id - N_LAYER0];
    }
}

static int n_leaves_of(const tree *t, int id) {
    if (id == N_MODEL) return t->n + 2;
    if (id == N_LAYERS) return t->n;
    return 1;
}

/* get_max_layer_size over the queue (front = q[len-1]): leaves and no-split layers. */
static uint64_t max_layer(const tree *t, const int *q, int len) {
    uint64_t mx = 0;
    for (int i = len - 1; i >= 0; i--) {
        int id = q[i];
        uint64_t s;
        if (id == N_MODEL) {
            s = t->a->embed_bytes > t->a->norm_bytes ? t->a->embed_bytes : t->a->norm_bytes;
            if (t->sufmax[0] > s) s = t->sufmax[0];
        } else if (id == N_LAYERS) {
            s = t->sufmax[0];
        } else if (id >= N_LAYER0) {
            /* layers sit in the queue as one contiguous run in order: the first one seen from
             * the front starts the suffix */
            s = t->sufmax[id - N_LAYER0];
            while (i > 0 && q[i - 1] >= N_LAYER0) i--;
        } else {
            s = node_size(t, id);
        }
        if (s > mx) mx = s;
    }
    return mx;
}

sq_status sq_plan_accelerate(const sq_plan_problem *p, const sq_accel_input *a, int *counts,
                             sq_accel_result *out, sq_error *err) {
    sq_status st = sq_plan_problem_check(p, err);
    if (st != SQ_OK) return st;
    if (!a || !a->layer_bytes || !a->max_memory)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "plan: accelerate input missing");
    int n = p->n_layers, m = p->n_devices;
    tree t = {.a = a, .n = n};
    t.sufmax = calloc((size_t)n + 1, sizeof(uint64_t));
    int *q = malloc(sizeof(int) * ((size_t)n + 8));
    double *caps = malloc(sizeof(double) * (size_t)m);
    if (!t.sufmax || !q || !caps) {
        free(t.sufmax);
        free(q);
        free(caps);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "plan: out of memory (accelerate emulation)");
    }
    for (int i = n - 1; i >= 0; i--) {
        t.sufmax[i] = a->layer_bytes[i] > t.sufmax[i + 1] ? a->layer_bytes[i] : t.sufmax[i + 1];
        t.layers_total += a->layer_bytes[i];
    }

    /* ---- get_balanced_memory (§4), then transformers' bnb adjust_max_memory ×0.9 ---- */
    uint64_t total = node_size(&t, N_MODEL) + node_size(&t, N_HEAD);
    for (int j = 0; j < m; j++) caps[j] = (double)a->max_memory[j];
    /* max_memory is given (each device's memory), so a single GPU keeps all of it (the ×0.9
     * "good compromise" is only for max_memory=None); with several, every GPU but the last is
     * capped at total / n + 1.25 × max(largest no-split block, largest leaf module).  The
     * largest leaf is embed_tokens / lm_head / norm (a Linear inside a layer is smaller than
     * its layer); under 4-bit it is the 16-bit embedding. */
    if (m > 1) {
        uint64_t per_gpu = total / (uint64_t)m;
        uint64_t big = t.sufmax[0];
        uint64_t leaves[3] = {a->embed_bytes, a->tied ? 0 : a->head_bytes, a->norm_bytes};
        for (int k = 0; k < 3; k++)
            if (leaves[k] > big) big = leaves[k];
        per_gpu += (uint64_t)(1.25 * (double)big);
        for (int j = 0; j < m - 1; j++)
            if ((double)per_gpu < caps[j]) caps[j] = (double)per_gpu;
    }
    if (a->bnb)
        for (int j = 0; j < m; j++) caps[j] = caps[j] * 0.90;

    /* ---- infer_auto_device_map (§5): one greedy pass, no backtracking ---- */
    memset(counts, 0, sizeof(int) * (size_t)m);
    sq_accel_result r = {.embed_dev = m, .head_dev = m, .norm_dev = m, .n_offloaded = 0};
    for (int j = 0; j < m && j < 64; j++) r.caps[j] = caps[j];
    int len = 0;
    q[len++] = N_HEAD;   /* queue front is q[len-1] */
    q[len++] = N_MODEL;
    bool head_placed = false;
    int dev = 0;
    double used = 0;
    while (len > 0) {
        int id = q[--len];
        if (id == N_HEAD && head_placed) continue;
        if (dev >= m) {   /* past the GPUs: cpu / disk */
            r.n_offloaded += n_leaves_of(&t, id);
            if (id == N_MODEL || id == N_EMBED) r.embed_dev = m;
            continue;
        }
        uint64_t reserve = dev == 0 ? max_layer(&t, q, len) : 0;   /* GPU 0 is a main device */
        double cap = caps[dev] - (double)reserve;
        uint64_t size = node_size(&t, id);
        /* a tied lm_head (size 0) travels with the module holding embed_tokens */
        if (used + (double)size <= cap) {
            used += (double)size;
            if (id == N_MODEL) {
                counts[dev] += n;
                r.embed_dev = r.norm_dev = dev;
            } else if (id == N_LAYERS) {
                counts[dev] += n;
            } else if (id == N_EMBED) {
                r.embed_dev = dev;
            } else if (id == N_NORM) {
                r.norm_dev = dev;
            } else if (id == N_HEAD) {
                r.head_dev = dev;
                head_placed = true;
            } else {
                counts[dev]++;
            }
            if (a->tied && (id == N_MODEL || id == N_EMBED) && !head_placed) {
                r.head_dev = dev;
                head_placed = true;
            }
            continue;
        }
        if (id == N_MODEL) {   /* split: children go to the front, in order */
            q[len++] = N_NORM;
            q[len++] = N_LAYERS;
            q[len++] = N_EMBED;
            continue;
        }
        if (id == N_LAYERS) {
            for (int i = n - 1; i >= 0; i--) q[len++] = N_LAYER0 + i;
            continue;
        }
        /* a leaf or a no-split layer that does not fit: next device, for good */
        q[len++] = id;
        dev++;
        used = 0;
    }
    for (int j = 0; j < m; j++) SQ_ASSERT(counts[j] >= 0);
    free(t.sufmax);
    free(q);
    free(caps);
    *out = r;
    return SQ_OK;
}
