/* Owns the exact byte counts: dense tensors, bitsandbytes 4-bit storage (see size.h for the
 * layout and what is excluded), KV cache.  Pure functions.
 * Must never do I/O, allocate, or round: every figure is an exact integer (saturating). */
#include "shardq/size.h"

#include <string.h>

sq_quant_scheme sq_quant_scheme_default(void) {
    sq_quant_scheme s = {.type = SQ_QUANT_NF4, .double_quant = false, .blocksize = 64,
                         .dense_dtype = SQ_DTYPE_BF16};
    return s;
}

bool sq_quant_scheme_equal(const sq_quant_scheme *a, const sq_quant_scheme *b) {
    if (a->type != b->type) return false;
    if (sq_quant_type_is_int8(a->type)) return true;   /* one scale per row: nothing else */
    return a->double_quant == b->double_quant && a->blocksize == b->blocksize;
}

sq_status sq_quant_scheme_check(const sq_quant_scheme *s, sq_error *err) {
    if (!s) return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "no quantization scheme");
    if ((unsigned)s->type > SQ_QUANT_INT8_ZP)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "unknown quantization type %d",
                            (int)s->type);
    if ((unsigned)s->dense_dtype >= SQ_DTYPE_COUNT)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL, "unknown dense dtype %d",
                            (int)s->dense_dtype);
    if (s->type == SQ_QUANT_NONE) return SQ_OK;
    if (sq_quant_type_is_int8(s->type)) {
        if (s->double_quant)
            return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                                "double quant applies to 4-bit absmax, not to %s (one scale per row)",
                                sq_quant_type_name(s->type));
        return SQ_OK;   /* blocksize unused */
    }
    /* bitsandbytes accepts 32 (from 0.50) .. 4096, powers of two */
    if (s->blocksize < 32 || s->blocksize > 4096 || (s->blocksize & (s->blocksize - 1)) != 0)
        return sq_error_set(err, SQ_ERR_INVALID, NULL, NULL,
                            "blocksize %lld is not a power of two in [32, 4096]",
                            (long long)s->blocksize);
    return SQ_OK;
}

const char *sq_quant_type_name(sq_quant_type t) {
    switch (t) {
    case SQ_QUANT_NONE: return "none";
    case SQ_QUANT_NF4: return "nf4";
    case SQ_QUANT_FP4: return "fp4";
    case SQ_QUANT_INT8: return "int8";
    case SQ_QUANT_INT8_ZP: return "int8-zp";
    }
    return "unknown";
}

bool sq_quant_type_from_name(const char *name, sq_quant_type *out) {
    static const sq_quant_type k[] = {SQ_QUANT_NONE, SQ_QUANT_NF4, SQ_QUANT_FP4, SQ_QUANT_INT8,
                                      SQ_QUANT_INT8_ZP};
    if (!name) return false;
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(name, sq_quant_type_name(k[i]))) {
            *out = k[i];
            return true;
        }
    return false;
}

static uint64_t sat_mul(uint64_t a, uint64_t b) {
    uint64_t r;
    return sq_mul_u64(a, b, &r) ? r : UINT64_MAX;
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
    uint64_t r;
    return sq_add_u64(a, b, &r) ? r : UINT64_MAX;
}

uint64_t sq_size_4bit_packed_bytes(uint64_t n) { return n / 2 + (n & 1); }

uint64_t sq_size_4bit_n_blocks(uint64_t n, int64_t blocksize) {
    SQ_ASSERT(blocksize > 0);
    return sq_ceil_div_u64(n, (uint64_t)blocksize);
}

uint64_t sq_size_dense_bytes(uint64_t n, sq_dtype d) {
    SQ_ASSERT((unsigned)d < SQ_DTYPE_COUNT);
    return sat_mul(n, sq_dtype_size(d));
}

sq_4bit_parts sq_size_4bit_parts(uint64_t n, const sq_quant_scheme *s) {
    SQ_ASSERT(s && (s->type == SQ_QUANT_NF4 || s->type == SQ_QUANT_FP4));
    SQ_ASSERT(s->blocksize >= 32 && s->blocksize <= 4096);
    sq_4bit_parts p;
    memset(&p, 0, sizeof p);
    p.packed = sq_size_4bit_packed_bytes(n);
    p.n_blocks = sq_size_4bit_n_blocks(n, s->blocksize);
    p.quant_map = SQ_BNB_QUANT_MAP_BYTES;
    if (s->double_quant) {
        p.absmax = p.n_blocks;   /* uint8 codes */
        p.n_nested_blocks = sq_ceil_div_u64(p.n_blocks, SQ_BNB_NESTED_BLOCKSIZE);
        p.nested_absmax = p.n_nested_blocks * 4;
        p.nested_quant_map = SQ_BNB_NESTED_MAP_BYTES;
    } else {
        p.absmax = p.n_blocks * 4;   /* n_blocks <= n / 32: cannot overflow */
    }
    p.total = sat_add(sat_add(sat_add(p.packed, p.absmax), sat_add(p.nested_absmax,
                                                                   p.nested_quant_map)),
                      p.quant_map);
    return p;
}

uint64_t sq_size_4bit_bytes(uint64_t n, const sq_quant_scheme *s) {
    SQ_ASSERT(s);
    if (s->type == SQ_QUANT_NONE) return sq_size_dense_bytes(n, s->dense_dtype);
    return sq_size_4bit_parts(n, s).total;
}

uint64_t sq_size_int8_bytes(uint64_t rows, uint64_t cols, sq_quant_type t) {
    SQ_ASSERT(sq_quant_type_is_int8(t));
    uint64_t b = sat_add(sat_mul(rows, cols), sat_mul(rows, 4));
    return t == SQ_QUANT_INT8_ZP ? sat_add(b, rows) : b;
}

uint64_t sq_size_weight_bytes(uint64_t rows, uint64_t cols, const sq_quant_scheme *s) {
    SQ_ASSERT(s);
    if (sq_quant_type_is_int8(s->type)) return sq_size_int8_bytes(rows, cols, s->type);
    return sq_size_4bit_bytes(sat_mul(rows, cols), s);
}

uint64_t sq_size_kv_bytes_per_layer(const sq_model_config *c, uint64_t n_tokens, sq_dtype kv) {
    SQ_ASSERT(c && c->n_kv_heads > 0 && c->head_dim > 0);
    uint64_t per_token = sat_mul(sat_mul(2, (uint64_t)c->n_kv_heads), (uint64_t)c->head_dim);
    return sat_mul(sat_mul(per_token, n_tokens), sq_dtype_size(kv));
}
