"""show_config(): what this build of cbp is and how it will run."""
from __future__ import annotations

import os
import platform
import sys

from . import _kernels, cython_api
from ._version import __version__


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
    """Report the version, OpenMP status, default thread count and build flags.

    Returns the report as a dict; prints it unless ``print_out=False``.
    """
    info = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "openmp": _kernels.openmp_enabled(),
        "default_num_threads": _kernels.max_threads(),
        "compiler": _kernels.compiler(),
        "compile_args": _kernels.compile_args(),
        "openmp_runtime": openmp_runtime(),
    }
    if print_out:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}} : {value}")
    return info
