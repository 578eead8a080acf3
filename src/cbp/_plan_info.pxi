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


def _plane_units(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, PlanePlan p, Py_ssize_t cb0,
                 Py_ssize_t cb1):
    cdef Py_ssize_t u, cb, g, c0
    out = []
    for u in range(cb0 * p.ng, cb1 * p.ng):
        cb = u // p.ng
        g = u % p.ng
        c0 = cb * p.cb
        out.append((min(C, c0 + p.cb) - c0) * ((g + 1) * N // p.ng - g * N // p.ng) * S)
    return out


def _row_units(Py_ssize_t R, Py_ssize_t C, Py_ssize_t nu):
    cdef Py_ssize_t u
    return [((u + 1) * R // nu - u * R // nu) * C for u in range(nu)]


def describe_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t itemsize, str op,
                  int nthreads, Py_ssize_t cache_bytes):
    """The plan of `op` on an (N, C, S) block (see cbp.plan_info)."""
    cdef PlanePlan p
    cdef Py_ssize_t cb0, nblocks = 0, k, nsr, ng, nu, nr, i, c0, nc
    reduction, fused, sweep = _OPS[op]
    threads = _team(nthreads, N * C * S)
    counts = [0] * threads
    units = []
    info = {"op": op, "threads": threads, "cache_block_bytes": cache_bytes,
            "isa": cbp_isa_active().decode(), "reduction": None, "sweep": None}
    if reduction is not None:
        if S > 1:
            blocked = fused_block_channels(N, C, S, (2 if reduction == "backprop" else 1)
                                           * itemsize, fused, cache_bytes) < C
            if reduction == "backprop":
                p = backprop_plan(N, C, S, itemsize, fused, cache_bytes)
                name = "nchw_plane"
            else:
                p = moments_plan(N, C, S, itemsize, fused, cache_bytes)
                name = "nchw_short_plane_columns" if p.cols else "nchw_plane"
            # the drivers reduce (and, fused, sweep) p.sb channel blocks at a time
            cb0 = 0
            while cb0 < p.ncb:
                block = _plane_units(N, C, S, p, cb0, min(p.ncb, cb0 + p.sb))
                _static_split(counts, 0, len(block), block)
                units.extend(block)
                nblocks += 1
                cb0 += p.sb
            if blocked:
                name += "_cache_blocked"
            info["blocks"] = nblocks
            info["image_groups"] = p.ng
        else:
            k = column_widen(C)
            quartered = reduction == "moments" or column_quarters(N, C, itemsize)
            name = "rows_quartered" if quartered else "rows"
            units = _row_units(N, C, column_units(N))
            _static_split(counts, 0, len(units), units)
            info["widen"] = k
            info["blocks"] = 1
        info["reduction"] = name
    if sweep is not None:
        tasks = []
        if S > 1:
            p = backprop_plan(N, C, S, itemsize, True, cache_bytes) if (
                fused and reduction == "backprop") else (
                moments_plan(N, C, S, itemsize, True, cache_bytes) if fused else sweep_plan(N, C, S))
            if p.cols:
                nc = C
                nr = ceil_div(nc * S, RUN_SWEEP_ELEMS)
                for i in range(N * nr):
                    tasks.append(((i % nr + 1) * nc // nr - (i % nr) * nc // nr) * S)
                sname = "nchw_plane_runs"
            else:
                tasks = _plane_units(N, C, S, p, 0, p.ncb)
                sname = "nchw_plane_units"
            streams = nchw_streams(N, C, S, itemsize)
        else:
            k = column_widen(C)
            info["widen"] = k
            if rows_sweep_quartered(N, C, itemsize):
                tasks = _row_units(N, C, column_units(N))
                sname = "rows_sweep_quartered"
            else:
                nsr = ceil_div(N, k)
                ng = ceil_div(nsr, 4)
                nu = max(1, min(ng, MIN_UNITS))
                tasks = [(min(N, 4 * k * ((i + 1) * ng // nu)) - 4 * k * (i * ng // nu)) * C
                         for i in range(nu)]
                sname = "rows_sweep_four" if column_quarters(N, C, itemsize) else "rows_sweep"
            streams = rows_streams(N, C, itemsize)
        info["sweep"] = sname
        info["streaming_stores"] = bool(streams)
        if reduction is None:
            units = tasks
            _static_split(counts, 0, len(units), units)
            info["blocks"] = 1
    info["kernel"] = info["reduction"] or info["sweep"]
    info["units"] = len(units)
    info["unit_elements"] = units
    info["thread_elements"] = counts
    return info
