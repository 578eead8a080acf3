"""The Python entry points of cbp's kernels, for its Python layer (not public API).

They are compiled into ``cbp.cython_api`` with the kernels
(``_entry_points.pxi``); arrays reach them validated and C-contiguous.
"""
from .cython_api import (  # noqa: F401
    affine,
    backprop_sums,
    backward,
    cache_block_bytes,
    dx,
    forward,
    max_threads,
    moments,
    openmp_enabled,
    probe_team,
    set_call_thread_limit,
    small_backprop_sums,
    small_backward,
    small_dx,
    small_forward,
    small_moments,
    thread_limit,
    vector_flags,
)
