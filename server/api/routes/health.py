"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...errors import NotReady
from ..deps import loading_progress
from ..errors import error_body
from ..schemas import Health, NotReadyBody, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz():
    """Alive: answers as soon as the port is bound, while models still load."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready,
            responses={503: {"model": NotReadyBody, "description": "Still starting: what it is doing and how far it got"}})
async def readyz(request: Request):
    svc = request.app.state.service
    if svc is None or not svc.ready:
        line, progress = loading_progress(request.app)
        return JSONResponse({**error_body(line), "progress": progress}, status_code=503,
                            headers={"Retry-After": str(NotReady.retry_after_s)})
    return Ready(status="ready", models=sorted(svc.models))


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def prometheus(request: Request):
    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
