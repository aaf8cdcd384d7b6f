"""What thresholding does at each sampling step (Imagen §2.3): the percentile s of |x0_hat| that dynamic
thresholding divides by, the share of x0_hat values outside [-1, 1], and the mean |x0| it hands back to the
sampler; against the same statistics of the training images. Used by scripts/trace_thresholding.py."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch
from torch import Tensor

from ..diffusion.thresholding import Thresholding
from .pareto import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pixel_stats(x: Tensor, percentile: float = 99.5) -> dict[str, float]:
    """Statistics of images x (B, C, H, W) in [-1, 1]-units: the median over images of the per-image p-th percentile
    of |x| (dynamic thresholding's s before its clamp at 1), the share of values with |x| > 1, and the mean |x|."""
    a = x.detach().reshape(x.shape[0], -1).abs().float()
    s = torch.quantile(a, percentile / 100.0, dim=1)  # (B,)
    return {"s_median": s.quantile(0.5).item(), "beyond_1": (a > 1).float().mean().item(), "mean_abs": a.mean().item()}


class TracedThresholding(Thresholding):
    """Wraps a thresholder and records, at every call (one per sampling step), `pixel_stats` of the x0 it receives
    and the mean |x0| it returns; its output is the wrapped thresholder's, unchanged."""

    def __init__(self, inner: Thresholding, percentile: float = 99.5):
        self.inner, self.percentile = inner, percentile
        self.steps: list[dict[str, float]] = []

    def __call__(self, x0: Tensor) -> Tensor:
        out = self.inner(x0)
        row = pixel_stats(x0, self.percentile)
        row["out_mean_abs"] = out.abs().float().mean().item()
        self.steps.append(row)
        return out


def plot_trace(traces: dict[str, list[dict[str, float]]], out: str | Path, reference: dict | None = None) -> Path:
    """Two panels against the sampling step: s (the median over samples of the percentile of |x0_hat|) and the mean
    |x0| after thresholding, one line per setting ("<thresholding> w=<weight>": a colour per thresholding, a line
    style per weight); the training images' values as dashed black lines."""
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    colours, styles = {}, {}
    for label, steps in traces.items():
        name, _, weight = label.partition(" ")
        colour = colours.setdefault(name, f"C{len(colours)}")
        style = styles.setdefault(weight, [":", "-.", "-", "--"][len(styles) % 4])
        ax_s.plot([r["s_median"] for r in steps], color=colour, ls=style, label=label)
        ax_m.plot([r["out_mean_abs"] for r in steps], color=colour, ls=style, label=label)
    if reference is not None:
        ax_s.axhline(reference["s_median"], color="k", ls="--", lw=1, label="training images")
        ax_m.axhline(reference["mean_abs"], color="k", ls="--", lw=1, label="training images")
    ax_s.axhline(1.0, color="grey", lw=0.8)
    ax_s.set(xlabel="sampling step", ylabel="s: percentile of |x0_hat| (median over samples)")
    ax_m.set(xlabel="sampling step", ylabel="mean |x0| after thresholding")
    ax_s.grid(alpha=0.3)
    ax_s.legend(fontsize=7)
    return save_figure(fig, out, ax_m, legend_fontsize=7)
