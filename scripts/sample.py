"""Sample images from a trained checkpoint or a cascade of them (Imagen §2.2 guidance, §2.3 thresholding, §2.4).

    python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt prompt="two red circles" guidance=5 \
        thresholding=dynamic sampler=ddim sampler.steps=50 seed=0 n=8
    python scripts/sample.py ckpt='[BASE,SR1,SR2]' prompt="..." guidance='[5,8,8]' aug_level='[0.2,0.2]' \
        steps='[256,128,64]' stage_thresholding='[dynamic,dynamic,static]'

Writes into its run directory `grid.png` (a row per prompt) and `images/<prompt>_<k>.png`, every PNG carrying
the prompt, seed, guidance weight, sampler, thresholding and checkpoint in its metadata. A cascade writes every
resolution: `grid_<r>px.png`, `images/<r>px/...`, and `cascade.png` (each sample at every resolution, side by
side); `grid.png` is the last stage's. The model is rebuilt
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
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from imagen.cascade.cascade import STAGE_SEED_STRIDE, generate_cascade
from imagen.checkpoint import load_cascade
from imagen.cli import check_overrides, read_prompts, run_script
from imagen.images import to_uint8
from imagen.lightning.grid import caption_grid, save_png

log = logging.getLogger(__name__)


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "prompt"


def check(cfg: DictConfig) -> None:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")


def sample(cfg: DictConfig, out_dir: Path) -> Path:
    check(cfg)
    prompts = read_prompts(cfg)
    cascade, _, infos = load_cascade(cfg)
    captions = [p for p in prompts for _ in range(cfg.n)]
    per_stage = generate_cascade(cascade, captions, cfg.seed, cfg.batch_size)  # [(N, 3, r, r) per stage]
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}

    def one(values: list):  # a single model's metadata keeps its scalar form
        return values[0] if len(values) == 1 else values

    st = cascade.settings
    settings = {
        "guidance": one([s.guidance for s in st]),
        "sampler": choices.get("sampler", type(st[0].sampler).__name__),
        "sampler_config": OmegaConf.to_yaml(cfg.sampler).strip(),
        "steps": one([getattr(s.sampler, "steps", None) for s in st]),
        "thresholding": one([type(s.thresholding).__name__ for s in st])
        if cfg.stage_thresholding
        else choices.get("thresholding", type(st[0].thresholding).__name__),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "ckpt": one([i["ckpt"] for i in infos]),
        "step": one([i["global_step"] for i in infos]),
        "ema": infos[-1]["ema"],
    }
    if len(st) > 1:
        settings.update({"aug_level": [s.aug_level for s in st[1:]], "stage_seed_stride": STAGE_SEED_STRIDE})
    for images in per_stage:
        res = images.shape[-1]
        sub = out_dir / "images" / (f"{res}px" if len(per_stage) > 1 else "")
        arr = to_uint8(images)
        for k, caption in enumerate(captions):
            p, i = divmod(k, cfg.n)
            meta = {
                "prompt": caption,
                **settings,
                "resolution": res,
                "index": k,
                "chunk_seed": cfg.seed + k // cfg.batch_size,
                "index_in_chunk": k % cfg.batch_size,
            }
            save_png(Image.fromarray(arr[k]), sub / f"{p:03d}_{slug(caption)}_{i:02d}.png", meta)
        if len(per_stage) > 1:
            save_png(
                caption_grid(images, captions, per_row=cfg.n, scale=cfg.scale),
                out_dir / f"grid_{res}px.png",
                {"prompts": " | ".join(prompts), "resolution": res, **settings},
            )
    grid = caption_grid(per_stage[-1], captions, per_row=cfg.n, scale=cfg.scale)
    path = save_png(grid, out_dir / "grid.png", {"prompts": " | ".join(prompts), **settings})
    if len(per_stage) > 1:
        save_png(cascade_picture(per_stage, captions, cfg.n, cfg.scale), out_dir / "cascade.png", settings)
    log.info("wrote %d images per resolution %s and %s", len(captions), cascade.resolutions, path)
    return path


def cascade_picture(per_stage: list[torch.Tensor], captions: list[str], per_prompt: int, scale: int = 1):
    """A row per prompt: each of its samples at every resolution of the cascade, left to right, shown at the
    final size (nearest)."""
    final = per_stage[-1].shape[-1]
    shown = [torch.nn.functional.interpolate(x, size=(final, final), mode="nearest") for x in per_stage]
    images = torch.stack(shown, dim=1).flatten(0, 1)  # (N * stages, 3, final, final)
    labels = [c for c in captions for _ in per_stage]
    return caption_grid(images, labels, per_row=per_prompt * len(per_stage), scale=scale)


@hydra.main(config_path="../conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(sample, cfg)


if __name__ == "__main__":
    check_overrides()
    torch.set_float32_matmul_precision("high")
    main()
