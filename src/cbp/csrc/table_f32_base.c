/* float kernels for the baseline instruction set of the target CPU
   (x86-64: SSE2; aarch64: NEON). */
#include "isa.h"

#define T float
#define CBP_KERNELS cbp_kernels_f32
#define CBP_TABLE cbp_table_f32_base
#define CBP_TARGET
#include "kernels.h"
