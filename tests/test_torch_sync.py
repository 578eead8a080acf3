"""cbp.torch.SyncBatchNorm across processes: gloo on 127.0.0.1, 2 and 3 ranks, uneven shards.

The ranks (tests/torch_sync_worker.py, started with torch.multiprocessing's spawn)
save what they computed; this process checks it against PyTorch's own batch
norm run in one process on the concatenated batch. Each run has a deadline:
a rank that hangs in a collective is killed and the test fails.
"""
import os
import socket
import sys
import time

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import torch_sync_worker as worker  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    # Spawned children of the AddressSanitizer build (.ci/sanitize preloads libasan)
    # run all of PyTorch under ASan; the single-process suite covers cbp's code there.
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="multi-process PyTorch under AddressSanitizer"),
]

DEADLINE = 90.0  # seconds for a whole run: start-up of every rank, all scenarios
STEPS = 3
RUNS = {  # world size: (shard sizes of the layer tests, shard sizes of the DDP test)
    2: ([3, 5], [3, 5]),
    3: ([4, 0, 3], [2, 1, 4]),  # an empty shard in the layer tests
}
AGREEMENT = {}  # max relative differences, printed at the end (pytest -s)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, tmp_path, monkeypatch):
    sizes, ddp_sizes = RUNS[world]
    # gloo on the loopback interface only (Linux names it lo); one thread per rank
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = mp.spawn(worker.main, args=(world, _free_port(), str(tmp_path), sizes, STEPS,
                                      ddp_sizes), nprocs=world, join=False)
    deadline = time.monotonic() + DEADLINE
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} ranks did not finish within {DEADLINE} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)], sizes, ddp_sizes


def _rel(got, want):
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / max(want.abs().max().item(), 1e-300)).item()


def _reference_layer(x, dy, momentum=0.3, affine=True):
    """PyTorch's BatchNorm2d on the whole batch in one process."""
    C = x.shape[1]
    m = torch.nn.BatchNorm2d(C, momentum=momentum, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 2.0, C))
            m.bias.copy_(torch.linspace(-1.0, 1.0, C))
    x = x.double().requires_grad_(True)
    y = m(x)
    y.backward(dy.double())
    return dict(y=y.detach(), dx=x.grad, dw=m.weight.grad, db=m.bias.grad,
                rm=m.running_mean, rv=m.running_var)


def _check_layer(results, ref, parts, dtype, label):
    tol = 1e-12 if dtype == torch.float64 else 5e-6
    worst = {}
    for key in ("y", "dx"):
        got = torch.cat([results[r][key] for r in parts])
        worst[key] = _rel(got, ref[key])
    for key in ("dw", "db"):
        # each rank's own part; together the whole batch's gradient
        worst[key] = _rel(sum(results[r][key].double() for r in parts), ref[key])
    for key in ("rm", "rv"):
        worst[key] = max(_rel(results[r][key], ref[key]) for r in parts)
    for r in parts:
        assert results[r]["y_format_kept"]
        assert results[r]["y"].dtype == dtype and results[r]["dx"].dtype == dtype
    AGREEMENT[label] = worst
    assert max(worst.values()) < tol, (label, worst)


def _reference_ddp(n_total):
    model = worker.make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for xb, tb in worker.cnn_batches(n_total, STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), tb).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize("world", sorted(RUNS))
def test_sync_batch_norm_equals_one_process(world, tmp_path, monkeypatch):
    results, sizes, ddp_sizes = _spawn(world, tmp_path, monkeypatch)
    n_total = sum(sizes)
    everyone = list(range(world))
    for dtype in (torch.float64, torch.float32):
        x, dy = worker.global_batch(n_total, dtype, seed=5)
        ref = _reference_layer(x, dy)
        for fmt in ("contiguous", "channels_last"):
            label = f"{world} ranks {sizes}, {str(dtype)[6:]}, {fmt}"
            _check_layer([res[("layer", str(dtype), fmt)] for res in results], ref,
                         everyone, dtype, label)

    # process_group: ranks 0 and 1 together, every other rank on its own shard
    x, dy = worker.global_batch(n_total, torch.float64, seed=6)
    group_results = [res["group"] for res in results]
    starts = [sum(sizes[:r]) for r in range(world + 1)]
    ref = _reference_layer(x[:starts[2]], dy[:starts[2]], momentum=0.1, affine=False)
    _check_group(group_results, ref, [0, 1], f"{world} ranks, process_group [0, 1]")
    for r in range(2, world):
        if sizes[r] > 1:
            ref = _reference_layer(x[starts[r]:starts[r + 1]], dy[starts[r]:starts[r + 1]],
                                   momentum=0.1, affine=False)
            _check_group(group_results, ref, [r], f"{world} ranks, group [{r}]")

    # DDP: every rank ends with the parameters and buffers of one process on the whole batch
    want = _reference_ddp(sum(ddp_sizes))
    worst = 0.0
    for res in results:
        got = res["ddp"]
        assert list(got) == list(want)
        for k, v in want.items():
            if v.dtype == torch.int64:
                assert torch.equal(got[k], v), k
            else:
                worst = max(worst, _rel(got[k], v))
    AGREEMENT[f"{world} ranks {ddp_sizes}, DDP CNN after {STEPS} SGD steps"] = {"state": worst}
    assert worst < 1e-10
    print()
    for label, w in AGREEMENT.items():
        if label.startswith(f"{world} ranks"):
            print(f"{label}: " + ", ".join(f"{k} {v:.1e}" for k, v in w.items()))


def _check_group(results, ref, parts, label):
    # affine is on in the module, at weight 1 and bias 0 (PyTorch's initial values)
    worst = {k: _rel(torch.cat([results[r][k] for r in parts]), ref[k]) for k in ("y", "dx")}
    worst["rv"] = max(_rel(results[r]["rv"], ref["rv"]) for r in parts)
    AGREEMENT[label] = worst
    assert max(worst.values()) < 1e-12, (label, worst)
