"""show_config(): what this build of cbp is and how it will run."""
from __future__ import annotations

import platform
import sys

from . import _kernels
from ._version import __version__


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
    }
    if print_out:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}} : {value}")
    return info
