/* The helpers the Cython drivers call directly (declared in cbp_kernels.h);
   baseline code, the same for every instruction set. */
#include "cbp_kernels.h"

void *cbp_place(void *raw, const void *anchor, int slot)
{
    size_t want = ((size_t)anchor + CBP_SCRATCH_OFFSET + CBP_SCRATCH_SLOT * (size_t)slot) & 4095;
    size_t cur = (size_t)raw & 4095;
    return (char *)raw + ((want - cur) & 4095);
}

void cbp_merge_into(double *mean, double *m2, ptrdiff_t sd, const double *bmean,
                    const double *bm2, ptrdiff_t ss, ptrdiff_t m, double n_a, double n_b)
{
    ptrdiff_t j;
    double w, v;
    if (n_b == 0)
        return;
    w = n_b / (n_a + n_b);
    v = n_a * w;
    CBP_SIMD for (j = 0; j < m; j++) {
        double delta = bmean[j * ss] - mean[j * sd];
        mean[j * sd] = mean[j * sd] + delta * w;
        m2[j * sd] = m2[j * sd] + bm2[j * ss] + delta * delta * v;
    }
}

void cbp_store_fence(void)
{
#if CBP_HAVE_NT
    _mm_sfence();
#endif
}
