# NCHW reductions: per-channel sums over (N, S) planes of an (N, C, S) block.
#
# Inside a plane the sums run in the input type over CBP_LANES independent
# accumulators for CBP_PLANE_BLOCK elements, then go into float64; across planes
# and units everything is float64. (x - mean) is formed as (x - mean_hi) with
# mean_hi = mean rounded to the input type: for x near the mean that
# subtraction is exact, and the remaining (mean - mean_hi) is applied once per
# channel in float64. This keeps float32 data with |mean| >> std accurate.
# The backprop sums run plane by plane for any S > 1 (SHORT_PLANE_BACKPROP);
# the moments of planes shorter than SHORT_PLANE run the column kernels of
# _nhwc_reduce.pxi, since a plane's two passes and merge cost too much there.


# The innermost plane loops are C (see CBP_SIMD and CBP_DISPATCH in _plan.pxi).
cdef extern from *:
    """
    /* Independent accumulators per plane; float32 partial sums stay short
       (CBP_PLANE_BLOCK / CBP_LANES = 32 terms per lane) before they go into
       float64. */
    #define CBP_LANES 16
    #define CBP_PLANE_BLOCK 512

    /* ta, tb := sums of the L lanes of a, b (L a power of two >= 8), added
       pairwise in float64 (u, v: double[L / 2] scratch). A macro, so a and b
       stay in registers, and vectorized: a scalar fold cost as much as the
       whole second pass of a block, and more than a 7x7 plane. */
    #define CBP_LANES_TOTAL(L, a, b, u, v, ta, tb) do {                             \\
        Py_ssize_t j_, h_;                                                          \\
        CBP_SIMD for (j_ = 0; j_ < (L) / 2; j_++) {                                 \\
            u[j_] = (double)a[j_] + (double)a[j_ + (L) / 2];                        \\
            v[j_] = (double)b[j_] + (double)b[j_ + (L) / 2];                        \\
        }                                                                           \\
        for (h_ = (L) / 4; h_ >= 4; h_ /= 2) {                                      \\
            CBP_SIMD for (j_ = 0; j_ < h_; j_++) {                                  \\
                u[j_] += u[j_ + h_];                                                \\
                v[j_] += v[j_ + h_];                                                \\
            }                                                                       \\
        }                                                                           \\
        ta = (u[0] + u[2]) + (u[1] + u[3]);                                         \\
        tb = (v[0] + v[2]) + (v[1] + v[3]);                                         \\
    } while (0)

    /* sum dy and sum dy * (x - mh) over one plane of S elements */
    #define CBP_DEFINE_PLANE_BACKPROP(T, SUF)                                       \\
    static CBP_DISPATCH void cbp_plane_backprop_##SUF(const T *x, const T *dy,      \\
            Py_ssize_t S, T mh, double *sum_dy, double *sum_dyxc) {                 \\
        T a[CBP_LANES], b[CBP_LANES], ra = 0, rb = 0;                               \\
        Py_ssize_t s = 0, j, r, nr, rows = S / CBP_LANES;                           \\
        double ta = 0.0, tb = 0.0, fa, fb;                                          \\
        double u[CBP_LANES / 2], v[CBP_LANES / 2];                                  \\
        while (rows > 0) {                                                          \\
            nr = rows < CBP_PLANE_BLOCK / CBP_LANES ? rows                          \\
                                                    : CBP_PLANE_BLOCK / CBP_LANES;  \\
            for (j = 0; j < CBP_LANES; j++) { a[j] = 0; b[j] = 0; }                 \\
            for (r = 0; r < nr; r++, s += CBP_LANES) {                              \\
                const T *xp = x + s, *gp = dy + s;                                  \\
                CBP_SIMD for (j = 0; j < CBP_LANES; j++) {                          \\
                    a[j] += gp[j];                                                  \\
                    b[j] += gp[j] * (xp[j] - mh);                                   \\
                }                                                                   \\
            }                                                                       \\
            rows -= nr;                                                             \\
            CBP_LANES_TOTAL(CBP_LANES, a, b, u, v, fa, fb);                         \\
            ta += fa;                                                               \\
            tb += fb;                                                               \\
        }                                                                           \\
        for (; s < S; s++) { ra += dy[s]; rb += dy[s] * (x[s] - mh); }              \\
        *sum_dy += ta + ra;                                                         \\
        *sum_dyxc += tb + rb;                                                       \\
    }

    /* Corrected two-pass moments per block of B elements (4 KiB, in L1 for
       the second pass), merged into (count, mean, m2) by Chan. The second
       pass also prefetches the next block, so memory keeps streaming while
       the block is re-read from L1 (measured 1.25x-1.4x faster at one thread,
       within 1.1x of a BLAS dot product). L lanes (32 for float32; 16 for
       float64, where 32 would spill registers) add at most 32 terms each: a
       block's last partial row goes half a row (vectorized), then one element
       per lane. The lanes are combined pairwise in float64. */
    #define CBP_DEFINE_PLANE_MOMENTS(T, SUF, L, B)                                  \\
    static CBP_DISPATCH void cbp_plane_moments_##SUF(const T *x, Py_ssize_t S,      \\
            double *count, double *mean, double *m2) {                              \\
        T a[L], b[L], bh, d;                                                        \\
        double u[L / 2], v[L / 2];                                                  \\
        Py_ssize_t s0 = 0, s, end, j, h, nfull;                                     \\
        double nb, s1, s2;                                                          \\
        while (s0 < S) {                                                            \\
            end = S - s0 < B ? S : s0 + B;                                          \\
            nb = (double)(end - s0);                                                \\
            nfull = s0 + (end - s0) / L * L;                                        \\
            for (j = 0; j < L; j++) { a[j] = 0; b[j] = 0; }                         \\
            for (s = s0; s < nfull; s += L) {                                       \\
                CBP_SIMD for (j = 0; j < L; j++) a[j] += x[s + j];                  \\
            }                                                                       \\
            if (end - s >= L / 2) {                                                 \\
                CBP_SIMD for (j = 0; j < L / 2; j++) a[j] += x[s + j];              \\
                s += L / 2;                                                         \\
            }                                                                       \\
            for (j = L / 2; s < end; s++, j++) a[j] += x[s];                        \\
            CBP_LANES_TOTAL(L, a, b, u, v, s1, s2);                                 \\
            bh = (T)(s1 / nb);                                                      \\
            for (j = 0; j < L; j++) { a[j] = 0; b[j] = 0; }                         \\
            for (s = s0; s < nfull; s += L) {                                       \\
                for (h = 0; h < L; h += 64 / (Py_ssize_t)sizeof(T))                 \\
                    CBP_PREFETCH(x + s + h + B);                                    \\
                CBP_SIMD for (j = 0; j < L; j++) {                                  \\
                    T dd = x[s + j] - bh;                                           \\
                    a[j] += dd;                                                     \\
                    b[j] += dd * dd;                                                \\
                }                                                                   \\
            }                                                                       \\
            if (end - s >= L / 2) {                                                 \\
                CBP_SIMD for (j = 0; j < L / 2; j++) {                              \\
                    T dd = x[s + j] - bh;                                           \\
                    a[j] += dd;                                                     \\
                    b[j] += dd * dd;                                                \\
                }                                                                   \\
                s += L / 2;                                                         \\
            }                                                                       \\
            for (j = L / 2; s < end; s++, j++) {                                    \\
                d = x[s] - bh; a[j] += d; b[j] += d * d;                            \\
            }                                                                       \\
            CBP_LANES_TOTAL(L, a, b, u, v, s1, s2);                                 \\
            s2 = s2 - s1 * (s1 / nb);                                               \\
            cbp_chan_merge(count, mean, m2, nb, (double)bh + s1 / nb,               \\
                           s2 > 0.0 ? s2 : 0.0);                                    \\
            s0 = end;                                                               \\
        }                                                                           \\
    }

    CBP_DEFINE_PLANE_BACKPROP(float, f32)
    CBP_DEFINE_PLANE_BACKPROP(double, f64)
    CBP_DEFINE_PLANE_MOMENTS(float, f32, 32, 1024)
    CBP_DEFINE_PLANE_MOMENTS(double, f64, 16, 512)
    """
    void cbp_plane_backprop_f32(const float* x, const float* dy, Py_ssize_t S, float mh,
                                double* sum_dy, double* sum_dyxc) noexcept nogil
    void cbp_plane_backprop_f64(const double* x, const double* dy, Py_ssize_t S, double mh,
                                double* sum_dy, double* sum_dyxc) noexcept nogil
    void cbp_plane_moments_f32(const float* x, Py_ssize_t S, double* count, double* mean,
                               double* m2) noexcept nogil
    void cbp_plane_moments_f64(const double* x, Py_ssize_t S, double* count, double* mean,
                               double* m2) noexcept nogil


cdef inline void plane_backprop_sums(const floating* x, const floating* dy, Py_ssize_t S,
                                     floating mh, double* sum_dy,
                                     double* sum_dyxc) noexcept nogil:
    if floating is float:
        cbp_plane_backprop_f32(x, dy, S, mh, sum_dy, sum_dyxc)
    else:
        cbp_plane_backprop_f64(x, dy, S, mh, sum_dy, sum_dyxc)


cdef inline void plane_moments(const floating* x, Py_ssize_t S, double* count,
                               double* mean, double* m2) noexcept nogil:
    if floating is float:
        cbp_plane_moments_f32(x, S, count, mean, m2)
    else:
        cbp_plane_moments_f64(x, S, count, mean, m2)


cdef int nchw_backprop_unit(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t u,
                            const floating* mh, double* part) noexcept nogil:
    # part is [ng, C, 2]: (sum dy, sum dy * (x - mean_hi)) of image group g.
    cdef Py_ssize_t cb = u // p.ng, g = u % p.ng
    cdef Py_ssize_t c0 = cb * p.cb, c1 = min(C, c0 + p.cb)
    cdef Py_ssize_t n0 = g * N // p.ng, n1 = (g + 1) * N // p.ng
    cdef Py_ssize_t n, c, off
    cdef double* out = part + 2 * (g * C + c0)
    # plane by plane for every S > 1 (the plan never takes columns here), each
    # image's channel block one contiguous run
    for c in range(2 * (c1 - c0)):
        out[c] = 0.0
    for n in range(n0, n1):
        for c in range(c0, c1):
            off = (n * C + c) * S
            plane_backprop_sums(x + off, dy + off, S, mh[c],
                                out + 2 * (c - c0), out + 2 * (c - c0) + 1)
    return 0


cdef int nchw_moments_unit(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                           PlanePlan p, Py_ssize_t u, double* part) noexcept nogil:
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
    if column_moments(x + (n0 * C + c0) * S, n1 - n0, C * S, W, W, False, cs) != 0:
        free(cs)
        return -1
    for s in range(S):
        merge_into(out, out + 1, 2, cs + s, cs + W + s, S, c1 - c0, <double>(s * (n1 - n0)),
                   <double>(n1 - n0))
    free(cs)
    return 0


cdef int nchw_backprop_sums(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0,
                            Py_ssize_t cb1, const floating* mh, double* part,
                            int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    cdef int failed = 0
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        if nchw_backprop_unit(x, dy, N, C, S, p, u, mh, part) != 0:
            failed += 1
    return -1 if failed else 0


cdef int nchw_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1, double* part,
                      int nthreads) noexcept nogil:
    cdef Py_ssize_t u
    cdef int failed = 0
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        if nchw_moments_unit(x, N, C, S, p, u, part) != 0:
            failed += 1
    return -1 if failed else 0
