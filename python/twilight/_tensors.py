"""Turning NumPy arrays and PyTorch tensors into (pointer, dtype, memory space) for the C API.

No array is copied when it is already contiguous in a dtype the C API takes; torch is never
imported here (a tensor is recognised by its type's module), so NumPy-only users need no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from . import _lib


@dataclass
class View:
    ptr: int
    dtype: int          # _lib.DTYPE_*
    space: int          # _lib.MEMORY_*
    device: Optional[int]  # CUDA ordinal of a device tensor
    numel: int
    obj: Any            # keeps the (possibly converted) array alive during the call


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _numpy():
    import numpy  # local: the package imports without NumPy (torch-only users)
    return numpy


def _torch():
    import torch
    return torch


def view(x, what: str, writable: bool = False) -> View:
    """The C view of x. Inputs that are not contiguous are made contiguous (a copy); an output
    (writable=True) must already be contiguous, since the library writes through the pointer."""
    if is_torch(x):
        torch = _torch()
        dtypes = {torch.float16: _lib.DTYPE_FP16, torch.bfloat16: _lib.DTYPE_BF16,
                  torch.float32: _lib.DTYPE_FP32}
        if x.dtype not in dtypes:
            raise TypeError(f"{what}: torch dtype {x.dtype} unsupported "
                            "(float16, bfloat16 or float32)")
        if not x.is_contiguous():
            if writable:
                raise ValueError(f"{what}: output tensor must be contiguous")
            x = x.contiguous()
        if x.device.type == "cuda":
            return View(x.data_ptr(), dtypes[x.dtype], _lib.MEMORY_DEVICE, x.device.index,
                        x.numel(), x)
        if x.device.type != "cpu":
            raise ValueError(f"{what}: tensors on {x.device} are not supported (cpu or cuda)")
        return View(x.data_ptr(), dtypes[x.dtype], _lib.MEMORY_HOST, None, x.numel(), x)
    np = _numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    dtypes = {np.dtype(np.float16): _lib.DTYPE_FP16, np.dtype(np.float32): _lib.DTYPE_FP32}
    if x.dtype not in dtypes:
        raise TypeError(f"{what}: numpy dtype {x.dtype} unsupported (float16 or float32; "
                        "use a torch tensor for bfloat16)")
    if not x.flags["C_CONTIGUOUS"] or (writable and not x.flags["WRITEABLE"]):
        if writable:
            raise ValueError(f"{what}: output array must be C-contiguous and writeable")
        x = np.ascontiguousarray(x)
    return View(x.ctypes.data, dtypes[x.dtype], _lib.MEMORY_HOST, None, x.size, x)


def empty_like(x):
    if is_torch(x):
        return _torch().empty_like(x, memory_format=_torch().contiguous_format)
    return _numpy().empty(x.shape, dtype=x.dtype)


def cuda_stream_of(x, stream) -> Optional[int]:
    """The cudaStream_t to enqueue on: `stream` (an int handle or a torch.cuda.Stream) when
    given, else torch's current stream on x's device (what the model's own kernels use)."""
    if stream is not None:
        return int(getattr(stream, "cuda_stream", stream))
    if is_torch(x) and x.device.type == "cuda":
        return int(_torch().cuda.current_stream(x.device).cuda_stream)
    return None


def sync_current_stream(x) -> None:
    """Waits for torch's current stream on x's device (work that produced x)."""
    _torch().cuda.current_stream(x.device).synchronize()
