"""Running statistics, the forward's batch statistics, and the affine-off forms.

References are independent float64 NumPy formulas written from each framework's
documented rule (PyTorch's _BatchNorm, the ONNX BatchNormalization spec), and
PyTorch itself where it is installed.
"""
import numpy as np
import pytest

import cbp
from conftest import layout_shape
from test_sync import FakeGroup, split

C = 5


def _batch(layout, dtype, seed, shape=(6, C, 3, 4), offset=3.0):
    rng = np.random.default_rng(seed)
    shp = layout_shape(shape, layout)
    cax = 1 if layout == "NCHW" else len(shp) - 1
    bs = [1] * len(shp)
    bs[cax] = C
    x = rng.standard_normal(shp) * rng.uniform(0.5, 2, C).reshape(bs) \
        + offset * rng.standard_normal(C).reshape(bs)
    return x.astype(dtype), cax


def _ref_moments(x, cax):
    axes = tuple(i for i in range(x.ndim) if i != cax)
    xd = x.astype(np.float64)
    n = xd.size // xd.shape[cax]
    mean = xd.mean(axis=axes)
    m2 = ((xd - np.expand_dims(mean, axes)) ** 2).sum(axis=axes)
    return n, mean, m2


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.37])
def test_pytorch_convention(layout, dtype, momentum):
    x, cax = _batch(layout, dtype, 1)
    rng = np.random.default_rng(2)
    rm0, rv0 = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    rm, rv = rm0.copy(), rv0.copy()
    y, mean, inv_std, stats = cbp.batch_norm_forward(
        x, None, None, layout=layout, running_mean=rm, running_var=rv, momentum=momentum,
        return_stats=True)
    n, mean_ref, m2_ref = _ref_moments(x, cax)
    # float32 data is summed in float32 blocks of at most 32 terms (README, Accuracy)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(rm, (1 - momentum) * rm0 + momentum * mean_ref, rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(rv, (1 - momentum) * rv0 + momentum * m2_ref / (n - 1),
                               rtol=tol)
    # the batch statistics of the same pass
    assert stats.count == n
    np.testing.assert_array_equal(stats.mean, mean)
    np.testing.assert_allclose(stats.var, m2_ref / n, rtol=tol)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(m2_ref / n + 1e-5), rtol=tol)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.0])
def test_onnx_caffe2_convention(layout, momentum):
    """ONNX BatchNormalization (training_mode=1): running = input * momentum +
    current * (1 - momentum), current_var the population (biased) variance."""
    x, cax = _batch(layout, np.float64, 3)
    rm0, rv0 = np.linspace(-1, 1, C), np.linspace(0.5, 3, C)
    rm, rv = rm0.copy(), rv0.copy()
    cbp.batch_norm_forward(x, layout=layout, running_mean=rm, running_var=rv,
                           momentum=momentum, momentum_of="running", unbiased=False)
    n, mean_ref, m2_ref = _ref_moments(x, cax)
    np.testing.assert_allclose(rm, rm0 * momentum + mean_ref * (1 - momentum), rtol=1e-12,
                               atol=1e-13)
    np.testing.assert_allclose(rv, rv0 * momentum + (m2_ref / n) * (1 - momentum),
                               rtol=1e-12)


def test_cumulative_average_momentum_none():
    """momentum=None: after k batches the running values are the plain average of the k
    batch means and unbiased variances (whatever they started from)."""
    rm, rv = np.full(C, 123.0), np.full(C, 456.0)
    means, vars_ = [], []
    for k in range(4):
        x, cax = _batch("NCHW", np.float64, 10 + k)
        cbp.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=None,
                               num_batches_tracked=k)
        n, mean_ref, m2_ref = _ref_moments(x, cax)
        means.append(mean_ref)
        vars_.append(m2_ref / (n - 1))
        np.testing.assert_allclose(rm, np.mean(means, axis=0), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(rv, np.mean(vars_, axis=0), rtol=1e-12)


def test_float32_buffers_and_one_buffer():
    """Buffers keep their dtype (computed in float64, stored rounded); either may be None."""
    x, cax = _batch("NCHW", np.float32, 4)
    n, mean_ref, m2_ref = _ref_moments(x, cax)
    rm = np.zeros(C, dtype=np.float32)
    cbp.batch_norm_forward(x, running_mean=rm, momentum=0.5)
    assert rm.dtype == np.float32
    np.testing.assert_allclose(rm, 0.5 * mean_ref, rtol=1e-6)
    rv = np.ones(C, dtype=np.float16)
    cbp.update_running_stats(None, rv, cbp.channel_stats(x), momentum=0.5)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * m2_ref / (n - 1), rtol=1e-3)


def test_empty_batch_leaves_buffers():
    x = np.zeros((0, C, 2, 2))
    rm, rv = np.full(C, 2.0), np.full(C, 3.0)
    y, mean, inv_std, stats = cbp.batch_norm_forward(x, running_mean=rm, running_var=rv,
                                                     return_stats=True)
    assert y.shape == x.shape and stats.count == 0
    assert (rm == 2.0).all() and (rv == 3.0).all()


def test_update_running_stats_equals_forward():
    x, _ = _batch("NHWC", np.float64, 5)
    a = [np.full(C, 0.25), np.full(C, 1.5)]
    b = [t.copy() for t in a]
    cbp.batch_norm_forward(x, layout="NHWC", running_mean=a[0], running_var=a[1],
                           momentum=0.3)
    cbp.update_running_stats(b[0], b[1], cbp.channel_stats(x, layout="NHWC"), momentum=0.3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_against_torch(momentum):
    torch = pytest.importorskip("torch")
    x, _ = _batch("NCHW", np.float64, 6)
    rm, rv = np.zeros(C), np.ones(C)
    trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for k in range(3):
        xb = x + k
        cbp.batch_norm_forward(xb, running_mean=rm, running_var=rv, momentum=momentum,
                               num_batches_tracked=k)
        factor = 1.0 / (k + 1) if momentum is None else momentum
        torch.nn.functional.batch_norm(torch.from_numpy(xb), trm, trv, training=True,
                                       momentum=factor)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------
# the synchronized forward and backward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sync_forward_running_stats_and_stats(layout):
    x, _ = _batch(layout, np.float64, 7, shape=(9, C, 3, 2))
    sizes = [4, 0, 5]
    shards = split(x, sizes)
    rm0, rv0 = np.linspace(0, 1, C), np.linspace(1, 2, C)
    want_rm, want_rv = rm0.copy(), rv0.copy()
    _, _, _, want = cbp.batch_norm_forward(x, layout=layout, running_mean=want_rm,
                                           running_var=want_rv, momentum=0.2,
                                           return_stats=True)
    group = FakeGroup(3)

    def rank(r, allreduce):
        rm, rv = rm0.copy(), rv0.copy()
        _, _, _, st = cbp.sync_batch_norm_forward(
            shards[r], allreduce=allreduce, layout=layout, running_mean=rm, running_var=rv,
            momentum=0.2, return_stats=True)
        return rm, rv, st

    for rm, rv, st in group.run(rank):
        assert st.count == want.count
        np.testing.assert_allclose(st.mean, want.mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(st.var, want.var, rtol=1e-12)
        np.testing.assert_allclose(rm, want_rm, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, want_rv, rtol=1e-12)


def test_sync_backward_local_param_grads():
    """param_grads='local': dscale, dbias are the shard's own sums, dx unchanged."""
    x, _ = _batch("NCHW", np.float64, 8, shape=(7, C, 2, 3))
    dy, _ = _batch("NCHW", np.float64, 9, shape=(7, C, 2, 3), offset=0.0)
    scale = np.linspace(0.5, 2, C)
    st = cbp.channel_stats(x)
    mean, inv_std = st.mean, st.inv_std()
    sizes = [3, 4]
    xs, dys = split(x, sizes), split(dy, sizes)
    dx_all, _, _ = cbp.batch_norm_backward(x, dy, mean, inv_std, scale)
    group = FakeGroup(2)
    res = group.run(lambda r, ar: cbp.sync_batch_norm_backward(
        xs[r], dys[r], mean, inv_std, scale, allreduce=ar, param_grads="local"))
    for r, (dx, ds, db) in enumerate(res):
        axes = (0, 2, 3)
        xhat = (xs[r] - mean.reshape(1, C, 1, 1)) * inv_std.reshape(1, C, 1, 1)
        np.testing.assert_allclose(db, dys[r].sum(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(ds, (dys[r] * xhat).sum(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[0] for r in res]), dx_all, rtol=1e-12,
                               atol=1e-14)
    with pytest.raises(ValueError, match="param_grads"):
        cbp.sync_batch_norm_backward(x, dy, mean, inv_std, scale, allreduce=lambda b: None,
                                     param_grads="mine")
