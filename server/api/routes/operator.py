"""Operator routes (bearer token, checked before the body is read): the cache, warming, registering models."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, Security, UploadFile

from slicer import PALETTE_FILE, STACK_META, STACK_WEIGHTS

from ..deps import OperatorRoute, Service, operator_scheme
from ..errors import responses
from ..schemas import CachedArtifact, CacheListing, Registered, Warmed, WarmRequest, WarmResponse
from .resolve import budget_of

router = APIRouter(prefix="/v1", tags=["operator"], route_class=OperatorRoute,
                   dependencies=[Security(operator_scheme)], responses=responses(401))


@router.get("/cache", response_model=CacheListing)
async def cache_list(svc: Service):
    return CacheListing(budget_bytes=svc.cache.budget, total_bytes=svc.cache.total_bytes(), artifacts=[
        CachedArtifact(artifact_id=r.key, size_bytes=r.size, pinned=r.pinned, hits=r.hits,
                       build_seconds=round(r.build_seconds, 2), info=r.info) for r in svc.meta.list_artifacts()])


@router.delete("/cache/{artifact_id}", status_code=204, response_class=Response, responses=responses(400, 404))
async def cache_delete(artifact_id: str, svc: Service) -> None:
    svc.entry(artifact_id)  # 400 for a malformed id, 404 for an absent one
    svc.cache.drop(artifact_id)


@router.post("/cache/warm", response_model=WarmResponse, responses=responses(404, 411, 413, 422, 503))
async def cache_warm(req: WarmRequest, svc: Service):
    """Build and pin configs given explicitly, or the best config for each of the given budgets."""
    budgets = [(budget_of(r), r.device.profile, r.device.speed_score) for r in req.budgets]
    warmed = await svc.warm(req.model, req.configs, budgets)
    return WarmResponse(warmed=[Warmed(artifact_id=e.key, config=c.to_dict(), precision=p) for e, c, p in warmed])


@router.put("/models/{name}", status_code=201, response_model=Registered,
            responses=responses(400, 409, 411, 413, 422))
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
    uploads = {STACK_META: adapter_config, STACK_WEIGHTS: adapters}
    if palette is not None:
        uploads[PALETTE_FILE] = palette
    with tempfile.TemporaryDirectory(prefix="mlfs-upload-") as tmp:
        files = {}
        for fname, upload in uploads.items():
            files[fname] = Path(tmp) / fname
            with files[fname].open("wb") as f:
                shutil.copyfileobj(upload.file, f)
        loaded = await asyncio.to_thread(svc.register, name, base, files)  # opens the supernet: seconds
    return Registered(name=name, base=base, configs=len(loaded.configs()),
                      adapters_fingerprint=loaded.adapters_fingerprint)
