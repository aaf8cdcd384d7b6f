"""Bad data is counted (per reason and per shard, with the samples read), reported (log line, logger metrics, the job
record's dict, summed over DDP ranks) and bounded (data.max_bad_fraction); the webdataset worker default fits the
machine."""

from __future__ import annotations

import csv
import logging
import pathlib
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger
from test_data import png_bytes, write_tar

from imagen.data import datamodule as dm_mod
from imagen.data.datamodule import ShapesDataModule, WebDataModule, available_cpus, default_num_workers
from imagen.data.pipeline import SkipCounter, collate_samples, make_pipeline
from imagen.lightning.data_report import REPORT_KEY, DataReport, data_report, format_report

from conftest import compose_cfg

REASONS = {"bad_image": 2, "missing_image": 1, "missing_caption": 1, "bad_caption": 1, "shard_error": 0}


def png(color=(200, 10, 10)) -> bytes:
    return png_bytes((24, 20), color)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, str]:
    """(clean shard: 8 good samples, bad shard: 6 good + 5 skipped + 1 kept with a bad meta): 20 read, 5 skipped."""
    root = tmp_path_factory.mktemp("bad_data")
    good = write_tar(
        root / "good-000000.tar", [{"__key__": f"g{i:02d}", "png": png(), "txt": b"a red box"} for i in range(8)]
    )
    bad = [{"__key__": f"k{i:02d}", "png": png((10, 200, 10)), "txt": b"a green box"} for i in range(6)]
    bad += [
        {"__key__": "b1", "png": b"\x89PNG\r\n\x1a\nnot a png", "txt": b"bad image"},
        {"__key__": "b2", "jpg": b"garbage", "txt": b"bad jpeg"},
        {"__key__": "b3", "png": png()},  # missing caption
        {"__key__": "b4", "txt": b"missing image"},
        {"__key__": "b5", "png": png(), "txt": b"\xff\xfe not utf-8 \xc3\x28"},
        {"__key__": "m1", "png": png(), "txt": b"kept, meta dropped", "json": b"{not json"},
    ]
    return good, write_tar(root / "bad-000001.tar", bad)


def expected_report(bad: str, ranks: int = 1) -> dict:
    return {
        "seen": 20 * ranks,
        "skipped": 5 * ranks,
        "skipped_fraction": 0.25,
        "by_reason": {r: n * ranks for r, n in REASONS.items()},
        "bad_meta": 1 * ranks,
        "worst_shards": [{"url": bad, "skipped": 5 * ranks}],
    }


# ------------------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("workers,context", [(0, None), (2, "fork"), pytest.param(1, "spawn", marks=pytest.mark.slow)])
def test_counts_by_reason_and_shard(shards, workers, context):
    pipe = make_pipeline(list(shards), 16, training=False)
    loader = torch.utils.data.DataLoader(
        pipe, batch_size=4, num_workers=workers, collate_fn=collate_samples, multiprocessing_context=context
    )
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 15 and "m1" in keys  # a bad meta keeps its sample
    counter = pipe.skipped
    assert counter.seen == 20 and counter.skipped == counter.total == 5 and counter["bad_meta"] == 1
    assert {r: counter[r] for r in SkipCounter.REASONS} == REASONS
    assert counter.shard_skips() == {shards[1]: 5}
    assert counter.report() == expected_report(shards[1])


def test_shard_errors_are_counted_against_their_shard(tmp_path, shards):
    data = pathlib.Path(shards[0]).read_bytes()
    truncated = tmp_path / "truncated-000002.tar"
    truncated.write_bytes(data[:2600])  # inside a member's data: webdataset's error names no URL
    vanished = tmp_path / "vanished-000003.tar"
    vanished.write_bytes(data)
    pipe = make_pipeline([shards[0], str(truncated), str(vanished)], 16, training=False)
    vanished.unlink()  # unreadable when read
    out = list(pipe)
    counter = pipe.skipped
    assert set(counter.shard_skips()) == {str(truncated), str(vanished)} and counter.shard_skips()[str(vanished)] == 1
    assert counter["shard_error"] >= 2 and counter.seen == len(out) + counter.skipped


def test_counter_copies_are_independent_and_keep_the_counts(shards):
    import copy

    pipe = make_pipeline(list(shards), 16, training=False)
    list(pipe)
    twin = copy.deepcopy(pipe.skipped)
    twin.add("bad_image", "x", shards[0])
    assert pipe.skipped.report() == expected_report(shards[1])
    assert twin.seen == 21 and twin.shard_skips() == {shards[0]: 1, shards[1]: 5}


# ------------------------------------------------------------------------------------------------ reporting


def test_report_dict_and_log_line(shards):
    pipe = make_pipeline(list(shards), 16, training=False)
    list(pipe)
    report = pipe.skipped.report()
    assert report == expected_report(shards[1])
    assert format_report(report) == (
        "data: 5 of 20 samples skipped (25.0 %): bad_image 2, missing_image 1, missing_caption 1, bad_caption 1; "
        f"worst shard {shards[1]} (5); 1 kept without their unreadable .json meta"
    )
    clean = SkipCounter.summary([1204, 2, 0, 1, 0, 0, 0, 0, 1, 2], ["/x/00001.tar", "/x/00002.tar", "/x/00003.tar"])
    assert format_report(clean) == (
        "data: 3 of 1,204 samples skipped (0.2 %): bad_image 2, missing_caption 1; worst shard /x/00003.tar (2)"
    )
    assert format_report(SkipCounter.summary([7] + [0] * 6, [])) == "data: 0 of 7 samples skipped (0.0 %)"


def fake_trainer(pipe, tmp_path, step=1, ranks=1, max_bad_fraction=1.0) -> SimpleNamespace:
    """What DataReport reads of a Trainer; `ranks` > 1 stands for that many ranks with the same counts."""
    return SimpleNamespace(
        datamodule=SimpleNamespace(train_pipeline=pipe, max_bad_fraction=max_bad_fraction),
        global_step=step,
        world_size=ranks,
        strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op: t * ranks),
        loggers=[CSVLogger(tmp_path, name="", version="")],
        is_global_zero=True,
        callback_metrics={},
        log_every_n_steps=5,
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
    )


def test_callback_logs_metrics_line_and_job_report(shards, tmp_path, caplog):
    pipe = make_pipeline(list(shards), 16, training=False)
    list(pipe)
    callback = DataReport()
    trainer = fake_trainer(pipe, tmp_path, step=4)
    callback.on_train_batch_end(trainer, None, None, None, 0)  # not a logging step (every 5)
    assert not (tmp_path / "metrics.csv").exists()
    trainer.global_step = 5
    callback.on_train_batch_end(trainer, None, None, None, 0)
    with caplog.at_level(logging.INFO, logger="imagen.lightning.data_report"):
        callback.on_validation_end(trainer, None)
        trainer.global_step = 7
        callback.on_train_end(trainer, None)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [5, 7]
    assert float(rows[-1]["data/skipped_fraction"]) == 0.25 and float(rows[-1]["data/skipped"]) == 5
    assert float(rows[-1]["data/skipped/bad_image"]) == 2 and float(rows[-1]["data/seen"]) == 20
    assert float(rows[-1]["data/bad_meta"]) == 1 and float(rows[-1]["data/worst_shard_skipped"]) == 5
    lines = [r.getMessage() for r in caplog.records if r.name == "imagen.lightning.data_report"]
    assert len(lines) == 2 and all(line.startswith("data: 5 of 20 samples skipped (25.0 %)") for line in lines)
    report = data_report(trainer)
    assert report == {**expected_report(shards[1]), "ranks": 1, "max_bad_fraction": 1.0}
    assert trainer.callback_metrics[REPORT_KEY] == report


def test_ddp_ranks_are_summed(shards, tmp_path):
    pipe = make_pipeline(list(shards), 16, training=False)
    list(pipe)
    trainer = fake_trainer(pipe, tmp_path, ranks=2)
    DataReport().on_train_end(trainer, None)
    report = data_report(trainer)
    assert report == {**expected_report(shards[1], ranks=2), "ranks": 2, "max_bad_fraction": 1.0}
    assert format_report(report).startswith("data (2 ranks): 10 of 40 samples skipped (25.0 %)")


# ------------------------------------------------------------------------------------------------ the limit


def test_too_much_bad_data_stops_with_one_line(shards, tmp_path):
    pipe = make_pipeline(list(shards), 16, training=False)
    list(pipe)
    trainer = fake_trainer(pipe, tmp_path, step=5, max_bad_fraction=0.1)
    DataReport(min_samples=21).on_train_batch_end(trainer, None, None, None, 0)  # 20 read: too early to judge
    with pytest.raises(ValueError) as err:
        DataReport(min_samples=20).on_train_batch_end(trainer, None, None, None, 0)
    message = str(err.value)
    assert "\n" not in message and shards[1] in message
    assert "more than data.max_bad_fraction=0.1" in message and "data.max_bad_fraction=0.3" in message
    trainer.datamodule.max_bad_fraction = 0.25  # at the limit: goes on
    DataReport(min_samples=20).on_train_batch_end(trainer, None, None, None, 0)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, _):
        return self.lin(batch["image"].mean((2, 3))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(shards, tmp_path, max_bad_fraction: float, **trainer_kwargs) -> pl.Trainer:
    dm = WebDataModule(
        urls=list(shards),
        resolution=16,
        batch_size=4,
        num_workers=0,
        shuffle_buffer=4,
        eval_prompts=["a cat"],
        max_bad_fraction=max_bad_fraction,
    )
    trainer = pl.Trainer(
        max_steps=6,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        callbacks=[DataReport(min_samples=12)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(Tiny(), dm)
    return trainer


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_fit_reports_and_stops(shards, tmp_path):
    trainer = fit(shards, tmp_path / "ok", max_bad_fraction=1.0)
    report = data_report(trainer)
    assert report["seen"] >= 24 and report["skipped_fraction"] == pytest.approx(0.25, abs=0.1)
    assert report["worst_shards"][0]["url"] == shards[1] and report["ranks"] == 1
    rows = list(csv.DictReader(open(tmp_path / "ok" / "metrics.csv")))
    assert any(r.get("data/skipped_fraction") for r in rows)
    with pytest.raises(ValueError, match="data.max_bad_fraction=0.1"):
        fit(shards, tmp_path / "stop", max_bad_fraction=0.1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ddp_spawn_report_reaches_the_launching_process(shards, tmp_path):
    trainer = fit(shards, tmp_path, max_bad_fraction=1.0, strategy="ddp_spawn", devices=2)
    report = data_report(trainer)
    assert report["ranks"] == 2 and report["seen"] >= 2 * 24 and report["worst_shards"][0]["url"] == shards[1]


# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.1", None])
def test_bad_max_bad_fraction_is_refused(shards, tmp_path, value):
    match = r"data.max_bad_fraction must be a fraction in \[0, 1\]"
    with pytest.raises(ValueError, match=match):
        WebDataModule(urls=list(shards), max_bad_fraction=value)
    with pytest.raises(ValueError, match=match):
        ShapesDataModule(root=str(tmp_path), max_bad_fraction=value)
    assert WebDataModule(urls=list(shards), max_bad_fraction=0).max_bad_fraction == 0.0


def test_webdataset_default_workers_fit_the_machine(shards, monkeypatch):
    cfg = compose_cfg(["data=webdataset", f"data.urls={shards[0]}"])
    assert cfg.data.num_workers is None and cfg.data.max_bad_fraction == 0.1
    dm = instantiate(cfg.data)
    assert dm.num_workers == default_num_workers() and dm.num_workers <= min(4, max(available_cpus() - 1, 0))
    assert WebDataModule(urls=list(shards), num_workers=3).num_workers == 3  # explicit counts are kept
    for cpus, workers in [(1, 0), (2, 1), (3, 2), (64, 4)]:
        monkeypatch.setattr(dm_mod.os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)), raising=False)
        assert WebDataModule(urls=list(shards)).num_workers == workers
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        WebDataModule(urls=list(shards), num_workers=-1)
