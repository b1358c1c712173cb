/* Owns Unicode NFC (canonical decomposition, canonical ordering, canonical composition, as
 * UAX #15 gives them) for the NFC normalizer Qwen2's tokenizer.json names.  Data comes from
 * unicode_tables.c; Hangul is computed.
 * Must never be given invalid UTF-8 (callers validate) or read past its input. */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"
#include "unicode_tables.h"

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
       L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT,
       S_COUNT = L_COUNT * N_COUNT };

static unsigned ccc(uint32_t cp) {
    size_t lo = 0, hi = sq_uni_ccc_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < sq_uni_ccc[mid][0]) hi = mid;
        else if (cp > sq_uni_ccc[mid][1]) lo = mid + 1;
        else return sq_uni_ccc[mid][2];
    }
    return 0;
}

/* Full canonical decomposition of cp: returns its length and a pointer into the pool, or 0. */
static size_t decomp(uint32_t cp, const uint32_t **out) {
    size_t lo = 0, hi = sq_uni_decomp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < sq_uni_decomp[mid][0]) hi = mid;
        else if (cp > sq_uni_decomp[mid][0]) lo = mid + 1;
        else {
            *out = sq_uni_decomp_pool + sq_uni_decomp[mid][1];
            return sq_uni_decomp[mid][2];
        }
    }
    return 0;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = sq_uni_comp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *r = sq_uni_comp[mid];
        if (a < r[0] || (a == r[0] && b < r[1])) hi = mid;
        else if (a > r[0] || b > r[1]) lo = mid + 1;
        else return r[2];
    }
    return 0;
}

bool sq_nfc(const char *s, size_t n, sq_tok_buf *out) {
    /* decomposed code points: at most 4 per input code point (Hangul 3, the table 4 or less),
     * and never more code points than bytes times 4 */
    uint32_t *d = malloc((4 * n + 1) * sizeof *d);
    if (!d) return false;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = sq_utf8_next(s, n, &i);
        const uint32_t *p;
        size_t k;
        if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
            uint32_t si = cp - S_BASE;
            d[m++] = L_BASE + si / N_COUNT;
            d[m++] = V_BASE + (si % N_COUNT) / T_COUNT;
            if (si % T_COUNT) d[m++] = T_BASE + si % T_COUNT;
        } else if ((k = decomp(cp, &p)) > 0 && k <= 4) {
            memcpy(d + m, p, k * sizeof *d);
            m += k;
        } else {
            d[m++] = cp;
        }
    }
    /* canonical ordering: a stable sort of each run of non-starters by class */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = d[i];
        unsigned cc = ccc(c);
        if (!cc) continue;
        size_t j = i;
        while (j > 0 && ccc(d[j - 1]) > cc) {
            d[j] = d[j - 1];
            j--;
        }
        d[j] = c;
    }
    /* canonical composition (UAX #15's sample algorithm) */
    if (m > 0) {
        size_t starter = 0, w = 1;
        uint32_t starter_ch = d[0];
        unsigned last = ccc(d[0]) ? 256 : 0;
        for (size_t i = 1; i < m; i++) {
            uint32_t ch = d[i];
            unsigned cc = ccc(ch);
            uint32_t comp = compose(starter_ch, ch);
            if (comp && (last < cc || last == 0)) {
                d[starter] = comp;
                starter_ch = comp;
            } else {
                if (cc == 0) {
                    starter = w;
                    starter_ch = ch;
                }
                last = cc;
                d[w++] = ch;
            }
        }
        m = w;
    }
    out->n = 0;
    bool ok = sq_tok_buf_reserve(out, 4 * m);
    for (size_t i = 0; ok && i < m; i++) {
        char u[4];
        ok = sq_tok_buf_put(out, u, sq_utf8_put(d[i], u));
    }
    free(d);
    return ok;
}
