"""The request and response bodies of the station API (pydantic): what docs/openapi.json describes.

Requests refuse unknown keys; responses allow extra keys so the store and runtime can add
fields without breaking clients. Imported only by :func:`lineguard.edge.api.create_app`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DecisionName = Literal["accept", "reject"]
_NAME = r"^[^\x00-\x1f\x7f]*$"  # no control characters: names end up in logs, topics and the dashboard

# POST /v1/predict reads its body itself (bounded while streaming), so the body is described here.
PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "description": "The image as the raw body, or as the 'image' part of a multipart form (with an optional "
                   "'recipe' field). At most the station's max_upload_bytes and max_pixels.",
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"},
                           "recipe": {"type": "string", "maxLength": 128}}}},
    },
}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorOut(_Out):
    error: str = Field(description="One line: what was wrong and what is expected")
    reason: str = Field(description="A short machine-readable tag, e.g. too_large, not_an_image, unauthorized")


class PredictionOut(_Out):
    """A decision (the prediction record of DESIGN.md)."""

    key: str = Field(description="The idempotency key, {station}:{frame_id}")
    frame_id: str
    time: float = Field(description="Unix seconds (UTC) when the frame was received")
    station: str
    source: str
    recipe: str | None
    label: str
    score: float = Field(description="Calibrated probability of the positive (defect) class")
    decision: DecisionName
    threshold: float
    bundle_name: str
    bundle_version: str
    latency_ms: float
    stats: dict[str, float] = Field(default_factory=dict)


class StoredPredictionOut(_Out):
    """A decision as the store holds it (its row id plus the record's fields)."""

    id: int
    frame_id: str
    time: float
    recipe: str | None
    label: str
    score: float
    decision: DecisionName


class PageOut(_Out):
    items: list[StoredPredictionOut]
    next_after_id: int | None = Field(description="Pass as after_id for the next page; null on the last page")


class FeedbackIn(_In):
    prediction_id: int = Field(ge=1, description="The id of the decision (from /v1/predictions)")
    label: str = Field(min_length=1, max_length=64, pattern=_NAME, description="The true class, e.g. good or bad")
    source: str = Field("operator", min_length=1, max_length=64, pattern=_NAME)
    note: str = Field("", max_length=1000)


class FeedbackOut(_Out):
    id: int
    prediction_id: int
    label: str


class RecipeIn(_In):
    recipe: str | None = Field(max_length=128, pattern=_NAME, description="A recipe of the model; null clears it")


class RecipeOut(_Out):
    recipe: str | None
    known: list[str] = Field(description="The recipes the running model has thresholds for")


class ModelSwapIn(_In):
    path: str = Field(min_length=1, max_length=4096, description="A bundle folder or .tar.gz on the station's disk")
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$",
                               description="Load only if the bundle has this digest (see `lineguard bundle info`)")


class ModelOut(_Out):
    name: str
    version: str
    digest: str
    signed_by: str | None
    precision: str
    classes: list[str]
    recipes: list[str]
    generation: int = Field(description="Swaps that took effect since start")
    swaps: dict[str, int]
    last_error: str | None


class ReadyOut(_Out):
    ready: bool
    reasons: list[str]


class HealthOut(_Out):
    status: Literal["ok", "degraded", "draining"]
    reasons: list[str]
    station: str
    time: float
    model: dict[str, Any]
    recipe: str | None
    store: dict[str, Any]
    runtime: dict[str, Any]
    api: dict[str, Any]


class AuthIn(_In):
    """The body of POST /v1/auth: nothing (the token is the header)."""


class AuthOut(_Out):
    ok: bool
    station: str


class SummaryOut(_Out):
    """GET /v1/summary (lineguard.edge.summary): each section says whether it is ``available``."""

    station: str
    since: float | None = Field(description="Unix seconds the counts start from (the lookback)")
    first_time: float | None = Field(description="Capture time of the oldest decision counted")
    last_id: int = Field(description="The newest prediction id read; the page polls /v1/predictions after it")
    rows: int
    complete: bool = Field(description="False while a large store is still being read in (spread over polls)")
    recipe: str | None
    model: dict[str, Any] = Field(description="name, version, digest, classes, positive_class, thresholds, cost")
    counts: dict[str, Any] = Field(description="inspected, rejected, reject_rate; per_recipe, per_shift, per_version")
    scores: dict[str, Any] = Field(description="histogram of the recent scores (edges, counts) and the bundle's reference")
    kpi: dict[str, Any] = Field(description="expected escapes and false rejects and their cost, per recipe/shift/version")
    estimate: dict[str, Any] = Field(description="label-free estimate (CBPE) of balanced accuracy, false-reject and escape rates")
    feedback: dict[str, Any] = Field(description="operator labels: measured rates beside the estimate for the same frames")
    drift: dict[str, Any] = Field(description="signals over time with reference and threshold; alarms with their frame")
    outputs: dict[str, Any] = Field(description="per recipe: scores and reject rate against the bundle's validation "
                                    "split and against the previous model, each with a verdict")
    shadow: dict[str, Any] = Field(description="the challenger's agreement, when one runs in shadow")


class ShadowIn(_In):
    """A challenger bundle on the station's disk, optionally pinned to its digest."""

    path: str = Field(min_length=1, max_length=4096, description="A bundle folder or .tar.gz on the station's disk")
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$",
                               description="Load only if the bundle has this digest (see `lineguard bundle info`)")


# PUT /v1/shadow reads its body itself (JSON, or an archive streamed to disk), so the body is described here.
SHADOW_BODY: dict[str, Any] = {
    "required": True,
    "description": "Either JSON naming a bundle on the station's disk ({\"path\": ..., \"digest\": ...}), or the "
                   "bundle's .tar.gz as the raw body (application/gzip; at most the station's max_bundle_bytes; "
                   "pin it with ?digest=).",
    "content": {
        "application/json": {"schema": ShadowIn.model_json_schema()},
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ShadowOut(_Out):
    """The challenger in shadow: agreement with the champion on the same frames, or why none runs."""

    enabled: bool = Field(description="False when station.yaml turns shadow mode off (installs are refused)")
    running: bool
    challenger: dict[str, Any] | None = Field(None, description="name, version, digest, signed_by, source")
    frames_compared: int | None = None
    agreement: float | None = Field(None, description="Share of compared frames both models decided alike")
    disagreements: int | None = None
    skipped: int | None = Field(None, description="Frames not compared because the challenger's queue was full")
    per_recipe: list[dict[str, Any]] | None = None
    reason: str | None = Field(None, description="Why no challenger runs (when running is false)")


class ShadowPromoteOut(_Out):
    model: dict[str, Any] = Field(description="The new champion (as GET /v1/model)")
    shadow: dict[str, Any] = Field(description="The challenger's final shadow status")
