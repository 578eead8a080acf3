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
# Outputs larger than a last-level cache are written with non-temporal
# (streaming) stores, whole aligned 64-byte lines at a time: the core then
# does not first read each output line from memory (read for ownership), and
# the output does not push the inputs out of the caches. Same arithmetic, so
# the same bits as with plain stores.

# The sweep loops are C: rows_sweep, run_sweep and their streaming-store
# twins in csrc/sweep.h; the size thresholds are in csrc/cbp_tuning.h.


cdef inline void sweep_planes(const floating* x, const floating* dy, floating* out,
                              Py_ssize_t nc, Py_ssize_t S, const floating* coef, Py_ssize_t C,
                              Py_ssize_t c, bint nt, const double* wcoef,
                              const char* wflag) noexcept nogil:
    # nc planes of channels c.. from coef's four rows; streaming stores where
    # `nt`. With wflag, the channels it flags are swept from the float64 wcoef
    # (csrc/wide.h), one plane at a time.
    cdef Py_ssize_t i, j
    if wflag != NULL:
        i = 0
        while i < nc:
            j = i + 1
            while j < nc and wflag[c + j] == wflag[c + i]:
                j = j + 1
            if wflag[c + i]:
                wide_run_sweep(x + i * S, NULL if dy == NULL else dy + i * S, out + i * S,
                               j - i, S, wcoef + c + i, wcoef + C + c + i,
                               wcoef + 2 * C + c + i, wcoef + 3 * C + c + i)
            else:
                sweep_planes_t(x + i * S, NULL if dy == NULL else dy + i * S, out + i * S,
                               j - i, S, coef, C, c + i, nt)
            i = j
    else:
        sweep_planes_t(x, dy, out, nc, S, coef, C, c, nt)


cdef inline void sweep_planes_t(const floating* x, const floating* dy, floating* out,
                                Py_ssize_t nc, Py_ssize_t S, const floating* coef,
                                Py_ssize_t C, Py_ssize_t c, bint nt) noexcept nogil:
    # sweep_planes in the input type
    if nt:
        run_sweep_nt(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                     coef + 3 * C + c)
    else:
        run_sweep(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                  coef + 3 * C + c)


cdef inline void sweep_rows(const floating* x, const floating* dy, floating* out,
                            Py_ssize_t nrows, Py_ssize_t st, Py_ssize_t W, Py_ssize_t last_w,
                            bint four, const floating* coef_w, bint nt,
                            const double* wcoef_w) noexcept nogil:
    # nrows rows st apart, each W wide but the last (last_w); coef_w is [4, W];
    # four rows per coefficient load where `four`, else one; streaming stores
    # where `nt`. With wcoef_w ([4, W] float64), every row is swept from it
    # instead (csrc/wide.h).
    cdef Py_ssize_t i = 0, m, full = nrows if last_w == W else nrows - 1
    cdef int rows
    cdef const floating* g
    cdef const floating* a = coef_w + W
    cdef const floating* b = coef_w + 2 * W
    cdef const floating* k = coef_w + 3 * W
    if wcoef_w != NULL:
        while i < nrows:
            wide_rows_sweep(x + i * st, NULL if dy == NULL else dy + i * st, out + i * st,
                            W if i < full else last_w, wcoef_w, wcoef_w + W, wcoef_w + 2 * W,
                            wcoef_w + 3 * W)
            i = i + 1
        return
    while i < nrows:
        rows = 4 if (four and i + 4 <= full) else 1
        g = NULL if dy == NULL else dy + i * st
        m = W if i < full else last_w
        if nt:
            rows_sweep_nt(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
        else:
            rows_sweep(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
        i = i + rows


cdef int nchw_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1,
                    const floating* coef, const double* wcoef, const char* wflag,
                    int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) for channel blocks cb0..cb1.

    wflag (or NULL): the channels swept from the float64 wcoef instead."""
    cdef Py_ssize_t c0 = cb0 * p.cb, nc = min(C, cb1 * p.cb) - c0, i, n, off, nr, r0, r1
    cdef Py_ssize_t u, cb, g, c1
    cdef bint nt = nchw_streams(N, C, S, sizeof(floating))
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
            sweep_planes(x + off, NULL if dy == NULL else dy + off, out + off, r1 - r0, S,
                      coef, C, r0, nt, wcoef, wflag)
            if nt:
                store_fence()
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
            sweep_planes(x + off, NULL if dy == NULL else dy + off, out + off, c1 - r0, S,
                      coef, C, r0, nt, wcoef, wflag)
        if nt:
            store_fence()
    return 0


cdef void nhwc_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                     Py_ssize_t C, const floating* coef_w, const double* wcoef_w,
                     int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) over R rows of C channels.

    Rows are fused k at a time (column_widen) and swept in groups of four
    fused rows; coef_w is [4, k * C]. With wcoef_w ([4, k * C] float64, or
    NULL), every row is swept from it (csrc/wide.h)."""
    cdef Py_ssize_t k = column_widen(C), W = k * C, nsr = ceil_div(R, k)
    cdef Py_ssize_t i, r0, r1, nr, nu, ng, q, j
    # Four rows per coefficient load where the coefficients outgrow L1
    # (W >= 2048) or the array stays in cache; shorter rows streamed from
    # memory measured faster one at a time.
    cdef bint four = column_quarters(R, C, sizeof(floating))
    cdef bint nt = rows_streams(R, C, sizeof(floating))
    if rows_sweep_quartered(R, C, sizeof(floating)):
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
                sweep_rows(x + j * C, NULL if dy == NULL else dy + j * C, out + j * C,
                           4, q * C, C, C, True, coef_w, nt, wcoef_w)
            sweep_rows(x + (r0 + 4 * q) * C, NULL if dy == NULL else dy + (r0 + 4 * q) * C,
                       out + (r0 + 4 * q) * C, nr - 4 * q, C, C, C, False, coef_w, nt,
                       wcoef_w)
            if nt:
                store_fence()
        return
    # Units of whole groups of four fused rows (one store fence per unit with
    # streaming stores); only the last fused row of the last unit can be short.
    ng = ceil_div(nsr, 4)
    nu = max(1, min(ng, MIN_UNITS))
    for i in prange(nu, schedule='static', num_threads=nthreads):
        r0 = 4 * k * (i * ng // nu)
        r1 = min(R, 4 * k * ((i + 1) * ng // nu))
        nr = ceil_div(r1 - r0, k)
        sweep_rows(x + r0 * C, NULL if dy == NULL else dy + r0 * C, out + r0 * C, nr, W, W,
                   (r1 - r0 - (nr - 1) * k) * C, four, coef_w, nt, wcoef_w)
        if nt:
            store_fence()
