"""POST /v1/resolve: a device's budget -> the best config's artifact (200), or 202 while it builds."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...selection import Budget, Choice
from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import Building, Estimates, ResolveRequest, ResolveResponse

router = APIRouter(prefix="/v1", tags=["resolve"], route_class=StrictRoute)


def budget_of(r: ResolveRequest) -> Budget:
    d, b = r.device, r.budget
    limits = [x for x in (b.max_memory_mb, d.memory_available_mb) if x is not None]
    return Budget(min(limits) if limits else None, b.max_latency_ms, b.seq_len, b.batch_size, b.precision)


def estimates(choice: Choice, quality_metric: str | None) -> Estimates:
    return Estimates(memory_mb=round(choice.memory_mb, 1), quality=choice.quality,
                     quality_metric=quality_metric if choice.quality is not None else None,
                     **(choice.latency.as_dict() if choice.latency else {"latency_ms": None}))


@router.post("/resolve", response_model=ResolveResponse,
             responses={202: {"model": Building, "description": "Still building: resolve again after Retry-After"},
                        **responses(404, 411, 413, 422, 503)})
async def resolve(req: ResolveRequest, svc: Service):
    choice, entry = await svc.resolve(req.model, budget_of(req), req.device.profile, req.device.speed_score,
                                      req.device.cpu_count)
    model = svc.model(req.model)
    key = svc.artifact_id(model, choice.config, choice.precision)
    if entry is None:
        body = Building(artifact_id=key, status="building", config=choice.config.to_dict())
        return JSONResponse(body.model_dump(), status_code=202, headers={"Retry-After": "10"})
    onnx = entry.record.files["model.onnx"]
    return ResolveResponse(
        artifact_id=key, config=choice.config.to_dict(), precision=choice.precision,
        url=f"/v1/artifacts/{key}", manifest_url=f"/v1/artifacts/{key}/manifest", sha256=onnx["sha256"],
        size_bytes=onnx["size"], estimates=estimates(choice, model.quality_metric),
    )
