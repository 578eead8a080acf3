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


cdef inline void sweep_row_piece(const floating* x, const floating* dy, floating* out,
                                 int rows, Py_ssize_t st, Py_ssize_t m, const floating* coef_w,
                                 Py_ssize_t W, Py_ssize_t j, bint nt,
                                 const double* wcoef_w) noexcept nogil:
    # `rows` (1 or 4) rows st apart, m elements from column j of coefficient
    # rows W apart (coef_w [4, W]); streaming stores where `nt`. With wcoef_w
    # ([4, W] float64), the rows are swept from it instead, one at a time
    # (csrc/wide.h).
    cdef int r
    if wcoef_w != NULL:
        for r in range(rows):
            wide_rows_sweep(x + r * st, NULL if dy == NULL else dy + r * st, out + r * st, m,
                            wcoef_w + j, wcoef_w + W + j, wcoef_w + 2 * W + j,
                            wcoef_w + 3 * W + j)
    elif nt:
        rows_sweep_nt(x, dy, out, rows, st, m, coef_w + j, coef_w + W + j, coef_w + 2 * W + j,
                      coef_w + 3 * W + j)
    else:
        rows_sweep(x, dy, out, rows, st, m, coef_w + j, coef_w + W + j, coef_w + 2 * W + j,
                   coef_w + 3 * W + j)


cdef void sweep_rows_span(const floating* x, const floating* dy, floating* out,
                          Py_ssize_t e0, Py_ssize_t e1, Py_ssize_t W, bint four,
                          bint quartered, const floating* coef_w, bint nt,
                          const double* wcoef_w) noexcept nogil:
    # elements e0..e1 of rows W wide: the end of a first row, whole rows, the
    # start of a last one. Whole rows go four per coefficient load where
    # `four`; with `quartered`, the four come from the four quarters of the
    # span's whole rows (long rows from memory: four sequential streams).
    # coefficient rows are cs apart (coef_stride, tile_coef)
    cdef Py_ssize_t r = e0 // W, j = e0 - (e0 // W) * W, m, nf, q, i
    cdef Py_ssize_t cs = coef_stride(W)
    cdef int rows
    if nt and wcoef_w == NULL and not four and not quartered:
        # one row at a time: the span is contiguous, and the lines that
        # straddle two rows are streamed too
        flat_sweep_nt(x + e0, NULL if dy == NULL else dy + e0, out + e0, e1 - e0, W, j,
                      coef_w, coef_w + cs, coef_w + 2 * cs, coef_w + 3 * cs)
        return
    if j > 0:
        m = min(W - j, e1 - e0)
        sweep_row_piece(x + e0, NULL if dy == NULL else dy + e0, out + e0, 1, W, m, coef_w, cs,
                        j, nt, wcoef_w)
        e0 = e0 + m
    nf = (e1 - e0) // W
    if quartered:
        q = nf // 4
        for i in range(q):
            sweep_row_piece(x + e0 + i * W, NULL if dy == NULL else dy + e0 + i * W,
                            out + e0 + i * W, 4, q * W, W, coef_w, cs, 0, nt, wcoef_w)
        i = 4 * q
    else:
        i = 0
    while i < nf:
        rows = 4 if (four and not quartered and i + 4 <= nf) else 1
        sweep_row_piece(x + e0 + i * W, NULL if dy == NULL else dy + e0 + i * W,
                        out + e0 + i * W, rows, W, W, coef_w, cs, 0, nt, wcoef_w)
        i = i + rows
    e0 = e0 + nf * W
    if e0 < e1:
        sweep_row_piece(x + e0, NULL if dy == NULL else dy + e0, out + e0, 1, W, e1 - e0,
                        coef_w, cs, 0, nt, wcoef_w)


cdef void sweep_planes_span(const floating* x, const floating* dy, floating* out,
                            Py_ssize_t e0, Py_ssize_t e1, Py_ssize_t C, Py_ssize_t S,
                            const floating* coef, bint nt, const double* wcoef,
                            const char* wflag) noexcept nogil:
    # elements e0..e1 of an (N, C, S) block: the end of a first plane, runs of
    # whole planes of one image, the start of a last plane
    cdef Py_ssize_t pl, s0, c, m
    while e0 < e1:
        pl = e0 // S
        s0 = e0 - pl * S
        c = pl % C
        if s0 > 0 or e1 - e0 < S:
            m = min(S - s0, e1 - e0)
            sweep_planes(x + e0, NULL if dy == NULL else dy + e0, out + e0, 1, m, coef, C, c,
                         nt, wcoef, wflag)
        else:
            m = min(C - c, (e1 - e0) // S) * S
            sweep_planes(x + e0, NULL if dy == NULL else dy + e0, out + e0, m // S, S, coef,
                         C, c, nt, wcoef, wflag)
        e0 = e0 + m


cdef int nchw_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t c0, Py_ssize_t c1,
                    bint units, const floating* coef, const double* wcoef, const char* wflag,
                    int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) for channels c0..c1.

    With `units`, each thread sweeps the pieces of its share of the plane
    plan's units, the data it has just summed in a fused pass (still in its
    own caches; sweeping a neighbour's share measured 1.2x slower). Else the
    whole block (c0 = 0, c1 = C) in memory order, shares of SWEEP_UNIT_ELEMS
    runs. wflag (or NULL): the channels swept from the float64 wcoef instead."""
    cdef Py_ssize_t nc = c1 - c0, nu, nv, t, lo, hi, g, va, vz, v, c, s0, n, off, total
    cdef bint nt = nchw_streams(N, C, S, sizeof(floating))
    if not units:
        total = N * C * S
        nu = ceil_div(total, SWEEP_UNIT_ELEMS)
        for t in prange(nthreads, schedule='static', num_threads=nthreads):
            lo = min(total, share_lo(nu, nthreads, t) * SWEEP_UNIT_ELEMS)
            hi = min(total, share_lo(nu, nthreads, t + 1) * SWEEP_UNIT_ELEMS)
            sweep_planes_span(x, dy, out, lo, hi, C, S, coef, nt, wcoef, wflag)
            if nt:
                store_fence()
        return 0
    nv = nc * p.nsc
    nu = p.ng * nv
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = share_lo(nu, nthreads, t)
        hi = share_lo(nu, nthreads, t + 1)
        while lo < hi:
            g = lo // nv
            va = lo - g * nv
            vz = min(hi, (g + 1) * nv) - g * nv
            for n in range(g * N // p.ng, (g + 1) * N // p.ng):
                if p.nsc == 1:
                    off = (n * C + c0 + va) * S
                    sweep_planes(x + off, NULL if dy == NULL else dy + off, out + off, vz - va,
                                 S, coef, C, c0 + va, nt, wcoef, wflag)
                    continue
                for v in range(va, vz):
                    c = c0 + v // p.nsc
                    s0 = chunk_lo(S, p.nsc, v % p.nsc)
                    off = (n * C + c) * S + s0
                    sweep_planes(x + off, NULL if dy == NULL else dy + off, out + off, 1,
                                 chunk_lo(S, p.nsc, v % p.nsc + 1) - s0, coef, C, c, nt,
                                 wcoef, wflag)
            lo = min(hi, (g + 1) * nv)
        if nt:
            store_fence()
    return 0


cdef void nhwc_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                     Py_ssize_t C, const floating* coef_w, const double* wcoef_w,
                     int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) over R rows of C channels.

    Rows are fused k at a time (sweep_widen); coef_w is [4, coef_stride(k * C)]. Threads
    take shares of SWEEP_UNIT_ELEMS runs in memory order. With wcoef_w
    ([4, coef_stride(k * C)] float64, or NULL), every row is swept from it (csrc/wide.h)."""
    cdef Py_ssize_t W = sweep_widen(R, C, sizeof(floating)) * C, total = R * C
    cdef Py_ssize_t nu = ceil_div(R * C, SWEEP_UNIT_ELEMS), t, lo, hi
    # Four rows per coefficient load where the coefficients outgrow L1
    # (W >= 2048) or the array stays in cache (for dX only on rows shorter
    # than SWEEP_FOUR_W, rows_sweep_four); shorter rows streamed from
    # memory measured faster one at a time. Rows of 4 KiB or more take the
    # four rows of a step from the four quarters of a share, as in
    # column_backprop (rows_sweep_quartered): for dX from shares of more than
    # QUARTER_BYTES, for the affine map from beyond the last-level cache.
    cdef bint four = rows_sweep_four(R, C, sizeof(floating), dy != NULL)
    cdef bint quartered = rows_sweep_quartered(R, C, sizeof(floating), dy != NULL,
                                                nthreads)
    cdef bint nt = rows_streams(R, C, sizeof(floating))
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = min(total, share_lo(nu, nthreads, t) * SWEEP_UNIT_ELEMS)
        hi = min(total, share_lo(nu, nthreads, t + 1) * SWEEP_UNIT_ELEMS)
        sweep_rows_span(x, dy, out, lo, hi, W, four, quartered, coef_w, nt, wcoef_w)
        if nt:
            store_fence()
