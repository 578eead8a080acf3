"""cbp.mpi under a real MPI launcher: mpiexec -n 2 and -n 3 (oversubscribed).

Each run has a timeout, so a failing rank cannot hang the suite; ranks run
with OMP_NUM_THREADS=1. Skipped when mpi4py or mpiexec is not available
(``pip install "cbp[mpi]"`` installs mpi4py and the MPICH wheel, whose
mpiexec sits next to the Python executable).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("mpi4py")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 120


def _find_mpiexec():
    for name in ("mpiexec", "mpirun"):
        cand = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which("mpiexec") or shutil.which("mpirun")


MPIEXEC = _find_mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # make the package importable in the ranks the same way it is here
    import cbp
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cbp.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


def _run(n, script, *args):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, script, *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} timed out after {TIMEOUT}s\nstdout:\n{e.stdout}\n"
                    f"stderr:\n{e.stderr}")
    return proc


@pytest.mark.parametrize("n", [2, 3])
def test_sync_batch_norm_equals_single_process(n):
    proc = _run(n, os.path.join(HERE, "mpi_worker.py"))
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    res = json.loads(lines[0])
    assert res["ranks"] == n and res["ok"]
    assert len(res["cases"]) == 7 and all(c["ok"] for c in res["cases"]), res["cases"]


def test_example_train_step():
    """The data-parallel example: parameters after training equal the single-process run."""
    proc = _run(2, os.path.join(ROOT, "examples", "mpi_train_step.py"), "--steps", "3")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "match the single-process run" in proc.stdout

