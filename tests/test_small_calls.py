"""The small-call path (src/cbp/_small_calls.pxi).

One-thread calls with plain arguments skip the Python layer's checks and run
the same kernel from C. These tests pin that the path is taken for plain
arguments, that it gives the same bits as the general path, and that it
declines (returns None, so the general path checks and decides) for every
argument that is not plain.
"""
import numpy as np
import pytest

import cbp
from cbp import _kernels

SHAPES = [((2, 4, 3, 3), "NCHW"), ((3, 5), "NCHW"), ((2, 3, 4, 5, 6), "NHWC"),
          ((1, 7, 1), "NCHW"), ((4, 2, 2, 9), "NHWC")]


def _inputs(shape, layout, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1] if layout == "NCHW" else shape[-1]
    mean = rng.standard_normal(C)
    inv_std = rng.uniform(0.5, 2.0, C)
    scale = rng.uniform(0.5, 1.5, C)
    bias = rng.standard_normal(C)
    return x, dy, mean, inv_std, scale, bias


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", SHAPES)
def test_small_path_is_taken_and_matches_the_general_path(shape, layout, dtype):
    x, dy, mean, inv_std, scale, bias = _inputs(shape, layout, dtype)
    for nt in (None, 1, 2):
        assert _kernels.small_backward(x, dy, mean, inv_std, scale, layout, nt) is not None
        assert _kernels.small_backprop_sums(x, dy, mean, inv_std, layout, nt) is not None
        assert _kernels.small_moments(x, layout, nt) is not None
        assert _kernels.small_forward(x, scale, bias, 1e-5, layout, nt) is not None

    # the general path is taken for a per-channel list or a Fortran-ordered x
    dx, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    dx2, ds2, db2 = cbp.batch_norm_backward(x, dy, mean.tolist(), inv_std, scale,
                                            layout=layout)
    assert _bits_equal(dx, dx2) and _bits_equal(ds, ds2) and _bits_equal(db, db2)
    dx3, _, _ = cbp.batch_norm_backward(x, dy, mean, inv_std, None, layout=layout)
    dx4, _, _ = cbp.batch_norm_backward(x, dy, mean, inv_std, [1.0] * len(mean),
                                        layout=layout)
    assert _bits_equal(dx3, dx4)
    # an out, and in place over x or dy
    o = np.empty_like(x)
    assert cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout, out=o)[0] is o
    assert _bits_equal(o, dx)
    for which in ("x", "dy"):
        xx, gg = x.copy(), dy.copy()
        target = xx if which == "x" else gg
        got = cbp.batch_norm_backward(xx, gg, mean, inv_std, scale, layout=layout, out=target)
        assert got[0] is target and _bits_equal(target, dx)

    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    ds2, db2 = cbp.channel_backprop_stats(x, dy, mean.tolist(), inv_std, layout=layout)
    assert _bits_equal(ds, ds2) and _bits_equal(db, db2)

    M = x.size // len(mean)
    assert _kernels.small_dx(x, dy, mean, inv_std, scale, ds, db, M, layout, None) is not None
    g = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, M, layout=layout)
    g2 = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds.tolist(), db, M, layout=layout)
    assert _bits_equal(g, g2)
    xx = x.copy()
    assert cbp.batch_norm_dx(xx, dy, mean, inv_std, scale, ds, db, M, layout=layout,
                             out=xx) is xx
    assert _bits_equal(xx, g)

    st = cbp.channel_stats(x, layout=layout)
    st2 = cbp.channel_stats(np.asfortranarray(x), layout=layout)
    assert st.count == st2.count == x.size // len(mean)
    assert _bits_equal(st.mean, st2.mean) and _bits_equal(st.m2, st2.m2)
    # var comes with the small path's result: the same division as the general
    # path's (computed when asked), read-only like mean and m2, and computed once
    assert _bits_equal(st.var, st2.var) and _bits_equal(st.var, st.m2 / st.count)
    assert st.var is st.var and st2.var is st2.var
    for a in (st.mean, st.m2, st.var, st2.var):
        assert not a.flags.writeable

    y, m, i = cbp.batch_norm_forward(x, scale, bias, eps=1e-3, layout=layout)
    y2, m2, i2 = cbp.batch_norm_forward(x, scale.tolist(), bias, eps=1e-3, layout=layout)
    assert _bits_equal(y, y2) and _bits_equal(m, m2) and _bits_equal(i, i2)
    y3, _, _ = cbp.batch_norm_forward(x, layout=layout)
    y4, _, _ = cbp.batch_norm_forward(x, [1.0] * len(mean), [0.0] * len(mean), layout=layout)
    assert _bits_equal(y3, y4)
    xx = x.copy()
    assert cbp.batch_norm_forward(xx, scale, bias, eps=1e-3, layout=layout, out=xx)[0] is xx
    assert _bits_equal(xx, y)
    assert y.flags.c_contiguous and y.flags.writeable and y.dtype == x.dtype


def _misaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)
    b = raw[1:].view(a.dtype).reshape(a.shape)
    b[...] = a
    return b


ALL = ("bwd", "bps", "stats", "fwd")
GRAD = ("bwd", "bps")


def _declined_cases():
    x, dy, mean, inv_std, scale, bias = _inputs((2, 4, 3, 3), "NCHW", np.float32)
    big = np.zeros((64, 4, 32, 32), np.float32)
    base = dict(x=x, dy=dy, mean=mean, inv_std=inv_std, scale=scale, bias=bias,
                layout="NCHW", num_threads=None)
    bad_mean = mean.copy()
    bad_mean[1] = np.nan
    zero_inv = inv_std.copy()
    zero_inv[2] = 0.0
    inf_inv = inv_std.copy()
    inf_inv[0] = np.inf
    # name: (arguments changed from the plain case, the small_* functions that must decline)
    cases = {
        "fortran x": (dict(x=np.asfortranarray(x)), ALL),
        "list x": (dict(x=x.tolist()), ALL),
        "masked x": (dict(x=np.ma.masked_array(x)), ALL),
        "big-endian x": (dict(x=x.astype(">f4"), dy=dy.astype(">f4")), ALL),
        "misaligned x": (dict(x=_misaligned(x)), ALL),
        "float16 x": (dict(x=x.astype(np.float16), dy=dy.astype(np.float16)), ALL),
        "int x": (dict(x=x.astype(np.int32), dy=dy.astype(np.int32)), ALL),
        "1-D x": (dict(x=x.ravel(), dy=dy.ravel()), ALL),
        "6-D x": (dict(x=x.reshape(1, 2, 4, 3, 3, 1), dy=dy.reshape(1, 2, 4, 3, 3, 1)), ALL),
        "empty x": (dict(x=x[:0], dy=dy[:0]), ALL),
        "no channels": (dict(x=x[:, :0], dy=dy[:, :0], mean=mean[:0], inv_std=inv_std[:0],
                             scale=scale[:0], bias=bias[:0]), ALL),
        "dy float64": (dict(dy=dy.astype(np.float64)), GRAD),
        "dy other shape": (dict(dy=dy[:, :, :2]), GRAD),
        "dy strided": (dict(dy=np.asfortranarray(dy)), GRAD),
        "dy list": (dict(dy=dy.tolist()), GRAD),
        "int mean": (dict(mean=np.zeros(4, np.int64)), GRAD),
        "float32 mean": (dict(mean=mean.astype(np.float32)), GRAD),
        "list mean": (dict(mean=list(mean)), GRAD),
        "NaN mean": (dict(mean=bad_mean), GRAD),
        "short mean": (dict(mean=mean[:3]), GRAD),
        "2-D mean": (dict(mean=mean.reshape(1, 4)), GRAD),
        "zero inv_std": (dict(inv_std=zero_inv), GRAD),
        "inf inv_std": (dict(inv_std=inf_inv), GRAD),
        "negative inv_std": (dict(inv_std=-inv_std), GRAD),
        "long scale": (dict(scale=np.ones(5)), ("bwd", "fwd")),
        "strided scale": (dict(scale=np.ones(8)[::2]), ("bwd", "fwd")),
        "list scale": (dict(scale=[1.0] * 4), ("bwd", "fwd")),
        "short bias": (dict(bias=np.ones(3)), ("fwd",)),
        "lower-case layout": (dict(layout="nchw"), ALL),
        "layout None": (dict(layout=None), ALL),
        "num_threads 0": (dict(num_threads=0), ALL),
        "num_threads -1": (dict(num_threads=-1), ALL),
        "num_threads True": (dict(num_threads=True), ALL),
        "num_threads 2.0": (dict(num_threads=2.0), ALL),
        "num_threads 2**70": (dict(num_threads=2 ** 70), ALL),
        "num_threads numpy int": (dict(num_threads=np.int64(1)), ALL),
        "a team of two": (dict(x=big, dy=big, num_threads=2), ALL),
    }
    for name, (change, ops) in cases.items():
        args = dict(base)
        args.update(change)
        yield name, args, ops


def _out_cases():
    x, dy, mean, inv_std, scale, bias = _inputs((2, 4, 3, 3), "NCHW", np.float32)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    wide = np.empty(x.size + 4, np.float32)
    return x, dy, mean, inv_std, scale, bias, {
        "read-only out": ro,
        "float64 out": np.empty(x.shape),
        "fortran out": np.asfortranarray(np.empty_like(x)),
        "other-shape out": np.empty((2, 4, 9), np.float32),
        "list out": x.tolist(),
        "misaligned out": _misaligned(x),
        "partial overlap": wide[2:2 + x.size].reshape(x.shape),
    }, wide


def test_small_path_declines_other_outputs():
    x, dy, mean, inv_std, scale, bias, outs, wide = _out_cases()
    for name, out in outs.items():
        if out is None:
            continue
        xx = wide[:x.size].reshape(x.shape) if name == "partial overlap" else x
        if name == "partial overlap":
            xx[...] = x
        assert _kernels.small_backward(xx, dy, mean, inv_std, scale, "NCHW", None,
                                       out) is None, name
        assert _kernels.small_forward(xx, scale, bias, 1e-5, "NCHW", None, out) is None, name
        if name == "misaligned out":
            continue  # valid: the general path computes aside and copies
        with pytest.raises((TypeError, ValueError)):
            cbp.batch_norm_backward(xx, dy, mean, inv_std, scale, out=out)


def _small(op, a):
    if op == "bwd":
        return _kernels.small_backward(a["x"], a["dy"], a["mean"], a["inv_std"], a["scale"],
                                       a["layout"], a["num_threads"])
    if op == "bps":
        return _kernels.small_backprop_sums(a["x"], a["dy"], a["mean"], a["inv_std"],
                                            a["layout"], a["num_threads"])
    if op == "stats":
        return _kernels.small_moments(a["x"], a["layout"], a["num_threads"])
    return _kernels.small_forward(a["x"], a["scale"], a["bias"], 1e-5, a["layout"],
                                  a["num_threads"])


@pytest.mark.parametrize("name,args,ops", list(_declined_cases()),
                         ids=[c[0] for c in _declined_cases()])
def test_small_path_declines_what_is_not_plain(name, args, ops):
    for op in ops:
        assert _small(op, args) is None, (name, op)


@pytest.mark.parametrize("change", [dict(count=0), dict(count=True), dict(count=72.0),
                                    dict(count=np.int64(72)), dict(dscale=[0.0] * 4),
                                    dict(dbias=np.zeros(3)), dict(scale=np.ones(5)),
                                    dict(dy=np.zeros((2, 4, 3, 3))),
                                    dict(mean=np.array([np.nan, 0, 0, 0]))])
def test_small_dx_declines(change):
    x, dy, mean, inv_std, scale, _ = _inputs((2, 4, 3, 3), "NCHW", np.float32)
    a = dict(x=x, dy=dy, mean=mean, inv_std=inv_std, scale=scale, dscale=np.ones(4),
             dbias=np.ones(4), count=72)
    assert _kernels.small_dx(a["x"], a["dy"], a["mean"], a["inv_std"], a["scale"],
                             a["dscale"], a["dbias"], a["count"], "NCHW", None) is not None
    a.update(change)
    assert _kernels.small_dx(a["x"], a["dy"], a["mean"], a["inv_std"], a["scale"],
                             a["dscale"], a["dbias"], a["count"], "NCHW", None) is None


@pytest.mark.parametrize("eps", [1, np.float64(1e-5), 0.0, -1e-5, float("nan"), float("inf")])
def test_small_forward_declines_other_eps(eps):
    x, _, _, _, scale, bias = _inputs((2, 4, 3, 3), "NCHW", np.float32)
    assert _kernels.small_forward(x, scale, bias, eps, "NCHW", None) is None


def test_declined_calls_still_get_the_general_checks():
    x, dy, mean, inv_std, scale, _ = _inputs((2, 4, 3, 3), "NCHW", np.float32)
    bad = inv_std.copy()
    bad[1] = 0.0
    with pytest.raises(ValueError, match="inv_std must be > 0"):
        cbp.batch_norm_backward(x, dy, mean, bad, scale)
    with pytest.raises(ValueError, match="num_threads must not be 0"):
        cbp.channel_stats(x, num_threads=0)
    with pytest.raises(ValueError, match="layout must be"):
        cbp.channel_backprop_stats(x, dy, mean, inv_std, layout="nchw")
    with pytest.raises(ValueError, match="eps must be"):
        cbp.batch_norm_forward(x, eps=0.0)
