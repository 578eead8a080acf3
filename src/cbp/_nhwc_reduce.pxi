# NHWC reductions: per-channel sums over the rows of an (R, C) block, where a
# row holds all C channels of one pixel (NHWC, or NCHW with no spatial axes).
#
# The inner loop runs along a row, one accumulator per element, so it
# vectorizes across channels with no reassociation. For small C, k = WIDEN / C
# consecutive rows are fused into one row of width W = k * C and the k partial
# sums of a channel are folded at every flush. Accumulators are in the input
# type for at most ROW_FLUSH fused rows, then go into float64.


cdef int nhwc_backprop_unit(const floating* x, const floating* dy, Py_ssize_t R,
                            Py_ssize_t C, Py_ssize_t k, Py_ssize_t r0, Py_ssize_t r1,
                            const floating* mh_w, double* out) noexcept nogil:
    # out is [C, 2]: (sum dy, sum dy * (x - mean_hi)) over rows r0..r1.
    cdef Py_ssize_t W = k * C, r, t, j, m, i, c
    cdef floating* acc = <floating*>malloc(2 * W * sizeof(floating))
    cdef floating* ady
    cdef floating* adx
    cdef const floating* xp
    cdef const floating* gp
    if acc == NULL:
        return -1
    ady = acc
    adx = acc + W
    for c in range(2 * C):
        out[c] = 0.0
    r = r0
    while r < r1:
        for j in range(2 * W):
            acc[j] = 0
        t = 0
        while t < ROW_FLUSH and r < r1:
            m = min(k, r1 - r) * C
            xp = x + r * C
            gp = dy + r * C
            for j in range(m):
                ady[j] = ady[j] + gp[j]
                adx[j] = adx[j] + gp[j] * (xp[j] - mh_w[j])
            r = r + min(k, r1 - r)
            t = t + 1
        for i in range(k):
            for c in range(C):
                out[2 * c] = out[2 * c] + ady[i * C + c]
                out[2 * c + 1] = out[2 * c + 1] + adx[i * C + c]
    free(acc)
    return 0


cdef inline void _merge_column(double cnt, double* mv, double nb, double mean_b,
                               double m2_b) noexcept nogil:
    cdef double n = cnt
    chan_merge(&n, mv, mv + 1, nb, mean_b, m2_b)



cdef int nhwc_moments_unit(const floating* x, Py_ssize_t R, Py_ssize_t C, Py_ssize_t k,
                           Py_ssize_t r0, Py_ssize_t r1, double* out) noexcept nogil:
    # out is [C, 2]: (mean, M2) over rows r0..r1 (count r1 - r0). Corrected
    # two-pass moments per block of ROW_FLUSH fused rows (the block stays in
    # L2 for the second pass), merged with Chan's formula.
    cdef Py_ssize_t W = k * C, r, rb, t, j, m, i, c
    cdef floating* buf = <floating*>malloc(3 * W * sizeof(floating))
    cdef double* cs = <double*>malloc(2 * C * sizeof(double))
    cdef floating* a
    cdef floating* b
    cdef floating* bh_w
    cdef const floating* xp
    cdef double nb, cnt = 0.0, s1, s2
    cdef floating d
    if buf == NULL or cs == NULL:
        free(buf)
        free(cs)
        return -1
    a = buf
    b = buf + W
    bh_w = buf + 2 * W
    for c in range(2 * C):
        out[c] = 0.0
    r = r0
    while r < r1:
        # pass 1: block sums, giving a shift close to the block mean
        for j in range(W):
            a[j] = 0
        rb = r
        t = 0
        while t < ROW_FLUSH and rb < r1:
            m = min(k, r1 - rb) * C
            xp = x + rb * C
            for j in range(m):
                a[j] = a[j] + xp[j]
            rb = rb + min(k, r1 - rb)
            t = t + 1
        nb = <double>(rb - r)
        for c in range(C):
            cs[c] = 0.0
        for i in range(k):
            for c in range(C):
                cs[c] = cs[c] + a[i * C + c]
        for i in range(k):
            for c in range(C):
                bh_w[i * C + c] = <floating>(cs[c] / nb)
        # pass 2: shifted sums of the same (cached) block
        for j in range(W):
            a[j] = 0
            b[j] = 0
        rb = r
        while rb < r + <Py_ssize_t>nb:
            m = min(k, r1 - rb) * C
            xp = x + rb * C
            for j in range(m):
                d = xp[j] - bh_w[j]
                a[j] = a[j] + d
                b[j] = b[j] + d * d
            rb = rb + min(k, r1 - rb)
        for c in range(C):
            cs[c] = 0.0
            cs[C + c] = 0.0
        for i in range(k):
            for c in range(C):
                cs[c] = cs[c] + a[i * C + c]
                cs[C + c] = cs[C + c] + b[i * C + c]
        for c in range(C):
            s1 = cs[c]
            s2 = cs[C + c]
            _merge_column(cnt, out + 2 * c, nb, <double>bh_w[c] + s1 / nb,
                          max(0.0, s2 - s1 * (s1 / nb)))
        cnt = cnt + nb
        r = rb
    free(buf)
    free(cs)
    return 0


cdef int nhwc_backprop_sums(const floating* x, const floating* dy, Py_ssize_t R,
                            Py_ssize_t C, const floating* mh_w, double* part,
                            int nthreads) noexcept nogil:
    # part is [units, C, 2]
    cdef Py_ssize_t nu = column_units(R), k = column_widen(C), u
    cdef int failed = 0
    for u in prange(nu, schedule='static', num_threads=nthreads):
        if nhwc_backprop_unit(x, dy, R, C, k, u * R // nu, (u + 1) * R // nu,
                              mh_w, part + 2 * u * C) != 0:
            failed += 1
    return -1 if failed else 0


cdef int nhwc_moments(const floating* x, Py_ssize_t R, Py_ssize_t C, double* part,
                      int nthreads) noexcept nogil:
    # part is [units, C, 2]; unit u covers rows u*R//nu .. (u+1)*R//nu
    cdef Py_ssize_t nu = column_units(R), k = column_widen(C), u
    cdef int failed = 0
    for u in prange(nu, schedule='static', num_threads=nthreads):
        if nhwc_moments_unit(x, R, C, k, u * R // nu, (u + 1) * R // nu,
                             part + 2 * u * C) != 0:
            failed += 1
    return -1 if failed else 0
