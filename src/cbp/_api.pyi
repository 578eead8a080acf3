

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._stats import ChannelStats

__all__ = [
    "channel_stats",
    "channel_backprop_stats",
    "batch_norm_dx",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_inference",
]

_Layout = str  # "NCHW" or "NHWC"
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
    scale: ArrayLike,
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
    scale: ArrayLike,
    *,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> tuple[_Floating, _F64, _F64]: ...
def batch_norm_forward(
    x: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    eps: float = 1e-5,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> tuple[_Floating, _F64, _F64]: ...
def batch_norm_inference(
    x: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    eps: float = 1e-5,
    layout: _Layout = "NCHW",
    out: _Floating | None = None,
    num_threads: int | None = None,
) -> _Floating: ...
