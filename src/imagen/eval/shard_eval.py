"""Real-data evaluation from webdataset shards (Imagen §4.2: zero-shot FID on COCO captions and images).

The first `n` samples of the shards (img2dataset layout, read by the training pipeline: no pickle, corrupt
samples skipped and counted) give both the prompts (their captions) and the reference images for FID/KID
(`features=inception` for the paper's FID). Alignment is the CLIP score when a CLIP model is available.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imagen.data.pipeline import expand_urls, make_pipeline
from imagen.eval.metrics import clip_score, clip_score_metric
from imagen.eval.suite import EvalSuite


class ShardEval(EvalSuite):
    """Args: urls (shards, e.g. '/data/coco_val/{00000..00004}.tar'), n (samples), clip (CLIP folder/hub id
    or null)."""

    name = "shards"
    alignment_key = "clip_score"

    def __init__(self, urls: str, n: int = 1000, clip: str | None = None):
        if n < 2:
            raise ValueError(f"eval.n must be >= 2, got {n}")
        expand_urls(urls)  # a missing local shard is named now, before the model is loaded
        self.urls, self.n = urls, n
        self.clip = clip_score_metric(clip) if clip else None
        self.resolution: int | None = None
        self._samples: list[dict] | None = None
        self.skipped: dict[str, int] = {}

    def bind(self, train_config, image_size: int) -> ShardEval:
        self.resolution = image_size
        return self

    def _read(self) -> list[dict]:
        if self._samples is None:
            pipeline = make_pipeline(
                self.urls, self.resolution, training=False, node_splitter=None, worker_splitter=None
            )
            self._samples = []
            for sample in pipeline:
                self._samples.append({"caption": sample["caption"], "category": "all", "image": sample["image"]})
                if len(self._samples) == self.n:
                    break
            self.skipped = pipeline.skipped.as_dict()
            if len(self._samples) < 2:
                raise ValueError(
                    f"eval.urls={self.urls} gave {len(self._samples)} usable samples (skipped: {self.skipped})"
                )
        return self._samples

    def prompts(self) -> list[dict]:
        return [{"caption": s["caption"], "category": s["category"]} for s in self._read()]

    def reference(self) -> Tensor:
        return torch.stack([s["image"] for s in self._read()])  # (N, 3, H, W) in [-1, 1]

    def score(self, images: Tensor, prompts: list[dict]) -> dict[str, float]:
        if self.clip is None:
            return {}
        return {"clip_score": clip_score(self.clip, images, [p["caption"] for p in prompts])}
