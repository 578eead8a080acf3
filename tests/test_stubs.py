"""The type stubs (.pyi, py.typed) match the runtime package: mypy.stubtest."""
import os
import subprocess
import sys
import tempfile

import pytest

import cbp

pytest.importorskip("mypy")

HERE = os.path.dirname(os.path.abspath(__file__))


def test_py_typed_and_stubs_ship():
    pkg = os.path.dirname(cbp.__file__)
    for name in ("py.typed", "_api.pyi", "_stats.pyi", "_config.pyi",
                 "cython_api.pyi", "cython_api.pxd"):
        assert os.path.exists(os.path.join(pkg, name)), name


def test_stubtest(tmp_path):
    # Check the cbp that the tests import (src/ or an installed wheel), with a
    # config of our own so no project or user mypy config interferes.
    root = os.path.dirname(os.path.dirname(os.path.abspath(cbp.__file__)))
    config = tmp_path / "mypy.ini"
    # Optional integrations import dask/mpi4py/torch, which may be absent.
    # mypy's cache outlives the test: a cold analysis of numpy takes most of a minute.
    cache = os.path.join(tempfile.gettempdir(), "cbp-stubtest-mypy-cache")
    config.write_text(f"[mypy]\nignore_missing_imports = True\ncache_dir = {cache}\n")
    env = dict(os.environ, PYTHONPATH=root)
    if "site-packages" not in root and "dist-packages" not in root:
        env["MYPYPATH"] = root
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "cbp",
         "--mypy-config-file", str(config),
         "--allowlist", os.path.join(HERE, "stubtest_allowlist.txt"),
         "--ignore-unused-allowlist"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
