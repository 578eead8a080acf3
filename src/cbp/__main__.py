"""`python -m cbp`: run cbp's main job on a built-in default tensor.

The default is a ResNet-50 layer, 32x64x112x112 float32, in both layouts:
forward statistics, the fused backward, a check against a float64 NumPy
reference, and a table of times for cbp, NumPy and (if installed) PyTorch.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import cbp


def _best_ms(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def numpy_backward(x, dy, scale, eps, axis):
    """Batch norm forward statistics and backward in plain NumPy (input dtype)."""
    red = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    mean = x.mean(axis=red)
    xc = x - mean.reshape(shape)
    var = (xc * xc).mean(axis=red)
    inv_std = 1.0 / np.sqrt(var + eps)
    m = x.size // x.shape[axis]
    dbias = dy.sum(axis=red)
    dscale = (dy * xc).sum(axis=red) * inv_std
    k = (scale * inv_std).reshape(shape)
    dx = k * (dy - (dbias / m).reshape(shape) - xc * (inv_std * dscale / m).reshape(shape))
    return mean, var, dx.astype(x.dtype), dscale, dbias


def reference64(x, dy, scale, eps, axis):
    return numpy_backward(x.astype(np.float64), dy.astype(np.float64), scale, eps, axis)


def _torch_times(x, dy, scale, eps, layout, threads, repeat):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    tx = torch.from_numpy(x)
    tdy = torch.from_numpy(dy)
    if layout == "NHWC":  # torch's shapes are NCHW; channels_last memory is NHWC
        tx = tx.movedim(-1, 1)
        tdy = tdy.movedim(-1, 1)
    w = torch.from_numpy(scale.astype(x.dtype))
    _, mean, invstd = torch.ops.aten.native_batch_norm(tx, w, None, None, None, True, 0.0, eps)

    def bwd():
        torch.ops.aten.native_batch_norm_backward(tdy, tx, w, None, None, mean, invstd, True,
                                                  eps, [True, True, True])

    def fwd():
        torch.ops.aten.native_batch_norm(tx, w, None, None, None, True, 0.0, eps)

    return _best_ms(fwd, repeat), _best_ms(bwd, repeat)


def run(shape, dtype, threads, repeat, eps=1e-5):
    rng = np.random.default_rng(0)
    results = []
    print(cbp.__name__, cbp.__version__, "| OpenMP:", cbp.show_config(print_out=False)["openmp"],
          "| threads:", threads)
    ok = True
    for layout in ("NCHW", "NHWC"):
        lshape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
        axis = 1 if layout == "NCHW" else len(lshape) - 1
        x = (rng.standard_normal(lshape, dtype=np.float32) * 2.0 + 0.5).astype(dtype)
        dy = rng.standard_normal(lshape, dtype=np.float32).astype(dtype)
        C = lshape[axis]
        scale = rng.uniform(0.5, 1.5, C)
        bias = rng.uniform(-0.5, 0.5, C)

        y, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, eps=eps, layout=layout,
                                                  num_threads=threads)
        dx, dscale, dbias = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout,
                                                    num_threads=threads)
        rmean, rvar, rdx, rdscale, rdbias = reference64(x, dy, scale, eps, axis)
        errors = {
            "mean": np.max(np.abs(mean - rmean)) / np.max(np.sqrt(rvar)),
            "inv_std": np.max(np.abs(inv_std * np.sqrt(rvar + eps) - 1.0)),
            "dscale": np.max(np.abs(dscale - rdscale)) / np.max(np.abs(rdscale)),
            "dbias": np.max(np.abs(dbias - rdbias)) / np.max(np.abs(rdbias)),
            "dx": np.max(np.abs(dx - rdx)) / np.max(np.abs(rdx)),
        }
        tol = 1e-4 if dtype == np.float32 else 1e-10
        passed = all(e < tol for e in errors.values())
        ok &= passed
        print(f"\n{layout} {lshape} {np.dtype(dtype).name}: check against float64 NumPy "
              f"{'PASSED' if passed else 'FAILED'} (max relative errors: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + ")")

        cbp_fwd = _best_ms(lambda: cbp.batch_norm_forward(x, scale, bias, eps=eps, layout=layout,
                                                          out=y, num_threads=threads), repeat)
        cbp_bwd = _best_ms(lambda: cbp.batch_norm_backward(x, dy, mean, inv_std, scale,
                                                           layout=layout, out=dx,
                                                           num_threads=threads), repeat)
        np_bwd = _best_ms(lambda: numpy_backward(x, dy, scale, eps, axis), max(1, repeat // 2))
        row = {"layout": layout, "cbp forward": cbp_fwd, "cbp backward": cbp_bwd,
               "NumPy fwd stats + backward": np_bwd}
        torch_t = _torch_times(x, dy, scale, eps, layout, threads, repeat)
        if torch_t is not None:
            row["PyTorch forward"], row["PyTorch backward"] = torch_t
        results.append(row)

    print(f"\nbest of {repeat} runs, milliseconds, {threads} thread(s):")
    keys = list(dict.fromkeys(k for r in results for k in r if k != "layout"))
    print(f"{'':8s}" + "".join(f"{k:>28s}" for k in keys))
    for r in results:
        print(f"{r['layout']:8s}" + "".join(
            f"{r[k]:28.2f}" if k in r else f"{'-':>28s}" for k in keys))
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cbp", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32,64,112,112",
                   help="NCHW shape, comma-separated (default: 32,64,112,112)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None,
                   help="threads (default: the OpenMP default)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--config", action="store_true", help="print show_config() and exit")
    args = p.parse_args(argv)
    if args.config:
        cbp.show_config()
        return 0
    shape = tuple(int(s) for s in args.shape.split(","))
    if not 2 <= len(shape) <= 5:
        p.error("--shape needs 2 to 5 dimensions")
    threads = args.threads or cbp.show_config(print_out=False)["default_num_threads"]
    return 0 if run(shape, np.dtype(args.dtype).type, threads, args.repeat) else 1


if __name__ == "__main__":
    sys.exit(main())
