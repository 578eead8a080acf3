"""show_config(): what this build of cbp is and how it will run."""
from __future__ import annotations

import os
import platform
import sys

import math

import numpy as np

from . import _kernels, cython_api
from . import _validation as v
from ._version import __version__

OPERATIONS = (
    "channel_stats", "channel_backprop_stats", "batch_norm_dx", "batch_norm_backward",
    "batch_norm_forward", "batch_norm_inference",
    "sync_channel_stats", "sync_batch_norm_forward", "sync_batch_norm_backward",
)


def get_include() -> str:
    """Directory to add to a downstream Cython build's include path.

    It holds the ``cbp`` package with ``cython_api.pxd``, so that
    ``from cbp.cython_api cimport cbp_moments_f64`` (etc.) resolves::

        Extension("mymod", ["mymod.pyx"], include_dirs=[cbp.get_include()])
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def openmp_runtime() -> dict | None:
    """The OpenMP runtime cbp's kernels use, as threadpoolctl reports it.

    A dict with threadpoolctl's keys (``filepath``, ``prefix``, ``version``,
    ``num_threads``, ``internal_api``, ...), or None when threadpoolctl is
    not installed or cbp was built without OpenMP.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    path = cython_api.openmp_library_path()
    if not path:
        return None
    found = [i for i in threadpool_info() if i.get("user_api") == "openmp"]

    def same_file(a: str, b: str) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:
            return os.path.realpath(a) == os.path.realpath(b)

    for info in found:
        if same_file(info["filepath"], path):
            return info
    return {"filepath": path, "user_api": "openmp", "internal_api": None,
            "prefix": os.path.basename(path), "version": None, "num_threads": None}


def show_config(*, print_out: bool = True) -> dict:
    """Report the version, OpenMP status, default thread count, build flags and caches.

    ``caches`` holds the CPU's data caches as the operating system reports
    them (bytes; 0 = not reported; ``*_shared_by``: logical CPUs per cache),
    or as ``CBP_CACHE_SIZES`` sets them (e.g. ``l1d=48K,l2=2M,l3=32M``), and
    the schedule sizes cbp derives from the last level (the L3, else the L2,
    else an assumed 8 MiB; a detected L3 counts for at most 16 times the L2s
    that share it, ``last_level_cache_capped``, as a virtual machine may report
    its host's whole L3 as its own): the fused passes' cache block (3/8 of it,
    and at most ``cache_block_per_thread``, 3/8 of a thread's share of its L2,
    per thread of a call's team), the
    output size from which sweeps use streaming stores (1/2) and the array
    size from which long channels-last rows are swept by quarters (1x); and
    from the L1d (32 KiB when not reported): ``moments_prefetch_ahead``, the
    bytes the NCHW moments prefetch ahead of their passes (4 KiB blocks, as
    many as a third of the L1d holds beside the block in use; one to four).

    ``min_elements_per_thread``: a call runs at most one thread per that many
    elements of x (fewer than ``num_threads`` on small arrays; the results are
    the same bits for any team).

    Returns the report as a dict; prints it unless ``print_out=False``.
    """
    info = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "openmp": _kernels.openmp_enabled(),
        "default_num_threads": v.resolve_threads(None),
        "max_num_threads": v.MAX_THREADS,
        "min_elements_per_thread": cython_api.grain_elements(),
        "isa": cython_api.isa(),
        "isa_available": cython_api.isa_available(),
        "isa_default": cython_api.isa_default(),
        "compiler": cython_api.compiler(),
        "compile_args": cython_api.compile_args(),
        "openmp_runtime": openmp_runtime(),
        "caches": cython_api.caches(),
    }
    if print_out:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}} : {value}")
    return info


def plan_info(shape, *, dtype="float32", layout="NCHW", op="batch_norm_backward",
              num_threads=None) -> dict:
    """How cbp would run ``op`` on an array of this shape, dtype and layout.

    Computed by the same plan functions the kernels use; nothing is run. Keys:

    - ``kernel``: the path, e.g. ``"nchw_plane_cache_blocked"`` (the reduction's
      path, or the sweep's for ``batch_norm_dx`` and ``batch_norm_inference``);
      ``reduction`` and ``sweep`` name both parts (None where absent). The
      sweep's row order can follow the team: the channels-last dX sweep takes
      rows of 4 KiB or more from four quarters of each thread's share once a
      share exceeds 4 MiB (``"rows_sweep_quartered"``); no result changes.
    - ``units``, ``unit_elements``: the work units, fixed by the shape (never by
      the thread count), and the x elements each reads.
    - ``threads``: the team the call would use (any ``num_threads`` up to 65536
      is described, also above what a call on this machine accepts; at most
      one thread per ``show_config()["min_elements_per_thread"]`` elements);
      ``thread_elements``: per thread,
      the x elements it reads in the reductions (in the sweep where there is no
      reduction) under OpenMP's static schedule. mean / max of it is the balance.
    - ``cache_block_bytes``: the fused NCHW passes' block size for this team (3/8
      of the last-level cache, at most ``caches["cache_block_per_thread"]`` per
      thread; the kernel name ends in ``_cache_blocked`` where a call re-reads
      blocks from cache);
      ``blocks``: how many parallel loops the reduction runs, one after another; ``isa``: the active instruction set;
      ``streaming_stores``: whether the sweep writes with non-temporal stores;
      ``widen``: rows fused per row-kernel row (channels-last and 2-D data);
      ``sweep_widen``: rows fused per row of the sweep there (rows of at
      least 2 KiB; elementwise, so the width changes no bit);
      ``image_groups``: NCHW reductions' groups of images (a unit is one
      channel of an image group, or with ``plane_chunks`` > 1 one chunk of its
      planes); ``row_groups``: the row reductions' groups of rows (a unit is 64
      bytes of a group's columns); ``partial_bytes``: the reduction's per-unit
      partial sums.
    - ``block``: the (N, C, S) block the kernels see.
    - ``caches``: the CPU's data caches and the sizes derived from them
      (as in :func:`show_config`; ``CBP_CACHE_SIZES`` overrides
      what the operating system reports, e.g. ``l1d=48K,l2=2M,l3=32M``).
    """
    layout = v.check_layout(layout)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {', '.join(OPERATIONS)}; got {op!r}")
    try:
        shp = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not 2 <= len(shp) <= 5 or min(shp) < 0:
        raise ValueError(f"shape must have 2 to 5 non-negative dimensions, got {shp}")
    if layout == "NCHW":
        N, C, S = shp[0], shp[1], math.prod(shp[2:])
    else:
        N, C, S = math.prod(shp[:-1]), shp[-1], 1
    nt = v.resolve_threads(num_threads, limit=v.MAX_PLAN_THREADS,
                           why="the largest team plan_info describes")
    if C == 0 or N * S == 0:
        threads = 1 if cython_api.in_forked_child() else nt
        info = {"op": op, "threads": threads,
                "cache_block_bytes": (_kernels.cache_block_bytes()
                                      or cython_api.default_cache_block(threads)),
                "isa": cython_api.isa(), "reduction": None, "sweep": None, "kernel": "empty",
                "blocks": 0, "units": 0, "unit_elements": [], "partial_bytes": 0,
                "thread_elements": [0] * threads}
    else:
        info = cython_api.describe_plan(N, C, S, dt.itemsize, op, nt, 0)
    info.update(shape=shp, dtype=dt.name, layout=layout, block=(N, C, S),
                caches=cython_api.caches())
    return info
