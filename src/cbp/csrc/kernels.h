/* Instantiates every kernel for one element type and one instruction set,
   and the table that points at them. A table file (table_<type>_<isa>.c)
   defines T, CBP_KERNELS (the table type), CBP_TABLE (the table's name) and
   CBP_TARGET (the function attribute of its instruction set), then includes
   this file. The kernels are static, so each table file holds its own copy
   of every function under its plain name. */
#include "cbp_kernels.h"

#ifndef CBP_TARGET
#error "a table file defines CBP_TARGET (empty for the baseline) before it includes kernels.h"
#endif

#include "wide.h"
#include "plane_reduce.h"
#include "column_reduce.h"
#include "sweep.h"

/* Designated: several kernels share a signature, so a positional list could
   swap two of them without a compiler warning. */
const CBP_KERNELS CBP_TABLE = {
    .plane_backprop = plane_backprop,
    .plane_moments = plane_moments,
    .run_sum = run_sum,
    .run_shifted = run_shifted,
    .run_backprop = run_backprop,
    .row_backprop = row_backprop,
    .rows4_backprop = rows4_backprop,
    .row_sum = row_sum,
    .rows4_sum = rows4_sum,
    .row_shifted = row_shifted,
    .rows4_shifted = rows4_shifted,
    .rows8_sum = rows8_sum,
    .rows8_shifted = rows8_shifted,
    .merge_block = merge_block,
    .block_shift = block_shift,
    .mean_shift = mean_shift,
    .flush_sums = flush_sums,
    .rows_sweep = rows_sweep,
    .rows_sweep_nt = rows_sweep_nt,
    .flat_sweep_nt = flat_sweep_nt,
    .run_sweep = run_sweep,
    .run_sweep_nt = run_sweep_nt,
    .wide_sums = wide_sums,
    .wide_moments = wide_moments,
    .wide_columns = wide_columns,
    .wide_exact = wide_exact,
    .wide_exact_columns = wide_exact_columns,
    .wide_rows_sweep = wide_rows_sweep,
    .wide_run_sweep = wide_run_sweep,
};
