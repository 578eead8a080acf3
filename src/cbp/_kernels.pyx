# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of cbp.

One extension module; the kernels live in files named after what they do:
``_plan.pxi`` (work decomposition), ``_nchw_reduce.pxi`` and ``_nhwc_reduce.pxi``
(per-channel reductions), ``_sweeps.pxi`` (dX and affine sweeps). This file
holds the drivers that fuse them and the entry points the Python layer calls.
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

# Bytes of x and dy per NCHW cache block in the fused passes: the dX sweep of a
# block re-reads x and dy from L3 instead of DRAM. Half of a 32 MiB L3 leaves
# room for the dX stream and the other core.
cdef Py_ssize_t _cache_block_bytes = 12 * 1024 * 1024


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
# per-channel finishing steps (float64)

cdef inline void finish_backprop(Py_ssize_t c, double sdy, double sdyxc, const double* mean,
                                 const floating* mh, const double* inv_std, double* dscale,
                                 double* dbias) noexcept nogil:
    # sums were taken about mean_hi; shift them to the exact mean
    dbias[c] = sdy
    dscale[c] = (sdyxc - (mean[c] - <double>mh[c]) * sdy) * inv_std[c]


cdef inline void set_dx_coef(Py_ssize_t c, Py_ssize_t C, const double* mean,
                             const double* inv_std, const double* scale, const double* dscale,
                             const double* dbias, double count, floating* coef) noexcept nogil:
    # dx = scale*inv_std*(dy - dbias/M - (x - mean)*inv_std*dscale/M)
    cdef double a = scale[c] * inv_std[c]
    cdef double b = -a * inv_std[c] * (dscale[c] / count)
    cdef floating mh = <floating>mean[c]
    coef[c] = mh
    coef[C + c] = <floating>a
    coef[2 * C + c] = <floating>b
    coef[3 * C + c] = <floating>(-a * (dbias[c] / count) - b * (mean[c] - <double>mh))


cdef inline void set_affine_coef(Py_ssize_t c, Py_ssize_t C, double mean, double a,
                                 double bias, floating* coef) noexcept nogil:
    # y = a * (x - mean) + bias
    cdef floating mh = <floating>mean
    coef[c] = mh
    coef[C + c] = <floating>a
    coef[2 * C + c] = 0
    coef[3 * C + c] = <floating>(bias - a * (mean - <double>mh))


cdef void tile_coef(const floating* coef, Py_ssize_t C, Py_ssize_t k,
                    floating* coef_w) noexcept nogil:
    cdef Py_ssize_t W = k * C, j, i, c
    for j in range(4):
        for i in range(k):
            for c in range(C):
                coef_w[j * W + i * C + c] = coef[j * C + c]


# ---------------------------------------------------------------------------
# drivers

cdef int backward_driver(const floating* x, const floating* dy, floating* out,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, const double* mean,
                         const double* inv_std, const double* scale, double count,
                         double* dscale, double* dbias, int nthreads) noexcept nogil:
    """Per-channel (dscale, dbias); with out != NULL also dx (fused)."""
    cdef PlanePlan p
    cdef Py_ssize_t nparts, k = column_widen(C), cb0, cb1, sb, c0, c1, c, g
    cdef double sdy, sdx
    cdef double* part
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    cdef floating* coef_w = NULL
    cdef int rc = 0
    if S > 1:
        p = plane_plan(N, C, S)
        nparts = p.ng
    else:
        nparts = column_units(N)
        coef_w = <floating*>malloc(4 * k * C * sizeof(floating))
    part = <double*>malloc(2 * nparts * C * sizeof(double))
    if coef == NULL or part == NULL or (S == 1 and coef_w == NULL):
        free(coef)
        free(coef_w)
        free(part)
        return -1
    for c in range(C):
        coef[c] = <floating>mean[c]
    if S > 1:
        # Cache blocking: reduce a block of channels, then sweep its dX while
        # its x and dy are still in L3.
        sb = p.ncb
        if out != NULL:
            sb = max(1, _cache_block_bytes // (2 * N * S * p.cb * <Py_ssize_t>sizeof(floating)))
        cb0 = 0
        while cb0 < p.ncb:
            cb1 = min(p.ncb, cb0 + sb)
            c0 = cb0 * p.cb
            c1 = min(C, cb1 * p.cb)
            nchw_backprop_sums(x, dy, N, C, S, p, cb0, cb1, coef, part, nthreads)
            for c in range(c0, c1):
                sdy = 0.0
                sdx = 0.0
                for g in range(p.ng):
                    sdy = sdy + part[2 * (g * C + c)]
                    sdx = sdx + part[2 * (g * C + c) + 1]
                finish_backprop(c, sdy, sdx, mean, coef, inv_std, dscale, dbias)
            if out != NULL:
                for c in range(c0, c1):
                    set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias, count, coef)
                nchw_dx_sweep(x, dy, out, N, C, S, c0, c1, coef, nthreads)
            cb0 = cb1
    else:
        tile_coef(coef, C, k, coef_w)
        rc = nhwc_backprop_sums(x, dy, N, C, coef_w, part, nthreads)
        if rc == 0:
            for c in range(C):
                sdy = 0.0
                sdx = 0.0
                for g in range(nparts):
                    sdy = sdy + part[2 * (g * C + c)]
                    sdx = sdx + part[2 * (g * C + c) + 1]
                finish_backprop(c, sdy, sdx, mean, coef, inv_std, dscale, dbias)
            if out != NULL:
                for c in range(C):
                    set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias, count, coef)
                tile_coef(coef, C, k, coef_w)
                nhwc_dx_sweep(x, dy, out, N, C, coef_w, nthreads)
    free(coef)
    free(coef_w)
    free(part)
    return rc


cdef int dx_driver(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                   Py_ssize_t C, Py_ssize_t S, const double* mean, const double* inv_std,
                   const double* scale, const double* dscale, const double* dbias,
                   double count, int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), c
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    cdef floating* coef_w = NULL
    if coef == NULL:
        return -1
    for c in range(C):
        set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias, count, coef)
    if S > 1:
        nchw_dx_sweep(x, dy, out, N, C, S, 0, C, coef, nthreads)
    else:
        coef_w = <floating*>malloc(4 * k * C * sizeof(floating))
        if coef_w == NULL:
            free(coef)
            return -1
        tile_coef(coef, C, k, coef_w)
        nhwc_dx_sweep(x, dy, out, N, C, coef_w, nthreads)
    free(coef)
    free(coef_w)
    return 0


cdef int forward_driver(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t S, const double* scale, const double* bias, double eps,
                        double* mean, double* m2, double* inv_std,
                        int nthreads) noexcept nogil:
    """Per-channel (mean, M2); with out != NULL also inv_std and y (fused)."""
    cdef PlanePlan p
    cdef Py_ssize_t nparts, k = column_widen(C), cb0, cb1, sb, c0, c1, c, g
    cdef double cnt, gcnt
    cdef double* part
    cdef floating* coef = NULL
    cdef floating* coef_w = NULL
    cdef int rc = 0
    if S > 1:
        p = plane_plan(N, C, S)
        nparts = p.ng
    else:
        nparts = column_units(N)
    part = <double*>malloc(2 * nparts * C * sizeof(double))
    if out != NULL:
        coef = <floating*>malloc(4 * C * sizeof(floating))
        if S == 1:
            coef_w = <floating*>malloc(4 * k * C * sizeof(floating))
    if part == NULL or (out != NULL and (coef == NULL or (S == 1 and coef_w == NULL))):
        free(part)
        free(coef)
        free(coef_w)
        return -1
    if S > 1:
        sb = p.ncb
        if out != NULL:
            sb = max(1, _cache_block_bytes // (N * S * p.cb * <Py_ssize_t>sizeof(floating)))
        cb0 = 0
        while cb0 < p.ncb:
            cb1 = min(p.ncb, cb0 + sb)
            c0 = cb0 * p.cb
            c1 = min(C, cb1 * p.cb)
            nchw_moments(x, N, C, S, p, cb0, cb1, part, nthreads)
            for c in range(c0, c1):
                cnt = 0.0
                mean[c] = 0.0
                m2[c] = 0.0
                for g in range(p.ng):
                    gcnt = <double>(((g + 1) * N // p.ng - g * N // p.ng) * S)
                    chan_merge(&cnt, mean + c, m2 + c, gcnt,
                               part[2 * (g * C + c)], part[2 * (g * C + c) + 1])
            if out != NULL:
                for c in range(c0, c1):
                    inv_std[c] = 1.0 / sqrt(m2[c] / <double>(N * S) + eps)
                    set_affine_coef(c, C, mean[c], scale[c] * inv_std[c], bias[c], coef)
                nchw_affine_sweep(x, out, N, C, S, c0, c1, coef, nthreads)
            cb0 = cb1
    else:
        rc = nhwc_moments(x, N, C, part, nthreads)
        if rc == 0:
            for c in range(C):
                cnt = 0.0
                mean[c] = 0.0
                m2[c] = 0.0
                for g in range(nparts):
                    gcnt = <double>((g + 1) * N // nparts - g * N // nparts)
                    chan_merge(&cnt, mean + c, m2 + c, gcnt,
                               part[2 * (g * C + c)], part[2 * (g * C + c) + 1])
            if out != NULL:
                for c in range(C):
                    inv_std[c] = 1.0 / sqrt(m2[c] / <double>N + eps)
                    set_affine_coef(c, C, mean[c], scale[c] * inv_std[c], bias[c], coef)
                tile_coef(coef, C, k, coef_w)
                nhwc_affine_sweep(x, out, N, C, coef_w, nthreads)
    free(part)
    free(coef)
    free(coef_w)
    return rc


cdef int affine_driver(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, const double* mean, const double* a, const double* bias,
                       int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), c
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    cdef floating* coef_w = NULL
    if coef == NULL:
        return -1
    for c in range(C):
        set_affine_coef(c, C, mean[c], a[c], bias[c], coef)
    if S > 1:
        nchw_affine_sweep(x, out, N, C, S, 0, C, coef, nthreads)
    else:
        coef_w = <floating*>malloc(4 * k * C * sizeof(floating))
        if coef_w == NULL:
            free(coef)
            return -1
        tile_coef(coef, C, k, coef_w)
        nhwc_affine_sweep(x, out, N, C, coef_w, nthreads)
    free(coef)
    free(coef_w)
    return 0


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
                             NULL, 0.0, &ds[0], &db[0], nthreads)
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
                             nthreads)
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
                            &mv[0], &m2v[0], NULL, nthreads)
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
                            &mv[0], &m2v[0], &iv[0], nthreads)
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
