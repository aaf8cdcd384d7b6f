"""The guidance-sweep evaluation of a checkpoint or a cascade: Imagen's FID-vs-alignment pareto curve (§3, Fig. 4,
A.8). Called by scripts/evaluate.py (whose docstring has the commands and the files written) and at the end of
every sweep job (imagen.lab.final_eval)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from imagen.build import instantiate
from imagen.cascade.cascade import generate_cascade
from imagen.cascade.stage import upsample
from imagen.checkpoint import as_list, load_cascade, per_stage
from imagen.config import hydra_choices
from imagen.eval.metrics import FidKid, saturation
from imagen.eval.pareto import plot_categories, plot_pareto
from imagen.lightning.grid import caption_grid, save_png
from imagen.lightning.loggers import finish_wandb
from imagen.models.text_conditioning import withhold_tokens

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> list[float]:
    weights = [cfg.guidance] if isinstance(cfg.guidance, (int, float)) else list(cfg.guidance)
    if not weights or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
        raise ValueError(f"guidance must be a non-empty list of weights >= 0 (1 disables guidance), got {weights}")
    if cfg.batch_size < 1 or cfg.grid_per_category < 0:
        raise ValueError(
            f"batch_size must be >= 1 and grid_per_category >= 0, got {cfg.batch_size}, {cfg.grid_per_category}"
        )
    return [float(w) for w in weights]


def category_grid(images: torch.Tensor, prompts: list[dict], per_row: int):
    """A row per category: its first `per_row` images, the category name as the label."""
    rows, labels = [], []
    for cat in dict.fromkeys(p["category"] for p in prompts):
        idx = [i for i, p in enumerate(prompts) if p["category"] == cat][:per_row]
        idx += [idx[-1]] * (per_row - len(idx))  # pad a short category with its last image
        rows.append(images[idx])
        labels += [cat] * per_row
    return caption_grid(torch.cat(rows), labels, per_row=per_row)


def evaluate(cfg: DictConfig, out_dir: Path, choices: dict[str, str] | None = None) -> dict:
    """The guidance sweep of `cfg` (conf/evaluate.yaml) into `out_dir`; `choices` are its config-group choices
    (default: this Hydra job's), recorded in metrics.json and as W&B tags."""
    weights = check(cfg)
    out_dir = Path(out_dir)
    n_stages = len(as_list(cfg.ckpt))
    lower_w: list = []
    if n_stages > 1:
        if cfg.cascade_guidance is None:
            raise ValueError(
                "a cascade needs cascade_guidance: the guidance weight of the stages before the last "
                "(one for all or one per stage), e.g. cascade_guidance=1.5"
            )
        lower_w = per_stage(cfg.cascade_guidance, n_stages - 1, "cascade_guidance")
    suite = instantiate(cfg.eval)
    features = instantiate(cfg.features)
    cascade, configs, infos = load_cascade(OmegaConf.merge(cfg, {"guidance": [*lower_w, weights[0]]}))
    module, train_cfg, info = cascade.modules[-1], configs[-1], infos[-1]
    if not cfg.get("text_tokens", True):  # the diagnostic: the last stage's attention layers see no text tokens
        withhold_tokens(module.unet.text_cond)
    sampler, thresholding = cascade.settings[-1].sampler, cascade.settings[-1].thresholding
    suite = suite.bind(train_cfg, module.image_size)
    prompts = suite.prompts()
    captions = [p["caption"] for p in prompts]
    reference = suite.reference()
    reference_prompts = suite.reference_prompts()
    out_dir.mkdir(parents=True, exist_ok=True)
    fidkid = None
    if reference is not None:
        fidkid = FidKid(features, kid_subset_size=cfg.kid_subset_size)
        fidkid.update_real(reference)
    choices = hydra_choices() if choices is None else choices
    loggers = instantiate(cfg.logger, save_dir=str(out_dir), tags=[f"{k}={v}" for k, v in sorted(choices.items())])
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams({"config": config, "choices": choices, "train_config": OmegaConf.to_container(train_cfg)})
    metrics = {
        "label": cfg.label,
        "ckpt": info["ckpt"],
        "step": info["global_step"],
        "train_seconds": info.get("train_seconds"),
        "ema": info["ema"],
        "text_tokens": bool(cfg.get("text_tokens", True)),
        "suite": suite.name,
        "alignment_key": suite.alignment_key,
        "features": getattr(features, "name", type(features).__name__),
        "sampler": choices.get("sampler", type(sampler).__name__),
        "sampler_config": OmegaConf.to_container(cfg.sampler),
        "thresholding": choices.get("thresholding", type(thresholding).__name__),
        "thresholding_config": OmegaConf.to_container(cfg.thresholding),
        "seed": cfg.seed,
        "n_samples": len(prompts),
        "n_reference": 0 if reference is None else len(reference),
        "reference": {}
        if reference is None
        else {**saturation(reference), **(suite.score(reference, reference_prompts) if reference_prompts else {})},
        "results": [],
    }
    if n_stages > 1:
        metrics["cascade"] = {
            "ckpts": [i["ckpt"] for i in infos],
            "resolutions": cascade.resolutions,
            "guidance": lower_w,
            "aug_level": [s.aug_level for s in cascade.settings[1:]],
            "steps": [getattr(s.sampler, "steps", None) for s in cascade.settings],
            "thresholding": [type(s.thresholding).__name__ for s in cascade.settings],
        }
    try:
        lower: list[torch.Tensor] = []
        if n_stages > 1:  # the lower stages' samples, shared by every weight of the sweep
            start = time.perf_counter()
            lower = generate_cascade(cascade, captions, cfg.seed, cfg.batch_size, stop=n_stages - 1)
            metrics["cascade"]["lower_sample_seconds"] = round(time.perf_counter() - start, 2)
            # The baseline an SR stage must beat: the stage below's samples, bilinearly upsampled.
            upsampled = upsample(lower[-1], module.image_size)
            baseline = {**saturation(upsampled), **suite.score(upsampled, prompts)}
            if fidkid is not None:
                fidkid.reset_fake()
                fidkid.update_fake(upsampled)
                baseline.update(fidkid.compute())
            metrics["cascade"]["lower_upsampled"] = baseline
            for images in lower:
                if cfg.grid_per_category:
                    save_png(
                        category_grid(images, prompts, cfg.grid_per_category),
                        out_dir / "grids" / f"{images.shape[-1]}px.png",
                        {"guidance": str(lower_w), "seed": cfg.seed},
                    )
        for step, w in enumerate(weights):
            start = time.perf_counter()
            cascade.settings[-1].guidance = w
            images = generate_cascade(
                cascade, captions, cfg.seed, cfg.batch_size, lowres=lower[-1] if lower else None, start=n_stages - 1
            )[-1]
            row = {"guidance": w, "n_samples": len(images), "sample_seconds": round(time.perf_counter() - start, 2)}
            if fidkid is not None:
                fidkid.reset_fake()
                fidkid.update_fake(images)
                row.update(fidkid.compute())
            row.update(saturation(images))
            row.update(suite.score(images, prompts))
            metrics["results"].append(row)
            grid = category_grid(images, prompts, cfg.grid_per_category) if cfg.grid_per_category else None
            if grid is not None:
                save_png(
                    grid,
                    out_dir / "grids" / f"w{w:g}.png",
                    {
                        "guidance": w,
                        "thresholding": metrics["thresholding"],
                        "sampler": metrics["sampler"],
                        "seed": cfg.seed,
                        "ckpt": info["ckpt"],
                    },
                )
            for lg in loggers:
                lg.log_metrics({f"eval/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
                if grid is not None and hasattr(lg, "log_image"):
                    lg.log_image(key="eval/grid", images=[grid], caption=[f"w={w:g}"], step=step)
            log.info("w=%g: %s", w, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))  # partial results survive a crash
        label = f"{metrics['thresholding']} thresholding, {metrics['sampler']}"
        plots = [
            p
            for p in (
                plot_pareto({label: metrics}, out_dir / "pareto.png") if fidkid else None,
                plot_categories({label: metrics}, out_dir / "categories.png"),
            )
            if p is not None
        ]
        for lg in loggers:
            if hasattr(lg, "log_image") and plots:
                lg.log_image(key="eval/plots", images=[str(p) for p in plots])
            lg.save()
            lg.finalize("success")
    finally:
        finish_wandb()
    return metrics
