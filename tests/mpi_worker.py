"""Run under mpiexec by tests/test_mpi.py: synchronized batch norm over MPI ranks.

Every rank builds the same global batch (fixed seeds), keeps its uneven shard
(one rank's shard is empty in some cases), runs cbp.mpi's forward/backward,
and rank 0 gathers the shards and compares with the single-process cbp call on
the whole batch and a float64 NumPy reference. Rank 0 prints one JSON line
with the largest differences and exits 1 on a mismatch; an exception on any
rank aborts the whole job (so no rank waits forever in a collective).
"""
import json
import os
import sys
import traceback

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cbp  # noqa: E402
import cbp.mpi  # noqa: E402
from test_sync import make_batch, ref64, rel  # noqa: E402

COMM = MPI.COMM_WORLD


def shard_sizes(N, size, case):
    """Uneven sizes summing to N; in odd cases the last rank's shard is empty."""
    rng = np.random.default_rng(1000 + case)
    weights = rng.uniform(0.3, 1.0, size)
    if case % 2 and size > 1:
        weights[-1] = 0.0
    sizes = np.floor(weights / weights.sum() * N).astype(int)
    sizes[0] += N - sizes.sum()
    return sizes.tolist()


def run_case(case, shape, layout, dtype):
    rank, size = COMM.rank, COMM.size
    x, dy, scale, bias = make_batch(shape, layout, dtype, seed=case)
    sizes = shard_sizes(shape[0], size, case)
    lo = sum(sizes[:rank])
    xs, dys = x[lo:lo + sizes[rank]], dy[lo:lo + sizes[rank]]

    allreduce = cbp.mpi.make_allreduce(COMM)
    st = cbp.sync_channel_stats(xs, allreduce=allreduce, layout=layout)
    y, mean, inv_std = cbp.mpi.batch_norm_forward(xs, scale, bias, comm=COMM, layout=layout)
    dx, dscale, dbias = cbp.mpi.batch_norm_backward(xs, dys, mean, inv_std, scale, comm=COMM,
                                                    layout=layout)
    per_channel = np.concatenate([mean, inv_std, dscale, dbias, st.mean, st.m2])
    gathered = COMM.gather((y, dx, per_channel), root=0)
    if rank != 0:
        return None

    # every rank holds bitwise identical per-channel results
    same = all(np.array_equal(g[2], per_channel) for g in gathered)
    y = np.concatenate([g[0] for g in gathered])
    dx = np.concatenate([g[1] for g in gathered])
    whole = cbp.channel_stats(x, layout=layout)
    y1, mean1, inv1 = cbp.batch_norm_forward(x, scale, bias, layout=layout)
    dx1, dscale1, dbias1 = cbp.batch_norm_backward(x, dy, mean, inv_std, scale, layout=layout)
    r64 = ref64(x, dy, scale, bias, layout)
    gs = np.sqrt(whole.count)
    std = np.sqrt(whole.var)
    d = {
        "count_equal": st.count == whole.count,
        "same_on_all_ranks": same,
        "mean_over_std": float(np.max(np.abs(st.mean - whole.mean) / std)),
        "var_rel": float(np.max(np.abs(st.var / whole.var - 1))),
        "var_rel_vs_f64": float(np.max(np.abs(st.var / r64["var"] - 1))),
        "inv_std_rel": rel(inv_std, inv1),
        "y_rel": rel(y, y1),
        "dx_rel": rel(dx, dx1),
        "dscale_rel": rel(dscale, dscale1, gs),
        "dbias_rel": rel(dbias, dbias1, gs),
        "y_rel_vs_f64": rel(y, r64["y"]),
        "dx_rel_vs_f64": rel(dx, r64["dx"]),
        "y_max_abs": float(np.max(np.abs(y.astype(np.float64) - y1))),
        "dx_max_abs": float(np.max(np.abs(dx.astype(np.float64) - dx1))),
    }
    f64 = dtype == np.float64
    vtol = 1e-11 if f64 else 1e-7
    xtol = 1e-10 if f64 else 1e-6  # |mean| = 1e4 * std: ulp(mean) ~ 2e-12 * std
    # float32 terms share float32 partial sums (<= 32 terms) inside a block, and
    # a shard boundary changes which terms share a block
    gtol = 1e-12 if f64 else 1e-6
    d["ok"] = bool(
        d["count_equal"] and same and d["mean_over_std"] < 1e-9 and d["var_rel"] < vtol
        and d["var_rel_vs_f64"] < vtol and d["inv_std_rel"] < vtol
        and d["dscale_rel"] < gtol and d["dbias_rel"] < gtol
        and d["y_rel"] < xtol and d["dx_rel"] < xtol
        and d["y_rel_vs_f64"] <= max(xtol, 2 * rel(y1, r64["y"]))
        and d["dx_rel_vs_f64"] <= max(xtol, 2 * rel(dx1, r64["dx"])))
    return d


CASES = [
    ((19, 4, 5, 3), "NCHW", np.float32),
    ((19, 4, 5, 3), "NHWC", np.float32),
    ((23, 6, 7), "NCHW", np.float64),
    ((23, 6, 7), "NHWC", np.float64),
    ((31, 5), "NCHW", np.float32),
    ((11, 3, 2, 2, 3), "NHWC", np.float64),
]


def check_options():
    """Affine off, running statistics, return_stats and param_grads="local" through cbp.mpi,
    against the single-process call on the whole batch (float64)."""
    rank, size = COMM.rank, COMM.size
    x, dy, _, _ = make_batch((13, 3, 4, 2), "NCHW", np.float64, seed=77, offset_ratio=10.0)
    sizes = shard_sizes(13, size, 1)  # the last rank's shard is empty
    lo = sum(sizes[:rank])
    xs, dys = x[lo:lo + sizes[rank]], dy[lo:lo + sizes[rank]]
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    y, mean, inv_std, st = cbp.mpi.batch_norm_forward(
        xs, comm=COMM, running_mean=rm, running_var=rv, momentum=0.25, return_stats=True)
    dx, ds_local, db_local = cbp.mpi.batch_norm_backward(xs, dys, mean, inv_std, comm=COMM,
                                                         param_grads="local")
    rm1, rv1 = np.full(3, 0.5), np.full(3, 2.0)
    y1, mean1, inv1, st1 = cbp.batch_norm_forward(x, running_mean=rm1, running_var=rv1,
                                                  momentum=0.25, return_stats=True)
    dx1, _, _ = cbp.batch_norm_backward(x, dy, mean1, inv1, None)
    want_ds, want_db = cbp.channel_backprop_stats(xs, dys, mean, inv_std) if sizes[rank] \
        else (np.zeros(3), np.zeros(3))
    local_ok = (rel(ds_local, want_ds, 1.0) < 1e-12 and rel(db_local, want_db, 1.0) < 1e-12)
    gathered = COMM.gather((y, dx, local_ok), root=0)
    if rank != 0:
        return None
    d = {
        "y_rel": rel(np.concatenate([g[0] for g in gathered]), y1),
        "dx_rel": rel(np.concatenate([g[1] for g in gathered]), dx1),
        "running_mean_rel": rel(rm, rm1), "running_var_rel": rel(rv, rv1),
        "stats_var_rel": rel(st.var, st1.var), "count_equal": st.count == st1.count,
        "local_param_grads": all(g[2] for g in gathered),
    }
    d["ok"] = bool(d["count_equal"] and d["local_param_grads"]
                   and max(d["y_rel"], d["dx_rel"], d["running_mean_rel"],
                           d["running_var_rel"], d["stats_var_rel"]) < 1e-12)
    return d


def check_errors():
    for bad, exc in (("world", TypeError), (MPI.COMM_NULL, ValueError)):
        try:
            cbp.mpi.make_allreduce(bad)
        except exc:
            pass
        else:
            raise AssertionError(f"make_allreduce({bad!r}) did not raise {exc.__name__}")


def main():
    check_errors()
    results = []
    for i, (shape, layout, dtype) in enumerate(CASES):
        d = run_case(i, shape, layout, dtype)
        if d is not None:
            d.update(case=i, shape=list(shape), layout=layout, dtype=np.dtype(dtype).name)
            results.append(d)
    d = check_options()
    if d is not None:
        d.update(case="options")
        results.append(d)
    if COMM.rank == 0:
        ok = all(d["ok"] for d in results)
        print(json.dumps({"ranks": COMM.size, "ok": ok, "cases": results}), flush=True)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.flush()
        COMM.Abort(2)
    code = COMM.bcast(code if COMM.rank == 0 else None, root=0)
    sys.exit(code)
