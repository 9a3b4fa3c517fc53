"""HTTP API (FastAPI, versioned under /v1; OpenAPI at /docs). Handlers are thin: the service does the work.

Every bad input gets a 4xx that says what was wrong; a 500 is a bug.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field

from slicer.errors import ConfigError, MLFSError
from slicer.formats.adapter_stack import STACK_META, STACK_WEIGHTS
from slicer.train.evaluate import PALETTE_FILE

from .cache import CacheError
from .metrics import Metrics
from .selection import Budget, memory_mb
from .service import BuildQueueFull, DeliveryService, NoFit, UnknownModel
from .settings import Settings
from .telemetry import RateLimited, ReportRejected


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceInfo(Strict):
    memory_available_mb: float | None = Field(None, gt=0)
    cpu_count: int | None = Field(None, ge=1)
    profile: str | None = Field(None, max_length=64)
    speed_score: float | None = Field(None, gt=0)


class BudgetIn(Strict):
    max_memory_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    seq_len: int = Field(128, ge=1, le=8192)
    batch_size: int = Field(1, ge=1, le=1024)
    precision: Literal["fp32", "int8", "auto"] = "auto"


class ResolveRequest(Strict):
    model: str = Field(..., max_length=128)
    device: DeviceInfo = DeviceInfo()
    budget: BudgetIn = BudgetIn()


class Estimates(BaseModel):
    memory_mb: float
    latency_ms: float | None = Field(description="central latency estimate on the device")
    latency_ms_upper: float | None = Field(None, description="conservative (90 % upper) estimate; budgets are checked against it")
    latency_rel_sd: float | None = Field(None, description="relative standard deviation of the estimate")
    latency_source: str | None = Field(None, description="measured | device | fit | level | transfer | calibration")
    quality: float | None


class ResolveResponse(BaseModel):
    artifact_id: str
    config: dict
    precision: str
    url: str
    manifest_url: str
    sha256: str
    size_bytes: int
    estimates: Estimates


class LatencyReport(Strict):
    artifact_id: str = Field(..., min_length=64, max_length=64)
    profile: str = Field(..., max_length=64)
    latency_ms: float = Field(..., gt=0, lt=1e7, allow_inf_nan=False)
    seq_len: int = Field(128, ge=1, le=8192)
    batch_size: int = Field(1, ge=1, le=1024)
    threads: int | None = Field(None, ge=1, le=1024, description="intra-op threads the device measured with")


class WarmRequest(Strict):
    model: str
    configs: list[dict] = []
    budgets: list[ResolveRequest] = []


def service(request: Request) -> DeliveryService:
    return request.app.state.service


Service = Annotated[DeliveryService, Depends(service)]


def operator(request: Request) -> None:
    """Bearer token for operator endpoints; without a configured token they are closed."""
    token = request.app.state.settings.operator_token
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}" if token else None
    if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "operator endpoints need 'Authorization: Bearer <token>' with the server's operator token",
                            headers={"WWW-Authenticate": "Bearer"})


def device(request: Request) -> None:
    """With a configured device token, telemetry needs 'Authorization: Bearer <device token>'."""
    token = request.app.state.settings.device_token
    if token is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                     f"Bearer {token.get_secret_value()}".encode()):
        raise HTTPException(401, "latency reports need 'Authorization: Bearer <token>' with the server's device token",
                            headers={"WWW-Authenticate": "Bearer"})


v1 = APIRouter(prefix="/v1")
ops = APIRouter(prefix="/v1", dependencies=[Depends(operator)])


@v1.post("/resolve", response_model=ResolveResponse, responses={202: {}, 404: {}, 422: {}, 503: {}})
async def resolve(req: ResolveRequest, svc: Service, response: Response):
    try:
        model = svc.model(req.model)
    except UnknownModel as err:
        raise HTTPException(404, str(err)) from None
    for attempt in (1, 2):  # a failed build is excluded from selection, so the second choice differs
        try:
            choice = svc.choose(model, _budget(req), req.device.profile, req.device.speed_score, req.device.cpu_count)
        except (NoFit, ConfigError) as err:
            raise HTTPException(422, str(err)) from None
        try:
            entry = await svc.artifact(model, choice.config, choice.precision, svc.settings.build_wait_s)
            break
        except BuildQueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "30"}) from None
        except MLFSError as err:
            if attempt == 2 or req.budget.precision != "auto":
                raise HTTPException(422, f"{choice.config.describe()} {choice.precision} cannot be built: {err}") from None
    key = svc.artifact_id(model, choice.config, choice.precision)
    if entry is None:
        return JSONResponse({"artifact_id": key, "status": "building", "config": choice.config.to_dict()},
                            status_code=202, headers={"Retry-After": "10"})
    onnx = entry.record.files["model.onnx"]
    return ResolveResponse(
        artifact_id=key, config=choice.config.to_dict(), precision=choice.precision,
        url=f"/v1/artifacts/{key}", manifest_url=f"/v1/artifacts/{key}/manifest", sha256=onnx["sha256"],
        size_bytes=onnx["size"],
        estimates=Estimates(memory_mb=round(choice.memory_mb, 1), quality=choice.quality,
                            **(choice.latency.as_dict() if choice.latency else {"latency_ms": None})),
    )


def _entry(svc: DeliveryService, artifact_id: str):
    try:
        entry = svc.cache.get(artifact_id)
    except CacheError as err:
        raise HTTPException(400, str(err)) from None
    if entry is None:
        raise HTTPException(404, f"no artifact {artifact_id}; resolve a budget to get one built")
    return entry


class ArtifactFile(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB chunks cost a thread hop each: half the throughput of a static server


def _file(svc: DeliveryService, artifact_id: str, name: str) -> FileResponse:
    entry = _entry(svc, artifact_id)
    try:
        path = entry.file(name)
    except CacheError as err:
        raise HTTPException(404, str(err)) from None
    info = entry.record.files[name]
    svc.cache.served(artifact_id)
    svc.metrics.bytes_served.inc(info["size"])
    return ArtifactFile(path, filename=name, headers={"ETag": f'"{info["sha256"]}"', "Accept-Ranges": "bytes"})


@v1.get("/artifacts/{artifact_id}")
def artifact(artifact_id: str, svc: Service):
    return _file(svc, artifact_id, "model.onnx")


@v1.get("/artifacts/{artifact_id}/manifest")
def manifest(artifact_id: str, svc: Service):
    return _file(svc, artifact_id, "manifest.json")


@v1.get("/artifacts/{artifact_id}/files/{name}")
def artifact_file(artifact_id: str, name: str, svc: Service):
    return _file(svc, artifact_id, name)


@v1.get("/models")
def models(svc: Service, seq_len: int = Query(128, ge=1, le=8192), batch_size: int = Query(1, ge=1, le=1024)):
    """Served models, their search spaces and palettes, with fp32 estimates per device profile at a shape."""
    out = []
    for name, m in svc.models.items():
        rows = {r["key"]: r for r in (m.palette or {}).get("configs", [])}
        per_profile = {p: svc.latency_estimates(m, p, seq_len, batch_size) for p in svc.profiles}
        palette = []
        for cfg in m.configs():
            count = cfg.param_count(m.dims)
            row = rows.get(cfg.key, {})
            estimates = {}
            mem = memory_mb(m.dims, cfg, "fp32", seq_len, batch_size)
            for p, latency in per_profile.items():
                est = latency.get((cfg.key, "fp32"))
                estimates[p] = {"memory_mb": round(mem, 1), **(est.as_dict() if est else {"latency_ms": None}),
                                "fits_memory": mem <= svc.profiles[p].memory_mb}
            palette.append({"key": cfg.key, "config": cfg.to_dict(), "shape": cfg.describe(), "params": count.total,
                            "params_non_embedding": count.non_embedding,
                            "quality": row.get("accuracy", row.get("loss")), "estimates": estimates})
        out.append({"name": name, "family": m.dims.family, "description": m.served.description,
                    "search_space": m.opened.supernet.space.to_dict(), "palette": palette,
                    "metric": (m.palette or {}).get("metric"), "estimates_at": {"seq_len": seq_len, "batch_size": batch_size}})
    return {"models": out, "profiles": [vars(p) for p in svc.profiles.values()]}


@v1.post("/telemetry/latency", status_code=204, dependencies=[Depends(device)],
         responses={401: {}, 404: {}, 422: {}, 429: {}})
def telemetry(report: LatencyReport, svc: Service, request: Request):
    """A device's measured latency of an artifact on its profile; see README "Latency estimates"."""
    entry = _entry(svc, report.artifact_id)
    try:
        svc.report_latency(entry, report.profile, report.latency_ms, report.seq_len, report.batch_size, report.threads,
                           request.client.host if request.client else None)
    except RateLimited as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(math.ceil(err.retry_after))}) from None
    except ReportRejected as err:
        raise HTTPException(422, str(err)) from None


@ops.get("/cache")
def cache_list(svc: Service):
    return {"budget_bytes": svc.cache.budget, "total_bytes": svc.cache.total_bytes(),
            "artifacts": [{"artifact_id": r.key, "size_bytes": r.size, "pinned": r.pinned, "hits": r.hits,
                           "build_seconds": round(r.build_seconds, 2), "info": r.info}
                          for r in svc.meta.list_artifacts()]}


@ops.delete("/cache/{artifact_id}", status_code=204)
def cache_delete(artifact_id: str, svc: Service):
    _entry(svc, artifact_id)
    svc.cache.drop(artifact_id)


@ops.post("/cache/warm")
async def cache_warm(req: WarmRequest, svc: Service):
    """Build and pin configs given explicitly, or the best config for each of the given budgets."""
    if not req.configs and not req.budgets:
        raise HTTPException(422, "give configs or budgets to warm")
    try:
        model = svc.model(req.model)
        budgets = [(_budget(r), r.device.profile, r.device.speed_score) for r in req.budgets]
        targets = svc.warm_targets(model, req.configs, budgets)
    except UnknownModel as err:
        raise HTTPException(404, str(err)) from None
    except (ConfigError, NoFit) as err:
        raise HTTPException(422, str(err)) from None
    warmed = []
    for cfg, precision in targets:
        try:
            entry = await svc.artifact(model, cfg, precision, wait_s=math.inf)
        except MLFSError as err:
            raise HTTPException(422, f"{cfg.describe()} {precision} cannot be built: {err}") from None
        svc.cache.pin(entry.key)
        warmed.append({"artifact_id": entry.key, "config": cfg.to_dict(), "precision": precision})
    return {"warmed": warmed}


@ops.put("/models/{name}", status_code=201)
async def register_model(
    name: str,
    svc: Service,
    base: Annotated[str, Form(max_length=128, description="base of a served model, or a prepared teacher name")],
    adapter_config: Annotated[UploadFile, File(description="adapter_config.json")],
    adapters: Annotated[UploadFile, File(description="adapters.safetensors")],
    palette: Annotated[UploadFile | None, File(description="palette.json (optional)")] = None,
    description: Annotated[str, Form(max_length=500)] = "",
):
    """Register an adapter stack trained on a served base as a new model (validated before it is served)."""
    if name in svc.models:
        raise HTTPException(409, f"model {name!r} already exists")
    uploads = {STACK_META: adapter_config, STACK_WEIGHTS: adapters}
    if palette is not None:
        uploads[PALETTE_FILE] = palette
    with tempfile.TemporaryDirectory(prefix="mlfs-upload-") as tmp:
        files = {}
        for fname, upload in uploads.items():
            files[fname] = Path(tmp) / fname
            with files[fname].open("wb") as f:
                shutil.copyfileobj(upload.file, f)
        try:
            loaded = await asyncio.to_thread(svc.register, name, base, files)
        except ConfigError as err:
            raise HTTPException(422, str(err)) from None
    return {"name": name, "base": base, "configs": len(loaded.configs()),
            "adapters_fingerprint": loaded.adapters_fingerprint}


def _budget(r: ResolveRequest) -> Budget:
    d, b = r.device, r.budget
    limits = [x for x in (b.max_memory_mb, d.memory_available_mb) if x is not None]
    return Budget(min(limits) if limits else None, b.max_latency_ms, b.seq_len, b.batch_size, b.precision)


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = DeliveryService(settings, metrics)
        app.state.service = svc
        svc.load()
        yield
        svc.close()

    app = FastAPI(title="MLFS Edge delivery server", version="1", lifespan=lifespan)
    app.state.settings = settings

    @app.middleware("http")
    async def limits_and_counts(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = settings.max_upload_mb * 2**20 if request.method == "PUT" else settings.max_body_bytes
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            # Without a length the limit could only be enforced after reading the body: refuse it up front.
            response = JSONResponse({"detail": "send a Content-Length; chunked request bodies are not accepted"},
                                    status_code=411)
        elif length is not None and (not length.isdigit() or int(length) > limit):
            response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request):
        svc = getattr(request.app.state, "service", None)
        if svc is None or not svc.ready:
            raise HTTPException(503, "loading models")
        return {"status": "ready", "models": sorted(svc.models)}

    @app.get("/metrics")
    def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    app.include_router(v1)
    app.include_router(ops)
    return app
