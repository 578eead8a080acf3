"""The engine-agnostic synchronized batch norm (cbp.distributed), in one process.

Each shard runs in its own thread; a list-based fake ``allreduce`` collects
every rank's buffer, sums them in rank order and hands the sum back to all
(a barrier with a timeout, so a broken collective fails instead of hanging).
Results must equal the single-process call on the concatenated batch.
"""
import threading

import numpy as np
import pytest

import cbp
from conftest import maxabs

LAYOUTS = ["NCHW", "NHWC"]


class FakeGroup:
    """A group of `size` ranks whose allreduce sums list entries in rank order."""

    def __init__(self, size, timeout=30.0):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.calls = [[] for _ in range(size)]  # (dtype, shape) of every buffer, per rank

    def allreduce_for(self, rank):
        def allreduce(buf):
            assert isinstance(buf, np.ndarray) and buf.dtype == np.float64 and buf.ndim == 1
            self.calls[rank].append(buf.shape)
            self.slots[rank] = buf.copy()
            self.barrier.wait()
            total = self.slots[0].copy()
            for s in self.slots[1:]:
                total += s
            self.barrier.wait()
            buf[...] = total
        return allreduce

    def run(self, fn):
        """fn(rank, allreduce) on every rank in parallel; returns the results by rank."""
        results = [None] * self.size
        errors = []

        def target(r):
            try:
                results[r] = fn(r, self.allreduce_for(r))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        return results


def shard_sizes(rng, n, parts):
    """Random uneven sizes summing to n with at least one empty shard."""
    cuts = np.sort(rng.integers(0, n + 1, parts - 2))
    sizes = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
    sizes.insert(int(rng.integers(0, parts)), 0)
    return sizes


def channel_axis(layout, ndim):
    return 1 if layout == "NCHW" else ndim - 1


def bshape(C, layout, ndim):
    s = [1] * ndim
    s[channel_axis(layout, ndim)] = C
    return s


def make_batch(shape, layout, dtype, seed, offset_ratio=1e4):
    """x with |mean| = offset_ratio * std per channel; dy standard normal."""
    rng = np.random.default_rng(seed)
    N, C, *sp = shape
    shp = (N, C, *sp) if layout == "NCHW" else (N, *sp, C)
    std = rng.uniform(0.5, 2.0, C)
    mean = offset_ratio * std * rng.choice([-1.0, 1.0], C)
    bs = bshape(C, layout, len(shp))
    x = (mean.reshape(bs) + std.reshape(bs) * rng.standard_normal(shp)).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    return x, dy, rng.standard_normal(C), rng.standard_normal(C)


def split(a, sizes):
    return np.split(a, np.cumsum(sizes)[:-1], axis=0)


def ref64(x, dy, scale, bias, layout, eps=1e-5):
    """Float64 two-pass NumPy reference of forward and backward."""
    ax = channel_axis(layout, x.ndim)
    axes = tuple(i for i in range(x.ndim) if i != ax)
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    C = x.shape[ax]
    M = x.size // C
    bs = bshape(C, layout, x.ndim)
    mean = xd.mean(axis=axes)
    xm = xd - mean.reshape(bs)
    var = (xm * xm).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xm * inv_std.reshape(bs)
    y = scale.reshape(bs) * xhat + bias.reshape(bs)
    dbias = dyd.sum(axis=axes)
    dscale = (dyd * xhat).sum(axis=axes)
    dx = (scale * inv_std).reshape(bs) * (dyd - dbias.reshape(bs) / M
                                          - xhat * dscale.reshape(bs) / M)
    return dict(mean=mean, var=var, inv_std=inv_std, y=y, dx=dx, dscale=dscale, dbias=dbias)


def rel(got, want, scale=None):
    """Max |got - want| relative to max|want| (or `scale`)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.size == 0:
        return 0.0
    s = maxabs(want) if scale is None else scale
    return float(np.max(np.abs(got - want))) / (s or 1.0)


CASES = [
    # (canonical NCHW shape of the whole batch, number of shards, seed)
    ((23, 5, 4, 3), 4, 0),
    ((17, 3, 6), 3, 1),
    ((41, 7), 5, 2),
    ((9, 2, 2, 3, 2), 3, 3),
]


def _case_id(c):
    return "x".join(map(str, c[0])) + f"-{c[1]}ranks"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sync_equals_whole_batch(case, layout, dtype):
    shape, parts, seed = case
    x, dy, scale, bias = make_batch(shape, layout, dtype, seed)
    sizes = shard_sizes(np.random.default_rng(seed + 100), shape[0], parts)
    assert sum(sizes) == shape[0] and 0 in sizes
    xs, dys = split(x, sizes), split(dy, sizes)

    group = FakeGroup(len(sizes))

    def rank_fn(r, allreduce):
        st = cbp.sync_channel_stats(xs[r], allreduce=allreduce, layout=layout, num_threads=1)
        y, mean, inv_std = cbp.sync_batch_norm_forward(xs[r], scale, bias, allreduce=allreduce,
                                                       layout=layout, num_threads=1)
        dx, dscale, dbias = cbp.sync_batch_norm_backward(xs[r], dys[r], mean, inv_std, scale,
                                                         allreduce=allreduce, layout=layout,
                                                         num_threads=1)
        return st, y, mean, inv_std, dx, dscale, dbias

    res = group.run(rank_fn)
    # stats 2 + forward 2 + backward 1 collectives, packed as promised
    C = shape[1]
    for calls in group.calls:
        assert calls == [(C + 1,), (C,), (C + 1,), (C,), (2 * C + 1,)]

    whole = cbp.channel_stats(x, layout=layout)
    y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias, layout=layout)
    dx1, dscale1, dbias1 = cbp.batch_norm_backward(x, dy, mean1, inv1, scale, layout=layout)
    r64 = ref64(x, dy, scale, bias, layout)

    for r, (st, y, mean, inv_std, dx, dscale, dbias) in enumerate(res):
        # every rank holds bitwise the same per-channel results
        assert st == res[0][0]
        for a, b in zip((mean, inv_std, dscale, dbias), (res[0][2], res[0][3], res[0][5],
                                                         res[0][6])):
            assert np.array_equal(a, b)
        assert st.count == whole.count
        assert y.dtype == dx.dtype == x.dtype and y.shape == xs[r].shape == dx.shape
        for arr in (st.mean, st.m2, mean, inv_std, dscale, dbias):
            assert arr.dtype == np.float64
    st, mean, inv_std, dscale, dbias = res[0][0], res[0][2], res[0][3], res[0][5], res[0][6]
    y = np.concatenate([t[1] for t in res])
    dx = np.concatenate([t[4] for t in res])

    # statistics are float64 throughout: agree with the whole-batch call to ~1e-12
    std = np.sqrt(whole.var)
    assert np.max(np.abs(st.mean - whole.mean) / std) < 1e-9
    assert rel(st.mean, whole.mean) < 1e-13
    vtol = 1e-11 if dtype == np.float64 else 5e-9
    assert np.max(np.abs(st.var / whole.var - 1)) < vtol
    assert np.max(np.abs(st.mean - r64["mean"]) / std) < 1e-9
    # as accurate as the single-process kernels (float32 data at |mean| = 1e4 * std: ~1e-9)
    var_err1 = np.max(np.abs(whole.var / r64["var"] - 1))
    assert np.max(np.abs(st.var / r64["var"] - 1)) <= 2 * var_err1 + 1e-11
    assert np.array_equal(mean, st.mean)
    assert rel(inv_std, inv1) < vtol
    assert rel(inv_std, r64["inv_std"]) <= 2 * rel(inv1, r64["inv_std"]) + 1e-11

    # gradient sums: the same terms, summed in float64 across blocks; within a
    # block float32 terms share float32 partial sums (<= 32 terms), and a shard
    # boundary changes which terms share a block
    gs = np.sqrt(whole.count)  # magnitude of sums of unit-variance terms
    gtol = 1e-12 if dtype == np.float64 else 1e-6
    # the backward alone, given the same mean/inv_std
    dx2, dscale2, dbias2 = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    assert rel(dbias, dbias2, gs) < gtol and rel(dscale, dscale2, gs) < gtol
    # the whole chain (mean differs from the single-process one by ~1e-13 * |mean|)
    assert rel(dbias, dbias1, gs) < max(gtol, 1e-9) and rel(dscale, dscale1, gs) < max(gtol, 1e-9)
    # against float64 NumPy: as accurate as the single-process call (float32 inputs with
    # |mean| = 1e4 * std lose a few digits in the kernels' x - mean; both calls alike)
    for got, one, key in ((dbias, dbias1, "dbias"), (dscale, dscale1, "dscale")):
        assert rel(got, r64[key], gs) <= 2 * rel(one, r64[key], gs) + 1e-9, key

    # x-shaped outputs: to the accuracy of the single-process call in this dtype
    tol = 1e-10 if dtype == np.float64 else 2e-6  # float64: ulp(mean) ~ 2e-12 * std
    assert rel(y, y1) < tol and rel(dx, dx1) < tol and rel(dx, dx2) < tol
    for got, one, key in ((y, y1, "y"), (dx, dx1, "dx")):
        assert rel(got, r64[key]) <= 2 * rel(one, r64[key]) + 1e-9, key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_shards_empty(layout):
    shape = (0, 3, 2, 2) if layout == "NCHW" else (0, 2, 2, 3)
    x = np.zeros(shape, np.float32)
    scale, bias = np.ones(3), np.zeros(3)
    group = FakeGroup(3)

    def rank_fn(r, allreduce):
        st = cbp.sync_channel_stats(x, allreduce=allreduce, layout=layout)
        y, mean, inv_std = cbp.sync_batch_norm_forward(x, scale, bias, allreduce=allreduce,
                                                       eps=1e-3, layout=layout)
        dx, dscale, dbias = cbp.sync_batch_norm_backward(x, x, mean, inv_std, scale,
                                                         allreduce=allreduce, layout=layout)
        return st, y, mean, inv_std, dx, dscale, dbias

    for st, y, mean, inv_std, dx, dscale, dbias in group.run(rank_fn):
        assert st.count == 0 and not st.mean.any() and not st.m2.any()
        y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias, eps=1e-3, layout=layout)
        assert y.shape == y1.shape == shape and y.dtype == np.float32
        assert np.array_equal(mean, mean1) and np.array_equal(inv_std, inv1)
        assert dx.shape == shape and not dscale.any() and not dbias.any()
    # a global count of 0 skips the second statistics collective on every rank
    assert all(c == [(4,), (4,), (7,)] for c in group.calls)


def test_zero_channels():
    x = np.zeros((4, 0, 3))
    group = FakeGroup(2)

    def rank_fn(r, allreduce):
        y, mean, inv_std = cbp.sync_batch_norm_forward(x, np.zeros(0), np.zeros(0),
                                                       allreduce=allreduce)
        dx, dscale, dbias = cbp.sync_batch_norm_backward(x, x, mean, inv_std, np.zeros(0),
                                                         allreduce=allreduce)
        return y, mean, dx, dscale

    for y, mean, dx, dscale in group.run(rank_fn):
        assert y.shape == dx.shape == x.shape and mean.shape == dscale.shape == (0,)


def test_single_rank_is_the_plain_call():
    x, dy, scale, bias = make_batch((6, 4, 5, 5), "NCHW", np.float64, 7, offset_ratio=3.0)
    noop = lambda buf: None  # noqa: E731  (a group of one)
    y, mean, inv_std = cbp.sync_batch_norm_forward(x, scale, bias, allreduce=noop)
    y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias)
    assert rel(y, y1) < 1e-13 and rel(mean, mean1) < 1e-14 and rel(inv_std, inv1) < 1e-13
    dx, dscale, dbias = cbp.sync_batch_norm_backward(x, dy, mean, inv_std, scale, allreduce=noop)
    dx1, dscale1, dbias1 = cbp.batch_norm_backward(x, dy, mean1, inv1, scale)
    assert rel(dx, dx1) < 1e-12 and rel(dscale, dscale1) < 1e-12 and rel(dbias, dbias1) < 1e-12


def test_in_place_out_and_returned_buffer():
    """out=x / out=dy work; an allreduce that returns the sum (not in place) is accepted."""
    x, dy, scale, bias = make_batch((8, 3, 4), "NCHW", np.float64, 11, offset_ratio=2.0)
    y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias)
    dx1, _, _ = cbp.batch_norm_backward(x, dy, mean1, inv1, scale)
    returning = lambda buf: buf * 1.0  # noqa: E731
    xx, dd = x.copy(), dy.copy()
    _, mean, inv_std = cbp.sync_batch_norm_forward(xx, scale, bias, allreduce=returning)
    dx = cbp.sync_batch_norm_backward(xx, dd, mean, inv_std, scale, allreduce=returning,
                                      out=dd)[0]
    assert dx is dd and rel(dx, dx1) < 1e-12
    y = cbp.sync_batch_norm_forward(xx, scale, bias, allreduce=returning, out=xx)[0]
    assert y is xx and rel(y, y1) < 1e-12


def test_errors():
    x = np.ones((4, 3, 2))
    s = np.ones(3)
    noop = lambda buf: None  # noqa: E731
    with pytest.raises(TypeError, match="allreduce must be a callable"):
        cbp.sync_channel_stats(x, allreduce=None)
    with pytest.raises(TypeError, match="allreduce must be a callable"):
        cbp.sync_batch_norm_forward(x, s, s, allreduce="comm")
    with pytest.raises(TypeError, match="allreduce must be a callable"):
        cbp.sync_batch_norm_backward(x, x, s, s, s, allreduce=3)
    with pytest.raises(TypeError):
        cbp.sync_channel_stats(x)  # allreduce is required and keyword-only
    with pytest.raises(ValueError, match="layout"):
        cbp.sync_channel_stats(x, allreduce=noop, layout="NCW")
    with pytest.raises(TypeError, match="dtype"):
        cbp.sync_channel_stats(x.astype(np.int64), allreduce=noop)
    with pytest.raises(ValueError, match="scale"):
        cbp.sync_batch_norm_forward(x, np.ones(2), s, allreduce=noop)
    with pytest.raises(ValueError, match="eps"):
        cbp.sync_batch_norm_forward(x, s, s, allreduce=noop, eps=0.0)
    with pytest.raises(ValueError, match="inv_std"):
        cbp.sync_batch_norm_backward(x, x, s, -s, s, allreduce=noop)
    with pytest.raises(ValueError, match="dy"):
        cbp.sync_batch_norm_backward(x, x[:2], s, s, s, allreduce=noop)
    with pytest.raises(ValueError, match="num_threads"):
        cbp.sync_channel_stats(x, allreduce=noop, num_threads=0)
    # a collective that does not sum (garbage count) is reported, not silently used
    with pytest.raises(RuntimeError, match="global element count"):
        cbp.sync_channel_stats(x, allreduce=lambda b: b.fill(np.nan))
    with pytest.raises(RuntimeError, match="global element count"):
        cbp.sync_batch_norm_backward(x, x, s, s, s, allreduce=lambda b: b.fill(0.5))
    with pytest.raises(ValueError, match="allreduce returned"):
        cbp.sync_channel_stats(x, allreduce=lambda b: b[:1])


def test_validation_happens_before_any_collective():
    calls = []
    x = np.ones((4, 3, 2))
    with pytest.raises(ValueError):
        cbp.sync_batch_norm_forward(x, np.ones(3), np.ones(3), allreduce=calls.append,
                                    out=np.empty((4, 3, 1)))
    with pytest.raises(ValueError):
        cbp.sync_batch_norm_backward(x, x, np.ones(3), np.ones(3), np.ones(2),
                                     allreduce=calls.append)
    assert calls == []
