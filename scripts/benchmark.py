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

MFU: the training JSON has `flops_per_image` (the U-Net's training FLOPs per image, counted by torch's FLOP counter:
imagen.flops), `achieved_tflops`, `peak_tflops` (the device's bf16 dense peak; null for a device imagen.flops does not
know, e.g. any CPU) and `mfu` (null then too).

    python scripts/benchmark.py unet=base_300m image_size=64 bench.compare=[compile,channels_last,attention=xformers]

`bench.compare` times variants of the same weights in one process, their windows interleaved and rotated like the text
modes': the config as given (`baseline`) and each listed variant, a `+`-joined set of switches -- `compile`
(torch.compile the U-Net) / `eager`, `channels_last` / `contiguous`, `attention=NAME` (sdpa | xformers | math),
`cudnn_benchmark` (cuDNN picks convolution algorithms by timing them), `bf16` / `fp32` (bfloat16 autocast, as
Lightning's bf16-mixed) -- e.g. `compile+channels_last`. Each variant reports its step time, images/s, MFU and its ratio to the baseline under
`compare`; `warmup_s` includes the variant's compilation.

    python scripts/benchmark.py bench.mode=data bench.resolutions=[64,256] bench.workers=[0,2]

`bench.mode=data` measures the webdataset pipeline instead (imagen.data: WebDataModule's training loader, i.e. tar
read, JPEG decode, resize and crop, collate): images/s at each resolution and number of dataloader workers (0: one
worker's work, in the main process), and images/s per worker, to size `data.num_workers` against the training
step's images/s. Shards: `bench.urls` (img2dataset layout), else temporary ones written here with
`bench.data_samples` JPEGs of `bench.jpeg_size` (512x384, a typical LAION-sized image). Local shards after the
first pass are read from the page cache: disk and network are not measured.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import platform
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from imagen.build import build_module, build_text_encoder
from imagen.cli import check_overrides
from imagen.data.datamodule import WebDataModule, available_cpus
from imagen.data.shapes import ShapesWorld
from imagen.flops import mfu_report, training_flops_per_image
from imagen.models.attention import attention_backend, check_attention_backend
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
    "compare": [],
    # bench.mode=data
    "urls": None,
    "resolutions": [64, 256],
    "workers": [0],
    "batches": 10,
    "data_samples": 128,
    "data_shards": 4,
    "jpeg_size": [512, 384],
    "shuffle_buffer": 100,
}
SWITCHES = {"compile": ("compile", True), "eager": ("compile", False)}
SWITCHES |= {"channels_last": ("channels_last", True), "contiguous": ("channels_last", False)}
SWITCHES |= {"cudnn_benchmark": ("cudnn_benchmark", True)}  # cuDNN autotuning (Lightning's Trainer(benchmark=...))
SWITCHES |= {"bf16": ("precision", "bf16"), "fp32": ("precision", "fp32")}  # bfloat16 autocast (Lightning's bf16-mixed)


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


def parse_variant(name: str, baseline: dict) -> dict:
    """The settings {"compile", "channels_last", "attention", "cudnn_benchmark", "precision"} of a `bench.compare` variant: the
    baseline's, with the variant's `+`-joined switches applied."""
    settings = dict(baseline)
    for switch in str(name).split("+"):
        key, eq, value = switch.partition("=")
        if key == "attention" and eq:
            settings["attention"] = check_attention_backend(value)
        elif switch in SWITCHES:
            field, on = SWITCHES[switch]
            settings[field] = on
        else:
            raise ValueError(
                f"bench.compare: unknown switch {switch!r} in {name!r}; switches: {', '.join(SWITCHES)}, attention=NAME"
            )
    return settings


def set_memory_format(unet: torch.nn.Module, opt: torch.optim.Optimizer, fmt: torch.memory_format) -> None:
    """The convolutions' weights and their optimiser state (same shape) in memory format `fmt`, in place (the same
    Parameter objects: the optimiser keeps them). State and weights in one format keep the foreach fast path."""
    for param in unet.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=fmt)
            for value in opt.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.data = value.data.contiguous(memory_format=fmt)


class Variants:
    """One module's U-Net switched between variants of the same weights: eager or compiled (one torch.compile
    wrapper, created on first use), memory format, attention backend."""

    def __init__(self, module, opt, channels_last: bool) -> None:
        self.module, self.opt, self.eager, self.compiled = module, opt, module.unet, None
        self.channels_last = channels_last

    @contextlib.contextmanager
    def active(self, settings: dict):
        if settings["channels_last"] != self.channels_last:
            fmt = torch.channels_last if settings["channels_last"] else torch.contiguous_format
            set_memory_format(self.eager, self.opt, fmt)
            self.channels_last = settings["channels_last"]
        if settings["compile"] and self.compiled is None:
            self.compiled = torch.compile(self.eager)
        self.module.unet = self.compiled if settings["compile"] else self.eager
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
        try:
            with attention_backend(self.eager, settings["attention"]):
                yield
        finally:
            self.module.unet = self.eager


def benchmark(cfg) -> dict:
    bench = {**DEFAULTS, **OmegaConf.to_container(cfg.get("bench", {}))}
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if bench["device"] == "auto" else bench["device"]
    )
    precision = ("bf16" if device.type == "cuda" else "fp32") if bench["precision"] == "auto" else bench["precision"]
    text_cache = bool(bench["text_cache"])
    baseline = {
        "compile": bool(cfg.get("compile", False)),
        "channels_last": bool(cfg.get("channels_last", False)),
        "attention": cfg.unet.get("attention") or "sdpa",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),  # False unless set: Lightning's default too
        "precision": precision,
    }
    check_attention_backend(baseline["attention"])  # before the encoder is loaded: a bad backend fails at once
    compare = {str(name): parse_variant(name, baseline) for name in bench["compare"]}  # bad names: before building
    cfg.compile = False  # compilation is this script's (Variants), on the weights built here
    encoder = build_text_encoder(cfg) if text_cache else None
    module = build_module(cfg, text_encoder=encoder).to(device)
    module.text_encoder.to(device)
    opt = instantiate(cfg.optim.optimizer)(module.unet.parameters())
    variants = Variants(module, opt, baseline["channels_last"])
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
    text_len = module.encode(batch["caption"])[0].shape[1]  # tokens of the batch's captions, padded to the longest
    flops_per_image = training_flops_per_image(module.unet, text_len)

    def step(mode: str = "online", precision: str = precision):
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
    # Arms: (text mode, U-Net variant) pairs timed in interleaved windows; the baseline variant is the config's.
    arms = [(mode, "baseline") for mode in modes] + [("online", name) for name in compare]
    settings = {"baseline": baseline, **compare}
    warmup_s: dict[tuple[str, str], float] = {}
    failed: dict[str, str] = {}  # a variant that fails (e.g. a kernel that does not compile) is reported, not fatal
    for arm in list(arms):
        try:
            with variants.active(settings[arm[1]]):
                start = time.perf_counter()
                for _ in range(bench["warmup"]):
                    step(arm[0], settings[arm[1]]["precision"])
                sync()
                warmup_s[arm] = time.perf_counter() - start
        except Exception as err:  # any failure of a variant is reported; the baseline's is raised
            if arm[1] == "baseline":
                raise
            failed[arm[1]] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            arms.remove(arm)
            opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows: dict[tuple[str, str], list[float]] = {arm: [] for arm in arms}
    for r in range(bench["repeats"]):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:  # interleaved and rotated: drift hits all alike
            with variants.active(settings[arm[1]]):
                start = time.perf_counter()
                for _ in range(bench["steps"]):
                    step(arm[0], settings[arm[1]]["precision"])
                sync()
                windows[arm].append((time.perf_counter() - start) / bench["steps"])
    per_step = windows[("online", "baseline")]
    med = statistics.median(per_step)
    for mode in modes[1:]:
        extra[f"{mode}_median_s_per_step"] = round(statistics.median(windows[(mode, "baseline")]), 5)
        extra[f"{mode}_images_per_s"] = round(b / statistics.median(windows[(mode, "baseline")]), 2)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if compare:
        extra["compare"] = {}
        for name in ["baseline", *compare]:
            if name in failed:
                extra["compare"][name] = {**settings[name], "error": failed[name][:500]}
                continue
            median = statistics.median(windows[("online", name)])
            extra["compare"][name] = {
                **settings[name],
                "median_s_per_step": round(median, 5),
                "images_per_s": round(b / median, 2),
                "ratio": round(med / median, 3),  # images/s relative to the baseline (> 1: faster)
                "mfu": mfu_report(flops_per_image, b / median, device_name)["mfu"],
                "warmup_s": round(warmup_s[("online", name)], 2),
            }
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
        "device": device_name,
        "threads": torch.get_num_threads(),
        **baseline,
        "median_s_per_step": round(med, 5),
        "min_s_per_step": round(min(per_step), 5),
        "max_s_per_step": round(max(per_step), 5),
        "images_per_s": round(b / med, 2),
        "text_len": text_len,
        **mfu_report(flops_per_image, b / med, device_name),
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
    check_attention_backend(cfg.unet.get("attention"))  # before the encoder is loaded
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


def write_shards(folder: Path, n_samples: int, n_shards: int, size: tuple[int, int]) -> list[str]:
    """img2dataset-style shards in `folder`: KEY.jpg (a size[0] x size[1] JPEG at quality 90, smooth colour
    gradients plus noise: the size and decode cost of a photo, ~70 KB at 512x384), KEY.txt, KEY.json."""
    rng = np.random.default_rng(0)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    per_shard, urls = -(-n_samples // n_shards), []
    for shard in range(n_shards):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(shard * per_shard, min(n_samples, (shard + 1) * per_shard)):
                freq, phase = rng.uniform(2, 12, (2, 3)), rng.uniform(0, 2 * np.pi, 3)
                img = 127 + 60 * np.sin(xx[..., None] * freq[0] + phase) + 60 * np.cos(yy[..., None] * freq[1])
                img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # (H, W, 3)
                jpg = io.BytesIO()
                Image.fromarray(img).save(jpg, format="JPEG", quality=90)
                key = f"{shard:05d}{i:04d}"
                meta = {"key": key, "width": width, "height": height}
                for ext, data in (
                    ("jpg", jpg.getvalue()),
                    ("txt", f"a photo, number {i}".encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


def loader_throughput(urls, resolution: int, workers: int, bench: dict) -> dict:
    """images/s of WebDataModule's training loader (bench.repeats windows of bench.batches batches, median), after
    bench.warmup batches (the first one starts the workers and fills the shuffle buffer)."""
    b = bench["batch_size"]
    datamodule = WebDataModule(
        urls=urls, resolution=resolution, batch_size=b, num_workers=workers, shuffle_buffer=bench["shuffle_buffer"]
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(max(bench["warmup"], 1)):
        next(batches)
    first = time.perf_counter() - start
    windows = []
    for _ in range(bench["repeats"]):
        start = time.perf_counter()
        for _ in range(bench["batches"]):
            next(batches)
        windows.append((time.perf_counter() - start) / bench["batches"])
    del batches, loader  # stops the workers
    rate = b / statistics.median(windows)
    return {
        "resolution": resolution,
        "num_workers": workers,
        "images_per_s": round(rate, 1),
        "images_per_s_per_worker": round(rate / max(workers, 1), 1),  # 0 workers: the main process is the worker
        "min_images_per_s": round(b / max(windows), 1),
        "max_images_per_s": round(b / min(windows), 1),
        "warmup_s": round(first, 3),
    }


def data_benchmark(cfg) -> dict:
    """images/s that the webdataset pipeline delivers per resolution and number of dataloader workers."""
    bench = {**DEFAULTS, "batch_size": 32, "warmup": 2, **OmegaConf.to_container(cfg.get("bench", {}))}
    resolutions, workers = (
        [int(v) for v in (x if isinstance(x, list) else [x])] for x in (bench["resolutions"], bench["workers"])
    )
    with tempfile.TemporaryDirectory(prefix="imagen-bench-shards-") as tmp:
        if bench["urls"]:
            urls, source = bench["urls"], "bench.urls"
        else:
            size = tuple(int(v) for v in bench["jpeg_size"])
            urls = write_shards(Path(tmp), bench["data_samples"], bench["data_shards"], size)
            source = f"temporary: {bench['data_samples']} JPEGs {size[0]}x{size[1]} in {len(urls)} shards"
        results = [loader_throughput(urls, r, w, bench) for r in resolutions for w in workers]
    return {
        "mode": "data",
        "shards": source,
        "batch_size": bench["batch_size"],
        "cpus": available_cpus(),
        "batches_timed": bench["batches"] * bench["repeats"],
        "results": results,
    }


MODES = {"train": benchmark, "sample": sampling_benchmark, "data": data_benchmark}


def main(argv: list[str]) -> None:
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # as training does (imagen.run): TF32 matmuls for float32
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[a for a in argv if not a.startswith("bench.")])
    OmegaConf.set_struct(cfg, False)
    cfg.bench = OmegaConf.from_dotlist([a for a in argv if a.startswith("bench.")]).get("bench", {})
    mode = cfg.bench.get("mode", "train")
    if mode not in MODES:
        print(f"error: bench.mode={mode!r} is not one of {', '.join(MODES)}", file=sys.stderr)
        sys.exit(2)
    try:
        result = MODES[mode](cfg)
    except ValueError as err:  # a bad bench.* or config value: one line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"overrides": argv, **result}))


if __name__ == "__main__":
    check_overrides(sys.argv[1:], hydra_app=False, skip=("bench.",))  # bench.* never reach Hydra
    main(sys.argv[1:])
