"""The vocabulary of the shapes world: the colours and shapes it draws, the relations and counts it states.

The bottom of the shapes-world modules (:mod:`imagen.data.shapes` -> :mod:`imagen.data.captions` ->
:mod:`imagen.data.constraints` -> here): names shared by the renderer, the caption grammar, the constraints
and the judge.
"""

from __future__ import annotations

__all__ = ["INVERSE", "MAX_OBJECTS", "Obj", "PALETTE", "RELATIONS", "SHAPES"]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 225),
    "yellow": (245, 215, 0),
    "purple": (135, 40, 180),
    "orange": (250, 130, 0),
    "cyan": (0, 195, 215),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
INVERSE: dict[str, str] = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
MAX_OBJECTS = 4  # objects per image, and the largest number a caption states

Obj = tuple[str, str]  # (color, shape)
