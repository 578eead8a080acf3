"""Argument checks shared by the public functions.

Every check raises TypeError for a wrong kind of thing (dtype, type) and
ValueError for a wrong value (shape, layout, range), with a message that names
the argument, what was expected and what was given.
"""
from __future__ import annotations

import math
import numbers
import os
import threading
import warnings

import numpy as np

from . import _kernels

LAYOUTS = ("NCHW", "NHWC")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Canonical:
    """An activation-shaped array viewed as the (N, C, S) block the kernels take."""

    __slots__ = ("array", "block", "channels", "count", "target")

    def __init__(self, array: np.ndarray, block: np.ndarray, channels: int, count: int,
                 target: np.ndarray | None = None):
        self.array = array  # the C-contiguous, aligned array, in the caller's shape
        self.block = block  # (N, C, S) view of it; S == 1 for channels-last
        self.channels = channels
        self.count = count  # elements per channel
        self.target = target  # a misaligned `out` that `array` is copied into at the end

    def result(self) -> np.ndarray:
        """The output array to return: `array`, or the caller's misaligned `out` filled from it."""
        if self.target is None:
            return self.array
        self.target[...] = self.array
        return self.target


def check_layout(layout) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The most threads a call runs: 4x the CPUs this process may use, at least 64,
# and no more than the OpenMP thread limit. More threads than that only
# oversubscribe the cores (results are the same for every team size), and a
# team of thousands of OS threads slows the whole process down afterwards.
MAX_THREADS = max(1, min(max(64, 4 * _usable_cpus()), _kernels.thread_limit()))
_kernels.set_call_thread_limit(MAX_THREADS)  # the small-call checks in C use it too
# plan_info describes a schedule for any team up to this size, on any machine.
MAX_PLAN_THREADS = 65536


_CALL_LIMIT = ("4x the CPUs this process may use, at least 64, within the OpenMP thread "
               "limit: cbp.show_config()['max_num_threads']")


def resolve_threads(num_threads, *, limit=None, why=_CALL_LIMIT) -> int:
    """None: the OpenMP default (OMP_NUM_THREADS, threadpoolctl), at most MAX_THREADS;
    n < 0: max + 1 + n; n > limit (default MAX_THREADS): ValueError saying `why`."""
    runs = limit is None  # a call that runs now (plan_info only describes a team)
    limit = MAX_THREADS if limit is None else limit
    if num_threads is None:
        n = max(1, min(_kernels.max_threads(), limit))
        return startable_threads(n) if runs else n
    if type(num_threads) is not int and (  # the common case skips the slow ABC check
            isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral)):
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}")
    n = int(num_threads)
    if n == 0:
        raise ValueError("num_threads must not be 0 (use None for the OpenMP default)")
    if n < 0:
        n = max(1, _kernels.max_threads() + 1 + n)
    if n > limit:
        raise ValueError(f"num_threads must be at most {limit} ({why}), got {n}")
    return startable_threads(n) if runs else n


# The largest team each Python thread has run: libgomp keeps those threads,
# so only a larger team needs new ones (see cbp_probe_team, csrc/runtime.c).
_teams = threading.local()


def startable_threads(n: int) -> int:
    """n, or fewer with a RuntimeWarning when the process cannot start n threads.

    libgomp would end the process instead (exit code 1); results are the
    same for every team size, so fewer threads only cost time."""
    have = getattr(_teams, "largest", 1)
    if n <= have:
        return n
    k = _kernels.probe_team(n, have)
    if k < n:
        warnings.warn(f"cbp: could start only {k} of the {n} threads asked for "
                      f"(num_threads); this call runs with {k} (the same results, more "
                      f"slowly)", RuntimeWarning, stacklevel=4)
    _teams.largest = max(have, k)
    return k


_MASKED = np.ma.MaskedArray


def refuse_masked(arr, name: str) -> None:
    """cbp has no notion of masked elements; np.asarray would silently drop the mask."""
    if isinstance(arr, _MASKED):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray; cbp would ignore its mask. Pass "
                        f"{name}.filled(value) or an array of the unmasked elements instead")


def check_activation_kind(arr, name: str, like=None) -> None:
    """dtype and shape rules of an x-shaped array (NumPy or dask); `like` is x."""
    if arr.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if like is not None:
        if arr.dtype != like.dtype:
            raise TypeError(f"{name} must have the same dtype as x ({like.dtype}), "
                            f"got {arr.dtype}")
        if arr.shape != like.shape:
            raise ValueError(f"{name} must have the shape of x {like.shape}, got {arr.shape}")
    elif not 2 <= arr.ndim <= 5:
        raise ValueError(f"{name} must have 2 to 5 dimensions, got {arr.ndim} "
                         f"(shape {arr.shape})")


def activation(x, name: str, layout: str, like: Canonical | None = None) -> Canonical:
    """Check an x-shaped input and view it as an (N, C, S) block.

    Arrays that are not C-contiguous are copied (np.ascontiguousarray); the
    kernels never read through strides.
    """
    if type(x) is not np.ndarray:
        refuse_masked(x, name)
    arr = np.asarray(x)
    check_activation_kind(arr, name, None if like is None else like.array)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.aligned:
        # the kernels load whole elements (a view at an odd byte offset is valid NumPy)
        arr = arr.copy()
    if layout == "NCHW":
        n, c = arr.shape[0], arr.shape[1]
        s = math.prod(arr.shape[2:])
    else:
        c = arr.shape[-1]
        n, s = math.prod(arr.shape[:-1]), 1
    return Canonical(arr, arr.reshape(n, c, s), c, n * s)


def gradient_inputs(x, dy, mean, inv_std, layout: str):
    """Checked (x, dy, mean, inv_std) of a gradient call: x and dy as blocks of
    the same shape and dtype, mean finite and inv_std > 0 as float64 vectors."""
    xc = activation(x, "x", layout)
    dyc = activation(dy, "dy", layout, like=xc)
    C = xc.channels
    return (xc, dyc, channel_vector(mean, "mean", C, finite=True),
            channel_vector(inv_std, "inv_std", C, positive=True))


def check_channel_kind(arr, name: str, channels: int) -> None:
    """dtype and shape rules of a per-channel vector (NumPy or dask)."""
    if arr.dtype.kind not in "fiu":  # real numbers; 8x cheaper than np.issubdtype
        raise TypeError(f"{name} must be a real array-like of length {channels} (floats or "
                        f"integers), got an array of dtype {arr.dtype}")
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel), "
                         f"got {arr.shape}")


def _describe(value) -> str:
    """What a caller passed, for a message: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}" if value is not None else "None"


def _as_channel_array(value, name: str, channels: int) -> np.ndarray:
    """np.asarray of a non-ndarray per-channel argument, with a message naming what it was."""
    if value is None:
        raise TypeError(f"{name} must be a real array-like of length {channels}, got None")
    refuse_masked(value, name)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot read
        raise TypeError(f"{name} must be a real array-like of length {channels}, got "
                        f"{_describe(value)} ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array-like of length {channels} (floats or "
                        f"integers), got {_describe(value)}")
    return arr


def channel_vector(v, name: str, channels: int, *, finite=False, positive=False,
                   nonnegative=False, default=None) -> np.ndarray:
    """A per-channel vector: 1-D, length C, real (floats or integers); returned as float64.

    With ``default`` given, None stands for the vector filled with it (``scale=None``
    is the identity scale, ``bias=None`` no bias).
    """
    if type(v) is np.ndarray:
        arr = v
    elif v is None and default is not None:
        return np.full(channels, float(default))
    else:
        arr = _as_channel_array(v, name, channels)
    check_channel_kind(arr, name, channels)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not arr.flags.aligned:
        arr = arr.copy()
    if finite or positive or nonnegative:
        # one compiled pass; the precise messages only when something is wrong
        flags = _kernels.vector_flags(arr)
        if flags & 1:
            raise ValueError(f"{name} must be finite, got "
                             f"{_first_bad(arr, ~np.isfinite(arr))}")
        if positive and flags & 2:
            raise ValueError(f"{name} must be > 0, got {_first_bad(arr, ~(arr > 0))}")
        if nonnegative and flags & 4:
            raise ValueError(f"{name} must be >= 0, got {_first_bad(arr, ~(arr >= 0))}")
    return arr


def _first_bad(arr, mask) -> str:
    i = int(np.flatnonzero(mask)[0])
    return f"{arr[i]!r} at channel {i}"


def positive_scalar(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def count_arg(count, local: int) -> int:
    """The (global) elements per channel of a dX call; 0 only when x itself is empty."""
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        raise TypeError(f"count must be an integer (elements per channel), "
                        f"got {type(count).__name__} {count!r}")
    if count < (1 if local else 0):
        raise ValueError(f"count must be >= 1 (>= 0 for an empty x), got {count}")
    return int(count)


def momentum_arg(momentum, num_batches_tracked) -> float:
    """The weight of the batch in a running-statistics update (see update_running_stats)."""
    if momentum is None:
        if (isinstance(num_batches_tracked, bool)
                or not isinstance(num_batches_tracked, numbers.Integral)):
            raise TypeError("num_batches_tracked must be an integer (the batches already "
                            "averaged into the running statistics) when momentum is None "
                            f"(the cumulative average), got {_describe(num_batches_tracked)}")
        if num_batches_tracked < 0:
            raise ValueError(f"num_batches_tracked must be >= 0, got {num_batches_tracked}")
        return 1.0 / (int(num_batches_tracked) + 1)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1] or None, got "
                        f"{_describe(momentum)}")
    m = float(momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return m


def running_buffer(buf, name: str, channels: int):
    """A running statistic updated in place: a writeable floating ndarray of shape (C,)."""
    if buf is None:
        return None
    if not isinstance(buf, np.ndarray) or isinstance(buf, (np.matrix, _MASKED)):
        raise TypeError(f"{name} must be a writeable numpy.ndarray of shape ({channels},) "
                        f"(it is updated in place), got {_describe(buf)}")
    if buf.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype (it is updated in place), "
                        f"got {buf.dtype}")
    if buf.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel), "
                         f"got {buf.shape}")
    if not buf.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is updated in place), got a "
                         "read-only array")
    return buf


def output(out, x: Canonical, reads: tuple) -> Canonical:
    """Check or allocate an x-shaped output; it may be exactly one of `reads`."""
    ref = x.array
    if out is None:
        arr = np.empty_like(ref, order="C")
        return Canonical(arr, arr.reshape(x.block.shape), x.channels, x.count)
    if type(out) is not np.ndarray and (not isinstance(out, np.ndarray)
                                         or isinstance(out, (np.matrix, _MASKED))):
        # a matrix cannot take x's shape, a masked array's mask would be left stale
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__module__}."
                        f"{type(out).__name__}")
    if out.dtype != ref.dtype:
        raise TypeError(f"out must have dtype {ref.dtype} (the dtype of x), got {out.dtype}")
    if out.shape != ref.shape:
        raise ValueError(f"out must have the shape of x {ref.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous, got a strided array")
    for arr in reads:
        if np.may_share_memory(out, arr) and not (
                out.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
                and out.strides == arr.strides):
            raise ValueError("out partially overlaps an input; it may only be exactly "
                             "x or dy (in place) or a separate array")
    if not out.flags.aligned:
        # computed into aligned memory, then copied into out (Canonical.result)
        arr = np.empty_like(ref, order="C")
        return Canonical(arr, arr.reshape(x.block.shape), x.channels, x.count, target=out)
    return Canonical(out, out.reshape(x.block.shape), x.channels, x.count)
