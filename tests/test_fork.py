"""GNU libgomp after fork: a forked worker must not hang in cbp.

libgomp's thread pool does not survive fork(): a child whose first parallel
region asks for more than one thread waits forever for the parent's pool
threads (scikit-learn #19272). cbp runs on one thread in a forked child
(a pthread_atfork handler in cbp.cython_api), so a 'fork' process pool works;
'spawn' or 'forkserver' keep all threads in the workers.
The scenario runs in a subprocess with a timeout so a hang fails the test.
"""
import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

import cbp

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import numpy as np
    import cbp
    from cbp import cython_api

    def work(seed):
        x = np.random.default_rng(seed).standard_normal((8, 16, 32, 32)).astype(np.float32)
        dy = np.random.default_rng(seed + 1).standard_normal(x.shape).astype(np.float32)
        s = cbp.channel_stats(x)                 # default threads
        s2 = cbp.channel_stats(x, num_threads=2)  # explicit threads
        out = cbp.batch_norm_backward(x, dy, s.mean, s.inv_std(), np.ones(16), num_threads=2)
        return (seed, s.mean.tolist(), s2.mean.tolist(), out[1].tolist(),
                cython_api.in_forked_child(),
                cbp.show_config(print_out=False)["default_num_threads"])

    if __name__ == "__main__":
        # the parent runs cbp with two threads first: libgomp's pool now exists
        parent = [work(seed) for seed in range(3)]
        assert not parent[0][4]
        with mp.get_context("fork").Pool(2) as pool:
            child = pool.map(work, range(3))
        for p, c in zip(parent, child):
            assert p[:4] == c[:4], "forked worker computed different results"
        print("FORKED_CHILD", child[0][4], "CHILD_THREADS", child[0][5])
        # a spawned pool keeps threads
        with mp.get_context("spawn").Pool(1) as pool:
            sp = pool.map(work, [0])
        assert sp[0][:4] == parent[0][:4] and not sp[0][4]
        print("OK")
""")


def test_fork_pool_after_parent_used_threads(tmp_path):
    script = tmp_path / "fork_pool.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cbp.__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a fork-started process pool hung in cbp after the parent used OpenMP")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
    cfg = cbp.show_config(print_out=False)
    if cfg["openmp"] and sys.platform.startswith("linux") and cfg["compiler"].startswith("gcc"):
        assert "CHILD_THREADS 1" in proc.stdout
