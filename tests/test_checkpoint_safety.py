"""A checkpoint cannot run code: its stored config may name only the classes of imagen.safe_targets' allow-list, and
every shipped config passes it.

One tiny checkpoint per module (a built module's weights and configs, saved the way ImagenModule saves them: no
training); each attack edits its stored config and must be refused before anything is built or written.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imagen.build import build_module
from imagen.checkpoint import load_cascade, load_model
from imagen.safe_targets import check_stored_config, is_allowed

from conftest import CONF, ROOT, compose_cfg, tiny_overrides


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The dict a tiny run's checkpoint holds: weights, the resolved run config and the model config."""
    tmp = tmp_path_factory.mktemp("tiny")
    module = build_module(compose_cfg(tiny_overrides(tmp, steps=2)))
    return {
        "state_dict": module.state_dict(),
        "imagen_config": module.run_config,
        "imagen_model_config": module.model_config,
        "global_step": 0,
    }


def tampered(saved: dict, path: Path, edit) -> Path:
    """`saved` with `edit(config)` applied to a copy of its stored config, written to `path`."""
    config = copy.deepcopy(saved["imagen_config"])
    edit(config)
    torch.save({**saved, "imagen_config": config}, path)
    return path


def set_schedule(target: str, *args) -> Callable[[dict], None]:
    def edit(config):
        config["schedule"] = {"_target_": target, "_args_": list(args)}

    return edit


def test_untampered_checkpoint_loads(saved, tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save(saved, path)
    module, cfg, info = load_model(path, {"encoder.memo_size": 0}, device="cpu")
    assert cfg.image_size == 16 and info["global_step"] == 0
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved["state_dict"].items())


def test_os_system_target_is_refused(saved, tmp_path):
    pwned = tmp_path / "pwned"
    path = tampered(saved, tmp_path / "bad.ckpt", set_schedule("os.system", f"touch {pwned}"))
    with pytest.raises(ValueError, match=r"refusing to instantiate os\.system at schedule\._target_") as err:
        load_model(path, device="cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not pwned.exists()


@pytest.mark.parametrize("target", ["builtins.open", "shutil.copy"])
def test_file_writing_targets_are_refused(saved, tmp_path, target):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    args = [str(victim), "w"] if target == "builtins.open" else [str(tmp_path / "other"), str(victim)]
    (tmp_path / "other").write_text("overwritten")
    path = tampered(saved, tmp_path / "bad.ckpt", set_schedule(target, *args))
    with pytest.raises(ValueError, match=rf"refusing to instantiate {target} at schedule\._target_"):
        load_model(path, device="cpu")
    assert victim.read_text() == "precious"


def test_encoder_model_class_is_refused(saved, tmp_path):
    path = tampered(saved, tmp_path / "bad.ckpt", lambda c: c["encoder"].update(model_class="os.system"))
    with pytest.raises(ValueError, match=r"os\.system at encoder\.model_class"):
        load_model(path, device="cpu")


def test_nested_targets_in_lists_partials_and_args_are_refused(saved, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    bad = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}

    def in_partial_list(config):  # a partial optimizer whose betas hold a call
        config["optim"]["optimizer"]["betas"] = [bad, 0.999]

    def in_args(config):  # an allowed target whose positional argument is a call
        config["schedule"] = {"_target_": "imagen.diffusion.schedule.CosineSchedule", "_args_": [bad]}

    def in_plugins(config):  # a list of nodes under a node the sampler never builds
        config["trainer"]["plugins"] = [{"_target_": "shutil.rmtree", "_args_": [str(tmp_path)]}]

    def in_get_method(config):  # an allowed getter naming a disallowed function
        config["callbacks"]["throughput"]["batch_size_fn"]["path"] = "os.system"

    cases = [
        (in_partial_list, r"builtins\.open at optim\.optimizer\.betas\[0\]\._target_"),
        (in_args, r"builtins\.open at schedule\._args_\[0\]\._target_"),
        (in_plugins, r"shutil\.rmtree at trainer\.plugins\[0\]\._target_"),
        (in_get_method, r"os\.system at callbacks\.throughput\.batch_size_fn\.path"),
    ]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            load_model(tampered(saved, tmp_path / "bad.ckpt", edit), device="cpu")
    assert victim.read_text() == "precious"


def test_interpolations_and_lookalikes_are_refused(saved, tmp_path):
    def interpolation(config):
        config["encoder"]["path"] = "${pkg_model_path:antigravity}"  # a resolver that imports a module

    with pytest.raises(ValueError, match=r"interpolation '\$\{pkg_model_path:antigravity\}' at encoder\.path"):
        load_model(tampered(saved, tmp_path / "bad.ckpt", interpolation), device="cpu")
    src = "checkpoint X"
    for name in [
        "imagen.text.encoder.get_class",  # a re-export (hydra's), not defined in the allowed module
        "imagen.text.encoder.os.system",  # an attribute chain through an allowed module
        "imagen.lightning.grid.save_png",  # the project's own code, outside the allowed modules: writes any path
        "imagen.config.pkg_model_path",
        "imagen.text.encoder._hub_reachable",  # private
        "torch.load",
        "transformers.pipeline",
        "os.system ",
    ]:
        with pytest.raises(ValueError, match="refusing to instantiate"):
            check_stored_config({"a": {"_target_": name}}, src)
    with pytest.raises(ValueError, match=r"refusing to instantiate 3 at _target_"):
        check_stored_config({"_target_": 3}, src)
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="contains itself at self"):
        check_stored_config(loop, src)


def test_a_bad_stage_of_a_cascade_is_refused_before_any_stage_is_built(saved, tmp_path, monkeypatch):
    good = tmp_path / "good.ckpt"
    torch.save(saved, good)
    bad = tampered(saved, tmp_path / "bad.ckpt", set_schedule("os.system", "true"))
    built = []
    monkeypatch.setattr("imagen.checkpoint.build_module", lambda cfg: built.append(cfg))
    cfg = compose_cfg([f"ckpt=[{good},{bad}]", "prompt=x"], "sample")
    with pytest.raises(ValueError, match=r"bad\.ckpt: refusing to instantiate os\.system"):
        load_cascade(cfg)
    assert built == []


@pytest.mark.slow
def test_sample_script_refuses_a_tampered_checkpoint_in_one_line(saved, tmp_path):
    pwned = tmp_path / "pwned"
    path = tampered(saved, tmp_path / "bad.ckpt", set_schedule("os.system", f"touch {pwned}"))
    cmd = [sys.executable, str(ROOT / "scripts" / "sample.py"), f"ckpt={path}", "prompt=x", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "os.system at schedule._target_" in errors[0] and not pwned.exists()


# ------------------------------------------------------------------------- the allow-list is wide enough
TRAINING_GROUPS = sorted(  # the groups of conf/config.yaml: what a checkpoint stores (eval, features: evaluate.yaml's)
    p.name
    for p in Path(CONF).iterdir()
    if p.is_dir() and p.name not in ("hydra", "experiment", "sweep", "eval", "features")
)
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if not p.stem.startswith("_"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.slow
def test_every_shipped_option_and_experiment_passes_the_allow_list():
    """Every option of every training group (round k takes each group's k-th option, so each option is composed once
    next to others, in len(longest group) composes) and every experiment, stored as ImagenModule stores it."""
    rounds = [
        [f"{g}={options(g)[k]}" for g in TRAINING_GROUPS if k < len(options(g))]
        for k in range(max(len(options(g)) for g in TRAINING_GROUPS))
    ]
    rounds += [["optim/lr_schedule=" + o] for o in options("optim/lr_schedule")]
    rounds += [[f"experiment={name}"] for name in EXPERIMENTS]
    assert len(rounds) > 10 and "encoder=t5_xxl" in sum(rounds, [])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for overrides in rounds:
            stored = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
            check_stored_config(stored, f"the config of {overrides}")
    for name in ("imagen.lightning.callbacks.batch_size", "transformers.T5EncoderModel", "torch.optim.Adam"):
        assert is_allowed(name)
