#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server (`shardq serve`, llama.cpp's llama-server).

Runs C clients at once, each sending streamed /v1/completions requests back to back until N
requests are done, and prints one line of figures (or JSON with --json):
requests/s, output tokens/s, time to first token and inter-token latency (p50, p99).
  TTFT: request sent -> first text chunk.   ITL: (last chunk - first chunk) / (tokens - 1),
  per request.   Output tokens: the server's usage.completion_tokens (stream_options
  include_usage), or the number of content chunks when the server gives no usage.
Only the Python standard library; no retries (a failed request counts and is reported)."""
import argparse
import http.client
import json
import threading
import time
import urllib.parse

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms, step by step.",
    "List five uses of a paperclip and say why each works.",
    "Describe the city of Paris to someone who has never been there.",
    "What are the differences between a list and a tuple in Python?",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue? Answer for a ten year old.",
    "Summarize the plot of a detective novel you invent.",
]


def one_request(url, body, key):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = c.getresponse()
    if r.status != 200:
        r.read()
        c.close()
        return {"ok": False, "status": r.status}
    t_first = t_last = None
    chunks = 0
    usage = None
    buf = b""
    while True:
        data = r.read1(65536) if hasattr(r, "read1") else r.read(4096)
        if not data:
            break
        buf += data
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    continue
                j = json.loads(payload)
                if j.get("usage"):
                    usage = j["usage"]
                for ch in j.get("choices", []):
                    if ch.get("text"):
                        now = time.perf_counter()
                        if t_first is None:
                            t_first = now
                        t_last = now
                        chunks += 1
    c.close()
    t_end = time.perf_counter()
    n = usage["completion_tokens"] if usage else chunks
    if t_first is None:
        t_first = t_last = t_end
    itl = (t_last - t_first) / (n - 1) if n > 1 else None
    return {"ok": True, "ttft": t_first - t0, "itl": itl, "tokens": n, "t0": t0, "t_end": t_end}


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (shardq, vLLM, llama-server): "
                    "every request makes exactly --max-tokens tokens")
    a = ap.parse_args()
    lock = threading.Lock()
    results = []
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= a.requests:
                    return
                next_i[0] += 1
            body = {"model": "m", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": a.max_tokens,
                    "temperature": a.temperature, "seed": i, "stream": True,
                    "stream_options": {"include_usage": True}}
            if a.ignore_eos:
                body["ignore_eos"] = True
            try:
                r = one_request(a.url, body, a.api_key)
            except Exception as e:  # noqa: BLE001 - reported as a failed request
                r = {"ok": False, "status": str(e)}
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    out = {"label": a.label, "concurrency": a.concurrency, "requests": len(results), "failed": len(results) - len(ok),
           "wall_s": wall, "req_s": len(ok) / wall, "out_tok_s": tokens / wall, "tokens": tokens,
           "ttft_p50_ms": 1e3 * pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": 1e3 * pct([r["ttft"] for r in ok], 99),
           "itl_p50_ms": 1e3 * pct([r["itl"] for r in ok], 50), "itl_p99_ms": 1e3 * pct([r["itl"] for r in ok], 99)}
    if a.json:
        print(json.dumps(out))
    else:
        print("%-12s %5d %5d %4d %8.3f %10.1f %9.1f %9.1f %9.1f %9.1f" % (
            a.label, out["concurrency"], out["requests"], out["failed"], out["req_s"], out["out_tok_s"],
            out["ttft_p50_ms"], out["ttft_p99_ms"], out["itl_p50_ms"], out["itl_p99_ms"]))


if __name__ == "__main__":
    main()
