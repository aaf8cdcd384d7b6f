"""Alignment against training time: the judge's accuracy per category of checkpoints evaluated along a run.

Each point is one `scripts/evaluate.py` run (its metrics.json) of one checkpoint at one guidance weight; the x
axis is the training wall time the checkpoint was saved at (`train_seconds`, from the Timer callback) or, for
checkpoints without it, the training step. Error bars are 95 % Wilson intervals of each accuracy (binomial,
n = the category's number of judged prompts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate p observed on n trials (95 % by default)."""
    if n <= 0 or p != p:
        return (float("nan"), float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def result_at(metrics: dict, guidance: float | None) -> dict:
    """The results row of `guidance` (None: the first weight); a ValueError naming the weights if absent."""
    rows = metrics["results"]
    if guidance is None:
        return rows[0]
    for row in rows:
        if math.isclose(float(row["guidance"]), float(guidance)):
            return row
    have = ", ".join(f"{r['guidance']:g}" for r in rows)
    raise ValueError(f"{metrics.get('ckpt')}: no guidance {guidance:g} in its metrics.json (has {have})")


def curve_points(runs: Sequence[dict], guidance: float | None, categories: Sequence[str]) -> list[dict]:
    """One point per run, sorted by time: {x, minutes, step, <category>: (acc, lo, hi, n)}."""
    points = []
    for m in runs:
        row = result_at(m, guidance)
        seconds = m.get("train_seconds")
        point = {"minutes": None if seconds is None else seconds / 60, "step": m.get("step"), "ckpt": m.get("ckpt")}
        for cat in categories:
            key = "accuracy" if cat == "all" else cat
            p, n = row.get(f"judge/{key}"), int(row.get(f"judge/n/{key}", 0))
            if p is not None:
                point[cat] = (p, *wilson_interval(p, n), n)
        points.append(point)
    timed = all(p["minutes"] is not None for p in points)
    for p in points:
        p["x"] = p["minutes"] if timed else p["step"]
    return sorted(points, key=lambda p: p["x"])


def plot_learning_curve(
    points: Sequence[dict], categories: Sequence[str], out: str | Path, title: str | None = None, target: float = 0.8
) -> Path:
    """Accuracy per category against training minutes (or steps), with Wilson intervals and the target line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    timed = all(p["minutes"] is not None for p in points)
    for cat in categories:
        pts = [p for p in points if cat in p]
        if not pts:
            continue
        xs, acc = [p["x"] for p in pts], [p[cat][0] for p in pts]
        err = [[p[cat][0] - p[cat][1] for p in pts], [p[cat][2] - p[cat][0] for p in pts]]
        ax.errorbar(xs, acc, yerr=err, marker="o", capsize=3, label=cat)
    if target:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("training minutes (2-core CPU)" if timed else "training step")
    ax.set_ylabel("judge accuracy (all constraints hold)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
