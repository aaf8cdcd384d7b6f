"""Processes that share a folder take turns: one job per run folder at a time, one generator per shapes world."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from imagen.data.shapes import ShapesWorld
from imagen.data.shards import load_cached_shards
from imagen.lab.job import JobBusy, exclusive

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def hold_lock(run_dir) -> subprocess.Popen:
    code = f"from imagen.lab.job import exclusive\nwith exclusive({str(run_dir)!r}):\n    print('held', flush=True)\n"
    code += "    import time; time.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_job_folder_runs_one_process_at_a_time(tmp_path):
    proc = hold_lock(tmp_path / "job")
    try:
        with pytest.raises(JobBusy, match=r"job .*job is already running in another process .*\.job\.lock"):
            with exclusive(tmp_path / "job"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a killed job releases its folder
        proc.wait()
    with exclusive(tmp_path / "job"):
        pass


@pytest.mark.slow
def test_two_processes_asking_for_one_world_generate_it_once(tmp_path):
    start = time.time() + 6  # both past their imports, then at the same moment
    code = textwrap.dedent(
        f"""
        import logging, time
        logging.basicConfig(level=logging.INFO)
        from imagen.data.shapes import ShapesWorld
        from imagen.data.shards import ensure_shards
        time.sleep(max(0.0, {start} - time.time()))
        paths = ensure_shards(ShapesWorld(resolution=16), {str(tmp_path / "world")!r}, 96, 16, seed=1)
        print(len(paths))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["6", "6"]
    assert sum(e.count("generating 96 train shapes samples") for _, e in outs) == 1
    assert load_cached_shards(ShapesWorld(resolution=16), tmp_path / "world", 96, 16, seed=1, verify=True) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".world.lock", "world"]  # no temporary folder left


@pytest.mark.slow
def test_the_same_sweep_launched_twice_at_once_runs_each_job_once(tmp_path):
    from test_lab import cli_tiny

    args = [sys.executable, str(ROOT / "train.py"), "-m", "ablation=twice", "seed=0", *cli_tiny(tmp_path, steps=6)]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    assert sum("is already running in another process" in e for e in errs) == 1
    record = json.loads((tmp_path / "multirun" / "twice" / "seed=0" / "job.json").read_text())
    assert record["status"] == "completed" and record["attempts"] == 1 and record["global_step"] == 6
