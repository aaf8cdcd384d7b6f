"""Write shapes-world samples as deterministic, cached webdataset shards (img2dataset layout).

Layout: ``OUT/shapes-000000.tar, shapes-000001.tar, ...`` each holding ``KEY.json``, ``KEY.png`` and
``KEY.txt`` members, where ``KEY`` is the zero-padded (9 digit) sample index, plus ``OUT/manifest.json``::

    {"format": 1, "fingerprint": <sha256 of world config + n + samples_per_shard + seed + split>,
     "config": {...}, "n_samples": N, "shards": [{"file": "shapes-000000.tar", "sha256": ..., "n_samples": k}]}

Same seed + config -> byte-identical shards: member mtime/uid/gid/uname/mode are fixed and PNGs are
written with fixed parameters. :func:`ensure_shards` reuses a directory whose manifest fingerprint matches
(and whose files hash as recorded) and otherwise regenerates it into a temporary directory that is renamed
into place only when complete, so an interrupted write is never mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import webdataset as wds
from filelock import FileLock

from .shapes import GENERATOR_VERSION, ShapesWorld

__all__ = [
    "MANIFEST",
    "ensure_shards",
    "ensure_splits",
    "fingerprint",
    "load_cached_shards",
    "split_dir",
    "write_shards",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_FORMAT = 1
KEY_DIGITS = 9
_MTIME = 0  # fixed member mtime (webdataset's TarWriter stamps time.time() unless mtime is given)


def _check_counts(n_samples: int, samples_per_shard: int, seed: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be an integer >= 1, got {samples_per_shard!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def fingerprint(world: ShapesWorld, n_samples: int, samples_per_shard: int, seed: int, split: str = "train") -> str:
    """sha256 hex digest identifying the exact shard contents for these arguments."""
    return hashlib.sha256(
        json.dumps(_cache_config(world, n_samples, samples_per_shard, seed, split), sort_keys=True).encode()
    ).hexdigest()


def _cache_config(world: ShapesWorld, n_samples: int, samples_per_shard: int, seed: int, split: str) -> dict[str, Any]:
    return {
        "world": world.to_config(),
        "n_samples": n_samples,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "split": split,
        "generator_version": GENERATOR_VERSION,
        "shard_format": SHARD_FORMAT,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode_sample(world: ShapesWorld, index: int, seed: int, split: str) -> dict[str, Any]:
    """Sample ``index`` as a webdataset dict of bytes (PNG with fixed params, no timestamps)."""
    s = world.sample(index, seed=seed, split=split)
    buf = io.BytesIO()
    s.image.save(buf, format="PNG", compress_level=6, optimize=False)
    return {
        "__key__": f"{index:0{KEY_DIGITS}d}",
        "png": buf.getvalue(),
        "txt": s.caption.encode("utf-8"),
        "json": json.dumps(s.meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
    }


def _write_one_shard(args: tuple[dict[str, Any], str, int, int, int, str]) -> str:
    """Write shard file ``path`` holding samples [start, stop). Top-level so worker pools can pickle it."""
    world_cfg, path, start, stop, seed, split = args
    world = ShapesWorld.from_config(world_cfg)
    with open(path, "wb") as f:
        # encoder=False: members are written as given; mtime/user/group/mode fixed for reproducible bytes
        # (TarInfo uid/gid default to 0).
        with wds.TarWriter(f, encoder=False, mtime=_MTIME, user="shapes", group="shapes", mode=0o444) as tw:
            for i in range(start, stop):
                tw.write(_encode_sample(world, i, seed, split))
    return path


def write_shards(
    world: ShapesWorld,
    out_dir: str | os.PathLike,
    n_samples: int,
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    num_proc: int = 1,
) -> list[str]:
    """Write ``n_samples`` samples to ``out_dir/shapes-NNNNNN.tar`` -> sorted list of shard paths.

    Deterministic: the same arguments always produce byte-identical files (``num_proc`` only changes
    speed: every shard depends on its own sample indices alone).
    """
    _check_counts(n_samples, samples_per_shard, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for k, start in enumerate(range(0, n_samples, samples_per_shard)):
        stop = min(start + samples_per_shard, n_samples)
        jobs.append((world.to_config(), str(out / f"shapes-{k:06d}.tar"), start, stop, seed, split))
    if num_proc > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a possibly multi-threaded torch process
        with ctx.Pool(min(num_proc, len(jobs))) as pool:
            paths = pool.map(_write_one_shard, jobs)
    else:
        paths = [_write_one_shard(j) for j in jobs]
    return paths


def load_cached_shards(
    world: ShapesWorld,
    out_dir: str | os.PathLike,
    n_samples: int,
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    verify: bool = True,
) -> list[str] | None:
    """Shard paths of a valid cache in ``out_dir`` for these arguments, or None if absent/stale/corrupt."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint(world, n_samples, samples_per_shard, seed, split):
        return None
    paths = []
    for entry in manifest.get("shards", []):
        path = out / entry["file"]
        if not path.is_file() or (verify and _sha256(path) != entry["sha256"]):
            return None
        paths.append(str(path))
    return paths or None


def ensure_shards(
    world: ShapesWorld,
    out_dir: str | os.PathLike,
    n_samples: int,
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    num_proc: int = 1,
    verify: bool = True,
) -> list[str]:
    """Return cached shard paths in ``out_dir`` if its manifest matches, else (re)generate them.

    Generation writes into a sibling temporary directory, writes the manifest last, then renames it to
    ``out_dir`` (replacing any stale cache). ``verify`` re-hashes cached files against the manifest. Processes that
    ask for the same folder at once (two runs, the ranks of a job) take turns on a file lock beside it: one
    generates, the others find its cache.
    """
    _check_counts(n_samples, samples_per_shard, seed)
    out = Path(out_dir)
    cached = load_cached_shards(world, out, n_samples, samples_per_shard, seed, split, verify=verify)
    if cached is not None:
        return cached
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):  # one generator at a time; the others then reuse its cache
        cached = load_cached_shards(world, out, n_samples, samples_per_shard, seed, split, verify=verify)
        if cached is not None:
            return cached
        return _generate(world, out, n_samples, samples_per_shard, seed, split, num_proc)


def _generate(
    world: ShapesWorld, out: Path, n_samples: int, samples_per_shard: int, seed: int, split: str, num_proc: int
) -> list[str]:
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    log.info("generating %d %s shapes samples into %s", n_samples, split, out)
    try:
        paths = write_shards(world, tmp, n_samples, samples_per_shard, seed, split, num_proc=num_proc)
        manifest = {
            "format": SHARD_FORMAT,
            "fingerprint": fingerprint(world, n_samples, samples_per_shard, seed, split),
            "config": _cache_config(world, n_samples, samples_per_shard, seed, split),
            "n_samples": n_samples,
            "shards": [
                {
                    "file": Path(p).name,
                    "sha256": _sha256(Path(p)),
                    "n_samples": min(samples_per_shard, n_samples - k * samples_per_shard),
                }
                for k, p in enumerate(paths)
            ],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{tag}"
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [str(out / Path(p).name) for p in paths]


def ensure_splits(
    world: ShapesWorld,
    root: str | os.PathLike,
    n_train: int,
    n_val: int = 0,
    samples_per_shard: int = 1000,
    seed: int = 0,
    num_proc: int = 1,
) -> dict[str, list[str]]:
    """Cached train/val shards under ``root/{split}-{fingerprint[:12]}`` -> ``{"train": [...], "val": [...]}``.

    Train and val use independent random streams of the same seed; the fingerprint in the directory name
    lets several world configs share one ``root``. ``n_val == 0`` gives an empty val list.
    """
    out: dict[str, list[str]] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        if split == "val" and n == 0:
            out[split] = []
            continue
        path = split_dir(world, root, n, samples_per_shard, seed, split)
        out[split] = ensure_shards(world, path, n, samples_per_shard, seed, split, num_proc=num_proc)
    return out


def split_dir(
    world: ShapesWorld, root: str | os.PathLike, n_samples: int, samples_per_shard: int, seed: int, split: str
) -> Path:
    """The cache directory :func:`ensure_splits` uses for one split."""
    return Path(root) / f"{split}-{fingerprint(world, n_samples, samples_per_shard, seed, split)[:12]}"
