"""Validate the shapes-world judge on perturbed ground-truth renders; write docs/judge_validation.json.

    python scripts/validate_judge.py                      # n=1000 per resolution, noise 8, blur 0.5
    python scripts/validate_judge.py --n 200 --resolutions 32 --noise 16 --out /tmp/judge.json

Imagen §3 uses human raters on DrawBench; the shapes world scores the same categories automatically, so the
judge itself must be right: it should accept the true caption of a (mildly blurred and noised) val-split
render and reject other images' captions that are false for it (see :func:`imagen.eval.judge_validation.validate`).
Requirement: >= 98% acceptance and >= 98% rejection at 32 and 64 px.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from imagen.eval.judge_validation import validate

REQUIRED = 0.98
STRESS = ((16.0, 0.5), (8.0, 1.0))  # harsher than the requirement's setting: reported, not required


def _table(results: list[dict]) -> str:
    """Rows: overall and per category; columns: acceptance / rejection per resolution."""
    keys = ["all"] + [c for c in ("counting", "colors", "positional", "descriptions") if c in results[0]["acceptance"]]
    head = f"{'':14s}"
    for r in results:
        head += f"{'accept@%d' % r['resolution']:>16s}{'reject@%d' % r['resolution']:>16s}"
    lines = [head]
    for k in keys:
        row = f"{k:14s}"
        for r in results:
            for v in (r["acceptance"].get(k, {}), r["rejection"].get(k, {})):
                row += f"{v.get('rate', float('nan')):>10.4f} ({v.get('n', 0):>4d})"
        lines.append(row)
    for r in results:
        d = r["detection"]
        lines.append(
            f"{r['resolution']} px: hard-negative rejection {r['hard_rejection']['all']['rate']:.4f} "
            f"(n={r['hard_rejection']['all']['n']}), colour acc {d['color_accuracy']:.4f}, shape acc "
            f"{d['shape_accuracy']:.4f} ({d['matched']}/{d['gt_objects']} objects matched, {d['spurious']} spurious), "
            f"centre error mean/max {d['center_error_px_mean']:.2f}/{d['center_error_px_max']:.2f} px"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--n", type=int, default=1000, help="val-split samples per resolution")
    ap.add_argument("--noise", type=float, default=8.0, help="Gaussian pixel noise std (uint8 units)")
    ap.add_argument("--blur", type=float, default=0.5, help="Gaussian blur radius (sigma, px)")
    ap.add_argument("--seed", type=int, default=1234, help="val-split seed (training uses the train split)")
    ap.add_argument("--negatives", type=int, default=3, help="other captions tried per image")
    ap.add_argument(
        "--stress-n",
        type=int,
        default=300,
        help="samples per resolution for the (unrequired) stress settings noise 16 / blur 1.0; 0 = skip",
    )
    ap.add_argument("--out", type=Path, default=Path("docs/judge_validation.json"))
    args = ap.parse_args(argv)

    results = []
    for res in args.resolutions:
        t0 = time.perf_counter()
        r = validate(res, args.n, args.noise, args.blur, args.seed, args.negatives)
        r["seconds"] = round(time.perf_counter() - t0, 2)
        results.append(r)
    passed = all(
        r["acceptance"]["all"]["rate"] >= REQUIRED and r["rejection"]["all"]["rate"] >= REQUIRED for r in results
    )
    stress = []
    for res in args.resolutions if args.stress_n else []:
        for noise, blur in STRESS:
            r = validate(res, args.stress_n, noise, blur, args.seed, args.negatives)
            stress.append(
                {k: r[k] for k in ("resolution", "n", "noise_std", "blur_radius", "acceptance", "rejection")}
                | {
                    "shape_accuracy": r["detection"]["shape_accuracy"],
                    "shape_confusions": r["detection"]["shape_confusions"],
                }
            )
    report = {"required": REQUIRED, "passed": passed, "results": results, "stress": stress}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(_table(results))
    for r in stress:
        print(
            f"stress {r['resolution']} px noise {r['noise_std']:g} blur {r['blur_radius']:g}: accept "
            f"{r['acceptance']['all']['rate']:.4f}, reject {r['rejection']['all']['rate']:.4f}, shape acc "
            f"{r['shape_accuracy']:.4f} {r['shape_confusions'] or ''}"
        )
    print(f"{'PASSED' if passed else 'FAILED'} (>= {REQUIRED:.0%} acceptance and rejection); wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
