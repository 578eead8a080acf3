"""The golden set: seeded inputs that reach every kernel path, and SHA-256 of
what every public operation returns for them.

The hashes in ``golden_hashes.json`` pin the exact bits of every result, so a
refactor of the kernels (new files, new dispatch, a new instruction set) can
be checked to change nothing. They change only with a change of summation
order made on purpose (an "order" constant of ``csrc/cbp_tuning.h``); the
README's change log then says why.

Inputs come from PCG64's raw 64-bit stream turned into floats by exact
arithmetic (+, -, *, / only), so they are the same bits on every NumPy
version, CPU and platform.

    python tests/golden.py            # print {case: hash} as JSON (tests/test_golden.py
                                      # runs this under every instruction set)
    python tests/golden.py --write    # rewrite golden_hashes.json (an order change only)
"""
import hashlib
import json
import os
import sys

import numpy as np

import cbp
from cbp import _kernels
from schedule import case_llc

HERE = os.path.dirname(os.path.abspath(__file__))
HASH_FILE = os.path.join(HERE, "golden_hashes.json")

# (canonical NCHW shape, layout, dtype, cache block bytes or None for the default).
# What each case reaches is asserted through cbp.plan_info in tests/test_paths.py.
CASES = [
    # small shapes: C = 1, N = 1, 1x1 and 7x7 planes, 2-D, 3-D, 5-D
    ((4, 1, 3, 3), "NCHW", "float32", None),
    ((5, 4, 1, 1), "NCHW", "float64", None),
    ((2, 3, 7, 7), "NCHW", "float32", None),
    ((2, 3, 7, 7), "NHWC", "float64", None),
    ((3, 5, 7, 9), "NHWC", "float32", None),
    ((2, 300, 2, 2), "NHWC", "float32", None),
    ((6, 5), "NCHW", "float32", None),
    ((3, 4, 5), "NCHW", "float64", None),
    ((2, 3, 2, 3, 4), "NHWC", "float32", None),
    # planes of >= 1024 and of 256..1023 elements; several image groups
    ((3, 2, 40, 40), "NCHW", "float32", None),
    ((3, 2, 40, 40), "NCHW", "float64", None),
    ((5, 3, 20, 20), "NCHW", "float32", None),
    ((40, 2, 50, 41), "NCHW", "float32", None),
    # short planes: column moments with partial channel blocks
    ((4, 70, 5, 5), "NCHW", "float32", None),
    ((4, 70, 5, 5), "NCHW", "float64", None),
    ((64, 130, 3, 3), "NCHW", "float32", None),
    # cache-blocked fused passes (small blocks force several per call)
    ((6, 40, 32, 32), "NCHW", "float32", 65536),
    ((6, 40, 32, 32), "NCHW", "float64", 65536),
    ((5, 9, 17, 19), "NCHW", "float32", 4096),
    # rows: widened small C (partial last fused row), C >= 64, short moments rows
    ((301, 5), "NCHW", "float32", None),
    ((301, 5), "NCHW", "float64", None),
    ((97, 70), "NCHW", "float32", None),
    ((3, 3, 33, 35), "NHWC", "float32", None),
    ((2, 3, 4, 17, 19), "NHWC", "float64", None),
    ((50, 200), "NCHW", "float32", None),
    # rows of >= 8 KiB and shorter ones, in cache and over 4 MiB (the sums of
    # rows take four quarters per step at every width; the moments eighths
    # from 8 KiB), widened rows over 4 MiB
    ((9, 2050), "NCHW", "float64", None),
    ((600, 1030), "NCHW", "float64", None),
    # quarters that would start a multiple of 4 KiB apart take one row fewer
    # (CBP_PART_SKEW_BYTES): fused NHWC rows of 2 KiB, 2-D rows of 2 and 6 KiB
    ((4, 256, 8, 8), "NHWC", "float32", None),
    ((256, 768), "NCHW", "float64", None),
    ((1024, 512), "NCHW", "float32", None),
    # NCHW short planes as plane runs: 56 images per image group, image blocks
    # of 1, 1, 2, 4, 8, 16 and 24
    ((225, 300, 7, 7), "NCHW", "float64", None),
    # NCHW short planes as columns, eight rows per step from memory (APART_ROWS):
    # 45 images per image group: a two-pass block of 32 rows, a one-pass one of 13
    ((360, 300, 5, 5), "NCHW", "float64", None),
    ((1100, 1024), "NCHW", "float32", None),
    ((16, 3, 150, 150), "NHWC", "float32", None),
    # streaming stores (outputs of >= 16 MiB): planes starting mid-line, planes of
    # whole lines, short planes of >= 512 bytes, rows of 1028 bytes, four rows of
    # 8200 bytes, and > 32 MiB of long rows (quartered sweeps)
    ((4, 17, 250, 251), "NCHW", "float32", None),
    ((8, 64, 64, 64), "NCHW", "float64", None),
    ((64, 460, 12, 12), "NCHW", "float32", None),
    ((260, 257, 8, 8), "NHWC", "float32", None),
    ((2100, 2050), "NCHW", "float32", None),
    ((4225, 2048), "NCHW", "float32", None),
]

# Cases whose x-shaped outputs are also written to an `out` one element past a
# 64-byte boundary (every streamed row or plane then starts mid-line).
MISALIGNED_OUT = {(4, 17, 250, 251), (8, 64, 64, 64), (260, 257, 8, 8), (2100, 2050)}


def case_id(case):
    shape, layout, dtype, cache = case
    cid = "x".join(map(str, shape)) + f"-{layout}-{dtype}"
    return cid if cache is None else cid + f"-cache{cache}"


def _uniform(rng, n):
    """n floats in [0, 1) from the raw stream: exact, NumPy-version independent."""
    return (rng.random_raw(n) >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0 ** 53)


def _bcast(v, ndim, layout):
    shape = [1] * ndim
    shape[1 if layout == "NCHW" else -1] = v.size
    return v.reshape(shape)


def make_case(case, seed=1234):
    shape, layout, dtype, _ = case
    rng = np.random.PCG64(seed)
    C = shape[1]
    shp = tuple(shape) if layout == "NCHW" else (shape[0],) + tuple(shape[2:]) + (C,)
    size = int(np.prod(shp))
    loc = 4.0 * _uniform(rng, C) - 2.0
    spread = 0.5 + 1.5 * _uniform(rng, C)
    # sums of three uniforms: bell-shaped, mean 0, std 1/2
    z = _uniform(rng, size) + _uniform(rng, size) + _uniform(rng, size) - 1.5
    nd = len(shp)
    x = (_bcast(loc, nd, layout) + _bcast(spread, nd, layout) * z.reshape(shp)).astype(dtype)
    dy = (2.0 * _uniform(rng, size) - 1.0).reshape(shp).astype(dtype)
    vec = lambda lo, hi: lo + (hi - lo) * _uniform(rng, C)  # noqa: E731
    return dict(x=x, dy=dy, layout=layout,
                mean=loc + vec(-0.01, 0.01), inv_std=2.0 / spread,
                var=spread * spread / 4.0, scale=vec(-2.0, 2.0), bias=vec(-1.0, 1.0),
                dscale=vec(-50.0, 50.0), dbias=vec(-50.0, 50.0))


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _misaligned_like(x):
    buf = np.empty(x.size + 64 // x.itemsize, dtype=x.dtype)
    first = (-(buf.ctypes.data // buf.itemsize) % (64 // buf.itemsize)) + 1
    return buf[first:first + x.size].reshape(x.shape)


def case_outputs(case):
    """{operation: [arrays]} for one case, every public operation, every variant
    whose bits must agree (in place, misaligned out, sync with one process)."""
    d = make_case(case)
    x, dy, lay = d["x"], d["dy"], d["layout"]
    mean, inv_std, scale, bias = d["mean"], d["inv_std"], d["scale"], d["bias"]
    M = x.size // x.shape[1 if lay == "NCHW" else -1]
    one = lambda buf: None  # noqa: E731  (an allreduce over a group of one)
    res = {}
    st = cbp.channel_stats(x, layout=lay)
    res["channel_stats"] = [st.mean, st.m2, st.var]
    res["channel_backprop_stats"] = list(
        cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=lay))
    res["batch_norm_dx"] = [cbp.batch_norm_dx(x, dy, mean, inv_std, scale, d["dscale"],
                                              d["dbias"], M, layout=lay)]
    res["batch_norm_backward"] = list(
        cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=lay))
    res["batch_norm_forward"] = list(cbp.batch_norm_forward(x, scale, bias, layout=lay))
    res["batch_norm_inference"] = [cbp.batch_norm_inference(x, scale, bias, mean, d["var"],
                                                            layout=lay)]
    res["sync_channel_stats"] = [cbp.sync_channel_stats(x, allreduce=one, layout=lay).m2]
    res["sync_batch_norm_forward"] = list(
        cbp.sync_batch_norm_forward(x, scale, bias, allreduce=one, layout=lay))
    res["sync_batch_norm_backward"] = list(
        cbp.sync_batch_norm_backward(x, dy, mean, inv_std, scale, allreduce=one, layout=lay))
    half = x.shape[0] // 2
    merged = cbp.ChannelStats.merge(cbp.channel_stats(x[:half], layout=lay),
                                    cbp.channel_stats(x[half:], layout=lay))
    res["ChannelStats.merge"] = [merged.mean, merged.m2]

    # variants that must give the same bits as the calls above
    variants = {}
    w = dy.copy()
    variants["batch_norm_backward"] = cbp.batch_norm_backward(
        x, w, mean, inv_std, scale, layout=lay, out=w)[0]
    w = dy.copy()
    variants["batch_norm_dx"] = cbp.batch_norm_dx(x, w, mean, inv_std, scale, d["dscale"],
                                                  d["dbias"], M, layout=lay, out=w)
    w = x.copy()
    variants["batch_norm_forward"] = cbp.batch_norm_forward(w, scale, bias, layout=lay,
                                                            out=w)[0]
    w = x.copy()
    variants["batch_norm_inference"] = cbp.batch_norm_inference(
        w, scale, bias, mean, d["var"], layout=lay, out=w)
    for op, got in variants.items():
        if not np.array_equal(got, res[op][0]):
            raise AssertionError(f"{case_id(case)}: {op} in place differs from out=None")
    if tuple(case[0]) in MISALIGNED_OUT:
        out = _misaligned_like(x)
        calls = {
            "batch_norm_backward": lambda: cbp.batch_norm_backward(
                x, dy, mean, inv_std, scale, layout=lay, out=out),
            "batch_norm_dx": lambda: cbp.batch_norm_dx(
                x, dy, mean, inv_std, scale, d["dscale"], d["dbias"], M, layout=lay, out=out),
            "batch_norm_forward": lambda: cbp.batch_norm_forward(
                x, scale, bias, layout=lay, out=out),
        }
        for op, call in calls.items():
            call()
            if not np.array_equal(out, res[op][0]):
                raise AssertionError(f"{case_id(case)}: {op} into a misaligned out differs")
    return res


def case_hashes(case):
    shape, layout, dtype, cache = case
    old = _kernels.cache_block_bytes(cache) if cache is not None else None
    try:
        with case_llc():
            out = case_outputs(case)
    finally:
        if old is not None:
            _kernels.cache_block_bytes(old)
    return {f"{case_id(case)}:{op}": _digest(*arrays) for op, arrays in out.items()}


def all_hashes():
    found = {}
    for case in CASES:
        found.update(case_hashes(case))
    return found


def load():
    with open(HASH_FILE) as f:
        return json.load(f)


if __name__ == "__main__":
    hashes = all_hashes()
    if "--write" in sys.argv[1:]:
        with open(HASH_FILE, "w") as f:
            json.dump(hashes, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {len(hashes)} hashes to {HASH_FILE}")
    else:
        json.dump(hashes, sys.stdout, sort_keys=True)
