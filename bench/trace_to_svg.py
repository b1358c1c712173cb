#!/usr/bin/env python3
"""Renders a shardq --trace file (Chrome trace-event JSON) as an SVG timeline: one row per
rank and track (compute, reader), one box per span coloured by its name, nested spans drawn
thinner inside their parent.  What Perfetto shows, as a picture for the README.  Standard
library only.
  usage: bench/trace_to_svg.py TRACE.json OUT.svg [--title T] [--from MS] [--to MS]
                               [--width PX]
"""
import argparse
import html
import math
import json

PALETTE = {
    "read": "#4e79a7", "quantize": "#f28e2b", "double quant": "#edc948",
    "repack/upload": "#59a14f", "write": "#76b7b2", "wait read": "#e15759",
    "embed": "#b07aa1", "forward": "#9c755f", "sample": "#ff9da7",
    "consume": "#59a14f",
}
OTHER = ["#bab0ac", "#8cd17d", "#86bcb6", "#d37295", "#a0cbe8", "#ffbe7d", "#f1ce63"]


def colour(name, extra):
    if name in PALETTE:
        return PALETTE[name]
    if name.startswith(("receiving", "sending")):
        return "#d4d4d4" if name.startswith("sending") else "#bab0ac"
    if name not in extra:
        extra[name] = OTHER[len(extra) % len(OTHER)]
    return extra[name]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    ap.add_argument("--from", dest="t_from", type=float, default=None, help="ms")
    ap.add_argument("--to", dest="t_to", type=float, default=None, help="ms")
    ap.add_argument("--width", type=int, default=1200)
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f)["traceEvents"]
    names, spans = {}, []
    for e in events:
        if e["ph"] == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e["ph"] == "X":
            spans.append(e)
    t0 = min(e["ts"] for e in spans) / 1e3 if a.t_from is None else a.t_from
    t1 = max((e["ts"] + e["dur"]) for e in spans) / 1e3 if a.t_to is None else a.t_to
    spans = [e for e in spans if e["ts"] / 1e3 < t1 and (e["ts"] + e["dur"]) / 1e3 > t0]
    tracks = sorted({(e["pid"], e["tid"]) for e in spans})
    left, right, top, row_h, gap = 150, 20, 50, 34, 8
    legend_h = 40
    width = a.width
    height = top + len(tracks) * (row_h + gap) + 40 + legend_h
    scale = (width - left - right) / max(t1 - t0, 1e-9)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15">%s</text>' % (left, html.escape(a.title))]
    # time axis
    span_ms = t1 - t0
    step = 1e-3
    while span_ms / step > 12:
        for m in (2, 2.5, 2):
            step *= m
            if span_ms / step <= 12:
                break
    y_axis = top + len(tracks) * (row_h + gap) + 5
    t = math.ceil(t0 / step) * step
    while t <= t1:
        x = left + (t - t0) * scale
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, top - 5, x, y_axis))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g ms</text>' % (x, y_axis + 15, round(t, 3)))
        t += step
    extra = {}
    for k, (pid, tid) in enumerate(tracks):
        y = top + k * (row_h + gap)
        label = "rank %d · %s" % (pid, names.get((pid, tid), "tid %d" % tid))
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + row_h / 2 + 4, html.escape(label)))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="#ddd"/>' % (left, y, width - left - right, row_h))
        mine = sorted((e for e in spans if (e["pid"], e["tid"]) == (pid, tid)), key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in mine:
            s, d = e["ts"] / 1e3, e["dur"] / 1e3
            while stack and s >= stack[-1] - 1e-6:
                stack.pop()
            depth = len(stack)
            stack.append(s + d)
            x0 = left + max(s - t0, 0) * scale
            x1 = left + min(s + d - t0, t1 - t0) * scale
            inset = min(depth * 6, row_h / 2 - 3)
            detail = e.get("args", {}).get("detail", "")
            tip = "%s %s (%.3f ms)" % (e["name"], detail, d)
            out.append('<rect x="%.2f" y="%.1f" width="%.2f" height="%.1f" fill="%s"><title>%s</title></rect>'
                       % (x0, y + inset, max(x1 - x0, 0.6), row_h - 2 * inset, colour(e["name"], extra), html.escape(tip)))
    # legend
    seen = []
    for e in spans:
        if e["name"] not in seen:
            seen.append(e["name"])
    x, y = left, y_axis + 32
    for n in seen:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (x, y - 10, colour(n, extra)))
        out.append('<text x="%d" y="%d">%s</text>' % (x + 16, y, html.escape(n)))
        x += 30 + 7 * len(n)
        if x > width - 150:
            x, y = left, y + 18
    out.append("</svg>")
    if y + 10 > height:
        out[0] = out[0].replace('height="%d"' % height, 'height="%d"' % (y + 10))
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
