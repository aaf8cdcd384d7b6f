"""Minimal training script: compose the Hydra config, build the run, fit.

python train.py                                   # tiny model on the shapes world, CPU, offline
python train.py encoder=t5_xxl cond=cross_attn    # swap an ablation axis
python train.py -m cond=mean_pool,attn_pool,cross_attn seed=0,1   # a sweep
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from imagen.cli import check_overrides
from imagen.run import run


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    check_overrides()  # an override Hydra's grammar rejects: one line saying how to quote it
    main()
