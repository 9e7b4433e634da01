"""Loading libtwilight and declaring its C API for ctypes.

The structs mirror api/twilight.h field by field. They are append-only in the C ABI and every
struct carries struct_size, so this module keeps working against a newer library: the library
reads and writes only the bytes this module's structs declare.
"""
from __future__ import annotations

import ctypes
import glob
import os
import pathlib

# ---- Enums (values fixed forever in twilight.h) ------------------------------------------
TWL_OK = 0
STATUS_NAMES = {
    0: "TWL_OK",
    1: "TWL_INVALID_ARGUMENT",
    2: "TWL_NOT_FOUND",
    3: "TWL_OUT_OF_MEMORY",
    4: "TWL_CAPACITY_EXHAUSTED",
    5: "TWL_UNAVAILABLE",
    6: "TWL_FAILED_PRECONDITION",
    7: "TWL_IO_ERROR",
    8: "TWL_CORRUPT_DATA",
    9: "TWL_UNSUPPORTED",
    10: "TWL_INTERNAL",
}

BACKEND_AUTO, BACKEND_CPU, BACKEND_GPU_HBM, BACKEND_GPU_OFFLOAD = 0, 1, 2, 3
# One spelling of the backends across the tools and this package.
BACKENDS = {"auto": BACKEND_AUTO, "cpu": BACKEND_CPU, "gpu-hbm": BACKEND_GPU_HBM,
            "gpu-offload": BACKEND_GPU_OFFLOAD}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

DTYPE_FP16, DTYPE_BF16, DTYPE_FP32 = 0, 1, 2
MEMORY_HOST, MEMORY_DEVICE = 0, 1
SELECTORS = {"default": 0, "quest": 1, "full": 2, "double-sparsity": 3}
FETCH_PATHS = {"auto": 0, "gather": 1, "copy-engine": 2}
# twl_runtime_config.k_scheme (TWL_K_SCHEME_*): "auto" is the library's choice, page-channel.
K_SCHEME_AUTO, K_SCHEME_PAGE_CHANNEL, K_SCHEME_TOKEN = 0, 1, 2
K_SCHEMES = {"auto": K_SCHEME_AUTO, "page-channel": K_SCHEME_PAGE_CHANNEL, "token": K_SCHEME_TOKEN}

seq_id_t = ctypes.c_int64


class RuntimeConfig(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_layers", ctypes.c_int32),
        ("num_q_heads", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("page_size", ctypes.c_int32),
        ("k_bits", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("selector", ctypes.c_int32),
        ("selector_budget_tokens", ctypes.c_int32),
        ("selector_budget_fraction", ctypes.c_float),
        ("sink_pages", ctypes.c_int32),
        ("dense_layers", ctypes.c_int32),
        ("host_pool_bytes", ctypes.c_int64),
        ("gpu_cache_bytes", ctypes.c_int64),
        ("fetch_path", ctypes.c_int32),
        ("backend", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("collect_telemetry", ctypes.c_int32),
        ("disk_path", ctypes.c_char_p),
        ("disk_bytes", ctypes.c_int64),
        ("k_scheme", ctypes.c_int32),  # appended: K_SCHEMES (0 auto, 1 page channel, 2 token)
        ("kv_dtype", ctypes.c_int32),  # appended: stored K/V type, DTYPE_FP16 or DTYPE_BF16
        ("cache_rows", ctypes.c_int32),  # appended: GPU offload cache of 0 auto, 1 blocks, 2 rows
    ]

    @classmethod
    def default(cls) -> "RuntimeConfig":
        """TWL_RUNTIME_CONFIG_INIT: every tunable at "library chooses"."""
        c = cls()
        c.struct_size = ctypes.sizeof(cls)
        c.sink_pages = -1
        c.dense_layers = -1
        c.device_id = -1
        c.collect_telemetry = -1
        return c


class StepStats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("layer", ctypes.c_int32),
        ("num_seqs", ctypes.c_int32),
        ("num_q_heads", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("blocks_needed", ctypes.c_int64),
        ("blocks_fetched", ctypes.c_int64),
        ("bytes_h2d", ctypes.c_int64),
        ("cache_hit_rate", ctypes.c_double),
        ("ms_select", ctypes.c_double),
        ("ms_prune", ctypes.c_double),
        ("ms_fetch", ctypes.c_double),
        ("ms_attend", ctypes.c_double),
        ("ms_total", ctypes.c_double),
        ("mean_kept_tokens", ctypes.c_double),
        ("mean_kept_tokens_kv", ctypes.c_double),
        ("disk_pages_loaded", ctypes.c_int64),
        ("disk_pages_spilled", ctypes.c_int64),
        ("ms_disk", ctypes.c_double),
        ("step", ctypes.c_int64),  # appended in 0.2: which decode the figures describe
        # appended: the disk tier under the GPU offload backend
        ("disk_bytes_read", ctypes.c_int64),
        ("disk_pages_read_ahead", ctypes.c_int64),
        ("disk_waits", ctypes.c_int64),
        ("ms_disk_wait", ctypes.c_double),
        ("blocks_in_place", ctypes.c_int64),  # appended: GPU cache misses read in place
        ("bytes_in_place", ctypes.c_int64),
    ]


class MemoryUsage(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("host_pool_bytes_used", ctypes.c_int64),
        ("host_pool_bytes_total", ctypes.c_int64),
        ("gpu_quant_bytes", ctypes.c_int64),
        ("gpu_cache_bytes", ctypes.c_int64),
        ("gpu_fp16_bytes", ctypes.c_int64),
        ("disk_bytes", ctypes.c_int64),
    ]


CAPS_MAX_ARCHS = 16
CAPS_MAX_HEAD_DIMS = 8


class Capabilities(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("backends_built", ctypes.c_uint32),
        ("gpu_usable", ctypes.c_int32),
        ("num_cuda_archs", ctypes.c_int32),
        ("cuda_archs", ctypes.c_int32 * CAPS_MAX_ARCHS),
        ("head_dims", (ctypes.c_int32 * CAPS_MAX_HEAD_DIMS) * 4),
        ("max_q_per_kv", ctypes.c_int32 * 4),
        ("decode_dtypes", ctypes.c_uint32 * 4),
        ("kv_dtypes", ctypes.c_uint32 * 4),  # appended: stored K/V dtypes accepted
    ]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)


def _candidates():
    """Where libtwilight may be, most specific first."""
    env = os.environ.get("TWILIGHT_LIB")
    if env:
        yield env  # a file, or a directory holding the library
        return
    here = pathlib.Path(__file__).resolve().parent
    yield str(here)  # installed: the library sits in the package (cmake --install ... python)
    repo = here.parent.parent  # source checkout: <repo>/python/twilight
    for pattern in ("build", "build-*", "../build-twilight-*", "../build*"):
        for d in sorted(glob.glob(str(repo / pattern))):
            yield d
    yield "libtwilight.so"  # the dynamic loader's own search (LD_LIBRARY_PATH, ldconfig)


def _open_library():
    tried = []
    for c in _candidates():
        path = c
        if os.path.isdir(c):
            found = sorted(glob.glob(os.path.join(c, "libtwilight.so*")))
            if not found:
                tried.append(c + " (no libtwilight.so*)")
                continue
            path = found[0]
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{c} ({e})")
    raise ImportError("twilight: cannot load libtwilight.so; set TWILIGHT_LIB to the library "
                      "(or its directory). Tried: " + "; ".join(tried))


lib, lib_path = _open_library()


def _declare(name, restype, argtypes, optional=False):
    fn = getattr(lib, name, None)
    if fn is None:
        if optional:
            return None
        raise ImportError(f"twilight: {lib_path} lacks {name} (library too old for this package)")
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


P = ctypes.POINTER
vp = ctypes.c_void_p
rt_p = ctypes.c_void_p  # twl_runtime* stays opaque
status = ctypes.c_int32

twl_version = _declare("twl_version", ctypes.c_uint, [])
twl_version_string = _declare("twl_version_string", ctypes.c_char_p, [])
twl_status_string = _declare("twl_status_string", ctypes.c_char_p, [ctypes.c_int32])
twl_runtime_create = _declare("twl_runtime_create", status, [P(RuntimeConfig), P(rt_p)])
twl_runtime_free = _declare("twl_runtime_free", None, [rt_p])
twl_runtime_last_error = _declare("twl_runtime_last_error", ctypes.c_char_p, [rt_p])
twl_runtime_async_error = _declare("twl_runtime_async_error", status, [rt_p])
twl_runtime_get_config = _declare("twl_runtime_get_config", status, [rt_p, P(RuntimeConfig)])
twl_runtime_backend = _declare("twl_runtime_backend", ctypes.c_int32, [rt_p])
twl_runtime_backend_name = _declare("twl_runtime_backend_name", ctypes.c_char_p, [rt_p])
twl_sequence_create = _declare("twl_sequence_create", status, [rt_p, P(seq_id_t)])
twl_sequence_free = _declare("twl_sequence_free", status, [rt_p, seq_id_t])
twl_sequence_fork = _declare("twl_sequence_fork", status, [rt_p, seq_id_t, P(seq_id_t)])
twl_sequence_length = _declare("twl_sequence_length", status,
                               [rt_p, seq_id_t, ctypes.c_int32, P(ctypes.c_int32)])
twl_sequence_append = _declare("twl_sequence_append", status,
                               [rt_p, seq_id_t, ctypes.c_int32, ctypes.c_int32, vp, vp,
                                ctypes.c_int32, ctypes.c_int32])
twl_sequence_read_kv = _declare("twl_sequence_read_kv", status,
                                [rt_p, seq_id_t, ctypes.c_int32, vp, vp, ctypes.c_int64,
                                 P(ctypes.c_int32)])
twl_decode = _declare("twl_decode", status,
                      [rt_p, ctypes.c_int32, P(seq_id_t), ctypes.c_int32, vp, vp,
                       ctypes.c_int32, vp, vp])
twl_runtime_last_step = _declare("twl_runtime_last_step", status, [rt_p, P(StepStats)])
twl_runtime_last_step_heads = _declare(
    "twl_runtime_last_step_heads", status,
    [rt_p, vp, vp, vp, ctypes.c_int64, vp, ctypes.c_int64])
twl_runtime_memory = _declare("twl_runtime_memory", status, [rt_p, P(MemoryUsage)])
twl_runtime_last_step_mass = _declare("twl_runtime_last_step_mass", status,
                                      [rt_p, vp, vp, ctypes.c_int64], optional=True)
twl_sequence_save = _declare("twl_sequence_save", status, [rt_p, seq_id_t, ctypes.c_char_p])
twl_sequence_restore = _declare("twl_sequence_restore", status,
                                [rt_p, ctypes.c_char_p, P(seq_id_t)])
# Newer entry points: absent from older libraries, and the package then says so when used.
twl_decode_ex = _declare("twl_decode_ex", status,
                         [rt_p, ctypes.c_int32, P(seq_id_t), ctypes.c_int32, vp, vp,
                          ctypes.c_int32, ctypes.c_int32, vp, vp], optional=True)
twl_append_batch = _declare("twl_append_batch", status,
                            [rt_p, ctypes.c_int32, P(seq_id_t), P(ctypes.c_int32),
                             ctypes.c_int32, vp, vp, ctypes.c_int32, ctypes.c_int32, vp],
                            optional=True)
twl_get_capabilities = _declare("twl_get_capabilities", status, [P(Capabilities)], optional=True)
twl_set_log_callback = _declare("twl_set_log_callback", None,
                                [LOG_CALLBACK, ctypes.c_void_p, ctypes.c_int32], optional=True)
# Bound batches (issue 11.3): decode steps with fixed shapes, capturable in a CUDA graph.
batch_id_t = ctypes.c_int64
twl_batch_create = _declare("twl_batch_create", status,
                            [rt_p, P(seq_id_t), ctypes.c_int32, ctypes.c_int32, P(batch_id_t)],
                            optional=True)
twl_batch_free = _declare("twl_batch_free", status, [rt_p, batch_id_t], optional=True)
twl_decode_batch = _declare("twl_decode_batch", status,
                            [rt_p, batch_id_t, ctypes.c_int32, vp, vp, ctypes.c_int32, vp],
                            optional=True)
twl_batch_tables = _declare("twl_batch_tables", status,
                            [rt_p, batch_id_t, ctypes.c_int32, vp, ctypes.c_int64, vp,
                             ctypes.c_int64, P(ctypes.c_int32)], optional=True)
# Added in 0.2.1: appends split in a reservation (host) and a capturable batch append (device).
twl_batch_reserve = _declare("twl_batch_reserve", status, [rt_p, batch_id_t, vp], optional=True)
twl_batch_append = _declare("twl_batch_append", status,
                            [rt_p, batch_id_t, ctypes.c_int32, vp, vp, ctypes.c_int32, vp],
                            optional=True)
