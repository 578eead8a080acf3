"""Write a benchmark snapshot's Markdown from a bench.py JSON run.

    python benchmarks/snapshot.py RUN.json --title "..." [--intro FILE]
        [--previous OLD.json] > benchmarks/snapshots/DATE-NAME.md

The page names the CPU and its detected caches (from the run's cbp config),
the build, then per operation the median and worst cbp / floor, the range of
PyTorch / cbp and the rows where PyTorch is faster, with --previous the new
time over the previous run's per row (median and range), a float32 summary
per shape, the #13 targets (benchmarks/targets.py) and every row.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402

OPS = ["batch_norm_backward", "channel_backprop_stats", "batch_norm_forward", "channel_stats",
       "batch_norm_dx"]
SHORT = {"batch_norm_backward": "backward", "channel_backprop_stats": "backprop_stats",
         "batch_norm_dx": "dx", "channel_stats": "stats", "batch_norm_forward": "forward"}


def _key(r):
    return (r["op"], r["shape_str"], r["layout"], r["dtype"], r["threads"])


def _ms(v):
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def float32_summary(rows, out=sys.stdout):
    """Per shape, layout and thread count (float32): PyTorch / cbp of four
    operations, cbp / floor of the backward and of channel_stats, backward ms."""
    by = {_key(r): r for r in rows if r["dtype"] == "float32"}
    print("| shape | layout | threads | bwd torch/cbp | bps torch/cbp | fwd torch/cbp | "
          "stats torch/cbp | bwd cbp/floor | stats cbp/floor | bwd ms |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    seen = []
    for r in rows:
        k = (r["shape_str"], r["layout"], r["threads"])
        if r["dtype"] == "float32" and k not in seen:
            seen.append(k)
    for shape, layout, t in seen:
        get = lambda op: by.get((op, shape, layout, "float32", t))  # noqa: E731
        tc = lambda op: (f"{get(op)['torch_cbp']:.2f}"  # noqa: E731
                         if get(op) and get(op).get("torch_cbp") else "-")
        fl = lambda op: f"{get(op)['cbp_floor']:.2f}" if get(op) else "-"  # noqa: E731
        bwd = get("batch_norm_backward")
        print(f"| {shape} | {layout} | {t} | {tc('batch_norm_backward')} | "
              f"{tc('channel_backprop_stats')} | {tc('batch_norm_forward')} | "
              f"{tc('channel_stats')} | {fl('batch_norm_backward')} | {fl('channel_stats')} | "
              + (f"{bwd['cbp_ms']:.3f} |" if bwd else "- |"), file=out)


def write(run_path, title, intro="", previous=None, out=sys.stdout):
    with open(run_path) as f:
        run = json.load(f)
    meta, rows = run["meta"], run["rows"]
    cfg = meta.get("cbp_config") or {}
    caches = cfg.get("caches", {}) if isinstance(cfg, dict) else {}
    build = meta.get("cbp_build", {})
    old = {}
    if previous:
        with open(previous) as f:
            old = {_key(r): r for r in json.load(f)["rows"]}
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"# {title}\n")
    if intro:
        p(intro.rstrip() + "\n")
    m = meta.get("machine", {})
    p(f"- CPU: {m.get('cpu', '?')}, {m.get('nproc', '?')} cores; detected caches: "
      f"L1d {caches.get('l1d', 0) >> 10} KiB, L2 {caches.get('l2', 0) >> 10} KiB, "
      f"L3 {caches.get('l3', 0) >> 20} MiB ({caches.get('source', '?')})"
      + (f", counted as {caches.get('last_level_cache', 0) >> 20} MiB"
         if caches.get("last_level_cache_capped") else "")
      + f"; ISA {cfg.get('isa', '?')} of {cfg.get('isa_available', '?')}")
    p(f"- build {build.get('git_commit', '?')[:7]}"
      + (" (modified)" if build.get("src_modified") else "")
      + f"; Python {meta.get('python')}, NumPy {meta.get('numpy')}, PyTorch {meta.get('torch')};"
      f" {len(rows)} rows in {meta.get('elapsed_s', 0) / 60:.0f} min; date {meta.get('date')}\n")
    head = "| operation | cbp / floor, median | worst | PyTorch / cbp | slower than PyTorch |"
    if old:
        head += " new / previous time, median (range) |"
    p(head)
    p("|---" + "|---:" * (head.count("|") - 2) + "|")
    for op in OPS:
        rs = [r for r in rows if r["op"] == op]
        if not rs:
            continue
        fl = [r["cbp_floor"] for r in rs]
        tc = [r["torch_cbp"] for r in rs if r.get("torch_cbp")]
        line = f"| `{op}` | {statistics.median(fl):.2f} | {max(fl):.2f} | "
        if tc:
            slow = sum(v < 1 for v in tc)
            line += f"{min(tc):.2f} to {max(tc):.1f} | {slow} of {len(tc)} rows |"
        else:
            line += "(no CPU op) | - |"
        if old:
            ratios = [r["cbp_ms"] / old[_key(r)]["cbp_ms"] for r in rs if _key(r) in old]
            line += (f" {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
                     if ratios else " - |")
        p(line)
    p("\n## float32 summary\n")
    float32_summary(rows, out)
    p("\n## Targets of #13 (benchmarks/targets.py)\n")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        targets.report(run_path)
    p("```")
    p(buf.getvalue().rstrip())
    p("```\n")
    p("## Every row\n")
    cols = "| op | shape | layout | dtype | thr | cbp ms | floor ms | cbp/floor | torch/cbp |"
    if old:
        cols += " new/prev |"
    p(cols)
    p("|---|---|---|---|" + "---:|" * (cols.count("|") - 5))
    for r in rows:
        tc = f"{r['torch_cbp']:.2f}" if r.get("torch_cbp") else "-"
        line = (f"| {SHORT[r['op']]} | {r['shape_str']} | {r['layout']} | {r['dtype']} | "
                f"{r['threads']} | {_ms(r['cbp_ms'])} | {_ms(r['floor_ms'])} | "
                f"{r['cbp_floor']:.2f} | {tc} |")
        if old:
            o = old.get(_key(r))
            line += f" {r['cbp_ms'] / o['cbp_ms']:.2f} |" if o else " - |"
        p(line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--title", required=True)
    ap.add_argument("--intro", help="a file whose text goes under the title")
    ap.add_argument("--previous", help="an earlier run to compare times with")
    args = ap.parse_args(argv)
    intro = open(args.intro).read() if args.intro else ""
    write(args.run, args.title, intro, args.previous)


if __name__ == "__main__":
    main()
