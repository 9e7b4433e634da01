"""Bound batches (Runtime.bind_batch) on the CPU backend: decode equals Runtime.decode bit for
bit while the batch's tables follow appends; misuse raises the documented statuses."""
import numpy as np
import pytest

import twilight
from conftest import SHAPE, random_kv


def _q(rng, n):
    return rng.standard_normal((n, SHAPE["num_q_heads"], SHAPE["head_dim"])).astype(np.float16)


def test_bound_decode_follows_appends(rt, rng):
    seqs = [rt.create_sequence() for _ in range(3)]
    for s, n in zip(seqs, (5, 17, 1)):
        for layer in range(SHAPE["num_layers"]):
            rt.append(s, layer, *random_kv(rng, n))
    b = rt.bind_batch(seqs, max_tokens=64)
    for counts in ([1, 1, 1], [0, 9, 3], [8, 0, 16]):
        for layer in range(SHAPE["num_layers"]):
            k, v = random_kv(rng, sum(counts))
            rt.append_batch(layer, seqs, k, v, counts=counts)
            lens, pages = b.tables(layer)
            assert list(lens) == [rt.length(s, layer) for s in seqs]
            assert pages.shape == (3, 8)  # 64 tokens / page 8
            for i, n in enumerate(lens):
                used = -(-int(n) // 8)
                assert (pages[i, :used] >= 0).all() and (pages[i, used:] == -1).all()
            q = _q(rng, 3)
            np.testing.assert_array_equal(b.decode(layer, q), rt.decode(layer, seqs, q))
            q32 = q.astype(np.float32)
            np.testing.assert_array_equal(b.decode(layer, q32), rt.decode(layer, seqs, q32))
    b.free()


def test_bound_batch_errors(rt, rng):
    s = rt.create_sequence()
    rt.append(s, 0, *random_kv(rng, 10))
    with pytest.raises(twilight.TwilightError) as e:
        rt.bind_batch([s, s], 32)
    assert e.value.status == "TWL_INVALID_ARGUMENT"
    with pytest.raises(twilight.TwilightError) as e:
        rt.bind_batch([s, 987654], 32)
    assert e.value.status == "TWL_NOT_FOUND"
    with pytest.raises(twilight.TwilightError) as e:
        rt.bind_batch([s], 9)
    assert e.value.status == "TWL_INVALID_ARGUMENT"
    b = rt.bind_batch([s], 12)
    with pytest.raises(twilight.TwilightError) as e:
        rt.append(s, 0, *random_kv(rng, 3))
    assert e.value.status == "TWL_FAILED_PRECONDITION" and "max_tokens" in e.value.message
    assert rt.length(s, 0) == 10
    with pytest.raises(twilight.TwilightError) as e:
        rt.free_sequence(s)
    assert e.value.status == "TWL_FAILED_PRECONDITION"
    with pytest.raises(twilight.TwilightError) as e:
        b.decode(1, _q(rng, 1))  # no token in layer 1
    assert e.value.status == "TWL_FAILED_PRECONDITION"
    b.free()
    rt.free_sequence(s)


def test_reserved_rows_append_like_append_batch(rt, rng):
    """reserve() + append() per layer store and decode exactly like append_batch of the same
    tokens to forked twins (the first append to each side copies the shared partial page)."""
    seqs = [rt.create_sequence() for _ in range(2)]
    for s, n in zip(seqs, (6, 9)):
        for layer in range(SHAPE["num_layers"]):
            rt.append(s, layer, *random_kv(rng, n))
    twins = [rt.fork_sequence(s) for s in seqs]
    b = rt.bind_batch(seqs, max_tokens=40)
    with pytest.raises(twilight.TwilightError) as e:
        b.append(0, *random_kv(rng, 2))
    assert e.value.status == "TWL_FAILED_PRECONDITION"
    for step in range(12):
        b.reserve()
        for layer in range(SHAPE["num_layers"]):
            k, v = random_kv(rng, 2)
            b.append(layer, k, v)
            rt.append_batch(layer, twins, k, v, counts=[1, 1])
            for s, t in zip(seqs, twins):
                ks, vs = rt.read_kv(s, layer)
                kt, vt = rt.read_kv(t, layer)
                np.testing.assert_array_equal(ks, kt)
                np.testing.assert_array_equal(vs, vt)
            q = _q(rng, 2)
            np.testing.assert_array_equal(b.decode(layer, q), rt.decode(layer, twins, q))
    with pytest.raises(ValueError):
        b.append(0, *random_kv(rng, 3))
    b.free()
