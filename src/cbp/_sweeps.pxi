# Elementwise sweeps: the dX formula and the normalizing affine map.
#
# Every sweep works from per-channel coefficients prepared in float64 and
# rounded once to the input type, and keeps the centred form
#     dx = a * dy + b * (x - mean_hi) + k      y = a * (x - mean_hi) + k
# rather than a * dy + b * x + k', which cancels badly when |mean| >> std.
# `coef` holds four rows of C values: mean_hi, a, b, k. A sweep with dy == NULL
# is the affine map. NCHW planes are swept in memory order, short ones as runs
# of whole planes; NHWC rows use the four coefficient rows tiled to the row
# width.
# An output may be the very array it reads (in-place); elements are read
# before they are written at the same index.
# Outputs larger than a last-level cache are written with non-temporal
# (streaming) stores, whole aligned 64-byte lines at a time: the core then
# does not first read each output line from memory (read for ownership), and
# the output does not push the inputs out of the caches. Same arithmetic, so
# the same bits as with plain stores.

cdef extern from *:
    """
    /* The sweep loops (see CBP_SIMD, CBP_DISPATCH); `omp simd` also keeps the
       in-place case (out == x or out == dy) vectorized. Rows: `rows` (1 or 4)
       rows `st` apart, per-element coefficients. The four-row loops read all
       four rows before they store: rows are often a multiple of 4 KiB apart,
       and a load that follows a store to the same address mod 4096 waits for
       it (4K aliasing). */
    #define CBP_DEFINE_SWEEPS(T, SUF)                                               \\
    static CBP_DISPATCH void cbp_rows_sweep_##SUF(const T *x, const T *dy, T *out,  \\
            int rows, Py_ssize_t st, Py_ssize_t m, const T *mh, const T *a,         \\
            const T *b, const T *k) {                                               \\
        Py_ssize_t j;                                                               \\
        if (rows == 4 && dy) {                                                      \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], bj = b[j], kj = k[j];                       \\
                T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];\\
                T g0 = dy[j], g1 = dy[st + j];                                      \\
                T g2 = dy[2 * st + j], g3 = dy[3 * st + j];                         \\
                out[j] = aj * g0 + bj * (x0 - s) + kj;                              \\
                out[st + j] = aj * g1 + bj * (x1 - s) + kj;                         \\
                out[2 * st + j] = aj * g2 + bj * (x2 - s) + kj;                     \\
                out[3 * st + j] = aj * g3 + bj * (x3 - s) + kj;                     \\
            }                                                                       \\
        } else if (rows == 4) {                                                     \\
            CBP_SIMD for (j = 0; j < m; j++) {                                      \\
                T s = mh[j], aj = a[j], kj = k[j];                                  \\
                T x0 = x[j], x1 = x[st + j], x2 = x[2 * st + j], x3 = x[3 * st + j];\\
                out[j] = aj * (x0 - s) + kj;                                        \\
                out[st + j] = aj * (x1 - s) + kj;                                   \\
                out[2 * st + j] = aj * (x2 - s) + kj;                               \\
                out[3 * st + j] = aj * (x3 - s) + kj;                               \\
            }                                                                       \\
        } else if (dy) {                                                            \\
            CBP_SIMD for (j = 0; j < m; j++)                                        \\
                out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j];               \\
        } else {                                                                    \\
            CBP_SIMD for (j = 0; j < m; j++) out[j] = a[j] * (x[j] - mh[j]) + k[j]; \\
        }                                                                           \\
    }

    /* nc consecutive planes of S elements (a contiguous run of channels of
       one image), per-channel coefficients broadcast inside each plane. */
    #define CBP_DEFINE_RUN_SWEEP(T, SUF)                                            \\
    static CBP_DISPATCH void cbp_run_sweep_##SUF(const T *x, const T *dy, T *out,   \\
            Py_ssize_t nc, Py_ssize_t S, const T *mh, const T *a, const T *b,       \\
            const T *k) {                                                           \\
        Py_ssize_t c, s;                                                            \\
        for (c = 0; c < nc; c++) {                                                  \\
            const T *xp = x + c * S;                                                \\
            T *op = out + c * S;                                                    \\
            T m = mh[c], ac = a[c], bc = b[c], kc = k[c];                           \\
            if (dy) {                                                               \\
                const T *gp = dy + c * S;                                           \\
                CBP_SIMD for (s = 0; s < S; s++)                                    \\
                    op[s] = ac * gp[s] + bc * (xp[s] - m) + kc;                     \\
            } else {                                                                \\
                CBP_SIMD for (s = 0; s < S; s++) op[s] = ac * (xp[s] - m) + kc;     \\
            }                                                                       \\
        }                                                                           \\
    }

    /* Non-temporal stores: SSE2, part of baseline x86-64. Elsewhere the
       sweeps keep plain stores (CBP_HAVE_NT == 0; cbp_stream_line then
       copies, unused). */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <emmintrin.h>
    #define CBP_HAVE_NT 1
    #else
    #define CBP_HAVE_NT 0
    #endif

    /* One 64-byte line from src to dst (64-byte aligned), bypassing the caches. */
    static inline void cbp_stream_line(void *dst, const void *src) {
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

    /* Make this thread's streaming stores visible before it signals others. */
    static void cbp_store_fence(void) {
    #if CBP_HAVE_NT
        _mm_sfence();
    #endif
    }

    /* Elements of T from p to the next 64-byte boundary (p aligned to T). */
    #define CBP_TO_LINE(p, T) ((Py_ssize_t)(((64 - ((size_t)(p) & 63)) & 63) / sizeof(T)))

    /* cbp_rows_sweep with streaming stores: the aligned whole lines of each
       row go through a 64-byte buffer per row, the rest through
       cbp_rows_sweep. Four rows need st * sizeof(T) to be a multiple of 64,
       so that they share their alignment; else they go one at a time. */
    #define CBP_DEFINE_SWEEPS_NT(T, SUF)                                            \
    static CBP_DISPATCH void cbp_rows_sweep_nt_##SUF(const T *x, const T *dy,       \
            T *out, int rows, Py_ssize_t st, Py_ssize_t m, const T *mh,             \
            const T *a, const T *b, const T *k) {                                   \
        enum { V = 64 / sizeof(T) };                                                \
        T t[4][V];                                                                  \
        Py_ssize_t p, j, l;                                                         \
        int r;                                                                      \
        if ((size_t)out % sizeof(T) != 0) {                                         \
            cbp_rows_sweep_##SUF(x, dy, out, rows, st, m, mh, a, b, k);             \
            return;                                                                 \
        }                                                                           \
        if (rows == 4 && (st * (Py_ssize_t)sizeof(T)) % 64 != 0) {                  \
            for (r = 0; r < 4; r++)                                                 \
                cbp_rows_sweep_nt_##SUF(x + r * st, dy ? dy + r * st : NULL,        \
                                        out + r * st, 1, st, m, mh, a, b, k);       \
            return;                                                                 \
        }                                                                           \
        p = CBP_TO_LINE(out, T);                                                    \
        if (p > m) p = m;                                                           \
        if (p > 0) cbp_rows_sweep_##SUF(x, dy, out, rows, st, p, mh, a, b, k);      \
        j = p;                                                                      \
        if (rows == 4 && dy) {                                                      \
            for (; j + V <= m; j += V) {                                            \
                CBP_SIMD for (l = 0; l < V; l++) {                                  \
                    T s = mh[j + l], aj = a[j + l], bj = b[j + l], kj = k[j + l];   \
                    t[0][l] = aj * dy[j + l] + bj * (x[j + l] - s) + kj;            \
                    t[1][l] = aj * dy[st + j + l] + bj * (x[st + j + l] - s) + kj;  \
                    t[2][l] = aj * dy[2 * st + j + l]                               \
                              + bj * (x[2 * st + j + l] - s) + kj;                  \
                    t[3][l] = aj * dy[3 * st + j + l]                               \
                              + bj * (x[3 * st + j + l] - s) + kj;                  \
                }                                                                   \
                cbp_stream_line(out + j, t[0]);                                     \
                cbp_stream_line(out + st + j, t[1]);                                \
                cbp_stream_line(out + 2 * st + j, t[2]);                            \
                cbp_stream_line(out + 3 * st + j, t[3]);                            \
            }                                                                       \
        } else if (rows == 4) {                                                     \
            for (; j + V <= m; j += V) {                                            \
                CBP_SIMD for (l = 0; l < V; l++) {                                  \
                    T s = mh[j + l], aj = a[j + l], kj = k[j + l];                  \
                    t[0][l] = aj * (x[j + l] - s) + kj;                             \
                    t[1][l] = aj * (x[st + j + l] - s) + kj;                        \
                    t[2][l] = aj * (x[2 * st + j + l] - s) + kj;                    \
                    t[3][l] = aj * (x[3 * st + j + l] - s) + kj;                    \
                }                                                                   \
                cbp_stream_line(out + j, t[0]);                                     \
                cbp_stream_line(out + st + j, t[1]);                                \
                cbp_stream_line(out + 2 * st + j, t[2]);                            \
                cbp_stream_line(out + 3 * st + j, t[3]);                            \
            }                                                                       \
        } else if (dy) {                                                            \
            for (; j + V <= m; j += V) {                                            \
                CBP_SIMD for (l = 0; l < V; l++)                                    \
                    t[0][l] = a[j + l] * dy[j + l] + b[j + l] * (x[j + l] - mh[j + l]) \
                              + k[j + l];                                           \
                cbp_stream_line(out + j, t[0]);                                     \
            }                                                                       \
        } else {                                                                    \
            for (; j + V <= m; j += V) {                                            \
                CBP_SIMD for (l = 0; l < V; l++)                                    \
                    t[0][l] = a[j + l] * (x[j + l] - mh[j + l]) + k[j + l];         \
                cbp_stream_line(out + j, t[0]);                                     \
            }                                                                       \
        }                                                                           \
        if (j < m)                                                                  \
            cbp_rows_sweep_##SUF(x + j, dy ? dy + j : NULL, out + j, rows, st,      \
                                 m - j, mh + j, a + j, b + j, k + j);               \
    }                                                                               \
    /* cbp_run_sweep with streaming stores for the aligned whole lines of each  \
       plane; its first and last partial lines go through cbp_run_sweep. */     \
    static CBP_DISPATCH void cbp_run_sweep_nt_##SUF(const T *x, const T *dy,        \
            T *out, Py_ssize_t nc, Py_ssize_t S, const T *mh, const T *a,           \
            const T *b, const T *k) {                                               \
        enum { V = 64 / sizeof(T) };                                                \
        T t[V];                                                                     \
        Py_ssize_t c, s, p, e, l;                                                   \
        if ((size_t)out % sizeof(T) != 0) {                                         \
            cbp_run_sweep_##SUF(x, dy, out, nc, S, mh, a, b, k);                    \
            return;                                                                 \
        }                                                                           \
        for (c = 0; c < nc; c++) {                                                  \
            const T *xp = x + c * S, *gp = dy ? dy + c * S : NULL;                  \
            T *op = out + c * S;                                                    \
            T m = mh[c], ac = a[c], bc = b[c], kc = k[c];                           \
            p = CBP_TO_LINE(op, T);                                                 \
            if (p > S) p = S;                                                       \
            e = p + (S - p) / V * V;                                                \
            cbp_run_sweep_##SUF(xp, gp, op, 1, p, mh + c, a + c, b + c, k + c);     \
            for (s = p; s < e; s += V) {                                            \
                if (gp) {                                                           \
                    CBP_SIMD for (l = 0; l < V; l++)                                \
                        t[l] = ac * gp[s + l] + bc * (xp[s + l] - m) + kc;          \
                } else {                                                            \
                    CBP_SIMD for (l = 0; l < V; l++) t[l] = ac * (xp[s + l] - m) + kc; \
                }                                                                   \
                cbp_stream_line(op + s, t);                                         \
            }                                                                       \
            cbp_run_sweep_##SUF(xp + e, gp ? gp + e : NULL, op + e, 1, S - e,       \
                                mh + c, a + c, b + c, k + c);                       \
        }                                                                           \
    }

    CBP_DEFINE_SWEEPS(float, f32)
    CBP_DEFINE_SWEEPS(double, f64)
    CBP_DEFINE_RUN_SWEEP(float, f32)
    CBP_DEFINE_RUN_SWEEP(double, f64)
    CBP_DEFINE_SWEEPS_NT(float, f32)
    CBP_DEFINE_SWEEPS_NT(double, f64)
    """
    void cbp_run_sweep_f32(const float* x, const float* dy, float* out, Py_ssize_t nc,
                           Py_ssize_t S, const float* mh, const float* a, const float* b,
                           const float* k) noexcept nogil
    void cbp_run_sweep_f64(const double* x, const double* dy, double* out, Py_ssize_t nc,
                           Py_ssize_t S, const double* mh, const double* a, const double* b,
                           const double* k) noexcept nogil
    void cbp_rows_sweep_f32(const float* x, const float* dy, float* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const float* mh, const float* a,
                            const float* b, const float* k) noexcept nogil
    void cbp_rows_sweep_f64(const double* x, const double* dy, double* out, int rows,
                            Py_ssize_t st, Py_ssize_t m, const double* mh, const double* a,
                            const double* b, const double* k) noexcept nogil
    void cbp_run_sweep_nt_f32(const float* x, const float* dy, float* out, Py_ssize_t nc,
                              Py_ssize_t S, const float* mh, const float* a, const float* b,
                              const float* k) noexcept nogil
    void cbp_run_sweep_nt_f64(const double* x, const double* dy, double* out, Py_ssize_t nc,
                              Py_ssize_t S, const double* mh, const double* a,
                              const double* b, const double* k) noexcept nogil
    void cbp_rows_sweep_nt_f32(const float* x, const float* dy, float* out, int rows,
                               Py_ssize_t st, Py_ssize_t m, const float* mh, const float* a,
                               const float* b, const float* k) noexcept nogil
    void cbp_rows_sweep_nt_f64(const double* x, const double* dy, double* out, int rows,
                               Py_ssize_t st, Py_ssize_t m, const double* mh,
                               const double* a, const double* b, const double* k) noexcept nogil
    void store_fence "cbp_store_fence"() noexcept nogil
    int CBP_HAVE_NT


cdef enum:
    # elements per task of the short-plane NCHW sweep
    RUN_SWEEP_ELEMS = 16384
    # NHWC sweeps over arrays larger than this (a typical last-level cache)
    # take long rows from four quarters of a unit
    SWEEP_QUARTER_BYTES = 33554432
    # Outputs of at least this many bytes are written with streaming stores:
    # with x (and dy) beside them they outgrow a typical last-level cache
    # (32 MiB), so the output would not stay in cache for its reader anyway.
    NT_STORE_BYTES = 16777216
    # NCHW planes and NHWC (fused) rows of fewer bytes keep plain stores: a
    # call then streams too few whole lines to pay for its set-up (rows of
    # 256 bytes measured 1.2x slower with streaming stores, rows of 1 KiB
    # 0.9x the time)
    NT_PLANE_BYTES = 512
    NT_ROW_BYTES = 1024


cdef inline void run_sweep(const floating* x, const floating* dy, floating* out,
                           Py_ssize_t nc, Py_ssize_t S, const floating* coef, Py_ssize_t C,
                           Py_ssize_t c, bint nt) noexcept nogil:
    if floating is float:
        if nt:
            cbp_run_sweep_nt_f32(x, dy, out, nc, S, coef + c, coef + C + c,
                                 coef + 2 * C + c, coef + 3 * C + c)
        else:
            cbp_run_sweep_f32(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                              coef + 3 * C + c)
    else:
        if nt:
            cbp_run_sweep_nt_f64(x, dy, out, nc, S, coef + c, coef + C + c,
                                 coef + 2 * C + c, coef + 3 * C + c)
        else:
            cbp_run_sweep_f64(x, dy, out, nc, S, coef + c, coef + C + c, coef + 2 * C + c,
                              coef + 3 * C + c)


cdef inline void rows_sweep(const floating* x, const floating* dy, floating* out,
                            Py_ssize_t nrows, Py_ssize_t st, Py_ssize_t W, Py_ssize_t last_w,
                            bint four, const floating* coef_w, bint nt) noexcept nogil:
    # nrows rows st apart, each W wide but the last (last_w); coef_w is [4, W];
    # four rows per coefficient load where `four`, else one; streaming stores
    # where `nt`
    cdef Py_ssize_t i = 0, m, full = nrows if last_w == W else nrows - 1
    cdef int rows
    cdef const floating* g
    cdef const floating* a = coef_w + W
    cdef const floating* b = coef_w + 2 * W
    cdef const floating* k = coef_w + 3 * W
    while i < nrows:
        rows = 4 if (four and i + 4 <= full) else 1
        g = NULL if dy == NULL else dy + i * st
        m = W if i < full else last_w
        if floating is float:
            if nt:
                cbp_rows_sweep_nt_f32(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
            else:
                cbp_rows_sweep_f32(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
        else:
            if nt:
                cbp_rows_sweep_nt_f64(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
            else:
                cbp_rows_sweep_f64(x + i * st, g, out + i * st, rows, st, m, coef_w, a, b, k)
        i = i + rows


cdef int nchw_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0, Py_ssize_t cb1,
                    const floating* coef, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) for channel blocks cb0..cb1."""
    cdef Py_ssize_t c0 = cb0 * p.cb, nc = min(C, cb1 * p.cb) - c0, i, n, off, nr, r0, r1
    cdef Py_ssize_t u, cb, g, c1
    cdef bint nt = (CBP_HAVE_NT and N * C * S * <Py_ssize_t>sizeof(floating) >= NT_STORE_BYTES
                    and S * <Py_ssize_t>sizeof(floating) >= NT_PLANE_BYTES)
    if p.cols:
        # Short planes of a column plan (units far apart in memory): tasks are
        # runs of whole planes in memory order, image outer (sweeping a
        # channel block image after image, 4 KiB pieces far apart, measured
        # 1.7x-2.2x slower).
        nr = ceil_div(nc * S, RUN_SWEEP_ELEMS)
        for i in prange(N * nr, schedule='static', num_threads=nthreads):
            r0 = c0 + (i % nr) * nc // nr
            r1 = c0 + (i % nr + 1) * nc // nr
            off = ((i // nr) * C + r0) * S
            run_sweep(x + off, NULL if dy == NULL else dy + off, out + off, r1 - r0, S,
                      coef, C, r0, nt)
            if nt:
                store_fence()
        return 0
    # Plane plans: the reduction's units, in the same static schedule, so in
    # the fused passes each thread sweeps the data it has just summed (still
    # in its own caches; sweeping a neighbour's share measured 1.2x slower).
    for u in prange(cb0 * p.ng, cb1 * p.ng, schedule='static', num_threads=nthreads):
        cb = u // p.ng
        g = u % p.ng
        r0 = cb * p.cb
        c1 = min(C, r0 + p.cb)
        for n in range(g * N // p.ng, (g + 1) * N // p.ng):
            off = (n * C + r0) * S
            run_sweep(x + off, NULL if dy == NULL else dy + off, out + off, c1 - r0, S,
                      coef, C, r0, nt)
        if nt:
            store_fence()
    return 0


cdef void nhwc_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                     Py_ssize_t C, const floating* coef_w, int nthreads) noexcept nogil:
    """dX (or, with dy == NULL, the affine map) over R rows of C channels.

    Rows are fused k at a time (column_widen) and swept in groups of four
    fused rows; coef_w is [4, k * C]."""
    cdef Py_ssize_t k = column_widen(C), W = k * C, nsr = ceil_div(R, k)
    cdef Py_ssize_t i, r0, r1, nr, nu, ng, q, j
    # Four rows per coefficient load where the coefficients outgrow L1
    # (W >= 2048) or the array stays in cache; shorter rows streamed from
    # memory measured faster one at a time.
    cdef bint four = column_quarters(R, C, sizeof(floating))
    cdef bint nt = (CBP_HAVE_NT and R * C * <Py_ssize_t>sizeof(floating) >= NT_STORE_BYTES
                    and W * <Py_ssize_t>sizeof(floating) >= NT_ROW_BYTES)
    if W >= QUARTER_W and R * C * sizeof(floating) > SWEEP_QUARTER_BYTES:
        # Long rows from memory: the four rows of a step come from the four
        # quarters of a unit, as in column_backprop (k == 1 here). Measured
        # 0.88x the time on 256x2048x7x7 NHWC, but 1.13x on 32x2048x7x7,
        # which stays in L3.
        nu = column_units(R)
        for i in prange(nu, schedule='static', num_threads=nthreads):
            r0 = i * R // nu
            nr = (i + 1) * R // nu - r0
            q = nr // 4
            for j in range(r0, r0 + q):
                rows_sweep(x + j * C, NULL if dy == NULL else dy + j * C, out + j * C,
                           4, q * C, C, C, True, coef_w, nt)
            rows_sweep(x + (r0 + 4 * q) * C, NULL if dy == NULL else dy + (r0 + 4 * q) * C,
                       out + (r0 + 4 * q) * C, nr - 4 * q, C, C, C, False, coef_w, nt)
            if nt:
                store_fence()
        return
    # Units of whole groups of four fused rows (one store fence per unit with
    # streaming stores); only the last fused row of the last unit can be short.
    ng = ceil_div(nsr, 4)
    nu = max(1, min(ng, MIN_UNITS))
    for i in prange(nu, schedule='static', num_threads=nthreads):
        r0 = 4 * k * (i * ng // nu)
        r1 = min(R, 4 * k * ((i + 1) * ng // nu))
        nr = ceil_div(r1 - r0, k)
        rows_sweep(x + r0 * C, NULL if dy == NULL else dy + r0 * C, out + r0 * C, nr, W, W,
                   (r1 - r0 - (nr - 1) * k) * C, four, coef_w, nt)
        if nt:
            store_fence()
