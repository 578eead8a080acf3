"""One rank of tests/test_torch_sync.py: cbp.torch.SyncBatchNorm over gloo on 127.0.0.1.

Every rank builds the same global batch from a seed, takes its shard, runs
the scenarios and saves what it computed to ``<outdir>/rank<r>.pt``; the test
process compares them with PyTorch's batch norm on the concatenated batch.
"""
import datetime
import os

import torch
import torch.distributed as dist

C = 4
SPATIAL = (5, 6)


def global_batch(n_total, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n_total, C, *SPATIAL, generator=g, dtype=torch.float64) * 2.0
         + 5.0 * torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64))
    dy = torch.randn(n_total, C, *SPATIAL, generator=g, dtype=torch.float64)
    return x.to(dtype), dy.to(dtype)


def make_cnn():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(), torch.nn.Conv2d(6, 6, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(6, momentum=None), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3)).double()


def cnn_batches(n_total, steps):
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(n_total, 3, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (n_total,), generator=g)) for _ in range(steps)]


def shard(t, sizes, rank):
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def sync_layer(x, dy, module, fmt):
    """y, dx, local weight/bias grads and running buffers of one SyncBatchNorm call."""
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    y = module(x)
    y.backward(dy.contiguous(memory_format=fmt))
    return dict(y=y.detach(), dx=x.grad, dw=module.weight.grad, db=module.bias.grad,
                rm=module.running_mean.clone(), rv=module.running_var.clone(),
                y_format_kept=y.is_contiguous(memory_format=fmt))


def main(rank, world, port, outdir, sizes, steps, ddp_sizes):
    import cbp.torch as ct

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=30))
    out = {}
    n_total = sum(sizes)
    for dtype in (torch.float64, torch.float32):
        for fmt_name, fmt in (("contiguous", torch.contiguous_format),
                              ("channels_last", torch.channels_last)):
            x, dy = global_batch(n_total, dtype, seed=5)
            m = ct.SyncBatchNorm(C, momentum=0.3, dtype=dtype)
            with torch.no_grad():
                m.weight.copy_(torch.linspace(0.5, 2.0, C))
                m.bias.copy_(torch.linspace(-1.0, 1.0, C))
            out[("layer", str(dtype), fmt_name)] = sync_layer(
                shard(x, sizes, rank), shard(dy, sizes, rank), m, fmt)

    # a process_group: ranks 0 and 1 synchronize with each other, the others alone
    groups = [dist.new_group([0, 1])] + [dist.new_group([r]) for r in range(2, world)]
    mine = groups[0] if rank < 2 else groups[rank - 1]
    x, dy = global_batch(n_total, torch.float64, seed=6)
    m = ct.SyncBatchNorm(C, process_group=mine, dtype=torch.float64)
    out["group"] = sync_layer(shard(x, sizes, rank), shard(dy, sizes, rank), m,
                              torch.contiguous_format)

    # DDP: a CNN with its batch norm replaced by cbp's SyncBatchNorm, a few SGD steps
    model = ct.replace_batch_norm(make_cnn(), sync=True)
    assert sum(isinstance(mod, ct.SyncBatchNorm) for mod in model.modules()) == 2
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    n_ddp = sum(ddp_sizes)
    for xb, tb in cnn_batches(n_ddp, steps):
        opt.zero_grad()
        logits = ddp(shard(xb, ddp_sizes, rank))
        # this rank's part of the mean loss over the whole batch, times the world size:
        # DDP averages gradients over ranks, so the step is that of the mean loss
        loss = torch.nn.functional.cross_entropy(
            logits, shard(tb, ddp_sizes, rank), reduction="sum") * (world / n_ddp)
        loss.backward()
        opt.step()
    out["ddp"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dist.barrier()
    dist.destroy_process_group()
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
