"""The station's HTTP API: push a frame, read decisions and health, give feedback, switch recipe or model.

:func:`create_app` builds a FastAPI app over one station (its store, its runtime and its
:class:`~lineguard.edge.hotswap.ModelSlot`); ``lineguard serve`` runs it with uvicorn
(:mod:`lineguard.edge.serve`). The routes, all JSON unless said otherwise:

==========================================  ======  ===================================================
route                                       token   what it does
==========================================  ======  ===================================================
``POST /v1/predict``                        yes     decide one uploaded image (raw body or multipart)
``GET  /v1/health``                         no      liveness, plus store / outbox / sync / camera health
``GET  /v1/ready``                          no      200 when the model is loaded, the store writable and
                                                    intake open; 503 otherwise
``GET  /metrics``                           no      Prometheus text format
``GET  /v1/predictions``                    no      decisions, paged (``after_id``, ``limit``) and
                                                    filtered (``since``, ``until``, ``recipe``, ``decision``)
``GET  /v1/predictions/{id}``               no      one decision
``GET  /v1/predictions/{id}/image``         no      its sampled image (PNG), when it was sampled; ``?thumb=``
                                                    scales it down
``GET  /v1/summary``                        no      what the dashboard shows (:mod:`lineguard.edge.summary`)
``POST /v1/auth``                           yes     checks the token, changes nothing (the dashboard's login)
``POST /v1/feedback``                       yes     an operator's true label for a decision
``GET|POST /v1/recipe``                     yes*    the current recipe (* POST only)
``GET|POST /v1/model``                      yes*    the running model; POST hot-swaps it (off unless
                                                    enabled: 403)
``GET  /v1/shadow``                         no      the challenger in shadow: agreement with the champion
``PUT  /v1/shadow``                         yes     run a challenger in shadow (a bundle path as JSON, or
                                                    its .tar.gz as the body); replaces the one running
``DELETE /v1/shadow``                       yes     stop the challenger
``POST /v1/shadow/promote``                 yes     the challenger becomes the champion through the hot
                                                    swap (off unless hot swap is enabled: 403); the
                                                    shadow stops
==========================================  ======  ===================================================

``GET /`` serves the operator dashboard (``lineguard/dashboard/``, docs/dashboard.md). Every answer
carries a strict Content-Security-Policy and the other page headers; writes from another ``Origin``
and writes that are not JSON (but the image upload) are refused (:class:`_PageGuard`).

A challenger in shadow (:mod:`lineguard.edge.shadow`) never acts on the line: its routes change
what is compared and recorded, not what is decided -- but for the promotion, which is a hot swap.

Every route that changes state depends on :func:`require_token` (``Authorization: Bearer``,
compared in constant time); :func:`unguarded_write_routes` lists any that does not, and
:func:`create_app` refuses to build such an app. Every error is one line of JSON,
``{"error": "...", "reason": "<tag>"}``. Uploads are bounded before they are read
(:mod:`lineguard.edge.upload`) and decoded only after the header's pixel count is checked.

The station is anything with the attributes of :class:`StationLike` (the store, runtime and
slot protocols below follow docs/interfaces of issue 12). FastAPI, pydantic and
prometheus-client are imported inside :func:`create_app`: importing this module does nothing.
"""

import math
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lineguard import LineguardError, __version__
from lineguard.preprocess import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lineguard.edge.hotswap import ModelSlot
    from lineguard.edge.summary import DashboardSummary

__all__ = [
    "API_VERSION",
    "ApiLimits",
    "Intake",
    "RuntimeLike",
    "StationLike",
    "StoreLike",
    "create_app",
    "openapi_schema",
    "unguarded_write_routes",
]

API_VERSION = "1.0"
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sent with every answer (see _PageGuard). The dashboard needs nothing but its own files and the API:
# no inline script or style, no other origin, no frames, no plugins, no forms that post elsewhere.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
LIVE_SOURCES = ("camera", "url")  # sources whose disconnection degrades health (files and push do not)
# Reasons in the store's health that mean a decision cannot be recorded (the rest degrade, e.g. sampling).
STORE_WRITE_FAILURES = ("write_failed", "unavailable")
# Status per shadow refusal (lineguard.edge.shadow.ShadowError.reason).
SHADOW_STATUS = {"shadow_disabled": 403, "shadow_busy": 409, "swap_in_progress": 409, "no_challenger": 409,
                 "shadow_refused": 422, "promote_refused": 422, "too_large": 413, "empty": 400}
BUNDLE_MEDIA = ("application/gzip", "application/x-gzip", "application/octet-stream", "application/x-tar")
MAX_JSON_BODY = 65_536
# Status per decode failure (lineguard.preprocess.ImageDecodeError.reason).
DECODE_STATUS = {"empty": 400, "truncated": 400, "corrupt": 400, "not_an_image": 415, "too_large": 413}


# --- what the app needs from a station -----------------------------------------------------------


class PredictionRecordLike(Protocol):
    """A decision as the runtime returns it (``lineguard.edge.store.PredictionRecord``)."""

    @property
    def key(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class StoreLike(Protocol):
    """The reads and the feedback write of ``lineguard.edge.store.Store``."""

    def predictions(self, *, since: float | None = None, until: float | None = None, recipe: str | None = None,
                    decision: str | None = None, limit: int = 100, after_id: int | None = None) -> list[dict[str, Any]]: ...

    def prediction(self, id: int) -> dict[str, Any] | None: ...

    def image(self, id: int) -> bytes | None: ...

    def add_feedback(self, prediction_id: int, label: str, *, source: str = "operator", note: str = "") -> int: ...

    def health(self) -> dict[str, Any]: ...

    def counts(self) -> dict[str, Any]: ...


class RuntimeLike(Protocol):
    """The push path and the controls of ``lineguard.edge.runtime.EdgeRuntime``."""

    def submit(self, image: np.ndarray, recipe: str | None = None) -> PredictionRecordLike: ...

    def set_recipe(self, name: str | None) -> None: ...

    @property
    def recipe(self) -> str | None: ...

    @property
    def metrics(self) -> dict[str, Any]: ...


class StationLike(Protocol):
    """One station: its name, store, runtime and model slot (``lineguard.edge.station.Station``)."""

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> StoreLike: ...

    @property
    def runtime(self) -> RuntimeLike: ...

    @property
    def slot(self) -> "ModelSlot": ...


@dataclass(frozen=True)
class ApiLimits:
    """What one request may cost. ``max_upload_bytes`` bounds the bytes read per upload (refused
    before reading when declared, cut off at the first byte over when not); ``max_pixels`` the
    decoded size (checked from the header: decompression bombs); ``max_concurrent_predictions`` the
    uploads decoded at once (more get 503 and ``Retry-After``); ``max_page`` the rows per page;
    ``max_bundle_bytes`` a challenger bundle uploaded to ``PUT /v1/shadow`` (streamed to disk)."""

    max_upload_bytes: int = 50_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_concurrent_predictions: int = 4
    max_page: int = 1000
    max_bundle_bytes: int = 500_000_000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent_predictions", "max_page", "max_bundle_bytes"):
            if int(getattr(self, name)) < 1:
                raise LineguardError(f"api limit {name} must be >= 1, got {getattr(self, name)}")


class Intake:
    """Counts the uploads in flight and closes intake for a shutdown (new ones then get 503).

    ``close()`` is what SIGTERM calls first; ``wait_idle(timeout)`` then waits for the
    uploads already in flight to finish, so none is cut off mid-decision.
    """

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self._inflight = 0
        self._open = True
        self._cond = threading.Condition()

    def enter(self) -> str | None:
        """Take a place; None when taken, else why not (``draining`` or ``busy``)."""
        with self._cond:
            if not self._open:
                return "draining"
            if self._inflight >= self.max_concurrent:
                return "busy"
            self._inflight += 1
            return None

    def leave(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._open = False
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def accepting(self) -> bool:
        return self._open


class ApiError(LineguardError):
    """An error answered as ``{"error": message, "reason": reason}`` with ``status``."""

    def __init__(self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})
        super().__init__(message)


def _thumbnail(png: bytes, size: int) -> bytes:
    """A stored PNG scaled down to fit ``size`` x ``size`` (unchanged when it already fits)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        if max(img.size) <= size:
            return png
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()


def _one_line(text: str, limit: int = 400) -> str:
    return " ".join(str(text).split())[:limit]


def parse_time(value: str | None, name: str) -> float | None:
    """A query's time: unix seconds (``1767225600.5``) or ISO 8601 (``2026-11-02T08:00:00Z``; naive is UTC)."""
    if value is None or value == "":
        return None
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(422, "invalid_request", f"{name}={value[:60]!r} is neither unix seconds nor an "
                           "ISO 8601 time such as 2026-11-02T08:00:00Z") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise ApiError(422, "invalid_request", f"{name} must be a finite time")
    return t


def _check_recipe(recipe: str | None, known: list[str]) -> None:
    """An unknown recipe would silently decide with the default threshold: refused when the model lists recipes."""
    if recipe is None:
        return
    if any(ord(c) < 32 or ord(c) == 127 for c in recipe):
        raise ApiError(422, "unknown_recipe", "a recipe name must not hold control characters")
    if known and recipe not in known:
        raise ApiError(422, "unknown_recipe", f"recipe {recipe[:80]!r} is not one of the model's recipes: "
                       f"{', '.join(known)}")


def _store_health(station: "StationLike") -> dict[str, Any]:
    """The store's health; a store that cannot even answer is reported as unavailable, not raised."""
    try:
        return dict(station.store.health())
    except Exception as exc:  # a closed or broken store must not break /health
        return {"status": "degraded", "reasons": [f"unavailable: {type(exc).__name__}: {_one_line(str(exc), 200)}"]}


# --- metrics -------------------------------------------------------------------------------------


def _runtime_families(station: StationLike) -> Iterator[Any]:
    """Prometheus families read at scrape time from the runtime's, the store's and the slot's own counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    m = dict(station.runtime.metrics or {})
    frames = CounterMetricFamily("lineguard_frames", "Frames decided by the runtime (all sources, the API included)")
    frames.add_metric([], float(m.get("frames", 0)))
    yield frames
    decisions = CounterMetricFamily("lineguard_decisions", "Decisions per recipe and decision",
                                    labels=["recipe", "decision"])
    for recipe, per in sorted((m.get("decisions") or {}).items()):
        for decision, n in sorted(per.items()):
            decisions.add_metric([str(recipe or ""), str(decision)], float(n))
    yield decisions
    lat = m.get("latency_ms") or {}
    if lat.get("buckets"):
        hist = HistogramMetricFamily("lineguard_decision_latency_seconds",
                                     "Preprocessing + inference time per decision")
        buckets = [(("+Inf" if str(le) in ("+Inf", "inf") else repr(float(le) / 1000.0)), float(n))
                   for le, n in lat["buckets"]]
        if buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", float(lat.get("count", buckets[-1][1]))))
        hist.add_metric([], buckets, float(lat.get("sum", 0.0)) / 1000.0)
        yield hist
    yield GaugeMetricFamily("lineguard_queue_depth", "Frames waiting to be decided", value=float(m.get("queue_depth", 0)))
    dropped = CounterMetricFamily("lineguard_frames_dropped", "Frames a live source dropped (newest frame kept)")
    dropped.add_metric([], float(m.get("dropped", 0)))
    yield dropped
    src = m.get("source") or {}
    if src:
        kind = str(src.get("kind", ""))
        connected = GaugeMetricFamily("lineguard_source_connected", "1 when the frame source (camera, stream, "
                                      "file, push) is connected", labels=["kind"])
        connected.add_metric([kind], 1.0 if src.get("connected") else 0.0)
        yield connected
        rec = CounterMetricFamily("lineguard_source_reconnects", "Reconnects of the frame source", labels=["kind"])
        rec.add_metric([kind], float(src.get("reconnects", 0)))
        yield rec
    health = _store_health(station)
    backlog = GaugeMetricFamily("lineguard_outbox_backlog", "Messages not yet delivered, per sink", labels=["sink"])
    for sink, n in sorted((health.get("outbox_backlog") or {}).items()):
        backlog.add_metric([str(sink)], float(n))
    yield backlog
    sync = GaugeMetricFamily("lineguard_sync_backlog", "Rows not yet uploaded to blob storage, per kind "
                             "(records, images, feedback); absent when sync is off", labels=["kind"])
    for kind, n in sorted((health.get("sync_backlog") or {}).items()):
        sync.add_metric([str(kind)], float(n))
    yield sync
    yield GaugeMetricFamily("lineguard_store_degraded", "1 when the store reports degraded (e.g. disk full)",
                            value=0.0 if health.get("status", "ok") == "ok" else 1.0)
    info = station.slot.info()
    model = GaugeMetricFamily("lineguard_model_info", "The running model (value 1)", labels=["name", "version", "digest"])
    model.add_metric([info["name"], info["version"], info["digest"]], 1.0)
    yield model
    swaps = CounterMetricFamily("lineguard_model_swaps", "Hot swaps per result", labels=["result"])
    for result, n in sorted(info["swaps"].items()):
        swaps.add_metric([result], float(n))
    yield swaps


class _StationCollector:
    def __init__(self, station: StationLike) -> None:
        self.station = station

    def collect(self) -> Iterator[Any]:
        yield from _runtime_families(self.station)


# --- the app -------------------------------------------------------------------------------------


def unguarded_write_routes(app: "FastAPI") -> list[str]:
    """Every route that accepts a method other than GET/HEAD/OPTIONS without the token dependency.

    Static mounts (the dashboard) serve GET and HEAD only and pass; any other mount is listed,
    since what it routes cannot be checked here.
    """
    from fastapi.routing import APIRoute
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    guard = app.state.require_token
    found: list[str] = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            methods = set(route.methods or ())
            if methods <= READ_METHODS:
                continue
            stack, guarded = list(route.dependant.dependencies), False
            while stack:
                dep = stack.pop()
                guarded = guarded or dep.call is guard
                stack.extend(dep.dependencies)
            if not guarded:
                found.append(f"{','.join(sorted(methods))} {route.path}")
        elif isinstance(route, Mount):
            if not isinstance(route.app, StaticFiles):
                found.append(f"mount {route.path}")
        else:
            methods = getattr(route, "methods", None) or {"*"}
            if not set(methods) <= READ_METHODS:
                found.append(f"{','.join(sorted(methods))} {getattr(route, 'path', route)}")
    return found


def create_app(
    station: StationLike,
    *,
    token: str,
    allow_hot_swap: bool = False,
    limits: ApiLimits | None = None,
    intake: Intake | None = None,
    allowed_hosts: list[str] | None = None,
    summary: "DashboardSummary | None" = None,
) -> "FastAPI":
    """The API app over ``station`` (see the module docstring for the routes).

    ``token`` guards every state-changing route; ``allow_hot_swap`` enables ``POST /v1/model``
    (403 otherwise); ``limits`` bounds each request; ``intake`` is shared with the server so a
    shutdown can close it and wait for in-flight uploads; ``allowed_hosts`` (e.g. the loopback
    names when bound to 127.0.0.1) refuses other ``Host`` headers, against DNS rebinding;
    ``summary`` aggregates the store for ``GET /v1/summary`` (default: a
    :class:`~lineguard.edge.summary.DashboardSummary` with its defaults, built at the first call).
    """
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lineguard.edge import schemas as S
    from lineguard.edge.predictor import ItemError
    from lineguard.edge.upload import UploadError, read_upload
    from lineguard.preprocess import ImageDecodeError, decode_image

    if len(token) < 16:
        raise LineguardError("the API token must be at least 16 characters; let `lineguard serve` generate one")
    limits = limits or ApiLimits()
    intake = intake or Intake(limits.max_concurrent_predictions)
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False, description="The station's API token (see `lineguard serve`)")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """The token guard of every state-changing route (constant-time compare)."""
        given = credentials.credentials.encode() if credentials is not None else b""
        if not (given and secrets.compare_digest(given, expected)):
            raise ApiError(401, "unauthorized", "this route needs the API token: send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})

    registry = CollectorRegistry()
    registry.register(_StationCollector(station))  # type: ignore[arg-type]
    requests_total = Counter("lineguard_api_requests", "API requests per route, method and status",
                             ["route", "method", "status"], registry=registry)
    refused_total = Counter("lineguard_api_uploads_refused", "Uploads refused, per reason", ["reason"], registry=registry)
    predict_seconds = Histogram("lineguard_api_predict_seconds", "POST /v1/predict: upload, decode and decision",
                                registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))

    app = FastAPI(
        title="LineGuard station API", version=API_VERSION, docs_url=None, redoc_url=None,
        description="The HTTP API of one LineGuard edge station (docs/runtime.md). Every write needs the "
                    "station's token; errors are one line of JSON: {\"error\": ..., \"reason\": ...}.",
    )
    app.state.require_token = require_token
    app.state.intake = intake
    app.state.registry = registry
    app.state.station = station
    guarded = [Depends(require_token)]
    err = {"model": S.ErrorOut}

    # --- errors: one line of JSON each ----------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "reason": exc.reason}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": _one_line(str(exc.detail)), "reason": reason}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"error": _one_line(f"{where}: {first.get('msg')}{more}"), "reason": "invalid_request"}, 422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the station keeps running",
                             "reason": "internal"}, 500)

    # --- predict ------------------------------------------------------------------------------

    @app.post("/v1/predict", dependencies=guarded, response_model=S.PredictionOut, tags=["decisions"],
              responses={400: err, 401: err, 413: err, 415: err, 422: err, 503: err},
              openapi_extra={"requestBody": S.PREDICT_BODY})
    async def predict(request: Request,
                      recipe: str | None = Query(None, max_length=128, description="Recipe (default: the current one)"),
                      ) -> Any:
        """Decide one image: the raw body (image/*) or the ``image`` part of a form; size and pixels bounded."""
        why = intake.enter()
        if why is not None:
            refused_total.labels(why).inc()
            raise ApiError(503, why, "the station is shutting down and takes no new frames" if why == "draining"
                           else f"{intake.max_concurrent} uploads are already being decided; retry shortly",
                           {"Retry-After": "1"})
        t0 = time.perf_counter()
        try:
            try:
                upload = await read_upload(request.headers, request.stream(), limits.max_upload_bytes)
            except UploadError as exc:
                refused_total.labels(exc.reason).inc()
                raise ApiError(exc.status, exc.reason, str(exc)) from None
            chosen = upload.recipe or recipe
            _check_recipe(chosen, station.slot.current().bundle.recipes)
            try:
                image = await run_in_threadpool(decode_image, upload.data, limits.max_pixels)
            except ImageDecodeError as exc:
                refused_total.labels(exc.reason).inc()
                raise ApiError(DECODE_STATUS.get(exc.reason, 400), exc.reason,
                               _one_line(f"not a usable image: {exc}")) from None
            try:
                record = await run_in_threadpool(station.runtime.submit, image, chosen)
            except ItemError as exc:  # this image cannot be decided (e.g. a non-finite score): its fault
                raise ApiError(422, exc.reason, _one_line(str(exc))) from None
            except LineguardError as exc:  # decided but not recorded, or the station refused: the station's
                raise ApiError(503, "not_recorded", _one_line(str(exc)), {"Retry-After": "1"}) from None
            predict_seconds.observe(time.perf_counter() - t0)
            return record.to_dict() | {"key": record.key}
        finally:
            intake.leave()

    # --- reads --------------------------------------------------------------------------------

    @app.get("/v1/health", response_model=S.HealthOut, tags=["health"])
    def health() -> Any:
        """Liveness (always 200 while the process runs) and what is degraded: store, outbox, sync, camera, model."""
        store_health = _store_health(station)
        metrics = dict(station.runtime.metrics or {})
        src = metrics.get("source") or {}
        reasons = [str(r) for r in store_health.get("reasons", [])]
        if src.get("kind") in LIVE_SOURCES and not src.get("connected", True):
            reasons.append(f"source_disconnected: the {src.get('kind')} is not delivering frames "
                           f"({src.get('last_error') or 'reconnecting'})")
        status = "draining" if not intake.accepting else ("ok" if not reasons else "degraded")
        return {"status": status, "reasons": reasons, "station": station.name, "time": time.time(),
                "model": station.slot.info(), "recipe": station.runtime.recipe, "store": store_health,
                "runtime": {k: metrics.get(k) for k in ("frames", "queue_depth", "dropped", "last_error")}
                | {"source": src},
                "api": {"inflight": intake.inflight, "accepting": intake.accepting}}

    @app.get("/v1/ready", response_model=S.ReadyOut, responses={503: {"model": S.ReadyOut}}, tags=["health"])
    def ready() -> Any:
        """200 when this station can take frames: model loaded, store writable, intake open; else 503 with reasons."""
        reasons = []
        try:
            station.slot.current()
        except Exception as exc:  # a slot that cannot answer is a station that cannot decide
            reasons.append(f"model not loaded: {type(exc).__name__}")
        h = _store_health(station)
        failed = [str(r) for r in h.get("reasons", []) if str(r).startswith(STORE_WRITE_FAILURES)]
        if failed:
            reasons.append("store not writable: " + "; ".join(failed))
        if not intake.accepting:
            reasons.append("shutting down")
        body = {"ready": not reasons, "reasons": reasons}
        return JSONResponse(body, 200 if not reasons else 503)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    def metrics() -> Response:
        """Prometheus metrics: frames, decisions, latency, queue, drops, outbox and sync backlog, camera, API."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/predictions", response_model=S.PageOut, tags=["decisions"], responses={422: err})
    def predictions(
        after_id: int | None = Query(None, ge=0, description="Return rows with an id above this (the previous page's next_after_id)"),
        limit: int = Query(100, ge=1, le=limits.max_page),
        since: str | None = Query(None, description="From this time (unix seconds or ISO 8601)"),
        until: str | None = Query(None, description="Before this time (unix seconds or ISO 8601)"),
        recipe: str | None = Query(None, max_length=128),
        decision: S.DecisionName | None = Query(None),
    ) -> Any:
        """Decisions in id order, paged with ``after_id`` and ``limit``, filtered by time, recipe and decision."""
        rows = station.store.predictions(since=parse_time(since, "since"), until=parse_time(until, "until"),
                                         recipe=recipe, decision=decision, limit=limit, after_id=after_id)
        next_id = rows[-1].get("id") if len(rows) == limit and rows else None
        return {"items": rows, "next_after_id": next_id}

    @app.get("/v1/predictions/{prediction_id}", response_model=S.StoredPredictionOut, tags=["decisions"],
             responses={404: err})
    def prediction(prediction_id: int = PathParam(ge=1)) -> Any:
        """One stored decision by id."""
        row = station.store.prediction(prediction_id)
        if row is None:
            raise ApiError(404, "not_found", f"no prediction with id {prediction_id}")
        return row

    @app.get("/v1/predictions/{prediction_id}/image", tags=["decisions"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: err})
    async def prediction_image(
        prediction_id: int = PathParam(ge=1),
        thumb: int | None = Query(None, ge=16, le=1024, description="Scale down to fit this many pixels (a thumbnail)"),
    ) -> Response:
        """The sampled image of a decision (PNG), optionally scaled down; 404 when the decision was not sampled."""
        data = await run_in_threadpool(station.store.image, prediction_id)
        if data is None:
            found = await run_in_threadpool(station.store.prediction, prediction_id)
            what = "no prediction" if found is None else "no sampled image for prediction"
            raise ApiError(404, "not_found", f"{what} with id {prediction_id}")
        if thumb is not None:
            data = await run_in_threadpool(_thumbnail, data, thumb)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    summary_lock = threading.Lock()
    summary_holder: list[DashboardSummary] = [summary] if summary is not None else []

    @app.get("/v1/summary", response_model=S.SummaryOut, tags=["dashboard"], responses={304: {"description": "unchanged"}})
    def get_summary(request: Request) -> Any:
        """What the dashboard shows: counts and reject rate per recipe and shift, score histogram against the
        bundle's reference, KPIs and cost, estimated and feedback-measured accuracy, drift, shadow agreement.

        Read incrementally from the store (only the rows after the last one seen). Answers carry an ``ETag``;
        send it back as ``If-None-Match`` and an unchanged summary is a bodyless 304."""
        import hashlib
        import json

        from lineguard.edge.summary import DashboardSummary

        with summary_lock:
            if not summary_holder:
                summary_holder.append(DashboardSummary(station))
        body = json.dumps(summary_holder[0].snapshot(), separators=(",", ":"), allow_nan=False).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in [t.strip() for t in (request.headers.get("if-none-match") or "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    # --- writes -------------------------------------------------------------------------------

    @app.post("/v1/feedback", dependencies=guarded, response_model=S.FeedbackOut, tags=["feedback"],
              responses={401: err, 404: err, 422: err})
    def feedback(body: S.FeedbackIn) -> Any:
        """An operator's true label for a decision; it is stored and synced for the next training run."""
        if station.store.prediction(body.prediction_id) is None:
            raise ApiError(404, "not_found", f"no prediction with id {body.prediction_id}")
        classes = list(station.slot.current().bundle.classes)
        if body.label not in classes:
            raise ApiError(422, "unknown_label", f"label {body.label[:60]!r} is not one of the model's classes: "
                           f"{', '.join(classes)}")
        try:
            fid = station.store.add_feedback(body.prediction_id, body.label, source=body.source, note=body.note)
        except LineguardError as exc:  # e.g. removed by retention since the check above
            raise ApiError(422, "feedback_refused", _one_line(str(exc))) from None
        return {"id": fid, "prediction_id": body.prediction_id, "label": body.label}

    @app.post("/v1/auth", dependencies=guarded, response_model=S.AuthOut, tags=["control"], responses={401: err})
    def check_token(body: S.AuthIn) -> Any:
        """Check a token without changing anything: the dashboard's login (200 with the token, 401 without)."""
        return {"ok": True, "station": station.name}

    @app.get("/v1/recipe", response_model=S.RecipeOut, tags=["control"])
    def get_recipe() -> Any:
        """The recipe decisions are made for now, and the recipes the model knows."""
        return {"recipe": station.runtime.recipe, "known": station.slot.current().bundle.recipes}

    @app.post("/v1/recipe", dependencies=guarded, response_model=S.RecipeOut, tags=["control"],
              responses={401: err, 422: err})
    def set_recipe(body: S.RecipeIn) -> Any:
        """Switch the current recipe (recorded with every decision from now on); null clears it."""
        known = station.slot.current().bundle.recipes
        _check_recipe(body.recipe, known)
        try:
            station.runtime.set_recipe(body.recipe)
        except LineguardError as exc:
            raise ApiError(422, "unknown_recipe", _one_line(str(exc))) from None
        return {"recipe": station.runtime.recipe, "known": known}

    @app.get("/v1/model", response_model=S.ModelOut, tags=["control"])
    def get_model() -> Any:
        """The running model: name, version, digest, signer, and the slot's swap counters."""
        return station.slot.info()

    @app.post("/v1/model", dependencies=guarded, response_model=S.ModelOut, tags=["control"],
              responses={401: err, 403: err, 409: err, 422: err})
    async def swap_model(body: S.ModelSwapIn) -> Any:
        """Hot swap: verify the bundle at ``path``, load it beside the running model, switch atomically.

        Refused (403) unless the station runs with hot swap enabled. A bundle that fails
        verification (tampered, unsigned when keys are configured, another digest than pinned)
        is refused (422) and the running model keeps serving.
        """
        from lineguard.edge.hotswap import SwapBusy, SwapError

        if not allow_hot_swap:
            raise ApiError(403, "hot_swap_disabled", "hot swap is off on this station; start it with "
                           "--allow-hot-swap (or api.hot_swap: true) to enable POST /v1/model")
        try:
            return await run_in_threadpool(station.slot.swap, body.path, expected_digest=body.digest)
        except SwapBusy as exc:
            raise ApiError(409, "swap_in_progress", str(exc)) from None
        except SwapError as exc:
            raise ApiError(422, "swap_refused", _one_line(str(exc), 600)) from None

    # --- shadow mode: a challenger beside the champion --------------------------------------------

    def shadow_slot() -> Any:
        slot = getattr(station, "shadow_slot", None)
        if slot is None:
            raise ApiError(409, "shadow_unavailable", "this station runs without a shadow slot; start it with "
                           "`lineguard serve` to run a challenger in shadow")
        return slot

    def shadow_failed(exc: Exception) -> ApiError:
        from lineguard.edge.shadow import ShadowError

        reason = exc.reason if isinstance(exc, ShadowError) else "shadow_refused"
        status = SHADOW_STATUS.get(reason, 422)
        return ApiError(status, reason, _one_line(str(exc), 600))

    @app.get("/v1/shadow", response_model=S.ShadowOut, tags=["shadow"])
    def get_shadow() -> Any:
        """The challenger running in shadow: frames compared, agreement overall and per recipe, disagreements
        (and which way), frames skipped because it could not keep up -- or why none runs."""
        slot = getattr(station, "shadow_slot", None)
        if slot is None:
            return {"enabled": False, "running": False, "reason": "this station runs without a shadow slot"}
        return slot.status()

    @app.put("/v1/shadow", dependencies=guarded, response_model=S.ShadowOut, tags=["shadow"],
             responses={400: err, 401: err, 403: err, 409: err, 413: err, 415: err, 422: err},
             openapi_extra={"requestBody": S.SHADOW_BODY})
    async def put_shadow(
        request: Request,
        digest: str | None = Query(None, pattern=r"^sha256:[0-9a-f]{64}$",
                                   description="With an uploaded archive: load it only if it has this digest"),
    ) -> Any:
        """Run a challenger in shadow, replacing the one running: a bundle path as JSON, or its .tar.gz as the body.

        The bundle is verified like a hot swap's (trust, limits, golden batch, warm-up); a refused one
        (422) leaves the running challenger running. The challenger decides every frame the champion
        decides, after it, and never acts on the line.
        """
        from pydantic import ValidationError

        from lineguard.edge.shadow import ShadowError

        slot = shadow_slot()
        media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        declared = request.headers.get("content-length")
        try:
            if media == "application/json":
                raw = bytearray()
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > MAX_JSON_BODY:
                        raise ApiError(413, "too_large", f"the JSON body is over {MAX_JSON_BODY:,} bytes; send "
                                       "{\"path\": ..., \"digest\": ...}")
                try:
                    body = S.ShadowIn.model_validate_json(bytes(raw))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
                    raise ApiError(422, "invalid_request", _one_line(f"{where}: {first.get('msg')}; expected "
                                   "{\"path\": \"<bundle folder or .tar.gz on the station>\", \"digest\": "
                                   "\"sha256:...\" (optional)}")) from None
                return await run_in_threadpool(slot.install, body.path, expected_digest=body.digest or digest)
            if media not in BUNDLE_MEDIA:
                raise ApiError(415, "unsupported_media_type", f"PUT /v1/shadow takes JSON {{\"path\": ...}} or the "
                               f"bundle's .tar.gz as application/gzip, not {media or 'no content type'}")
            if not slot.enabled:
                raise ShadowError("shadow_disabled", "shadow mode is off on this station; set shadow.enabled: true "
                                  "in station.yaml to run a challenger")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_bundle_bytes:
                raise ApiError(413, "too_large", f"the bundle of {int(declared):,} bytes is over the limit of "
                               f"{limits.max_bundle_bytes:,} bytes; copy it to the station and PUT its path instead")
            upload = slot.begin_upload(limits.max_bundle_bytes)
            try:
                async for chunk in request.stream():
                    upload.write(chunk)
                path = upload.finish()
            except BaseException:
                upload.abort()
                raise
            return await run_in_threadpool(lambda: slot.install(path, expected_digest=digest, upload=path))
        except ShadowError as exc:
            raise shadow_failed(exc) from None

    @app.delete("/v1/shadow", dependencies=guarded, response_model=S.ShadowOut, tags=["shadow"],
                responses={401: err, 404: err, 409: err})
    def delete_shadow() -> Any:
        """Stop the challenger; answers its final status. Its comparisons stay in the store."""
        from lineguard.edge.shadow import ShadowError

        try:
            return shadow_slot().remove()
        except ShadowError as exc:
            if exc.reason == "no_challenger":  # nothing to delete
                raise ApiError(404, "not_found", str(exc)) from None
            raise shadow_failed(exc) from None

    @app.post("/v1/shadow/promote", dependencies=guarded, response_model=S.ShadowPromoteOut, tags=["shadow"],
              responses={401: err, 403: err, 409: err, 422: err})
    async def promote_shadow() -> Any:
        """The challenger becomes the champion through the hot swap (pinned to the digest it ran with); the
        shadow stops. Refused (403) unless hot swap is enabled; a refused swap (422) leaves the champion
        serving and the challenger in shadow."""
        from lineguard.edge.shadow import ShadowError

        if not allow_hot_swap:
            raise ApiError(403, "hot_swap_disabled", "promoting a challenger is a hot swap, which is off on this "
                           "station; start it with --allow-hot-swap (or api.hot_swap: true)")
        slot = shadow_slot()
        try:
            return await run_in_threadpool(slot.promote, station.slot)
        except ShadowError as exc:
            raise shadow_failed(exc) from None

    # --- the dashboard's place ------------------------------------------------------------------

    if (DASHBOARD_DIR / "index.html").is_file():
        from starlette.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    else:
        @app.get("/", include_in_schema=False)
        def index() -> Any:
            return {"name": "LineGuard station API", "station": station.name, "version": __version__,
                    "health": "/v1/health", "openapi": "/openapi.json"}

    app.add_middleware(_RequestMetrics, counter=requests_total)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(_PageGuard)  # outermost: its headers go on every answer, the Host check's too

    missing = unguarded_write_routes(app)
    if missing:  # a programming error: never serve a write route without the token
        raise RuntimeError(f"write routes without the token dependency: {', '.join(missing)}")
    return app


class _RequestMetrics:
    """ASGI middleware: counts requests per route template, method and status."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.counter.labels(path, scope.get("method", ""), str(status["code"])).inc()


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def origin_matches(origin: str, host: str | None) -> bool:
    """True when an ``Origin`` header names the host the request was sent to (scheme ignored, port not).

    ``null`` (a sandboxed frame, a file: page) and anything unparsable never match.
    """
    from urllib.parse import urlsplit

    if not host:
        return False
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return False
    return parts.netloc.lower() == host.strip().lower()


class _PageGuard:
    """ASGI middleware: what makes the API safe to open in a browser next to other pages.

    - a write (any method but GET/HEAD/OPTIONS) whose ``Origin`` header is present and does
      not name this host is refused (403 ``cross_origin``): another page cannot post here,
      even with a stolen token in its hands, and the token itself is never sent by a browser
      on its own (it is not a cookie);
    - a write other than ``POST /v1/predict`` (which takes the image bytes) and ``PUT /v1/shadow``
      (which may take a bundle archive; no HTML form can send a PUT) must be ``application/json``
      (415 ``unsupported_media_type``), so no HTML form can make one;
    - every answer carries :data:`SECURITY_HEADERS` (a strict Content-Security-Policy with no
      inline script or style, frame-ancestors 'none', nosniff, no referrer, same-origin
      resource policy) and, unless the route set one, a ``Cache-Control``: ``no-cache`` for
      the dashboard's files (revalidated by ETag), ``no-store`` for the API's JSON.
    """

    def __init__(self, app: Any, raw_body_paths: frozenset[str] = frozenset({"/v1/predict"}),
                 raw_body_routes: frozenset[tuple[str, str]] = frozenset({("PUT", "/v1/shadow")})) -> None:
        self.app = app
        self.raw_body_paths = raw_body_paths
        self.raw_body_routes = raw_body_routes

    async def _refuse(self, send: Any, status: int, reason: str, message: str) -> None:
        import json

        body = json.dumps({"error": message, "reason": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *SECURITY_HEADERS, (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", ""))
        if method not in READ_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None and not origin_matches(origin, _header(scope, b"host")):
                await self._refuse(send, 403, "cross_origin", f"a write from another origin "
                                   f"({_one_line(origin, 80)}) is refused; use the station's own page or no Origin")
                return
            if path not in self.raw_body_paths and (method, path) not in self.raw_body_routes:
                kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
                if kind != "application/json":
                    await self._refuse(send, 415, "unsupported_media_type", f"{method} {_one_line(path, 80)} takes "
                                       f"a JSON body (Content-Type: application/json), not {kind or 'no content type'}")
                    return
        api = path.startswith(("/v1/", "/metrics", "/openapi.json"))

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {bytes(k).lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store" if api else b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class _SchemaOnly:
    """A station that is never asked anything: routes are built, not called (for the OpenAPI schema)."""

    name = "schema"


def openapi_schema() -> dict[str, Any]:
    """The API's OpenAPI schema, as committed in docs/openapi.json (regenerate: ``python -m lineguard.edge.api``)."""
    app = create_app(_SchemaOnly(), token="x" * 32, allow_hot_swap=True)  # type: ignore[arg-type]
    return app.openapi()


def main(argv: list[str] | None = None) -> None:
    """``python -m lineguard.edge.api [OUT]``: write the OpenAPI schema (default docs/openapi.json)."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/openapi.json")
    out.write_text(json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
