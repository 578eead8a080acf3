"""Data-parallel training with synchronized batch norm over MPI, in plain NumPy.

    mpiexec -n 2 python examples/mpi_train_step.py [--steps 5] [--batch 24]

A small conv-like model: 3x3 convolution (im2col) -> batch norm -> ReLU ->
global average pool -> linear -> softmax cross-entropy. Each rank holds an
uneven shard of every batch. Batch norm is synchronized with
``cbp.mpi.batch_norm_forward/backward`` (statistics and dscale/dbias of the
whole batch); the other parameters' gradients are summed with one packed
Allreduce. After a few SGD steps rank 0 trains the same model on the
concatenated batches in one process with ``cbp.batch_norm_forward/backward``
and checks that the parameters are equal.

Run ranks with OMP_NUM_THREADS=1 unless each rank has cores of its own.
"""
import argparse
import sys

import numpy as np

import cbp

try:
    from mpi4py import MPI
except ImportError:  # pragma: no cover
    sys.exit("this example needs mpi4py: pip install 'cbp[mpi]'")

import cbp.mpi  # noqa: E402

CIN, C1, K, H, W = 3, 8, 5, 6, 6  # input channels, conv channels, classes, image size


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((C1, CIN, 3, 3)) * np.sqrt(2.0 / (CIN * 9)),
        "g1": np.ones(C1),            # batch-norm scale
        "b1": np.zeros(C1),           # batch-norm bias
        "w2": rng.standard_normal((K, C1)) * np.sqrt(1.0 / C1),
        "c2": np.zeros(K),
    }


def batch(step, n, seed=1):
    """The global batch of a step (the same on every rank)."""
    rng = np.random.default_rng([seed, step])
    x = rng.standard_normal((n, CIN, H, W)) * 3.0 + 5.0
    labels = rng.integers(0, K, n)
    return x, labels


def im2col(x):
    """(N, C, H, W) -> (N, C*9, H*W) patches of a 3x3 'same' convolution."""
    n = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, CIN, 3, 3, H, W))
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = xp[:, :, i:i + H, j:j + W]
    return cols.reshape(n, CIN * 9, H * W)


def train_step(p, x, labels, n_total, bn_forward, bn_backward, sum_grads, lr=0.1):
    """One SGD step on this process's shard; returns the (global) loss."""
    n = x.shape[0]
    cols = im2col(x)
    h = np.einsum("ok,nkp->nop", p["w1"].reshape(C1, -1), cols).reshape(n, C1, H, W)
    z, mean, inv_std = bn_forward(h, p["g1"], p["b1"])
    a = np.maximum(z, 0.0)
    pooled = a.mean(axis=(2, 3))
    logits = pooled @ p["w2"].T + p["c2"]
    logits -= logits.max(axis=1, keepdims=True) if n else 0.0
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    loss_sum = -np.log(prob[np.arange(n), labels]).sum()

    dlogits = prob
    dlogits[np.arange(n), labels] -= 1.0
    dlogits /= n_total                       # loss is the mean over the whole batch
    grads = {"w2": dlogits.T @ pooled, "c2": dlogits.sum(axis=0)}
    dpooled = dlogits @ p["w2"]
    dz = np.where(z > 0, dpooled[:, :, None, None] / (H * W), 0.0)
    dh, grads["g1"], grads["b1"] = bn_backward(h, dz, mean, inv_std, p["g1"])
    grads["w1"] = np.einsum("nop,nkp->ok", dh.reshape(n, C1, -1), cols).reshape(p["w1"].shape)

    # one packed collective for every gradient that is a per-shard partial sum
    # (g1/b1 come back from the synchronized backward already summed)
    keys = ["w1", "w2", "c2"]
    flat = np.concatenate([grads[k].ravel() for k in keys] + [[loss_sum]])
    sum_grads(flat)
    off = 0
    for k in keys:
        size = grads[k].size
        grads[k] = flat[off:off + size].reshape(grads[k].shape)
        off += size
    for k in p:
        p[k] -= lr * grads[k]
    return flat[-1] / n_total


def shard(rank, size, n):
    """Uneven contiguous shards: rank r gets a share proportional to r + 1."""
    w = np.arange(1, size + 1, dtype=float)
    bounds = np.concatenate([[0], np.round(np.cumsum(w) / w.sum() * n)]).astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=24, help="global batch size")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    allreduce = cbp.mpi.make_allreduce(comm)
    sl = shard(rank, size, args.batch)

    def bn_fwd(h, g, b):
        return cbp.mpi.batch_norm_forward(h, g, b, comm=comm)

    def bn_bwd(h, dz, mean, inv_std, g):
        return cbp.mpi.batch_norm_backward(h, dz, mean, inv_std, g, comm=comm)

    sizes = [shard(r, size, args.batch).stop - shard(r, size, args.batch).start
             for r in range(size)]
    if rank == 0:
        print(f"{size} ranks, global batch {args.batch}, shard sizes {sizes}")
    params = init_params()
    for step in range(args.steps):
        x, labels = batch(step, args.batch)
        loss = train_step(params, x[sl], labels[sl], args.batch, bn_fwd, bn_bwd, allreduce)
        if rank == 0:
            print(f"step {step}: loss {loss:.6f}")

    gathered = comm.gather(params, root=0)
    ok = True
    if rank == 0:
        # every rank ends with identical parameters
        same = all(all(np.array_equal(g[k], params[k]) for k in params) for g in gathered)
        # the single-process run on the concatenated batch
        ref = init_params()
        for step in range(args.steps):
            x, labels = batch(step, args.batch)
            train_step(ref, x, labels, args.batch,
                       lambda h, g, b: cbp.batch_norm_forward(h, g, b),
                       lambda h, dz, m, s, g: cbp.batch_norm_backward(h, dz, m, s, g),
                       lambda buf: None)
        worst = max(float(np.max(np.abs(params[k] - ref[k]))
                          / max(float(np.max(np.abs(ref[k]))), 1e-300)) for k in ref)
        ok = same and worst < 1e-10
        verdict = "match" if ok else "DO NOT match"
        print(f"parameters after {args.steps} steps on {size} ranks {verdict} the single-process "
              f"run (max relative difference {worst:.2e}; identical on all ranks: {same})")
    ok = comm.bcast(ok, root=0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
