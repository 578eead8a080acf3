/* Float64-arithmetic twins of the kernels, for element type T: the path for
   float32 data whose values leave the range where float32 arithmetic is
   exact enough. Included once per (T, instruction set) by kernels.h, before
   the kernels that call them.

   The float32 kernels form squares, products and short lane sums in float32,
   and the sweeps use coefficients rounded to float32. Well inside float32's
   range that costs nothing in accuracy; outside it a square overflows to inf
   (std >= ~3e18) or underflows to 0 (std <= ~1e-22), and a coefficient
   rounds to inf or loses its digits as a subnormal. So the drivers check
   the float64 totals of float32 work once per channel and call (cbp_any_bad;
   plane_moments per block), test failing channels for exact zero terms
   (wide_exact), and redo the rest, per unit and column, here; they
   check each float32 coefficient (cbp_f32_coef_ok) and sweep a channel that
   fails here.
   Normal data never gets here, so these are written for clarity: fixed
   lanes added in a fixed order (the same bits for every instruction set),
   plain stores. NaN and Inf in the data also fail the checks; the float64
   sums then carry them into the results. float64 data sweep here too where
   the fast path's product coefficient a * b overflows float64 (extreme
   inv_std), which the factored form below avoids. */

/* Sums over n elements st apart, in float64: with dy, sum dy and
   sum dy * (x - m); without (dy == NULL), sum (x - m) and sum (x - m)^2. */
CBP_NOINLINE CBP_TARGET void wide_sums(const T *x, const T *dy, ptrdiff_t n, ptrdiff_t st, double m,
                                 double *sa, double *sb)
{
    enum { L = 8 };
    double a[L] = {0}, b[L] = {0};
    ptrdiff_t i = 0, j;
    for (; i + L <= n; i += L) {
        for (j = 0; j < L; j++) {
            double d = (double)x[(i + j) * st] - m;
            double g = dy ? (double)dy[(i + j) * st] : d;
            a[j] += g;
            b[j] += g * d;
        }
    }
    for (j = 0; i < n; i++, j++) {
        double d = (double)x[i * st] - m;
        double g = dy ? (double)dy[i * st] : d;
        a[j] += g;
        b[j] += g * d;
    }
    *sa = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    *sb = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

/* Mean and M2 of n >= 1 elements st apart, corrected two-pass in float64. */
CBP_NOINLINE CBP_TARGET void wide_moments(const T *x, ptrdiff_t n, ptrdiff_t st, double *mean,
                                    double *m2)
{
    double s, unused, s1, s2, mu;
    wide_sums(x, NULL, n, st, 0.0, &s, &unused);
    mu = s / (double)n;
    wide_sums(x, NULL, n, st, mu, &s1, &s2);
    s2 -= s1 * (s1 / (double)n);
    *mean = mu + s1 / (double)n;
    *m2 = s2 > 0.0 ? s2 : 0.0;
}

/* Whether a float32 sum over n contiguous elements is exact although it
   failed the range check because it is (near) zero: every term is exactly
   0, i.e. dy[i] == 0 or x[i] == *m for all i (without dy: x[i] == *m, a
   constant run). Dead channels (all-zero data or gradients) are the common
   case; the check is one vectorized read of data just summed, where the
   float64 redo costs several times the fast pass. NaN is never exact. */
static CBP_TARGET int wide_exact(const T *x, const T *dy, ptrdiff_t n, const T *m)
{
    enum { CHUNK = 256 };
    const T v = *m;
    ptrdiff_t i0, i, e;
    for (i0 = 0; i0 < n; i0 += CHUNK) {
        int bad = 0;
        e = n - i0 < CHUNK ? n : i0 + CHUNK;
        if (dy) {
            CBP_SIMD_COUNT(bad) for (i = i0; i < e; i++)
                bad += (dy[i] != 0) & (x[i] != v);
        } else {
            CBP_SIMD_COUNT(bad) for (i = i0; i < e; i++) bad += x[i] != v;
        }
        if (bad)
            return 0;
    }
    return 1;
}

/* wide_exact per column over nrows rows (stride apart, the last row last_w
   of the w columns wide), against m[j] for column j: ok[j] := 1 when every
   term of column j is exactly zero, else 0. */
static CBP_TARGET void wide_exact_columns(const T *x, const T *dy, ptrdiff_t nrows,
                                          ptrdiff_t stride, ptrdiff_t w, ptrdiff_t last_w,
                                          const T *m, unsigned char *ok)
{
    ptrdiff_t r, j, n;
    for (j = 0; j < w; j++)
        ok[j] = 1;
    for (r = 0; r < nrows; r++) {
        const T *xr = x + r * stride;
        n = r == nrows - 1 ? last_w : w;
        if (dy) {
            const T *gr = dy + r * stride;
            CBP_SIMD for (j = 0; j < n; j++) ok[j] &= (gr[j] == 0) | (xr[j] == m[j]);
        } else {
            CBP_SIMD for (j = 0; j < n; j++) ok[j] &= xr[j] == m[j];
        }
    }
}

/* Per-column sums over nrows rows (stride apart; the last row last_w of
   the w columns wide) in float64, each column added row by row: with dy,
   sum dy and sum dy * (x - m[j]); without (dy == NULL), sum (x - m[j]) and
   its square. For the column kernels' redo of a unit (_nhwc_reduce.pxi):
   one pass over the unit for every column that failed the check. */
CBP_NOINLINE CBP_TARGET void wide_columns(const T *x, const T *dy, ptrdiff_t nrows,
                                          ptrdiff_t stride, ptrdiff_t w, ptrdiff_t last_w,
                                          const double *m, double *sa, double *sb)
{
    ptrdiff_t r, j, n;
    for (j = 0; j < w; j++) {
        sa[j] = 0.0;
        sb[j] = 0.0;
    }
    for (r = 0; r < nrows; r++) {
        const T *xr = x + r * stride;
        n = r == nrows - 1 ? last_w : w;
        if (dy) {
            const T *gr = dy + r * stride;
            CBP_SIMD for (j = 0; j < n; j++) {
                double d = (double)xr[j] - m[j], g = (double)gr[j];
                sa[j] += g;
                sb[j] += g * d;
            }
        } else {
            CBP_SIMD for (j = 0; j < n; j++) {
                double d = (double)xr[j] - m[j];
                sa[j] += d;
                sb[j] += d * d;
            }
        }
    }
}

/* The sweeps of sweep.h in float64 arithmetic, one rounding to T per
   element, from float64 coefficients (mh, a, b, k) in the reference's
   factored form:
       dx = a * (dy + b * (x - mh) + k)      y = a * (x - mh) + k   (dy == NULL),
   with a = scale * inv_std, b = -inv_std * dscale / count, k = -dbias / count
   for dx (the drivers' set_dx_coef), so that no coefficient overflows where
   the float32 kernels' product a * b would. m elements with per-element
   coefficients, or nc planes of S elements with per-plane coefficients. */
CBP_INLINE double wide_value(double x, const T *dy, ptrdiff_t j, double m, double a, double b,
                             double k)
{
    double d = x - m;
    return dy ? a * ((double)dy[j] + b * d + k) : a * d + k;
}

static CBP_TARGET void wide_rows_sweep(const T *x, const T *dy, T *out, ptrdiff_t m,
                                       const double *mh, const double *a, const double *b,
                                       const double *k)
{
    ptrdiff_t j;
    for (j = 0; j < m; j++)
        out[j] = (T)wide_value((double)x[j], dy, j, mh[j], a[j], b[j], k[j]);
}

static CBP_TARGET void wide_run_sweep(const T *x, const T *dy, T *out, ptrdiff_t nc,
                                      ptrdiff_t S, const double *mh, const double *a,
                                      const double *b, const double *k)
{
    ptrdiff_t c, s;
    for (c = 0; c < nc; c++) {
        const T *xp = x + c * S, *gp = dy ? dy + c * S : NULL;
        T *op = out + c * S;
        for (s = 0; s < S; s++)
            op[s] = (T)wide_value((double)xp[s], gp, s, mh[c], a[c], b[c], k[c]);
    }
}
