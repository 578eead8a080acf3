"""One round of an interleaved A/B: times of the five operations on fixed cases.

Times every operation (median of repeated calls for at least 0.25 s) on a
fixed set of float32 shapes, NCHW and NHWC, with 1 and 2 threads, random
data, plus all-zero data on two shapes (dead channels), for the cbp found on
sys.path; prints a JSON object {"op shape layout data tN": seconds}. Run it
alternately against two builds, e.g.

    for r in 1 2 3 4 5; do
      PYTHONPATH=/path/to/A/src python benchmarks/ab_round.py > A_$r.json
      PYTHONPATH=/path/to/B/src python benchmarks/ab_round.py > B_$r.json
    done

and compare the per-row medians over rounds; a row's spread over A's own
rounds is the noise a ratio must beat. The snapshot
snapshots/2026-12-01-range-ab.md was measured this way.
"""
import json, sys, time
import numpy as np
import cbp

SHAPES = [("32x2048x7x7", "NCHW"), ("32x2048x7x7", "NHWC"), ("8x64x28x28", "NCHW"),
          ("8x64x28x28", "NHWC"), ("4096x1024", "NCHW"), ("32x256x56x56", "NCHW"),
          ("32x256x56x56", "NHWC"), ("2x4x3x3", "NCHW")]
ZERO = [("32x2048x7x7", "NHWC"), ("32x256x28x28", "NCHW")]
res = {}
rng = np.random.default_rng(0)

def run(tag, shape, layout, data, threads):
    dims = [int(v) for v in shape.split("x")]
    C = dims[1]
    if layout == "NHWC" and len(dims) > 2:
        dims = [dims[0]] + dims[2:] + [dims[1]]
    if data == "zero":
        x = np.zeros(dims, np.float32); dy = np.zeros(dims, np.float32)
    else:
        x = rng.standard_normal(dims, dtype=np.float32); dy = rng.standard_normal(dims, dtype=np.float32)
    st = cbp.channel_stats(x, layout=layout)
    m = st.mean; i = st.inv_std(1e-5); s = np.ones(C); b = np.zeros(C)
    o = np.empty_like(x)
    ds, db = cbp.channel_backprop_stats(x, dy, m, i, layout=layout)
    ops = {
        "bwd": lambda: cbp.batch_norm_backward(x, dy, m, i, s, layout=layout, out=o, num_threads=threads),
        "bps": lambda: cbp.channel_backprop_stats(x, dy, m, i, layout=layout, num_threads=threads),
        "dx": lambda: cbp.batch_norm_dx(x, dy, m, i, s, ds, db, x.size // C, layout=layout, out=o, num_threads=threads),
        "stats": lambda: cbp.channel_stats(x, layout=layout, num_threads=threads),
        "fwd": lambda: cbp.batch_norm_forward(x, s, b, layout=layout, out=o, num_threads=threads),
    }
    for op, f in ops.items():
        f(); f()
        ts = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.25 or len(ts) < 5:
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        res[f"{op} {shape} {layout} {data} t{threads}"] = float(np.median(ts))

for th in (1, 2):
    for shape, layout in SHAPES:
        run("", shape, layout, "rand", th)
for shape, layout in ZERO:
    run("", shape, layout, "zero", 1)
json.dump(res, sys.stdout)
