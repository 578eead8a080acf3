# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of cbp.

One extension module; the kernels live in files named after what they do:
``_plan.pxi`` (work decomposition), ``_nchw_reduce.pxi`` and ``_nhwc_reduce.pxi``
(per-channel reductions), ``_sweeps.pxi`` (dX and affine sweeps). This file
and ``_drivers.pxi`` (the fused operations); this file holds the entry points
the Python layer calls.
Inputs here are already validated and C-contiguous, shaped (N, C, S): S > 1
runs the NCHW kernels, S == 1 the row ("NHWC") kernels.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt

from cbp._openmp cimport CBP_HAVE_OPENMP, omp_get_max_threads

import numpy as np

include "_plan.pxi"
include "_nchw_reduce.pxi"
include "_nhwc_reduce.pxi"
include "_sweeps.pxi"

include "_drivers.pxi"

cdef Py_ssize_t _cache_block_bytes = CACHE_BLOCK_BYTES


def openmp_enabled():
    return bool(CBP_HAVE_OPENMP)


def max_threads():
    return omp_get_max_threads()


def cache_block_bytes(value=None):
    """Get (and optionally set) the fused NCHW passes' cache block size in bytes."""
    global _cache_block_bytes
    old = _cache_block_bytes
    if value is not None:
        if value < 1:
            raise ValueError("cache block size must be >= 1 byte")
        _cache_block_bytes = value
    return old


# ---------------------------------------------------------------------------
# entry points for the Python layer (arrays validated there; C >= 1, N * S >= 1)

def backprop_sums(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                  const double[::1] mean, const double[::1] inv_std, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    dscale = np.empty(C, dtype=np.float64)
    dbias = np.empty(C, dtype=np.float64)
    cdef double[::1] ds = dscale, db = dbias
    cdef int rc
    with nogil:
        rc = backward_driver(&x[0, 0, 0], &dy[0, 0, 0], NULL, N, C, S, &mean[0], &inv_std[0],
                             NULL, 0.0, &ds[0], &db[0], _cache_block_bytes, nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")
    return dscale, dbias


def backward(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
             const double[::1] mean, const double[::1] inv_std, const double[::1] scale,
             floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    dscale = np.empty(C, dtype=np.float64)
    dbias = np.empty(C, dtype=np.float64)
    cdef double[::1] ds = dscale, db = dbias
    cdef int rc
    with nogil:
        rc = backward_driver(&x[0, 0, 0], &dy[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0],
                             &inv_std[0], &scale[0], <double>(N * S), &ds[0], &db[0],
                             _cache_block_bytes, nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")
    return dscale, dbias


def dx(const floating[:, :, ::1] x, const floating[:, :, ::1] dy, const double[::1] mean,
       const double[::1] inv_std, const double[::1] scale, const double[::1] dscale,
       const double[::1] dbias, double count, floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef int rc
    with nogil:
        rc = dx_driver(&x[0, 0, 0], &dy[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0],
                       &inv_std[0], &scale[0], &dscale[0], &dbias[0], count, nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")


def moments(const floating[:, :, ::1] x, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    mean = np.empty(C, dtype=np.float64)
    m2 = np.empty(C, dtype=np.float64)
    cdef double[::1] mv = mean, m2v = m2
    cdef int rc
    with nogil:
        rc = forward_driver(&x[0, 0, 0], <floating*>NULL, N, C, S, NULL, NULL, 0.0,
                            &mv[0], &m2v[0], NULL, _cache_block_bytes, nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")
    return mean, m2


def forward(const floating[:, :, ::1] x, const double[::1] scale, const double[::1] bias,
            double eps, floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    mean = np.empty(C, dtype=np.float64)
    m2 = np.empty(C, dtype=np.float64)
    inv_std = np.empty(C, dtype=np.float64)
    cdef double[::1] mv = mean, m2v = m2, iv = inv_std
    cdef int rc
    with nogil:
        rc = forward_driver(&x[0, 0, 0], &out[0, 0, 0], N, C, S, &scale[0], &bias[0], eps,
                            &mv[0], &m2v[0], &iv[0], _cache_block_bytes, nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")
    return mean, m2, inv_std


def affine(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] a,
           const double[::1] bias, floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef int rc
    with nogil:
        rc = affine_driver(&x[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0], &a[0], &bias[0],
                           nthreads)
    if rc != 0:
        raise MemoryError("cbp: could not allocate kernel scratch")


cdef extern from *:
    """
    #ifndef CBP_COMPILE_ARGS
    #define CBP_COMPILE_ARGS "unknown"
    #endif
    #if defined(__clang__)
    #define CBP_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define CBP_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define CBP_COMPILER "msvc"
    #else
    #define CBP_COMPILER "unknown"
    #endif
    """
    const char* CBP_COMPILE_ARGS
    const char* CBP_COMPILER


def compile_args():
    return CBP_COMPILE_ARGS.decode()


def compiler():
    return CBP_COMPILER.decode()
