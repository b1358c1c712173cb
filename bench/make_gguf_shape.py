#!/usr/bin/env python3
"""Writes a Llama-architecture GGUF of a chosen shape with random BF16 weights (norms F32), and
the real tokenizer of another GGUF (SmolLM2's by default), so that llama.cpp's tools and shardq
read the very same file: a full-size model for speed comparisons, where the values do not
matter.  A benchmark helper (bench/compare_llamacpp.sh), never used by the test suite.

usage: make_gguf_shape.py --tokenizer-from SMOLLM2.gguf --out OUT.gguf
                          [--hidden 2048] [--ffn 8192] [--layers 16] [--heads 32]
                          [--kv-heads 8] [--seed 0]
The defaults are Llama-3.2-1B's shape with SmolLM2's 49,152-token vocabulary (1.07 B parameters,
2.1 GB).  Written to OUT.gguf.tmp and renamed.
"""
import argparse
import os
import sys

import numpy as np
import gguf


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads or a.hidden % 32 or a.ffn % 32:
        sys.exit("make_gguf_shape: hidden must divide by heads and 32, heads by kv-heads, ffn by 32")

    src = gguf.GGUFReader(a.tokenizer_from)
    tokens = field_value(src, "tokenizer.ggml.tokens")
    vocab = len(tokens)
    head_dim = a.hidden // a.heads
    tmp = a.out + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"random-llama-{a.layers}x{a.hidden}")
    w.add_block_count(a.layers)
    w.add_context_length(4096)
    w.add_embedding_length(a.hidden)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model(field_value(src, "tokenizer.ggml.model"))
    w.add_tokenizer_pre(field_value(src, "tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(field_value(src, "tokenizer.ggml.token_type"))
    w.add_token_merges(field_value(src, "tokenizer.ggml.merges"))
    for key, add in (("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                     ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                     ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
                     ("tokenizer.ggml.padding_token_id", w.add_pad_token_id),
                     ("tokenizer.ggml.add_bos_token", w.add_add_bos_token),
                     ("tokenizer.ggml.add_space_prefix", w.add_add_space_prefix),
                     ("tokenizer.chat_template", w.add_chat_template)):
        if key in src.fields:
            add(field_value(src, key))

    rng = np.random.default_rng(a.seed)

    def bf16(shape, std):
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        return (x.view(np.uint32) >> 16).astype(np.uint16)

    def add_bf16(name, shape, std=0.02):
        w.add_tensor(name, bf16(shape, std), raw_dtype=gguf.GGMLQuantizationType.BF16)

    def add_norm(name):
        w.add_tensor(name, np.ones(a.hidden, dtype=np.float32))

    kv = a.kv_heads * head_dim
    add_bf16("token_embd.weight", (vocab, a.hidden))
    add_norm("output_norm.weight")
    for i in range(a.layers):
        p = f"blk.{i}."
        add_norm(p + "attn_norm.weight")
        add_bf16(p + "attn_q.weight", (a.hidden, a.hidden))
        add_bf16(p + "attn_k.weight", (kv, a.hidden))
        add_bf16(p + "attn_v.weight", (kv, a.hidden))
        add_bf16(p + "attn_output.weight", (a.hidden, a.hidden))
        add_norm(p + "ffn_norm.weight")
        add_bf16(p + "ffn_gate.weight", (a.ffn, a.hidden))
        add_bf16(p + "ffn_up.weight", (a.ffn, a.hidden))
        add_bf16(p + "ffn_down.weight", (a.hidden, a.ffn), std=0.02 / np.sqrt(2 * a.layers))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, a.out)
    n = vocab * a.hidden + a.layers * (2 * a.hidden * a.hidden + 2 * kv * a.hidden + 3 * a.ffn * a.hidden)
    print(f"make_gguf_shape: {a.out}: {n / 1e9:.2f} B parameters, {os.path.getsize(a.out) / 1e9:.2f} GB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
