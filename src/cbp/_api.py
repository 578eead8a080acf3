"""The public functions: validate, allocate, call one fused kernel."""
from __future__ import annotations

import numpy as np

from . import _kernels
from . import _validation as v
from ._stats import ChannelStats

__all__ = [
    "channel_stats",
    "channel_backprop_stats",
    "batch_norm_dx",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_inference",
]


def channel_stats(x, *, layout="NCHW", num_threads=None) -> ChannelStats:
    """Per-channel count, mean and biased variance of ``x`` in one pass.

    Accumulated in float64 from blocked, shifted partial sums merged with
    Chan's formula, so |mean| >> std costs no accuracy. Results are bitwise
    identical for every ``num_threads``.

    Returns a :class:`ChannelStats` (mean, m2 and var are float64).
    """
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
    its exact share of the gradient. Returns ``dx`` with x's dtype and shape.
    """
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C)
    dscale = v.channel_vector(dscale, "dscale", C)
    dbias = v.channel_vector(dbias, "dbias", C)
    count = v.count_arg(count)
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
    """
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C)
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array, dyc.array))
    if xc.count == 0 or C == 0:
        return res.result(), np.zeros(C), np.zeros(C)
    dscale, dbias = _kernels.backward(xc.block, dyc.block, mean, inv_std, scale, res.block, nt)
    return res.result(), dscale, dbias


def batch_norm_forward(x, scale, bias, *, eps=1e-5, layout="NCHW", out=None,
                       num_threads=None):
    """Training-mode batch norm: ``(y, mean, inv_std)``.

    ``y = scale * (x - mean) * inv_std + bias`` with the batch's mean and
    biased variance, ``inv_std = 1 / sqrt(var + eps)`` (float64). Statistics
    and the normalizing sweep are fused as in :func:`batch_norm_backward`.
    """
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C)
    bias = v.channel_vector(bias, "bias", C)
    eps = v.positive_scalar(eps, "eps")
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array,))
    if xc.count == 0 or C == 0:
        return res.result(), np.zeros(C), np.full(C, 1.0 / np.sqrt(eps))
    mean, _, inv_std = _kernels.forward(xc.block, scale, bias, eps, res.block, nt)
    return res.result(), mean, inv_std


def batch_norm_inference(x, scale, bias, mean, var, *, eps=1e-5, layout="NCHW", out=None,
                         num_threads=None):
    """Inference-mode batch norm with running statistics.

    ``y = scale * (x - mean) / sqrt(var + eps) + bias``, y with x's dtype.
    """
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C)
    bias = v.channel_vector(bias, "bias", C)
    mean = v.channel_vector(mean, "mean", C, finite=True)
    var = v.channel_vector(var, "var", C, nonnegative=True)
    eps = v.positive_scalar(eps, "eps")
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array,))
    if xc.array.size:
        _kernels.affine(xc.block, mean, scale / np.sqrt(var + eps), bias, res.block, nt)
    return res.result()
