"""Rebuild a trained model from its Lightning checkpoint alone, for sampling and evaluation.

Every checkpoint carries the run's resolved config (`imagen_config`, written by ImagenModule) next to the
weights, so `scripts/sample.py ckpt=...` needs no training config. The EMA weights (Lightning's
EMAWeightAveraging saves them as `state_dict`, the raw weights as `current_model_state`) are the default:
they are what the paper samples with. Loading is `weights_only=True`: a checkpoint cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from imagen.build import build_module
from imagen.lightning.module import ImagenModule


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def flatten(overrides: Any) -> dict[str, Any]:
    """{"encoder": {"path": x}} (the scripts' `model` node) -> {"encoder.path": x}."""
    node = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else dict(overrides or {})
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (tensors + plain data only); a missing file or one without a config is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give ckpt=RUN/checkpoints/last.ckpt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "imagen_config" not in ckpt or not ckpt["imagen_config"]:
        raise ValueError(f"checkpoint {path} has no `imagen_config` (written by train.py since issue 4): "
                         "it cannot be rebuilt without its training config; re-save it from a current run")
    return ckpt


def load_model(path: str | Path, overrides: dict[str, Any] | None = None, ema: bool = True,
               device: str = "auto") -> tuple[ImagenModule, DictConfig, dict[str, Any]]:
    """(module in eval mode on the device, its training config, checkpoint info) from a checkpoint.

    `overrides` are dotted keys merged into the saved config before building, for settings that may differ on
    this machine, e.g. {"encoder.path": "/models/t5-v1_1-xxl"} or {"encoder.cache": False}; keys that change
    the weights' shapes make loading fail with the first mismatching tensor named.
    """
    ckpt = read_checkpoint(path)
    cfg = OmegaConf.create(ckpt["imagen_config"])
    OmegaConf.set_struct(cfg, False)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    cfg.encoder.cache = False  # sampling encodes arbitrary prompts: the frozen encoder itself is needed
    if "stage" not in cfg:  # trained before the cascade existed: a base model
        cfg.stage = {"_target_": "imagen.cascade.stage.Base", "image_size": cfg.image_size}
    module = build_module(cfg)
    has_ema = "current_model_state" in ckpt
    state = ckpt["state_dict"] if (ema or not has_ema) else ckpt["current_model_state"]
    current = module.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in current.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {path} does not match the model its config builds (were overrides changing "
                         f"the model?): missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {shapes[:2]}")
    module.load_state_dict(state)
    target = resolve_device(device)
    module.to(target).eval()
    module.text_encoder.to(target)
    info = {"ckpt": str(path), "global_step": int(ckpt.get("global_step", -1)), "ema": bool(ema and has_ema)}
    return module, cfg, info
