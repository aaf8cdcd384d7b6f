"""Every option of every config group composes and builds; every (cond, prediction, schedule, sampler,
thresholding) combination trains a step and samples."""

from __future__ import annotations

import itertools

import pytest
import torch
from hydra.utils import instantiate

from imagen.build import build_module, build_text_encoder
from imagen.config import conf_dir

from conftest import compose_cfg

CONF = conf_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = [
    "encoder",
    "text",
    "cond",
    "unet",
    "schedule",
    "prediction",
    "loss_weight",
    "optim",
    "data",
    "sampler",
    "thresholding",
    "trainer",
    "logger",
    "stage",
    "noise_aug",
]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    node = cfg[group]
    assert "_target_" in node or "optimizer" in node, f"conf/{group}/{option}.yaml has no _target_"


@pytest.mark.parametrize("option", options("optim"))
def test_optimizers_step(option):
    cfg = compose_cfg([f"optim={option}"])
    lin = torch.nn.Linear(4, 4)
    opt = instantiate(cfg.optim.optimizer)(lin.parameters())
    before = lin.weight.detach().clone()
    lin(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, lin.weight)


@pytest.mark.parametrize(
    "option", [pytest.param(o, marks=pytest.mark.slow) if o == "wandb" else o for o in options("logger")]
)
def test_loggers(option, tmp_path):
    cfg = compose_cfg([f"logger={option}"])
    loggers = instantiate(cfg.logger, save_dir=str(tmp_path), tags=["cond=cross_attn"])
    names = sorted(type(lg).__name__ for lg in loggers)
    assert names == {"wandb": ["ResumingCSVLogger", "WandbLogger"], "csv": ["ResumingCSVLogger"], "none": []}[option]
    for lg in loggers:
        lg.log_metrics({"train/loss": 1.0}, step=0)
        lg.finalize("success")
    if option == "wandb":
        import wandb

        wandb.finish()
        assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B must run offline without an API key"


def test_trainer_options():
    cpu = compose_cfg(["trainer=cpu"]).trainer
    gpu = compose_cfg(["trainer=gpu"]).trainer
    assert (cpu.accelerator, cpu.precision) == ("cpu", "32-true")
    assert (gpu.accelerator, gpu.precision) == ("gpu", "bf16-mixed")
    trainer = instantiate(cpu, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.max_steps == 2200 and trainer.val_check_interval == 1100  # conf/trainer/cpu.yaml


def test_webdataset_needs_urls_and_names_missing_paths(tmp_path):
    cfg = compose_cfg(["data=webdataset", f"data.urls='{tmp_path}/missing-{{000..001}}.tar'"])
    dm = instantiate(cfg.data)
    with pytest.raises(FileNotFoundError, match="missing-000.tar"):
        dm.setup("fit")


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(compose_cfg([]))


COMBOS = list(itertools.product(options("cond"), options("prediction"), options("schedule")))


@pytest.mark.slow
@pytest.mark.parametrize("cond,prediction,schedule", COMBOS)
def test_every_combination_trains_and_samples(cond, prediction, schedule, encoder):
    cfg = compose_cfg(
        [
            f"cond={cond}",
            f"prediction={prediction}",
            f"schedule={schedule}",
            "image_size=16",
            "unet.channel_mult=[1,2]",
            "unet.attn_resolutions=[8]",
            "sampler.steps=2",
        ]
    )
    module = build_module(cfg, text_encoder=encoder)
    opt = instantiate(cfg.optim.optimizer)(module.unet.parameters())
    loss = module.compute_loss(
        {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a red circle", "two blue squares"]}
    )
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for sampler, thresholding in itertools.product(options("sampler"), options("thresholding")):
        s_cfg = compose_cfg([f"sampler={sampler}", f"thresholding={thresholding}", "sampler.steps=2"])
        x = module.sample(
            ["a red circle"],
            guidance_weight=2.0,
            sampler=instantiate(s_cfg.sampler),
            thresholding=instantiate(s_cfg.thresholding),
            seed=0,
        )
        assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()


def test_lr_schedule_warms_up_then_decays_to_the_final_fraction():
    cfg = compose_cfg(
        ["trainer.max_steps=300", "optim.lr_schedule.warmup_steps=100", "optim.lr_schedule.final_lr_fraction=0.1"]
    )
    factor = instantiate(cfg.optim.lr_schedule)
    assert factor(0) == pytest.approx(0.01) and factor(99) == pytest.approx(1.0)  # linear warm-up (§4.1)
    assert factor(200) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine: cos(pi / 2) = 0
    assert factor(300) == pytest.approx(0.1) and factor(10_000) == pytest.approx(0.1)


def test_text_source_options_need_what_they_say():
    built = []
    online, cached = (instantiate(compose_cfg([f"text={o}"]).text) for o in ("online", "cached"))
    online.sampling_encoder(lambda: built.append("encoder"), lambda: built.append("cache"), lambda: [])
    assert built == ["encoder"] and online.training_cache(lambda: built.append("cache")) is None
    assert built == ["encoder"]  # the online source never opens a cache


def test_loss_weight_reaches_the_loss():
    from imagen.build import build_module
    from imagen.diffusion.loss import MinSNRWeight

    cfg = compose_cfg(["loss_weight=min_snr", "loss_weight.gamma=2", "image_size=16", "unet.attn_resolutions=[8]"])
    weight = build_module(cfg).loss_fn.weight
    assert isinstance(weight, MinSNRWeight) and weight.gamma == 2.0
