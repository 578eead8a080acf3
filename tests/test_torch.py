"""Cross-check against PyTorch autograd (float64, CPU)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import cbp  # noqa: E402
import reference as ref  # noqa: E402
from conftest import layout_shape, maxabs, shape_id  # noqa: E402

TORCH_SHAPES = [(4, 3, 5, 5), (2, 300, 2, 2), (8, 4), (3, 5, 7), (2, 3, 2, 3, 4),
                (1, 2, 3, 3), (5, 1, 1, 1)]

RTOL = 1e-10


def _to_torch_nchw(a, layout):
    """NHWC arrays: move the channel axis to position 1 for torch."""
    a = np.asarray(a, dtype=np.float64)
    if layout == "NHWC":
        a = np.moveaxis(a, -1, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def _from_torch_nchw(t, layout):
    a = t.detach().numpy()
    if layout == "NHWC":
        a = np.moveaxis(a, 1, -1)
    return a


def _close(got, want, rtol=RTOL):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(maxabs(want), 1e-300))


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_forward_backward_vs_torch(shape, layout, eps):
    rng = np.random.default_rng(200 + sum(shape))
    shp = layout_shape(shape, layout)
    C = shape[1]
    x = rng.standard_normal(shp) * 2.0 + ref.bcast(rng.uniform(-3, 3, C), len(shp), layout)
    dy = rng.standard_normal(shp)
    scale = rng.standard_normal(C)
    bias = rng.standard_normal(C)

    xt = _to_torch_nchw(x, layout).requires_grad_(True)
    wt = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    yt = F.batch_norm(xt, None, None, wt, bt, training=True, momentum=0.0, eps=eps)
    yt.backward(_to_torch_nchw(dy, layout))
    t_y = _from_torch_nchw(yt, layout)
    t_dx = _from_torch_nchw(xt.grad, layout)
    t_dw = wt.grad.numpy()
    t_db = bt.grad.numpy()

    # torch's saved statistics
    with torch.no_grad():
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
            _to_torch_nchw(x, layout), wt.detach(), bt.detach(), None, None, True, 0.0, eps)

    y, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, eps=eps, layout=layout)
    _close(y, t_y)
    _close(mean, save_mean.numpy())
    _close(mean, ref.to_mc(x, layout).mean(axis=0))
    _close(inv_std, save_invstd.numpy())

    dx, dscale, dbias = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    _close(dx, t_dx, rtol=1e-9)
    _close(dscale, t_dw, rtol=1e-9)
    _close(dbias, t_db, rtol=1e-9)

    # the split (distributed-style) path agrees too
    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    _close(ds, t_dw, rtol=1e-9)
    _close(db, t_db, rtol=1e-9)
    dx2 = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, x.size // C, layout=layout)
    _close(dx2, t_dx, rtol=1e-9)

    # channel_stats var equals torch's biased variance
    st = cbp.channel_stats(x, layout=layout)
    t_var = _to_torch_nchw(x, layout).transpose(0, 1).reshape(C, -1).var(dim=1, unbiased=False)
    _close(st.var, t_var.numpy())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_inference_vs_torch(layout):
    rng = np.random.default_rng(300)
    shape = (3, 4, 5, 6)
    shp = layout_shape(shape, layout)
    x = rng.standard_normal(shp)
    scale, bias = rng.standard_normal(4), rng.standard_normal(4)
    rmean, rvar = rng.standard_normal(4), rng.uniform(0.1, 3, 4)
    yt = F.batch_norm(_to_torch_nchw(x, layout), torch.from_numpy(rmean.copy()),
                      torch.from_numpy(rvar.copy()), torch.from_numpy(scale),
                      torch.from_numpy(bias), training=False, eps=1e-3)
    y = cbp.batch_norm_inference(x, scale, bias, rmean, rvar, eps=1e-3, layout=layout)
    _close(y, _from_torch_nchw(yt, layout))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float32_vs_torch(layout):
    """float32 inputs: cbp is compared against torch run in float64 on the
    same float32 values (torch float32 itself is less accurate)."""
    rng = np.random.default_rng(301)
    shape = (4, 5, 6, 6)
    shp = layout_shape(shape, layout)
    x = (rng.standard_normal(shp) + 1.0).astype(np.float32)
    dy = rng.standard_normal(shp).astype(np.float32)
    scale, bias = rng.standard_normal(5), rng.standard_normal(5)

    xt = _to_torch_nchw(x, layout).requires_grad_(True)
    wt = torch.tensor(scale, requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    yt = F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    yt.backward(_to_torch_nchw(dy, layout))

    y, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, layout=layout)
    assert y.dtype == np.float32
    _close(y, _from_torch_nchw(yt, layout), rtol=1e-5)
    dx, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    assert dx.dtype == np.float32
    _close(dx, _from_torch_nchw(xt.grad, layout), rtol=1e-4)
    _close(ds, wt.grad.numpy(), rtol=1e-4)
    _close(db, bt.grad.numpy(), rtol=1e-4)
