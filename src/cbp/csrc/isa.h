/* Which instruction-set tables this compiler builds, and their function
   attributes. Each kernel table is compiled from the same source for every
   instruction set; only the target attribute differs. Builds use
   -ffp-contract=off (no FMA contraction) and the kernels vectorize across
   independent accumulators only, so every table computes the same bits.

   x86-64 with gcc or clang: baseline (SSE2), AVX2, AVX-512 (F, BW, DQ, VL).
   MSVC has no per-function target attribute: baseline only. aarch64: the
   baseline is NEON. Other CPUs: the baseline of their compiler. */
#ifndef CBP_ISA_H
#define CBP_ISA_H

#include "cbp_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define CBP_BUILD_X86_TARGETS 1
#define CBP_TARGET_AVX2 __attribute__((target("avx2")))
#define CBP_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#else
#define CBP_BUILD_X86_TARGETS 0
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define CBP_BASELINE_NAME "sse2"
#elif defined(__aarch64__) || defined(_M_ARM64)
#define CBP_BASELINE_NAME "neon"
#else
#define CBP_BASELINE_NAME "generic"
#endif

extern const cbp_kernels_f32 cbp_table_f32_base;
extern const cbp_kernels_f64 cbp_table_f64_base;
#if CBP_BUILD_X86_TARGETS
extern const cbp_kernels_f32 cbp_table_f32_avx2;
extern const cbp_kernels_f64 cbp_table_f64_avx2;
extern const cbp_kernels_f32 cbp_table_f32_avx512;
extern const cbp_kernels_f64 cbp_table_f64_avx512;
#endif

#endif
