/* Private to the tokenizer module: generated Unicode range tables (unicode_tables.c, made by
 * tests/reference/gen_unicode_tables.py).  Each table is sorted, non-overlapping, inclusive
 * [first, last] code-point ranges.  Read-only data; never modified at run time. */
#ifndef SQ_TOKENIZER_UNICODE_TABLES_H
#define SQ_TOKENIZER_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

extern const uint32_t sq_uni_letter_ranges[][2]; /* \p{L}: Lu Ll Lt Lm Lo */
extern const size_t sq_uni_letter_n_ranges;
extern const uint32_t sq_uni_number_ranges[][2]; /* \p{N}: Nd Nl No */
extern const size_t sq_uni_number_n_ranges;
extern const uint32_t sq_uni_word_ranges[][2]; /* Rust regex \w */
extern const size_t sq_uni_word_n_ranges;
extern const uint32_t sq_uni_nfc_unstable_ranges[][2]; /* may change under NFC */
extern const size_t sq_uni_nfc_unstable_n_ranges;

/* NFC data (Hangul is algorithmic and not in these) */
extern const uint32_t sq_uni_ccc[][3]; /* {first, last, canonical combining class}, sorted */
extern const size_t sq_uni_ccc_n;
extern const uint32_t sq_uni_decomp[][3]; /* {cp, offset, length} into the pool, sorted */
extern const size_t sq_uni_decomp_n;
extern const uint32_t sq_uni_decomp_pool[]; /* full canonical decompositions */
extern const uint32_t sq_uni_comp[][3]; /* {first, second, composite}, sorted by the pair */
extern const size_t sq_uni_comp_n;

#endif
