#!/usr/bin/env python3
"""Generates src/tokenizer/unicode_tables.c: sorted code-point ranges for the regex classes
\\p{L} and \\p{N} that the byte-level pre-tokenizer patterns use, read off the Oniguruma inside
pip's `tokenizers` itself (its Unicode version is newer than Python's unicodedata); \\w as
Rust's regex crate defines it (single_word added tokens), from the `regex` module; and the code
points NFC may change (text free of them is its own NFC) with the data NFC needs (combining
classes, full canonical decompositions, primary compositions), from unicodedata, each item
kept only where the library's own (older) NFC agrees.
(\\s is the Unicode White_Space property, 25 code points, written by hand in pretok.c.)

Run:  python3 tests/reference/gen_unicode_tables.py > src/tokenizer/unicode_tables.c
The output is committed; the build needs no Python."""
import sys
import unicodedata


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        ok = pred(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def cat(cp):
    return unicodedata.category(chr(cp))


def nfc_data():
    """NFC data as the tokenizers library has it.  Its NFC comes from an older Unicode than
    Python's unicodedata, so every item is checked against the library's own NFD/NFC
    normalizers and kept only where the library agrees: combining classes (ranges),
    full canonical decompositions, primary composition pairs, and the code points NFC may
    change in some context (text free of them is its own NFC)."""
    from tokenizers import normalizers
    nfd, nfc = normalizers.NFD(), normalizers.NFC()

    def is_hangul(cp):
        return 0xAC00 <= cp < 0xAC00 + 11172 or 0x1100 <= cp < 0x1200

    cand = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and not is_hangul(cp)
            and (unicodedata.combining(chr(cp)) or unicodedata.decomposition(chr(cp)))]
    classes = {}
    for cp in cand:
        k = unicodedata.combining(chr(cp))
        if not k:
            continue
        # the library knows cp's class (it never changes once given) when it reorders by it
        probe = ("a" + chr(cp) + "\u0334") if k > 1 else ("a\u0301" + chr(cp))
        if nfd.normalize_str(probe) != probe:
            classes[cp] = k
    ccc = []
    for cp in sorted(classes):
        c = classes[cp]
        if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == c:
            ccc[-1][1] = cp
        else:
            ccc.append([cp, cp, c])

    decomp, pool, comp = [], [], []
    for cp in cand:
        full = [ord(ch) for ch in nfd.normalize_str(chr(cp))]
        if full == [cp]:
            continue
        decomp.append((cp, len(pool), len(full)))
        pool.extend(full)
        d = unicodedata.decomposition(chr(cp))
        parts = [int(x, 16) for x in d.split()] if d and not d.startswith("<") else []
        if len(parts) == 2 and nfc.normalize_str(chr(parts[0]) + chr(parts[1])) == chr(cp):
            comp.append((parts[0], parts[1], cp))
    comp.sort()

    unstable = set(classes) | {b for _, b, _ in comp}
    unstable |= {cp for cp, _, _ in decomp if nfc.normalize_str(chr(cp)) != chr(cp)}
    unstable |= set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V, T
    return ccc, decomp, pool, comp, unstable


def emit_rows(ctype, name, rows, per_line):
    print(f"const {ctype} {name}[][{len(rows[0])}] = {{")
    for i in range(0, len(rows), per_line):
        row = " ".join("{" + ", ".join(f"0x{v:X}" for v in r) + "}," for r in rows[i:i + per_line])
        print(f"    {row}")
    print("};")
    print(f"const size_t {name}_n = {len(rows)};")
    print()


def emit(name, rs):
    print(f"const uint32_t {name}[][2] = {{")
    for i in range(0, len(rs), 4):
        row = " ".join(f"{{0x{a:05X}, 0x{b:05X}}}," for a, b in rs[i:i + 4])
        print(f"    {row}")
    print("};")
    print(f"const size_t {name.replace('ranges', 'n_ranges')} = {len(rs)};")
    print()


def regex_pred(pattern):
    """A class as the `regex` module (recent Unicode tables) sees it."""
    import regex
    rx = regex.compile(pattern)
    return lambda cp: not (0xD800 <= cp <= 0xDFFF) and rx.match(chr(cp)) is not None


def onig_pred(cls):
    """A class exactly as the Oniguruma inside pip's `tokenizers` (the reference shardq must
    equal) sees it: every code point goes through a Split pre-tokenizer that removes the
    characters outside the class."""
    from tokenizers import Regex, pre_tokenizers
    split = pre_tokenizers.Split(Regex("[^" + cls + "]+"), behavior="removed")
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    members = set()
    for piece, _ in split.pre_tokenize_str(text):
        members.update(ord(ch) for ch in piece)
    return lambda cp: cp in members


WHITE_SPACE = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F,
               0x205F, 0x3000} | set(range(0x2000, 0x200B))


def main():
    letters = ranges(onig_pred(r"\p{L}"))
    numbers = ranges(onig_pred(r"\p{N}"))
    space = onig_pred(r"\s")
    bad = [cp for cp in range(0x110000) if space(cp) != (cp in WHITE_SPACE)]
    if bad:  # pretok.c hard-codes \s: it must be told
        sys.exit("\\s differs from pretok.c's White_Space list at " + ", ".join(map(hex, bad)))
    # Rust regex's \w, which the tokenizers library uses for single_word added tokens
    # (limited to the code points the tokenizers library's Unicode version has assigned)
    assigned = onig_pred(r"\P{Cn}")
    word_rx = regex_pred(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]")
    word = ranges(lambda cp: assigned(cp) and word_rx(cp))
    import regex
    import tokenizers
    print("/* GENERATED by tests/reference/gen_unicode_tables.py: \\p{L} \\p{N} probed from "
          f"tokenizers {tokenizers.__version__} (its Oniguruma), \\w from the `regex` module "
          f"{regex.__version__},\n * NFC data from Python {sys.version.split()[0]} unicodedata "
          f"(Unicode {unicodedata.unidata_version}) as far as tokenizers' NFC agrees.")
    print(" * Do not edit.  Owns the character-class range tables of the tokenizer module; "
          "holds no code. */")
    print('#include "unicode_tables.h"')
    print()
    emit("sq_uni_letter_ranges", letters)
    emit("sq_uni_number_ranges", numbers)
    emit("sq_uni_word_ranges", word)
    ccc, decomp, pool, comp, unstable = nfc_data()
    emit("sq_uni_nfc_unstable_ranges", ranges(lambda cp: cp in unstable))
    emit_rows("uint32_t", "sq_uni_ccc", ccc, 6)             # {first, last, class}
    emit_rows("uint32_t", "sq_uni_decomp", decomp, 6)       # {cp, offset in pool, length}
    print("const uint32_t sq_uni_decomp_pool[] = {")
    for i in range(0, len(pool), 10):
        print("    " + " ".join(f"0x{v:X}," for v in pool[i:i + 10]))
    print("};")
    print()
    emit_rows("uint32_t", "sq_uni_comp", comp, 5)           # {first, second, composite}


if __name__ == "__main__":
    main()
