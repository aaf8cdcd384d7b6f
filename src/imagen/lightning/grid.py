"""Sample grids: a row per prompt, the prompt written to the left (PIL only; torchvision is not usable here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def caption_grid(images: torch.Tensor, captions: list[str], per_row: int, scale: int = 2, label_width: int = 180) -> Image.Image:
    """A grid of `len(captions) // per_row` rows; consecutive images with the same caption share a row."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    rows = (n + per_row - 1) // per_row
    h, w, pad = h * scale, w * scale, 2
    canvas = Image.new("RGB", (label_width + per_row * (w + pad), rows * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, per_row)
        tile = Image.fromarray(arr[i]).resize((w, h), Image.NEAREST)
        canvas.paste(tile, (label_width + c * (w + pad), r * (h + pad)))
        if c == 0:
            draw.text((4, r * (h + pad) + h // 2 - 6), captions[i][:30], fill="black")
    return canvas


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save with text chunks (prompt, seed, settings) in the PNG metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for k, v in (metadata or {}).items():
        info.add_text(k, str(v))
    image.save(path, pnginfo=info)
    return path
