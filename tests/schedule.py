"""The last-level cache the size-dependent test cases were chosen for.

Where the row and plane sweeps switch to streaming stores and to quartered
steps follows from the last-level cache (a third of it, all of it, ...). The
shapes of tests/test_values.py's size cases and of the golden set were picked
for a 32 MiB LLC; on a CPU with another LLC they would reach other paths and
leave some unreached. Pinning the LLC while they run makes every machine run
them through the same paths, the ones tests/test_paths.py checks they reach.
"""
import contextlib

import cbp.cython_api as _api

CASE_LLC = 32 << 20


@contextlib.contextmanager
def case_llc():
    _api.set_last_level_cache(CASE_LLC)
    try:
        yield
    finally:
        _api.set_last_level_cache(_api.caches()["last_level_cache"])
