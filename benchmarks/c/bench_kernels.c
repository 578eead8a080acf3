/* Microbenchmark of cbp's inner kernels, per instruction set, on one thread:
   the NCHW plane reductions (plane_reduce.h), the row reductions
   (column_reduce.h) and the row sweep (sweep.h), each over an array that
   stays in the last-level cache and one that does not. It links the kernel
   sources directly (no Python), so a kernel change can be timed and read
   with perf or -fopt-info on its own.

       make -C benchmarks/c && benchmarks/c/bench_kernels [MiB]

   Prints GB/s (bytes read and written by the kernel / best time of 7). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cbp_kernels.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* rows of W floats as the column kernels see them (C = W, NHWC) */
enum { W = 1024, ROWS_PER_FLUSH = CBP_ROW_FLUSH };

static volatile double sink;

static double bench_plane_moments(const float *x, ptrdiff_t n)
{
    double best = 1e30, cnt, mean, m2;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        cnt = mean = m2 = 0;
        for (ptrdiff_t s = 0; s < n; s += 3136)  /* 56x56 planes */
            cbp_plane_moments(x + s, n - s < 3136 ? n - s : 3136, &cnt, &mean, &m2);
        double t = now() - t0;
        sink = m2;
        if (t < best)
            best = t;
    }
    return (double)n * sizeof(float) / best * 1e-9;
}

static double bench_plane_backprop(const float *x, const float *dy, ptrdiff_t n)
{
    double best = 1e30, a, b;
    float mh = 0.5f;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        a = b = 0;
        for (ptrdiff_t s = 0; s < n; s += 3136)
            cbp_plane_backprop(x + s, dy + s, n - s < 3136 ? n - s : 3136, &mh, &a, &b);
        double t = now() - t0;
        sink = a + b;
        if (t < best)
            best = t;
    }
    return 2.0 * (double)n * sizeof(float) / best * 1e-9;
}

static double bench_rows_backprop(const float *x, const float *dy, ptrdiff_t n, float *acc)
{
    double best = 1e30;
    ptrdiff_t rows = n / W;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        for (ptrdiff_t j = 0; j < 3 * W; j++)
            acc[j] = 0;
        for (ptrdiff_t i = 0; i < rows; i++)
            cbp_row_backprop(x + i * W, dy + i * W, acc + 2 * W, acc, acc + W, W);
        double t = now() - t0;
        sink = acc[0];
        if (t < best)
            best = t;
    }
    return 2.0 * (double)rows * W * sizeof(float) / best * 1e-9;
}

static double bench_rows_sweep(const float *x, const float *dy, float *out, ptrdiff_t n,
                               const float *coef, int nt)
{
    double best = 1e30;
    ptrdiff_t rows = n / W;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        for (ptrdiff_t i = 0; i < rows; i++) {
            if (nt)
                cbp_rows_sweep_nt(x + i * W, dy + i * W, out + i * W, 1, W, W, coef,
                                  coef + W, coef + 2 * W, coef + 3 * W);
            else
                cbp_rows_sweep(x + i * W, dy + i * W, out + i * W, 1, W, W, coef, coef + W,
                               coef + 2 * W, coef + 3 * W);
        }
        cbp_store_fence();
        double t = now() - t0;
        sink = out[0];
        if (t < best)
            best = t;
    }
    return 3.0 * (double)rows * W * sizeof(float) / best * 1e-9;
}

int main(int argc, char **argv)
{
    double big_mib = argc > 1 ? atof(argv[1]) : 256.0;
    ptrdiff_t sizes[2] = {(ptrdiff_t)(1 << 20), (ptrdiff_t)(big_mib * (1 << 20) / sizeof(float))};
    ptrdiff_t nmax = sizes[1] > sizes[0] ? sizes[1] : sizes[0];
    float *x = aligned_alloc(64, nmax * sizeof(float) + 64);
    float *dy = aligned_alloc(64, nmax * sizeof(float) + 64);
    float *out = aligned_alloc(64, nmax * sizeof(float) + 64);
    float *acc = aligned_alloc(64, 3 * W * sizeof(float));
    float *coef = aligned_alloc(64, 4 * W * sizeof(float));
    if (!x || !dy || !out || !acc || !coef)
        return 1;
    for (ptrdiff_t i = 0; i < nmax; i++) {
        x[i] = (float)(i % 977) * 0.001f;
        dy[i] = (float)(i % 613) * 0.002f - 0.5f;
        out[i] = 0;
    }
    for (ptrdiff_t j = 0; j < 4 * W; j++)
        coef[j] = 0.25f + 0.001f * (float)(j % 97);
    printf("%-8s %-10s %14s %16s %16s %14s %14s\n", "isa", "array", "plane_moments",
           "plane_backprop", "row_backprop", "rows_sweep", "rows_sweep_nt");
    for (int i = 0; i < cbp_isa_count(); i++) {
        cbp_isa_select(cbp_isa_name(i));
        for (int k = 0; k < 2; k++) {
            ptrdiff_t n = sizes[k] / W * W;
            char label[32];
            snprintf(label, sizeof label, "%.0f MiB", (double)n * sizeof(float) / (1 << 20));
            printf("%-8s %-10s %11.1f GB/s %13.1f GB/s %13.1f GB/s %11.1f GB/s %11.1f GB/s\n",
                   cbp_isa_active(), label, bench_plane_moments(x, n),
                   bench_plane_backprop(x, dy, n), bench_rows_backprop(x, dy, n, acc),
                   bench_rows_sweep(x, dy, out, n, coef, 0),
                   bench_rows_sweep(x, dy, out, n, coef, 1));
        }
    }
    free(x);
    free(dy);
    free(out);
    free(acc);
    free(coef);
    return 0;
}
