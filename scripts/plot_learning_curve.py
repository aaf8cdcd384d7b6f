"""Judge accuracy per category against training minutes, from evaluations of a run's checkpoints.

    python scripts/evaluate.py -m ckpt=RUN/checkpoints/step_000500.ckpt,RUN/checkpoints/step_001000.ckpt \
        guidance='[3]' eval.n_per_category=256 hydra.sweep.dir=RUN/curve
    python scripts/plot_learning_curve.py RUN/curve/* --guidance 3 --out RUN/curve.png

Each argument is an evaluate.py run directory (or its metrics.json) of one checkpoint. The x axis is the training
wall time stored in the checkpoint (the Timer callback), else the step. Prints a markdown table with 95 % Wilson
intervals and writes the plot.
"""

from __future__ import annotations

import argparse
import sys

from imagen.eval.learning_curve import curve_points, plot_learning_curve
from imagen.eval.pareto import read_metrics

CATEGORIES = ["counting", "colors", "positional", "descriptions"]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="evaluate.py run directories or metrics.json files")
    parser.add_argument("--guidance", type=float, default=None, help="the weight to plot (default: each run's first)")
    parser.add_argument("--categories", nargs="+", default=CATEGORIES)
    parser.add_argument("--target", type=float, default=0.8, help="a dashed line at this accuracy (0: none)")
    parser.add_argument("--out", default="learning_curve.png")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        runs = [read_metrics(r) for r in args.runs]
        points = curve_points(runs, args.guidance, args.categories)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print("| minutes | step | " + " | ".join(args.categories) + " |")
    print("|---" * (len(args.categories) + 2) + "|")
    for p in points:
        cells = [
            f"{p[c][0]:.3f} [{p[c][1]:.2f}, {p[c][2]:.2f}] (n={p[c][3]})" if c in p else "" for c in args.categories
        ]
        minutes = "" if p["minutes"] is None else f"{p['minutes']:.1f}"
        print(f"| {minutes} | {p['step']} | " + " | ".join(cells) + " |")
    out = plot_learning_curve(points, args.categories, args.out, title=args.title, target=args.target)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
