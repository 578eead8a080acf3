"""Running statistics: the checks of the options, and the in-place update they make."""
from __future__ import annotations

import numpy as np

from . import _validation as v
from ._stats import ChannelStats

_MOMENTUM_OF = ("batch", "running")


def running_update(running_mean, running_var, C, momentum, momentum_of, unbiased,
                   num_batches_tracked, count=None):
    """Check the running-statistics arguments up front; a function that applies them later.

    None when there is nothing to update, so a forward without running
    statistics pays for no checks of momentum it does not use. ``count``, when
    known before the batch is reduced (one process), is checked here too.
    """
    running_mean = v.running_buffer(running_mean, "running_mean", C)
    running_var = v.running_buffer(running_var, "running_var", C)
    if running_mean is None and running_var is None:
        return None
    if (running_mean is not None and running_var is not None
            and np.may_share_memory(running_mean, running_var)):
        raise ValueError("running_mean and running_var must be separate arrays, got "
                         "overlapping ones")
    factor = v.momentum_arg(momentum, num_batches_tracked)
    if not isinstance(momentum_of, str) or momentum_of not in _MOMENTUM_OF:
        raise ValueError(f"momentum_of must be 'batch' (PyTorch) or 'running' (ONNX, "
                         f"Caffe2, Keras), got {momentum_of!r}")
    if not isinstance(unbiased, (bool, np.bool_)):
        raise TypeError(f"unbiased must be a bool, got {v._describe(unbiased)}")
    if momentum is not None and momentum_of == "running":
        factor = 1.0 - factor  # the weight of the batch
    unbiased = bool(unbiased)
    if count is not None:
        _check_count(count, unbiased)

    def apply(stats: ChannelStats) -> None:
        if stats.count == 0:
            return  # an empty batch carries no statistics (PyTorch leaves them too)
        _check_count(stats.count, unbiased)
        # each buffer is read, combined in float64 and stored back in its own dtype
        if running_mean is not None:
            running_mean[...] = (1.0 - factor) * running_mean + factor * stats.mean
        if running_var is not None:
            var = stats.m2 / (stats.count - 1 if unbiased else stats.count)
            running_var[...] = (1.0 - factor) * running_var + factor * var
    return apply


def _check_count(count: int, unbiased: bool) -> None:
    if unbiased and count == 1:
        raise ValueError("unbiased=True needs at least 2 elements per channel to estimate "
                         f"the running variance, got {count}; pass unbiased=False for the "
                         "biased variance")
