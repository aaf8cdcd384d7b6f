"""Model FLOPs utilisation (MFU) of U-Net training: achieved FLOP/s over the device's bf16 dense peak.

- FLOPs: counted, never derived by hand, with torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``)
  over one forward of the U-Net (§2.5 base U-Net, App. B.1 Efficient U-Net) on the meta device -- the live
  module's parameters are swapped for meta tensors (``torch.func.functional_call``), so nothing is computed or
  allocated, whatever device the model is on -- with the `math` attention backend (plain matmuls, which the
  counter sees on every device; fused kernels are not counted on CPU). A training step is counted as 3 forwards
  (the backward pass costs two: gradients of activations and of weights), the usual MFU convention. The counter
  counts matmuls, convolutions and attention: norms, activations and the frozen text encoder are not counted.
- Peaks: :data:`PEAK_BF16_TFLOPS`, dense (no 2:4 sparsity) bf16 tensor-core peaks by device name; an unknown
  device has no peak and its MFU is None (null in JSON).
- :class:`ThroughputMFU`: Lightning's ThroughputMonitor with the U-Net's FLOPs per batch and this table's peak, so
  every training run logs ``train/device/mfu`` (Lightning's own table misses the H200 and maps an L40S to an L4).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imagen.models.attention import attention_backend

TRAINING_FORWARDS = 3  # forward + backward (2 forwards' worth: input and weight gradients)
DEFAULT_TEXT_LEN = 128  # text tokens per caption when nothing says (the encoder.max_length of every conf/encoder)

# Dense bf16 tensor-core peaks, TFLOP/s, per GPU: (name, rule on the lower-cased torch.cuda.get_device_name()).
# The vendors quote "with sparsity" figures in the headline; dense is half of those.
#   H100 SXM 989.4, H100 PCIe 756 (1,979 / 1,513 with sparsity): NVIDIA H100 datasheet; also the per-datatype table
#     at https://glennklockwood.com/garden/processors/h100 (BF16 matrix 989.4, sparse 1978.9).
#   H200 (and GH200): the same GH100 compute as the H100 SXM, 989 dense (1,979 with sparsity): NVIDIA H200 datasheet;
#     https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html ("FP16 / BF16 (dense) ~989 TFLOPS").
#   A100 (SXM and PCIe) 312 (624 with sparsity): NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4).
#   L40S 362.05, L40 181.05 (733 / 362.1 with sparsity): NVIDIA L40S / L40 datasheets.
#   RTX 4090 165.2 (BF16 with FP32 accumulate; 330.4 with sparsity): NVIDIA Ada GPU architecture whitepaper.
# NVL variants (H100 NVL, H200 NVL) are clocked lower and left out: unknown, MFU None.
PEAK_BF16_TFLOPS: tuple[tuple[str, Callable[[str], bool], float], ...] = (
    ("H100 PCIe", lambda n: "h100" in n and ("pcie" in n or "hbm2e" in n), 756.0),
    ("H100 SXM", lambda n: "h100" in n and "nvl" not in n, 989.4),
    ("H200", lambda n: "h200" in n and "nvl" not in n, 989.4),
    ("A100", lambda n: "a100" in n, 312.0),
    ("L40S", lambda n: "l40s" in n, 362.05),
    ("L40", lambda n: "l40" in n and "l40s" not in n, 181.05),
    ("RTX 4090", lambda n: "rtx 4090" in n, 165.2),
)


def peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak (TFLOP/s) of a device named like torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3");
    None for a device not in PEAK_BF16_TFLOPS (a CPU, an unlisted GPU)."""
    name = device_name.lower()
    return next((tflops for _, rule, tflops in PEAK_BF16_TFLOPS if rule(name)), None)


def mfu(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s (flops_per_image * images_per_s) over the peak (TFLOP/s)."""
    if peak is None or peak <= 0:
        return None
    return flops_per_image * images_per_s / (peak * 1e12)


def mfu_report(flops_per_image: int, images_per_s: float, device_name: str) -> dict[str, Any]:
    """The benchmark's MFU fields: flops_per_image, achieved_tflops, peak_tflops (None: unknown device), mfu."""
    peak = peak_tflops(device_name)
    util = mfu(flops_per_image, images_per_s, peak)
    return {
        "flops_per_image": int(flops_per_image),
        "achieved_tflops": round(flops_per_image * images_per_s / 1e12, 4),
        "peak_tflops": peak,
        "mfu": None if util is None else round(util, 4),
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that torch's FlopCounterMode counts while `fn()` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


class _Forward(nn.Module):
    """Calls `module.forward` directly: a compiled module's compiled call (nn.Module.compile) is bypassed."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.forward(*args, **kwargs)


def meta_forward_flops(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of `module.forward(*args, **kwargs)` with its parameters and buffers replaced by meta tensors of the same
    shapes (the module is not modified; pass meta inputs): no compute, no memory, on any device."""
    wrapper = _Forward(module)
    named = itertools.chain(wrapper.named_parameters(), wrapper.named_buffers())
    meta = {name: torch.empty_like(t, device="meta") for name, t in named}
    with torch.no_grad():
        return count_flops(lambda: torch.func.functional_call(wrapper, meta, args, kwargs))


def unet_inputs(unet: nn.Module, batch: int, text_len: int, device: str | torch.device = "meta") -> dict[str, Any]:
    """Inputs of one call of a ConditionalUNet (base or SR) at its training resolution, every text token valid."""
    size, lowres_channels = unet.image_size, unet.lowres_channels
    inputs = {
        "x": torch.zeros(batch, unet.in_channels, size, size, device=device),
        "t": torch.zeros(batch, device=device),
        "text_emb": torch.zeros(batch, text_len, unet.text_cond.text_dim, device=device),
        "text_mask": torch.ones(batch, text_len, dtype=torch.bool, device=device),
    }
    if lowres_channels:
        inputs["lowres"] = torch.zeros(batch, lowres_channels, size, size, device=device)
        inputs["aug_level"] = torch.zeros(batch, device=device)
    return inputs


def unet_forward_flops(unet: nn.Module, text_len: int = DEFAULT_TEXT_LEN, batch: int = 1) -> int:
    """FLOPs of one U-Net forward on `batch` images with `text_len` text tokens (meta device, `math` attention)."""
    with attention_backend(unet, "math"):
        return meta_forward_flops(unet, **unet_inputs(unet, batch, text_len))


def training_flops_per_image(unet: nn.Module, text_len: int = DEFAULT_TEXT_LEN) -> int:
    """FLOPs of one training image: forward x 3 (TRAINING_FORWARDS)."""
    return TRAINING_FORWARDS * unet_forward_flops(unet, text_len)


class ThroughputMFU(ThroughputMonitor):
    """Lightning's ThroughputMonitor that also logs FLOP/s and MFU (``train/device/flops_per_sec``,
    ``train/device/mfu``): the U-Net's training FLOPs per image (see the module docstring; counted once per text
    length, in a fraction of a second) are handed to Lightning as ``flops_per_batch`` = FLOPs per image x batch
    size, and the peak is this module's PEAK_BF16_TFLOPS (a device it does not know logs no MFU). Validation
    (sampling) batches carry no FLOPs.

    Args:
        batch_size_fn: samples in a batch (as ThroughputMonitor).
        text_len: text tokens counted per caption. None: each batch's own with cached embeddings (``text=cached``);
            with online encoding the first batch's, as the encoder tokenizes it (padded to its longest caption), else
            the encoder's ``max_length``, else 128. The text keys are ~3 % of a paper-size U-Net's FLOPs at 128.
        peak_tflops: the device's peak (TFLOP/s) for a device PEAK_BF16_TFLOPS does not know; None: the table's.
        **kwargs: ThroughputMonitor's (window_size, separator).
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int],
        text_len: int | None = None,
        peak_tflops: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size_fn, **kwargs)
        self.text_len, self.peak_tflops = text_len, peak_tflops
        self._flops: dict[int, int] = {}  # text length -> training FLOPs per image
        self._online_len: int | None = None  # the first batch's tokens, with online encoding

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        peak = self.peak_tflops
        if peak is None and device.type == "cuda":
            peak = peak_tflops(torch.cuda.get_device_name(device))
        self.available_flops = None if peak is None else int(peak * 1e12)
        for throughput in self._throughputs.values():  # built by super().setup with Lightning's own table
            throughput.available_flops = self.available_flops

    def _batch_text_len(self, pl_module, batch: Any) -> int:
        if self.text_len is not None:
            return self.text_len
        if isinstance(batch, dict) and "text_emb" in batch:
            return batch["text_emb"].shape[1]
        if self._online_len is None:
            encoder = getattr(pl_module, "text_encoder", None)
            max_length = getattr(encoder, "max_length", None) or DEFAULT_TEXT_LEN
            tokenizer = getattr(encoder, "tokenizer", None)
            captions = batch.get("caption") if isinstance(batch, dict) else None
            if tokenizer is not None and captions:
                tokens = tokenizer(list(captions), padding="longest", truncation=True, max_length=max_length)
                self._online_len = len(tokens["input_ids"][0])
            else:
                self._online_len = max_length
        return self._online_len

    def flops_per_image(self, pl_module, batch: Any) -> int:
        """Training FLOPs of one image of `batch` (see `text_len`)."""
        text_len = self._batch_text_len(pl_module, batch)
        if text_len not in self._flops:
            self._flops[text_len] = training_flops_per_image(pl_module.unet, text_len)
        return self._flops[text_len]

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, *args: Any) -> None:
        pl_module.flops_per_batch = self.flops_per_image(pl_module, batch) * self.batch_size_fn(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
        pl_module.flops_per_batch = None  # sampling is not a training step: no MFU for it
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)
