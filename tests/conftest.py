"""Shared helpers and fixtures for the cbp test-suite.

Shapes are written in the canonical NCHW form (N, C, *spatial); `nhwc_shape`
gives the NHWC twin (N, *spatial, C) with the same N, C and spatial sizes.

Tolerances (relative, per x dtype) -- see TOL below:
  * float64: 1e-10.  Every kernel accumulates in float64 and uses the centred
    formulas, so only a few ulps times log(M) of rounding are expected.
  * float32: 1e-4 on gradients (dx, dscale, dbias) and on x-shaped outputs,
    which are rounded to float32 (eps 6e-8) after float64 or float32 math;
    per-channel statistics (mean/var) are held to the same 1e-4.
Comparisons use a scale-aware atol = rtol * (a magnitude of the terms that
make up the result, by default max|reference|), so tiny entries of a result
that are the difference of large terms do not produce spurious failures.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
THREADS = [1, 2, 3, 8]

TOL = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 1e-4,
}

# Canonical NCHW shapes: (N, C, *spatial)
SHAPES = [
    (4, 1, 3, 3),       # C = 1
    (1, 3, 4, 4),       # N = 1
    (5, 4, 1, 1),       # spatial 1x1
    (2, 3, 7, 7),       # spatial 7x7
    (3, 5, 7, 9),       # odd sizes
    (2, 300, 2, 2),     # C > N*H*W
    (1, 1, 1, 1),       # single element (var 0)
    (6, 5),             # 2-D (N, C)
    (1, 7),             # 2-D, N = 1
    (7, 1),             # 2-D, C = 1
    (3, 4, 5),          # 3-D
    (2, 6, 1),          # 3-D, spatial 1
    (2, 3, 2, 3, 4),    # 5-D
    (1, 2, 3, 1, 5),    # 5-D with a 1
]

# Medium canonical shapes chosen to reach every work decomposition of the
# kernels (long planes, mid planes, short planes with partial channel blocks,
# several image groups per channel, widened and plain rows, row counts that
# are not multiples of a block); tests/test_paths.py asserts through
# cbp.plan_info that these and the other value tests reach every path.
MEDIUM_SHAPES = [
    (3, 2, 40, 40),       # S = 1600
    (5, 3, 20, 20),       # S = 400
    (4, 70, 5, 5),        # S = 25, channel blocks of 41 + 29
    (40, 2, 50, 41),      # N * S > 65536: several image groups
    (301, 5),             # 2-D, many rows, small C
    (97, 70),             # 2-D, C >= 64
    (3, 3, 33, 35),       # NHWC twin: 3465 rows of 3 channels
    (2, 3, 4, 17, 19),    # 5-D
]

# Zero-size shapes (canonical NCHW)
EMPTY_M_SHAPES = [(0, 3, 4, 4), (2, 3, 0, 4), (0, 5), (0, 2, 3)]
EMPTY_C_SHAPES = [(2, 0, 3, 3), (3, 0)]


def nhwc_shape(shape):
    """NHWC twin of a canonical NCHW shape: (N, C, *sp) -> (N, *sp, C)."""
    shape = tuple(shape)
    return (shape[0],) + shape[2:] + (shape[1],)


def layout_shape(shape, layout):
    return tuple(shape) if layout == "NCHW" else nhwc_shape(shape)


def shape_id(shape):
    return "x".join(map(str, shape))


def tol(dtype):
    return TOL[np.dtype(dtype)]


def maxabs(*arrays):
    """Largest |value| over several arrays (0.0 for all-empty)."""
    m = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.size:
            m = max(m, float(np.max(np.abs(a))))
    return m


def assert_close(got, want, dtype, scale=None, rtol=None, err_msg=""):
    """assert_allclose with rtol per dtype and atol = rtol * scale.

    `scale` defaults to max|want|; pass the magnitude of the summed terms for
    results that may suffer legitimate cancellation."""
    rtol = tol(dtype) if rtol is None else rtol
    if scale is None:
        scale = maxabs(want)
    got = np.asarray(got)
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want,
                               rtol=rtol, atol=rtol * scale + 1e-300,
                               err_msg=err_msg)


def make_inputs(shape, layout, dtype, seed=0, offset=0.0):
    """Random test data for a canonical shape in the given layout.

    x has per-channel means (plus `offset`) and spreads; dy, scale, bias are
    standard normal; mean / inv_std / var are the float64 reference stats of x
    (eps 1e-5) so that they are realistic inputs for the backward functions."""
    rng = np.random.default_rng(seed)
    shp = layout_shape(shape, layout)
    C = shape[1]
    loc = rng.uniform(-2, 2, C) + offset
    spread = rng.uniform(0.5, 2.0, C)
    z = rng.standard_normal(shp)
    x = (ref.bcast(loc, len(shp), layout) + ref.bcast(spread, len(shp), layout) * z).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    scale = rng.standard_normal(C)
    bias = rng.standard_normal(C)
    _, mean, var, _ = ref.channel_stats(x, layout)
    inv_std = 1.0 / np.sqrt(var + 1e-5)
    return dict(x=x, dy=dy, scale=scale, bias=bias, mean=mean, var=var,
                inv_std=inv_std, C=C, M=(x.size // C if C else 0))


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture(params=SHAPES, ids=shape_id)
def shape(request):
    return request.param
