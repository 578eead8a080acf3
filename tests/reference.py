"""Independent float64 NumPy reference for every cbp function.

Deliberately plain: move the channel axis to the end, flatten to (M, C),
compute in float64 with the centred (two-pass) formulas.  Never imports cbp.
"""
import numpy as np

__all__ = [
    "channel_axis", "to_mc", "from_mc", "bcast",
    "channel_stats", "channel_backprop_stats", "batch_norm_dx",
    "batch_norm_backward", "batch_norm_forward", "batch_norm_inference",
]


def channel_axis(ndim, layout):
    if layout == "NCHW":
        return 1
    if layout == "NHWC":
        return ndim - 1
    raise ValueError(layout)


def num_channels(shape, layout):
    return shape[channel_axis(len(shape), layout)]


def to_mc(a, layout):
    """Return a float64 (M, C) copy of `a` with the channel axis last."""
    a = np.asarray(a)
    ax = channel_axis(a.ndim, layout)
    C = a.shape[ax]
    moved = np.moveaxis(a, ax, -1).astype(np.float64)
    return moved.reshape(-1, C) if C else moved.reshape(int(np.prod(moved.shape[:-1])), 0)


def from_mc(a2, shape, layout):
    """Inverse of to_mc: (M, C) -> array of `shape` (float64)."""
    ax = channel_axis(len(shape), layout)
    moved_shape = tuple(s for i, s in enumerate(shape) if i != ax) + (shape[ax],)
    return np.moveaxis(np.asarray(a2).reshape(moved_shape), -1, ax)


def bcast(v, ndim, layout):
    """Reshape a per-channel vector so that it broadcasts against x."""
    v = np.asarray(v, dtype=np.float64)
    ax = channel_axis(ndim, layout)
    shape = [1] * ndim
    shape[ax] = v.shape[0]
    return v.reshape(shape)


def _f64(v):
    return np.asarray(v).astype(np.float64)


def channel_stats(x, layout="NCHW"):
    """-> (count, mean, var, m2); count 0 gives zero mean/var/m2."""
    x2 = to_mc(x, layout)
    M, C = x2.shape
    if M == 0:
        z = np.zeros(C)
        return 0, z, z.copy(), z.copy()
    mean = x2.sum(axis=0) / M
    d = x2 - mean
    m2 = (d * d).sum(axis=0)
    return M, mean, m2 / M, m2


def channel_backprop_stats(x, dy, mean, inv_std, layout="NCHW"):
    """-> (dscale, dbias)."""
    x2 = to_mc(x, layout)
    dy2 = to_mc(dy, layout)
    mean = _f64(mean)
    inv_std = _f64(inv_std)
    dbias = dy2.sum(axis=0)
    dscale = (dy2 * (x2 - mean) * inv_std).sum(axis=0)
    return dscale, dbias


def batch_norm_dx(x, dy, mean, inv_std, scale, dscale, dbias, count, layout="NCHW"):
    x2 = to_mc(x, layout)
    dy2 = to_mc(dy, layout)
    mean, inv_std, scale = _f64(mean), _f64(inv_std), _f64(scale)
    dscale, dbias = _f64(dscale), _f64(dbias)
    xhat = (x2 - mean) * inv_std
    dx2 = scale * inv_std * (dy2 - dbias / count - xhat * dscale / count)
    return from_mc(dx2, np.shape(x), layout)


def batch_norm_backward(x, dy, mean, inv_std, scale, layout="NCHW"):
    """-> (dx float64, dscale, dbias); count = M."""
    x = np.asarray(x)
    C = num_channels(x.shape, layout)
    M = x.size // C if C else 0
    dscale, dbias = channel_backprop_stats(x, dy, mean, inv_std, layout)
    if M == 0:
        return np.zeros(x.shape), dscale, dbias
    dx = batch_norm_dx(x, dy, mean, inv_std, scale, dscale, dbias, M, layout)
    return dx, dscale, dbias


def batch_norm_forward(x, scale, bias, eps=1e-5, layout="NCHW"):
    """-> (y float64, mean, inv_std)."""
    x = np.asarray(x)
    _, mean, var, _ = channel_stats(x, layout)
    inv_std = 1.0 / np.sqrt(var + eps)
    y = batch_norm_inference(x, scale, bias, mean, var, eps, layout)
    return y, mean, inv_std


def batch_norm_inference(x, scale, bias, mean, var, eps=1e-5, layout="NCHW"):
    x2 = to_mc(x, layout)
    scale, bias, mean, var = _f64(scale), _f64(bias), _f64(mean), _f64(var)
    inv_std = 1.0 / np.sqrt(var + eps)
    y2 = scale * (x2 - mean) * inv_std + bias
    return from_mc(y2, np.shape(x), layout)

