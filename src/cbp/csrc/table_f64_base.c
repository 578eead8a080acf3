/* double kernels for the baseline instruction set of the target CPU
   (x86-64: SSE2; aarch64: NEON). */
#include "isa.h"

#define T double
#define CBP_KERNELS cbp_kernels_f64
#define CBP_TABLE cbp_table_f64_base
#define CBP_TARGET
#include "kernels.h"
