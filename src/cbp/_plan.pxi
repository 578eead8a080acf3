# Work decomposition shared by every kernel.
#
# A reduction is cut into units that depend only on the array's shape, never on
# the thread count. One thread sums a unit in a fixed order, and the units of a
# channel are combined in a fixed order, so every result is bitwise identical
# for any num_threads; threads only decide who computes which unit.
#
# Arrays reach the kernels as (N, C, S) C-contiguous blocks: NCHW keeps the
# spatial size in S; NHWC (and NCHW with S == 1) arrives as (rows, C, 1) and
# runs the "column" kernels, which sweep whole rows of C channels.

# The constants named here (MIN_UNITS, RUN_ELEMS, ...) live in
# csrc/cbp_tuning.h, each with what it trades.


cdef struct PlanePlan:
    Py_ssize_t ng     # image groups; a unit is (image group, channel, chunk)
    Py_ssize_t nsc    # plane plans: chunks per plane (1: whole planes)
    Py_ssize_t L      # channels per cache block (the fused passes' block)
    Py_ssize_t cb     # column plans: channels per run block (sets ng and `four`)
    bint cols         # short planes (moments: by the column kernels unless `runs`)
    bint runs         # moments of short planes plane by plane (run_shifted)
    bint four         # column plans: first-pass rows read four adjacent at a time


# Threads and units. A parallel loop runs one task per thread of the team,
# and task t takes share t of the units: contiguous, in unit order, the
# first (units % team) shares one unit longer (OpenMP's static schedule).
# Units are fine (a channel of an image group, 64 bytes of columns of a row
# group, a run of a sweep), so that any team gets near-equal shares; a task
# then runs its share as a few long pieces (whole runs of adjacent units),
# which the kernels sum in exactly the order of unit after unit: the bits
# depend only on the units, never on the shares.

cdef inline Py_ssize_t share_lo(Py_ssize_t n, Py_ssize_t t, Py_ssize_t i) noexcept nogil:
    # first unit of share i of n units over t shares
    return i * (n // t) + min(i, n % t)


# The sizes that follow the last-level cache (csrc/cbp_tuning.h), set at
# import from the detected caches by set_llc (_entry_points.pxi).
cdef Py_ssize_t _llc_bytes = LLC_DEFAULT_BYTES
cdef Py_ssize_t _default_cache_block = CACHE_BLOCK_OF(LLC_DEFAULT_BYTES)
cdef Py_ssize_t _nt_store_bytes = NT_STORE_OF(LLC_DEFAULT_BYTES)
cdef Py_ssize_t _nt_rows_bytes = NT_ROWS_OF(LLC_DEFAULT_BYTES)
cdef Py_ssize_t _sweep_quarter_bytes = SWEEP_QUARTER_OF(LLC_DEFAULT_BYTES)
# ... and the default cache block's bound per thread of a team, from each
# thread's share of its L2 (0: no L2 reported, no bound)
cdef Py_ssize_t _l2_block_bytes = 0


cdef void set_llc(Py_ssize_t llc) noexcept nogil:
    global _llc_bytes, _default_cache_block, _nt_store_bytes, _nt_rows_bytes
    global _sweep_quarter_bytes
    _llc_bytes = llc
    _default_cache_block = max(1, CACHE_BLOCK_OF(llc))
    _nt_store_bytes = NT_STORE_OF(llc)
    _nt_rows_bytes = NT_ROWS_OF(llc)
    _sweep_quarter_bytes = SWEEP_QUARTER_OF(llc)


cdef void set_l2(Py_ssize_t l2_per_thread) noexcept nogil:
    global _l2_block_bytes
    _l2_block_bytes = L2_BLOCK_OF(l2_per_thread) if l2_per_thread > 0 else 0


cdef inline Py_ssize_t default_block(int team) noexcept nogil:
    # the fused NCHW passes' cache block when none is set: 3/8 of the LLC,
    # at most 3/8 of the team's L2s (csrc/cbp_tuning.h)
    if _l2_block_bytes > 0 and _l2_block_bytes * team < _default_cache_block:
        return _l2_block_bytes * team
    return _default_cache_block


cdef inline Py_ssize_t coef_stride(Py_ssize_t W) noexcept nogil:
    # elements from one tiled coefficient row of the NHWC sweeps to the next
    # (tile_coef; csrc/cbp_common.h says why)
    return W + COEF_PAD


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline PlanePlan plane_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                 Py_ssize_t L, Py_ssize_t short_plane) noexcept nogil:
    """Units for an (N, C, S) block whose cache blocks hold at most L channels
    (L = C when nothing is re-read); planes shorter than short_plane are
    summed as columns."""
    cdef PlanePlan p
    cdef Py_ssize_t ncb
    p.cols = S < short_plane
    p.runs = p.cols and S >= RUN_PLANE
    if p.runs:
        # Plane runs: a unit is (image group, channel), summed image after
        # image; the image groups only serve the balance (COLUMN_PLAN_UNITS
        # units where the batch allows).
        p.ng = max(1, min(N, ceil_div(COLUMN_PLAN_UNITS, C)))
        p.L = C
        p.nsc = 1
        p.cb = C
        p.four = False
    elif p.cols:
        # Column kernels: a row is one image's run of channels; runs of at
        # least RUN_ELEMS elements set how many image groups there are and
        # how the first pass reads rows (both decide the bits).
        p.cb = min(C, ceil_div(RUN_ELEMS, S))
        ncb = ceil_div(C, p.cb)
        p.ng = max(ceil_div(N * p.cb * S, UNIT_ELEMS), ceil_div(MIN_UNITS, ncb),
                   ceil_div(COLUMN_PLAN_UNITS, C))
        p.ng = max(1, min(p.ng, N))
        p.L = C
        p.nsc = 1
        p.four = p.cb < C or C * S < 128
    else:
        # Plane kernels: a unit is one chunk of one channel's planes in one
        # image group; units run image group by image group, so a share
        # reads each image's run of channels contiguously.
        p.ng = max(1, min(N, MIN_UNITS))
        p.nsc = ceil_div(S, PLANE_CHUNK)
        p.L = max(1, min(L, C))
        p.cb = 1
        p.four = False
    return p


cdef inline Py_ssize_t chunk_lo(Py_ssize_t S, Py_ssize_t nsc, Py_ssize_t k) noexcept nogil:
    # first element of chunk k of a plane (S for k == nsc): near-equal chunks
    # that start on multiples of 16 elements
    if k >= nsc:
        return S
    return (k * S // nsc) // 16 * 16


cdef inline Py_ssize_t cache_block_lo(Py_ssize_t C, Py_ssize_t L, Py_ssize_t b) noexcept nogil:
    # first channel of cache block b: ceil(C / L) blocks of near-equal size
    cdef Py_ssize_t nb = ceil_div(C, L)
    if b >= nb:
        return C
    return b * C // nb


cdef inline Py_ssize_t column_units(Py_ssize_t R) noexcept nogil:
    # row groups of at least UNIT_ROWS rows: a group's fixed cost (zeroing,
    # flushing and combining its [2, W] partial sums) is that of a few rows
    return max(1, min(ceil_div(R, UNIT_ROWS), MIN_UNITS))


cdef inline Py_ssize_t column_grain(Py_ssize_t itemsize) noexcept nogil:
    # columns per unit of a row group: the units are (row group, 64 bytes
    # of its columns), and a share's adjacent units of one row group run as
    # one piece (a column sum does not depend on its neighbours)
    return max(1, COLUMN_UNIT_BYTES // itemsize)


cdef inline Py_ssize_t moment_parts(Py_ssize_t W, Py_ssize_t itemsize) noexcept nogil:
    # rows per step of the row moments (from as many parts of a row group)
    return 8 if W * itemsize >= EIGHTH_ROW_BYTES else 4


cdef inline Py_ssize_t column_widen(Py_ssize_t C) noexcept nogil:
    if C >= WIDEN:
        return 1
    return ceil_div(WIDEN, C)


# The plans of each operation, shared by the drivers and plan_info
# (_plan_info.pxi), so that what plan_info reports is what runs.

cdef inline Py_ssize_t fused_block_channels(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                            Py_ssize_t bytes_per_elem, bint fused,
                                            Py_ssize_t cache_bytes) noexcept nogil:
    # channels per cache block of a fused NCHW pass (C: nothing is re-read)
    if not fused or S < SHORT_PLANE:
        return C
    return max(1, cache_bytes // (N * S * bytes_per_elem))


cdef inline PlanePlan team_blocks(PlanePlan p, Py_ssize_t C, int team) noexcept nogil:
    # A cache block runs as one parallel loop: with fewer than BLOCK_UNITS
    # units per thread, threads would idle at the end of every block. Larger
    # teams span more caches (one LLC per socket or core complex), so the
    # block grows with the team instead. Schedule only: blocks never change
    # a sum.
    p.L = min(C, max(p.L, ceil_div(<Py_ssize_t>BLOCK_UNITS * team, p.ng * p.nsc)))
    return p


cdef inline PlanePlan backprop_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                    Py_ssize_t itemsize, bint fused,
                                    Py_ssize_t cache_bytes, int team) noexcept nogil:
    # a cache block holds x and dy
    return team_blocks(plane_plan(N, C, S, fused_block_channels(N, C, S, 2 * itemsize, fused,
                                                                cache_bytes),
                                  SHORT_PLANE_BACKPROP), C, team)


cdef inline PlanePlan moments_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                   Py_ssize_t itemsize, bint fused,
                                   Py_ssize_t cache_bytes, int team) noexcept nogil:
    return team_blocks(plane_plan(N, C, S, fused_block_channels(N, C, S, itemsize, fused,
                                                                cache_bytes),
                                  SHORT_PLANE), C, team)


cdef inline PlanePlan sweep_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    return plane_plan(N, C, S, C, SHORT_PLANE)


cdef inline bint nchw_streams(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                              Py_ssize_t itemsize) noexcept nogil:
    # streaming stores for the NCHW sweeps
    return (CBP_HAVE_NT and N * C * S * itemsize >= _nt_store_bytes
            and S * itemsize >= NT_PLANE_BYTES and S >= NT_PLANE_ELEMS)


cdef inline Py_ssize_t sweep_widen(Py_ssize_t R, Py_ssize_t C,
                                   Py_ssize_t itemsize) noexcept nogil:
    # pixels per row of the NHWC sweeps over R pixels: rows of at least
    # SWEEP_ROW_BYTES, but not more rows' worth than the array has (tiling
    # the coefficients wider would cost a tiny call more than its sweep); a
    # multiple of the reductions' column_widen, so their mean_hi row is a
    # prefix of the sweeps' tiled one
    cdef Py_ssize_t k = column_widen(C)
    return k * max(1, min(ceil_div(SWEEP_ROW_BYTES, k * C * itemsize), R // k))


cdef inline bint rows_streams(Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize) noexcept nogil:
    # streaming stores for the row sweeps (rows of sweep_widen(R, C) * C,
    # every line streamed, also those across two rows: flat_sweep_nt)
    return CBP_HAVE_NT and R * C * itemsize >= _nt_rows_bytes


cdef inline bint rows_sweep_four(Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize,
                                 bint dx) noexcept nogil:
    # four rows per coefficient load in the NHWC sweeps (schedule only): rows
    # of SWEEP_QUARTER_W elements or more, or an array in cache (QUARTER_BYTES);
    # the dX sweep not on rows of SWEEP_FOUR_W to SWEEP_QUARTER_W elements
    cdef Py_ssize_t W = sweep_widen(R, C, itemsize) * C
    if dx and SWEEP_FOUR_W <= W < SWEEP_QUARTER_W:
        return False
    return W >= SWEEP_QUARTER_W or R * C * itemsize <= QUARTER_BYTES


cdef inline bint rows_sweep_quartered(Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize,
                                      bint dx, int team) noexcept nogil:
    # four quarters of a share per step (schedule only) on rows of 4 KiB or
    # more: the dX sweep where each thread's share of the array exceeds
    # QUARTER_BYTES, the affine map over more than a last-level cache
    if sweep_widen(R, C, itemsize) * C * itemsize < SWEEP_QUARTER_ROW_BYTES:
        return False
    if dx:
        return R * C * itemsize > QUARTER_BYTES * <Py_ssize_t>team
    return R * C * itemsize > _sweep_quarter_bytes
