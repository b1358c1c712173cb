/* Owns text -> ids: the tokenizers library's pipeline in its order — added tokens split off
 * the raw text, the normalizer, added tokens split off the normalized text, the
 * pre-tokenizers, BPE per pre-token, then the post-processor's template.
 * Must never modify the tokenizer (encode runs from many threads) or trust the input to be
 * UTF-8 before checking it. */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

/* A piece of text in a per-call arena (offsets, since the arena moves when it grows). */
typedef struct piece {
    size_t off, n;
    bool at_start; /* starts at byte 0 of the original text (Metaspace "first") */
} piece;

typedef struct pieces {
    piece *p;
    size_t n, cap;
} pieces;

typedef struct enc {
    const sq_tokenizer *tok;
    sq_error *err;
    sq_bpe_scratch *bpe;
    sq_tok_buf arena;
    pieces cur, next;
    int32_t *ids;
    size_t n_ids, cap_ids;
} enc;

static bool pieces_push(pieces *ps, size_t off, size_t n, bool at_start) {
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? 2 * ps->cap : 64;
        piece *p = realloc(ps->p, cap * sizeof *p);
        if (!p) return false;
        ps->p = p;
        ps->cap = cap;
    }
    ps->p[ps->n++] = (piece){off, n, at_start};
    return true;
}

static bool ids_push(enc *e, int32_t id) {
    if (e->n_ids == e->cap_ids) {
        size_t cap = e->cap_ids ? 2 * e->cap_ids : 256;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p) return false;
        e->ids = p;
        e->cap_ids = cap;
    }
    e->ids[e->n_ids++] = id;
    return true;
}

/* ---- added tokens ------------------------------------------------------------------------ */

static bool is_word_char(uint32_t cp) { return sq_uni_is_word(cp); }

/* The last code point before s[end] (s valid UTF-8), or 0 when end is 0. */
static uint32_t prev_cp(const char *s, size_t end) {
    if (end == 0) return 0;
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return sq_utf8_next(s, end, &i);
}

/* A span of text between added tokens (id -1) or an added token. */
typedef struct seg {
    size_t start, end;
    int32_t id;
    bool at_start;
} seg;

typedef struct segs {
    seg *p;
    size_t n, cap;
} segs;

static bool found(segs *out, size_t start, size_t end, int32_t id, bool at_start) {
    if (out->n == out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 16;
        seg *p = realloc(out->p, cap * sizeof *p);
        if (!p) return false;
        out->p = p;
        out->cap = cap;
    }
    out->p[out->n++] = (seg){start, end, id, at_start};
    return true;
}

/* Appends to *out the text between added tokens (id -1) and each added token (of the kind
 * `normalized`) in s, as AddedVocabulary::find_matches does: leftmost-longest matches,
 * single_word filter, lstrip/rstrip widening. */
static bool split_added(enc *e, const char *s, size_t n, bool normalized, bool at_start,
                        segs *out) {
    const sq_tokenizer *tok = e->tok;
    size_t start_offset = 0;
    for (size_t i = 0; i < n;) {
        unsigned b = (unsigned char)s[i];
        const sq_tok_added *best = NULL;
        for (int32_t k = 0; k < tok->n_added_by_byte[b]; k++) {
            const sq_tok_added *t = &tok->added[tok->added_by_byte[b][k]];
            if (t->normalized != normalized || t->content_bytes > n - i) continue;
            if (!memcmp(s + i, t->content, t->content_bytes)) { best = t; break; } /* longest */
        }
        if (!best) { i++; continue; }
        size_t start = i, stop = i + best->content_bytes;
        i = stop;
        if (best->single_word) {
            bool start_space = start == 0 || !is_word_char(prev_cp(s, start));
            size_t j = stop;
            bool stop_space = stop == n || !is_word_char(sq_utf8_next(s, n, &j));
            if (!start_space || !stop_space) continue;
        }
        if (best->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t q = ns - 1;
                while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                size_t t = q;
                if (!sq_uni_is_space(sq_utf8_next(s, n, &t))) break;
                ns = q;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (best->rstrip) {
            /* the search goes on from the match's own end, as the library's does, so a next
             * token may start inside the stripped spaces: it is then emitted overlapping */
            for (size_t t = stop; t < n;) {
                size_t q = t;
                if (!sq_uni_is_space(sq_utf8_next(s, n, &q))) break;
                t = q;
                stop = q;
            }
        }
        if (start_offset < start && !found(out, start_offset, start, -1, at_start && !start_offset))
            return false;
        if (!found(out, start, stop, best->id, false)) return false;
        start_offset = stop;
    }
    if (start_offset < n || n == 0)
        return found(out, start_offset, n, -1, at_start && start_offset == 0);
    return true;
}

/* ---- normalizers ------------------------------------------------------------------------- */

sq_status sq_tok_normalize(const sq_tokenizer *tok, const char *s, size_t n, sq_tok_buf *out,
                           sq_error *err) {
    sq_tok_buf a = {0}, b = {0};
    if (!sq_tok_buf_put(&a, s, n)) goto nomem;
    for (int k = 0; k < tok->n_norm; k++) {
        const sq_tok_norm *op = &tok->norm[k];
        b.n = 0;
        switch (op->kind) {
        case SQ_NORM_PREPEND:
            if (a.n && !sq_tok_buf_put(&b, op->a, op->a_bytes)) goto nomem;
            if (!sq_tok_buf_put(&b, a.p, a.n)) goto nomem;
            break;
        case SQ_NORM_REPLACE:
            for (size_t i = 0; i < a.n;) {
                if (a.n - i >= op->a_bytes && !memcmp(a.p + i, op->a, op->a_bytes)) {
                    if (!sq_tok_buf_put(&b, op->b, op->b_bytes)) goto nomem;
                    i += op->a_bytes;
                } else {
                    if (!sq_tok_buf_putc(&b, a.p[i])) goto nomem;
                    i++;
                }
            }
            if (!b.p && !sq_tok_buf_put(&b, "", 0)) goto nomem;
            break;
        case SQ_NORM_NFC: {
            bool stable = true;
            for (size_t i = 0; i < a.n && stable;)
                stable = sq_uni_nfc_stable(sq_utf8_next(a.p, a.n, &i));
            if (!(stable ? sq_tok_buf_put(&b, a.p, a.n) : sq_nfc(a.p, a.n, &b))) goto nomem;
            break;
        }
        }
        sq_tok_buf t = a;
        a = b;
        b = t;
    }
    free(b.p);
    out->n = 0;
    if (!sq_tok_buf_put(out, a.p, a.n)) { free(a.p); goto nomem; }
    free(a.p);
    return SQ_OK;
nomem:
    free(a.p);
    free(b.p);
    return sq_error_set(err, SQ_ERR_NOMEM, tok->name, NULL, "normalizing");
}

/* ---- pre-tokenizers ---------------------------------------------------------------------- */

typedef struct split_ctx {
    enc *e;
    size_t base;
    bool at_start;
    bool ok;
} split_ctx;

static bool regex_piece(void *vc, size_t start, size_t end) {
    split_ctx *c = vc;
    return pieces_push(&c->e->next, c->base + start, end - start, c->at_start && start == 0);
}

static bool pre_op(enc *e, const sq_tok_pre *op) {
    e->next.n = 0;
    for (size_t k = 0; k < e->cur.n; k++) {
        piece pc = e->cur.p[k];
        switch (op->kind) {
        case SQ_PRE_SPLIT: {
            split_ctx c = {e, pc.off, pc.at_start, true};
            if (!sq_pretok_regex_split(op->split, e->arena.p + pc.off, pc.n, regex_piece, &c))
                return false;
            break;
        }
        case SQ_PRE_BYTELEVEL: {
            /* optional prefix space, optional GPT-2 regex, then bytes -> GPT-2 characters */
            size_t first = e->next.n;
            if (op->add_prefix_space && (pc.n == 0 || e->arena.p[pc.off] != ' ')) {
                size_t off = e->arena.n;
                if (!sq_tok_buf_putc(&e->arena, ' ')) return false;
                if (!sq_tok_buf_put(&e->arena, e->arena.p + pc.off, pc.n)) return false;
                pc.off = off;
                pc.n++;
            }
            if (op->use_regex) {
                split_ctx c = {e, pc.off, pc.at_start, true};
                if (!sq_pretok_regex_split(SQ_SPLIT_GPT2, e->arena.p + pc.off, pc.n,
                                           regex_piece, &c))
                    return false;
            } else if (!pieces_push(&e->next, pc.off, pc.n, pc.at_start)) {
                return false;
            }
            for (size_t j = first; j < e->next.n; j++) {
                piece *q = &e->next.p[j];
                size_t off = e->arena.n;
                if (!sq_tok_buf_reserve(&e->arena, 2 * q->n)) return false;
                for (size_t i = 0; i < q->n; i++) {
                    char u[4];
                    size_t m = sq_utf8_put(sq_bytelevel_char((uint8_t)e->arena.p[q->off + i]), u);
                    memcpy(e->arena.p + e->arena.n, u, m);
                    e->arena.n += m;
                }
                q->off = off;
                q->n = e->arena.n - off;
            }
            break;
        }
        case SQ_PRE_METASPACE: {
            size_t off = e->arena.n;
            bool prepend = false;
            bool starts = pc.n >= op->repl_bytes &&
                          !memcmp(e->arena.p + pc.off, op->repl, op->repl_bytes);
            if (op->scheme == SQ_PREPEND_ALWAYS) prepend = !starts;
            if (op->scheme == SQ_PREPEND_FIRST) prepend = !starts && pc.at_start;
            /* replace ' ' first: a text starting with a space then starts with the
             * replacement and gets no second one */
            if (pc.n && e->arena.p[pc.off] == ' ') prepend = false;
            if (prepend && !sq_tok_buf_put(&e->arena, op->repl, op->repl_bytes)) return false;
            for (size_t i = 0; i < pc.n; i++) {
                char ch = e->arena.p[pc.off + i];
                bool ok = ch == ' ' ? sq_tok_buf_put(&e->arena, op->repl, op->repl_bytes)
                                    : sq_tok_buf_putc(&e->arena, ch);
                if (!ok) return false;
            }
            size_t n = e->arena.n - off;
            if (!op->meta_split) {
                if (!pieces_push(&e->next, off, n, pc.at_start)) return false;
                break;
            }
            size_t from = 0;
            for (size_t i = 1; i <= n; i++) {
                bool delim = i < n && n - i >= op->repl_bytes &&
                             !memcmp(e->arena.p + off + i, op->repl, op->repl_bytes);
                if (i == n || delim) {
                    if (!pieces_push(&e->next, off + from, i - from, pc.at_start && !from))
                        return false;
                    from = i;
                }
            }
            break;
        }
        }
    }
    pieces t = e->cur;
    e->cur = e->next;
    e->next = t;
    return true;
}

/* Pre-tokenizes and BPE-encodes one normalized piece of text (not an added token). */
static bool encode_plain(enc *e, size_t start, size_t end, int32_t id, bool at_start) {
    if (id >= 0) return ids_push(e, id);
    if (end == start) return true;
    e->cur.n = 0;
    /* the piece already lives in the arena (normalized text) */
    if (!pieces_push(&e->cur, start, end - start, at_start)) return false;
    for (int k = 0; k < e->tok->n_pre; k++)
        if (!pre_op(e, &e->tok->pre[k])) return false;
    for (size_t k = 0; k < e->cur.n; k++) {
        const piece *pc = &e->cur.p[k];
        if (!sq_bpe_word(e->tok, e->bpe, e->arena.p + pc->off, pc->n, &e->ids, &e->n_ids,
                         &e->cap_ids))
            return false;
    }
    return true;
}

sq_status sq_tokenizer_encode(const sq_tokenizer *tok, const char *text, size_t text_bytes,
                              bool add_special, int32_t **ids, size_t *n_ids, sq_error *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!text && text_bytes) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "text is NULL");
    size_t bad = sq_utf8_valid(text, text_bytes);
    if (bad != text_bytes)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "text is not valid UTF-8 (byte 0x%02X at offset %zu)",
                            (unsigned char)text[bad], bad);
    enc e = {.tok = tok, .err = err};
    segs raw = {0}, norm = {0};
    sq_tok_buf normalized = {0};
    sq_status s = SQ_OK;
    e.bpe = sq_bpe_scratch_create();
    if (!e.bpe) goto nomem;
    if (!split_added(&e, text ? text : "", text_bytes, false, true, &raw)) goto nomem;
    /* the template's leading special tokens */
    size_t tpl = 0;
    if (add_special)
        for (; tpl < (size_t)tok->n_tpl && !tok->tpl[tpl].is_sequence; tpl++)
            for (size_t k = 0; k < tok->tpl[tpl].n_ids; k++)
                if (!ids_push(&e, tok->tpl[tpl].ids[k])) goto nomem;
    for (size_t r = 0; r < raw.n; r++) {
        const seg *sg = &raw.p[r];
        if (sg->id >= 0) {
            if (!ids_push(&e, sg->id)) goto nomem;
            continue;
        }
        if ((s = sq_tok_normalize(tok, text + sg->start, sg->end - sg->start, &normalized, err)))
            goto fail;
        norm.n = 0;
        if (!split_added(&e, normalized.p ? normalized.p : "", normalized.n, true, sg->at_start,
                         &norm))
            goto nomem;
        for (size_t k = 0; k < norm.n; k++) {
            const seg *q = &norm.p[k];
            if (q->id >= 0) {
                if (!ids_push(&e, q->id)) goto nomem;
                continue;
            }
            if (q->end == q->start) continue;
            /* the piece goes to the start of the arena; pre-tokenizers append after it */
            e.arena.n = 0;
            if (!sq_tok_buf_put(&e.arena, normalized.p + q->start, q->end - q->start))
                goto nomem;
            if (!encode_plain(&e, 0, q->end - q->start, -1, q->at_start)) goto nomem;
        }
    }
    if (add_special && tpl < (size_t)tok->n_tpl) /* past the sequence */
        for (size_t t = tpl + 1; t < (size_t)tok->n_tpl; t++)
            for (size_t k = 0; !tok->tpl[t].is_sequence && k < tok->tpl[t].n_ids; k++)
                if (!ids_push(&e, tok->tpl[t].ids[k])) goto nomem;
    *ids = e.ids;
    *n_ids = e.n_ids;
    e.ids = NULL;
    goto done;
nomem:
    s = sq_error_set(err, SQ_ERR_NOMEM, tok->name, NULL, "out of memory while encoding %zu bytes",
                     text_bytes);
fail:
    free(e.ids);
done:
    sq_bpe_scratch_destroy(e.bpe);
    free(e.arena.p);
    free(e.cur.p);
    free(e.next.p);
    free(raw.p);
    free(norm.p);
    free(normalized.p);
    return s;
}
