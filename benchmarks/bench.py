#!/usr/bin/env python
"""cbp benchmark suite: cbp vs. the memory floor, NumPy and PyTorch (CPU).

    PYTHONPATH=src python benchmarks/bench.py            # full suite (~15-20 min)
    PYTHONPATH=src python benchmarks/bench.py --quick    # a subset for development
    PYTHONPATH=src python benchmarks/bench.py --smoke    # tiny shapes (the test-suite runs this)

For every (shape, layout, dtype, thread count, operation) it measures, side by
side in one process and with the same thread count:

* cbp (``num_threads=threads``, outputs preallocated and passed as ``out=``);
* the memory floor: honest memory sweeps over the same arrays (``np.dot`` is a
  read sweep, ``np.add``/``np.multiply(..., out=)`` a read+write sweep), split
  into ``threads`` contiguous pieces run in a thread pool, BLAS limited to one
  thread per piece;
* a plain NumPy implementation of the same math in the input dtype;
* PyTorch CPU (``native_batch_norm(_backward)``, ``var_mean``) on contiguous
  NCHW tensors for NCHW rows and on channels_last views for NHWC rows, with
  ``torch.set_num_threads(threads)`` -- when torch is installed.

Each timing is a warm-up call followed by up to ``--repeat`` calls; best and
median are recorded, ratios use the best times. The floor, cbp and PyTorch are
each timed in two passes (floor, every operation, every operation again,
floor), so all three get the same number of samples from the same stretch of
time; NumPy (a reference, 4x-10x slower) is timed once. The peak extra memory
of each cbp call (above inputs and preallocated outputs) comes from
VmHWM/VmRSS after resetting the high-water mark through /proc/self/clear_refs
(Linux only).

Results go to a JSON file and a PNG chart (if matplotlib is installed) and a
table is printed (``--markdown`` for a README-ready table). No result is ever
asserted: this is a measurement tool.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # allow running from a checkout without installing
    _src = os.path.join(os.path.dirname(HERE), "src")
    if os.path.isdir(os.path.join(_src, "cbp")) and _src not in sys.path:
        sys.path.insert(0, _src)

import cbp  # noqa: E402

EPS = 1e-5
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
DEFAULT_PNG = os.path.join(HERE, "results", "latest.png")

OPS = ["batch_norm_backward", "channel_backprop_stats", "batch_norm_dx",
       "channel_stats", "batch_norm_forward"]
OP_SHORT = {"batch_norm_backward": "backward", "channel_backprop_stats": "backprop_stats",
            "batch_norm_dx": "dx", "channel_stats": "stats", "batch_norm_forward": "forward"}

# Canonical NCHW shapes (N, C, *spatial); NHWC rows use (N, *spatial, C).
FULL_SHAPES = [
    ((32, 64, 112, 112), "ResNet-50 conv1"),
    ((32, 256, 56, 56), "ResNet-50 stage 1"),
    ((32, 512, 28, 28), "ResNet-50 stage 2"),
    ((32, 1024, 14, 14), "ResNet-50 stage 3 (14x14 planes)"),
    ((32, 2048, 7, 7), "ResNet-50 stage 4"),
    ((256, 2048, 7, 7), "ResNet-50 stage 4, batch 256"),
    ((4096, 1024), "BatchNorm1d (1x1 spatial)"),
    ((256, 1024), "BatchNorm1d, small batch"),
    ((8, 32, 32, 64, 64), "3-D (BatchNorm3d)"),
    ((8, 64, 28, 28), "small, cache-resident"),
    ((2, 4, 3, 3), "tiny (per-call overhead)"),
]
QUICK_SHAPES = [(32, 256, 56, 56), (32, 2048, 7, 7), (4096, 1024), (8, 64, 28, 28)]
SMOKE_SHAPES = [(4, 8, 5, 5), (16, 8), (2, 4, 3, 4, 5)]
SHAPE_NOTES = {s: note for s, note in FULL_SHAPES}

# Floor components: name -> (description, bytes moved in units of x.nbytes)
FLOOR_COMPONENTS = {
    "read_x_dy": "np.dot(x, dy): one read sweep of x and dy",
    "rw_x_dy": "np.add(x, dy, out=dx): read x and dy, write dx",
    "read_x": "np.dot(x, x): one read sweep of x",
    "rw_x": "np.multiply(x, 1, out=y): read x, write y",
}
# Per operation: floor = sum of these sweeps; bytes the op must move (x.nbytes units).
OP_FLOOR = {
    "batch_norm_backward": ["read_x_dy", "rw_x_dy"],
    "channel_backprop_stats": ["read_x_dy"],
    "batch_norm_dx": ["rw_x_dy"],
    "channel_stats": ["read_x"],
    "batch_norm_forward": ["read_x", "rw_x"],
}
OP_BYTES = {
    "batch_norm_backward": 5,      # read x, dy (stats) + read x, dy, write dx
    "channel_backprop_stats": 2,   # read x, dy
    "batch_norm_dx": 3,            # read x, dy, write dx
    "channel_stats": 1,            # read x
    "batch_norm_forward": 3,       # read x (stats) + read x, write y
}


# --------------------------------------------------------------------------- utilities

def shape_str(shape):
    return "x".join(map(str, shape))


def parse_shape(text):
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; expected e.g. 32x64x56x56")
    if not 2 <= len(shape) <= 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: 2..5 positive dimensions")
    return shape


def layout_shape(shape, layout):
    return tuple(shape) if layout == "NCHW" else (shape[0],) + tuple(shape[2:]) + (shape[1],)


def nproc():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model():
    # the model name, with x86's family and model numbers: a VM's model name
    # may be only "AMD EPYC", which says nothing of the core
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def build_info():
    """Which compiled kernels ran: extension path and mtime, git commit of the tree."""
    info = {}
    try:
        from cbp import cython_api
        path = cython_api.__file__
        info["extension"] = path
        info["extension_mtime"] = datetime.datetime.fromtimestamp(
            os.path.getmtime(path)).isoformat(timespec="seconds")
    except (ImportError, AttributeError, OSError):
        pass
    try:
        import subprocess
        root = os.path.dirname(HERE)
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["src_modified"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _finite(obj):
    """NaN/inf -> None so that the JSON stays strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _ratio(a, b):
    if a is None or b is None or not b > 0:
        return None
    return a / b


class Timing:
    def __init__(self, times):
        self.times = times
        self.best = min(times)
        self.median = statistics.median(times)

    def ms(self):
        return {"best_ms": self.best * 1e3, "median_ms": self.median * 1e3,
                "runs": len(self.times)}


def measure(fn, repeat, budget, min_time=0.0, max_runs=1000):
    """Warm-up call, then timed calls: at least `repeat` (fewer, but at least
    min(3, repeat), once `budget` seconds are spent) and more, up to `max_runs`,
    until `min_time` seconds are spent (so that sub-millisecond calls get enough
    samples for a stable best-of). Returns (Timing, warm-up result)."""
    result = fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        spent = t1 - start
        n = len(times)
        if n >= max_runs:
            break
        if n >= repeat and spent >= min_time:
            break
        if n >= min(3, repeat) and spent > budget:
            break
    return Timing(times), result


# --------------------------------------------------------------------------- peak memory

def _proc_status_kb():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0])
    return out


def _can_measure_memory():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        s = _proc_status_kb()
        return "VmRSS" in s and "VmHWM" in s
    except OSError:
        return False


def _malloc_trim():
    """Return free heap memory to the OS (glibc), so that a temporary allocated by
    the measured call cannot hide in pages a previous call left resident."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            import ctypes
            import ctypes.util
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM = libc.malloc_trim
            _TRIM.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            pass
    if _TRIM:
        _TRIM(0)


_TRIM = None


def peak_extra_mb(fn):
    """Peak resident memory added by one call of fn (MB), or None where unsupported.

    Trims the malloc heap, resets the high-water mark (clear_refs 5), reads VmRSS
    before and VmHWM after. The caller warms fn up first, so preallocated
    outputs and OpenMP threads already exist."""
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kb()["VmRSS"]
        fn()
        after = _proc_status_kb()
    except OSError:
        return None
    return max(0, max(after["VmHWM"], after["VmRSS"]) - before) / 1024.0


# --------------------------------------------------------------------------- threads

class BlasLimit:
    """Limit BLAS to one thread per caller (threadpoolctl), if available."""

    def __init__(self):
        self._ctl = None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            warnings.warn("threadpoolctl not installed: BLAS threads not limited; "
                          "the floor may use more threads than asked", stacklevel=2)
            return self
        self._ctl = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self._ctl is not None:
            self._ctl.restore_original_limits()


class Floor:
    """Memory-sweep floors over flat views of the arrays, in `threads` pieces."""

    def __init__(self, threads):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()

    def _pieces(self, *arrays):
        flat = [a.reshape(-1) for a in arrays]
        n, k = flat[0].size, self.threads
        bounds = [n * i // k for i in range(k + 1)]
        return [tuple(a[bounds[i]:bounds[i + 1]] for a in flat) for i in range(k)]

    def _run(self, func, pieces):
        if self.pool is None:
            return [func(*p) for p in pieces]
        return list(self.pool.map(lambda p: func(*p), pieces))

    def sweeps(self, x, dy, out):
        """name -> zero-argument callable for each floor component."""
        p_xdy = self._pieces(x, dy)
        p_xdyo = self._pieces(x, dy, out)
        p_x = self._pieces(x)
        p_xo = self._pieces(x, out)
        return {
            "read_x_dy": lambda: self._run(np.dot, p_xdy),
            "rw_x_dy": lambda: self._run(lambda a, b, o: np.add(a, b, out=o), p_xdyo),
            "read_x": lambda: self._run(lambda a: np.dot(a, a), p_x),
            "rw_x": lambda: self._run(lambda a, o: np.multiply(a, 1, out=o), p_xo),
        }


# --------------------------------------------------------------------------- NumPy

class NumpyBN:
    """The same math in plain NumPy, in the input dtype."""

    def __init__(self, layout, ndim, C, dtype):
        self.dtype = np.dtype(dtype)
        if layout == "NCHW":
            self.axes = (0,) + tuple(range(2, ndim))
            self.bshape = (1, C) + (1,) * (ndim - 2)
        else:
            self.axes = tuple(range(ndim - 1))
            self.bshape = (C,)

    def vec(self, v):
        return np.asarray(v, dtype=self.dtype).reshape(self.bshape)

    def channel_stats(self, x):
        mean = x.mean(axis=self.axes, keepdims=True)
        d = x - mean
        var = np.mean(np.square(d, out=d), axis=self.axes)
        return mean.reshape(-1), var

    def channel_backprop_stats(self, x, dy, mean, inv_std):
        dbias = dy.sum(axis=self.axes)
        t = x - self.vec(mean)
        t *= self.vec(inv_std)
        t *= dy
        return t.sum(axis=self.axes), dbias

    def batch_norm_dx(self, x, dy, mean, inv_std, scale, dscale, dbias, count, out):
        t = x - self.vec(mean)
        t *= self.vec(inv_std * dscale / count)
        np.subtract(dy, self.vec(dbias / count), out=out)
        out -= t
        out *= self.vec(scale * inv_std)
        return out

    def batch_norm_backward(self, x, dy, mean, inv_std, scale, out):
        count = x.size // mean.size
        xhat = x - self.vec(mean)
        xhat *= self.vec(inv_std)
        dbias = dy.sum(axis=self.axes)
        dscale = np.sum(dy * xhat, axis=self.axes)
        xhat *= self.vec(dscale / count)
        np.subtract(dy, self.vec(dbias / count), out=out)
        out -= xhat
        out *= self.vec(scale * inv_std)
        return out, dscale, dbias

    def batch_norm_forward(self, x, scale, bias, eps, out):
        mean = x.mean(axis=self.axes, keepdims=True)
        d = x - mean
        var = np.mean(np.square(d), axis=self.axes)
        inv_std = 1 / np.sqrt(var + self.dtype.type(eps))
        np.multiply(d, self.vec(scale) * inv_std.reshape(self.bshape), out=out)
        out += self.vec(bias)
        return out, mean.reshape(-1), inv_std


def max_rel_diff(got, want):
    """max over outputs of max|got - want| / max|want| (a harness sanity check)."""
    worst = 0.0
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        diff = float(np.max(np.abs(g - w))) if w.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


# --------------------------------------------------------------------------- one group of rows

def make_data(shape, layout, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    shp = layout_shape(shape, layout)
    bshape = (1, C) + (1,) * (len(shape) - 2) if layout == "NCHW" else (C,)
    x = rng.standard_normal(shp, dtype=dtype)
    x *= rng.uniform(0.5, 2.0, C).astype(dtype).reshape(bshape)
    x += rng.uniform(-2.0, 2.0, C).astype(dtype).reshape(bshape)
    dy = rng.standard_normal(shp, dtype=dtype)
    st = cbp.channel_stats(x, layout=layout)
    inv_std = st.inv_std(EPS)
    dscale, dbias = cbp.channel_backprop_stats(x, dy, st.mean, inv_std, layout=layout)
    return dict(x=x, dy=dy, scale=rng.standard_normal(C), bias=rng.standard_normal(C),
                mean=st.mean, inv_std=inv_std, dscale=dscale, dbias=dbias, count=st.count)


def torch_callables(torch, d, layout, ndim, threads):
    """op -> (callable or None, torch memory format name)."""
    x, dy = torch.from_numpy(d["x"]), torch.from_numpy(d["dy"])
    if layout == "NHWC" and ndim > 2:
        perm = (0, ndim - 1) + tuple(range(1, ndim - 1))
        x, dy = x.permute(*perm), dy.permute(*perm)
        fmt = "channels_last" if ndim == 4 else ("channels_last_3d" if ndim == 5 else "NLC view")
    else:
        fmt = "contiguous"
    tdt = x.dtype
    w = torch.from_numpy(d["scale"]).to(tdt)
    b = torch.from_numpy(d["bias"]).to(tdt)
    sm = torch.from_numpy(np.array(d["mean"], dtype=d["x"].dtype))
    si = torch.from_numpy(np.array(d["inv_std"], dtype=d["x"].dtype))
    dims = (0,) + tuple(range(2, ndim))
    aten = torch.ops.aten
    return {
        "batch_norm_backward": lambda: aten.native_batch_norm_backward(
            dy, x, w, None, None, sm, si, True, EPS, [True, True, True]),
        "channel_backprop_stats": lambda: aten.native_batch_norm_backward(
            dy, x, w, None, None, sm, si, True, EPS, [False, True, True]),
        "batch_norm_dx": None,  # no CPU op doing only this work (backward_elemt is GPU-only)
        "channel_stats": lambda: torch.var_mean(x, dim=dims, correction=0),
        "batch_norm_forward": lambda: aten.native_batch_norm(
            x, w, b, None, None, True, 0.1, EPS),
    }, fmt


def run_group(shape, layout, dtype, threads_list, ops, args, torch, log):
    """All rows of one (shape, layout, dtype): every thread count and operation."""
    d = make_data(shape, layout, dtype)
    x, dy = d["x"], d["dy"]
    out_cbp = np.empty_like(x)
    out_np = np.empty_like(x)
    out_floor = np.empty_like(x)
    ndim, C = x.ndim, shape[1]
    npbn = NumpyBN(layout, ndim, C, dtype)
    mean, inv_std, scale, bias = d["mean"], d["inv_std"], d["scale"], d["bias"]
    dscale, dbias, count = d["dscale"], d["dbias"], d["count"]
    rows = []
    for threads in threads_list:
        kw = dict(layout=layout, num_threads=threads)
        cbp_calls = {
            "batch_norm_backward": lambda: cbp.batch_norm_backward(
                x, dy, mean, inv_std, scale, out=out_cbp, **kw),
            "channel_backprop_stats": lambda: cbp.channel_backprop_stats(
                x, dy, mean, inv_std, **kw),
            "batch_norm_dx": lambda: (cbp.batch_norm_dx(
                x, dy, mean, inv_std, scale, dscale, dbias, count, out=out_cbp, **kw),),
            "channel_stats": lambda: (lambda s: (s.mean, s.var))(cbp.channel_stats(x, **kw)),
            "batch_norm_forward": lambda: cbp.batch_norm_forward(
                x, scale, bias, eps=EPS, out=out_cbp, **kw),
        }
        np_calls = {
            "batch_norm_backward": lambda: npbn.batch_norm_backward(
                x, dy, mean, inv_std, scale, out_np),
            "channel_backprop_stats": lambda: npbn.channel_backprop_stats(x, dy, mean, inv_std),
            "batch_norm_dx": lambda: (npbn.batch_norm_dx(
                x, dy, mean, inv_std, scale, dscale, dbias, count, out_np),),
            "channel_stats": lambda: npbn.channel_stats(x),
            "batch_norm_forward": lambda: npbn.batch_norm_forward(x, scale, bias, EPS, out_np),
        }
        torch_calls, torch_fmt = ({}, None)
        if torch is not None:
            torch.set_num_threads(threads)
            torch_calls, torch_fmt = torch_callables(torch, d, layout, ndim, threads)

        # The floor, measured right before and right after the rows that use it
        # (best of both: one disturbed pass on a shared machine does not skew it).
        floor = Floor(threads)
        sweeps = floor.sweeps(x, dy, out_floor)
        needed = sorted({c for op in ops for c in OP_FLOOR[op]})

        def floor_pass():
            return {name: measure(sweeps[name], args.repeat, args.budget, args.min_time)[0]
                    for name in needed}

        comp_before = floor_pass()
        rows_here = []
        for op in ops:
            t_cbp, r_cbp = measure(cbp_calls[op], args.repeat, args.budget, args.min_time)
            peak = peak_extra_mb(cbp_calls[op]) if args.memory else None
            t_np, r_np = measure(np_calls[op], args.repeat, args.budget, args.min_time)
            check = max_rel_diff(r_cbp, r_np)
            del r_cbp, r_np
            t_torch = None
            if torch_calls.get(op) is not None:
                t_torch = measure(torch_calls[op], args.repeat, args.budget, args.min_time)[0]
            row = {
                "op": op,
                "shape": list(shape),
                "shape_str": shape_str(shape),
                "note": SHAPE_NOTES.get(tuple(shape), ""),
                "array_shape": list(x.shape),
                "layout": layout,
                "dtype": np.dtype(dtype).name,
                "threads": threads,
                "x_nbytes": x.nbytes,
                "bytes_moved": OP_BYTES[op] * x.nbytes,
                "torch_memory_format": torch_fmt if t_torch else None,
                "peak_extra_mb": peak,
                "max_rel_diff_vs_numpy": check,
            }
            rows_here.append((row, t_cbp, t_np, t_torch))
        # A second pass of cbp and PyTorch, so that each gets as many samples,
        # as close in time, as the floor (two passes) and drift on a shared
        # machine does not favour one of them.
        for i, (row, t_cbp, t_np, t_torch) in enumerate(rows_here):
            op = row["op"]
            t_cbp = Timing(t_cbp.times + measure(cbp_calls[op], args.repeat, args.budget,
                                                 args.min_time)[0].times)
            if t_torch is not None:
                t_torch = Timing(t_torch.times + measure(torch_calls[op], args.repeat,
                                                         args.budget, args.min_time)[0].times)
            rows_here[i] = (row, t_cbp, t_np, t_torch)
        comp_after = floor_pass()
        floor.close()
        comp = {c: Timing(comp_before[c].times + comp_after[c].times) for c in needed}
        for row, t_cbp, t_np, t_torch in rows_here:
            parts = OP_FLOOR[row["op"]]
            floor_s = sum(comp[c].best for c in parts)
            row.update({
                "cbp": t_cbp.ms(),
                "cbp_ms": t_cbp.best * 1e3,
                "cbp_gbps": row["bytes_moved"] / t_cbp.best / 1e9,
                "numpy": t_np.ms(),
                "numpy_ms": t_np.best * 1e3,
                "torch": t_torch.ms() if t_torch else None,
                "torch_ms": t_torch.best * 1e3 if t_torch else None,
                "torch_cbp": _ratio(t_torch.best if t_torch else None, t_cbp.best),
                "numpy_cbp": t_np.best / t_cbp.best,
                "floor_ms": floor_s * 1e3,
                "floor_gbps": row["bytes_moved"] / floor_s / 1e9,
                "floor_components": {c: comp[c].ms() for c in parts},
                "cbp_floor": t_cbp.best / floor_s,
            })
            rows.append(row)
            log(format_row(row))
    del d, x, dy, out_cbp, out_np, out_floor
    gc.collect()
    return rows


# --------------------------------------------------------------------------- output

COLUMNS = ["op", "shape", "layout", "dtype", "thr", "cbp ms", "GB/s", "floor ms",
           "cbp/floor", "torch/cbp", "numpy/cbp", "extra MB"]


def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def row_cells(r):
    mem = r["peak_extra_mb"]
    return [OP_SHORT[r["op"]], r["shape_str"], r["layout"], r["dtype"], str(r["threads"]),
            _fmt_ms(r["cbp_ms"]), f"{r['cbp_gbps']:.1f}", _fmt_ms(r["floor_ms"]),
            _fmt_ratio(r["cbp_floor"]), _fmt_ratio(r["torch_cbp"]), _fmt_ratio(r["numpy_cbp"]),
            "n/a" if mem is None else f"{mem:.2f}"]


WIDTHS = [14, 16, 6, 7, 3, 8, 6, 8, 9, 9, 9, 8]


def format_row(r):
    return "  ".join(c.rjust(w) if i > 3 else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row_cells(r), WIDTHS)))


def format_table(rows, markdown=False):
    lines = []
    if markdown:
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|")
        for r in rows:
            lines.append("| " + " | ".join(row_cells(r)) + " |")
        return "\n".join(lines)
    header = "  ".join(c.rjust(w) if i > 3 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(COLUMNS, WIDTHS)))
    lines.append(header)
    lines.append("-" * len(header))
    last_op = None
    for r in rows:
        if last_op is not None and r["op"] != last_op:
            lines.append("")
        last_op = r["op"]
        lines.append(format_row(r))
    return "\n".join(lines)


def sort_rows(rows):
    order = {op: i for i, op in enumerate(OPS)}
    return sorted(rows, key=lambda r: order[r["op"]])  # stable: keeps run order inside an op


def write_png(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        warnings.warn("matplotlib not installed: no PNG written "
                      "(pip install matplotlib, or the 'bench' extra)", stacklevel=2)
        return None
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    shapes = list(dict.fromkeys(r["shape_str"] for r in rows))
    combos = sorted({(r["layout"], r["dtype"], r["threads"]) for r in rows},
                    key=lambda c: (c[2], c[1], c[0]))
    thr_list = sorted({c[2] for c in combos})
    colors = dict(zip(thr_list, ["tab:blue", "tab:orange", "tab:green", "tab:red",
                                 "tab:purple", "tab:brown"] * 4))
    markers = {"NCHW": "o", "NHWC": "s"}
    metrics = [("cbp_floor", "cbp / floor (lower is better, 1 = memory bound)"),
               ("torch_cbp", "PyTorch / cbp (higher = cbp faster)"),
               ("numpy_cbp", "NumPy / cbp (higher = cbp faster)")]
    fig, axes = plt.subplots(len(ops), 3, figsize=(6.5 * 3, 2.9 * len(ops) + 1.0),
                             squeeze=False)
    width = 0.8
    for i, op in enumerate(ops):
        for j, (key, title) in enumerate(metrics):
            ax = axes[i][j]
            any_point = False
            for k, combo in enumerate(combos):
                xs, ys = [], []
                for r in rows:
                    if r["op"] == op and (r["layout"], r["dtype"], r["threads"]) == combo \
                            and r[key] is not None and r[key] > 0:
                        off = -width / 2 + width * (k + 0.5) / len(combos)
                        xs.append(shapes.index(r["shape_str"]) + off)
                        ys.append(r[key])
                if xs:
                    any_point = True
                    layout, dtype, thr = combo
                    filled = dtype == "float32"
                    ax.scatter(xs, ys, s=28, marker=markers[layout],
                               facecolors=colors[thr] if filled else "none",
                               edgecolors=colors[thr], linewidths=1.2)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes if i == len(ops) - 1 else [""] * len(shapes),
                               rotation=30, ha="right", fontsize=8)
            for s in range(len(shapes) - 1):
                ax.axvline(s + 0.5, color="0.85", lw=0.6)
            ax.set_xlim(-0.5, len(shapes) - 0.5)
            if any_point:
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "n/a (no equivalent PyTorch CPU op)" if key == "torch_cbp"
                        else "n/a", ha="center", va="center", transform=ax.transAxes,
                        color="0.4")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            if i == 0:
                ax.set_title(title, fontsize=10)
            if j == 0:
                ax.set_ylabel(op, fontsize=9)
    handles = [Line2D([], [], color=colors[t], marker="o", ls="", label=f"{t} thread(s)")
               for t in thr_list]
    handles += [Line2D([], [], color="0.45", marker=markers[l], ls="", label=l)
                for l in ("NCHW", "NHWC")]
    handles += [Line2D([], [], color="k", marker="o", ls="", label="float32 (filled)"),
                Line2D([], [], color="k", marker="o", ls="", mfc="none",
                       label="float64 (hollow)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("cbp benchmark: ratios per shape (best-of timings, same thread count)",
                 fontsize=11, y=1 - 0.12 / fig.get_figheight())
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.75 / fig.get_figheight(),
                        bottom=1.0 / fig.get_figheight(), wspace=0.18, hspace=0.12)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI

def _csv(kind, choices=None, conv=str):
    def parse(text):
        items = [conv(t.strip()) for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {kind} {bad}; choose from {choices}")
        return items
    return parse


def _thread(text):
    if text.lower() == "all":
        return nproc()
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1 (or 'all')")
    return n


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark cbp against the memory floor, NumPy and PyTorch CPU.")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="a subset for development: 4 shapes, float32, 3 repeats")
    preset.add_argument("--smoke", action="store_true",
                        help="tiny shapes, 1 timed run each (the test-suite runs this)")
    p.add_argument("--threads", type=_csv("thread count", conv=_thread),
                   help="comma list, e.g. 1,2,all (default: 1,2 and all cores when more)")
    p.add_argument("--dtypes", type=_csv("dtype", ["float32", "float64"]),
                   help="comma list (default float32,float64; --quick: float32)")
    p.add_argument("--layouts", type=_csv("layout", ["NCHW", "NHWC"]),
                   help="comma list (default NCHW,NHWC; 2-D shapes run once, as NCHW)")
    p.add_argument("--ops", type=_csv("op", OPS), help=f"comma list of {','.join(OPS)}")
    p.add_argument("--shapes", type=_csv("shape", conv=parse_shape),
                   help="comma list of canonical NCHW shapes, e.g. 32x256x56x56,4096x1024")
    p.add_argument("--repeat", type=int, help="timed runs after a warm-up (default 5)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds per measurement after which repeats stop early "
                        "(at least 3 runs are always made; default 3)")
    p.add_argument("--min-time", type=float,
                   help="keep repeating short calls until this many seconds are spent per "
                        "measurement (default 0.2; --smoke: 0)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    p.add_argument("--png", default=DEFAULT_PNG,
                   help=f"chart (default {DEFAULT_PNG}); 'none' to skip")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--no-torch", action="store_true", help="do not measure PyTorch")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-extra-memory measurement")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-row progress lines")
    return p


def resolve(args):
    if args.smoke:
        shapes, dtypes, repeat, threads = SMOKE_SHAPES, ["float32", "float64"], 1, [1, 2]
        min_time = 0.0
    elif args.quick:
        shapes, dtypes, repeat, threads = QUICK_SHAPES, ["float32"], 3, [1, 2]
        min_time = 0.2
    else:
        shapes, dtypes, repeat = [s for s, _ in FULL_SHAPES], ["float32", "float64"], 5
        min_time = 0.2
        threads = [1, 2] + ([nproc()] if nproc() > 2 else [])
    args.shapes = args.shapes or shapes
    args.dtypes = args.dtypes or dtypes
    args.repeat = args.repeat or repeat
    args.min_time = min_time if args.min_time is None else args.min_time
    args.threads = list(dict.fromkeys(args.threads or threads))
    args.layouts = args.layouts or ["NCHW", "NHWC"]
    args.ops = args.ops or list(OPS)
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    return args


def import_torch(disabled):
    if disabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def main(argv=None):
    args = resolve(build_parser().parse_args(argv))
    torch = import_torch(args.no_torch)
    if args.memory and not _can_measure_memory():
        args.memory = False
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    torch_threads = torch.get_num_threads() if torch is not None else None

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpu": cpu_model(), "nproc": nproc(),
                    "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "cbp_config": cbp.show_config(print_out=False),
        "cbp_build": build_info(),
        "settings": {"shapes": [shape_str(s) for s in args.shapes], "dtypes": args.dtypes,
                     "layouts": args.layouts, "threads": args.threads, "ops": args.ops,
                     "repeat": args.repeat, "budget_s": args.budget,
                     "min_time_s": args.min_time,
                     "preset": "smoke" if args.smoke else "quick" if args.quick else "full",
                     "eps": EPS},
        "floor_components": FLOOR_COMPONENTS,
        "op_floor": OP_FLOOR,
        "op_bytes_in_x_nbytes": OP_BYTES,
        "peak_memory": ("max(VmHWM, VmRSS) after - VmRSS before, after malloc_trim(0) and "
                        "clear_refs=5 (MB)") if args.memory else "n/a",
        "notes": "times: best of `runs` after a warm-up; ratios use best times; "
                 "GB/s = bytes the op must move / best time",
    }
    load = meta["machine"]["loadavg_start"]
    if load is not None and load[0] > 0.5 * meta["machine"]["nproc"]:
        meta["busy_machine_warning"] = (
            f"load average {load[0]:.1f} on {meta['machine']['nproc']} cores at start: other "
            "processes compete for the cores; multi-thread timings are noisy (an OpenMP "
            "barrier waits for a descheduled thread)")
        warnings.warn(meta["busy_machine_warning"], stacklevel=2)
    t_start = time.perf_counter()
    log(f"cbp {meta['cbp_config'].get('version')} | numpy {np.__version__} | "
        f"torch {meta['torch'] or 'not measured'} | {meta['machine']['cpu']}, "
        f"{meta['machine']['nproc']} cores")
    log("  ".join(c.rjust(w) if i > 3 else c.ljust(w)
                  for i, (c, w) in enumerate(zip(COLUMNS, WIDTHS))))
    rows = []
    with BlasLimit():
        try:
            for shape in args.shapes:
                layouts = args.layouts if len(shape) > 2 else args.layouts[:1]
                for dtype in args.dtypes:
                    for layout in layouts:
                        rows += run_group(shape, layout, np.dtype(dtype), args.threads,
                                          args.ops, args, torch, log)
        finally:
            if torch is not None:
                torch.set_num_threads(torch_threads)
    meta["elapsed_s"] = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        meta["machine"]["loadavg_end"] = list(os.getloadavg())
    rows = sort_rows(rows)
    result = _finite({"meta": meta, "rows": rows})

    if args.json and args.json.lower() != "none":
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    png = None
    if args.png and args.png.lower() != "none":
        png = write_png(rows, args.png)

    print()
    print(format_table(rows, markdown=args.markdown))
    print(f"\n{len(rows)} rows in {meta['elapsed_s']:.0f} s; json: {args.json}; "
          f"png: {png or 'not written'}")
    return result


if __name__ == "__main__":
    main()
