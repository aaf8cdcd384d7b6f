"""Training throughput and peak memory of any config, as one JSON line.

    python scripts/benchmark.py unet=tiny image_size=64 bench.steps=20 bench.batch_size=32
    python scripts/benchmark.py unet=base_300m image_size=64 trainer=gpu bench.batch_size=16

Times full optimiser steps (text encoding, forward, backward, update) on a fixed batch of shapes-world
captions and random images, after `bench.warmup` steps; reports the median and spread over `bench.repeats`
timed windows. Data loading is excluded (measure it separately); peak memory is the CUDA allocator peak on
GPU and the process's peak RSS on CPU. On CPU, compare ratios from one run, not absolute times.
"""

from __future__ import annotations

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

from imagen.build import build_module

CONF = str(Path(__file__).resolve().parents[1] / "conf")
CAPTIONS = ["a red circle and a blue square", "three yellow triangles", "a green square left of a purple circle",
            "one orange circle"]
DEFAULTS = {"steps": 10, "warmup": 3, "repeats": 3, "batch_size": 32, "device": "auto", "precision": "auto"}


def benchmark(cfg) -> dict:
    bench = {**DEFAULTS, **OmegaConf.to_container(cfg.get("bench", {}))}
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if bench["device"] == "auto" else bench["device"])
    precision = ("bf16" if device.type == "cuda" else "fp32") if bench["precision"] == "auto" else bench["precision"]
    module = build_module(cfg).to(device)
    module.text_encoder.to(device)
    opt = instantiate(cfg.optim.optimizer)(module.unet.parameters())
    b, s = bench["batch_size"], cfg.image_size
    batch = {"image": torch.rand(b, 3, s, s, device=device) * 2 - 1, "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(bench["warmup"]):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_step = []
    for _ in range(bench["repeats"]):
        start = time.perf_counter()
        for _ in range(bench["steps"]):
            step()
        sync()
        per_step.append((time.perf_counter() - start) / bench["steps"])
    med = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "unet": cfg.unet.get("_target_", "").rsplit(".", 1)[-1], "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
        "image_size": s, "batch_size": b, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "precision": precision,
        "median_s_per_step": round(med, 5), "min_s_per_step": round(min(per_step), 5), "max_s_per_step": round(max(per_step), 5),
        "images_per_s": round(b / med, 2), "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "process_max_rss",
        "steps_timed": bench["steps"] * bench["repeats"],
    }


def main(argv: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[a for a in argv if not a.startswith("bench.")])
    OmegaConf.set_struct(cfg, False)
    cfg.bench = OmegaConf.from_dotlist([a for a in argv if a.startswith("bench.")]).get("bench", {})
    print(json.dumps({"overrides": argv, **benchmark(cfg)}))


if __name__ == "__main__":
    main(sys.argv[1:])
