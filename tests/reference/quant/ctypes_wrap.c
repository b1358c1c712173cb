/* ctypes entry point for tests/reference/quant/check_large.py (reference tooling, not product code):
 *   mpicc -O2 -fPIC -shared -ffp-contract=off -D_GNU_SOURCE -Iinclude -o /tmp/libsqq.so \
 *         tests/reference/quant/ctypes_wrap.c src/quant/*.c src/core/*.c -lpthread -lm */
#include "shardq/quant.h"
#include <stdlib.h>
#include <string.h>
int sqq(int dt, const void *src, long rows, long cols, int fp4, int dq, long bs, int tt, int isa,
        unsigned char *packed, float *absmax, unsigned char *absmax_q, float *nested, float *offset, void *deq) {
    sq_quant_scheme s = {.type = fp4 ? SQ_QUANT_FP4 : SQ_QUANT_NF4, .double_quant = 0, .blocksize = bs};
    sq_qtensor q; sq_error err;
    sq_dtype d = dt == 0 ? SQ_DTYPE_F32 : dt == 1 ? SQ_DTYPE_F16 : SQ_DTYPE_BF16;
    if (sq_quant_4bit_isa(d, src, rows, cols, &s, NULL, isa, &q, &err) != SQ_OK) return 1;
    memcpy(packed, q.packed, (q.n_elements + 1) / 2);
    if (dq) {
        q.double_quant = 1;
        q.absmax_q = malloc(q.n_blocks); q.nested_absmax = malloc(((q.n_blocks + 255) / 256) * 4);
        q.nested_blocksize = 256;
        if (sq_qtensor_compress_ex(&q, tt, &err) != SQ_OK) return 2;
        memcpy(absmax_q, q.absmax_q, q.n_blocks);
        memcpy(nested, q.nested_absmax, ((q.n_blocks + 255) / 256) * 4);
        *offset = q.nested_offset;
    } else memcpy(absmax, q.absmax, q.n_blocks * 4);
    if (sq_dequant_4bit(&q, deq, d, &err) != SQ_OK) return 3;
    sq_qtensor_free(&q);
    return 0;
}
