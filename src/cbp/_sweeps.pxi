# Elementwise sweeps: the dX formula and the normalizing affine map.
#
# Every sweep works from per-channel coefficients prepared in float64 and
# rounded once to the input type, and keeps the centred form
#     dx = a * dy + b * (x - mean_hi) + k      y = a * (x - mean_hi) + k
# rather than a * dy + b * x + k', which cancels badly when |mean| >> std.
# `coef` holds four rows of C values: mean_hi, a, b, k. The column kernels use
# the same four rows tiled to the fused row width W = k * C.
# An output may be the very array it reads (in-place); elements are read
# before they are written at the same index.


cdef inline void plane_dx(const floating* x, const floating* dy, floating* out,
                          Py_ssize_t S, floating mh, floating a, floating b,
                          floating k) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(S):
        out[s] = a * dy[s] + b * (x[s] - mh) + k


cdef inline void plane_affine(const floating* x, floating* out, Py_ssize_t S,
                              floating mh, floating a, floating k) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(S):
        out[s] = a * (x[s] - mh) + k


cdef void nchw_dx_sweep(const floating* x, const floating* dy, floating* out,
                        Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c0,
                        Py_ssize_t c1, const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t nc = c1 - c0, i, c, off
    for i in prange(N * nc, schedule='static', num_threads=nthreads):
        c = c0 + i % nc
        off = ((i // nc) * C + c) * S
        plane_dx(x + off, dy + off, out + off, S, coef[c], coef[C + c],
                 coef[2 * C + c], coef[3 * C + c])


cdef void nchw_affine_sweep(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                            Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1,
                            const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t nc = c1 - c0, i, c, off
    for i in prange(N * nc, schedule='static', num_threads=nthreads):
        c = c0 + i % nc
        off = ((i // nc) * C + c) * S
        plane_affine(x + off, out + off, S, coef[c], coef[C + c], coef[3 * C + c])


cdef inline void row_dx(const floating* x, const floating* dy, floating* out, Py_ssize_t m,
                        const floating* coef_w, Py_ssize_t W) noexcept nogil:
    cdef const floating* mh = coef_w
    cdef const floating* a = coef_w + W
    cdef const floating* b = coef_w + 2 * W
    cdef const floating* k = coef_w + 3 * W
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j]


cdef inline void row_affine(const floating* x, floating* out, Py_ssize_t m,
                            const floating* coef_w, Py_ssize_t W) noexcept nogil:
    cdef const floating* mh = coef_w
    cdef const floating* a = coef_w + W
    cdef const floating* k = coef_w + 3 * W
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = a[j] * (x[j] - mh[j]) + k[j]


cdef void nhwc_dx_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                        Py_ssize_t C, const floating* coef_w, int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), W = k * C, i, off
    for i in prange(ceil_div(R, k), schedule='static', num_threads=nthreads):
        off = i * W
        row_dx(x + off, dy + off, out + off, min(k, R - i * k) * C, coef_w, W)


cdef void nhwc_affine_sweep(const floating* x, floating* out, Py_ssize_t R, Py_ssize_t C,
                            const floating* coef_w, int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), W = k * C, i, off
    for i in prange(ceil_div(R, k), schedule='static', num_threads=nthreads):
        off = i * W
        row_affine(x + off, out + off, min(k, R - i * k) * C, coef_w, W)
