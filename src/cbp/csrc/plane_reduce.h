/* NCHW reductions inside one plane (a channel's S contiguous elements of one
   image), for element type T. Included once per (T, instruction set) by
   kernels.h; the Cython driver (_nchw_reduce.pxi) loops over units, images
   and channels.

   Sums run in T over independent lanes for a block of elements, then go into
   float64; across blocks, planes and units everything is float64. The caller
   passes mh = the channel mean rounded to T: x - mh is exact for x near the
   mean, and the remaining mean - mh is applied once per channel in float64. */

/* A table may build plane_backprop for a narrower instruction set than its
   other kernels (table_f64_avx512.c says why): lanes_total has no target of
   its own, so that it inlines into either and is compiled for its caller's. */
#ifndef CBP_PLANE_BACKPROP_TARGET
#define CBP_PLANE_BACKPROP_TARGET CBP_TARGET
#endif

/* ta, tb := sums of the L lanes of a, b (L a power of two >= 8), added
   pairwise in float64 (u, v: double[L / 2] scratch). Vectorized: a scalar
   fold cost as much as the whole second pass of a block, and more than a
   7x7 plane. Forced inline so that a and b stay in registers. */
CBP_INLINE void lanes_total(ptrdiff_t L, const T *a, const T *b, double *u, double *v,
                            double *ta, double *tb)
{
    ptrdiff_t j, h;
    CBP_SIMD for (j = 0; j < L / 2; j++) {
        u[j] = (double)a[j] + (double)a[j + L / 2];
        v[j] = (double)b[j] + (double)b[j + L / 2];
    }
    for (h = L / 4; h >= 4; h /= 2) {
        CBP_SIMD for (j = 0; j < h; j++) {
            u[j] += u[j + h];
            v[j] += v[j + h];
        }
    }
    *ta = (u[0] + u[2]) + (u[1] + u[3]);
    *tb = (v[0] + v[2]) + (v[1] + v[3]);
}

/* sum dy and sum dy * (x - *mh) over one plane of S elements, added to
   *sum_dy and *sum_dyxc: CBP_PLANE_LANES lanes of CBP_PLANE_BLOCK /
   CBP_PLANE_LANES terms each per block, the last S % LANES elements in one
   scalar sum. The float32 range check is the driver's, once per channel of
   a unit (nchw_backprop_unit): a check per plane cost up to 1.3x the time
   on 7x7 planes. */
static CBP_PLANE_BACKPROP_TARGET void plane_backprop(const T *x, const T *dy, ptrdiff_t S,
                                                     const T *mh, double *sum_dy,
                                                     double *sum_dyxc)
{
    enum { L = CBP_PLANE_LANES, ROWS = CBP_PLANE_BLOCK / CBP_PLANE_LANES };
    T a[L], b[L], ra = 0, rb = 0, m = *mh;
    ptrdiff_t s = 0, j, r, nr, rows = S / L;
    double ta = 0.0, tb = 0.0, fa, fb;
    double u[L / 2], v[L / 2];
    while (rows > 0) {
        nr = rows < ROWS ? rows : ROWS;
        for (j = 0; j < L; j++) {
            a[j] = 0;
            b[j] = 0;
        }
        for (r = 0; r < nr; r++, s += L) {
            const T *xp = x + s, *gp = dy + s;
            CBP_SIMD for (j = 0; j < L; j++) {
                a[j] += gp[j];
                b[j] += gp[j] * (xp[j] - m);
            }
        }
        rows -= nr;
        lanes_total(L, a, b, u, v, &fa, &fb);
        ta += fa;
        tb += fb;
    }
    for (; s < S; s++) {
        ra += dy[s];
        rb += dy[s] * (x[s] - m);
    }
    *sum_dy += ta + ra;
    *sum_dyxc += tb + rb;
}

/* Moments per block of B elements (4 KiB), merged into (*count, *mean, *m2)
   by Chan. A unit's first block (*count == 0) is a corrected two-pass about
   its own mean, the second pass from L1; every later block is one pass about
   the running mean rounded to T, as the row moments do (_nhwc_reduce.pxi
   has the bound: a block's float sums err by about gamma * (M2_b + nb *
   delta^2), and the merge adds at least half of nb * delta^2 to M2, since
   no block is longer than the elements before it, so the error stays below
   3 gamma of the total M2 for any data). One pass from memory took
   0.90x-0.94x the time of two on float64 planes (Intel Xeon, family 6 model
   167, one and two threads). The pass from memory prefetches
   cbp_moments_ahead bytes ahead (one to four blocks, from the L1d's size;
   one block ahead measured 1.25x-1.4x faster than none at one thread on a
   32 KiB L1d). Each of the L lanes adds at most 32 terms: a block's last
   partial row goes half a row (vectorized), then one element per lane. */
static CBP_TARGET void plane_moments(const T *x, ptrdiff_t S, double *count, double *mean,
                                     double *m2)
{
    enum {
        L = sizeof(T) == 4 ? CBP_MOMENTS_LANES_F32 : CBP_MOMENTS_LANES_F64,
        B = sizeof(T) == 4 ? CBP_MOMENTS_BLOCK_F32 : CBP_MOMENTS_BLOCK_F64,
    };
    T a[L], b[L], bh, d;
    double u[L / 2], v[L / 2];
    ptrdiff_t s0 = 0, s, end, j, h, nfull;
    const ptrdiff_t ahead = cbp_moments_ahead / (ptrdiff_t)sizeof(T);
    double nb, s1, s2;
    while (s0 < S) {
        end = S - s0 < B ? S : s0 + B;
        nb = (double)(end - s0);
        nfull = s0 + (end - s0) / L * L;
        /* float32: each pass's first row is stored, not added to cleared
           lanes (the same values but for the sign of a zero term, which
           reaches no result: shift and mean come out +0 either way). gcc
           clears the float32 lanes with rep stos, which cost more than the
           block's adds on planes in cache; float64 keeps its lanes in
           registers, and storing there measured 1.07x slower in cache. */
        if (*count > 0) {
            bh = (T)*mean;
        } else {
            s = s0;
            if (sizeof(T) == 4 && nfull > s0) {
                CBP_SIMD for (j = 0; j < L; j++) a[j] = x[s0 + j];
                s = s0 + L;
            } else {
                for (j = 0; j < L; j++)
                    a[j] = 0;
            }
            for (; s < nfull; s += L) {
                CBP_SIMD for (j = 0; j < L; j++) a[j] += x[s + j];
            }
            if (end - s >= L / 2) {
                CBP_SIMD for (j = 0; j < L / 2; j++) a[j] += x[s + j];
                s += L / 2;
            }
            for (j = L / 2; s < end; s++, j++)
                a[j] += x[s];
            lanes_total(L, a, a, u, v, &s1, &s2);
            bh = (T)(s1 / nb);
        }
        s = s0;
        if (sizeof(T) == 4 && nfull > s0) {
            for (h = 0; h < L; h += 64 / (ptrdiff_t)sizeof(T))
                CBP_PREFETCH(x + s0 + h + ahead);
            CBP_SIMD for (j = 0; j < L; j++) {
                T dd = x[s0 + j] - bh;
                a[j] = dd;
                b[j] = dd * dd;
            }
            s = s0 + L;
        } else {
            for (j = 0; j < L; j++) {
                a[j] = 0;
                b[j] = 0;
            }
        }
        for (; s < nfull; s += L) {
            for (h = 0; h < L; h += 64 / (ptrdiff_t)sizeof(T))
                CBP_PREFETCH(x + s + h + ahead);
            CBP_SIMD for (j = 0; j < L; j++) {
                T dd = x[s + j] - bh;
                a[j] += dd;
                b[j] += dd * dd;
            }
        }
        if (end - s >= L / 2) {
            CBP_SIMD for (j = 0; j < L / 2; j++) {
                T dd = x[s + j] - bh;
                a[j] += dd;
                b[j] += dd * dd;
            }
            s += L / 2;
        }
        for (j = L / 2; s < end; s++, j++) {
            d = x[s] - bh;
            a[j] += d;
            b[j] += d * d;
        }
        lanes_total(L, a, b, u, v, &s1, &s2);
        if (sizeof(T) == 4 && !cbp_f32_sum_ok(s2) && !wide_exact(x + s0, NULL, end - s0, &bh)) {
            wide_moments(x + s0, end - s0, 1, &s1, &s2);
            cbp_chan_merge(count, mean, m2, nb, s1, s2);
        } else {
            s2 = s2 - s1 * (s1 / nb);
            cbp_chan_merge(count, mean, m2, nb, (double)bh + s1 / nb, s2 > 0.0 ? s2 : 0.0);
        }
        s0 = end;
    }
}

/* Short planes (S < CBP_SHORT_PLANE) of the moments, a run of nc planes of
   S elements at a time (an image's run of channels, read in memory order).
   Each plane is summed in T over CBP_RUN_LANES lanes (at most 32 terms a
   lane for S < 256; the last S % LANES elements in one scalar sum), the
   lanes folded pairwise in a fixed tree, and the plane's sum added to the
   channel's float64 sums: a[c] += sum x (run_sum), or a[c] += sum d and
   b[c] += sum d^2 with d = x - sh[c] (run_shifted). */
CBP_INLINE CBP_TARGET T lanes8_total(const T *a)
{
    /* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), the first level as
       one vector add: gcc folds the expression written out lane by lane */
    T h[4], g[2];
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < 4; j++) h[j] = a[j] + a[j + 4];
    for (j = 0; j < 2; j++)
        g[j] = h[j] + h[j + 2];
    return g[0] + g[1];
}

static CBP_TARGET void run_sum(const T *x, ptrdiff_t S, ptrdiff_t nc, double *a)
{
    enum { L = CBP_RUN_LANES };
    ptrdiff_t c, s, j, full = S / L * L;
    for (c = 0; c < nc; c++, x += S) {
        T p[L], r = 0;
        for (j = 0; j < L; j++)
            p[j] = 0;
        for (s = 0; s < full; s += L) {
            CBP_SIMD for (j = 0; j < L; j++) p[j] += x[s + j];
        }
        for (; s < S; s++)
            r += x[s];
        a[c] += (double)lanes8_total(p) + (double)r;
    }
}

static CBP_TARGET void run_shifted(const T *x, ptrdiff_t S, ptrdiff_t nc, const T *sh,
                                   double *a, double *b)
{
    enum { L = CBP_RUN_LANES };
    ptrdiff_t c, s, j, full = S / L * L;
    for (c = 0; c < nc; c++, x += S) {
        T p[L], q[L], ra = 0, rb = 0, m = sh[c];
        for (j = 0; j < L; j++) {
            p[j] = 0;
            q[j] = 0;
        }
        for (s = 0; s < full; s += L) {
            CBP_SIMD for (j = 0; j < L; j++) {
                T d = x[s + j] - m;
                p[j] += d;
                q[j] += d * d;
            }
        }
        for (; s < S; s++) {
            T d = x[s] - m;
            ra += d;
            rb += d * d;
        }
        a[c] += (double)lanes8_total(p) + (double)ra;
        b[c] += (double)lanes8_total(q) + (double)rb;
    }
}

/* The backprop sums of a run of nc short planes (S < CBP_SHORT_PLANE):
   o[2c] += sum dy and o[2c + 1] += sum dy * (x - mh[c]) over plane c, each
   plane summed over CBP_RUN_LANES lanes and folded as in run_shifted. */
static CBP_TARGET void run_backprop(const T *x, const T *dy, ptrdiff_t S, ptrdiff_t nc,
                                    const T *mh, double *o)
{
    enum { L = CBP_RUN_LANES };
    ptrdiff_t c, s, j, full = S / L * L;
    for (c = 0; c < nc; c++, x += S, dy += S) {
        T p[L], q[L], ra = 0, rb = 0, m = mh[c];
        double ta = 0.0, tb = 0.0;
        if (full > 0) {
            for (j = 0; j < L; j++) {
                p[j] = 0;
                q[j] = 0;
            }
            for (s = 0; s < full; s += L) {
                CBP_SIMD for (j = 0; j < L; j++) {
                    p[j] += dy[s + j];
                    q[j] += dy[s + j] * (x[s + j] - m);
                }
            }
            ta = (double)lanes8_total(p);
            tb = (double)lanes8_total(q);
        }
        for (s = full; s < S; s++) {
            ra += dy[s];
            rb += dy[s] * (x[s] - m);
        }
        o[2 * c] += ta + (double)ra;
        o[2 * c + 1] += tb + (double)rb;
    }
}
