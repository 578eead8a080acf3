"""The public functions: validate, allocate, call one fused kernel.

Plain one-thread calls first try the kernels' small_* entry points
(_small_calls.pxi), which do the common case's checks in C and return None
for anything else; the general path below then checks and runs the call."""
from __future__ import annotations

import numpy as np

from . import _kernels
from . import _validation as v
from ._running import running_update as _running_update
from ._stats import ChannelStats

__all__ = [
    "channel_stats",
    "channel_backprop_stats",
    "batch_norm_dx",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "update_running_stats",
]


def channel_stats(x, *, layout="NCHW", num_threads=None) -> ChannelStats:
    """Per-channel count, mean and biased variance of ``x`` in one pass.

    Accumulated in float64 from blocked, shifted partial sums merged with
    Chan's formula, so |mean| >> std costs no accuracy. Results are bitwise
    identical for every ``num_threads``.

    Returns a :class:`ChannelStats` (mean, m2 and var are float64).
    """
    small = _kernels.small_moments(x, layout, num_threads)
    if small is not None:
        return ChannelStats._trusted(*small)
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    nt = v.resolve_threads(num_threads)
    if xc.count == 0 or xc.channels == 0:
        zeros = np.zeros(xc.channels)
        return ChannelStats(0, zeros, zeros)
    mean, m2 = _kernels.moments(xc.block, nt)
    return ChannelStats._trusted(xc.count, mean, m2)


def channel_backprop_stats(x, dy, mean, inv_std, *, layout="NCHW", num_threads=None):
    """Caffe2's ChannelBackpropStats: per-channel scale and bias gradients.

    ``dbias[c] = sum(dy)`` and ``dscale[c] = sum(dy * (x - mean) * inv_std)``
    over every element of channel c. Returns ``(dscale, dbias)``, float64.
    """
    small = _kernels.small_backprop_sums(x, dy, mean, inv_std, layout, num_threads)
    if small is not None:
        return small
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    nt = v.resolve_threads(num_threads)
    if xc.count == 0 or C == 0:
        return np.zeros(C), np.zeros(C)
    return _kernels.backprop_sums(xc.block, dyc.block, mean, inv_std, nt)


def batch_norm_dx(x, dy, mean, inv_std, scale, dscale, dbias, count, *, layout="NCHW",
                  out=None, num_threads=None):
    """Input gradient of batch norm from (possibly global) per-channel sums.

    ``dx = scale * inv_std * (dy - dbias / count - (x - mean) * inv_std * dscale / count)``

    ``dscale`` and ``dbias`` are the sums over the whole batch and ``count``
    the whole batch's elements per channel, so a shard of a larger batch gets
    its exact share of the gradient. ``scale=None`` is the identity scale
    (affine off). ``count`` must be >= 1, or 0 for an empty x (an empty dx,
    as :func:`batch_norm_backward` gives). Returns ``dx`` with x's dtype and shape.
    """
    small = _kernels.small_dx(x, dy, mean, inv_std, scale, dscale, dbias, count, layout,
                              num_threads, out)
    if small is not None:
        return small
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    dscale = v.channel_vector(dscale, "dscale", C)
    dbias = v.channel_vector(dbias, "dbias", C)
    count = v.count_arg(count, xc.array.size)
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array, dyc.array))
    if xc.array.size:
        _kernels.dx(xc.block, dyc.block, mean, inv_std, scale, dscale, dbias, float(count),
                    res.block, nt)
    return res.result()


def batch_norm_backward(x, dy, mean, inv_std, scale, *, layout="NCHW", out=None,
                        num_threads=None):
    """Fused batch-norm backward in one process: ``(dx, dscale, dbias)``.

    The reduction and the dX sweep are fused; in NCHW, blocks of channels are
    reduced and swept while their data is still in cache. dx has x's dtype;
    dscale and dbias are float64. An empty batch gives zero gradients.
    ``scale=None`` is the identity scale (affine off).
    """
    small = _kernels.small_backward(x, dy, mean, inv_std, scale, layout, num_threads, out)
    if small is not None:
        return small
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array, dyc.array))
    if xc.count == 0 or C == 0:
        return res.result(), np.zeros(C), np.zeros(C)
    dscale, dbias = _kernels.backward(xc.block, dyc.block, mean, inv_std, scale, res.block, nt)
    return res.result(), dscale, dbias


def batch_norm_forward(x, scale=None, bias=None, *, eps=1e-5, layout="NCHW", out=None,
                       num_threads=None, running_mean=None, running_var=None, momentum=0.1,
                       momentum_of="batch", unbiased=True, num_batches_tracked=None,
                       return_stats=False):
    """Training-mode batch norm: ``(y, mean, inv_std)``, or ``(y, mean, inv_std, stats)``.

    ``y = scale * (x - mean) * inv_std + bias`` with the batch's mean and
    biased variance, ``inv_std = 1 / sqrt(var + eps)`` (float64). Statistics
    and the normalizing sweep are fused as in :func:`batch_norm_backward`.
    ``scale=None`` / ``bias=None`` are the identity affine (affine off).

    ``return_stats=True`` appends the batch's :class:`ChannelStats` (count,
    mean, m2, and ``var``, the biased batch variance) from the same pass.

    ``running_mean`` / ``running_var`` (writeable floating arrays of shape
    (C,), either or both) are updated in place from this batch, as
    :func:`update_running_stats` describes (``momentum``, ``momentum_of``,
    ``unbiased``, ``num_batches_tracked``); the defaults are PyTorch's. They
    are checked before anything is computed.
    """
    if running_mean is None and running_var is None and not return_stats:
        small = _kernels.small_forward(x, scale, bias, eps, layout, num_threads, out)
        if small is not None:
            return small
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    bias = v.channel_vector(bias, "bias", C, default=0.0)
    eps = v.positive_scalar(eps, "eps")
    update = _running_update(running_mean, running_var, C, momentum, momentum_of, unbiased,
                             num_batches_tracked, count=xc.count)
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array,))
    if xc.count == 0 or C == 0:
        m2 = np.zeros(C)
        mean, inv_std = np.zeros(C), np.full(C, 1.0 / np.sqrt(eps))
    else:
        mean, m2, inv_std = _kernels.forward(xc.block, scale, bias, eps, res.block, nt)
    if update is None and not return_stats:
        return res.result(), mean, inv_std  # no ChannelStats to build (1 us of a tiny call)
    stats = ChannelStats._trusted(xc.count if C else 0, mean.copy(), m2)
    if update is not None:
        update(stats)
    if return_stats:
        return res.result(), mean, inv_std, stats
    return res.result(), mean, inv_std


def update_running_stats(running_mean, running_var, stats, *, momentum=0.1,
                         momentum_of="batch", unbiased=True, num_batches_tracked=None):
    """Fold one batch's :class:`ChannelStats` into running statistics, in place.

    PyTorch's convention is the default::

        running_mean = (1 - momentum) * running_mean + momentum * stats.mean
        running_var  = (1 - momentum) * running_var  + momentum * stats.m2 / (count - 1)

    ``momentum_of="running"`` makes ``momentum`` the weight of the old value
    (``running = momentum * running + (1 - momentum) * batch``), as in ONNX
    BatchNormalization, Caffe2 SpatialBN and Keras (typically momentum=0.9 or
    0.99); ``unbiased=False`` takes the biased batch variance ``m2 / count``,
    as those do. ``momentum=None`` is the cumulative average (PyTorch's
    ``momentum=None``): the batch gets weight ``1 / (num_batches_tracked + 1)``,
    where ``num_batches_tracked`` counts the batches already averaged in, not
    this one (so 0 replaces the running values by the batch's); it is then
    required. Either buffer may be None. An empty batch (count 0) leaves both
    unchanged; ``unbiased=True`` with count 1 is a ValueError. The update is
    computed in float64 and stored in each buffer's own dtype.
    """
    if not isinstance(stats, ChannelStats):
        raise TypeError(f"stats must be a ChannelStats, got {v._describe(stats)}")
    update = _running_update(running_mean, running_var, stats.channels, momentum,
                             momentum_of, unbiased, num_batches_tracked)
    if update is not None:
        update(stats)


def batch_norm_inference(x, scale, bias, mean, var, *, eps=1e-5, layout="NCHW", out=None,
                         num_threads=None):
    """Inference-mode batch norm with running statistics.

    ``y = scale * (x - mean) / sqrt(var + eps) + bias``, y with x's dtype;
    ``scale=None`` / ``bias=None`` are the identity affine (affine off).
    """
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    bias = v.channel_vector(bias, "bias", C, default=0.0)
    mean = v.channel_vector(mean, "mean", C, finite=True)
    var = v.channel_vector(var, "var", C, nonnegative=True)
    eps = v.positive_scalar(eps, "eps")
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array,))
    if xc.array.size:
        _kernels.affine(xc.block, mean, scale / np.sqrt(var + eps), bias, res.block, nt)
    return res.result()
