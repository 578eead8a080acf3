"""Smoke run of the benchmark harness (benchmarks/bench.py --smoke).

Keeps the harness from rotting: it must run end to end on tiny shapes and
write well-formed results. Never asserts a speed; torch and matplotlib are
optional (used when installed, not needed).
"""
import importlib.util
import json
import math
import os
import warnings

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "bench.py")


@pytest.fixture(scope="module")
def bench():
    if not os.path.isfile(BENCH):  # e.g. tests copied out of the tree to test a wheel
        pytest.skip("benchmarks/bench.py not found next to tests/")
    spec = importlib.util.spec_from_file_location("cbp_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    js = tmp / "smoke.json"
    # the chart is drawn separately below, on a few rows (15 panels take seconds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # busy-machine notice, torch's read-only-array notice
        result = bench.main(["--smoke", "--quiet", "--json", str(js), "--png", "none"])
    return result, js


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_json_written_and_matches(smoke):
    result, js = smoke
    with open(js) as f:
        data = json.load(f)  # strict JSON: no NaN
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    meta = data["meta"]
    for key in ("date", "machine", "cbp_config", "torch", "numpy", "settings"):
        assert key in meta
    assert meta["machine"]["nproc"] >= 1
    assert "version" in meta["cbp_config"]


def test_expected_rows(bench, smoke):
    rows = smoke[0]["rows"]
    expected = set()
    for shape in bench.SMOKE_SHAPES:
        layouts = ["NCHW", "NHWC"] if len(shape) > 2 else ["NCHW"]
        for layout in layouts:
            for dtype in ("float32", "float64"):
                for threads in (1, 2):
                    for op in bench.OPS:
                        expected.add((op, bench.shape_str(shape), layout, dtype, threads))
    got = [(r["op"], r["shape_str"], r["layout"], r["dtype"], r["threads"]) for r in rows]
    assert len(got) == len(set(got))
    assert set(got) == expected


def test_times_and_ratios_finite_positive(smoke):
    rows = smoke[0]["rows"]
    torch_present = smoke[0]["meta"]["torch"] is not None
    for r in rows:
        for key in ("cbp_ms", "cbp_gbps", "floor_ms", "floor_gbps", "numpy_ms",
                    "cbp_floor", "numpy_cbp", "bytes_moved"):
            assert _positive(r[key]), (key, r)
        for comp in r["floor_components"].values():
            assert _positive(comp["best_ms"]) and _positive(comp["median_ms"])
        assert r["cbp"]["best_ms"] <= r["cbp"]["median_ms"]
        if torch_present and r["op"] != "batch_norm_dx":
            assert _positive(r["torch_ms"]) and _positive(r["torch_cbp"]), r
        else:
            assert r["torch_ms"] is None and r["torch_cbp"] is None
        mem = r["peak_extra_mb"]
        assert mem is None or (math.isfinite(mem) and mem >= 0)
        # harness sanity: cbp and the NumPy implementation compute the same thing
        assert r["max_rel_diff_vs_numpy"] < (1e-3 if r["dtype"] == "float32" else 1e-9), r


def test_png_or_skipped(bench, smoke, tmp_path):
    png = tmp_path / "smoke.png"
    rows = [r for r in smoke[0]["rows"] if r["op"] in ("batch_norm_dx", "channel_stats")]
    written = bench.write_png(rows, str(png))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written is None and not png.exists()
    else:
        assert written == str(png) and png.stat().st_size > 0


def test_table_formats(bench, smoke):
    rows = smoke[0]["rows"]
    md = bench.format_table(rows, markdown=True).splitlines()
    assert md[0].startswith("| op") and len(md) == len(rows) + 2
    assert len(bench.format_table(rows).splitlines()) >= len(rows) + 2


def test_peak_memory_sees_a_temporary(bench):
    """The memory probe must see an 8 MB temporary even after a warm-up call
    (freed heap pages are trimmed first); n/a off Linux."""
    import numpy as np

    def temp():
        return float(np.ones(2 ** 20).sum())

    temp()
    mb = bench.peak_extra_mb(temp)
    if mb is None or not bench._can_measure_memory():
        pytest.skip("no /proc/self/clear_refs here")
    assert 6.0 < mb < 20.0
    assert bench.peak_extra_mb(lambda: None) < 1.0


def test_targets_counts(tmp_path, capsys):
    # benchmarks/targets.py counts the #13 targets from a run's rows; a run
    # made up here, so every count is known
    path = os.path.join(os.path.dirname(BENCH), "targets.py")
    if not os.path.isfile(path):
        pytest.skip("benchmarks/targets.py not found next to tests/")
    spec = importlib.util.spec_from_file_location("cbp_targets", path)
    targets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets)

    def row(op, shape, nbytes, floor, torch_cbp=None, layout="NCHW"):
        return {"op": op, "shape_str": shape, "layout": layout, "dtype": "float32",
                "threads": 1, "x_nbytes": nbytes, "cbp_floor": floor, "cbp_ms": 1.0,
                "torch_cbp": torch_cbp, "torch_ms": torch_cbp}
    rows = [row("batch_norm_backward", "a", 200e6, 0.9, 3.0),
            row("batch_norm_backward", "b", 200e6, 1.1, 1.5, "NHWC"),
            row("batch_norm_backward", "c", 1e6, 1.3, 1.05),
            row("batch_norm_backward", "d", 1e6, 1.1, 1.2),
            row("channel_backprop_stats", "a", 200e6, 1.0, 0.9),
            row("channel_stats", "a", 200e6, 1.25),
            row("channel_stats", "b", 200e6, 1.4)]
    run = {"meta": {"machine": {"cpu": "test"},
                    "cbp_config": {"caches": {"l3": 4 << 20}}}, "rows": rows}
    (tmp_path / "run.json").write_text(json.dumps(run))
    targets.report(str(tmp_path / "run.json"))
    out = capsys.readouterr().out
    assert "- PyTorch/cbp >= 1.1: 3/5" in out
    assert "- PyTorch/cbp >= 2 on rows >= 100 MB: 1/3" in out
    assert "- backward <= 1.0x floor, >= 100 MB, NCHW: 1/1" in out
    assert "- backward <= 1.0x floor, >= 100 MB, NHWC: 0/1" in out
    assert "- backward <= 1.2x floor, x + dy <= L3 (4 MiB): 1/2" in out
    assert "miss bwd c NCHW float32 t1: 1.30" in out
    assert "- channel_stats <= 1.3x floor, >= 100 MB: 1/2" in out
