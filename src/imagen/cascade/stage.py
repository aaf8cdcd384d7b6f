"""The stages of Imagen's cascade (Saharia et al. 2022, §2.4): a base model and super-resolution models.

A stage says what its network sees besides the noisy image, the time and the text:
- `Base`: nothing (the 64x64 model, §2.5).
- `SuperResolution`: the low-resolution image, corrupted by noise conditioning augmentation, upsampled to the
  output size and concatenated to the network's input channels, plus the augmentation level (§2.4). With a
  `crop_size` it trains on random crops of the high-resolution images (the 256->1024 model trains on 256x256
  crops, i.e. 64->256 crops of 1024 images, App. F.2) and samples the whole image: the network is fully
  convolutional where it has no self-attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imagen.cascade.noise_augmentation import NoAugmentation, NoiseAugmentation


def downsample(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size) by area averaging (an exact box filter for integer factors)."""
    return F.interpolate(x, size=(size, size), mode="area")


def upsample(x: Tensor, size: int) -> Tensor:
    """(B, C, h, w) -> (B, C, size, size), bilinear: the conditioning image of an SR stage."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Stage:
    """Interface of a cascade stage. `image_size` is the stage's output resolution."""

    low_res_size: int | None = None
    takes_lowres = False  # whether sampling needs the stage below's images (a cascade's lower checkpoints)

    def __init__(self, image_size: int):
        self.image_size = image_size

    def can_sample(self, aug_level: float) -> bool:
        """Whether this stage samples at a noise-augmentation level (an evaluation sweep skips the others)."""
        return aug_level == 0

    def observe_training_batch(self, batch: dict[str, Any]) -> None:
        """Called with every training batch before its step (an SR stage keeps the first one for its grid)."""

    def validation_samples(
        self, sample: Callable[..., Tensor], batch: dict[str, Any], batch_idx: int
    ) -> dict[str, Any]:
        """The validation grid's images of one held-out batch, drawn with `sample(captions, seed=..., lowres=...)`
        (the module's EMA sampler): {"images": (N, 3, H, W), "captions": N captions[, "per_row": columns]}."""
        images = sample(batch["caption"], seed=batch_idx)
        return {"images": images.cpu(), "captions": list(batch["caption"])}

    def unet_kwargs(self) -> dict:
        """Extra constructor arguments of the stage's U-Net (its training resolution, extra input channels)."""
        return {"image_size": self.image_size}

    def training_inputs(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(x0 target (B, 3, s, s), extra network inputs) from a batch of training images (B, 3, H, W)."""
        return images, {}

    def sampling_inputs(
        self, batch: int, lowres: Tensor | None, aug_level: float, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Extra network inputs for sampling `batch` images, given the stage below's images."""
        if lowres is not None:
            raise ValueError("a base stage samples from text alone: it takes no low-resolution images")
        return {}


class Base(Stage):
    """The base text-to-image model (§2.5): no image conditioning."""

    def __init__(self, image_size: int, noise_aug: NoiseAugmentation | None = None):
        super().__init__(image_size)
        if noise_aug is not None and not isinstance(noise_aug, NoAugmentation):
            raise ValueError(
                "noise_aug applies to super-resolution stages only: use noise_aug=none with a base "
                "stage, or a super-resolution stage (stage=sr64|sr128|sr256|sr1024)"
            )


class SuperResolution(Stage):
    """A text-conditional super-resolution stage low_res_size -> image_size (§2.4). Its validation grid super-resolves
    the first training batch's images downsampled again: low-res | sample | truth.

    Args:
        image_size: output resolution (sampling); training images come at this size.
        low_res_size: resolution of the stage below.
        noise_aug: noise conditioning augmentation (none / gaussian).
        crop_size: train on random crop_size x crop_size crops (None: whole images).
    """

    def __init__(
        self,
        image_size: int,
        low_res_size: int,
        noise_aug: NoiseAugmentation | None = None,
        crop_size: int | None = None,
    ):
        super().__init__(image_size)
        if not 0 < low_res_size < image_size or image_size % low_res_size:
            raise ValueError(
                f"stage.low_res_size must divide image_size {image_size} and be smaller, got {low_res_size}"
            )
        self.factor = image_size // low_res_size
        if crop_size is not None and (not 0 < crop_size <= image_size or crop_size % self.factor):
            raise ValueError(
                f"stage.crop_size must be in (0, {image_size}] and a multiple of the upsampling factor "
                f"{self.factor}, got {crop_size}"
            )
        self.low_res_size, self.crop_size = low_res_size, crop_size
        self.noise_aug = noise_aug or NoAugmentation()
        self._reference: tuple[Tensor, list[str]] | None = None  # (images, captions) of the first training batch

    takes_lowres = True

    def can_sample(self, aug_level: float) -> bool:
        return self.noise_aug.can_sample(aug_level)

    def observe_training_batch(self, batch: dict[str, Any]) -> None:
        if self._reference is None:
            n = min(len(batch["caption"]), 8)
            self._reference = (batch["image"][:n].detach().clone(), list(batch["caption"][:n]))

    def validation_samples(
        self, sample: Callable[..., Tensor], batch: dict[str, Any], batch_idx: int
    ) -> dict[str, Any]:
        if self._reference is None:  # before the first training batch (Lightning's sanity check)
            return {"images": torch.empty(0, 3, self.image_size, self.image_size), "captions": []}
        truth, captions = self._reference  # (n, 3, H, W) whole training images, not crops
        lowres = downsample(truth, self.low_res_size)
        images = sample(captions, seed=batch_idx, lowres=lowres)
        rows = torch.stack([upsample(lowres, self.image_size), images, truth], dim=1)  # (n, 3 columns, 3, H, W)
        return {"images": rows.flatten(0, 1).cpu(), "captions": [c for c in captions for _ in range(3)], "per_row": 3}

    def unet_kwargs(self) -> dict:
        return {"image_size": self.crop_size or self.image_size, "lowres_channels": 3}

    def condition(self, lowres: Tensor, aug_level: Tensor) -> dict[str, Tensor]:
        return {"lowres": upsample(lowres, self.image_size), "aug_level": aug_level}

    def training_inputs(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"a {self.low_res_size}->{self.image_size} stage trains on {self.image_size}px images, "
                f"got {tuple(images.shape[-2:])} (set data resolution = image_size)"
            )
        lowres, aug_level = self.noise_aug.train(downsample(images, self.low_res_size))  # (B, 3, l, l), (B,)
        inputs = self.condition(lowres, aug_level)
        if self.crop_size is None or self.crop_size == self.image_size:
            return images, inputs
        # One random crop per sample, the same window of the target and of the upsampled conditioning image.
        b, c = images.shape[0], self.crop_size
        top, left = (torch.randint(0, self.image_size - c + 1, (b,), device=images.device) for _ in range(2))
        rows = (top[:, None] + torch.arange(c, device=images.device))[:, None, :, None]  # (B, 1, c, 1)
        cols = (left[:, None] + torch.arange(c, device=images.device))[:, None, None, :]  # (B, 1, 1, c)
        batch_idx = torch.arange(b, device=images.device)[:, None, None, None]
        chan = torch.arange(3, device=images.device)[None, :, None, None]

        def crop(x: Tensor) -> Tensor:
            return x[batch_idx, chan, rows, cols]  # (B, 3, c, c)

        return crop(images), {"lowres": crop(inputs["lowres"]), "aug_level": aug_level}

    def sampling_inputs(
        self, batch: int, lowres: Tensor | None, aug_level: float, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        if lowres is None:
            raise ValueError(
                f"a {self.low_res_size}->{self.image_size} super-resolution stage needs the stage below's "
                "images (give the cascade's checkpoints in order: ckpt='[BASE,SR,...]')"
            )
        if lowres.shape[0] != batch or tuple(lowres.shape[1:]) != (3, self.low_res_size, self.low_res_size):
            raise ValueError(
                f"this stage upsamples (B, 3, {self.low_res_size}, {self.low_res_size}) images, got "
                f"{tuple(lowres.shape)}"
            )
        return self.condition(*self.noise_aug.sample(lowres, aug_level, generator))
