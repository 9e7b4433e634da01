"""Python binding of the Twilight KV runtime (api/twilight.h) over ctypes.

    import twilight
    rt = twilight.Runtime(num_layers=32, num_q_heads=32, num_kv_heads=8, head_dim=128)
    seq = rt.create_sequence()
    rt.append(seq, layer, k, v)          # numpy arrays or torch tensors
    out = rt.decode(layer, [seq], q)     # torch CUDA tensors: on torch's current stream

The shared library is found through $TWILIGHT_LIB (a file or directory), next to this package
(cmake --install), a build directory of the source checkout, or the dynamic loader's path.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Dict, Optional

from . import _lib
from ._runtime import BoundBatch, Runtime, TwilightError

__all__ = ["BoundBatch", "Runtime", "TwilightError", "version", "capabilities", "set_log_callback",
           "library_path", "__version__"]

__version__ = "0.2.1"
library_path: str = _lib.lib_path

LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 0, 1, 2, 3


def version() -> str:
    """Version of the loaded library, "MAJOR.MINOR.PATCH"."""
    return _lib.twl_version_string().decode()


def capabilities() -> Dict[str, object]:
    """What this library build can do (twl_get_capabilities): backends built, whether a GPU is
    usable now, CUDA architectures compiled, and per backend the head dims, the largest number
    of query heads per KV head, the q/out dtypes of decode and the stored K/V dtypes."""
    if _lib.twl_get_capabilities is None:
        raise TwilightError(9, f"{_lib.lib_path} has no twl_get_capabilities")
    c = _lib.Capabilities()
    c.struct_size = ctypes.sizeof(c)
    code = _lib.twl_get_capabilities(ctypes.byref(c))
    if code != _lib.TWL_OK:
        raise TwilightError(code, _lib.twl_runtime_last_error(None).decode())
    dtype_names = {_lib.DTYPE_FP16: "float16", _lib.DTYPE_BF16: "bfloat16",
                   _lib.DTYPE_FP32: "float32"}
    backends = {}
    for name, b in _lib.BACKENDS.items():
        if b == _lib.BACKEND_AUTO or not (c.backends_built >> b) & 1:
            continue
        backends[name] = {
            "head_dims": [d for d in c.head_dims[b] if d],
            "max_q_per_kv": c.max_q_per_kv[b],
            "decode_dtypes": [n for t, n in dtype_names.items() if (c.decode_dtypes[b] >> t) & 1],
            "kv_dtypes": [n for t, n in dtype_names.items() if (c.kv_dtypes[b] >> t) & 1],
        }
    return {"backends": backends, "gpu_usable": bool(c.gpu_usable),
            "cuda_archs": list(c.cuda_archs[:c.num_cuda_archs])}


_log_keepalive = None  # the ctypes trampoline must outlive its registration


def set_log_callback(fn: Optional[Callable[[int, str], None]], level: int = LOG_WARNING) -> None:
    """Routes the library's log messages of `level` or more severe (LOG_ERROR=0 ... LOG_DEBUG=3)
    to fn(level, message); None restores the default (stderr). Process-wide."""
    global _log_keepalive
    if _lib.twl_set_log_callback is None:
        raise TwilightError(9, f"{_lib.lib_path} has no twl_set_log_callback")
    if fn is None:
        _lib.twl_set_log_callback(_lib.LOG_CALLBACK(), None, level)
        _log_keepalive = None
        return

    def trampoline(lvl, msg, _user):
        try:
            fn(int(lvl), msg.decode("utf-8", "replace"))
        except Exception:  # an exception cannot cross into C; drop it
            pass

    cb = _lib.LOG_CALLBACK(trampoline)
    _lib.twl_set_log_callback(cb, None, level)
    _log_keepalive = cb
