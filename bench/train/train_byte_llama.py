#!/usr/bin/env python3
"""Trains a small byte-level Llama-architecture model on real English text (Jane Austen's
novels, bench/train/data/) and writes it in the llama2.c checkpoint format that
bench/lib/llama2_model.cc reads, for twl_accuracy's real-text section (issue 15, item 4).

What the C++ loader supports, and so what this model is:
  * header of 7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    a positive vocab_size means the classifier is the token embedding (shared), which we use;
  * tensors in llama2.c "legacy" order, FP32: embedding, rms_att, wq, wk, wv, wo, rms_ffn,
    w1, w2, w3, rms_final, then the RoPE cos/sin tables (seq_len x head_dim/2 each; the
    loader skips them but they must be there);
  * GQA with query head h reading KV head h // (n_heads / n_kv_heads);
  * RoPE on interleaved pairs (2j, 2j+1), theta 10000, RMSNorm eps 1e-5, SwiGLU FFN.
Vocabulary: the 256 byte values (no BOS; a sequence starts with the text itself).

Retrieval: a share of the training windows (--passkey-frac) gets a line
"The pass key is NNNNN. Remember it. NNNNN is the pass key." planted at a random depth and
"What is the pass key? The pass key is NNNNN." at the end, with fresh random digits, so the
model learns to retrieve a string from far back; twl_accuracy --only realtext tests this on
held-out text with keys never seen in training.

Runs on CUDA with bf16 autocast (about 5 minutes on one H200 with the defaults; the time
budget stops training and decays the learning rate on time) or on the CPU for a smoke test:
    python3 bench/train/train_byte_llama.py --device cpu --steps 5 --ctx 256 --dim 64 \
        --layers 2 --batch 2 --out /tmp/smoke.bin
"""
import argparse
import json
import math
import os
import random
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a.add_argument("--train", default=os.path.join(HERE, "data", "austen_train.txt"))
    a.add_argument("--val", default=os.path.join(HERE, "data", "austen_heldout.txt"))
    a.add_argument("--out", required=True, help="llama2.c checkpoint to write")
    a.add_argument("--dim", type=int, default=256)
    a.add_argument("--hidden", type=int, default=512,
                   help="FFN width (0: 8/3 dim); 512 keeps the default checkpoint ~14 MB")
    a.add_argument("--layers", type=int, default=6)
    a.add_argument("--heads", type=int, default=8)
    a.add_argument("--kv-heads", type=int, default=2)
    a.add_argument("--ctx", type=int, default=4096, help="training context = checkpoint seq_len")
    a.add_argument("--batch", type=int, default=16)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--min-lr-frac", type=float, default=0.05)
    a.add_argument("--warmup", type=int, default=100)
    a.add_argument("--weight-decay", type=float, default=0.1)
    a.add_argument("--steps", type=int, default=100000, help="upper bound on optimizer steps")
    a.add_argument("--time-budget", type=float, default=270.0,
                   help="seconds of training (the schedule decays on time)")
    a.add_argument("--passkey-frac", type=float, default=0.25)
    a.add_argument("--eval-windows", type=int, default=16, help="held-out windows for the loss")
    a.add_argument("--eval-every", type=float, default=45.0,
                   help="seconds between validation checks; the best checkpoint is written "
                        "(3.5 MB of text: a long run can overfit)")
    a.add_argument("--val-frac", type=float, default=0.05,
                   help="tail of the training text held back for checkpoint selection (the "
                        "--val text, Persuasion, is only the final test)")
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--compile", action="store_true", help="torch.compile (CUDA, torch >= 2)")
    a.add_argument("--seed", type=int, default=1)
    return a.parse_args()


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


def rope_tables(seq_len, head_dim, device):
    # Pair j = (2j, 2j+1) turns by pos * 10000^(-2j/head_dim), as the C++ loader does.
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.cos(ang).to(device), torch.sin(ang).to(device)


def apply_rope(x, cos, sin):
    # x [B, T, H, hd]; interleaved pairs.
    T = x.shape[1]
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos[:T].view(1, T, 1, -1)
    s = sin[:T].view(1, T, 1, -1)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).type_as(x)


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.h, self.kvh, self.hd = a.heads, a.kv_heads, a.dim // a.heads
        self.attn_norm = RMSNorm(a.dim)
        self.wq = nn.Linear(a.dim, a.dim, bias=False)
        self.wk = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.wv = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.wo = nn.Linear(a.dim, a.dim, bias=False)
        self.ffn_norm = RMSNorm(a.dim)
        self.w1 = nn.Linear(a.dim, a.hidden, bias=False)
        self.w2 = nn.Linear(a.hidden, a.dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.hidden, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        h = self.attn_norm(x)
        q = apply_rope(self.wq(h).view(B, T, self.h, self.hd), cos, sin)
        k = apply_rope(self.wk(h).view(B, T, self.kvh, self.hd), cos, sin)
        v = self.wv(h).view(B, T, self.kvh, self.hd)
        rep = self.h // self.kvh
        # Query head i reads KV head i // rep (repeat_interleave keeps that order).
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch 1.x (the Debian package used for the CPU smoke test)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            o = torch.softmax(s.float().masked_fill(mask, float("-inf")), dim=-1).type_as(v) @ v
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, D))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class ByteLlama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.emb = nn.Embedding(256, a.dim)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.dim)
        self.cos, self.sin = rope_tables(a.ctx, a.dim // a.heads, a.device)
        nn.init.normal_(self.emb.weight, std=0.02)
        for n, p in self.named_parameters():
            if p.dim() == 2 and n != "emb.weight":
                std = 0.02 / math.sqrt(2 * a.layers) if n.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return F.linear(self.norm(x), self.emb.weight)  # shared classifier


def passkey_window(rng, text, ctx):
    """A window of ctx+1 bytes of `text` with a pass key planted at a random depth and asked
    for at the end (the same layout twl_accuracy uses on held-out text)."""
    key = "".join(rng.choice("0123456789") for _ in range(5))
    plant = f" The pass key is {key}. Remember it. {key} is the pass key. ".encode()
    ask = f" What is the pass key? The pass key is {key}.".encode()
    body_len = ctx + 1 - len(plant) - len(ask)
    start = rng.randrange(0, len(text) - body_len)
    body = text[start:start + body_len]
    at = rng.randrange(0, body_len)
    return body[:at] + plant + body[at:] + ask


def batch(rng, text, a):
    rows = []
    for _ in range(a.batch):
        if rng.random() < a.passkey_frac:
            rows.append(passkey_window(rng, text, a.ctx))
        else:
            s = rng.randrange(0, len(text) - a.ctx - 1)
            rows.append(text[s:s + a.ctx + 1])
    t = torch.tensor([list(r) for r in rows], dtype=torch.long)
    return t[:, :-1].to(a.device, non_blocking=True), t[:, 1:].to(a.device, non_blocking=True)


@torch.no_grad()
def evaluate(model, text, a, autocast):
    """Mean held-out loss (nats per byte) over evenly spaced windows of the full context."""
    model.eval()
    n = min(a.eval_windows, max(1, (len(text) - 1) // a.ctx))
    step = (len(text) - a.ctx - 1) // max(1, n)
    total, count = 0.0, 0
    for i in range(n):
        w = torch.tensor(list(text[i * step:i * step + a.ctx + 1]), dtype=torch.long, device=a.device)
        with autocast():
            logits = model(w[None, :-1])
        total += F.cross_entropy(logits.float().view(-1, 256), w[1:], reduction="sum").item()
        count += a.ctx
    model.train()
    return total / count


def write_llama2c(model, a, path):
    """llama2.c legacy format (see the module docstring)."""
    hd = a.dim // a.heads
    blocks = model.blocks

    def put(f, t):
        f.write(_tensor_bytes(t))

    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("7i", a.dim, a.hidden, a.layers, a.heads, a.kv_heads, 256, a.ctx))
        put(f, model.emb.weight)
        for name in ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"]:
            for b in blocks:
                put(f, getattr(b, name).weight)
        put(f, model.norm.weight)
        cos, sin = rope_tables(a.ctx, hd, "cpu")
        put(f, cos)
        put(f, sin)
    os.replace(tmp, path)


def _tensor_bytes(t):
    """Little-endian FP32, row-major (nn.Linear weights are [out][in], as MatVec reads them)."""
    t = t.detach().float().cpu().contiguous()
    try:
        return t.numpy().astype("<f4").tobytes()
    except (ImportError, RuntimeError):  # torch without numpy
        flat = t.view(-1).tolist()
        return struct.pack(f"<{len(flat)}f", *flat)


def main():
    a = parse_args()
    if a.hidden <= 0:
        a.hidden = ((8 * a.dim // 3) + 31) // 32 * 32
    if a.dim % a.heads or a.heads % a.kv_heads or (a.dim // a.heads) % 2:
        sys.exit("dim must split into heads of even size, heads into kv-heads")
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    with open(a.train, "rb") as f:
        train = f.read()
    with open(a.val, "rb") as f:
        val = f.read()
    cut = int(len(train) * (1 - a.val_frac))
    train, select = train[:cut], train[cut:]
    if len(train) < 2 * a.ctx + 2 or len(val) < a.ctx + 2 or len(select) < a.ctx + 2:
        sys.exit(f"text too short for context {a.ctx}")
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    model = ByteLlama(a).to(a.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: dim {a.dim} hidden {a.hidden} layers {a.layers} heads {a.heads}/{a.kv_heads} "
          f"ctx {a.ctx}: {params / 1e6:.2f} M parameters; train {len(train)} bytes, "
          f"held-out {len(val)} bytes; device {a.device}", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), **({"fused": True} if cuda else {}))
    step_fn = torch.compile(model) if a.compile else model

    def autocast():
        if cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    t0 = time.time()
    step, loss_ema = 0, None
    best, best_state, last_eval = float("inf"), None, t0

    def check_heldout():
        nonlocal best, best_state
        v = evaluate(model, select, a, autocast)
        if v < best:
            best = v
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        print(f"  validation at step {step}: {v:.4f} nats/byte (best {best:.4f})", flush=True)

    while step < a.steps:
        elapsed = time.time() - t0
        progress = max(step / a.steps, elapsed / a.time_budget)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / a.warmup)
        lr = a.lr * warm * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(rng, train, a)
        with autocast():
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if time.time() - last_eval >= a.eval_every:
            check_heldout()
            last_eval = time.time()
        if step % 50 == 0 or step <= 5:
            print(f"step {step} loss {loss.item():.4f} (ema {loss_ema:.4f}) lr {lr:.2e} "
                  f"{time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    if best_state is not None:
        check_heldout()
        model.load_state_dict(best_state)  # the best validation checkpoint seen
    val_loss = evaluate(model, val, a, autocast)
    print(f"held-out: {val_loss:.4f} nats/byte = {val_loss / math.log(2):.4f} bits/byte, "
          f"perplexity {math.exp(val_loss):.3f} per byte ({step} steps, {train_s:.0f} s)", flush=True)
    write_llama2c(model, a, a.out)
    # Cross-check for the C++ loader: FP32 loss over the first --ctx bytes of the held-out file
    # (ctx - 1 predictions), what `twl_accuracy --only realtext --text-seqs 1` reports as the
    # dense perplexity's log.
    with torch.no_grad():
        model.eval()
        w = torch.tensor(list(val[:a.ctx]), dtype=torch.long, device=a.device)
        first = F.cross_entropy(model(w[None, :-1]).float().view(-1, 256), w[1:]).item()
    print(f"first held-out window (FP32): {first:.6f} nats/byte, perplexity {math.exp(first):.4f}",
          flush=True)
    summary = {"first_window_nats_per_byte": first, "steps": step, "train_seconds": train_s, "heldout_nats_per_byte": val_loss,
               "heldout_ppl_per_byte": math.exp(val_loss), "params": params,
               "config": {k: v for k, v in vars(a).items() if k not in ("device",)},
               "device": a.device, "torch": torch.__version__}
    with open(a.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes) and {a.out}.json", flush=True)


if __name__ == "__main__":
    main()
