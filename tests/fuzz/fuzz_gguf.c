/* libFuzzer target: feeds arbitrary bytes to sq_gguf_check (the GGUF header, metadata and
 * tensor-info parser of the checkpoint module) as a whole file, and as the prefix of a file
 * twice as long.  Owns nothing else; must never touch the file system. */
#include <stddef.h>
#include <stdint.h>

#include "shardq/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sq_error err;
    sq_error_init(&err, -1);
    size_t n = 0;
    sq_status st = sq_gguf_check(data, size, size, "fuzz.gguf", &n, &err);
    if (st == SQ_OK && size < 24) __builtin_trap();   /* magic, version and two counts */
    if (st != SQ_OK && (err.code != st || err.msg[0] == '\0')) __builtin_trap();
    sq_error_init(&err, -1);
    (void)sq_gguf_check(data, size, (uint64_t)size * 2, "fuzz.gguf", &n, &err);
    return 0;
}
