"""cbp: batch-normalization statistics and gradients for NumPy.

Caffe2's channel-backprop operator family (ChannelBackpropStats, the dX of
batch norm, forward statistics) as fused, multi-threaded CPU kernels for
float32 and float64 arrays in NCHW and NHWC layouts.
"""
from ._api import (
    batch_norm_backward,
    batch_norm_dx,
    batch_norm_forward,
    batch_norm_inference,
    channel_backprop_stats,
    channel_stats,
    update_running_stats,
)
from ._config import get_include, plan_info, show_config
from ._stats import ChannelStats
from ._version import __version__
from .distributed import sync_batch_norm_backward, sync_batch_norm_forward, sync_channel_stats

__all__ = [
    "ChannelStats",
    "__version__",
    "batch_norm_backward",
    "batch_norm_dx",
    "batch_norm_forward",
    "batch_norm_inference",
    "channel_backprop_stats",
    "channel_stats",
    "get_include",
    "plan_info",
    "show_config",
    "sync_batch_norm_backward",
    "sync_batch_norm_forward",
    "sync_channel_stats",
    "update_running_stats",
]
