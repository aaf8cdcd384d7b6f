"""A real scheduler: sweeps through `hydra/launcher=slurm trainer=slurm` on a one-node SLURM cluster on this machine
(scripts/slurm_local.sh): a 2-job array whose jobs are 2-rank DDP runs on CPU (SLURM starts the ranks), a job
requeued mid-run (by `scontrol requeue`, or by submitit on SLURM's time-limit signal) that resumes to the very weights
of an uninterrupted run, and a re-run that skips completed jobs.
Skipped where SLURM is not installed or its cluster does not answer."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, tiny_overrides

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
LOCAL_CONF = Path(os.environ.get("IMAGEN_SLURM_DIR", "/tmp/imagen-slurm")) / "etc" / "slurm.conf"
STEPS = 10
SLURM = [  # the command: SLURM creates the 2 DDP ranks of each job (one CPU each), Lightning none
    "hydra/launcher=slurm",
    "trainer=slurm",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "ablation=slurm",
]


def slurm_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    if "SLURM_CONF" not in env and not Path("/etc/slurm/slurm.conf").exists() and LOCAL_CONF.is_file():
        env["SLURM_CONF"] = str(LOCAL_CONF)  # slurm_local.sh's cluster when /etc/slurm holds another config
    return env


def slurm(*args: str, check: bool = True) -> str:
    res = subprocess.run(list(args), env=slurm_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 or not check, f"{' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


def debug_cpus() -> int:
    """CPUs of the `debug` partition's idle or busy nodes; 0 when the cluster does not answer."""
    try:
        out = slurm("sinfo", "-h", "-p", "debug", "-o", "%C", check=False)  # allocated/idle/other/total
    except (OSError, subprocess.TimeoutExpired):
        return 0
    fields = out.split("/")
    return int(fields[0]) + int(fields[1]) if len(fields) == 4 else 0


@pytest.fixture(scope="session")
def cluster():
    """The local cluster, started here (and stopped after) when sbatch is installed but nothing answers."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not installed: bash scripts/slurm_local.sh install && bash scripts/slurm_local.sh start")
    started = False
    if debug_cpus() == 0 and os.geteuid() == 0:
        started = subprocess.run(["bash", str(SCRIPT), "start"], timeout=180).returncode == 0
    cpus = debug_cpus()
    if cpus == 0:
        pytest.skip("no SLURM partition `debug` answers sinfo: bash scripts/slurm_local.sh start")
    if cpus < 2:
        pytest.skip(f"the `debug` partition has {cpus} CPU: a 2-rank job needs 2")
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], timeout=60)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One shapes-world data folder for every sweep here: the same shards, so the same training stream."""
    return tmp_path_factory.mktemp("slurm_data")


def sweep_cmd(data_root: Path, conds: str) -> list[str]:
    tiny = [o for o in tiny_overrides(data_root, steps=STEPS) if not o.startswith("run_dir=")]
    return [sys.executable, str(ROOT / "train.py"), "-m", f"cond={conds}", *SLURM, *tiny]


def run_sweep(cwd: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=cwd, env=slurm_env(), capture_output=True, text=True, timeout=900)


def record(job_dir: Path) -> dict:
    return json.loads((job_dir / "job.json").read_text())


def last_state(job_dir: Path) -> dict:
    return torch.load(job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def train_steps(job_dir: Path) -> list[int]:
    with open(job_dir / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def array_tasks(sweep_dir: Path) -> list[Path]:
    """submitit's folders of the SLURM jobs of a sweep, `<array id>_<task>` (`<id>` for a 1-job sweep), in order."""
    tasks = [p for p in (sweep_dir / ".submitit").iterdir() if (p / f"{p.name}_submitted.pkl").is_file()]
    return sorted(tasks, key=lambda p: [int(x) for x in p.name.split("_")])


@pytest.fixture(scope="module")
def sweep(cluster, data_root, tmp_path_factory) -> tuple[Path, list[str]]:
    cwd = tmp_path_factory.mktemp("slurm_sweep")
    cmd = sweep_cmd(data_root, "mean_pool,cross_attn")
    start = time.monotonic()
    res = run_sweep(cwd, cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"slurm sweep of 2 jobs: {time.monotonic() - start:.0f} s")
    return cwd, cmd


def test_a_sweep_runs_as_a_slurm_array_of_ddp_jobs(sweep):
    cwd, _ = sweep
    sweep_dir = cwd / "multirun" / "slurm"
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == [
        "cond=cross_attn",
        "cond=mean_pool",
        "multirun.yaml",
    ]
    script = next((sweep_dir / ".submitit").glob(".submission_file_*.sh")).read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --ntasks-per-node=2" in script  # one array, 2 ranks a job
    tasks = array_tasks(sweep_dir)
    assert [p.name.split("_")[1] for p in tasks] == ["0", "1"]
    for task in tasks:  # SLURM started both ranks, and they formed one 2-process group
        for rank in (0, 1):
            assert f"global_rank={rank}(2)" in (task / f"{task.name}_{rank}_log.out").read_text()
            assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in (task / f"{task.name}_{rank}_log.err").read_text()
    for job in ("cond=mean_pool", "cond=cross_attn"):
        d = sweep_dir / job
        rec = record(d)
        assert rec["status"] == "completed" and rec["attempts"] == 1 and rec["global_step"] == STEPS
        assert rec["choices"]["trainer"] == "slurm" and rec["choices"]["cond"] == job.split("=")[1]
        assert [p.relative_to(d) for p in d.rglob("metrics.csv")] == [Path("metrics.csv")]  # rank 0 only
        steps = train_steps(d)
        assert len(steps) == len(set(steps)) == STEPS  # each step logged once
        assert last_state(d)["global_step"] == STEPS
        assert (d / "checkpoints" / f"step_{STEPS:07d}.ckpt").is_file()


def test_rerunning_the_sweep_skips_completed_jobs(sweep):
    cwd, cmd = sweep
    sweep_dir = cwd / "multirun" / "slurm"
    jobs = ("cond=mean_pool", "cond=cross_attn")
    before = {
        job: (record(sweep_dir / job), (sweep_dir / job / "checkpoints" / "last.ckpt").stat().st_mtime_ns)
        for job in jobs
    }
    old_tasks = array_tasks(sweep_dir)
    res = run_sweep(cwd, cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    new_tasks = [p for p in array_tasks(sweep_dir) if p not in old_tasks]
    assert len(new_tasks) == 2  # the re-run went through SLURM too ...
    for task in new_tasks:  # ... where each job found its record completed and trained nothing
        log = (task / f"{task.name}_0_log.out").read_text()
        assert "skipping" in log and "trained" not in log
    for job in jobs:
        rec, mtime = before[job]
        assert record(sweep_dir / job) == rec  # attempts, finished: unchanged
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime


def squeue(job_id: str) -> tuple[str, str] | None:
    """(state, reason) of a queued, running or completing job; None once it has left the queue."""
    out = slurm("squeue", "-h", "-j", job_id, "-o", "%t %r", check=False)
    return tuple(out.split(maxsplit=1)) if out else None


INTERRUPTIONS = {
    "requeue": ["scontrol", "requeue"],  # an operator's requeue: SIGTERM to every rank, then the job is queued again
    "preempt": ["scancel", "--signal=USR2"],  # what --signal=USR2@signal_delay_s sends: submitit requeues the job
}


@pytest.fixture(scope="module", params=sorted(INTERRUPTIONS))
def requeued(request, sweep, data_root, tmp_path_factory) -> SimpleNamespace:
    """The cond=mean_pool job of the sweep again, in its own folder, interrupted as soon as its first checkpoint is
    written: requeued by SLURM (`scontrol requeue`), or told by SLURM's warning signal that its time is up (USR2,
    submitit's handler requeues it); what the sweep command and the job record said when the command returned."""
    cwd = tmp_path_factory.mktemp(f"slurm_{request.param}")
    sweep_dir = cwd / "multirun" / "slurm"
    out, err = (cwd / "sweep.out").open("w"), (cwd / "sweep.err").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(sweep_cmd(data_root, "mean_pool"), cwd=cwd, env=slurm_env(), stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not list(sweep_dir.glob("*/checkpoints/last.ckpt")):
            assert proc.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
            time.sleep(0.05)
        job_dir = next(sweep_dir.glob("*/checkpoints/last.ckpt")).parent.parent
        job_id = array_tasks(sweep_dir)[0].name
        slurm(*INTERRUPTIONS[request.param], job_id)
        requeued_at = time.monotonic() - start
        returned = None  # (job status, seconds) when the sweep command returned
        while proc.poll() is None or squeue(job_id) is not None:
            assert time.monotonic() < deadline + 300, f"job {job_id} still queued: {squeue(job_id)}"
            if returned is None and proc.poll() is not None:
                returned = (record(job_dir)["status"], time.monotonic() - start)
            if squeue(job_id) == ("PD", "BeginTime"):  # SLURM holds a requeued job ~2 min: not in a test
                slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            time.sleep(0.5)
        if returned is None:
            returned = (record(job_dir)["status"], time.monotonic() - start)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close(), err.close()
    print(
        f"{request.param}: job {job_id} interrupted at {requeued_at:.0f} s; sweep command returned at "
        f"{returned[1]:.0f} s (job {returned[0]}); job done at {time.monotonic() - start:.0f} s"
    )
    return SimpleNamespace(
        job_dir=job_dir, job_id=job_id, how=request.param, returncode=proc.returncode, returned=returned, cwd=cwd
    )


def weights(job_dir: Path) -> dict[str, torch.Tensor]:
    state = last_state(job_dir)
    assert state["global_step"] == STEPS
    return {**{f"ema.{k}": v for k, v in state["state_dict"].items()}, **state["current_model_state"]}


def test_a_requeued_job_resumes_to_the_same_weights(sweep, requeued):
    straight = sweep[0] / "multirun" / "slurm" / "cond=mean_pool"
    d = requeued.job_dir
    rec = record(d)
    assert rec["status"] == "completed" and rec["attempts"] == 2 and rec["global_step"] == STEPS
    assert "resuming" in (d / "train.log").read_text()  # the second attempt started from the checkpoint
    task = array_tasks(d.parent)[0]
    rank0 = (task / f"{task.name}_0_log.err").read_text()
    assert f"JOB {requeued.job_id} ON" in rank0 and "DUE TO JOB REQUEUE" in rank0  # SLURM did requeue it
    if requeued.how == "preempt":  # and it was submitit's handler that asked for it
        assert "Calling checkpoint method" in (task / f"{task.name}_0_log.out").read_text()
    a, b = weights(straight), weights(d)
    assert a.keys() == b.keys()
    difference = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"largest weight difference after the requeue: {difference}")
    assert difference == 0.0  # bitwise, with the same 2 DDP ranks on CPU
    assert train_steps(d) == train_steps(straight)  # metrics.csv appended, each step once


def test_the_sweep_command_waits_for_its_requeued_job(requeued):
    """`train.py -m` returns when its jobs are done, not when one of them is requeued (its record says so too)."""
    assert requeued.returncode == 0
    status, _ = requeued.returned
    # not `failed` with the job queued again: run.py re-raises the SystemExit of SLURM's SIGTERM (Lightning's
    # SIGTERMException) and of submitit's exit after its requeue, so submitit writes no result for the first attempt
    assert status == "completed"
