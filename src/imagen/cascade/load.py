"""A cascade from the scripts' settings: checkpoints in order, with per-stage guidance, steps, thresholding and
aug_level (scripts/sample.py, scripts/evaluate.py). A scalar applies to every stage; a list gives one per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from imagen.build import instantiate
from imagen.cascade.cascade import Cascade, StageSettings, check_chain
from imagen.checkpoint import flatten, load_model, read_checkpoint

CONF = Path(__file__).resolve().parents[3] / "conf"


def as_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def per_stage(value: Any, n: int, name: str, what: str = "stage") -> list:
    """One value per stage from a scalar (repeated) or a list of exactly n values."""
    values = as_list(value)
    if values is None:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} {what}s: give one for all or one per {what}")
    return values


def thresholding_config(name: str) -> DictConfig:
    """conf/thresholding/NAME.yaml, or an error listing the options."""
    path = CONF / "thresholding" / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONF / "thresholding").glob("*.yaml"))
        raise ValueError(f"unknown thresholding {name!r} in stage_thresholding; valid: {valid}")
    return OmegaConf.load(path)


def load_cascade(cfg: DictConfig) -> tuple[Cascade, list[DictConfig], list[dict]]:
    """(cascade, each stage's training config, each checkpoint's info) from a script config with `ckpt` (one or a
    list), `guidance`, `aug_level`, `steps`, `stage_thresholding`, `sampler`, `thresholding`, `model`, `ema`,
    `device`."""
    ckpts = [str(c) for c in as_list(cfg.ckpt)]
    n = len(ckpts)
    guidance = per_stage(cfg.guidance, n, "guidance")
    if any(not isinstance(w, (int, float)) or w < 0 for w in guidance):
        raise ValueError(f"guidance must be weights >= 0 (1 disables guidance), got {guidance}")
    aug = per_stage(cfg.get("aug_level", 0.0), max(n - 1, 1), "aug_level", "super-resolution stage")
    aug = [0.0] + [0.0 if a is None else float(a) for a in aug][: n - 1]
    if any(not 0.0 <= a <= 1.0 for a in aug):
        raise ValueError(f"aug_level must be in [0, 1], got {aug[1:]}")
    steps = per_stage(cfg.get("steps"), n, "steps")
    if any(s is not None and (not isinstance(s, int) or s < 1) for s in steps):
        raise ValueError(f"steps must be integers >= 1, got {steps}")
    thresholds = per_stage(cfg.get("stage_thresholding"), n, "stage_thresholding")
    for name in thresholds:
        if name is not None:
            thresholding_config(name)
    saved = [read_checkpoint(path)["imagen_config"] for path in ckpts]  # the chain is checked before loading
    check_chain(ckpts, [c.get("stage", {}).get("low_res_size") for c in saved], [c["image_size"] for c in saved])
    modules, configs, infos, settings = [], [], [], []
    for i, path in enumerate(ckpts):
        module, train_cfg, info = load_model(path, flatten(cfg.model), ema=cfg.ema, device=cfg.device)
        sampler = instantiate(cfg.sampler, **({} if steps[i] is None else {"steps": steps[i]}))
        thresholding = instantiate(cfg.thresholding if thresholds[i] is None else thresholding_config(thresholds[i]))
        settings.append(StageSettings(float(guidance[i]), sampler, thresholding, aug[i]))
        modules.append(module), configs.append(train_cfg), infos.append(info)
    return Cascade(modules, settings, names=ckpts), configs, infos
