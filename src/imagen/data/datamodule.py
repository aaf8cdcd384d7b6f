"""LightningDataModules: the synthetic shapes world and real webdataset (LAION / img2dataset) shards.

Both read through :func:`imagen.data.pipeline.make_pipeline`, expose ``resolution`` and ``eval_prompts()``
(the captions the sampling callback renders), and yield batches
``{"image": (B, 3, R, R) in [-1, 1], "caption": [str], "key": [str], "meta": [dict | None]}``; with a
``text_cache`` (set by :func:`imagen.build.build_datamodule` for ``text=cached``, Imagen §2.1) the
training batches also carry the precomputed ``text_emb`` (B, L, D) and ``text_mask`` (B, L).

The training loader is infinite (see :mod:`imagen.data.pipeline`): drive the Trainer with ``max_steps``
and, for validation, an integer ``val_check_interval`` with ``check_val_every_n_epoch=None``.

Bad data: ``train_pipeline.skipped`` counts the samples read and the skipped ones (by reason and shard); the
:class:`imagen.lightning.data_report.DataReport` callback reports them and stops training when more than
``max_bad_fraction`` of the samples read is bad.

Checkpoints hold where the training stream stands (Lightning saves a datamodule's ``state_dict``): per DDP rank, the
batches training consumed and each dataloader worker's next sample, so a resumed run reads exactly the batches the
interrupted run would have read next (the replay is described in :mod:`imagen.data.pipeline`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .pipeline import collate_samples, expand_urls, make_pipeline
from .shapes import ShapesWorld
from .shards import ensure_shards, load_cached_shards, split_dir

__all__ = [
    "DEFAULT_WEB_EVAL_PROMPTS",
    "ShapesDataModule",
    "WebDataModule",
    "available_cpus",
    "default_num_workers",
    "shard_captions",
]

log = logging.getLogger(__name__)

# Only when the shards yield no caption at all (see WebDataModule.eval_prompts).
DEFAULT_WEB_EVAL_PROMPTS: tuple[str, ...] = (
    "a red circle and a blue square",
    "a photo of a corgi sitting on a beach",
    "a bowl of fruit on a wooden table",
    "an oil painting of a lighthouse at sunset",
    "a green bicycle leaning against a brick wall",
    "three yellow balloons in a blue sky",
)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"data.{name} must be a fraction in [0, 1] (e.g. 0.1 for 10 %), got {value!r}")
    return float(value)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (containers, taskset, SLURM), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(cap: int = 4) -> int:
    """The dataloader workers of ``num_workers: null``: one CPU left to the training process, at most ``cap``
    (2 CPUs -> 1 worker, 1 CPU -> 0: decode in the training process). Per process: under DDP each rank starts this
    many, so set an explicit number when several ranks share a machine's CPUs."""
    return max(0, min(cap, available_cpus() - 1))


def _check_workers(value: Any) -> int:
    """``num_workers``: None -> :func:`default_num_workers`, else an integer >= 0."""
    return default_num_workers() if value is None else _check_int("num_workers", value, 0)


def shard_captions(urls: str | Sequence[str], n: int, resolution: int = 8) -> list[str]:
    """The first ``n`` distinct captions of the shards, in shard and member order (deterministic), read through
    the training pipeline's safe decoding (:func:`make_pipeline`: only image/txt/json members are read, nothing is
    unpickled; samples with a bad image or caption are skipped like in training). Every DDP rank and process reads
    the same captions: the shards are not split."""
    pipeline = make_pipeline(urls, resolution, training=False, node_splitter=None, worker_splitter=None)
    captions: list[str] = []
    samples = iter(pipeline)
    try:
        for sample in samples:
            caption = sample["caption"]  # utf-8, stripped: exactly what training reads
            if caption and caption not in captions:
                captions.append(caption)
                if len(captions) >= n:
                    break
    finally:
        close = getattr(samples, "close", None)
        if close is not None:  # stop reading the open shard now
            close()
    return captions


def prompt_loader(prompts: Sequence[str], repeats: int) -> DataLoader:
    """One batch of every prompt, each repeated: {"caption": [p1] * repeats + [p2] * repeats + ...}."""
    batch = {"caption": [p for p in prompts for _ in range(repeats)]}
    return DataLoader([batch], batch_size=None, collate_fn=_identity)


def _identity(batch: Any) -> Any:
    return batch


def _loader(dataset: Any, batch_size: int, num_workers: int, training: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        persistent_workers=num_workers > 0,
        drop_last=training,  # constant batch shapes for training; keep every val sample
    )


class _ShardDataModule(pl.LightningDataModule):
    """What both datamodules share: the infinite training loader over ``train_pipeline``, its position in the
    checkpoints, and the validation loader of eval prompts. Subclasses define ``setup``, ``train_urls`` and
    ``eval_prompts``."""

    def __init__(self) -> None:
        super().__init__()
        self._consumed: dict[str, Any] = {"batches": 0, "next": {}}  # this rank's training stream, as consumed
        self._resume: list[dict[str, Any]] | None = None  # every rank's, from the checkpoint being resumed

    def train_dataloader(self) -> DataLoader:
        if self.train_pipeline is None:
            self.setup("fit")
        self._resume_stream()
        return _loader(self.train_pipeline, self.batch_size, self.num_workers, training=True)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches carry ``stream`` (worker, ordinal of the last sample; pipeline.collate_samples): record
        it as consumed and drop it. Lightning calls this for the batch a step trains on, not for prefetched ones."""
        stream = batch.pop("stream", None) if isinstance(batch, dict) else None
        if stream is not None:
            worker, ordinal = stream
            self._consumed["next"][int(worker)] = int(ordinal) + 1
            self._consumed["batches"] += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """{"stream": one entry per rank}: {"workers", "batches", "next": {worker: ordinal}}. Lightning calls it on
        every rank when it saves a checkpoint (rank 0 writes), so the ranks' positions are gathered here."""
        consumed = self._consumed
        mine = {"workers": max(self.num_workers, 1), "batches": consumed["batches"], "next": dict(consumed["next"])}
        if dist.is_available() and dist.is_initialized():
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
            return {"stream": ranks}
        return {"stream": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("stream")

    def _resume_stream(self) -> None:
        """Position the training pipeline where the resumed checkpoint's stream stood (before any worker starts)."""
        ranks, self._resume = self._resume, None
        if not ranks:
            return
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        workers = max(self.num_workers, 1)
        if len(ranks) != world or ranks[rank]["workers"] != workers:
            log.warning(
                "the checkpoint's data stream was read by %d rank(s) x %d worker(s), this run has %d x %d: the data "
                "order restarts from its beginning (resume with the same devices and data.num_workers to continue it "
                "exactly)",
                len(ranks),
                ranks[0]["workers"],
                world,
                workers,
            )
            return
        mine = ranks[rank]
        self.train_pipeline.position.resume(mine["batches"], workers, mine["next"])
        self._consumed = {"batches": mine["batches"], "next": dict(mine["next"])}

    def val_dataloader(self) -> DataLoader:
        """The held-out eval prompts, each repeated ``eval_repeats`` times: the validation loop samples them
        (with the EMA weights) into the grid. The val shards (``val_pipeline``) are for evaluation scripts."""
        return prompt_loader(self.eval_prompts(), self.eval_repeats)


class ShapesDataModule(_ShardDataModule):
    """Shapes-world shards generated (and cached) under ``root``, read with the webdataset pipeline.

    Args:
        world: a :class:`ShapesWorld`, or a mapping / DictConfig of its kwargs (None -> defaults).
        root: cache directory; splits live in ``root/{train,val}-<fingerprint[:12]>``.
        n_train / n_val: number of generated training / validation samples (n_val may be 0).
        samples_per_shard: samples per tar shard.
        batch_size / num_workers: DataLoader settings (persistent workers when num_workers > 0); ``num_workers=None``:
            :func:`default_num_workers` (what the machine's CPUs allow).
        seed: generation seed (train and val use independent streams) and shuffling seed.
        shuffle_buffer: training sample shuffle buffer.
        max_bad_fraction: training stops when more than this fraction of the samples read is bad (see
            :class:`imagen.lightning.data_report.DataReport`); 1 never stops.
        gen_procs: processes used to generate shards in ``prepare_data``.
        eval_repeats: images per eval prompt in the validation sample grid.
    """

    def __init__(
        self,
        world: ShapesWorld | Any = None,
        root: str = "data/shapes",
        n_train: int = 20000,
        n_val: int = 512,
        samples_per_shard: int = 1000,
        batch_size: int = 32,
        num_workers: int | None = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        gen_procs: int = 1,
        eval_repeats: int = 4,
        max_bad_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.world = ShapesWorld.from_config(world)
        self.root = Path(root)
        self.n_train = _check_int("n_train", n_train, 1)
        self.n_val = _check_int("n_val", n_val, 0)
        self.samples_per_shard = _check_int("samples_per_shard", samples_per_shard, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_workers = _check_workers(num_workers)
        self.seed = _check_int("seed", seed, 0)
        self.shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 0)
        self.max_bad_fraction = _check_fraction("max_bad_fraction", max_bad_fraction)
        self.gen_procs = _check_int("gen_procs", gen_procs, 1)
        self.eval_repeats = _check_int("eval_repeats", eval_repeats, 1)
        self.resolution = self.world.resolution
        self.save_hyperparameters(
            {
                "world": self.world.to_config(),
                "root": str(root),
                "n_train": n_train,
                "n_val": n_val,
                "samples_per_shard": samples_per_shard,
                "batch_size": batch_size,
                "num_workers": self.num_workers,
                "seed": seed,
                "shuffle_buffer": shuffle_buffer,
                "max_bad_fraction": self.max_bad_fraction,
            }
        )
        self.train_pipeline: Any = None
        self.val_pipeline: Any = None
        self.text_cache: Any = None  # an imagen.text.cache.TextCache of the training shards, or None

    def _splits(self) -> list[tuple[str, int]]:
        return [("train", self.n_train)] + ([("val", self.n_val)] if self.n_val > 0 else [])

    def _dir(self, split: str, n: int) -> Path:
        return split_dir(self.world, self.root, n, self.samples_per_shard, self.seed, split)

    def prepare_data(self) -> None:
        """Generate (or reuse cached) train/val shards. Lightning calls this on local rank 0 only."""
        for split, n in self._splits():
            ensure_shards(
                self.world, self._dir(split, n), n, self.samples_per_shard, self.seed, split, num_proc=self.gen_procs
            )

    def shard_paths(self, split: str) -> list[str]:
        """Cached shard paths of ``split``; generates them when not running distributed, else raises."""
        n = dict(self._splits()).get(split)
        if n is None:
            return []
        paths = load_cached_shards(
            self.world, self._dir(split, n), n, self.samples_per_shard, self.seed, split, verify=False
        )
        if paths is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                raise FileNotFoundError(
                    f"no valid {split} shards in {self._dir(split, n)}; prepare_data() must run first"
                )
            self.prepare_data()
            paths = load_cached_shards(
                self.world, self._dir(split, n), n, self.samples_per_shard, self.seed, split, verify=False
            )
        assert paths is not None
        return paths

    def setup(self, stage: str | None = None) -> None:
        """Build the train (infinite, shuffled) and val (one ordered pass) pipelines."""
        self.train_pipeline = make_pipeline(
            self.shard_paths("train"),
            self.resolution,
            training=True,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            text_cache=self.text_cache,
        )
        val = self.shard_paths("val")
        self.val_pipeline = make_pipeline(val, self.resolution, training=False) if val else None

    def train_urls(self) -> list[str]:
        """The training shards (generated if missing), e.g. for the text cache."""
        return self.shard_paths("train")

    def eval_prompts(self) -> list[str]:
        """Held-out evaluation prompts (never in training) for the sampling callback."""
        return self.world.eval_captions()

    def eval_prompt_meta(self) -> list[dict[str, Any]]:
        """The same prompts with their ground truth: ``[{"caption", "category", "constraints"}]``."""
        return self.world.eval_prompts()


class WebDataModule(_ShardDataModule):
    """Real image-text shards (img2dataset layout: KEY.jpg/png/webp + KEY.txt [+ KEY.json]).

    Args:
        urls: training shards: a list, a brace pattern ("/data/laion-{00000..00099}.tar"), ``pipe:`` or
            http(s) URLs. Local paths are checked in ``setup()`` (FileNotFoundError naming the path).
        resolution: output side in pixels (shorter side resized, centre crop).
        batch_size / num_workers / shuffle_buffer / seed: loader and shuffling settings; ``num_workers=None``
            (the default): :func:`default_num_workers`, i.e. what the machine's CPUs allow, at most 4.
        eval_prompts: prompts for the sampling callback; None (default): the first ``n_eval_prompts`` distinct
            captions of the validation shards, or of the first training shard without ``val_urls`` (read once, when
            first asked for; :func:`shard_captions`), so every run's grid shows prompts of its own data.
        eval_repeats: images per eval prompt in the validation sample grid.
        val_urls: optional validation shards (one ordered pass); None -> no validation.
        n_eval_prompts: how many captions ``eval_prompts=None`` takes from the shards.
        max_bad_fraction: training stops when more than this fraction of the samples read is bad (see
            :class:`imagen.lightning.data_report.DataReport`); 1 never stops.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        resolution: int = 64,
        batch_size: int = 32,
        num_workers: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        eval_prompts: Sequence[str] | None = None,
        val_urls: str | Sequence[str] | None = None,
        eval_repeats: int = 4,
        n_eval_prompts: int = 8,
        max_bad_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("urls must name at least one shard (a path, brace pattern, pipe: or http URL)")
        self.urls = urls if isinstance(urls, str) else [str(u) for u in urls]
        self.val_urls = val_urls if (val_urls is None or isinstance(val_urls, str)) else [str(u) for u in val_urls]
        self.resolution = _check_int("resolution", resolution, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_workers = _check_workers(num_workers)
        self.shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 0)
        self.seed = _check_int("seed", seed, 0)
        self.eval_repeats = _check_int("eval_repeats", eval_repeats, 1)
        self.n_eval_prompts = _check_int("n_eval_prompts", n_eval_prompts, 1)
        self.max_bad_fraction = _check_fraction("max_bad_fraction", max_bad_fraction)
        self._eval_prompts: list[str] | None = None  # None: read from the shards when first asked for
        if eval_prompts is not None:
            prompts = [eval_prompts] if isinstance(eval_prompts, str) else list(eval_prompts)
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ValueError(f"eval_prompts must be a non-empty list of non-empty strings, got {prompts!r}")
            self._eval_prompts = [str(p) for p in prompts]
        self.save_hyperparameters(
            {
                "urls": self.urls,
                "resolution": resolution,
                "batch_size": batch_size,
                "num_workers": self.num_workers,
                "shuffle_buffer": shuffle_buffer,
                "seed": seed,
                "val_urls": self.val_urls,
                "max_bad_fraction": self.max_bad_fraction,
            }
        )
        self.train_pipeline: Any = None
        self.val_pipeline: Any = None
        self.text_cache: Any = None  # an imagen.text.cache.TextCache of the training shards, or None

    def setup(self, stage: str | None = None) -> None:
        """Expand and check the shard lists, build the pipelines."""
        self.train_pipeline = make_pipeline(
            self.urls,
            self.resolution,
            training=True,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            text_cache=self.text_cache,
        )
        self.val_pipeline = make_pipeline(self.val_urls, self.resolution, training=False) if self.val_urls else None

    def train_urls(self) -> list[str]:
        """The training shards, brace-expanded (local ones checked), e.g. for the text cache."""
        return expand_urls(self.urls)

    def eval_prompt_urls(self) -> list[str]:
        """The shards ``eval_prompts=None`` takes its captions from: the validation shards, else the first
        training shard."""
        return expand_urls(self.val_urls) if self.val_urls else expand_urls(self.urls)[:1]

    def eval_prompts(self) -> list[str]:
        """Prompts for the sampling callback: the configured ones, or the first ``n_eval_prompts`` distinct
        captions of :meth:`eval_prompt_urls` (:data:`DEFAULT_WEB_EVAL_PROMPTS`, with a warning, if they have none)."""
        if self._eval_prompts is None:
            urls = self.eval_prompt_urls()
            prompts = shard_captions(urls, self.n_eval_prompts)
            if not prompts:
                log.warning("no readable caption in %s; the sample grid uses generic prompts", urls)
                prompts = list(DEFAULT_WEB_EVAL_PROMPTS)
            self._eval_prompts = prompts
        return list(self._eval_prompts)
