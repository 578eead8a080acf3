# What a call would do, from the same plan functions the drivers use
# (_plan.pxi): the kernel path, the units of its reductions and how the
# static OpenMP schedule spreads them over a team. cbp.plan_info wraps this.

# operation -> (reduction, fused with a sweep, sweep); the sync_* operations
# run the single-process kernels between their collectives
_OPS = {
    "channel_stats": ("moments", False, None),
    "channel_backprop_stats": ("backprop", False, None),
    "batch_norm_dx": (None, False, "dx"),
    "batch_norm_backward": ("backprop", True, "dx"),
    "batch_norm_forward": ("moments", True, "affine"),
    "batch_norm_inference": (None, False, "affine"),
    "sync_channel_stats": ("moments", False, None),
    "sync_batch_norm_forward": ("moments", False, "affine"),
    "sync_batch_norm_backward": ("backprop", False, "dx"),
}


def _static_split(list counts, Py_ssize_t lo, Py_ssize_t hi, list sizes):
    # OpenMP schedule(static) without a chunk, as libgomp and libomp do it:
    # contiguous shares, the first (n % t) threads one iteration more
    cdef Py_ssize_t n = hi - lo, t = len(counts), q = n // t, r = n % t, i, start = lo, m
    for i in range(t):
        m = q + (1 if i < r else 0)
        counts[i] += sum(sizes[start - lo:start - lo + m])
        start += m


def _plane_units(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t c0,
                 Py_ssize_t c1):
    # units (image group, channel, chunk) of channels c0..c1, image group by image group
    cdef Py_ssize_t g, k
    out = []
    for g in range(p.ng):
        out.extend([((g + 1) * N // p.ng - g * N // p.ng)
                     * (chunk_lo(S, p.nsc, k + 1) - chunk_lo(S, p.nsc, k))
                     for k in range(p.nsc)] * (c1 - c0))
    return out


def _row_units(Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize):
    # units (row group, 64 bytes of its fused row's columns), group by group
    cdef Py_ssize_t k = column_widen(C), W = column_widen(C) * C, nu = column_units(R)
    cdef Py_ssize_t gw = column_grain(itemsize), u, j, r0, nrows, last_w, m
    out = []
    for u in range(nu):
        row_group(R, C, k, nu, u, &r0, &nrows, &last_w)
        for j in range(0, W, gw):
            m = min(W, j + gw) - j
            out.append((nrows - 1) * m + max(0, min(m, last_w - j)))
    return out


def _flat_units(Py_ssize_t total):
    # the sweeps' runs of SWEEP_UNIT_ELEMS elements in memory order
    cdef Py_ssize_t n = total // SWEEP_UNIT_ELEMS
    out = [SWEEP_UNIT_ELEMS] * n
    if total > n * SWEEP_UNIT_ELEMS:
        out.append(total - n * SWEEP_UNIT_ELEMS)
    return out


def describe_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t itemsize, str op,
                  int nthreads, Py_ssize_t cache_bytes):
    """The plan of `op` on an (N, C, S) block (see cbp.plan_info); cache_bytes 0:
    the block a call would use (cache_block_bytes, else the team's default)."""
    cdef PlanePlan p
    cdef Py_ssize_t c0, c1, nblocks = 0, k
    reduction, fused, sweep = _OPS[op]
    threads = _team(nthreads, N * C * S)
    if cache_bytes <= 0:
        cache_bytes = _cache(_cache_block_bytes, threads)
    counts = [0] * threads
    units = []
    info = {"op": op, "threads": threads, "cache_block_bytes": cache_bytes,
            "isa": cbp_isa_active().decode(), "reduction": None, "sweep": None,
            "partial_bytes": 0}
    if reduction is not None:
        if S > 1:
            if reduction == "backprop":
                p = backprop_plan(N, C, S, itemsize, fused, cache_bytes, threads)
                name = "nchw_plane"
            else:
                p = moments_plan(N, C, S, itemsize, fused, cache_bytes, threads)
                name = ("nchw_short_plane_runs" if p.runs else
                        "nchw_short_plane_columns" if p.cols else "nchw_plane")
            # the drivers reduce (and, fused, sweep) a cache block of channels at a time
            c0 = 0
            while c0 < C:
                c1 = cache_block_lo(C, p.L, nblocks + 1)
                block = _plane_units(N, C, S, p, c0, c1)
                _static_split(counts, 0, len(block), block)
                units.extend(block)
                nblocks += 1
                c0 = c1
            if p.L < C:
                name += "_cache_blocked"
            info["blocks"] = nblocks
            info["image_groups"] = p.ng
            info["plane_chunks"] = p.nsc
            info["partial_bytes"] = 16 * p.ng * p.nsc * C
        else:
            k = column_widen(C)
            if reduction == "moments":
                eighths = moment_parts(k * C, itemsize) == 8
                name = "rows_eighths" if eighths else "rows_quartered"
            else:
                name = "rows_quartered"
            units = _row_units(N, C, itemsize)
            _static_split(counts, 0, len(units), units)
            info["widen"] = k
            info["blocks"] = 1
            info["row_groups"] = column_units(N)
            info["partial_bytes"] = 16 * column_units(N) * k * C
        info["reduction"] = name
    if sweep is not None:
        if S > 1:
            p = backprop_plan(N, C, S, itemsize, True, cache_bytes, threads) if (
                fused and reduction == "backprop") else (
                moments_plan(N, C, S, itemsize, True, cache_bytes, threads) if fused
                else sweep_plan(N, C, S))
            # fused plane plans sweep the reduction's units; the rest in memory order
            sname = "nchw_plane_units" if fused and not p.cols else "nchw_planes"
            streams = nchw_streams(N, C, S, itemsize)
        else:
            info["widen"] = column_widen(C)
            info["sweep_widen"] = sweep_widen(N, C, itemsize)
            if rows_sweep_quartered(N, C, itemsize, sweep == "dx", threads):
                sname = "rows_sweep_quartered"
            else:
                sname = ("rows_sweep_four" if rows_sweep_four(N, C, itemsize, sweep == "dx")
                         else "rows_sweep")
            streams = rows_streams(N, C, itemsize)
        info["sweep"] = sname
        info["streaming_stores"] = bool(streams)
        if reduction is None:
            units = _flat_units(N * C * S)
            _static_split(counts, 0, len(units), units)
            info["blocks"] = 1
    info["kernel"] = info["reduction"] or info["sweep"]
    info["units"] = len(units)
    info["unit_elements"] = units
    info["thread_elements"] = counts
    return info
