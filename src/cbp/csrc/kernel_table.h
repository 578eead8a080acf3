/* The kernels of one element type T, as a table of function pointers: one
   table per (element type, instruction set), chosen at import (dispatch.c).
   Included once per element type with T and CBP_KERNELS defined (by
   cbp_kernels.h). Pointers to T may alias (out == x or out == dy: in place). */

typedef struct {
    /* NCHW planes (plane_reduce.h): sum dy and sum dy * (x - *mh) over one
       plane of S elements, added to *sum_dy and *sum_dyxc. */
    void (*plane_backprop)(const T *x, const T *dy, ptrdiff_t S, const T *mh,
                           double *sum_dy, double *sum_dyxc);
    /* Exact moments of one plane merged into (*count, *mean, *m2). */
    void (*plane_moments)(const T *x, ptrdiff_t S, double *count, double *mean,
                          double *m2);
    /* Short planes, nc consecutive ones of S elements: a[c] += sum x, or
       a[c] += sum (x - sh[c]) and b[c] += sum (x - sh[c])^2. */
    void (*run_sum)(const T *x, ptrdiff_t S, ptrdiff_t nc, double *a);
    void (*run_shifted)(const T *x, ptrdiff_t S, ptrdiff_t nc, const T *sh, double *a,
                        double *b);
    /* ... and their backprop sums, o[2c] += sum dy, o[2c + 1] += sum dy * (x - mh[c]). */
    void (*run_backprop)(const T *x, const T *dy, ptrdiff_t S, ptrdiff_t nc, const T *mh,
                         double *o);

    /* Rows into per-column accumulators (column_reduce.h): one row of m
       elements, or four rows st apart (rows4_). */
    void (*row_backprop)(const T *x, const T *dy, const T *mh, T *a, T *b, ptrdiff_t m);
    void (*rows4_backprop)(const T *x, const T *dy, ptrdiff_t st, const T *mh, T *a, T *b,
                           ptrdiff_t m);
    void (*row_sum)(const T *x, T *a, ptrdiff_t m);
    void (*rows4_sum)(const T *x, ptrdiff_t st, T *a, ptrdiff_t m);
    void (*row_shifted)(const T *x, const T *shift, T *a, T *b, ptrdiff_t m);
    void (*rows4_shifted)(const T *x, ptrdiff_t st, const T *shift, T *a, T *b, ptrdiff_t m);
    /* Eight rows st apart, for the moments of long rows. */
    void (*rows8_sum)(const T *x, ptrdiff_t st, T *a, ptrdiff_t m);
    void (*rows8_shifted)(const T *x, ptrdiff_t st, const T *shift, T *a, T *b, ptrdiff_t m);
    /* A block of nb rows of shifted sums into the running per-column (mean,
       M2) of n_a earlier rows; the block's shift from its first pass. */
    void (*merge_block)(const T *a, const T *b, const T *shift, double *mean, double *m2,
                        ptrdiff_t m, double n_a, double nb);
    void (*block_shift)(T *a, ptrdiff_t m, double nb);
    /* One-pass blocks: the shift from the running mean. */
    void (*mean_shift)(T *s, const double *mean, ptrdiff_t m);
    /* A block's backprop accumulators added into float64 sums, then cleared. */
    void (*flush_sums)(T *a, T *b, double *s1, double *s2, ptrdiff_t m);

    /* Elementwise sweeps (sweep.h), dy == NULL: the affine map. `rows` (1 or
       4) rows st apart, per-element coefficients; or nc planes of S
       elements, per-plane coefficients. _nt: streaming stores. */
    void (*rows_sweep)(const T *x, const T *dy, T *out, int rows, ptrdiff_t st, ptrdiff_t m,
                       const T *mh, const T *a, const T *b, const T *k);
    void (*rows_sweep_nt)(const T *x, const T *dy, T *out, int rows, ptrdiff_t st,
                          ptrdiff_t m, const T *mh, const T *a, const T *b, const T *k);
    /* n consecutive elements of contiguous rows W wide, from column j on:
       streaming stores also for the lines that straddle two rows. */
    void (*flat_sweep_nt)(const T *x, const T *dy, T *out, ptrdiff_t n, ptrdiff_t W,
                          ptrdiff_t j, const T *mh, const T *a, const T *b, const T *k);
    void (*run_sweep)(const T *x, const T *dy, T *out, ptrdiff_t nc, ptrdiff_t S,
                      const T *mh, const T *a, const T *b, const T *k);
    void (*run_sweep_nt)(const T *x, const T *dy, T *out, ptrdiff_t nc, ptrdiff_t S,
                         const T *mh, const T *a, const T *b, const T *k);

    /* Float64 arithmetic for float32 data out of float32's comfortable range
       (wide.h): sums of n elements st apart (dy == NULL: of x - m and its
       square), exact moments, and the sweeps from float64 coefficients. */
    void (*wide_sums)(const T *x, const T *dy, ptrdiff_t n, ptrdiff_t st, double m,
                      double *sa, double *sb);
    void (*wide_moments)(const T *x, ptrdiff_t n, ptrdiff_t st, double *mean, double *m2);
    void (*wide_columns)(const T *x, const T *dy, ptrdiff_t nrows, ptrdiff_t stride,
                         ptrdiff_t w, ptrdiff_t last_w, const double *m, double *sa,
                         double *sb);
    /* Whether near-zero sums are exact after all: every term 0 (dy == 0 or
       x == m), over n contiguous elements or per column. */
    int (*wide_exact)(const T *x, const T *dy, ptrdiff_t n, const T *m);
    void (*wide_exact_columns)(const T *x, const T *dy, ptrdiff_t nrows, ptrdiff_t stride,
                               ptrdiff_t w, ptrdiff_t last_w, const T *m, unsigned char *ok);
    void (*wide_rows_sweep)(const T *x, const T *dy, T *out, ptrdiff_t m, const double *mh,
                            const double *a, const double *b, const double *k);
    void (*wide_run_sweep)(const T *x, const T *dy, T *out, ptrdiff_t nc, ptrdiff_t S,
                           const double *mh, const double *a, const double *b,
                           const double *k);
} CBP_KERNELS;
