"""The LightningModule of one Imagen diffusion model of the cascade: the base model or a super-resolution stage
(§2, §2.4, App. A, F).

Training step: encode captions with the frozen text encoder (§2.1) -- or take their embeddings, computed
offline, from the batch (`text_emb`, `text_mask`; `text=cached`, see imagen.text.cache) -- drop the
condition with p_uncond for classifier-free guidance (§2.2), noise the image at t ~ U(0, 1) and regress the
parameterisation's target (App. A). What the network sees besides the text -- nothing for the base model, the
noise-augmented low-resolution image for an SR stage -- and the training crop come from the `stage`
(imagen.cascade.stage). Validation step: sample with the EMA weights (the EMA callback, a Lightning WeightAveraging, swaps them
in for validation) and return the images for the grid callback: the held-out prompts for a base model; for an
SR stage, the first training batch's images downsampled and super-resolved again (low-res | sample | truth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from imagen.cascade.stage import Base, Stage
from imagen.diffusion.denoiser import GuidedDenoiser
from imagen.diffusion.guidance import drop_condition
from imagen.diffusion.loss import DiffusionLoss, LossWeight
from imagen.diffusion.parameterization import Parameterization
from imagen.diffusion.schedule import LogSNRSchedule
from imagen.diffusion.thresholding import Thresholding
from imagen.lr_schedule import WarmupCosine


class Frozen:
    """Holds the frozen text encoder outside the module tree: not a parameter, not in the optimiser, not in
    checkpoints, and shared (not copied) by the EMA copy of the module."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo):
        return self


class ImagenModule(pl.LightningModule):
    """One text-conditional diffusion model of the cascade.

    Args:
        unet: the denoising network, net(z (B,C,H,W), t (B,), emb (B,L,D), mask (B,L)) -> (B,C,H,W).
        text_encoder: the frozen encoder, captions -> (emb, mask); with a text cache, the eval prompts' cached
            embeddings (imagen.text.cache.PromptEmbeddings), which the sampling path looks captions up in.
        schedule, parameterization: the diffusion (App. A).
        optimizer: a partial optimiser (torch.optim.Adafactor / Adam) awaiting the parameters.
        p_uncond: probability of dropping the text for classifier-free guidance (paper: 0.1).
        lr_schedule: step -> multiplier of the optimiser's learning rate (imagen.lr_schedule; torch's LambdaLR).
        sampler, thresholding, guidance_weight: what the validation grid samples with.
        model_config: the config that defines the network's weights (checked on resume).
        run_config: the whole resolved config of the run, saved in checkpoints so that sampling and evaluation
            rebuild the same model from the checkpoint alone.
        stage: the cascade stage (default: a base model at image_size).
        loss_weight: the loss's weight over noise levels (default: the paper's plain squared error).
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        schedule: LogSNRSchedule,
        parameterization: Parameterization,
        optimizer: Callable[..., torch.optim.Optimizer],
        p_uncond: float = 0.1,
        lr_schedule: Callable[[int], float] | None = None,
        sampler: Callable | None = None,
        thresholding: Thresholding | None = None,
        guidance_weight: float = 1.0,
        image_size: int = 64,
        model_config: dict | None = None,
        run_config: dict | None = None,
        stage: Stage | None = None,
        loss_weight: LossWeight | None = None,
    ):
        super().__init__()
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.unet = unet
        self._text_encoder = Frozen(text_encoder)
        self.schedule, self.parameterization = schedule, parameterization
        self.loss_fn = DiffusionLoss(schedule, parameterization, loss_weight)
        self.optimizer_factory = optimizer
        self.p_uncond = p_uncond
        self.lr_schedule = lr_schedule or WarmupCosine()
        self.sampler, self.thresholding, self.guidance_weight = sampler, thresholding, guidance_weight
        self.image_size = image_size
        self.model_config = model_config or {}
        self.run_config = run_config or {}
        self.stage = stage or Base(image_size)

    @property
    def text_encoder(self) -> nn.Module:
        return self._text_encoder.module

    def setup(self, stage: str) -> None:
        self.text_encoder.to(self.device)

    def on_fit_start(self) -> None:
        self.text_encoder.to(self.device)

    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        emb, mask = self.text_encoder(captions)  # (B, L, D), (B, L)
        return emb.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- training (App. A, §2.2)
    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """The diffusion loss of a batch {"image": (B, 3, H, W) in [-1, 1], "caption": list[str]}; the captions'
        embeddings are taken from the batch ("text_emb" (B, L, D), "text_mask" (B, L)) when it has them (§2.1)."""
        text = (batch["text_emb"], batch["text_mask"]) if "text_emb" in batch else self.encode(batch["caption"])
        emb, mask = drop_condition(*text, self.p_uncond)
        x, inputs = self.stage.training_inputs(batch["image"])  # target (crop), low-res conditioning (SR)
        return self.loss_fn(lambda z_t, t: self.unet(z_t, t, emb, mask, **inputs), x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        loss = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.unet.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- sampling (§2.2, §2.3)
    @torch.no_grad()
    def sample(
        self,
        captions: list[str],
        guidance_weight: float | None = None,
        sampler=None,
        thresholding=None,
        seed: int = 0,
        lowres: Tensor | None = None,
        aug_level: float = 0.0,
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] for the captions; deterministic given the seed. An SR stage takes the
        stage below's images `lowres` (B, 3, h, w) in [-1, 1], noise-augmented at `aug_level` (§2.4)."""
        emb, mask = self.encode(captions)
        g = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn(len(captions), 3, self.image_size, self.image_size, device=self.device, generator=g)
        lowres = None if lowres is None else lowres.to(self.device, torch.float32)
        inputs = self.stage.sampling_inputs(len(captions), lowres, aug_level, g)
        denoiser = GuidedDenoiser(
            self.unet,
            self.schedule,
            self.parameterization,
            emb,
            mask,
            self.guidance_weight if guidance_weight is None else guidance_weight,
            thresholding or self.thresholding,
            **inputs,
        )
        return (sampler or self.sampler)(denoiser, self.schedule, z, g).clamp(-1, 1)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.stage.observe_training_batch(batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.stage.validation_samples(self.sample, batch, batch_idx)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["imagen_model_config"] = self.model_config
        checkpoint["imagen_config"] = self.run_config
