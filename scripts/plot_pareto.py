"""Draw the pareto curves of several evaluation runs in one plot (Imagen Fig. 4 / A.8 style).

    python scripts/plot_pareto.py multirun/eval/DATE/TIME/* --out pareto.png --label thresholding

Each argument is a run directory of scripts/evaluate.py (or its metrics.json). Curves are labelled by the
given metrics.json fields (default: thresholding; dotted paths such as cascade.aug_level, or the run's free-text
`label`). Also writes `<out stem>_categories.png` (per-category
alignment against the guidance weight) and prints one markdown table row per run and weight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagen.eval.pareto import plot_categories, plot_pareto, read_metrics


def field(metrics: dict, key: str):
    """A metrics.json field by dotted path (e.g. cascade.aug_level); "?" when absent."""
    node = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "?"
        node = node[part]
    return node


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="evaluate.py run directories or metrics.json files")
    parser.add_argument("--out", default="pareto.png")
    parser.add_argument(
        "--label", nargs="+", default=["thresholding"], help="metrics.json fields naming a curve (dotted paths allowed)"
    )
    parser.add_argument("--x", default=None, help="the alignment metric (default: each run's alignment_key)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--log-y", action="store_true", help="FID on a log axis")
    args = parser.parse_args(argv)
    try:
        runs = [read_metrics(r) for r in args.runs]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    curves = {", ".join(str(field(m, k)) for k in args.label): m for m in runs}
    out = plot_pareto(curves, args.out, x_key=args.x, title=args.title, log_y=args.log_y)
    cats = plot_categories(curves, Path(args.out).with_name(Path(args.out).stem + "_categories.png"))
    keys = ["guidance", "fid", "kid", "saturated", args.x or runs[0]["alignment_key"]]
    cat_keys = sorted(
        {
            k
            for m in runs
            for r in m["results"]
            for k in r
            if k.startswith("judge/") and k not in keys and k.count("/") == 1
        }
    )  # per category
    print("| run | " + " | ".join(keys + cat_keys) + " |")
    print("|---" * (len(keys) + len(cat_keys) + 1) + "|")
    for label, m in curves.items():
        for r in m["results"]:
            cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys + cat_keys]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"wrote {out}" + (f" and {cats}" if cats else ""), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
