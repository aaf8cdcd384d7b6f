"""Trace thresholding through the sampling steps (Imagen §2.3): for every (thresholding, guidance weight), the
percentile s of |x0_hat| that dynamic thresholding divides by, the share of x0_hat outside [-1, 1] and the mean
|x0| handed back to the sampler, per step; against the same statistics of the training images.

    python scripts/trace_thresholding.py ckpt=RUN/checkpoints/last.ckpt guidances='[1.5,5,10]' sampler.steps=20

Writes `trace.json` (every step's numbers, the final images' statistics, the reference) and `trace.png` into its
run directory, and prints one line per setting.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from imagen.build import instantiate
from imagen.cascade.cascade import generate_cascade
from imagen.checkpoint import load_cascade, thresholding_config
from imagen.cli import check_overrides, read_prompts, run_script
from imagen.data.pipeline import to_tensor
from imagen.data.shapes import ShapesWorld
from imagen.eval.thresholding_trace import TracedThresholding, pixel_stats, plot_trace

log = logging.getLogger(__name__)


def reference_stats(train_cfg: DictConfig, n: int, percentile: float) -> dict | None:
    """pixel_stats of n training images of a shapes-world checkpoint (None for other data or n = 0)."""
    world_cfg = train_cfg.get("data", {}).get("world")
    if n <= 0 or world_cfg is None:
        return None
    world = instantiate(world_cfg)
    if not isinstance(world, ShapesWorld):
        return None
    images = torch.stack([to_tensor(world.sample(i, seed=0).image) for i in range(n)])  # (n, 3, r, r) in [-1, 1]
    return pixel_stats(images, percentile)


def trace(cfg: DictConfig, out_dir: Path) -> Path:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    names = [str(t) for t in cfg.thresholdings]
    configs = {name: thresholding_config(name) for name in names}  # unknown names fail here, before any sampling
    captions = [p for p in read_prompts(cfg) for _ in range(cfg.n)]
    result: dict = {"percentile": cfg.percentile, "captions": captions, "settings": {}}
    traces = {}
    cascade, train_cfgs, _ = load_cascade(cfg)  # once: only the stage's guidance and thresholding change per setting
    if len(cascade.modules) != 1:
        raise ValueError("trace_thresholding takes one base-model checkpoint, not a cascade")
    base = cascade.settings[0]
    for name in names:
        for w in cfg.guidances:
            traced = TracedThresholding(instantiate(configs[name]), cfg.percentile)
            cascade.settings[0] = replace(base, guidance=float(w), thresholding=traced)
            images = generate_cascade(cascade, captions, cfg.seed, cfg.batch_size, progress=False)[-1]
            label = f"{name} w={float(w):g}"
            # One call per step of every chunk of batch_size captions, chunk after chunk: a step's row is the mean of
            # its chunks' rows.
            chunks = -(-len(captions) // cfg.batch_size)
            n_steps = len(traced.steps) // chunks
            steps = [
                {k: sum(traced.steps[c * n_steps + i][k] for c in range(chunks)) / chunks for k in traced.steps[i]}
                for i in range(n_steps)
            ]
            final = pixel_stats(images, cfg.percentile)
            result["settings"][label] = {"thresholding": name, "guidance": float(w), "steps": steps, "final": final}
            traces[label] = steps
            log.info(
                "%-14s s at the first / last step %.2f / %.2f, final mean |x| %.3f",
                label,
                steps[0]["s_median"],
                steps[-1]["s_median"],
                final["mean_abs"],
            )
    result["reference"] = reference_stats(train_cfgs[0], cfg.n_reference, cfg.percentile)
    (out_dir / "trace.json").write_text(json.dumps(result, indent=1))
    path = plot_trace(traces, out_dir / "trace.png", result["reference"])
    log.info("wrote %s and trace.json", path)
    return path


@hydra.main(config_path="../conf", config_name="trace_thresholding", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(trace, cfg)


if __name__ == "__main__":
    check_overrides()
    torch.set_float32_matmul_precision("high")
    main()
