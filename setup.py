"""Build cbp's Cython kernels, with OpenMP where the compiler has it.

CBP_OPENMP=0 builds a serial package on purpose. Otherwise a build that cannot
compile with OpenMP fails loudly rather than shipping a single-threaded wheel.
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup


def _openmp_flags():
    if os.environ.get("CBP_OPENMP", "1") == "0":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang: OpenMP through the preprocessor and an external libomp
        # (delocate vendors it into the wheel).
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def _opt_flags():
    if sys.platform == "win32":
        return ["/O2"]
    # Portable: no -march=native and no -ffast-math; kernels vectorize by
    # independent accumulators, which needs no reassociation.
    return ["-O3"]


omp_compile, omp_link = _openmp_flags()
compile_args = _opt_flags() + omp_compile
build_info = " ".join(compile_args)

extensions = [
    Extension(
        "cbp._kernels",
        ["src/cbp/_kernels.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=omp_link,
        define_macros=[("CBP_COMPILE_ARGS", '"%s"' % build_info),
                       ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
        include_path=["src"],
    ),
)
