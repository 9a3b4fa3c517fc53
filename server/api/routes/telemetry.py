"""POST /v1/telemetry/latency: a device reports the latency it measured for an artifact."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import LatencyReport

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"], route_class=StrictRoute)


@router.post("/latency", status_code=204, response_class=Response, responses=responses(400, 404, 411, 413, 422))
def telemetry(report: LatencyReport, svc: Service) -> None:
    svc.record_latency(report.artifact_id, report.profile, report.latency_ms, report.seq_len, report.batch_size)
