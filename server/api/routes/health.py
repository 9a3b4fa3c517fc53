"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...errors import NotReady
from ..errors import responses
from ..schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz():
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses=responses(503))
async def readyz(request: Request):
    svc = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise NotReady("loading models")
    return Ready(status="ready", models=sorted(svc.models))


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def prometheus(request: Request):
    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
