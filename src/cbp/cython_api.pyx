# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""cbp's compiled kernels and its public C-level API.

The kernels are compiled once, here, from files named after what they do:
``_plan.pxi`` (work decomposition), ``_nchw_reduce.pxi`` and
``_nhwc_reduce.pxi`` (per-channel reductions), ``_sweeps.pxi`` (dX and affine
sweeps) and ``_drivers.pxi`` (the fused operations), which call the C kernels
of ``csrc/`` (declared in ``_csrc.pxd``). The functions declared in
``cython_api.pxd`` are the public C API for other packages' Cython code, one
per operation and dtype; cbp's own Python layer calls the same dtype-generic
bodies through ``_entry_points.pxi`` (re-exported as ``cbp._kernels``), and
``_plan_info.pxi`` reports the plan a call would run.
"""
# The kernel files use these names; they are cimported here, not in the .pxd,
# so the public interface stays free of cimports.
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy
from libc.math cimport sqrt, isfinite, fabs, NAN
from libc.float cimport FLT_MAX, DBL_MIN

import numpy as np

from cbp._csrc cimport *

include "_plan.pxi"
include "_nchw_reduce.pxi"
include "_nhwc_reduce.pxi"
include "_sweeps.pxi"

include "_drivers.pxi"
include "_plan_info.pxi"


if cbp_install_fork_guard() != 0:
    raise ImportError("cbp: could not install its fork handler (pthread_atfork)")


def openmp_library_path():
    """Path of the OpenMP runtime library cbp's kernels call ("" if none or unknown)."""
    return cbp_openmp_library().decode("utf-8", "surrogateescape")


def in_forked_child():
    """True in a process forked (without exec) while cbp uses GNU libgomp: one thread then."""
    return bool(cbp_forked_child())


def compiler():
    """The C compiler the kernels were built with."""
    return cbp_compiler().decode()


def compile_args():
    """The compiler flags the kernels were built with."""
    return cbp_compile_args().decode()


def isa_available():
    """Instruction sets compiled in and supported by this CPU, widest first."""
    return [cbp_isa_name(i).decode() for i in range(cbp_isa_count())]


def isa_compiled():
    """Every instruction set compiled into this build, widest first."""
    return [cbp_isa_compiled_name(i).decode() for i in range(cbp_isa_compiled_count())]


def isa():
    """The instruction set whose kernels run."""
    return cbp_isa_active().decode()


def isa_default():
    """The instruction set cbp selects at import when CBP_ISA is not set."""
    return cbp_isa_default().decode()


def select_isa(name):
    """Run the kernels of instruction set `name`; 0, -1 (unknown) or -2 (unsupported)."""
    return cbp_isa_select(name.encode())


def _select_isa_at_import():
    # The default instruction set for this CPU, or the one CBP_ISA names.
    import os
    available = isa_available()
    want = os.environ.get("CBP_ISA", "").strip().lower()
    rc = select_isa(want or isa_default())
    if rc == -1:
        raise ImportError(f"cbp: CBP_ISA={want!r} names no instruction set of this build "
                          f"(built: {', '.join(isa_compiled())}); available on this CPU: "
                          f"{', '.join(available)}")
    if rc == -2:
        raise ImportError(f"cbp: CBP_ISA={want!r} is not supported by this CPU; available "
                          f"on this CPU: {', '.join(available)}")


_select_isa_at_import()


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_CACHES = {}


def _parse_cache_sizes(text):
    # CBP_CACHE_SIZES, e.g. "l1d=48K,l2=2M,l3=32M": any of the three, 0 = none
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        unit = value[-1:] if value[-1:] in ("k", "m", "g") else ""
        number = value[:len(value) - len(unit)]
        if not sep or key not in ("l1d", "l2", "l3") or not number.isdigit():
            raise ImportError(f"cbp: CBP_CACHE_SIZES={text!r} is not a list such as "
                              f"'l1d=48K,l2=2M,l3=32M' (sizes in bytes, K, M or G)")
        out[key] = int(number) * _SIZE_UNITS[unit]
    return out


def counted_last_level_cache(long long l2, long long l3, int l2_shared_by,
                             int l3_shared_by):
    """The last-level cache the schedule counts on (bytes; 0 = none reported): the
    L3, else the L2; an L3 reported as shared by l3_shared_by CPUs counts for at
    most LLC_PER_L2 (csrc/cbp_tuning.h) times the L2s of those CPUs, since a
    virtual machine may report its host's whole L3 as its own."""
    cdef long long l2s
    if l3 > 0 and l2 > 0 and l3_shared_by > 0:
        l2s = l2 * l3_shared_by // max(1, l2_shared_by)
        return min(l3, LLC_PER_L2 * l2s)
    return l3 if l3 > 0 else max(0, l2)


def _configure_caches_at_import():
    # The caches this CPU reports (or CBP_CACHE_SIZES), and the schedule
    # sizes derived from the last level of them.
    import os
    global _CACHES
    info = detect_caches()
    override = os.environ.get("CBP_CACHE_SIZES", "").strip()
    if override:
        given = _parse_cache_sizes(override)
        info.update(given)
        for key in given:
            info[key + "_shared_by"] = 0  # not part of the override: unknown
        info["source"] = "CBP_CACHE_SIZES"
    # an L3 given in CBP_CACHE_SIZES has no sharing count and is taken as given
    llc = counted_last_level_cache(info["l2"], info["l3"], info["l2_shared_by"],
                                   info["l3_shared_by"])
    info["last_level_cache_assumed"] = not llc
    info["last_level_cache_capped"] = bool(llc) and llc < (info["l3"] or info["l2"])
    set_last_level_cache(llc or LLC_DEFAULT_BYTES)
    set_l1d_cache(info["l1d"])
    set_l2_cache(info["l2"] // max(1, info["l2_shared_by"]))
    info.update(schedule_sizes())
    _CACHES = info


def caches():
    """The CPU's data caches (bytes; 0 = not reported), where they were read, and the
    schedule sizes cbp derived from the last-level cache (the L3, else the L2;
    8 MiB when neither is reported, ``last_level_cache_assumed``; a detected L3
    counts for at most 16 times the L2s sharing it, ``last_level_cache_capped``)
    and from the L1d (32 KiB when not reported)."""
    return dict(_CACHES)


cdef enum:
    _OK = 0
    _INVALID = -2


cdef inline bint _bad_dims(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                           int num_threads) noexcept nogil:
    return N < 0 or C < 0 or S < 0 or num_threads < 1


cdef inline int _team(int num_threads, Py_ssize_t elements) noexcept nogil:
    # At most one thread per GRAIN_ELEMS elements of x, so that a small call
    # does not wake a team it cannot use (the bits do not depend on it: units
    # are fixed by the shape).
    cdef Py_ssize_t most = max(1, elements // GRAIN_ELEMS)
    if cbp_forked_child():
        return 1
    return num_threads if num_threads <= most else <int>most


cdef inline Py_ssize_t _cache(Py_ssize_t cache_bytes, int team) noexcept nogil:
    return cache_bytes if cache_bytes > 0 else default_block(team)


cdef inline void _zeros(double* a, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        a[c] = 0.0


# ---------------------------------------------------------------------------
# dtype-generic bodies; the public functions below pin the dtype

cdef int _moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, double* mean,
                  double* m2, int num_threads) noexcept nogil:
    if _bad_dims(N, C, S, num_threads):
        return _INVALID
    if C == 0:
        return _OK
    if N * S == 0:
        _zeros(mean, C)
        _zeros(m2, C)
        return _OK
    return forward_driver(x, <floating*>NULL, N, C, S, NULL, NULL, 0.0, mean, m2, NULL,
                          _default_cache_block, _team(num_threads, N * C * S))


cdef int _backprop_sums(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t S, const double* mean, const double* inv_std,
                        double* dscale, double* dbias, int num_threads) noexcept nogil:
    if _bad_dims(N, C, S, num_threads):
        return _INVALID
    if C == 0:
        return _OK
    if N * S == 0:
        _zeros(dscale, C)
        _zeros(dbias, C)
        return _OK
    return backward_driver(x, dy, <floating*>NULL, N, C, S, mean, inv_std, NULL, 0.0,
                           dscale, dbias, _default_cache_block,
                           _team(num_threads, N * C * S))


cdef int _dx(const floating* x, const floating* dy, floating* out, Py_ssize_t N, Py_ssize_t C,
             Py_ssize_t S, const double* mean, const double* inv_std, const double* scale,
             const double* dscale, const double* dbias, double count,
             int num_threads) noexcept nogil:
    if _bad_dims(N, C, S, num_threads) or not count > 0:
        return _INVALID
    if C == 0 or N * S == 0:
        return _OK
    return dx_driver(x, dy, out, N, C, S, mean, inv_std, scale, dscale, dbias, count,
                     _team(num_threads, N * C * S))


cdef int _backward(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                   Py_ssize_t C, Py_ssize_t S, const double* mean, const double* inv_std,
                   const double* scale, double* dscale, double* dbias, Py_ssize_t cache_bytes,
                   int num_threads) noexcept nogil:
    cdef int team
    if _bad_dims(N, C, S, num_threads):
        return _INVALID
    if C == 0:
        return _OK
    if N * S == 0:
        _zeros(dscale, C)
        _zeros(dbias, C)
        return _OK
    team = _team(num_threads, N * C * S)
    return backward_driver(x, dy, out, N, C, S, mean, inv_std, scale, <double>(N * S),
                           dscale, dbias, _cache(cache_bytes, team), team)


cdef int _forward(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                  const double* scale, const double* bias, double eps, double* mean,
                  double* m2, double* inv_std, Py_ssize_t cache_bytes,
                  int num_threads) noexcept nogil:
    cdef Py_ssize_t c
    cdef int team
    if _bad_dims(N, C, S, num_threads) or not eps > 0:
        return _INVALID
    if C == 0:
        return _OK
    if N * S == 0:
        _zeros(mean, C)
        _zeros(m2, C)
        for c in range(C):
            inv_std[c] = 1.0 / sqrt(eps)
        return _OK
    team = _team(num_threads, N * C * S)
    return forward_driver(x, out, N, C, S, scale, bias, eps, mean, m2, inv_std,
                          _cache(cache_bytes, team), team)


cdef int _affine(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                 const double* mean, const double* a, const double* bias,
                 int num_threads) noexcept nogil:
    if _bad_dims(N, C, S, num_threads):
        return _INVALID
    if C == 0 or N * S == 0:
        return _OK
    return affine_driver(x, out, N, C, S, mean, a, bias, _team(num_threads, N * C * S))


# ---------------------------------------------------------------------------
# the public API (declared and documented in cython_api.pxd)

cdef int cbp_openmp_enabled() noexcept nogil:
    return cbp_have_openmp()


cdef int cbp_max_threads() noexcept nogil:
    return 1 if cbp_forked_child() else cbp_omp_max_threads()


cdef Py_ssize_t cbp_default_cache_bytes() noexcept nogil:
    return _default_cache_block


include "_public_api.pxi"


include "_entry_points.pxi"
include "_small_calls.pxi"


# after _entry_points.pxi, which defines what it calls
_configure_caches_at_import()
