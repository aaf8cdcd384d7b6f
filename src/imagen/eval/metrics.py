"""Image metrics of an evaluation: FID and KID (torchmetrics, pluggable features), CLIP score (torchmetrics,
with the wrapper transformers 5 needs) and saturation statistics (what thresholding changes, §2.3).

Images everywhere here are (N, 3, H, W) float in [-1, 1], as the samplers return them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], quantised to 8 bits like a saved PNG (so real and generated images match)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


def saturation(images: Tensor) -> dict[str, float]:
    """Fraction of pixel values at the ends of the range after 8-bit quantisation (0 or 255): the
    over-saturation that high guidance weights cause without thresholding (§2.3, Fig. A.31)."""
    u = (to_unit(images) * 255).round()
    low, high = (u == 0).float().mean().item(), (u == 255).float().mean().item()
    return {"saturated": low + high, "saturated_low": low, "saturated_high": high}


class FidKid:
    """FID and KID between a fixed reference set and one generated set at a time.

    The reference features are kept across `reset_fake()` calls, so a guidance sweep extracts them once.
    KID's subset size is capped by the number of samples (unbiased at any size; FID is biased at small n,
    so compare FIDs only at equal n, which metrics.json records).
    """

    def __init__(self, features: nn.Module, kid_subset_size: int = 100, kid_subsets: int = 50):
        self.features = features
        self.name = getattr(features, "name", type(features).__name__)
        self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets
        self.fid = FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False)
        self._real: list[Tensor] = []
        self._fake: list[Tensor] = []

    def update_real(self, images: Tensor) -> None:
        x = to_unit(images)
        self.fid.update(x, real=True)
        self._real.append(x)

    def update_fake(self, images: Tensor) -> None:
        x = to_unit(images)
        self.fid.update(x, real=False)
        self._fake.append(x)

    def reset_fake(self) -> None:
        self.fid.reset()  # keeps the real statistics (reset_real_features=False)
        self._fake = []

    def compute(self) -> dict[str, float]:
        real, fake = torch.cat(self._real), torch.cat(self._fake)
        subset = min(self.kid_subset_size, len(real), len(fake))
        kid = KernelInceptionDistance(
            feature=self.features, subsets=self.kid_subsets, subset_size=subset, normalize=True
        )
        kid.update(real, real=True)
        kid.update(fake, real=False)
        kid_mean, kid_std = kid.compute()
        return {
            "fid": float(self.fid.compute()),
            "kid": float(kid_mean),
            "kid_std": float(kid_std),
            "kid_subset_size": subset,
        }


class PooledCLIP(nn.Module):
    """A transformers CLIPModel whose get_image_features / get_text_features return the projected pooled
    tensor, as torchmetrics' CLIPScore expects (transformers 5 returns a ModelOutput instead)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _pooled(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self._pooled(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def clip_score_metric(path: str):
    """torchmetrics' CLIPScore on the CLIP model in `path` (a local folder or a hub id available locally).

    Raises OSError naming the path when the model cannot be loaded (offline, no local copy)."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    def load():
        try:
            return PooledCLIP(CLIPModel.from_pretrained(path).eval()), CLIPProcessor.from_pretrained(path)
        except OSError as err:
            where = "folder" if Path(path).exists() else "hub model (not available locally)"
            raise OSError(
                f"CLIP score: cannot load the CLIP {where} {path!r} ({str(err).splitlines()[0]}); give "
                "eval.clip=<local folder> or eval.clip=null to skip the CLIP score"
            ) from None

    return CLIPScore(model_name_or_path=load)


def clip_score(metric, images: Tensor, captions: list[str], batch_size: int = 64) -> float:
    """Mean CLIP score (100 x cosine, torchmetrics) of images and their captions."""
    metric.reset()
    for i in range(0, len(captions), batch_size):
        metric.update(list((to_unit(images[i : i + batch_size]) * 255).to(torch.uint8)), captions[i : i + batch_size])
    return float(metric.compute())
