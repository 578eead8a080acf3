# Work decomposition shared by every kernel.
#
# A reduction is cut into units that depend only on the array's shape, never on
# the thread count. One thread sums a unit in a fixed order, and the units of a
# channel are combined in a fixed order, so every result is bitwise identical
# for any num_threads; threads only decide who computes which unit.
#
# Arrays reach the kernels as (N, C, S) C-contiguous blocks: NCHW keeps the
# spatial size in S; NHWC (and NCHW with S == 1) arrives as (rows, C, 1) and
# runs the "column" kernels, which sweep whole rows of C channels.

cdef enum:
    # Column kernels: (fused) rows accumulated in the input type before a
    # float64 flush, i.e. at most this many terms per float32 accumulator.
    ROW_FLUSH = 32
    # NCHW: channels are grouped so that each image contributes one contiguous
    # run of at least this many elements to a unit (short planes such as 7x7).
    RUN_ELEMS = 1024
    # NCHW: at most this many elements in a unit, so the units inside one
    # cache block are numerous enough to balance the threads.
    UNIT_ELEMS = 65536
    # NCHW planes shorter than this are summed as columns of rows (one row per
    # image and channel block) instead of plane by plane: the moments pass,
    # whose per-plane cost (two passes and a merge) is high. Backprop sums
    # are taken plane by plane for any S > 1 (the planes then stream memory
    # in order; measured up to 1.25x faster on 7x7 and 14x14 planes).
    SHORT_PLANE = 256
    SHORT_PLANE_BACKPROP = 2
    # Enough units to keep this many threads busy.
    MIN_UNITS = 64
    # Rows (pixels of NHWC) per column unit, at least: 32x2048x7x7 NHWC has
    # only 1568 rows; 64 units of 24 rows spent a quarter of the time on
    # per-unit work.
    UNIT_ROWS = 64
    # Column kernels fuse consecutive rows until a fused row has at least this
    # many elements, so a small C still gives long vectorizable inner loops.
    WIDEN = 64
    # Column backprop adds four rows per step (from the four quarters of a
    # unit), and NHWC sweeps load their coefficients once per four rows, on
    # rows of at least QUARTER_W elements and on arrays of at most
    # QUARTER_BYTES, which stay in cache (column_quarters). On longer-than-cache
    # arrays of shorter rows, eight concurrent streams measured 1.06x-1.15x
    # slower than two.
    QUARTER_W = 2048
    QUARTER_BYTES = 4194304


cdef struct PlanePlan:
    Py_ssize_t cb     # channels per channel block
    Py_ssize_t ncb    # number of channel blocks
    Py_ssize_t ng     # number of image groups; a unit is (channel block, image group)
    Py_ssize_t sb     # channel blocks per cache block (the fused passes' superblock)
    bint cols         # short planes summed by the column kernels


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline PlanePlan plane_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                 Py_ssize_t L, Py_ssize_t short_plane) noexcept nogil:
    """Units for an (N, C, S) block whose cache blocks hold at most L channels
    (L = C when nothing is re-read); planes shorter than short_plane are
    summed as columns."""
    cdef PlanePlan p
    cdef Py_ssize_t k
    p.cols = S < short_plane
    if p.cols:
        # Column kernels: a row is one image's run of a small channel block.
        p.cb = min(C, ceil_div(RUN_ELEMS, S))
        p.ncb = ceil_div(C, p.cb)
        p.ng = max(ceil_div(N * p.cb * S, UNIT_ELEMS), ceil_div(MIN_UNITS, p.ncb))
        p.ng = max(1, min(p.ng, N))
        p.sb = max(1, L // p.cb)
    else:
        # Plane kernels: each unit reads, image after image, one contiguous run
        # of a channel block, so memory is streamed in order; a cache block is
        # cut into k channel blocks so it still holds MIN_UNITS units.
        p.ng = max(1, min(N, MIN_UNITS))
        k = ceil_div(MIN_UNITS, p.ng)
        p.cb = max(1, min(L, C) // k)
        p.ncb = ceil_div(C, p.cb)
        p.sb = k
    return p


cdef inline Py_ssize_t column_units(Py_ssize_t R) noexcept nogil:
    # units of at least UNIT_ROWS rows: a unit's fixed cost (zeroing, flushing
    # and combining [C, 2] partial sums) is that of a few rows
    return max(1, min(ceil_div(R, UNIT_ROWS), MIN_UNITS))


cdef inline bint column_quarters(Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize) noexcept nogil:
    return C * column_widen(C) >= QUARTER_W or R * C * itemsize <= QUARTER_BYTES


cdef inline Py_ssize_t column_widen(Py_ssize_t C) noexcept nogil:
    if C >= WIDEN:
        return 1
    return ceil_div(WIDEN, C)


cdef extern from *:
    """
    /* The innermost loops are small C functions (in the .pxi files next to
       their callers) for two reasons. CBP_SIMD: `#pragma omp simd` lets the
       compiler emit packed SIMD code for loops over independent accumulators
       and for in-place sweeps; it vectorizes only, reorders no sum. Cython
       cannot emit it, and without it gcc vectorizes these loops across the
       wrong axis (measured 2.8x slower). CBP_DISPATCH: on Linux x86-64 with
       gcc, each loop is also compiled for AVX2 and picked at load time (the
       wheel stays baseline x86-64); built with -ffp-contract=off, both clones
       round identically, so results do not depend on the CPU either. */
    #if defined(_OPENMP) && !defined(_MSC_VER)
    #define CBP_SIMD _Pragma("omp simd")
    #else
    #define CBP_SIMD
    #endif
    /* A hint to start loading a cache line that is read soon (never faults,
       also past the end of an array); a no-op where unavailable. */
    #if defined(__GNUC__) || defined(__clang__)
    #define CBP_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define CBP_PREFETCH(p) ((void)0)
    #endif
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CBP_DISPATCH __attribute__((target_clones("avx2", "default")))
    #else
    #define CBP_DISPATCH
    #endif

    /* Scratch rows that are stored to inside a loop over rows of x are
       placed at start + 512 + 1024 * slot (mod 4096) relative to a row of x.
       Otherwise, for row strides that are multiples of 1 KiB (C = 256, 1024,
       2048 float32, ...) an accumulator and the row being read can share
       their address bits 11:0 and every load waits on an unrelated store
       (4K aliasing; measured up to 2x slower). cbp_place returns the first
       address >= raw with that residue; raw must have 4096 spare bytes. */
    static void *cbp_place(void *raw, const void *anchor, int slot) {
        size_t want = ((size_t)anchor + 512 + 1024 * (size_t)slot) & 4095;
        size_t cur = (size_t)raw & 4095;
        return (char *)raw + ((want - cur) & 4095);
    }

    /* Chan, Golub & LeVeque: exact combination of two (count, mean, M2). */
    static inline void cbp_chan_merge(double *n_a, double *mean_a, double *m2_a,
                                      double n_b, double mean_b, double m2_b) {
        double n, delta;
        if (n_b == 0) return;
        if (*n_a == 0) { *n_a = n_b; *mean_a = mean_b; *m2_a = m2_b; return; }
        n = *n_a + n_b;
        delta = mean_b - *mean_a;
        *mean_a = *mean_a + delta * (n_b / n);
        *m2_a = *m2_a + m2_b + delta * delta * (*n_a * (n_b / n));
        *n_a = n;
    }

    /* The same merge for m values at once that share the counts n_a, n_b
       (channels of one unit, columns of one block): no division per value,
       and for each value the same operations as cbp_chan_merge. mean and m2
       step by sd, bmean and bm2 by ss; mean and m2 start at 0 for n_a == 0. */
    static void cbp_merge_into(double *mean, double *m2, Py_ssize_t sd,
                               const double *bmean, const double *bm2, Py_ssize_t ss,
                               Py_ssize_t m, double n_a, double n_b) {
        Py_ssize_t j;
        double w, v;
        if (n_b == 0) return;
        w = n_b / (n_a + n_b);
        v = n_a * w;
        CBP_SIMD for (j = 0; j < m; j++) {
            double delta = bmean[j * ss] - mean[j * sd];
            mean[j * sd] = mean[j * sd] + delta * w;
            m2[j * sd] = m2[j * sd] + bm2[j * ss] + delta * delta * v;
        }
    }
    """
    void* cbp_place(void* raw, const void* anchor, int slot) noexcept nogil
    void merge_into "cbp_merge_into"(double* mean, double* m2, Py_ssize_t sd,
                                     const double* bmean, const double* bm2, Py_ssize_t ss,
                                     Py_ssize_t m, double n_a, double n_b) noexcept nogil
