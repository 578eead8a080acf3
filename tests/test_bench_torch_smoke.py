"""Smoke run of benchmarks/bench_torch.py --smoke: it runs end to end on tiny shapes and
writes well-formed results (never asserts a speed)."""
import importlib.util
import json
import math
import os

import pytest

pytest.importorskip("torch")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "bench_torch.py")


def test_bench_torch_smoke(tmp_path):
    if not os.path.isfile(BENCH):  # tests copied out of the tree to test a wheel
        pytest.skip("benchmarks/bench_torch.py not found next to tests/")
    spec = importlib.util.spec_from_file_location("cbp_bench_torch", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    js = tmp_path / "torch.json"
    res = mod.main(["--smoke", "--quiet", "--json", str(js)])
    with open(js) as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert len(res["layer"]) == 2 * 2 * 2 and len(res["e2e"]) == 2 * 2
    for row in res["layer"] + res["e2e"]:
        for key in ("torch_ms", "cbp_ms", "speedup"):
            assert math.isfinite(row[key]) and row[key] > 0
    text = mod.markdown(res)
    assert "Per layer" in text and "End to end" in text
