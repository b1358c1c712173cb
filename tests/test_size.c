/* Tests for size: hand-computed bitsandbytes 4-bit figures (and the same figures as
 * bitsandbytes 0.50.2 itself reports them: the byte sizes of QuantState.as_dict(packed=True)
 * plus the packed weight, quant_state JSON excluded), dense sizes, KV cache, schemes. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/size.h"

static sq_quant_scheme scheme(sq_quant_type t, bool dq, int64_t bs) {
    sq_quant_scheme s = sq_quant_scheme_default();
    s.type = t;
    s.double_quant = dq;
    s.blocksize = bs;
    return s;
}

START_TEST(nf4_4096x4096) {
    const uint64_t n = 4096ull * 4096ull;
    sq_quant_scheme s = scheme(SQ_QUANT_NF4, false, 64);
    sq_4bit_parts p = sq_size_4bit_parts(n, &s);
    /* packed: 16,777,216 / 2; absmax: 262,144 blocks * 4 bytes; quant_map: 16 * 4 */
    ck_assert_uint_eq(p.packed, 8388608u);
    ck_assert_uint_eq(p.n_blocks, 262144u);
    ck_assert_uint_eq(p.absmax, 1048576u);
    ck_assert_uint_eq(p.nested_absmax, 0);
    ck_assert_uint_eq(p.nested_quant_map, 0);
    ck_assert_uint_eq(p.quant_map, 64);
    ck_assert_uint_eq(p.total, 8388608u + 1048576u + 64u);   /* 9,437,248 */
    ck_assert_uint_eq(sq_size_4bit_bytes(n, &s), 9437248u);
    /* 4.5 bits per weight, plus the 64-byte map */
    ck_assert_uint_eq((p.total - 64) * 8 * 2, n * 9);

    s.double_quant = true;
    p = sq_size_4bit_parts(n, &s);
    /* uint8 absmax per block; float32 nested absmax per 256 blocks (1,024 of them); the
     * 256-entry float32 nested map; the 16-entry quant_map */
    ck_assert_uint_eq(p.packed, 8388608u);
    ck_assert_uint_eq(p.absmax, 262144u);
    ck_assert_uint_eq(p.n_nested_blocks, 1024u);
    ck_assert_uint_eq(p.nested_absmax, 4096u);
    ck_assert_uint_eq(p.nested_quant_map, 1024u);
    ck_assert_uint_eq(p.quant_map, 64u);
    ck_assert_uint_eq(p.total, 8388608u + 262144u + 4096u + 1024u + 64u);   /* 8,655,936 */
    ck_assert_uint_eq(sq_size_4bit_bytes(n, &s), 8655936u);

    /* FP4 stores the same layout */
    s.type = SQ_QUANT_FP4;
    ck_assert_uint_eq(sq_size_4bit_bytes(n, &s), 8655936u);
    s.double_quant = false;
    ck_assert_uint_eq(sq_size_4bit_bytes(n, &s), 9437248u);
}
END_TEST

/* Figures from bitsandbytes 0.50.2 (quantize_4bit on the CPU, as_dict(packed=True)). */
static const struct {
    uint64_t rows, cols;
    bool dq;
    sq_quant_type type;
    int64_t bs;
    uint64_t packed, absmax, nested_absmax, total;
} k_bnb[] = {
    {4096, 4096, false, SQ_QUANT_NF4, 64, 8388608, 1048576, 0, 9437248},
    {4096, 4096, true, SQ_QUANT_NF4, 64, 8388608, 262144, 4096, 8655936},
    {172, 64, true, SQ_QUANT_NF4, 64, 5504, 172, 4, 6768},      /* tiny preset's up_proj */
    {172, 64, false, SQ_QUANT_FP4, 64, 5504, 688, 0, 6256},
    {11, 1, false, SQ_QUANT_NF4, 64, 6, 4, 0, 74},               /* odd n: one padded nibble */
    {64, 172, true, SQ_QUANT_NF4, 128, 5504, 86, 4, 6682},
    {1000, 333, true, SQ_QUANT_NF4, 32, 166500, 10407, 164, 178159},
};

START_TEST(matches_bitsandbytes) {
    int i = _i;
    sq_quant_scheme s = scheme(k_bnb[i].type, k_bnb[i].dq, k_bnb[i].bs);
    sq_4bit_parts p = sq_size_4bit_parts(k_bnb[i].rows * k_bnb[i].cols, &s);
    ck_assert_uint_eq(p.packed, k_bnb[i].packed);
    ck_assert_uint_eq(p.absmax, k_bnb[i].absmax);
    ck_assert_uint_eq(p.nested_absmax, k_bnb[i].nested_absmax);
    ck_assert_uint_eq(p.nested_quant_map, k_bnb[i].dq ? 1024u : 0u);
    ck_assert_uint_eq(p.total, k_bnb[i].total);
}
END_TEST

START_TEST(edges) {
    sq_quant_scheme s = scheme(SQ_QUANT_NF4, true, 64);
    ck_assert_uint_eq(sq_size_4bit_packed_bytes(0), 0);
    ck_assert_uint_eq(sq_size_4bit_packed_bytes(1), 1);
    ck_assert_uint_eq(sq_size_4bit_packed_bytes(7), 4);
    ck_assert_uint_eq(sq_size_4bit_n_blocks(0, 64), 0);
    ck_assert_uint_eq(sq_size_4bit_n_blocks(64, 64), 1);
    ck_assert_uint_eq(sq_size_4bit_n_blocks(65, 64), 2);
    ck_assert_uint_eq(sq_size_4bit_n_blocks(14336ull * 4096ull, 64), 917504);
    /* 257 blocks -> 2 nested blocks */
    sq_4bit_parts p = sq_size_4bit_parts(257 * 64, &s);
    ck_assert_uint_eq(p.n_nested_blocks, 2);
    ck_assert_uint_eq(p.total, 257 * 32 + 257 + 8 + 1024 + 64);
    /* an empty weight still carries its maps */
    p = sq_size_4bit_parts(0, &s);
    ck_assert_uint_eq(p.total, 1024 + 64);
    /* NONE: dense bytes in the dense dtype */
    s.type = SQ_QUANT_NONE;
    s.dense_dtype = SQ_DTYPE_F16;
    ck_assert_uint_eq(sq_size_4bit_bytes(1000, &s), 2000);
}
END_TEST

START_TEST(dense_and_kv) {
    ck_assert_uint_eq(sq_size_dense_bytes(4096ull * 4096ull, SQ_DTYPE_BF16), 33554432u);
    ck_assert_uint_eq(sq_size_dense_bytes(10, SQ_DTYPE_F32), 40);
    ck_assert_uint_eq(sq_size_dense_bytes(10, SQ_DTYPE_F64), 80);
    ck_assert_uint_eq(sq_size_dense_bytes(10, SQ_DTYPE_U8), 10);
    ck_assert_uint_eq(sq_size_dense_bytes(UINT64_MAX / 2, SQ_DTYPE_F32), UINT64_MAX);

    sq_model_config c;
    memset(&c, 0, sizeof c);
    c.n_kv_heads = 8;   /* Llama-3.1-8B */
    c.head_dim = 128;
    /* K and V: 2 * 8 * 128 * 2 bytes = 4 KiB per token per layer */
    ck_assert_uint_eq(sq_size_kv_bytes_per_layer(&c, 1, SQ_DTYPE_BF16), 4096);
    ck_assert_uint_eq(sq_size_kv_bytes_per_layer(&c, 4 * 2048, SQ_DTYPE_BF16), 33554432u);
    ck_assert_uint_eq(sq_size_kv_bytes_per_layer(&c, 3, SQ_DTYPE_F32), 3 * 8192);
    ck_assert_uint_eq(sq_size_kv_bytes_per_layer(&c, UINT64_MAX / 4, SQ_DTYPE_F32), UINT64_MAX);
}
END_TEST

START_TEST(schemes) {
    sq_error err;
    sq_error_init(&err, -1);
    sq_quant_scheme d = sq_quant_scheme_default();
    ck_assert_int_eq(d.type, SQ_QUANT_NF4);
    ck_assert(!d.double_quant);
    ck_assert_int_eq(d.blocksize, 64);
    ck_assert_int_eq(d.dense_dtype, SQ_DTYPE_BF16);
    ck_assert_int_eq(sq_quant_scheme_check(&d, &err), SQ_OK);
    static const int64_t good[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    static const int64_t bad[] = {0, -64, 16, 48, 96, 8192, 63};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        d.blocksize = good[i];
        ck_assert_int_eq(sq_quant_scheme_check(&d, &err), SQ_OK);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d.blocksize = bad[i];
        ck_assert_int_eq(sq_quant_scheme_check(&d, &err), SQ_ERR_INVALID);
        ck_assert(strstr(err.msg, "blocksize") != NULL);
    }
    d.type = SQ_QUANT_NONE;   /* blocksize irrelevant */
    ck_assert_int_eq(sq_quant_scheme_check(&d, &err), SQ_OK);
    d.type = (sq_quant_type)9;
    ck_assert_int_eq(sq_quant_scheme_check(&d, &err), SQ_ERR_INVALID);
    ck_assert_int_eq(sq_quant_scheme_check(NULL, &err), SQ_ERR_INVALID);
    ck_assert_str_eq(sq_quant_type_name(SQ_QUANT_FP4), "fp4");
    sq_quant_type t;
    ck_assert(sq_quant_type_from_name("nf4", &t) && t == SQ_QUANT_NF4);
    ck_assert(sq_quant_type_from_name("none", &t) && t == SQ_QUANT_NONE);
    ck_assert(!sq_quant_type_from_name("int4", &t));
}
END_TEST

/* int8: codes + float32 SCB per row (+ an int8 zero point per row for int8-zp); the scheme's
 * blocksize and double quant do not apply */
START_TEST(int8_sizes) {
    sq_error err;
    sq_error_init(&err, -1);
    ck_assert_uint_eq(sq_size_int8_bytes(4096, 4096, SQ_QUANT_INT8), 16777216ull + 16384ull);
    ck_assert_uint_eq(sq_size_int8_bytes(4096, 4096, SQ_QUANT_INT8_ZP), 16777216ull + 16384ull + 4096ull);
    ck_assert_uint_eq(sq_size_int8_bytes(7, 33, SQ_QUANT_INT8), 7 * 33 + 28);
    ck_assert_uint_eq(sq_size_int8_bytes(UINT64_MAX / 2, 4, SQ_QUANT_INT8), UINT64_MAX);   /* saturates */
    sq_quant_scheme s = sq_quant_scheme_default();
    s.type = SQ_QUANT_INT8;
    s.blocksize = 7;   /* ignored */
    ck_assert_int_eq(sq_quant_scheme_check(&s, &err), SQ_OK);
    ck_assert_uint_eq(sq_size_weight_bytes(576, 1536, &s), 576ull * 1536 + 576 * 4);
    s.double_quant = true;
    ck_assert_int_eq(sq_quant_scheme_check(&s, &err), SQ_ERR_INVALID);
    ck_assert(strstr(err.msg, "double quant") != NULL);
    s.double_quant = false;
    sq_quant_scheme nf4 = sq_quant_scheme_default();
    ck_assert_uint_eq(sq_size_weight_bytes(4096, 4096, &nf4), 9437248ull);
    nf4.type = SQ_QUANT_NONE;
    ck_assert_uint_eq(sq_size_weight_bytes(3, 5, &nf4), 30);
    sq_quant_scheme s2 = s;
    s2.blocksize = 128;
    ck_assert(sq_quant_scheme_equal(&s, &s2));   /* one scale per row either way */
    s2.type = SQ_QUANT_INT8_ZP;
    ck_assert(!sq_quant_scheme_equal(&s, &s2));
    sq_quant_type t;
    ck_assert(sq_quant_type_from_name("int8", &t) && t == SQ_QUANT_INT8);
    ck_assert(sq_quant_type_from_name("int8-zp", &t) && t == SQ_QUANT_INT8_ZP);
    ck_assert_str_eq(sq_quant_type_name(SQ_QUANT_INT8_ZP), "int8-zp");
    ck_assert(sq_quant_type_is_int8(SQ_QUANT_INT8) && !sq_quant_type_is_int8(SQ_QUANT_NF4));
}
END_TEST

int main(void) {
    Suite *s = suite_create("size");
    TCase *tc = tcase_create("size");
    tcase_add_test(tc, nf4_4096x4096);
    tcase_add_loop_test(tc, matches_bitsandbytes, 0, (int)(sizeof k_bnb / sizeof k_bnb[0]));
    tcase_add_test(tc, edges);
    tcase_add_test(tc, dense_and_kv);
    tcase_add_test(tc, schemes);
    tcase_add_test(tc, int8_sizes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
