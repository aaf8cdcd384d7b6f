"""The end of every sweep job: the guidance-sweep evaluation (§3, Fig. 4, A.8) of the checkpoint it trained.

`final_eval` in the training config (conf/config.yaml) says what to evaluate:

    final_eval:
      enabled: true
      below: []                                  # an SR stage: the cascade's lower stages' checkpoints, base first
      overrides: [eval=webdataset]               # conf/evaluate.yaml overrides (groups too), as on its command line
      settings: {guidance: [1, 3, 6], steps: 20} # conf/evaluate.yaml values (command-line friendly: a dict)
      grid: {thresholding: [none, static, dynamic]}   # one evaluation per combination (a group or a value)
      curve: {enabled: true, settings: {guidance: [3], eval: {n_per_category: 64}}}   # every step_*.ckpt too

Each combination is one `scripts/evaluate.py` run composed from conf/evaluate.yaml, written to
`<run_dir>/eval/<key=value,...>/` (metrics.json, pareto.png, grids) and logged as its own W&B run
(job_type=eval) in the job's group, so `scripts/compare_runs.py` can draw every arm's curves.

`curve` evaluates every periodic checkpoint (`step_*.ckpt`) the same way with its own settings (usually one
weight and fewer prompts) into `<run_dir>/curve/<checkpoint>/`, and plots the judge's accuracy per category
against the training minutes stored in each checkpoint (`<run_dir>/curve/learning_curve.png`).
"""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imagen.build import build_stage
from imagen.config import conf_dir, job_dirname
from imagen.data.captions import CATEGORIES
from imagen.eval.guidance_sweep import evaluate
from imagen.eval.learning_curve import curve_points, plot_learning_curve

log = logging.getLogger(__name__)


def combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """{a: [1, 2], b: [x]} -> [{a: 1, b: x}, {a: 2, b: x}]; an empty grid is one evaluation with no overrides."""
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or not grid[k]:
            raise ValueError(f"final_eval.grid.{k} must be a non-empty list of values, got {grid[k]!r}")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def compose_eval(
    combo: dict[str, Any], overrides: list[str], settings: dict[str, Any]
) -> tuple[DictConfig, dict[str, str]]:
    """conf/evaluate.yaml with `overrides` and the combination's (groups such as thresholding=none, or values), then
    the settings merged in; `ckpt` is left null for the caller. Returns the config and its group choices (for
    metrics.json and tags)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*overrides, *(_override(k, v) for k, v in combo.items()), "ckpt=null"]
    context = (
        nullcontext()
        if GlobalHydra.instance().is_initialized()
        else initialize_config_dir(str(conf_dir()), version_base="1.3")
    )
    with context:
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.merge_with(settings)
    return cfg, choices


def plan(cfg: DictConfig) -> list[tuple[str, dict[str, Any], DictConfig, dict[str, str]]]:
    """(name, combination, evaluate config, choices) of every evaluation, composed now: an unknown option or a
    missing lower-stage checkpoint fails before training, not after it."""
    fe = cfg.final_eval
    stage = build_stage(cfg)
    if stage.takes_lowres and not fe.below:
        raise ValueError(
            "final_eval.below is required for a super-resolution stage: the checkpoints of the cascade's "
            "stages below it, base first, e.g. final_eval.below='[BASE_RUN/checkpoints/last.ckpt]'"
        )
    below = [str(p) for p in fe.below]
    for p in below:
        if not Path(p).is_file():
            raise FileNotFoundError(
                f"final_eval.below: checkpoint {p} does not exist (the cascade's lower stages, base first)"
            )
    overrides = [str(o) for o in fe.get("overrides", [])]
    settings = OmegaConf.to_container(fe.settings, resolve=True)
    out = []
    if fe.get("curve", {}).get("enabled", False):
        curve_settings = OmegaConf.to_container(fe.curve.settings, resolve=True)
        out.append(("curve", {}, *compose_eval({}, overrides, OmegaConf.merge(settings, curve_settings))))
    for combo in combinations(OmegaConf.to_container(fe.grid, resolve=True)):
        if "aug_level" in combo and not stage.can_sample(float(combo["aug_level"])):
            log.info(
                "final_eval: skipping aug_level=%s (this stage's noise augmentation cannot sample at it)",
                combo["aug_level"],
            )
            continue
        name = job_dirname(",".join(f"{k}={v}" for k, v in combo.items()))
        eval_cfg, choices = compose_eval(combo, overrides, settings)
        missing = sorted(OmegaConf.missing_keys(eval_cfg))
        if missing:
            raise ValueError(
                f"final_eval: the evaluation needs {', '.join(missing)}: set final_eval.settings.{missing[0]}=... "
                "(conf/evaluate.yaml) or final_eval.enabled=false"
            )
        out.append((name, combo, eval_cfg, choices))
    return out


def run_final_eval(cfg: DictConfig, run_dir: Path, record, name: str | None, tags: list[str]) -> list[Path]:
    """Every evaluation of `cfg.final_eval` on `<run_dir>/checkpoints/last.ckpt`; ones the record marks done
    (a re-run after a crash mid-evaluation) are kept, not redone. Returns the evaluation folders."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"final_eval: {ckpt} does not exist (the job saved no checkpoint)")
    dirs = []
    for combo_name, combo, eval_cfg, choices in plan(cfg):
        if combo_name == "curve":  # record key, folder, checkpoint
            targets = [(f"curve/{p.stem}",) * 2 + (p,) for p in sorted((run_dir / "checkpoints").glob("step_*.ckpt"))]
        else:
            targets = [(combo_name, f"eval/{combo_name}", ckpt)]
        for key, folder, path in targets:
            out = run_dir / folder
            dirs.append(out)
            if record.data["evals"].get(key, {}).get("status") == "completed":
                log.info("final_eval %s: already done in %s", key, out)
                continue
            _evaluate_one(cfg, eval_cfg.copy(), path, out, folder, name, {**choices, **_train_tags(tags)})
            record.data["evals"][key] = {"status": "completed", "dir": folder, "overrides": combo}
            record.update()
        if combo_name == "curve" and targets:
            runs = [json.loads((run_dir / folder / "metrics.json").read_text()) for _, folder, _ in targets]
            categories = [c for c in CATEGORIES if f"judge/{c}" in runs[-1]["results"][0]]
            plot_learning_curve(
                curve_points(runs, None, categories), categories, run_dir / "curve" / "learning_curve.png"
            )
    return dirs


def _train_tags(tags: list[str]) -> dict[str, str]:
    return {f"train/{t.split('=')[0]}": t.split("=", 1)[1] for t in tags}


def _evaluate_one(cfg: DictConfig, eval_cfg: DictConfig, ckpt: Path, out: Path, key: str, name, choices) -> None:
    with open_dict(eval_cfg):
        ckpts = [*cfg.final_eval.below, str(ckpt)]
        eval_cfg.ckpt = ckpts if len(ckpts) > 1 else ckpts[0]
        if "seed" not in cfg.final_eval.settings:
            eval_cfg.seed = cfg.seed  # the job's seed also draws its evaluation's noise
        eval_cfg.logger.group = cfg.ablation
        eval_cfg.logger.name = f"{name}/{key}" if name else None
    log.info("final_eval %s -> %s", key, out)
    evaluate(eval_cfg, out, choices=choices)
