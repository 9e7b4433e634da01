#!/usr/bin/env python3
"""Cost of the Python package on the decode hot path (issue 14 target: the Python loop within
5% of the C API's per-step time, "the binding adds no copies and no syncs").

One runtime, one set of sequences, one stream. Every step runs the serving loop (per layer:
append every sequence's new token from device memory, then one batched decode) two ways,
alternating step by step so that drift and growing lengths hit both alike:
  package  twilight.Runtime.append_batch / .decode on torch tensors
  c-api    the same twl_append_batch / twl_decode_ex entry points called directly through
           ctypes with argument arrays built once (what an engine written in C does per call)
Reported per layer-step: GPU time (CUDA events around the whole step, one host wait per
step), and the host time spent issuing the step. If the binding copied or synchronized, the
package's GPU time would grow, or its host time would reach the GPU time.

  python3 bench/python_binding_bench.py --backend gpu-offload --batch 8 --context 32768
Needs a CUDA GPU, PyTorch and the built library (TWILIGHT_LIB=path/to/libtwilight.so).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="gpu-offload", choices=["gpu-offload", "gpu-hbm"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="steps per variant (after warm-up)")
    ap.add_argument("--budget", type=int, default=8192,
                    help="selector budget cap in tokens (0: the library's default)")
    ap.add_argument("--cache-fraction", type=float, default=0.1,
                    help="GPU cache as a fraction of all layers' FP16 KV (gpu-offload)")
    ap.add_argument("--json", default="", help="write the result here as JSON")
    ap.add_argument("--no-telemetry", action="store_true",
                    help="create the runtime with collect_telemetry off")
    ap.add_argument("--trace-calls", action="store_true",
                    help="also print the host time of every C API call of one step (finds "
                         "calls that wait for the GPU)")
    a = ap.parse_args(argv)
    for name in ("batch", "context", "layers", "steps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if not 0.0 < a.cache_fraction <= 1.0:
        ap.error("--cache-fraction must be in (0, 1]")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("python_binding_bench: needs PyTorch (Debian: python3-torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("python_binding_bench: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    import twilight
    from twilight import _lib
    from twilight._tensors import stream_handle

    hq, hkv, d = 32, 8, 128
    dev = torch.device("cuda")
    torch.manual_seed(0)
    kv_bytes = a.layers * a.batch * (a.context + 4 * a.steps) * hkv * d * 2 * 2
    rt = twilight.Runtime(a.layers, hq, hkv, d, backend=a.backend,
                          selector_budget_tokens=a.budget,
                          gpu_cache_bytes=int(a.cache_fraction * kv_bytes)
                          if a.backend == "gpu-offload" else 0,
                          host_pool_bytes=int(kv_bytes * 1.1) + (1 << 28),
                          collect_telemetry=False if a.no_telemetry else None)
    seqs = [rt.create_sequence() for _ in range(a.batch)]

    # Peaked heads: keys N(0, 1); each step's query points at a few keys of a hot region, so
    # top-p keeps a small set (the regime the offload path is built for).
    stream = torch.cuda.current_stream()
    k = torch.randn(a.batch, a.context, hkv, d, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    hot = torch.randint(0, a.context, (a.batch, hkv, 8), device=dev)
    for layer in range(a.layers):
        rt.append_batch(layer, seqs, k, v)
    torch.cuda.synchronize()
    base = torch.stack([k[b, hot[b, h], h].mean(0) for b in range(a.batch)
                        for h in range(hkv)]).view(a.batch, hkv, 1, d)
    del k, v

    def new_inputs():
        q = (3.0 * base + 0.3 * torch.randn(a.batch, hkv, hq // hkv, d, device=dev))
        q = q.reshape(a.batch, hq, d).half().contiguous()
        nk = torch.randn(a.batch, 1, hkv, d, device=dev, dtype=torch.float16)
        return q, nk, torch.randn_like(nk)

    out = torch.empty(a.batch, hq, d, device=dev, dtype=torch.float16)
    seq_arr = (_lib.seq_id_t * a.batch)(*seqs)
    counts = (ctypes.c_int32 * a.batch)(*([1] * a.batch))
    handle = rt._h()

    def step_package(q, nk, nv):
        for layer in range(a.layers):
            rt.append_batch(layer, seqs, nk, nv)
            rt.decode(layer, seqs, q, out=out)

    def step_capi(q, nk, nv):
        st = stream_handle(stream.cuda_stream)
        for layer in range(a.layers):
            code = _lib.twl_append_batch(handle, layer, seq_arr, counts, a.batch,
                                         nk.data_ptr(), nv.data_ptr(), _lib.DTYPE_FP16,
                                         _lib.MEMORY_DEVICE, st)
            if code:
                raise RuntimeError(f"twl_append_batch: {code}")
            code = _lib.twl_decode_ex(handle, layer, seq_arr, a.batch, q.data_ptr(),
                                      out.data_ptr(), _lib.DTYPE_FP16, _lib.MEMORY_DEVICE,
                                      None, st)
            if code:
                raise RuntimeError(f"twl_decode_ex: {code}")

    variants = {"package": step_package, "c-api": step_capi}
    gpu = {n: [] for n in variants}
    host = {n: [] for n in variants}
    warm = 2
    for i in range(warm + a.steps):
        for name, fn in variants.items():
            q, nk, nv = new_inputs()
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            e0.record(stream)
            fn(q, nk, nv)
            e1.record(stream)
            t1 = time.perf_counter()
            e1.synchronize()
            if i >= warm:
                gpu[name].append(e0.elapsed_time(e1) / a.layers)
                host[name].append((t1 - t0) * 1e3 / a.layers)
        print(f"\rstep {i + 1}/{warm + a.steps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    if a.trace_calls:
        q, nk, nv = new_inputs()
        st = stream_handle(stream.cuda_stream)
        torch.cuda.synchronize()
        calls = []
        for layer in range(a.layers):
            t0 = time.perf_counter()
            _lib.twl_append_batch(handle, layer, seq_arr, counts, a.batch, nk.data_ptr(),
                                  nv.data_ptr(), _lib.DTYPE_FP16, _lib.MEMORY_DEVICE, st)
            t1 = time.perf_counter()
            _lib.twl_decode_ex(handle, layer, seq_arr, a.batch, q.data_ptr(), out.data_ptr(),
                               _lib.DTYPE_FP16, _lib.MEMORY_DEVICE, None, st)
            t2 = time.perf_counter()
            calls.append(((t1 - t0) * 1e6, (t2 - t1) * 1e6))
        torch.cuda.synchronize()
        print("host us per call, layer by layer (append, decode): " +
              " ".join(f"({x:.0f},{y:.0f})" for x, y in calls))

    res = {"backend": a.backend, "batch": a.batch, "context": a.context, "layers": a.layers,
           "steps": a.steps, "budget": a.budget}
    print(f"python_binding_bench: {torch.cuda.get_device_name()}, {a.backend}, B={a.batch}, "
          f"N={a.context}, {a.layers} layers, cap {a.budget}")
    print(f"{'variant':10} {'ms/layer-step (median)':>24} {'host issue ms/layer-step':>26}")
    for name in variants:
        g, h = statistics.median(gpu[name]), statistics.median(host[name])
        res[name] = {"gpu_ms": g, "host_ms": h}
        print(f"{name:10} {g:24.4f} {h:26.4f}")
    ratio = res["package"]["gpu_ms"] / res["c-api"]["gpu_ms"]
    res["package_over_capi"] = ratio
    print(f"package / c-api per layer-step: {ratio:.3f} (issue 14 target <= 1.05)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
