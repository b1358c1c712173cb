/* libFuzzer target: feeds arbitrary bytes to sq_st_header_check as a whole file (and, from
 * the same bytes, as a truncated prefix of a larger file).  Owns nothing else; must never
 * touch the file system. */
#include <stddef.h>
#include <stdint.h>

#include "shardq/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sq_error err;
    sq_error_init(&err, -1);
    size_t n = 0;
    sq_status st = sq_st_header_check(data, size, size, "fuzz.safetensors", &n, &err);
    /* a success must describe a header that fits what was given */
    if (st == SQ_OK && size < 8) __builtin_trap();
    if (st != SQ_OK && (err.code != st || err.msg[0] == '\0')) __builtin_trap();
    /* the same bytes as the first part of a file twice as long */
    sq_error_init(&err, -1);
    (void)sq_st_header_check(data, size, (uint64_t)size * 2, "fuzz.safetensors", &n, &err);
    return 0;
}
