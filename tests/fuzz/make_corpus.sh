#!/bin/sh
# Regenerates the seed corpus of fuzz_st_header (tests/fuzz/corpus_st/): a few tiny valid
# files (ok_*) and one of each kind of bad header (bad_*).  test_safetensors replays them and
# checks that ok_* pass and bad_* fail.  Usage: tests/fuzz/make_corpus.sh
set -eu
out=$(dirname "$0")/corpus_st
mkdir -p "$out"
# mk NAME HEADER N_DATA_BYTES [HEADER_LENGTH]
mk() {
    n=${4:-$(printf '%s' "$2" | wc -c)}
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o\\%03o\\000\\000\\000' $((n & 255)) $(((n >> 8) & 255)) \
        $(((n >> 16) & 255)) $(((n >> 24) & 255)) $(((n >> 32) & 255)))" > "$out/$1"
    printf '%s' "$2" >> "$out/$1"
    head -c "$3" /dev/zero >> "$out/$1"
}
mk ok_empty_header '{}      ' 0
mk ok_two_tensors '{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[],"data_offsets":[8,12]}}' 12
mk ok_metadata '{"__metadata__":{"format":"pt"},"w":{"dtype":"F8_E4M3","shape":[3,0],"data_offsets":[0,0]},"x":{"dtype":"I64","shape":[1,1,1,1,1,1,1,1],"data_offsets":[0,8]}}   ' 8
mk ok_all_dtypes '{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"c":{"dtype":"I32","shape":[1],"data_offsets":[16,20]},"d":{"dtype":"F16","shape":[1],"data_offsets":[20,22]},"e":{"dtype":"I16","shape":[1],"data_offsets":[22,24]},"f":{"dtype":"I8","shape":[1],"data_offsets":[24,25]},"g":{"dtype":"U8","shape":[1],"data_offsets":[25,26]},"h":{"dtype":"BOOL","shape":[1],"data_offsets":[26,27]},"i":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[27,28]}}' 28
: > "$out/bad_empty"
printf '\002\000\000\000\000' > "$out/bad_short"
mk bad_header_too_long '{}' 0 64
mk bad_header_over_cap '{}' 0 4294967295
mk bad_not_json '{"a":{"dtype":' 0
mk bad_not_object '[{"dtype":"F32"}]' 0
mk bad_dtype '{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}' 1
mk bad_span '{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}' 24
mk bad_past_end '{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}' 8
mk bad_overlap '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}' 6
mk bad_duplicate '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}' 2
mk bad_negative_shape '{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}' 0
mk bad_fraction_shape '{"a":{"dtype":"U8","shape":[0.5],"data_offsets":[0,0]}}' 0
