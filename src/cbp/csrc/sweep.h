/* Elementwise sweeps for element type T: the dX formula and the normalizing
   affine map, from per-channel coefficients prepared in float64 and rounded
   once to T (by _drivers.pxi). Included once per (T, instruction set) by
   kernels.h; the Cython driver (_sweeps.pxi) cuts the array into tasks.

   The centred form is kept,
       dx = a * dy + b * (x - mh) + k      y = a * (x - mh) + k   (dy == NULL),
   not a * dy + b * x + k', which cancels badly when |mean| >> std. An output
   may be the very array it reads (in place): each element is read before it
   is written; `omp simd` keeps that case vectorized. Outputs larger than a
   last-level cache are written with streaming stores (the _nt kernels),
   whole aligned 64-byte lines at a time: the core then does not first read
   each output line (read for ownership), and the output does not push the
   inputs out of the caches. Same arithmetic, so the same bits. */

/* A table may build the sweeps for a narrower instruction set than its
   reductions (table_f32_avx512.c says why). */
#ifndef CBP_SWEEP_TARGET
#define CBP_SWEEP_TARGET CBP_TARGET
#endif

/* `rows` (1 or 4) rows st apart, per-element coefficients. The four-row
   loops read all four rows before they store: rows are often a multiple of
   4 KiB apart, and a load that follows a store to the same address mod 4096
   waits for it (4K aliasing). */
static CBP_SWEEP_TARGET void rows_sweep(const T *x, const T *dy, T *out, int rows, ptrdiff_t st,
                                        ptrdiff_t m, const T *mh, const T *a, const T *b,
                                        const T *k)
{
    ptrdiff_t j;
    if (rows == 4 && dy) {
        CBP_SIMD for (j = 0; j < m; j++) {
            T s = mh[j], aj = a[j], bj = b[j], kj = k[j];
            T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];
            T g0 = dy[j], g1 = dy[st + j];
            T g2 = dy[2 * st + j], g3 = dy[3 * st + j];
            out[j] = aj * g0 + bj * (x0 - s) + kj;
            out[st + j] = aj * g1 + bj * (x1 - s) + kj;
            out[2 * st + j] = aj * g2 + bj * (x2 - s) + kj;
            out[3 * st + j] = aj * g3 + bj * (x3 - s) + kj;
        }
    } else if (rows == 4) {
        CBP_SIMD for (j = 0; j < m; j++) {
            T s = mh[j], aj = a[j], kj = k[j];
            T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];
            out[j] = aj * (x0 - s) + kj;
            out[st + j] = aj * (x1 - s) + kj;
            out[2 * st + j] = aj * (x2 - s) + kj;
            out[3 * st + j] = aj * (x3 - s) + kj;
        }
    } else if (dy) {
        CBP_SIMD for (j = 0; j < m; j++)
            out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j];
    } else {
        CBP_SIMD for (j = 0; j < m; j++) out[j] = a[j] * (x[j] - mh[j]) + k[j];
    }
}

/* nc consecutive planes of S elements (a contiguous run of channels of one
   image), per-channel coefficients broadcast inside each plane. */
static CBP_SWEEP_TARGET void run_sweep(const T *x, const T *dy, T *out, ptrdiff_t nc, ptrdiff_t S,
                                       const T *mh, const T *a, const T *b, const T *k)
{
    ptrdiff_t c, s;
    for (c = 0; c < nc; c++) {
        const T *xp = x + c * S;
        T *op = out + c * S;
        T m = mh[c], ac = a[c], bc = b[c], kc = k[c];
        if (dy) {
            const T *gp = dy + c * S;
            CBP_SIMD for (s = 0; s < S; s++)
                op[s] = ac * gp[s] + bc * (xp[s] - m) + kc;
        } else {
            CBP_SIMD for (s = 0; s < S; s++) op[s] = ac * (xp[s] - m) + kc;
        }
    }
}

/* Elements of T from p to the next 64-byte boundary (p aligned to T). */
#define CBP_TO_LINE(p) ((ptrdiff_t)(((64 - ((size_t)(p)&63)) & 63) / sizeof(T)))

/* rows_sweep with streaming stores: the aligned whole lines of each row go
   through a 64-byte buffer per row, the rest through rows_sweep. Four rows
   need st * sizeof(T) to be a multiple of 64, so that they share their
   alignment; else they go one at a time. */
static CBP_SWEEP_TARGET void rows_sweep_nt(const T *x, const T *dy, T *out, int rows, ptrdiff_t st,
                                           ptrdiff_t m, const T *mh, const T *a, const T *b,
                                           const T *k)
{
    enum { V = 64 / sizeof(T) };
    T t[4][V];
    ptrdiff_t p, j, l;
    int r;
    if ((size_t)out % sizeof(T) != 0) {
        rows_sweep(x, dy, out, rows, st, m, mh, a, b, k);
        return;
    }
    if (rows == 4 && (st * (ptrdiff_t)sizeof(T)) % 64 != 0) {
        for (r = 0; r < 4; r++)
            rows_sweep_nt(x + r * st, dy ? dy + r * st : NULL, out + r * st, 1, st, m, mh, a,
                          b, k);
        return;
    }
    p = CBP_TO_LINE(out);
    if (p > m)
        p = m;
    if (p > 0)
        rows_sweep(x, dy, out, rows, st, p, mh, a, b, k);
    j = p;
    if (rows == 4 && dy) {
        for (; j + V <= m; j += V) {
            CBP_SIMD for (l = 0; l < V; l++) {
                T s = mh[j + l], aj = a[j + l], bj = b[j + l], kj = k[j + l];
                t[0][l] = aj * dy[j + l] + bj * (x[j + l] - s) + kj;
                t[1][l] = aj * dy[st + j + l] + bj * (x[st + j + l] - s) + kj;
                t[2][l] = aj * dy[2 * st + j + l] + bj * (x[2 * st + j + l] - s) + kj;
                t[3][l] = aj * dy[3 * st + j + l] + bj * (x[3 * st + j + l] - s) + kj;
            }
            cbp_stream_line(out + j, t[0]);
            cbp_stream_line(out + st + j, t[1]);
            cbp_stream_line(out + 2 * st + j, t[2]);
            cbp_stream_line(out + 3 * st + j, t[3]);
        }
    } else if (rows == 4) {
        for (; j + V <= m; j += V) {
            CBP_SIMD for (l = 0; l < V; l++) {
                T s = mh[j + l], aj = a[j + l], kj = k[j + l];
                t[0][l] = aj * (x[j + l] - s) + kj;
                t[1][l] = aj * (x[st + j + l] - s) + kj;
                t[2][l] = aj * (x[2 * st + j + l] - s) + kj;
                t[3][l] = aj * (x[3 * st + j + l] - s) + kj;
            }
            cbp_stream_line(out + j, t[0]);
            cbp_stream_line(out + st + j, t[1]);
            cbp_stream_line(out + 2 * st + j, t[2]);
            cbp_stream_line(out + 3 * st + j, t[3]);
        }
    } else if (dy) {
        for (; j + V <= m; j += V) {
            CBP_SIMD for (l = 0; l < V; l++)
                t[0][l] = a[j + l] * dy[j + l] + b[j + l] * (x[j + l] - mh[j + l]) + k[j + l];
            cbp_stream_line(out + j, t[0]);
        }
    } else {
        for (; j + V <= m; j += V) {
            CBP_SIMD for (l = 0; l < V; l++)
                t[0][l] = a[j + l] * (x[j + l] - mh[j + l]) + k[j + l];
            cbp_stream_line(out + j, t[0]);
        }
    }
    if (j < m)
        rows_sweep(x + j, dy ? dy + j : NULL, out + j, rows, st, m - j, mh + j, a + j, b + j,
                   k + j);
}

/* The elements from column j to the next row or to the end of n, or to the
   end of the line at the element limit (whichever is first), through
   rows_sweep; returns how many. A helper of flat_sweep_nt. */
static CBP_SWEEP_TARGET ptrdiff_t flat_part(const T *x, const T *dy, T *out, ptrdiff_t n,
                                            ptrdiff_t W, ptrdiff_t j, const T *mh, const T *a,
                                            const T *b, const T *k)
{
    ptrdiff_t m = W - j < n ? W - j : n;
    rows_sweep(x, dy, out, 1, W, m, mh + j, a + j, b + j, k + j);
    return m;
}

/* rows_sweep_nt over n consecutive elements of contiguous rows W wide,
   starting at column j. The coefficient rows hold at least W + 64 bytes, the
   last ones repeating the first (tile_coef, CBP_COEF_EXT), so that every aligned line
   of the output, also one that straddles the end of a row and the start of
   the next, takes its coefficients from one run of columns and all lines go
   through the same loop. NumPy's large arrays start 16 bytes past a line,
   so every row then has a straddling line; swept apart from the others (two
   short loops and a call per row) they took the NHWC dX sweep of
   32x112x112x64 float32 from 5.3 ms to 9.2 ms, in a C loop over arrays 16
   bytes past a line (AMD EPYC Zen 5; the loads of that one line cost most
   of it). The arithmetic of every element is that of rows_sweep. */
static CBP_SWEEP_TARGET void flat_sweep_nt(const T *x, const T *dy, T *out, ptrdiff_t n,
                                           ptrdiff_t W, ptrdiff_t j, const T *mh, const T *a,
                                           const T *b, const T *k)
{
    enum { V = 64 / sizeof(T) };
    T t[V];
    ptrdiff_t f = 0, p, m, l;
    if ((size_t)out % sizeof(T) != 0 || W < V) {
        /* unaligned to T, or rows shorter than a line: row by row */
        while (f < n) {
            m = W - j < n - f ? W - j : n - f;
            rows_sweep_nt(x + f, dy ? dy + f : NULL, out + f, 1, W, m, mh + j, a + j, b + j,
                          k + j);
            f += m;
            j = 0;
        }
        return;
    }
    p = CBP_TO_LINE(out);
    if (p > n)
        p = n;
    while (f < p) {
        m = flat_part(x + f, dy ? dy + f : NULL, out + f, p - f, W, j, mh, a, b, k);
        f += m;
        j = j + m == W ? 0 : j + m;
    }
    if (dy) {
        for (; f + V <= n; f += V) {
            CBP_SIMD for (l = 0; l < V; l++)
                t[l] = a[j + l] * dy[f + l] + b[j + l] * (x[f + l] - mh[j + l]) + k[j + l];
            cbp_stream_line(out + f, t);
            j += V;
            if (j >= W)
                j -= W;
        }
    } else {
        for (; f + V <= n; f += V) {
            CBP_SIMD for (l = 0; l < V; l++) t[l] = a[j + l] * (x[f + l] - mh[j + l]) + k[j + l];
            cbp_stream_line(out + f, t);
            j += V;
            if (j >= W)
                j -= W;
        }
    }
    while (f < n) {
        m = flat_part(x + f, dy ? dy + f : NULL, out + f, n - f, W, j, mh, a, b, k);
        f += m;
        j = j + m == W ? 0 : j + m;
    }
}

/* run_sweep with streaming stores for the aligned whole lines of each plane;
   its first and last partial lines go through run_sweep. */
static CBP_SWEEP_TARGET void run_sweep_nt(const T *x, const T *dy, T *out, ptrdiff_t nc,
                                          ptrdiff_t S, const T *mh, const T *a, const T *b,
                                          const T *k)
{
    enum { V = 64 / sizeof(T) };
    T t[V];
    ptrdiff_t c, s, p, e, l;
    if ((size_t)out % sizeof(T) != 0) {
        run_sweep(x, dy, out, nc, S, mh, a, b, k);
        return;
    }
    for (c = 0; c < nc; c++) {
        const T *xp = x + c * S, *gp = dy ? dy + c * S : NULL;
        T *op = out + c * S;
        T m = mh[c], ac = a[c], bc = b[c], kc = k[c];
        p = CBP_TO_LINE(op);
        if (p > S)
            p = S;
        e = p + (S - p) / V * V;
        run_sweep(xp, gp, op, 1, p, mh + c, a + c, b + c, k + c);
        for (s = p; s < e; s += V) {
            if (gp) {
                CBP_SIMD for (l = 0; l < V; l++)
                    t[l] = ac * gp[s + l] + bc * (xp[s + l] - m) + kc;
            } else {
                CBP_SIMD for (l = 0; l < V; l++) t[l] = ac * (xp[s + l] - m) + kc;
            }
            cbp_stream_line(op + s, t);
        }
        run_sweep(xp + e, gp ? gp + e : NULL, op + e, 1, S - e, mh + c, a + c, b + c, k + c);
    }
}

#undef CBP_TO_LINE
