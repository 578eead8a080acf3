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


cdef int nchw_backprop_unit(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t u,
                            const floating* mh, bint checked, double* part) noexcept nogil:
    # part is [ng, C, 2]: (sum dy, sum dy * (x - mean_hi)) of image group g.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb)
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, off
    cdef double tiny, sdy, sdx, pa, pb
    cdef double* out = part + 2 * (g * C + c0)
    # plane by plane for every S > 1 (the plan never takes columns here), each
    # image's channel block one contiguous run
    for c in range(2 * (c1 - c0)):
        out[c] = 0.0
    for n in range(n0, n1):
        for c in range(c0, c1):
            off = (n * C + c) * S
            plane_backprop(x + off, dy + off, S, mh + c,
                           out + 2 * (c - c0), out + 2 * (c - c0) + 1)
    if floating is float and checked:
        # The float32 range check in a checked re-run (_drivers.pxi), per
        # channel of the unit: not finite, or a sum of products below n * TINY
        # (where the float32 products may have lost digits to underflow: each
        # loses at most 2^-150), and the channel's planes of this unit are
        # summed again in float64, unless every product was exactly 0 (a dead
        # channel: the sums are exact).
        tiny = <double>((n1 - n0) * S) * F32_TINY
        if not any_bad(out, out + 1, 2, c1 - c0, tiny):
            return 0
        for c in range(c0, c1):
            sdy = out[2 * (c - c0)]
            sdx = out[2 * (c - c0) + 1]
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
            out[2 * (c - c0)] = sdy
            out[2 * (c - c0) + 1] = sdx
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


cdef int nchw_moments_unit(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                           PlanePlan p, Py_ssize_t u, bint checked,
                           double* part) noexcept nogil:
    # part is [ng, C, 2]: (mean, M2) of image group g; its count is (n1 - n0) * S.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb), W = (c1 - c0) * S
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, s
    cdef double cnt
    cdef double* out = part + 2 * (g * C + c0)
    cdef double* cs
    for c in range(2 * (c1 - c0)):
        out[c] = 0.0
    if S >= SHORT_PLANE:
        # Images outer, channels inner: a channel block is one contiguous run per image.
        for n in range(n0, n1):
            for c in range(c0, c1):
                cnt = <double>((n - n0) * S)
                plane_moments(x + (n * C + c) * S, S, &cnt,
                              out + 2 * (c - c0), out + 2 * (c - c0) + 1)
        return 0
    cs = <double*>malloc(2 * W * sizeof(double))
    if cs == NULL:
        return -1
    if column_moments(x + (n0 * C + c0) * S, n1 - n0, C * S, W, W, False, checked, cs) != 0:
        free(cs)
        return -1
    for s in range(S):
        merge_into(out, out + 1, 2, cs + s, cs + W + s, S, c1 - c0, <double>(s * (n1 - n0)),
                   <double>(n1 - n0))
    free(cs)
    return 0


cdef int nchw_backprop_sums(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0,
                            Py_ssize_t cb1, const floating* mh, bint checked, double* part,
                            int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    cdef int failed = 0
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        if nchw_backprop_unit(x, dy, N, C, S, p, u, mh, checked, part) != 0:
            failed += 1
    return -1 if failed else 0


cdef int nchw_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1, bint checked,
                      double* part, int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    cdef int failed = 0
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        if nchw_moments_unit(x, N, C, S, p, u, checked, part) != 0:
            failed += 1
    return -1 if failed else 0
