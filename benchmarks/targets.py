"""The performance targets of issue #13, read from a full bench.py run.

    python benchmarks/targets.py RUN.json [--l3 BYTES] [--tiny]

From the rows of one run (times measured side by side in one process):

* PyTorch / cbp >= 1.1 on every row of backward, backprop stats and forward,
  and >= 2 on rows of 100 MB or more (x alone);
* backward <= 1.0x the two-sweep floor on rows of 100 MB or more, per layout;
  <= 1.2x on rows whose x and dy fit in the L3 (the run's detected L3, or
  --l3), the tiny 2x4x3x3 aside (its floor is a call's overhead);
* channel_stats <= 1.3x one read sweep on rows of 100 MB or more.

--tiny also times a 2x4x3x3 float32 call of each operation with
num_threads=None against PyTorch's on the same input, interleaved, here and
now (the median of 15 rounds of 2000 calls).
"""
import argparse
import json
import os
import statistics
import time

BIG = 100e6
TORCH_OPS = ("batch_norm_backward", "channel_backprop_stats", "batch_norm_forward")
SHORT = {"batch_norm_backward": "bwd", "channel_backprop_stats": "bps",
         "batch_norm_forward": "fwd", "channel_stats": "stats", "batch_norm_dx": "dx"}


def _key(r):
    return f"{SHORT[r['op']]} {r['shape_str']} {r['layout']} {r['dtype']} t{r['threads']}"


def _l3_of(meta):
    try:
        caches = meta["cbp_config"]["caches"]
        # the L3 cbp counted on (a VM's claim of its host's L3 cut to what it keeps)
        return int(caches.get("last_level_cache") or caches["l3"]) or None
    except (KeyError, TypeError, ValueError):
        return None


def _count(title, rows, ok, value, low_is_bad=True):
    # misses listed worst first
    hit = [r for r in rows if ok(r)]
    miss = sorted((r for r in rows if not ok(r)), key=value, reverse=not low_is_bad)
    print(f"- {title}: {len(hit)}/{len(rows)}")
    for r in miss[:12]:
        print(f"    miss {_key(r)}: {value(r):.2f}")
    if len(miss) > 12:
        print(f"    ... and {len(miss) - 12} more")
    return len(hit), len(rows)


def report(path, l3=None):
    with open(path) as f:
        run = json.load(f)
    rows = run["rows"]
    l3 = l3 or _l3_of(run["meta"])
    cpu = run["meta"]["machine"].get("cpu", "?")
    print(f"# #13 targets from {os.path.basename(path)} ({cpu}, L3 {l3 and l3 >> 20} MiB, {len(rows)} rows)")
    torch_rows = [r for r in rows if r["op"] in TORCH_OPS and r.get("torch_cbp")]
    _count("PyTorch/cbp >= 1.1", torch_rows, lambda r: r["torch_cbp"] >= 1.1,
           lambda r: r["torch_cbp"])
    big_torch = [r for r in torch_rows if r["x_nbytes"] >= BIG]
    _count("PyTorch/cbp >= 2 on rows >= 100 MB", big_torch, lambda r: r["torch_cbp"] >= 2,
           lambda r: r["torch_cbp"])
    bwd = [r for r in rows if r["op"] == "batch_norm_backward"]
    for layout in ("NCHW", "NHWC"):
        big = [r for r in bwd if r["layout"] == layout and r["x_nbytes"] >= BIG]
        _count(f"backward <= 1.0x floor, >= 100 MB, {layout}", big,
               lambda r: r["cbp_floor"] <= 1.0, lambda r: r["cbp_floor"], low_is_bad=False)
    if l3:
        fit = [r for r in bwd if 2 * r["x_nbytes"] <= l3 and r["shape_str"] != "2x4x3x3"]
        _count(f"backward <= 1.2x floor, x + dy <= L3 ({l3 >> 20} MiB)", fit,
               lambda r: r["cbp_floor"] <= 1.2, lambda r: r["cbp_floor"], low_is_bad=False)
    stats = [r for r in rows if r["op"] == "channel_stats" and r["x_nbytes"] >= BIG]
    _count("channel_stats <= 1.3x floor, >= 100 MB", stats,
           lambda r: r["cbp_floor"] <= 1.3, lambda r: r["cbp_floor"], low_is_bad=False)
    tiny = [r for r in rows if r["shape_str"] == "2x4x3x3" and r["dtype"] == "float32"
            and r["op"] in TORCH_OPS + ("channel_stats",)]
    for r in tiny:
        print(f"    tiny {_key(r)}: cbp {r['cbp_ms'] * 1e3:.1f} us"
              + (f", PyTorch {r['torch_ms'] * 1e3:.1f} us" if r.get("torch_ms") else ""))


def tiny_calls(rounds=15, calls=2000):
    # the calls bench.py times for 2x4x3x3, with num_threads=None for cbp and
    # PyTorch's default threads
    import numpy as np
    import torch

    import cbp

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    st = cbp.channel_stats(x)
    inv_std = 1.0 / np.sqrt(st.var + 1e-5)
    scale, bias = np.ones(4), np.zeros(4)
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tw, tb = torch.ones(4), torch.zeros(4)
    tm = torch.from_numpy(st.mean.astype(np.float32))
    tis = torch.from_numpy(inv_std.astype(np.float32))
    aten = torch.ops.aten
    pairs = {
        "backward": (lambda: cbp.batch_norm_backward(x, dy, st.mean, inv_std, scale),
                     lambda: aten.native_batch_norm_backward(
                         tdy, tx, tw, None, None, tm, tis, True, 1e-5, [True, True, True])),
        "backprop stats": (lambda: cbp.channel_backprop_stats(x, dy, st.mean, inv_std),
                           lambda: aten.native_batch_norm_backward(
                               tdy, tx, tw, None, None, tm, tis, True, 1e-5,
                               [False, True, True])),
        "forward": (lambda: cbp.batch_norm_forward(x, scale, bias),
                    lambda: aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)),
        "channel_stats": (lambda: cbp.channel_stats(x),
                          lambda: torch.var_mean(tx, dim=(0, 2, 3), correction=0)),
    }
    print(f"# tiny 2x4x3x3 float32, num_threads=None, PyTorch threads "
          f"{torch.get_num_threads()}: median us per call over {rounds} rounds")
    for name, (fc, ft) in pairs.items():
        tc, tt = [], []
        for _ in range(rounds):
            for f, out in ((fc, tc), (ft, tt)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                out.append((time.perf_counter() - t0) / calls * 1e6)
        c, t = statistics.median(tc), statistics.median(tt)
        print(f"    {name}: cbp {c:.1f} us, PyTorch {t:.1f} us ({t / c:.2f}x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a bench.py JSON file (a full run)")
    p.add_argument("--l3", type=int, help="L3 bytes (default: the run's detected L3)")
    p.add_argument("--tiny", action="store_true", help="also time tiny calls now")
    args = p.parse_args(argv)
    report(args.run, args.l3)
    if args.tiny:
        tiny_calls()


if __name__ == "__main__":
    main()
