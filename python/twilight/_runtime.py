"""The Runtime class: one KV cache for one model shape on one backend (api/twilight.h)."""
from __future__ import annotations

import ctypes
import os
from typing import Dict, Iterable, Optional, Sequence, Tuple

from . import _lib
from ._tensors import (cuda_stream_of, empty_like, is_torch, stream_handle,
                       sync_current_stream, view)


class TwilightError(RuntimeError):
    """A C API call failed. `status` is the code's name (e.g. "TWL_NOT_FOUND"), `code` its value,
    `message` the library's twl_runtime_last_error() text."""

    def __init__(self, code: int, message: str):
        self.code = int(code)
        self.status = _lib.STATUS_NAMES.get(self.code, "TWL_UNKNOWN_STATUS")
        self.message = message
        super().__init__(f"{self.status}: {message}")


def _check(code: int, handle) -> None:
    if code != _lib.TWL_OK:
        raise TwilightError(code, _lib.twl_runtime_last_error(handle).decode("utf-8", "replace"))


def _struct_to_dict(s) -> Dict[str, object]:
    return {name: getattr(s, name) for name, _ in s._fields_ if name != "struct_size"}


def _enum(value, table: Dict[str, int], what: str) -> int:
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"{what} {value!r} unknown (one of {', '.join(table)})")
        return table[value]
    return int(value)


# kv_dtype names (twl_runtime_config.kv_dtype).
KV_DTYPES = {"fp16": _lib.DTYPE_FP16, "bf16": _lib.DTYPE_BF16}


class Runtime:
    """A Twilight KV runtime.

    >>> rt = Runtime(num_layers=2, num_q_heads=8, num_kv_heads=2, head_dim=64, backend="cpu")
    >>> seq = rt.create_sequence()
    >>> rt.append(seq, 0, k, v)           # [n, num_kv_heads, head_dim] each
    >>> out = rt.decode(0, [seq], q)      # q [num_seqs, num_q_heads, head_dim]

    Arguments are the fields of twl_runtime_config; omitted ones take the library's choice.
    backend: "auto", "cpu", "gpu-hbm" or "gpu-offload". selector: "default", "quest", "full",
    "double-sparsity".
    fetch_path: "auto", "gather", "copy-engine". Sizes are in bytes. k_scheme: how the estimation
    copy of K is scaled, "auto"/0 (the library's choice: page channel), "page-channel"/1 (each
    channel over its page's min/max: at 4 bits 100% of heads keep >= p - 0.02 of the true mass
    vs 95.3% per token, bench/ACCURACY.md) or "token"/2 (one scale/zero per token, the previous
    default); every backend, ignored at k_bits 16; config reports "page-channel" or "token".
    kv_dtype: element type of the stored K/V pages,
    "fp16" (default) or "bf16" (same memory; appends are rounded to it; needs k_bits < 16).
    cache_rows (gpu-offload): what the GPU cache holds: 0 library default, 1 whole blocks,
    2 single K+V rows.
    """

    def __init__(self, num_layers: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 backend="auto", *, page_size: int = 0, k_bits: int = 0, top_p: float = 0.0,
                 selector="default", selector_budget_tokens: int = 0,
                 selector_budget_fraction: float = 0.0, sink_pages: int = -1,
                 dense_layers: int = -1, host_pool_bytes: int = 0, gpu_cache_bytes: int = 0,
                 fetch_path="auto", device_id: int = -1, collect_telemetry: Optional[bool] = None,
                 disk_path: Optional[str] = None, disk_bytes: int = 0, k_scheme=0,
                 kv_dtype="fp16", cache_rows: int = 0):
        self._handle = ctypes.c_void_p()
        self._seq_key, self._seq_arr = None, None
        c = _lib.RuntimeConfig.default()
        c.num_layers, c.num_q_heads, c.num_kv_heads, c.head_dim = (
            num_layers, num_q_heads, num_kv_heads, head_dim)
        c.page_size, c.k_bits, c.top_p = page_size, k_bits, top_p
        c.selector = _enum(selector, _lib.SELECTORS, "selector")
        c.selector_budget_tokens = selector_budget_tokens
        c.selector_budget_fraction = selector_budget_fraction
        c.sink_pages, c.dense_layers = sink_pages, dense_layers
        c.host_pool_bytes, c.gpu_cache_bytes = host_pool_bytes, gpu_cache_bytes
        c.fetch_path = _enum(fetch_path, _lib.FETCH_PATHS, "fetch_path")
        c.backend = _enum(backend, _lib.BACKENDS, "backend")
        c.device_id = device_id
        c.collect_telemetry = -1 if collect_telemetry is None else int(bool(collect_telemetry))
        self._disk_path = None if disk_path is None else os.fsencode(disk_path)
        c.disk_path, c.disk_bytes = self._disk_path, disk_bytes
        c.k_scheme = _enum(k_scheme, _lib.K_SCHEMES, "k_scheme")
        c.kv_dtype = _enum(kv_dtype, KV_DTYPES, "kv_dtype")
        c.cache_rows = cache_rows
        _check(_lib.twl_runtime_create(ctypes.byref(c), ctypes.byref(self._handle)), None)
        got = _lib.RuntimeConfig.default()
        _check(_lib.twl_runtime_get_config(self._handle, ctypes.byref(got)), self._handle)
        self._config = got
        self.num_layers, self.num_q_heads = got.num_layers, got.num_q_heads
        self.num_kv_heads, self.head_dim = got.num_kv_heads, got.head_dim
        self.device_id = got.device_id

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the runtime and all its sequences (twl_runtime_free). Idempotent."""
        if getattr(self, "_handle", None) and self._handle.value:
            _lib.twl_runtime_free(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be torn down
            pass

    def _h(self):
        if not self._handle.value:
            raise TwilightError(1, "runtime is closed")
        return self._handle

    # ---- description ------------------------------------------------------------------------
    @property
    def config(self) -> Dict[str, object]:
        """The configuration in use, every "library chooses" sentinel resolved."""
        d = _struct_to_dict(self._config)
        d["backend"] = _lib.BACKEND_NAMES.get(d["backend"], d["backend"])
        d["selector"] = {v: k for k, v in _lib.SELECTORS.items()}.get(d["selector"])
        d["fetch_path"] = {v: k for k, v in _lib.FETCH_PATHS.items()}.get(d["fetch_path"])
        d["kv_dtype"] = {v: k for k, v in KV_DTYPES.items()}.get(d["kv_dtype"])
        d["k_scheme"] = {v: k for k, v in _lib.K_SCHEMES.items()}.get(d["k_scheme"])
        if d["disk_path"] is not None:
            d["disk_path"] = os.fsdecode(d["disk_path"])
        return d

    @property
    def backend(self) -> str:
        """"cpu", "gpu-hbm" or "gpu-offload" (never "auto")."""
        return _lib.BACKEND_NAMES[_lib.twl_runtime_backend(self._h())]

    @property
    def backend_name(self) -> str:
        return _lib.twl_runtime_backend_name(self._h()).decode()

    def check_async_error(self) -> None:
        """Raises the first failure of a background transfer since the previous check."""
        _check(_lib.twl_runtime_async_error(self._h()), self._handle)

    # ---- sequences --------------------------------------------------------------------------
    def create_sequence(self) -> int:
        out = _lib.seq_id_t()
        _check(_lib.twl_sequence_create(self._h(), ctypes.byref(out)), self._handle)
        return out.value

    def free_sequence(self, seq: int) -> None:
        _check(_lib.twl_sequence_free(self._h(), seq), self._handle)

    def fork_sequence(self, parent: int) -> int:
        out = _lib.seq_id_t()
        _check(_lib.twl_sequence_fork(self._h(), parent, ctypes.byref(out)), self._handle)
        return out.value

    def length(self, seq: int, layer: int) -> int:
        out = ctypes.c_int32()
        _check(_lib.twl_sequence_length(self._h(), seq, layer, ctypes.byref(out)), self._handle)
        return out.value

    def append(self, seq: int, layer: int, k, v, synchronize: bool = True) -> None:
        """Appends tokens' K and V, each [n, num_kv_heads, head_dim] (any shape with that many
        elements) as float16/bfloat16/float32, in host memory or (GPU backends) on the device.
        The library has read them when this returns.

        twl_sequence_append takes no stream, so CUDA tensors must be complete before the call:
        with synchronize=True (default) torch's current stream is synchronized first. A loop
        that appends many sequences' K/V produced by one kernel can synchronize once itself
        and pass synchronize=False."""
        kv, vv, n = self._kv_views(k, v)
        self._check_device(kv)
        if synchronize and kv.space == _lib.MEMORY_DEVICE and is_torch(k):
            sync_current_stream(k)
        _check(_lib.twl_sequence_append(self._h(), seq, layer, n, kv.ptr, vv.ptr, kv.dtype,
                                        kv.space), self._handle)

    def append_batch(self, layer: int, seqs: Sequence[int], k, v, counts=None,
                     stream=None) -> None:
        """Appends to many sequences of one layer in one call (twl_append_batch): k and v each
        hold sum(counts) tokens [.., num_kv_heads, head_dim] packed sequence after sequence in
        the order of seqs (e.g. a [B, T, Hkv, D] tensor with counts [T] * B, the default when
        counts is None). All or nothing across the batch.

        CUDA tensors are enqueued on `stream` (default torch's current stream on k's device),
        so nothing synchronizes: the runtime orders later decodes after the append. With a
        library older than twl_append_batch this falls back to one synchronized append per
        sequence (which is not all or nothing when the pool runs full part way)."""
        n = len(seqs)
        row = self.num_kv_heads * self.head_dim
        kv, vv, tokens = self._kv_views(k, v)
        if counts is None:
            if n == 0 or tokens % n:
                raise ValueError(f"{tokens} tokens do not split evenly over {n} sequences; "
                                 "pass counts")
            counts = [tokens // n] * n
        counts = [int(c) for c in counts]
        if len(counts) != n or sum(counts) != tokens:
            raise ValueError(f"counts must have {n} entries summing to {tokens}")
        self._check_device(kv)
        if _lib.twl_append_batch is None:
            # Unknown ids fail before anything is appended; a pool running full part way
            # through is not undone (twl_append_batch is all or nothing, this is not).
            for s in seqs:
                self.length(s, layer)
            kt, vt = kv.obj.reshape(tokens, row), vv.obj.reshape(tokens, row)
            if kv.space == _lib.MEMORY_DEVICE and is_torch(kt):
                sync_current_stream(kt)
            start = 0
            for s, c in zip(seqs, counts):
                if c:
                    self.append(s, layer, kt[start:start + c], vt[start:start + c],
                                synchronize=False)
                start += c
            return
        st = cuda_stream_of(k, stream) if kv.space == _lib.MEMORY_DEVICE else None
        _check(_lib.twl_append_batch(self._h(), layer, (_lib.seq_id_t * n)(*seqs),
                                     (ctypes.c_int32 * n)(*counts), n, kv.ptr, vv.ptr, kv.dtype,
                                     kv.space, st), self._handle)

    def read_kv(self, seq: int, layer: int):
        """The cached K and V of seq in layer as two numpy arrays [len, num_kv_heads, head_dim]
        (a copy): float16 when kv_dtype is "fp16", float32 holding the stored BF16 values
        exactly when it is "bf16" (NumPy has no bfloat16)."""
        import numpy as np
        n = ctypes.c_int32()
        _check(_lib.twl_sequence_read_kv(self._h(), seq, layer, None, None, 0, ctypes.byref(n)),
               self._handle)
        shape = (n.value, self.num_kv_heads, self.head_dim)
        bf16 = self._config.kv_dtype == _lib.DTYPE_BF16
        k = np.empty(shape, np.uint16 if bf16 else np.float16)
        v = np.empty(shape, np.uint16 if bf16 else np.float16)
        _check(_lib.twl_sequence_read_kv(self._h(), seq, layer, k.ctypes.data, v.ctypes.data,
                                         n.value, ctypes.byref(n)), self._handle)
        if bf16:  # BF16 bits are the high half of the float32 with the same value
            k = (k.astype(np.uint32) << 16).view(np.float32)
            v = (v.astype(np.uint32) << 16).view(np.float32)
        return k, v

    # ---- decode -----------------------------------------------------------------------------
    def decode(self, layer: int, seqs: Sequence[int], q, out=None, p=None, stream=None):
        """One decode-attention step of `layer` for the batch `seqs`.

        q: [num_seqs, num_q_heads, head_dim] float16 (bfloat16 and float32 too with a library
        that has twl_decode_ex), a numpy array or a cpu tensor (host) or a CUDA tensor (device,
        GPU backends). out: same shape and dtype, allocated when None; returned.
        p: per-sequence top-p (None: the runtime's). stream: CUDA stream for device tensors
        (torch.cuda.Stream or handle); default torch's current stream on q's device, so the
        step is ordered with the model's kernels and nothing synchronizes.
        """
        n = len(seqs)
        if out is None:
            out = empty_like(q)
        qv, ov = view(q, "q"), view(out, "out", writable=True)
        expect = n * self.num_q_heads * self.head_dim
        if qv.numel != expect or ov.numel != expect:
            raise ValueError(f"q and out must each hold num_seqs * num_q_heads * head_dim = "
                             f"{expect} elements (got {qv.numel} and {ov.numel})")
        if qv.dtype != ov.dtype or qv.space != ov.space:
            raise ValueError("q and out must have the same dtype and memory space")
        self._check_device(qv)
        # A serving loop decodes the same batch in every layer: reuse its C array.
        key = tuple(seqs)
        if key != self._seq_key:
            self._seq_key, self._seq_arr = key, (_lib.seq_id_t * n)(*key)
        seq_arr = self._seq_arr
        if p is not None and isinstance(p, (int, float)):
            p = [float(p)] * n
        p_arr = None if p is None else (ctypes.c_float * n)(*p)
        st = cuda_stream_of(q, stream) if qv.space == _lib.MEMORY_DEVICE else None
        if qv.dtype == _lib.DTYPE_FP16 and _lib.twl_decode_ex is None:
            code = _lib.twl_decode(self._h(), layer, seq_arr, n, qv.ptr, ov.ptr, qv.space,
                                   p_arr, st)
        elif _lib.twl_decode_ex is not None:
            code = _lib.twl_decode_ex(self._h(), layer, seq_arr, n, qv.ptr, ov.ptr, qv.dtype,
                                      qv.space, p_arr, st)
        else:
            raise TwilightError(9, f"{_lib.lib_path} has no twl_decode_ex: q/out must be float16")
        _check(code, self._handle)
        return out

    def bind_batch(self, seqs: Sequence[int], max_tokens: int) -> "BoundBatch":
        """Binds `seqs` for decode steps of fixed shape (twl_batch_create): the runtime keeps
        their lengths and page tables (rows of max_tokens tokens) current on every append, so
        BoundBatch.decode needs no host work and can be captured in a CUDA graph (GPU HBM and
        GPU offload backends, the latter with its row cache and no disk tier; the CPU backend
        decodes it eagerly, like decode). While bound, an append past
        max_tokens and free_sequence of a member raise TWL_FAILED_PRECONDITION."""
        if _lib.twl_batch_create is None:
            raise TwilightError(9, f"{_lib.lib_path} has no twl_batch_create")
        n = len(seqs)
        out = _lib.batch_id_t()
        _check(_lib.twl_batch_create(self._h(), (_lib.seq_id_t * n)(*seqs), n, int(max_tokens),
                                     ctypes.byref(out)), self._handle)
        return BoundBatch(self, out.value, list(seqs), int(max_tokens))

    def _kv_views(self, k, v):
        """Views of the K and V an append takes and their token count: each must hold whole
        tokens of num_kv_heads * head_dim elements, as many as the other, of one dtype and
        memory space."""
        row = self.num_kv_heads * self.head_dim
        kv, vv = view(k, "k"), view(v, "v")
        if kv.numel != vv.numel or kv.numel % row:
            raise ValueError(f"k and v must each hold tokens * {row} elements "
                             f"(got {kv.numel} and {vv.numel})")
        if kv.dtype != vv.dtype or kv.space != vv.space:
            raise ValueError("k and v must have the same dtype and memory space")
        return kv, vv, kv.numel // row

    def _check_device(self, v) -> None:
        if v.space == _lib.MEMORY_DEVICE and v.device is not None and v.device != self.device_id:
            raise ValueError(f"tensor on cuda:{v.device}, runtime on cuda:{self.device_id}")

    # ---- telemetry and memory ---------------------------------------------------------------
    def last_step(self) -> Dict[str, object]:
        """Scalars of this thread's last successful decode (twl_step_stats) as a dict."""
        s = _lib.StepStats()
        s.struct_size = ctypes.sizeof(s)
        _check(_lib.twl_runtime_last_step(self._h(), ctypes.byref(s)), self._handle)
        return _struct_to_dict(s)

    def last_step_heads(self):
        """Per-head arrays of the last step as numpy arrays: selected, kept, est_mass,
        full_mass, cap_hit [num_seqs, num_q_heads] and kept_kv [num_seqs, num_kv_heads].

        est_mass is the kept set's estimated mass within the candidates; full_mass a lower
        bound of it over the whole context (>= p unless the head hit the selector cap; -1 where
        unknown); cap_hit is 1 where the candidate growth stopped at selector_budget_*. A
        library without twl_runtime_last_step_mass gives the first four only."""
        import numpy as np
        s = self.last_step()
        b = s["num_seqs"]
        sel = np.zeros((b, self.num_q_heads), np.int32)
        kept = np.zeros((b, self.num_q_heads), np.int32)
        mass = np.zeros((b, self.num_q_heads), np.float32)
        kv = np.zeros((b, self.num_kv_heads), np.int32)
        _check(_lib.twl_runtime_last_step_heads(self._h(), sel.ctypes.data, kept.ctypes.data,
                                                mass.ctypes.data, sel.size, kv.ctypes.data,
                                                kv.size), self._handle)
        heads = {"selected": sel, "kept": kept, "est_mass": mass, "kept_kv": kv}
        if _lib.twl_runtime_last_step_mass is not None:
            full = np.zeros((b, self.num_q_heads), np.float32)
            cap = np.zeros((b, self.num_q_heads), np.int32)
            _check(_lib.twl_runtime_last_step_mass(self._h(), full.ctypes.data, cap.ctypes.data,
                                                   full.size), self._handle)
            heads["full_mass"] = full
            heads["cap_hit"] = cap
        return heads

    def memory(self) -> Dict[str, int]:
        m = _lib.MemoryUsage()
        m.struct_size = ctypes.sizeof(m)
        _check(_lib.twl_runtime_memory(self._h(), ctypes.byref(m)), self._handle)
        return _struct_to_dict(m)

    # ---- save / restore ---------------------------------------------------------------------
    def save(self, seq: int, path) -> None:
        _check(_lib.twl_sequence_save(self._h(), seq, os.fsencode(path)), self._handle)

    def restore(self, path) -> int:
        out = _lib.seq_id_t()
        _check(_lib.twl_sequence_restore(self._h(), os.fsencode(path), ctypes.byref(out)),
               self._handle)
        return out.value


class BoundBatch:
    """A bound batch (Runtime.bind_batch). decode(layer, q) decodes every member in bind order;
    tables(layer) gives (lengths, page table) as the device sees them; free() unbinds (also
    done when the runtime closes)."""

    def __init__(self, runtime: Runtime, batch_id: int, seqs, max_tokens: int):
        self.runtime, self.id, self.seqs, self.max_tokens = runtime, batch_id, seqs, max_tokens

    def decode(self, layer: int, q, out=None, stream=None):
        """q [num_seqs, num_q_heads, head_dim] (float16, bfloat16 or float32; host arrays on the
        CPU backend, CUDA tensors on GPU backends); out allocated like q when None; returned."""
        rt = self.runtime
        if out is None:
            out = empty_like(q)
        qv, ov = view(q, "q"), view(out, "out", writable=True)
        expect = len(self.seqs) * rt.num_q_heads * rt.head_dim
        if qv.numel != expect or ov.numel != expect:
            raise ValueError(f"q and out must each hold num_seqs * num_q_heads * head_dim = "
                             f"{expect} elements (got {qv.numel} and {ov.numel})")
        if qv.dtype != ov.dtype or qv.space != ov.space:
            raise ValueError("q and out must have the same dtype and memory space")
        st = cuda_stream_of(q, stream) if qv.space == _lib.MEMORY_DEVICE else None
        _check(_lib.twl_decode_batch(rt._h(), self.id, layer, qv.ptr, ov.ptr, qv.dtype, st),
               rt._handle)
        return out

    def reserve(self, stream=None) -> None:
        """Takes the next row of every sequence in every layer (twl_batch_reserve): lengths
        grow by one; the rows hold unspecified values until append() of each layer fills
        them. Once per step, before the step's appends (or the graph replay holding them);
        `stream` (GPU backends): where the table writes go, the appends' stream ideally
        (None: the runtime's own; the runtime orders it before later appends either way)."""
        if _lib.twl_batch_reserve is None:
            raise TwilightError(9, f"{_lib.lib_path} has no twl_batch_reserve")
        rt = self.runtime
        st = None if stream is None else stream_handle(getattr(stream, "cuda_stream", stream))
        _check(_lib.twl_batch_reserve(rt._h(), self.id, st), rt._handle)

    def append(self, layer: int, k, v, stream=None) -> None:
        """Writes k and v ([num_seqs, num_kv_heads, head_dim], one token per sequence in bind
        order) into the rows the last reserve() took in `layer` (twl_batch_append). GPU
        backends: CUDA tensors, enqueued on the stream, capturable in a CUDA graph; CPU: host
        arrays, synchronous."""
        if _lib.twl_batch_append is None:
            raise TwilightError(9, f"{_lib.lib_path} has no twl_batch_append")
        rt = self.runtime
        kv, vv, tokens = rt._kv_views(k, v)
        if tokens != len(self.seqs):
            raise ValueError(f"k and v must hold one token per sequence ({len(self.seqs)}), "
                             f"got {tokens}")
        st = cuda_stream_of(k, stream) if kv.space == _lib.MEMORY_DEVICE else None
        _check(_lib.twl_batch_append(rt._h(), self.id, layer, kv.ptr, vv.ptr, kv.dtype, st),
               rt._handle)

    def tables(self, layer: int):
        """(lengths [n], page table [n, max_pages]) of `layer` as int32 numpy arrays; page ids
        past a sequence's pages are -1."""
        import numpy as np
        rt = self.runtime
        n = len(self.seqs)
        mp = ctypes.c_int32()
        _check(_lib.twl_batch_tables(rt._h(), self.id, layer, None, 0, None, 0, ctypes.byref(mp)),
               rt._handle)
        lens = np.empty(n, np.int32)
        pages = np.empty((n, mp.value), np.int32)
        _check(_lib.twl_batch_tables(rt._h(), self.id, layer, lens.ctypes.data, n,
                                     pages.ctypes.data, pages.size, None), rt._handle)
        return lens, pages

    def free(self) -> None:
        if self.id:
            _check(_lib.twl_batch_free(self.runtime._h(), self.id), self.runtime._handle)
            self.id = 0
