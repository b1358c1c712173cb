/* Private to the tokenizer module: the loaded tokenizer's layout and the helpers its source
 * files share.  A loaded sq_tokenizer is immutable; per-call scratch lives in sq_tok_buf.
 * Never: include this outside src/tokenizer/. */
#ifndef SQ_TOKENIZER_IMPL_H
#define SQ_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shardq/tokenizer.h"

/* Caps on what a tokenizer.json may declare, so a lying file cannot make us allocate by an
 * untrusted length. */
#define SQ_TOK_MAX_JSON_BYTES ((size_t)256 << 20)
#define SQ_TOK_MAX_VOCAB (1 << 24)
#define SQ_TOK_MAX_TOKEN_BYTES 4096

/* A growable byte buffer (also used for NUL-terminated strings). */
typedef struct sq_tok_buf {
    char *p;
    size_t n, cap;
} sq_tok_buf;
bool sq_tok_buf_reserve(sq_tok_buf *b, size_t extra);
bool sq_tok_buf_put(sq_tok_buf *b, const void *data, size_t n);
static inline bool sq_tok_buf_putc(sq_tok_buf *b, char c) { return sq_tok_buf_put(b, &c, 1); }

/* string -> id, open addressing over ids; keys are the strings the owner stores. */
typedef struct sq_tok_strmap {
    uint32_t mask;  /* capacity - 1, capacity a power of two */
    int32_t *slots; /* (capacity) id, or -1 for empty */
} sq_tok_strmap;

/* (left id, right id) -> merge rank and the id of the merged token. */
typedef struct sq_tok_merge_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX when empty */
    int32_t rank, new_id;
} sq_tok_merge_slot;

typedef struct sq_tok_added {
    int32_t id;
    char *content; /* as matched and decoded: run through the normalizer if `normalized` */
    size_t content_bytes;
    char *orig; /* as written in the file (token_id looks this up); NULL: same as content */
    size_t orig_bytes;
    bool special, normalized, lstrip, rstrip, single_word;
} sq_tok_added;

typedef enum { SQ_NORM_PREPEND, SQ_NORM_REPLACE, SQ_NORM_NFC } sq_norm_kind;
typedef struct sq_tok_norm {
    sq_norm_kind kind;
    char *a, *b; /* PREPEND: a = prefix; REPLACE: a -> b */
    size_t a_bytes, b_bytes;
} sq_tok_norm;

/* DIGITS / DIGIT_RUNS: the Digits pre-tokenizer (each \p{N} alone / runs of them), which
 * isolates numbers and keeps what lies between them as one piece. */
typedef enum {
    SQ_SPLIT_GPT2 = 0, SQ_SPLIT_LLAMA3, SQ_SPLIT_QWEN2, SQ_SPLIT_DIGITS, SQ_SPLIT_DIGIT_RUNS
} sq_split_kind;
typedef enum { SQ_PRE_SPLIT, SQ_PRE_BYTELEVEL, SQ_PRE_METASPACE } sq_pre_kind;
typedef enum { SQ_PREPEND_ALWAYS, SQ_PREPEND_FIRST, SQ_PREPEND_NEVER } sq_prepend_scheme;
typedef struct sq_tok_pre {
    sq_pre_kind kind;
    sq_split_kind split;      /* SPLIT, and BYTELEVEL with use_regex (always GPT-2) */
    bool add_prefix_space;    /* BYTELEVEL */
    bool use_regex;           /* BYTELEVEL */
    sq_prepend_scheme scheme; /* METASPACE */
    bool meta_split;          /* METASPACE */
    char repl[8];             /* METASPACE replacement character, UTF-8 */
    size_t repl_bytes;
} sq_tok_pre;

typedef enum {
    SQ_DEC_BYTELEVEL, SQ_DEC_REPLACE, SQ_DEC_BYTEFALLBACK, SQ_DEC_FUSE, SQ_DEC_STRIP,
    SQ_DEC_METASPACE
} sq_dec_kind;
typedef struct sq_tok_dec {
    sq_dec_kind kind;
    char *a, *b; /* REPLACE a -> b */
    size_t a_bytes, b_bytes;
    uint32_t strip_char; /* STRIP content (a code point) */
    int strip_start, strip_stop;
    char repl[8]; /* METASPACE */
    size_t repl_bytes;
    bool meta_prepend; /* METASPACE: prepend_scheme != never */
} sq_tok_dec;

/* One piece of the TemplateProcessing "single" template: a run of special ids or the text. */
typedef struct sq_tok_tpl {
    bool is_sequence;
    int32_t *ids;
    size_t n_ids;
} sq_tok_tpl;

#define SQ_TOK_MAX_OPS 8

struct sq_tokenizer {
    char name[256]; /* for messages */

    /* model vocabulary: id -> string in `arena`; len -1 where no token has that id */
    int32_t n_ids;        /* 1 + largest id (model and added) */
    int64_t *tok_off;     /* (n_ids) */
    int32_t *tok_len;     /* (n_ids) model token length or -1 */
    int32_t *added_of_id; /* (n_ids) index into added[], or -1 */
    char *arena;
    size_t arena_bytes;
    sq_tok_strmap vocab; /* model token string -> id */

    sq_tok_merge_slot *merges; /* (merge_mask + 1) */
    uint32_t merge_mask;
    size_t n_merges;

    int32_t unk_id;  /* -1: none */
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256]; /* <0xNN> token ids, -1 if absent */
    bool all_byte_ids;

    sq_tok_added *added;
    size_t n_added;
    /* added tokens by first byte, longest first: indices into added[] */
    int32_t *added_by_byte[256];
    int32_t n_added_by_byte[256];
    bool any_normalized_added, any_raw_added;

    sq_tok_norm norm[SQ_TOK_MAX_OPS];
    int n_norm;
    sq_tok_pre pre[SQ_TOK_MAX_OPS];
    int n_pre;
    sq_tok_dec dec[SQ_TOK_MAX_OPS];
    int n_dec;
    bool has_decoder;

    sq_tok_tpl tpl[SQ_TOK_MAX_OPS];
    int n_tpl;
    int32_t bos_id, eos_id;
};

/* UTF-8 helpers.  sq_utf8_valid returns the byte offset of the first invalid sequence, or
 * n when s is valid.  sq_utf8_next decodes one code point of valid UTF-8 at s[*i]. */
size_t sq_utf8_valid(const char *s, size_t n);
uint32_t sq_utf8_next(const char *s, size_t n, size_t *i);
size_t sq_utf8_put(uint32_t cp, char out[4]);
/* Appends s as Rust's String::from_utf8_lossy would (maximal invalid subparts -> U+FFFD). */
bool sq_utf8_lossy_append(sq_tok_buf *out, const char *s, size_t n);

/* Character classes of the pre-tokenizer regexes (Oniguruma semantics). */
bool sq_uni_is_letter(uint32_t cp);
bool sq_uni_is_number(uint32_t cp);
bool sq_uni_is_space(uint32_t cp);
/* Rust regex's \w (Alphabetic, marks, Nd, Pc, Join_Control): single_word added tokens. */
bool sq_uni_is_word(uint32_t cp);
/* False for code points NFC may change in some context (text without them is NFC). */
bool sq_uni_nfc_stable(uint32_t cp);

/* Splits s into the pieces the Split regex `kind` matches (Isolated behaviour): calls
 * emit(ctx, start, end) for each piece in order; stops and returns false when emit does. */
typedef bool (*sq_piece_fn)(void *ctx, size_t start, size_t end);
bool sq_pretok_regex_split(sq_split_kind kind, const char *s, size_t n, sq_piece_fn emit,
                           void *ctx);

/* GPT-2 byte <-> unicode map: the code point that stands for byte b, and back (-1: none). */
uint32_t sq_bytelevel_char(uint8_t b);
int sq_bytelevel_byte(uint32_t cp);

uint64_t sq_tok_hash(const char *s, size_t n);
int32_t sq_tok_vocab_find(const sq_tokenizer *tok, const char *s, size_t n);
static inline const char *sq_tok_str(const sq_tokenizer *tok, int32_t id, size_t *n) {
    if (id < 0 || id >= tok->n_ids) return NULL;
    if (tok->added_of_id[id] >= 0) {
        const sq_tok_added *a = &tok->added[tok->added_of_id[id]];
        *n = a->content_bytes;
        return a->content;
    }
    if (tok->tok_len[id] < 0) return NULL;
    *n = (size_t)tok->tok_len[id];
    return tok->arena + tok->tok_off[id];
}

/* Unicode NFC of valid UTF-8 s[0, n) into *out (replacing its contents); false: no memory. */
bool sq_nfc(const char *s, size_t n, sq_tok_buf *out);

/* Runs the tokenizer's normalizer over s[0, n) into *out (replacing its contents). */
sq_status sq_tok_normalize(const sq_tokenizer *tok, const char *s, size_t n, sq_tok_buf *out,
                           sq_error *err);

/* BPE over one pre-token (UTF-8, non-empty): appends ids to *ids.  Scratch is per call. */
typedef struct sq_bpe_scratch sq_bpe_scratch;
sq_bpe_scratch *sq_bpe_scratch_create(void);
void sq_bpe_scratch_destroy(sq_bpe_scratch *s);
bool sq_bpe_word(const sq_tokenizer *tok, sq_bpe_scratch *s, const char *w, size_t n,
                 int32_t **ids, size_t *n_ids, size_t *cap_ids);

#endif
