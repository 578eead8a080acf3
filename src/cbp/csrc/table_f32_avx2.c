/* float kernels for AVX2 (x86-64 with gcc or clang; empty elsewhere). */
#include "isa.h"

#if CBP_BUILD_X86_TARGETS
#define T float
#define CBP_KERNELS cbp_kernels_f32
#define CBP_TABLE cbp_table_f32_avx2
#define CBP_TARGET CBP_TARGET_AVX2
#include "kernels.h"
#endif
