

import numpy as np
from typing import Literal, overload

from numpy.typing import ArrayLike, NDArray

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

_Layout = str  # "NCHW" or "NHWC"
_MomentumOf = str  # "batch" (PyTorch) or "running" (ONNX, Caffe2, Keras)
_F64 = NDArray[np.float64]
_Floating = NDArray[np.floating]

def channel_stats(
    x: ArrayLike, *, layout: _Layout = "NCHW", num_threads: int | None = None
) -> ChannelStats: ...
def channel_backprop_stats(
    x: ArrayLike,
    dy: ArrayLike,
    mean: ArrayLike,
    inv_std: ArrayLike,
    *,
    layout: _Layout = "NCHW",
    num_threads: int | None = None,
) -> tuple[_F64, _F64]: ...
def batch_norm_dx(
    x: ArrayLike,
    dy: ArrayLike,
    mean: ArrayLike,
    inv_std: ArrayLike,
    scale: ArrayLike | None,
    dscale: ArrayLike,
    dbias: ArrayLike,
    count: int,
    *,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> _Floating: ...
def batch_norm_backward(
    x: ArrayLike,
    dy: ArrayLike,
    mean: ArrayLike,
    inv_std: ArrayLike,
    scale: ArrayLike | None,
    *,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> tuple[_Floating, _F64, _F64]: ...
@overload
def batch_norm_forward(
    x: ArrayLike,
    scale: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    *,
    eps: float = 1e-5,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
    running_mean: _Floating | None = None,
    running_var: _Floating | None = None,
    momentum: float | None = 0.1,
    momentum_of: _MomentumOf = "batch",
    unbiased: bool = True,
    num_batches_tracked: int | None = None,
    return_stats: Literal[False] = False,
) -> tuple[_Floating, _F64, _F64]: ...
@overload
def batch_norm_forward(
    x: ArrayLike,
    scale: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    *,
    eps: float = 1e-5,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
    running_mean: _Floating | None = None,
    running_var: _Floating | None = None,
    momentum: float | None = 0.1,
    momentum_of: _MomentumOf = "batch",
    unbiased: bool = True,
    num_batches_tracked: int | None = None,
    return_stats: Literal[True],
) -> tuple[_Floating, _F64, _F64, ChannelStats]: ...
def update_running_stats(
    running_mean: _Floating | None,
    running_var: _Floating | None,
    stats: ChannelStats,
    *,
    momentum: float | None = 0.1,
    momentum_of: _MomentumOf = "batch",
    unbiased: bool = True,
    num_batches_tracked: int | None = None,
) -> None: ...
def batch_norm_inference(
    x: ArrayLike,
    scale: ArrayLike | None,
    bias: ArrayLike | None,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    eps: float = 1e-5,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> _Floating: ...
