"""Compare the runs of an ablation sweep: a markdown table and pareto plots, with the spread across seeds.

    python scripts/compare_runs.py multirun/conditioning_tiny                     # offline: from the run folders
    python scripts/compare_runs.py multirun/a multirun/b --out docs/ablation      # several folders, one table
    python scripts/compare_runs.py --wandb ENTITY/PROJECT --group conditioning    # online: from W&B
    python scripts/compare_runs.py multirun/a --out results/a --archive results/a/jobs   # + a copy to commit

Writes comparison.md (per arm: seeds, wall times, final loss, best FID and alignment; FID/alignment per guidance
weight, mean [min, max] over seeds), pareto.png (FID vs alignment per arm, bars = seed range) and loss.png into
--out (default: the first sweep folder, or compare/<group> for W&B), and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagen.lab.compare import archive_jobs, from_sweep_dirs, from_wandb, write_comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="*", help="sweep folders of train.py -m (multirun/<ablation>) or job folders")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead of folders")
    parser.add_argument("--group", help="the W&B group (the ablation's name) with --wandb")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--title", help="title of the table and plots")
    parser.add_argument(
        "--alignment", help="the alignment metric (x axis), e.g. judge/partial/all; default: the suite's"
    )
    parser.add_argument(
        "--archive",
        metavar="DIR",
        help="also copy what the table reads of every job (job.json, metrics.csv, the metrics.json files) into "
        "DIR/<job>/, a few kB each, to commit: compare_runs.py DIR rebuilds the table after multirun/ is gone",
    )
    args = parser.parse_args(argv)
    try:
        if args.wandb:
            if not args.group or args.sweeps or args.archive:
                raise ValueError("--wandb takes --group GROUP and no sweep folders or --archive")
            records = from_wandb(args.wandb, args.group)
            out, title = Path(args.out or Path("compare") / args.group), args.title or args.group
        else:
            if not args.sweeps:
                raise ValueError("give sweep folders (multirun/<ablation>) or --wandb ENTITY/PROJECT --group GROUP")
            records = from_sweep_dirs(args.sweeps)
            out, title = Path(args.out or args.sweeps[0]), args.title or Path(args.sweeps[0]).resolve().name
            if args.archive:
                archive_jobs(args.sweeps, args.archive)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in records:
        r.alignment_key = args.alignment or r.alignment_key
    paths = write_comparison(records, out, title)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
