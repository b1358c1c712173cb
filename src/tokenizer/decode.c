/* Owns ids -> text: the decoder chain the tokenizer.json describes (ByteLevel, Replace,
 * ByteFallback, Fuse, Strip, Metaspace), run as the tokenizers library's decode_chain, and the
 * streaming decoder built on it; also the per-family chat formats.
 * Must never modify the tokenizer, or emit text that is not valid UTF-8. */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

/* A list of strings: spans into one arena. */
typedef struct span {
    size_t off, n;
} span;

typedef struct strlist {
    sq_tok_buf arena;
    span *s;
    size_t n, cap;
} strlist;

static bool list_add(strlist *l, const char *p, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        span *s = realloc(l->s, cap * sizeof *s);
        if (!s) return false;
        l->s = s;
        l->cap = cap;
    }
    size_t off = l->arena.n;
    if (!sq_tok_buf_put(&l->arena, p, n)) return false;
    l->s[l->n++] = (span){off, n};
    return true;
}

/* Starts a new string at the end of the arena (filled by the caller with sq_tok_buf_put). */
static bool list_open(strlist *l) {
    if (!list_add(l, "", 0)) return false;
    return true;
}
static void list_close(strlist *l) { l->s[l->n - 1].n = l->arena.n - l->s[l->n - 1].off; }

static void list_free(strlist *l) {
    free(l->arena.p);
    free(l->s);
}

/* "<0xNN>" -> the byte, or -1. */
static int byte_token(const char *p, size_t n) {
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool flush_bytes(strlist *out, sq_tok_buf *bytes) {
    if (!bytes->n) return true;
    bool ok = true;
    if (sq_utf8_valid(bytes->p, bytes->n) == bytes->n) {
        ok = list_add(out, bytes->p, bytes->n);
    } else {
        for (size_t k = 0; k < bytes->n && ok; k++) ok = list_add(out, "\xEF\xBF\xBD", 3);
    }
    bytes->n = 0;
    return ok;
}

static bool apply_op(const sq_tok_dec *op, const strlist *in, strlist *out) {
    switch (op->kind) {
    case SQ_DEC_BYTELEVEL: {
        /* every token's characters back to bytes (a token with a character outside the map
         * keeps its own bytes), all joined, then repaired to UTF-8 */
        sq_tok_buf raw = {0};
        bool ok = true;
        for (size_t t = 0; t < in->n && ok; t++) {
            const char *p = in->arena.p + in->s[t].off;
            size_t n = in->s[t].n, mark = raw.n;
            for (size_t i = 0; i < n && ok;) {
                int b = sq_bytelevel_byte(sq_utf8_next(p, n, &i));
                if (b < 0) {
                    raw.n = mark;
                    ok = sq_tok_buf_put(&raw, p, n);
                    break;
                }
                ok = sq_tok_buf_putc(&raw, (char)b);
            }
        }
        ok = ok && list_open(out) && sq_utf8_lossy_append(&out->arena, raw.p ? raw.p : "", raw.n);
        if (ok) list_close(out);
        free(raw.p);
        return ok;
    }
    case SQ_DEC_REPLACE:
        for (size_t t = 0; t < in->n; t++) {
            const char *p = in->arena.p + in->s[t].off;
            size_t n = in->s[t].n;
            if (!list_open(out)) return false;
            for (size_t i = 0; i < n;) {
                bool hit = n - i >= op->a_bytes && !memcmp(p + i, op->a, op->a_bytes);
                if (!(hit ? sq_tok_buf_put(&out->arena, op->b, op->b_bytes)
                          : sq_tok_buf_putc(&out->arena, p[i])))
                    return false;
                i += hit ? op->a_bytes : 1;
            }
            list_close(out);
        }
        return true;
    case SQ_DEC_BYTEFALLBACK: {
        sq_tok_buf bytes = {0};
        bool ok = true;
        for (size_t t = 0; t < in->n && ok; t++) {
            const char *p = in->arena.p + in->s[t].off;
            int b = byte_token(p, in->s[t].n);
            if (b >= 0) {
                ok = sq_tok_buf_putc(&bytes, (char)b);
                continue;
            }
            ok = flush_bytes(out, &bytes) && list_add(out, p, in->s[t].n);
        }
        ok = ok && flush_bytes(out, &bytes);
        free(bytes.p);
        return ok;
    }
    case SQ_DEC_FUSE:
        if (!list_open(out)) return false;
        for (size_t t = 0; t < in->n; t++)
            if (!sq_tok_buf_put(&out->arena, in->arena.p + in->s[t].off, in->s[t].n))
                return false;
        list_close(out);
        return true;
    case SQ_DEC_STRIP:
        for (size_t t = 0; t < in->n; t++) {
            const char *p = in->arena.p + in->s[t].off;
            size_t n = in->s[t].n, a = 0, z = n;
            for (int k = 0; k < op->strip_start && a < n; k++) {
                size_t i = a;
                if (sq_utf8_next(p, n, &i) != op->strip_char) break;
                a = i;
            }
            for (int k = 0; k < op->strip_stop && z > a; k++) {
                size_t q = z - 1;
                while (q > a && ((unsigned char)p[q] & 0xC0) == 0x80) q--;
                size_t i = q;
                if (sq_utf8_next(p, n, &i) != op->strip_char) break;
                z = q;
            }
            if (!list_add(out, p + a, z - a)) return false;
        }
        return true;
    case SQ_DEC_METASPACE:
        for (size_t t = 0; t < in->n; t++) {
            const char *p = in->arena.p + in->s[t].off;
            size_t n = in->s[t].n;
            if (!list_open(out)) return false;
            for (size_t i = 0; i < n;) {
                bool hit = n - i >= op->repl_bytes && !memcmp(p + i, op->repl, op->repl_bytes);
                if (hit) {
                    /* the first token loses all its replacements when a prefix was added */
                    if (!(t == 0 && op->meta_prepend) && !sq_tok_buf_putc(&out->arena, ' '))
                        return false;
                    i += op->repl_bytes;
                } else {
                    if (!sq_tok_buf_putc(&out->arena, p[i])) return false;
                    i++;
                }
            }
            list_close(out);
        }
        return true;
    }
    return false;
}

/* Decodes into *out (appending). */
static sq_status decode_into(const sq_tokenizer *tok, const int32_t *ids, size_t n_ids,
                             bool skip_special, sq_tok_buf *out, sq_error *err) {
    strlist a = {0}, b = {0};
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0) {
            list_free(&a);
            return sq_error_set(err, SQ_ERR_INVALID, tok->name, NULL,
                                "token id %d at position %zu is negative", ids[i], i);
        }
        size_t n = 0;
        const char *p = sq_tok_str(tok, ids[i], &n);
        if (!p) continue; /* no such token: skipped, as the library does */
        if (skip_special && sq_tokenizer_is_special(tok, ids[i])) continue;
        if (!tok->has_decoder && a.n && !list_add(&a, " ", 1)) goto nomem; /* join(" ") */
        if (!list_add(&a, p, n)) goto nomem;
    }
    for (int k = 0; k < tok->n_dec; k++) {
        b.n = 0;
        b.arena.n = 0;
        if (!apply_op(&tok->dec[k], &a, &b)) goto nomem;
        strlist t = a;
        a = b;
        b = t;
    }
    if (!sq_tok_buf_reserve(out, 0)) goto nomem;
    for (size_t t = 0; t < a.n; t++)
        if (!sq_tok_buf_put(out, a.arena.p + a.s[t].off, a.s[t].n)) goto nomem;
    list_free(&a);
    list_free(&b);
    return SQ_OK;
nomem:
    list_free(&a);
    list_free(&b);
    return sq_error_set(err, SQ_ERR_NOMEM, tok->name, NULL, "out of memory while decoding");
}

sq_status sq_tokenizer_decode(const sq_tokenizer *tok, const int32_t *ids, size_t n_ids,
                              bool skip_special, char **text, size_t *text_bytes, sq_error *err) {
    *text = NULL;
    if (text_bytes) *text_bytes = 0;
    sq_tok_buf out = {0};
    sq_status s = decode_into(tok, ids, n_ids, skip_special, &out, err);
    if (s) {
        free(out.p);
        return s;
    }
    /* the decoders above only emit valid UTF-8, except that a tokenizer without a
     * byte-level decoder may hold any bytes in its tokens: repair those the same way */
    if (sq_utf8_valid(out.p, out.n) != out.n) {
        sq_tok_buf fixed = {0};
        if (!sq_utf8_lossy_append(&fixed, out.p, out.n)) {
            free(out.p);
            return sq_error_set(err, SQ_ERR_NOMEM, tok->name, NULL, "decoding");
        }
        free(out.p);
        out = fixed;
    }
    *text = out.p;
    if (text_bytes) *text_bytes = out.n;
    return SQ_OK;
}

/* ---- streaming --------------------------------------------------------------------------- */

/* Decodes the window ids[prefix, read) and ids[prefix, n): the text the newest ids add is the
 * difference, unless it ends in U+FFFD (an incomplete character), when it waits. */
struct sq_detok_stream {
    const sq_tokenizer *tok;
    bool skip_special;
    int32_t *ids;
    size_t n, cap;
    size_t prefix, read;
    sq_tok_buf a, b, out;
};

sq_status sq_detok_stream_create(const sq_tokenizer *tok, bool skip_special,
                                 sq_detok_stream **out, sq_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out) return sq_error_set(err, SQ_ERR_NOMEM, tok->name, NULL, "detok stream");
    (*out)->tok = tok;
    (*out)->skip_special = skip_special;
    return SQ_OK;
}

void sq_detok_stream_destroy(sq_detok_stream *s) {
    if (!s) return;
    free(s->ids);
    free(s->a.p);
    free(s->b.p);
    free(s->out.p);
    free(s);
}

static sq_status stream_step(sq_detok_stream *s, bool final, const char **text,
                             size_t *text_bytes, sq_error *err) {
    s->a.n = s->b.n = s->out.n = 0;
    sq_status st = decode_into(s->tok, s->ids + s->prefix, s->read - s->prefix, s->skip_special,
                               &s->a, err);
    if (!st)
        st = decode_into(s->tok, s->ids + s->prefix, s->n - s->prefix, s->skip_special, &s->b,
                         err);
    if (st) return st;
    bool partial = s->b.n >= 3 && !memcmp(s->b.p + s->b.n - 3, "\xEF\xBF\xBD", 3);
    if (s->b.n > s->a.n && (final || !partial)) {
        if (!sq_tok_buf_put(&s->out, s->b.p + s->a.n, s->b.n - s->a.n))
            return sq_error_set(err, SQ_ERR_NOMEM, s->tok->name, NULL, "detok stream");
        s->prefix = s->read;
        s->read = s->n;
    }
    *text = s->out.p ? s->out.p : "";
    *text_bytes = s->out.n;
    return SQ_OK;
}

sq_status sq_detok_stream_push(sq_detok_stream *s, int32_t id, const char **text,
                               size_t *text_bytes, sq_error *err) {
    *text = "";
    *text_bytes = 0;
    if (id < 0)
        return sq_error_set(err, SQ_ERR_INVALID, s->tok->name, NULL, "token id %d is negative",
                            id);
    if (s->prefix > 256) { /* drop ids no window will look at again */
        memmove(s->ids, s->ids + s->prefix, (s->n - s->prefix) * sizeof *s->ids);
        s->n -= s->prefix;
        s->read -= s->prefix;
        s->prefix = 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        int32_t *p = realloc(s->ids, cap * sizeof *p);
        if (!p) return sq_error_set(err, SQ_ERR_NOMEM, s->tok->name, NULL, "detok stream");
        s->ids = p;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    sq_status st = stream_step(s, false, text, text_bytes, err);
    if (st) s->n--;
    return st;
}

sq_status sq_detok_stream_finish(sq_detok_stream *s, const char **text, size_t *text_bytes,
                                 sq_error *err) {
    sq_status st = stream_step(s, true, text, text_bytes, err);
    s->n = s->prefix = s->read = 0;
    return st;
}

/* ---- chat formats ------------------------------------------------------------------------ */

static bool is_strip_space(uint32_t cp) { /* Python's str.strip() */
    return sq_uni_is_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* Appends s trimmed of leading and trailing whitespace. */
static bool put_trimmed(sq_tok_buf *b, const char *s, size_t n) {
    size_t a = 0, z = n;
    while (a < z) {
        size_t i = a;
        if (!is_strip_space(sq_utf8_next(s, n, &i))) break;
        a = i;
    }
    while (z > a) {
        size_t q = z - 1;
        while (q > a && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
        size_t i = q;
        if (!is_strip_space(sq_utf8_next(s, n, &i))) break;
        z = q;
    }
    return sq_tok_buf_put(b, s + a, z - a);
}

#define PUT(str) ok = ok && sq_tok_buf_put(&b, str, strlen(str))

sq_status sq_tokenizer_chat_format(sq_chat_family family, const char *system, const char *user,
                                   char **text, size_t *text_bytes, sq_error *err) {
    *text = NULL;
    if (text_bytes) *text_bytes = 0;
    if (!user) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "chat: no user message");
    size_t nu = strlen(user), ns = system ? strlen(system) : 0;
    if (sq_utf8_valid(user, nu) != nu)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "chat: user message is not valid UTF-8 (offset %zu)",
                            sq_utf8_valid(user, nu));
    if (system && sq_utf8_valid(system, ns) != ns)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "chat: system message is not valid UTF-8 (offset %zu)",
                            sq_utf8_valid(system, ns));
    sq_tok_buf b = {0};
    bool ok = true;
    switch (family) {
    case SQ_CHAT_LLAMA3:
        PUT("<|begin_of_text|>");
        if (system) {
            PUT("<|start_header_id|>system<|end_header_id|>\n\n");
            ok = ok && put_trimmed(&b, system, ns);
            PUT("<|eot_id|>");
        }
        PUT("<|start_header_id|>user<|end_header_id|>\n\n");
        ok = ok && put_trimmed(&b, user, nu);
        PUT("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case SQ_CHAT_CHATML:
        PUT("<|im_start|>system\n");
        PUT(system ? system : "You are a helpful assistant.");
        PUT("<|im_end|>\n<|im_start|>user\n");
        PUT(user);
        PUT("<|im_end|>\n<|im_start|>assistant\n");
        break;
    case SQ_CHAT_MISTRAL:
        PUT("<s>[INST] ");
        if (system) {
            PUT(system);
            PUT("\n\n");
        }
        PUT(user);
        PUT(" [/INST]");
        break;
    default:
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "chat: unknown family %d",
                            (int)family);
    }
    if (!ok) {
        free(b.p);
        return sq_error_set(err, SQ_ERR_NOMEM, NULL, NULL, "chat format");
    }
    *text = b.p;
    if (text_bytes) *text_bytes = b.n;
    return SQ_OK;
}
#undef PUT

static int32_t find_special(const sq_tokenizer *tok, const char *s) {
    return sq_tokenizer_token_id(tok, s, strlen(s));
}

sq_status sq_tokenizer_chat_family_guess(const sq_tokenizer *tok, sq_chat_family *out,
                                         sq_error *err) {
    if (find_special(tok, "<|start_header_id|>") >= 0) *out = SQ_CHAT_LLAMA3;
    else if (find_special(tok, "<|im_start|>") >= 0) *out = SQ_CHAT_CHATML;
    else if (find_special(tok, "[INST]") >= 0 ||
             (tok->byte_fallback && find_special(tok, "<s>") >= 0))
        *out = SQ_CHAT_MISTRAL;
    else
        return sq_error_set(err, SQ_ERR_UNSUPPORTED, tok->name, NULL,
                            "no chat format known for this tokenizer (none of "
                            "<|start_header_id|>, <|im_start|>, [INST], <s>)");
    return SQ_OK;
}

int32_t sq_tokenizer_chat_stop_id(const sq_tokenizer *tok, sq_chat_family family) {
    switch (family) {
    case SQ_CHAT_LLAMA3: return find_special(tok, "<|eot_id|>");
    case SQ_CHAT_CHATML: return find_special(tok, "<|im_end|>");
    case SQ_CHAT_MISTRAL: return find_special(tok, "</s>");
    }
    return -1;
}

const char *sq_tokenizer_chat_family_name(sq_chat_family family) {
    switch (family) {
    case SQ_CHAT_LLAMA3: return "llama3";
    case SQ_CHAT_CHATML: return "chatml";
    case SQ_CHAT_MISTRAL: return "mistral";
    }
    return "unknown";
}
