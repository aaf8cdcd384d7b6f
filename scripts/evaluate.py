"""Guidance sweep of one checkpoint: Imagen's FID-vs-alignment pareto curve (§3, Fig. 4, A.8).

    python scripts/evaluate.py ckpt=RUN/checkpoints/last.ckpt \
        guidance='[1,1.25,1.5,1.75,2,3,4,5,6,7,8,9,10]' thresholding=dynamic
    python scripts/evaluate.py -m ckpt=... thresholding=none,static,dynamic     # one run per thresholding
    python scripts/plot_pareto.py multirun/eval/DATE/TIME/*                      # their curves in one plot
    python scripts/evaluate.py ckpt='[BASE,SR]' cascade_guidance=1.5 guidance='[1,3,5,8]' aug_level=0.2  # a cascade

For every guidance weight: sample the suite's prompts (`eval=shapes`: the shapes world's four categories;
`eval=drawbench`: a DrawBench CSV), then FID and KID against the suite's real images with the configured
feature extractor (`features=shapes|inception`), the suite's alignment score (the compositional judge's
accuracy per category; the CLIP score) and the saturation statistics. Writes into its run directory
`metrics.json` (every metric per weight, the number of samples, the feature extractor), `pareto.png`,
`categories.png`, `grids/w<weight>.png` (a row per category), and logs them to W&B (job_type=eval).

A cascade (§2.4) is evaluated at its final resolution: the lower stages sample once (their guidance
`cascade_guidance`), their images are written to `grids/<r>px.png`, and the sweep runs the last stage on them;
`metrics.json` also scores the stage below's samples bilinearly upsampled (`cascade.lower_upsampled`), the
baseline a super-resolution stage has to beat.
"""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from imagen.cli import check_overrides, run_script
from imagen.eval.guidance_sweep import evaluate  # noqa: F401  (re-exported: tests and notebooks call it)


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(evaluate, cfg)


if __name__ == "__main__":
    check_overrides()
    torch.set_float32_matmul_precision("high")
    main()
