"""Probe the frozen text encoder (Imagen §2.1): per hidden layer, how well a linear probe reads, from the embedding
of an object's shape word, its place relative to the other object, its own colour and the other object's colour,
on captions whose object pairs the probe never saw, and how often it reads the other object's value instead.

    python scripts/probe_encoder.py
    python scripts/probe_encoder.py encoder=minilm_random

Writes `probe.json` (per target, one row per layer: train and held-out accuracy with its 95 % interval, the swap
rate; and per layer the similarity of the two objects' tokens) and `probe.png` into its run directory, and prints
the tables.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from imagen.build import build_text_encoder
from imagen.cli import check_overrides, run_script
from imagen.eval.encoder_probe import (
    TARGETS,
    pair_similarity,
    plot_probes,
    probe_examples,
    probe_layers,
    token_features,
)

log = logging.getLogger(__name__)


def probe(cfg: DictConfig, out_dir: Path) -> dict[str, list[dict]]:
    unknown = [t for t in cfg.targets if t not in TARGETS]
    if unknown or not cfg.targets:
        raise ValueError(f"unknown probe targets {unknown or '[]'}; valid: {', '.join(TARGETS)}")
    examples = probe_examples(cfg.n, cfg.seed, cfg.test_fraction)  # bad arguments fail before any loading
    encoder = build_text_encoder(cfg)
    features = token_features(encoder, examples, cfg.batch_size)  # (n_layers + 1, 2 n, dim)
    results = {t: probe_layers(features, examples, TARGETS[t], cfg.weight_decay, cfg.max_iter) for t in cfg.targets}
    encoder_cfg = OmegaConf.to_container(cfg.encoder, resolve=True)
    encoder_cfg.pop("layer", None)  # the probes read every layer, not the one a run would
    similarity = pair_similarity(features, examples)
    result = {"encoder": encoder_cfg, "n": cfg.n, "seed": cfg.seed, "targets": results, "similarity": similarity}
    (out_dir / "probe.json").write_text(json.dumps(result, indent=1))
    name = cfg.encoder.name.split("/")[-1]
    if cfg.encoder.get("random_init_seed") is not None:
        name += " (random weights)"
    plot_probes(results, out_dir / "probe.png", f"{name}: what an object's token says", similarity)
    for target, rows in results.items():
        print(f"\n{target}\n| layer | train | held-out pairs [95 % interval] | the other object's |\n|---|---|---|---|")
        for r in rows:
            lo, hi = r["test_interval"]
            print(f"| {r['layer']} | {r['train_accuracy']:.3f} | {r['test_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                  f"{r['test_swap']:.3f} |")  # fmt: skip
    print("\nthe two objects' tokens, mean cosine after removing the layer's mean token")
    print("| layer | same caption | different captions |\n|---|---|---|")
    for r in similarity:
        print(f"| {r['layer']} | {r['same_caption']:.3f} | {r['different_captions']:.3f} |")
    log.info("wrote %s and probe.png", out_dir / "probe.json")
    return results


@hydra.main(config_path="../conf", config_name="probe_encoder", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(probe, cfg)


if __name__ == "__main__":
    check_overrides()
    torch.set_float32_matmul_precision("high")
    main()
