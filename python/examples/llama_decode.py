#!/usr/bin/env python3
"""A serving engine's decode loop with Twilight as its attention backend.

A Llama-architecture model in plain PyTorch. Prefill runs the model's own (dense, causal)
attention and hands each layer's K/V to the runtime in one bulk append; every decode step then
goes through Twilight per layer: append the new token's K/V, decode the batch. The same loop
with a dense KV cache and PyTorch attention is the baseline; both report tokens/s, and the
greedy tokens of the two are compared.

This is the shape of an attention backend in a serving engine (see python/examples/README.md):
  - vLLM: an AttentionImpl whose forward() does, for decode tokens, what TwilightAttention.
    __call__ does here (write the new K/V into the cache = rt.append; attention = rt.decode on
    the engine's current CUDA stream), and whose prefill path keeps the engine's own kernel.
  - SGLang: a sparse algorithm whose BaseSparseAlgorithm.retrieve_topk() returns the kept
    tokens per head: Twilight's budget is the top-p set (rt.last_step_heads()["kept"]), not a
    fixed k; rt.decode does the selection and the sparse attention in one call.

Models:
  --model stories260K   the trained llama2.c model in ../shared/models (CPU, seconds); see
                        /work/shared/models/README.md for the format
  --model llama3-8b-attn random weights with Llama-3-8B attention (32 q heads, 8 KV heads,
                        head_dim 128, RoPE theta 500000), few layers and a small FFN: measures
                        the attention path at a realistic shape (GPU)

Examples:
  python3 python/examples/llama_decode.py --model stories260K --backend cpu --steps 24
  python3 python/examples/llama_decode.py --model llama3-8b-attn --device cuda \
      --backend gpu-offload --batch 8 --prompt-len 32768 --steps 64
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import struct
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # reported by main(): the example needs PyTorch (Debian: python3-torch)
    torch = None

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the package of this checkout, when not installed
import twilight  # noqa: E402


# ---- model ------------------------------------------------------------------------------------
class Config:
    def __init__(self, dim, hidden, layers, heads, kv_heads, vocab, max_seq, theta=10000.0):
        self.dim, self.hidden, self.layers = dim, hidden, layers
        self.heads, self.kv_heads, self.vocab, self.max_seq = heads, kv_heads, vocab, max_seq
        self.head_dim = dim // heads
        self.theta = theta


def default_shared_dir() -> pathlib.Path:
    env = os.environ.get("TWL_SHARED_DIR")
    return pathlib.Path(env) if env else HERE.parent.parent.parent / "shared"


def load_llama2c(path: pathlib.Path):
    """A llama2.c checkpoint: 7 int32 header, then float32 tensors (shared/models/README.md)."""
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, max_seq = struct.unpack_from("<7i", raw, 0)
    shared_classifier = vocab > 0
    vocab = abs(vocab)
    cfg = Config(dim, hidden, layers, heads, kv_heads, vocab, max_seq)
    flat = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    kv_dim = dim * kv_heads // heads
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        t = flat[off:off + n].reshape(shape)
        off += n
        return t

    w = {"emb": take(vocab, dim), "rms_att": take(layers, dim), "wq": take(layers, dim, dim),
         "wk": take(layers, kv_dim, dim), "wv": take(layers, kv_dim, dim),
         "wo": take(layers, dim, dim), "rms_ffn": take(layers, dim),
         "w1": take(layers, hidden, dim), "w2": take(layers, dim, hidden),
         "w3": take(layers, hidden, dim), "rms_final": take(dim)}
    off += max_seq * cfg.head_dim  # the file's RoPE tables (recomputed here)
    w["cls"] = w["emb"] if shared_classifier else take(vocab, dim)
    return cfg, w


def random_llama3_attention(layers: int, seed: int = 0):
    """Llama-3-8B attention shape with random weights (scaled so activations stay O(1))."""
    cfg = Config(dim=4096, hidden=1024, layers=layers, heads=32, kv_heads=8, vocab=1024,
                 max_seq=1 << 20, theta=500000.0)
    g = torch.Generator().manual_seed(seed)
    kv_dim = cfg.kv_heads * cfg.head_dim

    def rnd(*shape):
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    w = {"emb": torch.randn(cfg.vocab, cfg.dim, generator=g), "rms_att": torch.ones(layers, cfg.dim),
         "wq": rnd(layers, cfg.dim, cfg.dim) * 2.0, "wk": rnd(layers, kv_dim, cfg.dim) * 2.0,
         "wv": rnd(layers, kv_dim, cfg.dim), "wo": rnd(layers, cfg.dim, cfg.dim),
         "rms_ffn": torch.ones(layers, cfg.dim), "w1": rnd(layers, cfg.hidden, cfg.dim),
         "w2": rnd(layers, cfg.dim, cfg.hidden), "w3": rnd(layers, cfg.hidden, cfg.dim),
         "rms_final": torch.ones(cfg.dim)}
    w["cls"] = w["emb"]
    return cfg, w


class Llama:
    def __init__(self, cfg: Config, w, device, dtype):
        self.cfg = cfg
        self.w = {k: v.to(device=device, dtype=dtype) for k, v in w.items()}
        self.device, self.dtype = device, dtype
        inv = 1.0 / (cfg.theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64)
                                   / cfg.head_dim))
        self.inv_freq = inv.to(device)

    def rms(self, x, weight):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * weight

    def rope(self, x, pos):
        """x [..., T, H, D] with positions pos [T]; llama2.c pairs (2i, 2i+1)."""
        ang = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]       # [T, D/2]
        cos = torch.cos(ang).float()[:, None, :]
        sin = torch.sin(ang).float()[:, None, :]
        xf = x.float().reshape(*x.shape[:-1], -1, 2)
        a, b = xf[..., 0], xf[..., 1]
        out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return out.reshape(x.shape).to(x.dtype)

    def qkv(self, layer, x, pos):
        """x [B, T, dim] -> q [B, T, Hq, D], k, v [B, T, Hkv, D] (RoPE applied)."""
        c, w = self.cfg, self.w
        h = self.rms(x, w["rms_att"][layer])
        B, T = x.shape[:2]
        q = (h @ w["wq"][layer].T).view(B, T, c.heads, c.head_dim)
        k = (h @ w["wk"][layer].T).view(B, T, c.kv_heads, c.head_dim)
        v = (h @ w["wv"][layer].T).view(B, T, c.kv_heads, c.head_dim)
        return self.rope(q, pos), self.rope(k, pos), v

    def post(self, layer, x, attn):
        """Residual + output projection + SwiGLU FFN; attn [B, T, Hq * D]."""
        w = self.w
        x = x + attn @ w["wo"][layer].T
        h = self.rms(x, w["rms_ffn"][layer])
        return x + (F.silu(h @ w["w1"][layer].T) * (h @ w["w3"][layer].T)) @ w["w2"][layer].T

    def logits(self, x):
        return self.rms(x, self.w["rms_final"]) @ self.w["cls"].T

    def prefill(self, tokens, on_layer_kv):
        """The model's own causal attention over the prompt; on_layer_kv(layer, k, v) gets each
        layer's K/V [B, T, Hkv, D] (for the bulk append). Returns the last position's logits."""
        B, T = tokens.shape
        pos = torch.arange(T, device=self.device)
        x = self.w["emb"][tokens]
        group = self.cfg.heads // self.cfg.kv_heads
        for layer in range(self.cfg.layers):
            q, k, v = self.qkv(layer, x, pos)
            on_layer_kv(layer, k, v)
            a = attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(group, 1),
                          v.transpose(1, 2).repeat_interleave(group, 1), causal=True)
            x = self.post(layer, x, a.transpose(1, 2).reshape(B, T, -1))
        return self.logits(x[:, -1])

    def decode_step(self, tokens, position, attend):
        """One token per sequence; attend(layer, q [B, Hq, D], k, v [B, Hkv, D]) -> [B, Hq, D]."""
        B = tokens.shape[0]
        pos = torch.tensor([position], device=self.device)
        x = self.w["emb"][tokens][:, None, :]
        for layer in range(self.cfg.layers):
            q, k, v = self.qkv(layer, x, pos)
            a = attend(layer, q[:, 0].contiguous(), k[:, 0].contiguous(), v[:, 0].contiguous())
            x = self.post(layer, x, a.reshape(B, 1, -1))
        return self.logits(x[:, 0])


def attention(q, k, v, causal):
    """[B, H, Tq, D] x [B, H, Tk, D]: PyTorch SDPA when this torch has it (2.0+), else the
    same computation written out (Debian's torch 1.13)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        Tq, Tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        s = s.masked_fill(~mask, float("-inf"))
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype)


# ---- attention backends of the decode loop ----------------------------------------------------
class TwilightAttention:
    """Decode attention through the Twilight runtime: the pattern of a serving engine's
    attention backend. Prefill K/V arrive in one append per (sequence, layer)."""

    def __init__(self, model: Llama, batch: int, backend: str, top_p: float, selector: str,
                 k_bits: int, pool_bytes: int):
        c = model.cfg
        self.rt = twilight.Runtime(c.layers, c.heads, c.kv_heads, c.head_dim, backend=backend,
                                   top_p=top_p, selector=selector, k_bits=k_bits,
                                   host_pool_bytes=pool_bytes,
                                   device_id=model.device.index or 0
                                   if model.device.type == "cuda" else -1)
        self.seqs = [self.rt.create_sequence() for _ in range(batch)]
        self.kept = []  # mean kept tokens per step (telemetry)

    def _append(self, layer, k, v):
        # k, v: [B, T, Hkv, D] (prefill) or [B, Hkv, D] (decode), sequence-major: one batched
        # append on torch's current stream (twl_append_batch; no host wait). Libraries without
        # it: one synchronization per layer, then one append per sequence.
        self.rt.append_batch(layer, self.seqs, k, v)

    def prefill_kv(self, layer, k, v):
        self._append(layer, k, v)

    def __call__(self, layer, q, k, v):
        self._append(layer, k, v)
        out = self.rt.decode(layer, self.seqs, q)  # torch's current stream on the GPU
        if layer == 0:
            self.kept.append(self.rt.last_step()["mean_kept_tokens"])
        return out

    def close(self):
        self.rt.close()


class DenseAttention:
    """The baseline: a preallocated dense KV cache and PyTorch attention over all of it."""

    def __init__(self, model: Llama, batch: int, max_len: int, fp16_like_twilight=False):
        c = model.cfg
        shape = (c.layers, batch, c.kv_heads, max_len, c.head_dim)
        self.k = torch.empty(shape, device=model.device, dtype=model.dtype)
        self.v = torch.empty(shape, device=model.device, dtype=model.dtype)
        # Twilight keeps FP16 K/V and runs on FP16 q/out; a float32 model's baseline rounds the
        # same values to FP16 so that a p = 1 run can be compared token for token.
        self.round = fp16_like_twilight and model.dtype == torch.float32
        self.len = [0] * c.layers
        self.group = c.heads // c.kv_heads

    def _r(self, x):
        return x.half().to(x.dtype) if self.round else x

    def prefill_kv(self, layer, k, v):
        k, v = self._r(k), self._r(v)
        T = k.shape[1]
        self.k[layer, :, :, :T] = k.transpose(1, 2)
        self.v[layer, :, :, :T] = v.transpose(1, 2)
        self.len[layer] = T

    def __call__(self, layer, q, k, v):
        n = self.len[layer]
        q, k, v = self._r(q), self._r(k), self._r(v)
        self.k[layer, :, :, n] = k
        self.v[layer, :, :, n] = v
        self.len[layer] = n + 1
        kk = self.k[layer, :, :, :n + 1].repeat_interleave(self.group, 1)
        vv = self.v[layer, :, :, :n + 1].repeat_interleave(self.group, 1)
        return self._r(attention(q[:, :, None, :], kk, vv, causal=False)[:, :, 0, :])

    def close(self):
        pass


def run(model: Llama, prompts, steps: int, attn):
    """Prefill + greedy decode; returns (tokens [B, steps], decode seconds)."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        logits = model.prefill(prompts, attn.prefill_kv)
        tok = logits.argmax(-1)
        out = [tok]
        sync()
        t0 = time.perf_counter()
        for i in range(steps - 1):
            logits = model.decode_step(tok, prompts.shape[1] + i, attn)
            tok = logits.argmax(-1)
            out.append(tok)
        sync()
        return torch.stack(out, 1), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", choices=["stories260K", "llama3-8b-attn"], default="stories260K")
    ap.add_argument("--model-path", type=pathlib.Path, default=None,
                    help="stories260K.bin (default: $TWL_SHARED_DIR or ../shared, models/)")
    ap.add_argument("--layers", type=int, default=4, help="layers of llama3-8b-attn")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--backend", choices=list(twilight._lib.BACKENDS), default="auto")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24, help="tokens generated per sequence")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--selector", choices=list(twilight._lib.SELECTORS), default="default")
    ap.add_argument("--k-bits", type=int, default=0, help="0: library default (4)")
    ap.add_argument("--pool-mib", type=int, default=0, help="host KV pool; 0: fits the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expect-match", action="store_true",
                    help="exit 1 unless Twilight's greedy tokens equal the dense loop's "
                         "(a float32 model's baseline then rounds q/K/V/out to FP16 as "
                         "Twilight does)")
    ap.add_argument("--skip-missing", action="store_true",
                    help="exit 77 (a skipped test) when torch or the model file is missing")
    args = ap.parse_args(argv)
    if torch is None:
        print("SKIPPED: PyTorch is not installed (Debian: python3-torch)")
        return 77 if args.skip_missing else 2
    for name in ("batch", "prompt_len", "steps", "layers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.top_p <= 1.0:
        ap.error("--top-p must be in (0, 1]")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    if args.model == "stories260K":
        path = args.model_path or default_shared_dir() / "models" / "stories260K.bin"
        if not path.exists() and args.skip_missing:
            print(f"SKIPPED: {path} not found (the shared models folder)")
            return 77
        if not path.exists():
            ap.error(f"{path} not found (the shared models folder; --model-path)")
        cfg, w = load_llama2c(path)
    else:
        cfg, w = random_llama3_attention(args.layers, args.seed)
    if args.prompt_len + args.steps > cfg.max_seq:
        ap.error(f"--prompt-len + --steps exceeds the model's {cfg.max_seq} positions")
    model = Llama(cfg, w, device, dtype)
    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(2, cfg.vocab, (args.batch, args.prompt_len), generator=g)
    prompts[:, 0] = 1  # BOS
    prompts = prompts.to(device)

    total = args.prompt_len + args.steps
    pool = args.pool_mib << 20 or (2 * cfg.layers * args.batch * cfg.kv_heads * cfg.head_dim * 2
                                   * (total + 64) * 2 + (64 << 20))
    tw = TwilightAttention(model, args.batch, args.backend, args.top_p, args.selector,
                           args.k_bits, pool)
    print(f"model {args.model}: {cfg.layers} layers, {cfg.heads} q / {cfg.kv_heads} KV heads, "
          f"head_dim {cfg.head_dim}; {dtype} on {device}; twilight {twilight.version()} "
          f"backend {tw.rt.backend_name}")
    print(f"batch {args.batch}, prompt {args.prompt_len}, {args.steps} tokens, "
          f"p {args.top_p}, selector {args.selector}")
    tok_t, sec_t = run(model, prompts, args.steps, tw)
    kept = sum(tw.kept) / max(1, len(tw.kept))
    tw.close()
    dense = DenseAttention(model, args.batch, total, fp16_like_twilight=args.expect_match)
    tok_d, sec_d = run(model, prompts, args.steps, dense)

    decoded = args.batch * (args.steps - 1)
    match = (tok_t == tok_d).float().mean().item()
    first_diff = [int((tok_t[b] != tok_d[b]).nonzero()[0]) if (tok_t[b] != tok_d[b]).any()
                  else args.steps for b in range(args.batch)]
    print(f"{'loop':<22}{'tokens/s':>10}{'ms/step':>10}")
    for name, sec in (("twilight", sec_t), ("dense (torch)", sec_d)):
        print(f"{name:<22}{decoded / max(sec, 1e-9):>10.1f}{sec / max(1, args.steps - 1) * 1e3:>10.2f}")
    print(f"layer 0: mean kept tokens per head {kept:.1f} of ~{args.prompt_len + args.steps // 2}")
    print(f"greedy tokens equal to the dense loop's: {match * 100:.1f}% "
          f"(first difference per sequence at step {first_diff})")
    if args.expect_match and match < 1.0:
        print("FAIL: --expect-match and the tokens differ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
