/* Owns the BPE merge loop over one pre-token, the same algorithm as the tokenizers library's
 * Word::merge_all: symbols in a linked list, candidate merges in a min-heap ordered by
 * (rank, position), stale entries skipped when popped.  O(n log n) per pre-token.
 * Must never modify the tokenizer (it is shared between threads). */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* indices, -1 at the ends */
    uint32_t bytes;     /* 0 once merged into its left neighbour */
} sym;

typedef struct cand {
    int32_t rank, pos, new_id;
} cand;

struct sq_bpe_scratch {
    sym *syms;
    size_t cap_syms;
    cand *heap;
    size_t n_heap, cap_heap;
};

sq_bpe_scratch *sq_bpe_scratch_create(void) { return calloc(1, sizeof(sq_bpe_scratch)); }

void sq_bpe_scratch_destroy(sq_bpe_scratch *s) {
    if (!s) return;
    free(s->syms);
    free(s->heap);
    free(s);
}

static bool cand_less(const cand *a, const cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static bool heap_push(sq_bpe_scratch *s, cand c) {
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? 2 * s->cap_heap : 64;
        cand *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return false;
        s->heap = h;
        s->cap_heap = cap;
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
    return true;
}

static cand heap_pop(sq_bpe_scratch *s) {
    cand top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand *best = &last;
        if (l < n && cand_less(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && cand_less(&s->heap[r], best)) { m = r; }
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

static const sq_tok_merge_slot *merge_find(const sq_tokenizer *tok, int32_t a, int32_t b) {
    if (!tok->merges) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(h >> 32) & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        const sq_tok_merge_slot *sl = &tok->merges[i];
        if (sl->key == key) return sl;
        if (sl->key == UINT64_MAX) return NULL;
    }
}

static bool push_sym(sq_bpe_scratch *s, size_t *n, int32_t id, uint32_t bytes) {
    if (*n == s->cap_syms) {
        size_t cap = s->cap_syms ? 2 * s->cap_syms : 64;
        sym *p = realloc(s->syms, cap * sizeof *p);
        if (!p) return false;
        s->syms = p;
        s->cap_syms = cap;
    }
    s->syms[*n] = (sym){id, (int32_t)*n - 1, (int32_t)*n + 1, bytes};
    (*n)++;
    return true;
}

static bool out_push(int32_t **ids, size_t *n_ids, size_t *cap_ids, int32_t id) {
    if (*n_ids == *cap_ids) {
        size_t cap = *cap_ids ? 2 * *cap_ids : 256;
        int32_t *p = realloc(*ids, cap * sizeof *p);
        if (!p) return false;
        *ids = p;
        *cap_ids = cap;
    }
    (*ids)[(*n_ids)++] = id;
    return true;
}

bool sq_bpe_word(const sq_tokenizer *tok, sq_bpe_scratch *s, const char *w, size_t n,
                 int32_t **ids, size_t *n_ids, size_t *cap_ids) {
    if (n == 0) return true;
    if (tok->ignore_merges) {
        int32_t id = sq_tok_vocab_find(tok, w, n);
        if (id >= 0) return out_push(ids, n_ids, cap_ids, id);
    }
    /* initial symbols: one per character, or its <0xNN> bytes, or <unk> (fused if asked) */
    size_t n_syms = 0;
    int32_t unk_bytes = 0; /* a pending <unk> covering this many bytes */
    for (size_t i = 0; i < n;) {
        size_t start = i;
        sq_utf8_next(w, n, &i);
        uint32_t len = (uint32_t)(i - start);
        int32_t id = sq_tok_vocab_find(tok, w + start, len);
        if (id >= 0) {
            if (unk_bytes) {
                if (!push_sym(s, &n_syms, tok->unk_id, (uint32_t)unk_bytes)) return false;
                unk_bytes = 0;
            }
            if (!push_sym(s, &n_syms, id, len)) return false;
            continue;
        }
        if (tok->byte_fallback) {
            bool all = true;
            for (uint32_t k = 0; k < len; k++)
                all = all && tok->byte_ids[(unsigned char)w[start + k]] >= 0;
            if (all) {
                /* like the library, a pending <unk> stays pending across these */
                for (uint32_t k = 0; k < len; k++)
                    if (!push_sym(s, &n_syms, tok->byte_ids[(unsigned char)w[start + k]], 1))
                        return false;
                continue;
            }
        }
        if (tok->unk_id >= 0) {
            if (unk_bytes && !tok->fuse_unk) {
                if (!push_sym(s, &n_syms, tok->unk_id, (uint32_t)unk_bytes)) return false;
                unk_bytes = 0;
            }
            unk_bytes += (int32_t)len;
        }
        /* no unk token: the character is dropped, as the library does */
    }
    if (unk_bytes && !push_sym(s, &n_syms, tok->unk_id, (uint32_t)unk_bytes)) return false;
    if (n_syms == 0) return true;
    s->syms[n_syms - 1].next = -1;

    s->n_heap = 0;
    for (size_t i = 0; i + 1 < n_syms; i++) {
        const sq_tok_merge_slot *m = merge_find(tok, s->syms[i].id, s->syms[i + 1].id);
        if (m && !heap_push(s, (cand){m->rank, (int32_t)i, m->new_id})) return false;
    }
    while (s->n_heap) {
        cand top = heap_pop(s);
        sym *cur = &s->syms[top.pos];
        if (cur->bytes == 0 || cur->next < 0) continue;
        int32_t next_pos = cur->next;
        sym right = s->syms[next_pos];
        const sq_tok_merge_slot *m = merge_find(tok, cur->id, right.id);
        if (!m || m->new_id != top.new_id) continue; /* stale */
        cur->id = top.new_id;
        cur->bytes += right.bytes;
        cur->next = right.next;
        s->syms[next_pos].bytes = 0;
        if (right.next >= 0) s->syms[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            m = merge_find(tok, s->syms[cur->prev].id, cur->id);
            if (m && !heap_push(s, (cand){m->rank, cur->prev, m->new_id})) return false;
            cur = &s->syms[top.pos];
        }
        if (cur->next >= 0) {
            m = merge_find(tok, cur->id, s->syms[cur->next].id);
            if (m && !heap_push(s, (cand){m->rank, top.pos, m->new_id})) return false;
        }
    }
    for (size_t i = 0; i < n_syms; i++)
        if (s->syms[i].bytes && !out_push(ids, n_ids, cap_ids, s->syms[i].id)) return false;
    return true;
}
