#!/usr/bin/env python3
"""Drives `shardq serve` with the `openai` Python package (PyPI), as a user's client would.

    python tests/reference/openai_client.py --base-url http://127.0.0.1:8080/v1 [--api-key KEY]
                                            [--expect-greedy TEXT]

Checks, printing what it got:
  1. models.list() names one model;
  2. chat.completions.create (not streamed, temperature 0): an assistant message, finish_reason,
     usage with prompt + completion = total;
  3. the same request streamed: chunks whose deltas add up to the same text (greedy), one
     finish_reason, the usage chunk (stream_options include_usage) equal to step 2's;
  4. completions.create with a seed, twice: the same text both times;
  5. a wrong API key (when --api-key is given): openai.AuthenticationError (401); a prompt
     longer than the context: openai.BadRequestError (400).
With --expect-greedy TEXT, step 2's content must equal TEXT (e.g. `shardq run --chat`'s).
Exit 0 when every check holds, 1 otherwise (the failing check is printed)."""
import argparse
import sys

import openai


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--expect-greedy", default=None)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key or "none", max_retries=0)
    failed = []

    def check(ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failed.append(what)

    models = client.models.list()
    model = models.data[0].id
    check(len(models.data) == 1, "models.list: %s" % model)

    msgs = [{"role": "user", "content": a.prompt}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=a.max_tokens, temperature=0)
    text = r.choices[0].message.content
    print("chat:", repr(text))
    check(r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length"),
          "chat: assistant message, finish_reason %s" % r.choices[0].finish_reason)
    check(r.usage.prompt_tokens + r.usage.completion_tokens == r.usage.total_tokens and r.usage.completion_tokens > 0,
          "chat: usage %s" % r.usage)
    if a.expect_greedy is not None:
        check(text == a.expect_greedy, "chat: equals the expected greedy text %r" % a.expect_greedy)

    parts, finishes, usage = [], [], None
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=a.max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta and ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    streamed = "".join(parts)
    print("chat stream: %d chunks: %r" % (len(parts), streamed))
    check(streamed == text, "chat stream: the deltas add up to the same text")
    check(len(finishes) == 1, "chat stream: one finish_reason (%s)" % finishes)
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens,
          "chat stream: usage chunk %s" % usage)

    c1 = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0.8, seed=42)
    c2 = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0.8, seed=42)
    print("completion (seed 42):", repr(c1.choices[0].text))
    check(c1.choices[0].text == c2.choices[0].text, "completions: the same seed gives the same text")

    if a.api_key:
        bad = openai.OpenAI(base_url=a.base_url, api_key=a.api_key + "x", max_retries=0)
        try:
            bad.models.list()
            check(False, "a wrong key is refused")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, "a wrong key: AuthenticationError %d" % e.status_code)
    try:
        client.completions.create(model=model, prompt="word " * 100000, max_tokens=4)
        check(False, "a prompt over the context is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "a prompt over the context: BadRequestError 400")
    except openai.APIStatusError as e:   # 413 when the body is over the server's limit
        check(e.status_code in (400, 413), "a prompt over the context: HTTP %d" % e.status_code)

    if failed:
        print("FAILED: %d check(s)" % len(failed))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
