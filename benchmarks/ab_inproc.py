"""In-process interleaved A/B of two cbp builds, call by call.

The base build (A) is another checkout's built ``src/cbp`` (``--base``), or
this build itself, copied to a temporary folder as the package ``cbpbase``
and imported beside ``cbp`` (B, the build on ``sys.path``). Each row then
times A and B on the same arrays, alternating call by call (A first on even
calls, B first on odd ones), so the machine's drift and its neighbours' load
fall on both alike. On a shared 2-core VM whose cross-process A/B rounds of
identical code spread 0.5x-1.9x, pairs of calls in one process put identical
code (an A/A run) at 1.00x-1.02x.

``--base-caches`` imports the base under ``CBP_CACHE_SIZES`` (e.g. ``l3=1G``:
no streaming stores), to compare schedules of one build: sizes that follow
the detected caches are then the only difference. ``--base-env VAR=VALUE``
sets any variable for A's import alone, e.g. ``CBP_ISA=avx2`` against B run
under ``CBP_ISA=avx512``: two instruction-set tables of one build.

    python setup.py build_ext --inplace
    PYTHONPATH=src python benchmarks/ab_inproc.py --base ../base-checkout \\
        bwd:32x64x112x112:NHWC:float32 stats:4096x1024:NHWC:float32
    PYTHONPATH=src python benchmarks/ab_inproc.py --base-caches l3=1G \\
        dx:32x256x56x56:NHWC:float32          # streamed (B) against plain (A)

A row is ``op:shape:layout:dtype``; the shape is canonical NCHW (the NHWC
array is (N, *spatial, C)); op is one of bwd, bps, dx, fwd, stats. Printed per
row: A's and B's 10th percentile and median in ms, and B/A of both and the
median of the per-pair ratios (below 1: B is faster).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

OPS = ("bwd", "bps", "dx", "fwd", "stats")


def calls(mod, op, d, layout, threads):
    x, dy, o, C = d["x"], d["dy"], d["out"], d["C"]
    m, s, ds, db = d["mean"], d["inv_std"], d["dscale"], d["dbias"]
    sc, bi, n = np.ones(C), np.zeros(C), x.size // C
    kw = dict(layout=layout, num_threads=threads)
    return {
        "bwd": lambda: mod.batch_norm_backward(x, dy, m, s, sc, out=o, **kw),
        "bps": lambda: mod.channel_backprop_stats(x, dy, m, s, **kw),
        "dx": lambda: mod.batch_norm_dx(x, dy, m, s, sc, ds, db, n, out=o, **kw),
        "fwd": lambda: mod.batch_norm_forward(x, sc, bi, out=o, **kw),
        "stats": lambda: mod.channel_stats(x, **kw),
    }[op]


def inputs(cbp, shape, layout, dtype):
    C = shape[1]
    arr = shape if layout == "NCHW" else (shape[0],) + shape[2:] + (C,)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(arr, dtype=dtype)
    dy = rng.standard_normal(arr, dtype=dtype)
    st = cbp.channel_stats(x, layout=layout)
    inv = st.inv_std(1e-5)
    ds, db = cbp.channel_backprop_stats(x, dy, st.mean, inv, layout=layout)
    return {"x": x, "dy": dy, "out": np.empty_like(x), "C": C, "mean": st.mean,
            "inv_std": inv, "dscale": ds, "dbias": db}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+", help="op:shape:layout:dtype, e.g. bwd:4096x1024:NHWC:float32")
    p.add_argument("--base", help="checkout whose built src/cbp is A (default: this build)")
    p.add_argument("--base-caches", default="", help="CBP_CACHE_SIZES for A only")
    p.add_argument("--base-env", action="append", default=[], metavar="VAR=VALUE",
                   help="an environment variable for A's import only (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=60, help="call pairs per row")
    args = p.parse_args()

    # cbp first: a Cython module also registers itself in sys.modules under
    # the name it was compiled as, so a base imported first would stand in
    # for cbp.cython_api too
    import cbp
    src = os.path.join(args.base, "src", "cbp") if args.base else os.path.dirname(cbp.__file__)
    tmp = tempfile.mkdtemp(prefix="cbp-ab-")
    shutil.copytree(src, os.path.join(tmp, "cbpbase"))
    sys.path.insert(0, tmp)
    base_env = dict(v.split("=", 1) for v in args.base_env)
    if args.base_caches:
        base_env["CBP_CACHE_SIZES"] = args.base_caches
    saved = {k: os.environ.get(k) for k in base_env}
    os.environ.update(base_env)
    import cbpbase
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if cbpbase.cython_api.__file__ == cbp.cython_api.__file__:
        sys.exit("the base build did not load as a module of its own")
    env = " ".join(f"{k}={v}" for k, v in base_env.items())
    print(f"A: {src}{' under ' + env if env else ''}; isa {cbpbase.cython_api.isa()}")
    print(f"B: {os.path.dirname(cbp.__file__)}; isa {cbp.cython_api.isa()}; "
          f"{args.threads} thread(s), {args.calls} call pairs")
    try:
        for row in args.rows:
            op, shape, layout, dtype = row.split(":")
            if op not in OPS:
                sys.exit(f"op must be one of {OPS}, got {op!r}")
            d = inputs(cbp, tuple(int(v) for v in shape.split("x")), layout, dtype)
            fa = calls(cbpbase, op, d, layout, args.threads)
            fb = calls(cbp, op, d, layout, args.threads)
            fa()
            fb()
            ta, tb = [], []
            for i in range(args.calls):
                for f, times in ((fb, tb), (fa, ta)) if i % 2 else ((fa, ta), (fb, tb)):
                    t = time.perf_counter()
                    f()
                    times.append(time.perf_counter() - t)
            a, b = np.array(ta) * 1e3, np.array(tb) * 1e3
            print(f"{row:38s} A p10 {np.percentile(a, 10):8.3f} p50 {np.median(a):8.3f} | "
                  f"B p10 {np.percentile(b, 10):8.3f} p50 {np.median(b):8.3f} | B/A p10 "
                  f"{np.percentile(b, 10) / np.percentile(a, 10):.3f} p50 "
                  f"{np.median(b) / np.median(a):.3f} pairs {np.median(b / a):.3f}", flush=True)
            del d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
