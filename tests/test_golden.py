"""Golden outputs: the exact bits of every public operation on the golden set.

tests/golden.py holds the cases (chosen to reach every kernel path; see
tests/test_paths.py) and golden_hashes.json their SHA-256. A mismatch means
the summation order changed: a bug, unless an order constant was changed on
purpose (then regenerate with `python tests/golden.py --write` in that commit
and say why in the README's change log).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cbp
import golden

EXPECTED = golden.load()


def test_hash_file_covers_every_case():
    ids = {golden.case_id(c) for c in golden.CASES}
    assert {k.split(":")[0] for k in EXPECTED} == ids


@pytest.mark.parametrize("case", golden.CASES, ids=golden.case_id)
def test_golden(case):
    got = golden.case_hashes(case)
    want = {k: v for k, v in EXPECTED.items() if k.startswith(golden.case_id(case) + ":")}
    assert got == want


def test_golden_other_thread_counts():
    # units are fixed by the shape, so the team size changes no bit
    case = ((6, 40, 32, 32), "NCHW", "float32", 65536)
    d = golden.make_case(case)
    for layout in ("NCHW", "NHWC"):
        x = d["x"] if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(d["x"], 1, -1))
        base = cbp.channel_stats(x, layout=layout, num_threads=1)
        for nt in (2, 3, 5):
            st = cbp.channel_stats(x, layout=layout, num_threads=nt)
            assert st.mean.tobytes() == base.mean.tobytes()
            assert st.m2.tobytes() == base.m2.tobytes()


def _isa_names():
    return list(cbp.show_config(print_out=False).get("isa_available", []))


@pytest.mark.parametrize("isa", _isa_names() or [None])
def test_golden_every_isa(isa):
    if isa is None:
        pytest.skip("this build reports no instruction-set table")
    env = dict(os.environ, CBP_ISA=isa)
    proc = subprocess.run([sys.executable, golden.__file__], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    bad = sorted(k for k in EXPECTED if got.get(k) != EXPECTED[k])
    assert not bad, f"CBP_ISA={isa}: {len(bad)} outputs differ, e.g. {bad[:5]}"
