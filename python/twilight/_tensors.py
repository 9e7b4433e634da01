"""Turning NumPy arrays and PyTorch tensors into (pointer, dtype, memory space) for the C API.

No array is copied when it is already contiguous in a dtype the C API takes; torch is never
imported here (a tensor is recognised by its type's module), so NumPy-only users need no torch.
"""
from __future__ import annotations

from typing import Optional

from . import _lib


class View:
    """A C view of an array: pointer, dtype, memory space, CUDA ordinal, element count, and the
    (possibly converted) array, kept alive during the call."""

    __slots__ = ("ptr", "dtype", "space", "device", "numel", "obj")

    def __init__(self, ptr, dtype, space, device, numel, obj):
        self.ptr, self.dtype, self.space = ptr, dtype, space
        self.device, self.numel, self.obj = device, numel, obj


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _numpy():
    import numpy  # local: the package imports without NumPy (torch-only users)
    return numpy


def _torch():
    import torch
    return torch


# dtype -> twl_dtype, built on first use (decode runs per layer per step: no per-call dicts).
_NUMPY_DTYPES = {"e": _lib.DTYPE_FP16, "f": _lib.DTYPE_FP32}  # numpy dtype.char
_torch_dtypes = None


def _torch_dtype_map():
    global _torch_dtypes
    if _torch_dtypes is None:
        torch = _torch()
        _torch_dtypes = {torch.float16: _lib.DTYPE_FP16, torch.bfloat16: _lib.DTYPE_BF16,
                         torch.float32: _lib.DTYPE_FP32}
    return _torch_dtypes


def view(x, what: str, writable: bool = False) -> View:
    """The C view of x. Inputs that are not contiguous are made contiguous (a copy); an output
    (writable=True) must already be contiguous, since the library writes through the pointer."""
    np = _numpy_module
    if np is not None and type(x) is np.ndarray:
        code = _NUMPY_DTYPES.get(x.dtype.char)
        if code is None:
            raise TypeError(f"{what}: numpy dtype {x.dtype} unsupported (float16 or float32; "
                            "use a torch tensor for bfloat16)")
        flags = x.flags
        if not flags.c_contiguous or (writable and not flags.writeable):
            if writable:
                raise ValueError(f"{what}: output array must be C-contiguous and writeable")
            x = np.ascontiguousarray(x)
        return View(x.ctypes.data, code, _lib.MEMORY_HOST, None, x.size, x)
    if is_torch(x):
        code = _torch_dtype_map().get(x.dtype)
        if code is None:
            raise TypeError(f"{what}: torch dtype {x.dtype} unsupported "
                            "(float16, bfloat16 or float32)")
        if not x.is_contiguous():
            if writable:
                raise ValueError(f"{what}: output tensor must be contiguous")
            x = x.contiguous()
        dev = x.device
        if dev.type == "cuda":
            return View(x.data_ptr(), code, _lib.MEMORY_DEVICE, dev.index, x.numel(), x)
        if dev.type != "cpu":
            raise ValueError(f"{what}: tensors on {dev} are not supported (cpu or cuda)")
        return View(x.data_ptr(), code, _lib.MEMORY_HOST, None, x.numel(), x)
    try:
        np = _numpy()
    except ImportError:
        np = None
    if np is not None and isinstance(x, np.ndarray):  # an ndarray subclass
        return view(np.asarray(x), what, writable)
    raise TypeError(f"{what}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}")


try:
    import numpy as _numpy_module
except ImportError:  # torch-only use
    _numpy_module = None


def empty_like(x):
    if is_torch(x):
        return _torch().empty_like(x, memory_format=_torch().contiguous_format)
    return _numpy().empty(x.shape, dtype=x.dtype)


# CUDA's explicit handle of the legacy default stream (cudaStreamLegacy). PyTorch reports its
# default stream as handle 0, but NULL at the C API means "no stream": an append from device
# memory then waits until its input has been read, i.e. for everything queued before it, and
# the host can no longer run ahead of the GPU (measured on an H200: ~450 us per append).
CUDA_STREAM_LEGACY = 1


def stream_handle(raw: int) -> int:
    """The C API's stream argument for a raw cudaStream_t: the default stream (0) becomes
    cudaStreamLegacy, the same stream named so that the call stays asynchronous."""
    raw = int(raw)
    return CUDA_STREAM_LEGACY if raw == 0 else raw


def cuda_stream_of(x, stream) -> Optional[int]:
    """The cudaStream_t to enqueue on: `stream` (an int handle or a torch.cuda.Stream) when
    given, else torch's current stream on x's device (what the model's own kernels use).
    Never 0: the default stream is passed as cudaStreamLegacy (see stream_handle)."""
    if stream is not None:
        return stream_handle(getattr(stream, "cuda_stream", stream))
    if is_torch(x) and x.device.type == "cuda":
        return stream_handle(_torch().cuda.current_stream(x.device).cuda_stream)
    return None


def sync_current_stream(x) -> None:
    """Waits for torch's current stream on x's device (work that produced x)."""
    _torch().cuda.current_stream(x.device).synchronize()
