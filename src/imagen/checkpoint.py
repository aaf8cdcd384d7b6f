"""Rebuild trained models from their Lightning checkpoints alone, for sampling and evaluation: one model
(`load_model`), or a cascade of them with the scripts' per-stage settings (`load_cascade`, §2.4).

Every checkpoint carries the run's resolved config (`imagen_config`, written by ImagenModule) next to the
weights, so `scripts/sample.py ckpt=...` needs no training config. The EMA weights (Lightning's
EMA callback, a WeightAveraging, saves them as `state_dict`, the raw weights as `current_model_state`) are the default:
they are what the paper samples with. A checkpoint cannot run code: loading is `weights_only=True`, and its stored
config may name only the classes of imagen.safe_targets' allow-list, checked before anything is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from imagen.build import build_module, instantiate
from imagen.cascade.cascade import Cascade, StageSettings, check_chain
from imagen.config import conf_dir
from imagen.lightning.module import ImagenModule
from imagen.safe_targets import check_stored_config


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def flatten(overrides: Any) -> dict[str, Any]:
    """{"encoder": {"path": x}} (the scripts' `model` node) -> {"encoder.path": x}."""
    node = (
        OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else dict(overrides or {})
    )
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (tensors + plain data only); a missing file, one without a config or one whose config names
    a class outside imagen.safe_targets' allow-list (or holds an interpolation) is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give ckpt=RUN/checkpoints/last.ckpt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or "imagen_config" not in ckpt or not ckpt["imagen_config"]:
        raise ValueError(
            f"checkpoint {path} has no `imagen_config` (written by train.py): "
            "it cannot be rebuilt without its training config; re-save it from a current run"
        )
    if not isinstance(ckpt["imagen_config"], dict):  # OmegaConf.create would parse a string as YAML
        raise ValueError(
            f"checkpoint {path}: its `imagen_config` is a {type(ckpt['imagen_config']).__name__}, not a mapping: "
            "re-save it from a current run"
        )
    check_stored_config(ckpt["imagen_config"], f"checkpoint {path}")
    return ckpt


def load_model(
    path: str | Path, overrides: dict[str, Any] | None = None, ema: bool = True, device: str = "auto"
) -> tuple[ImagenModule, DictConfig, dict[str, Any]]:
    """(module in eval mode on the device, its training config, checkpoint info) from a checkpoint.

    `overrides` are dotted keys merged into the saved config before building, for settings that may differ on
    this machine, e.g. {"encoder.path": "/models/t5-v1_1-xxl"}; keys that change
    the weights' shapes make loading fail with the first mismatching tensor named.
    """
    ckpt = read_checkpoint(path)  # refuses a stored config naming a class outside the allow-list
    cfg = OmegaConf.create(ckpt["imagen_config"])
    OmegaConf.set_struct(cfg, False)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    cfg.text = OmegaConf.load(conf_dir() / "text" / "online.yaml")  # sampling encodes any prompt: the encoder itself
    with_overrides = f" with overrides {dict(overrides)}" if overrides else ""
    check_stored_config(cfg, f"checkpoint {path}{with_overrides}")  # what is built is checked too
    module = build_module(cfg)
    has_ema = "current_model_state" in ckpt
    state = ckpt["state_dict"] if (ema or not has_ema) else ckpt["current_model_state"]
    current = module.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in current.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {path} does not match the model its config builds (were overrides changing "
            f"the model?): missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {shapes[:2]}"
        )
    module.load_state_dict(state)
    target = resolve_device(device)
    module.to(target).eval()
    module.text_encoder.to(target)
    info = {
        "ckpt": str(path),
        "global_step": int(ckpt.get("global_step", -1)),
        "ema": bool(ema and has_ema),
        "train_seconds": train_seconds(ckpt),
    }
    return module, cfg, info


def train_seconds(ckpt: dict[str, Any]) -> float | None:
    """The training wall time a checkpoint was saved at (Lightning's Timer callback: `callbacks.timer`), or None."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("Timer") and isinstance(state, dict):
            elapsed = state.get("time_elapsed", {}).get("train")
            return None if elapsed is None else round(float(elapsed), 1)
    return None


# ------------------------------------------------------------------ a cascade of checkpoints (§2.4)
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
    """conf/thresholding/NAME.yaml, or an error listing the options (a name, never a path to another YAML file)."""
    valid = sorted(p.stem for p in (conf_dir() / "thresholding").glob("*.yaml"))
    if name not in valid:
        raise ValueError(f"unknown thresholding {name!r} in stage_thresholding; valid: {valid}")
    return OmegaConf.load(conf_dir() / "thresholding" / f"{name}.yaml")


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
    # Every stage's stored config passes the allow-list (read_checkpoint) and the chain is checked before loading.
    saved = [read_checkpoint(path)["imagen_config"] for path in ckpts]
    check_chain(ckpts, [c.get("stage", {}).get("low_res_size") for c in saved], [c["image_size"] for c in saved])
    modules, configs, infos, settings = [], [], [], []
    for i, path in enumerate(ckpts):
        module, train_cfg, info = load_model(path, flatten(cfg.model), ema=cfg.ema, device=cfg.device)
        sampler = instantiate(cfg.sampler, **({} if steps[i] is None else {"steps": steps[i]}))
        thresholding = instantiate(cfg.thresholding if thresholds[i] is None else thresholding_config(thresholds[i]))
        settings.append(StageSettings(float(guidance[i]), sampler, thresholding, aug[i]))
        modules.append(module), configs.append(train_cfg), infos.append(info)
    return Cascade(modules, settings, names=ckpts), configs, infos
