"""Hypothesis property tests: random shapes / layouts / dtypes / strided views
/ thread counts against the reference, and bitwise determinism across
num_threads."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbp
import reference as ref
from conftest import THREADS, assert_close, maxabs

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw, max_n=4, max_c=6, max_sp=5):
    ndim = draw(st.integers(2, 5))
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    spatial = tuple(draw(st.lists(st.integers(1, max_sp), min_size=ndim - 2,
                                  max_size=ndim - 2)))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shp = (n, c) + spatial if layout == "NCHW" else (n,) + spatial + (c,)
    # None: contiguous; int: every other element along that axis of a bigger
    # array; "T": reversed memory order (transposed view)
    view = draw(st.sampled_from([None, "T"] + list(range(ndim))))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(shape=shp, layout=layout, dtype=dtype, view=view, seed=seed, C=c)


def _make(case):
    rng = np.random.default_rng(case["seed"])
    shp, dtype, view, layout = case["shape"], case["dtype"], case["view"], case["layout"]
    C = case["C"]
    nd = len(shp)

    def arr(mul, add):
        if view is None:
            return (rng.standard_normal(shp) * mul + add).astype(dtype)
        if view == "T":
            return (rng.standard_normal(shp[::-1]) * mul + add).astype(dtype).T
        big = list(shp)
        big[view] *= 2
        a = (rng.standard_normal(big) * mul + add).astype(dtype)
        idx = [slice(None)] * nd
        idx[view] = slice(None, None, 2)
        return a[tuple(idx)]

    x = arr(rng.uniform(0.5, 3), rng.uniform(-5, 5))
    dy = arr(1.0, 0.0)
    assert x.shape == shp
    _, mean, var, _ = ref.channel_stats(x, layout)
    inv_std = 1 / np.sqrt(var + 1e-5)
    return x, dy, mean, var, inv_std, rng.standard_normal(C), rng.standard_normal(C)


def _bp_scale(x, dy, mean, inv_std, layout):
    x2, dy2 = ref.to_mc(x, layout), ref.to_mc(dy, layout)
    return (maxabs(np.abs(dy2 * (x2 - mean) * inv_std).sum(0)),
            maxabs(np.abs(dy2).sum(0)))


def _dx_scale(x, dy, mean, inv_std, scale, ds, db, count, layout):
    x2, dy2 = ref.to_mc(x, layout), ref.to_mc(dy, layout)
    xhat = (x2 - mean) * inv_std
    return maxabs(np.abs(scale * inv_std) * (np.abs(dy2) + np.abs(db) / count
                                             + np.abs(xhat * ds) / count))


@SETTINGS
@given(case=cases(), num_threads=st.sampled_from(THREADS))
def test_matches_reference(case, num_threads):
    x, dy, mean, var, inv_std, scale, bias = _make(case)
    layout, dtype = case["layout"], case["dtype"]
    kw = dict(layout=layout, num_threads=num_threads)
    M = x.size // case["C"]

    s = cbp.channel_stats(x, **kw)
    count, r_mean, r_var, r_m2 = ref.channel_stats(x, layout)
    assert s.count == count == M
    assert s.mean.dtype == s.var.dtype == s.m2.dtype == np.float64
    assert_close(s.mean, r_mean, dtype, scale=maxabs(x))
    assert_close(s.var, r_var, dtype)
    assert_close(s.m2, r_m2, dtype)

    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, **kw)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    s_ds, s_db = _bp_scale(x, dy, mean, inv_std, layout)
    assert_close(ds, r_ds, dtype, scale=s_ds)
    assert_close(db, r_db, dtype, scale=s_db)

    s_dx = _dx_scale(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout)
    dx, ds2, db2 = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, **kw)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    r_dx = ref.batch_norm_backward(x, dy, mean, inv_std, scale, layout)[0]
    assert_close(dx, r_dx, dtype, scale=s_dx)
    assert_close(ds2, r_ds, dtype, scale=s_ds)
    assert_close(db2, r_db, dtype, scale=s_db)

    dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, **kw)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(dx, ref.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout),
                 dtype, scale=s_dx)

    y, f_mean, f_inv = cbp.batch_norm_forward(x, scale, bias, eps=1e-3, **kw)
    r_y, rf_mean, rf_inv = ref.batch_norm_forward(x, scale, bias, 1e-3, layout)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(f_mean, rf_mean, dtype, scale=maxabs(x))
    assert_close(f_inv, rf_inv, dtype)
    y_scale = maxabs(np.abs(scale) * (np.abs(ref.to_mc(x, layout)) + np.abs(rf_mean)) * rf_inv)
    assert_close(y, r_y, dtype, scale=y_scale + maxabs(bias))

    y = cbp.batch_norm_inference(x, scale, bias, mean, var, eps=1e-3, **kw)
    r_y = ref.batch_norm_inference(x, scale, bias, mean, var, 1e-3, layout)
    inv = 1 / np.sqrt(var + 1e-3)
    y_scale = maxabs(np.abs(scale) * (np.abs(ref.to_mc(x, layout)) + np.abs(mean)) * inv)
    assert_close(y, r_y, dtype, scale=y_scale + maxabs(bias))


def _bitwise_equal_over_threads(x, dy, mean, inv_std, scale, layout):
    results = []
    for nt in THREADS:
        kw = dict(layout=layout, num_threads=nt)
        s = cbp.channel_stats(x, **kw)
        bp = cbp.channel_backprop_stats(x, dy, mean, inv_std, **kw)
        bw = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, **kw)
        results.append((nt, [s.mean, s.m2, s.var, *bp, *bw], s.count))
    nt0, base, count0 = results[0]
    for nt, arrays, count in results[1:]:
        assert count == count0
        for i, (a, b) in enumerate(zip(base, arrays)):
            assert a.dtype == b.dtype
            assert np.array_equal(a, b), (
                f"result #{i} differs between num_threads={nt0} and {nt}: "
                f"max |diff| = {np.max(np.abs(a.astype(float) - b.astype(float)))}")
    # and the common result is right
    _, r_mean, r_var, _ = ref.channel_stats(x, layout)
    assert_close(base[0], r_mean, x.dtype, scale=maxabs(x))
    assert_close(base[2], r_var, x.dtype)


@SETTINGS
@given(case=cases(max_n=9, max_c=9, max_sp=13))
def test_bitwise_identical_across_num_threads(case):
    x, dy, mean, var, inv_std, scale, bias = _make(case)
    _bitwise_equal_over_threads(x, dy, mean, inv_std, scale, case["layout"])


# Medium shapes, large enough that every kernel really splits the work.
DET_SHAPES = [(8, 16, 24, 24), (16, 3, 33, 17), (64, 256), (4, 200, 3, 3), (2, 3, 4, 50, 50)]


@pytest.mark.parametrize("shape", DET_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bitwise_identical_medium(shape, layout, dtype):
    rng = np.random.default_rng(400)
    shp = shape if layout == "NCHW" else (shape[0],) + shape[2:] + (shape[1],)
    C = shape[1]
    x = (rng.standard_normal(shp) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    _, mean, var, _ = ref.channel_stats(x, layout)
    inv_std = 1 / np.sqrt(var + 1e-5)
    scale, bias = rng.standard_normal(C), rng.standard_normal(C)
    _bitwise_equal_over_threads(x, dy, mean, inv_std, scale, layout)

    # the other functions are deterministic too (contract: every num_threads)
    outs = []
    for nt in [1, 2, 3, 8, -1, None]:
        kw = dict(layout=layout, num_threads=nt)
        y, fm, fi = cbp.batch_norm_forward(x, scale, bias, **kw)
        ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, **kw)
        dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, x.size // C, **kw)
        yi = cbp.batch_norm_inference(x, scale, bias, mean, var, **kw)
        outs.append([y, fm, fi, dx, yi])
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert np.array_equal(a, b)
    r_y, r_mean, r_inv = ref.batch_norm_forward(x, scale, bias, 1e-5, layout)
    y_scale = maxabs(np.abs(scale) * (np.abs(ref.to_mc(x, layout)) + np.abs(r_mean)) * r_inv)
    assert_close(outs[0][0], r_y, dtype, scale=y_scale + maxabs(bias))
