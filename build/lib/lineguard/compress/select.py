"""Pure: the candidate records and the rule that picks one under an edge budget.

:func:`select_candidate` takes measured :class:`Candidate` records and returns a
:class:`Selection`: the most accurate candidate within the latency budget and the allowed
accuracy drop, INT8 only where it measures faster than fp32. No I/O, no model runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lineguard import LineguardError

Backend = Literal["ort", "openvino"]  # the edge runner's backend names
REFERENCE = "fp32"


class CompressError(LineguardError):
    """Compression cannot go on: a bad option, a missing backend, or no candidate fits the budget."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate at one thread count (batch 1), over all rounds."""

    threads: int
    median_ms: float
    p99_ms: float
    runs: int


@dataclass(frozen=True)
class Candidate:
    """One measured variant of the model. ``precision`` is the label written into the bundle."""

    name: str
    precision: str
    backend: Backend
    model_path: str
    size_bytes: int
    macs: int | None = None
    params: int | None = None
    latency: Mapping[int, LatencyStats] = field(default_factory=dict)
    balanced_accuracy: float = float("nan")
    ece: float = float("nan")
    agreement: float = float("nan")  # fraction of golden-batch decisions equal to the float model's
    max_score_diff: float = float("nan")  # max |P(positive) - float P(positive)| on the golden batch
    selectable: bool = True  # False: measured for comparison, not deployable by this configuration
    note: str = ""

    def latency_ms(self, threads: int) -> float:
        """Median latency at ``threads``; +inf when it was not measured (never fits a budget)."""
        stats = self.latency.get(threads)
        return stats.median_ms if stats else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {str(k): asdict(v) for k, v in self.latency.items()}
        return d


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_candidate`: the choice (or None) and why each one was or was not."""

    chosen: Candidate | None
    reasons: dict[str, str]
    budget_ms: float
    max_drop: float
    threads: int
    fallback: bool = (
        False  # True: nothing fitted and the fp32 reference was taken anyway (compress.on_no_fit)
    )

    def explain(self) -> str:
        lines = [
            f"budget {self.budget_ms:g} ms at {self.threads} thread(s), max drop {self.max_drop * 100:.2f} points"
        ]
        lines += [f"  {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


def _is_int8(candidate: Candidate) -> bool:
    return "int8" in candidate.precision


def select_candidate(
    candidates: Sequence[Candidate], budget_ms: float, max_drop: float, threads: int = 1
) -> Selection:
    """Pick the most accurate candidate whose median latency fits ``budget_ms`` and whose balanced
    accuracy is at most ``max_drop`` (a fraction: 0.003 = 0.3 points) below the float reference.

    Rules, in order, each giving the reason a candidate is skipped:
    not selectable (e.g. a backend the deployment does not use); over the latency budget; accuracy
    drop too large; INT8 that is not measured faster than fp32 at the same thread count (on x86
    INT8 is often slower for MobileNetV3, and then it only costs accuracy). Ties on accuracy go to
    the faster, then the smaller candidate. Returns ``chosen=None`` when nothing fits; the
    caller decides how to say so (``compress`` raises :class:`CompressError`, or bundles fp32 and says so
    when ``compress.on_no_fit`` is ``fp32``).
    """
    by_name = {c.name: c for c in candidates}
    if REFERENCE not in by_name:
        raise CompressError(f"the candidates must include the float reference '{REFERENCE}'")
    reference = by_name[REFERENCE]
    ref_latency = reference.latency_ms(threads)
    reasons: dict[str, str] = {}
    eligible: list[Candidate] = []
    for c in candidates:
        latency = c.latency_ms(threads)
        drop = reference.balanced_accuracy - c.balanced_accuracy
        if not c.selectable:
            reasons[c.name] = f"skipped: not selectable ({c.note or 'comparison only'})"
        elif math.isnan(c.balanced_accuracy):
            reasons[c.name] = "skipped: accuracy not measured"
        elif latency > budget_ms:
            shown = "not measured" if math.isinf(latency) else f"{latency:.3f} ms"
            reasons[c.name] = f"skipped: over budget ({shown} > {budget_ms:g} ms)"
        elif drop > max_drop + 1e-12:
            reasons[c.name] = (
                f"skipped: balanced-accuracy drop {drop * 100:.2f} points > {max_drop * 100:.2f} allowed"
            )
        elif _is_int8(c) and not latency < ref_latency:
            reasons[c.name] = f"skipped: INT8 not faster than fp32 ({latency:.3f} ms vs {ref_latency:.3f} ms)"
        else:
            eligible.append(c)
            reasons[c.name] = (
                f"eligible: {latency:.3f} ms, balanced accuracy {c.balanced_accuracy * 100:.2f} %"
            )
    chosen = None
    if eligible:
        chosen = min(eligible, key=lambda c: (-c.balanced_accuracy, c.latency_ms(threads), c.size_bytes))
        reasons[chosen.name] = "chosen: " + reasons[chosen.name].removeprefix("eligible: ")
    return Selection(chosen=chosen, reasons=reasons, budget_ms=budget_ms, max_drop=max_drop, threads=threads)


def comparison_table(candidates: Sequence[Candidate], selection: Selection | None = None) -> str:
    """The candidate table as Markdown: size, MACs, latency per thread count, accuracy, parity."""
    threads = sorted({t for c in candidates for t in c.latency})
    head = ["candidate", "backend", "size (KB)", "MMACs", "params (k)"]
    for t in threads:
        head += [f"median ms @{t}t", f"p99 ms @{t}t"]
    head += ["bal. acc. (%)", "ECE", "golden agreement (%)", "max score diff", "decision"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v: float | int | None, fmt: str) -> str:
        if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
            return "-"
        return format(v, fmt)

    for c in candidates:
        cells = [
            c.name,
            c.backend,
            num(c.size_bytes / 1024, ".1f"),
            num(None if c.macs is None else c.macs / 1e6, ".2f"),
            num(None if c.params is None else c.params / 1e3, ".1f"),
        ]
        for t in threads:
            s = c.latency.get(t)
            cells += [num(s.median_ms if s else None, ".3f"), num(s.p99_ms if s else None, ".3f")]
        cells += [
            num(c.balanced_accuracy * 100, ".2f"),
            num(c.ece, ".4f"),
            num(c.agreement * 100, ".2f"),
            num(c.max_score_diff, ".4f"),
            (selection.reasons.get(c.name, "") if selection else "").replace("|", "/"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
