"""The text-embedding cache (Imagen §2.1): precomputed once, equal to the encoder's embeddings, trained from
without building the encoder, refused when stale, safetensors only, split across ranks."""

from __future__ import annotations

import importlib.util
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from imagen.build import build_datamodule, build_module, build_text_encoder, encoder_identity
from imagen.data.shapes import ShapesWorld
from imagen.data.shards import write_shards
from imagen.run import run
from imagen.text.cache import TextCache, TextCacheError, read_meta, read_rows, shard_cache_file
from imagen.text.encoder import FrozenTextEncoder

from conftest import ROOT, compose_cfg

SCRIPT = ROOT / "scripts" / "precompute_text_embeddings.py"
_spec = importlib.util.spec_from_file_location("precompute_text_embeddings", SCRIPT)
precompute_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(precompute_script)


def overrides(root: Path, *extra: str) -> list[str]:
    """Tiny shapes world (64 samples in 4 shards, 2 eval prompts), tiny U-Net, 2 steps (as tests/test_train.py)."""
    return [
        f"data.root={root}/data",
        "data.n_train=64",
        "data.samples_per_shard=16",
        "data.gen_procs=1",
        "data.world.n_eval=2",
        "image_size=16",
        "unet.channel_mult=[1,2]",
        "unet.attn_resolutions=[8]",
        "logger=csv",
        "data.batch_size=4",
        "data.eval_repeats=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "sampler.steps=3",
        "callbacks.ema.start_step=1",
        f"run_dir={root}/run",
        *extra,
    ]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A float16 cache written by two ranks: (root, cfg, [summary of rank 0, summary of rank 1])."""
    root = tmp_path_factory.mktemp("cache")
    cfg = compose_cfg(overrides(root))
    summaries = [precompute_script.precompute(cfg, rank=r, world_size=2, batch_size=8, progress=False) for r in (0, 1)]
    return root, cfg, summaries


def test_ranks_cover_every_shard_once(cached):
    root, cfg, (rank0, rank1) = cached
    urls = build_datamodule(compose_cfg(overrides(root))).train_urls()
    assert len(urls) == 4 and rank0["shards_encoded"] == rank1["shards_encoded"] == 2
    assert rank0["captions"] + rank1["captions"] == 64
    files = sorted(p.name for p in Path(rank0["cache_dir"]).iterdir())
    assert files == ["prompts.safetensors"] + [f"shapes-00000{i}.safetensors" for i in range(4)]
    # Re-running is a no-op: every file is current.
    again = precompute_script.precompute(cfg, rank=0, world_size=1, progress=False)
    assert again["shards_encoded"] == 0


def test_cached_embeddings_equal_the_encoders(cached):
    root, cfg, _ = cached
    identity = encoder_identity(cfg)
    url = build_datamodule(cfg).train_urls()[1]
    path = shard_cache_file(url, identity)
    meta = read_meta(path)
    assert meta["identity"] == identity and meta["storage_dtype"] == "float16" and meta["dim"] == 384
    assert meta["shard"]["name"] == Path(url).name and len(meta["keys"]) == 16
    keys, captions = precompute_script.read_captions(url)
    assert keys == meta["keys"]
    encoder = build_text_encoder(cfg)
    with safe_open(str(path), framework="pt") as f:
        emb, lengths = f.get_tensor("emb"), f.get_tensor("lengths")
    assert emb.dtype == torch.float16 and emb.shape == (int(lengths.sum()), 384)
    for caption, row in zip(captions, emb.split(lengths.tolist())):
        ref, mask = encoder.encode([caption])
        assert row.shape[0] == int(mask.sum())  # truncated to the caption's true length
        torch.testing.assert_close(row.float(), ref[0, : row.shape[0]], rtol=2e-3, atol=2e-3)
    # Only safetensors files were written (no pickle anywhere).
    written = {p.suffix for p in (root / "data").rglob("*") if p.is_file()}
    assert written <= {".tar", ".json", ".safetensors", ".lock"}, written  # .lock: the shapes generators take turns


@pytest.mark.slow
def test_train_with_cache_never_builds_the_encoder(cached, monkeypatch):
    root, _, _ = cached

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder was built")

    monkeypatch.setattr(FrozenTextEncoder, "__init__", no_encoder)
    cfg = compose_cfg(overrides(root, "text=cached"))
    datamodule = build_datamodule(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["text_emb"].shape[:2] == batch["text_mask"].shape and batch["text_emb"].shape[0] == 4
    assert batch["text_emb"].dtype == torch.float32
    rows = {k: r for path in datamodule.text_cache.files.values() for k, r in read_rows(path).items()}
    for key, emb, mask in zip(batch["key"], batch["text_emb"], batch["text_mask"]):  # each sample's own row, padded
        n = rows[key].shape[0]
        assert mask[:n].all() and not mask[n:].any() and torch.equal(emb[:n], rows[key]) and not emb[n:].any()
    loss = run(cfg)
    assert loss is not None and math.isfinite(loss)
    assert (root / "run" / "samples" / "step_000002.png").is_file()


def test_other_encoder_identity_is_refused(cached, capsys):
    root, _, _ = cached
    cfg = compose_cfg(overrides(root, "text=cached", "encoder.max_length=64"))
    with pytest.raises(TextCacheError, match="max_length: cache 128 vs run 64"):
        build_module(cfg)
    with pytest.raises(SystemExit):
        run(cfg)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "max_length" in err and "precompute_text_embeddings.py" in err


def test_missing_prompt_and_key_are_refused(cached):
    root, cfg, _ = cached
    cache = TextCache(build_datamodule(cfg).train_urls(), encoder_identity(cfg), rebuild="CMD")
    with pytest.raises(TextCacheError, match="prompt 'a unicorn' is not in the text cache.*re-run precompute"):
        cache.prompt_embeddings(required=["a unicorn"])
    stage = pickle.loads(pickle.dumps(cache.attach()))  # picklable, for dataloader workers and ddp_spawn
    url = next(iter(cache.files))
    with pytest.raises(TextCacheError, match="sample 'nope' of shard"):
        list(stage([{"__url__": url, "__key__": "nope", "txt": b"a red circle"}]))


@pytest.mark.slow
def test_changed_shard_is_refused(tmp_path):
    """data=webdataset shards, cached in bfloat16 by the command line; regenerated or modified shards are refused."""
    shards = tmp_path / "shards"
    write_shards(ShapesWorld(resolution=16), shards, n_samples=16, samples_per_shard=8, seed=1)
    data = [
        "data=webdataset",
        f"data.urls='{shards}/shapes-{{000000..000001}}.tar'",
        "data.eval_prompts=[a red circle]",
    ]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *data, "precompute.dtype=bfloat16", f"hydra.run.dir={tmp_path}/hydra"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    cfg = compose_cfg(data + ["text=cached"])
    assert build_datamodule(cfg).text_cache.storage_dtype == "bfloat16"

    write_shards(ShapesWorld(resolution=16), shards, n_samples=16, samples_per_shard=8, seed=2)  # other samples
    with pytest.raises(TextCacheError, match=r"shard .*shapes-000000.tar changed since its text cache was built"):
        build_datamodule(cfg)

    rebuilt = precompute_script.precompute(compose_cfg(data), progress=False)  # float16 now
    assert rebuilt["shards_encoded"] == 2
    assert build_datamodule(cfg).text_cache.storage_dtype == "float16"
    with open(shards / "shapes-000001.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(TextCacheError, match=r"shapes-000001.tar changed .*size"):
        build_datamodule(cfg)
