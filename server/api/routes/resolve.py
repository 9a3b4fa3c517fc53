"""POST /v1/resolve: a device's budget -> the best config's artifact (200), or 202 while it builds; GET
/v1/resolutions/{id}: the one thing a device waits on for that request."""

from __future__ import annotations

import asyncio
import hashlib
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...errors import BuildFailed, NotFound
from ...lru import LRU
from ...selection import Budget, Choice
from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import Building, Estimates, ResolveRequest, ResolveResponse

router = APIRouter(prefix="/v1", tags=["resolve"], route_class=StrictRoute)
RETRY_AFTER_S = 10
MAX_PENDING_RESOLUTIONS = 1024  # requests remembered in memory for GET /v1/resolutions/{id}, least recently used forgotten first


def budget_of(r: ResolveRequest) -> Budget:
    d, b = r.device, r.budget
    limits = [x for x in (b.max_memory_mb, d.memory_available_mb) if x is not None]
    return Budget(min(limits) if limits else None, b.max_latency_ms, b.seq_len, b.batch_size, b.precision)


def estimates(choice: Choice, quality_metric: str | None) -> Estimates:
    return Estimates(memory_mb=round(choice.memory_mb, 1), quality=choice.quality,
                     quality_metric=quality_metric if choice.quality is not None else None,
                     **(choice.latency.as_dict() if choice.latency else {"latency_ms": None}))


def _building(body: Building) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=202, headers={"Retry-After": str(body.retry_after_s)})


def _resolutions(request: Request) -> LRU[str, tuple[ResolveRequest, Building]]:
    state = request.app.state
    if not hasattr(state, "resolutions"):
        state.resolutions = LRU(MAX_PENDING_RESOLUTIONS)
    return state.resolutions


async def _answer(req: ResolveRequest, svc, request: Request, wait_s: float | None):
    choice, entry = await svc.resolve(req.model, budget_of(req), req.device.profile, req.device.speed_score, wait_s,
                                      req.device.cpu_count)
    model = svc.model(req.model)
    if entry is None:
        key = svc.artifact_id(model, choice.config, choice.precision)
        rid = hashlib.sha256(req.model_dump_json().encode()).hexdigest()[:32]  # same request, same id
        body = Building(artifact_id=key, status="building", config=choice.config.to_dict(), precision=choice.precision,
                        resolve_url=f"/v1/resolutions/{rid}", retry_after_s=RETRY_AFTER_S)
        _resolutions(request).put(rid, (req, body))
        # in the metadata too: the id still answers after a restart, and on every replica
        stored = json.dumps({"request": req.model_dump(), "building": body.model_dump()})
        await asyncio.to_thread(svc.meta.put_resolution, rid, stored, key)
        return _building(body)
    onnx, key = entry.record.files["model.onnx"], entry.key
    return ResolveResponse(
        artifact_id=key, config=choice.config.to_dict(), precision=choice.precision,
        url=f"/v1/artifacts/{key}", manifest_url=f"/v1/artifacts/{key}/manifest", sha256=onnx["sha256"],
        size_bytes=onnx["size"], estimates=estimates(choice, svc.quality_metric(model)),
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
    same resolve_url); 422 with the reason and its figures when the build it named failed (POST /v1/resolve again
    to get the next best config). Waits no longer than a short poll. Ids outlive restarts (kept in the metadata)."""
    known = _resolutions(request).get(resolution_id)
    if known is None:
        stored = await asyncio.to_thread(svc.meta.resolution, resolution_id)
        if stored is None:
            raise NotFound(f"no resolution {resolution_id!r} (unknown or older than a week); POST /v1/resolve again")
        saved = json.loads(stored[0])
        known = (ResolveRequest.model_validate(saved["request"]), Building.model_validate(saved["building"]))
    req, building = known
    # The build this id named, not a new choice: wait on it briefly, then say how it ended.
    if not await svc.settled(building.artifact_id, 1.0):
        return _building(building)
    failure = await asyncio.to_thread(svc.failure_of, building.artifact_id)
    if failure is not None:
        raise BuildFailed.of(failure, "resolve again (POST the same request): the next best config is chosen")
    return await _answer(req, svc, request, 1.0)
