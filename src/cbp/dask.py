"""Batch norm on dask arrays, an optional extra: ``pip install "cbp[dask]"``.

The batch is a dask array, typically chunked along N (one chunk per worker or
more); any other chunking (along spatial axes or channels too) works as well,
and ``dy`` is rechunked to match ``x`` when needed. Built from dask's own
pieces, calling cbp's kernels once per block:

* statistics: :func:`dask.array.reduction`, each block's ``cbp.channel_stats``
  combined with the exact Chan merge (:meth:`cbp.ChannelStats.merge`);
* forward output: :func:`dask.array.map_blocks` of ``cbp.batch_norm_inference``
  with the global mean and variance;
* backward: ``map_blocks`` of ``cbp.channel_backprop_stats`` summed with
  dask's ``sum``, then ``map_blocks`` of ``cbp.batch_norm_dx`` with the global
  count.

:func:`batch_norm_forward` and :func:`batch_norm_backward` are lazy (they
return dask arrays; compute them together with ``dask.compute`` so the
statistics are computed once); :func:`channel_stats` computes the small
per-channel result and returns a :class:`cbp.ChannelStats`.

Threads: a dask worker's nanny sets ``OMP_NUM_THREADS=1``, so the kernels run
single-threaded per task unless ``num_threads`` is given (passed through to
every block; None means each worker's OpenMP default).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cbp.dask needs dask: pip install 'cbp[dask]' "
                      "(dask[array,distributed])") from exc

from . import _validation as v
from ._api import batch_norm_dx, batch_norm_inference, channel_backprop_stats
from ._api import channel_stats as _channel_stats
from ._stats import ChannelStats

__all__ = ["channel_stats", "batch_norm_forward", "batch_norm_backward", "STATS_DTYPE"]

#: dtype of the lazy per-channel statistics (``channel_stats(..., compute=False)``).
STATS_DTYPE = np.dtype([("count", np.float64), ("mean", np.float64), ("m2", np.float64)])


# --- checks ------------------------------------------------------------------------------

def _activation(x, name, layout, like=None):
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    v.check_activation_kind(x, name, like)
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {x.shape}); call "
                         f"{name}.compute_chunk_sizes() first")
    return x


def _threads(num_threads):
    v.resolve_threads(num_threads)  # raises on a bad value; resolved again in each worker
    return None if num_threads is None else int(num_threads)


def _channel_axis(layout, ndim):
    return 1 if layout == "NCHW" else ndim - 1


def _bcast_shape(C, cax, ndim):
    shape = [1] * ndim
    shape[cax] = C
    return tuple(shape)


def _per_channel(vec, name, C, cchunks, cax, ndim, default=None, **checks):
    """A per-channel vector (NumPy or dask, length C) as a broadcastable dask array;
    None is ``default`` in every channel when one is given (scale 1, bias 0)."""
    if vec is None and default is not None:
        vec = np.full(C, float(default))
    if isinstance(vec, da.Array):
        v.check_channel_kind(vec, name, C)
        vec = vec.astype(np.float64)
    else:
        vec = da.from_array(v.channel_vector(vec, name, C, **checks), chunks=(cchunks,))
    return vec.reshape(_bcast_shape(C, cax, ndim))


# --- block functions (module level: pickled by reference to the workers) ------------------

def _flatten(parts):
    if isinstance(parts, ChannelStats):
        return [parts]
    out = []
    for p in parts:
        out.extend(_flatten(p))
    return out


def _stats_chunk(xb, axis=None, keepdims=None, layout="NCHW", num_threads=None,
                 computing_meta=False):
    if computing_meta:
        return np.empty((0,), STATS_DTYPE)
    return _channel_stats(xb, layout=layout, num_threads=num_threads)


def _stats_combine(parts, axis=None, keepdims=None):
    return ChannelStats.merge(*_flatten(parts))


def _stats_aggregate(parts, axis=None, keepdims=None):
    st = ChannelStats.merge(*_flatten(parts))
    out = np.empty(st.channels, STATS_DTYPE)
    out["count"] = st.count
    out["mean"] = st.mean
    out["m2"] = st.m2
    return out


def _var_block(sb):
    count = sb["count"]
    return np.where(count > 0, sb["m2"] / np.maximum(count, 1.0), 0.0)


def _affine_block(xb, mean, var, scale, bias, *, eps, layout, num_threads):
    return batch_norm_inference(xb, scale.ravel(), bias.ravel(), mean.ravel(), var.ravel(),
                                eps=eps, layout=layout, num_threads=num_threads)


def _backprop_block(xb, dyb, mean, inv_std, *, layout, num_threads, out_shape):
    C = mean.size
    out = np.zeros((2,) + out_shape(xb.shape), np.float64)
    if xb.size:
        dscale, dbias = channel_backprop_stats(xb, dyb, mean.ravel(), inv_std.ravel(),
                                               layout=layout, num_threads=num_threads)
        out[0].reshape(-1)[:] = dscale if C else 0.0
        out[1].reshape(-1)[:] = dbias if C else 0.0
    return out


class _KeepDims:
    """Block shape with every axis but the channel axis reduced to 1 (picklable)."""

    def __init__(self, cax):
        self.cax = cax

    def __call__(self, shape):
        return tuple(s if i == self.cax else 1 for i, s in enumerate(shape))


def _dx_block(xb, dyb, mean, inv_std, scale, dscale, dbias, *, count, layout, num_threads):
    if xb.size == 0:
        return np.empty_like(xb)
    return batch_norm_dx(xb, dyb, mean.ravel(), inv_std.ravel(), scale.ravel(), dscale.ravel(),
                         dbias.ravel(), count, layout=layout, num_threads=num_threads)


# --- public functions ---------------------------------------------------------------------

def _stats_lazy(x, layout, num_threads, split_every):
    cax = _channel_axis(layout, x.ndim)
    axes = tuple(i for i in range(x.ndim) if i != cax)
    chunk = functools.partial(_stats_chunk, layout=layout, num_threads=num_threads)
    return da.reduction(x, chunk, _stats_aggregate, combine=_stats_combine, axis=axes,
                        keepdims=False, dtype=STATS_DTYPE, split_every=split_every,
                        concatenate=False, meta=np.empty((0,), STATS_DTYPE),
                        name="cbp-channel-stats")


def channel_stats(x, *, layout="NCHW", num_threads=None, split_every=None, compute=True):
    """Per-channel count, mean and M2 of a dask array, merged exactly across blocks.

    Returns a :class:`cbp.ChannelStats` (computed with the current dask
    scheduler). With ``compute=False``, returns instead a lazy dask array of
    shape (C,) and dtype :data:`STATS_DTYPE` (fields count, mean, m2).
    """
    layout = v.check_layout(layout)
    x = _activation(x, "x", layout)
    nt = _threads(num_threads)
    s = _stats_lazy(x, layout, nt, split_every)
    if not compute:
        return s
    s = np.asarray(s.compute())
    count = int(s["count"][0]) if s.size else 0
    if s.size == 0 or count == 0:
        zeros = np.zeros(s.size)
        return ChannelStats(0, zeros, zeros)
    return ChannelStats(count, s["mean"], s["m2"])


def batch_norm_forward(x, scale=None, bias=None, *, eps=1e-5, layout="NCHW",
                       num_threads=None, split_every=None):
    """Training-mode batch norm of a dask array: lazy ``(y, mean, inv_std)``.

    y is a dask array chunked like x (x's dtype); mean and inv_std are float64
    dask arrays of shape (C,). Equal to :func:`cbp.batch_norm_forward` of the
    whole batch. Compute them together: ``dask.compute(y, mean, inv_std)``.
    """
    layout = v.check_layout(layout)
    x = _activation(x, "x", layout)
    cax = _channel_axis(layout, x.ndim)
    C = x.shape[cax]
    cchunks = x.chunks[cax]
    scale_b = _per_channel(scale, "scale", C, cchunks, cax, x.ndim, default=1.0)
    bias_b = _per_channel(bias, "bias", C, cchunks, cax, x.ndim, default=0.0)
    eps = v.positive_scalar(eps, "eps")
    nt = _threads(num_threads)

    s = _stats_lazy(x, layout, nt, split_every)
    mean = s["mean"]
    var = da.map_blocks(_var_block, s, dtype=np.float64, token="cbp-var")
    inv_std = 1.0 / da.sqrt(var + eps)
    bs = _bcast_shape(C, cax, x.ndim)
    y = da.map_blocks(_affine_block, x, mean.reshape(bs), var.reshape(bs), scale_b, bias_b,
                      eps=eps, layout=layout, num_threads=nt, dtype=x.dtype,
                      meta=np.empty((0,) * x.ndim, x.dtype), token="cbp-bn-forward")
    return y, mean, inv_std


def batch_norm_backward(x, dy, mean, inv_std, scale=None, *, layout="NCHW",
                        num_threads=None, split_every=None):
    """Batch-norm backward of a dask array: lazy ``(dx, dscale, dbias)``.

    ``mean`` and ``inv_std`` (NumPy or dask, shape (C,)) are the batch's
    statistics, e.g. from :func:`batch_norm_forward`. dx is chunked like x
    (dy is rechunked to x's chunks if they differ); dscale and dbias are
    float64 dask arrays of shape (C,). Equal to :func:`cbp.batch_norm_backward`
    of the whole batch.
    """
    layout = v.check_layout(layout)
    x = _activation(x, "x", layout)
    dy = _activation(dy, "dy", layout, like=x)
    if dy.chunks != x.chunks:
        dy = dy.rechunk(x.chunks)
    cax = _channel_axis(layout, x.ndim)
    C = x.shape[cax]
    cchunks = x.chunks[cax]
    mean_b = _per_channel(mean, "mean", C, cchunks, cax, x.ndim, finite=True)
    inv_b = _per_channel(inv_std, "inv_std", C, cchunks, cax, x.ndim, positive=True)
    scale_b = _per_channel(scale, "scale", C, cchunks, cax, x.ndim, default=1.0)
    nt = _threads(num_threads)
    count = math.prod(x.shape) // C if C else 0
    assert isinstance(count, numbers.Integral)

    red = tuple(i for i in range(x.ndim) if i != cax)
    keep = _KeepDims(cax)
    part_chunks = ((2,),) + tuple(c if i == cax else (1,) * len(c)
                                  for i, c in enumerate(x.chunks))
    parts = da.map_blocks(_backprop_block, x, dy, mean_b, inv_b, layout=layout,
                          num_threads=nt, out_shape=keep, new_axis=0, chunks=part_chunks,
                          dtype=np.float64, meta=np.empty((0,) * (x.ndim + 1), np.float64),
                          token="cbp-backprop-stats")
    sums = parts.sum(axis=tuple(i + 1 for i in red), split_every=split_every)
    dscale, dbias = sums[0], sums[1]

    bs = _bcast_shape(C, cax, x.ndim)
    dx = da.map_blocks(_dx_block, x, dy, mean_b, inv_b, scale_b, dscale.reshape(bs),
                       dbias.reshape(bs), count=max(count, 1), layout=layout, num_threads=nt,
                       dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype),
                       token="cbp-bn-dx")
    return dx, dscale, dbias
