"""Instruction-set tables: chosen once at import, reported, forceable.

Every table computes the same bits (tests/test_golden.py runs the golden set
under each one); these tests check the choice itself.
"""
import os
import platform
import subprocess
import sys

import pytest

import cbp
from cbp import cython_api


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=120)


def test_show_config_reports_the_active_isa():
    cfg = cbp.show_config(print_out=False)
    assert cfg["isa_available"], "no instruction set available"
    assert cfg["isa"] in cfg["isa_available"]
    assert set(cfg["isa_available"]) <= set(cython_api.isa_compiled())
    assert cython_api.isa_default() in cfg["isa_available"]
    if "CBP_ISA" not in os.environ:
        assert cfg["isa"] == cython_api.isa_default()
    assert cbp.plan_info((2, 3, 4, 4))["isa"] == cfg["isa"]


def _cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def test_default_on_x86_64_with_avx2():
    # the AVX-512 table is the default on Intel CPUs only (csrc/dispatch.c)
    available = cython_api.isa_available()
    if "avx2" not in available:
        pytest.skip("no AVX2 on this CPU")
    vendor = _cpu_vendor()
    if vendor is None:
        pytest.skip("the CPU vendor is read from /proc/cpuinfo")
    want = "avx512" if vendor == "GenuineIntel" and "avx512" in available else "avx2"
    assert cython_api.isa_default() == want


def test_baseline_is_always_available():
    baseline = cython_api.isa_compiled()[-1]
    assert baseline in cython_api.isa_available()
    expected = {"x86_64": "sse2", "amd64": "sse2", "aarch64": "neon", "arm64": "neon"}
    assert baseline == expected.get(platform.machine().lower(), "generic")


@pytest.mark.parametrize("isa", cython_api.isa_available())
def test_cbp_isa_forces_a_table(isa):
    proc = _run("import cbp; c = cbp.show_config(print_out=False); print(c['isa'])",
                CBP_ISA=isa.upper())  # names are case-insensitive
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == isa


def test_cbp_isa_unknown_name_is_an_import_error():
    proc = _run("import cbp", CBP_ISA="sse9")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "CBP_ISA='sse9'" in proc.stderr
    for name in cython_api.isa_available():
        assert name in proc.stderr  # the message lists what is available


def test_cbp_isa_unsupported_name_is_an_import_error():
    unsupported = [n for n in cython_api.isa_compiled() if n not in cython_api.isa_available()]
    if not unsupported:
        pytest.skip("this CPU supports every instruction set of this build")
    proc = _run("import cbp", CBP_ISA=unsupported[0])
    assert proc.returncode != 0 and "not supported by this CPU" in proc.stderr


def test_select_isa_return_codes():
    active = cython_api.isa()
    try:
        assert cython_api.select_isa("no-such-isa") == -1
        assert cython_api.isa() == active
        for name in cython_api.isa_available():
            assert cython_api.select_isa(name) == 0 and cython_api.isa() == name
    finally:
        cython_api.select_isa(active)
