"""Training throughput and peak memory of any config, as one JSON line.

    python scripts/benchmark.py unet=tiny image_size=64 bench.steps=20 bench.batch_size=32
    python scripts/benchmark.py unet=base_300m image_size=64 trainer=gpu bench.batch_size=16

Times full optimiser steps (text encoding, forward, backward, update) on a fixed batch of shapes-world
captions and random images, after `bench.warmup` steps; reports the median and spread over `bench.repeats`
timed windows. Data loading is excluded (measure it separately); peak memory is the CUDA allocator peak on
GPU and the process's peak RSS on CPU. On CPU, compare ratios from one run, not absolute times.

    python scripts/benchmark.py bench.text_cache=true bench.batch_size=16 bench.steps=5 bench.repeats=5

`bench.text_cache=true` adds the text-embedding cache (Imagen §2.1) on the same config, in one run: the
encoder's captions/s on distinct shapes-world captions as the precompute script encodes them (batches of
`bench.encode_batch`), and the training step with embeddings from the cache (stored in float16, padded per
step as collate does) vs online encoding -- with the encoder's caption memo off (`online_no_memo`) and as
configured (`online`, the main figures; the fixed batch makes a memo hit 100%). The batch is then
distinct shapes-world captions, and the modes' timed windows are interleaved, in rotating order (a shared
CPU drifts).

    python scripts/benchmark.py bench.mode=sample sampler=ddim sampler.steps=50 bench.batch_size=8
    python scripts/benchmark.py bench.mode=sample sampler=ancestral sampler.steps=1000 bench.batch_size=8

`bench.mode=sample` times sampling instead (§2.2, §2.3): whole sampler runs of `bench.batch_size` images with
classifier-free guidance at `guidance_weight` (one batched forward of 2B per step) and the configured
thresholding, random weights (the time does not depend on them); reports seconds per image and per step.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imagen.build import build_module, build_text_encoder
from imagen.cli import check_overrides
from imagen.data.shapes import ShapesWorld
from imagen.text.cache import STORAGE_DTYPES, encode_rows, pad_rows

CONF = str(Path(__file__).resolve().parents[1] / "conf")
CAPTIONS = [
    "a red circle and a blue square",
    "three yellow triangles",
    "a green square left of a purple circle",
    "one orange circle",
]
DEFAULTS = {
    "mode": "train",
    "steps": 10,
    "warmup": 3,
    "repeats": 3,
    "batch_size": 32,
    "device": "auto",
    "precision": "auto",
    "text_cache": False,
    "encode_batch": 64,
    "encode_captions": 512,
    "cache_dtype": "float16",
}


def world_captions(n: int) -> list[str]:
    """n distinct training captions of the shapes world (drawn without rendering)."""
    world, out, i = ShapesWorld(), {}, 0
    while len(out) < n:
        out[world.sample(i, render=False).caption] = None
        i += 1
    return list(out)


def encode_throughput(encoder, captions: list[str], batch: int, repeats: int, sync) -> float:
    """Median captions/s of encoding distinct captions as the precompute script does (after one warm-up pass)."""
    encode_rows(encoder, captions[:batch], batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode_rows(encoder, captions, batch)
        sync()
        rates.append(len(captions) / (time.perf_counter() - start))
    return statistics.median(rates)


def benchmark(cfg) -> dict:
    bench = {**DEFAULTS, **OmegaConf.to_container(cfg.get("bench", {}))}
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if bench["device"] == "auto" else bench["device"]
    )
    precision = ("bf16" if device.type == "cuda" else "fp32") if bench["precision"] == "auto" else bench["precision"]
    text_cache = bool(bench["text_cache"])
    encoder = build_text_encoder(cfg) if text_cache else None
    module = build_module(cfg, text_encoder=encoder).to(device)
    module.text_encoder.to(device)
    opt = instantiate(cfg.optim.optimizer)(module.unet.parameters())
    b, s = bench["batch_size"], cfg.image_size
    captions = (
        world_captions(max(b, bench["encode_captions"]))
        if text_cache
        else [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
    )
    batch = {"image": torch.rand(b, 3, s, s, device=device) * 2 - 1, "caption": captions[:b]}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memo_size = getattr(module.text_encoder, "memo_size", 0)
    cached_rows: list[torch.Tensor] = []

    def step(mode: str = "online"):
        text = {}
        if mode == "cache":  # what the data pipeline hands the module: stored rows, padded by collate
            emb, mask = pad_rows(cached_rows)
            text = {"text_emb": emb.to(device, non_blocking=True), "text_mask": mask.to(device, non_blocking=True)}
        if text_cache:
            module.text_encoder.memo_size = 0 if mode == "online_no_memo" else memo_size
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.compute_loss({**batch, **text})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    modes = ["online"]
    extra = {}
    if text_cache:
        modes += ["online_no_memo", "cache"]
        rows = encode_rows(module.text_encoder, batch["caption"], bench["encode_batch"])
        cached_rows = [r.to(STORAGE_DTYPES[bench["cache_dtype"]]) for r in rows]
        extra["encode_captions_per_s"] = round(
            encode_throughput(module.text_encoder, captions, bench["encode_batch"], bench["repeats"], sync), 1
        )
        extra.update(
            encode_batch=bench["encode_batch"], encode_captions=len(captions), cache_dtype=bench["cache_dtype"]
        )
    for mode in modes:
        for _ in range(bench["warmup"]):
            step(mode)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(bench["repeats"]):
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # interleaved and rotated: drift hits all alike
            start = time.perf_counter()
            for _ in range(bench["steps"]):
                step(mode)
            sync()
            windows[mode].append((time.perf_counter() - start) / bench["steps"])
    per_step = windows["online"]
    med = statistics.median(per_step)
    for mode in modes[1:]:
        extra[f"{mode}_median_s_per_step"] = round(statistics.median(windows[mode]), 5)
        extra[f"{mode}_images_per_s"] = round(b / statistics.median(windows[mode]), 2)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "unet": cfg.unet.get("_target_", "").rsplit(".", 1)[-1],
        "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
        "image_size": s,
        "batch_size": b,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
        "median_s_per_step": round(med, 5),
        "min_s_per_step": round(min(per_step), 5),
        "max_s_per_step": round(max(per_step), 5),
        "images_per_s": round(b / med, 2),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "process_max_rss",
        "steps_timed": bench["steps"] * bench["repeats"],
        **extra,
    }


def sampling_benchmark(cfg) -> dict:
    """Seconds per image of the configured sampler (`bench.repeats` whole runs after a 5-step warm-up run)."""
    bench = {**DEFAULTS, **OmegaConf.to_container(cfg.get("bench", {}))}
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if bench["device"] == "auto" else bench["device"]
    )
    precision = ("bf16" if device.type == "cuda" else "fp32") if bench["precision"] == "auto" else bench["precision"]
    module = build_module(cfg).to(device).eval()
    module.text_encoder.to(device)
    b = bench["batch_size"]
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sampler = instantiate(cfg.sampler)

    low = module.stage.low_res_size  # an SR stage upsamples random low-resolution images (the time is the same)
    lowres = None if low is None else torch.rand(b, 3, low, low, device=device) * 2 - 1

    def run(seed: int, sampler=sampler) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            module.sample(captions, guidance_weight=cfg.guidance_weight, sampler=sampler, seed=seed, lowres=lowres)
        sync()
        return time.perf_counter() - start

    warm = copy.copy(sampler)
    warm.steps = min(sampler.steps, 5)  # warm-up: a short run of the same sampler
    run(0, warm)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [run(r + 1) for r in range(bench["repeats"])]
    med = statistics.median(times)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "mode": "sample",
        "unet": cfg.unet.get("_target_", "").rsplit(".", 1)[-1],
        "sampler": type(sampler).__name__,
        "sampler_steps": sampler.steps,
        "thresholding": type(module.thresholding).__name__,
        "guidance_weight": cfg.guidance_weight,
        "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
        "image_size": cfg.image_size,
        "batch_size": b,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
        "median_s_per_image": round(med / b, 4),
        "median_s_per_run": round(med, 3),
        "median_ms_per_step": round(1000 * med / sampler.steps, 2),
        "min_s_per_run": round(min(times), 3),
        "max_s_per_run": round(max(times), 3),
        "runs_timed": len(times),
        "peak_memory_mb": round(peak / 2**20, 1),
    }


MODES = {"train": benchmark, "sample": sampling_benchmark}


def main(argv: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[a for a in argv if not a.startswith("bench.")])
    OmegaConf.set_struct(cfg, False)
    cfg.bench = OmegaConf.from_dotlist([a for a in argv if a.startswith("bench.")]).get("bench", {})
    mode = cfg.bench.get("mode", "train")
    if mode not in MODES:
        print(f"error: bench.mode={mode!r} is not one of {', '.join(MODES)}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"overrides": argv, **MODES[mode](cfg)}))


if __name__ == "__main__":
    check_overrides(sys.argv[1:], hydra_app=False, skip=("bench.",))  # bench.* never reach Hydra
    main(sys.argv[1:])
