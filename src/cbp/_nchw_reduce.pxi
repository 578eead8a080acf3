# NCHW reductions: per-channel sums over (N, S) planes of an (N, C, S) block.
#
# Inside a plane the sums run in the input type over CBP_PLANE_LANES independent
# accumulators for CBP_PLANE_BLOCK elements, then go into float64; across planes
# and units everything is float64. (x - mean) is formed as (x - mean_hi) with
# mean_hi = mean rounded to the input type: for x near the mean that
# subtraction is exact, and the remaining (mean - mean_hi) is applied once per
# channel in float64. This keeps float32 data with |mean| >> std accurate.
# The backprop sums run plane by plane for any S > 1 (SHORT_PLANE_BACKPROP).
# The moments of planes shorter than SHORT_PLANE, where a plane's two passes
# and merge cost too much, go plane by plane about a shift per image block
# (runs_moments_piece) from RUN_PLANE elements, and below that run the
# column kernels of _nhwc_reduce.pxi.


# The plane loops are C: plane_backprop, plane_moments, run_sum and
# run_shifted in csrc/plane_reduce.h.


# A unit is (image group g, channel c, chunk k of its planes): units
# (g * nc + c - c0) * nsc + k of the channels c0..c1 of a cache block. A
# piece is the units va..vz of one image group, summed image after image so
# that each image's run of channels is read contiguously; the sums of a unit
# are the same in any piece. part is [ng * nsc, C, 2], unit (g, c, k) at
# part[g * nsc + k, c].

cdef inline double* unit_out(double* part, Py_ssize_t C, PlanePlan p, Py_ssize_t g,
                             Py_ssize_t c, Py_ssize_t k) noexcept nogil:
    return part + 2 * ((g * p.nsc + k) * C + c)


cdef int nchw_backprop_piece(const floating* x, const floating* dy, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t g,
                             Py_ssize_t c0, Py_ssize_t va, Py_ssize_t vz, const floating* mh,
                             bint checked, double* part) noexcept nogil:
    # per unit (sum dy, sum dy * (x - mean_hi))
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, k, v, off, s0, s1, ca, cz
    cdef double tiny, sdy, sdx, pa, pb
    cdef double* o
    if p.nsc == 1:
        # whole planes: an image's channels ca..cz are one contiguous run
        ca = c0 + va
        cz = c0 + vz
        o = unit_out(part, C, p, g, ca, 0)
        for c in range(2 * (cz - ca)):
            o[c] = 0.0
        for n in range(n0, n1):
            off = (n * C + ca) * S
            if S < SHORT_PLANE:
                run_backprop(x + off, dy + off, S, cz - ca, mh + ca, o)
                continue
            for c in range(ca, cz):
                off = (n * C + c) * S
                plane_backprop(x + off, dy + off, S, mh + c, o + 2 * (c - ca),
                               o + 2 * (c - ca) + 1)
    else:
        for v in range(va, vz):
            o = unit_out(part, C, p, g, c0 + v // p.nsc, v % p.nsc)
            o[0] = 0.0
            o[1] = 0.0
        for n in range(n0, n1):
            for v in range(va, vz):
                c = c0 + v // p.nsc
                k = v % p.nsc
                s0 = chunk_lo(S, p.nsc, k)
                s1 = chunk_lo(S, p.nsc, k + 1)
                off = (n * C + c) * S + s0
                o = unit_out(part, C, p, g, c, k)
                plane_backprop(x + off, dy + off, s1 - s0, mh + c, o, o + 1)
    if floating is float and checked:
        # The float32 range check in a checked re-run (_drivers.pxi), per
        # unit: not finite, or a sum of products below n * TINY (where the
        # float32 products may have lost digits to underflow: each loses at
        # most 2^-150), and the unit is summed again in float64, unless every
        # product was exactly 0 (a dead channel: the sums are exact).
        for v in range(va, vz):
            c = c0 + v // p.nsc
            k = v % p.nsc
            s0 = chunk_lo(S, p.nsc, k)
            s1 = chunk_lo(S, p.nsc, k + 1)
            o = unit_out(part, C, p, g, c, k)
            tiny = <double>((n1 - n0) * (s1 - s0)) * F32_TINY
            sdy = o[0]
            sdx = o[1]
            if isfinite(sdy) and isfinite(sdx) and fabs(sdx) >= tiny:
                continue
            if isfinite(sdy) and sdx == 0 and planes_exact(x, dy, N, C, S, s0, s1, n0, n1, c,
                                                           mh + c):
                continue
            sdy = 0.0
            sdx = 0.0
            for n in range(n0, n1):
                off = (n * C + c) * S + s0
                wide_sums(x + off, dy + off, s1 - s0, 1, <double>mh[c], &pa, &pb)
                sdy = sdy + pa
                sdx = sdx + pb
            o[0] = sdy
            o[1] = sdx
    return 0


cdef bint planes_exact(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t n0,
                       Py_ssize_t n1, Py_ssize_t c, const floating* m) noexcept nogil:
    # whether every product dy * (x - m) of elements s0..s1 of channel c's
    # planes in images n0..n1 is 0 (dy NULL: every x == *m)
    cdef Py_ssize_t n, off
    for n in range(n0, n1):
        off = (n * C + c) * S + s0
        if not wide_exact(x + off, NULL if dy == NULL else dy + off, s1 - s0, m):
            return False
    return True


cdef int runs_moments_piece(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            PlanePlan p, Py_ssize_t g, Py_ssize_t ca, Py_ssize_t cz,
                            bint checked, double* part) noexcept nogil:
    # (mean, M2) of channels ca..cz over image group g, short planes read in
    # memory order, one image's run of channels after another (run_sum,
    # run_shifted). Images go in blocks of 1, 1, 2, 4, ...: as many as came
    # before in the group. The first block (one image) is summed about its
    # own mean in a second pass from cache; every later block in one pass
    # about the running mean rounded to the input type, then merged by
    # Chan. A block's float sums err by about gamma * (M2_b + nb * delta^2),
    # delta its mean's distance from the shift, and the merge adds at least
    # half of nb * delta^2 to the total M2 (no more images in a block than
    # before it), so the error stays below 3 * gamma of the total M2 for any
    # data, gamma that of one plane's lane sums (at most 32 terms a lane).
    # Each channel's sums depend only on its own planes, so any piece split
    # gives the same bits.
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng, nc = cz - ca
    cdef Py_ssize_t n, e, i, c
    cdef double na, nb, wt, v, rn, q, bm, d, pa, pb, cnt, mu
    cdef double* o
    cdef double* w = <double*>malloc(4 * nc * sizeof(double) + nc * sizeof(floating))
    cdef double* sa
    cdef double* sb
    cdef double* mean
    cdef double* m2
    cdef floating* sh
    if w == NULL:
        return -1
    sa = w
    sb = w + nc
    mean = w + 2 * nc
    m2 = w + 3 * nc
    sh = <floating*>(w + 4 * nc)
    for c in range(nc):
        sa[c] = 0.0
        sb[c] = 0.0
    run_sum(x + (n0 * C + ca) * S, S, nc, sa)
    rn = 1.0 / <double>S
    for c in range(nc):
        sh[c] = <floating>(sa[c] * rn)
        sa[c] = 0.0
    run_shifted(x + (n0 * C + ca) * S, S, nc, sh, sa, sb)
    for c in range(nc):
        q = sa[c] * rn
        bm = sb[c] - sa[c] * q
        mean[c] = <double>sh[c] + q
        m2[c] = bm if bm > 0.0 else 0.0
    n = n0 + 1
    while n < n1:
        e = min(n1, n + (n - n0))
        for c in range(nc):
            sh[c] = <floating>mean[c]
            sa[c] = 0.0
            sb[c] = 0.0
        for i in range(n, e):
            run_shifted(x + (i * C + ca) * S, S, nc, sh, sa, sb)
        na = <double>((n - n0) * S)
        nb = <double>((e - n) * S)
        wt = nb / (na + nb)
        v = na * wt
        rn = 1.0 / nb
        for c in range(nc):
            q = sa[c] * rn
            bm = sb[c] - sa[c] * q
            d = (<double>sh[c] + q) - mean[c]
            mean[c] = mean[c] + d * wt
            m2[c] = m2[c] + ((bm if bm > 0.0 else 0.0) + d * d * v)
        n = e
    cnt = <double>((n1 - n0) * S)
    for c in range(nc):
        if floating is float and checked and not column_ok(mean[c], m2[c], cnt):
            # the float32 range check of a checked re-run (_drivers.pxi): a
            # constant channel is exact as it is; the others again in float64
            if planes_exact(x, <const floating*>NULL, N, C, S, 0, S, n0, n1, ca + c,
                            x + (n0 * C + ca + c) * S):
                mean[c] = <double>x[(n0 * C + ca + c) * S]
                m2[c] = 0.0
            else:
                mu = 0.0
                for i in range(n0, n1):
                    wide_sums(x + (i * C + ca + c) * S, <const floating*>NULL, S, 1, 0.0,
                              &pa, &pb)
                    mu = mu + pa
                mu = mu / cnt
                q = 0.0
                bm = 0.0
                for i in range(n0, n1):
                    wide_sums(x + (i * C + ca + c) * S, <const floating*>NULL, S, 1, mu,
                              &pa, &pb)
                    q = q + pa
                    bm = bm + pb
                bm = bm - q * (q / cnt)
                mean[c] = mu + q / cnt
                m2[c] = bm if bm > 0.0 else 0.0
        o = unit_out(part, C, p, g, ca + c, 0)
        o[0] = mean[c]
        o[1] = m2[c]
    free(w)
    return 0


cdef int nchw_moments_piece(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            PlanePlan p, Py_ssize_t g, Py_ssize_t c0, Py_ssize_t va,
                            Py_ssize_t vz, bint checked, double* part) noexcept nogil:
    # per unit (mean, M2); its count is (n1 - n0) times its chunk's length
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, k, v, s, s0, s1, b0, b1, W
    cdef double cnt
    cdef double* o
    cdef double* cs
    if p.runs:
        return runs_moments_piece(x, N, C, S, p, g, c0 + va, c0 + vz, checked, part)
    for v in range(va, vz):
        o = unit_out(part, C, p, g, c0 + v // p.nsc, v % p.nsc)
        o[0] = 0.0
        o[1] = 0.0
    if not p.cols:
        for n in range(n0, n1):
            for v in range(va, vz):
                c = c0 + v // p.nsc
                k = v % p.nsc
                s0 = chunk_lo(S, p.nsc, k)
                s1 = chunk_lo(S, p.nsc, k + 1)
                o = unit_out(part, C, p, g, c, k)
                cnt = <double>((n - n0) * (s1 - s0))
                plane_moments(x + (n * C + c) * S + s0, s1 - s0, &cnt, o, o + 1)
        return 0
    # Short planes (nsc == 1): the columns of the images' runs, merged over s
    # per channel, cb channels at a time (each row a run of about RUN_ELEMS,
    # so the accumulators stay in L1)
    b0 = c0 + va
    while b0 < c0 + vz:
        b1 = min(c0 + vz, b0 + p.cb)
        W = (b1 - b0) * S
        cs = <double*>malloc(2 * W * sizeof(double))
        if cs == NULL:
            return -1
        if column_moments(x + (n0 * C + b0) * S, n1 - n0, C * S, W, W, n1 - n0, 0,
                          p.four, checked, cs) != 0:
            free(cs)
            return -1
        o = unit_out(part, C, p, g, b0, 0)
        for s in range(S):
            merge_into(o, o + 1, 2, cs + s, cs + W + s, S, b1 - b0, <double>(s * (n1 - n0)),
                       <double>(n1 - n0))
        free(cs)
        b0 = b1
    return 0


cdef int nchw_backprop_sums(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t c0,
                            Py_ssize_t c1, const floating* mh, bint checked, double* part,
                            int nthreads) noexcept nogil:
    # the units of channels c0..c1, one share per thread
    cdef Py_ssize_t nv = (c1 - c0) * p.nsc, nu = p.ng * (c1 - c0) * p.nsc, t, lo, hi, g
    cdef int failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = share_lo(nu, nthreads, t)
        hi = share_lo(nu, nthreads, t + 1)
        while lo < hi:
            g = lo // nv
            if nchw_backprop_piece(x, dy, N, C, S, p, g, c0, lo - g * nv,
                                   min(hi, (g + 1) * nv) - g * nv, mh, checked, part) != 0:
                failed += 1
            lo = min(hi, (g + 1) * nv)
    return -1 if failed else 0


cdef int nchw_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      PlanePlan p, Py_ssize_t c0, Py_ssize_t c1, bint checked,
                      double* part, int nthreads) noexcept nogil:
    cdef Py_ssize_t nv = (c1 - c0) * p.nsc, nu = p.ng * (c1 - c0) * p.nsc, t, lo, hi, g
    cdef int failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        lo = share_lo(nu, nthreads, t)
        hi = share_lo(nu, nthreads, t + 1)
        while lo < hi:
            g = lo // nv
            if nchw_moments_piece(x, N, C, S, p, g, c0, lo - g * nv,
                                  min(hi, (g + 1) * nv) - g * nv, checked, part) != 0:
                failed += 1
            lo = min(hi, (g + 1) * nv)
    return -1 if failed else 0
