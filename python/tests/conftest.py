import numpy as np
import pytest

import twilight

SHAPE = dict(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16)


def dense_attention(q, k, v):
    """Reference decode attention: q [B, Hq, D] over k, v [T, Hkv, D] (one sequence per row of
    ks/vs when lists are given), query head h reads KV head h // (Hq / Hkv)."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    v = v.astype(np.float64)
    hq, hkv, d = q.shape[-2], k.shape[1], q.shape[-1]
    group = hq // hkv
    out = np.empty_like(q)
    for h in range(hq):
        s = k[:, h // group, :] @ q[h] / np.sqrt(d)
        w = np.exp(s - s.max())
        out[h] = (w / w.sum()) @ v[:, h // group, :]
    return out


@pytest.fixture
def rt():
    # p = 1 with every page a candidate: the sparse step must equal dense attention.
    r = twilight.Runtime(**SHAPE, backend="cpu", top_p=1.0, selector="full", page_size=8)
    yield r
    r.close()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_kv(rng, n, shape=SHAPE, dtype=np.float16):
    k = rng.standard_normal((n, shape["num_kv_heads"], shape["head_dim"])).astype(dtype)
    v = rng.standard_normal((n, shape["num_kv_heads"], shape["head_dim"])).astype(dtype)
    return k, v
