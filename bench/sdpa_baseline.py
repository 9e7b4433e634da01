#!/usr/bin/env python3
"""PyTorch SDPA decode baseline for twl_kernels: one query token per sequence against a
contiguous FP16 K/V cache, 32 query / 8 KV heads (GQA), head dim 128, the same batch and
context grid as the C++ benchmark. Each SDPA backend that accepts the shape is timed with
CUDA events around single calls, the L2 cache flushed before each call (as the C++ side
does), median of the repeats. Writes CSV: batch,context,backend,ms,gbps.

Usage: sdpa_baseline.py OUT.csv [--batches 1,8,16] [--contexts 32768,131072,524288]
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, reps, flush):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush.zero_()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--contexts", default="32768,131072,524288")
    ap.add_argument("--q_heads", type=int, default=32)
    ap.add_argument("--kv_heads", type=int, default=8)
    ap.add_argument("--head_dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    rows = []
    free, _ = torch.cuda.mem_get_info()
    for ctx in contexts:
        for b in batches:
            kv_bytes = 2 * b * args.kv_heads * ctx * args.head_dim * 2
            if kv_bytes > 0.8 * free:
                print(f"sdpa: batch {b} context {ctx} needs {kv_bytes / 2**30:.1f} GiB, skipped",
                      flush=True)
                continue
            g = torch.Generator(device=dev).manual_seed(b * 1000003 + ctx)
            q = torch.randn(b, args.q_heads, 1, args.head_dim, device=dev, dtype=torch.float16,
                            generator=g)
            k = torch.randn(b, args.kv_heads, ctx, args.head_dim, device=dev,
                            dtype=torch.float16, generator=g)
            v = torch.randn_like(k)
            for name, be in backends:
                try:
                    with sdpa_kernel([be]):
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                        fn()
                        torch.cuda.synchronize()
                        ms = time_ms(fn, args.reps, flush)
                except Exception as e:  # backend does not take this shape
                    print(f"sdpa: {name} b={b} ctx={ctx} unavailable: {str(e)[:120]}",
                          flush=True)
                    continue
                gbps = kv_bytes / (ms * 1e-3) / 1e9
                rows.append((b, ctx, name, ms, gbps))
                print(f"sdpa: {name:9s} b={b:3d} ctx={ctx:7d} {ms:9.4f} ms {gbps:8.1f} GB/s",
                      flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        f.write("batch,context,backend,ms,gbps\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]},{r[2]},{r[3]:.5f},{r[4]:.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
