"""Every cbp function against the float64 reference (tests/reference.py)."""
import numpy as np
import pytest

import cbp
import reference as ref
from conftest import (DTYPES, EMPTY_C_SHAPES, EMPTY_M_SHAPES, LAYOUTS, MEDIUM_SHAPES, SHAPES,
                      assert_close, layout_shape, make_inputs, maxabs, shape_id)
from schedule import case_llc

VEC_DTYPES = [np.float64, np.float32]
vec_dtype_param = pytest.mark.parametrize(
    "vec_dtype", VEC_DTYPES, ids=lambda d: "vec_" + np.dtype(d).name)


@pytest.fixture(autouse=True, scope="module")
def _case_schedule():
    # the LLC the size cases below were chosen for (tests/schedule.py), so they
    # reach the paths tests/test_paths.py says they reach on any CPU
    with case_llc():
        yield


def _v(a, vec_dtype):
    """Per-channel vector in the requested dtype (the reference then uses
    exactly these values, upcast to float64)."""
    return np.asarray(a, dtype=np.float64).astype(vec_dtype)


def _per_channel_ok(a, C):
    a = np.asarray(a)
    assert a.dtype == np.float64, a.dtype
    assert a.shape == (C,), a.shape


def _x_shaped_ok(a, x):
    assert isinstance(a, np.ndarray)
    assert a.dtype == x.dtype, (a.dtype, x.dtype)
    assert a.shape == x.shape, (a.shape, x.shape)


# --- magnitudes of the summed terms (for scale-aware atol) -----------------

def _backprop_scales(x, dy, mean, inv_std, layout):
    x2, dy2 = ref.to_mc(x, layout), ref.to_mc(dy, layout)
    m = np.asarray(mean, np.float64)
    s = np.asarray(inv_std, np.float64)
    ds = np.abs(dy2 * (x2 - m) * s).sum(axis=0)
    db = np.abs(dy2).sum(axis=0)
    return maxabs(ds), maxabs(db)


def _dx_scale(x, dy, mean, inv_std, scale, dscale, dbias, count, layout):
    x2, dy2 = ref.to_mc(x, layout), ref.to_mc(dy, layout)
    m, s, g = (np.asarray(a, np.float64) for a in (mean, inv_std, scale))
    dsc, dbi = np.asarray(dscale, np.float64), np.asarray(dbias, np.float64)
    xhat = (x2 - m) * s
    terms = np.abs(g * s) * (np.abs(dy2) + np.abs(dbi) / count
                             + np.abs(xhat * dsc) / count)
    return maxabs(terms)


def _y_scale(x, scale, bias, mean, inv_std, layout):
    x2 = ref.to_mc(x, layout)
    m, s, g, b = (np.asarray(a, np.float64) for a in (mean, inv_std, scale, bias))
    return maxabs(g * (np.abs(x2) + np.abs(m)) * s) + maxabs(b)


# ---------------------------------------------------------------------------
# channel_stats
# ---------------------------------------------------------------------------

def _check_stats(st, x, layout, dtype, rtol=None):
    count, mean, var, m2 = ref.channel_stats(x, layout)
    C = mean.shape[0]
    assert isinstance(st.count, int) and not isinstance(st.count, bool)
    assert st.count == count
    for a in (st.mean, st.m2, st.var):
        _per_channel_ok(a, C)
    assert_close(st.mean, mean, dtype, scale=maxabs(x), rtol=rtol)
    assert_close(st.var, var, dtype, rtol=rtol)
    assert_close(st.m2, m2, dtype, rtol=rtol)
    for eps in (1e-5, 1e-3, 2.0):
        inv = st.inv_std(eps)
        _per_channel_ok(inv, C)
        assert_close(inv, 1.0 / np.sqrt(var + eps), dtype, rtol=rtol)
    assert_close(st.inv_std(), 1.0 / np.sqrt(var + 1e-5), dtype, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_channel_stats(shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=11)
    st = cbp.channel_stats(d["x"], layout=layout)
    _check_stats(st, d["x"], layout, dtype)


def test_channel_stats_default_layout_is_nchw():
    d = make_inputs((3, 4, 5, 2), "NCHW", np.float64, seed=3)
    _check_stats(cbp.channel_stats(d["x"]), d["x"], "NCHW", np.float64)


# ---------------------------------------------------------------------------
# channel_backprop_stats
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@vec_dtype_param
def test_channel_backprop_stats(shape, layout, dtype, vec_dtype):
    d = make_inputs(shape, layout, dtype, seed=12)
    x, dy, C = d["x"], d["dy"], d["C"]
    mean, inv_std = _v(d["mean"], vec_dtype), _v(d["inv_std"], vec_dtype)
    dscale, dbias = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    _per_channel_ok(dscale, C)
    _per_channel_ok(dbias, C)
    s_ds, s_db = _backprop_scales(x, dy, mean, inv_std, layout)
    assert_close(dscale, r_ds, dtype, scale=s_ds)
    assert_close(dbias, r_db, dtype, scale=s_db)


def test_channel_backprop_stats_arbitrary_mean_inv_std(layout, dtype):
    """mean/inv_std need not be the statistics of x."""
    shape = (3, 4, 5, 3)
    d = make_inputs(shape, layout, dtype, seed=13)
    rng = np.random.default_rng(14)
    mean = rng.standard_normal(4) * 3
    inv_std = rng.uniform(0.1, 5.0, 4)
    got = cbp.channel_backprop_stats(d["x"], d["dy"], mean, inv_std, layout=layout)
    want = ref.channel_backprop_stats(d["x"], d["dy"], mean, inv_std, layout)
    s = _backprop_scales(d["x"], d["dy"], mean, inv_std, layout)
    for g, w, sc in zip(got, want, s):
        _per_channel_ok(g, 4)
        assert_close(g, w, dtype, scale=sc)


# ---------------------------------------------------------------------------
# batch_norm_dx
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("count_factor", [1, 3])
@vec_dtype_param
def test_batch_norm_dx(shape, layout, dtype, count_factor, vec_dtype):
    d = make_inputs(shape, layout, dtype, seed=15)
    x, dy, C, M = d["x"], d["dy"], d["C"], d["M"]
    rng = np.random.default_rng(16)
    mean, inv_std, scale = (_v(d[k], vec_dtype) for k in ("mean", "inv_std", "scale"))
    # dscale/dbias as they would come from an all-reduce: arbitrary values
    r_ds, r_db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    dscale = _v(r_ds * count_factor + rng.standard_normal(C) * (count_factor - 1), vec_dtype)
    dbias = _v(r_db * count_factor + rng.standard_normal(C) * (count_factor - 1), vec_dtype)
    count = M * count_factor
    dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, dscale, dbias, count,
                           layout=layout)
    _x_shaped_ok(dx, x)
    want = ref.batch_norm_dx(x, dy, mean, inv_std, scale, dscale, dbias, count, layout)
    assert_close(dx, want, dtype,
                 scale=_dx_scale(x, dy, mean, inv_std, scale, dscale, dbias, count, layout))


def test_batch_norm_dx_numpy_integer_count(layout):
    d = make_inputs((2, 3, 4, 4), layout, np.float64, seed=17)
    x, dy = d["x"], d["dy"]
    ds, db = ref.channel_backprop_stats(x, dy, d["mean"], d["inv_std"], layout)
    for count in (np.int64(d["M"]), np.int32(d["M"] * 2), d["M"] * 5):
        dx = cbp.batch_norm_dx(x, dy, d["mean"], d["inv_std"], d["scale"], ds, db,
                               count, layout=layout)
        want = ref.batch_norm_dx(x, dy, d["mean"], d["inv_std"], d["scale"], ds, db,
                                 int(count), layout)
        assert_close(dx, want, np.float64)


# ---------------------------------------------------------------------------
# batch_norm_backward
# ---------------------------------------------------------------------------

def _check_backward(res, x, dy, mean, inv_std, scale, layout, dtype, rtol=None):
    assert isinstance(res, tuple) and len(res) == 3
    dx, dscale, dbias = res
    C = np.shape(mean)[0]
    _x_shaped_ok(dx, x)
    _per_channel_ok(dscale, C)
    _per_channel_ok(dbias, C)
    r_dx, r_ds, r_db = ref.batch_norm_backward(x, dy, mean, inv_std, scale, layout)
    s_ds, s_db = _backprop_scales(x, dy, mean, inv_std, layout)
    assert_close(dscale, r_ds, dtype, scale=s_ds, rtol=rtol)
    assert_close(dbias, r_db, dtype, scale=s_db, rtol=rtol)
    M = x.size // C if C else 0
    if M:
        s_dx = _dx_scale(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout)
        assert_close(dx, r_dx, dtype, scale=s_dx, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@vec_dtype_param
def test_batch_norm_backward(shape, layout, dtype, vec_dtype):
    d = make_inputs(shape, layout, dtype, seed=18)
    mean, inv_std, scale = (_v(d[k], vec_dtype) for k in ("mean", "inv_std", "scale"))
    res = cbp.batch_norm_backward(d["x"], d["dy"], mean, inv_std, scale, layout=layout)
    _check_backward(res, d["x"], d["dy"], mean, inv_std, scale, layout, dtype)


# ---------------------------------------------------------------------------
# batch_norm_forward
# ---------------------------------------------------------------------------

def _check_forward(res, x, scale, bias, eps, layout, dtype, rtol=None):
    assert isinstance(res, tuple) and len(res) == 3
    y, mean, inv_std = res
    C = np.shape(scale)[0]
    _x_shaped_ok(y, x)
    _per_channel_ok(mean, C)
    _per_channel_ok(inv_std, C)
    r_y, r_mean, r_inv = ref.batch_norm_forward(x, scale, bias, eps, layout)
    assert_close(mean, r_mean, dtype, scale=maxabs(x), rtol=rtol)
    assert_close(inv_std, r_inv, dtype, rtol=rtol)
    assert_close(y, r_y, dtype, scale=_y_scale(x, scale, bias, r_mean, r_inv, layout),
                 rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
@vec_dtype_param
def test_batch_norm_forward(shape, layout, dtype, eps, vec_dtype):
    d = make_inputs(shape, layout, dtype, seed=19)
    scale, bias = _v(d["scale"], vec_dtype), _v(d["bias"], vec_dtype)
    res = cbp.batch_norm_forward(d["x"], scale, bias, eps=eps, layout=layout)
    _check_forward(res, d["x"], scale, bias, eps, layout, dtype)


def test_batch_norm_forward_default_eps(layout, dtype):
    d = make_inputs((4, 3, 2, 2), layout, dtype, seed=20)
    res = cbp.batch_norm_forward(d["x"], d["scale"], d["bias"], layout=layout)
    _check_forward(res, d["x"], d["scale"], d["bias"], 1e-5, layout, dtype)


# ---------------------------------------------------------------------------
# batch_norm_inference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("eps", [1e-5, 0.25])
@vec_dtype_param
def test_batch_norm_inference(shape, layout, dtype, eps, vec_dtype):
    d = make_inputs(shape, layout, dtype, seed=21)
    C = d["C"]
    rng = np.random.default_rng(22)
    # running statistics: not the batch statistics (var 0 allowed)
    mean = _v(d["mean"] + rng.standard_normal(C) * 0.3, vec_dtype)
    var = rng.uniform(0.0, 3.0, C)
    var[0] = 0.0
    var = _v(var, vec_dtype)
    scale, bias = _v(d["scale"], vec_dtype), _v(d["bias"], vec_dtype)
    y = cbp.batch_norm_inference(d["x"], scale, bias, mean, var, eps=eps, layout=layout)
    _x_shaped_ok(y, d["x"])
    want = ref.batch_norm_inference(d["x"], scale, bias, mean, var, eps, layout)
    r_inv = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    assert_close(y, want, dtype,
                 scale=_y_scale(d["x"], scale, bias, mean, r_inv, layout))


def test_batch_norm_inference_default_eps(layout, dtype):
    d = make_inputs((3, 5, 2, 3), layout, dtype, seed=23)
    y = cbp.batch_norm_inference(d["x"], d["scale"], d["bias"], d["mean"], d["var"],
                                 layout=layout)
    want = ref.batch_norm_inference(d["x"], d["scale"], d["bias"], d["mean"], d["var"],
                                    1e-5, layout)
    r_inv = 1.0 / np.sqrt(d["var"] + 1e-5)
    assert_close(y, want, dtype,
                 scale=_y_scale(d["x"], d["scale"], d["bias"], d["mean"], r_inv, layout))


def test_half_precision_per_channel_vectors(layout, dtype):
    """float16 per-channel vectors are accepted and used as float64."""
    d = make_inputs((2, 4, 3, 3), layout, dtype, seed=24)
    mean, inv_std, scale, bias = (np.asarray(d[k]).astype(np.float16)
                                  for k in ("mean", "inv_std", "scale", "bias"))
    var = np.asarray(d["var"]).astype(np.float16)
    res = cbp.batch_norm_backward(d["x"], d["dy"], mean, inv_std, scale, layout=layout)
    _check_backward(res, d["x"], d["dy"], mean, inv_std, scale, layout, dtype)
    res = cbp.batch_norm_forward(d["x"], scale, bias, layout=layout)
    _check_forward(res, d["x"], scale, bias, 1e-5, layout, dtype)
    y = cbp.batch_norm_inference(d["x"], scale, bias, mean, var, layout=layout)
    want = ref.batch_norm_inference(d["x"], scale, bias, mean, var, 1e-5, layout)
    assert_close(y, want, dtype, scale=_y_scale(d["x"], scale, bias, mean,
                                                1 / np.sqrt(var.astype(float) + 1e-5),
                                                layout))


# ---------------------------------------------------------------------------
# Medium shapes: every function, every kernel decomposition, in place too
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", MEDIUM_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_medium_shapes_all_functions(shape, layout, dtype):
    _check_all_functions(shape, layout, dtype)


# The row kernels pick their row order by row width and array size; which
# path each case takes is asserted in tests/test_paths.py (cbp.plan_info).
SIZE_PATH_CASES = [
    ((9, 2050), np.float64),          # rows >= 8 KiB: four quarters, plus leftover rows
    ((1100, 1024), np.float32),       # > 4 MiB of rows < 8 KiB
    ((600, 1030), np.float64),        # > 4 MiB of rows >= 8 KiB: four quarters
    ((2100, 1030), np.float32),       # > 8 MiB of 4 KiB rows: quartered dX sweep (2 threads)
    ((16, 3, 150, 150), np.float32),  # NHWC > 4 MiB of widened rows (22 pixels of 3)
    ((4225, 2048), np.float32),       # > 32 MiB of long rows: quartered sweeps too
]


@pytest.mark.parametrize("shape,dtype", SIZE_PATH_CASES,
                         ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_size_dependent_paths_all_functions(shape, dtype):
    _check_all_functions(shape, "NHWC", dtype)


# Outputs of 16 MiB or more are written with streaming stores in whole aligned
# 64-byte lines, the rest of each plane or span of rows with plain stores
# (NCHW planes of at least 256 elements and 512 bytes; NHWC rows from a third
# of the LLC, 11 MiB with the pinned 32 MiB).
STREAM_CASES = [
    ((4, 17, 250, 251), np.float32, "NCHW"),  # planes that start mid-line
    ((8, 64, 64, 64), np.float64, "NCHW"),    # planes of whole lines
    ((50, 300, 17, 17), np.float32, "NCHW"),  # planes of 289 elements (1156 bytes), runs of planes
    ((260, 257, 8, 8), np.float32, "NHWC"),   # rows of 1028 bytes, one at a time
    ((2100, 2050), np.float32, "NCHW"),       # four rows of 8200 bytes per step
]


@pytest.mark.parametrize("shape,dtype,layout", STREAM_CASES,
                         ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_streaming_store_paths_all_functions(shape, dtype, layout):
    _check_all_functions(shape, layout, dtype)


@pytest.mark.parametrize("shape", MEDIUM_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_small_cache_blocks(shape, dtype):
    # the fused NCHW passes cut into many cache blocks (tests/test_paths.py)
    old = cbp._kernels.cache_block_bytes(4096)
    try:
        _check_all_functions(shape, "NCHW", dtype)
    finally:
        cbp._kernels.cache_block_bytes(old)


@pytest.mark.parametrize("shape,dtype,layout", STREAM_CASES,
                         ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_streaming_store_paths_misaligned_out(shape, dtype, layout):
    # out one element past a 64-byte boundary: every row or plane starts mid-line
    d = make_inputs(shape, layout, dtype, seed=41)
    x, dy, C, M = d["x"], d["dy"], d["C"], d["M"]
    mean, inv_std, scale, bias = (d[k] for k in ("mean", "inv_std", "scale", "bias"))
    buf = np.empty(x.size + 16, dtype=dtype)
    first = (-(buf.ctypes.data // buf.itemsize) % (64 // buf.itemsize)) + 1
    out = buf[first:first + x.size].reshape(x.shape)
    assert out.ctypes.data % 64 == buf.itemsize
    res = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout, out=out)
    assert res[0] is out
    _check_backward(res, x, dy, mean, inv_std, scale, layout, dtype)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    out[...] = 0
    cbp.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout=layout, out=out)
    assert_close(out, ref.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout),
                 dtype, scale=_dx_scale(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout))
    out[...] = 0
    res = cbp.batch_norm_forward(x, scale, bias, layout=layout, out=out)
    _check_forward(res, x, scale, bias, 1e-5, layout, dtype)


def _check_all_functions(shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=40)
    x, dy, C, M = d["x"], d["dy"], d["C"], d["M"]
    mean, inv_std, scale, bias, var = (d[k] for k in ("mean", "inv_std", "scale", "bias",
                                                       "var"))
    _check_stats(cbp.channel_stats(x, layout=layout), x, layout, dtype)

    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
    s_ds, s_db = _backprop_scales(x, dy, mean, inv_std, layout)
    assert_close(ds, r_ds, dtype, scale=s_ds)
    assert_close(db, r_db, dtype, scale=s_db)

    s_dx = _dx_scale(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout)
    r_dx = ref.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout)
    dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, r_ds, r_db, M, layout=layout)
    _x_shaped_ok(dx, x)
    assert_close(dx, r_dx, dtype, scale=s_dx)

    _check_backward(cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout),
                    x, dy, mean, inv_std, scale, layout, dtype)
    _check_forward(cbp.batch_norm_forward(x, scale, bias, layout=layout),
                   x, scale, bias, 1e-5, layout, dtype)
    y = cbp.batch_norm_inference(x, scale, bias, mean, var, layout=layout)
    _x_shaped_ok(y, x)
    assert_close(y, ref.batch_norm_inference(x, scale, bias, mean, var, 1e-5, layout), dtype,
                 scale=_y_scale(x, scale, bias, mean, inv_std, layout))

    # in place: backward into dy, forward into x (x is read whole before written)
    r_fy, r_fmean, r_finv = ref.batch_norm_forward(x, scale, bias, 1e-5, layout)
    dy_w = dy.copy()
    res = cbp.batch_norm_backward(x, dy_w, mean, inv_std, scale, layout=layout, out=dy_w)
    assert res[0] is dy_w
    assert_close(dy_w, r_dx, dtype, scale=s_dx)
    assert_close(res[1], r_ds, dtype, scale=s_ds)
    x_w = x.copy()
    res = cbp.batch_norm_forward(x_w, scale, bias, layout=layout, out=x_w)
    assert res[0] is x_w
    assert_close(x_w, r_fy, dtype, scale=_y_scale(x, scale, bias, r_fmean, r_finv, layout))
    assert_close(res[1], r_fmean, dtype, scale=maxabs(x))
    assert_close(res[2], r_finv, dtype)


# ---------------------------------------------------------------------------
# Large mean offset (|mean| >> std): centred formulas required
# ---------------------------------------------------------------------------

OFFSET_CASES = [
    # (dtype, offset, canonical shape, rtol)
    (np.float32, 1e4, (8, 3, 16, 16), 1e-3),
    (np.float32, -1e4, (64, 2), 1e-3),
    (np.float32, 1e4, (4, 2, 3, 5, 7), 1e-3),
    (np.float32, 1e4, (3, 2, 40, 40), 1e-3),
    (np.float32, -1e4, (16, 2, 64, 64), 1e-3),
    (np.float32, 1e4, (1000, 3), 1e-3),
    (np.float64, 1e6, (8, 3, 16, 16), 1e-8),
]


def _offset_inputs(dtype, offset, shape, layout, seed):
    rng = np.random.default_rng(seed)
    shp = layout_shape(shape, layout)
    C = shape[1]
    loc = offset * (1 + 0.1 * rng.uniform(-1, 1, C))
    x = (ref.bcast(loc, len(shp), layout) + rng.standard_normal(shp)).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    return x, dy, rng.standard_normal(C), rng.standard_normal(C)


@pytest.mark.parametrize("dtype,offset,shape,rtol", OFFSET_CASES,
                         ids=lambda v: str(v) if not isinstance(v, type) else np.dtype(v).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mean_offset_stats(dtype, offset, shape, rtol, layout):
    x, _, _, _ = _offset_inputs(dtype, offset, shape, layout, seed=25)
    st = cbp.channel_stats(x, layout=layout)
    count, mean, var, m2 = ref.channel_stats(x, layout)
    assert st.count == count
    # var is ~1 while |mean| ~ 1e4: an E[x^2]-E[x]^2 or float32 running sum
    # would be wildly off here.
    assert np.all(np.abs(st.var / var - 1) < 10 * rtol), (st.var, var)
    np.testing.assert_allclose(st.var, var, rtol=rtol)
    np.testing.assert_allclose(st.m2, m2, rtol=rtol)
    np.testing.assert_allclose(st.mean, mean, rtol=rtol * 1e-3, atol=0)
    np.testing.assert_allclose(st.inv_std(1e-5), 1 / np.sqrt(var + 1e-5), rtol=rtol)


def _drifting_rows(kind, R, C, rng):
    """Rows whose running mean is a poor shift for later blocks of rows."""
    z = rng.standard_normal((R, C))
    if kind == "first block far":   # the first 32 rows of two row groups 300 std away
        z[:32] += 300.0
        z[R // 64:R // 64 + 32] -= 300.0
    elif kind == "first row far":   # one row 1000 std away: a poor shift for the rest
        z[0] += 1e3
    elif kind == "step":            # the second half 1000 std away
        z[R // 2:] += 1e3
    elif kind == "trend":           # the mean drifts by 1000 std over the rows
        z += np.linspace(0.0, 1e3, R)[:, None]
    elif kind == "sorted":          # each column in increasing order, |mean| = 500 std
        z = np.sort(z, axis=0) + 500.0
    return z


@pytest.mark.parametrize("kind", ["first block far", "first row far", "step", "trend", "sorted"])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-12)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("shape,layout", [((40000, 48), "NCHW"), ((50, 300, 20, 20), "NHWC"),
                                          ((64, 30, 7, 7), "NCHW"), ((225, 300, 7, 7), "NCHW"),
                                          ((360, 300, 5, 5), "NCHW"), ((12, 3, 48, 48), "NCHW")],
                         ids=["2-D", "NHWC", "NCHW-7x7", "NCHW-7x7-tall", "NCHW-5x5-tall",
                              "NCHW-48x48"])
def test_moments_of_drifting_rows(kind, dtype, rtol, shape, layout):
    # Row moments sum each block after the first about the running mean of the
    # rows before it; Chan's merge bounds that error by a few float ulps of the
    # total M2 (_nhwc_reduce.pxi), whatever the blocks' means do.
    # NCHW 7x7 planes go plane by plane in image blocks of 1, 1, 2, 4, ...
    # (runs_moments_piece; 225x300x7x7: 56 images per image group). The 5x5
    # planes of 360x300x5x5 run the column kernels with 45 images per image
    # group: blocks of 32 and 13 rows, read eight images per step
    # (APART_ROWS), then four, then one. Long planes (48x48) go block by block
    # in plane_moments, every block after a unit's first about the running mean.
    rng = np.random.default_rng(31)
    shp = layout_shape(shape, layout)
    z = _drifting_rows(kind, int(np.prod(shp)) // shape[1], shape[1], rng)
    if layout == "NCHW" and len(shape) == 4:
        # rows are images here: drift over the batch, same in every pixel
        z = _drifting_rows(kind, shape[0], shape[1] * shape[2] * shape[3], rng)
    x = z.reshape(shp).astype(dtype)
    for num_threads in (1, 2):
        st = cbp.channel_stats(x, layout=layout, num_threads=num_threads)
        count, mean, var, m2 = ref.channel_stats(x, layout)
        np.testing.assert_allclose(st.var, var, rtol=rtol)
        np.testing.assert_allclose(st.mean, mean, rtol=0,
                                   atol=rtol * (np.abs(mean) + np.sqrt(var)).max())


@pytest.mark.parametrize("kind", ["first block far", "first row far", "step", "trend", "sorted"])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-12)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (5, 2, 30, 50), (1, 2, 256, 200)],
                         ids=["64x64", "30x50", "256x200"])
def test_moments_of_drifting_planes(kind, dtype, rtol, shape):
    # The drift along each NCHW plane: plane_moments sums every block of a
    # plane after a unit's first about the running mean of the elements
    # before it (csrc/plane_reduce.h), so a block far from the elements
    # before it must cost no accuracy either. 256x200 planes are cut into
    # chunks (units of their own, merged afterwards).
    rng = np.random.default_rng(37)
    N, C = shape[:2]
    S = shape[2] * shape[3]
    z = _drifting_rows(kind, S, N * C, rng).T.reshape(shape)
    x = z.astype(dtype)
    for num_threads in (1, 2):
        st = cbp.channel_stats(x, num_threads=num_threads)
        count, mean, var, m2 = ref.channel_stats(x, "NCHW")
        np.testing.assert_allclose(st.var, var, rtol=rtol)
        np.testing.assert_allclose(st.mean, mean, rtol=0,
                                   atol=rtol * (np.abs(mean) + np.sqrt(var)).max())


@pytest.mark.parametrize("dtype,offset,shape,rtol", OFFSET_CASES,
                         ids=lambda v: str(v) if not isinstance(v, type) else np.dtype(v).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mean_offset_forward_backward(dtype, offset, shape, rtol, layout):
    x, dy, scale, bias = _offset_inputs(dtype, offset, shape, layout, seed=26)
    res = cbp.batch_norm_forward(x, scale, bias, eps=1e-5, layout=layout)
    y, mean, inv_std = res
    r_y, r_mean, r_inv = ref.batch_norm_forward(x, scale, bias, 1e-5, layout)
    np.testing.assert_allclose(inv_std, r_inv, rtol=rtol)
    # y: relative to its own magnitude (|x_hat| ~ 1), not to |x| ~ 1e4
    assert_close(y, r_y, dtype, rtol=rtol, scale=maxabs(r_y))
    # backward from the reference statistics
    res = cbp.batch_norm_backward(x, dy, r_mean, r_inv, scale, layout=layout)
    _check_backward(res, x, dy, r_mean, r_inv, scale, layout, dtype, rtol=rtol)
    dsc, dbi = cbp.channel_backprop_stats(x, dy, r_mean, r_inv, layout=layout)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, r_mean, r_inv, layout)
    s_ds, s_db = _backprop_scales(x, dy, r_mean, r_inv, layout)
    assert_close(dsc, r_ds, dtype, rtol=rtol, scale=s_ds)
    assert_close(dbi, r_db, dtype, rtol=rtol, scale=s_db)
    dx = cbp.batch_norm_dx(x, dy, r_mean, r_inv, scale, r_ds, r_db, x.size // len(scale),
                           layout=layout)
    want = ref.batch_norm_dx(x, dy, r_mean, r_inv, scale, r_ds, r_db, x.size // len(scale),
                             layout)
    assert_close(dx, want, dtype, rtol=rtol,
                 scale=_dx_scale(x, dy, r_mean, r_inv, scale, r_ds, r_db,
                                 x.size // len(scale), layout))


# ---------------------------------------------------------------------------
# out=, in-place
# ---------------------------------------------------------------------------

OUT_SHAPES = [(3, 4, 5, 5), (6, 5), (2, 3, 4), (2, 3, 2, 3, 2)]


def _call_x_shaped(name, d, layout, **kw):
    """Call one x-shaped-output function; return (x-shaped result, full result,
    float64 reference of the x-shaped output, scale for atol)."""
    x, dy = d["x"], d["dy"]
    mean, inv_std, scale, bias, var = d["mean"], d["inv_std"], d["scale"], d["bias"], d["var"]
    M = d["M"]
    if name == "dx":
        ds, db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
        want = ref.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, M, layout)
        sc = _dx_scale(x, dy, mean, inv_std, scale, ds, db, M, layout)
        res = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, M, layout=layout, **kw)
        return res, res, want, sc
    if name == "backward":
        want = ref.batch_norm_backward(x, dy, mean, inv_std, scale, layout)[0]
        ds, db = ref.channel_backprop_stats(x, dy, mean, inv_std, layout)
        sc = _dx_scale(x, dy, mean, inv_std, scale, ds, db, M, layout)
        res = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout, **kw)
        return res[0], res, want, sc
    if name == "forward":
        want, r_mean, r_inv = ref.batch_norm_forward(x, scale, bias, 1e-5, layout)
        sc = _y_scale(x, scale, bias, r_mean, r_inv, layout)
        res = cbp.batch_norm_forward(x, scale, bias, layout=layout, **kw)
        return res[0], res, want, sc
    if name == "inference":
        want = ref.batch_norm_inference(x, scale, bias, mean, var, 1e-5, layout)
        sc = _y_scale(x, scale, bias, mean, 1 / np.sqrt(var + 1e-5), layout)
        res = cbp.batch_norm_inference(x, scale, bias, mean, var, layout=layout, **kw)
        return res, res, want, sc
    raise AssertionError(name)


X_SHAPED = ["dx", "backward", "forward", "inference"]


@pytest.mark.parametrize("name", X_SHAPED)
@pytest.mark.parametrize("shape", OUT_SHAPES, ids=shape_id)
def test_out_argument(name, shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=27)
    x0, dy0 = d["x"].copy(), d["dy"].copy()
    out = np.full_like(d["x"], np.nan)
    got, full, want, sc = _call_x_shaped(name, d, layout, out=out)
    assert got is out
    assert_close(out, want, dtype, scale=sc)
    # inputs untouched
    np.testing.assert_array_equal(d["x"], x0)
    np.testing.assert_array_equal(d["dy"], dy0)
    if name == "backward":
        _check_backward(full, d["x"], d["dy"], d["mean"], d["inv_std"], d["scale"],
                        layout, dtype)
    if name == "forward":
        _check_forward(full, d["x"], d["scale"], d["bias"], 1e-5, layout, dtype)


@pytest.mark.parametrize("name", X_SHAPED)
@pytest.mark.parametrize("shape", OUT_SHAPES, ids=shape_id)
def test_out_none_allocates_new(name, shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=28)
    got, _, want, sc = _call_x_shaped(name, d, layout, out=None)
    assert got is not d["x"] and got is not d["dy"]
    assert not np.shares_memory(got, d["x"]) and not np.shares_memory(got, d["dy"])
    assert_close(got, want, dtype, scale=sc)


@pytest.mark.parametrize("name", X_SHAPED)
@pytest.mark.parametrize("shape", OUT_SHAPES, ids=shape_id)
def test_inplace_out_is_x(name, shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=29)
    x_saved = d["x"].copy()
    # references from an untouched copy
    d_ref = dict(d, x=x_saved)
    _, _, want, sc = _call_x_shaped(name, d_ref, layout)
    if name == "backward":
        r_ds, r_db = ref.channel_backprop_stats(x_saved, d["dy"], d["mean"],
                                                d["inv_std"], layout)
    if name == "forward":
        _, r_mean, r_inv = ref.batch_norm_forward(x_saved, d["scale"], d["bias"], 1e-5,
                                                  layout)
    x = d["x"]
    got, full, _, _ = _call_x_shaped(name, d, layout, out=x)
    assert got is x
    assert_close(x, want, dtype, scale=sc)
    if name == "backward":
        s_ds, s_db = _backprop_scales(x_saved, d["dy"], d["mean"], d["inv_std"], layout)
        assert_close(full[1], r_ds, dtype, scale=s_ds)
        assert_close(full[2], r_db, dtype, scale=s_db)
    if name == "forward":
        assert_close(full[1], r_mean, dtype, scale=maxabs(x_saved))
        assert_close(full[2], r_inv, dtype)


@pytest.mark.parametrize("name", ["dx", "backward"])
@pytest.mark.parametrize("shape", OUT_SHAPES, ids=shape_id)
def test_inplace_out_is_dy(name, shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=30)
    dy_saved = d["dy"].copy()
    _, _, want, sc = _call_x_shaped(name, dict(d, dy=dy_saved), layout)
    if name == "backward":
        r_ds, r_db = ref.channel_backprop_stats(d["x"], dy_saved, d["mean"],
                                                d["inv_std"], layout)
    dy = d["dy"]
    got, full, _, _ = _call_x_shaped(name, d, layout, out=dy)
    assert got is dy
    assert_close(dy, want, dtype, scale=sc)
    if name == "backward":
        s_ds, s_db = _backprop_scales(d["x"], dy_saved, d["mean"], d["inv_std"], layout)
        assert_close(full[1], r_ds, dtype, scale=s_ds)
        assert_close(full[2], r_db, dtype, scale=s_db)


# ---------------------------------------------------------------------------
# read-only and non-contiguous inputs
# ---------------------------------------------------------------------------

def _readonly(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _run_all_and_check(x, dy, mean, inv_std, scale, bias, var, layout, dtype):
    """Call every function with the given (possibly odd) arrays and compare
    with the reference computed on plain contiguous copies."""
    cx, cdy = np.array(x), np.array(dy)
    C = np.shape(mean)[0]
    M = cx.size // C

    st = cbp.channel_stats(x, layout=layout)
    _check_stats(st, cx, layout, dtype)

    ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout)
    r_ds, r_db = ref.channel_backprop_stats(cx, cdy, mean, inv_std, layout)
    s_ds, s_db = _backprop_scales(cx, cdy, mean, inv_std, layout)
    assert_close(ds, r_ds, dtype, scale=s_ds)
    assert_close(db, r_db, dtype, scale=s_db)

    dsv, dbv = r_ds.copy(), r_db.copy()
    if isinstance(mean, np.ndarray) and not mean.flags.writeable:
        dsv, dbv = _readonly(dsv), _readonly(dbv)
    dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, dsv, dbv, M, layout=layout)
    _x_shaped_ok(dx, cx)
    assert_close(dx, ref.batch_norm_dx(cx, cdy, mean, inv_std, scale, r_ds, r_db, M, layout),
                 dtype, scale=_dx_scale(cx, cdy, mean, inv_std, scale, r_ds, r_db, M, layout))

    res = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    _check_backward(res, cx, cdy, mean, inv_std, scale, layout, dtype)

    res = cbp.batch_norm_forward(x, scale, bias, eps=1e-4, layout=layout)
    _check_forward(res, cx, scale, bias, 1e-4, layout, dtype)

    y = cbp.batch_norm_inference(x, scale, bias, mean, var, eps=1e-4, layout=layout)
    _x_shaped_ok(y, cx)
    assert_close(y, ref.batch_norm_inference(cx, scale, bias, mean, var, 1e-4, layout),
                 dtype, scale=_y_scale(cx, scale, bias, mean,
                                       1 / np.sqrt(np.asarray(var, float) + 1e-4), layout))


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (6, 5), (2, 3, 2, 3, 2)], ids=shape_id)
def test_readonly_inputs(shape, layout, dtype):
    d = make_inputs(shape, layout, dtype, seed=31)
    args = {k: _readonly(d[k]) for k in ("x", "dy", "mean", "inv_std", "scale", "bias", "var")}
    _run_all_and_check(args["x"], args["dy"], args["mean"], args["inv_std"], args["scale"],
                       args["bias"], args["var"], layout, dtype)


def _noncontig_views(shape, layout, dtype, seed):
    """Yield (kind, x, dy) with non-C-contiguous x/dy of the layout shape."""
    rng = np.random.default_rng(seed)
    shp = layout_shape(shape, layout)
    nd = len(shp)

    def gen(s, mul, add):
        return (rng.standard_normal(s) * mul + add).astype(dtype)

    def base(kind, mul, add):
        if kind == "transposed":          # reversed memory order (F-contiguous)
            return gen(shp[::-1], mul, add).T
        if kind == "step_last":           # x[..., ::2]
            return gen(shp[:-1] + (2 * shp[-1],), mul, add)[..., ::2]
        if kind == "step_axis1":          # x[:, ::2]
            return gen((shp[0], 2 * shp[1]) + shp[2:], mul, add)[:, ::2]
        if kind == "step_axis2":          # x[:, :, ::2]
            return gen(shp[:2] + (2 * shp[2],) + shp[3:], mul, add)[:, :, ::2]
        if kind == "negative":            # reversed along every axis
            return gen(shp, mul, add)[(slice(None, None, -1),) * nd]
        if kind == "permuted":            # axes 0 and 1 swapped in memory
            perm = (1, 0) + tuple(range(2, nd))
            return np.transpose(gen(tuple(shp[p] for p in perm), mul, add), perm)
        raise AssertionError(kind)

    kinds = ["transposed", "step_last", "step_axis1", "negative", "permuted"]
    if nd >= 3:
        kinds.append("step_axis2")
    for kind in kinds:
        x = base(kind, 1.5, 0.7)
        dy = base(kind, 1.0, 0.0)
        assert x.shape == shp and dy.shape == shp
        assert not x.flags.c_contiguous and not dy.flags.c_contiguous, kind
        yield kind, x, dy


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (6, 5), (3, 4, 5), (2, 3, 2, 3, 2)],
                         ids=shape_id)
def test_noncontiguous_inputs(shape, layout, dtype):
    C = shape[1]
    rng = np.random.default_rng(32)
    for kind, x, dy in _noncontig_views(shape, layout, dtype, seed=33):
        _, mean, var, _ = ref.channel_stats(x, layout)
        inv_std = 1 / np.sqrt(var + 1e-5)
        # per-channel vectors as strided views too
        vecs = rng.standard_normal((5, 2 * C))
        scale, bias = vecs[0, ::2], vecs[1, 1::2]
        mean_v = np.repeat(mean, 2)[::2]
        inv_v = np.repeat(inv_std, 2)[1::2]
        var_v = np.repeat(var, 2)[::2]
        assert not scale.flags.c_contiguous
        _run_all_and_check(x, dy, mean_v, inv_v, scale, bias, var_v, layout, dtype)


def test_noncontiguous_inputs_not_modified(layout, dtype):
    """Strided inputs are copied, never written."""
    shape = (3, 4, 5, 6)
    for kind, x, dy in _noncontig_views(shape, layout, dtype, seed=34):
        x0, dy0 = x.copy(), dy.copy()
        _, mean, var, _ = ref.channel_stats(x, layout)
        inv = 1 / np.sqrt(var + 1e-5)
        cbp.batch_norm_backward(x, dy, mean, inv, np.ones(4), layout=layout)
        cbp.batch_norm_forward(x, np.ones(4), np.zeros(4), layout=layout)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(dy, dy0)


# ---------------------------------------------------------------------------
# num_threads values give the reference result
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_threads", [None, 1, 2, 3, -1, -2, 64])
def test_num_threads_values(num_threads, layout):
    dtype = np.float64
    d = make_inputs((4, 6, 9, 7), layout, dtype, seed=35)
    kw = dict(layout=layout, num_threads=num_threads)
    _check_stats(cbp.channel_stats(d["x"], **kw), d["x"], layout, dtype)
    res = cbp.batch_norm_backward(d["x"], d["dy"], d["mean"], d["inv_std"], d["scale"], **kw)
    _check_backward(res, d["x"], d["dy"], d["mean"], d["inv_std"], d["scale"], layout, dtype)
    res = cbp.batch_norm_forward(d["x"], d["scale"], d["bias"], **kw)
    _check_forward(res, d["x"], d["scale"], d["bias"], 1e-5, layout, dtype)


# ---------------------------------------------------------------------------
# zero-size batches
# ---------------------------------------------------------------------------

def _zero_inputs(shape, layout, dtype):
    shp = layout_shape(shape, layout)
    C = shape[1]
    rng = np.random.default_rng(36)
    x = np.zeros(shp, dtype)
    dy = np.zeros(shp, dtype)
    return x, dy, C, rng.standard_normal(C), rng.uniform(0.5, 2, C)


@pytest.mark.parametrize("shape", EMPTY_M_SHAPES, ids=shape_id)
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_empty_batch(shape, layout, dtype, eps):
    x, dy, C, vec, pos = _zero_inputs(shape, layout, dtype)
    assert x.size == 0 and C > 0
    count, r_mean, r_var, r_m2 = ref.channel_stats(x, layout)
    assert count == 0

    st = cbp.channel_stats(x, layout=layout)
    assert st.count == 0 and isinstance(st.count, int)
    for a, w in ((st.mean, r_mean), (st.var, r_var), (st.m2, r_m2)):
        _per_channel_ok(a, C)
        np.testing.assert_array_equal(a, w)
    np.testing.assert_allclose(st.inv_std(eps), np.full(C, 1 / np.sqrt(eps)), rtol=1e-15)

    ds, db = cbp.channel_backprop_stats(x, dy, vec, pos, layout=layout)
    r_ds, r_db = ref.channel_backprop_stats(x, dy, vec, pos, layout)
    for a, w in ((ds, r_ds), (db, r_db)):
        _per_channel_ok(a, C)
        np.testing.assert_array_equal(a, w)

    dx, ds, db = cbp.batch_norm_backward(x, dy, vec, pos, vec, layout=layout)
    _x_shaped_ok(dx, x)
    for a in (ds, db):
        _per_channel_ok(a, C)
        np.testing.assert_array_equal(a, np.zeros(C))

    y, mean, inv_std = cbp.batch_norm_forward(x, vec, pos, eps=eps, layout=layout)
    _x_shaped_ok(y, x)
    _per_channel_ok(mean, C)
    _per_channel_ok(inv_std, C)
    r_y, r_mean, r_inv = ref.batch_norm_forward(x, vec, pos, eps, layout)
    np.testing.assert_array_equal(mean, r_mean)
    np.testing.assert_allclose(inv_std, r_inv, rtol=1e-15)

    dx = cbp.batch_norm_dx(x, dy, vec, pos, vec, vec, vec, 1, layout=layout)
    _x_shaped_ok(dx, x)

    y = cbp.batch_norm_inference(x, vec, vec, vec, pos, eps=eps, layout=layout)
    _x_shaped_ok(y, x)

    out = np.empty_like(x)
    assert cbp.batch_norm_backward(x, dy, vec, pos, vec, layout=layout, out=out)[0] is out


@pytest.mark.parametrize("shape", EMPTY_C_SHAPES, ids=shape_id)
def test_zero_channels(shape, layout, dtype):
    x, dy, C, vec, pos = _zero_inputs(shape, layout, dtype)
    assert C == 0
    e = np.zeros(0)

    st = cbp.channel_stats(x, layout=layout)
    for a in (st.mean, st.var, st.m2, st.inv_std(1e-5)):
        _per_channel_ok(a, 0)

    for a in cbp.channel_backprop_stats(x, dy, e, e, layout=layout):
        _per_channel_ok(a, 0)

    dx, ds, db = cbp.batch_norm_backward(x, dy, e, e, e, layout=layout)
    _x_shaped_ok(dx, x)
    _per_channel_ok(ds, 0)
    _per_channel_ok(db, 0)

    y, mean, inv_std = cbp.batch_norm_forward(x, e, e, layout=layout)
    _x_shaped_ok(y, x)
    _per_channel_ok(mean, 0)
    _per_channel_ok(inv_std, 0)

    _x_shaped_ok(cbp.batch_norm_dx(x, dy, e, e, e, e, e, 1, layout=layout), x)
    _x_shaped_ok(cbp.batch_norm_inference(x, e, e, e, e, layout=layout), x)
