"""The decision settings a model ships with: one record from evaluation to the edge.

A :class:`Decision` holds how a calibrated defect score becomes accept/reject: the
temperature (``score = softmax(logits / T)[positive_class]``, for two classes
``sigmoid(margin / T)``), the default threshold, per-recipe thresholds, and the cost
matrix the thresholds were chosen for. Evaluation fits it on the val split, export and
compression write it into ``bundle.json`` (:meth:`Decision.to_dict` *is* the bundle's
``decision`` block), and the edge applies it. The rule "the recipe's threshold, else the
default; reject when ``score >= threshold``" is written here and nowhere else.

Only numpy and the standard library are imported (the edge runs without the training stack).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lineguard import LineguardError

RULE = "reject when score >= threshold; score = softmax(logits / temperature)[positive_class]"


class DecisionError(LineguardError):
    """A decision block that cannot be used; the message names the field and what is expected."""


@dataclass(frozen=True)
class Cost:
    """What each error costs: a good item rejected (waste) and a defect passed (a claim)."""

    false_reject: float = 1.0
    missed_defect: float = 1.0

    def __post_init__(self) -> None:
        for name in ("false_reject", "missed_defect"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise DecisionError(f"decision cost '{name}' = {value!r} must be a finite number >= 0")

    def to_dict(self) -> dict[str, float]:
        return {"false_reject": float(self.false_reject), "missed_defect": float(self.missed_defect)}


@dataclass(frozen=True)
class Decision:
    """Temperature, thresholds and cost: everything that turns model logits into a decision.

    ``per_recipe`` overrides ``default_threshold`` for the recipes it names; an unknown or
    missing recipe uses the default. ``fitted_on`` says where the settings come from
    (``"val"`` for thresholds fitted on a validation split); ``notes`` explain choices made
    while fitting (e.g. a recipe with too few images kept the default).
    """

    default_threshold: float
    per_recipe: Mapping[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    cost: Cost = field(default_factory=Cost)
    fitted_on: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        per_recipe = {str(k): _number(f"per_recipe['{k}']", v) for k, v in dict(self.per_recipe).items()}
        object.__setattr__(self, "per_recipe", dict(sorted(per_recipe.items())))
        object.__setattr__(self, "default_threshold", _number("default_threshold", self.default_threshold))
        object.__setattr__(self, "temperature", _number("temperature", self.temperature))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        for name, t in [("default_threshold", self.default_threshold), *self.per_recipe.items()]:
            if not 0.0 <= t <= 1.0:
                raise DecisionError(f"decision threshold '{name}' = {t} is outside [0, 1]")
        if not self.temperature > 0:
            raise DecisionError(f"decision temperature {self.temperature} must be > 0")

    def threshold_for(self, recipe: str | None) -> float:
        """The threshold of ``recipe``; the default for an unknown or missing recipe."""
        if recipe is None:
            return self.default_threshold
        return self.per_recipe.get(str(recipe), self.default_threshold)

    def thresholds_for(self, recipes: Iterable[Any]) -> np.ndarray:
        """One threshold per item (float64), by :meth:`threshold_for` of its recipe."""
        return np.array([self.threshold_for(None if r is None else str(r)) for r in recipes], dtype=np.float64)

    def scores_from_margins(self, margins: Any) -> np.ndarray:
        """Calibrated p(defect) = sigmoid(margin / T) of two-class margins (l_pos - l_other)."""
        z = np.asarray(margins, dtype=np.float64) / self.temperature
        return np.asarray(np.exp(-np.logaddexp(0.0, -z)))

    def rejects(self, scores: Any, recipes: Iterable[Any]) -> np.ndarray:
        """Reject (True) where ``score >= threshold`` of the item's recipe."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        return s >= self.thresholds_for(recipes)

    def differences(self, other: Decision, atol: float = 1e-6) -> list[str]:
        """Plain-language differences from ``other`` (empty when the settings agree within ``atol``)."""
        out: list[str] = []
        if not math.isclose(self.temperature, other.temperature, abs_tol=atol):
            out.append(f"temperature {self.temperature:.4f} vs {other.temperature:.4f}")
        if not math.isclose(self.default_threshold, other.default_threshold, abs_tol=atol):
            out.append(f"default threshold {self.default_threshold:.4f} vs {other.default_threshold:.4f}")
        for recipe in sorted(set(self.per_recipe) | set(other.per_recipe)):
            a, b = self.threshold_for(recipe), other.threshold_for(recipe)
            if not math.isclose(a, b, abs_tol=atol):
                out.append(f"recipe '{recipe}' threshold {a:.4f} vs {b:.4f}")
        if self.cost != other.cost:
            out.append(f"cost {self.cost.to_dict()} vs {other.cost.to_dict()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``decision`` block (JSON-ready)."""
        d: dict[str, Any] = {
            "default_threshold": self.default_threshold,
            "per_recipe": dict(self.per_recipe),
            "cost": self.cost.to_dict(),
            "temperature": self.temperature,
            "rule": RULE,
        }
        if self.fitted_on:
            d["fitted_on"] = self.fitted_on
        if self.notes:
            d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Read a ``decision`` block; a missing or invalid field is a :class:`DecisionError`.

        ``default_threshold`` is required; ``per_recipe`` (default none), ``temperature``
        (default 1) and ``cost`` (default 1 and 1) are optional. ``rule`` is informative and
        must, when present, be the rule this LineGuard applies.
        """
        if not isinstance(data, Mapping):
            raise DecisionError(f"decision block must be a JSON object, got {type(data).__name__}")
        if "default_threshold" not in data:
            raise DecisionError("decision block has no 'default_threshold'")
        rule = data.get("rule")
        if rule is not None and rule != RULE:
            raise DecisionError(f"decision rule {rule!r} is not the rule this LineGuard applies ({RULE!r})")
        per_recipe = data.get("per_recipe") or {}
        if not isinstance(per_recipe, Mapping):
            raise DecisionError("decision 'per_recipe' must map recipe names to thresholds")
        cost = data.get("cost") or {}
        if not isinstance(cost, Mapping) or set(cost) - {"false_reject", "missed_defect"}:
            raise DecisionError("decision 'cost' must hold only 'false_reject' and 'missed_defect'")
        notes = data.get("notes") or ()
        if isinstance(notes, str) or not isinstance(notes, Iterable):
            raise DecisionError("decision 'notes' must be a list of strings")
        return cls(
            default_threshold=data["default_threshold"],
            per_recipe=per_recipe,
            temperature=data.get("temperature", 1.0),
            cost=Cost(**{k: _number(f"cost.{k}", v) for k, v in cost.items()}),
            fitted_on=str(data.get("fitted_on") or ""),
            notes=tuple(str(n) for n in notes),
        )


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float; DecisionError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise DecisionError(f"decision '{name}' must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise DecisionError(f"decision '{name}' must be finite, got {out}")
    return out
