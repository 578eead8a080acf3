"""Every kernel path is reached by the value tests and by the golden set.

Paths are read from cbp.plan_info, which computes them with the same plan
functions the kernels run, so these tests hold when a constant in
csrc/cbp_tuning.h moves (and fail when a path is no longer reached, instead of
a comment going stale).
"""
import itertools
import math

import numpy as np
import pytest

import cbp
import golden
from conftest import MEDIUM_SHAPES, SHAPES, layout_shape
from test_values import SIZE_PATH_CASES, STREAM_CASES

OPS = ["channel_stats", "channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
       "batch_norm_forward", "batch_norm_inference"]

# (part, name, streaming stores): every path of the reductions and sweeps
REDUCTIONS = {"nchw_plane", "nchw_plane_cache_blocked", "nchw_short_plane_columns", "rows",
              "rows_quartered"}
SWEEPS = {(s, nt) for s in ("nchw_plane_units", "nchw_plane_runs", "rows_sweep",
                            "rows_sweep_four") for nt in (False, True)}
SWEEPS.add(("rows_sweep_quartered", True))  # only over 32 MiB, so always streamed


def _paths(canonical_shape, layout, dtype, cache=None):
    shape = layout_shape(canonical_shape, layout)
    old = cbp._kernels.cache_block_bytes(cache) if cache else None
    try:
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
        if info["reduction"] == "nchw_short_plane_columns" and info["image_groups"] > 1:
            found.add(("short-plane image groups", True))
    return found


def _required():
    req = {("reduction", r) for r in REDUCTIONS} | {("sweep", s) for s in SWEEPS}
    return req | {("widened rows", True), ("short-plane image groups", True)}


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
    for nt in (2, 3, 7, 16):
        info = cbp.plan_info(shape, dtype=dtype, layout=layout, op=op, num_threads=nt)
        # units are fixed by the shape; only their spread over threads changes
        assert info["unit_elements"] == base["unit_elements"]
        assert info["kernel"] == base["kernel"]
        assert info["threads"] == nt and len(info["thread_elements"]) == nt
        assert sum(info["thread_elements"]) == size
        assert info["isa"] == cbp.show_config(print_out=False)["isa"]


def test_plan_info_names_the_fused_paths():
    big = cbp.plan_info((32, 64, 112, 112), op="batch_norm_backward")
    assert big["kernel"] == "nchw_plane_cache_blocked" and big["streaming_stores"]
    assert big["blocks"] > 1
    assert cbp.plan_info((32, 64, 112, 112), op="channel_backprop_stats")["kernel"] == "nchw_plane"
    assert cbp.plan_info((32, 2048, 7, 7), op="channel_stats")["kernel"] == \
        "nchw_short_plane_columns"
    nhwc = cbp.plan_info((32, 7, 7, 2048), layout="NHWC", op="batch_norm_dx")
    assert nhwc["kernel"] == "rows_sweep_four" and nhwc["reduction"] is None
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
