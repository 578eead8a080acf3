"""batch_norm_backward against central finite differences of
L = sum(w * y),  y = batch_norm_forward(x, scale, bias, eps)[0]  (float64).

The forward recomputes mean/inv_std from x, so dL/dx includes the dependence
through the batch mean and variance; backward(x, w, mean, inv_std, scale)
must reproduce the full derivative."""
import numpy as np
import pytest

import cbp
import reference as ref
from conftest import layout_shape, maxabs, shape_id

EPS = 1e-3
H = 1e-6

GRAD_SHAPES = [(2, 3, 2, 2), (3, 2), (2, 2, 3), (1, 2, 2, 1, 2), (4, 1, 1, 1)]


def _loss(x, scale, bias, w, layout, fwd):
    y = fwd(x, scale, bias, eps=EPS, layout=layout)[0]
    return float(np.sum(w * np.asarray(y, dtype=np.float64)))


def _cbp_fwd(x, scale, bias, eps, layout):
    return cbp.batch_norm_forward(x, scale, bias, eps=eps, layout=layout)


def _ref_fwd(x, scale, bias, eps, layout):
    return ref.batch_norm_forward(x, scale, bias, eps, layout)


def _numgrad(f, a):
    """Central differences of scalar f() w.r.t. every entry of array `a`
    (modified in place and restored)."""
    g = np.zeros(a.shape)
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        fp = f()
        flat[i] = old - H
        fm = f()
        flat[i] = old
        g.reshape(-1)[i] = (fp - fm) / (2 * H)
    return g


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("fd_forward", ["cbp", "reference"])
def test_backward_matches_finite_differences(shape, layout, fd_forward):
    rng = np.random.default_rng(100 + len(shape))
    shp = layout_shape(shape, layout)
    C = shape[1]
    x = rng.standard_normal(shp) * rng.uniform(0.5, 2.0) + rng.uniform(-1, 1)
    w = rng.standard_normal(shp)
    scale = rng.standard_normal(C)
    bias = rng.standard_normal(C)
    fwd = _cbp_fwd if fd_forward == "cbp" else _ref_fwd

    def L():
        return _loss(x, scale, bias, w, layout, fwd)

    num_dx = _numgrad(L, x)
    num_dscale = _numgrad(L, scale)
    num_dbias = _numgrad(L, bias)

    y, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, eps=EPS, layout=layout)
    dx, dscale, dbias = cbp.batch_norm_backward(x, w, mean, inv_std, scale, layout=layout)

    # FD truncation ~h^2 and rounding ~1e-16*|L|/h ~1e-9: 1e-6 scale-aware
    for got, num in ((dx, num_dx), (dscale, num_dscale), (dbias, num_dbias)):
        np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-6 * max(maxabs(num), 1e-3))

    # sanity on the finite-difference machinery itself: the reference's
    # analytic gradient agrees with the same numbers
    r_dx, r_ds, r_db = ref.batch_norm_backward(x, w, mean, inv_std, scale, layout)
    np.testing.assert_allclose(r_dx, num_dx, rtol=1e-5, atol=1e-6 * max(maxabs(num_dx), 1e-3))
    np.testing.assert_allclose(r_ds, num_dscale, rtol=1e-5,
                               atol=1e-6 * max(maxabs(num_dscale), 1e-3))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dx_via_split_pipeline_matches_finite_differences(layout):
    """channel_backprop_stats + batch_norm_dx (the distributed pipeline) gives
    the same full gradient as finite differences."""
    rng = np.random.default_rng(7)
    shape = (3, 2, 2, 3)
    shp = layout_shape(shape, layout)
    x = rng.standard_normal(shp) + 0.5
    w = rng.standard_normal(shp)
    scale, bias = rng.standard_normal(2), rng.standard_normal(2)

    num_dx = _numgrad(lambda: _loss(x, scale, bias, w, layout, _cbp_fwd), x)

    _, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, eps=EPS, layout=layout)
    ds, db = cbp.channel_backprop_stats(x, w, mean, inv_std, layout=layout)
    dx = cbp.batch_norm_dx(x, w, mean, inv_std, scale, ds, db, x.size // 2, layout=layout)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-5, atol=1e-6 * maxabs(num_dx))


def test_inference_gradient_wrt_x_is_elementwise():
    """With fixed running stats, dy/dx = scale*inv_std (finite differences of
    batch_norm_inference)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 2))
    w = rng.standard_normal(x.shape)
    scale, bias = rng.standard_normal(3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.2, 2, 3)

    def L():
        return float(np.sum(w * cbp.batch_norm_inference(x, scale, bias, mean, var, eps=EPS)))

    num = _numgrad(L, x)
    want = w * ref.bcast(scale / np.sqrt(var + EPS), 3, "NCHW")
    np.testing.assert_allclose(num, want, rtol=1e-6, atol=1e-7 * maxabs(want))
