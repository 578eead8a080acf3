# Small calls: the checks of the Python layer (_validation.py) done in C, for
# calls that run on one thread (fewer than 2 * GRAIN_ELEMS elements, where
# those checks and the typed-memoryview entry points cost more than the
# kernel: 2x4x3x3 backward took 10 us, 7 of them in Python).
#
# A small_* function takes only plain arguments: exact numpy.ndarray inputs,
# C-contiguous, aligned, in the native float32/float64 layout, per-channel
# vectors already float64, non-empty, an `out` (if any) of x's kind that is
# x, dy or apart from both, num_threads None or an int in 1..max. It returns None for anything else, and the public function then
# takes its general path, which accepts or rejects the arguments with its own
# messages; so a small_* function never decides what is valid, it only
# recognizes the most common valid case. The kernel and its team (one thread)
# are those of the general path, so the results are the same bits.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO, PyBUF_RECORDS

cdef object _ndarray = np.ndarray
cdef object _np_empty = np.empty
cdef object _np_empty_like = np.empty_like
cdef object _f64 = np.float64
# the most threads a call may ask for (_validation.MAX_THREADS, set at import)
cdef int _call_thread_limit = 1


def set_call_thread_limit(int n):
    global _call_thread_limit
    _call_thread_limit = n


cdef struct Act:
    # an activation viewed as the (N, C, S) block the kernels take
    Py_ssize_t N, C, S
    char kind        # 'f' or 'd'


cdef bint _plain(object a, Py_buffer* v, int flags) except -1:
    # Acquire a's buffer when a is a plain array: exact ndarray, native float32
    # or float64, C-contiguous, aligned. False (nothing held) otherwise.
    cdef Py_ssize_t i, step
    if type(a) is not _ndarray:
        return False
    PyObject_GetBuffer(a, v, flags)
    if (v.format == NULL or v.format[1] != 0 or not (v.format[0] == b'f' or v.format[0] == b'd')
            or (<size_t>v.buf) % <size_t>v.itemsize != 0):
        PyBuffer_Release(v)
        return False
    step = v.itemsize
    for i in range(v.ndim - 1, -1, -1):
        if v.shape[i] != 1 and v.strides[i] != step:
            PyBuffer_Release(v)
            return False
        step = step * v.shape[i]
    return True


cdef bint _activation(object a, Py_buffer* v, object layout, Act* out) except -1:
    # a plain, non-empty activation of 2..5 dimensions in `layout`
    cdef Py_ssize_t i, rest = 1
    if not _plain(a, v, PyBUF_RECORDS_RO):
        return False
    if not (2 <= v.ndim <= 5):
        PyBuffer_Release(v)
        return False
    if layout == "NCHW":
        for i in range(2, v.ndim):
            rest = rest * v.shape[i]
        out.N, out.C, out.S = v.shape[0], v.shape[1], rest
    elif layout == "NHWC":
        for i in range(v.ndim - 1):
            rest = rest * v.shape[i]
        out.N, out.C, out.S = rest, v.shape[v.ndim - 1], 1
    else:
        PyBuffer_Release(v)
        return False
    out.kind = v.format[0]
    if out.N * out.S == 0 or out.C == 0:
        PyBuffer_Release(v)
        return False
    return True


cdef bint _same(Py_buffer* a, Py_buffer* b) noexcept:
    # b has a's element type and shape
    cdef Py_ssize_t i
    if a.format[0] != b.format[0] or a.ndim != b.ndim:
        return False
    for i in range(a.ndim):
        if a.shape[i] != b.shape[i]:
            return False
    return True


cdef bint _vector(object a, Py_buffer* v, Py_ssize_t C, int check) except -1:
    # a plain float64 vector of length C; check 1: finite, 2: finite and > 0
    cdef Py_ssize_t i
    cdef const double* p
    if not _plain(a, v, PyBUF_RECORDS_RO):
        return False
    if v.format[0] != b'd' or v.ndim != 1 or v.shape[0] != C:
        PyBuffer_Release(v)
        return False
    p = <const double*>v.buf
    for i in range(C if check else 0):
        if not isfinite(p[i]) or (check == 2 and not p[i] > 0):
            PyBuffer_Release(v)
            return False
    return True


cdef bint _output(object out, Py_buffer* v, Py_buffer* x, Py_buffer* dy) except -1:
    # a plain, writeable out of x's type and shape that is x, dy or apart from both
    cdef char* p
    cdef Py_buffer* r
    cdef int i
    if not _plain(out, v, PyBUF_RECORDS_RO):
        return False
    if v.readonly or not _same(x, v):
        PyBuffer_Release(v)
        return False
    p = <char*>v.buf
    for i in range(2):
        r = x if i == 0 else dy
        if r == NULL or r.buf == v.buf:
            continue
        if p < <char*>r.buf + r.len and <char*>r.buf < p + v.len:
            PyBuffer_Release(v)  # a partial overlap: the general path refuses it
            return False
    return True


cdef int _small_team(object num_threads, Py_ssize_t elements) except -2:
    # 1 when this call runs on one thread with these num_threads, else 0
    cdef long n
    if num_threads is None:
        n = max(1, min(cbp_max_threads(), _call_thread_limit))
    elif type(num_threads) is int:
        # compared as Python ints first: any int may be passed
        if not (1 <= num_threads <= _call_thread_limit):
            return 0
        n = num_threads
    else:
        return 0
    return 1 if _team(<int>n, elements) == 1 else 0


cdef inline void _release(Py_buffer* v, int n) noexcept:
    cdef int i
    for i in range(n):
        PyBuffer_Release(&v[i])


def small_backward(x, dy, mean, inv_std, scale, layout, num_threads, out=None):
    """(dx, dscale, dbias) of a plain one-thread call, or None (see above)."""
    cdef Py_buffer v[8]
    cdef int held = 0, rc
    cdef Act a
    cdef Py_ssize_t C
    if not _activation(x, &v[0], layout, &a):
        return None
    held = 1
    try:
        C = a.C
        if not (_small_team(num_threads, a.N * C * a.S) and _plain(dy, &v[1], PyBUF_RECORDS_RO)):
            return None
        held = 2
        if not _same(&v[0], &v[1]) or not _vector(mean, &v[2], C, 1):
            return None
        held = 3
        if not _vector(inv_std, &v[3], C, 2):
            return None
        held = 4
        if scale is None:
            scale = np.ones(C)
        if not _vector(scale, &v[4], C, 0):
            return None
        held = 5
        if out is None:
            dx = _np_empty_like(x)
            PyObject_GetBuffer(dx, &v[5], PyBUF_RECORDS)
        elif _output(out, &v[5], &v[0], &v[1]):
            dx = out
        else:
            return None
        held = 6
        dscale = _np_empty(C, _f64)
        dbias = _np_empty(C, _f64)
        PyObject_GetBuffer(dscale, &v[6], PyBUF_RECORDS)
        held = 7
        PyObject_GetBuffer(dbias, &v[7], PyBUF_RECORDS)
        held = 8
        if a.kind == b'f':
            rc = _backward(<const float*>v[0].buf, <const float*>v[1].buf, <float*>v[5].buf,
                           a.N, C, a.S, <const double*>v[2].buf, <const double*>v[3].buf,
                           <const double*>v[4].buf, <double*>v[6].buf, <double*>v[7].buf,
                           _cache_block_bytes, 1)
        else:
            rc = _backward(<const double*>v[0].buf, <const double*>v[1].buf,
                           <double*>v[5].buf, a.N, C, a.S, <const double*>v[2].buf,
                           <const double*>v[3].buf, <const double*>v[4].buf,
                           <double*>v[6].buf, <double*>v[7].buf, _cache_block_bytes, 1)
    finally:
        _release(v, held)
    _check(rc)
    return dx, dscale, dbias


def small_backprop_sums(x, dy, mean, inv_std, layout, num_threads):
    """(dscale, dbias) of a plain one-thread call, or None."""
    cdef Py_buffer v[6]
    cdef int held = 0, rc
    cdef Act a
    cdef Py_ssize_t C
    if not _activation(x, &v[0], layout, &a):
        return None
    held = 1
    try:
        C = a.C
        if not (_small_team(num_threads, a.N * C * a.S) and _plain(dy, &v[1], PyBUF_RECORDS_RO)):
            return None
        held = 2
        if not _same(&v[0], &v[1]) or not _vector(mean, &v[2], C, 1):
            return None
        held = 3
        if not _vector(inv_std, &v[3], C, 2):
            return None
        held = 4
        dscale = _np_empty(C, _f64)
        dbias = _np_empty(C, _f64)
        PyObject_GetBuffer(dscale, &v[4], PyBUF_RECORDS)
        held = 5
        PyObject_GetBuffer(dbias, &v[5], PyBUF_RECORDS)
        held = 6
        if a.kind == b'f':
            rc = _backprop_sums(<const float*>v[0].buf, <const float*>v[1].buf, a.N, C, a.S,
                                <const double*>v[2].buf, <const double*>v[3].buf,
                                <double*>v[4].buf, <double*>v[5].buf, 1)
        else:
            rc = _backprop_sums(<const double*>v[0].buf, <const double*>v[1].buf, a.N, C, a.S,
                                <const double*>v[2].buf, <const double*>v[3].buf,
                                <double*>v[4].buf, <double*>v[5].buf, 1)
    finally:
        _release(v, held)
    _check(rc)
    return dscale, dbias


def small_moments(x, layout, num_threads):
    """(count, mean, m2, var) of a plain one-thread call, or None."""
    cdef Py_buffer v[4]
    cdef int held = 0, rc
    cdef Act a
    cdef Py_ssize_t c
    cdef double n
    cdef double* m2p
    cdef double* varp
    if not _activation(x, &v[0], layout, &a):
        return None
    held = 1
    try:
        if not _small_team(num_threads, a.N * a.C * a.S):
            return None
        mean = _np_empty(a.C, _f64)
        m2 = _np_empty(a.C, _f64)
        var = _np_empty(a.C, _f64)
        PyObject_GetBuffer(mean, &v[1], PyBUF_RECORDS)
        held = 2
        PyObject_GetBuffer(m2, &v[2], PyBUF_RECORDS)
        held = 3
        PyObject_GetBuffer(var, &v[3], PyBUF_RECORDS)
        held = 4
        if a.kind == b'f':
            rc = _moments(<const float*>v[0].buf, a.N, a.C, a.S, <double*>v[1].buf,
                          <double*>v[2].buf, 1)
        else:
            rc = _moments(<const double*>v[0].buf, a.N, a.C, a.S, <double*>v[1].buf,
                          <double*>v[2].buf, 1)
        # var = m2 / count, the division ChannelStats.var does (0 when empty)
        n = <double>(a.N * a.S)
        m2p = <double*>v[2].buf
        varp = <double*>v[3].buf
        for c in range(a.C):
            varp[c] = m2p[c] / n if n > 0 else 0.0
    finally:
        _release(v, held)
    _check(rc)
    return a.N * a.S, mean, m2, var


def small_forward(x, scale, bias, eps, layout, num_threads, out=None):
    """(y, mean, inv_std) of a plain one-thread call, or None."""
    cdef Py_buffer v[7]
    cdef int held = 0, rc
    cdef Act a
    cdef Py_ssize_t C
    cdef double e
    if type(eps) is not float:
        return None
    e = eps
    if not (isfinite(e) and e > 0) or not _activation(x, &v[0], layout, &a):
        return None
    held = 1
    try:
        C = a.C
        if not _small_team(num_threads, a.N * C * a.S):
            return None
        if scale is None:
            scale = np.ones(C)
        if bias is None:
            bias = np.zeros(C)
        if not _vector(scale, &v[1], C, 0):
            return None
        held = 2
        if not _vector(bias, &v[2], C, 0):
            return None
        held = 3
        if out is None:
            y = _np_empty_like(x)
            PyObject_GetBuffer(y, &v[3], PyBUF_RECORDS)
        elif _output(out, &v[3], &v[0], NULL):
            y = out
        else:
            return None
        held = 4
        mean = _np_empty(C, _f64)
        m2 = _np_empty(C, _f64)
        inv_std = _np_empty(C, _f64)
        PyObject_GetBuffer(mean, &v[4], PyBUF_RECORDS)
        held = 5
        PyObject_GetBuffer(m2, &v[5], PyBUF_RECORDS)
        held = 6
        PyObject_GetBuffer(inv_std, &v[6], PyBUF_RECORDS)
        held = 7
        if a.kind == b'f':
            rc = _forward(<const float*>v[0].buf, <float*>v[3].buf, a.N, C, a.S,
                          <const double*>v[1].buf, <const double*>v[2].buf, e,
                          <double*>v[4].buf, <double*>v[5].buf, <double*>v[6].buf,
                          _cache_block_bytes, 1)
        else:
            rc = _forward(<const double*>v[0].buf, <double*>v[3].buf, a.N, C, a.S,
                          <const double*>v[1].buf, <const double*>v[2].buf, e,
                          <double*>v[4].buf, <double*>v[5].buf, <double*>v[6].buf,
                          _cache_block_bytes, 1)
    finally:
        _release(v, held)
    _check(rc)
    return y, mean, inv_std


def small_dx(x, dy, mean, inv_std, scale, dscale, dbias, count, layout, num_threads,
             out=None):
    """dx of a plain one-thread call, or None."""
    cdef Py_buffer v[8]
    cdef int held = 0, rc
    cdef Act a
    cdef Py_ssize_t C
    if type(count) is not int or not count >= 1 or not _activation(x, &v[0], layout, &a):
        return None
    held = 1
    try:
        C = a.C
        if not (_small_team(num_threads, a.N * C * a.S) and _plain(dy, &v[1], PyBUF_RECORDS_RO)):
            return None
        held = 2
        if not _same(&v[0], &v[1]) or not _vector(mean, &v[2], C, 1):
            return None
        held = 3
        if not _vector(inv_std, &v[3], C, 2):
            return None
        held = 4
        if scale is None:
            scale = np.ones(C)
        if not _vector(scale, &v[4], C, 0):
            return None
        held = 5
        if not _vector(dscale, &v[5], C, 0):
            return None
        held = 6
        if not _vector(dbias, &v[6], C, 0):
            return None
        held = 7
        if out is None:
            dx = _np_empty_like(x)
            PyObject_GetBuffer(dx, &v[7], PyBUF_RECORDS)
        elif _output(out, &v[7], &v[0], &v[1]):
            dx = out
        else:
            return None
        held = 8
        if a.kind == b'f':
            rc = _dx(<const float*>v[0].buf, <const float*>v[1].buf, <float*>v[7].buf, a.N, C,
                     a.S, <const double*>v[2].buf, <const double*>v[3].buf,
                     <const double*>v[4].buf, <const double*>v[5].buf, <const double*>v[6].buf,
                     <double>count, 1)
        else:
            rc = _dx(<const double*>v[0].buf, <const double*>v[1].buf, <double*>v[7].buf, a.N,
                     C, a.S, <const double*>v[2].buf, <const double*>v[3].buf,
                     <const double*>v[4].buf, <const double*>v[5].buf, <const double*>v[6].buf,
                     <double>count, 1)
    finally:
        _release(v, held)
    _check(rc)
    return dx
