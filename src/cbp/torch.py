"""cbp for PyTorch: batch norm on cbp's kernels for CPU tensors, and a CPU SyncBatchNorm.

``import cbp.torch`` imports PyTorch (``import cbp`` never does):

* :func:`batch_norm` has the signature and semantics of
  ``torch.nn.functional.batch_norm``; autograd runs cbp's fused backward.
* :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` are
  PyTorch's modules (subclasses of them: same constructor, parameters, buffers
  and ``state_dict`` keys) whose forward calls :func:`batch_norm`.
* :class:`SyncBatchNorm` synchronizes over ``torch.distributed`` on CPU
  tensors (gloo), which ``torch.nn.SyncBatchNorm`` refuses.
* :func:`replace_batch_norm` swaps a model's batch-norm modules for these.

cbp's kernels run on CPU tensors of dtype float32 or float64 whose memory
cbp can read as it is: contiguous (read as NCHW) or channels_last /
channels_last_3d (read as NHWC), through ``Tensor.numpy()`` views, so nothing
is copied. Everything else (CUDA and other devices, float16, bfloat16, other
strides, tensor subclasses and ``__torch_function__`` modes, tracing and
``torch.compile``, forward-mode AD, ``torch.func`` transforms, parameters of another dtype than the
input, empty inputs, ``eps <= 0`` or a momentum outside [0, 1]) goes to
PyTorch's own implementation, so the result is always PyTorch's behaviour.

Threads: every call runs ``torch.get_num_threads()`` threads (at most
``cbp.show_config()['max_num_threads']``), so ``torch.set_num_threads`` sets
the threads of cbp's batch norm as of the rest of the model; cbp's own default
(``OMP_NUM_THREADS``) does not apply here. cbp and PyTorch each have an OpenMP
runtime of their own; they run one after the other, never at once.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import has_torch_function_variadic

from . import _api, _kernels
from . import _validation as _v
from . import distributed as _dist

__all__ = [
    "batch_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "replace_batch_norm",
]

_DTYPES = (torch.float32, torch.float64)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_increment_version = getattr(torch.autograd.graph, "increment_version", None)


def _num_threads() -> int:
    return max(1, min(torch.get_num_threads(), _v.MAX_THREADS))


def _layout_of(t: torch.Tensor):
    """'NCHW' or 'NHWC' when cbp can read t's memory in place, else None."""
    if t.is_contiguous():
        return "NCHW"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "NHWC"
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return "NHWC"
    return None


def _memory_format(t: torch.Tensor, layout: str):
    if layout == "NCHW":
        return torch.contiguous_format
    return torch.channels_last if t.dim() == 4 else torch.channels_last_3d


def _view(t: torch.Tensor, layout: str) -> np.ndarray:
    """The NumPy array cbp reads or writes: a view of t's memory, C-contiguous."""
    a = t.detach().numpy()
    if layout == "NHWC":
        a = np.moveaxis(a, 1, -1)  # (N, C, ...) with channels-last strides -> (N, ..., C)
    return a


def _vec(t):
    return None if t is None else t.detach().numpy()


def _forward_ad_active() -> bool:
    # dual tensors need a forward derivative, which cbp's autograd Function has not
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _plain_cpu_layout(input, tensors):
    """The layout cbp reads input in, or None when the call must go to PyTorch."""
    if type(input) not in _PLAIN or input.device.type != "cpu" or input.dtype not in _DTYPES:
        return None
    if input.layout != torch.strided or not 2 <= input.dim() <= 5 or input.numel() == 0:
        return None
    for t in tensors:
        if t is None:
            continue
        if (type(t) not in _PLAIN or t.device.type != "cpu" or t.dtype != input.dtype
                or t.layout != torch.strided or t.dim() != 1 or t.numel() != input.shape[1]):
            return None
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _forward_ad_active():
        return None
    if _functorch_active():  # torch.func.vmap / grad wrap tensors that have no NumPy view
        return None
    if torch.compiler.is_compiling():
        return None
    return _layout_of(input)


def _verify_batch_size(size) -> None:
    # PyTorch's own check in training mode (the same message and exception)
    n = size[0]
    for s in size[2:]:
        n *= s
    if n == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {size}")


def _bump(*tensors) -> None:
    """Tell autograd that cbp wrote these tensors in place (through NumPy views)."""
    if _increment_version is not None:
        for t in tensors:
            if t is not None:
                _increment_version(t)


def _valid_momentum(momentum) -> bool:
    return (isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
            and 0.0 <= momentum <= 1.0)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """``torch.nn.functional.batch_norm`` on cbp's kernels.

    Same signature, semantics and results (to rounding): in training mode
    the batch's mean and biased variance normalize ``input``, and the running
    buffers, when given, are updated in place with ``momentum`` and the
    unbiased variance; in eval mode the running buffers normalize it. The
    backward is cbp's fused one; double backward is supported (it recomputes
    the layer with PyTorch's differentiable operations). Calls cbp cannot run
    in place go to ``torch.nn.functional.batch_norm`` (module docstring).
    """
    training = bool(training)
    layout = None
    if not has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        layout = _plain_cpu_layout(input, (running_mean, running_var, weight, bias))
    if layout is not None:
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            layout = None  # PyTorch allows eps == 0 in eval mode and raises otherwise
        elif training:
            if (running_mean is not None or running_var is not None) and not _valid_momentum(
                    momentum):
                layout = None
        elif running_mean is None or running_var is None:
            layout = None  # PyTorch's error (or its rule) for eval without statistics
    if layout is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training,
                            momentum, eps)
    if training:
        _verify_batch_size(input.size())
    else:
        rm = running_mean.detach().numpy()
        rv = running_var.detach().numpy()
        if not (np.isfinite(rm).all() and (rv >= 0).all()):
            # cbp refuses such statistics; PyTorch computes with them (NaN)
            return F.batch_norm(input, running_mean, running_var, weight, bias, training,
                                momentum, eps)
    nt = _num_threads()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    if not needs_grad:
        return _forward(input, weight, bias, running_mean, running_var, training, momentum,
                        eps, layout, nt)[0]
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training,
                                    momentum, eps, layout, nt)


def _forward(x, weight, bias, running_mean, running_var, training, momentum, eps, layout, nt):
    """y (a new tensor in x's memory format); mean, inv_std and (eval mode) the running
    variance used, float64 NumPy."""
    y = torch.empty_like(x)  # preserve_format: x's strides, so y reads as the same layout
    xa, ya = _view(x, layout), _view(y, layout)
    w, b = _vec(weight), _vec(bias)
    if training:
        _, mean, inv_std = _api.batch_norm_forward(
            xa, w, b, eps=eps, layout=layout, out=ya, num_threads=nt,
            running_mean=_vec(running_mean), running_var=_vec(running_var),
            momentum=momentum)
        _bump(running_mean, running_var)
        var = None
    else:
        mean = running_mean.detach().numpy().astype(np.float64)
        var = running_var.detach().numpy().astype(np.float64)
        _api.batch_norm_inference(xa, w, b, mean, var, eps=eps, layout=layout, out=ya,
                                  num_threads=nt)
        inv_std = 1.0 / np.sqrt(var + eps)
    return y, mean, inv_std, var


def _grad_output(dy: torch.Tensor, x: torch.Tensor, layout: str) -> torch.Tensor:
    """dy in x's dtype and memory format (a copy only if autograd handed it otherwise,
    e.g. the stride-0 gradient of a sum)."""
    if dy.dtype != x.dtype:
        dy = dy.to(x.dtype)
    if _layout_of(dy) != layout or dy.stride() != x.stride():
        dy = dy.contiguous(memory_format=_memory_format(x, layout))
    return dy


def _param_grad(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    # cbp's per-channel sums are float64; the gradient has the parameter's dtype
    return torch.from_numpy(values).to(like.dtype)


def _scale_channels(dy: np.ndarray, a: np.ndarray, out: np.ndarray, layout: str,
                    nt: int) -> None:
    """out = dy * a per channel (the eval-mode input gradient), in one sweep."""
    dyc = _v.activation(dy, "dy", layout)
    res = _v.output(out, dyc, (dyc.array,))
    C = dyc.channels
    _kernels.affine(dyc.block, np.zeros(C), np.ascontiguousarray(a, dtype=np.float64),
                    np.zeros(C), res.block, nt)
    res.result()


class _BatchNormFunction(torch.autograd.Function):
    """cbp's forward and fused backward; the double backward through PyTorch's ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                layout, nt):
        y, mean, inv_std, var = _forward(x, weight, bias, running_mean, running_var,
                                         training, momentum, eps, layout, nt)
        ctx.save_for_backward(x, weight, bias)
        ctx.mean, ctx.inv_std, ctx.var = mean, inv_std, var
        ctx.training, ctx.eps, ctx.layout, ctx.nt = training, eps, layout, nt
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        mean, inv_std = ctx.mean, ctx.inv_std
        if torch.is_grad_enabled() or not (np.isfinite(mean).all()
                                           and (inv_std > 0).all()):
            # create_graph=True (double backward), or non-finite statistics that cbp's
            # backward refuses: PyTorch's differentiable formula from the saved inputs
            grads = _composite_backward(ctx, x, weight, bias, dy)
        else:
            grads = _cbp_backward(ctx, x, weight, dy)
        return (*grads, None, None, None, None, None, None, None)


def _cbp_backward(ctx, x, weight, dy):
    layout, nt = ctx.layout, ctx.nt
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dy = _grad_output(dy, x, layout)
    xa, dya = _view(x, layout), _view(dy, layout)
    w = _vec(weight)
    mean, inv_std = ctx.mean, ctx.inv_std
    dx = dscale = dbias = None
    if ctx.training and need_x:
        dx = torch.empty_like(x)
        _, dscale, dbias = _api.batch_norm_backward(xa, dya, mean, inv_std, w, layout=layout,
                                                    out=_view(dx, layout), num_threads=nt)
    else:
        if need_w or need_b:
            dscale, dbias = _api.channel_backprop_stats(xa, dya, mean, inv_std,
                                                        layout=layout, num_threads=nt)
        if need_x:  # eval mode: the statistics are constants
            dx = torch.empty_like(x)
            a = inv_std if w is None else inv_std * w
            _scale_channels(dya, a, _view(dx, layout), layout, nt)
    return (dx, _param_grad(dscale, weight) if need_w else None,
            _param_grad(dbias, x) if need_b else None)


def _composite_backward(ctx, x, weight, bias, dy):
    """The gradients from PyTorch's batch norm of the saved inputs, differentiable."""
    need = ctx.needs_input_grad[:3]
    inputs = [t for t, n in zip((x, weight, bias), need) if n]
    with torch.enable_grad():
        if ctx.training:
            y = F.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps)
        else:
            # the running statistics as they were at the forward
            mean = torch.from_numpy(ctx.mean).to(x.dtype)
            var = torch.from_numpy(ctx.var).to(x.dtype)
            y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, ctx.eps)
        got = torch.autograd.grad(y, inputs, dy, create_graph=torch.is_grad_enabled(),
                                  allow_unused=True)
    it = iter(got)
    return tuple(next(it) if n else None for n in need)


# ---------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------

def _module_arguments(m: _BatchNorm):
    """(factor, bn_training, running_mean, running_var) as _BatchNorm.forward derives
    them (torch 2.x), num_batches_tracked incremented in training."""
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:  # cumulative moving average
            factor = 1.0 / float(m.num_batches_tracked)
    bn_training = m.training or (m.running_mean is None and m.running_var is None)
    track = not m.training or m.track_running_stats
    return (factor, bn_training, m.running_mean if track else None,
            m.running_var if track else None)


class _CbpBatchNorm:
    """The forward of PyTorch's _BatchNorm with cbp's batch_norm in place of F.batch_norm."""

    def forward(self, input):
        self._check_input_dim(input)
        factor, bn_training, running_mean, running_var = _module_arguments(self)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                          bn_training, factor, self.eps)


class BatchNorm1d(_CbpBatchNorm, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on cbp's kernels (a subclass: same arguments and state)."""


class BatchNorm2d(_CbpBatchNorm, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on cbp's kernels (a subclass: same arguments and state)."""


class BatchNorm3d(_CbpBatchNorm, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on cbp's kernels (a subclass: same arguments and state)."""


# ---------------------------------------------------------------------------
# SyncBatchNorm
# ---------------------------------------------------------------------------

def _allreduce_for(group):
    def allreduce(buf: np.ndarray) -> None:
        # a float64 tensor over the same memory: summed in place across the group
        dist.all_reduce(torch.from_numpy(buf), op=dist.ReduceOp.SUM, group=group)
    return allreduce


class _SyncBatchNormFunction(torch.autograd.Function):
    """cbp's sync_* functions over the group's all-reduce; gradients as PyTorch's
    SyncBatchNorm gives them: dx from the group's sums, the weight and bias
    gradients this rank's own (DDP averages them like every other parameter's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group,
                layout, nt):
        allreduce = _allreduce_for(group)
        y = torch.empty_like(x)
        _, mean, inv_std = _dist.sync_batch_norm_forward(
            _view(x, layout), _vec(weight), _vec(bias), allreduce=allreduce, eps=eps,
            layout=layout, out=_view(y, layout), num_threads=nt,
            running_mean=_vec(running_mean), running_var=_vec(running_var),
            momentum=momentum)
        _bump(running_mean, running_var)
        ctx.save_for_backward(x, weight)
        ctx.mean, ctx.inv_std = mean, inv_std
        ctx.layout, ctx.nt, ctx.group = layout, nt, group
        return y

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():
            # create_graph=True: the collectives have no derivative here, and a gradient
            # without its graph would be silently wrong in a second derivative
            raise RuntimeError("cbp.torch.SyncBatchNorm has no double backward (neither has "
                               "torch.nn.SyncBatchNorm); call backward without "
                               "create_graph=True, or use cbp.torch.BatchNorm*d (which has "
                               "one) in a single process")
        x, weight = ctx.saved_tensors
        layout, nt = ctx.layout, ctx.nt
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dy = _grad_output(dy, x, layout)
        xa, dya = _view(x, layout), _view(dy, layout)
        dx = None
        if need_x:
            # every rank needs x's gradient alike, so every rank joins this collective
            dx = torch.empty_like(x)
            _, dscale, dbias = _dist.sync_batch_norm_backward(
                xa, dya, ctx.mean, ctx.inv_std, _vec(weight),
                allreduce=_allreduce_for(ctx.group), layout=layout, out=_view(dx, layout),
                num_threads=nt, param_grads="local")
        elif need_w or need_b:
            dscale, dbias = _api.channel_backprop_stats(xa, dya, ctx.mean, ctx.inv_std,
                                                        layout=layout, num_threads=nt)
        return (dx, _param_grad(dscale, weight) if need_w else None,
                _param_grad(dbias, x) if need_b else None,
                None, None, None, None, None, None, None)


class SyncBatchNorm(_BatchNorm):
    """``torch.nn.SyncBatchNorm`` that runs on CPU tensors (gloo), on cbp's kernels.

    The same constructor (``process_group=``), parameters, buffers and
    ``state_dict`` keys as PyTorch's. It subclasses ``_BatchNorm``, not
    ``torch.nn.SyncBatchNorm``, because DistributedDataParallel refuses
    instances of the latter in CPU models. In training mode within an initialized
    process group of more than one rank, the statistics are those of the whole
    group's batch (shards may differ in size, or be empty), two all-reduces of
    C + 1 and C float64 values in the forward and one of 2C + 1 in the
    backward; the running statistics use the group's count for the unbiased
    variance. Otherwise (eval, one process) it is :class:`BatchNorm2d`'s
    computation for any input dimension. Non-CPU inputs go to PyTorch's
    SyncBatchNorm; CPU tensors in other memory formats are copied to
    contiguous ones first; CPU dtypes other than float32/float64 are refused
    when synchronizing (PyTorch has no CPU path to hand them to).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    _check_input_dim = torch.nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = torch.nn.SyncBatchNorm._check_non_zero_input_channels

    def forward(self, input):
        if input.device.type != "cpu":
            # GPUs and other devices: PyTorch's SyncBatchNorm, which runs there
            return torch.nn.SyncBatchNorm.forward(self, input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor, bn_training, running_mean, running_var = _module_arguments(self)
        need_sync = (bn_training and self.training and dist.is_available()
                     and dist.is_initialized())
        if need_sync:
            group = self.process_group if self.process_group else dist.group.WORLD
            need_sync = dist.get_world_size(group) > 1
        if not need_sync:
            return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                              bn_training, factor, self.eps)
        if input.dtype not in _DTYPES:
            raise TypeError(f"cbp.torch.SyncBatchNorm synchronizes float32 and float64 CPU "
                            f"tensors, got input of dtype {input.dtype}")
        for name, t in (("weight", self.weight), ("bias", self.bias),
                        ("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and (t.device.type != "cpu" or t.dtype != input.dtype):
                raise TypeError(f"cbp.torch.SyncBatchNorm: {name} must be a CPU tensor of "
                                f"the input's dtype {input.dtype}, got {t.dtype} on "
                                f"{t.device}")
        layout = _layout_of(input)
        if layout is None:
            input = input.contiguous()
            layout = "NCHW"
        if running_mean is not None or running_var is not None:
            _v.momentum_arg(factor, None)  # a ValueError naming momentum outside [0, 1]
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                            running_var, self.eps, factor, group, layout,
                                            _num_threads())

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every batch-norm module of ``module`` (PyTorch's or cbp's) as a
        :class:`cbp.torch.SyncBatchNorm`, its parameters and buffers kept (the
        same tensors); returns the module, or the new layer if ``module`` is one."""
        return replace_batch_norm(module, sync=True, process_group=process_group)


# ---------------------------------------------------------------------------
# replace_batch_norm
# ---------------------------------------------------------------------------

_PLAIN_CLASSES = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
    torch.nn.SyncBatchNorm: SyncBatchNorm,
}
_CBP_CLASSES = (BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm)


def _target_class(m, sync: bool):
    kind = type(m)
    if sync:
        if kind in _PLAIN_CLASSES or kind in (BatchNorm1d, BatchNorm2d, BatchNorm3d):
            return SyncBatchNorm
        return None
    return _PLAIN_CLASSES.get(kind)


def _rebuilt(m, cls, process_group):
    kw = {"bias": m.bias is not None} if m.affine else {}
    if cls is SyncBatchNorm:
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                  process_group if process_group is not None
                  else getattr(m, "process_group", None), **kw)
    else:
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, **kw)
    # the very tensors of the old module: an optimizer built on it keeps working
    new.weight = m.weight
    new.bias = m.bias
    new.running_mean = m.running_mean
    new.running_var = m.running_var
    new.num_batches_tracked = m.num_batches_tracked
    new.training = m.training
    if hasattr(m, "qconfig"):
        new.qconfig = m.qconfig
    return new


def replace_batch_norm(module, *, sync=False, process_group=None):
    """Replace every PyTorch batch-norm module of ``module`` by cbp's; returns the model.

    ``torch.nn.BatchNorm1d/2d/3d`` become :class:`BatchNorm1d/2d/3d`,
    ``torch.nn.SyncBatchNorm`` becomes :class:`SyncBatchNorm`; with
    ``sync=True`` every one of them (and cbp's unsynchronized ones) becomes
    :class:`SyncBatchNorm` over ``process_group`` (default: the whole world).
    Only these exact classes are replaced (a subclass may have a forward of
    its own; lazy modules have no size yet). The new modules hold the same
    parameter and buffer tensors, training flag and hyperparameters; hooks
    registered on the old modules are not carried over. The model is changed
    in place; if ``module`` itself is a batch-norm layer, the new layer is
    returned instead.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if process_group is not None and not sync:
        raise ValueError("process_group is only used with sync=True")
    cls = _target_class(module, bool(sync))
    if cls is not None:
        return _rebuilt(module, cls, process_group)
    for name, child in module.named_children():
        new = replace_batch_norm(child, sync=sync, process_group=process_group)
        if new is not child:
            setattr(module, name, new)
    return module
