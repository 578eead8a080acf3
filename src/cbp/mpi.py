"""Synchronized batch norm over MPI (mpi4py), an optional extra: ``pip install "cbp[mpi]"``.

Each rank holds a shard of the batch along N (sizes may differ, a shard may be
empty); statistics and gradients are those of the whole batch::

    from mpi4py import MPI
    import cbp.mpi

    y, mean, inv_std = cbp.mpi.batch_norm_forward(x_shard, scale, bias, comm=MPI.COMM_WORLD)
    dx, dscale, dbias = cbp.mpi.batch_norm_backward(x_shard, dy_shard, mean, inv_std, scale)

or build the engine-agnostic ``allreduce`` once and call the core functions::

    allreduce = cbp.mpi.make_allreduce(MPI.COMM_WORLD)
    stats = cbp.sync_channel_stats(x_shard, allreduce=allreduce)

Every rank must make the same calls in the same order (they are collective).
Run ranks with ``OMP_NUM_THREADS=1`` (or pass ``num_threads``) unless each
rank has cores of its own.
"""
from __future__ import annotations

try:
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cbp.mpi needs mpi4py and an MPI library: "
                      "pip install 'cbp[mpi]' (mpi4py and the MPICH wheel)") from exc

import numpy as np

from .distributed import sync_batch_norm_backward, sync_batch_norm_forward, sync_channel_stats

__all__ = ["make_allreduce", "channel_stats", "batch_norm_forward", "batch_norm_backward"]


def _comm(comm):
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py MPI.Comm (e.g. MPI.COMM_WORLD), "
                        f"got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm must not be MPI.COMM_NULL")
    return comm


def make_allreduce(comm=None):
    """The ``allreduce(buf)`` callable for a communicator (default ``MPI.COMM_WORLD``).

    It sums the float64 buffer in place across the ranks of ``comm`` with
    ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)``: one collective per call.
    """
    comm = _comm(comm)

    def allreduce(buf: np.ndarray) -> None:
        comm.Allreduce(MPI.IN_PLACE, [buf, MPI.DOUBLE], op=MPI.SUM)

    allreduce.comm = comm
    return allreduce


def channel_stats(x, *, comm=None, layout="NCHW", num_threads=None):
    """:func:`cbp.sync_channel_stats` over ``comm``: the whole batch's ChannelStats."""
    return sync_channel_stats(x, allreduce=make_allreduce(comm), layout=layout,
                              num_threads=num_threads)


def batch_norm_forward(x, scale=None, bias=None, *, comm=None, eps=1e-5, layout="NCHW",
                       out=None, num_threads=None, **options):
    """:func:`cbp.sync_batch_norm_forward` over ``comm``: ``(y, mean, inv_std)``.

    ``options`` are those of :func:`cbp.sync_batch_norm_forward` (running
    statistics, ``momentum``, ``return_stats``, ...).
    """
    return sync_batch_norm_forward(x, scale, bias, allreduce=make_allreduce(comm), eps=eps,
                                   layout=layout, out=out, num_threads=num_threads, **options)


def batch_norm_backward(x, dy, mean, inv_std, scale=None, *, comm=None, layout="NCHW",
                        out=None, num_threads=None, param_grads="global"):
    """:func:`cbp.sync_batch_norm_backward` over ``comm``: ``(dx, dscale, dbias)``.

    dscale and dbias are already the sums over every rank (``param_grads="local"``:
    this rank's own).
    """
    return sync_batch_norm_backward(x, dy, mean, inv_std, scale,
                                    allreduce=make_allreduce(comm), layout=layout, out=out,
                                    num_threads=num_threads, param_grads=param_grads)
