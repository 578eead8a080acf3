"""Every kernel path is reached by the value tests and by the golden set.

Paths are read from cbp.plan_info, which computes them with the same plan
functions the kernels run, so these tests hold when a constant in
csrc/cbp_tuning.h moves (and fail when a path is no longer reached, instead of
a comment going stale).
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import cbp
import golden
from conftest import MEDIUM_SHAPES, SHAPES, layout_shape
from schedule import case_llc
from test_values import SIZE_PATH_CASES, STREAM_CASES

OPS = ["channel_stats", "channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
       "batch_norm_forward", "batch_norm_inference"]

# (part, name, streaming stores): every path of the reductions and sweeps
REDUCTIONS = {"nchw_plane", "nchw_plane_cache_blocked", "nchw_short_plane_columns",
              "nchw_short_plane_runs", "rows_quartered", "rows_eighths"}
SWEEPS = {(s, nt) for s in ("nchw_plane_units", "nchw_planes", "rows_sweep",
                            "rows_sweep_four") for nt in (False, True)}
SWEEPS.add(("rows_sweep_quartered", True))  # also unstreamed for dX from 4 MiB shares


def _paths(canonical_shape, layout, dtype, cache=None):
    shape = layout_shape(canonical_shape, layout)
    old = cbp._kernels.cache_block_bytes(cache) if cache else None
    try:
        with case_llc():
            infos = [cbp.plan_info(shape, dtype=dtype, layout=layout, op=op) for op in OPS]
    finally:
        if old is not None:
            cbp._kernels.cache_block_bytes(old)
    found = set()
    for info in infos:
        if info["reduction"]:
            found.add(("reduction", info["reduction"]))
        if info["sweep"]:
            found.add(("sweep", (info["sweep"], info["streaming_stores"])))
        if info.get("widen", 1) > 1:
            found.add(("widened rows", True))
        if info["reduction"] in ("nchw_short_plane_columns", "nchw_short_plane_runs") and \
                info["image_groups"] > 1:
            found.add(("short-plane image groups", info["reduction"]))
        if info.get("plane_chunks", 1) > 1:
            found.add(("plane chunks", info["reduction"]))
    return found


def _required():
    req = {("reduction", r) for r in REDUCTIONS} | {("sweep", s) for s in SWEEPS}
    return req | {("widened rows", True),
                  ("short-plane image groups", "nchw_short_plane_columns"),
                  ("short-plane image groups", "nchw_short_plane_runs"),
                  ("plane chunks", "nchw_plane"), ("plane chunks", "nchw_plane_cache_blocked")}


def test_value_tests_reach_every_path():
    found = set()
    for shape, layout, dtype in itertools.product(SHAPES + MEDIUM_SHAPES, ("NCHW", "NHWC"),
                                                  ("float32", "float64")):
        found |= _paths(shape, layout, dtype)
    for shape, dtype in SIZE_PATH_CASES:
        found |= _paths(shape, "NHWC", np.dtype(dtype).name)
    for shape, dtype, layout in STREAM_CASES:
        found |= _paths(shape, layout, np.dtype(dtype).name)
    for shape in MEDIUM_SHAPES:  # test_values.test_small_cache_blocks
        found |= _paths(shape, "NCHW", "float32", cache=4096)
    missing = _required() - found
    assert not missing, f"no value test reaches {sorted(missing)}"


def test_golden_set_reaches_every_path():
    found = set()
    for shape, layout, dtype, cache in golden.CASES:
        found |= _paths(shape, layout, dtype, cache)
    missing = _required() - found
    assert not missing, f"no golden case reaches {sorted(missing)}"


@pytest.mark.parametrize("op", OPS + ["sync_channel_stats", "sync_batch_norm_forward",
                                      "sync_batch_norm_backward"])
@pytest.mark.parametrize("shape,layout", [((8, 64, 28, 28), "NCHW"), ((8, 28, 28, 64), "NHWC"),
                                          ((32, 2048, 7, 7), "NCHW"), ((300, 70), "NCHW"),
                                          ((2, 3, 4, 5, 6), "NHWC")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plan_units_cover_the_array_for_any_team(op, shape, layout, dtype):
    size = math.prod(shape)
    base = cbp.plan_info(shape, dtype=dtype, layout=layout, op=op, num_threads=1)
    assert sum(base["unit_elements"]) == size
    assert base["units"] == len(base["unit_elements"]) >= 1
    assert base["thread_elements"] == [size]
    grain = cbp.show_config(print_out=False)["min_elements_per_thread"]
    for nt in (2, 3, 7, 16):
        info = cbp.plan_info(shape, dtype=dtype, layout=layout, op=op, num_threads=nt)
        # units are fixed by the shape; only their spread over threads changes
        assert info["unit_elements"] == base["unit_elements"]
        # the same path; whether it is cache blocked follows the team's L2s
        blocked = "_cache_blocked"
        assert info["kernel"].removesuffix(blocked) == base["kernel"].removesuffix(blocked)
        team = min(nt, max(1, size // grain))  # no thread for less than a grain
        assert info["threads"] == team and len(info["thread_elements"]) == team
        assert sum(info["thread_elements"]) == size
        assert info["isa"] == cbp.show_config(print_out=False)["isa"]


def test_small_calls_run_on_fewer_threads():
    grain = cbp.show_config(print_out=False)["min_elements_per_thread"]
    assert 1024 <= grain <= 1 << 20
    assert cbp.plan_info((2, 4, 3, 3), num_threads=2)["threads"] == 1
    # exactly k grains of elements allow k threads, one element fewer k - 1
    C = 16
    for k in (2, 3):
        assert cbp.plan_info((k * grain // C, C), num_threads=8)["threads"] == k
        assert cbp.plan_info((k * grain // C - 1, C), num_threads=8)["threads"] == k - 1


def test_caches_are_reported():
    caches = cbp.show_config(print_out=False)["caches"]
    assert caches == cbp.plan_info((8, 4, 5, 5))["caches"]
    llc = caches["l3"] or caches["l2"]
    if caches["l3"] and caches["l2"] and caches["l3_shared_by"]:
        l2s = caches["l2"] * caches["l3_shared_by"] // max(1, caches["l2_shared_by"])
        llc = min(llc, 16 * l2s)
    assert caches["last_level_cache"] == (llc or 8 << 20)
    assert caches["last_level_cache_assumed"] == (not llc)
    assert caches["last_level_cache_capped"] == (0 < llc < (caches["l3"] or caches["l2"]))
    # the derived sizes (csrc/cbp_tuning.h) and the default cache block in use
    assert caches["cache_block"] == caches["last_level_cache"] // 8 * 3
    assert caches["streaming_store_from"] == caches["last_level_cache"] // 2
    assert caches["streaming_store_rows_from"] == caches["last_level_cache"] // 3
    # the default block: 3/8 of the LLC, at most 3/8 of each thread's L2 share per thread
    l2_share = caches["l2"] // max(1, caches["l2_shared_by"])
    assert caches["cache_block_per_thread"] == l2_share // 8 * 3
    assert cbp._kernels.cache_block_bytes() == 0  # none set
    for team in (1, 2, 16, 128):
        want = caches["cache_block"]
        if l2_share:
            want = min(want, team * caches["cache_block_per_thread"])
        assert cbp.cython_api.default_cache_block(team) == want
    for team in (1, 2):
        info = cbp.plan_info((32, 64, 64, 64), num_threads=team)
        assert info["threads"] == team
        assert info["cache_block_bytes"] == cbp.cython_api.default_cache_block(team)
    old = cbp._kernels.cache_block_bytes(12345)
    try:  # a block that is set holds for every team
        assert cbp.plan_info((32, 64, 64, 64), num_threads=2)["cache_block_bytes"] == 12345
    finally:
        cbp._kernels.cache_block_bytes(old)
    # 4 KiB blocks, as many as a third of the L1d holds beside the one in use
    blocks = (caches["l1d"] or 32 << 10) // (3 << 12) - 1
    assert caches["moments_prefetch_ahead"] == 4096 * min(4, max(1, blocks))


@pytest.mark.parametrize("l2,l3,l2_by,l3_by,want", [
    (2 << 20, 480 << 20, 1, 2, 64 << 20),    # a VM given its host's whole L3
    (2 << 20, 480 << 20, 1, 0, 480 << 20),   # sharing unknown: taken as reported
    (512 << 10, 16 << 20, 1, 2, 16 << 20),   # 16x exactly: kept
    (1 << 20, 96 << 20, 2, 16, 96 << 20),    # a 3D V-Cache CCD, 8 cores x 2 threads
    (1 << 20, 96 << 20, 2, 4, 32 << 20),     # ... claimed by 2 of its cores
    (4 << 20, 0, 1, 0, 4 << 20),             # no L3: the L2
    (0, 0, 0, 0, 0),                         # nothing reported
    (0, 32 << 20, 0, 2, 32 << 20)])          # no L2 to compare with
def test_counted_last_level_cache(l2, l3, l2_by, l3_by, want):
    assert cbp.cython_api.counted_last_level_cache(l2, l3, l2_by, l3_by) == want


@pytest.mark.parametrize("text,l1d,l2,l3", [("l1d=48K,l2=2M,l3=0", 48 << 10, 2 << 20, 0),
                                            ("L3=1G", None, None, 1 << 30),
                                            ("l2=786432", None, 786432, None)])
def test_cache_sizes_override(text, l1d, l2, l3):
    code = ("import cbp, json; print(json.dumps(cbp.show_config(print_out=False)['caches']))")
    env = dict(os.environ, CBP_CACHE_SIZES=text)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["source"] == "CBP_CACHE_SIZES"
    for key, want in (("l1d", l1d), ("l2", l2), ("l3", l3)):
        if want is not None:
            assert got[key] == want
    want = cbp.cython_api.counted_last_level_cache(got["l2"], got["l3"], got["l2_shared_by"],
                                                 got["l3_shared_by"])
    assert got["last_level_cache"] == (want or 8 << 20)
    assert got["cache_block"] == got["last_level_cache"] // 8 * 3
    if l3 is not None:  # an L3 given is taken as given, never capped
        assert got["last_level_cache"] == (l3 or got["l2"] or 8 << 20)
    if l1d is not None:
        assert got["moments_prefetch_ahead"] == 3 * 4096  # 48 KiB
    if l2 is not None:  # an L2 given has no sharing count: all of it per thread
        assert got["cache_block_per_thread"] == l2 // 8 * 3


@pytest.mark.parametrize("l1d,ahead", [("0", 4096), ("16K", 4096), ("32K", 4096),
                                       ("48K", 12288), ("64K", 16384), ("1M", 16384)])
def test_moments_prefetch_follows_l1d(l1d, ahead):
    # a schedule only (prefetch hints change no bit): its rule
    code = ("import cbp; print(cbp.show_config(print_out=False)['caches']"
            "['moments_prefetch_ahead'])")
    env = dict(os.environ, CBP_CACHE_SIZES="l1d=" + l1d)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == ahead


def test_bad_cache_sizes_override():
    env = dict(os.environ, CBP_CACHE_SIZES="l3=lots")
    proc = subprocess.run([sys.executable, "-c", "import cbp"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "CBP_CACHE_SIZES" in proc.stderr


def test_plan_info_names_the_fused_paths():
    big = cbp.plan_info((32, 64, 112, 112), op="batch_norm_backward")
    assert big["kernel"] == "nchw_plane_cache_blocked" and big["streaming_stores"]
    assert big["blocks"] > 1
    assert cbp.plan_info((32, 64, 112, 112), op="channel_backprop_stats")["kernel"] == "nchw_plane"
    assert cbp.plan_info((32, 2048, 7, 7), op="channel_stats")["kernel"] == \
        "nchw_short_plane_runs"
    assert cbp.plan_info((32, 2048, 5, 6), op="channel_stats")["kernel"] == \
        "nchw_short_plane_columns"
    nhwc = cbp.plan_info((32, 7, 7, 2048), layout="NHWC", op="batch_norm_dx", num_threads=1)
    assert nhwc["kernel"] == "rows_sweep_quartered" and nhwc["reduction"] is None
    # the dX sweep's quarters follow each thread's share (QUARTER_BYTES), the
    # affine map's the last-level cache; rows of 2 KiB never take them
    for shape, op, threads, name in [
            ((1100, 1030), "batch_norm_dx", 1, "rows_sweep_quartered"),
            ((1100, 1030), "batch_norm_dx", 2, "rows_sweep"),
            ((1100, 1030), "batch_norm_forward", 1, "rows_sweep"),
            ((1024, 1024), "batch_norm_dx", 1, "rows_sweep"),
            ((2100, 1030), "batch_norm_backward", 2, "rows_sweep_quartered"),
            ((9000, 512), "batch_norm_dx", 1, "rows_sweep")]:
        got = cbp.plan_info(shape, op=op, num_threads=threads)
        assert got["sweep"] == name, (shape, op, threads, got["sweep"])
    # the sweeps fuse pixels into rows of at least 2 KiB, no more than the
    # array holds, in multiples of the reductions' fused rows
    for shape, dtype, k, ks in [((16, 4, 4, 64), "float32", 1, 8),
                                ((16, 4, 4, 64), "float64", 1, 4),
                                ((16, 4, 4, 20), "float32", 4, 28),
                                ((16, 4, 4, 1024), "float32", 1, 1),
                                ((1, 2, 3, 16), "float32", 4, 4)]:
        info = cbp.plan_info(shape, dtype=dtype, layout="NHWC", op="batch_norm_dx")
        assert (info["widen"], info["sweep_widen"]) == (k, ks), shape
    # in cache, the dX sweep takes rows of 256 to 2047 elements one at a
    # time; shorter rows (only in arrays too small to fuse more) and the
    # affine map four per coefficient load
    for op, shape, sweep in [("batch_norm_dx", (16, 4, 4, 256), "rows_sweep"),
                             ("batch_norm_backward", (16, 4, 4, 1024), "rows_sweep"),
                             ("batch_norm_dx", (16, 4, 4, 128), "rows_sweep"),
                             ("batch_norm_dx", (1, 2, 3, 16), "rows_sweep_four"),
                             ("batch_norm_inference", (16, 4, 4, 256), "rows_sweep_four"),
                             ("batch_norm_forward", (16, 4, 4, 1024), "rows_sweep_four")]:
        info = cbp.plan_info(shape, layout="NHWC", op=op)
        assert info["sweep"] == sweep, (op, shape, info["sweep"])
    # the row backprop sums take four quarters per step on rows of every
    # width, in cache and from memory (the order does not follow the size)
    for shape, dtype, kernel in [((600, 1030), "float64", "rows_quartered"),
                                 ((600, 1020), "float64", "rows_quartered"),
                                 ((1100, 2040), "float32", "rows_quartered"),
                                 ((64, 14, 14, 1024), "float32", "rows_quartered"),
                                 ((64, 56, 56, 3), "float32", "rows_quartered"),
                                 ((7, 5), "float64", "rows_quartered")]:
        layout = "NHWC" if len(shape) == 4 else "NCHW"
        info = cbp.plan_info(shape, dtype=dtype, layout=layout, op="channel_backprop_stats")
        assert info["kernel"] == kernel, (shape, dtype, info["kernel"])
    # the row moments step through eight parts of a row group on rows of 8 KiB
    for shape, dtype, kernel in [((100, 2048), "float32", "rows_eighths"),
                                 ((100, 2047), "float32", "rows_quartered"),
                                 ((100, 1024), "float64", "rows_eighths"),
                                 ((4, 4, 4, 1023), "float64", "rows_quartered")]:
        layout = "NHWC" if len(shape) == 4 else "NCHW"
        info = cbp.plan_info(shape, dtype=dtype, layout=layout, op="channel_stats")
        assert info["kernel"] == kernel, (shape, dtype, info["kernel"])
    assert cbp.plan_info((4, 0, 3), op="channel_stats")["kernel"] == "empty"


def test_plan_info_rejects_bad_arguments():
    with pytest.raises(ValueError, match="op must be one of"):
        cbp.plan_info((2, 3, 4, 4), op="conv")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        cbp.plan_info((2, 3, 4, 4), dtype="int32")
    with pytest.raises(ValueError, match="2 to 5"):
        cbp.plan_info((2,))
    with pytest.raises(ValueError, match="layout"):
        cbp.plan_info((2, 3), layout="NCW")
    with pytest.raises(ValueError, match="num_threads"):
        cbp.plan_info((2, 3), num_threads=0)


_STREAM_BITS_CODE = r"""
import hashlib, json, sys
import numpy as np
import cbp
out = {}
for shape, dtype, off, nt in json.loads(sys.argv[1]):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[-1]
    scale, bias = rng.standard_normal(C), rng.standard_normal(C)
    buf = np.empty(x.size + 64, dtype=dtype)
    first = (-(buf.ctypes.data // buf.itemsize) % (64 // buf.itemsize)) + off
    o = buf[first:first + x.size].reshape(shape)
    h = hashlib.sha256()
    st = cbp.channel_stats(x, layout="NHWC", num_threads=nt)
    inv = st.inv_std(1e-5)
    for part in (cbp.batch_norm_backward(x, dy, st.mean, inv, scale, layout="NHWC", out=o,
                                         num_threads=nt)
                 + cbp.batch_norm_forward(x, scale, bias, layout="NHWC", out=o,
                                          num_threads=nt)[:1]):
        h.update(np.ascontiguousarray(part).tobytes())
    ds, db = cbp.channel_backprop_stats(x, dy, st.mean, inv, layout="NHWC", num_threads=nt)
    d2 = dy.copy()
    cbp.batch_norm_dx(x, d2, st.mean, inv, scale, ds, db, x.size // C, layout="NHWC", out=d2,
                      num_threads=nt)  # in place
    h.update(d2.tobytes())
    nts = {op: cbp.plan_info(shape, dtype=dtype, layout="NHWC", op=op,
                             num_threads=nt)["streaming_stores"]
           for op in ("batch_norm_backward", "batch_norm_forward", "batch_norm_dx")}
    out[repr((shape, dtype, off, nt))] = [h.hexdigest(), nts]
print(json.dumps(out))
"""


def test_streamed_row_sweeps_bitwise_equal_plain():
    # the row sweeps write whole lines with streaming stores, also those that
    # straddle two rows; the same arithmetic as plain stores, so the same bits.
    # A small LLC makes these arrays stream, a large one keeps plain stores.
    # Rows of 1028 and 2400 bytes (every row ends mid-line, at a new offset),
    # outputs 0, 1 and 3 elements past a line, 1 to 3 threads (shares that
    # start mid-row); all above 4 MiB, where the sweeps go one row at a time,
    # and rows of 4120 and 4160 bytes, which the small LLC sends through the
    # quartered sweep (SWEEP_QUARTER_ROW_BYTES; shares not a multiple of four
    # rows).
    cases = [((4200, 257), "float32", 0, 1), ((4200, 257), "float32", 1, 2),
             ((6, 26, 27, 256), "float32", 3, 3), ((2200, 300), "float64", 1, 1),
             ((2200, 300), "float64", 0, 2), ((1100, 1030), "float32", 1, 2),
             ((1101, 520), "float64", 3, 1)]
    got = {}
    for l3 in ("3M", "4G"):
        env = dict(os.environ, CBP_CACHE_SIZES="l3=" + l3)
        proc = subprocess.run([sys.executable, "-c", _STREAM_BITS_CODE, json.dumps(cases)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        got[l3] = json.loads(proc.stdout)
    for key, (digest, nts) in got["3M"].items():
        plain_digest, plain_nts = got["4G"][key]
        assert all(nts.values()) and not any(plain_nts.values()), (key, nts, plain_nts)
        assert digest == plain_digest, key
