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


# (canonical shape, layout, cache block): large enough that teams of up to 7
# threads really run (one thread per 16384 elements), on every kind of
# piece a share can be cut into: plane chunks, cache blocks, short-plane
# columns, row groups split inside their columns, widened rows, 2-D rows
TEAM_CASES = [((4, 40, 70, 70), "NCHW", 65536), ((8, 24, 33, 33), "NCHW", 200000),
              ((64, 50, 7, 7), "NCHW", None), ((16, 200, 7, 7), "NHWC", None),
              ((300, 20, 5, 5), "NHWC", None), ((1500, 130), "NCHW", None),
              # 63 groups of 63 rows fused in pairs: each group's last fused row
              # is short, and shares of 4 threads end inside its columns
              ((3969, 40), "NCHW", None)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,layout,cache", TEAM_CASES)
def test_every_team_size_gives_the_same_bits(shape, layout, cache, dtype):
    rng = np.random.default_rng(7)
    shp = shape if layout == "NCHW" or len(shape) == 2 else (shape[0],) + shape[2:] + (shape[1],)
    x = (rng.standard_normal(shp) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shp).astype(dtype)
    C = shape[1]
    mean, inv_std, scale, bias = (rng.standard_normal(C), rng.uniform(0.5, 2, C),
                                  rng.uniform(0.5, 1.5, C), rng.standard_normal(C))
    old = cbp._kernels.cache_block_bytes(cache) if cache else None
    try:
        def run(nt):
            st = cbp.channel_stats(x, layout=layout, num_threads=nt)
            ds, db = cbp.channel_backprop_stats(x, dy, mean, inv_std, layout=layout,
                                                num_threads=nt)
            dx = cbp.batch_norm_dx(x, dy, mean, inv_std, scale, ds, db, x.size // C,
                                   layout=layout, num_threads=nt)
            bw = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout,
                                         num_threads=nt)
            fw = cbp.batch_norm_forward(x, scale, bias, layout=layout, num_threads=nt)
            inf = cbp.batch_norm_inference(x, scale, bias, mean, 1 / inv_std ** 2,
                                           layout=layout, num_threads=nt)
            return [a.tobytes() for a in (st.mean, st.m2, ds, db, dx, *bw, *fw, inf)]
        base = run(1)
        for nt in (2, 3, 4, 5, 7):
            assert cbp.plan_info(shp, dtype=dtype, layout=layout, num_threads=nt,
                                 op="batch_norm_backward")["threads"] == nt
            assert run(nt) == base, nt
    finally:
        if old is not None:
            cbp._kernels.cache_block_bytes(old)
