"""The Python binding on the CPU backend with NumPy arrays."""
import ctypes
import os

import numpy as np
import pytest

import twilight
from conftest import SHAPE, dense_attention, random_kv


def test_version_matches_library():
    major, minor, patch = (int(x) for x in twilight.version().split("."))
    assert twilight._lib.twl_version() == major * 10000 + minor * 100 + patch


def test_bad_config_raises_with_status_and_message():
    with pytest.raises(twilight.TwilightError) as e:
        twilight.Runtime(num_layers=1, num_q_heads=3, num_kv_heads=2, head_dim=16, backend="cpu")
    assert e.value.status == "TWL_INVALID_ARGUMENT"
    assert e.value.code == 1
    assert "twl_runtime_create" in e.value.message
    with pytest.raises(ValueError, match="backend"):
        twilight.Runtime(1, 2, 1, 16, backend="gpu")  # one spelling: gpu-hbm / gpu-offload


def test_config_resolved(rt):
    c = rt.config
    assert c["backend"] == "cpu" and rt.backend == "cpu"
    assert c["page_size"] == 8 and c["top_p"] == pytest.approx(1.0)
    assert c["selector"] == "full"
    assert c["k_bits"] == 4  # library's choice, resolved
    assert rt.backend_name.startswith("cpu")


def test_k_scheme_default_is_page_channel_and_token_is_explicit(rng):
    # 0 / "auto" resolves to the per-page-channel scheme; 2 / "token" to per token; both
    # decode; out-of-range values are refused by the library, unknown names by the binding.
    for asked, want in [(0, "page-channel"), ("auto", "page-channel"), (1, "page-channel"),
                        ("page-channel", "page-channel"), (2, "token"), ("token", "token")]:
        with twilight.Runtime(**SHAPE, backend="cpu", page_size=8, k_scheme=asked) as rt:
            assert rt.config["k_scheme"] == want, asked
            s = rt.create_sequence()
            k, v = random_kv(rng, 20)
            rt.append(s, 0, k, v)
            q = rng.standard_normal((1, SHAPE["num_q_heads"], SHAPE["head_dim"]))
            assert np.isfinite(rt.decode(0, [s], q.astype(np.float16))).all()
    with twilight.Runtime(**SHAPE, backend="cpu") as rt:
        assert rt.config["k_scheme"] == "page-channel"
    for bad in (3, -1):
        with pytest.raises(twilight.TwilightError) as e:
            twilight.Runtime(**SHAPE, backend="cpu", k_scheme=bad)
        assert e.value.status == "TWL_INVALID_ARGUMENT" and "k_scheme" in e.value.message
    with pytest.raises(ValueError, match="k_scheme"):
        twilight.Runtime(**SHAPE, backend="cpu", k_scheme="int4")


def test_sequences_append_read_fork_free(rt, rng):
    s = rt.create_sequence()
    k, v = random_kv(rng, 19)
    rt.append(s, 0, k, v)
    assert rt.length(s, 0) == 19 and rt.length(s, 1) == 0
    k2, v2 = rt.read_kv(s, 0)
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(v2, v)
    f = rt.fork_sequence(s)
    assert f != s and rt.length(f, 0) == 19
    rt.append(f, 0, *random_kv(rng, 1))
    assert rt.length(f, 0) == 20 and rt.length(s, 0) == 19
    rt.free_sequence(s)
    with pytest.raises(twilight.TwilightError) as e:
        rt.length(s, 0)
    assert e.value.status == "TWL_NOT_FOUND"
    assert str(s) in e.value.message


def test_float32_append_is_converted(rt, rng):
    s = rt.create_sequence()
    k, v = random_kv(rng, 5, dtype=np.float32)
    rt.append(s, 0, k, v)
    k2, _ = rt.read_kv(s, 0)
    np.testing.assert_array_equal(k2, k.astype(np.float16))


def test_append_shape_errors(rt, rng):
    s = rt.create_sequence()
    k, v = random_kv(rng, 3)
    with pytest.raises(ValueError):
        rt.append(s, 0, k[:, :, :5], v[:, :, :5])  # 3 * 2 * 5 is not a multiple of a row
    with pytest.raises(TypeError):
        rt.append(s, 0, k.astype(np.int16), v.astype(np.int16))
    with pytest.raises(twilight.TwilightError) as e:
        rt.append(s, 7, k, v)  # no layer 7
    assert e.value.status == "TWL_INVALID_ARGUMENT"
    assert rt.length(s, 0) == 0


def _batch(rt, rng, lengths):
    seqs, kvs = [], []
    for n in lengths:
        s = rt.create_sequence()
        k, v = random_kv(rng, n)
        rt.append(s, 0, k, v)
        seqs.append(s)
        kvs.append((k, v))
    q = rng.standard_normal((len(lengths), SHAPE["num_q_heads"], SHAPE["head_dim"]))
    return seqs, kvs, q.astype(np.float16)


def test_decode_equals_dense_at_p1(rt, rng):
    seqs, kvs, q = _batch(rt, rng, [1, 9, 40])
    out = rt.decode(0, seqs, q)
    assert out.dtype == np.float16 and out.shape == q.shape
    for b, (k, v) in enumerate(kvs):
        np.testing.assert_allclose(out[b].astype(np.float64), dense_attention(q[b], k, v),
                                   atol=3e-3, rtol=3e-3)
    # Into a caller's buffer, no allocation.
    buf = np.zeros_like(q)
    assert rt.decode(0, seqs, q, out=buf) is buf
    np.testing.assert_array_equal(buf, out)
    # Another batch (order) after the first: the binding's cached id array must follow.
    np.testing.assert_array_equal(rt.decode(0, seqs[::-1], q[::-1].copy()), out[::-1])
    np.testing.assert_array_equal(rt.decode(0, seqs[1:], q[1:]), out[1:])


def test_decode_float32_through_decode_ex(rt, rng):
    seqs, kvs, q = _batch(rt, rng, [12, 30])
    out16 = rt.decode(0, seqs, q)
    out32 = rt.decode(0, seqs, q.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32, out16.astype(np.float32))


def test_decode_noncontiguous_q_and_out(rt, rng):
    seqs, _, q = _batch(rt, rng, [10, 11])
    qt = np.ascontiguousarray(np.swapaxes(q, 0, 1)).swapaxes(0, 1)  # same values, strided
    assert not qt.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(rt.decode(0, seqs, qt), rt.decode(0, seqs, q))
    with pytest.raises(ValueError, match="contiguous"):
        rt.decode(0, seqs, q, out=np.zeros_like(qt).swapaxes(0, 1).copy().swapaxes(0, 1))


def test_decode_errors(rt, rng):
    seqs, _, q = _batch(rt, rng, [4])
    with pytest.raises(ValueError):
        rt.decode(0, seqs + seqs, q)  # q holds one sequence
    with pytest.raises(twilight.TwilightError) as e:
        rt.decode(0, [seqs[0] + 1000], q)
    assert e.value.status == "TWL_NOT_FOUND"
    with pytest.raises(twilight.TwilightError) as e:
        rt.decode(1, seqs, q)  # nothing appended in layer 1
    assert e.value.status == "TWL_FAILED_PRECONDITION"
    with pytest.raises(twilight.TwilightError) as e:
        rt.decode(0, seqs, q, p=[1.5])
    assert e.value.status == "TWL_INVALID_ARGUMENT"


def test_per_sequence_p_and_telemetry(rng):
    with twilight.Runtime(**SHAPE, backend="cpu", page_size=8) as rt:
        seqs = []
        for _ in range(2):
            s = rt.create_sequence()
            rt.append(s, 0, *random_kv(rng, 200))
            seqs.append(s)
        q = rng.standard_normal((2, SHAPE["num_q_heads"], SHAPE["head_dim"])).astype(np.float16)
        rt.decode(0, seqs, q, p=[0.5, 1.0])
        st = rt.last_step()
        assert st["layer"] == 0 and st["num_seqs"] == 2
        assert st["num_q_heads"] == SHAPE["num_q_heads"]
        heads = rt.last_step_heads()
        assert heads["kept"].shape == (2, SHAPE["num_q_heads"])
        assert heads["kept_kv"].shape == (2, SHAPE["num_kv_heads"])
        assert (heads["kept"] >= 1).all() and (heads["kept"] <= heads["selected"]).all()
        assert (heads["selected"] <= 200).all()
        # p = 0.5 keeps fewer tokens than p = 1 over the same candidates.
        assert heads["kept"][0].sum() < heads["kept"][1].sum()
        assert (heads["est_mass"][0] >= 0.5 - 1e-3).all()


def test_full_context_mass_and_cap_telemetry():
    """Every page a candidate (the default): the full-context mass is the estimate itself and
    no head hits a cap. Quest capped at 5% of random (flat) keys: every head stops at the cap
    and its full-context bound falls below p. Fresh inputs each run (the seed is printed)."""
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, SHAPE["num_q_heads"], SHAPE["head_dim"])).astype(np.float16)
    k, v = random_kv(rng, 2000)
    heads = {}
    for name, kw in {"default": {}, "capped": dict(selector="quest",
                                                   selector_budget_fraction=0.05)}.items():
        with twilight.Runtime(**SHAPE, backend="cpu", top_p=0.9, **kw) as rt:
            s = rt.create_sequence()
            rt.append(s, 0, k, v)
            rt.decode(0, [s], q)
            heads[name] = rt.last_step_heads()
    d, c = heads["default"], heads["capped"]
    if "full_mass" not in d:
        pytest.skip("library without twl_runtime_last_step_mass")
    assert d["full_mass"].shape == (1, SHAPE["num_q_heads"])
    assert (d["cap_hit"] == 0).all()
    assert (d["selected"] == 2000).all()
    np.testing.assert_allclose(d["full_mass"], d["est_mass"], rtol=1e-6)
    assert (d["full_mass"] >= 0.9 - 1e-3).all()
    assert (c["cap_hit"] == 1).all()
    assert (c["selected"] < 2000).all()
    assert ((c["full_mass"] >= 0) & (c["full_mass"] < 0.9)).all()
    assert (c["est_mass"] >= 0.9 - 1e-3).all()  # p of the candidates' mass, not the context's


def test_memory(rt, rng):
    before = rt.memory()
    s = rt.create_sequence()
    rt.append(s, 0, *random_kv(rng, 17))
    after = rt.memory()
    assert after["host_pool_bytes_total"] > 0
    assert after["host_pool_bytes_used"] > before["host_pool_bytes_used"]


def test_save_restore(rt, rng, tmp_path):
    s = rt.create_sequence()
    k, v = random_kv(rng, 13)
    rt.append(s, 0, k, v)
    rt.append(s, 1, k[:4], v[:4])
    path = tmp_path / "seq.twl"
    rt.save(s, path)
    r = rt.restore(str(path))
    assert rt.length(r, 0) == 13 and rt.length(r, 1) == 4
    np.testing.assert_array_equal(rt.read_kv(r, 0)[0], k)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(twilight.TwilightError) as e:
        rt.restore(path)
    assert e.value.status == "TWL_CORRUPT_DATA"
    with pytest.raises(twilight.TwilightError) as e:
        rt.restore(tmp_path / "missing")
    assert e.value.status == "TWL_IO_ERROR"


def test_closed_runtime_raises(rng):
    rt = twilight.Runtime(**SHAPE, backend="cpu")
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(twilight.TwilightError):
        rt.create_sequence()


def test_capabilities():
    caps = twilight.capabilities()
    cpu = caps["backends"]["cpu"]
    assert cpu["head_dims"] == [8, 16, 32, 64, 96, 128, 256]
    assert set(cpu["decode_dtypes"]) == {"float16", "bfloat16", "float32"}
    assert cpu["kv_dtypes"] == ["float16", "bfloat16"]
    if "gpu-hbm" in caps["backends"]:
        assert 128 in caps["backends"]["gpu-hbm"]["head_dims"]
        assert caps["backends"]["gpu-hbm"]["max_q_per_kv"] == 16
        assert caps["backends"]["gpu-hbm"]["kv_dtypes"] == ["float16", "bfloat16"]
        assert caps["cuda_archs"], "a CUDA build lists its architectures"
    else:
        assert caps["cuda_archs"] == [] and not caps["gpu_usable"]


def test_log_callback_receives_failures():
    got = []
    twilight.set_log_callback(lambda level, msg: got.append((level, msg)), twilight.LOG_DEBUG)
    try:
        with pytest.raises(twilight.TwilightError):
            twilight.Runtime(1, 3, 2, 16, backend="cpu")
    finally:
        twilight.set_log_callback(None)
    assert any(level == twilight.LOG_DEBUG and "twl_runtime_create" in msg for level, msg in got)
    n = len(got)
    with pytest.raises(twilight.TwilightError):
        twilight.Runtime(1, 3, 2, 16, backend="cpu")
    assert len(got) == n  # no longer registered


def test_library_found_through_env(tmp_path):
    # The ctest sets TWILIGHT_LIB to this build's library; the package must have used it.
    if "TWILIGHT_LIB" in os.environ:
        assert os.path.realpath(twilight.library_path) == os.path.realpath(
            os.environ["TWILIGHT_LIB"])
    assert isinstance(twilight._lib.lib, ctypes.CDLL)


def test_append_and_append_batch_check_k_v_alike(rt, rng):
    # Both take K and V through one check: whole tokens, as many in k as in v, one dtype.
    s = rt.create_sequence()
    k, v = random_kv(rng, 4)
    for append in (lambda k, v: rt.append(s, 0, k, v),
                   lambda k, v: rt.append_batch(0, [s], k, v)):
        with pytest.raises(ValueError, match="must each hold tokens"):
            append(k[:, :, :5], v[:, :, :5])  # not whole tokens
        with pytest.raises(ValueError, match="must each hold tokens"):
            append(k, v[:3])  # fewer tokens in v
        with pytest.raises(ValueError, match="same dtype"):
            append(k, v.astype(np.float32))
    assert rt.length(s, 0) == 0


def test_append_batch_equals_appends(rt, rng):
    a, b = rt.create_sequence(), rt.create_sequence()
    k, v = random_kv(rng, 10)
    rt.append_batch(0, [a, b], k, v, counts=[3, 7])
    np.testing.assert_array_equal(rt.read_kv(a, 0)[0], k[:3])
    np.testing.assert_array_equal(rt.read_kv(b, 0)[1], v[3:])
    rt.append_batch(0, [a, b], k[:4], v[:4])  # default counts: an even split
    assert rt.length(a, 0) == 5 and rt.length(b, 0) == 9
    with pytest.raises(ValueError, match="counts"):
        rt.append_batch(0, [a, b], k, v, counts=[3, 3])
    with pytest.raises(ValueError, match="evenly"):
        rt.append_batch(0, [a, b], k[:3], v[:3])
    with pytest.raises(twilight.TwilightError) as e:
        rt.append_batch(0, [a, b + 100], k[:2], v[:2])
    assert e.value.status == "TWL_NOT_FOUND"
    assert rt.length(a, 0) == 5  # all or nothing (the fallback checks ids in the C call too)


def _to_bf16(x):
    """float32 values rounded to the nearest BF16 (ties to even), as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def test_bf16_kv_storage(rng, tmp_path):
    # kv_dtype="bf16": FP32 input is stored rounded to BF16 (read back exactly as float32),
    # decode at p = 1 equals dense attention over the BF16 values, save/restore round-trips
    # and an FP16 runtime refuses the BF16 file.
    with twilight.Runtime(**SHAPE, backend="cpu", top_p=1.0, selector="full", page_size=8,
                          kv_dtype="bf16") as rt:
        assert rt.config["kv_dtype"] == "bf16"
        s = rt.create_sequence()
        k, v = random_kv(rng, 30, dtype=np.float32)
        k *= 300.0  # beyond FP16's precision, BF16 holds it to 8 bits
        rt.append(s, 0, k, v)
        k2, v2 = rt.read_kv(s, 0)
        assert k2.dtype == np.float32
        np.testing.assert_array_equal(k2, _to_bf16(k))
        np.testing.assert_array_equal(v2, _to_bf16(v))
        q = rng.standard_normal((1, SHAPE["num_q_heads"], SHAPE["head_dim"])).astype(np.float16)
        q *= 0.01
        out = rt.decode(0, [s], q)
        np.testing.assert_allclose(out[0].astype(np.float64), dense_attention(q[0], k2, v2),
                                   atol=3e-3, rtol=3e-3)
        path = tmp_path / "bf16.twl"
        rt.save(s, path)
        r = rt.restore(path)
        np.testing.assert_array_equal(rt.read_kv(r, 0)[0], k2)
    with twilight.Runtime(**SHAPE, backend="cpu") as fp16:
        assert fp16.config["kv_dtype"] == "fp16"
        with pytest.raises(twilight.TwilightError) as e:
            fp16.restore(path)
        assert e.value.status == "TWL_INVALID_ARGUMENT" and "kv_dtype" in e.value.message
    with pytest.raises(ValueError, match="kv_dtype"):
        twilight.Runtime(**SHAPE, backend="cpu", kv_dtype="fp32")


def test_default_cuda_stream_is_passed_as_cuda_stream_legacy():
    # NULL at the C API means "no stream" (a device append then waits for its input to be
    # read); torch's default stream is handle 0, so the package must name it cudaStreamLegacy.
    from twilight._tensors import CUDA_STREAM_LEGACY, cuda_stream_of, stream_handle

    assert CUDA_STREAM_LEGACY == 1
    assert stream_handle(0) == CUDA_STREAM_LEGACY
    assert stream_handle(0x7f00dead) == 0x7f00dead
    assert cuda_stream_of(None, 0) == CUDA_STREAM_LEGACY

    class FakeStream:  # what torch.cuda.Stream exposes
        cuda_stream = 0

    assert cuda_stream_of(None, FakeStream()) == CUDA_STREAM_LEGACY
    assert cuda_stream_of(np.zeros(1), None) is None  # host arrays take no stream
