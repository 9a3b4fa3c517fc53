"""Operator routes (bearer token, checked before the body is read): the cache, warming, registering models."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, Security, UploadFile
from fastapi import Path as PathParam

from slicer import PALETTE_FILE, STACK_META, STACK_WEIGHTS

from ...store import MODEL_NAME
from ..deps import ArtifactId, OperatorRoute, Service, operator_scheme
from ..errors import responses
from ..schemas import (
    CachedArtifact,
    CacheListing,
    Cleared,
    PaletteCheck,
    Registered,
    Warmed,
    WarmRequest,
    WarmResponse,
)
from .resolve import budget_of

router = APIRouter(prefix="/v1", tags=["operator"], route_class=OperatorRoute,
                   dependencies=[Security(operator_scheme)], responses=responses(401, 422))


@router.get("/cache", response_model=CacheListing)
async def cache_list(svc: Service):
    return CacheListing(budget_bytes=svc.cache.budget, total_bytes=svc.cache.total_bytes(), artifacts=[
        CachedArtifact(artifact_id=r.key, size_bytes=r.size, pinned=r.pinned, hits=r.hits,
                       build_seconds=round(r.build_seconds, 2), info=r.info) for r in svc.meta.list_artifacts()])


@router.delete("/cache/{artifact_id}", status_code=204, response_class=Response, responses=responses(400, 404, 422))
async def cache_delete(artifact_id: ArtifactId, svc: Service) -> None:
    svc.entry(artifact_id)  # 400 for a malformed id, 404 for an absent one
    svc.cache.drop(artifact_id)


@router.post("/cache/warm", response_model=WarmResponse, responses=responses(404, 411, 413, 422, 503))
async def cache_warm(req: WarmRequest, svc: Service):
    """Build and pin configs given explicitly, or the best config for each of the given budgets."""
    budgets = [(budget_of(r), r.device.profile, r.device.speed_score) for r in req.budgets]
    warmed = await svc.warm(req.model, req.configs, budgets)
    return WarmResponse(warmed=[Warmed(artifact_id=e.key, config=c.to_dict(), precision=p) for e, c, p in warmed])


def _save_uploads(tmp: str, uploads: dict[str, UploadFile]) -> dict[str, Path]:
    files = {}
    for fname, upload in uploads.items():
        files[fname] = Path(tmp) / fname
        with files[fname].open("wb") as f:
            shutil.copyfileobj(upload.file, f)
    return files


def _validation_name(upload: UploadFile) -> str:
    """The uploaded dev file's suffix decides how it is read; only the suffix of the client's name is used."""
    suffix = Path(upload.filename or "").suffix.lower()
    return f"validation{suffix}"


def _registered(loaded, replaced: bool) -> Registered:
    return Registered(name=loaded.served.name, base=loaded.served.base, description=loaded.served.description,
                      configs=len(loaded.configs()), adapters_fingerprint=loaded.adapters_fingerprint,
                      replaced=replaced, palette_check=PaletteCheck(**loaded.palette_check),
                      has_validation_data=loaded.served.validation_data is not None)


@router.put("/models/{name}", status_code=201, response_model=Registered,
            responses={200: {"model": Registered, "description": "An existing model was replaced"},
                       **responses(400, 411, 413, 422)})
async def register_model(
    name: Annotated[str, PathParam(json_schema_extra={"pattern": MODEL_NAME.pattern},
                              description="1-64 lowercase letters, digits, '.', '_' or '-'")],
    svc: Service,
    response: Response,
    base: Annotated[str, Form(max_length=128, description="base of a served model, or a prepared teacher name")],
    adapter_config: Annotated[UploadFile, File(description="adapter_config.json")],
    adapters: Annotated[UploadFile, File(description="adapters.safetensors")],
    palette: Annotated[UploadFile | None, File(description="palette.json (optional; checked against validation)")] = None,
    validation: Annotated[UploadFile | None, File(description="dev split (.jsonl/.csv/.tsv, optional): int8 builds "
                                                              "are judged on it, the palette is checked against it")] = None,
    description: Annotated[str, Form(max_length=500)] = "",
):
    """Register an adapter stack trained on a served base as model NAME (201), or replace the model of that name
    (200). Validated before it is served; a palette.json whose data fingerprint differs from the validation data
    is refused (422); without validation data the palette is served marked unverified."""
    uploads = {STACK_META: adapter_config, STACK_WEIGHTS: adapters}
    if palette is not None:
        uploads[PALETTE_FILE] = palette
    replaced = name in svc.models
    with tempfile.TemporaryDirectory(prefix="mlfs-upload-") as tmp:
        files = _save_uploads(tmp, uploads)
        val = _save_uploads(tmp, {_validation_name(validation): validation})[_validation_name(validation)] \
            if validation is not None else None
        loaded = await asyncio.to_thread(svc.register, name, base, files, description, val, True)  # seconds
    if replaced:
        response.status_code = 200
    return _registered(loaded, replaced)


@router.delete("/models/{name}", status_code=204, response_class=Response, responses=responses(404))
async def delete_model(name: str, svc: Service) -> None:
    """Stop serving model NAME and remove it (and its uploaded stack and validation data) from the store."""
    await asyncio.to_thread(svc.remove, name)


@router.put("/models/{name}/validation", response_model=Registered, responses=responses(400, 404, 411, 413, 422))
async def attach_validation(
    name: str,
    svc: Service,
    validation: Annotated[UploadFile, File(description="dev split (.jsonl/.csv/.tsv), read as the stack's "
                                                       "training data was")],
):
    """Attach validation data to model NAME: its int8 builds are judged on it, and its palette is checked
    against it (422 if the palette's numbers come from other data)."""
    with tempfile.TemporaryDirectory(prefix="mlfs-upload-") as tmp:
        val = _save_uploads(tmp, {_validation_name(validation): validation})[_validation_name(validation)]
        loaded = await asyncio.to_thread(svc.attach_validation, name, val)
    return _registered(loaded, False)


@router.delete("/models/{name}/failed-builds", response_model=Cleared, responses=responses(404))
async def clear_failed_builds(
    name: str,
    svc: Service,
    config_key: Annotated[str | None, Query(max_length=512, description="only this config (its key)")] = None,
    precision: Annotated[str | None, Query(pattern="^(fp32|int8)$", description="only this precision")] = None,
):
    """Forget model NAME's failed builds (all, or one config and/or precision), so selection may try them again.
    Failed builds are otherwise remembered across restarts and never retried."""
    svc.model(name)
    return Cleared(cleared=await asyncio.to_thread(svc.clear_failures, name, config_key, precision))
