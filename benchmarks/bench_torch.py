"""Benchmark: PyTorch's CPU batch norm against cbp.torch, per layer and end to end.

    PYTHONPATH=src python benchmarks/bench_torch.py [--repeat 7] [--threads 1,2]
        [--parts layer,e2e,ddp] [--smoke] [--json PATH]

* layer: one training-mode forward + backward of a BatchNorm2d (torch.nn's
  against cbp.torch's) on every batch-norm shape of ResNet-50 at batch 32,
  float32, contiguous (NCHW) and channels_last, with torch.set_num_threads(t)
  for each t of --threads (cbp.torch follows it);
* e2e: the training step (forward, backward, SGD) of a ResNet-style CNN
  defined here (batch 32, 3x112x112 input, a stride-2 stem and three stages of
  basic blocks, 11 batch-norm layers), once with PyTorch's batch norm and once
  after cbp.torch.replace_batch_norm, both memory formats;
* ddp: 2 processes (torch.multiprocessing spawn, gloo on 127.0.0.1, one
  thread each, 16 images per rank) training the same CNN under
  DistributedDataParallel with cbp.torch.SyncBatchNorm, with PyTorch's
  unsynchronized BatchNorm2d and with cbp's unsynchronized BatchNorm2d.

Times are the median (and best) of --repeat runs after two warm-up runs, in
ms. Prints Markdown tables and writes JSON (default
benchmarks/results/torch-latest.json). --smoke runs tiny shapes once (for
tests/test_bench_torch_smoke.py) and skips ddp unless asked for.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cbp
import cbp.torch as ct

HERE = os.path.dirname(os.path.abspath(__file__))

# (C, H, W) of every batch norm in ResNet-50 (torchvision's resnet50, 224x224 input)
RESNET50_BN = [(64, 112, 112), (64, 56, 56), (256, 56, 56), (128, 56, 56), (128, 28, 28),
               (512, 28, 28), (256, 28, 28), (256, 14, 14), (1024, 14, 14), (512, 14, 14),
               (512, 7, 7), (2048, 7, 7)]


def _timed(fn, repeat):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------
# per layer
# ---------------------------------------------------------------------------

def bench_layer(shape, fmt, threads, repeat):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2 + 1).contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
    row = {}
    for name, cls in (("torch", torch.nn.BatchNorm2d), ("cbp", ct.BatchNorm2d)):
        bn = cls(shape[1])
        xx = x.detach().requires_grad_(True)

        def step():
            xx.grad = None
            bn.zero_grad(set_to_none=True)
            bn(xx).backward(dy)

        row[name] = _timed(step, repeat)
    return row


def run_layers(args):
    rows = []
    shapes = RESNET50_BN if not args.smoke else [(8, 6, 6), (16, 3, 3)]
    n = 32 if not args.smoke else 2
    seen = set()
    for c, h, w in shapes:
        if (c, h, w) in seen:
            continue
        seen.add((c, h, w))
        for fmt_name, fmt in (("NCHW", torch.contiguous_format),
                              ("channels_last", torch.channels_last)):
            for t in args.threads:
                r = bench_layer((n, c, h, w), fmt, t, args.repeat)
                rows.append(dict(shape=f"{n}x{c}x{h}x{w}", format=fmt_name, threads=t,
                                 torch_ms=r["torch"][0], torch_best_ms=r["torch"][1],
                                 cbp_ms=r["cbp"][0], cbp_best_ms=r["cbp"][1],
                                 speedup=r["torch"][0] / r["cbp"][0]))
                if not args.quiet:
                    print(_layer_line(rows[-1]), flush=True)
    return rows


def _layer_line(r):
    return (f"| {r['shape']} | {r['format']} | {r['threads']} | {r['torch_ms']:.2f} | "
            f"{r['cbp_ms']:.2f} | {r['speedup']:.2f} |")


# ---------------------------------------------------------------------------
# end to end: a ResNet-style CNN
# ---------------------------------------------------------------------------

class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


def make_cnn(width=32, classes=10):
    """Stem (3x3 stride 2) and stages of widths w, 2w, 4w (strides 1, 2, 2), 2 + 1 + 1 blocks."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(inplace=True),
        BasicBlock(width, width, 1), BasicBlock(width, width, 1),
        BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 4 * width, 2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4 * width, classes))


def _train_step(model, opt, x, target):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), target).backward()
    opt.step()


def bench_e2e(kind, fmt, threads, repeat, batch, size):
    torch.set_num_threads(threads)
    model = make_cnn()
    if kind == "cbp":
        ct.replace_batch_norm(model)
    model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=fmt)
    target = torch.randint(0, 10, (batch,), generator=g)
    return _timed(lambda: _train_step(model, opt, x, target), repeat)


def run_e2e(args):
    rows = []
    batch, size = (32, 112) if not args.smoke else (2, 16)
    for fmt_name, fmt in (("NCHW", torch.contiguous_format),
                          ("channels_last", torch.channels_last)):
        for t in args.threads:
            r = {k: bench_e2e(k, fmt, t, args.repeat, batch, size) for k in ("torch", "cbp")}
            rows.append(dict(model=f"ResNet-style CNN, batch {batch}, 3x{size}x{size}",
                             format=fmt_name, threads=t, torch_ms=r["torch"][0],
                             torch_best_ms=r["torch"][1], cbp_ms=r["cbp"][0],
                             cbp_best_ms=r["cbp"][1], speedup=r["torch"][0] / r["cbp"][0]))
            if not args.quiet:
                print(f"| e2e | {fmt_name} | {t} | {r['torch'][0]:.1f} | {r['cbp'][0]:.1f} | "
                      f"{r['torch'][0] / r['cbp'][0]:.2f} |", flush=True)
    return rows


# ---------------------------------------------------------------------------
# 2-process DDP
# ---------------------------------------------------------------------------

def _ddp_worker(rank, world, port, outfile, repeat, batch, size):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    per_rank = batch // world
    g = torch.Generator().manual_seed(2 + rank)
    x = torch.randn(per_rank, 3, size, size, generator=g)
    target = torch.randint(0, 10, (per_rank,), generator=g)
    result = {}
    for kind in ("torch BatchNorm2d (unsynchronized)", "cbp BatchNorm2d (unsynchronized)",
                 "cbp SyncBatchNorm"):
        model = make_cnn()
        if kind.startswith("cbp BatchNorm2d"):
            ct.replace_batch_norm(model)
        elif kind == "cbp SyncBatchNorm":
            ct.replace_batch_norm(model, sync=True)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
        times = []
        for i in range(repeat + 2):
            dist.barrier()
            t0 = time.perf_counter()
            _train_step(ddp, opt, x, target)
            dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a step ends when the slowest rank does
            if i >= 2:
                times.append(dt.item())
        result[kind] = (statistics.median(times) * 1e3, min(times) * 1e3)
    dist.destroy_process_group()
    if rank == 0:
        with open(outfile, "w") as f:
            json.dump(result, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(args):
    batch, size = (32, 112) if not args.smoke else (4, 16)
    outfile = os.path.join(HERE, "results", f".ddp-{os.getpid()}.json")
    os.makedirs(os.path.dirname(outfile), exist_ok=True)
    if sys.platform.startswith("linux"):  # gloo on the loopback interface only
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), outfile, args.repeat, batch, size),
                   nprocs=2, join=False)
    deadline = time.monotonic() + 1200
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError("the DDP benchmark did not finish in 20 minutes")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    with open(outfile) as f:
        result = json.load(f)
    os.remove(outfile)
    base = result["torch BatchNorm2d (unsynchronized)"][0]
    rows = [dict(model=f"ResNet-style CNN, 2 ranks x {batch // 2}, 3x{size}x{size}", kind=k,
                 ms=v[0], best_ms=v[1], vs_torch_unsynchronized=v[0] / base)
            for k, v in result.items()]
    if not args.quiet:
        for r in rows:
            print(f"| ddp | {r['kind']} | {r['ms']:.1f} | {r['vs_torch_unsynchronized']:.2f} |")
    return rows


# ---------------------------------------------------------------------------

def _section(title, header, rule, lines):
    """A titled markdown table, or nothing when the part did not run."""
    return ["", title, "", header, rule] + lines if lines else []


def markdown(res):
    out = []
    meta = res["meta"]
    out.append(f"cbp.torch benchmark, {meta['date']}, {meta['cpu']} ({meta['cpus']} CPUs), "
               f"torch {meta['torch']}, cbp {meta['cbp']} (isa {meta['isa']}); median of "
               f"{meta['repeat']} runs after 2 warm-ups, ms; load average "
               f"{meta['load_average_start'][0]:.2f} at start, "
               f"{meta.get('load_average_end', [float('nan')])[0]:.2f} at end; "
               f"OMP_WAIT_POLICY={meta['omp_wait_policy'] or 'unset'}")
    layer = [_layer_line(r) for r in res.get("layer") or []]
    e2e = [f"| {r['model']} | {r['format']} | {r['threads']} | {r['torch_ms']:.1f} | "
           f"{r['cbp_ms']:.1f} | {r['speedup']:.2f} |" for r in res.get("e2e") or []]
    ddp = [f"| {r['model']} | {r['kind']} | {r['ms']:.1f} | "
           f"{r['vs_torch_unsynchronized']:.2f} |" for r in res.get("ddp") or []]
    out += _section("Per layer, BatchNorm2d training forward + backward, float32:",
                    "| shape | format | threads | PyTorch ms | cbp.torch ms | PyTorch / cbp |",
                    "|---|---|---:|---:|---:|---:|", layer)
    out += _section("End to end, training step (forward, backward, SGD), float32:",
                    "| model | format | threads | PyTorch BN ms | cbp.torch BN ms | speedup |",
                    "|---|---|---:|---:|---:|---:|", e2e)
    out += _section("2-process CPU DDP (gloo, 1 thread per rank), training step:",
                    "| model | batch norm | ms per step | vs PyTorch unsynchronized |",
                    "|---|---|---:|---:|", ddp)
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--parts", default=None, help="comma-separated: layer,e2e,ddp")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "torch-latest.json"))
    ap.add_argument("--quiet", "-q", action="store_true")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.smoke:
        args.repeat = 1
    parts = (args.parts or ("layer,e2e" if args.smoke else "layer,e2e,ddp")).split(",")
    cfg = cbp.show_config(print_out=False)
    res = {"meta": dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), cpu=_cpu_model(), cpus=os.cpu_count(), torch=torch.__version__,
        cbp=cbp.__version__, isa=cfg.get("isa"), repeat=args.repeat, threads=args.threads,
        smoke=args.smoke, parts=parts, load_average_start=list(os.getloadavg()),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))}
    old = torch.get_num_threads()
    try:
        if "layer" in parts:
            res["layer"] = run_layers(args)
        if "e2e" in parts:
            res["e2e"] = run_e2e(args)
        if "ddp" in parts:
            res["ddp"] = run_ddp(args)
    finally:
        torch.set_num_threads(old)
    res["meta"]["load_average_end"] = list(os.getloadavg())
    if args.json and args.json != "none":
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if not args.quiet:
        print()
        print(markdown(res))
    return res


if __name__ == "__main__":
    main()
