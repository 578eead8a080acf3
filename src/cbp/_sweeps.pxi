# Elementwise sweeps: the dX formula and the normalizing affine map.
#
# Every sweep works from per-channel coefficients prepared in float64 and
# rounded once to the input type, and keeps the centred form
#     dx = a * dy + b * (x - mean_hi) + k      y = a * (x - mean_hi) + k
# rather than a * dy + b * x + k', which cancels badly when |mean| >> std.
# `coef` holds four rows of C values: mean_hi, a, b, k. The column kernels use
# the same four rows tiled to the fused row width W = k * C.
# An output may be the very array it reads (in-place); elements are read
# before they are written at the same index.


cdef extern from *:
    """
    /* The sweep loops (see CBP_SIMD, CBP_DISPATCH); `omp simd` also keeps the
       in-place case (out == x or out == dy) vectorized. */
    #define CBP_DEFINE_SWEEPS(T, SUF)                                               \\
    static CBP_DISPATCH void cbp_plane_dx_##SUF(const T *x, const T *dy, T *out,    \\
            Py_ssize_t S, T mh, T a, T b, T k) {                                    \\
        Py_ssize_t s;                                                               \\
        CBP_SIMD for (s = 0; s < S; s++) out[s] = a * dy[s] + b * (x[s] - mh) + k;  \\
    }                                                                               \\
    static CBP_DISPATCH void cbp_plane_affine_##SUF(const T *x, T *out,             \\
            Py_ssize_t S, T mh, T a, T k) {                                         \\
        Py_ssize_t s;                                                               \\
        CBP_SIMD for (s = 0; s < S; s++) out[s] = a * (x[s] - mh) + k;              \\
    }                                                                               \\
    static CBP_DISPATCH void cbp_row_dx_##SUF(const T *x, const T *dy, T *out,      \\
            Py_ssize_t m, const T *mh, const T *a, const T *b, const T *k) {        \\
        Py_ssize_t j;                                                               \\
        CBP_SIMD for (j = 0; j < m; j++)                                            \\
            out[j] = a[j] * dy[j] + b[j] * (x[j] - mh[j]) + k[j];                   \\
    }                                                                               \\
    static CBP_DISPATCH void cbp_row_affine_##SUF(const T *x, T *out,               \\
            Py_ssize_t m, const T *mh, const T *a, const T *k) {                    \\
        Py_ssize_t j;                                                               \\
        CBP_SIMD for (j = 0; j < m; j++) out[j] = a[j] * (x[j] - mh[j]) + k[j];     \\
    }

    CBP_DEFINE_SWEEPS(float, f32)
    CBP_DEFINE_SWEEPS(double, f64)
    """
    void cbp_plane_dx_f32(const float* x, const float* dy, float* out, Py_ssize_t S,
                          float mh, float a, float b, float k) noexcept nogil
    void cbp_plane_dx_f64(const double* x, const double* dy, double* out, Py_ssize_t S,
                          double mh, double a, double b, double k) noexcept nogil
    void cbp_plane_affine_f32(const float* x, float* out, Py_ssize_t S, float mh, float a,
                              float k) noexcept nogil
    void cbp_plane_affine_f64(const double* x, double* out, Py_ssize_t S, double mh,
                              double a, double k) noexcept nogil
    void cbp_row_dx_f32(const float* x, const float* dy, float* out, Py_ssize_t m,
                        const float* mh, const float* a, const float* b,
                        const float* k) noexcept nogil
    void cbp_row_dx_f64(const double* x, const double* dy, double* out, Py_ssize_t m,
                        const double* mh, const double* a, const double* b,
                        const double* k) noexcept nogil
    void cbp_row_affine_f32(const float* x, float* out, Py_ssize_t m, const float* mh,
                            const float* a, const float* k) noexcept nogil
    void cbp_row_affine_f64(const double* x, double* out, Py_ssize_t m, const double* mh,
                            const double* a, const double* k) noexcept nogil


cdef inline void plane_dx(const floating* x, const floating* dy, floating* out,
                          Py_ssize_t S, floating mh, floating a, floating b,
                          floating k) noexcept nogil:
    if floating is float:
        cbp_plane_dx_f32(x, dy, out, S, mh, a, b, k)
    else:
        cbp_plane_dx_f64(x, dy, out, S, mh, a, b, k)


cdef inline void plane_affine(const floating* x, floating* out, Py_ssize_t S,
                              floating mh, floating a, floating k) noexcept nogil:
    if floating is float:
        cbp_plane_affine_f32(x, out, S, mh, a, k)
    else:
        cbp_plane_affine_f64(x, out, S, mh, a, k)


cdef inline void row_dx(const floating* x, const floating* dy, floating* out, Py_ssize_t m,
                        const floating* coef_w, Py_ssize_t W) noexcept nogil:
    if floating is float:
        cbp_row_dx_f32(x, dy, out, m, coef_w, coef_w + W, coef_w + 2 * W, coef_w + 3 * W)
    else:
        cbp_row_dx_f64(x, dy, out, m, coef_w, coef_w + W, coef_w + 2 * W, coef_w + 3 * W)


cdef inline void row_affine(const floating* x, floating* out, Py_ssize_t m,
                            const floating* coef_w, Py_ssize_t W) noexcept nogil:
    if floating is float:
        cbp_row_affine_f32(x, out, m, coef_w, coef_w + W, coef_w + 3 * W)
    else:
        cbp_row_affine_f64(x, out, m, coef_w, coef_w + W, coef_w + 3 * W)


cdef void nchw_dx_sweep(const floating* x, const floating* dy, floating* out,
                        Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c0,
                        Py_ssize_t c1, const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t nc = c1 - c0, i, c, off
    for i in prange(N * nc, schedule='static', num_threads=nthreads):
        c = c0 + i % nc
        off = ((i // nc) * C + c) * S
        plane_dx(x + off, dy + off, out + off, S, coef[c], coef[C + c],
                 coef[2 * C + c], coef[3 * C + c])


cdef void nchw_affine_sweep(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                            Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1,
                            const floating* coef, int nthreads) noexcept nogil:
    cdef Py_ssize_t nc = c1 - c0, i, c, off
    for i in prange(N * nc, schedule='static', num_threads=nthreads):
        c = c0 + i % nc
        off = ((i // nc) * C + c) * S
        plane_affine(x + off, out + off, S, coef[c], coef[C + c], coef[3 * C + c])


cdef void nhwc_dx_sweep(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                        Py_ssize_t C, const floating* coef_w, int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), W = k * C, i, off
    for i in prange(ceil_div(R, k), schedule='static', num_threads=nthreads):
        off = i * W
        row_dx(x + off, dy + off, out + off, min(k, R - i * k) * C, coef_w, W)


cdef void nhwc_affine_sweep(const floating* x, floating* out, Py_ssize_t R, Py_ssize_t C,
                            const floating* coef_w, int nthreads) noexcept nogil:
    cdef Py_ssize_t k = column_widen(C), W = k * C, i, off
    for i in prange(ceil_div(R, k), schedule='static', num_threads=nthreads):
        off = i * W
        row_affine(x + off, out + off, min(k, R - i * k) * C, coef_w, W)
