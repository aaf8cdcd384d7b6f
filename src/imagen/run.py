"""One training job: config -> objects -> fit -> final evaluation, recorded in job.json. Returns the final training loss."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Timer

from imagen.build import build_datamodule, build_module, build_trainer, check_config, check_resume
from imagen.config import hydra_choices
from imagen.lab.final_eval import plan as plan_final_eval
from imagen.lab.final_eval import run_final_eval
from imagen.lab.job import JobBusy, JobRecord, exclusive, global_rank, isolated_environment, read_record
from imagen.lightning.checkpoint_io import resume_checkpoint
from imagen.lightning.data_report import data_report
from imagen.lightning.loggers import finish_wandb

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_name(run_dir: str | Path) -> str:
    """`<ablation>/<job folder>` inside a multirun (the W&B run name), else the run folder's name."""
    run_dir = Path(run_dir)
    if is_multirun():
        return f"{Path(HydraConfig.get().sweep.dir).name}/{run_dir.name}"
    return run_dir.name


def run(cfg: DictConfig) -> float | None:
    """One job: train, then the final evaluation (`final_eval`), recorded in `<run_dir>/job.json` (imagen.lab.job).

    Inside a multirun a completed job is skipped, an interrupted or failed one resumes from its last checkpoint,
    and a failure is recorded and returned as None so the sweep goes on; a single run re-raises it."""
    run_dir = Path(HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.run_dir)
    try:
        with exclusive(run_dir):
            return _run_job(cfg, run_dir)
    except JobBusy as err:
        print(f"error: {err}", file=sys.stderr)
        if not is_multirun():
            sys.exit(2)
        log.error("%s; the sweep goes on", err)
        return None


def _run_job(cfg: DictConfig, run_dir: Path) -> float | None:
    previous = read_record(run_dir)
    if is_multirun() and cfg.skip_completed and previous and previous.get("status") == "completed":
        log.info("skipping %s: completed on %s (skip_completed=false re-runs it)", run_dir, previous.get("finished"))
        return previous.get("train_loss")
    choices = hydra_choices()
    fresh = bool(previous and previous.get("status") == "completed")  # skip_completed=false: train and evaluate anew
    record = JobRecord(
        run_dir,
        ablation=cfg.ablation,
        seed=cfg.seed,
        choices=choices,
        dir=str(run_dir),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        **({"evals": {}, "train_seconds": None} if fresh else {}),
    )
    with isolated_environment(run_dir):
        try:
            return _train_and_evaluate(cfg, run_dir, record, choices, resume=not fresh)
        except SystemExit as err:
            # Bad input (exit 2, reported already) failed; anything else is an interruption that must end this
            # process: SLURM's SIGTERM on a requeue or preemption (Lightning's SIGTERMException), or submitit's exit
            # after it requeued the job. Swallowing it would tell the launcher the job is done while SLURM re-runs it.
            record.fail(err) if err.code == 2 else record.interrupt(err)
            raise
        except Exception as err:
            record.fail(err)
            if not is_multirun():
                raise
            log.error(
                "job %s failed (%s: %s); recorded in %s, the sweep goes on",
                run_dir,
                type(err).__name__,
                err,
                record.path,
            )
            print(f"error: job {run_dir.name} failed: {type(err).__name__}: {err}", file=sys.stderr)
            return None


def _train_and_evaluate(
    cfg: DictConfig, run_dir: Path, record: JobRecord, choices: dict[str, str], resume: bool = True
) -> float | None:
    # An interrupted, failed or requeued sweep job resumes from its newest intact checkpoint.
    last = resume_checkpoint(run_dir / "checkpoints") if resume and is_multirun() and cfg.ckpt_path is None else None
    if last is not None:
        log.info("resuming %s from %s", run_dir, last)
        cfg = cfg.copy()
        cfg.ckpt_path = str(last)
    try:
        check_config(cfg)
        check_resume(cfg)
        if cfg.final_eval.enabled:
            plan_final_eval(cfg)  # compose every evaluation now: a typo fails before training
        pl.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        module = build_module(cfg)
        datamodule = build_datamodule(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        # Bad input: one line naming the problem, before any compute.
        print(f"error: {err}", file=sys.stderr)
        if is_multirun():
            raise
        sys.exit(2)
    record.start()
    tags = [f"{k}={v}" for k, v in sorted(choices.items())]
    name = job_name(run_dir)
    identity = {k: v for k, v in (("name", name), ("group", cfg.ablation)) if cfg.logger.get(k, None) is None}
    loggers = instantiate(cfg.logger, save_dir=str(run_dir), tags=tags, **identity)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if global_rank() == 0:
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config_resolved.yaml")
    hparams = {
        "config": resolved,
        "choices": choices,
        "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
    }
    trainer = build_trainer(cfg, run_dir, loggers, hparams)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    finally:
        finish_wandb()  # this job's W&B run ends before the next job (or the evaluation's run) starts
    train_seconds = time.perf_counter() - start
    if cfg.ckpt_path:  # resumed: the time of the attempts before, up to the checkpoint, is in the checkpoint's Timer
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        before = record.data.get("train_seconds") or 0.0  # a killed attempt recorded none
        train_seconds = timer.time_elapsed() if timer is not None else train_seconds + before
    loss = trainer.callback_metrics.get("train/loss")
    loss = None if loss is None else float(loss)
    log.info("trained %d steps in %.1f s; run directory %s", trainer.global_step, train_seconds, run_dir)
    record.update(
        global_step=trainer.global_step,
        train_loss=loss,
        data=data_report(trainer),
        train_seconds=round(train_seconds, 1),
    )
    if global_rank() != 0:  # SLURM: every task runs this function; rank 0 evaluates and records
        return loss
    if cfg.final_eval.enabled:
        start = time.perf_counter()
        run_final_eval(cfg, run_dir, record, name, tags)
        record.update(eval_seconds=round(time.perf_counter() - start, 1))
    record.complete()
    return loss
