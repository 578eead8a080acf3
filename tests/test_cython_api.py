"""A downstream package can cimport cbp's public C API and get correct results.

Builds a tiny extension in tmp_path against ``cbp.get_include()`` (as another
library would), imports it, and checks it against a float64 NumPy reference.
"""
import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cbp

pytest.importorskip("Cython")
pytest.importorskip("setuptools")

DOWNSTREAM_PYX = textwrap.dedent("""
    # cython: language_level=3, boundscheck=False, wraparound=False
    from cbp.cython_api cimport (
        cbp_openmp_enabled, cbp_max_threads,
        cbp_moments_f32, cbp_moments_f64,
        cbp_backprop_sums_f32, cbp_backprop_sums_f64,
        cbp_dx_f32, cbp_dx_f64,
        cbp_backward_f64, cbp_forward_f32, cbp_affine_f64,
    )
    from cpython.array cimport array

    def info():
        return cbp_openmp_enabled(), cbp_max_threads()

    def moments(x, int nthreads):
        cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
        cdef double[::1] mean = array("d", [0.0] * C), m2 = array("d", [0.0] * C)
        cdef const float[:, :, ::1] x32
        cdef const double[:, :, ::1] x64
        cdef int rc
        if x.dtype.itemsize == 4:
            x32 = x
            with nogil:
                rc = cbp_moments_f32(&x32[0, 0, 0], N, C, S, &mean[0], &m2[0], nthreads)
        else:
            x64 = x
            with nogil:
                rc = cbp_moments_f64(&x64[0, 0, 0], N, C, S, &mean[0], &m2[0], nthreads)
        return rc, list(mean), list(m2)

    def backprop_sums(x, dy, const double[::1] mean, const double[::1] inv_std, int nthreads):
        cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
        cdef double[::1] ds = array("d", [0.0] * C), db = array("d", [0.0] * C)
        cdef const float[:, :, ::1] x32, g32
        cdef const double[:, :, ::1] x64, g64
        cdef int rc
        if x.dtype.itemsize == 4:
            x32 = x
            g32 = dy
            with nogil:
                rc = cbp_backprop_sums_f32(&x32[0, 0, 0], &g32[0, 0, 0], N, C, S, &mean[0],
                                           &inv_std[0], &ds[0], &db[0], nthreads)
        else:
            x64 = x
            g64 = dy
            with nogil:
                rc = cbp_backprop_sums_f64(&x64[0, 0, 0], &g64[0, 0, 0], N, C, S, &mean[0],
                                           &inv_std[0], &ds[0], &db[0], nthreads)
        return rc, list(ds), list(db)

    def dx(x, dy, out, const double[::1] mean, const double[::1] inv_std,
           const double[::1] scale, const double[::1] dscale, const double[::1] dbias,
           double count, int nthreads):
        cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
        cdef const float[:, :, ::1] x32, g32
        cdef float[:, :, ::1] o32
        cdef const double[:, :, ::1] x64, g64
        cdef double[:, :, ::1] o64
        cdef int rc
        if x.dtype.itemsize == 4:
            x32 = x
            g32 = dy
            o32 = out
            with nogil:
                rc = cbp_dx_f32(&x32[0, 0, 0], &g32[0, 0, 0], &o32[0, 0, 0], N, C, S,
                                &mean[0], &inv_std[0], &scale[0], &dscale[0], &dbias[0],
                                count, nthreads)
            return rc
        x64 = x
        g64 = dy
        o64 = out
        with nogil:
            rc = cbp_dx_f64(&x64[0, 0, 0], &g64[0, 0, 0], &o64[0, 0, 0], N, C, S,
                            &mean[0], &inv_std[0], &scale[0], &dscale[0], &dbias[0],
                            count, nthreads)
        return rc

    def backward_f64(const double[:, :, ::1] x, const double[:, :, ::1] dy,
                     double[:, :, ::1] out, const double[::1] mean,
                     const double[::1] inv_std, const double[::1] scale, int nthreads):
        cdef Py_ssize_t C = x.shape[1]
        cdef double[::1] ds = array("d", [0.0] * C), db = array("d", [0.0] * C)
        cdef int rc
        with nogil:
            rc = cbp_backward_f64(&x[0, 0, 0], &dy[0, 0, 0], &out[0, 0, 0], x.shape[0], C,
                                  x.shape[2], &mean[0], &inv_std[0], &scale[0], &ds[0],
                                  &db[0], 0, nthreads)
        return rc, list(ds), list(db)

    def forward_f32(const float[:, :, ::1] x, float[:, :, ::1] out, const double[::1] scale,
                    const double[::1] bias, double eps, int nthreads):
        cdef Py_ssize_t C = x.shape[1]
        cdef double[::1] mean = array("d", [0.0] * C), m2 = array("d", [0.0] * C)
        cdef double[::1] inv_std = array("d", [0.0] * C)
        cdef int rc
        with nogil:
            rc = cbp_forward_f32(&x[0, 0, 0], &out[0, 0, 0], x.shape[0], C, x.shape[2],
                                 &scale[0], &bias[0], eps, &mean[0], &m2[0], &inv_std[0],
                                 0, nthreads)
        return rc, list(mean), list(m2), list(inv_std)

    def affine_f64(const double[:, :, ::1] x, double[:, :, ::1] out, const double[::1] mean,
                   const double[::1] a, const double[::1] bias, int nthreads):
        cdef int rc
        with nogil:
            rc = cbp_affine_f64(&x[0, 0, 0], &out[0, 0, 0], x.shape[0], x.shape[1],
                                x.shape[2], &mean[0], &a[0], &bias[0], nthreads)
        return rc

    def moments_raw(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, int nthreads):
        # argument checks and empty blocks need no data
        cdef double mean[4]
        cdef double m2[4]
        cdef float x[1]
        mean[0] = 7.0
        m2[0] = 7.0
        cdef int rc = cbp_moments_f32(x, N, C, S, mean, m2, nthreads)
        return rc, mean[0], m2[0]
""")

SETUP_PY = textwrap.dedent("""
    import sys
    from setuptools import Extension, setup
    from Cython.Build import cythonize
    sys.path[:0] = [{include!r}]
    setup(name="cbp_downstream", script_args=["build_ext", "--inplace", "-q"],
          ext_modules=cythonize([Extension("cbp_downstream", ["cbp_downstream.pyx"])],
                                include_path=[{include!r}], quiet=True))
""")


def _have_compiler():
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
    import tempfile
    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int probe(void) { return 0; }\n")
        try:
            cc.compile([src], output_dir=tmp)
        except Exception:
            return False
    return True


@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    if not _have_compiler():
        pytest.skip("no C compiler")
    tmp = tmp_path_factory.mktemp("downstream")
    (tmp / "cbp_downstream.pyx").write_text(DOWNSTREAM_PYX)
    (tmp / "setup.py").write_text(SETUP_PY.format(include=cbp.get_include()))
    env = dict(os.environ, PYTHONPATH=cbp.get_include())
    proc = subprocess.run([sys.executable, "setup.py"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module("cbp_downstream")
    finally:
        sys.path.remove(str(tmp))


def _blocks(dtype, layout, seed=0):
    rng = np.random.default_rng(seed)
    N, C, H, W = 3, 5, 6, 7
    x = rng.standard_normal((N, C, H, W)) * rng.uniform(0.5, 2, (1, C, 1, 1)) + 3.0
    dy = rng.standard_normal((N, C, H, W))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
        dy = dy.transpose(0, 2, 3, 1)
        blk = lambda a: np.ascontiguousarray(a.reshape(-1, C, 1), dtype=dtype)  # noqa: E731
    else:
        blk = lambda a: np.ascontiguousarray(a.reshape(N, C, -1), dtype=dtype)  # noqa: E731
    return blk(x), blk(dy)


def _ref_moments(xb):
    x = xb.astype(np.float64)
    mean = x.mean(axis=(0, 2))
    m2 = ((x - mean[None, :, None]) ** 2).sum(axis=(0, 2))
    return mean, m2


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_downstream_reductions_and_dx(downstream, dtype, layout):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    xb, gb = _blocks(dtype, layout)
    C = xb.shape[1]
    rmean, rm2 = _ref_moments(xb)
    for nt in (1, 2, 3):
        rc, mean, m2 = downstream.moments(xb, nt)
        assert rc == 0
        np.testing.assert_allclose(mean, rmean, rtol=tol, atol=tol)
        np.testing.assert_allclose(m2, rm2, rtol=tol)
    count = xb.shape[0] * xb.shape[2]
    inv_std = 1.0 / np.sqrt(rm2 / count + 1e-5)
    x64, g64 = xb.astype(np.float64), gb.astype(np.float64)
    xc = x64 - rmean[None, :, None]
    rdb = g64.sum(axis=(0, 2))
    rds = (g64 * xc).sum(axis=(0, 2)) * inv_std
    rc, ds, db = downstream.backprop_sums(xb, gb, rmean, inv_std, 2)
    assert rc == 0
    scale_terms = np.abs(g64).sum(axis=(0, 2)).max()
    np.testing.assert_allclose(db, rdb, rtol=tol, atol=tol * scale_terms)
    np.testing.assert_allclose(ds, rds, rtol=tol, atol=tol * scale_terms * 3)
    scale = np.linspace(0.5, 1.5, C)
    out = np.empty_like(xb)
    assert downstream.dx(xb, gb, out, rmean, inv_std, scale, rds, rdb, float(count), 2) == 0
    k = (scale * inv_std)[None, :, None]
    rdx = k * (g64 - (rdb / count)[None, :, None]
               - xc * (inv_std * rds / count)[None, :, None])
    np.testing.assert_allclose(out, rdx, rtol=tol, atol=tol * np.abs(rdx).max())


def test_downstream_fused_and_affine(downstream):
    xb, gb = _blocks(np.float64, "NCHW", seed=1)
    C = xb.shape[1]
    count = xb.shape[0] * xb.shape[2]
    rmean, rm2 = _ref_moments(xb)
    inv_std = 1.0 / np.sqrt(rm2 / count + 1e-5)
    scale = np.linspace(0.5, 1.5, C)
    bias = np.linspace(-1, 1, C)
    out = np.empty_like(xb)
    rc, ds, db = downstream.backward_f64(xb, gb, out, rmean, inv_std, scale, 2)
    assert rc == 0
    dx_api, ds_api, db_api = cbp.batch_norm_backward(
        xb, gb, rmean, inv_std, scale, num_threads=1)  # (N, C, S) is NCHW 3-D
    np.testing.assert_array_equal(out, dx_api)       # same kernels, any thread count
    np.testing.assert_array_equal(ds, ds_api)
    np.testing.assert_array_equal(db, db_api)

    x32 = xb.astype(np.float32)
    y = np.empty_like(x32)
    rc, mean, m2, istd = downstream.forward_f32(x32, y, scale, bias, 1e-5, 2)
    assert rc == 0
    rmean32, rm232 = _ref_moments(x32)
    ristd = 1.0 / np.sqrt(rm232 / count + 1e-5)
    np.testing.assert_allclose(istd, ristd, rtol=1e-4)
    ry = (scale * ristd)[None, :, None] * (x32 - rmean32[None, :, None]) + bias[None, :, None]
    np.testing.assert_allclose(y, ry, rtol=1e-4, atol=1e-4 * np.abs(ry).max())

    a = scale * inv_std
    out2 = np.empty_like(xb)
    assert downstream.affine_f64(xb, out2, rmean, a, bias, 2) == 0
    np.testing.assert_allclose(out2, a[None, :, None] * (xb - rmean[None, :, None])
                               + bias[None, :, None], rtol=1e-12, atol=1e-12)


def test_downstream_arguments_and_empty(downstream):
    openmp, nmax = downstream.info()
    assert bool(openmp) == cbp.show_config(print_out=False)["openmp"]
    assert nmax >= 1
    assert downstream.moments_raw(1, 1, 1, 0)[0] == -2     # num_threads < 1
    assert downstream.moments_raw(-1, 1, 1, 1)[0] == -2    # negative size
    assert downstream.moments_raw(0, 1, 5, 1) == (0, 0.0, 0.0)   # empty batch
    assert downstream.moments_raw(2, 0, 5, 1) == (0, 7.0, 7.0)   # no channels: untouched
