"""Structured caption constraints of the shapes world: one class per kind, each owning its check.

DrawBench (Imagen §3) has people judge whether an image shows what its prompt says; the shapes world states
every caption as machine-checkable constraints instead, so the ground truth (:mod:`imagen.data.shapes`) and
the judge (:mod:`imagen.eval.judge`) decide alignment with the same code. The kinds:

* :class:`Binding`  -- an object with this colour and shape exists (attribute binding: DrawBench "colors");
* :class:`Count`    -- exactly ``n`` objects with this colour and shape (DrawBench "counting");
* :class:`Relation` -- an object is left of / right of / above / below another (DrawBench "positional"),
  by the lenient rule of :func:`relation_holds`.

Constraints are stored (shard ``meta``, eval prompts, JSON) as plain dicts with a ``"type"`` key::

    {"type": "binding", "color": "red", "shape": "circle"}
    {"type": "count", "color": "red", "shape": "circle", "n": 2}
    {"type": "relation", "subject": {"color": "red", "shape": "circle"}, "relation": "left_of",
     "object": {"color": "blue", "shape": "square"}}

:func:`constraint_from_dict` parses one through the registry :data:`CONSTRAINT_TYPES` ("type" -> class) and
:meth:`Constraint.to_dict` writes it back unchanged. The objects a constraint is checked against are dicts
with ``color``, ``shape`` and normalised centre ``cx``, ``cy`` (y points down): a sample's ground-truth
objects or the judge's detections.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from .vocab import INVERSE, MAX_OBJECTS, RELATIONS, Obj

__all__ = [
    "CONSTRAINT_TYPES",
    "Binding",
    "Constraint",
    "Count",
    "Relation",
    "check_constraints",
    "constraint_from_dict",
    "parse_constraints",
    "relation_holds",
]


def relation_holds(subject: Mapping[str, Any], relation: str, obj: Mapping[str, Any], margin: float = 0.05) -> bool:
    """Whether ``subject`` is ``relation`` of ``obj`` (dicts with normalised ``cx``, ``cy``; y points down).

    Lenient judge rule: the offset along the relation's axis is at least ``margin`` and larger than the
    offset along the other axis. The generator places objects far stricter than this (bounding boxes
    separated on the relation's axis, off-axis offset at most half the primary offset).
    """
    dx = float(obj["cx"]) - float(subject["cx"])
    dy = float(obj["cy"]) - float(subject["cy"])
    primary, off = {
        "left_of": (dx, dy),
        "right_of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }.get(relation, (None, None))
    if primary is None:
        raise ValueError(f"unknown relation {relation!r}; valid relations: {', '.join(RELATIONS)}")
    return primary >= margin and primary > abs(off)


def _matches(o: Mapping[str, Any], ref: Obj) -> bool:
    return o.get("color") == ref[0] and o.get("shape") == ref[1]


def _ref(d: Mapping[str, Any]) -> Obj:
    return d["color"], d["shape"]


def _ref_dict(ref: Obj) -> dict[str, Any]:
    return {"color": ref[0], "shape": ref[1]}


class Constraint(ABC):
    """One checkable statement of a caption. Subclasses are frozen dataclasses registered by their ``type``."""

    type: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Constraint:
        """Parse the serialised dict of this kind (its ``"type"`` already dispatched on)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The serialised dict (``"type"`` first, key order as the generator writes it)."""

    @property
    @abstractmethod
    def refs(self) -> tuple[Obj, ...]:
        """The (colour, shape) objects this constraint names, in order."""

    @abstractmethod
    def check(self, objects: Sequence[Mapping[str, Any]], margin: float = 0.05) -> bool:
        """Whether it holds on ``objects`` (ground truth or detections); ``margin`` as in :func:`relation_holds`."""

    @abstractmethod
    def remap(self, mapping: Mapping[Obj, Obj]) -> Constraint:
        """A copy with every named object replaced by ``mapping[obj]`` (objects not in ``mapping`` kept)."""

    def stated_counts(self) -> dict[Obj, int]:
        """Exact numbers of objects this constraint states, by (colour, shape); empty when it states none."""
        return {}

    def hard_negative(self) -> Constraint | None:
        """The minimal edit of this constraint alone that makes it false for an image it is true of, or None.

        Used by the judge's hard-negative validation (:func:`imagen.eval.judge_validation._hard_negatives`);
        edits of the named objects themselves (another colour or shape, swapped colours) go through
        :meth:`remap` and apply to every kind.
        """
        return None


CONSTRAINT_TYPES: dict[str, type[Constraint]] = {}


def _register(cls: type[Constraint]) -> type[Constraint]:
    CONSTRAINT_TYPES[cls.type] = cls
    return cls


@_register
@dataclass(frozen=True)
class Binding(Constraint):
    """An object with this colour and shape exists (attribute binding)."""

    color: str
    shape: str
    type: ClassVar[str] = "binding"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Binding:
        return cls(d["color"], d["shape"])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "color": self.color, "shape": self.shape}

    @property
    def refs(self) -> tuple[Obj, ...]:
        return ((self.color, self.shape),)

    def check(self, objects: Sequence[Mapping[str, Any]], margin: float = 0.05) -> bool:
        return any(_matches(o, self.refs[0]) for o in objects)

    def remap(self, mapping: Mapping[Obj, Obj]) -> Binding:
        color, shape = mapping.get(self.refs[0], self.refs[0])
        return replace(self, color=color, shape=shape)


@_register
@dataclass(frozen=True)
class Count(Constraint):
    """Exactly ``n`` objects with this colour and shape."""

    color: str
    shape: str
    n: int
    type: ClassVar[str] = "count"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int(self.n))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Count:
        return cls(d["color"], d["shape"], d["n"])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "color": self.color, "shape": self.shape, "n": self.n}

    @property
    def refs(self) -> tuple[Obj, ...]:
        return ((self.color, self.shape),)

    def check(self, objects: Sequence[Mapping[str, Any]], margin: float = 0.05) -> bool:
        return sum(_matches(o, self.refs[0]) for o in objects) == self.n

    def remap(self, mapping: Mapping[Obj, Obj]) -> Count:
        color, shape = mapping.get(self.refs[0], self.refs[0])
        return replace(self, color=color, shape=shape)

    def stated_counts(self) -> dict[Obj, int]:
        return {self.refs[0]: self.n}

    def hard_negative(self) -> Count:
        """One object more (one fewer at :data:`~imagen.data.vocab.MAX_OBJECTS`)."""
        return replace(self, n=self.n + 1 if self.n < MAX_OBJECTS else self.n - 1)


@_register
@dataclass(frozen=True)
class Relation(Constraint):
    """Some ``subject`` object is ``relation`` of some other ``obj`` object (:func:`relation_holds`)."""

    subject: Obj
    relation: str
    obj: Obj
    type: ClassVar[str] = "relation"

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; valid relations: {', '.join(RELATIONS)}")
        object.__setattr__(self, "subject", tuple(self.subject))
        object.__setattr__(self, "obj", tuple(self.obj))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Relation:
        return cls(_ref(d["subject"]), d["relation"], _ref(d["object"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "subject": _ref_dict(self.subject),
            "relation": self.relation,
            "object": _ref_dict(self.obj),
        }

    @property
    def refs(self) -> tuple[Obj, ...]:
        return self.subject, self.obj

    def check(self, objects: Sequence[Mapping[str, Any]], margin: float = 0.05) -> bool:
        subs = [o for o in objects if _matches(o, self.subject)]
        objs = [o for o in objects if _matches(o, self.obj)]
        return any(relation_holds(s, self.relation, o, margin) for s in subs for o in objs if s is not o)

    def remap(self, mapping: Mapping[Obj, Obj]) -> Relation:
        return replace(self, subject=mapping.get(self.subject, self.subject), obj=mapping.get(self.obj, self.obj))

    def hard_negative(self) -> Relation:
        """The inverse relation ("left of" -> "right of")."""
        return replace(self, relation=INVERSE[self.relation])


def constraint_from_dict(d: Mapping[str, Any] | Constraint) -> Constraint:
    """Parse one serialised constraint (a :class:`Constraint` passes through unchanged).

    Raises ValueError for an unknown ``"type"`` (naming the valid ones) or a dict missing its kind's keys.
    """
    if isinstance(d, Constraint):
        return d
    kind = d.get("type") if isinstance(d, Mapping) else None
    cls = CONSTRAINT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown constraint type {kind!r}; valid types: {', '.join(CONSTRAINT_TYPES)}")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed {kind!r} constraint {dict(d)!r}: missing or invalid key {e}") from None


def parse_constraints(constraints: Iterable[Mapping[str, Any] | Constraint]) -> list[Constraint]:
    """:func:`constraint_from_dict` of each."""
    return [constraint_from_dict(c) for c in constraints]


def check_constraints(
    objects: Sequence[Mapping[str, Any]], constraints: Sequence[Mapping[str, Any] | Constraint], margin: float = 0.05
) -> list[bool]:
    """Evaluate each constraint against ``objects`` (dicts with color, shape, cx, cy); one bool each."""
    return [c.check(objects, margin) for c in parse_constraints(constraints)]
