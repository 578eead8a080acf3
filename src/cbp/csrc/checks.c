/* The drivers' float32 range check of float64 sums (cbp_common.h). */
#include "cbp_common.h"

int cbp_any_bad(const double *s1, const double *s2, ptrdiff_t st, ptrdiff_t m, double tiny)
{
    ptrdiff_t j;
    double z = 0.0, mn = INFINITY;
    /* Plain arithmetic that gcc vectorizes (a count of failed comparisons
       stayed a scalar loop, 12% of the time of channel_stats on
       32x2048x7x7): z is NaN when some value is Inf or NaN (x * 0), mn the
       smallest |s2|. */
    CBP_SIMD_MIN_SUM(mn, z) for (j = 0; j < m; j++) {
        double b = fabs(s2[j * st]);
        z += s1[j * st] * 0.0 + s2[j * st] * 0.0;
        mn = b < mn ? b : mn;
    }
    return !(z == 0.0) || mn < tiny;
}
