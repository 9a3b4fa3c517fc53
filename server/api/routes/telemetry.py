"""POST /v1/telemetry/latency: a device reports the latency it measured for an artifact."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..deps import DeviceRoute, Service
from ..errors import responses
from ..schemas import LatencyReport

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"], route_class=DeviceRoute)


@router.post("/latency", status_code=204, response_class=Response,
             responses=responses(400, 401, 404, 411, 413, 422, 429))
def telemetry(report: LatencyReport, svc: Service, request: Request) -> None:
    """Bounded, rate-limited per client, scoped to the report's profile; with a configured device token,
    authenticated (README "Latency telemetry")."""
    svc.record_latency(report.artifact_id, report.profile, report.latency_ms, report.seq_len, report.batch_size,
                       report.threads, request.client.host if request.client else None)
