"""ChannelStats: per-channel count, mean and M2, with an exact merge."""
from __future__ import annotations

import numbers

import numpy as np

from ._validation import _first_bad, positive_scalar


class _EitherMethod:
    """`ChannelStats.merge(a, b)` and `a.merge(b)` both merge every part named."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, cls):
        if obj is None:
            return lambda *parts: self.func(cls, *parts)
        return lambda *parts: self.func(cls, obj, *parts)


def _real_vector(value, name: str) -> np.ndarray:
    """An owned float64 copy of a real array-like, or an error naming the argument."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray; ChannelStats would ignore its mask")
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array-like (one value per channel), got "
                        f"{type(value).__name__} of dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64, copy=True)


class ChannelStats:
    """Per-channel statistics of a batch.

    Attributes
    ----------
    count : int
        Elements per channel (N times the spatial size).
    mean : ndarray of float64, shape (C,)
    m2 : ndarray of float64, shape (C,)
        Sum of squared deviations from the mean.
    var : ndarray of float64, shape (C,)
        Biased variance ``m2 / count``, as batch norm uses; computed once.

    The three vectors are read-only: statistics do not change once computed.

    An empty batch has count 0, mean 0 and m2 0 (var 0): the neutral element of
    :meth:`merge`.
    """

    __slots__ = ("count", "mean", "m2", "_var")

    def __init__(self, count, mean, m2):
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(f"count must be an integer, got {type(count).__name__}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        mean = _real_vector(mean, "mean")
        m2 = _real_vector(m2, "m2")
        if mean.ndim != 1:
            raise ValueError(f"mean must be 1-D (one value per channel), got shape {mean.shape}")
        if m2.shape != mean.shape:
            raise ValueError(f"m2 must have the shape of mean {mean.shape}, got {m2.shape}")
        if not np.isfinite(mean).all():
            raise ValueError(f"mean must be finite, got {_first_bad(mean, ~np.isfinite(mean))}")
        if not (np.isfinite(m2) & (m2 >= 0)).all():
            raise ValueError(f"m2 must be finite and >= 0, got "
                             f"{_first_bad(m2, ~(np.isfinite(m2) & (m2 >= 0)))}")
        if count == 0 and (mean.any() or m2.any()):
            raise ValueError("empty statistics (count 0) must have mean 0 and m2 0")
        self._store(count, mean, m2)

    def _store(self, count, mean, m2, var=None):
        # mean, m2 (and var) are owned float64 vectors; frozen so results stay
        # immutable (setflags: 0.1 us cheaper than the flags attribute, a
        # tenth of a tiny call)
        mean.setflags(write=False)
        m2.setflags(write=False)
        if var is not None:
            var.setflags(write=False)
        self.count = int(count)
        self.mean = mean
        self.m2 = m2
        self._var = var

    @classmethod
    def _trusted(cls, count: int, mean: np.ndarray, m2: np.ndarray,
                 var: np.ndarray | None = None) -> "ChannelStats":
        """From a kernel's fresh float64 vectors (var = m2 / count, or None
        to compute it when asked): no checks, no copies."""
        self = object.__new__(cls)
        self._store(count, mean, m2, var)
        return self

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def var(self) -> np.ndarray:
        v = self._var
        if v is None:
            # a race computes the same vector twice; either copy is kept
            v = np.zeros_like(self.m2) if self.count == 0 else self.m2 / self.count
            v.setflags(write=False)
            self._var = v
        return v

    def inv_std(self, eps: float = 1e-5) -> np.ndarray:
        """``1 / sqrt(var + eps)`` per channel, float64."""
        eps = positive_scalar(eps, "eps")
        return 1.0 / np.sqrt(self.var + eps)

    @_EitherMethod
    def merge(cls, *parts: "ChannelStats") -> "ChannelStats":
        """Combine statistics of disjoint parts of a batch exactly (Chan et al.).

        Called as ``ChannelStats.merge(a, b, ...)`` or ``a.merge(b, ...)``. Parts
        are combined left to right; empty parts are neutral.
        """
        if not parts:
            raise ValueError("merge needs at least one ChannelStats")
        for p in parts:
            if not isinstance(p, ChannelStats):
                raise TypeError(f"merge takes ChannelStats, got {type(p).__name__}")
            if p.channels != parts[0].channels:
                raise ValueError(f"cannot merge statistics of {parts[0].channels} and "
                                 f"{p.channels} channels")
        count = 0
        mean = np.zeros(parts[0].channels)
        m2 = np.zeros(parts[0].channels)
        for p in parts:
            if p.count == 0:
                continue
            total = count + p.count
            delta = p.mean - mean
            if count == 0:
                # delta * delta * 0 would be NaN where delta * delta overflows
                mean = mean + delta
                m2 = m2 + p.m2
            else:
                mean = mean + delta * (p.count / total)
                m2 = m2 + p.m2 + delta * delta * (count * (p.count / total))
            count = total
        return cls(count, mean, m2)

    def __repr__(self) -> str:
        return (f"ChannelStats(count={self.count}, mean={self.mean!r}, var={self.var!r})")

    def __eq__(self, other):
        if not isinstance(other, ChannelStats):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.m2, other.m2))

    __hash__ = None
