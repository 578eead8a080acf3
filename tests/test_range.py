"""float32 data over the whole float32 range, and the NaN/Inf rule.

The float32 kernels square, multiply and sum short runs in float32 and round
float64 coefficients to float32; outside float32's comfortable range they
fall back to float64 arithmetic (src/cbp/csrc/wide.h). These tests hold every
function to the float64 reference (tests/reference.py) from std = 1e-40
(subnormal data) to 1e37, per channel, on every kernel path, and check that
the fallback gives the same bits for every thread count and instruction set.

Accuracy is judged per channel against that channel's own magnitude, so a
tiny channel beside a huge one is checked as strictly as if it were alone.
x-shaped float32 outputs are compared with the reference rounded to float32:
a value beyond float32's range must come back as inf of the right sign, and
a subnormal one is only representable to 2^-149.
"""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import cbp
import reference as ref
from cbp import cython_api

F32_MAX = float(np.finfo(np.float32).max)
RTOL = 2e-4

# one shape per kernel path: NCHW long planes (plane kernels), short planes
# (column moments), NHWC rows (widened columns), 2-D rows, rows of >= 2048
# channels (four-quarter column sums), planes summed in chunks, and short
# planes of at least RUN_PLANE elements (plane runs)
PATHS = [((4, 3, 32, 32), "NCHW"), ((16, 4, 5, 5), "NCHW"), ((8, 6, 6, 5), "NHWC"),
         ((64, 7), "NCHW"), ((40, 2048), "NCHW"), ((2, 3, 48, 48), "NCHW"),
         ((16, 4, 7, 7), "NCHW")]
PATH_IDS = ["planes", "short-planes", "nhwc", "rows", "quarters", "plane-chunks",
            "short-plane-runs"]
EXPONENTS = [-40, -30, -22, -16, 0, 16, 20, 24, 30, 37]


def _noop_allreduce(buf):
    return None  # a group of one process


def _channels_last(a, layout):
    a = np.asarray(a, dtype=np.float64)
    return ref.to_mc(a, layout) if a.ndim > 1 else a


def _check_x_shaped(got, want, layout, what):
    """float32 (or float64) output against the float64 reference, per channel."""
    assert got.shape == want.shape, what
    g = ref.to_mc(got, layout)
    w = ref.to_mc(want, layout)
    if got.dtype == np.float32:
        over = np.abs(w) > F32_MAX
        np.testing.assert_array_equal(g[over], np.sign(w[over]) * np.inf, err_msg=what)
        g = np.where(over, 0.0, g)
        w = np.where(over, 0.0, w)
        resolution = 2.0 ** -148
    else:
        resolution = 0.0
    assert np.isfinite(g).all(), f"{what}: non-finite output where the result is finite"
    scale = np.max(np.abs(w), axis=0) if w.size else np.zeros(w.shape[1])
    bad = np.abs(g - w) > RTOL * scale + resolution
    assert not bad.any(), (f"{what}: max error {np.max(np.abs(g - w) - RTOL * scale):.3g} "
                           f"at channels {np.flatnonzero(bad.any(axis=0))}")


def _check_channels(got, want, magnitude, what):
    """Per-channel float64 results: |got - want| <= RTOL * that channel's magnitude."""
    got = np.asarray(got, dtype=np.float64)
    assert np.isfinite(got).all(), f"{what}: {got}"
    err = np.abs(got - want)
    assert (err <= RTOL * magnitude).all(), f"{what}: got {got}, want {want}"


def _data(shape, layout, stds, mean_offsets, seed=0):
    """float32 x with per-channel std and mean (mean = offset * std); dy ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    shp = shape if layout == "NCHW" else (shape[0],) + tuple(shape[2:]) + (shape[1],)
    nd = len(shp)
    z = np.clip(rng.standard_normal(shp), -3, 3)
    std = ref.bcast(np.asarray(stds, dtype=np.float64), nd, layout)
    off = ref.bcast(np.asarray(mean_offsets, dtype=np.float64), nd, layout)
    x = (std * (off + z)).astype(np.float32)
    dy = np.clip(rng.standard_normal(shp), -3, 3).astype(np.float32)
    assert np.isfinite(x).all()
    return x, dy


def _check_all(x, dy, layout):
    """Every public function on (x, dy) against the reference, per channel."""
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    M, mean, var, m2 = ref.channel_stats(x, layout)
    x2 = ref.to_mc(x, layout)
    dy2 = ref.to_mc(dy, layout)
    spread = np.sqrt(var)
    # an eps far below every variance, so that the normalization is tested
    eps = float(max(1e-300, 1e-10 * np.min(var[var > 0], initial=1.0)))
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = np.linspace(0.5, 1.5, C)
    bias = np.linspace(-1.0, 1.0, C)

    for stats in (cbp.channel_stats(x, layout=layout),
                  cbp.sync_channel_stats(x, layout=layout, allreduce=_noop_allreduce)):
        assert stats.count == M
        _check_channels(stats.mean, mean, np.abs(mean) + spread, "mean")
        _check_channels(stats.var, var, var, "var")
        _check_channels(stats.inv_std(eps), inv_std, inv_std, "inv_std")

    y_ref = ref.batch_norm_inference(x, scale, bias, mean, var, eps, layout)
    for y, mu, istd in (
            cbp.batch_norm_forward(x, scale, bias, eps=eps, layout=layout),
            cbp.sync_batch_norm_forward(x, scale, bias, eps=eps, layout=layout,
                                        allreduce=_noop_allreduce)):
        _check_channels(mu, mean, np.abs(mean) + spread, "forward mean")
        _check_channels(istd, inv_std, inv_std, "forward inv_std")
        _check_x_shaped(y, y_ref, layout, "forward y")
    _check_x_shaped(cbp.batch_norm_inference(x, scale, bias, mean, var, eps=eps,
                                             layout=layout), y_ref, layout, "inference y")

    ds_ref, db_ref = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    ds_mag = np.sum(np.abs(dy2 * (x2 - mean) * inv_std), axis=0)
    db_mag = np.sum(np.abs(dy2), axis=0)
    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    _check_channels(ds, ds_ref, ds_mag, "dscale")
    _check_channels(db, db_ref, db_mag, "dbias")

    dx_ref = ref.batch_norm_dx(x, dy, mean, inv_std, scale, ds_ref, db_ref, M, layout)
    _check_x_shaped(cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds_ref, db_ref, M,
                                      layout=layout), dx_ref, layout, "dx")
    for dx, ds, db in (
            cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout),
            cbp.sync_batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout,
                                         allreduce=_noop_allreduce)):
        _check_channels(ds, ds_ref, ds_mag, "backward dscale")
        _check_channels(db, db_ref, db_mag, "backward dbias")
        # dx from cbp's own sums: their float32 rounding is amplified by the
        # cancellation in dy - dbias/M - xhat*dscale/M, so compare against the
        # reference dx of cbp's sums (dscale and dbias were checked above)
        _check_x_shaped(dx, ref.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, M, layout),
                        layout, "backward dx")


@pytest.mark.parametrize("exponent", EXPONENTS)
@pytest.mark.parametrize("shape,layout", PATHS, ids=PATH_IDS)
def test_one_scale(shape, layout, exponent):
    C = shape[1]
    x, dy = _data(shape, layout, [10.0 ** exponent] * C, np.linspace(-2, 3, C))
    _check_all(x, dy, layout)


# channels of very different scales side by side, so that some blocks and
# columns take the float64 path and their neighbours do not
MIXED_STDS = [1e30, 1.0, 1e-30, 0.0, 1e-40, 3e36, 1e20, 1e-20]
MIXED_OFFSETS = [0.0, 1e4, 3.0, 0.0, 1.0, -2.0, 0.5, 1e3]


def _mixed(shape, layout):
    C = len(MIXED_STDS)
    shape = (shape[0], C) + tuple(shape[2:])
    x, dy = _data(shape, layout, MIXED_STDS, MIXED_OFFSETS, seed=3)
    # the zero-std channel holds a constant
    sl = [slice(None)] * x.ndim
    sl[1 if layout == "NCHW" else -1] = 3
    x[tuple(sl)] = np.float32(7.25)
    return x, dy


@pytest.mark.parametrize("shape,layout", PATHS[:4] + PATHS[-1:],
                         ids=PATH_IDS[:4] + PATH_IDS[-1:])
def test_mixed_scales(shape, layout):
    x, dy = _mixed(shape, layout)
    _check_all(x, dy, layout)


@pytest.mark.parametrize("shape,layout", PATHS, ids=PATH_IDS)
def test_float64_huge_means(shape, layout):
    # float64 data with |mean| = 1e160 and std 1e150: mean and variance are
    # representable, yet the square of a partial mean overflows. A merge into
    # an empty accumulator must not form delta * delta * 0 (NaN).
    z, dy = _data(shape, layout, [1.0] * shape[1], [0.0] * shape[1], seed=2)
    x = 1e160 + 1e150 * z.astype(np.float64)
    _check_all(x, dy.astype(np.float64), layout)
    merged = cbp.ChannelStats.merge(*[cbp.channel_stats(x, layout=layout)] * 2)
    _, mean, var, _ = ref.channel_stats(x, layout)
    _check_channels(merged.mean, mean, np.abs(mean), "merged mean")
    _check_channels(merged.var, var, var, "merged var")


@pytest.mark.parametrize("shape,layout", PATHS, ids=PATH_IDS)
def test_underflowing_products(shape, layout):
    # dy and x - mean both about 1e-25: their float32 products (about 1e-50)
    # underflow to 0, yet dscale (about 1e-25 per element) is representable;
    # the reductions must redo such channels in float64 rather than return 0.
    C = shape[1]
    N = max(shape[0], 64)
    shape = (N, C) + tuple(shape[2:])
    x, dy = _data(shape, layout, [1e-25] * C, np.linspace(-2, 3, C), seed=5)
    dy = dy * np.float32(1e-25)
    M, mean, var, _ = ref.channel_stats(x, layout)
    inv_std = 1.0 / np.sqrt(var)
    ds_ref, db_ref = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    x2, dy2 = ref.to_mc(x, layout), ref.to_mc(dy, layout)
    ds_mag = np.sum(np.abs(dy2 * (x2 - mean) * inv_std), axis=0)
    db_mag = np.sum(np.abs(dy2), axis=0)
    assert (ds_mag > 1e-30).all()
    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    _check_channels(ds, ds_ref, ds_mag, "dscale")
    _check_channels(db, db_ref, db_mag, "dbias")
    _, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, np.ones(C), layout=layout)
    _check_channels(ds, ds_ref, ds_mag, "backward dscale")
    _check_channels(db, db_ref, db_mag, "backward dbias")


@pytest.mark.parametrize("shape,layout", PATHS, ids=PATH_IDS)
def test_dead_channels(shape, layout):
    # Near-zero sums whose terms are all exactly 0 are kept from the float32
    # pass (csrc/wide.h, wide_exact); the others go to float64. Channels: 0
    # all-zero x and dy, 1 constant x, 2 zero dy, 3 zero dy except one
    # element, 4 values +-1e-30 around a constant (squares and products
    # underflow in float32, yet they are not exact zeros), 5 and up: live.
    # enough images that every path has units of several rows (short planes
    # have a unit per image up to 64 images)
    C = max(shape[1], 8)
    N = 400 if shape == PATHS[1][0] else max(shape[0], 64)
    shape = (N, C) + tuple(shape[2:])
    x, dy = _data(shape, layout, [1.0] * C, np.linspace(-2, 3, C), seed=11)
    ax = 1 if layout == "NCHW" else x.ndim - 1

    def ch(c):
        return (slice(None),) * ax + (c,)

    x[ch(0)] = 0
    dy[ch(0)] = 0
    x[ch(1)] = np.float32(-3.5)
    dy[ch(2)] = 0
    dy[ch(3)] = 0
    dy[ch(3)].flat[-1] = np.float32(1e-3)
    rng = np.random.default_rng(4)
    x[ch(4)] = np.float32(1e-30) * rng.choice([-1, 1], x[ch(4)].shape).astype(np.float32)
    _check_all(x, dy, layout)


def test_quarters_mixed_scales():
    # rows of 2048 channels, the mixed scales repeated across them
    rng = np.random.default_rng(5)
    stds = np.array(MIXED_STDS * 256)
    x, dy = _data((40, 2048), "NCHW", stds, np.zeros(2048), seed=5)
    x[:, rng.integers(0, 2048, 16)] = np.float32(-3.5)  # a few constant columns
    _check_all(x, dy, "NCHW")


def test_issue_cases():
    """The silent failures of #15, each as it was reported."""
    C = 3
    const = np.full((4, C, 6, 6), 2.5, dtype=np.float32)
    # a constant channel with eps = 1e-80 or scale = 1e300 gave y = NaN
    y, _, _ = cbp.batch_norm_forward(const, np.ones(C), np.full(C, 0.25), eps=1e-80)
    np.testing.assert_array_equal(y, np.float32(0.25))
    y, _, _ = cbp.batch_norm_forward(const, np.full(C, 1e300), np.full(C, 0.25))
    np.testing.assert_array_equal(y, np.float32(0.25))
    # std >= ~3e18: var was inf, inv_std 0 and y = bias everywhere
    x, dy = _data((4, C, 8, 8), "NCHW", [1e19, 1e25, 1e35], [0.0, 1.0, -1.0])
    stats = cbp.channel_stats(x)
    _, _, var, _ = ref.channel_stats(x)
    np.testing.assert_allclose(stats.var, var, rtol=RTOL)
    y, _, _ = cbp.batch_norm_forward(x, np.ones(C), np.zeros(C))
    assert np.all(np.std(y.astype(np.float64), axis=(0, 2, 3)) > 0.99)
    # a mean beyond float32's range (finite in float64) gave dscale = NaN
    x, dy = _data((4, C, 8, 8), "NCHW", [1.0] * C, [0.0] * C)
    mean = np.array([1e39, -1e39, 0.5])
    inv_std = np.ones(C)
    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std)
    ds_ref, db_ref = ref.channel_backprop_stats(x, dy, mean, inv_std)
    x2, dy2 = ref.to_mc(x, "NCHW"), ref.to_mc(dy, "NCHW")
    _check_channels(ds, ds_ref, np.sum(np.abs(dy2 * (x2 - mean)), axis=0), "dscale")
    _check_channels(db, db_ref, np.sum(np.abs(dy2), axis=0), "dbias")
    # std >= ~1.8e21: batch_norm_dx was off by 6.5% even with exact statistics
    x, dy = _data((4, C, 8, 8), "NCHW", [2e21, 1e30, 3e36], [0.0, 1.0, 2.0])
    M, mean, var, _ = ref.channel_stats(x)
    inv_std = 1.0 / np.sqrt(var)
    ds, db = ref.channel_backprop_stats(x, dy, mean, inv_std)
    got = cbp.batch_norm_dx(x, dy, mean, inv_std, np.ones(C), ds, db, M)
    want = ref.batch_norm_dx(x, dy, mean, inv_std, np.ones(C), ds, db, M)
    _check_x_shaped(got, want, "NCHW", "dx")


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _mixed_outputs(num_threads):
    out = []
    for shape, layout in PATHS[:4]:
        x, dy = _mixed(shape, layout)
        C = len(MIXED_STDS)
        st = cbp.channel_stats(x, layout=layout, num_threads=num_threads)
        y, mean, inv_std = cbp.batch_norm_forward(x, np.ones(C), np.zeros(C), eps=1e-300,
                                                  layout=layout, num_threads=num_threads)
        dx, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, np.ones(C), layout=layout,
                                             num_threads=num_threads)
        out += [st.mean, st.m2, y, mean, inv_std, dx, ds, db]
    return _digest(out)


def test_float64_path_same_bits_for_every_thread_count():
    want = _mixed_outputs(1)
    for nt in (2, 3, 8):
        assert _mixed_outputs(nt) == want, nt


@pytest.mark.parametrize("isa", cython_api.isa_available())
def test_float64_path_same_bits_for_every_isa(isa):
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, %r); import test_range as t; "
            "print(t._mixed_outputs(2))" % here)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, CBP_ISA=isa))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == _mixed_outputs(2)


# ---------------------------------------------------------------------------
# NaN and Inf in the data: NaN in what depends on them, nothing else touched

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape,layout", PATHS[:4], ids=PATH_IDS[:4])
@pytest.mark.parametrize("where", ["x", "dy"])
def test_nan_rule(shape, layout, bad, where):
    C = shape[1]
    x, dy = _data(shape, layout, [1.0] * C, np.linspace(-1, 1, C), seed=7)
    ch = 1  # the poisoned channel
    idx = [0] * x.ndim
    idx[1 if layout == "NCHW" else -1] = ch
    clean_x, clean_dy = x.copy(), dy.copy()
    (x if where == "x" else dy)[tuple(idx)] = bad
    others = np.arange(C) != ch

    def nan_channels(a):
        return np.isnan(ref.to_mc(a, layout)).all(axis=0)

    def finite_channels(a):
        return np.isfinite(ref.to_mc(a, layout)).all(axis=0)

    ones, zeros = np.ones(C), np.zeros(C)
    if where == "x":
        for f in (cbp.channel_stats, cbp.sync_channel_stats):
            kw = {} if f is cbp.channel_stats else {"allreduce": _noop_allreduce}
            st = f(x, layout=layout, **kw)
            clean = f(clean_x, layout=layout, **kw)
            assert np.isnan(st.mean[ch]) and np.isnan(st.var[ch])
            np.testing.assert_array_equal(st.mean[others], clean.mean[others])
            np.testing.assert_array_equal(st.var[others], clean.var[others])
        for y, mean, inv_std in (
                cbp.batch_norm_forward(x, ones, zeros, layout=layout),
                cbp.sync_batch_norm_forward(x, ones, zeros, layout=layout,
                                            allreduce=_noop_allreduce)):
            assert np.isnan(mean[ch]) and np.isnan(inv_std[ch])
            assert nan_channels(y)[ch] and finite_channels(y)[others].all()
        # inference is elementwise: only the poisoned element follows IEEE arithmetic
        y = cbp.batch_norm_inference(x, ones, zeros, zeros, ones, layout=layout)
        want = np.float32(bad) / np.float32(np.sqrt(1 + 1e-5))
        np.testing.assert_array_equal(y[tuple(idx)], want)
        assert np.isfinite(np.delete(y.ravel(), np.ravel_multi_index(idx, y.shape))).all()
    mean = np.zeros(C)
    inv_std = np.ones(C)
    clean_ds, clean_db = cbp.channel_backprop_stats(clean_x, clean_dy, mean, inv_std,
                                                    layout=layout)
    results = [cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)]
    results += [cbp.batch_norm_backward(x, dy, mean, inv_std, ones, layout=layout)[1:],
                cbp.sync_batch_norm_backward(x, dy, mean, inv_std, ones, layout=layout,
                                             allreduce=_noop_allreduce)[1:]]
    for ds, db in results:
        assert np.isnan(ds[ch])
        # dbias = sum dy does not depend on x
        assert np.isnan(db[ch]) == (where == "dy")
        np.testing.assert_array_equal(ds[others], clean_ds[others])
        np.testing.assert_array_equal(db[others], clean_db[others])
    for dx in (cbp.batch_norm_backward(x, dy, mean, inv_std, ones, layout=layout)[0],
               cbp.sync_batch_norm_backward(x, dy, mean, inv_std, ones, layout=layout,
                                            allreduce=_noop_allreduce)[0]):
        assert nan_channels(dx)[ch] and finite_channels(dx)[others].all()
