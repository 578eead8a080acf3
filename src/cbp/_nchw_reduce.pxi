# NCHW reductions: per-channel sums over (N, S) planes of an (N, C, S) block.
#
# Inside a plane the sums run in the input type over LANES independent
# accumulators for PLANE_BLOCK elements, then go into float64; across planes
# and units everything is float64. (x - mean) is formed as (x - mean_hi) with
# mean_hi = mean rounded to the input type: for x near the mean that
# subtraction is exact, and the remaining (mean - mean_hi) is applied once per
# channel in float64. This keeps float32 data with |mean| >> std accurate.


cdef inline void plane_backprop_sums(const floating* x, const floating* dy, Py_ssize_t S,
                                     floating mh, double* sum_dy,
                                     double* sum_dyxc) noexcept nogil:
    cdef floating ady[LANES]
    cdef floating adx[LANES]
    cdef Py_ssize_t s = 0, end, j
    cdef double tdy = 0.0, tdx = 0.0
    while s < S:
        end = min(S, s + PLANE_BLOCK)
        for j in range(LANES):
            ady[j] = 0
            adx[j] = 0
        while s + LANES <= end:
            for j in range(LANES):
                ady[j] = ady[j] + dy[s + j]
                adx[j] = adx[j] + dy[s + j] * (x[s + j] - mh)
            s = s + LANES
        j = 0
        while s < end:
            ady[j] = ady[j] + dy[s]
            adx[j] = adx[j] + dy[s] * (x[s] - mh)
            s = s + 1
            j = j + 1
        for j in range(LANES):
            tdy = tdy + ady[j]
            tdx = tdx + adx[j]
    sum_dy[0] = sum_dy[0] + tdy
    sum_dyxc[0] = sum_dyxc[0] + tdx


cdef inline void plane_moments(const floating* x, Py_ssize_t S, double* count,
                               double* mean, double* m2) noexcept nogil:
    # Corrected two-pass moments per PLANE_BLOCK (the block is in L1 for the
    # second pass), merged into the running triple with Chan's formula.
    cdef floating a[LANES]
    cdef floating b[LANES]
    cdef Py_ssize_t s0 = 0, s, end, j
    cdef double nb, tot, s1, s2
    cdef floating bh, d
    while s0 < S:
        end = min(S, s0 + PLANE_BLOCK)
        nb = <double>(end - s0)
        for j in range(LANES):
            a[j] = 0
        s = s0
        while s + LANES <= end:
            for j in range(LANES):
                a[j] = a[j] + x[s + j]
            s = s + LANES
        j = 0
        while s < end:
            a[j] = a[j] + x[s]
            s = s + 1
            j = j + 1
        tot = 0.0
        for j in range(LANES):
            tot = tot + a[j]
        bh = <floating>(tot / nb)
        for j in range(LANES):
            a[j] = 0
            b[j] = 0
        s = s0
        while s + LANES <= end:
            for j in range(LANES):
                d = x[s + j] - bh
                a[j] = a[j] + d
                b[j] = b[j] + d * d
            s = s + LANES
        j = 0
        while s < end:
            d = x[s] - bh
            a[j] = a[j] + d
            b[j] = b[j] + d * d
            s = s + 1
            j = j + 1
        s1 = 0.0
        s2 = 0.0
        for j in range(LANES):
            s1 = s1 + a[j]
            s2 = s2 + b[j]
        chan_merge(count, mean, m2, nb, <double>bh + s1 / nb, max(0.0, s2 - s1 * (s1 / nb)))
        s0 = end


cdef void nchw_backprop_unit(const floating* x, const floating* dy, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t u,
                             const floating* mh, double* part) noexcept nogil:
    # part is [ng, C, 2]: (sum dy, sum dy * (x - mean_hi)) of image group g.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb)
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, off
    cdef double* out = part + 2 * (g * C + c0)
    for c in range(2 * (c1 - c0)):
        out[c] = 0.0
    for n in range(n0, n1):
        for c in range(c0, c1):
            off = (n * C + c) * S
            plane_backprop_sums(x + off, dy + off, S, mh[c],
                                out + 2 * (c - c0), out + 2 * (c - c0) + 1)


cdef void nchw_moments_unit(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            PlanePlan p, Py_ssize_t u, double* part) noexcept nogil:
    # part is [ng, C, 2]: (mean, M2) of image group g; its count is (n1 - n0) * S.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb)
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c
    cdef double cnt
    cdef double* out = part + 2 * (g * C + c0)
    for c in range(2 * (c1 - c0)):
        out[c] = 0.0
    # Images outer, channels inner: a channel block is one contiguous run per image.
    for n in range(n0, n1):
        for c in range(c0, c1):
            cnt = <double>((n - n0) * S)
            plane_moments(x + (n * C + c) * S, S, &cnt,
                          out + 2 * (c - c0), out + 2 * (c - c0) + 1)

cdef void nchw_backprop_sums(const floating* x, const floating* dy, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0,
                             Py_ssize_t cb1, const floating* mh, double* part,
                             int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        nchw_backprop_unit(x, dy, N, C, S, p, u, mh, part)


cdef void nchw_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                       PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1, double* part,
                       int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        nchw_moments_unit(x, N, C, S, p, u, part)
