"""Image conversions shared by the sample grids, the scripts and the judge: model tensors in [-1, 1] <-> uint8."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image


def to_uint8(images: Any) -> np.ndarray:
    """Model images -> uint8 pixels, quantised like a saved PNG (``round((x + 1) * 127.5)``), so a tensor made from
    a PIL image gives exactly that image back.

    (B, 3, H, W) tensor in [-1, 1] -> (B, H, W, 3); (3, H, W) tensor -> (H, W, 3); a PIL image or an (H, W, 3)
    array (uint8, or float in [0, 255]) -> (H, W, 3).
    """
    if isinstance(images, Image.Image):
        return np.asarray(images.convert("RGB"), dtype=np.uint8)
    if isinstance(images, torch.Tensor):
        if images.ndim not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                f"tensor images must be (3, H, W) or (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}"
            )
        x = ((images.detach().to("cpu", torch.float32).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.movedim(-3, -1).numpy()  # (..., H, W, 3)
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"array images must be (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return arr
