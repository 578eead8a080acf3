"""Seeded fuzz of every public function against an independent oracle.

Each example draws one call: a function, x (and dy) of any dtype, ndim 0-7,
zero sizes, contiguous or strided or misaligned or masked or a list, values
of any magnitude in the float32 range (float64: 1e-150 to 1e150) with
occasional NaN and Inf, per-channel vectors in every form (arrays of either
float dtype, lists, integer arrays, None, strings, wrong lengths, masked), eps, count,
num_threads, layout and out. At most one argument is made invalid on purpose.

The oracle (written here, independent of cbp's own checks) says whether the
call must fail, and with which exception naming which argument, or must
succeed; a successful call is checked against the float64 NumPy reference
(tests/reference.py) under the NaN/Inf rule of the README. Three outcomes
fail the test: a crash (the test process dies), a wrong result, and an error
that is unexpected or does not name the argument.

CI runs CBP_FUZZ_EXAMPLES (default 1000) examples with a fixed seed; run more
with e.g. CBP_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cbp
import reference as ref

EXAMPLES = int(os.environ.get("CBP_FUZZ_EXAMPLES", "1000"))
FUNCS = ["channel_stats", "channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
         "batch_norm_forward", "batch_norm_inference", "sync_channel_stats",
         "sync_batch_norm_forward", "sync_batch_norm_backward"]
# the per-channel vectors each function takes, and what they must satisfy
VECTORS = {
    "channel_stats": [], "sync_channel_stats": [],
    "channel_backprop_stats": ["mean", "inv_std"],
    "batch_norm_dx": ["mean", "inv_std", "scale", "dscale", "dbias"],
    "batch_norm_backward": ["mean", "inv_std", "scale"],
    "sync_batch_norm_backward": ["mean", "inv_std", "scale"],
    "batch_norm_forward": ["scale", "bias"], "sync_batch_norm_forward": ["scale", "bias"],
    "batch_norm_inference": ["scale", "bias", "mean", "var"],
}
HAS_DY = {"channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
          "sync_batch_norm_backward"}
HAS_OUT = {"batch_norm_dx", "batch_norm_backward", "batch_norm_forward", "batch_norm_inference",
           "sync_batch_norm_forward", "sync_batch_norm_backward"}
HAS_EPS = {"batch_norm_forward", "batch_norm_inference", "sync_batch_norm_forward"}
F32_MAX = float(np.finfo(np.float32).max)
RTOL = {np.float32: 2e-4, np.float64: 1e-9}


class Bad:
    """The call must raise `exc` with `name` in its message."""

    def __init__(self, exc, name):
        self.exc, self.name = exc, name


def _noop_allreduce(buf):
    return None


# ---------------------------------------------------------------------------
# drawing a call

def _aligned_copy_at_odd_offset(a):
    """The same values in a view whose data pointer is not a multiple of its itemsize."""
    raw = np.empty(a.nbytes + 1, dtype=np.uint8)
    v = raw[1:].view(a.dtype).reshape(a.shape)
    v[...] = a
    assert v.size == 0 or not v.flags.aligned
    return v


@st.composite
def calls(draw):
    func = draw(st.sampled_from(FUNCS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    ndim = draw(st.sampled_from([2, 2, 3, 4, 4, 5]))
    C = draw(st.sampled_from([1, 2, 3, 5, 8, 67]))
    N = draw(st.sampled_from([0, 1, 2, 3, 7]))
    spatial = [draw(st.sampled_from([0, 1, 2, 3, 5, 7, 16])) for _ in range(ndim - 2)]
    if np.prod(spatial) * N * C > 6000:
        spatial = [min(s, 3) for s in spatial]
    shape = (N, C, *spatial) if layout == "NCHW" else (N, *spatial, C)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    # magnitudes anywhere in the dtype's comfortable range, per channel
    lo, hi = (-40, 37) if dtype == np.float32 else (-150, 150)
    std = 10.0 ** rng.uniform(lo, hi, C) * (rng.random(C) > 0.1)  # some constant channels
    offset = rng.choice([0.0, 1.0, 3.0, 1e4], C)
    z = np.clip(rng.standard_normal(shape), -3, 3)
    x = (ref.bcast(std, len(shape), layout) * (ref.bcast(offset, len(shape), layout) + z))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
        x[~np.isfinite(x)] = 0
        dscale_dy = 10.0 ** rng.uniform(-5, 5)
        dy = (dscale_dy * np.clip(rng.standard_normal(shape), -3, 3)).astype(dtype)
    if x.size and draw(st.integers(0, 9)) == 0:  # NaN or Inf somewhere
        (x if draw(st.booleans()) else dy).flat[rng.integers(x.size)] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))

    # realistic statistics, from the data's own float64 reference where it has any
    with np.errstate(all="ignore"):
        _, mean, var, _ = ref.channel_stats(x, layout)
        fin = np.isfinite(mean) & np.isfinite(var)
    mean = np.where(fin, mean, 0.0)
    var = np.where(fin, var, 1.0)
    eps = float(draw(st.sampled_from([1e-5, 1e-3, 1e-300, 1e-80, 1.0])))
    inv_std = 1.0 / np.sqrt(var + eps)
    inv_std = np.where(np.isfinite(inv_std) & (inv_std > 0), inv_std, 1.0)
    vec = dict(mean=mean, inv_std=inv_std, var=var,
               scale=rng.choice([1.0, -0.5, 2.0, 1e30, 1e-30], C) * rng.uniform(0.5, 1.5, C),
               bias=rng.standard_normal(C) * 10.0 ** rng.uniform(-3, 3),
               dscale=rng.standard_normal(C) * 10.0 ** rng.uniform(-3, 3),
               dbias=rng.standard_normal(C) * 10.0 ** rng.uniform(-3, 3))
    M = int(np.prod(shape)) // C if C else 0
    args = dict(func=func, x=x, dy=dy if func in HAS_DY else None, layout=layout,
                # an empty shard of a batch that has elements elsewhere
                vec={k: vec[k] for k in VECTORS[func]}, eps=eps, count=max(M, 1),
                num_threads=draw(st.sampled_from([None, 1, 2, 3, 8, -1])), out=None,
                expect=None, C=C)

    # how x (and dy) are passed: each form is valid
    form = draw(st.sampled_from(["plain", "plain", "strided", "misaligned", "list", "fortran"]))
    if form == "strided" and x.ndim:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype)
        big[..., ::2] = x
        args["x"] = big[..., ::2]
    elif form == "misaligned":
        args["x"] = _aligned_copy_at_odd_offset(x)
        if args["dy"] is not None:
            args["dy"] = _aligned_copy_at_odd_offset(dy)
    elif form == "list" and dtype == np.float64 and x.size:
        args["x"] = x.tolist()
        if args["dy"] is not None:
            args["dy"] = dy.tolist()
    elif form == "fortran":
        args["x"] = np.asfortranarray(x)
    for k in list(args["vec"]):
        vform = draw(st.sampled_from(["f64", "f64", "f32", "list", "int", "none"]))
        if vform == "f32" and k not in ("mean", "var", "inv_std"):  # statistics stay exact
            args["vec"][k] = args["vec"][k].astype(np.float32)
        elif vform == "list":
            args["vec"][k] = args["vec"][k].tolist()
        elif vform == "int" and k in ("scale", "bias", "dscale", "dbias"):
            args["vec"][k] = np.clip(np.rint(args["vec"][k]), -1e6, 1e6).astype(np.int64)
        elif vform == "none" and k in ("scale", "bias"):
            args["vec"][k] = None  # the identity affine

    if func in HAS_OUT and draw(st.integers(0, 2)) == 0:
        kind = draw(st.sampled_from(["new", "misaligned", "x", "dy"]))
        if kind == "new":
            args["out"] = np.full(shape, 7, dtype=dtype)
        elif kind == "misaligned":
            args["out"] = _aligned_copy_at_odd_offset(np.zeros(shape, dtype=dtype))
        elif isinstance(args["x"], np.ndarray) and args["x"].flags.c_contiguous \
                and args["x"].flags.aligned:
            if kind == "x":
                args["x"] = args["x"].copy()
                args["out"] = args["x"]
            elif args["dy"] is not None and func != "channel_backprop_stats":
                args["dy"] = np.ascontiguousarray(args["dy"])
                args["out"] = args["dy"]

    if draw(st.integers(0, 3)) == 0:
        _spoil(draw, args, rng)
    return args


def _spoil(draw, args, rng):
    """Make one argument invalid and record the error the call must raise."""
    func, C, x = args["func"], args["C"], args["x"]
    choices = ["x_dtype", "x_ndim", "layout", "num_threads", "masked"]
    if args["dy"] is not None:
        choices += ["dy_shape", "dy_dtype"]
    if args["vec"]:
        choices += ["vec_len", "vec_str", "vec_none", "vec_2d", "vec_masked", "vec_value"]
    if func in HAS_EPS:
        choices += ["eps"]
    if func == "batch_norm_dx":
        choices += ["count"]
    if func in HAS_OUT:
        choices += ["out_dtype", "out_shape", "out_readonly", "out_matrix"]
    what = draw(st.sampled_from(choices))
    xa = np.asarray(x)
    if what == "x_dtype":
        with np.errstate(all="ignore"):
            args["x"] = xa.astype(draw(st.sampled_from([np.float16, np.int32, np.complex64,
                                                         np.bool_])))
        args["expect"] = Bad(TypeError, "x")
    elif what == "x_ndim":
        nd = draw(st.sampled_from([0, 1, 6, 7]))
        args["x"] = np.zeros((2,) * nd, dtype=xa.dtype)
        args["expect"] = Bad(ValueError, "x")
        args["dy"] = None if args["dy"] is None else np.zeros((2,) * nd, dtype=xa.dtype)
        args["out"] = None
    elif what == "layout":
        args["layout"] = draw(st.sampled_from(["nchw", "NDHWC", "", None, 1]))
        args["expect"] = Bad(ValueError, "layout")
    elif what == "num_threads":
        nt = draw(st.sampled_from([0, 10 ** 6, 2 ** 31, 2 ** 70, 1.5, "2", True]))
        args["num_threads"] = nt
        exc = TypeError if isinstance(nt, (float, str, bool)) else ValueError
        args["expect"] = Bad(exc, "num_threads")
    elif what == "masked":
        m = np.zeros(xa.shape, dtype=bool)
        if m.size:
            m.flat[0] = True
        args["x"] = np.ma.MaskedArray(xa, mask=m)
        args["expect"] = Bad(TypeError, "x")
    elif what == "dy_shape":
        args["dy"] = np.zeros(xa.shape + (2,), dtype=xa.dtype)
        args["expect"] = Bad(ValueError, "dy")
        args["out"] = None
    elif what == "dy_dtype":
        other = np.float64 if xa.dtype == np.float32 else np.float32
        args["dy"] = np.asarray(args["dy"]).astype(other)
        args["expect"] = Bad(TypeError, "dy")
        args["out"] = None
    elif what.startswith("vec"):
        k = draw(st.sampled_from(sorted(args["vec"])))
        if args["vec"][k] is None:
            args["vec"][k] = np.ones(C)
        v = np.asarray(args["vec"][k], dtype=np.float64)
        if what == "vec_len":
            args["vec"][k] = np.ones(C + draw(st.sampled_from([1, -1])))
            args["expect"] = Bad(ValueError, k)
        elif what == "vec_str":
            args["vec"][k] = "abc"
            args["expect"] = Bad(TypeError, k)
        elif what == "vec_none":
            if k in ("scale", "bias"):
                return  # None is the identity affine there
            args["vec"][k] = None
            args["expect"] = Bad(TypeError, k)
        elif what == "vec_2d":
            args["vec"][k] = np.ones((C, 2))
            args["expect"] = Bad(ValueError, k)
        elif what == "vec_masked":
            args["vec"][k] = np.ma.MaskedArray(v, mask=np.arange(C) == 0)
            args["expect"] = Bad(TypeError, k)
        elif what == "vec_value":
            rule = {"mean": [np.nan, np.inf], "inv_std": [0.0, -1.0, np.nan, np.inf],
                    "var": [-1.0, np.nan, np.inf]}.get(k)
            if rule is None:
                return  # scale, bias, dscale, dbias take any value (NaN propagates)
            v = v.copy()
            v[rng.integers(C)] = draw(st.sampled_from(rule))
            args["vec"][k] = v
            args["expect"] = Bad(ValueError, k)
    elif what == "eps":
        args["eps"] = draw(st.sampled_from([0.0, -1e-5, np.nan, np.inf, "1e-5", None]))
        exc = TypeError if isinstance(args["eps"], (str, type(None))) else ValueError
        args["expect"] = Bad(exc, "eps")
    elif what == "count":
        args["count"] = draw(st.sampled_from([-1, 2.5, True, "3"]))
        exc = ValueError if args["count"] == -1 else TypeError
        args["expect"] = Bad(exc, "count")
    elif what == "out_dtype":
        other = np.float64 if xa.dtype == np.float32 else np.float32
        args["out"] = np.zeros(xa.shape, dtype=other)
        args["expect"] = Bad(TypeError, "out")
    elif what == "out_shape":
        args["out"] = np.zeros(xa.shape + (1,), dtype=xa.dtype)
        args["expect"] = Bad(ValueError, "out")
    elif what == "out_readonly":
        o = np.zeros(xa.shape, dtype=xa.dtype)
        o.flags.writeable = False
        args["out"] = o
        args["expect"] = Bad(ValueError, "out")
    elif what == "out_matrix":
        args["out"] = np.matrix(np.zeros((2, 2), dtype=xa.dtype))
        args["expect"] = Bad(TypeError, "out")


# ---------------------------------------------------------------------------
# making the call and judging it

def _call(a):
    f = getattr(cbp, a["func"])
    kw = dict(layout=a["layout"], num_threads=a["num_threads"])
    if a["func"].startswith("sync_"):
        kw["allreduce"] = _noop_allreduce
    if a["func"] in HAS_EPS:
        kw["eps"] = a["eps"]
    if a["func"] in HAS_OUT:
        kw["out"] = a["out"]
    v = a["vec"]
    name = a["func"].replace("sync_", "")
    if name == "channel_stats":
        return f(a["x"], **kw)
    if name == "channel_backprop_stats":
        return f(a["x"], a["dy"], v["mean"], v["inv_std"], **kw)
    if name == "batch_norm_dx":
        return f(a["x"], a["dy"], v["mean"], v["inv_std"], v["scale"], v["dscale"], v["dbias"],
                 a["count"], **kw)
    if name == "batch_norm_backward":
        return f(a["x"], a["dy"], v["mean"], v["inv_std"], v["scale"], **kw)
    if name == "batch_norm_forward":
        return f(a["x"], v["scale"], v["bias"], **kw)
    return f(a["x"], v["scale"], v["bias"], v["mean"], v["var"], **kw)


def _f64(v):
    return np.asarray(v, dtype=np.float64)


def _bad_channels(a, layout, C):
    """Channels whose data hold NaN or Inf."""
    if not C or not np.asarray(a).size:
        return np.zeros(C, dtype=bool)
    return ~np.isfinite(ref.to_mc(np.asarray(a), layout)).all(axis=0)


def _check_vector(got, want, magnitude, nan_mask, rtol, what):
    got = _f64(got)
    assert got.shape == want.shape, what
    assert np.isnan(got[nan_mask]).all(), f"{what}: expected NaN at {np.flatnonzero(nan_mask)}"
    ok = ~nan_mask
    g, w, m = got[ok], want[ok], magnitude[ok]
    assert np.isfinite(g).all(), f"{what}: {g} (want {w})"
    assert (np.abs(g - w) <= rtol * m + 1e-300).all(), f"{what}: got {g}, want {w}"


def _check_array(got, want, layout, nan_channels, rtol, what, terms=None):
    """x-shaped output: NaN over nan_channels, elsewhere the reference rounded as the
    output dtype rounds it (inf beyond its range, 2^-149 resolution of float32).
    The tolerance is rtol times the channel's largest |want|, or of `terms` (the
    magnitudes of what is added up, x-shaped) where cancellation is expected."""
    assert isinstance(got, np.ndarray) and got.shape == want.shape, what
    if got.size == 0:
        return
    g = ref.to_mc(got, layout)
    w = ref.to_mc(want, layout)
    assert np.isnan(g[:, nan_channels]).all(), f"{what}: channels {nan_channels} not NaN"
    g, w = g[:, ~nan_channels], w[:, ~nan_channels]
    mag = np.abs(w) if terms is None else np.nan_to_num(ref.to_mc(terms, layout)[:, ~nan_channels])
    mag = np.where(np.isfinite(mag), mag, 0.0)
    scale = np.max(mag, axis=0) if w.size else np.zeros(w.shape[1])
    # where the tolerance itself passes the output's range (a huge coefficient
    # times a cancelling sum), any value of the right kind is as good as another
    vacuous = rtol * scale >= np.finfo(got.dtype).max
    assert not np.isnan(g[:, vacuous & ~np.isnan(w).any(axis=0)]).any(), what
    g, w, scale = g[:, ~vacuous], w[:, ~vacuous], scale[~vacuous]
    res = 0.0
    if got.dtype == np.float32:
        with np.errstate(over="ignore"):
            w32 = w.astype(np.float32).astype(np.float64)
        over = np.isinf(w32) & np.isfinite(w)
        np.testing.assert_array_equal(g[over], w32[over], err_msg=what)
        g, w = np.where(over, 0.0, g), np.where(over, 0.0, w)
        res = 2.0 ** -148
    nonfinite = ~np.isfinite(w)
    np.testing.assert_array_equal(g[nonfinite], w[nonfinite], err_msg=what)  # IEEE cases
    g, w = np.where(nonfinite, 0.0, g), np.where(nonfinite, 0.0, w)
    err = np.abs(g - w) - rtol * scale - res
    assert not (err > 0).any(), f"{what}: max excess error {err.max():.3g}"


def _judge(a, result):
    func, layout, C = a["func"], a["layout"], a["C"]
    x = np.asarray(a["x"])
    dtype = x.dtype.type
    rtol = RTOL[dtype]
    name = func.replace("sync_", "")
    badx = _bad_channels(x, layout, C)
    M = x.size // C if C else 0
    x2 = ref.to_mc(x, layout) if C else np.zeros((0, 0))
    v = {k: (np.full(C, 1.0 if k == "scale" else 0.0) if val is None else _f64(val))
         for k, val in a["vec"].items()}
    with np.errstate(all="ignore"):
        if name == "channel_stats":
            assert result.count == M
            _, mean, var, _ = ref.channel_stats(x, layout)
            spread = np.sqrt(np.abs(var))
            _check_vector(result.mean, mean, np.abs(mean) + spread, badx, rtol, "mean")
            _check_vector(result.var, var, var, badx, rtol, "var")
            return
        if name == "batch_norm_forward":
            y, mean_got, inv_got = result
            _, mean, var, _ = ref.channel_stats(x, layout)
            if M == 0:
                mean, var = np.zeros(C), np.zeros(C)
            inv = 1.0 / np.sqrt(var + a["eps"])
            spread = np.sqrt(np.abs(var))
            _check_vector(mean_got, mean, np.abs(mean) + spread, badx, rtol, "mean")
            _check_vector(inv_got, inv, inv, badx, rtol, "inv_std")
            want = ref.batch_norm_inference(x, v["scale"], v["bias"], np.where(badx, 0, mean),
                                            np.where(badx, 0, var), a["eps"], layout)
            _check_array(y, want, layout, badx & (M > 0), rtol, "y")
            _check_out(a, y)
            return
        if name == "batch_norm_inference":
            want = ref.batch_norm_inference(x, v["scale"], v["bias"], v["mean"], v["var"],
                                            a["eps"], layout)
            _check_array(result, want, layout, np.zeros(C, dtype=bool), rtol, "y")
            _check_out(a, result)
            return
        dy = np.asarray(a["dy"])
        bady = _bad_channels(dy, layout, C)
        dy2 = ref.to_mc(dy, layout) if C else np.zeros((0, 0))
        if name == "batch_norm_dx":
            want = ref.batch_norm_dx(x, dy, v["mean"], v["inv_std"], v["scale"], v["dscale"],
                                     v["dbias"], a["count"], layout)
            terms = _dx_terms(x, dy, v, v["dscale"], v["dbias"], a["count"], layout)
            _check_array(result, want, layout, np.zeros(C, dtype=bool), rtol, "dx", terms)
            _check_out(a, result)
            return
        ds_ref, db_ref = ref.channel_backprop_stats(x, dy, v["mean"], v["inv_std"], layout)
        ds_mag = np.nan_to_num(np.sum(np.abs(dy2 * (x2 - v["mean"]) * v["inv_std"]), axis=0))
        db_mag = np.nan_to_num(np.sum(np.abs(dy2), axis=0))
        if name == "channel_backprop_stats":
            ds, db = result
        else:
            dx, ds, db = result
        _check_vector(ds, np.nan_to_num(ds_ref), ds_mag, badx | bady, rtol, "dscale")
        _check_vector(db, np.nan_to_num(db_ref), db_mag, bady, rtol, "dbias")
        if name == "batch_norm_backward":
            # dx from cbp's own sums (checked just above); where M == 0, zeros
            if M:
                ds0, db0 = np.nan_to_num(ds), np.nan_to_num(db)
                want = ref.batch_norm_dx(x, dy, v["mean"], v["inv_std"], v["scale"], ds0, db0,
                                         M, layout)
                terms = _dx_terms(x, dy, v, ds0, db0, M, layout)
            else:
                want = terms = np.zeros(x.shape)
            _check_array(dx, want, layout, (badx | bady) & (M > 0), rtol, "dx", terms)
            _check_out(a, dx)


def _dx_terms(x, dy, v, dscale, dbias, count, layout):
    """|a| * (|dy| + |dbias| / count + |xhat * dscale| / count): what dx adds up."""
    nd = np.ndim(x)
    b = lambda u: ref.bcast(u, nd, layout)  # noqa: E731
    xhat = (x - b(v["mean"])) * b(v["inv_std"])
    return np.abs(b(v["scale"] * v["inv_std"])) * (
        np.abs(dy) + b(np.abs(dbias) / count) + np.abs(xhat * b(dscale)) / count)


def _check_out(a, got):
    if a["out"] is not None:
        np.testing.assert_array_equal(np.asarray(a["out"]), got)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(calls())
def test_fuzz(a):
    expect = a["expect"]
    if expect is not None:
        event(f"{a['func']}: {expect.exc.__name__} naming {expect.name}")
        with pytest.raises(expect.exc) as info:
            _call(a)
        assert expect.name in str(info.value), (
            f"{a['func']}: {type(info.value).__name__}: {info.value} (should name "
            f"{expect.name!r})")
        return
    # the oracle reads the inputs as they were (out may be x or dy: in place)
    snapshot = dict(a, x=np.array(a["x"]), dy=None if a["dy"] is None else np.array(a["dy"]))
    nan = any(np.isnan(np.asarray(u, dtype=np.float64)).any() or
              np.isinf(np.asarray(u, dtype=np.float64)).any()
              for u in (a["x"], a["dy"]) if u is not None)
    event(f"{a['func']}: result checked{' (NaN/Inf data)' if nan else ''}")
    result = _call(a)
    try:
        _judge(snapshot, result)
    except AssertionError:
        if os.environ.get("CBP_FUZZ_DUMP"):
            import pickle
            pickle.dump(snapshot, open(os.environ["CBP_FUZZ_DUMP"], "wb"))
        raise
