"""Build cbp's Cython kernels, with OpenMP where the compiler has it.

CBP_OPENMP=0 builds a serial package on purpose. Otherwise a build that cannot
compile with OpenMP fails loudly rather than shipping a single-threaded wheel.
"""
import os
import shlex
import sys
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


OPENMP = os.environ.get("CBP_OPENMP", "1") != "0"


def _openmp_flags():
    if not OPENMP:
        # Serial, but the kernels' `omp simd` loops still vectorize.
        if sys.platform == "win32":
            return [], []
        return ["-fopenmp-simd", "-DCBP_OPENMP_SIMD=1"], []
    if sys.platform == "win32":
        # experimental: OpenMP 2.0 plus `omp simd`
        return ["/openmp:experimental"], []
    if sys.platform == "darwin":
        # Apple clang: OpenMP through the preprocessor and an external libomp
        # (delocate vendors it into the wheel).
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def _opt_flags():
    if sys.platform == "win32":
        # C11 for _Generic (csrc/cbp_kernels.h)
        return ["/O2", "/std:c11"]
    # Portable: no host-specific -march and no fast-math; kernels vectorize by
    # independent accumulators, which needs no reassociation. No FMA
    # contraction either, so the AVX2 and AVX-512 tables of the kernels
    # (runtime dispatch, csrc/dispatch.c) round exactly like the baseline one.
    return ["-O3", "-ffp-contract=off"]


def _generate_from_templates():
    """Write the public C API's files from their Tempita templates (X.tp -> X).

    Each public function is written once in the template and instantiated per
    element type (float: _f32, double: _f64), as scikit-learn does with its
    .pyx.tp files; Tempita ships with Cython.
    """
    from Cython import Tempita

    for template in ("src/cbp/cython_api.pxd.tp", "src/cbp/_public_api.pxi.tp"):
        with open(template) as f:
            text = Tempita.sub(f.read())
        target = template[:-len(".tp")]
        if os.path.exists(target):
            with open(target) as f:
                if f.read() == text:
                    continue
        with open(target, "w") as f:
            f.write(text)


_generate_from_templates()
omp_compile, omp_link = _openmp_flags()
compile_args = _opt_flags() + omp_compile
build_info = " ".join(compile_args)

CSRC = "src/cbp/csrc"
# The C kernels: one table file per (element type, instruction set), the
# dispatcher, the drivers' helpers and the runtime facts.
KERNEL_SOURCES = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))
# setuptools does not scan #includes: without this, an incremental build keeps
# objects compiled from older headers.
KERNEL_HEADERS = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".h"))

_ext_args = dict(
    include_dirs=[CSRC],
    depends=KERNEL_HEADERS,
    # dladdr (the OpenMP runtime's path for show_config) is in libdl before glibc 2.34.
    libraries=["dl"] if sys.platform.startswith("linux") else [],
    extra_compile_args=compile_args,
    extra_link_args=omp_link,
    define_macros=[("CBP_COMPILE_ARGS", '"%s"' % build_info),
                   ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)
extensions = [
    # The kernels, the public C API (cython_api.pxd) and the Python entry
    # points (re-exported by cbp._kernels), compiled once.
    Extension("cbp.cython_api", ["src/cbp/cython_api.pyx"] + KERNEL_SOURCES, **_ext_args),
]

_OPENMP_PROBE = textwrap.dedent("""\
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return (n >= 1 && omp_get_max_threads() >= 1) ? 0 : 1;
    }
""")


def _probe_openmp(compiler):
    """Compile and link a tiny OpenMP program with the flags the extensions use."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as f:
            f.write(_OPENMP_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=omp_compile)
            # distutils adds LDFLAGS (e.g. -L of a macOS libomp) to shared-object
            # links only; the probe is an executable, so pass them on.
            ldflags = [] if sys.platform == "win32" else \
                shlex.split(os.environ.get("LDFLAGS", ""))
            compiler.link_executable(objs, "omp_probe", output_dir=tmp,
                                     extra_postargs=omp_link + ldflags)
        except Exception as exc:  # CompileError, LinkError
            return str(exc)
    return None


class BuildExtCheckingOpenMP(build_ext):
    """build_ext that refuses to produce a serial build by accident."""

    def build_extensions(self):
        if OPENMP:
            error = _probe_openmp(self.compiler)
            if error is not None:
                raise RuntimeError(
                    "cbp: this compiler cannot build with OpenMP (%s; flags %s / %s): %s\n"
                    "A release build must be multi-threaded. Install an OpenMP runtime "
                    "(gcc: libgomp; macOS: libomp, with CPPFLAGS/LDFLAGS pointing at it), "
                    "or set CBP_OPENMP=0 to build a serial package on purpose."
                    % (self.compiler.compiler_type, " ".join(omp_compile),
                       " ".join(omp_link), error))
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExtCheckingOpenMP},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
        include_path=["src"],
    ),
)
