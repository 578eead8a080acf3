"""Compare interleaved A/B runs of bench.py: B's time over A's, per row and per operation.

    python benchmarks/compare.py --a base_r1.json base_r2.json --b new_r1.json new_r2.json

Each run's cbp time is taken relative to the memory floor measured in the same
process (cbp / floor), which cancels most of the machine's drift between
runs; per row the median over A's runs and over B's runs are compared. The
table lists, per operation, the median of the row ratios and their range
(< 1: B is faster), then every row.
"""
import argparse
import json
import statistics


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        runs.append({(r["op"], r["shape_str"], r["layout"], r["dtype"], r["threads"]): r
                     for r in d["rows"]})
    return runs


def metric(row, key):
    return row["cbp_floor"] if key == "floor" else row["cbp_ms"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", required=True, help="bench.py JSON files of A")
    p.add_argument("--b", nargs="+", required=True, help="bench.py JSON files of B")
    p.add_argument("--by", choices=["floor", "ms"], default="floor",
                   help="compare cbp / floor (default) or raw cbp ms")
    p.add_argument("--rows", action="store_true", help="also list every row")
    args = p.parse_args(argv)
    a_runs, b_runs = load(args.a), load(args.b)
    keys = [k for k in a_runs[0] if all(k in r for r in a_runs + b_runs)]
    per_op = {}
    lines = []
    for k in keys:
        a = statistics.median(metric(r[k], args.by) for r in a_runs)
        b = statistics.median(metric(r[k], args.by) for r in b_runs)
        spread_a = [metric(r[k], args.by) / a for r in a_runs]
        ratio = b / a
        per_op.setdefault(k[0], []).append(ratio)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {a:.3f} | {b:.3f} | "
                     f"{ratio:.2f} | {min(spread_a):.2f}-{max(spread_a):.2f} |")
    unit = "cbp / floor" if args.by == "floor" else "cbp ms"
    print(f"| operation | rows | B / A, median | B / A, range |")
    print("|---|---:|---:|---:|")
    for op, ratios in per_op.items():
        print(f"| `{op}` | {len(ratios)} | {statistics.median(ratios):.2f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} |")
    if args.rows:
        print()
        print(f"| operation | shape | layout | dtype | threads | A {unit} | B {unit} | B / A | "
              "A's runs / A's median |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
