# The Python entry points of the kernels, for cbp's Python layer (cbp._kernels
# re-exports them). Inputs are validated and C-contiguous there, shaped
# (N, C, S): S > 1 runs the NCHW kernels, S == 1 the row ("NHWC") kernels.
# Each calls the dtype-generic body behind the public C API (the _op
# functions of cython_api.pyx) for the dtype of its memoryviews.

# 0: the default derived from the last-level cache (_plan.pxi)
cdef Py_ssize_t _cache_block_bytes = 0


cdef _check(int rc):
    if rc == -1:
        raise MemoryError("cbp: could not allocate kernel scratch")
    if rc != 0:
        raise ValueError(f"cbp: kernel rejected its arguments (code {rc})")


def vector_flags(const double[::1] v):
    """Bit 1: a value is not finite; 2: a value is not > 0; 4: a value is not >= 0."""
    cdef Py_ssize_t i
    cdef double t
    cdef int flags = 0
    for i in range(v.shape[0]):
        t = v[i]
        if not isfinite(t):
            flags |= 1
        if not t > 0:
            flags |= 2
        if not t >= 0:
            flags |= 4
    return flags


def openmp_enabled():
    return bool(cbp_openmp_enabled())


def max_threads():
    return cbp_max_threads()


def thread_limit():
    """OpenMP's thread limit (OMP_THREAD_LIMIT), or 1 without OpenMP."""
    return max(1, cbp_omp_thread_limit())


def probe_team(int n, int have):
    """How many of a team of n threads can start, the caller having run `have`."""
    cdef int k
    with nogil:
        k = cbp_probe_team(n, have)
    return k


def cache_block_bytes(value=None):
    """Get (and optionally set) the fused NCHW passes' cache block size in bytes;
    0 = the default, which follows the team (default_cache_block)."""
    global _cache_block_bytes
    old = _cache_block_bytes
    if value is not None:
        if value < 0:
            raise ValueError("cache block size must be >= 1 byte, or 0 for the default")
        _cache_block_bytes = value
    return old


def detect_caches():
    """The data caches the operating system reports (csrc/caches.c), 0 where unknown."""
    cdef cbp_caches c
    cbp_detect_caches(&c)
    return {"l1d": c.size[0], "l2": c.size[1], "l3": c.size[2],
            "l1d_shared_by": c.shared[0], "l2_shared_by": c.shared[1],
            "l3_shared_by": c.shared[2], "source": c.source.decode()}


def set_l1d_cache(long long l1d):
    """Derive the L1d-dependent schedule sizes from an L1d of l1d bytes (0: unknown)."""
    if l1d < 0:
        raise ValueError("the L1d size must be >= 0 bytes")
    cbp_set_moments_ahead(l1d)


def set_last_level_cache(Py_ssize_t llc):
    """Derive the cache-dependent schedule sizes from a last-level cache of llc bytes."""
    if llc < 1:
        raise ValueError("the last-level cache must be >= 1 byte")
    set_llc(llc)


def set_l2_cache(long long l2_per_thread):
    """Bound the default cache block by 3/8 of l2_per_thread bytes per thread (0: none)."""
    if l2_per_thread < 0:
        raise ValueError("the L2 size must be >= 0 bytes")
    set_l2(l2_per_thread)


def default_cache_block(int team):
    """The fused NCHW passes' cache block of a call on `team` threads when none is set."""
    if team < 1:
        raise ValueError("team must be >= 1")
    return default_block(team)


def grain_elements():
    """The fewest elements of x per thread a call starts a thread for."""
    return GRAIN_ELEMS


def schedule_sizes():
    """The sizes derived from the last-level cache (and the L2), in bytes."""
    return {"last_level_cache": _llc_bytes, "cache_block": _default_cache_block,
            "cache_block_per_thread": _l2_block_bytes,
            "streaming_store_from": _nt_store_bytes,
            "streaming_store_rows_from": _nt_rows_bytes,
            "nhwc_sweep_quarters_from": _sweep_quarter_bytes,
            "moments_prefetch_ahead": cbp_moments_ahead}


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
        rc = _backprop_sums(&x[0, 0, 0], &dy[0, 0, 0], N, C, S, &mean[0], &inv_std[0], &ds[0],
                            &db[0], nthreads)
    _check(rc)
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
        rc = _backward(&x[0, 0, 0], &dy[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0], &inv_std[0],
                       &scale[0], &ds[0], &db[0], _cache_block_bytes, nthreads)
    _check(rc)
    return dscale, dbias


def dx(const floating[:, :, ::1] x, const floating[:, :, ::1] dy, const double[::1] mean,
       const double[::1] inv_std, const double[::1] scale, const double[::1] dscale,
       const double[::1] dbias, double count, floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef int rc
    with nogil:
        rc = _dx(&x[0, 0, 0], &dy[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0], &inv_std[0], &scale[0],
                 &dscale[0], &dbias[0], count, nthreads)
    _check(rc)


def moments(const floating[:, :, ::1] x, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    mean = np.empty(C, dtype=np.float64)
    m2 = np.empty(C, dtype=np.float64)
    cdef double[::1] mv = mean, m2v = m2
    cdef int rc
    with nogil:
        rc = _moments(&x[0, 0, 0], N, C, S, &mv[0], &m2v[0], nthreads)
    _check(rc)
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
        rc = _forward(&x[0, 0, 0], &out[0, 0, 0], N, C, S, &scale[0], &bias[0], eps, &mv[0],
                      &m2v[0], &iv[0], _cache_block_bytes, nthreads)
    _check(rc)
    return mean, m2, inv_std


def affine(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] a,
           const double[::1] bias, floating[:, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef int rc
    with nogil:
        rc = _affine(&x[0, 0, 0], &out[0, 0, 0], N, C, S, &mean[0], &a[0], &bias[0], nthreads)
    _check(rc)
