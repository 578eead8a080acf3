"""The installed build is the one we meant to ship: multi-threaded (OpenMP).

A release build that silently lost OpenMP would still pass every numerical
test, one thread at a time; this test is what fails then. CBP_ALLOW_SERIAL=1
accepts a serial build made on purpose (CBP_OPENMP=0).
"""
import glob
import os
import re
import shutil
import subprocess

import pytest

import cbp


def test_openmp_enabled():
    if os.environ.get("CBP_ALLOW_SERIAL") == "1":
        pytest.skip("CBP_ALLOW_SERIAL=1: a serial build is accepted")
    cfg = cbp.show_config(print_out=False)
    assert cfg["openmp"] is True, (
        "cbp was built without OpenMP; rebuild with an OpenMP-capable compiler, "
        "or set CBP_ALLOW_SERIAL=1 to accept a serial build: %r" % cfg)
    assert "openmp" in cfg["compile_args"] or "/openmp" in cfg["compile_args"]


def test_show_config_keys():
    cfg = cbp.show_config(print_out=False)
    for key in ("version", "openmp", "default_num_threads", "isa", "isa_available",
                "compiler", "compile_args", "openmp_runtime"):
        assert key in cfg
    assert cfg["version"] == cbp.__version__
    assert isinstance(cfg["default_num_threads"], int) and cfg["default_num_threads"] >= 1


def test_public_cython_api_ships():
    inc = cbp.get_include()
    assert os.path.isfile(os.path.join(inc, "cbp", "cython_api.pxd"))
    assert os.path.isfile(os.path.join(inc, "cbp", "__init__.py"))


# The source tree (absent when the suite runs against an installed wheel).
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src", "cbp")
CSRC = os.path.join(SRC, "csrc")
needs_source = pytest.mark.skipif(not os.path.isdir(CSRC), reason="no source tree here")


@needs_source
@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in
                                        glob.glob(os.path.join(CSRC, "*.c"))))
def test_c_sources_compile_standalone(name, tmp_path):
    # no Python.h, only their own include directory
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    cmd = [cc, "-std=c11", "-Wall", "-Werror", "-fopenmp", "-I", CSRC, "-c",
           os.path.join(CSRC, name), "-o", str(tmp_path / "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@needs_source
def test_no_c_inside_cython_strings():
    # C lives in csrc/; a Cython `cdef extern from *` block would hide it from
    # the C tools (debug line info, -fopt-info, gdb, grep)
    found = []
    for path in glob.glob(os.path.join(SRC, "*.p[yx][xid]")):
        with open(path) as f:
            text = f.read()
        for m in re.finditer(r'cdef extern from \*:\s*"""(.*?)"""', text, re.S):
            found.append((os.path.basename(path), m.group(1).count("\n")))
    assert sum(n for _, n in found) <= 40, found
