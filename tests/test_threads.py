"""cbp's OpenMP runtime is visible to threadpoolctl, and threadpoolctl limits it."""
import os
import sys

import numpy as np
import pytest

import cbp
from cbp import _kernels

threadpoolctl = pytest.importorskip("threadpoolctl")

needs_openmp = pytest.mark.skipif(not cbp.show_config(print_out=False)["openmp"],
                                  reason="serial build")


def _cbp_entries():
    rt = cbp.show_config(print_out=False)["openmp_runtime"]
    assert rt is not None
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    return rt, [i for i in info if os.path.realpath(i["filepath"])
                == os.path.realpath(rt["filepath"])]


@needs_openmp
def test_threadpoolctl_sees_cbp_runtime():
    rt, entries = _cbp_entries()
    assert entries, threadpoolctl.threadpool_info()
    assert rt["internal_api"] in ("openmp", "libgomp", "libomp", "vcomp", "intel")
    if sys.platform.startswith("linux") and cbp.show_config(print_out=False)[
            "compiler"].startswith("gcc"):
        assert rt["prefix"] == "libgomp"


@needs_openmp
def test_threadpool_limits_limits_cbp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 40, 40)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 8)
    stats = cbp.channel_stats(x, num_threads=2)
    want = cbp.batch_norm_backward(x, dy, stats.mean, stats.inv_std(), scale, num_threads=2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.max_threads() == 1
        assert cbp.show_config(print_out=False)["default_num_threads"] == 1
        s1 = cbp.channel_stats(x)
        got = cbp.batch_norm_backward(x, dy, s1.mean, s1.inv_std(), scale)
    # deterministic for every thread count: bitwise equal
    np.testing.assert_array_equal(s1.mean, stats.mean)
    np.testing.assert_array_equal(s1.m2, stats.m2)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@needs_openmp
def test_threadpool_limits_via_threadpoolctl_names_cbp_library():
    rt, _ = _cbp_entries()
    before = _kernels.max_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        rt_in = cbp.show_config(print_out=False)["openmp_runtime"]
        assert rt_in["num_threads"] == 1
    assert _kernels.max_threads() == before
