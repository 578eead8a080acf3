/* cbp's C kernels as the Cython drivers see them: the kernel tables, the
   instruction-set choice, and the few helpers the drivers call directly.

   Every kernel exists once per element type (float, double) and per
   instruction set compiled in (see dispatch.c). The macros cbp_<kernel>(x,
   ...) call the active table's kernel for x's element type, chosen with C11
   _Generic from the type x points to, so one Cython declaration serves both
   element types (it declares the T pointers as void pointers; the C compiler
   checks the real types against the kernel's prototype). */
#ifndef CBP_KERNELS_H
#define CBP_KERNELS_H

#include "cbp_common.h"

#define T float
#define CBP_KERNELS cbp_kernels_f32
#include "kernel_table.h"
#undef T
#undef CBP_KERNELS
#define T double
#define CBP_KERNELS cbp_kernels_f64
#include "kernel_table.h"
#undef T
#undef CBP_KERNELS

/* The tables in use; they point at the baseline tables until cbp_isa_select. */
extern const cbp_kernels_f32 *cbp_active_f32;
extern const cbp_kernels_f64 *cbp_active_f64;

/* Bytes plane_moments prefetches ahead (CBP_MOMENTS_AHEAD_OF the L1d, set
   at import with cbp_set_moments_ahead; caches.c): a schedule, never a bit. */
extern ptrdiff_t cbp_moments_ahead;
void cbp_set_moments_ahead(long long l1d_bytes);

#define CBP_TABLE_OF(x) \
    _Generic((x)[0], float: cbp_active_f32, const float: cbp_active_f32, \
             double: cbp_active_f64, const double: cbp_active_f64)

#define cbp_plane_backprop(x, ...) (CBP_TABLE_OF(x)->plane_backprop((x), __VA_ARGS__))
#define cbp_plane_moments(x, ...) (CBP_TABLE_OF(x)->plane_moments((x), __VA_ARGS__))
#define cbp_run_sum(x, ...) (CBP_TABLE_OF(x)->run_sum((x), __VA_ARGS__))
#define cbp_run_shifted(x, ...) (CBP_TABLE_OF(x)->run_shifted((x), __VA_ARGS__))
#define cbp_run_backprop(x, ...) (CBP_TABLE_OF(x)->run_backprop((x), __VA_ARGS__))
#define cbp_row_backprop(x, ...) (CBP_TABLE_OF(x)->row_backprop((x), __VA_ARGS__))
#define cbp_rows4_backprop(x, ...) (CBP_TABLE_OF(x)->rows4_backprop((x), __VA_ARGS__))
#define cbp_row_sum(x, ...) (CBP_TABLE_OF(x)->row_sum((x), __VA_ARGS__))
#define cbp_rows4_sum(x, ...) (CBP_TABLE_OF(x)->rows4_sum((x), __VA_ARGS__))
#define cbp_row_shifted(x, ...) (CBP_TABLE_OF(x)->row_shifted((x), __VA_ARGS__))
#define cbp_rows4_shifted(x, ...) (CBP_TABLE_OF(x)->rows4_shifted((x), __VA_ARGS__))
#define cbp_rows8_sum(x, ...) (CBP_TABLE_OF(x)->rows8_sum((x), __VA_ARGS__))
#define cbp_rows8_shifted(x, ...) (CBP_TABLE_OF(x)->rows8_shifted((x), __VA_ARGS__))
#define cbp_merge_block(a, ...) (CBP_TABLE_OF(a)->merge_block((a), __VA_ARGS__))
#define cbp_block_shift(a, ...) (CBP_TABLE_OF(a)->block_shift((a), __VA_ARGS__))
#define cbp_mean_shift(s, ...) (CBP_TABLE_OF(s)->mean_shift((s), __VA_ARGS__))
#define cbp_flush_sums(a, ...) (CBP_TABLE_OF(a)->flush_sums((a), __VA_ARGS__))
#define cbp_rows_sweep(x, ...) (CBP_TABLE_OF(x)->rows_sweep((x), __VA_ARGS__))
#define cbp_rows_sweep_nt(x, ...) (CBP_TABLE_OF(x)->rows_sweep_nt((x), __VA_ARGS__))
#define cbp_flat_sweep_nt(x, ...) (CBP_TABLE_OF(x)->flat_sweep_nt((x), __VA_ARGS__))
#define cbp_run_sweep(x, ...) (CBP_TABLE_OF(x)->run_sweep((x), __VA_ARGS__))
#define cbp_run_sweep_nt(x, ...) (CBP_TABLE_OF(x)->run_sweep_nt((x), __VA_ARGS__))
#define cbp_wide_sums(x, ...) (CBP_TABLE_OF(x)->wide_sums((x), __VA_ARGS__))
#define cbp_wide_moments(x, ...) (CBP_TABLE_OF(x)->wide_moments((x), __VA_ARGS__))
#define cbp_wide_columns(x, ...) (CBP_TABLE_OF(x)->wide_columns((x), __VA_ARGS__))
#define cbp_wide_exact(x, ...) (CBP_TABLE_OF(x)->wide_exact((x), __VA_ARGS__))
#define cbp_wide_exact_columns(x, ...) (CBP_TABLE_OF(x)->wide_exact_columns((x), __VA_ARGS__))
#define cbp_wide_rows_sweep(x, ...) (CBP_TABLE_OF(x)->wide_rows_sweep((x), __VA_ARGS__))
#define cbp_wide_run_sweep(x, ...) (CBP_TABLE_OF(x)->wide_run_sweep((x), __VA_ARGS__))

/* Instruction sets (dispatch.c). Names, widest first, of those compiled in
   and supported by this CPU; the baseline is active until cbp_isa_select,
   and cbp_isa_default() names the one cbp selects at import. */
int cbp_isa_count(void);
const char *cbp_isa_name(int i);
const char *cbp_isa_default(void);
const char *cbp_isa_active(void);
/* 0: selected; -1: no such instruction set in this build; -2: compiled in,
   but this CPU (or its operating system) does not support it. */
int cbp_isa_select(const char *name);
/* Every name this build knows, supported here or not (for error messages). */
int cbp_isa_compiled_count(void);
const char *cbp_isa_compiled_name(int i);

/* The drivers also call cbp_place, cbp_merge_into and cbp_store_fence
   (cbp_common.h) directly: inline there, so that the drivers' constant
   strides reach the merge loop. */

#endif
