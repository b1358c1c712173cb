#!/usr/bin/env python3
"""Reference vectors for the tokenizer module (tests/test_tokenizer.c).

Trains small BPE tokenizers with pip's `tokenizers` on the project's shared docs, shaped like
the families shardq supports, and records how the library encodes and decodes a varied corpus:

  llama3.json    byte-level: Split(Llama-3 regex, Isolated) + ByteLevel, ignore_merges,
                 <|begin_of_text|> BOS via TemplateProcessing, merges as ["a", "b"] pairs
  qwen2.json     byte-level: NFC normalizer, Split(Qwen2 regex) + ByteLevel, no BOS, ChatML
                 specials
  gpt2.json      byte-level: ByteLevel(use_regex) pre-tokenizer (the GPT-2 regex), no BOS
  llama2.json    SentencePiece-style: Prepend("▁") + Replace(" ", "▁") normalizers, no
                 pre-tokenizer, byte_fallback <0xNN> tokens, decoder Replace/ByteFallback/
                 Fuse/Strip, <s> BOS, merges as "a b" strings (the older serialization)
  mistral.json   the llama2 model with the newer Metaspace(prepend_scheme "first") pre-tokenizer
                 and a Metaspace + ByteFallback + Fuse decoder
  flags.json     the llama2 model plus added tokens with lstrip / rstrip / single_word /
                 normalized flags

For each NAME.json, NAME.expected holds, per corpus entry:
  case K
  text HEX                      (UTF-8 bytes of the input)
  ids1 N id...                  encode(text, add_special_tokens=True)
  ids0 N id...                  encode(text, add_special_tokens=False)
  dec1 HEX                      decode(ids1, skip_special_tokens=False)
  dec0 HEX                      decode(ids1, skip_special_tokens=True) ("=": same as dec1)
  rt 0|1                        decode(ids0) == text in the library

Run from the repository root:  python3 tests/reference/gen_tokenizers.py
Output: tests/reference/tokenizers/  (committed; the C test needs no Python).  The library's
BPE trainer breaks ties differently from run to run, so a rerun gives a different (equally
good) set: commit the .json and .expected files together.
"""
import glob
import json
import os
import sys
import unicodedata

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokenizers")

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# A little text in other scripts so that some merges exist outside ASCII.
EXTRA = """
Café déjà vu, naïve façade, São Paulo, Zürich, Ærøskøbing, señor, crème brûlée.
日本語のテキストと中文文本。我们的模型在多个节点上运行。東京と大阪。
한국어 텍스트도 있습니다. Русский текст и ещё немного. Ελληνικά γράμματα.
Emoji 😀 😀 👍 🚀 🚀 and numbers 1234567890 3.14159 2024-01-31.
def main():\n    return [x * 2 for x in range(10)]\n
"""


def training_text():
    files = sorted(glob.glob("/work/shared/*.md") + glob.glob("/work/shared/reference/*.md"))
    if not files:  # anywhere else: the repository's own docs and sources
        root = os.path.dirname(os.path.dirname(HERE))
        files = sorted(glob.glob(os.path.join(root, "*.md")) +
                       glob.glob(os.path.join(root, "include/shardq/*.h")))
    lines = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            lines.extend(fh.read().splitlines())
    lines.extend(EXTRA.splitlines())
    return [ln for ln in lines if ln.strip()]


def corpus():
    para = ("shardq loads a Hugging Face causal LM across the GPUs of one or many nodes under "
            "mpirun, plans where every decoder layer goes, quantizes each rank's share to 4 "
            "bits on the fly, and runs pipeline-parallel 4-bit inference.")
    return [
        "",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        para,
        "Café déjà vu — naïve façade, Ærøskøbing, São Paulo, Ünïcödé, ÀÉÎÕÜ",
        "日本語のテキストと中文文本，还有한국어 텍스트。東京",
        "Emoji: 😀👍🏽🇫🇷 family 👨\u200d👩\u200d👧\u200d👦 done 🚀",
        "1234567890 3.14159 1,000,000 and 007 x12345y 2024-01-31 ½ ² Ⅻ ٣٤٥",
        "a  b   c    d\n\n\ne\r\nf \n \n  g   ",
        "   leading and trailing   ",
        "\n",
        "    ",
        " ",
        "\tindented\t\ttabs\t \t",
        "int main(void) {\n    printf(\"%d\\n\", x[i] + 0x1F);\n    return 0; // done\n}\n",
        "def f(a, b=3):\n\tif a != b:  # compare\n\t\treturn {'k': [1, 2]}\n",
        "I'm sure they've, we'll, you'd, it's, DON'T, She'S, O'Neil 'ſ 're",
        "<s>Hello</s> and <|begin_of_text|>hi<|eot_id|> <|im_start|>user\nhey<|im_end|>",
        "text with <s> inside <s><s> and </s> <unk> <0x41>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
        "<|endoftext|>after",
        "Ελληνικά Русский עברית العربية हिन्दी ไทย",
        "Cafe\u0301 (decomposed) and \u212b (angstrom sign), \u1e0b\u0323 \u0071\u0307\u0323",
        "\u1100\u1161\u11a8 \uac00\u11a8 Tiếng Việt: Tie\u0302\u0301ng Vie\u0323\u0302t",
        "a\u00a0b\u2003c\u3000d\u2028e\u0085f\u000bg\u000ch",
        "\x00\x01\x7f bell\x07 esc\x1b[0m",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "!!!!!!???... ---------- ==== ~~~ ``` ''' \"\"\"",
        "ﬁne ligature, Straße, İstanbul, ǅ title-case",
        "▁already▁has▁metaspace ▁",
        "https://huggingface.co/meta-llama/Meta-Llama-3-8B?x=1&y=%20#frag",
        "mixed\r\n\r\nline\rendings\n\r",
        "x" + "!" * 3 + " " * 7 + "y" + "\n" * 5 + "z",
    ]


def random_cases(n=70, seed=1234):
    """Short random strings over the characters the pre-tokenizer regexes treat differently:
    letters of several scripts, digits, contractions, every kind of whitespace, punctuation,
    special-token strings, emoji."""
    import random
    rng = random.Random(seed)
    units = (list("aAbZ'sStTrRvVmMlLdDx") + ["'s", "'S", "'re", "'LL", "'ſ", "ſ"] +
             list("0123456789") + ["½", "Ⅻ", "٣", "²"] +
             [" ", " ", " ", "  ", "\t", "\n", "\n", "\r", "\r\n", "\u00a0", "\u2003",
              "\u0085", "\u000b", "\u3000"] +
             list(".,!?-_()<>/|\"#{}") + ["é", "ß", "日本", "語", "한", "Ж", "😀", "👍🏽", "▁"] +
             ["<s>", "</s>", "<|eot_id|>", "<|im_start|>", "<|endoftext|>", "<unk>"])
    out = []
    for _ in range(n):
        k = rng.randint(1, 24)
        out.append("".join(rng.choice(units) for _ in range(k)))
    return out


def train_byte_level(pattern_re, specials, vocab_size, text, use_split=True):
    tok = Tokenizer(models.BPE(ignore_merges=False))
    if use_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern_re), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text, trainer)
    return tok


def make_llama3(text):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = train_byte_level(LLAMA3_RE, [], 1500, text)
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True  # as Llama-3 ships
    return Tokenizer.from_str(json.dumps(d))


def make_qwen2(text):
    tok = train_byte_level(QWEN2_RE, [], 1200, text)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def make_gpt2(text):
    tok = train_byte_level(None, [], 1000, text, use_split=False)
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def make_llama2(text):
    """SentencePiece-style BPE.  Trained with a Metaspace pre-tokenizer (so merges stay inside
    words), then given Llama-2's legacy layout; the 256 <0xNN> byte tokens are put at ids 3..258
    as in Llama-2 (ordinary vocabulary entries, not added tokens)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=90, show_progress=False)
    tok.train_from_iterator(text, trainer)
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    fixed = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        fixed["<0x%02X>" % b] = 3 + b
    for t, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if t not in fixed:
            fixed[t] = len(fixed)
    d["model"]["vocab"] = fixed
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    d["added_tokens"] = [
        {"id": fixed[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for t in ("<unk>", "<s>", "</s>")]
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    d["pre_tokenizer"] = None
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    d["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return d


def make_mistral(llama2_json):
    d = json.loads(json.dumps(llama2_json))
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                          "split": False}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    d["added_tokens"].append({"id": len(d["model"]["vocab"]), "content": "[INST]",
                              "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True})
    return d


def make_flags(base_json):
    """The llama2 tokenizer plus added tokens with every flag the library honours: lstrip,
    rstrip, single_word, normalized (matched by its normalized form) and not."""
    d = json.loads(json.dumps(base_json))
    n = len(d["model"]["vocab"])
    extra = [("<mask>", dict(lstrip=True, special=True, normalized=False)),
             (" foo", dict(rstrip=True, special=False, normalized=False)),
             ("bar", dict(single_word=True, special=False, normalized=True)),
             ("x y", dict(rstrip=True, special=False, normalized=True)),
             ("▁hello", dict(special=False, normalized=True)),
             ("hello", dict(lstrip=True, special=False, normalized=False))]
    for i, (content, flags) in enumerate(extra):
        a = dict(id=n + i, content=content, single_word=False, lstrip=False, rstrip=False,
                 normalized=False, special=False)
        a.update(flags)
        d["added_tokens"].append(a)
    return d


def write_expected(name, tok, texts):
    lines = [f"# {name}.json: expected ids/texts from tokenizers {__import__('tokenizers').__version__}"]
    for k, text in enumerate(texts):
        e1 = tok.encode(text, add_special_tokens=True).ids
        e0 = tok.encode(text, add_special_tokens=False).ids
        d1 = tok.decode(e1, skip_special_tokens=False)
        d0 = tok.decode(e1, skip_special_tokens=True)
        rt = tok.decode(e0, skip_special_tokens=False) == text
        lines.append(f"case {k}")
        lines.append("text " + text.encode("utf-8").hex())
        lines.append(f"ids1 {len(e1)} " + " ".join(map(str, e1)))
        lines.append(f"ids0 {len(e0)} " + " ".join(map(str, e0)))
        lines.append("dec1 " + d1.encode("utf-8").hex())
        lines.append("dec0 " + ("=" if d0 == d1 else d0.encode("utf-8").hex()))
        lines.append(f"rt {int(rt)}")
    with open(os.path.join(OUT, name + ".expected"), "w") as f:
        f.write("\n".join(lines) + "\n")


def save(name, tok_or_json):
    path = os.path.join(OUT, name + ".json")
    if isinstance(tok_or_json, dict):
        text = json.dumps(tok_or_json, ensure_ascii=False, indent=1)
    else:
        text = json.dumps(json.loads(tok_or_json.to_str()), ensure_ascii=False, indent=1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Tokenizer.from_file(path)


def main():
    os.makedirs(OUT, exist_ok=True)
    text = training_text()
    texts = corpus() + random_cases()
    llama2 = make_llama2(text)
    for name, obj in [("llama3", make_llama3(text)), ("qwen2", make_qwen2(text)),
                      ("gpt2", make_gpt2(text)), ("llama2", llama2),
                      ("mistral", make_mistral(llama2)), ("flags", make_flags(llama2))]:
        tok = save(name, obj)
        write_expected(name, tok, texts)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(texts)} cases, "
              f"{os.path.getsize(os.path.join(OUT, name + '.json'))} bytes")


if __name__ == "__main__":
    main()
