/* What every kernel file shares: the loop pragmas, the instruction-set
   target of the file being compiled, and the exact (count, mean, M2) merge. */
#ifndef CBP_COMMON_H
#define CBP_COMMON_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "cbp_tuning.h"

/* `omp simd` lets the compiler emit packed SIMD code for loops over
   independent accumulators and for in-place sweeps; it vectorizes only and
   reorders no sum. Without it gcc vectorizes these loops across the wrong
   axis (measured 2.8x slower). Serial builds get it from -fopenmp-simd
   (CBP_OPENMP_SIMD), MSVC from /openmp:experimental. */
#if defined(_MSC_VER) && defined(_OPENMP)
#define CBP_SIMD __pragma(omp simd)
#elif defined(_OPENMP) || defined(CBP_OPENMP_SIMD)
#define CBP_SIMD _Pragma("omp simd")
#else
#define CBP_SIMD
#endif

/* `omp simd` with a sum reduction into v (an integer count); with a min
   reduction into mn and a sum into v. */
#if defined(_MSC_VER) && defined(_OPENMP)
#define CBP_SIMD_COUNT(v) __pragma(omp simd reduction(+ : v))
#define CBP_SIMD_MIN_SUM(mn, v) __pragma(omp simd reduction(min : mn) reduction(+ : v))
#elif defined(_OPENMP) || defined(CBP_OPENMP_SIMD)
#define CBP_PRAGMA(x) _Pragma(#x)
#define CBP_SIMD_COUNT(v) CBP_PRAGMA(omp simd reduction(+ : v))
#define CBP_SIMD_MIN_SUM(mn, v) CBP_PRAGMA(omp simd reduction(min : mn) reduction(+ : v))
#else
#define CBP_SIMD_COUNT(v)
#define CBP_SIMD_MIN_SUM(mn, v)
#endif

/* A hint to start loading a cache line that is read soon (never faults,
   also past the end of an array); a no-op where unavailable. */
#if defined(__GNUC__) || defined(__clang__)
#define CBP_PREFETCH(p) __builtin_prefetch(p)
#else
#define CBP_PREFETCH(p) ((void)0)
#endif

/* Force-inlined helpers keep their callers' arrays in registers. */
#if defined(_MSC_VER)
#define CBP_INLINE static __forceinline
#else
#define CBP_INLINE static inline __attribute__((always_inline))
#endif

/* Kept out of line: the rare paths' bodies stay out of the hot loops that
   call them. */
#if defined(_MSC_VER)
#define CBP_NOINLINE static __declspec(noinline)
#else
#define CBP_NOINLINE static __attribute__((noinline))
#endif

/* Non-temporal stores: SSE2, part of baseline x86-64. Elsewhere the sweeps
   keep plain stores (CBP_HAVE_NT == 0; cbp_stream_line then copies, unused). */
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define CBP_HAVE_NT 1
#else
#define CBP_HAVE_NT 0
#endif

/* One 64-byte line from src to dst (64-byte aligned), bypassing the caches. */
static inline void cbp_stream_line(void *dst, const void *src)
{
#if CBP_HAVE_NT
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    _mm_stream_si128(d, _mm_loadu_si128(s));
    _mm_stream_si128(d + 1, _mm_loadu_si128(s + 1));
    _mm_stream_si128(d + 2, _mm_loadu_si128(s + 2));
    _mm_stream_si128(d + 3, _mm_loadu_si128(s + 3));
#else
    memcpy(dst, src, 64);
#endif
}

/* Range checks of the float32 paths (wide.h says why). A float32 block sum
   s of squares (as a double) is trusted when it is finite and
   |s| >= CBP_F32_TINY: below that its terms may have lost digits to
   underflow; an overflow anywhere left an inf or NaN. A float64 coefficient
   is used rounded to float32 when it is 0 or a normal float32 with room
   below FLT_MAX. NaN fails every check. */
static inline int cbp_f32_sum_ok(double s)
{
    double a = fabs(s);
    return a >= CBP_F32_TINY && a <= DBL_MAX;
}

static inline int cbp_f32_coef_ok(double c)
{
    double a = fabs(c);
    return c == 0.0 || (a >= FLT_MIN && a <= 0x1p126);
}

/* Whether any of m pairs (s1[j * st], s2[j * st]) of float64 sums of
   float32 work fails the check: not finite, or |s2| below tiny (n *
   CBP_F32_TINY for n terms). The drivers check every column of every unit,
   so it must vectorize: it lives in checks.c, out of line (inlined into the
   Cython drivers, gcc kept it a scalar loop). */
int cbp_any_bad(const double *s1, const double *s2, ptrdiff_t st, ptrdiff_t m, double tiny);

/* Chan, Golub & LeVeque: exact combination of two (count, mean, M2). */
static inline void cbp_chan_merge(double *n_a, double *mean_a, double *m2_a, double n_b,
                                  double mean_b, double m2_b)
{
    double n, delta;
    if (n_b == 0)
        return;
    if (*n_a == 0) {
        *n_a = n_b;
        *mean_a = mean_b;
        *m2_a = m2_b;
        return;
    }
    n = *n_a + n_b;
    delta = mean_b - *mean_a;
    *mean_a = *mean_a + delta * (n_b / n);
    *m2_a = *m2_a + m2_b + delta * delta * (*n_a * (n_b / n));
    *n_a = n;
}

/* Scratch rows that are stored to inside a loop over rows of x are placed at
   CBP_SCRATCH_OFFSET + CBP_SCRATCH_SLOT * slot (mod 4096) from a row of x:
   for row strides that are multiples of 1 KiB (C = 256, 1024, 2048 float32)
   an accumulator and the row being read could otherwise share their address
   bits 11:0, and every load would wait on an unrelated store (4K aliasing).
   The residue is rounded down to a cache line: NumPy's large arrays start
   16 bytes past one, and scratch rows that copied that offset made half the
   vector stores split two lines (measured 1.12x-1.2x the time of the row
   loop, NHWC backprop sums, C = 256 to 2048). Returns the first address >=
   raw with that residue; raw must have 4096 spare bytes. */
static inline void *cbp_place(void *raw, const void *anchor, int slot)
{
    size_t want = ((size_t)anchor + CBP_SCRATCH_OFFSET + CBP_SCRATCH_SLOT * (size_t)slot)
                  & (4095 & ~(size_t)63);
    size_t cur = (size_t)raw & 4095;
    return (char *)raw + ((want - cur) & 4095);
}

/* The tiled coefficient rows of the NHWC sweeps (tile_coef in _drivers.pxi)
   are W + CBP_COEF_PAD elements apart, and the first CBP_COEF_EXT elements
   after each row repeat its first ones, so that flat_sweep_nt reads the
   coefficients of a line that straddles two rows in one run. Padding of
   whole pages (4 KiB of float32, 8 KiB of float64; the float64 rows of a
   float32 sweep share the float32 rows' stride) keeps the rows' offsets in
   a page what they were without it: rows W + 16 apart moved the dX sweep of
   256x1024 float32 (in cache) to 1.12x-1.14x the time (4K aliasing). */
#define CBP_COEF_PAD 1024
#define CBP_COEF_EXT 16

/* Chan's merge for m values at once that share the counts n_a, n_b
   (channels of one unit, columns of one block): no division per value, and
   for each value the same operations as cbp_chan_merge. mean and m2 step by
   sd, bmean and bm2 by ss; mean and m2 start at 0 for n_a == 0. Inline: its
   callers' strides are constants (an out-of-line copy with general strides
   measured 1.04x the time of channel_stats on 4096x1024). */
static inline void cbp_merge_into(double *mean, double *m2, ptrdiff_t sd, const double *bmean,
                                  const double *bm2, ptrdiff_t ss, ptrdiff_t m, double n_a,
                                  double n_b)
{
    ptrdiff_t j;
    double w, v;
    if (n_b == 0)
        return;
    if (n_a == 0) {
        /* the same sums as below with w = 1, v = 0, without delta * delta * 0,
           which is NaN once delta * delta overflows (|mean| > ~1e154) */
        CBP_SIMD for (j = 0; j < m; j++) {
            mean[j * sd] = mean[j * sd] + (bmean[j * ss] - mean[j * sd]);
            m2[j * sd] = m2[j * sd] + bm2[j * ss];
        }
        return;
    }
    w = n_b / (n_a + n_b);
    v = n_a * w;
    CBP_SIMD for (j = 0; j < m; j++) {
        double delta = bmean[j * ss] - mean[j * sd];
        mean[j * sd] = mean[j * sd] + delta * w;
        m2[j * sd] = m2[j * sd] + bm2[j * ss] + delta * delta * v;
    }
}

/* s1[j] += v1[j * sv], s2[j] += v2[j * sv] for m values: the combines' sums
   of partial sums, each value in its own fixed order, so a vector loop gives
   the bits of the scalar one. In C because Cython's loop through the
   Combine struct reloaded its pointers after every store and ran scalar
   (the row combine of 4096x1024 NHWC backprop sums took 9% of the call). */
static inline void cbp_add_into(double *s1, double *s2, const double *v1, const double *v2,
                                ptrdiff_t sv, ptrdiff_t m)
{
    ptrdiff_t j;
    CBP_SIMD for (j = 0; j < m; j++) {
        s1[j] = s1[j] + v1[j * sv];
        s2[j] = s2[j] + v2[j * sv];
    }
}

/* The same with each value first folded over k columns C apart (a fused
   row's k pixels of a channel): f = ((0 + v[c]) + v[C + c]) + ...; s += f. */
static inline void cbp_add_folded(double *s1, double *s2, const double *v1, const double *v2,
                                  ptrdiff_t C, ptrdiff_t k, ptrdiff_t m)
{
    ptrdiff_t j, i;
    CBP_SIMD for (j = 0; j < m; j++) {
        double fa = 0.0, fb = 0.0;
        for (i = 0; i < k; i++) {
            fa = fa + v1[i * C + j];
            fb = fb + v2[i * C + j];
        }
        s1[j] = s1[j] + fa;
        s2[j] = s2[j] + fb;
    }
}

/* Make this thread's streaming stores visible before it signals others. */
static inline void cbp_store_fence(void)
{
#if CBP_HAVE_NT
    _mm_sfence();
#endif
}

#endif
