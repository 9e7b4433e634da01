"""PyTorch tensors through the binding: CPU tensors on the CPU backend (FP16, BF16, FP32);
CUDA tensors on a GPU backend when a GPU is present (skipped, with the reason, otherwise)."""
import numpy as np
import pytest

import twilight
from conftest import SHAPE, dense_attention

torch = pytest.importorskip("torch", reason="python3-torch not installed (scripts/setup.sh)")


def _fill(rt, n_tokens, dtype, device="cpu"):
    g = torch.Generator().manual_seed(7)
    s = rt.create_sequence()
    k = torch.randn(n_tokens, SHAPE["num_kv_heads"], SHAPE["head_dim"], generator=g)
    v = torch.randn(n_tokens, SHAPE["num_kv_heads"], SHAPE["head_dim"], generator=g)
    rt.append(s, 0, k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
    q = torch.randn(1, SHAPE["num_q_heads"], SHAPE["head_dim"], generator=g)
    return s, k, v, q


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cpu_tensors(rt, dtype):
    dt = getattr(torch, dtype)
    s, k, v, q = _fill(rt, 33, dt)
    out = rt.decode(0, [s], q.to(dt))
    assert out.dtype == dt and out.shape == q.shape and out.device.type == "cpu"
    # The cache holds FP16 of the appended values; the reference uses the same rounding.
    k16 = k.to(dt).to(torch.float16).numpy()
    v16 = v.to(dt).to(torch.float16).numpy()
    q16 = q.to(dt).to(torch.float16).numpy()[0]
    ref = dense_attention(q16, k16, v16)
    tol = 2e-2 if dtype == "bfloat16" else 3e-3  # BF16 output rounding: 8 bits of mantissa
    np.testing.assert_allclose(out.float().numpy()[0], ref, atol=tol, rtol=tol)


def test_bf16_out_is_rounded_fp16_result(rt):
    s, _, _, q = _fill(rt, 21, torch.float16)
    out16 = rt.decode(0, [s], q.to(torch.float16))
    out_bf = rt.decode(0, [s], q.to(torch.float16).to(torch.bfloat16))
    # q of BF16 that is exactly representable in FP16 gives the FP16 result rounded to BF16.
    q_bf_as_16 = q.to(torch.float16).to(torch.bfloat16).to(torch.float16)
    out16b = rt.decode(0, [s], q_bf_as_16)
    assert torch.equal(out_bf, out16b.to(torch.bfloat16))
    assert out16.shape == out_bf.shape


def test_cpu_tensor_readonly_views_are_not_copied(rt):
    s, _, _, q = _fill(rt, 5, torch.float16)
    q16 = q.to(torch.float16)
    out = torch.empty_like(q16)
    assert rt.decode(0, [s], q16, out=out) is out


def test_unsupported_dtype(rt):
    s, _, _, q = _fill(rt, 5, torch.float16)
    with pytest.raises(TypeError, match="dtype"):
        rt.decode(0, [s], q.to(torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("backend", ["gpu-hbm", "gpu-offload"])
def test_cuda_tensors_on_current_stream(backend, dtype):
    dt = getattr(torch, dtype)
    shape = dict(num_layers=1, num_q_heads=8, num_kv_heads=2, head_dim=128)
    with twilight.Runtime(**shape, backend=backend, top_p=1.0, selector="full") as rt:
        g = torch.Generator().manual_seed(3)
        n = 300
        k = torch.randn(n, 2, 128, generator=g).to(dt)
        v = torch.randn(n, 2, 128, generator=g).to(dt)
        s = rt.create_sequence()
        rt.append(s, 0, k.cuda(), v.cuda())
        q = torch.randn(1, 8, 128, generator=g).to(dt).cuda()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            out = rt.decode(0, [s], q)  # enqueued on `stream`, torch's current stream
        stream.synchronize()
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.float().unsqueeze(2),                                     # [1, 8, 1, 128]
            k.float().cuda().repeat_interleave(4, dim=1).permute(1, 0, 2).unsqueeze(0),
            v.float().cuda().repeat_interleave(4, dim=1).permute(1, 0, 2).unsqueeze(0)
        ).squeeze(2) if hasattr(torch.nn.functional, "scaled_dot_product_attention") else None
        if ref is not None:
            torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_import_twilight_before_torch():
    # Regression: with libmimalloc (a process-wide malloc override) linked into libtwilight,
    # importing torch after twilight crashed in mi_free.
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import twilight, torch; print('ok')"],
                       env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
