"""The one webdataset reading pipeline, for shapes shards and real LAION / img2dataset shards.

Stages (a ``wds.DataPipeline``, i.e. a torch ``IterableDataset``)::

    ShardList -> split_by_node -> WorkerSplit -> TrackShard -> tarfile_to_samples(select_files=wanted members)
              -> CountUsable -> [BufferShuffle (training)] -> SkipConsumed
              -> DecodeSamples (PIL / utf-8 / json, resize + crop)

Each sample out: ``{"image": Tensor(3, H, W) in [-1, 1], "caption": str, "key": str, "meta": dict | None}``;
:func:`collate_samples` batches them. With a text cache (Imagen §2.1, :mod:`imagen.text.cache`), a stage
after ``CountUsable`` attaches each sample's precomputed ``text_emb`` (L, D) by shard and key, and the batch
gets ``text_emb`` (B, L, D) float32 and ``text_mask`` (B, L) bool.

Security: only members with extension png/jpg/jpeg/webp/txt/json are ever read from the tar (the
``select_files`` predicate runs before a member's bytes are read), and they are decoded by hand -- no
webdataset default decoders, so ``.pyd``/``.pickle``/``.pth`` members are never unpickled.

Bad data is counted, never fatal here: corrupt samples (undecodable image, missing image or caption, non-utf-8
caption, unreadable shard) are skipped and a bad ``.json`` meta is dropped from a kept sample; ``pipeline.skipped``
(a :class:`SkipCounter` shared with dataloader workers via shared memory) counts the samples read, the skips by
reason and by shard, and the bad metas. The first skip in each process is logged as a warning naming the key and
shard. Reporting the counts and stopping a run whose data is too bad is the training callback's job
(:mod:`imagen.lightning.data_report`); the pipeline only stops after ``max_consecutive`` failures in a row.

Iteration (the Lightning-friendly choice): with ``training=True`` the shard list repeats forever, reshuffled
each epoch with a seed derived from (seed, epoch), so the pipeline is an *infinite* IterableDataset. A
Lightning ``Trainer(max_steps=...)`` just works: the single "epoch" never ends and training stops at
``max_steps``. For periodic validation use an integer ``val_check_interval`` with
``check_val_every_n_epoch=None``; epoch-end hooks never fire. Alternatively ``epoch_samples=n`` applies
``.with_epoch(n)``: each worker then yields ``n`` samples per epoch and continues where it stopped in the
next epoch (with ``persistent_workers=True`` or ``num_workers=0``). With ``training=False`` there is one
ordered pass over the shards (no shuffling). Every stage is splittable: shards are split across DDP ranks
and then dataloader workers; a worker or rank with no shard simply yields nothing (no empty check), so
3 workers over 2 shards is fine. In infinite mode every worker gets shards, as the repeated list is split.
No flips or other augmentations: they would break left/right captions.

Exact resume (a :class:`StreamPosition` shared by the stages): every sample a worker yields has an ordinal in that
worker's stream, carried to the batch as ``batch["stream"] = (worker, ordinal of its last sample)``; the datamodule
records the ordinals of the batches training consumed and saves them in the checkpoint. A resumed pipeline replays
each worker's stream from its start -- the same shard order and shuffle buffer, since both are seeded -- and skips
the consumed samples before decoding them, then goes on exactly where the interrupted run was. Replay rather than a
saved shuffle buffer: the buffer holds up to ``shuffle_buffer`` encoded samples per worker, too much for a
checkpoint, while reading a tar member without decoding it is cheap; the cost is reading the consumed part of the
stream again (raw bytes, no decode) when a run resumes. Workers are renumbered on resume (``rotation``) so that the
first batch comes from the worker whose turn it was: a DataLoader takes batches from its workers in turn.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from imagen.text.cache import pad_rows

__all__ = [
    "IMAGE_EXTS",
    "NodeSplit",
    "ShardList",
    "SkipCounter",
    "StreamPosition",
    "collate_samples",
    "decode_caption",
    "expand_urls",
    "make_pipeline",
    "resize_center_crop",
    "to_tensor",
]

log = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
TEXT_EXTS: tuple[str, ...] = ("txt",)
META_EXTS: tuple[str, ...] = ("json",)
WANTED_EXTS = frozenset(IMAGE_EXTS + TEXT_EXTS + META_EXTS)
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # pipe:, http:, https:, s3:, gs:, ...


# ------------------------------------------------------------------------------------------ urls


def expand_urls(urls: str | Sequence[str], check_local: bool = True) -> list[str]:
    """Brace-expand shard specs (``"/data/shard-{000..009}.tar"``, ``"a.tar::b.tar"`` or a list).

    With ``check_local``, every local path (no scheme, or ``file:``) must exist, else FileNotFoundError.
    """
    if isinstance(urls, (str, os.PathLike)):
        specs = str(urls).split("::")
    else:
        specs = [str(u) for u in urls]
    out: list[str] = []
    for spec in specs:
        if spec.strip():
            out.extend(braceexpand.braceexpand(spec.strip()))
    if not out:
        raise ValueError(f"no shard URLs given (urls={urls!r})")
    if check_local:
        missing = []
        for url in out:
            path = url[len("file:") :] if url.startswith("file:") else (None if _REMOTE.match(url) else url)
            if path is not None and not os.path.isfile(path):
                missing.append(path)
        if missing:
            more = f" (and {len(missing) - 1} more of {len(out)} shards missing)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"webdataset shard not found: {missing[0]}{more}")
    return out


class ShardList(IterableDataset):
    """Yields ``{"url": ...}`` dicts; repeats forever (reshuffling per epoch) when ``repeat``.

    The order is the same in every rank and worker (seeded by seed and epoch only), so the node and worker
    splitters that follow hand out disjoint shards. ``self.epoch`` persists across ``iter()`` calls, so a
    re-created iterator continues with the next epoch instead of replaying the first. When repeating with a
    ``counter``, many consecutive epochs without a single usable raw sample (image + txt member) in this
    process raise RuntimeError (e.g. shards whose members all have unexpected extensions) instead of
    spinning forever; undecodable images are caught by the counter's consecutive-failure guard.
    """

    def __init__(
        self, urls: Sequence[str], shuffle: bool, seed: int, repeat: bool, counter: SkipCounter | None = None
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ShardList needs at least one shard URL")
        self.urls, self.shuffle, self.seed, self.repeat, self.counter = list(urls), shuffle, seed, repeat, counter
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        _, world_size, _, num_workers = wds.utils.pytorch_worker_info()
        patience = world_size * num_workers + 2  # a consumer may legitimately get no shard for a few epochs
        empty_epochs = 0
        while True:
            order = list(self.urls)
            if self.shuffle:
                random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(order)
            self.epoch += 1
            usable_before = self.counter.usable if self.counter is not None else 0
            for url in order:
                yield {"url": url}
            if not self.repeat:
                return
            if self.counter is not None:
                empty_epochs = empty_epochs + 1 if self.counter.usable == usable_before else 0
                if empty_epochs > patience:
                    raise RuntimeError(
                        f"{empty_epochs} passes over {len(self.urls)} shards yielded no usable sample "
                        f"(skipped: {self.counter.as_dict()}); check the shards, e.g. {self.urls[0]}"
                    )


# -------------------------------------------------------------------------------------- counter


class SkipCounter:
    """Counts the samples read, the skipped ones by reason and by shard, and the kept ones with a bad ``.json``;
    shared with dataloader workers through shared memory.

    ``counter.seen`` (samples read: decoded + skipped; an unreadable shard or member counts as one),
    ``counter.skipped`` (``counter.total``), ``counter["bad_image"]``, ``counter["bad_meta"]`` (a warning: the
    sample is kept, without its meta), ``counter.shard_skips()`` ({url: skips}), ``counter.as_dict()``. All counts
    live in one shared int64 array with one lock -- ``[seen, REASONS..., WARNINGS..., skips of shard 0..n-1]`` --
    allocated when the pipeline is built (the shard list is known then), so the counter reaches fork, spawn and
    forkserver workers alike and every worker's counts are visible in the process that built it. A skip whose
    shard is not in ``urls`` (a counter built without them) is counted by reason only.

    Copies made outside process spawning (``copy.deepcopy``, pickling to disk) become independent counters
    starting from the current counts. ``max_consecutive`` failures in a row without a good sample (in one process)
    raise RuntimeError, so an infinite training pipeline over broken shards fails loudly instead of spinning forever.
    """

    REASONS: tuple[str, ...] = ("bad_image", "missing_image", "missing_caption", "bad_caption", "shard_error")
    WARNINGS: tuple[str, ...] = ("bad_meta",)  # counted, the sample is kept
    NAMES: tuple[str, ...] = REASONS + WARNINGS

    def __init__(
        self, urls: Sequence[str] = (), initial: Sequence[int] | None = None, max_consecutive: int = 1000
    ) -> None:
        self.urls = [str(u) for u in urls]
        self.max_consecutive = max_consecutive
        # a spawn-context lock can be handed to fork, spawn and forkserver dataloader workers alike
        self._counts = multiprocessing.get_context("spawn").Array("q", 1 + len(self.NAMES) + len(self.urls))
        if initial is not None:
            self._counts[:] = list(initial)
        self._local()

    def _local(self) -> None:
        """This process's state: the shard index, the current shard (for shard errors), the warning and the guard."""
        self._raw = self._counts.get_obj()  # the unlocked view, written under the lock
        self._slot = {name: 1 + i for i, name in enumerate(self.NAMES)}
        self._shard_slot = {url: 1 + len(self.NAMES) + i for i, url in enumerate(self.urls)}
        self.current_url: str | None = None
        self._warned, self._consecutive, self.usable = False, 0, 0

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"urls": self.urls, "max_consecutive": self.max_consecutive}
        if multiprocessing.context.get_spawning_popen() is not None:  # handing to a worker: share memory
            return {**state, "counts": self._counts}
        return {**state, "initial": self.vector()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "counts" in state:
            self.urls, self.max_consecutive, self._counts = state["urls"], state["max_consecutive"], state["counts"]
            self._local()
        else:
            self.__init__(state["urls"], state["initial"], state["max_consecutive"])

    def ok(self) -> None:
        """Record a successfully decoded sample (resets the consecutive-failure guard)."""
        with self._counts.get_lock():
            self._raw[0] += 1
        self._consecutive = 0

    def add(
        self, reason: str, key: str | None = None, url: str | None = None, error: BaseException | None = None
    ) -> None:
        """Count one skip (or a ``bad_meta`` warning) and its shard; log the first one in this process as a
        warning (later ones at debug level)."""
        slot = self._slot[reason]
        shard = self._shard_slot.get(url) if url is not None else None
        with self._counts.get_lock():
            self._raw[slot] += 1
            if reason in self.REASONS:
                self._raw[0] += 1
                if shard is not None:
                    self._raw[shard] += 1
        if reason in self.REASONS:
            self._consecutive += 1
            if self._consecutive >= self.max_consecutive:
                raise RuntimeError(
                    f"{self._consecutive} consecutive samples/shards failed to load (last: {reason} for key {key!r} "
                    f"in {url!r}); check the shards"
                )
        msg = "skipping sample %r in shard %r: %s%s"
        if reason in self.WARNINGS:
            msg = "keeping sample %r in shard %r without its meta: %s%s"
        args = (key, url, reason, f" ({type(error).__name__}: {error})" if error is not None else "")
        if not self._warned:
            self._warned = True
            log.warning(msg + " -- further ones are counted in pipeline.skipped without warnings", *args)
        else:
            log.debug(msg, *args)

    def handle_shard_error(self, exn: BaseException) -> bool:
        """webdataset exception handler: count, warn once, continue with the next shard/member. The shard is the
        URL webdataset appended to the error's args, else the one this process is reading (:class:`TrackShard`)."""
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self._shard_slot), self.current_url)
        self.add("shard_error", url=url, error=exn)
        return True

    def __getitem__(self, name: str) -> int:
        return int(self._counts[self._slot[name]])

    @property
    def seen(self) -> int:
        """Samples read: decoded, or skipped (an unreadable shard or member counts as one)."""
        return int(self._counts[0])

    @property
    def skipped(self) -> int:
        """Samples skipped, all reasons (a ``bad_meta`` sample is kept: not a skip)."""
        return sum(self[r] for r in self.REASONS)

    total = skipped

    def as_dict(self) -> dict[str, int]:
        """{name: count} for every skip reason and warning."""
        return {name: self[name] for name in self.NAMES}

    def shard_skips(self) -> dict[str, int]:
        """{shard url: skips} of the shards with at least one skip."""
        vector = self.vector()
        return {url: vector[slot] for url, slot in self._shard_slot.items() if vector[slot]}

    def vector(self) -> list[int]:
        """All counts, ``[seen, REASONS..., WARNINGS..., skips of each shard]``: what DDP ranks sum (:meth:`summary`)."""
        with self._counts.get_lock():
            return list(self._raw)

    def report(self, top: int = 5) -> dict[str, Any]:
        """This process's counts (with its workers') as :meth:`summary` gives them."""
        return self.summary(self.vector(), self.urls, top)

    @classmethod
    def summary(cls, vector: Sequence[int], urls: Sequence[str], top: int = 5) -> dict[str, Any]:
        """A count vector (:meth:`vector`, or the sum of several ranks') -> the report: ``{"seen", "skipped",
        "skipped_fraction", "by_reason": {reason: n}, "bad_meta", "worst_shards": [{"url", "skipped"}] (the ``top``
        shards with the most skips, most first)}``."""
        counts = [int(v) for v in vector]
        n = len(cls.NAMES)
        by_name = dict(zip(cls.NAMES, counts[1 : 1 + n]))
        shards = sorted(((c, i) for i, c in enumerate(counts[1 + n :]) if c), key=lambda ci: (-ci[0], ci[1]))[:top]
        seen, skipped = counts[0], sum(by_name[r] for r in cls.REASONS)
        return {
            "seen": seen,
            "skipped": skipped,
            "skipped_fraction": skipped / seen if seen else 0.0,
            "by_reason": {r: by_name[r] for r in cls.REASONS},
            "bad_meta": by_name["bad_meta"],
            "worst_shards": [{"url": urls[i], "skipped": c} for c, i in shards],
        }

    def __repr__(self) -> str:
        return f"SkipCounter(seen={self.seen}, {self.as_dict()})"


# ------------------------------------------------------------------------------------ transforms


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (bicubic, antialiased) and centre-crop a square."""
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    if (nw, nh) != (resolution, resolution):
        img = img.crop((left, top, left + resolution, top + resolution))
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB (H, W) -> float32 tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB, compositing transparent images onto white (not black)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _wanted_member(fname: str) -> bool:
    """select_files predicate: keep only image/txt/json members (checked before any bytes are read)."""
    base = fname.rsplit("/", 1)[-1]
    return "." in base and base.split(".", 1)[1].lower() in WANTED_EXTS


def decode_caption(data: bytes) -> str:
    """A ``.txt`` member -> the caption (utf-8, stripped); UnicodeDecodeError for invalid utf-8."""
    return data.decode("utf-8").strip()


class DecodeSamples:
    """Pipeline stage: raw member bytes -> {"image", "caption", "key", "meta"}; skips and counts bad ones."""

    def __init__(self, resolution: int, counter: SkipCounter) -> None:
        self.resolution, self.counter = resolution, counter

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in src:
            out = self.decode(raw)
            if out is not None:
                yield out

    def decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        key, url = raw.get("__key__"), raw.get("__url__")
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None:
            self.counter.add("missing_image", key, url)
            return None
        if "txt" not in raw:
            self.counter.add("missing_caption", key, url)
            return None
        try:
            caption = decode_caption(raw["txt"])
        except UnicodeDecodeError as e:
            self.counter.add("bad_caption", key, url, e)
            return None
        try:
            with Image.open(io.BytesIO(raw[ext])) as im:
                im.load()
                img = _to_rgb(im)
            image = to_tensor(resize_center_crop(img, self.resolution))  # (3, R, R)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
            self.counter.add("bad_image", key, url, e)
            return None
        meta = None
        if "json" in raw:
            try:
                meta = json.loads(raw["json"].decode("utf-8"))
            except ValueError as e:  # keep the sample: the caption and image are fine
                self.counter.add("bad_meta", key, url, e)
        self.counter.ok()
        out = {"image": image, "caption": caption, "key": str(key), "meta": meta}
        if "__pos__" in raw:  # the stream position (SkipConsumed): for an exact resume
            out["pos"] = raw["__pos__"]
        if "text_emb" in raw:  # attached from the text cache (never a tar member: see _wanted_member)
            out["text_emb"] = raw["text_emb"]
        return out


class NodeSplit:
    """``wds.split_by_node`` that also works in spawn-started dataloader workers.

    Rank and world size are read when iterating (env ``RANK``/``WORLD_SIZE`` or torch.distributed); if the
    iterating process sees no distributed setup (a spawned worker), the values captured at construction
    time (``setup()`` runs after the process group exists) are used instead.
    """

    def __init__(self) -> None:
        self.rank, self.world_size, _, _ = wds.utils.pytorch_worker_info()

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if world_size <= 1:
            rank, world_size = self.rank, self.world_size
        if world_size > 1:
            yield from itertools.islice(src, rank, None, world_size)
        else:
            yield from src


class TrackShard:
    """Pipeline stage: note the shard this process is about to read (``counter.current_url``), so that a shard error
    webdataset reports without its URL is still counted against its shard. Exact because the stages are lazy: the
    tar reader asks for the next URL only when it is done with the current shard."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, src: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        for item in src:
            self.counter.current_url = item.get("url")
            yield item


class CountUsable:
    """Pipeline stage: pass raw samples through, counting (per process) those with an image and a caption."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in src:
            if "txt" in raw and any(e in raw for e in IMAGE_EXTS):
                self.counter.usable += 1
            yield raw


class StreamPosition:
    """Where each dataloader worker's training stream resumes (see the module docstring: exact resume).

    ``rotation``: physical worker ``p`` plays logical worker ``(p + rotation) % num_workers`` -- its shards, its
    shuffle seed, its stream; ``next``: {logical worker: ordinal of the first sample to yield}. A worker gets a copy
    of this object when its iterator starts, so :meth:`resume` must come before the loader is iterated."""

    def __init__(self) -> None:
        self.rotation, self.next = 0, {}

    def resume(self, batches: int, num_workers: int, next_ordinals: dict[int, int]) -> None:
        """Continue after `batches` consumed batches, the workers' streams at `next_ordinals`."""
        self.rotation = batches % max(num_workers, 1)
        self.next = {int(w): int(n) for w, n in next_ordinals.items()}

    def worker(self) -> tuple[int, int]:
        """(this process's logical worker, number of workers); (0, 1) outside dataloader workers."""
        _, _, worker, num_workers = wds.utils.pytorch_worker_info()
        return (worker + self.rotation) % num_workers, num_workers


class WorkerSplit:
    """Pipeline stage: this (logical) worker's share of the shards, every num_workers-th from its index."""

    def __init__(self, position: StreamPosition) -> None:
        self.position = position

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        worker, num_workers = self.position.worker()
        yield from itertools.islice(src, worker, None, num_workers)


class SkipConsumed:
    """Pipeline stage: number the worker's raw samples (``__pos__`` = (worker, ordinal)) and drop, undecoded, those
    before the resume point (once: a later iteration of the same pipeline starts a new stream)."""

    def __init__(self, position: StreamPosition) -> None:
        self.position = position

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = self.position.worker()
        start = self.position.next.pop(worker, 0)
        for ordinal, raw in enumerate(src):
            if ordinal >= start:
                raw["__pos__"] = (worker, ordinal)
                yield raw


class BufferShuffle:
    """Pipeline stage: shuffle buffer seeded by (seed, rank, logical worker, run); reproducible per worker."""

    def __init__(self, bufsize: int, seed: int, position: StreamPosition | None = None) -> None:
        self.bufsize, self.seed, self.runs = bufsize, seed, 0
        self.position = position or StreamPosition()

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        rank, _, _, _ = wds.utils.pytorch_worker_info()
        worker, _ = self.position.worker()
        self.runs += 1
        rng = random.Random(f"samples:{self.seed}:{rank}:{worker}:{self.runs}")
        buf: list[Any] = []
        for item in src:
            buf.append(item)
            if len(buf) >= self.bufsize:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf


# -------------------------------------------------------------------------------------- pipeline


def make_pipeline(
    urls: str | Sequence[str],
    resolution: int,
    *,
    training: bool = True,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    shard_shuffle: bool | None = None,
    epoch_samples: int | None = None,
    check_local: bool = True,
    node_splitter: Callable[[Iterable[Any]], Iterable[Any]] | str | None = "auto",
    worker_splitter: Callable[[Iterable[Any]], Iterable[Any]] | str | None = "auto",
    text_cache: Any = None,
) -> wds.DataPipeline:
    """Build the reading pipeline -> ``wds.DataPipeline`` (an IterableDataset) with ``.skipped`` and ``.urls``.

    Args:
        urls: list of paths/URLs, a brace pattern, ``::``-separated specs, ``pipe:`` or http(s) URLs.
        resolution: output side in pixels (shorter side resized, then centre crop).
        training: infinite, shuffled iteration (True) or one ordered pass (False).
        shuffle_buffer: sample shuffle buffer size for training (0 or 1 disables).
        seed: shard-order and buffer seed.
        shard_shuffle: shuffle shard order per epoch; defaults to ``training``.
        epoch_samples: if set, ``.with_epoch(epoch_samples)`` (samples per worker per epoch).
        check_local: raise FileNotFoundError for missing local shards now, not mid-training.
        node_splitter / worker_splitter: shard splitting across DDP ranks / dataloader workers; "auto" is
            :class:`NodeSplit` / :class:`WorkerSplit`, None disables splitting.
        text_cache: a :class:`imagen.text.cache.TextCache` of these shards: attach the precomputed embeddings.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be an integer >= 0, got {shuffle_buffer!r}")
    if epoch_samples is not None and (not isinstance(epoch_samples, int) or epoch_samples < 1):
        raise ValueError(f"epoch_samples must be None or an integer >= 1, got {epoch_samples!r}")
    shard_urls = expand_urls(urls, check_local=check_local)
    counter = SkipCounter(shard_urls)
    shard_shuffle = training if shard_shuffle is None else shard_shuffle
    position = StreamPosition()
    stages: list[Any] = [ShardList(shard_urls, shuffle=shard_shuffle, seed=seed, repeat=training, counter=counter)]
    if node_splitter == "auto":
        node_splitter = NodeSplit()
    if worker_splitter == "auto":
        worker_splitter = WorkerSplit(position)
    stages += [s for s in (node_splitter, worker_splitter) if s is not None]
    stages.append(TrackShard(counter))
    stages.append(wds.tarfile_to_samples(handler=counter.handle_shard_error, select_files=_wanted_member))
    stages.append(CountUsable(counter))
    if text_cache is not None:  # before the shuffle buffer: one shard's cache file open at a time
        stages.append(text_cache.attach())
    if training and shuffle_buffer > 1:
        stages.append(BufferShuffle(shuffle_buffer, seed, position))
    if training:
        stages.append(SkipConsumed(position))
    stages.append(DecodeSamples(resolution, counter))
    pipeline = wds.DataPipeline(*stages)
    if epoch_samples is not None:
        pipeline = pipeline.with_epoch(epoch_samples)
    pipeline.skipped = counter
    pipeline.urls = shard_urls
    pipeline.position = position
    return pipeline


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """List of pipeline samples -> {"image": (B, 3, H, W), "caption": [str], "key": [str], "meta": [dict|None]},
    plus ``text_emb`` (B, L, D) float32 zero-padded and ``text_mask`` (B, L) bool when the samples have cached
    embeddings, and ``stream`` (worker, ordinal of the last sample) for training samples (one worker per batch)."""
    if not samples:
        raise ValueError("collate_samples got an empty batch")
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    if "text_emb" in samples[0]:
        batch["text_emb"], batch["text_mask"] = pad_rows([s["text_emb"] for s in samples])
    if "pos" in samples[-1]:
        batch["stream"] = samples[-1]["pos"]
    return batch
