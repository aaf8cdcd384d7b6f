"""The ablation lab: sweep folders and job records, a 2-job multirun of 2-process DDP runs, failing jobs, re-runs,
the final evaluation, compare_runs (offline and W&B), every experiment config, the SLURM launcher config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from imagen.build import build_module
from imagen.config import job_dirname
from imagen.lab.compare import archive_jobs, curve, from_sweep_dirs, from_wandb, markdown_table, write_comparison
from imagen.lab.final_eval import combinations, plan
from imagen.lab.job import global_rank, isolated_environment

from conftest import ROOT, compose_cfg, tiny_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def cli_tiny(tmp_path: Path, steps: int = 2) -> list[str]:
    """tiny_overrides for the command line of train.py -m (no run_dir: Hydra's sweep folders are the point)."""
    return [o for o in tiny_overrides(tmp_path, steps=steps) if not o.startswith(("run_dir=", "logger="))] + [
        "data.gen_procs=1"
    ]


TINY_EVAL = [
    "final_eval.enabled=true",
    "++final_eval.settings.steps=2",
    "++final_eval.settings.guidance=[1,2]",
    "++final_eval.settings.batch_size=8",
    "++final_eval.settings.eval.n_per_category=1",
    "++final_eval.settings.eval.n_reference_per_category=4",
    "++final_eval.settings.kid_subset_size=2",
    "++final_eval.settings.grid_per_category=1",
]


def train_multirun(cwd: Path, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------- folders and records
def test_job_dirname_names_jobs_by_what_the_sweep_varies(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        OmegaConf.to_yaml(
            {
                "hydra": {
                    "overrides": {
                        "task": ["cond=mean_pool,cross_attn", "trainer.max_steps=5", "data.root=/x/y", "seed=3"]
                    },
                    "sweeper": {"params": {"unet.channels": "16,32"}},
                }
            }
        )
    )
    job = ["cond=mean_pool", "trainer.max_steps=5", "data.root=/x/y", "seed=3", "unet.channels=16", "experiment=e"]
    assert job_dirname(job, str(tmp_path)) == "cond=mean_pool,seed=3,unet.channels=16"  # constants and experiment out
    assert job_dirname(["data.root=/a/b"], None) == "data.root=_a_b"  # no sweep record: every override, paths flattened
    assert job_dirname([], None) == "default"
    long = job_dirname([f"k{i}=value{i}" for i in range(40)], None)
    assert len(long) == 120 and long != job_dirname([f"k{i}=value{i}" for i in range(41)], None)


def test_isolated_environment_restores_ddp_variables():
    os.environ.pop("MASTER_PORT", None)
    os.environ["WANDB_SERVICE"] = "kept"
    with isolated_environment("/runs/job"):
        assert os.environ["WANDB_DIR"] == "/runs/job"
        os.environ["MASTER_PORT"] = "12910"
        os.environ["RANK"] = "1"
        os.environ["WANDB_SERVICE"] = "a service started by the job"
        assert global_rank() == 1
    assert "MASTER_PORT" not in os.environ and "RANK" not in os.environ and global_rank() == 0
    assert "WANDB_DIR" not in os.environ and os.environ.pop("WANDB_SERVICE") == "a service started by the job"


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The issue's test: a 2-job multirun where each job is a 2-process DDP run on CPU (gloo), then its evaluation."""
    cwd = tmp_path_factory.mktemp("ddp_sweep")
    args = [
        "seed=0,1",
        "ablation=lab_test",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "logger=wandb",
        *cli_tiny(cwd, steps=2),
        *TINY_EVAL,
    ]
    res = train_multirun(cwd, args)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, res


@pytest.mark.slow
def test_multirun_of_ddp_jobs_is_one_clean_sweep(ddp_sweep):
    cwd, _ = ddp_sweep
    assert sorted(p.name for p in cwd.iterdir()) == ["data", "multirun"]  # nothing in outputs/: no relaunched script
    sweeps = list((cwd / "multirun").iterdir())
    assert [p.name for p in sweeps] == ["lab_test"]  # one sweep folder: rank 1 never re-ran the sweep
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["seed=0", "seed=1"]
    for job in jobs:
        d = sweeps[0] / job
        record = json.loads((d / "job.json").read_text())
        assert record["status"] == "completed" and record["attempts"] == 1 and record["ablation"] == "lab_test"
        state = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert state["global_step"] == 2
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["last.ckpt", "step_0000002.ckpt"]
        assert OmegaConf.load(d / "config_resolved.yaml").seed == int(job[-1])  # the resolved config is saved
        # One W&B train run per job (rank 0), one eval run, each named, grouped and typed.
        train_runs = [json.loads(x) for x in (d / "wandb_runs.jsonl").read_text().splitlines()]
        assert len(train_runs) == 1 and len(list((d / "wandb").glob("offline-run-*"))) == 1
        assert train_runs[0]["group"] == "lab_test" and train_runs[0]["job_type"] == "train"
        assert train_runs[0]["name"] == f"lab_test/{job}" and "trainer=ddp" in train_runs[0]["tags"]
        eval_runs = [json.loads(x) for x in (d / "eval" / "default" / "wandb_runs.jsonl").read_text().splitlines()]
        assert [(r["job_type"], r["group"]) for r in eval_runs] == [("eval", "lab_test")]
        metrics = json.loads((d / "eval" / "default" / "metrics.json").read_text())
        assert [r["guidance"] for r in metrics["results"]] == [1.0, 2.0]
        # Metrics from rank 0 only: one CSV, each logged step once.
        rows = (d / "metrics.csv").read_text().splitlines()[1:]
        steps = [r.split(",")[1] for r in rows if r.split(",")[5:6] != [""]]  # rows carrying train/loss
        assert len(steps) == len(set(steps)) == 2
    assert len(list(cwd.rglob("wandb_runs.jsonl"))) == 4  # 2 jobs x (train + eval), nothing else


@pytest.mark.slow
def test_rerunning_a_sweep_skips_completed_jobs(ddp_sweep):
    cwd, _ = ddp_sweep
    args = [
        "seed=0,1",
        "ablation=lab_test",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "logger=wandb",
        *cli_tiny(cwd, steps=2),
        *TINY_EVAL,
    ]
    res = train_multirun(cwd, args, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("skipping") + res.stdout.count("skipping") == 2
    assert len(list(cwd.rglob("wandb_runs.jsonl"))) == 4  # no new W&B runs
    for job in ("seed=0", "seed=1"):
        assert json.loads((cwd / "multirun" / "lab_test" / job / "job.json").read_text())["attempts"] == 1


@pytest.mark.slow
def test_a_device_count_sweep_does_not_leak_ddp_state(tmp_path):
    """devices=2,1 in one multirun (ENVIRONMENT.md: crashed when the first job's DDP variables reached the second)."""
    args = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2,1",
        "ablation=devices",
        "logger=csv",
        *cli_tiny(tmp_path, steps=2),
    ]
    res = train_multirun(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    for job in ("trainer.devices=2", "trainer.devices=1"):
        assert json.loads((tmp_path / "multirun" / "devices" / job / "job.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A non-finite loss (lr=1e30) fails one job; the other completes; a re-run retries only the failed one."""
    args = ["optim.optimizer.lr=1e30,2e-3", "ablation=fail_test", "logger=csv", *cli_tiny(tmp_path, steps=3)]
    res = train_multirun(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    sweep = tmp_path / "multirun" / "fail_test"
    bad = json.loads((sweep / "optim.optimizer.lr=1e+30" / "job.json").read_text())
    good = json.loads((sweep / "optim.optimizer.lr=0.002" / "job.json").read_text())
    assert bad["status"] == "failed" and bad["error"].startswith("FloatingPointError: non-finite training loss")
    assert (
        good["status"] == "completed" and (sweep / "optim.optimizer.lr=0.002" / "checkpoints" / "last.ckpt").is_file()
    )
    assert "error: job optim.optimizer.lr=1e+30 failed: FloatingPointError" in res.stderr
    again = train_multirun(tmp_path, args)
    assert again.returncode == 0
    assert json.loads((sweep / "optim.optimizer.lr=1e+30" / "job.json").read_text())["attempts"] == 2
    assert json.loads((sweep / "optim.optimizer.lr=0.002" / "job.json").read_text())["attempts"] == 1
    records = from_sweep_dirs([sweep])
    table = markdown_table(records)
    assert "1 (+0" not in table and "failed: FloatingPointError" in table  # the failure is in the comparison
    forced = train_multirun(tmp_path, [*args, "skip_completed=false"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "resuming" not in forced.stdout + forced.stderr  # trained anew, not resumed from the completed checkpoint
    again = json.loads((sweep / "optim.optimizer.lr=0.002" / "job.json").read_text())
    assert again["attempts"] == 2 and again["status"] == "completed" and again["global_step"] == 3


@pytest.mark.slow
def test_a_single_run_still_fails_loudly(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "optim.optimizer.lr=1e30",
            "logger=csv",
            *cli_tiny(tmp_path, steps=3),
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "FloatingPointError" in res.stderr
    assert json.loads((tmp_path / "run" / "job.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------------- final evaluation
def test_final_eval_grid_combinations_closed_form():
    assert combinations({}) == [{}]
    assert combinations({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ValueError, match="non-empty list"):
        combinations({"a": []})


@pytest.mark.slow
def test_final_eval_errors_come_before_training(tmp_path):
    cfg = compose_cfg(["final_eval.enabled=true", "+final_eval.grid.thresholding=[none,nope]"])
    with pytest.raises(Exception, match="nope"):
        plan(cfg)
    with pytest.raises(FileNotFoundError, match="/missing/base.ckpt"):
        plan(compose_cfg(["final_eval.enabled=true", "final_eval.below=[/missing/base.ckpt]"]))
    with pytest.raises(ValueError, match="final_eval.below is required"):
        plan(compose_cfg(["experiment=noise_aug_tiny"]))
    with pytest.raises(ValueError, match="eval.urls"):  # paper scale: the held-out shards must be named up front
        plan(compose_cfg(["experiment=thresholding"]))
    names = [name for name, *_ in plan(compose_cfg(["experiment=thresholding_tiny"]))]
    assert names == ["thresholding=none", "thresholding=static", "thresholding=dynamic"]


@pytest.mark.slow
def test_final_eval_curve_evaluates_every_periodic_checkpoint(tmp_path):
    from imagen.run import run

    cfg = compose_cfg(
        [
            *tiny_overrides(tmp_path, steps=4),
            *TINY_EVAL,
            "final_eval.curve.enabled=true",
            "+final_eval.curve.settings.guidance=[2]",
        ]
    )
    run(cfg)
    run_dir = tmp_path / "run"
    job = json.loads((run_dir / "job.json").read_text())
    assert {"curve/step_0000002", "curve/step_0000004"} <= set(job["evals"]) and job["status"] == "completed"
    points = [
        json.loads((run_dir / "curve" / s / "metrics.json").read_text()) for s in ("step_0000002", "step_0000004")
    ]
    assert [m["step"] for m in points] == [2, 4] and [r["guidance"] for m in points for r in m["results"]] == [2, 2]
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"]
    assert (run_dir / "curve" / "learning_curve.png").is_file() and (run_dir / "eval").is_dir()


# ------------------------------------------------------------------------------------- compare_runs
def _fake_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    seed: int,
    fids: list[float],
    accs: list[float],
    status: str = "completed",
    evals: dict | None = None,
) -> None:
    d = sweep / name
    d.mkdir(parents=True)
    (d / "job.json").write_text(
        json.dumps(
            {
                "status": status,
                "seed": seed,
                "overrides": overrides + [f"seed={seed}"],
                "train_seconds": 10.0 + seed,
                "eval_seconds": 5.0,
                "train_loss": 0.1 * (seed + 1),
                "error": None if status == "completed" else "RuntimeError: CUDA out of memory",
            }
        )
    )
    (d / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.5\n")
    for combo in evals or {"default": {}}:
        e = d / "eval" / combo
        e.mkdir(parents=True)
        rows = [{"guidance": w, "fid": f, "judge/accuracy": a} for w, f, a in zip([1.0, 3.0], fids, accs)]
        (e / "metrics.json").write_text(json.dumps({"alignment_key": "judge/accuracy", "results": rows}))


@pytest.mark.slow
def test_compare_runs_aggregates_seeds_closed_form(tmp_path):
    sweep = tmp_path / "multirun" / "cond"
    _fake_job(sweep, "cond=a,seed=0", ["cond=a"], 0, [10.0, 8.0], [0.2, 0.4])
    _fake_job(sweep, "cond=a,seed=1", ["cond=a"], 1, [12.0, 6.0], [0.4, 0.6])
    _fake_job(sweep, "cond=b,seed=0", ["cond=b"], 0, [20.0, 30.0], [0.1, 0.1])
    _fake_job(sweep, "cond=b,seed=1", ["cond=b"], 1, [0, 0], [0, 0], status="failed")
    records = from_sweep_dirs([sweep])
    assert sorted(r.label for r in records) == ["cond=a", "cond=a", "cond=b", "cond=b"]
    a = [r for r in records if r.label == "cond=a"]
    assert curve(a, "fid") == {1.0: (11.0, 10.0, 12.0), 3.0: (7.0, 6.0, 8.0)}
    b = [r for r in records if r.label == "cond=b"]  # the failed seed's evaluation (a diverged run has one) is left out
    assert curve(b, "fid") == {1.0: (20.0, 20.0, 20.0), 3.0: (30.0, 30.0, 30.0)}
    table = markdown_table(records)
    assert "| cond=a | 2 | 10 [10, 11] |" in table  # wall time: mean [min, max]
    assert "7.000 [6.000, 8.000]" in table  # best FID over w per seed: 8 and 6
    assert "0.500 [0.400, 0.600]" in table  # best accuracy per seed: 0.4 and 0.6
    assert "| cond=b | 1 (+1 failed: RuntimeError: CUDA out of memory)" in table
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_runs.py"), str(sweep), "--out", str(tmp_path / "cmp")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {
        "comparison.md",
        "pareto.png",
        "loss.png",
    }  # no saturation in the fake metrics
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_runs.py"), str(tmp_path / "nope")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "nope" in bad.stderr


def test_compare_runs_evaluation_arms(tmp_path):
    """Only the evaluation differs (the thresholding ablation): the arms are the evaluation's combinations."""
    sweep = tmp_path / "thr"
    combos = {"thresholding=none": {}, "thresholding=dynamic": {}}
    for seed in (0, 1):
        _fake_job(sweep, f"seed={seed}", [], seed, [5.0, 9.0], [0.3, 0.2], evals=combos)
    records = from_sweep_dirs([sweep])
    assert sorted({r.label for r in records}) == ["thresholding=dynamic", "thresholding=none"]
    paths = write_comparison(records, tmp_path / "out", "thr")
    assert paths["pareto"].is_file() and "thresholding=none | 2 |" in paths["markdown"].read_text()


def test_archived_jobs_rebuild_the_same_comparison(tmp_path):
    """archive_jobs keeps what the table reads; from_sweep_dirs reads the copy as it read the run folders."""
    sweep = tmp_path / "multirun" / "thr"
    combos = {"default": {}, "thresholding=none": {}}
    for seed in (0, 1):
        _fake_job(sweep, f"cond=a,seed={seed}", ["cond=a"], seed, [5.0 + seed, 9.0], [0.3, 0.2], evals=combos)
        _fake_job(sweep, f"cond=b,seed={seed}", ["cond=b"], seed, [4.0, 7.0 + seed], [0.1, 0.5], evals=combos)
    (sweep / "cond=a,seed=0" / "checkpoints").mkdir()
    (sweep / "cond=a,seed=0" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    archive = tmp_path / "results" / "jobs"
    archive_jobs([sweep], archive)
    assert sorted(p.name for p in (archive / "cond=a,seed=0").iterdir()) == [
        "job.json",
        "metrics.csv",
        "metrics.json",
        "metrics_thresholding=none.json",
    ]  # no checkpoints, no eval folders
    strip = lambda records: sorted(  # noqa: E731
        (r.label, r.seed, r.train_seconds, r.loss_curve, json.dumps(r.results)) for r in records
    )
    assert strip(from_sweep_dirs([archive])) == strip(from_sweep_dirs([sweep]))
    assert markdown_table(from_sweep_dirs([archive])) == markdown_table(from_sweep_dirs([sweep]))
    archive_jobs([archive], archive)  # archiving an archive in place changes nothing
    assert strip(from_sweep_dirs([archive])) == strip(from_sweep_dirs([sweep]))
    other = tmp_path / "other"
    _fake_job(other, "cond=a,seed=0", ["cond=a"], 0, [1.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="cond=a,seed=0 come from several folders"):
        archive_jobs([sweep, other], tmp_path / "both")


class _FakeRun(SimpleNamespace):
    def history(self, keys=None, samples=1000, pandas=False):
        return self.rows


def test_compare_runs_from_wandb_matches_the_folders():
    """The online path on a stand-in for wandb.Api (the real one needs a server): train runs and their eval runs."""
    runs = []
    for cond in ("a", "b"):
        for seed in (0, 1):
            name = f"cond/cond={cond},seed={seed}"
            runs.append(
                _FakeRun(
                    name=name,
                    job_type="train",
                    tags=[f"cond={cond}", "unet=tiny"],
                    state="finished",
                    config={"config": {"seed": seed}},
                    summary={"_runtime": 12.0, "train/loss": 0.5},
                    rows=[{"trainer/global_step": 1, "train/loss": 0.9}],
                )
            )
            fid = 10.0 + seed if cond == "a" else 20.0
            runs.append(
                _FakeRun(
                    name=f"{name}/eval/default",
                    job_type="eval",
                    tags=[],
                    state="finished",
                    config={"config": {}},
                    summary={},
                    rows=[{"eval/guidance": 1.0, "eval/fid": fid, "eval/judge/accuracy": 0.5}],
                )
            )
    api = SimpleNamespace(runs=lambda path, filters: [r for r in runs if filters == {"group": "cond"}])
    records = from_wandb("me/imagen-lab", "cond", api=api)
    assert sorted(r.label for r in records) == ["cond=a", "cond=a", "cond=b", "cond=b"]
    assert curve([r for r in records if r.label == "cond=a"], "fid") == {1.0: (10.5, 10.0, 11.0)}
    with pytest.raises(ValueError, match="no W&B runs"):
        from_wandb("me/imagen-lab", "other", api=SimpleNamespace(runs=lambda path, filters: []))


# ------------------------------------------------------------------------------------- experiments and launchers
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if not p.stem.startswith("_"))
ABLATIONS = [e for e in EXPERIMENTS if not e.startswith(("sr", "composition"))]  # sr*: single stages
RECIPE_CHECKS = [e for e in EXPERIMENTS if e.startswith("composition")]  # the `_tiny` recipe's own checks (issue 14)


def sweep_params(name: str) -> dict[str, list[str]]:
    cfg = compose_cfg([f"experiment={name}"], return_hydra_config=True)
    return {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}


@pytest.mark.slow
def test_every_paper_ablation_has_a_paper_and_a_tiny_experiment():
    paper = {e for e in ABLATIONS if not e.endswith("_tiny")}
    assert paper == {"conditioning", "encoder_scaling", "unet_scaling", "thresholding", "noise_aug", "efficient_unet"}
    assert {e.removesuffix("_tiny") for e in ABLATIONS if e.endswith("_tiny")} == paper - {"encoder_scaling"} | {
        "encoder"
    }
    for name in ABLATIONS:
        text = (ROOT / "experiments" / f"{name}.yaml").read_text()
        assert f"experiment={name}" in text and ("Fig." in text or "App." in text), name  # the figure and the command
        assert compose_cfg([f"experiment={name}"]).ablation == name
    assert sweep_params("encoder_scaling")["encoder"] == [
        "bert_base",
        "bert_large",
        "t5_small",
        "t5_base",
        "t5_large",
        "t5_xl",
        "t5_xxl",
        "clip_l14",
    ]
    assert sweep_params("conditioning_tiny") == {"cond": ["mean_pool", "attn_pool", "cross_attn_separate"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", [e for e in ABLATIONS if e.endswith("_tiny")] + RECIPE_CHECKS)
def test_every_tiny_experiment_arm_trains_a_step(name, tmp_path):
    grid = sweep_params(name)
    arms = [[]] + [[f"{k}={v}"] for k, vs in grid.items() for v in vs]
    base = compose_cfg([f"experiment={name}"])
    for arm in arms:
        small = [f"experiment={name}", "image_size=32", *arm]
        if base.stage.get("low_res_size"):
            small += ["stage.low_res_size=16"]
        cfg = compose_cfg(small)
        module = build_module(cfg)
        loss = module.compute_loss(
            {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a red circle", "two blue squares"]}
        )
        loss.backward()
        assert torch.isfinite(loss), (name, arm)
        if cfg.final_eval.enabled and not cfg.stage.get("low_res_size"):
            assert plan(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", [e for e in ABLATIONS if not e.endswith("_tiny")])
def test_every_paper_experiment_arm_composes_and_builds(name):
    """Paper scale: every arm's config and U-Net (on the meta device: no memory, no compute)."""
    from imagen.build import build_stage, build_unet

    grid = sweep_params(name)
    for arm in [[]] + [[f"{k}={v}"] for k, vs in grid.items() for v in vs]:
        cfg = compose_cfg([f"experiment={name}", *arm])
        assert cfg.trainer.accelerator == "gpu" and cfg.final_eval.enabled
        if not arm or not arm[0].startswith("encoder="):
            with torch.device("meta"):
                unet = build_unet(cfg, text_dim=4096, stage=build_stage(cfg))
            assert sum(p.numel() for p in unet.parameters()) > 2e8


def test_slurm_launcher_lets_slurm_create_the_processes():
    cfg = compose_cfg(
        ["hydra/launcher=slurm", "trainer=slurm", "trainer.devices=4", "trainer.num_nodes=2"], return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2  # one task per GPU
    assert launcher.max_num_timeout > 0  # submitit owns the requeue ...
    assert cfg.trainer.strategy == "ddp"
    from hydra.utils import instantiate

    plugins = instantiate(cfg.trainer.plugins)
    assert len(plugins) == 1 and plugins[0].auto_requeue is False  # ... and Lightning does not requeue as well


@pytest.mark.slow
def test_random_weights_minilm_is_the_same_network_untrained():
    """The encoder_tiny control: same architecture and tokenizer, seeded random weights, a distinct cache identity."""
    from imagen.build import build_text_encoder

    pretrained, rand_a, rand_b = (
        build_text_encoder(compose_cfg([f"encoder={o}"])) for o in ("minilm", "minilm_random", "minilm_random")
    )
    captions = ["a red circle", "two blue squares left of a green triangle"]
    (e_p, m_p), (e_a, m_a), (e_b, _) = pretrained(captions), rand_a(captions), rand_b(captions)
    assert e_p.shape == e_a.shape and torch.equal(m_p, m_a)  # same tokenizer, same width
    assert torch.equal(e_a, e_b)  # seeded: every load is the same network
    assert (e_a - e_p).abs().mean() > 0.1
    assert rand_a.identity["random_init_seed"] == 0 and "random_init_seed" not in pretrained.identity
    assert sum(p.numel() for p in rand_a.model.parameters()) == sum(p.numel() for p in pretrained.model.parameters())


@pytest.mark.slow
def test_submitit_launcher_runs_the_same_jobs(tmp_path):
    """The SLURM path's launcher plugin with its local executor (no cluster here): the job function is pickled by
    submitit and run in its own process; same folders, same records."""
    args = ["hydra/launcher=submitit_local", "seed=0,1", "ablation=sub", "logger=csv", *cli_tiny(tmp_path, steps=2)]
    res = train_multirun(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    sweep = tmp_path / "multirun" / "sub"
    for job in ("seed=0", "seed=1"):
        assert json.loads((sweep / job / "job.json").read_text())["status"] == "completed"
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    assert (sweep / ".submitit").is_dir()
