"""Python threads calling cbp at once get the bits a lone call gets.

The kernels release the GIL, so calls from several Python threads overlap,
each with its own OpenMP team; nothing may be shared between them but the
read-only inputs (the same x and dy are read by every thread here).
"""
import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cbp

CASES = [((8, 16, 20, 20), "NCHW"), ((8, 10, 10, 24), "NHWC"), ((300, 70), "NCHW"),
         ((6, 40, 7, 7), "NCHW")]


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _inputs(shape, layout, dtype):
    rng = np.random.default_rng(int(np.prod(shape)) + len(layout))
    x = rng.standard_normal(shape).astype(dtype) * 3 + 1
    dy = rng.standard_normal(shape).astype(dtype)
    x.flags.writeable = False
    dy.flags.writeable = False
    return x, dy


def _everything(x, dy, layout, num_threads):
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    kw = dict(layout=layout, num_threads=num_threads)
    scale, bias = np.linspace(0.5, 2, C), np.linspace(-1, 1, C)
    st = cbp.channel_stats(x, **kw)
    y, mean, inv_std = cbp.batch_norm_forward(x, scale, bias, **kw)
    dx, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, **kw)
    ds2, db2 = cbp.channel_backprop_stats(x, dy, mean, inv_std, **kw)
    dx2 = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, st.count, **kw)
    yi = cbp.batch_norm_inference(x, scale, bias, st.mean, st.var, **kw)
    return _digest([st.mean, st.m2, y, mean, inv_std, dx, ds, db, ds2, db2, dx2, yi])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise_equal_to_one(dtype):
    inputs = [(*_inputs(shape, layout, dtype), layout) for shape, layout in CASES]
    want = [_everything(x, dy, layout, 1) for x, dy, layout in inputs]
    jobs = [(i, nt) for _ in range(6) for i in range(len(inputs)) for nt in (1, 2, 3)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda job: _everything(*inputs[job[0]][:2], inputs[job[0]][2],
                                                    job[1]), jobs))
    for (i, nt), g in zip(jobs, got):
        assert g == want[i], (CASES[i], nt)
