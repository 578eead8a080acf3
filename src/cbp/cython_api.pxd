# cbp's public C-level API, for other packages' Cython code.
#
#     # in a downstream .pyx; build with include_dirs=[cbp.get_include()]
#     from cbp.cython_api cimport cbp_moments_f64
#
# This is the one public interface file (SciPy's rules for a public Cython API:
# no cimports here, no cdef classes, plain C types only), so that cbp can change
# everything behind it. Importing the downstream module imports cbp.cython_api,
# whose functions it then calls through Cython's C-API capsule.
#
# Data convention: x, dy and out are C-contiguous (N, C, S) blocks.
#   NCHW (N, C, *spatial):  N = batch, C = channels, S = prod(spatial)
#   NHWC (N, *spatial, C):  N = batch * prod(spatial), C = channels, S = 1
#   (N, C) 2-D data:        S = 1
# Per-channel arrays (mean, m2, inv_std, scale, bias, dscale, dbias, a) are
# float64 of length C. Element type is float32 (_f32) or float64 (_f64); all
# accumulation is in float64 and results are bitwise identical for every
# num_threads.
#
# Every function runs without the GIL and returns
#    0  on success,
#   -1  when kernel scratch memory could not be allocated (outputs undefined),
#   -2  on an invalid argument (N, C or S < 0, num_threads < 1, eps <= 0,
#       count <= 0).
# num_threads >= 1 is the OpenMP team size (cbp_max_threads() gives the
# OpenMP default, which honours OMP_NUM_THREADS and threadpoolctl). In a
# process forked from a parent while cbp runs on GNU libgomp, every call runs
# on one thread (libgomp's thread pool does not survive fork).
# Empty blocks (N * S == 0 or C == 0) are fine: per-channel results are then
# those of an empty batch (zeros; forward: inv_std = 1/sqrt(eps)).
# cache_bytes: size in bytes of the x (and dy) data per channel block in the
# fused NCHW passes, re-read from cache by the second sweep; 0 = cbp's default
# (cbp_default_cache_bytes()). Results do not depend on it.
# out may be exactly x or dy (in place); other overlaps are undefined.


# 1 when cbp was built with OpenMP, else 0 (then every num_threads runs serially).
cdef int cbp_openmp_enabled() noexcept nogil
# omp_get_max_threads() of cbp's OpenMP runtime (1 without OpenMP).
cdef int cbp_max_threads() noexcept nogil
# The cache block size that cache_bytes = 0 stands for.
cdef Py_ssize_t cbp_default_cache_bytes() noexcept nogil

# Per-channel mean and M2 = sum((x - mean)**2) (var = M2 / (N*S)).
cdef int cbp_moments_f32(const float* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         double* mean, double* m2, int num_threads) noexcept nogil
cdef int cbp_moments_f64(const double* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         double* mean, double* m2, int num_threads) noexcept nogil

# Caffe2's ChannelBackpropStats: dbias[c] = sum(dy),
# dscale[c] = sum(dy * (x - mean[c]) * inv_std[c]).
cdef int cbp_backprop_sums_f32(const float* x, const float* dy, Py_ssize_t N, Py_ssize_t C,
                               Py_ssize_t S, const double* mean, const double* inv_std,
                               double* dscale, double* dbias, int num_threads) noexcept nogil
cdef int cbp_backprop_sums_f64(const double* x, const double* dy, Py_ssize_t N, Py_ssize_t C,
                               Py_ssize_t S, const double* mean, const double* inv_std,
                               double* dscale, double* dbias, int num_threads) noexcept nogil

# The dX sweep from (possibly global) sums over `count` elements per channel:
# out = scale*inv_std*(dy - dbias/count - (x - mean)*inv_std*dscale/count).
cdef int cbp_dx_f32(const float* x, const float* dy, float* out, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t S, const double* mean, const double* inv_std,
                    const double* scale, const double* dscale, const double* dbias,
                    double count, int num_threads) noexcept nogil
cdef int cbp_dx_f64(const double* x, const double* dy, double* out, Py_ssize_t N,
                    Py_ssize_t C, Py_ssize_t S, const double* mean, const double* inv_std,
                    const double* scale, const double* dscale, const double* dbias,
                    double count, int num_threads) noexcept nogil

# Fused batch-norm backward: (dscale, dbias) as cbp_backprop_sums and out = dx
# with count = N*S, in one pass over the data per cache block.
cdef int cbp_backward_f32(const float* x, const float* dy, float* out, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t S, const double* mean,
                          const double* inv_std, const double* scale, double* dscale,
                          double* dbias, Py_ssize_t cache_bytes, int num_threads) noexcept nogil
cdef int cbp_backward_f64(const double* x, const double* dy, double* out, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t S, const double* mean,
                          const double* inv_std, const double* scale, double* dscale,
                          double* dbias, Py_ssize_t cache_bytes, int num_threads) noexcept nogil

# Training-mode forward: batch mean, M2, inv_std = 1/sqrt(M2/(N*S) + eps) and
# out = scale*(x - mean)*inv_std + bias (fused like cbp_backward).
cdef int cbp_forward_f32(const float* x, float* out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         const double* scale, const double* bias, double eps, double* mean,
                         double* m2, double* inv_std, Py_ssize_t cache_bytes,
                         int num_threads) noexcept nogil
cdef int cbp_forward_f64(const double* x, double* out, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t S, const double* scale, const double* bias, double eps,
                         double* mean, double* m2, double* inv_std, Py_ssize_t cache_bytes,
                         int num_threads) noexcept nogil

# Per-channel affine sweep: out = a*(x - mean) + bias (inference-mode batch norm
# with a = scale/sqrt(var + eps)).
cdef int cbp_affine_f32(const float* x, float* out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        const double* mean, const double* a, const double* bias,
                        int num_threads) noexcept nogil
cdef int cbp_affine_f64(const double* x, double* out, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t S, const double* mean, const double* a, const double* bias,
                        int num_threads) noexcept nogil
