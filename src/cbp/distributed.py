"""Synchronized (cross-process) batch norm, independent of the communication engine.

Each process holds a shard of the batch along N. The per-channel quantities
are combined with a user-supplied ``allreduce(buf)`` that sums a 1-D float64
NumPy buffer element-wise across the group, in place (MPI's
``Allreduce(IN_PLACE, buf, SUM)``, ``torch.distributed.all_reduce``, a test
fake, ...). Every process of the group must call the same function with the
same number of channels, in the same order; shards may differ in size and may
be empty.

Collectives per call (each one packed buffer of float64):

* :func:`sync_channel_stats` / :func:`sync_batch_norm_forward`: two.
  1. ``[n_i * mean_i (C values), n_i]`` gives the global count n and mean;
  2. ``[m2_i + n_i * (mean_i - mean)**2 (C values)]`` gives the global M2.
  This is Chan's exact merge with the global mean as the pivot (never sums of
  squares), so |mean| >> std costs no accuracy. When the global count is 0,
  the second collective is skipped on every process alike.
* :func:`sync_batch_norm_backward`: one, ``[dscale_i, dbias_i, count_i]``
  (2C + 1 values), then the dX sweep with the global count.

``allreduce`` may also return the summed buffer instead of writing in place
(any non-None return value of the right shape is used).
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from . import _validation as v
from ._api import (
    batch_norm_backward,
    batch_norm_dx,
    channel_backprop_stats,
    channel_stats,
)
from ._running import running_update as _running_update
from ._stats import ChannelStats

__all__ = ["sync_channel_stats", "sync_batch_norm_forward", "sync_batch_norm_backward"]


def _check_allreduce(allreduce):
    if not callable(allreduce):
        raise TypeError("allreduce must be a callable that sums a 1-D float64 numpy buffer "
                        "in place across the process group (e.g. "
                        "cbp.mpi.make_allreduce(comm)), got "
                        f"{type(allreduce).__name__} {allreduce!r}")
    return allreduce


def _reduce(allreduce, buf: np.ndarray) -> np.ndarray:
    """Run one collective on a packed float64 buffer and check what came back."""
    res = allreduce(buf)
    if res is not None and res is not buf:
        res = np.asarray(res)
        if res.shape != buf.shape:
            raise ValueError(f"allreduce returned an array of shape {res.shape}; expected "
                             f"the summed buffer of shape {buf.shape} (or None after an "
                             "in-place sum)")
        buf = np.array(res, dtype=np.float64)
    return buf


def _global_count(value: float, local: int) -> int:
    """The summed count: a whole number >= this shard's count, else the allreduce is broken."""
    if not (np.isfinite(value) and value >= local and value == np.floor(value)):
        raise RuntimeError(f"allreduce gave a global element count of {value!r} (this shard "
                           f"has {local}); it must sum the buffer element-wise across the "
                           "group, and every process must call with the same number of "
                           "channels")
    return int(value)


def _sync_stats(x_arr: np.ndarray, layout: str, C: int, allreduce, nt: int) -> ChannelStats:
    local = channel_stats(x_arr, layout=layout, num_threads=nt)
    n_i = local.count
    buf = np.empty(C + 1)
    buf[:C] = local.mean * n_i  # zeros for an empty shard
    buf[C] = n_i
    buf = _reduce(allreduce, buf)
    n = _global_count(buf[C], n_i)
    if n == 0:
        # Same decision on every process (the count is global): no second collective.
        zeros = np.zeros(C)
        return ChannelStats(0, zeros, zeros)
    mean = buf[:C] / n
    buf2 = np.zeros(C)
    if n_i:
        d = local.mean - mean
        buf2[:] = local.m2 + n_i * (d * d)
    buf2 = _reduce(allreduce, buf2)
    m2 = np.maximum(buf2, 0.0)  # exact sums of non-negative terms; guards -0.0 only
    # NaN where a shard's channel held NaN or Inf, as in cbp.channel_stats
    nan = ~(np.isfinite(mean) & np.isfinite(m2))
    if nan.any():
        mean[nan] = np.nan
        m2[nan] = np.nan
    return ChannelStats._trusted(n, mean, m2)


def sync_channel_stats(x, *, allreduce, layout="NCHW", num_threads=None) -> ChannelStats:
    """Per-channel count, mean and M2 of the whole batch spread over a process group.

    ``x`` is this process's shard (any N, possibly 0). Returns the global
    :class:`ChannelStats` on every process, equal to :func:`cbp.channel_stats`
    of the concatenated batch up to float64 rounding. Two collectives.
    """
    _check_allreduce(allreduce)
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    nt = v.resolve_threads(num_threads)
    return _sync_stats(xc.array, layout, xc.channels, allreduce, nt)


def sync_batch_norm_forward(x, scale=None, bias=None, *, allreduce, eps=1e-5, layout="NCHW",
                            out=None, num_threads=None, running_mean=None, running_var=None,
                            momentum=0.1, momentum_of="batch", unbiased=True,
                            num_batches_tracked=None, return_stats=False):
    """Training-mode batch norm with statistics of the whole distributed batch.

    Returns ``(y, mean, inv_std)`` like :func:`cbp.batch_norm_forward`: y is
    this shard normalized with the global mean and biased variance (x's dtype),
    mean and inv_std are float64 and identical on every process. Two
    collectives. If the whole batch is empty: mean 0, inv_std 1/sqrt(eps).
    ``scale=None`` / ``bias=None`` are the identity affine.

    ``return_stats=True`` appends the global :class:`ChannelStats`.
    ``running_mean`` / ``running_var`` are updated in place from the global
    statistics (the global count for the unbiased variance, as PyTorch's
    SyncBatchNorm does), with the options of :func:`cbp.update_running_stats`;
    every process updates its own copy identically.
    """
    _check_allreduce(allreduce)
    layout = v.check_layout(layout)
    xc = v.activation(x, "x", layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    bias = v.channel_vector(bias, "bias", C, default=0.0)
    eps = v.positive_scalar(eps, "eps")
    update = _running_update(running_mean, running_var, C, momentum, momentum_of, unbiased,
                             num_batches_tracked)
    nt = v.resolve_threads(num_threads)
    res = v.output(out, xc, (xc.array,))  # check before any collective
    stats = _sync_stats(xc.array, layout, C, allreduce, nt)
    var = stats.var
    inv_std = 1.0 / np.sqrt(var + eps)
    # The kernels directly, not batch_norm_inference: statistics that are NaN
    # (NaN or Inf in some shard's data) give NaN channels, as in
    # cbp.batch_norm_forward, rather than an error about an argument the
    # caller never passed.
    if xc.array.size:
        _kernels.affine(xc.block, stats.mean, scale / np.sqrt(var + eps), bias, res.block, nt)
    y = res.result()
    if update is not None:
        update(stats)
    if return_stats:
        return y, np.array(stats.mean), inv_std, stats
    return y, np.array(stats.mean), inv_std


_PARAM_GRADS = ("global", "local")


def sync_batch_norm_backward(x, dy, mean, inv_std, scale=None, *, allreduce, layout="NCHW",
                             out=None, num_threads=None, param_grads="global"):
    """Batch-norm backward over the whole distributed batch: ``(dx, dscale, dbias)``.

    ``mean`` and ``inv_std`` are the global statistics (from
    :func:`sync_batch_norm_forward`). dx is this shard's exact share of the
    gradient of the whole batch. One collective of 2C + 1 values.
    ``scale=None`` is the identity scale.

    ``param_grads="global"`` (default): dscale and dbias are the sums over the
    whole batch (float64, identical on every process, already reduced: do not
    all-reduce them again). ``param_grads="local"``: they are this shard's own
    sums, as PyTorch's SyncBatchNorm returns them for DistributedDataParallel
    to average with every other parameter's gradient; dx is the same.
    """
    _check_allreduce(allreduce)
    if not isinstance(param_grads, str) or param_grads not in _PARAM_GRADS:
        raise ValueError(f"param_grads must be 'global' or 'local', got {param_grads!r}")
    layout = v.check_layout(layout)
    xc, dyc, mean, inv_std = v.gradient_inputs(x, dy, mean, inv_std, layout)
    C = xc.channels
    scale = v.channel_vector(scale, "scale", C, default=1.0)
    nt = v.resolve_threads(num_threads)
    v.output(out, xc, (xc.array, dyc.array))  # check before any collective
    n_i = xc.count if C else 0
    buf = np.zeros(2 * C + 1)
    if n_i:
        buf[:C], buf[C:2 * C] = channel_backprop_stats(xc.array, dyc.array, mean, inv_std,
                                                       layout=layout, num_threads=nt)
    local = (np.array(buf[:C]), np.array(buf[C:2 * C])) if param_grads == "local" else None
    buf[2 * C] = n_i
    buf = _reduce(allreduce, buf)
    n = _global_count(buf[2 * C], n_i)
    if n == 0:
        return batch_norm_backward(xc.array, dyc.array, mean, inv_std, scale, layout=layout,
                                   out=out, num_threads=nt)
    dscale = np.array(buf[:C])
    dbias = np.array(buf[C:2 * C])
    dx = batch_norm_dx(xc.array, dyc.array, mean, inv_std, scale, dscale, dbias, n,
                       layout=layout, out=out, num_threads=nt)
    if local is not None:
        return (dx, *local)
    return dx, dscale, dbias
