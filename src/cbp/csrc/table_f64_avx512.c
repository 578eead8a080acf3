/* double kernels for AVX-512 (x86-64 with gcc or clang; empty elsewhere). */
#include "isa.h"

#if CBP_BUILD_X86_TARGETS
/* The elementwise sweeps take AVX2 bodies, as in table_f32_avx512.c, and so
   does plane_backprop: from memory its AVX-512 body took 1.15x-1.20x the
   time of the AVX2 one on an Intel Xeon (family 6 model 167; 32x256x56x56,
   32x64x112x112 float64, 1.06x-1.09x on 32x512x28x28), while the float32 one
   ran 0.88x-0.91x and the float64 moments 0.75x-0.93x. */
#define T double
#define CBP_KERNELS cbp_kernels_f64
#define CBP_TABLE cbp_table_f64_avx512
#define CBP_TARGET CBP_TARGET_AVX512
#define CBP_SWEEP_TARGET CBP_TARGET_AVX2
#define CBP_PLANE_BACKPROP_TARGET CBP_TARGET_AVX2
#include "kernels.h"
#endif
