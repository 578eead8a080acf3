"""Every bad input in the README's conventions raises the documented exception type,
with a message that names the argument.  Each rejection is paired with the
valid call it was derived from, so a test cannot pass by everything failing."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cbp
import reference as ref

SHAPE = (2, 3, 4, 4)
C = 3
M = 2 * 16


def _good(layout="NCHW", dtype=np.float64):
    rng = np.random.default_rng(600)
    shp = SHAPE if layout == "NCHW" else (2, 4, 4, 3)
    x = rng.standard_normal(shp).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    _, mean, var, _ = ref.channel_stats(x, layout)
    return dict(x=x, dy=dy, mean=mean, inv_std=1 / np.sqrt(var + 1e-5),
                scale=rng.standard_normal(C), bias=rng.standard_normal(C),
                var=var, dscale=rng.standard_normal(C), dbias=rng.standard_normal(C))


# Each function described as (callable(**arrays, **kw), list of its array args)
def call(name, a, **kw):
    if name == "channel_stats":
        return cbp.channel_stats(a["x"], **kw)
    if name == "channel_backprop_stats":
        return cbp.channel_backprop_stats(a["x"], a["dy"], a["mean"], a["inv_std"], **kw)
    if name == "batch_norm_dx":
        count = kw.pop("count", M)
        return cbp.batch_norm_dx(a["x"], a["dy"], a["mean"], a["inv_std"], a["scale"],
                                 a["dscale"], a["dbias"], count, **kw)
    if name == "batch_norm_backward":
        return cbp.batch_norm_backward(a["x"], a["dy"], a["mean"], a["inv_std"], a["scale"],
                                       **kw)
    if name == "batch_norm_forward":
        return cbp.batch_norm_forward(a["x"], a["scale"], a["bias"], **kw)
    if name == "batch_norm_inference":
        return cbp.batch_norm_inference(a["x"], a["scale"], a["bias"], a["mean"], a["var"],
                                        **kw)
    raise AssertionError(name)


ALL = ["channel_stats", "channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
       "batch_norm_forward", "batch_norm_inference"]
WITH_DY = ["channel_backprop_stats", "batch_norm_dx", "batch_norm_backward"]
WITH_OUT = ["batch_norm_dx", "batch_norm_backward", "batch_norm_forward",
            "batch_norm_inference"]
WITH_EPS = ["batch_norm_forward", "batch_norm_inference"]
VEC_ARGS = {
    "channel_stats": [],
    "channel_backprop_stats": ["mean", "inv_std"],
    "batch_norm_dx": ["mean", "inv_std", "scale", "dscale", "dbias"],
    "batch_norm_backward": ["mean", "inv_std", "scale"],
    "batch_norm_forward": ["scale", "bias"],
    "batch_norm_inference": ["scale", "bias", "mean", "var"],
}
VEC_CASES = [(f, v) for f in ALL for v in VEC_ARGS[f]]


def _named(arg):
    """Regex requiring the argument name as a whole word."""
    return rf"(?<![A-Za-z0-9_]){arg}(?![A-Za-z0-9_])"


def _check_valid_first(name, a, **kw):
    """The unmodified call succeeds (so failures below are due to the change)."""
    call(name, dict(a), **dict(kw))


# ---------------------------------------------------------------------------
# x / dy dtype and shape
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.int64, np.int32, np.float16, np.complex128, np.bool_,
                                 np.longdouble if np.dtype(np.longdouble).itemsize > 8
                                 else np.uint8])
def test_x_bad_dtype(name, bad):
    a = _good()
    _check_valid_first(name, a)
    a["x"] = a["x"].astype(bad) if bad is not np.complex128 else a["x"] + 1j
    if name in WITH_DY:
        a["dy"] = a["dy"].astype(a["x"].dtype)  # same dtype for both: x is the culprit
    with pytest.raises(TypeError, match=_named("x")):
        call(name, a)


@pytest.mark.parametrize("name", ALL)
def test_x_object_dtype(name):
    a = _good()
    a["x"] = a["x"].astype(object)
    with pytest.raises(TypeError, match=_named("x")):
        call(name, a)


@pytest.mark.parametrize("name", WITH_DY)
@pytest.mark.parametrize("xd,dyd", [(np.float32, np.float64), (np.float64, np.float32),
                                    (np.float64, np.int64), (np.float32, np.float16)])
def test_dy_dtype_mismatch(name, xd, dyd):
    a = _good()
    a["x"] = a["x"].astype(xd)
    a["dy"] = a["dy"].astype(xd)
    _check_valid_first(name, a)
    a["dy"] = a["dy"].astype(dyd)
    with pytest.raises(TypeError, match=_named("dy")):
        call(name, a)


@pytest.mark.parametrize("name", WITH_DY)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dy_shape_mismatch(name, layout):
    a = _good(layout)
    _check_valid_first(name, a, layout=layout)
    for bad in (a["dy"][:1], a["dy"][..., :-1], a["dy"].reshape(-1),
                np.swapaxes(a["dy"], 2, 3)[:, :, :, :3], a["dy"][None]):
        b = dict(a, dy=np.ascontiguousarray(bad))
        with pytest.raises(ValueError, match=_named("dy")):
            call(name, b, layout=layout)
    # same size, different shape
    b = dict(a, dy=a["dy"].reshape(a["dy"].shape[::-1]))
    with pytest.raises(ValueError, match=_named("dy")):
        call(name, b, layout=layout)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ndim", [1, 6, 0])
def test_bad_ndim(name, ndim):
    a = _good()
    _check_valid_first(name, a)
    shp = {0: (), 1: (C,), 6: (2, C, 2, 2, 2, 2)}[ndim]
    rng = np.random.default_rng(601)
    a["x"] = rng.standard_normal(shp)
    a["dy"] = rng.standard_normal(shp)
    with pytest.raises(ValueError, match=_named("x")):
        call(name, a)


# ---------------------------------------------------------------------------
# per-channel vectors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,arg", VEC_CASES)
@pytest.mark.parametrize("bad", ["short", "long", "2d", "scalar", "empty"])
def test_vector_wrong_shape(name, arg, bad):
    a = _good()
    v = a[arg]
    a[arg] = {"short": v[:-1], "long": np.append(v, 1.0), "2d": v[None, :],
              "scalar": np.float64(v[0]), "empty": v[:0]}[bad]
    with pytest.raises(ValueError, match=_named(arg)):
        call(name, a)


@pytest.mark.parametrize("name,arg", VEC_CASES)
@pytest.mark.parametrize("bad", [np.complex128, "str", object, np.bool_])
def test_vector_wrong_dtype(name, arg, bad):
    a = _good()
    v = np.abs(a[arg]) + 1.0
    if bad == "str":
        a[arg] = np.array(["1.0"] * C)
    elif bad is object:
        a[arg] = v.astype(object)
    else:
        a[arg] = v.astype(bad)
    with pytest.raises(TypeError, match=_named(arg)):
        call(name, a)


def _assert_same_result(name, got, want):
    """Two results of the same function (a ChannelStats, an array or a tuple) are equal."""
    if name == "channel_stats":
        got, want = (got.mean, got.m2), (want.mean, want.m2)
    elif not isinstance(got, tuple):
        got, want = (got,), (want,)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name,arg", VEC_CASES)
@pytest.mark.parametrize("vd", [np.float16, np.float32, np.float64])
def test_vector_floating_dtypes_accepted(name, arg, vd):
    """Accepted and used as float64: same result as the exactly upcast vector."""
    a = _good()
    a[arg] = a[arg].astype(vd)
    got = call(name, a)
    want = call(name, dict(a, **{arg: a[arg].astype(np.float64)}))
    _assert_same_result(name, got, want)


@pytest.mark.parametrize("name,arg", VEC_CASES)
@pytest.mark.parametrize("kind", ["list", "tuple", "int64", "int32", "uint8", "int list"])
def test_vector_real_array_likes_accepted(name, arg, kind):
    """Lists, tuples and integer arrays are used as float64: same result as that array."""
    a = _good()
    v = a[arg]
    if kind.startswith("int") or kind == "uint8":
        v = np.round(np.abs(v) * 3 + 1)  # integral and > 0, so inv_std/var stay valid
    want = call(name, dict(a, **{arg: v.astype(np.float64)}))
    given = {"list": v.tolist(), "tuple": tuple(v.tolist()), "int64": v.astype(np.int64),
             "int32": v.astype(np.int32), "uint8": v.astype(np.uint8),
             "int list": [int(t) for t in v]}[kind]
    if kind == "int list" and arg == "mean":
        given = [int(t) for t in np.round(v)]
        want = call(name, dict(a, **{arg: np.array(given, dtype=np.float64)}))
    got = call(name, dict(a, **{arg: given}))
    _assert_same_result(name, got, want)


REQUIRED_VECS = [(f, v) for f, v in VEC_CASES if v not in ("scale", "bias")]


@pytest.mark.parametrize("name,arg", REQUIRED_VECS)
def test_vector_none_is_named(name, arg):
    a = _good()
    _check_valid_first(name, a)
    with pytest.raises(TypeError, match=_named(arg) + r".*got None"):
        call(name, dict(a, **{arg: None}))


@pytest.mark.parametrize("name,arg", VEC_CASES)
@pytest.mark.parametrize("bad,shown", [("abc", "str 'abc'"), ({"a": 1}, "dict"),
                                       ([[1.0, 2.0], [3.0]], "list"),
                                       (object(), "object"), ([1j, 2j, 3j], "list")])
def test_vector_non_arrays_are_named(name, arg, bad, shown):
    a = _good()
    _check_valid_first(name, a)
    with pytest.raises(TypeError, match=_named(arg)) as info:
        call(name, dict(a, **{arg: bad}))
    assert "got " + shown in str(info.value)
    assert "dtype object" not in str(info.value)


@pytest.mark.parametrize("name,arg", [(f, v) for f, v in VEC_CASES if v in ("scale", "bias")])
def test_scale_bias_none_is_identity(name, arg):
    """None is ones (scale) or zeros (bias): bitwise the result with that vector."""
    a = _good()
    fill = np.ones(C) if arg == "scale" else np.zeros(C)
    got = call(name, dict(a, **{arg: None}))
    want = call(name, dict(a, **{arg: fill}))
    if not isinstance(got, tuple):
        got, want = (got,), (want,)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------
# running statistics
# ---------------------------------------------------------------------------

def _forward_running(a, **kw):
    kw.setdefault("running_mean", np.zeros(C))
    kw.setdefault("running_var", np.ones(C))
    return cbp.batch_norm_forward(a["x"], a["scale"], a["bias"], **kw)


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
@pytest.mark.parametrize("bad,exc", [([0.0, 0.0, 0.0], TypeError), ((0.0,) * 3, TypeError),
                                     (np.zeros(C, dtype=np.int64), TypeError),
                                     (np.zeros(C + 1), ValueError),
                                     (np.zeros((1, C)), ValueError),
                                     (np.ma.zeros(C), TypeError), ("abc", TypeError)])
def test_bad_running_buffer(which, bad, exc):
    a = _good()
    _forward_running(a)
    with pytest.raises(exc, match=_named(which)):
        _forward_running(a, **{which: bad})


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_read_only_running_buffer(which):
    a = _good()
    buf = np.zeros(C)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match=_named(which)):
        _forward_running(a, **{which: buf})


def test_running_buffers_overlap():
    a = _good()
    buf = np.zeros(2 * C)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        _forward_running(a, running_mean=buf[:C], running_var=buf[1:C + 1])


@pytest.mark.parametrize("kw,exc,arg", [
    (dict(momentum=-0.1), ValueError, "momentum"), (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=float("nan")), ValueError, "momentum"),
    (dict(momentum="0.1"), TypeError, "momentum"), (dict(momentum=True), TypeError, "momentum"),
    (dict(momentum=None), TypeError, "num_batches_tracked"),
    (dict(momentum=None, num_batches_tracked=-1), ValueError, "num_batches_tracked"),
    (dict(momentum=None, num_batches_tracked=1.0), TypeError, "num_batches_tracked"),
    (dict(momentum_of="old"), ValueError, "momentum_of"),
    (dict(unbiased=1), TypeError, "unbiased")])
def test_bad_momentum_options(kw, exc, arg):
    """Refused before anything is computed: the buffers are left as they were."""
    a = _good()
    _forward_running(a)
    rm, rv = np.full(C, 0.5), np.full(C, 2.0)
    out = np.full_like(a["x"], 7.0)
    with pytest.raises(exc, match=_named(arg)):
        _forward_running(a, running_mean=rm, running_var=rv, out=out, **kw)
    assert (rm == 0.5).all() and (rv == 2.0).all() and (out == 7.0).all()


def test_unbiased_needs_two_elements():
    x = np.arange(3.0).reshape(1, 3)  # one element per channel
    rv = np.ones(3)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="unbiased"):
        cbp.batch_norm_forward(x, running_var=rv, out=out)
    assert (out == 7.0).all() and (rv == 1.0).all()  # refused before anything was computed
    with pytest.raises(ValueError, match="unbiased"):
        cbp.update_running_stats(None, rv, cbp.channel_stats(x))
    cbp.batch_norm_forward(x, running_var=rv, unbiased=False)
    np.testing.assert_array_equal(rv, np.full(3, 0.9))


def test_update_running_stats_needs_channel_stats():
    with pytest.raises(TypeError, match=_named("stats")):
        cbp.update_running_stats(np.zeros(C), np.ones(C), (M, np.zeros(C), np.zeros(C)))
    with pytest.raises(ValueError, match=_named("running_mean")):
        cbp.update_running_stats(np.zeros(C + 1), None, cbp.channel_stats(_good()["x"]))


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", ["nchw", "nhwc", "XYZ", "", "NCHW ", None, 1, b"NCHW"])
def test_bad_layout(name, bad):
    a = _good()
    _check_valid_first(name, a, layout="NCHW")
    with pytest.raises(ValueError, match=_named("layout")):
        call(name, a, layout=bad)


# ---------------------------------------------------------------------------
# eps, count, inv_std, mean, var
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", WITH_EPS)
@pytest.mark.parametrize("eps", [0, 0.0, -1, -1e-5, float("nan"), float("inf"),
                                 float("-inf")])
def test_bad_eps(name, eps):
    a = _good()
    _check_valid_first(name, a, eps=1e-5)
    with pytest.raises(ValueError, match=_named("eps")):
        call(name, a, eps=eps)


def test_dx_empty_batch_count_zero_like_backward():
    """count=0 is the empty batch's count: an empty dx, as batch_norm_backward gives."""
    a = _good()
    x, dy = a["x"][:0], a["dy"][:0]
    dx = cbp.batch_norm_dx(x, dy, a["mean"], a["inv_std"], a["scale"], np.zeros(C),
                           np.zeros(C), 0)
    want, _, _ = cbp.batch_norm_backward(x, dy, a["mean"], a["inv_std"], a["scale"])
    assert dx.shape == want.shape == x.shape and dx.dtype == want.dtype
    with pytest.raises(ValueError, match=_named("count")):
        cbp.batch_norm_dx(x, dy, a["mean"], a["inv_std"], a["scale"], np.zeros(C),
                          np.zeros(C), -1)


@pytest.mark.parametrize("count,exc", [(0, ValueError), (-3, ValueError),
                                       (np.int64(0), ValueError),
                                       (2.5, TypeError), (32.0, TypeError),
                                       ("32", TypeError), (None, TypeError)])
def test_bad_count(count, exc):
    a = _good()
    _check_valid_first("batch_norm_dx", a, count=M)
    with pytest.raises(exc, match=_named("count")):
        call("batch_norm_dx", a, count=count)


@pytest.mark.parametrize("name", ["channel_backprop_stats", "batch_norm_dx",
                                  "batch_norm_backward"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), -0.0])
def test_bad_inv_std(name, bad):
    a = _good()
    a["inv_std"] = a["inv_std"].copy()
    a["inv_std"][1] = bad
    with pytest.raises(ValueError, match=_named("inv_std")):
        call(name, a)


@pytest.mark.parametrize("name", ["channel_backprop_stats", "batch_norm_dx",
                                  "batch_norm_backward", "batch_norm_inference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_bad_mean(name, bad):
    a = _good()
    a["mean"] = a["mean"].copy()
    a["mean"][2] = bad
    with pytest.raises(ValueError, match=_named("mean")):
        call(name, a)


@pytest.mark.parametrize("bad", [-1e-3, -1.0, float("nan"), float("inf")])
def test_bad_var(bad):
    a = _good()
    _check_valid_first("batch_norm_inference", a)
    a["var"] = a["var"].copy()
    a["var"][0] = bad
    with pytest.raises(ValueError, match=_named("var")):
        call("batch_norm_inference", a)


def test_var_zero_is_valid():
    a = _good()
    a["var"] = np.zeros(C)
    y = call("batch_norm_inference", a, eps=0.25)
    want = ref.batch_norm_inference(a["x"], a["scale"], a["bias"], a["mean"], a["var"], 0.25)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# num_threads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad,exc", [(0, ValueError), ("2", TypeError), (2.0, TypeError),
                                     (1.5, TypeError), ([2], TypeError)])
def test_bad_num_threads(name, bad, exc):
    a = _good()
    _check_valid_first(name, a, num_threads=2)
    with pytest.raises(exc, match=_named("num_threads")):
        call(name, a, num_threads=bad)


@pytest.mark.parametrize("nt", [np.int64(2), np.int32(1), -1, -100])
def test_num_threads_integer_forms_accepted(nt):
    a = _good()
    s = cbp.channel_stats(a["x"], num_threads=nt)
    np.testing.assert_allclose(s.var, ref.channel_stats(a["x"], "NCHW")[2], rtol=1e-12)


# ---------------------------------------------------------------------------
# out
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", WITH_OUT)
def test_out_wrong_shape(name):
    a = _good()
    _check_valid_first(name, a, out=np.empty_like(a["x"]))
    for out in (np.empty(a["x"].shape[::-1]), np.empty(a["x"].size),
                np.empty((2, 3, 4, 5)), np.empty((1,) + a["x"].shape)):
        with pytest.raises(ValueError, match=_named("out")):
            call(name, a, out=out)


@pytest.mark.parametrize("name", WITH_OUT)
@pytest.mark.parametrize("xd,od", [(np.float64, np.float32), (np.float32, np.float64),
                                   (np.float64, np.int64), (np.float32, np.float16)])
def test_out_wrong_dtype(name, xd, od):
    a = _good(dtype=xd)
    with pytest.raises(TypeError, match=_named("out")):
        call(name, a, out=np.empty(a["x"].shape, od))


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_not_ndarray(name):
    a = _good()
    with pytest.raises(TypeError, match=_named("out")):
        call(name, a, out=a["x"].tolist())


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_read_only(name):
    a = _good()
    out = np.empty_like(a["x"])
    out.setflags(write=False)
    with pytest.raises(ValueError, match=_named("out")):
        call(name, a, out=out)


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_read_only_x_in_place(name):
    """out=x with a read-only x is rejected (and x is not written)."""
    a = _good()
    a["x"].setflags(write=False)
    x0 = a["x"].copy()
    with pytest.raises(ValueError, match=_named("out")):
        call(name, a, out=a["x"])
    np.testing.assert_array_equal(a["x"], x0)


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_not_c_contiguous(name):
    a = _good()
    shp = a["x"].shape
    for out in (np.empty(shp[::-1]).T, np.empty(shp[:-1] + (2 * shp[-1],))[..., ::2],
                np.asfortranarray(np.empty(shp))):
        assert out.shape == shp and not out.flags.c_contiguous
        with pytest.raises(ValueError, match=_named("out")):
            call(name, a, out=out)


@pytest.mark.parametrize("name,victim", [(f, "x") for f in WITH_OUT]
                         + [(f, "dy") for f in WITH_OUT if f in WITH_DY])
def test_out_partial_overlap(name, victim):
    a = _good()
    shp, n = a["x"].shape, a["x"].size
    buf = np.empty(2 * n)
    buf[:n] = a[victim].ravel()
    a[victim] = buf[:n].reshape(shp)
    assert a[victim].flags.c_contiguous
    out = buf[1:n + 1].reshape(shp)
    assert np.shares_memory(out, a[victim])
    with pytest.raises(ValueError, match=_named("out")):
        call(name, a, out=out)
    # further along, still overlapping
    out = buf[n // 2:n // 2 + n].reshape(shp)
    with pytest.raises(ValueError, match=_named("out")):
        call(name, a, out=out)
    # adjacent, not overlapping: fine, and correct
    out = buf[n:].reshape(shp)
    want = call(name, dict(a, **{victim: a[victim].copy()}))
    want = want[0] if isinstance(want, tuple) else want
    res = call(name, a, out=out)
    got = res[0] if isinstance(res, tuple) else res
    assert got is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_overlapping_per_channel_vector_input_shape_mismatch(name):
    """out must be x-shaped even if a view of an input: a per-channel vector
    passed as out is the wrong shape."""
    a = _good()
    with pytest.raises(ValueError, match=_named("out")):
        call(name, a, out=a["scale"])


# ---------------------------------------------------------------------------
# show_config
# ---------------------------------------------------------------------------

def test_show_config_keys_and_types(capsys):
    cfg = cbp.show_config(print_out=False)
    assert capsys.readouterr().out == ""
    assert isinstance(cfg, dict)
    assert {"version", "openmp", "default_num_threads", "compiler",
            "compile_args"} <= set(cfg)
    assert isinstance(cfg["openmp"], bool)
    assert isinstance(cfg["default_num_threads"], int)
    assert not isinstance(cfg["default_num_threads"], bool)
    assert cfg["default_num_threads"] >= 1
    assert isinstance(cfg["compiler"], str)
    assert isinstance(cfg["compile_args"], str)
    if hasattr(cbp, "__version__"):
        assert str(cfg["version"]) == str(cbp.__version__)


def test_show_config_prints_by_default(capsys):
    cfg = cbp.show_config()
    out = capsys.readouterr().out
    assert out.strip()
    for key in ("openmp", "compiler"):
        assert key in out.lower()
    assert str(cfg["default_num_threads"]) in out


# ---------------------------------------------------------------------------
# num_threads above the cap, masked arrays, ndarray subclasses as out
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", ["cap+1", 10000, 2**31, 2**63, 2**80])
def test_num_threads_above_the_cap(name, bad):
    # a ValueError naming num_threads, never an OverflowError or 10000 OS threads
    cap = cbp.show_config(print_out=False)["max_num_threads"]
    assert cap >= 64
    a = _good()
    _check_valid_first(name, a, num_threads=cap)
    with pytest.raises(ValueError, match=_named("num_threads")):
        call(name, a, num_threads=cap + 1 if bad == "cap+1" else bad)


_THREADS_UNDER_A_MEMORY_LIMIT = """
import resource, sys, warnings
import numpy as np
import cbp
x = np.arange(64 * 64 * 256, dtype=np.float32).reshape(64, 64, 256) % 7
want = cbp.channel_stats(x, num_threads=1)
vm = int(open("/proc/self/statm").read().split()[0]) * 4096
# room for a few thread stacks (8 MiB each), not for 64
resource.setrlimit(resource.RLIMIT_AS, (vm + 100 * 2 ** 20, resource.RLIM_INFINITY))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    got = cbp.channel_stats(x, num_threads=64)
assert np.array_equal(got.mean, want.mean) and np.array_equal(got.m2, want.m2)
assert len(w) == 1 and issubclass(w[0].category, RuntimeWarning), w
print(w[0].message)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, libgomp")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer cannot run under an address-space limit")
@pytest.mark.skipif(not cbp.show_config(print_out=False)["openmp"], reason="serial build")
def test_threads_that_cannot_start_are_a_warning_not_an_exit():
    # libgomp ends the process (exit 1) when it cannot create a team's threads;
    # cbp starts them first, and runs with as many as could start
    proc = subprocess.run([sys.executable, "-c", _THREADS_UNDER_A_MEMORY_LIMIT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "could start only" in proc.stdout and "num_threads" in proc.stdout


def test_plan_info_describes_teams_above_the_cap():
    cap = cbp.show_config(print_out=False)["max_num_threads"]
    # large enough that the grain (a minimum of elements per thread) allows the team
    info = cbp.plan_info((1024, 64, 56, 56), num_threads=4 * cap)
    assert info["threads"] == 4 * cap and len(info["thread_elements"]) == 4 * cap
    with pytest.raises(ValueError, match=_named("num_threads")):
        cbp.plan_info((32, 64, 56, 56), num_threads=2**31)


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(np.shape(a), dtype=bool))


@pytest.mark.parametrize("name", ALL)
def test_masked_arrays_are_refused(name):
    # np.asarray would drop the mask: cbp would use masked values silently
    for arg in ["x"] + (["dy"] if name in WITH_DY else []) + VEC_ARGS[name]:
        a = _good()
        _check_valid_first(name, a)
        a[arg] = _masked(a[arg])
        with pytest.raises(TypeError, match=_named(arg) + ".*MaskedArray"):
            call(name, a)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
@pytest.mark.parametrize("name", WITH_OUT)
@pytest.mark.parametrize("kind", ["matrix", "masked"])
def test_out_subclasses_refused(name, kind):
    a = _good()
    x2 = np.ascontiguousarray(a["x"].reshape(2, -1)[:, :C])  # a 2-D (N, C) input
    a = dict(a, x=x2, dy=np.ones_like(x2))
    out = np.matrix(np.zeros_like(x2)) if kind == "matrix" else _masked(np.zeros_like(x2))
    _check_valid_first(name, a, out=np.zeros_like(x2))
    with pytest.raises(TypeError, match=_named("out")):
        call(name, a, out=out)


@pytest.mark.parametrize("args,exc,arg", [
    ((1, [0.0], [np.nan]), ValueError, "m2"),
    ((1, [0.0], [np.inf]), ValueError, "m2"),
    ((1, [np.nan], [0.0]), ValueError, "mean"),
    ((1, [-np.inf], [0.0]), ValueError, "mean"),
    ((3, "abc", [1.0]), TypeError, "mean"),
    ((3, [1.0], "abc"), TypeError, "m2"),
    ((3, [1.0 + 1j], [1.0]), TypeError, "mean"),
    ((3, np.ma.masked_array([1.0]), [1.0]), TypeError, "mean"),
])
def test_channel_stats_constructor_checks(args, exc, arg):
    cbp.ChannelStats(3, [1.0], [2.0])  # the valid form
    with pytest.raises(exc, match=_named(arg)):
        cbp.ChannelStats(*args)


# ---------------------------------------------------------------------------
# misaligned arrays (valid NumPy views at an odd byte offset)
# ---------------------------------------------------------------------------

def _misaligned(a):
    a = np.asarray(a)
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


def _bits(res):
    res = res if isinstance(res, tuple) else (res,)
    return [np.asarray(getattr(r, "m2", r)).tobytes() for r in res]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_inputs_give_the_aligned_bits(name, dtype):
    # copied to aligned memory, like strided inputs; the kernels never load a
    # misaligned element
    a = _good(dtype=dtype)
    want = _bits(call(name, dict(a)))
    for arg in ["x"] + (["dy"] if name in WITH_DY else []) + VEC_ARGS[name]:
        b = dict(a)
        b[arg] = _misaligned(a[arg])
        assert _bits(call(name, b)) == want, arg


@pytest.mark.parametrize("name", WITH_OUT)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_out(name, dtype):
    a = _good(dtype=dtype)
    want = call(name, dict(a))
    want0 = want[0] if isinstance(want, tuple) else want
    out = _misaligned(np.zeros_like(a["x"]))
    got = call(name, dict(a), out=out)
    got0 = got[0] if isinstance(got, tuple) else got
    assert got0 is out
    assert out.tobytes() == want0.tobytes()
    if name in ("batch_norm_backward", "batch_norm_dx"):
        # in place into a misaligned dy
        b = dict(a, dy=_misaligned(a["dy"]))
        got = call(name, b, out=b["dy"])
        assert b["dy"].tobytes() == want0.tobytes()


@pytest.mark.parametrize("name", ALL)
def test_kernels_only_see_aligned_arrays(name, monkeypatch):
    # what reaches the compiled entry points is aligned, whatever the caller passed
    seen = []
    for entry in ("moments", "backprop_sums", "dx", "backward", "forward", "affine"):
        real = getattr(cbp._kernels, entry)

        def spy(*args, _real=real):
            seen.extend(a for a in args if isinstance(a, np.ndarray))
            return _real(*args)
        monkeypatch.setattr(cbp._kernels, entry, spy)
    a = _good(dtype=np.float32)
    b = {k: _misaligned(v) for k, v in a.items()}
    kw = {"out": _misaligned(np.zeros_like(a["x"]))} if name in WITH_OUT else {}
    call(name, b, **kw)
    assert seen and all(arr.flags.aligned for arr in seen)
