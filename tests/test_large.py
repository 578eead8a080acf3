"""More than 2^31 elements in one call (float32): every offset the kernels form
must be 64-bit.

Each case needs 8.6 GB for x; it runs only where /proc/meminfo's MemAvailable
has room for it (the project's machines have 24 GiB), and once per CI run:
.ci/check_wheel.sh and .ci/sanitize, which rerun the suite, set
CBP_SKIP_LARGE=1. The data is a pattern whose statistics are known in closed
form, so the reference needs no second copy of x.
"""
import os

import numpy as np
import pytest

import cbp

NEEDED = 10 * 2 ** 30  # x plus headroom for the rest of the suite


def _available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


pytestmark = [
    pytest.mark.skipif(os.environ.get("CBP_SKIP_LARGE") == "1",
                       reason="CBP_SKIP_LARGE=1 (the suite's reruns)"),
    pytest.mark.skipif(_available() < NEEDED,
                       reason=f"needs {NEEDED >> 30} GiB of available memory"),
]

# eight values per period, the same in every channel up to a shift of 10 per channel
PERIOD = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], dtype=np.float64)


def _expected(M, shift):
    """mean, M2 per channel of M elements cycling through PERIOD + shift (M % 8 == 0)."""
    mean = PERIOD.mean() + shift
    m2 = (M // 8) * np.sum((PERIOD - PERIOD.mean()) ** 2) * np.ones_like(shift)
    return mean, m2


def _check(x, layout, M, shift):
    mean, m2 = _expected(M, shift)
    stats = cbp.channel_stats(x, layout=layout)
    assert stats.count == M
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.m2, m2, rtol=1e-9)
    inv_std = 1.0 / np.sqrt(m2 / M + 1e-5)
    # dy = x: dscale = sum x * (x - mean) * inv_std = M2 * inv_std, dbias = M * mean
    ds, db = cbp.channel_backprop_stats(x, x, mean, inv_std, layout=layout)
    np.testing.assert_allclose(ds, m2 * inv_std, rtol=1e-9)
    np.testing.assert_allclose(db, M * mean, rtol=1e-9, atol=1e-6 * M)
    # in place, so that no second 8 GiB array is needed
    y, mu, istd = cbp.batch_norm_forward(x, np.ones(mean.size), np.zeros(mean.size), out=x,
                                         layout=layout)
    assert y is x
    np.testing.assert_allclose(istd, inv_std, rtol=1e-9)
    after = cbp.channel_stats(x, layout=layout)
    np.testing.assert_allclose(after.mean, 0.0, atol=1e-6)
    np.testing.assert_allclose(after.var, (m2 / M) * inv_std ** 2, rtol=1e-5)


def test_nchw_planes_beyond_2_31():
    S = 2 ** 30 + 40  # two planes of one channel: 2^31 + 80 elements
    x = np.empty((2, 1, S), dtype=np.float32)
    x.reshape(2, -1, 8)[...] = PERIOD.astype(np.float32)
    _check(x, "NCHW", 2 * S, np.zeros(1))


def test_nhwc_rows_beyond_2_31():
    R = 2 ** 30 + 8  # rows of two channels: 2^31 + 16 elements
    x = np.empty((R, 2), dtype=np.float32)
    shift = np.array([0.0, 10.0])
    x.reshape(-1, 8, 2)[...] = (PERIOD[:, None] + shift).astype(np.float32)
    _check(x, "NHWC", R, shift)
