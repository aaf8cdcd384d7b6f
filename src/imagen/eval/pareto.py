"""FID-vs-alignment pareto curves over guidance weights (Imagen §3 and Fig. 4, A.8-A.11): one curve per
run or setting, one labelled point per guidance weight; and per-category alignment against the weight."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> dict:
    """metrics.json of scripts/evaluate.py (a file or the run directory holding it)."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist (scripts/evaluate.py writes metrics.json into its run directory)"
        )
    return json.loads(path.read_text())


def standard_error_key(key: str) -> str:
    """Where a metric's standard error is stored: "judge/accuracy" -> "judge/se/accuracy"."""
    head, _, leaf = key.rpartition("/")
    return f"{head}/se/{leaf}" if head else f"se/{leaf}"


def _rate_se(row: dict, key: str) -> float | None:
    """Binomial standard error of an accuracy whose sample count is stored beside it ("<head>/n/all")."""
    head, _, leaf = key.rpartition("/")
    n = row.get(f"{head}/n/all")
    if leaf != "accuracy" or not n:
        return None
    p = row[key]
    return (p * (1 - p) / n) ** 0.5


def save_figure(fig, out: str | Path, ax=None, legend_fontsize: float | None = None) -> Path:
    """Tight layout, PNG at 130 dpi (the folder is created), figure closed; with `ax`, its grid and legend first."""
    if ax is not None:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_pareto(
    curves: dict[str, dict],
    out: str | Path,
    x_key: str | None = None,
    y_key: str = "fid",
    title: str | None = None,
    log_y: bool = False,
) -> Path:
    """curves: label -> metrics.json content. x = the suite's alignment metric (higher is better), y = FID;
    horizontal error bars where the metric has a standard error (binomial, for the judge's accuracy)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    extractors = set()
    for label, metrics in curves.items():
        x_name = x_key or metrics["alignment_key"]
        rows = [r for r in metrics["results"] if r.get(x_name) is not None and r.get(y_key) is not None]
        xs, ys = [r[x_name] for r in rows], [r[y_key] for r in rows]
        se = [r.get(standard_error_key(x_name), _rate_se(r, x_name)) for r in rows]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        if all(e is not None for e in se) and rows:
            ax.errorbar(xs, ys, xerr=se, fmt="none", ecolor=line.get_color(), alpha=0.35, capsize=2)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['guidance']:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        extractors.add(metrics.get("features", "?"))
    ax.set_xlabel(f"{x_key or next(iter(curves.values()))['alignment_key']} (higher is better)")
    ax.set_ylabel(f"{y_key.upper()} [{', '.join(sorted(extractors))}] (lower is better)")
    ax.set_title(title or "FID vs alignment over guidance weights (labels: w)")
    if log_y:
        ax.set_yscale("log")
    return save_figure(fig, out, ax)


def plot_categories(curves: dict[str, dict], out: str | Path, prefix: str = "judge/") -> Path | None:
    """Per-category alignment (metrics named `<prefix><category>`) against the guidance weight, one panel
    per category, one line per curve."""
    skip = {f"{prefix}accuracy"}
    cats = sorted(
        {
            k[len(prefix) :]
            for m in curves.values()
            for r in m["results"]
            for k in r
            if k.startswith(prefix) and k not in skip and "/" not in k[len(prefix) :]
        }
    )
    if not cats:
        return None
    fig, axes = plt.subplots(1, len(cats), figsize=(3.2 * len(cats), 3.2), sharey=True, squeeze=False)
    for ax, cat in zip(axes[0], cats):
        for label, metrics in curves.items():
            rows = [r for r in metrics["results"] if f"{prefix}{cat}" in r]
            ax.plot([r["guidance"] for r in rows], [r[f"{prefix}{cat}"] for r in rows], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(cat)
        ax.set_xlabel("guidance weight w")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{prefix.rstrip('/')} accuracy")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, out)
