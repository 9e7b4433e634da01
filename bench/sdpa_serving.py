#!/usr/bin/env python3
"""Dense baseline of twl_serve_bench: the same serving loop with all FP16 KV in HBM and PyTorch
SDPA as the attention. Per step and layer: write the new token's K/V of every sequence into a
preallocated [B, Hkv, N + steps, D] cache (one index_copy_ per K and V), then one SDPA decode
call over the filled prefix (GQA, one query token). L layers, each its own cache, so nothing
stays in L2 between layers. Every SDPA backend that takes the shape is timed (cuDNN, flash,
efficient); the CSV has one row per backend and twl_serve_bench takes the fastest.
Flash is also timed with the batch cut into 2 and 4 calls of equal sequences ("flash-x2",
"flash-x4"): it picks its split of each sequence over blocks from one call's grid, so a large
batch in one call may get fewer splits than it would pay to take. A serving engine can cut its
batch the same way, so the fastest of these is the dense baseline. (H100, 128k, 32 x 8: at
B = 16 one call took 2.87 ms and two 2.81; at B = 8 one call is the fastest, 1.41 ms.)
Dense attention costs are linear in tokens, so mixed lengths are measured at their mean.
Where L layers of KV do not fit the GPU (B = 16 x 128k needs 64 GiB at L = 8), fewer layers
are measured, as long as each layer's KV is far larger than L2 (so the figure per layer-step
is the same); the log says how many.

Usage: sdpa_serving.py OUT.csv [--shapes 32x8,64x8] [--batches 1,8,16] [--context 131072]
                       [--layers 8] [--steps 8] [--head_dim 128]
CSV: q_heads,kv_heads,batch,context,backend,ms   (ms per layer-step, appends included)
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def measure(q_heads, kv_heads, batch, ctx, layers, steps, head_dim, backend, calls=1):
    """Median ms per layer-step; the SDPA of each layer is `calls` launches over equal parts
    of the batch (the appends are one launch per K and V either way)."""
    dev = torch.device("cuda")
    cap = ctx + steps + 4
    g = torch.Generator(device=dev).manual_seed(batch * 7919 + ctx)
    ks, vs = [], []
    for _ in range(layers):
        k = torch.empty(batch, kv_heads, cap, head_dim, device=dev, dtype=torch.float16)
        v = torch.empty_like(k)
        k.normal_(generator=g)
        v.normal_(generator=g)
        ks.append(k)
        vs.append(v)
    q = torch.randn(steps + 2, layers, batch, q_heads, 1, head_dim, device=dev,
                    dtype=torch.float16, generator=g)
    new_k = torch.randn(steps + 2, layers, batch, kv_heads, 1, head_dim, device=dev,
                        dtype=torch.float16, generator=g)
    new_v = torch.randn_like(new_k)

    per_call = batch // calls
    parts = [(i * per_call, (i + 1) * per_call) for i in range(calls)]

    def step(s, pos):
        idx = torch.tensor([pos], device=dev)
        for l in range(layers):
            ks[l].index_copy_(2, idx, new_k[s, l])
            vs[l].index_copy_(2, idx, new_v[s, l])
            for a, b in parts:
                F.scaled_dot_product_attention(q[s, l, a:b], ks[l][a:b, :, :pos + 1],
                                               vs[l][a:b, :, :pos + 1], enable_gqa=True)

    with sdpa_kernel([backend]):
        step(0, ctx)  # raises when the backend does not take the shape
        torch.cuda.synchronize()
        times = []
        for s in range(steps):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            step(s % (steps + 2), ctx + 1 + s)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / layers)
    del ks, vs, q, new_k, new_v
    torch.cuda.empty_cache()
    return statistics.median(times)


def layers_that_fit(layers, per_layer_bytes, free_bytes, l2_bytes):
    """How many layers to measure: all of them if they fit 85% of the free memory, else as
    many as fit when each layer's KV is at least 8x L2 (a layer then never finds the last
    one's KV in L2, as with all L), else 0 (skip)."""
    fit = int(0.85 * free_bytes // per_layer_bytes)
    if fit >= layers:
        return layers
    if fit >= 1 and per_layer_bytes >= 8 * l2_bytes:
        return fit
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--shapes", default="32x8,64x8")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--head_dim", type=int, default=128)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sdpa_serving: no CUDA device; nothing to measure", flush=True)
        return 0
    backends = [("cudnn", SDPBackend.CUDNN_ATTENTION, 1),
                ("flash", SDPBackend.FLASH_ATTENTION, 1),
                ("flash-x2", SDPBackend.FLASH_ATTENTION, 2),
                ("flash-x4", SDPBackend.FLASH_ATTENTION, 4),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION, 1)]
    rows = []
    for shape in args.shapes.split(","):
        qh, kvh = (int(x) for x in shape.split("x"))
        for b in (int(x) for x in args.batches.split(",")):
            free, _ = torch.cuda.mem_get_info()
            per_layer = 2 * b * kvh * (args.context + args.steps + 4) * args.head_dim * 2
            l2 = torch.cuda.get_device_properties(0).L2_cache_size
            layers = layers_that_fit(args.layers, per_layer, free, l2)
            if layers == 0:
                print(f"sdpa_serving: {shape} B={b} needs {per_layer / 2**30:.1f} GiB per "
                      "layer, skipped", flush=True)
                continue
            if layers < args.layers:
                print(f"sdpa_serving: {shape} B={b}: {args.layers} layers need "
                      f"{args.layers * per_layer / 2**30:.1f} GiB; measuring {layers} "
                      f"({per_layer / 2**30:.1f} GiB each, >= 8x L2)", flush=True)
            for name, be, calls in backends:
                if b % calls:  # equal parts only
                    continue
                try:
                    ms = measure(qh, kvh, b, args.context, layers, args.steps,
                                 args.head_dim, be, calls)
                except Exception as e:  # the backend does not take this shape
                    print(f"sdpa_serving: {name} {shape} B={b}: unavailable ({str(e)[:100]})",
                          flush=True)
                    torch.cuda.empty_cache()
                    continue
                rows.append((qh, kvh, b, args.context, name, ms))
                print(f"sdpa_serving: {name:9s} {shape} B={b:3d} ctx={args.context} "
                      f"{ms:8.4f} ms/layer-step", flush=True)
    with open(args.out, "w") as f:
        f.write("q_heads,kv_heads,batch,context,backend,ms\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]:.5f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
