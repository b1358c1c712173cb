/* Owns the tokenizer's character-level helpers: UTF-8 decoding and validation, the lossy
 * UTF-8 repair Rust's from_utf8_lossy does, the \p{L} \p{N} \s classes, the GPT-2 byte map,
 * and hand-written matchers for the three Split regexes shardq supports:
 *   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   Qwen2:   the Llama-3 pattern with \p{N} instead of \p{N}{1,3}.
 * Each matcher gives, at a position, the match the backtracking regex (Oniguruma, as the
 * tokenizers library uses) would: alternatives in order, greedy quantifiers.
 * Must never allocate by an input length without checking, or read past n. */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"
#include "unicode_tables.h"

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[i] (1..4), or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t i) {
    unsigned char c = s[i];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (i + 1 >= n || s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if (i + k >= n || (s[i + k] & 0xC0) != 0x80) return 0;
    return len;
}

size_t sq_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        size_t l = utf8_seq(u, n, i);
        if (!l) return i;
        i += l;
    }
    return n;
}

uint32_t sq_utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    size_t k = *i;
    uint32_t c = u[k];
    if (c < 0x80) { *i = k + 1; return c; }
    size_t len = utf8_seq(u, n, k);
    if (!len) { *i = k + 1; return 0xFFFD; } /* callers validate first; be safe anyway */
    uint32_t cp = c & (0xFF >> (len + 1));
    for (size_t j = 1; j < len; j++) cp = (cp << 6) | (u[k + j] & 0x3F);
    *i = k + len;
    return cp;
}

size_t sq_utf8_put(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the longest prefix of an invalid sequence at s[i] that could still start a valid
 * one (the "maximal subpart" replaced by a single U+FFFD), at least 1. */
static size_t utf8_bad_len(const unsigned char *s, size_t n, size_t i) {
    unsigned char c = s[i];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 1;
    size_t k = 1;
    if (i + 1 < n && s[i + 1] >= lo && s[i + 1] <= hi) {
        k = 2;
        while (k < len && i + k < n && (s[i + k] & 0xC0) == 0x80) k++;
    }
    return k;
}

bool sq_utf8_lossy_append(sq_tok_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        size_t l = u[i] < 0x80 ? 1 : utf8_seq(u, n, i);
        if (l) { i += l; continue; }
        if (!sq_tok_buf_put(out, s + run, i - run)) return false;
        if (!sq_tok_buf_put(out, "\xEF\xBF\xBD", 3)) return false;
        i += utf8_bad_len(u, n, i);
        run = i;
    }
    return sq_tok_buf_put(out, s + run, n - run);
}

/* ---- character classes ------------------------------------------------------------------- */

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

bool sq_uni_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(sq_uni_letter_ranges, sq_uni_letter_n_ranges, cp);
}

bool sq_uni_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(sq_uni_number_ranges, sq_uni_number_n_ranges, cp);
}

bool sq_uni_is_word(uint32_t cp) {
    if (cp < 0x80) return cp == '_' || sq_uni_is_letter(cp) || sq_uni_is_number(cp);
    return in_ranges(sq_uni_word_ranges, sq_uni_word_n_ranges, cp);
}

bool sq_uni_nfc_stable(uint32_t cp) {
    if (cp < 0x80) return true;
    return !in_ranges(sq_uni_nfc_unstable_ranges, sq_uni_nfc_unstable_n_ranges, cp);
}

/* Oniguruma's \s on Unicode text: the White_Space property. */
bool sq_uni_is_space(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ---- GPT-2 byte map ---------------------------------------------------------------------- */

static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t sq_bytelevel_char(uint8_t b) {
    if (byte_is_printable(b)) return b;
    /* the non-printable bytes, in order, map to 256, 257, ... */
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++) k += !byte_is_printable(x);
    return 256 + k;
}

int sq_bytelevel_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1; /* 68 non-printable bytes */
    uint32_t k = cp - 256;
    for (unsigned x = 0; x < 256; x++)
        if (!byte_is_printable(x) && k-- == 0) return (int)x;
    return -1;
}

/* ---- the Split regexes ------------------------------------------------------------------- */

typedef struct cps {
    const uint32_t *c; /* code points */
    size_t n;
} cps;

static inline bool is_L(const cps *t, size_t i) { return i < t->n && sq_uni_is_letter(t->c[i]); }
static inline bool is_N(const cps *t, size_t i) { return i < t->n && sq_uni_is_number(t->c[i]); }
static inline bool is_S(const cps *t, size_t i) { return i < t->n && sq_uni_is_space(t->c[i]); }
static inline bool is_other(const cps *t, size_t i) { /* [^\s\p{L}\p{N}] */
    return i < t->n && !sq_uni_is_space(t->c[i]) && !sq_uni_is_letter(t->c[i]) &&
           !sq_uni_is_number(t->c[i]);
}
static inline bool is_crlf(const cps *t, size_t i) {
    return i < t->n && (t->c[i] == '\r' || t->c[i] == '\n');
}

static bool ci_eq(uint32_t c, char lower) {
    if (c == (uint32_t)lower || c == (uint32_t)(lower - 32)) return true;
    /* Unicode simple case folding that lands on these letters: U+017F LATIN SMALL LETTER
     * LONG S folds to 's' (Oniguruma's (?i) honours it; K/k are not in the contractions). */
    return lower == 's' && c == 0x17F;
}

/* Length of the contraction match at i ('s 't 're 've 'm 'll 'd), or 0. */
static size_t match_contraction(const cps *t, size_t i, bool icase) {
    if (t->c[i] != '\'' || i + 1 >= t->n) return 0;
    static const char *const alts[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (size_t a = 0; a < sizeof alts / sizeof alts[0]; a++) {
        size_t k = 0, len = strlen(alts[a]);
        for (; k < len && i + 1 + k < t->n; k++) {
            uint32_t c = t->c[i + 1 + k];
            if (icase ? !ci_eq(c, alts[a][k]) : c != (uint32_t)alts[a][k]) break;
        }
        if (k == len) return 1 + len;
    }
    return 0;
}

/* End of the run of whitespace starting at i. */
static size_t space_run(const cps *t, size_t i) {
    while (i < t->n && sq_uni_is_space(t->c[i])) i++;
    return i;
}

/* \s+(?!\S) then \s+ : the last two alternatives of every pattern, at whitespace i. */
static size_t match_spaces(const cps *t, size_t i) {
    size_t j = space_run(t, i);
    if (j == t->n) return j;     /* \s+ to the end: (?!\S) holds */
    if (j - i >= 2) return j - 1; /* back off one so the next char is whitespace */
    return j;                     /* \s+ */
}

static size_t match_gpt2(const cps *t, size_t i) {
    size_t k = match_contraction(t, i, false);
    if (k) return i + k;
    size_t s = (t->c[i] == ' ') ? i + 1 : i; /* the optional leading space */
    for (int pass = 0; pass < 2; pass++) {
        size_t p = pass == 0 ? s : i; /* ' ?' greedy first, then without the space */
        if (pass == 1 && p == s) break;
        if (is_L(t, p)) { while (is_L(t, p)) p++; return p; }
        if (is_N(t, p)) { while (is_N(t, p)) p++; return p; }
        if (is_other(t, p)) { while (is_other(t, p)) p++; return p; }
    }
    return match_spaces(t, i);
}

static size_t match_llama3(const cps *t, size_t i, int max_digits) {
    size_t k = match_contraction(t, i, true);
    if (k) return i + k;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    size_t p = i;
    if (!is_crlf(t, p) && !is_L(t, p) && !is_N(t, p) && is_L(t, p + 1)) p++;
    if (is_L(t, p)) {
        while (is_L(t, p)) p++;
        return p;
    }
    /* \p{N}{1,max} */
    if (is_N(t, i)) {
        p = i;
        while (p - i < (size_t)max_digits && is_N(t, p)) p++;
        return p;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    p = (t->c[i] == ' ' && is_other(t, i + 1)) ? i + 1 : i;
    if (is_other(t, p)) {
        while (is_other(t, p)) p++;
        while (is_crlf(t, p)) p++;
        return p;
    }
    /* \s*[\r\n]+ : ends after the last \r or \n of the whitespace run */
    size_t j = space_run(t, i), last = 0;
    bool found = false;
    for (size_t q = i; q < j; q++)
        if (t->c[q] == '\r' || t->c[q] == '\n') { last = q; found = true; }
    if (found) return last + 1;
    return match_spaces(t, i);
}

bool sq_pretok_regex_split(sq_split_kind kind, const char *s, size_t n, sq_piece_fn emit,
                           void *ctx) {
    /* code points and their byte offsets; n is bounded by the caller's text */
    uint32_t *c = malloc((n + 1) * sizeof *c);
    size_t *off = malloc((n + 1) * sizeof *off);
    if (!c || !off) { free(c); free(off); return false; }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        off[m] = i;
        c[m++] = sq_utf8_next(s, n, &i);
    }
    off[m] = n;
    cps t = {c, m};
    bool ok = true;
    for (size_t i = 0; i < m && ok;) {
        size_t e;
        switch (kind) {
        case SQ_SPLIT_GPT2: e = match_gpt2(&t, i); break;
        case SQ_SPLIT_LLAMA3: e = match_llama3(&t, i, 3); break;
        case SQ_SPLIT_DIGITS:
        case SQ_SPLIT_DIGIT_RUNS: {
            bool num = sq_uni_is_number(c[i]);
            e = i + 1;
            if (!num || kind == SQ_SPLIT_DIGIT_RUNS)
                while (e < m && sq_uni_is_number(c[e]) == num) e++;
            break;
        }
        default: e = match_llama3(&t, i, 1); break;
        }
        if (e <= i) e = i + 1; /* every character matches some alternative; be safe */
        ok = emit(ctx, off[i], off[e]);
        i = e;
    }
    free(c);
    free(off);
    return ok;
}
