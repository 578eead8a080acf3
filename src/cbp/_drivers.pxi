# Drivers: fuse the reductions and sweeps into the library's operations on an
# (N, C, S) C-contiguous block, choosing the NCHW (S > 1) or row (S == 1)
# kernels. All take raw pointers and plain C types, run without the GIL and
# return 0, or -1 when scratch memory could not be allocated.

# `cache_bytes` is the size of x (and dy) data per NCHW cache block in the fused
# passes: the second sweep of a block re-reads it from L3 instead of DRAM
# (default 3/8 of the last-level cache, at most 3/8 of the team's L2s, so that
# where the L2 is large it is re-read from L2: csrc/cbp_tuning.h). Planes shorter than
# SHORT_PLANE are not cache blocked: a block then holds only short runs of each
# image (24 KiB for 256x2048x7x7), which stream badly (measured 1.4x slower
# than two sweeps).


# ---------------------------------------------------------------------------
# per-channel finishing steps (float64)

cdef inline void finish_backprop(Py_ssize_t c, double sdy, double sdyxc, const double* mean,
                                 const floating* mh, const double* inv_std, double* dscale,
                                 double* dbias) noexcept nogil:
    # sums were taken about mean_hi; shift them to the exact mean. A result
    # that is not finite (NaN or Inf in the channel's data) is NaN.
    cdef double ds = (sdyxc - (mean[c] - <double>mh[c]) * sdy) * inv_std[c]
    dbias[c] = sdy if isfinite(sdy) else NAN
    dscale[c] = ds if isfinite(ds) else NAN


cdef inline void finish_moments(double* mean, double* m2, Py_ssize_t c0,
                                Py_ssize_t c1) noexcept nogil:
    # NaN or Inf in a channel's data: its mean and M2 are both NaN
    cdef Py_ssize_t c
    for c in range(c0, c1):
        if not (isfinite(mean[c]) and isfinite(m2[c])):
            mean[c] = NAN
            m2[c] = NAN


# The float32 range check of the reductions (csrc/wide.h says why) runs on
# each channel's totals, once per call: the column kernels' units can be a
# few dozen rows, and a check per unit and column cost 1.1x-1.2x the time of
# channel_stats on 32x2048x7x7 and 4096x1024. Where a total fails (not
# finite, or a sum of squares or products below count * F32_TINY), the
# reduction runs again with the check in every unit (`checked`), which redoes
# the failing columns and channels of each unit in float64. Passing totals
# need nothing more: float32 underflow costs each term at most 2^-150, so
# their relative error stays below 2^-50; an overflow leaves an Inf or NaN
# in the total. plane_moments checks its own blocks, so the NCHW moments of
# long planes need no total check.

cdef inline bint totals_bad(const double* s1, const double* s2, Py_ssize_t c0, Py_ssize_t c1,
                            double count) noexcept nogil:
    return any_bad(s1 + c0, s2 + c0, 1, c1 - c0, count * F32_TINY)


# Before that re-run, the failing channels are tested for exact zero terms
# (dead channels: zero dy, or constant x), one read of those channels, which
# settles them without the re-run: their float32 sums are exact (for
# moments, the constant itself is the mean and M2 = 0).

cdef bint nchw_settle(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C,
                      Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, const floating* mh,
                      double* s1, double* s2, int nthreads) noexcept nogil:
    # True when every failing channel of c0..c1 is dead. Backprop (dy given):
    # s1, s2 = sum dy, sum dy * (x - mh); moments (dy NULL): mean, M2, set
    # to (the constant, 0) for constant channels.
    cdef Py_ssize_t c
    cdef int alive = 0
    cdef double tiny = <double>(N * S) * F32_TINY
    for c in prange(c0, c1, schedule='static', num_threads=nthreads):
        if not any_bad(s1 + c, s2 + c, 1, 1, tiny):
            continue
        if dy != NULL:
            if not (isfinite(s1[c]) and s2[c] == 0 and planes_exact(x, dy, N, C, S, 0, S, 0, N,
                                                                    c, mh + c)):
                alive += 1
        elif planes_exact(x, dy, N, C, S, 0, S, 0, N, c, x + c * S):
            s1[c] = <double>x[c * S]
            s2[c] = 0.0
        else:
            alive += 1
    return alive == 0


cdef int rows_settle(const floating* x, const floating* dy, Py_ssize_t R, Py_ssize_t C,
                     const floating* mh, double* s1, double* s2, bint* settled,
                     int nthreads) noexcept nogil:
    # nchw_settle for (R, C) rows: *settled := every failing channel is dead
    cdef Py_ssize_t nu = column_units(R), u, c, r0
    cdef unsigned char* ok = <unsigned char*>malloc(nu * C)
    cdef const floating* m = x if dy == NULL else mh
    cdef double tiny = <double>R * F32_TINY
    if ok == NULL:
        return -1
    for u in prange(nu, schedule='static', num_threads=nthreads):
        r0 = u * R // nu
        wide_exact_columns(x + r0 * C, NULL if dy == NULL else dy + r0 * C,
                           (u + 1) * R // nu - r0, C, C, C, m, ok + u * C)
    settled[0] = True
    for c in range(C):
        for u in range(1, nu):
            ok[c] = ok[c] & ok[u * C + c]
        if not any_bad(s1 + c, s2 + c, 1, 1, tiny):
            continue
        if not ok[c] or (dy != NULL and not (isfinite(s1[c]) and s2[c] == 0)):
            settled[0] = False
        elif dy == NULL:
            s1[c] = <double>x[c]
            s2[c] = 0.0
    free(ok)
    return 0


# F32_COEF_MAX: magnitudes of float32 sweep terms and coefficients must stay
# below it (room for the rounding and the additions of one element).
DEF F32_COEF_MAX = 8.507059173023462e+37  # 2^126


cdef inline void put_mean_hi(floating* dst, double m) noexcept nogil:
    # *dst := the mean rounded to the input type, kept finite: a float64 mean
    # beyond float32's range is clamped, and the rest (mean - mean_hi) applied
    # in float64 as for any mean
    if floating is float:
        if m > FLT_MAX:
            m = FLT_MAX
        elif m < -FLT_MAX:
            m = -FLT_MAX
    dst[0] = <floating>m


cdef inline bint set_dx_coef(Py_ssize_t c, Py_ssize_t C, const double* mean,
                             const double* inv_std, const double* scale, const double* dscale,
                             const double* dbias, double count, floating* coef,
                             double* wcoef) noexcept nogil:
    # dx = scale*inv_std*(dy - dbias/M - (x - mean)*inv_std*dscale/M), as coef
    # (mean_hi, a, b, k) in the input type: dx = a*dy + b*(x - mean_hi) + k,
    # and as wcoef (mean, a, beta, kappa) in float64 for the factored form
    # dx = a*(dy + beta*(x - mean) + kappa) of csrc/wide.h. Returns True when
    # coef is not exact enough (float32) or overflowed (float64): the channel
    # is then swept from wcoef.
    cdef double a = scale[c] * inv_std[c]
    cdef double beta = -inv_std[c] * (dscale[c] / count)
    cdef double kappa = -(dbias[c] / count)
    cdef double b = -a * inv_std[c] * (dscale[c] / count)
    cdef double k
    put_mean_hi(coef + c, mean[c])
    k = -a * (dbias[c] / count) - b * (mean[c] - <double>coef[c])
    coef[C + c] = <floating>a
    coef[2 * C + c] = <floating>b
    coef[3 * C + c] = <floating>k
    wcoef[c] = mean[c]
    wcoef[C + c] = a
    wcoef[2 * C + c] = beta
    wcoef[3 * C + c] = kappa
    if b == 0 and a != 0 and beta != 0:
        return True  # a * beta underflowed in float64 itself
    if floating is float:
        return not (cbp_f32_coef_ok(a) and cbp_f32_coef_ok(b) and fabs(k) <= F32_COEF_MAX
                    and fabs(mean[c]) <= FLT_MAX)
    else:
        return not (isfinite(a) and isfinite(k) and isfinite(b)
                    and (b == 0 or fabs(b) >= DBL_MIN))


cdef inline bint set_affine_coef(Py_ssize_t c, Py_ssize_t C, double mean, double a,
                                 double bias, double spread, floating* coef,
                                 double* wcoef) noexcept nogil:
    # y = a * (x - mean) + bias, as set_dx_coef. spread >= 0 bounds |x - mean|
    # over the channel (sqrt(M2) for the batch's own statistics; < 0: unknown):
    # then a float32 (x - mean_hi) or a * (x - mean_hi) that could overflow
    # also sends the channel to float64.
    cdef double k, d
    put_mean_hi(coef + c, mean)
    k = bias - a * (mean - <double>coef[c])
    d = spread + fabs(mean - <double>coef[c])
    coef[C + c] = <floating>a
    coef[2 * C + c] = 0
    coef[3 * C + c] = <floating>k
    wcoef[c] = mean
    wcoef[C + c] = a
    wcoef[2 * C + c] = 0.0
    wcoef[3 * C + c] = bias
    if floating is float:
        return not (cbp_f32_coef_ok(a) and fabs(k) <= F32_COEF_MAX and fabs(mean) <= FLT_MAX
                    and (spread < 0 or (d <= F32_COEF_MAX
                                        and fabs(a) * d + fabs(k) <= F32_COEF_MAX)))
    else:
        return not (isfinite(a) and isfinite(k))


cdef void tile_coef(const floating* coef, Py_ssize_t C, Py_ssize_t k,
                    floating* coef_w) noexcept nogil:
    # coef [4, C] into coef_w [4, coef_stride]: each row k times, then its
    # first COEF_EXT elements once more (flat_sweep_nt, csrc/sweep.h)
    cdef Py_ssize_t W = k * C, cs = coef_stride(k * C), j, i, c
    for j in range(4):
        for i in range(k):
            for c in range(C):
                coef_w[j * cs + i * C + c] = coef[j * C + c]
        for c in range(COEF_EXT):
            coef_w[j * cs + W + c] = coef_w[j * cs + c % W]


# The combines run over chunks of COMBINE_CHANNELS channels, in parallel where
# they add at least COMBINE_PARALLEL partial sums (below that, waking the
# team costs more than the adds; one thread runs them without a parallel
# region). Each channel's parts are added in part order, so the bits do not
# depend on the chunks.
DEF COMBINE_CHANNELS = 256
DEF COMBINE_PARALLEL = 65536

# which combine: (kind, part layout)
cdef enum:
    SUM_PLANES = 0     # backprop sums, part [nparts, C, 2]
    MERGE_PLANES = 1   # moments, part [ng * nsc, C, 2]
    SUM_ROWS = 2       # backprop sums, part [nu, 2, k * C]
    MERGE_ROWS = 3     # moments, part [nu, 2, k * C]


cdef struct Combine:
    int kind
    const double* part
    Py_ssize_t nparts, N, C, S, R
    PlanePlan p
    double* s1        # sums of dy, or means
    double* s2        # sums of dy * (x - mean_hi), or M2
    Py_ssize_t head   # rows: the row groups already in s1, s2 (nhwc_share)


cdef int combine_chunk(const Combine* q, Py_ssize_t ca, Py_ssize_t cz) noexcept nogil:
    cdef Py_ssize_t g, c, u
    cdef Py_ssize_t W = column_widen(q.C) * q.C
    cdef double cnt = 0.0, gcnt
    cdef const double* row
    if q.kind == SUM_PLANES or q.kind == MERGE_PLANES:
        for c in range(ca, cz):
            q.s1[c] = 0.0
            q.s2[c] = 0.0
    if q.kind == SUM_PLANES:
        # parts outer, so memory is read in order
        for g in range(q.nparts):
            row = q.part + 2 * g * q.C
            add_into(q.s1 + ca, q.s2 + ca, row + 2 * ca, row + 2 * ca + 1, 2, cz - ca)
    elif q.kind == MERGE_PLANES:
        for g in range(q.p.ng * q.p.nsc):
            gcnt = <double>(((g // q.p.nsc + 1) * q.N // q.p.ng - (g // q.p.nsc) * q.N // q.p.ng)
                            * (chunk_lo(q.S, q.p.nsc, g % q.p.nsc + 1)
                               - chunk_lo(q.S, q.p.nsc, g % q.p.nsc)))
            merge_into(q.s1 + ca, q.s2 + ca, 1, q.part + 2 * (g * q.C + ca),
                       q.part + 2 * (g * q.C + ca) + 1, 2, cz - ca, cnt, gcnt)
            cnt = cnt + gcnt
    else:
        # the row groups in order, after the head ones that are in s1, s2
        cnt = <double>(q.head * q.R // q.nparts)
        for u in range(q.head, q.nparts):
            if row_fold(q.kind == MERGE_ROWS, q.R, q.C, q.nparts, u, q.part + 2 * u * W, ca, cz,
                        q.s1, q.s2, &cnt) != 0:
                return -1
    return 0


cdef int run_combine(const Combine* q, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t terms,
                     int nthreads) noexcept nogil:
    cdef Py_ssize_t i, n = ceil_div(c1 - c0, COMBINE_CHANNELS)
    cdef int failed = 0
    if nthreads == 1 or terms < COMBINE_PARALLEL:
        for i in range(n):
            if combine_chunk(q, c0 + i * COMBINE_CHANNELS,
                             min(c1, c0 + (i + 1) * COMBINE_CHANNELS)) != 0:
                return -1
        return 0
    for i in prange(n, schedule='static', num_threads=nthreads):
        if combine_chunk(q, c0 + i * COMBINE_CHANNELS,
                         min(c1, c0 + (i + 1) * COMBINE_CHANNELS)) != 0:
            failed += 1
    return -1 if failed else 0


cdef int sum_parts(const double* part, Py_ssize_t nparts, Py_ssize_t C, Py_ssize_t c0,
                   Py_ssize_t c1, double* sdy, double* sdx, int nthreads) noexcept nogil:
    # sdy[c], sdx[c] := sums over g = 0, 1, ... of part[g, c, 0], part[g, c, 1]
    cdef Combine q
    q.kind = SUM_PLANES
    q.part = part
    q.nparts = nparts
    q.C = C
    q.s1 = sdy
    q.s2 = sdx
    return run_combine(&q, c0, c1, nparts * (c1 - c0), nthreads)


cdef int nchw_totals(const double* part, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                     PlanePlan p, Py_ssize_t c0, Py_ssize_t c1, double* mean,
                     double* m2, int nthreads) noexcept nogil:
    # (mean, M2) of channels c0..c1 from the units' part [ng * nsc, C, 2], in part order
    cdef Combine q
    q.kind = MERGE_PLANES
    q.part = part
    q.N = N
    q.C = C
    q.S = S
    q.p = p
    q.s1 = mean
    q.s2 = m2
    return run_combine(&q, c0, c1, p.ng * p.nsc * (c1 - c0), nthreads)


cdef int rows_combine(int kind, const double* part, Py_ssize_t R, Py_ssize_t C,
                      Py_ssize_t head, double* s1, double* s2, int nthreads) noexcept nogil:
    # per channel: sums of dy and of dy * (x - mean_hi) (SUM_ROWS), or mean
    # and M2 (MERGE_ROWS), from the row groups' part [nu, 2, k * C] after the
    # head first ones, whose totals s1, s2 hold already
    cdef Combine q
    q.kind = kind
    q.part = part
    q.nparts = column_units(R)
    q.R = R
    q.C = C
    q.s1 = s1
    q.s2 = s2
    q.head = head
    return run_combine(&q, 0, C, (q.nparts - head) * column_widen(C) * C, nthreads)


# ---------------------------------------------------------------------------
# drivers

cdef struct WideCoef:
    # The float64 side of a sweep (set_dx_coef): coef [4, C] float64
    # coefficients, flag [C] the channels swept from them, any: some are;
    # coef_w [4, coef_stride(k * C)] tiled (rows, tile_coef), when any.
    double* coef
    char* flag
    double* coef_w
    bint any


cdef int wide_alloc(WideCoef* w, Py_ssize_t C, Py_ssize_t k, bint rows) noexcept nogil:
    w.coef = <double*>malloc(4 * C * sizeof(double))
    w.flag = <char*>malloc(C)
    w.coef_w = <double*>malloc(4 * coef_stride(k * C) * sizeof(double)) if rows else NULL
    w.any = False
    if w.coef == NULL or w.flag == NULL or (rows and w.coef_w == NULL):
        return -1
    return 0


cdef void wide_free(WideCoef* w) noexcept nogil:
    free(w.coef)
    free(w.flag)
    free(w.coef_w)


cdef inline void wide_mark(WideCoef* w, Py_ssize_t c, bint flagged) noexcept nogil:
    w.flag[c] = flagged
    if flagged:
        w.any = True


cdef int nchw_sweep_w(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                      Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t c0, Py_ssize_t c1,
                      bint units, const floating* coef, WideCoef* w,
                      int nthreads) noexcept nogil:
    if w.any:
        return nchw_sweep(x, dy, out, N, C, S, p, c0, c1, units, coef, w.coef, w.flag,
                          nthreads)
    return nchw_sweep(x, dy, out, N, C, S, p, c0, c1, units, coef, NULL, NULL, nthreads)


cdef void nhwc_sweep_w(const floating* x, const floating* dy, floating* out, Py_ssize_t R,
                       Py_ssize_t C, const floating* coef, floating* coef_w, WideCoef* w,
                       int nthreads) noexcept nogil:
    # coef [4, C] tiled into coef_w ([4, coef_stride(sweep_widen * C)]); with any channel
    # flagged, every row is swept from the tiled float64 coefficients
    cdef Py_ssize_t k = sweep_widen(R, C, sizeof(floating))
    tile_coef(coef, C, k, coef_w)
    if w.any:
        tile_coef(<const double*>w.coef, C, k, w.coef_w)
        nhwc_sweep(x, dy, out, R, C, coef_w, w.coef_w, nthreads)
    else:
        nhwc_sweep(x, dy, out, R, C, coef_w, NULL, nthreads)


cdef int backward_driver(const floating* x, const floating* dy, floating* out,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, const double* mean,
                         const double* inv_std, const double* scale, double count,
                         double* dscale, double* dbias, Py_ssize_t cache_bytes,
                         int nthreads) noexcept nogil:
    """Per-channel (dscale, dbias); with out != NULL also dx (fused)."""
    cdef PlanePlan p
    cdef Py_ssize_t nparts, k = column_widen(C), c0, c1, c, b, head = 0
    cdef Py_ssize_t ks = sweep_widen(N, C, sizeof(floating))
    cdef bint settled
    cdef double* part
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    cdef floating* coef_w = NULL
    cdef WideCoef w
    cdef int rc = 0
    if S > 1:
        p = backprop_plan(N, C, S, sizeof(floating), out != NULL, cache_bytes, nthreads)
        nparts = p.ng * p.nsc
    else:
        nparts = column_units(N) * k
        coef_w = <floating*>malloc(4 * coef_stride(ks * C) * sizeof(floating))
    part = <double*>malloc(2 * nparts * C * sizeof(double))
    rc = wide_alloc(&w, C, ks, S == 1)
    if coef == NULL or part == NULL or (S == 1 and coef_w == NULL) or rc != 0:
        free(coef)
        free(coef_w)
        free(part)
        wide_free(&w)
        return -1
    for c in range(C):
        put_mean_hi(coef + c, mean[c])
    if S > 1:
        # Cache blocking: reduce a block of channels, then sweep its dX while
        # its x and dy are still in L3.
        b = 0
        c0 = 0
        while c0 < C:
            b = b + 1
            c1 = cache_block_lo(C, p.L, b)
            rc = nchw_backprop_sums(x, dy, N, C, S, p, c0, c1, coef, False, part, nthreads)
            if rc != 0:
                break
            # dbias holds the sums of dy, dscale those of dy * (x - mean_hi)
            sum_parts(part, p.ng * p.nsc, C, c0, c1, dbias, dscale, nthreads)
            if (floating is float and totals_bad(dbias, dscale, c0, c1, <double>(N * S))
                    and not nchw_settle(x, dy, N, C, S, c0, c1, coef, dbias, dscale,
                                        nthreads)):
                rc = nchw_backprop_sums(x, dy, N, C, S, p, c0, c1, coef, True, part,
                                        nthreads)
                if rc != 0:
                    break
                sum_parts(part, p.ng * p.nsc, C, c0, c1, dbias, dscale, nthreads)
            for c in range(c0, c1):
                finish_backprop(c, dbias[c], dscale[c], mean, coef, inv_std, dscale, dbias)
            if out != NULL:
                for c in range(c0, c1):
                    wide_mark(&w, c, set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias,
                                                 count, coef, w.coef))
                rc = nchw_sweep_w(x, dy, out, N, C, S, p, c0, c1, True, coef, &w, nthreads)
                if rc != 0:
                    break
            c0 = c1
    else:
        tile_coef(coef, C, ks, coef_w)  # the reduction reads row 0, mean_hi
        rc = nhwc_backprop_sums(x, dy, N, C, coef_w, False, part, dbias, dscale, &head,
                                nthreads)
        if rc == 0:
            rc = rows_combine(SUM_ROWS, part, N, C, head, dbias, dscale, nthreads)
        if rc == 0:
            if floating is float and totals_bad(dbias, dscale, 0, C, <double>N):
                rc = rows_settle(x, dy, N, C, coef, dbias, dscale, &settled, nthreads)
                if rc == 0 and not settled:
                    rc = nhwc_backprop_sums(x, dy, N, C, coef_w, True, part, dbias, dscale,
                                            &head, nthreads)
                    if rc == 0:
                        rc = rows_combine(SUM_ROWS, part, N, C, head, dbias, dscale, nthreads)
        if rc == 0:
            for c in range(C):
                finish_backprop(c, dbias[c], dscale[c], mean, coef, inv_std, dscale, dbias)
            if out != NULL:
                for c in range(C):
                    wide_mark(&w, c, set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias,
                                                 count, coef, w.coef))
                nhwc_sweep_w(x, dy, out, N, C, coef, coef_w, &w, nthreads)
    free(coef)
    free(coef_w)
    free(part)
    wide_free(&w)
    return rc


cdef int sweep_driver(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                      Py_ssize_t C, Py_ssize_t S, const floating* coef, WideCoef* w,
                      int nthreads) noexcept nogil:
    """One sweep over the whole block from per-channel coefficients (dy == NULL: affine)."""
    cdef Py_ssize_t k = sweep_widen(N, C, sizeof(floating))
    cdef floating* coef_w
    cdef PlanePlan p
    if S > 1:
        p = sweep_plan(N, C, S)
        return nchw_sweep_w(x, dy, out, N, C, S, p, 0, C, False, coef, w, nthreads)
    coef_w = <floating*>malloc(4 * coef_stride(k * C) * sizeof(floating))
    if coef_w == NULL:
        return -1
    nhwc_sweep_w(x, dy, out, N, C, coef, coef_w, w, nthreads)
    free(coef_w)
    return 0


cdef int dx_driver(const floating* x, const floating* dy, floating* out, Py_ssize_t N,
                   Py_ssize_t C, Py_ssize_t S, const double* mean, const double* inv_std,
                   const double* scale, const double* dscale, const double* dbias,
                   double count, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    cdef int rc
    cdef WideCoef w
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    if coef == NULL or wide_alloc(&w, C, sweep_widen(N, C, sizeof(floating)), S == 1) != 0:
        free(coef)
        wide_free(&w)
        return -1
    for c in range(C):
        wide_mark(&w, c, set_dx_coef(c, C, mean, inv_std, scale, dscale, dbias, count, coef,
                                     w.coef))
    rc = sweep_driver(x, dy, out, N, C, S, coef, &w, nthreads)
    free(coef)
    wide_free(&w)
    return rc


cdef int forward_driver(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t S, const double* scale, const double* bias, double eps,
                        double* mean, double* m2, double* inv_std, Py_ssize_t cache_bytes,
                        int nthreads) noexcept nogil:
    """Per-channel (mean, M2); with out != NULL also inv_std and y (fused)."""
    cdef PlanePlan p
    cdef Py_ssize_t nparts, k = column_widen(C), c0, c1, c, b, head = 0
    cdef Py_ssize_t ks = sweep_widen(N, C, sizeof(floating))
    cdef bint settled
    cdef double* part
    cdef floating* coef = NULL
    cdef floating* coef_w = NULL
    cdef WideCoef w
    cdef int rc = 0
    w.coef = NULL
    w.flag = NULL
    w.coef_w = NULL
    if S > 1:
        p = moments_plan(N, C, S, sizeof(floating), out != NULL, cache_bytes, nthreads)
        nparts = p.ng * p.nsc
    else:
        nparts = column_units(N) * k
    part = <double*>malloc(2 * nparts * C * sizeof(double))
    if out != NULL:
        coef = <floating*>malloc(4 * C * sizeof(floating))
        if S == 1:
            coef_w = <floating*>malloc(4 * coef_stride(ks * C) * sizeof(floating))
        rc = wide_alloc(&w, C, ks, S == 1)
    if part == NULL or rc != 0 or (out != NULL and (coef == NULL or (S == 1 and coef_w == NULL))):
        free(part)
        free(coef)
        free(coef_w)
        wide_free(&w)
        return -1
    if S > 1:
        b = 0
        c0 = 0
        while c0 < C:
            b = b + 1
            c1 = cache_block_lo(C, p.L, b)
            rc = nchw_moments(x, N, C, S, p, c0, c1, False, part, nthreads)
            if rc != 0:
                break
            nchw_totals(part, N, C, S, p, c0, c1, mean, m2, nthreads)
            if (floating is float and S < SHORT_PLANE
                    and totals_bad(mean, m2, c0, c1, <double>(N * S))
                    and not nchw_settle(x, <const floating*>NULL, N, C, S, c0, c1,
                                        <const floating*>NULL, mean, m2, nthreads)):
                rc = nchw_moments(x, N, C, S, p, c0, c1, True, part, nthreads)
                if rc != 0:
                    break
                nchw_totals(part, N, C, S, p, c0, c1, mean, m2, nthreads)
            finish_moments(mean, m2, c0, c1)
            if out != NULL:
                for c in range(c0, c1):
                    inv_std[c] = 1.0 / sqrt(m2[c] / <double>(N * S) + eps)
                    wide_mark(&w, c, set_affine_coef(c, C, mean[c], scale[c] * inv_std[c],
                                                     bias[c], sqrt(m2[c]), coef, w.coef))
                rc = nchw_sweep_w(x, <floating*>NULL, out, N, C, S, p, c0, c1, not p.cols,
                                  coef, &w, nthreads)
                if rc != 0:
                    break
            c0 = c1
    else:
        rc = nhwc_moments(x, N, C, False, part, mean, m2, &head, nthreads)
        if rc == 0:
            rc = rows_combine(MERGE_ROWS, part, N, C, head, mean, m2, nthreads)
        if rc == 0:
            if floating is float and totals_bad(mean, m2, 0, C, <double>N):
                rc = rows_settle(x, <const floating*>NULL, N, C, <const floating*>NULL, mean,
                                 m2, &settled, nthreads)
                if rc == 0 and not settled:
                    rc = nhwc_moments(x, N, C, True, part, mean, m2, &head, nthreads)
                    if rc == 0:
                        rc = rows_combine(MERGE_ROWS, part, N, C, head, mean, m2, nthreads)
        if rc == 0:
            finish_moments(mean, m2, 0, C)
            if out != NULL:
                for c in range(C):
                    inv_std[c] = 1.0 / sqrt(m2[c] / <double>N + eps)
                    wide_mark(&w, c, set_affine_coef(c, C, mean[c], scale[c] * inv_std[c],
                                                     bias[c], sqrt(m2[c]), coef, w.coef))
                nhwc_sweep_w(x, <floating*>NULL, out, N, C, coef, coef_w, &w, nthreads)
    free(part)
    free(coef)
    free(coef_w)
    wide_free(&w)
    return rc


cdef int affine_driver(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, const double* mean, const double* a, const double* bias,
                       int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    cdef int rc
    cdef WideCoef w
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    if coef == NULL or wide_alloc(&w, C, sweep_widen(N, C, sizeof(floating)), S == 1) != 0:
        free(coef)
        wide_free(&w)
        return -1
    for c in range(C):
        wide_mark(&w, c, set_affine_coef(c, C, mean[c], a[c], bias[c], -1.0, coef, w.coef))
    rc = sweep_driver(x, <floating*>NULL, out, N, C, S, coef, &w, nthreads)
    free(coef)
    wide_free(&w)
    return rc
