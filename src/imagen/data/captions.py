"""The caption grammar of the shapes world: templates that write captions and the parser that reads them back.

DrawBench (Imagen §3, App. C) groups its prompts into categories; the shapes world's captions fall into four
of them, each written by a few templates:

* ``counting``     -- 1-4 identical objects ("three yellow triangles");
* ``colors``       -- attribute binding of two objects ("a red circle and a blue square");
* ``positional``   -- two objects and a spatial relation ("a green square to the left of a purple circle");
* ``descriptions`` -- three objects and one or two relations (longer sentences).

A :class:`Template` renders a caption from its slot values and states the caption's constraints
(:mod:`imagen.data.constraints`, serialised as dicts); :func:`parse_caption` matches a caption against every
template and recovers the same category and constraints, so a caption alone determines its ground truth.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .constraints import Binding, Constraint, Count, Relation
from .vocab import MAX_OBJECTS, PALETTE, SHAPES, Obj

__all__ = [
    "CATEGORIES",
    "NUMBER_WORDS",
    "PLURALS",
    "RELATION_PHRASES",
    "TEMPLATES",
    "Template",
    "normalize_caption",
    "parse_caption",
]

CATEGORIES: tuple[str, ...] = ("counting", "colors", "positional", "descriptions")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
# The first phrase of each relation is the canonical one (used for eval prompts).
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four")


def normalize_caption(caption: str) -> str:
    """Lower-case, collapse whitespace and drop a trailing full stop (the form used for exclusion)."""
    return " ".join(caption.lower().split()).rstrip(".").strip()


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _phrase(obj: Obj, definite: bool = False) -> str:
    color, shape = obj
    return f"{'the' if definite else _article(color)} {color} {shape}"


@dataclass(frozen=True)
class Template:
    """A caption template shared by the generator and :func:`parse_caption`.

    Slots: ``{A}``/``{B}``/``{C}`` indefinite object phrases ("an orange circle"), ``{tA}``... definite
    phrases ("the orange circle"), ``{r1}``/``{r2}`` relation phrases, and for counting ``{obj}``
    (indefinite phrase, n = 1), ``{num}`` (number word), ``{col}`` and ``{shp}`` (plural when n > 1).
    ``relations`` lists (subject letter, relation slot, object letter) triples stated by the caption.
    """

    category: str
    text: str
    relations: tuple[tuple[str, str, str], ...] = ()
    n_range: tuple[int, int] = (1, MAX_OBJECTS)

    @property
    def slots(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.text)

    @property
    def letters(self) -> list[str]:
        """Object letters in order of first mention (A, B, C)."""
        return sorted({s[-1] for s in self.slots if s[-1] in "ABC"})

    def render(self, values: Mapping[str, Any], rng: np.random.Generator | None = None) -> str:
        """Fill the slots; ``rng`` picks relation-phrase variants (None -> canonical phrase)."""
        out: dict[str, str] = {}
        for slot in self.slots:
            if slot in ("A", "B", "C"):
                out[slot] = _phrase(values[slot])
            elif slot in ("tA", "tB", "tC"):
                out[slot] = _phrase(values[slot[1]], definite=True)
            elif slot in ("r1", "r2"):
                phrases = RELATION_PHRASES[values[slot]]
                out[slot] = phrases[0] if rng is None else phrases[int(rng.integers(len(phrases)))]
            elif slot == "obj":
                out[slot] = _phrase(values["obj"])
            elif slot == "num":
                out[slot] = NUMBER_WORDS[values["n"] - 1]
            elif slot == "col":
                out[slot] = values["obj"][0]
            elif slot == "shp":
                out[slot] = values["obj"][1] if values["n"] == 1 else PLURALS[values["obj"][1]]
            else:  # pragma: no cover - guarded by the template table
                raise KeyError(slot)
        return self.text.format(**out)

    def constraints(self, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Structured constraints stated by a caption rendered from ``values`` (serialised dicts)."""
        cons: list[Constraint]
        if self.category == "counting":
            color, shape = values["obj"]
            cons = [Count(color, shape, int(values["n"]))]
        else:
            cons = [Binding(*values[k]) for k in self.letters]
            cons += [Relation(values[subj], values[rslot], values[obj]) for subj, rslot, obj in self.relations]
        return [c.to_dict() for c in cons]


TEMPLATES: tuple[Template, ...] = (
    # counting (n = 1..4)
    Template("counting", "{num} {col} {shp}"),
    Template("counting", "a picture of {num} {col} {shp}"),
    Template("counting", "an image of {num} {col} {shp}"),
    Template("counting", "{num} {col} {shp} on a grey background"),
    Template("counting", "there are {num} {col} {shp}", n_range=(2, 4)),
    Template("counting", "a group of {num} {col} {shp}", n_range=(2, 4)),
    Template("counting", "{obj}", n_range=(1, 1)),
    Template("counting", "a single {col} {shp}", n_range=(1, 1)),
    Template("counting", "a picture of {obj}", n_range=(1, 1)),
    Template("counting", "{obj} on a grey background", n_range=(1, 1)),
    # colors (attribute binding)
    Template("colors", "{A} and {B}"),
    Template("colors", "{A} next to {B}"),
    Template("colors", "a picture of {A} and {B}"),
    Template("colors", "{A} together with {B}"),
    Template("colors", "an image with {A} and {B}"),
    # positional
    Template("positional", "{A} {r1} {B}", relations=(("A", "r1", "B"),)),
    Template("positional", "a picture of {A} {r1} {B}", relations=(("A", "r1", "B"),)),
    Template("positional", "{A} is {r1} {B}", relations=(("A", "r1", "B"),)),
    Template("positional", "there is {A} {r1} {B}", relations=(("A", "r1", "B"),)),
    # descriptions (three objects, one or two relations)
    Template("descriptions", "{A} {r1} {B}, and {C}", relations=(("A", "r1", "B"),)),
    Template("descriptions", "{A} {r1} {B}, and {C} {r2} {tB}", relations=(("A", "r1", "B"), ("C", "r2", "B"))),
    Template("descriptions", "a picture with {A}, {B} and {C}, where {tA} is {r1} {tB}", relations=(("A", "r1", "B"),)),
    Template("descriptions", "three objects: {A}, {B} and {C}; {tC} is {r1} {tA}", relations=(("C", "r1", "A"),)),
    Template(
        "descriptions", "there is {A} {r1} {B}, and {C} is {r2} {tA}", relations=(("A", "r1", "B"), ("C", "r2", "A"))
    ),
    Template("descriptions", "{A}, {B} and {C}, with {tC} {r1} {tA}", relations=(("C", "r1", "A"),)),
)


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


@functools.cache
def _template_regex(text: str) -> re.Pattern[str]:
    cols = _alternation(PALETTE)
    shps = _alternation(SHAPES)
    rels = _alternation(p for ps in RELATION_PHRASES.values() for p in ps)
    pattern = ""
    for i, piece in enumerate(re.split(r"\{(\w+)\}", text)):
        if i % 2 == 0:
            pattern += re.escape(piece)
        elif piece in ("A", "B", "C", "obj"):
            pattern += rf"(?:a|an) (?P<{piece}_col>{cols}) (?P<{piece}_shp>{shps})"
        elif piece in ("tA", "tB", "tC"):
            pattern += rf"the (?P<{piece}_col>{cols}) (?P<{piece}_shp>{shps})"
        elif piece in ("r1", "r2"):
            pattern += rf"(?P<{piece}>{rels})"
        elif piece == "num":
            pattern += rf"(?P<num>{_alternation(NUMBER_WORDS)})"
        elif piece == "col":
            pattern += rf"(?P<col>{cols})"
        elif piece == "shp":
            pattern += rf"(?P<shp>{_alternation(list(SHAPES) + list(PLURALS.values()))})"
    return re.compile(pattern)


_PHRASE_TO_RELATION = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}
_SINGULAR = {v: k for k, v in PLURALS.items()}


def _values_from_match(t: Template, m: re.Match[str]) -> dict[str, Any] | None:
    g = m.groupdict()
    values: dict[str, Any] = {}
    if t.category == "counting":
        if "obj_col" in g and g["obj_col"] is not None:
            values["obj"], values["n"] = (g["obj_col"], g["obj_shp"]), 1
        else:
            n = NUMBER_WORDS.index(g["num"]) + 1 if g.get("num") else 1
            shp = g["shp"]
            if (n == 1) != (shp in SHAPES):  # number agreement ("one circles", "two circle")
                return None
            values["obj"], values["n"] = (g["col"], _SINGULAR.get(shp, shp)), n
        return values
    for letter in "ABC":
        if g.get(f"{letter}_col"):
            values[letter] = (g[f"{letter}_col"], g[f"{letter}_shp"])
    for letter in "ABC":
        if g.get(f"t{letter}_col"):
            if values.get(letter) != (g[f"t{letter}_col"], g[f"t{letter}_shp"]):
                return None  # "the X" must refer back to an object introduced earlier
    for rslot in ("r1", "r2"):
        if g.get(rslot):
            values[rslot] = _PHRASE_TO_RELATION[g[rslot]]
    return values


def parse_caption(caption: str) -> dict[str, Any] | None:
    """Recover ``{"category", "constraints"}`` from a caption produced by the shapes templates.

    Returns None for captions outside the template grammar (e.g. free-form LAION text).
    """
    text = normalize_caption(caption)
    for t in TEMPLATES:
        m = _template_regex(t.text).fullmatch(text)
        if m is None:
            continue
        values = _values_from_match(t, m)
        if values is None:
            continue
        if t.category == "counting" and not t.n_range[0] <= values["n"] <= t.n_range[1]:
            continue
        return {"category": t.category, "constraints": t.constraints(values)}
    return None
