"""DrawBench (Imagen §3, App. C): 200 prompts in 11 categories, judged by people in the paper.

No prompt data is committed: download the CSV the paper links (https://imagen.research.google/ ->
DrawBench, a Google Sheet exported as CSV with the columns `Prompt` and `Category`) and give its path.
The suite samples `per_prompt` images of every prompt; scripts/evaluate.py writes one grid per category and,
when a CLIP model is available, the CLIP score (the automatic stand-in for the raters' alignment).
"""

from __future__ import annotations

import csv
from pathlib import Path

from torch import Tensor

from imagen.eval.metrics import clip_score, clip_score_metric
from imagen.eval.suite import EvalSuite

COLUMNS = ("Prompt", "Category")


def load_drawbench(path: str | Path, categories: list[str] | None = None) -> list[dict]:
    """[{"caption", "category"}, ...] from a CSV with the columns Prompt and Category (others ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"DrawBench CSV {path} does not exist: export the DrawBench sheet "
            "(imagen.research.google) as CSV and give eval.csv=<path>"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"DrawBench CSV {path} lacks the column(s) {', '.join(missing)} "
                f"(has {', '.join(reader.fieldnames or [])}); expected {', '.join(COLUMNS)}"
            )
        rows = [{"caption": r["Prompt"].strip(), "category": r["Category"].strip()} for r in reader if r["Prompt"]]
    if categories:
        known = sorted({r["category"] for r in rows})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ValueError(f"unknown DrawBench categories {unknown}; the CSV has: {', '.join(known)}")
        rows = [r for r in rows if r["category"] in categories]
    if not rows:
        raise ValueError(f"DrawBench CSV {path} has no prompts")
    return rows


class DrawBenchEval(EvalSuite):
    """Args: csv (path), per_prompt (images per prompt), categories (subset, null = all),
    clip (CLIP model folder or hub id for the CLIP score; null = none)."""

    name = "drawbench"
    alignment_key = "clip_score"

    def __init__(self, csv: str, per_prompt: int = 4, categories: list[str] | None = None, clip: str | None = None):
        if per_prompt < 1:
            raise ValueError(f"eval.per_prompt must be >= 1, got {per_prompt}")
        rows = load_drawbench(csv, list(categories) if categories else None)
        self._prompts = [dict(r) for r in rows for _ in range(per_prompt)]
        self.clip = clip_score_metric(clip) if clip else None

    def prompts(self) -> list[dict]:
        return self._prompts

    def score(self, images: Tensor, prompts: list[dict]) -> dict[str, float]:
        if self.clip is None:
            return {}
        captions = [p["caption"] for p in prompts]
        out = {"clip_score": clip_score(self.clip, images, captions)}
        for cat in sorted({p["category"] for p in prompts}):
            idx = [i for i, p in enumerate(prompts) if p["category"] == cat]
            out[f"clip_score/{cat}"] = clip_score(self.clip, images[idx], [captions[i] for i in idx])
        return out
