#!/usr/bin/env python3
"""Summarizes a kernel timeline written by scripts/cupti_trace.cc (CSV: kind, start_ns, end_ns,
stream, graph, grid, block, name): the records are cut into layer-steps at each kernel whose
name matches --split (default: the append kernel, the first thing of a serving-loop
layer-step), and for each kernel name the mean start and end relative to its layer-step's start,
the mean duration and the stream are printed in start order, with the layer-step's period.
What runs beside what, and where the gaps are, is then readable at a glance.

    python3 scripts/timeline_summary.py trace.csv [--split AppendSegments]
"""
import argparse
import collections
import csv
import re
import sys


def short_name(name):
    # A mangled nested name (_ZN 3twl 4cuda 20AppendSegmentsKernel E ...): its last identifier
    # before the template or parameter list is what people recognize.
    if not name.startswith("_ZN"):
        return name[:40]
    i, last = 3, name
    while i < len(name) and name[i].isdigit():
        j = i
        while j < len(name) and name[j].isdigit():
            j += 1
        n = int(name[i:j])
        last = name[j:j + n]
        i = j + n
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--split", default="AppendSegments",
                    help="regex of the kernel that starts a layer-step")
    a = ap.parse_args()
    try:
        rows = list(csv.DictReader(open(a.csv)))
    except OSError as e:
        sys.exit(f"timeline_summary: cannot read {a.csv}: {e}")
    try:
        rows = [dict(r, start_ns=int(r["start_ns"]), end_ns=int(r["end_ns"]), name=r["name"] or "?",
                     stream=r["stream"] or "?")
                for r in rows if r.get("kind") == "kernel"]
    except (KeyError, TypeError, ValueError) as e:
        sys.exit(f"timeline_summary: {a.csv} is not a cupti_trace.cc CSV ({e!r})")
    if not rows:
        sys.exit("timeline_summary: no kernel records")
    rows.sort(key=lambda r: r["start_ns"])
    split = re.compile(a.split)
    steps, cur = [], []
    for r in rows:
        if split.search(r["name"]) and cur:
            steps.append(cur)
            cur = []
        cur.append(r)
    steps.append(cur)
    if len(steps) > 2:
        steps = steps[1:]  # the first may hold what ran before the profiled range's first step
    stats = collections.defaultdict(lambda: {"start": [], "end": [], "stream": set()})
    periods = []
    for i, st in enumerate(steps):
        t0 = st[0]["start_ns"]
        if i + 1 < len(steps):
            periods.append((steps[i + 1][0]["start_ns"] - t0) / 1e3)
        seen = collections.Counter()
        for r in st:
            n = short_name(r["name"])
            seen[n] += 1
            key = n if seen[n] == 1 else f"{n}#{seen[n]}"
            s = stats[key]
            s["start"].append((r["start_ns"] - t0) / 1e3)
            s["end"].append((r["end_ns"] - t0) / 1e3)
            s["stream"].add(r["stream"])
    mean = lambda v: sum(v) / len(v)
    print(f"{len(steps)} layer-steps; period (us) mean "
          f"{mean(periods):.1f}" if periods else f"{len(steps)} layer-step(s)")
    print(f"{'kernel':34s} {'n':>3s} {'start':>8s} {'end':>8s} {'dur':>7s}  stream")
    for key, s in sorted(stats.items(), key=lambda kv: mean(kv[1]["start"])):
        dur = mean([e - b for b, e in zip(s["start"], s["end"])])
        print(f"{key:34s} {len(s['start']):3d} {mean(s['start']):8.1f} {mean(s['end']):8.1f} "
              f"{dur:7.1f}  {','.join(sorted(s['stream']))}")


if __name__ == "__main__":
    main()
