"""GET /v1/artifacts/{id}[/manifest|/files/{name}]: verified artifact files, with ETag and Range support."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...service import DeliveryService
from ..deps import Service, StrictRoute
from ..errors import responses

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], route_class=StrictRoute)

BINARY = {"schema": {"type": "string", "format": "binary"}}
FILE_RESPONSES = {
    200: {"content": {"application/octet-stream": BINARY}, "description": "The file"},
    206: {"content": {"application/octet-stream": BINARY}, "description": "The requested byte range"},
    **responses(400, 404, 416),
}
MANIFEST_RESPONSES = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}, "description": "The artifact's manifest"},
    206: {"content": {"application/json": {"schema": {"type": "string"}}}, "description": "The requested byte range"},
    **responses(400, 404, 416),
}


class ArtifactFile(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB chunks cost a thread hop each: half the throughput of a static server


def serve_file(svc: DeliveryService, artifact_id: str, name: str) -> FileResponse:
    """Sync (run in the thread pool): the first serve of a file after start or a change hashes it."""
    entry = svc.entry(artifact_id)
    path = entry.file(name)
    info = entry.record.files[name]
    svc.cache.served(artifact_id)
    svc.metrics.bytes_served.inc(info["size"])
    return ArtifactFile(path, filename=name, headers={"ETag": f'"{info["sha256"]}"', "Accept-Ranges": "bytes"})


@router.get("/{artifact_id}", response_class=ArtifactFile, responses=FILE_RESPONSES)
def artifact(artifact_id: str, svc: Service):
    return serve_file(svc, artifact_id, "model.onnx")


@router.get("/{artifact_id}/manifest", response_class=ArtifactFile, responses=MANIFEST_RESPONSES)
def manifest(artifact_id: str, svc: Service):
    return serve_file(svc, artifact_id, "manifest.json")


@router.get("/{artifact_id}/files/{name}", response_class=ArtifactFile, responses=FILE_RESPONSES)
def artifact_file(artifact_id: str, name: str, svc: Service):
    return serve_file(svc, artifact_id, name)
