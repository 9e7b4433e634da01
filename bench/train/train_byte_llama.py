#!/usr/bin/env python3
"""Trains a small byte-level Llama-architecture model on real English text (Jane Austen's
novels plus ~48 MB of other English from Debian packages, bench/train/data/) and writes it in
the llama2.c checkpoint format that bench/lib/llama2_model.cc reads, for twl_accuracy's
real-text section (issue 15, item 4).

Data: --train takes files (.txt, .txt.xz or .txt.gz), each optionally PATH:WEIGHT; a window
comes from a file with probability size x weight. The default is austen_train.txt plus every
data/mix/*.txt.xz that bench/train/extract_english_mix.py wrote (KJV, Moby Dick, fortunes,
the Jargon File, Bierce, Python and kernel documentation, FOLDOC): Austen alone (3.4 MB) is
memorized within a few minutes on an H200. The tail (--val-frac) of the FIRST file is held
back to select the checkpoint; --val (Persuasion) is only the final test.

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
"The pass key is NNNNN. Remember it. NNNNN is the pass key." planted at a uniformly random
depth and "What is the pass key? The pass key is NNNNN." at the end, with fresh random digits,
in exactly the layout twl_accuracy --only realtext uses on held-out text (its keys sit at
depths 0.1-0.9 and its 5 answer bytes are the last 5 of the context). The 5 answer bytes
weigh --answer-weight times an ordinary byte in the loss: unweighted they are 5 of 4096
targets and retrieval is learned late or not at all. Checkpoint selection scores held-back
loss plus --select-passkey-weight x the share of held-back pass keys missed (greedy, checked
in one teacher-forced pass: greedy decoding returns the key iff every digit is the argmax
given the earlier ones).

Runs on CUDA with bf16 autocast (--time-budget 380 s on one H200 in
bench/train/device_run.sh; the budget stops training and decays the learning rate on time;
--compile uses torch.compile and falls back to eager if it fails) or on the CPU for a smoke
test:
    python3 bench/train/train_byte_llama.py --device cpu --steps 5 --ctx 256 --dim 64 \
        --layers 2 --batch 2 --out /tmp/smoke.bin
"""
import argparse
import glob
import gzip
import json
import lzma
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
    a.add_argument("--train", nargs="+", default=default_train(),
                   help="training files, PATH or PATH:WEIGHT (.txt/.xz/.gz); the first one's "
                        "tail selects the checkpoint (default: austen_train.txt and "
                        "data/mix/*.txt.xz)")
    a.add_argument("--val", default=os.path.join(HERE, "data", "austen_heldout.txt"))
    a.add_argument("--out", required=True, help="llama2.c checkpoint to write")
    a.add_argument("--dim", type=int, default=256)
    a.add_argument("--hidden", type=int, default=768,
                   help="FFN width (0: 8/3 dim); 768 keeps the default checkpoint ~19 MB")
    a.add_argument("--layers", type=int, default=6)
    a.add_argument("--heads", type=int, default=8)
    a.add_argument("--kv-heads", type=int, default=2)
    a.add_argument("--ctx", type=int, default=4096, help="training context = checkpoint seq_len")
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--min-lr-frac", type=float, default=0.05)
    a.add_argument("--warmup", type=int, default=200)
    a.add_argument("--weight-decay", type=float, default=0.1)
    a.add_argument("--steps", type=int, default=100000, help="upper bound on optimizer steps")
    a.add_argument("--time-budget", type=float, default=380.0,
                   help="seconds of training (the schedule decays on time)")
    a.add_argument("--passkey-frac", type=float, default=0.25)
    a.add_argument("--answer-weight", type=float, default=100.0,
                   help="loss weight of each of a pass key's 5 answer bytes (1: plain LM loss)")
    a.add_argument("--eval-windows", type=int, default=16, help="held-out windows for the loss")
    a.add_argument("--eval-passkeys", type=int, default=32,
                   help="pass keys checked at each validation and on --val at the end")
    a.add_argument("--select-passkey-weight", type=float, default=0.2,
                   help="checkpoint score = held-back nats/byte + this x share of pass keys "
                        "missed")
    a.add_argument("--eval-every", type=float, default=30.0,
                   help="seconds between validation checks; the best checkpoint is written")
    a.add_argument("--val-frac", type=float, default=0.05,
                   help="tail of the training text held back for checkpoint selection (the "
                        "--val text, Persuasion, is only the final test)")
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the training forward (torch >= 2; eager if it fails)")
    a.add_argument("--seed", type=int, default=1)
    return a.parse_args()


def default_train():
    mix = sorted(glob.glob(os.path.join(HERE, "data", "mix", "*.txt.xz")))
    return [os.path.join(HERE, "data", "austen_train.txt")] + mix


def read_source(spec):
    """PATH or PATH:WEIGHT -> (name, bytes, weight); .xz and .gz are decompressed."""
    path, weight = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            path, weight = head, float(tail)
        except ValueError:
            pass
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    return os.path.basename(path).split(".")[0], data, weight


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


KEY_LEN = 5


def passkey_text(rng, text, length, depth, tail=b""):
    """`length` bytes: a slice of `text` with the pass key planted at `depth` (0-1) of it, then
    the question and the 5-byte key, then `tail`. Byte for byte twl_accuracy's prompt (see
    RunRealText in bench/accuracy_main.cc) followed by its expected answer."""
    key = "".join(rng.choice("0123456789") for _ in range(KEY_LEN))
    plant = f" The pass key is {key}. Remember it. {key} is the pass key. ".encode()
    ask = b" What is the pass key? The pass key is " + key.encode() + tail
    body_len = length - len(plant) - len(ask)
    start = rng.randrange(0, len(text) - body_len)
    body = text[start:start + body_len]
    at = int(depth * body_len)
    return body[:at] + plant + body[at:] + ask


def to_tensor(rows, device):
    """Equal-length byte strings -> [rows, len] int64 on `device` (one host copy of uint8)."""
    t = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(len(rows), -1)
    return t.to(device).long()


class Sampler:
    """Training windows of ctx+1 bytes: a source with probability size x weight, then a
    uniform offset; --passkey-frac of them carry a pass key answered in their last bytes."""

    def __init__(self, sources, a, rng):
        self.texts = [t for _, t, _ in sources]
        self.share = [len(t) * w for _, t, w in sources]
        self.a, self.rng = a, rng
        # Targets are the window shifted by one: the answer's 5 bytes (followed by ".") are
        # targets ctx-6 .. ctx-2.
        self.answer = slice(a.ctx - 1 - KEY_LEN, a.ctx - 1)

    def batch(self):
        a, rng = self.a, self.rng
        rows, keyed = [], []
        for text in rng.choices(self.texts, weights=self.share, k=a.batch):
            if rng.random() < a.passkey_frac:
                rows.append(passkey_text(rng, text, a.ctx + 1, rng.random(), tail=b"."))
                keyed.append(len(rows) - 1)
            else:
                s = rng.randrange(0, len(text) - a.ctx - 1)
                rows.append(text[s:s + a.ctx + 1])
        t = to_tensor(rows, a.device)
        w = torch.ones(a.batch, a.ctx, device=a.device)
        if keyed and a.answer_weight != 1.0:
            w[torch.tensor(keyed, device=a.device), self.answer] = a.answer_weight
        return t[:, :-1], t[:, 1:], w


def passkey_set(text, a, seed):
    """Fixed pass-key prompts of --ctx bytes (prompt of ctx-5 + the 5-byte answer), at depths
    spread over 0.1-0.9 as in twl_accuracy."""
    rng = random.Random(seed)
    n = a.eval_passkeys
    return [passkey_text(rng, text, a.ctx, 0.1 + 0.8 * i / max(1, n - 1)) for i in range(n)]


@torch.no_grad()
def passkey_accuracy(model, prompts, a, autocast, per_batch=8):
    """Share of prompts whose 5 answer bytes are each the argmax given the bytes before them
    (= greedy decoding returns the key), and the answer's mean loss (nats per byte)."""
    model.eval()
    hits, loss = 0, 0.0
    for i in range(0, len(prompts), per_batch):
        t = to_tensor(prompts[i:i + per_batch], a.device)
        with autocast():
            logits = model(t[:, :-1])[:, -KEY_LEN:].float()
        want = t[:, -KEY_LEN:]
        hits += int((logits.argmax(-1) == want).all(-1).sum().item())
        loss += F.cross_entropy(logits.reshape(-1, 256), want.reshape(-1), reduction="sum").item()
    model.train()
    return hits / max(1, len(prompts)), loss / max(1, KEY_LEN * len(prompts))


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
    sources = [read_source(spec) for spec in a.train]
    with open(a.val, "rb") as f:
        val = f.read()
    # The first source's tail selects the checkpoint (Austen's, by default: the test is Austen).
    name0, text0, w0 = sources[0]
    cut = int(len(text0) * (1 - a.val_frac))
    sources[0], select = (name0, text0[:cut], w0), text0[cut:]
    if (min(len(t) for _, t, _ in sources) < 2 * a.ctx + 2 or len(val) < a.ctx + 2
            or len(select) < a.ctx + 2):
        sys.exit(f"text too short for context {a.ctx}")
    total = sum(len(t) * w for _, t, w in sources)
    for n, t, w in sources:
        print(f"source {n}: {len(t)} bytes, weight {w:g}, {100 * len(t) * w / total:.1f}% of "
              f"windows", flush=True)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    model = ByteLlama(a).to(a.device)
    params = sum(p.numel() for p in model.parameters())
    train_bytes = sum(len(t) for _, t, _ in sources)
    print(f"model: dim {a.dim} hidden {a.hidden} layers {a.layers} heads {a.heads}/{a.kv_heads} "
          f"ctx {a.ctx}: {params / 1e6:.2f} M parameters; train {train_bytes} bytes in "
          f"{len(sources)} files, selection {len(select)} bytes, held-out {len(val)} bytes; "
          f"device {a.device}", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), **({"fused": True} if cuda else {}))
    step_fn = model
    if a.compile:
        if hasattr(torch, "compile"):
            step_fn = torch.compile(model)
        else:
            print("torch.compile not in this torch: eager", flush=True)

    def autocast():
        if cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sampler = Sampler(sources, a, rng)
    select_keys = passkey_set(select, a, a.seed + 1000)
    t0 = time.time()
    step, seen = 0, 0
    # Running sums stay on the device: a .item() per step would stall the host every step.
    lm_sum = torch.zeros((), device=a.device)
    ans_sum = torch.zeros((), device=a.device)
    ans_n = torch.zeros((), device=a.device)
    n_sum = 0
    best, best_state, last_eval = float("inf"), None, t0
    history = []

    def check_heldout():
        nonlocal best, best_state
        v = evaluate(model, select, a, autocast)
        acc, ans = passkey_accuracy(model, select_keys, a, autocast)
        score = v + a.select_passkey_weight * (1 - acc)
        kept = score < best
        if kept:
            best = score
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            write_llama2c(model, a, a.out)  # a run cut short still leaves its best model
        history.append({"step": step, "seconds": time.time() - t0, "nats_per_byte": v,
                        "passkeys": acc, "answer_nats": ans, "score": score})
        print(f"  validation at step {step} ({time.time() - t0:.0f} s, {seen / 1e6:.0f} MB "
              f"seen): {v:.4f} nats/byte, pass keys {acc:.0%} (answer {ans:.3f} nats/byte), "
              f"score {score:.4f}{' (best)' if kept else ''}", flush=True)

    def train_step(fn, x, y, w):
        with autocast():
            logits = fn(x)
        ce = F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1),
                             reduction="none").view_as(w)
        # Normalized by the byte count, so --answer-weight adds to the LM loss, not dilutes it.
        loss = (ce * w).sum() / ce.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Answer bytes are marked by their weight (none are when --answer-weight is 1).
        return ce.detach(), w != 1

    while step < a.steps:
        elapsed = time.time() - t0
        progress = max(step / a.steps, elapsed / a.time_budget)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / a.warmup)
        lr = a.lr * warm * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, w = sampler.batch()
        if step == 0 and step_fn is not model:
            try:
                ce, is_ans = train_step(step_fn, x, y, w)
            except Exception as e:  # a compiler failure must not cost the device call
                print(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}): eager",
                      flush=True)
                step_fn = model
                ce, is_ans = train_step(step_fn, x, y, w)
        else:
            ce, is_ans = train_step(step_fn, x, y, w)
        step += 1
        seen += x.numel()
        lm_sum += ce.sum()
        n_sum += ce.numel()
        ans_sum += (ce * is_ans).sum()
        ans_n += is_ans.sum()
        if time.time() - last_eval >= a.eval_every:
            check_heldout()
            last_eval = time.time()
        if step % 100 == 0 or step <= 3:
            lm = lm_sum.item() / max(1, n_sum)
            na = ans_n.item()
            ans = f", pass-key answers {ans_sum.item() / na:.3f}" if na else ""
            print(f"step {step} loss {lm:.4f} nats/byte{ans} lr {lr:.2e} "
                  f"{time.time() - t0:.0f} s, {seen / max(1e-9, time.time() - t0) / 1e6:.2f} "
                  f"MB/s", flush=True)
            lm_sum.zero_()
            ans_sum.zero_()
            ans_n.zero_()
            n_sum = 0
    sync()
    train_s = time.time() - t0
    check_heldout()
    model.load_state_dict(best_state)  # the best validation checkpoint seen
    epochs = seen / max(1, train_bytes)
    val_loss = evaluate(model, val, a, autocast)
    val_keys = passkey_set(val, a, a.seed + 2000)
    val_acc, val_ans = passkey_accuracy(model, val_keys, a, autocast)
    print(f"held-out: {val_loss:.4f} nats/byte = {val_loss / math.log(2):.4f} bits/byte, "
          f"perplexity {math.exp(val_loss):.3f} per byte; pass keys {val_acc:.0%} of "
          f"{len(val_keys)} (answer {val_ans:.3f} nats/byte) ({step} steps, {train_s:.0f} s, "
          f"{seen / 1e6:.0f} MB = {epochs:.1f} epochs of the training text)", flush=True)
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
    summary = {"first_window_nats_per_byte": first, "steps": step, "train_seconds": train_s,
               "bytes_seen": seen, "epochs": epochs, "heldout_nats_per_byte": val_loss,
               "heldout_ppl_per_byte": math.exp(val_loss), "heldout_passkeys": val_acc,
               "params": params, "validation": history,
               "sources": [{"name": n, "bytes": len(t), "weight": w_} for n, t, w_ in sources],
               "config": {k: v for k, v in vars(a).items() if k not in ("device",)},
               "device": a.device, "torch": torch.__version__}
    with open(a.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes) and {a.out}.json", flush=True)


if __name__ == "__main__":
    main()
