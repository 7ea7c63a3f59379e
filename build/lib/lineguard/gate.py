"""The release gate: may a candidate model replace the champion? A pure decision.

``decide(candidate, champion, policy)`` compares two :class:`EvalSummary` records made
on the same golden test set and returns a :class:`GateDecision` with one
:class:`GateCheck` per rule and a plain-language reason for each failure:

- **cost, overall and per recipe**: the candidate's mean cost per image (false rejects
  and escapes weighted by the cost matrix) may exceed the champion's by at most
  ``policy.tolerance``, unless the paired test says the difference is noise. The paired
  test is a one-sided mid-p McNemar test on the images where exactly one of the two
  models is wrong: a regression fails the gate only when it is larger than the
  tolerance *and* significant at ``policy.alpha``. Without per-image results the point
  estimates are compared alone (stricter).
- **calibration**: the candidate's calibrated ECE is at most ``policy.max_ece``.
- **parity**: when known, the share of test images where the exported/quantised model
  and the float model decide differently is at most ``policy.max_parity_disagreement``.
- **no champion** (the first model): absolute limits instead, balanced accuracy overall
  and per recipe at least ``min_balanced_accuracy`` / ``min_recipe_balanced_accuracy``.

Nothing here reads files or talks to MLflow, and nothing is imported from evaluation:
evaluation builds the summaries (``EvaluationResult.summary``) and calls :func:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lineguard.config import GateConfig


@dataclass(frozen=True)
class SliceSummary:
    """The gate's view of one slice (overall or one recipe)."""

    n: int
    balanced_accuracy: float | None
    expected_cost: float | None


@dataclass(frozen=True)
class EvalSummary:
    """What the gate needs from one model's evaluation on the golden test set.

    ``image_costs`` maps image id -> the cost of this model's decision on it (0 when
    right) and ``image_recipes`` image id -> recipe; both enable the paired test.
    """

    name: str
    overall: SliceSummary
    per_recipe: dict[str, SliceSummary]
    ece: float | None
    parity_disagreement: float | None = None
    image_costs: dict[str, float] | None = None
    image_recipes: dict[str, str] | None = None
    dataset_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("image_costs")
        d.pop("image_recipes")
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSummary:
        def sl(d: Mapping[str, Any]) -> SliceSummary:
            return SliceSummary(int(d["n"]), d.get("balanced_accuracy"), d.get("expected_cost"))

        return cls(
            name=str(data["name"]),
            overall=sl(data["overall"]),
            per_recipe={k: sl(v) for k, v in data.get("per_recipe", {}).items()},
            ece=data.get("ece"),
            parity_disagreement=data.get("parity_disagreement"),
            image_costs=data.get("image_costs"),
            image_recipes=data.get("image_recipes"),
            dataset_version=data.get("dataset_version"),
        )


@dataclass(frozen=True)
class GateCheck:
    """One rule of the gate and how the candidate did on it."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The verdict: passed only if every check passed; ``reasons`` explains each failure."""

    passed: bool
    reasons: list[str]
    checks: list[GateCheck] = field(default_factory=list)
    champion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "champion": self.champion,
            "checks": [asdict(c) for c in self.checks],
        }


# --- the paired test ----------------------------------------------------------------------------


def mcnemar_midp(wrong_a_only: int, wrong_b_only: int) -> float:
    """One-sided mid-p McNemar test that A makes more errors than B on the same items.

    ``wrong_a_only``: items A got wrong and B right; ``wrong_b_only``: the reverse. Under
    the null hypothesis each discordant item is a fair coin. Returns the mid-p value of
    seeing at least ``wrong_a_only`` of them against A (1.0 with no discordant items).
    """
    n = wrong_a_only + wrong_b_only
    if n == 0:
        return 1.0
    k = wrong_a_only
    log_pmf = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(n + 1)
    ]
    pmf = np.exp(np.asarray(log_pmf))
    upper = float(pmf[k + 1 :].sum())
    return float(min(1.0, upper + 0.5 * pmf[k]))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _paired(
    candidate: EvalSummary, champion: EvalSummary, recipe: str | None
) -> tuple[int, int, int] | None:
    """(images only the candidate gets wrong, only the champion gets wrong, shared images) or None."""
    if not candidate.image_costs or not champion.image_costs:
        return None
    shared = set(candidate.image_costs) & set(champion.image_costs)
    if recipe is not None:
        recipes = candidate.image_recipes or champion.image_recipes or {}
        shared = {i for i in shared if recipes.get(i) == recipe}
    if not shared:
        return None
    cand_only = sum(1 for i in shared if candidate.image_costs[i] > 0 and champion.image_costs[i] == 0)
    champ_only = sum(1 for i in shared if champion.image_costs[i] > 0 and candidate.image_costs[i] == 0)
    return cand_only, champ_only, len(shared)


def _cost_check(
    name: str,
    cand: SliceSummary | None,
    champ: SliceSummary | None,
    candidate: EvalSummary,
    champion: EvalSummary,
    recipe: str | None,
    policy: GateConfig,
) -> GateCheck:
    where = "overall" if recipe is None else f"recipe '{recipe}'"
    if cand is None or _missing(cand.expected_cost):
        return GateCheck(name, False, None, None, f"{where}: the candidate has no cost on this slice")
    if champ is None or _missing(champ.expected_cost):
        # A recipe the champion never saw: hold the candidate to the absolute limit instead.
        limit = policy.min_recipe_balanced_accuracy if recipe else policy.min_balanced_accuracy
        ok = not _missing(cand.balanced_accuracy) and float(cand.balanced_accuracy or 0) >= limit
        return GateCheck(
            name, ok, cand.balanced_accuracy, limit,
            f"{where}: not in the champion's evaluation; balanced accuracy {_fmt(cand.balanced_accuracy)} "
            f"vs absolute limit {limit:.4f}",
        )
    diff = float(cand.expected_cost or 0) - float(champ.expected_cost or 0)
    paired = _paired(candidate, champion, recipe)
    if diff <= policy.tolerance:
        return GateCheck(
            name, True, diff, policy.tolerance,
            f"{where}: cost {_fmt(cand.expected_cost)} vs champion {_fmt(champ.expected_cost)} "
            f"(difference {diff:+.4f} within tolerance {policy.tolerance})",
        )
    if paired is None:
        return GateCheck(
            name, False, diff, policy.tolerance,
            f"{where}: cost {_fmt(cand.expected_cost)} is worse than the champion's {_fmt(champ.expected_cost)} "
            f"by {diff:.4f} > tolerance {policy.tolerance} (no per-image results for a paired test)",
        )
    cand_only, champ_only, n = paired
    p = mcnemar_midp(cand_only, champ_only)
    significant = p < policy.alpha
    verdict = "significant" if significant else "not significant, treated as noise"
    return GateCheck(
        name, not significant, diff, policy.tolerance,
        f"{where}: cost {_fmt(cand.expected_cost)} vs champion {_fmt(champ.expected_cost)} "
        f"(worse by {diff:.4f} > tolerance {policy.tolerance}); on {n} shared images the candidate alone is wrong "
        f"on {cand_only}, the champion alone on {champ_only}: McNemar mid-p {p:.4f} ({verdict} at {policy.alpha})",
    )


def decide(candidate: EvalSummary, champion: EvalSummary | None, policy: GateConfig) -> GateDecision:
    """Apply the release policy; see the module docstring for the rules."""
    checks: list[GateCheck] = []
    if champion is None:
        ba = candidate.overall.balanced_accuracy
        checks.append(GateCheck(
            "balanced_accuracy", not _missing(ba) and float(ba or 0) >= policy.min_balanced_accuracy,
            ba, policy.min_balanced_accuracy,
            f"overall balanced accuracy {_fmt(ba)} vs absolute limit {policy.min_balanced_accuracy} (no champion yet)",
        ))
        for recipe, sl in sorted(candidate.per_recipe.items()):
            rba = sl.balanced_accuracy
            checks.append(GateCheck(
                f"balanced_accuracy[{recipe}]",
                not _missing(rba) and float(rba or 0) >= policy.min_recipe_balanced_accuracy,
                rba, policy.min_recipe_balanced_accuracy,
                f"recipe '{recipe}' balanced accuracy {_fmt(rba)} vs absolute limit "
                f"{policy.min_recipe_balanced_accuracy}",
            ))
    else:
        if candidate.dataset_version and champion.dataset_version and candidate.dataset_version != champion.dataset_version:
            checks.append(GateCheck(
                "same_test_set", False, None, None,
                f"candidate evaluated on dataset {candidate.dataset_version}, champion on "
                f"{champion.dataset_version}: the comparison needs the same golden test set",
            ))
        checks.append(_cost_check("cost", candidate.overall, champion.overall, candidate, champion, None, policy))
        for recipe in sorted(set(candidate.per_recipe) | set(champion.per_recipe)):
            checks.append(_cost_check(
                f"cost[{recipe}]", candidate.per_recipe.get(recipe), champion.per_recipe.get(recipe),
                candidate, champion, recipe, policy,
            ))
    ece = candidate.ece
    checks.append(GateCheck(
        "ece", not _missing(ece) and float(ece or 0) <= policy.max_ece, ece, policy.max_ece,
        f"calibrated expected calibration error {_fmt(ece)} vs limit {policy.max_ece}",
    ))
    if not _missing(candidate.parity_disagreement):
        par = float(candidate.parity_disagreement or 0)
        checks.append(GateCheck(
            "parity", par <= policy.max_parity_disagreement, par, policy.max_parity_disagreement,
            f"exported vs float model disagree on {100 * par:.2f} % of test images "
            f"(limit {100 * policy.max_parity_disagreement:.2f} %)",
        ))
    reasons = [c.detail for c in checks if not c.passed]
    return GateDecision(
        passed=all(c.passed for c in checks),
        reasons=reasons,
        checks=checks,
        champion=None if champion is None else champion.name,
    )
