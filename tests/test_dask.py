"""cbp.dask: batch norm of dask arrays equals the single-process call on the whole batch.

Runs on a small LocalCluster (2 worker processes, 1 thread each, loopback) and
on the synchronous scheduler. Skipped when dask/distributed are not installed.
"""
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import cbp  # noqa: E402
import cbp.dask as cd  # noqa: E402
from test_sync import make_batch, ref64, rel  # noqa: E402


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


def _compute(objs, where):
    if where == "synchronous":
        return dask.compute(*objs, scheduler="synchronous")
    return where.compute(list(objs), sync=True)


def _check(x, dy, scale, bias, layout, X, DY, where, num_threads=None):
    dtype = x.dtype
    st = (cd.channel_stats(X, layout=layout, num_threads=num_threads)
          if where == "synchronous" else
          _stats_from(where.compute(cd.channel_stats(X, layout=layout, compute=False),
                                    sync=True)))
    fwd = cd.batch_norm_forward(X, scale, bias, layout=layout, num_threads=num_threads)
    assert all(isinstance(a, da.Array) for a in fwd)  # lazy
    y, mean, inv_std = _compute(fwd, where)
    bwd = cd.batch_norm_backward(X, DY, mean, inv_std, scale, layout=layout,
                                 num_threads=num_threads)
    dx, dscale, dbias = _compute(bwd, where)
    # the backward also takes the forward's lazy statistics
    dx_l, dscale_l, _ = _compute(cd.batch_norm_backward(X, DY, fwd[1], fwd[2], scale,
                                                        layout=layout), where)

    whole = cbp.channel_stats(x, layout=layout)
    y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias, layout=layout)
    dx1, dscale1, dbias1 = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    r64 = ref64(x, dy, scale, bias, layout)

    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == x.shape
    assert mean.dtype == inv_std.dtype == dscale.dtype == dbias.dtype == np.float64
    assert st.count == whole.count
    std = np.sqrt(whole.var)
    vtol = 1e-11 if dtype == np.float64 else 1e-7  # float32 kernels' own accuracy ~1e-8
    assert np.max(np.abs(st.mean - whole.mean) / std) < 1e-9
    assert np.max(np.abs(st.var / whole.var - 1)) < vtol
    assert np.max(np.abs(st.var / r64["var"] - 1)) < vtol
    assert np.array_equal(mean, st.mean) and rel(inv_std, inv1) < vtol
    gs = np.sqrt(whole.count)
    # float32 with |mean| = 1e4 * std: the kernels' per-block float32 arithmetic gives
    # ~1e-8 relative differences between blockings (the single-process call has the same)
    stol = 1e-12 if dtype == np.float64 else 2e-7
    assert rel(dscale, dscale1, gs) < stol and rel(dbias, dbias1, gs) < stol
    assert rel(dscale_l, dscale1, gs) < stol and rel(dx_l, dx1) < 1e-6
    # a few float32 ulps; float64: ulp(mean) at |mean| = 1e4 * std is ~2e-12 * std
    xtol = 1e-10 if dtype == np.float64 else 1e-6
    assert rel(y, y1) < xtol and rel(dx, dx1) < xtol
    assert rel(y, r64["y"]) < max(xtol, 2 * rel(y1, r64["y"]))
    assert rel(dx, r64["dx"]) < max(xtol, 2 * rel(dx1, r64["dx"]))


def _stats_from(s):
    count = int(s["count"][0])
    return cbp.ChannelStats(count, s["mean"], s["m2"])


def _chunks_along_n(N, rest):
    return ((N // 3, 0, N - N // 3 - 2, 2),) + tuple((r,) for r in rest)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_cluster(client, layout, dtype):
    x, dy, scale, bias = make_batch((13, 4, 3, 5), layout, dtype, 21)
    X = da.from_array(x, chunks=_chunks_along_n(13, x.shape[1:]))
    DY = da.from_array(dy, chunks=(7,) + x.shape[1:])  # different chunks: rechunked
    _check(x, dy, scale, bias, layout, X, DY, client, num_threads=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("chunking", ["N", "all-axes", "single"])
def test_synchronous(layout, dtype, chunking):
    shape = (17, 6, 4, 5)
    x, dy, scale, bias = make_batch(shape, layout, dtype, 3)
    if chunking == "N":
        chunks = _chunks_along_n(17, x.shape[1:])
    elif chunking == "all-axes":
        chunks = (5, 4, 3, 2)  # N, channels and spatial axes all split
    else:
        chunks = -1
    X = da.from_array(x, chunks=chunks)
    DY = da.from_array(dy, chunks=(6, 3, 2, 5))
    _check(x, dy, scale, bias, layout, X, DY, "synchronous", num_threads=2)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 7), (3, 2, 2, 3, 2)])
def test_other_ranks_synchronous(shape):
    x, dy, scale, bias = make_batch(shape, "NCHW", np.float64, 5, offset_ratio=10.0)
    X = da.from_array(x, chunks=2)
    _check(x, dy, scale, bias, "NCHW", X, da.from_array(dy, chunks=3), "synchronous")


def test_affine_off_synchronous():
    """scale=None / bias=None are the identity, as in cbp's own functions."""
    x, dy, _, _ = make_batch((8, 3, 4, 4), "NHWC", np.float64, seed=5)
    X, DY = da.from_array(x, chunks=(3, 4, 4, 3)), da.from_array(dy, chunks=(3, 4, 4, 3))
    y, mean, inv_std = dask.compute(*cd.batch_norm_forward(X, layout="NHWC"),
                                    scheduler="synchronous")
    dx, ds, db = dask.compute(*cd.batch_norm_backward(X, DY, mean, inv_std, layout="NHWC"),
                              scheduler="synchronous")
    y1, _, _ = cbp.batch_norm_forward(x, np.ones(3), np.zeros(3), layout="NHWC")
    dx1, ds1, db1 = cbp.batch_norm_backward(x, dy, mean, inv_std, np.ones(3), layout="NHWC")
    assert rel(y, y1) < 1e-12 and rel(dx, dx1) < 1e-12
    assert rel(ds, ds1) < 1e-12 and rel(db, db1) < 1e-12


def test_empty_batch():
    x = np.zeros((0, 3, 2, 2), np.float32)
    X = da.from_array(x, chunks=1)
    st = cd.channel_stats(X)
    assert st.count == 0 and not st.mean.any() and not st.m2.any()
    y, mean, inv_std = dask.compute(*cd.batch_norm_forward(X, np.ones(3), np.zeros(3), eps=1e-3),
                                    scheduler="synchronous")
    y1, mean1, inv1 = cbp.batch_norm_forward(x, np.ones(3), np.zeros(3), eps=1e-3)
    assert y.shape == x.shape and np.array_equal(mean, mean1) and np.array_equal(inv_std, inv1)
    dx, dscale, dbias = dask.compute(*cd.batch_norm_backward(X, X, mean, inv_std, np.ones(3)),
                                     scheduler="synchronous")
    assert dx.shape == x.shape and not dscale.any() and not dbias.any()


def test_numpy_input_and_errors():
    x = np.random.default_rng(0).standard_normal((6, 3, 2))
    st = cd.channel_stats(x)  # NumPy input is wrapped
    assert st.count == 12
    X = da.from_array(x, chunks=3)
    s = np.ones(3)
    with pytest.raises(ValueError, match="layout"):
        cd.channel_stats(X, layout="CHW")
    with pytest.raises(TypeError, match="dtype"):
        cd.channel_stats(X.astype(np.int32))
    with pytest.raises(ValueError, match="dimensions"):
        cd.channel_stats(da.ones(4, chunks=2))
    with pytest.raises(ValueError, match="scale"):
        cd.batch_norm_forward(X, np.ones(2), s)
    with pytest.raises(ValueError, match="eps"):
        cd.batch_norm_forward(X, s, s, eps=-1.0)
    with pytest.raises(ValueError, match="num_threads"):
        cd.batch_norm_forward(X, s, s, num_threads=0)
    with pytest.raises(TypeError, match="dy"):
        cd.batch_norm_backward(X, X.astype(np.float32), s, s, s)
    with pytest.raises(ValueError, match="dy"):
        cd.batch_norm_backward(X, X[:2], s, s, s)
    with pytest.raises(ValueError, match="inv_std"):
        cd.batch_norm_backward(X, X, s, -s, s)
