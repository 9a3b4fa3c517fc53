"""POST /v1/resolve: a device's budget -> the best config's artifact (200), or 202 while it builds; GET
/v1/resolutions/{id}: the one thing a device waits on for that request."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...errors import NotFound
from ...selection import Budget, Choice
from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import Building, Estimates, ResolveRequest, ResolveResponse

router = APIRouter(prefix="/v1", tags=["resolve"], route_class=StrictRoute)
RETRY_AFTER_S = 10
MAX_PENDING_RESOLUTIONS = 1024  # requests remembered for GET /v1/resolutions/{id}, oldest forgotten first


def budget_of(r: ResolveRequest) -> Budget:
    d, b = r.device, r.budget
    limits = [x for x in (b.max_memory_mb, d.memory_available_mb) if x is not None]
    return Budget(min(limits) if limits else None, b.max_latency_ms, b.seq_len, b.batch_size, b.precision)


def estimates(choice: Choice, quality_metric: str | None) -> Estimates:
    return Estimates(memory_mb=round(choice.memory_mb, 1), quality=choice.quality,
                     quality_metric=quality_metric if choice.quality is not None else None,
                     **(choice.latency.as_dict() if choice.latency else {"latency_ms": None}))


def _resolutions(request: Request) -> OrderedDict[str, ResolveRequest]:
    state = request.app.state
    if not hasattr(state, "resolutions"):
        state.resolutions = OrderedDict()
    return state.resolutions


async def _answer(req: ResolveRequest, svc, request: Request, wait_s: float | None):
    choice, entry = await svc.resolve(req.model, budget_of(req), req.device.profile, req.device.speed_score, wait_s,
                                      req.device.cpu_count)
    model = svc.model(req.model)
    key = svc.artifact_id(model, choice.config, choice.precision)
    if entry is None:
        rid = hashlib.sha256(req.model_dump_json().encode()).hexdigest()[:32]  # same request, same id
        pending = _resolutions(request)
        pending[rid] = req
        pending.move_to_end(rid)
        while len(pending) > MAX_PENDING_RESOLUTIONS:
            pending.popitem(last=False)
        body = Building(artifact_id=key, status="building", config=choice.config.to_dict(), precision=choice.precision,
                        resolve_url=f"/v1/resolutions/{rid}", retry_after_s=RETRY_AFTER_S)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Retry-After": str(RETRY_AFTER_S)})
    onnx = entry.record.files["model.onnx"]
    return ResolveResponse(
        artifact_id=key, config=choice.config.to_dict(), precision=choice.precision,
        url=f"/v1/artifacts/{key}", manifest_url=f"/v1/artifacts/{key}/manifest", sha256=onnx["sha256"],
        size_bytes=onnx["size"], estimates=estimates(choice, model.quality_metric),
    )


@router.post("/resolve", response_model=ResolveResponse,
             responses={202: {"model": Building, "description": "Still building: GET resolve_url after Retry-After"},
                        **responses(404, 411, 413, 422, 503)})
async def resolve(req: ResolveRequest, svc: Service, request: Request):
    return await _answer(req, svc, request, None)


@router.get("/resolutions/{resolution_id}", response_model=ResolveResponse,
            responses={202: {"model": Building, "description": "Still building: ask again after Retry-After"},
                       **responses(404, 422, 503)})
async def resolution(resolution_id: str, svc: Service, request: Request):
    """The state of an earlier resolve that answered 202: 200 with the artifact once built, else 202 again (the
    same resolve_url). Waits no longer than a short poll."""
    req = _resolutions(request).get(resolution_id)
    if req is None:
        raise NotFound(f"no pending resolution {resolution_id!r} (the server may have restarted); POST /v1/resolve again")
    return await _answer(req, svc, request, 1.0)
