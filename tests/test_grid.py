"""The sample grid: wrapped prompts, a grid at the end of every run (with the EMA weights), webdataset runs'
prompts taken from their own shards, and the picklable EMA callback."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import EMAWeightAveraging, WeightAveraging
from test_train import compose_cfg, tiny_overrides
from torch.utils.data import DataLoader

from imagen import images
from imagen.data.datamodule import WebDataModule
from imagen.lightning import grid
from imagen.lightning.callbacks import EMA, Checkpoints, ExponentialAverage, SampleGrid
from imagen.run import run

LONG = "a red circle and a yellow square above a small green triangle next to a blue hexagon"


# ------------------------------------------------------------------------------------------ grid


def _ink_rows(canvas: Image.Image, width: int) -> np.ndarray:
    """The y coordinates of rows with dark pixels in the label column."""
    arr = np.asarray(canvas.convert("L"))[:, :width]
    return np.nonzero((arr < 128).any(axis=1))[0]


def test_grid_uses_the_shared_to_uint8():
    assert grid.to_uint8 is images.to_uint8
    assert "def to_uint8" not in Path(grid.__file__).read_text()


def test_long_prompts_wrap_inside_the_label_column():
    font = grid._font()
    lines = grid.wrap_label(LONG, 120, font)
    assert len(lines) > 1 and " ".join(lines) == LONG  # every word, none cut
    assert all(font.getlength(line) <= 120 for line in lines)

    imgs = -torch.ones(4, 3, 8, 8)  # 2 rows of 2 black 8px tiles, shown at 32px
    canvas = grid.caption_grid(imgs, [LONG, LONG, "short", "short"], per_row=2, scale=4, label_width=120)
    wrapped = grid.wrap_label(LONG, 120 - 2 * grid.LABEL_MARGIN, font)
    long_row = len(wrapped) * grid._line_height(font) + grid.LINE_SPACING
    assert long_row > 32  # the long caption's row grows, the short one's does not
    assert (canvas.width, canvas.height) == (120 + 2 * (32 + 2), long_row + 2 + 32 + 2)
    ink = _ink_rows(canvas, 120)
    assert ink.min() < long_row and ink.max() - ink.min() > 2 * grid._line_height(font)  # several lines
    assert any(long_row + 2 <= y < long_row + 2 + 32 for y in ink)  # the short caption, in its row
    assert np.asarray(canvas)[:, 120:].min() == 0  # the tiles are drawn


def test_a_word_wider_than_the_column_widens_it():
    word = "supercalifragilisticexpialidocious"
    canvas = grid.caption_grid(torch.zeros(1, 3, 8, 8), [f"a {word} shape"], per_row=1, label_width=40)
    assert canvas.width - (16 + 2) >= grid._font().getlength(word)


# ------------------------------------------------------------------------------------------ the last step samples


class Toy(pl.LightningModule):
    """One weight; validation records it and returns a tiny image per prompt."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        return ((self.w - batch.mean() - self.global_step) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.w.item()))
        return {"images": torch.zeros(len(batch["caption"]), 3, 4, 4), "captions": list(batch["caption"])}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)

    guidance_weight, sampler, thresholding = 1.0, None, None


class RawWeights(pl.Callback):
    """Records the module's raw weight after every step (after the EMA update, before validation swaps it)."""

    def __init__(self):
        self.raw: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw.append(pl_module.w.item())


def _fit(
    tmp_path, max_steps: int, ema, interval: int = 2, at_end: bool = True, checkpoints: int | None = None
) -> tuple[Toy, RawWeights, pl.Trainer]:
    module, samples, raw = Toy(), SampleGrid(str(tmp_path / "samples"), per_row=1, at_end=at_end), RawWeights()
    val = DataLoader([{"caption": ["a prompt"]}], batch_size=None)
    saving = [Checkpoints(str(tmp_path / "checkpoints"), every_n_train_steps=checkpoints)] if checkpoints else []
    trainer = pl.Trainer(
        max_steps=max_steps,
        val_check_interval=interval,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[ema, samples, raw, *saving],
        logger=False,
        enable_checkpointing=bool(checkpoints),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(torch.arange(100.0), batch_size=1), val)
    return module, raw, trainer


@pytest.mark.parametrize("max_steps,steps", [(5, [2, 4, 5]), (4, [2, 4])])
def test_the_last_step_samples_once_with_the_ema_weights(tmp_path, max_steps, steps):
    module, raw, trainer = _fit(tmp_path, max_steps, EMA(decay=0.5, start_step=0))
    assert trainer.global_step == max_steps
    assert [s for s, _ in module.seen] == steps  # never twice at a step that validates anyway
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == [f"step_{s:06d}.png" for s in steps]
    # The last validation saw the average (copied into the module when training ends), not the raw weights.
    assert module.seen[-1][1] == pytest.approx(module.w.item())
    assert abs(module.seen[-1][1] - raw.raw[-1]) > 1e-3


@pytest.mark.parametrize("max_steps", [3, 4])
def test_the_final_checkpoint_holds_the_raw_weights_besides_the_average(tmp_path, max_steps):
    """The final step is saved also when max_steps is not a multiple of the interval (3 vs 2), with the raw weights
    as `current_model_state`: not the average that weight averaging copies into the module when training ends."""
    _, raw, _ = _fit(tmp_path, max_steps, EMA(decay=0.5, start_step=0), checkpoints=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == sorted({"last.ckpt", "step_0000002.ckpt", f"step_{max_steps:07d}.ckpt"})
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == max_steps
    assert state["current_model_state"]["w"].item() == pytest.approx(raw.raw[-1])
    assert abs(state["state_dict"]["w"].item() - raw.raw[-1]) > 1e-3  # the average, a different weight


def test_sample_grid_at_end_can_be_turned_off(tmp_path):
    module, _, _ = _fit(tmp_path, 5, EMA(decay=0.5), at_end=False)
    assert [s for s, _ in module.seen] == [2, 4]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["shapes", "webdataset"])
def test_tiny_run_ends_with_a_grid(tmp_path, data, request):
    """`max_steps` not a multiple of `val_check_interval` (3 vs 2): the run still ends with step_000003.png; a
    webdataset run without `data.eval_prompts` has a grid too (of its shards' captions)."""
    if data == "shapes":
        overrides = tiny_overrides(tmp_path, steps=3)
    else:
        root = request.getfixturevalue("web_shards")[0]
        urls = str(root / "train" / "shapes-{000000..000001}.tar")
        overrides = ["data=webdataset", f"data.urls='{urls}'"] + tiny_overrides(tmp_path, steps=3, shapes=False)
    cfg = compose_cfg(overrides)
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval != 0
    assert run(cfg) is not None
    pngs = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png"))
    assert pngs == ["step_000002.png", "step_000003.png"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "current_model_state" in state  # the EMA weights are the checkpoint's state_dict


# ------------------------------------------------------------------------------------------ EMA


def test_ema_is_public_weight_averaging_and_pickles():
    ema = EMA(decay=0.9, start_step=3)
    assert isinstance(ema, WeightAveraging) and not isinstance(ema, EMAWeightAveraging)
    avg = pickle.loads(pickle.dumps(ExponentialAverage(0.9)))
    assert avg(torch.tensor([1.0]), torch.tensor([2.0]), 3).item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    again = pickle.loads(pickle.dumps(ema))  # ddp_spawn pickles the callbacks
    assert (again.decay, again.start_step) == (0.9, 3)
    assert [ema.should_update(step_idx=i) for i in range(5)] == [False, False, False, True, True]
    assert not ema.should_update(epoch_idx=10)
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)


@pytest.mark.parametrize("start_step", [0, 2])
def test_ema_matches_lightning_ema_weight_averaging(tmp_path, start_step):
    """Same average as EMAWeightAveraging(update_starting_at_step=start_step): it starts as a copy of the weights
    at start_step, then decays."""
    ours, _, _ = _fit(tmp_path / "a", 6, EMA(decay=0.7, start_step=start_step), interval=100)
    theirs, _, _ = _fit(
        tmp_path / "b", 6, EMAWeightAveraging(decay=0.7, update_starting_at_step=start_step), interval=100
    )
    assert ours.w.item() == pytest.approx(theirs.w.item(), rel=1e-6)
    plain, _, _ = _fit(tmp_path / "c", 6, EMA(decay=0.7, start_step=100), interval=100)  # never averaged...
    assert ours.w.item() != pytest.approx(plain.w.item())  # ...so it differs


# ------------------------------------------------------------------------------------------ webdataset prompts


def _tar_captions(path: str) -> list[str]:
    """The .txt members of a shard, in order (read with tarfile, independently of the pipeline)."""
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read().decode().strip() for m in tar.getmembers() if m.name.endswith(".txt")]


def _first_distinct(captions: list[str], n: int) -> list[str]:
    return list(dict.fromkeys(captions))[:n]


@pytest.fixture(scope="module")
def web_shards(tmp_path_factory):
    from imagen.data.shapes import ShapesWorld
    from imagen.data.shards import write_shards

    root = tmp_path_factory.mktemp("web")
    world = ShapesWorld(resolution=16)
    train = write_shards(world, root / "train", n_samples=24, samples_per_shard=12, seed=1)
    val = write_shards(world, root / "val", n_samples=6, samples_per_shard=3, seed=2, split="val")
    return root, train, val


def test_webdataset_eval_prompts_come_from_the_shards(web_shards):
    root, train, val = web_shards
    pattern = str(root / "train" / "shapes-{000000..000001}.tar")
    dm = WebDataModule(urls=pattern, num_workers=0)
    assert dm.eval_prompts() == _first_distinct(_tar_captions(train[0]), 8)  # the first training shard only
    assert len(dm.eval_prompts()) == min(8, len(set(_tar_captions(train[0]))))

    with_val = WebDataModule(urls=pattern, val_urls=val, num_workers=0, n_eval_prompts=4)
    expected = _first_distinct(_tar_captions(val[0]) + _tar_captions(val[1]), 4)
    assert with_val.eval_prompts() == expected and with_val.eval_prompts() == expected  # deterministic
    assert WebDataModule(urls=pattern, eval_prompts=["a cat"]).eval_prompts() == ["a cat"]  # given ones win


class _Boom:
    """Unpickling it creates the directory `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_webdataset_eval_prompts_never_unpickle(tmp_path):
    marker = tmp_path / "unpickled"
    shard = tmp_path / "evil.tar"
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    members = {
        "k0.pyd": pickle.dumps(_Boom(marker)),
        "k0.pickle": pickle.dumps(_Boom(marker)),
        "k0.png": png.getvalue(),
        "k0.txt": b"  a red square  ",
        "k1.txt": b"no image",
        "k2.png": png.getvalue(),
        "k2.txt": b"a red square",
    }
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert WebDataModule(urls=str(shard), num_workers=0).eval_prompts() == ["a red square"]
    assert not marker.exists()
