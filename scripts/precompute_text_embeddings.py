"""Encode every training caption of a dataset once, with the frozen text encoder, into the text cache (Imagen §2.1).

    python scripts/precompute_text_embeddings.py                                  # MiniLM over the shapes world
    python scripts/precompute_text_embeddings.py encoder=t5_xxl precompute.dtype=bfloat16 precompute.batch_size=256
    python scripts/precompute_text_embeddings.py encoder=t5_xxl data=webdataset data.urls='/data/laion/{00000..00999}.tar'
    RANK=3 WORLD_SIZE=8 python scripts/precompute_text_embeddings.py encoder=t5_xxl ...   # this rank: shards i % 8 == 3
    python train.py encoder=t5_xxl text=cached ...                                 # train without building the encoder

A Hydra app over the same conf/ as train.py (same encoder= and data= overrides), plus `precompute.*`:
dtype (storage: float16 | bfloat16 | float32), batch_size (captions per encoder call), rank / world_size
(default: env RANK / WORLD_SIZE, else 0 / 1), force (re-encode current files too), device (auto | cpu | cuda).
Writes one safetensors file per training shard, and rank 0 the eval prompts' file, into
`<shard dir>/text_cache/<encoder fingerprint>/` (layout and checks: imagen.text.cache). Shards whose cache
is current (same encoder identity, storage dtype and shard contents) are skipped, so re-running is cheap and
the jobs of a sweep share one cache per encoder. Ends with one JSON line (captions/s of the encoder).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import hydra
import torch
import webdataset as wds
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from imagen.build import build_text_encoder, encoder_identity
from imagen.cli import check_overrides
from imagen.data.pipeline import decode_caption
from imagen.text.cache import (
    STORAGE_DTYPES,
    encode_rows,
    local_shard,
    prompts_cache_file,
    read_meta,
    shard_cache_file,
    shard_stat,
    stale_reason,
    write_cache_file,
)

log = logging.getLogger("precompute_text_embeddings")

CONFIG_NAME = "precompute_text_embeddings"
DEFAULTS = {"dtype": "float16", "batch_size": 64, "rank": None, "world_size": None, "force": False, "device": "auto"}
ConfigStore.instance().store(name=CONFIG_NAME, node={"defaults": ["config", "_self_"], "precompute": DEFAULTS})


def read_captions(url: str) -> tuple[list[str], list[str]]:
    """Keys and captions of a shard's samples with a caption, in shard order (only `.txt` members are read).
    An invalid-utf-8 caption (which training skips) is kept, decoded with replacement characters."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([url]),
        wds.tarfile_to_samples(select_files=lambda name: name.rsplit("/", 1)[-1].split(".", 1)[-1].lower() == "txt"),
    )
    keys, captions = [], []
    for raw in pipeline:
        if "txt" in raw:
            try:
                caption = decode_caption(raw["txt"])
            except UnicodeDecodeError:
                caption = raw["txt"].decode("utf-8", "replace").strip()
            keys.append(str(raw["__key__"]))
            captions.append(caption)
    return keys, captions


def precompute(
    cfg: DictConfig,
    dtype: str = "float16",
    batch_size: int = 64,
    rank: int | None = None,
    world_size: int | None = None,
    force: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Write this rank's share of the text cache of `cfg`'s encoder over `cfg`'s training shards -> a summary."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"precompute.rank must be in [0, world_size={world_size}), got {rank}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"precompute.dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"precompute.batch_size must be >= 1, got {batch_size}")
    datamodule = instantiate(cfg.data)
    urls, identity = datamodule.train_urls(), encoder_identity(cfg)
    mine = urls[rank::world_size]  # shards i % world_size == rank
    todo = [u for u in mine if force or stale_reason(shard_cache_file(u, identity), identity, u, dtype)]
    prompts_file = prompts_cache_file(urls, identity)
    prompts: list[str] = []
    if rank == 0:  # the eval prompts (not in the training shards), merged with those already cached
        prompts = list(dict.fromkeys(datamodule.eval_prompts()))
        if not force and stale_reason(prompts_file, identity, storage_dtype=dtype) is None:
            cached = read_meta(prompts_file)["keys"]
            prompts = list(dict.fromkeys(cached + prompts)) if set(prompts) - set(cached) else []
    summary = {
        "rank": rank,
        "world_size": world_size,
        "cache_dir": str(shard_cache_file(urls[0], identity).parent),
        "storage_dtype": dtype,
        "shards": len(mine),
        "shards_encoded": len(todo),
        "captions": 0,
        "unique_captions": 0,
        "encode_s": 0.0,
    }
    if not todo and not prompts:
        log.info("text cache %s is current for this rank's %d shards", summary["cache_dir"], len(mine))
        return summary
    encoder = build_text_encoder(cfg)
    differ = sorted(k for k, v in getattr(encoder, "identity", {}).items() if k in identity and identity[k] != v)
    if differ:  # the config-derived identity (checked at training, where no encoder is built) must be the encoder's
        raise ValueError(f"encoder identity {encoder.identity} disagrees with its config {identity} on {differ}")
    encoder.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    with tqdm(total=len(prompts), unit="caption", disable=not progress, desc=f"rank {rank}") as bar:
        if prompts:
            write_cache_file(prompts_file, prompts, encode_rows(encoder, prompts, batch_size, bar), identity, dtype)
        for url in todo:
            stat = shard_stat(local_shard(url))  # before reading: a shard changing meanwhile is then caught at training
            keys, captions = read_captions(url)
            bar.total += len(set(captions))
            start = time.perf_counter()
            rows = encode_rows(encoder, captions, batch_size, bar)
            summary["encode_s"] += time.perf_counter() - start
            summary["captions"] += len(captions)
            summary["unique_captions"] += len(set(captions))
            write_cache_file(shard_cache_file(url, identity), keys, rows, identity, dtype, shard=stat)
    summary["unique_captions_per_s"] = round(summary["unique_captions"] / max(summary["encode_s"], 1e-9), 1)
    summary["encode_s"] = round(summary["encode_s"], 3)
    return summary


@hydra.main(config_path="../conf", config_name=CONFIG_NAME, version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        summary = precompute(cfg, **cfg.precompute)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))


if __name__ == "__main__":
    check_overrides()
    main()
