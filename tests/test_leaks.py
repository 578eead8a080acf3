"""No call leaks memory: resident memory stays flat over many calls.

Every kernel allocates its scratch (per-unit partial sums, column
accumulators, coefficient rows) with malloc and frees it before it returns,
on the success and the error paths alike. This measures what the process
keeps: RSS after a warm-up, then after many more calls of every public
function (error paths included). Linux only (/proc/self/statm).
"""
import os

import numpy as np
import pytest

import cbp

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm"),
    # AddressSanitizer keeps freed memory in quarantine (.ci/sanitize): RSS grows by design
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="under AddressSanitizer"),
]


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _every_call(x, dy, layout):
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    one = lambda buf: None  # noqa: E731
    mean, inv_std, scale, bias = np.zeros(C), np.ones(C), np.ones(C), np.zeros(C)
    out = np.empty_like(x)
    cbp.channel_stats(x, layout=layout)
    cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    cbp.batch_norm_dx(x, dy, mean, inv_std, scale, scale, bias, 7, layout=layout, out=out)
    cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout, out=out)
    cbp.batch_norm_forward(x, scale, bias, layout=layout, out=out)
    cbp.batch_norm_inference(x, scale, bias, mean, inv_std, layout=layout, out=out)
    cbp.sync_batch_norm_backward(x, dy, mean, inv_std, scale, allreduce=one, layout=layout)
    cbp.plan_info(x.shape, dtype=x.dtype, layout=layout, op="batch_norm_backward")
    for bad in (dict(num_threads=0), dict(layout="NCW")):
        try:
            cbp.channel_stats(x, **bad)
        except ValueError:
            pass
    try:
        cbp.batch_norm_dx(x, dy, mean, -inv_std, scale, scale, bias, 7, layout=layout)
    except ValueError:
        pass


@pytest.mark.parametrize("shape,layout", [((4, 40, 9, 9), "NCHW"), ((4, 9, 9, 40), "NHWC"),
                                          ((3, 5, 40, 40), "NCHW")])
def test_rss_flat_over_many_calls(shape, layout):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for _ in range(200):  # warm-up: allocator arenas, thread stacks, caches
        _every_call(x, dy, layout)
    before = _rss_bytes()
    for _ in range(1500):
        _every_call(x, dy, layout)
    grown = _rss_bytes() - before
    # a leak of even 64 bytes per call would be 1500 * 12 calls * 64 = 1.1 MiB
    assert grown < 1 << 20, f"RSS grew by {grown / 2**20:.2f} MiB over 1500 rounds"
