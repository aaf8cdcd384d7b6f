"""Sample images from a trained checkpoint (Imagen §2.2 guidance, §2.3 thresholding).

    python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt prompt="two red circles" guidance=5 \
        thresholding=dynamic sampler=ddim sampler.steps=50 seed=0 n=8

Writes into its run directory `grid.png` (a row per prompt) and `images/<prompt>_<k>.png`, every PNG carrying
the prompt, seed, guidance weight, sampler, thresholding and checkpoint in its metadata. The model is rebuilt
from the checkpoint alone (its config travels inside it); `+model.<key>=...` overrides a saved setting
that differs on this machine (e.g. `+model.encoder.path=/models/t5-v1_1-xxl`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from imagen.checkpoint import flatten, load_model
from imagen.eval.generate import generate
from imagen.lightning.grid import caption_grid, save_png, to_uint8
from imagen.run import run_script

log = logging.getLogger(__name__)


def read_prompts(cfg: DictConfig) -> list[str]:
    """The prompts of `prompt` (a string or a list) and `prompts_file` (one per line)."""
    prompts: list[str] = []
    if cfg.prompt is not None:
        prompts += [cfg.prompt] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
    if cfg.prompts_file is not None:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError('no prompt: give prompt="..." (or a list) or prompts_file=<file, one per line>')
    return prompts


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "prompt"


def check(cfg: DictConfig) -> None:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    if cfg.guidance < 0:
        raise ValueError(f"guidance must be >= 0 (1 disables guidance), got {cfg.guidance}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")


def sample(cfg: DictConfig, out_dir: Path) -> Path:
    check(cfg)
    prompts = read_prompts(cfg)
    sampler, thresholding = instantiate(cfg.sampler), instantiate(cfg.thresholding)
    module, _, info = load_model(cfg.ckpt, flatten(cfg.model), ema=cfg.ema, device=cfg.device)
    captions = [p for p in prompts for _ in range(cfg.n)]
    images = generate(module, captions, cfg.guidance, sampler, thresholding, cfg.seed, cfg.batch_size)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    settings = {"guidance": cfg.guidance, "sampler": choices.get("sampler", type(sampler).__name__),
                "sampler_config": OmegaConf.to_yaml(cfg.sampler).strip(),
                "thresholding": choices.get("thresholding", type(thresholding).__name__),
                "seed": cfg.seed, "batch_size": cfg.batch_size, "ckpt": info["ckpt"], "step": info["global_step"],
                "ema": info["ema"]}
    arr = to_uint8(images)
    for k, caption in enumerate(captions):
        p, i = divmod(k, cfg.n)
        meta = {"prompt": caption, **settings, "index": k, "chunk_seed": cfg.seed + k // cfg.batch_size,
                "index_in_chunk": k % cfg.batch_size}
        save_png(Image.fromarray(arr[k]), out_dir / "images" / f"{p:03d}_{slug(caption)}_{i:02d}.png", meta)
    grid = caption_grid(images, captions, per_row=cfg.n, scale=cfg.scale)
    path = save_png(grid, out_dir / "grid.png", {"prompts": " | ".join(prompts), **settings})
    log.info("wrote %d images and %s", len(captions), path)
    return path


@hydra.main(config_path="../conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(sample, cfg)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
