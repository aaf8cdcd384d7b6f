"""What a config read from a file may name: the guard between a checkpoint's stored config and Hydra's `instantiate`.

A checkpoint is read with `torch.load(weights_only=True)`, so unpickling it runs no code; but the model is then
rebuilt from the config stored inside it (`imagen_config`), and `instantiate` calls whatever a `_target_` names
(Hydra refuses only a few callables: `builtins.open` or `shutil.copy` would run). So before anything is built,
`check_stored_config` walks the whole stored config (nested dicts, lists, `_args_`, `_partial_` nodes) and checks
every name that the code resolves by name against an explicit allow-list:

- every `_target_`;
- `model_class` (the encoder's transformers class, resolved by FrozenTextEncoder with hydra's `get_class`);
- the `path` (or first `_args_`) of a `hydra.utils.get_method` node (the callbacks' `batch_size_fn`).

Interpolations are refused: a stored config is saved resolved (`OmegaConf.to_container(cfg, resolve=True)`), so a
`${...}` string in one was not written by train.py, and resolving it could call a registered resolver
(`${pkg_model_path:X}` imports module X).

The allow-list holds the names the shipped configs use (tests/test_checkpoint_safety.py composes every option and
experiment and checks them): a new class of this project's goes in IMAGEN_MODULES' module, a library's in
LIBRARY_NAMES.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

from omegaconf import OmegaConf

# This project's names: defined (not imported) at the top level of one of these modules, public (no leading `_`).
# Not the whole `imagen.` package: it also holds code that launches processes (imagen.lab), trains (imagen.run),
# writes a file at any given path (imagen.lightning.grid.save_png, imagen.data.shards) or imports any module
# (imagen.config.pkg_model_path); "defined in" refuses re-exports such as imagen.build.hydra_instantiate.
IMAGEN_MODULES = frozenset(
    {
        "imagen.cascade.noise_augmentation",  # noise_aug
        "imagen.cascade.stage",  # stage
        "imagen.data.datamodule",  # data
        "imagen.data.shapes",  # data.world
        "imagen.diffusion.loss",  # loss_weight
        "imagen.diffusion.parameterization",  # prediction
        "imagen.diffusion.samplers",  # sampler
        "imagen.diffusion.schedule",  # schedule
        "imagen.diffusion.thresholding",  # thresholding
        "imagen.lightning.callbacks",  # callbacks, and batch_size_fn's get_method path
        "imagen.lightning.data_report",  # callbacks.data_report
        "imagen.lightning.divergence",  # callbacks.divergence
        "imagen.lightning.loggers",  # logger
        "imagen.flops",  # callbacks.throughput
        "imagen.lr_schedule",  # optim.lr_schedule
        "imagen.models.efficient_unet",  # unet (efficient variants)
        "imagen.models.text_conditioning",  # cond
        "imagen.models.unet",  # unet
        "imagen.text.encoder",  # encoder
        "imagen.text.source",  # text
    }
)

# Libraries' names, exactly, with the config that uses each.
LIBRARY_NAMES = {
    "torch.optim.Adam": "conf/optim/adam.yaml",
    "torch.optim.Adafactor": "conf/optim/adafactor.yaml",
    "pytorch_lightning.Trainer": "conf/trainer/*.yaml",
    "pytorch_lightning.callbacks.ThroughputMonitor": "conf/callbacks/default.yaml",
    "pytorch_lightning.callbacks.Timer": "conf/callbacks/default.yaml",
    "pytorch_lightning.plugins.environments.SLURMEnvironment": "conf/trainer/slurm.yaml (plugins)",
    "hydra.utils.get_method": "conf/callbacks/default.yaml (batch_size_fn; its path is checked too)",
}

# encoder.model_class: a transformers model class (T5EncoderModel, BertModel, CLIPTextModel, AutoModel, ...),
# loaded with from_pretrained / from_config, never with trust_remote_code.
TRANSFORMERS_MODEL = re.compile(r"transformers\.[A-Z][A-Za-z0-9]*Model", re.ASCII)

NAME_KEYS = ("_target_", "model_class")  # keys whose value is a dotted name the code imports
GETTERS = ("hydra.utils.get_method",)  # targets whose `path` (or first argument) is a dotted name too
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", re.ASCII)


@functools.cache
def is_allowed(name: str) -> bool:
    """Whether a stored config may name `name` (a dotted path to a class or function)."""
    if not DOTTED.fullmatch(name):
        return False
    if name in LIBRARY_NAMES or TRANSFORMERS_MODEL.fullmatch(name):
        return True
    module, _, attr = name.rpartition(".")
    if module not in IMAGEN_MODULES or attr.startswith("_"):
        return False
    obj = getattr(importlib.import_module(module), attr, None)
    return obj is not None and getattr(obj, "__module__", None) == module


def check_stored_config(config: Any, source: str) -> None:
    """Raise a one-line ValueError naming the first disallowed name (or interpolation), where it is and `source`
    (e.g. "checkpoint RUN/checkpoints/last.ckpt"); return None if the config (DictConfig, dict or list, nested)
    may be built. Nothing is resolved or instantiated here."""
    node = OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config) else config
    _walk(node, "", source, frozenset())


def _check_name(value: Any, where: str, source: str) -> None:
    if isinstance(value, str) and is_allowed(value):
        return
    shown = value if isinstance(value, str) and DOTTED.fullmatch(value) else repr(value)[:120]
    raise ValueError(
        f"{source}: refusing to instantiate {shown} at {where} (not in imagen's allow-list of classes a stored config "
        "may name; a new class of the project's belongs in imagen/safe_targets.py)"
    )


def _walk(node: Any, where: str, source: str, above: frozenset[int]) -> None:
    if isinstance(node, (dict, list, tuple)):
        if id(node) in above:  # a hand-made pickle can hold a container inside itself
            raise ValueError(f"{source}: refusing a config that contains itself at {where or 'its root'}")
        above = above | {id(node)}
    if isinstance(node, dict):
        for key, value in node.items():
            shown = str(key) if str(key).isprintable() else repr(key)  # the error stays one line
            at = f"{where}.{shown}" if where else shown
            if key in NAME_KEYS:
                _check_name(value, at, source)
            _walk(value, at, source, above)
        if node.get("_target_") in GETTERS:
            args = node.get("_args_")
            first = args[0] if isinstance(args, (list, tuple)) and args else None
            name, at = (node["path"], "path") if "path" in node else (first, "_args_[0]")
            _check_name(name, f"{where}.{at}" if where else at, source)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _walk(value, f"{where}[{i}]", source, above)
    elif isinstance(node, str) and "${" in node:
        raise ValueError(
            f"{source}: refusing the interpolation {node[:120]!r} at {where} (a stored config is saved resolved; "
            "resolving it could call a resolver): re-save the checkpoint from a current run"
        )
