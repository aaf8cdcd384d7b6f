"""Sample grids: a row per prompt, the prompt written to the left (PIL only; torchvision is not usable here)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from imagen.images import to_uint8

LABEL_MARGIN = 4  # pixels between the label column's edges and its text
LINE_SPACING = 2  # pixels between two lines of a label


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom - min(top, 0)) + LINE_SPACING


def wrap_label(caption: str, max_width: float, font=None) -> list[str]:
    """The caption's lines, each at most ``max_width`` pixels wide in ``font`` (the grid's default), split between
    words only: a word wider than ``max_width`` gets a line of its own (see :func:`label_column_width`)."""
    font = font if font is not None else _font()
    words = caption.split()
    if not words:
        return []
    # textwrap counts characters: start from the whole caption and narrow until every line fits in pixels (at one
    # word per line it does, or a word is wider than the column, which label_column_width rules out).
    for width in range(len(" ".join(words)), 0, -1):
        lines = textwrap.wrap(" ".join(words), width=width, break_long_words=False, break_on_hyphens=False)
        if all(_text_width(font, line) <= max_width for line in lines):
            return lines
    return lines


def label_column_width(captions: list[str], label_width: int, font=None) -> int:
    """``label_width``, or wider when a single word of a caption would not fit in it (words are never cut)."""
    font = font if font is not None else _font()
    widest = max((_text_width(font, w) for c in captions for w in c.split()), default=0.0)
    return max(label_width, int(widest + 0.999) + 2 * LABEL_MARGIN)


def caption_grid(
    images: torch.Tensor, captions: list[str], per_row: int, scale: int = 2, label_width: int = 180
) -> Image.Image:
    """A grid of `len(captions) // per_row` rows; consecutive images with the same caption share a row.

    Each row's caption is wrapped (between words, never cut) onto as many lines as the label column needs; a row
    is taller than its images when its caption has more lines than fit beside them."""
    arr = to_uint8(images)  # (B, H, W, 3)
    n, h, w, _ = arr.shape
    rows = (n + per_row - 1) // per_row
    h, w, pad = h * scale, w * scale, 2
    font = _font()
    row_captions = [captions[r * per_row] if r * per_row < len(captions) else "" for r in range(rows)]
    label_width = label_column_width(row_captions, label_width, font)
    line_height = _line_height(font)
    labels = [wrap_label(c, label_width - 2 * LABEL_MARGIN, font) for c in row_captions]
    heights = [max(h, len(lines) * line_height + LINE_SPACING) for lines in labels]
    tops = [sum(heights[:r]) + r * pad for r in range(rows)]
    canvas = Image.new("RGB", (label_width + per_row * (w + pad), sum(heights) + rows * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, per_row)
        tile = Image.fromarray(arr[i]).resize((w, h), Image.NEAREST)
        canvas.paste(tile, (label_width + c * (w + pad), tops[r] + (heights[r] - h) // 2))
    for r, lines in enumerate(labels):
        y = tops[r] + (heights[r] - len(lines) * line_height) // 2
        for line in lines:
            draw.text((LABEL_MARGIN, y), line, fill="black", font=font)
            y += line_height
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
