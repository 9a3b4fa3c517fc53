"""GET /v1/models and /v1/models/{name}: served models, their search spaces and palettes (and whether the
palette was checked against validation data), with estimates per device profile."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ...selection import Budget, memory_mb
from ...service import DeliveryService, LoadedModel
from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import ModelInfo, ModelsResponse, PaletteCheck, PaletteRow, Profile, ProfileEstimate, Shape

router = APIRouter(prefix="/v1", tags=["models"], route_class=StrictRoute)


def model_info(svc: DeliveryService, name: str, m: LoadedModel, shape: Budget) -> ModelInfo:
    per_profile = {p: svc.latency_estimates(m, p, shape.seq_len, shape.batch_size) for p in svc.profiles}
    palette = []
    for cand in m.candidates:  # the quality selection ranks by: one meaning in every response
        cfg = cand.config
        count = cfg.param_count(m.dims)
        ests = {}
        mem = memory_mb(m.dims, cfg, "fp32", shape.seq_len, shape.batch_size)
        for p, latency in per_profile.items():
            est = latency.get((cfg.key, "fp32"))
            ests[p] = ProfileEstimate(memory_mb=round(mem, 1), fits_memory=mem <= svc.profiles[p].memory_mb,
                                      **(est.as_dict() if est else {"latency_ms": None}))
        palette.append(PaletteRow(key=cfg.key, config=cfg.to_dict(), shape=cfg.describe(), params=count.total,
                                  params_non_embedding=count.non_embedding, quality=cand.quality,
                                  quality_metric=m.quality_metric if cand.quality is not None else None,
                                  estimates=ests))
    return ModelInfo(name=name, family=m.dims.family, description=m.served.description,
                     search_space=m.opened.supernet.space.to_dict(), palette=palette,
                     metric=m.palette.metric if m.palette else None, quality_metric=m.quality_metric,
                     palette_check=PaletteCheck(**m.palette_check),
                     has_validation_data=m.served.validation_data is not None,
                     estimates_at=Shape(seq_len=shape.seq_len, batch_size=shape.batch_size))


@router.get("/models", response_model=ModelsResponse, responses=responses(422))
def models(svc: Service, seq_len: int = Query(128, ge=1, le=8192), batch_size: int = Query(1, ge=1, le=1024)):
    """Served models, their search spaces and palettes, with fp32 estimates per device profile at a shape."""
    shape = Budget(seq_len=seq_len, batch_size=batch_size)
    out = [model_info(svc, name, m, shape) for name, m in svc.models.items()]
    return ModelsResponse(models=out, profiles=[Profile(**vars(p)) for p in svc.profiles.values()])


@router.get("/models/{name}", response_model=ModelInfo, responses=responses(404, 422))
def one_model(name: str, svc: Service, seq_len: int = Query(128, ge=1, le=8192),
              batch_size: int = Query(1, ge=1, le=1024)):
    """One served model, as in GET /v1/models."""
    return model_info(svc, name, svc.model(name), Budget(seq_len=seq_len, batch_size=batch_size))
