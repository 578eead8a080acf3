# Elementwise sweeps: the dX formula and the normalizing affine map.
#
# Every sweep works from per-channel coefficients prepared in float64 and
# rounded once to the input type, and keeps the centred form
#     dx = a * dy + b * (x - mean_hi) + k      y = a * (x - mean_hi) + k
# rather than a * dy + b * x + k', which cancels badly when |mean| >> std.
# `coef` holds four rows of C values: mean_hi, a, b, k. A sweep with dy == NULL
# is the affine map. Rows of channels (NHWC, short NCHW planes) use the four
# rows tiled to the row width; short NCHW planes go four rows at a time so
# each coefficient is loaded once per four outputs.
# An output may be the very array it reads (in-place); elements are read
# before they are written at the same index.

cdef extern from *:
    """
    /* The sweep loops (see CBP_SIMD, CBP_DISPATCH); `omp simd` also keeps the
       in-place case (out == x or out == dy) vectorized. Plane: one channel,
       scalar coefficients. Rows: `rows` (1 or 4) rows `st` apart, per-element
       coefficients. */
    #define CBP_DEFINE_SWEEPS(T, SUF)                                               \\
    static CBP_DISPATCH void cbp_plane_sweep_##SUF(const T *x, const T *dy, T *out, \\
            Py_ssize_t S, T mh, T a, T b, T k) {                                    \\
        Py_ssize_t s;                                                               \\
        if (dy) {                                                                   \\
            CBP_SIMD for (s = 0; s < S; s++)                                        \\
                out[s] = a * dy[s] + b * (x[s] - mh) + k;                           \\
        } else {                                                                    \\
            CBP_SIMD for (s = 0; s < S; s++) out[s] = a * (x[s] - mh) + k;          \\
        }                                                                           \\
    }                                                                               \\
    static CBP_DISPATCH void cbp_rows_sweep_##SUF(const T *x, const T *dy, T *out,  \\
            int rows, Py_ssize_t st, Py_ssize_t m, const T *mh, const T *a,         \\
            const T *b, const T *k) {                                               \\
        Py_ssize_t j;                                                               \\
        if (rows == 4 && dy) {                                                      \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], bj = b[j], kj = k[j];                       \\
                out[j] = aj * dy[j] + bj * (x[j] - s) + kj;                         \\
                out[st + j] = aj * dy[st + j] + bj * (x[st + j] - s) + kj;          \\
                out[2 * st + j] = aj * dy[2 * st + j]                               \\
                                  + bj * (x[2 * st + j] - s) + kj;                  \\
                out[3 * st + j] = aj * dy[3 * st + j]                               \\
                                  + bj * (x[3 * st + j] - s) + kj;                  \\
            }                                                                       \\
        } else if (rows == 4) {                                                     \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], kj = k[j];                                  \\
                out[j] = aj * (x[j] - s) + kj;                                      \\
                out[st + j] = aj * (x[st + j] - s) + kj;                            \\
                out[2 * st + j] = aj * (x[2 * st + j] - s) + kj;                    \\
                out[3 * st + j] = aj * (x[3 * st + j] - s) + kj;                    \\
            }                                                                       \\
        } else if (dy) {                                                            \\
            CBP_SIMD for (j = 0; j < m; j++)                                        \\
                out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j];               \\
        } else {                                                                    \\
            CBP_SIMD for (j = 0; j < m; j++) out[j] = a[j] * (x[j] - mh[j]) + k[j]; \\
        }                                                                           \\
    }

    CBP_DEFINE_SWEEPS(float, f32)
    CBP_DEFINE_SWEEPS(double, f64)
    """
    void cbp_plane_sweep_f32(const float* x, const float* dy, float* out, Py_ssize_t S,
                             float mh, float a, float b, float k) noexcept nogil
    void cbp_plane_sweep_f64(const double* x, const double* dy, double* out, Py_ssize_t S,
                             double mh, double a, double b, double k) noexcept nogil
    void cbp_rows_sweep_f32(const float* x, const float* dy, float* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const float* mh, const float* a,
                            const float* b, const float* k) noexcept nogil
    void cbp_rows_sweep_f64(const double* x, const double* dy, double* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const double* mh, const double* a,
                            const double* b, const double* k) noexcept nogil


cdef inline void plane_sweep(const floating* x, const floating* dy, floating* out,
                             Py_ssize_t S, const floating* coef, Py_ssize_t C,
                             Py_ssize_t c) noexcept nogil:
    if floating is float:
        cbp_plane_sweep_f32(x, dy, out, S, coef[c], coef[C + c], coef[2 * C + c],
                            coef[3 * C + c])
    else:
        cbp_plane_sweep_f64(x, dy, out, S, coef[c], coef[C + c], coef[2 * C + c],
                            coef[3 * C + c])


cdef inline void rows_sweep(const floating* x, const floating* dy, floating* out,
                            Py_ssize_t nrows, Py_ssize_t st, Py_ssize_t W, Py_ssize_t last_w,
                            const floating* coef_w) noexcept nogil:
    # nrows rows st apart, each W wide but the last (last_w); coef_w is [4, W]
    cdef Py_ssize_t i = 0, full = nrows if last_w == W else nrows - 1
    cdef int rows
    cdef const floating* g
    while i < nrows:
        # four rows per coefficient load where rows are apart (short NCHW
        # planes) or the coefficients outgrow L1 (W >= 2048); shorter
        # contiguous NHWC rows measured faster one at a time
        rows = 4 if ((st != W or W >= 2048) and i + 4 <= full) else 1
        g = NULL if dy == NULL else dy + i * st
        if floating is float:
            cbp_rows_sweep_f32(x + i * st, g, out + i * st, rows, st,
                               W if i < full else last_w, coef_w, coef_w + W,
                               coef_w + 2 * W, coef_w + 3 * W)
        else:
            cbp_rows_sweep_f64(x + i * st, g, out + i * st, rows, st,
                               W if i < full else last_w, coef_w, coef_w + W,
                               coef_w + 2 * W, coef_w + 3 * W)
        i = i + rows


cdef int nchw_sweep_unit(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                         Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t u,
                         const floating* coef) noexcept nogil:
    # Short planes: one image's planes of a channel block form one row; the
    # coefficients are tiled to that row.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb), W = (c1 - c0) * S
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t j, c, s, off = (n0 * C + c0) * S
    cdef floating* coef_w = <floating*>malloc(4 * W * sizeof(floating))
    if coef_w == NULL:
        return -1
    for j in range(4):
        for c in range(c0, c1):
            for s in range(S):
                coef_w[j * W + (c - c0) * S + s] = coef[j * C + c]
    rows_sweep(x + off, NULL if dy == NULL else dy + off, out + off, n1 - n0, C * S, W, W,
               coef_w)
    free(coef_w)
    return 0


cdef int nchw_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1,
                    const floating* coef, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) for channel blocks cb0..cb1."""
    cdef Py_ssize_t c0 = cb0 * p.cb, nc = min(C, cb1 * p.cb) - c0, i, c, off, u
    cdef int failed = 0
    if S < SHORT_PLANE:
        for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
            if nchw_sweep_unit(x, dy, out, N, C, S, p, u, coef) != 0:
                failed += 1
        return -1 if failed else 0
    for i in prange(N * nc, schedule='static', num_threads=nthreads):
        c = c0 + i % nc
        off = ((i // nc) * C + c) * S
        plane_sweep(x + off, NULL if dy == NULL else dy + off, out + off, S, coef, C, c)
    return 0


cdef void nhwc_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                     Py_ssize_t C, const floating* coef_w, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) over R rows of C channels.

    Rows are fused k at a time (column_widen) and swept in groups of four
    fused rows; coef_w is [4, k * C]."""
    cdef Py_ssize_t k = column_widen(C), W = k * C, nsr = ceil_div(R, k)
    cdef Py_ssize_t i, r0, nr
    for i in prange(ceil_div(nsr, 4), schedule='static', num_threads=nthreads):
        r0 = 4 * i * k
        nr = min(4 * k, R - r0)
        rows_sweep(x + r0 * C, NULL if dy == NULL else dy + r0 * C, out + r0 * C,
                   ceil_div(nr, k), W, W, (nr - (ceil_div(nr, k) - 1) * k) * C, coef_w)
