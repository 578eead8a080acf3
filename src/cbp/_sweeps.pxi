# Elementwise sweeps: the dX formula and the normalizing affine map.
#
# Every sweep works from per-channel coefficients prepared in float64 and
# rounded once to the input type, and keeps the centred form
#     dx = a * dy + b * (x - mean_hi) + k      y = a * (x - mean_hi) + k
# rather than a * dy + b * x + k', which cancels badly when |mean| >> std.
# `coef` holds four rows of C values: mean_hi, a, b, k. A sweep with dy == NULL
# is the affine map. NCHW planes are swept in memory order, short ones as runs
# of whole planes; NHWC rows use the four coefficient rows tiled to the row
# width.
# An output may be the very array it reads (in-place); elements are read
# before they are written at the same index.

cdef extern from *:
    """
    /* The sweep loops (see CBP_SIMD, CBP_DISPATCH); `omp simd` also keeps the
       in-place case (out == x or out == dy) vectorized. Rows: `rows` (1 or 4)
       rows `st` apart, per-element coefficients. The four-row loops read all
       four rows before they store: rows are often a multiple of 4 KiB apart,
       and a load that follows a store to the same address mod 4096 waits for
       it (4K aliasing). */
    #define CBP_DEFINE_SWEEPS(T, SUF)                                               \\
    static CBP_DISPATCH void cbp_rows_sweep_##SUF(const T *x, const T *dy, T *out,  \\
            int rows, Py_ssize_t st, Py_ssize_t m, const T *mh, const T *a,         \\
            const T *b, const T *k) {                                               \\
        Py_ssize_t j;                                                               \\
        if (rows == 4 && dy) {                                                      \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], bj = b[j], kj = k[j];                       \\
                T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];\\
                T g0 = dy[j], g1 = dy[st + j];                                      \\
                T g2 = dy[2 * st + j], g3 = dy[3 * st + j];                         \\
                out[j] = aj * g0 + bj * (x0 - s) + kj;                              \\
                out[st + j] = aj * g1 + bj * (x1 - s) + kj;                         \\
                out[2 * st + j] = aj * g2 + bj * (x2 - s) + kj;                     \\
                out[3 * st + j] = aj * g3 + bj * (x3 - s) + kj;                     \\
            }                                                                       \\
        } else if (rows == 4) {                                                     \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], kj = k[j];                                  \\
                T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];\\
                out[j] = aj * (x0 - s) + kj;                                        \\
                out[st + j] = aj * (x1 - s) + kj;                                   \\
                out[2 * st + j] = aj * (x2 - s) + kj;                               \\
                out[3 * st + j] = aj * (x3 - s) + kj;                               \\
            }                                                                       \\
        } else if (dy) {                                                            \\
            CBP_SIMD for (j = 0; j < m; j++)                                        \\
                out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j];               \\
        } else {                                                                    \\
            CBP_SIMD for (j = 0; j < m; j++) out[j] = a[j] * (x[j] - mh[j]) + k[j]; \\
        }                                                                           \\
    }

    /* nc consecutive planes of S elements (a contiguous run of channels of
       one image), per-channel coefficients broadcast inside each plane. */
    #define CBP_DEFINE_RUN_SWEEP(T, SUF)                                            \\
    static CBP_DISPATCH void cbp_run_sweep_##SUF(const T *x, const T *dy, T *out,   \\
            Py_ssize_t nc, Py_ssize_t S, const T *mh, const T *a, const T *b,       \\
            const T *k) {                                                           \\
        Py_ssize_t c, s;                                                            \\
        for (c = 0; c < nc; c++) {                                                  \\
            const T *xp = x + c * S;                                                \\
            T *op = out + c * S;                                                    \\
            T m = mh[c], ac = a[c], bc = b[c], kc = k[c];                           \\
            if (dy) {                                                               \\
                const T *gp = dy + c * S;                                           \\
                CBP_SIMD for (s = 0; s < S; s++)                                    \\
                    op[s] = ac * gp[s] + bc * (xp[s] - m) + kc;                     \\
            } else {                                                                \\
                CBP_SIMD for (s = 0; s < S; s++) op[s] = ac * (xp[s] - m) + kc;     \\
            }                                                                       \\
        }                                                                           \\
    }

    CBP_DEFINE_SWEEPS(float, f32)
    CBP_DEFINE_SWEEPS(double, f64)
    CBP_DEFINE_RUN_SWEEP(float, f32)
    CBP_DEFINE_RUN_SWEEP(double, f64)
    """
    void cbp_run_sweep_f32(const float* x, const float* dy, float* out, Py_ssize_t nc,
                           Py_ssize_t S, const float* mh, const float* a, const float* b,
                           const float* k) noexcept nogil
    void cbp_run_sweep_f64(const double* x, const double* dy, double* out, Py_ssize_t nc,
                           Py_ssize_t S, const double* mh, const double* a, const double* b,
                           const double* k) noexcept nogil
    void cbp_rows_sweep_f32(const float* x, const float* dy, float* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const float* mh, const float* a,
                            const float* b, const float* k) noexcept nogil
    void cbp_rows_sweep_f64(const double* x, const double* dy, double* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const double* mh, const double* a,
                            const double* b, const double* k) noexcept nogil


cdef enum:
    # elements per task of the short-plane NCHW sweep
    RUN_SWEEP_ELEMS = 16384
    # NHWC sweeps over arrays larger than this (a typical last-level cache)
    # take long rows from four quarters of a unit
    SWEEP_QUARTER_BYTES = 33554432


cdef inline void run_sweep(const floating* x, const floating* dy, floating* out,
                           Py_ssize_t nc, Py_ssize_t S, const floating* coef, Py_ssize_t C,
                           Py_ssize_t c) noexcept nogil:
    if floating is float:
        cbp_run_sweep_f32(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                          coef + 3 * C + c)
    else:
        cbp_run_sweep_f64(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                          coef + 3 * C + c)


cdef inline void rows_sweep(const floating* x, const floating* dy, floating* out,
                            Py_ssize_t nrows, Py_ssize_t st, Py_ssize_t W, Py_ssize_t last_w,
                            bint four, const floating* coef_w) noexcept nogil:
    # nrows rows st apart, each W wide but the last (last_w); coef_w is [4, W];
    # four rows per coefficient load where `four`, else one
    cdef Py_ssize_t i = 0, full = nrows if last_w == W else nrows - 1
    cdef int rows
    cdef const floating* g
    while i < nrows:
        rows = 4 if (four and i + 4 <= full) else 1
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


cdef int nchw_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1,
                    const floating* coef, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) for channel blocks cb0..cb1."""
    cdef Py_ssize_t c0 = cb0 * p.cb, nc = min(C, cb1 * p.cb) - c0, i, n, off, nr, r0, r1
    cdef Py_ssize_t u, cb, g, c1
    if p.cols:
        # Short planes of a column plan (units far apart in memory): tasks are
        # runs of whole planes in memory order, image outer (sweeping a
        # channel block image after image, 4 KiB pieces far apart, measured
        # 1.7x-2.2x slower).
        nr = ceil_div(nc * S, RUN_SWEEP_ELEMS)
        for i in prange(N * nr, schedule='static', num_threads=nthreads):
            r0 = c0 + (i % nr) * nc // nr
            r1 = c0 + (i % nr + 1) * nc // nr
            off = ((i // nr) * C + r0) * S
            run_sweep(x + off, NULL if dy == NULL else dy + off, out + off, r1 - r0, S,
                      coef, C, r0)
        return 0
    # Plane plans: the reduction's units, in the same static schedule, so in
    # the fused passes each thread sweeps the data it has just summed (still
    # in its own caches; sweeping a neighbour's share measured 1.2x slower).
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        cb = u // p.ng
        g = u % p.ng
        r0 = cb * p.cb
        c1 = min(C, r0 + p.cb)
        for n in range(g * N // p.ng, (g + 1) * N // p.ng):
            off = (n * C + r0) * S
            run_sweep(x + off, NULL if dy == NULL else dy + off, out + off, c1 - r0, S,
                      coef, C, r0)
    return 0


cdef void nhwc_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                     Py_ssize_t C, const floating* coef_w, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) over R rows of C channels.

    Rows are fused k at a time (column_widen) and swept in groups of four
    fused rows; coef_w is [4, k * C]."""
    cdef Py_ssize_t k = column_widen(C), W = k * C, nsr = ceil_div(R, k)
    cdef Py_ssize_t i, r0, nr, nu, q, j
    # Four rows per coefficient load where the coefficients outgrow L1
    # (W >= 2048) or the array stays in cache; shorter rows streamed from
    # memory measured faster one at a time.
    cdef bint four = column_quarters(R, C, sizeof(floating))
    if W >= QUARTER_W and R * C * sizeof(floating) > SWEEP_QUARTER_BYTES:
        # Long rows from memory: the four rows of a step come from the four
        # quarters of a unit, as in column_backprop (k == 1 here). Measured
        # 0.88x the time on 256x2048x7x7 NHWC, but 1.13x on 32x2048x7x7,
        # which stays in L3.
        nu = column_units(R)
        for i in prange(nu, schedule='static', num_threads=nthreads):
            r0 = i * R // nu
            nr = (i + 1) * R // nu - r0
            q = nr // 4
            for j in range(r0, r0 + q):
                rows_sweep(x + j * C, NULL if dy == NULL else dy + j * C, out + j * C,
                           4, q * C, C, C, True, coef_w)
            rows_sweep(x + (r0 + 4 * q) * C, NULL if dy == NULL else dy + (r0 + 4 * q) * C,
                       out + (r0 + 4 * q) * C, nr - 4 * q, C, C, C, False, coef_w)
        return
    for i in prange(ceil_div(nsr, 4), schedule='static', num_threads=nthreads):
        r0 = 4 * i * k
        nr = min(4 * k, R - r0)
        rows_sweep(x + r0 * C, NULL if dy == NULL else dy + r0 * C, out + r0 * C,
                   ceil_div(nr, k), W, W, (nr - (ceil_div(nr, k) - 1) * k) * C, four, coef_w)
