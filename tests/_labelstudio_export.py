"""What Label Studio's JSON export holds once a person has labelled tasks: the one fake every labelling test uses.

The tests stand in for the human (a dict of answers, synth's ground truth); this module writes their answers in
the export format `lineguard.labelstudio.import_export` reads -- task and annotation ids assigned, one manual
choice per field (label, and recipe / defect type when given), as Label Studio 1.x writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Answer = tuple[str, str, str]  # label, recipe, defect type ('' = not chosen)


def _choice(field: str, value: str, result_id: str) -> dict[str, Any]:
    return {"from_name": field, "to_name": "image", "type": "choices", "value": {"choices": [value]},
            "id": result_id, "origin": "manual"}


def labelled_export(tasks: Sequence[dict[str, Any]], answer: Callable[[dict[str, Any]], Answer]) -> list[dict[str, Any]]:
    """The export of ``tasks`` with one annotation each: ``answer(task)`` is what the person chose."""
    exported = []
    for i, task in enumerate(tasks, start=1):
        label, recipe, defect = answer(task)
        result = [_choice("label", label, f"r{i}a")]
        if recipe:
            result.append(_choice("recipe", recipe, f"r{i}b"))
        if defect:
            result.append(_choice("defect_type", defect, f"r{i}c"))
        exported.append({
            "id": 500 + i, "data": task["data"], "predictions": [], "drafts": [], "meta": {}, "file_upload": None,
            "annotations": [{
                "id": 900 + i, "completed_by": 1, "result": result, "was_cancelled": False, "ground_truth": False,
                "created_at": "2026-06-01T10:00:00.000000Z", "updated_at": "2026-06-01T10:00:00.000000Z",
                "lead_time": 3.2, "task": 500 + i,
            }],
        })
    return exported
