/* float kernels for AVX-512 (x86-64 with gcc or clang; empty elsewhere). */
#include "isa.h"

#if CBP_BUILD_X86_TARGETS
/* The elementwise sweeps take AVX2 bodies: on an Intel Xeon (family 6 model
   167) they ran no faster with AVX-512 and the row sweeps in L3 took 1.05x-
   1.14x the time (backward 4096x1024 and 32x2048x7x7 NHWC, dX 1.03x-1.11x),
   while the reductions ran 0.82x-0.97x (channel_stats) and 0.88x-0.96x
   (backprop sums of planes and of rows from memory). benchmarks/README.md,
   "AVX-512 on an Intel Xeon". */
#define T float
#define CBP_KERNELS cbp_kernels_f32
#define CBP_TABLE cbp_table_f32_avx512
#define CBP_TARGET CBP_TARGET_AVX512
#define CBP_SWEEP_TARGET CBP_TARGET_AVX2
#include "kernels.h"
#endif
