# NCHW reductions: per-channel sums over (N, S) planes of an (N, C, S) block.
#
# Inside a plane the sums run in the input type over CBP_PLANE_LANES independent
# accumulators for CBP_PLANE_BLOCK elements, then go into float64; across planes
# and units everything is float64. (x - mean) is formed as (x - mean_hi) with
# mean_hi = mean rounded to the input type: for x near the mean that
# subtraction is exact, and the remaining (mean - mean_hi) is applied once per
# channel in float64. This keeps float32 data with |mean| >> std accurate.
# The backprop sums run plane by plane for any S > 1 (SHORT_PLANE_BACKPROP);
# the moments of planes shorter than SHORT_PLANE run the column kernels of
# _nhwc_reduce.pxi, since a plane's two passes and merge cost too much there.


# The plane loops are C: plane_backprop and plane_moments in
# csrc/plane_reduce.h.


# A unit is (image group g, channel c): units g * nc + (c - c0) of the
# channels c0..c1 of a cache block. A piece is the units of one image group
# and a run of channels ca..cz, summed image after image so that each image's
# run of channels is read contiguously; the sums of a unit are the same in
# any piece.

cdef int nchw_backprop_piece(const floating* x, const floating* dy, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t g,
                             Py_ssize_t ca, Py_ssize_t cz, const floating* mh, bint checked,
                             double* part) noexcept nogil:
    # part is [ng, C, 2]: (sum dy, sum dy * (x - mean_hi)) of image group g.
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, off
    cdef double tiny, sdy, sdx, pa, pb
    cdef double* out = part + 2 * (g * C + ca)
    # plane by plane for every S > 1 (the plan never takes columns here)
    for c in range(2 * (cz - ca)):
        out[c] = 0.0
    for n in range(n0, n1):
        for c in range(ca, cz):
            off = (n * C + c) * S
            plane_backprop(x + off, dy + off, S, mh + c,
                           out + 2 * (c - ca), out + 2 * (c - ca) + 1)
    if floating is float and checked:
        # The float32 range check in a checked re-run (_drivers.pxi), per
        # unit: not finite, or a sum of products below n * TINY (where the
        # float32 products may have lost digits to underflow: each loses at
        # most 2^-150), and the unit is summed again in float64, unless every
        # product was exactly 0 (a dead channel: the sums are exact).
        tiny = <double>((n1 - n0) * S) * F32_TINY
        if not any_bad(out, out + 1, 2, cz - ca, tiny):
            return 0
        for c in range(ca, cz):
            sdy = out[2 * (c - ca)]
            sdx = out[2 * (c - ca) + 1]
            if isfinite(sdy) and isfinite(sdx) and fabs(sdx) >= tiny:
                continue
            if isfinite(sdy) and sdx == 0 and planes_exact(x, dy, N, C, S, n0, n1, c, mh + c):
                continue
            sdy = 0.0
            sdx = 0.0
            for n in range(n0, n1):
                off = (n * C + c) * S
                wide_sums(x + off, dy + off, S, 1, <double>mh[c], &pa, &pb)
                sdy = sdy + pa
                sdx = sdx + pb
            out[2 * (c - ca)] = sdy
            out[2 * (c - ca) + 1] = sdx
    return 0


cdef bint planes_exact(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t c,
                       const floating* m) noexcept nogil:
    # whether every product dy * (x - m) of channel c in images n0..n1 is 0
    # (dy NULL: every x == *m)
    cdef Py_ssize_t n, off
    for n in range(n0, n1):
        off = (n * C + c) * S
        if not wide_exact(x + off, NULL if dy == NULL else dy + off, S, m):
            return False
    return True


cdef int nchw_moments_piece(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            PlanePlan p, Py_ssize_t g, Py_ssize_t ca, Py_ssize_t cz,
                            bint checked, double* part) noexcept nogil:
    # part is [ng, C, 2]: (mean, M2) of image group g; its count is (n1 - n0) * S.
    cdef Py_ssize_t W = (cz - ca) * S
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, s
    cdef double cnt
    cdef double* out = part + 2 * (g * C + ca)
    cdef double* cs
    for c in range(2 * (cz - ca)):
        out[c] = 0.0
    if not p.cols:
        for n in range(n0, n1):
            for c in range(ca, cz):
                cnt = <double>((n - n0) * S)
                plane_moments(x + (n * C + c) * S, S, &cnt,
                              out + 2 * (c - ca), out + 2 * (c - ca) + 1)
        return 0
    # short planes: the columns of the images' runs, merged over s per channel
    cs = <double*>malloc(2 * W * sizeof(double))
    if cs == NULL:
        return -1
    if column_moments(x + (n0 * C + ca) * S, n1 - n0, C * S, W, W, n1 - n0, False, p.four,
                      checked, cs) != 0:
        free(cs)
        return -1
    for s in range(S):
        merge_into(out, out + 1, 2, cs + s, cs + W + s, S, cz - ca, <double>(s * (n1 - n0)),
                   <double>(n1 - n0))
    free(cs)
    return 0


cdef int nchw_backprop_sums(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t c0,
                            Py_ssize_t c1, const floating* mh, bint checked, double* part,
                            int nthreads) noexcept nogil:
    # the units of channels c0..c1, one share per thread
    cdef Py_ssize_t nc = c1 - c0, nu = p.ng * (c1 - c0), t, lo, hi, g
    cdef int failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = share_lo(nu, nthreads, t)
        hi = share_lo(nu, nthreads, t + 1)
        while lo < hi:
            g = lo // nc
            if nchw_backprop_piece(x, dy, N, C, S, p, g, c0 + lo - g * nc,
                                   c0 + min(hi, (g + 1) * nc) - g * nc, mh, checked,
                                   part) != 0:
                failed += 1
            lo = min(hi, (g + 1) * nc)
    return -1 if failed else 0


cdef int nchw_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      PlanePlan p, Py_ssize_t c0, Py_ssize_t c1, bint checked,
                      double* part, int nthreads) noexcept nogil:
    cdef Py_ssize_t nc = c1 - c0, nu = p.ng * (c1 - c0), t, lo, hi, g
    cdef int failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = share_lo(nu, nthreads, t)
        hi = share_lo(nu, nthreads, t + 1)
        while lo < hi:
            g = lo // nc
            if nchw_moments_piece(x, N, C, S, p, g, c0 + lo - g * nc,
                                  c0 + min(hi, (g + 1) * nc) - g * nc, checked, part) != 0:
                failed += 1
            lo = min(hi, (g + 1) * nc)
    return -1 if failed else 0
