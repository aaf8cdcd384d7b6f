"""From a composed Hydra config to the objects of a run: encoder, LightningModule, DataModule, Trainer.

train.py, the benchmark and the sampling scripts all build through here, so a config means the same thing
everywhere. Bad values raise one-line errors here, before any data is generated or any step is taken.

The `text` group says where the text embeddings come from (imagen.text.source, §2.1): with `text=cached` the
encoder is never built: the datamodule attaches the precomputed embeddings to the training batches and the module
samples the eval prompts from theirs; a missing or stale cache is refused here, with the command that rebuilds it.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from imagen.lightning.callbacks import LogRunConfig
from imagen.lightning.checkpoint_io import unreadable
from imagen.lightning.module import ImagenModule
from imagen.models.attention import check_attention_backend
from imagen.text.cache import TextCache

# The config groups whose values define the network's weights: a resumed checkpoint must agree on them.
MODEL_GROUPS = ("unet", "cond", "encoder", "schedule", "prediction", "stage", "noise_aug")
RUNTIME_KEYS = ("path", "memo_size", "_partial_", "attention")  # settings that do not change the weights


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising the constructor's own error (ValueError, FileNotFoundError,
    TextEncoderUnavailable...) instead of Hydra's wrapper, so a bad value stays a one-line error."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, OSError)):
            raise err.__cause__ from None
        raise


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """Flat {"unet.channels": 64, ...} of the weight-defining config (runtime-only keys left out)."""
    flat: dict[str, Any] = {"image_size": cfg.image_size}
    for group in MODEL_GROUPS:
        node = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in node.items():
            if key not in RUNTIME_KEYS:
                flat[f"{group}.{key}"] = value
    return flat


def check_config(cfg: DictConfig) -> None:
    """Range checks of top-level values (the components check their own)."""
    lr = cfg.optim.optimizer.lr
    if not lr > 0:
        raise ValueError(f"optim.optimizer.lr must be > 0, got {lr}")
    if not 0.0 <= cfg.p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {cfg.p_uncond}")
    if cfg.image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {cfg.image_size}")
    if cfg.trainer.max_steps < 1:
        raise ValueError(f"trainer.max_steps must be >= 1, got {cfg.trainer.max_steps}")
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {cfg.ckpt_path} does not exist")
    check_attention_backend(cfg.unet.get("attention"))  # before an encoder is loaded


def check_resume(cfg: DictConfig) -> None:
    """A resumed checkpoint must have been trained with this run's model config: name the keys that differ."""
    if cfg.ckpt_path is None:
        return
    problem = unreadable(cfg.ckpt_path)
    if problem is not None:
        raise ValueError(
            f"ckpt_path {cfg.ckpt_path} cannot be read ({problem}): it is truncated or corrupt; resume from an "
            "earlier checkpoint of its folder (step_*.ckpt)"
        )
    saved = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("imagen_model_config", {})
    current = model_config(cfg)
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs run {current.get(k)!r}" for k in differ)
        raise ValueError(
            f"ckpt_path {cfg.ckpt_path} was trained with another model config ({detail}): "
            "resume with the same config or start a new run"
        )


def build_stage(cfg: DictConfig):
    """The cascade stage (§2.4): base or super-resolution, with its noise augmentation."""
    return instantiate(cfg.stage)


def build_unet(cfg: DictConfig, text_dim: int, stage=None):
    """The stage's U-Net: its training resolution and extra input channels come from the stage; its attention
    kernel from `unet.attention` (checked by the U-Net: xformers without CUDA is refused here). Two top-level
    runtime switches (absent = false; they do not change the weights): `channels_last` stores the convolutions'
    weights (and so their activations) in NHWC memory format, `compile` wraps the U-Net's call in torch.compile."""
    stage = stage if stage is not None else build_stage(cfg)
    unet = instantiate(cfg.unet)(text_dim=text_dim, cond=instantiate(cfg.cond), **stage.unet_kwargs())
    if cfg.get("channels_last", False):
        unet = unet.to(memory_format=torch.channels_last)
    if cfg.get("compile", False):
        unet.compile_forward()
    return unet


def build_text_encoder(cfg: DictConfig):
    """The frozen encoder of `cfg.encoder` (§2.1)."""
    return instantiate(cfg.encoder)


def encoder_identity(cfg: DictConfig) -> dict[str, Any]:
    """What defines the encoder's embeddings, from the config alone (no weights loaded): its weight-defining
    keys (name, revision, model_class, layer, max_length, dtype, ...). Names and validates the text cache."""
    return {k.split(".", 1)[1]: v for k, v in model_config(cfg).items() if k.startswith("encoder.")}


def precompute_command() -> str:
    """The command that (re)builds this run's text cache: the precompute script with the run's overrides."""
    if not HydraConfig.initialized():
        return "python scripts/precompute_text_embeddings.py <this run's encoder=... and data... overrides>"
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("text=", "+text="))]
    return " ".join(["python scripts/precompute_text_embeddings.py", *map(shlex.quote, overrides)])


def open_text_cache(cfg: DictConfig, datamodule) -> TextCache:
    """The precomputed embeddings of this run's encoder over the datamodule's training shards (§2.1);
    TextCacheError (a ValueError: one line, what differs, the rebuild command) unless current."""
    return TextCache(datamodule.train_urls(), encoder_identity(cfg), rebuild=precompute_command())


def build_module(cfg: DictConfig, text_encoder=None) -> ImagenModule:
    stage = build_stage(cfg)  # first: a bad stage is refused before an encoder is loaded
    if text_encoder is None:
        datamodule = functools.cache(lambda: instantiate(cfg.data))  # only text=cached needs it
        text_encoder = instantiate(cfg.text).sampling_encoder(
            lambda: build_text_encoder(cfg),
            lambda: open_text_cache(cfg, datamodule()),
            lambda: datamodule().eval_prompts(),
        )
    return ImagenModule(
        unet=build_unet(cfg, text_encoder.dim, stage),
        text_encoder=text_encoder,
        schedule=instantiate(cfg.schedule),
        parameterization=instantiate(cfg.prediction),
        optimizer=instantiate(cfg.optim.optimizer),
        p_uncond=cfg.p_uncond,
        lr_schedule=instantiate(cfg.optim.lr_schedule),
        sampler=instantiate(cfg.sampler),
        thresholding=instantiate(cfg.thresholding),
        guidance_weight=cfg.guidance_weight,
        image_size=cfg.image_size,
        model_config=model_config(cfg),
        run_config=OmegaConf.to_container(cfg, resolve=True),
        stage=stage,
        loss_weight=instantiate(OmegaConf.select(cfg, "loss_weight")),  # None in checkpoints from before the group
    )


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.text_cache = instantiate(cfg.text).training_cache(lambda: open_text_cache(cfg, datamodule))
    return datamodule


def build_trainer(
    cfg: DictConfig, run_dir: str | Path, loggers: list | None = None, hparams: dict | None = None
) -> pl.Trainer:
    """The Lightning Trainer of `cfg.trainer` with the `callbacks` group's callbacks (and the run-config logger),
    writing into `run_dir` (the `${run_dir}` of the callbacks' paths)."""
    run_dir = Path(run_dir)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    callbacks = [LogRunConfig(hparams or {}, str(run_dir))]
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return instantiate(
        cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers if loggers else False
    )
