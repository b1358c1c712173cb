/* CPU sampling: greedy argmax and temperature / top-k / top-p draws keyed by
 * (seed, sequence, step) through sq_sample_uniform, so a token never depends on batching,
 * thread count or rank count.  Works in float64 on the kept candidates.  Must never allocate
 * (scratch comes from sq_backend_reserve) and never look at more than `vocab` logits. */
#include "cpu_impl.h"

#include <math.h>
#include <stdlib.h>

static int32_t argmax_lowest(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* order: larger logit first, then lower index */
static int cmp_desc(const void *a_, const void *b_, void *ctx) {
    const float *x = ctx;
    int32_t a = *(const int32_t *)a_, b = *(const int32_t *)b_;
    if (x[a] > x[b]) return -1;
    if (x[a] < x[b]) return 1;
    return (a > b) - (a < b);
}

typedef struct {
    sq_cpu *cpu;
    const float *logits;
    int64_t vocab;
    const sq_sample_params *p;
    const uint64_t *seq_ids, *steps;
    int32_t *ids;
} sample_ctx;

static void sample_task(void *ctx_, int64_t r, int thread) {
    const sample_ctx *c = ctx_;
    const float *x = c->logits + r * c->vocab;
    int64_t V = c->vocab;
    const sq_sample_params *p = c->p;
    if (!(p->temperature > 0.0f) || p->top_k == 1) {
        c->ids[r] = argmax_lowest(x, V);
        return;
    }
    int32_t *idx = c->cpu->sample_idx + r * c->cpu->sample_cap_vocab;
    double *pr = c->cpu->sample_p + r * c->cpu->sample_cap_vocab;
    double inv_t = 1.0 / (double)p->temperature;
    float mxl = x[argmax_lowest(x, V)];
    int64_t n = 0;
    {
        /* candidates within 64 temperature-scaled nats of the best (the rest weigh less than
         * V e^-64 of the mass, so the draw is the same but for u within ~1e-20 of a boundary),
         * sorted by decreasing logit, ties by lower index: the order the draw walks */
        double floor_l = (double)mxl - 64.0 * (double)p->temperature;
        for (int64_t i = 0; i < V; i++)
            if ((double)x[i] >= floor_l) idx[n++] = (int32_t)i;
        int64_t keep_k = (p->top_k > 0 && p->top_k < n) ? p->top_k : n;
        if (keep_k < n && keep_k <= 64) {
            /* partial selection: keep the best keep_k in idx[0, m), in order */
            int64_t m = 0;
            for (int64_t i = 0; i < n; i++) {
                int32_t v = idx[i];
                int64_t j;
                if (m == keep_k) {
                    if (cmp_desc(&v, &idx[m - 1], (void *)x) > 0) continue;
                    j = m - 1;   /* v replaces the last kept */
                } else {
                    j = m++;     /* j <= i: slots past i are untouched */
                }
                while (j > 0 && cmp_desc(&v, &idx[j - 1], (void *)x) < 0) {
                    idx[j] = idx[j - 1];
                    j--;
                }
                idx[j] = v;
            }
        } else {
            qsort_r(idx, (size_t)n, sizeof *idx, cmp_desc, (void *)x);
        }
        n = keep_k;
    }
    if (n == 0) {   /* every logit NaN: nothing to weigh */
        c->ids[r] = argmax_lowest(x, V);
        return;
    }
    double mx = (double)mxl * inv_t, sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        pr[i] = exp((double)x[idx[i]] * inv_t - mx);
        sum += pr[i];
    }
    if (p->top_p < 1.0f) {
        double target = (double)p->top_p * sum, cum = 0.0;
        int64_t keep = 0;
        while (keep < n) {
            cum += pr[keep++];
            if (cum >= target) break;
        }
        n = keep;   /* at least one */
        sum = cum;
    }
    double u = sq_sample_uniform(p->seed, c->seq_ids[r], c->steps[r]) * sum, cum = 0.0;
    int64_t pick = n - 1;
    for (int64_t i = 0; i < n; i++) {
        cum += pr[i];
        if (u < cum) { pick = i; break; }
    }
    c->ids[r] = idx[pick];
}

sq_status sq_cpu_sample(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                        const sq_sample_params *p, const uint64_t *seq_ids,
                        const uint64_t *steps, int32_t *ids_out, sq_error *err) {
    sq_cpu *cpu = sq_cpu_of(be);
    bool greedy = !(p->temperature > 0.0f) || p->top_k == 1;
    if (!greedy && (n_rows > cpu->sample_cap_rows || vocab > cpu->sample_cap_vocab))
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "backend sample: %lld rows x vocab %lld exceed the reserved scratch",
                            (long long)n_rows, (long long)vocab);
    sample_ctx c = {cpu, logits_d, vocab, p, seq_ids, steps, ids_out};
    sq_pool_run(cpu->pool, n_rows, sample_task, &c);
    return SQ_OK;
}
