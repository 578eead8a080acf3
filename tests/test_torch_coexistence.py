"""cbp and PyTorch in one process, imported in either order, both multi-threaded.

Both bring an OpenMP runtime (cbp: its own, vendored in wheels; torch: its
libgomp or libomp). Each scenario runs in a fresh subprocess with a timeout, so
a crash or a deadlock fails the test rather than the test run.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import cbp

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="PyTorch not installed")

BODY = textwrap.dedent("""
    import numpy as np

    def use_cbp(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32) + 2.0
        dy = rng.standard_normal(x.shape).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, 16)
        y, mean, inv_std = cbp.batch_norm_forward(x, scale, np.zeros(16), num_threads=2)
        dx, ds, db = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, num_threads=2)
        x64 = x.astype(np.float64)
        m = x64.mean(axis=(0, 2, 3))
        assert np.allclose(mean, m, rtol=1e-5, atol=1e-5), "cbp mean"
        assert np.allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-4,
                           atol=1e-2), "cbp dbias"
        # default thread count, as the runtimes set it
        s = cbp.channel_stats(x)
        assert np.array_equal(s.mean, mean)
        return x, dy, scale, mean, inv_std, dx, ds, db

    def use_torch(x, dy, scale, mean, inv_std, dx, ds, db):
        tx = torch.from_numpy(x).requires_grad_(True)
        w = torch.from_numpy(scale.astype(np.float32)).requires_grad_(True)
        y = torch.nn.functional.batch_norm(tx, None, None, w, None, training=True, eps=1e-5)
        y.backward(torch.from_numpy(dy))
        assert np.allclose(tx.grad.numpy(), dx, rtol=1e-3, atol=1e-4), "dx vs torch"
        assert np.allclose(w.grad.numpy(), ds, rtol=1e-3, atol=1e-2), "dscale vs torch"
        a = torch.randn(256, 256)
        assert torch.allclose(a @ a.T, (a @ a.T).T, atol=1e-3)

    torch.set_num_threads(2)
    for seed in range(3):
        args = use_cbp(seed)
        use_torch(*args)
    # neither library changed the other's thread setting
    assert torch.get_num_threads() == 2, torch.get_num_threads()
    assert cbp.show_config(print_out=False)["default_num_threads"] >= 1
    print("OK", torch.__version__, cbp.show_config(print_out=False)["openmp_runtime"])
""")


@pytest.mark.parametrize("order", ["torch_first", "cbp_first"])
def test_cbp_and_torch_in_one_process(tmp_path, order):
    imports = "import torch\nimport cbp\n" if order == "torch_first" else \
        "import cbp\nimport torch\n"
    script = tmp_path / "both.py"
    script.write_text(imports + BODY)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cbp.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("OMP_NUM_THREADS", None)
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cbp + torch ({order}) hung")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")
