"""Probe the frozen text encoder (Imagen §2.1) for spatial relations: per hidden layer, how well a linear probe reads
each object's direction (left / right / above / below of the other object) from the embedding of its shape word,
on captions whose object pairs the probe never saw.

    python scripts/probe_relations.py
    python scripts/probe_relations.py encoder=minilm_random

Writes `probe.json` (one row per layer: train and held-out accuracy with its 95 % interval, the inverse-direction
rate) and `probe.png` into its run directory, and prints the table. Chance is 1/4.
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
from imagen.eval.relation_probe import plot_probe, probe_examples, probe_layers, token_features

log = logging.getLogger(__name__)


def probe(cfg: DictConfig, out_dir: Path) -> list[dict]:
    examples = probe_examples(cfg.n, cfg.seed, cfg.test_fraction)  # bad n / test_fraction fail before any loading
    encoder = build_text_encoder(cfg)
    features = token_features(encoder, examples, cfg.batch_size)  # (n_layers + 1, 2 n, dim)
    rows = probe_layers(features, examples, cfg.weight_decay, cfg.max_iter)
    encoder_cfg = OmegaConf.to_container(cfg.encoder, resolve=True)
    encoder_cfg.pop("layer", None)  # the probe reads every layer, not the one a run would
    result = {
        "encoder": encoder_cfg,
        "n": cfg.n,
        "seed": cfg.seed,
        "layers": rows,
    }
    (out_dir / "probe.json").write_text(json.dumps(result, indent=1))
    name = cfg.encoder.name.split("/")[-1]
    if cfg.encoder.get("random_init_seed") is not None:
        name += " (random weights)"
    plot_probe(rows, out_dir / "probe.png", f"{name}: where each object goes")
    print("| layer | train | held-out pairs [95 % interval] | inverse direction |\n|---|---|---|---|")
    for r in rows:
        lo, hi = r["test_interval"]
        print(f"| {r['layer']} | {r['train_accuracy']:.3f} | {r['test_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{r['test_inverse']:.3f} |")  # fmt: skip
    log.info("wrote %s and probe.png", out_dir / "probe.json")
    return rows


@hydra.main(config_path="../conf", config_name="probe_relations", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_script(probe, cfg)


if __name__ == "__main__":
    check_overrides()
    torch.set_float32_matmul_precision("high")
    main()
