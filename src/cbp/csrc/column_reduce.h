/* Column reductions: rows of a strided 2-D view added into one accumulator
   per column, for element type T. Included once per (T, instruction set) by
   kernels.h; the Cython driver (_nhwc_reduce.pxi) cuts the rows into units
   and blocks and flushes the T accumulators into float64.

   They serve NHWC (a row holds all C channels of one pixel, or k pixels
   fused), NCHW with no spatial axes, and the moments of NCHW short planes (a
   row is one image's run of a block of channels). The inner loop runs along
   a row, so it vectorizes with no reassociation. Four rows at a time (st
   apart) load and store each accumulator once per four rows, and the four
   terms are summed first. */

/* One row; the four-row twins below take rows st apart. Separate functions
   rather than one with a row-count argument: the one-row call is made once
   per row of C elements, where one function with both loops saved the
   registers of the four-row loop on every call (1.07x the time of NHWC
   backprop sums with C = 256). */
static CBP_TARGET void row_backprop(const T *x, const T *dy, const T *mh, T *a, T *b,
                                    ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        a[j] += dy[j];
        b[j] += dy[j] * (x[j] - mh[j]);
    }
}

static CBP_TARGET void rows4_backprop(const T *x, const T *dy, ptrdiff_t st, const T *mh,
                                      T *a, T *b, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        T s = mh[j];
        a[j] += (dy[j] + dy[st + j]) + (dy[2 * st + j] + dy[3 * st + j]);
        b[j] += (dy[j] * (x[j] - s) + dy[st + j] * (x[st + j] - s))
                + (dy[2 * st + j] * (x[2 * st + j] - s) + dy[3 * st + j] * (x[3 * st + j] - s));
    }
}

static CBP_TARGET void row_sum(const T *x, T *a, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) a[j] += x[j];
}

static CBP_TARGET void rows4_sum(const T *x, ptrdiff_t st, T *a, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++)
        a[j] += (x[j] + x[st + j]) + (x[2 * st + j] + x[3 * st + j]);
}

/* Eight rows st apart: the moments of rows of EIGHTH_ROW_BYTES or more,
   whose three accumulator rows no longer stay in L1d beside the data. */
static CBP_TARGET void rows8_sum(const T *x, ptrdiff_t st, T *a, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++)
        a[j] += ((x[j] + x[st + j]) + (x[2 * st + j] + x[3 * st + j]))
                + ((x[4 * st + j] + x[5 * st + j]) + (x[6 * st + j] + x[7 * st + j]));
}

static CBP_TARGET void row_shifted(const T *x, const T *shift, T *a, T *b, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        T d = x[j] - shift[j];
        a[j] += d;
        b[j] += d * d;
    }
}

/* The shifted sums of four rows st apart at column j, added pairwise: the
   step of rows4_shifted, and each half of a step of rows8_shifted. Forced
   inline so that the loops that call it stay vectorized. */
CBP_INLINE CBP_TARGET void quad_shifted(const T *x, ptrdiff_t st, ptrdiff_t j, T s, T *pa,
                                        T *pb)
{
    T d0 = x[j] - s, d1 = x[st + j] - s;
    T d2 = x[2 * st + j] - s, d3 = x[3 * st + j] - s;
    *pa = (d0 + d1) + (d2 + d3);
    *pb = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
}

static CBP_TARGET void rows4_shifted(const T *x, ptrdiff_t st, const T *shift, T *a, T *b,
                                     ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        T qa, qb;
        quad_shifted(x, st, j, shift[j], &qa, &qb);
        a[j] += qa;
        b[j] += qb;
    }
}

static CBP_TARGET void rows8_shifted(const T *x, ptrdiff_t st, const T *shift, T *a, T *b,
                                     ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        T qa, qb, ra, rb;
        quad_shifted(x, st, j, shift[j], &qa, &qb);
        quad_shifted(x + 4 * st, st, j, shift[j], &ra, &rb);
        a[j] += qa + ra;
        b[j] += qb + rb;
    }
}

/* End of a block of rows in the backprop sums: the T accumulators a, b go
   into the float64 column sums s1, s2 and are cleared for the next block. A
   kernel of its own rather than a loop in the driver: the driver's copy ran
   as baseline SSE2 with spills, 8% of NHWC backprop sums with C = 1024. */
static CBP_TARGET void flush_sums(T *a, T *b, double *s1, double *s2, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        s1[j] += (double)a[j];
        s2[j] += (double)b[j];
        a[j] = 0;
        b[j] = 0;
    }
}

/* End of a block of nb rows in the moments pass: turn per-column shifted
   sums (a: sum d, b: sum d*d, d = x - shift) into the block's mean and M2
   and merge them into the running per-column mean and M2 of n_a earlier
   rows (Chan; exact also for n_a == 0). One division per block, not two per
   column: the divisions cost a quarter of the whole pass. */
static CBP_TARGET void merge_block(const T *a, const T *b, const T *shift, double *mean,
                                   double *m2, ptrdiff_t m, double n_a, double nb)
{
    ptrdiff_t j;
    double w, v, rn;
    if (m <= 0 || nb <= 0)
        return;
    w = nb / (n_a + nb);
    v = n_a * w;
    rn = 1.0 / nb;
    if (n_a == 0) {
        /* w = 1, v = 0: without delta * delta * 0, NaN once delta * delta
           overflows (float64 data with |mean| > ~1e154) */
        CBP_SIMD for (j = 0; j < m; j++) {
            double s1 = (double)a[j], q = s1 * rn;
            double bm2 = (double)b[j] - s1 * q;
            double delta = ((double)shift[j] + q) - mean[j];
            mean[j] += delta;
            m2[j] += (bm2 > 0.0 ? bm2 : 0.0);
        }
        return;
    }
    CBP_SIMD for (j = 0; j < m; j++) {
        double s1 = (double)a[j], q = s1 * rn;
        double bm2 = (double)b[j] - s1 * q;
        double delta = ((double)shift[j] + q) - mean[j];
        mean[j] += delta * w;
        m2[j] += (bm2 > 0.0 ? bm2 : 0.0) + delta * delta * v;
    }
}

/* s := mean rounded to T: the per-column shift of a block summed in one
   pass, from the running mean of the rows before it. */
static CBP_TARGET void mean_shift(T *s, const double *mean, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) s[j] = (T)mean[j];
}

/* a := a / nb rounded to T: the per-column shift of a block's second pass. */
static CBP_TARGET void block_shift(T *a, ptrdiff_t m, double nb)
{
    ptrdiff_t j;
    double rn;
    if (m <= 0 || nb <= 0)
        return;
    rn = 1.0 / nb;
    CBP_SIMD for (j = 0; j < m; j++) a[j] = (T)((double)a[j] * rn);
}
