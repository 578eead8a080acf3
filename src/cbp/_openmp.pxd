# The one place cbp touches the OpenMP runtime. Without OpenMP (a serial build,
# or a compiler that lacks it) the fallbacks below keep every kernel working on
# one thread; Cython already guards its own prange pragmas with _OPENMP.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CBP_HAVE_OPENMP 1
    #else
    #define CBP_HAVE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    const int CBP_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
