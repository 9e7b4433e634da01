#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/ (seed-*): a few runtime configurations,
each followed by a start (create two sequences, append to both layers) and a pseudo-random
tail of operations. The layout of an input is described in api_fuzz.cc (DecodeConfig, Step);
the fuzzer's own finds are added beside these by scripts/run-fuzz.sh --merge."""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

# Indices into the choice tables of DecodeConfig, in the order it reads them:
# layers kv groups dims pages bits p selector budget fraction sinks dense pool gpu fetch
# backend device telemetry size_mode
CONFIGS = {
    "full-p1-dense": [1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4],
    "full-p09": [1, 1, 1, 1, 2, 2, 1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4],
    "quest-default": [2, 2, 2, 2, 0, 0, 0, 1, 2, 0, 2, 1, 3, 0, 0, 0, 0, 0, 4],
    "page1-int2": [0, 0, 0, 0, 1, 1, 3, 1, 3, 3, 1, 1, 1, 0, 0, 0, 0, 1, 4],
    "page7-int8-no-telemetry": [1, 2, 1, 2, 3, 3, 4, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 4],
    "exact-k16-tiny-pool": [1, 1, 2, 0, 0, 4, 1, 1, 1, 1, 3, 1, 2, 0, 0, 0, 0, 0, 4],
    "bad-config-fallback": [5, 4, 4, 6, 7, 6, 8, 4, 5, 6, 4, 6, 6, 2, 3, 6, 3, 3, 1],
    "newer-struct-size": [1, 1, 1, 1, 4, 2, 2, 2, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 2],
    # Issue 15: tunables at and past the bounds that keep sums from overflowing (the tables'
    # appended values), each followed by the disk pick (4: none) and struct-size mode 7 (plain).
    "overflow-sinks-int32-max": [1, 1, 1, 1, 4, 2, 2, 2, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 4, 7],
    "sinks-at-2p30-tokens": [1, 1, 1, 1, 4, 2, 2, 1, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 4, 7],
    "budget-int32-max": [1, 1, 1, 1, 4, 2, 1, 1, 6, 0, 2, 0, 0, 0, 0, 0, 0, 0, 4, 7],
    "layers-4097-groups-2p20": [10, 1, 5, 1, 4, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 7],
    "pages-int32-max": [1, 1, 1, 1, 10, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 7],
}

def start():
    # create, create, then append (op 2) to each sequence in both layers: seq pick mode 0,
    # index, layer (Pick(8) != 0 then index), seed, n_mode 6 (plain n), n-1, no null, fp16,
    # host, not raw, then read back (Pick(4) == 0).
    ops = [0, 0]
    for seq in (0, 1):
        for layer in (0, 1):
            ops += [2, 0, seq, 1, layer, 7, 7, 7, 7, 6, 15, 1, 0, 0, 1, 0]
    return ops

def main():
    rng = random.Random(2502)
    for name, cfg in CONFIGS.items():
        for i in range(2):
            tail = [rng.randrange(256) for _ in range(300 + 200 * i)]
            data = bytes(cfg + start() + tail)
            with open(os.path.join(HERE, "corpus", f"seed-{name}-{i}"), "wb") as f:
                f.write(data)

if __name__ == "__main__":
    main()
