"""The installed build is the one we meant to ship: multi-threaded (OpenMP).

A release build that silently lost OpenMP would still pass every numerical
test, one thread at a time; this test is what fails then. CBP_ALLOW_SERIAL=1
accepts a serial build made on purpose (CBP_OPENMP=0).
"""
import os

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
    for key in ("version", "openmp", "default_num_threads", "compiler", "compile_args",
                "openmp_runtime"):
        assert key in cfg
    assert cfg["version"] == cbp.__version__
    assert isinstance(cfg["default_num_threads"], int) and cfg["default_num_threads"] >= 1


def test_public_cython_api_ships():
    inc = cbp.get_include()
    assert os.path.isfile(os.path.join(inc, "cbp", "cython_api.pxd"))
    assert os.path.isfile(os.path.join(inc, "cbp", "__init__.py"))
